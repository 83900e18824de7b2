"""count_params against published counts, an independent tensor-by-tensor enumeration, and
properties that must hold for every valid config."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

SEED = GPTConfig(n_layer=12, n_head=12, n_embd=384, block_size=1024, vocab_size=50304,
                 bias=False, dropout=0.1)


def test_gpt2_small_matches_nanogpt_printed_count() -> None:
    # nanoGPT model.py, GPT.from_pretrained('gpt2') prints "number of parameters: 123.65M";
    # get_num_params(non_embedding=False) = 124,439,808 (the HF count of gpt2).
    pc = count_params(GPTConfig.preset("gpt2"))
    assert pc.nanogpt == 123_653_376
    assert pc.total == 124_439_808


def test_seed_config_matches_nanogpt_printed_count() -> None:
    # shared/seed-case.md: the user's log prints "number of parameters: 40.56M".
    assert count_params(SEED).nanogpt == 40_560_000


def test_shakespeare_char_matches_nanogpt_readme() -> None:
    # nanoGPT README, shakespeare_char: "number of parameters: 10.65M".
    assert round(count_params(GPTConfig.preset("nanogpt-shakespeare-char")).nanogpt / 1e4) == 1065


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # transformers: sum(p.numel() for p in model.parameters()), tied weights once.
        ("llama-2-7b", 6_738_415_616),
        ("llama-3-8b", 8_030_261_248),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_published_hugging_face_counts(preset: str, expected: int) -> None:
    assert count_params(GPTConfig.preset(preset)).total == expected


def test_seed_width_halving_cuts_parameters_about_threefold() -> None:
    # seed-case.md point 1: n_embd 768 -> 384 cuts the (nanoGPT) count by about 3x,
    # 123.65M (GPT-2, vocab 50257, bias) vs 40.56M.
    ratio = count_params(GPTConfig.preset("gpt2")).nanogpt / count_params(SEED).nanogpt
    assert 2.9 < ratio < 3.1


def test_gpt2_small_breakdown_by_hand() -> None:
    # Written out: d=768, L=12, V=50257, T=1024, with biases everywhere (GPT-2).
    d, L, V, T = 768, 12, 50257, 1024
    attn = L * (d * 3 * d + 3 * d + d * d + d)
    mlp = L * (d * 4 * d + 4 * d + 4 * d * d + d)
    norms = (2 * L + 1) * 2 * d
    pc = count_params(GPTConfig.preset("gpt2"))
    assert (pc.token_embedding, pc.position_embedding) == (V * d, T * d)
    assert (pc.attention, pc.mlp, pc.norms, pc.lm_head) == (attn, mlp, norms, 0)
    assert pc.biases == L * (3 * d + d + 4 * d + d) + (2 * L + 1) * d
    assert pc.non_embedding == attn + mlp + norms


def _tensor_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor, named as nanoGPT / transformers name them, by shape alone."""
    d, V = cfg.n_embd, cfg.vocab_size
    q, kv, f = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, d)}
    if cfg.position == "learned":
        shapes["wpe.weight"] = (cfg.block_size, d)

    def norm(name: str) -> None:
        shapes[f"{name}.weight"] = (d,)
        if cfg.norm_bias:
            shapes[f"{name}.bias"] = (d,)

    def linear(name: str, n_in: int, n_out: int, bias: bool) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    for i in range(cfg.n_layer):
        norm(f"h.{i}.ln_1")
        linear(f"h.{i}.attn.q_proj", d, q, cfg.qkv_bias)
        linear(f"h.{i}.attn.k_proj", d, kv, cfg.qkv_bias)
        linear(f"h.{i}.attn.v_proj", d, kv, cfg.qkv_bias)
        linear(f"h.{i}.attn.o_proj", q, d, cfg.attn_out_bias)
        norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.up_proj", d, f, cfg.mlp_bias)
        if cfg.mlp in ("swiglu", "geglu"):
            linear(f"h.{i}.mlp.gate_proj", d, f, cfg.mlp_bias)
        linear(f"h.{i}.mlp.down_proj", f, d, cfg.mlp_bias)
    norm("ln_f")
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, d)
    return shapes


