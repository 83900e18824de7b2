"""fit_scaling_law (scaleplan.scaling.fit): recovery of known laws and Epoch AI's replication."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.errors import ScaleplanError
from scaleplan.scaling.fit import fit_scaling_law
from scaleplan.scaling.laws import ScalingLaw, scaling_law

FIG4 = Path(__file__).parent / "data" / "chinchilla_fig4_points.csv"

# Besiroglu, Erdil, Barnett, You 2024, "Chinchilla Scaling: A replication attempt"
# (arXiv:2404.10102), Table 1: their fit of Hoffmann's Fig. 4 data and its bootstrap standard
# errors: E 1.8172 (0.03), A 482.01 (124.58), B 2085.43 (1293.23), alpha 0.3478 (0.02),
# beta 0.3658 (0.02).
EPOCH_FIT = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
EPOCH_SE = {"E": 0.03, "A": 124.58, "B": 1293.23, "alpha": 0.02, "beta": 0.02}


def _fig4_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hoffmann Fig. 4 runs with D = C / (6 N), less the 5 highest-loss points (as Epoch did)."""
    with FIG4.open() as f:
        rows = list(csv.DictReader(f))
    n = np.array([float(r["Model Size"]) for r in rows])
    flops = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss)[:-5]
    return n[keep], flops[keep] / (6 * n[keep]), loss[keep]


def _grid_runs(law: ScalingLaw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d = np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e8, 1e12, 7))
    return n.ravel(), d.ravel(), law.loss(n.ravel(), d.ravel())


def test_fit_on_chinchilla_fig4_lands_within_epochs_standard_errors() -> None:
    n, d, loss = _fig4_points()
    assert len(loss) == 240
    law = fit_scaling_law(n, d, loss)  # its speed is measured in benchmarks/, not here
    for name, published in EPOCH_FIT.items():
        assert abs(getattr(law, name) - published) < EPOCH_SE[name], name
    # and the allocation follows: N_opt ~ C^0.51 as Epoch reports (a = 0.5126, SE 0.02)
    assert law.allocation_exponents[0] == pytest.approx(0.5126, abs=0.02)
    assert law.fit is not None and law.fit.n_points == 240 and law.fit.huber_delta == 1e-3


def test_bfgs_and_l_bfgs_land_on_the_same_fig4_fit() -> None:
    # Hoffmann and Epoch used L-BFGS; with 5 parameters the default BFGS takes the same steps.
    n, d, loss = _fig4_points()
    default, lbfgs = fit_scaling_law(n, d, loss), fit_scaling_law(n, d, loss, method="L-BFGS-B")
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(default, name) == pytest.approx(getattr(lbfgs, name), rel=1e-6), name


def test_bootstrap_on_fig4_gives_standard_errors_of_epochs_size_with_progress() -> None:
    n, d, loss = _fig4_points()
    calls: list[tuple[int, int]] = []
    law = fit_scaling_law(n, d, loss, bootstrap=20, seed=1,
                          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 20) for i in range(1, 21)]
    assert law.fit is not None and law.fit.standard_errors is not None
    assert law.fit.intervals is not None and law.fit.confidence == 0.95
    for name, published in EPOCH_SE.items():
        # 20 resamples: within a factor 2.5 of Epoch's 4,000-resample figures
        assert published / 2.5 < law.fit.standard_errors[name] < published * 2.5, name
        low, high = law.fit.intervals[name]
        assert low < getattr(law, name) < high


# derandomize: the same examples every run, so CI never meets a new corner of the box (the
# constants are weakly identifiable at some corners; what must hold everywhere is below).
@settings(max_examples=5, deadline=None, derandomize=True)
@given(
    irreducible=st.floats(1.5, 2.2), a=st.floats(200, 1000), b=st.floats(300, 3000),
    alpha=st.floats(0.25, 0.45), beta=st.floats(0.25, 0.45), seed=st.integers(0, 2**16),
)
def test_fit_recovers_a_known_law_from_noisy_runs(
    irreducible: float, a: float, b: float, alpha: float, beta: float, seed: int
) -> None:
    truth = ScalingLaw(name="truth", paper="-", equation="-", n_counts="total",
                       E=irreducible, A=a, B=b, alpha=alpha, beta=beta)
    n, d, loss = _grid_runs(truth)
    noisy = loss * np.exp(np.random.default_rng(seed).normal(0, 0.002, loss.shape))
    law = fit_scaling_law(n, d, noisy)
    # the noise-free losses, to within 3 sigma of the 0.2% noise (120 random laws: max 0.39%)
    assert np.max(np.abs(law.loss(n, d) / loss - 1)) < 0.006
    # the exponents and the floor (120 random laws: max error 0.023, 0.015 and 0.059)
    assert law.alpha == pytest.approx(alpha, abs=0.06)
    assert law.beta == pytest.approx(beta, abs=0.06)
    assert abs(law.E - irreducible) < 0.12
    # what planning needs: the compute-optimal size at 1e22 FLOPs, within 25% (max seen 7.9%)
    assert law.optimal_n_params(1e22) == pytest.approx(truth.optimal_n_params(1e22), rel=0.25)


