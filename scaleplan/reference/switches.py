"""Measure the memory-saving switches of a training step on the reference GPT, on CPU.

`measure_switches` runs one AdamW step of `scaleplan.reference.model.GPT` with any of the four
switches of `scaleplan.memory.training.training_memory`, each built the way torchtune 0.6.1
builds it (read from its source, not imported: its offloading needs CUDA streams):

- ``loss="chunked"``: torchtune's ``TransformerDecoder.chunked_output`` and
  ``CEWithChunkedOutputLoss`` (torchtune/modules/transformer.py, modules/loss/
  ce_chunked_output_loss.py): the final hidden states split into ``loss_chunks`` chunks along
  the sequence, each projected by the output layer, the list returned; then each chunk upcast
  to fp32 (``logits.float()``) and cross-entropy summed chunk by chunk; the recipe drops the
  logits once the loss is computed (``del logits``).
- ``optimizer_in_backward``: torchtune's ``register_optim_in_bwd_hooks`` (training/memory.py):
  one optimizer per parameter, stepped and zeroed (``set_to_none``) by a post-accumulate-grad
  hook as soon as the parameter's gradient is ready.
- ``activation_offload``: torchtune's ``OffloadActivations``, emulated on CPU by
  `scaleplan.reference.offload`.
- ``gradient_accumulation=False``: gradients start the measured step as None (one micro-batch per
  optimizer step); True: an earlier micro-batch's gradients are resident.

The measured step's peak and phase peaks are live device bytes, as in
`scaleplan.reference.measure`. ``python -m scaleplan.reference.switches`` writes the grid to
docs/validation/step-switches.json, replayed without torch by tests/test_step_switches_replay.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from scaleplan.model.config import GPTConfig
from scaleplan.reference.offload import OFFLOAD_MIN_BYTES, OFFLOAD_STASH, Offloader, offloading
from scaleplan.reference.step import TrainingStep
from scaleplan.reference.tracking import LiveBytesTracker, SavedTensorsRecorder, storage_key

__all__ = ["GRID", "OFFLOAD_MIN_BYTES", "OFFLOAD_STASH", "SwitchMeasurement", "grid", "main",
           "measure_switches", "report"]



class SwitchMeasurement(BaseModel):
    """One measured step with switches. Bytes are ints, live device bytes by storage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: GPTConfig
    micro_batch_size: int
    seq_len: int
    precision: str
    checkpointing: bool
    loss: str
    loss_chunks: int
    optimizer_in_backward: bool
    activation_offload: bool
    gradient_accumulation: bool
    saved_for_backward: int = Field(description="Storages autograd keeps after forward + loss, "
                                    "parameters and autocast weight copies excluded (with "
                                    "offloading: before offloading, as packed).")
    saved_by_module: dict[str, int]
    offloaded: int = Field(description="Bytes copied to host memory (per saved tensor).")
    saved_on_device: int = Field(description="saved_for_backward less the storages offloaded.")
    live_after_forward: int = Field(description="Live device bytes once the loss returned.")
    resident: int = Field(description="Live device bytes when the step starts.")
    gradients_resident: int = Field(description="Gradient bytes resident when the step starts.")
    peak_bytes: int
    phase_peaks: dict[str, int]


class _ChunkedHead(nn.Module):
    """torchtune's ``chunked_output``: the output layer applied to each sequence chunk of the
    final hidden states; returns the list of chunk logits."""

    def __init__(self, head: nn.Module, chunks: int) -> None:
        super().__init__()
        self.head, self.chunks = head, chunks

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [self.head(c) for c in h.chunk(self.chunks, dim=1)]


def _chunked_loss(logits: list[torch.Tensor], targets: torch.Tensor,
                  chunks: int) -> torch.Tensor:
    """torchtune's ``CEWithChunkedOutputLoss.forward``: each chunk upcast to fp32, summed."""
    total = torch.zeros((), device=targets.device)
    for lg, tg in zip(logits, targets.chunk(chunks, dim=1), strict=True):
        total = total + F.cross_entropy(lg.reshape(-1, lg.size(-1)).float(), tg.reshape(-1),
                                        reduction="sum")
    return total / targets.numel()


