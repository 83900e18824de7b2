"""The presets of issue 18's architectures count exactly what transformers builds for the released
config.json: tests/data/hf_configs/expected.json holds transformers 5.25's meta-device counts of
those files (scaleplan.reference.hf.hf_meta_counts), measured independently of scaleplan; two
presets without a fixture are built here from their released values. The published totals
(model cards, papers) are checked within their rounding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hf_meta import hf_meta_count

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

FIXTURES = Path(__file__).parent / "data" / "hf_configs"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text("utf-8"))["counts"]

# preset -> the fixture of its released config.json
FIXTURE_OF = {
    "mixtral-8x7b": "mixtral__mistralai--Mixtral-8x7B-v0.1.json",
    "deepseek-v3": "deepseek_v3__deepseek-ai--DeepSeek-V3.json",
    "deepseek-v2-lite": "deepseek_v2__deepseek-ai--DeepSeek-V2-Lite.json",
    "qwen3-8b": "qwen3__Qwen--Qwen3-8B.json",
    "qwen3-30b-a3b": "qwen3_moe__Qwen--Qwen3-30B-A3B.json",
    "gemma-2-9b": "gemma2__google--gemma-2-9b.json",
    "gemma-3-4b": "gemma3__google--gemma-3-4b-pt.json",
    "olmo-2-7b": "olmo2__allenai--OLMo-2-1124-7B.json",
    "phi-3-mini": "phi3__microsoft--Phi-3-mini-4k-instruct.json",
    "falcon-7b": "falcon__tiiuae--falcon-7b.json",
    "bloom-560m": "bloom__bigscience--bloom-560m.json",
    "gpt-j-6b": "gptj__EleutherAI--gpt-j-6b.json",
    "phi-2": "phi__microsoft--phi-2.json",
    "starcoder2-3b": "starcoder2__bigcode--starcoder2-3b.json",
    "mpt-7b": "mpt__mosaicml--mpt-7b.json",
    "stablelm-2-1.6b": "stablelm__stabilityai--stablelm-2-1_6b.json",
    "granite-3-8b": "granite__ibm-granite--granite-3.0-8b-base.json",
    "gemma-2b": "gemma__google--gemma-2b.json",
    "mistral-7b": "mistral__mistralai--Mistral-7B-v0.1.json",
    "llama-2-7b": "llama__meta-llama--Llama-2-7b-hf.json",
    "gpt2": "gpt2__openai-community--gpt2.json",
    "gpt2-medium": "gpt2__openai-community--gpt2-medium.json",
}


@pytest.mark.parametrize("preset", sorted(FIXTURE_OF))
def test_preset_counts_what_transformers_builds_for_the_released_config(preset: str) -> None:
    measured = EXPECTED[FIXTURE_OF[preset]]
    pc = count_params(GPTConfig.preset(preset))
    assert pc.total == measured["total"]
    # hf_meta_counts' active: total less (1 - top_k / n_experts) of everything under `experts`.
    assert pc.active == (measured["active"] if measured["active"] is not None else pc.total)
    assert pc.token_embedding + pc.position_embedding == measured["embedding"]


def test_mixtral_8x7b_is_the_published_46_7b_total_12_9b_active() -> None:
    # Mistral AI, "Mixtral of experts" (https://mistral.ai/news/mixtral-of-experts): "46.7B total
    # parameters but only uses 12.9B parameters per token". By hand: per block, attention
    # 4096 x (4096 + 2 x 1024) + 4096 x 4096 = 41,943,040, experts 8 x 3 x 14336 x 4096 =
    # 1,409,286,144, router 8 x 4096, norms 8,192; x 32; plus 2 x 32000 x 4096 + 4096.
    block_attn, experts, router = 41_943_040, 1_409_286_144, 32_768
    total = 32 * (block_attn + experts + router + 8192) + 2 * 32000 * 4096 + 4096
    active = total - 32 * experts * 6 // 8  # 2 of 8 experts per token
    pc = count_params(GPTConfig.preset("mixtral-8x7b"))
    assert (pc.total, pc.active) == (total, active)
    assert (round(pc.total / 1e8) / 10, round(pc.active / 1e8) / 10) == (46.7, 12.9)


def test_deepseek_v3_is_the_published_671b_total_37b_active() -> None:
    # DeepSeek-V3 technical report (arXiv:2412.19437), abstract: "671B total parameters with
    # 37B activated for each token"; the Hub checkpoint's 685B adds the 14B multi-token
    # prediction module, which transformers does not build. 37B counts the weights a token is
    # multiplied by: the active count less the embedding lookup (129280 x 7168).
    pc = count_params(GPTConfig.preset("deepseek-v3"))
    assert round(pc.total / 1e9) == 671
    assert pc.token_embedding == 129280 * 7168
    assert round((pc.active - pc.token_embedding) / 1e9) == 37


def test_pythia_1_4b_is_the_published_count() -> None:
    # Biderman et al. 2023 (arXiv:2304.01373), Table 1 / the model card: 1,414,647,808.
    assert count_params(GPTConfig.preset("pythia-1.4b")).total == 1_414_647_808


@pytest.mark.torch
@pytest.mark.parametrize(("preset", "model_type", "config"), [
    # EleutherAI/pythia-1.4b config.json
    ("pythia-1.4b", "gpt_neox",
     {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 16,
      "num_hidden_layers": 24, "max_position_embeddings": 2048, "rotary_pct": 0.25,
      "use_parallel_residual": True, "tie_word_embeddings": False, "vocab_size": 50304}),
    # facebook/opt-1.3b config.json
    ("opt-1.3b", "opt",
     {"hidden_size": 2048, "ffn_dim": 8192, "num_attention_heads": 32, "num_hidden_layers": 24,
      "max_position_embeddings": 2048, "word_embed_proj_dim": 2048, "vocab_size": 50272,
      "do_layer_norm_before": True, "enable_bias": True}),
])
def test_preset_without_a_fixture_counts_what_transformers_builds(
        preset: str, model_type: str, config: dict[str, Any]) -> None:
    pytest.importorskip("transformers")
    assert count_params(GPTConfig.preset(preset)).total == hf_meta_count(model_type, **config)


@pytest.mark.parametrize("preset", sorted(FIXTURE_OF))
def test_preset_is_what_from_hf_reads_from_the_released_config(preset: str) -> None:
    # Two readings of one file, written apart: the preset by hand, from_hf by the loader's
    # rules for the model type. Every field agrees, not only the count (windows, soft-caps,
    # rotary fractions and the MoE/MLA settings included).
    read = GPTConfig.from_hf(FIXTURES / FIXTURE_OF[preset])
    assert GPTConfig.preset(preset).model_dump() == read.model_dump()
