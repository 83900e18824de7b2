"""The records a log gives: `LogRecord` (one line's numbers), `LogWarning` (a known message),
and `compact_record`, which builds a record from checked values without validating it twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_KEPT_RECORDS", "MAX_MFU_PERCENT", "LogRecord", "LogWarning", "RecordStore",
           "compact_record"]

# nanoGPT prints MFU against an A100's 312 TFLOP/s, so a faster GPU prints over 100% (a B200's
# dense bf16 peak, 2.25 PFLOP/s, is 720%). 10,000% would be 100 A100s in one GPU: a value above
# it is a garbled line, skipped with an "implausible-value" warning (1e300% overflowed the MFU
# arithmetic downstream).
MAX_MFU_PERCENT = 10_000.0
# Records kept of each kind: a log with more (nanoGPT logs every step: 20 million lines in 1 GB)
# keeps an evenly spaced subset, ~360 bytes a record, so memory does not grow with the log.
# 20,000 points draw a loss curve finely; each kept line costs reading time as well.
MAX_KEPT_RECORDS = 20_000


class LogRecord(BaseModel):
    """One line's worth of numbers from a log.

    ``kind`` is ``"train"`` for a training step's own loss (one batch, noisy) and ``"eval"``
    for an evaluation (nanoGPT's ``step`` lines also estimate the train-split loss there).
    Losses are nats per token. Non-finite values are not stored: they become a warning.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["train", "eval"] = Field(description="'train' for a training step's own "
                                           "loss, 'eval' for an evaluation.")
    step: int | None = Field(None, ge=0, description="The optimizer step the line reports.")
    train_loss: float | None = Field(None, allow_inf_nan=False,
                                     description="Training loss, nats per token.")
    val_loss: float | None = Field(None, allow_inf_nan=False,
                                   description="Validation loss, nats per token.")
    time_ms: float | None = Field(None, ge=0, allow_inf_nan=False,
                                  description="Milliseconds the step took, as printed.")
    mfu_percent: float | None = Field(None, ge=0, le=MAX_MFU_PERCENT, allow_inf_nan=False,
                                      description="The MFU the log prints, in per cent.")
    tokens_per_second: float | None = Field(None, ge=0, allow_inf_nan=False,
                                            description="Throughput the log prints, in tokens "
                                            "per second.")
    learning_rate: float | None = Field(None, allow_inf_nan=False,
                                        description="The learning rate at that step.")
    epoch: float | None = Field(None, allow_inf_nan=False,
                                description="Epochs done, as the Trainer prints them.")
    grad_norm: float | None = Field(None, ge=0, allow_inf_nan=False,
                                    description="The gradient norm the log prints.")


class LogWarning(BaseModel):
    """A known message found in the log: its code, first line (1-based), text and count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="Stable identifier of the message, e.g. 'nan-loss'.")
    line: int = Field(description="The first line it appears on (1-based).")
    text: str = Field(description="That line's text, shortened.")
    count: int = Field(1, description="Lines in the log with the same message.")
    step: int | None = Field(None, description="The step of its first line, when that line "
                             "says (a non-finite loss at step 312).")


_ALL_RECORD_FIELDS = set(LogRecord.model_fields)  # shared; model_copy copies it first


# Every field None, in the split-table dict an instance's attributes make: its copies share
# one table of keys (a record's attributes take ~250 bytes, not ~400).
_EMPTY = LogRecord.__new__(LogRecord)
for _name in LogRecord.model_fields:
    object.__setattr__(_EMPTY, _name, None)
_EMPTY_RECORD: dict[str, Any] = _EMPTY.__dict__


def compact_record(values: dict[str, Any]) -> LogRecord:
    """The `LogRecord` of ``values``, which the log reader checked against its fields (finite
    floats, no negative times or rates, MFU within bounds; steps ints in [0, 1e15) and kinds
    "train" or "eval" by construction), not validated a second time and kept in a shared-key
    dict: ~360 bytes a record with its numbers, not ~1,190 (a 100 MB log holds two million
    records), and 3x faster. Tests check them against `LogRecord`'s validation."""
    record = LogRecord.__new__(LogRecord)
    attributes = _EMPTY_RECORD.copy()
    attributes.update(values)
    assert len(attributes) == len(_EMPTY_RECORD), values  # a field name, each key
    object.__setattr__(record, "__dict__", attributes)
    object.__setattr__(record, "__pydantic_fields_set__", _ALL_RECORD_FIELDS)
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record


class RecordStore:
    """The records of a log, kept in bounded memory: each kind ("train", "eval") up to
    ``limit`` records, evenly spaced. Past the limit the spacing doubles (every 2nd record of
    the kind, then every 4th, ...), so a log of any length keeps between ``limit / 2`` and
    ``limit`` of each kind, the first and the last included, in the log's order.

    Training records may be given as their lines (`append_lines`), read by ``parse_line`` only
    if still kept at the end: most lines of a long log are dropped unread.

    >>> store = RecordStore(limit=4)
    >>> for step in range(10):
    ...     store.append(LogRecord(kind="train", step=step, train_loss=1.0))
    >>> [r.step for r in store.records()], store.seen["train"]
    ([0, 4, 8, 9], 10)
    """

    def __init__(self, limit: int | None = None,
                 parse_line: Callable[[bytes], LogRecord] | None = None) -> None:
        self.limit = MAX_KEPT_RECORDS if limit is None else limit
        self.parse_line = parse_line
        self.seen = {"train": 0, "eval": 0}  # records of each kind so far, kept or not
        self._stride = {"train": 1, "eval": 1}
        self._kept: list[_Entry] = []
        self._count = {"train": 0, "eval": 0}
        self._last: dict[str, _Entry | None] = {"train": None, "eval": None}
        self._position = 0  # records so far, both kinds

    def append(self, record: LogRecord) -> None:
        """Take the next record of the log."""
        self._take(record.kind, record)

    def append_lines(self, count: int, line: Callable[[int], bytes]) -> None:
        """Take the next ``count`` records of the log, training records given as lines:
        ``line(i)`` is the i-th, asked for only where it is kept (and for the last). The same
        as `append_line` on each, in a loop that skips the others without a call each."""
        seen, position = self.seen["train"], self._position
        stride = self._stride["train"]
        i = (-seen) % stride
        while i < count - 1:
            self._kept.append((position + i, seen + i, "train", line(i)))  # type: ignore[arg-type]
            self._count["train"] += 1
            if self._count["train"] > self.limit:
                self._thin("train")
                stride = self._stride["train"]
            i = ((seen + i) // stride + 1) * stride - seen  # the next ordinal kept
        self.seen["train"] = seen + count - 1
        self._position = position + count - 1
        self._take("train", line(count - 1))

    def _take(self, kind: str, item: LogRecord | bytes) -> None:
        ordinal = self.seen[kind]
        entry = (self._position, ordinal, kind, item)  # an _Entry, built faster as a tuple
        self._position += 1
        self.seen[kind] = ordinal + 1
        if ordinal % self._stride[kind]:
            self._last[kind] = entry  # type: ignore[assignment]
            return
        self._kept.append(entry)  # type: ignore[arg-type]
        self._last[kind] = None
        self._count[kind] += 1
        if self._count[kind] > self.limit:
            self._thin(kind)

    def _thin(self, kind: str) -> None:
        self._stride[kind] *= 2
        stride = self._stride[kind]
        self._kept = [e for e in self._kept if e[2] != kind or e[1] % stride == 0]
        self._count[kind] = sum(1 for e in self._kept if e[2] == kind)

    def records(self) -> tuple[LogRecord, ...]:
        """The records kept, and the last of each kind, in the log's order."""
        kept = self._kept + [e for e in self._last.values() if e is not None]
        kept.sort(key=lambda e: e[0])
        return tuple(self._record(e[3]) for e in kept)

    def _record(self, item: LogRecord | bytes) -> LogRecord:
        if isinstance(item, LogRecord):
            return item
        assert self.parse_line is not None, "append_line needs parse_line"
        return self.parse_line(item)


class _Entry(NamedTuple):
    position: int  # among all records of the log
    ordinal: int  # among the records of its kind
    kind: str
    item: LogRecord | bytes
