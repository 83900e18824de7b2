"""The replay plumbing of the compiled-partition goldens (tests/data/compiled_terms_golden.json
and compiled_layouts_golden.json): each case's id, its config and the terms
`scaleplan.memory.compiled_terms.compiled_saved_terms` gives it, and the check every golden
shares, that the terms sum to the partition's saved bytes with autocast's weight copies beside
them. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaleplan.memory.activations import autocast_weight_copy_bytes
from scaleplan.memory.compiled_terms import compiled_saved_terms
from scaleplan.model.config import GPTConfig

DEVICE = "cpu-cuda-semantics"  # measured on CPU with CUDA's dropout: CPU RNG state, bool masks


def load(name: str) -> dict[str, Any]:
    """tests/data/<name>.json."""
    return dict(json.loads((Path(__file__).parent / "data" / f"{name}.json").read_text()))


def case_id(c: dict[str, Any]) -> str:
    """A readable pytest id of one case."""
    return (f"{c['layout']}-L{c['n_layer']}-b{c['b']}s{c['s']}-{c['precision']}"
            f"-p{c['dropout']}{'-ckpt' if c['checkpointing'] else ''}")


def case_terms(golden: dict[str, Any], c: dict[str, Any]) -> tuple[GPTConfig, dict[str, Any]]:
    """The case's config and its compiled saved terms."""
    cfg = GPTConfig(n_layer=c["n_layer"], dropout=c["dropout"], **golden["layouts"][c["layout"]])
    terms = compiled_saved_terms(cfg, c["b"], c["s"], precision=c["precision"],
                                 checkpointing="full" if c["checkpointing"] else "none",
                                 device=DEVICE)
    return cfg, terms


def check_total(golden: dict[str, Any], c: dict[str, Any]) -> None:
    """The terms sum to the partition's saved bytes; autocast's weight copies are every
    matmul's, or under full checkpointing the head's only (the blocks' copies are made again
    when they are recomputed)."""
    cfg, terms = case_terms(golden, c)
    assert sum(terms.values()) == c["saved_for_backward"]
    layers = 0 if c["checkpointing"] else None
    assert autocast_weight_copy_bytes(cfg, c["precision"], layers=layers) \
        == c["autocast_weight_copies"]
