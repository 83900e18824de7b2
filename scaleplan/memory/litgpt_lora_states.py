"""The states and the worst moments of litgpt 0.5.13's LoRA / QLoRA step
(``litgpt/finetune/lora.py``): `litgpt_lora_model_states` (the frozen base, the adapters, their
gradients and optimizer states, what QLoRA's set-up adds), `litgpt_lora_moments` and
`litgpt_lora_stage_parts`, which `scaleplan.memory.stage.stage_parts` returns for
``implementation="litgpt"`` with ``lora``. What the step saves for backward is
`scaleplan.memory.litgpt_lora_terms`.

The loop (finetune/lora.py:354-365) runs ``model(input_ids, lm_head_chunk_size=128)``, whose
chunks Fabric's ``convert_output`` casts to fp32 (lightning/fabric/wrappers.py:138), slices the
last chunk, takes ``chunked_cross_entropy`` and its backward, then the optimizer's step; the
logits list stays referenced until the next forward returns. Checked against whole steps of
litgpt's LoRA GPT on CPU (`scaleplan.reference.litgpt_lora_measure.measure_litgpt_lora_step`).
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.dtypes import larger, smaller
from scaleplan.memory.litgpt_lora_terms import (
    HEAD_CHUNK,
    QUANTIZED_BASES,
    litgpt_bnb_saved_inputs,
    litgpt_lora_adapter_shapes,
    litgpt_lora_loss_saved_terms,
    litgpt_lora_saved_terms,
    model_bytes,
)
from scaleplan.memory.quantized import WeightFormat, linear_bytes
from scaleplan.memory.states import ADAMW_STEP_BYTES
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.lora import LoRA
from scaleplan.model.params import count_params

__all__ = ["BNB_STATE_BYTES", "PAGED_MIN_NUMEL", "litgpt_bnb_tensor_peak",
           "litgpt_lora_model_states", "litgpt_lora_moments", "litgpt_lora_stage_parts"]

PAGED_MIN_NUMEL = 100_000  # bitsandbytes optimizer.py get_state_buffer: smaller tensors not paged
BNB_STATE_BYTES = 8  # 32-bit (Paged)AdamW: state1 and state2 fp32 per element, any param dtype
FP32 = 4
HALF = 2


def _base_bytes(cfg: GPTConfig, base_weights: str | None, e: int) -> int:
    """The frozen base: every parameter in the model's dtype, or under QLoRA every linear
    (fused qkv, proj, fc_1, fc_2, proj, the head) in 4 bits and the rest in bf16."""
    total = count_params(cfg).total
    if base_weights not in QUANTIZED_BASES:
        return total * e
    d, f, V = cfg.n_embd, cfg.mlp_hidden, cfg.vocab_size
    qkv, ah = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, cfg.n_head * cfg.head_dim
    linears = [(qkv, d), (d, ah), (f, d), (f, d), (d, f)] * cfg.n_layer + [(V, d)]
    fmt: WeightFormat = "nf4-dq" if base_weights == "nf4-dq" else "nf4"
    packed = sum(sum(linear_bytes(fmt, rows, cols)) for rows, cols in linears)
    return packed + (total - sum(rows * cols for rows, cols in linears)) * HALF


def litgpt_lora_model_states(cfg: GPTConfig, lora: LoRA, precision: Precision,
                             base_weights: str | None, device: str,
                             impl: str | None) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer states, optimizer temporaries) bytes of litgpt's LoRA
    step. Adapters (`litgpt_lora_adapter_shapes`, and a LoRA head's r (d + V)) in the model's
    dtype, with their gradients; torch's AdamW (the only optimizer modelled here) keeps two
    states in their dtype and a step per tensor; its temporaries as
    `scaleplan.memory.lora_states.lora_model_states` counts them (foreach: one buffer of all
    adapters; for-loop: two of the largest tensor; fused: none).

    QLoRA: the base in 4 bits (`_base_bytes`) plus the swapped-out embedding the optimizer
    still holds (V d) and the ``StableEmbedding``'s LayerNorm (2 d), in bf16; the new
    embedding and its LayerNorm take gradients no optimizer zeroes (V d + 2 d); bitsandbytes'
    32-bit PagedAdamW keeps two fp32 states per adapter element, in CUDA managed memory (not
    counted on ``device="cuda"``) for tensors of `PAGED_MIN_NUMEL` elements or more; its fused
    step has no temporaries counted.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, position="rope", norm="rmsnorm", mlp="swiglu",
    ...                 tie_embeddings=False)
    >>> litgpt_lora_model_states(cfg, LoRA(2, targets=("q", "v")), "bf16-true", None, "cpu",
    ...                          "for-loop")
    (1968, 128, 264, 128)

    (base 920 parameters x 2: wte and head 128 each, qkv 8 x 24, proj 8 x 8, fc_1, fc_2, proj
    8 x 16 each, norms 3 x 8; adapters A 4 x 8 and B 16 x 2, 64 x 2 bytes, as their gradients;
    AdamW 2 x 64 x 2 + a 4-byte step per tensor; the for-loop's two temporaries of the largest
    tensor, 2 x 32 x 2.)
    """
    e = model_bytes(precision)
    tensors = _adapter_numels(cfg, lora)
    n = sum(tensors)
    W = _base_bytes(cfg, base_weights, e) + n * e
    G = n * e
    if base_weights in QUANTIZED_BASES:
        swap = (cfg.vocab_size * cfg.n_embd + 2 * cfg.n_embd) * e
        O = sum(BNB_STATE_BYTES * x for x in tensors
                if device == "cpu" or x < PAGED_MIN_NUMEL)
        return int(W + swap), int(G + swap), int(O), 0
    O = 2 * n * e + ADAMW_STEP_BYTES * len(tensors)
    impl = impl or ("foreach" if device != "cpu" else "for-loop")
    temp = n * e if impl == "foreach" else 2 * max(tensors) * e if impl == "for-loop" else 0
    return int(W), int(G), int(O), int(temp)


