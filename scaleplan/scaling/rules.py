"""Published rules built on scaling laws: batch size, learning rate, repeated data, inference.

- `critical_batch_size`: Kaplan et al. 2020's critical batch as a function of the loss.
- `deepseek_batch_size`, `deepseek_learning_rate`: DeepSeek LLM 2024's fits against compute.
- `effective_tokens`, `effective_params`, `data_constrained_loss`: Muennighoff et al. 2023's
  law for training on repeated data.
- `inference_optimal`: Sardana & Frankle 2023's model size and token count that minimise
  training plus inference FLOPs at a target loss.
"""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import finite, float_guard
from scaleplan.errors import ScaleplanError, shown
from scaleplan.scaling.base import (
    TRAINING_FLOPS_PER_PARAM_TOKEN,
    BaseScalingLaw,
    FloatArray,
    as_result,
    positive_values,
    setting,
)
from scaleplan.scaling.laws import scaling_law

__all__ = [
    "DEEPSEEK_BATCH_COEFFICIENT",
    "DEEPSEEK_BATCH_EXPONENT",
    "DEEPSEEK_LR_COEFFICIENT",
    "DEEPSEEK_LR_EXPONENT",
    "INFERENCE_FLOPS_PER_PARAM_TOKEN",
    "KAPLAN_ALPHA_B",
    "KAPLAN_B_STAR",
    "MUENNIGHOFF_R_STAR_D",
    "MUENNIGHOFF_R_STAR_N",
    "InferenceOptimal",
    "critical_batch_size",
    "data_constrained_loss",
    "deepseek_batch_size",
    "deepseek_learning_rate",
    "effective_params",
    "effective_tokens",
    "inference_optimal",
]

KAPLAN_B_STAR = 2e8  # tokens; Kaplan et al. 2020, eq. 1.4 (B* ~ 2e8 tokens)
KAPLAN_ALPHA_B = 0.21  # Kaplan et al. 2020, eq. 1.4

DEEPSEEK_BATCH_COEFFICIENT = 0.2920  # tokens; DeepSeek LLM 2024 (arXiv:2401.02954), eq. 1
DEEPSEEK_BATCH_EXPONENT = 0.3271  # DeepSeek LLM 2024, eq. 1
DEEPSEEK_LR_COEFFICIENT = 0.3118  # DeepSeek LLM 2024, eq. 1
DEEPSEEK_LR_EXPONENT = -0.1250  # DeepSeek LLM 2024, eq. 1

MUENNIGHOFF_R_STAR_D = 15.387756  # repetitions; Muennighoff et al. 2023, datablations README
MUENNIGHOFF_R_STAR_N = 5.309743  # excess-parameter ratio; same source

INFERENCE_FLOPS_PER_PARAM_TOKEN = 2  # a forward pass, per token served (Sardana & Frankle 2023)


@overload
def critical_batch_size(loss: float) -> float: ...
@overload
def critical_batch_size(loss: ArrayLike) -> FloatArray: ...
@float_guard
def critical_batch_size(loss: ArrayLike) -> Any:
    """Kaplan et al. 2020's critical batch size in tokens: ``B_crit = B* / L^(1 / alpha_B)``.

    Eq. 1.4 (section 5.1), with ``B* = 2e8`` tokens (`KAPLAN_B_STAR`) and ``alpha_B = 0.21``
    (`KAPLAN_ALPHA_B`). Training with batches much above B_crit buys little speed for the
    extra compute. L is Kaplan's loss (nats per token on WebText2, GPT-2 tokenizer): on other
    data and tokenizers treat the result as an order of magnitude.

    >>> f"{critical_batch_size(3.0):.3g}"
    '1.07e+06'
    """
    L = positive_values("loss", loss)
    return as_result(KAPLAN_B_STAR / L ** (1 / KAPLAN_ALPHA_B), loss)


