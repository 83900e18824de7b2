"""The interface every scaling law shares (`BaseScalingLaw`) and the results it returns.

A law maps parameters N and training tokens D to a predicted loss, and answers the planning
questions built on it, vectorised (numpy arrays in, arrays out; scalars in, floats out):
`loss`, `tokens_for_loss`, `params_for_loss`, `optimal_n_params`, `optimal_tokens`,
`compute_optimal`. The formulas themselves are in ``scaleplan.scaling.laws`` (`ScalingLaw`,
`KaplanScalingLaw`). Training compute is the ``6 N D`` approximation (Kaplan et al. 2020,
section 2.1).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import float_guard, positive_array, real
from scaleplan.errors import ScaleplanError, shown

__all__ = [
    "TRAINING_FLOPS_PER_PARAM_TOKEN",
    "BaseScalingLaw",
    "ComputeOptimal",
    "ComputeOptimalArrays",
    "FitReport",
    "NCounts",
    "as_result",
    "positive_values",
    "setting",
]

FloatArray = NDArray[np.float64]
NCounts = Literal["total", "non_embedding"]
"""Which parameters a law's N counts: all of them, or all but the embeddings (Kaplan 2020)."""

TRAINING_FLOPS_PER_PARAM_TOKEN = 6  # forward 2N + backward 4N per token (Kaplan 2020, sec. 2.1)

_HINTS = {
    "n_params": "a parameter count such as 1.24e8",
    "tokens": "a token count such as 2.5e9",
    "flops": "a training compute in FLOPs such as 1e21",
    "loss": "a loss in nats per token such as 3.2",
    "losses": "final losses in nats per token such as 3.2",
    "unique_tokens": "the number of distinct tokens in the data set, such as 2.5e10",
    "inference_tokens": "the number of tokens to be served, such as 1e12",
}


_INT64_LIMIT = 2**63  # numpy's own ints; a larger Python int takes the checked path


def positive_values(name: str, value: ArrayLike) -> FloatArray:
    """``value`` as float64, rejecting anything non-positive, NaN or infinite (naming ``name``):
    `scaleplan.checks.positive_array` with a hint for each quantity of the scaling laws.

    A plain positive finite int or float (what `scaleplan.planning.planner.plan` passes) skips
    the element-by-element checks: the same 0-d float64 array, without their cost."""
    if (type(value) is float and 0 < value < math.inf) or (type(value) is int and
                                                            0 < value < _INT64_LIMIT):
        return np.asarray(value, dtype=np.float64)
    return positive_array(name, value, example=_HINTS.get(name, ""))


def setting(name: str, value: object, **options: Any) -> float:
    """A scalar setting (``r_star``, ``huber_delta``, ...) as `scaleplan.checks.real` takes it,
    refusing numpy's bool too (``real`` reads ``np.True_`` as 1.0).

    >>> setting("r_star", np.True_)
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: r_star=np.True_ must be a number, not a bool
    """
    if isinstance(value, np.bool_):
        raise ScaleplanError(f"{name}={shown(value)} must be a number, not a bool")
    return real(name, value, **options)


def as_result(value: FloatArray, *inputs: ArrayLike) -> Any:
    """A Python float when every input was a scalar, else the array."""
    if all(np.ndim(x) == 0 for x in inputs):
        return float(value)
    return np.asarray(value, dtype=np.float64)


class FitReport(BaseModel):
    """How a `ScalingLaw` was fitted by `fit_scaling_law`, and how sure the fit is.

    ``standard_errors`` and ``intervals`` are filled by the bootstrap (``bootstrap > 0``): the
    standard deviation of each constant over resampled fits, and the percentile interval at
    ``confidence``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    n_points: int = Field(description="Data points fitted.")
    huber_delta: float = Field(description="Huber loss threshold on log loss.")
    objective: float = Field(description="Summed Huber loss at the best fit.")
    n_starts: int = Field(description="L-BFGS runs made from the grid of starting points.")
    n_bootstrap: int = Field(default=0, description="Bootstrap resamples (0: none).")
    confidence: float | None = Field(default=None, description="Level of `intervals`.")
    standard_errors: dict[str, float] | None = Field(
        default=None, description="Bootstrap standard error of E, A, B, alpha, beta."
    )
    intervals: dict[str, tuple[float, float]] | None = Field(
        default=None, description="Bootstrap percentile interval of E, A, B, alpha, beta."
    )


class ComputeOptimal(BaseModel):
    """The compute-optimal model size and token count for a FLOP budget under one law.

    >>> from scaleplan.scaling.laws import scaling_law
    >>> opt = scaling_law("chinchilla").compute_optimal(5.76e23)
    >>> round(opt.n_params / 1e9, 1), round(opt.tokens_per_param, 1)
    (40.4, 58.9)
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False,
                              defer_build=True)  # built at first use

    law: str = Field(description="Name of the law used.")
    flops: float = Field(description="Training compute budget, FLOPs (C = 6 N D).")
    n_params: int = Field(description="Compute-optimal parameters (counted as the law counts).")
    tokens: int = Field(description="Compute-optimal training tokens.")
    loss: float = Field(description="The law's predicted loss at that allocation.")

    @property
    def tokens_per_param(self) -> float:
        """Training tokens per parameter at the optimum."""
        return self.tokens / self.n_params


