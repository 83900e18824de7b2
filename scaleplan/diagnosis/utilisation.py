"""Findings about how well the run used its GPU: ``throughput`` (tokens/s and MFU worked out
from the log's step times or tokens/s, when it prints no MFU of its own), ``mfu-reference-gpu``
(nanoGPT's printed MFU, which divides by an A100's peak, read against the real GPU's) and
``inductor-small-gpu`` (torch inductor's "Not enough SMs" warning explained).

MFU is model FLOPs per second over the GPU's dense peak (PaLM, Chowdhery et al. 2022, App. B):
the FLOPs per token are `scaleplan.compute.flops.flops_per_token`, the peak is the GPU's for
the run's precision (bf16 unless the run trains in fp16 or fp32). A GPU without a bf16 peak
(a V100) is read against its fp16 peak, and the finding says so.
"""

from __future__ import annotations

import math

from scaleplan.compute.hardware import INDUCTOR_MIN_SMS, GPUSpec, normalize_dtype
from scaleplan.compute.throughput import NANOGPT_PEAK_FLOPS, from_nanogpt_mfu, mfu
from scaleplan.diagnosis.logs import TrainingLog
from scaleplan.findings import Finding
from scaleplan.model.config import GPTConfig
from scaleplan.model.training_config import TrainingConfig
from scaleplan.planning.advice import peak_dtype

__all__ = ["PER_DEVICE_FORMATS", "RECENT_STEPS", "gpu_dtype", "utilisation_findings"]

RECENT_STEPS = 20  # the median of the last 20 steps: past compile and warm-up
# Formats whose tokens/s are one GPU's (lit-gpt's "toks/s/device", torchtitan's "tps"); llm.c's
# and build-nanogpt's are all GPUs' together
PER_DEVICE_FORMATS = frozenset({"litgpt", "torchtitan"})

Number = int | float | str


def gpu_dtype(spec: GPUSpec, precision: str) -> tuple[str, str]:
    """The dtype whose peak the run is read against, and a note when it is not the run's own
    (a V100 has no bf16 peak: its fp16 one is used)."""
    dtype = normalize_dtype(peak_dtype(precision))
    if dtype in spec.peak:
        return dtype, ""
    fallback = normalize_dtype("fp16" if "fp16" in spec.peak else "fp32")
    return fallback, (f"the {spec.name} has no dense {dtype} peak, so its {fallback} peak "
                      f"({spec.peak_flops(fallback) / 1e12:g} TFLOP/s) is used")


def utilisation_findings(log: TrainingLog, spec: GPUSpec | None, *, model: GPTConfig | None,
                         training: TrainingConfig | None,
                         tokens_per_step: int | None) -> list[Finding]:
    """The GPU findings, in order: ``throughput``, ``mfu-reference-gpu``,
    ``inductor-small-gpu`` (each only where the log and the GPU allow it)."""
    precision = training.precision if training is not None else "bf16-mixed"
    found = (_throughput(log, spec, model, training, tokens_per_step, precision),
             _mfu_reference(log, spec, precision), _inductor_small_gpu(log, spec))
    return [f for f in found if f is not None]


