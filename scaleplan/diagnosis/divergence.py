"""Findings about the loss curve's health, from the log alone: a run that diverged, one that is
stuck, and a first loss a fresh model cannot have.

- ``divergence``: a NaN or inf loss or gradient norm (the log reader's "non-finite-loss" and
  "non-finite-grad-norm" warnings), a spike of the training loss far above its recent level, or
  a jump back to about ln(vocab), the loss of a uniform guess, after it had been well below it.
- ``stuck``: the loss identical (to 4 decimals) over many logged steps, a loss of exactly 0
  logged again and again, or a loss still at about ln(vocab) long after the start.
- ``initial-loss``: the first loss far above ln(vocab) (a bad initialisation) or, for a run
  from scratch, far below it (not a fresh model, or trivial data).

A freshly initialised GPT predicts nearly uniformly over its vocabulary, so its first loss is
about ln(vocab) nats: 10.83 for GPT-2's 50,257 tokens, 4.17 for nanoGPT's 65 characters.

The train loss of one batch is noisy, so a spike is judged robustly: above the median of the
`SPIKE_WINDOW` points before it by `SPIKE_MADS` robust deviations (1.4826 x the median absolute
deviation, which is the standard deviation for normal noise) AND by `SPIKE_RELATIVE` of that
median. Ordinary batch noise, a few percent, never fires it.

>>> from scaleplan.diagnosis.logs import read_log
>>> log = read_log("t.log", text="".join(f"iter {i}: loss {3.0 + 0.01 * (i % 3):.4f}, "
...                f"time 1.00ms, mfu 1.00%\\n" for i in range(40)) + "iter 40: loss 7.5, "
...                "time 1.00ms, mfu 1.00%\\n")
>>> [f.code for f in divergence_findings(log, vocab_size=50304)]
['divergence']
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from statistics import median

from scaleplan.diagnosis.logs import TrainingLog
from scaleplan.findings import Finding

__all__ = ["CONSTANT_MIN_POINTS", "SPIKE_MADS", "SPIKE_RELATIVE", "SPIKE_WINDOW",
           "divergence_findings", "initial_loss_findings", "loss_series", "stuck_findings"]

SPIKE_WINDOW = 20  # points before a spike that give its recent level (even: see _spikes)
SPIKE_MADS = 6.0  # robust deviations above the median: ~1e-9 odds for normal batch noise
SPIKE_RELATIVE = 0.25  # and 25% above the median: a large relative jump, not just noise
ROBUST_SD_PER_MAD = 1.4826  # sd = 1.4826 x MAD for normal noise (Rousseeuw & Croux 1993)
SHIFT_RELATIVE = 0.5  # a level 50% above the points before it, held to the end of the log
SHIFT_MIN_POINTS = 3  # ... over at least 3 points, after at least 3 (SHIFT_BEFORE: up to 5)
SHIFT_BEFORE = 5
JUMP_BELOW_NATS = 2.0  # "well below ln(vocab)": the loss had fallen 2 nats under it
NEAR_UNIFORM_NATS = 0.5  # "about ln(vocab)": within half a nat of a uniform guess
# A loss identical to 4 decimals over 20 logged steps is not noise: batch noise of even 0.01
# makes two such values equal about 1 time in 100, twenty in a row never (litgpt issue 689
# posts 23 lines of 10.8259)
CONSTANT_MIN_POINTS = 20
UNMOVED_MIN_STEPS = 100  # the first loss, unchanged 100 steps later: the weights never moved
CONSTANT_DECIMALS = 4  # the precision nanoGPT and most loggers print
ZERO_MIN_POINTS = 3  # a cross-entropy of exactly 0, three logs in a row
STUCK_MIN_STEPS = 500  # a loss at ln(vocab) this long after the start has learnt nothing
STUCK_MIN_POINTS = 50  # the same, for a log that prints no step numbers
INITIAL_MAX_STEP = 10  # a first loss logged at step <= 10 is the fresh model's
INITIAL_ABOVE_NATS = 1.0  # over ln(vocab) + 1: logits far from uniform at the start
INITIAL_BELOW_NATS = 2.0  # under ln(vocab) - 2: a fresh model cannot already know the data

Point = tuple[int | None, float]


def loss_series(log: TrainingLog) -> tuple[list[Point], str]:
    """The log's loss curve as (step, loss) in log order, and which loss it is: the training
    records' loss, or the evaluations' validation loss when there are fewer than 3 of those."""
    train = [(r.step, r.train_loss) for r in log.train_records() if r.train_loss is not None]
    if len(train) >= 3:
        return train, "training loss"
    evals = [(r.step, r.val_loss) for r in log.eval_records() if r.val_loss is not None]
    return (evals, "validation loss") if len(evals) >= len(train) else (train, "training loss")


def _where(step: int | None, index: int) -> str:
    return f"step {step}" if step is not None else f"logged loss #{index + 1}"


def divergence_findings(log: TrainingLog, *, vocab_size: int | None) -> list[Finding]:
    """The ``divergence`` finding (one, naming everything found), or nothing."""
    parts: list[str] = []
    numbers: dict[str, int | float | str] = {}
    recovered = True
    for code, what in (("non-finite-loss", "loss"), ("non-finite-grad-norm", "gradient norm")):
        w = log.warning(code)
        if w is not None:
            at = f" at step {w.step}" if w.step is not None else ""
            parts.append(f"a non-finite {what} (NaN or inf) on {w.count:,} line(s), first on "
                         f"line {w.line}{at}: {w.text!r}")
            numbers[f"{code}_count"] = w.count
            numbers[f"{code}_line"] = w.line
            if w.step is not None:
                numbers[f"{code}_step"] = w.step
            recovered = False
    series, which = loss_series(log)
    jump = _jump_to_uniform(series, vocab_size)
    if jump is not None:
        parts.append(jump[0])
        numbers.update(jump[1])
        recovered = False
    shift = _level_shift(series, which)
    if shift is not None:
        parts.append(shift[0])
        numbers.update(shift[1])
        recovered = False
    spikes = _spikes(series, which)
    if spikes is not None:
        parts.append(spikes[0])
        numbers.update(spikes[1])
        recovered = recovered and bool(spikes[2])
    if not parts:
        return []
    return [Finding(
        code="divergence", severity="warning" if recovered else "error",
        message="the run diverged: " + "; ".join(parts),
        fix=("restart from the last checkpoint before it with a lower learning rate (halve it) "
             "or a longer warmup; keep gradient clipping on (grad_clip = 1.0) and use bf16 "
             "rather than fp16; skip the batch if one bad batch causes it"),
        numbers=numbers)]


def _jump_to_uniform(series: list[Point], vocab: int | None,
                     ) -> tuple[str, dict[str, int | float | str]] | None:
    """The first point back at about ln(vocab) after the loss had been well below it. On a
    long curve (`SPIKE_WINDOW` points or more) each loss is the median of it and its two
    neighbours, so that one noisy batch neither sets the low nor makes the jump."""
    if vocab is None or vocab < 2:
        return None
    uniform = math.log(vocab)
    values = [v for _, v in series]
    if len(values) >= SPIKE_WINDOW:  # the median of three is their sum less the extremes
        triples = zip(values[:-2], values[1:-1], values[2:], strict=True)
        values = [values[0], *(a + b + c - max(a, b, c) - min(a, b, c) for a, b, c in triples),
                  values[-1]]
    lowest = math.inf
    for i, loss in enumerate(values):
        if lowest <= uniform - JUMP_BELOW_NATS and loss >= uniform - NEAR_UNIFORM_NATS:
            step = series[i][0]
            return (f"the loss jumped back to {loss:.4f} at {_where(step, i)}, about ln(vocab) "
                    f"= ln({vocab:,}) = {uniform:.3f} (a uniform guess), after it had been down "
                    f"to {lowest:.4f}: the model's weights were wrecked",
                    {"jump_loss": loss, "jump_index": i, "lowest_before_jump": lowest,
                     "ln_vocab": uniform, **({"jump_step": step} if step is not None else {})})
        lowest = min(lowest, loss)
    return None


def _level_shift(series: list[Point], which: str,
                 ) -> tuple[str, dict[str, int | float | str]] | None:
    """The loss jumping to a level `SHIFT_RELATIVE` above the median of the points before it
    and never coming back: every point from there to the end of the log (at least
    `SHIFT_MIN_POINTS`) is that far above. Too few points for `_spikes`' window are enough
    (a Trainer logging every few hundred steps: 2.43 -> 4.31 and flat at 4.2 after)."""
    values = [v for _, v in series]
    floor = math.inf
    lowest_after = [0.0] * len(values)  # lowest_after[k]: the lowest loss from k to the end
    for k in range(len(values) - 1, -1, -1):
        floor = min(floor, values[k])
        lowest_after[k] = floor
    for k in range(SHIFT_MIN_POINTS, len(values) - SHIFT_MIN_POINTS + 1):
        level = median(values[max(0, k - SHIFT_BEFORE):k])
        if level > 0 and lowest_after[k] >= (1 + SHIFT_RELATIVE) * level:
            step = series[k][0]
            numbers: dict[str, int | float | str] = {
                "shift_index": k, "shift_loss": values[k], "level_before_shift": level,
                "lowest_after_shift": lowest_after[k]}
            if step is not None:
                numbers["shift_step"] = step
            return (f"the {which} jumped from about {level:.4f} to {values[k]:.4f} at "
                    f"{_where(step, k)} and stayed at or above {lowest_after[k]:.4f} to the end "
                    f"of the log ({lowest_after[k] / level:.2f}x the level before)", numbers)
    return None


def _spikes(series: list[Point], which: str,
            ) -> tuple[str, dict[str, int | float | str], bool] | None:
    """Spikes far above the running median (see the module docstring): their count, the
    largest, and whether the loss came back down after the last one."""
    found: list[tuple[int, float, float]] = []  # index, loss, median before it
    values = [v for _, v in series]
    window = sorted(values[:SPIKE_WINDOW])  # the points before i, kept sorted
    half = SPIKE_WINDOW // 2
    for i in range(SPIKE_WINDOW, len(values)):
        level = (window[half - 1] + window[half]) / 2  # SPIKE_WINDOW is even
        loss = values[i]
        # the cheap test first (rarely true); a level of 0 or below is no cross-entropy
        if level > 0 and loss > (1 + SPIKE_RELATIVE) * level:
            spread = ROBUST_SD_PER_MAD * median(abs(v - level) for v in window)
            if loss > level + SPIKE_MADS * spread:
                found.append((i, loss, level))
        del window[bisect_left(window, values[i - SPIKE_WINDOW])]
        insort(window, loss)
    if not found:
        return None
    i, loss, level = found[0]
    highest = max(v for _, v, _ in found)
    last_i, _, last_level = found[-1]
    after = [v for _, v in series[last_i + 1:]]
    recovered = bool(after) and after[-1] <= (1 + SPIKE_RELATIVE) * last_level
    step = series[i][0]
    ending = ("it came back down afterwards" if recovered else
              "it had not come back down by the end of the log")
    text = (f"the {which} rose far above its recent level on {len(found)} log(s), first to "
            f"{loss:.4f} at {_where(step, i)}, {loss / level:.2f}x the median {level:.4f} of "
            f"the {SPIKE_WINDOW} points before it (highest {highest:.4f}); {ending}")
    numbers: dict[str, int | float | str] = {
        "spike_count": len(found), "spike_loss": loss, "spike_index": i,
        "median_before_spike": level, "highest_spike_loss": highest,
        "recovered": int(recovered)}
    if step is not None:
        numbers["spike_step"] = step
    return text, numbers, recovered


def stuck_findings(log: TrainingLog, *, vocab_size: int | None) -> list[Finding]:
    """The ``stuck`` finding: a constant loss, repeated zeros, or a loss left at ln(vocab)."""
    series, which = loss_series(log)
    found = _constant(series, which) or _at_uniform(series, which, vocab_size, log)
    if found is None:
        return []
    message, fix, numbers = found
    return [Finding(code="stuck", severity="error", message=message, fix=fix, numbers=numbers)]


Stuck = tuple[str, str, dict[str, int | float | str]]


def _constant(series: list[Point], which: str) -> Stuck | None:
    """The longest run of an identical loss (to `CONSTANT_DECIMALS`), if long enough; zeros
    count from `ZERO_MIN_POINTS`."""
    best = (0, 0)  # start, length
    start = 0
    keys = [round(v, CONSTANT_DECIMALS) for _, v in series]
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            if i - start > best[1]:
                best = (start, i - start)
            start = i
    first, length = best
    if length == 0:
        return None
    value = series[first][1]
    zero = round(value, CONSTANT_DECIMALS) == 0
    if length < (ZERO_MIN_POINTS if zero else CONSTANT_MIN_POINTS) and \
            not _unmoved(series[first:first + length]):
        return None
    span = f"from {_where(series[first][0], first)} to " \
           f"{_where(series[first + length - 1][0], first + length - 1)}"
    numbers: dict[str, int | float | str] = {"constant_loss": value, "points": length,
                                             "first_index": first}
    if series[first][0] is not None:
        numbers["from_step"] = series[first][0] or 0
    if zero:
        return (f"the {which} is exactly {value:.4f} on {length} logs in a row ({span}): a "
                "cross-entropy of 0 means no token is scored (every label masked with -100) or "
                "the loss overflowed (fp16 without loss scaling); nothing is being learnt",
                "check that the labels are the input ids shifted (not all -100) and train in "
                "bf16 or with a loss scaler", numbers)
    return (f"the {which} is {value:.4f} on {length} logged steps in a row ({span}), identical "
            f"to {CONSTANT_DECIMALS} decimals: the weights are not changing",
            "check that the optimizer steps (learning rate not 0, gradients not all zero, the "
            "parameters passed to the optimizer), and that the data loader is not repeating "
            "one batch", numbers)


def _unmoved(run: list[Point]) -> bool:
    """A run of one loss that starts at a fresh model's first log (step <= `INITIAL_MAX_STEP`)
    and is still the same `UNMOVED_MIN_STEPS` steps later: a fresh model's loss always falls
    (lit-gpt issue 125: 11.0666 at iter 1 and at iter 400)."""
    first, last = run[0][0], run[-1][0]
    return len(run) >= 2 and first is not None and last is not None and \
        first <= INITIAL_MAX_STEP and last - first >= UNMOVED_MIN_STEPS


def _at_uniform(series: list[Point], which: str, vocab: int | None,
                log: TrainingLog) -> Stuck | None:
    """A loss still at about ln(vocab) over the second half of a long enough log, never having
    been well below it (that would be divergence)."""
    if vocab is None or vocab < 2 or len(series) < 2:
        return None
    steps = [s for s, _ in series if s is not None]
    if len(steps) == len(series) and not log.steps_counted:
        if max(steps) - min(steps) < STUCK_MIN_STEPS:
            return None
    elif max(len(series), log.train_records_read) < STUCK_MIN_POINTS:
        return None
    uniform = math.log(vocab)
    late = [v for _, v in series[len(series) // 2:]]
    if min(v for _, v in series) < uniform - 2 * NEAR_UNIFORM_NATS or \
            min(late) < uniform - NEAR_UNIFORM_NATS:
        return None
    last_step, last = series[-1]
    numbers: dict[str, int | float | str] = {"last_loss": last, "ln_vocab": uniform,
                                             "vocab_size": vocab, "lowest_late_loss": min(late)}
    return (f"the {which} is still {last:.4f} at {_where(last_step, len(series) - 1)}, within "
            f"{NEAR_UNIFORM_NATS} of ln(vocab) = ln({vocab:,}) = {uniform:.3f}, the loss of a "
            f"uniform guess, over the whole second half of the log: the model has learnt "
            "nothing",
            "check the learning rate (not 0, warmup not endless), that the loss is computed on "
            "shifted targets, and that the inputs are real tokens (not padding)", numbers)


def initial_loss_findings(log: TrainingLog, *, vocab_size: int | None,
                          from_scratch: bool | None) -> list[Finding]:
    """The ``initial-loss`` finding: the first loss of a run that logs its start (step <=
    `INITIAL_MAX_STEP`) far from ln(vocab). Far above needs no more; far below is judged only
    for a run known to start from scratch (a fine-tune starts low). Nothing when
    ``from_scratch`` is False."""
    if vocab_size is None or vocab_size < 2 or from_scratch is False:
        return []
    first = _first_point(log)
    if first is None:
        return []
    step, loss = first
    uniform = math.log(vocab_size)
    numbers: dict[str, int | float | str] = {"first_step": step, "first_loss": loss,
                                             "ln_vocab": uniform, "vocab_size": vocab_size,
                                             "difference": loss - uniform}
    if loss > uniform + INITIAL_ABOVE_NATS:
        return [Finding(
            code="initial-loss", severity="warning",
            message=(f"the first loss, {loss:.4f} at step {step}, is {loss - uniform:.2f} above "
                     f"ln(vocab) = ln({vocab_size:,}) = {uniform:.3f}, the loss of a uniform "
                     "guess that a freshly initialised model should start near: its first "
                     "logits are far too large"),
            fix=("initialise the weights with a small std (GPT-2: normal(0, 0.02), the residual "
                 "projections scaled by 1/sqrt(2 n_layer)) and check the vocab_size matches the "
                 "tokenizer"),
            numbers=numbers)]
    if from_scratch and loss < uniform - INITIAL_BELOW_NATS:
        return [Finding(
            code="initial-loss", severity="warning",
            message=(f"the first loss, {loss:.4f} at step {step}, is {uniform - loss:.2f} below "
                     f"ln(vocab) = ln({vocab_size:,}) = {uniform:.3f}: a freshly initialised "
                     "model cannot already predict the data, so this run did not start from "
                     "a fresh model, or its data is trivial (repeated or padded tokens), or "
                     "the vocabulary is smaller than the config says"),
            fix=("check init_from (resume or a pretrained checkpoint loads weights), the data "
                 "(not all one token) and vocab_size"),
            numbers=numbers)]
    return []


def _first_point(log: TrainingLog) -> tuple[int, float] | None:
    """The loss logged at the lowest step, when that step is at most `INITIAL_MAX_STEP`."""
    best: tuple[int, float] | None = None
    if log.steps_counted:  # the steps are records counted: the first may be step 500
        return None
    for r in log.records:
        loss = r.train_loss if r.train_loss is not None else r.val_loss
        if r.step is None or loss is None or r.step > INITIAL_MAX_STEP:
            continue
        if best is None or r.step < best[0]:
            best = (r.step, loss)
    return best
