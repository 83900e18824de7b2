"""The worst moments of an eager torchtitan FSDP2 step's backward, measured whole.

`scaleplan.reference.titan_fsdp_step` runs whole training steps of torchtitan 0.3.0's Llama 3
under its own ``apply_fsdp_to_decoder`` on rank 0 of a fake process group (every gradient
resident from an earlier micro-batch, as the worst step of gradient accumulation), with
FSDP2's storage frees and re-allocations (``untyped_storage().resize_``) counted, and lists the
storages live at the peak. Three moments of the backward hold it, depending on the sizes:

- **a block's MLP** (many tokens): the SwiGLU product's backward node. Live: the activations
  the earlier blocks keep (``kept`` each: all their saves; under ``"full"`` their inputs; under
  ``"selective"`` their inputs and the policy's cache); the block's own (under ``"none"`` its
  saves; ``"full"`` its input and every save its recompute rebuilds,
  `scaleplan.memory.titan_sdpa_terms.titan_sdpa_rebuilt_block_bytes`; ``"selective"`` its
  cache less the ``wqkv`` and ``w2`` outputs its recompute consumed, and what it rebuilds); two
  ``b s F`` tensors beyond them (w2's input gradient and the product's first input gradient,
  or both of the product's once w2's input is freed); the block's incoming gradient
  (``b s d``); the loss and its gradient (4 bytes each); and w2's unsharded gradient.
- **a block's end** (few tokens): its first norm's backward, every weight gradient of the
  block made (unsharded, the parameter dtype). Live: the earlier blocks' ``kept``, the block's
  input (checkpointed), what the norm's backward holds (on CPU, torch's composite ``rms_norm``:
  its fp32 upcast and normalised x and four fp32 temporaries, ``6 b s d x 4``, measured; on
  CUDA, the fused kernel's saved input and fp32 reciprocal std and its input gradient,
  inferred from ``aten::_fused_rms_norm_backward``'s outputs, not measured), the incoming
  gradient, the loss's 8 bytes.
- **the head unit's reduce-scatter** (a large vocabulary, few tokens): every block's ``kept``,
  the last block's incoming gradient, the lm_head's unsharded gradient, the unit's fp32
  reduce-scatter input and the fp32 shard it reduces into (a new tensor, added to the resident
  gradient), and the last block prefetched.

FSDP2's buffers at a block's moments (`titan_fsdp_buffers`): the flat fp32 reduce-scatter
input of the unit whose backward ended before (FSDP2 keeps it until the next reduce-scatter:
a block's, or, for the last block, the [final norm, lm_head] unit's), the block's gathered
parameters, the next unit's all-gather output (its backward prefetch: a block's, or, for block
0, the embedding's) and the block's unsharded gradients so far. The block that peaks is the
last, the second-to-last or the first; `titan_block_backward_moment` takes the largest of every
moment. Compiled blocks (inductor's allocations bypass the dispatch mode that lists
storages) were measured whole by the allocator's profiler events instead
(`scaleplan.reference.titan_compiled_step`): the same buffers and unit moments, a compiled
block's own at its MLP and its end (``compiled=True``).

**Without gradient accumulation** (``fresh``: torchtitan's trainer sets every gradient to None
after each step) no sharded gradient is resident: the loss's moments hold none, and each
unit's reduce-scatter output (one flat fp32 tensor, each parameter padded to the ranks in
dim 0, `titan_unit_shard`) becomes its sharded gradient, so a block's moments hold the head
unit's shard and those of the blocks above it (`titan_fresh_shards`). The earliest blocks then
weigh most: the first, or the second when a block's shard outweighs the activations a block
keeps, so the second block joins the blocks compared. One more moment can peak then (few
tokens, a large vocabulary, fused AdamW without foreach temporaries): **the embedding's
reduce-scatter**, the backward's last, with its bf16 gradient, its fp32 reduce-scatter input and
output and every other unit's shard. With accumulation it stays below the head unit's moment,
which holds the same kinds of buffer and more. Measured: 30 fresh steps
(``fresh_cases``), all within 0.04%, 14 block, head-unit or embedding moments to the byte.

**On one GPU** torchtitan still applies FSDP2 (``apply_fsdp_to_decoder`` on a one-rank mesh),
and torch 2.13's FSDP2 takes its world-size-1 branches (``_fsdp_param_group.py``,
``_fsdp_collectives.py``): each unit's ``wait_for_unshard`` still copies its fp32 parameters
into unsharded ones of the param dtype (fp32 too: a second fp32 copy), but ``unshard`` only
records an event, so the backward prefetch copies nothing ahead (no next unit's all-gather
output). A unit's reduce copies its unsharded gradients into the flat fp32 input, frees them,
and writes its output as ``input / gradient_divide_factor`` (torchtitan sets the factor,
1.0): three fp32 copies of the unit's gradients at once (`ONE_RANK_DIVIDE_COPY`), and so a
fourth moment, **a block's reduce** (its backward done: the earlier blocks' ``kept``, the
gradient it passes down, the three copies), which peaks with few tokens; the head unit's
and the embedding's reduces hold the same three copies of theirs and nothing prefetched.
Measured: 52 one-rank steps (``one_rank_cases``: bf16 and fp32 parameters, none, full and
selective checkpointing, with and without accumulation), 35 backward peaks that hold FSDP2's
buffers to the byte, every step within 0.08% (the batch's position ids, ``b s x 8`` bytes,
resident in the harness). In fp32 on CPU a block's end peaks at its first norm's weight
gradient: rstd live, that gradient not made yet (`titan_norm_end_bytes`).
"""