def _recent(values: list[float]) -> float:
    """The median of the last `RECENT_STEPS` values (the upper one of an even count)."""
    recent = sorted(values[-RECENT_STEPS:])
    return recent[len(recent) // 2]


def _throughput(log: TrainingLog, spec: GPUSpec | None, model: GPTConfig | None,
                training: TrainingConfig | None, tokens_per_step: int | None,
                precision: str) -> Finding | None:
    """tokens/s from printed tokens/s, else tokens per step over the step time; MFU against
    the GPU's peak. Only for a log that prints no MFU."""
    if spec is None or model is None or any(r.mfu_percent for r in log.records):
        return None
    rate = _tokens_per_second(log, tokens_per_step)
    if rate is None:
        return None
    tokens_per_second, how = rate
    n_gpus = training.world_size if training is not None else 1
    if how == "printed tokens/s" and log.format in PER_DEVICE_FORMATS:
        n_gpus, how = 1, "printed tokens/s per GPU"  # one GPU's tokens, against one GPU's peak
    seq_len = training.seq_len if training is not None else model.block_size
    dtype, note = gpu_dtype(spec, precision)
    u = mfu(tokens_per_second, model, spec, seq_len=seq_len, n_gpus=n_gpus, dtype=dtype)
    per_gpu = f" over {n_gpus} GPUs" if n_gpus > 1 else ""
    per_token = u.flops_per_token or 0.0
    if u.mfu > 1:  # more than the GPUs can do: the tokens/s are over more GPUs than said
        return Finding(
            code="throughput", severity="info",
            message=(f"the run processes {tokens_per_second:,.0f} tokens/s ({how}): at "
                     f"{per_token / 1e9:.3g} GFLOPs per token that is {100 * u.mfu:.0f}% of "
                     f"the dense {dtype} peak of {n_gpus} {spec.name}, more than the GPUs can "
                     f"do, so it ran on at least {math.ceil(u.mfu * n_gpus)} of them"),
            fix="pass the training settings with world_size = the number of GPUs to get the "
                "MFU", numbers={"tokens_per_second": tokens_per_second,
                                "flops_per_token": per_token, "n_gpus": n_gpus},
            labels={"gpu": spec.name, "dtype": dtype, "precision": precision})
    return Finding(
        code="throughput", severity="info",
        message=(f"the run processes {tokens_per_second:,.0f} tokens/s{per_gpu} ({how}, median "
                 f"of the last {RECENT_STEPS} steps); at {per_token / 1e9:.3g} GFLOPs "
                 f"per token (PaLM's count, causal) that is {u.achieved_flops / 1e12:.1f} TFLOP/s"
                 f" per GPU, {100 * u.mfu:.1f}% MFU of the {spec.name}'s dense {dtype} peak "
                 f"({u.peak_flops / 1e12:g} TFLOP/s; precision assumed {precision})"
                 + (f"; {note}" if note else "")),
        fix=("nothing to fix above ~30% MFU; below it, raise the micro-batch, use "
             "torch.compile and flash attention, and check the data loader keeps up"),
        numbers={"tokens_per_second": tokens_per_second, "flops_per_token": per_token,
                 "achieved_flops": u.achieved_flops, "gpu_peak_flops": u.peak_flops,
                 "mfu_percent": 100 * u.mfu, "n_gpus": n_gpus},
        labels={"gpu": spec.name, "dtype": dtype, "precision": precision})


def _tokens_per_second(log: TrainingLog,
                       tokens_per_step: int | None) -> tuple[float, str] | None:
    """The recent tokens/s the log prints, else tokens per step over the recent step time;
    with how it was found."""
    train = log.train_records()
    printed = [r.tokens_per_second for r in train if r.tokens_per_second]
    if printed:
        return _recent(printed), "printed tokens/s"
    times = [r.time_ms for r in train if r.time_ms]
    if not times or not tokens_per_step:
        return None
    step_ms = _recent(times)
    return (tokens_per_step / (step_ms / 1000),
            f"{tokens_per_step:,} tokens per step / {step_ms:.1f} ms per step")


def _mfu_reference(log: TrainingLog, spec: GPUSpec | None, precision: str) -> Finding | None:
    """nanoGPT's printed MFU, which divides by an A100's peak, read against this GPU's."""
    mfus = [r.mfu_percent for r in log.records if r.mfu_percent]
    if spec is None or not mfus or log.format != "nanogpt":
        return None
    dtype, note = gpu_dtype(spec, precision)
    if spec.peak_flops(dtype) == NANOGPT_PEAK_FLOPS:
        return None
    printed = _recent(mfus)
    real = from_nanogpt_mfu(printed, spec, dtype=dtype)
    return Finding(
        code="mfu-reference-gpu", severity="info",
        message=(f"nanoGPT's printed MFU {printed:.2f}% divides by an A100's bf16 peak (312 "
                 f"TFLOP/s). The run achieves {real.achieved_flops / 1e12:.1f} TFLOP/s; on "
                 f"the {spec.name} (dense {dtype} peak {real.peak_flops / 1e12:.1f} TFLOP/s) "
                 f"that is {100 * real.mfu:.1f}% MFU" + (f"; {note}" if note else "")),
        fix="read MFU against the GPU's own peak "
            "(scaleplan.compute.throughput.from_nanogpt_mfu)",
        numbers={"printed_mfu_percent": printed, "reference_peak_flops": NANOGPT_PEAK_FLOPS,
                 "achieved_flops": real.achieved_flops, "gpu_peak_flops": real.peak_flops,
                 "real_mfu_percent": 100 * real.mfu},
        labels={"gpu": spec.name, "dtype": dtype})


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
