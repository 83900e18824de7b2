"""Bytes torchtune's LoRA / QLoRA step saves for backward and holds, derived per operation.

``training_memory(..., implementation="torchtune", lora=LoRA(...), base_weights=...)`` models
torchtune 0.6.1's ``lora_finetune_single_device`` recipe with the ``lora_llama3_1`` /
``lora_llama3_2`` component builders (``torchtune/models/llama3_{1,2}/_component_builders.py``).
The recipe builds the model under ``training.set_default_dtype(dtype)`` with ``dtype: bf16``
(recipes/lora_finetune_single_device.py:431), so base, adapters, their gradients and AdamW's
states are all bf16 (``validate_expected_param_dtype`` checks the adapters' dtype, :479), and
``set_trainable_params`` (:441) freezes everything but ``lora_a`` and ``lora_b``.

Targets map to the builders' arguments: "q", "k", "v", "o" are ``lora_attn_modules``
``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``; ``apply_lora_to_mlp`` adapts ``w1``, ``w3``
and ``w2`` together (gate, up, down: all three or none). ``LoRALinear.forward``
(torchtune/modules/peft/lora.py:120-139) is ``F.linear(x, W)`` (or torchao's ``linear_nf4``
with ``quantize_base``) ``+ (alpha / r) * lora_b(lora_a(dropout(x)))``. With T = b s tokens,
e = 2 (bf16), r the rank, what autograd keeps, measured on CPU against those builders
(`scaleplan.reference.tune_lora_measure`):

- A frozen ``F.linear`` saves nothing of its input; ``linear_nf4`` (torchao 0.14.1
  ``dtypes/nf4tensor.py:1037-1048``) saves only the NF4 weight, a parameter. So a block keeps:
  each RMSNorm's fp32 input and fp32 rstd (T d 4 + T 4; the frozen scale's product keeps no
  normalised copy), SDPA's q, expanded k and v, output and log-sum-exp (as in a full
  fine-tune, `scaleplan.memory.tune_terms`), and of the SwiGLU MLP the gate's output, the
  activation's output and the up projection's output (3 T f e; the product is the frozen down
  projection's input, kept by nobody unless down has an adapter).
- Each adapter: ``lora_a`` keeps its input (the norm's bf16 output, one storage shared by the
  adapters reading it, the SDPA output already kept for "o", the MLP product T f e for
  "down"); with dropout each adapter keeps its own dropout output (T in e) and, where the input
  needs a gradient, the dropout's mask (bf16 on CPU, bool on CUDA: T in x 1); ``lora_b`` keeps
  ``lora_a``'s output (T r e).
- The first layer's input (the frozen embedding's output) needs no gradient: its first norm
  keeps nothing, nor its dropouts' masks; without a q, k or v adapter its attention keeps
  nothing (an "o" adapter then keeps the SDPA output itself). torchtune's builders need at
  least one attention adapter (``lora_attn_modules`` may not be empty), so the MLP's input
  always needs a gradient.
- The frozen embedding keeps no token ids; the frozen head keeps no input (an output adapter,
  ``apply_lora_to_output``, keeps the final norm's output and T r e); the final norm and the
  recipe's loss keep what they keep in a full fine-tune.
- ``enable_activation_checkpointing``: every layer's bf16 input (T d e).

Parameters, gradients and optimizer states: the base in bf16, or with ``quantize_base`` every
block linear as torchao's ``NF4Tensor`` (`nf4_linear_bytes`; the output projection stays
bf16: "quantize_base is not applied to final output_proj currently", llama3_1
_component_builders.py:251); the adapters, their gradients and AdamW's two states in bf16
(``torch.optim.AdamW`` over ``model.parameters()``: only parameters with a gradient get
states; its ``step`` counters are CPU tensors unless fused or capturable, torch/optim/adam.py).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.step_switches import (
    NO_SWITCHES,
    StepSwitches,
    loss_chunks,
    switch_moments,
)
from scaleplan.memory.tune_switches import with_chunked_loss
from scaleplan.memory.tune_terms import TUNE_LOGITS_BYTES, tune_buffer_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA, adapter_shapes
from scaleplan.model.params import count_params

__all__ = [
    "NF4_BLOCK_SIZE",
    "NF4_DEQUANTIZE_BYTES_PER_ELEMENT",
    "NF4_SCALER_BLOCK_SIZE",
    "TUNE_LORA_BASE_WEIGHTS",
    "check_tune_lora",
    "nf4_dequantize_bytes",
    "nf4_linear_bytes",
    "tune_lora_block_saved_terms",
    "tune_lora_model_states",
    "tune_lora_saved_terms",
    "tune_lora_stage_parts",
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


def _block_linears(cfg: GPTConfig) -> list[tuple[int, int]]:
    """(out, in) of one layer's linears: q, k, v, output_proj, w1, w2, w3."""
    d, a, k, h, f = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    return [(a * h, d), (k * h, d), (k * h, d), (d, a * h), (f, d), (d, f), (f, d)]