def _adapter_numels(cfg: GPTConfig, lora: LoRA) -> list[Any]:
    """The element count of every adapter tensor of the model: each block's, and a LoRA
    head's A (r x d) and B (V x r)."""
    per_layer = [rows * cols for rows, cols in litgpt_lora_adapter_shapes(cfg, lora)]
    head = [lora.rank * cfg.n_embd, cfg.vocab_size * lora.rank] if "head" in lora.targets \
        else []
    return per_layer * cfg.n_layer + head


def litgpt_lora_moments(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                        base_weights: str | None, S: Any, temp: Any, kept: Any = 0,
                        kept_before: Any = 0) -> dict[str, Any]:
    """Live bytes beyond the states at the step's worst moments, the fp32 logits list the loop
    holds (b s V x 4, from the step before during the forward) counted apart.

    ``kept``: the inputs bitsandbytes 0.42.0's ``MatMul4Bit.forward`` keeps as a plain
    attribute, ``ctx.tensors = (A, B)`` (bitsandbytes/autograd/_functions.py, MatMul4Bit,
    read at TimDettmers/bitsandbytes@29e3420c, a later commit with the same ``MatMul4Bit``;
    `scaleplan.memory.litgpt_lora_terms.
    litgpt_bnb_saved_inputs`), not through ``save_for_backward``: autograd frees saved tensors
    after backward but not a node's attributes, which live as long as the graph, and ``fit``
    keeps the graph through ``logits`` (each chunk's ``grad_fn`` leads back through every
    block) until the next ``logits = model(...)`` returns (finetune/lora.py:355; ``loss`` is a
    float from line 377 with ``log_interval: 1``). So every moment holds this step's
    (``kept``: those no other operation saves), and the fp32 cast (inside Fabric's forward,
    before ``logits`` is rebound) the previous step's too (``kept_before``: all of them, the
    saved tensors they shared being freed by its backward).

    - ``forward_end``: the larger of two moments. Fabric's ``convert_output`` casting the
      chunks to fp32 (wrappers.py:138): the saved tensors but the loss's, the model's chunks
      (b s V e, none under "32-true", whose chunks are already fp32) and their fp32 copies
      (b s V x 4). The loss: every saved tensor and the flat copy it makes of the sliced last
      chunk (b > 1: b (c - 1) V x 4, c the last chunk's length).
    - ``backward_start``: autograd takes the chunks' losses from the last to the first; each
      log-softmax backward holds the nll gradient and its own output gradient (two chunk-sized
      fp32 tensors, b x 128 rows, or b (s - 1) for one chunk), and every chunk done leaves a
      logits gradient as large as the log-softmax it freed.
    - ``head_backward`` (QLoRA): the head's ``MatMul4Bit.backward`` dequantizes the whole head
      weight into fp16 (the quant state's dtype) and copies it to the gradient's dtype (V d
      (2 + e)). Autograd runs the nodes made last first: every chunk's loss, then every
      chunk's fp32 cast (Fabric's, made after the head), then the head's chunks from the
      last; so when the last chunk's head runs, the loss's saved tensors are freed and every
      chunk's gradient waits cast back to e bytes (b s V e).
    - ``optimizer_step``: the optimizer's temporaries.
    """
    e, V, d = model_bytes(precision), cfg.vocab_size, cfg.n_embd
    chunks = (s + HEAD_CHUNK - 1) // HEAD_CHUNK
    c = s - HEAD_CHUNK * (chunks - 1)  # the last chunk's length
    copy = (b != 1) * b * (c - 1) * V * FP32  # a view at b = 1 (works on arrays too)
    model_chunks = 0 if e == FP32 else b * s * V * e
    lsm = b * (s - 1) * V * FP32
    rows = b * smaller(s - 1, HEAD_CHUNK)  # a full chunk, or the one sliced chunk
    moments: dict[str, Any] = {
        "forward_end": larger(S - lsm + model_chunks + b * s * V * FP32 + kept_before,
                               S + copy),
        "backward_start": S + 2 * rows * V * FP32,
        "optimizer_step": temp}
    if base_weights in QUANTIZED_BASES:
        loss = sum(litgpt_lora_loss_saved_terms(cfg, b, s, precision=precision,
                                                ids_saved=True).values())
        moments["head_backward"] = S - loss + b * s * V * e + V * d * (HALF + e)
    return {k: v + kept for k, v in moments.items()}


