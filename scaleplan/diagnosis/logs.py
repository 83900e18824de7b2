"""Read training logs as data: nanoGPT, llm.c, Hugging Face Trainer, CSV and JSONL.

`read_log` turns a log into a `TrainingLog`: the losses, step times and MFU it reports, the
parameter count it prints, the warnings it contains, and how many lines it could not read.
Nothing in a log is executed: lines are matched with regular expressions, dict lines are read
with `json` or `ast.literal_eval` (literals only), and every size is bounded. What each kind of
line looks like is in `scaleplan.diagnosis.formats`; this module reads a log line by line.

Formats (the print statements they come from):

- nanoGPT ``train.py``: ``step {iter_num}: train loss {:.4f}, val loss {:.4f}`` (an evaluation
  over ``eval_iters`` batches), ``iter {iter_num}: loss {:.4f}, time {:.2f}ms, mfu {:.2f}%``
  (one step; the MFU is ``-100.00%`` until it has been measured), ``number of parameters:
  {:.2f}M`` (``model.py``) and ``tokens per iteration will be: {:,}``.
- llm.c ``train_gpt2.cu``: ``step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e |
  %.2f ms | %.1f%% bf16 MFU | %.0f tok/s`` and ``val loss %f``; older versions and
  ``train_gpt2.c`` print ``step %4d/%d: train loss %f (%f ms, %d tok/s)`` and ``step %d: train
  loss %f (took %f ms)``; its ``main.log`` holds ``s:%d trl:%.4f`` and ``s:%d tel:%.4f``.
- Hugging Face ``Trainer``: the printed dicts (``{'loss': 2.31, 'grad_norm': 1.2,
  'learning_rate': 4.9e-05, 'epoch': 0.1}``, ``{'eval_loss': ...}``) and ``trainer_state.json``
  (its ``log_history`` list, which carries ``step``).
- CSV with a header, and JSON lines, with a ``step`` column and ``train_loss`` / ``val_loss``.

``step`` is the number the log prints (nanoGPT and ``main.log`` count from 0, llm.c's stdout
from 1); the printed Trainer dicts carry no step, so theirs is ``None``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.diagnosis.formats import (
    csv_header,
    fact_line,
    mapping_fields,
    parse_dict,
    record_line,
)
from scaleplan.errors import ScaleplanError

__all__ = ["LogFormat", "LogFormatError", "LogRecord", "LogWarning", "TrainingLog", "read_log"]

LogFormat = Literal["nanogpt", "llm.c", "hf-trainer", "hf-trainer-state", "csv", "jsonl"]

# Bounds. nanoGPT's default 600,000 iterations logged every step is about 35 MB; llm.c lines
# are ~110 bytes. A longer log is refused (tail it); a longer line is skipped and counted.
MAX_LOG_BYTES = 256 * 2**20
MAX_LINE_CHARS = 16_384
MAX_WARNING_TEXT = 200


class LogFormatError(ScaleplanError):
    """A log that cannot be read, or in which nothing is recognisable; names the file."""


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
    mfu_percent: float | None = Field(None, ge=0, allow_inf_nan=False)
    tokens_per_second: float | None = Field(None, ge=0, allow_inf_nan=False)
    learning_rate: float | None = Field(None, allow_inf_nan=False)
    epoch: float | None = Field(None, allow_inf_nan=False)


class LogWarning(BaseModel):
    """A known message found in the log: its code, first line (1-based), text and count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    line: int
    text: str
    count: int = 1


