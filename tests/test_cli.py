"""The msrs command: a certification killed with SIGKILL and started again gives the same log as an
uninterrupted run; refusals (finished log, changed configuration); bad input exits 2 with a one-line message
naming the argument and leaves no file behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msrs import logs
from msrs.cli import COMMANDS, main

pytest.importorskip("msrs.smoothing")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / save are deprecated

REPO = Path(__file__).resolve().parents[1]


class NearestMean(torch.nn.Module):
    """logits = x . mu_c - |mu_c|^2 / 2 with the class means of the digits training split (no training needed),
    plus `repeat` products with a width x width matrix that only cost time (they are multiplied by 0): about
    35 ms of CPU per image at the test's 220 samples, so that a run can be killed midway on a fast idle machine
    too (rows then come >= 35 ms apart, the test polls every 5 ms)."""

    def __init__(self, width: int = 1024, repeat: int = 5):
        super().__init__()
        from msrs.data import digits

        train = digits("train")
        x = train.images.reshape(len(train), -1)
        means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
        self.w = torch.nn.Parameter(means.clone())
        self.b = torch.nn.Parameter(-0.5 * (means ** 2).sum(1))
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(64, width, generator=g) / 8)
        self.c = torch.nn.Parameter(torch.randn(width, width, generator=g) / width ** 0.5)
        self.repeat = repeat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        slow = torch.relu(x @ self.a)
        for _ in range(self.repeat):
            slow = torch.tanh(slow @ self.c)
        return x @ self.w.t() + self.b + 0.0 * slow.mean(1, keepdim=True)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nearest_mean.ts"
    torch.jit.save(torch.jit.script(NearestMean().eval()), str(path))
    return path


def certify_args(classifier, out, *extra):
    return ["certify", "--dataset", "digits", "--classifier", str(classifier), "--sigma", "0.25", "--n0", "20",
            "--n", "200", "--alpha", "0.001", "--batch-size", "220", "--seed", "0", "--max", "10",
            "--backend", "torch", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def rows_without_time(path):
    """The log's lines without the time column: wall times differ between runs, every other column may not."""
    lines = Path(path).read_text().splitlines()
    t = lines[0].split("\t").index("time")
    return [[f for i, f in enumerate(line.split("\t")) if i != t] for line in lines]


