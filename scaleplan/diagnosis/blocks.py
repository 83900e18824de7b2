"""A log read block by block: the blocks of nanoGPT ``iter`` lines fast, the rest line by line.

`read_blocks` hands each line of a log to a `LineReader` (`scaleplan.diagnosis.logs`), except
in a block that is mostly nanoGPT ``iter`` lines: there `scaleplan.diagnosis.fastpath` tells
them apart at once, the record store (`scaleplan.diagnosis.records`) takes the ones it keeps as
their lines (`iter_record` reads those it still holds at the end) and the others are counted.
The `TrainingLog` is the same as line by line (a test reads logs both ways).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from scaleplan.diagnosis.fastpath import IterLines, iter_lines
from scaleplan.diagnosis.formats import NANOGPT_ITER_LINE, record_line
from scaleplan.diagnosis.records import LogRecord, RecordStore, compact_record
from scaleplan.diagnosis.stream import (
    MAX_UNRECOGNISED_BYTES,
    Chunks,
    LogFormatError,
    line_blocks,
    read_lines,
)

__all__ = ["LineReader", "iter_record", "read_blocks"]


class LineReader(Protocol):
    """What `read_blocks` needs of a reader (`scaleplan.diagnosis.logs`' is one)."""

    records: RecordStore
    formats: Counter[str]
    csv_header: list[str] | None
    last_train_step: int

    def line(self, line_no: int, text: str) -> None: ...

    def fast_line(self, line_no: int, raw: bytes) -> bool: ...


def read_blocks(reader: LineReader, chunks: Chunks, rest: Iterable[bytes]) -> tuple[int, int, int]:
    """Read the lines of ``rest`` (the chunks of ``chunks``) block by block: a block that is
    mostly nanoGPT ``iter`` lines classified at once (`scaleplan.diagnosis.fastpath`), any other
    line by line; (lines, lines too long, lines not UTF-8)."""
    counts = [0, 0, 0]
    for block in line_blocks(rest, chunks.source):
        if block is None:
            counts[0] += 1
            counts[1] += 1
            continue
        lines = iter_lines(block) if reader.csv_header is None else None
        if lines is None:
            found = read_lines(reader.line, block.splitlines(keepends=True), reader.fast_line,
                               first=counts[0])
        else:
            found = _read_classified(reader, block, lines, counts[0])
        counts = [a + b for a, b in zip(counts, found, strict=True)]
        if not reader.formats and chunks.size > MAX_UNRECOGNISED_BYTES:
            raise LogFormatError(
                f"{chunks.source}: nothing recognisable in the first {chunks.size:,} bytes "
                f"(over MAX_UNRECOGNISED_BYTES = {MAX_UNRECOGNISED_BYTES:,}); is this a "
                "training log? pass the log of the run (nanoGPT, llm.c, Hugging Face Trainer, "
                "...)")
    return counts[0], counts[1], counts[2]


def _read_classified(reader: LineReader, block: bytes, lines: IterLines,
                     first: int) -> tuple[int, int, int]:
    """Read a classified block: its ``iter`` lines a run at a time (`_iter_run`), the others
    line by line in between."""
    import numpy as np

    starts, is_iter = lines.starts.tolist(), lines.iter
    n = len(starts) - 1
    too_long = not_utf8 = 0
    begin = 0
    for other in [*np.flatnonzero(~is_iter).tolist(), n]:
        if other > begin:
            _iter_run(reader, block, starts, begin, other, first)
        if other < n:
            _, long, bad = read_lines(reader.line, [block[starts[other]:starts[other + 1]]],
                                      reader.fast_line, first=first + other)
            too_long += long
            not_utf8 += bad
        begin = other + 1
    return n, too_long, not_utf8


def _iter_run(reader: LineReader, block: bytes, starts: list[int], begin: int, end: int,
              first: int) -> None:
    """Lines ``begin`` to ``end - 1`` of the block, all nanoGPT ``iter`` lines: the ones the
    record store keeps, and the last, are handed to it as lines (it reads the ones it still
    holds at the end); the others are counted."""
    count = end - begin
    reader.records.append_lines(
        count, lambda i: block[starts[begin + i]:starts[begin + i + 1]])
    last = block[starts[end - 1]:starts[end]]
    reader.last_train_step = int(last[len(b"iter "):last.index(b":")])
    reader.formats["nanogpt"] += count


def iter_record(line: bytes) -> LogRecord:
    """The record of a nanoGPT ``iter`` line that `scaleplan.diagnosis.fastpath` classified: as
    the line-by-line reader reads it (an MFU of -100.00%, not measured yet, left out)."""
    m = NANOGPT_ITER_LINE.match(line)
    if m is not None:
        step, loss, time_ms, mfu = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    else:  # a number such as "3." that the byte pattern leaves to the general one
        found = record_line(line.decode("ascii").strip(), lambda: 0)
        assert found is not None, line
        fields = found[1]
        step, loss, time_ms, mfu = (fields["step"], fields["train_loss"], fields["time_ms"],
                                    fields["mfu_percent"])
    return compact_record({"kind": "train", "step": step, "train_loss": loss, "time_ms": time_ms,
                           "mfu_percent": mfu if mfu is not None and mfu >= 0 else None})
