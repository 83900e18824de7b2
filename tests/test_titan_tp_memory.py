"""torchtitan's tensor + sequence parallelism against hand calculations and torchtitan on CPU.

Hand calculations: each term of `scaleplan.memory.titan_tp_terms` for the tiny Llama 3 shape
(b=2, s=128, d=64, 4 heads of 16, 2 KV heads, MLP 192, vocabulary 256) at TP 2, written out.
Replay: docs/validation/torchtitan-tp-memory.json, written by
``python -m scaleplan.reference.titan_tp_measure --write`` (torchtitan 0.3.0's ``Llama3Model``
sharded by its own TP plan for rank 0 of a fake process group, bf16 or fp32 parameters, with
and without its FullAC; and its vocabulary-parallel loss alone), compared without torch.
Live: one measurement, marked ``torch``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_stage import titan_tp_parts
from scaleplan.memory.titan_tp_terms import (
    titan_tp_block_terms,
    titan_tp_fsdp_in_flight,
    titan_tp_local_config,
    titan_tp_loss_transients,
    titan_tp_model_states,
    titan_tp_rebuilt_block_bytes,
    titan_tp_saved_terms,
)
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import param_terms

JSON_PATH = Path(__file__).resolve().parent.parent / "docs/validation/torchtitan-tp-memory.json"
TINY = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192, vocab_size=256,
                 block_size=256, bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                 tie_embeddings=False)
B, S = 2, 128
T = B * S  # 256 tokens; rank 0 of TP 2 holds 128 of them between the blocks' matmuls
TP2 = Parallelism(data=4, fsdp="full_shard", tensor=2, sequence_parallel=True)
BYTES = {"bf16-mixed": 2, "32-true": 4}


def flex_eager_scalars(e: int) -> int:
    """What eager flex_attention on CPU keeps per call and compiled on a GPU does not: the
    0-dim example values it traces score_mod's backward with, four int32 indices and two
    scores in the activation dtype (as tests/test_titan_memory.py's FLEX_EAGER_SCALARS)."""
    return 4 * 4 + 2 * e


def test_block_terms_by_hand_at_tp2_cpu() -> None:
    t = titan_tp_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="none", tensor=2)
    # the norms run on the rank's 128 positions: fp32 upcast, fp32 x * rstd, fp32 rstd
    assert t["attention_norm"] == t["ffn_norm"] == 2 * 128 * 64 * 4 + 128 * 4
    assert t["wqkv_input"] == t["mlp_input"] == 256 * 64 * 2  # all-gathered (b, s, d), bf16
    assert t["rope_table"] == 256 * 8 * 8
    # 2 query heads, 1 KV head of 16: q, k, v, output (bf16) + logsumexp and max (b, 2, s) fp32
    assert t["attention"] == 256 * (32 + 16 + 16 + 32) * 2 + 2 * 2 * 2 * 128 * 4
    assert t["mlp"] == 3 * 256 * 96 * 2 and t["w2_input"] == 256 * 96 * 2


def test_sdpa_kernel_keeps_one_statistic_and_no_block_mask() -> None:
    flex = titan_tp_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="none", tensor=2)
    sdpa = titan_tp_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="none", tensor=2,
                                kernel="sdpa")
    # SDPA's logsumexp alone: the row maximum, (b 2, 2 local heads, s 128) fp32, is gone
    assert flex["attention"] - sdpa["attention"] == 2 * 2 * 128 * 4
    assert {k: v for k, v in flex.items() if k != "attention"} == {
        k: v for k, v in sdpa.items() if k != "attention"}
    saved = titan_tp_saved_terms(TINY, B, S, precision="bf16-mixed", checkpointing="none",
                                 device="cpu", layers=2, tensor=2, kernel="sdpa")
    assert "block_mask" not in saved and "positions" not in saved
    assert saved["block.attention"] == 2 * sdpa["attention"]


def test_block_terms_on_cuda_and_under_full_checkpointing() -> None:
    t = titan_tp_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="none", tensor=2)
    assert t["attention_norm"] == 128 * 64 * 2 + 128 * 4  # fused rms_norm: bf16 x, fp32 rstd
    full = titan_tp_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="full", tensor=2)
    assert full == {"block_input": 128 * 64 * 2}  # the sequence shard
    rebuilt = titan_tp_rebuilt_block_bytes(TINY, B, S, e=2, device="cuda", tensor=2)
    assert rebuilt == sum(t.values()) - 128 * 64 * 2


