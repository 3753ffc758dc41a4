"""The TSV logs (msrs.logs) and the resumable certification loop (msrs.runner), on a fake engine implementing
the documented SmoothedClassifier API (fast, and it checks which images and ids the runner hands over), plus
one small run on the real engine."""
import datetime
import json
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from msrs import logs
from msrs.data import ImageDataset
from msrs.runner import certify_dataset, select_indices


# ------------------------------------------------------------------------------------------------------ fake engine
@dataclass
class FakeCertificate:
    prediction: int
    radius: float
    sigma: float
    stage: int
    samples: int


class Interrupt(Exception):
    pass


class FakeSmoothed:
    """Deterministic in (seed, image id, sigma), like the real engine.  Image i of the test data set is the
    constant i / 1000, so the fake can check that the runner passes each image with its own id."""

    num_classes = 3

    def __init__(self, fail_after_calls=None):
        self.calls = []
        self.fail_after_calls = fail_after_calls

    def _call(self, images, image_ids):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise Interrupt("killed")
        ids = [int(i) for i in image_ids]
        self.calls.append(ids)
        for image, idx in zip(images, ids):
            assert torch.allclose(image, torch.full_like(image, idx / 1000)), "image does not match its id"
        return ids

    @staticmethod
    def _decide(idx, sigma, seed, p0=0.5):
        rng = np.random.default_rng([seed, idx, int(round(sigma * 1e6))])
        u = rng.random()
        if u < 0.2:
            return -1, 0.0
        prediction = idx % 3 if u < 0.8 else (idx + 1) % 3
        return prediction, float(sigma * rng.random() * 2 * (1.5 - p0))

    def certify(self, images, sigma, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5):
        out = []
        for idx in self._call(images, image_ids):
            prediction, radius = self._decide(idx, sigma, seed, p0)
            out.append(FakeCertificate(prediction, radius, sigma, 0 if prediction >= 0 else -1, n0 + n))
        return out

    def certify_cascade(self, images, sigmas, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                        alpha_schedule="union"):
        assert list(sigmas) == sorted(sigmas, reverse=True), "stage 0 must be the largest sigma"
        out = []
        for idx in self._call(images, image_ids):
            stage = idx % (len(sigmas) + 1) - 1
            sigma = sigmas[stage] if stage >= 0 else sigmas[-1]
            prediction, radius = self._decide(idx, sigma, seed, p0) if stage >= 0 else (-1, 0.0)
            out.append(FakeCertificate(prediction, radius, sigma, stage if prediction >= 0 else -1,
                                       (max(stage, 0) + 1) * (n0 + n)))
        return out

    def certify_sequential(self, images, sigma, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                           target_radii=None, bound="spending"):
        self.sequential = (list(target_radii), bound)
        out = self.certify(images, sigma, n0, n, alpha, seed=seed, batch_size=batch_size, image_ids=image_ids, p0=p0)
        return [self._stopped(c, idx, n0) for c, idx in zip(out, image_ids)]

    def certify_cascade_sequential(self, images, sigmas, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                                   target_radii=None, bound="spending"):
        self.sequential = (list(target_radii), bound)
        out = self.certify_cascade(images, sigmas, n0, n, alpha, seed=seed, batch_size=batch_size,
                                   image_ids=image_ids, p0=p0)
        return [self._stopped(c, idx, n0) for c, idx in zip(out, image_ids)]

    def run(self, images, image_ids, config):
        """msrs.runner's entry point: the method config.method names, with the config's settings (as
        SmoothedClassifier.run dispatches to msrs.procedures)."""
        common = dict(seed=config.seed, batch_size=config.batch_size, image_ids=image_ids, p0=config.p0)
        sigmas = config.sigmas if config.cascade else config.sigmas[0]
        if config.sequential is not None:
            common.update(target_radii=config.sequential.target_radii, bound=config.sequential.bound)
        if config.cascade and config.sequential is None:
            common["alpha_schedule"] = config.alpha_schedule
        method = {"certify": self.certify, "cascade": self.certify_cascade, "sequential": self.certify_sequential,
                  "sequential_cascade": self.certify_cascade_sequential}[config.method]
        return method(images, sigmas, config.n0, config.n, config.alpha, **common)

    def check_pipeline(self, images, image_ids, sigmas, *, seed, batch_size):
        """Nothing to check: the fake has no models."""

    @staticmethod
    def _stopped(cert, idx, n0):
        cert.samples = n0 + 64 * (1 + int(idx) % 5)  # a sequential run draws fewer samples, image by image
        return cert


