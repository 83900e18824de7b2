"""Checks of the fields of a GPU record (`scaleplan.compute.hardware.GPUSpec.from_record`).

Every field's type is checked before any arithmetic: a str ``memory_gib`` was multiplied by
2**30 into a 1 GiB string, a str ``sm_count`` or ``has_bf16_tensor_cores`` was taken by
pydantic's lax mode as a number or a bool (issue 20).
"""

from __future__ import annotations

from typing import Any

from scaleplan.checks import finite, real, whole
from scaleplan.errors import ScaleplanError, shown


def byte_count(name: str, value: object) -> int:
    """``value`` as a Python int (numpy ints converted); a float is refused with a hint to wrap
    it in ``int(...)``: a byte count is whole."""
    hint = "80 * 2**30"
    if isinstance(value, float):
        hint = f"int({value!r})" if value == value and abs(value) != float("inf") else hint
    return whole(name, value, example=f"{name}={hint} (a byte count is an int)")


def _fail(label: str, exc: ScaleplanError) -> ScaleplanError:
    return ScaleplanError(f"{label}: {exc}")


def check_fields(label: str, data: dict[str, Any]) -> None:
    """Refuse a record field of the wrong type before it is used: a str memory_gib was
    multiplied by 2**30 into a 1 GiB string (issue 20)."""
    for name in ("name", "vendor", "architecture", "notes"):
        if name in data and not isinstance(data[name], str):
            raise ScaleplanError(f"{label}: {name}={shown(data[name])} must be a str")
    aliases = data.get("aliases", ())
    if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
        raise ScaleplanError(f"{label}: aliases={shown(aliases)} must be a list of names, "
                             "e.g. ['4070', 'rtx 4070 12gb']")
    if not isinstance(data.get("has_bf16_tensor_cores", False), bool):
        raise ScaleplanError(f"{label}: has_bf16_tensor_cores="
                             f"{shown(data['has_bf16_tensor_cores'])} must be true or false")
    try:
        if "sm_count" in data:
            whole("sm_count", data["sm_count"], example="sm_count=46")
        if data.get("usable_memory_mib") is not None:
            data["usable_memory_mib"] = whole("usable_memory_mib", data["usable_memory_mib"],
                                              example="usable_memory_mib=12282")
    except ScaleplanError as exc:
        raise _fail(label, exc) from None
    for name in ("sources", "peak_tflops"):
        if name in data and not isinstance(data[name], dict):
            raise ScaleplanError(f"{label}: {name}={shown(data[name])} must be a dict (a JSON "
                                 "object), as in scaleplan/data/gpus.json")


def scaled(label: str, name: str, value: object, scale: float) -> float:
    """``value`` (a positive finite number, not a str or a bool) times ``scale``."""
    try:
        return finite(name, real(name, value, example=f"a positive number for {name}") * scale)
    except ScaleplanError as exc:
        raise _fail(label, exc) from None
