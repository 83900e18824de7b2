"""The line formats `read_log` knows, one table each: what a line looks like, what it means.

- `record_line`: a line with a loss on it (nanoGPT's ``iter`` and ``step`` lines, llm.c's
  stdout and ``main.log``), as its format and the `LogRecord` fields it gives.
- `fact_line`: a line that states a fact about the run (its parameter count, its tokens per
  step), as the format and the fact.
- `KNOWN_WARNINGS`: messages worth knowing about (the inductor's "Not enough SMs", CUDA out
  of memory), by code.
- `parse_dict` and `mapping_fields`: a printed dict or JSON line, and the fields a mapping (a
  dict, a CSV row) gives by its keys; `csv_header` for the header that starts a CSV log;
  `trainer_state_entries` for ``trainer_state.json``.

The formats, and the print statements they come from:

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

Each parser only reads text: regular expressions, `json`, `ast.literal_eval` (literals only).

>>> record_line("iter 7: loss 3.1000, time 95.10ms, mfu 40.00%", lambda: 0)
('nanogpt', {'kind': 'train', 'step': 7, 'train_loss': 3.1, 'time_ms': 95.1, 'mfu_percent': 40.0})
"""

from __future__ import annotations

import ast
import csv
import json
import math
import re
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["ANY_KNOWN_WARNING", "KNOWN_WARNINGS", "MAPPING_KEYS", "NANOGPT_ITER_LINE", "STEP_KEYS",
           "Fact",
           "csv_header", "fact_line", "mapping_fields", "parse_dict", "record_line",
           "trainer_state_entries"]

# Every pattern here runs in time linear in the line (a fuzzer found the old number pattern,
# ``\d+\.?\d*``, cubic: "step 1 | loss 2.5 " + "1" * 1000 took 19 s). A number is read one way
# only: digits, then an optional fraction, then an optional exponent, so a run of digits cannot
# be split between two quantifiers. Patterns searched anywhere in a line (`_found`) and starting
# with a number are preceded by `_NUMBER_START`: the search then tries a number only where one
# begins, not at each digit of a long run.
_F = r"([-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-nan))"
_NUMBER_START = r"(?<![\d.])"
_STEP = r"(\d{1,15})"

_NANOGPT_EVAL = re.compile(rf"^step {_STEP}: train loss {_F}, val loss {_F}")
_NANOGPT_ITER = re.compile(
    rf"^iter {_STEP}: loss {_F}(?:, time {_F}\s*ms)?(?:, mfu {_F}\s*%)?")
# A whole nanoGPT iter line as bytes, the way train.py prints it (the most common line of all):
# read without decoding it or trying the other patterns. At most 30 digits a side keep each
# number finite; any other line goes the general way (`record_line`).
NANOGPT_ITER_LINE = re.compile(rb"iter (\d{1,15}): loss (\d{1,30}\.\d{1,30}), time "
                               rb"(\d{1,30}\.\d{1,30})ms, mfu (-?\d{1,30}\.\d{1,30})%"
                               rb"(?:\r\n|\r|\n)?\Z")
_NANOGPT_PARAMS = re.compile(r"number of parameters: (\d{1,9}(?:\.\d+)?)M\b")
_NANOGPT_TOKENS = re.compile(r"tokens per iteration will be: ([\d,]{1,30})")

_LLMC_STEP = re.compile(
    rf"^step\s+{_STEP}(?:/(\d{{1,15}}))?\s*(?::|\|)\s*(?:train )?loss\s+{_F}")
_LLMC_MS = re.compile(rf"(?:\(took |\(|\|\s*\(?){_F} ms\b")
_LLMC_TOKS = re.compile(rf"{_NUMBER_START}{_F} tok/s")
_LLMC_MFU = re.compile(rf"{_NUMBER_START}{_F}% bf16 MFU")
_LLMC_LR = re.compile(rf"\|\s*lr {_F}")
_LLMC_VAL = re.compile(rf"^val loss {_F}\s*$")
_LLMC_MAINLOG = re.compile(rf"^s:{_STEP} (trl|tel):{_F}(?: lr:{_F})?")
_LLMC_PARAMS = re.compile(r"^(?:\| )?num_parameters:?\s*(?:\|\s*)?(\d{1,18})\b")
_LLMC_BATCH = re.compile(r"total_batch_size=(\d{1,18})")

