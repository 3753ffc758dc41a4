#!/usr/bin/env python3
"""Mutation testing of msrs's statistics and training objective (docs/MUTATION.md says how to run and read it).

For each module in MODULES: every mutant of the source (MUTATION OPERATORS below) is run against the tests that
execute the mutated line, taken from that module's test files only; a mutant is *killed* when a test fails, *timed
out* when the tests run past their limit, and *survives* when they all pass. Survivors listed in
scripts/mutation_equivalents.toml (explained as equivalent: they cannot change behaviour) do not count against the
score; new survivors do:

    score = (killed + timed out) / (mutants - listed equivalent survivors)

Why our own engine rather than mutmut or cosmic-ray: a fresh Python here spends ~13 s importing torch, scipy,
statsmodels and pytest before the first test (2 shared cores), which cosmic-ray pays for every mutant; mutmut 3
rewrites every function of a mutated file into a trampoline in a copied tree (changing the functions' identity and
signatures, which the tests inspect) and maps tests to functions by running the whole test directory. Here a fork
server imports the heavy libraries once; each mutant runs in a forked child whose import hook serves the mutated
module (the source files are never edited), with only the tests that cover the mutated line according to a
per-test coverage map (coverage.py, the `mutation` extra), cached under .mutation/. A mutant that survives them is
confirmed against the tests that cover its whole function (a module-scoped fixture runs inside its first test only).

Mutation operators (one change per mutant, on the AST, line numbers kept):
  binop     + <-> -, * <-> /, // -> /, % -> /, ** -> *, & <-> |, ^ -> &, << <-> >>   (also in x op= y)
  compare   < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in
  boolop    and <-> or
  unary     not x -> x, -x -> x, ~x -> x
  number    n -> n + 1 (ints and floats, mutmut's rule; True <-> False)
  string    "s" -> "XXsXX" where the string is compared (option names); message text is not mutated
  swap      calls of min <-> max, maximum <-> minimum, any <-> all, floor <-> ceil, argmax <-> argmin
  keyword   a keyword argument dropped from a call (its default used instead)
  delete    a call statement, or an assignment that re-binds a name or writes into an object, replaced by pass
  flow      break <-> continue
  context   `with ...:` replaced by its body (e.g. torch.no_grad(), np.errstate); a decorator dropped
  detach    (torch modules only) an assigned value v -> v.detach(), in function code where autograd records
            (not under torch.no_grad(); not the value of int(), len(), ...)
Not mutated: docstrings, `raise` statements (their messages), f-strings, annotations, __all__, __repr__.

Results are kept in .mutation/results-MODULE.json. After an edit of the module, --resume and --only-survivors
keep the results of the mutants whose function (or top-level statement) has the same text as in the committed
version the results were measured on (carry_results), so that fixing one function reruns only its mutants.

Usage: python scripts/mutation.py [--module decisions objective ...] [--sample N [--seed S]] [--only-survivors | --resume]
(one mutant at a time: the forked children run one after another)
"""
from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import importlib.abc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".mutation"
EQUIVALENTS = Path(__file__).resolve().parent / "mutation_equivalents.toml"

# module -> (import name, source file, the test files that exercise it: the fastest set that can kill its mutants)
MODULES = {
    "decisions": ("msrs.decisions", "msrs/decisions.py",
                  ["tests/test_stats.py", "tests/test_validity.py", "tests/test_undecided.py"]),
    "objective": ("msrs.finetune.objective", "msrs/finetune/objective.py",
                  ["tests/test_finetune_package.py", "tests/test_finetune.py", "tests/test_mutation_kills_objective.py"]),
    "bounds": ("msrs.bounds", "msrs/bounds.py",
               ["tests/test_stats.py", "tests/test_sequential.py", "tests/test_validity.py",
                "tests/test_mutation_kills_bounds.py", "tests/test_mutation_kills_stopping.py"]),
    "stopping": ("msrs.stopping", "msrs/stopping.py",
                 ["tests/test_sequential.py", "tests/test_mutation_kills_stopping.py", "tests/test_undecided.py"]),
}
# imported once by the fork server (not msrs's modules under test: each child imports those fresh)
PRELOAD = ["numpy", "scipy.stats", "scipy.special", "scipy.optimize", "torch", "torch.nn.functional",
           "statsmodels.stats.proportion", "hypothesis", "pytest", "msrs", "diffusers"]
SKIP_FUNCTIONS = {"__repr__"}  # display only: no certificate or loss depends on it


