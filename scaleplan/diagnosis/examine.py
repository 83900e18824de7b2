"""Read a training log, and the config it ran, and say what is wrong, with numbers.

`diagnose` checks a run against exact arithmetic (parameter counts, tokens seen), a scaling law
(Hoffmann et al. 2022 by default, or the web-text law of the run's dataset), the GPU's real
peak, and the learning-rate schedule where it is known. Each `Finding` has a stable ``code``, a
severity, the numbers behind it and the fix. The codes, in the order they come:

- ``size-mismatch``: the size the config claims vs `count_params` (nanoGPT's count);
- ``params-log-mismatch``: the log printed another parameter count than the config gives;
- ``divergence``: a NaN or inf loss or gradient norm, a spike far above the recent loss, or a
  jump back to about ln(vocab) (`scaleplan.diagnosis.divergence`);
- ``stuck``: a loss constant over many steps, repeated zeros, or one left at ln(vocab);
- ``initial-loss``: a first loss far from ln(vocab) for a run from scratch;
- ``val-below-train-dropout``: validation loss below training loss while dropout > 0;
- ``overfitting``: validation loss rising off its best while the training loss falls;
- ``under-trained``: a from-scratch run far below the compute-optimal tokens;
- ``past-compute-optimal``: tokens seen far past them (`scaleplan.diagnosis.progress`, one
  budget: the one `scaleplan.plan` uses);
- ``repeated-data``: more than one epoch of a dataset of known size, or by the log's epochs;
- ``plateau``: a curve flat against its own trend and against the law, on a whole curve only;
- ``batch-size-changed``: the tokens per step the log states changed during the run;
- ``throughput``: tokens/s and MFU from step times, when the log prints no MFU;
- ``mfu-reference-gpu``: nanoGPT's printed MFU (relative to an A100) vs the real MFU;
- ``inductor-small-gpu``: the "Not enough SMs" warning explained
  (`scaleplan.diagnosis.utilisation`);
- ``lr-min-long-before-end``, ``lr-schedule-longer-than-run``, ``lr-not-annealed``: facts
  from the schedule, only where it is known (`scaleplan.diagnosis.schedule`).

Without a config (or with one scaleplan cannot model) the log alone is diagnosed, and
`Diagnosis.notes` says which findings needed the model. The `Recommendation` is a concrete next
config with the exact gradient-accumulation steps.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import GPUSpec
from scaleplan.diagnosis.context import (
    ConfigInput,
    RunContext,
    fresh_start,
    gpu_or_note,
    load_run,
    vocab_for_checks,
    with_dataset_vocab,
)
from scaleplan.diagnosis.datasets import KnownDataset, known_dataset
from scaleplan.diagnosis.divergence import (
    divergence_findings,
    initial_loss_findings,
    stuck_findings,
)
from scaleplan.diagnosis.logs import TrainingLog, read_log
from scaleplan.diagnosis.progress import (
    budget_findings,
    overfitting_findings,
    plateau_findings,
    repeated_data_findings,
)
from scaleplan.diagnosis.recommend import Recommendation, recommend
from scaleplan.diagnosis.schedule import (
    lr_findings,
    nanogpt_lr,
    printed_lr_findings,
    schedule_disagrees,
)
from scaleplan.diagnosis.utilisation import utilisation_findings
from scaleplan.findings import Finding, Severity
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import NanoGPTRun, load_nanogpt_config  # noqa: F401 (examples)
from scaleplan.model.params import count_params
from scaleplan.model.training_config import TrainingConfig
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.webtext import law_for_data
from scaleplan.units import format_count

__all__ = ["Diagnosis", "Finding", "Recommendation", "Severity", "diagnose", "nanogpt_lr"]

Number = int | float | str

SIZE_TOLERANCE = 0.10  # a claimed size within 10% of the count is "about right"
_WIDTH_MULTIPLE = 64  # widths are kept to multiples of 64 (tensor-core friendly, as GPT-2's 768)
_ANNEALED = 0.2  # a printed learning rate at a fifth of its peak: the schedule has ended
# Findings whose fix points at the recommendation, when there is one.
_POINT_AT_RECOMMENDATION = frozenset({"plateau", "past-compute-optimal"})


class Diagnosis(BaseModel):
    """What `diagnose` found: the findings in order, and a recommended next run.

    >>> run = load_nanogpt_config("train.py", text="# Model (~125M parameters)\\nn_embd = 384\\n")
    >>> log = read_log("train.log", text="step 14500: train loss 3.6415, val loss 3.5696\\n")
    >>> d = diagnose(config=run, log=log)
    >>> d.nanogpt_params, d.recommendation is not None
    (40560000, True)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    findings: tuple[Finding, ...] = Field(
        description="What the config and the log show, most severe first (see `Finding`).")
    recommendation: Recommendation | None = Field(
        description="The next run to make (model, tokens, settings), or None when the inputs "
        "give nothing to recommend from.")
    nanogpt_params: int | None = Field(None, description="nanoGPT's count of the model; None "
                                       "when the log is diagnosed without a model.")
    total_params: int | None = Field(None, description="Every parameter of the model, the "
                                     "position table included (`count_params`), or None.")
    tokens_per_step: int | None = Field(
        description="Tokens per optimizer step, from the config or the log (None if neither "
        "says).")
    tokens_seen: int | None = Field(
        description="Tokens trained on by the last step the log records (None if unknown).")
    gpu: str | None = Field(description="The GPU the run used, as named to diagnose (None "
                            "when not given).")
    law: str = Field(description="The scaling law the expected losses come from (a "
                     "`scaling_law` name).")
    notes: tuple[str, ...] = Field((), description="What could not be done, and why: e.g. the "
                                   "recommended run could not be planned on the GPU.")

    def codes(self) -> tuple[str, ...]:
        """The codes of the findings, in order.

        >>> run = load_nanogpt_config("t.py", text="# Model (~125M parameters)\\nn_embd = 384\\n")
        >>> log = read_log("t.log", text="step 14500: train loss 3.6415, val loss 3.5696")
        >>> diagnose(config=run, log=log).codes()
        ('size-mismatch', 'past-compute-optimal', 'lr-not-annealed')
        """
        return tuple(f.code for f in self.findings)

    def finding(self, code: str) -> Finding | None:
        """The finding with ``code``, if any.

        >>> run = load_nanogpt_config("t.py", text="# Model (~125M parameters)\\nn_embd = 384\\n")
        >>> d = diagnose(config=run, log=read_log("t.log", text="step 0: train loss 10.99"))
        >>> d.finding("size-mismatch").numbers["nanogpt_params"], d.finding("plateau")
        (40560000, None)
        """
        return next((f for f in self.findings if f.code == code), None)


