"""GPTConfig / TrainingConfig: derived fields, replace(), presets, and every rejection named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scaleplan.errors import UnknownNameError
from scaleplan.model.config import GPTConfig, normalize_precision
from scaleplan.model.training_config import TrainingConfig


def test_defaults_are_nanogpt_model_defaults() -> None:
    # nanoGPT model.py GPTConfig: block 1024, vocab 50304, 12/12/768, dropout 0, bias True.
    cfg = GPTConfig()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (
        12, 12, 768, 1024, 50304)
    assert cfg.bias and cfg.dropout == 0.0 and cfg.tie_embeddings


def test_derived_fields() -> None:
    cfg = GPTConfig(n_embd=384, n_head=6)
    assert (cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden) == (6, 64, 1536)
    assert cfg.qkv_bias and cfg.norm_bias  # follow bias=True
    # Llama-2-7B's feed-forward width from Llama's rule: 2/3 * 4 * 4096 = 10922.67 -> 11008.
    assert GPTConfig(n_embd=4096, n_head=32, mlp="swiglu").mlp_hidden == 11008
    assert GPTConfig(norm="rmsnorm").norm_bias is False


def test_replace_rederives_and_revalidates() -> None:
    gpt2 = GPTConfig.preset("gpt2")
    wider = gpt2.replace(n_embd=1536, n_head=24)
    assert (wider.head_dim, wider.mlp_hidden, wider.n_kv_head) == (64, 6144, 24)
    with pytest.raises(ValidationError, match="n_embd=500 is not divisible by n_head=12"):
        gpt2.replace(n_embd=500)
    assert gpt2.replace(dropout=0.1).dropout == 0.1
    assert gpt2.n_embd == 768  # frozen original untouched


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        GPTConfig().n_embd = 5  # type: ignore[misc]


def test_json_round_trip_keeps_everything() -> None:
    cfg = GPTConfig.preset("llama-3-8b")
    again = GPTConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg


def test_preset_lookup_is_tolerant_and_typos_get_close_names() -> None:
    assert GPTConfig.preset("GPT2-Medium").n_layer == 24
    assert GPTConfig.preset("llama_2_7b").n_embd == 4096
    with pytest.raises(UnknownNameError, match=r"unknown preset 'gpt-2'; did you mean 'gpt2'"):
        GPTConfig.preset("gpt-2")


def test_required_presets_exist() -> None:
    for name in ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "nanogpt-shakespeare-char",
                 "llama-2-7b", "llama-2-13b", "llama-3-8b", "mistral-7b", "tinyllama-1.1b",
                 "smollm2-135m", "qwen2-0.5b"]:
        assert name in GPTConfig.presets()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_layer": 0}, r"n_layer\n  Input should be greater than 0 .*input_value=0"),
        ({"n_embd": -768}, r"n_embd\n  Input should be greater than 0"),
        ({"n_head": "12"}, r"n_head\n  Input should be a valid integer .*input_value='12'"),
        ({"n_layer": 12.5}, r"n_layer\n  Input should be a valid integer"),
        ({"n_layer": True}, r"n_layer\n  Input should be a valid integer"),
        ({"dropout": float("nan")}, r"dropout\n  Input should be a finite number"),
        ({"dropout": 1.0}, r"dropout\n  Input should be less than 1"),
        ({"dropout": -0.1}, r"dropout\n  Input should be greater than or equal to 0"),
        ({"n_embed": 768}, r"n_embed\n  Extra inputs are not permitted"),
        ({"mlp": "swish"}, r"mlp\n  Input should be 'gelu', 'swiglu', 'geglu' or 'relu'"),
        ({"n_embd": 500}, r"n_embd=500 is not divisible by n_head=12; try n_embd=504"),
        ({"n_head": 12, "n_kv_head": 5},
         r"n_head=12 is not divisible by n_kv_head=5; .* Try n_kv_head in \[1, 2, 3, 4, 6, 12\]"),
        ({"norm": "rmsnorm", "norm_bias": True}, r"norm_bias=True is not possible"),
    ],
)
def test_bad_values_are_rejected_with_field_value_and_fix(changes: dict[str, object],
                                                          message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GPTConfig(**changes)  # type: ignore[arg-type]


def test_head_dim_lifts_the_divisibility_rule() -> None:
    cfg = GPTConfig(n_embd=2048, n_head=8, n_kv_head=1, head_dim=256)
    assert cfg.n_head * cfg.head_dim == 2048
    odd = GPTConfig(n_embd=500, n_head=12, head_dim=40)
    assert odd.head_dim == 40


def test_training_config_tokens_and_precision_aliases() -> None:
    t = TrainingConfig(micro_batch_size=16, seq_len=1024, grad_accum_steps=32, max_iters=14500)
    assert t.tokens_per_step == 16 * 1024 * 32 == 524_288
    assert t.total_tokens == 524_288 * 14500
    assert TrainingConfig(precision="amp-bf16").precision == "bf16-mixed"  # type: ignore[arg-type]
    assert normalize_precision("float16") == "16-mixed"
    with pytest.raises(ValidationError, match=r"unknown precision .bf17.; did you mean"):
        TrainingConfig(precision="bf17")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="micro_batch_size\n  Input should be greater"):
        TrainingConfig(micro_batch_size=0)