def test_without_sequence_parallelism_the_norms_and_block_inputs_are_whole() -> None:
    t = titan_tp_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="none", tensor=2,
                             sequence_parallel=False)
    assert t["attention_norm"] == t["ffn_norm"] == 2 * 256 * 64 * 4 + 256 * 4  # all 256
    assert t["mlp"] == 3 * 256 * 96 * 2  # the MLP still splits its hidden width
    full = titan_tp_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="full", tensor=2,
                                sequence_parallel=False)
    assert full == {"block_input": 256 * 64 * 2}
    saved = titan_tp_saved_terms(TINY, B, S, precision="bf16-mixed", checkpointing="full",
                                 device="cpu", layers=2, tensor=2, sequence_parallel=False)
    assert saved["final_norm"] == 2 * 256 * 64 * 4 + 256 * 4
    off, on = (training_memory(TINY, micro_batch_size=B, seq_len=S, device="cuda",
                               implementation="torchtitan", checkpointing="full",
                               parallelism=Parallelism(data=4, fsdp="full_shard", tensor=2,
                                                       sequence_parallel=sp))
               for sp in (False, True))
    # two block inputs and the final norm's (CUDA: bf16 input, fp32 rstd) on 128 more positions
    assert off.saved_for_backward - on.saved_for_backward == (
        2 * 128 * 64 * 2 + 128 * 64 * 2 + 128 * 4)


def test_saved_terms_outside_the_blocks_by_hand() -> None:
    t = titan_tp_saved_terms(TINY, B, S, precision="bf16-mixed", checkpointing="none",
                             device="cpu", layers=2, tensor=2)
    assert t["embedding"] == 256 * 8 + 256 * 2  # clamped local ids, the bf16 in-range mask
    assert t["block_mask"] == 4 * 2 * 1 * 4 + 4 * 2 * 1 * 1 * 4  # one 128-block, int32
    assert t["final_norm"] == 2 * 128 * 64 * 4 + 128 * 4
    assert t["lm_head"] == 256 * 64 * 2
    assert t["log_softmax"] == 256 * 128 * 4  # 128 of 256 classes, fp32
    assert t["targets"] == 256 * 8
    full = titan_tp_saved_terms(TINY, B, S, precision="32-true", checkpointing="full",
                                device="cpu", layers=2, tensor=2)
    assert full["block.block_input"] == 2 * 128 * 64 * 4 and full["positions"] == 256 * 8


def test_uneven_vocabulary_gives_rank_0_the_ceiling() -> None:
    cfg = TINY.replace(vocab_size=250)
    t = titan_tp_saved_terms(cfg, B, S, precision="bf16-mixed", checkpointing="full",
                             device="cpu", layers=2, tensor=4)
    assert t["log_softmax"] == 256 * 63 * 4  # ceil(250 / 4) = 63 classes


def test_loss_transients_by_hand() -> None:
    tv = 256 * 128
    # bf16: logits, their fp32 upcast and the fp32 shifted logits; fp32: no upcast copy
    assert titan_tp_loss_transients(TINY, B, S, precision="bf16-mixed", tensor=2) == (
        tv * (2 + 4 + 4), 3 * tv * 4)
    assert titan_tp_loss_transients(TINY, B, S, precision="32-true", tensor=2) == (
        tv * (4 + 4), 3 * tv * 4)


