"""Bytes autograd saves for backward, derived operation by operation.

Each term below is one tensor that one operation of the reference GPT (nanoGPT's layout: pre-norm
blocks, one fused q/k/v projection, SDPA or eager attention, GELU or gated MLP) hands to autograd
for its backward, counted as its whole storage, and never counted twice when two operations save
views of the same storage. Parameters are excluded; autocast's low-precision weight copies are
counted apart (`autocast_weight_copy_bytes`).

Why per operation and not Korthikanti et al.'s ``34 s b h + 5 a s^2 b``: that constant assumes a
GELU MLP with a 4h hidden width, multi-head eager attention, 16-bit activations and 1-byte dropout
masks. A SwiGLU MLP saves four f-wide tensors instead of two, GQA shrinks k and v, flash attention
keeps O(s) softmax statistics instead of the s x s matrix, autocast keeps fp32 residual-stream
tensors for the norms, and the loss keeps an fp32 log-softmax of s b V elements. The published
accounting is `korthikanti_activation_bytes` in `scaleplan.memory.published`.

All arithmetic here is plain ``+``/``*`` on ``b`` (micro-batch) and ``s`` (sequence length), so it
works for Python ints (exact) and for float64 numpy arrays (sweeps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaleplan.memory.attention_terms import (
    fused_attention_terms,
    math_attention_terms,
    mla_projection_terms,
    qk_norm_terms,
    rotary_dim,
)
from scaleplan.memory.dtypes import (
    AUTOCAST,
    CUDA_MASK_BYTES,
    FP32_BYTES,
    HALF_BYTES,
    INDEX_BYTES,
    STAT_BYTES,
    AttentionKind,
    CheckpointingKind,
    DeviceKind,
    activation_bytes,
    norm_terms,
    param_dtype_bytes,
    residual_bytes,
    semantics,
)
from scaleplan.memory.mlp_terms import dense_mlp_terms, moe_mlp_terms
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.shapes import BlockKind, across_model, block_counts, model_tensors, per_config

__all__ = [
    "AUTOCAST",
    "CUDA_MASK_BYTES",
    "FP32_BYTES",
    "HALF_BYTES",
    "INDEX_BYTES",
    "STAT_BYTES",
    "TENSOR_PARALLEL_SPLIT_TERMS",
    "AttentionKind",
    "CheckpointingKind",
    "DeviceKind",
    "activation_bytes",
    "autocast_weight_copy_bytes",
    "block_saved_terms",
    "embedding_saved_terms",
    "head_saved_terms",
    "layers_saved_terms",
    "model_saved_terms",
    "param_dtype_bytes",
    "residual_bytes",
]

# The saved tensors that tensor parallelism divides over its t ranks (Korthikanti et al. 2022,
# Sec. 4.1 and Table 2: the attention and MLP internals; the loss's log-softmax with Megatron's
# vocab-parallel cross-entropy). Every other term is replicated unless sequence parallelism
# splits it too (`scaleplan.memory.parallel.tensor_parallel_split`).
TENSOR_PARALLEL_SPLIT_TERMS: frozenset[str] = frozenset({
    "qkv", "rope_qk", "attn_lse", "q_k_v_copies", "attn_scores", "attn_dropout_mask",
    "attn_dropped", "attn_out", "attn_out_copy", "attn_scores_cast", "mlp_activations",
    "log_softmax", "attn_softcap_tanh", "qk_normed", "mla_kv_heads", "mla_qk_rotated",
    "moe_expert_activations", "moe_shared_activations"})


def block_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                      attention: AttentionKind, checkpointing: CheckpointingKind,
                      device: DeviceKind, dropout: bool,
                      kind: BlockKind = "dense") -> dict[str, Any]:
    """Bytes one transformer block saves for backward, by operation; ``kind="moe"`` for a block
    whose MLP is the config's mixture of experts (`scaleplan.memory.mlp_terms.moe_mlp_terms`).

    With T = b s tokens, d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden,
    e = activation bytes (4 for 32-true, 2 otherwise), r = residual-stream bytes:

    - ``norm1_*``, ``norm2_*``: see `scaleplan.memory.dtypes.norm_terms` (residual input T d r
      plus statistics); post norms (``norm_position`` "post"/"sandwich") add ``post_norm1_*``
      and ``post_norm2_*`` on each sublayer's output (T d e input); parallel blocks with one
      shared norm have no ``norm2``, with separate norms ``norm2`` reads the same residual
      storage as ``norm1`` (its input counted once);
    - ``qkv_input``: the fused q/k/v projection's input, T d e (autocast's bf16 copy of the norm
      output under mixed precision);
    - flash (SDPA's fused kernel): ``qkv`` T (a + 2k) h e, the projection's output, which SDPA
      saves through its q, k, v views (k and v are not expanded for GQA: ``enable_gqa``);
      ``attn_lse`` b a s fp32; with RoPE, ``rope_qk``: the rotated q and k, T (a + k) h e
      (partial rotary too: the rotated part and the rest are concatenated into one copy);
    - eager, and CPU's math fallback when dropout is on: ``q_k_v_copies`` 3 T a h e (matmul
      copies the transposed views; GQA's k and v are expanded to a heads; at b = 1 the views
      that need no copy save the projection's output, ``qkv``, instead), ``attn_scores``
      b a s^2 e (the softmax output; fp32 under CUDA autocast), with ``attn_softcap`` the tanh
      output (b a s^2), and with dropout a mask and the dropped probabilities (CPU's math
      kernel computes these in fp32 under autocast);
    - ``q_norm_*``, ``k_norm_*``: QK-norm (`scaleplan.memory.attention_terms.qk_norm_terms`);
      ``mla_*``: multi-head latent attention's latents, norms and per-head expansions
      (`scaleplan.memory.attention_terms.mla_projection_terms`);
    - ``attn_out``: T a h e (MLA: the value width), SDPA's output, whose layout makes the output
      projection's input a view of it (eager: the contiguous copy of the transposed output);
    - ``resid_dropout_masks``: two T d masks (attention and MLP branches) when dropout is on;
    - ``mlp_input`` T d e (twice under autocast for gated MLPs: gate and up projections each
      cast the norm output); GELU: the up projection's output and the GELU output, 2 T f e;
      ReLU: its output alone, T f e; gated (SwiGLU/GeGLU): gate output, activation output, up
      output and product, 4 T f e; an MoE block: `scaleplan.memory.mlp_terms.moe_mlp_terms`.

    Checkpointing ``"full"`` keeps only the block input (T d r); ``"selective"`` recomputes the
    attention core (scores, softmax, dropout), Korthikanti et al. 2022 Sec. 4.2 (flash already
    recomputes its scores, so selective equals none there).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> t = block_saved_terms(cfg, 1, 4, precision="32-true", attention="flash",
    ...                       checkpointing="none", device="cuda", dropout=False)
    >>> t["qkv"], t["mlp_activations"]
    (384, 1024)
    """
    d, T = cfg.n_embd, b * s
    r = residual_bytes(precision)
    if checkpointing == "full":
        return {"block_input": T * d * r}
    terms = _attention_side(cfg, b, s, precision=precision, attention=attention,
                            checkpointing=checkpointing, device=device, dropout=dropout)
    terms.update(_mlp_side(cfg, T, precision, device, kind))
    if dropout and device == "cpu" and kind == "moe" and cfg.moe is not None:
        # CPU's dropout mask takes its input's dtype: the experts' sum is in the residual's
        # dtype (fp32 under autocast), a dense MLP's output in the activation dtype
        terms["resid_dropout_masks"] += T * d * (r - activation_bytes(precision))
    return terms


def _attention_side(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                    attention: AttentionKind, checkpointing: CheckpointingKind,
                    device: DeviceKind, dropout: bool) -> dict[str, Any]:
    """The block's first norm, attention, its post norm and the residual dropout masks."""
    d, a, T = cfg.n_embd, cfg.n_head, b * s
    e = activation_bytes(precision)
    cuda_kernels, cuda_dropout = semantics(device)
    terms: dict[str, Any] = {}
    if cfg.norm_position != "post":
        terms.update(norm_terms(cfg, T, d, precision, cuda_kernels, "norm1"))
    terms["qkv_input"] = T * d * e
    fused = not (attention == "eager" or (dropout and not cuda_dropout)
                 or _math_fallback(cfg, cuda_kernels))
    terms.update(_projection_terms(cfg, b, s, precision, fused, cuda_kernels))
    if not fused and checkpointing != "selective":
        qkv = terms.get("qkv")  # QK-norm's, whatever b: the storage math's b = 1 v views
        terms.update(math_attention_terms(cfg, b, s, precision=precision, attention=attention,
                                          device=device, dropout=dropout))
        if qkv is not None:
            terms["qkv"] = qkv
    v = cfg.head_dim if cfg.mla is None else cfg.mla.v_head_dim
    terms["attn_out"] = T * a * v * e
    if fused and _output_copied(cfg, cuda_kernels):
        terms["attn_out_copy"] = T * a * v * e
    if dropout:
        mask = CUDA_MASK_BYTES if cuda_dropout else e
        terms["resid_dropout_masks"] = 2 * T * d * mask
    if cfg.norm_position != "pre":
        terms.update(norm_terms(cfg, T, d, precision, cuda_kernels, "post_norm1", in_bytes=e))
    return terms


def _projection_terms(cfg: GPTConfig, b: Any, s: Any, precision: Precision, fused: bool,
                      cuda_kernels: bool) -> dict[str, Any]:
    """What the q/k/v projections and their norms save, and the fused kernel's inputs."""
    terms: dict[str, Any] = {}
    if cfg.mla is not None:
        terms.update(mla_projection_terms(cfg, b, s, precision, fused, cuda_kernels))
    elif fused:
        terms.update(fused_attention_terms(cfg, b, s, activation_bytes(precision)))
    if cfg.qk_norm != "none":
        terms.update(qk_norm_terms(cfg, b * s, precision, cuda_kernels, fused))
    return terms


def _math_fallback(cfg: GPTConfig, cuda_kernels: bool) -> bool:
    """Whether SDPA runs its math kernel on CPU: its fused kernel needs one width for queries,
    keys and values (MLA's values are narrower) and takes no float bias (ALiBi's). CUDA's
    kernels take both (the memory-efficient kernel; flash-attn's ``alibi_slopes``)."""
    if cuda_kernels:
        return False
    return cfg.position == "alibi" or (cfg.mla is not None
                                       and cfg.mla.qk_head_dim != cfg.mla.v_head_dim)


def _output_copied(cfg: GPTConfig, cuda_kernels: bool) -> bool:
    """Whether the output projection copies SDPA's output: CPU's fused kernel lays its output
    out as its queries, and queries made contiguous per head (a per-head QK-norm, a partial
    rotary's concatenation) make the (B, T, heads x h) input a transposed copy (CUDA's kernels
    lay it out token-major whatever the queries)."""
    if cuda_kernels:
        return False
    return cfg.qk_norm in ("head", "per_head") or (cfg.position == "rope"
                                                   and cfg.rotary_fraction != 1.0)


def _mlp_side(cfg: GPTConfig, T: Any, precision: Precision, device: DeviceKind,
              kind: BlockKind) -> dict[str, Any]:
    """The block's second norm (none for a parallel block with one shared norm), its MLP
    (dense or mixture of experts) and the MLP's post norm."""
    d, e, r = cfg.n_embd, activation_bytes(precision), residual_bytes(precision)
    cuda_kernels = device == "cuda"
    terms: dict[str, Any] = {}
    if cfg.parallel == "separate_norms":  # reads the residual norm1 reads: its input once
        upcast = cfg.norm == "rmsnorm" and not cuda_kernels and r != FP32_BYTES
        terms.update(norm_terms(cfg, T, d, precision, cuda_kernels, "norm2",
                                input_saved=upcast))
    elif cfg.parallel == "none" and cfg.norm_position != "post":
        terms.update(norm_terms(cfg, T, d, precision, cuda_kernels, "norm2"))
    if kind == "moe" and cfg.moe is not None:
        terms.update(moe_mlp_terms(cfg, T, precision))
    else:  # a shared norm's output is the storage the q/k/v projection saves
        terms.update(dense_mlp_terms(cfg, T, cfg.mlp_hidden, precision,
                                     input_saved=cfg.parallel != "shared_norm"))
    if cfg.norm_position != "pre":
        terms.update(norm_terms(cfg, T, d, precision, cuda_kernels, "post_norm2", in_bytes=e))
    return terms


def layers_saved_terms(cfg: GPTConfig, b: Any, s: Any, layers: Any, *, precision: Precision,
                       attention: AttentionKind, checkpointing: CheckpointingKind,
                       device: DeviceKind, dropout: bool,
                       each: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                       ) -> dict[str, Any]:
    """`block_saved_terms` summed over ``layers`` blocks: with ``moe``, the MoE blocks and the
    dense ones (`scaleplan.model.shapes.block_counts`: a part of the model holds as many MoE
    blocks as it can); otherwise ``layers`` times one block. ``each`` maps one block's terms
    first (a tensor-parallel rank's share of them).

    >>> cfg = GPTConfig(n_layer=3, n_head=2, n_embd=8, vocab_size=16)
    >>> one = block_saved_terms(cfg, 1, 4, precision="32-true", attention="flash",
    ...                         checkpointing="none", device="cuda", dropout=False)
    >>> all3 = layers_saved_terms(cfg, 1, 4, 3, precision="32-true", attention="flash",
    ...                           checkpointing="none", device="cuda", dropout=False)
    >>> all3["qkv"] == 3 * one["qkv"]
    True
    """
    kw: dict[str, Any] = {"precision": precision, "attention": attention,
                          "checkpointing": checkpointing, "device": device, "dropout": dropout}
    def one(kind: BlockKind) -> dict[str, Any]:
        terms = block_saved_terms(cfg, b, s, kind=kind, **kw)
        return terms if each is None else each(terms)

    if cfg.moe is None:
        return {k: layers * v for k, v in one("dense").items()}
    counts = block_counts(cfg, layers)
    out: dict[str, Any] = {}
    for kind in ("moe", "dense"):
        for k, v in one(kind).items():
            out[k] = out.get(k, 0) + counts[kind] * v
    return out


def model_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                      attention: AttentionKind, checkpointing: CheckpointingKind,
                      device: DeviceKind) -> dict[str, Any]:
    """Tensors saved once per model and shared by every block: the eager causal mask (s^2 bool;
    a second one for the sliding-window blocks when only some blocks slide) and RoPE's cos/sin
    tables (whole buffers, block_size x the rotary width each in the parameter dtype: the
    blocks save views of them).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, position="rope")
    >>> model_saved_terms(cfg, 1, 4, precision="32-true", attention="eager",
    ...                   checkpointing="none", device="cuda")
    {'causal_mask': 16, 'rope_tables': 32768}
    """
    terms: dict[str, Any] = {}
    if checkpointing == "full":
        return terms
    if attention == "eager" and checkpointing != "selective" and cfg.position != "alibi":
        terms["causal_mask"] = s * s  # ALiBi's float bias is added, and adding saves nothing
        if 0 < cfg.sliding_window_layers < cfg.n_layer:
            terms["sliding_mask"] = s * s
    elif attention == "flash" and cfg.sliding_window is not None and device != "cuda":
        # CPU's fused kernel takes the band as a bool mask and saves a float copy of it per
        # sliding block, when the band hides anything (window < s); CUDA's kernels take the
        # window itself (flash-attn's window_size): O(s)
        terms["sliding_masks"] = (cfg.sliding_window_layers * (s > cfg.sliding_window) * s * s
                                  * activation_bytes(precision))
    if cfg.position == "rope":
        terms["rope_tables"] = 2 * cfg.block_size * rotary_dim(cfg) * param_dtype_bytes(precision)
    return terms