def diagnose(
    *,
    config: ConfigInput | None = None,
    log: TrainingLog | str | os.PathLike[str],
    gpu: str | GPUSpec | None = None,
    training: TrainingConfig | None = None,
    claimed_params: int | None = None,
    law: str | None = None,
    data: str | None = None,
    vocab_size: int | None = None,
) -> Diagnosis:
    """Diagnose a run from its log, and its config when given.

    ``config`` is a nanoGPT config file (parsed, never executed), a Hugging Face
    ``config.json``, a `NanoGPTRun`, or a `GPTConfig` (then pass ``training`` and
    ``claimed_params`` if known); None diagnoses the log alone. ``gpu`` is the GPU the run used
    (``"RTX 4070"``); without it, or with a GPU scaleplan does not know, the GPU findings are
    skipped (a note says which). ``data`` is the dataset trained on (default: a nanoGPT file's
    ``dataset``): when published runs calibrate it (`scaleplan.scaling.webtext`), the budget,
    the plateau check and the recommendation use its web-text law; ``law`` names another law
    (default: that one, else Chinchilla's). ``vocab_size`` sets the vocabulary of the ln(vocab)
    checks (default: the model's, or the dataset's for a character-level one).

    >>> run = load_nanogpt_config("cfg.py", text="n_embd = 768\\ndropout = 0.1\\n"
    ...                           "batch_size = 16\\ngradient_accumulation_steps = 32\\n")
    >>> log = read_log("train.log", text="step 100: train loss 5.1, val loss 5.0\\n")
    >>> diagnose(config=run, log=log).codes()
    ('val-below-train-dropout', 'lr-not-annealed')
    >>> diagnose(log=log).codes(), diagnose(log=log).notes[0][:36]
    ((), 'no model config: size-mismatch, val-')
    """
    notes: list[str] = []
    the_log = log if isinstance(log, TrainingLog) else read_log(log)
    ctx = load_run(config, training, claimed_params, notes)
    spec = gpu_or_note(gpu, notes)
    dataset_name = data if data is not None else (ctx.run.dataset if ctx.run else None)
    with_dataset_vocab(ctx, known_dataset(dataset_name), notes)
    run = ctx.run
    the_law = scaling_law(law if law is not None else law_for_data(dataset_name))
    vocab = vocab_for_checks(run, dataset_name, vocab_size, notes)
    if ctx.from_scratch is None:
        ctx.from_scratch = fresh_start(the_log, vocab)
    tokens_per_step = the_log.reported_tokens_per_step or \
        (run.training.tokens_per_step if run else None)
    tokens_seen = _tokens_seen(the_log, tokens_per_step)
    ctx.schedule_known = ctx.schedule_known and _schedule_matches(ctx, the_log, notes)
    findings = _findings(ctx, the_log, spec, the_law, vocab, tokens_per_step, tokens_seen,
                         known_dataset(dataset_name))
    if run is None:
        return Diagnosis(findings=tuple(findings), recommendation=None,
                         tokens_per_step=tokens_per_step, tokens_seen=tokens_seen,
                         gpu=spec.name if spec else None, law=the_law.name, notes=tuple(notes))
    pc = count_params(run.model)
    rec = recommend(run, pc.total, the_log, spec, the_law, findings, dataset_name)
    if rec is not None and rec.plan_note:
        notes.append(rec.plan_note)
    return Diagnosis(findings=_pointing_at(findings, rec), recommendation=rec,
                     nanogpt_params=pc.nanogpt, total_params=pc.total,
                     tokens_per_step=tokens_per_step, tokens_seen=tokens_seen,
                     gpu=spec.name if spec else None, law=the_law.name, notes=tuple(notes))