def test_local_model_states_and_fsdp_by_hand() -> None:
    block = 64 * 64 + 64 * 32 + 3 * 96 * 64 + 2 * 64  # wqkv 4 x 16 rows, wo, w1 w2 w3, norms
    n = 2 * block + 2 * 128 * 64 + 64  # + the embedding's and lm_head's 128 rows, final norm
    assert param_terms(titan_tp_local_config(TINY, 2))["total"] == n
    weights, gradients, optimizer = titan_tp_model_states(TINY, "adamw", data=4, tensor=2)
    assert weights == gradients == -(-n * 4 // 4)
    assert optimizer == -(-(n * 8 + 4 * 17) // 4)  # two fp32 moments, 17 step counters
    assert titan_tp_model_states(TINY, "sgd", data=1, tensor=2)[2] == 0
    gathered = titan_tp_fsdp_in_flight(TINY, "bf16-mixed", data=4, tensor=2)
    assert gathered["forward_end"] == (128 * 64 + 64) * 2  # the local lm_head rows + norm
    assert gathered["recompute"] == 2 * block * 2 + block * (2 + 4)
    assert titan_tp_fsdp_in_flight(TINY, "bf16-mixed", data=1, tensor=2)["recompute"] == 0


def test_training_memory_takes_tensor_parallelism() -> None:
    cfg = TINY.replace(vocab_size=4096)
    m = training_memory(cfg, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=TP2, checkpointing="full", device="cuda",
                        cuda_context_bytes=0, allocator_slack_fraction=0)
    saved = titan_tp_saved_terms(cfg, B, S, precision="bf16-mixed", checkpointing="full",
                                 device="cuda", layers=2, tensor=2)
    assert m.saved_for_backward == sum(saved.values())
    assert m.autocast_weight_copies == 0
    # the worst moment: three fp32 (T, V / 2) buffers of the loss's backward and the gathered
    # lm_head unit (2048 local rows + the final norm, bf16)
    assert m.peak_moment == "backward_start"
    assert m.transient == 3 * 256 * 2048 * 4 + (2048 * 64 + 64) * 2


def test_memory_grid_agrees_with_training_memory_under_tp() -> None:
    np = pytest.importorskip("numpy")
    from scaleplan.memory.limits import memory_grid

    grid = memory_grid(TINY, micro_batch_size=np.array([1, 2]), seq_len=np.array([128, 128]),
                       implementation="torchtitan", parallelism=TP2, checkpointing="full")
    for b, total in zip((1, 2), grid, strict=True):
        m = training_memory(TINY, micro_batch_size=b, seq_len=128, implementation="torchtitan",
                            parallelism=TP2, checkpointing="full")
        assert total == m.total


@pytest.mark.parametrize("kwargs, match", [
    ({"checkpointing": "selective"}, "checkpointing='selective'"),
    ({"parallelism": Parallelism(data=4, fsdp="full_shard", tensor=2, sequence_parallel=True,
                                 pipeline=2)}, "pipeline"),
    ({"compile": True}, "compile=True"),
])
def test_unmeasured_tp_options_refused_by_name(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"parallelism": TP2, **kwargs}
    with pytest.raises(ScaleplanError, match=match):
        training_memory(TINY, micro_batch_size=B, seq_len=S, implementation="torchtitan", **args)


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(JSON_PATH.read_text())["rows"]
    return rows


def _saved(row: dict[str, Any]) -> dict[str, int]:
    cfg = GPTConfig(**row["config"])
    return titan_tp_saved_terms(cfg, row["micro_batch_size"], row["seq_len"],
                                precision=row["precision"], checkpointing=row["checkpointing"],
                                device="cpu", layers=cfg.n_layer, tensor=row["tensor"],
                                sequence_parallel=row["sequence_parallel"])


def test_replay_of_the_cpu_measurements() -> None:
    data = json.loads(JSON_PATH.read_text())
    assert data["torchtitan"] == "0.3.0"
    assert len(data["rows"]) == 16
    assert sum(not row["sequence_parallel"] for row in data["rows"]) == 4
    for row in data["rows"]:
        scalars = flex_eager_scalars(BYTES[row["precision"]]) * row["config"]["n_layer"]
        gap = row["saved_for_backward"] - sum(_saved(row).values())
        assert gap == scalars, (row["shape"], row["tensor"], row["precision"])


def test_replay_by_module() -> None:
    """Layer 1 of each shape (layer 0's FlexAttention also keeps the shared block mask), and
    the modules outside the blocks."""
    for row in _rows():
        cfg = GPTConfig(**row["config"])
        e = BYTES[row["precision"]]
        t = titan_tp_block_terms(cfg, B, S, e=e, device="cpu", checkpointing=row["checkpointing"],
                                 tensor=row["tensor"],
                                 sequence_parallel=row["sequence_parallel"])
        got = {k.removeprefix("layers.1."): v for k, v in row["saved_by_module"].items()
               if k.startswith("layers.1")}
        if row["checkpointing"] == "full":
            assert got == {"layers.1": t["block_input"]}
        else:
            assert got == {"attention_norm": t["attention_norm"], "ffn_norm": t["ffn_norm"],
                           "attention.qkv_linear.wqkv": t["wqkv_input"],
                           "attention.rope": t["rope_table"],
                           "attention.inner_attention": t["attention"],
                           "feed_forward.w1": t["mlp_input"], "feed_forward": t["mlp"],
                           "feed_forward.w2": t["w2_input"]}
        saved, by = _saved(row), row["saved_by_module"]
        assert by["tok_embeddings"] == saved["embedding"]
        assert by["norm"] == saved["final_norm"] and by["lm_head"] == saved["lm_head"]
        assert by["loss"] == saved["log_softmax"] + saved["targets"]


def test_replay_of_the_local_parameter_shapes() -> None:
    for row in _rows():
        cfg, shapes = GPTConfig(**row["config"]), row["parameter_shapes"]
        local = param_terms(titan_tp_local_config(cfg, row["tensor"]))
        numel = {k: _prod(v) for k, v in shapes.items()}
        assert sum(v for k, v in numel.items() if k.startswith("layers.1.")) == local["per_layer"]
        assert sum(numel.values()) == local["total"]


def _prod(shape: list[int]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def test_replay_of_the_vocabulary_parallel_loss() -> None:
    """The loss alone: what it saves (fp32 log-probabilities of the local classes, int64
    targets, the fp32 scalar loss) exactly; its forward and backward peaks within the
    per-token statistics, label indices and masks the formula leaves out (< 64 bytes a
    token)."""
    losses = json.loads(JSON_PATH.read_text())["loss_parallel"]
    assert len(losses) == 6
    for case in losses:
        tokens, vocab, t = case["tokens"], case["vocab_size"], case["tensor"]
        local = -(-vocab // t)
        cfg = TINY.replace(vocab_size=vocab)
        e = BYTES[case["precision"]]
        assert case["logits"] == tokens * local * e
        saved = tokens * local * 4 + tokens * 8
        assert case["saved"] == saved + 4
        fwd, bwd = titan_tp_loss_transients(cfg, 1, tokens, precision=case["precision"],
                                            tensor=t)
        assert 0 <= case["forward_peak"] - (saved + fwd) < 64 * tokens
        assert 0 <= case["backward_peak"] - (saved + bwd) < 64 * tokens


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # spmd_types calls deprecated c10d APIs
def test_live_torchtitan_tp_measurement() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_tp_measure import measure_titan_tp

    m = measure_titan_tp(TINY, tensor=2, micro_batch_size=B, seq_len=S, checkpointing="full")
    row = {"config": TINY.model_dump(), "micro_batch_size": B, "seq_len": S, "tensor": 2,
           "precision": "bf16-mixed", "checkpointing": "full", "sequence_parallel": True}
    assert m.saved_for_backward - sum(_saved(row).values()) == flex_eager_scalars(2) * 2


def test_replay_of_the_fake_group_against_two_gloo_processes() -> None:
    """Each rank of a real two-process gloo group saves what the fake group's rank 0 saves."""
    data = json.loads(JSON_PATH.read_text())
    fake = {r["checkpointing"]: r["saved_for_backward"] for r in data["rows"]
            if r["shape"] == "tiny" and r["precision"] == "bf16-mixed" and r["sequence_parallel"]}
    assert data["gloo"] == {"none": [fake["none"]] * 2, "full": [fake["full"]] * 2}


def test_every_moment_of_a_tp_rank_by_hand() -> None:
    """`titan_tp_parts` for the tiny shape at TP 2 x FSDP 4, bf16, full checkpointing, on
    CPU: each part and moment written out (the saved total is the live measurement less the
    eager flex scalars: 269,352 - 40)."""
    weights, grads, states, saved, copies, all_copies, held, moments = titan_tp_parts(
        TINY, B, S, "bf16-mixed", "adamw", "full", "cpu", TP2, None)
    assert saved == {"block.block_input": 2 * 128 * 64 * 2, "embedding": 256 * 8 + 256 * 2,
                     "positions": 256 * 8, "final_norm": 2 * 128 * 64 * 4 + 128 * 4,
                     "lm_head": 256 * 64 * 2, "log_softmax": 256 * 128 * 4, "targets": 256 * 8}
    assert all(type(v) is int for v in saved.values())
    S_ = 269312
    assert sum(saved.values()) == S_
    n = 65856  # the rank's parameters (test_local_model_states_and_fsdp_by_hand)
    assert weights == grads == n
    assert states == -(-(8 * n + 4 * 17) // 4)
    assert (copies, all_copies, held) == (0, 0, 0)
    head, block = (128 * 64 + 64) * 2, 24704
    # one block without checkpointing on CPU (layer 1 of the FlexAttention measurement),
    # less the row maximum SDPA (attention="flash") does not keep: 2 local heads x 128 x b 2, fp32
    rebuilt = 463872 - 2 * 2 * 128 * 4
    Td, Tsd = 256 * 64 * 2, 128 * 64 * 2
    # the worst: block 0's recompute end. Its input and what it rebuilt; w2's partial output,
    # its reduce-scatter input and the input gathered again (3 T d); the reduce-scatter
    # output, the residual sum and the second norm's output (3 Ts d); the gradient received
    # and the loss's 8 bytes.
    # FSDP2: block 1's fp32 reduce-scatter input, block 0 gathered, the embedding prefetched
    end = Tsd + rebuilt + 3 * Td + 3 * Tsd + Tsd + 8
    fsdp = block * 4 + block * 2 + 128 * 64 * 2
    batch = 256 * 8 + 256 * 2 + 256 * 8  # the embedding's local ids and mask, the positions
    assert moments == {
        "forward_end": S_ + 256 * 128 * (2 + 4 + 4) + head,
        "backward_start": S_ + 3 * 256 * 128 * 4 + head,
        "optimizer_step": 0,  # torchtitan's fused AdamW
        "recompute": batch + end + fsdp}


def test_moments_on_cuda_without_sp_and_with_foreach_adamw() -> None:
    par = Parallelism(data=4, fsdp="full_shard", tensor=2)  # no sequence parallelism
    *_, saved, _, _, _, moments = titan_tp_parts(TINY, B, S, "bf16-mixed", "adamw", "full",
                                                 "cuda", par, "foreach")
    assert saved["final_norm"] == 256 * 64 * 2 + 256 * 4  # fused norm, every position
    assert saved["block.block_input"] == 2 * 256 * 64 * 2
    # foreach AdamW: sqrt(v) of every parameter (131,392 of the whole model, fp32) over 8 GPUs
    assert moments["optimizer_step"] == 131392 * 4 // 8
    norms = 2 * (256 * 64 * 2 + 256 * 4)
    # one block, CUDA, no SP; attention 256 x 96 x 2 + SDPA's logsumexp (2 x 2 x 128 x 4)
    whole = norms + 32768 + 16384 + 51200 + 32768 + 147456 + 49152
    Td = 256 * 64 * 2  # no SP: every position between the matmuls too (Ts = T)
    # the last block's recompute end (titan_tp_moments): block 0's input and its own, what
    # it rebuilt (its fused first norm's input is the block input), 3 T d + 3 T d, the
    # gradient received and the loss's 8 bytes; FSDP2: the head unit's fp32 reduce-scatter
    # input, the block gathered and block 0 prefetched (24,704 local parameters each, bf16)
    end = Td + Td + (whole - Td) + 3 * Td + 3 * Td + Td + 8
    fsdp = (128 * 64 + 64) * 4 + 2 * 24704 * 2
    assert moments["recompute"] == 256 * 8 + 256 * 2 + 256 * 8 + end + fsdp
    cuda_sp = titan_tp_rebuilt_block_bytes(TINY, B, S, e=2, device="cuda", tensor=2)
    assert cuda_sp == 365568 - 128 * 64 * 2
    assert titan_tp_rebuilt_block_bytes(TINY, B, S, e=2, device="cpu", tensor=2) == 463872


def test_block_mask_with_two_flex_blocks() -> None:
    t = titan_tp_saved_terms(TINY, 1, 256, precision="bf16-mixed", checkpointing="none",
                             device="cpu", layers=2, tensor=2)
    # 2 row blocks: num_blocks (1, 1, 2) x 4 and indices (1, 1, 2, 2) x 4, int32
    assert t["block_mask"] == 4 * 2 * 4 + 4 * 4 * 4
    assert type(t["block_mask"]) is int and type(t["block.rope_table"]) is int


def test_the_loss_moments_gather_nothing_on_one_data_rank() -> None:
    par = Parallelism(tensor=2, sequence_parallel=True)  # TP only: FSDP2 shards nothing
    *_, saved, _, _, _, moments = titan_tp_parts(TINY, B, S, "32-true", "adamw", "none",
                                                 "cpu", par, None)
    S_ = sum(saved.values())
    moments.pop("block_backward")  # the blocks' moments: tests/test_titan_2d_steps.py
    assert moments == {"forward_end": S_ + 256 * 128 * (4 + 4),  # no upcast copy
                       "backward_start": S_ + 3 * 256 * 128 * 4, "optimizer_step": 0}
