"""The line formats `read_log` knows, one table each: what a line looks like, what it means.

- `record_line`: a line with a loss on it, as its format and the `LogRecord` fields it gives.
  A line is told apart by its first character, then one or a few patterns anchored at its
  start; a line that starts like none of them is looked at once more behind a prefix (a
  timestamp, a logger's name and level, torchrun's ``[rank0]:``, a progress bar): one search
  finds where a record could start, and at most `MAX_PREFIX_TRIES` places are tried.
- `fact_line`: a line that states a fact about the run (its parameter count, its tokens per
  step), found by one search, as the format and the fact.
- `KNOWN_WARNINGS`: messages worth knowing about (the inductor's "Not enough SMs", CUDA out
  of memory), by code.
- `strip_ansi`: a line without its terminal colour codes (torchtitan colours each field).
- Mappings (a printed dict or JSON line, a CSV row, ``trainer_state.json``) are read in
  `scaleplan.diagnosis.mappings`; `parse_dict`, `mapping_fields`, `csv_header` and
  `trainer_state_entries` are named here too.

The formats, and the print statements they come from:

- nanoGPT ``train.py``: ``step {iter_num}: train loss {:.4f}, val loss {:.4f}`` (an evaluation
  over ``eval_iters`` batches), ``iter {iter_num}: loss {:.4f}, time {:.2f}ms, mfu {:.2f}%``
  (one step; the MFU is ``-100.00%`` until it has been measured), ``number of parameters:
  {:.2f}M`` (``model.py``) and ``tokens per iteration will be: {:,}``.
- llama2.c ``train.py``: ``{iter_num} | loss {:.4f} | lr {lr:e} | {dt*1000:.2f}ms | mfu
  {:.2f}%``; its evaluation line and its tokens per iteration are nanoGPT's (read as those).
- modded-nanogpt ``train_gpt.py``: ``step:{step}/{train_steps} val_loss:{:.4f}
  train_time:{:.0f}ms step_avg:{:.2f}ms``, earlier versions also ``step:{step}/{train_steps}
  train_loss:{:.4f} ...``; ``step_avg`` (the mean step time so far) is the record's time.
- build-nanogpt ``train_gpt2.py``: ``step {step:5d} | loss: {:.6f} | lr {lr:.4e} | norm:
  {norm:.4f} | dt: {dt*1000:.2f}ms | tok/sec: {:.2f}``, ``validation loss: {:.4f}`` (evaluated
  at a step before it trains, so printed after the line of the step before: its step is the
  last one printed plus one, 0 before any), ``HellaSwag accuracy: {}/{}={:.4f}`` and ``total
  desired batch size: {}``; its ``log.txt``: ``{step} train {:.6f}``, ``{step} val {:.4f}``
  and ``{step} hella {:.4f}`` (an accuracy, not a loss: recognised, no record).
- llm.c ``train_gpt2.cu``: ``step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e |
  %.2f ms | %.1f%% bf16 MFU | %.0f tok/s`` and ``val loss %f``; older versions and
  ``train_gpt2.c`` print ``step %4d/%d: train loss %f (%f ms, %d tok/s)`` and ``step %d: train
  loss %f (took %f ms)``; its ``main.log`` holds ``s:%d trl:%.4f lr:%.6f norm:%.2f`` and
  ``s:%d tel:%.4f``; ``num_parameters: %zu`` and ``total_batch_size=%d``.
- litgpt ``pretrain.py``: ``Epoch {epoch} | iter {iter} step {step} | loss train: {:.3f}, val:
  {val} | iter time: {:.2f} ms ...``; its finetuning scripts (and ``pretrain.py`` before
  2024-04) ``iter {iter} step {step}: loss {:.4f}, iter time: {:.2f}ms ...`` (some ``iter {iter}
  | step {step}: ...``); ``iter {iter}: val loss {:.4f}, val time: {:.2f} ms``, printed after
  the step it follows (its step is the last step printed: ``iter`` counts micro-batches).
  lit-gpt (2023): ``iter {iter}: loss {:.4f}, time: {:.2f}ms, speed: {} toks/s/device`` (note
  ``time:``, where nanoGPT prints ``time``) and ``step {iter}: val loss {:.4f}``.
- torchtitan (``metrics.py``): ``step: {step:2}  loss: {:7.4f}  grad_norm: {:7.4f}  memory:
  {:5.2f}GiB({:.2f}%)  tps: {round(tps):,}  tflops: {:,.2f}  mfu: {:.2f}%`` (``grad_norm`` and
  ``tflops`` in later versions), each field behind an ANSI colour code, the whole behind the
  logger's ``[titan] {asctime} - root - INFO - `` and torchrun's ``[rank0]:``; ``validate step:
  {step:2}  loss: {:7.4f} ...``. ``tps`` is tokens per second per GPU.
- Hugging Face ``Trainer``: the printed dicts (``{'loss': 2.31, 'grad_norm': 1.2,
  'learning_rate': 4.9e-05, 'epoch': 0.1}``, ``{'eval_loss': ...}``) and ``trainer_state.json``
  (its ``log_history`` list, which carries ``step``).
- CSV with a header, and JSON lines, with a ``step`` column and ``train_loss`` / ``val_loss``.

``step`` is the number the log prints (nanoGPT and ``main.log`` count from 0, llm.c's stdout
from 1); the printed Trainer dicts carry no step (`read_log` counts them). The tokens/s of
lit-gpt and torchtitan are per GPU, llm.c's and build-nanogpt's for all GPUs together.

Each parser only reads text: regular expressions, `json`, `ast` (literals only).

>>> record_line("iter 7: loss 3.1000, time 95.10ms, mfu 40.00%", lambda: 0)
('nanogpt', {'kind': 'train', 'step': 7, 'train_loss': 3.1, 'time_ms': 95.1, 'mfu_percent': 40.0})
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from scaleplan.diagnosis.mappings import (
    MAPPING_KEYS,
    STEP_KEYS,
    csv_header,
    mapping_fields,
    parse_dict,
    trainer_state_entries,
)

__all__ = ["ANY_KNOWN_WARNING", "KNOWN_WARNINGS", "MAPPING_KEYS", "MAX_PREFIX_TRIES",
           "NANOGPT_ITER_LINE", "STEP_KEYS", "Fact",
           "csv_header", "fact_line", "mapping_fields", "parse_dict", "record_line",
           "strip_ansi", "trainer_state_entries"]

# Every pattern here runs in time linear in the line (a fuzzer found the old number pattern,
# ``\d+\.?\d*``, cubic: "step 1 | loss 2.5 " + "1" * 1000 took 19 s). A number is read one way
# only: an optional sign, digits, then an optional fraction, then an optional exponent, so a
# run of digits cannot be split between two quantifiers. Patterns searched anywhere in a line
# (`_found`) start with a word or a delimiter, never with a number: the search then tries a
# number only behind it, not at each digit of a long run. ``nan`` and ``inf`` are read (as C's
# printf and Python print them) so that a non-finite loss becomes a warning.
_F = r"([-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf|Inf))"
_STEP = r"(\d{1,15})"
_GROUPED = r"(\d[\d,]{0,40})"  # an integer with thousands separators: 2,345

_NANOGPT_EVAL = re.compile(rf"^step {_STEP}: train loss {_F}, val loss {_F}")
# nanoGPT's iter line, and lit-gpt's of 2023 (``time:`` with a colon, then its speed)
_NANOGPT_ITER = re.compile(rf"^iter {_STEP}: loss {_F}(?:, time(:?) {_F}\s*ms)?"
                           rf"(?:, mfu {_F}\s*%)?(?:, speed: {_F} toks/s)?")
# A whole nanoGPT iter line as bytes, the way train.py prints it (the most common line of all):
# read without decoding it or trying the other patterns. At most 30 digits a side keep each
# number finite; any other line goes the general way (`record_line`).
NANOGPT_ITER_LINE = re.compile(rb"iter (\d{1,15}): loss (\d{1,30}\.\d{1,30}), time "
                               rb"(\d{1,30}\.\d{1,30})ms, mfu (-?\d{1,30}\.\d{1,30})%"
                               rb"(?:\r\n|\r|\n)?\Z")
_LLAMA2C = re.compile(rf"^{_STEP} \| loss {_F}(?: \| lr {_F})?(?: \| {_F}\s*ms)?"
                      rf"(?: \| mfu {_F}\s*%)?")
_MODDED = re.compile(rf"^step:{_STEP}/\d{{1,15}} (?:(train|val)_loss:{_F}(?=\s|$))?")
_MODDED_AVG = re.compile(rf"\sstep_avg:{_F}\s*ms")
_BUILD_STEP = re.compile(rf"^step\s+{_STEP} \| loss: {_F}(?: \| lr {_F})?(?: \| norm: {_F})?"
                         rf"(?: \| dt: {_F}\s*ms)?(?: \| tok/sec: {_F})?")
# A common variant of it (forks that print with commas): "step 0001, loss: 9.502789, norm:
# 10.6497, lr: 1.2000e-04, time: 449.89ms, tokens/sec: 36418.0"
_BUILD_STEP_COMMAS = re.compile(rf"^step\s+{_STEP}, loss: {_F}(?:, norm: {_F})?(?:, lr: {_F})?"
                                rf"(?:, time: {_F}\s*ms)?(?:, tokens/sec: {_F})?")
_BUILD_VAL = re.compile(rf"^validation loss: {_F}\s*$")
_BUILD_LOG_TXT = re.compile(rf"^{_STEP} (train|val|hella) {_F}\s*$")
_BUILD_HELLASWAG = re.compile(r"^HellaSwag accuracy: \d{1,15}/\d{1,15}=")

# llm.c's line since mid-2024, whole: one match reads it (the searches below, 17 us, do not run)
_LLMC_LINE = re.compile(rf"^step\s+{_STEP}/\d{{1,15}} \| loss\s+{_F} \([^)]{{0,30}}\)\| "
                        rf"norm\s+{_F} \([^)]{{0,30}}\)\| lr {_F} \| {_F} ms \| {_F}% bf16 MFU "
                        rf"\| {_F} tok/s")
_LLMC_STEP = re.compile(
    rf"^step\s+{_STEP}(?:/(\d{{1,15}}))?\s*(?::|\|)\s*(?:train )?loss\s+{_F}")
_LLMC_MS = re.compile(rf"(?:\(took |\(|\|\s*\(?){_F} ms\b")
# behind the "|" or "," before them (a search for a number anywhere tries each word of the
# line: 25 us on an llm.c line, now 2)
_LLMC_TOKS = re.compile(rf"[|,]\s*{_F} tok/s")
_LLMC_MFU = re.compile(rf"\|\s*{_F}% bf16 MFU")
_LLMC_LR = re.compile(rf"\|\s*lr {_F}")
_LLMC_NORM = re.compile(rf"\|\s*norm\s+{_F}")
_LLMC_VAL = re.compile(rf"^val loss {_F}\s*$")
_LLMC_MAINLOG = re.compile(rf"^s:{_STEP} (trl|tel):{_F}(?: lr:{_F})?(?: norm:{_F})?")

_LITGPT_ITER = re.compile(rf"^iter {_STEP} (?:\| )?step {_STEP}: loss {_F}, iter time: "
                          rf"{_F}\s*ms")
_LITGPT_EPOCH = re.compile(rf"^Epoch \d{{1,9}} \| iter {_STEP} step {_STEP} \| loss train: "
                           rf"{_F}, val: (?:n/a|{_F}) \| iter time: {_F}\s*ms")
_LITGPT_VAL = re.compile(rf"^(iter|step) {_STEP}: val loss {_F}")

_TITAN = re.compile(rf"^(validate )?step:\s*{_STEP}\s+loss:\s*{_F}")
_TITAN_NORM = re.compile(rf"\sgrad_norm:\s*{_F}")
_TITAN_TPS = re.compile(rf"\stps:\s*{_GROUPED}")
_TITAN_MFU = re.compile(rf"\smfu:\s*{_F}\s*%")

# Where a record may start behind a prefix: a word that starts a record line, after a space,
# "]", ":", "|" or ">". Searched on a line whose start matched no format (the word first: a
# search for it skips along the line faster than one for the character before it).
# llm.c's bare "val loss X" is not looked for there: ", val loss X" ends other lines.
_RECORD_START = re.compile(r"iter |step|validat|Epoch ")
_BEFORE_RECORD = frozenset(" \t]:|>")
MAX_PREFIX_TRIES = 3
_ANSI = re.compile(r"\x1b\[[0-9;]{0,40}m")

_NANOGPT_PARAMS = re.compile(r"number of parameters: (\d{1,9}(?:\.\d+)?)M\b")
_NANOGPT_TOKENS = re.compile(r"tokens per iteration will be: ([\d,]{1,30})")
_LLMC_PARAMS = re.compile(r"^(?:\| )?num_parameters:?\s*(?:\|\s*)?(\d{1,18})\b")
_LLMC_BATCH = re.compile(r"total_batch_size=(\d{1,18})")
_BUILD_BATCH = re.compile(r"total desired batch size: (\d{1,18})")

# Messages worth knowing about, by code. The inductor one comes from is_big_gpu in
# torch/_inductor/utils.py (GPUs with fewer than 68 SMs skip max-autotune GEMM tuning).
KNOWN_WARNINGS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("inductor-not-enough-sms", re.compile(r"Not enough SMs to use max_autotune_gemm")),
    ("cuda-out-of-memory", re.compile(r"CUDA out of memory|OutOfMemoryError")),
)
# Any of them: most lines hold none, and one search tells.
ANY_KNOWN_WARNING = re.compile("|".join(p.pattern for _, p in KNOWN_WARNINGS))

_Fields = dict[str, Any]
_LastStep = Callable[[], int | None]
_Read = Callable[[re.Match[str], _LastStep], tuple[str, _Fields]]


def _opt(text: str | None) -> float | None:
    return None if text is None else float(text)


def _found(pattern: re.Pattern[str], text: str) -> float | None:
    """The number ``pattern``'s first group finds anywhere in ``text``, if it does."""
    m = pattern.search(text)
    return _opt(m and m[1].replace(",", ""))


