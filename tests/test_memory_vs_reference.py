"""training_memory against the torch reference harness (scaleplan.reference, issue 3).

The harness measures, storage by storage, what autograd saves and the most bytes live at any
moment of a whole training step (the last micro-batch of gradient accumulation, so gradients are
resident, as the model assumes). The default run checks a representative subset (one config per
family, every precision, both attention kinds, dropout, CUDA's dropout semantics, full
checkpointing, held logits); ``SCALEPLAN_FULL_GRID=1`` runs the whole grid (~2 minutes). The
accuracy report over the validation grid is ``python -m scaleplan.reference.validate``.
"""

from __future__ import annotations

import itertools
import os

import pytest

pytest.importorskip("torch", reason='needs torch: pip install "scaleplan[torch]"')
reference = pytest.importorskip("scaleplan.reference.measure",
                                reason="the reference harness is not merged on this branch")

from scaleplan.memory.training import training_memory  # noqa: E402
from scaleplan.model.architecture import MLA, MoE  # noqa: E402
from scaleplan.model.config import GPTConfig  # noqa: E402

CONFIGS = {
    "gpt2-like": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200),
    "llama-like": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64,
                            vocab_size=200, bias=False, mlp="swiglu", norm="rmsnorm",
                            position="rope", tie_embeddings=False, mlp_hidden=160),
}
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed", "bf16-true", "bf16-fp32-master"]
# (config, precision, attention, dropout, cuda_semantics, checkpointing, hold_logits)
SUBSET = [
    ("gpt2-like", "32-true", "flash", 0.0, False, False, False),
    ("gpt2-like", "bf16-mixed", "eager", 0.1, False, False, True),
    ("gpt2-like", "bf16-fp32-master", "flash", 0.1, True, False, False),
    ("gpt2-like", "bf16-mixed", "flash", 0.0, False, True, False),
    ("llama-like", "bf16-true", "eager", 0.0, False, False, False),
    ("llama-like", "16-mixed", "flash", 0.1, False, False, True),
    ("llama-like", "bf16-mixed", "flash", 0.1, False, True, True),
]
FULL = [(n, p, a, d, cs, ck, False) for n, p, a, d, cs, ck in itertools.product(
    CONFIGS, PRECISIONS, ["flash", "eager"], [0.0, 0.1], [True, False], [False, True])
    if (d > 0 or cs) and not (ck and a == "eager")]
B, S = 2, 48


def _compare(name: str, precision: str, attention: str, dropout: float, cuda_semantics: bool,
             checkpointing: bool, hold_logits: bool) -> tuple[float, float]:
    cfg = CONFIGS[name].replace(dropout=dropout)
    m = reference.measure(cfg, micro_batch_size=B, seq_len=S, precision=precision,
                          attention=attention, cuda_semantics=cuda_semantics,
                          checkpointing=checkpointing, accumulating=True,
                          hold_logits=hold_logits)
    p = training_memory(cfg, micro_batch_size=B, seq_len=S, precision=precision,
                        attention=attention,  # type: ignore[arg-type]
                        device="cpu-cuda-semantics" if cuda_semantics else "cpu",
                        checkpointing="full" if checkpointing else "none",
                        optimizer_impl=m.optimizer, hold_logits=hold_logits)
    return (p.saved_for_backward / m.saved_for_backward, p.tensor_peak / m.peak_bytes)


@pytest.mark.torch
@pytest.mark.parametrize("point", SUBSET, ids=lambda p: "-".join(map(str, p)))
def test_saved_within_2_percent_and_peak_within_5_percent(point: tuple) -> None:  # type: ignore[type-arg]
    saved, peak = _compare(*point)
    assert saved == pytest.approx(1, abs=0.02)
    assert peak == pytest.approx(1, abs=0.05)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SCALEPLAN_FULL_GRID"),
                    reason="the full grid takes ~2 minutes; set SCALEPLAN_FULL_GRID=1")
@pytest.mark.parametrize("point", FULL if os.environ.get("SCALEPLAN_FULL_GRID") else [FULL[0]],
                         ids=lambda p: "-".join(map(str, p)))