def embedding_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                          device: DeviceKind, dropout: bool) -> dict[str, Any]:
    """Bytes the embedding saves: the token ids (int64, b s), the position ids (int64, s) for
    learned positions, the input of the projection into the residual stream when
    ``embed_dim`` differs from n_embd (T embed_dim e), the embedding norm's terms
    (``embedding_norm``) and a dropout mask of b s d when dropout is on.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> embedding_saved_terms(cfg, 2, 4, precision="32-true", device="cuda", dropout=False)
    {'token_ids': 64, 'position_ids': 32}
    """
    T = b * s
    terms: dict[str, Any] = {"token_ids": T * INDEX_BYTES}
    if cfg.position == "learned":
        terms["position_ids"] = s * INDEX_BYTES
    if cfg.embed_dim != cfg.n_embd:
        terms["project_in_input"] = T * cfg.embed_dim * activation_bytes(precision)
    if cfg.embedding_norm:
        terms.update(norm_terms(cfg, T, cfg.n_embd, precision, device == "cuda",
                                "embedding_norm"))
    if dropout:
        mask = residual_bytes(precision) if device == "cpu" else CUDA_MASK_BYTES
        terms["embedding_dropout_mask"] = T * cfg.n_embd * mask
    return terms


def head_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                     device: DeviceKind) -> dict[str, Any]:
    """Bytes the final norm, the output projection and the cross-entropy save.

    The final norm (``final_norm``) saves as `scaleplan.memory.dtypes.norm_terms`; the
    projection out of the residual stream (``embed_dim`` != n_embd) saves its input (T d e);
    the output projection saves its input (T embed_dim e); ``final_softcap`` keeps the tanh of
    the scaled logits (T V e); the cross-entropy keeps its log-softmax output (T V elements,
    fp32 even under autocast, which runs the loss in fp32; bf16 for bf16 parameters), the int64
    targets and a scalar weight.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> head_saved_terms(cfg, 1, 4, precision="32-true", device="cuda")["log_softmax"]
    256
    """
    T, e = b * s, activation_bytes(precision)
    terms: dict[str, Any] = {}
    if cfg.final_norm:
        terms.update(norm_terms(cfg, T, cfg.n_embd, precision, device == "cuda", "final_norm"))
    if cfg.embed_dim != cfg.n_embd:
        terms["project_out_input"] = T * cfg.n_embd * e
    terms["lm_head_input"] = T * cfg.embed_dim * e
    if cfg.final_softcap is not None:
        terms["logits_softcap_tanh"] = T * cfg.vocab_size * e
    loss = residual_bytes(precision)  # fp32 under autocast (cross_entropy runs in fp32)
    terms["log_softmax"] = T * cfg.vocab_size * loss
    terms["targets"] = T * INDEX_BYTES + loss  # ids plus nll_loss's total_weight scalar
    return terms


