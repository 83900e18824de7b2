"""The model states one GPU holds under a parallel layout: which parameters its pipeline stage
and tensor-parallel rank hold, what ZeRO / FSDP shard over the data ranks, the buckets data
parallelism adds; and the optimizer step's temporaries.

`scaleplan.memory.training` adds these to the saved tensors of the step's worst moment.

>>> from scaleplan.memory.parallel import Parallelism
>>> cfg = GPTConfig.preset("gpt2")
>>> W, G, O, _ = model_states(cfg, "32-true", "adamw", Parallelism(), cfg.n_layer, True, True, 0)
>>> W == G == 4 * 124_439_808, O // W  # fp32 weights and gradients; AdamW's two moments
(True, 2)
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from scaleplan.checks import canonical
from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.parallel import Parallelism, zero3_gathered_bytes, zero_shard
from scaleplan.memory.states import (
    OptimizerName,
    gradient_bytes,
    optimizer_state_bytes,
    shape_stats,
    weight_bytes,
)
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.params import param_terms
from scaleplan.model.shapes import (
    BlockKind,
    Tensor,
    block_counts,
    parameters,
    per_config,
    split_by_block,
)

__all__ = [
    "OPTIMIZER_IMPLS",
    "OPTIMIZER_IMPL_ALIASES",
    "OptimizerImpl",
    "largest_gathered_layer",
    "mlp_gradient_buffer",
    "model_states",
    "normalize_optimizer_impl",
    "optimizer_temporaries",
    "per_rank",
]

OptimizerImpl = Literal["foreach", "fused", "for-loop"]
OPTIMIZER_IMPLS: tuple[str, ...] = get_args(OptimizerImpl)
OPTIMIZER_IMPL_ALIASES = {"for_loop": "for-loop", "forloop": "for-loop"}


def normalize_optimizer_impl(impl: object) -> OptimizerImpl | None:
    """``impl`` as one of `OPTIMIZER_IMPLS` (None: torch's default for the device), else an
    `scaleplan.errors.UnknownNameError` listing the valid names (``"fuse"`` and ``42`` were
    taken silently as the for-loop).

    >>> normalize_optimizer_impl(" Fused"), normalize_optimizer_impl(None)
    ('fused', None)
    """
    if impl is None:
        return None
    spelling = impl.strip().lower() if isinstance(impl, str) else ""  # 42, True: no name
    return canonical("optimizer_impl", impl, OPTIMIZER_IMPLS,  # type: ignore[return-value]
                     OPTIMIZER_IMPL_ALIASES, spelling=spelling)


def model_states(cfg: GPTConfig, p: Precision, opt: OptimizerName, par: Parallelism,
                 layers: int, embeds: bool, heads: bool,
                 temp: int) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer, optimizer temporaries) bytes on one GPU of a stage.

    Tensor parallelism divides the matrices by t (the embedding and head vocab-parallel, as in
    Megatron-LM) and replicates norms and the position table; a pipeline stage holds its blocks,
    the first the embeddings, the last the final norm and head (a tied head as its own copy).
    Optimizer states and temporaries scale with the parameters held (exact for AdamW). ZeRO and
    FSDP shard over the data ranks (`zero_shard`); stage 3 adds the largest layer gathered
    whole (`zero3_gathered_bytes`); reduction buckets add one bucket, DDP without
    ``gradient_as_bucket_view`` a second copy of the gradients.
    """
    return _model_states(cfg, p, opt, par, layers, embeds, heads, temp)


def _model_states_body(cfg: GPTConfig, p: Precision, opt: OptimizerName, par: Parallelism,
                       layers: int, embeds: bool, heads: bool,
                       temp: int) -> tuple[int, int, int, int]:
    terms = param_terms(cfg)
    n, routed, block, wte = _held_params(cfg, terms, par, layers, embeds, heads)
    n_total = terms["total"]
    n_single = par.tensor == 1 and par.expert == 1 and embeds and heads  # every parameter
    W, G = weight_bytes(n, p), gradient_bytes(n, p)
    O_full = optimizer_state_bytes(cfg, opt, p)
    O = O_full if n_single else O_full * n // n_total
    temp = temp if n_single else temp * n // n_total
    if par.data == 1:
        return W, G, O, temp
    if not routed:
        return _over_data_ranks(W, G, O, temp, par, p, n=n, block=block,
                                wte=wte if (embeds or heads) else 0)
    # the routed experts' states shard over the data / expert ranks that hold the same experts
    W_r, G_r = weight_bytes(routed, p), gradient_bytes(routed, p)
    O_r, temp_r = O * routed // n, temp * routed // n
    W_d, G_d, O_d, temp_d = _over_data_ranks(W - W_r, G - G_r, O - O_r, temp - temp_r, par, p,
                                             n=n, block=block,
                                             wte=wte if (embeds or heads) else 0)
    ranks = par.data // par.expert
    W_r, G_r, O_r = zero_shard(weights=W_r, gradients=G_r, optimizer=O_r,
                               stage=par.zero_stage, data=ranks)
    temp_r = temp_r if par.zero_stage == 0 else -(-temp_r // ranks)
    return W_d + W_r, G_d + G_r, O_d + O_r, temp_d + temp_r


_model_states = per_config(_model_states_body)


def _held_params(cfg: GPTConfig, terms: dict[str, Any], par: Parallelism, layers: int,
                 embeds: bool, heads: bool) -> tuple[Any, Any, Any, Any]:
    """(parameters on one GPU of a stage, the routed experts' share of them, the largest
    block's share, the embedding's share): ``layers`` blocks (as many MoE blocks as they can
    hold, `scaleplan.model.shapes.block_counts`), the embeddings when it ``embeds``, the final
    norm and head when it ``heads``; ``terms`` is `param_terms` of ``cfg``. Tensor parallelism
    divides the matrices (routed experts' too) and replicates norms; expert parallelism
    divides the routed experts."""
    t = par.tensor
    tensors = parameters(cfg)
    counts = block_counts(cfg, layers)
    blocks = {kind: _block_held(tensors, kind, par) for kind in ("moe", "dense")}
    final_norm = split_by_block(x for x in tensors if x.part == "norms")[1]
    wte, wpe = per_rank(terms["token_embedding"], t), terms["position_embedding"]
    head = wte if (not cfg.tie_embeddings or not embeds) else 0
    n = (counts["moe"] * blocks["moe"][0] + counts["dense"] * blocks["dense"][0]
         + (wte + wpe if embeds else 0) + (final_norm + head if heads else 0))
    routed = counts["moe"] * blocks["moe"][1]
    block = blocks["moe"][0] if counts["moe"] else blocks["dense"][0]
    return n, routed, block, wte


def largest_gathered_layer(cfg: GPTConfig, par: Parallelism) -> Any:
    """Parameters of the largest layer that ZeRO-3 or FSDP gathers whole on one GPU (a block or
    the token embedding ``wte``), the one `model_states` counts gathered under stage 3.

    >>> largest_gathered_layer(GPTConfig.preset("gpt2"), Parallelism(data=8, fsdp="full_shard"))
    38597376
    """
    _, _, block, wte = _held_params(cfg, param_terms(cfg), par, cfg.n_layer, True, True)
    return max(block, wte)

def _block_held(tensors: tuple[Tensor, ...], kind: BlockKind,
                par: Parallelism) -> tuple[Any, Any]:
    """(parameters of one ``kind`` block on one GPU, the routed experts' share of them)."""
    mine = [x for x in tensors if x.per_block and x.blocks in ("all", kind)]
    norms = sum(x.numel for x in mine if x.part == "norms")
    routed = per_rank(sum(x.numel for x in mine if x.routed), par.tensor * par.expert)
    other = sum(x.numel for x in mine if x.part != "norms" and not x.routed)
    return per_rank(other, par.tensor) + norms + routed, routed


def _over_data_ranks(W: int, G: int, O: int, temp: int, par: Parallelism, p: Precision, *,
                     n: int, block: int, wte: int) -> tuple[int, int, int, int]:
    """The model states of one of ``par.data`` data-parallel ranks holding ``n`` parameters:
    ZeRO's shards, the reduction bucket or DDP's second gradient copy, and under stage 3 the
    largest layer (a block or the embedding ``wte``) gathered whole."""
    stage = par.zero_stage
    W, G, O = zero_shard(weights=W, gradients=G, optimizer=O, stage=stage, data=par.data)
    temp = temp if stage == 0 else -(-temp // par.data)
    G_full = gradient_bytes(n, p)
    if stage == 0 and not par.ddp_bucket_view:
        G += G_full
    elif stage > 0:
        G += min(G_full, par.bucket_bytes)
    if stage == 3:
        largest = max(block, wte)
        W += zero3_gathered_bytes(largest, param_bytes=weight_bytes(1, p), grad_bytes=0)
        G += zero3_gathered_bytes(largest, param_bytes=0, grad_bytes=weight_bytes(1, p))
    return W, G, O, temp


def per_rank(x: Any, t: int) -> Any:
    """``ceil(x / t)``, the share of one of ``t`` tensor-parallel ranks; ``x`` itself for one
    rank (no division, so sympy symbols pass through untouched, see
    `scaleplan.symbolic.formulas`)."""
    return x if t == 1 else -(-x // t)


def optimizer_temporaries(cfg: GPTConfig, optimizer: str, precision: str, device: str,
                           impl: OptimizerImpl | None) -> int:
    """Peak temporaries of ``optimizer.step()`` in torch 2.x, for the whole model.

    ``foreach`` (torch's default on CUDA) AdamW materialises sqrt(v) for a whole parameter group
    (one param-sized buffer in the state dtype); ``for-loop`` (the default on CPU) makes sqrt(v)
    and its quotient for one tensor at a time (2 x the largest tensor); ``fused`` makes none.
    Optimizers other than AdamW are taken to update in place.
    """
    return _optimizer_temporaries(cfg, optimizer, precision, device, impl)


def _optimizer_temporaries_body(cfg: GPTConfig, optimizer: str, precision: str, device: str,
                                impl: OptimizerImpl | None) -> int:
    if optimizer not in ("adamw",):
        return 0
    impl = impl or ("foreach" if device == "cuda" else "for-loop")
    state = FP32_BYTES if precision != "bf16-true" else 2
    if impl == "fused":
        return 0
    if impl == "foreach":
        return shape_stats(cfg)[0] * state
    return 2 * int(max(t.numel for t in parameters(cfg))) * state


_optimizer_temporaries = per_config(_optimizer_temporaries_body)


def mlp_gradient_buffer(cfg: GPTConfig, p: Precision, par: Parallelism) -> Any:
    """Bytes of an MoE block's MLP weight gradients as its backward builds them, before
    autograd adds them to the resident ``.grad``: the router's, the shared experts' and the
    routed experts', where each expert's weight is a view of the stacked (n_experts, ...)
    tensor, so its gradient is a whole stacked tensor, and autograd sums the experts' into one
    buffer per stacked tensor (transformers 5's ``gate_up_proj[expert_idx]`` alike). Live while
    the block recomputed under full checkpointing runs its backward; 0 for a dense model (whose
    MLP gradients come out one matrix at a time, which the model leaves out).

    >>> from scaleplan.memory.parallel import Parallelism
    >>> from scaleplan.model.architecture import MoE
    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 moe=MoE(n_experts=4, top_k=2, expert_hidden=16))
    >>> mlp_gradient_buffer(cfg, "32-true", Parallelism())  # (4 x 2 x 16 x 8 + 4 x 8) x 4 B
    4224
    """
    if cfg.moe is None:
        return 0
    mlp = tuple(t for t in parameters(cfg) if t.part == "mlp")
    return _block_held(mlp, "moe", par)[0] * gradient_bytes(1, p)
