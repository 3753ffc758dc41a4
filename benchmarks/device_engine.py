"""Step 2 of the device check (benchmarks/device_check.py, docs/GPU.md): the certification engine on a device
against the CPU, through the engine's public entry points only (the `msrs certify` CLI, SmoothedClassifier methods).

    python benchmarks/device_engine.py --json engine.json              # on a GPU: the engine on cuda vs the CPU
    python benchmarks/device_engine.py --json engine.json --cpu-smoke  # tiny sizes, the CPU against itself

Parts (each reports "ok", "failed: ...", or "skipped: no CUDA"; the JSON is rewritten after each part, so a run
stopped by its time limit still reports the parts it finished):
  counts    SmoothedClassifier.sample_counts of the shipped demo models, fp32, plain smoothing (sigma 0.25) and
            denoised (sigma 0.5): the device's counts against the CPU's (torch backend, the reference ops); how many
            votes move (sum |a - b| / 2) and on how many images the top class changes. On CUDA twice: with
            cuDNN's default TF32 convolutions and with TF32 off. Votes may move (different convolution and
            transcendental rounding); every image must get exactly its n votes.
  cli       `msrs certify` on the digits test images with the demo models: Cohen certify (sigma 0.5), the cascade
            (0.25 0.5 1.0) and sequential certify (0.5), on the device and on the CPU; rows whose prediction,
            radius or stage differ are reported (information: they follow from moved votes).
  validity  tests/test_validity.py with the engine on the device (benchmarks/device_pytest_plugin.py moves each
            SmoothedClassifier there: noise, fused ops and vote counting on the device, the tests' own toy models
            on the CPU). ok if every test passes and engines were built on the device.
  compile   `msrs certify --compile` (CUDA graphs) against the eager device log of the same run: fp32 must give
            the eager log (ok only if no row differs). CUDA only; last, as the slowest.
In --cpu-smoke mode the "device" is the CPU with another batch size (the counts and logs must then be identical).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SIZES = {
    # images, samples per image (counts); CLI: images, n0, n, batch size; validity tests selected
    "gpu": dict(count_images=16, count_samples=2000, count_batch=8000, cli_images=16, n0=100, n=1000,
                cli_batch=4000, validity=None),
    "cpu-smoke": dict(count_images=2, count_samples=64, count_batch=50, cli_images=2, n0=10, n=40, cli_batch=100,
                      validity="test_cohen_certificates_are_valid and 0.5"),
}
CLI_RUNS = {
    "certify": ["--denoiser", "demo", "--sigma", "0.5"],
    "cascade": ["--denoiser", "demo", "--sigma", "0.25", "0.5", "1.0"],
    "sequential": ["--denoiser", "demo", "--sigma", "0.5", "--sequential"],
}
COMPARED_COLUMNS = ("idx", "label", "predict", "radius", "correct", "stage", "sigma", "samples")


class Report:
    """The step's JSON, rewritten after every part."""

    def __init__(self, path: Path, **header):
        self.path, self.data = path, dict(header, parts={})

    def part(self, name: str, result: dict) -> None:
        self.data["parts"][name] = result
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        print(f"# {name}: {result.get('status')}", flush=True)


