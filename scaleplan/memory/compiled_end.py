"""What a compiled backward graph holds beside its gradients at its last kernels.

AOT autograd compiles the backward of a model compiled whole into one function
(`scaleplan.memory.compiled_terms.compiled_backward_end_bytes` counts the gradients it
returns at once and a tied weight's two partial gradients). Inductor's generated code for
that function (torch 2.13, CPU; read with ``TORCH_LOGS=output_code``) frees each buffer after
its last use and ends the same way for nanoGPT's and transformers' GPT-2 layouts:

- **the last fused kernel** computes the first block's first norm backward, the embeddings'
  dense backward, the cast of the first block's 16-bit projection gradients to fp32 and, under
  autocast, the tied weight's sum. Every one of its inputs and outputs is alive while it
  runs: the gradient of the fused q/k/v projection's output, ``T (a + 2k) h e``; the gradient
  into the norm's output (the projection's input gradient, ``T d e``); the residual gradient
  it finishes (``T d r``, fp32); LayerNorm's backward's two per-row sums (``T x 4`` each);
  under autocast the projection's weight and bias gradients in the matmul dtype (their fp32
  copies are gradients); and what the first block's norm and the embeddings saved
  (`compiled_block_saved_terms`' ``norm1_*``, the position ids, the dropout mask);
- **the tied head's weight gradient**: where the two partial gradients of a tied weight share
  a dtype (fp32), inductor folds their sum into the head's weight-gradient matmul
  (``addmm(embedding_partial, dlogits^T, x, beta=1)``), which therefore runs last: the
  logits' gradient (``T V e``) and the head's saved input (``T d e``) stay alive to the end,
  and the peak is the larger of the last fused kernel (before the sum exists) and that
  matmul (the sum written, the fused kernel's buffers freed). Under autocast the head's
  partial gradient is 16-bit, the sum cannot fold into its matmul, which runs first, and the
  logits' gradient is freed early.

RMSNorm and rotary layouts (transformers' Llama, its q, k and v projections separate) end
with other kernels, not modelled: `compiled_first_block_end_terms` returns none for them.

Measured (tests/data/compiled_step_peaks.json, `tests/test_compiled_step_peaks_replay.py`):
exact to the loss's scalar for nanoGPT's layout (fp32 and bf16 autocast, dropout 0 and 0.1,
2 x 24 tokens) and transformers' GPT-2 (fp32 and bf16 autocast, 2 x 48 tokens).
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import (
    STAT_BYTES,
    activation_bytes,
    param_dtype_bytes,
    residual_bytes,
)
from scaleplan.memory.compiled_terms import (
    compiled_block_saved_terms,
    compiled_embedding_saved_terms,
)
from scaleplan.memory.dtypes import larger
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["compiled_end_extra_bytes", "compiled_first_block_end_terms",
           "compiled_tied_head_end_terms"]


def compiled_first_block_end_terms(cfg: GPTConfig, b: Any, s: Any, *,
                                   precision: Precision) -> dict[str, Any]:
    """Bytes alive beside the gradients while the compiled backward's last fused kernel runs
    (the first block's first norm backward and the embeddings' backward), by tensor.

    With T = b s, e the matmul dtype's bytes, r the residual stream's (fp32):
    ``qkv_gradient`` T (a + 2k) h e, ``norm1_output_gradient`` T d e, ``residual_gradient``
    T d r, LayerNorm's per-row sums of dy w and dy w x_hat (``norm1_row_sum_dy``,
    ``norm1_row_sum_dy_xhat``: T x 4 each); under autocast ``qkv_weight_gradient_16bit``
    and ``qkv_bias_gradient_16bit``: the projection's gradients in e; the first
    block's ``norm1_*`` saved terms and the embeddings' saved terms but the token ids (the
    batch, counted by the caller). Read from the generated code of GPT-2's layout (LayerNorm,
    learned positions, one fused q/k/v projection); other layouts: none (transformers' Llama,
    its q, k and v projections separate, casts two of their weight gradients before its last
    kernel, whose inputs are then three T d e input gradients: not modelled, so the moment is
    a lower bound there).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_first_block_end_terms(cfg, 1, 4, precision="bf16-mixed")["qkv_gradient"]
    192
    """
    if (cfg.norm, cfg.position) != ("layernorm", "learned"):
        return {}
    d, a, k, h = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    T = b * s
    e = activation_bytes(precision)
    qkv = (a + 2 * k) * h
    terms: dict[str, Any] = {
        "qkv_gradient": T * qkv * e,
        "norm1_output_gradient": T * d * e,
        "residual_gradient": T * d * residual_bytes(precision),
        "norm1_row_sum_dy": T * STAT_BYTES,
        "norm1_row_sum_dy_xhat": T * STAT_BYTES,
    }
    if e != param_dtype_bytes(precision):
        terms["qkv_weight_gradient_16bit"] = qkv * d * e
        if cfg.bias:
            terms["qkv_bias_gradient_16bit"] = qkv * e
    block = compiled_block_saved_terms(cfg, b, s, precision=precision,
                                       dropout=cfg.dropout > 0, first=True)
    terms.update({n: v for n, v in block.items() if n.startswith("norm1_")})
    embedding = compiled_embedding_saved_terms(cfg, b, s, precision=precision,
                                               dropout=cfg.dropout > 0)
    terms.update({n: v for n, v in embedding.items() if n != "token_ids"})
    return terms


def compiled_tied_head_end_terms(cfg: GPTConfig, b: Any, s: Any, *,
                                 precision: Precision) -> dict[str, Any]:
    """What the tied head's late weight gradient keeps alive to the graph's end, where the
    tied weight's sum folds into that matmul (both partial gradients in one dtype: fp32):
    ``logits_gradient`` T V e and the head's saved input ``lm_head_input`` T d e; else
    nothing.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_tied_head_end_terms(cfg, 1, 4, precision="32-true")
    {'logits_gradient': 256, 'lm_head_input': 128}
    >>> compiled_tied_head_end_terms(cfg, 1, 4, precision="bf16-mixed")
    {}
    """
    e = activation_bytes(precision)
    if not cfg.tie_embeddings or e != param_dtype_bytes(precision):
        return {}
    T = b * s
    return {"logits_gradient": T * cfg.vocab_size * e, "lm_head_input": T * cfg.n_embd * e}


def compiled_end_extra_bytes(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision) -> Any:
    """Bytes the compiled backward graph holds at its worst late node beyond
    `compiled_backward_end_bytes` (the new gradients and the tied partials), the held logits
    and the batch: with the sum folded into the head's matmul (tied, fp32), the head's late
    terms plus whichever is larger of the last fused kernel's terms and the sum's output
    (V d, written by the matmul after that kernel's buffers are freed; counted by
    `compiled_backward_end_bytes` as the partial beside it); else the last fused kernel's
    terms (and no late head terms).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_end_extra_bytes(cfg, 1, 4, precision="bf16-mixed")  # 192+64+128+32+432+160+32
    1024
    """
    first = sum(compiled_first_block_end_terms(cfg, b, s, precision=precision).values())
    late = compiled_tied_head_end_terms(cfg, b, s, precision=precision)
    if not late:
        return first
    tied_sum = cfg.vocab_size * cfg.n_embd * param_dtype_bytes(precision)
    return sum(late.values()) + larger(first - tied_sum, 0 * first)
