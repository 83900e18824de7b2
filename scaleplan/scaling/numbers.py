"""How the scaling laws take numbers: plain ints and floats as Python floats, anything else as
float64 numpy arrays, with the same bits either way.

`plan` asks a law two questions (the compute-optimal tokens and the loss at the end), about
plain numbers; answering them in Python floats keeps numpy (a tenth of a second or more to
import) out of a cold ``scaleplan plan``. `scalar_guard` runs such a call on Python floats and
hands anything unusual (an overflow, an error, an infinite answer, an array) to
`scaleplan.checks.float_guard` and numpy, as before. The two agree to the bit: ``+ - * /`` are
IEEE arithmetic either way, and every power is the C library's ``pow`` (`power`: Python's
``**`` for a float, `numpy.float_power` for arrays; numpy's own ``**`` on AVX-512 CPUs uses a
SIMD loop that differs from ``pow`` in the last bit for some inputs, so laws now give the same
bits on every CPU).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from pydantic import BaseModel

from scaleplan.checks import float_guard, positive_array, real
from scaleplan.errors import ScaleplanError, shown

if TYPE_CHECKING:  # numpy is imported for arrays only
    import numpy as np
    from numpy.typing import ArrayLike, NDArray

    FloatArray = NDArray[np.float64]
    Floats = float | FloatArray  # a law's formulas take plain floats and arrays alike

__all__ = ["as_float64", "as_result", "infinite_like", "is_scalar", "positive_values", "power",
           "scalar_guard", "setting", "where_positive"]

P = ParamSpec("P")
R = TypeVar("R")

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

# True while `scalar_guard` tries a call on plain numbers in Python floats, without numpy.
_PYTHON_FLOATS: ContextVar[bool] = ContextVar("scaleplan_python_floats", default=False)


def positive_values(name: str, value: ArrayLike) -> Any:
    """``value`` as float64, rejecting anything non-positive, NaN or infinite (naming ``name``):
    `scaleplan.checks.positive_array` with a hint for each quantity of the scaling laws.

    A plain positive finite int or float (what `scaleplan.planning.planner.plan` passes) skips
    the element-by-element checks: a Python float inside `scalar_guard`'s numpy-free try, else
    the same 0-d float64 array, without their cost."""
    if (type(value) is float and 0 < value < math.inf) or (type(value) is int and
                                                            0 < value < _INT64_LIMIT):
        if _PYTHON_FLOATS.get():
            return float(value)
        import numpy as np

        return np.asarray(value, dtype=np.float64)
    return positive_array(name, value, example=_HINTS.get(name, ""))


@overload
def power(x: float, y: float) -> float: ...
@overload
def power(x: FloatArray, y: float) -> FloatArray: ...
@overload
def power(x: Floats, y: float) -> Floats: ...
def power(x: Any, y: float) -> Any:
    """``x ** y`` by the C library's ``pow`` for a Python float, a numpy scalar or an array alike
    (`numpy.float_power`, not numpy's ``**``, whose SIMD loop on AVX-512 CPUs differs from
    ``pow`` in the last bit for about 5% of inputs): a law gives the same bits for a number as
    for that number in an array, with or without numpy.

    >>> import numpy as np
    >>> power(2.0e9, 0.34) == float(power(np.array([2.0e9]), 0.34)[0])
    True
    """
    if type(x) is float:
        return x**y
    import numpy as np

    return np.float_power(x, y)


def where_positive(left: Floats, value: Callable[[Any], Any]) -> Floats:
    """``value(left)`` where ``left > 0``, else ``inf`` (a loss the law never reaches)."""
    if type(left) is float:
        return float(value(left)) if left > 0 else math.inf
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(left) > 0, value(left), np.inf)


def infinite_like(x: Any) -> Any:
    """``inf`` shaped like ``x``: a float for a float, else a float64 array."""
    if type(x) is float:
        return math.inf
    import numpy as np

    return np.full_like(x, np.inf)


def is_scalar(x: Any) -> bool:
    """Whether ``x`` is a single number (a plain one, a numpy scalar or a 0-d array)."""
    if type(x) in (int, float):
        return True
    import numpy as np

    return bool(np.ndim(x) == 0)


def as_float64(x: Floats) -> Floats:
    """A Python float as it is; anything else as a float64 numpy array."""
    if type(x) is float:
        return x
    import numpy as np

    return np.asarray(x, dtype=np.float64)


def _plain(value: object) -> bool:
    return type(value) in (int, float, str) or value is None or isinstance(value, BaseModel)


def _finite(result: object) -> bool:
    if type(result) is float:
        return math.isfinite(result)
    return isinstance(result, int | BaseModel)  # a ComputeOptimal holds only finite numbers


def scalar_guard(func: Callable[P, R]) -> Callable[P, R]:
    """`scaleplan.checks.float_guard` that answers plain numbers without numpy.

    A call whose arguments are all plain (ints, floats, strings, None, laws) runs first on
    Python floats (`positive_values` gives floats; `power` and `where_positive` take them); its
    answer stands when it is a finite number. Anything else (an overflow, an error, an infinite
    answer, an array argument) goes through ``float_guard`` with numpy, as before, so errors and
    edge cases read and behave exactly as numpy's. The bits agree: ``+ - * /`` are IEEE
    arithmetic either way and `power` is the C library's ``pow`` in both."""
    guarded = float_guard(func)

    @wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if all(_plain(a) for a in args) and all(_plain(v) for v in kwargs.values()):
            token = _PYTHON_FLOATS.set(True)
            try:
                result = func(*args, **kwargs)
            except (ArithmeticError, ValueError):
                pass  # numpy's path below says what went wrong
            else:
                if _finite(result):
                    return result
            finally:
                _PYTHON_FLOATS.reset(token)
        return guarded(*args, **kwargs)

    return call


def setting(name: str, value: object, **options: Any) -> float:
    """A scalar setting (``r_star``, ``huber_delta``, ...) as `scaleplan.checks.real` takes it,
    refusing numpy's bool too (``real`` reads ``np.True_`` as 1.0).

    >>> import numpy as np
    >>> setting("r_star", np.True_)
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: r_star=np.True_ must be a number, not a bool
    """
    np = sys.modules.get("numpy")  # no value is a numpy bool before numpy is imported
    if np is not None and isinstance(value, np.bool_):
        raise ScaleplanError(f"{name}={shown(value)} must be a number, not a bool")
    return real(name, value, **options)


def as_result(value: Any, *inputs: ArrayLike) -> Any:
    """A Python float when every input was a scalar, else the array."""
    if all(type(x) in (int, float) for x in inputs):
        return float(value)
    import numpy as np

    if all(np.ndim(x) == 0 for x in inputs):
        return float(value)
    return np.asarray(value, dtype=np.float64)