# ================================================================================================ mutation operators
BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
         ast.Mod: ast.Div, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitAnd,
         ast.LShift: ast.RShift, ast.RShift: ast.LShift}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP = {"min": "max", "max": "min", "maximum": "minimum", "minimum": "maximum", "any": "all", "all": "any",
        "floor": "ceil", "ceil": "floor", "argmax": "argmin", "argmin": "argmax"}
NOT_TENSORS = {"int", "float", "len", "list", "tuple", "dict", "set", "str", "bool", "range", "sorted"}


@dataclass
class Mutant:
    module: str
    file: str
    line: int
    col: int
    end_line: int
    function: str  # qualified name of the enclosing function ("<module>" at module level)
    op: str
    before: str
    after: str
    source_line: str  # the stripped source of `line` (equivalent entries match on it, not on the line number)
    site: int  # index of the node in the AST walk
    choice: int  # index of the mutation at that node
    scope: str  # "line" (tests covering lines), "function" (the whole function: a signature or decorator), "module"

    @property
    def key(self) -> str:
        return f"{self.file}:{self.line}:{self.col}:{self.op}:{self.before}->{self.after}"

    def label(self) -> str:
        return f"{self.file}:{self.line} [{self.op}] {short(self.before)} -> {short(self.after)}  ({self.function})"


def short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _candidates(node: ast.AST, parent: ast.AST | None, torch_ops: bool, grad: bool = False):
    """The mutations of one node: (op name, function node -> replacement node or None for pass)."""
    out = []
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP:
        out.append(("binop", lambda n: _replace(n, op=BINOP[type(n.op)]())))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE:
                out.append(("compare", lambda n, i=i: _replace(n, ops=[COMPARE[type(o)]() if j == i else o
                                                                     for j, o in enumerate(n.ops)])))
        for i, value in enumerate([node.left] + node.comparators):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.append(("string", lambda n, i=i: _mutate_compared_string(n, i)))
    elif isinstance(node, ast.BoolOp):
        out.append(("boolop", lambda n: _replace(n, op=ast.Or() if isinstance(n.op, ast.And) else ast.And())))
    elif isinstance(node, ast.UnaryOp) and not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):
        if isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
            out.append(("unary", lambda n: n.operand))
    elif isinstance(node, ast.Constant) and not _is_docstring(node, parent) and not isinstance(node.value, str):
        if isinstance(node.value, bool):
            out.append(("number", lambda n: ast.Constant(not n.value)))
        elif isinstance(node.value, (int, float)):
            out.append(("number", lambda n: ast.Constant(n.value + 1)))
    elif isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name in SWAP:
            out.append(("swap", lambda n: _replace(n, func=_renamed(n.func, SWAP[name]))))
        for i, _ in enumerate(node.keywords):
            out.append(("keyword", lambda n, i=i: _replace(n, keywords=[k for j, k in enumerate(n.keywords) if j != i])))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(("delete", lambda n: None))
    elif isinstance(node, (ast.Assign, ast.AugAssign)) and _rebinds(node, parent):
        out.append(("delete", lambda n: None))
    elif isinstance(node, (ast.Break, ast.Continue)):
        out.append(("flow", lambda n: ast.Continue() if isinstance(n, ast.Break) else ast.Break()))
    elif isinstance(node, ast.With):
        out.append(("context", lambda n: n.body))
    if isinstance(node, ast.FunctionDef) and node.decorator_list:
        for i, _ in enumerate(node.decorator_list):
            out.append(("context", lambda n, i=i: _replace(n, decorator_list=[d for j, d in enumerate(n.decorator_list)
                                                                              if j != i])))
    if torch_ops and grad and isinstance(node, ast.Assign) and isinstance(node.value, (ast.Call, ast.BinOp)) \
            and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
            and getattr(getattr(node.value, "func", None), "id", None) not in NOT_TENSORS:
        out.append(("detach", lambda n: _replace(n, value=ast.Call(ast.Attribute(n.value, "detach", ast.Load()), [], []))))
    return out


def _replace(node, **fields):
    new = copy.copy(node)
    for name, value in fields.items():
        setattr(new, name, value)
    return new


def _renamed(func, name):
    if isinstance(func, ast.Attribute):
        return _replace(func, attr=name)
    return _replace(func, id=name)


def _mutate_compared_string(node, i):
    values = [node.left] + node.comparators
    values[i] = ast.Constant("XX" + values[i].value + "XX")
    return _replace(node, left=values[0], comparators=values[1:])


def _is_docstring(node, parent) -> bool:
    return isinstance(parent, ast.Expr) and isinstance(node.value, str)


