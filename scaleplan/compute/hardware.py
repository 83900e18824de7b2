"""GPU specifications: memory, bandwidth, SMs and dense peak FLOP/s per dtype, looked up by name.

The figures live in ``scaleplan/data/gpus.json`` with the source of each one (datasheet,
whitepaper, or "derived: SMs x boost clock x FLOP/clk/SM" where the vendor publishes no figure).
The file is read lazily, once, on the first lookup.

Conventions:

- Peaks are dense (not 2:4 sparse) tensor-core peaks, with the accumulate type stated. bf16 and
  fp16 are given with fp32 accumulate: on GeForce cards that is half the fp16-accumulate rate
  NVIDIA often quotes (RTX 4090: 165.2, not 330.3 TFLOP/s). ``fp32`` is the non-tensor FP32 rate
  on NVIDIA (what a model trained without TF32 gets) and the FP32 matrix rate on AMD.
- Marketed "GB" of GPU memory is binary: an RTX 4070's 12 GB is 12 GiB = 12 x 2**30 bytes
  (`GPUSpec.memory_bytes`). What the driver reports as total (nvidia-smi: 12,282 MiB on an RTX
  4070) is `GPUSpec.usable_memory_bytes`, where a source for it was found.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from scaleplan.checks import canonical
from scaleplan.compute._gpu_records import byte_count, check_fields, scaled
from scaleplan.errors import ConfigFileError, ScaleplanError, UnknownNameError, shown
from scaleplan.files import parse_json, read_text
from scaleplan.units import GiB

__all__ = [
    "DTYPES",
    "INDUCTOR_MIN_SMS",
    "INDUCTOR_SM_WARNING",
    "Dtype",
    "GPUSpec",
    "PeakFlops",
    "gpu",
    "gpus",
    "normalize_dtype",
    "register_gpu",
]

Dtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8"]
DTYPES: tuple[str, ...] = get_args(Dtype)

# torch/_inductor/utils.py is_big_gpu: ``min_sms = 68  # 3080``; below it, inductor logs this
# warning and skips max-autotune GEMM tuning. The rule applies to CUDA devices only (ROCm
# devices are judged by architecture instead).
INDUCTOR_MIN_SMS = 68
INDUCTOR_SM_WARNING = "Not enough SMs to use max_autotune_gemm mode"

_MIB = 2**20
_TERA = 1e12
_GIGA = 1e9
_DATA_FILE = Path(__file__).parent.parent / "data" / "gpus.json"
#: The largest GPU file `register_gpu` reads (the built-in database is ~45 kB).
MAX_GPU_FILE_BYTES = 1_000_000

# Spellings of dtypes seen in configs: torch names, nanoGPT's dtype, scaleplan's precisions.
_DTYPE_ALIASES: dict[str, str] = {
    "bfloat16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16", "bf16-fp32-master": "bf16",
    "amp-bf16": "bf16",
    "float16": "fp16", "half": "fp16", "16-mixed": "fp16", "amp-fp16": "fp16", "fp16-mixed": "fp16",
    "float32": "fp32", "float": "fp32", "32-true": "fp32", "32": "fp32",
    "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "e4m3": "fp8", "e5m2": "fp8",
}


def normalize_dtype(dtype: str) -> Dtype:
    """The canonical dtype for a torch name, a precision or a short name.

    >>> normalize_dtype("torch.bfloat16"), normalize_dtype("16-mixed")
    ('bf16', 'fp16')
    """
    spelling = str(dtype).strip().lower().removeprefix("torch.")
    return canonical("dtype", dtype, DTYPES, _DTYPE_ALIASES,  # type: ignore[return-value]
                     spelling=spelling)


class PeakFlops(BaseModel):
    """A dense peak for one dtype: FLOP/s, the accumulate type, and where the figure comes from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flops: PositiveFloat = Field(description="Dense peak, FLOP/s (not 2:4 sparse).")
    accumulate: Literal["fp32", "fp16"] = Field(description="Accumulate type of the figure.")
    source: str = Field(description="Datasheet, whitepaper, or 'derived: ...'.")


