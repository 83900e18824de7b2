"""hf_meta_counts: the parameters transformers builds for released config.json files.

Every fixture in tests/data/hf_configs must still count what expected.json recorded, so a
transformers upgrade that changes a count is noticed (regenerate with
``python -m scaleplan.reference.hf tests/data/hf_configs`` once the change is understood). Tiny
configs check hf_meta_counts itself against counts written out by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                   '"scaleplan[torch]"')
transformers = pytest.importorskip("transformers")

from scaleplan.reference.hf import KINDS, hf_meta_counts, main  # noqa: E402

pytestmark = pytest.mark.torch

FIXTURES = Path(__file__).resolve().parent / "data" / "hf_configs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
CONFIGS = sorted(p.name for p in FIXTURES.glob("*.json") if p.name != "expected.json")


def _load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return config


def test_every_fixture_has_expected_counts_and_a_source() -> None:
    assert sorted(EXPECTED["counts"]) == CONFIGS
    sources = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    for name in CONFIGS:
        assert name in sources, f"{name} has no entry in SOURCES.md"
        model_type = name.split("__")[0]
        assert _load(name)["model_type"] == model_type, f"{name}: file name and model_type differ"


@pytest.mark.parametrize("name", CONFIGS)
def test_fixture_counts_match_expected(name: str) -> None:
    counts = hf_meta_counts(_load(name))
    want = EXPECTED["counts"][name]
    assert counts == want, (
        f"{name}: transformers {transformers.__version__} counts differ from those recorded with "
        f"{EXPECTED['transformers']}")
    assert sum(counts["per_module_kind"].values()) == counts["total"]


def test_gpt2_one_layer_by_hand() -> None:
    # d=8, V=10, positions 4, MLP 4d=32, Conv1D layers with biases, LayerNorms with bias.
    counts = hf_meta_counts({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2,
                             "vocab_size": 10, "n_positions": 4,
                             "bos_token_id": 0, "eos_token_id": 0})
    wte, wpe = 10 * 8, 4 * 8
    ln = 2 * 8
    attn = (8 * 24 + 24) + (8 * 8 + 8)  # c_attn d x 3d, c_proj d x d
    mlp = (8 * 32 + 32) + (32 * 8 + 8)  # c_fc d x 4d, c_proj 4d x d
    assert counts["total"] == wte + wpe + 2 * ln + attn + mlp + ln == 1000  # lm_head tied to wte
    assert counts["embedding"] == wte + wpe
    assert counts["per_module_kind"] == {**dict.fromkeys(KINDS, 0), "token_embedding": wte,
                                         "position_embedding": wpe, "attention": attn,
                                         "mlp": mlp, "norms": 3 * ln}
    assert counts["experts"] == 0 and counts["active"] is None


def test_mixtral_tiny_experts_and_active_by_hand() -> None:
    # d=4, 2 query heads and 1 kv head of size 2, 4 experts of width 6, top-2, V=10, untied.
    counts = hf_meta_counts({"model_type": "mixtral", "hidden_size": 4, "intermediate_size": 6,
                             "num_hidden_layers": 1, "num_attention_heads": 2,
                             "num_key_value_heads": 1, "head_dim": 2, "vocab_size": 10,
                             "num_local_experts": 4, "num_experts_per_tok": 2,
                             "bos_token_id": 0, "eos_token_id": 0})
    attn = 4 * 4 + 2 * (2 * 4) + 4 * 4  # q, k, v, o without biases
    experts = 4 * (2 * 6 * 4 + 4 * 6)  # fused gate_up (E, 2f, d) and down (E, d, f)
    router, norms, embed = 4 * 4, 3 * 4, 10 * 4
    assert counts["experts"] == experts == 288
    assert counts["total"] == embed + attn + router + experts + norms + embed == 444
    assert counts["active"] == 444 - experts + experts * 2 // 4 == 300
    assert counts["per_module_kind"]["router"] == router


def test_opt_projection_and_post_norm_by_hand() -> None:
    # opt-350m's shape in miniature: embeddings of width 4 projected to d=8 and back; post-norm
    # (do_layer_norm_before false) drops the decoder's final LayerNorm; positions have 2 extra.
    counts = hf_meta_counts({"model_type": "opt", "hidden_size": 8, "word_embed_proj_dim": 4,
                             "vocab_size": 10, "max_position_embeddings": 4, "ffn_dim": 16,
                             "num_hidden_layers": 1, "num_attention_heads": 2,
                             "do_layer_norm_before": False, "pad_token_id": 1,
                             "bos_token_id": 0, "eos_token_id": 0})
    kinds = counts["per_module_kind"]
    assert kinds["token_embedding"] == 10 * 4
    assert kinds["position_embedding"] == (4 + 2) * 8
    assert kinds["other"] == 4 * 8 + 8 * 4  # project_in, project_out: no bias
    assert kinds["attention"] == 4 * (8 * 8 + 8)
    assert kinds["mlp"] == (8 * 16 + 16) + (16 * 8 + 8)
    assert kinds["norms"] == 2 * (2 * 8)  # the block's two LayerNorms, no final one
    assert kinds["lm_head"] == 0  # tied to the 10 x 4 embedding
    assert counts["total"] == 40 + 48 + 64 + 288 + 280 + 32 == 752


def test_deepseek_v3_router_bias_is_a_buffer() -> None:
    counts = hf_meta_counts({"model_type": "deepseek_v3", "hidden_size": 8,
                             "intermediate_size": 12, "moe_intermediate_size": 4,
                             "num_hidden_layers": 1, "num_attention_heads": 2,
                             "num_key_value_heads": 2, "n_routed_experts": 4, "n_shared_experts": 1,
                             "num_experts_per_tok": 2, "first_k_dense_replace": 0,
                             "q_lora_rank": None, "kv_lora_rank": 4, "qk_nope_head_dim": 2,
                             "qk_rope_head_dim": 2, "v_head_dim": 2, "n_group": 1,
                             "topk_group": 1, "vocab_size": 10,
                             "bos_token_id": 0, "eos_token_id": 0})
    assert counts["per_module_kind"]["router"] == 4 * 8  # gate.weight only
    assert counts["experts"] == 4 * (2 * 4 * 8 + 8 * 4)


def test_gemma3_wrapper_counts_the_text_model_only() -> None:
    text = {"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "vocab_size": 10}
    wrapped = {"model_type": "gemma3", "text_config": text,
               "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16}}
    alone = {"model_type": "gemma3_text", **text, "bos_token_id": 0, "eos_token_id": 0,
             "pad_token_id": 0}
    assert hf_meta_counts(wrapped) == hf_meta_counts(alone)


def test_module_imports_without_transformers() -> None:
    code = "import sys, scaleplan.reference.hf; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_main_writes_expected_json(tmp_path: Path) -> None:
    (tmp_path / "gpt2__tiny.json").write_text(json.dumps(
        {"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 10,
         "n_positions": 4, "bos_token_id": 0, "eos_token_id": 0}), encoding="utf-8")
    assert main([str(tmp_path)]) == 0
    written = json.loads((tmp_path / "expected.json").read_text(encoding="utf-8"))
    assert written["transformers"] == transformers.__version__
    assert written["counts"]["gpt2__tiny.json"]["total"] == 1000
    assert main([]) == 2
