"""The symbolic forms agree with the numeric functions, and solve_for inverts them correctly.

Two kinds of test live here. The four hypothesis properties (``*_symbolic_equal*_numeric``) are
**plumbing tests**: `scaleplan.symbolic.formulas` runs the very same formula code as the numeric
functions (``param_terms``, ``token_flops``, ``step_flop_terms``, ``stage_parts``) on sympy
symbols, so both sides share every coefficient. They check that the symbols flow through (no
``//``, ``max`` or size-dependent branch), not that a formula is right: a wrong coefficient is
wrong on both sides and passes. The value tests beside them (``test_symbolic_param_count_of_gpt2_
is_the_published_124_439_808``, ``test_symbolic_flops_of_gpt2_are_the_hand_counts``,
``test_symbolic_memory_of_a_gated_gqa_model_is_the_hand_count`` and the hand-count tests after
them) evaluate the symbolic forms against independent numbers: published counts and hand
calculations written out in the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sympy = pytest.importorskip("sympy", reason="scaleplan.symbolic needs sympy (a core dependency)")

from scaleplan.compute.flops import flops_per_token as numeric_flops  # noqa: E402
from scaleplan.compute.flops import step_flops as numeric_step  # noqa: E402
from scaleplan.errors import ScaleplanError, UnknownNameError  # noqa: E402
from scaleplan.memory.training import training_memory  # noqa: E402
from scaleplan.model.config import GPTConfig  # noqa: E402
from scaleplan.model.params import count_params  # noqa: E402
from scaleplan.symbolic.formulas import (  # noqa: E402
    MODEL_FIELDS,
    flops_per_token,
    memory,
    param_count,
    step_flops,
    symbol,
    to_latex,
)
from scaleplan.symbolic.solve import Solution, solve_for  # noqa: E402

GiB = 2**30
# SYMBOLIC_EXAMPLES=200 for a longer search than the default run's.
SETTINGS = settings(max_examples=int(os.environ.get("SYMBOLIC_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw: Any) -> GPTConfig:
    """A random valid config; head_dim, n_kv_head and mlp_hidden sometimes explicit."""
    n_kv = draw(st.integers(1, 3))
    n_head = n_kv * draw(st.integers(1, 3))
    fields: dict[str, Any] = {
        "n_layer": draw(st.integers(1, 6)), "n_head": n_head,
        "n_embd": n_head * draw(st.integers(1, 12)) * 2,
        "block_size": draw(st.integers(8, 64)), "vocab_size": draw(st.integers(5, 300)),
        "bias": draw(st.booleans()), "mlp": draw(st.sampled_from(["gelu", "swiglu", "geglu"])),
        "norm": draw(st.sampled_from(["layernorm", "rmsnorm"])),
        "position": draw(st.sampled_from(["learned", "rope", "none"])),
        "tie_embeddings": draw(st.booleans()),
        "dropout": draw(st.sampled_from([0.0, 0.1])),
    }
    if draw(st.booleans()):
        fields["n_kv_head"] = n_kv
    if draw(st.booleans()):
        fields["head_dim"] = draw(st.integers(1, 16))
    if draw(st.booleans()):
        fields["mlp_hidden"] = draw(st.integers(1, 64))
    return GPTConfig(**fields)


@st.composite
def moved(draw: Any) -> tuple[GPTConfig, tuple[str, ...], GPTConfig]:
    """(base config, free fields, another valid config differing from base in those fields)."""
    base = draw(configs())
    free = tuple(draw(st.sets(st.sampled_from(MODEL_FIELDS), max_size=3)))
    changes = {name: draw(st.integers(1, 8)) * (base.n_head if name == "n_embd" else 1)
               for name in free}
    try:
        point = base.replace(**changes)
    except ValueError:  # e.g. n_head no longer divides n_embd: not a point of the family
        point = base
        free = ()
    return base, free, point


def at(expr: Any, point: GPTConfig, **run: int) -> Any:
    values = {symbol(n): getattr(point, n) for n in MODEL_FIELDS}
    values.update({symbol(n): v for n, v in run.items()})
    return expr.subs(values)


@SETTINGS
@given(moved())
def test_param_count_symbolic_equals_numeric_at_random_points(case: Any) -> None:
    """Plumbing test: symbolic and numeric run the same formula code, so this checks that
    symbols pass through it, not that the formula is right (see the value tests below)."""
    base, free, point = case
    numeric = count_params(point)
    for part in ("total", "attention", "mlp", "norms", "biases", "per_layer", "nanogpt"):
        expr = param_count(base, free=free, part=part)  # type: ignore[arg-type]
        assert at(expr, point) == getattr(numeric, part), part


@SETTINGS
@given(moved(), st.integers(1, 8), st.booleans(),
       st.sampled_from(["none", "selective", "full"]),
       st.sampled_from(["palm", "nanogpt", "kaplan"]))
def test_flops_per_token_symbolic_equals_numeric(case: Any, T: int, causal: bool,
                                                 recompute: Any, method: Any) -> None:
    """Plumbing test: symbolic and numeric run the same formula code, so this checks that
    symbols pass through it, not that the formula is right (see the value tests below)."""
    base, free, point = case
    expr = flops_per_token(base, free=(*free, "seq_len"), causal=causal, recompute=recompute,
                           method=method)
    expected = numeric_flops(point, seq_len=T, causal=causal, recompute=recompute, method=method)
    assert float(at(expr, point, seq_len=T)) == expected


@SETTINGS
@given(moved(), st.integers(1, 4), st.integers(1, 8), st.booleans())
def test_step_flops_symbolic_equals_numeric_for_every_part(case: Any, b: int, s: int,
                                                           causal: bool) -> None:
    """Plumbing test: symbolic and numeric run the same formula code, so this checks that
    symbols pass through it, not that the formula is right (see the value tests below)."""
    base, free, point = case
    numeric = numeric_step(point, micro_batch_size=b, seq_len=s, causal=causal)
    for part in ("qkv", "attention_scores", "attention_values", "attention_out", "mlp",
                 "lm_head", "forward", "backward", "total"):
        expr = step_flops(base, free=(*free, "micro_batch_size", "seq_len"), causal=causal,
                          part=part)  # type: ignore[arg-type]
        assert float(at(expr, point, micro_batch_size=b, seq_len=s)) == getattr(numeric, part)


@SETTINGS  # b >= 2: a free b is taken as b >= 2 (at b = 1 torch keeps views: see memory())
@given(moved(), st.integers(2, 4), st.integers(1, 8),
       st.sampled_from(["32-true", "bf16-mixed", "16-mixed", "bf16-true", "bf16-fp32-master"]),
       st.sampled_from(["adamw", "sgd", "sgd-momentum", "lion", "adafactor"]),
       st.sampled_from(["flash", "eager"]), st.sampled_from(["none", "selective", "full"]),
       st.sampled_from(["cuda", "cpu", "cpu-cuda-semantics"]))
def test_memory_components_symbolic_equal_numeric(case: Any, b: int, s: int, precision: str,
                                                  optimizer: str, attention: Any,
                                                  checkpointing: Any, device: Any) -> None:
    """Plumbing test: symbolic and numeric run the same formula code, so this checks that
    symbols pass through it, not that the formula is right (see the value tests below)."""
    base, free, point = case
    options: dict[str, Any] = dict(precision=precision, optimizer=optimizer, attention=attention,
                                   checkpointing=checkpointing, device=device,
                                   optimizer_impl="foreach")
    s = min(s, point.block_size)
    sym = memory(base, free=(*free, "micro_batch_size", "seq_len"), **options)
    num = training_memory(point, micro_batch_size=b, seq_len=s, **options)
    got = {name: at(expr, point, micro_batch_size=b, seq_len=s)
           for name, expr in sym.components().items()}
    for name, value in got.items():
        assert value == getattr(num, name), name
    assert at(sym.total, point, micro_batch_size=b, seq_len=s) == num.total
    saved = {k: at(v, point, micro_batch_size=b, seq_len=s)
             for k, v in sym.saved_breakdown.items()}
    assert saved == num.saved_breakdown


def test_symbolic_param_count_of_gpt2_is_the_published_124_439_808() -> None:
    # Hugging Face's GPT-2 small (Radford et al. 2019: 12 layers, d_model 768) has 124,439,808
    # parameters; nanoGPT prints 123.65M: the same minus the 1024 x 768 = 786,432 position table.
    values = {symbol("n_layer"): 12, symbol("n_embd"): 768}
    gpt2 = GPTConfig.preset("gpt2")
    assert param_count(gpt2, free=("n_layer", "n_embd")).subs(values) == 124_439_808
    assert param_count(gpt2, free=("n_layer", "n_embd"), part="nanogpt").subs(values) == (
        124_439_808 - 786_432)


def test_symbolic_flops_of_gpt2_are_the_hand_counts() -> None:
    gpt2 = GPTConfig.preset("gpt2")
    # nanoGPT's estimate_mfu: 6 N + 12 L H Q T with N = 123,653,376 (its printed count), T = 1024:
    # 741,920,256 + 12 x 12 x 12 x 64 x 1024 = 741,920,256 + 113,246,208 = 855,166,464
    expr = flops_per_token(gpt2, free=("seq_len",), causal=False, method="nanogpt")
    assert expr.subs(symbol("seq_len"), 1024) == 855_166_464
    # Per micro-batch, in b and s: the head is 2 x (b s) x 768 x 50257 = 77,194,752 b s;
    # the GELU MLP 12 layers x 2 x (b s) x (2 x 768 x 3072) = 113,246,208 b s;
    # causal QK^T 12 layers x 12 heads x 64 x b s^2 (2 s^2 Q halved) = 9216 b s^2
    b, s = symbol("micro_batch_size"), symbol("seq_len")
    assert step_flops(gpt2, part="lm_head") == 77_194_752 * b * s
    assert step_flops(gpt2, part="mlp") == 113_246_208 * b * s
    assert step_flops(gpt2, part="attention_scores") == 9216 * b * s**2


def test_symbolic_memory_of_a_gated_gqa_model_is_the_hand_count() -> None:
    # The model and the numbers of tests/test_gated_gqa_values.py (derived there by hand):
    # one block saves 337,408 bytes at b=2, s=32 in fp32 on CUDA; outside the blocks the
    # token ids 512, RoPE tables 8192, final norm 16,640, head input 16,384, log-softmax 65,536
    # and targets 516 = 107,780.
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=192,
                    norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
                    vocab_size=256, block_size=64)
    mem = memory(cfg, free=("n_layer",), micro_batch_size=2, seq_len=32, precision="32-true")
    L = symbol("n_layer")
    assert sympy.expand(mem.saved_for_backward - (337_408 * L + 107_780)) == 0
    at_2 = mem.subs({"n_layer": 2})
    assert at_2["saved_for_backward"] == 782_596
    assert at_2["weights"] == 525_568  # 131,392 parameters x 4 bytes
    assert at_2["optimizer"] == 1_051_204  # 2 x 131,392 x 4 + 17 tensors x 4-byte step


def test_param_count_of_gpt2_in_n_layer_is_the_hand_count() -> None:
    # Per block at d=768 with biases: attention 4d^2 + 4d, MLP 8d^2 + 5d, two LayerNorms 4d
    # -> 12*768^2 + 13*768 = 7,087,872. Outside: wte 50257*768 + wpe 1024*768 + final norm 2*768.
    L = symbol("n_layer")
    expected = 7_087_872 * L + 50257 * 768 + 1024 * 768 + 2 * 768
    assert param_count(GPTConfig.preset("gpt2"), free=("n_layer",)) == expected


def test_n_embd_free_derives_head_dim_and_mlp_hidden() -> None:
    # GELU, derived head_dim = d/12 and mlp_hidden = 4d: per block 12 d^2 + 13 d exactly.
    d = symbol("n_embd")
    per_layer = param_count(GPTConfig.preset("gpt2"), free=("n_embd",), part="per_layer")
    assert sympy.expand(per_layer - (12 * d**2 + 13 * d)) == 0


def test_solve_n_embd_for_124m_params_is_gpt2_small() -> None:
    # Radford et al. 2019 (GPT-2), Table 2: the smallest model has 12 layers and d_model 768;
    # the Hugging Face checkpoint counts 124,439,808 parameters.
    s = solve_for(GPTConfig.preset("gpt2"), "n_embd", params=124e6)
    assert s.value == 768 and s.achieved == 124_439_808
    assert [n.value for n in s.neighbours] == [756, 768, 780]  # multiples of n_head=12
    assert 756 < s.exact < 780
    assert all(n.quantity == count_params(GPTConfig.preset("gpt2").replace(n_embd=n.value)).total
               for n in s.neighbours)
    assert Solution.model_validate_json(s.model_dump_json()) == s


def test_solve_n_layer_under_a_flops_bound_matches_hand_calculation() -> None:
    # GPT-2 at T=1024, causal: per layer 6 x 7,077,888 matmul weights + 6 x H Q T / ... causal
    # attention 12 L H Q T / 2 = 6 x 768 x 1024 per layer -> 47,185,920 per layer; the head
    # 6 x 768 x 50257 = 231,584,256. L <= (1e9 - 231,584,256) / 47,185,920 = 16.28 -> 16.
    s = solve_for(GPTConfig.preset("gpt2"), "n_layer", flops_per_token=1e9, seq_len=1024)
    assert s.value == 16
    assert s.exact == pytest.approx((1e9 - 231_584_256) / 47_185_920)
    assert s.achieved == 231_584_256 + 16 * 47_185_920


def test_largest_micro_batch_for_12_gib_agrees_with_numeric_search() -> None:
    cfg = GPTConfig.preset("gpt2")
    s = solve_for(cfg, "micro_batch_size", memory_bytes=12 * GiB, seq_len=1024)
    totals = {b: training_memory(cfg, micro_batch_size=b, seq_len=1024).total
              for b in range(1, 20)}
    largest = max(b for b, t in totals.items() if t <= 12 * GiB)
    assert s.value == largest and s.value == int(s.exact)
    assert s.achieved == totals[largest] and totals[largest + 1] > 12 * GiB


def test_largest_micro_batch_is_consistent_with_plans_choice() -> None:
    from scaleplan.compute.hardware import gpu
    from scaleplan.planning.planner import plan

    cfg = GPTConfig.preset("gpt2")
    p = plan(cfg, gpu="RTX 4070", tokens_per_step=524288, precision="bf16-mixed")
    available = gpu("RTX 4070").usable_memory_bytes
    assert available is not None
    s = solve_for(cfg, "micro_batch_size", memory_bytes=available, seq_len=p.seq_len,
                  precision="bf16-mixed")
    # plan() only takes divisors of the step (powers of two here): the largest one <= ours.
    assert p.micro_batch_size <= s.value < 2 * p.micro_batch_size


def test_solve_for_rejects_no_target_and_params_for_run_fields() -> None:
    cfg = GPTConfig.preset("gpt2")
    with pytest.raises(ScaleplanError, match="exactly one target, got none"):
        solve_for(cfg, "n_embd")
    with pytest.raises(ScaleplanError, match="does not change the parameter count"):
        solve_for(cfg, "seq_len", params=1e8)


def test_unknown_free_field_names_the_close_match() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown free field 'n_embed'.*'n_embd'"):
        param_count(GPTConfig.preset("gpt2"), free=("n_embed",))


def test_memory_with_8bit_optimizer_and_free_width_explains_why_not() -> None:
    with pytest.raises(ScaleplanError, match="no closed form in n_embd"):
        memory(GPTConfig.preset("gpt2"), free=("n_embd",), micro_batch_size=1,
               optimizer="adamw-8bit")


def test_to_latex_and_reprs() -> None:
    expr = param_count(GPTConfig.preset("gpt2"), free=("n_layer",))
    assert to_latex(expr) == "7087872 L + 39385344"
    s = solve_for(GPTConfig.preset("gpt2"), "n_layer", params=124e6)
    assert to_latex(s).endswith("L = 12")
    assert "| **12** | 124,439,808 |" in s._repr_markdown_()
    mem = memory(GPTConfig.preset("gpt2"), micro_batch_size=4)
    assert r"\text{weights}" in to_latex(mem)
    with pytest.raises(ScaleplanError, match="to_latex"):
        to_latex(3)


def test_numeric_modules_do_not_import_sympy() -> None:
    code = ("import sys, scaleplan, scaleplan.model.params, scaleplan.compute.flops, "
            "scaleplan.memory.training; "
            "print('sympy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"