# Messages worth knowing about, by code. The inductor one comes from is_big_gpu in
# torch/_inductor/utils.py (GPUs with fewer than 68 SMs skip max-autotune GEMM tuning).
KNOWN_WARNINGS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("inductor-not-enough-sms", re.compile(r"Not enough SMs to use max_autotune_gemm")),
    ("cuda-out-of-memory", re.compile(r"CUDA out of memory|OutOfMemoryError")),
)
# Any of them: most lines hold none, and one search tells.
ANY_KNOWN_WARNING = re.compile("|".join(p.pattern for _, p in KNOWN_WARNINGS))

# Column or key names, in order of preference, for each field of a record.
STEP_KEYS = ("step", "iter", "iteration", "global_step")
MAPPING_KEYS: dict[str, tuple[str, ...]] = {
    "train_loss": ("train_loss", "loss", "train/loss"),
    "val_loss": ("val_loss", "eval_loss", "val/loss", "valid_loss", "validation_loss"),
    "time_ms": ("time_ms", "dt_ms", "step_time_ms"),
    "mfu_percent": ("mfu_percent", "mfu"),
    "tokens_per_second": ("tokens_per_second", "tok/s", "tokens_per_sec"),
    "learning_rate": ("learning_rate", "lr"),
    "epoch": ("epoch",),
}

_Fields = dict[str, Any]
_LastStep = Callable[[], int]


def _opt(text: str | None) -> float | None:
    return None if text is None else float(text)


def _found(pattern: re.Pattern[str], text: str) -> float | None:
    """The number ``pattern``'s first group finds anywhere in ``text``, if it does."""
    m = pattern.search(text)
    return _opt(m and m[1])