def _in_backward_hooks(step: TrainingStep) -> None:
    """torchtune's register_optim_in_bwd_hooks: one AdamW per parameter, stepped and zeroed
    (set_to_none) as soon as its gradient is accumulated."""
    opts = {p: torch.optim.AdamW([p], lr=1e-4, foreach=False) for p in step.params}

    def optim_step(p: torch.Tensor) -> None:
        opts[p].step()
        opts[p].zero_grad(set_to_none=True)

    for p in step.params:
        p.register_post_accumulate_grad_hook(optim_step)  # type: ignore[no-untyped-call]
    step.in_backward = opts  # type: ignore[attr-defined]


def _loss(step: TrainingStep, off: Offloader | None, recorder: SavedTensorsRecorder | None,
          chunks: int | None) -> torch.Tensor:
    """One forward + loss as the recipe runs it (the logits dropped once the loss is taken)."""
    record = recorder.recording(step.model) if recorder is not None else nullcontext()
    with record, step.autocast():
        with offloading(off, step.model.lm_head):
            logits, _ = step.model(step.idx)
        if chunks is None:
            out = F.cross_entropy(logits.view(-1, logits.size(-1)), step.targets.view(-1))
        else:
            out = _chunked_loss(logits, step.targets, chunks)
    del logits
    return out


def _resident(step: TrainingStep) -> dict[str, list[torch.Tensor]]:
    groups = step.resident_groups()
    opts: dict[Any, torch.optim.Optimizer] = getattr(step, "in_backward", {})
    groups["optimizer_states"] += [v for o in opts.values() for s in o.state.values()
                                   for v in s.values() if isinstance(v, torch.Tensor)]
    return groups


def measure_switches(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                     precision: str = "32-true", checkpointing: bool = False,
                     loss: str = "standard", loss_chunks: int = 8,
                     optimizer_in_backward: bool = False, activation_offload: bool = False,
                     gradient_accumulation: bool = True, seed: int = 0) -> SwitchMeasurement:
    """Measure one training step of the reference GPT with the switches (flash attention,
    for-loop AdamW, logits dropped after the loss as torchtune's recipe does).

    >>> m = measure_switches(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8,
    ...                                vocab_size=8), micro_batch_size=1, seq_len=2)
    >>> m.gradients_resident == 4 * 316, m.offloaded
    (True, 0)
    """
    if optimizer_in_backward and gradient_accumulation:
        raise ValueError("optimizer_in_backward needs gradient_accumulation=False (torchtune "
                         "refuses gradient_accumulation_steps > 1 with optimizer_in_bwd)")
    torch.manual_seed(seed)
    step = TrainingStep(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                        precision=precision, attention="flash", checkpointing=checkpointing,
                        device=torch.device("cpu"), cuda_semantics=False, optimizer="for-loop")
    chunks = loss_chunks if loss == "chunked" else None
    if chunks is not None:
        step.model.lm_head = _ChunkedHead(step.model.lm_head, chunks)  # type: ignore[assignment]
    if optimizer_in_backward:
        _in_backward_hooks(step)
    recorder = SavedTensorsRecorder(param_keys={storage_key(p) for p in step.params})
    off = Offloader(recorder) if activation_offload else None
    run = _no_update if optimizer_in_backward else step.update
    _loss(step, off, None, chunks).backward()  # type: ignore[no-untyped-call]  # warm-up
    run()
    step.zero_grad()
    if gradient_accumulation:
        _loss(step, off, None, chunks).backward()  # type: ignore[no-untyped-call]
    if off is not None:
        off.reset()
    gc.collect()
    m = _measured_step(step, off, recorder, run, chunks)
    return SwitchMeasurement(
        config=cfg, micro_batch_size=micro_batch_size, seq_len=seq_len, precision=precision,
        checkpointing=checkpointing, loss=loss, loss_chunks=loss_chunks,
        optimizer_in_backward=optimizer_in_backward, activation_offload=activation_offload,
        gradient_accumulation=gradient_accumulation,
        offloaded=off.offloaded if off is not None else 0, **m)


