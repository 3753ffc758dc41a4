"""The layering rule of docs/DESIGN.md: a module of msrs imports only modules of lower layers (imports inside
functions included), so data and control flow one way. The table is read from DESIGN.md, so the document and the
code cannot drift apart: a new module must be placed in the table, a new import must respect it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "msrs"


def layers() -> dict:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    block = text.split("<!-- layers: begin -->")[1].split("<!-- layers: end -->")[0]
    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", block, flags=re.M)
    assert rows, "docs/DESIGN.md: no layer table"
    return {name: int(layer) for layer, name in rows}


def top_module(path: Path) -> str:
    """msrs/engine.py -> engine; msrs/finetune/trainer.py -> finetune; msrs/ops/x.py -> ops."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_modules(path: Path, package: Path = PACKAGE) -> set:
    """The msrs top-level modules a file imports (absolute `msrs.x`, relative `.x` / `from . import x`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    depth = len(path.relative_to(package).parts) - 1  # how many packages below msrs/ the file sits
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("msrs.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "msrs":
                    found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif node.level == depth + 1:  # relative to msrs/ itself
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found - {"__version__", "_C"}  # _C: the C++ ops compiled ahead of time (csrc/), not Python


def test_every_module_is_placed_and_imports_only_lower_layers():
    table = layers()
    violations, unplaced = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = top_module(path)
        if module in ("__init__", "__main__", "kernels", "csrc"):
            continue
        if module not in table:
            unplaced.add(module)
            continue
        for target in imported_modules(path):
            if target == module:
                continue
            if target not in table:
                unplaced.add(target)
            elif table[target] >= table[module]:
                violations.append(f"{path.relative_to(ROOT)} (layer {table[module]}) imports {target} "
                                  f"(layer {table[target]})")
    assert not unplaced, f"modules missing from docs/DESIGN.md's layer table: {sorted(unplaced)}"
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: imports in a function, relative and absolute, from a subpackage, are all seen."""
    table = layers()
    assert table["engine"] > table["bounds"]  # so `from .engine import Engine` in bounds.py is a violation
    flat = tmp_path / "msrs" / "bounds.py"
    nested = tmp_path / "msrs" / "finetune" / "trainer.py"
    nested.parent.mkdir(parents=True)
    flat.write_text("from .engine import Engine\nfrom msrs import streams\ndef f():\n    from . import logs\n")
    nested.write_text("from ..engine import Engine\nfrom .objective import loss\nimport msrs.checks\n")
    assert imported_modules(flat, tmp_path / "msrs") == {"engine", "streams", "logs"}
    assert imported_modules(nested, tmp_path / "msrs") == {"engine", "checks"}
