"""The states of torchtune's LoRA / QLoRA step and what its memory model covers.

`tune_lora_model_states` counts ``lora_finetune_single_device``'s parameters, gradients and
optimizer states (torchtune 0.6.1): the base in bf16, or with ``quantize_base`` every block
linear as torchao's ``NF4Tensor`` (`nf4_linear_bytes`; the output projection stays bf16:
"quantize_base is not applied to final output_proj currently", llama3_1
_component_builders.py:251); the adapters, their gradients and AdamW's two states in bf16
(``torch.optim.AdamW`` over ``model.parameters()`` makes states only for parameters with a
gradient; its ``step`` counters are CPU tensors unless fused or capturable,
torch/optim/adam.py). `check_tune_lora` and `check_tune_lora_compile` refuse, by name, what
`scaleplan.memory.tune_lora_terms` does not model. Sizes measured on CPU by
`scaleplan.reference.tune_lora_measure` (tests/test_tune_lora_memory.py).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA, adapter_shapes
from scaleplan.model.params import count_params

__all__ = [
    "NF4_BLOCK_SIZE",
    "NF4_DEQUANTIZE_BYTES_PER_ELEMENT",
    "NF4_SCALER_BLOCK_SIZE",
    "TUNE_LORA_BASE_WEIGHTS",
    "check_tune_lora",
    "check_tune_lora_compile",
    "nf4_dequantize_bytes",
    "nf4_linear_bytes",
    "tune_block_linears",
    "tune_lora_model_states",
]

HALF = 2  # bf16: torchtune's LoRA recipes run dtype bf16
FP32 = 4
INDEX = 8
MLP_ROLES = ("gate", "up", "down")  # apply_lora_to_mlp adapts w1, w3 and w2 together
TUNE_LORA_BASE_WEIGHTS = ("bf16", "nf4")
"""The frozen base as torchtune stores it: bf16 (``dtype: bf16``) or ``quantize_base=True``
(torchao's NF4Tensor, whose per-block scalers are themselves quantized to int8)."""
NF4_BLOCK_SIZE = 64  # to_nf4(tensor, block_size=64, scaler_block_size=256), nf4tensor.py:1061
NF4_SCALER_BLOCK_SIZE = 256
NF4_LEVELS = 16  # NF4Tensor.nf4: the 16 levels, in the weight's dtype
NF4_DEQUANTIZE_BYTES_PER_ELEMENT = 14
"""Bytes per weight element live at once while eager ``NF4Tensor.get_original_weight``
(nf4tensor.py:829-865) runs: both nibbles' int64 indices (``.to(torch.long)``: 4 + 4 bytes per
element, the two halves), their looked-up bf16 values (1 + 1), the two scaled halves (1 + 1)
and the stacked bf16 weight (2). Measured on CPU by `scaleplan.reference.tune_lora_measure`."""


def nf4_linear_bytes(rows: int, cols: int) -> int:
    """Bytes of one weight as torchao's ``NF4Tensor`` built from bf16 (``to_nf4``): two 4-bit
    codes per byte (n / 2), one int8 scaler per block of 64 (n / 64), one bf16 factor per 256
    scalers, the bf16 scaler mean and the 16 bf16 NF4 levels (32 bytes).

    >>> nf4_linear_bytes(512, 256)  # 65,536 + 2,048 + 8 x 2 + 2 + 32, measured
    67634
    """
    n = rows * cols
    scalers = n // NF4_BLOCK_SIZE
    return n // 2 + scalers + scalers // NF4_SCALER_BLOCK_SIZE * HALF + HALF + NF4_LEVELS * HALF


def tune_block_linears(cfg: GPTConfig) -> list[tuple[int, int]]:
    """(out, in) of one layer's linears: q, k, v, output_proj, w1, w2, w3.

    >>> tune_block_linears(GPTConfig(n_head=2, n_embd=8, mlp_hidden=16))[:2]
    [(8, 8), (8, 8)]
    """
    d, a, k, h, f = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    return [(a * h, d), (k * h, d), (k * h, d), (d, a * h), (f, d), (d, f), (f, d)]


def nf4_dequantize_bytes(cfg: GPTConfig) -> int:
    """Bytes the eager dequantization of the largest NF4 weight holds at once
    (`NF4_DEQUANTIZE_BYTES_PER_ELEMENT` per element): ``linear_nf4`` dequantizes in forward
    (``F.linear(input, weight.to(input.dtype))``) and again in backward.

    >>> nf4_dequantize_bytes(GPTConfig(n_layer=1, n_head=4, n_embd=256, mlp_hidden=512))
    1835008
    """
    return NF4_DEQUANTIZE_BYTES_PER_ELEMENT * max(o * i for o, i in tune_block_linears(cfg))


def _adapter_tensors(cfg: GPTConfig, lora: LoRA, output_adapter: bool) -> list[int]:
    """Elements of every adapter tensor of the model (lora_a and lora_b of each)."""
    r = lora.rank
    sizes = [r * n for n_in, n_out in adapter_shapes(cfg, lora).values() for n in (n_in, n_out)]
    head = [r * cfg.n_embd, r * cfg.vocab_size] if output_adapter else []
    return sizes * cfg.n_layer + head


def tune_lora_model_states(cfg: GPTConfig, lora: LoRA, base_weights: str | None,
                           optimizer: str, device: str, impl: str | None, *,
                           output_adapter: bool = False) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer states, optimizer temporaries) bytes of torchtune's LoRA
    step: the base in bf16 or with its block linears in NF4 (`nf4_linear_bytes`), the bf16
    adapters, their bf16 gradients and AdamW's two bf16 states (``step`` counters on the CPU),
    and torch AdamW's temporaries over the adapters (foreach: one buffer of all of them;
    for-loop: two of the largest; fused: none).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32,
    ...                 norm="rmsnorm", mlp="swiglu", position="rope", bias=False)
    >>> tune_lora_model_states(cfg, LoRA(2, targets=("o",)), "bf16", "adamw", "cuda", None)
    (2416, 64, 128, 64)

    (base 1,176 bf16 parameters: tied wte 128, q/k/v/o 256, MLP 768, norms 24; o's adapter
    2 x (8 + 8) = 32 bf16 parameters, their gradients, two states, one foreach buffer.)
    """
    sizes = _adapter_tensors(cfg, lora, output_adapter)
    n = sum(sizes)
    W = count_params(cfg).total * HALF
    if base_weights == "nf4":
        linears = tune_block_linears(cfg)
        W += cfg.n_layer * sum(nf4_linear_bytes(o, i) - o * i * HALF for o, i in linears)
    impl = impl or ("foreach" if device == "cuda" else "for-loop")
    temp = {"foreach": n * HALF, "for-loop": 2 * max(sizes) * HALF}.get(impl, 0)
    return W + n * HALF, n * HALF, 2 * n * HALF, temp


def check_tune_lora(cfg: GPTConfig, lora: LoRA, base_weights: Any, *, precision: str,
                    parallelism: Any) -> None:
    """Refuse, by name, what `scaleplan.memory.tune_lora_terms` does not model for torchtune.

    >>> check_tune_lora(GPTConfig(), LoRA(8, targets=("q", "gate")), None,
    ...                 precision="bf16-true", parallelism=None)
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: lora=LoRA(..., targets=('q', 'gate')) ...
    """
    if base_weights is not None and base_weights not in TUNE_LORA_BASE_WEIGHTS:
        raise ScaleplanError(
            f"base_weights={base_weights!r} with implementation='torchtune': its quantize_base "
            "stores the base as torchao's NF4Tensor (scalers quantized to int8 already); use "
            "base_weights='nf4', or 'bf16'")
    if precision != "bf16-true":
        raise ScaleplanError(f"lora with implementation='torchtune' and precision={precision!r}"
                             " is not modelled yet; its LoRA recipes run dtype bf16: use "
                             "precision='bf16-true'")
    if not any(t in lora.targets for t in ("q", "k", "v", "o")):
        raise ScaleplanError(
            f"lora=LoRA(..., targets={lora.targets!r}) with implementation='torchtune': its "
            "builders need at least one attention target (lora_attn_modules may not be "
            "empty); add 'q', 'k', 'v' or 'o'")
    mlp = [t for t in MLP_ROLES if t in lora.targets]
    if mlp and len(mlp) != len(MLP_ROLES):
        raise ScaleplanError(
            f"lora=LoRA(..., targets={lora.targets!r}) with implementation='torchtune': its "
            "apply_lora_to_mlp adapts gate, up and down together; name all three or none")
    if cfg.mlp != "swiglu" or cfg.qkv_bias:
        raise ScaleplanError("lora with implementation='torchtune' is modelled for its Llama 3.x "
                             "builders (lora_llama3_1, lora_llama3_2: SwiGLU, no q/k/v bias); "
                             f"not with mlp={cfg.mlp!r}, qkv_bias={cfg.qkv_bias}")
    if parallelism is not None and parallelism.gpus > 1:
        raise ScaleplanError("lora with parallelism is not modelled yet; plan one GPU "
                             "(lora_finetune_single_device)")


def check_tune_lora_compile(lora: LoRA, *, loss: str) -> None:
    """Refuse, by name, what ``compile=True`` with torchtune's LoRA recipe was not measured
    with: the standard loss (the LoRA recipe compiles it whole, ``compile_loss``), adapter
    dropout, and targets without a q, k or v adapter.

    >>> check_tune_lora_compile(LoRA(8, targets=("q", "v")), loss="standard")
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: compile=True with lora and loss='standard' ...
    """
    if loss != "chunked":
        raise ScaleplanError(f"compile=True with lora and loss={loss!r} is not modelled yet "
                             "(the LoRA recipe then compiles the whole cross-entropy; not "
                             "measured); use loss='chunked' (its configs' "
                             "CEWithChunkedOutputLoss) or compile=False")
    if lora.dropout > 0:
        raise ScaleplanError(f"compile=True with lora dropout={lora.dropout} is not modelled "
                             "yet (measured with dropout 0, its configs' default); use "
                             "dropout=0 or compile=False")
    if not any(t in lora.targets for t in ("q", "k", "v")):
        raise ScaleplanError(f"compile=True with lora targets={lora.targets!r} is not modelled "
                             "yet (measured with q, k or v adapted); add one or use "
                             "compile=False")
