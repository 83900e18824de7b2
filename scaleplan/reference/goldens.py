"""Golden files: live measurements committed as JSON, so torch-free tests can replay them.

Mutation testing (mutmut) runs only the tests not marked ``torch``; the formulas of
`scaleplan.memory.hf_terms` and `scaleplan.memory.compiled_terms` are exact against live
measurements, but those are torch tests. This module measures a grid of small cases once and
writes what was measured (totals, and the bytes by part of the model) to ``tests/data/``;
``tests/test_hf_terms_golden.py`` and ``tests/test_compiled_terms_golden.py`` compare the
formulas with those numbers without importing torch.

``python -m scaleplan.reference.goldens hf`` (40 cases, a few seconds each) and
``python -m scaleplan.reference.goldens compiled`` (inductor compiles every case) rewrite them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["COMPILED_CASES", "COMPILED_LAYOUTS", "HF_BATCHES", "compiled_goldens", "compiled_rows",
           "hf_golden_configs", "hf_goldens", "hf_module_group", "main"]

_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)(?:\.|$)")
_EMBEDDING = ("embed_tokens", "wte", "wpe", "transformer.drop", "embed_in", "emb_dropout")


def hf_module_group(name: str) -> str:
    """The part of a transformers model a module path belongs to: ``"layer<i>"`` for decoder
    layer i, ``"checkpoint"`` for what gradient checkpointing holds, ``"embedding"`` for the
    token/position embeddings and their dropout, else ``"head"`` (final norm, lm_head, loss).

    >>> hf_module_group("model.layers.1.mlp.up_proj"), hf_module_group("transformer.wpe")
    ('layer1', 'embedding')
    >>> hf_module_group("gpt_neox.final_layer_norm")
    'head'
    """
    match = _LAYER.search(name)
    if match:
        return f"layer{match.group(1)}"
    if name == "checkpoint":
        return "checkpoint"
    return "embedding" if any(part in name for part in _EMBEDDING) else "head"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}


# (families, b, s, checkpointing settings). docs/validation/hf-memory.md has every family's
# totals at b = 2, s = 48; these add the bytes by part of the model, and b = 1 (where views of
# the fused projections replace copies, and the shifted labels keep their padded storage)
HF_BATCHES: tuple[tuple[tuple[str, ...], int, int, tuple[bool, ...]], ...] = (
    (("gpt2", "gpt_neox", "llama"), 1, 20, (False,)),
    (("gemma",), 2, 12, (False, True)),
)


def hf_goldens(families: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure the families of `HF_BATCHES` (all of them, or those of ``families``) at each
    precision (fp32, bf16 autocast), attention (sdpa, eager) and dropout (0, 0.1), at the
    (b, s) and checkpointing settings given there; the bytes saved for backward by part of the
    model (`hf_module_group`)."""
    from scaleplan.reference.hf_measure import GRID_SHAPES, measure_hf

    cases = []
    for (names, b, s, ckpts), prec, attn, p in itertools.product(
            HF_BATCHES, ("32-true", "bf16-mixed"), ("sdpa", "eager"), (0.0, 0.1)):
        for family, ckpt in itertools.product(names, ckpts):
            if families and family not in families:
                continue
            cfg = GRID_SHAPES[family].replace(dropout=p)
            m = measure_hf(cfg, family, micro_batch_size=b,  # type: ignore[arg-type]
                           seq_len=s, precision=prec,  # type: ignore[arg-type]
                           attention=attn, checkpointing=ckpt)  # type: ignore[arg-type]
            groups: dict[str, int] = {}
            for name, nbytes in m.saved_by_module.items():
                group = hf_module_group(name)
                groups[group] = groups.get(group, 0) + nbytes
            cases.append({"family": family, "b": b, "s": s, "precision": prec,
                          "attention": attn, "checkpointing": ckpt, "dropout": p,
                          "saved_for_backward": m.saved_for_backward, "by_part": groups,
                          "autocast_weight_copies": m.autocast_weight_copies})
            sys.stderr.write(f"{len(cases)} ")
    return {"source": "python -m scaleplan.reference.goldens hf (measure_hf, CPU)",
            "configs": hf_golden_configs(), "versions": _versions(), "cases": cases}


def hf_golden_configs() -> dict[str, dict[str, Any]]:
    """`GRID_SHAPES` as the `GPTConfig` fields each sets (dropout aside), so a test rebuilds
    each family's config without importing torch."""
    from scaleplan.reference.hf_measure import GRID_SHAPES

    return {family: {k: getattr(cfg, k) for k in sorted(cfg.model_fields_set) if k != "dropout"}
            for family, cfg in GRID_SHAPES.items()}


