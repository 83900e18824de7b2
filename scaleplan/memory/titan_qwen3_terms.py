"""What torchtitan's Qwen3 block saves beyond its Llama 3 block, per operation.

torchtitan 0.3.0 builds its dense Qwen3 (``torchtitan/models/qwen3/__init__.py``,
``_build_qwen3_layers``) from the same parts as its Llama 3 (`scaleplan.memory.titan_terms`)
with three changes, each measured exactly on CPU by `scaleplan.reference.titan_qwen3_measure`
(eager, FlexAttention and SDPA, with and without TP 2, sequence parallel or not):

- ``head_dim`` is given (128 in every flavour) rather than ``n_embd / n_head``: q, k, v and the
  attention output are ``n_head x head_dim`` wide (Qwen3-14B: 40 x 128 = 5120, its dim; the
  0.6B, 4B, 8B and 32B flavours differ), as `scaleplan.memory.titan_terms` already counts them;
- QK-norm (``GQAttention.q_norm`` / ``k_norm``, ``torchtitan/models/common/attention.py``): an
  ``nn.RMSNorm`` of ``head_dim`` on the contiguous q (``n_head`` heads) and k (``n_kv_head``
  heads) after the fused ``wqkv`` split, before RoPE. Each saves what an RMSNorm saves
  (`qk_norm_bytes`): on CPU torch's composite kernel keeps the fp32 upcast, the fp32 normalised
  x and the fp32 reciprocal std per head and position; on CUDA the fused
  ``aten._fused_rms_norm`` keeps its (bf16) input and the fp32 reciprocal std;
- RoPE is ``CosSinRoPE`` (``torchtitan/models/common/rope.py``): q and k are upcast to fp32 and
  rotated with the cached cos and sin rows, indexed by the positions into one fp32
  ``(b, s, 1, 2 head_dim)`` tensor that both products save (the upcasts are not saved):
  ``T x 2 head_dim x 4`` bytes per block where the complex table of Llama 3 keeps half that.

Under tensor parallelism (``set_qwen3_sharding_config``, ``models/qwen3/sharding.py``) the QK
norms run on the rank's heads (``ceil(n_head / t)``, ``ceil(n_kv_head / t)``) for all ``s``
positions, sequence parallel or not; the cos/sin rows are whole. Checkpointing keeps the
Llama 3 block's input (`scaleplan.memory.titan_terms`); recompute rebuilds these terms too.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.model.config import GPTConfig

__all__ = ["cos_sin_rope_bytes", "qk_norm_bytes", "qwen3_block_extras"]


def _ceil_div(n: Any, t: int) -> Any:
    return -(-n // t)


def qk_norm_bytes(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                  tensor: int = 1) -> Any:
    """Bytes the q and k RMSNorms of one block save, on one of ``tensor`` TP ranks: per head
    and position, ``2 x head_dim x 4 + 4`` (CPU: fp32 upcast, fp32 normalised x, fp32
    reciprocal std) or ``head_dim x e + 4`` (CUDA's fused kernel: its input, the fp32
    reciprocal std), for ``ceil(n_head / t) + ceil(n_kv_head / t)`` heads.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, head_dim=32, n_embd=96,
    ...                 mlp_hidden=192, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", qk_norm="head")
    >>> qk_norm_bytes(cfg, 2, 128, e=2, device="cpu")  # 256 x 6 heads x (2 x 32 x 4 + 4)
    399360
    """
    heads = _ceil_div(cfg.n_head, tensor) + _ceil_div(cfg.n_kv_head, tensor)
    hd = cfg.head_dim
    per_head = 2 * hd * FP32_BYTES + FP32_BYTES if device == "cpu" else hd * e + FP32_BYTES
    return b * s * heads * per_head


def cos_sin_rope_bytes(cfg: GPTConfig, b: Any, s: Any) -> Any:
    """Bytes ``CosSinRoPE`` keeps per block: the fp32 cos and sin rows of every position
    (``b x s x 2 head_dim x 4``), saved by the products with q and k.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, head_dim=32, n_embd=96,
    ...                 mlp_hidden=192, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", qk_norm="head")
    >>> cos_sin_rope_bytes(cfg, 2, 128)
    65536
    """
    return b * s * 2 * cfg.head_dim * FP32_BYTES


def qwen3_block_extras(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                       tensor: int = 1) -> dict[str, Any]:
    """The terms a Qwen3 block without checkpointing saves where its Llama 3 block's differ:
    ``qk_norm`` (added) and ``rope_table`` (replacing the complex table).

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, head_dim=32, n_embd=96,
    ...                 mlp_hidden=192, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", qk_norm="head")
    >>> qwen3_block_extras(cfg, 2, 128, e=2, device="cuda", tensor=2)  # 3 local heads
    {'qk_norm': 52224, 'rope_table': 65536}
    """
    return {"qk_norm": qk_norm_bytes(cfg, b, s, e=e, device=device, tensor=tensor),
            "rope_table": cos_sin_rope_bytes(cfg, b, s)}
