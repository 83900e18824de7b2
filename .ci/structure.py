"""Structure limits CI enforces (issue 16): no function above cyclomatic complexity 15 (radon),
no module above 400 lines. Prints each offender and exits 1 when there is one."""

from __future__ import annotations

import pathlib
import sys

from radon.complexity import cc_visit

MAX_COMPLEXITY = 15
MAX_MODULE_LINES = 400


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent / "scaleplan"
    offenders = []
    worst = 0
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            offenders.append(f"{path.relative_to(root.parent)}: {lines} lines > {MAX_MODULE_LINES}")
        for block in cc_visit(text):
            worst = max(worst, block.complexity)
            if block.complexity > MAX_COMPLEXITY:
                offenders.append(f"{path.relative_to(root.parent)}:{block.lineno} "
                                 f"{block.fullname}: complexity {block.complexity} > "
                                 f"{MAX_COMPLEXITY}")
    print("\n".join(offenders) or f"structure: every function <= {MAX_COMPLEXITY} (worst {worst}),"
          f" every module <= {MAX_MODULE_LINES} lines")
    return 1 if offenders else 0


if __name__ == "__main__":
    sys.exit(main())
