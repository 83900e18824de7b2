"""Bytes the MLP of a block saves for backward: a dense MLP, or a mixture of experts.

A dense MLP (nanoGPT's ``c_fc``, ``c_gate``, ``c_proj``) saves the inputs of its projections and
its activation's operands; a mixture-of-experts MLP (`scaleplan.model.architecture.MoE`), run as
Hugging Face's Mixtral and DeepSeek blocks run it in training (transformers 5,
``MixtralExperts.forward``: a loop over the experts, each gathering its tokens, weighting its
output and adding it back with ``index_add_``), saves

- the router's input (T d), its probabilities (T x n_experts, in the router's output dtype:
  torch's CPU autocast runs softmax in bf16; Hugging Face's Mixtral upcasts them to fp32,
  2 T x n_experts bytes more) and the routing: the top-k indices (int64), the top-k weights
  and their sum (kept by the renormalising division);
- for each routed row (a token's copy into one of its experts: T x top_k rows, dropless; with
  ``capacity_factor`` every expert's buffer of ``ceil(capacity_factor x T top_k / n_experts)``
  rows, the dispatch buffer of GShard and Switch, padded when an expert gets fewer): the
  gathered input (d; cast twice under autocast for a gated MLP), the expert MLP's activations
  (as a dense MLP of ``expert_hidden``), the expert's output (d) and its routing weight (both
  kept by their product), the weighted output in the residual's dtype (d: ``index_add_``
  keeps its source) and two int64 indices (the token, kept by the gather and the
  ``index_add_``, and its top-k slot);
- the shared experts as one dense MLP of ``shared_expert_hidden`` on every token, with the
  sigmoid gate's input, output and the gated value when ``shared_expert_gate``.

T = b s tokens, d = n_embd, e = activation bytes. The router and expert weights' autocast
copies are counted with the other weights
(`scaleplan.memory.activations.autocast_weight_copy_bytes`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from scaleplan.memory.dtypes import (
    AUTOCAST,
    INDEX_BYTES,
    activation_bytes,
    residual_bytes,
)
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["ROUTED_ROW_INDEX_BYTES", "dense_mlp_terms", "moe_mlp_terms", "routed_rows"]

# A routed row keeps two int64 indices: its token (saved by the gather and the index_add_) and
# its top-k slot (saved by the routing-weight lookup).
ROUTED_ROW_INDEX_BYTES = 2 * INDEX_BYTES


def _activation_widths(cfg: GPTConfig) -> int:
    """f-wide tensors an MLP saves per row: gated (gate output, activation output, up output,
    product) 4; GELU (its input and output) 2; ReLU 1 (it saves its output, which the down
    projection saves as its input)."""
    if cfg.gated_mlp:
        return 4
    return 1 if cfg.mlp == "relu" else 2


def dense_mlp_terms(cfg: GPTConfig, rows: Any, hidden: Any, precision: Precision, *,
                    prefix: str = "mlp", input_saved: bool = True) -> dict[str, Any]:
    """A dense MLP of ``hidden`` width on ``rows`` rows: its input (twice under autocast for a
    gated MLP: the gate and up projections each cast it; ``input_saved=False`` when another
    operation saves the same storage) and its activations.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp="relu")
    >>> dense_mlp_terms(cfg, 4, 32, "32-true")
    {'mlp_input': 128, 'mlp_activations': 512}
    """
    e = activation_bytes(precision)
    casts = 2 if (cfg.gated_mlp and precision in AUTOCAST) else 1
    keep = casts if (input_saved or precision in AUTOCAST) else 0
    return {f"{prefix}_input": keep * rows * cfg.n_embd * e,
            f"{prefix}_activations": _activation_widths(cfg) * rows * hidden * e}


def routed_rows(cfg: GPTConfig, tokens: Any) -> Any:
    """Rows the routed experts process for ``tokens`` tokens: ``tokens x top_k`` (dropless), or
    ``n_experts`` buffers of ``ceil(capacity_factor x tokens x top_k / n_experts)`` rows.

    >>> from scaleplan.model.architecture import MoE
    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16,
    ...                 moe=MoE(n_experts=4, top_k=2, expert_hidden=8, capacity_factor=1.25))
    >>> routed_rows(cfg, 10)  # 4 experts x ceil(1.25 x 10 x 2 / 4) = 4 x 7
    28
    """
    moe = cfg.moe
    assert moe is not None
    if moe.capacity_factor is None:
        return tokens * moe.top_k
    if isinstance(tokens, int):  # exact: a float product rounds past 2^53
        return moe.n_experts * math.ceil(Fraction(moe.capacity_factor) * tokens * moe.top_k
                                         / moe.n_experts)
    share = moe.capacity_factor * tokens * moe.top_k / moe.n_experts
    return moe.n_experts * -(-share // 1)


def moe_mlp_terms(cfg: GPTConfig, tokens: Any, precision: Precision) -> dict[str, Any]:
    """What one MoE block's MLP saves for ``tokens`` tokens (see the module's docstring).

    >>> from scaleplan.model.architecture import MoE
    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, mlp="swiglu",
    ...                 moe=MoE(n_experts=4, top_k=2, expert_hidden=16))
    >>> t = moe_mlp_terms(cfg, 10, "32-true")
    >>> t["moe_router_probs"], t["moe_expert_activations"]  # 10 x 4 fp32; 20 rows x 4 x 16 x 4
    (160, 5120)
    """
    moe = cfg.moe
    assert moe is not None
    d, e = cfg.n_embd, activation_bytes(precision)
    k, n = moe.top_k, moe.n_experts
    autocast = precision in AUTOCAST
    probs = e  # the router's matmul output dtype: CPU autocast runs its softmax in bf16
    rows = routed_rows(cfg, tokens)
    casts = 2 if (cfg.gated_mlp and autocast) else 1
    terms: dict[str, Any] = {
        "mlp_input": tokens * d * e,  # the router's input (its own autocast cast)
        "moe_router_probs": tokens * n * probs,
        "moe_routing": tokens * k * (INDEX_BYTES + probs) + tokens * probs,
        "moe_expert_inputs": casts * rows * d * e,
        "moe_expert_activations": _activation_widths(cfg) * rows * moe.expert_hidden * e,
        "moe_expert_outputs": rows * d * e + rows * e,  # the output and its routing weight
        # the weighted output in the residual's dtype, which index_add_ saves (its source)
        "moe_expert_weighted": rows * d * residual_bytes(precision),
        "moe_routed_indices": rows * ROUTED_ROW_INDEX_BYTES,
    }
    if moe.shared_expert_hidden:
        shared = dense_mlp_terms(cfg, tokens, moe.shared_expert_hidden, precision,
                                 prefix="moe_shared", input_saved=False)
        terms.update(shared)
    if moe.shared_expert_gate:
        # the gate's linear input (its own cast under autocast), its sigmoid output and the
        # shared experts' output that the gate multiplies
        cast = tokens * d * e if precision in AUTOCAST else 0
        terms["moe_shared_gate"] = cast + tokens * e + tokens * d * e
    return terms
