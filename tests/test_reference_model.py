"""The reference GPT builds every GPTConfig option with exactly count_params' parameters."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

torch = pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                            '"scaleplan[torch]"')

from scaleplan.reference.model import GPT  # noqa: E402


@st.composite
def tiny_configs(draw: st.DrawFn) -> GPTConfig:
    n_kv_head = draw(st.sampled_from([1, 2]))
    n_head = n_kv_head * draw(st.sampled_from([1, 2, 3]))  # MHA, GQA and MQA
    position = draw(st.sampled_from(["learned", "rope", "none"]))
    head_dim = draw(st.sampled_from([2, 4, 6] if position == "rope" else [2, 3, 4, 5]))
    norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    return GPTConfig(
        n_layer=draw(st.integers(1, 2)), n_head=n_head, n_kv_head=n_kv_head,
        n_embd=draw(st.sampled_from([4, 6, 8])),  # head_dim need not be n_embd / n_head
        head_dim=head_dim, block_size=8, vocab_size=draw(st.integers(5, 17)),
        bias=draw(st.booleans()), mlp=draw(st.sampled_from(["gelu", "swiglu", "geglu"])),
        mlp_hidden=draw(st.integers(3, 12)), norm=norm, position=position,
        tie_embeddings=draw(st.booleans()), qkv_bias=draw(st.booleans()),
        attn_out_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
        norm_bias=False if norm == "rmsnorm" else draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.1])),
    )


@settings(max_examples=30, deadline=None)
@given(cfg=tiny_configs(), attention=st.sampled_from(["flash", "eager"]))
def test_reference_param_count_equals_count_params_for_every_option(
        cfg: GPTConfig, attention: str) -> None:
    model = GPT(cfg, attention=attention)  # type: ignore[arg-type]
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).total
    idx = torch.randint(0, cfg.vocab_size, (2, 5))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 5, cfg.vocab_size)
    loss.backward()  # every option also trains


def test_gpt2_parameter_names_and_shapes_follow_nanogpt() -> None:
    # nanoGPT model.py names; GPT-2 small (vocab 50257): 124,439,808 parameters with wpe
    # (design.md; nanoGPT's 123.65M excludes the 786,432 of wpe).
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("gpt2"))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["transformer.wte.weight"] == (50257, 768)
    assert shapes["transformer.wpe.weight"] == (1024, 768)
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (3 * 768, 768)
    assert shapes["transformer.h.11.mlp.c_proj.weight"] == (768, 4 * 768)
    assert shapes["transformer.ln_f.bias"] == (768,)
    assert "lm_head.weight" not in shapes  # tied: named once, as wte
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


def test_llama_7b_reference_count_is_the_published_one() -> None:
    # Hugging Face Llama-2-7b-hf: 6,738,415,616 parameters (design.md).
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("llama-2-7b"))
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616


def test_seq_len_longer_than_block_size_is_rejected() -> None:
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=4, vocab_size=8))
    with pytest.raises(ValueError, match=r"seq_len=5 exceeds block_size=4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_rope_with_odd_head_dim_is_rejected() -> None:
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=3, block_size=4, vocab_size=8, position="rope")
    with pytest.raises(ValueError, match=r"even head_dim, got head_dim=3"):
        GPT(cfg)


def test_without_torch_the_reference_fails_with_one_clear_line() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import scaleplan\n"
            "try:\n    import scaleplan.reference\n"
            "except ImportError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == 'ImportError scaleplan.reference needs torch: pip install "scaleplan[torch]"'