def _rebinds(node, parent) -> bool:
    """An assignment whose deletion leaves the program well-formed: it writes into an object (x[i] = ..., x.a = ...),
    augments (x += ...), or re-binds names bound earlier in the same block."""
    if isinstance(node, ast.AugAssign):
        return True
    names = []
    for target in node.targets:
        for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
            if isinstance(t, (ast.Subscript, ast.Attribute)):
                continue
            if not isinstance(t, ast.Name):
                return False
            names.append(t.id)
    if not names:
        return True
    body = getattr(parent, "_body_before", {}).get(id(node), set())
    return all(n in body for n in names)


class _Skip(Exception):
    pass


def enumerate_mutants(module: str, path: Path, torch_ops: bool, source: str | None = None) -> list[Mutant]:
    """The module's mutants, in AST walk order; `source`: another version of the file's text (default: the file)."""
    source = path.read_text() if source is None else source
    tree = ast.parse(source)
    lines = source.splitlines()
    mutants = []
    for site, (node, parent, func, scope, grad) in enumerate(_walk(tree)):
        for choice, (op, fn) in enumerate(_candidates(node, parent, torch_ops, grad)):
            new = fn(copy.deepcopy(node))
            before = ast.get_source_segment(source, node) or ast.unparse(node)
            after = "pass" if new is None else ("<body>" if isinstance(new, list) else ast.unparse(new))
            if isinstance(node, ast.FunctionDef):
                before, after = f"@{ast.unparse(node.decorator_list[choice])}", "(dropped)"
            mutants.append(Mutant(module, str(path.relative_to(ROOT)), node.lineno, node.col_offset,
                                  getattr(node, "end_lineno", node.lineno), func, op, short(before, 200),
                                  short(after, 200), lines[node.lineno - 1].strip(), site, choice, scope))
    return mutants


