"""Parameters transformers builds for a config, counted on the meta device (no memory, no
download): the independent side of the architecture tests. Callers skip first when transformers
is absent (``pytest.importorskip("transformers")``)."""

from __future__ import annotations

from typing import Any

# In range for the tests' small vocabularies (transformers warns about ids past vocab_size).
TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def hf_meta_parameters(model_type: str, **config: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter of ``AutoModelForCausalLM`` for ``model_type`` with ``config``'s keys,
    by name (tied weights once, as ``model.named_parameters()`` gives them)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(model_type, **(TOKEN_IDS | config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def hf_meta_count(model_type: str, **config: Any) -> int:
    """The parameter count transformers' model has: ``sum(p.numel() for p in
    model.parameters())``."""
    total = 0
    for shape in hf_meta_parameters(model_type, **config).values():
        n = 1
        for size in shape:
            n *= size
        total += n
    return total
