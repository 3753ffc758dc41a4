"""CI: list the tests a pytest run skipped, and fail when a skip's reason is not true on this machine.

    python3 .ci/check_skips.py PYTEST_OUTPUT

PYTEST_OUTPUT is the saved terminal output of `pytest -rs` (folded skip lines, `SKIPPED [N] path:line: reason`).
Every skip must match one of ALLOWED below, whose condition is then evaluated here: a skip is accepted only when
its reason holds on this machine (e.g. "only the portable kernel runs on this CPU" on a CPU without AVX2). A skip
no rule covers, or one whose condition is false, fails the check (exit status 1). The number of skipped tests in
the summary line must equal the sum of the SKIPPED lines, so a skip cannot hide from the check.
Adding a skip to the suite means adding its rule here, with the condition that makes it true.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional

SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] (.+?):(?:(\d+):)? (.*)$")
SUMMARY_LINE = re.compile(r"^=*\s*(?:no tests ran|\d+ (?:passed|failed|skipped|errors?|warnings?|deselected|xfailed|"
                          r"xpassed)(?:, \d+ \w+)*) in [\d.]+s")
SKIPPED_COUNT = re.compile(r"\b(\d+) skipped\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# lines that start another entry of the short summary or another section (a reason may span several lines)
NEW_ENTRY = re.compile(r"^(SKIPPED|FAILED|ERROR|XFAIL|XPASS|PASSED|=+ |-+ |\d+ (passed|failed|skipped|error))")


# ------------------------------------------------------------------------------------------ what can be true here
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cannot_import(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


def backend_unavailable(name: str, device: str) -> bool:
    import torch
    from msrs.ops import dispatch

    try:
        return dispatch.unavailable_reason(name, torch.device(device)) is not None
    except ImportError:
        return True


def required(name: str) -> bool:
    """Named by MSRS_REQUIRE_BACKENDS (as .ci/run sets it): then no skip for its absence is acceptable."""
    return name in {part.strip() for part in os.environ.get("MSRS_REQUIRE_BACKENDS", "").split(",")}


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def demo_ddpm_missing() -> bool:
    from msrs import zoo

    return not (zoo.asset_path(zoo.DDPM_NAME) / "unet" / "config.json").is_file()


NATIVE = {("cpp", "cpu"), ("triton", "cuda")}  # where MSRS_REQUIRE_BACKENDS requires a backend to run


@dataclass(frozen=True)
class Rule:
    pattern: str  # a regular expression matched at the start of the skip's reason
    condition: Callable[[re.Match], bool]  # true when the reason holds on this machine
    meaning: str  # the condition in words, for the report
    backend: Optional[Callable[[re.Match], Optional[str]]] = None  # the backend whose absence the skip is about


ALLOWED = [
    Rule(r"backend '(\w+)' on (\w+) is not available", lambda m: backend_unavailable(m[1], m[2]),
         "that backend cannot run on that device here", lambda m: m[1] if (m[1], m[2]) in NATIVE else None),
    Rule(r"cpp backend unavailable|the cpp backend is not available here", lambda m: backend_unavailable("cpp", "cpu"),
         "the C++ extension cannot be built or loaded here", lambda m: "cpp"),
    Rule(r"could not import '([\w.]+)'", lambda m: cannot_import(m[1]), "that module cannot be imported here"),
    Rule(r"triton is not installed", lambda m: importlib.util.find_spec("triton") is None, "triton is not installed",
         lambda m: "triton"),
    Rule(r"msrs\.ops\.triton_backend cannot be imported", lambda m: cannot_import("msrs.ops.triton_backend"),
         "msrs.ops.triton_backend cannot be imported", lambda m: "triton"),
    Rule(r"torch sees a GPU but Triton cannot use it", lambda m: cuda_available() and backend_unavailable("triton", "cuda"),
         "a GPU without a working Triton", lambda m: "triton"),
    Rule(r"only the portable kernel runs on this CPU", lambda m: "avx2" not in cpu_flags(), "the CPU lacks AVX2"),
    Rule(r"Triton interpreter: ", lambda m: not cuda_available(), "no GPU: Triton runs in its interpreter"),
    Rule(r"the import-order pitfall is the interpreter's|on a GPU the tests above run the compiled kernels",
         lambda m: cuda_available(), "a GPU: the kernels run compiled"),
    Rule(r"demo DDPM not trained yet", lambda m: demo_ddpm_missing(), "the demo DDPM is not shipped here"),
    Rule(r"CUDA graphs need a GPU", lambda m: not cuda_available(), "no GPU"),
]


# ------------------------------------------------------------------------------------------------------- parsing
@dataclass
class Skip:
    count: int
    where: str
    reason: str


def parse(text: str) -> tuple[list, Optional[int]]:
    """(the skips of the short test summary, the skipped count of the final summary line or None)."""
    skips: list = []
    current: Optional[Skip] = None
    summary_count = None
    for line in ANSI.sub("", text).splitlines():
        match = SKIP_LINE.match(line)
        if match:
            count, path, lineno, reason = match.groups()
            current = Skip(int(count), f"{path}:{lineno}" if lineno else path, reason)
            skips.append(current)
            continue
        if NEW_ENTRY.match(line) or not line.strip():
            current = None
        elif current is not None:  # a reason that spans lines (e.g. a compiler's error)
            current.reason += "\n" + line
        if SUMMARY_LINE.match(line):
            found = SKIPPED_COUNT.search(line)
            summary_count = int(found[1]) if found else 0
    return skips, summary_count


def judge(skip: Skip) -> tuple[bool, str]:
    """(accepted, why) for one skip."""
    first_line = skip.reason.splitlines()[0] if skip.reason else ""
    for rule in ALLOWED:
        match = re.match(rule.pattern, first_line)
        if not match:
            continue
        backend = rule.backend(match) if rule.backend else None
        if backend and required(backend):
            return False, f"MSRS_REQUIRE_BACKENDS requires {backend}: its absence must fail the run, not skip"
        try:
            holds = bool(rule.condition(match))
        except Exception as err:  # noqa: BLE001 - a condition that cannot be evaluated does not hold
            return False, f"its condition ({rule.meaning}) could not be checked: {type(err).__name__}: {err}"
        if holds:
            return True, f"true here: {rule.meaning}"
        return False, f"FALSE on this machine: the reason needs '{rule.meaning}'"
    return False, "no rule in .ci/check_skips.py allows this reason"


def check(text: str, out=sys.stdout) -> int:
    """Prints the skips with their verdicts; returns the exit status (0: every skip holds here)."""
    skips, summary_count = parse(text)
    total = sum(s.count for s in skips)
    print(f"ci: {total} skipped test(s)", file=out)
    failures = 0
    for skip in skips:
        accepted, why = judge(skip)
        failures += not accepted
        first_line = skip.reason.splitlines()[0] if skip.reason else ""
        print(f"ci:   [{skip.count}] {skip.where}: {first_line}\n"
              f"ci:       {'ok' if accepted else 'NOT ALLOWED'} ({why})", file=out)
    if summary_count is None:
        print("ci: no pytest summary line found in the output: cannot check the skips", file=out)
        return 1
    if summary_count != total:
        print(f"ci: the summary says {summary_count} skipped but the SKIPPED lines add up to {total} (was pytest "
              "run with -rs?)", file=out)
        return 1
    if failures:
        print(f"ci: {failures} skip reason(s) are not true on this machine: failing", file=out)
        return 1
    return 0


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 .ci/check_skips.py PYTEST_OUTPUT", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8", errors="replace") as f:
        return check(f.read())


if __name__ == "__main__":
    sys.exit(main())
