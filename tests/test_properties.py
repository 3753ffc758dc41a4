"""Property-based tests (hypothesis): bad arguments and damaged logs.

- Every numeric option of `msrs certify`, given a bad value, ends the command with status 2 and one line
  `msrs: error: <argument>...`, before any data set or model is loaded.
- msrs.runner.certify_dataset and the SmoothedClassifier methods reject a bad value with a ValueError or TypeError
  whose message starts with the argument's name, before any sample is drawn (the classifier is a stub that counts
  its calls) and before the log is created.
- Logs (msrs.logs): a log cut anywhere in its last row reads back, and resumes, with every finished row intact; a
  damaged finished row or sidecar is an error naming the file (and the line); a refused resume leaves the log as
  it was.
Where a property fails on the code as it is, the test is marked xfail(strict=True) with the failing example and
the fix proposed in its reason, so that fixing the code turns it into an error until the marker is removed.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from msrs import cli, decisions, logs, runner
from msrs.data import ImageDataset
from msrs.smoothing import SmoothedClassifier

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# for the xfail(strict) tests: they fail on the code as it is, and shrinking each failure would cost seconds
NO_SHRINK = settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


def starts_with_name(message: str, names) -> bool:
    """The message starts with one of the names (as a whole word: "n" does not match "n0: ...")."""
    return re.match(rf"^(?:{'|'.join(re.escape(n) for n in names)})(?![\w-])", message) is not None


# --------------------------------------------------------------------------------------------- bad-value strategies
NOT_NUMBERS = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2))
NAN_INF = st.sampled_from([math.nan, math.inf, -math.inf])
NON_INTEGRAL = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())


def bad_int(minimum: int, maximum: int | None = None):
    """Values no integer check with these bounds may accept: ints out of range, non-integral floats, nan / inf,
    and things that are no numbers."""
    out = [st.integers(max_value=minimum - 1)]
    if maximum is not None:
        out.append(st.integers(min_value=maximum + 1))
    return st.one_of(*out, NON_INTEGRAL, NAN_INF, NOT_NUMBERS)


def bad_float(low: float, high: float, low_open: bool = True, high_open: bool = True):
    """Numbers outside the interval (nan and infinities included), and things that are no numbers."""
    below = st.floats(max_value=low, exclude_max=not low_open, allow_nan=False)
    above = st.floats(min_value=high, exclude_min=not high_open, allow_nan=False)
    return st.one_of(below, above, NAN_INF, NOT_NUMBERS)


# ------------------------------------------------------------------------------------ `msrs certify` on the CLI
def _text_of(value) -> str:
    return repr(value) if isinstance(value, float) and math.isfinite(value) else str(value)


def cli_int(minimum: int, maximum: int | None = None):
    """Command-line text for an integer option that must be in [minimum, maximum]: out of range, or not an int."""
    numbers = [st.integers(max_value=minimum - 1)] + ([st.integers(min_value=maximum + 1)] if maximum else [])
    return st.one_of(*[s.map(str) for s in numbers], CLI_NOT_INT)


def cli_float(low: float, high: float, low_open: bool = True, high_open: bool = True):
    below = st.floats(max_value=low, exclude_max=not low_open, allow_nan=False)
    above = st.floats(min_value=high, exclude_min=not high_open, allow_nan=False)
    return st.one_of(below.map(_text_of), above.map(_text_of), st.sampled_from(["nan", "inf", "-inf"]), CLI_NOT_FLOAT)


def _is_int_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# text argparse cannot convert (not starting with "-": argparse would read that as another option)
CLI_NOT_INT = st.one_of(st.sampled_from(["1.5", "1e3", "ten", "0x10", ""]),
                        st.text(min_size=1, max_size=6)).filter(lambda t: not _is_int_text(t) and
                                                                not t.startswith("-") and t != "auto")
CLI_NOT_FLOAT = st.one_of(st.sampled_from(["0,5", "half", "1/2", ""]),
                          st.text(min_size=1, max_size=6)).filter(lambda t: not _is_float_text(t) and
                                                                  not t.startswith("-"))

# option -> (strategy of bad values, the names the message may start with, other options it needs)
CLI_OPTIONS = {
    "--n0": (cli_int(1), ("n0",), ()),
    "--n": (cli_int(1), ("n",), ()),
    "--alpha": (cli_float(0.0, 1.0), ("alpha",), ()),
    "--p0": (cli_float(0.5, 1.0, low_open=False), ("p0",), ()),
    "--seed": (cli_int(0, 2**63 - 1), ("seed",), ()),
    "--sigma": (cli_float(0.0, math.inf), ("sigma",), ()),
    "--batch-size": (cli_int(1), ("batch-size", "batch_size"), ()),
    "--group-size": (cli_int(1), ("group-size", "group_size"), ()),
    "--skip": (cli_int(1), ("skip",), ()),
    "--max": (cli_int(1), ("max", "max_images"), ()),
    "--indices": (cli_int(0), ("indices",), ()),
    "--num-classes": (cli_int(1), ("num-classes", "num_classes"), ()),
    "--image-size": (cli_int(1), ("image-size", "image_size"), ()),
    "--mean": (cli_float(-math.inf, math.inf), ("mean",), ("--std", "0.5")),
    "--std": (cli_float(0.0, math.inf), ("std",), ("--mean", "0.5")),
}


class Loaded(Exception):
    """Raised by the stubs of the loaders: something expensive was loaded before the arguments were checked."""


@pytest.fixture(scope="module")
def out_dir():
    path = Path(tempfile.mkdtemp(prefix="msrs-properties-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_loading(monkeypatch):
    """The data set, classifier and denoiser loaders fail the test if called."""
    import msrs.data
    import msrs.denoiser
    import msrs.models

    def loader(name):
        def load(*args, **kwargs):
            raise Loaded(f"{name} was called before the arguments were checked")
        return load

    monkeypatch.setattr(msrs.data, "load_dataset", loader("load_dataset"))
    monkeypatch.setattr(msrs.models, "load_classifier", loader("load_classifier"))
    monkeypatch.setattr(msrs.denoiser.DiffusionDenoiser, "from_pretrained", loader("from_pretrained"))


def run_certify(argv: list) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["certify", *argv])
    return status, err.getvalue()


def certify_argv(out_dir: Path, option: str, value: str, extra=()) -> list:
    base = {"--dataset": "digits", "--classifier": "demo", "--sigma": "0.25", "--n0": "10", "--n": "20",
            "--device": "cpu", "--quiet": None, "--out": str(out_dir / "cli.tsv")}
    base.update(dict(zip(extra[::2], extra[1::2])))
    base[option] = value
    argv = []
    for key, val in base.items():
        argv += [key] if val is None else [key, val]
    return argv


def assert_one_line_error(status: int, stderr: str, names) -> None:
    assert status == 2, stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"not one line: {stderr!r}"
    prefix = "msrs: error: "
    assert stderr.startswith(prefix), stderr
    message = stderr[len(prefix):]
    message = message[len("argument "):] if message.startswith("argument ") else message
    message = message[2:] if message.startswith("--") else message
    assert starts_with_name(message, names), f"the error does not name {names[0]}: {stderr!r}"


@FAST
@given(data=st.data())
def test_cli_rejects_a_bad_numeric_option(data, out_dir, no_loading):
    option = data.draw(st.sampled_from(sorted(CLI_OPTIONS)), label="option")
    bad, names, extra = CLI_OPTIONS[option]
    value = data.draw(bad, label="value")
    status, stderr = run_certify(certify_argv(out_dir, option, value, extra))
    assert_one_line_error(status, stderr, names)
    assert not (out_dir / "cli.tsv").exists()


@FAST
@given(n=st.integers(1, 10**6), extra=st.integers(1, 10**6))
def test_cli_rejects_n0_above_n(n, extra, out_dir, no_loading):
    status, stderr = run_certify(certify_argv(out_dir, "--n0", str(n + extra), ("--n", str(n))))
    assert_one_line_error(status, stderr, ("n0",))


@FEW
@given(values=st.lists(st.floats(0.01, 2.0), min_size=1, max_size=3))
def test_cli_rejects_repeated_sigmas(values, out_dir, no_loading):
    argv = certify_argv(out_dir, "--sigma", "0.25")
    at = argv.index("--sigma") + 1
    argv[at:at + 1] = [_text_of(v) for v in values + values[:1]]
    assert_one_line_error(*run_certify(argv), ("sigma",))


@NO_SHRINK
@given(value=cli_float(0.0, math.inf, low_open=False).filter(lambda t: _is_float_text(t)))
def test_cli_rejects_bad_target_radii_before_loading(value, out_dir, no_loading):
    argv = certify_argv(out_dir, "--target-radii", value, ("--sequential", None))
    argv = [a for a in argv if a is not None]
    assert_one_line_error(*run_certify(argv), ("target-radii", "target_radii"))


def test_cli_rejects_one_class_before_loading(out_dir, no_loading):
    assert_one_line_error(*run_certify(certify_argv(out_dir, "--num-classes", "1")), ("num-classes", "num_classes"))


# ------------------------------------------------------------------------------------ the Python API: no sampling
class Stub:
    """A classifier that counts its calls (and fails them): any call means sampling happened."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        raise AssertionError("the classifier ran before the arguments were checked")


