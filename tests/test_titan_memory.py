"""`implementation="torchtitan"` against hand calculations and torchtitan's own code on CPU.

Hand calculations: each saved term of `scaleplan.memory.titan_terms` for a tiny Llama 3 shape
(b=2, s=128, d=64, 4 heads of 16, 2 KV heads, MLP 192, vocabulary 256), written out below.
Replay: docs/validation/torchtitan-memory.json, written by
``python -m scaleplan.reference.titan_measure --write`` (torchtitan 0.3.0's ``Llama3Model`` with
its own FullAC / SelectiveAC on CPU, bf16 parameters as FSDP2 gathers them), compared without
torch. Live: the same measurement, marked ``torch``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_terms import (
    titan_block_terms,
    titan_fsdp_in_flight,
    titan_model_states,
    titan_rebuilt_block_bytes,
    titan_saved_terms,
)
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

JSON_PATH = Path(__file__).resolve().parent.parent / "docs/validation/torchtitan-memory.json"
TINY = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192, vocab_size=256,
                 block_size=256, bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                 tie_embeddings=False)
B, S = 2, 128
T = B * S  # 256 tokens
FSDP8 = Parallelism(data=8, fsdp="full_shard")
# What the CPU measurement holds and a GPU does not: eager flex_attention (the harness runs the
# op uncompiled, torch's dense implementation) keeps, per call, the 0-dim example values it
# traces score_mod's backward with: four int32 indices (b, h, q_idx, kv_idx) and two bf16
# scores. Compiled, as torchtitan runs it on a GPU, it keeps no such tensors.
FLEX_EAGER_SCALARS = 4 * 4 + 2 * 2  # bytes per block


def test_block_without_checkpointing_by_hand_cpu() -> None:
    t = titan_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="none")
    assert t["attention_norm"] == t["ffn_norm"] == 2 * 256 * 64 * 4 + 256 * 4  # fp32 x, x*rstd
    assert t["wqkv_input"] == t["mlp_input"] == 256 * 64 * 2
    assert t["rope_table"] == 256 * 8 * 8  # 8 complex64 pairs per token
    assert all(type(v) is int for v in t.values())  # bytes are exact ints
    # q 4x16, k and v 2x16 each, output 4x16 (bf16) + logsumexp and max (fp32, 2 x 4 x 128)
    assert t["attention"] == 256 * (64 + 32 + 32 + 64) * 2 + 2 * 2 * 4 * 128 * 4
    assert t["mlp"] == 3 * 256 * 192 * 2
    assert t["w2_input"] == 256 * 192 * 2


def test_norm_on_cuda_keeps_bf16_input_and_rstd() -> None:
    t = titan_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="none")
    assert t["attention_norm"] == 256 * 64 * 2 + 256 * 4


def test_full_checkpointing_keeps_the_block_input() -> None:
    assert titan_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="full") == {
        "block_input": 256 * 64 * 2}


def test_selective_keeps_every_other_matmul_and_flex_outputs() -> None:
    t = titan_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="selective")
    assert t == {"block_input": 256 * 64 * 2,
                 "wqkv_output": 256 * 128 * 2,  # matmul 1 of 5
                 "attention_outputs": 256 * 64 * 2 + 2 * 2 * 4 * 128 * 4,
                 "w1_output": 256 * 192 * 2,  # matmul 3
                 "w2_output": 256 * 64 * 2}  # matmul 5


def test_loss_side_by_hand() -> None:
    t = titan_saved_terms(TINY, B, S, precision="bf16-mixed", checkpointing="full",
                          device="cpu", layers=2)
    assert t["log_softmax"] == 256 * 256 * 4
    assert t["targets"] == 256 * 8 + 4
    assert t["embedding_ids"] == 256 * 8
    assert t["lm_head"] == 256 * 64 * 2
    assert t["block.block_input"] == 2 * 256 * 64 * 2


def test_recompute_moment_by_hand() -> None:
    """TINY's vocabulary is small: the last block's MLP backward under selective AC is the worst
    moment (`scaleplan.memory.titan_fsdp_moments`, measured whole on CPU)."""
    m = training_memory(TINY, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=FSDP8, checkpointing="selective", device="cuda",
                        cuda_context_bytes=0, allocator_slack_fraction=0)
    assert m.peak_moment == "recompute"
    norm = 256 * 64 * 2 + 256 * 4  # fused RMSNorm: bf16 input, fp32 rstd
    lse = 2 * 4 * 128 * 4  # SDPA's fp32 logsumexp
    whole = (2 * norm + 256 * 64 * 2 + 256 * 8 * 8 + 256 * (64 + 32 + 32 + 64) * 2 + lse
             + 256 * 64 * 2 + 3 * 256 * 192 * 2 + 256 * 192 * 2)
    # the policy's cache: block input, wqkv's output, SDPA's outputs, w1's and w2's outputs
    cache = 256 * 64 * 2 + 256 * 128 * 2 + (256 * 64 * 2 + lse) + 256 * 192 * 2 + 256 * 64 * 2
    # block 1 (the last) in backward: block 0's cache; its own, less the wqkv and w2 outputs
    # its recompute consumed, plus what it rebuilds (all but SDPA's and w1's cached outputs)
    own = cache - 256 * 128 * 2 - 256 * 64 * 2 + whole - (256 * 64 * 2 + lse) - 256 * 192 * 2
    backward = 2 * 256 * 192 * 2 + 256 * 64 * 2 + 8  # two b s F gradients, incoming, loss
    block = 64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64
    # the head unit's fp32 reduce-scatter input, this block and block 0 prefetched in bf16,
    # w2's bf16 gradient
    fsdp = (256 * 64 + 64) * 4 + 2 * block * 2 + 64 * 192 * 2
    batch = 2 * 256 * 8  # token ids and positions
    assert m.transient == cache + own + backward + fsdp + batch - sum(m.saved_breakdown.values())


def test_rebuilt_block_by_hand() -> None:
    cpu_norm, cuda_norm = 2 * 256 * 64 * 4 + 256 * 4, 256 * 64 * 2 + 256 * 4
    rest = (256 * 64 * 2 + 256 * 8 * 8 + 256 * (64 + 32 + 32 + 64) * 2 + 2 * 2 * 4 * 128 * 4
            + 256 * 64 * 2 + 3 * 256 * 192 * 2 + 256 * 192 * 2)
    cached = (256 * 64 * 2 + 2 * 2 * 4 * 128 * 4) + 256 * 192 * 2  # flex outputs, w1 output
    cases = {("cuda", "full"): 2 * cuda_norm + rest - 256 * 64 * 2,  # the norm's input: kept
             ("cpu", "full"): 2 * cpu_norm + rest,  # the composite norm keeps an fp32 copy
             ("cpu", "selective"): 2 * cpu_norm + rest - cached,
             ("cuda", "selective"): 2 * cuda_norm + rest - cached}
    for (device, ckpt), expected in cases.items():
        assert titan_rebuilt_block_bytes(TINY, B, S, e=2, device=device,
                                         checkpointing=ckpt) == expected, (device, ckpt)


def test_block_mask_and_positions_by_hand() -> None:
    none = titan_saved_terms(TINY, B, 8192, precision="bf16-mixed", checkpointing="none",
                             device="cuda", layers=2)
    # 64 blocks of 128: num_blocks (2, 1, 64) x 4 tensors, indices (2, 1, 64, 64) x 4, int32
    assert none["block_mask"] == 4 * 2 * 64 * 4 + 4 * 2 * 64 * 64 * 4
    assert "positions" not in none
    ragged = titan_saved_terms(TINY, B, 200, precision="bf16-mixed", checkpointing="none",
                               device="cuda", layers=2)
    assert ragged["block_mask"] == 4 * 2 * 2 * 4 + 4 * 2 * 2 * 2 * 4  # ceil(200 / 128) = 2
    full = titan_saved_terms(TINY, B, S, precision="bf16-mixed", checkpointing="full",
                             device="cuda", layers=2)
    assert full["positions"] == 256 * 8 and "block_mask" not in full


def test_fp32_params_double_the_activations() -> None:
    t = titan_block_terms(TINY, B, S, e=4, device="cuda", checkpointing="full")
    assert t["block_input"] == 256 * 64 * 4


def test_fsdp_in_flight_by_hand() -> None:
    block = 64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64  # wqkv, wo, w1/w2/w3, two norms
    head = 256 * 64 + 64
    # the loss and its backward: the lm_head unit, not resharded after forward, in bf16
    assert titan_fsdp_in_flight(TINY, "bf16-mixed", data=8) == {
        "forward_end": head * 2, "backward_start": head * 2,
        # a block's backward: it and the prefetched block in bf16, its bf16 gradients and
        # their fp32 copy for the reduce-scatter
        "recompute": 2 * block * 2 + block * 2 + block * 4}
    assert titan_fsdp_in_flight(TINY, "32-true", data=8)["recompute"] == 2 * block * 4 + block * 4
    assert titan_fsdp_in_flight(TINY, "bf16-mixed", data=1) == {
        "forward_end": 0, "backward_start": 0, "recompute": 0}


def test_model_states_shard_fp32_over_data_ranks() -> None:
    n = 256 * 64 * 2 + 2 * (64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64) + 64
    weights, gradients, optimizer = titan_model_states(TINY, "adamw", data=8)
    assert weights == gradients == -(-4 * n // 8)
    assert optimizer == -(-(8 * n + 4 * 17) // 8)  # two fp32 moments + 17 step counters


def test_training_memory_torchtitan_parts() -> None:
    cfg = TINY.replace(vocab_size=4096)  # the loss side outweighs a block's rebuild
    m = training_memory(cfg, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=FSDP8, checkpointing="selective", device="cuda",
                        cuda_context_bytes=0, allocator_slack_fraction=0)
    assert m.autocast_weight_copies == 0
    saved = titan_saved_terms(cfg, B, S, precision="bf16-mixed", checkpointing="selective",
                              device="cuda", layers=2)
    # SDPA (attention="flash"): FlexAttention's saves less its fp32 row maximum, per block
    assert m.saved_for_backward == sum(saved.values()) - 2 * (2 * 4 * 128 * 4)
    # the worst moment: the log-softmax's fp32 gradient and its input's, and the gathered
    # lm_head (bf16), on top of the saved
    assert m.peak_moment == "backward_start"
    assert m.transient == 2 * 256 * 4096 * 4 + (4096 * 64 + 64) * 2


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "bf16-true"}, "mixed_precision_param"),
    ({"attention": "eager"}, "fused attention"),
    ({"parallelism": Parallelism(data=2, fsdp="full_shard", pipeline=2)}, "pipeline"),
    ({"parallelism": Parallelism(data=2, fsdp="full_shard", tensor=2), "compile": True},
     "tensor=2 is not modelled yet with compile=True"),
    # torchtitan 0.3.0's llama3/parallelize.py always calls apply_fsdp_to_decoder ("with
    # shard_degree=1 it is a no-op for the all-gather but still installs the
    # MixedPrecisionPolicy"): one GPU is FSDP2 over one rank, measured eager only
    ({"parallelism": None, "compile": True}, "still applies FSDP2"),
    ({"parallelism": Parallelism(data=8)}, "FSDP2"),
])
def test_refused_by_name(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"parallelism": FSDP8}
    with pytest.raises(ScaleplanError, match=match):
        training_memory(TINY, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        **{**base, **kwargs})  # type: ignore[arg-type]


def test_other_layouts_refused() -> None:
    with pytest.raises(ScaleplanError, match="mlp='gelu'"):
        training_memory(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=64,
                        implementation="torchtitan", parallelism=FSDP8)
    with pytest.raises(ScaleplanError, match=r"head_dim=32 \(its Llama 3 takes n_embd / n_head\)"):
        training_memory(TINY.replace(head_dim=32), micro_batch_size=1, seq_len=64,
                        implementation="torchtitan", parallelism=FSDP8)
    with pytest.raises(ScaleplanError, match="qk_norm"):  # "head" is its Qwen3, modelled
        training_memory(TINY.replace(qk_norm="full"), micro_batch_size=1, seq_len=64,
                        implementation="torchtitan", parallelism=FSDP8)


def _predicted(row: dict[str, object]) -> int:
    cfg = GPTConfig(**row["config"])  # type: ignore[arg-type]
    return sum(titan_saved_terms(cfg, row["micro_batch_size"], row["seq_len"],
                                 precision="bf16-mixed", device="cpu",
                                 checkpointing=row["checkpointing"],  # type: ignore[arg-type]
                                 layers=cfg.n_layer).values())


def _flex_rows() -> list[dict[str, object]]:
    """The FlexAttention rows (SDPA's are replayed by tests/test_titan_compiled.py)."""
    rows = json.loads(JSON_PATH.read_text())["rows"]
    return [r for r in rows if r["attn_backend"] == "flex"]


def test_replay_of_the_cpu_measurements() -> None:
    data = json.loads(JSON_PATH.read_text())
    assert data["torchtitan"] == "0.3.0"
    assert len(_flex_rows()) == 6
    for row in _flex_rows():
        assert row["parameter_dtypes"] == ["torch.bfloat16"]
        gap = row["saved_for_backward"] - _predicted(row)
        assert gap == FLEX_EAGER_SCALARS * row["config"]["n_layer"], row["shape"]


def test_replay_by_module_without_checkpointing() -> None:
    """Layer 1 of each shape (layer 0's FlexAttention also saves the shared block mask)."""
    rows = [r for r in _flex_rows() if r["checkpointing"] == "none"]
    for row in rows:
        cfg = GPTConfig(**row["config"])
        t = titan_block_terms(cfg, B, S, e=2, device="cpu", checkpointing="none")
        got = {k.removeprefix("layers.1."): v for k, v in row["saved_by_module"].items()
               if k.startswith("layers.1.")}
        assert got == {"attention_norm": t["attention_norm"], "ffn_norm": t["ffn_norm"],
                       "attention.qkv_linear.wqkv": t["wqkv_input"],
                       "attention.rope": t["rope_table"],
                       "attention.inner_attention": t["attention"],
                       "feed_forward.w1": t["mlp_input"], "feed_forward": t["mlp"],
                       "feed_forward.w2": t["w2_input"]}


def test_replay_of_the_selective_cache() -> None:
    """SelectiveAC's cached op outputs live outside autograd's hooks ("checkpoint")."""
    rows = [r for r in _flex_rows() if r["checkpointing"] == "selective"]
    for row in rows:
        cfg = GPTConfig(**row["config"])
        t = titan_block_terms(cfg, B, S, e=2, device="cpu", checkpointing="selective")
        cached = sum(t.values()) - t["block_input"] + FLEX_EAGER_SCALARS
        assert row["saved_by_module"]["checkpoint"] == cfg.n_layer * cached
        assert row["saved_by_module"]["layers.1"] == t["block_input"]


def test_replay_of_fsdp2_under_torchtitans_own_sharding() -> None:
    """torchtitan's apply_fsdp_to_decoder in a one-process gloo group: fp32 shards and
    gradients, blocks gathered in bf16 and resharded after forward, the lm_head unit kept
    gathered from forward until its backward."""
    fsdp = json.loads(JSON_PATH.read_text())["fsdp"]
    assert fsdp["sharded"] == fsdp["gradient"] == "torch.float32"
    assert fsdp["gathered"] == ["torch.bfloat16"]
    block = 64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64
    assert fsdp["gathered_block_bytes"] == block * 2
    gathered = titan_fsdp_in_flight(TINY, "bf16-mixed", data=8)
    assert gathered["recompute"] == 2 * fsdp["gathered_block_bytes"] + block * (2 + 4)
    assert not fsdp["block_gathered_after_forward"]
    assert fsdp["lm_head_gathered_after_forward"] and not fsdp["lm_head_gathered_after_backward"]


@pytest.mark.torch
@pytest.mark.slow
# torch's own code, traced by dynamo while torchtitan builds its block mask, instantiates an
# autograd Function, which torch 2.13 deprecates (not ours to fix)
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not:"
                            "DeprecationWarning")
