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

Parameters, gradients and optimizer states, and the options covered:
`scaleplan.memory.tune_lora_states`. ``compile: True``: `tune_lora_compiled_block_terms`.
``enable_activation_offloading`` (with checkpointing, as the recipe requires):
`tune_lora_offload` (tests/test_tune_lora_offload.py). Measured
(tests/test_tune_lora_memory.py): 30 eager cases exact (targets q,v / all / o, bf16 and NF4,
dropout 0 and 0.05, checkpointing, an output adapter, the chunked loss), 5 compiled cases
exact, 8 whole-step peaks within 3 %. Compile with checkpointing is composed from the two
(each compiled layer inside the checkpoint keeps its input; the rebuilt layer keeps what the
compiled partition keeps), not measured as a whole. ``apply_lora_to_output`` is counted by
`tune_lora_saved_terms` (``output_adapter``) but `scaleplan.LoRA` has no role for it, so
``training_memory`` does not take it.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.step_switches import (
    NO_SWITCHES,
    StepSwitches,
    loss_chunks,
    switch_moments,
)
from scaleplan.memory.tune_lora_states import (
    FP32,
    HALF,
    INDEX,
    nf4_dequantize_bytes,
    tune_block_linears,
    tune_lora_model_states,
)
from scaleplan.memory.tune_switches import tune_offload_kept_terms, with_chunked_loss
from scaleplan.memory.tune_terms import TUNE_LOGITS_BYTES, tune_buffer_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA, adapter_shapes

__all__ = [
    "tune_lora_block_saved_terms",
    "tune_lora_compiled_block_terms",
    "tune_lora_offload",
    "tune_lora_saved_terms",
    "tune_lora_stage_parts",
]


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


def tune_lora_compiled_block_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                                   first: bool = False,
                                   base_weights: str | None = None) -> dict[str, Any]:
    """Bytes one LoRA layer keeps for backward under ``compile: True`` (``compile_model``: each
    layer compiled on its own), what AOT autograd's partition saved, measured on CPU
    (`scaleplan.reference.tune_lora_measure.compiled_grid`; dropout 0): the layer's input and
    the two norms' fp32 rstd (T 4 each; the first layer keeps neither of its input's), the
    first norm's bf16 output when q, k or v has an adapter, SDPA's q, expanded k and v, output
    and log-sum-exp, the residual after attention, the second norm's output when gate and up
    have adapters, the gate's and the up projection's outputs (2 T f e) and their product when
    down has one, and every ``lora_b`` input (T r e); the fp32 norm copies and the activation
    are recomputed. With an NF4 base the partition also keeps the bf16 dequantized weight of
    every block linear whose input needs a gradient (all seven; in the first layer not q, k, v).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
    ...                 norm="rmsnorm", mlp="swiglu", position="rope", bias=False)
    >>> sum(tune_lora_compiled_block_terms(cfg, LoRA(8, targets=("q", "v")), 2, 48).values())
    546048
    """
    d, a, k, h, f = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    T = b * s
    shapes = adapter_shapes(cfg, lora)
    kv_heads = 1 if k == 1 else a
    t: dict[str, Any] = {} if first else {"block_input": T * d * HALF, "norm1_stats": T * FP32}
    if any(r in shapes for r in ("q", "k", "v")):
        t["norm1_output"] = T * d * HALF
    t.update(attn_q=T * a * h * HALF, attn_k_v=2 * T * kv_heads * h * HALF,
             attn_out=T * a * h * HALF, attn_lse=b * a * s * FP32,
             attn_residual=T * d * HALF, norm2_stats=T * FP32)
    if "gate" in shapes:
        t["norm2_output"] = T * d * HALF
    t["mlp_activations"] = (3 if "down" in shapes else 2) * T * f * HALF
    t["lora_b_input"] = len(shapes) * T * lora.rank * HALF
    if base_weights == "nf4":
        linears = tune_block_linears(cfg)[3 if first else 0:]  # q, k, v first
        t["dequantized_weights"] = HALF * sum(o * i for o, i in linears)
    return t


