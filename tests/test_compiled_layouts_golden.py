"""`scaleplan.memory.compiled_layout`'s terms replayed against torch.compile's measured
partitions, torch-free.

tests/data/compiled_layouts_golden.json holds what `scaleplan.reference.compiled.measure_compiled`
measured (the reference GPT compiled by inductor on CPU with CUDA's dropout semantics, torch
2.13) for modded-nanogpt's block (RMSNorm without a weight, per-head QK-norm, RoPE, ReLU) and
Llama's with Qwen3's, StableLM's and OLMo 2's QK-norms, at two and three layers, fp32 and bf16
autocast, dropout on and off, full checkpointing: the bytes saved for backward in all, by dtype
and per saved value. Rewrite it with ``python -m scaleplan.reference.compiled_layouts``. The
formulas must give the measured bytes exactly; the live check is tests/test_compiled_memory.py
(marked torch).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from compiled_golden import case_id, case_terms, check_total, load

from scaleplan.model.config import GPTConfig

GOLDEN = load("compiled_layouts_golden")
CASES: list[dict[str, Any]] = GOLDEN["cases"]


def _terms(c: dict[str, Any]) -> tuple[GPTConfig, dict[str, Any]]:
    return case_terms(GOLDEN, c)


def _saved(c: dict[str, Any]) -> list[tuple[int, str, str, int]]:
    """(bytes, node name, module, last dimension) of each saved value."""
    out = []
    for line in c["saved"]:
        nbytes, name, module, shape = line.split(" ", 3)
        dims = json.loads(shape.rsplit(" ", 1)[0])
        out.append((int(nbytes), name, module, dims[-1] if dims else 0))
    return out


def test_the_grid_covers_every_new_option() -> None:
    layouts = GOLDEN["layouts"]
    assert {layouts[c["layout"]]["qk_norm"] for c in CASES} == {"head", "per_head", "full"}
    assert any(not layouts[c["layout"]].get("norm_affine", True) for c in CASES)
    assert any(layouts[c["layout"]]["mlp"] == "relu" for c in CASES)
    assert {c["precision"] for c in CASES} == {"32-true", "bf16-mixed"}
    assert {c["checkpointing"] for c in CASES} == {False, True}
    assert {c["dropout"] > 0 for c in CASES} == {False, True}


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_total_matches_the_inductor_partition(c: dict[str, Any]) -> None:
    check_total(GOLDEN, c)


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_bool_bytes_are_the_dropout_and_relu_masks(c: dict[str, Any]) -> None:
    _, terms = _terms(c)
    masks = sum(v for k, v in terms.items() if k.endswith("dropout_mask")
                or k in ("resid_dropout_masks", "relu_mask"))
    assert masks == c["by_dtype"].get("bool", 0)


@pytest.mark.parametrize("c", [c for c in CASES if not c["checkpointing"]], ids=case_id)
def test_qk_norm_terms_are_the_norms_rstd_and_the_projection_copy(c: dict[str, Any]) -> None:
    """The q/k norms' saved values are their rstd (nothing else carries their module); the
    attention output projection's saved values are its input copy (per-head QK-norm) and, in
    the first block without dropout, its output (``attn_proj_out``, ``mm_*``)."""
    _, terms = _terms(c)
    saved = _saved(c)
    rstd = sum(n for n, _, module, _ in saved if module.endswith(("q_norm", "k_norm")))
    assert rstd == terms["qk_norm_rstd"]
    proj_input = sum(n for n, name, module, _ in saved
                     if module.endswith("attn.c_proj") and not name.startswith("mm"))
    assert proj_input == terms.get("attn_proj_input", 0)
    proj_out = sum(n for n, name, module, _ in saved
                   if module.endswith("attn.c_proj") and name.startswith("mm"))
    assert proj_out == terms.get("attn_proj_out", 0)


@pytest.mark.parametrize("c", [c for c in CASES if not c["checkpointing"]], ids=case_id)
def test_the_mlp_keeps_what_the_activation_needs(c: dict[str, Any]) -> None:
    """The MLP's saved values mlp_hidden wide: ReLU its output (the down projection's input)
    only; SwiGLU the gate's and up's outputs and their product (the down projection's
    input). The d-wide one is the up projection's input (``mlp_input``)."""
    cfg, terms = _terms(c)
    saved = _saved(c)
    mlp = [(n, last) for n, _, module, last in saved
           if module.endswith(("mlp.c_fc", "mlp.c_gate", "mlp.c_proj"))]
    assert sum(n for n, last in mlp if last == cfg.mlp_hidden) == terms["mlp_activations"]
    assert sum(n for n, last in mlp if last == cfg.n_embd) == terms["mlp_input"]