def _walk(tree: ast.Module):
    """(node, parent, enclosing function qualname, scope, grad) in a fixed order, without the parts not mutated;
    grad: inside function code where autograd records (not under torch.no_grad())."""
    def visit(node, parent, func, scope, grad):
        if isinstance(node, (ast.Raise, ast.JoinedStr)) or _is_all(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in SKIP_FUNCTIONS:
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qual = f"{func}.{node.name}" if func != "<module>" else node.name
            yield node, parent, qual, "function", grad
        else:
            yield node, parent, func, scope, grad
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns"):
                continue
            children = value if isinstance(value, list) else [value]
            inner, child_scope, child_grad = func, scope, grad
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"{func}.{node.name}" if func != "<module>" else node.name
                child_scope = "line" if name == "body" else "function"
                child_grad = name == "body" and not any(_no_grad(d) for d in node.decorator_list)
            elif isinstance(node, ast.ClassDef):
                inner = f"{func}.{node.name}" if func != "<module>" else node.name
                child_scope, child_grad = "module", False
            elif isinstance(node, ast.With) and name == "body" and any(_no_grad(i.context_expr) for i in node.items):
                child_grad = False
            if name in ("body", "orelse", "finalbody") and isinstance(value, list):
                _mark_bound_before(node, value)
            for child in children:
                if isinstance(child, ast.AST):
                    yield from visit(child, node, inner, child_scope, child_grad)

    yield from visit(tree, None, "<module>", "module", False)


def _no_grad(expr) -> bool:
    text = ast.unparse(expr)
    return "no_grad" in text or "inference_mode" in text


def _mark_bound_before(parent, body):
    """For each statement of a block: the names bound by earlier statements of the same block or the function's
    arguments (used by _rebinds)."""
    bound = set()
    if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = parent.args
        bound |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    marks = getattr(parent, "_body_before", {})
    for stmt in body:
        marks[id(stmt)] = set(bound)
        for sub in ast.walk(stmt):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                bound.add(sub.id)
    parent._body_before = marks


def _is_all(node) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def mutated_code(path: Path, mutant: Mutant, torch_ops: bool):
    """The code object of the module with one mutant applied (line numbers as in the file)."""
    tree = ast.parse(path.read_text())
    for site, (node, parent, _, _, grad) in enumerate(_walk(tree)):
        if site == mutant.site:
            op, fn = _candidates(node, parent, torch_ops, grad)[mutant.choice]
            assert op == mutant.op, (op, mutant)
            _substitute(parent, node, fn(copy.deepcopy(node)))
            break
    else:
        raise RuntimeError(f"mutant site not found: {mutant.label()}")
    ast.fix_missing_locations(tree)
    return compile(tree, str(path), "exec")


def _substitute(parent, old, new):
    for name, value in ast.iter_fields(parent):
        if isinstance(value, list) and any(v is old for v in value):
            i = next(i for i, v in enumerate(value) if v is old)
            repl = [ast.Pass()] if new is None else (new if isinstance(new, list) else [new])
            for r in repl:
                ast.copy_location(r, old)
            value[i:i + 1] = repl
            return
        if value is old:
            setattr(parent, name, ast.Pass() if new is None else new)
            return
    raise RuntimeError("node not found in its parent")


# ================================================================================================ running the tests
class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the mutated code for one module name; everything else imports as usual."""

    def __init__(self, name, path, code):
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.code, module.__dict__)

    def get_source(self, fullname):
        return Path(self.path).read_text()


class _Recorder:
    """pytest plugin: the first failing test, per-test durations and outcomes; optionally a coverage context per
    test."""

    def __init__(self, cov=None):
        self.cov, self.failed, self.durations, self.outcomes = cov, None, {}, {}

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed and self.failed is None:
            self.failed = report.nodeid
        if report.failed or report.when == "call" or report.skipped:
            self.outcomes[report.nodeid] = "failed" if report.failed or self.outcomes.get(report.nodeid) == "failed" \
                else report.outcome

    def pytest_runtest_setup(self, item):
        if self.cov is not None:
            self.cov.switch_context(item.nodeid)

    def pytest_runtest_teardown(self, item, nextitem):
        pass


def _pytest_args(tests: list[str], stop_first: bool) -> list[str]:
    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-o", "addopts=", "--no-header", "-rN",
            "-W", "ignore::DeprecationWarning", f"--rootdir={ROOT}", "-o", "console_output_style=classic"]
    return args + (["-x"] if stop_first else []) + tests


def run_in_child(job, timeout: float, log: Path) -> tuple[str, dict]:
    """Runs job() (returns a JSON-able dict) in a forked child in its own process group; (status, result):
    status "ok", "timeout" or "crash". The result travels through a file (a pipe would fill and block)."""
    out = log.with_suffix(".result.json")
    out.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # child
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            result = job()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result, code = {"error": repr(exc)}, 3
        try:
            out.write_text(json.dumps(result))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout", {}
        time.sleep(0.05)
    if not out.exists():
        return "crash", {"error": "the child wrote no result"}
    try:
        return "ok", json.loads(out.read_text())
    except json.JSONDecodeError as exc:
        return "crash", {"error": repr(exc)}


def _mutant_job(spec, mutant: Mutant, tests: list[str], torch_ops: bool):
    def job():
        import pytest

        name, src, _ = spec
        sys.meta_path.insert(0, _MutantFinder(name, str(ROOT / src), mutated_code(ROOT / src, mutant, torch_ops)))
        os.chdir(ROOT)
        try:  # a mutant that breaks the import fails every test that imports it: pytest reports that as a
            importlib.import_module(name)  # collection error (rc 2 or 4) that cannot be told from a harness error
        except Exception as exc:  # noqa: BLE001 - any exception at import kills the mutant
            return {"rc": 1, "failed": f"import {name}: {exc!r}"[:300]}
        rec = _Recorder()
        rc = int(pytest.main(_pytest_args(tests, stop_first=True), plugins=[rec]))
        return {"rc": rc, "failed": rec.failed}
    return job


def _coverage_job(files: list[str], sources: list[str]):
    def job():
        import coverage
        import pytest

        os.chdir(ROOT)
        cov = coverage.Coverage(data_file=None, include=[str(ROOT / s) for s in sources], branch=False)
        rec = _Recorder(cov)
        cov.start()
        try:
            rc = int(pytest.main(_pytest_args(files, stop_first=False), plugins=[rec]))
        finally:
            cov.stop()
        data = cov.get_data()
        lines = {}
        for src in sources:
            by_line = data.contexts_by_lineno(str(ROOT / src))
            lines[src] = {str(k): sorted(v) for k, v in by_line.items()}
        return {"rc": rc, "lines": lines, "durations": rec.durations, "outcomes": rec.outcomes}
    return job


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        h.update(p.encode())
        h.update((ROOT / p).read_bytes())
    return h.hexdigest()[:16]


def _digest_bytes(path: str, data: bytes) -> str:
    """_digest([path]) of a file whose content is `data`."""
    return hashlib.sha256(path.encode() + data).hexdigest()[:16]


def coverage_map(names: list[str]) -> dict:
    """Per-test line coverage of all the modules' sources, test file by test file, merged (each file's map is
    cached under .mutation/ while it, the test modules it imports, conftest.py and msrs's sources are unchanged)."""
    files = sorted({t for n in names for t in MODULES[n][2]})
    sources = sorted({spec[1] for spec in MODULES.values()})
    msrs_files = [str(p.relative_to(ROOT)) for p in (ROOT / "msrs").rglob("*.py")]
    merged = {"lines": {src: {} for src in sources}, "durations": {}, "outcomes": {}}
    for test_file in files:
        digest = _digest([test_file, "tests/conftest.py"] + _imported_tests(test_file) + msrs_files)
        cache = STATE / f"coverage-{Path(test_file).stem}-{digest}.json"
        if cache.exists():
            result = json.loads(cache.read_text())
        else:
            print(f"coverage map: running {test_file} once under coverage (a context per test) ...", flush=True)
            start = time.monotonic()
            log = STATE / f"coverage-{os.getpid()}.log"
            status, result = run_in_child(_coverage_job([test_file], sources), timeout=3600, log=log)
            if status != "ok" or "lines" not in result:
                sys.exit(f"coverage run failed ({status}): {result}; see {log}")
            failing = sorted(t for t, o in result["outcomes"].items() if o == "failed")
            if failing:
                sys.exit(f"the tests must pass before mutation testing; failing: {failing}")
            print(f"coverage map: {len(result['durations'])} tests in {time.monotonic() - start:.0f} s", flush=True)
            cache.write_text(json.dumps(result))
        for src, by_line in result["lines"].items():
            for line, tests in by_line.items():
                merged["lines"][src].setdefault(line, []).extend(tests)
        merged["durations"].update(result["durations"])
        merged["outcomes"].update(result["outcomes"])
    return merged


def _imported_tests(test_file: str) -> list[str]:
    """The tests/*.py modules a test file imports (their helpers change its behaviour)."""
    out = []
    for node in ast.walk(ast.parse((ROOT / test_file).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and (ROOT / "tests" / f"{node.module}.py").exists():
            out.append(f"tests/{node.module}.py")
    return out


def tests_for(mutant: Mutant, cov: dict, files: list[str], scope: str) -> list[str]:
    """The passing tests of `files` that execute the mutant's lines (scope "line"), any line of its function
    ("function"), or every test of `files` ("module"), fastest first."""
    by_line = cov["lines"].get(mutant.file, {})
    ok = {t for t, o in cov["outcomes"].items() if o == "passed" and t.split("::")[0] in files}
    if scope == "module":
        chosen = ok
    else:
        if scope == "line":
            span = range(mutant.line, mutant.end_line + 1)
        else:
            span = _function_span(mutant)
        chosen = {t for ln in span for t in by_line.get(str(ln), []) if t in ok}
    return sorted(chosen, key=lambda t: (cov["durations"].get(t, 0.0), t))


_SPANS: dict = {}


def _function_span(mutant: Mutant) -> range:
    if mutant.function == "<module>":
        return range(0)
    key = (mutant.file, mutant.function)
    if key not in _SPANS:
        tree = ast.parse((ROOT / mutant.file).read_text())
        for node, _, qual, _, _ in _walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                _SPANS[(mutant.file, qual)] = range(node.lineno, node.end_lineno + 1)
    return _SPANS.get(key, range(0))


# ================================================================================================ equivalent mutants
def load_equivalents() -> list[dict]:
    if not EQUIVALENTS.exists():
        return []
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    for e in entries:
        missing = {"file", "line", "op", "before", "after", "source_line", "why"} - set(e)
        if missing:
            sys.exit(f"{EQUIVALENTS}: entry {e} lacks {sorted(missing)}")
    return entries


def match_equivalent(mutant: Mutant, entries: list[dict]) -> dict | None:
    """The entry for this mutant: same file, operator, before/after text and source line (the line number only
    breaks ties, so that entries survive edits elsewhere in the file), and the same column where the entry gives
    one (`col`: needed where the line holds two mutants of the same text, of which only one is equivalent)."""
    hits = [e for e in entries if e["file"] == mutant.file and e["op"] == mutant.op and e["before"] == mutant.before
            and e["after"] == mutant.after and e["source_line"] == mutant.source_line
            and e.get("col", mutant.col) == mutant.col]
    if len(hits) > 1:
        hits = sorted(hits, key=lambda e: abs(e["line"] - mutant.line))[:1]
    return hits[0] if hits else None


# ================================================================================================ the run
@dataclass
class Outcome:
    key: str
    label: str
    status: str  # killed | timeout | survived | no_tests | error
    tests: int = 0
    killed_by: str | None = None
    seconds: float = 0.0
    equivalent: bool = False
    extra: dict = field(default_factory=dict)
    mutant: dict = field(default_factory=dict)


def run_module(name: str, cov: dict, args, entries) -> list[Outcome]:
    spec = MODULES[name]
    src, files = ROOT / spec[1], spec[2]
    torch_ops = "import torch" in src.read_text()
    mutants = enumerate_mutants(name, src, torch_ops)
    total = len(mutants)
    if args.sample and args.sample < total:
        mutants = sorted(mutants, key=lambda m: hashlib.sha256(f"{args.seed}:{m.key}".encode()).hexdigest())
        mutants = mutants[: args.sample]
        mutants.sort(key=lambda m: (m.line, m.col, m.site, m.choice))
    selected = list(mutants)
    previous = _load_results(name, src)
    if args.only_survivors:
        mutants = [m for m in mutants if previous.get(m.key, {}).get("status") in ("survived", "no_tests", "error")]
        if args.not_listed:  # the listed equivalents survived their last run: rerun only what new tests may kill
            mutants = [m for m in mutants if match_equivalent(m, entries) is None]
    elif args.resume:  # an interrupted run (same source): the mutants it finished keep their result
        mutants = [m for m in mutants if m.key not in previous]
    if args.line:
        mutants = [m for m in mutants if m.line in args.line]
    print(f"\n== {name} ({spec[1]}): {len(mutants)} of {total} mutants, tests from {', '.join(files)}", flush=True)
    outcomes = []
    for i, m in enumerate(mutants, 1):
        o = run_mutant(spec, m, cov, files, torch_ops, args.timeout_factor)
        o.mutant = asdict(m)
        o.equivalent = o.status in ("survived", "no_tests") and match_equivalent(m, entries) is not None
        outcomes.append(o)
        previous[m.key] = asdict(o)
        mark = {"killed": ".", "timeout": "T", "survived": "S", "no_tests": "N", "error": "E"}[o.status]
        if o.equivalent:
            mark = "e"
        print(mark, end="" if i % 60 else f" {i}\n", flush=True)
        if o.status in ("survived", "no_tests", "error") and not o.equivalent and args.verbose:
            print(f"\n  {o.status}: {o.label}", flush=True)
        _save_results(name, src, previous)
    print(flush=True)
    if args.only_survivors or args.resume or args.line:  # the summary covers the whole set: earlier results too
        keys = {m.key for m in selected}
        outcomes = [Outcome(**previous[k]) for k in keys if k in previous]
        for o in outcomes:
            o.equivalent = o.status in ("survived", "no_tests") and \
                match_equivalent(Mutant(**o.mutant), entries) is not None
    return outcomes, total


def run_mutant(spec, m: Mutant, cov, files, torch_ops, factor) -> Outcome:
    start = time.monotonic()
    log = STATE / f"mutant-{os.getpid()}.log"  # per run: two runs at once must not read each other's result
    scopes = ["line", "function"] if m.scope == "line" else ([m.scope] if m.scope == "function" else ["module"])
    if m.scope == "function":
        scopes = ["function"]
    ran: set = set()
    tests: list = []
    for scope in scopes:
        tests = [t for t in tests_for(m, cov, files, scope) if t not in ran]
        if not tests:
            continue
        ran |= set(tests)
        budget = factor * sum(cov["durations"].get(t, 1.0) for t in tests) + 30.0
        status, result = run_in_child(_mutant_job(spec, m, tests, torch_ops), budget, log)
        if status == "timeout":
            return Outcome(m.key, m.label(), "timeout", len(ran), None, time.monotonic() - start)
        rc = result.get("rc")
        if status != "ok" or rc is None or rc in (3, 4):
            return Outcome(m.key, m.label(), "error", len(ran), None, time.monotonic() - start,
                           extra={"result": result, "log": log.read_text()[-2000:]})
        if rc != 0 and rc != 5:
            return Outcome(m.key, m.label(), "killed", len(ran), result.get("failed") or f"rc={rc}",
                           time.monotonic() - start)
    status = "survived" if ran else "no_tests"
    return Outcome(m.key, m.label(), status, len(ran), None, time.monotonic() - start)


def _results_path(name: str) -> Path:
    return STATE / f"results-{name}.json"


def _load_results(name: str, src: Path) -> dict:
    """The previous results of this module: all of them while its source is unchanged; after an edit, those of the
    mutants in code whose text did not change (carry_results; mutant keys hold line numbers, which move)."""
    p = _results_path(name)
    if not p.exists():
        return {}
    data = json.loads(p.read_text())
    rel = str(src.relative_to(ROOT))
    if data.get("source") == _digest([rel]):
        return data["mutants"]
    old_text = _committed_source(rel, data.get("source"))
    if old_text is None:
        print(f"{p.name}: results of a version of {rel} that is not in git history: not carried over", flush=True)
        return {}
    carried = carry_results(name, src, old_text, src.read_text(), data["mutants"])
    print(f"{p.name}: carried {len(carried)} of {len(data['mutants'])} results over from the committed version "
          f"{data['source']} of {rel} (the mutants of functions and statements whose text is unchanged)", flush=True)
    return carried


def carry_results(name: str, src: Path, old_text: str, new_text: str, results: dict) -> dict:
    """Results of `old_text`'s mutants, re-keyed to the same mutants of `new_text`, for every unit of code whose text
    is identical in both (a function with its decorators; outside functions, a top-level statement, a class with
    its methods): its mutants are then the same edits of the same code, in the same order, only shifted by the
    lines added or removed above it. A carried result was obtained with the tests of its run (a test added since
    can only kill more: --only-survivors reruns the carried survivors)."""
    torch_ops = "import torch" in new_text
    old_by = _by_unit(old_text, enumerate_mutants(name, src, torch_ops, old_text))
    new_by = _by_unit(new_text, enumerate_mutants(name, src, torch_ops, new_text))
    carried = {}
    for unit, (first, new_ms) in new_by.items():
        old_first, old_ms = old_by.get(unit, (0, []))
        if len(old_ms) != len(new_ms):
            continue
        for o, m in zip(old_ms, new_ms):
            same = (o.op, o.before, o.after, o.choice, o.col, o.line - old_first) == (m.op, m.before, m.after,
                                                                                      m.choice, m.col, m.line - first)
            if same and o.key in results:
                r = dict(results[o.key])
                r.update(key=m.key, label=m.label(), mutant=asdict(m))
                carried[m.key] = r
    return carried


def _by_unit(source: str, mutants: list[Mutant]) -> dict:
    """unit text -> (its first line, its mutants in order), a unit being the innermost function around a mutant
    (decorators included) or, outside functions, the top-level statement around it."""
    lines = source.splitlines()
    tree = ast.parse(source)
    spans = {}
    for node, _, qual, _, _ in _walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans[qual] = (min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno)
    top = [(min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]), n.end_lineno) for n in tree.body]
    out: dict = {}
    for m in mutants:
        span = spans.get(m.function) or next(s for s in top if s[0] <= m.line <= s[1])
        text = "\n".join(lines[span[0] - 1:span[1]])
        out.setdefault(text, (span[0], []))[1].append(m)
    return out


def _committed_source(rel: str, digest: str | None) -> str | None:
    """The text of the committed version of `rel` whose _digest is `digest` (None if no commit has it)."""
    if not digest:
        return None
    try:
        revs = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "-n", "500", "--", rel],
                              capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    for rev in revs:
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True, check=False)
        if blob.returncode == 0 and _digest_bytes(rel, blob.stdout) == digest:
            return blob.stdout.decode()
    return None


