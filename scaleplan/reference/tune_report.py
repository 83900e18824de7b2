"""The validation page of `scaleplan.reference.tune_measure`: docs/validation/torchtune-memory.md.

`render` turns the measured grid, the loss side's peaks and the compiled grid
(tests/data/tune_compiled.json, `scaleplan.reference.tune_compiled`) into the page, each beside
`scaleplan.memory.tune_terms`' prediction, and ends it with what the terms say about torchtune's
code. ``python -m scaleplan.reference.tune_measure --grid`` measures and calls it.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import torch

from scaleplan.memory.tune_terms import tune_saved_bytes
from scaleplan.reference.tune_measure import COMPILED_JSON, GRID_SHAPES

__all__ = ["render"]

_NOTES = """
## What the terms say about torchtune's code

- RMSNorm keeps fp32 copies in bf16 training too (`F.rms_norm(x.float(), ...)`: the fp32 input
  and the fp32 normalised input, 4 bytes per element each, plus a 4-byte rstd per token): two
  norms per layer cost 16 T d bytes, more than the bf16 q/k/v and MLP inputs together.
- Grouped-query k and v are expanded to every query head before SDPA (copies), except with one
  key-value head, where the expand is a view.
- Packed batches cost a gathered copy of the RoPE cache for q and for k (T h 4 bytes each per
  layer; Qwen2 casts its cos and sin instead). On CPU the dense block-causal mask is also saved by
  every layer's SDPA as an additive mask in the activations' dtype (b s s e); on CUDA torchtune
  passes flex attention a BlockMask, which costs no activation.
- The output's `.float()` puts the loss on fp32 logits: the log-softmax is T V 4 bytes, the
  forward ends with the fp32 logits as well, and backward starts with two T V 4 gradients (the
  peaks above). Checkpointing keeps each layer's input only.
- `compile: True` compiles each layer (`training.compile_model`); the recipe drops
  `compile_loss`'s result for the standard loss, which stays eager. The compiled layers keep
  4 T d e + 2 T 4 + SDPA's tensors + 3 T f e: no fp32 norm copies, no SiLU/GELU output.
  With `CEWithChunkedOutputLoss`, `compile_loss` does compile each chunk's cross-entropy: it
  keeps the chunk's logits in the activation dtype, its labels and two fp32 values per token
  instead of an fp32 log-softmax (`tune_compiled_chunked_loss_terms`, 4 cases in
  tests/data/tune_compiled_chunked.json, exact).
- Not modelled, refused by name: `ac_mode="selective"` (every n-th layer), attention dropout,
  autocast precisions, eager attention.
"""


def _compiled_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## compile: True", "",
             "Written by `python -m scaleplan.reference.tune_compiled` (tests/data/"
             "tune_compiled.json): each layer compiled with inductor as `compile_model` does, "
             "the saved tensors read from the autograd graph after one forward and the recipe's "
             "loss step (`CompiledFunctionBackward` nodes for the layers, `_saved_*` for the "
             "eager rest). `predicted` is `tune_saved_bytes(..., compiled=True)`.", "",
             "| family | precision | b x s | packed | measured | predicted | error |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        pred = tune_saved_bytes(GRID_SHAPES[r["family"]], r["micro_batch_size"], r["seq_len"],
                                precision=r["precision"], packed=r["packed"],
                                family=r["family"], compiled=True)
        lines.append(f"| {r['family']} | {r['precision']} | {r['micro_batch_size']} x "
                     f"{r['seq_len']} | {r['packed']} | {r['saved_for_backward']:,} | "
                     f"{pred:,} | {pred / r['saved_for_backward'] - 1:+.2%} |")
    return lines


def _peaks_table(peaks: list[dict[str, Any]]) -> list[str]:
    from scaleplan.memory.parallel import Parallelism
    from scaleplan.memory.stage import stage_parts

    lines = ["", "## The loss side's peaks", "",
             "Live bytes over the parameters, buffers and batch (`measure_tune_peaks`), and "
             "`stage_parts`' forward_end / backward_start moments less the RoPE buffers and the "
             "token ids (resident in the measurement). The few hundred bytes between them are "
             "the batch's labels (freed once the recipe's `hstack` copy replaces them), nll_loss's "
             "released targets and 4-byte scalars; tests/test_tune_memory.py accounts for them to "
             "the byte.", "",
             "| family | precision | forward peak | forward_end | loss-backward peak | "
             "backward_start |", "|---|---|---:|---:|---:|---:|"]
    for r in peaks:
        cfg, b, s = GRID_SHAPES[r["family"]], r["micro_batch_size"], r["seq_len"]
        *_, saved, _, _, _, moments = stage_parts(
            cfg, b, s, r["precision"], "adamw", "flash", "none", "cpu", Parallelism(), None,
            False, "only", implementation="torchtune")
        resident = saved["rope_buffers"] + saved["token_ids"]
        lines.append(f"| {r['family']} | {r['precision']} | {r['forward_peak']:,} | "
                     f"{moments['forward_end'] - resident:,} | {r['loss_backward_peak']:,} | "
                     f"{moments['backward_start'] - resident:,} |")
    return lines


def render(rows: list[dict[str, Any]], peaks: list[dict[str, Any]] | None = None) -> str:
    """The page: the saved-bytes grid (rows with ``predicted``), the peaks, the compiled grid."""
    torchtune = importlib.import_module("torchtune")
    worst = max(abs(r["predicted"] / r["measured"] - 1) for r in rows)
    lines = [
        "# torchtune: saved-for-backward bytes, measured vs predicted", "",
        "Written by `python -m scaleplan.reference.tune_measure --grid`. Each row builds the "
        "family's torchtune model (component builder, 2 layers; shapes in "
        "`scaleplan.reference.tune_measure.GRID_SHAPES`) with the recipe's dtype on CPU, runs "
        "one forward and `full_finetune_single_device`'s loss step (standard cross-entropy) and "
        "counts the unique storages left for backward (parameters and buffers excluded; with "
        "checkpointing, the layer inputs the checkpoint keeps). Packed rows hold two documents "
        "per row with torchtune's CPU block-causal mask and `input_pos`. `predicted` is "
        "`scaleplan.memory.tune_terms.tune_saved_bytes`. "
        f"torch {torch.__version__}, torchtune {torchtune.__version__}.", "",
        f"{len(rows)} cases, largest |error| {worst:.2%}.", "",
        "| family | precision | b x s | checkpointing | packed | measured | predicted | error |",
        "|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        err = r["predicted"] / r["measured"] - 1
        lines.append(f"| {r['family']} | {r['precision']} | {r['micro_batch_size']} x "
                     f"{r['seq_len']} | {r['checkpointing']} | {r['packed']} | "
                     f"{r['measured']:,} | {r['predicted']:,} | {err:+.2%} |")
    lines += _peaks_table(peaks or [])
    if COMPILED_JSON.is_file():
        lines += _compiled_table(json.loads(COMPILED_JSON.read_text()))
    return "\n".join(lines) + "\n" + _NOTES
