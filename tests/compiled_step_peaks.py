"""Harness: whole compiled training steps, measured by the CPU allocator's profiler events.

``python -m tests.compiled_step_peaks`` measures, on CPU (torch 2.13, inductor):

- scaleplan's reference GPT (nanoGPT's layout) compiled as nanoGPT compiles it, fp32 and bf16
  autocast, dropout 0 and 0.1 (CUDA's semantics: bool masks), two shapes, no checkpointing,
  fused AdamW, nanoGPT's loop holding the logits; each compiled model measured with fresh
  gradients and then with every gradient resident (``gradient_accumulation`` False and True);
- transformers 5.25's Llama and GPT-2 (`scaleplan.reference.hf_measure.GRID_SHAPES`),
  ``torch.compile(model)`` whole, the model's own loss, fp32 and bf16 autocast, both ways;
- torchtune 0.6.1's Llama 3.2 layout (`scaleplan.reference.tune_measure.GRID_SHAPES`) as
  full_finetune_single_device runs the published ``compile: True`` +
  ``enable_activation_checkpointing`` rows: bf16 parameters, each layer compiled and then
  checkpointed, the chunked loss compiled (and the standard loss), both ways;
- the same eager steps, and two eager steps measured by the allocator's events and
  `scaleplan.reference.tracking.LiveBytesTracker` at once (the method's check);

with `scaleplan.reference.compiled_step.measure_step` and writes
tests/data/compiled_step_peaks.json: per step the bytes resident when it began (parameters,
gradients, optimizer states, buffers and the batch), its peak above them and each phase's,
and (steps without checkpointing) the allocations live at the peak, each named where it is
a saved tensor (by its autograd node), the held logits or a new gradient (by its parameter).
tests/test_compiled_step_peaks_replay.py replays them without torch. About three minutes on
two cores with inductor's caches warm (a first compile takes about 30 s).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from scaleplan.model.config import GPTConfig

__all__ = ["CHECKS", "CONFIGS", "HF_CASES", "MODDED_CASES", "NANO_CASES", "NANO_CONFIG", "PAGE",
           "PATH", "TUNE_LOSSES", "measure_all", "measure_hf", "measure_modded",
           "measure_nanogpt", "measure_tune", "page", "predicted_delta"]

PATH = Path(__file__).parent / "data" / "compiled_step_peaks.json"
PAGE = Path(__file__).parent.parent / "docs" / "validation" / "compiled-steps.md"
INDEX_BYTES = 8
# distinct sizes (T V, V d, T f, T d all differ) so a storage's size names it
NANO_CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=320)
SHAPES = ((2, 24), (8, 64))
# (precision, dropout, (b, s))
NANO_CASES = list(itertools.product(("32-true", "bf16-mixed"), (0.0, 0.1), SHAPES))
HF_CASES = list(itertools.product(("llama", "gpt2"), ("32-true", "bf16-mixed")))
HF_SHAPE = (2, 48)
TUNE_LOSSES = ("chunked", "standard")
CHECKS = [("32-true", SHAPES[0]), ("bf16-mixed", SHAPES[1])]
# modded-nanogpt's block at a tiny width (RMSNorm without a weight, per-head QK-norm, RoPE,
# ReLU, untied head: scaleplan.memory.compiled_layout), nanoGPT's loop, 8 x 64 tokens (the
# activations several times the gradients, as in its real runs)
MODDED_CASES = [("bf16-mixed", 0.0, SHAPES[1])]
_LLAMA: dict[str, Any] = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
# the measured models' shapes by family: NANO_CONFIG, scaleplan.reference.hf_measure's and
# tune_measure's GRID_SHAPES (those modules import torch), written out
CONFIGS = {
    "gpt2-like": NANO_CONFIG,
    "llama": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352,
                       vocab_size=512, block_size=128, tie_embeddings=False, **_LLAMA),
    "gpt2": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=128),
    "modded-like": NANO_CONFIG.replace(norm="rmsnorm", norm_affine=False, qk_norm="head",
                                       position="rope", mlp="relu", tie_embeddings=False),
    "llama3_2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
                          vocab_size=512, block_size=128, tie_embeddings=True, **_LLAMA),
}


def _rows(step: Any, explain: bool = True, **fields: Any) -> list[dict[str, Any]]:
    from scaleplan.reference.compiled_step import measure_step

    out = []
    for accumulating in (False, True):
        m = measure_step(step, accumulating=accumulating, explain=explain)
        out.append({**fields, "gradient_accumulation": accumulating, **m})
    return out


def measure_nanogpt(precision: str, dropout: float, shape: tuple[int, int],
                    compile: bool, family: str = "gpt2-like") -> list[dict[str, Any]]:
    """Both gradient modes of one reference-GPT case (imports torch)."""
    from scaleplan.reference.compiled_step import warmed_step

    b, s = shape
    cfg = CONFIGS[family].replace(dropout=dropout)
    step = warmed_step(cfg, micro_batch_size=b, seq_len=s, precision=precision,
                       compile=compile)
    return _rows(step, implementation="nanogpt", family=family, precision=precision,
                 dropout=dropout, micro_batch_size=b, seq_len=s, compile=compile)


def measure_modded() -> list[dict[str, Any]]:
    """The modded-like cases, eager and compiled (imports torch)."""
    return [row for compile in (False, True) for precision, dropout, shape in MODDED_CASES
            for row in measure_nanogpt(precision, dropout, shape, compile, "modded-like")]


def measure_hf(family: str, precision: str, compile: bool) -> list[dict[str, Any]]:
    """Both gradient modes of one transformers case (imports torch and transformers)."""
    from scaleplan.reference.compiled_step import warmed_hf_step
    from scaleplan.reference.hf_measure import GRID_SHAPES

    b, s = HF_SHAPE
    step = warmed_hf_step(GRID_SHAPES[family], family, micro_batch_size=b, seq_len=s,
                          precision=precision, compile=compile)
    return _rows(step, implementation="hf", family=family, precision=precision, dropout=0.0,
                 micro_batch_size=b, seq_len=s, compile=compile)


def measure_tune(loss: str, compile: bool) -> list[dict[str, Any]]:
    """Both gradient modes of torchtune's checkpointed Llama 3.2 step (imports torchtune)."""
    from scaleplan.reference.compiled_step import warmed_tune_step
    from scaleplan.reference.tune_measure import GRID_SHAPES

    b, s = HF_SHAPE
    step = warmed_tune_step(GRID_SHAPES["llama3_2"], "llama3_2", micro_batch_size=b,
                            seq_len=s, loss=loss, compile=compile)
    return _rows(step, explain=False, implementation="torchtune", family="llama3_2",
                 precision="bf16-true", dropout=0.0, micro_batch_size=b, seq_len=s,
                 compile=compile, loss=loss, checkpointing="full")