def autocast_weight_copy_bytes(cfg: GPTConfig, precision: Precision, *,
                               layers: int | None = None, head: bool = True,
                               expert: int = 1) -> Any:
    """Bytes of autocast's bf16/fp16 copies of the matmul weights of ``layers`` blocks (default
    all) and, with ``head``, of the output layer.

    Under ``"bf16-mixed"``/``"16-mixed"`` every linear layer's weight (not biases, not norms,
    not the embedding lookup) is cast once per forward; autocast caches the copy until the
    autocast region exits and the matmul saves it for backward. A tied output head is cast like
    any other linear weight. The weights are those marked ``matmul`` in
    `scaleplan.model.shapes.model_tensors`; the routed experts' are cast expert by expert (a
    view of the stacked weight each), those of the ``n_experts / expert`` experts a rank holds
    under expert parallelism. Zero otherwise.

    >>> autocast_weight_copy_bytes(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16,
    ...                                      mlp_hidden=32), "bf16-mixed")
    1792
    """
    return _autocast_weight_copy_bytes(cfg, precision, layers=layers, head=head, expert=expert)


def _autocast_weight_copy_bytes_body(cfg: GPTConfig, precision: Precision, *,
                                     layers: int | None = None, head: bool = True,
                                     expert: int = 1) -> Any:
    if precision not in AUTOCAST:
        return 0
    matmuls = [t for t in model_tensors(cfg) if t.matmul and (head or t.per_block)]
    if expert == 1:
        return across_model(cfg, matmuls, layers=layers) * HALF_BYTES
    held = across_model(cfg, matmuls, lambda t: t.numel // expert if t.routed else t.numel,
                        layers=layers)
    return held * HALF_BYTES


_autocast_weight_copy_bytes = per_config(_autocast_weight_copy_bytes_body)