STUB = Stub()
ENGINE = SmoothedClassifier(STUB, 3, backend="torch")
IMAGES = torch.full((2, 1, 4, 4), 0.5)


def assert_rejected_before_sampling(call, names) -> None:
    STUB.calls = 0
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert STUB.calls == 0, f"sampled before rejecting the argument ({info.value})"
    assert starts_with_name(str(info.value), names), f"the error does not start with {names[0]!r}: {info.value}"


# method -> (positional arguments, keyword arguments) of a valid call
VALID = {
    "sample_counts": ((IMAGES, None, 0.5, 10), dict(stream=0, seed=0, batch_size=8, sample_start=0)),
    "predict": ((IMAGES, 0.5, 10, 0.01), dict(seed=0, batch_size=8, image_ids=None)),
    "certify": ((IMAGES, 0.5, 5, 10, 0.01), dict(seed=0, batch_size=8, image_ids=None, p0=0.5)),
    "certify_cascade": ((IMAGES, [0.5, 0.25], 5, 10, 0.01), dict(seed=0, batch_size=8, image_ids=None, p0=0.5)),
    "certify_sequential": ((IMAGES, 0.5, 5, 64, 0.01), dict(seed=0, batch_size=8, image_ids=None, p0=0.5,
                                                             target_radii=[0.1])),
    "certify_cascade_sequential": ((IMAGES, [0.5, 0.25], 5, 64, 0.01), dict(seed=0, batch_size=8, image_ids=None,
                                                                             p0=0.5, target_radii=[0.1])),
}
POSITIONAL = {
    "sample_counts": ("images", "image_ids", "sigma", "num_samples"),
    "predict": ("images", "sigma", "n", "alpha"),
    "certify": ("images", "sigma", "n0", "n", "alpha"),
    "certify_cascade": ("images", "sigmas", "n0", "n", "alpha"),
    "certify_sequential": ("images", "sigma", "n0", "n_max", "alpha"),
    "certify_cascade_sequential": ("images", "sigmas", "n0", "n_max", "alpha"),
}
MASK32 = 2**32 - 1
BAD_IDS = st.one_of(st.just(torch.tensor([0.0, 1.0])), st.just(torch.tensor([-1, 0])), st.just(torch.tensor([0])),
                    st.just(torch.tensor([0, 2**32])), st.just(torch.tensor([True, False])))
