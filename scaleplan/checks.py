"""Argument checks shared by the arithmetic entry points.

Each check turns a user's value into the exact Python type the arithmetic needs (a Python
``int`` for counts, so products never wrap around a fixed-width numpy integer; a finite Python
``float`` for rates and fractions) or raises `ScaleplanError` naming the argument and the value.
numpy integer and float scalars are accepted and converted; ``bool`` is refused where a number is
meant (``True`` is an int to Python, never a sequence length to a user).
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scaleplan.errors import ScaleplanError, UnknownNameError, shown

if TYPE_CHECKING:  # numpy is imported when an array is checked, not with scaleplan
    import numpy as np
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]

__all__ = ["at_one", "canonical", "finite", "float_guard", "is_integer", "may_be_one", "one_of",
           "plain_numbers", "positive_array", "real", "whole", "wholes"]

P = ParamSpec("P")
R = TypeVar("R")


def whole(name: str, value: object, *, minimum: int = 1, maximum: int | None = None,
          example: str = "", message: str = "") -> int:
    """``value`` as a Python int >= ``minimum`` (and <= ``maximum`` when given), else a
    `ScaleplanError` naming ``name``.

    ``message``, when given, replaces the error's text after ``name=value``.

    >>> import numpy as np
    >>> whole("seq_len", np.int64(1024)), type(whole("seq_len", np.int64(1024))).__name__
    (1024, 'int')
    """
    try:
        number = _whole(name, value, minimum, example)
        if maximum is not None and number > maximum:
            hint = f", e.g. {example}" if example else ""
            raise ScaleplanError(f"{name}={shown(value)} is beyond any real run; give at most "
                                 f"{maximum:,}{hint}")
        return number
    except ScaleplanError:
        if not message:
            raise
        raise ScaleplanError(f"{name}={shown(value)} {message}") from None


def _whole(name: str, value: object, minimum: int, example: str) -> int:
    hint = f", e.g. {example}" if example else ""
    if _is_bool(value):
        raise ScaleplanError(f"{name}={shown(value)} must be a whole number, not a bool{hint}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]  # int, numpy ints; not 12.0
    except TypeError:
        raise ScaleplanError(
            f"{name}={shown(value)} must be a whole number (an int){hint}") from None
    if number < minimum:
        bound = "a positive whole number" if minimum == 1 else f">= {minimum}"
        raise ScaleplanError(f"{name}={number} must be {bound}{hint}")
    return number


def _is_bool(value: object) -> bool:  # Python's bool and numpy's np.bool_ (not an int subclass)
    return isinstance(value, bool) or (
        type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"))


def wholes(name: str, values: Iterable[object], *, minimum: int = 1) -> list[int]:
    """Every one of ``values`` as `whole` takes it: a non-empty list of Python ints.

    >>> wholes("seq_len", [512, 1024])
    [512, 1024]
    >>> wholes("seq_len", [512, 0])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: seq_len holds 0; every value must be an int >= 1
    """
    listed = list(values)
    if not listed:
        raise ScaleplanError(f"{name} is empty; give at least one value")
    out = []
    for value in listed:
        try:
            out.append(whole(name, value, minimum=minimum))
        except ScaleplanError:
            raise ScaleplanError(f"{name} holds {shown(value)}; every value must be an int "
                                 f">= {minimum}") from None
    return out


def real(name: str, value: object, *, minimum: float = 0.0, inclusive: bool = False,
         example: str = "", message: str = "") -> float:
    """``value`` as a finite Python float above ``minimum`` (or equal, when ``inclusive``).

    ``message``, when given, replaces the error's text after ``name=value``.

    >>> real("mfu", 0.4)
    0.4
    """
    try:
        return _real(name, value, minimum, inclusive, example)
    except ScaleplanError:
        if not message:
            raise
        raise ScaleplanError(f"{name}={shown(value)} {message}") from None


def _real(name: str, value: object, minimum: float, inclusive: bool, example: str) -> float:
    hint = f"; give {example}" if example else ""
    if _is_bool(value):
        raise ScaleplanError(f"{name}={shown(value)} must be a number, not a bool{hint}")
    try:
        number = float(value)  # type: ignore[arg-type]  # int, float, numpy scalars
    except (TypeError, ValueError, OverflowError):
        raise ScaleplanError(f"{name}={shown(value)} must be a finite number{hint}") from None
    if isinstance(value, str | bytes) or not math.isfinite(number):
        raise ScaleplanError(f"{name}={shown(value)} must be a finite number{hint}")
    if number < minimum or (number == minimum and not inclusive):
        relation = ">=" if inclusive else ">"
        raise ScaleplanError(f"{name}={shown(value)} must be {relation} {minimum:g}{hint}")
    return number


def positive_array(name: str, value: object, *, example: str = "") -> FloatArray:
    """``value`` (a number or an array of numbers) as a float64 array, every element positive
    and finite, else a `ScaleplanError` naming ``name``, the first bad element and its index.

    A bool, text (``str``, ``bytes``) or a complex number is refused, alone or inside an array:
    numpy would read ``True`` as 1.0 and ``"2e10"`` as 2e10, a number the caller never meant.

    >>> positive_array("tokens", [1e9, 2e9])
    array([1.e+09, 2.e+09])
    >>> positive_array("tokens", [1e9, -1.0], example="a token count")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: ...; got tokens=-1.0 at index 1; pass a token count
    >>> positive_array("tokens", [1e9, True])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: tokens must be a number or an array of numbers; got ...
    """
    import numpy as np

    fix = f"pass {example or 'a positive finite number'}"
    arr = _float_array(name, value, fix)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        where = "" if arr.ndim == 0 else f" at index {index}"
        raise ScaleplanError(
            f"{name} must be positive and finite; got {name}={float(arr.flat[index])!r}{where}; "
            f"{fix}"
        )
    return arr


def _float_array(name: str, value: object, fix: str) -> FloatArray:
    """``value`` as float64, refusing what is not a real number (naming the first such element)."""
    import numpy as np

    def refuse(what: str) -> ScaleplanError:
        return ScaleplanError(f"{name} must be a number or an array of numbers; got "
                              f"{name}={shown(value)} ({what}); {fix}")

    try:
        # a Python sequence may mix bools in among floats: inspect its elements, not the dtype
        raw = np.asarray(value, dtype=object if isinstance(value, list | tuple) else None)
    except (TypeError, ValueError):  # ragged nesting
        raise refuse("not a rectangular array") from None
    if raw.dtype.kind not in "iufO":
        raise refuse(_NON_NUMBER_KINDS.get(raw.dtype.kind, f"dtype {raw.dtype}"))
    if raw.dtype.kind == "O":
        for index, element in enumerate(raw.flat):
            what = _non_number(element)
            if what:
                raise refuse(f"{what} at index {index}" if raw.ndim else what)
    try:
        return np.asarray(raw, dtype=np.float64)
    except OverflowError:  # a Python int past 1.8e308
        big = [i for i, x in enumerate(raw.flat) if _too_big(x)][:1]
        where = f" at index {big[0]}" if raw.ndim and big else ""
        raise ScaleplanError(f"{name} holds a number{where} that overflows a 64-bit float; got "
                             f"{name}={shown(value)}; {fix}") from None
    except (TypeError, ValueError):
        raise refuse("not numbers") from None


_NON_NUMBER_KINDS = {"b": "a bool", "U": "text", "S": "bytes", "c": "a complex number",
                     "M": "a datetime", "m": "a timedelta"}


def _too_big(element: object) -> bool:
    try:
        float(element)  # type: ignore[arg-type]
    except OverflowError:
        return True
    except (TypeError, ValueError):
        return False
    return False


def _non_number(element: object) -> str:
    """What ``element`` is when it is no real number ('' when it is one, as far as checked)."""
    import numpy as np

    if element is None:
        return "None"
    if isinstance(element, bool | np.bool_):
        return "a bool"
    if isinstance(element, str | bytes | np.str_ | np.bytes_):
        return "text"
    if isinstance(element, complex | np.complexfloating):
        return "a complex number"
    return ""


def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    """Refuse a mode outside ``valid`` with an `UnknownNameError` naming ``name`` and the choices.

    >>> one_of("attention", "flash", ("flash", "eager"))
    >>> one_of("attention", "flsh", ("flash", "eager"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.UnknownNameError: ...attention...
    """
    if value not in valid:
        raise UnknownNameError(name, value, valid)


def canonical(kind: str, value: object, valid: tuple[str, ...], aliases: Mapping[str, str], *,
              spelling: str | None = None) -> str:
    """The canonical name for ``value`` (trimmed, lower-cased, an alias resolved), else an
    `UnknownNameError` with the close matches and the valid names.

    ``spelling`` replaces the trimmed, lower-cased ``value`` as the key (to drop a prefix, say);
    the error still shows ``value``.

    >>> canonical("optimizer", " Adam", ("adamw", "sgd"), {"adam": "adamw"})
    'adamw'
    >>> canonical("optimizer", "adan", ("adamw", "sgd"), {"adam": "adamw"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.UnknownNameError: unknown optimizer 'adan'; ... (valid: adamw, sgd)
    """
    key = str(value).strip().lower() if spelling is None else spelling
    key = aliases.get(key, key)
    if key not in valid:
        error = UnknownNameError(kind, value, [*valid, *aliases])
        error.args = (f"{error} (valid: {', '.join(valid)})",)
        raise error
    return key


def finite(name: str, value: float) -> float:
    """``value`` as a finite float, else a `ScaleplanError`: the inputs were too large for ``name``.

    >>> finite("flops", 1e300 * 1e300)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: flops overflows a 64-bit float (inf); the inputs are ...
    """
    try:
        number = float(value)  # an int past 1.8e308 raises OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ScaleplanError(f"{name} overflows a 64-bit float ({number}); the inputs are far "
                             "beyond any training run")
    return number


def float_guard(func: Callable[P, R]) -> Callable[P, R]:
    """Turn float overflow, division by zero and arrays that do not broadcast inside ``func``
    into a `ScaleplanError` naming the call.

    numpy warns (and Python raises ``OverflowError``) when a power or a product leaves float64's
    range; the result would be ``inf``, a number that claims to be an answer. Under this guard the
    call fails instead, naming the function and its arguments. Code that expects ``inf`` on
    purpose (an unreachable loss) sets its own ``np.errstate`` inside, which takes precedence.

    >>> import numpy as np
    >>> @float_guard
    ... def square(x: float) -> float:
    ...     return float(np.float64(x) * x)
    >>> square(1e200)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: square(1e+200): the result overflows a 64-bit float ...
    """
    @wraps(func)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        import numpy as np  # at the first call: decorating a function imports nothing

        try:
            with np.errstate(over="raise", divide="raise", invalid="raise"):
                return func(*args, **kwargs)
        except (FloatingPointError, OverflowError, ZeroDivisionError, ValueError) as exc:
            if isinstance(exc, ScaleplanError) or (
                    isinstance(exc, ValueError) and "broadcast" not in str(exc)):
                raise
            parts = [_show(a) for a in args if not _is_model(a)]
            parts += [f"{k}={_show(v)}" for k, v in kwargs.items()]
            call = f"{func.__name__}({', '.join(parts)})"
            if isinstance(exc, ValueError):  # numpy: arrays of shapes that do not broadcast
                raise ScaleplanError(f"{call}: the arrays' shapes do not match ({exc}); pass "
                                     "arrays of one length, or a number") from None
            raise ScaleplanError(
                f"{call}: the result overflows a 64-bit float or divides by zero ({exc}); "
                "pass values in the range of real training runs") from None

    return guarded


def _is_model(arg: object) -> bool:  # the scaling law itself, for methods
    from pydantic import BaseModel

    return isinstance(arg, BaseModel)


def _show(value: object) -> str:
    return shown(getattr(value, "name", value)) if _is_model(value) else shown(value)


def plain_numbers(data: Any) -> Any:
    """A config's input dict with numpy scalars as Python numbers: strict pydantic fields refused
    np.int64(768) from a sweep, and a numpy int would wrap around in the arithmetic
    (np.int8(100) ** 2). Anything but a dict is returned as it is.

    >>> import numpy as np
    >>> plain_numbers({"n_embd": np.int64(768), "dropout": np.float32(0.5)})
    {'n_embd': 768, 'dropout': 0.5}
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in data.items():
        if type(value).__module__ != "numpy" or getattr(value, "ndim", 1) != 0:
            continue  # arrays stay arrays, and are refused by the field with its name
        convert = {"i": int, "u": int, "f": float, "b": bool}.get(value.dtype.kind)
        if convert is not None:
            out[key] = convert(value)
    return out


def is_integer(value: object) -> bool:
    """A Python int or a numpy integer scalar, not a bool; told without importing numpy (no
    value can be a numpy integer before numpy is imported), so the cold path stays light.

    >>> import numpy as np
    >>> is_integer(3), is_integer(np.int64(3)), is_integer(True), is_integer(3.0)
    (True, True, False, False)
    """
    if isinstance(value, bool):
        return False
    np = sys.modules.get("numpy")
    return isinstance(value, int) or (np is not None and isinstance(value, np.integer))


def may_be_one(b: Any) -> bool:
    """Whether a micro-batch ``b`` is one sequence (a Python or numpy integer) or, for a numpy
    array (`scaleplan.memory.limits.memory_grid`'s), holds such cells; a sympy symbol is taken
    as b > 1. The memory terms that differ at b = 1 (torch keeps views there) ask this first.

    >>> import numpy as np
    >>> may_be_one(1), may_be_one(2), may_be_one(np.array([1.0, 4.0]))
    (True, False, True)
    """
    if is_integer(b):
        return int(b) == 1
    return hasattr(b, "dtype") and bool((b == 1).any())


def at_one(b: Any, one: Any, otherwise: Any) -> Any:
    """``one`` where the micro-batch ``b`` is 1, else ``otherwise``: elementwise for a numpy
    array, ``otherwise`` for a sympy symbol (taken as b > 1).

    >>> import numpy as np
    >>> at_one(1, 10, 20), at_one(3, 10, 20), at_one(np.array([1.0, 2.0]), 10, 20).tolist()
    (10, 20, [10, 20])
    """
    if is_integer(b):
        return one if int(b) == 1 else otherwise
    if hasattr(b, "dtype"):
        import numpy as np

        return np.where(b == 1, one, otherwise)
    return otherwise
