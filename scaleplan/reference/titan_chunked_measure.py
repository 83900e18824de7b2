"""Measure torchtitan's chunked loss (``ChunkedLossWrapper``) on CPU, with and without TP.

torchtitan 0.3.0's ``ChunkedLossWrapper`` (``torchtitan/components/loss.py``) takes the final
norm's output (the model run with ``_skip_lm_head=True``), splits it along the sequence into
``num_chunks`` ``.contiguous()`` chunks, each detached into a leaf, and, still inside the
forward step, runs ``lm_head`` + the cross-entropy on each chunk and backpropagates it at once
(``chunk_loss.backward()``), copying the chunk's gradient into a ``GradAccumulator`` (an fp32
buffer shaped like the hidden states). The accumulated gradient, cast back to the hidden
states' dtype, is saved by ``_DecoderOutputGradientBackProp`` and handed to the decoder's
backward. Under TP the ``lm_head`` is column-parallel and each chunk's loss is
vocabulary-parallel (``_LossParallelCrossEntropy``); the hidden states are replicated.

`measure_chunked_loss` runs the wrapper on rank 0 of a fake ``tensor``-rank group (as
`scaleplan.reference.titan_tp_measure` does; ``tensor=1`` is one process) with torchtitan's own
``lm_head`` (bf16 parameters, as FSDP2 gathers them; their bytes left out) and reports, with
the hidden states (a ``(b, s, d)`` non-leaf) and the labels live before it: ``before`` (their
bytes), ``peak`` (the most live while the wrapper runs, the head's weight gradient included)
and ``after`` (live once it returned: the hidden states, the saved accumulated gradient, the
head's gradient and the loss).

`measure_chunked_step` runs the wrapper as torchtitan's trainer does, inside whole training
steps (`scaleplan.reference.titan_fsdp_step.tracked_step`: a warm-up step, an accumulating
micro-batch or none, then one tracked forward, backward and AdamW step) of torchtitan's
Llama 3 under FSDP2 (``tensor=1``: `scaleplan.reference.titan_fsdp_step.measure_titan_fsdp_step`)
or FSDP2 x TP (`scaleplan.reference.titan_2d_step.measure_titan_2d_step`), the model run without
its ``lm_head`` (`scaleplan.reference.titan_measure.chunked_loss`): `STEP_CASES` and
`FP32_STEP_CASES`.

``python -m scaleplan.reference.titan_chunked_measure --write`` writes
``docs/validation/torchtitan-chunked-loss.json`` (``rows``: the wrapper alone; ``steps``: whole
steps; replayed by tests/test_titan_chunked_loss.py and tests/test_titan_chunked_steps.py).
"""

from __future__ import annotations

import gc
import importlib
import json
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.titan_2d_step import measure_titan_2d_step
from scaleplan.reference.titan_fsdp_step import measure_titan_fsdp_step
from scaleplan.reference.titan_measure import TitanTracker, chunked_loss, report_main
from scaleplan.reference.titan_qwen3_measure import GRID
from scaleplan.reference.titan_tp_measure import fake_world, titan_tp_model

__all__ = ["CASES", "FP32_STEP_CASES", "JSON_PATH", "STEP_CASES", "main",
           "measure_chunked_loss", "measure_chunked_step"]

JSON_PATH = Path("docs/validation/torchtitan-chunked-loss.json")


