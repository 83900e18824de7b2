"""Measure what torchtune's models save for backward, on CPU, run as its recipes run them.

`build_tune` builds a `GPTConfig` with one of torchtune 0.6.1's component builders
(``torchtune.models.{llama3_2,llama3_1,qwen2,gemma}._component_builders``) under
``training.set_default_dtype`` as ``full_finetune_single_device`` does (``dtype: bf16`` gives
bf16 parameters and no autocast; ``fp32`` gives fp32), and `measure_tune` runs one forward and
the recipe's loss (``loss_step``: labels shifted by ``torch.hstack`` with an ignore column,
``torch.nn.CrossEntropyLoss`` on the logits reshaped to ``(-1, V)``, or
``CEWithChunkedOutputLoss`` with ``set_num_output_chunks``), recording by storage every tensor
left for backward (parameters and buffers excluded; the buffers, the RoPE cache, are measured on
their own): the storages autograd packs and, with ``set_activation_checkpointing`` (torch's
non-reentrant checkpoint around each ``TransformerSelfAttentionLayer``), every other storage the
forward created that is still alive once the logits are dropped (the layer inputs).

Packed batches follow torchtune on a machine without flex attention (``_SUPPORTS_FLEX_ATTENTION``
is False without CUDA): ``padded_collate_packed`` gives a dense ``b x s x s`` bool block-causal
mask and per-document ``input_pos``; both are batch tensors made before the forward.

``python -m scaleplan.reference.tune_measure --grid`` measures the grid, writes
docs/validation/torchtune-memory.md and the JSON replayed by tests/test_tune_memory.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from scaleplan.memory.tune_terms import TUNE_FAMILIES, TuneFamily, tune_saved_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.reference.tracking import (
    LiveBytesTracker,
    SavedTensorsRecorder,
    add_checkpoint_held,
    storage_key,
)

__all__ = ["CHUNKED_JSON", "COMPILED_JSON", "GRID_JSON", "GRID_SHAPES", "PEAKS_JSON",
           "TuneMeasurement", "TunePrecision", "build_tune", "chunked_grid", "grid", "loss_step",
           "main", "measure_tune", "measure_tune_peaks", "peaks_grid", "prepared_tune",
           "record_saved", "tune_batch", "tune_loss_fn"]

TunePrecision = Literal["32-true", "bf16-true"]
IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default, the recipe's ignore column
GRID_JSON = Path("tests/data/tune_memory.json")
PEAKS_JSON = Path("tests/data/tune_peaks.json")
CHUNKED_JSON = Path("tests/data/tune_chunked_loss.json")
COMPILED_JSON = Path("tests/data/tune_compiled.json")  # scaleplan.reference.tune_compiled
_DTYPES = {"32-true": torch.float32, "bf16-true": torch.bfloat16}


def _builder(family: str) -> Any:
    return importlib.import_module(f"torchtune.models.{family}._component_builders")


def build_tune(cfg: GPTConfig, family: TuneFamily, precision: TunePrecision) -> Any:
    """torchtune's ``TransformerDecoder`` for ``cfg`` from ``family``'s component builder, built
    with the recipe's default dtype (``max_seq_len`` is ``cfg.block_size``)."""
    training = importlib.import_module("torchtune.training")
    common = {"vocab_size": cfg.vocab_size, "num_layers": cfg.n_layer,
              "num_heads": cfg.n_head, "num_kv_heads": cfg.n_kv_head, "embed_dim": cfg.n_embd,
              "max_seq_len": cfg.block_size, "intermediate_dim": cfg.mlp_hidden,
              "attn_dropout": cfg.dropout}
    with training.set_default_dtype(_DTYPES[precision]):
        if family == "gemma":
            return _builder("gemma").gemma(head_dim=cfg.head_dim, **common)
        if family == "qwen2":
            return _builder("qwen2").qwen2(tie_word_embeddings=cfg.tie_embeddings, **common)
        if family == "llama3_2":
            return _builder("llama3_2").llama3_2(tie_word_embeddings=cfg.tie_embeddings,
                                                 **common)
        return _builder("llama3_1").llama3_1(**common)


