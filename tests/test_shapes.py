"""model_tensors, the one list of the model's tensors, against hand counts of published models
and against the parameters of the reference torch model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.model.config import GPTConfig
from scaleplan.model.shapes import across_model, model_tensors, parameters


def _by_name(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in model_tensors(cfg)}


def test_gpt2_small_tensors_by_hand() -> None:
    # GPT-2 small: d=768, L=12, V=50257, T=1024, a=12 heads of 64, f=4d=3072, biases everywhere,
    # LayerNorm with bias, learned positions, lm_head tied to wte.
    shapes = _by_name(GPTConfig.preset("gpt2"))
    assert shapes == {
        "wte.weight": (50257, 768), "wpe.weight": (1024, 768),
        "ln_1.weight": (768,), "ln_1.bias": (768,),
        "attn.c_attn.weight": (2304, 768), "attn.c_attn.bias": (2304,),  # q, k, v: 3 x 768
        "attn.c_proj.weight": (768, 768), "attn.c_proj.bias": (768,),
        "ln_2.weight": (768,), "ln_2.bias": (768,),
        "mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
        "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,),
        "ln_f.weight": (768,), "ln_f.bias": (768,),
        "lm_head.weight": (50257, 768),
    }


def test_gpt2_small_sums_to_the_published_counts() -> None:
    # Per block: ln 2 x 1,536 = 3,072; c_attn 768 x 2304 + 2304 = 1,771,776;
    # attn c_proj 768 x 768 + 768 = 590,592; c_fc 768 x 3072 + 3072 = 2,362,368;
    # mlp c_proj 3072 x 768 + 768 = 2,360,064; sum 7,087,872; x 12 = 85,054,464.
    # wte 50257 x 768 = 38,597,376; wpe 1024 x 768 = 786,432; ln_f 1,536; tied head 0.
    # Total 85,054,464 + 38,597,376 + 786,432 + 1,536 = 124,439,808 (Hugging Face's count);
    # less wpe, 123,653,376: nanoGPT's printed "123.65M".
    cfg = GPTConfig.preset("gpt2")
    total = across_model(cfg, parameters(cfg))
    assert total == 124_439_808
    assert total - 1024 * 768 == 123_653_376
    # Tensors: 12 per block x 12 + wte, wpe, ln_f's two.
    assert across_model(cfg, parameters(cfg), lambda t: 1) == 148


def test_tied_head_is_a_matmul_but_not_a_parameter() -> None:
    cfg = GPTConfig.preset("gpt2")
    head = [t for t in model_tensors(cfg) if t.name == "lm_head.weight"]
    assert [(t.tied, t.matmul) for t in head] == [(True, True)]
    assert "lm_head.weight" not in [t.name for t in parameters(cfg)]
    untied = cfg.replace(tie_embeddings=False)
    assert "lm_head.weight" in [t.name for t in parameters(untied)]


def test_llama_2_7b_sums_to_the_published_count() -> None:
    # Llama-2-7B: d=4096, L=32, 32 heads of 128 (no GQA), f=11008 SwiGLU, V=32000, RMSNorm,
    # no biases, RoPE, untied head. Per block: 2 norms 8,192; q, k, v 3 x 4096 x 4096 =
    # 50,331,648; o 16,777,216; gate, up, down 3 x 4096 x 11008 = 135,266,304;
    # sum 202,383,360; x 32 = 6,476,267,520. wte and lm_head 2 x 32000 x 4096 = 262,144,000;
    # final norm 4,096. Total 6,738,415,616 (transformers' count, design notes).
    cfg = GPTConfig.preset("llama-2-7b")
    assert across_model(cfg, parameters(cfg), layers=1) - 2 * 32000 * 4096 - 4096 == 202_383_360
    assert across_model(cfg, parameters(cfg)) == 6_738_415_616


def test_llama_3_8b_gqa_sums_to_the_published_count() -> None:
    # Llama-3-8B: d=4096, L=32, 32 query heads and 8 k/v heads of 128 (GQA), f=14336,
    # V=128256. c_attn (32 + 2 x 8) x 128 = 6144 rows x 4096 = 25,165,824; o 16,777,216;
    # MLP 3 x 14336 x 4096 = 176,160,768; norms 8,192; block 218,112,000; x 32 =
    # 6,979,584,000. wte + lm_head 2 x 128256 x 4096 = 1,050,673,152; final norm 4,096.
    # Total 8,030,261,248 (transformers' count, design notes).
    cfg = GPTConfig.preset("llama-3-8b")
    assert _by_name(cfg)["attn.c_attn.weight"] == (6144, 4096)
    assert across_model(cfg, parameters(cfg)) == 8_030_261_248


def test_matmul_weights_are_the_linear_layers() -> None:
    # Llama-2-7B's matmuls: 4 attention and 3 MLP matrices per block and the head.
    cfg = GPTConfig.preset("llama-2-7b")
    names = [t.name for t in model_tensors(cfg) if t.matmul]
    assert names == ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                     "mlp.c_gate.weight", "mlp.c_proj.weight", "lm_head.weight"]


torch = pytest.importorskip("torch", reason='the reference model needs torch: pip install '
                                            '"scaleplan[torch]"')

from scaleplan.reference.model import GPT  # noqa: E402


@st.composite
def _tiny_configs(draw: st.DrawFn) -> GPTConfig:
    n_kv_head = draw(st.sampled_from([1, 2]))
    norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    return GPTConfig(
        n_layer=draw(st.integers(1, 2)), n_head=n_kv_head * draw(st.sampled_from([1, 2, 3])),
        n_kv_head=n_kv_head, n_embd=draw(st.sampled_from([4, 6, 8])), head_dim=2, block_size=8,
        vocab_size=draw(st.integers(5, 17)), mlp=draw(st.sampled_from(["gelu", "swiglu", "geglu"])),
        mlp_hidden=draw(st.integers(3, 12)), norm=norm,
        position=draw(st.sampled_from(["learned", "rope", "none"])),
        tie_embeddings=draw(st.booleans()), qkv_bias=draw(st.booleans()),
        attn_out_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
        norm_bias=False if norm == "rmsnorm" else draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(_tiny_configs())
def test_parameters_are_the_reference_models_named_parameters(cfg: GPTConfig) -> None:
    # torch's named_parameters lists a tied weight once, as parameters() does.
    expected = {}
    for name, p in GPT(cfg).named_parameters():
        key = name.removeprefix("transformer.")
        if key.startswith("h."):
            key = key.split(".", 2)[2]  # h.<i>.ln_1.weight -> ln_1.weight, one per block
        expected[key] = tuple(p.shape)
    assert {t.name: t.shape for t in parameters(cfg)} == expected
    linears = {name.removeprefix("transformer.").split(".", 2)[-1] + ".weight"
               for name, m in GPT(cfg).named_modules() if isinstance(m, torch.nn.Linear)}
    assert {t.name for t in model_tensors(cfg) if t.matmul} == linears