def _no_update() -> None:
    """The optimizer step of optimizer_in_backward: already taken, parameter by parameter."""


def _measured_step(step: TrainingStep, off: Offloader | None, recorder: SavedTensorsRecorder,
                   run: Callable[[], None], chunks: int | None) -> dict[str, Any]:
    """Forward + loss, backward, the optimizer step and zero_grad under the trackers."""
    tracker = LiveBytesTracker()
    sizes = {name: tracker.add_resident(ts) for name, ts in _resident(step).items()}
    tracker.on_new_storage = recorder.note_new_storage
    with tracker:
        tracker.set_phase("forward")
        out = _loss(step, off, recorder, chunks)
        live_after_forward = tracker.current
        tracker.on_new_storage = None
        tracker.set_phase("backward")
        out.backward()  # type: ignore[no-untyped-call]
        del out
        if off is not None:
            off.finish()
        tracker.set_phase("optimizer")
        run()
        tracker.set_phase("zero_grad")
        step.zero_grad()
    by_module, _, _ = recorder.totals()
    on_device = sum(by_module.values())
    if off is not None:  # the model's saves went to the offloader's hooks (the innermost)
        model = [(i, n) for i, (k, n) in enumerate(off.saved)
                 if k not in recorder.cast_keys and k not in recorder.by_storage]
        by_module["model (offloading hooks)"] = sum(n for _, n in model)
        on_device += sum(n for i, n in model if i in off.kept)
    return {"saved_for_backward": sum(by_module.values()), "saved_by_module": by_module,
            "saved_on_device": on_device, "live_after_forward": live_after_forward,
            "resident": sum(sizes.values()), "gradients_resident": sizes["grads"],
            "peak_bytes": tracker.peak,
            "phase_peaks": {k: v for k, v in tracker.phase_peaks.items() if k != "start"}}


GRID: dict[str, GPTConfig] = {
    "gpt2-like": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200),
    "llama-like": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64,
                            vocab_size=200, bias=False, mlp="swiglu", norm="rmsnorm",
                            position="rope", tie_embeddings=False, mlp_hidden=160),
}
"""The two small models of tests/test_memory_vs_reference.py."""

_SWITCHES: tuple[dict[str, Any], ...] = (
    {},
    {"gradient_accumulation": False},
    {"loss": "chunked"},
    {"loss": "chunked", "gradient_accumulation": False},
    {"optimizer_in_backward": True, "gradient_accumulation": False},
    {"activation_offload": True},
    {"loss": "chunked", "optimizer_in_backward": True, "gradient_accumulation": False,
     "activation_offload": True},
)


def grid(b: int = 2, s: int = 48) -> list[dict[str, Any]]:
    """Every model x precision ("32-true", "bf16-mixed", "bf16-true") x switch set."""
    rows = []
    for name, cfg in GRID.items():
        for precision in ("32-true", "bf16-mixed", "bf16-true"):
            for switches in _SWITCHES:
                m = measure_switches(cfg, micro_batch_size=b, seq_len=s, precision=precision,
                                     **switches)
                rows.append({"model": name, **m.model_dump(mode="json")})
    return rows


def _switch_names(row: dict[str, Any]) -> str:
    on = [f"loss={row['loss']}" if row["loss"] != "standard" else "",
          "optimizer_in_backward" if row["optimizer_in_backward"] else "",
          "activation_offload" if row["activation_offload"] else "",
          "" if row["gradient_accumulation"] else "gradient_accumulation=False"]
    return ", ".join(w for w in on if w) or "(none)"