from __future__ import annotations

from functools import reduce
from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.dtypes import larger
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_compiled_terms import (
    titan_compiled_end_moment,
    titan_compiled_mlp_moment,
)
from scaleplan.memory.titan_sdpa_terms import (
    titan_sdpa_block_terms,
    titan_sdpa_rebuilt_block_bytes,
)
from scaleplan.memory.titan_terms import (
    LOSS_SCALARS,
    TITAN_PRECISIONS,
    titan_block_params,
    titan_block_rows,
)
from scaleplan.model.config import GPTConfig

__all__ = ["ONE_RANK_DIVIDE_COPY", "titan_block_backward_moment", "titan_embedding_unit_moment",
           "titan_fresh_covers", "titan_fresh_gradients",
           "titan_fresh_shards", "titan_fsdp_buffers", "titan_head_unit_moment",
           "titan_norm_end_bytes", "titan_one_rank_reduce_moments", "titan_prefetched",
           "titan_unit_shard"]

ONE_RANK_DIVIDE_COPY = 1
"""fp32 copies of a unit's gradients a one-rank reduce holds beyond its input and output:
torch 2.13 ``_fsdp_collectives.foreach_reduce`` with one rank writes its output as
``reduce_scatter_input / gradient_divide_factor``, a temporary the size of the input
(torchtitan sets the factor, 1.0, in ``torchtitan/distributed/fsdp.py``'s
``disable_fsdp_gradient_division``)."""


