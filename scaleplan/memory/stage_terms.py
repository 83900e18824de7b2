"""The saved-tensor terms of one pipeline stage in eager mode, and the recompute moment of full
checkpointing: the parts of `scaleplan.memory.stage.stage_parts` that depend on how the step
runs (`scaleplan.memory.compiled_terms` has them under torch.compile)."""

from __future__ import annotations

import math
from typing import Any

from scaleplan.memory.activations import (
    AUTOCAST,
    CUDA_MASK_BYTES,
    FP32_BYTES,
    TENSOR_PARALLEL_SPLIT_TERMS,
    AttentionKind,
    CheckpointingKind,
    DeviceKind,
    activation_bytes,
    block_saved_terms,
    embedding_saved_terms,
    head_saved_terms,
    layers_saved_terms,
    model_saved_terms,
    residual_bytes,
)
from scaleplan.memory.compiled_terms import compiled_block_saved_terms
from scaleplan.memory.dtypes import larger, param_dtype_bytes, semantics
from scaleplan.memory.hf_terms import hf_block_saved_terms, hf_family
from scaleplan.memory.litgpt_terms import litgpt_block_saved_terms
from scaleplan.memory.parallel import Parallelism, tensor_parallel_split
from scaleplan.memory.sharding import mlp_gradient_buffer, per_rank
from scaleplan.memory.tune_terms import tune_block_saved_terms
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.shapes import across_model, parameters

__all__ = ["block_backward_bytes", "eager_saved_terms", "fresh_mlp_node_bytes",
           "fresh_recompute_candidates", "fresh_recompute_moment", "recompute_gradients",
           "recompute_moment", "split_terms", "waiting_head_gradient"]


def split_terms(terms: dict[str, Any], par: Parallelism) -> dict[str, Any]:
    """Each saved term per tensor-parallel rank (`tensor_parallel_split`)."""
    if par.tensor == 1:
        return terms
    return {k: tensor_parallel_split(0, v, t=par.tensor, sequence_parallel=par.sequence_parallel)
            if k in TENSOR_PARALLEL_SPLIT_TERMS else
            tensor_parallel_split(v, 0, t=par.tensor, sequence_parallel=par.sequence_parallel)
            for k, v in terms.items()}


def eager_saved_terms(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                      checkpointing: CheckpointingKind, device: DeviceKind, par: Parallelism,
                      layers: int, in_flight: int, embeds: bool, heads: bool) -> dict[str, Any]:
    """The saved terms of one stage in eager mode, split over tensor-parallel ranks."""
    dropout = cfg.dropout > 0
    saved: dict[str, Any] = {}
    if embeds:
        emb = embedding_saved_terms(cfg, b, s, precision=p, device=device, dropout=dropout)
        saved.update({k: in_flight * v for k, v in split_terms(emb, par).items()})
    blocks = layers_saved_terms(cfg, b, s, layers, precision=p, attention=attention,
                                checkpointing=checkpointing, device=device, dropout=dropout,
                                each=lambda terms: split_terms(terms, par))
    saved.update({k: in_flight * v for k, v in blocks.items()})
    saved.update(split_terms(model_saved_terms(cfg, b, s, precision=p, attention=attention,
                                               checkpointing=checkpointing, device=device), par))
    if heads:
        saved.update(split_terms(head_saved_terms(cfg, b, s, precision=p, device=device), par))
    return saved


_LOSS_SIDE = ("final_norm", "lm_head", "log_softmax", "logits", "logsumexp", "targets", "loss_")


