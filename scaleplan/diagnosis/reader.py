"""The line-by-line reader of a log: `LogReader` takes each line (`LogReader.line`) and keeps
what it says: the records (in a `scaleplan.diagnosis.records.RecordStore`), the known warnings,
the facts about the run (its parameter count, its tokens per step and each change of them), and
counts of the lines it could not read. `scaleplan.diagnosis.logs.read_log` hands it the lines
of a log and builds the `TrainingLog` from it.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from typing import Any

from scaleplan.diagnosis.blocks import iter_record
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
)
from scaleplan.diagnosis.records import MAX_MFU_PERCENT, LogWarning, RecordStore, compact_record

__all__ = ["INLINE_VAL_ROUNDING", "MAX_BATCH_SIZE_CHANGES", "MAX_WARNING_TEXT", "LogReader"]

MAX_WARNING_TEXT = 200
MAX_BATCH_SIZE_CHANGES = 100  # entries of TrainingLog.tokens_per_step_changes
INLINE_VAL_ROUNDING = 0.0005 + 1e-9  # litgpt prints the last validation loss with 3 decimals

# Fields a log prints as -1 or -100.00% until it has measured them: a negative one is left out.
_UNMEASURED_WHEN_NEGATIVE = frozenset({"mfu_percent", "time_ms", "tokens_per_second"})
# The warning a non-finite value gives, by field (any other: "non-finite-value"); the formats
# of dict lines, whose steps are counted when the log prints none.
_NON_FINITE_CODES = {"train_loss": "non-finite-loss", "val_loss": "non-finite-loss",
                     "grad_norm": "non-finite-grad-norm"}
_DICT_FORMATS = frozenset({"hf-trainer", "jsonl"})


class LogReader:
    """Accumulates what the lines of one log say: its records and little else (no lines)."""

    def __init__(self) -> None:
        self.records = RecordStore(parse_line=iter_record)
        self.formats: Counter[str] = Counter()
        # code: [first line, its text, lines, its step, last line]
        self.warnings: dict[str, list[Any]] = {}
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
        self.inline_val: float | None = None  # the validation loss training lines last printed

    def warn(self, code: str, line_no: int, text: str, step: int | None = None) -> None:
        """Count a warning: the lines that hold it (a line with two NaNs is one line)."""
        seen = self.warnings.get(code)
        if seen is None:
            self.warnings[code] = [line_no, text.strip()[:MAX_WARNING_TEXT], 1, step, line_no]
        elif seen[4] != line_no:
            seen[2] += 1
            seen[4] = line_no

    def log_warnings(self) -> tuple[LogWarning, ...]:
        return tuple(LogWarning(code=code, line=line, text=text, count=count, step=step)
                     for code, (line, text, count, step, _) in self.warnings.items())

    def add(self, fmt: str, line_no: int, text: str, values: dict[str, Any]) -> None:
        """Store a record, moving non-finite and implausible values into a warning."""
        self.formats[fmt] += 1
        values = self._checked(line_no, text, values)
        if values["kind"] == "train" and values.get("step") is not None:
            self.last_train_step = values["step"]  # a NaN loss's step too
            self.train_seen = True
        if values.get("train_loss") is None and values.get("val_loss") is None:
            return
        if values["kind"] == "train" and values.get("val_loss") is not None:
            self._inline_val(values)
            return
        self.records.append(compact_record(values))
        if values["kind"] == "eval" and values.get("val_loss") is not None:
            self.inline_val = values["val_loss"]

    def _checked(self, line_no: int, text: str, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` less the non-finite and implausible ones (each a warning)."""
        for value in values.values():  # most values are in [0, MAX_MFU_PERCENT]: kept as they are
            if value.__class__ is float and not 0.0 <= value <= MAX_MFU_PERCENT:
                return {k: v for k, v in values.items()
                        if v.__class__ is not float or 0.0 <= v <= MAX_MFU_PERCENT
                        or self._acceptable(k, v, line_no, text, values.get("step"))}
        return values

    def _inline_val(self, values: dict[str, Any]) -> None:
        """A training line that also prints the last validation loss (litgpt's ``loss train:
        2.846, val: 2.861``): the training record, and an evaluation where the value changes
        (it is printed again on every line until the next evaluation)."""
        val = values.pop("val_loss")
        # the same evaluation as the last one read, printed with fewer decimals (10.712 for
        # the "val loss 10.7123" line before it), is no new one
        if self.inline_val is None or abs(val - self.inline_val) > INLINE_VAL_ROUNDING:
            self.inline_val = val
            self.records.append(compact_record({"kind": "eval", "step": values.get("step"),
                                                "val_loss": val}))
        if values.get("train_loss") is not None:
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
