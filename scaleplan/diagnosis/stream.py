"""A log read as a stream of lines, in bounded memory: `read_log` holds one chunk and one line
at a time, never the whole file.

- `open_log`: the file opened for reading without blocking on a FIFO that has no writer.
- `Chunks`: the bytes of a file or of a string, in chunks of `CHUNK_BYTES`, at most
  `MAX_LOG_BYTES` of them (one byte more is read to tell; a longer log is refused, so
  ``/dev/zero`` ends with an error, not a hang).
- `split_lines`: the lines of those chunks, split as `bytes.splitlines` splits them (``\\n``,
  ``\\r\\n`` and ``\\r``: a progress bar's ``\\r`` ends a line), a line longer than
  `MAX_LINE_CHARS` given as None without being held.
- `read_lines`: each line decoded (bytes that are not UTF-8 replaced) and handed on.
- `source_name` and `text_contents`: `read_log`'s ``path`` and ``text`` checked.
- `json_document`: a log that starts with ``{`` or ``[`` read whole as JSON when it is at most
  `MAX_JSON_DOCUMENT_BYTES` (``trainer_state.json``).
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from scaleplan.errors import ScaleplanError, shown

__all__ = ["CHUNK_BYTES", "MAX_JSON_DOCUMENT_BYTES", "MAX_LINE_CHARS", "MAX_LINE_RUN_BYTES",
           "MAX_LOG_BYTES", "MAX_UNRECOGNISED_BYTES", "Chunks", "LogFormatError",
           "json_document", "line_blocks", "open_log", "read_lines", "source_name",
           "split_lines", "text_contents"]

# Bounds. nanoGPT's default 600,000 iterations logged every step is about 35 MB; llm.c lines
# are ~110 bytes. A longer log is refused (tail it); a longer line is skipped and counted.
# A log of 16 GiB is ~300 million lines, read in a few minutes.
MAX_LOG_BYTES = 16 * 2**30  # memory does not grow with the log: this only bounds the time
MAX_UNRECOGNISED_BYTES = 64 * 2**20  # nothing recognised in 64 MiB: no training log
MAX_LINE_CHARS = 16_384
MAX_LINE_RUN_BYTES = 16 * 2**20  # no line end in 16 MiB: not a text log (/dev/zero)
MAX_JSON_DOCUMENT_BYTES = 32 * 2**20  # a trainer_state.json; larger JSON is read line by line
CHUNK_BYTES = 256 * 2**10


class LogFormatError(ScaleplanError):
    """A log that cannot be read, or in which nothing is recognisable; names the file."""


def open_log(source: str, path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading bytes. A FIFO is opened without waiting for a writer (with
    none, reading it gives end of file at once); ``source`` names the file in the error."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise LogFormatError(f"{source}: cannot read the log: {exc.strerror}") from None
    except ValueError as exc:  # a NUL in the path
        raise LogFormatError(f"{source}: cannot read the log: {exc}") from None
    try:
        if nonblock:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~nonblock)
        return os.fdopen(fd, "rb", buffering=0)
    except OSError as exc:  # a directory
        os.close(fd)
        raise LogFormatError(f"{source}: cannot read the log: {exc.strerror}") from None


def source_name(path: object) -> str:
    """The file's name, from ``path`` (a str or an os.PathLike)."""
    if isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        name = os.fspath(path)
        if isinstance(name, str):
            return name
    raise ScaleplanError(f"read_log: path={shown(path)} must be a file path (a str or an "
                         "os.PathLike such as pathlib.Path); to read a string, pass it as "
                         "text=, e.g. read_log(text=...)")


def text_contents(text: object) -> str | bytes:
    """``text`` as str or bytes (a bytearray or memoryview copied to bytes)."""
    if isinstance(text, str | bytes):
        return text
    if isinstance(text, bytearray | memoryview):
        return bytes(text)
    raise ScaleplanError(f"read_log: text={shown(text)} must be the log's contents as a str or "
                         "bytes (or None to read the file at path)")


def read_lines(reader: Callable[[int, str], None], lines: Iterable[bytes | None],
               fast: Callable[[int, bytes], bool] = lambda line_no, line: False,
               first: int = 0) -> tuple[int, int, int]:
    """Give ``reader`` each line's number (from ``first + 1``) and text, decoded, unless
    ``fast`` has read the line from its bytes already (it says whether it did); (lines, lines
    too long to read, lines not UTF-8). A line is None when `split_lines` found it too long."""
    line_no = first
    too_long = not_utf8 = 0
    for line_no, line_bytes in enumerate(lines, start=first + 1):
        if line_bytes is None or (len(line_bytes) > MAX_LINE_CHARS
                                  and len(line_bytes.rstrip(b"\r\n")) > MAX_LINE_CHARS):
            too_long += 1
            continue
        if fast(line_no, line_bytes):
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            line = line_bytes.decode("utf-8", errors="replace")
            not_utf8 += 1
        reader(line_no, line)
    return line_no - first, too_long, not_utf8