def measure_chunked_loss(cfg: GPTConfig, *, tensor: int, micro_batch_size: int, seq_len: int,
                         num_chunks: int, seed: int = 0) -> dict[str, int]:
    """Live bytes around one ``ChunkedLossWrapper`` call on rank 0 of ``tensor`` TP ranks
    (bf16 ``lm_head``), see the module docstring."""
    torch.manual_seed(seed)
    b, s = micro_batch_size, seq_len
    with fake_world(tensor) as pd:
        model = titan_tp_model(cfg, pd, sequence_parallel=True)
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
        loss_mod = importlib.import_module("torchtitan.components.loss")
        context = importlib.import_module("torchtitan.distributed.utils").get_spmd_context(
            parallel_dims=pd)
        inner = loss_mod.CrossEntropyLoss.Config(global_vocab_size=cfg.vocab_size)
        wrapper = loss_mod.ChunkedLossWrapper(
            loss_mod.ChunkedLossWrapper.Config(num_chunks=num_chunks, loss_fn=inner))
        wrapper.set_lm_head(model.lm_head)
        leaf = torch.randn(b, s, cfg.n_embd, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(0, cfg.vocab_size, (b, s))
        tracker = TitanTracker()
        gc.collect()
        with context(), tracker:
            params = tracker.add_resident(list(model.parameters()))
            hidden = leaf * 1  # a non-leaf, as the final norm's output is
            tracker.add_resident([labels])
            before = tracker.current - params
            tracker.set_phase("loss")
            _loss, _ = wrapper(hidden, labels)
            gc.collect()
            after = tracker.current - params
        return {"before": before, "peak": tracker.phase_peaks["loss"] - params, "after": after}


CASES = ((1, 1, 256, 4, 256), (1, 2, 128, 4, 256), (2, 2, 128, 4, 256), (2, 2, 128, 2, 256),
         (4, 2, 128, 4, 256), (1, 2, 128, 8, 64), (2, 2, 128, 8, 64), (1, 1, 256, 8, 64))
"""(tensor, micro-batch, sequence, num_chunks, vocabulary) of the committed measurements, on
`GRID`'s Qwen3 shape: one process and TP 2 / 4, batch 1 (the chunks are views) and 2 (copies);
with vocabulary 64 and eight chunks the accumulator's cast after the loop is the peak."""


STEP_CASES: tuple[tuple[str, int, int, str, int, int, int], ...] = (
    # (titan_fsdp_step.GRID name, data, tensor, checkpointing, micro-batch, tokens, chunks),
    # each with and without accumulation, bf16, foreach AdamW: one chunk (the whole batch, as
    # 8,192-token chunks leave it up to 8,192 tokens a rank) and several; one sequence (chunks
    # are views) and two (copies); a large vocabulary (the loop peaks) and a small one (a
    # block peaks)
    ("gqa-3", 2, 1, "none", 2, 96, 1),
    ("gqa-3", 2, 1, "full", 2, 96, 1),
    ("gqa-3", 2, 1, "none", 2, 96, 4),
    ("vocab-12k-2", 2, 1, "none", 1, 64, 1),
    ("vocab-12k-2", 2, 1, "none", 2, 64, 1),
    ("vocab-12k-2", 2, 1, "full", 2, 64, 1),
    ("vocab-12k-2", 4, 1, "none", 2, 64, 2),
    ("vocab-12k-2", 2, 1, "none", 2, 64, 4),
    ("vocab-12k-2", 2, 1, "none", 1, 64, 4),
    ("gqa-3", 2, 2, "full", 2, 96, 1),
    ("gqa-3", 2, 2, "none", 2, 96, 1),
    ("vocab-12k-2", 2, 2, "full", 2, 64, 1),
    ("vocab-12k-2", 2, 2, "none", 1, 64, 1),
    ("vocab-12k-2", 2, 2, "none", 2, 64, 4),
    ("vocab-12k-2", 2, 2, "full", 2, 64, 2),
)
"""The whole steps `measure_chunked_step` measures for the JSON's ``steps``."""

FP32_STEP_CASES: tuple[tuple[str, int, int, str, int, int, int], ...] = (
    # the same fields, accumulating, with fp32 parameters gathered (the gradients, the
    # chunk's logits and the loss's buffers all fp32)
    ("vocab-12k-2", 2, 1, "none", 2, 64, 1),
    ("vocab-12k-2", 2, 1, "none", 2, 64, 4),
    ("vocab-12k-2", 2, 2, "none", 2, 64, 1),
    ("vocab-12k-2", 2, 2, "full", 2, 64, 2),
    ("gqa-3", 2, 1, "full", 2, 96, 1),
)
"""Steps with fp32 parameters, measured for the JSON's ``steps`` as well."""


def measure_chunked_step(name: str, *, data: int, tensor: int, checkpointing: str,
                         micro_batch_size: int, seq_len: int, chunks: int,
                         fresh: bool = False, param_dtype: str = "bf16") -> dict[str, Any]:
    """One tracked step (``param_dtype`` gathered, foreach AdamW; accumulating, or ``fresh``:
    without an earlier micro-batch, every gradient None when it starts, as torchtitan's
    trainer runs) of `scaleplan.reference.titan_fsdp_step.GRID[name]` on rank 0 of ``data``
    FSDP2 (x ``tensor`` TP) fake ranks with torchtitan's ``ChunkedLossWrapper`` of ``chunks``
    chunks:
    ``resident``, ``delta`` (the peak above it), ``peak_phase``, ``at_peak`` and
    ``batch_bytes``, as `scaleplan.reference.titan_fsdp_step.tracked_step` reports them."""
    b, s = micro_batch_size, seq_len
    case = {"name": name, "data": data, "tensor": tensor, "checkpointing": checkpointing,
            "micro_batch_size": b, "seq_len": s, "chunks": chunks, "fresh": fresh,
            "param_dtype": param_dtype}
    if tensor > 1:
        row = measure_titan_2d_step(name, data=data, tensor=tensor,
                                    checkpointing=checkpointing, micro_batch_size=b,
                                    seq_len=s, chunks=chunks, fresh=fresh,
                                    param_dtype=param_dtype)
        return {k: row[k] for k in ("resident", "delta", "peak_phase", "at_peak",
                                    "batch_bytes", "config")} | case
    row = measure_titan_fsdp_step(name, data=data, checkpointing=checkpointing,
                                  micro_batch_size=b, seq_len=s, param_dtype=param_dtype,
                                  fresh=fresh,
                                  loss_for=lambda model, cfg: chunked_loss(model, cfg, chunks))
    return {k: row[k] for k in ("resident", "delta", "peak_phase", "at_peak", "batch_bytes",
                                "config")} | case


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure `CASES` and write the JSON."""
    cfg = GRID["qwen3"]

    def build() -> dict[str, Any]:
        rows = [{"tensor": t, "micro_batch_size": b, "seq_len": s, "num_chunks": n,
                 "vocab_size": v,
                 **measure_chunked_loss(cfg.replace(vocab_size=v), tensor=t,
                                        micro_batch_size=b, seq_len=s, num_chunks=n)}
                for t, b, s, n, v in CASES]
        steps = [measure_chunked_step(name, data=data, tensor=t, checkpointing=ckpt,
                                      micro_batch_size=b, seq_len=s, chunks=n, fresh=fresh)
                 for name, data, t, ckpt, b, s, n in STEP_CASES for fresh in (False, True)]
        steps += [measure_chunked_step(name, data=data, tensor=t, checkpointing=ckpt,
                                       micro_batch_size=b, seq_len=s, chunks=n,
                                       param_dtype="fp32")
                  for name, data, t, ckpt, b, s, n in FP32_STEP_CASES]
        return {"config": json.loads(cfg.model_dump_json()), "rows": rows, "steps": steps}

    return report_main("scaleplan.reference.titan_chunked_measure", JSON_PATH, argv, build)


if __name__ == "__main__":
    raise SystemExit(main())
