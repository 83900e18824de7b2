"""Invert the formulas: which size gives a parameter count, or keeps FLOPs or memory under a bound.

`solve_for` solves the closed form from `scaleplan.symbolic.formulas` for one field (the exact real
solution), then rounds it to a value `GPTConfig` accepts (``n_embd`` divisible by ``n_head``, a
``seq_len`` within ``block_size`` ...) and shows the valid neighbours. Every figure it reports
for an integer value comes from the numeric functions (`count_params`, `flops_per_token`,
`training_memory`), so each answer is also a cross-check of the closed form.

Imports sympy (through `scaleplan.symbolic.formulas`); ``import scaleplan`` does not import this
module.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal, cast

import sympy
from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import float_guard, one_of, real, whole
from scaleplan.compute.flops import flops_per_token as numeric_flops_per_token
from scaleplan.errors import ScaleplanError
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.symbolic import formulas as symbolic

__all__ = ["Neighbour", "Quantity", "Rounding", "Solution", "solve_for"]

Quantity = Literal["params", "flops_per_token", "memory_bytes"]
Rounding = Literal["nearest", "at_most"]
"""``"nearest"``: the valid value whose quantity is closest to the target (default for
``params``); ``"at_most"``: the largest valid value whose quantity does not exceed the target
(default for ``flops_per_token`` and ``memory_bytes``)."""

# Valid values are searched from the exact solution, candidate by candidate (stepping over the
# values the config's structure rules out, see `_Candidates`); a config family whose next valid
# value is further than this many candidates away, or that meets this many invalid candidates
# in a row, is reported as having none. Both bound the time a search takes.
MAX_SCAN = 100_000
MAX_INVALID = 1_000


class Neighbour(BaseModel):
    """One valid value of the solved field and the quantity there (from the numeric function)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: int
    quantity: int | float