def test_exact_data_recovers_the_constants_tightly() -> None:
    truth = scaling_law("epoch2024")
    law = fit_scaling_law(*_grid_runs(truth))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(law, name) == pytest.approx(getattr(truth, name), rel=1e-4), name


def test_fitted_law_works_like_a_builtin_and_round_trips() -> None:
    law = fit_scaling_law(*_grid_runs(scaling_law("chinchilla")), name="mine",
                          n_counts="non_embedding")
    assert law.name == "mine" and law.n_counts == "non_embedding"
    assert law.compute_optimal(5.76e23).n_params == pytest.approx(4.04e10, rel=0.01)
    assert ScalingLaw.model_validate_json(law.model_dump_json()) == law


def test_fit_accepts_a_table_of_columns() -> None:
    n, d, loss = _grid_runs(scaling_law("chinchilla"))
    table = {"N": n.tolist(), "D": d.tolist(), "L": loss.tolist()}
    law = fit_scaling_law(table, columns=("N", "D", "L"))
    assert law.alpha == pytest.approx(0.33917084, rel=1e-3)
    with pytest.raises(ScaleplanError, match=r"the table has no column 'n_params'"):
        fit_scaling_law(table)


def test_fit_accepts_a_pandas_dataframe() -> None:
    pd = pytest.importorskip("pandas", reason="pandas is optional")
    n, d, loss = _grid_runs(scaling_law("chinchilla"))
    frame = pd.DataFrame({"n_params": n, "tokens": d, "loss": loss})
    assert fit_scaling_law(frame).beta == pytest.approx(0.2849083, rel=1e-3)


@pytest.mark.parametrize(
    ("n_params", "tokens", "losses", "message"),
    [
        ([1e8] * 4, [1e9] * 4, [3.0] * 4, r"need at least 5 runs .* got 4"),
        ([1e8] * 6, [1e9] * 5, [3.0] * 6, r"lengths differ: \{'n_params': 6, 'tokens': 5, "),
        ([1e8] * 6, [1e9] * 6, [3.0] * 5 + [float("nan")],
         r"losses must be positive and finite; got losses=nan at index 5"),
        ([1e8] * 5 + [0.0], [1e9] * 6, [3.0] * 6, r"n_params=0\.0 at index 5"),
        ([1e8] * 6, [1e9] * 5 + [-1.0], [3.0] * 6, r"tokens=-1\.0 at index 5"),
        ([[1e8] * 6], [1e9] * 6, [3.0] * 6, r"n_params must be a 1-D sequence .* shape \(1, 6\)"),
    ],
)
def test_bad_runs_get_errors_naming_the_argument(
    n_params: object, tokens: object, losses: object, message: str
) -> None:
    with pytest.raises(ScaleplanError, match=message):
        fit_scaling_law(n_params, tokens, losses)  # type: ignore[arg-type]


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(ScaleplanError, match=r"method must be 'BFGS' or 'L-BFGS-B'; got "
                       r"method='adam'"):
        fit_scaling_law([1e8] * 6, [1e9] * 6, [3.0] * 6, method="adam")  # type: ignore[arg-type]


def test_half_the_arguments_is_an_error() -> None:
    with pytest.raises(ScaleplanError, match=r"pass n_params, tokens and losses as three"):
        fit_scaling_law([1e8] * 6, [1e9] * 6)


def test_bootstrap_spread_of_huge_constants_does_not_overflow() -> None:
    # Found by hypothesis (test_fuzz_entry_points): runs at N = 1e300 make the resampled fits'
    # constants so large that squaring their deviations overflowed float64 inside np.std, and the
    # RuntimeWarning escaped instead of the fit's own verdict on these runs.
    N = [1e300, 1e6, 1e6, 1e9, 1e300]
    D = [1e9, 1e8, 1e8, 1e9, 1e8]
    L = [2.5, 3.5, 2.5, 2.0, 2.5]
    with pytest.raises(ScaleplanError, match="the loss does not fall with both N and D"):
        fit_scaling_law(N, D, L, n_starts=2, bootstrap=2)