class ComputeOptimalArrays(NamedTuple):
    """`BaseScalingLaw.compute_optimal` over an array of budgets: one float array per field."""

    flops: FloatArray
    n_params: FloatArray
    tokens: FloatArray
    loss: FloatArray


class BaseScalingLaw(BaseModel):
    """What every scaling law offers; `ScalingLaw` and `KaplanScalingLaw` fill in the formulas.

    Subclasses implement six private array formulas (loss, its two inverses, the compute-optimal
    size and the inverses of the allocation); the public methods here validate inputs, apply
    them and return floats for scalars and arrays for arrays.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(description="Short name, as accepted by `scaling_law`.")
    paper: str = Field(description="Where the law and its constants come from.")
    equation: str = Field(description="The equation (and its number in the paper).")
    n_counts: NCounts = Field(description="Which parameters N counts: total or non_embedding.")

    # -- formulas, on validated float64 arrays --------------------------------------------------
    def _loss(self, N: FloatArray, D: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _tokens_for_loss(self, L: FloatArray, N: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _params_for_loss(self, L: FloatArray, D: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _optimal_n_params(self, C: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _optimal_flops_for_params(self, N: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _optimal_flops_for_tokens(self, D: FloatArray) -> FloatArray:
        raise NotImplementedError

    # -- public, vectorised ----------------------------------------------------------------------
    @overload
    def loss(self, n_params: float, tokens: float) -> float: ...
    @overload
    def loss(self, n_params: ArrayLike, tokens: ArrayLike) -> FloatArray: ...
    @float_guard
    def loss(self, n_params: ArrayLike, tokens: ArrayLike) -> Any:
        """Predicted loss of a model with ``n_params`` parameters trained on ``tokens`` tokens.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("chinchilla").loss(70e9, 1.4e12), 3)  # Chinchilla itself
        1.921
        """
        N, D = positive_values("n_params", n_params), positive_values("tokens", tokens)
        return as_result(self._loss(N, D), n_params, tokens)

    @overload
    def loss_params_limited(self, n_params: float) -> float: ...
    @overload
    def loss_params_limited(self, n_params: ArrayLike) -> FloatArray: ...
    @float_guard
    def loss_params_limited(self, n_params: ArrayLike) -> Any:
        """Loss with unlimited data: only the model size limits it (Kaplan's L(N)).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("kaplan2020").loss_params_limited(1e9), 3)  # (8.8e13/1e9)^0.076
        2.376
        """
        N = positive_values("n_params", n_params)
        return as_result(self._loss(N, np.full_like(N, np.inf)), n_params)

    @overload
    def loss_data_limited(self, tokens: float) -> float: ...
    @overload
    def loss_data_limited(self, tokens: ArrayLike) -> FloatArray: ...
    @float_guard
    def loss_data_limited(self, tokens: ArrayLike) -> Any:
        """Loss with an unlimited model: only the data limits it (Kaplan's L(D)).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("kaplan2020").loss_data_limited(1e10), 3)  # (5.4e13/1e10)^0.095
        2.262
        """
        D = positive_values("tokens", tokens)
        return as_result(self._loss(np.full_like(D, np.inf), D), tokens)

    @overload
    def tokens_for_loss(self, loss: float, n_params: float) -> float: ...
    @overload
    def tokens_for_loss(self, loss: ArrayLike, n_params: ArrayLike) -> FloatArray: ...
    @float_guard
    def tokens_for_loss(self, loss: ArrayLike, n_params: ArrayLike) -> Any:
        """Training tokens a model of ``n_params`` needs to reach ``loss``.

        ``inf`` where the model can never reach it (``loss <= loss_params_limited(n_params)``).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> law = scaling_law("chinchilla")
        >>> round(law.tokens_for_loss(law.loss(1e9, 2e10), 1e9) / 1e10, 6)
        2.0
        """
        L, N = positive_values("loss", loss), positive_values("n_params", n_params)
        return as_result(self._tokens_for_loss(L, N), loss, n_params)

    @overload
    def params_for_loss(self, loss: float, tokens: float) -> float: ...
    @overload
    def params_for_loss(self, loss: ArrayLike, tokens: ArrayLike) -> FloatArray: ...
    @float_guard
    def params_for_loss(self, loss: ArrayLike, tokens: ArrayLike) -> Any:
        """Parameters a model trained on ``tokens`` needs to reach ``loss``.

        ``inf`` where no model size reaches it (``loss <= loss_data_limited(tokens)``).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> law = scaling_law("chinchilla")
        >>> round(law.params_for_loss(law.loss(1e9, 2e10), 2e10) / 1e9, 6)
        1.0
        """
        L, D = positive_values("loss", loss), positive_values("tokens", tokens)
        return as_result(self._params_for_loss(L, D), loss, tokens)

    @overload
    def optimal_n_params(self, flops: float) -> float: ...
    @overload
    def optimal_n_params(self, flops: ArrayLike) -> FloatArray: ...
    @float_guard
    def optimal_n_params(self, flops: ArrayLike) -> Any:
        """Parameters minimising the loss for ``flops`` training FLOPs, under C = 6 N D.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> f"{scaling_law('chinchilla').optimal_n_params(5.76e23):.3g}"  # Gopher's budget
        '4.04e+10'
        """
        C = positive_values("flops", flops)
        return as_result(self._optimal_n_params(C), flops)

    @overload
    def optimal_tokens(self, flops: float) -> float: ...
    @overload
    def optimal_tokens(self, flops: ArrayLike) -> FloatArray: ...
    @float_guard
    def optimal_tokens(self, flops: ArrayLike) -> Any:
        """Training tokens at the compute-optimal allocation of ``flops``: D = C / (6 N_opt).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> f"{scaling_law('chinchilla').optimal_tokens(5.76e23):.3g}"
        '2.38e+12'
        """
        C = positive_values("flops", flops)
        return as_result(C / (TRAINING_FLOPS_PER_PARAM_TOKEN * self._optimal_n_params(C)), flops)

    @overload
    def compute_optimal(self, flops: float) -> ComputeOptimal: ...
    @overload
    def compute_optimal(self, flops: ArrayLike) -> ComputeOptimalArrays: ...
    @float_guard
    def compute_optimal(self, flops: ArrayLike) -> ComputeOptimal | ComputeOptimalArrays:
        """The compute-optimal model for a budget: size, tokens and predicted loss.

        A scalar budget gives a `ComputeOptimal` (parameters and tokens rounded to ints); an
        array of budgets gives `ComputeOptimalArrays` (float arrays).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> opt = scaling_law("epoch2024").compute_optimal(5.88e23)
        >>> f"{opt.n_params:.3g} params, {opt.tokens:.3g} tokens"
        '7.3e+10 params, 1.34e+12 tokens'
        """
        C = positive_values("flops", flops)
        self._check_budget(C)
        N = self._optimal_n_params(C)
        D = C / (TRAINING_FLOPS_PER_PARAM_TOKEN * N)
        L = self._loss(N, D)
        if np.ndim(flops) == 0:
            return ComputeOptimal(law=self.name, flops=float(C), n_params=round(float(N)),
                                  tokens=round(float(D)), loss=float(L))
        return ComputeOptimalArrays(flops=C, n_params=N, tokens=D, loss=L)

    @property
    def minimum_flops(self) -> float:
        """The smallest budget whose compute-optimal model has at least one parameter and is
        trained on at least one token; `compute_optimal` refuses smaller budgets.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("kaplan2020").minimum_flops)  # N_opt = 1 at ~2.8e3 FLOPs
        2831
        """
        one = np.asarray(1.0)
        return max(float(self._optimal_flops_for_params(one)),
                   float(self._optimal_flops_for_tokens(one)))

    def _check_budget(self, C: FloatArray) -> None:
        """Refuse budgets below `minimum_flops`: their optimum (fewer than one parameter or one
        token) would round to a model of 0 parameters or 0 tokens."""
        least = self.minimum_flops
        small = least > C
        if small.any():
            index = int(np.flatnonzero(small)[0])
            where = "" if C.ndim == 0 else f" at index {index}"
            c = float(C.flat[index])
            n = float(self._optimal_n_params(np.asarray(c)))
            raise ScaleplanError(
                f"flops={c!r}{where} is too small a budget for the {self.name!r} law: its "
                f"compute-optimal model would have n_params={n:.3g} and tokens="
                f"{c / (TRAINING_FLOPS_PER_PARAM_TOKEN * n):.3g}, fewer than one parameter or "
                f"one token; pass flops >= {least:.4g} (real runs start near 1e15)")

    @overload
    def optimal_tokens_for_params(self, n_params: float) -> float: ...
    @overload
    def optimal_tokens_for_params(self, n_params: ArrayLike) -> FloatArray: ...
    @float_guard
    def optimal_tokens_for_params(self, n_params: ArrayLike) -> Any:
        """Tokens for which a model of ``n_params`` is compute-optimal under this law.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("chinchilla").optimal_tokens_for_params(1e9) / 1e9, 1)
        29.1
        """
        N = positive_values("n_params", n_params)
        C = self._optimal_flops_for_params(N)
        return as_result(C / (TRAINING_FLOPS_PER_PARAM_TOKEN * N), n_params)

    @overload
    def optimal_params_for_tokens(self, tokens: float) -> float: ...
    @overload
    def optimal_params_for_tokens(self, tokens: ArrayLike) -> FloatArray: ...
    @float_guard
    def optimal_params_for_tokens(self, tokens: ArrayLike) -> Any:
        """Parameters that are compute-optimal for ``tokens`` training tokens under this law.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("chinchilla").optimal_params_for_tokens(29.1e9) / 1e9, 2)
        1.0
        """
        D = positive_values("tokens", tokens)
        return as_result(self._optimal_n_params(self._optimal_flops_for_tokens(D)), tokens)
