"""Bytes of a model's weights stored quantized, as bitsandbytes and torchao hold them:
`quantized_weight_bytes` -> `QuantizedWeights`, and `dequantized_linear_bytes` (the largest
weight QLoRA dequantizes in flight).

What is quantized is what the libraries replace by default: every ``torch.nn.Linear`` of the
blocks (q, k, v, the output projection, the MLP's up, gate and down projections, a mixture of
experts' shared experts and shared-expert gate, MLA's projections, OPT's ``project_in`` and
``project_out``). What stays in 16 bits (``unquantized``): the embeddings, every norm, every
bias (bitsandbytes' ``Linear4bit``/``Linear8bitLt`` keep the bias as it was), the ``lm_head``
(transformers' quantizers skip the output embedding, `get_keys_to_not_convert` in
transformers 5.25.0 ``quantizers/base.py``), and a mixture of experts' router and routed
experts: transformers 5 stores the routed experts as 3-D ``nn.Parameter`` tensors
(``MixtralExperts.gate_up_proj``, ``down_proj``) and the router as its own module
(``MixtralTopKRouter``), not ``nn.Linear``, so bitsandbytes (``replace_with_bnb_linear`` takes
``type(module) is nn.Linear`` or ``Conv1D``) and torchao's ``quantize_`` (its default filter is
``isinstance(module, nn.Linear)``) both leave them in 16 bits.

Per format, one linear of ``n = out x in`` elements holds (bytes; packed data, then scales):

- ``fp32``, ``bf16``, ``fp16``: 4 n or 2 n; no scales.
- ``fp8``: n (e4m3) and one fp32 scale per output row (torchao ``Float8WeightOnlyConfig``,
  per-row granularity).
- ``int8``: n and one fp32 scale per output row (bitsandbytes LLM.int8, ``Int8Params.SCB``).
- ``int4``: n / 2 and, per group of ``group_size`` (default 128) inputs of each row, a bf16
  scale and a bf16 zero (torchao ``Int4WeightOnlyConfig``, GPTQ/AWQ-style).
- ``nf4``: n / 2, an fp32 absmax per block of ``group_size`` (default 64) elements, and per
  tensor the 16 fp32 NF4 levels (``quant_state.code``, 64 bytes).
- ``nf4-dq``: n / 2, the absmax quantized to 8 bits (1 byte per block), an fp32 constant per
  256 absmax, and per tensor the 256 fp32 levels of the 8-bit map, the fp32 mean subtracted
  from the absmax and the 16 NF4 levels (1,092 bytes).

Double quantization is QLoRA's (Dettmers et al. 2023, "QLoRA", Sec. 3): absmax costs 32/64 =
0.5 bits per parameter with blocks of 64, and 8/64 + 32/(64 x 256) = 0.127 bits once quantized.
Sizes come from bitsandbytes 0.50.2 (``bitsandbytes/functional.py``: ``quantize_4bit`` with
``compress_statistics=True`` calls ``quantize_blockwise(absmax - offset, blocksize=256)``) and
torchao 0.14.1; `scaleplan.reference.quant_measure` measures both and
``docs/validation/quantized_weights.json`` records the measurements.

Per-tensor constants are counted per linear as transformers stores them: q, k and v as three
linears (Llama, Mistral, Qwen2, OPT; GPT-2's fused ``c_attn`` is one, 2 x 64 bytes fewer per
block in ``nf4``), the gated MLP's gate and up as two.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.parallel import Parallelism
from scaleplan.model.config import GPTConfig
from scaleplan.model.layers import Tensor
from scaleplan.model.shapes import block_counts, parameters, per_config

__all__ = [
    "BNB_BLOCKSIZES",
    "DEFAULT_GROUP_SIZE",
    "INT4_GROUP_SIZES",
    "NESTED_BLOCKSIZE",
    "WEIGHT_FORMATS",
    "QuantizedWeights",
    "WeightFormat",
    "dequantized_linear_bytes",
    "linear_bytes",
    "quantized_weight_bytes",
]

WeightFormat = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4", "nf4", "nf4-dq"]
"""How the linear layers' weights are stored (see the module's table)."""
WEIGHT_FORMATS: tuple[WeightFormat, ...] = get_args(WeightFormat)

FP32_BYTES = 4
HALF_BYTES = 2  # bf16, fp16: what stays unquantized, and int4's scales and zeros
DEFAULT_GROUP_SIZE: dict[str, int] = {
    "nf4": 64,  # bitsandbytes Params4bit(blocksize=64) (bitsandbytes/nn/modules.py)
    "nf4-dq": 64,
    "int4": 128,  # torchao Int4WeightOnlyConfig(group_size=128) (quantization/quant_api.py)
}
"""The libraries' default block (nf4) or group (int4) size per format."""
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Block sizes bitsandbytes 0.50.2 accepts (``bitsandbytes/_ops.py``, ``quantize_4bit``)."""
INT4_GROUP_SIZES = (32, 64, 128, 256)
"""Group sizes torchao 0.14.1's ``Int4WeightOnlyConfig`` accepts (its docstring)."""
NESTED_BLOCKSIZE = 256
"""Double quantization: absmax quantized to 8 bits in blocks of 256 (QLoRA Sec. 3;
bitsandbytes ``quantize_4bit``, ``compress_statistics=True``)."""
NF4_CODE_BYTES = 16 * FP32_BYTES  # quant_state.code: the 16 NF4 levels, fp32, per tensor
DYNAMIC_CODE_BYTES = 256 * FP32_BYTES  # state2.code: the 8-bit dynamic map, fp32, per tensor
OFFSET_BYTES = FP32_BYTES  # quant_state.offset: the mean of absmax, a 0-d fp32 tensor

