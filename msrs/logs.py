"""The field's certification log: one tab-separated row per image, and safe resumption of an interrupted run.

Format (what locuslab/smoothing's ``certify.py`` writes and its analysis scripts read with
``pandas.read_csv(path, delimiter="\\t")``)::

    idx  label  predict  radius  correct  time            (single sigma: Cohen's CERTIFY)
    idx  label  predict  radius  correct  time  stage  sigma   (multi-scale cascade)

``predict`` is -1 for ABSTAIN (radius 0), ``correct`` is 1 when predict == label, ``radius`` is written with
``repr(float)`` (the shortest string that reads back as the same double), ``time`` is the wall time per image as
``str(datetime.timedelta)`` (h:mm:ss.ffffff), ``stage`` the cascade stage that decided (0 = largest sigma, -1 when
the cascade abstained) and ``sigma`` that stage's noise level.

Durability: each row is one ``os.write`` of a complete line on an unbuffered descriptor, followed by
``os.fsync``, so a run killed at any moment leaves complete rows plus at most one partial last line.  Before the
first row, the run's configuration is written next to the log as ``<out>.json`` (atomically: temp file, fsync,
``os.replace``).  :func:`open_run` resumes a log: it drops a trailing partial line, returns the image ids already
done, and refuses to resume under a different configuration or to overwrite a finished log unless
``overwrite=True``.  The open log holds an exclusive ``flock``, so a second run started on the same file is
refused instead of interleaving its rows (the lock dies with the process).  The sidecar gets the log's
permissions (0o644 less the umask for a new log), not mkstemp's private 0o600.

Before any model or data is loaded, :func:`check_out` finds an ``--out`` that this run could not use (a folder, a
folder that cannot be created or written, a log being written by another run, a log without its configuration, a
finished log) and says why; :func:`resume_message` is what a resumed run prints.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

__all__ = [
    "COLUMNS",
    "CASCADE_COLUMNS",
    "SIDECAR_FORMAT",
    "FinishedLog",
    "TSVWriter",
    "check_out",
    "config_differences",
    "format_radius",
    "format_row",
    "format_time",
    "open_run",
    "read_log",
    "read_sidecar",
    "recover_partial_line",
    "resume_message",
    "sidecar_path",
    "write_json_atomic",
]

PathLike = Union[str, os.PathLike]

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
CASCADE_COLUMNS = COLUMNS + ("stage", "sigma")
SIDECAR_FORMAT = "msrs-certify-run/1"
_INT_COLUMNS = ("idx", "label", "predict", "correct", "stage", "samples")  # samples: sequential logs


# --------------------------------------------------------------------------------------------------------- formatting
def format_radius(value: float) -> str:
    """The shortest decimal string that reads back as the same double (``repr``); nan/inf spelled as pandas reads."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def format_time(seconds: float) -> str:
    """Wall time as locuslab/smoothing writes it: ``str(datetime.timedelta(seconds=...))``, e.g. 0:00:01.234567."""
    return str(datetime.timedelta(seconds=max(0.0, float(seconds))))


def format_row(columns: Sequence[str], values: Mapping) -> str:
    """One complete line (with its newline) of the log for ``values`` (a mapping with every column)."""
    missing = [c for c in columns if c not in values]
    if missing:
        raise ValueError(f"row: missing values for columns {missing}")
    fields = []
    for column in columns:
        value = values[column]
        if column in ("radius", "sigma"):
            fields.append(format_radius(value))
        elif column == "time":
            fields.append(value if isinstance(value, str) else format_time(value))
        elif column in _INT_COLUMNS:
            fields.append(str(int(value)))
        else:
            fields.append(str(value))
    for text in fields:
        if "\t" in text or "\n" in text:
            raise ValueError(f"row: field {text!r} contains a tab or newline")
    return "\t".join(fields) + "\n"


