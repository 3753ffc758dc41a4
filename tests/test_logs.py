"""msrs.logs: the sidecar's permissions, the checks of --out made before anything is loaded, the resume message."""
import os
import stat
from pathlib import Path

import pytest

from msrs import logs

CONFIG = {"method": "certify", "sigmas": [0.5], "n0": 10, "n": 100, "alpha": 0.001, "seed": 0,
          "selection": {"indices": None, "skip": 1, "max_images": 3, "count": 3, "first": 0, "last": 2},
          "run": {"dtype": "float32"}}


def _row(idx):
    return {"idx": idx, "label": 1, "predict": 1, "radius": 0.5, "correct": 1, "time": 0.1}


def _log(path, ids, config=CONFIG):
    writer, done = logs.open_run(path, logs.COLUMNS, config, range(3))
    with writer:
        for i in ids:
            writer.write_row(_row(i))
    return done


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_sidecar_has_the_logs_permissions(tmp_path, umask, mask):
    umask(mask)
    out = tmp_path / "k.tsv"
    _log(out, [0])
    tsv_mode = stat.S_IMODE(out.stat().st_mode)
    assert tsv_mode == 0o644 & ~mask  # what os.open(..., 0o644) gives under this umask
    assert stat.S_IMODE(logs.sidecar_path(out).stat().st_mode) == tsv_mode
    assert logs.current_umask() == mask


def test_sidecar_follows_a_log_whose_mode_was_changed(tmp_path, umask):
    out = tmp_path / "k.tsv"
    out.write_text("")
    os.chmod(out, 0o640)  # an empty log (killed before its header) is restarted in place: keep its mode
    _log(out, [0])
    assert stat.S_IMODE(logs.sidecar_path(out).stat().st_mode) == 0o640


def test_check_out_accepts_new_and_resumable_logs(tmp_path):
    deep = tmp_path / "a" / "b" / "k.tsv"
    assert logs.check_out(str(deep), overwrite=False) == deep
    assert not (tmp_path / "a").exists()  # checking creates nothing
    out = tmp_path / "k.tsv"
    _log(out, [0, 2])
    assert logs.check_out(out, overwrite=False, columns=logs.COLUMNS,
                          config={"sigmas": [0.5], "n": 100, "run": {"dtype": "float32"}}) == out
    _, done = logs.open_run(out, logs.COLUMNS, CONFIG, range(3))
    assert done == {0, 2}
    assert logs.resume_message(out, len(done), 3) == f"resuming {out}: 2 of 3 images done"
    assert logs.resume_message("logs/k.tsv", 2, 12) == "resuming logs/k.tsv: 2 of 12 images done"
    assert logs.resume_message(out, 0, 3) is None


def test_check_out_finds_a_finished_log_like_open_run(tmp_path):
    out = tmp_path / "k.tsv"
    _log(out, [0, 1, 2])
    with pytest.raises(logs.FinishedLog, match=f"{out}.*already complete \\(3 of 3 images\\).*--overwrite"):
        logs.check_out(out, overwrite=False)
    with pytest.raises(logs.FinishedLog):  # the refusal check_out announces is the one open_run makes
        logs.open_run(out, logs.COLUMNS, CONFIG, range(3))
    assert logs.check_out(out, overwrite=True) == out
    # a killed run's trailing partial line is not an image
    partial = tmp_path / "p.tsv"
    _log(partial, [0, 1])
    with open(partial, "a") as f:
        f.write("2\t1\t1\t0.")
    assert logs.check_out(partial, overwrite=False) == partial


def test_check_out_refusals_name_path_and_reason(tmp_path):
    with pytest.raises(ValueError, match="out: give a path"):
        logs.check_out("", overwrite=False)
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}.*is a folder"):
        logs.check_out(tmp_path, overwrite=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"cannot create the folder.*{blocker}.*is a file"):
        logs.check_out(blocker / "sub" / "k.tsv", overwrite=False)
    (tmp_path / "s.tsv.json").mkdir()
    with pytest.raises(IsADirectoryError, match="s.tsv.json.*is a folder"):
        logs.check_out(tmp_path / "s.tsv", overwrite=False)
    # a read-only place, for root too (sysfs refuses new files whoever asks; chmod 555 would not stop root)
    with pytest.raises(PermissionError, match="cannot create the folder '/sys/msrs-test' in '/sys'.*k.tsv"):
        logs.check_out("/sys/msrs-test/k.tsv", overwrite=False)
    orphan = tmp_path / "orphan.tsv"
    orphan.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    with pytest.raises(ValueError, match="orphan.tsv.*no run configuration"):
        logs.check_out(orphan, overwrite=False)
    assert logs.check_out(orphan, overwrite=True) == orphan


def test_check_out_compares_what_is_known(tmp_path):
    out = tmp_path / "k.tsv"
    _log(out, [0])
    with pytest.raises(ValueError, match="different configuration.*n: was 100, now 1000"):
        logs.check_out(out, overwrite=False, config={"n": 1000})
    with pytest.raises(ValueError, match="run.dtype: was \"float32\", now \"bfloat16\""):
        logs.check_out(out, overwrite=False, config={"run": {"dtype": "bfloat16"}})
    with pytest.raises(ValueError, match="columns: was"):
        logs.check_out(out, overwrite=False, columns=logs.CASCADE_COLUMNS)
    with pytest.raises(ValueError, match="new_key: was \"<absent>\""):
        logs.check_out(out, overwrite=False, config={"new_key": 1})
    assert logs.check_out(out, overwrite=True, config={"n": 1000}) == out


def test_check_out_sees_a_running_log(tmp_path):
    out = tmp_path / "k.tsv"
    writer, _ = logs.open_run(out, logs.COLUMNS, CONFIG, range(3))  # holds the lock, as a running certify does
    try:
        with pytest.raises(ValueError, match="being written by another running msrs certify"):
            logs.check_out(out, overwrite=False)
    finally:
        writer.close()
    assert logs.check_out(out, overwrite=False) == out
    assert Path(out).read_text().startswith("idx\t")
