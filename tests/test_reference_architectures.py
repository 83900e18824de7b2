"""The reference GPT builds every architecture option of issue 18 (QK-norm, post/sandwich norms,
parallel blocks, affine-less/final/embedding norms, lm_head bias, position offset, embed_dim,
ReLU, partial rotary, ALiBi, sliding windows, soft-capping, MLA, MoE) with exactly the tensors
of `scaleplan.model.shapes.parameters`, and every option trains."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.model.shapes import block_counts, parameters

torch = pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                            '"scaleplan[torch]"')

from scaleplan.reference.model import GPT  # noqa: E402
from scaleplan.reference.moe import balanced_assignment  # noqa: E402


def _attention_fields(draw: st.DrawFn, position: str) -> dict[str, Any]:
    if position == "rope" and draw(st.booleans()):  # DeepSeek's multi-head latent attention
        return {"n_head": draw(st.sampled_from([1, 2, 3])),
                "mla": {"q_lora_rank": draw(st.sampled_from([None, 5])), "kv_lora_rank": 4,
                        "qk_nope_head_dim": draw(st.sampled_from([1, 3])),
                        "qk_rope_head_dim": 2, "v_head_dim": draw(st.sampled_from([2, 5]))}}
    n_kv_head = draw(st.sampled_from([1, 2]))
    fields: dict[str, Any] = {"n_head": n_kv_head * draw(st.sampled_from([1, 2])),
                              "n_kv_head": n_kv_head,
                              "qk_norm": draw(st.sampled_from(["none", "head", "per_head",
                                                               "full"]))}
    if position == "rope":
        fields["head_dim"], fields["rotary_fraction"] = draw(st.sampled_from(
            [(4, 1.0), (4, 0.5), (8, 0.25), (6, 1.0)]))
    else:
        fields["head_dim"] = draw(st.sampled_from([2, 3, 4]))
    return fields


def _block_fields(draw: st.DrawFn, n_layer: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"parallel": draw(st.sampled_from(["none", "shared_norm",
                                                                "separate_norms"]))}
    if fields["parallel"] == "none":
        fields["norm_position"] = draw(st.sampled_from(["pre", "post", "sandwich"]))
    if draw(st.booleans()):
        fields["moe"] = {"n_experts": draw(st.sampled_from([2, 4])),
                         "top_k": draw(st.sampled_from([1, 2])),
                         "expert_hidden": draw(st.integers(2, 7)),
                         "n_shared_experts": draw(st.sampled_from([0, 1, 2])),
                         "n_dense_layers": draw(st.integers(0, n_layer - 1)),
                         "router_bias": draw(st.booleans())}
        fields["moe"]["shared_expert_gate"] = (fields["moe"]["n_shared_experts"] > 0
                                               and draw(st.booleans()))
    if draw(st.booleans()):
        fields["sliding_window"] = draw(st.sampled_from([1, 3, 16]))
        fields["sliding_window_layers"] = draw(st.integers(1, n_layer))
    return fields


@st.composite
def architectures(draw: st.DrawFn) -> GPTConfig:
    position = draw(st.sampled_from(["learned", "rope", "alibi", "none"]))
    norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    affine = draw(st.booleans())
    n_layer = draw(st.integers(1, 3))
    fields: dict[str, Any] = {
        "n_layer": n_layer, "n_embd": draw(st.sampled_from([4, 6, 8])), "block_size": 8,
        "vocab_size": draw(st.integers(5, 17)), "bias": draw(st.booleans()),
        "mlp": draw(st.sampled_from(["gelu", "relu", "swiglu", "geglu"])),
        "mlp_hidden": draw(st.integers(3, 12)), "norm": norm, "position": position,
        "tie_embeddings": draw(st.booleans()), "norm_affine": affine,
        "norm_bias": norm == "layernorm" and affine and draw(st.booleans()),
        "final_norm": draw(st.booleans()), "embedding_norm": draw(st.booleans()),
        "lm_head_bias": draw(st.booleans()), "dropout": draw(st.sampled_from([0.0, 0.1])),
        "embed_dim": draw(st.sampled_from([None, 3, 10])),
        "final_softcap": draw(st.sampled_from([None, 2.0])),
        "attn_softcap": draw(st.sampled_from([None, 3.0])),
        **_attention_fields(draw, position), **_block_fields(draw, n_layer)}
    if position == "learned":
        fields["position_offset"] = draw(st.sampled_from([0, 2]))
    return GPTConfig.model_validate(fields)


def _expected_names(cfg: GPTConfig) -> Counter[tuple[str, tuple[int, ...]]]:
    """parameters(cfg) as the model holds them: a per-block tensor once per block holding it."""
    counts = block_counts(cfg)
    return Counter({(t.name, t.shape): counts[t.blocks] if t.per_block else 1
                    for t in parameters(cfg) if not t.per_block or counts[t.blocks]})


def _model_names(model: Any) -> Counter[tuple[str, tuple[int, ...]]]:
    names: Counter[tuple[str, tuple[int, ...]]] = Counter()
    for name, p in model.named_parameters():
        key = name.removeprefix("transformer.")
        if key.startswith("h."):
            key = key.split(".", 2)[2]  # h.<i>.ln_1.weight -> ln_1.weight
        names[key, tuple(p.shape)] += 1
    return names


@settings(max_examples=60, deadline=None)
@given(cfg=architectures(), routing=st.sampled_from(["learned", "balanced"]))
def test_reference_builds_exactly_the_listed_tensors_for_every_option(
        cfg: GPTConfig, routing: str) -> None:
    attention = "eager" if cfg.attn_softcap is not None else "flash"
    model = GPT(cfg, attention=attention, routing=routing)  # type: ignore[arg-type]
    assert _model_names(model) == _expected_names(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).total
    idx = torch.randint(0, cfg.vocab_size, (2, 5))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 5, cfg.vocab_size)
    loss.backward()  # every option also trains
    if cfg.dropout == 0.0:  # eager and SDPA attention compute the same function
        eager = GPT(cfg, attention="eager", routing=routing)  # type: ignore[arg-type]
        eager.load_state_dict(model.state_dict())
        assert torch.allclose(eager(idx)[0], logits, atol=1e-5)


def test_mixtral_8x7b_reference_counts_the_published_46_7b() -> None:
    # Mixtral-8x7B (Jiang et al. 2024; the Hugging Face model card's 46.7B): d=4096, 32 layers,
    # 32 heads (8 kv) of 128, 8 experts of 14336 (SwiGLU), top-2, V=32000, untied, RMSNorm.
    # By hand per layer: attention 4096 x (4096 + 2 x 1024) + 4096 x 4096 = 41,943,040;
    # router 8 x 4096 = 32,768; experts 8 x 3 x 14336 x 4096 = 1,409,286,144; norms 8,192;
    # 32 layers: 46,564,605,952; + wte and lm_head 2 x 32000 x 4096 = 262,144,000 + ln_f 4,096
    # = 46,702,792,704 (transformers' meta-device count of mistralai/Mixtral-8x7B-v0.1).
    cfg = GPTConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, block_size=32768,
                    vocab_size=32000, bias=False, mlp="swiglu", norm="rmsnorm",
                    position="rope", tie_embeddings=False,
                    moe={"n_experts": 8, "top_k": 2, "expert_hidden": 14336})
    with torch.device("meta"):
        model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == 46_702_792_704


def test_balanced_routing_gives_every_expert_its_even_share() -> None:
    chosen = balanced_assignment(12, 2, 4)  # 24 slots over 4 experts: 6 each
    assert torch.bincount(chosen.flatten(), minlength=4).tolist() == [6, 6, 6, 6]
    assert all(len(set(row)) == 2 for row in chosen.tolist())  # two different experts a token


def test_sliding_window_hides_keys_w_or_more_tokens_back() -> None:
    # A window of 2 on 4 tokens: query 3 sees keys 2 and 3 only. Changing token 0 can then
    # reach position 3 only through a full-attention block: with every block sliding, two
    # blocks carry it at most 2 positions forward (0 -> 1 -> 2), never to position 3.
    cfg = GPTConfig(n_layer=2, n_head=1, n_embd=4, block_size=8, vocab_size=8, position="none",
                    sliding_window=2)
    model = GPT(cfg, attention="eager").eval()
    a = torch.tensor([[1, 2, 3, 4]])
    b = torch.tensor([[5, 2, 3, 4]])
    assert torch.equal(model(a)[0][0, 3], model(b)[0][0, 3])
    assert not torch.equal(model(a)[0][0, 2], model(b)[0][0, 2])
    flash = GPT(cfg, attention="flash").eval()
    flash.load_state_dict(model.state_dict())
    assert torch.allclose(flash(a)[0], model(a)[0], atol=1e-6)


def test_attention_softcap_needs_eager_attention() -> None:
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=8, attn_softcap=50.0)
    with pytest.raises(ValueError, match=r"attn_softcap=50.0 needs attention='eager'"):
        GPT(cfg)


def test_partial_rotary_with_odd_rotated_width_is_rejected() -> None:
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=6, block_size=8, vocab_size=8, position="rope",
                    rotary_fraction=0.5)
    with pytest.raises(ValueError, match=r"head_dim x rotary_fraction=3"):
        GPT(cfg)
