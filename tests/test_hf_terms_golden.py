"""`scaleplan.memory.hf_terms` replayed against transformers' measured saved tensors, torch-free.

Two committed measurements of `scaleplan.reference.hf_measure.measure_hf` (transformers' models
on CPU, the families' shapes of ``GRID_SHAPES``; torch 2.13.0, transformers 5.25.0):

- docs/validation/hf-memory.md: every family (Llama, Qwen2, Mistral, Gemma, GPT-2, GPT-NeoX),
  fp32 and bf16 autocast, SDPA and eager, gradient checkpointing off and on, dropout 0 and 0.1,
  at b = 2, s = 48: the total bytes saved for backward (96 cases;
  ``python -m scaleplan.reference.hf_measure --grid``);
- tests/data/hf_terms_golden.json: the bytes by part of the model (the embedding, each decoder
  layer, what checkpointing holds, the head) for GPT-2, GPT-NeoX and Llama at b = 1 (where
  views of the fused projections replace copies) and Gemma at b = 2, s = 12 with and without
  checkpointing (``python -m scaleplan.reference.goldens hf``).

Each formula must give the measured bytes exactly (the live check is tests/test_hf_memory.py,
marked torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.hf_terms import (
    hf_block_saved_terms,
    hf_embedding_saved_terms,
    hf_head_saved_terms,
    hf_model_saved_terms,
    hf_saved_bytes,
    hf_saved_terms,
)
from scaleplan.model.config import GPTConfig

GOLDEN = json.loads((Path(__file__).parent / "data" / "hf_terms_golden.json").read_text())
CASES: list[dict[str, Any]] = GOLDEN["cases"]
TABLE = Path(__file__).parents[1] / "docs" / "validation" / "hf-memory.md"


def _table_cases() -> list[dict[str, Any]]:
    """The rows of hf-memory.md's table (measured at micro-batch 2 x 48 tokens)."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 9 or cells[0] in ("family", "---"):
            continue
        family, precision, attention, ckpt, dropout, measured = cells[:6]
        rows.append({"family": family, "b": 2, "s": 48, "precision": precision,
                     "attention": attention, "checkpointing": ckpt == "full",
                     "dropout": float(dropout),
                     "saved_for_backward": int(measured.replace(",", ""))})
    return rows


TABLE_CASES = _table_cases()


def _id(c: dict[str, Any]) -> str:
    return (f"{c['family']}-b{c['b']}s{c['s']}-{c['precision']}-{c['attention']}"
            f"-{'ckpt' if c['checkpointing'] else 'nockpt'}-p{c['dropout']}")


def _setup(c: dict[str, Any]) -> tuple[GPTConfig, dict[str, Any]]:
    cfg = GPTConfig(**GOLDEN["configs"][c["family"]], dropout=c["dropout"])
    return cfg, {"precision": c["precision"], "family": c["family"]}


def test_the_golden_grids_cover_every_switch() -> None:
    # 6 families x 2 precisions x 2 attentions x 2 checkpointing x 2 dropouts
    assert len(TABLE_CASES) == 96
    assert {c["family"] for c in TABLE_CASES} == {"llama", "qwen2", "mistral", "gemma", "gpt2",
                                                  "gpt_neox"}
    # 2 precisions x 2 attentions x 2 dropouts x (3 families at b = 1 + Gemma twice)
    assert len(CASES) == 8 * (3 + 2)


@pytest.mark.parametrize("c", TABLE_CASES + CASES, ids=_id)
def test_total_matches_transformers(c: dict[str, Any]) -> None:
    cfg, kw = _setup(c)
    got = hf_saved_bytes(cfg, c["b"], c["s"], attention=c["attention"],
                         checkpointing=c["checkpointing"], **kw)
    assert got == c["saved_for_backward"]
    # the scaleplan spellings: "flash" is sdpa, "full"/"none" the checkpointing switch
    flat = hf_saved_terms(cfg, c["b"], c["s"],
                          attention="flash" if c["attention"] == "sdpa" else "eager",
                          checkpointing="full" if c["checkpointing"] else "none", **kw)
    assert sum(flat.values()) == c["saved_for_backward"]


@pytest.mark.parametrize("c", CASES, ids=_id)
def test_each_part_matches_transformers(c: dict[str, Any]) -> None:
    """The embedding, the decoder layers (the shared rotary tables are saved in the first
    layer's attention) and the head, each exactly."""
    cfg, kw = _setup(c)
    b, s, parts = c["b"], c["s"], c["by_part"]
    attn, ckpt = c["attention"], c["checkpointing"]
    emb = hf_embedding_saved_terms(cfg, b, s, **kw)
    assert sum(emb.values()) == parts.get("embedding", 0)
    head = hf_head_saved_terms(cfg, b, s, **kw)
    assert sum(head.values()) == parts["head"]
    block = sum(hf_block_saved_terms(cfg, b, s, attention=attn, checkpointing=ckpt,
                                     **kw).values())
    shared = sum(hf_model_saved_terms(cfg, b, s, attention=attn, checkpointing=ckpt,
                                      **kw).values())
    layers = [parts.get(f"layer{i}", 0) for i in range(cfg.n_layer)]
    if ckpt:
        assert sum(layers) + parts["checkpoint"] == cfg.n_layer * block + shared
    else:
        assert layers[1:] == [block] * (cfg.n_layer - 1)
        assert layers[0] == block + shared
