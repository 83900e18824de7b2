"""What torchtitan's chunked loss (``ChunkedLossWrapper``) holds, per operation, with FSDP2 and TP.

``training_memory(implementation="torchtitan", loss="chunked")``: torchtitan's
``ChunkedLossWrapper`` (0.3.0, ``torchtitan/components/loss.py``) runs the model with
``_skip_lm_head=True``, splits the final norm's output (the hidden states, ``(b, s, d)`` in the
activation dtype; under TP replicated on every rank) along the sequence into chunks, each
``.contiguous()`` and detached into a leaf, and inside the forward step runs ``lm_head`` and
the cross-entropy on each chunk and backpropagates it at once, copying the chunk's gradient
into a ``GradAccumulator`` (an fp32 buffer shaped like the hidden states). The accumulated
gradient, cast back to the activation dtype, is what ``_DecoderOutputGradientBackProp`` saves
and hands to the decoder's backward. The wrapper alone was measured on CPU by
`scaleplan.reference.titan_chunked_measure` (rank 0 of a fake TP group, torchtitan's own
``lm_head``), and inside 35 whole FSDP2 (x TP) training steps as torchtitan's trainer runs it,
with and without gradient accumulation, bf16 and fp32 parameters
(`scaleplan.reference.titan_chunked_measure.measure_chunked_step`; all within 0.1%,
tests/test_titan_chunked_steps.py). At a chunk's loss backward the rank holds

- the hidden states and, when there are several chunks of a batch of more than one sequence,
  their chunk copies and the labels' (``torch.split`` along the sequence is then not
  contiguous; with ``b = 1`` the chunks are views, and one chunk is the hidden states
  themselves);
- the fp32 accumulator;
- the chunk's logits (activation dtype, ``c x ceil(V / t)`` for ``c`` tokens: the loop's
  ``logits`` name keeps them) and its loss's fp32 buffers: without TP torch's cross-entropy
  keeps the log-softmax while its backward holds the one-hot gradient and the log-softmax's
  gradient (three); under TP ``_LossParallelCrossEntropy``'s backward holds the saved
  log-probabilities, the zeroed one-hot gradient, ``exp`` of the log-probabilities and their
  sum (four);
- with several chunks, the head's weight gradient of the earlier ones: in the parameter dtype
  without FSDP2; under FSDP2, gradient sync off for all chunks but the last
  (``set_requires_gradient_sync(False)``), its ``unsharded_accumulated_grad`` in the reduce
  dtype, fp32 (``torch/distributed/fsdp/_fully_shard/_fsdp_param.py``
  ``to_accumulated_grad_if_needed``).

Under FSDP2 the loop's other moment is the head's reduce-scatter at the last chunk: the last
chunk's logits, the gradient (accumulated in fp32 over several chunks; with one chunk the
gradient itself, in the parameter dtype), the flat fp32 input and the fp32 shard it reduces
into. Since lm_head's gradient is
reduced in the forward, the [norm, lm_head] unit's reduce in the backward holds the final
norm's alone (``head_reduced`` of `scaleplan.memory.titan_fsdp_moments`).

Chunk length: `TITAN_LOSS_CHUNK_TOKENS` tokens per chunk (``ChunkedLossWrapper.Config.chunk_len``'s
default, pytorch/torchtitan@94609ad7 docs/chunked_loss.md; 0.3.0 has ``num_chunks=8``, the
sequence split in eight). After the loop the fp32 accumulator and its activation-dtype cast are
live together; in backward the cast is the only loss-side tensor left. Not modelled: the per-token
statistics of the loss (tens of bytes a token), compile (refused), one data-parallel rank
(refused: FSDP2 on a one-rank mesh).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.dtypes import larger
from scaleplan.memory.titan_fsdp_moments import titan_unit_shard
from scaleplan.model.config import GPTConfig

__all__ = ["TITAN_LOSS_CHUNK_TOKENS", "check_titan_chunked_loss", "titan_chunk_tokens",
           "titan_chunked_loop_bytes", "titan_chunked_moments", "titan_chunked_saved_terms"]

TITAN_LOSS_CHUNK_TOKENS = 8192  # ChunkedLossWrapper.Config.chunk_len, pytorch/torchtitan@94609ad7
INT64_BYTES = 8
# the standard loss side that the chunked loss does not leave for backward
_STANDARD_LOSS = ("lm_head", "log_softmax", "targets")


def check_titan_chunked_loss(*, loss: Any, compile: bool) -> None:
    """Refuse, by name, torchtitan's chunked loss compiled: it was measured eager.

    >>> check_titan_chunked_loss(loss="chunked", compile=True)
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: loss='chunked' with implementation='torchtitan' is ...
    """
    if loss == "chunked" and compile:
        raise ScaleplanError("loss='chunked' with implementation='torchtitan' is modelled eager "
                             "(its ChunkedLossWrapper, measured uncompiled), not yet with "
                             "compile=True; use compile=False")


def titan_chunk_tokens(b: Any, s: Any, chunk_tokens: int = TITAN_LOSS_CHUNK_TOKENS) -> Any:
    """Tokens in one chunk: ``min(b s, chunk_tokens)`` (ints or float64 arrays).

    >>> titan_chunk_tokens(40, 8192), titan_chunk_tokens(1, 4096)
    (8192, 4096)
    """
    T = b * s
    return T - (T - chunk_tokens) * (chunk_tokens < T)


def titan_chunked_loop_bytes(cfg: GPTConfig, b: Any, s: Any, *, e: int, tensor: int,
                             data: int, chunk_tokens: Any) -> dict[str, Any]:
    """Bytes the chunk loop holds at its worst moment on one rank, on top of the model's saved
    tensors and parameters, by part (see the module docstring).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, head_dim=32, n_embd=96,
    ...                 mlp_hidden=192, vocab_size=320, bias=False, mlp="swiglu",
    ...                 norm="rmsnorm", position="rope", qk_norm="head", tie_embeddings=False)
    >>> parts = titan_chunked_loop_bytes(cfg, 2, 128, e=2, tensor=1, data=1, chunk_tokens=64)
    >>> parts["chunk_loss"] == 64 * 320 * (2 + 3 * 4)  # bf16 logits, three fp32 buffers
    True
    """
    T, d = b * s, cfg.n_embd
    V = -(-cfg.vocab_size // tensor)  # rank 0's vocabulary rows (ceil)
    # the sequence split of a batch is copied, of one sequence viewed; one chunk is the
    # hidden states themselves
    several = (b > 1) * (chunk_tokens < T)
    buffers = 3 if tensor == 1 else 4  # torch's cross-entropy / _LossParallelCrossEntropy
    return {"hidden_states": T * d * e,
            "chunk_copies": (T * d * e + T * INT64_BYTES) * several,
            "accumulator": T * d * FP32_BYTES,
            "chunk_loss": chunk_tokens * V * (e + buffers * FP32_BYTES),
            "head_gradient": V * d * (FP32_BYTES if data > 1 else e)}


def titan_chunked_saved_terms(saved: dict[str, Any], cfg: GPTConfig, b: Any, s: Any, *,
                              e: int) -> dict[str, Any]:
    """torchtitan's saved terms with the chunked loss: the standard loss side (the head's
    input, the log-softmax, the targets) replaced by ``loss_gradient``, the accumulated
    gradient of the hidden states in the activation dtype (``T x d x e``, on every TP rank).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    >>> titan_chunked_saved_terms({"block.x": 5, "log_softmax": 9, "targets": 1,
    ...                            "lm_head": 3}, cfg, 2, 4, e=2)
    {'block.x': 5, 'loss_gradient': 128}
    """
    out = {k: v for k, v in saved.items() if k not in _STANDARD_LOSS}
    out["loss_gradient"] = b * s * cfg.n_embd * e
    return out


def titan_chunked_moments(cfg: GPTConfig, b: Any, s: Any, saved: dict[str, Any], *, e: int,
                          tensor: int, data: int, gathered_head: Any,
                          chunk_tokens: Any = TITAN_LOSS_CHUNK_TOKENS,
                          fresh: bool = False) -> dict[str, Any]:
    """The loss-side moments of a torchtitan step with the chunked loss, from its saved terms
    (`titan_chunked_saved_terms`) and FSDP2's gathered [norm, lm_head] unit, the loop's
    worst as ``head_backward``: a chunk's loss backward (the head's weight gradient of the
    earlier chunks held when there are several, and without FSDP2 always) and, under FSDP2,
    the head's reduce-scatter at the last chunk (the gradient: with several chunks its fp32
    accumulation, with one the gradient itself; the flat fp32 input; the fp32 shard it
    reduces into; the last chunk's logits); ``forward_end``, the accumulator's cast after the
    loop: the hidden states, their chunk copies, the fp32 accumulator and its cast, the last
    chunk's logits (the loop's name still holds them) and, without FSDP2, the head's gradient
    (FSDP2 reduce-scatters it at the last chunk and reshards the unit); and
    ``backward_start``: the cast alone, the unit gathered again for the final norm's backward.
    ``chunk_tokens``: the chunk's length (`titan_chunk_tokens`). ``fresh``: a step without
    gradient accumulation, whose moments after the loop also hold lm_head's fp32 shard the
    loop's reduce-scatter made (the caller leaves out the resident gradients).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    >>> m = titan_chunked_moments(cfg, 1, 4, {"loss_gradient": 64}, e=2, tensor=1, data=2,
    ...                           gathered_head=0)
    >>> m["forward_end"], m["backward_start"]  # 4 x 8 x (2 + 4 + 2) + 4 x 16 x 2; 4 x 8 x 2
    (384, 64)
    """
    T, d = b * s, cfg.n_embd
    V = -(-cfg.vocab_size // tensor)
    model = sum(saved.values()) - saved["loss_gradient"]
    c = titan_chunk_tokens(b, s, chunk_tokens)
    several = c < T
    loop = titan_chunked_loop_bytes(cfg, b, s, e=e, tensor=tensor, data=data, chunk_tokens=c)
    held = loop["hidden_states"] + loop["chunk_copies"] + loop["accumulator"]
    last_logits = c * V * e
    earlier = loop["head_gradient"] * (several if data > 1 else 1)
    loss = model + held + loop["chunk_loss"] + earlier + gathered_head
    if data > 1:  # FSDP2: the head's reduce-scatter at the last chunk
        # the gradient: accumulated in fp32 over several chunks, else in the parameter dtype
        grad = V * d * (FP32_BYTES * several + e * (1 - several))
        shard = titan_unit_shard(((V, d),), data)
        loss = larger(loss, model + held + last_logits + gathered_head + grad
                      + V * d * FP32_BYTES + shard)
    head = loop["head_gradient"] if data == 1 else 0
    made = titan_unit_shard(((V, d),), data) * fresh * (data > 1)
    return {"head_backward": loss,
            "forward_end": model + held + T * d * e + last_logits + head + made,
            "backward_start": model + T * d * e + gathered_head + made}
