"""The worst moments of an eager torchtitan FSDP2 x TP step's backward, measured whole.

`scaleplan.reference.titan_2d_step` runs whole training steps of torchtitan 0.3.0's Llama 3
under TP (its sharding config, sequence parallel by default) and FSDP2 over the data-parallel
ranks, on rank 0 of a fake process group, with and without gradient accumulation, and lists
the storages live at each step's peak (``docs/validation/torchtitan-2d-steps.json``). A TP
rank's FSDP2 units are the local shards (`scaleplan.memory.titan_tp_terms.titan_tp_local_config`),
so FSDP2's buffers are `scaleplan.memory.titan_fsdp_moments`' for that config: the previous
unit's fp32 reduce-scatter input, the block's gathered parameters, the next unit prefetched and
the unsharded gradients made, and without accumulation the shards made by then
(`scaleplan.memory.titan_fsdp_moments.titan_fresh_shards`). The activations are a TP rank's
(`scaleplan.memory.titan_tp_terms.titan_tp_block_terms`, SDPA): ``Ts`` positions between the
matmuls (``b ceil(s / t)`` with sequence parallelism), ``T = b s`` inside attention and the MLP.
The moments, each beyond the sharded states, the batch and the embedding's saved ids and mask:

- **a block's MLP backward** (as without TP): the activations the blocks below keep, the
  block's own (under ``"full"`` its input and what its recompute rebuilt), two ``T F_t``
  tensors (``F_t`` the local ``mlp_hidden``) beyond them, the gradient the block receives
  (``Ts d``), the loss's 8 bytes, FSDP2's buffers with w2's unsharded gradient;
- **a checkpointed block's recompute end** (``"full"``): torchtitan's ``FullAC`` recomputes the
  whole block (``early_stop=False``), so at its end, with every tensor it rebuilt, w2's partial
  ``T d`` output, the ``T d`` input of its reduce-scatter and the block input all-gathered once
  more (``T d``) are live, with the reduce-scatter's ``Ts d`` output, the residual sum and the
  second norm's output (``3 Ts d``) and the gradient received; FSDP2's buffers without any
  unsharded gradient;
- **a block's end**, every weight gradient made: wqkv's ``T d`` input gradient before its
  reduce-scatter, the gradient of wqkv's output, the gathered input wqkv saved and the first
  norm's saves; then that norm's backward on the rank's ``Ts`` positions, as without TP;
- **the head unit's and the embedding unit's reduce-scatter** (a large vocabulary, few
  tokens), and on one data rank each block's reduce, as without TP, with the local shapes.

The functional collectives' ``AsyncCollectiveTensor`` wrappers (around a reduce-scattered
output, or a gathered input taken as a view when a micro-batch holds one sequence) allocate
nothing: they are counted by the tensors they wrap (`scaleplan.reference.tracking`).

Measured (`scaleplan.reference.titan_2d_step`, torch's DTensor TP, which torch 2.13's FSDP2
composes with; replayed by tests/test_titan_2d_steps.py): 56 steps, with and without
accumulation, one to four data ranks. With sequence parallelism (52 steps) every step is
within 0.2%, to the byte where a block's or a unit's moment peaks (36 steps; two more peak
inside a rebuilt MLP's backward at 32 tokens on 4 TP ranks, 3,488 bytes above the block's
end), one sequence a micro-batch included. Not modelled: sequence parallelism off (DTensor
computes w2's gradients unsharded; up to 2.1% under).
"""

from __future__ import annotations

from functools import reduce
from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.dtypes import larger
from scaleplan.memory.titan_fsdp_moments import (
    titan_embedding_unit_moment,
    titan_fresh_shards,
    titan_fsdp_buffers,
    titan_head_unit_moment,
    titan_norm_end_bytes,
    titan_one_rank_reduce_moments,
    titan_prefetched,
    titan_unit_shard,
)
from scaleplan.memory.titan_terms import (
    INT64_BYTES,
    LOSS_SCALARS,
    TITAN_PRECISIONS,
    titan_block_params,
)
from scaleplan.memory.titan_tp_terms import (
    titan_tp_block_terms,
    titan_tp_local_config,
    titan_tp_norm_bytes,
    titan_tp_rebuilt_block_bytes,
)
from scaleplan.model.config import GPTConfig

