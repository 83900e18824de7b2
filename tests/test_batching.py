"""Gradient-accumulation arithmetic: exact answers, and errors that offer both exact neighbours."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaleplan.errors import ScaleplanError
from scaleplan.planning.batching import grad_accum_steps, micro_batch_sizes


def test_seed_case_step_is_exact() -> None:
    # seed-case.md: ~524k tokens per step at batch_size 16, block 1024:
    # 524,288 / (16 x 1024) = 32; at micro-batch 8 it is 64, at 4 it is 128.
    assert grad_accum_steps(524_288, 16, 1024) == 32
    assert grad_accum_steps(tokens_per_step=524_288, micro_batch_size=8, seq_len=1024) == 64
    assert grad_accum_steps(524_288, 4, 1024) == 128


def test_world_size_divides_the_accumulation() -> None:
    # nanoGPT train_gpt2.py: 12 x 1024 x 40 accumulation = 491,520 tokens; on 8 GPUs, 5 each.
    assert grad_accum_steps(491_520, 12, 1024, world_size=8) == 5


def test_inexact_step_offers_both_neighbours() -> None:
    # 524,000 / 16,384 = 31.98: 31 steps give 507,904 tokens, 32 give 524,288.
    with pytest.raises(ScaleplanError, match=(
            r"tokens_per_step=524,000 is not a multiple of .* = 16,384: "
            r"grad_accum_steps=31 gives 507,904 tokens or grad_accum_steps=32 gives 524,288")):
        grad_accum_steps(524_000, 16, 1024)


def test_inexact_step_suggests_micro_batches_that_divide() -> None:
    # 491,520 tokens = 480 sequences of 1024; 7 does not divide 480, its neighbours 6 and 8 do.
    with pytest.raises(ScaleplanError, match=r"micro_batch_size in \[6, 8\] divides it exactly"):
        grad_accum_steps(491_520, 7, 1024)


def test_rounding_options() -> None:
    assert grad_accum_steps(524_000, 16, 1024, rounding="down") == 31
    assert grad_accum_steps(524_000, 16, 1024, rounding="up") == 32
    assert grad_accum_steps(524_000, 16, 1024, rounding="nearest") == 32  # 16 away vs 16,096
    assert grad_accum_steps(1000, 16, 1024, rounding="up") == 1
    with pytest.raises(ScaleplanError, match="smaller than one micro-batch on every GPU"):
        grad_accum_steps(1000, 16, 1024, rounding="down")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"micro_batch_size": 0}, "micro_batch_size=0 must be a positive whole number"),
        ({"seq_len": -1}, "seq_len=-1 must be a positive whole number"),
        ({"micro_batch_size": 8.0}, r"micro_batch_size=8.0 must be a whole number"),
        ({"world_size": True}, r"world_size=True must be a whole number"),
        ({"rounding": "sideways"}, r"rounding='sideways' is not one of"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"tokens_per_step": 524_001, "micro_batch_size": 16,
                               "seq_len": 1024, "world_size": 1}
    args.update(kwargs)
    with pytest.raises(ScaleplanError, match=message):
        grad_accum_steps(**args)  # type: ignore[arg-type]


def test_micro_batch_sizes_are_the_divisors() -> None:
    # 524,288 / 1024 = 512 sequences = 2^9: divisors 1, 2, 4, ..., 512.
    assert micro_batch_sizes(524_288, 1024) == [2**k for k in range(10)]
    assert micro_batch_sizes(491_520, 1024) == [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 16, 20, 24, 30,
                                                32, 40, 48, 60, 80, 96, 120, 160, 240, 480]
    assert micro_batch_sizes(1000, 1024) == []
    with pytest.raises(ScaleplanError, match="check the units"):
        micro_batch_sizes(10**18, 1)


@given(st.integers(1, 10**9), st.integers(1, 64), st.integers(1, 4096), st.integers(1, 64))
def test_rounded_steps_bracket_the_request(tokens: int, mb: int, seq: int, ws: int) -> None:
    chunk = mb * seq * ws
    up = grad_accum_steps(tokens, mb, seq, ws, rounding="up")
    assert (up - 1) * chunk < tokens <= up * chunk
    nearest = grad_accum_steps(tokens, mb, seq, ws, rounding="nearest")
    assert nearest in (up, up - 1) and nearest >= 1
    if tokens % chunk == 0:
        assert grad_accum_steps(tokens, mb, seq, ws) * chunk == tokens