@overload
def deepseek_batch_size(flops: float) -> float: ...
@overload
def deepseek_batch_size(flops: ArrayLike) -> FloatArray: ...
@float_guard
def deepseek_batch_size(flops: ArrayLike) -> Any:
    """DeepSeek LLM 2024's near-optimal batch size in tokens: ``B_opt = 0.2920 C^0.3271``.

    Eq. 1 of arXiv:2401.02954 (section 3.1). Their C is ``M D`` with M the non-embedding FLOPs
    per token including attention (not 6N); passing 6 N D is close for long-context-free
    estimates.

    >>> f"{deepseek_batch_size(1e20):.4g}"
    '1.017e+06'
    """
    C = positive_values("flops", flops)
    return as_result(DEEPSEEK_BATCH_COEFFICIENT * C**DEEPSEEK_BATCH_EXPONENT, flops)


@overload
def deepseek_learning_rate(flops: float) -> float: ...
@overload
def deepseek_learning_rate(flops: ArrayLike) -> FloatArray: ...
@float_guard
def deepseek_learning_rate(flops: ArrayLike) -> Any:
    """DeepSeek LLM 2024's near-optimal peak learning rate: ``lr_opt = 0.3118 C^-0.1250``.

    Eq. 1 of arXiv:2401.02954 (AdamW with their warmup and multi-step schedule); C as in
    `deepseek_batch_size`.

    >>> f"{deepseek_learning_rate(1e20):.3g}"  # 0.3118 / 10^2.5
    '0.000986'
    """
    C = positive_values("flops", flops)
    return as_result(DEEPSEEK_LR_COEFFICIENT * C**DEEPSEEK_LR_EXPONENT, flops)


def _decayed(unique: FloatArray, repeats: FloatArray, r_star: float) -> FloatArray:
    """``U + U R* (1 - exp(-R / R*))``: what R repeats of U are worth (Muennighoff 2023)."""
    return np.asarray(unique + unique * r_star * (1 - np.exp(-repeats / r_star)), np.float64)


def _check_unique(tokens: FloatArray, unique_tokens: FloatArray) -> None:
    if np.any(unique_tokens > tokens):
        raise ScaleplanError(
            f"unique_tokens={unique_tokens.max():.4g} exceeds tokens={tokens.min():.4g}: a run "
            "cannot see more distinct tokens than it trains on; pass unique_tokens <= tokens"
        )


@overload
def effective_tokens(tokens: float, unique_tokens: float, *, r_star: float = ...) -> float: ...
@overload
def effective_tokens(
    tokens: ArrayLike, unique_tokens: ArrayLike, *, r_star: float = ...
) -> FloatArray: ...
@float_guard
def effective_tokens(
    tokens: ArrayLike, unique_tokens: ArrayLike, *, r_star: float = MUENNIGHOFF_R_STAR_D
) -> Any:
    """What ``tokens`` tokens drawn from ``unique_tokens`` distinct ones are worth as fresh data.

    Muennighoff et al. 2023 (arXiv:2305.16264): ``D' = U + U R*_D (1 - exp(-R_D / R*_D))`` with
    ``R_D = D / U - 1`` repetitions and ``R*_D = 15.39``: the first few epochs are worth nearly
    as much as new data, and no amount of repetition is worth more than ``U (1 + R*_D)``.

    >>> round(effective_tokens(4e9, 1e9) / 1e9, 2)  # 4 epochs: worth ~3.7 epochs of new data
    3.73
    """
    D, U = positive_values("tokens", tokens), positive_values("unique_tokens", unique_tokens)
    _check_unique(D, U)
    r_star = setting("r_star", r_star, example=f"r_star={MUENNIGHOFF_R_STAR_D}")
    return as_result(_decayed(U, D / U - 1, r_star), tokens, unique_tokens)


def _unique_params(N: FloatArray, U: FloatArray, law: BaseScalingLaw) -> FloatArray:
    """``U_N``: the compute-optimal size for U tokens, capped at N (datablations README)."""
    return np.minimum(N, np.asarray(law.optimal_params_for_tokens(U), dtype=np.float64))


