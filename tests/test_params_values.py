"""Parameter-count values the mutation run (docs/development.md) found untested.

GPT-2 small by hand (d = 768, L = 12, V = 50257, 1024 positions, biases, tied head):
attention per block 4 d^2 + 4 d = 2,362,368; MLP per block 8 d^2 + 5 d = 4,722,432; two
LayerNorms per block and a final one, 2 d each: (2 x 12 + 1) x 1536 = 38,400.
"""

from __future__ import annotations

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params


def test_gpt2_components_by_name_in_model_order() -> None:
    assert list(count_params(GPTConfig.preset("gpt2")).components().items()) == [
        ("token_embedding", 38_597_376),  # 50257 x 768
        ("position_embedding", 786_432),  # 1024 x 768
        ("attention", 28_348_416),  # 12 x 2,362,368
        ("mlp", 56_669_184),  # 12 x 4,722,432
        ("norms", 38_400),
        ("lm_head", 0),  # tied to wte
    ]  # sum: 124,439,808, Hugging Face's count