class TrainingLog(BaseModel):
    """What a training log says, read without executing anything.

    Examples:
        >>> log = read_log("train.log", text="number of parameters: 40.56M\\n"
        ...                "step 14500: train loss 3.6415, val loss 3.5696\\n")
        >>> log.format, log.reported_params, log.final_val_loss()
        ('nanogpt', 40560000, 3.5696)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    format: LogFormat
    records: tuple[LogRecord, ...]
    reported_params: int | None = Field(None, description="Parameter count the log prints.")
    reported_params_text: str | None = None
    reported_tokens_per_step: int | None = None
    warnings: tuple[LogWarning, ...] = ()
    lines_read: int = Field(0, description="Lines in the log, blank ones included.")
    lines_recognised: int = 0
    lines_skipped: int = Field(0, description="Non-blank lines that matched no known format.")
    lines_too_long: int = Field(0, description=f"Lines over {MAX_LINE_CHARS:,} characters.")
    lines_not_utf8: int = Field(0, description="Lines whose bad bytes were replaced.")
    unterminated_last_line: bool = Field(False, description="The log does not end in a newline "
                                         "(it may have been cut off mid-line).")

    def train_records(self) -> tuple[LogRecord, ...]:
        """Training-step records that carry a training loss.

        >>> log = read_log("train.log", text="step 0: train loss 10.9902, val loss 10.9887\\n"
        ...                "iter 1: loss 10.5012, time 4325.50ms, mfu 11.62%\\n"
        ...                "step 500: train loss 4.1100, val loss 4.0500\\n")
        >>> [(r.step, r.train_loss, r.mfu_percent) for r in log.train_records()]
        [(1, 10.5012, 11.62)]
        """
        return tuple(r for r in self.records if r.kind == "train" and r.train_loss is not None)

    def eval_records(self) -> tuple[LogRecord, ...]:
        """Evaluation records that carry a validation loss.

        >>> log = read_log("train.log", text="step 0: train loss 10.9902, val loss 10.9887\\n"
        ...                "iter 1: loss 10.5012, time 4325.50ms, mfu 11.62%\\n"
        ...                "step 500: train loss 4.1100, val loss 4.0500\\n")
        >>> [(r.step, r.val_loss) for r in log.eval_records()]
        [(0, 10.9887), (500, 4.05)]
        """
        return tuple(r for r in self.records if r.kind == "eval" and r.val_loss is not None)

    def last_step(self) -> int | None:
        """The largest step number in the log (llm.c's ``main.log`` here).

        >>> read_log("main.log", text="s:0 trl:10.9902\\ns:250 tel:4.0831\\n").last_step()
        250
        """
        steps = [r.step for r in self.records if r.step is not None]
        return max(steps) if steps else None

    def final_val_loss(self) -> float | None:
        """The last validation loss in the log (a CSV log here).

        >>> read_log("log.csv", text="step,train_loss,val_loss\\n0,10.99,10.98\\n"
        ...          "500,4.11,4.05\\n").final_val_loss()
        4.05
        """
        evals = self.eval_records()
        return evals[-1].val_loss if evals else None

    def warning(self, code: str) -> LogWarning | None:
        """The warning with this code, if the log contains it.

        >>> log = read_log("train.log", text="W0412 torch/_inductor/utils.py:1137] [0/0] "
        ...                "Not enough SMs to use max_autotune_gemm mode\\n"
        ...                "iter 0: loss 10.9902, time 4325.50ms, mfu 11.62%\\n")
        >>> log.warning("inductor-not-enough-sms").line, log.warning("nan-loss")
        (1, None)
        """
        return next((w for w in self.warnings if w.code == code), None)


# Messages worth knowing about, by code. The inductor one comes from is_big_gpu in
# torch/_inductor/utils.py (GPUs with fewer than 68 SMs skip max-autotune GEMM tuning).
_KNOWN_WARNINGS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("inductor-not-enough-sms", re.compile(r"Not enough SMs to use max_autotune_gemm")),
    ("cuda-out-of-memory", re.compile(r"CUDA out of memory|OutOfMemoryError")),
)


class _Reader:
    """Accumulates what the lines of one log say."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.formats: Counter[str] = Counter()
        self.warnings: dict[str, LogWarning] = {}
        self.params: tuple[int, str] | None = None
        self.tokens_per_step: int | None = None
        self.skipped = 0
        self.csv_header: list[str] | None = None

    def warn(self, code: str, line_no: int, text: str) -> None:
        seen = self.warnings.get(code)
        if seen is None:
            self.warnings[code] = LogWarning(code=code, line=line_no,
                                             text=text.strip()[:MAX_WARNING_TEXT])
        else:
            self.warnings[code] = seen.model_copy(update={"count": seen.count + 1})

    def add(self, fmt: str, line_no: int, text: str, **values: Any) -> None:
        """Store a record, moving non-finite values into a warning."""
        clean: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                self.warn("non-finite-loss" if "loss" in key else "non-finite-value", line_no,
                          text)
                continue
            clean[key] = value
        if clean.get("mfu_percent") is not None and clean["mfu_percent"] < 0:
            del clean["mfu_percent"]  # nanoGPT prints -100.00% before it has measured MFU
        for key in ("time_ms", "tokens_per_second"):
            if clean.get(key) is not None and clean[key] < 0:
                del clean[key]
        self.formats[fmt] += 1
        if any(clean.get(k) is not None for k in ("train_loss", "val_loss")):
            self.records.append(LogRecord(**clean))

    def line(self, line_no: int, text: str) -> None:
        """Read one line: a known warning, a record, a fact about the run, or a skipped line."""
        stripped = text.strip()
        if not stripped:
            return
        known = self._known_warnings(line_no, stripped)
        if self._record(line_no, stripped):
            return
        fact = fact_line(stripped)
        if fact is not None:
            setattr(self, fact.name, fact.value)  # params or tokens_per_step
            self.formats[fact.format] += 1
        elif not known:
            self.skipped += 1

    def _known_warnings(self, line_no: int, text: str) -> bool:
        """Count each known warning the line holds; whether it held one."""
        known = False
        for code, pattern in _KNOWN_WARNINGS:
            if pattern.search(text):
                self.warn(code, line_no, text)
                known = True
        return known

    def _record(self, line_no: int, text: str) -> bool:
        """Store the line if it is a record (once a CSV header was seen, only CSV rows are), or
        take it as the CSV header; whether it was either."""
        if self.csv_header is not None:
            return self._csv_row(line_no, text)
        found = record_line(text, self._last_train_step)
        if found is not None:
            fmt, fields = found
            self.add(fmt, line_no, text, **fields)
            return True
        if text.startswith("{") or "{'" in text:
            return self._dict_line(line_no, text)
        return self._header(text)

    def _last_train_step(self) -> int:
        steps = [r.step for r in self.records if r.kind == "train" and r.step is not None]
        return steps[-1] if steps else 0

    def _dict_line(self, line_no: int, text: str) -> bool:
        parsed = parse_dict(text)
        if parsed is None:
            return False
        fmt, data = parsed
        if "train_runtime" in data:  # the Trainer's end-of-run summary, an average over the run
            self.formats[fmt] += 1
            return True
        return self.mapping(fmt, line_no, text, data)

    def mapping(self, fmt: str, line_no: int, text: str, data: dict[Any, Any]) -> bool:
        """Store the record a mapping (a dict line, a CSV row) gives; whether it gave one."""
        fields = mapping_fields(data)
        if fields is None:
            return False
        self.add(fmt, line_no, text, **fields)
        return True

    def _header(self, text: str) -> bool:
        names = csv_header(text)
        if names is None:
            return False
        self.csv_header = names
        self.formats["csv"] += 1
        return True

    def _csv_row(self, line_no: int, text: str) -> bool:
        assert self.csv_header is not None
        delimiter = "\t" if "\t" in text else ","
        cells = next(csv.reader([text], delimiter=delimiter), [])
        if len(cells) != len(self.csv_header):
            return False
        return self.mapping("csv", line_no, text, dict(zip(self.csv_header, cells, strict=True)))


# ----------------------------------------------------------------------------- reading


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_LOG_BYTES:
            raise LogFormatError(f"{path}: the log is {size:,} bytes, more than "
                                 f"{MAX_LOG_BYTES:,}; pass its tail (tail -n 200000)")
        return p.read_bytes()
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot read the log: {exc.strerror}") from None


def _trainer_state(reader: _Reader, data: Any) -> bool:
    """``trainer_state.json``: a dict whose ``log_history`` is a list of dicts."""
    if not isinstance(data, dict) or not isinstance(data.get("log_history"), list):
        return False
    for i, entry in enumerate(data["log_history"], start=1):
        if isinstance(entry, dict) and "train_runtime" not in entry:
            reader.mapping("hf-trainer-state", i, json.dumps(entry)[:MAX_WARNING_TEXT], entry)
    reader.formats["hf-trainer-state"] += 1
    return True


def _json_document(raw: bytes) -> Any:
    """The log read as one JSON document when it starts like one (``trainer_state.json``), else
    None."""
    if raw.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _read_lines(reader: _Reader, lines: list[bytes]) -> tuple[int, int]:
    """Give ``reader`` each line, decoded; (lines too long to read, lines not UTF-8)."""
    too_long = not_utf8 = 0
    for line_no, line_bytes in enumerate(lines, start=1):
        if len(line_bytes) > MAX_LINE_CHARS:
            too_long += 1
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            line = line_bytes.decode("utf-8", errors="replace")
            not_utf8 += 1
        reader.line(line_no, line)
    return too_long, not_utf8


def read_log(path: str | os.PathLike[str], *, text: str | bytes | None = None) -> TrainingLog:
    """Read a training log (nanoGPT, llm.c, Hugging Face Trainer, CSV or JSONL).

    The format is detected from the lines. Unknown lines are skipped and counted; bytes that
    are not UTF-8 are replaced and the lines counted; lines longer than ``MAX_LINE_CHARS`` are
    skipped and counted. A log with no recognisable line raises `LogFormatError`.
    Pass ``text`` to read a string instead of the file (``path`` then only names it).

    >>> log = read_log("llmc.txt", text="step    1/74: train loss 4.367857 (224.275024 ms, "
    ...                "36563 tok/s)\\nval loss 4.123\\n")
    >>> log.format, log.records[0].tokens_per_second, log.final_val_loss()
    ('llm.c', 36563.0, 4.123)
    """
    source = str(path)
    raw = _read_bytes(path) if text is None else text
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    if len(raw) > MAX_LOG_BYTES:
        raise LogFormatError(f"{source}: the log is {len(raw):,} bytes, more than "
                             f"{MAX_LOG_BYTES:,}; pass its tail (tail -n 200000)")
    reader = _Reader()
    lines = raw.splitlines()
    not_utf8 = too_long = 0
    if not _trainer_state(reader, _json_document(raw)):
        too_long, not_utf8 = _read_lines(reader, lines)
    if not reader.records and reader.params is None:
        raise LogFormatError(
            f"{source}: no loss or parameter count found in {len(lines):,} lines; expected "
            "nanoGPT ('iter N: loss X, ...', 'step N: train loss X, val loss Y'), llm.c "
            "('step N/M | loss X ...'), Hugging Face Trainer ({'loss': ...} or "
            "trainer_state.json), or CSV / JSON lines with step and train_loss / val_loss")
    fmt = cast(LogFormat, reader.formats.most_common(1)[0][0])
    params = reader.params
    return TrainingLog(
        source=source, format=fmt, records=tuple(reader.records),
        reported_params=params[0] if params else None,
        reported_params_text=params[1] if params else None,
        reported_tokens_per_step=reader.tokens_per_step,
        warnings=tuple(reader.warnings.values()), lines_read=len(lines),
        lines_recognised=sum(reader.formats.values()), lines_skipped=reader.skipped,
        lines_too_long=too_long, lines_not_utf8=not_utf8,
        unterminated_last_line=bool(raw) and not raw.endswith((b"\n", b"\r")),
    )
