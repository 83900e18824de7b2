"""Measure torchtune's own activation offloading on CPU: what ``OffloadActivations`` moves to
host memory and what it leaves on the device, in a step of the recipe.

``recipes/full_finetune_single_device.py`` (torchtune 0.6.1) builds its context with
``training.get_act_offloading_ctx_manager(model, enable_activation_offloading)``
(training/_activation_offloading.py:373-449): an ``OffloadActivations()`` and a ``NoOpManager``
entered by forward hooks around the output projection (``model.output``, or
``model.output.linear`` for a ``TiedLinear``), and runs only the model under it (``_loss_step``:
``with self.activations_handling_ctx: logits = self._model(**batch)``; the loss is outside). The
recipe refuses offloading without activation checkpointing (``__init__``: "should only be True
when enable_activation_checkpointing is True").

Here torchtune's class runs itself, on CPU: its ``use_streams=False`` path (its streams need
CUDA), built with ``torch.cuda.default_stream`` stubbed (its one CUDA call on that path) and
``use_pin_memory=False``. Its pack hook runs unchanged, outside the live-bytes tracker (its host
copy is host memory); its unpack hook gets the host copy cloned back first (the
``.to("cuda")`` it would do), so what comes back is device memory the tracker counts. Every
pack is logged: bytes, whether torchtune moved it. ``python -m scaleplan.reference.tune_offload``
writes tests/data/tune_offload.json.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import _disable_current_modes

from scaleplan.memory.tune_terms import TuneFamily
from scaleplan.model.config import GPTConfig
from scaleplan.reference.offload import Offloader, offloading
from scaleplan.reference.tracking import LiveBytesTracker, SavedTensorsRecorder, storage_key
from scaleplan.reference.tune_measure import GRID_SHAPES, TunePrecision, prepared_tune
from scaleplan.reference.tune_switches import (
    measure_tune_switches,
    optimizer_for,
    states_of,
    tune_step,
)

__all__ = ["LORA_OFFLOAD_JSON", "OFFLOAD_JSON", "OffloadLog", "lora_offload_grid",
           "measure_tune_lora_offload", "measure_tune_offload", "offload_grid",
           "tune_offloading"]

OFFLOAD_JSON = Path("tests/data/tune_offload.json")
LORA_OFFLOAD_JSON = Path("tests/data/tune_lora_offload.json")


class OffloadLog:
    """What torchtune's pack hook received: (bytes, moved to host) per saved tensor, in order,
    and the device bytes its unpack hook brought back."""

    def __init__(self) -> None:
        self.packs: list[tuple[int, bool]] = []
        self.brought_back = 0

    @property
    def offloaded(self) -> int:
        """Bytes torchtune copied to host memory."""
        return sum(n for n, moved in self.packs if moved)

    def reset(self) -> None:
        """Forget earlier steps."""
        self.packs.clear()
        self.brought_back = 0


def tune_offloading(model: Any) -> tuple[Any, OffloadLog]:
    """(torchtune's ``get_act_offloading_ctx_manager(model, True)`` with its
    ``OffloadActivations(use_pin_memory=False, use_streams=False)``, made to run on CPU, the
    log of its packs)."""
    mod = importlib.import_module("torchtune.training._activation_offloading")
    log = OffloadLog()
    base = mod.OffloadActivations

    class CpuOffloadActivations(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            with mock.patch("torch.cuda.default_stream", lambda: None):
                super().__init__(use_pin_memory=False, use_streams=False)
            pack: Any = getattr(self, "pack_hook")  # noqa: B009 (set by the base class)
            unpack: Any = getattr(self, "unpack_hook")  # noqa: B009

            def pack_hook(t: torch.Tensor) -> Any:
                with _disable_current_modes():  # its host copy is not device memory
                    tid = pack(t)
                log.packs.append((t.element_size() * t.nelement(), bool(self.tracker[tid][1])))
                return tid

            def unpack_hook(tid: Any) -> torch.Tensor:
                host, moved = self.tracker[tid]
                if moved:  # its .to("cuda"): a new device tensor
                    back = host.clone()
                    log.brought_back += back.element_size() * back.nelement()
                    self.tracker[tid] = (back, False)
                return unpack(tid)  # type: ignore[no-any-return]

            self.pack_hook, self.unpack_hook = pack_hook, unpack_hook

    with mock.patch.object(mod, "OffloadActivations", CpuOffloadActivations):
        ctx = mod.get_act_offloading_ctx_manager(model, True)
    return ctx, log


def _streams_emulated(model: Any) -> tuple[Any, Any]:
    """(context, end-of-backward callback) of `scaleplan.reference.offload.Offloader` around
    the model, the output projection under no hooks, as the recipe's context arranges."""
    output = model.output
    head = output.linear if not isinstance(output, torch.nn.Module) else output  # TiedLinear
    recorder = SavedTensorsRecorder(param_keys={storage_key(p) for p in model.parameters()})
    off = Offloader(recorder)

    class Context:  # `offloading` afresh for each step
        def __enter__(self) -> None:
            self.cm = offloading(off, head)
            self.cm.__enter__()

        def __exit__(self, *exc: Any) -> None:
            self.cm.__exit__(*exc)

    return Context(), off.finish


