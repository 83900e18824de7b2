"""Read training logs as data: nanoGPT, llm.c, Hugging Face Trainer, CSV and JSONL.

`read_log` turns a log into a `TrainingLog`: the losses, step times and MFU it reports, the
parameter count it prints, the warnings it contains, and how many lines it could not read.
Nothing in a log is executed: lines are matched with regular expressions, dict lines are read
with `json` or `ast.literal_eval` (literals only), and every size is bounded.

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

import ast
import csv
import json
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

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
        """The largest step number in the log.

        >>> log = read_log("train.log", text="step 0: train loss 10.9902, val loss 10.9887\\n"
        ...                "iter 1: loss 10.5012, time 4325.50ms, mfu 11.62%\\n"
        ...                "step 500: train loss 4.1100, val loss 4.0500\\n")
        >>> log.last_step()
        500
        """
        steps = [r.step for r in self.records if r.step is not None]
        return max(steps) if steps else None

    def final_val_loss(self) -> float | None:
        """The last validation loss in the log.

        >>> log = read_log("train.log", text="step 0: train loss 10.9902, val loss 10.9887\\n"
        ...                "iter 1: loss 10.5012, time 4325.50ms, mfu 11.62%\\n"
        ...                "step 500: train loss 4.1100, val loss 4.0500\\n")
        >>> log.final_val_loss()
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


# ----------------------------------------------------------------------------- line formats

_F = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|-nan))"
_STEP = r"(\d{1,15})"

_NANOGPT_EVAL = re.compile(rf"^step {_STEP}: train loss {_F}, val loss {_F}")
_NANOGPT_ITER = re.compile(
    rf"^iter {_STEP}: loss {_F}(?:, time {_F}\s*ms)?(?:, mfu {_F}\s*%)?")
_NANOGPT_PARAMS = re.compile(r"number of parameters: (\d{1,9}(?:\.\d+)?)M\b")
_NANOGPT_TOKENS = re.compile(r"tokens per iteration will be: ([\d,]{1,30})")

_LLMC_STEP = re.compile(
    rf"^step\s+{_STEP}(?:/(\d{{1,15}}))?\s*(?::|\|)\s*(?:train )?loss\s+{_F}")
_LLMC_MS = re.compile(rf"(?:\(took |\(|\|\s*\(?){_F} ms\b")
_LLMC_TOKS = re.compile(rf"{_F} tok/s")
_LLMC_MFU = re.compile(rf"{_F}% bf16 MFU")
_LLMC_LR = re.compile(rf"\|\s*lr {_F}")
_LLMC_VAL = re.compile(rf"^val loss {_F}\s*$")
_LLMC_MAINLOG = re.compile(rf"^s:{_STEP} (trl|tel):{_F}(?: lr:{_F})?")
_LLMC_PARAMS = re.compile(r"^(?:\| )?num_parameters:?\s*\|?\s*(\d{1,18})\b")
_LLMC_BATCH = re.compile(r"total_batch_size=(\d{1,18})")

# Messages worth knowing about, by code. The inductor one comes from is_big_gpu in
# torch/_inductor/utils.py (GPUs with fewer than 68 SMs skip max-autotune GEMM tuning).
_KNOWN_WARNINGS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("inductor-not-enough-sms", re.compile(r"Not enough SMs to use max_autotune_gemm")),
    ("cuda-out-of-memory", re.compile(r"CUDA out of memory|OutOfMemoryError")),
)

