"""The web-text laws fitted on Porian et al. 2024's IsoFLOP data (issue 22).

The independent targets are the authors' own results, not scaleplan's outputs: the compute-optimal
exponent a (N_opt ~ C^a) and its 95 % bootstrap interval for each experiment, from the paper's
results table (Porian, Wortsman, Jitsev, Schmidt, Carmon 2024, "Resolving Discrepancies in
Compute-Optimal Scaling of Language Models", arXiv:2406.19146: a = 0.497 (0.49, 0.50) on
RefinedWeb and 0.518 (0.49, 0.54) on OpenWebText2 for "Optimizer tuning (no decay)"), stored
unrounded in porian2024_reference_fits.csv, and their per-budget optima
(porian2024_compute_optimal.csv).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from scaleplan.errors import UnknownNameError
from scaleplan.scaling.laws import ScalingLaw, scaling_law, scaling_laws
from scaleplan.scaling.porian2024 import (
    DATA_DIR,
    DATASETS,
    EXPERIMENT,
    MIN_TOKENS_PER_PARAM,
    exponent_interval,
    fit_porian2024,
    isoflop_exponent,
    isoflop_optima,
    isoflop_points,
    reference_exponent,
)

# the paper's headline numbers as printed (results table), to check the CSV read is the right row
PRINTED = {"refinedweb": (0.497, 0.49, 0.50), "owt2": (0.518, 0.49, 0.54)}


def test_the_data_ships_with_its_readme_and_license() -> None:
    for name in ("README.md", "LICENSE.source-repo.txt", "SHIPPED.md",
                 "porian2024_reference_fits.csv", "porian2024_compute_optimal.csv",
                 *(filename for _, filename in DATASETS.values())):
        assert (DATA_DIR / name).is_file(), name
    assert "Permission is hereby granted" in (DATA_DIR / "LICENSE.source-repo.txt").read_text()


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_reference_exponent_is_the_printed_one(dataset: str) -> None:
    ref = reference_exponent(dataset)
    a, low, high = PRINTED[dataset]
    assert round(ref.a, 3) == a and round(ref.low, 2) == low and round(ref.high, 2) == high


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_isoflop_parabolas_reproduce_the_papers_exponent(dataset: str) -> None:
    """(i) The paper's way: per budget the IsoFLOP minimum (here a parabola in log N, Hoffmann
    2022's Approach 2; the paper used Akima interpolation), then a power law N_opt ~ C^a. It
    lands inside the paper's 95 % interval on both datasets."""
    ref = reference_exponent(dataset)
    assert ref.low < isoflop_exponent(dataset) < ref.high


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_isoflop_optima_match_the_papers_per_budget(dataset: str) -> None:
    """Each budget's parabola minimum lies within two of the paper's bootstrap standard
    deviations (of log N*) from its Akima minimum, at all 12 budgets."""
    name, _ = DATASETS[dataset]
    with (DATA_DIR / "porian2024_compute_optimal.csv").open() as handle:
        paper = {float(r["flop_budget"]): (float(r["n_opt"]), float(r["n_opt_std_log"]))
                 for r in csv.DictReader(handle) if r["dataset"] == name
                 and r["experiment"] == EXPERIMENT and r["param_count"] == "standard"}
    budgets, optima = isoflop_optima(dataset)
    assert len(budgets) == len(paper) == 12
    for budget, n_opt in zip(budgets, optima, strict=True):
        n_paper, std_log = paper[budget]
        assert abs(np.log(n_opt / n_paper)) < 2 * std_log, budget


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_the_filter_drops_exactly_the_points_inside_the_warmup(dataset: str) -> None:
    every = isoflop_points(dataset)
    kept = isoflop_points(dataset, min_tokens_per_param=MIN_TOKENS_PER_PARAM)
    dropped = every.tokens < every.n_params
    assert len(kept.loss) == len(every.loss) - dropped.sum()
    assert (kept.tokens >= kept.n_params).all()
    assert dropped.sum() == 24  # the same 24 (budget, size) pairs on both datasets
    assert set(np.unique(every.flops[dropped])) == {1.25e16 * 2**k for k in range(9)}
    assert every.n_params[dropped].min() > 5e7  # only models of 57M parameters and more


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_shipped_law_is_the_refit(dataset: str) -> None:
    """Refitting the shipped data (no bootstrap, fast) gives the shipped constants, each inside
    its own bootstrap interval; the law records how it was fitted."""
    shipped = scaling_law(f"porian2024-{dataset}")
    assert isinstance(shipped, ScalingLaw)
    assert shipped.fit is not None and shipped.fit.intervals is not None
    refit = fit_porian2024(dataset, bootstrap=0)
    assert shipped.fit.n_points == refit.fit.n_points == len(
        isoflop_points(dataset, min_tokens_per_param=MIN_TOKENS_PER_PARAM).loss)
    assert shipped.fit.n_bootstrap == 1000 and shipped.fit.confidence == 0.95
    for key, (low, high) in shipped.fit.intervals.items():
        value = getattr(refit, key)
        assert low < value < high, key
        assert value == pytest.approx(getattr(shipped, key), rel=1e-4), key
    assert "2406.19146" in shipped.paper and "GPT-NeoX" in shipped.paper


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_the_laws_exponent_is_near_but_outside_the_papers_interval(dataset: str) -> None:
    """(ii) From the fitted law, a = beta / (alpha + beta). It is within 0.04 of the paper's a
    but above its 95 % interval on both datasets (0.515 vs 0.491-0.505 on RefinedWeb, 0.555 vs
    0.493-0.541 on OpenWebText2): the parametric form does not recover the exponent as tightly
    as the IsoFLOP minima do (docs/scaling.md, "Laws for web text"). If a refit ever lands
    inside, this test should be turned around, not loosened."""
    a, _ = scaling_law(f"porian2024-{dataset}").allocation_exponents
    ref = reference_exponent(dataset)
    assert abs(a - ref.a) < 0.04
    assert a > ref.high


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_the_papers_exponent_is_inside_the_laws_bootstrap_interval(dataset: str) -> None:
    """The law's a is loosely determined: over refits of resampled points it spans about
    0.39-0.65 on RefinedWeb and 0.42-0.73 on OpenWebText2 (300 resamples), which holds the
    paper's a. A rough 40-resample interval here."""
    low, high = exponent_interval(dataset, resamples=40)
    assert low < reference_exponent(dataset).a < high
    assert high - low > 5 * (reference_exponent(dataset).high - reference_exponent(dataset).low)


def test_laws_are_listed_and_plan_a_budget() -> None:
    assert {"porian2024-refinedweb", "porian2024-owt2"} <= set(scaling_laws())
    rw = scaling_law("porian2024-refinedweb")
    opt = rw.compute_optimal(2.56e19)  # the largest budget of the paper's grid
    assert 2e8 < opt.n_params < 1e9
    assert 2.9 < opt.loss < 3.3  # the IsoFLOP minimum there is 3.10 nats


def test_unknown_dataset_and_experiment() -> None:
    with pytest.raises(UnknownNameError, match="refinedweb"):
        isoflop_points("refinedweb2")
    with pytest.raises(UnknownNameError):
        isoflop_points("owt2", experiment="nope")
