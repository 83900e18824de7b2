"""Validators that teams put in their own pydantic models (see `scaleplan.validation.markers`).

- `markers`: `ParamsNear`, `MaxParams`, `TokensPerParam` and `check`; the error types.
- `step`: `FitsOn` (GPU memory) and `DivisibleStep` (exact gradient accumulation).
- `base`: where a marker finds its inputs, and the findings it reports.
"""

from scaleplan.validation.markers import (
    MAX_TOKENS_PER_PARAM,
    TIGHT_FIT_FRACTION,
    CountKind,
    DivisibleStep,
    Finding,
    FitsOn,
    MaxParams,
    ParamsNear,
    TokensPerParam,
    check,
    parse_claim,
)

__all__ = [
    "MAX_TOKENS_PER_PARAM",
    "TIGHT_FIT_FRACTION",
    "CountKind",
    "DivisibleStep",
    "Finding",
    "FitsOn",
    "MaxParams",
    "ParamsNear",
    "TokensPerParam",
    "check",
    "parse_claim",
]
