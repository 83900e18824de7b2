"""Fit your own ``L(N, D) = E + A / N^alpha + B / D^beta`` to training runs: `fit_scaling_law`.

The method is Hoffmann et al. 2022, Appendix D.2, as corrected by Besiroglu et al. 2024
(arXiv:2404.10102): minimise the Huber loss (delta = 1e-3) between the log of the predicted and
the observed loss, **summed** over runs (averaging shrinks the objective ~N-fold and stops
L-BFGS early, which is how the original fit went wrong), with the prediction written as a
log-sum-exp so that every parameter is unconstrained:

    log L(N, D) = LSE(a - alpha log N, b - beta log D, e),   A = e^a, B = e^b, E = e^e.

A quasi-Newton optimiser (scipy, imported inside the function) runs from the best-scoring points
of a grid of starts and the best fit is kept. Bootstrap resampling of the runs gives standard
errors and intervals.

Optimiser: Hoffmann and Epoch used L-BFGS (``method="L-BFGS-B"`` here). The default is scipy's
BFGS: with five parameters, L-BFGS's limited memory (10 pairs) holds the whole problem, so the two
take the same quasi-Newton steps and land on the same fit (to ~1e-8 on Hoffmann's Fig. 4 data),
but scipy's L-BFGS-B calls BLAS on every iteration, which stalls when OpenBLAS threads compete
for busy cores (0.25 s became 4-10 s on a loaded two-core machine); BFGS stays at ~0.3 s.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from scaleplan.checks import one_of, whole
from scaleplan.errors import ScaleplanError, shown
from scaleplan.scaling.base import FitReport, FloatArray, NCounts, positive_values, setting
from scaleplan.scaling.laws import ScalingLaw

__all__ = ["HOFFMANN_START_GRID", "MAX_BOOTSTRAP", "fit_scaling_law"]

N_FREE_PARAMETERS = 5  # E, A, B, alpha, beta
PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")

HOFFMANN_START_GRID: dict[str, tuple[float, ...]] = {
    # Hoffmann et al. 2022, App. D.2: the grid of initialisations for (e, a, b, alpha, beta)
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
"""Starting points (4,500 combinations). All are scored at once; the optimiser runs from the best
few (``n_starts``)."""
_GRID = tuple(itertools.product(*HOFFMANN_START_GRID.values()))

#: The most bootstrap resamples `fit_scaling_law` makes: each is a refit (~0.1 s), and a few
#: hundred already give steady standard errors; 10**12 would have allocated 36 TiB (issue 20).
MAX_BOOTSTRAP = 10_000


def _objective(
    theta: FloatArray, log_n: FloatArray, log_d: FloatArray, log_loss: FloatArray, delta: float
) -> tuple[float, FloatArray]:
    """Summed Huber loss of log predicted vs log observed loss, and its gradient in theta.

    theta = (e, a, b, alpha, beta); the prediction is LSE(a - alpha log N, b - beta log D, e).
    """
    e, a, b, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_loss
    weights /= total  # d(log prediction) / d(term), the softmax of the three terms
    inside = np.abs(residual) <= delta
    huber = np.where(inside, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    slope = np.clip(residual, -delta, delta)  # d huber / d residual
    grad = np.array([
        slope @ weights[2],
        slope @ weights[0],
        slope @ weights[1],
        -(slope * weights[0]) @ log_n,
        -(slope * weights[1]) @ log_d,
    ])
    return float(huber.sum()), grad


def _grid_objectives(
    starts: FloatArray, log_n: FloatArray, log_d: FloatArray, log_loss: FloatArray, delta: float
) -> FloatArray:
    """`_objective`'s value at every start at once (starts: k x 5), without gradients."""
    e, a, b, alpha, beta = (starts[:, i : i + 1] for i in range(5))
    constant = np.broadcast_to(e, (len(e), len(log_n)))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, constant])
    residual = np.logaddexp.reduce(terms, axis=0) - log_loss
    huber = np.where(
        np.abs(residual) <= delta, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)
    )
    return np.asarray(huber.sum(axis=1), dtype=np.float64)


