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
  nanoGPT's cosine schedule (`scaleplan.diagnosis.schedule`).

The `Recommendation` is a concrete next config with the exact gradient-accumulation steps.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import INDUCTOR_MIN_SMS, GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.throughput import NANOGPT_PEAK_FLOPS, from_nanogpt_mfu
from scaleplan.diagnosis.logs import TrainingLog, read_log
from scaleplan.diagnosis.recommend import Recommendation, recommend
from scaleplan.diagnosis.schedule import lr_findings, nanogpt_lr
from scaleplan.findings import Finding, Severity
from scaleplan.model.config import GPTConfig, TrainingConfig
from scaleplan.model.loaders import NanoGPTRun, load_nanogpt_config
from scaleplan.model.params import count_params
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.tokens import chinchilla_tokens
from scaleplan.scaling.webtext import law_for_data
from scaleplan.units import format_count

__all__ = ["Diagnosis", "Finding", "Recommendation", "Severity", "diagnose", "nanogpt_lr"]

Number = int | float | str

SIZE_TOLERANCE = 0.10  # a claimed size within 10% of the count is "about right"
PAST_OPTIMAL_RATIO = 2.0  # over 2x the compute-optimal tokens is worth saying
PLATEAU_WINDOW = 0.25  # the last quarter of the run's steps
PLATEAU_RELATIVE_DROP = 0.02  # under 2% lower loss over that window is a plateau
OVERFIT_RELATIVE_GAP = 0.05  # val above train by 5% of the loss
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


ConfigInput = NanoGPTRun | GPTConfig | str | os.PathLike[str]


def diagnose(
    *,
    config: ConfigInput,
    log: TrainingLog | str | os.PathLike[str],
    gpu: str | GPUSpec | None = None,
    training: TrainingConfig | None = None,
    claimed_params: int | None = None,
    law: str | None = None,
    data: str | None = None,
) -> Diagnosis:
    """Diagnose a run from its config and its log.

    ``config`` is a nanoGPT config file (parsed, never executed), a `NanoGPTRun`, or a
    `GPTConfig` (then pass ``training`` and ``claimed_params`` if known). ``gpu`` is the GPU the
    run used (``"RTX 4070"``); without it the GPU findings are skipped. ``data`` is the dataset
    trained on (default: a nanoGPT file's ``dataset``): when published runs calibrate it
    (`scaleplan.scaling.webtext`), the plateau check and the recommendation use its web-text law
    and the recommendation gives the loss on that data with its interval; ``law`` names another
    law (default: that one, else Chinchilla's).

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
    dataset = run.dataset if data is None else data
    the_law = scaling_law(law if law is not None else law_for_data(dataset))
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
        findings += lr_findings(t, last)
    rec = recommend(run, pc.total, the_log, spec, the_law, findings, dataset)
    return Diagnosis(findings=tuple(findings), recommendation=rec, nanogpt_params=pc.nanogpt,
                     total_params=pc.total, tokens_per_step=tokens_per_step,
                     tokens_seen=tokens_seen, gpu=spec.name if spec else None, law=the_law.name,
                     notes=(rec.plan_note,) if rec is not None and rec.plan_note else ())


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
    window = _last_quarter(_loss_points(log))
    if window is None:
        return []
    (s0, l0), (s1, l1) = window[0], window[-1]
    drop = l0 - l1
    # a loss of 0 or below is no cross-entropy: a relative drop says nothing (and l0 divides)
    if s1 <= s0 or l0 <= 0 or drop > PLATEAU_RELATIVE_DROP * l0:
        return []
    end = s1  # the window ends at the last point
    per_doubling = -_slope_per_log_step(window) * math.log(2)
    D = end * tokens_per_step
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


def _loss_points(log: TrainingLog) -> list[tuple[int, float]]:
    """(step, loss) of the evaluations, or of the training steps when there are fewer than 3
    evaluations; step 0 left out (its log is -inf)."""
    points = [(r.step, r.val_loss) for r in log.eval_records()
              if r.step and r.val_loss is not None]
    if len(points) < 3:
        points = [(r.step, r.train_loss) for r in log.train_records()
                  if r.step and r.train_loss is not None]
    return points


def _last_quarter(points: list[tuple[int, float]]) -> list[tuple[int, float]] | None:
    """The points in the last `PLATEAU_WINDOW` of the steps (at least the last 3); None when
    there are fewer than 3 points."""
    if len(points) < 3:
        return None
    end = points[-1][0]
    window = [(s, v) for s, v in points if s >= (1 - PLATEAU_WINDOW) * end]
    return window if len(window) >= 3 else points[-3:]


def _slope_per_log_step(points: list[tuple[int, float]]) -> float:
    """The least-squares slope of the loss against ln(step)."""
    xs = [math.log(s) for s, _ in points]
    ys = [v for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)


def _gpu_findings(log: TrainingLog, spec: GPUSpec | None) -> list[Finding]:
    found = (_mfu_reference(log, spec), _inductor_small_gpu(log, spec))
    return [f for f in found if f is not None]


def _mfu_reference(log: TrainingLog, spec: GPUSpec | None) -> Finding | None:
    """nanoGPT's printed MFU, which divides by an A100's peak, read against this GPU's."""
    mfus = [r.mfu_percent for r in log.records if r.mfu_percent]
    if spec is None or not mfus or log.format != "nanogpt" or \
            spec.peak_flops("bf16") == NANOGPT_PEAK_FLOPS:
        return None
    recent = sorted(mfus[-20:])
    printed = recent[len(recent) // 2]  # median of the last 20
    real = from_nanogpt_mfu(printed, spec)
    return Finding(
        code="mfu-reference-gpu", severity="info",
        message=(f"nanoGPT's printed MFU {printed:.2f}% divides by an A100's bf16 peak (312 "
                 f"TFLOP/s). The run achieves {real.achieved_flops / 1e12:.1f} TFLOP/s; on "
                 f"the {spec.name} (dense bf16 peak {real.peak_flops / 1e12:.1f} TFLOP/s) "
                 f"that is {100 * real.mfu:.1f}% MFU"),
        fix="read MFU against the GPU's own peak "
            "(scaleplan.compute.throughput.from_nanogpt_mfu)",
        numbers={"printed_mfu_percent": printed, "reference_peak_flops": NANOGPT_PEAK_FLOPS,
                 "achieved_flops": real.achieved_flops, "gpu_peak_flops": real.peak_flops,
                 "real_mfu_percent": 100 * real.mfu})


def _inductor_small_gpu(log: TrainingLog, spec: GPUSpec | None) -> Finding | None:
    """The "Not enough SMs" warning in the log, explained."""
    warning = log.warning("inductor-not-enough-sms")
    if warning is None:
        return None
    numbers: dict[str, Number] = {"inductor_min_sms": INDUCTOR_MIN_SMS, "log_line": warning.line}
    where = "this GPU"
    if spec is not None:
        numbers["sm_count"] = spec.sm_count
        where = f"the {spec.name} ({spec.sm_count} SMs)"
    return Finding(
        code="inductor-small-gpu", severity="info",
        message=(f"torch inductor skips max-autotune GEMM tuning on GPUs with fewer than "
                 f"{INDUCTOR_MIN_SMS} SMs (torch/_inductor/utils.py is_big_gpu), so on "
                 f"{where} it prints 'Not enough SMs to use max_autotune_gemm mode'. It is "
                 "harmless: compile still works, with the default GEMM kernels"),
        fix="nothing to fix; compile without mode='max-autotune' to silence it",
        numbers=numbers)
