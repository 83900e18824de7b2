"""`scaleplan.memory.compiled_terms` replayed against torch.compile's measured partitions,
torch-free.

tests/data/compiled_terms_golden.json holds what `scaleplan.reference.compiled.measure_compiled`
measured (the reference GPT compiled by inductor on CPU with CUDA's dropout semantics; versions
in the file) for three layouts (nanoGPT's; Llama's GQA, SwiGLU and RoPE; RMSNorm with learned
positions) at two and three layers, fp32 and autocast, dropout on and off, full checkpointing:
the bytes saved for backward in all and by dtype. Rewrite it with
``python -m scaleplan.reference.goldens compiled``. The formulas must give the measured bytes
exactly (the live check is tests/test_compiled_memory.py, marked torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.activations import autocast_weight_copy_bytes
from scaleplan.memory.compiled_terms import compiled_saved_terms
from scaleplan.model.config import GPTConfig

GOLDEN = json.loads((Path(__file__).parent / "data" / "compiled_terms_golden.json").read_text())
CASES: list[dict[str, Any]] = GOLDEN["cases"]
DEVICE = "cpu-cuda-semantics"  # measured on CPU with CUDA's dropout: CPU RNG state, bool masks


def _id(c: dict[str, Any]) -> str:
    return (f"{c['layout']}-L{c['n_layer']}-b{c['b']}s{c['s']}-{c['precision']}"
            f"-p{c['dropout']}{'-ckpt' if c['checkpointing'] else ''}")


def _terms(c: dict[str, Any]) -> tuple[GPTConfig, dict[str, Any]]:
    cfg = GPTConfig(n_layer=c["n_layer"], dropout=c["dropout"], **GOLDEN["layouts"][c["layout"]])
    terms = compiled_saved_terms(cfg, c["b"], c["s"], precision=c["precision"],
                                 checkpointing="full" if c["checkpointing"] else "none",
                                 device=DEVICE)
    return cfg, terms


@pytest.mark.parametrize("c", CASES, ids=_id)
def test_total_matches_the_inductor_partition(c: dict[str, Any]) -> None:
    cfg, terms = _terms(c)
    assert sum(terms.values()) == c["saved_for_backward"]
    # autocast's weight copies: every matmul's, or under full checkpointing the head's only
    # (the blocks' copies are made again when they are recomputed)
    layers = 0 if c["checkpointing"] else None
    assert autocast_weight_copy_bytes(cfg, c["precision"], layers=layers) \
        == c["autocast_weight_copies"]


@pytest.mark.parametrize("c", CASES, ids=_id)
def test_masks_and_ids_match_by_dtype(c: dict[str, Any]) -> None:
    """The bool bytes are the dropout masks; the int64 bytes the token, position and target
    ids (the targets term less its fp32 divisor) and, under full checkpointing with dropout,
    inductor's seeds."""
    _, terms = _terms(c)
    masks = sum(v for k, v in terms.items() if k.endswith("dropout_mask")
                or k == "resid_dropout_masks")
    assert masks == c["by_dtype"].get("bool", 0)
    ids = (terms["token_ids"] + terms.get("position_ids", 0) + terms["targets"] - 4
           + terms.get("dropout_seeds", 0))
    assert ids == c["by_dtype"]["int64"]
