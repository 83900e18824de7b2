"""The next run `diagnose` recommends: the config its findings call for, with exact
gradient-accumulation steps, planned on the same GPU when one is given."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import GPUSpec
from scaleplan.diagnosis.logs import TrainingLog
from scaleplan.diagnosis.progress import compute_optimal_tokens
from scaleplan.errors import ScaleplanError
from scaleplan.findings import Finding
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import NanoGPTRun
from scaleplan.model.params import count_params
from scaleplan.model.training_config import TrainingConfig
from scaleplan.planning.batching import grad_accum_steps, micro_batch_sizes
from scaleplan.planning.planner import Plan, plan
from scaleplan.scaling.tokens import chinchilla_tokens
from scaleplan.scaling.webtext import ExpectedLoss, expected_loss, is_calibrated

__all__ = ["Recommendation", "recommend"]


class Recommendation(BaseModel):
    """A concrete next run: the model, the training config with exact grad-accum steps.

    ``training`` runs ``steps_for_compute_optimal`` steps with the cosine decay matched to
    them. ``micro_batch_options`` lists (micro_batch_size, grad_accum_steps) pairs that keep
    ``tokens_per_step`` exactly, from the current micro-batch down, for when memory runs out.
    ``plan`` is `scaleplan.plan` for the new run on the diagnosed GPU when one is given (its
    micro-batch and grad-accum steps are then the ones in ``training``), else None.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: GPTConfig = Field(description="The model of the next run.")
    training: TrainingConfig = Field(description="Its training config, grad-accum steps exact "
                                     "and the schedule matched to its steps.")
    tokens_per_step: int = Field(description="Tokens per optimizer step, kept from the run.")
    micro_batch_options: tuple[tuple[int, int], ...] = Field(
        description="(micro_batch_size, grad_accum_steps) pairs that keep tokens_per_step, "
        "from the current micro-batch down.")
    nanogpt_params: int = Field(description="The new model's count as nanoGPT prints it.")
    compute_optimal_tokens: int = Field(description="Tokens the law says the new model "
                                        "should see (compute-optimal).")
    steps_for_compute_optimal: int = Field(description="Optimizer steps to see them at "
                                           "tokens_per_step.")
    expected_val_loss: float | None = Field(
        None, description="Observed final val loss + the law's change for the new model at "
        "compute-optimal tokens (the law's absolute losses do not transfer across data sets).")
    expected_val_loss_same_tokens: float | None = Field(
        None, description="The same, trained on as many tokens as the diagnosed run saw.")
    expected_loss_on_data: ExpectedLoss | None = Field(
        None, description="The new model's loss at compute-optimal tokens on the run's dataset "
        "from the calibrated web-text law, with its interval (when the dataset is calibrated).")
    changes: tuple[str, ...] = Field(description="What changes from the diagnosed run, one "
                                     "line each, in words.")
    plan: Plan | None = Field(None, description="plan() for the new run on the diagnosed GPU.")
    plan_note: str | None = Field(
        None, description="Why ``plan`` is None though a GPU was given: the planner's message "
        "(the recommended model does not fit on the GPU even at micro-batch 1, say).")


