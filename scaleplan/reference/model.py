"""A compact GPT in torch that builds any `GPTConfig`: the reference for every formula.

Names and shapes follow nanoGPT (karpathy/nanoGPT ``model.py``) for GPT-2 configs, so parameter
names line up one to one: ``transformer.wte``, ``transformer.wpe``, ``transformer.h.N.ln_1``,
``attn.c_attn`` (q, k and v fused in one ``d x (a + 2k) h`` linear, also for GQA/MQA),
``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``transformer.ln_f``, ``lm_head``.
Gated MLPs (SwiGLU/GeGLU) add ``mlp.c_gate``. Blocks are pre-norm, as in GPT-2 and Llama, unless
the config asks for post, sandwich or parallel blocks. Every option of `GPTConfig` is built as the
Hugging Face model that uses it builds it, with the tensor names of
`scaleplan.model.layers` (its NAMES table): attention and MLA in
`scaleplan.reference.attention`, the dense MLP and the mixture of experts in
`scaleplan.reference.moe`. Sliding-window blocks are the first ``sliding_window_layers``.

Attention is ``"flash"`` (``F.scaled_dot_product_attention``, which keeps O(s) state for
backward) or ``"eager"`` (explicit softmax, which keeps the s x s matrix). ``cuda_semantics=True``
makes the CPU keep what CUDA keeps: 1-byte bool dropout masks (``torch.native_dropout``) and no
dropout inside SDPA (CUDA's flash kernel keeps only an RNG state, while CPU falls back to the math
kernel and saves s x s tensors when dropout > 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scaleplan.model.config import GPTConfig
from scaleplan.reference.attention import (
    AttentionKind,
    CausalSelfAttention,
    Dropout,
    LatentAttention,
    Rope,
    alibi_slopes,
    make_norm,
)
from scaleplan.reference.moe import MLP, MoE, Routing

__all__ = ["GPT", "AttentionKind", "Block", "Routing", "sliding_blocks"]

ROPE_THETA = 10_000.0  # RoFormer (Su et al. 2021), eq. 15; Llama's default base
INIT_STD = 0.02  # GPT-2 / nanoGPT weight init


def _norm(cfg: GPTConfig) -> nn.Module:
    return make_norm(cfg, cfg.n_embd)


class Block(nn.Module):
    """A transformer block: pre-norm (GPT-2, Llama: ``x + attn(ln_1(x))``), post-norm (olmo2:
    ``x + ln_1_post(attn(x))``), sandwich (gemma2: both) or parallel (gptj, gpt_neox: ``x +
    attn(ln_1(x)) + mlp(ln_1(x) or ln_2(x))``); the MLP dense or a mixture of experts."""

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind, cuda_semantics: bool,
                 moe: bool = False, routing: Routing = "learned") -> None:
        super().__init__()
        self.parallel = cfg.parallel != "none"
        pre_attn, post_attn, pre_mlp, post_mlp = _norm_names(cfg)
        if pre_attn:
            self.ln_1 = _norm(cfg)
        layer = LatentAttention if cfg.mla is not None else CausalSelfAttention
        self.attn = layer(cfg, attention=attention, cuda_semantics=cuda_semantics)
        if post_attn:
            self.ln_1_post = _norm(cfg)
        if pre_mlp:
            self.ln_2 = _norm(cfg)
        self.mlp: nn.Module = (MoE(cfg, cuda_semantics=cuda_semantics, routing=routing) if moe
                               else MLP(cfg, cuda_semantics=cuda_semantics))
        if post_mlp:
            self.ln_2_post = _norm(cfg)

    def _sub(self, name: str, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, name, None)
        return x if norm is None else norm(x)

    def forward(self, x: torch.Tensor, rope: Rope | None, mask: torch.Tensor | None
                ) -> torch.Tensor:
        if self.parallel:  # gptj's shared ln_1, or gpt_neox's ln_1 and ln_2
            h = self.ln_1(x)
            out: torch.Tensor = (x + self.attn(h, rope, mask)
                                 + self.mlp(self._sub("ln_2", x) if hasattr(self, "ln_2")
                                            else h))
            return out
        x = x + self._sub("ln_1_post", self.attn(self._sub("ln_1", x), rope, mask))
        out = x + self._sub("ln_2_post", self.mlp(self._sub("ln_2", x)))
        return out


def _norm_names(cfg: GPTConfig) -> tuple[bool, bool, bool, bool]:
    """Which of a block's four norm places hold a norm: before attention, after it, before the
    MLP, after it (``scaleplan.model.layers.block_norm_names``)."""
    if cfg.parallel == "shared_norm":
        return True, False, False, False
    if cfg.parallel == "separate_norms" or cfg.norm_position == "pre":
        return True, False, True, False
    if cfg.norm_position == "post":
        return False, True, False, True
    return True, True, True, True


def sliding_blocks(cfg: GPTConfig) -> range:
    """The blocks with sliding-window attention: the first ``sliding_window_layers``."""
    return range(cfg.sliding_window_layers)


class GPT(nn.Module):
    """The reference GPT for ``cfg``; ``forward(idx, targets)`` returns ``(logits, loss)``.

    ``checkpointing=True`` recomputes every block in backward (``torch.utils.checkpoint``,
    non-reentrant), so only each block's input is kept. ``routing`` picks how a mixture of
    experts routes (`scaleplan.reference.moe`): by its router's top_k (``"learned"``) or in turn
    (``"balanced"``, deterministic, for tests and fake tensors).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=32)
    >>> sum(p.numel() for p in GPT(cfg).parameters())
    2144
    """

    def __init__(self, cfg: GPTConfig, *, attention: AttentionKind = "flash",
                 checkpointing: bool = False, cuda_semantics: bool = False,
                 routing: Routing = "learned") -> None:
        super().__init__()
        _check(cfg, attention)
        self.cfg = cfg
        self.checkpointing = checkpointing
        self.attention = attention
        e = cfg.embed_dim
        lm_head = nn.Linear(e, cfg.vocab_size, bias=cfg.lm_head_bias)
        wte = nn.Embedding(cfg.vocab_size, e)
        if cfg.tie_embeddings:  # nanoGPT's weight tying: one tensor, counted once (as wte)
            wte.weight = lm_head.weight
        modules: dict[str, nn.Module] = {"wte": wte}
        if e != cfg.n_embd:  # OPT-350m: a narrower embedding, projected in and out
            modules["project_in"] = nn.Linear(e, cfg.n_embd, bias=False)
        if cfg.position == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size + cfg.position_offset, cfg.n_embd)
        if cfg.embedding_norm:  # bloom's word_embeddings_layernorm
            modules["ln_emb"] = _norm(cfg)
        modules["drop"] = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)
        dense = cfg.moe.n_dense_layers if cfg.moe is not None else cfg.n_layer
        modules["h"] = nn.ModuleList(
            Block(cfg, attention=attention, cuda_semantics=cuda_semantics, moe=i >= dense,
                  routing=routing)
            for i in range(cfg.n_layer))
        if cfg.final_norm:
            modules["ln_f"] = _norm(cfg)
        if e != cfg.n_embd:
            modules["project_out"] = nn.Linear(cfg.n_embd, e, bias=False)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = lm_head
        self.apply(_init_weights)
        self.sliding = set(sliding_blocks(cfg))
        if cfg.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(cfg.n_head), persistent=False)
        if cfg.position == "rope":
            width = _rotary_width(cfg)
            inv_freq = ROPE_THETA ** (-torch.arange(0, width, 2) / width)
            angles = torch.outer(torch.arange(cfg.block_size), inv_freq).repeat(1, 2)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        parts, T = self.transformer, idx.shape[1]
        x = parts["wte"](idx)
        if "project_in" in parts:
            x = parts["project_in"](x)
        if "wpe" in parts:  # OPT reads rows offset .. offset + T - 1
            offset = self.cfg.position_offset
            x = x + parts["wpe"](torch.arange(offset, offset + T, device=idx.device))
        if "ln_emb" in parts:
            x = parts["ln_emb"](x)
        out: torch.Tensor = parts["drop"](x)
        return out

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.transformer
        if "ln_f" in parts:
            x = parts["ln_f"](x)
        if "project_out" in parts:  # OPT-350m: back to embed_dim for the head
            x = parts["project_out"](x)
        return x

    def _masks(self, T: int, device: torch.device, dtype: torch.dtype
               ) -> dict[bool, torch.Tensor | None]:
        """The attention mask of full blocks (False) and sliding-window blocks (True): for eager
        attention True where hidden; for SDPA None (is_causal), True where seen, or a float
        bias (ALiBi) with -inf where hidden. Built once per forward, shared by the blocks."""
        window = self.cfg.sliding_window
        kinds = {False: None, True: window} if self.sliding else {False: None}
        alibi = "alibi" in self._buffers
        masks: dict[bool, torch.Tensor | None] = {}
        for sliding, w in kinds.items():
            banded = w is not None and w < T
            w = w or 0
            if not (alibi or banded or self.attention == "eager"):
                masks[sliding] = None  # SDPA's is_causal
                continue
            hidden = torch.ones(T, T, dtype=torch.bool, device=device).triu(1)
            if banded:  # also hide the keys w or more tokens back
                hidden = hidden | torch.ones(T, T, dtype=torch.bool, device=device).tril(-w)
            if alibi:
                slopes = self.get_buffer("alibi").to(device=device, dtype=dtype)
                bias = slopes[:, None, None] * torch.arange(T, device=device, dtype=dtype)
                masks[sliding] = bias.masked_fill(hidden, float("-inf"))
            else:
                masks[sliding] = hidden if self.attention == "eager" else ~hidden
        return masks

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.shape[1]
        if self.cfg.block_size < T:
            raise ValueError(f"seq_len={T} exceeds block_size={self.cfg.block_size}; use "
                             f"seq_len <= {self.cfg.block_size} or a larger block_size")
        parts = self.transformer
        x = self._embed(idx)
        rope = None
        if self.cfg.position == "rope":
            cos, sin = self.get_buffer("rope_cos"), self.get_buffer("rope_sin")
            rope = (cos[:T].to(x.dtype), sin[:T].to(x.dtype))
        masks = self._masks(T, idx.device, x.dtype)  # one per kind, shared by the blocks
        for i, block in enumerate(parts["h"].children()):
            mask = masks[i in self.sliding]
            if self.checkpointing:
                x = checkpoint(block, x, rope, mask, use_reentrant=False)
            else:
                x = block(x, rope, mask)
        # the head's input is a temporary: under autocast the fp32 ln_f output dies once cast
        logits: torch.Tensor = self.lm_head(self._final(x))
        if self.cfg.final_softcap is not None:  # gemma2: c * tanh(logits / c)
            c = self.cfg.final_softcap
            logits = torch.tanh(logits / c) * c
        loss = None
        if targets is not None:  # as nanoGPT: cross-entropy over every position
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def _rotary_width(cfg: GPTConfig) -> int:
    """Channels of a head that RoPE rotates: MLA's qk_rope_head_dim, else rotary_fraction of
    head_dim (gpt_neox's ``int(head_size * rotary_pct)``)."""
    if cfg.mla is not None:
        return cfg.mla.qk_rope_head_dim
    return int(cfg.head_dim * cfg.rotary_fraction)


def _check(cfg: GPTConfig, attention: AttentionKind) -> None:
    if cfg.position == "rope" and _rotary_width(cfg) % 2:
        what = ("qk_rope_head_dim" if cfg.mla is not None else
                "head_dim" if cfg.rotary_fraction == 1.0 else "head_dim x rotary_fraction")
        raise ValueError(f"position='rope' needs an even {what}, got {what}="
                         f"{_rotary_width(cfg)}; choose an even {what} or position='learned'")
    if cfg.attn_softcap is not None and attention != "eager":
        raise ValueError(f"attn_softcap={cfg.attn_softcap} needs attention='eager': SDPA has "
                         "no soft-capping of the scores (transformers' gemma2 uses eager too)")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
