"""The memory-saving switches of a training step: chunked loss, optimizer in backward,
activation offloading and (no) gradient accumulation.

`scaleplan.memory.training.training_memory` takes them as ``loss=``, ``optimizer_in_backward=``,
``activation_offload=`` and ``gradient_accumulation=``; `check_switches` checks them once (for
`scaleplan.memory.options.step_options`) and the functions below change what
`scaleplan.memory.stage.stage_parts` computes for one stage. Each is derived from torchtune
0.6.1's code, per operation, and measured on CPU by `scaleplan.reference.switches`:

- ``loss="chunked"``: ``CEWithChunkedOutputLoss`` (torchtune/modules/loss/
  ce_chunked_output_loss.py) with ``TransformerDecoder.chunked_output`` (modules/transformer.py):
  the output layer runs on each of `LOSS_CHUNKS` sequence chunks of the final hidden states and
  returns every chunk's logits; each chunk is upcast to fp32 (``logits.float()``) and its
  cross-entropy summed. Autograd still keeps every chunk's fp32 log-softmax (T V x 4 bytes, even
  for bf16 parameters) and each nll_loss's 4-byte weight total; what chunking saves is the
  transients: one chunk's fp32 upcast at the end of forward, one chunk's two fp32 gradients at
  the start of backward, instead of the whole T V.
- ``optimizer_in_backward=True``: ``register_optim_in_bwd_hooks`` (training/memory.py): a
  post-accumulate-grad hook steps each parameter's optimizer and frees its gradient, so at most
  one parameter's gradient is alive (the largest, taken as the bound) and there is no separate
  optimizer step. torchtune refuses it with gradient accumulation, and so does scaleplan.
- ``activation_offload=True``: ``OffloadActivations`` (training/_activation_offloading.py): every
  saved tensor of at least `OFFLOAD_MIN_BYTES` that is not a parameter is copied to host memory;
  the output layer (``NoOpManager``) and the loss (outside the context) keep theirs on the GPU.
  What stays is the loss side, the output layer's input, the small tensors, and the tensors in
  flight: the last five offloaded ones at the end of forward, and the current and previous
  autograd node's ones brought back in backward, bounded here by one block's offloaded share.
- ``gradient_accumulation=False``: one micro-batch per optimizer step, gradients set to None
  after it: none during forward and at the start of backward, all from backward's end through
  the optimizer step. True (the default) keeps them resident all step, as in the last
  micro-batch of accumulation. Which steps are covered: `scaleplan.memory.fresh_steps`.

With ``implementation="torchtune"`` (eager or compiled) the chunked loss's terms are its recipe's
(`scaleplan.memory.tune_switches`); its step is measured by `scaleplan.reference.tune_switches`.
Its activation offloading, which its recipe runs only with checkpointing, is
`scaleplan.memory.tune_switches.tune_offload_stage` (measured by
`scaleplan.reference.tune_offload`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from scaleplan.checks import one_of
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.dtypes import (
    FP32_BYTES,
    INDEX_BYTES,
    activation_bytes,
    residual_bytes,
)
from scaleplan.memory.fresh_steps import fresh_step_refusal
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.states import gradient_bytes
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.shapes import parameters

__all__ = ["LOSSES", "LOSS_CHUNKS", "NO_SWITCHES", "OFFLOAD_MIN_BYTES",
           "SWITCH_IMPLEMENTATIONS", "LossKind", "StepSwitches", "check_switches",
           "chunked_loss_terms", "gradients_at", "largest_gradient_bytes", "loss_chunks",
           "offload_backward_moment", "offload_kept_terms", "offload_saved_terms",
           "switch_moments", "switch_stage"]

LossKind = Literal["standard", "chunked"]
LOSSES: tuple[str, ...] = ("standard", "chunked")
LOSS_CHUNKS = 8  # torchtune CEWithChunkedOutputLoss(num_output_chunks=8), its recipes' default
OFFLOAD_MIN_BYTES = 1024  # torchtune OffloadActivations(min_offload_size=1024)
SWITCH_IMPLEMENTATIONS = ("nanogpt", "hf", "torchtune")
"""Whose code the switches are derived and measured for; another implementation's terms plug in
by adding its name once its loss side and saved tensors are measured with them."""


@dataclass(frozen=True)
class StepSwitches:
    """The checked memory-saving switches of a step (see `check_switches`).

    >>> StepSwitches().loss, StepSwitches(loss="chunked") == NO_SWITCHES
    ('standard', False)
    """

    loss: str = "standard"
    optimizer_in_backward: bool = False
    activation_offload: bool = False
    gradient_accumulation: bool = True


NO_SWITCHES = StepSwitches()


def check_switches(*, loss: Any, optimizer_in_backward: Any, activation_offload: Any,
                   gradient_accumulation: Any, implementation: str, compile: bool,
                   checkpointing: str, parallelism: Parallelism) -> StepSwitches:
    """The switches checked (a `ScaleplanError` naming the argument and the value) and every
    combination not modelled refused by name.

    >>> check_switches(loss="chunked", optimizer_in_backward=True, activation_offload=False,
    ...                gradient_accumulation=True, implementation="nanogpt", compile=False,
    ...                checkpointing="none", parallelism=Parallelism())
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: optimizer_in_backward=True frees ...
    """
    one_of("loss", loss, LOSSES)
    for name, flag in (("optimizer_in_backward", optimizer_in_backward),
                       ("activation_offload", activation_offload),
                       ("gradient_accumulation", gradient_accumulation)):
        if not isinstance(flag, bool):
            raise ScaleplanError(f"{name}={shown(flag)} must be True or False")
    if optimizer_in_backward and gradient_accumulation:
        raise ScaleplanError(
            "optimizer_in_backward=True frees each gradient after its parameter's step, so "
            "gradients cannot add up over micro-batches (torchtune refuses "
            "gradient_accumulation_steps > 1 with optimizer_in_bwd); pass "
            "gradient_accumulation=False")
    switches = StepSwitches(loss, optimizer_in_backward, activation_offload,
                            gradient_accumulation)
    _refuse_unmodelled(switches, implementation=implementation, compile=compile,
                       checkpointing=checkpointing, parallelism=parallelism)
    return switches


def _refuse_unmodelled(sw: StepSwitches, *, implementation: str, compile: bool,
                       checkpointing: str, parallelism: Parallelism) -> None:
    on = [f"{name}={value!r}" for name, value, off in (
        ("loss", sw.loss, "standard"), ("optimizer_in_backward", sw.optimizer_in_backward, False),
        ("activation_offload", sw.activation_offload, False)) if value != off]
    fresh = None if sw.gradient_accumulation else fresh_step_refusal(
        implementation=implementation, compile=compile, checkpointing=checkpointing,
        loss=sw.loss, parallelism=parallelism)
    if fresh:
        raise ScaleplanError(fresh)
    if not on:
        return
    what = ", ".join(on)
    if implementation == "torchtitan" and on == ["loss='chunked'"] and not compile:
        return  # its ChunkedLossWrapper under FSDP2 and TP: scaleplan.memory.titan_chunked_loss
    _refuse_implementation(sw, what, implementation=implementation, compile=compile)
    if parallelism.tensor * parallelism.pipeline > 1:
        raise ScaleplanError(f"{what} is not modelled yet with tensor or pipeline parallelism")
    single = (sw.optimizer_in_backward or sw.activation_offload)
    if single and parallelism != Parallelism():
        raise ScaleplanError(f"{what} is modelled for one GPU (torchtune's single-device "
                             "recipes), not yet with data parallelism; use parallelism=None")
    if sw.activation_offload:
        _refuse_offload(implementation=implementation, compile=compile,
                        checkpointing=checkpointing)


def _refuse_offload(*, implementation: str, compile: bool, checkpointing: str) -> None:
    """Offloading is modelled without checkpointing, and for torchtune (whose recipes offload
    only checkpointed steps) with it too, compiled only then."""
    if implementation != "torchtune" and checkpointing != "none":
        raise ScaleplanError(f"activation_offload=True is not modelled yet with "
                             f"checkpointing={checkpointing!r}; use checkpointing='none'")
    if implementation == "torchtune" and compile and checkpointing != "full":
        raise ScaleplanError("activation_offload=True with implementation='torchtune' and "
                             "compile=True is modelled with checkpointing='full' (what its "
                             f"recipes run), not yet with checkpointing={checkpointing!r}; "
                             "use checkpointing='full'")


def _refuse_implementation(sw: StepSwitches, what: str, *, implementation: str,
                           compile: bool) -> None:
    """Refuse the switches whose terms are not derived for ``implementation``: compiled only
    for torchtune's recipe."""
    if implementation not in SWITCH_IMPLEMENTATIONS:
        raise ScaleplanError(f"{what} is not modelled yet with implementation="
                             f"{implementation!r}; use one of "
                             f"{', '.join(map(repr, SWITCH_IMPLEMENTATIONS))}")
    if compile and implementation != "torchtune":
        raise ScaleplanError(f"{what} is not modelled yet with compile=True and implementation="
                             f"{implementation!r}; use compile=False or "
                             "implementation='torchtune'")


