"""Certified accuracy, ACR, the table and the plot, on hand-written logs with known answers."""
import struct
import zlib

import pytest

from msrs import report
from msrs.cli import main

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
# certified radii of the correct predictions: 0.3, 0.8, 1.6, 0.0, 2.0, 0.25 (6 of 8 images); row 2 abstains,
# row 3 is wrong with a large radius (never certified)
ROWS = """0\t1\t1\t0.3\t1\t0:00:01.000000
1\t2\t2\t0.8\t1\t0:00:01.000000
2\t0\t-1\t0.0\t0\t0:00:01.000000
3\t4\t5\t1.2\t0\t0:00:01.000000
4\t3\t3\t1.6\t1\t0:00:01.000000
5\t1\t1\t0.0\t1\t0:00:01.000000
6\t7\t7\t2.0\t1\t0:00:01.000000
7\t9\t9\t0.25\t1\t0:00:01.000000
"""
EXPECTED = {0.0: 6 / 8, 0.25: 5 / 8, 0.5: 3 / 8, 0.75: 3 / 8, 1.0: 2 / 8, 1.5: 2 / 8, 2.0: 1 / 8}
EXPECTED_ACR = (0.3 + 0.8 + 1.6 + 0.0 + 2.0 + 0.25) / 8


@pytest.fixture()
def log(tmp_path):
    path = tmp_path / "cohen.tsv"
    path.write_text(HEADER + ROWS)
    return path


def test_certified_accuracy_and_acr(log):
    (summary,) = report.summarize([log])
    assert summary.radii == report.DEFAULT_RADII
    assert summary.accuracies == pytest.approx([EXPECTED[r] for r in report.DEFAULT_RADII], abs=0)
    assert summary.acr == pytest.approx(EXPECTED_ACR, rel=1e-12)
    assert summary.num_images == 8 and summary.abstentions == 1 and summary.name == "cohen"
    radii = report.radii_with([0.3, 0.25])
    assert radii == (0.0, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
    (summary,) = report.summarize([log], radii)
    assert summary.accuracies[2] == 4 / 8


def test_abstentions_never_count(tmp_path):
    path = tmp_path / "odd.tsv"  # an inconsistent row (correct = 1 on an abstention) still does not count
    path.write_text(HEADER + "0\t1\t-1\t0.0\t1\t0:00:00\n1\t1\t1\t0.5\t1\t0:00:00\n")
    (summary,) = report.summarize([path], [0.0, 0.5])
    assert summary.accuracies == (0.5, 0.5) and summary.acr == 0.25


def test_field_logs_and_partial_lines(tmp_path):
    # locuslab/smoothing writes radius with "{:.3}"; a run in progress may end with a partial line
    path = tmp_path / "field.tsv"
    path.write_text(HEADER + "0\t3\t3\t0.853\t1\t0:00:03.1\n10\t2\t-1\t0.0\t0\t0:00:02.9\n20\t1\t1\t0.4")
    (summary,) = report.summarize([path], [0.0, 0.5, 1.0])
    assert summary.accuracies == (0.5, 0.5, 0.0) and summary.num_images == 2
    cascade = tmp_path / "cascade.tsv"
    cascade.write_text(HEADER.rstrip("\n") + "\tstage\tsigma\n0\t1\t1\t0.7\t1\t0:00:01\t0\t1.0\n")
    assert report.summarize([cascade], [0.5])[0].accuracies == (1.0,)


def test_table(log, tmp_path):
    other = tmp_path / "other" / "cohen.tsv"  # the same stem: names get their folder
    other.parent.mkdir()
    other.write_text(HEADER + ROWS.splitlines(True)[0])
    table = report.format_table(report.summarize([log, other]))
    lines = table.splitlines()
    assert lines[0].split() == ["file", "r=0", "r=0.25", "r=0.5", "r=0.75", "r=1", "r=1.5", "r=2", "ACR", "N"]
    assert lines[1].split() == [f"{log.parent.name}/cohen", "0.750", "0.625", "0.375", "0.375", "0.250", "0.250",
                                "0.125", "0.619", "8"]
    assert lines[2].split()[0] == "other/cohen" and lines[2].split()[-1] == "1"


def _png_chunks(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_plot_is_a_valid_png(log, tmp_path):
    second = tmp_path / "second.tsv"
    second.write_text(HEADER + ROWS.replace("\t1\t0:00", "\t0\t0:00"))  # nothing certified
    out = report.plot([log, second], tmp_path / "plots" / "curve.png")
    data = out.read_bytes()
    chunks = _png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width > 100 and height > 100 and len(data) > 1000


def test_report_command(log, tmp_path, capsys):
    png = tmp_path / "r.png"
    assert main(["report", str(log), "--radii", "0.3", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "r=0.3" in out and "0.619" in out and png.stat().st_size > 1000
    assert main(["report", str(tmp_path / "missing.tsv")]) == 2
    assert "msrs: error: files: " in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    assert main(["report", str(bad)]) == 2
    assert "lacks the columns" in capsys.readouterr().err
    assert main(["report", str(log), "--radii", "-1"]) == 2
    assert "radii" in capsys.readouterr().err
