"""The records a log gives: `LogRecord` (one line's numbers), `LogWarning` (a known message),
and `compact_record`, which builds a record from checked values without validating it twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_MFU_PERCENT", "LogRecord", "LogWarning", "compact_record"]

# nanoGPT prints MFU against an A100's 312 TFLOP/s, so a faster GPU prints over 100% (a B200's
# dense bf16 peak, 2.25 PFLOP/s, is 720%). 10,000% would be 100 A100s in one GPU: a value above
# it is a garbled line, skipped with an "implausible-value" warning (1e300% overflowed the MFU
# arithmetic downstream).
MAX_MFU_PERCENT = 10_000.0


class LogRecord(BaseModel):
    """One line's worth of numbers from a log.

    ``kind`` is ``"train"`` for a training step's own loss (one batch, noisy) and ``"eval"``
    for an evaluation (nanoGPT's ``step`` lines also estimate the train-split loss there).
    Losses are nats per token. Non-finite values are not stored: they become a warning.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["train", "eval"]
    step: int | None = Field(None, ge=0)
    train_loss: float | None = Field(None, allow_inf_nan=False)
    val_loss: float | None = Field(None, allow_inf_nan=False)
    time_ms: float | None = Field(None, ge=0, allow_inf_nan=False)
    mfu_percent: float | None = Field(None, ge=0, le=MAX_MFU_PERCENT, allow_inf_nan=False)
    tokens_per_second: float | None = Field(None, ge=0, allow_inf_nan=False)
    learning_rate: float | None = Field(None, allow_inf_nan=False)
    epoch: float | None = Field(None, allow_inf_nan=False)
    grad_norm: float | None = Field(None, ge=0, allow_inf_nan=False)


class LogWarning(BaseModel):
    """A known message found in the log: its code, first line (1-based), text and count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    line: int
    text: str
    count: int = 1
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
