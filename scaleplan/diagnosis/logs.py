"""Read training logs as data: nanoGPT, llm.c, Hugging Face Trainer, CSV and JSONL.

`read_log` turns a log into a `TrainingLog`: the losses, step times and MFU it reports, the
parameter count it prints, the warnings it contains, and how many lines it could not read.
Nothing in a log is executed: lines are matched with regular expressions (each linear in the
line), dict lines are read with `json` or `ast.literal_eval` (literals only), and every size is
bounded. What each kind of line looks like, and the print statements the formats come from,
is in `scaleplan.diagnosis.formats`. A log is read line by line, streamed
(`scaleplan.diagnosis.stream`): memory is the records kept, one chunk and one line.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import Counter
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.diagnosis.blocks import iter_record, read_blocks
from scaleplan.diagnosis.formats import (
    ANY_KNOWN_WARNING,
    KNOWN_WARNINGS,
    NANOGPT_ITER_LINE,
    Fact,
    csv_header,
    fact_line,
    mapping_fields,
    parse_dict,
    record_line,
    strip_ansi,
    trainer_state_entries,
)
from scaleplan.diagnosis.records import (
    MAX_KEPT_RECORDS,
    MAX_MFU_PERCENT,
    LogRecord,
    LogWarning,
    RecordStore,
    compact_record,
)
from scaleplan.diagnosis.stream import (
    MAX_LINE_CHARS,
    MAX_LOG_BYTES,
    Chunks,
    LogFormatError,
    json_document,
    open_log,
    source_name,
    text_contents,
)

__all__ = ["MAX_KEPT_RECORDS", "MAX_LINE_CHARS", "MAX_LOG_BYTES", "MAX_MFU_PERCENT", "LogFormat",
           "LogFormatError",
           "LogRecord", "LogWarning", "TrainingLog", "read_log"]

LogFormat = Literal["nanogpt", "llm.c", "modded-nanogpt", "build-nanogpt", "litgpt", "llama2.c",
                    "torchtitan", "hf-trainer", "hf-trainer-state", "csv", "jsonl"]

MAX_WARNING_TEXT = 200
MAX_BATCH_SIZE_CHANGES = 100  # entries of TrainingLog.tokens_per_step_changes


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
    tokens_per_step_changes: tuple[tuple[int, int], ...] = Field(
        (), description="(step, tokens per step) each time the log states a batch size other "
        "than the one before (a resumed run printing another), the first included.")
    steps_counted: bool = Field(False, description="The log prints no step numbers (the "
                                "Trainer's console dicts): steps are the records counted.")
    train_records_read: int = Field(0, description="Training records in the log; `records` "
                                    "keeps at most MAX_KEPT_RECORDS of them, evenly spaced.")
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


# Fields a log prints as -1 or -100.00% until it has measured them: a negative one is left out.
_UNMEASURED_WHEN_NEGATIVE = frozenset({"mfu_percent", "time_ms", "tokens_per_second"})
# The warning a non-finite value gives, by field (any other: "non-finite-value"); the formats
# of dict lines, whose steps are counted when the log prints none.
_NON_FINITE_CODES = {"train_loss": "non-finite-loss", "val_loss": "non-finite-loss",
                     "grad_norm": "non-finite-grad-norm"}
_DICT_FORMATS = frozenset({"hf-trainer", "jsonl"})


class _Reader:
    """Accumulates what the lines of one log say: its records and little else (no lines)."""

    def __init__(self) -> None:
        self.records = RecordStore(parse_line=iter_record)
        self.formats: Counter[str] = Counter()
        self.warnings: dict[str, list[Any]] = {}  # code: [first line, text, count, step]
        self.params: tuple[int, str] | None = None
        self.tokens_per_step: int | None = None  # the first one stated
        self.tokens_per_step_changes: list[tuple[int, int]] = []  # (step, tokens per step)
        self.skipped = 0
        self.csv_header: list[str] | None = None
        self.last_train_step = 0  # the step of the last training line (0 before any)
        self.train_seen = False  # a training line with a step was read (the fast path's: seen)
        self.last_step = lambda: (self.last_train_step
                                  if self.train_seen or self.records.seen["train"] else None)
        self.dicts_counted, self.dict_steps_printed, self.steps_counted = 0, False, False

    def warn(self, code: str, line_no: int, text: str, step: int | None = None) -> None:
        seen = self.warnings.get(code)
        if seen is None:
            self.warnings[code] = [line_no, text.strip()[:MAX_WARNING_TEXT], 1, step]
        else:
            seen[2] += 1

    def log_warnings(self) -> tuple[LogWarning, ...]:
        return tuple(LogWarning(code=code, line=line, text=text, count=count, step=step)
                     for code, (line, text, count, step) in self.warnings.items())

    def add(self, fmt: str, line_no: int, text: str, values: dict[str, Any]) -> None:
        """Store a record, moving non-finite and implausible values into a warning."""
        self.formats[fmt] += 1
        for value in values.values():  # most values are in [0, MAX_MFU_PERCENT]: kept as they are
            if value.__class__ is float and not 0.0 <= value <= MAX_MFU_PERCENT:
                values = {k: v for k, v in values.items()
                          if v.__class__ is not float or 0.0 <= v <= MAX_MFU_PERCENT
                          or self._acceptable(k, v, line_no, text, values.get("step"))}
                break
        if values["kind"] == "train" and values.get("step") is not None:
            self.last_train_step = values["step"]  # a NaN loss's step too
            self.train_seen = True
        if values.get("train_loss") is None and values.get("val_loss") is None:
            return
        self.records.append(compact_record(values))

    def fast_line(self, line_no: int, raw: bytes) -> bool:
        """A whole nanoGPT ``iter`` line (most lines of a nanoGPT log) read from its bytes, as
        `line` would read it, without decoding it or trying the other formats; False for any
        other line, or an MFU over the bound (`line` reads those)."""
        m = NANOGPT_ITER_LINE.match(raw)
        if m is None or self.csv_header is not None:
            return False
        mfu = float(m[4])
        if mfu > MAX_MFU_PERCENT:
            return False
        self.last_train_step = step = int(m[1])
        self.records.append(compact_record({
            "kind": "train", "step": step, "train_loss": float(m[2]), "time_ms": float(m[3]),
            "mfu_percent": mfu if mfu >= 0 else None}))
        self.formats["nanogpt"] += 1
        return True

    def _acceptable(self, key: str, value: float, line_no: int, text: str,
                    step: int | None) -> bool:
        """Whether a value outside [0, MAX_MFU_PERCENT] is kept; a warning when it is not."""
        if not math.isfinite(value):
            self.warn(_NON_FINITE_CODES.get(key, "non-finite-value"), line_no, text, step)
            return False
        if value < 0:  # nanoGPT prints -100.00% before it has measured MFU
            return key not in _UNMEASURED_WHEN_NEGATIVE and key != "grad_norm"
        if key == "mfu_percent":
            self.warn("implausible-value", line_no, text)
            return False
        return True

    def line(self, line_no: int, text: str) -> None:
        """Read one line: a known warning, a record, a fact about the run, or a skipped line."""
        stripped = (strip_ansi(text) if "\x1b" in text else text).strip()
        if not stripped:
            return
        known = ANY_KNOWN_WARNING.search(stripped) is not None and \
            self._known_warnings(line_no, stripped)
        if self._record(line_no, stripped):
            return
        fact = fact_line(stripped)
        if fact is not None:
            self._fact(fact)
        elif not known:
            self.skipped += 1

    def _fact(self, fact: Fact) -> None:
        """Keep a fact: the parameter count, or the tokens per step (the first one stated, and
        each change, with the last training step read before it)."""
        self.formats[fact.format] += 1
        if fact.name == "params":
            self.params = fact.value
        elif (tokens := fact.value) is not None:
            self.tokens_per_step = self.tokens_per_step or tokens
            changes = self.tokens_per_step_changes
            if (not changes or changes[-1][1] != tokens) and len(changes) < MAX_BATCH_SIZE_CHANGES:
                changes.append((self.last_train_step, tokens))

    def _known_warnings(self, line_no: int, text: str) -> bool:
        """Count each known warning the line holds; whether it held one."""
        known = False
        for code, pattern in KNOWN_WARNINGS:
            if pattern.search(text):
                self.warn(code, line_no, text)
                known = True
        return known

    def _record(self, line_no: int, text: str) -> bool:
        """Store the line if it is a record (once a CSV header was seen, only CSV rows are), or
        take it as the CSV header; whether it was either."""
        if self.csv_header is not None:
            return self._csv_row(line_no, text)
        found = record_line(text, self.last_step)
        if found is not None:
            fmt, fields = found
            self.add(fmt, line_no, text, fields)
            return True
        if text.startswith("{") or "{'" in text:
            return self._dict_line(line_no, text)
        return self._header(text)

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
        if fmt in _DICT_FORMATS:
            self._count_step(fields)
        self.add(fmt, line_no, text, fields)
        return True

    def _count_step(self, fields: dict[str, Any]) -> None:
        """Number a dict without a step (the Trainer's console dicts): the n-th training dict
        is step n, an evaluation takes the count so far; while the log printed no step."""
        if fields["step"] is not None:
            self.dict_steps_printed = True
            return
        if self.dict_steps_printed or not self.formats.keys() <= _DICT_FORMATS:
            return
        if fields["kind"] == "train":
            self.dicts_counted += 1
        fields["step"] = self.dicts_counted
        self.steps_counted = True

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


def read_log(path: str | os.PathLike[str] | None = None, *,
             text: str | bytes | None = None) -> TrainingLog:
    """Read a training log (nanoGPT, llm.c, Hugging Face Trainer, CSV or JSONL).

    The format is detected from the lines. Unknown lines are skipped and counted; bytes that
    are not UTF-8 are replaced and the lines counted; lines longer than ``MAX_LINE_CHARS`` are
    skipped and counted. A log with no recognisable line raises `LogFormatError`, and so does
    one longer than ``MAX_LOG_BYTES`` (at most that many bytes are read: an endless file such
    as ``/dev/zero`` is refused, not waited on). The file is read as a stream of lines: memory
    is the records kept, not the size of the file.
    Pass ``text`` to read a string instead of a file (``path``, optional then, only names it);
    ``path="-"`` reads standard input.

    >>> log = read_log("llmc.txt", text="step    1/74: train loss 4.367857 (224.275024 ms, "
    ...                "36563 tok/s)\\nval loss 4.123\\n")
    >>> log.format, log.records[0].tokens_per_second, log.final_val_loss()
    ('llm.c', 36563.0, 4.123)
    """
    if text is not None:
        source = "<text>" if path is None else source_name(path)
        return _read(_Reader(), Chunks.of_text(source, text_contents(text)))
    if path == "-":  # standard input, as a stream: `train.py | scaleplan diagnose -`
        return _read(_Reader(), Chunks("<stdin>", sys.stdin.buffer.read))
    with open_log(source_name(path), cast("str | os.PathLike[str]", path)) as stream:
        return _read(_Reader(), Chunks(source_name(path), stream.read))


def _read(reader: _Reader, chunks: Chunks) -> TrainingLog:
    """The `TrainingLog` of the log in ``chunks``: one JSON document, or lines."""
    document, rest = json_document(chunks)
    if (entries := trainer_state_entries(document)) is not None:
        for i, entry in entries:
            reader.mapping("hf-trainer-state", i, json.dumps(entry)[:MAX_WARNING_TEXT], entry)
        reader.formats["hf-trainer-state"] += 1
        lines_read, too_long, not_utf8 = sum(len(c.splitlines()) for c in rest), 0, 0
    else:
        lines_read, too_long, not_utf8 = read_blocks(reader, chunks, rest)
    records = reader.records.records()
    if not records and reader.params is None:
        raise LogFormatError(
            f"{chunks.source}: no loss or parameter count found in {lines_read:,} lines; "
            "expected nanoGPT ('iter N: loss X, ...', 'step N: train loss X, val loss Y'), "
            "llm.c ('step N/M | loss X ...'), Hugging Face Trainer ({'loss': ...} or "
            "trainer_state.json), or CSV / JSON lines with step and train_loss / val_loss")
    fmt = cast(LogFormat, reader.formats.most_common(1)[0][0])
    params = reader.params
    return TrainingLog(
        source=chunks.source, format=fmt, records=records,
        reported_params=params[0] if params else None,
        reported_params_text=params[1] if params else None,
        reported_tokens_per_step=reader.tokens_per_step,
        tokens_per_step_changes=tuple(reader.tokens_per_step_changes),
        steps_counted=reader.steps_counted,
        warnings=reader.log_warnings(), lines_read=lines_read,
        lines_recognised=sum(reader.formats.values()), lines_skipped=reader.skipped,
        lines_too_long=too_long, lines_not_utf8=not_utf8,
        unterminated_last_line=chunks.size > 0 and not chunks.ends_in_newline,
        train_records_read=reader.records.seen["train"],
    )
