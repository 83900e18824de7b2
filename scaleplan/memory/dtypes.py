"""The element sizes of saved tensors, and what one norm saves: the pieces every saved-tensor
formula (`scaleplan.memory.activations`, `scaleplan.memory.attention_terms`,
`scaleplan.memory.mlp_terms`) shares.

All arithmetic is plain ``+``/``*`` on sizes, so Python ints, float64 arrays and sympy
symbols all pass through.
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.model.config import GPTConfig, Precision

__all__ = [
    "AUTOCAST",
    "CUDA_MASK_BYTES",
    "FP32_BYTES",
    "HALF_BYTES",
    "INDEX_BYTES",
    "STAT_BYTES",
    "AttentionKind",
    "CheckpointingKind",
    "DeviceKind",
    "activation_bytes",
    "larger",
    "norm_terms",
    "param_dtype_bytes",
    "residual_bytes",
    "semantics",
    "smaller",
]

AttentionKind = Literal["flash", "eager"]
CheckpointingKind = Literal["none", "selective", "full"]
DeviceKind = Literal["cuda", "cpu", "cpu-cuda-semantics"]
"""``"cuda"``: CUDA kernels and dropout; ``"cpu"``: CPU kernels, float dropout masks in the input
dtype and the math attention kernel when dropout > 0; ``"cpu-cuda-semantics"``: CPU kernels with
CUDA's dropout (bool masks, no dropout inside SDPA), what the reference harness measures with
``cuda_semantics=True``."""

FP32_BYTES = 4
HALF_BYTES = 2  # bf16 and fp16
INDEX_BYTES = 8  # int64 token ids, targets and routing indices
CUDA_MASK_BYTES = 1  # CUDA's native_dropout keeps a bool mask (1 byte per element)
STAT_BYTES = 4  # norm statistics (mean, rstd) and the softmax log-sum-exp are fp32

AUTOCAST: frozenset[str] = frozenset({"bf16-mixed", "16-mixed"})


def activation_bytes(precision: Precision) -> int:
    """Bytes per element of a matmul input/output: 4 for ``"32-true"``, else 2.

    >>> activation_bytes("bf16-mixed"), activation_bytes("32-true")
    (2, 4)
    """
    return FP32_BYTES if precision == "32-true" else HALF_BYTES


def param_dtype_bytes(precision: Precision) -> int:
    """Bytes per element of the parameters and buffers: 2 for bf16 parameters, else 4.

    >>> param_dtype_bytes("bf16-true"), param_dtype_bytes("bf16-mixed")
    (2, 4)
    """
    return HALF_BYTES if precision in ("bf16-true", "bf16-fp32-master") else FP32_BYTES


def residual_bytes(precision: Precision) -> int:
    """Bytes per element of the residual stream: fp32 under autocast (fp32 embeddings plus a bf16
    branch promote to fp32), else the activation dtype.

    >>> residual_bytes("bf16-mixed"), residual_bytes("bf16-true")
    (4, 2)
    """
    return FP32_BYTES if precision in AUTOCAST else activation_bytes(precision)


def semantics(device: DeviceKind) -> tuple[bool, bool]:
    """(CUDA kernels, CUDA dropout) for a device kind; see `DeviceKind`.

    >>> semantics("cpu-cuda-semantics")
    (False, True)
    """
    return device == "cuda", device != "cpu"


def norm_terms(cfg: GPTConfig, rows: Any, width: Any, precision: Precision, cuda_kernels: bool,
               prefix: str, *, in_bytes: int | None = None, input_saved: bool = True,
               rms: bool | None = None, affine: bool | None = None) -> dict[str, Any]:
    """What one norm over ``width`` features saves for ``rows`` rows whose input has
    ``in_bytes`` per element (default: the residual stream's).

    LayerNorm (``native_layer_norm``) saves its input in its own dtype, a mean and a reciprocal
    std per row (fp32 on CUDA, for fp32 inputs and for 16-bit inputs with an fp32 scale, as
    under autocast; in the input dtype on CPU otherwise). RMSNorm (torch 2.13's
    ``F.rms_norm``) is composite on CPU: it saves its input upcast to fp32, the fp32 rstd per
    row and, when the norm has a scale (``norm_affine``), the fp32 normalised input for the
    scale's gradient, whatever the input dtype; CUDA's fused kernel saves the input and the
    rstd. ``input_saved=False`` leaves the input out where another operation already saves the
    same storage; ``rms`` and ``affine`` override the config's ``norm`` and ``norm_affine``
    (MLA's latent norms are RMSNorms).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, norm="rmsnorm")
    >>> norm_terms(cfg, 4, 8, "32-true", False, "ln")
    {'ln_input': 128, 'ln_stats': 16, 'ln_normalized': 128}
    """
    r = residual_bytes(precision) if in_bytes is None else in_bytes
    keep = 1 if input_saved else 0
    rms = cfg.norm == "rmsnorm" if rms is None else rms
    affine = cfg.norm_affine if affine is None else affine
    if not rms:  # CPU keeps the statistics in the input dtype, fp32 beside an fp32 scale
        mixed = affine and precision in AUTOCAST
        stat = STAT_BYTES if (cuda_kernels or r == FP32_BYTES or mixed) else r
        return {f"{prefix}_input": keep * rows * width * r, f"{prefix}_stats": 2 * rows * stat}
    if cuda_kernels:
        return {f"{prefix}_input": keep * rows * width * r, f"{prefix}_stats": rows * STAT_BYTES}
    terms = {f"{prefix}_input": keep * rows * width * FP32_BYTES,
             f"{prefix}_stats": rows * STAT_BYTES}
    if affine:
        terms[f"{prefix}_normalized"] = rows * width * FP32_BYTES
    return terms


def larger(x: Any, y: Any) -> Any:
    """The larger of two sizes: ``max`` for Python ints, elementwise for numpy arrays,
    ``sympy.Max`` for expressions (so that every formula built on it stays vectorised and
    symbolic).

    >>> larger(3, 5), larger(2**40, 7)
    (5, 1099511627776)
    """
    return _pick(x, y, smallest=False)


def smaller(x: Any, y: Any) -> Any:
    """The smaller of two sizes, as `larger` picks the larger.

    >>> smaller(3, 5)
    3
    """
    return _pick(x, y, smallest=True)


def _pick(x: Any, y: Any, *, smallest: bool) -> Any:
    from scaleplan.checks import is_integer

    if is_integer(x) and is_integer(y):
        return (min if smallest else max)(int(x), int(y))
    if hasattr(x, "dtype") or hasattr(y, "dtype"):
        import numpy as np

        return (np.minimum if smallest else np.maximum)(x, y)
    import sympy

    return (sympy.Min if smallest else sympy.Max)(x, y)