# ------------------------------------------------------------------------------------------------------------ writing
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TSVWriter:
    """Appends rows to a log: each row is one write of a whole line on an unbuffered descriptor, then fsync.

    fresh=True truncates the file and writes the header.  ``fd``: an already open (O_APPEND) descriptor of the file
    to take over (open_run passes its locked one); by default the file is opened here.
    """

    def __init__(self, path: PathLike, columns: Sequence[str], *, fresh: bool, fd: Optional[int] = None):
        self.path = Path(path)
        self.columns = tuple(columns)
        if fd is None:
            fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._fd: Optional[int] = fd
        if fresh:
            os.ftruncate(fd, 0)
            self._write_line("\t".join(self.columns) + "\n")
            _fsync_dir(self.path.parent)

    def _write_line(self, line: str) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: the log is closed")
        _write_all(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)

    def write_row(self, values: Mapping) -> None:
        self._write_line(format_row(self.columns, values))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases open_run's lock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _lock(fd: int, out: Path) -> None:
    """An exclusive advisory lock on the open log (released when it is closed or the process dies), so that two
    runs started on the same --out cannot interleave their rows."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"out: {str(out)!r} is being written by another running msrs certify; wait for it to "
                         "finish or choose another --out") from None
    except OSError:  # a file system without flock support: go on unlocked
        return


def sidecar_path(out: PathLike) -> Path:
    """The run's configuration file: ``<out>.json``."""
    return Path(str(out) + ".json")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc/self/status), else by setting and
    restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """What ``os.open(path, O_CREAT, 0o644)`` gives a new file (the log's mode): 0o644 less the umask."""
    return 0o644 & ~current_umask()


def write_json_atomic(path: PathLike, payload, *, mode: Optional[int] = None) -> None:
    """Writes JSON to ``path`` through a temp file in the same folder, fsync and os.replace.  The file gets
    ``mode`` (default new_file_mode(): a log's permissions, where mkstemp alone would give 0o600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, new_file_mode() if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def read_sidecar(out: PathLike) -> Optional[dict]:
    """The configuration recorded beside ``out`` (None when there is none); ValueError when unreadable."""
    path = sidecar_path(out)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"out: the run configuration {str(path)!r} is unreadable ({e}); pass --overwrite to start "
                         "afresh") from None
    columns = payload.get("columns", []) if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("format") != SIDECAR_FORMAT \
            or not isinstance(payload.get("run"), dict) \
            or not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise ValueError(f"out: {str(path)!r} is not an msrs run configuration; pass --overwrite to start afresh")
    return payload


# ------------------------------------------------------------------------------------------------------------ reading
def recover_partial_line(path: PathLike) -> int:
    """Truncates a trailing partial line (a run killed mid-write) from ``path``; returns the bytes dropped."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the last newline, reading backwards in blocks
        position, keep = size, 0
        while position > 0:
            step = min(1 << 16, position)
            position -= step
            f.seek(position)
            block = f.read(step)
            index = block.rfind(b"\n")
            if index >= 0:
                keep = position + index + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def _parse_value(column: str, text: str):
    if column in _INT_COLUMNS:
        return int(text)
    if column in ("radius", "sigma"):
        return float(text)
    return text


