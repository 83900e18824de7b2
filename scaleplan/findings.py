"""`Finding`: one thing wrong (or worth knowing) about a run, with its numbers and the fix.

Shared by `scaleplan.diagnosis.examine` (what a log and config say) and
`scaleplan.validation.markers` (what a config promises), so both report in one shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = ["Finding", "Severity"]

Severity = Literal["info", "warning", "error"]


class Finding(BaseModel):
    """One finding: a stable ``code``, a severity, a message, the fix, and the numbers.

    A validator's ``severity="error"`` finding is what it raises as a ``ValidationError``:
    ``code`` is the error's ``type``, ``numbers`` and ``labels`` together its ``ctx``.

    >>> Finding(code="size-mismatch", severity="warning", message="40.56M, not ~125M",
    ...         fix="n_embd = 768", numbers={"actual": 40_560_000}).context
    {'actual': 40560000}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="Stable identifier, e.g. 'size-mismatch' or "
                      "'scaleplan.does_not_fit'.")
    severity: Severity = Field(description="'error' (the run fails or is wrong), 'warning' "
                               "(it wastes time or compute) or 'info' (worth knowing).")
    message: str = Field(description="What is wrong, with its numbers; sizes in GiB.")
    fix: str = Field("", description="What to change (validators put it in the message).")
    numbers: dict[str, int | float | str] = Field(default_factory=dict,
                                                  description="Bytes, counts, ratios.")
    labels: dict[str, str] = Field(default_factory=dict, description="Names: GPU, precision.")

    @property
    def context(self) -> dict[str, int | float | str]:
        """``numbers`` and ``labels`` together: a raised validation error's ``ctx``."""
        return {**self.numbers, **self.labels}

    def error(self) -> PydanticCustomError:
        """This finding as the error a validator raises.

        >>> f = Finding(code="x.too_big", severity="error", message="n_embd {384} is too big")
        >>> err = f.error()
        >>> err.type, err.message()
        ('x.too_big', 'n_embd (384) is too big')
        """
        return PydanticCustomError(self.code, self.message.replace("{", "(").replace("}", ")"),
                                   self.context)