configs = st.builds(
    lambda L, a, groups, hd, V, T, mlp, norm, pos, tie, bias, qkvb, f: GPTConfig(
        n_layer=L, n_head=a * groups, n_kv_head=a, n_embd=a * groups * hd, vocab_size=V,
        block_size=T, mlp=mlp, norm=norm, position=pos, tie_embeddings=tie, bias=bias,
        qkv_bias=qkvb, mlp_hidden=f,
    ),
    st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(1, 16),
    st.integers(1, 5000), st.integers(1, 2048), st.sampled_from(["gelu", "swiglu", "geglu"]),
    st.sampled_from(["layernorm", "rmsnorm"]), st.sampled_from(["learned", "rope", "none"]),
    st.booleans(), st.booleans(), st.booleans(), st.none() | st.integers(1, 300),
)


def _gpt2_or_llama_layout(cfg: GPTConfig) -> bool:
    """No option beyond GPT-2's and Llama's: what `_tensor_shapes` enumerates. The presets of
    the other architectures are checked against transformers in test_presets_architectures.py."""
    plain = GPTConfig(n_layer=1, n_head=1, n_embd=8)
    options = ("qk_norm", "norm_position", "parallel", "norm_affine", "final_norm",
               "embedding_norm", "lm_head_bias", "position_offset", "mla", "moe")
    return (all(getattr(cfg, o) == getattr(plain, o) for o in options)
            and cfg.embed_dim == cfg.n_embd and cfg.mlp != "relu")


@pytest.mark.parametrize("preset", [p for p in GPTConfig.presets()
                                    if _gpt2_or_llama_layout(GPTConfig.preset(p))])
def test_presets_equal_tensor_enumeration(preset: str) -> None:
    cfg = GPTConfig.preset(preset)
    assert count_params(cfg).total == sum(math.prod(s) for s in _tensor_shapes(cfg).values())


@settings(max_examples=150, deadline=None)
@given(configs)
def test_count_equals_tensor_enumeration(cfg: GPTConfig) -> None:
    shapes = _tensor_shapes(cfg)
    pc = count_params(cfg)
    assert pc.total == sum(math.prod(s) for s in shapes.values())
    assert pc.biases == sum(math.prod(s) for n, s in shapes.items() if n.endswith(".bias"))
    assert sum(pc.components().values()) == pc.total


@settings(max_examples=100, deadline=None)
@given(configs, st.sampled_from(["n_layer", "n_embd", "vocab_size"]))
def test_total_grows_with_size(cfg: GPTConfig, field: str) -> None:
    if field == "n_embd":  # grow the width in whole heads so the config stays valid
        bigger = cfg.replace(n_embd=cfg.n_embd + cfg.n_head, head_dim=cfg.head_dim + 1)
    else:
        bigger = cfg.replace(**{field: getattr(cfg, field) + 1})
    assert count_params(bigger).total > count_params(cfg).total


@settings(max_examples=100, deadline=None)
@given(configs)
def test_tied_never_exceeds_untied_and_gqa_never_exceeds_mha(cfg: GPTConfig) -> None:
    tied = count_params(cfg.replace(tie_embeddings=True)).total
    untied = count_params(cfg.replace(tie_embeddings=False)).total
    assert untied - tied == cfg.vocab_size * cfg.n_embd
    mha = count_params(cfg.replace(n_kv_head=cfg.n_head)).total
    assert count_params(cfg).total <= mha


def test_huge_width_is_counted_exactly_as_python_int() -> None:
    # n_embd = 10**7, one layer, GELU, no bias, learned positions, vocab 50304, block 1024:
    # wte + wpe = (50304 + 1024) d; attention 4 d^2; mlp 8 d^2; norms 3 d.
    d = 10**7
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=d, bias=False)
    expected = (50304 + 1024) * d + 12 * d * d + 3 * d
    total = count_params(cfg).total
    assert type(total) is int
    assert total == expected


def test_param_count_round_trips_through_json() -> None:
    pc = count_params(GPTConfig.preset("qwen2-0.5b"))
    assert type(pc).model_validate_json(pc.model_dump_json()) == pc


def test_inconsistent_breakdown_is_rejected() -> None:
    pc = count_params(SEED)
    data = pc.model_dump() | {"total": pc.total + 1}
    with pytest.raises(ValueError, match="sums to"):
        type(pc).model_validate(data)
