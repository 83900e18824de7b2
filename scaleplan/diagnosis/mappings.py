"""The logs that are mappings, not lines of text: a printed dict or a JSON line, a CSV row, the
entries of ``trainer_state.json``, and the `LogRecord` fields their keys give.

- `parse_dict`: the dict in a line, read as JSON (``"jsonl"``) or as the Python literal the
  Hugging Face Trainer prints (``"hf-trainer"``), ``nan`` and ``inf`` included (the Trainer
  prints ``'grad_norm': nan`` when a gradient overflows, which no literal reader accepts).
- `mapping_fields`: the fields a mapping gives by `MAPPING_KEYS` and `STEP_KEYS`.
- `csv_header`: the header that starts a CSV (or TSV) log.
- `trainer_state_entries`: the ``log_history`` entries of a ``trainer_state.json``.

Nothing is executed: JSON is read by `json`, a printed dict by walking the tree `ast.parse`
gives, which accepts literals and the names ``nan`` and ``inf`` only.

>>> parse_dict("{'loss': 2.31, 'grad_norm': nan, 'epoch': 0.1}")
('hf-trainer', {'loss': 2.31, 'grad_norm': nan, 'epoch': 0.1})
"""

from __future__ import annotations

import ast
import csv
import json
import math
import warnings
from typing import Any

__all__ = ["MAPPING_KEYS", "STEP_KEYS", "csv_header", "mapping_fields", "parse_dict",
           "trainer_state_entries"]

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
    "grad_norm": ("grad_norm", "train/grad_norm", "norm"),
}

# The names Python's repr gives a non-finite float: repr(float("nan")) is 'nan'.
_NON_FINITE_NAMES = frozenset({"nan", "inf"})


def parse_dict(text: str) -> tuple[str, dict[Any, Any]] | None:
    """The dict in a line, read as JSON (``"jsonl"``) or as a Python literal (the Trainer's
    printed dicts, ``"hf-trainer"``), and which it was; None when it is not a dict."""
    body = text[text.find("{"): text.rfind("}") + 1]
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        printed = _printed_dict(body)
        return None if printed is None else ("hf-trainer", printed)
    return ("jsonl", data) if isinstance(data, dict) else None


def _printed_dict(body: str) -> dict[Any, Any] | None:
    """The dict a Python literal spells, its values literals or ``nan``/``inf``; None when
    it is anything else (a call, a name, a comprehension: none of it is run)."""
    try:
        with warnings.catch_warnings():  # e.g. SyntaxWarning for '\d' in a string
            warnings.simplefilter("ignore")
            node = ast.parse(body, mode="eval").body
        if not isinstance(node, ast.Dict) or None in node.keys:  # {**other} has a None key
            return None
        try:
            return ast.literal_eval(node)  # type: ignore[no-any-return]
        except ValueError:  # a name: nan or inf, or one that is refused
            return {ast.literal_eval(key): _value(value)  # type: ignore[arg-type]
                    for key, value in zip(node.keys, node.values, strict=True)}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _value(node: ast.expr) -> Any:
    """A literal, or a non-finite float printed as ``nan``, ``inf`` or ``-inf``."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        if isinstance(node.operand, ast.Name):
            node = node.operand
    if isinstance(node, ast.Name) and node.id in _NON_FINITE_NAMES:
        return sign * float(node.id)
    return ast.literal_eval(node)


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