def read_log(path: PathLike, *, required: Sequence[str] = COLUMNS, skip_partial: bool = True) -> dict:
    """Reads a log into {"columns": tuple, "rows": list of dicts}.  A trailing line without its newline (a run
    being written or killed) is skipped when ``skip_partial``; any other malformed line is an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{str(path)!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"{str(path)!r} is unreadable ({e})") from None
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):  # decoded line by line, to name the damaged one
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{str(path)!r} line {number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    partial = lines.pop()  # "" when the file ends with a newline
    if partial and not skip_partial:
        lines.append(partial)
    if not lines or not lines[0].strip():
        raise ValueError(f"{str(path)!r} is empty (no header line)")
    columns = tuple(c.strip() for c in lines[0].rstrip("\r").split("\t"))
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{str(path)!r}: header {list(columns)} lacks the columns {missing} (expected a "
                         f"tab-separated log with {list(required)})")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(f"{str(path)!r} line {number}: {len(fields)} fields, header has {len(columns)}")
        try:
            rows.append({c: _parse_value(c, f) for c, f in zip(columns, fields)})
        except ValueError as e:
            raise ValueError(f"{str(path)!r} line {number}: malformed value ({e})") from None
    return {"columns": columns, "rows": rows}


# ----------------------------------------------------------------------------------------------------------- resuming
def _normalise(value):
    return json.loads(json.dumps(value, sort_keys=True))


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def config_differences(old: Mapping, new: Mapping) -> list:
    """Human-readable differences 'key: was X, now Y' between two configurations (nested keys dotted)."""
    a, b = _flatten(_normalise(dict(old))), _flatten(_normalise(dict(new)))

    def short(v):
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."

    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: was {short(a.get(key, '<absent>'))}, now {short(b.get(key, '<absent>'))}")
    return diffs


class FinishedLog(ValueError):
    """The log already holds every requested image (and was made with the same configuration)."""


def open_run(
    out: PathLike,
    columns: Sequence[str],
    config: Mapping,
    image_ids: Iterable[int],
    *,
    overwrite: bool = False,
    info: Optional[Mapping] = None,
) -> tuple:
    """Opens the log ``out`` for a run whose identity is ``config`` over ``image_ids``.

    Returns (TSVWriter, set of image ids already in the log).  A new or overwritten log gets ``<out>.json``
    (written before the log) and a header.  An existing log is resumed when its recorded configuration equals
    ``config`` (ValueError otherwise, naming the differences); a finished log (every requested id present) is a
    ValueError unless ``overwrite``.  ``info`` is recorded in the .json but not compared (batch size, device...).
    """
    out = Path(out).expanduser()
    columns = tuple(columns)
    wanted = {int(i) for i in image_ids}
    config = _normalise(dict(config))
    payload = {"format": SIDECAR_FORMAT, "columns": list(columns), "run": config, "info": _normalise(dict(info or {}))}
    if out.is_dir():
        raise IsADirectoryError(f"out: {str(out)!r} is a folder; give a file name for the log")
    sidecar = sidecar_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(out), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _lock(fd, out)
        if os.fstat(fd).st_size > 0 and not overwrite:
            done = _check_resume(out, columns, config, wanted)
            return TSVWriter(out, columns, fresh=os.fstat(fd).st_size == 0, fd=fd), done
        # a new log, an empty one (killed before its header), or --overwrite: drop old rows first, so that a new
        # configuration is never paired with them, then the configuration, then the header
        os.ftruncate(fd, 0)
        write_json_atomic(sidecar, payload, mode=os.fstat(fd).st_mode & 0o777)  # the log's permissions
        return TSVWriter(out, columns, fresh=True, fd=fd), set()
    except BaseException:
        os.close(fd)
        raise


def _check_resume(out: Path, columns: tuple, config: dict, wanted: set) -> set:
    """The ids already in an existing, non-empty log that may be resumed under ``config``; ValueError otherwise."""
    sidecar = sidecar_path(out)
    recorded = read_sidecar(out)
    if recorded is None:
        raise ValueError(f"out: {str(out)!r} exists but has no run configuration ({sidecar.name}), so it cannot "
                         "be resumed safely; choose another --out or pass --overwrite to replace it")
    diffs = config_differences(recorded["run"], config)
    if list(recorded.get("columns", columns)) != list(columns):
        diffs.insert(0, f"columns: was {recorded.get('columns')}, now {list(columns)}")
    if diffs:
        raise ValueError(f"out: {str(out)!r} was started with a different configuration ({'; '.join(diffs)}); "
                         "rerun with the original arguments to resume it, choose another --out, or pass "
                         "--overwrite to start afresh")
    recover_partial_line(out)
    if out.stat().st_size == 0:  # killed while writing the header
        return set()
    log = read_log(out, required=columns)
    if log["columns"] != columns:
        raise ValueError(f"out: {str(out)!r} has columns {list(log['columns'])}, expected {list(columns)}; "
                         "pass --overwrite to start afresh")
    done = {row["idx"] for row in log["rows"]}
    foreign = sorted(done - wanted)
    if foreign:
        raise ValueError(f"out: {str(out)!r} holds images {foreign[:10]} that this run does not request; "
                         "pass --overwrite to start afresh")
    if wanted <= done:
        raise FinishedLog(f"out: {str(out)!r} is already complete ({len(done)} images); pass --overwrite to "
                         "recompute it, or choose another --out")
    return done


# ---------------------------------------------------------------------------------------------- before a run starts
def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def _check_folder(out: Path) -> None:
    """The log's folder exists and takes new files, or can be created (its nearest existing ancestor takes them)."""
    folder = out.parent
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise NotADirectoryError(f"out: cannot create the folder {str(folder)!r} for {str(out)!r}: "
                                 f"{str(existing)!r} is a file, not a folder")
    try:  # a real write: os.access is wrong for root and for read-only file systems
        fd, probe = tempfile.mkstemp(prefix=".msrs-probe-", dir=str(existing))
    except OSError as e:
        how = "write in" if existing == folder else f"create the folder {str(folder)!r} in"
        raise PermissionError(f"out: cannot {how} {str(existing)!r} for {str(out)!r} "
                              f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _check_writable_log(out: Path) -> None:
    """An existing log can be opened for appending and is not locked by a running msrs certify."""
    try:
        fd = os.open(str(out), os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise PermissionError(f"out: cannot write {str(out)!r} ({e.strerror or e})") from None
    try:
        _lock(fd, out)  # released by os.close below
    finally:
        os.close(fd)


def _logged_ids(out: Path) -> set:
    try:
        return {row["idx"] for row in read_log(out, required=("idx",))["rows"]}
    except ValueError as e:
        raise ValueError(f"out: {str(out)!r} cannot be resumed ({e}); pass --overwrite to start afresh, or choose "
                         "another --out") from None


def _partial_differences(recorded: Mapping, config: Mapping) -> list:
    """config_differences limited to the (dotted) keys that ``config`` gives: what is known before loading."""
    old, new = _flatten(_normalise(dict(recorded))), _flatten(_normalise(dict(config)))
    return config_differences({k: old[k] for k in new if k in old}, new)


def check_out(out: PathLike, *, overwrite: bool, columns: Optional[Sequence[str]] = None,
              config: Optional[Mapping] = None) -> Path:
    """Finds, before any model or data is loaded, why ``out`` could not take this run's log; returns it expanded.

    Raises (each naming the path and the reason): ValueError for an empty path; IsADirectoryError when ``out`` or its
    ``.json`` is a folder; NotADirectoryError / PermissionError when its folder cannot be created or written, or the
    log cannot be appended to; ValueError when another msrs certify is writing it.  Without ``overwrite``, for an
    existing non-empty log: ValueError when it has no readable run configuration, or when ``columns`` or the keys
    of ``config`` that are given (nested keys compared where present, e.g. {"sigmas": [0.5], "n": 1000}) differ
    from the recorded ones; FinishedLog when it already holds every image its recorded run selected (any run
    would then be refused: the same configuration is finished, another one differs).  open_run repeats the full
    checks once the data set and models are known."""
    if out is None or str(out) == "":
        raise ValueError("out: give a path for the log")
    out = Path(out).expanduser()
    if out.is_dir():
        raise IsADirectoryError(f"out: {str(out)!r} is a folder; give a file name for the log")
    sidecar = sidecar_path(out)
    if sidecar.is_dir():
        raise IsADirectoryError(f"out: the run configuration {str(sidecar)!r} is a folder; remove it or choose "
                                "another --out")
    _check_folder(out)
    if not out.exists():
        return out
    _check_writable_log(out)
    if overwrite or out.stat().st_size == 0:
        return out
    recorded = read_sidecar(out)
    if recorded is None:
        raise ValueError(f"out: {str(out)!r} exists but has no run configuration ({sidecar.name}), so it cannot "
                         "be resumed safely; choose another --out or pass --overwrite to replace it")
    diffs = []
    if columns is not None and list(recorded.get("columns", [])) != list(columns):
        diffs.append(f"columns: was {recorded.get('columns')}, now {list(columns)}")
    if config is not None:
        diffs += _partial_differences(recorded["run"], config)
    if diffs:
        raise ValueError(f"out: {str(out)!r} was started with a different configuration ({'; '.join(diffs)}); "
                         "rerun with the original arguments to resume it, choose another --out, or pass "
                         "--overwrite to start afresh")
    wanted = (recorded["run"].get("selection") or {}).get("count")
    done = _logged_ids(out)
    if isinstance(wanted, int) and wanted > 0 and len(done) >= wanted:
        raise FinishedLog(f"out: {str(out)!r} is already complete ({len(done)} of {wanted} images); pass "
                          "--overwrite to recompute it, or choose another --out")
    return out


def resume_message(out: PathLike, done: int, total: int) -> Optional[str]:
    """What a resumed run says before it goes on, e.g. "resuming logs/k.tsv: 2 of 12 images done"; None for a run
    that starts from scratch (nothing done yet)."""
    done, total = int(done), int(total)
    if done <= 0:
        return None
    return f"resuming {out}: {done} of {total} image{'s' if total != 1 else ''} done"