def test_full_grid_saved_within_2_percent_and_peak_within_5_percent(point: tuple) -> None:  # type: ignore[type-arg]
    saved, peak = _compare(*point)
    assert saved == pytest.approx(1, abs=0.02)
    assert peak == pytest.approx(1, abs=0.05)


@pytest.mark.torch
def test_held_logits_cost_exactly_one_logits_tensor() -> None:
    # nanoGPT's loop keeps `logits` alive: the measured peak grows by b*s*V elements in the
    # activation dtype (bf16 under autocast: 2 bytes), and the model says the same.
    cfg = CONFIGS["gpt2-like"]
    kw = dict(micro_batch_size=B, seq_len=S, precision="bf16-mixed", accumulating=True)
    held = reference.measure(cfg, hold_logits=True, **kw)
    dropped = reference.measure(cfg, hold_logits=False, **kw)
    assert held.peak_bytes - dropped.peak_bytes == B * S * 200 * 2
    pk = dict(micro_batch_size=B, seq_len=S, precision="bf16-mixed", device="cpu",
              optimizer_impl="fused")
    assert (training_memory(cfg, hold_logits=True, **pk).tensor_peak  # type: ignore[arg-type]
            - training_memory(cfg, hold_logits=False, **pk).tensor_peak  # type: ignore[arg-type]
            ) == B * S * 200 * 2


# Issue 18's options at tiny widths, each as the model family that uses it (the reference builds
# them as transformers does; MoE routes balanced, every expert taking top_k / n_experts of the
# tokens). saved_for_backward must be within 3% (issue 18's bar); all measure exact today but
# for a storage-reuse flake of the harness on some bf16-mixed eager MoE runs (< 2.5%).
_LLAMA = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, vocab_size=200,
              bias=False, mlp="swiglu", norm="rmsnorm", position="rope", tie_embeddings=False,
              mlp_hidden=160)
_GPT2 = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)
_MLA = MLA(q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
           v_head_dim=16)
ARCHITECTURES = {
    "mixtral": GPTConfig(**_LLAMA, moe=MoE(n_experts=4, top_k=2, expert_hidden=96)),  # type: ignore[arg-type]
    "deepseek-v3": GPTConfig(**{**_LLAMA, "n_layer": 3, "n_kv_head": None}, mla=_MLA,  # type: ignore[arg-type]
                             moe=MoE(n_experts=8, top_k=2, expert_hidden=32,
                                     n_shared_experts=1, n_dense_layers=1)),
    "qwen2-moe": GPTConfig(**_LLAMA, moe=MoE(n_experts=4, top_k=2, expert_hidden=32,  # type: ignore[arg-type]
                                             shared_expert_hidden=64,
                                             shared_expert_gate=True)),
    "qwen3": GPTConfig(**_LLAMA, qk_norm="head"),  # type: ignore[arg-type]
    "olmo2": GPTConfig(**_LLAMA, qk_norm="full", norm_position="post"),  # type: ignore[arg-type]
    "gemma2": GPTConfig(**_LLAMA, norm_position="sandwich", attn_softcap=50.0,  # type: ignore[arg-type]
                        final_softcap=30.0, sliding_window=16, sliding_window_layers=1),
    "stablelm": GPTConfig(**{**_GPT2, "position": "rope"}, qk_norm="per_head",  # type: ignore[arg-type]
                          parallel="separate_norms", rotary_fraction=0.25),
    "gptj": GPTConfig(**{**_GPT2, "position": "rope"}, parallel="shared_norm",  # type: ignore[arg-type]
                      rotary_fraction=0.5, lm_head_bias=True, tie_embeddings=False),
    "mistral-sliding": GPTConfig(**_LLAMA, sliding_window=16),  # type: ignore[arg-type]
    "olmo": GPTConfig(**{**_GPT2, "bias": False}, norm_affine=False),  # type: ignore[arg-type]
    "bloom": GPTConfig(**{**_GPT2, "position": "alibi"}, embedding_norm=True),  # type: ignore[arg-type]
    "opt-350m": GPTConfig(**_GPT2, mlp="relu", embed_dim=32, final_norm=False,  # type: ignore[arg-type]
                          position_offset=2, norm_position="post"),
}
ARCH_POINTS = [
    ("mixtral", "bf16-true", "flash"), ("mixtral", "32-true", "eager"),
    ("deepseek-v3", "bf16-mixed", "flash"), ("deepseek-v3", "32-true", "flash"),
    ("qwen2-moe", "bf16-mixed", "eager"), ("qwen3", "bf16-mixed", "flash"),
    ("olmo2", "bf16-true", "flash"), ("gemma2", "bf16-mixed", "eager"),
    ("stablelm", "bf16-mixed", "flash"), ("gptj", "32-true", "flash"),
    ("mistral-sliding", "32-true", "flash"), ("mistral-sliding", "bf16-true", "eager"),
    ("olmo", "bf16-mixed", "flash"), ("opt-350m", "bf16-mixed", "eager"),
    ("bloom", "bf16-mixed", "eager"), ("bloom", "bf16-true", "flash"),
]