class TuneMeasurement(BaseModel):
    """Saved-for-backward bytes of one torchtune forward + recipe loss, by module."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    micro_batch_size: int
    seq_len: int
    precision: str
    checkpointing: bool
    packed: bool
    loss: str
    saved_for_backward: int
    saved_by_module: dict[str, int]
    buffer_bytes: int


def tune_batch(cfg: GPTConfig, b: int, s: int, packed: bool) -> dict[str, Any]:
    """Random tokens and labels; packed: two documents per row (lengths s//2 and s - s//2) with
    torchtune's dense block-causal mask and per-document positions."""
    tokens = torch.randint(0, cfg.vocab_size, (b, s))
    batch: dict[str, Any] = {"tokens": tokens, "labels": torch.randint(0, cfg.vocab_size, (b, s))}
    if packed:
        utils = importlib.import_module("torchtune.modules.attention_utils")
        lens = [torch.tensor([s // 2, s - s // 2]) for _ in range(b)]
        batch["mask"] = utils.create_block_causal_mask(lens)
        pos = torch.cat([torch.arange(s // 2), torch.arange(s - s // 2)])
        batch["input_pos"] = pos.expand(b, s).contiguous()
    return batch


def tune_loss_fn(model: Any, loss: str) -> Any:
    """The recipe's loss: ``torch.nn.CrossEntropyLoss`` ("standard") or
    ``CEWithChunkedOutputLoss`` ("chunked", with the model's output chunked to match)."""
    if loss == "chunked":
        fn = importlib.import_module("torchtune.modules.loss").CEWithChunkedOutputLoss()
        model.set_num_output_chunks(fn.num_output_chunks)
        return fn
    return torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)


def loss_step(model: Any, loss_fn: Any, batch: dict[str, Any],
               on_logits: Any = None) -> Any:
    """The recipe's ``loss_step`` (recipes/full_finetune_single_device.py, torchtune 0.6.1);
    ``on_logits`` is called with the model's output before the loss."""
    labels = batch.pop("labels")
    logits = model(**batch)
    if on_logits is not None:
        on_logits(logits)
    ignore = torch.full((labels.shape[0], 1), IGNORE_INDEX)
    labels = torch.hstack((labels[..., 1:], ignore))
    if not isinstance(logits, list):
        labels = labels.reshape(-1)
        logits = logits.reshape(-1, logits.size(-1))
    out = loss_fn(logits, labels)
    del logits
    return out


def prepared_tune(cfg: GPTConfig, family: TuneFamily, precision: TunePrecision,
              checkpointing: bool, loss: str, b: int, s: int, packed: bool,
              seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """The model in training mode (checkpointed as the recipe does), its loss and a batch."""
    torch.manual_seed(seed)
    model = build_tune(cfg, family, precision)
    model.train()
    if checkpointing:
        training = importlib.import_module("torchtune.training")
        layer = importlib.import_module("torchtune.modules").TransformerSelfAttentionLayer
        training.set_activation_checkpointing(model, auto_wrap_policy={layer})
    loss_fn = tune_loss_fn(model, loss)
    return model, loss_fn, tune_batch(cfg, b, s, packed)


def measure_tune_peaks(cfg: GPTConfig, family: TuneFamily, *, micro_batch_size: int,
                       seq_len: int, precision: TunePrecision = "bf16-true",
                       checkpointing: bool = False, packed: bool = False, seed: int = 0
                       ) -> dict[str, int]:
    """Live bytes at the loss side's two moments of one step on CPU, over what existed before
    (parameters, buffers, the batch): ``forward_peak``, the most during forward and the loss,
    and ``loss_backward_peak``, the most from ``backward()`` until the logits' gradient is
    made (nll_loss's and log_softmax's backward). Kernel workspaces are not seen."""
    model, loss_fn, batch = prepared_tune(cfg, family, precision, checkpointing, "standard",
                                      micro_batch_size, seq_len, packed, seed)
    tracker = LiveBytesTracker()
    base = tracker.add_resident([*model.parameters(), *model.buffers(), *batch.values()])

    def watch(logits: Any) -> None:
        logits.register_hook(lambda _grad: tracker.set_phase("blocks"))

    gc.collect()
    with tracker, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        tracker.set_phase("forward")
        out = loss_step(model, loss_fn, batch, on_logits=watch)
        gc.collect()
        tracker.set_phase("loss_backward")
        out.backward()
    return {"forward_peak": tracker.phase_peaks["forward"] - base,
            "loss_backward_peak": tracker.phase_peaks["loss_backward"] - base}


def record_saved(model: Any, loss_fn: Any, batch: dict[str, Any],
                 resident: set[Any]) -> dict[str, int]:
    """Saved-for-backward bytes by module of one forward + loss of a torchtune ``model``
    (``resident``: the storage keys of its parameters and buffers), and under ``"checkpoint"``
    the storages alive after the loss that are neither resident, the batch, the loss nor
    recorded as saved (what activation checkpointing keeps itself)."""
    kept = resident | {storage_key(t) for t in batch.values()}
    tracker = LiveBytesTracker()
    recorder = SavedTensorsRecorder(param_keys=resident)
    gc.collect()
    with tracker, recorder.recording(model), warnings.catch_warnings():
        # torch says so when RMSNorm's fp32 input meets its bf16 weight: the composite rms_norm
        # this module's terms count (not the fused kernel) is the expected path
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        out = loss_step(model, loss_fn, batch)
        gc.collect()
    by_module: dict[str, int] = recorder.totals()[0]
    add_checkpoint_held(by_module, tracker, recorder, kept, out)
    del out
    return by_module


def measure_tune(cfg: GPTConfig, family: TuneFamily, *, micro_batch_size: int, seq_len: int,
                 precision: TunePrecision = "bf16-true", checkpointing: bool = False,
                 packed: bool = False, loss: str = "standard", seed: int = 0
                 ) -> TuneMeasurement:
    """Measure one forward + recipe loss of torchtune's ``family`` model for ``cfg`` on CPU.

    Args:
        cfg: The model shape (``cfg.dropout`` is the attention dropout).
        family: "llama3_2", "llama3_1", "qwen2" or "gemma".
        micro_batch_size, seq_len: The batch (random token ids and labels).
        precision: "bf16-true" (``dtype: bf16``) or "32-true" (``dtype: fp32``).
        checkpointing: ``training.set_activation_checkpointing(model,
            auto_wrap_policy={TransformerSelfAttentionLayer})`` as the recipe does.
        packed: A packed batch (see `tune_batch`).
        loss: "standard" (``torch.nn.CrossEntropyLoss``) or "chunked"
            (``CEWithChunkedOutputLoss``, 8 chunks).
    """
    model, loss_fn, batch = prepared_tune(cfg, family, precision, checkpointing, loss,
                                      micro_batch_size, seq_len, packed, seed)
    params = {storage_key(p) for p in model.parameters()}
    buffers = {storage_key(b): b.untyped_storage().nbytes() for b in model.buffers()}
    by_module = record_saved(model, loss_fn, batch, params | set(buffers))
    return TuneMeasurement(
        family=family, micro_batch_size=micro_batch_size, seq_len=seq_len,
        precision=precision, checkpointing=checkpointing, packed=packed, loss=loss,
        saved_for_backward=sum(by_module.values()), saved_by_module=by_module,
        buffer_bytes=sum(buffers.values()))


_LLAMA: dict[str, Any] = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
GRID_SHAPES: dict[str, GPTConfig] = {
    "llama3_2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
                          vocab_size=512, block_size=128, tie_embeddings=True, **_LLAMA),
    "llama3_1": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=256, mlp_hidden=448,
                          vocab_size=384, block_size=96, tie_embeddings=False, **_LLAMA),
    "qwen2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=352,
                       vocab_size=512, block_size=128, qkv_bias=True, tie_embeddings=True,
                       **_LLAMA),
    "gemma": GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=128, head_dim=256,
                       mlp_hidden=512, vocab_size=512, block_size=128, bias=False,
                       mlp="geglu", norm="rmsnorm", position="rope", tie_embeddings=True),
}
"""One small model per family (2 layers, head_dim 64; Gemma's real 256), the grid's shapes."""

SHAPES = ((2, 48), (1, 64))  # (micro-batch, sequence) pairs of the grid


def grid(families: tuple[str, ...] = TUNE_FAMILIES) -> list[dict[str, Any]]:
    """Measure and predict every case of the grid; one row per case."""
    rows = []
    for family, prec, ckpt, packed, (b, s) in itertools.product(
            families, ("32-true", "bf16-true"), (False, True), (False, True), SHAPES):
        cfg = GRID_SHAPES[family]
        m = measure_tune(cfg, family, micro_batch_size=b, seq_len=s,  # type: ignore[arg-type]
                         precision=prec, checkpointing=ckpt, packed=packed)  # type: ignore[arg-type]
        pred = tune_saved_bytes(cfg, b, s, precision=prec, checkpointing=ckpt,  # type: ignore[arg-type]
                                packed=packed, family=family)  # type: ignore[arg-type]
        rows.append({"family": family, "precision": prec, "micro_batch_size": b, "seq_len": s,
                     "checkpointing": "full" if ckpt else "none", "packed": packed,
                     "measured": m.saved_for_backward, "by_module": m.saved_by_module,
                     "buffer_bytes": m.buffer_bytes, "predicted": pred})
    return rows


def peaks_grid(families: tuple[str, ...] = TUNE_FAMILIES, *, b: int = 2, s: int = 48
               ) -> list[dict[str, Any]]:
    """The loss side's two peaks (`measure_tune_peaks`) of each family and precision,
    unpacked and without checkpointing; one row per case."""
    rows = []
    for family, prec in itertools.product(families, ("32-true", "bf16-true")):
        peaks = measure_tune_peaks(GRID_SHAPES[family], family,  # type: ignore[arg-type]
                                   micro_batch_size=b, seq_len=s,
                                   precision=prec)  # type: ignore[arg-type]
        rows.append({"family": family, "precision": prec, "micro_batch_size": b,
                     "seq_len": s, **peaks})
    return rows


def chunked_grid(families: tuple[str, ...] = ("llama3_2", "qwen2"), *, b: int = 2,
                 s: int = 48) -> list[dict[str, Any]]:
    """Saved bytes of one forward + ``CEWithChunkedOutputLoss`` (eager, 8 chunks) for each
    family, precision and checkpointing; one row per case (replayed by
    tests/test_tune_switches.py)."""
    rows = []
    for family, prec, ckpt in itertools.product(families, ("32-true", "bf16-true"),
                                                (False, True)):
        m = measure_tune(GRID_SHAPES[family], family,  # type: ignore[arg-type]
                         micro_batch_size=b, seq_len=s, precision=prec,  # type: ignore[arg-type]
                         checkpointing=ckpt, loss="chunked")
        rows.append({"family": family, "precision": prec, "micro_batch_size": b,
                     "seq_len": s, "checkpointing": "full" if ckpt else "none",
                     "measured": m.saved_for_backward, "by_module": m.saved_by_module})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``--grid [--out PATH] [--json PATH]``: measure the grid, write its table and JSON."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.tune_measure")
    parser.add_argument("--grid", action="store_true", help="measure the validation grid")
    parser.add_argument("--families", nargs="*", default=list(TUNE_FAMILIES))
    parser.add_argument("--out", default="docs/validation/torchtune-memory.md")
    parser.add_argument("--json", default=str(GRID_JSON))
    parser.add_argument("--peaks", action="store_true",
                        help="measure the loss side's peaks and write tests/data/tune_peaks.json")
    parser.add_argument("--chunked", action="store_true",
                        help="measure the chunked loss and write tests/data/tune_chunked_loss.json")
    args = parser.parse_args(argv)
    if args.chunked:
        CHUNKED_JSON.write_text(json.dumps(chunked_grid(), indent=1) + "\n")
        return 0
    if args.peaks:
        PEAKS_JSON.write_text(json.dumps(peaks_grid(tuple(args.families)), indent=1) + "\n")
        return 0
    if not args.grid:
        parser.print_help()
        return 2
    rows = grid(tuple(args.families))
    peaks = peaks_grid(tuple(args.families))
    PEAKS_JSON.write_text(json.dumps(peaks, indent=1) + "\n")
    from scaleplan.reference.tune_report import render  # the page imports this module

    text = render(rows, peaks)
    Path(args.out).write_text(text)
    keep = [{k: v for k, v in r.items() if k != "predicted"} for r in rows]
    Path(args.json).write_text(json.dumps(keep, indent=1) + "\n")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
