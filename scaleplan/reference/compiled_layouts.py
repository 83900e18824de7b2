"""Compiled partitions of the layouts beyond the reference GPT: QK-norm, non-affine RMSNorm, ReLU.

``python -m scaleplan.reference.compiled_layouts`` compiles `scaleplan.reference.model.GPT`
with inductor for each case of `LAYOUT_CASES` (`scaleplan.reference.compiled.measure_compiled`:
CPU, CUDA's dropout semantics) and writes tests/data/compiled_layouts_golden.json, the bytes
saved for backward in all, by dtype and per saved value (the partition's node name, the module
that made it, shape and dtype: what `scaleplan.memory.compiled_layout`'s terms are read off).
tests/test_compiled_layouts_golden.py replays it without torch. About five minutes on two cores.

The layouts (`LAYOUTS`), small and with distinct sizes so a storage's size names it:

- ``modded``: modded-nanogpt's block (its 2025-01-26 record): RMSNorm without a weight, per-head
  QK-norm (``qk_norm="head"``), RoPE, a ReLU MLP (scaleplan's ``mlp="relu"``; modded's is
  ReLU^2), untied head, no biases;
- ``qwen3``: Llama's (GQA 4/2, SwiGLU, RoPE) with Qwen3's per-head QK-norm (with a weight);
- ``stablelm``: the same with one norm per head (``qk_norm="per_head"``);
- ``olmo2``: the same with OLMo 2's QK-norm over all heads' width (``qk_norm="full"``).

Each at two layers (the first block and a later one) and the modded one at three, fp32 and
bf16 autocast, dropout on and off, and full checkpointing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["LAYOUTS", "LAYOUT_CASES", "PATH", "layout_goldens", "main"]

PATH = Path("tests/data/compiled_layouts_golden.json")
_LLAMA: dict[str, Any] = {"n_head": 4, "n_kv_head": 2, "n_embd": 64, "block_size": 64,
                          "vocab_size": 192, "bias": False, "mlp": "swiglu", "norm": "rmsnorm",
                          "position": "rope", "mlp_hidden": 160, "tie_embeddings": False}
LAYOUTS: dict[str, dict[str, Any]] = {
    "modded": {"n_head": 4, "n_embd": 64, "block_size": 64, "vocab_size": 192, "bias": False,
               "norm": "rmsnorm", "norm_affine": False, "position": "rope", "qk_norm": "head",
               "mlp": "relu", "tie_embeddings": False},
    "qwen3": {**_LLAMA, "qk_norm": "head"},
    "stablelm": {**_LLAMA, "qk_norm": "per_head"},
    "olmo2": {**_LLAMA, "qk_norm": "full"},
}
"""Small layouts with the options `scaleplan.memory.compiled_layout` models."""

# (layout, n_layer, b, s, precision, dropout, checkpointing)
LAYOUT_CASES: tuple[tuple[str, int, int, int, str, float, bool], ...] = (
    ("modded", 2, 2, 24, "32-true", 0.0, False),
    ("modded", 2, 2, 24, "bf16-mixed", 0.0, False),
    ("modded", 2, 2, 24, "bf16-mixed", 0.1, False),
    ("modded", 3, 1, 40, "bf16-mixed", 0.0, False),
    ("modded", 2, 2, 24, "bf16-mixed", 0.1, True),
    ("qwen3", 2, 2, 24, "bf16-mixed", 0.0, False),
    ("qwen3", 3, 1, 40, "32-true", 0.1, False),
    ("stablelm", 2, 2, 24, "32-true", 0.0, False),
    ("olmo2", 2, 2, 24, "bf16-mixed", 0.0, False),
)


def layout_goldens(cases: tuple[tuple[str, int, int, int, str, float, bool], ...]
                   = LAYOUT_CASES) -> dict[str, Any]:
    """Measure each case's compiled partition (CPU inductor, CUDA's dropout semantics)."""
    import torch

    from scaleplan.reference.goldens import compiled_rows

    rows = compiled_rows(cases, LAYOUTS, saved_values=True)
    return {"source": "python -m scaleplan.reference.compiled_layouts (measure_compiled, CPU "
                      "inductor, cuda_semantics=True)",
            "torch": torch.__version__, "layouts": LAYOUTS, "cases": rows}


def main(argv: list[str] | None = None) -> int:
    """Measure `LAYOUT_CASES` and write their JSON (``--out PATH``, default `PATH`)."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.compiled_layouts")
    parser.add_argument("--out", default=str(PATH))
    args = parser.parse_args(argv)
    data = layout_goldens()
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    sys.stdout.write(f"{len(data['cases'])} cases written to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
