"""The loss side of torchtune's chunked cross-entropy as its recipe runs it, for
`scaleplan.memory.stage.stage_parts` with ``implementation="torchtune"`` and ``loss="chunked"``.

``CEWithChunkedOutputLoss`` (torchtune 0.6.1, torchtune/modules/loss/ce_chunked_output_loss.py)
sums each chunk's ``F.cross_entropy(logits.float(), labels, reduction="sum")`` and divides by
``(labels != ignore_index).sum()``; the eager division keeps that int64 count for backward (8
bytes, measured by `scaleplan.reference.tune_measure` with ``loss="chunked"``). With ``compile:
True`` the recipe's ``training.compile_loss`` compiles the per-chunk ``compute_cross_entropy``, and
the partition keeps each chunk's logits in the activation dtype instead of its fp32 log-softmax
(`scaleplan.memory.tune_terms.tune_compiled_chunked_loss_terms`, measured by
`scaleplan.reference.tune_compiled`).

``activation_offload=True`` (`tune_offload_stage`): the recipe's
``training.get_act_offloading_ctx_manager`` (torchtune/training/_activation_offloading.py:373-449)
wraps the model's forward (not the loss: ``_loss_step`` computes it outside the context) in
``OffloadActivations()`` and the output projection in a ``NoOpManager``; the recipe refuses it
without activation checkpointing. Under non-reentrant checkpointing the only saves its pack hook
(:133-200) sees are each layer's input (``torch.utils.checkpoint`` saves the inputs as saved
tensors before its own hooks take over the layer), the embedding's token ids and the eager final
norm's; it copies to host every one of at least ``min_offload_size`` = 1024 bytes
(``num_bytes >= self.min_tensor_size_bytes``) that is not an ``nn.Parameter``/``nn.Buffer``, once
per pack. With its default ``use_streams=True``, the forward stash (:157-163, 193) keeps the
offloaded tensors among the last ``max_fwd_stash_size`` = 5 packs on the device until the first
backward node that unpacks one (:328-332): the final norm's fp32 input and normalised input. In
backward, a tensor brought back stays in ``bwd_tensor_stash`` until the hook of the next node
that unpacks an offloaded tensor (:263-266, 334-338): while a layer is recomputed, its input and
the input of the layer after it (brought back for that layer's recompute).

``optimizer_in_backward=True`` (`tune_in_backward_moments`):
``training.register_optim_in_bwd_hooks`` (training/memory.py) steps each parameter's own
optimizer in a post-accumulate-grad hook, which runs once the parameter's gradient is whole.
A tied embedding (Llama 3.2, Qwen2 0.5B/1.5B, Gemma: ``TiedLinear``) gets its gradient from
the output projection first and from the embedding last, so the output layer's share (V d,
parameter dtype) waits in autograd's input buffer the whole backward. Inside a layer's
backward the first weight gradient is the MLP's down projection's (d f), stepped at once with
its AdamW temporaries, while the MLP's saved (or recomputed) activations are all still alive;
at more tokens the gradients of the MLP's product and of one factor (2 T f) weigh more.
Measured on CPU (tests/data/tune_switch_peaks.json, tune_offload.json): within 0.5% at b 2 x s
48, within 1.7% at b 4 x s 128.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.dtypes import INDEX_BYTES, activation_bytes, residual_bytes
from scaleplan.memory.step_switches import chunked_loss_terms, offload_backward_moment
from scaleplan.memory.tune_terms import tune_compiled_chunked_loss_terms
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["TUNE_OFFLOAD_KEPT", "TUNE_OFFLOAD_MIN_BYTES", "tune_chunked_loss_terms",
           "tune_in_backward_held_bytes", "tune_in_backward_moments", "tune_offload_kept_terms",
           "tune_offload_stage", "with_chunked_loss"]

# AdamW's temporaries for one parameter, in its numel x state bytes: torch's for-loop
# ``_single_tensor_adam`` makes sqrt(v) and the quotient, ``_multi_tensor_adam`` on a one-tensor
# group ``_foreach_sqrt``'s result only (its divisions are in place), the fused kernel none
# (torch/optim/adam.py).
_ADAMW_TEMPORARIES = {"for-loop": 2, "foreach": 1, "fused": 0}

TUNE_OFFLOAD_MIN_BYTES = 1024  # OffloadActivations(min_offload_size=1024)
TUNE_OFFLOAD_KEPT = ("token_ids", "embedding_scale", "lm_head_input", "rope_buffers",
                     "log_softmax", "logits", "logsumexp", "targets")
"""Saved terms that stay on the device under torchtune's offloading: the token ids (the batch
holds them whatever the hook does), Gemma's 0-d embedding scale, the output projection's input
(``NoOpManager``), the RoPE buffers (never saved) and the loss side (outside the context)."""


def tune_chunked_loss_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                            compiled: bool) -> dict[str, Any]:
    """The loss side ``CEWithChunkedOutputLoss`` saves in torchtune's recipe: eager, every
    chunk's fp32 log-softmax (T V 4), the int64 labels (T 8), one 4-byte weight total per
    chunk and the int64 token count the sum is divided by (8); compiled, what
    `scaleplan.memory.tune_terms.tune_compiled_chunked_loss_terms` gives.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=48)
    >>> tune_chunked_loss_terms(cfg, 2, 48, precision="bf16-true", compiled=False)
    {'log_softmax': 6144, 'targets': 808}
    """
    if compiled:
        return tune_compiled_chunked_loss_terms(cfg, b, s, precision=precision)
    terms = chunked_loss_terms(cfg, b, s)
    return {**terms, "targets": terms["targets"] + INDEX_BYTES}


def with_chunked_loss(saved: dict[str, Any], cfg: GPTConfig, b: Any, s: Any, p: Precision, *,
                      implementation: str, compiled: bool) -> dict[str, Any]:
    """``saved`` (a stage's terms, its standard loss side included) with the chunked loss's
    terms in place of the standard loss's: torchtune's (`tune_chunked_loss_terms`) or the
    generic `scaleplan.memory.step_switches.chunked_loss_terms`.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=48)
    >>> with_chunked_loss({"log_softmax": 1, "targets": 1, "x": 3}, cfg, 1, 8, "bf16-true",
    ...                   implementation="torchtune", compiled=True)
    {'x': 3, 'logits': 256, 'targets': 72, 'logsumexp': 64}
    """
    if implementation != "torchtune":
        return {**saved, **chunked_loss_terms(cfg, b, s)}
    kept = {k: v for k, v in saved.items() if k not in ("log_softmax", "targets")}
    return {**kept, **tune_chunked_loss_terms(cfg, b, s, precision=p, compiled=compiled)}


def tune_offload_kept_terms(cfg: GPTConfig, saved: dict[str, Any], b: Any, s: Any
                            ) -> dict[str, Any]:
    """The terms of ``saved`` (torchtune's) that ``OffloadActivations`` leaves on the device:
    `TUNE_OFFLOAD_KEPT`, and those whose every tensor is under `TUNE_OFFLOAD_MIN_BYTES`: a
    norm's per-token fp32 statistic (b s x 4 bytes), SDPA's log-sum-exp (b a s x 4) and
    Gemma's fp32 ``1 + scale`` (d x 4). Everything else goes to host memory: checkpointed,
    the layers' inputs and the final norm's fp32 input and normalised input.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=128)
    >>> tune_offload_kept_terms(cfg, {"block_input": 9, "final_norm_stats": 384,
    ...                               "targets": 8}, 2, 48)
    {'final_norm_stats': 384, 'targets': 8}
    >>> tune_offload_kept_terms(cfg, {"final_norm_stats": 1024, "attn_lse": 3072}, 2, 128)
    {'final_norm_stats': 0, 'attn_lse': 0}
    """
    per_tensor = {"_stats": b * s * 4, "attn_lse": b * cfg.n_head * s * 4,
                  "_one_plus_weight": cfg.n_embd * 4}
    kept: dict[str, Any] = {}
    for k, v in saved.items():
        size = next((n for end, n in per_tensor.items() if k.endswith(end)), None)
        if k.startswith(TUNE_OFFLOAD_KEPT):
            kept[k] = v
        elif size is not None:  # per cell of an array: kept where each tensor is small
            kept[k] = v * (size < TUNE_OFFLOAD_MIN_BYTES)
    return kept


def tune_offload_stage(cfg: GPTConfig, b: Any, s: Any, p: Precision, *,
                       saved: dict[str, Any], moments: dict[str, Any], streams: bool = True,
                       gradients: Any = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(saved terms left on the device, moments) of torchtune's checkpointed step under
    ``OffloadActivations``, from `scaleplan.memory.stage.stage_parts`' saved terms and moments
    without it. Until the final norm's backward (forward end, backward start, the output
    layer's backward) the device holds `tune_offload_kept_terms` plus, with ``streams``
    (torchtune's default), the forward stash: the final norm's fp32 input and normalised
    input and its statistic when that is offloaded too (``offload_in_flight``: the final
    norm's six packs are the last). The recompute moment is the first layer's, with every
    gradient alive: there the step without offloading holds, of the tensors offloading moves,
    only that layer's input (the later layers' and the final norm's were freed by their
    backward). Offloaded, that input comes back for the recompute; with ``streams`` the
    backward stash keeps it while the layer's backward runs (the second layer's input goes
    with the hook of the node that set off the recompute), so the moment is unchanged;
    without streams it is freed once the recompute has run: T d e less. Without
    checkpointing (no ``recompute`` moment; torchtune's recipes refuse it, its class does
    not), every layer's saves but the small ones leave the device and a layer's backward
    brings them back node by node: the ``offload_backward`` moment of
    `scaleplan.memory.step_switches.offload_backward_moment` (measured for Hugging Face's
    gated layer; torchtune's offloads the weights' transposed views too), ``gradients`` the
    gradient bytes it adds to the moments' all-gradients base (``gradients_at`` less G).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=128)
    >>> saved = {"block_input": 2 * 1536, "final_norm_input": 3072, "final_norm_stats": 48,
    ...          "final_norm_normalized": 3072, "targets": 100}
    >>> on_gpu, m = tune_offload_stage(cfg, 1, 12, "bf16-true", saved=saved,
    ...                                moments={"forward_end": 10000, "recompute": 20000})
    >>> on_gpu["offload_in_flight"], m
    (6144, {'forward_end': 6928, 'recompute': 20000})
    >>> tune_offload_stage(cfg, 1, 12, "bf16-true", saved=saved, streams=False,
    ...                    moments={"forward_end": 10000, "recompute": 20000})[1]
    {'forward_end': 784, 'recompute': 18464}
    """
    kept = tune_offload_kept_terms(cfg, saved, b, s)
    final_norm = sum(v for k, v in saved.items() if k.startswith("final_norm"))
    stash = final_norm - sum(v for k, v in kept.items() if k.startswith("final_norm"))
    stash = stash if streams else 0 * stash
    offloaded = sum(saved.values()) - sum(kept.values())
    layer_input = b * s * cfg.n_embd * activation_bytes(p)
    out = dict(moments)
    for k in ("forward_end", "backward_start", "head_backward"):
        if k in out:
            out[k] = out[k] - offloaded + stash
    on_gpu = {**kept, "offload_in_flight": stash}
    if "recompute" in out:  # see the docstring: layer 0's input, held or brought back
        out["recompute"] = out["recompute"] - (0 if streams else layer_input)
    else:
        out["offload_backward"] = offload_backward_moment(cfg, b, s, p, on_gpu=on_gpu) + gradients
    return on_gpu, out