def measure_tune_offload(cfg: GPTConfig, family: TuneFamily, *, micro_batch_size: int,
                         seq_len: int, precision: TunePrecision = "bf16-true",
                         checkpointing: bool = True, loss: str = "standard",
                         optimizer_in_backward: bool = False, streams: bool = False,
                         seed: int = 0) -> dict[str, Any]:
    """One measured step (after a warm-up step) of torchtune's ``family`` model under its
    offloading context: ``offloaded`` (bytes torchtune moved to host), ``kept`` (bytes of the
    saved tensors it left on the device, counted per pack as it counts them), the packs in
    order, ``peak_bytes`` and ``phase_peaks`` of every live storage (as
    `scaleplan.reference.tune_switches.measure_tune_switches`; phase "loss" starts when the
    model's forward returns). ``streams``: its default ``use_streams=True`` rules (forward and
    backward stashes) instead, emulated by `scaleplan.reference.offload.Offloader` (torchtune's
    class needs CUDA streams for them); the pack log then stays empty."""
    model, loss_fn, batch = prepared_tune(cfg, family, precision, checkpointing, loss,
                                          micro_batch_size, seq_len, False, seed)
    if streams:
        (ctx, finish), log = _streams_emulated(model), OffloadLog()
    else:
        (ctx, log), finish = tune_offloading(model), None
    opt = optimizer_for(model, optimizer_in_backward)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        tune_step(model, loss_fn, batch, opt, context=ctx, after_backward=finish)  # warm-up
        gc.collect()
        log.reset()
        tracker = LiveBytesTracker()
        resident = tracker.add_resident([*model.parameters(), *model.buffers(),
                                         *states_of(opt), batch["tokens"]])
        with tracker:
            tune_step(model, loss_fn, batch, opt, tracker, context=ctx,
                      after_backward=finish)
    return {"family": family, "micro_batch_size": micro_batch_size, "seq_len": seq_len,
            "precision": precision, "checkpointing": "full" if checkpointing else "none",
            "loss": loss, "optimizer_in_backward": optimizer_in_backward,
            "offloaded": log.offloaded, "kept": sum(n for n, moved in log.packs if not moved),
            "packs": [[n, moved] for n, moved in log.packs],
            "brought_back": log.brought_back, "resident": resident,
            "peak_bytes": tracker.peak,
            "phase_peaks": {k: v for k, v in tracker.phase_peaks.items() if k != "start"}}


def offload_grid(b: int = 4, s: int = 128) -> list[dict[str, Any]]:
    """Llama 3.2's small shape, checkpointed (the recipe offloads only then), each precision x
    loss x optimizer_in_backward, then without checkpointing (the standard loss, each
    precision), offloaded by torchtune's class (``streams=False``) and by the emulated
    streams; each row carries the same step without offloading (``plain_peak_bytes``,
    ``plain_phase_peaks``, from `scaleplan.reference.tune_switches.measure_tune_switches`)."""
    rows = []
    cases = [(prec, True, loss, in_bwd) for prec, loss, in_bwd in itertools.product(
        ("32-true", "bf16-true"), ("standard", "chunked"), (False, True))]
    cases += [("bf16-true", False, "standard", False), ("32-true", False, "standard", False)]
    for prec, ckpt, loss, in_bwd in cases:
        case = dict(micro_batch_size=b, seq_len=s, precision=prec, checkpointing=ckpt,
                    loss=loss, optimizer_in_backward=in_bwd)
        plain = measure_tune_switches(GRID_SHAPES["llama3_2"], "llama3_2",
                                      **case)  # type: ignore[arg-type]
        for streams in (False, True):
            row = measure_tune_offload(GRID_SHAPES["llama3_2"], "llama3_2", streams=streams,
                                       **case)  # type: ignore[arg-type]
            rows.append({**row, "streams": streams, "plain_peak_bytes": plain["peak_bytes"],
                         "plain_phase_peaks": plain["phase_peaks"]})
    return rows


