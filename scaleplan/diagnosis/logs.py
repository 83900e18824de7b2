"""Read training logs as data: nanoGPT, llm.c, modded-nanogpt, build-nanogpt, litgpt,
llama2.c, torchtitan, Hugging Face Trainer (printed dicts and trainer_state.json), CSV and JSONL.

`read_log` turns a log into a `TrainingLog`: the losses, step times and MFU it reports, the
parameter count it prints, the warnings it contains, and how many lines it could not read.
Nothing in a log is executed: lines are matched with regular expressions (each linear in the
line), dict lines are read as literals only, and every size is bounded. What each kind of line
looks like, and the print statements the formats come from, is in
`scaleplan.diagnosis.formats`. A log is streamed (`scaleplan.diagnosis.stream`) and read block
by block (`scaleplan.diagnosis.blocks`): memory is the records kept (at most
`MAX_KEPT_RECORDS` of each kind) and one chunk, whatever the length of the log.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.diagnosis.blocks import read_blocks
from scaleplan.diagnosis.formats import trainer_state_entries
from scaleplan.diagnosis.reader import MAX_WARNING_TEXT, LogReader
from scaleplan.diagnosis.records import (
    MAX_KEPT_RECORDS,
    MAX_MFU_PERCENT,
    LogRecord,
    LogWarning,
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



class TrainingLog(BaseModel):
    """What a training log says, read without executing anything.

    Examples:
        >>> log = read_log("train.log", text="number of parameters: 40.56M\\n"
        ...                "step 14500: train loss 3.6415, val loss 3.5696\\n")
        >>> log.format, log.reported_params, log.final_val_loss()
        ('nanogpt', 40560000, 3.5696)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="The file read (or the name given with ``text=``).")
    format: LogFormat = Field(description="The log format recognised (e.g. 'nanogpt', "
                              "'llm.c', 'hf-trainer').")
    records: tuple[LogRecord, ...] = Field(description="Training and validation records in "
                                           "step order (see `train_records_read`).")
    reported_params: int | None = Field(None, description="Parameter count the log prints.")
    reported_params_text: str | None = Field(None, description="The log's own words for "
                                             "the parameter count, e.g. '40.56M'.")
    reported_tokens_per_step: int | None = Field(None, description="Tokens per step the log "
                                                 "prints, if it prints one.")
    tokens_per_step_changes: tuple[tuple[int, int], ...] = Field(
        (), description="(step, tokens per step) each time the log states a batch size other "
        "than the one before (a resumed run printing another), the first included.")
    steps_counted: bool = Field(False, description="The log prints no step numbers (the "
                                "Trainer's console dicts): steps are the records counted.")
    train_records_read: int = Field(0, description="Training records in the log; `records` "
                                    "keeps at most MAX_KEPT_RECORDS of them, evenly spaced.")
    warnings: tuple[LogWarning, ...] = Field((), description="What the reader noticed "
                                             "about the log itself (skipped lines, restarts).")
    lines_read: int = Field(0, description="Lines in the log, blank ones included.")
    lines_recognised: int = Field(0, description="Lines read as a record or a fact.")
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


# ----------------------------------------------------------------------------- reading


def read_log(path: str | os.PathLike[str] | None = None, *,
             text: str | bytes | None = None) -> TrainingLog:
    """Read a training log (any format of `scaleplan.diagnosis.formats`: nanoGPT, llm.c,
    modded-nanogpt, build-nanogpt, litgpt, llama2.c, torchtitan, Hugging Face Trainer, CSV or
    JSONL).

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
        return _read(LogReader(), Chunks.of_text(source, text_contents(text)))
    if path == "-":  # standard input, as a stream: `train.py | scaleplan diagnose -`
        return _read(LogReader(), Chunks("<stdin>", sys.stdin.buffer.read))
    with open_log(source_name(path), cast("str | os.PathLike[str]", path)) as stream:
        return _read(LogReader(), Chunks(source_name(path), stream.read))


def _read(reader: LogReader, chunks: Chunks) -> TrainingLog:
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
    if not records and reader.params is None and "non-finite-loss" not in reader.warnings:
        raise LogFormatError(
            f"{chunks.source}: no loss or parameter count found in {lines_read:,} lines; "
            "expected a training log: nanoGPT ('iter N: loss X, ...'), llm.c ('step N/M | "
            "loss X ...'), modded-nanogpt, build-nanogpt, litgpt, llama2.c, torchtitan, "
            "Hugging Face Trainer ({'loss': ...} or trainer_state.json), or CSV / JSON lines "
            "with step and train_loss / val_loss")
    # the most lines; a tie goes to a format other than nanoGPT, whose evaluation line llama2.c
    # prints too (a llama2.c log of one such line and one of its own is llama2.c's)
    fmt = cast(LogFormat, max(reader.formats, key=lambda f: (reader.formats[f], f != "nanogpt")))
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
