"""The interface every scaling law shares (`BaseScalingLaw`) and the results it returns.

A law maps parameters N and training tokens D to a predicted loss, and answers the planning
questions built on it, vectorised (numpy arrays in, arrays out; scalars in, floats out):
`loss`, `tokens_for_loss`, `params_for_loss`, `optimal_n_params`, `optimal_tokens`,
`compute_optimal`. The formulas themselves are in ``scaleplan.scaling.laws`` (`ScalingLaw`,
`KaplanScalingLaw`). Training compute is the ``6 N D`` approximation (Kaplan et al. 2020,
section 2.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast, overload

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.errors import ScaleplanError
from scaleplan.scaling.numbers import (
    as_result,
    infinite_like,
    is_scalar,
    positive_values,
    scalar_guard,
    setting,
)

if TYPE_CHECKING:  # numpy is imported for arrays only: plain numbers are Python floats
    import numpy as np
    from numpy.typing import ArrayLike, NDArray

    FloatArray = NDArray[np.float64]
    Floats = float | FloatArray  # a law's formulas take plain floats and arrays alike

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

NCounts = Literal["total", "non_embedding"]
"""Which parameters a law's N counts: all of them, or all but the embeddings (Kaplan 2020)."""

TRAINING_FLOPS_PER_PARAM_TOKEN = 6  # forward 2N + backward 4N per token (Kaplan 2020, sec. 2.1)

def __getattr__(name: str) -> Any:  # FloatArray for modules that use it at run time
    if name == "FloatArray":
        import numpy as np
        from numpy.typing import NDArray

        return NDArray[np.float64]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    # -- formulas, on Python floats or validated float64 arrays -------------------------------
    def _loss(self, N: Floats, D: Floats) -> Floats:
        raise NotImplementedError

    def _tokens_for_loss(self, L: Floats, N: Floats) -> Floats:
        raise NotImplementedError

    def _params_for_loss(self, L: Floats, D: Floats) -> Floats:
        raise NotImplementedError

    def _optimal_n_params(self, C: Floats) -> Floats:
        raise NotImplementedError

    def _optimal_flops_for_params(self, N: Floats) -> Floats:
        raise NotImplementedError

    def _optimal_flops_for_tokens(self, D: Floats) -> Floats:
        raise NotImplementedError

    # -- public, vectorised ----------------------------------------------------------------------
    @overload
    def loss(self, n_params: float, tokens: float) -> float: ...
    @overload
    def loss(self, n_params: ArrayLike, tokens: ArrayLike) -> FloatArray: ...
    @scalar_guard
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
    @scalar_guard
    def loss_params_limited(self, n_params: ArrayLike) -> Any:
        """Loss with unlimited data: only the model size limits it (Kaplan's L(N)).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("kaplan2020").loss_params_limited(1e9), 3)  # (8.8e13/1e9)^0.076
        2.376
        """
        N = positive_values("n_params", n_params)
        return as_result(self._loss(N, infinite_like(N)), n_params)

    @overload
    def loss_data_limited(self, tokens: float) -> float: ...
    @overload
    def loss_data_limited(self, tokens: ArrayLike) -> FloatArray: ...
    @scalar_guard
    def loss_data_limited(self, tokens: ArrayLike) -> Any:
        """Loss with an unlimited model: only the data limits it (Kaplan's L(D)).

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("kaplan2020").loss_data_limited(1e10), 3)  # (5.4e13/1e10)^0.095
        2.262
        """
        D = positive_values("tokens", tokens)
        return as_result(self._loss(infinite_like(D), D), tokens)

    @overload
    def tokens_for_loss(self, loss: float, n_params: float) -> float: ...
    @overload
    def tokens_for_loss(self, loss: ArrayLike, n_params: ArrayLike) -> FloatArray: ...
    @scalar_guard
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
    @scalar_guard
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
    @scalar_guard
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
    @scalar_guard
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
    @scalar_guard
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
        if is_scalar(flops):
            return ComputeOptimal(law=self.name, flops=float(C), n_params=round(float(N)),
                                  tokens=round(float(D)), loss=float(L))
        return ComputeOptimalArrays(flops=C, n_params=cast("FloatArray", N), tokens=D,
                                    loss=cast("FloatArray", L))

    @property
    def minimum_flops(self) -> float:
        """The smallest budget whose compute-optimal model has at least one parameter and is
        trained on at least one token; `compute_optimal` refuses smaller budgets.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("kaplan2020").minimum_flops)  # N_opt = 1 at ~2.8e3 FLOPs
        2831
        """
        return max(float(self._optimal_flops_for_params(1.0)),
                   float(self._optimal_flops_for_tokens(1.0)))

    def _check_budget(self, C: Floats) -> None:
        """Refuse budgets below `minimum_flops`: their optimum (fewer than one parameter or one
        token) would round to a model of 0 parameters or 0 tokens."""
        least = self.minimum_flops
        if type(C) is float:
            if least > C:
                self._too_small(C, "", least)
            return
        import numpy as np

        budgets = np.asarray(C)
        small = least > budgets
        if small.any():
            index = int(np.flatnonzero(small)[0])
            self._too_small(float(budgets.flat[index]),
                            "" if budgets.ndim == 0 else f" at index {index}", least)

    def _too_small(self, c: float, where: str, least: float) -> None:
        n = float(self._optimal_n_params(c))
        raise ScaleplanError(
            f"flops={c!r}{where} is too small a budget for the {self.name!r} law: its "
            f"compute-optimal model would have n_params={n:.3g} and tokens="
            f"{c / (TRAINING_FLOPS_PER_PARAM_TOKEN * n):.3g}, fewer than one parameter or "
            f"one token; pass flops >= {least:.4g} (real runs start near 1e15)")

    @overload
    def optimal_tokens_for_params(self, n_params: float) -> float: ...
    @overload
    def optimal_tokens_for_params(self, n_params: ArrayLike) -> FloatArray: ...
    @scalar_guard
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
    @scalar_guard
    def optimal_params_for_tokens(self, tokens: ArrayLike) -> Any:
        """Parameters that are compute-optimal for ``tokens`` training tokens under this law.

        >>> from scaleplan.scaling.laws import scaling_law
        >>> round(scaling_law("chinchilla").optimal_params_for_tokens(29.1e9) / 1e9, 2)
        1.0
        """
        D = positive_values("tokens", tokens)
        return as_result(self._optimal_n_params(self._optimal_flops_for_tokens(D)), tokens)
