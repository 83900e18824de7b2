"""`scaleplan.memory.compiled_first_input`, by hand (torch-free).

What the compiled partition keeps to rebuild the first block's input (learned positions): the
position embedding's output and, for LayerNorm without checkpointing, the first norm's mean,
from a few rows on. Measured with `scaleplan.reference.compiled.measure_compiled` (the
partition's saved bytes less `compiled_saved_terms` before this term, torch 2.13 CPU, fp32):
no dropout, d = 64, 2 layers, s = 32: 0 at b = 1 and 2; 8576, 8704, 8832, 8960 at b = 3-6
(= s d 4 + b s 4); the 512-token steps of tests/data/compiled_step_peaks.json: 18432 at
8 x 64. With dropout 0.1: 0 at b = 2-7 (s = 32), 18432 at 8 x 64, 9216 at 8 x 32 with
block_size 32, 9728 and 10240 at 12 and 16 x 32; but 0 at 8 x 32 with block_size 64 (the turn's
edge: the model is 9216 bytes over there).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from scaleplan.memory.compiled_first_input import REBUILD_MIN_ROWS, first_input_rebuild_terms
from scaleplan.memory.compiled_terms import compiled_embedding_saved_terms
from scaleplan.model.config import GPTConfig

NANO = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=320)


def _terms(b: object, *, rebuilt: bool = False, dropout: bool = False,
           cfg: GPTConfig = NANO, precision: str = "32-true") -> dict[str, object]:
    return first_input_rebuild_terms(cfg, b, 32, precision=precision,  # type: ignore[arg-type]
                                     rebuilt=rebuilt, dropout=dropout)


@pytest.mark.parametrize(("b", "measured"), [(1, 0), (2, 0), (3, 8576), (4, 8704), (5, 8832),
                                             (6, 8960)])
def test_layernorm_rebuilds_the_first_input_from_three_rows(b: int, measured: int) -> None:
    # the position embedding's output s d 4 = 8192 and ln_1's mean b s 4
    terms = _terms(b)
    assert sum(terms.values()) == measured  # type: ignore[arg-type]
    if measured:
        assert terms == {"position_output": 32 * 64 * 4, "norm1_mean": b * 32 * 4}


def test_with_dropout_the_turn_is_later() -> None:
    assert REBUILD_MIN_ROWS == {False: 3, True: 8}
    for b in range(2, 8):
        assert _terms(b, dropout=True) == {}
    assert _terms(8, dropout=True) == {"position_output": 8192, "norm1_mean": 8 * 32 * 4}


def test_a_rebuilt_input_keeps_the_position_output_from_two_rows() -> None:
    # RMSNorm or a checkpointed block rebuilds the input anyway: the position output alone,
    # in the residual dtype (fp32 under autocast too), none at one row (the sum is kept)
    assert _terms(1, rebuilt=True) == {}
    assert _terms(2, rebuilt=True, precision="bf16-mixed") == {"position_output": 32 * 64 * 4}
    assert _terms(2, rebuilt=True, dropout=True) == {"position_output": 8192}


def test_rotary_models_have_no_position_output() -> None:
    assert _terms(8, cfg=NANO.replace(position="rope")) == {}


def test_arrays_and_symbols() -> None:
    b = np.array([1.0, 2.0, 3.0, 8.0])
    terms = _terms(b)
    assert list(terms["position_output"]) == [0, 0, 8192, 8192]  # type: ignore[call-overload]
    assert list(terms["norm1_mean"]) == [0, 0, 3 * 128, 8 * 128]  # type: ignore[call-overload]
    B = sympy.Symbol("b", positive=True, integer=True)
    assert _terms(B) == {"position_output": 8192, "norm1_mean": 128 * B}


def test_the_embedding_terms_take_them() -> None:
    at8 = compiled_embedding_saved_terms(NANO, 8, 64, precision="32-true", dropout=False)
    assert at8 == {"token_ids": 8 * 64 * 8, "position_ids": 64 * 8,
                   "position_output": 64 * 64 * 4, "norm1_mean": 8 * 64 * 4}
    assert at8["position_output"] + at8["norm1_mean"] == 18432  # the measured 512-token gap
    at2 = compiled_embedding_saved_terms(NANO, 2, 64, precision="32-true", dropout=False)
    assert "position_output" not in at2 and "norm1_mean" not in at2
