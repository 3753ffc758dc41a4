"""msrs.distributed: split_range properties, single-process no-ops, and a real 2-rank gloo run under torchrun whose
all-reduced counts equal the single-process counts exactly."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msrs import distributed as D

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@pytest.mark.parametrize("start,stop", [(0, 0), (0, 1), (0, 7), (3, 10), (0, 100), (5, 5), (0, 100_000), (10, 13)])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8, 16])
def test_split_range_disjoint_covering_balanced(start, stop, world):
    parts = [D.split_range(start, stop, r, world) for r in range(world)]
    assert parts[0][0] == start and parts[-1][1] == stop
    for (lo, hi), (lo2, _) in zip(parts, parts[1:]):
        assert lo <= hi == lo2  # contiguous, in rank order, disjoint
    sizes = [hi - lo for lo, hi in parts]
    assert sum(sizes) == stop - start
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the longer shares go to the first ranks
    assert parts == [D.split_range(start, stop, r, world) for r in range(world)]  # deterministic


def test_split_range_accepts_numpy_ints_and_validates():
    assert D.split_range(np.int64(0), np.int32(10), np.int64(1), 3) == (4, 7)
    with pytest.raises(ValueError, match="rank"):
        D.split_range(0, 10, 3, 3)
    with pytest.raises(ValueError, match="rank"):
        D.split_range(0, 10, -1, 3)
    with pytest.raises(ValueError, match="world"):
        D.split_range(0, 10, 0, 0)
    with pytest.raises(ValueError, match="stop"):
        D.split_range(5, 4, 0, 1)
    with pytest.raises(TypeError, match="start"):
        D.split_range(0.0, 4, 0, 1)
    with pytest.raises(TypeError, match="world"):
        D.split_range(0, 4, 0, True)


def test_single_process_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not D.launched_by_torchrun()
    assert D.init_from_env("cpu") == torch.device("cpu")
    assert D.init_from_env(None) == torch.device("cpu")
    assert not D.is_initialized()
    assert (D.rank(), D.world_size(), D.local_rank(), D.is_main()) == (0, 1, 0, True)
    counts = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    assert D.all_reduce_counts_(counts) is counts
    assert counts.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert D.local_range(0, 10) == (0, 10)
    obj = {"a": 1}
    assert D.broadcast_object(obj) is obj
    D.barrier()
    D.shutdown()


def test_split_sample_ranges_reproduce_the_full_counts(torch_backend):
    """The property the distributed design rests on, in one process: counts over any split of [0, n) sum to the
    counts over [0, n) (the noise is keyed by the global sample index)."""
    sys.path.insert(0, str(HERE))
    try:
        import _distributed_worker as W
    finally:
        sys.path.remove(str(HERE))
    full = W.count_range(0, W.NUM_SAMPLES)
    assert int(full.sum()) == W.NUM_IMAGES * W.NUM_SAMPLES
    assert (full > 0).sum() >= 2 * W.NUM_IMAGES - 1  # the example is not trivial: several classes get votes
    for world in (2, 3, 5):
        parts = [W.count_range(*D.split_range(0, W.NUM_SAMPLES, r, world)) for r in range(world)]
        assert torch.equal(sum(parts), full)


@pytest.fixture
def torch_backend(monkeypatch):
    """The workers run the reference ops (no C++ build inside them): the single-process side does the same, so
    both sides compute the same noise bit for bit."""
    monkeypatch.setenv("MSRS_BACKEND", "torch")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out_dir: Path, nproc: int) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["MSRS_BACKEND"] = "torch"  # the reference ops: no C++ build inside the workers
    env.pop("TORCHELASTIC_RUN_ID", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", f"--nproc-per-node={nproc}",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "--max-restarts", "0",
        str(HERE / "_distributed_worker.py"), str(out_dir),
    ]
    return subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)


def test_two_rank_gloo_counts_equal_single_process(tmp_path, torch_backend):
    sys.path.insert(0, str(HERE))
    try:
        import _distributed_worker as W
    finally:
        sys.path.remove(str(HERE))
    for _attempt in range(2):  # the free port may be taken between probing and binding: retry once
        proc = _torchrun(tmp_path, 2)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = W.count_range(0, W.NUM_SAMPLES)
    assert [res["rank"] for res in results] == [0, 1]
    assert all(res["world"] == 2 for res in results)
    assert [res["is_main"] for res in results] == [True, False]
    assert [res["range"] for res in results] == [(0, 151), (151, 301)]
    assert not torch.equal(results[0]["local"], results[1]["local"])  # each rank counted its own share
    for res in results:
        assert torch.equal(res["counts"], single), (res["counts"], single)  # identical on every rank
        assert res["shared"] == {"todo": [3, 5, 8], "from": 0}  # broadcast_object: rank 0's object everywhere


class _Linear(torch.nn.Module):
    """A fixed linear digits classifier computed in float64 (no rounding-level argmax flip between batch shapes)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.nn.Parameter(torch.randn(10, 64, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(10, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).to(torch.float64) @ self.w.t() + self.b


def _certify_command(classifier: Path, out: Path, *extra: str, options: tuple = ()) -> list:
    return ["certify", "--dataset", "digits", "--classifier", str(classifier), "--sigma", *extra, "--n0", "16",
            "--n", "120", "--alpha", "0.01", "--batch-size", "50", "--seed", "5", "--max", "6", "--backend", "torch",
            "--device", "cpu", "--quiet", "--out", str(out), *options]  # options: later ones override


def _run_msrs(argv: list, nproc: int | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    for name in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = [] if nproc is None else [
        "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={nproc}",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0"]
    # "--": torchrun's own parser would otherwise take msrs's --n / --max for abbreviations of its options
    cmd = [sys.executable, *launcher, "-m", "msrs", *(["--"] if nproc else []), *argv]
    return subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)


# sequential runs: a larger budget (looks 64 .. 1000) so that images stop at different looks, and radii that settle
_SEQUENTIAL = ("--sequential", "--n", "1000", "--target-radii", "0.1", "0.25", "--alpha", "0.05")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("sigmas, options", [(["0.5"], ()), (["0.5", "0.25"], ()), (["0.5"], _SEQUENTIAL),
                                             (["1.0", "0.25"], _SEQUENTIAL)],
                         ids=["certify", "cascade", "sequential", "sequential-cascade"])
def test_torchrun_certify_log_equals_single_process(tmp_path, sigmas, options):
    """`torchrun --nproc-per-node 2 -m msrs certify` writes the single-process log, row for row (but the time).
    Sequential runs too: every rank takes the same stopping decisions on the all-reduced counts, so the ranks
    make the same sampling calls and split each one."""
    from msrs import logs

    classifier = tmp_path / "linear.ts"
    torch.jit.save(torch.jit.script(_Linear().eval()), str(classifier))
    single, multi = tmp_path / "single.tsv", tmp_path / "multi.tsv"
    proc = _run_msrs(_certify_command(classifier, single, *sigmas, options=options), None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for _attempt in range(2):  # the free port may be taken between probing and binding: retry once
        proc = _run_msrs(_certify_command(classifier, multi, *sigmas, options=options), 2)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone prints
    a, b = logs.read_log(single, required=()), logs.read_log(multi, required=())
    assert a["columns"] == b["columns"]
    strip = [{k: v for k, v in row.items() if k != "time"} for row in a["rows"]]
    assert len(strip) == 6
    assert strip == [{k: v for k, v in row.items() if k != "time"} for row in b["rows"]]
    assert any(row["predict"] >= 0 for row in strip) and len({row["predict"] for row in strip}) > 1
    if options:  # the runs stopped images at different sample counts, below the budget
        assert len({row["samples"] for row in strip}) > 1 and min(row["samples"] for row in strip) < 1016
        assert len(sigmas) == 1 or any(row["stage"] == 1 for row in strip)  # a stage-1 certificate
    single_info, multi_info = logs.read_sidecar(single), logs.read_sidecar(multi)
    assert single_info["run"] == multi_info["run"]  # the world size is not part of the compared configuration
    assert (single_info["info"]["world_size"], multi_info["info"]["world_size"]) == (1, 2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchrun_refusal_stops_every_rank(tmp_path):
    """A resume refusal decided on rank 0 (finished log) is raised on every rank: the job exits, nobody hangs."""
    classifier = tmp_path / "linear.ts"
    torch.jit.save(torch.jit.script(_Linear().eval()), str(classifier))
    out = tmp_path / "log.tsv"
    proc = _run_msrs(_certify_command(classifier, out, "0.5"), None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for _attempt in range(2):
        proc = _run_msrs(_certify_command(classifier, out, "0.5"), 2)
        if "already complete" in proc.stderr:
            break
    assert proc.returncode != 0
    assert proc.stderr.count("already complete") == 2, proc.stderr[-3000:]