def _nanogpt_eval(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "nanogpt", {"kind": "eval", "step": int(m[1]), "train_loss": float(m[2]),
                       "val_loss": float(m[3])}


def _nanogpt_iter(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "nanogpt", {"kind": "train", "step": int(m[1]), "train_loss": float(m[2]),
                       "time_ms": _opt(m[3]), "mfu_percent": _opt(m[4])}


def _llmc_step(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    text = m.string
    return "llm.c", {"kind": "train", "step": int(m[1]), "train_loss": float(m[3]),
                     "time_ms": _found(_LLMC_MS, text),
                     "tokens_per_second": _found(_LLMC_TOKS, text),
                     "mfu_percent": _found(_LLMC_MFU, text),
                     "learning_rate": _found(_LLMC_LR, text)}


def _llmc_val(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    # printed before the step it precedes: it belongs to the last step printed
    return "llm.c", {"kind": "eval", "step": last_step(), "val_loss": float(m[1])}


def _llmc_mainlog(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    is_train = m[2] == "trl"
    return "llm.c", {"kind": "train" if is_train else "eval", "step": int(m[1]),
                     "learning_rate": _opt(m[4]),
                     "train_loss" if is_train else "val_loss": float(m[3])}


# Tried in this order; the first whose pattern matches the start of the line reads it.
_RECORD_LINES: tuple[tuple[re.Pattern[str],
                           Callable[[re.Match[str], _LastStep], tuple[str, _Fields]]], ...] = (
    (_NANOGPT_EVAL, _nanogpt_eval),
    (_NANOGPT_ITER, _nanogpt_iter),
    (_LLMC_STEP, _llmc_step),
    (_LLMC_VAL, _llmc_val),
    (_LLMC_MAINLOG, _llmc_mainlog),
)


def record_line(text: str,
                last_step: Callable[[], int]) -> tuple[str, dict[str, Any]] | None:
    """The format of a stripped line that reports a loss and the `LogRecord` fields it gives;
    None when it is no such line. ``last_step`` says the step of the last training record (an
    llm.c ``val loss`` line carries none).

    >>> record_line("s:250 tel:4.0831", lambda: 0)
    ('llm.c', {'kind': 'eval', 'step': 250, 'learning_rate': None, 'val_loss': 4.0831})
    """
    for pattern, read in _RECORD_LINES:
        if m := pattern.match(text):
            return read(m, last_step)
    return None


class Fact(NamedTuple):
    """What a line says about the run: ``name`` is ``"params"`` (the count and the text it was
    read from) or ``"tokens_per_step"`` (None when the log prints 0)."""

    format: str
    name: str
    value: Any


# (how to look for it, the format, the fact, its value from the match); first match wins.
_FACT_LINES: tuple[tuple[Callable[[str], re.Match[str] | None], str, str,
                         Callable[[re.Match[str]], Any]], ...] = (
    (_NANOGPT_PARAMS.search, "nanogpt", "params", lambda m: (round(float(m[1]) * 1e6), m[0])),
    (_NANOGPT_TOKENS.search, "nanogpt", "tokens_per_step",
     lambda m: int(m[1].replace(",", "") or 0) or None),
    (_LLMC_PARAMS.match, "llm.c", "params", lambda m: (int(m[1]), m[0])),
    (_LLMC_BATCH.search, "llm.c", "tokens_per_step", lambda m: int(m[1]) or None),
)


def fact_line(text: str) -> Fact | None:
    """The fact a stripped line states about the run, if it states one.

    >>> fact_line("number of parameters: 123.59M")
    Fact(format='nanogpt', name='params', value=(123590000, 'number of parameters: 123.59M'))
    """
    for find, fmt, name, value in _FACT_LINES:
        if m := find(text):
            return Fact(fmt, name, value(m))
    return None


def parse_dict(text: str) -> tuple[str, dict[Any, Any]] | None:
    """The dict in a line, read as JSON (``"jsonl"``) or as a Python literal (the Trainer's
    printed dicts, ``"hf-trainer"``), and which it was; None when it is not a dict."""
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
            return None
    return (fmt, data) if isinstance(data, dict) else None


def trainer_state_entries(data: Any) -> list[tuple[int, dict[Any, Any]]] | None:
    """The entries of a ``trainer_state.json`` (a dict whose ``log_history`` is a list) that a
    record may come from, numbered from 1: the dicts, less the end-of-run summary (it holds
    ``train_runtime``); None when ``data`` is no trainer state.

    >>> trainer_state_entries({"log_history": [{"loss": 2.4, "step": 5}, 7]})
    [(1, {'loss': 2.4, 'step': 5})]
    """
    if not isinstance(data, dict) or not isinstance(data.get("log_history"), list):
        return None
    return [(i, entry) for i, entry in enumerate(data["log_history"], start=1)
            if isinstance(entry, dict) and "train_runtime" not in entry]


def mapping_fields(data: dict[Any, Any]) -> dict[str, Any] | None:
    """The `LogRecord` fields a mapping (a dict line, a CSV row) gives by `MAPPING_KEYS`; None
    when it has neither a training nor a validation loss.

    >>> mapping_fields({"iter": "10", "loss": "3.25", "lr": "6e-4"})["train_loss"]
    3.25
    """
    fields = {name: _pick(data, keys) for name, keys in MAPPING_KEYS.items()}
    if fields["train_loss"] is None and fields["val_loss"] is None:
        return None
    return {"kind": "eval" if fields["val_loss"] is not None else "train",
            "step": _pick(data, STEP_KEYS, whole=True), **fields}


def csv_header(text: str) -> list[str] | None:
    """The lower-cased column names when a stripped line is a CSV (or TSV) header with a step
    column and a loss column; else None."""
    if "," not in text and "\t" not in text:
        return None
    names = [c.strip().lower() for c in next(csv.reader([text],
                                                        delimiter="\t" if "\t" in text
                                                        else ","))]
    losses = MAPPING_KEYS["train_loss"] + MAPPING_KEYS["val_loss"]
    if any(k in names for k in STEP_KEYS) and any(k in names for k in losses):
        return names
    return None


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
