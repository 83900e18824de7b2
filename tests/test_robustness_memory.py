"""Regression tests for issue 20 ("Robustness round 2"), the memory, FLOPs and symbolic part.

One test per defect, each named after it and quoting it. Expected values are worked out by hand
in the tests (for a model small enough to count every tensor), never copied from the code.

The hand-counted model (``_tiny``): n_head=1, n_embd=d=4, vocab_size=V=8, no biases, GELU MLP
(hidden f=16), tied head, trained in ``32-true`` with plain SGD on ``device="cpu"`` (no CUDA
context, no allocator slack, no optimizer state or temporaries). Its parameters are
wte 8x4=32, (learned positions) wpe block_size x 4, and per block ln_1 4 + c_attn 12x4=48 +
c_proj 4x4=16 + ln_2 4 + c_fc 16x4=64 + mlp c_proj 4x16=64 = 200, plus ln_f 4. Weights and
gradients are 4 bytes each per parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import pytest
from timing import within

from scaleplan.compute.flops import StepFlops, step_flops
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.memory.limits import (
    available_memory_bytes,
    max_micro_batch_size,
    max_seq_len,
    memory_grid,
)
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.published import korthikanti_activation_bytes, megatron_model_state_bytes
from scaleplan.memory.states import param_shapes
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

T = TypeVar("T")

# 32-bit weights and gradients, no optimizer state, no overhead: every byte counted by hand.
HAND = dict(precision="32-true", optimizer="sgd", device="cpu")


def _tiny(**changes: Any) -> GPTConfig:
    return GPTConfig(**{"n_layer": 1, "n_head": 1, "n_embd": 4, "vocab_size": 8,
                        "block_size": 2, "bias": False, **changes})


def _timed(fn: Callable[[], T], seconds: float) -> T:
    with within(seconds):
        return fn()


def test_training_memory_is_closed_form_in_n_layer() -> None:
    # Defect 1: "`training_memory` is linear in `n_layer` (10^7 layers: 17 s; 10^9: MemoryError;
    # 10^20: OverflowError) ... `training_memory(GPTConfig(n_layer=10**7, ...))` must take
    # milliseconds; 10**20 layers either a number ... or a clear ScaleplanError".
    #
    # By hand, at micro_batch_size=1, seq_len=2 (T=2 tokens), block_size=2:
    #   weights + gradients = 8 bytes x (44 + 200 L) parameters          = 352 + 1600 L
    #   saved per block: norm inputs 2 x T d 4 = 64, LayerNorm mean/rstd 2 x 2 T 4 = 32 (CPU
    #     keeps them in the input dtype), qkv input T d 4 = 32, q/k/v T 3d 4 = 96, log-sum-exp
    #     b a s 4 = 8, attention output T d 4 = 32, MLP input 32, GELU in/out 2 T f 4 = 256
    #                                                                   = 552 per block
    #   embedding: token ids b s 8 = 16, position ids s 8 = 16          = 32
    #   head: final norm 32 + 16, lm_head input 32, fp32 log-softmax T V 4 = 64, targets
    #     T 8 + 4 = 20                                                   = 164
    #   worst moment (backward start): saved + log-softmax grad and logits grad 2 T V 4 = 128,
    #   plus the held logits T V 4 = 64
    #   total = 352 + 1600 L + 552 L + 32 + 164 + 128 + 64 = 740 + 2152 L
    def total(n_layer: int) -> int:
        return training_memory(_tiny(n_layer=n_layer), micro_batch_size=1, seq_len=2,
                               **HAND).total  # type: ignore[arg-type]

    assert total(1) == 740 + 2152
    with within(1.0):  # took 17 s when the layers were listed one by one
        assert total(10**7) == 740 + 2152 * 10**7
        assert total(10**9) == 740 + 2152 * 10**9  # MemoryError
        assert total(10**20) == 740 + 2152 * 10**20  # OverflowError; Python ints are exact
    # On CUDA the slack is rounded in exact arithmetic past float64's integers: still a number
    big = training_memory(_tiny(n_layer=10**20), micro_batch_size=1, seq_len=2)
    assert big.total > 10**20 and big.total == big.tensor_peak + big.overhead


def test_tensor_parallel_divisor_hint_is_bounded() -> None:
    # Defect 2: "The tensor-parallel divisor hint loops over `range(n_head)` (n_head can be
    # 10**18): compute the valid divisors in bounded time".
    cfg = GPTConfig(n_layer=1, n_head=10**18, n_embd=10**18, vocab_size=8, block_size=2)
    # 10^18 = 2^18 5^18: its smallest divisors are 1, 2, 4, 5, 8, 10, 16, 20; 7 is not one.
    with within(1.0), pytest.raises(
            ScaleplanError, match=r"^tensor=7 does not divide n_head=1000000000000000000 .*"
                                  r"\(1, 2, 4, 5, 8, 10, 16, 20, \.\.\., 500000000000000000, "
                                  r"1000000000000000000\)"):
        training_memory(cfg, micro_batch_size=1, seq_len=1, parallelism=Parallelism(tensor=7))


def test_max_micro_batch_size_and_max_seq_len_are_not_capped_at_2_24() -> None:
    # Defect 3: "`max_micro_batch_size` / `max_seq_len` stop at 2^24 (MAX_SEARCH in
    # memory/limits.py) although larger values fit".
    #
    # micro-batch: the hand-counted model at seq_len=2 needs, for b sequences (see the test
    # above, everything but the weights, position ids and the targets' scalar grows with b):
    #   8 x 244 weights and gradients + 16 position ids + 4 loss scalar = 1972 bytes, plus
    #   920 b (token ids 16, block 552, head 160, loss gradients 128, held logits 64).
    cfg = _tiny()
    budget = 1972 + 920 * 2**30
    with within(5.0):
        assert max_micro_batch_size(cfg, budget, seq_len=2, **HAND) == 2**30
        assert max_micro_batch_size(cfg, budget - 1, seq_len=2, **HAND) == 2**30 - 1
    # sequence length, RoPE (no position table to bound it), block_size=4, b=1: parameters
    # 32 + 200 + 4 = 236 (8 bytes each: 1888), RoPE's cos/sin tables 2 x 4 x 4 x 4 = 128, the
    # loss scalar 4: 2020 bytes; per token 492: token ids 8, block 276 + rotated q, k 32, head
    # 80, loss gradients 64, held logits 32.
    rope = _tiny(position="rope", block_size=4)
    assert training_memory(rope, micro_batch_size=1, seq_len=9,  # type: ignore[arg-type]
                           **HAND).total == 2020 + 492 * 9
    with within(5.0):
        assert max_seq_len(rope, 2020 + 492 * 2**30 + 491, micro_batch_size=1,
                           **HAND) == 2**30


def test_memory_limits_refuse_bad_budgets_and_headroom() -> None:
    # Defect 4: "`max_micro_batch_size(cfg, 10**400, ...)` (a huge byte budget) overflows;
    # `max_micro_batch_size(headroom="0.1" | None)`; a numpy-int or float byte size taken for a
    # GPU (numpy int -> converted, float -> refused ... with a clear error)."
    cfg = _tiny()
    with pytest.raises(ScaleplanError, match=r"^gpu=1000.*beyond any real run"):
        max_micro_batch_size(cfg, 10**400, seq_len=2)
    for headroom in ("0.1", None):
        with pytest.raises(ScaleplanError, match=rf"^headroom={headroom!r} must be a fraction "
                                                 r"in \[0, 1\)"):
            max_micro_batch_size(cfg, 2**30, seq_len=2, headroom=headroom)  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"^gpu=80000000000\.0 must be a GPU name, a "
                                             r"GPUSpec or a size in bytes \(an int"):
        max_micro_batch_size(cfg, 8e10, seq_len=2)  # type: ignore[arg-type]
    # a numpy int is bytes: 1972 + 920 x 5 fits 5 sequences and not 6 (see the test above)
    assert available_memory_bytes(np.int8(100)) == 100  # type: ignore[arg-type]
    assert type(available_memory_bytes(np.int64(2**40))) is int  # type: ignore[arg-type]
    assert max_micro_batch_size(cfg, np.int64(1972 + 920 * 5), seq_len=2,  # type: ignore[arg-type]
                                **HAND) == 5
    # a Decimal fraction is a fraction: floor(6572 x 0.5) = 3286 bytes hold b = 1 (2892), not 2
    assert max_micro_batch_size(cfg, 1972 + 920 * 5, seq_len=2, headroom=Decimal("0.5"),  # type: ignore[arg-type]
                                **HAND) == 1


def test_memory_grid_rounds_as_training_memory_under_tensor_parallelism() -> None:
    # Defect 5: "`memory_grid` and `training_memory` round differently under tensor parallelism
    # (half a byte) ... test that every grid cell equals training_memory for the same arguments
    # with tensor parallel > 1."
    # Odd sizes make the per-rank shares fractional: n_embd=12 over 4 heads of 3, vocab 11.
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=12, vocab_size=11, block_size=64)
    b, s = np.arange(1, 6), np.array([1, 3, 7, 33])
    for par in (Parallelism(tensor=2), Parallelism(tensor=4, sequence_parallel=True),
                Parallelism(tensor=4, pipeline=2, data=2, zero=1)):
        for options in (dict(precision="32-true", attention="eager"), dict(device="cpu"),
                        dict(checkpointing="full", precision="bf16-mixed")):
            grid = memory_grid(cfg, micro_batch_size=b[:, None], seq_len=s[None, :],
                               parallelism=par, **options)  # type: ignore[arg-type]
            for i, bi in enumerate(b):
                for j, sj in enumerate(s):
                    one = training_memory(cfg, micro_batch_size=int(bi), seq_len=int(sj),
                                          parallelism=par, **options)  # type: ignore[arg-type]
                    assert grid[i, j] == one.total, (par, options, bi, sj)


def test_optimizer_impl_is_validated() -> None:
    # Defect 6: "`optimizer_impl="fuse"` or `42` accepted silently: validate against the
    # OptimizerImpl literal ... (UnknownNameError listing valid names)."
    cfg = _tiny()
    for impl, shown in (("fuse", "'fuse'"), (42, "42")):
        for call in (training_memory, memory_grid):
            with pytest.raises(UnknownNameError, match=rf"^unknown optimizer_impl {shown}.*"
                                                       r"\(valid: foreach, fused, for-loop\)$"):
                call(cfg, micro_batch_size=1, seq_len=2, optimizer_impl=impl)  # type: ignore[operator]
    # The implementations differ where the optimizer step is the worst moment: a wide model
    # (n_embd=64, bias-free, 8 tokens of vocabulary) on 1 token. Its parameters: wte 8 x 64 =
    # 512, wpe 64, a block of ln 64 + c_attn 192 x 64 = 12,288 + c_proj 4,096 + ln 64 + c_fc
    # 16,384 + c_proj 16,384 = 49,280, ln_f 64: n = 49,920. foreach materialises sqrt(v) for
    # all of them (4 n bytes = 199,680); the for-loop twice the largest tensor (2 x 16,384 x 4
    # = 131,072); fused nothing, so its worst moment is another one.
    wide = GPTConfig(n_layer=1, n_head=1, n_embd=64, vocab_size=8, block_size=1, bias=False)

    def step(impl: str) -> Any:
        return training_memory(wide, micro_batch_size=1, seq_len=1, precision="32-true",
                               device="cpu", optimizer_impl=impl)  # type: ignore[arg-type]

    foreach, loop, fused = step("foreach"), step("For_Loop"), step("fused")
    assert foreach.peak_moment == loop.peak_moment == "optimizer_step"
    assert foreach.tensor_peak - loop.tensor_peak == 199_680 - 131_072
    assert fused.peak_moment != "optimizer_step"
    assert step("for-loop") == loop  # the alias is the same implementation


def test_training_memory_refuses_lists_and_wrong_types_for_sizes() -> None:
    # Defect 7: "`training_memory(seq_len=[768])` and other list/wrong-typed numeric args: clear
    # error naming the argument".
    cfg = _tiny()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"seq_len": [2]}, r"^seq_len=\[2\] must be an int >= 1$"),
        ({"seq_len": "2"}, r"^seq_len='2' must be an int >= 1$"),
        ({"seq_len": 2.0}, r"^seq_len=2\.0 must be an int >= 1$"),
        ({"seq_len": np.array([2])}, r"^seq_len=array\(\[2\]\) must be an int >= 1$"),
        ({"micro_batch_size": [1]}, r"^micro_batch_size=\[1\] must be an int >= 1$"),
        ({"cuda_context_bytes": [0]}, r"^cuda_context_bytes=\[0\] must be a whole number"),
        ({"allocator_slack_fraction": "0.05"}, r"^allocator_slack_fraction='0\.05' must be a "
                                               r"finite number"),
    ]
    for kwargs, message in bad:
        args = {"micro_batch_size": 1, "seq_len": 2, **kwargs}
        with pytest.raises(ScaleplanError, match=message):
            training_memory(cfg, **args)
    # numpy ints are ints: np.int8(2) tokens is the hand count's 2892 bytes
    assert training_memory(cfg, micro_batch_size=np.int8(1), seq_len=np.int8(2),  # type: ignore[arg-type]
                           **HAND).total == 2892  # type: ignore[arg-type]


def test_step_flops_parts_sum_check_tolerates_float_rounding() -> None:
    # Defect 8: "`step_flops(GPTConfig.preset("gpt2-xl"), micro_batch_size=349871, seq_len=987,
    # causal=False)` is refused by the internal "parts must sum" check (float rounding)".
    # By hand (PaLM App. B, non-causal): 6 N + 12 L H Q s per token, N the matmul weights:
    # gpt2-xl has L=48, d=1600, H=25, Q=64, V=50257, so N = 48 x 12 x 1600^2 + 1600 x 50257
    # = 1,554,971,200 and per token 9,329,827,200 + 12 x 48 x 1600 x 987 = 10,239,446,400.
    tokens = 349871 * 987
    s = step_flops(GPTConfig.preset("gpt2-xl"), micro_batch_size=349871, seq_len=987,
                   causal=False)
    assert s.total == float(10_239_446_400 * tokens)
    # the check still refuses parts that do not sum
    wrong = s.model_dump()
    wrong["mlp"] *= 1.001
    with pytest.raises(ValueError, match="parts must sum to forward"):
        StepFlops(**wrong)


def test_solve_for_converts_numpy_ints_and_decimals() -> None:
    # Defect 9: "`solve_for(params=np.int8(100))` — numpy small ints kept unconverted (np.int8
    # arithmetic wraps around): convert at the boundary in symbolic/solve.py; same for Decimal."
    pytest.importorskip("sympy")
    from scaleplan.symbolic.solve import solve_for

    # One block of width d with biases and a 64-position table: wte 8d + wpe 64d + block
    # 12 d^2 + 13 d + ln_f 2d = 12 d^2 + 87 d: 99 at d=1, 222 at d=2; 100 is nearest d=1.
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=4, vocab_size=8, block_size=64)
    s = solve_for(cfg, "n_embd", params=np.int8(100))  # type: ignore[arg-type]
    assert (s.value, s.achieved) == (1, 99)
    # GPT-2 small: 7,087,872 L + 39,385,344 parameters; 1e9 lies between L=135 (996,248,064)
    # and L=136 (1,003,335,936), nearer the latter.
    gpt2 = GPTConfig.preset("gpt2")
    s = solve_for(gpt2, "n_layer", params=Decimal("1e9"))  # type: ignore[arg-type]
    assert (s.value, s.achieved) == (136, 1_003_335_936)
    # run sizes too (np.int8(100) times anything wraps in int8): the hand-counted RoPE model
    # needs 2020 + 492 b s bytes (test_max_micro_batch_size_and_max_seq_len_are_not_capped_at
    # _2_24), so at s=100 a budget of 2020 + 49,200 x 7 + 100 holds b=7.
    rope = _tiny(position="rope", block_size=4)
    a = solve_for(rope, "micro_batch_size", memory_bytes=2020 + 49_200 * 7 + 100,
                  seq_len=np.int8(100), **HAND)  # type: ignore[arg-type]
    assert (a.value, a.achieved) == (7, 2020 + 49_200 * 7) and type(a.value) is int
    with pytest.raises(ScaleplanError, match=r"^params=10000.*must be a finite number"):
        solve_for(gpt2, "n_layer", params=10**400)
    with pytest.raises(ScaleplanError, match=r"^params='1e9' must be a finite number"):
        solve_for(gpt2, "n_layer", params="1e9")  # type: ignore[arg-type]


def test_solve_for_searches_are_bounded() -> None:
    # Defect 1 (continued): "Check `scaleplan.symbolic.solve_for` too (e.g. solve_for(...,
    # n_layer huge) and loops there)". n_kv_head must divide n_head=10^5; the exact solution
    # (about 2 x 10^6) lies past it, and the search built 100,000 invalid configs (100 s).
    pytest.importorskip("sympy")
    from scaleplan.symbolic.solve import solve_for

    cfg = GPTConfig(n_layer=2, n_head=10**5, n_embd=10**5, vocab_size=16, block_size=8)
    with within(10.0):
        assert solve_for(cfg, "n_kv_head", params=1e12).value == 10**5  # the largest divisor
        # n_embd must be a multiple of n_head=10^5: 12 L d^2 + ... ~ 24 d^2 = 1e12 near 2 x 10^5
        assert solve_for(cfg, "n_embd", params=1e12).value == 2 * 10**5
        huge = cfg.replace(n_layer=10**20, n_head=2, n_embd=8)
        assert solve_for(huge, "micro_batch_size", memory_bytes=1e30,
                         seq_len=8).value > 1


def test_cuda_context_bytes_refuses_absurd_sizes() -> None:
    # Defect 10: "`plan(..., cuda_context_bytes=10**400)` overflow ... make training_memory
    # refuse absurd byte counts / ints that overflow float with a clear error".
    cfg = _tiny()
    for absurd in (10**400, 2**53 + 1):
        with pytest.raises(ScaleplanError, match=r"^cuda_context_bytes=\d.* is beyond any real "
                                                 r"run; give at most 9,007,199,254,740,992"):
            training_memory(cfg, micro_batch_size=1, seq_len=2, cuda_context_bytes=absurd)
    # a numpy int is bytes: the hand count's 2892-byte peak (CUDA's fp32 LayerNorm statistics
    # are the same 4 bytes here) + 1000 + ceil(0.05 x 2892) = 145 bytes of slack
    m = training_memory(cfg, micro_batch_size=1, seq_len=2, precision="32-true", optimizer="sgd",
                        device="cuda", cuda_context_bytes=np.int64(1000))  # type: ignore[arg-type]
    assert (m.tensor_peak, m.total) == (2892, 2892 + 1000 + 145)


def test_huge_sizes_inside_memory_give_clear_errors() -> None:
    # "Also look for other overflows from huge ints inside memory/ (e.g. float(10**400) in a
    # ratio) and convert them to clear errors."
    with pytest.raises(ScaleplanError, match=r"^memory_grid\(.*overflows a 64-bit float"):
        memory_grid(_tiny(n_layer=10**400), micro_batch_size=[1], seq_len=[2])
    # 8-bit AdamW's absmax blocks were ceil(numel / 2048) in float: exact integers now.
    # n_embd=2^400 blocks of 2048 elements: the count is exact, so the state is a number
    wide = GPTConfig(n_layer=1, n_head=1, n_embd=2**400, vocab_size=8, position="rope")
    assert training_memory(wide, micro_batch_size=1, seq_len=1,
                           optimizer="adamw-8bit").optimizer > 2**800
    with pytest.raises(ScaleplanError, match=r"^korthikanti_activation_bytes overflows"):
        korthikanti_activation_bytes(s=10**400, b=1, h=8, a=1, L=1)
    with pytest.raises(ScaleplanError, match=r"^megatron_model_state_bytes overflows"):
        megatron_model_state_bytes(h=10**400, L=1)
    with pytest.raises(ScaleplanError, match=r"^t=0 must be a positive whole number"):
        megatron_model_state_bytes(h=8, L=1, t=0)
    with pytest.raises(ScaleplanError, match=r"^s='1' must be a whole number"):
        korthikanti_activation_bytes(s="1", b=1, h=8, a=1, L=1)  # type: ignore[arg-type]
    # np.int8 sizes are converted, not wrapped: 34 s b h + 5 a s^2 b at s=b=h=100, a=1, L=1
    assert korthikanti_activation_bytes(s=np.int8(100), b=np.int8(100), h=np.int8(100),  # type: ignore[arg-type]
                                        a=1, L=1) == 34 * 100**3 + 5 * 100**3
    start = time.perf_counter()
    # 6 tensors per bias-free block (ln_1, c_attn, c_proj, ln_2, c_fc, c_proj), wte, wpe, ln_f
    with pytest.raises(ScaleplanError, match=r"^param_shapes would list 6,000,000,003 tensors"):
        param_shapes(_tiny(n_layer=10**9))  # ran out of memory building the list
    assert time.perf_counter() - start < 1.0


def test_optimizer_impl_is_a_name_not_any_object_that_prints_one() -> None:
    # An object is not taken by what str() makes of it: only text names an implementation
    # (42 and True have no name; nor does an object whose __str__ happens to say "fused").
    class Prints:
        def __str__(self) -> str:
            return "fused"

    with pytest.raises(UnknownNameError, match="unknown optimizer_impl"):
        training_memory(_tiny(), micro_batch_size=1, seq_len=2,
                        optimizer_impl=Prints())  # type: ignore[arg-type]
