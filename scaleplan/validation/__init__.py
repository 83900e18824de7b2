"""Validators that teams put in their own pydantic models (see `scaleplan.validation.markers`).

- `markers`: `ParamsNear`, `MaxParams`, `TokensPerParam` and `check`; the error types.
- `step`: `FitsOn` (GPU memory) and `DivisibleStep` (exact gradient accumulation).
- `base`: where a marker finds its inputs, and the findings it reports.
"""

from scaleplan.validation import markers as _markers
from scaleplan.validation.markers import *  # noqa: F403  (the list is markers.__all__)

__all__ = _markers.__all__