@overload
def effective_params(
    n_params: float, unique_tokens: float, *, law: str | BaseScalingLaw = ...,
    r_star: float = ...,
) -> float: ...
@overload
def effective_params(
    n_params: ArrayLike, unique_tokens: ArrayLike, *, law: str | BaseScalingLaw = ...,
    r_star: float = ...,
) -> FloatArray: ...
@float_guard
def effective_params(
    n_params: ArrayLike, unique_tokens: ArrayLike, *,
    law: str | BaseScalingLaw = "muennighoff2023", r_star: float = MUENNIGHOFF_R_STAR_N,
) -> Any:
    """What ``n_params`` parameters are worth when the data has only ``unique_tokens`` tokens.

    Muennighoff et al. 2023, the same decay for parameters: ``U_N`` is the compute-optimal size for
    ``unique_tokens`` under ``law`` (capped at N), ``R_N = N / U_N - 1`` and
    ``N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N))`` with ``R*_N = 5.31``: parameters beyond
    what the unique data can use are worth less and less.

    >>> round(effective_params(6.34e9, 25e9) / 1e9, 3)  # U_N = 1.27e9 for 25B unique tokens
    4.841
    """
    N, U = positive_values("n_params", n_params), positive_values("unique_tokens", unique_tokens)
    r_star = setting("r_star", r_star, example=f"r_star={MUENNIGHOFF_R_STAR_N}")
    unique = _unique_params(N, U, scaling_law(law))
    return as_result(_decayed(unique, N / unique - 1, r_star), n_params, unique_tokens)


@overload
def data_constrained_loss(
    n_params: float, tokens: float, unique_tokens: float, *, law: str | BaseScalingLaw = ...
) -> float: ...
@overload
def data_constrained_loss(
    n_params: ArrayLike, tokens: ArrayLike, unique_tokens: ArrayLike, *,
    law: str | BaseScalingLaw = ...,
) -> FloatArray: ...
@float_guard
def data_constrained_loss(
    n_params: ArrayLike, tokens: ArrayLike, unique_tokens: ArrayLike, *,
    law: str | BaseScalingLaw = "muennighoff2023",
) -> Any:
    """Loss of a model trained for ``tokens`` tokens that repeat ``unique_tokens`` distinct ones.

    Muennighoff et al. 2023 (as in the datablations README): the law's L(N', D') with
    `effective_params` and `effective_tokens`. The default law is their single-epoch C4 fit
    (``"muennighoff2023"``), with which this reproduces the datablations README's example.

    >>> data_constrained_loss(6.34e9, 242e9, 25e9)  # datablations README: 2.2256440889984477
    2.2256440889984477
    """
    fit = scaling_law(law)
    N = effective_params(n_params, unique_tokens, law=fit)
    D = effective_tokens(tokens, unique_tokens)
    return as_result(np.asarray(fit.loss(N, D)), n_params, tokens, unique_tokens)


