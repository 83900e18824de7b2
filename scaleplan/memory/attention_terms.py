"""Bytes the attention of a block saves for backward, by operation, for every attention layout
`GPTConfig` describes: multi-head, grouped- and multi-query attention with one fused q/k/v
projection (nanoGPT's ``c_attn``), with QK-norm, partial rotary and soft-capped scores; and
multi-head latent attention (`scaleplan.model.architecture.MLA`, DeepSeek-V2/V3).

T = b s tokens, a/k = query/key-value heads, h = head_dim, e = activation bytes.
"""

from __future__ import annotations

from typing import Any

from scaleplan.checks import at_one, may_be_one
from scaleplan.memory.dtypes import (
    AUTOCAST,
    CUDA_MASK_BYTES,
    FP32_BYTES,
    STAT_BYTES,
    AttentionKind,
    DeviceKind,
    activation_bytes,
    norm_terms,
    residual_bytes,
    semantics,
)
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["fused_attention_terms", "math_attention_terms", "mla_projection_terms",
           "qk_norm_terms", "rotary_dim"]


def rotary_dim(cfg: GPTConfig) -> Any:
    """Features of each head that rotary positions rotate: ``head_dim x rotary_fraction`` rounded
    down (GPT-NeoX's ``int(head_size * rotary_pct)``), MLA's ``qk_rope_head_dim``.

    >>> rotary_dim(GPTConfig(n_layer=1, n_head=2, n_embd=64, position="rope",
    ...                      rotary_fraction=0.25))
    8
    """
    if cfg.mla is not None:
        return cfg.mla.qk_rope_head_dim
    if cfg.rotary_fraction == 1.0:
        return cfg.head_dim
    return int(cfg.head_dim * cfg.rotary_fraction)


def qk_norm_terms(cfg: GPTConfig, T: Any, precision: Precision, cuda_kernels: bool,
                  fused: bool) -> dict[str, Any]:
    """What the query and key norms save (``qk_norm``): each norm's input, its statistics (one
    row per head for ``"head"``/``"per_head"``, one per token for ``"full"``), RMSNorm's
    normalised input when it has a scale, and for ``"per_head"`` (a norm without parameters
    times a (heads, head_dim) scale) the normalised q and k the scale multiplies.

    The norms read views of the q/k/v projection's output: that storage is what they save
    (``qkv``, counted once, as the fused kernel saves it too), unless RMSNorm's CPU kernel
    upcasts a 16-bit input to an fp32 copy. Without RoPE (which saves its own rotated copies) the
    fused kernel saves the normalised q and k, T (a + k) h e (``qk_normed``).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, norm="rmsnorm",
    ...                 position="rope", qk_norm="head")
    >>> qk_norm_terms(cfg, 4, "32-true", True, True)
    {'q_norm_input': 0, 'q_norm_stats': 32, 'k_norm_input': 0, 'k_norm_stats': 32}
    """
    a, k, h, e = cfg.n_head, cfg.n_kv_head, cfg.head_dim, activation_bytes(precision)
    upcast = cfg.norm == "rmsnorm" and not cuda_kernels and e != FP32_BYTES
    per_head = cfg.qk_norm == "per_head" and cfg.norm_affine
    terms: dict[str, Any] = {}
    if not (upcast or fused):
        terms["qkv"] = T * (a + 2 * k) * h * e
    for name, heads in (("q_norm", a), ("k_norm", k)):
        rows, width = (T, heads * h) if cfg.qk_norm == "full" else (T * heads, h)
        terms.update(norm_terms(cfg, rows, width, precision, cuda_kernels, name, in_bytes=e,
                                input_saved=upcast, affine=cfg.norm_affine and not per_head))
        if per_head:
            terms[f"{name}_scaled"] = rows * width * e
    if fused and cfg.position != "rope":
        terms["qk_normed"] = T * (a + k) * h * e
    return terms


