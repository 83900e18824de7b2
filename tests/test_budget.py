"""plan_for_budget: hours -> FLOPs -> compute-optimal N (by hand) -> a shaped model -> its plan."""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.planning.budget import plan_for_budget, shape_for_params


def test_shape_for_gpt2_small_size_is_gpt2_small() -> None:
    # GPT-2 small (Radford et al. 2019): 12 layers, d_model 768, 12 heads of 64, ~124M.
    cfg = shape_for_params(124e6)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim) == (12, 768, 12, 64)


def test_shape_keeps_the_base_family() -> None:
    base = GPTConfig.preset("tinyllama-1.1b")
    cfg = shape_for_params(1.1e9, base=base)
    assert (cfg.mlp, cfg.norm, cfg.position, cfg.vocab_size) == ("swiglu", "rmsnorm", "rope",
                                                                 32000)
    assert count_params(cfg).total == pytest.approx(1.1e9, rel=0.15)


def test_budget_model_is_compute_optimal_by_hand() -> None:
    # One day on an RTX 4090 (165.2 TFLOP/s dense bf16) at 35% MFU:
    C = 24 * 3600 * 0.35 * 165.2e12
    # Chinchilla Approach 3, unrounded (design.md): N_opt = G (C/6)^a.
    A, B, alpha, beta = 406.401018, 410.722827, 0.33917084, 0.2849083
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n_opt = G * (C / 6) ** (beta / (alpha + beta))
    p = plan_for_budget("RTX 4090", hours=24, mfu=0.35)
    assert p.params.total == pytest.approx(n_opt, rel=0.15)  # the nearest whole shape
    assert p.model.n_embd == 64 * p.model.n_head
    assert p.hours == pytest.approx(24, rel=1e-6)
    assert p.fits
    assert p.micro_batch_size * p.grad_accum_steps * p.seq_len == p.tokens_per_step


@pytest.mark.parametrize(("hours", "message"), [(0, "hours=0 must be a positive"),
                                                (float("nan"), "hours=nan must be")])
def test_bad_budget(hours: float, message: str) -> None:
    with pytest.raises(ScaleplanError, match=message):
        plan_for_budget("RTX 4090", hours=hours)
    with pytest.raises(ScaleplanError, match="n_params=-1 must be a positive number"):
        shape_for_params(-1)
