"""torchtitan with SDPA attention and with its per-block compile, against hand calculations and
torchtitan's own code on CPU.

Hand calculations: each term for a tiny Llama 3 shape (b=2, s=128: T = 256 tokens, d=64, 4
heads of 16, 2 KV heads, MLP 192, vocabulary 256), written out below.
Replays: tests/data/titan_compiled.json (``python -m scaleplan.reference.titan_compiled
--write``: torchtitan 0.3.0's ``Llama3Model`` with SDPA, its own FullAC / SelectiveAC and its own
``apply_compile``, inductor on CPU, bf16 and fp32 parameters) and the SDPA rows of
docs/validation/torchtitan-memory.json (``python -m scaleplan.reference.titan_measure
--write``), compared without torch. Live: one compiled case, marked ``torch``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_compiled_terms import (
    titan_compiled_block_terms,
    titan_compiled_rebuilt_block_bytes,
    titan_compiled_saved_terms,
    titan_step_terms,
)
from scaleplan.memory.titan_sdpa_terms import (
    titan_sdpa_block_terms,
    titan_sdpa_rebuilt_block_bytes,
    titan_sdpa_saved_terms,
)
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

ROOT = Path(__file__).resolve().parent.parent
COMPILED_JSON = ROOT / "tests/data/titan_compiled.json"
EAGER_JSON = ROOT / "docs/validation/torchtitan-memory.json"
TINY = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192, vocab_size=256,
                 block_size=256, bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                 tie_embeddings=False)
B, S = 2, 128
FSDP8 = Parallelism(data=8, fsdp="full_shard")
LSE = 2 * 4 * 128 * 4  # SDPA's fp32 logsumexp, (b, H, s)
# outside the blocks, bf16 on CPU: token ids (int64), the final norm's fp32 upcast and normalised
# x and reciprocal std, the lm_head's bf16 input, the fp32 log-softmax, the targets and nll's
# fp32 total weight
LOSS_SIDE_BF16 = 256 * 8 + (2 * 256 * 64 * 4 + 256 * 4) + 256 * 64 * 2 + 256 * 256 * 4 + 256 * 8 + 4


def test_compiled_block_without_checkpointing_by_hand() -> None:
    t = titan_compiled_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="none")
    assert t == {"block_input": 256 * 64 * 2,
                 "norm_rstd": 2 * 256 * 4,  # one fp32 per token, per norm
                 "wqkv_input": 256 * 64 * 2,
                 # q (4 x 16), k and v (2 x 16 each), output (4 x 16), bf16; logsumexp fp32
                 "attention": 256 * (64 + 32 + 32 + 64) * 2 + LSE,
                 "wo_input": 256 * 64 * 2,
                 "mlp_input": 256 * 64 * 2,
                 "mlp": 3 * 256 * 192 * 2,
                 "rope_table": 256 * 8 * 8}  # 8 complex64 pairs per token


def test_step_terms_are_exact_ints() -> None:
    for compiled in (True, False):
        for checkpointing in ("none", "full"):
            saved = titan_step_terms(TINY, B, S, precision="bf16-mixed",
                                     checkpointing=checkpointing, device="cuda", layers=2,
                                     compiled=compiled)
            assert all(type(v) is int for v in saved.values())  # bytes are exact ints


def test_compiled_checkpointed_blocks_by_hand() -> None:
    assert titan_compiled_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="full") == {
        "block_input": 256 * 64 * 2, "rng_state": 5056}
    assert titan_compiled_block_terms(TINY, B, S, e=4, device="cuda", checkpointing="full") == {
        "block_input": 256 * 64 * 4}
    # wqkv's output (matmul 1), SDPA's output and logsumexp, w1's output (matmul 3); not w2's
    assert titan_compiled_block_terms(TINY, B, S, e=2, device="cuda",
                                      checkpointing="selective") == {
        "block_input": 256 * 64 * 2, "wqkv_output": 256 * 128 * 2,
        "attention_outputs": 256 * 64 * 2 + LSE, "w1_output": 256 * 192 * 2}


def test_compiled_rebuilt_block_by_hand() -> None:
    # all but the block input: wqkv's, wo's and the MLP's inputs, two rstd, q k v and SDPA's
    # output with its logsumexp, w1 / w3 / w2-input, the RoPE rows
    none = (3 * 256 * 64 * 2 + 2 * 256 * 4 + 256 * (64 + 32 + 32 + 64) * 2 + LSE
            + 3 * 256 * 192 * 2 + 256 * 8 * 8)
    assert titan_compiled_rebuilt_block_bytes(TINY, B, S, e=2) == none


def test_sdpa_block_keeps_one_statistic_and_no_mask() -> None:
    t = titan_sdpa_block_terms(TINY, B, S, e=2, device="cpu", checkpointing="none")
    assert t["attention"] == 256 * (64 + 32 + 32 + 64) * 2 + LSE
    sel = titan_sdpa_block_terms(TINY, B, S, e=2, device="cuda", checkpointing="selective")
    assert sel["attention_outputs"] == 256 * 64 * 2 + LSE
    saved = titan_sdpa_saved_terms(TINY, B, S, precision="bf16-mixed", checkpointing="none",
                                   device="cuda", layers=2)
    assert "block_mask" not in saved and "positions" not in saved
    # a rebuilt block under selective: the cached SDPA outputs and w1's output are handed back
    cuda_norm = 256 * 64 * 2 + 256 * 4
    whole = (2 * cuda_norm + 256 * 64 * 2 + 256 * 64 + 256 * 192 * 2 + LSE + 256 * 64 * 2
             + 3 * 256 * 192 * 2 + 256 * 192 * 2)
    assert titan_sdpa_rebuilt_block_bytes(TINY, B, S, e=2, device="cuda",
                                          checkpointing="selective") == (
        whole - (256 * 64 * 2 + LSE) - 256 * 192 * 2)


def test_sdpa_rebuilt_block_under_full_checkpointing_by_hand() -> None:
    """Full AC rebuilds the whole block; on CUDA the fused norm's input is the block input,
    already held; on CPU the composite norm keeps fp32 copies instead."""
    rest = (256 * 64 * 2 + 256 * 64 + 256 * 192 * 2 + LSE + 256 * 64 * 2
            + 3 * 256 * 192 * 2 + 256 * 192 * 2)  # wqkv in, RoPE, q k v out + lse, MLP
    cuda_norm, cpu_norm = 256 * 64 * 2 + 256 * 4, 2 * 256 * 64 * 4 + 256 * 4
    held = 256 * 64 * 2  # the block input
    assert titan_sdpa_rebuilt_block_bytes(TINY, B, S, e=2, device="cuda",
                                          checkpointing="full") == 2 * cuda_norm + rest - held
    assert titan_sdpa_rebuilt_block_bytes(TINY, B, S, e=2, device="cpu",
                                          checkpointing="full") == 2 * cpu_norm + rest


def _rows(path: Path) -> list[dict[str, object]]:
    return json.loads(path.read_text())["rows"]  # type: ignore[no-any-return]


def test_replay_of_the_compiled_measurements() -> None:
    """All six compiled cases (none / full / selective x bf16 / fp32) to the byte."""
    rows = _rows(COMPILED_JSON)
    assert len(rows) == 6
    for row in rows:
        precision = "bf16-mixed" if row["dtype"] == "bf16" else "32-true"
        terms = titan_compiled_saved_terms(TINY, B, S, precision=precision, device="cpu",
                                           checkpointing=row["checkpointing"],  # type: ignore[arg-type]
                                           layers=2)
        assert row["saved_for_backward"] == sum(terms.values()), (row["checkpointing"],
                                                                  row["dtype"])
        blocks = sum(v for k, v in terms.items() if k.startswith("block."))
        shared = terms.get("positions", 0)  # saved by the compiled blocks, once
        assert row["compiled_blocks"] == blocks + shared


def test_replay_of_the_first_compiled_block_by_hand() -> None:
    """What block 0's compiled node saved, storage by storage (shape, dtype)."""
    rows = {(r["checkpointing"], r["dtype"]): r["block0"] for r in _rows(COMPILED_JSON)}
    sel = [(tuple(x["shape"]), x["dtype"]) for x in rows["selective", "bf16"]]  # type: ignore[index, union-attr]
    assert sel == [((2, 128, 64), "bfloat16"), ((2, 128), "int64"), ((256, 128), "bfloat16"),
                   ((2, 4, 128, 16), "bfloat16"), ((2, 4, 128), "float32"),
                   ((256, 192), "bfloat16")]  # input, positions, wqkv, SDPA out + lse, w1
    full = [(tuple(x["shape"]), x["dtype"]) for x in rows["full", "fp32"]]  # type: ignore[index, union-attr]
    assert full == [((2, 128, 64), "float32"), ((2, 128), "int64"), ((5056,), "uint8")]


