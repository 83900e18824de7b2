"""A griffe extension for the API reference: show bare doctest examples as code.

scaleplan's docstrings put some examples straight in the body (``>>> count_params(...)``) rather
than under a Google-style ``Examples:`` section. Markdown reads ``>>>`` as three nested
blockquotes and ``[1, 2, 4]`` in the output as a link, so each such run of lines (from a line
starting with ``>>>`` to the next blank line, at the docstring's own indentation) is wrapped in a
``pycon`` fence here. Examples inside an ``Examples:`` section are indented and left to griffe.
"""

from __future__ import annotations

from typing import Any

from griffe import Extension, Object

__all__ = ["DoctestFences", "fence_doctests"]


def fence_doctests(text: str) -> str:
    """Wrap every unindented run of ``>>>`` lines (up to a blank line) in a pycon fence."""
    out: list[str] = []
    in_example = in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and not in_example and line.startswith(">>>"):
            out.append("```pycon")
            in_example = True
        elif in_example and not line.strip():
            out.append("```")
            in_example = False
        out.append(line)
    if in_example:
        out.append("```")
    return "\n".join(out)


class DoctestFences(Extension):
    """Apply `fence_doctests` to every docstring griffe loads."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
