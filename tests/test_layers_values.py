"""`scaleplan.model.layers` by hand: every tensor of two small models written out from the table
in the module's docstring (name, shape, part and flags), torch-free so mutation testing sees
each shape and flag. d = 8, a = 2 heads, V = 16, block_size 8.
"""

from __future__ import annotations

from typing import Any

import pytest

from scaleplan.model.architecture import MLA, MoE
from scaleplan.model.config import GPTConfig
from scaleplan.model.layers import Tensor, attention_tensors, block_norm_names, norm
from scaleplan.model.shapes import model_tensors


def weight(name: str, shape: tuple[Any, ...], part: str, **flags: Any) -> Tensor:
    """A matmul weight of a block (per_block) unless flags say otherwise."""
    return Tensor(name, shape, part, **{"matmul": True, "per_block": True, **flags})  # type: ignore[arg-type]


def bias(name: str, shape: tuple[Any, ...], part: str, **flags: Any) -> Tensor:
    """A bias (or a norm's shift) of a block unless flags say otherwise."""
    return Tensor(name, shape, part, **{"bias": True, "per_block": True, **flags})  # type: ignore[arg-type]


def scale(name: str, shape: tuple[Any, ...], **flags: Any) -> Tensor:
    """A norm's scale, per block unless flags say otherwise."""
    return Tensor(name, shape, "norms", **{"per_block": True, **flags})  # type: ignore[arg-type]


# DeepSeek-like: MLA with a query latent (r_q = 6, r_kv = 4, nope 3 + rope 2 = 5 per head,
# v 5), biases on the down projections only (qkv_bias), RMSNorm, a SwiGLU dense MLP (f = 12)
# in the first block and 3 routed SwiGLU experts (f_e = 7) with a biased router, shared experts
# (f_s = 9) and their sigmoid gate in the others; untied head
MLA_MOE = GPTConfig(
    n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8, bias=False, qkv_bias=True,
    norm="rmsnorm", position="rope", mlp="swiglu", mlp_hidden=12, tie_embeddings=False,
    mla=MLA(q_lora_rank=6, kv_lora_rank=4, qk_nope_head_dim=3, qk_rope_head_dim=2,
            v_head_dim=5),
    moe=MoE(n_experts=3, top_k=1, expert_hidden=7, shared_expert_hidden=9,
            shared_expert_gate=True, router_bias=True, n_dense_layers=1))


def test_mla_and_moe_tensors_by_hand() -> None:
    moe = {"blocks": "moe"}
    routed = {"blocks": "moe", "routed": True}
    assert model_tensors(MLA_MOE) == (
        Tensor("wte.weight", (16, 8), "token_embedding"),
        scale("ln_1.weight", (8,)),
        weight("attn.q_a_proj.weight", (6, 8), "attention"),
        bias("attn.q_a_proj.bias", (6,), "attention"),
        scale("attn.q_a_norm.weight", (6,)),
        weight("attn.q_b_proj.weight", (2 * 5, 6), "attention"),
        weight("attn.kv_a_proj.weight", (4 + 2, 8), "attention"),
        bias("attn.kv_a_proj.bias", (6,), "attention"),
        scale("attn.kv_a_norm.weight", (4,)),
        weight("attn.kv_b_proj.weight", (2 * (3 + 5), 4), "attention"),
        weight("attn.c_proj.weight", (8, 2 * 5), "attention"),
        scale("ln_2.weight", (8,)),
        weight("mlp.c_fc.weight", (12, 8), "mlp", blocks="dense"),
        weight("mlp.c_gate.weight", (12, 8), "mlp", blocks="dense"),
        weight("mlp.c_proj.weight", (8, 12), "mlp", blocks="dense"),
        weight("mlp.router.weight", (3, 8), "mlp", **moe),
        bias("mlp.router.bias", (3,), "mlp", **moe),
        weight("mlp.experts.c_fc.weight", (3, 7, 8), "mlp", **routed),
        weight("mlp.experts.c_gate.weight", (3, 7, 8), "mlp", **routed),
        weight("mlp.experts.c_proj.weight", (3, 8, 7), "mlp", **routed),
        weight("mlp.shared.c_fc.weight", (9, 8), "mlp", **moe),
        weight("mlp.shared.c_gate.weight", (9, 8), "mlp", **moe),
        weight("mlp.shared.c_proj.weight", (8, 9), "mlp", **moe),
        weight("mlp.shared_gate.weight", (1, 8), "mlp", **moe),
        scale("ln_f.weight", (8,), per_block=False),
        Tensor("lm_head.weight", (16, 8), "lm_head", matmul=True),
    )


def test_mla_without_query_latent_projects_queries_directly() -> None:
    cfg = MLA_MOE.replace(moe=None, mla=MLA_MOE.mla.model_copy(  # type: ignore[union-attr]
        update={"q_lora_rank": None}))
    names = [(t.name, t.shape) for t in attention_tensors(cfg)]
    assert names[0] == ("attn.q_proj.weight", (2 * 5, 8))  # no bias whatever qkv_bias says
    assert names[1] == ("attn.kv_a_proj.weight", (6, 8))


# OPT-like with every optional top tensor: a narrower embedding (4) projected in and out, learned
# positions with an offset of 2, an embedding LayerNorm, a head bias; sandwich norms, per-head
# QK-norm scales, one key/value head (h = 4), a biased GELU MLP (f = 16); tied head
OPT_LIKE = GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=8, vocab_size=16, block_size=8,
                     embed_dim=4, position_offset=2, embedding_norm=True, lm_head_bias=True,
                     norm_position="sandwich", qk_norm="per_head", mlp="gelu", mlp_hidden=16)


