"""The layouts ``compile=True`` models beyond the reference GPT, and what their options save.

`scaleplan.memory.compiled_terms` derives what torch.compile's partition keeps for the
reference block; this module says which `GPTConfig` options it accepts
(`check_compiled_layout`) and what QK-norm and the MLP's activation change in a block's saved
tensors. Each term is read off the partitioned graphs (torch 2.13, CPU inductor with CUDA's
dropout semantics: ``python -m scaleplan.reference.compiled_layouts``, the saved values by
node in tests/data/compiled_layouts_golden.json):

- **QK-norm per head** (``qk_norm="head"``, Qwen3, Gemma 3, modded-nanogpt; and
  ``"per_head"``, StableLM's one norm per head): each RMSNorm keeps only its reciprocal std
  (``rsqrt_1``, ``rsqrt_2``: b x heads x s, fp32 under autocast too); its input is a view of the
  fused q/k/v projection's output, which SDPA's backward keeps anyway (the ``qkv`` term), and
  the backward reads both (``mul(add_16, permute_1)``, ``mul(add_16, rsqrt_1)``). The
  normalised q and k are made contiguous head by head (a ``clone`` in the forward graph, strides
  (a s h, s h, h, 1): ``_fused_rms_norm``'s decomposition returns ``upcasted_result
  .contiguous()``, torch/_decomp/decompositions.py), so SDPA's output is head-major too (the
  CPU flash kernel lays its output out as its query; CUDA's kernels not measured) and the
  transpose that feeds the attention's output projection is a copy (``clone_2`` ->
  ``view_6``, T a h in the matmul dtype), which that projection's weight gradient reads
  (``mm(permute_21, view_6)``). Without QK-norm the output is token-major and the
  projection's input a view of it (no such term).
- **QK-norm over all heads** (``qk_norm="full"``, OLMo 2): one RMSNorm over the q width and one
  over the k/v width, before the heads are split: one fp32 rstd per token each (2 T x 4), and
  no copy (the tensors stay token-major).
- **RMSNorm without a weight** (``norm_affine=False``, modded-nanogpt's ``F.rms_norm``, and the
  QK-norms' variant): the same partition as with a weight, in fp32 and under autocast (the
  norm keeps its input and rstd; the projection keeps its cast input): no term changes.
- **ReLU MLP** (``mlp="relu"``): the down projection keeps the ReLU's output (T f e), and the
  ReLU's backward a bool mask ``le = relu <= 0`` (T f, one byte each: ``where(le, 0, grad)``),
  instead of GELU's input and output (2 T f e).

LayerNorm's QK-norm or non-affine LayerNorm keep other values (LayerNorm keeps x_hat, which a
non-affine norm shares with the projection's fp32 input, and moves the first block's min-cut,
`scaleplan.memory.compiled_first_input`): refused by name, like the layouts not measured.

T = b s tokens, a/k = query/key-value heads, h = head_dim, f = mlp_hidden, e = activation bytes
(4 for 32-true, 2 under autocast).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.dtypes import CUDA_MASK_BYTES, STAT_BYTES
from scaleplan.model.config import GPTConfig

__all__ = ["BOOL_BYTES", "check_compiled_layout", "compiled_mlp_activation_terms",
           "compiled_qk_norm_terms"]

BOOL_BYTES = CUDA_MASK_BYTES  # a torch.bool element: one byte (the ReLU's mask, like dropout's)

# Options of `GPTConfig` the compiled partitions were not measured with: each must keep its
# default (the reference GPT's layout).
_UNMEASURED_OPTIONS = ("norm_position", "parallel", "embedding_norm", "position_offset",
                       "rotary_fraction", "sliding_window", "attn_softcap", "final_softcap",
                       "mla", "moe", "lm_head_bias")


def check_compiled_layout(cfg: GPTConfig) -> None:
    """Refuse, by name, the options whose compiled partition was not measured: those of
    ``_UNMEASURED_OPTIONS`` off their default, positions other than learned or RoPE, and
    QK-norm or ``norm_affine=False`` with LayerNorm (measured with RMSNorm only).

    >>> check_compiled_layout(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16,
    ...                                 norm="rmsnorm", norm_affine=False, qk_norm="head"))
    >>> check_compiled_layout(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16,
    ...                                 qk_norm="head"))
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: compile=True is modelled for the reference layout (pre-norm, learned or RoPE positions, dense MLP; QK-norm and norms without a weight with RMSNorm); qk_norm with norm='layernorm' not yet: use compile=False
    """  # noqa: E501
    fields = type(cfg).model_fields
    odd = [name for name in _UNMEASURED_OPTIONS
           if name in fields and getattr(cfg, name) != fields[name].default]
    if cfg.position not in ("learned", "rope"):
        odd.append("position")
    if cfg.norm == "layernorm" and cfg.qk_norm != "none":
        odd.append("qk_norm with norm='layernorm'")
    if cfg.norm == "layernorm" and not cfg.norm_affine:
        odd.append("norm_affine=False with norm='layernorm'")
    if odd:
        raise ScaleplanError(
            f"compile=True is modelled for the reference layout (pre-norm, learned or RoPE "
            f"positions, dense MLP; QK-norm and norms without a weight with RMSNorm); "
            f"{', '.join(odd)} not yet: use compile=False")


def compiled_qk_norm_terms(cfg: GPTConfig, b: Any, s: Any, *, e: int) -> dict[str, Any]:
    """What one block's QK-norm adds to its saved tensors (RMSNorm; ``e`` the matmul bytes):

    - ``qk_norm_rstd``: the q and k norms' fp32 reciprocal std, one per head and token,
      b (a + k) s x 4 (``"head"``, ``"per_head"``), or one per token each, 2 b s x 4
      (``"full"``);
    - ``attn_proj_input``: the head-major attention output's token-major copy that the output
      projection keeps, T a h e (``"head"``, ``"per_head"``).

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, vocab_size=16,
    ...                 norm="rmsnorm", qk_norm="head")
    >>> compiled_qk_norm_terms(cfg, 2, 24, e=2)  # 2 x (4 + 2) x 24 x 4; 48 x 4 x 16 x 2
    {'qk_norm_rstd': 1152, 'attn_proj_input': 6144}
    >>> compiled_qk_norm_terms(cfg.replace(qk_norm="full"), 2, 24, e=2)  # 2 x 48 x 4
    {'qk_norm_rstd': 384}
    """
    if cfg.qk_norm == "none":
        return {}
    if cfg.qk_norm == "full":
        return {"qk_norm_rstd": 2 * b * s * STAT_BYTES}
    a, k, h = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    return {"qk_norm_rstd": b * (a + k) * s * STAT_BYTES,
            "attn_proj_input": b * s * a * h * e}


def compiled_mlp_activation_terms(cfg: GPTConfig, T: Any, *, e: int) -> dict[str, Any]:
    """A dense MLP's saved activations for T tokens (f = mlp_hidden): GELU its input and output,
    2 T f e; SwiGLU/GeGLU the gate and up projections' outputs and their product, 3 T f e (the
    activation is recomputed from the gate's output); ReLU its output, T f e, and the bool mask
    of its backward, ``relu_mask`` T f.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp="relu")
    >>> compiled_mlp_activation_terms(cfg, 4, e=2)  # 4 x 32 x 2; 4 x 32 x 1
    {'mlp_activations': 256, 'relu_mask': 128}
    """
    f = cfg.mlp_hidden
    if cfg.gated_mlp:
        return {"mlp_activations": 3 * T * f * e}
    if cfg.mlp == "relu":
        return {"mlp_activations": T * f * e, "relu_mask": T * f * BOOL_BYTES}
    return {"mlp_activations": 2 * T * f * e}
