"""The chunked loss around a Hugging Face transformers model, measured on CPU.

`measure_hf_chunked` runs one forward of a transformers model built by
`scaleplan.reference.hf_measure.hf_config` the way torchtune's ``CEWithChunkedOutputLoss`` runs
it (torchtune 0.6.1, modules/loss/ce_chunked_output_loss.py, with the decoder's
``chunked_output``): the base model's last hidden states split into 8 sequence chunks, each
projected by the output embeddings, upcast to fp32 and its cross-entropy summed; and records,
by storage, what autograd saves (parameters excluded, autocast's weight copies set apart), as
`scaleplan.reference.hf_measure.measure_hf` does for the model's own loss.
``python -m scaleplan.reference.hf_switches`` writes docs/validation/step-switches-hf.json,
replayed without torch by tests/test_step_switches_replay.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scaleplan.memory.hf_terms import HF_FAMILIES, HFFamily
from scaleplan.model.config import GPTConfig
from scaleplan.reference.hf_measure import GRID_SHAPES, build_hf_model
from scaleplan.reference.offload import Offloader, offloading
from scaleplan.reference.tracking import LiveBytesTracker, SavedTensorsRecorder, storage_key

__all__ = ["grid", "main", "measure_hf_chunked"]

LOSS_CHUNKS = 8  # torchtune CEWithChunkedOutputLoss(num_output_chunks=8)


def _chunked_forward(model: Any, ids: torch.Tensor, labels: torch.Tensor,
                     off: Offloader | None = None) -> torch.Tensor:
    head = model.get_output_embeddings()
    with offloading(off, head):
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = [head(c) for c in hidden.chunk(LOSS_CHUNKS, dim=1)]
    total = torch.zeros(())
    for lg, tg in zip(logits, labels.chunk(LOSS_CHUNKS, dim=1), strict=True):
        total = total + F.cross_entropy(lg.reshape(-1, lg.size(-1)).float(), tg.reshape(-1),
                                        reduction="sum")
    del logits
    return total / ids.numel()


def measure_hf_chunked(cfg: GPTConfig, family: HFFamily, *, micro_batch_size: int,
                       seq_len: int, precision: str = "32-true", attention: str = "sdpa",
                       activation_offload: bool = False, seed: int = 0) -> dict[str, Any]:
    """What autograd saves for one forward + chunked loss of ``family``'s model: total bytes,
    by module, and the autocast weight copies (``precision`` "32-true" or "bf16-mixed"); with
    ``activation_offload``, the base model runs under `scaleplan.reference.offload`'s
    emulation of torchtune's ``OffloadActivations`` and ``saved_on_device`` is what stays."""
    torch.manual_seed(seed)
    model = build_hf_model(cfg, family, attention)  # type: ignore[arg-type]
    model.train()
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    # the recipe's labels are their own tensor (shifted with torch.hstack), not the input ids
    labels = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    tracker = LiveBytesTracker()
    recorder = SavedTensorsRecorder(param_keys={storage_key(p) for p in model.parameters()})
    off = Offloader(recorder) if activation_offload else None
    tracker.on_new_storage = recorder.note_new_storage
    gc.collect()
    with tracker, recorder.recording(model):
        if precision == "bf16-mixed":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = _chunked_forward(model, ids, labels, off)
        else:
            loss = _chunked_forward(model, ids, labels, off)
        tracker.on_new_storage = None
    by_module, _, casts = recorder.totals()
    on_device = sum(by_module.values())
    if off is not None:  # the base model's saves went to the offloader's hooks
        inner = [(i, n) for i, (k, n) in enumerate(off.saved)
                 if k not in recorder.cast_keys and k not in recorder.by_storage]
        on_device += sum(n for i, n in inner if i in off.kept)
    del loss
    return {"family": family, "micro_batch_size": micro_batch_size, "seq_len": seq_len,
            "precision": precision, "attention": attention, "loss": "chunked",
            "activation_offload": activation_offload, "saved_on_device": on_device,
            "saved_for_backward": sum(by_module.values()), "saved_by_module": by_module,
            "autocast_weight_copies": casts}


def grid(b: int = 2, s: int = 44) -> list[dict[str, Any]]:
    """Every family's small model (`scaleplan.reference.hf_measure.GRID_SHAPES`), fp32 and
    bf16 autocast, SDPA; 44 tokens: 8 chunks of 6, the last of 2."""
    return [measure_hf_chunked(GRID_SHAPES[f], f, micro_batch_size=b, seq_len=s, precision=p,
                               activation_offload=o)
            for f in HF_FAMILIES for p in ("32-true", "bf16-mixed") for o in (False, True)]


def main(argv: list[str] | None = None) -> int:
    """Measure the grid and write it as JSON."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.hf_switches")
    parser.add_argument("--out", default="docs/validation/step-switches-hf.json")
    args = parser.parse_args(argv)
    rows = grid()
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {len(rows)} measurements to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
