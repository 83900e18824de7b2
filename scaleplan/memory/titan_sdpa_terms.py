"""What torchtitan's Llama 3 saves with SDPA attention instead of FlexAttention, per operation.

torchtitan's Llama ran ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` before it
had FlexAttention (pytorch/torchtitan ``torchtitan/models/llama/model.py`` of December 2024, the
code of its published H100 runs); 0.3.0 keeps the kernel as ``ScaledDotProductAttention``
(``torchtitan/models/common/attention.py``, causal, ``enable_gqa`` for grouped KV heads).
`scaleplan.memory.titan_terms` models FlexAttention; SDPA differs in two places, each measured
on CPU by `scaleplan.reference.titan_measure` (``attn_backend="sdpa"``), where SDPA runs
``_scaled_dot_product_flash_attention_for_cpu``:

- its fused kernel returns the output and one fp32 (b, H, s) statistic, the logsumexp (CUDA's
  flash and cuDNN kernels likewise), where FlexAttention also returns the row maximum: one
  statistic less per block, saved (no checkpointing) or cached (per-op selective);
- it takes ``is_causal`` and no block mask, so nothing saves one.

Under ``checkpointing="selective"`` the SDPA outputs are cached as on a GPU: torchtitan's save
list names CUDA's kernels (``_scaled_dot_product_flash_attention``,
``_scaled_dot_product_cudnn_attention``); on a CPU its own kernel is not in the list and would be
recomputed, which scaleplan does not model (``device="cpu"`` changes the kernels' saves, not the
policy).
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.titan_terms import titan_block_terms, titan_saved_terms
from scaleplan.model.config import GPTConfig

__all__ = ["flex_only_stat_bytes", "titan_sdpa_block_terms", "titan_sdpa_rebuilt_block_bytes",
           "titan_sdpa_saved_terms"]


def flex_only_stat_bytes(cfg: GPTConfig, b: Any, s: Any) -> Any:
    """FlexAttention's fp32 row maximum (b, H, s), which SDPA's fused kernels do not return.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> flex_only_stat_bytes(cfg, 2, 128)  # 2 x 4 heads x 128 positions x 4 bytes
    4096
    """
    return b * cfg.n_head * s * FP32_BYTES


def titan_sdpa_block_terms(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                           checkpointing: str) -> dict[str, Any]:
    """Bytes one torchtitan Llama 3 block with SDPA leaves for backward, by operation: the
    FlexAttention block's (`scaleplan.memory.titan_terms.titan_block_terms`) less the row
    maximum SDPA does not keep.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_sdpa_block_terms(cfg, 2, 128, e=2, device="cpu", checkpointing="selective")[
    ...     "attention_outputs"]  # bf16 output (2 x 128 x 64) and fp32 logsumexp (2 x 4 x 128)
    36864
    """
    terms = titan_block_terms(cfg, b, s, e=e, device=device, checkpointing=checkpointing)
    key = {"none": "attention", "selective": "attention_outputs"}.get(checkpointing)
    if key is not None:
        terms[key] = terms[key] - flex_only_stat_bytes(cfg, b, s)
    return terms


def titan_sdpa_rebuilt_block_bytes(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                                   checkpointing: str) -> Any:
    """Bytes a checkpointed SDPA block's recompute adds while it runs its backward, as
    `scaleplan.memory.titan_terms.titan_rebuilt_block_bytes` counts them for FlexAttention:
    the block's saves without checkpointing less what is already held (the selective cache's
    attention outputs and w1 output; under ``"full"`` on CUDA, the norm's input).

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_sdpa_rebuilt_block_bytes(cfg, 2, 128, e=2, device="cuda", checkpointing="full")
    612352
    """
    whole = sum(titan_sdpa_block_terms(cfg, b, s, e=e, device=device,
                                       checkpointing="none").values())
    kept = titan_sdpa_block_terms(cfg, b, s, e=e, device=device, checkpointing="selective")
    if checkpointing == "selective":
        return whole - kept["attention_outputs"] - kept["w1_output"]
    return whole - (kept["block_input"] if device != "cpu" else 0)


def titan_sdpa_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: str,
                           checkpointing: str, device: str, layers: Any) -> dict[str, Any]:
    """Bytes torchtitan's Llama 3 step with SDPA leaves for backward after forward + loss, by
    operation: `scaleplan.memory.titan_terms.titan_saved_terms` with SDPA's block terms and no
    block mask.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> t = titan_sdpa_saved_terms(cfg, 2, 128, precision="bf16-mixed", checkpointing="none",
    ...                            device="cpu", layers=2)
    >>> "block_mask" in t, t["block.attention"] == 2 * (256 * 192 * 2 + 2 * 4 * 128 * 4)
    (False, True)
    """
    out = titan_saved_terms(cfg, b, s, precision=precision, checkpointing=checkpointing,
                            device=device, layers=layers)
    out.pop("block_mask", None)
    stat = flex_only_stat_bytes(cfg, b, s) * layers
    if checkpointing == "none":
        out["block.attention"] = out["block.attention"] - stat
    elif checkpointing == "selective":
        out["block.attention_outputs"] = out["block.attention_outputs"] - stat
    return out
