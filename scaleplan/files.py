"""Reading a user's file safely: at most a given number of bytes, and JSON without surprises.

A size cap read from ``stat()`` is no cap: ``/dev/zero``, a pipe and a ``/proc`` file all report
0 bytes. `read_bytes` (and `read_text` on top of it) reads at most ``limit + 1`` bytes instead,
so the file's real length is what is judged, and a file that never ends is refused as soon as it
passes the limit. A FIFO with no writer is opened without blocking and reads as empty.

`parse_json` reads JSON as data: nesting too deep for the parser, numbers of thousands of digits
(Python refuses to convert them) and ``NaN``/``Infinity`` become a `ConfigFileError` naming the
file and the key, never a `RecursionError` or a bare ``ValueError``.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from scaleplan.errors import ConfigFileError, ScaleplanError, shown

__all__ = ["MAX_NUMBER_DIGITS", "parse_json", "read_bytes", "read_text"]

#: The longest number `parse_json` reads, in characters: no setting needs more.
MAX_NUMBER_DIGITS = 100

_CHUNK = 1 << 16
_KINDS = ((stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _where(path: str | os.PathLike[str]) -> str:
    text = os.fsdecode(path)
    return text if len(text) <= 200 else shown(text, limit=200)


def read_bytes(path: str | os.PathLike[str], *, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused with a `ConfigFileError` naming the file when there are
    more than ``limit`` (at most ``limit + 1`` are ever read).

    ``what`` names the kind of file in messages ("config file", "GPU file", ...).

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "big.json"
    >>> _ = path.write_bytes(b"x" * 11)
    >>> read_bytes(path, limit=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ConfigFileError: ...big.json: holds more than 10 bytes, larger than any ...

    ``/dev/zero`` says the same, "(it is a character device)", after reading 11 bytes.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ScaleplanError(f"path={shown(path)} must be the path of a {what} (a str or a "
                             "pathlib.Path)")
    where = _where(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ConfigFileError(f"cannot read the file: {exc.strerror or exc}", path=where) \
            from None
    except ValueError:  # an embedded NUL character
        raise ConfigFileError("cannot read the file: the path holds a NUL character",
                              path=where) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigFileError(f"cannot read the file: Is a directory; give the path of a "
                                  f"{what}", path=where)
        kind = next((name for test, name in _KINDS if test(mode)), "")
        if kind and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # opened non-blocking only so a FIFO without writer opens
        data = _read_at_most(fd, limit + 1, where)
    finally:
        os.close(fd)
    described = f" (it is {kind})" if kind else ""
    if len(data) > limit:
        raise ConfigFileError(f"holds more than {limit:,} bytes{described}, larger than any "
                              f"{what}; scaleplan reads at most {limit:,}", path=where)
    if kind and not data:
        raise ConfigFileError(f"{kind} with nothing to read (no writer); give the path of a "
                              f"{what}", path=where)
    return data


def _read_at_most(fd: int, count: int, where: str) -> bytes:
    chunks: list[bytes] = []
    left = count
    while left > 0:
        try:
            chunk = os.read(fd, min(left, _CHUNK))
        except OSError as exc:  # EISDIR on some systems, EIO, ...
            raise ConfigFileError(f"cannot read the file: {exc.strerror or exc}", path=where) \
                from None
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_text(path: str | os.PathLike[str], *, limit: int, what: str = "file") -> str:
    """`read_bytes`, decoded as UTF-8 (an error naming the file and the bad byte otherwise).

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.json"
    >>> _ = p.write_text('{"n_embd": 768}')
    >>> read_text(p, limit=1000)
    '{"n_embd": 768}'
    """
    data = read_bytes(path, limit=limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"not UTF-8 text (byte {exc.start}); save it as UTF-8",
                              path=_where(path)) from None


class _Refused:
    """A number `parse_json` will not read, left in place so its key can be named."""

    __slots__ = ("literal", "reason")

    def __init__(self, literal: str, reason: str) -> None:
        self.literal = literal
        self.reason = reason


def parse_json(text: str, *, source: str = "<json>") -> Any:
    """``json.loads(text)``, with every failure a `ConfigFileError` naming ``source``.

    Refused, naming the key: numbers longer than `MAX_NUMBER_DIGITS` characters, numbers that
    overflow a float, ``NaN`` and ``Infinity``. Nesting deeper than the parser's recursion
    limit is refused too (a config nests a few levels).

    >>> parse_json('{"a": [1, 2.5]}')
    {'a': [1, 2.5]}
    >>> parse_json('{"a": {"b": 1e999}}', source="c.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ConfigFileError: c.json: a.b = 1e999: the number overflows a 64-bit float...
    """
    refused: list[_Refused] = []

    def number(literal: str, convert: Any) -> Any:
        if len(literal) > MAX_NUMBER_DIGITS:
            reason = (f"a number of {len(literal):,} characters; no setting needs more than "
                      f"{MAX_NUMBER_DIGITS}")
        else:
            value = convert(literal)
            if math.isfinite(value):
                return value
            reason = "the number overflows a 64-bit float; give a finite number"
        refused.append(_Refused(literal, reason))
        return refused[-1]

    def constant(literal: str) -> Any:
        refused.append(_Refused(literal, "not a finite number; JSON has no NaN or Infinity"))
        return refused[-1]

    try:
        data = json.loads(text, parse_int=lambda s: number(s, int),
                          parse_float=lambda s: number(s, float), parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"not valid JSON: {exc.msg}", path=source, line=exc.lineno) \
            from None
    except (RecursionError, MemoryError):
        raise ConfigFileError("nested too deeply to be a config (a config nests a few levels)",
                              path=source) from None
    if refused:
        key, bad = _find_refused(data)
        literal = bad.literal if len(bad.literal) <= 40 else f"{bad.literal[:20]}..."
        raise ConfigFileError(f"{key} = {literal}: {bad.reason}", path=source)
    return data


def _find_refused(data: Any) -> tuple[str, _Refused]:
    """The key path ("gpus[2].memory_gib") of the first refused number, walking without
    recursion (the data may nest hundreds of levels); each step links to its parent, so a deep
    path is spelled out only once, when found."""
    Path = tuple[Any, str] | None  # (parent path, this step)
    stack: list[tuple[Path, Any]] = [(None, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Refused):
            return _spell(path), value
        if isinstance(value, dict):
            items: list[tuple[Path, Any]] = [((path, f".{_step(k)}"), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [((path, f"[{i}]"), v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(items))
    raise AssertionError("a refused number was recorded but not found")  # pragma: no cover


def _step(key: object) -> str:
    return key if isinstance(key, str) and len(key) <= 40 else shown(key, limit=40)


def _spell(path: tuple[Any, str] | None) -> str:
    steps: list[str] = []
    while path is not None:
        path, step = path
        steps.append(step)
    return "".join(reversed(steps)).removeprefix(".") or "the value"
