"""Bytes a ``torch.compile``'d Hugging Face transformers model saves for backward, per operation.

``torch.compile(model)`` on transformers 5.25's Llama, Qwen2, Mistral, Gemma, GPT-2 and
GPT-NeoX (one graph with the loss, GPT-2's loss in a second; inductor on CPU, SDPA; dropout 0
and 0.1) leaves what AOT autograd's min-cut partitioner keeps of transformers' code (read from the
compiled function's saved tensors by `scaleplan.reference.hf_compiled`, torch 2.13;
tests/data/hf_compiled.json). Compared with the eager terms (`scaleplan.memory.hf_terms`):

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
- The embedding's backward keeps the caller's int64 token ids (b s 8: the partition's
  ``primals_1``, counted by the harness since it saves them).
- GPT-2 and GPT-NeoX (LayerNorm, GELU MLPs, fused qkv): `_gpt2_blocks`, `_neox_blocks`.
- ``ForCausalLMLoss`` upcasts the logits to fp32, but the compiled loss keeps the logits in the
  matmul dtype (bf16 under autocast: no fp32 copy, no log-softmax) with each token's fp32 max
  and log-sum-exp (2 T fp32), the padded int64 labels (b (s + 1): the shifted labels are a
  view) and a 4-byte item count. The returned logits are the saved storage (measured:
  ``logits_saved``), so a loop that holds them adds nothing; `scaleplan.memory.stage` takes the
  compiled moments (`scaleplan.memory.compiled_terms.compiled_backward_start_bytes`, measured
  on nanoGPT's compiled loss: the same fused log-softmax/NLL partition), not measured for
  transformers' loss itself.

Gradient checkpointing is modelled for Llama's and GPT-2's layouts (`_checkpointed_terms`: dynamo
traces GPT-2's checkpoints but runs Llama's layers eagerly). Dropout (``cfg.dropout`` > 0,
GPT-2's default 0.1) is modelled for every family (`scaleplan.memory.hf_compiled_dropout`:
bool masks; on CPU, SDPA's math path, measured; on CUDA its fused kernel, inferred) and for
GPT-2's and Llama's checkpointed layouts (CPU for GPT-2). Fp16, checkpointing with Gemma's or
GPT-NeoX's layout, Llama's layout with one kv head, Gemma's with several and GPT-NeoX's
sequential residual are not modelled: `check_hf_compiled` refuses them by name
(`hf_compiled_saved_terms` the device-dependent dropout cases).
All arithmetic is plain ``+``/``*`` on ``b`` and ``s`` (ints, float64 arrays, sympy symbols).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.compiled_terms import RNG_STATE_BYTES
from scaleplan.memory.hf_compiled_dropout import (
    hf_checkpointed_gpt2_dropout_terms,
    hf_compiled_dropout_terms,
)
from scaleplan.memory.hf_terms import hf_family
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["HF_COMPILED_FAMILIES", "HF_COMPILED_PRECISIONS", "check_hf_compiled",
           "hf_compiled_saved_terms"]

HF_COMPILED_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gpt2", "gpt_neox")
"""transformers families whose compiled saved tensors are modelled (Qwen2 and Mistral save what
Llama saves; Gemma with its single kv head; GPT-NeoX with its parallel residual)."""
HF_COMPILED_PRECISIONS = ("32-true", "bf16-mixed")
"""Measured precisions: fp32, and fp32 parameters under ``torch.autocast(bfloat16)``."""

FP32 = 4
BOOL = 1
INDEX = 8  # int64 token ids and labels


def check_hf_compiled(cfg: GPTConfig, *, precision: str, checkpointing: str,
                      attention: str) -> None:
    """Refuse, naming it, what the compiled transformers terms were not measured with."""
    family = hf_family(cfg)
    odd = _odd_layout(cfg, family)
    if precision not in HF_COMPILED_PRECISIONS:
        odd.append(f"precision={precision!r} (measured: {', '.join(HF_COMPILED_PRECISIONS)})")
    if checkpointing not in ("none", "full") or (checkpointing == "full"
                                                   and family not in ("llama", "gpt2")):
        odd.append(f"checkpointing={checkpointing!r} with the {family!r} layout (measured: "
                   "'full' with Llama's and GPT-2's)")
    if attention != "flash":
        odd.append(f"attention={attention!r} (measured: SDPA, 'flash')")
    if odd:
        raise ScaleplanError("compile=True with implementation='hf' is not modelled yet with "
                             + ", ".join(odd) + "; use compile=False")


def _odd_layout(cfg: GPTConfig, family: str) -> list[str]:
    """What of ``cfg``'s layout differs from the measured families' own."""
    odd = []
    if family in ("gpt2", "gpt_neox") and cfg.mlp != "gelu":
        odd.append(f"mlp={cfg.mlp!r} with LayerNorm (measured: GPT-2's and GPT-NeoX's GELU)")
    if family == "llama" and cfg.mlp != "swiglu":
        odd.append(f"mlp={cfg.mlp!r} with RMSNorm (measured: SwiGLU, Gemma's GeGLU)")
    if family == "gpt2" and cfg.position != "learned":
        odd.append(f"position={cfg.position!r} with GPT-2's layout (measured: learned)")
    if family == "gpt_neox" and cfg.parallel != "separate_norms":
        odd.append(f"parallel={cfg.parallel!r} with GPT-NeoX's layout (measured: its parallel "
                   "residual, 'separate_norms')")
    if family == "llama" and cfg.n_kv_head == 1:  # the partition keeps k and v unexpanded then
        odd.append("n_kv_head=1 with SwiGLU (measured: 2 kv heads; one kv head with Gemma's "
                   "GeGLU layout)")
    if family == "gemma" and cfg.n_kv_head != 1:
        odd.append(f"n_kv_head={cfg.n_kv_head} with Gemma's layout (measured: one kv head)")
    return odd


def hf_compiled_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                            layers: Any = None, checkpointing: str = "none",
                            device: str = "cuda") -> dict[str, Any]:
    """Bytes saved for backward by one forward + loss of transformers' Llama, Gemma, GPT-2 or
    GPT-NeoX model under ``torch.compile``, by term: the token ids,
    ``layers`` (default ``cfg.n_layer``) blocks, the layout's exchanges in its first layers,
    the shared causal mask and the head.

    With T = b s, d = n_embd, a = query heads, h = head_dim, f = mlp_hidden, V = vocab_size and
    e = 4 (fp32) or 2 (bf16 autocast), a Llama block keeps: the two norms' fp32 inputs (2 T d 4)
    and rsqrt (2 T 4), the q/k/v and MLP inputs (2 T d e), SDPA's q, expanded k and v, output
    (4 T a h e; Gemma's one kv head: see the code) and log-sum-exp (b a s 4), the gated MLP's
    gate, up and product (3 T f e). GPT-2's and GPT-NeoX's blocks: `_gpt2_blocks`,
    `_neox_blocks`. ``checkpointing="full"`` (``activation_checkpointing_enable()`` before
    compiling; Llama's and GPT-2's layouts): `_checkpointed_terms`, where ``device`` ("cuda",
    "cpu", "cpu-cuda-semantics") sets the bytes of the RNG state each checkpoint keeps. With
    ``cfg.dropout`` > 0: `scaleplan.memory.hf_compiled_dropout` (``device="cpu"``: SDPA's math
    path, measured; otherwise its fused CUDA kernel, inferred).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> terms = hf_compiled_saved_terms(cfg, 1, 4, precision="32-true")
    >>> terms["logits"], terms["token_ids"]  # 4 x 16 x 4, 4 x 8
    (256, 32)
    """
    if precision not in HF_COMPILED_PRECISIONS:
        raise ValueError(f"precision={precision!r}: measured with "
                         f"{', '.join(HF_COMPILED_PRECISIONS)}")
    e = FP32 if precision == "32-true" else 2
    n = cfg.n_layer if layers is None else layers
    T, d, V = b * s, cfg.n_embd, cfg.vocab_size
    family = hf_family(cfg)
    if checkpointing == "full":
        return {"token_ids": b * s * INDEX, **_checkpointed_terms(cfg, b, s, e, n, device),
                **_head(T, d, V, e, b, s)}
    blocks = (_gpt2_blocks if family == "gpt2" else _neox_blocks if family == "gpt_neox"
              else _llama_blocks)(cfg, b, s, e, n)
    terms = {
        # the embedding's backward keeps the caller's int64 token ids (the partition's
        # primals_1, measured: token_ids_saved)
        "token_ids": b * s * INDEX,
        **blocks,
        # transformers' causal mask, materialised once (the partition's ``where``, b 1 s s)
        "causal_mask": b * s * s * e,
        # RMSNorm: its fp32 input and rsqrt; LayerNorm: its fp32 x_hat and rstd / d (mul_16 and
        # div in GPT-2's partition): T d 4 + T 4 either way
        "final_norm": T * d * FP32 + T * FP32,
        **_head(T, d, V, e, b, s),
    }
    return hf_compiled_dropout_terms(terms, cfg, b, s, e, n, device) if cfg.dropout > 0 else terms


def _head(T: Any, d: int, V: int, e: int, b: Any, s: Any) -> dict[str, Any]:
    """lm_head's input and the compiled loss: bf16 (or fp32) logits, fp32 max and log-sum-exp
    per token, the padded int64 labels and the 4-byte item count."""
    return {"lm_head_input": T * d * e, "logits": T * V * e, "loss_max_lse": 2 * T * FP32,
            "loss_labels": b * (s + 1) * INDEX + FP32}


def _checkpointed_terms(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any,
                        device: str) -> dict[str, Any]:
    """Every layer checkpointed (transformers' non-reentrant ``torch.utils.checkpoint``), then
    ``torch.compile(model)``; measured at 2 layers (tests/data/hf_compiled_checkpointing.json).

    GPT-2: dynamo traces each checkpoint into the one graph, and the partition keeps what
    nanoGPT's compiled checkpointing keeps (`scaleplan.memory.compiled_terms`): the first
    block's input as the token and position embeddings' outputs (T d 4 + s d 4,
    ``embedding``, ``embedding_1``), each later block's input (T d 4, ``add_11``), each
    region's RNG state (``rng_state_output_0``: `RNG_STATE_BYTES`), ln_f's mean and rstd
    (2 T 4: its input is rebuilt with the last block), the position ids and the causal mask.

    Llama: dynamo does not trace the checkpointed decoder layer, so the embedding, the mask,
    the rotary tables, the final norm and the head + loss are compiled apart and the layers run
    eagerly under the checkpoint. The graph break (torch 2.13, measured with the ``kernels``
    package 0.19.1 installed, which transformers' ``use_kernel_forward_from_hub`` wraps
    LlamaRMSNorm with): "HOP: Unsafe side effect ... Attempted to mutate
    CompileableContextVar" at kernels/_internals/layer/layer.py:507; without ``kernels`` the
    checkpoint may be traced as GPT-2's is (not measured). Each checkpoint keeps its
    closure's inputs as eager transformers does: the layer's input (T d 4), shared by all
    layers the bool causal mask (b s s), cos and sin (2 s h 4) and the position ids (s 8),
    and the CPU generator state it stashes to replay dropout (5056 bytes on CPU; a host
    tensor, not device memory, on CUDA); the compiled final norm keeps its input and rsqrt.
    """
    T, d, h = b * s, cfg.n_embd, cfg.head_dim
    if hf_family(cfg) == "gpt2" and cfg.dropout > 0:
        return hf_checkpointed_gpt2_dropout_terms(cfg, b, s, e, n, device)
    if hf_family(cfg) == "gpt2":
        return {"position_ids": s * INDEX, "embedding_outputs": T * d * FP32 + s * d * FP32,
                "block_inputs": (n - 1) * T * d * FP32, "rng_state": n * RNG_STATE_BYTES[device],
                "causal_mask": b * s * s * e, "final_norm_stats": 2 * T * FP32}
    stash = RNG_STATE_BYTES["cpu"] if device != "cuda" else 0
    return {"block_inputs": n * T * d * FP32, "rng_state": n * stash,
            "causal_mask": b * s * s * BOOL, "rope_cos_sin": 2 * s * h * FP32,
            "position_ids": s * INDEX, "final_norm": T * d * FP32 + T * FP32}


def _attention(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any) -> dict[str, Any]:
    """Per block, SDPA's log-sum-exp (b a s fp32) and what the layout keeps of q, k and v."""
    T, a, k, h = b * s, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    # the fused projection's output, whose views SDPA reads (q, k, v; GPT-NeoX: v only)
    fused = T * (a + 2 * k) * h * e
    return {"fused_qkv": n * fused, "sdpa_out": n * T * a * h * e,
            "sdpa_lse": n * b * a * s * FP32}


def _llama_blocks(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any) -> dict[str, Any]:
    """Llama's (Qwen2's, Mistral's) and Gemma's blocks: see `hf_compiled_saved_terms`."""
    T, d, a, k, h, f = b * s, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
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
    }


def _gpt2_blocks(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any) -> dict[str, Any]:
    """GPT-2's blocks (transformers' modeling_gpt2, read from the partition at 2 and 3 layers):

    - ln_1 and ln_2 keep their fp32 ``x_hat`` (T d 4 each: ``mul``, ``mul_2``) and rstd / d
      (T 4 each: ``div``), as nanoGPT's compiled LayerNorm does;
    - the Conv1D linears keep two inputs per block in the matmul dtype (2 T d e, saved as
      their [d, T] transposes, ``permute_16``, ``permute_24``); the third is rebuilt;
    - c_attn's fused output (T 3 d e) is one storage, read by SDPA through its q, k and v
      views (``permute``, ``permute_1``, ``permute_2``); SDPA's output (T d e) and
      log-sum-exp (b a s 4);
    - the MLP keeps c_fc's output and gelu_new's output (c_proj's input, ``permute_14``),
      2 T f e: gelu_new's tanh chain is recomputed (eager autograd keeps its intermediates);
    - the learned positions keep their int64 ids (s 8, ``unsqueeze``); the tied head adds
      nothing.

    At 3 layers and 3 x 32 tokens the partition keeps, for the first ln_1, the token and
    position embeddings' outputs and the mean in place of ``x_hat`` (s d 4 + T 4 more, 0.6% of
    that case): not modelled, within the 5% the compiled terms promise.
    """
    T, d, f = b * s, cfg.n_embd, cfg.mlp_hidden
    return {
        "position_ids": s * INDEX,
        "norm_normalized": n * 2 * T * d * FP32,
        "norm_rstd": n * 2 * T * FP32,
        "linear_inputs": n * 2 * T * d * e,
        **_attention(cfg, b, s, e, n),
        "mlp": n * 2 * T * f * e,
    }


def _neox_blocks(cfg: GPTConfig, b: Any, s: Any, e: int, n: Any) -> dict[str, Any]:
    """GPT-NeoX's blocks (transformers' modeling_gpt_neox, parallel residual with two
    LayerNorms of the same input, partial rotary; read from the partition at 2 and 3 layers):

    - the two LayerNorms share one mean and variance (the same input): the first layer keeps
      its input, the embedding's output (T d 4, ``embedding``), the mean and rstd (2 T 4,
      ``getitem_1``, ``rsqrt``); later layers keep one fp32 ``x_hat`` and rstd / d (T d 4 + T 4,
      ``mul_14``, ``div_2``), except, under bf16 autocast, the second layer, which keeps the
      first layer's bf16 attention + MLP sum (T d 2, ``add_10``: its input is rebuilt from the
      embedding's output) with its mean and rstd (2 T 4);
    - three linear inputs in the matmul dtype (3 T d e: query_key_value's, dense's (the merged
      heads) and dense_h_to_4h's, ``view_1``, ``view_6``, ``view_8``);
    - query_key_value's output (T 3 d e, one storage: SDPA reads v as its view,
      ``getitem_4``), the rotated q and k (T (a + k) h e: partial rotary concatenates the
      rotated and passed-through dims into new tensors, ``cat_3``, ``cat_4``), SDPA's output
      and log-sum-exp;
    - the MLP's dense_h_to_4h output and GELU output (2 T f e, ``addmm_2``, ``view_10``).
    """
    T, d, a, k, h, f = b * s, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    later = T * d * FP32 + T * FP32
    second = T * d * e + 2 * T * FP32 - later if e != FP32 else 0
    return {
        "first_layer_input_stats": T * d * FP32 + 2 * T * FP32,
        "norm_normalized": (n - 1) * later,
        "second_layer_exchange": min(n - 1, 1) * second,  # layers is an int
        "linear_inputs": n * 3 * T * d * e,
        **_attention(cfg, b, s, e, n),
        "rotated_qk": n * T * (a + k) * h * e,
        "mlp": n * 2 * T * f * e,
    }