def tune_lora_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                          checkpointing: str = "none", device: str = "cuda",
                          layers: Any = None, output_adapter: bool = False,
                          buffers: bool = True, compiled: bool = False,
                          base_weights: str | None = None) -> dict[str, Any]:
    """Bytes saved for backward by one forward + standard loss of torchtune's LoRA model: no
    embedding terms, the first layer and ``layers - 1`` others (`tune_lora_block_saved_terms`),
    the final norm, an output adapter's inputs (``output_adapter``: ``apply_lora_to_output``),
    the recipe's ``CrossEntropyLoss`` (fp32 log-softmax T V 4, shifted int64 labels T 8 and a
    4-byte weight total) and, with ``buffers``, the RoPE buffers (not saved, resident).
    ``compiled`` (without checkpointing): the layers as `tune_lora_compiled_block_terms` (the
    loss side is then the chunked compiled loss's, `scaleplan.memory.tune_switches`).

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
    if compiled and not ckpt:
        first = tune_lora_compiled_block_terms(cfg, lora, b, s, first=True,
                                               base_weights=base_weights)
        rest = tune_lora_compiled_block_terms(cfg, lora, b, s, base_weights=base_weights)
    else:
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


def tune_lora_stage_parts(cfg: GPTConfig, lora: LoRA, base_weights: str | None, b: Any,
                          s: Any, optimizer: str, checkpointing: str, device: str,
                          impl: str | None, hold_logits: bool,
                          sw: StepSwitches = NO_SWITCHES,
                          compiled: bool = False) -> tuple[Any, ...]:
    """`scaleplan.memory.stage.stage_parts`' result for torchtune's LoRA step on one GPU:
    states (`tune_lora_model_states`), saved terms (`tune_lora_saved_terms`, the chunked
    loss's with ``loss="chunked"``), no autocast copies, and the moments on top of weights,
    gradients and states: ``forward_end`` (the fp32 logits beside their log-softmax),
    ``backward_start`` (two fp32 T V gradients), ``optimizer_step``, with full checkpointing
    ``recompute`` (the loss side freed, one layer rebuilt) and, for an NF4 base, that moment
    (or, without checkpointing, the saved tensors less the loss side) plus the eager
    dequantization of the largest weight in a backward (`nf4_dequantize_bytes`), counted under
    ``recompute``. ``compiled`` (``compile: True``, with the chunked loss the recipe then
    compiles): the layers' terms as compiled (`tune_lora_compiled_block_terms`; under
    checkpointing the rebuilt layer), the compiled chunked loss's terms and moments, and no
    eager dequantization (the partition keeps the dequantized weights among the saved
    tensors). ``activation_offload`` (checkpointed): `tune_lora_offload` on those terms and
    moments. The recipe deletes the logits before backward: ``hold_logits`` is ignored."""
    W, G, O, temp = tune_lora_model_states(cfg, lora, base_weights, optimizer, device, impl)
    saved = tune_lora_saved_terms(cfg, lora, b, s, checkpointing=checkpointing, device=device,
                                  compiled=compiled, base_weights=base_weights)
    S = sum(saved.values())
    TV = b * s * cfg.vocab_size
    moments: dict[str, Any] = {"forward_end": S + TV * TUNE_LOGITS_BYTES,
                               "backward_start": S + 2 * TV * TUNE_LOGITS_BYTES,
                               "optimizer_step": temp}
    if sw.loss == "chunked":
        saved = with_chunked_loss(saved, cfg, b, s, "bf16-true", implementation="torchtune",
                                  compiled=compiled)
        chunks, size = loss_chunks(s)
        moments = switch_moments(moments, saved=saved, on_gpu=saved, copies=0, all_copies=0,
                                 TV=TV, TVc=b * size * cfg.vocab_size, e=HALF, G=G, largest=0,
                                 sw=StepSwitches(loss="chunked"), chunks=chunks, head_grad=0)
        S = sum(saved.values())
    loss_side = sum(v for key, v in saved.items()
                    if key in ("log_softmax", "targets", "logits", "logsumexp"))
    rebuilt = 0
    if checkpointing == "full":
        block = (tune_lora_compiled_block_terms(cfg, lora, b, s, base_weights=base_weights)
                 if compiled else tune_lora_block_saved_terms(cfg, lora, b, s, device=device))
        rebuilt = sum(block.values())
        moments["recompute"] = S - loss_side + rebuilt
    if base_weights == "nf4" and not compiled:
        moments["recompute"] = S - loss_side + rebuilt + nf4_dequantize_bytes(cfg)
    if sw.activation_offload:
        saved, moments = tune_lora_offload(cfg, b, s, saved=saved, moments=moments)
    return W, G, O, saved, 0, 0, 0, moments


def tune_lora_offload(cfg: GPTConfig, b: Any, s: Any, *, saved: dict[str, Any],
                      moments: dict[str, Any], streams: bool = True
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(saved terms left on the device, moments) of torchtune's checkpointed LoRA step under
    ``enable_activation_offloading`` (``OffloadActivations``,
    torchtune/training/_activation_offloading.py, around the model's forward only;
    `scaleplan.memory.tune_switches` tells what its hooks see), from the step's terms and
    moments without it. Its pack hook (:133-200) sees each checkpointed layer's input (saved by
    ``torch.utils.checkpoint`` before its own hooks take over the layer: the adapters' inputs
    inside are recomputed, never offloaded), and the final norm's fp32 input (packed twice),
    its rstd (twice) and its frozen scale (a parameter, kept); the frozen embedding saves no
    token ids. `tune_offload_kept_terms` stays (RoPE buffers, the loss side, a statistic
    under 1024 bytes); the rest leaves. With ``streams`` (its default) the forward stash
    (:157-163) keeps the tensors of the last ``max_fwd_stash_size`` = 5 packs on the device
    until backward's first hook: the final norm's five packs (the frozen scale saves no
    normalised input, so one fewer than a full fine-tune's) leave the last layer's input among
    them, so the stash is the final norm's offloaded tensors and that input (T d e): the
    forward-end, backward-start and output-layer moments lose the offloaded bytes less the
    stash. With ``compile: True`` the hooks see the same tensors: ``compile_model`` compiles
    each ``TransformerSelfAttentionLayer`` (training/_compile.py:54-57), the checkpoint
    wrapper put around it afterwards (recipes/lora_finetune_single_device.py:443-449) saves
    its input eagerly, the final norm stays eager and the compiled loss runs outside the
    context. The ``recompute`` moment is the last layer's (the LoRA step's gradients are small;
    every other moment of backward holds less): without offloading the device holds every
    layer's input then; offloaded, only that layer's input, brought back, so it loses
    (n - 1) T d e; with streams the final norm's fp32 input, brought back from host by
    ``PowBackward`` (the forward stash is emptied by the hook of the norm's first node, :325-
    327), waits in ``bwd_tensor_stash`` until the hook of the next node that unpacks an
    offloaded tensor, the last layer's first node, which runs the recompute (:263-266,
    334-338): T d 4 more. Measured on CPU (`scaleplan.reference.tune_offload`
    ``lora_offload_grid``, tests/data/tune_lora_offload.json).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
    ...                 vocab_size=512, norm="rmsnorm", mlp="swiglu", position="rope",
    ...                 bias=False)
    >>> saved = {"block_input": 98304, "final_norm_input": 98304, "final_norm_stats": 384,
    ...          "rope_buffers": 32896, "log_softmax": 196608, "targets": 808}
    >>> on_gpu, m = tune_lora_offload(cfg, 2, 48, saved=saved, moments={
    ...     "forward_end": 550184, "recompute": 1126144})
    >>> on_gpu["offload_in_flight"], m  # 196,608 leave, 147,456 stay; recompute -49,152 + 98,304
    (147456, {'forward_end': 501032, 'recompute': 1175296})
    """
    T, d = b * s, cfg.n_embd
    kept = tune_offload_kept_terms(cfg, saved, b, s)
    offloaded = sum(saved.values()) - sum(kept.values())
    final_norm = sum(v for k, v in saved.items() if k.startswith("final_norm"))
    layer_input = T * d * HALF
    stash = (final_norm - sum(v for k, v in kept.items() if k.startswith("final_norm"))
             + layer_input) * streams
    out = dict(moments)
    for k in ("forward_end", "backward_start", "head_backward"):
        if k in out:
            out[k] = out[k] - offloaded + stash
    if "recompute" in out:
        out["recompute"] = (out["recompute"] - (cfg.n_layer - 1) * layer_input
                            + T * d * FP32 * streams)
    return {**kept, "offload_in_flight": stash}, out

