"""The reference GPT's feed-forward layers: the dense MLP and the mixture of experts.

`MLP` is GELU/ReLU (``c_fc``, act, ``c_proj``) or gated SwiGLU/GeGLU (adds ``c_gate``). `MoE`
follows transformers' Mixtral and DeepSeek-V3 blocks: a router (``router``, n_experts x d) scores
every expert for each token (softmax, Mixtral; or sigmoid, DeepSeek-V3), the ``top_k`` best are
kept and renormalised; each expert runs on its routed tokens only (gathered with
``index_select``, added back with ``index_add_``, as transformers' ``MixtralExperts``); a shared
MLP (``shared``) every token goes through is added, gated by ``sigmoid(shared_gate(x))`` where
configured (Qwen2-MoE). The routed experts' weights are stacked: ``experts.c_fc`` is
``(n_experts, expert_hidden, d)``.

``routing="balanced"`` replaces the router's choice (not its scores) by a fixed one: token ``t``
(counted over the whole micro-batch) goes to experts ``(t * top_k + j) mod n_experts`` for ``j <
top_k``, so every expert takes ``top_k / n_experts`` of the tokens (exactly, when ``tokens x
top_k`` is a multiple of ``n_experts``). It is deterministic, needs no data-dependent shapes (so
it runs under ``FakeTensorMode``), and the router still gets gradients through the scores of the
chosen experts. ``capacity_factor`` keeps each expert's first ``ceil(capacity_factor x tokens x
top_k / n_experts)`` tokens and drops the rest (their share of that expert adds nothing).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scaleplan.model.config import GPTConfig
from scaleplan.reference.attention import Dropout

__all__ = ["MLP", "MoE", "Routing", "balanced_assignment"]

Routing = Literal["learned", "balanced"]
RouterScores = Literal["softmax", "sigmoid"]


def _activation(cfg: GPTConfig) -> nn.Module:
    if cfg.mlp == "swiglu":
        return nn.SiLU()
    if cfg.mlp == "relu":
        return nn.ReLU()
    return nn.GELU()


class MLP(nn.Module):
    """GELU or ReLU MLP (``c_fc``, act, ``c_proj``) or gated SwiGLU/GeGLU (adds ``c_gate``)."""

    def __init__(self, cfg: GPTConfig, *, cuda_semantics: bool, hidden: int | None = None,
                 dropout: bool = True) -> None:
        super().__init__()
        f = cfg.mlp_hidden if hidden is None else hidden
        self.c_fc = nn.Linear(cfg.n_embd, f, bias=cfg.mlp_bias)
        self.c_gate = nn.Linear(cfg.n_embd, f, bias=cfg.mlp_bias) if cfg.gated_mlp else None
        self.act = _activation(cfg)
        self.c_proj = nn.Linear(f, cfg.n_embd, bias=cfg.mlp_bias)
        self.dropout = Dropout(cfg.dropout if dropout else 0.0, cuda_semantics=cuda_semantics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is None:
            hidden = self.act(self.c_fc(x))
        else:  # Shazeer 2020, "GLU Variants Improve Transformer": act(x W) * (x V)
            hidden = self.act(self.c_gate(x)) * self.c_fc(x)
        out: torch.Tensor = self.dropout(self.c_proj(hidden))
        return out


class Experts(nn.Module):
    """``n_experts`` MLPs of the config's kind, their weights stacked on a first axis."""

    def __init__(self, cfg: GPTConfig, n_experts: int, hidden: int) -> None:
        super().__init__()
        d, bias = cfg.n_embd, cfg.mlp_bias
        self.c_fc = _Stacked(n_experts, hidden, d, bias=bias)
        self.c_gate = _Stacked(n_experts, hidden, d, bias=bias) if cfg.gated_mlp else None
        self.c_proj = _Stacked(n_experts, d, hidden, bias=bias)
        self.act = _activation(cfg)

    def run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on the tokens ``x`` (n, d)."""
        up = self.c_fc(e, x)
        hidden = self.act(up) if self.c_gate is None else self.act(self.c_gate(e, x)) * up
        out: torch.Tensor = self.c_proj(e, hidden)
        return out


class _Stacked(nn.Module):
    """E linear layers' (out, in) weights as one (E, out, in) parameter (and (E, out) biases)."""

    def __init__(self, n: int, out_features: int, in_features: int, *, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n, out_features)) if bias else None
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[e], None if self.bias is None else self.bias[e])


def balanced_assignment(tokens: int, top_k: int, n_experts: int) -> torch.Tensor:
    """The (tokens, top_k) expert indices of ``routing="balanced"``: ``(t * top_k + j) mod
    n_experts``, so the experts take the tokens in turn.

    >>> balanced_assignment(4, 2, 4).tolist()
    [[0, 1], [2, 3], [0, 1], [2, 3]]
    """
    slots = torch.arange(tokens * top_k).view(tokens, top_k)
    return slots % n_experts


class MoE(nn.Module):
    """A mixture-of-experts MLP: router, routed experts and shared experts."""

    def __init__(self, cfg: GPTConfig, *, cuda_semantics: bool, routing: Routing = "learned",
                 scores: RouterScores = "softmax") -> None:
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.n_experts, self.top_k, self.capacity_factor = (moe.n_experts, moe.top_k,
                                                            moe.capacity_factor)
        self.routing, self.scores = routing, scores
        self.router = nn.Linear(cfg.n_embd, moe.n_experts, bias=moe.router_bias)
        self.experts = Experts(cfg, moe.n_experts, moe.expert_hidden)
        self.shared = (MLP(cfg, cuda_semantics=cuda_semantics, hidden=moe.shared_expert_hidden,
                           dropout=False) if moe.shared_expert_hidden else None)
        self.shared_gate = (nn.Linear(cfg.n_embd, 1, bias=False) if moe.shared_expert_gate
                            else None)
        self.dropout = Dropout(cfg.dropout, cuda_semantics=cuda_semantics)

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, experts), both (tokens, top_k): each token's experts and their weights."""
        logits = self.router(x)
        probs = logits.softmax(dim=-1) if self.scores == "softmax" else logits.sigmoid()
        if self.routing == "balanced":
            chosen = balanced_assignment(x.shape[0], self.top_k, self.n_experts).to(x.device)
            weights = probs.gather(1, chosen)
        else:
            weights, chosen = probs.topk(self.top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True), chosen

    def _tokens_of(self, chosen: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token index, slot) of the tokens routed to expert ``e``, capacity applied."""
        tokens, device = chosen.shape[0], chosen.device
        if self.routing == "balanced":  # slots e, e + E, ...: known without reading the data
            slots = torch.arange(e, tokens * self.top_k, self.n_experts, device=device)
            index, slot = slots // self.top_k, slots % self.top_k
        else:  # data-dependent: needs real tensors
            index, slot = (chosen == e).nonzero().unbind(dim=1)
        if self.capacity_factor is not None:
            keep = math.ceil(self.capacity_factor * tokens * self.top_k / self.n_experts)
            index, slot = index[:keep], slot[:keep]
        return index, slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, chosen = self._route(flat)
        out = torch.zeros_like(flat)
        for e in range(self.n_experts):
            index, slot = self._tokens_of(chosen, e)
            if index.numel() == 0:
                continue
            y = self.experts.run(e, flat.index_select(0, index))
            y = y * weights[index, slot].unsqueeze(-1).to(y.dtype)
            out.index_add_(0, index, y.to(out.dtype))
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        result: torch.Tensor = self.dropout(out.view(shape))
        return result