class Solution(BaseModel):
    """The answer of `solve_for`: the exact solution, the valid value chosen, its neighbours.

    >>> s = solve_for(GPTConfig.preset("gpt2"), "n_layer", params=124e6)
    >>> s.value, s.achieved
    (12, 124439808)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(description="The field solved for.")
    quantity: Quantity = Field(description="What the target constrains.")
    target: float = Field(description="The target (parameters, FLOPs per token, or bytes).")
    rounding: Rounding = Field(description="How the exact solution was turned into a value.")
    exact: float = Field(description="The real solution of the closed form (floors, ceilings "
                         "and maxima relaxed), before rounding.")
    value: int = Field(description="The valid value chosen.")
    achieved: int | float = Field(description="The quantity at ``value``, numerically.")
    neighbours: tuple[Neighbour, ...] = Field(
        description="Valid values around the answer, ascending: the one below, the answer, the "
        "one above (where they exist), each with its quantity.")
    expression: str = Field(description="The quantity as a function of the field, in LaTeX.")

    def __str__(self) -> str:
        rows = [f"{self.field} = {self.value} ({self.quantity} {self.achieved:,}; "
                f"target {self.target:,.6g}, exact solution {self.exact:.6g})"]
        rows += [f"  {self.field}={n.value:>8}: {n.quantity:,}" for n in self.neighbours]
        return "\n".join(rows)

    def _repr_markdown_(self) -> str:
        head = (f"**{self.field} = {self.value}** ({self.quantity} target {self.target:,.6g}; "
                f"exact solution {self.exact:.6g}, rounding {self.rounding})\n\n")
        table = f"| {self.field} | {self.quantity} |\n|---:|---:|\n"
        table += "".join(f"| {'**' + str(n.value) + '**' if n.value == self.value else n.value}"
                         f" | {n.quantity:,} |\n" for n in self.neighbours)
        return head + table

    def _repr_latex_(self) -> str:
        x = sympy.latex(symbolic.symbol(self.field))
        return (f"${self.expression} = {sympy.latex(sympy.Float(self.target, 6))} "
                rf"\;\Rightarrow\; {x} \approx {self.exact:.6g} \to {x} = {self.value}$")


@float_guard
def solve_for(cfg: GPTConfig, field: str, *, params: float | None = None,
              flops_per_token: float | None = None, memory_bytes: float | None = None,
              count: symbolic.ParamPart = "total", micro_batch_size: int | None = None,
              seq_len: int | None = None, rounding: Rounding | None = None,
              **options: Any) -> Solution:
    """The value of ``field`` that meets one target, keeping every other field of ``cfg``.

    Args:
        cfg: the config; ``field`` varies, everything else stays.
        field: a size of `scaleplan.symbolic.formulas.MODEL_FIELDS`, or ``"micro_batch_size"`` /
            ``"seq_len"`` for FLOPs and memory.
        params: a parameter count to reach (the `ParamCount` field ``count``, default total).
        flops_per_token: a bound on training FLOPs per token.
        memory_bytes: a bound on `training_memory`'s total (bytes, e.g. ``12 * 2**30``).
        count: which `ParamCount` field ``params`` refers to (``"nanogpt"``, ...).
        micro_batch_size: the micro-batch for memory (unless solved for).
        seq_len: the sequence length for FLOPs and memory (default ``block_size``).
        rounding: see `Rounding`; default ``"nearest"`` for params, else ``"at_most"``.
        **options: passed to `flops_per_token` (causal, recompute, method) or `training_memory`
            (precision, optimizer, attention, checkpointing, ...).

    >>> gpt2 = GPTConfig.preset("gpt2")
    >>> solve_for(gpt2, "n_embd", params=124e6).value  # GPT-2 small's width
    768
    >>> solve_for(gpt2, "micro_batch_size", memory_bytes=12 * 2**30, seq_len=1024).value
    8
    """
    quantity, target = _one_target(field, params=params, flops_per_token=flops_per_token,
                                   memory_bytes=memory_bytes)
    # Exact Python ints at the boundary: numpy's small ints wrap around (np.int8(100) * 3).
    micro_batch_size = None if micro_batch_size is None else whole(
        "micro_batch_size", micro_batch_size, example="micro_batch_size=8")
    seq_len = None if seq_len is None else whole("seq_len", seq_len, example="seq_len=1024")
    if rounding is not None:
        one_of("rounding", rounding, ("nearest", "at_most"))
    mode: Rounding = rounding or ("nearest" if quantity == "params" else "at_most")
    expr = _closed_form(cfg, field, quantity, count, micro_batch_size, seq_len, options)
    exact = _real_solution(expr, symbolic.symbol(field), target, field, quantity)

    def numeric(v: int) -> int | float | None:  # None: not a valid value of the field
        return _numeric(cfg, field, v, quantity, count, micro_batch_size, seq_len, options)

    candidates = _Candidates(cfg, field)
    chosen = _choose(numeric, candidates, exact, target, mode)
    if chosen is None:
        raise ScaleplanError(f"no valid {field} meets {quantity}={target:,.6g} for this config "
                             f"(exact solution {exact:.6g}); change another field or the target")
    value, achieved = chosen
    around = [candidates.next_valid(numeric, value - 1, -1), chosen,
              candidates.next_valid(numeric, value + 1, +1)]
    return Solution(
        field=field, quantity=quantity, target=float(target), rounding=mode, exact=exact,
        value=value, achieved=achieved,
        neighbours=tuple(Neighbour(value=v, quantity=q) for v, q in
                         (c for c in around if c is not None)),
        expression=sympy.latex(expr))


def _one_target(field: str, **targets: float | None) -> tuple[Quantity, float]:
    """The one target given (its quantity and value), checked: positive, and one that ``field``
    changes; a finite Python float (numpy scalars, Decimal and ints converted)."""
    given = {k: v for k, v in targets.items() if v is not None}
    if len(given) != 1:
        raise ScaleplanError(f"solve_for needs exactly one target, got {sorted(given) or 'none'}; "
                             "pass one of params=, flops_per_token=, memory_bytes=")
    [(quantity, value)] = given.items()
    target = real(quantity, value, example=f"a positive number, e.g. {quantity}=1e9")
    if quantity == "params" and field in symbolic.RUN_FIELDS:
        raise ScaleplanError(f"field={field!r} does not change the parameter count; solve for "
                             "one of " + ", ".join(symbolic.MODEL_FIELDS))
    return cast(Quantity, quantity), target


def _choose(numeric: Any, candidates: _Candidates, exact: float, target: float,
            mode: Rounding) -> tuple[int, int | float] | None:
    """The valid value next to the exact solution that ``mode`` asks for, with its quantity."""
    start = max(1, math.floor(exact))
    below = candidates.next_valid(numeric, start, -1)
    above = candidates.next_valid(numeric, start + 1, +1)
    if mode == "nearest":
        return min((c for c in (below, above) if c is not None),
                   key=lambda c: abs(c[1] - target), default=None)
    return _largest_at_most(numeric, candidates, below, above, target)


def _closed_form(cfg: GPTConfig, field: str, quantity: str, count: Any, b: int | None,
                 s: int | None, options: dict[str, Any]) -> sympy.Expr:
    free = (field,)
    if quantity == "params":
        return symbolic.param_count(cfg, free=free, part=count)
    if quantity == "flops_per_token":
        return symbolic.flops_per_token(cfg, free=free, seq_len=s, **options)
    return symbolic.memory(cfg, free=free, micro_batch_size=b, seq_len=s, **options).total


def _real_solution(expr: sympy.Expr, x: sympy.Symbol, target: float, field: str,
                   quantity: str) -> float:
    """The positive real root of expr(x) = target, with floor/ceiling relaxed to their argument
    and each Max solved branch by branch (a root counts where its branch is the maximum)."""
    r = sympy.Dummy("r", positive=True)
    e = expr.subs(x, r).replace(lambda n: isinstance(n, (sympy.floor, sympy.ceiling)),
                                lambda n: n.args[0])
    goal = sympy.Rational(target)
    maxima = list(e.atoms(sympy.Max))
    roots: list[float] = []
    for choice in itertools.product(*(m.args for m in maxima)):
        branch = e.xreplace(dict(zip(maxima, choice, strict=True)))
        for root in sympy.solve(sympy.Eq(branch, goal), r):
            value = complex(sympy.N(root))
            if abs(value.imag) > 1e-9 * abs(value) or value.real <= 0:
                continue
            if math.isclose(float(e.subs(r, value.real)), float(goal), rel_tol=1e-9):
                roots.append(value.real)
    if not roots:
        raise ScaleplanError(f"no positive {field} gives {quantity}={target:,.6g}: the closed "
                             f"form {expr} never reaches it; change the target or another field")
    return max(roots)


def _numeric(cfg: GPTConfig, field: str, v: int, quantity: str, count: str, b: int | None,
             s: int | None, options: dict[str, Any]) -> int | float | None:
    if v < 1:
        return None
    try:
        if field in symbolic.RUN_FIELDS:
            model, run = cfg, {"micro_batch_size": b, "seq_len": s, field: v}
        else:
            model, run = cfg.replace(**{field: v}), {"micro_batch_size": b, "seq_len": s}
        seq_len = run["seq_len"] or model.block_size
        if quantity == "params":
            return int(getattr(count_params(model), count))
        if quantity == "flops_per_token":
            return numeric_flops_per_token(model, seq_len=seq_len, **options)
        if run["micro_batch_size"] is None:
            raise ScaleplanError("memory_bytes needs micro_batch_size= (or solve for it)")
        return training_memory(model, micro_batch_size=run["micro_batch_size"],
                               seq_len=seq_len, **options).total
    except ScaleplanError as err:
        if "micro_batch_size=" in str(err) and "needs" in str(err):
            raise
        return None
    except ValueError:  # the config rejects the value (n_embd not divisible by n_head, ...)
        return None


class _Candidates:
    """The values of ``field`` worth evaluating, found cheaply from the config's structure: a
    derived head_dim makes n_embd a multiple of n_head and n_head a divisor of n_embd; n_kv_head
    divides n_head (and a given n_kv_head divides n_head); learned positions bound seq_len by
    block_size. Without this, a search for n_kv_head past n_head=10**5 built 100,000 invalid
    configs (100 s)."""

    def __init__(self, cfg: GPTConfig, field: str) -> None:
        given = cfg.model_fields_set
        self.stride, self.top = 1, None
        self.divides: list[int] = []  # the value must divide each of these
        self.multiple_of = 1  # the value must be a multiple of this
        if field == "n_embd" and "head_dim" not in given:
            self.stride = cfg.n_head
        elif field == "n_kv_head":
            self.divides.append(cfg.n_head)
        elif field == "n_head":
            if "head_dim" not in given:
                self.divides.append(cfg.n_embd)
            if "n_kv_head" in given:
                self.multiple_of = cfg.n_kv_head
        elif field == "seq_len" and cfg.position == "learned":
            self.top = cfg.block_size
        if self.divides:
            self.top = min(self.divides)

    def _first(self, v: int, step: int) -> int:
        """The first multiple of the stride from ``v`` in the direction of ``step``."""
        if self.stride == 1:
            return v
        return -(-v // self.stride) * self.stride if step > 0 else v // self.stride * self.stride

    def _cheap_ok(self, v: int) -> bool:
        return v % self.multiple_of == 0 and all(n % v == 0 for n in self.divides)

    def next_valid(self, numeric: Any, start: int, step: int) -> tuple[int, Any] | None:
        """The first value from ``start`` in the direction of ``step`` (+1 or -1) that is valid,
        with its quantity; None when there is none within `MAX_SCAN` candidates or
        `MAX_INVALID` evaluations."""
        v, invalid = self._first(start, step), 0
        if self.top is not None and v > self.top:
            if step > 0:
                return None
            v = self._first(self.top, step)
        for _ in range(MAX_SCAN):
            if v < 1:
                return None
            if self._cheap_ok(v):
                q = numeric(v)
                if q is not None:
                    return v, q
                invalid += 1
                if invalid >= MAX_INVALID:
                    return None
            v += step * self.stride
            if self.top is not None and v > self.top:
                return None
        return None


def _largest_at_most(numeric: Any, candidates: _Candidates, below: tuple[int, Any] | None,
                     above: tuple[int, Any] | None, target: float) -> tuple[int, Any] | None:
    """Walk from the exact solution's floor to the largest valid value within the target (the
    relaxed ceilings can put the floor one step off)."""
    for _ in range(MAX_SCAN):
        if above is None or above[1] > target:
            break
        below, above = above, candidates.next_valid(numeric, above[0] + 1, +1)
    for _ in range(MAX_SCAN):
        if below is None or below[1] <= target:
            break
        below = candidates.next_valid(numeric, below[0] - 1, -1)
    return below
