"""nanoGPT's learning-rate schedule, and what it says about a run: `nanogpt_lr` gives the rate at
a step (train.py's ``get_lr``); `lr_findings` the findings a schedule and a log's last step
call for (``lr-min-long-before-end``, ``lr-schedule-longer-than-run``, ``lr-not-annealed``).

A schedule is only judged where it is known: from a nanoGPT config file (its settings, or
train.py's defaults it inherits), or from the rates the log prints (`printed_lr_findings`). A
log whose printed rates disagree with the config's schedule (`schedule_disagrees`) ran another
schedule, and is judged from its printed rates alone.
"""

from __future__ import annotations

import math

from scaleplan.diagnosis.logs import TrainingLog
from scaleplan.findings import Finding
from scaleplan.model.training_config import TrainingConfig

__all__ = ["LR_MATCH_TOLERANCE", "LR_MIN_FRACTION", "LR_STILL_HIGH", "LR_TAIL_FRACTION",
           "lr_findings", "nanogpt_lr", "printed_lr_findings", "schedule_disagrees"]

LR_MIN_FRACTION = 0.10  # over 10% of the run at min_lr
LR_TAIL_FRACTION = 0.90  # the schedule should have run 90% of its decay by the end
LR_STILL_HIGH = 0.5  # a printed rate still over half its peak has not been annealed
LR_MIN_PRINTED = 10  # printed rates needed to judge a schedule from them
LR_MATCH_TOLERANCE = 0.05  # printed rates within 5% of the schedule's follow it (rounding)


def nanogpt_lr(it: int, t: TrainingConfig) -> float:
    """nanoGPT's learning rate at iteration ``it`` (train.py ``get_lr``).

    Linear warmup to ``learning_rate`` over ``warmup_iters``, cosine decay to ``min_lr`` at
    ``lr_decay_iters``, ``min_lr`` after (Loshchilov & Hutter 2017, SGDR, without restarts).

    >>> t = TrainingConfig(learning_rate=6e-4, min_lr=6e-5, warmup_iters=0, lr_decay_iters=100)
    >>> round(nanogpt_lr(50, t), 6), nanogpt_lr(200, t)
    (0.00033, 6e-05)
    """
    if not t.decay_lr:
        return t.learning_rate
    if it < t.warmup_iters:
        return t.learning_rate * (it + 1) / (t.warmup_iters + 1)
    if it > t.lr_decay_iters or t.lr_decay_iters <= t.warmup_iters:
        return t.min_lr
    ratio = (it - t.warmup_iters) / (t.lr_decay_iters - t.warmup_iters)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - t.min_lr)


def lr_findings(t: TrainingConfig, last: int | None) -> list[Finding]:
    """What nanoGPT's schedule does to a run of ``t`` whose log ends at step ``last``: the
    learning rate at min_lr long before the end, a cosine longer than the run, or a log that
    stops before the rate has come down. Nothing when ``t.decay_lr`` is off.

    >>> t = TrainingConfig(max_iters=10_000, lr_decay_iters=5_000)
    >>> [f.code for f in lr_findings(t, last=10_000)]
    ['lr-min-long-before-end']
    """
    if not t.decay_lr:
        return []
    found = (_lr_min_long(t), _lr_longer_than_run(t), _lr_not_annealed(t, last))
    return [f for f in found if f is not None]


def _lr_min_long(t: TrainingConfig) -> Finding | None:
    """The cosine reaches min_lr well before max_iters."""
    at_min = t.max_iters - t.lr_decay_iters
    if at_min <= LR_MIN_FRACTION * t.max_iters:
        return None
    return Finding(
        code="lr-min-long-before-end", severity="warning",
        message=(f"the learning rate reaches min_lr={t.min_lr:g} at lr_decay_iters="
                 f"{t.lr_decay_iters} and stays there for the last {at_min} of max_iters="
                 f"{t.max_iters} steps ({100 * at_min / t.max_iters:.0f}% of the run)"),
        fix=f"set lr_decay_iters = max_iters = {t.max_iters} (Hoffmann et al. 2022 match "
            "the cosine length to the run)",
        numbers={"lr_decay_iters": t.lr_decay_iters, "max_iters": t.max_iters,
                 "steps_at_min_lr": at_min, "fraction_at_min_lr": at_min / t.max_iters})