BAD_SIGMAS = st.one_of(st.just([]), st.lists(bad_float(0.0, math.inf), min_size=1, max_size=2).map(lambda v: v + [0.5]),
                       st.floats(0.01, 1.0).map(lambda s: [s, s]), st.just(0.5), st.just("0.5"))
# argument -> (bad values, methods that take it)
API_ARGUMENTS = {
    "sigma": (bad_float(0.0, math.inf), ("sample_counts", "predict", "certify", "certify_sequential")),
    "sigmas": (BAD_SIGMAS, ("certify_cascade", "certify_cascade_sequential")),
    "num_samples": (bad_int(0, MASK32 + 1), ("sample_counts",)),
    "n": (bad_int(1, MASK32 + 1), ("predict", "certify", "certify_cascade")),
    "n0": (bad_int(1, MASK32 + 1), ("certify", "certify_cascade", "certify_sequential", "certify_cascade_sequential")),
    "alpha": (bad_float(0.0, 1.0), ("predict", "certify", "certify_cascade", "certify_sequential",
                                    "certify_cascade_sequential")),
    "p0": (bad_float(0.5, 1.0, low_open=False), ("certify", "certify_cascade", "certify_sequential",
                                                  "certify_cascade_sequential")),
    "seed": (bad_int(0, 2**63 - 1), tuple(VALID)),
    "batch_size": (bad_int(1), tuple(VALID)),
    "stream": (bad_int(0, MASK32), ("sample_counts",)),
    "sample_start": (st.one_of(st.integers(-2**63, -1), st.integers(2**32 - 9, 2**63 - 1), NON_INTEGRAL,
                               st.just([0, 1, 2])), ("sample_counts",)),
    "image_ids": (BAD_IDS, ("predict", "certify", "certify_cascade", "certify_sequential",
                            "certify_cascade_sequential")),
}