def fused_attention_terms(cfg: GPTConfig, b: Any, s: Any, e: int) -> dict[str, Any]:
    """What SDPA's fused (flash) kernel saves: q, k, v (through views of the projection's
    output), RoPE's rotated q and k, and the log-sum-exp statistics. A sliding window and
    soft-capped scores keep the same O(s) statistics (FlexAttention's ``score_mod``/block mask
    on CUDA)."""
    a, k, h, T = cfg.n_head, cfg.n_kv_head, cfg.head_dim, b * s
    terms: dict[str, Any] = {"qkv": T * (a + 2 * k) * h * e}
    if cfg.position == "rope":
        terms["rope_qk"] = T * (a + k) * h * e
    terms["attn_lse"] = b * a * s * STAT_BYTES
    return terms


def math_attention_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                         attention: AttentionKind, device: DeviceKind,
                         dropout: bool) -> dict[str, Any]:
    """What eager attention (or CPU's math SDPA fallback) saves: the q, k, v copies, the
    softmax output, with ``attn_softcap`` the tanh of the scaled scores (b a s^2), with ALiBi
    under autocast the scores in fp32 (promoted by the fp32 bias) and their bf16 cast, and with
    dropout the mask and the dropped probabilities.

    At b = 1 matmul folds (1, a, s, h) into (a, s, h) as a view where b > 1 needs a copy, so a
    q, k or v that is a view of the fused q/k/v projection's output (eager q and k without RoPE
    or QK-norm; k and v with one head per query head; v not cast by the kernel) is saved as
    that whole storage, ``qkv`` T (a + 2k) h e (the storage QK-norm saves too), in place of its
    copy. A Python or numpy integer 1 counts as b = 1, and
    so does each element equal to 1 of a numpy array; a sympy symbol is taken as b > 1.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, dropout=0.1)
    >>> math_attention_terms(cfg, 1, 4, precision="32-true", attention="flash", device="cpu",
    ...                      dropout=True)["qkv"]  # T (a + 2k) h e = 4 x 6 x 4 x 4
    384
    """
    a, T = cfg.n_head, b * s
    qk, v = _qk_v_head_dims(cfg)
    e = activation_bytes(precision)
    cuda_kernels, cuda_dropout = semantics(device)
    # CPU's math SDPA fallback computes 16-bit inputs in fp32 (torch 2.13).
    ae = FP32_BYTES if attention == "flash" else e
    scores = FP32_BYTES if (cuda_kernels and precision in AUTOCAST) else ae
    # SDPA gets no dropout under CUDA's semantics (its fused kernels keep an RNG state)
    dropout = dropout and (attention == "eager" or not cuda_dropout)
    terms: dict[str, Any] = {"q_k_v_copies": T * a * (2 * qk + v) * ae}
    terms.update(_qkv_view_terms(cfg, b, s, attention=attention, e=e, ae=ae))
    if cfg.position == "alibi" and attention == "eager":
        # the bias (in the residual's dtype) promotes the scores: softmax keeps them in that
        # dtype and the product with v saves their cast back to the activation dtype (with
        # dropout, the dropped probabilities' cast: ``attn_dropped``)
        r = residual_bytes(precision)
        scores = FP32_BYTES if scores == FP32_BYTES else r
        if r != e and not dropout:
            terms["attn_scores_cast"] = b * a * s * s * e
    terms["attn_scores"] = b * a * s * s * scores
    if cfg.attn_softcap is not None:
        terms["attn_softcap_tanh"] = b * a * s * s * ae
    if dropout:  # CPU's dropout keeps a mask in the probabilities' dtype
        mask = CUDA_MASK_BYTES if cuda_dropout and attention == "eager" else scores
        terms["attn_dropout_mask"] = b * a * s * s * mask
        terms["attn_dropped"] = b * a * s * s * ae
    return terms