class Chunks:
    """The bytes of a log in chunks, refused past `MAX_LOG_BYTES` (``source`` names it in the
    error). ``read(n)`` gives at most ``n`` bytes, and b"" at the end; ``size`` is the bytes
    given so far and ``ends_in_newline`` whether the last of them ends a line."""

    def __init__(self, source: str, read: Callable[[int], bytes]) -> None:
        self.source = source
        self._read = read
        self.size = 0
        self.ends_in_newline = False

    @classmethod
    def of_text(cls, source: str, text: str | bytes) -> Chunks:
        """``text`` in chunks, each sliced from it as it is read (a str is encoded chunk by
        chunk, a lone surrogate replaced)."""
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            piece = text[pos:pos + n]
            pos += n
            return piece.encode("utf-8", errors="replace") if isinstance(piece, str) else piece

        return cls(source, read)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._read(min(CHUNK_BYTES, MAX_LOG_BYTES + 1 - self.size))
            except OSError as exc:
                raise LogFormatError(f"{self.source}: cannot read the log: {exc.strerror}"
                                     ) from None
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > MAX_LOG_BYTES:
                raise LogFormatError(
                    f"{self.source}: the log is more than MAX_LOG_BYTES = {MAX_LOG_BYTES:,} "
                    "bytes (reading stopped there; an endless file such as /dev/zero is one); "
                    "pass its tail (tail -n 200000)")
            self.ends_in_newline = chunk[-1:] in (b"\n", b"\r")
            yield chunk


def line_blocks(chunks: Iterable[bytes], source: str = "<text>") -> Iterator[bytes | None]:
    """The log in ``chunks`` as blocks of whole lines (each block ends where a line ends, as
    `bytes.splitlines` ends lines: ``\\n``, ``\\r\\n`` or ``\\r``; the last may end without),
    and None in place of a line longer than `MAX_LINE_CHARS` that did not fit in one chunk (its
    bytes are dropped as they are read: memory stays one chunk and one line). A block may still
    hold a long line that did fit; `read_lines` skips those. More than `MAX_LINE_RUN_BYTES`
    without a line end is no text log (``/dev/zero``): `LogFormatError` naming ``source``."""
    pending = b""
    dropped = -1  # bytes of an over-long line dropped so far; -1 outside one
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        if dropped >= 0:
            data, dropped = _end_of_long_line(data, dropped, source)
            if dropped < 0:
                yield None
            elif data:  # a final "\r", which may pair with a "\n" in the next chunk
                pending = data
                continue
        cut = _complete(data)
        if cut:
            yield data[:cut]
        pending = data[cut:]
        if len(pending) > MAX_LINE_CHARS + 1:  # + 1: a "\r" waiting for "\n"
            dropped = len(pending)
            pending = b"\r" if pending.endswith(b"\r") else b""
    if dropped >= 0:
        yield None
    elif pending:
        yield pending


def _complete(data: bytes) -> int:
    """Where the whole lines of ``data`` end: after its last line end, a final ``\\r`` left
    out (a ``\\n`` in the next chunk may pair with it)."""
    return max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1


def _end_of_long_line(data: bytes, dropped: int, source: str) -> tuple[bytes, int]:
    """``data`` after the end of the over-long line it continues, and -1; or, when the line goes
    on past ``data``, what of it must wait for the next chunk (a final ``\\r``) and the bytes
    dropped so far."""
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    end = min(ends) if ends else -1
    if end < 0 or (end == len(data) - 1 and data[end:] == b"\r"):
        dropped += len(data)
        if dropped > MAX_LINE_RUN_BYTES:
            raise LogFormatError(
                f"{source}: no line end in {dropped:,} bytes (more than MAX_LINE_RUN_BYTES = "
                f"{MAX_LINE_RUN_BYTES:,}): this is not a text log (an endless file such as "
                "/dev/zero is one); pass the training log itself")
        return (b"\r" if end >= 0 else b""), dropped
    if data[end:end + 2] == b"\r\n":
        end += 1
    return data[end + 1:], -1


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    """The lines of ``chunks`` with their line ends, as ``b"".join(chunks).splitlines(True)``
    gives them; None for a line longer than `MAX_LINE_CHARS` bytes that did not fit in a chunk
    (`line_blocks`, split)."""
    for block in line_blocks(chunks):
        if block is None:
            yield None
        else:
            yield from block.splitlines(keepends=True)


def json_document(chunks: Iterable[bytes]) -> tuple[Any, Iterator[bytes]]:
    """A log that starts (after white space) with ``{`` or ``[`` and is one JSON document of at
    most `MAX_JSON_DOCUMENT_BYTES`: (the document, its bytes as one chunk); otherwise (None,
    the chunks again, from the first)."""
    stream = iter(chunks)
    head: deque[bytes] = deque()
    size = 0
    first = b""
    for chunk in stream:
        head.append(chunk)
        size += len(chunk)
        first = chunk.lstrip()[:1]
        if first or size > MAX_JSON_DOCUMENT_BYTES:  # white space held no further than that
            break
    if first in (b"{", b"["):
        for chunk in stream:
            head.append(chunk)
            size += len(chunk)
            if size > MAX_JSON_DOCUMENT_BYTES:
                break
        else:
            data = b"".join(head)
            head = deque([data])
            try:
                return json.loads(data), iter(head)
            except (ValueError, RecursionError):
                pass
    return None, _replay(head, stream)


def _replay(head: deque[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks in ``head``, dropped as they are given, then the rest."""
    while head:
        yield head.popleft()
    yield from rest