def measure_tune_lora_offload(cfg: GPTConfig, family: str, lora: Any, *,
                              micro_batch_size: int, seq_len: int, base_weights: str = "bf16",
                              loss: str = "chunked", offload: bool = True,
                              streams: bool = False, compiled: bool = False,
                              seed: int = 0) -> dict[str, Any]:
    """One measured step (after a warm-up step) of torchtune's LoRA model (built as
    `scaleplan.reference.tune_lora_measure.build_tune_lora` does) as
    ``lora_finetune_single_device`` runs it with ``enable_activation_checkpointing`` and
    ``enable_activation_offloading``: ``compiled`` layers first (``training.compile_model``,
    then checkpointing wraps them, recipes/lora_finetune_single_device.py:443-449) and the
    compiled loss (``training.compile_loss``), the offloading context around the model's
    forward only, a for-loop ``torch.optim.AdamW`` over ``model.parameters()``. ``offload``
    False: the same checkpointed step without the context. The result as
    `measure_tune_offload`'s (``offloaded``, ``kept``, ``packs``, ``peak_bytes``,
    ``phase_peaks``)."""
    from scaleplan.reference.tune_lora_measure import build_tune_lora, resident_tensors
    from scaleplan.reference.tune_measure import tune_batch, tune_loss_fn

    torch.manual_seed(seed)
    if compiled:
        torch._dynamo.reset()
    model = build_tune_lora(cfg, family, lora, base_weights=base_weights)
    model.train()
    training = importlib.import_module("torchtune.training")
    loss_fn = tune_loss_fn(model, loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if compiled:
            training.compile_model(model, verbose=False)
            training.compile_loss(loss_fn, verbose=False)
    layer = importlib.import_module("torchtune.modules").TransformerSelfAttentionLayer
    training.set_activation_checkpointing(model, auto_wrap_policy={layer})
    batch = tune_batch(cfg, micro_batch_size, seq_len, False)
    log, finish, ctx = OffloadLog(), None, None
    if offload and streams:
        ctx, finish = _streams_emulated(model)
    elif offload:
        ctx, log = tune_offloading(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dtype mismatch, dynamo's and inductor's warnings
        tune_step(model, loss_fn, batch, opt, context=ctx, after_backward=finish)  # warm-up
        gc.collect()
        log.reset()
        tracker = LiveBytesTracker()
        resident = tracker.add_resident([*resident_tensors(model), *states_of(opt),
                                         batch["tokens"]])
        with tracker:
            tune_step(model, loss_fn, batch, opt, tracker, context=ctx,
                      after_backward=finish)
    return {"family": family, "micro_batch_size": micro_batch_size, "seq_len": seq_len,
            "base_weights": base_weights, "loss": loss, "compiled": compiled,
            "offload": offload, "streams": streams, "offloaded": log.offloaded,
            "kept": sum(n for n, moved in log.packs if not moved),
            "packs": [[n, moved] for n, moved in log.packs],
            "brought_back": log.brought_back, "resident": resident,
            "peak_bytes": tracker.peak,
            "phase_peaks": {k: v for k, v in tracker.phase_peaks.items() if k != "start"}}


def lora_offload_grid(b: int = 2, s: int = 48) -> list[dict[str, Any]]:
    """Llama 3.2's small shape, q, v, o and the MLP adapted (rank 8, the published rows'
    targets), checkpointed: bf16 and NF4 bases x standard and chunked loss, each without
    offloading, with torchtune's class (``streams=False``) and with the emulated streams.
    Eager only: under the live-bytes tracker a compiled step measured the eager step's peaks
    to the byte (with and without checkpointing), so this harness cannot tell what compile
    changes; `scaleplan.reference.tune_lora_measure.compiled_grid` reads that from the
    autograd graph instead."""
    from scaleplan.model.lora import LoRA

    lora = LoRA(8, alpha=16, targets=("q", "v", "o", "gate", "up", "down"))
    rows = []
    for base, loss, (off, streams) in itertools.product(
            ("bf16", "nf4"), ("standard", "chunked"), ((False, False), (True, False),
                                                       (True, True))):
        rows.append({"targets": "qvo_mlp", "rank": 8, **measure_tune_lora_offload(
            GRID_SHAPES["llama3_2"], "llama3_2", lora, micro_batch_size=b, seq_len=s,
            base_weights=base, loss=loss, offload=off, streams=streams)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the grid and write tests/data/tune_offload.json; ``--lora``: the LoRA grid
    (`lora_offload_grid`) into tests/data/tune_lora_offload.json."""
    if argv is None:
        argv = sys.argv[1:]
    rows, path = (lora_offload_grid(), LORA_OFFLOAD_JSON) if "--lora" in argv else (
        offload_grid(), OFFLOAD_JSON)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stdout.write(f"{len(rows)} rows -> {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