def _save_results(name: str, src: Path, results: dict) -> None:
    tmp = _results_path(name).with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": _digest([str(src.relative_to(ROOT))]), "mutants": results}, indent=1))
    tmp.replace(_results_path(name))


def summarize(name: str, outcomes: list[Outcome], entries, mutants_total: int) -> dict:
    count = {s: sum(o.status == s and not o.equivalent for o in outcomes)
             for s in ("killed", "timeout", "survived", "no_tests", "error")}
    equivalent = sum(o.equivalent for o in outcomes)
    scored = len(outcomes) - equivalent
    score = 100.0 * (count["killed"] + count["timeout"]) / scored if scored else 100.0
    summary = {"module": name, "mutants": len(outcomes), "of": mutants_total, **count, "equivalent": equivalent,
               "score": round(score, 1)}
    if len(outcomes) < mutants_total and scored:  # a sample: the exact (Clopper-Pearson) 95% interval of the score
        summary["ci95"] = [round(100.0 * v, 1) for v in score_interval(count["killed"] + count["timeout"], scored)]
    return summary


def score_interval(killed: int, scored: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial (Clopper-Pearson) interval of a sampled kill rate (equivalents excluded; it treats
    the equivalent fraction of the sample as known)."""
    from scipy import stats

    tail = (1.0 - level) / 2
    low = stats.beta.ppf(tail, killed, scored - killed + 1) if killed > 0 else 0.0
    high = stats.beta.ppf(1 - tail, killed + 1, scored - killed) if killed < scored else 1.0
    return float(low), float(high)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", nargs="+", choices=list(MODULES), default=list(MODULES),
                        help="modules to mutate, in this order (default: all)")
    parser.add_argument("--sample", type=int, default=0,
                        help="run a seeded random sample of N mutants per module (0: all); the same seed and "
                             "source give the same sample (mutant keys hold line numbers: an edit of the module "
                             "draws another one)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument("--resume", action="store_true",
                       help="skip the mutants that already have a result for this source (an interrupted run)")
    rerun.add_argument("--only-survivors", action="store_true",
                       help="rerun only the mutants that survived (or had no tests) in the last run")
    parser.add_argument("--not-listed", action="store_true",
                        help="with --only-survivors: skip the survivors listed as equivalent (they keep their result; "
                             "the stale-entry check then cannot see whether a new test kills one)")
    parser.add_argument("--line", type=int, nargs="*", help="only the mutants on these lines (debugging)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="a mutant's time limit: factor x the tests' time in the coverage run + 30 s")
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 when a module scores below this")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each new survivor as it happens")
    args = parser.parse_args(argv)
    if args.not_listed and not args.only_survivors:
        parser.error("--not-listed goes with --only-survivors")
    entries = load_equivalents()
    if args.list:
        for name in args.module:
            spec = MODULES[name]
            src = ROOT / spec[1]
            for m in enumerate_mutants(name, src, "import torch" in src.read_text()):
                print(m.label())
        return 0
    STATE.mkdir(exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # msrs must come from this checkout: an msrs installed from another one would be imported by the coverage runs
    # (which then record nothing for this checkout's files, so no test is ever picked for a mutant) and by the tests
    sys.path.insert(0, str(ROOT))
    for mod in PRELOAD:
        try:
            __import__(mod)
        except ImportError:
            pass
    where = Path(sys.modules["msrs"].__file__).resolve().parent if "msrs" in sys.modules else None
    if where != ROOT / "msrs":
        sys.exit(f"msrs is imported from {where}, not from this checkout ({ROOT / 'msrs'}): run from a checkout "
                 f"whose msrs Python imports (pip install -e . there), or set PYTHONPATH={ROOT}")
    loaded = [MODULES[n][0] for n in MODULES if MODULES[n][0] in sys.modules]
    assert not loaded, f"the fork server must not import the modules under test: {loaded}"
    start = time.monotonic()
    cov = coverage_map(args.module)
    summaries, survivors, matched, all_outcomes = [], [], set(), []
    for name in args.module:
        t0 = time.monotonic()
        outcomes, total = run_module(name, cov, args, entries)
        s = summarize(name, outcomes, entries, total)
        s["seconds"] = round(time.monotonic() - t0)
        summaries.append(s)
        all_outcomes += outcomes
        survivors += [o for o in outcomes if o.status in ("survived", "no_tests", "error") and not o.equivalent]
        matched |= {o.key for o in outcomes if o.equivalent}
    stale = [e for e in entries if e["file"] in {MODULES[n][1] for n in args.module} and not any(
        match_equivalent(Mutant(**o.mutant), [e]) for o in all_outcomes)]
    print("\nmodule      mutants  killed  timeout  survived  no-tests  error  equivalent  score   time")
    for s in summaries:
        of = f"{s['mutants']}/{s['of']}" if s["mutants"] != s["of"] else str(s["mutants"])
        print(f"{s['module']:<11} {of:>7}  {s['killed']:>6}  {s['timeout']:>7}  {s['survived']:>8}  {s['no_tests']:>8}"
              f"  {s['error']:>5}  {s['equivalent']:>10}  {s['score']:>5.1f}%  {s['seconds']:>4} s"
              + (f"  (sample: 95% CI {s['ci95'][0]:.1f}-{s['ci95'][1]:.1f}%)" if "ci95" in s else ""))
    if survivors:
        print("\nsurvivors (not in scripts/mutation_equivalents.toml): kill them with a test, or explain them there")
        for o in survivors:
            print(f"  {o.status:<9} {o.label}" + (f"  {o.extra.get('result')}" if o.status == "error" else ""))
    if stale and not (args.sample or args.line):  # a partial run matches only part of the entries
        print("\nequivalent entries that matched no surviving mutant (killed now, or the code changed): remove them")
        for e in stale:
            print(f"  {e['file']}:{e['line']} [{e['op']}] {e['before']} -> {e['after']}")
    print(f"\ntotal time {time.monotonic() - start:.0f} s; results in {STATE}/results-MODULE.json")
    (STATE / "summary.json").write_text(json.dumps(summaries, indent=1))
    return 1 if any(s["score"] < args.fail_under for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
