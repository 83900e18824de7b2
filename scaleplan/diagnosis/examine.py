"""Read a training config and its log, and say what is wrong, with numbers.

`diagnose` checks a run against exact arithmetic (parameter counts, tokens seen), a scaling law
(Hoffmann et al. 2022 by default), the GPU's real peak, and nanoGPT's learning-rate schedule.
Each `Finding` has a stable ``code``, a severity, the numbers behind it and the fix:

- ``size-mismatch``: the size the config claims vs `count_params` (nanoGPT's count);
- ``params-log-mismatch``: the log printed another parameter count than the config gives;
- ``val-below-train-dropout``: validation loss below training loss while dropout > 0;
- ``overfitting``: validation loss well above training loss and rising off its best;
- ``past-compute-optimal``: tokens seen vs the compute-optimal budget (20 tokens/parameter);
- ``plateau``: the loss barely fell over the last quarter of the run; compared with what the law
  predicts for more tokens at this size and for the best model at the same compute;
- ``mfu-reference-gpu``: nanoGPT's printed MFU (relative to an A100) vs the real MFU;
- ``inductor-small-gpu``: the "Not enough SMs" warning explained;
- ``lr-not-annealed``, ``lr-min-long-before-end``, ``lr-schedule-longer-than-run``: facts from
  nanoGPT's cosine schedule.

The `Recommendation` is a concrete next config with the exact gradient-accumulation steps.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import BaseModel, ConfigDict

from scaleplan.compute.hardware import INDUCTOR_MIN_SMS, GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.throughput import NANOGPT_PEAK_FLOPS, from_nanogpt_mfu
from scaleplan.diagnosis.logs import TrainingLog, read_log
from scaleplan.diagnosis.recommend import Recommendation, recommend
from scaleplan.findings import Finding, Severity
from scaleplan.model.config import GPTConfig, TrainingConfig
from scaleplan.model.loaders import NanoGPTRun, load_nanogpt_config
from scaleplan.model.params import count_params
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.tokens import chinchilla_tokens
from scaleplan.units import format_count

__all__ = ["Diagnosis", "Finding", "Recommendation", "Severity", "diagnose", "nanogpt_lr"]

Number = int | float | str

SIZE_TOLERANCE = 0.10  # a claimed size within 10% of the count is "about right"
PAST_OPTIMAL_RATIO = 2.0  # over 2x the compute-optimal tokens is worth saying
PLATEAU_WINDOW = 0.25  # the last quarter of the run's steps
PLATEAU_RELATIVE_DROP = 0.02  # under 2% lower loss over that window is a plateau
OVERFIT_RELATIVE_GAP = 0.05  # val above train by 5% of the loss
LR_MIN_FRACTION = 0.10  # over 10% of the run at min_lr
LR_TAIL_FRACTION = 0.90  # the schedule should have run 90% of its decay by the end
_WIDTH_MULTIPLE = 64  # widths are kept to multiples of 64 (tensor-core friendly, as GPT-2's 768)


class Diagnosis(BaseModel):
    """What `diagnose` found: the findings in order, and a recommended next run.

    >>> run = load_nanogpt_config("train.py", text="# Model (~125M parameters)\\nn_embd = 384\\n")
    >>> log = read_log("train.log", text="step 14500: train loss 3.6415, val loss 3.5696\\n")
    >>> d = diagnose(config=run, log=log)
    >>> d.nanogpt_params, d.recommendation is not None
    (40560000, True)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    findings: tuple[Finding, ...]
    recommendation: Recommendation | None
    nanogpt_params: int
    total_params: int
    tokens_per_step: int | None
    tokens_seen: int | None
    gpu: str | None
    law: str

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


ConfigInput = NanoGPTRun | GPTConfig | str | os.PathLike[str]