def nf4_dequantize_bytes(cfg: GPTConfig) -> int:
    """Bytes the eager dequantization of the largest NF4 weight holds at once
    (`NF4_DEQUANTIZE_BYTES_PER_ELEMENT` per element): ``linear_nf4`` dequantizes in forward
    (``F.linear(input, weight.to(input.dtype))``) and again in backward.

    >>> nf4_dequantize_bytes(GPTConfig(n_layer=1, n_head=4, n_embd=256, mlp_hidden=512))
    1835008
    """
    return NF4_DEQUANTIZE_BYTES_PER_ELEMENT * max(o * i for o, i in _block_linears(cfg))


def _norm(T: Any, d: int, prefix: str) -> dict[str, Any]:
    """RMSNorm with a frozen scale: the fp32 input and the fp32 rstd per token."""
    return {f"{prefix}_input": T * d * FP32, f"{prefix}_stats": T * FP32}


def _adapter_inputs(group: str, widths: list[int], T: Any, *, dropout: bool, grad_in: bool,
                    shared: Any, mask: int) -> dict[str, Any]:
    """What the adapters reading one tensor keep of it: without dropout the tensor itself once
    (``shared`` bytes: 0 when another op keeps it already), with dropout each adapter's dropout
    output and, where the tensor needs a gradient, its mask."""
    if not widths:
        return {}
    if not dropout:
        return {f"lora_{group}_a_input": shared} if shared else {}
    terms: dict[str, Any] = {f"lora_{group}_a_input": sum(T * n * HALF for n in widths)}
    if grad_in:
        terms[f"lora_{group}_dropout_mask"] = sum(T * n * mask for n in widths)
    return terms


def tune_lora_block_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                                checkpointing: bool = False, first: bool = False,
                                device: str = "cuda") -> dict[str, Any]:
    """Bytes one ``TransformerSelfAttentionLayer`` of torchtune's LoRA model keeps for backward
    (module docstring), bf16; ``first``: the first layer, whose input needs no gradient;
    ``device`` "cpu" (bf16 dropout masks) or "cuda" (bool).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
    ...                 norm="rmsnorm", mlp="swiglu", position="rope", bias=False)
    >>> t = tune_lora_block_saved_terms(cfg, LoRA(8, targets=("q", "v")), 2, 48)
    >>> t["lora_attn_a_input"], t["lora_b_input"], t["mlp_activations"]
    (49152, 3072, 294912)
    """
    d, a, k, h, f = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    T = b * s
    if checkpointing:
        return {"block_input": T * d * HALF}
    shapes = adapter_shapes(cfg, lora)
    attn_in = [shapes[t][0] for t in ("q", "k", "v") if t in shapes]
    has_o = "o" in shapes
    mlp_in = [shapes[t][0] for t in ("gate", "up") if t in shapes]
    dropout, mask = lora.dropout > 0, 1 if device == "cuda" else HALF
    kv_heads = 1 if k == 1 else a  # one key-value head: the expand + flatten is a view
    t: dict[str, Any] = {} if first else _norm(T, d, "norm1")
    t.update(_adapter_inputs("attn", attn_in, T, dropout=dropout, grad_in=not first,
                             shared=T * d * HALF, mask=mask))
    if attn_in or not first:
        t.update(attn_q=T * a * h * HALF, attn_k_v=2 * T * kv_heads * h * HALF,
                 attn_out=T * a * h * HALF, attn_lse=b * a * s * FP32)
    t.update(_adapter_inputs("o", [a * h] if has_o else [], T, dropout=dropout,
                             grad_in=bool(attn_in) or not first,
                             shared=0 if "attn_out" in t else T * a * h * HALF, mask=mask))
    t.update(_norm(T, d, "norm2"))  # an attention adapter (check_tune_lora) comes before it
    t.update(_adapter_inputs("mlp", mlp_in, T, dropout=dropout, grad_in=True,
                             shared=T * d * HALF, mask=mask))
    t["mlp_activations"] = 3 * T * f * HALF  # gate output, activation output, up output
    t.update(_adapter_inputs("down", [f] if "down" in shapes else [], T, dropout=dropout,
                             grad_in=True, shared=T * f * HALF, mask=mask))
    t["lora_b_input"] = len(shapes) * T * lora.rank * HALF
    return t


