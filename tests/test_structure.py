"""The package's structure rules (issue 16), checked on the source as data: modules import only
public names from each other, and each unit constant is defined once (in ``scaleplan.units``).
The layers are checked by ``lint-imports`` and the complexity and size limits by
``.ci/structure.py``, both run by CI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scaleplan"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def test_the_walk_sees_the_subpackages() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p, _ in _modules()}
    assert {"units.py", "memory/training.py", "model/shapes.py", "planning/planner.py"} <= names


def test_no_module_imports_another_modules_private_name() -> None:
    private = [f"{p.relative_to(PACKAGE)}: from {node.module} import {alias.name}"
               for p, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module
               and node.module.startswith("scaleplan")
               for alias in node.names if alias.name.startswith("_")]
    assert private == []


_GIB_SPELLINGS = {"2**30", "1<<30", "1024**3", "1073741824", "1_073_741_824"}


def _gib_definitions(tree: ast.Module) -> list[str]:
    """Module-level names bound to 2**30 (however it is spelled) or named like a GiB."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            spelled = ast.unparse(node.value).replace(" ", "")
            found += [t.id for t in targets if isinstance(t, ast.Name)
                      and (spelled in _GIB_SPELLINGS or t.id.strip("_").upper() == "GIB")]
    return found


def test_gib_is_defined_once_in_units() -> None:
    # one GiB (2**30 bytes) for every message, report and table
    defining = sorted(f"{p.relative_to(PACKAGE)}: {name}" for p, tree in _modules()
                      for name in _gib_definitions(tree))
    assert defining == ["units.py: GiB"]
