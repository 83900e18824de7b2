"""Bytes a ``torch.compile``'d Hugging Face transformers model saves for backward with dropout.

`scaleplan.memory.hf_compiled_terms` takes these when ``cfg.dropout`` > 0 (every dropout
probability of the model: transformers' ``attention_dropout``, GPT-2's ``embd_pdrop``,
``resid_pdrop`` and ``attn_pdrop``, 0.1 in its default config, GPT-NeoX's ``hidden_dropout``),
read from AOT autograd's partition of transformers 5.25's GPT-2, Llama, Qwen2, Mistral, Gemma
and GPT-NeoX on CPU (inductor, torch 2.13; `scaleplan.reference.hf_compiled`'s ``--dropout`` rows,
tests/data/hf_compiled_dropout.json), with dropout 0.1:

- ``nn.Dropout`` keeps the bool mask of its decomposition (``rand > p``, 1 byte per element);
- attention dropout on CPU runs SDPA's math path (measured): its own q, k and v, the fp32
  softmax, a bool mask and, in fp32, the dropped probabilities, b x heads x s x s each, in
  place of the fused kernel's output and log-sum-exp (at micro-batch 1, a little more:
  `_one_row_terms`);
- attention dropout on CUDA stays in SDPA's fused kernel (inferred from its signature, not
  measured): 16 bytes of Philox seed and offset per layer more than without dropout;
- checkpointed GPT-2 (traced checkpoints) keeps inductor's seeds instead of RNG states
  (CPU; refused on CUDA, not measured); checkpointed Llama runs its layers eagerly and keeps
  what it keeps without dropout (`scaleplan.memory.hf_compiled_terms`).

``e`` is the bytes of an activation element (4 in fp32, 2 under bf16 autocast), ``n`` the
number of layers; all arithmetic is plain ``+``/``*`` on ``b`` and ``s``.
"""

from __future__ import annotations

from typing import Any

from scaleplan.checks import is_integer
from scaleplan.errors import ScaleplanError
from scaleplan.memory.hf_terms import hf_family
from scaleplan.model.config import GPTConfig

__all__ = ["PHILOX_BYTES", "hf_checkpointed_gpt2_dropout_terms",
           "hf_compiled_dropout_terms"]

FP32 = 4
BOOL = 1  # the dropout decomposition's ``rand > p`` mask, CPU and CUDA alike
INDEX = 8  # int64 seeds and ids
PHILOX_BYTES = 16
"""SDPA's memory-efficient CUDA kernel with dropout: its Philox seed and offset, two 0-d int64
tensors (torch/_meta_registrations.py, ``meta__scaled_dot_product_efficient_attention``,
torch 2.13), kept for its backward."""