def loss_chunks(s: Any, chunks: int = LOSS_CHUNKS) -> tuple[Any, Any]:
    """(number of chunks, tokens per sequence in the largest) of ``tensor.chunk(chunks, dim=1)``
    on ``s`` tokens: chunks of ceil(s / chunks) tokens, so fewer than ``chunks`` when s is
    small (torch.chunk's documented rule). Works on ints and float64 arrays.

    >>> loss_chunks(48), loss_chunks(9), loss_chunks(3)
    ((8, 6), (5, 2), (3, 1))
    """
    size = -(-s // chunks)
    return -(-s // size), size


def chunked_loss_terms(cfg: GPTConfig, b: Any, s: Any) -> dict[str, Any]:
    """The loss side that ``CEWithChunkedOutputLoss`` saves: every chunk's fp32 log-softmax
    (T V x 4 bytes in all, whatever the precision: each chunk is upcast first) and the int64
    targets plus one 4-byte weight total per chunk's nll_loss.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=48)
    >>> chunked_loss_terms(cfg, 2, 48)
    {'log_softmax': 6144, 'targets': 800}
    """
    T, (n, _) = b * s, loss_chunks(s)
    return {"log_softmax": T * cfg.vocab_size * FP32_BYTES,
            "targets": T * INDEX_BYTES + n * FP32_BYTES}


# Terms computed outside OffloadActivations' context or under its NoOpManager (the output
# layer's input, the loss), and those whose every tensor is below OFFLOAD_MIN_BYTES.
_KEPT = ("lm_head_input", "log_softmax", "logits", "logsumexp", "targets")


def offload_kept_terms(cfg: GPTConfig, b: Any, s: Any, saved: dict[str, Any]
                       ) -> dict[str, Any]:
    """The saved terms that stay on the GPU under ``OffloadActivations``: the output layer's
    input and the loss side, and the tensors under `OFFLOAD_MIN_BYTES` (token and position ids
    of b s and s int64; a norm's per-token statistics, b s x 4 bytes per tensor, one per norm
    for RMSNorm and two for LayerNorm; SDPA's log-sum-exp, b h s x 4 bytes per layer; Hugging
    Face's Gemma ``1 + weight`` (d x 4 bytes per norm) and embedding scale (4 bytes)).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)
    >>> offload_kept_terms(cfg, 2, 48, {"norm1_stats": 1536, "qkv": 9, "targets": 1})
    {'norm1_stats': 1536, 'targets': 1}
    >>> offload_kept_terms(cfg, 8, 48, {"norm1_stats": 6144})  # 1536-byte statistics
    {'norm1_stats': 0}
    """
    T = b * s
    per_tensor = {"token_ids": T * INDEX_BYTES, "position_ids": s * INDEX_BYTES,
                  "layer_position_ids": s * INDEX_BYTES, "embedding_scale": FP32_BYTES,
                  "attn_lse": T * cfg.n_head * FP32_BYTES}
    by_suffix = {"_stats": T * FP32_BYTES,  # a norm's statistic, one per token
                 "_one_plus_weight": cfg.n_embd * FP32_BYTES}  # Gemma's 1 + weight
    kept = {}
    for k, v in saved.items():
        small = per_tensor.get(k, next((n for end, n in by_suffix.items() if k.endswith(end)),
                                       None))
        if k.startswith(_KEPT):
            kept[k] = v
        elif small is not None:  # per cell of an array: kept where each tensor is small
            kept[k] = v * (small < OFFLOAD_MIN_BYTES)
    return kept


def largest_gradient_bytes(cfg: GPTConfig, p: Precision) -> int:
    """Bytes of the largest single parameter's gradient: the most optimizer_in_backward holds
    at once (a parameter's hook frees its gradient once stepped).

    >>> largest_gradient_bytes(GPTConfig.preset("gpt2"), "32-true") == 50257 * 768 * 4
    True
    """
    return gradient_bytes(max(math.prod(t.shape) for t in parameters(cfg)), p)


def gradients_at(moment: str, G: Any, largest: Any, sw: StepSwitches) -> Any:
    """Gradient bytes alive at ``moment`` of the step: all of them with gradient accumulation;
    without it none during forward and at the start of backward, all of them once backward
    ends (recompute and optimizer step, an upper bound during recompute); with
    optimizer_in_backward at most the largest parameter's.

    >>> sw = StepSwitches(gradient_accumulation=False)
    >>> gradients_at("forward_end", 10, 4, sw), gradients_at("optimizer_step", 10, 4, sw)
    (0, 10)
    """
    if sw.gradient_accumulation:
        return G
    if moment in ("forward_end", "backward_start", "head_backward"):
        return 0 * G
    return largest if sw.optimizer_in_backward else G


# The MLP's last saved activations (T f each) within the forward stash's five saves before the
# final norm: GELU's input and output; a gated MLP's product and one factor.
_MLP_LAST_SAVED = 2
# The MLP tensors that two consecutive backward nodes bring back (T f each): c_proj's input and
# the activation's input (GELU); c_proj's input and the product's two factors (gated).
_MLP_BROUGHT_BACK = {False: 2, True: 3}


def offload_saved_terms(cfg: GPTConfig, b: Any, s: Any, saved: dict[str, Any],
                        e: int) -> dict[str, Any]:
    """What autograd's saved tensors leave on the GPU at the end of forward under
    ``OffloadActivations``: `offload_kept_terms` plus ``offload_in_flight``, the forward stash
    (the last offloaded tensors among the five most recent saves stay on the GPU until the
    next saves or the first backward node, ``e`` bytes per element): the final norm's input
    (the residual stream, which nothing else holds by then) and the last block's MLP's last two
    saved activations (2 T f e).

    >>> offload_saved_terms(GPTConfig(n_layer=2, n_head=4, n_embd=64), 2, 48,
    ...                     {"qkv": 1000, "final_norm_input": 20, "targets": 8}, 4)
    {'targets': 8, 'offload_in_flight': 196628}
    """
    kept = offload_kept_terms(cfg, b, s, saved)
    stash = saved.get("final_norm_input", 0) + _MLP_LAST_SAVED * b * s * cfg.mlp_hidden * e
    return {**kept, "offload_in_flight": stash}


def offload_backward_moment(cfg: GPTConfig, b: Any, s: Any, p: Precision, *,
                            on_gpu: dict[str, Any]) -> Any:
    """The worst moment of a block's backward under ``OffloadActivations``, in its MLP (the
    widest tensors): the kept saved tensors less the loss side (freed by then), the residual
    stream's gradient (T d, residual dtype), the MLP tensors the current and the previous
    autograd node bring back (2 T f e for GELU, 3 for a gated MLP) with a gradient of each,
    and the MLP weight's transposed view, which torchtune offloads too (a view of a parameter
    is not an ``nn.Parameter``) and brings back (d f, activation dtype).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)
    >>> m = offload_backward_moment(cfg, 2, 48, "32-true",
    ...                             on_gpu={"log_softmax": 76800, "norm1_stats": 1536})
    >>> m == 1536 + 96 * 64 * 4 + 2 * 2 * 96 * 256 * 4 + 64 * 256 * 4
    True
    """
    loss_side = sum(v for k, v in on_gpu.items() if k in ("log_softmax", "targets"))
    kept = sum(on_gpu.values()) - on_gpu.get("offload_in_flight", 0) - loss_side
    e = activation_bytes(p)
    mlp = _MLP_BROUGHT_BACK[cfg.gated_mlp] * b * s * cfg.mlp_hidden * e
    weight = cfg.n_embd * cfg.mlp_hidden * e
    return kept + b * s * cfg.n_embd * residual_bytes(p) + 2 * mlp + weight


def switch_moments(moments: dict[str, Any], *, saved: dict[str, Any], on_gpu: dict[str, Any],
                   copies: Any, all_copies: Any, TV: Any, TVc: Any, e: int, G: Any,
                   largest: Any, sw: StepSwitches, offload_backward: Any = 0,
                   chunks: Any = LOSS_CHUNKS, head_grad: Any = 0) -> dict[str, Any]:
    """The moments of `scaleplan.memory.stage.stage_parts` (bytes on top of weights, all
    gradients and optimizer states) under the switches.

    ``TV``: b s V, the logits' elements; ``TVc``: the largest loss chunk's; ``e``: the
    activation dtype's bytes; ``on_gpu``: the saved terms left on the GPU (``saved`` itself
    unless offloading: `offload_saved_terms`); ``offload_backward``:
    `offload_backward_moment`. With the chunked loss, forward ends with every chunk's logits
    (T V e, the list is dropped after the loss) plus the last chunk's fp32 upcast (none when
    the logits are fp32 already: ``.float()`` returns them), backward starts with one chunk's
    nll_loss and log-softmax gradients (2 TVc x 4 bytes), and the output layer's backward
    (``head_backward``: the loss side freed) holds the logits' gradients of the ``chunks`` - 2
    chunks not yet consumed (TVc e each) while the second chunk's weight gradient is summed
    into the first (``head_grad``, bytes of one in the matmul's dtype, before any cast to the
    parameter's: the running sum, the new one and their sum).
    Offloaded, the saved autocast
    weight copies leave the GPU too (autocast's cache still holds all of them until forward
    ends).
    """
    out = dict(moments)
    S = sum(on_gpu.values())
    offloaded = sum(saved.values()) - S
    for k in ("forward_end", "backward_start"):
        out[k] = out[k] - offloaded
    if sw.loss == "chunked":
        out["forward_end"], out["backward_start"] = _chunked_loss_moments(
            S, copies, all_copies, TV, TVc, e, compiled="logits" in on_gpu)
        loss_side = sum(on_gpu.get(k, 0) for k in _LOSS_SIDE)
        waiting = (chunks - 2) * (chunks >= 2)
        out["head_backward"] = S - loss_side + copies + waiting * TVc * e + 3 * head_grad
    if sw.activation_offload:  # the saved weight copies are offloaded with the rest
        for k in ("backward_start", "head_backward"):
            if k in out:
                out[k] = out[k] - copies
        out["offload_backward"] = offload_backward
    if sw.optimizer_in_backward:  # stepped parameter by parameter during backward
        out.pop("optimizer_step", None)
    for k in out:
        out[k] = out[k] - G + gradients_at(k, G, largest, sw)
    return out


_LOSS_SIDE = ("log_softmax", "targets", "logits", "logsumexp")


def _chunked_loss_moments(S: Any, copies: Any, all_copies: Any, TV: Any, TVc: Any, e: int, *,
                          compiled: bool) -> tuple[Any, Any]:
    """(forward end, backward start) of the chunked loss. Eager: every chunk's logits (T V e)
    plus the last chunk's fp32 upcast (none in fp32), then one chunk's two fp32 gradients.
    Compiled (torchtune's ``compile_loss``: the chunk logits are saved terms already, in S): no
    logits on top at forward end (the upcast and log-softmax live inside the fused kernel),
    and one chunk's logits' gradient in the activation dtype at backward start.

    >>> _chunked_loss_moments(100, 1, 2, 40, 5, 2, compiled=False)
    (202, 141)
    >>> _chunked_loss_moments(100, 1, 2, 40, 5, 2, compiled=True)
    (102, 111)
    """
    if compiled:
        return S + all_copies, S + copies + TVc * e
    upcast = TVc * FP32_BYTES if e != FP32_BYTES else 0
    return S + all_copies + TV * e + upcast, S + copies + 2 * TVc * FP32_BYTES


def switch_stage(cfg: GPTConfig, b: Any, s: Any, p: Precision, *, saved: dict[str, Any],
                 moments: dict[str, Any], copies: Any, all_copies: Any, TV: Any, e: int, G: Any,
                 heads: bool, sw: StepSwitches) -> tuple[dict[str, Any], dict[str, Any]]:
    """(saved terms left on the GPU, moments) of one stage under the switches, from
    `scaleplan.memory.stage.stage_parts`'s saved terms (the chunked loss's already in) and
    moments (`switch_moments`)."""
    on_gpu, off_bwd = saved, 0
    if sw.activation_offload:
        on_gpu = offload_saved_terms(cfg, b, s, saved, e)
        off_bwd = offload_backward_moment(cfg, b, s, p, on_gpu=on_gpu)
    n, size = loss_chunks(s)
    TVc = b * size * cfg.vocab_size if heads else 0
    largest = largest_gradient_bytes(cfg, p) if sw.optimizer_in_backward else 0
    head = cfg.vocab_size * cfg.embed_dim * e if heads else 0  # the matmul's dtype
    moments = switch_moments(moments, saved=saved, on_gpu=on_gpu, copies=copies,
                             all_copies=all_copies, TV=TV, TVc=TVc, e=e, G=G, largest=largest,
                             sw=sw, offload_backward=off_bwd, chunks=n, head_grad=head)
    return on_gpu, moments
