"""benchmarks/resize.py runs and reports what a fused resize could save at most (a fraction in (0, 1))."""
import json

from conftest import load_script


def test_resize_benchmark_smoke(tmp_path):
    bench = load_script("benchmarks/resize.py")
    out = tmp_path / "r.json"
    assert bench.main(["--rows", "2", "--workloads", "cifar10-vit", "--device", "cpu", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())["records"]
    assert 0.0 < record["finalize_share_of_unfused"] < 1.0
    assert record["unfused_s"] >= record["resize_s"] * 0.5  # the pair costs about what the resize does, or more
