"""GPTConfig refuses contradictory architecture options with a message that names the field, its
value and what to do; the derived fields of the new options are what the models use."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from scaleplan.model.architecture import MLA, MoE
from scaleplan.model.config import GPTConfig

DEEPSEEK_MLA = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64, "v_head_dim": 128}


@pytest.mark.parametrize(("fields", "named"), [
    ({"rotary_fraction": 0.25}, r"rotary_fraction=0.25 needs position='rope'"),
    ({"position": "rope", "position_offset": 2}, r"position_offset=2 .* use position='learned'"),
    ({"n_layer": 2, "sliding_window": 64, "sliding_window_layers": 3},
     r"sliding_window_layers=3 is more than n_layer=2"),
    ({"sliding_window_layers": 2}, r"sliding_window_layers=2 needs a sliding_window"),
    ({"norm_affine": False, "norm_bias": True}, r"norm_bias=True .* norm_affine=False"),
    ({"parallel": "shared_norm", "norm_position": "sandwich"},
     r"parallel='shared_norm' .* norm_position must be 'pre', not 'sandwich'"),
    ({"n_layer": 3, "moe": {"n_experts": 4, "top_k": 1, "expert_hidden": 8,
                            "n_dense_layers": 3}},
     r"moe.n_dense_layers=3 leaves no MoE block of n_layer=3"),
    ({"mla": DEEPSEEK_MLA}, r"mla needs position='rope'"),
    ({"position": "rope", "n_head": 4, "n_embd": 64, "head_dim": 64, "mla": DEEPSEEK_MLA},
     r"head_dim=64 disagrees with mla's .* = 192; leave head_dim out"),
    ({"position": "rope", "n_head": 4, "n_kv_head": 2, "n_embd": 64, "mla": DEEPSEEK_MLA},
     r"n_kv_head=2: with mla .*\(n_kv_head = n_head = 4\)"),
    ({"position": "rope", "n_head": 4, "n_embd": 64, "qk_norm": "head", "mla": DEEPSEEK_MLA},
     r"qk_norm='head' with mla .* drop qk_norm"),
    ({"moe": {"n_experts": 4, "top_k": 5, "expert_hidden": 8}},
     r"top_k=5 is more than n_experts=4"),
    ({"moe": {"n_experts": 4, "top_k": 1, "expert_hidden": 8, "shared_expert_gate": True}},
     r"shared_expert_gate=True needs shared experts"),
    ({"norm": "rmsnorm", "norm_bias": True}, r"norm_bias=True .* norm='rmsnorm'"),
])
def test_contradictions_name_the_field_and_the_fix(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        GPTConfig(**fields)


@pytest.mark.parametrize(("fields", "field"), [
    ({"qk_norm": "both"}, "qk_norm"),
    ({"norm_position": "middle"}, "norm_position"),
    ({"parallel": True}, "parallel"),
    ({"rotary_fraction": 0.0, "position": "rope"}, "rotary_fraction"),
    ({"rotary_fraction": 1.5, "position": "rope"}, "rotary_fraction"),
    ({"attn_softcap": -1.0}, "attn_softcap"),
    ({"moe": {"n_experts": 0, "top_k": 1, "expert_hidden": 8}}, "n_experts"),
    ({"moe": {"n_experts": 8, "top_k": 2}}, "expert_hidden"),
    ({"mla": {"kv_lora_rank": 512}}, "q_lora_rank"),
])
def test_bad_values_are_refused_by_name(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        GPTConfig(**fields)


def test_derived_fields_of_the_new_options() -> None:
    # DeepSeek-V3: head_dim is the query/key width 128 + 64, every head has its own k and v.
    cfg = GPTConfig(n_head=128, n_embd=7168, position="rope", mla=DEEPSEEK_MLA)
    assert (cfg.head_dim, cfg.n_kv_head) == (192, 128)
    assert MLA(**DEEPSEEK_MLA).qk_head_dim == 192
    # A window without a layer count applies to every block (Mistral v0.1); none: no block.
    assert GPTConfig(n_layer=6, sliding_window=4096).sliding_window_layers == 6
    assert GPTConfig(n_layer=6).sliding_window_layers == 0
    assert GPTConfig(n_embd=1024, n_head=16).embed_dim == 1024
    # DeepSeek's shared experts fuse into one MLP n_shared x expert_hidden wide; a width alone
    # (Qwen2-MoE's shared_expert_intermediate_size) means one shared expert.
    assert MoE(n_experts=64, top_k=6, expert_hidden=1408, n_shared_experts=2
               ).shared_expert_hidden == 2816
    assert MoE(n_experts=60, top_k=4, expert_hidden=1408, shared_expert_hidden=5632
               ).n_shared_experts == 1
    # norm_affine=False turns off the LayerNorm biases nanoGPT's bias=True would give.
    assert GPTConfig(norm_affine=False).norm_bias is False
