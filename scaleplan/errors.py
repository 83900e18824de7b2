"""scaleplan's own error types.

Every rejection of user input is a ``ValueError`` (pydantic's ``ValidationError`` is one too), so
callers can catch one type. The message names the field, the value and a fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ConfigFileError", "ScaleplanError", "UnknownNameError", "shown"]

#: The longest message an error carries; a longer one keeps its start and end.
MESSAGE_LIMIT = 2000
#: The longest repr of a user's value that a message quotes.
VALUE_LIMIT = 80


def shown(value: object, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)``, shortened to about ``limit`` characters with a note of its full length, so
    a megabyte of bad input never becomes a megabyte of message.

    >>> shown("gpt2")
    "'gpt2'"
    >>> shown("x" * 1000, limit=20)
    "'xxxxx...xxxxxxxxxx' (1002 characters)"
    """
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past the digit limit; a deeply nested list
        return f"<a {type(value).__name__} too large to show>"
    if len(text) <= limit:
        return text
    head = limit // 2 - 4
    return f"{text[:head]}...{text[-(limit - head - 3):]} ({len(text)} characters)"


def _clip(message: str) -> str:
    if len(message) <= MESSAGE_LIMIT:
        return message
    half = MESSAGE_LIMIT // 2
    return f"{message[:half]} ...[{len(message) - 2 * half} characters cut]... {message[-half:]}"


class ScaleplanError(ValueError):
    """Base class of the errors scaleplan raises for bad input.

    It is a ``ValueError``, so one ``except ValueError`` catches every rejection:

    >>> from scaleplan.model.config import GPTConfig
    >>> try:
    ...     GPTConfig.preset("gpt-3")
    ... except ScaleplanError as exc:
    ...     print(type(exc).__name__, isinstance(exc, ValueError))
    UnknownNameError True

    A message is at most `MESSAGE_LIMIT` characters: a longer one keeps its start and its end.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_clip(args[0]),)
        super().__init__(*args)


class UnknownNameError(ScaleplanError, LookupError):
    """A name (preset, GPU, scaling law, ...) that scaleplan does not know.

    The message lists the closest known names.

    >>> exc = UnknownNameError("preset", "gpt-3", ["gpt2", "gpt2-xl", "llama-2-7b"])
    >>> str(exc)
    "unknown preset 'gpt-3'; did you mean 'gpt2-xl', 'gpt2'?"
    >>> exc.suggestions
    ['gpt2-xl', 'gpt2']
    """

    def __init__(self, kind: str, name: object, known: Iterable[str]) -> None:
        known = sorted(known)
        key = str(name)[:VALUE_LIMIT].lower() if isinstance(name, str) else shown(name).lower()
        close = difflib.get_close_matches(key, [k.lower() for k in known], n=5)
        lookup = {k.lower(): k for k in known}
        suggestions = [lookup[c] for c in close]
        if suggestions:
            hint = "did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        else:
            hint = "known: " + ", ".join(repr(k) for k in known)
        super().__init__(f"unknown {kind} {shown(name)}; {hint}")
        self.kind = kind
        self.name = name
        self.suggestions = suggestions


class ConfigFileError(ScaleplanError):
    """A configuration file that cannot be read; the message names the file and the line.

    >>> exc = ConfigFileError("an import is not allowed", path="bad.py", line=1)
    >>> str(exc), exc.line
    ('bad.py, line 1: an import is not allowed', 1)
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path or "<config>"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
