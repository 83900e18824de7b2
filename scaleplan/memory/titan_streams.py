"""What the caching allocator keeps for FSDP2's side streams in a torchtitan step.

PyTorch's CUDA caching allocator: "Allocations are associated with a stream. Once freed,
blocks can be re-allocated on the same stream, but not on any other stream"
(pytorch/pytorch ``c10/cuda/CUDACachingAllocator.cpp``, the comment that opens it). What a
step reserves is therefore at least the sum, over the streams that allocate, of each stream's
own peak of live bytes, while ``tensor_peak`` is the peak of their sum. (The bound gives way
only where a ``cudaMalloc`` fails and the allocator frees its unsplit cached blocks to retry:
a GPU that full reports ``num_alloc_retries`` in ``torch.cuda.memory_stats()``.)

FSDP2 (torch 2.13 ``torch/distributed/fsdp/_fully_shard/``) allocates on two streams besides
the default one:

- its **all-gather copy-in stream** (``foreach_all_gather``): each unit's all-gather output
  (``data`` x its padded shard, in the param dtype) and, when the param dtype is not the
  shards' fp32, the flat cast of its shard that is copied in. In forward, a unit's output is
  kept until the next unit's copy-out (``FSDPParamGroup.wait_for_unshard``'s
  ``all_gather_state``), so the stream peaks at two consecutive units' outputs and the
  second's input (`titan_copy_in_peak`). The root's forward end frees the last one, so nothing
  of it is live at the loss; in backward it holds the unit prefetched.
- its **reduce-scatter stream** (``foreach_reduce``): each unit's fp32 reduce-scatter output,
  which becomes its sharded gradients. Without accumulation all of them are live at the
  backward's end and freed by ``zero_grad``, so they are cached, unusable by the next step's
  forward and loss (`titan_reduce_scatter_peak`). On a one-rank mesh the output is written as
  ``input / gradient_divide_factor`` on that stream: a temporary the unit's size beside it.

`titan_stream_cache` is the sum of the three streams' peaks less the tensor peak: bytes that a
GPU reserves beyond ``tensor_peak`` even with no fragmentation at all. The default stream's
peak is taken over the step's moments, each less what the side streams hold then: none of the
copy-in stream's at the loss (the root's forward end frees it), the last block prefetched at
the head's backward, the blocks' and units' own (`scaleplan.memory.titan_fsdp_moments`' with
``off_default``). Moments not split by stream (the chunked loss's) are counted as if both side
streams were at their peaks then, which can only lower the result. Under tensor parallelism
FSDP2's units are a TP rank's local shards (`scaleplan.memory.titan_tp_terms.titan_tp_local_config`)
and the blocks' moments `scaleplan.memory.titan_tp_moments`'.

Measured: `scaleplan.reference.titan_fsdp_streams` names the stream of every allocation of
torchtitan's FSDP2 step on CPU (``torch.cpu.current_stream()`` follows FSDP2's stream
contexts) and records each stream's peak (``docs/validation/torchtitan-fsdp-streams.json``,
replayed by tests/test_titan_streams.py): 16 eager steps exact, 20 with compiled blocks (the
allocator's profiler events) 15 exact and the rest within 2,048 bytes. Under FSDP2 x TP
(`scaleplan.reference.titan_2d_step`, ``docs/validation/torchtitan-2d-steps.json``, replayed by
tests/test_titan_2d_steps.py): both side streams' peaks exact in 56 steps, the cache within 1%
of each step where the moments are modelled, exact in 25 of 42.
"""

from __future__ import annotations

from functools import reduce
from itertools import accumulate, pairwise
from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.dtypes import larger
from scaleplan.memory.options import StepOptions
from scaleplan.memory.titan_fsdp_moments import titan_block_backward_moment, titan_unit_shard
from scaleplan.memory.titan_terms import TITAN_PRECISIONS, titan_block_params, titan_units
from scaleplan.memory.titan_tp_moments import titan_tp_block_backward_moment
from scaleplan.memory.titan_tp_terms import titan_tp_local_config
from scaleplan.model.config import GPTConfig

__all__ = ["step_stream_cache", "titan_copy_in_peak", "titan_reduce_scatter_peak",
           "titan_stream_cache"]