__all__ = ["titan_tp_block_backward_moment", "titan_tp_fresh_gradients"]


def _positions(s: Any, t: int, sequence_parallel: bool) -> Any:
    """Positions of one sequence a TP rank holds between the matmuls."""
    return -(-s // t) if sequence_parallel else s


def _per_block(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str, checkpointing: str,
               tensor: int, sp: bool) -> tuple[Any, Any]:
    """(bytes each earlier block keeps, bytes the block in backward holds) on a TP rank."""
    terms = titan_tp_block_terms(cfg, b, s, e=e, device=device, checkpointing=checkpointing,
                                 tensor=tensor, sequence_parallel=sp, kernel="sdpa")
    kept = sum(terms.values())
    if checkpointing == "none":
        return kept, kept
    rebuilt = titan_tp_rebuilt_block_bytes(cfg, b, s, e=e, device=device, tensor=tensor,
                                           sequence_parallel=sp, kernel="sdpa")
    if device == "cpu" and e == FP32_BYTES:  # the composite norm's fp32 upcast of an fp32
        rebuilt -= kept  # input is that input: the block input the checkpoint holds
    return kept, kept + rebuilt


def _block_ends(cfg: GPTConfig, loc: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                checkpointing: str, Ts: Any, own: Any, incoming: Any) -> list[tuple[Any, bool]]:
    """(bytes beyond the blocks below and FSDP2's buffers, whether the block's whole gradients
    are made) of a block's later moments (module docstring): its end, before wqkv's input
    gradient is reduce-scattered and at its first norm's backward; with full checkpointing,
    its recompute's end."""
    T, d = b * s, cfg.n_embd
    # a block's end, every weight gradient made: wqkv's input gradient (T d, partial, before
    # its reduce-scatter) beside the gradient of wqkv's output, the gathered input wqkv saved
    # and the first norm's saves (its input: the block input a checkpoint holds, counted);
    # then that norm's backward on the rank's Ts positions, as without TP
    own_input = (Ts * d * e if checkpointing != "none" else 0) + incoming
    norm = titan_tp_norm_bytes(Ts, d, e, device) - (Ts * d * e if checkpointing != "none" and (
        device != "cpu" or e == FP32_BYTES) else 0)
    qkv = T * (loc.n_head + 2 * loc.n_kv_head) * loc.head_dim * e
    ends = [(own_input + norm + 2 * T * d * e + qkv, True),
            (own_input + titan_norm_end_bytes(Ts, d, e, device, checkpointing), True)]
    if checkpointing == "full":
        # w2's partial output, its reduce-scatter input, the input gathered again (3 T d);
        # the reduce-scatter output, the residual sum and the second norm's output (3 Ts d);
        # on CPU in fp32 one Ts d fewer: the second norm's upcast of the residual sum
        # (counted in what the recompute rebuilt) is that sum itself
        alias = Ts * d * e if device == "cpu" and e == FP32_BYTES else 0
        ends.append((own + 3 * T * d * e + 3 * Ts * d * e - alias + incoming, False))
    return ends


def _sub_moments(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                 device: str, layers: int, data: int, tensor: int, sequence_parallel: bool,
                 fresh: bool, off_default: bool,
                 head_reduced: bool = False) -> list[tuple[Any, Any]]:
    """(bytes, sharded gradient bytes made by then without accumulation) of each moment
    `titan_tp_block_backward_moment` takes the worst of."""
    e = TITAN_PRECISIONS[precision]
    loc = titan_tp_local_config(cfg, tensor)
    T, d = b * s, cfg.n_embd
    Ts = b * _positions(s, tensor, sequence_parallel)
    kept, own = _per_block(cfg, b, s, e=e, device=device, checkpointing=checkpointing,
                           tensor=tensor, sp=sequence_parallel)
    incoming = Ts * d * e + LOSS_SCALARS

    def made(j: int) -> int:
        return titan_fresh_shards(loc, block=j, layers=layers, data=data) if fresh else 0

    def fsdp(j: int, w2_made: bool, whole_block: bool = False) -> int:
        # off the default stream: the shards made, the next unit's all-gather output
        side = made(j) + (titan_prefetched(loc, e, j) if data > 1 else 0) if off_default else 0
        return made(j) - side + titan_fsdp_buffers(loc, e=e, block=j, layers=layers,
                                                   whole_block=whole_block,
                                                   prefetch=data > 1, w2_made=w2_made,
                                                   head_reduced=head_reduced)

    blocks = sorted({layers - 1, max(layers - 2, 0), min(1, layers - 1), 0})
    V = loc.vocab_size
    head = titan_head_unit_moment(loc, Ts, e=e, kept=kept, layers=layers, data=data,
                                  off_default=off_default, head_reduced=head_reduced)
    out = [(head, titan_unit_shard(((V, d), (d, 1)), data))]
    if not off_default:
        # after the embedding's backward: block 0's input and the embedding's saved
        # ids and mask (which the stage adds to every moment) freed
        out.append((titan_embedding_unit_moment(loc, e=e, layers=layers, data=data,
                                                fresh=fresh) - T * (INT64_BYTES + e),
                    made(-1) + titan_unit_shard(((V, d),), data)))
    mlp = own + 2 * T * loc.mlp_hidden * e + incoming
    out += [(kept * j + mlp + fsdp(j, True), made(j)) for j in blocks]
    for end, whole in _block_ends(cfg, loc, b, s, e=e, device=device,
                                  checkpointing=checkpointing, Ts=Ts, own=own, incoming=incoming):
        out += [(kept * j + end + fsdp(j, whole, whole_block=whole), made(j)) for j in blocks]
    if data == 1:  # a one-rank mesh: each block's reduce (its fp32 input, output, divide copy)
        P = titan_block_params(loc) * FP32_BYTES
        reduces = titan_one_rank_reduce_moments(loc, Ts, e=e, kept=kept, layers=layers,
                                                blocks=blocks, fresh=fresh,
                                                off_default=off_default)
        out += [(value, made(j) + P) for value, j in zip(reduces, blocks, strict=True)]
    return out


def titan_tp_block_backward_moment(cfg: GPTConfig, b: Any, s: Any, *, precision: str,
                                   checkpointing: str, device: str, layers: int, data: int,
                                   tensor: int, sequence_parallel: bool, fresh: bool = False,
                                   off_default: bool = False, head_reduced: bool = False) -> Any:
    """Live bytes beyond the sharded states, the batch and the embedding's saved ids and mask
    at the backward's worst moment (module docstring), for eager SDPA blocks on one rank of
    ``data`` FSDP2 x ``tensor`` TP ranks. ``fresh``: a step without accumulation (the shards
    made by then counted in the moments); ``off_default``: each moment less what FSDP2's side
    streams hold then (`scaleplan.memory.titan_streams`); ``head_reduced``: the chunked loss
    reduced lm_head's gradient in the forward
    (`scaleplan.memory.titan_fsdp_moments.titan_fsdp_buffers`).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_tp_block_backward_moment(cfg, 2, 96, precision="bf16-mixed", checkpointing="none",
    ...     device="cpu", layers=3, data=2, tensor=2, sequence_parallel=True)
    3496584
    """
    moments = _sub_moments(cfg, b, s, precision=precision, checkpointing=checkpointing,
                           device=device, layers=layers, data=data, tensor=tensor,
                           sequence_parallel=sequence_parallel, fresh=fresh,
                           off_default=off_default, head_reduced=head_reduced)
    return reduce(larger, [value for value, _ in moments])


def titan_tp_fresh_gradients(cfg: GPTConfig, b: int, s: int, *, precision: str,
                             checkpointing: str, device: str, layers: int, data: int,
                             tensor: int, sequence_parallel: bool) -> int:
    """The sharded gradient bytes alive at `titan_tp_block_backward_moment`'s worst moment of
    a step without accumulation: the shards made by then."""
    moments = _sub_moments(cfg, b, s, precision=precision, checkpointing=checkpointing,
                           device=device, layers=layers, data=data, tensor=tensor,
                           sequence_parallel=sequence_parallel, fresh=True, off_default=False)
    return int(max(moments, key=lambda m: m[0])[1])
