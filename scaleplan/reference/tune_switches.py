"""Measure a training step of torchtune's models with the memory-saving switches, on CPU.

`measure_tune_switches` runs one step of a small torchtune 0.6.1 ``TransformerDecoder``
(`scaleplan.reference.tune_measure.build_tune`) the way ``recipes/full_finetune_single_device.py``
runs it: the recipe's ``loss_step`` with ``torch.nn.CrossEntropyLoss`` or
``CEWithChunkedOutputLoss`` (``loss="chunked"``: the model's output chunked to match),
``enable_activation_checkpointing`` (every ``TransformerSelfAttentionLayer`` wrapped),
``optimizer_in_bwd`` (torchtune's own ``training.register_optim_in_bwd_hooks`` on a
per-parameter ``OptimizerInBackwardWrapper``-style dict of AdamW optimizers, for-loop
implementation) and one micro-batch per step (``gradient_accumulation_steps: 1``: the gradients
set to None after the step). Eager only: ``compile: True`` is measured for saved tensors by
`scaleplan.reference.tune_compiled`. Live bytes by storage (`scaleplan.reference.tracking`);
parameters, buffers, optimizer states and the token ids are resident when the step starts.
``python -m scaleplan.reference.tune_switches`` writes tests/data/tune_switch_peaks.json.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from scaleplan.memory.tune_terms import TuneFamily
from scaleplan.model.config import GPTConfig
from scaleplan.reference.tracking import LiveBytesTracker
from scaleplan.reference.tune_measure import (
    GRID_SHAPES,
    TunePrecision,
    loss_step,
    prepared_tune,
)

__all__ = ["SWITCH_PEAKS_JSON", "measure_tune_switches", "optimizer_for", "states_of",
           "switch_peaks_grid", "tune_step"]

SWITCH_PEAKS_JSON = Path("tests/data/tune_switch_peaks.json")


def optimizer_for(model: Any, in_backward: bool) -> Any:
    """AdamW (for-loop) over every parameter, or, as the recipe does with optimizer_in_bwd, one
    AdamW per parameter stepped by torchtune's post-accumulate-grad hooks (which also zero the
    gradient: ``set_to_none``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not in_backward:
        return torch.optim.AdamW(params, lr=1e-5, foreach=False)
    memory = importlib.import_module("torchtune.training.memory")
    opts = {p: torch.optim.AdamW([p], lr=1e-5, foreach=False) for p in params}
    memory.register_optim_in_bwd_hooks(model=model, optim_dict=opts)
    return opts


def states_of(opt: Any) -> list[torch.Tensor]:
    """The optimizer states (of every per-parameter optimizer in backward mode)."""
    opts = opt.values() if isinstance(opt, dict) else [opt]
    return [v for o in opts for s in o.state.values() for v in s.values()
            if isinstance(v, torch.Tensor)]


def tune_step(model: Any, loss_fn: Any, batch: dict[str, Any], opt: Any,
              tracker: LiveBytesTracker | None = None, context: Any = None,
              after_backward: Any = None) -> None:
    """Forward + loss, backward, the optimizer step (none in backward mode) and zero_grad;
    ``context`` (the recipe's ``activations_handling_ctx``) around the model's forward only,
    ``after_backward`` called when backward is over."""
    if tracker is not None:
        tracker.set_phase("forward")

    def forward(**kwargs: Any) -> Any:
        with context if context is not None else contextlib.nullcontext():
            logits = model(**kwargs)
        if tracker is not None:
            tracker.set_phase("loss")  # the model's forward is over: its saves are made
        return logits

    out = loss_step(forward, loss_fn, dict(batch))
    if tracker is not None:
        tracker.set_phase("backward")
    out.backward()
    del out
    if after_backward is not None:
        after_backward()
    if not isinstance(opt, dict):
        if tracker is not None:
            tracker.set_phase("optimizer")
        opt.step()
        opt.zero_grad(set_to_none=True)


def measure_tune_switches(cfg: GPTConfig, family: TuneFamily, *, micro_batch_size: int,
                          seq_len: int, precision: TunePrecision = "bf16-true",
                          checkpointing: bool = False, loss: str = "standard",
                          optimizer_in_backward: bool = False, seed: int = 0
                          ) -> dict[str, Any]:
    """One measured step (after a warm-up step that makes the optimizer states) of torchtune's
    ``family`` model with the switches; ``peak_bytes`` counts every live storage (weights,
    gradients, states, buffers, token ids, activations), ``phase_peaks`` per phase."""
    model, loss_fn, batch = prepared_tune(cfg, family, precision, checkpointing, loss,
                                          micro_batch_size, seq_len, False, seed)
    opt = optimizer_for(model, optimizer_in_backward)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        tune_step(model, loss_fn, batch, opt)  # warm-up: the optimizer states exist from here
        gc.collect()
        tracker = LiveBytesTracker()
        resident = tracker.add_resident([*model.parameters(), *model.buffers(), *states_of(opt),
                                         batch["tokens"]])
        with tracker:
            tune_step(model, loss_fn, batch, opt, tracker)
    return {"family": family, "micro_batch_size": micro_batch_size, "seq_len": seq_len,
            "precision": precision, "checkpointing": "full" if checkpointing else "none",
            "loss": loss, "optimizer_in_backward": optimizer_in_backward,
            "resident": resident, "peak_bytes": tracker.peak,
            "phase_peaks": {k: v for k, v in tracker.phase_peaks.items() if k != "start"}}


def switch_peaks_grid(b: int = 2, s: int = 48) -> list[dict[str, Any]]:
    """Llama 3.2's small shape, each precision x checkpointing x loss x optimizer_in_backward."""
    rows = []
    for prec, ckpt, loss, in_bwd in itertools.product(
            ("32-true", "bf16-true"), (False, True), ("standard", "chunked"), (False, True)):
        rows.append(measure_tune_switches(
            GRID_SHAPES["llama3_2"], "llama3_2", micro_batch_size=b, seq_len=s,
            precision=prec, checkpointing=ckpt, loss=loss,  # type: ignore[arg-type]
            optimizer_in_backward=in_bwd))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the grid and write tests/data/tune_switch_peaks.json."""
    del argv
    rows = switch_peaks_grid()
    SWITCH_PEAKS_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stdout.write(f"{len(rows)} rows -> {SWITCH_PEAKS_JSON}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
