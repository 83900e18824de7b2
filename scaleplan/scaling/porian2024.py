"""The web-text laws ``porian2024-refinedweb`` and ``porian2024-owt2``: how they are fitted, and
the compute-optimal exponent read from the same data the paper's way.

The data are Porian et al. 2024's IsoFLOP points (arXiv:2406.19146, "Resolving Discrepancies in
Compute-Optimal Scaling of Language Models"), shipped in ``scaleplan/data/porian2024/`` with
their README (provenance, columns) and the source repository's license. Each point is the
validation loss (nats per token, GPT-NeoX tokenizer, vocabulary 50432, sequence 2048) of one
model size at one FLOP budget ``C = 6 N D``, N counted as the paper counts it (non-embedding
weights plus the 50432-wide output layer).

The laws use the paper's headline experiment, "Optimizer tuning (no decay)": tuned
hyperparameters, short warmup, constant learning rate (its a = 0.497 on RefinedWeb, 0.518 on
OpenWebText2). Points with fewer training tokens than parameters (``D < N``) are left out of
the fit: the paper's short warmup lasts about N tokens, so those losses were read while the
learning rate was still ramping up (`MIN_TOKENS_PER_PARAM`).

``python benchmarks/fit_porian2024.py`` refits both laws with these functions and prints the
constants that ``scaleplan.scaling.laws`` stores.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from scaleplan.errors import UnknownNameError
from scaleplan.scaling.base import FloatArray
from scaleplan.scaling.fit import fit_scaling_law
from scaleplan.scaling.laws import ScalingLaw

__all__ = [
    "DATASETS",
    "EXPERIMENT",
    "MIN_TOKENS_PER_PARAM",
    "PARABOLA_POINTS",
    "IsoFlopPoints",
    "ReferenceExponent",
    "exponent_interval",
    "fit_porian2024",
    "isoflop_exponent",
    "isoflop_optima",
    "isoflop_points",
    "reference_exponent",
]

DATA_DIR = Path(__file__).parent.parent / "data" / "porian2024"
DATASETS: dict[str, tuple[str, str]] = {
    # law suffix: (the CSVs' dataset name, the IsoFLOP file)
    "refinedweb": ("RefinedWeb", "porian2024_rw_isoflop_val.csv"),
    "owt2": ("OpenWebText2", "porian2024_owt2_isoflop_val.csv"),
}
EXPERIMENT = "Optimizer tuning (no decay)"
"""The paper's final setting (tuned AdamW, short warmup, constant learning rate): its results
table reports a = 0.497 (0.49, 0.50) on RefinedWeb and 0.518 (0.49, 0.54) on OpenWebText2."""
MIN_TOKENS_PER_PARAM = 1.0
"""Fitted points need ``D >= N``: earlier, the short warmup (about N tokens) was still running."""
PARABOLA_POINTS = 5
"""IsoFLOP points per budget for the parabola: the lowest-loss size and two on each side."""


class IsoFlopPoints(NamedTuple):
    """One experiment's IsoFLOP points, one entry per (budget, model size)."""

    flops: FloatArray
    n_params: FloatArray
    tokens: FloatArray
    loss: FloatArray

    def select(self, keep: NDArray[np.bool_]) -> IsoFlopPoints:
        """The points where the boolean mask ``keep`` is true."""
        return IsoFlopPoints(*(column[keep] for column in self))


class ReferenceExponent(NamedTuple):
    """The authors' stored a (N_opt ~ C^a) with the 2.5 % and 97.5 % bootstrap quantiles."""

    a: float
    low: float
    high: float


def _dataset(dataset: str) -> tuple[str, str]:
    key = dataset.strip().lower()
    if key not in DATASETS:
        raise UnknownNameError("Porian et al. 2024 dataset", dataset, DATASETS)
    return DATASETS[key]


def _rows(filename: str) -> list[dict[str, str]]:
    with (DATA_DIR / filename).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def isoflop_points(dataset: str, *, experiment: str = EXPERIMENT,
                   min_tokens_per_param: float = 0.0) -> IsoFlopPoints:
    """The IsoFLOP points of ``experiment`` on ``dataset`` ("refinedweb" or "owt2") with at least
    ``min_tokens_per_param`` tokens per parameter (0: all of them).

    >>> points = isoflop_points("refinedweb")
    >>> len(points.loss), len(isoflop_points("refinedweb", min_tokens_per_param=1).loss)
    (121, 97)
    """
    name, filename = _dataset(dataset)
    rows = [r for r in _rows(filename) if r["dataset"] == name and r["experiment"] == experiment]
    if not rows:
        raise UnknownNameError(f"experiment on {name}", experiment,
                               sorted({r["experiment"] for r in _rows(filename)}))
    columns = ("flop_budget", "params", "tokens", "val_loss")
    points = IsoFlopPoints(*(np.array([float(r[c]) for r in rows]) for c in columns))
    return points.select(points.tokens >= min_tokens_per_param * points.n_params)