def titan_fresh_covers(implementation: str, compile: bool, loss: str,
                       par: Parallelism) -> bool:
    """Whether a step without gradient accumulation is torchtitan's as measured whole
    (`scaleplan.reference.titan_fsdp_step`'s ``fresh`` steps): eager blocks, its standard loss,
    FSDP2 data ranks (one GPU is a one-rank mesh, measured too) and no other parallelism;
    compiled blocks on two or more FSDP2 ranks (`scaleplan.reference.titan_compiled_step`).
    With TP: eager blocks (`scaleplan.reference.titan_2d_step`). Compiled blocks on one GPU or
    with TP and its chunked loss were not measured without accumulation.

    >>> titan_fresh_covers("torchtitan", False, "standard", Parallelism(data=8, fsdp="full_shard"))
    True
    >>> titan_fresh_covers("torchtitan", True, "standard", Parallelism(data=8, fsdp="full_shard"))
    True
    >>> titan_fresh_covers("torchtitan", False, "standard", Parallelism())  # one GPU
    True
    >>> titan_fresh_covers("torchtitan", True, "standard", Parallelism())
    False
    """
    ranks = par.fsdp == "full_shard" and par.data > 1
    # the chunked loss: eager, on two or more FSDP2 ranks, with or without TP
    # (scaleplan.reference.titan_chunked_measure)
    chunked = loss == "chunked" and ranks and not compile
    if par.tensor > 1:  # FSDP2 x TP, eager (scaleplan.reference.titan_2d_step)
        return (implementation == "torchtitan" and (loss == "standard" or chunked)
                and not compile and par.pipeline * par.expert == 1)
    return (implementation == "torchtitan"
            and ((loss == "standard" and (ranks or (not compile and par.data == 1)))
                 or chunked)
            and par.pipeline * par.expert == 1)