_WHOLE_BYTES = {"fp32": FP32_BYTES, "bf16": HALF_BYTES, "fp16": HALF_BYTES}
_ROW_SCALED = ("fp8", "int8")  # one byte per weight, one fp32 scale per output row
_ROW_PARALLEL = ("attn.c_proj", "mlp.c_proj", "mlp.shared.c_proj")  # split along the input


class QuantizedWeights(BaseModel):
    """The bytes of a model's weights in one format; ``quantized + scales + unquantized ==
    total``. Ints, bytes, per GPU under ``parallelism``.

    >>> q = quantized_weight_bytes(GPTConfig.preset("llama-2-7b"), "nf4")
    >>> round(q.total / 2**30, 2)  # GiB
    3.88
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: WeightFormat = Field(description="The format of the linear layers' weights.")
    group_size: int | None = Field(
        description="Elements per scale: nf4's block, int4's group (the library default when "
        "not given); None for per-row (fp8, int8) and unscaled (fp32, bf16, fp16) formats.")
    quantized: int = Field(
        description="Packed data of the linear layers' weight matrices in the format (for "
        "fp32, bf16 and fp16 the matrices themselves, 4 or 2 bytes each).")
    scales: int = Field(
        description="Scales, zeros, absmax and double-quantization constants, with the "
        "per-tensor code tables bitsandbytes keeps.")
    unquantized: int = Field(
        description="What stays in 16 bits (32 for fp32): embeddings, norms, biases, lm_head, "
        "a mixture of experts' router and routed experts.")
    total: int = Field(description="quantized + scales + unquantized.")


def linear_bytes(weights: WeightFormat, rows: int, cols: int,
                 group_size: int | None = None) -> tuple[int, int]:
    """(packed data, scales and constants) in bytes of one ``rows x cols`` (out x in) linear
    weight stored as ``weights``; ``group_size`` None is the library default.

    A 4096 x 4096 linear in NF4: 4096 x 4096 / 2 bytes of data, 262,144 fp32 absmax and the
    16-level code:

    >>> linear_bytes("nf4", 4096, 4096)
    (8388608, 1048640)
    """
    n = rows * cols
    if weights in _WHOLE_BYTES:
        return _WHOLE_BYTES[weights] * n, 0
    if weights in _ROW_SCALED:
        return n, FP32_BYTES * rows
    g = _group(weights, group_size)
    data = -(-n // 2)  # two 4-bit values per byte
    if weights == "int4":
        groups = rows * -(-cols // g)
        return data, 2 * HALF_BYTES * groups  # a bf16 scale and a bf16 zero per group
    blocks = -(-n // g)
    if weights == "nf4":
        return data, FP32_BYTES * blocks + NF4_CODE_BYTES
    nested = -(-blocks // NESTED_BLOCKSIZE)
    return data, (blocks + FP32_BYTES * nested + DYNAMIC_CODE_BYTES + OFFSET_BYTES
                  + NF4_CODE_BYTES)


def _group(weights: str, group_size: int | None) -> int:
    return DEFAULT_GROUP_SIZE[weights] if group_size is None else group_size


def check_format(weights: object, group_size: object) -> tuple[WeightFormat, int | None]:
    """``(weights, group_size)`` checked; the group size the format uses (its default when
    None), None for a format without groups. Raises `ScaleplanError` naming the argument."""
    if not isinstance(weights, str) or weights.lower() not in WEIGHT_FORMATS:
        raise ScaleplanError(
            f"weights={shown(weights)} is not a weight format; use one of "
            f"{', '.join(WEIGHT_FORMATS)}")
    fmt: WeightFormat = weights.lower()  # type: ignore[assignment]
    if fmt not in DEFAULT_GROUP_SIZE:
        if group_size is not None:
            per = "per-row scales" if fmt in _ROW_SCALED else "no scales"
            raise ScaleplanError(
                f"group_size={shown(group_size)} with weights={fmt!r}: {fmt} has {per}, "
                "group-wise scales are not modelled yet; leave group_size=None, or use "
                "weights='int4', 'nf4' or 'nf4-dq'")
        return fmt, None
    allowed = INT4_GROUP_SIZES if fmt == "int4" else BNB_BLOCKSIZES
    if group_size is None:
        return fmt, DEFAULT_GROUP_SIZE[fmt]
    if isinstance(group_size, bool) or group_size not in allowed:
        lib = "torchao's Int4WeightOnlyConfig" if fmt == "int4" else "bitsandbytes"
        raise ScaleplanError(
            f"group_size={shown(group_size)} is not a group size {lib} accepts for "
            f"weights={fmt!r}; use one of {', '.join(map(str, allowed))} (default "
            f"{DEFAULT_GROUP_SIZE[fmt]})")
    return fmt, int(group_size)  # type: ignore[call-overload]


def _check_parallelism(cfg: GPTConfig, parallelism: object) -> Parallelism:
    if parallelism is None:
        return Parallelism()
    if not isinstance(parallelism, Parallelism):
        raise ScaleplanError(
            f"parallelism={shown(parallelism)} is not a Parallelism; pass "
            "Parallelism(tensor=..., expert=...) or None")
    if parallelism.pipeline > 1 or parallelism.zero_stage > 0:
        raise ScaleplanError(
            f"parallelism={parallelism!r}: quantized weights under pipeline stages or "
            "ZeRO/FSDP sharding are not modelled yet; use tensor and expert parallelism")
    parallelism.check(cfg)
    return parallelism


def _quantizable(t: Tensor) -> bool:
    """A ``torch.nn.Linear`` weight the libraries quantize by default (see the module)."""
    linear = (t.matmul and not t.routed and t.part != "lm_head") or t.name.startswith("project_")
    return linear and t.name != "mlp.router.weight"


def hf_linears(cfg: GPTConfig, t: Tensor) -> tuple[tuple[int, int], ...]:
    """The (out, in) shapes of the ``nn.Linear`` modules transformers stores for the weight
    ``t``: q, k and v apart for the fused ``c_attn``, ``t`` itself otherwise.

    >>> cfg = GPTConfig.preset("llama-3-8b")
    >>> [hf_linears(cfg, t) for t in parameters(cfg) if t.name == "attn.c_attn.weight"]
    [((4096, 4096), (1024, 4096), (1024, 4096))]
    """
    if t.name != "attn.c_attn.weight":
        return ((t.shape[0], t.shape[1]),)
    d, h = t.shape[1], cfg.head_dim
    return (cfg.n_head * h, d), (cfg.n_kv_head * h, d), (cfg.n_kv_head * h, d)


def _sharded(name: str, shape: tuple[int, int], t: int) -> tuple[int, int]:
    """One tensor-parallel rank's share of an (out, in) linear: the input split for the
    output projections (row parallel, Megatron-LM), the output split for the others."""
    rows, cols = shape
    if name.removesuffix(".weight") in _ROW_PARALLEL:
        return rows, -(-cols // t)
    return -(-rows // t), cols


def quantized_weight_bytes(cfg: GPTConfig, weights: WeightFormat = "bf16", *,
                           group_size: int | None = None,
                           parallelism: Parallelism | None = None) -> QuantizedWeights:
    """The bytes of ``cfg``'s weights with the linear layers stored as ``weights``, per GPU.

    ``group_size`` is nf4's block size or int4's group size (None: the library default, 64
    and 128); fp8 and int8 have one scale per output row and take no group size. What is
    quantized and what stays in 16 bits, and the bytes per format, are in the module's
    docstring. Under ``parallelism`` each of ``tensor`` ranks holds its slice of every
    linear (column parallel, the output projections row parallel), of the embedding and
    head (vocabulary parallel) and of the routed experts (also divided by ``expert``), and
    all the norms; per-tensor constants are held by every rank.

    >>> cfg = GPTConfig.preset("llama-2-7b")
    >>> bf16 = quantized_weight_bytes(cfg, "bf16")
    >>> bf16.total == 2 * 6_738_415_616
    True
    >>> nf4 = quantized_weight_bytes(cfg, "nf4-dq")
    >>> nf4.quantized * 2 == 6_476_005_376  # the linear layers' elements, two per byte
    True
    """
    fmt, g = check_format(weights, group_size)
    par = _check_parallelism(cfg, parallelism)
    data, scales, other = _weight_bytes(cfg, fmt, g, par.tensor, par.expert)
    return QuantizedWeights(weights=fmt, group_size=g, quantized=data, scales=scales,
                            unquantized=other, total=data + scales + other)


def _weight_bytes_body(cfg: GPTConfig, fmt: WeightFormat, g: int | None, tp: int,
                       ep: int) -> tuple[int, int, int]:
    counts = block_counts(cfg)
    width = FP32_BYTES if fmt == "fp32" else HALF_BYTES
    data = scales = other = 0
    for t in parameters(cfg):
        times = counts[t.blocks] if t.per_block else 1
        if not _quantizable(t):
            other += times * width * _unquantized_share(t, tp, ep)
            continue
        for shape in hf_linears(cfg, t):
            d, s = linear_bytes(fmt, *_sharded(t.name, shape, tp), g)
            data += times * d
            scales += times * s
    return data, scales, other


_weight_bytes = per_config(_weight_bytes_body)


def _unquantized_share(t: Tensor, tp: int, ep: int) -> int:
    """Elements of an unquantized tensor one rank holds: norms whole, the routed experts
    split over tensor x expert ranks, the rest (embeddings, head, biases) over tensor ranks."""
    if t.part == "norms" or tp * ep == 1:
        return int(t.numel)
    split = tp * ep if t.routed else tp
    return int(-(-t.numel // split))


def dequantized_linear_bytes(cfg: GPTConfig, weights: WeightFormat) -> int:
    """Bytes of the largest quantized linear weight dequantized to bf16: QLoRA (bitsandbytes'
    ``MatMul4Bit``) dequantizes one weight at a time in forward and again in backward, and
    LLM.int8's backward dequantizes its int8 weight, so one such 16-bit copy is live at a
    time. 0 for fp32, bf16 and fp16, which nothing dequantizes.

    >>> dequantized_linear_bytes(GPTConfig.preset("llama-2-7b"), "nf4")  # 11008 x 4096 MLP
    90177536
    """
    fmt, _ = check_format(weights, None)
    if fmt in _WHOLE_BYTES:
        return 0
    largest = max((rows * cols for t in parameters(cfg) if _quantizable(t)
                   for rows, cols in hf_linears(cfg, t)), default=0)
    return HALF_BYTES * largest
