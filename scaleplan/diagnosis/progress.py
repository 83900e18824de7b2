"""Findings about how far a run got and what its data allowed: overfitting, the token budget
(``under-trained``, ``past-compute-optimal``), ``repeated-data`` and ``plateau``.

The compute-optimal budget is one definition everywhere, the one `scaleplan.plan` uses:
`compute_optimal_tokens` = `chinchilla_tokens` with the scaling law as its method (the tokens
for which the model is that law's compute-optimal size; Hoffmann et al. 2022 Approach 3 for
``"chinchilla"``), with the parameters the law counts.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from scaleplan.diagnosis.datasets import KnownDataset
from scaleplan.diagnosis.logs import TrainingLog
from scaleplan.errors import ScaleplanError
from scaleplan.findings import Finding
from scaleplan.model.params import ParamCount
from scaleplan.scaling.tokens import chinchilla_tokens
from scaleplan.units import format_count

__all__ = ["EPOCHS_WARNING", "PAST_OPTIMAL_RATIO", "PLATEAU_MIN_POINTS", "UNDER_TRAINED_RATIO",
           "budget_findings", "compute_optimal_tokens", "overfitting_findings",
           "plateau_findings", "repeated_data_findings"]

Number = int | float | str

PAST_OPTIMAL_RATIO = 2.0  # over 2x the compute-optimal tokens is worth saying
UNDER_TRAINED_RATIO = 0.25  # under a quarter of the compute-optimal tokens: far below
PLATEAU_WINDOW = 0.25  # the last quarter of the run's steps
PLATEAU_RELATIVE_DROP = 0.02  # under 2% lower loss over that window is flat
PLATEAU_MIN_POINTS = 6  # fewer points are an excerpt, not a curve
PLATEAU_LAW_FRACTION = 0.5  # falling at under half the law's rate per doubling of tokens
PLATEAU_LAW_GAIN = 0.02  # or the law's best model for the same compute 2% lower
OVERFIT_RELATIVE_GAP = 0.05  # val above train by 5% of the loss
OVERFIT_NOISE = 0.005  # an evaluation's own noise: nanoGPT's 200 batches vary by ~0.5%
OVERFIT_RISE = 0.02  # val 2% above its best
OVERFIT_EVALS_AFTER_BEST = 2  # over at least two evaluations after the best
EPOCHS_WARNING = 4.0  # Muennighoff et al. 2023: up to ~4 epochs are about as good as new data


def compute_optimal_tokens(pc: ParamCount, law: Any) -> int | None:
    """The compute-optimal tokens for a model of ``pc`` under ``law``, as `scaleplan.plan`
    computes them (None when the law gives under one token: a model too small for it)."""
    n = pc.non_embedding if law.n_counts == "non_embedding" else pc.total
    try:
        return int(chinchilla_tokens(n, method=law))
    except ScaleplanError:
        return None


def _optimal_text(law: Any, pc: ParamCount, optimal: int) -> str:
    return (f"{law.name}'s compute-optimal budget for {format_count(pc.total)} parameters, "
            f"{optimal / 1e9:.3g}B tokens (the budget scaleplan.plan uses)")


def budget_findings(pc: ParamCount, law: Any, *, tokens_seen: int | None,
                    planned_tokens: int | None, finished: bool,
                    from_scratch: bool | None) -> list[Finding]:
    """``under-trained`` (a from-scratch run planned, or finished, far below the budget) and
    ``past-compute-optimal`` (tokens seen over `PAST_OPTIMAL_RATIO` x the budget)."""
    optimal = compute_optimal_tokens(pc, law)
    if optimal is None:
        return []
    out: list[Finding] = []
    numbers: dict[str, Number] = {"compute_optimal_tokens": optimal, "total_params": pc.total,
                                  "law": law.name}
    judged = tokens_seen if finished else planned_tokens
    if from_scratch and judged and judged < UNDER_TRAINED_RATIO * optimal:
        what = "has seen" if finished else "is planned for"
        out.append(Finding(
            code="under-trained", severity="warning",
            message=(f"the run {what} {judged / 1e9:.3g}B tokens, {judged / optimal:.2f}x "
                     f"{_optimal_text(law, pc, optimal)}: a smaller model would reach a lower "
                     "loss with the same compute, or this model a much lower one with more "
                     "tokens"),
            fix=(f"train for about {optimal / 1e9:.3g}B tokens (max_iters and lr_decay_iters "
                 "to match), or pick the model that is compute-optimal for your budget"),
            numbers={**numbers, "tokens": judged, "ratio": judged / optimal,
                     "finished": int(finished)}))
    if tokens_seen and tokens_seen > PAST_OPTIMAL_RATIO * optimal:
        out.append(_past_optimal(pc, law, tokens_seen, optimal, numbers))
    return out


def _past_optimal(pc: ParamCount, law: Any, tokens_seen: int, optimal: int,
                  numbers: dict[str, Number]) -> Finding:
    """``past-compute-optimal``: a warning when the law's compute-optimal model for the same
    compute is `PLATEAU_LAW_GAIN` lower, else information (a smaller model trained longer, as
    for cheaper inference, costs little loss)."""
    n = pc.non_embedding if law.n_counts == "non_embedding" else pc.total
    ratio = tokens_seen / optimal
    here = float(law.loss(n, tokens_seen))
    best = law.compute_optimal(6.0 * n * tokens_seen)  # C = 6ND (Kaplan et al. 2020, sec. 2.1)
    gain = here - float(best.loss)
    material = gain >= PLATEAU_LAW_GAIN * here
    return Finding(
        code="past-compute-optimal", severity="warning" if material else "info",
        message=(f"the run has seen {tokens_seen / 1e9:.2f}B tokens, {ratio:.1f}x "
                 f"{_optimal_text(law, pc, optimal)}. For the same compute the law's "
                 f"compute-optimal {format_count(best.n_params)} model is {gain:.3f} lower "
                 f"({100 * gain / here:.1f}% of its {here:.3f}): "
                 + ("the model's size, not its training, limits the loss" if material else
                    "a small price for a smaller model")),
        fix=("spend the compute on a larger model" if material else
             "nothing to fix unless the loss matters more than the model's size"),
        numbers={**numbers, "tokens_seen": tokens_seen, "ratio": ratio,
                 "law_gain_same_compute": gain, "compute_optimal_params": best.n_params})


def repeated_data_findings(log: TrainingLog, *, tokens_seen: int | None,
                           dataset: KnownDataset | None) -> list[Finding]:
    """``repeated-data``: more than one epoch, from the known dataset's size or the log's own
    epoch field (the Hugging Face Trainer's ``epoch``)."""
    epochs: float | None = None
    numbers: dict[str, Number] = {}
    if dataset is not None and tokens_seen:
        epochs = tokens_seen / dataset.train_tokens
        numbers = {"tokens_seen": tokens_seen, "dataset_tokens": dataset.train_tokens,
                   "dataset": dataset.name}
        how = (f"{tokens_seen / 1e9:.3g}B tokens seen over {dataset.name}'s "
               f"{format_count(dataset.train_tokens)} training tokens ({dataset.source})")
    else:
        logged = [r.epoch for r in log.records if r.epoch is not None]
        if logged:
            epochs = max(logged)
            how = "the epoch the log prints"
    if epochs is None or epochs <= 1.0:
        return []
    numbers["epochs"] = epochs
    many = epochs > EPOCHS_WARNING
    return [Finding(
        code="repeated-data", severity="warning" if many else "info",
        message=(f"the run went over its data {epochs:.2f} times ({how}). Muennighoff et al. "
                 f"2023 find up to ~{EPOCHS_WARNING:g} epochs about as good as fresh data; "
                 + ("past that, repeated tokens are worth less and less and the model "
                    "memorises them" if many else "so this is fine for now")),
        fix=("use more data (or a smaller model for this data); watch the validation loss for "
             "overfitting" if many else "nothing to change; more data helps once past ~4 epochs"),
        numbers=numbers)]


def overfitting_findings(log: TrainingLog, *, dropout: float | None) -> list[Finding]:
    """``val-below-train-dropout`` and ``overfitting`` from evaluations that carry a train-split
    loss (nanoGPT), else ``overfitting`` from validation losses alone against the training
    records (the Trainer logs ``eval_loss`` and ``loss`` in separate dicts)."""
    evals = [r for r in log.eval_records() if r.train_loss is not None]
    if evals:
        return _val_vs_train(evals, dropout)
    return _val_rising(log)


def _val_vs_train(evals: list[Any], dropout: float | None) -> list[Finding]:
    last = evals[-1]
    train, val = last.train_loss or 0.0, last.val_loss or 0.0
    numbers: dict[str, Number] = {"step": last.step if last.step is not None else -1,
                                  "train_loss": train, "val_loss": val, "gap": val - train}
    if dropout is not None:
        numbers["dropout"] = dropout
    if val < train and dropout is not None and dropout > 0:
        return [Finding(
            code="val-below-train-dropout", severity="warning",
            message=(f"validation loss {val:.4f} is below training loss {train:.4f} at step "
                     f"{last.step}: dropout={dropout} is active while training and off while "
                     "evaluating. On a large data stream a small model under-fits, and dropout "
                     "only wastes capacity."),
            fix="set dropout = 0.0", numbers=numbers)]
    best = min(evals, key=lambda r: r.val_loss or math.inf)
    if val - train > OVERFIT_RELATIVE_GAP * train and \
            val > (1 + OVERFIT_NOISE) * (best.val_loss or val):
        numbers.update(best_val_loss=best.val_loss or val,
                       best_val_step=best.step if best.step is not None else -1)
        return [Finding(
            code="overfitting", severity="warning",
            message=(f"validation loss {val:.4f} is {val - train:.4f} above training loss "
                     f"{train:.4f} and up from its best {best.val_loss:.4f} at step {best.step}:"
                     " the model is memorising its training data"),
            fix="use more (or less repeated) data, raise dropout or weight decay, or stop at the "
                "best validation step", numbers=numbers)]
    return []


def _val_rising(log: TrainingLog) -> list[Finding]:
    """Validation loss up `OVERFIT_RISE` off its best, above it at each of at least
    `OVERFIT_EVALS_AFTER_BEST` later evaluations, while the training loss went on falling."""
    positions = [(i, r.step, r.val_loss, r.epoch) for i, r in enumerate(log.records)
                 if r.kind == "eval" and r.val_loss is not None]
    if len(positions) < OVERFIT_EVALS_AFTER_BEST + 1:
        return []
    b = min(range(len(positions)), key=lambda k: positions[k][2] or math.inf)
    best_at, best_step, best_val, best_epoch = positions[b][0], positions[b][1], \
        positions[b][2] or 0.0, positions[b][3]
    after = positions[b + 1:]
    last_val = after[-1][2] or 0.0 if after else 0.0
    if len(after) < OVERFIT_EVALS_AFTER_BEST or last_val < (1 + OVERFIT_RISE) * best_val:
        return []
    falling = _train_falling(log, best_at, after[-2][0])
    if falling is None:
        return []
    before, latest = falling
    steps = None if log.steps_counted else best_step
    at = _when(steps, best_epoch, b)
    return [Finding(
        code="overfitting", severity="warning",
        message=(f"validation loss rose from its best {best_val:.4f}{at} to {last_val:.4f} "
                 f"over the next {len(after)} evaluations ({100 * (last_val / best_val - 1):.1f}%"
                 f" up) while the training loss kept falling ({before:.4f} -> {latest:.4f}, "
                 "medians of the logs around them): the model is memorising its training data"),
        fix="stop at the best evaluation (load_best_model_at_end / early stopping), use more "
            "data or fewer epochs, or raise weight decay or dropout",
        numbers={"best_val_loss": best_val, "last_val_loss": last_val,
                 "evaluations_after_best": len(after), "train_loss_before": before,
                 "train_loss_latest": latest,
                 **({"best_val_step": steps} if steps is not None else {})})]


def _when(step: int | None, epoch: float | None, index: int) -> str:
    """Where an evaluation sits: its step, else its epoch, else its number."""
    if step is not None:
        return f" at step {step}"
    return f" at epoch {epoch:g}" if epoch is not None else f" (evaluation {index + 1})"


def _train_falling(log: TrainingLog, best_at: int, late_from: int) -> tuple[float, float] | None:
    """The median training loss of the (up to 5) logs before record ``best_at`` and of the
    last (up to 5) after record ``late_from``, when the second is the lower."""
    train = [(i, r.train_loss) for i, r in enumerate(log.records)
             if r.kind == "train" and r.train_loss is not None]
    before = [v for i, v in train if i < best_at][-5:]
    latest = [v for i, v in train if i > late_from][-5:]
    if not before or not latest or median(latest) >= median(before):
        return None
    return median(before), median(latest)


def plateau_findings(law: Any, n_total: int, tokens_per_step: int,
                     log: TrainingLog) -> list[Finding]:
    """``plateau``: a loss curve flat against its own trend AND against the law.

    Judged only on a curve, not an excerpt: at least `PLATEAU_MIN_POINTS` points, the first at
    or before half the last step. Flat: the last quarter of the steps lowers the loss by under
    `PLATEAU_RELATIVE_DROP`, and falls no faster per ln(step) than the points before it (an
    annealing finish, which falls faster, is no plateau). Against the law: it falls at under
    `PLATEAU_LAW_FRACTION` of the law's rate per doubling of tokens at this size, or the law's
    compute-optimal model for the same compute is `PLATEAU_LAW_GAIN` lower (the model's size
    stops it). A curve that follows the law to the end of its schedule is no plateau.
    """
    points = _loss_points(log)
    if len(points) < PLATEAU_MIN_POINTS or points[0][0] > points[-1][0] / 2:
        return []
    end = points[-1][0]
    window = [(s, v) for s, v in points if s >= (1 - PLATEAU_WINDOW) * end]
    earlier = [(s, v) for s, v in points if s < (1 - PLATEAU_WINDOW) * end]
    if len(window) < 3 or len(earlier) < 2:
        return []
    (s0, l0), (s1, l1) = window[0], window[-1]
    drop = l0 - l1
    # a loss of 0 or below is no cross-entropy: a relative drop says nothing (and l0 divides)
    if s1 <= s0 or l0 <= 0 or drop > PLATEAU_RELATIVE_DROP * l0:
        return []
    rate, earlier_rate = -_slope_per_log_step(window), -_slope_per_log_step(earlier)
    if rate > earlier_rate:
        return []
    per_doubling = rate * math.log(2)
    D = end * tokens_per_step
    law_doubling = float(law.loss(n_total, D) - law.loss(n_total, 2 * D))
    best = law.compute_optimal(6.0 * n_total * D)  # C = 6ND (Kaplan et al. 2020, section 2.1)
    gain = float(law.loss(n_total, D) - best.loss)
    slow = per_doubling < PLATEAU_LAW_FRACTION * law_doubling
    if not slow and gain < PLATEAU_LAW_GAIN * l1:
        return []
    return [Finding(
        code="plateau", severity="warning",
        message=(f"the loss fell only {drop:.4f} ({100 * drop / l0:.1f}%) from step {s0} to "
                 f"{s1}: {per_doubling:.3f} per doubling of tokens, down from "
                 f"{earlier_rate * math.log(2):.3f} per doubling before step {s0}. {law.name} "
                 f"predicts {law_doubling:.3f} per doubling at this size, and {gain:.3f} lower "
                 f"loss for the same compute in a compute-optimal "
                 f"{format_count(best.n_params)} model"),
        fix=(f"stop this run; for the same compute train a model of about "
             f"{format_count(best.n_params)} parameters"),
        numbers={"from_step": s0, "to_step": s1, "loss_drop": drop,
                 "relative_drop": drop / l0, "drop_per_doubling": per_doubling,
                 "earlier_drop_per_doubling": earlier_rate * math.log(2),
                 "law_drop_per_doubling": law_doubling, "law_gain_same_compute": gain,
                 "compute_optimal_params": best.n_params,
                 "law_loss_floor_this_size": float(law.loss_params_limited(n_total))})]


def _loss_points(log: TrainingLog) -> list[tuple[int, float]]:
    """(step, loss) of the evaluations, or of the training steps when there are fewer than
    `PLATEAU_MIN_POINTS` evaluations; step 0 left out (its log is -inf)."""
    if log.steps_counted:
        return []
    points = [(r.step, r.val_loss) for r in log.eval_records()
              if r.step and r.val_loss is not None]
    if len(points) < PLATEAU_MIN_POINTS:
        points = [(r.step, r.train_loss) for r in log.train_records()
                  if r.step and r.train_loss is not None]
    return points


def _slope_per_log_step(points: list[tuple[int, float]]) -> float:
    """The least-squares slope of the loss against ln(step) (0 when the steps are equal)."""
    xs = [math.log(s) for s, _ in points]
    ys = [v for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