def recommend(run: NanoGPTRun, n_total: int, log: TrainingLog, spec: GPUSpec | None, law: Any,
               findings: list[Finding], data: str | None = None) -> Recommendation | None:
    """The next run the ``findings`` call for, or None when they call for no change.

    The claimed size's width and dropout 0 where the findings ask for them; the same tokens per
    step, with the micro-batch `plan` picks on ``spec`` (else the largest exact one not above
    the run's); ``max_iters`` and the LR decay set to the compute-optimal steps (``law``'s
    budget, the one `scaleplan.plan` uses: `scaleplan.diagnosis.progress.compute_optimal_tokens`;
    20 tokens per parameter only for a model too small for the law); the expected loss anchored
    to the run's own (``law``'s differences only).

    >>> from scaleplan.diagnosis.examine import diagnose
    >>> from scaleplan.model.loaders import load_nanogpt_config
    >>> from scaleplan.diagnosis.logs import read_log
    >>> run = load_nanogpt_config("t.py", text="# Model (~125M parameters)\\nn_embd = 384\\n")
    >>> log = read_log("t.log", text="step 14500: train loss 3.6415, val loss 3.5696")
    >>> diagnose(config=run, log=log).recommendation.model.n_embd
    768
    """
    cfg, t = run.model, run.training
    changes = _changes(cfg, findings)
    if not changes:
        return None
    new = cfg.replace(**changes)
    tokens_per_step = log.reported_tokens_per_step or t.tokens_per_step
    sizes = micro_batch_sizes(tokens_per_step, t.seq_len, t.world_size)
    new_total = count_params(new).total
    law_optimal = compute_optimal_tokens(count_params(new), law)
    optimal = law_optimal or chinchilla_tokens(new_total)  # 20 x N: a model too small for it
    steps = -(-optimal // tokens_per_step)
    micro, accum, planned, note = _micro_batch(new, t, sizes, tokens_per_step, spec,
                                               None if law_optimal else optimal,
                                               law)
    options = tuple((b, tokens_per_step // (b * t.seq_len * t.world_size))
                    for b in sorted(sizes, reverse=True) if b <= micro and b * 4 >= micro)
    training = t.replace(micro_batch_size=micro, grad_accum_steps=accum, max_iters=steps,
                         lr_decay_iters=steps, warmup_iters=min(t.warmup_iters, steps // 10))
    expected, expected_same = _expected_losses(log, law, n_total, new_total, optimal,
                                               tokens_per_step)
    on_data = (expected_loss(new, tokens=optimal, data=data)
               if data is not None and is_calibrated(data) else None)
    said = [f"{k}: {getattr(cfg, k)} -> {v}" for k, v in changes.items()]
    said.append("restart from iteration 0 (init_from = 'scratch'): the shapes change")
    return Recommendation(
        model=new, training=training, tokens_per_step=tokens_per_step,
        micro_batch_options=options, nanogpt_params=count_params(new).nanogpt,
        compute_optimal_tokens=optimal,
        steps_for_compute_optimal=steps, expected_val_loss=expected,
        expected_val_loss_same_tokens=expected_same, expected_loss_on_data=on_data,
        changes=tuple(said), plan=planned, plan_note=note)


# Findings that dropout > 0 makes worse: dropout only wastes capacity when a model under-fits.
_DROPOUT_FINDINGS = frozenset({"val-below-train-dropout", "plateau", "past-compute-optimal"})


def _changes(cfg: GPTConfig, findings: list[Finding]) -> dict[str, Any]:
    """The config fields the findings ask to change: the claimed size's width, dropout 0."""
    changes: dict[str, Any] = {}
    size = next((f for f in findings if f.code == "size-mismatch"), None)
    if size is not None:
        changes["n_embd"] = int(size.numbers["n_embd_for_claim"])
    if cfg.dropout > 0 and any(f.code in _DROPOUT_FINDINGS for f in findings):
        changes["dropout"] = 0.0
    return changes


def _micro_batch(new: GPTConfig, t: TrainingConfig, sizes: list[int], tokens_per_step: int,
                 spec: GPUSpec | None, total_tokens: int | None,
                 law: Any) -> tuple[int, int, Plan | None, str | None]:
    """The new run's micro-batch and grad-accum steps, its plan when there is a GPU, and why
    there is no plan when planning on that GPU failed.

    When ``tokens_per_step`` is a whole number of sequences (``sizes`` divide it), it is kept
    exactly: the micro-batch `plan` picks on ``spec``, else the largest exact one not above the
    run's. Otherwise the run's own micro-batch and steps stay. When `plan` refuses the new run
    on ``spec`` (a claimed size larger than the GPU holds: "nothing fits"), the diagnosis still
    stands: the micro-batch is chosen as without a GPU and the planner's message is the note.
    ``total_tokens`` None plans the law's compute-optimal budget (plan's own default).
    """
    if not sizes:
        return t.micro_batch_size, t.grad_accum_steps, None, None
    note = None
    if spec is not None:
        try:
            planned = plan(new, spec, tokens_per_step=tokens_per_step, total_tokens=total_tokens,
                           seq_len=t.seq_len, world_size=t.world_size, precision=t.precision,
                           law=law)
        except ScaleplanError as exc:  # the recommended run does not fit or cannot be planned
            note = f"the recommended run was not planned on the {spec.name}: {exc}"
        else:
            return planned.micro_batch_size, planned.grad_accum_steps, planned, None
    micro = max([b for b in sizes if b <= t.micro_batch_size] or [1])
    return micro, grad_accum_steps(tokens_per_step, micro, t.seq_len, t.world_size), None, note


def _expected_losses(log: TrainingLog, law: Any, n_total: int, new_total: int, optimal: int,
                     tokens_per_step: int) -> tuple[float | None, float | None]:
    """The new model's val loss at ``optimal`` tokens and at the tokens the run saw: the run's
    final val loss moved by the law's difference (None without a final val loss and a step)."""
    final, last = log.final_val_loss(), log.last_step()
    if final is None or not last:
        return None, None
    seen = last * tokens_per_step
    before = law.loss(n_total, seen)
    return (final + law.loss(new_total, optimal) - before,
            final + law.loss(new_total, seen) - before)
