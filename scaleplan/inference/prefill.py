"""The activation peak of one prefill chunk: the largest set of tensors alive at once while a
no-grad forward runs ``chunk`` prompt tokens through the model, beyond the weights and the cache.

A server runs prompts in chunks of at most ``max_num_batched_tokens`` tokens (vLLM's chunked
prefill; the default budget is 8,192 tokens for its OpenAI server on GPUs of 70 GiB or more,
other than A100s, and 2,048 elsewhere: vllm/engine/arg_utils.py at commit 6a1acac3, lines
2478-2483). Nothing is saved for a backward pass, so a block's tensors die as soon as the next
one no longer reads them, and the peak is the largest of three moments (T = chunk tokens,
d = n_embd, e = activation bytes: 2 in bf16/fp16, 4 in fp32; heads and MLP widths are per GPU
under tensor parallelism t, the residual stream is whole on every GPU):

- **attention**: three d-wide tensors of the residual stream (3·T·d: the block's input, which
  the caller's loop still references, the residual and its normed copy, which vLLM's fused
  add-and-norm updates in place: vllm/model_executor/models/llama.py), the projected queries,
  keys and values (T·(H + 2·K)·head_dim) and the attention output (T·H·head_dim). Flash-style
  kernels never hold the T x context scores. MLA: queries T·H·qk_head_dim, the chunk's latent
  T·(kv_lora_rank + qk_rope_head_dim), its expanded keys and values T·H·(qk_head_dim +
  v_head_dim) and the output T·H·v_head_dim;
- **MLP**: the three stream tensors (the attention's output now the normed one) plus, gated
  (SwiGLU/GeGLU), the fused gate-and-up output (2·T·F) and
  the activated product (T·F): 3·T·F; not gated, the hidden layer and its activation: 2·T·F. A
  mixture of experts runs T·top_k routed rows through experts of ``expert_hidden`` the same way
  (vLLM's ``fused_moe`` intermediate caches: 2·F, F and the d-wide outputs of every routed row),
  shared experts and dense blocks as an MLP of their own width;
- **logits**: the final hidden states (T·d) and, for ``rows`` positions, the logits in the
  compute dtype and their fp32 copy for sampling: rows·V·(e + 4). ``logits="last"``: rows = the
  requests in the chunk (the sampler needs each one's last position: vLLM, and transformers'
  ``generate`` with ``logits_to_keep=1``); ``"chunk"``: every position (a forward that returns
  all logits).

This is the layout of a fused serving engine (vLLM's Llama: within 0.5 % of its profiled peak,
docs/validation/inference.md); transformers' eager modules hold more (the embedding output
through the whole forward, rotary tables, masks, unfused activations), measured there too.
"""

from __future__ import annotations

from typing import Literal

from scaleplan.model.config import GPTConfig

__all__ = ["DEFAULT_PREFILL_CHUNK", "STREAM_TENSORS", "LogitsKind", "prefill_activation_bytes"]

LogitsKind = Literal["last", "chunk"]

# vLLM's max_num_batched_tokens for its OpenAI server on >= 70 GiB GPUs (arg_utils.py, 6a1acac3).
DEFAULT_PREFILL_CHUNK = 8192
FP32_BYTES = 4
# d-wide tensors of the residual stream alive inside a block (module docstring)
STREAM_TENSORS = 3
_GATED = ("swiglu", "geglu")


def _mlp_width(hidden: int, gated: bool) -> int:
    """Elements per row an MLP of ``hidden`` holds at its peak: 3·F gated, 2·F plain."""
    return 3 * hidden if gated else 2 * hidden


def _attention_width(cfg: GPTConfig, tensor: int, kv_heads: int) -> int:
    """Elements per token of the attention moment beyond the stream tensors, on one GPU."""
    H = cfg.n_head // tensor
    mla = cfg.mla
    if mla is not None:
        return (H * mla.qk_head_dim + (mla.kv_lora_rank + mla.qk_rope_head_dim)
                + H * (mla.qk_head_dim + mla.v_head_dim) + H * mla.v_head_dim)
    return (2 * H + 2 * kv_heads) * cfg.head_dim


def _mlp_peak_width(cfg: GPTConfig, tensor: int) -> int:
    """Elements per token of the MLP moment beyond the stream tensors, on one GPU (the widest
    block)."""
    gated = cfg.mlp in _GATED
    moe = cfg.moe
    if moe is None:
        return _mlp_width(cfg.mlp_hidden // tensor, gated)
    routed = moe.top_k * (_mlp_width(moe.expert_hidden // tensor, gated) + cfg.n_embd)
    widths = [routed]
    if moe.shared_expert_hidden:
        widths.append(_mlp_width(moe.shared_expert_hidden // tensor, gated))
    if moe.n_dense_layers:
        widths.append(_mlp_width(cfg.mlp_hidden // tensor, gated))
    return max(widths)


def prefill_activation_bytes(cfg: GPTConfig, *, chunk: int, rows: int, element_bytes: int = 2,
                             logits: LogitsKind = "last", tensor: int = 1) -> int:
    """The activation peak of one prefill chunk of ``chunk`` tokens holding ``rows`` requests,
    on one GPU (see the module docstring for the three moments).

    >>> cfg = GPTConfig.preset("llama-3-8b")  # MLP: 3 x 4,096 stream + 3 x 14,336 wide, bf16
    >>> prefill_activation_bytes(cfg, chunk=8192, rows=1) == 8192 * (3 * 4096 + 3 * 14336) * 2
    True
    """
    T, d, e = chunk, cfg.n_embd, element_bytes
    k = max(1, cfg.n_kv_head // tensor)  # key/value heads replicate when t > n_kv_head
    stream = STREAM_TENSORS * T * d * e  # block input, residual, normed copy
    attention = stream + T * _attention_width(cfg, tensor, k) * e
    mlp = stream + T * _mlp_peak_width(cfg, tensor) * e
    logit_rows = rows if logits == "last" else T
    head = T * d * e + logit_rows * cfg.vocab_size * (e + FP32_BYTES)
    return max(attention, mlp, head)
