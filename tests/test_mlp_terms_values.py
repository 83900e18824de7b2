"""`scaleplan.memory.mlp_terms` by hand, torch-free so mutation testing sees each term.

A tiny MoE: d = 8, 4 routed experts of hidden 16, top-2, shared experts of hidden 24 behind a
sigmoid gate, a SwiGLU MLP (gated), 10 tokens. Under bf16 autocast e = 2 (activations) and the
residual stream is fp32 (4); in fp32 both are 4. Each byte is written out below.
"""

from __future__ import annotations

import numpy as np

from scaleplan.memory.mlp_terms import dense_mlp_terms, moe_mlp_terms, routed_rows
from scaleplan.model.architecture import MoE
from scaleplan.model.config import GPTConfig

MOE = MoE(n_experts=4, top_k=2, expert_hidden=16, shared_expert_hidden=24,
          shared_expert_gate=True)
CFG = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False, mlp="swiglu", moe=MOE)


def test_moe_terms_under_autocast_by_hand() -> None:
    t = moe_mlp_terms(CFG, 10, "bf16-mixed")
    assert t == {
        "mlp_input": 10 * 8 * 2,  # the router's cast input: 160
        "moe_router_probs": 10 * 4 * 2,  # T x n_experts in bf16: 80
        # top-k int64 indices and bf16 weights per token, and the weights' sum per token
        "moe_routing": 10 * 2 * (8 + 2) + 10 * 2,  # 220
        # 20 routed rows (10 tokens x top-2), the gate and up projections each cast the input
        "moe_expert_inputs": 2 * 20 * 8 * 2,  # 640
        "moe_expert_activations": 4 * 20 * 16 * 2,  # gate, act, up, product: 2560
        "moe_expert_outputs": 20 * 8 * 2 + 20 * 2,  # output and routing weight: 360
        "moe_expert_weighted": 20 * 8 * 4,  # index_add_'s fp32 source: 640
        "moe_routed_indices": 20 * 2 * 8,  # token and slot, int64: 320
        # the shared experts: their two casts of the input (the uncast input is the router's)
        "moe_shared_input": 2 * 10 * 8 * 2,  # 320
        "moe_shared_activations": 4 * 10 * 24 * 2,  # 1920
        # the gate's cast input 160, its sigmoid output 20, the shared output it scales 160
        "moe_shared_gate": 10 * 8 * 2 + 10 * 2 + 10 * 8 * 2,
    }


def test_moe_terms_in_fp32_by_hand() -> None:
    t = moe_mlp_terms(CFG, 10, "32-true")
    assert t == {
        "mlp_input": 10 * 8 * 4,
        "moe_router_probs": 10 * 4 * 4,
        "moe_routing": 10 * 2 * (8 + 4) + 10 * 4,  # 280
        "moe_expert_inputs": 20 * 8 * 4,  # one uncast input per row: 640
        "moe_expert_activations": 4 * 20 * 16 * 4,
        "moe_expert_outputs": 20 * 8 * 4 + 20 * 4,
        "moe_expert_weighted": 20 * 8 * 4,
        "moe_routed_indices": 20 * 16,
        "moe_shared_input": 0,  # the same storage as the router's input, saved once
        "moe_shared_activations": 4 * 10 * 24 * 4,
        "moe_shared_gate": 10 * 4 + 10 * 8 * 4,  # no cast: sigmoid output + shared output
    }


def test_moe_without_shared_experts_has_no_shared_terms() -> None:
    cfg = CFG.replace(moe=MoE(n_experts=4, top_k=2, expert_hidden=16), mlp="gelu")
    t = moe_mlp_terms(cfg, 10, "bf16-mixed")
    assert not any(k.startswith("moe_shared") for k in t)
    assert t["moe_expert_inputs"] == 20 * 8 * 2  # a GELU expert casts its input once
    assert t["moe_expert_activations"] == 2 * 20 * 16 * 2  # GELU's input and output


def test_routed_rows_dropless_and_with_capacity() -> None:
    assert routed_rows(CFG, 10) == 20  # 10 tokens x top-2
    capped = CFG.replace(moe=MoE(n_experts=4, top_k=2, expert_hidden=16, capacity_factor=1.25))
    # 4 experts x ceil(1.25 x 10 x 2 / 4 = 6.25) = 28; x ceil(1.875) = 8 at 3 tokens
    assert routed_rows(capped, 10) == 28
    assert routed_rows(capped, 3) == 8
    # an even share rounds to itself: 4 x (1.0 x 8 x 2 / 4) = 16
    even = CFG.replace(moe=MoE(n_experts=4, top_k=2, expert_hidden=16, capacity_factor=1.0))
    assert routed_rows(even, 8) == 16
    # float arrays (memory_grid) round up the same way
    np.testing.assert_array_equal(routed_rows(capped, np.array([10.0, 3.0, 8.0])),
                                  [28.0, 8.0, 20.0])
    assert moe_mlp_terms(capped, 10, "32-true")["moe_routed_indices"] == 28 * 16


def test_dense_mlp_widths_and_input_casts() -> None:
    relu = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp="relu")
    gelu = relu.replace(mlp="gelu")
    gated = relu.replace(mlp="swiglu")
    # 4 rows, hidden 32: ReLU keeps one f-wide tensor, GELU two, a gated MLP four
    assert dense_mlp_terms(relu, 4, 32, "32-true") == {"mlp_input": 4 * 8 * 4,
                                                        "mlp_activations": 1 * 4 * 32 * 4}
    assert dense_mlp_terms(gelu, 4, 32, "32-true")["mlp_activations"] == 2 * 4 * 32 * 4
    assert dense_mlp_terms(gated, 4, 32, "bf16-mixed") == {
        "mlp_input": 2 * 4 * 8 * 2, "mlp_activations": 4 * 4 * 32 * 2}
    # input_saved=False: nothing in fp32; autocast's own casts are still new tensors
    assert dense_mlp_terms(gelu, 4, 32, "32-true", input_saved=False)["mlp_input"] == 0
    assert dense_mlp_terms(gelu, 4, 32, "bf16-mixed", input_saved=False,
                           prefix="x")["x_input"] == 4 * 8 * 2
