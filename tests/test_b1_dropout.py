"""Micro-batch 1 on the math attention paths (issue 17: "The CPU micro-batch-1 dropout case is
exact").

At b = 1 torch's matmul folds a (1, a, s, h) operand into (a, s, h) as a view, where b > 1 needs
a copy; so a v that is a transposed view of the fused q/k/v projection's output is saved as that
whole storage (3 a h per token) instead of its own copy (a h per token). The live tests measure
the reference GPT on CPU (`scaleplan.reference.measure`, storage by storage); the hand
calculations write the bytes out.
"""

from __future__ import annotations

import pytest

from scaleplan.memory.activations import block_saved_terms
from scaleplan.memory.attention_terms import math_attention_terms
from scaleplan.memory.training import saved_for_backward_bytes
from scaleplan.model.config import GPTConfig

BASE = dict(n_layer=1, n_head=4, n_embd=64, vocab_size=256, block_size=64)
GPT2 = GPTConfig(**BASE, dropout=0.1)


def test_gpt2_dropout_b1_fp32_attention_core_by_hand() -> None:
    """The lead's case: CPU, dropout 0.1 (SDPA's math kernel), fp32, b = 1, s = 32, a = 4,
    h = 16, d = 64. The kernel scales q and k into new tensors (T a h 4 = 32 x 64 x 4 = 8192 B
    each); v is a view of c_attn's output, 32 tokens x 192 x 4 B = 24576 B, saved whole; the
    scores, the dropout mask and the dropped probabilities are 4 x 32 x 32 x 4 = 16384 B each.
    The measured module ``transformer.h.0.attn`` saved 90112 B (the lead's measurement):
    8192 + 8192 + 24576 + 3 x 16384 = 90112 (attn_out, T d 4 = 8192 B, is its own term)."""
    t = math_attention_terms(GPT2, 1, 32, precision="32-true", attention="flash",
                             device="cpu", dropout=True)
    assert t == {"q_k_v_copies": 2 * 8192, "qkv": 24576, "attn_scores": 16384,
                 "attn_dropout_mask": 16384, "attn_dropped": 16384}
    assert sum(t.values()) == 90112


def test_gpt2_dropout_b2_unchanged_by_hand() -> None:
    """At b = 2 matmul copies q, k and v: 3 x T a h 4 = 3 x 64 x 64 x 4 B, no qkv storage."""
    t = math_attention_terms(GPT2, 2, 32, precision="32-true", attention="flash",
                             device="cpu", dropout=True)
    assert t["q_k_v_copies"] == 3 * 64 * 64 * 4
    assert "qkv" not in t


def test_b1_exceptions_by_hand() -> None:
    """No qkv view where v is a copy anyway: the math kernel's fp32 cast of a bf16 v, GQA's
    expanded v; eager attention with learned positions saves q, k and v through views of the
    one storage (T 3 a h e, the bytes of three copies); arrays and symbols count as b > 1."""
    bf16 = math_attention_terms(GPT2, 1, 32, precision="bf16-mixed", attention="flash",
                                device="cpu", dropout=True)
    assert bf16["q_k_v_copies"] == 3 * 32 * 64 * 4 and "qkv" not in bf16
    gqa = GPTConfig(**BASE, n_kv_head=2, position="rope", dropout=0.1)
    assert "qkv" not in math_attention_terms(gqa, 1, 32, precision="32-true",
                                             attention="flash", device="cpu", dropout=True)
    eager = math_attention_terms(GPT2, 1, 32, precision="32-true", attention="eager",
                                 device="cpu", dropout=True)
    assert eager["q_k_v_copies"] == 0 and eager["qkv"] == 32 * 3 * 64 * 4


def test_gqa_eager_b1_q_views_qkv_by_hand() -> None:
    """Learned positions, GQA (k = 2 of a = 4 heads, h = 16), eager fp32, b = 1, s = 32: q is a
    view of c_attn's output, T (a + 2k) h 4 = 32 x 128 x 4 = 16384 B; the expanded k and v are
    copies, 2 x T a h 4 = 2 x 8192 B. At b = 2 the three copies, 3 x 64 x 64 x 4 B."""
    gqa = GPTConfig(**BASE, n_kv_head=2)
    one = math_attention_terms(gqa, 1, 32, precision="32-true", attention="eager",
                               device="cpu", dropout=False)
    assert one["q_k_v_copies"] == 2 * 8192 and one["qkv"] == 16384
    two = math_attention_terms(gqa, 2, 32, precision="32-true", attention="eager",
                               device="cpu", dropout=False)
    assert two["q_k_v_copies"] == 3 * 64 * 64 * 4 and "qkv" not in two