def recompute_moment(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                     device: DeviceKind, par: Parallelism, saved: dict[str, Any], copies: Any,
                     all_copies: Any, layers: int, code: str = "nanogpt", *,
                     head_gradient: Any = 0, fresh_gradients: bool = False,
                     gradients: tuple[Any, Any, bool] = (0, 0, False)) -> Any:
    """Full checkpointing's recompute moment: the saved tensors less the loss side (freed by
    then), one block rebuilt with what it saves, its weight copies and its MLP gradients.
    ``code``: "nanogpt", "hf" (Hugging Face's layer), "litgpt" (litgpt's Block), "torchtune" or
    "torchtune-compiled" (its layer, eager or compiled) or "compiled" (torch.compile's).

    For nanoGPT's dense block (the reference model, measured live at this moment,
    tests/data/recompute_peaks.json): the rebuilt block's input is the checkpoint's own storage
    (not counted twice), the head's weight copies are gone with the head's backward, the
    targets (with the loss) stay with the batch, and on top come the backward of the block's
    MLP at its worst node (`block_backward_bytes`) and ``head_gradient``: a tied head's
    gradient, which autograd holds until the embedding's backward adds its share (one
    AccumulateGrad node for the shared weight), given by the caller. An MoE block keeps its
    whole-tensor gradient buffer (`scaleplan.memory.sharding.mlp_gradient_buffer`) instead.

    transformers' layer ("hf"), torchtune's ("torchtune") and litgpt's ("litgpt"), measured
    live in whole steps with every gradient resident (tests/data/impl_recompute_peaks.json),
    take the same terms, but that their loss's targets are freed with the loss (transformers'
    ``ForCausalLMLoss`` shifts the labels into a tensor of its own; torchtune's recipe pops them
    from the batch; litgpt's are a view of the batch, which its loss side counts).
    With ``fresh_gradients`` (gradients set to None before the step, or freed in backward)
    these three take `fresh_recompute_moment` (measured, tests/data/fresh_recompute_peaks.json;
    with the optimizer in backward torchtune's only), given ``gradients``: (every gradient's
    bytes G; the gradient bytes the switch moments add at this moment,
    `scaleplan.memory.step_switches.gradients_at`, which it is returned net of; whether the
    optimizer steps in backward). That bound None (under activation offloading, whose moments
    `scaleplan.memory.tune_switches.tune_offload_stage` derives from the earlier ones, or on
    more than one GPU), torch.compile's blocks and nanoGPT keep their earlier moment, not
    re-measured with fresh gradients. torchtune's compiled layers ("torchtune-compiled") take
    the fresh moment too: its ``end`` is their whole step's peak with the standard loss, to
    the byte, and one V d 2 - T d 2 over with the chunked one (measured on CPU,
    tests/data/compiled_step_peaks.json)."""
    dropout = cfg.dropout > 0
    block = _rebuilt_block(cfg, b, s, p, attention, device, par, code, dropout)
    loss_side = sum(v for k, v in saved.items() if k.startswith(_LOSS_SIDE))
    kept = sum(saved.values()) - loss_side
    share = (all_copies - copies) // max(layers, 1)
    G, bound, in_backward = gradients
    if _takes_fresh_moment(cfg, code, fresh_gradients, gradients):
        return fresh_recompute_moment(cfg, b, s, p, attention, device, par, saved, copies,
                                      all_copies, layers, code, G=G, head_gradient=head_gradient,
                                      in_backward=in_backward) \
            - (0 if in_backward else bound)  # in backward torchtune's held bytes replace it
    whole_step = code == "nanogpt" or (code in ("hf", "torchtune", "litgpt")
                                       and not fresh_gradients)
    if whole_step and cfg.moe is None:
        rebuilt = sum(block.values()) - _checkpointed_input(cfg, b, s, p, device, par, code)
        backward = block_backward_bytes(cfg, b, s, p, dropout=dropout, device=device, par=par)
        targets = saved.get("targets", 0) if code == "nanogpt" else 0
        return kept + targets + rebuilt + share + backward + head_gradient
    return kept + copies + sum(block.values()) + share + mlp_gradient_buffer(cfg, p, par)


def recompute_gradients(cfg: GPTConfig, b: Any, s: Any, p: Precision,
                        attention: AttentionKind, device: DeviceKind, par: Parallelism,
                        saved: dict[str, Any], copies: Any, all_copies: Any, layers: int,
                        code: str, *, head_gradient: Any, fresh_gradients: bool,
                        gradients: tuple[Any, Any, bool]) -> dict[str, Any]:
    """``{"recompute": bytes}``: the ``.grad`` alive at `recompute_moment` where it takes
    `fresh_recompute_moment` (at the worst of `fresh_recompute_candidates`, elementwise for
    arrays); else none (`scaleplan.memory.step_switches.gradients_at`'s apply)."""
    if not _takes_fresh_moment(cfg, code, fresh_gradients, gradients) or gradients[2]:
        return {}
    candidates = fresh_recompute_candidates(
        cfg, b, s, p, attention, device, par, saved, copies, all_copies, layers, code,
        G=gradients[0], head_gradient=head_gradient)
    (worst, alive), *others = candidates.values()
    for value, grads in others:  # the first of equal candidates, as larger() keeps
        wins = value > worst
        worst, alive = larger(worst, value), grads * wins + alive * (1 - wins)
    return {"recompute": alive}