def run_msrs(args, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}  # one thread: the test shares the machine with the rest of the suite
    env.pop("MSRS_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "msrs", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def data_rows(path):
    try:
        return max(0, path.read_text().count("\n") - 1)
    except FileNotFoundError:
        return 0


def kill_midway(args, out, cwd, rows: int = 10) -> int:
    """Run `msrs` with args in a fresh process, SIGKILL it once `out` has 2 rows, return the rows written."""
    process = run_msrs(args, cwd)
    deadline = time.monotonic() + 120
    while data_rows(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    written = data_rows(out)
    assert 2 <= written < rows, f"the run was not killed midway ({written} rows); stderr:\n{err}"
    return written


@pytest.mark.slow  # three runs of 10 images, two of them fresh processes
def test_killed_run_resumes_to_the_uninterrupted_log(tmp_path, classifier, capsys):
    # the reference: an uninterrupted run (in-process, and with other batch / group sizes: same certificates)
    reference = tmp_path / "reference.tsv"
    assert main(certify_args(classifier, reference, "--batch-size", "97", "--group-size", "3")) == 0
    assert data_rows(reference) == 10

    out = tmp_path / "killed.tsv"
    written = kill_midway(certify_args(classifier, out), out, tmp_path)
    assert logs.sidecar_path(out).exists()
    with open(out, "a") as f:  # as if the kill had cut a row in half: the resume drops it
        f.write(f"{written}\t0\t0\t0.4")

    again = run_msrs(certify_args(classifier, out), tmp_path)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert data_rows(out) == 10
    # identical in every column except time (wall times differ between runs)
    assert rows_without_time(out) == rows_without_time(reference)

    # a finished log is never overwritten without --overwrite
    before = out.read_text()
    capsys.readouterr()
    assert main(certify_args(classifier, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("msrs: error: out:") and "already complete" in err and "--overwrite" in err
    assert out.read_text() == before
    # nor resumed under another configuration
    assert main(certify_args(classifier, out, "--n", "300")) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "n: was 200, now 300" in err
    assert out.read_text() == before


def test_resume_refuses_a_changed_classifier(tmp_path, classifier, capsys):
    """An unfinished log (its last row dropped, as by a kill) refuses a resume with another classifier, naming it."""
    out = tmp_path / "run.tsv"
    assert main(certify_args(classifier, out, "--max", "3")) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))
    other = tmp_path / "other.ts"
    torch.jit.save(torch.jit.script(NearestMean(width=16, repeat=1).eval()), str(other))
    assert main(certify_args(other, out, "--max", "3")) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "classifier.files" in err
    # --overwrite starts afresh
    assert main(certify_args(other, out, "--max", "3", "--overwrite")) == 0
    assert data_rows(out) == 3
    assert main(certify_args(other, out, "--max", "3")) == 2  # now complete under the new configuration
    assert "already complete" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (["--sigma", "-0.5"], "sigma"),
    (["--n0", "0"], "n0"),
    (["--n0", "300"], "n0: must be <= n"),
    (["--alpha", "2"], "alpha"),
    (["--p0", "0.3"], "p0"),
    (["--seed", "-3"], "seed"),
    (["--skip", "0"], "argument --skip"),
    (["--n", "abc"], "argument --n"),
    (["--indices", "9999"], "indices"),
    (["--dataset", "mnist"], "dataset"),
    (["--dataset", "cifar10:/no/such/folder"], "dataset"),
    (["--classifier", "/no/such/model.ts"], "classifier"),
    (["--classifier", "msrs.zoo:no_such_factory"], "classifier: factory 'no_such_factory' not found"),
    (["--classifier", "msrs.zoo:digits_classifier", "--weights", "/no/such.safetensors"], "weights"),
    (["--mean", "0.5"], "mean, std: give both"),
    (["--mean", "0.5", "0.5", "--std", "0.2", "0.2"], "mean, std: 2 values for images with 1 channels"),
    (["--num-classes", "5"], "classes"),
    (["--device", "gpu"], "device: 'gpu' is not a device"),
    (["--denoiser", "/no/such/denoiser"], "denoiser: cannot load"),
    (["--alpha-schedule", "bonferroni"], "argument --alpha-schedule"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--batch-size", "0"], "device"
     if not torch.cuda.is_available() else "batch_size"),
])
def test_bad_input_exits_2_with_a_message_and_no_file(tmp_path, classifier, capsys, change, message):
    out = tmp_path / "logs" / "run.tsv"
    assert main(certify_args(classifier, out, *change)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("msrs: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not out.exists() and not logs.sidecar_path(out).exists()


def test_out_is_a_folder(tmp_path, classifier, capsys):
    assert main(certify_args(classifier, tmp_path)) == 2
    assert "out:" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback(tmp_path, classifier):
    process = run_msrs(certify_args(classifier, tmp_path / "x.tsv", "--sigma", "0"), tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert stderr.strip().startswith("msrs: error: sigma") and "Traceback" not in stderr
    assert not (tmp_path / "x.tsv").exists()


def test_command_registry(capsys):
    assert {"certify", "report", "demo", "finetune"} <= set(COMMANDS)
    assert main(["--help"]) == 0
    assert "certify" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["nonsense"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_classifier_format_certifies(tmp_path, capsys):
    """The same network as TorchScript, torch.export and module:factory + weights gives the same log."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.ts"))
    example = torch.rand(2, 1, 8, 8)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    (tmp_path / "arch.py").write_text("import torch\n"
                                      "def make():\n"
                                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    logs_ = []
    for name, spec in (("ts", ["--classifier", str(tmp_path / "net.ts")]),
                       ("pt2", ["--classifier", str(tmp_path / "net.pt2"), "--trust-code"]),
                       ("factory", ["--classifier", f"{tmp_path / 'arch.py'}:make",
                                    "--weights", str(tmp_path / "net.safetensors")])):
        out = tmp_path / f"{name}.tsv"
        args = ["certify", "--dataset", "digits", *spec, "--sigma", "0.5", "0.25", "--n0", "10", "--n", "50",
                "--max", "3", "--backend", "torch", "--quiet", "--mean", "0.3", "--std", "0.4", "--out", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        logs_.append(rows_without_time(out))
    assert logs_[0] == logs_[1] == logs_[2]
    assert logs_[0][0] == ["idx", "label", "predict", "radius", "correct", "stage", "sigma"]


def test_batch_size_auto_gives_the_same_log(tmp_path, classifier, capsys):
    fixed, auto = tmp_path / "fixed.tsv", tmp_path / "auto.tsv"
    assert main(certify_args(classifier, fixed)) == 0
    assert main(certify_args(classifier, auto, "--batch-size", "auto")) == 0
    assert rows_without_time(auto) == rows_without_time(fixed)
    assert main(certify_args(classifier, tmp_path / "bad.tsv", "--batch-size", "automatic")) == 2
    assert "--batch-size" in capsys.readouterr().err and not (tmp_path / "bad.tsv").exists()


@pytest.mark.slow  # a reference run and a killed-then-resumed one, in fresh processes
def test_killed_sequential_cascade_run_resumes_to_the_uninterrupted_log(tmp_path, classifier):
    """`msrs certify --sequential --sigma 0.5 0.25` (the sequential cascade): SIGKILL midway, the same command
    again, and the log equals the uninterrupted run's, the samples column included."""
    sequential = ("--sigma", "0.5", "0.25", "--sequential", "--target-radii", "0.25", "0.5")
    reference = tmp_path / "reference.tsv"
    assert main(certify_args(classifier, reference, *sequential, "--batch-size", "97", "--group-size", "3")) == 0
    header = reference.read_text().splitlines()[0].split("\t")
    assert header == list(logs.CASCADE_COLUMNS + ("samples",)) and data_rows(reference) == 10

    out = tmp_path / "killed.tsv"
    kill_midway(certify_args(classifier, out, *sequential), out, tmp_path)
    again = run_msrs(certify_args(classifier, out, *sequential), tmp_path)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert rows_without_time(out) == rows_without_time(reference)
    samples = [int(line.split("\t")[-1]) for line in out.read_text().splitlines()[1:]]
    assert all(20 + 64 <= s <= 2 * 220 for s in samples) and min(samples) < 220  # some stopped early


def test_compile_gives_the_eager_log_and_is_part_of_the_configuration(tmp_path, classifier, capsys):
    """--compile (msrs.compiled) in float32: the same certificates as eager; a resume without it is refused (the
    sidecar records it); a TorchScript classifier is refused with a message naming --compile."""
    def args(out, *extra):
        return ["certify", "--dataset", "digits", "--classifier", "demo", "--sigma", "0.25", "--n0", "10", "--n", "60",
                "--batch-size", "64", "--max", "3", "--device", "cpu", "--quiet", "--out", str(out), *extra]

    eager, compiled = tmp_path / "eager.tsv", tmp_path / "compiled.tsv"
    assert main(args(eager)) == 0
    assert main(args(compiled, "--compile")) == 0
    assert rows_without_time(compiled) == rows_without_time(eager)
    capsys.readouterr()
    lines = compiled.read_text().splitlines(keepends=True)
    compiled.write_text("".join(lines[:-1]))  # unfinished, as by a kill (a finished log is refused before loading)
    assert main(args(compiled)) == 2  # resume it without --compile
    assert "run.compile: was true" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    assert main(certify_args(classifier, bad, "--compile")) == 2
    assert "compile: a TorchScript model" in capsys.readouterr().err and not bad.exists()