def _nanogpt_eval(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "nanogpt", {"kind": "eval", "step": int(m[1]), "train_loss": float(m[2]),
                       "val_loss": float(m[3])}


def _nanogpt_iter(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    fields = {"kind": "train", "step": int(m[1]), "train_loss": float(m[2]),
              "time_ms": _opt(m[4]), "mfu_percent": _opt(m[5])}
    if not m[3]:
        return "nanogpt", fields
    return "litgpt", {**fields, "tokens_per_second": _opt(m[6])}  # "time:": lit-gpt's


def _llama2c(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "llama2.c", {"kind": "train", "step": int(m[1]), "train_loss": float(m[2]),
                        "learning_rate": _opt(m[3]), "time_ms": _opt(m[4]),
                        "mfu_percent": _opt(m[5])}


def _modded(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    loss = "val_loss" if m[2] == "val" else "train_loss"
    return "modded-nanogpt", {"kind": "eval" if m[2] == "val" else "train", "step": int(m[1]),
                              loss: _opt(m[3]), "time_ms": _found(_MODDED_AVG, m.string)}


def _build_step(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "build-nanogpt", {"kind": "train", "step": int(m[1]), "train_loss": float(m[2]),
                             "learning_rate": _opt(m[3]), "grad_norm": _opt(m[4]),
                             "time_ms": _opt(m[5]), "tokens_per_second": _opt(m[6])}


def _build_step_commas(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "build-nanogpt", {"kind": "train", "step": int(m[1]), "train_loss": float(m[2]),
                             "grad_norm": _opt(m[3]), "learning_rate": _opt(m[4]),
                             "time_ms": _opt(m[5]), "tokens_per_second": _opt(m[6])}


def _build_val(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    # evaluated at the top of a step, before it trains: after the line of the step before
    step = last_step()
    return "build-nanogpt", {"kind": "eval", "step": 0 if step is None else step + 1,
                             "val_loss": float(m[1])}


def _build_log_txt(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    kind, value = m[2], float(m[3])
    if kind == "hella":  # HellaSwag accuracy: recognised, no loss
        return "build-nanogpt", {"kind": "eval", "step": int(m[1])}
    return "build-nanogpt", {"kind": "train" if kind == "train" else "eval", "step": int(m[1]),
                             "train_loss" if kind == "train" else "val_loss": value}


def _build_hellaswag(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "build-nanogpt", {"kind": "eval"}


def _llmc_step(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    text = m.string
    return "llm.c", {"kind": "train", "step": int(m[1]), "train_loss": float(m[3]),
                     "time_ms": _found(_LLMC_MS, text),
                     "tokens_per_second": _found(_LLMC_TOKS, text),
                     "mfu_percent": _found(_LLMC_MFU, text),
                     "learning_rate": _found(_LLMC_LR, text),
                     "grad_norm": _found(_LLMC_NORM, text)}


def _llmc_line(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    return "llm.c", {"kind": "train", "step": int(m[1]), "train_loss": float(m[2]),
                     "grad_norm": float(m[3]), "learning_rate": float(m[4]),
                     "time_ms": float(m[5]), "mfu_percent": float(m[6]),
                     "tokens_per_second": float(m[7])}


def _llmc_val(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    # printed before the step it precedes: it belongs to the last step printed
    return "llm.c", {"kind": "eval", "step": last_step() or 0, "val_loss": float(m[1])}


def _llmc_mainlog(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    is_train = m[2] == "trl"
    return "llm.c", {"kind": "train" if is_train else "eval", "step": int(m[1]),
                     "learning_rate": _opt(m[4]), "grad_norm": _opt(m[5]),
                     "train_loss" if is_train else "val_loss": float(m[3])}


def _litgpt_iter(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    # iter counts micro-batches; step, the optimizer's steps, is the record's step
    return "litgpt", {"kind": "train", "step": int(m[2]), "train_loss": float(m[3]),
                      "time_ms": float(m[4])}


def _litgpt_epoch(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    # pretrain.py prints the last validation loss on every line ("val: n/a" before the first):
    # the reader keeps it as an evaluation where it changes
    return "litgpt", {"kind": "train", "step": int(m[2]), "train_loss": float(m[3]),
                      "val_loss": _opt(m[4]), "time_ms": float(m[5])}


def _litgpt_val(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    # "iter N: val loss" follows the step it evaluates; lit-gpt's "step N:" numbers iters
    # as its training lines do
    step = last_step() if m[1] == "iter" else None
    return "litgpt", {"kind": "eval", "step": int(m[2]) if step is None else step,
                      "val_loss": float(m[3])}


def _titan(m: re.Match[str], last_step: _LastStep) -> tuple[str, _Fields]:
    text = m.string
    return "torchtitan", {"kind": "eval" if m[1] else "train", "step": int(m[2]),
                          "train_loss" if not m[1] else "val_loss": float(m[3]),
                          "grad_norm": _found(_TITAN_NORM, text),
                          "tokens_per_second": _found(_TITAN_TPS, text),
                          "mfu_percent": _found(_TITAN_MFU, text)}


# By a line's first character, the formats a line starting with it may be, tried in order.
_DIGIT_LINES: tuple[tuple[re.Pattern[str], _Read], ...] = (
    (_LLAMA2C, _llama2c), (_BUILD_LOG_TXT, _build_log_txt))
_BY_START: dict[str, tuple[tuple[re.Pattern[str], _Read], ...]] = {
    "i": ((_NANOGPT_ITER, _nanogpt_iter), (_LITGPT_ITER, _litgpt_iter),
          (_LITGPT_VAL, _litgpt_val)),
    "s": ((_NANOGPT_EVAL, _nanogpt_eval), (_LLMC_LINE, _llmc_line), (_LLMC_STEP, _llmc_step),
          (_BUILD_STEP, _build_step), (_BUILD_STEP_COMMAS, _build_step_commas),
          (_MODDED, _modded), (_TITAN, _titan),
          (_LITGPT_VAL, _litgpt_val), (_LLMC_MAINLOG, _llmc_mainlog)),
    "v": ((_LLMC_VAL, _llmc_val), (_BUILD_VAL, _build_val), (_TITAN, _titan)),
    "E": ((_LITGPT_EPOCH, _litgpt_epoch),),
    "H": ((_BUILD_HELLASWAG, _build_hellaswag),),
    **dict.fromkeys("0123456789", _DIGIT_LINES),
}


def _at_start(text: str, last_step: _LastStep) -> tuple[str, _Fields] | None:
    for pattern, read in _BY_START.get(text[:1], ()):
        if m := pattern.match(text):
            return read(m, last_step)
    return None


def record_line(text: str,
                last_step: Callable[[], int | None]) -> tuple[str, dict[str, Any]] | None:
    """The format of a stripped line that reports a loss and the `LogRecord` fields it gives;
    None when it is no such line. ``last_step`` says the step of the last training record,
    None before any (an llm.c ``val loss`` line carries none).

    >>> record_line("s:250 tel:4.0831", lambda: 0)
    ('llm.c', {'kind': 'eval', 'step': 250, 'learning_rate': None, 'grad_norm': None, \
'val_loss': 4.0831})
    >>> record_line("2024-05-01 12:00:01,123 INFO iter 100: loss 3.2100", lambda: 0)[1]["step"]
    100
    """
    found = _at_start(text, last_step)
    start = _RECORD_START.search(text, 1) if found is None else None
    tries = 0
    while start is not None and tries < MAX_PREFIX_TRIES:
        if text[start.start() - 1] in _BEFORE_RECORD:
            tries += 1
            if (found := _at_start(text[start.start():], last_step)) is not None:
                break
        start = _RECORD_START.search(text, start.end())
    return found


def strip_ansi(text: str) -> str:
    r"""``text`` without its terminal colour codes (``\x1b[31m`` and the like).

    >>> strip_ansi("\x1b[31mstep:  1  \x1b[32mloss:  9.4123\x1b[39m")
    'step:  1  loss:  9.4123'
    """
    return _ANSI.sub("", text)


class Fact(NamedTuple):
    """What a line says about the run: ``name`` is ``"params"`` (the count and the text it was
    read from) or ``"tokens_per_step"`` (None when the log prints 0)."""

    format: str
    name: str
    value: Any


# (how to look for it, the format, the fact, its value from the match); first match wins.
# Each search starts with its words: a search for a fixed prefix skips along the line fast.
_FACT_LINES: tuple[tuple[Callable[[str], re.Match[str] | None], str, str,
                         Callable[[re.Match[str]], Any]], ...] = (
    (_NANOGPT_PARAMS.search, "nanogpt", "params", lambda m: (round(float(m[1]) * 1e6), m[0])),
    (_NANOGPT_TOKENS.search, "nanogpt", "tokens_per_step",
     lambda m: int(m[1].replace(",", "") or 0) or None),
    (_LLMC_PARAMS.match, "llm.c", "params", lambda m: (int(m[1]), m[0])),
    (_LLMC_BATCH.search, "llm.c", "tokens_per_step", lambda m: int(m[1]) or None),
    (_BUILD_BATCH.search, "build-nanogpt", "tokens_per_step", lambda m: int(m[1]) or None),
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
