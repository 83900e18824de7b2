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

from typing import Any

import pytest
from compiled_golden import case_id, case_terms, check_total, load

from scaleplan.model.config import GPTConfig

GOLDEN = load("compiled_terms_golden")
CASES: list[dict[str, Any]] = GOLDEN["cases"]


def _terms(c: dict[str, Any]) -> tuple[GPTConfig, dict[str, Any]]:
    return case_terms(GOLDEN, c)


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_total_matches_the_inductor_partition(c: dict[str, Any]) -> None:
    check_total(GOLDEN, c)


@pytest.mark.parametrize("c", CASES, ids=case_id)
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