def measure_all() -> dict[str, Any]:
    """Every case (imports torch)."""
    import torch
    import torchtune
    import transformers

    from scaleplan.reference.compiled_step import check_against_tracker

    checks = [{"precision": p, "micro_batch_size": b, "seq_len": s,
               **check_against_tracker(NANO_CONFIG, micro_batch_size=b, seq_len=s,
                                       precision=p)} for p, (b, s) in CHECKS]
    rows: list[dict[str, Any]] = []
    for compile in (False, True):
        for precision, dropout, shape in NANO_CASES:
            t = time.time()
            rows += measure_nanogpt(precision, dropout, shape, compile)
            print(precision, dropout, shape, compile, f"{time.time() - t:.0f} s", flush=True)
        for family, precision in HF_CASES:
            rows += measure_hf(family, precision, compile)
            print(family, precision, compile, flush=True)
        for loss in TUNE_LOSSES:
            rows += measure_tune(loss, compile)
            print("torchtune", loss, compile, flush=True)
    rows += measure_modded()
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torchtune": torchtune.__version__,
            "python": sys.version.split()[0], "optimizer": "fused", "checks": checks,
            "cases": rows}


def predicted_delta(case: dict[str, Any]) -> tuple[int, str]:
    """(`training_memory`'s tensor peak less what it counts resident, its worst moment) for a
    measured step (torch-free): less the weights, the optimizer states, the gradients under
    accumulation and the batch (the token ids, nanoGPT's separate targets, torchtune's RoPE
    cache and the reference GPT's RoPE tables: saved terms in the model, resident buffers in
    the harness)."""
    from scaleplan.memory.training import training_memory

    nano, tune = case["implementation"] == "nanogpt", case["implementation"] == "torchtune"
    cfg = CONFIGS[case["family"]].replace(dropout=case["dropout"])
    b, s, acc = case["micro_batch_size"], case["seq_len"], case["gradient_accumulation"]
    options: dict[str, Any] = {"loss": case["loss"], "checkpointing": "full"} if tune else {}
    m = training_memory(cfg, micro_batch_size=b, seq_len=s, precision=case["precision"],
                        compile=case["compile"], device="cpu" if tune else "cpu-cuda-semantics",
                        optimizer_impl="fused", hold_logits=nano,
                        implementation=case["implementation"], gradient_accumulation=acc,
                        **options)
    batch = m.saved_breakdown["token_ids"] + (b * s * INDEX_BYTES if nano else 0) \
        + m.saved_breakdown.get("rope_buffers", 0) + m.saved_breakdown.get("rope_tables", 0)
    delta = m.tensor_peak - m.weights - m.optimizer - (m.gradients if acc else 0) - batch
    return delta, m.peak_moment


def _table(data: dict[str, Any]) -> list[str]:
    lines = ["| code | model | precision | dropout | tokens | compile | accumulation | "
             "measured | predicted | error | model's moment |",
             "| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for c in data["cases"]:
        delta, moment = predicted_delta(c)
        name = c["family"] + (f" ({c['loss']} loss)" if "loss" in c else "")
        lines.append(
            f"| {c['implementation']} | {name} | {c['precision']} | {c['dropout']} | "
            f"{c['micro_batch_size']} x {c['seq_len']} | {c['compile']} | "
            f"{c['gradient_accumulation']} | {c['peak']:,} | {delta:,} | "
            f"{100 * (delta - c['peak']) / c['peak']:+.2f} % | {moment} |")
    return lines


def page(data: dict[str, Any] | None = None) -> str:
    """The table of docs/validation/compiled-steps.md from the committed measurements."""
    data = data or json.loads(PATH.read_text())
    head = PAGE.read_text().split(_TABLE_MARK)[0] if PAGE.exists() else ""
    return head + _TABLE_MARK + "\n\n" + "\n".join(_table(data)) + "\n"


_TABLE_MARK = "## Every measured step"


if __name__ == "__main__":
    if "--page" in sys.argv:
        PAGE.write_text(page())
        print(f"wrote {PAGE}")
    elif "--modded" in sys.argv:  # measure the modded-like cases only, in place
        data = json.loads(PATH.read_text())
        data["cases"] = [c for c in data["cases"] if c["family"] != "modded-like"] \
            + measure_modded()
        PATH.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {PATH}")
    else:
        PATH.write_text(json.dumps(measure_all(), indent=1) + "\n")
        print(f"wrote {PATH}")
