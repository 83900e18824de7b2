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

``python -m scaleplan.reference.titan_chunked_measure --write`` writes
``docs/validation/torchtitan-chunked-loss.json`` (replayed by tests/test_titan_chunked_loss.py).
"""

from __future__ import annotations

import gc
import importlib
import json
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.titan_measure import TitanTracker, report_main
from scaleplan.reference.titan_qwen3_measure import GRID
from scaleplan.reference.titan_tp_measure import fake_world, titan_tp_model

__all__ = ["CASES", "JSON_PATH", "main", "measure_chunked_loss"]

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


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure `CASES` and write the JSON."""
    cfg = GRID["qwen3"]

    def build() -> dict[str, Any]:
        rows = [{"tensor": t, "micro_batch_size": b, "seq_len": s, "num_chunks": n,
                 "vocab_size": v,
                 **measure_chunked_loss(cfg.replace(vocab_size=v), tensor=t,
                                        micro_batch_size=b, seq_len=s, num_chunks=n)}
                for t, b, s, n, v in CASES]
        return {"config": json.loads(cfg.model_dump_json()), "rows": rows}

    return report_main("scaleplan.reference.titan_chunked_measure", JSON_PATH, argv, build)


if __name__ == "__main__":
    raise SystemExit(main())
