"""The states of a LoRA / QLoRA step: the frozen base's weights in their storage, the adapters'
weights, gradients and optimizer states (`lora_model_states`), and which options the LoRA memory
model covers (`check_lora`).

With LoRA only the adapters train: no gradient and no optimizer state exists for the base
(peft sets ``requires_grad=False`` on every base parameter). The base is stored in the
precision's parameter dtype, or as ``base_weights`` says (bf16, or quantized by bitsandbytes:
`scaleplan.memory.quantized`). What the step saves for backward is
`scaleplan.memory.lora_terms`.
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.checks import one_of
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.hf_terms import hf_family
from scaleplan.memory.quantized import quantized_weight_bytes
from scaleplan.memory.states import (
    ADAMW_STEP_BYTES,
    BNB_BLOCK_SIZE,
    BNB_MIN_8BIT_SIZE,
    weight_bytes,
)
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.lora import LoRA, adapter_params, adapter_shapes
from scaleplan.model.params import count_params

__all__ = ["ADAPTER_BYTES", "BASE_WEIGHTS", "LORA_FAMILIES", "BaseWeights", "check_lora",
           "lora_model_states"]

LORA_FAMILIES = ("llama", "qwen2", "mistral", "gpt2")
"""transformers modeling code whose LoRA saved tensors `scaleplan.memory.lora_terms` derives."""

FP32 = 4
_AUTOCAST = frozenset({"bf16-mixed", "16-mixed"})


BaseWeights = Literal["bf16", "int8", "nf4", "nf4-dq"]
BASE_WEIGHTS: tuple[str, ...] = ("bf16", "int8", "nf4", "nf4-dq")
"""How the frozen base is stored: bf16, or quantized as bitsandbytes does (int8: LLM.int8();
nf4: QLoRA's 4-bit NormalFloat; nf4-dq: with its double-quantized constants)."""

ADAPTER_BYTES = FP32
"""Adapters, their gradients and their optimizer states are fp32: peft's ``get_peft_model``
casts 16-bit adapter weights to fp32 (``autocast_adapter_dtype=True``, its default), whatever
the base's dtype; under autocast their matmuls run on 16-bit copies."""


def _adapter_tensors(cfg: GPTConfig, lora: LoRA) -> list[tuple[Any, Any]]:
    """Shapes of one block's adapter tensors: A (r, in) and B (out, r) per adapted matrix."""
    r = lora.rank
    return [shape for n_in, n_out in adapter_shapes(cfg, lora).values()
            for shape in ((r, n_in), (n_out, r))]


def _state_bytes(optimizer: str, rows: Any, cols: Any) -> Any:
    """One fp32 tensor's optimizer state (`scaleplan.memory.states.optimizer_state_bytes`'s
    rules, for a tensor instead of a model)."""
    numel = rows * cols
    if optimizer == "adamw":
        return 2 * numel * ADAPTER_BYTES + ADAMW_STEP_BYTES
    if optimizer in ("sgd-momentum", "lion"):
        return numel * ADAPTER_BYTES
    if optimizer == "adafactor":
        return (rows + cols) * ADAPTER_BYTES
    if optimizer == "adamw-8bit":  # bitsandbytes: 32-bit states below 4096 elements
        if numel < BNB_MIN_8BIT_SIZE:
            return 2 * numel * ADAPTER_BYTES
        return 2 * (numel + 4 * -(-numel // BNB_BLOCK_SIZE))
    return 0  # sgd


def lora_model_states(cfg: GPTConfig, lora: LoRA, precision: Precision, optimizer: str,
                      base_weights: str | None, device: str,
                      impl: str | None) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer states, optimizer temporaries) bytes of a LoRA step.

    Weights: the frozen base in its stored dtype (``base_weights`` None: the precision's
    parameter dtype, `scaleplan.memory.states.weight_bytes`; "bf16": 2 bytes per parameter;
    quantized: `scaleplan.memory.quantized.quantized_weight_bytes`, embeddings, norms and head
    in 16 bits) plus the fp32 adapters.
    Gradients and optimizer states: the adapters' only, fp32. A paged optimizer
    ("paged-adamw-8bit") is counted as adamw-8bit held on the GPU: paging moves its states to
    host memory only under memory pressure. Temporaries as
    `scaleplan.memory.sharding.optimizer_temporaries`, over the adapters: torch's foreach
    AdamW one buffer of all of them, the for-loop two of the largest, fused none.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32,
    ...                 block_size=4)
    >>> lora_model_states(cfg, LoRA(2, targets=("o",)), "32-true", "adamw", None, "cuda", None)
    (4320, 128, 264, 128)

    (base 1,048 parameters x 4: wte 128, wpe 32, the block 872, ln_f 16; 32 adapter
    parameters x 4; Adam's two moments 2 x 32 x 4 and a
    4-byte step per tensor; the foreach buffer 32 x 4.)
    """
    n = adapter_params(cfg, lora)
    base = count_params(cfg).total
    if base_weights is None:
        W_base = weight_bytes(base, precision)
    else:
        W_base = quantized_weight_bytes(cfg, base_weights).total  # type: ignore[arg-type]
    tensors = _adapter_tensors(cfg, lora)
    O = cfg.n_layer * sum(_state_bytes(optimizer, rows, cols) for rows, cols in tensors)
    temp = 0
    if optimizer == "adamw":
        impl = impl or ("foreach" if device == "cuda" else "for-loop")
        if impl == "foreach":
            temp = n * ADAPTER_BYTES
        elif impl == "for-loop":
            temp = 2 * max(rows * cols for rows, cols in tensors) * ADAPTER_BYTES
    return int(W_base + n * ADAPTER_BYTES), int(n * ADAPTER_BYTES), int(O), int(temp)


def check_lora(cfg: GPTConfig, lora: Any, base_weights: Any, *, precision: Precision,
               implementation: str, parallelism: Any) -> None:
    """Refuse, naming the option, a ``lora`` / ``base_weights`` the memory model does not cover.

    >>> check_lora(GPTConfig(), None, "nf4", precision="bf16-mixed", implementation="hf",
    ...            parallelism=None)
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: base_weights='nf4' is for a frozen base: ...
    """
    if lora is None:
        if base_weights is not None:
            raise ScaleplanError(f"base_weights={base_weights!r} is for a frozen base: it needs "
                                 "lora=LoRA(...); drop base_weights for full fine-tuning")
        return
    if not isinstance(lora, LoRA):
        raise ScaleplanError(f"lora={shown(lora)} must be a scaleplan.LoRA, e.g. "
                             "lora=LoRA(8, targets=('q', 'v')), or None")
    if implementation == "torchtune":  # its own LoRA recipe: scaleplan.memory.tune_lora_terms
        from scaleplan.memory.tune_lora_states import check_tune_lora

        check_tune_lora(cfg, lora, base_weights, precision=precision, parallelism=parallelism)
        adapter_shapes(cfg, lora)  # a target the config does not have, named
        return
    if parallelism is not None and parallelism.gpus > 1:
        raise ScaleplanError("lora with parallelism is not modelled yet; plan one GPU "
                             "(data-parallel replicas hold the same)")
    if implementation == "litgpt":  # scaleplan.memory.litgpt_lora_terms.check_litgpt_lora
        return
    if base_weights is not None:
        one_of("base_weights", base_weights, BASE_WEIGHTS)
        if hf_family(cfg) == "gpt2":
            raise ScaleplanError(f"base_weights={base_weights!r} on GPT-2's layout is not "
                                 "modelled yet (its 16-bit residual stream was not measured); "
                                 "use base_weights=None")
        if precision not in _AUTOCAST:
            raise ScaleplanError(f"base_weights={base_weights!r} with precision={precision!r} "
                                 "is not modelled yet: a 16-bit or quantized base computes "
                                 "under autocast; use precision='bf16-mixed'")
    if implementation != "hf":
        raise ScaleplanError(f"lora with implementation={implementation!r} is not modelled "
                             "yet; use implementation='hf' (peft wraps transformers' models) "
                             "or 'litgpt' (litgpt's LoRA GPT) or 'torchtune' (its "
                             "lora_finetune_single_device)")
    family = hf_family(cfg)
    if family not in LORA_FAMILIES:
        raise ScaleplanError(f"lora on transformers' {family} layout is not modelled yet; it "
                             "is for Llama, Qwen2, Mistral and GPT-2 layouts")
    if precision not in ("32-true", *_AUTOCAST):
        raise ScaleplanError(f"lora with precision={precision!r} is not modelled yet; use "
                             "'32-true' or 'bf16-mixed' (adapters train in fp32; "
                             "base_weights='bf16' stores the frozen base in bf16)")
    adapter_shapes(cfg, lora)  # a target the config does not have, named
