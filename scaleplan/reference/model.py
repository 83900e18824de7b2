"""A compact GPT in torch that builds any `GPTConfig`: the reference for every formula.

Names and shapes follow nanoGPT (karpathy/nanoGPT ``model.py``) for GPT-2 configs, so parameter
names line up one to one: ``transformer.wte``, ``transformer.wpe``, ``transformer.h.N.ln_1``,
``attn.c_attn`` (q, k and v fused in one ``d x (a + 2k) h`` linear, also for GQA/MQA),
``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``transformer.ln_f``, ``lm_head``.
Gated MLPs (SwiGLU/GeGLU) add ``mlp.c_gate``. Blocks are pre-norm, as in GPT-2 and Llama.

Attention is ``"flash"`` (``F.scaled_dot_product_attention``, which keeps O(s) state for
backward) or ``"eager"`` (explicit softmax, which keeps the s x s matrix). ``cuda_semantics=True``
makes the CPU keep what CUDA keeps: 1-byte bool dropout masks (``torch.native_dropout``) and no
dropout inside SDPA (CUDA's flash kernel keeps only an RNG state, while CPU falls back to the math
kernel and saves s x s tensors when dropout > 0).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scaleplan.model.config import GPTConfig

__all__ = ["GPT", "AttentionKind"]

AttentionKind = Literal["flash", "eager"]

ROPE_THETA = 10_000.0  # RoFormer (Su et al. 2021), eq. 15; Llama's default base
INIT_STD = 0.02  # GPT-2 / nanoGPT weight init


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


def _norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.norm_bias)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half form (RoFormer eq. 34, as Hugging Face's Llama applies it)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Multi-head, grouped-query or multi-query causal attention (``n_kv_head`` k/v heads)."""

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind, cuda_semantics: bool) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_width, kv_width = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, q_width + 2 * kv_width, bias=cfg.qkv_bias)
        self.c_proj = nn.Linear(q_width, cfg.n_embd, bias=cfg.attn_out_bias)
        self.attn_dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        self.resid_dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        self.dropout = cfg.dropout
        self.attention = attention
        self.cuda_semantics = cuda_semantics

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        a, k, h = self.n_head, self.n_kv_head, self.head_dim
        q, key, v = self.c_attn(x).split([a * h, k * h, k * h], dim=2)
        q = q.view(B, T, a, h).transpose(1, 2)
        key = key.view(B, T, k, h).transpose(1, 2)
        v = v.view(B, T, k, h).transpose(1, 2)
        if rope is not None:
            q, key = _rotate(q, *rope), _rotate(key, *rope)
        if self.attention == "flash":
            # CUDA's flash kernel applies dropout from an RNG state it keeps instead of a mask;
            # on CPU, dropout > 0 forces the math kernel, so cuda_semantics leaves it out.
            p = self.dropout if self.training and not self.cuda_semantics else 0.0
            y = F.scaled_dot_product_attention(q, key, v, dropout_p=p, is_causal=True,
                                               enable_gqa=k != a)
        else:
            if k != a:  # expand the k/v heads to one per query head
                key = key.repeat_interleave(a // k, dim=1)
                v = v.repeat_interleave(a // k, dim=1)
            att = (q @ key.transpose(-2, -1)) * (1.0 / math.sqrt(h))
            assert mask is not None
            att = att.masked_fill(mask[:T, :T], float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, a * h)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    """GELU MLP (``c_fc``, ``gelu``, ``c_proj``) or gated SwiGLU/GeGLU (adds ``c_gate``)."""

    def __init__(self, cfg: GPTConfig, *, cuda_semantics: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=cfg.mlp_bias)
        self.c_gate = (nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=cfg.mlp_bias)
                       if cfg.gated_mlp else None)
        self.act = nn.SiLU() if cfg.mlp == "swiglu" else nn.GELU()
        self.c_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=cfg.mlp_bias)
        self.dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is None:
            hidden = self.act(self.c_fc(x))
        else:  # Shazeer 2020, "GLU Variants Improve Transformer": act(x W) * (x V)
            hidden = self.act(self.c_gate(x)) * self.c_fc(x)
        out: torch.Tensor = self.dropout(self.c_proj(hidden))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind, cuda_semantics: bool) -> None:
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg, attention=attention, cuda_semantics=cuda_semantics)
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg, cuda_semantics=cuda_semantics)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """The reference GPT for ``cfg``; ``forward(idx, targets)`` returns ``(logits, loss)``.

    ``checkpointing=True`` recomputes every block in backward (``torch.utils.checkpoint``,
    non-reentrant), so only each block's input is kept.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=32)
    >>> sum(p.numel() for p in GPT(cfg).parameters())
    2144
    """

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind = "flash",
                 checkpointing: bool = False, cuda_semantics: bool = False) -> None:
        super().__init__()
        if cfg.position == "rope" and cfg.head_dim % 2:
            raise ValueError(f"position='rope' needs an even head_dim, got head_dim="
                             f"{cfg.head_dim}; choose an even head_dim or position='learned'")
        self.cfg = cfg
        self.checkpointing = checkpointing
        self.attention = attention
        lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.tie_embeddings:  # nanoGPT's weight tying: one tensor, counted once (as wte)
            wte.weight = lm_head.weight
        modules: dict[str, nn.Module] = {"wte": wte}
        if cfg.position == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules["drop"] = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        modules["h"] = nn.ModuleList(
            Block(cfg, attention=attention, cuda_semantics=cuda_semantics)
            for _ in range(cfg.n_layer))
        modules["ln_f"] = _norm(cfg)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = lm_head
        self.apply(_init_weights)
        if cfg.position == "rope":
            inv_freq = ROPE_THETA ** (-torch.arange(0, cfg.head_dim, 2) / cfg.head_dim)
            angles = torch.outer(torch.arange(cfg.block_size), inv_freq).repeat(1, 2)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.shape[1]
        if self.cfg.block_size < T:
            raise ValueError(f"seq_len={T} exceeds block_size={self.cfg.block_size}; use "
                             f"seq_len <= {self.cfg.block_size} or a larger block_size")
        parts = self.transformer
        x = parts["wte"](idx)
        if "wpe" in parts:
            x = x + parts["wpe"](torch.arange(T, device=idx.device))
        x = parts["drop"](x)
        rope = None
        if self.cfg.position == "rope":
            cos, sin = self.get_buffer("rope_cos"), self.get_buffer("rope_sin")
            rope = (cos[:T].to(x.dtype), sin[:T].to(x.dtype))
        mask = None  # one causal mask shared by every layer (True above the diagonal)
        if self.attention == "eager":
            mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
        for block in parts["h"].children():
            if self.checkpointing:
                x = checkpoint(block, x, rope, mask, use_reentrant=False)
            else:
                x = block(x, rope, mask)
        logits: torch.Tensor = self.lm_head(parts["ln_f"](x))
        loss = None
        if targets is not None:  # as nanoGPT: cross-entropy over every position
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