def diagnose(
    *,
    config: ConfigInput,
    log: TrainingLog | str | os.PathLike[str],
    gpu: str | GPUSpec | None = None,
    training: TrainingConfig | None = None,
    claimed_params: int | None = None,
    law: str = "chinchilla",
) -> Diagnosis:
    """Diagnose a run from its config and its log.

    ``config`` is a nanoGPT config file (parsed, never executed), a `NanoGPTRun`, or a
    `GPTConfig` (then pass ``training`` and ``claimed_params`` if known). ``gpu`` is the GPU the
    run used (``"RTX 4070"``); without it the GPU findings are skipped.

    >>> run = load_nanogpt_config("cfg.py", text="n_embd = 768\\ndropout = 0.1\\n"
    ...                           "batch_size = 16\\ngradient_accumulation_steps = 32\\n")
    >>> log = read_log("train.log", text="step 100: train loss 5.1, val loss 5.0\\n")
    >>> diagnose(config=run, log=log).codes()
    ('val-below-train-dropout', 'lr-not-annealed')
    """
    run = _load_config(config, training, claimed_params)
    cfg, t = run.model, run.training
    the_log = log if isinstance(log, TrainingLog) else read_log(log)
    spec = None if gpu is None else lookup_gpu(gpu)
    the_law = scaling_law(law)
    pc = count_params(cfg)
    tokens_per_step = the_log.reported_tokens_per_step or (t.tokens_per_step if t else None)
    last = the_log.last_step()
    tokens_seen = None if tokens_per_step is None or last is None else last * tokens_per_step

    findings: list[Finding] = []
    findings += _size(run, pc.nanogpt, the_log)
    findings += _val_vs_train(cfg, the_log)
    if tokens_seen:
        findings += _budget(pc.total, tokens_seen)
        findings += _plateau(the_law, pc.total, tokens_per_step or 0, the_log)
    findings += _gpu_findings(the_log, spec)
    if t is not None:
        findings += _lr_facts(t, last)
    rec = recommend(run, pc.total, the_log, spec, the_law, findings)
    return Diagnosis(findings=tuple(findings), recommendation=rec, nanogpt_params=pc.nanogpt,
                     total_params=pc.total, tokens_per_step=tokens_per_step,
                     tokens_seen=tokens_seen, gpu=spec.name if spec else None, law=the_law.name)


def _load_config(config: ConfigInput, training: TrainingConfig | None,
                 claimed: int | None) -> NanoGPTRun:
    if isinstance(config, NanoGPTRun):
        return config
    if isinstance(config, GPTConfig):
        return NanoGPTRun(model=config, training=training or TrainingConfig(),
                          claimed_params=claimed, source=None)
    if str(config).endswith(".json"):
        from scaleplan.model.loaders import from_hf

        return NanoGPTRun(model=from_hf(config), training=training or TrainingConfig(),
                          claimed_params=claimed, source=str(config))
    return load_nanogpt_config(config)


def _size(run: NanoGPTRun, nanogpt: int, log: TrainingLog) -> list[Finding]:
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


def _val_vs_train(cfg: GPTConfig, log: TrainingLog) -> list[Finding]:
    evals = [r for r in log.eval_records() if r.train_loss is not None]
    if not evals:
        return []
    last = evals[-1]
    train, val = last.train_loss or 0.0, last.val_loss or 0.0
    numbers: dict[str, Number] = {"step": last.step if last.step is not None else -1,
                                  "train_loss": train, "val_loss": val, "gap": val - train,
                                  "dropout": cfg.dropout}
    if val < train and cfg.dropout > 0:
        return [Finding(
            code="val-below-train-dropout", severity="warning",
            message=(f"validation loss {val:.4f} is below training loss {train:.4f} at step "
                     f"{last.step}: dropout={cfg.dropout} is active while training and off while "
                     "evaluating. On a large data stream a small model under-fits, and dropout "
                     "only wastes capacity."),
            fix="set dropout = 0.0", numbers=numbers)]
    best = min(evals, key=lambda r: r.val_loss or math.inf)
    if val - train > OVERFIT_RELATIVE_GAP * train and val > (best.val_loss or val):
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