def tune_in_backward_held_bytes(cfg: GPTConfig, b: Any, s: Any, p: Precision, *,
                                optimizer: str, impl: str | None, device: str) -> Any:
    """Bytes held beyond the activations in the last layer's MLP backward under
    ``optimizer_in_backward``: the tied embedding's output-layer gradient (V d, parameter
    dtype; none when untied) and the larger of two moments: the down projection's gradient
    (d f) stepped with its own AdamW's temporaries (`_ADAMW_TEMPORARIES` x d f x state bytes;
    the implementation torch picks by default: foreach on CUDA, for-loop on CPU; other
    optimizers update in place), or, once it is freed, the gradients of the product and of
    one factor of the gated MLP (2 T f, activation dtype) beside its saved activations.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=256, mlp_hidden=512, vocab_size=512,
    ...                 tie_embeddings=True)
    >>> tune_in_backward_held_bytes(cfg, 2, 48, "bf16-true", optimizer="adamw", impl=None,
    ...                             device="cpu")  # 512 x 256 x 2 + 256 x 512 x 2 x (1 + 2)
    1048576
    >>> tune_in_backward_held_bytes(cfg, 4, 128, "bf16-true", optimizer="adamw", impl=None,
    ...                             device="cpu")  # 512 x 256 x 2 + 2 x 512 x 512 x 2
    1310720
    """
    g = activation_bytes(p)  # bf16 or fp32 parameters, gradients and states alike
    n = cfg.n_embd * cfg.mlp_hidden
    impl = impl or ("foreach" if device == "cuda" else "for-loop")
    temps = _ADAMW_TEMPORARIES[impl] * n * g if optimizer == "adamw" else 0
    tied = cfg.vocab_size * cfg.n_embd * g if cfg.tie_embeddings else 0
    step = n * g + temps
    mlp_grads = 2 * b * s * cfg.mlp_hidden * g
    return tied + step + (mlp_grads - step) * (mlp_grads > step)  # max, for arrays too


