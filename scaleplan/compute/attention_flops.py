"""The attention core's FLOPs (QK^T and softmax(QK^T) V), the term of training FLOPs that
grows with the sequence: `attention_core` per sequence, `attention_forward_per_token` averaged
over its tokens. `scaleplan.compute.flops` adds the matmul weights' 6N.

Every (query, key) pair a head scores costs 2·Q FLOPs in QK^T (Q the query/key width) and 2·Q_v
in AV (Q_v the value width: head_dim, or MLA's v_head_dim). The pairs counted:

- ``causal=False``: all T² of them. This is what a kernel given any mask computes (SDPA's math
  kernel, and what FlopCounterMode counts), so a sliding window saves nothing here.
- ``causal=True``: T²/2, Megatron-LM's triangle (nanoGPT issue #456; the exact triangle has
  T(T+1)/2); in a sliding-window block with a window w shorter than T, the band T·w - w²/2,
  the triangle's continuous counterpart (equal to it when w = T).

Partial rotary, ALiBi, QK-norms and soft-capping are elementwise: no matmul FLOPs.
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig

__all__ = ["FLOPS_PER_MAC", "attention_core", "attention_forward",
           "attention_forward_per_token", "attention_matmul", "pair_flops", "window_keys"]

# One multiply-add is 2 FLOPs: a (m x k) @ (k x n) matmul costs 2·m·n·k forward.
FLOPS_PER_MAC = 2


def attention_matmul(L: Any, H: Any, Q: Any, T: Any, *, causal: bool) -> Any:
    """Forward FLOPs of one of QK^T and AV for one token: 2·T·Q per head and layer (T·Q
    multiply-adds), halved when ``causal`` (Megatron-LM's T²/2 triangle, see the module
    docstring). Written without division so that ints stay exact ints."""
    macs = L * H * Q * T
    return macs * (FLOPS_PER_MAC // 2) if causal else macs * FLOPS_PER_MAC


def attention_forward(L: Any, H: Any, Q: Any, T: Any, *, causal: bool) -> Any:
    """Forward FLOPs of QK^T and AV for one token: 2 matmuls x 2·T·Q per head and layer.

    This is a third of PaLM's 12·L·H·Q·T (App. B); halved when ``causal``.
    """
    return 2 * attention_matmul(L, H, Q, T, causal=causal)


def window_keys(cfg: GPTConfig, seq_len: Any) -> Any:
    """The keys a query of a sliding-window block sees at most, when the window is shorter than
    ``seq_len`` (else None: the window changes nothing). A structural branch on numbers."""
    window = cfg.sliding_window
    if window is None or not cfg.sliding_window_layers:
        return None
    try:
        shorter = bool(window < seq_len)
    except TypeError:  # a sympy seq_len: min(window, seq_len) has no single formula
        raise ScaleplanError(
            f"sliding_window={shown(window)} with a symbolic seq_len: the attention term "
            "depends on which is shorter; give seq_len as a number") from None
    return window if shorter else None


def pair_flops(seq_len: Any, window: Any, *, causal: bool) -> Any:
    """2 x the (query, key) pairs of one sequence that one head's QK^T (or AV) computes, so that
    a matmul over width Q costs Q x this many FLOPs: 2·T² for every pair; T² for a causal
    mask (Megatron's T²/2 triangle); 2·T·w - w² for a causal window of w < T keys (the band
    T·w - w²/2, the triangle's continuous counterpart). A window counts only with ``causal``:
    without it, like every mask, it saves nothing (an SDPA kernel given the mask computes every
    score, and FlopCounterMode counts them)."""
    if not causal:
        return FLOPS_PER_MAC * seq_len * seq_len
    if window is None:
        return seq_len * seq_len
    return 2 * seq_len * window - window * window


def attention_core(cfg: GPTConfig, seq_len: Any, *, causal: bool) -> tuple[Any, Any]:
    """Forward FLOPs of QK^T and of AV for one sequence of ``seq_len``, over every block and
    head: widths head_dim (MLA: scores over qk_head_dim, values over v_head_dim), full blocks
    over the causal triangle, ``sliding_window_layers`` blocks over their band."""
    window = window_keys(cfg, seq_len) if causal else None
    sliding = cfg.sliding_window_layers if window is not None else 0
    pairs = ((cfg.n_layer - sliding) * pair_flops(seq_len, None, causal=causal)
             + sliding * pair_flops(seq_len, window, causal=causal))
    value_width = cfg.mla.v_head_dim if cfg.mla is not None else cfg.head_dim
    return cfg.n_head * cfg.head_dim * pairs, cfg.n_head * value_width * pairs


def attention_forward_per_token(cfg: GPTConfig, seq_len: Any, *, causal: bool) -> Any:
    """Forward FLOPs of the attention core (QK^T and AV) per token, averaged over ``seq_len``:
    PaLM's 4·L·H·Q·T (a third of its 12·L·H·Q·T), halved when ``causal``; exact ints unless a
    sliding window shorter than ``seq_len`` makes the average a fraction."""
    if not causal or window_keys(cfg, seq_len) is None:  # T divides every count: exact ints
        scores_width = cfg.head_dim
        value_width = cfg.mla.v_head_dim if cfg.mla is not None else cfg.head_dim
        return (attention_matmul(cfg.n_layer, cfg.n_head, scores_width, seq_len, causal=causal)
                + attention_matmul(cfg.n_layer, cfg.n_head, value_width, seq_len,
                                   causal=causal))
    scores, values = attention_core(cfg, seq_len, causal=causal)
    return (scores + values) / seq_len