def _budget(n_total: int, tokens_seen: int) -> list[Finding]:
    optimal = chinchilla_tokens(n_total)
    ratio = tokens_seen / optimal
    if ratio <= PAST_OPTIMAL_RATIO:
        return []
    return [Finding(
        code="past-compute-optimal", severity="warning",
        message=(f"the run has seen {tokens_seen / 1e9:.2f}B tokens; at 20 tokens per parameter "
                 f"(Hoffmann et al. 2022, Table 3) a {format_count(n_total)} model is "
                 f"compute-optimal near {optimal / 1e9:.2f}B: {ratio:.1f}x past it, so the "
                 "model's size, not its training, limits the loss"),
        fix="spend the compute on a larger model (see the recommendation)",
        numbers={"tokens_seen": tokens_seen, "compute_optimal_tokens": optimal,
                 "ratio": ratio, "total_params": n_total})]


def _plateau(law: Any, n_total: int, tokens_per_step: int, log: TrainingLog) -> list[Finding]:
    points = [(r.step, r.val_loss) for r in log.eval_records() if r.step]
    if len(points) < 3:
        points = [(r.step, r.train_loss) for r in log.train_records() if r.step]
    if len(points) < 3:
        return []
    end = points[-1][0]
    window = [(s, v) for s, v in points if s >= (1 - PLATEAU_WINDOW) * end]
    if len(window) < 3:
        window = points[-3:]
    (s0, l0), (s1, l1) = window[0], window[-1]
    assert l0 is not None and l1 is not None
    drop = l0 - l1
    if s1 <= s0 or drop > PLATEAU_RELATIVE_DROP * l0:
        return []
    xs = [math.log(s) for s, _ in window]
    ys = [float(v or 0.0) for _, v in window]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)
    D = end * tokens_per_step
    per_doubling = -slope * math.log(2)
    law_doubling = law.loss(n_total, D) - law.loss(n_total, 2 * D)
    best = law.compute_optimal(6.0 * n_total * D)  # C = 6ND (Kaplan et al. 2020, section 2.1)
    gain = law.loss(n_total, D) - best.loss
    return [Finding(
        code="plateau", severity="warning",
        message=(f"the loss fell only {drop:.4f} ({100 * drop / l0:.1f}%) from step {s0} to "
                 f"{s1}: {per_doubling:.3f} per doubling of tokens. {law.name} predicts "
                 f"{law_doubling:.3f} per doubling at this size, and {gain:.3f} lower loss for "
                 f"the same compute in a compute-optimal {format_count(best.n_params)} model"),
        fix="stop this run; train a larger model (see the recommendation)",
        numbers={"from_step": s0, "to_step": s1, "loss_drop": drop,
                 "relative_drop": drop / l0, "drop_per_doubling": per_doubling,
                 "law_drop_per_doubling": law_doubling, "law_gain_same_compute": gain,
                 "compute_optimal_params": best.n_params,
                 "law_loss_floor_this_size": law.loss_params_limited(n_total)})]


