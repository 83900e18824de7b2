"""Bytes a ``torch.compile``'d Hugging Face transformers model saves for backward, per operation.

``torch.compile(model)`` on transformers 5.25's Llama, Qwen2, Mistral and Gemma (one graph, the loss
included; inductor on CPU, SDPA, no dropout) leaves what AOT autograd's min-cut partitioner
keeps of transformers' code (read from the compiled function's saved tensors by
`scaleplan.reference.hf_compiled`, torch 2.13; tests/data/hf_compiled.json). Compared with the
eager terms (`scaleplan.memory.hf_terms`):

- RMSNorm's fp32 arithmetic is recomputed: each norm keeps its fp32 input (the residual
  stream) and the fp32 ``rsqrt`` per token, not the fp32 normalised input; the next linear
  keeps its input (``weight * x_hat``) once, in the matmul dtype (no separate q/k/v or gate/up
  casts: the partition saves the one cast they share).
- Rotary cos/sin are recomputed (not saved); SDPA keeps the rotated q, the rotated k and v
  expanded to the query heads (``repeat_kv``), its output (T a h e each) and the fp32
  log-sum-exp; o_proj reads SDPA's output as a view, except in the first layer, where the
  partition keeps o_proj's input (T d e) and not the residual after attention (T d fp32).
- SwiGLU (GeGLU for Gemma) keeps gate's and up's outputs and their product (3 T f e); the
  activation is recomputed.
- Gemma (one kv head, measured with 4 query heads): v is kept unexpanded (T h e), k unexpanded
  in fp32 (T h 4) but expanded under bf16 autocast (T a h 2), and every layer keeps its
  residual after attention (no first-layer exchange).
- The causal mask is materialised once, b x s x s in the activation dtype (dynamo traces
  transformers' mask creation instead of SDPA's ``is_causal``), and shared by every layer.
- The token ids are the caller's batch and are not counted, as parameters are not.
- ``ForCausalLMLoss`` upcasts the logits to fp32, but the compiled loss keeps the logits in the
  matmul dtype (bf16 under autocast: no fp32 copy, no log-softmax) with each token's fp32 max
  and log-sum-exp (2 T fp32), the padded int64 labels (b (s + 1): the shifted labels are a
  view) and a 4-byte item count. The returned logits are the saved storage (measured:
  ``logits_saved``), so a loop that holds them adds nothing; `scaleplan.memory.stage` takes the
  compiled moments (`scaleplan.memory.compiled_terms.compiled_backward_start_bytes`, measured
  on nanoGPT's compiled loss: the same fused log-softmax/NLL partition), not measured for
  transformers' loss itself.

GPT-2 and GPT-NeoX were measured too (the JSON holds them) but are not modelled yet, nor
gradient checkpointing, dropout, fp16, Llama's layout with one kv head or Gemma's with several:
`check_hf_compiled` refuses them by name.
All arithmetic is plain ``+``/``*`` on ``b`` and ``s`` (ints, float64 arrays, sympy symbols).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.hf_terms import hf_family
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["HF_COMPILED_FAMILIES", "HF_COMPILED_PRECISIONS", "check_hf_compiled",
           "hf_compiled_saved_terms"]

HF_COMPILED_FAMILIES = ("llama", "qwen2", "mistral", "gemma")
"""transformers families whose compiled saved tensors are modelled (Qwen2 and Mistral save what
Llama saves; Gemma with its single kv head)."""
HF_COMPILED_PRECISIONS = ("32-true", "bf16-mixed")
"""Measured precisions: fp32, and fp32 parameters under ``torch.autocast(bfloat16)``."""

FP32 = 4
INDEX = 8  # int64 labels


def check_hf_compiled(cfg: GPTConfig, *, precision: str, checkpointing: str,
                      attention: str) -> None:
    """Refuse, naming it, what the compiled transformers terms were not measured with."""
    odd = []
    family = hf_family(cfg)
    if family not in ("llama", "gemma"):
        odd.append(f"the {family!r} layout (modelled: Llama, Qwen2, Mistral, Gemma)")
    if precision not in HF_COMPILED_PRECISIONS:
        odd.append(f"precision={precision!r} (measured: {', '.join(HF_COMPILED_PRECISIONS)})")
    if checkpointing != "none":
        odd.append(f"checkpointing={checkpointing!r}")
    if attention != "flash":
        odd.append(f"attention={attention!r} (measured: SDPA, 'flash')")
    if cfg.dropout > 0:
        odd.append(f"dropout={cfg.dropout}")
    if family == "llama" and cfg.n_kv_head == 1:  # the partition keeps k and v unexpanded then
        odd.append("n_kv_head=1 with SwiGLU (measured: 2 kv heads; one kv head with Gemma's "
                   "GeGLU layout)")
    if family == "gemma" and cfg.n_kv_head != 1:
        odd.append(f"n_kv_head={cfg.n_kv_head} with Gemma's layout (measured: one kv head)")
    if odd:
        raise ScaleplanError("compile=True with implementation='hf' is not modelled yet with "
                             + ", ".join(odd) + "; use compile=False")


def hf_compiled_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                            layers: Any = None) -> dict[str, Any]:
    """Bytes saved for backward by one forward + loss of transformers' Llama or Gemma model under
    ``torch.compile`` (no checkpointing), by term: ``layers`` (default ``cfg.n_layer``) blocks,
    the first layer's exchange, the shared causal mask and the head.

    With T = b s, d = n_embd, a = query heads, h = head_dim, f = mlp_hidden, V = vocab_size and
    e = 4 (fp32) or 2 (bf16 autocast), per block: the two norms' fp32 inputs (2 T d 4) and
    rsqrt (2 T 4), the q/k/v and MLP inputs (2 T d e), SDPA's q, expanded k and v, output
    (4 T a h e; Gemma's one kv head: see the code) and log-sum-exp (b a s 4), the gated MLP's
    gate, up and product (3 T f e).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> hf_compiled_saved_terms(cfg, 1, 4, precision="32-true")["logits"]  # 4 x 16 x 4
    256
    """
    if precision not in HF_COMPILED_PRECISIONS:
        raise ValueError(f"precision={precision!r}: measured with "
                         f"{', '.join(HF_COMPILED_PRECISIONS)}")
    e = FP32 if precision == "32-true" else 2
    n = cfg.n_layer if layers is None else layers
    T, d, a, k, h = b * s, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    f, V = cfg.mlp_hidden, cfg.vocab_size
    # SDPA's q, k, v and output. Llama's layout: k and v expanded to the query heads. Gemma's
    # (one kv head): v unexpanded; k unexpanded in fp32, expanded under bf16 autocast (measured)
    sdpa, first = 4 * T * a * h * e, T * d * e - T * d * FP32
    if hf_family(cfg) == "gemma":
        sdpa = 2 * T * a * h * e + T * k * h * e + (T * k * h * FP32 if e == FP32
                                                    else T * a * h * e)
        first = 0  # every Gemma layer keeps its residual after attention
    return {
        "norm_inputs": n * 2 * T * d * FP32,
        "norm_rsqrt": n * 2 * T * FP32,
        "linear_inputs": n * 2 * T * d * e,
        "sdpa_qkv_out": n * sdpa,
        "sdpa_lse": n * b * a * s * FP32,
        "swiglu": n * 3 * T * f * e,
        # Llama's layer 0 keeps o_proj's input (T d e), not the residual after attention (T d 4)
        "first_layer_o_proj_input": first,
        "causal_mask": b * s * s * e,
        "final_norm": T * d * FP32 + T * FP32,
        "lm_head_input": T * d * e,
        "logits": T * V * e,
        "loss_max_lse": 2 * T * FP32,
        "labels": b * (s + 1) * INDEX + FP32,
    }