def hf_compiled_dropout_terms(terms: dict[str, Any], cfg: GPTConfig, b: Any, s: Any, e: int,
                              n: Any, device: str) -> dict[str, Any]:
    """``terms`` (no checkpointing) with every dropout probability ``cfg.dropout`` > 0
    (transformers' ``attention_dropout``; GPT-2's ``embd_pdrop``/``resid_pdrop``/``attn_pdrop``;
    GPT-NeoX's ``hidden_dropout``), read from the partition on CPU at 2 and 3 layers
    (tests/data/hf_compiled_dropout.json).

    - ``nn.Dropout`` (GPT-2's embedding and its two residual branches, GPT-NeoX's likewise):
      inductor decomposes it into ``rand > p`` and keeps that bool mask (T d 1 each, ``gt``),
      on CPU and CUDA alike (the decomposition is device-independent; nanoGPT's compiled
      terms measured the same masks); random ops are never recomputed.
    - Attention dropout on CPU (measured): SDPA with ``dropout_p > 0`` takes the math path,
      decomposed: the layout's own q/k/v storages, SDPA's output and log-sum-exp and the
      shared causal mask are not kept; per layer the math path keeps its own q, k and v
      (3 T a h e, k and v expanded to the query heads: ``permute``/``convert_element_type``
      before its bmm's), the fp32 softmax (b a s s 4, ``where``, under autocast too), the bool
      dropout mask (b a s s 1) and, in fp32 only, the dropped probabilities (b a s s 4: under
      autocast their bf16 cast is recomputed from the softmax and the mask); the output
      projection's input (T a h e) stays (GPT-NeoX already counts it in its linear inputs).
      GPT-NeoX's second layer keeps ``x_hat`` in bf16 too (no exchange). What is kept of q, k
      and v depends on the query heads per kv head: `_math_qkv`.
    - Attention dropout on CUDA (inferred, not measured): SDPA keeps its fused kernel (the
      memory-efficient one, which takes the materialised mask and dropout: flash takes no
      mask); its backward reads what it reads without dropout plus the Philox seed and offset
      (torch/_meta_registrations.py, ``meta__scaled_dot_product_efficient_attention``, torch
      2.13: two 0-d int64 tensors), `PHILOX_BYTES` per layer, and no mask.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, dropout=0.1)  # GPT-2's
    >>> hf_compiled_dropout_terms({}, cfg, 2, 4, e=4, n=1, device="cuda")
    {'embedding_dropout_mask': 64, 'resid_dropout_masks': 128, 'sdpa_philox_seed_offset': 16}
    """
    T, d, a, h = b * s, cfg.n_embd, cfg.n_head, cfg.head_dim
    family = hf_family(cfg)
    out = dict(terms)
    if family in ("gpt2", "gpt_neox"):  # nn.Dropout after the embedding and on each branch
        out["embedding_dropout_mask"] = T * d * BOOL
        out["resid_dropout_masks"] = n * 2 * T * d * BOOL
    # GPT-NeoX's second layer keeps x_hat in bf16 too: its input, behind the first layer's
    # random masks, is not rebuilt from the embedding's output (measured on CPU; the masks are
    # the same on CUDA)
    out.pop("second_layer_exchange", None)
    if device != "cpu":
        out["sdpa_philox_seed_offset"] = n * PHILOX_BYTES
        return out
    out["attn_qkv"] = n * _math_qkv(cfg, T, e)
    for gone in ("fused_qkv", "rotated_qk", "sdpa_out", "sdpa_qkv_out", "sdpa_lse", "causal_mask"):
        out.pop(gone, None)
    P = b * a * s * s  # attention probabilities per layer
    if family != "gpt_neox":
        out["attn_output_proj_input"] = n * T * a * h * e
    out["attn_softmax"] = n * P * FP32
    out["attn_dropout_mask"] = n * P * BOOL
    if e == FP32:
        out["attn_dropped"] = n * P * FP32
    out.update(_one_row_terms(cfg, b, s, e, n))
    return out


def _one_row_terms(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any) -> dict[str, Any]:
    """What the partition keeps more at micro-batch 1 (CPU, dropout; measured at 1 x 40 tokens,
    2 and 3 layers), where reshaping a head-split tensor to SDPA's [b a, s, h] is a view:

    - fused-qkv layouts (GPT-2, GPT-NeoX) in fp32: the math path's v is kept as a view of the
      fused projection's output, whose whole storage (T 3d 4) counts in place of v's copy
      (T d 4): 2 T d 4 more per layer (under bf16 autocast v is a new cast: nothing more);
    - GPT-2: the first layer keeps the scores (b a s s 4, ``bmm``) with their max and sum
      (2 b a s 4) and a not-all-masked flag (b a s 1, ``logical_not_1``) in place of the
      softmax, and the position ids a second time (s 8, ``cumsum``).

    ``b`` a Python or numpy integer, or a numpy array (its cells equal to 1 count); sympy
    symbols count as b > 1.
    """
    family, T, d, a = hf_family(cfg), b * s, cfg.n_embd, cfg.n_head
    terms: dict[str, Any] = {}
    if family in ("gpt2", "gpt_neox") and e == FP32:
        terms["one_row_v_fused_view"] = n * 2 * T * d * FP32
    if family == "gpt2":
        terms["one_row_first_layer_scores"] = 2 * b * a * s * FP32 + b * a * s * BOOL
        terms["one_row_position_ids"] = s * INDEX
    if hasattr(b, "dtype") and getattr(b, "shape", ()) != ():
        import numpy as np

        return {k: np.where(b == 1, v, 0) for k, v in terms.items()}
    return terms if is_integer(b) and int(b) == 1 else {}


