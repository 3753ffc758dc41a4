""".ci/check_skips.py, the CI's check that every skip's reason is true on this machine, on saved pytest outputs."""
from __future__ import annotations

import io

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def checker():
    return load_script(".ci/check_skips.py")


def output(*skip_lines: str, summary: str) -> str:
    """A `pytest -q -rs` output: progress, the short summary, the final line."""
    body = "\n".join(skip_lines)
    return f"..s.s..F\n=========================== short test summary info ============================\n{body}\n{summary}\n"


def run(checker, text: str) -> tuple[int, str]:
    out = io.StringIO()
    status = checker.check(text, out=out)
    return status, out.getvalue()


def test_true_reasons_pass_and_are_listed(checker, monkeypatch):
    monkeypatch.delenv("MSRS_REQUIRE_BACKENDS", raising=False)
    monkeypatch.setattr(checker, "cuda_available", lambda: False)
    text = output("SKIPPED [2] tests/test_a.py:12: could not import 'no_such_module_for_msrs': No module named x",
                  "SKIPPED [1] tests/test_ops.py:51: Triton interpreter: tiny shapes only",
                  summary="5 passed, 3 skipped in 1.20s")
    status, report = run(checker, text)
    assert status == 0, report
    assert "ci: 3 skipped test(s)" in report and report.count(" ok (true here") == 2
    assert "tests/test_a.py:12: could not import 'no_such_module_for_msrs'" in report


@pytest.mark.parametrize("line", [
    "SKIPPED [1] tests/test_x.py:3: could not import 'numpy': No module named 'numpy'",  # numpy is installed
    "SKIPPED [4] tests/test_x.py:9: some reason no rule knows",
    "SKIPPED [1] tests/test_ops_triton.py:402: the import-order pitfall is the interpreter's",  # needs a GPU
])
def test_a_false_or_unknown_reason_fails(checker, monkeypatch, line):
    monkeypatch.setattr(checker, "cuda_available", lambda: False)
    count = line.split("[")[1].split("]")[0]
    status, report = run(checker, output(line, summary=f"1 failed, 2 passed, {count} skipped in 3.00s"))
    assert status == 1 and "NOT ALLOWED" in report, report


def test_a_missing_required_backend_is_not_an_acceptable_skip(checker, monkeypatch):
    """The C++ build failed (the reason is true), but MSRS_REQUIRE_BACKENDS=cpp says it must not: fail."""
    monkeypatch.setattr(checker, "backend_unavailable", lambda name, device: True)
    line = ("SKIPPED [81] tests/test_ops.py:56: backend 'cpp' on cpu is not available: could not build or load the "
            "C++ ops (RuntimeError): Error building extension 'msrs_ops':\n"
            "/work/csrc/ops.cpp:29:27: error: expected primary-expression before ';' token\n"
            "ninja: build stopped: subcommand failed.")
    text = output(line, summary="11 passed, 81 skipped in 30.00s")
    monkeypatch.delenv("MSRS_REQUIRE_BACKENDS", raising=False)
    assert run(checker, text)[0] == 0  # not required: a true reason
    monkeypatch.setenv("MSRS_REQUIRE_BACKENDS", "cpp")
    status, report = run(checker, text)
    assert status == 1 and "[81] tests/test_ops.py:56: backend 'cpp' on cpu" in report, report
    assert "MSRS_REQUIRE_BACKENDS requires cpp" in report
    skips, _ = checker.parse(text)
    assert skips[0].reason.endswith("subcommand failed.")  # the continuation lines belong to the reason


def test_the_summary_count_must_match_the_skip_lines(checker):
    text = output("SKIPPED [1] tests/test_a.py:12: could not import 'no_such_module_for_msrs'",
                  summary="5 passed, 2 skipped in 1.20s")
    status, report = run(checker, text)
    assert status == 1 and "add up to 1" in report
    status, report = run(checker, "....\n")  # a truncated output: no summary line
    assert status == 1 and "no pytest summary line" in report
    assert run(checker, output(summary="=== 7 passed in 0.50s ===="))[0] == 0  # no skips at all


def test_folded_skips_without_a_line_number_and_colours(checker):
    text = output("\x1b[33mSKIPPED\x1b[0m [3] tests/test_b.py: could not import 'no_such_module_for_msrs'",
                  summary="\x1b[32m1 passed\x1b[0m, \x1b[33m3 skipped\x1b[0m in 0.10s")
    skips, count = checker.parse(text)
    assert count == 3 and [(s.count, s.where) for s in skips] == [(3, "tests/test_b.py")]
    assert run(checker, text)[0] == 0
