"""MFU, throughput at an assumed MFU, time-to-train and cost.

Model FLOPs utilization (MFU; PaLM, Chowdhery et al. 2022, App. B) is the model FLOP/s a run
achieves divided by the peak FLOP/s of the hardware it runs on:

    MFU = tokens_per_second x flops_per_token / (n_gpus x peak_flops)

where ``flops_per_token`` is `scaleplan.compute.flops.flops_per_token` (model FLOPs: no
recomputation) and ``peak_flops`` is the dense peak of the GPU in the dtype the matmuls run in
(`scaleplan.compute.hardware.GPUSpec.peak_flops`). Hardware FLOPs utilization (HFU) counts the
recomputed forward work too, so HFU >= MFU.

The peak must be the peak of the GPU the run is on. nanoGPT's ``estimate_mfu`` divides by an
A100's bf16 peak (312 TFLOP/s) whatever the GPU, so its printed MFU is "relative to an A100":
on an H100 it can print over 100%, and on an RTX 4070 it prints a small number for a GPU that is
in fact well used. `from_nanogpt_mfu` converts it. Published MFUs per GPU class, and the
default a plan assumes from them, are in `scaleplan.compute.mfu_defaults`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import finite, real, whole
from scaleplan.compute.flops import FlopsMethod, Recompute, flops_per_token
from scaleplan.compute.hardware import GPUSpec, normalize_dtype
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.mfu_defaults import mfu_evidence
from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig

__all__ = ["MAX_GPUS", "MAX_TOKENS", "NANOGPT_PEAK_FLOPS", "Throughput", "TrainingTime",
           "Utilization", "expect_config", "from_nanogpt_mfu", "mfu", "mfu_from_flops",
           "throughput_at_mfu", "time_to_train", "token_count"]

NANOGPT_PEAK_FLOPS = 312e12  # nanoGPT model.py estimate_mfu: flops_promised (A100 bf16 peak)
_SECONDS_PER_HOUR = 3600.0
_HOURS_PER_DAY = 24.0

# Counts no real run reaches, refused before they overflow a float (issue 20). The largest
# clusters hold a few 10^5 GPUs and the longest published runs see a few 10^13 tokens (Llama 3:
# 15T); these bounds are ~30x and ~10^5x past them.
MAX_GPUS = 10**7
MAX_TOKENS = 10**18


def expect_config(name: str, value: object) -> GPTConfig:
    """``value`` when it is a `GPTConfig`, else a `ScaleplanError` naming ``name`` and saying how
    to build one (a preset name is the usual mistake).

    >>> expect_config("cfg", "gpt2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: cfg='gpt2' must be a GPTConfig; ... GPTConfig.preset('gpt2')
    """
    if isinstance(value, GPTConfig):
        return value
    hint = (f"for the preset pass GPTConfig.preset({shown(value)})" if isinstance(value, str)
            else "e.g. GPTConfig.preset('gpt2') or GPTConfig(n_layer=12, n_head=12, n_embd=768)")
    raise ScaleplanError(f"{name}={shown(value)} must be a GPTConfig; {hint}")


def token_count(name: str, value: object, *, minimum: int = 1, message: str = "") -> int:
    """A token count as a Python int: an int (numpy ints too) or a whole finite number such as
    ``1e9`` or ``Decimal("1e9")``, from ``minimum`` to `MAX_TOKENS`; else a `ScaleplanError`
    (whose text after ``name=value`` is ``message`` when given, but for a count past the bound).

    >>> token_count("tokens", 2.5e9), token_count("tokens", 10**9)
    (2500000000, 1000000000)
    """
    try:
        number = _token_count(name, value, minimum)
    except ScaleplanError:
        if not message:
            raise
        raise ScaleplanError(f"{name}={shown(value)} {message}") from None
    if number > MAX_TOKENS:
        raise ScaleplanError(f"{name}={shown(value)} is beyond any real run; give at most "
                             f"{MAX_TOKENS:,} tokens")
    return number


def _token_count(name: str, value: object, minimum: int) -> int:
    try:
        return whole(name, value, minimum=minimum)
    except ScaleplanError:
        as_float = real(name, value, minimum=minimum, inclusive=True,
                        example=f"a whole number of tokens, e.g. {name}=10**10")
        if not as_float.is_integer():
            raise ScaleplanError(f"{name}={shown(value)} must be a whole number of tokens, e.g. "
                                 f"{name}={math.floor(as_float)}") from None
        return int(as_float)


class Utilization(BaseModel):
    """How well a run uses its GPUs: MFU, HFU and the FLOP/s behind them.

    ``mfu * peak_flops == achieved_flops`` (per GPU). The seed run's printed 11.62 % (of an
    A100's 312 TFLOP/s) is 36.25 TFLOP/s, 62 % of the RTX 4070's own dense bf16 peak:

    >>> u = from_nanogpt_mfu(11.62, "RTX 4070")
    >>> round(u.achieved_flops / 1e12, 2), round(u.mfu, 3), u.gpu
    (36.25, 0.622, 'RTX 4070')
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    mfu: float = Field(description="Model FLOPs utilization, a fraction (0.45, not 45).")
    hfu: float = Field(description="Hardware FLOPs utilization: recomputed work included.")
    achieved_flops: float = Field(description="Model FLOP/s achieved per GPU.")
    peak_flops: float = Field(description="Dense peak FLOP/s of one GPU in `dtype`.")
    n_gpus: int = Field(gt=0, description="GPUs the run uses.")
    tokens_per_second: float | None = Field(
        None, description="Tokens per second over all GPUs, where known.")
    flops_per_token: float | None = Field(None, description="Model FLOPs per token used.")
    gpu: str = Field(description="The GPU's canonical name.")
    dtype: str = Field(description="The dtype whose dense peak was used.")


class Throughput(BaseModel):
    """Tokens per second (and seconds per optimizer step) at an assumed MFU.

    ``tokens_per_second == achieved_flops / flops_per_token`` (one GPU here):

    >>> from scaleplan.model.config import GPTConfig
    >>> t = throughput_at_mfu(GPTConfig.preset("gpt2"), "RTX 4070", mfu=0.3, seq_len=1024,
    ...                       tokens_per_step=524_288)
    >>> round(t.tokens_per_second), round(t.step_seconds, 1)
    (21919, 23.9)
    >>> t.tokens_per_second == t.achieved_flops / t.flops_per_token
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tokens_per_second: float = Field(description="Tokens per second over all GPUs.")
    tokens_per_second_per_gpu: float = Field(description="Tokens per second on one GPU.")
    flops_per_token: float = Field(description="Model FLOPs per token (forward and backward).")
    achieved_flops: float = Field(description="Model FLOP/s per GPU.")
    mfu: float = Field(description="The model FLOPs utilization assumed, a fraction.")
    n_gpus: int = Field(gt=0, description="GPUs the run uses.")
    tokens_per_step: int | None = Field(None, description="Tokens per optimizer step over all "
                                        "GPUs, when given.")
    step_seconds: float | None = Field(None, description="Seconds per optimizer step.")
    gpu: str = Field(description="The GPU's canonical name.")
    dtype: str = Field(description="The dtype whose dense peak was used.")


class TrainingTime(BaseModel):
    """Wall-clock time, GPU-hours and cost of training on a token budget at an assumed MFU.

    >>> from scaleplan.model.config import GPTConfig
    >>> t = time_to_train(GPTConfig.preset("gpt2"), "A100 SXM 80GB", tokens=10**10, mfu=0.4,
    ...                   seq_len=1024, n_gpus=8, price_per_gpu_hour=2.0)
    >>> round(t.hours, 2), round(t.gpu_hours, 1), round(t.cost, 2)
    (2.22, 17.8, 35.52)
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tokens: int = Field(ge=0, description="Tokens the run trains on.")
    total_flops: float = Field(description="Model FLOPs of the run.")
    tokens_per_second: float = Field(description="Tokens per second over all GPUs.")
    seconds: float = Field(description="Wall-clock seconds of training.")
    hours: float = Field(description="The same time in hours.")
    days: float = Field(description="The same time in days.")
    gpu_hours: float = Field(description="Hours times n_gpus.")
    n_gpus: int = Field(gt=0, description="GPUs the run uses.")
    mfu: float = Field(description="The model FLOPs utilization assumed, a fraction.")
    gpu: str = Field(description="The GPU's canonical name.")
    dtype: str = Field(description="The dtype whose dense peak was used.")
    price_per_gpu_hour: float | None = Field(None, description="One GPU-hour's price, if given.")
    cost: float | None = Field(None, description="gpu_hours x price, in the price's currency.")


def mfu_from_flops(
    tokens_per_second: float, *, flops_per_token: float, peak_flops: float, n_gpus: int = 1
) -> float:
    """MFU from raw numbers: tokens/s x FLOPs/token / (n_gpus x peak FLOP/s) (PaLM App. B).

    >>> round(mfu_from_flops(238.3e3, flops_per_token=3.2777e12, peak_flops=275e12,
    ...                      n_gpus=6144), 3)  # PaLM 540B on TPU v4
    0.462
    """
    tokens_per_second = real("tokens_per_second", tokens_per_second,
                             example="a measured throughput, e.g. 5.2e4")
    flops_per_token = real("flops_per_token", flops_per_token, example="e.g. 8.7e8")
    peak_flops = real("peak_flops", peak_flops, example="a GPU's peak FLOP/s, e.g. 312e12")
    n_gpus = _check_gpus(n_gpus)
    return finite(f"the MFU of tokens_per_second={tokens_per_second!r} x flops_per_token="
                  f"{flops_per_token!r}", tokens_per_second * flops_per_token
                  / (n_gpus * peak_flops))


def mfu(
    tokens_per_second: float,
    cfg: GPTConfig,
    gpu: str | GPUSpec,
    *,
    seq_len: int,
    n_gpus: int = 1,
    dtype: str = "bf16",
    causal: bool = True,
    recompute: Recompute = "none",
    method: FlopsMethod = "palm",
) -> Utilization:
    """MFU (and HFU) of a run that processes ``tokens_per_second`` tokens over ``n_gpus`` GPUs.

    >>> u = mfu(30_000, GPTConfig.preset("gpt2"), "RTX 4070", seq_len=1024)
    >>> round(u.mfu, 3)
    0.411
    """
    cfg = expect_config("cfg", cfg)
    tokens_per_second = real("tokens_per_second", tokens_per_second,
                             example="a measured throughput, e.g. 5.2e4")
    n_gpus = _check_gpus(n_gpus)
    peak, labels = _peak(gpu, dtype)
    model = flops_per_token(cfg, seq_len=seq_len, causal=causal, method=method)
    hardware = flops_per_token(cfg, seq_len=seq_len, causal=causal, method=method,
                               recompute=recompute)
    fraction = mfu_from_flops(tokens_per_second, flops_per_token=model, peak_flops=peak,
                              n_gpus=n_gpus)
    return Utilization(
        mfu=fraction,
        hfu=fraction * hardware / model,
        achieved_flops=fraction * peak,
        peak_flops=peak,
        n_gpus=n_gpus,
        tokens_per_second=tokens_per_second,
        flops_per_token=model,
        **labels,
    )


def throughput_at_mfu(
    cfg: GPTConfig,
    gpu: str | GPUSpec,
    *,
    mfu: float,
    seq_len: int,
    n_gpus: int = 1,
    dtype: str = "bf16",
    tokens_per_step: int | None = None,
    causal: bool = True,
    method: FlopsMethod = "palm",
) -> Throughput:
    """Tokens per second, and seconds per optimizer step, if the run reaches ``mfu``.

    The inverse of `mfu`: tokens/s = mfu x n_gpus x peak / flops_per_token.

    >>> t = throughput_at_mfu(GPTConfig.preset("gpt2"), "RTX 4070", mfu=0.4, seq_len=1024,
    ...                       tokens_per_step=524288)
    >>> round(t.tokens_per_second), round(t.step_seconds, 1)
    (29225, 17.9)
    """
    cfg = expect_config("cfg", cfg)
    mfu = _check_mfu(mfu)
    peak, labels = _peak(gpu, dtype)
    n_gpus = _check_gpus(n_gpus)
    if tokens_per_step is not None:
        tokens_per_step = whole("tokens_per_step", tokens_per_step, maximum=MAX_TOKENS,
                                example="524288")
    per_token = flops_per_token(cfg, seq_len=seq_len, causal=causal, method=method)
    tokens_per_second = mfu * n_gpus * peak / per_token
    if not tokens_per_second > 0:  # a subnormal MFU underflows the rate to zero
        raise ScaleplanError(f"mfu={mfu!r} gives 0.0 tokens per second; use e.g. mfu=0.4")
    step_seconds = None if tokens_per_step is None else finite(
        f"the step time at mfu={mfu!r}", tokens_per_step / tokens_per_second)
    return Throughput(
        tokens_per_second=tokens_per_second,
        tokens_per_second_per_gpu=tokens_per_second / n_gpus,
        flops_per_token=per_token, achieved_flops=mfu * peak, mfu=mfu, n_gpus=n_gpus,
        tokens_per_step=tokens_per_step, step_seconds=step_seconds, **labels)


def time_to_train(
    cfg: GPTConfig,
    gpu: str | GPUSpec,
    *,
    tokens: int,
    mfu: float,
    seq_len: int,
    n_gpus: int = 1,
    dtype: str = "bf16",
    price_per_gpu_hour: float | None = None,
    causal: bool = True,
    method: FlopsMethod = "palm",
) -> TrainingTime:
    """How long ``tokens`` tokens take on ``n_gpus`` GPUs at ``mfu``, and what it costs.

    >>> t = time_to_train(GPTConfig.preset("gpt2"), "RTX 4070", tokens=2_500_000_000, mfu=0.4,
    ...                   seq_len=1024, price_per_gpu_hour=0.2)
    >>> round(t.hours, 1), round(t.cost, 2)
    (23.8, 4.75)
    """
    tokens = token_count("tokens", tokens, minimum=0)
    if price_per_gpu_hour is not None:
        price_per_gpu_hour = real("price_per_gpu_hour", price_per_gpu_hour, inclusive=True,
                                  example="e.g. 2.0")
    rate = throughput_at_mfu(cfg, gpu, mfu=mfu, seq_len=seq_len, n_gpus=n_gpus,
                             dtype=dtype, causal=causal, method=method)
    seconds = finite(f"the training time at mfu={mfu!r}", tokens / rate.tokens_per_second)
    hours = seconds / _SECONDS_PER_HOUR
    cost = None
    if price_per_gpu_hour is not None:
        cost = finite(f"the cost at price_per_gpu_hour={price_per_gpu_hour!r}",
                      hours * rate.n_gpus * price_per_gpu_hour)
    return TrainingTime(
        tokens=tokens,
        total_flops=finite(f"the FLOPs of tokens={tokens}", tokens * rate.flops_per_token),
        tokens_per_second=rate.tokens_per_second,
        seconds=seconds,
        hours=hours,
        days=hours / _HOURS_PER_DAY,
        gpu_hours=hours * rate.n_gpus,
        n_gpus=rate.n_gpus,
        mfu=rate.mfu,
        gpu=rate.gpu,
        dtype=rate.dtype,
        price_per_gpu_hour=price_per_gpu_hour,
        cost=cost,
    )


def from_nanogpt_mfu(
    printed_percent: float,
    gpu: str | GPUSpec,
    *,
    dtype: str = "bf16",
    cfg: GPTConfig | None = None,
) -> Utilization:
    """Convert the MFU nanoGPT prints into the real MFU on ``gpu``.

    nanoGPT's ``estimate_mfu`` computes model FLOP/s with its own formula (6N + 12·L·H·Q·T, N
    its printed parameter count, T = block_size) and divides by 312e12, an A100's dense bf16
    peak, whatever GPU it runs on. So the printed percentage times 312 TFLOP/s is the model
    FLOP/s actually achieved, and dividing that by the real GPU's peak gives the real MFU:

        real MFU = printed% / 100 x 312e12 / peak(gpu, dtype)

    The seed case: an RTX 4070 (46 SMs, dense bf16 with fp32 accumulate 46 x 2.475 GHz x 512 =
    58.3 TFLOP/s) printing "mfu 11.5%" achieves 0.115 x 312 = 35.9 TFLOP/s, which is
    0.115 x 312 / 58.3 = 62% of what the 4070 can do: a well-used GPU, not a slow run. (On an
    H100 the same formula can print more than 100%.)

    With ``cfg`` (the model nanoGPT trained), ``tokens_per_second`` per GPU is filled in from
    nanoGPT's own FLOPs formula.

    >>> u = from_nanogpt_mfu(11.5, "RTX 4070")
    >>> round(u.mfu, 3), round(u.achieved_flops / 1e12, 2)
    (0.616, 35.88)
    """
    printed_percent = real("printed_percent", printed_percent,
                           example="the percentage nanoGPT printed, e.g. 11.5")
    if cfg is not None:
        cfg = expect_config("cfg", cfg)
    peak, labels = _peak(gpu, dtype)
    achieved = finite(f"the FLOP/s of printed_percent={printed_percent!r}",
                      printed_percent / 100 * NANOGPT_PEAK_FLOPS)
    per_token = tokens_per_second = None
    if cfg is not None:
        per_token = flops_per_token(cfg, seq_len=cfg.block_size, causal=False, method="nanogpt")
        tokens_per_second = achieved / per_token
    return Utilization(
        mfu=achieved / peak,
        hfu=achieved / peak,
        achieved_flops=achieved,
        peak_flops=peak,
        n_gpus=1,
        tokens_per_second=tokens_per_second,
        flops_per_token=per_token,
        **labels,
    )


def _check_gpus(value: int) -> int:
    return whole("n_gpus", value, maximum=MAX_GPUS, example="n_gpus=8")


def _peak(gpu: str | GPUSpec, dtype: str) -> tuple[float, dict[str, str]]:
    """The dense peak FLOP/s of ``gpu`` in ``dtype``, and the labels every result carries."""
    spec = lookup_gpu(gpu)
    return spec.peak_flops(dtype), {"gpu": spec.name, "dtype": normalize_dtype(dtype)}


def _check_mfu(value: float) -> float:
    value = real("mfu", value, minimum=-math.inf, example="a fraction such as 0.4")
    if not 0 < value <= 1:
        runs = [e.mfu for e in mfu_evidence()]
        hint = (" MFU is a fraction: did you pass a percentage? use e.g. 0.4" if value > 1 else
                f" an MFU of zero never finishes; published runs reach {min(runs):.2f}-"
                f"{max(runs):.2f}")
        raise ScaleplanError(f"mfu={value} must be in (0, 1].{hint}")
    return value