def _takes_fresh_moment(cfg: GPTConfig, code: str, fresh_gradients: bool,
                        gradients: tuple[Any, Any, bool]) -> bool:
    """Whether `recompute_moment` takes `fresh_recompute_moment` (its docstring says when)."""
    _, bound, in_backward = gradients
    eager = code in ("hf", "torchtune", "torchtune-compiled", "litgpt") and cfg.moe is None
    return (fresh_gradients and eager and bound is not None
            and (code == "torchtune" or not in_backward))


def fresh_recompute_moment(cfg: GPTConfig, b: Any, s: Any, p: Precision,
                           attention: AttentionKind, device: DeviceKind, par: Parallelism,
                           saved: dict[str, Any], copies: Any, all_copies: Any,
                           layers: int, code: str, *, G: Any, head_gradient: Any,
                           in_backward: bool) -> Any:
    """Bytes above weights and optimizer states at the worst moment of the backward of
    transformers', torchtune's or litgpt's (``code``) full-checkpointing step when no
    gradient exists as it starts (no accumulation): every gradient counted where it exists.

    The gradients exist from their parameter's backward on, so the worst of the blocks'
    rebuilds is either the last block's (rebuilt first: every block's checkpointed input,
    T d r each, still saved) or the first's (rebuilt last: the later blocks' inputs freed,
    their gradients made); each at its MLP's worst node (`fresh_mlp_node_bytes`) with the
    head's gradients (the output layer's unless tied, the final norm's), a tied head's
    gradient waiting for the embedding's (``head_gradient``) and the down projection's
    (weight and bias, parameter dtype). The backward ends at the embedding's backward: every
    gradient (``G``) with the tied weight's three V d at once (the head's share waiting, the
    embedding's and their sum, before AccumulateGrad takes it) or the residual gradient
    (T d r, alive while the dense embedding gradient is made; untied), beside what the
    embedding saved. With torchtune's optimizer in backward (``in_backward``) no gradient
    outlives its step: the last block's rebuild at the down projection's hook, whose held
    bytes `scaleplan.memory.tune_switches.tune_in_backward_held_bytes` adds. Measured live on
    CPU (tests/impl_recompute_peaks.py, tests/data/fresh_recompute_peaks.json)."""
    if in_backward:  # at the down projection's hook: its input (the product) freed
        return sum(_fresh_rebuild(cfg, b, s, p, attention, device, par, saved, copies,
                                  all_copies, layers, code))
    moments = fresh_recompute_candidates(cfg, b, s, p, attention, device, par, saved, copies,
                                         all_copies, layers, code, G=G,
                                         head_gradient=head_gradient)
    (last, _), (first, _), (end, _) = moments.values()
    return larger(larger(last, first), end)