def run_part(report: Report, name: str, fn, *args) -> None:
    start = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as err:  # noqa: BLE001 - a failing part is reported, and the next part still runs
        traceback.print_exc()
        result = {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
    result["seconds"] = round(time.perf_counter() - start, 2)
    report.part(name, result)


# ---------------------------------------------------------------------------------------------------- counts
def moved_votes(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.cpu().to(torch.int64), b.cpu().to(torch.int64)
    return {"votes": int(a.sum()), "votes_moved": int((a - b).abs().sum()) // 2,
            "images_top_class_changed": int((a.argmax(1) != b.argmax(1)).sum())}


def counts_part(device: str, baseline: str, size: dict, smoke: bool) -> dict:
    from msrs import zoo
    from msrs.smoothing import SmoothedClassifier

    images, _ = zoo.digits_split("test")
    x = images[: size["count_images"]]
    n = size["count_samples"]

    def engine(where: str, denoised: bool):
        classifier, mean, std, classes = zoo.load_demo_classifier(where)
        den = zoo.load_demo_denoiser(False, where) if denoised else None
        backend = "torch" if where == "cpu" else None  # the CPU reference ops: nothing to compile
        return SmoothedClassifier(classifier, classes, denoiser=den, mean=mean, std=std, device=where,
                                  backend=backend)

    def counts(where: str, denoised: bool, sigma: float, batch: int):
        start = time.perf_counter()
        got = engine(where, denoised).sample_counts(x, None, sigma, n, stream=1, seed=0, batch_size=batch)
        if got.device.type == "cuda":
            torch.cuda.synchronize()
        return got.cpu(), round(time.perf_counter() - start, 2)

    settings = [("default", None)]
    if device == "cuda":
        settings.append(("tf32_off", False))
    configs = []
    ok = True
    for name, denoised, sigma in (("smooth-0.25", False, 0.25), ("denoised-0.5", True, 0.5)):
        reference, reference_s = counts(baseline, denoised, sigma, size["count_batch"])
        for setting, tf32 in settings:
            saved = torch.backends.cudnn.allow_tf32
            if tf32 is not None:
                torch.backends.cudnn.allow_tf32 = tf32
            try:
                got, got_s = counts(device, denoised, sigma, size["count_batch"] if not smoke else 37)
            finally:
                torch.backends.cudnn.allow_tf32 = saved
            entry = dict(config=name, setting=setting, images=int(x.shape[0]), samples_per_image=n,
                         seconds_device=got_s, seconds_baseline=reference_s, **moved_votes(got, reference))
            entry["fraction_moved"] = entry["votes_moved"] / max(entry["votes"], 1)
            every_image_counted = bool((got.sum(1) == n).all() and (reference.sum(1) == n).all())
            entry["every_image_got_n_votes"] = every_image_counted
            ok &= every_image_counted and (not smoke or entry["votes_moved"] == 0)
            configs.append(entry)
    return {"status": "ok" if ok else "failed: vote totals wrong (or, on the CPU, votes moved)", "device": device,
            "baseline": f"{baseline} (backend torch)", "configs": configs}


# ---------------------------------------------------------------------------------------------------- CLI logs
def read_rows(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {row["idx"]: {c: row[c] for c in COMPARED_COLUMNS if c in row} for row in rows}


def compare_logs(a: Path, b: Path) -> dict:
    rows_a, rows_b = read_rows(a), read_rows(b)
    differing = sorted((i for i in rows_a if rows_a[i] != rows_b.get(i)), key=int)
    radius = [abs(float(rows_a[i]["radius"]) - float(rows_b[i]["radius"])) for i in rows_a if i in rows_b]
    return {"rows": len(rows_a), "rows_in_both": len(set(rows_a) & set(rows_b)), "rows_differing": len(differing),
            "differing_idx": differing[:20], "max_radius_difference": max(radius, default=0.0)}


def certify(argv: list[str]) -> float:
    from msrs import cli

    start = time.perf_counter()
    code = cli.main(argv)
    if code != 0:
        raise RuntimeError(f"msrs {' '.join(argv)} exited with {code}")
    return round(time.perf_counter() - start, 2)


def common_argv(size: dict) -> list[str]:
    return ["certify", "--dataset", "digits", "--classifier", "demo", "--max", str(size["cli_images"]),
            "--n0", str(size["n0"]), "--n", str(size["n"]), "--seed", "0", "--overwrite", "--quiet"]


def cli_part(device: str, baseline: str, size: dict, smoke: bool, work: Path) -> dict:
    runs = []
    for name, extra in CLI_RUNS.items():
        logs = {}
        entry = {"run": name, "argv": extra}
        for side, where in (("device", device), ("baseline", baseline)):
            backend = ["--backend", "torch"] if where == "cpu" else []
            batch = size["cli_batch"] if side == "baseline" or not smoke else size["cli_batch"] // 3
            logs[side] = work / f"{name}-{side}.tsv"
            entry[f"seconds_{side}"] = certify(common_argv(size) + extra + backend + [
                "--device", where, "--batch-size", str(batch), "--out", str(logs[side])])
        entry.update(compare_logs(logs["device"], logs["baseline"]))
        runs.append(entry)
    complete = all(r["rows"] == r["rows_in_both"] == size["cli_images"] for r in runs)
    identical = all(r["rows_differing"] == 0 for r in runs)
    status = "ok" if complete and (identical or not smoke) else "failed: logs incomplete or (on the CPU) differ"
    return {"status": status, "device": device, "baseline": f"{baseline} (backend torch)", "runs": runs}


def compile_part(device: str, size: dict, work: Path) -> dict:
    if device != "cuda":
        return {"status": "skipped: no CUDA"}
    eager = work / "certify-device.tsv"
    if not eager.exists():
        raise RuntimeError("the eager device log of the cli part is missing")
    compiled = work / "certify-compiled.tsv"
    seconds = certify(common_argv(size) + CLI_RUNS["certify"] + [
        "--device", device, "--batch-size", str(size["cli_batch"]), "--compile", "--out", str(compiled)])
    result = compare_logs(compiled, eager)
    ok = result["rows_differing"] == 0 and result["rows"] == result["rows_in_both"] == size["cli_images"]
    return dict(result, status="ok" if ok else "failed: --compile (fp32, CUDA graphs) did not give the eager log",
                seconds_compiled_run=seconds)


# ---------------------------------------------------------------------------------------------------- validity
def start_validity(device: str, size: dict, work: Path) -> tuple[subprocess.Popen, Path, Path]:
    report, junit = work / "validity-engines.json", work / "validity.xml"
    env = dict(os.environ, MSRS_ENGINE_DEVICE=device, MSRS_ENGINE_REPORT=str(report),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "device_pytest_plugin",
           str(ROOT / "tests" / "test_validity.py"), f"--junitxml={junit}"]
    if size["validity"]:
        cmd += ["-k", size["validity"]]
    log = open(work / "validity.log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), report, junit


def junit_totals(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def validity_part(started, device: str) -> dict:
    proc, report, junit = started
    code = proc.wait()
    totals = junit_totals(junit) if junit.exists() else {}
    engines = json.loads(report.read_text()) if report.exists() else {}
    on_device = engines.get("engines_on_device", 0)
    passed = totals.get("tests", 0) - totals.get("failures", 0) - totals.get("errors", 0) - totals.get("skipped", 0)
    ok = code == 0 and passed > 0 and on_device > 0
    return {"status": "ok" if ok else f"failed: pytest exit {code}, {passed} passed, {on_device} engines on {device}",
            "device": device, "passed": passed, **totals, "engines_on_device": on_device,
            "log_tail": (report.parent / "validity.log").read_text()[-1500:] if not ok else ""}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the step's results here")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the logs it compares (default: beside --json)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, the CPU against itself")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu-smoke")
    device = "cpu" if smoke else "cuda"
    size = SIZES["cpu-smoke" if smoke else "gpu"]
    work = args.work or args.json.parent / "engine-work"
    work.mkdir(parents=True, exist_ok=True)
    report = Report(args.json, mode="cpu-smoke" if smoke else "gpu", device=device, baseline="cpu", sizes=size)
    validity = start_validity(device, size, work)  # its own process, beside the parts below
    run_part(report, "counts", counts_part, device, "cpu", size, smoke)
    run_part(report, "cli", cli_part, device, "cpu", size, smoke, work)
    run_part(report, "validity", validity_part, validity, device)
    run_part(report, "compile", compile_part, device, size, work)  # last: compiling is the slowest part
    failed = [name for name, part in report.data["parts"].items() if part["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