def _qkv_view_terms(cfg: GPTConfig, b: Any, s: Any, *, attention: AttentionKind, e: int,
                    ae: int) -> dict[str, Any]:
    """At b = 1: the copies of the q, k, v that are not views of the fused projection's output,
    and that output (``qkv``) when any is; at b > 1 the three copies. Eager q and k are views
    unless RoPE or QK-norm made new ones (the math kernel scales them); GQA's expanded k and v
    and the math kernel's fp32 casts of 16-bit inputs are copies whatever b."""
    if cfg.mla is not None or not may_be_one(b):
        return {}
    a, h, T = cfg.n_head, cfg.head_dim, b * s
    q_view = attention == "eager" and cfg.position != "rope" and cfg.qk_norm == "none"
    mha = cfg.n_kv_head == a
    views = [q_view, q_view and mha, mha and ae == e]
    if not any(views):
        return {}
    copies = views.count(False)
    return {"q_k_v_copies": at_one(b, copies * T * a * h * ae, 3 * T * a * h * ae),
            "qkv": at_one(b, T * (a + 2 * cfg.n_kv_head) * h * e, 0)}


def _qk_v_head_dims(cfg: GPTConfig) -> tuple[Any, Any]:
    """(query/key width, value width) of one head."""
    if cfg.mla is not None:
        return cfg.mla.qk_head_dim, cfg.mla.v_head_dim
    return cfg.head_dim, cfg.head_dim


def mla_projection_terms(cfg: GPTConfig, b: Any, s: Any, precision: Precision,
                         fused: bool, cuda_kernels: bool) -> dict[str, Any]:
    """What multi-head latent attention saves besides the attention core (DeepSeek-V3 as
    transformers 5 runs it), with r_q/r_kv the latent widths, n/r/v the per-head no-rope,
    rotary and value widths; its latent norms are RMSNorms whatever the config's ``norm``:

    - with a query latent, its RMSNorm (`norm_terms` over r_q) and the norm's output
      (``mla_q_latent``, T r_q e), the up projection's input; without one the queries come
      straight from the block's input (``qkv_input``);
    - the key/value down projection's output T (r_kv + r) e (``mla_kv_latent_rope``), which the
      kv norm saves through its latent view (on CPU with 16-bit inputs the norm saves an fp32
      copy of the latent instead, and the output is not kept), and the norm's output
      (``mla_kv_latent``, T r_kv e), the up projection's input;
    - under autocast, a second cast of the block's input (each down projection casts it);
    - the fused kernel (``fused``) saves the queries and keys with their rotary parts put back,
      T a (n + r) e each (``mla_qk_rotated``), the values through a view of the key/value up
      projection's output T a (n + v) e (``mla_kv_heads``), and its statistics; the math kernel
      saves its own copies instead (`math_attention_terms`).

    The rotary parts are rotated by multiplications with the cos/sin tables, which save only
    the tables; the query up projection's output is not kept.
    """
    mla = cfg.mla
    assert mla is not None
    a, d, e, T = cfg.n_head, cfg.n_embd, activation_bytes(precision), b * s
    n, r, v = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
    upcast = not cuda_kernels and e != FP32_BYTES
    terms: dict[str, Any] = {}
    if mla.q_lora_rank is not None:
        q_rank = mla.q_lora_rank
        terms.update(norm_terms(cfg, T, q_rank, precision, cuda_kernels, "mla_q_norm",
                                in_bytes=e, rms=True))
        terms["mla_q_latent"] = T * q_rank * e
    if precision in AUTOCAST:  # the query and the key/value projections each cast the input
        terms["mla_input_casts"] = T * d * e
    kv_rank = mla.kv_lora_rank
    if not upcast:
        terms["mla_kv_latent_rope"] = T * (kv_rank + r) * e
    terms.update(norm_terms(cfg, T, kv_rank, precision, cuda_kernels, "mla_kv_norm",
                            in_bytes=e, input_saved=upcast, rms=True))
    terms["mla_kv_latent"] = T * kv_rank * e
    if fused:
        terms["mla_qk_rotated"] = 2 * T * a * (n + r) * e
        terms["mla_kv_heads"] = T * a * (n + v) * e
        terms["attn_lse"] = b * a * s * STAT_BYTES
    return terms