_STEP_KEYS = ("step", "iter", "iteration", "global_step")
_TRAIN_KEYS = ("train_loss", "loss", "train/loss")
_VAL_KEYS = ("val_loss", "eval_loss", "val/loss", "valid_loss", "validation_loss")
_TIME_KEYS = ("time_ms", "dt_ms", "step_time_ms")
_MFU_KEYS = ("mfu_percent", "mfu")
_TOKS_KEYS = ("tokens_per_second", "tok/s", "tokens_per_sec")
_LR_KEYS = ("learning_rate", "lr")


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
        stripped = text.strip()
        if not stripped:
            return
        known = False
        for code, pattern in _KNOWN_WARNINGS:
            if pattern.search(stripped):
                self.warn(code, line_no, stripped)
                known = True
        if self.csv_header is not None:
            if self._csv_row(line_no, stripped):
                return
        elif m := _NANOGPT_EVAL.match(stripped):
            self.add("nanogpt", line_no, stripped, kind="eval", step=int(m[1]),
                     train_loss=float(m[2]), val_loss=float(m[3]))
            return
        elif m := _NANOGPT_ITER.match(stripped):
            self.add("nanogpt", line_no, stripped, kind="train", step=int(m[1]),
                     train_loss=float(m[2]), time_ms=_opt(m[3]), mfu_percent=_opt(m[4]))
            return
        elif m := _LLMC_STEP.match(stripped):
            ms, toks = _LLMC_MS.search(stripped), _LLMC_TOKS.search(stripped)
            mfu, lr = _LLMC_MFU.search(stripped), _LLMC_LR.search(stripped)
            self.add("llm.c", line_no, stripped, kind="train", step=int(m[1]),
                     train_loss=float(m[3]), time_ms=_opt(ms and ms[1]),
                     tokens_per_second=_opt(toks and toks[1]),
                     mfu_percent=_opt(mfu and mfu[1]), learning_rate=_opt(lr and lr[1]))
            return
        elif m := _LLMC_VAL.match(stripped):
            # printed before the step it precedes: it belongs to the last step printed
            steps = [r.step for r in self.records if r.kind == "train" and r.step is not None]
            self.add("llm.c", line_no, stripped, kind="eval", step=steps[-1] if steps else 0,
                     val_loss=float(m[1]))
            return
        elif m := _LLMC_MAINLOG.match(stripped):
            is_train = m[2] == "trl"
            self.add("llm.c", line_no, stripped, kind="train" if is_train else "eval",
                     step=int(m[1]), learning_rate=_opt(m[4]),
                     **{"train_loss" if is_train else "val_loss": float(m[3])})
            return
        elif stripped.startswith("{") or "{'" in stripped:
            if self._dict_line(line_no, stripped):
                return
        elif self._header(stripped):
            return
        if m := _NANOGPT_PARAMS.search(stripped):
            self.params = (round(float(m[1]) * 1e6), m[0])
            self.formats["nanogpt"] += 1
        elif m := _NANOGPT_TOKENS.search(stripped):
            self.tokens_per_step = int(m[1].replace(",", "") or 0) or None
            self.formats["nanogpt"] += 1
        elif m := _LLMC_PARAMS.match(stripped):
            self.params = (int(m[1]), m[0])
            self.formats["llm.c"] += 1
        elif m := _LLMC_BATCH.search(stripped):
            self.tokens_per_step = int(m[1]) or None
            self.formats["llm.c"] += 1
        elif not known:
            self.skipped += 1

    def _dict_line(self, line_no: int, text: str) -> bool:
        body = text[text.find("{"): text.rfind("}") + 1]
        fmt = "jsonl"
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            fmt = "hf-trainer"
            try:
                with warnings.catch_warnings():  # e.g. SyntaxWarning for '\d' in a string
                    warnings.simplefilter("ignore")
                    data = ast.literal_eval(body)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return False
        if not isinstance(data, dict):
            return False
        if "train_runtime" in data:  # the Trainer's end-of-run summary, an average over the run
            self.formats[fmt] += 1
            return True
        return self._mapping(fmt, line_no, text, data)

    def _mapping(self, fmt: str, line_no: int, text: str, data: dict[Any, Any]) -> bool:
        step = _pick(data, _STEP_KEYS, whole=True)
        train, val = _pick(data, _TRAIN_KEYS), _pick(data, _VAL_KEYS)
        if train is None and val is None:
            return False
        self.add(fmt, line_no, text, kind="eval" if val is not None else "train",
                 step=step, train_loss=train, val_loss=val,
                 time_ms=_pick(data, _TIME_KEYS), mfu_percent=_pick(data, _MFU_KEYS),
                 tokens_per_second=_pick(data, _TOKS_KEYS),
                 learning_rate=_pick(data, _LR_KEYS), epoch=_pick(data, ("epoch",)))
        return True

    def _header(self, text: str) -> bool:
        if "," not in text and "\t" not in text:
            return False
        names = [c.strip().lower() for c in next(csv.reader([text],
                                                            delimiter="\t" if "\t" in text
                                                            else ","))]
        if any(k in names for k in _STEP_KEYS) and any(k in names for k in
                                                       _TRAIN_KEYS + _VAL_KEYS):
            self.csv_header = names
            self.formats["csv"] += 1
            return True
        return False

    def _csv_row(self, line_no: int, text: str) -> bool:
        assert self.csv_header is not None
        delimiter = "\t" if "\t" in text else ","
        cells = next(csv.reader([text], delimiter=delimiter), [])
        if len(cells) != len(self.csv_header):
            return False
        return self._mapping("csv", line_no, text, dict(zip(self.csv_header, cells, strict=True)))


def _opt(text: str | None) -> float | None:
    return None if text is None else float(text)


def _pick(data: dict[Any, Any], keys: tuple[str, ...], *, whole: bool = False) -> Any:
    """The first of ``keys`` in ``data`` as a number (an int when ``whole``), else None."""
    for key in keys:
        value = data.get(key)
        if value is None or isinstance(value, bool) or value == "":
            continue
        try:
            number = float(value) if not isinstance(value, int) else value
        except (TypeError, ValueError, OverflowError):
            continue
        if whole:
            if isinstance(number, float) and not number.is_integer():
                continue
            try:
                integer = int(number)
            except (OverflowError, ValueError):
                continue
            return integer if 0 <= integer < 10**15 else None
        try:
            return float(number)
        except OverflowError:
            return math.inf
    return None


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
            reader._mapping("hf-trainer-state", i, json.dumps(entry)[:MAX_WARNING_TEXT], entry)
    reader.formats["hf-trainer-state"] += 1
    return True


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
    head = raw.lstrip()[:1]
    state: Any = None
    if head in (b"{", b"["):
        try:
            state = json.loads(raw)
        except (ValueError, RecursionError):
            state = None
    if not _trainer_state(reader, state):
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