def test_replay_of_the_sdpa_measurements() -> None:
    """torchtitan's eager model with SDPA: two shapes x none / full / selective, to the byte;
    with the selective policy's own CPU save list, SDPA's output and logsumexp are recomputed
    rather than cached."""
    rows = [r for r in _rows(EAGER_JSON) if r["attn_backend"] == "sdpa"]
    assert len(rows) == 8
    for row in rows:
        cfg = GPTConfig(**row["config"])  # type: ignore[arg-type]
        terms = titan_sdpa_saved_terms(cfg, B, S, precision="bf16-mixed", device="cpu",
                                       checkpointing=row["checkpointing"],  # type: ignore[arg-type]
                                       layers=cfg.n_layer)
        expected = sum(terms.values())
        if row.get("cuda_policy") is False:
            T = B * S
            expected -= cfg.n_layer * (T * cfg.n_embd * 2 + B * cfg.n_head * S * 4)
        assert row["saved_for_backward"] == expected, (row["shape"], row["checkpointing"])


def test_training_memory_compiled_torchtitan() -> None:
    m = training_memory(TINY, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=FSDP8, checkpointing="none", compile=True,
                        cuda_context_bytes=0, allocator_slack_fraction=0)
    block = (256 * 64 * 2 * 3 + 2 * 256 * 4 + 256 * 192 * 2 + LSE + 256 * 64 * 2
             + 3 * 256 * 192 * 2 + 256 * 64)
    cuda_loss_side = 256 * 8 + (256 * 64 * 2 + 256 * 4) + 256 * 64 * 2 + 256 * 256 * 4 + 256 * 8 + 4
    assert m.saved_for_backward == 2 * block + cuda_loss_side
    eager = training_memory(TINY, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                            parallelism=FSDP8, checkpointing="none")
    assert m.saved_for_backward < eager.saved_for_backward


