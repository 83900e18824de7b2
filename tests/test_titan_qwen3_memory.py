"""torchtitan's Qwen3 (QK-norm, cos/sin RoPE, given head_dim) against hand calculations and
torchtitan's own model on CPU.

Hand calculations: the terms of `scaleplan.memory.titan_qwen3_terms` for a small Qwen3 shape
(b=2, s=128, d=96, 4 heads of 32 (128 wide, not 96), 2 KV heads, MLP 192, vocabulary 256),
written out. Replay: docs/validation/torchtitan-qwen3-memory.json, written by
``python -m scaleplan.reference.titan_qwen3_measure --write`` (torchtitan 0.3.0's ``Qwen3Model``
built with these widths, bf16 parameters as FSDP2 gathers them; one process with FlexAttention
and SDPA, and rank 0 of a fake TP 2 group, sequence parallel or not; no checkpointing and its
FullAC), compared without torch. Live: one measurement, marked ``torch``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_qwen3_terms import (
    cos_sin_rope_bytes,
    qk_norm_bytes,
    qwen3_block_extras,
)
from scaleplan.memory.titan_sdpa_terms import titan_sdpa_saved_terms
from scaleplan.memory.titan_terms import (
    titan_block_terms,
    titan_fsdp_in_flight,
    titan_saved_terms,
)
from scaleplan.memory.titan_tp_terms import titan_tp_block_terms, titan_tp_saved_terms
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

JSON_PATH = (Path(__file__).resolve().parent.parent
             / "docs/validation/torchtitan-qwen3-memory.json")
QWEN3 = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, head_dim=32, n_embd=96, mlp_hidden=192,
                  vocab_size=256, block_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
                  position="rope", qk_norm="head", tie_embeddings=False)
B, S = 2, 128
T = B * S  # 256 tokens
# eager flex_attention's 0-dim example values on CPU (tests/test_titan_memory.py)
FLEX_EAGER_SCALARS = 4 * 4 + 2 * 2


def test_qk_norm_by_hand_cpu_and_cuda() -> None:
    # CPU: per head and token an fp32 upcast and fp32 x * rstd of 32, and an fp32 rstd
    assert qk_norm_bytes(QWEN3, B, S, e=2, device="cpu") == 256 * (4 + 2) * (32 * 4 * 2 + 4)
    # CUDA's fused kernel: the bf16 input and the fp32 rstd
    assert qk_norm_bytes(QWEN3, B, S, e=2, device="cuda") == 256 * 6 * (32 * 2 + 4)
    # TP 2: 2 query heads and 1 KV head on rank 0
    assert qk_norm_bytes(QWEN3, B, S, e=2, device="cpu", tensor=2) == 256 * 3 * (32 * 8 + 4)


def test_cos_sin_rope_keeps_fp32_cos_and_sin_rows() -> None:
    assert cos_sin_rope_bytes(QWEN3, B, S) == 256 * 64 * 4  # cos and sin, 32 each, fp32


def test_block_terms_add_qk_norm_and_replace_the_rope_table() -> None:
    t = titan_block_terms(QWEN3, B, S, e=2, device="cpu", checkpointing="none")
    assert t["qk_norm"] == 399360 and t["rope_table"] == 65536
    # q 4 x 32 = 128 wide (not n_embd 96), k and v 2 x 32, output 128, FlexAttention's two
    # fp32 statistics (b, 4, s)
    assert t["attention"] == 256 * (128 + 64 + 64 + 128) * 2 + 2 * 2 * 4 * 128 * 4
    assert titan_block_terms(QWEN3, B, S, e=2, device="cpu", checkpointing="full") == {
        "block_input": 256 * 96 * 2}
    tp = titan_tp_block_terms(QWEN3, B, S, e=2, device="cuda", checkpointing="none", tensor=2)
    assert tp["qk_norm"] == qwen3_block_extras(QWEN3, B, S, e=2, device="cuda",
                                               tensor=2)["qk_norm"] == 256 * 3 * 68


def test_fsdp_gathers_the_qk_norm_weights() -> None:
    llama = QWEN3.replace(qk_norm="none", head_dim=24)  # 4 x 24 = 96 = n_embd
    # wqkv 96 x (4 + 2 + 2) x 32, wo 128 x 96, the MLP, two norms of 96, q/k norms 2 x 32
    block = 96 * 8 * 32 + 128 * 96 + 3 * 96 * 192 + 2 * 96 + 2 * 32
    got = titan_fsdp_in_flight(QWEN3, "32-true", data=2)
    assert got["recompute"] == 2 * block * 4 + block * 4
    assert titan_fsdp_in_flight(llama, "32-true", data=2) != got


def _rows() -> list[dict[str, Any]]:
    return list(json.loads(JSON_PATH.read_text())["rows"])


def _predicted(row: dict[str, Any]) -> int:
    cfg, ck = GPTConfig(**row["config"]), row["checkpointing"]
    b, s = row["micro_batch_size"], row["seq_len"]
    if row["tensor"] > 1:
        terms = titan_tp_saved_terms(cfg, b, s, precision="bf16-mixed", checkpointing=ck,
                                     device="cpu", layers=cfg.n_layer, tensor=row["tensor"],
                                     sequence_parallel=row["sequence_parallel"])
    else:
        saved = titan_saved_terms if row["attn_backend"] == "flex" else titan_sdpa_saved_terms
        terms = saved(cfg, b, s, precision="bf16-mixed", checkpointing=ck, device="cpu",
                      layers=cfg.n_layer)
    return int(sum(terms.values()))


def test_replay_every_measured_case_exactly() -> None:
    rows = _rows()
    assert len(rows) == 8
    for row in rows:
        scalars = FLEX_EAGER_SCALARS * row["config"]["n_layer"]
        extra = scalars if row["attn_backend"] == "flex" else 0
        assert _predicted(row) + extra == row["saved_for_backward"], row


def test_replay_qk_norm_modules_by_hand() -> None:
    for row in _rows():
        t = row["tensor"]
        heads_q, heads_k = 4 // t, 2 // t
        by = row["saved_by_module"]
        if row["checkpointing"] == "none":
            assert by["layers.0.attention.q_norm"] == 256 * heads_q * (32 * 8 + 4)
            assert by["layers.0.attention.k_norm"] == 256 * heads_k * (32 * 8 + 4)
            assert by["layers.0.attention.rope"] == 256 * 64 * 4


def test_qwen3_is_modelled_eager_and_refused_where_unmeasured() -> None:
    tp = Parallelism(data=2, fsdp="full_shard", tensor=2, sequence_parallel=True)
    m = training_memory(QWEN3, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=tp, checkpointing="full")
    # 2 layers x the rank's 2 x 64 positions x 96 x bf16
    assert m.saved_breakdown["block.block_input"] == 2 * (2 * 64) * 96 * 2
    with pytest.raises(ScaleplanError, match=r"qk_norm='head'.*checkpointing='selective'"):
        training_memory(QWEN3, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=Parallelism(data=2, fsdp="full_shard"),
                        checkpointing="selective")
    with pytest.raises(ScaleplanError, match=r"qk_norm='head'.*compile=True"):
        training_memory(QWEN3, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=Parallelism(data=2, fsdp="full_shard"), compile=True)
    with pytest.raises(ScaleplanError, match="head_dim=32"):
        training_memory(QWEN3.replace(qk_norm="none"), micro_batch_size=B, seq_len=S,
                        implementation="torchtitan",
                        parallelism=Parallelism(data=2, fsdp="full_shard"))


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # spmd_types calls deprecated c10d APIs
def test_live_measurement_matches_at_tp2() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_tp_measure import measure_titan_tp

    m = measure_titan_tp(QWEN3, tensor=2, micro_batch_size=B, seq_len=S, checkpointing="none")
    terms = titan_tp_saved_terms(QWEN3, B, S, precision="bf16-mixed", checkpointing="none",
                                 device="cpu", layers=2, tensor=2)
    assert m.saved_for_backward == sum(terms.values()) + 2 * FLEX_EAGER_SCALARS


def test_qk_norm_on_an_uneven_split_takes_rank_zeros_ceil() -> None:
    cfg = QWEN3.replace(n_head=6, n_kv_head=3)  # TP 2: 3 query heads, 2 of 3 KV heads
    assert qk_norm_bytes(cfg, 1, 8, e=2, device="cuda", tensor=2) == 8 * (3 + 2) * (32 * 2 + 4)
