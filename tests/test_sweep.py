"""sweep(): every record equals the scalar functions for its config, and fits means fits."""

from __future__ import annotations

import numpy as np
import pytest

from scaleplan.compute.flops import flops_per_token
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.memory.limits import available_memory_bytes
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.planning.sweeps import sweep


def test_records_equal_the_scalar_functions() -> None:
    r = sweep(n_layer=[2, 12], n_embd=[128, 768], micro_batch_size=[1, 3, 8, 16],
              seq_len=[256, 1024], gpus=["RTX 4070", "H100 SXM"])
    assert len(r) == 2 * 2 * 4 * 2 * 2
    rng = np.random.default_rng(0)
    for row in r[rng.choice(len(r), size=12, replace=False)]:
        L, d = int(row["n_layer"]), int(row["n_embd"])
        cfg = GPTConfig().replace(n_layer=L, n_embd=d, n_head=d // 64)
        b, s = int(row["micro_batch_size"]), int(row["seq_len"])
        total = training_memory(cfg, micro_batch_size=b, seq_len=s).total
        assert row["memory_bytes"] == total
        assert row["params"] == count_params(cfg).total
        assert row["flops_per_token"] == pytest.approx(flops_per_token(cfg, seq_len=s), rel=1e-12)
        assert row["available_bytes"] == available_memory_bytes(str(row["gpu"]))
        assert bool(row["fits"]) == (total <= row["available_bytes"])


def test_gpt2_shape_on_the_4070_fits_at_8_not_16() -> None:
    # the plan's answer for the seed case's question, from the grid side
    r = sweep(n_layer=[12], n_embd=[768], micro_batch_size=[8, 16], seq_len=[1024],
              gpus=["RTX 4070"])
    assert r["fits"].tolist() == [True, False]


def test_large_values_match_exact_ints() -> None:
    # 96 layers of width 65,536 at micro-batch 4096: ~1e15 bytes; float64 agrees with the
    # exact Python-int total to rounding, and nothing wraps negative.
    cfg = GPTConfig().replace(n_layer=96, n_embd=65_536, n_head=1024)
    r = sweep(n_layer=[96], n_embd=[65_536], micro_batch_size=[4096], seq_len=[1024],
              gpus=["H100 SXM"])
    exact = training_memory(cfg, micro_batch_size=4096, seq_len=1024).total
    assert exact > 2**49 and r["memory_bytes"][0] == pytest.approx(exact, rel=1e-15)
    assert not r["fits"][0]
    assert r["params"][0] == count_params(cfg).total


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_layer": []}, ScaleplanError, "n_layer is empty"),
        ({"micro_batch_size": [0]}, ScaleplanError, r"micro_batch_size holds 0"),
        ({"n_embd": [100]}, ScaleplanError, r"n_embd=100 is not a multiple of head_dim=64"),
        ({"gpus": ["RTX 9999"]}, UnknownNameError, r"unknown GPU 'RTX 9999'"),
        ({"seq_len": [4096]}, ValueError, r"seq_len"),
    ],
)
def test_bad_grids(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    args: dict[str, object] = {"n_layer": [2], "n_embd": [128], "micro_batch_size": [1],
                               "seq_len": [128], "gpus": ["T4"]} | kwargs
    with pytest.raises(error, match=message):
        sweep(**args)  # type: ignore[arg-type]
