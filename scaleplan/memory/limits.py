"""Inverse questions: the largest micro-batch or sequence that fits, and memory over a grid.

`memory_grid` evaluates `scaleplan.memory.training.training_memory`'s ``total`` (or
``tensor_peak``) over
numpy arrays of micro-batch sizes and sequence lengths in float64 (exact below 2^53 bytes, so no
int64 overflow and no rounding for any real GPU); it runs the very same arithmetic as the scalar
function, on arrays. `max_micro_batch_size` and `max_seq_len` search the scalar function (doubling,
then bisecting), since memory grows with both.

The memory available on a GPU is `scaleplan.compute.hardware.GPUSpec.usable_memory_bytes` (what the
driver reports) when known, else ``memory_bytes``, the same rule as the planner; ``headroom``
keeps a fraction of it free.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from scaleplan.checks import float_guard, is_integer, one_of, real, whole
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.options import MAX_BYTES, overhead_bytes, step_options
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.titan_streams import step_stream_cache
from scaleplan.memory.training import (
    ALLOCATOR_SLACK_FRACTION,
    CUDA_CONTEXT_BYTES,
    check_shape,
    training_memory,
)
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA

if TYPE_CHECKING:  # numpy is imported by memory_grid, not by the planner's scalar path
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["available_memory_bytes", "max_micro_batch_size", "max_seq_len", "memory_grid"]

# The searches double the size until it does not fit, then bisect: about 2 log2(answer) memory
# evaluations, bounded by a number of steps rather than by a largest size. Memory grows by at
# least the 8-byte token ids of every token, so a budget of at most `MAX_BYTES` is spent by
# 2^50 sequences or tokens, well within these doublings.
MAX_DOUBLINGS = 128


def available_memory_bytes(gpu: str | GPUSpec | int) -> int:
    """Bytes a training process may use on ``gpu``: ``usable_memory_bytes`` when known (what the
    driver reports as total), else ``memory_bytes``; an int (a numpy int too) is taken as bytes,
    at most `scaleplan.memory.options.MAX_BYTES`.

    >>> available_memory_bytes(80 * 2**30) // 2**30
    80
    """
    if isinstance(gpu, str):
        gpu = lookup_gpu(gpu)
    if isinstance(gpu, GPUSpec):
        usable = gpu.usable_memory_bytes
        return usable if usable is not None else gpu.memory_bytes
    if not is_integer(gpu):
        raise ScaleplanError(
            f"gpu={shown(gpu)} must be a GPU name, a GPUSpec or a size in bytes (an int, such as "
            "80 * 2**30; a float is not taken as a byte count)")
    if gpu < 1:
        raise ScaleplanError(f"gpu={shown(gpu)} bytes must be positive")
    return whole("gpu", gpu, maximum=MAX_BYTES, example="gpu=80 * 2**30 (bytes)")



def _budget(gpu: str | GPUSpec | int, headroom: float) -> int:
    fraction = real("headroom", headroom, inclusive=True,
                    message="must be a fraction in [0, 1), e.g. 0.1 to keep 10% of the GPU free")
    if fraction >= 1:
        raise ScaleplanError(f"headroom={shown(headroom)} must be a fraction in [0, 1), e.g. 0.1 "
                             "to keep 10% of the GPU free")
    return math.floor(available_memory_bytes(gpu) * (1 - fraction))


@float_guard
def memory_grid(cfg: GPTConfig, *, micro_batch_size: Any, seq_len: Any,
                precision: str = "bf16-mixed", optimizer: str = "adamw",
                attention: Literal["flash", "eager"] = "flash",
                checkpointing: Literal["none", "selective", "full"] = "none",
                device: Literal["cuda", "cpu", "cpu-cuda-semantics"] = "cuda",
                parallelism: Parallelism | None = None,
                optimizer_impl: OptimizerImpl | None = None,
                hold_logits: bool = True, cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
                allocator_slack_fraction: float = ALLOCATOR_SLACK_FRACTION,
                what: Literal["total", "tensor_peak"] = "total",
                compile: bool = False, implementation: str = "nanogpt",
                loss: Literal["standard", "chunked"] = "standard",
                optimizer_in_backward: bool = False, activation_offload: bool = False,
                gradient_accumulation: bool = True, lora: LoRA | None = None,
                base_weights: str | None = None) -> NDArray[np.float64]:
    """`training_memory`'s ``total`` (or ``tensor_peak``) in bytes, as float64, for arrays of
    micro-batch sizes and sequence lengths (broadcast against each other).

    Options are checked as `training_memory` checks them, and each cell is rounded as it rounds
    (tensor-parallel shares and the allocator slack up to whole bytes), so a cell equals
    ``training_memory(...).total`` below 2^53 bytes. A grid past float64's range raises.

    >>> import numpy as np
    >>> cfg = GPTConfig.preset("gpt2")
    >>> grid = memory_grid(cfg, micro_batch_size=np.arange(1, 5)[:, None],
    ...                    seq_len=np.array([256, 1024]))
    >>> grid.shape, bool(grid[3, 1] == training_memory(cfg, micro_batch_size=4,
    ...                                                  seq_len=1024).total)
    ((4, 2), True)
    """
    import numpy as np

    b = np.asarray(micro_batch_size, dtype=np.float64)
    s = np.asarray(seq_len, dtype=np.float64)
    if np.any(b != np.floor(b)) or np.any(s != np.floor(s)):
        raise ScaleplanError("micro_batch_size and seq_len must hold whole numbers")
    one_of("what", what, ("total", "tensor_peak"))
    o = step_options(cfg, precision=precision, optimizer=optimizer, attention=attention,
                     checkpointing=checkpointing, device=device, parallelism=parallelism,
                     optimizer_impl=optimizer_impl, hold_logits=hold_logits,
                     cuda_context_bytes=cuda_context_bytes,
                     allocator_slack_fraction=allocator_slack_fraction, compile=compile,
                     implementation=implementation, loss=loss,
                     optimizer_in_backward=optimizer_in_backward,
                     activation_offload=activation_offload,
                     gradient_accumulation=gradient_accumulation, lora=lora,
                     base_weights=base_weights)
    check_shape(cfg, b, s)
    par = o.parallelism
    stages = ("only",) if par.pipeline == 1 else ("first", "last")
    peak: Any = None
    cache: Any = None
    for stage in stages:
        W, G, O, _, _, _, held, moments = stage_parts(
            cfg, b, s, o.precision, o.optimizer, o.attention, o.checkpointing, o.device, par,
            o.optimizer_impl, o.hold_logits, stage,  # type: ignore[arg-type]
            compiled=o.compile, implementation=o.implementation, switches=o.switches,
            lora=o.lora, base_weights=o.base_weights)
        worst = np.maximum.reduce(np.broadcast_arrays(*moments.values()))
        stage_peak = float(W + G + O) + worst + held
        stage_cache = np.asarray(step_stream_cache(
            cfg, b, s, o, layers=cfg.n_layer if stage == "only" else par.layers_per_stage(cfg),
            states=(W, G, O), moments=moments), dtype=np.float64)
        # the stage whose tensor peak is the larger, as training_memory takes (its first on a tie)
        cache = stage_cache if peak is None else np.where(stage_peak > peak, stage_cache, cache)
        peak = stage_peak if peak is None else np.maximum(peak, stage_peak)
    result = np.asarray(peak, dtype=np.float64)
    if what == "tensor_peak":
        return result
    return np.asarray(result + overhead_bytes(o, result, cache), dtype=np.float64)


def _largest(fits: Any, lo: int, hi: int | None = None) -> int:
    """The largest n >= lo (and <= hi, when given) with fits(n), given fits is monotone
    decreasing; lo - 1 if none. Doubles from lo until a size does not fit, then bisects."""
    if not fits(lo):
        return lo - 1
    good, bad = lo, None
    for _ in range(MAX_DOUBLINGS):
        probe = 2 * good if hi is None else min(2 * good, hi)
        if probe == good:
            return good  # hi itself fits
        if not fits(probe):
            bad = probe
            break
        good = probe
    if bad is None:
        raise ScaleplanError(f"memory stays within the budget past {good:,}; it does not grow "
                             "with the size searched, so there is no largest one")
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def max_micro_batch_size(cfg: GPTConfig, gpu: str | GPUSpec | int, *, seq_len: int,
                         headroom: float = 0.0, **options: Any) -> int:
    """The largest micro-batch whose `training_memory` total fits in ``gpu`` with ``headroom``
    kept free; 0 when not even one sequence fits. ``options`` go to `training_memory`. No
    largest size is assumed: a tiny model on a big GPU gets its true maximum.

    >>> cfg, a100 = GPTConfig.preset("gpt2"), "A100-80GB"
    >>> b = max_micro_batch_size(cfg, a100, seq_len=1024)
    >>> def fits(n):
    ...     m = training_memory(cfg, micro_batch_size=n, seq_len=1024)
    ...     return m.total <= available_memory_bytes(a100)
    >>> fits(b), fits(b + 1)
    (True, False)
    """
    budget = _budget(gpu, headroom)

    def fits(b: int) -> bool:
        return training_memory(cfg, micro_batch_size=b, seq_len=seq_len, **options).total \
            <= budget

    return _largest(fits, 1)


def max_seq_len(cfg: GPTConfig, gpu: str | GPUSpec | int, *, micro_batch_size: int,
                headroom: float = 0.0, **options: Any) -> int:
    """The longest sequence (at most ``block_size`` with learned positions) whose
    `training_memory` total fits in ``gpu`` with ``headroom`` kept free; 0 if none fits.

    >>> max_seq_len(GPTConfig.preset("llama-2-7b"), 80 * 2**30, micro_batch_size=1,
    ...             optimizer="adamw-8bit", precision="bf16-true") > 2048
    True
    """
    budget = _budget(gpu, headroom)
    hi = cfg.block_size if cfg.position == "learned" else None

    def fits(s: int) -> bool:
        return training_memory(cfg, micro_batch_size=micro_batch_size, seq_len=s,
                               **options).total <= budget

    return _largest(fits, 1, hi)