class InferenceOptimal(BaseModel):
    """The model that reaches a loss with the fewest training plus inference FLOPs.

    ``training_flops + inference_flops == total_flops``. The ``compute_optimal_*`` fields are
    the model a training-only budget would pick for the same loss (no inference counted), for
    comparison.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    law: str = Field(description="Name of the law used.")
    loss: float = Field(description="Target loss, nats per token.")
    inference_tokens: float = Field(description="Tokens the model will serve in its lifetime.")
    n_params: int = Field(description="Parameters of the lifetime-optimal model.")
    tokens: int = Field(description="Its training tokens.")
    training_flops: float = Field(description="6 N D.")
    inference_flops: float = Field(description="2 N x inference_tokens.")
    total_flops: float = Field(description="training_flops + inference_flops.")
    compute_optimal_n_params: int = Field(description="Training-only optimum at this loss.")
    compute_optimal_tokens: int = Field(description="Its training tokens.")
    compute_optimal_total_flops: float = Field(
        description="Its training plus inference FLOPs for the same inference_tokens."
    )

    @property
    def savings(self) -> float:
        """Fraction of lifetime FLOPs saved against the training-only optimum."""
        return 1 - self.total_flops / self.compute_optimal_total_flops


def _lifetime_optimum(fit: BaseScalingLaw, L: float, served: float) -> tuple[float, float]:
    """(N, D) minimising 6 N D + 2 N D_inf with L(N, D) = L, by bounded search over log N."""
    from scipy.optimize import minimize_scalar

    smallest = float(fit._params_for_loss(np.asarray(L), np.asarray(np.inf)))
    if not math.isfinite(smallest):
        floor = float(fit._loss(np.asarray(np.inf), np.asarray(np.inf)))
        raise ScaleplanError(
            f"loss={L!r} is out of reach under the {fit.name!r} law, whose loss never falls "
            f"below {floor:.4g}; pass a higher loss"
        )

    def lifetime_flops(log_ratio: float) -> float:  # in units of the smallest model's size
        N = smallest * math.exp(log_ratio)
        D = float(fit._tokens_for_loss(np.asarray(L), np.asarray(N)))
        return (TRAINING_FLOPS_PER_PARAM_TOKEN * D + INFERENCE_FLOPS_PER_PARAM_TOKEN * served) * (
            N / smallest
        )

    # the optimum lies within a factor ~10 of the smallest model that can reach L at all
    result = minimize_scalar(lifetime_flops, bounds=(1e-12, math.log(1e4)), method="bounded",
                             options={"xatol": 1e-12})
    N = smallest * math.exp(float(result.x))
    return N, float(fit._tokens_for_loss(np.asarray(L), np.asarray(N)))


@float_guard
def inference_optimal(
    loss: float, inference_tokens: float, *, law: str | BaseScalingLaw = "chinchilla"
) -> InferenceOptimal:
    """Sardana & Frankle 2023: the model reaching ``loss`` with the least lifetime compute.

    Minimises training ``6 N D`` plus inference ``2 N D_inf`` FLOPs subject to
    ``L(N, D) = loss`` (arXiv:2401.00448), numerically (scipy, imported here). The more tokens
    are served, the smaller and longer-trained the optimal model.

    >>> opt = inference_optimal(2.0, 2e12)
    >>> opt.n_params < opt.compute_optimal_n_params, opt.tokens > opt.compute_optimal_tokens
    (True, True)
    """
    if np.ndim(loss) or np.ndim(inference_tokens):  # one optimum per call (fuzzed, issue 13)
        raise ScaleplanError(f"inference_optimal takes one loss and one count, not arrays; got "
                             f"loss={shown(loss)}, inference_tokens={shown(inference_tokens)}")
    L = float(positive_values("loss", loss))
    try:
        served = setting("inference_tokens", inference_tokens, inclusive=True)
    except ScaleplanError:
        raise ScaleplanError(
            f"inference_tokens must be a non-negative finite count; got "
            f"inference_tokens={shown(inference_tokens)}; pass 0 to ignore inference"
        ) from None
    fit = scaling_law(law)
    N, D = _lifetime_optimum(fit, L, served)
    N0, D0 = _lifetime_optimum(fit, L, 0.0)
    if min(N, D, N0, D0) < 1:  # would round to a model of 0 parameters or 0 tokens (issue 20)
        raise ScaleplanError(
            f"loss={shown(loss)} is so high that under the {fit.name!r} law a model of fewer than "
            "one parameter, or one trained on fewer than one token, reaches it; pass a lower "
            "loss (real runs reach 2 to 4 nats per token)")
    # a served count near float64's limit makes the FLOPs overflow to inf (issue 20)
    where = f"inference_tokens={shown(inference_tokens)}"
    served_flops = finite(f"the inference FLOPs of {where}",
                          INFERENCE_FLOPS_PER_PARAM_TOKEN * served)
    training = finite(f"the training FLOPs of loss={shown(loss)}",
                      TRAINING_FLOPS_PER_PARAM_TOKEN * N * D)
    inference = finite(f"the inference FLOPs of {where}", served_flops * N)
    baseline = finite(f"the training-only optimum's lifetime FLOPs at {where}",
                      TRAINING_FLOPS_PER_PARAM_TOKEN * N0 * D0 + served_flops * N0)
    return InferenceOptimal(
        law=fit.name, loss=L, inference_tokens=served, n_params=round(N), tokens=round(D),
        training_flops=training, inference_flops=inference,
        total_flops=finite(f"the total FLOPs of {where}", training + inference),
        compute_optimal_n_params=round(N0), compute_optimal_tokens=round(D0),
        compute_optimal_total_flops=baseline,
    )