def test_opt_like_tensors_by_hand() -> None:
    def ln(name: str, per_block: bool = True) -> tuple[Tensor, Tensor]:
        return (scale(f"{name}.weight", (8,), per_block=per_block),
                bias(f"{name}.bias", (8,), "norms", per_block=per_block))

    assert model_tensors(OPT_LIKE) == (
        Tensor("wte.weight", (16, 4), "token_embedding"),
        Tensor("wpe.weight", (8 + 2, 8), "position_embedding"),
        *ln("ln_emb", per_block=False),
        *ln("ln_1"),
        weight("attn.c_attn.weight", ((2 + 2 * 1) * 4, 8), "attention"),
        bias("attn.c_attn.bias", (16,), "attention"),
        scale("attn.q_norm.weight", (2, 4)), scale("attn.k_norm.weight", (1, 4)),  # never a bias
        weight("attn.c_proj.weight", (8, 2 * 4), "attention"),
        bias("attn.c_proj.bias", (8,), "attention"),
        *ln("ln_1_post"),
        *ln("ln_2"),
        weight("mlp.c_fc.weight", (16, 8), "mlp"), bias("mlp.c_fc.bias", (16,), "mlp"),
        weight("mlp.c_proj.weight", (8, 16), "mlp"), bias("mlp.c_proj.bias", (8,), "mlp"),
        *ln("ln_2_post"),
        *ln("ln_f", per_block=False),
        Tensor("project_out.weight", (4, 8), "lm_head", matmul=True),
        Tensor("project_in.weight", (8, 4), "lm_head", matmul=True),
        Tensor("lm_head.weight", (16, 4), "lm_head", matmul=True, tied=True),
        Tensor("lm_head.bias", (16,), "lm_head", bias=True),
    )


def test_qk_norm_widths() -> None:
    # "head": one (h,) scale shared by the heads; "full": over all heads, (a h,) and (k h,)
    head = [t.shape for t in attention_tensors(OPT_LIKE.replace(qk_norm="head"))
            if "norm" in t.name]
    assert head == [(4,), (4,)]
    full = [t.shape for t in attention_tensors(OPT_LIKE.replace(qk_norm="full"))
            if "norm" in t.name]
    assert full == [(8,), (4,)]


def test_block_norm_places() -> None:
    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    assert block_norm_names(gpt) == (("ln_1",), (), ("ln_2",), ())
    assert block_norm_names(gpt.replace(norm_position="post")) == (
        (), ("ln_1_post",), (), ("ln_2_post",))
    assert block_norm_names(gpt.replace(parallel="separate_norms")) == (
        ("ln_1",), (), ("ln_2",), ())
    assert block_norm_names(gpt.replace(parallel="shared_norm")) == (("ln_1",), (), (), ())


def test_norm_scale_bias_and_affine() -> None:
    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    assert norm("x", gpt) == [scale("x.weight", (8,), per_block=False),
                              bias("x.bias", (8,), "norms", per_block=False)]
    assert norm("x", gpt, (3,), per_block=True, bias=False) == [scale("x.weight", (3,))]
    assert norm("x", gpt.replace(norm="rmsnorm", bias=False)) == [
        scale("x.weight", (8,), per_block=False)]
    assert norm("x", gpt.replace(norm_affine=False)) == []


def test_mla_latent_norms_never_have_a_bias() -> None:
    # a LayerNorm model with biased norms: its block norms have a bias, MLA's latent norms not
    cfg = MLA_MOE.replace(moe=None, norm="layernorm", norm_bias=True)
    names = [t.name for t in attention_tensors(cfg) if "norm" in t.name]
    assert names == ["attn.q_a_norm.weight", "attn.kv_a_norm.weight"]


def test_routed_expert_biases_are_stacked_and_routed() -> None:
    # biased experts (mlp_bias): E = 3 biases of f_e = 7 (up) and of d = 8 (down), stacked
    cfg = MLA_MOE.replace(mla=None, n_kv_head=2, mlp="gelu", mlp_bias=True)
    routed = [t for t in model_tensors(cfg) if t.routed]
    assert [(t.name, t.shape, t.bias) for t in routed] == [
        ("mlp.experts.c_fc.weight", (3, 7, 8), False), ("mlp.experts.c_fc.bias", (3, 7), True),
        ("mlp.experts.c_proj.weight", (3, 8, 7), False), ("mlp.experts.c_proj.bias", (3, 8), True)]


def test_symbolic_stage_of_an_moe_model_is_refused_with_the_whole_message() -> None:
    # a stage of 4 blocks of a model whose n_layer is a symbol: how many are MoE blocks is
    # undecidable, so the count is refused, naming the fix
    sympy = pytest.importorskip("sympy", reason="scaleplan.symbolic needs sympy")
    from scaleplan.errors import ScaleplanError
    from scaleplan.model.shapes import block_counts

    moe = MLA_MOE.moe
    view = type("View", (), {"n_layer": sympy.Symbol("n_layer", positive=True, integer=True),
                             "moe": moe})()
    with pytest.raises(ScaleplanError, match=r"^how many of 4 blocks are MoE blocks depends on "
                       r"n_layer \(n_layer - 1 MoE blocks in all\); keep n_layer numeric for a "
                       r"part of an MoE model$"):
        block_counts(view, layers=4)
