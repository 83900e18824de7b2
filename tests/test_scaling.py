"""Scaling laws (scaleplan.scaling.laws, scaling.base) and token budgets (scaling.tokens)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.scaling.base import ComputeOptimal, ComputeOptimalArrays
from scaleplan.scaling.laws import KaplanScalingLaw, ScalingLaw, scaling_law, scaling_laws
from scaleplan.scaling.tokens import (
    chinchilla_tokens,
    overtraining_ratio,
    tokens_seen,
    training_compute,
)

GOPHER_FLOPS = 5.76e23  # Hoffmann et al. 2022: Gopher's training budget


# -- published compute-optimal allocations ------------------------------------------------------


def test_chinchilla_unrounded_reproduces_the_papers_40b_projection_at_gophers_budget() -> None:
    # Hoffmann 2022: Approach 3 (unrounded constants) projects ~40B parameters at 5.76e23 FLOPs.
    opt = scaling_law("chinchilla").compute_optimal(GOPHER_FLOPS)
    assert opt.n_params == pytest.approx(4.04e10, rel=2e-3)
    assert opt.tokens == pytest.approx(GOPHER_FLOPS / (6 * opt.n_params), rel=1e-9)


def test_chinchilla_rounded_constants_give_a_smaller_32b_model() -> None:
    # Same eq. 4 with the paper body's rounded E=1.69, A=406.4, B=410.7, alpha=.34, beta=.28.
    assert scaling_law("chinchilla-rounded").optimal_n_params(GOPHER_FLOPS) == pytest.approx(
        3.22e10, rel=2e-3
    )


def test_epoch2024_allocation_at_chinchillas_budget() -> None:
    # Besiroglu et al. 2024 (arXiv:2404.10102): at 5.88e23 FLOPs their fit gives ~73B params
    # and ~1.34T tokens, about 20 tokens per parameter (consistent with Approaches 1 and 2).
    opt = scaling_law("epoch2024").compute_optimal(5.88e23)
    assert opt.n_params == pytest.approx(7.31e10, rel=3e-3)
    assert opt.tokens == pytest.approx(1.34e12, rel=3e-3)
    assert 18 < opt.tokens_per_param < 20


@pytest.mark.parametrize("name", ["chinchilla", "chinchilla-rounded", "epoch2024", "kaplan2020"])
def test_closed_form_optimum_matches_a_brute_force_search_along_the_isoflop(name: str) -> None:
    law = scaling_law(name)
    flops = 1e21
    sizes = np.geomspace(1e7, 1e12, 200_001)
    losses = law.loss(sizes, flops / (6 * sizes))
    assert law.optimal_n_params(flops) == pytest.approx(sizes[np.argmin(losses)], rel=1e-3)


# -- the two functional forms -------------------------------------------------------------------


def test_chinchilla_loss_by_hand() -> None:
    # Chinchilla itself, 70B params on 1.4T tokens: 1.69337368 + 406.401018 / 70e9^0.33917084
    # + 410.722827 / 1.4e12^0.2849083 = 1.69337 + 0.08518 + 0.14225
    expected = 1.69337368 + 406.401018 / 70e9**0.33917084 + 410.722827 / 1.4e12**0.2849083
    assert scaling_law("chinchilla").loss(70e9, 1.4e12) == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(1.9208, abs=1e-4)


def test_kaplan_reduces_to_its_single_variable_laws() -> None:
    # Kaplan 2020 eq. 1.1 L(N) = (8.8e13/N)^0.076 and eq. 1.2 L(D) = (5.4e13/D)^0.095.
    law = scaling_law("kaplan2020")
    assert isinstance(law, KaplanScalingLaw)
    assert law.n_counts == "non_embedding"
    assert law.loss_params_limited(1e9) == pytest.approx((8.8e13 / 1e9) ** 0.076, rel=1e-14)
    assert law.loss_data_limited(1e10) == pytest.approx((5.4e13 / 1e10) ** 0.095, rel=1e-14)
    assert law.loss(1e9, 1e30) == pytest.approx(law.loss_params_limited(1e9), rel=1e-9)
    # eq. 1.5 by hand: [(8.8e13/1e9)^(0.076/0.095) + 5.4e13/1e10]^0.095 = [9033.5 + 5400]^0.095
    assert law.loss(1e9, 1e10) == pytest.approx(((8.8e4) ** 0.8 + 5.4e3) ** 0.095, rel=1e-14)


def test_chinchilla_limits_are_e_plus_one_term() -> None:
    law = scaling_law("chinchilla-rounded")
    assert law.loss_params_limited(1e9) == pytest.approx(1.69 + 406.4 / 1e9**0.34, rel=1e-14)
    assert law.loss_data_limited(1e10) == pytest.approx(1.69 + 410.7 / 1e10**0.28, rel=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["chinchilla", "epoch2024", "kaplan2020"]),
    log_n=st.floats(7, 12),
    log_d=st.floats(8, 13),
)
def test_tokens_and_params_for_loss_invert_the_loss(name: str, log_n: float, log_d: float) -> None:
    law = scaling_law(name)
    n, d = 10.0**log_n, 10.0**log_d
    target = law.loss(n, d)
    assert law.tokens_for_loss(target, n) == pytest.approx(d, rel=1e-6)
    assert law.params_for_loss(target, d) == pytest.approx(n, rel=1e-6)


def test_an_unreachable_loss_needs_infinite_tokens() -> None:
    law = scaling_law("chinchilla")
    # A 1B model never gets below E + A/N^alpha ~ 1.69 + 0.37
    assert law.tokens_for_loss(2.0, 1e9) == math.inf
    assert law.params_for_loss(1.5, 1e12) == math.inf  # below E itself


def test_optimal_tokens_for_params_inverts_the_allocation() -> None:
    for name in scaling_laws():
        law = scaling_law(name)
        opt = law.compute_optimal(1e22)
        assert law.optimal_tokens_for_params(opt.n_params) == pytest.approx(opt.tokens, rel=1e-6)
        assert law.optimal_params_for_tokens(opt.tokens) == pytest.approx(opt.n_params, rel=1e-6)


# -- vectorisation, types, round-trips ----------------------------------------------------------


def test_scalars_give_floats_and_arrays_give_arrays() -> None:
    law = scaling_law()
    assert type(law.loss(1e9, 2e10)) is float
    grid = law.loss(np.array([[1e8], [1e9]]), np.array([1e9, 1e10, 1e11]))
    assert isinstance(grid, np.ndarray) and grid.shape == (2, 3)
    assert grid[1, 2] == law.loss(1e9, 1e11)
    assert law.loss([1e8, 1e9], 1e10).tolist() == [law.loss(1e8, 1e10), law.loss(1e9, 1e10)]


@settings(max_examples=200, deadline=None)
@given(n=st.floats(1e6, 1e13), d=st.floats(1e8, 1e14))
def test_a_law_gives_pythons_own_bits_for_numbers_and_arrays(n: float, d: float) -> None:
    # Chinchilla's L = E + A/N^alpha + B/D^beta written out in Python floats (the C library's
    # pow): a plain call and the same numbers in an array give exactly these bits on any CPU
    # (numpy's own ** on AVX-512 differs from pow in the last bit for some inputs).
    law = scaling_law("chinchilla")
    by_hand = law.E + law.A / n**law.alpha + law.B / d**law.beta
    assert law.loss(n, d) == by_hand
    assert law.loss(np.array([n, 2 * n]), np.array([d, d]))[0] == by_hand
    a, _ = law.allocation_exponents
    tokens = 6 * (n / law.G) ** (1 / a) / (6 * n)  # C_opt(N) / (6 N), Hoffmann eq. 4
    assert law.optimal_tokens_for_params(n) == tokens
    assert law.optimal_tokens_for_params(np.array([n]))[0] == tokens


def test_kaplans_loss_of_a_number_equals_its_array_element() -> None:
    # Found by hypothesis on main (AVX-512 CPU): the number took numpy's scalar pow after its
    # first step, the array numpy's SIMD loop, and the two differed in the last bit
    # (3.371203168909285 vs 3.3712031689092847). Written out with Python's pow:
    law = scaling_law("kaplan2020")
    n, d = 1e7, 1460756123960.0
    by_hand = ((law.N_c / n) ** (law.alpha_N / law.alpha_D) + law.D_c / d) ** law.alpha_D
    assert law.loss(n, d) == by_hand
    assert law.loss(np.array([n, 2 * n]), d)[0] == by_hand


def test_a_plain_number_is_answered_without_numpy() -> None:
    # plan() asks the law for the compute-optimal budget and the loss: in a fresh interpreter
    # that must not import numpy (0.1-0.2 s of a cold `scaleplan plan`, issue 21)
    import subprocess
    import sys

    code = ("import sys\nfrom scaleplan.scaling.laws import scaling_law\n"
            "from scaleplan.scaling.tokens import chinchilla_tokens\n"
            "law = scaling_law('chinchilla')\n"
            "print(chinchilla_tokens(124_439_808, method=law), round(law.loss(1.24e8, 2.4e9), 6),"
            " 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    # D_opt(N) for Chinchilla Approach 3 at GPT-2 small's 124,439,808 parameters: ~2.44e9
    # (the README's plan); L(1.24e8, 2.4e9) = 1.6934 + 406.4/1.24e8^0.3392 + 410.7/2.4e9^0.2849
    assert out[2] == "False"
    assert int(out[0]) == pytest.approx(2.44e9, rel=2e-3)
    assert float(out[1]) == pytest.approx(1.69337 + 406.401 / 1.24e8**0.33917
                                          + 410.723 / 2.4e9**0.28491, rel=1e-5)


def test_compute_optimal_over_an_array_matches_scalar_calls() -> None:
    law = scaling_law("epoch2024")
    sweep = law.compute_optimal(np.array([1e20, 1e22]))
    assert isinstance(sweep, ComputeOptimalArrays)
    single = law.compute_optimal(1e22)
    assert isinstance(single, ComputeOptimal)
    assert sweep.n_params[1] == pytest.approx(single.n_params, rel=1e-9)
    assert sweep.loss[1] == pytest.approx(single.loss, rel=1e-12)


@pytest.mark.parametrize("name", ["chinchilla", "kaplan2020", "muennighoff2023"])
def test_laws_and_results_round_trip_through_json(name: str) -> None:
    law = scaling_law(name)
    assert type(law).model_validate_json(law.model_dump_json()) == law
    opt = law.compute_optimal(1e21)
    assert ComputeOptimal.model_validate_json(opt.model_dump_json()) == opt


def test_laws_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        scaling_law().E = 2.0  # type: ignore[misc]


def test_every_builtin_law_states_its_source_and_what_n_counts() -> None:
    for name in scaling_laws():
        law = scaling_law(name)
        assert law.name == name and law.paper and law.equation
        assert law.n_counts in ("total", "non_embedding")


def test_scaling_law_accepts_any_case_and_passes_laws_through() -> None:
    law = scaling_law("Chinchilla_Rounded")
    assert isinstance(law, ScalingLaw) and law.alpha == 0.34
    assert scaling_law(law) is law


def test_unknown_law_suggests_the_close_name() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown scaling law 'chinchila'; did you mean "
                       r"'chinchilla'"):
        scaling_law("chinchila")


@pytest.mark.parametrize(
    ("n_params", "tokens", "message"),
    [
        (-1.0, 1e9, r"n_params must be positive and finite; got n_params=-1\.0; pass a parameter"),
        (1e9, 0.0, r"tokens must be positive and finite; got tokens=0\.0"),
        (1e9, float("nan"), r"tokens must be positive and finite; got tokens=nan"),
        ([1e8, -5.0], 1e9, r"n_params=-5\.0 at index 1"),
        ("big", 1e9, r"n_params must be a number or an array of numbers; got n_params='big'"),
    ],
)
def test_bad_inputs_name_the_argument(n_params: object, tokens: object, message: str) -> None:
    with pytest.raises(ScaleplanError, match=message):
        scaling_law().loss(n_params, tokens)  # type: ignore[call-overload]


def test_bad_flops_are_rejected() -> None:
    with pytest.raises(ScaleplanError, match=r"flops must be positive and finite; got flops=-1"):
        scaling_law().compute_optimal(-1e20)


# -- token budgets: the seed case ---------------------------------------------------------------


def test_seed_case_twenty_tokens_per_parameter() -> None:
    # seed-case.md: 20 tokens per parameter for the 40.56M model = 8.112e8 (~8.1e8)
    assert chinchilla_tokens(40.56e6) == 811_200_000
    # Hoffmann Table 3: 1B parameters -> 20.2B tokens (the rule of thumb rounds to 20)
    assert chinchilla_tokens(1e9) == 20_000_000_000


def test_seed_case_tokens_seen_and_overtraining() -> None:
    # seed-case.md: 14,500 steps x 524,288 tokens = 7.60e9 tokens, ~10x the 8.1e8 budget
    seen = tokens_seen(14_500, 524_288)
    assert seen == 7_602_176_000
    assert overtraining_ratio(40.56e6, seen) == pytest.approx(7_602_176_000 / 811_200_000)


def test_chinchilla_tokens_by_law_matches_the_laws_optimum() -> None:
    opt = scaling_law("chinchilla").compute_optimal(GOPHER_FLOPS)
    assert chinchilla_tokens(opt.n_params, method="chinchilla") == pytest.approx(
        opt.tokens, rel=1e-6
    )


def test_chinchilla_tokens_arrays_and_bad_method() -> None:
    out = chinchilla_tokens(np.array([1e8, 1e9]))
    assert isinstance(out, np.ndarray) and out.tolist() == [2e9, 2e10]
    with pytest.raises(UnknownNameError, match=r"token-budget method 'rule-of-thumbs'; did you "
                       r"mean 'rule-of-thumb'"):
        chinchilla_tokens(1e9, method="rule-of-thumbs")


def test_training_compute_is_six_n_d() -> None:
    # Chinchilla: 70B params x 1.4T tokens x 6 = 5.88e23 FLOPs
    assert training_compute(70e9, 1.4e12) == pytest.approx(5.88e23, rel=1e-12)
    assert training_compute([1e9, 2e9], 1e10).tolist() == [6e19, 1.2e20]


@pytest.mark.parametrize(
    ("steps", "tokens_per_step", "message"),
    [(-1, 10, r"steps must be a non-negative int; got steps=-1"),
     (10, 1.5, r"tokens_per_step must be a non-negative int; got tokens_per_step=1\.5")],
)
def test_tokens_seen_rejects_bad_counts(
    steps: object, tokens_per_step: object, message: str
) -> None:
    with pytest.raises(ScaleplanError, match=message):
        tokens_seen(steps, tokens_per_step)  # type: ignore[arg-type]
