"""from_hf for every supported model type: released configs count exactly what transformers builds,
edited configs count exactly or are refused naming the key.

Expected values come from transformers itself: tests/data/hf_configs/expected.json (its
meta-device counts of the released configs, recorded by scaleplan.reference.hf and re-checked by
tests/test_hf_meta_counts.py), and for the edited configs a meta-device build made here (skipped
without torch and transformers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.model.hf_keys import UnsupportedKeyError
from scaleplan.model.loaders import SUPPORTED_HF_MODEL_TYPES, UnsupportedModelTypeError, from_hf
from scaleplan.model.params import count_params

FIXTURES = Path(__file__).resolve().parent / "data" / "hf_configs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))["counts"]
CONFIGS = sorted(EXPECTED)


def _load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return config


def test_the_fixtures_cover_every_supported_type() -> None:
    assert sorted({name.split("__")[0] for name in CONFIGS}) == sorted(SUPPORTED_HF_MODEL_TYPES)
    assert len(SUPPORTED_HF_MODEL_TYPES) == 26  # the 25 types, gemma3_text besides


@pytest.mark.parametrize("name", CONFIGS)
def test_released_config_counts_what_transformers_builds(name: str) -> None:
    assert count_params(from_hf(FIXTURES / name)).total == EXPECTED[name]["total"]


@pytest.mark.parametrize("name", CONFIGS)
def test_released_config_parts_match_transformers_modules(name: str) -> None:
    counts, kinds = count_params(from_hf(FIXTURES / name)), EXPECTED[name]["per_module_kind"]
    assert counts.token_embedding == kinds["token_embedding"]
    assert counts.position_embedding == kinds["position_embedding"]
    assert counts.attention == kinds["attention"]
    assert counts.norms == kinds["norms"]
    assert counts.mlp == kinds["mlp"] + kinds["router"] + kinds["experts"]
    # OPT-350m's project_in/out (transformers' "other") sit with the head here.
    assert counts.lm_head == kinds["lm_head"] + kinds["other"]


MOE_CONFIGS = [name for name in CONFIGS if EXPECTED[name]["active"] is not None]


@pytest.mark.parametrize("name", MOE_CONFIGS)
def test_released_moe_config_active_parameters(name: str) -> None:
    # transformers' total less the routed experts not taken: top_k of n_experts per MoE block.
    assert count_params(from_hf(FIXTURES / name)).active == EXPECTED[name]["active"]


def test_published_moe_sizes() -> None:
    # Published: Mixtral-8x7B 46.7B total, 12.9B active (Mistral AI, "Mixtral of experts",
    # arXiv:2401.04088); DeepSeek-V3 671B total, 37B active (arXiv:2412.19437).
    mixtral = count_params(from_hf(FIXTURES / "mixtral__mistralai--Mixtral-8x7B-v0.1.json"))
    assert round(mixtral.total / 1e9, 1) == 46.7 and round(mixtral.active / 1e9, 1) == 12.9
    v3 = count_params(from_hf(FIXTURES / "deepseek_v3__deepseek-ai--DeepSeek-V3.json"))
    assert round(v3.total / 1e9) == 671 and int(v3.active / 1e9) == 37  # 37.55B


# ----------------------------------------------------------------------------- error cases


def test_gpt2_generic_keys_are_read_as_transformers_aliases() -> None:
    # GPT-2 medium written with the generic names GPT2Config's attribute_map accepts: 24 blocks
    # of width 1024 (354,823,168 parameters in transformers: expected.json's gpt2-medium).
    medium = {"model_type": "gpt2", "hidden_size": 1024, "num_hidden_layers": 24,
              "num_attention_heads": 16, "max_position_embeddings": 1024}
    cfg = from_hf(medium)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head) == (1024, 24, 16)
    want = EXPECTED["gpt2__openai-community--gpt2-medium.json"]["total"]
    assert count_params(cfg).total == want == 354_823_168


def test_gpt2_alias_wins_over_the_plain_key_as_in_transformers() -> None:
    # GPT2Config(n_embd=1024, hidden_size=768).n_embd is 768: the attribute_map alias is set last.
    assert from_hf({"model_type": "gpt2", "n_embd": 1024, "hidden_size": 768}).n_embd == 768


def test_gpt2_cross_attention_is_refused_naming_the_key() -> None:
    with pytest.raises(UnsupportedKeyError,
                       match=r"\(gpt2\): add_cross_attention = True: GPT2Block"):
        from_hf({"model_type": "gpt2", "add_cross_attention": True})
    assert from_hf({"model_type": "gpt2", "add_cross_attention": False}).n_layer == 12


@pytest.mark.parametrize(("config", "match"), [
    ({"model_type": "phi", "qk_layernorm": True}, r"\(phi\): qk_layernorm = True: PhiAttention"),
    ({"model_type": "deepseek_v3", "attention_bias": True}, r"attention_bias = True"),
    ({"model_type": "deepseek_v2", "mlp_bias": True, "num_experts_per_tok": 6},
     r"\(deepseek_v2\): mlp_bias = True: DeepSeek-V2"),
    ({"model_type": "falcon", "new_decoder_architecture": True, "parallel_attn": False},
     r"parallel_attn = false with new_decoder_architecture"),
    ({"model_type": "falcon", "num_ln_in_parallel_attn": 2}, r"num_ln_in_parallel_attn = 2"),
    ({"model_type": "mpt", "expansion_ratio": 2}, r"\(mpt\): expansion_ratio = 2: transformers"),
    ({"model_type": "mpt", "no_bias": False}, r"\(mpt\): no_bias = False: transformers"),
    ({"model_type": "gemma3_text", "use_bidirectional_attention": True},
     r"\(gemma3_text\): use_bidirectional_attention = True: attention without"),
    ({"model_type": "gemma", "use_bidirectional_attention": True},
     r"\(gemma\): use_bidirectional_attention = True"),
    ({"model_type": "gemma2", "num_hidden_layers": 2, "layer_types": ["full_attention",
                                                                       "chunked_attention"]},
     r"layer_types = .*'chunked_attention' is not an attention scaleplan models"),
])
def test_architecture_keys_scaleplan_does_not_model_are_refused(config: dict[str, Any],
                                                                 match: str) -> None:
    with pytest.raises(ScaleplanError, match=match):
        from_hf(config)


def test_mixtral_is_counted_not_sent_to_mistral() -> None:
    cfg = from_hf(FIXTURES / "mixtral__mistralai--Mixtral-8x7B-v0.1.json")
    assert cfg.moe is not None and (cfg.moe.n_experts, cfg.moe.top_k) == (8, 2)


def test_unsupported_model_type_lists_the_supported_and_suggests_none() -> None:
    with pytest.raises(UnsupportedModelTypeError,
                       match="model_type 'qwen2_moe' is not one scaleplan models yet"
                       r": it counts these transformers types only.*: bloom, deepseek_v2") as info:
        from_hf({"model_type": "qwen2_moe"})
    assert "did you mean" not in str(info.value)


def test_missing_model_type_says_what_to_add() -> None:
    with pytest.raises(ScaleplanError, match="no 'model_type' key; add one of bloom, "):
        from_hf({"hidden_size": 8})


def test_mistral_attention_bias_builds_no_bias_as_in_transformers() -> None:
    # MistralAttention's projections are bias=False whatever attention_bias says.
    config = {**_load("mistral__mistralai--Mistral-7B-v0.1.json"), "attention_bias": True,
              "mlp_bias": True}
    want = EXPECTED["mistral__mistralai--Mistral-7B-v0.1.json"]["total"]
    assert count_params(from_hf(config)).total == want


def test_bad_values_name_the_key_as_the_file_spells_it() -> None:
    with pytest.raises(ScaleplanError, match=r"\(mpt\): n_heads = 0"):
        from_hf({"model_type": "mpt", "n_heads": 0})
    with pytest.raises(ScaleplanError, match=r"\(gpt2\): n_embd=768 is not divisible by "
                       r"num_attention_heads=5; try n_embd=770"):
        from_hf({"model_type": "gpt2", "num_attention_heads": 5})
    with pytest.raises(ScaleplanError, match=r"use_parallel_residual = 'yes': must be true"):
        from_hf({"model_type": "gpt_neox", "use_parallel_residual": "yes"})
    with pytest.raises(ScaleplanError, match=r"num_experts_per_tok = None: the routed experts"):
        from_hf({"model_type": "deepseek_v2"})
    with pytest.raises(ScaleplanError, match=r"\(mixtral\): num_experts_per_tok=9 is more than "
                       r"num_local_experts=8"):
        from_hf({"model_type": "mixtral", "num_experts_per_tok": 9})


def test_gemma3_wrapper_reads_the_language_model_only() -> None:
    wrapper = _load("gemma3__google--gemma-3-4b-pt.json")
    cfg = from_hf(wrapper)
    assert cfg == from_hf({**wrapper["text_config"], "model_type": "gemma3_text"})
    with pytest.raises(ScaleplanError, match="text_config = 3 must be a JSON object"):
        from_hf({"model_type": "gemma3", "text_config": 3})


def test_layer_patterns_are_counted_not_listed() -> None:
    # A file can hold any int: 10**12 blocks of gemma2 slide on the even ones, half of them,
    # and qwen3_moe with decoder_sparse_step 3 has a MoE MLP on every third block less the
    # two of mlp_only_layers that would have had one (2 and 5; 0 is dense anyway).
    n = 10**12
    assert from_hf({"model_type": "gemma2", "num_hidden_layers": n}).sliding_window_layers == n // 2
    moe = from_hf({"model_type": "qwen3_moe", "num_hidden_layers": n, "decoder_sparse_step": 3,
                   "mlp_only_layers": [0, 2, 5]}).moe
    assert moe is not None and moe.n_dense_layers == n - (n // 3 - 2)


@pytest.mark.parametrize(("config", "match"), [
    ({"model_type": "phi", "rope_parameters": {"partial_rotary_factor": "x"}},
     r"\(phi\): rope_parameters.partial_rotary_factor = 'x': must be a number in \(0, 1\]"),
    ({"model_type": "gpt_neox", "rotary_pct": 0}, r"\(gpt_neox\): rotary_pct = 0: must be"),
    ({"model_type": "phi", "partial_rotary_factor": 10**400}, r"partial_rotary_factor = 1000"),
])
def test_rotary_fraction_is_checked_where_it_is_read(config: dict[str, Any], match: str) -> None:
    with pytest.raises(ScaleplanError, match=match):
        from_hf(config)
