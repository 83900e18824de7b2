"""Parameters transformers builds for a config, counted on the meta device (no memory, no
download) by `scaleplan.reference.hf`: the independent side of the architecture tests. Callers
skip first when transformers is absent (``pytest.importorskip("transformers")``)."""

from __future__ import annotations

from typing import Any

from scaleplan.reference.hf import build_meta_model, hf_meta_counts

# In range for the tests' small vocabularies (transformers warns about ids past vocab_size).
TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def hf_meta_parameters(model_type: str, **config: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter of the causal LM transformers builds for ``model_type`` with
    ``config``'s keys, by name (tied weights once, as ``model.named_parameters()`` gives)."""
    model = build_meta_model({"model_type": model_type, **TOKEN_IDS, **config})
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def hf_meta_count(model_type: str, **config: Any) -> int:
    """transformers' parameter count for ``model_type`` with ``config``'s keys."""
    total: int = hf_meta_counts({"model_type": model_type, **TOKEN_IDS, **config})["total"]
    return total


def hf_meta_active(model_type: str, **config: Any) -> int | None:
    """`hf_meta_counts`' active count (total less the routed experts' unused share), None for
    a dense model."""
    active: int | None = hf_meta_counts({"model_type": model_type, **TOKEN_IDS, **config}
                                        )["active"]
    return active