def call_with(method: str, name: str, value):
    args, kwargs = VALID[method]
    args, kwargs = list(args), dict(kwargs)
    if name in POSITIONAL[method]:
        args[POSITIONAL[method].index(name)] = value
    else:
        kwargs[name] = value
    return lambda: getattr(ENGINE, method)(*args, **kwargs)


def _api_cases():
    return [(name, method) for name, (_, methods) in API_ARGUMENTS.items() for method in methods]


@FAST
@given(data=st.data())
def test_engine_rejects_a_bad_argument_before_sampling(data):
    name, method = data.draw(st.sampled_from(_api_cases()), label="argument, method")
    value = data.draw(API_ARGUMENTS[name][0], label="value")
    assert_rejected_before_sampling(call_with(method, name, value), (name,))


@pytest.mark.parametrize("method", API_ARGUMENTS["alpha"][1])
@pytest.mark.parametrize("alpha", [[], [0.01], torch.tensor([0.01, 0.02]), (0.01,)])
def test_engine_takes_one_alpha_not_a_list(method, alpha):
    """A list or array of levels, even an empty one, is refused before sampling (hypothesis found predict taking
    alpha=[]: the vectorised bounds' level check accepts arrays, and an empty one has no bad entry)."""
    assert_rejected_before_sampling(call_with(method, "alpha", alpha), ("alpha",))


@NO_SHRINK
@given(data=st.data())
def test_engine_names_values_torch_cannot_convert(data):
    huge = st.integers(min_value=2**63)
    case = data.draw(st.sampled_from(["sample_start", "image_ids"]), label="argument")
    if case == "sample_start":
        call = call_with("sample_counts", "sample_start", data.draw(st.one_of(huge, huge.map(lambda v: -v))))
    else:
        value = data.draw(st.one_of(st.lists(huge, min_size=2, max_size=2), st.just(["a", "b"])))
        call = call_with(data.draw(st.sampled_from(["predict", "certify", "certify_cascade"])), "image_ids", value)
    assert_rejected_before_sampling(call, (case,))


@FEW
@given(n=st.integers(1, 1000), extra=st.integers(1, 1000),
       method=st.sampled_from(["certify", "certify_cascade"]))
def test_engine_rejects_n0_above_n(n, extra, method):
    args, kwargs = VALID[method]
    assert_rejected_before_sampling(lambda: getattr(ENGINE, method)(args[0], args[1], n + extra, n, args[4],
                                                                     **kwargs), ("n0",))


@NO_SHRINK
@given(value=bad_int(1, MASK32 + 1), method=st.sampled_from(["certify_sequential", "certify_cascade_sequential"]))
def test_engine_names_n_max(value, method):
    assert_rejected_before_sampling(call_with(method, "n_max", value), ("n_max",))


