"""The reference GPT's attention layers: causal self-attention (multi-head, GQA, MQA) with every
option of `GPTConfig`, and DeepSeek's multi-head latent attention (MLA).

Each option follows the Hugging Face code of the model that uses it:

- QK-norm: a norm of ``head_dim`` shared by the heads (qwen3), one per head (stablelm's
  ``qk_layernorm``: a ``(heads, head_dim)`` scale) or one over all heads' width (olmo2, before
  the heads are split). RMSNorm or LayerNorm as the config's ``norm``, never with a bias.
- partial rotary (gpt_neox, phi): the first ``rotary_fraction x head_dim`` channels of each head
  are rotated, the rest pass through.
- ALiBi (bloom): a per-head bias ``slope x key position`` on the scores (softmax is invariant to
  the per-query shift that makes it relative); slopes as Press et al. 2022 (bloom's
  ``build_alibi_tensor``).
- sliding windows (mistral, gemma2): a banded causal mask, each query seeing itself and the
  ``sliding_window - 1`` tokens before it. SDPA gets it as an explicit mask: the math kernel
  then computes every score and masks, so FlopCounterMode counts the full ``T x T`` product
  (what `scaleplan.compute.flops.step_flops` counts with ``causal=False``).
- soft-capping (gemma2): ``c * tanh(scores / c)`` before the mask. SDPA has no hook for it, so
  it needs ``attention="eager"``.
- MLA (deepseek_v2/v3): queries from a ``q_lora_rank`` latent (RMS-normalised) or straight from
  the residual; keys and values from a shared ``kv_lora_rank`` latent (RMS-normalised) plus one
  rotary key of ``qk_rope_head_dim`` shared by every head; values ``v_head_dim`` wide.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scaleplan.model.config import GPTConfig

__all__ = ["AttentionKind", "CausalSelfAttention", "Dropout", "LatentAttention", "Rope",
           "alibi_slopes", "make_norm", "rotate"]

AttentionKind = Literal["flash", "eager"]
Rope = tuple[torch.Tensor, torch.Tensor]


class Dropout(nn.Module):
    """Dropout whose saved mask follows CPU (float mask) or CUDA (bool mask) semantics."""

    def __init__(self, p: float, *, cuda_semantics: bool) -> None:
        super().__init__()
        self.p = p
        self.cuda_semantics = cuda_semantics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.cuda_semantics:  # what F.dropout runs on CUDA: saves a 1-byte bool mask
            out: torch.Tensor = torch.native_dropout(x, self.p, True)[0]
            return out
        return F.dropout(x, self.p, training=True)


def make_norm(cfg: GPTConfig, width: int, *, affine: bool | None = None,
              bias: bool | None = None) -> nn.Module:
    """The config's norm over ``width``: RMSNorm, or LayerNorm with or without bias; without any
    parameter when ``norm_affine`` is False."""
    affine = cfg.norm_affine if affine is None else affine
    bias = cfg.norm_bias if bias is None else bias
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(width, elementwise_affine=affine)
    return nn.LayerNorm(width, elementwise_affine=affine, bias=bias and affine)


class PerHeadNorm(nn.Module):
    """One norm per head (stablelm's ``qk_layernorm``), its scales stacked as ``(heads, h)``."""

    def __init__(self, cfg: GPTConfig, heads: int, width: int) -> None:
        super().__init__()
        self.rms = cfg.norm == "rmsnorm"
        self.weight = nn.Parameter(torch.ones(heads, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, heads, T, h)
        shape = x.shape[-1:]
        y = F.rms_norm(x, shape) if self.rms else F.layer_norm(x, shape)
        out: torch.Tensor = y * self.weight[None, :, None, :]
        return out


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half form (RoFormer eq. 34, as Hugging Face's Llama applies it) on the
    first ``cos.shape[-1]`` channels of ``x``; the others pass through (partial rotary)."""
    width = cos.shape[-1]
    if width != x.shape[-1]:
        return torch.cat((rotate(x[..., :width], cos, sin), x[..., width:]), dim=-1)
    half = width // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): a geometric sequence from 2^(-8/n), with the
    interleaved extra heads bloom uses when n_head is not a power of two."""
    closest = 2 ** math.floor(math.log2(n_head))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_head:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(min(closest, n_head - closest))]
    return torch.tensor(slopes)


class CausalSelfAttention(nn.Module):
    """Multi-head, grouped-query or multi-query causal attention (``n_kv_head`` k/v heads)."""

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind, cuda_semantics: bool
                 ) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_width, kv_width = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, q_width + 2 * kv_width, bias=cfg.qkv_bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm == "head" or (cfg.qk_norm == "per_head" and not cfg.norm_affine):
            self.q_norm = make_norm(cfg, cfg.head_dim, bias=False)
            self.k_norm = make_norm(cfg, cfg.head_dim, bias=False)
        elif cfg.qk_norm == "per_head":
            self.q_norm = PerHeadNorm(cfg, cfg.n_head, cfg.head_dim)
            self.k_norm = PerHeadNorm(cfg, cfg.n_kv_head, cfg.head_dim)
        elif cfg.qk_norm == "full":
            self.q_norm = make_norm(cfg, q_width, bias=False)
            self.k_norm = make_norm(cfg, kv_width, bias=False)
        self.c_proj = nn.Linear(q_width, cfg.n_embd, bias=cfg.attn_out_bias)
        self.attn_dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        self.resid_dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        self.dropout = cfg.dropout
        self.softcap = cfg.attn_softcap
        self.attention = attention
        self.cuda_semantics = cuda_semantics

    def forward(self, x: torch.Tensor, rope: Rope | None, mask: torch.Tensor | None
                ) -> torch.Tensor:
        B, T, _ = x.shape
        a, k, h = self.n_head, self.n_kv_head, self.head_dim
        q, key, v = self.c_attn(x).split([a * h, k * h, k * h], dim=2)
        if self.qk_norm == "full":  # olmo2: over every head's channels, before the split
            q, key = self.q_norm(q), self.k_norm(key)
        q = q.view(B, T, a, h).transpose(1, 2)
        key = key.view(B, T, k, h).transpose(1, 2)
        v = v.view(B, T, k, h).transpose(1, 2)
        if self.qk_norm in ("head", "per_head"):
            q, key = self.q_norm(q), self.k_norm(key)
        if rope is not None:
            q, key = rotate(q, *rope), rotate(key, *rope)
        y = attend(self, q, key, v, mask, scale=1.0 / math.sqrt(h))
        y = y.transpose(1, 2).contiguous().view(B, T, a * h)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


def attend(layer: CausalSelfAttention | LatentAttention, q: torch.Tensor, key: torch.Tensor,
           v: torch.Tensor, mask: torch.Tensor | None, *, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (B, heads, T, width) tensors, by SDPA ("flash") or
    explicitly ("eager"); k and v may have fewer heads (GQA)."""
    a, k = q.shape[1], key.shape[1]
    if layer.attention == "flash":
        # CUDA's flash kernel applies dropout from an RNG state it keeps instead of a mask;
        # on CPU, dropout > 0 forces the math kernel, so cuda_semantics leaves it out.
        p = layer.dropout if layer.training and not layer.cuda_semantics else 0.0
        out: torch.Tensor = F.scaled_dot_product_attention(  # scale: 1 / sqrt(q's width)
            q, key, v, attn_mask=mask, dropout_p=p, is_causal=mask is None, enable_gqa=k != a)
        return out
    if k != a:  # expand the k/v heads to one per query head
        key = key.repeat_interleave(a // k, dim=1)
        v = v.repeat_interleave(a // k, dim=1)
    att = (q @ key.transpose(-2, -1)) * scale
    if layer.softcap is not None:  # gemma2: c * tanh(scores / c), before the mask
        att = torch.tanh(att / layer.softcap) * layer.softcap
    assert mask is not None
    # a bool mask hides keys; ALiBi's float mask is its bias with -inf where hidden
    att = att.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else att + mask
    att = layer.attn_dropout(F.softmax(att, dim=-1))
    y: torch.Tensor = att @ v
    return y


class LatentAttention(nn.Module):
    """Multi-head latent attention, DeepSeek-V2/V3's layout (transformers' ``DeepseekV3Attention``).

    Queries: ``q_a_proj`` (d -> q_lora_rank), ``q_a_norm``, ``q_b_proj`` (-> heads x
    qk_head_dim), or one ``q_proj`` when ``q_lora_rank`` is None. Keys and values: ``kv_a_proj``
    (d -> kv_lora_rank + qk_rope_head_dim), ``kv_a_norm`` on the latent, ``kv_b_proj`` (-> heads
    x (qk_nope + v)); the
    rotary key is shared by the heads. Output ``c_proj`` (heads x v_head_dim -> d)."""

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind, cuda_semantics: bool
                 ) -> None:
        super().__init__()
        mla = cfg.mla
        assert mla is not None
        self.n_head, self.mla = cfg.n_head, mla
        d, a = cfg.n_embd, cfg.n_head
        if mla.q_lora_rank is None:
            self.q_proj = nn.Linear(d, a * mla.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, mla.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = nn.RMSNorm(mla.q_lora_rank, elementwise_affine=cfg.norm_affine)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, a * mla.qk_head_dim, bias=False)
        self.kv_a_proj = nn.Linear(d, mla.kv_lora_rank + mla.qk_rope_head_dim, bias=cfg.qkv_bias)
        self.kv_a_norm = nn.RMSNorm(mla.kv_lora_rank, elementwise_affine=cfg.norm_affine)
        self.kv_b_proj = nn.Linear(mla.kv_lora_rank, a * (mla.qk_nope_head_dim + mla.v_head_dim),
                              bias=False)
        self.c_proj = nn.Linear(a * mla.v_head_dim, d, bias=cfg.attn_out_bias)
        self.attn_dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        self.resid_dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        self.dropout = cfg.dropout
        self.softcap = cfg.attn_softcap
        self.attention = attention
        self.cuda_semantics = cuda_semantics

    def forward(self, x: torch.Tensor, rope: Rope | None, mask: torch.Tensor | None
                ) -> torch.Tensor:
        B, T, _ = x.shape
        a, m = self.n_head, self.mla
        if m.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q = q.view(B, T, a, m.qk_head_dim).transpose(1, 2)
        q_pass, q_rot = q.split([m.qk_nope_head_dim, m.qk_rope_head_dim], dim=-1)
        latent, k_rot = self.kv_a_proj(x).split([m.kv_lora_rank, m.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(self.kv_a_norm(latent)).view(B, T, a, m.qk_nope_head_dim + m.v_head_dim)
        k_pass, v = kv.transpose(1, 2).split([m.qk_nope_head_dim, m.v_head_dim], dim=-1)
        k_rot = k_rot.view(B, 1, T, m.qk_rope_head_dim)
        assert rope is not None  # GPTConfig checks that mla has position='rope'
        q_rot, k_rot = rotate(q_rot, *rope), rotate(k_rot, *rope)
        q = torch.cat((q_pass, q_rot), dim=-1)
        key = torch.cat((k_pass, k_rot.expand(B, a, T, m.qk_rope_head_dim)), dim=-1)
        y = attend(self, q, key, v, mask, scale=1.0 / math.sqrt(m.qk_head_dim))
        y = y.transpose(1, 2).contiguous().view(B, T, a * m.v_head_dim)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out
