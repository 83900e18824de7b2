"""Rules built on scaling laws (scaleplan.scaling.rules), each against its published number."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.rules import (
    InferenceOptimal,
    critical_batch_size,
    data_constrained_loss,
    deepseek_batch_size,
    deepseek_learning_rate,
    effective_params,
    effective_tokens,
    inference_optimal,
)


def test_kaplan_critical_batch_at_loss_3() -> None:
    # Kaplan 2020 eq. 1.4 with B* = 2e8 tokens, alpha_B = 0.21: 2e8 / 3^(1/0.21) = 2e8 / 187.1
    assert critical_batch_size(3.0) == pytest.approx(1.069e6, rel=1e-3)
    # it shrinks as loss rises: (3.0 / 4.0)^(1/0.21) times the batch at L = 3
    assert critical_batch_size(4.0) == pytest.approx(1.069e6 * 0.75 ** (1 / 0.21), rel=1e-3)


def test_deepseek_batch_and_learning_rate_at_1e20() -> None:
    # DeepSeek LLM 2024 eq. 1: 0.2920 x (1e20)^0.3271 = 0.2920 x 10^6.542 = 1.017e6 tokens
    assert deepseek_batch_size(1e20) == pytest.approx(1.017e6, rel=1e-3)
    # 0.3118 x (1e20)^-0.125 = 0.3118 x 10^-2.5
    assert deepseek_learning_rate(1e20) == pytest.approx(0.3118 * 10**-2.5, rel=1e-12)
    assert deepseek_batch_size([1e20, 1e21]).shape == (2,)


def test_muennighoff_readme_examples_to_1e_12() -> None:
    # datablations README, "Parametric Fit": Figure 1 (right) models
    assert data_constrained_loss(6.34e9, 242e9, 25e9) == pytest.approx(
        2.2256440889984477, rel=1e-12
    )
    assert data_constrained_loss(8.67e9, 178e9, 25e9) == pytest.approx(
        2.2269634075087867, rel=1e-12
    )


def test_one_epoch_is_worth_its_tokens_and_repetition_saturates() -> None:
    # R_D = 0 leaves D' = U; R_D -> infinity gives U (1 + R*_D), R*_D = 15.387756
    assert effective_tokens(1e9, 1e9) == 1e9
    assert effective_tokens(1e15, 1e9) == pytest.approx(1e9 * (1 + 15.387756), rel=1e-9)
    # 4 epochs by hand: 1 + 15.387756 (1 - exp(-3 / 15.387756)) = 3.7257
    assert effective_tokens(4e9, 1e9) == pytest.approx(
        1e9 * (1 + 15.387756 * (1 - math.exp(-3 / 15.387756))), rel=1e-14
    )


def test_parameters_within_what_the_data_supports_keep_full_value() -> None:
    # a model smaller than the compute-optimal size for its unique data has R_N = 0
    assert effective_params(1e8, 25e9) == 1e8
    assert effective_params(np.array([1e8, 6.34e9]), 25e9)[1] < 6.34e9


def test_more_unique_tokens_than_tokens_is_rejected() -> None:
    with pytest.raises(ScaleplanError, match=r"unique_tokens=2e\+10 exceeds tokens=1e\+10"):
        data_constrained_loss(1e9, 1e10, 2e10)


def test_sardana_frankle_figure_1() -> None:
    # Sardana & Frankle 2023, Fig. 1: a Chinchilla-optimal 13B model expecting 2T tokens of
    # inference is better replaced by a ~7B model trained longer, saving ~1.7e22 FLOPs (17%).
    law = scaling_law("chinchilla")
    target = law.loss(13e9, law.optimal_tokens_for_params(13e9))
    opt = inference_optimal(target, 2e12)
    assert opt.compute_optimal_n_params == pytest.approx(13e9, rel=1e-6)
    assert opt.n_params == pytest.approx(7e9, rel=0.05)
    assert opt.savings == pytest.approx(0.17, abs=0.01)
    assert opt.compute_optimal_total_flops - opt.total_flops == pytest.approx(1.7e22, rel=0.05)
    assert law.loss(opt.n_params, opt.tokens) == pytest.approx(target, rel=1e-6)


def test_without_inference_the_optimum_is_the_closed_form_compute_optimum() -> None:
    law = scaling_law("epoch2024")
    opt = inference_optimal(2.2, 0, law=law)
    closed = law.compute_optimal(opt.training_flops)
    assert opt.n_params == pytest.approx(closed.n_params, rel=1e-5)
    assert opt.tokens == pytest.approx(closed.tokens, rel=1e-5)
    assert opt.savings == pytest.approx(0.0, abs=1e-9)


def test_inference_optimal_parts_sum_and_round_trip() -> None:
    opt = inference_optimal(2.3, 1e13, law="kaplan2020")
    assert opt.training_flops + opt.inference_flops == opt.total_flops
    assert opt.inference_flops == pytest.approx(2 * opt.n_params * 1e13, rel=1e-9)
    assert InferenceOptimal.model_validate_json(opt.model_dump_json()) == opt


def test_inference_optimal_rejects_unreachable_loss_and_bad_demand() -> None:
    with pytest.raises(ScaleplanError, match=r"loss=1\.5 is out of reach under the 'chinchilla' "
                       r"law, whose loss never falls below 1\.693"):
        inference_optimal(1.5, 1e12)
    with pytest.raises(ScaleplanError, match=r"inference_tokens must be a non-negative finite "
                       r"count; got inference_tokens=-1"):
        inference_optimal(2.0, -1)
