"""The per-config caches behind plan()'s speed (scaleplan.model.shapes.per_config): a kept
answer is the same answer, a wrong input is still an error after a right one, and a caller
cannot change what is kept."""

import pytest

from scaleplan import GPTConfig, count_params
from scaleplan.errors import ScaleplanError
from scaleplan.memory.options import step_options
from scaleplan.model.params import param_terms
from scaleplan.scaling.tokens import chinchilla_tokens

GPT2_PARAMS = 124_439_808  # Hugging Face's count of gpt2 (tied head)

_OPTIONS = dict(precision="bf16-mixed", optimizer="adamw", attention="flash",
                checkpointing="none", device="cuda", optimizer_impl=None, hold_logits=True,
                allocator_slack_fraction=0.05)


def test_equal_configs_share_one_count() -> None:
    first = count_params(GPTConfig.preset("gpt2"))
    again = count_params(GPTConfig.preset("gpt2"))  # a new but equal config
    assert first.total == again.total == GPT2_PARAMS


def test_param_terms_hands_out_its_own_dict() -> None:
    cfg = GPTConfig.preset("gpt2")
    param_terms(cfg)["total"] = 0
    assert param_terms(cfg)["total"] == GPT2_PARAMS


def test_a_bool_is_refused_after_the_equal_int_was_accepted() -> None:
    cfg = GPTConfig.preset("gpt2")
    assert step_options(cfg, parallelism=None, cuda_context_bytes=1, **_OPTIONS) \
        .cuda_context_bytes == 1
    with pytest.raises(ScaleplanError, match="cuda_context_bytes=True must be a whole number"):
        step_options(cfg, parallelism=None, cuda_context_bytes=True, **_OPTIONS)


def test_an_unhashable_argument_gets_the_functions_own_error() -> None:
    cfg = GPTConfig.preset("gpt2")
    with pytest.raises(ScaleplanError, match=r"parallelism=\[2\] must be a"):
        step_options(cfg, parallelism=[2], cuda_context_bytes=1, **_OPTIONS)


def test_kept_token_budget_and_errors_after_it() -> None:
    # 20 tokens per parameter (Hoffmann et al. 2022, Table 3): 20 x 40.56e6 = 811.2e6
    assert chinchilla_tokens(40.56e6) == chinchilla_tokens(40.56e6) == 811_200_000
    with pytest.raises(ScaleplanError, match=r"n_params=0\.01 is too small"):
        chinchilla_tokens(0.01)
    with pytest.raises(ScaleplanError, match="got n_params=True"):
        chinchilla_tokens(True)