# log of the largest float64 (numpy.finfo(float64).max is 1.797e308).
MAX_LOG_FLOAT = 709.78
Method = Literal["BFGS", "L-BFGS-B"]
_OPTIONS: dict[str, dict[str, float]] = {  # tight: stopping early is what misled Hoffmann's fit
    "BFGS": {"maxiter": 10_000, "gtol": 1e-12},
    "L-BFGS-B": {"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12},
}


def _best_fit(
    starts: FloatArray, log_n: FloatArray, log_d: FloatArray, log_loss: FloatArray, delta: float,
    method: Method,
) -> tuple[FloatArray, float]:
    """Run the optimiser from every row of ``starts`` and keep the lowest objective."""
    from scipy.optimize import minimize

    best_theta, best_value = starts[0], np.inf
    for start in starts:
        result = minimize(
            _objective, start, args=(log_n, log_d, log_loss, delta), jac=True, method=method,
            options=_OPTIONS[method],
        )
        if result.fun < best_value:
            best_theta, best_value = np.asarray(result.x, dtype=np.float64), float(result.fun)
    return best_theta, best_value


def _columns(table: Any, columns: Sequence[str]) -> tuple[Any, Any, Any]:
    """Three columns of a pandas DataFrame (or any mapping of column name to values)."""
    if len(columns) != 3:
        raise ScaleplanError(
            f"columns must name 3 columns (n_params, tokens, loss); got columns={shown(columns)}"
        )
    missing = [c for c in columns if c not in table]
    if missing:
        known = list(table.columns) if hasattr(table, "columns") else list(table)
        raise ScaleplanError(
            f"the table has no column {shown(missing[0])} (columns are {known}); pass "
            f"columns=(n_params_column, tokens_column, loss_column)"
        )
    return table[columns[0]], table[columns[1]], table[columns[2]]


def _points(n_params: Any, tokens: Any, losses: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Validated 1-D float arrays of equal length, at least one point per free parameter."""
    given = {"n_params": n_params, "tokens": tokens, "losses": losses}
    arrays = {name: positive_values(name, value) for name, value in given.items()}
    for name, arr in arrays.items():
        if arr.ndim != 1:
            raise ScaleplanError(
                f"{name} must be a 1-D sequence of numbers, one per run; got shape {arr.shape}"
            )
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ScaleplanError(
            f"n_params, tokens and losses must have one entry per run, but their lengths differ: "
            f"{lengths}"
        )
    if lengths["losses"] < N_FREE_PARAMETERS:
        raise ScaleplanError(
            f"need at least {N_FREE_PARAMETERS} runs to fit the 5 constants E, A, B, alpha, "
            f"beta; got {lengths['losses']}; add runs at more model sizes and token counts"
        )
    return arrays["n_params"], arrays["tokens"], arrays["losses"]


def _exp(log_value: float) -> float:
    """exp of a fitted log-constant; past float64's range the runs are no scaling curve."""
    if log_value > MAX_LOG_FLOAT:  # found by fuzzing with losses of 1e300 (issue 13)
        raise ScaleplanError(
            f"the fit puts a constant at exp({log_value:.4g}), beyond a 64-bit float; the "
            "losses are not a scaling curve (they should be nats per token, such as 3.2)")
    return float(np.exp(log_value))


def _law(theta: FloatArray, name: str, n_counts: NCounts, report: FitReport) -> ScalingLaw:
    e, a, b, alpha, beta = (float(x) for x in theta)
    if alpha <= 0 or beta <= 0:
        raise ScaleplanError(
            f"the best fit has alpha={alpha:.3g}, beta={beta:.3g}; the loss does not fall with "
            f"both N and D in these runs; add runs spanning more model sizes and token counts"
        )
    return ScalingLaw(
        name=name,
        paper=f"fitted by scaleplan to {report.n_points} runs (method of Hoffmann et al. 2022 "
        "App. D.2 and Besiroglu et al. 2024)",
        equation="L = E + A/N^alpha + B/D^beta, Huber on log loss with LSE parametrisation",
        n_counts=n_counts, E=_exp(e), A=_exp(a), B=_exp(b), alpha=alpha, beta=beta,
        fit=report,
    )


def _options(*, huber_delta: object, n_counts: object, name: object, n_starts: object,
             method: object, bootstrap: object, confidence: object, seed: object,
             progress: object) -> dict[str, Any]:
    """The fit's settings as exact Python numbers, or a `ScaleplanError` naming the bad one
    (checked before any work: a wrong type used to fail deep inside numpy, issue 20)."""
    if not isinstance(method, str) or method not in _OPTIONS:
        raise ScaleplanError(f"method must be 'BFGS' or 'L-BFGS-B'; got method={shown(method)}")
    one_of("n_counts", n_counts, get_args(NCounts))  # type: ignore[arg-type]
    if not isinstance(name, str):
        raise ScaleplanError(f"name={shown(name)} must be a str, the fitted law's name")
    if progress is not None and not callable(progress):
        raise ScaleplanError(f"progress={shown(progress)} must be a function progress(done, "
                             "total), or None")
    confidence = setting("confidence", confidence,
                      message="must be a number in (0, 1), e.g. confidence=0.95")
    if not confidence < 1:
        raise ScaleplanError(f"confidence must lie in (0, 1); got confidence={confidence!r}")
    return {
        "huber_delta": setting("huber_delta", huber_delta,
                            message="must be a positive finite number, e.g. huber_delta=1e-3"),
        "n_starts": whole("n_starts", n_starts, maximum=len(_GRID), example="n_starts=16",
                          message=f"must be a whole number of optimiser starts from 1 to "
                          f"{len(_GRID):,} (the grid's size), e.g. n_starts=16"),
        "bootstrap": whole("bootstrap", bootstrap, minimum=0, maximum=MAX_BOOTSTRAP,
                           message=f"must be a whole number of resamples from 0 to "
                           f"{MAX_BOOTSTRAP:,} (a few hundred give steady standard errors)"),
        "confidence": confidence,
        "seed": whole("seed", seed, minimum=0, message="must be a whole number >= 0, e.g. seed=0"),
    }


def fit_scaling_law(
    n_params: Any,
    tokens: ArrayLike | None = None,
    losses: ArrayLike | None = None,
    *,
    huber_delta: float = 1e-3,
    n_counts: NCounts = "total",
    name: str = "fit",
    columns: Sequence[str] = ("n_params", "tokens", "loss"),
    n_starts: int = 16,
    method: Method = "BFGS",
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ScalingLaw:
    """Fit ``L(N, D) = E + A / N^alpha + B / D^beta`` to your runs (Hoffmann 2022, App. D.2).

    Args:
        n_params: Parameters of each run (arrays or sequences), or a table holding all three
            columns: a pandas DataFrame or a dict of column name to values (see ``columns``).
        tokens: Training tokens of each run (omit when passing a table).
        losses: Final loss of each run, nats per token (omit when passing a table).
        huber_delta: Huber threshold on the log-loss residual (Hoffmann: 1e-3).
        n_counts: Which parameters ``n_params`` counts: ``"total"`` or ``"non_embedding"``.
        name: Name given to the fitted law.
        columns: Column names for n_params, tokens and loss when passing a table.
        n_starts: Optimiser runs, from the best-scoring points of `HOFFMANN_START_GRID`.
        method: ``"BFGS"`` (default) or ``"L-BFGS-B"`` (Hoffmann's and Epoch's choice; the same
            fit, slower when BLAS threads compete for cores: see the module docstring).
        bootstrap: Resamples (with replacement) of the runs for standard errors; 0 for none.
        confidence: Level of the bootstrap percentile intervals.
        seed: Seed of the bootstrap's random generator.
        progress: Called as ``progress(done, total)`` after each bootstrap resample.

    Returns:
        A `ScalingLaw` usable wherever a built-in one is, with ``fit`` describing the fit.

    >>> truth = ScalingLaw(name="t", paper="-", equation="-", n_counts="total",
    ...                    E=1.8, A=480.0, B=2000.0, alpha=0.35, beta=0.37)
    >>> N, D = np.meshgrid(np.geomspace(1e7, 1e10, 6), np.geomspace(1e9, 1e12, 6))
    >>> law = fit_scaling_law(N.ravel(), D.ravel(), truth.loss(N.ravel(), D.ravel()))
    >>> round(law.E, 3), round(law.alpha, 3), round(law.beta, 3)
    (1.8, 0.35, 0.37)
    """
    if tokens is None and losses is None:
        n_params, tokens, losses = _columns(n_params, columns)
    elif tokens is None or losses is None:
        raise ScaleplanError(
            "pass n_params, tokens and losses as three sequences, or a single table (a "
            "DataFrame or dict) with columns=(n_params_column, tokens_column, loss_column)"
        )
    N, D, L = _points(n_params, tokens, losses)
    options = _options(huber_delta=huber_delta, n_counts=n_counts, name=name, n_starts=n_starts,
                       method=method, bootstrap=bootstrap, confidence=confidence, seed=seed,
                       progress=progress)
    huber_delta, n_starts, bootstrap = (options["huber_delta"], options["n_starts"],
                                        options["bootstrap"])
    confidence, seed = options["confidence"], options["seed"]

    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(L)
    grid = np.array(_GRID, dtype=np.float64)
    scores = _grid_objectives(grid, log_n, log_d, log_loss, huber_delta)
    starts = grid[np.argsort(scores, kind="stable")[:n_starts]]
    theta, objective = _best_fit(starts, log_n, log_d, log_loss, huber_delta, method)

    uncertainty = (
        _bootstrap(theta, starts, log_n, log_d, log_loss, huber_delta, method,
                   bootstrap=bootstrap, confidence=confidence, seed=seed, progress=progress)
        if bootstrap else {}
    )
    report = FitReport(n_points=len(L), huber_delta=huber_delta, objective=objective,
                       n_starts=len(starts), **uncertainty)
    return _law(theta, name, n_counts, report)


def _bootstrap(
    theta: FloatArray, starts: FloatArray, log_n: FloatArray, log_d: FloatArray,
    log_loss: FloatArray, delta: float, method: Method, *, bootstrap: int, confidence: float,
    seed: int, progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Refit on ``bootstrap`` resamples of the runs (from the full fit and the best grid start)."""
    rng = np.random.default_rng(seed)
    fits = np.empty((bootstrap, N_FREE_PARAMETERS))
    refit_starts = np.vstack([theta, starts[:1]])
    for i in range(bootstrap):
        pick = rng.integers(0, len(log_loss), len(log_loss))
        fitted, _ = _best_fit(refit_starts, log_n[pick], log_d[pick], log_loss[pick], delta,
                              method)
        e, a, b, alpha, beta = fitted
        fits[i] = (_exp(e), _exp(a), _exp(b), alpha, beta)
        if progress is not None:
            progress(i + 1, bootstrap)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(fits, [tail, 100 - tail], axis=0)
    spread = _std(fits) if bootstrap > 1 else np.zeros(N_FREE_PARAMETERS)
    return {
        "n_bootstrap": bootstrap,
        "confidence": confidence,
        "standard_errors": {k: float(s) for k, s in zip(PARAMETER_NAMES, spread, strict=True)},
        "intervals": {
            k: (float(lo), float(hi)) for k, lo, hi in zip(PARAMETER_NAMES, low, high, strict=True)
        },
    }


def _std(fits: FloatArray) -> FloatArray:
    """The sample standard deviation of each column, computed on the column scaled by its largest
    magnitude, so constants near float64's limit (A ~ 1e300) do not overflow when squared."""
    scale = np.abs(fits).max(axis=0)
    scale[scale == 0] = 1.0
    return np.asarray(scale * (fits / scale).std(axis=0, ddof=1), dtype=np.float64)
