"""scripts/mutation.py's bookkeeping: results carried over an edit of the mutated module (carry_results)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OLD = '''\
LIMIT = 3


def f(x):
    return x + 1


def g(x):
    if x < LIMIT:
        return x * 2
    return x
'''
# f is edited (one more line, one more mutant): g and LIMIT keep their text, one line lower
NEW = OLD.replace("    return x + 1\n", "    y = x - 1\n    return y + 2\n")


def _harness():
    spec = importlib.util.spec_from_file_location("mutation_harness", ROOT / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_results_carry_over_to_unchanged_code_only(tmp_path):
    m = _harness()
    src = m.ROOT / "msrs" / "toy.py"  # only its name is used: the texts are passed in
    old = m.enumerate_mutants("toy", src, False, OLD)
    new = m.enumerate_mutants("toy", src, False, NEW)
    results = {x.key: {"key": x.key, "status": f"status of {x.line}:{x.col}:{x.op}:{x.after}"} for x in old}
    carried = m.carry_results("toy", src, OLD, NEW, results)
    # by hand: LIMIT's mutant (3 -> 4) keeps its line, g's three (< -> <=, * -> /, 2 -> 3) move one line down;
    # f's mutants are not carried (its text changed)
    expected = {}
    for x in new:
        if x.function == "f":
            continue
        old_line = x.line if x.function == "<module>" else x.line - 1
        expected[x.key] = f"status of {old_line}:{x.col}:{x.op}:{x.after}"
    assert {k: v["status"] for k, v in carried.items()} == expected
    assert {x.function for x in new if x.key in carried} == {"<module>", "g"}
    assert sum(x.function == "g" for x in new) == 3 and sum(x.function == "<module>" for x in new) == 1
    # carried results describe the new mutant (key, label, line)
    for key, r in carried.items():
        assert r["key"] == key and r["mutant"]["line"] == int(key.split(":")[1])
    # the same text carries everything
    assert set(m.carry_results("toy", src, OLD, OLD, results)) == set(results)


def test_an_equivalents_entry_with_a_column_matches_only_that_mutant():
    """Two mutants of the same text on one line (`0` -> `1` in both `t > 0` of cs_bounds' phat) differ only in
    their column: an entry without `col` matches both, one with `col` only its own, so listing one equivalent
    cannot hide the other."""
    m = _harness()
    line = "phat = np.where(t > 0, s / np.where(t > 0, t, 1.0), 0.5)\n"
    mutants = [x for x in m.enumerate_mutants("toy", m.ROOT / "msrs" / "toy.py", False, line)
               if x.op == "number" and x.before == "0"]
    assert len(mutants) == 2 and mutants[0].col != mutants[1].col
    entry = {"file": mutants[0].file, "line": 1, "op": "number", "before": "0", "after": "1",
             "source_line": line.strip(), "why": "test"}
    assert all(m.match_equivalent(x, [entry]) is entry for x in mutants)
    pinned = entry | {"col": mutants[1].col}
    assert [m.match_equivalent(x, [pinned]) is pinned for x in mutants] == [False, True]
