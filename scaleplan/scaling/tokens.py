"""Token budgets: compute-optimal tokens, training compute, tokens seen and over-training.

Training compute is ``6 N D`` here (Kaplan et al. 2020, section 2.1); the attention-aware count
per token is ``scaleplan.compute.flops.flops_per_token``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, overload

from scaleplan.checks import is_integer
from scaleplan.errors import ScaleplanError, UnknownNameError, shown
from scaleplan.scaling.base import TRAINING_FLOPS_PER_PARAM_TOKEN, BaseScalingLaw
from scaleplan.scaling.laws import scaling_law, scaling_laws
from scaleplan.scaling.numbers import as_result, positive_values, scalar_guard

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from scaleplan.scaling.base import FloatArray

__all__ = [
    "CHINCHILLA_TOKENS_PER_PARAM",
    "chinchilla_tokens",
    "overtraining_ratio",
    "tokens_seen",
    "training_compute",
]

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann 2022 Table 3 (Approach 1): 1B -> 20.2B, 70B -> 1.4T


@overload
def training_compute(n_params: float, tokens: float) -> float: ...
@overload
def training_compute(n_params: ArrayLike, tokens: ArrayLike) -> FloatArray: ...
@scalar_guard
def training_compute(n_params: ArrayLike, tokens: ArrayLike) -> Any:
    """Training FLOPs, ``6 N D`` (Kaplan et al. 2020, section 2.1), as floats.

    Counts the weight matmuls only (2 FLOPs per parameter per token forward, 4 backward); the
    attention-score term is in ``scaleplan.compute.flops.flops_per_token``.

    >>> training_compute(70e9, 1.4e12)  # Chinchilla, ~5.9e23
    5.88e+23
    """
    N, D = positive_values("n_params", n_params), positive_values("tokens", tokens)
    return as_result(TRAINING_FLOPS_PER_PARAM_TOKEN * N * D, n_params, tokens)


@scalar_guard
def tokens_seen(steps: int, tokens_per_step: int) -> int:
    """Tokens processed by ``steps`` optimizer steps of ``tokens_per_step`` tokens each.

    >>> tokens_seen(14_500, 524_288)  # the seed case: ~7.6B tokens
    7602176000
    """
    for field, value in (("steps", steps), ("tokens_per_step", tokens_per_step)):
        if not is_integer(value) \
                or value < 0:
            raise ScaleplanError(
                f"{field} must be a non-negative int; got {field}={shown(value)}; "
                f"pass a whole number such as {field}=1000"
            )
    return int(steps) * int(tokens_per_step)


@overload
def chinchilla_tokens(n_params: float, *, method: str | BaseScalingLaw = ...) -> int: ...
@overload
def chinchilla_tokens(n_params: ArrayLike, *, method: str | BaseScalingLaw = ...) -> FloatArray: ...
def chinchilla_tokens(
    n_params: ArrayLike, *, method: str | BaseScalingLaw = "rule-of-thumb"
) -> Any:
    """Compute-optimal training tokens for a model of ``n_params`` parameters.

    - ``method="rule-of-thumb"``: 20 tokens per parameter (Hoffmann et al. 2022, Table 3,
      Approach 1: 1B parameters -> 20.2B tokens, 70B -> 1.4T).
    - a law name (or law): the tokens for which ``n_params`` is that law's compute-optimal size
      (`BaseScalingLaw.optimal_tokens_for_params`); ``"chinchilla"`` (Approach 3) asks for more
      tokens per parameter as models grow.

    A scalar gives an int; an array gives a float array.

    >>> chinchilla_tokens(40.56e6)  # the seed case's 40.56M model: ~8.1e8 tokens
    811200000
    >>> f"{chinchilla_tokens(70e9, method='chinchilla'):.3g}"
    '4.58e+12'

    The budget of a number (an int or a float) under a law is worked out once and kept:
    `scaleplan.planning.planner.plan` asks for it on every call.
    """
    if type(n_params) in (int, float):
        try:
            return _kept_tokens(n_params, method=method)
        except TypeError:  # an unhashable method: said below
            pass
    return _guarded_tokens(n_params, method=method)



def _tokens(n_params: ArrayLike, *, method: str | BaseScalingLaw) -> Any:
    N = positive_values("n_params", n_params)
    if isinstance(method, str) and method == "rule-of-thumb":
        D = CHINCHILLA_TOKENS_PER_PARAM * N
        law = None
    else:
        law = _resolve_method(method)
        D = law.optimal_tokens_for_params(N)
    if type(D) is float and type(N) is float:  # a plain number, without numpy
        if D < 1:
            _too_few(N, D, "", law)
        return round(D)
    import numpy as np

    D = np.asarray(D)
    small = D < 1  # would round to 0 tokens: no budget at all (issue 20)
    if small.any():
        index = int(np.flatnonzero(small)[0])
        _too_few(float(N.flat[index]), float(D.flat[index]),
                 "" if N.ndim == 0 else f" at index {index}", law)
    if np.ndim(n_params) == 0:
        return round(float(D))
    return D


def _too_few(n: float, d: float, where: str, law: BaseScalingLaw | None) -> None:
    least = (1 / CHINCHILLA_TOKENS_PER_PARAM if law is None
             else float(law.optimal_params_for_tokens(1.0)))
    raise ScaleplanError(
        f"n_params={n!r}{where} is too small: its compute-optimal budget is {d:.3g} tokens, "
        f"fewer than one; pass n_params >= {least:.3g}")


_tokens.__name__ = "chinchilla_tokens"  # float_guard's errors name the public function
_guarded_tokens = scalar_guard(_tokens)
_kept_tokens: Callable[..., Any] = lru_cache(maxsize=256, typed=True)(_guarded_tokens)


def _resolve_method(method: str | BaseScalingLaw) -> BaseScalingLaw:
    try:
        return scaling_law(method)
    except UnknownNameError:
        known = ["rule-of-thumb", *scaling_laws()]
        raise UnknownNameError("token-budget method", method, known) from None


@overload
def overtraining_ratio(
    n_params: float, tokens: float, *, method: str | BaseScalingLaw = ...
) -> float: ...
@overload
def overtraining_ratio(
    n_params: ArrayLike, tokens: ArrayLike, *, method: str | BaseScalingLaw = ...
) -> FloatArray: ...
@scalar_guard
def overtraining_ratio(
    n_params: ArrayLike, tokens: ArrayLike, *, method: str | BaseScalingLaw = "rule-of-thumb"
) -> Any:
    """Tokens trained on over compute-optimal tokens (`chinchilla_tokens`): 1 is optimal.

    >>> round(overtraining_ratio(40.56e6, tokens_seen(14_500, 524_288)), 2)  # the seed case
    9.37
    """
    D = positive_values("tokens", tokens)
    optimal = chinchilla_tokens(positive_values("n_params", n_params), method=method)
    if type(optimal) is not int:
        import numpy as np

        optimal = np.asarray(optimal)
    return as_result(D / optimal, n_params, tokens)