_HEAD_SIDE = ("log_softmax", "targets", "logits", "logsumexp", "final_norm", "lm_head_input")


def tune_in_backward_moments(cfg: GPTConfig, b: Any, s: Any, p: Precision, *,
                             saved: dict[str, Any], moments: dict[str, Any], G: Any,
                             held: Any, largest: Any) -> dict[str, Any]:
    """The moments (on top of weights, all gradients ``G`` and states) of torchtune's step
    under ``optimizer_in_backward`` with the last layer's MLP backward in them: ``held``
    (`tune_in_backward_held_bytes`) in place of the one ``largest`` gradient the generic
    moments count. Checkpointed, that is the ``recompute`` moment; otherwise a
    ``block_backward`` moment: the saved tensors less the loss side, the final norm's and the
    output layer's input (freed by their backward), plus the residual stream's gradient
    (T d) and ``held``.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, mlp_hidden=128, vocab_size=100)
    >>> tune_in_backward_moments(cfg, 1, 8, "bf16-true", saved={"mlp": 500, "targets": 64,
    ...                          "final_norm_input": 7}, moments={"forward_end": 1}, G=1000,
    ...                          held=300, largest=200)  # 500 + 8 x 64 x 2 + 300 - 1000
    {'forward_end': 1, 'block_backward': 824}
    """
    out = dict(moments)
    if "recompute" in out:
        out["recompute"] = out["recompute"] + held - largest
        return out
    activations = sum(v for k, v in saved.items() if not k.startswith(_HEAD_SIDE))
    out["block_backward"] = (activations + b * s * cfg.n_embd * residual_bytes(p) + held
                             - G)
    return out