def titan_unit_shard(rows: tuple[tuple[int, int], ...], data: int) -> int:
    """fp32 bytes of one unit's reduce-scatter output on a rank: each parameter's (dim 0, the
    rest) padded to a multiple of ``data`` in dim 0 (FSDP2's ``_get_dim0_padded_size``) and
    divided among the ranks (torch 2.13 ``_fsdp_collectives.foreach_reduce``: one flat fp32
    ``reduce_output`` that, without accumulation, the unit's sharded gradients are views of).

    >>> titan_unit_shard(((3000, 192), (192, 1)), 8)  # lm_head 375 x 192 rows, norm 24
    288096
    """
    return sum(-(-rows0 // data) * rest for rows0, rest in rows) * FP32_BYTES


def titan_fresh_shards(cfg: GPTConfig, *, block: int, layers: int, data: int) -> int:
    """Sharded fp32 gradient bytes on a rank while block ``block`` of ``layers`` runs its
    backward in a step without accumulation (every gradient None when it starts): those of the
    units whose backward has ended and been reduce-scattered, the [final norm, lm_head] unit
    and the blocks above ``block``.

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_fresh_shards(cfg, block=0, layers=3, data=2)  # 123,200 + 2 x 584,320
    1291840
    """
    head = titan_unit_shard(((cfg.vocab_size, cfg.n_embd), (cfg.n_embd, 1)), data)
    return head + (layers - 1 - block) * titan_unit_shard(titan_block_rows(cfg), data)


def titan_fsdp_buffers(cfg: GPTConfig, *, e: int, block: int, layers: int,
                       whole_block: bool = False, prefetch: bool = True,
                       w2_made: bool = True, head_reduced: bool = False) -> int:
    """FSDP2's unsharded bytes while block ``block`` of ``layers`` runs its backward: the
    previous unit's fp32 reduce-scatter input, this block's gathered parameters, the next
    unit's all-gather output and the block's unsharded gradients made so far (w2's at its MLP,
    the ``whole_block``'s at its end; ``e`` bytes per gathered value). ``prefetch=False``: a
    one-rank mesh, where the next unit's all-gather output is not there yet (module docstring).
    ``w2_made=False``: a compiled block's MLP before w2's weight gradient
    (`scaleplan.memory.titan_compiled_terms.titan_compiled_mlp_moment`). ``head_reduced``:
    lm_head's gradient was reduce-scattered in the forward (the chunked loss,
    `scaleplan.memory.titan_chunked_loss`), so the head unit's backward reduces the final
    norm's alone: the last block's previous input is ``d`` fp32 values.

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_fsdp_buffers(cfg, e=2, block=1, layers=3)  # measured: 2,480,640
    2480640
    """
    P, d, V = titan_block_params(cfg), cfg.n_embd, cfg.vocab_size
    head = d if head_reduced else V * d + d
    previous = head * FP32_BYTES if block == layers - 1 else P * FP32_BYTES
    prefetched = titan_prefetched(cfg, e, block) if prefetch else 0
    made = P * e if whole_block else d * cfg.mlp_hidden * e if w2_made else 0
    return previous + P * e + prefetched + made


def titan_prefetched(cfg: GPTConfig, e: int, block: int) -> int:
    """The all-gather output FSDP2 prefetches while ``block`` runs its backward: the next
    block's, or for block 0 the embedding's."""
    return cfg.vocab_size * cfg.n_embd * e if block == 0 else titan_block_params(cfg) * e


def _per_block(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
               checkpointing: str) -> tuple[Any, Any]:
    """(bytes each earlier block keeps, bytes the block in backward holds) of its activations."""
    T, d = b * s, cfg.n_embd
    whole = sum(titan_sdpa_block_terms(cfg, b, s, e=e, device=device,
                                       checkpointing="none").values())
    if checkpointing == "none":
        return whole, whole
    rebuilt = titan_sdpa_rebuilt_block_bytes(cfg, b, s, e=e, device=device,
                                             checkpointing=checkpointing)
    if device == "cpu" and e == FP32_BYTES:  # the composite norm's fp32 upcast of an fp32
        rebuilt -= T * d * e  # input is that input: the block input the checkpoint holds
    if checkpointing == "full":
        return T * d * e, T * d * e + rebuilt
    cache = titan_sdpa_block_terms(cfg, b, s, e=e, device=device, checkpointing="selective")
    kept = sum(cache.values())
    return kept, kept - cache["wqkv_output"] - cache["w2_output"] + rebuilt


def titan_norm_end_bytes(T: Any, d: int, e: int, device: str, checkpointing: str) -> Any:
    """What a block's first norm holds in its backward, beyond a checkpointed input."""
    if device == "cpu" and e == FP32_BYTES:
        # fp32: x is the block input itself (the checkpoint's, when one holds it), and the
        # peak comes at its weight gradient's reduction: x * rstd, four fp32 temporaries and
        # rstd live, its own (d) weight gradient not made yet (measured, one_rank_cases)
        return (6 if checkpointing == "none" else 5) * T * d * e + T * e - d * e
    if device == "cpu":  # composite rms_norm: fp32 x, x * rstd, four fp32 temporaries
        return 6 * T * d * FP32_BYTES
    # fused kernel: its input (the checkpointed one itself unless nothing is checkpointed),
    # the fp32 reciprocal std, the input gradient
    return (T * d * e if checkpointing == "none" else 0) + T * FP32_BYTES + T * d * e


def titan_head_unit_moment(cfg: GPTConfig, T: Any, *, e: int, kept: Any, layers: int,
                           data: int, off_default: bool, head_reduced: bool) -> Any:
    """The head unit's reduce-scatter: every block's kept activations, the last block's
    incoming gradient and FSDP2's buffers (module docstring); ``off_default``: the default
    stream's part (`_reduce_input`); ``head_reduced``: the final norm's alone
    (`titan_fsdp_buffers`)."""
    d, V = cfg.n_embd, 0 if head_reduced else cfg.vocab_size
    if off_default:
        return kept * layers + T * d * e + LOSS_SCALARS + _reduce_input(V * d + d, e)
    buffers = ((V * d + d) * FP32_BYTES + titan_unit_shard(((V, d), (d, 1)), data) + V * d * e
               + titan_block_params(cfg) * e) if data > 1 else _one_rank_reduce(V * d + d)
    return kept * layers + T * d * e + LOSS_SCALARS + buffers


def _one_rank_reduce(numel: int) -> int:
    """A unit's reduce on a one-rank mesh: its fp32 input, output and divide copy (module
    docstring); its unsharded gradients are freed by then, and nothing is prefetched."""
    return numel * FP32_BYTES * (2 + ONE_RANK_DIVIDE_COPY)


def _reduce_input(numel: int, e: int) -> int:
    """The default stream's part of a unit's reduce, at its worst: the flat fp32 input made
    while the unit's unsharded gradients (``e`` bytes each) are still live (torch 2.13
    ``foreach_reduce`` allocates it, copies them in, then drops them; the output and, on one
    rank, its divide copy are made on the reduce-scatter stream after; the next unit's
    all-gather output is on the copy-in stream). Measured: the final norm's bf16 weight
    gradient beside lm_head's when the head unit's input is allocated
    (``docs/validation/torchtitan-fsdp-streams.json``, vocab-12k-2)."""
    return numel * (FP32_BYTES + e)


def titan_embedding_unit_moment(cfg: GPTConfig, *, e: int, layers: int, data: int,
                                fresh: bool) -> int:
    """The embedding unit's reduce-scatter, the backward's last: its unsharded gradient (the
    parameter dtype), its fp32 reduce-scatter input and the shard it reduces into, the loss's
    8 bytes and, without accumulation, every other unit's shard (nothing else: the blocks'
    activations and block 0's reduce-scatter input are freed by then, measured). Its default
    stream's part, V d (4 + e) and the loss's 8 bytes (`_reduce_input`), is always below the
    head unit's, (V d + d)(4 + e) and more: ``off_default`` leaves it out."""
    V, d = cfg.vocab_size, cfg.n_embd
    made = titan_fresh_shards(cfg, block=-1, layers=layers, data=data) if fresh else 0
    if data == 1:
        return _one_rank_reduce(V * d) + LOSS_SCALARS + made
    return V * d * e + V * d * FP32_BYTES + titan_unit_shard(((V, d),), data) + LOSS_SCALARS \
        + made


def titan_one_rank_reduce_moments(cfg: GPTConfig, T: Any, *, e: int, kept: Any, layers: int,
                                  blocks: list[int], fresh: bool,
                                  off_default: bool) -> list[Any]:
    """Each of ``blocks``' reduce on a one-rank mesh, its backward done: the activations the
    blocks below it keep, the gradient it passes down, the loss's 8 bytes, its gradients as
    the fp32 reduce input, output and divide copy (module docstring) and, without
    accumulation, the shards made above it; ``off_default``: the default stream's part
    (`_reduce_input`)."""
    P = titan_block_params(cfg)
    unit = _reduce_input(P, e) if off_default else _one_rank_reduce(P)
    return [kept * j + T * cfg.n_embd * e + LOSS_SCALARS + unit
            + (titan_fresh_shards(cfg, block=j, layers=layers, data=1)
               if fresh and not off_default else 0)
            for j in blocks]


def titan_block_backward_moment(cfg: GPTConfig, b: Any, s: Any, *, precision: str,
                                checkpointing: str, device: str, layers: int,
                                data: int, fresh: bool = False, compiled: bool = False,
                                off_default: bool = False, head_reduced: bool = False) -> Any:
    """Live bytes beyond the sharded states and the batch at the backward's worst moment
    (module docstring), for eager SDPA blocks on ``data`` FSDP2 ranks. ``fresh``: a step
    without accumulation, whose sharded gradients are not resident but made unit by unit
    (`titan_fresh_shards`, counted in the moments). ``compiled``: torchtitan's per-block
    compile, measured whole on two or more ranks (`scaleplan.reference.titan_compiled_step`):
    the same FSDP2 buffers and unit moments, with what a compiled block keeps and holds at its
    MLP's backward and at its end (`scaleplan.memory.titan_compiled_terms`). ``off_default``:
    each moment less what FSDP2's side streams hold then (the shards made, the next unit's
    all-gather output; `scaleplan.memory.titan_streams`), the default stream's worst.
    ``head_reduced``: the chunked loss reduced lm_head's gradient in the forward
    (`titan_fsdp_buffers`).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_block_backward_moment(cfg, 2, 96, precision="bf16-mixed", checkpointing="full",
    ...                             device="cpu", layers=3, data=2)  # measured: 4,531,208
    4531208
    """
    moments = _sub_moments(cfg, b, s, precision=precision, checkpointing=checkpointing,
                           device=device, layers=layers, data=data, fresh=fresh,
                           compiled=compiled, off_default=off_default,
                           head_reduced=head_reduced)
    return reduce(larger, [value for value, _ in moments])


def titan_fresh_gradients(cfg: GPTConfig, b: int, s: int, *, precision: str,
                          checkpointing: str, device: str, layers: int, data: int,
                          compiled: bool) -> int:
    """The sharded gradient bytes alive at `titan_block_backward_moment`'s worst moment of a
    step without accumulation: the shards made by then (on one rank a reduce's output is its
    shard; its divide copy is not a gradient).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_fresh_gradients(cfg, 2, 96, precision="bf16-mixed", checkpointing="full",
    ...                       device="cpu", layers=3, data=2, compiled=False)
    ... # block 0: 123,200 + 2 x 584,320
    1291840
    """
    moments = _sub_moments(cfg, b, s, precision=precision, checkpointing=checkpointing,
                           device=device, layers=layers, data=data, fresh=True,
                           compiled=compiled, off_default=False)
    return int(max(moments, key=lambda m: m[0])[1])


def _sub_moments(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                 device: str, layers: int, data: int, fresh: bool, compiled: bool,
                 off_default: bool, head_reduced: bool = False) -> list[tuple[Any, Any]]:
    """(bytes, sharded gradient bytes made by then without accumulation) of each moment
    `titan_block_backward_moment` takes the worst of."""
    e = TITAN_PRECISIONS[precision]
    T, d, V = b * s, cfg.n_embd, cfg.vocab_size
    incoming = T * d * e + LOSS_SCALARS
    if compiled:
        kept, mlp, w2_made = titan_compiled_mlp_moment(cfg, b, s, e=e, device=device,
                                                       checkpointing=checkpointing)
        end = titan_compiled_end_moment(cfg, b, s, e=e, checkpointing=checkpointing)
    else:
        kept, own = _per_block(cfg, b, s, e=e, device=device, checkpointing=checkpointing)
        mlp, w2_made = own + 2 * T * cfg.mlp_hidden * e, True
        end = ((T * d * e if checkpointing != "none" else 0)
               + titan_norm_end_bytes(T, d, e, device, checkpointing))
    mlp, end = mlp + incoming, end + incoming

    def made(j: int) -> int:
        return titan_fresh_shards(cfg, block=j, layers=layers, data=data) if fresh else 0

    def fsdp(j: int, whole_block: bool) -> int:
        # off the default stream: the shards made, the next unit's all-gather output
        side = made(j) + (titan_prefetched(cfg, e, j) if data > 1 else 0) if off_default else 0
        return made(j) - side + titan_fsdp_buffers(cfg, e=e, block=j, layers=layers,
                                                   whole_block=whole_block,
                                                   prefetch=data > 1, w2_made=w2_made,
                                                   head_reduced=head_reduced)

    # the buffers differ at the last, second-to-last and first block and are alike between,
    # where the kept activations grow and the fresh shards shrink with j: both ends of that run
    blocks = sorted({layers - 1, max(layers - 2, 0), min(1, layers - 1), 0})
    # a unit's reduce makes its shard (on one rank its whole output)
    out = [(titan_head_unit_moment(cfg, T, e=e, kept=kept, layers=layers, data=data,
                                   off_default=off_default, head_reduced=head_reduced),
            titan_unit_shard(((V, d), (d, 1)), data))]
    if not off_default:
        out.append((titan_embedding_unit_moment(cfg, e=e, layers=layers, data=data, fresh=fresh),
                    made(-1) + titan_unit_shard(((V, d),), data)))
    out += [(kept * j + mlp + fsdp(j, False), made(j)) for j in blocks]
    out += [(kept * j + end + fsdp(j, True), made(j)) for j in blocks]
    if data == 1:
        P = titan_block_params(cfg) * FP32_BYTES
        out += [(value, made(j) + P) for value, j in zip(titan_one_rank_reduce_moments(
            cfg, T, e=e, kept=kept, layers=layers, blocks=blocks, fresh=fresh,
            off_default=off_default), blocks, strict=True)]
    return out