def titan_copy_in_peak(cfg: GPTConfig, precision: str, *, data: int, layers: int) -> int:
    """Peak bytes of FSDP2's all-gather copy-in stream: the largest of two forward-consecutive
    units' all-gather outputs plus the second's cast input (none with fp32 parameters, whose
    shards are all-gathered as they are); 0 on one GPU, whose one-rank mesh copies on the
    default stream.

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_copy_in_peak(cfg, "bf16-mixed", data=2, layers=3)  # 2 x 584,320 + 292,160
    1460800
    """
    if data == 1:
        return 0
    e = TITAN_PRECISIONS[precision]
    numel = [titan_unit_shard(u, data) // FP32_BYTES for u in titan_units(cfg, layers)]
    cast = 0 if e == FP32_BYTES else 1
    return max((data * a + data * b + cast * b) * e for a, b in pairwise(numel))


def titan_reduce_scatter_peak(cfg: GPTConfig, *, data: int, layers: int, fresh: bool,
                              gradients: int) -> int:
    """Peak bytes of FSDP2's reduce-scatter stream. Without accumulation (``fresh``): every
    unit's fp32 shard, live at the backward's end (on one rank, each unit's output and its
    divide copy beside the shards made before it). With accumulation: the resident
    ``gradients`` and one unit's new shard (two on one rank) being added into them.

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_reduce_scatter_peak(cfg, data=2, layers=3, fresh=True, gradients=0)
    1999040
    """
    shards = [titan_unit_shard(u, data) for u in titan_units(cfg, layers)]
    copies = 1 if data > 1 else 2
    if not fresh:
        return gradients + copies * max(shards)
    if data > 1:
        return sum(shards)
    backward = shards[::-1]  # [norm, lm_head] first, the embedding last
    return max(made + shard for made, shard in zip(accumulate(backward), backward, strict=True))


def titan_stream_cache(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                       device: str, data: int, layers: int, compiled: bool, fresh: bool,
                       states: tuple[Any, Any, Any], moments: dict[str, Any],
                       chunked: bool = False, tensor: int = 1,
                       sequence_parallel: bool = False) -> Any:
    """Bytes the allocator reserves for FSDP2's side streams beyond ``tensor_peak``: the
    copy-in and reduce-scatter streams' peaks plus the default stream's (over ``moments``,
    `scaleplan.memory.stage.stage_parts`' for torchtitan, with ``states`` its weights,
    gradients and optimizer states; ``chunked``: its chunked loss's), less the peak of their
    sum; never below 0. ``tensor`` > 1: FSDP2 over a TP rank's local shards (its units and
    `scaleplan.memory.titan_tp_moments`' block moments, ``sequence_parallel`` or not).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> W, G, O = 999_520 * 2, 999_520 * 2, 999_520 * 4  # 2 ranks, 999,520 parameters
    >>> # the peak at the loss, all of it on the default stream (no shard made yet): both
    >>> # side streams' peaks come on top, 1,999,040 (every shard) + 1,460,800
    >>> titan_stream_cache(cfg, 2, 96, precision="bf16-mixed", checkpointing="none",
    ...     device="cuda", data=2, layers=3, compiled=False, fresh=True, states=(W, G, O),
    ...     moments={"backward_start": 10**6, "optimizer_step": 0})
    3459840
    """
    W, G, O = states
    local = titan_tp_local_config(cfg, tensor)  # a TP rank's FSDP2 units: its local shards
    e_hwm = titan_copy_in_peak(local, precision, data=data, layers=layers)
    rs_hwm = titan_reduce_scatter_peak(local, data=data, layers=layers, fresh=fresh,
                                       gradients=G)
    block = "recompute" if checkpointing != "none" else "block_backward"

    def backward(off_default: bool) -> Any:
        if tensor > 1:
            return titan_tp_block_backward_moment(
                cfg, b, s, precision=precision, checkpointing=checkpointing, device=device,
                layers=layers, data=data, tensor=tensor, sequence_parallel=sequence_parallel,
                fresh=fresh, off_default=off_default, head_reduced=chunked)
        return titan_block_backward_moment(cfg, b, s, precision=precision,
                                           checkpointing=checkpointing, device=device,
                                           layers=layers, data=data, fresh=fresh,
                                           compiled=compiled, off_default=off_default,
                                           head_reduced=chunked)

    # each moment's bytes on the default stream; the moments count every gradient (without
    # accumulation less G, but for the optimizer step's), the resident ones on the
    # reduce-scatter stream
    default = []
    for name, m in moments.items():
        total = W + G + O + m
        if name in ("forward_end", "backward_start", "optimizer_step"):
            # nothing gathered on the copy-in stream: the root's forward end freed it
            default.append(total - (G if not fresh or name == "optimizer_step" else 0))
        elif name == "head_backward" and not chunked:  # the last block prefetched beside it
            prefetched = titan_block_params(local) * TITAN_PRECISIONS[precision] \
                if data > 1 else 0
            default.append(total - (G if not fresh else 0) - prefetched)
        elif name == block:  # its worst moment on the default stream, the batch beside it
            batch = m + (G if fresh else 0) - backward(False)
            default.append(W + O + batch + backward(True))
        else:  # not split by stream: as if both side streams peaked then
            default.append(total - rs_hwm - e_hwm)
    peak = W + G + O + reduce(larger, moments.values())
    return larger(reduce(larger, default) + rs_hwm + e_hwm - peak, 0)


def step_stream_cache(cfg: GPTConfig, b: Any, s: Any, o: StepOptions, *, layers: int,
                      states: tuple[Any, Any, Any], moments: dict[str, Any]) -> Any:
    """`titan_stream_cache` for a step of options ``o`` on a GPU (``stage_parts``' ``states``
    and ``moments`` of a stage of ``layers`` blocks): torchtitan's FSDP2 step, with or without
    tensor parallelism (`step_options` refuses LoRA with it); 0 for every other step, whose
    side streams are not modelled (and on CPU, whose allocator caches nothing).

    >>> cfg = GPTConfig.preset("gpt2")
    >>> from scaleplan.memory.options import step_options
    >>> o = step_options(cfg, precision="bf16-mixed", optimizer="adamw", attention="flash",
    ...     checkpointing="none", device="cuda", parallelism=None, optimizer_impl=None,
    ...     hold_logits=True, cuda_context_bytes=0, allocator_slack_fraction=0.0)
    >>> step_stream_cache(cfg, 1, 64, o, layers=12, states=(0, 0, 0), moments={})
    0
    """
    if o.implementation != "torchtitan" or o.device != "cuda":
        return 0
    par = o.parallelism
    return titan_stream_cache(cfg, b, s, precision=o.precision, checkpointing=o.checkpointing,
                              device=o.device, data=par.data, layers=layers,
                              compiled=o.compile, fresh=not o.gradient_accumulation,
                              states=states, moments=moments, chunked=o.loss == "chunked",
                              tensor=par.tensor, sequence_parallel=par.sequence_parallel)
