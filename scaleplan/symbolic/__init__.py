"""The formulas as sympy expressions (``formulas``) and their inverses (``solve``).

Importing this package imports sympy; ``import scaleplan`` never does.
"""

from scaleplan.symbolic.formulas import (
    MODEL_FIELDS,
    RUN_FIELDS,
    SymbolicMemory,
    SymbolicModel,
    flops_per_token,
    memory,
    param_count,
    step_flops,
    symbol,
    symbolic_model,
    to_latex,
)
from scaleplan.symbolic.solve import Neighbour, Quantity, Rounding, Solution, solve_for

__all__ = [
    "MODEL_FIELDS",
    "RUN_FIELDS",
    "Neighbour",
    "Quantity",
    "Rounding",
    "Solution",
    "SymbolicMemory",
    "SymbolicModel",
    "flops_per_token",
    "memory",
    "param_count",
    "solve_for",
    "step_flops",
    "symbol",
    "symbolic_model",
    "to_latex",
]