SEQUENTIAL_OPTIONS = {
    "final_share": bad_float(0.0, 1.0, high_open=False).filter(lambda v: v is not None),  # None: default
    "growth": bad_float(-math.inf, 1.0, low_open=True, high_open=False).filter(lambda v: not (
        isinstance(v, float) and v > 1.0 and math.isfinite(v))),
    "first": st.one_of(NON_INTEGRAL, NOT_NUMBERS.filter(lambda v: v is not None)),
    "chunk": st.one_of(st.integers(max_value=0), NON_INTEGRAL),
    "points": st.one_of(st.just([0]), st.just([10**6]), st.just([2.5])),
    "bound": st.text(max_size=5).filter(lambda t: t not in ("spending", "cs")),
    "schedule": st.text(max_size=5).filter(lambda t: t not in ("geometric", "fixed")),
    "prior": st.one_of(st.just((0.0, 1.0)), st.just((1.0, -1.0)), st.just((math.nan, 1.0)), st.just(("a", 1.0))),
    "weights": st.one_of(st.just([0.5, 0.5]), st.just([-1.0, 2.0])),
}


@NO_SHRINK
@given(data=st.data())
def test_engine_rejects_bad_sequential_options_before_sampling(data):
    method = data.draw(st.sampled_from(["certify_sequential", "certify_cascade_sequential"]), label="method")
    name = data.draw(st.sampled_from(sorted(SEQUENTIAL_OPTIONS)), label="option")
    value = data.draw(SEQUENTIAL_OPTIONS[name], label="value")
    args, kwargs = VALID[method]
    options = {name: value, **({"schedule": "fixed"} if name == "chunk" else {})}
    assert_rejected_before_sampling(lambda: getattr(ENGINE, method)(*args, **kwargs, **options), (name,))


# --------------------------------------------------------------------------------- runner.certify_dataset
DATASET = ImageDataset(torch.full((6, 1, 4, 4), 0.5), torch.arange(6) % 3, 3, "tiny")
RUNNER_VALID = dict(sigmas=[0.5], n0=5, n=10, alpha=0.01, seed=0, batch_size=8, progress=False)
NOT_BOOL = lambda v: not isinstance(v, bool)  # noqa: E731 - booleans: test_certify_dataset_rejects_booleans_for_integers
RUNNER_ARGUMENTS = {
    "sigmas": (BAD_SIGMAS.filter(lambda v: not isinstance(v, float)), ("sigmas", "sigma")),
    "n0": (bad_int(1).filter(NOT_BOOL), ("n0",)),
    "n": (bad_int(1).filter(NOT_BOOL), ("n",)),
    "alpha": (bad_float(0.0, 1.0), ("alpha",)),
    "seed": (bad_int(0, 2**63 - 1).filter(NOT_BOOL), ("seed",)),
    "batch_size": (bad_int(1).filter(NOT_BOOL), ("batch_size",)),
    "group_size": (bad_int(1).filter(lambda v: v is not None and NOT_BOOL(v)), ("group_size",)),
    "skip": (bad_int(1).filter(NOT_BOOL), ("skip",)),
    "max_images": (bad_int(1).filter(lambda v: v is not None and NOT_BOOL(v)), ("max_images",)),
    "p0": (bad_float(0.5, 1.0, low_open=False), ("p0",)),
    "alpha_schedule": (st.text(max_size=6).filter(lambda t: t not in decisions.SCHEDULES), ("alpha_schedule",)),
    "indices": (st.one_of(st.just([]), st.lists(st.integers(max_value=-1), min_size=1, max_size=2),
                          st.lists(st.integers(min_value=6), min_size=1, max_size=2), st.just([1, 1]),
                          st.just([0.5])), ("indices",)),
}


@FAST
@given(data=st.data())
def test_certify_dataset_rejects_a_bad_argument_before_sampling(data, out_dir):
    name = data.draw(st.sampled_from(sorted(RUNNER_ARGUMENTS)), label="argument")
    bad, names = RUNNER_ARGUMENTS[name]
    value = data.draw(bad, label="value")
    out = out_dir / "runner.tsv"
    kwargs = {**RUNNER_VALID, name: value}
    assert_rejected_before_sampling(lambda: runner.certify_dataset(ENGINE, DATASET, out, **kwargs), names)
    assert not out.exists() and not logs.sidecar_path(out).exists()


@NO_SHRINK
@given(name=st.sampled_from(["n0", "n", "seed", "batch_size", "group_size", "skip", "max_images"]),
       value=st.booleans())