COMPILED_LAYOUTS: dict[str, dict[str, Any]] = {
    "gpt": {"n_head": 4, "n_embd": 64, "block_size": 64, "vocab_size": 192},
    "llama": {"n_head": 4, "n_kv_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 192,
              "bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
              "mlp_hidden": 160, "tie_embeddings": False},
    "rms_learned": {"n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 192,
                    "bias": False, "norm": "rmsnorm"},
}
"""Small layouts for the compiled goldens: nanoGPT's, Llama's (GQA, SwiGLU, RoPE) and RMSNorm
with learned positions (the branch where the first block's input is rebuilt)."""

# (layout, n_layer, b, s, precision, dropout, checkpointing): each layout at two layers (the
# first block and one later block) and three (two later blocks), fp32 and autocast, dropout on
# and off, full checkpointing
COMPILED_CASES: tuple[tuple[str, int, int, int, str, float, bool], ...] = (
    ("gpt", 2, 2, 24, "32-true", 0.0, False),
    ("gpt", 2, 2, 24, "bf16-mixed", 0.1, False),
    ("gpt", 2, 2, 24, "bf16-mixed", 0.1, True),
    ("gpt", 3, 1, 40, "16-mixed", 0.1, False),
    ("gpt", 3, 1, 40, "32-true", 0.0, True),
    ("llama", 2, 2, 24, "32-true", 0.0, False),
    ("llama", 2, 2, 24, "bf16-mixed", 0.1, False),
    ("llama", 2, 2, 24, "bf16-mixed", 0.1, True),
    ("llama", 3, 1, 40, "bf16-mixed", 0.0, False),
    ("llama", 3, 1, 40, "32-true", 0.1, True),
    ("rms_learned", 2, 2, 24, "bf16-mixed", 0.0, False),
    ("rms_learned", 2, 2, 24, "32-true", 0.1, False),
    ("rms_learned", 3, 1, 40, "bf16-mixed", 0.1, True),
    ("rms_learned", 3, 1, 40, "32-true", 0.0, False),
)


def compiled_goldens(cases: tuple[tuple[str, int, int, int, str, float, bool], ...]
                     = COMPILED_CASES) -> dict[str, Any]:
    """Compile the reference GPT for each case (`scaleplan.reference.compiled`, CUDA dropout
    semantics on CPU) and record the bytes saved, by dtype and in all."""
    return {"source": "python -m scaleplan.reference.goldens compiled (measure_compiled, "
                      "CPU inductor, cuda_semantics=True)",
            "layouts": COMPILED_LAYOUTS, "versions": _versions(),
            "cases": compiled_rows(cases, COMPILED_LAYOUTS)}


def compiled_rows(cases: tuple[tuple[str, int, int, int, str, float, bool], ...],
                  layouts: dict[str, dict[str, Any]], *,
                  saved_values: bool = False) -> list[dict[str, Any]]:
    """One golden row per (layout, n_layer, b, s, precision, dropout, checkpointing) case of
    ``layouts``: the compiled partition's saved bytes, in all and by dtype, and autocast's
    weight copies; ``saved_values``: also each saved value (bytes, node, module, shape,
    dtype), weight copies left out."""
    from scaleplan.model.config import GPTConfig
    from scaleplan.reference.compiled import measure_compiled

    rows = []
    for layout, n_layer, b, s, prec, p, ckpt in cases:
        cfg = GPTConfig(n_layer=n_layer, dropout=p, **layouts[layout])
        m = measure_compiled(cfg, micro_batch_size=b, seq_len=s, precision=prec,
                             checkpointing=ckpt)
        row = {"layout": layout, "n_layer": n_layer, "b": b, "s": s, "precision": prec,
               "dropout": p, "checkpointing": ckpt,
               "saved_for_backward": m.saved_for_backward, "by_dtype": m.saved_by_dtype,
               "autocast_weight_copies": m.autocast_weight_copies}
        if saved_values:
            row["saved"] = [f"{v.nbytes} {v.name} {v.module} {list(v.shape)} {v.dtype}"
                            for v in m.saved if not v.weight_copy]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``hf`` or ``compiled`` [``--out PATH``]: measure that grid and write its JSON."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.goldens")
    parser.add_argument("which", choices=("hf", "compiled"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    data = hf_goldens() if args.which == "hf" else compiled_goldens()
    out = Path(args.out or f"tests/data/{args.which}_terms_golden.json")
    out.write_text(json.dumps(data, indent=1) + "\n")
    sys.stdout.write(f"{len(data['cases'])} cases written to {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