def tune_lora_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                          checkpointing: str = "none", device: str = "cuda",
                          layers: Any = None, output_adapter: bool = False,
                          buffers: bool = True) -> dict[str, Any]:
    """Bytes saved for backward by one forward + standard loss of torchtune's LoRA model: no
    embedding terms, the first layer and ``layers - 1`` others (`tune_lora_block_saved_terms`),
    the final norm, an output adapter's inputs (``output_adapter``: ``apply_lora_to_output``),
    the recipe's ``CrossEntropyLoss`` (fp32 log-softmax T V 4, shifted int64 labels T 8 and a
    4-byte weight total) and, with ``buffers``, the RoPE buffers (not saved, resident).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
    ...                 vocab_size=512, norm="rmsnorm", mlp="swiglu", position="rope",
    ...                 bias=False, tie_embeddings=True)
    >>> sum(tune_lora_saved_terms(cfg, LoRA(8, targets=("q", "v")), 2, 48,
    ...                           buffers=False).values())  # measured: 1,682,692
    1682692
    """
    n = cfg.n_layer if layers is None else layers
    T, d = b * s, cfg.n_embd
    ckpt = checkpointing == "full"
    first = tune_lora_block_saved_terms(cfg, lora, b, s, checkpointing=ckpt, first=True,
                                        device=device)
    rest = tune_lora_block_saved_terms(cfg, lora, b, s, checkpointing=ckpt, device=device)
    out: dict[str, Any] = {key: first.get(key, 0) + (n - 1) * rest.get(key, 0)
                           for key in (*rest, *(k for k in first if k not in rest))}
    out.update(_norm(T, d, "final_norm"))
    if output_adapter:
        out["lora_output_a_input"] = T * d * HALF  # the norm's output, or its dropout's
        if lora.dropout > 0:
            out["lora_output_dropout_mask"] = T * d * (1 if device == "cuda" else HALF)
        out["lora_output_b_input"] = T * lora.rank * HALF
    out["log_softmax"] = T * cfg.vocab_size * TUNE_LOGITS_BYTES
    out["targets"] = T * INDEX + FP32
    if buffers:
        out["rope_buffers"] = tune_buffer_bytes(cfg, "llama3_2")
    return out


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
        linears = _block_linears(cfg)
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


def tune_lora_stage_parts(cfg: GPTConfig, lora: LoRA, base_weights: str | None, b: Any,
                          s: Any, optimizer: str, checkpointing: str, device: str,
                          impl: str | None, hold_logits: bool,
                          sw: StepSwitches = NO_SWITCHES) -> tuple[Any, ...]:
    """`scaleplan.memory.stage.stage_parts`' result for torchtune's LoRA step on one GPU:
    states (`tune_lora_model_states`), saved terms (`tune_lora_saved_terms`, the chunked
    loss's with ``loss="chunked"``), no autocast copies, and the moments on top of weights,
    gradients and states: ``forward_end`` (the fp32 logits beside their log-softmax),
    ``backward_start`` (two fp32 T V gradients), ``optimizer_step``, with full checkpointing
    ``recompute`` (the loss side freed, one layer rebuilt) and, for an NF4 base, that moment
    (or, without checkpointing, the saved tensors less the loss side) plus the eager
    dequantization of the largest weight in a backward (`nf4_dequantize_bytes`), counted under
    ``recompute``. The recipe deletes the logits before backward: ``hold_logits`` is ignored."""
    W, G, O, temp = tune_lora_model_states(cfg, lora, base_weights, optimizer, device, impl)
    saved = tune_lora_saved_terms(cfg, lora, b, s, checkpointing=checkpointing, device=device)
    S = sum(saved.values())
    TV = b * s * cfg.vocab_size
    moments: dict[str, Any] = {"forward_end": S + TV * TUNE_LOGITS_BYTES,
                               "backward_start": S + 2 * TV * TUNE_LOGITS_BYTES,
                               "optimizer_step": temp}
    if sw.loss == "chunked":
        saved = with_chunked_loss(saved, cfg, b, s, "bf16-true", implementation="torchtune",
                                  compiled=False)
        chunks, size = loss_chunks(s)
        moments = switch_moments(moments, saved=saved, on_gpu=saved, copies=0, all_copies=0,
                                 TV=TV, TVc=b * size * cfg.vocab_size, e=HALF, G=G, largest=0,
                                 sw=sw, chunks=chunks, head_grad=0)
        S = sum(saved.values())
    loss_side = sum(v for key, v in saved.items()
                    if key in ("log_softmax", "targets", "logits", "logsumexp"))
    rebuilt = 0
    if checkpointing == "full":
        rebuilt = sum(tune_lora_block_saved_terms(cfg, lora, b, s, device=device).values())
        moments["recompute"] = S - loss_side + rebuilt
    if base_weights == "nf4":
        moments["recompute"] = S - loss_side + rebuilt + nf4_dequantize_bytes(cfg)
    return W, G, O, saved, 0, 0, 0, moments