def test_certify_dataset_rejects_booleans_for_integers(name, value, out_dir):
    out = out_dir / "runner-bool.tsv"
    kwargs = {**RUNNER_VALID, name: value}
    assert_rejected_before_sampling(lambda: runner.certify_dataset(ENGINE, DATASET, out, **kwargs), (name,))


@FEW
@given(radii=st.lists(st.one_of(st.floats(max_value=0.0, exclude_max=True), NAN_INF), min_size=1, max_size=2),
       cascade=st.booleans())
def test_certify_dataset_rejects_bad_target_radii_before_sampling(radii, cascade, out_dir):
    out = out_dir / "runner-seq.tsv"
    kwargs = {**RUNNER_VALID, "sigmas": [0.5, 0.25] if cascade else [0.5], "sequential": True,
              "target_radii": radii + [0.25]}
    assert_rejected_before_sampling(lambda: runner.certify_dataset(ENGINE, DATASET, out, **kwargs),
                                    ("target_radii",))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- logs and resume
ROW = st.fixed_dictionaries({
    "label": st.integers(0, 9), "predict": st.integers(-1, 9),
    "radius": st.floats(0.0, 5.0, allow_subnormal=False), "time": st.floats(0.0, 100.0),
})


def write_log(path: Path, rows: list) -> bytes:
    """A finished-rows log of `rows` (idx 0..len-1) through msrs's own writer; returns its bytes."""
    with logs.TSVWriter(path, logs.COLUMNS, fresh=True) as writer:
        for i, row in enumerate(rows):
            writer.write_row({"idx": i, "correct": int(row["predict"] == row["label"]), **row})
    return path.read_bytes()


def line_starts(data: bytes) -> list:
    """Byte offsets where each line starts."""
    return [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")][:-1]


def expected_rows(rows: list) -> list:
    return [{"idx": i, "label": r["label"], "predict": r["predict"], "radius": r["radius"],
             "correct": int(r["predict"] == r["label"]), "time": logs.format_time(r["time"])}
            for i, r in enumerate(rows)]


@FAST
@given(rows=st.lists(ROW, min_size=1, max_size=6), data=st.data())
def test_a_log_cut_in_its_last_row_reads_and_resumes_with_every_finished_row(rows, data, out_dir):
    path = out_dir / "cut.tsv"
    full = write_log(path, rows)
    last = line_starts(full)[-1]
    cut = data.draw(st.integers(last + 1, len(full) - 1), label="cut")  # inside the last row, newline lost
    path.write_bytes(full[:cut])
    assert logs.read_log(path)["rows"] == expected_rows(rows)[:-1]
    logs.write_json_atomic(logs.sidecar_path(path), {"format": logs.SIDECAR_FORMAT, "columns": list(logs.COLUMNS),
                                                     "run": {"n": 1}, "info": {}})
    writer, done = logs.open_run(path, logs.COLUMNS, {"n": 1}, range(len(rows)))
    writer.close()
    assert done == set(range(len(rows) - 1))
    assert path.read_bytes() == full[:last]  # the finished rows, byte for byte


def corrupt_field(draw, column: str) -> str:
    """A value that cannot be read back in that column."""
    if column in ("radius",):
        return draw(st.sampled_from(["", "abc", "0.5.1", "1,5", "--1"]))
    return draw(st.sampled_from(["", "x", "1.5", "0x1", "1e3", "--1"]))


@FAST
@given(rows=st.lists(ROW, min_size=2, max_size=6), data=st.data())
def test_a_damaged_finished_row_is_an_error_naming_the_file_and_line(rows, data, out_dir):
    path = out_dir / "damaged.tsv"
    lines = write_log(path, rows).decode().split("\n")[:-1]
    number = data.draw(st.integers(2, len(lines)), label="line")  # 1-based; line 1 is the header
    fields = lines[number - 1].split("\t")
    damage = data.draw(st.sampled_from(["value", "drop", "extra"]), label="damage")
    if damage == "value":
        column = data.draw(st.sampled_from(["idx", "label", "predict", "radius", "correct"]), label="column")
        fields[logs.COLUMNS.index(column)] = corrupt_field(data.draw, column)
    elif damage == "drop":
        del fields[data.draw(st.integers(0, len(fields) - 1))]
    else:
        fields.insert(data.draw(st.integers(0, len(fields))), "7")
    lines[number - 1] = "\t".join(fields)
    damaged = ("\n".join(lines) + "\n").encode()
    path.write_bytes(damaged)
    with pytest.raises(ValueError) as info:
        logs.read_log(path)
    assert str(path) in str(info.value) and f"line {number}" in str(info.value), str(info.value)
    # a resume refuses it too, and changes nothing
    logs.write_json_atomic(logs.sidecar_path(path), {"format": logs.SIDECAR_FORMAT, "columns": list(logs.COLUMNS),
                                                     "run": {"n": 1}, "info": {}})
    with pytest.raises(ValueError, match=re.escape(str(path))):
        logs.open_run(path, logs.COLUMNS, {"n": 1}, range(len(rows)))
    assert path.read_bytes() == damaged


@NO_SHRINK
@given(rows=st.lists(ROW, min_size=2, max_size=4), data=st.data())
def test_bytes_that_are_not_utf8_are_reported_with_their_line(rows, data, out_dir):
    path = out_dir / "binary.tsv"
    full = write_log(path, rows)
    starts = line_starts(full)
    number = data.draw(st.integers(2, len(starts)), label="line")
    at = starts[number - 1] + data.draw(st.integers(0, 2), label="offset")
    path.write_bytes(full[:at] + b"\xff" + full[at + 1:])
    with pytest.raises(ValueError, match=rf"line {number}\b"):
        logs.read_log(path)


SIDECAR_DAMAGE = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"{", b"[]", b"null", b'"run"', b"{}", b'{"format": "msrs-certify-run/1"}']),
)