def _lr_longer_than_run(t: TrainingConfig) -> Finding | None:
    """The cosine is still decaying when the run ends (never with `_lr_min_long`: the schedule
    cannot both end before 90% of the run and last past 1/0.9 of it)."""
    if t.lr_decay_iters <= t.max_iters / LR_TAIL_FRACTION:
        return None
    lr_end = nanogpt_lr(t.max_iters, t)
    return Finding(
        code="lr-schedule-longer-than-run", severity="warning",
        message=(f"lr_decay_iters={t.lr_decay_iters} is longer than max_iters="
                 f"{t.max_iters}: the run ends at lr {lr_end:.3g}, not min_lr={t.min_lr:g}; "
                 "a cosine cycle longer than the run costs loss (Hoffmann et al. 2022, "
                 "App. B)"),
        fix=f"set lr_decay_iters = max_iters = {t.max_iters}",
        numbers={"lr_decay_iters": t.lr_decay_iters, "max_iters": t.max_iters,
                 "lr_at_end": lr_end})


def _lr_not_annealed(t: TrainingConfig, last: int | None) -> Finding | None:
    """The log stops while the learning rate is still high."""
    if last is None or last >= LR_TAIL_FRACTION * min(t.lr_decay_iters, t.max_iters):
        return None
    lr_now = nanogpt_lr(last, t)
    return Finding(
        code="lr-not-annealed", severity="info",
        message=(f"the log ends at step {last}, {100 * last / t.lr_decay_iters:.1f}% of "
                 f"lr_decay_iters={t.lr_decay_iters}: the learning rate is still "
                 f"{lr_now:.3g} ({100 * lr_now / t.learning_rate:.0f}% of its peak), so the "
                 "loss has not had the drop that decaying it brings"),
        fix="set max_iters and lr_decay_iters to the steps you will actually run",
        numbers={"last_step": last, "lr_decay_iters": t.lr_decay_iters,
                 "learning_rate_now": lr_now, "fraction_of_peak": lr_now / t.learning_rate})


def printed_lr_findings(log: TrainingLog) -> list[Finding]:
    """``lr-not-annealed`` judged from the learning rates the log prints (not from a schedule
    assumed for it): the last printed rate still above `LR_STILL_HIGH` of the highest.

    >>> from scaleplan.diagnosis.logs import read_log
    >>> log = read_log("t.log", text="".join(f"{{'loss': 2.5, 'learning_rate': {lr}}}\\n"
    ...                for lr in (1e-05, 3e-05, 5e-05, 5e-05, 5e-05, 5e-05, 4.9e-05, 4.8e-05,
    ...                           4.7e-05, 4.6e-05)))
    >>> [f.code for f in printed_lr_findings(log)]
    ['lr-not-annealed']
    >>> printed_lr_findings(read_log("t.log", text="".join(
    ...     f"{{'loss': 2.5, 'learning_rate': {k}e-06}}\\n" for k in range(1, 11))))
    []
    """
    rates = [(r.step, r.learning_rate) for r in log.records if r.learning_rate is not None]
    if len(rates) < LR_MIN_PRINTED:  # a few lines say nothing of a schedule
        return []
    peak = max(lr for _, lr in rates)
    step, last = rates[-1]
    if peak <= 0 or last <= LR_STILL_HIGH * peak:
        return []
    if last == peak > rates[0][1]:  # still rising: the log ends in warm-up, too early to judge
        return []
    at = f" at step {step}" if step is not None and not log.steps_counted else ""
    return [Finding(
        code="lr-not-annealed", severity="info",
        message=(f"the last learning rate the log prints{at} is {last:.3g}, "
                 f"{100 * last / peak:.0f}% of the highest it prints ({peak:.3g}): the log ends "
                 "before the rate has come down, so the loss has not had the drop that "
                 "decaying it brings"),
        fix="decay the learning rate to about a tenth of its peak by the last step (set the "
            "schedule's length to the steps you will actually run)",
        numbers={"learning_rate_now": last, "peak_learning_rate": peak,
                 "fraction_of_peak": last / peak, "printed_rates": len(rates)})]


def schedule_disagrees(t: TrainingConfig, log: TrainingLog) -> tuple[int, float, float] | None:
    """The first printed learning rate (at a known step) more than `LR_MATCH_TOLERANCE` away
    from nanoGPT's schedule for ``t``, as (step, printed, scheduled); None when they agree or
    the log prints none."""
    if log.steps_counted:
        return None
    for r in log.records:
        if r.learning_rate is None or r.step is None:
            continue
        expected = nanogpt_lr(r.step, t)
        if abs(r.learning_rate - expected) > LR_MATCH_TOLERANCE * max(expected, 1e-12):
            return r.step, r.learning_rate, expected
    return None