def test_compiled_selective_saves_less_than_eager_selective() -> None:
    """Compiled, w2's output is not kept (nothing in the backward reads it): T d e per block."""
    kw = {"micro_batch_size": B, "seq_len": S, "implementation": "torchtitan",
          "parallelism": FSDP8, "checkpointing": "selective", "device": "cuda"}
    eager = training_memory(TINY, **kw)  # type: ignore[arg-type]
    compiled = training_memory(TINY, compile=True, **kw)  # type: ignore[arg-type]
    assert eager.saved_for_backward - compiled.saved_for_backward == 2 * 256 * 64 * 2


def test_loss_side_constant_matches_the_measured_eager_part() -> None:
    row = next(r for r in _rows(COMPILED_JSON) if r["dtype"] == "bf16")
    assert row["eager"] == LOSS_SIDE_BF16


@pytest.mark.torch
@pytest.mark.slow
def test_live_compiled_selective_block() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_compiled import measure_titan_compiled

    m = measure_titan_compiled(TINY, micro_batch_size=B, seq_len=S, checkpointing="selective")
    terms = titan_compiled_saved_terms(TINY, B, S, precision="bf16-mixed", device="cpu",
                                       checkpointing="selective", layers=2)
    assert m["saved_for_backward"] == sum(terms.values())


def test_compiled_recompute_moment_by_hand() -> None:
    """A compiled block's backward under per-op AC at its MLP, as measured whole
    (tests/test_titan_compiled_step.py): its cache, the MLP side of its recompute and three
    b s F gradients, beside FSDP2's buffers, w2's weight gradient not made yet."""
    small_vocab = TINY.replace(vocab_size=64)  # so that the loss's backward is not the peak
    m = training_memory(small_vocab, micro_batch_size=B, seq_len=S, implementation="torchtitan",
                        parallelism=FSDP8, checkpointing="selective", device="cuda",
                        compile=True, cuda_context_bytes=0, allocator_slack_fraction=0)
    assert m.peak_moment == "recompute"
    T = 256
    # a block's compiled cache: input, wqkv's output (8 heads of 16), SDPA's output and
    # logsumexp, w1's output
    cache = T * 64 * 2 + T * 128 * 2 + T * 64 * 2 + LSE + T * 192 * 2
    # the block in backward: its cache, the second norm's rstd, input and output, w3's output
    # and w2's input, three b s F gradients
    own = cache + T * 4 + 2 * T * 64 * 2 + 2 * T * 192 * 2 + 3 * T * 192 * 2
    incoming = T * 64 * 2 + 8  # the block's incoming gradient, the loss and its gradient
    block = 64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64
    # the last block (1): the head unit's fp32 reduce-scatter input, block 1 gathered, block 0
    # prefetched
    fsdp = (64 * 64 + 64) * 4 + 2 * block * 2
    batch = 2 * T * 8  # token ids and positions
    moment = cache + own + incoming + fsdp + batch
    assert moment == 1_275_656
    assert m.transient == moment - m.saved_for_backward


def test_memory_grid_takes_the_compiled_terms() -> None:
    np = pytest.importorskip("numpy")
    from scaleplan.memory.limits import memory_grid

    grid = memory_grid(TINY, micro_batch_size=np.array([1, 2]), seq_len=np.array([128, 128]),
                       implementation="torchtitan", parallelism=FSDP8, checkpointing="none",
                       compile=True)
    for b, total in zip((1, 2), grid, strict=True):
        m = training_memory(TINY, micro_batch_size=b, seq_len=128, implementation="torchtitan",
                            parallelism=FSDP8, checkpointing="none", compile=True)
        assert total == m.total


@pytest.mark.torch
@pytest.mark.slow
def test_live_sdpa_measurement() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_measure import measure_titan

    m = measure_titan(TINY, micro_batch_size=B, seq_len=S, checkpointing="none",
                      attn_backend="sdpa")
    terms = titan_sdpa_saved_terms(TINY, B, S, precision="bf16-mixed", device="cpu",
                                   checkpointing="none", layers=2)
    assert m.saved_for_backward == sum(terms.values())