def _findings(ctx: RunContext, log: TrainingLog, spec: GPUSpec | None, law: Any,
              vocab: int | None, tokens_per_step: int | None, tokens_seen: int | None,
              dataset: KnownDataset | None) -> list[Finding]:
    """Every finding, in the order of the module docstring's list."""
    run = ctx.run
    findings: list[Finding] = []
    if run is not None:
        findings += _size(run, count_params(run.model).nanogpt, log)
    findings += divergence_findings(log, vocab_size=vocab)
    findings += stuck_findings(log, vocab_size=vocab)
    findings += initial_loss_findings(log, vocab_size=vocab, from_scratch=ctx.from_scratch)
    findings += overfitting_findings(log, dropout=run.model.dropout if run else None)
    findings += _model_findings(ctx, log, law, tokens_per_step, tokens_seen, dataset,
                                overfitting=any(f.code == "overfitting" for f in findings))
    findings += _batch_size_changed(log)
    findings += utilisation_findings(log, spec, model=run.model if run else None,
                                     training=run.training if run else None,
                                     tokens_per_step=tokens_per_step)
    findings += _lr(ctx, log)
    return findings


def _model_findings(ctx: RunContext, log: TrainingLog, law: Any, tokens_per_step: int | None,
                    tokens_seen: int | None, dataset: KnownDataset | None, *,
                    overfitting: bool) -> list[Finding]:
    """The findings that weigh the log against the model: the budget, repeated data, the
    plateau (repeated data needs no model: the log's epochs may say it). A run that overfits
    or repeats its data many times has no plateau: its loss is held up by its data, and a
    larger model (the plateau's fix) would make that worse."""
    run = ctx.run
    out: list[Finding] = []
    if run is not None:
        pc = count_params(run.model)
        t = run.training
        planned = t.max_iters * (tokens_per_step or t.tokens_per_step) \
            if ctx.schedule_known else None
        out += budget_findings(pc, law, tokens_seen=tokens_seen, planned_tokens=planned,
                               finished=_finished(ctx, log), from_scratch=ctx.from_scratch)
    repeated = repeated_data_findings(log, tokens_seen=tokens_seen, dataset=dataset)
    if repeated:  # more tokens of data it already repeats is no cure: no under-trained
        out = [f for f in out if f.code != "under-trained"]
    out += repeated
    data_bound = overfitting or any(f.severity == "warning" for f in repeated)
    if run is not None and tokens_seen and tokens_per_step and not data_bound:
        out += plateau_findings(law, count_params(run.model).total, tokens_per_step, log)
    return out


def _finished(ctx: RunContext, log: TrainingLog) -> bool:
    """Whether the log reaches the end of its run: nanoGPT's max_iters (a known schedule), or
    printed learning rates decayed to a fifth of their peak."""
    last = log.last_step()
    if ctx.run is not None and ctx.schedule_known and last is not None and \
            not log.steps_counted and last >= ctx.run.training.max_iters:
        return True
    rates = [r.learning_rate for r in log.records if r.learning_rate is not None]
    return bool(rates) and max(rates) > 0 and rates[-1] <= _ANNEALED * max(rates)


def _lr(ctx: RunContext, log: TrainingLog) -> list[Finding]:
    """The schedule's findings: from the printed rates when the log prints them, from the
    config's nanoGPT schedule when it is known (and not contradicted by the printed rates)."""
    printed = printed_lr_findings(log)
    printed_any = any(r.learning_rate is not None for r in log.records)
    if not ctx.schedule_known or ctx.run is None:
        return printed
    configured = lr_findings(ctx.run.training, log.last_step())
    if printed_any:  # the log's own rates say whether it annealed
        configured = [f for f in configured if f.code != "lr-not-annealed"]
        return [*configured, *printed]
    return configured


