"""Every ```python block of the README runs as written, so that the README cannot drift from the code.

Each block runs alone in a fresh interpreter (as a user pasting it would), in an empty working folder, on the CPU
(CUDA hidden), under a time limit.  A block that needs something unavailable here fails: the README's snippets
are meant to run on any machine `install.sh` sets up.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# ```python up to the next ``` at the start of a line; "```py" and "```python3" count too
BLOCK = re.compile(r"^```(?:python3?|py)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TIME_LIMIT_S = float(os.environ.get("MSRS_README_TIMEOUT", "600"))  # a shared 2-core machine under load


def python_blocks(text: str) -> list:
    """(first line number, code) of each python block of a markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def _blocks() -> list:
    return python_blocks(README.read_text(encoding="utf-8")) if README.exists() else []


def _text(output) -> str:
    """TimeoutExpired's partial output: bytes on some Pythons even with text=True."""
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""


def test_python_blocks_are_found():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```py\ny = 2\n\nz = 3\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\n\nz = 3\n")]


def test_readme_has_python_blocks():
    assert README.exists(), f"{README} is missing"
    assert _blocks(), f"{README} has no ```python block to test"


@pytest.mark.parametrize("line, code", _blocks(), ids=[f"line{line}" for line, _ in _blocks()])
def test_readme_block_runs(line, code, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"README.md line {line}: the block did not finish in {TIME_LIMIT_S:.0f} s\n"
                    f"{_text(e.stdout)[-2000:]}\n{_text(e.stderr)[-2000:]}")
    assert done.returncode == 0, (f"README.md line {line}: the block failed (exit {done.returncode})\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