_PAGE = """# Memory-saving switches, measured on CPU

`training_memory`'s ``loss="chunked"``, ``optimizer_in_backward``, ``activation_offload`` and
``gradient_accumulation=False`` (`scaleplan.memory.step_switches`) against one training step of
the reference GPT with each switch run the way torchtune 0.6.1 builds it
(`scaleplan.reference.switches`: `CEWithChunkedOutputLoss` with the decoder's chunked output,
`register_optim_in_bwd_hooks`, `OffloadActivations` with its defaults, gradients left as None
between steps). Micro-batch 2 x 48 tokens, flash (SDPA) attention, for-loop AdamW, logits dropped
after the loss as torchtune's recipe does. Bytes are live CPU storages, counted once each.

- *saved*: what autograd keeps after forward + loss (parameters and autocast weight copies
  excluded); with offloading, what the pack hooks received.
- *on the GPU*: the saved storages left on the device; with offloading, those kept (the loss
  side, the output layer's input, tensors under 1024 bytes), without it all of them.
- *peak*: the most live bytes at any moment of the step, resident states included.

Regenerate with ``python -m scaleplan.reference.switches`` (measures, about 4 minutes on 2
cores) or ``--from-json`` (this table from docs/validation/step-switches.json);
tests/test_step_switches_replay.py replays the JSON without torch.

What is exact and what is not: the saved bytes and what offloading leaves on the GPU are exact
in every row; the peak is exact (within the 4-byte loss scalar) with the standard loss and no
offloading, and within a few hundred bytes (0.14%) with the chunked loss, whose worst moment in
fp32 is the output layer's backward (each chunk's weight gradient summed into the next). With
offloading, the in-flight tensors of the forward stash and of a block's MLP backward are derived
per operation for nanoGPT's GELU and the gated MLPs: within 4%, an over-estimate where
optimizer_in_backward frees the gradients as they come.

The chunked loss around Hugging Face transformers models (Llama, Qwen2, Mistral, Gemma, GPT-2
and GPT-NeoX layouts, fp32 and bf16 autocast, SDPA, 2 x 44 tokens) is measured by
`scaleplan.reference.hf_switches` (docs/validation/step-switches-hf.json): what autograd saves
matches `training_memory(..., implementation="hf", loss="chunked")` exactly in all 12 cases, and
with `activation_offload=True` (the base model under the offloading hooks) what stays on the
GPU matches exactly in all 12 as well.

"""


def report(rows: list[dict[str, Any]]) -> str:
    """docs/validation/step-switches.md: each measured row beside `training_memory`'s
    prediction."""
    from scaleplan.memory.training import training_memory

    lines = ["| model | precision | switches | saved (measured) | on the GPU (measured / "
             "predicted) | peak (measured) | peak (predicted) | error | worst moment |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        p = training_memory(GPTConfig(**r["config"]), micro_batch_size=r["micro_batch_size"],
                            seq_len=r["seq_len"], precision=r["precision"], device="cpu",
                            optimizer_impl="for-loop", hold_logits=False, loss=r["loss"],
                            optimizer_in_backward=r["optimizer_in_backward"],
                            activation_offload=r["activation_offload"],
                            gradient_accumulation=r["gradient_accumulation"])
        kept = p.saved_for_backward - p.saved_breakdown.get("offload_in_flight", 0)
        device = (f"{r['saved_on_device']:,} / {kept:,}" if r["activation_offload"]
                  else f"{r['saved_for_backward']:,} / {p.saved_for_backward:,}")
        error = 100 * (p.tensor_peak / r["peak_bytes"] - 1)
        lines.append(f"| {r['model']} | {r['precision']} | {_switch_names(r)} | "
                     f"{r['saved_for_backward']:,} | {device} | {r['peak_bytes']:,} | "
                     f"{p.tensor_peak:,} | {error:+.2f}% | {p.peak_moment} |")
    return _PAGE + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure the grid and write it as JSON (default docs/validation/step-switches.json) and
    its page (``--table``, default docs/validation/step-switches.md); ``--from-json``
    rewrites the table from the JSON without measuring."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.switches")
    parser.add_argument("--out", default="docs/validation/step-switches.json")
    parser.add_argument("--table", default="docs/validation/step-switches.md")
    parser.add_argument("--from-json", action="store_true")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = json.loads(Path(args.out).read_text())
    else:
        rows = grid()
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    Path(args.table).write_text(report(rows))
    print(f"wrote {len(rows)} measurements to {args.out} and {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