def _gpu_findings(log: TrainingLog, spec: GPUSpec | None) -> list[Finding]:
    out = []
    mfus = [r.mfu_percent for r in log.records if r.mfu_percent]
    if spec is not None and mfus and log.format == "nanogpt" and \
            spec.peak_flops("bf16") != NANOGPT_PEAK_FLOPS:
        recent = sorted(mfus[-20:])
        printed = recent[len(recent) // 2]  # median of the last 20
        real = from_nanogpt_mfu(printed, spec)
        out.append(Finding(
            code="mfu-reference-gpu", severity="info",
            message=(f"nanoGPT's printed MFU {printed:.2f}% divides by an A100's bf16 peak (312 "
                     f"TFLOP/s). The run achieves {real.achieved_flops / 1e12:.1f} TFLOP/s; on "
                     f"the {spec.name} (dense bf16 peak {real.peak_flops / 1e12:.1f} TFLOP/s) "
                     f"that is {100 * real.mfu:.1f}% MFU"),
            fix="read MFU against the GPU's own peak "
                "(scaleplan.compute.throughput.from_nanogpt_mfu)",
            numbers={"printed_mfu_percent": printed, "reference_peak_flops": NANOGPT_PEAK_FLOPS,
                     "achieved_flops": real.achieved_flops, "gpu_peak_flops": real.peak_flops,
                     "real_mfu_percent": 100 * real.mfu}))
    warning = log.warning("inductor-not-enough-sms")
    if warning is not None:
        numbers: dict[str, Number] = {"inductor_min_sms": INDUCTOR_MIN_SMS,
                                      "log_line": warning.line}
        where = "this GPU"
        if spec is not None:
            numbers["sm_count"] = spec.sm_count
            where = f"the {spec.name} ({spec.sm_count} SMs)"
        out.append(Finding(
            code="inductor-small-gpu", severity="info",
            message=(f"torch inductor skips max-autotune GEMM tuning on GPUs with fewer than "
                     f"{INDUCTOR_MIN_SMS} SMs (torch/_inductor/utils.py is_big_gpu), so on "
                     f"{where} it prints 'Not enough SMs to use max_autotune_gemm mode'. It is "
                     "harmless: compile still works, with the default GEMM kernels"),
            fix="nothing to fix; compile without mode='max-autotune' to silence it",
            numbers=numbers))
    return out


def _lr_facts(t: TrainingConfig, last: int | None) -> list[Finding]:
    if not t.decay_lr:
        return []
    out = []
    at_min = t.max_iters - t.lr_decay_iters
    if at_min > LR_MIN_FRACTION * t.max_iters:
        out.append(Finding(
            code="lr-min-long-before-end", severity="warning",
            message=(f"the learning rate reaches min_lr={t.min_lr:g} at lr_decay_iters="
                     f"{t.lr_decay_iters} and stays there for the last {at_min} of max_iters="
                     f"{t.max_iters} steps ({100 * at_min / t.max_iters:.0f}% of the run)"),
            fix=f"set lr_decay_iters = max_iters = {t.max_iters} (Hoffmann et al. 2022 match "
                "the cosine length to the run)",
            numbers={"lr_decay_iters": t.lr_decay_iters, "max_iters": t.max_iters,
                     "steps_at_min_lr": at_min, "fraction_at_min_lr": at_min / t.max_iters}))
    elif t.lr_decay_iters > t.max_iters / LR_TAIL_FRACTION:
        lr_end = nanogpt_lr(t.max_iters, t)
        out.append(Finding(
            code="lr-schedule-longer-than-run", severity="warning",
            message=(f"lr_decay_iters={t.lr_decay_iters} is longer than max_iters="
                     f"{t.max_iters}: the run ends at lr {lr_end:.3g}, not min_lr={t.min_lr:g}; "
                     "a cosine cycle longer than the run costs loss (Hoffmann et al. 2022, "
                     "App. B)"),
            fix=f"set lr_decay_iters = max_iters = {t.max_iters}",
            numbers={"lr_decay_iters": t.lr_decay_iters, "max_iters": t.max_iters,
                     "lr_at_end": lr_end}))
    if last is not None and last < LR_TAIL_FRACTION * min(t.lr_decay_iters, t.max_iters):
        lr_now = nanogpt_lr(last, t)
        out.append(Finding(
            code="lr-not-annealed", severity="info",
            message=(f"the log ends at step {last}, {100 * last / t.lr_decay_iters:.1f}% of "
                     f"lr_decay_iters={t.lr_decay_iters}: the learning rate is still "
                     f"{lr_now:.3g} ({100 * lr_now / t.learning_rate:.0f}% of its peak), so the "
                     "loss has not had the drop that decaying it brings"),
            fix="set max_iters and lr_decay_iters to the steps you will actually run",
            numbers={"last_step": last, "lr_decay_iters": t.lr_decay_iters,
                     "learning_rate_now": lr_now, "fraction_of_peak": lr_now / t.learning_rate}))
    return out