@pytest.mark.parametrize("checkpointing", ["none", "selective"])
def test_live_torchtitan_measurement(checkpointing: str) -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_measure import measure_titan

    m = measure_titan(TINY, micro_batch_size=B, seq_len=S, checkpointing=checkpointing)
    row = {"config": TINY.model_dump(), "micro_batch_size": B, "seq_len": S,
           "checkpointing": checkpointing}
    assert m.saved_for_backward - _predicted(row) == FLEX_EAGER_SCALARS * TINY.n_layer


def test_memory_grid_agrees_with_training_memory() -> None:
    np = pytest.importorskip("numpy")
    from scaleplan.memory.limits import memory_grid

    grid = memory_grid(TINY, micro_batch_size=np.array([1, 2]), seq_len=np.array([128, 128]),
                       implementation="torchtitan", parallelism=FSDP8, checkpointing="full")
    for b, total in zip((1, 2), grid, strict=True):
        m = training_memory(TINY, micro_batch_size=b, seq_len=128, implementation="torchtitan",
                            parallelism=FSDP8, checkpointing="full")
        assert total == m.total


def test_fp32_step_forward_end_holds_logits_and_their_upcast() -> None:
    m = training_memory(TINY, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        precision="32-true", parallelism=FSDP8, cuda_context_bytes=0,
                        allocator_slack_fraction=0)
    tv = 256 * 256
    # backward_start: 2 fp32 T x V buffers; forward_end: fp32 logits and their fp32 copy
    assert m.peak_moment in ("backward_start", "forward_end")
    assert m.transient == 2 * tv * 4 + (256 * 64 + 64) * 4  # and the fp32 lm_head gathered
    assert m.saved_breakdown["block.mlp"] == 2 * 3 * 256 * 192 * 4  # fp32 activations


def test_its_trainer_drops_the_logits_whatever_hold_logits_says() -> None:
    kept, dropped = (training_memory(TINY, micro_batch_size=B, seq_len=S, parallelism=FSDP8,
                                     implementation="torchtitan", hold_logits=flag)
                     for flag in (True, False))
    assert kept == dropped
