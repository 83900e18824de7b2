"""docs/validators.md's python blocks run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "validators.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_the_docs_page_has_the_complete_example() -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 2
    assert "class TeamConfig(BaseModel)" in blocks[0]


def test_the_docs_example_runs(capsys: object) -> None:
    namespace: dict[str, object] = {"__name__": "docs_validators"}
    for block in python_blocks(DOC.read_text()):
        exec(compile(block, str(DOC), "exec", dont_inherit=True), namespace)
    assert namespace["findings"]