@FAST
@given(rows=st.lists(ROW, min_size=1, max_size=4), damage=SIDECAR_DAMAGE, data=st.data())
def test_a_damaged_sidecar_is_an_error_naming_it_and_the_log_is_kept(rows, damage, data, out_dir):
    path = out_dir / "sidecar.tsv"
    full = write_log(path, rows)
    sidecar = logs.sidecar_path(path)
    good = json.dumps({"format": logs.SIDECAR_FORMAT, "columns": list(logs.COLUMNS), "run": {"n": 1},
                       "info": {}}).encode()
    if data.draw(st.booleans(), label="truncate a valid one instead"):
        damage = good[:data.draw(st.integers(0, len(good) - 1), label="cut")]
    sidecar.write_bytes(damage)
    with pytest.raises(ValueError) as info:
        logs.open_run(path, logs.COLUMNS, {"n": 1}, range(len(rows) + 1))
    assert str(sidecar) in str(info.value), str(info.value)
    assert path.read_bytes() == full and sidecar.read_bytes() == damage


@NO_SHRINK
@given(run=st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.lists(st.integers(), min_size=1,
                                                                               max_size=2)),
       field=st.sampled_from(["run", "columns"]))
def test_a_sidecar_with_entries_of_the_wrong_type_is_an_error_naming_it(run, field, out_dir):
    path = out_dir / "typed.tsv"
    full = write_log(path, [{"label": 0, "predict": 0, "radius": 0.5, "time": 1.0}])
    payload = {"format": logs.SIDECAR_FORMAT, "columns": list(logs.COLUMNS), "run": {"n": 1}, "info": {}}
    payload[field] = run
    sidecar = logs.sidecar_path(path)
    sidecar.write_text(json.dumps(payload))
    with pytest.raises(ValueError) as info:
        logs.open_run(path, logs.COLUMNS, {"n": 1}, range(2))
    assert str(path) in str(info.value), str(info.value)  # the log or its sidecar (whose name contains it)
    assert path.read_bytes() == full


@FAST
@given(rows=st.lists(ROW, min_size=1, max_size=5))
def test_reading_a_log_gives_back_what_was_written(rows, out_dir):
    """The round trip the properties above rely on: every value read back equals the value written."""
    path = out_dir / "round.tsv"
    write_log(path, rows)
    assert logs.read_log(path)["rows"] == expected_rows(rows)