def _math_qkv(cfg: GPTConfig, T: Any, e: int) -> Any:
    """The q, k and v SDPA's math path keeps per layer (CPU, dropout): its three copies
    expanded to the query heads (3 T a h e), except under bf16 autocast at 4 query heads per
    kv head, where v is kept unexpanded (T k h 2: v_proj's output, ``mm_2``) and its expanded
    copy rebuilt. Measured: expanded in fp32 at 1, 2, 4 and 8 query heads per kv head, in bf16
    at 1 and 2; unexpanded v in bf16 at 4 (Llama's and Mistral's code, head_dim 16; Gemma's,
    64). At 8 in bf16 (head_dim 8) the partition also keeps k_proj's output and rebuilds the
    rotated, expanded k in one layer: not modelled, refused with the other unmeasured ratios.
    """
    a, k, h = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    ratio = a // k
    if ratio <= 2 or (e == FP32 and ratio <= 8):
        return 3 * T * a * h * e
    if e != FP32 and ratio == 4:
        return 2 * T * a * h * e + T * k * h * e
    measured = "1 to 8" if e == FP32 else "1, 2 or 4"
    raise ScaleplanError(
        f"compile=True with implementation='hf' and dropout={cfg.dropout} on device='cpu' is "
        f"modelled for {measured} query heads per kv head at this precision, not n_head={a} "
        f"over n_kv_head={k}: what SDPA's math path keeps of q, k and v changes with the ratio "
        "(measured); use device='cuda' (fused attention) or dropout=0")


def hf_checkpointed_gpt2_dropout_terms(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any,
                                       device: str) -> dict[str, Any]:
    """GPT-2, every block checkpointed, with dropout, on CPU (measured at 2 layers, fp32 and bf16
    autocast, and 3 layers): the traced regions keep no RNG state; inductor's int64 seeds, one
    per random op (the embedding's dropout, and per block the attention's and the two
    branches': 1 + 3 n, ``inductor_seeds_default``), replay the masks. Outside the regions: the
    embedding dropout's bool mask (T d 1, ``gt``), and once, the math attention's fp32
    b a s s constant it recomputes from (``full_default_3``, fp32 under autocast too). ln_f
    keeps x_hat and rstd / d in fp32 (T d 4 + T 4, ``mul_34``, ``div_2``), its mean and rstd
    under bf16 autocast (2 T 4, ``getitem_15``, ``rsqrt_4``). On CUDA the attention's dropout
    is its fused kernel's own (no math path, no such constant) and what the regions keep of
    it was not measured: refused.
    """
    if device != "cpu":
        raise ScaleplanError(
            f"compile=True with implementation='hf', GPT-2's layout, checkpointing='full' and "
            f"dropout={cfg.dropout} is modelled on device='cpu' only (measured there: SDPA's "
            f"math path); on {device!r} its fused attention's dropout under the traced "
            "checkpoint is not measured: use dropout=0 or checkpointing='none'")
    T, d, a = b * s, cfg.n_embd, cfg.n_head
    final = T * d * FP32 + T * FP32 if e == FP32 else 2 * T * FP32
    return {"position_ids": s * INDEX, "embedding_outputs": T * d * FP32 + s * d * FP32,
            "embedding_dropout_mask": T * d * BOOL, "block_inputs": (n - 1) * T * d * FP32,
            "dropout_seeds": (1 + 3 * n) * INDEX, "causal_mask": b * s * s * e,
            "attn_constant": b * a * s * s * FP32, "final_norm": final}