def make_dataset(count=20):
    images = (torch.arange(count, dtype=torch.float32) / 1000).view(count, 1, 1, 1).expand(count, 1, 2, 2)
    return ImageDataset(images.contiguous(), torch.arange(count) % 3, 3, "fake")


KW = dict(sigmas=[0.25], n0=10, n=100, alpha=0.001, seed=0, batch_size=100, progress=False)


def rows_without_time(path):
    """The log's lines with the time column removed: wall times differ between runs, nothing else may."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    t = header.index("time")
    return [[f for i, f in enumerate(line.split("\t")) if i != t] for line in lines]


# --------------------------------------------------------------------------------------------------------------- logs
def test_formats_round_trip():
    rng = np.random.default_rng(0)
    for value in list(rng.random(200) * 3) + [0.0, 1e-300, 0.1 + 0.2, 1 / 3, 123456.789012345678]:
        assert float(logs.format_radius(value)) == value
    assert float("0.1234567") != float(f"{0.12345674321:.6g}")  # why %.6g would not do
    for seconds in (0.0, 0.5, 1.234567, 3725.000001, 90061.5):
        assert logs.format_time(seconds) == str(datetime.timedelta(seconds=seconds))
    assert logs.format_time(1.5) == "0:00:01.500000"
    row = logs.format_row(logs.CASCADE_COLUMNS, {"idx": 3, "label": 1, "predict": -1, "radius": 0.0, "correct": 0,
                                                 "time": 0.25, "stage": -1, "sigma": 0.5})
    assert row == "3\t1\t-1\t0.0\t0\t0:00:00.250000\t-1\t0.5\n"
    with pytest.raises(ValueError, match="missing values"):
        logs.format_row(logs.COLUMNS, {"idx": 0})


def test_writer_reader_round_trip_and_pandas(tmp_path):
    path = tmp_path / "log.tsv"
    rows = [{"idx": i, "label": i % 3, "predict": (i % 3) if i % 4 else -1, "radius": 0.1 * i + 1e-12,
             "correct": int(i % 4 != 0), "time": 0.01 * i} for i in range(6)]
    with logs.TSVWriter(path, logs.COLUMNS, fresh=True) as writer:
        for row in rows:
            writer.write_row(row)
    table = logs.read_log(path)
    assert table["columns"] == logs.COLUMNS
    assert [r["radius"] for r in table["rows"]] == [r["radius"] for r in rows]
    assert [r["predict"] for r in table["rows"]] == [r["predict"] for r in rows]
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(path, delimiter="\t")  # how the field's scripts read it
    assert list(frame.columns) == list(logs.COLUMNS)
    assert frame["radius"].tolist() == [r["radius"] for r in rows]


def test_partial_line_recovery(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n1\t2\t2\t0.")
    assert logs.read_log(path)["rows"][-1]["idx"] == 0  # the reader skips it
    assert logs.recover_partial_line(path) == len("1\t2\t2\t0.")
    assert path.read_text().endswith("0:00:01\n")
    assert logs.recover_partial_line(path) == 0
    path.write_text("idx\tlab")  # killed while writing the header
    assert logs.recover_partial_line(path) == len("idx\tlab")
    assert path.read_bytes() == b""


def test_open_run_lifecycle(tmp_path):
    out = tmp_path / "sub" / "run.tsv"
    config = {"n": 100, "sigmas": [0.5]}
    writer, done = logs.open_run(out, logs.COLUMNS, config, [0, 1, 2], info={"batch_size": 7})
    assert done == set()
    sidecar = json.loads(logs.sidecar_path(out).read_text())  # written before any row
    assert sidecar["run"] == config and sidecar["info"] == {"batch_size": 7}
    assert out.read_text() == "\t".join(logs.COLUMNS) + "\n"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    writer.write_row({"idx": 0, "label": 0, "predict": 0, "radius": 0.25, "correct": 1, "time": 1.0})
    writer.close()

    writer, done = logs.open_run(out, logs.COLUMNS, config, [0, 1, 2], info={"batch_size": 9})  # info is free
    assert done == {0}
    writer.close()
    with pytest.raises(ValueError, match=r"different configuration \(n: was 100, now 200\).*--overwrite"):
        logs.open_run(out, logs.COLUMNS, {"n": 200, "sigmas": [0.5]}, [0, 1, 2])
    with pytest.raises(ValueError, match="already complete.*--overwrite"):
        logs.open_run(out, logs.COLUMNS, config, [0])
    with pytest.raises(ValueError, match="holds images \\[0\\] that this run does not request"):
        logs.open_run(out, logs.COLUMNS, config, [1, 2])
    writer, done = logs.open_run(out, logs.COLUMNS, {"n": 200, "sigmas": [0.5]}, [0], overwrite=True)
    writer.close()
    assert done == set() and len(out.read_text().splitlines()) == 1
    assert json.loads(logs.sidecar_path(out).read_text())["run"]["n"] == 200

    empty = tmp_path / "empty.tsv"  # created, then killed before the configuration was written: a new run
    empty.write_text("")
    writer, done = logs.open_run(empty, logs.COLUMNS, config, [0])
    writer.close()
    assert done == set() and logs.sidecar_path(empty).exists()

    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("something else\n")
    with pytest.raises(ValueError, match="no run configuration.*--overwrite"):
        logs.open_run(foreign, logs.COLUMNS, config, [0])
    assert foreign.read_text() == "something else\n"
    with pytest.raises(IsADirectoryError, match="out: .*folder"):
        logs.open_run(tmp_path, logs.COLUMNS, config, [0])


def test_two_runs_cannot_write_the_same_log(tmp_path):
    pytest.importorskip("fcntl")
    out = tmp_path / "run.tsv"
    first, _ = logs.open_run(out, logs.COLUMNS, {"n": 1}, [0, 1])
    with pytest.raises(ValueError, match="being written by another running msrs certify"):
        logs.open_run(out, logs.COLUMNS, {"n": 1}, [0, 1])
    first.close()
    second, done = logs.open_run(out, logs.COLUMNS, {"n": 1}, [0, 1])  # the lock goes with the writer
    second.close()
    assert done == set()


# ------------------------------------------------------------------------------------------------------------- runner
def test_select_indices():
    assert select_indices(10) == list(range(10))
    assert select_indices(10, skip=3) == [0, 3, 6, 9]
    assert select_indices(10, skip=3, max_images=2) == [0, 3]
    assert select_indices(10, indices=[7, 2, 5, 1], skip=2) == [7, 5]
    with pytest.raises(ValueError, match="indices: \\[10\\] out of range"):
        select_indices(10, indices=[1, 10])
    with pytest.raises(ValueError, match="duplicate"):
        select_indices(10, indices=[1, 1])


def test_rows_are_the_engine_certificates(tmp_path):
    data = make_dataset(7)
    out = certify_dataset(FakeSmoothed(), data, tmp_path / "a.tsv", **KW)
    table = logs.read_log(out)
    assert [r["idx"] for r in table["rows"]] == list(range(7))
    for row in table["rows"]:
        prediction, radius = FakeSmoothed._decide(row["idx"], 0.25, 0)
        assert row["predict"] == prediction and row["radius"] == radius
        assert row["label"] == row["idx"] % 3 and row["correct"] == int(prediction == row["idx"] % 3)
        assert re.fullmatch(r"\d+:\d\d:\d\d(\.\d{6})?", row["time"])
    assert table["columns"] == logs.COLUMNS


def test_grouping_and_selection_do_not_change_certificates(tmp_path):
    data = make_dataset(20)
    one = FakeSmoothed()
    a = certify_dataset(one, data, tmp_path / "a.tsv", group_size=1, skip=2, max_images=7, **KW)
    four = FakeSmoothed()
    b = certify_dataset(four, data, tmp_path / "b.tsv", group_size=4, skip=2, max_images=7,
                        **{**KW, "batch_size": 30})
    assert [len(c) for c in one.calls] == [1] * 7 and [len(c) for c in four.calls] == [4, 3]
    assert rows_without_time(a) == rows_without_time(b)
    assert [r[0] for r in rows_without_time(a)[1:]] == ["0", "2", "4", "6", "8", "10", "12"]
    # the time column is the group's wall time / its size: equal within a group
    times = [r["time"] for r in logs.read_log(b)["rows"]]
    assert times[0] == times[1] == times[2] == times[3] and times[4] == times[5] == times[6]


def test_cascade_columns(tmp_path):
    out = certify_dataset(FakeSmoothed(), make_dataset(6), tmp_path / "c.tsv",
                          **{**KW, "sigmas": [0.25, 1.0, 0.5]})
    table = logs.read_log(out, required=logs.CASCADE_COLUMNS)
    assert table["columns"] == logs.CASCADE_COLUMNS
    sigmas = [1.0, 0.5, 0.25]
    for row in table["rows"]:
        stage = row["idx"] % 4 - 1
        prediction, radius = FakeSmoothed._decide(row["idx"], sigmas[stage], 0) if stage >= 0 else (-1, 0.0)
        assert (row["predict"], row["radius"]) == (prediction, radius)
        assert row["stage"] == (stage if prediction >= 0 else -1)
        assert row["sigma"] == (sigmas[stage] if stage >= 0 else 0.25)
    sidecar = json.loads(logs.sidecar_path(out).read_text())
    assert sidecar["run"]["sigmas"] == [1.0, 0.5, 0.25] and sidecar["run"]["alpha_schedule"] == "union"


def test_interrupted_run_resumes_to_the_same_file(tmp_path):
    data = make_dataset(12)
    full = certify_dataset(FakeSmoothed(), data, tmp_path / "full.tsv", group_size=2, **KW)
    out = tmp_path / "resumed.tsv"
    with pytest.raises(Interrupt):
        certify_dataset(FakeSmoothed(fail_after_calls=3), data, out, group_size=2, **KW)
    assert len(out.read_text().splitlines()) == 1 + 6
    with open(out, "a") as f:
        f.write("6\t0\t0\t0.12")  # a row cut by the kill: dropped on resume
    resumed = FakeSmoothed()
    certify_dataset(resumed, data, out, group_size=3, **KW)  # another grouping: same certificates
    assert sorted(sum(resumed.calls, [])) == list(range(6, 12))
    assert rows_without_time(out) == rows_without_time(full)
    with pytest.raises(ValueError, match="already complete.*--overwrite"):
        certify_dataset(FakeSmoothed(), data, out, **KW)
    before = out.read_text()
    with pytest.raises(ValueError, match="different configuration.*seed: was 0, now 1"):
        certify_dataset(FakeSmoothed(), data, out, **{**KW, "seed": 1})
    assert out.read_text() == before
    again = FakeSmoothed()
    certify_dataset(again, data, out, overwrite=True, **{**KW, "seed": 1})
    assert len(sum(again.calls, [])) == 12 and rows_without_time(out) != rows_without_time(full)


def test_sequential_logs_add_samples_record_the_bound_and_resume(tmp_path):
    data = make_dataset(12)
    kw = {**KW, "sigmas": [0.25, 0.5], "sequential": True, "target_radii": [0.5, 0.25], "group_size": 2}
    engine = FakeSmoothed()
    full = certify_dataset(engine, data, tmp_path / "full.tsv", **kw)
    assert engine.sequential == ([0.25, 0.5], "spending")
    table = logs.read_log(full, required=logs.CASCADE_COLUMNS)
    assert table["columns"] == logs.CASCADE_COLUMNS + ("samples",)  # Cohen's columns first, then the samples
    assert [row["samples"] for row in table["rows"]] == [10 + 64 * (1 + i % 5) for i in range(12)]
    sidecar = json.loads(logs.sidecar_path(full).read_text())
    assert sidecar["run"]["method"] == "sequential_cascade" and sidecar["run"]["alpha_schedule"] == "union"
    assert sidecar["run"]["sequential"] == {"target_radii": [0.25, 0.5], "bound": "spending",
                                            "looks": [64, 71, 79, 87, 100], "final_share": 0.9, "futility": 0.02,
                                            "futility_ramp": 0.1}
    out = tmp_path / "resumed.tsv"
    with pytest.raises(Interrupt):
        certify_dataset(FakeSmoothed(fail_after_calls=3), data, out, **kw)
    with pytest.raises(ValueError, match="different configuration.*bound: was \"spending\", now \"cs\""):
        certify_dataset(FakeSmoothed(), data, out, **kw, sequential_bound="cs")
    certify_dataset(FakeSmoothed(), data, out, **{**kw, "group_size": 5})
    assert rows_without_time(out) == rows_without_time(full)
    # one sigma: Cohen's columns and the samples; the confidence sequence is recorded without looks
    single = FakeSmoothed()
    one = certify_dataset(single, data, tmp_path / "one.tsv", **{**kw, "sigmas": [0.25]}, sequential_bound="cs")
    assert single.sequential == ([0.25, 0.5], "cs")
    assert logs.read_log(one)["columns"] == logs.COLUMNS + ("samples",)
    assert json.loads(logs.sidecar_path(one).read_text())["run"]["sequential"] == {
        "target_radii": [0.25, 0.5], "bound": "cs", "futility": 0.02, "futility_ramp": 0.1}


@pytest.mark.parametrize("change, message", [
    ({"sequential": True, "sigmas": [0.5, 0.25], "alpha_schedule": "paper"}, "alpha_schedule: the sequential"),
    ({"sequential": True, "sequential_bound": "bonferroni"}, "sequential_bound: expected one of"),
    ({"sequential_bound": "cs"}, "sequential_bound: only used in sequential mode"),
    ({"target_radii": [0.5]}, "target_radii: only used in sequential mode"),
])
def test_bad_sequential_arguments_create_no_file(tmp_path, change, message):
    out = tmp_path / "run.tsv"
    with pytest.raises(ValueError, match=message):
        certify_dataset(FakeSmoothed(), make_dataset(3), out, **{**KW, **change})
    assert not out.exists() and not logs.sidecar_path(out).exists()


def test_changed_data_is_refused(tmp_path):
    data = make_dataset(6)
    out = tmp_path / "run.tsv"
    with pytest.raises(Interrupt):
        certify_dataset(FakeSmoothed(fail_after_calls=1), data, out, group_size=1, **KW)
    other = ImageDataset(data.images.clone(), (data.labels + 1) % 3, 3, "fake")
    with pytest.raises(ValueError, match="different configuration.*selected_sha256"):
        certify_dataset(FakeSmoothed(), other, out, **KW)


@pytest.mark.parametrize("change, message", [
    ({"sigmas": []}, "sigma: give at least one"),
    ({"sigmas": [0.25, -1.0]}, "sigma: noise levels must be > 0"),
    ({"sigmas": [0.5, 0.5]}, "sigma: noise levels must be distinct"),
    ({"sigmas": ["a"]}, "sigma: expected a number"),
    ({"n0": 0}, "n0: must be >= 1"),
    ({"n": 5}, "n0: must be <= n"),
    ({"n": 2.5}, "n: expected an integer"),
    ({"alpha": 1.0}, "alpha: must lie in"),
    ({"alpha": float("nan")}, "alpha: must be finite"),
    ({"seed": -1}, "seed: must be >= 0"),
    ({"batch_size": 0}, "batch_size: must be >= 1"),
    ({"group_size": 0}, "group_size: must be >= 1"),
    ({"skip": 0}, "skip: must be >= 1"),
    ({"max_images": 0}, "max_images: must be >= 1"),
    ({"indices": [0, 99]}, "indices: \\[99\\] out of range"),
    ({"p0": 0.4}, "p0: must lie in \\[0.5, 1\\)"),
    ({"sigmas": [0.5, 0.25], "alpha_schedule": "bonferroni"}, "alpha_schedule: expected one of"),
])
def test_bad_arguments_create_no_file(tmp_path, change, message):
    out = tmp_path / "deep" / "run.tsv"
    with pytest.raises((ValueError, TypeError), match=message):
        certify_dataset(FakeSmoothed(), make_dataset(6), out, **{**KW, **change})
    assert not out.exists() and not logs.sidecar_path(out).exists() and not out.parent.exists()


def test_bad_engine_or_data_create_no_file(tmp_path):
    out = tmp_path / "run.tsv"
    with pytest.raises(TypeError, match="smoothed: .*certify"):
        certify_dataset(object(), make_dataset(3), out, **KW)
    with pytest.raises(TypeError, match="dataset"):
        certify_dataset(FakeSmoothed(), [1, 2], out, **KW)
    big = ImageDataset(torch.full((2, 1, 2, 2), 2.0), torch.tensor([0, 1]), 3, "big")
    with pytest.raises(ValueError, match="images must lie in \\[0, 1\\]"):
        certify_dataset(FakeSmoothed(), big, out, **KW)
    many = ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 4]), 5, "many")
    with pytest.raises(ValueError, match="5 classes but the smoothed classifier has 3"):
        certify_dataset(FakeSmoothed(), many, out, **KW)
    with pytest.raises(IsADirectoryError, match="out"):
        certify_dataset(FakeSmoothed(), make_dataset(3), tmp_path, **KW)
    assert not out.exists() and not logs.sidecar_path(out).exists()


def test_progress_bar(tmp_path, capsys):
    certify_dataset(FakeSmoothed(), make_dataset(4), tmp_path / "p.tsv", **{**KW, "progress": True})
    err = capsys.readouterr().err
    assert "4/4" in err and "samples/s" in err


# -------------------------------------------------------------------------------------------------- the real engine
def nearest_mean_classifier():
    """A linear classifier of 8x8 digits with no training: logits = x . mu_c - |mu_c|^2 / 2 (class means of the
    training split)."""
    from msrs.data import digits

    train = digits("train")
    x = train.images.reshape(len(train), -1)
    means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    linear = torch.nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(means)
        linear.bias.copy_(-0.5 * (means ** 2).sum(1))
    return torch.nn.Sequential(torch.nn.Flatten(), linear).eval()


def test_real_engine_grouping_invariance(tmp_path):
    smoothing = pytest.importorskip("msrs.smoothing")
    from msrs.data import digits

    model = nearest_mean_classifier()
    data = digits("test")
    kw = dict(n0=20, n=200, alpha=0.001, seed=3, max_images=6, skip=7, progress=False)
    a = certify_dataset(smoothing.SmoothedClassifier(model, 10, backend="torch"), data, tmp_path / "a.tsv",
                        sigmas=[0.25], batch_size=64, group_size=1, **kw)
    b = certify_dataset(smoothing.SmoothedClassifier(model, 10, backend="torch"), data, tmp_path / "b.tsv",
                        sigmas=[0.25], batch_size=500, group_size=4, **kw)
    assert rows_without_time(a) == rows_without_time(b)
    rows = logs.read_log(a)["rows"]
    assert [r["idx"] for r in rows] == [0, 7, 14, 21, 28, 35]
    assert sum(r["correct"] for r in rows) >= 4  # a sensible classifier at sigma 0.25
    assert all(r["radius"] > 0 for r in rows if r["predict"] >= 0)
    c = certify_dataset(smoothing.SmoothedClassifier(model, 10, backend="torch"), data, tmp_path / "c.tsv",
                        sigmas=[0.25, 0.5], batch_size=256, **kw)
    assert logs.read_log(c, required=logs.CASCADE_COLUMNS)["columns"] == logs.CASCADE_COLUMNS


def test_real_engine_probe_rejects_a_misfit_classifier_before_writing(tmp_path):
    smoothing = pytest.importorskip("msrs.smoothing")
    from msrs.data import digits

    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 10))  # expects 32 inputs, gets 64
    out = tmp_path / "run.tsv"
    with pytest.raises(ValueError, match="classifier"):
        certify_dataset(smoothing.SmoothedClassifier(wrong, 10, backend="torch"), digits("test"), out,
                        sigmas=[0.25], n0=10, n=20, alpha=0.001, seed=0, batch_size=10, max_images=2, progress=False)
    assert not out.exists() and not logs.sidecar_path(out).exists()