class GPUSpec(BaseModel):
    """One GPU model: memory, bandwidth, SM count and dense peaks, each with its source.

    >>> spec = gpu("NVIDIA GeForce RTX 4070")
    >>> spec.memory_bytes == 12 * 2**30, spec.peak_flops("bf16") / 1e12
    (True, 58.2912)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Canonical name, e.g. 'RTX 4070'.")
    vendor: str = Field("NVIDIA", description="'NVIDIA', 'AMD', ...")
    architecture: str = Field("", description="Architecture and chip, e.g. 'Ada Lovelace (AD104)'.")
    aliases: tuple[str, ...] = Field((), description="Other names `gpu` accepts.")
    memory_bytes: PositiveInt = Field(description="Marketed memory: 'GB' read as GiB, in bytes.")
    usable_memory_bytes: PositiveInt | None = Field(
        None, description="Total the driver reports (nvidia-smi), in bytes, where known."
    )
    memory_bandwidth: PositiveFloat = Field(description="Peak memory bandwidth, bytes/s.")
    sm_count: PositiveInt = Field(description="Streaming multiprocessors (NVIDIA) or CUs (AMD).")
    boost_clock_hz: PositiveFloat | None = Field(None, description="Boost clock, Hz.")
    has_bf16_tensor_cores: bool = Field(description="False on T4 and V100: plan fp16 there.")
    peak: dict[Dtype, PeakFlops] = Field(description="Dense peak per dtype.")
    sources: dict[str, str] = Field(default_factory=dict, description="Source of each figure.")
    notes: str = Field("", description="Caveats about the figures, in words (empty when "
                       "there are none).")

    @field_validator("memory_bytes", "usable_memory_bytes", mode="before")
    @classmethod
    def _byte_count(cls, value: object, info: ValidationInfo) -> object:
        """A byte count is an int: numpy ints become Python ints, floats are refused."""
        return None if value is None else byte_count(str(info.field_name), value)

    def peak_flops(self, dtype: str = "bf16") -> float:
        """Dense tensor-core peak FLOP/s for ``dtype`` (fp32 accumulate for bf16/fp16).

        A dtype the GPU has no figure for is an error, never a zero.

        >>> gpu("A100 SXM 80GB").peak_flops("bf16")
        312000000000000.0
        """
        key = normalize_dtype(dtype)
        if key not in self.peak:
            have = ", ".join(f"{k} ({v.flops / _TERA:g} TFLOP/s)" for k, v in self.peak.items())
            hint = ""
            if key == "bf16" and not self.has_bf16_tensor_cores:
                hint = " It has no bf16 tensor cores: plan fp16 (with loss scaling) instead."
            elif key == "fp8":
                hint = " fp8 tensor cores arrived with Ada/Hopper (NVIDIA) and CDNA 3 (AMD)."
            raise ScaleplanError(
                f"dtype={dtype!r}: the {self.name} has no dense {key} peak; it has {have}.{hint}"
            )
        return self.peak[key].flops

    @property
    def memory_gib(self) -> float:
        """Marketed memory in GiB."""
        return self.memory_bytes / GiB

    @property
    def below_inductor_autotune_threshold(self) -> bool:
        """True when torch inductor skips max-autotune GEMM on this GPU.

        torch/_inductor/utils.py ``is_big_gpu`` needs 68 SMs on CUDA devices and otherwise logs
        "Not enough SMs to use max_autotune_gemm mode" (`INDUCTOR_SM_WARNING`).

        >>> gpu("RTX 4070").below_inductor_autotune_threshold
        True
        """
        return self.vendor.upper() == "NVIDIA" and self.sm_count < INDUCTOR_MIN_SMS

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GPUSpec:
        """Build a spec from one entry in the data-file format (``memory_gib``, ``peak_tflops``...).

        >>> GPUSpec.from_record({"name": "My GPU", "memory_gib": 8, "memory_bandwidth_gb_s": 448,
        ...     "sm_count": 36, "has_bf16_tensor_cores": True,
        ...     "peak_tflops": {"bf16": {"tflops": 40, "accumulate": "fp32", "source": "mine"}}}
        ... ).memory_bytes
        8589934592
        """
        if not isinstance(record, dict):
            raise ScaleplanError(f"a GPU record must be a dict in the format of "
                                 f"scaleplan/data/gpus.json, not {shown(record)}")
        data = dict(record)
        label = f"GPU record {shown(record.get('name', '?'))}"
        missing = [f for f in ("memory_gib", "memory_bandwidth_gb_s", "peak_tflops")
                   if f not in data]
        if missing:
            raise ScaleplanError(
                f"{label} lacks field {missing[0]!r}; give memory_gib, memory_bandwidth_gb_s and "
                "peak_tflops as in scaleplan/data/gpus.json")
        check_fields(label, data)  # every type, before any arithmetic (issue 20)
        usable_mib = data.pop("usable_memory_mib", None)
        clock = data.pop("boost_clock_ghz", None)
        memory = scaled(label, "memory_gib", data.pop("memory_gib"), GiB)
        bandwidth = scaled(label, "memory_bandwidth_gb_s", data.pop("memory_bandwidth_gb_s"),
                            _GIGA)
        peak = _peaks(label, data.pop("peak_tflops"))
        return cls.model_validate({
            **data,
            "aliases": tuple(data.get("aliases", ())),
            "memory_bytes": round(memory),
            "usable_memory_bytes": None if usable_mib is None else usable_mib * _MIB,
            "memory_bandwidth": bandwidth,
            "boost_clock_hz": None if clock is None else scaled(label, "boost_clock_ghz", clock,
                                                                 _GIGA),
            "peak": peak,
        })


def _peaks(label: str, peaks: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, entry in peaks.items():
        where = f"peak_tflops[{shown(key)}]"
        if not isinstance(entry, dict) or "tflops" not in entry:
            raise ScaleplanError(f"{label}: {where}={shown(entry)} must be a dict with "
                                 "'tflops', 'accumulate' and 'source'")
        out[normalize_dtype(key)] = {
            "flops": scaled(label, f"{where}.tflops", entry["tflops"], _TERA),
            **{f: entry[f] for f in ("accumulate", "source") if f in entry}}
    return out


# --- registry and lookup ------------------------------------------------------------------------

_VENDOR_WORDS = ("nvidia", "geforce", "tesla", "amd", "instinct")
_REGISTERED: dict[str, GPUSpec] = {}
# Guards _REGISTERED and _INDEX_CACHE: gpu() iterating the registry while another thread ran
# register_gpu() raised "dictionary changed size during iteration" (issue 20).
_LOCK = threading.Lock()


def _registered() -> dict[str, GPUSpec]:
    """A snapshot of the registered GPUs, taken under the lock."""
    with _LOCK:
        return dict(_REGISTERED)


def _key(name: str) -> str:
    """Lower case, vendor words and punctuation removed: 'NVIDIA GeForce RTX 4070' -> 'rtx4070'."""
    text = str(name).lower()
    for word in _VENDOR_WORDS:
        text = text.replace(word, " ")
    return re.sub(r"[^a-z0-9]", "", text)


@functools.cache
def _builtin() -> tuple[GPUSpec, ...]:
    records = json.loads(_DATA_FILE.read_text(encoding="utf-8"))["gpus"]
    return tuple(GPUSpec.from_record(r) for r in records)


def gpus() -> tuple[GPUSpec, ...]:
    """Every known GPU: the built-in database, then those added with `register_gpu`.

    >>> "RTX 4070" in [g.name for g in gpus()]
    True
    """
    return _all(_registered())


def _all(registered: dict[str, GPUSpec]) -> tuple[GPUSpec, ...]:
    builtin = [g for g in _builtin() if g.name not in registered]
    return (*builtin, *registered.values())


# The name index, built once per state of the registry (rebuilding it on every lookup was a
# fifth of plan()'s time). Keyed on the registered entries, so a change to _REGISTERED, however
# made, rebuilds it.
_INDEX_CACHE: list[tuple[tuple[tuple[str, int], ...], dict[str, list[GPUSpec]]]] = []


def _index() -> dict[str, list[GPUSpec]]:
    registered = _registered()
    state = tuple((name, id(spec)) for name, spec in registered.items())
    with _LOCK:
        if _INDEX_CACHE and _INDEX_CACHE[0][0] == state:
            return _INDEX_CACHE[0][1]
    index: dict[str, list[GPUSpec]] = {}
    for spec in _all(registered):
        for key in {_key(spec.name), *(_key(a) for a in spec.aliases)}:
            index.setdefault(key, []).append(spec)
    with _LOCK:
        _INDEX_CACHE[:] = [(state, index)]
    return index


def gpu(name: str | GPUSpec, *, memory_bytes: int | None = None) -> GPUSpec:
    """Look a GPU up by name, tolerant of case, spaces, vendor prefixes and memory suffixes.

    Accepts "rtx4070", "RTX 4070", "4070", "NVIDIA GeForce RTX 4070" (what
    ``torch.cuda.get_device_name()`` returns), "a100-80gb", "NVIDIA A100-SXM4-80GB". A name that
    fits several GPUs ("A100", "H100") is an error listing them, unless ``memory_bytes`` (e.g.
    ``torch.cuda.get_device_properties(0).total_memory``) picks the one with the nearest memory.

    >>> gpu("nvidia geforce rtx 4070").name, gpu("a100-80gb").name
    ('RTX 4070', 'A100 SXM 80GB')
    """
    if isinstance(name, GPUSpec):
        return name
    if not isinstance(name, str):
        hint = ""
        if (not isinstance(name, bool) and isinstance(name, (int, float))) or \
                type(name).__module__ == "numpy":
            hint = "; a number is no GPU name (a memory size goes in memory_bytes=)"
        raise ScaleplanError(f"gpu={shown(name)} must be a GPU name such as 'RTX 4070' or a "
                             f"GPUSpec{hint}")
    if memory_bytes is not None:
        memory_bytes = byte_count("memory_bytes", memory_bytes)
    key = _key(name)
    matches = _matching(key)
    if len(matches) == 1:
        return matches[0]
    if key and matches:  # several
        if memory_bytes is not None:
            return min(matches, key=lambda s: abs(s.memory_bytes - memory_bytes))
        names = ", ".join(repr(s.name) for s in matches)
        raise ScaleplanError(
            f"GPU name {shown(name)} fits several GPUs: {names}; their memory and peaks differ, so "
            "give one of these names (or pass memory_bytes=)"
        )
    raise UnknownNameError("GPU", name, [s.name for s in gpus()])


def _matching(key: str) -> list[GPUSpec]:
    """The GPUs whose normalised name is ``key``, else those whose name starts with it."""
    index = _index()
    return index.get(key) or _unique(s for k, specs in index.items() if k.startswith(key)
                                     for s in specs)


def _unique(specs: Iterable[GPUSpec]) -> list[GPUSpec]:
    seen: dict[str, GPUSpec] = {}
    for spec in specs:
        seen.setdefault(spec.name, spec)
    return list(seen.values())


def register_gpu(spec: GPUSpec | dict[str, Any] | str | Path) -> tuple[GPUSpec, ...]:
    """Add GPUs to the lookup: a `GPUSpec`, one record, or a JSON file in the data-file format.

    A file holds either one record or ``{"gpus": [...]}``. A registered name replaces a
    built-in entry of the same name.

    >>> mine = gpu("RTX 4070").model_copy(update={"name": "Lab GPU", "aliases": ()})
    >>> register_gpu(mine)[0].name
    'Lab GPU'
    """
    if isinstance(spec, GPUSpec):
        specs: tuple[GPUSpec, ...] = (spec,)
    elif isinstance(spec, dict):
        specs = (GPUSpec.from_record(spec),)
    elif isinstance(spec, (str, os.PathLike)):
        specs = _read_gpu_file(spec)
    else:
        raise ScaleplanError(f"register_gpu({shown(spec)}): pass a GPUSpec, one record (a "
                             "dict) or the path of a JSON file in the format of "
                             "scaleplan/data/gpus.json")
    with _LOCK:
        for s in specs:
            _REGISTERED[s.name] = s
    return specs


def _read_gpu_file(path: str | os.PathLike[str]) -> tuple[GPUSpec, ...]:
    """The records of a GPU file; at most MAX_GPU_FILE_BYTES are read (stat() sizes lie for
    /dev/zero and pipes), and every error is one line naming the file."""
    source = os.fsdecode(path)
    data = parse_json(read_text(path, limit=MAX_GPU_FILE_BYTES, what="GPU file"), source=source)
    records = data["gpus"] if isinstance(data, dict) and "gpus" in data else [data]
    if not isinstance(records, list):
        raise ConfigFileError(f"'gpus' must be a list of GPU records, not {shown(records)}",
                              path=source)
    specs = []
    for i, record in enumerate(records):
        try:
            specs.append(GPUSpec.from_record(record))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(part) for part in err["loc"])
            raise ConfigFileError(f"GPU record {i}: {field}: {err['msg']}", path=source) \
                from None
        except ScaleplanError as exc:
            raise ConfigFileError(str(exc), path=source) from None
    return tuple(specs)