def test_qk_norm_b1_counts_qkv_once_by_hand() -> None:
    """With QK-norm (fp32, LayerNorm) the norms already save c_attn's output (T 3 a h 4 =
    24576 B): at b = 1 v adds nothing and only q and k are copied, 2 x 8192 B."""
    cfg = GPTConfig(**BASE, qk_norm="head", position="rope")
    t = block_saved_terms(cfg, 1, 32, precision="32-true", attention="eager",
                          checkpointing="none", device="cpu", dropout=False)
    assert t["qkv"] == 24576 and t["q_k_v_copies"] == 2 * 8192


LIVE = [  # (layout, dropout, precision, attention)
    ({}, 0.1, "32-true", "flash"),
    ({}, 0.1, "32-true", "eager"),
    ({}, 0.1, "bf16-mixed", "flash"),
    ({"position": "rope"}, 0.1, "32-true", "flash"),
    ({"position": "rope"}, 0.0, "32-true", "eager"),
    ({"position": "rope", "rotary_fraction": 0.5}, 0.0, "bf16-mixed", "eager"),
    ({"position": "rope", "n_kv_head": 2}, 0.1, "32-true", "flash"),
    ({"position": "alibi"}, 0.0, "32-true", "flash"),
    ({"n_kv_head": 2}, 0.1, "32-true", "eager"),
    ({"n_kv_head": 2}, 0.0, "bf16-mixed", "eager"),
    ({"qk_norm": "head", "norm": "rmsnorm", "position": "rope"}, 0.1, "32-true", "flash"),
    ({"qk_norm": "full", "norm": "rmsnorm"}, 0.0, "bf16-mixed", "eager"),
    ({"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "bias": False},
     0.1, "32-true", "flash"),
]


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize(("layout", "dropout", "precision", "attention"), LIVE)
def test_b1_saved_bytes_match_measurement(layout: dict[str, object], dropout: float,
                                          precision: str, attention: str, b: int) -> None:
    """The bytes saved for backward equal the measured ones, exactly, at b = 1 and 2."""
    pytest.importorskip("torch")
    from scaleplan.reference.measure import measure

    cfg = GPTConfig(**BASE, **layout, dropout=dropout)  # type: ignore[arg-type]
    m = measure(cfg, micro_batch_size=b, seq_len=32, precision=precision,
                attention=attention, device="cpu")  # type: ignore[arg-type]
    predicted = saved_for_backward_bytes(cfg, micro_batch_size=b, seq_len=32,
                                         precision=precision, attention=attention,  # type: ignore[arg-type]
                                         device="cpu")
    assert m.saved_for_backward == sum(predicted.values())


GRID_CASES = [  # (config changes, training_memory options) whose b = 1 terms differ from b > 1
    ({"dropout": 0.1}, {"device": "cpu", "precision": "32-true"}),
    ({"dropout": 0.1}, {"implementation": "hf", "device": "cpu", "precision": "32-true"}),
    ({}, {"implementation": "hf", "device": "cpu", "precision": "32-true"}),
    ({"position": "rope", "parallel": "separate_norms"},
     {"implementation": "hf", "device": "cpu", "precision": "32-true", "attention": "eager"}),
    ({"norm": "rmsnorm"}, {"compile": True, "precision": "bf16-mixed"}),
    ({}, {"compile": True, "precision": "bf16-mixed", "checkpointing": "full"}),
]


@pytest.mark.parametrize(("changes", "options"), GRID_CASES)
def test_memory_grid_cells_at_b1_equal_training_memory(changes: dict[str, object],
                                                       options: dict[str, object]) -> None:
    """memory_grid passes b as a float array: its cells at b = 1 take the b = 1 terms too."""
    np = pytest.importorskip("numpy")
    from scaleplan.memory.limits import memory_grid
    from scaleplan.memory.training import training_memory

    cfg = GPTConfig(**{**BASE, "n_layer": 2, **changes})  # type: ignore[arg-type]
    grid = memory_grid(cfg, micro_batch_size=np.array([1, 2, 1]), seq_len=32,
                       **options)  # type: ignore[arg-type]
    one, two = (training_memory(cfg, micro_batch_size=b, seq_len=32,
                                **options).total for b in (1, 2))  # type: ignore[arg-type]
    assert grid.tolist() == [one, two, one]


def test_compiled_position_output_per_cell() -> None:
    """Learned positions under full checkpointing keep the position embedding's output, s d r
    = 32 x 64 x 4 B, at b > 1 only (tests/data/compiled_terms_golden.json): per array cell."""
    np = pytest.importorskip("numpy")
    from scaleplan.memory.compiled_terms import compiled_embedding_saved_terms

    t = compiled_embedding_saved_terms(GPTConfig(**BASE), np.array([1.0, 2.0]), 32,
                                       precision="bf16-mixed", dropout=False,
                                       checkpointing="full")
    assert t["position_output"].tolist() == [0, 32 * 64 * 4]
