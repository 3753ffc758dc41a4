"""Certified accuracy, ACR, the table and the plot, on hand-written logs with known answers."""
import math
import struct
import zlib

import numpy as np
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


# ------------------------------------------------------------------------------------- intervals over the images
def _binomial_tail_ge(k, n, p):
    """P(X >= k) for X ~ Binomial(n, p), summed term by term (independent of the beta-function route)."""
    return math.fsum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("n", [8, 100])
def test_accuracy_interval_is_exact_clopper_pearson(n):
    """Clopper-Pearson by its definition: the lower end is the p at which P(X >= k) = (1 - c) / 2, the upper end
    the p at which P(X <= k) = (1 - c) / 2; 0 and 1 at k = 0 and k = n."""
    counts = np.array([0, 1, n // 2, n - 1, n])
    for confidence in (0.95, 0.8):
        lower, upper = report.accuracy_interval(counts, n, confidence)
        tail = (1 - confidence) / 2
        for k, lo, hi in zip(counts.tolist(), lower, upper):
            assert lo <= k / n <= hi
            if k == 0:
                assert lo == 0
            else:
                assert _binomial_tail_ge(k, n, lo) == pytest.approx(tail, abs=1e-9)
            if k == n:
                assert hi == 1
            else:
                assert 1 - _binomial_tail_ge(k + 1, n, hi) == pytest.approx(tail, abs=1e-9)
    lower, upper = report.accuracy_interval(np.array([3]), 0)
    assert np.isnan(lower).all() and np.isnan(upper).all()
    with pytest.raises(ValueError, match="confidence"):
        report.accuracy_interval(np.array([1]), 4, 95)


def test_summary_and_table_intervals(log):
    (summary,) = report.summarize([log], [0.0, 0.5], confidence=0.9)
    # 6 and 3 of the 8 images are certified at r = 0 and 0.5 (EXPECTED); statsmodels' "beta" method is
    # Clopper-Pearson, computed there from scipy's beta distribution directly
    from statsmodels.stats.proportion import proportion_confint

    for (lo, hi), k in zip(summary.intervals, (6, 3)):
        want = proportion_confint(k, 8, alpha=0.1, method="beta")
        assert (lo, hi) == pytest.approx(want, abs=1e-12)
    assert summary.confidence == 0.9
    lines = report.format_table([summary], ci=True).splitlines()
    assert len(lines) == 3 and lines[1].split()[:3] == ["cohen", "0.750", "0.375"]
    lo6, hi6 = proportion_confint(6, 8, alpha=0.1, method="beta")
    assert lines[2].split()[:3] == ["90%", "CI", f"[{lo6:.3f},{hi6:.3f}]"]
    assert len(report.format_table([summary]).splitlines()) == 2  # no interval lines unless asked


def test_report_takes_folders(tmp_path, capsys):
    for name, rows in (("b", ROWS), ("a", ROWS.splitlines()[0] + "\n"), ("c", ROWS)):
        (tmp_path / f"{name}.tsv").write_text(HEADER + rows)
    (tmp_path / "notes.txt").write_text("not a log")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tsv").write_text(HEADER + ROWS)
    assert [p.name for p in report.log_paths([tmp_path])] == ["a.tsv", "b.tsv", "c.tsv"]
    assert [p.name for p in report.log_paths([tmp_path / "sub", tmp_path / "a.tsv"])] == ["d.tsv", "a.tsv"]
    summaries = report.summarize(tmp_path, [0.0])
    assert [s.name for s in summaries] == ["a", "b", "c"]
    assert [s.num_images for s in summaries] == [1, 8, 8]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'.*empty' holds no \\*.tsv"):
        report.log_paths([tmp_path / "sub" / "d.tsv", tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="missing.tsv' does not exist"):
        report.summarize([tmp_path / "missing.tsv"])


# ------------------------------------------------------------------------------------------------------------ plot
def _pixels(figure):
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def test_plot_legend_covers_no_curve_and_one_stays_visible(tmp_path):
    """Seven logs (a long legend) and one at accuracy 1.0 up to the largest radius (its curve runs along the top
    of the axes, where a legend inside them would sit): the legend's box holds no point of any curve, and the
    curve at 1.0 (and its drop to 0.0) lies inside the axes by more than half its line width."""
    rng = np.random.default_rng(0)
    for k in range(7):
        radii = rng.uniform(0, 1.5, size=30)
        correct = rng.random(30) < 0.3 + 0.1 * k
        rows = "".join(f"{i}\t1\t{1 if c else 2}\t{r}\t{int(c)}\t0:00:01\n" for i, (r, c) in
                       enumerate(zip(radii, correct)))
        (tmp_path / f"method-with-a-long-name-{k}.tsv").write_text(HEADER + rows)
    (tmp_path / "perfect.tsv").write_text(HEADER + "".join(f"{i}\t1\t1\t1.5\t1\t0:00:01\n" for i in range(20)))
    for ci in (False, True):
        figure = report.figure([tmp_path], ci=ci)
        renderer = _pixels(figure)
        (axes,) = figure.axes
        legend = figure.legends[0] if figure.legends else axes.get_legend()  # wherever it was put
        legend_box = legend.get_window_extent(renderer)
        axes_box = axes.get_window_extent(renderer)
        lines = axes.get_lines()
        assert len(lines) == 8
        for line in lines:
            points = axes.transData.transform(line.get_xydata())
            inside = ((points[:, 0] >= legend_box.x0) & (points[:, 0] <= legend_box.x1)
                      & (points[:, 1] >= legend_box.y0) & (points[:, 1] <= legend_box.y1))
            assert not inside.any(), f"the legend covers {line.get_label()}"
        perfect = next(line for line in lines if line.get_label().startswith("perfect"))
        half_width = perfect.get_linewidth() * figure.dpi / 72 / 2
        ys = axes.transData.transform(perfect.get_xydata())[:, 1]
        data = perfect.get_xydata()
        assert (data[:, 1] == 1.0).any() and (data[:, 1] == 0.0).any()
        assert ys.max() + half_width < axes_box.y1 and ys.min() - half_width > axes_box.y0
    out = report.plot([tmp_path], tmp_path / "plot.png", ci=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_takes_a_folder_and_shows_intervals(tmp_path, capsys):
    """`msrs report DIR --ci`: every log of the folder, and under each row its exact 95% intervals (6 of the 8
    images certified at r = 0: Clopper-Pearson [0.349, 0.968], computed with scipy's beta quantiles)."""
    folder = tmp_path / "logs"
    folder.mkdir()
    for name in ("one", "two"):
        (folder / f"{name}.tsv").write_text(HEADER + ROWS)
    png = tmp_path / "ci.png"
    assert main(["report", str(folder), "--ci", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert sum(line.startswith(("one", "two")) for line in lines) == 2
    assert sum("95% CI" in line for line in lines) == 2 and png.stat().st_size > 1000
    assert "0.349" in out and "0.968" in out
    assert main(["report", str(folder), "--confidence", "1.5"]) == 2
    assert "confidence" in capsys.readouterr().err