def litgpt_bnb_tensor_peak(cfg: GPTConfig, lora: LoRA, b: int, s: int, *,
                           base_weights: str, device: str = "cuda",
                           impl: str | None = None) -> tuple[int, str]:
    """(bytes, moment) of litgpt's QLoRA step at its worst moment as bitsandbytes 0.42.0 ran
    it: the states, the held fp32 logits and the largest of `litgpt_lora_moments` with the
    kept inputs (``kept``, ``kept_before``), and ``head_forward``: 0.42.0's forward
    dequantizes each 4-bit weight whole (``F.dequantize_4bit(B, quant_state).to(A.dtype)``,
    fp16 then bf16), the head's (V d x 4) while the last chunk runs, beside the chunks before
    it (b (s - c) V x 2), every saved tensor but the loss's, and both steps' kept inputs.
    ``training_memory`` models the installed bitsandbytes, whose fused ``gemm_4bit`` keeps no
    input; this is the published rows' version (benchmarks/published_lora.py).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, position="rope", norm="rmsnorm", mlp="swiglu")
    >>> # the head (16 x 8) dequantized, 512 bytes, beside 4 tokens' logits: the head's moment
    >>> litgpt_bnb_tensor_peak(cfg, LoRA(2, targets=("q", "v")), 1, 4, base_weights="nf4")[1]
    'head_forward'
    """
    W, G, O, temp = litgpt_lora_model_states(cfg, lora, "bf16-true", base_weights, device,
                                             impl)
    saved = litgpt_lora_saved_terms(cfg, lora, b, s, precision="bf16-true",
                                    base_weights=base_weights, device=device)
    kept = sum(litgpt_bnb_saved_inputs(cfg, lora, b, s).values())
    before = sum(litgpt_bnb_saved_inputs(cfg, lora, b, s, after_backward=True).values())
    moments = litgpt_lora_moments(cfg, b, s, precision="bf16-true", base_weights=base_weights,
                                  S=sum(saved.values()), temp=temp, kept=kept,
                                  kept_before=before)
    V, S = cfg.vocab_size, sum(saved.values())
    loss = sum(litgpt_lora_loss_saved_terms(cfg, b, s, precision="bf16-true",
                                            ids_saved=True).values())
    c = s - HEAD_CHUNK * ((s + HEAD_CHUNK - 1) // HEAD_CHUNK - 1)  # the last chunk's length
    moments["head_forward"] = S - loss + b * (s - c) * V * HALF + V * cfg.n_embd * 2 * HALF \
        + kept + before
    held = b * s * V * FP32
    worst = max(moments, key=lambda k: moments[k])
    return int(W + G + O + held + moments[worst]), worst




def litgpt_lora_stage_parts(cfg: GPTConfig, lora: LoRA, base_weights: str | None, b: Any,
                            s: Any, p: Precision, device: str, impl: str | None,
                            hold_logits: bool) -> tuple[Any, ...]:
    """`scaleplan.memory.stage.stage_parts`' result for litgpt's LoRA step on one GPU:
    (weights, gradients, optimizer, saved terms, 0, 0, held logits, moments); no autocast,
    so no weight copies; the optimizer is AdamW
    (`scaleplan.memory.litgpt_lora_terms.check_litgpt_lora` refuses others). The loop holds
    the list of fp32 logits chunks (b s V x 4) until the next forward returns, unless
    ``hold_logits`` is False."""
    W, G, O, temp = litgpt_lora_model_states(cfg, lora, p, base_weights, device, impl)
    saved = litgpt_lora_saved_terms(cfg, lora, b, s, precision=p, base_weights=base_weights,
                                    device=device)
    S = sum(saved.values())
    moments = litgpt_lora_moments(cfg, b, s, precision=p, base_weights=base_weights,
                                  S=S, temp=temp)
    held = b * s * cfg.vocab_size * FP32 if hold_logits else 0  # converted by Fabric
    return W, G, O, saved, 0, 0, held, moments