@pytest.mark.torch
# torch's CPU rms_norm warns when autocast hands it a bf16 latent with its fp32 scale (MLA)
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")
@pytest.mark.parametrize("point", ARCH_POINTS, ids=lambda p: "-".join(p))
def test_architecture_saved_within_3_percent(point: tuple[str, str, str]) -> None:
    name, precision, attention = point
    cfg = ARCHITECTURES[name]
    m = reference.measure(cfg, micro_batch_size=B, seq_len=S, precision=precision,
                          attention=attention, accumulating=True, optimizer="for-loop")
    p = training_memory(cfg, micro_batch_size=B, seq_len=S, precision=precision,
                        attention=attention,  # type: ignore[arg-type]
                        device="cpu", optimizer_impl="for-loop")
    assert p.saved_for_backward == pytest.approx(m.saved_for_backward, rel=0.03)
    assert p.tensor_peak == pytest.approx(m.peak_bytes, rel=0.06)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")
@pytest.mark.parametrize("name", ["mixtral", "deepseek-v3"])
def test_moe_full_checkpointing_peak_within_5_percent(name: str) -> None:
    # the recomputed MoE block's backward sums each stacked expert tensor's gradient in one
    # buffer before adding it to .grad (mlp_gradient_buffer): without it the peak was 8% low
    cfg = ARCHITECTURES[name]
    m = reference.measure(cfg, micro_batch_size=B, seq_len=S, precision="32-true",
                          checkpointing=True, accumulating=True, optimizer="for-loop")
    p = training_memory(cfg, micro_batch_size=B, seq_len=S, precision="32-true", device="cpu",
                        checkpointing="full", optimizer_impl="for-loop")
    assert p.saved_for_backward == pytest.approx(m.saved_for_backward, rel=0.03)
    assert p.tensor_peak == pytest.approx(m.peak_bytes, rel=0.05)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")
@pytest.mark.parametrize("point", [("deepseek-v3", "bf16-mixed", "flash", True),
                                   ("deepseek-v3", "bf16-mixed", "eager", False),
                                   ("bloom", "bf16-mixed", "eager", True),
                                   ("bloom", "bf16-true", "flash", False)],
                         ids=lambda p: "-".join(map(str, p)))
def test_architecture_dropout_saved_within_3_percent(point: tuple[str, str, str, bool]) -> None:
    # MLA and ALiBi send CPU's SDPA to its math kernel, which gets no dropout under CUDA's
    # semantics (was 22-41% high); an MoE's dropout mask on CPU takes the residual's dtype
    name, precision, attention, cuda_semantics = point
    cfg = ARCHITECTURES[name].replace(dropout=0.1)
    m = reference.measure(cfg, micro_batch_size=B, seq_len=S, precision=precision,
                          attention=attention, cuda_semantics=cuda_semantics,
                          accumulating=True, optimizer="for-loop")
    p = training_memory(cfg, micro_batch_size=B, seq_len=S, precision=precision,
                        attention=attention,  # type: ignore[arg-type]
                        device="cpu-cuda-semantics" if cuda_semantics else "cpu",
                        optimizer_impl="for-loop")
    assert p.saved_for_backward == pytest.approx(m.saved_for_backward, rel=0.03)
