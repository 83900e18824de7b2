"""Measure what torchtune's models save for backward with ``compile: True``, on CPU.

The recipe calls ``training.compile_model(model)``, which compiles every
``TransformerSelfAttentionLayer`` on its own (inductor), and ``training.compile_loss(loss_fn)``,
whose return value ``full_finetune_single_device`` drops for a plain ``torch.nn.CrossEntropyLoss``
(only ``CEWithChunkedOutputLoss`` is patched in place): the embedding, the final norm, the output
projection and the standard loss stay eager. `measure_tune_compiled` does the same and, after
one forward and the recipe's loss step, walks the autograd graph from the loss: each layer's
``CompiledFunctionBackward`` node holds what AOT autograd's min-cut partitioner chose to save,
the eager nodes hold their ``_saved_*`` tensors. Every storage counts once, whole, parameters and
buffers excluded, as in `scaleplan.reference.tune_measure`. (Its saved-tensor hooks and dispatch
mode cannot watch a compiled region, which is why this module reads the graph instead.)

``python -m scaleplan.reference.tune_compiled`` measures the grid and writes
tests/data/tune_compiled.json, replayed by tests/test_tune_memory.py.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from scaleplan.memory.tune_terms import TUNE_FAMILIES, TuneFamily
from scaleplan.model.config import GPTConfig
from scaleplan.reference.compiled import saved_by_node
from scaleplan.reference.tracking import storage_key
from scaleplan.reference.tune_measure import (
    COMPILED_JSON,
    GRID_SHAPES,
    TunePrecision,
    build_tune,
    loss_step,
    tune_batch,
    tune_loss_fn,
)

__all__ = ["CHUNKED_JSON", "COMPILED_JSON", "chunked_grid", "compiled_grid", "main",
           "measure_tune_compiled", "saved_storages"]

CHUNKED_JSON = Path("tests/data/tune_compiled_chunked.json")


def saved_storages(loss: torch.Tensor, skip: set[int]) -> dict[int, tuple[str, int]]:
    """{storage: (autograd node's type, bytes)} of every tensor the graph behind ``loss``
    saved, storages in ``skip`` (parameters, buffers) left out."""
    found: dict[int, tuple[str, int]] = {}
    for node, tensors in saved_by_node(loss):
        for t in tensors:
            key = storage_key(t)
            if key not in skip and key not in found:
                found[key] = (type(node).__name__, int(t.untyped_storage().nbytes()))
    return found


def measure_tune_compiled(cfg: GPTConfig, family: TuneFamily, *, micro_batch_size: int,
                          seq_len: int, precision: TunePrecision = "bf16-true",
                          packed: bool = False, loss: str = "standard", seed: int = 0
                          ) -> dict[str, int]:
    """Saved-for-backward bytes of one forward + recipe loss of torchtune's ``family`` model with
    its layers compiled as ``compile: True`` does: ``{"saved_for_backward": total,
    "compiled_layers": the compiled nodes' share}``. ``loss="chunked"``:
    ``CEWithChunkedOutputLoss``, whose per-chunk cross-entropy ``compile_loss`` compiles in
    place (its compiled nodes then count among ``compiled_layers``)."""
    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = build_tune(cfg, family, precision)
    model.train()
    loss_fn = tune_loss_fn(model, loss)
    batch = tune_batch(cfg, micro_batch_size, seq_len, packed)
    skip = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    with warnings.catch_warnings():
        # torch's own warnings while dynamo traces and inductor first imports (rms_norm's dtype
        # mismatch, torch.jit.script_method's deprecation, dynamo probing .grad of non-leaf
        # tensors) would be errors under the tests' filterwarnings; they are not about memory
        warnings.simplefilter("ignore")
        training = importlib.import_module("torchtune.training")
        training.compile_model(model, verbose=False)
        training.compile_loss(loss_fn, verbose=False)  # in place for the chunked loss only
        out = loss_step(model, loss_fn, batch)
    saved = saved_storages(out, skip)
    layers = sum(n for node, n in saved.values() if "CompiledFunction" in node)
    return {"saved_for_backward": sum(n for _, n in saved.values()), "compiled_layers": layers}


def compiled_grid(families: tuple[str, ...] = TUNE_FAMILIES, *, b: int = 2, s: int = 48
                  ) -> list[dict[str, Any]]:
    """Every family x precision x packed at ``b`` x ``s``; one row per case."""
    rows = []
    for family, prec, packed in itertools.product(families, ("32-true", "bf16-true"),
                                                  (False, True)):
        m = measure_tune_compiled(GRID_SHAPES[family], family,  # type: ignore[arg-type]
                                  micro_batch_size=b, seq_len=s,
                                  precision=prec, packed=packed)  # type: ignore[arg-type]
        rows.append({"family": family, "precision": prec, "micro_batch_size": b,
                     "seq_len": s, "packed": packed, **m})
    return rows


def chunked_grid(*, b: int = 2, s: int = 48) -> list[dict[str, Any]]:
    """Llama 3.2 and Qwen2 shapes, fp32 and bf16, with the compiled chunked loss."""
    rows = []
    for family, prec in itertools.product(("llama3_2", "qwen2"), ("32-true", "bf16-true")):
        m = measure_tune_compiled(GRID_SHAPES[family], family,  # type: ignore[arg-type]
                                  micro_batch_size=b, seq_len=s,
                                  precision=prec, loss="chunked")  # type: ignore[arg-type]
        rows.append({"family": family, "precision": prec, "micro_batch_size": b,
                     "seq_len": s, "loss": "chunked", **m})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the compiled grid (``[families...]``) and write `COMPILED_JSON`; with
    ``--chunked``, the chunked-loss cases to `CHUNKED_JSON`."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "--chunked" in args:
        rows = chunked_grid()
        CHUNKED_JSON.write_text(json.dumps(rows, indent=1) + "\n")
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    families = tuple(args) or TUNE_FAMILIES
    rows = compiled_grid(families)
    COMPILED_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stdout.write(json.dumps(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