def fit_porian2024(dataset: str, *, bootstrap: int = 200, seed: int = 0,
                   min_tokens_per_param: float = MIN_TOKENS_PER_PARAM) -> ScalingLaw:
    """Fit ``L = E + A/N^alpha + B/D^beta`` to the headline experiment on ``dataset`` with
    `fit_scaling_law` (Huber on log loss, ``bootstrap`` resamples for the intervals)."""
    points = isoflop_points(dataset, min_tokens_per_param=min_tokens_per_param)
    return fit_scaling_law(points.n_params, points.tokens, points.loss, bootstrap=bootstrap,
                           seed=seed, name=f"porian2024-{dataset.strip().lower()}")


def exponent_interval(dataset: str, *, resamples: int = 300, confidence: float = 0.95,
                      seed: int = 1) -> tuple[float, float]:
    """Percentile interval of the fitted law's a = beta / (alpha + beta) over refits of
    ``resamples`` resamples (with replacement) of the fitted points (4 optimiser starts each).
    `fit_scaling_law`'s bootstrap gives intervals for the five constants, not for a."""
    points = isoflop_points(dataset, min_tokens_per_param=MIN_TOKENS_PER_PARAM)
    rng = np.random.default_rng(seed)
    exponents = []
    for _ in range(resamples):
        pick = rng.integers(0, len(points.loss), len(points.loss))
        law = fit_scaling_law(points.n_params[pick], points.tokens[pick], points.loss[pick],
                              n_starts=4)
        exponents.append(law.allocation_exponents[0])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(exponents, [tail, 100 - tail])
    return float(low), float(high)


def _parabola_minimum(log_n: FloatArray, log_loss: FloatArray, window: int) -> float | None:
    """log N at the vertex of a parabola through the ``window`` points around the lowest loss;
    None when the vertex is no minimum or falls outside those points."""
    order = np.argsort(log_n)
    log_n, log_loss = log_n[order], log_loss[order]
    if len(log_n) < 3:
        return None
    lowest = int(np.argmin(log_loss))
    start = max(0, min(lowest - window // 2, len(log_n) - window))
    x, y = log_n[start:start + window], log_loss[start:start + window]
    curvature, slope, _ = np.polyfit(x, y, 2)
    if curvature <= 0:
        return None
    vertex = float(-slope / (2 * curvature))
    return vertex if x.min() < vertex < x.max() else None


def isoflop_optima(dataset: str, *, window: int = PARABOLA_POINTS) -> tuple[FloatArray, FloatArray]:
    """Per budget C, the loss-minimising N (Hoffmann et al. 2022's Approach 2): a parabola in
    log N through ``window`` points around each IsoFLOP minimum. Returns ``(C, N_opt)`` for the
    budgets with an interior minimum. All points are used, as in the paper (no filter)."""
    points = isoflop_points(dataset)
    budgets, optima = [], []
    for budget in np.unique(points.flops):
        at = points.flops == budget
        vertex = _parabola_minimum(np.log(points.n_params[at]), np.log(points.loss[at]), window)
        if vertex is not None:
            budgets.append(budget)
            optima.append(np.exp(vertex))
    return np.array(budgets), np.array(optima)


def isoflop_exponent(dataset: str, *, window: int = PARABOLA_POINTS) -> float:
    """a in ``N_opt ~ C^a``: the least-squares slope of log N_opt on log C over `isoflop_optima`.

    >>> round(isoflop_exponent("refinedweb"), 3)  # the paper: 0.497 (0.491, 0.505)
    0.501
    """
    budgets, optima = isoflop_optima(dataset, window=window)
    slope, _ = np.polyfit(np.log(budgets), np.log(optima), 1)
    return float(slope)


def reference_exponent(dataset: str, *, experiment: str = EXPERIMENT) -> ReferenceExponent:
    """The authors' stored a and its 95 % bootstrap interval for ``experiment`` on ``dataset``
    (``porian2024_reference_fits.csv``, standard N convention, validation loss).

    >>> reference_exponent("refinedweb").a
    0.49689507817885203
    """
    name, _ = _dataset(dataset)
    for row in _rows("porian2024_reference_fits.csv"):
        if (row["dataset"], row["experiment"], row["param_count"]) == (name, experiment,
                                                                        "standard"):
            return ReferenceExponent(float(row["a_bs_median_weighted"]),
                                     float(row["a_CI95_lo"]), float(row["a_CI95_hi"]))
    raise UnknownNameError(f"reference fit on {name}", experiment, [EXPERIMENT])