def _schedule_matches(ctx: RunContext, log: TrainingLog, notes: list[str]) -> bool:
    """Whether the printed learning rates (if any) follow the config's nanoGPT schedule."""
    differs = None if ctx.run is None else schedule_disagrees(ctx.run.training, log)
    if differs is None:
        return True
    step, printed, expected = differs
    notes.append(f"the log prints learning rate {printed:.3g} at step {step} where the config's "
                 f"nanoGPT schedule gives {expected:.3g}: the run used another schedule, so "
                 "the lr findings are judged from the printed rates only")
    return False


def _tokens_seen(log: TrainingLog, tokens_per_step: int | None) -> int | None:
    """Tokens over the log's steps: each stretch at the tokens per step the log stated for it
    (`TrainingLog.tokens_per_step_changes`), else the last step x ``tokens_per_step``. None
    when the steps are records counted, not steps."""
    last = log.last_step()
    if last is None or log.steps_counted:
        return None
    changes = [c for c in log.tokens_per_step_changes if c[0] <= last]
    if len(changes) > 1:
        bounds = [step for step, _ in changes[1:]] + [last]
        first = changes[0][0] * changes[0][1]  # before the first statement: its batch
        return first + sum((end - step) * tps
                           for (step, tps), end in zip(changes, bounds, strict=True))
    return None if tokens_per_step is None else last * tokens_per_step


def _batch_size_changed(log: TrainingLog) -> list[Finding]:
    values = [tps for _, tps in log.tokens_per_step_changes]
    if len(set(values)) < 2:
        return []
    said = ", ".join(f"{tps:,} from step {step}" for step, tps in log.tokens_per_step_changes)
    return [Finding(
        code="batch-size-changed", severity="warning",
        message=(f"the tokens per step the log states changed during the run ({said}): steps "
                 "no longer measure tokens, and a learning rate and schedule set for one batch "
                 "size are off for the other (a run resumed with other settings?)"),
        fix=("resume with the batch size the run started with, or rescale the learning rate "
             "and set the schedule in tokens"),
        numbers={"changes": len(values), "first_tokens_per_step": values[0],
                 "last_tokens_per_step": values[-1]})]


def _pointing_at(findings: list[Finding], rec: Recommendation | None) -> tuple[Finding, ...]:
    """The findings, those whose fix the recommendation spells out pointing at it."""
    if rec is None:
        return tuple(findings)
    return tuple(f.model_copy(update={"fix": f"{f.fix} (see the recommendation)"})
                 if f.code in _POINT_AT_RECOMMENDATION and f.severity == "warning" else f
                 for f in findings)


def _size(run: NanoGPTRun, nanogpt: int, log: TrainingLog) -> list[Finding]:
    if not run.vocab_known:  # the count is only a guess (a note says so): claim no mismatch
        return []
    out = []
    claimed = run.claimed_params
    if claimed and abs(claimed / nanogpt - 1) > SIZE_TOLERANCE:
        cfg = run.model
        width = _width_for(cfg, claimed)
        at_width = count_params(cfg.replace(n_embd=width)).nanogpt
        out.append(Finding(
            code="size-mismatch", severity="error",
            message=(f"the config claims ~{format_count(claimed)} parameters "
                     f"({run.claimed_params_text!r}) but n_layer={cfg.n_layer}, "
                     f"n_embd={cfg.n_embd} has {format_count(nanogpt)} "
                     f"(nanoGPT's count): the claim is {claimed / nanogpt:.2f}x the real size. "
                     "Most parameters sit in matrices that grow with n_embd squared."),
            fix=(f"set n_embd={width} ({format_count(at_width)}) for the claimed size, or fix "
                 "the comment"),
            numbers={"claimed_params": claimed, "nanogpt_params": nanogpt,
                     "ratio": claimed / nanogpt, "n_embd": cfg.n_embd,
                     "n_embd_for_claim": width,
                     "params_at_n_embd_for_claim": at_width}))
    if log.reported_params and log.format == "nanogpt" and \
            abs(log.reported_params - nanogpt) > 0.01e6:  # printed with 2 decimals of millions
        out.append(Finding(
            code="params-log-mismatch", severity="warning",
            message=f"the log printed {log.reported_params_text!r} but the config gives "
                    f"{format_count(nanogpt)}: the log and the config are not from the same run",
            fix="pass the config file the run was started with",
            numbers={"reported_params": log.reported_params, "nanogpt_params": nanogpt}))
    return out


def _width_for(cfg: GPTConfig, target: int) -> int:
    """The n_embd (a multiple of n_head and 64) whose nanoGPT count is nearest ``target``."""
    step = math.lcm(cfg.n_head, _WIDTH_MULTIPLE)
    best, best_err = cfg.n_embd, math.inf
    for k in range(1, 1000):
        n = count_params(cfg.replace(n_embd=k * step)).nanogpt
        if abs(n - target) < best_err:
            best, best_err = k * step, abs(n - target)
        if n > target:
            break
    return best