def fresh_recompute_candidates(cfg: GPTConfig, b: Any, s: Any, p: Precision,
                               attention: AttentionKind, device: DeviceKind, par: Parallelism,
                               saved: dict[str, Any], copies: Any, all_copies: Any,
                               layers: int, code: str, *, G: Any,
                               head_gradient: Any) -> dict[str, tuple[Any, Any]]:
    """`fresh_recompute_moment`'s candidates without the optimizer in backward, each (bytes
    above weights and optimizer states, bytes of them that are ``.grad``, as the measured steps
    list them, tests/data/fresh_recompute_peaks.json): ``last`` (the last block's rebuild: the
    head's and final norm's, and the down projection's where `_down_gradient_made`),
    ``first`` (the first block's: every later block's too), ``end`` (the embedding's
    backward: all but the embedding's own). fp32, one untied rotary block, no bias, d 8, f 32,
    V 16: G = 1048 parameters x 4; head and final norm 136, down projection 256, wte 128:

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32,
    ...                 bias=False, tie_embeddings=False, position="rope")
    >>> c = fresh_recompute_candidates(cfg, 1, 4, "32-true", "flash", "cpu", Parallelism(),
    ...                                {"block_input": 128}, 0, 0, 1, "hf", G=4192, head_gradient=0)
    >>> c["last"][1], c["first"][1], c["end"][1]
    (1568, 1568, 3680)
    """
    g = param_dtype_bytes(p)
    kept, rebuilt, share, residual = _fresh_rebuild(cfg, b, s, p, attention, device, par,
                                                    saved, copies, all_copies, layers, code)
    block = _rebuilt_block(cfg, b, s, p, attention, device, par, code, dropout=False)
    node = fresh_mlp_node_bytes(cfg, b, s, p, code,
                                mask=block.get("resid_dropout_masks", 0) // 2)
    tensors = parameters(cfg)
    per_block = across_model(cfg, [t for t in tensors if t.per_block], layers=1) * g
    head = sum(math.prod(t.shape) for t in tensors
               if not t.per_block and t.part in ("lm_head", "norms")) * g
    down = math.prod(next(t.shape for t in tensors if t.name == "mlp.c_proj.weight"))
    down += cfg.n_embd if cfg.bias else 0
    last = kept + rebuilt + share + node + head_gradient + head + down * g
    tied = cfg.vocab_size * cfg.n_embd * g if cfg.tie_embeddings else 0
    end = G + (larger(tied + residual, 2 * tied) if tied else residual) \
        + kept - saved["block_input"]
    embedding = math.prod(next(t.shape for t in tensors if t.part == "token_embedding")) * g
    made = head + down * g * _down_gradient_made(cfg, b, s, p, code)
    return {"last": (last, made),
            "first": (last + (layers - 1) * (per_block - residual),
                      made + (layers - 1) * per_block),
            "end": (end, G - embedding)}


def _fresh_rebuild(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                   device: DeviceKind, par: Parallelism, saved: dict[str, Any], copies: Any,
                   all_copies: Any, layers: int, code: str) -> tuple[Any, Any, Any, Any]:
    """(saved tensors but the loss side, the rebuilt block's saves less its checkpointed
    input, one block's autocast weight copies, the residual gradient T d r): a fresh rebuild."""
    # hf's, torchtune's and litgpt's block terms read cfg.dropout themselves
    block = _rebuilt_block(cfg, b, s, p, attention, device, par, code, dropout=False)
    rebuilt = sum(block.values()) - _checkpointed_input(cfg, b, s, p, device, par, code)
    kept = sum(saved.values()) - sum(v for k, v in saved.items() if k.startswith(_LOSS_SIDE))
    share = (all_copies - copies) // max(layers, 1)
    return kept, rebuilt, share, b * s * cfg.n_embd * residual_bytes(p)


def fresh_mlp_node_bytes(cfg: GPTConfig, b: Any, s: Any, p: Precision, code: str, *,
                         mask: Any = 0) -> Any:
    """The worst node of a rebuilt block's MLP backward when its gradients are fresh, above
    the block's saves and the down projection's gradients (weight and bias in the parameters'
    dtype, which AccumulateGrad takes as they are): the residual stream's gradient (T d r,
    less ``mask``, the MLP's residual dropout mask, released by the dropout's backward before
    the MLP's) and the largest of

    - the down projection's backward: its incoming gradient when a tensor of its own (T d e,
      autocast's cast) and its input's gradient (T f e); under autocast its weight's and
      bias's gradients are 16-bit (f d e, d e) where the gradients count fp32 (f d 4, d 4);
    - under autocast, the cast of its weight's gradient to fp32: the projection's input
      (T f e) and weight copy (f d e), released, make up for its input's gradient and the
      16-bit weight gradient, and the bias's gradient is still 16-bit (d e for d 4);
    - a product's backward (a gated MLP's ``act(gate) * up``, or GPT-2's ``gelu_new`` in
      transformers, ``0.5 x * (1 + tanh(...))``): the gradient of the product (T f e) and of
      both factors (2 T f e) replace the freed product (T f e), and autocast's copy of the
      down projection's weight (f d e) is freed with its node.

    T = b s, d = n_embd, f = mlp_hidden, e = activation bytes, r = residual bytes.

    bf16 autocast, T = 4, d = 8, f = 32, with biases: the projection's node 4 x 8 x 2 +
    4 x 32 x 2 + 32 x 8 x (2 - 4) + 8 x (2 - 4) = -208 is below the cast's 8 x (2 - 4) = -16,
    beside the residual gradient 4 x 8 x 4 = 128:

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32)
    >>> fresh_mlp_node_bytes(cfg, 1, 4, "bf16-mixed", "litgpt")
    112
    """
    projection, product = _mlp_nodes(cfg, b, s, p, code)
    worst = projection if product is None else larger(projection, product)
    return b * s * cfg.n_embd * residual_bytes(p) - mask + worst


def _mlp_nodes(cfg: GPTConfig, b: Any, s: Any, p: Precision, code: str) -> tuple[Any, Any]:
    """`fresh_mlp_node_bytes`' (projection or cast node, product node or None)."""
    d, f, T = cfg.n_embd, cfg.mlp_hidden, b * s
    e = activation_bytes(p)
    autocast = p in AUTOCAST
    bias = d * (e - FP32_BYTES) if autocast and cfg.bias else 0
    projection = T * f * e + bias + (T * d * e + f * d * (e - FP32_BYTES) if autocast else 0)
    worst = larger(projection, bias) if autocast else projection
    if not (cfg.gated_mlp or (code == "hf" and hf_family(cfg) == "gpt2")):
        return worst, None
    return worst, 2 * T * f * e - (f * d * e if autocast else 0)


def _down_gradient_made(cfg: GPTConfig, b: Any, s: Any, p: Precision, code: str) -> Any:
    """1 where the down projection's gradients are ``.grad`` at `fresh_mlp_node_bytes`' worst
    node, else 0: under autocast its projection's and cast's nodes hold them 16-bit or being
    cast (measured for GPT-NeoX and Pythia), its product's node after they are taken."""
    projection, product = _mlp_nodes(cfg, b, s, p, code)
    if p not in AUTOCAST:
        return 1
    return 0 if product is None else 1 * (product > projection)


def _rebuilt_block(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                   device: DeviceKind, par: Parallelism, code: str,
                   dropout: bool) -> dict[str, Any]:
    """What the block recomputed under full checkpointing saves, by ``code``."""
    if code == "hf":
        return hf_block_saved_terms(cfg, b, s, precision=p,
                                    attention="eager" if attention == "eager" else "sdpa",
                                    device="cpu" if device == "cpu" else "cuda")
    if code.startswith("torchtune"):  # "torchtune" or "torchtune-compiled"
        return tune_block_saved_terms(cfg, b, s, precision=p,
                                      device="cpu" if device == "cpu" else "cuda",
                                      compiled=code.endswith("compiled"))
    if code == "litgpt":
        return litgpt_block_saved_terms(cfg, b, s, precision=p, device=device)
    if code == "compiled":
        return compiled_block_saved_terms(cfg, b, s, precision=p, checkpointing="none",
                                          dropout=dropout, device=device)
    return split_terms(block_saved_terms(cfg, b, s, precision=p, attention=attention,
                                         checkpointing="none", device=device, dropout=dropout,
                                         kind="moe" if cfg.moe is not None else "dense"), par)


def _checkpointed_input(cfg: GPTConfig, b: Any, s: Any, p: Precision, device: DeviceKind,
                        par: Parallelism, code: str) -> Any:
    """Bytes of the rebuilt block's first-norm input that are the checkpoint's own storage, the
    block input (T d r) kept since the forward: a pre-norm block's norm saves its input as it
    is, unless a composite RMSNorm upcasts a 16-bit residual (an fp32 copy of its own):
    nanoGPT's on CPU, transformers' and torchtune's on every device (``.to(torch.float32)``,
    ``x.float()`` in Python)."""
    composite = device != "cuda" or code != "nanogpt"  # transformers', torchtune's: Python
    upcast = cfg.norm == "rmsnorm" and composite and residual_bytes(p) != FP32_BYTES
    if cfg.norm_position == "post" or upcast:
        return 0
    return tensor_parallel_split(b * s * cfg.n_embd * residual_bytes(p), 0, t=par.tensor,
                                 sequence_parallel=par.sequence_parallel)


def block_backward_bytes(cfg: GPTConfig, b: Any, s: Any, p: Precision, *, dropout: bool,
                         device: DeviceKind, par: Parallelism) -> Any:
    """Bytes the backward of a rebuilt nanoGPT dense block adds, at its worst moment, to the
    tensors the block saved: the gradient of the residual stream (T d r, alive through the
    whole block's backward, since the skip connection passes it on), less the MLP's residual
    dropout mask (released once the dropout's backward ran, before the MLP's), plus the MLP
    backward's worst node, T = b s tokens, d = n_embd, f = mlp_hidden, e = activation bytes:

    - the output projection's backward: its incoming gradient when it is a tensor of its own
      (T d e: autocast's cast of the residual gradient to the bf16 branch, or dropout's masked
      gradient; without either it is the residual gradient itself), the gradient of its input
      (T f e) and of its weight (f d e, before AccumulateGrad adds it to ``.grad``);
    - under autocast, the next node casts that weight gradient to fp32: f d 4 more, as the
      projection's saved input (T f e) and weight copy (f d e), which autograd released once
      the node ran, make up for the input's and the 16-bit weight's gradients;
    - a gated MLP's product (``act(gate) * up``): the gradient of the product (T f e) and of
      both factors (2 T f e) replace the freed product (T f e): 2 T f e more.

    The largest of these; elementwise for numpy arrays, ``sympy.Max`` for symbols. f-wide
    tensors and the weight gradient split over tensor-parallel ranks, d-wide ones only with
    sequence parallelism. Measured live at the peak of the reference model's step
    (``scaleplan.reference.measure``, tests/data/recompute_peaks.json).

    fp32, T = 4, d = 8, f = 32: the residual gradient 4 x 8 x 4 = 128, c_proj's input gradient
    4 x 32 x 4 = 512 and weight gradient 32 x 8 x 4 = 1024:

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32)
    >>> block_backward_bytes(cfg, 1, 4, "32-true", dropout=False, device="cuda",
    ...                      par=Parallelism())
    1664
    """
    d, f, T = cfg.n_embd, cfg.mlp_hidden, b * s
    e, r = activation_bytes(p), residual_bytes(p)
    t, sp = par.tensor, par.sequence_parallel
    autocast = p in AUTOCAST
    incoming = T * d * e if (autocast or dropout) else 0
    projection = tensor_parallel_split(incoming, T * f * e + f * d * e, t=t, sequence_parallel=sp)
    worst = projection
    if autocast:
        worst = larger(worst, tensor_parallel_split(0, f * d * FP32_BYTES, t=t,
                                                     sequence_parallel=sp))
    if cfg.gated_mlp:
        worst = larger(worst, tensor_parallel_split(0, 2 * T * f * e, t=t,
                                                     sequence_parallel=sp))
    mask = (CUDA_MASK_BYTES if semantics(device)[1] else e) if dropout else 0
    residual = tensor_parallel_split(T * d * r - T * d * mask, 0, t=t, sequence_parallel=sp)
    return residual + worst


def waiting_head_gradient(cfg: GPTConfig, p: Precision, t: int, code: str, both_ends: bool) -> Any:
    """Bytes of a tied head's gradient that the backward holds until the embedding's adds its
    share (one AccumulateGrad node for the shared weight), V d in the parameters' dtype, when
    one stage holds both ends: nanoGPT's, transformers', torchtune's and litgpt's models
    (measured, tests/data/recompute_peaks.json, impl_ and fresh_recompute_peaks.json)."""
    if not (cfg.tie_embeddings and both_ends and code in ("nanogpt", "hf", "torchtune", "litgpt")):
        return 0
    return per_rank(cfg.vocab_size * cfg.n_embd * param_dtype_bytes(p), t)
