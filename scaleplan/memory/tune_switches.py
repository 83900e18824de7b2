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
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.dtypes import INDEX_BYTES
from scaleplan.memory.step_switches import chunked_loss_terms
from scaleplan.memory.tune_terms import tune_compiled_chunked_loss_terms
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["tune_chunked_loss_terms", "with_chunked_loss"]


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
