"""`scaleplan.memory.tune_terms` against hand calculations, against the committed torchtune
measurements, and (torch-marked) against torchtune 0.6.1's models on CPU.

The measurements in tests/data/tune_memory.json were written by ``python -m
scaleplan.reference.tune_measure --grid``: each case builds the family's torchtune model with its
component builder, runs one forward and ``full_finetune_single_device``'s loss step on CPU and
counts the unique storages left for backward. They are replayed here without torch so that
mutation testing sees the formulas; the torch-marked tests re-measure a few cases live.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import scaleplan as sp
from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.tune_terms import (
    tune_block_saved_terms,
    tune_buffer_bytes,
    tune_embedding_saved_terms,
    tune_family,
    tune_head_saved_terms,
    tune_saved_bytes,
    tune_saved_terms,
)
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).parent / "data" / "tune_memory.json"
ROWS = json.loads(DATA.read_text())
_LLAMA = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
# The grid's shapes (scaleplan.reference.tune_measure.GRID_SHAPES), written out again here so the
# replay needs no torch import.
SHAPES = {
    "llama3_2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
                          vocab_size=512, block_size=128, tie_embeddings=True, **_LLAMA),
    "llama3_1": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=256, mlp_hidden=448,
                          vocab_size=384, block_size=96, tie_embeddings=False, **_LLAMA),
    "qwen2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=352,
                       vocab_size=512, block_size=128, qkv_bias=True, tie_embeddings=True,
                       **_LLAMA),
    "gemma": GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=128, head_dim=256,
                       mlp_hidden=512, vocab_size=512, block_size=128, bias=False,
                       mlp="geglu", norm="rmsnorm", position="rope", tie_embeddings=True),
}
LLAMA = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=128, vocab_size=100,
                  block_size=32, **_LLAMA)
# Llama 3.2 3B (torchtune.models.llama3_2.llama3_2_3b: 28 layers, 24 heads, 8 kv heads, d 3072,
# hidden 8192, vocab 128,256, max_seq_len 131,072, tied embeddings)
LLAMA_3B = GPTConfig(n_layer=28, n_head=24, n_kv_head=8, n_embd=3072, mlp_hidden=8192,
                     vocab_size=128256, block_size=131072, tie_embeddings=True, **_LLAMA)


def test_grid_covers_every_family_precision_checkpointing_and_packing() -> None:
    keys = {(r["family"], r["precision"], r["checkpointing"], r["packed"]) for r in ROWS}
    assert len(ROWS) == 64 and len(keys) == 32


@pytest.mark.parametrize("row", ROWS, ids=lambda r: "-".join(
    str(r[k]) for k in ("family", "precision", "micro_batch_size", "seq_len", "checkpointing",
                        "packed")))
def test_committed_measurement_is_predicted_exactly(row: dict) -> None:
    cfg = SHAPES[row["family"]]
    predicted = tune_saved_bytes(cfg, row["micro_batch_size"], row["seq_len"],
                                 precision=row["precision"],
                                 checkpointing=row["checkpointing"] == "full",
                                 packed=row["packed"], family=row["family"])
    assert predicted == row["measured"]
    assert tune_buffer_bytes(cfg, row["family"]) == row["buffer_bytes"]


def test_families() -> None:
    assert tune_family(LLAMA) == "llama3_2"
    assert tune_family(LLAMA.replace(qkv_bias=True)) == "qwen2"
    assert tune_family(LLAMA.replace(mlp="geglu")) == "gemma"


def test_llama_block_bf16_by_hand() -> None:
    # b=2, s=8: T=16 tokens, d=64, a=4 heads, k=2 kv heads, h=16, f=128, bf16 (2 bytes)
    t = tune_block_saved_terms(LLAMA, 2, 8, precision="bf16-true")
    assert t["norm1_input"] == 16 * 64 * 4  # x.float(): the fp32 copy rms_norm keeps
    assert t["norm1_stats"] == 16 * 4  # fp32 rstd per token
    assert t["norm1_normalized"] == 16 * 64 * 4
    assert t["qkv_input"] == 16 * 64 * 2  # one bf16 input for q, k and v (no autocast)
    assert "rope_cache_slices" not in t  # views of the cache buffer
    assert t["attn_q"] == 16 * 4 * 16 * 2
    assert t["attn_k_v"] == 2 * 16 * 4 * 16 * 2  # k and v expanded to 4 heads: copies
    assert t["attn_out"] == 16 * 4 * 16 * 2
    assert t["attn_lse"] == 2 * 4 * 8 * 4
    assert t["mlp_input"] == 16 * 64 * 2
    assert t["mlp_activations"] == 4 * 16 * 128 * 2
    assert sum(t.values()) == 2 * (4096 + 64 + 4096) + 2048 + 2048 + 4096 + 2048 + 256 \
        + 2048 + 16384


def test_one_kv_head_is_not_copied_by_the_expand() -> None:
    mqa = LLAMA.replace(n_kv_head=1)
    assert tune_block_saved_terms(mqa, 2, 8, precision="32-true")["attn_k_v"] == \
        2 * 16 * 1 * 16 * 4  # flatten(1, 2) of a size-1 dim is a view: k_proj/rope outputs
    mha = LLAMA.replace(n_kv_head=4)
    assert tune_block_saved_terms(mha, 2, 8, precision="32-true")["attn_k_v"] == \
        2 * 16 * 4 * 16 * 4


def test_packed_rope_gathers_and_cpu_mask_by_hand() -> None:
    # input_pos gathers cache[input_pos]: (b, s, h/2, 2) fp32 = T h 4 bytes, for q and for k
    t = tune_block_saved_terms(LLAMA, 2, 8, precision="bf16-true", packed=True, device="cpu")
    assert t["rope_cache_slices"] == 2 * 16 * 16 * 4
    assert t["attn_mask"] == 2 * 8 * 8 * 2  # SDPA's bf16 additive copy of the b x s x s mask
    cuda = tune_block_saved_terms(LLAMA, 2, 8, precision="bf16-true", packed=True)
    assert "attn_mask" not in cuda  # flex attention's BlockMask is a batch tensor
    assert sum(t.values()) - sum(cuda.values()) == 256


def test_qwen2_rope_casts_by_hand() -> None:
    qwen = LLAMA.replace(qkv_bias=True)
    # bf16: cos and sin cast for q and again for k, one batch row of s x h each
    bf16 = tune_block_saved_terms(qwen, 2, 8, precision="bf16-true")
    assert bf16["rope_cache_slices"] == 4 * 8 * 16 * 2
    packed = tune_block_saved_terms(qwen, 2, 8, precision="bf16-true", packed=True)
    assert packed["rope_cache_slices"] == 4 * 16 * 16 * 2
    fp32 = tune_block_saved_terms(qwen, 2, 8, precision="32-true", packed=True)
    assert fp32["rope_cache_slices"] == 2 * 16 * 2 * 16 * 4  # gathered [cos, sin] rows
    assert "rope_cache_slices" not in tune_block_saved_terms(qwen, 2, 8, precision="32-true")


def test_gemma_norm_embedding_and_checkpointing_by_hand() -> None:
    gemma = LLAMA.replace(mlp="geglu")
    t = tune_block_saved_terms(gemma, 2, 8, precision="32-true")
    assert t["norm1_one_plus_weight"] == 64 * 4 and t["norm2_one_plus_weight"] == 64 * 4
    assert tune_embedding_saved_terms(gemma, 2, 8, precision="32-true") == {
        "token_ids": 16 * 8, "embedding_scale": 4}
    assert tune_block_saved_terms(gemma, 2, 8, precision="bf16-true",
                                  checkpointing=True) == {"block_input": 16 * 64 * 2}


def test_head_by_hand() -> None:
    t = tune_head_saved_terms(LLAMA, 2, 8, precision="bf16-true")
    assert t == {"final_norm_input": 16 * 64 * 4, "final_norm_stats": 16 * 4,
                 "final_norm_normalized": 16 * 64 * 4, "lm_head_input": 16 * 64 * 2,
                 "log_softmax": 16 * 100 * 4, "targets": 16 * 8 + 4}


def test_saved_terms_scale_blocks_and_add_buffers() -> None:
    terms = tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", layers=3)
    block = tune_block_saved_terms(LLAMA, 2, 8, precision="bf16-true")
    assert terms["mlp_activations"] == 3 * block["mlp_activations"]
    assert terms["rope_buffers"] == 32 * 16 * 4 + 8 * 4  # block_size rows of h, theta h/2
    head = tune_head_saved_terms(LLAMA, 2, 8, precision="bf16-true")
    assert sum(terms.values()) - terms["rope_buffers"] == \
        16 * 8 + 3 * sum(block.values()) + sum(head.values())  # token ids, 3 blocks, head
    with pytest.raises(ValueError, match="whole layers"):
        tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", checkpointing="selective")
    with pytest.raises(ValueError, match="bf16-true"):
        tune_saved_terms(LLAMA, 2, 8, precision="bf16-mixed")


def test_arrays_give_the_same_bytes_as_ints() -> None:
    b = np.array([1, 2, 4])
    got = tune_saved_bytes(LLAMA, b, 8, precision="bf16-true", packed=True)
    assert [int(x) for x in got] == [tune_saved_bytes(LLAMA, int(n), 8, precision="bf16-true",
                                                      packed=True) for n in b]


def test_training_memory_uses_the_torchtune_terms_and_fp32_logits() -> None:
    m = sp.training_memory(LLAMA_3B, micro_batch_size=2, seq_len=4096, precision="bf16-true",
                           implementation="torchtune", hold_logits=False)
    T, V = 2 * 4096, 128256
    assert m.saved_for_backward == sum(tune_saved_terms(LLAMA_3B, 2, 4096,
                                                        precision="bf16-true").values())
    assert m.peak_moment == "backward_start"
    assert m.transient == 2 * T * V * 4  # nll_loss's and log_softmax's fp32 gradients
    # per layer, by hand: 2 fp32 norms (2 T d 4 + T 4 each), q/k/v input, q, k, v expanded to
    # 24 heads and SDPA's output (4 T a h 2), lse, MLP input and 4 T f 2
    d, a, h, f = 3072, 24, 128, 8192
    layer = 2 * (2 * T * d * 4 + T * 4) + T * d * 2 + 4 * T * a * h * 2 + 2 * a * 4096 * 4 \
        + T * d * 2 + 4 * T * f * 2
    assert m.saved_breakdown["mlp_activations"] == 28 * 4 * T * f * 2
    assert sum(v for k, v in m.saved_breakdown.items()
               if k.startswith(("norm", "qkv", "attn", "mlp"))) == 28 * layer


def test_torchtune_refuses_what_it_does_not_model() -> None:
    kw = {"micro_batch_size": 1, "seq_len": 16, "implementation": "torchtune"}
    with pytest.raises(ScaleplanError, match="precision='bf16-mixed'"):
        sp.training_memory(LLAMA, precision="bf16-mixed", **kw)
    with pytest.raises(ScaleplanError, match="checkpointing='selective'"):
        sp.training_memory(LLAMA, precision="bf16-true", checkpointing="selective", **kw)
    with pytest.raises(ScaleplanError, match="norm='layernorm'"):
        sp.training_memory(LLAMA.replace(norm="layernorm"), precision="bf16-true", **kw)
    with pytest.raises(ScaleplanError, match=r"dropout=0\.1"):
        sp.training_memory(LLAMA.replace(dropout=0.1), precision="bf16-true", **kw)
    with pytest.raises(ScaleplanError, match="attention='eager'"):
        sp.training_memory(LLAMA, precision="bf16-true", attention="eager", **kw)


@pytest.mark.torch
@pytest.mark.parametrize(("family", "precision", "checkpointing", "packed"), [
    ("llama3_2", "bf16-true", False, True),
    ("qwen2", "bf16-true", False, False),
    ("gemma", "32-true", True, False),
    ("llama3_1", "32-true", False, True),
])
def test_live_torchtune_measurement_is_predicted_exactly(family: str, precision: str,
                                                         checkpointing: bool,
                                                         packed: bool) -> None:
    pytest.importorskip("torchtune")
    from scaleplan.reference.tune_measure import GRID_SHAPES, measure_tune

    cfg = GRID_SHAPES[family]
    assert cfg == SHAPES[family]
    m = measure_tune(cfg, family, micro_batch_size=2, seq_len=24,  # type: ignore[arg-type]
                     precision=precision, checkpointing=checkpointing,  # type: ignore[arg-type]
                     packed=packed)
    assert m.saved_for_backward == tune_saved_bytes(
        cfg, 2, 24, precision=precision, checkpointing=checkpointing,  # type: ignore[arg-type]
        packed=packed, device="cpu", family=family)  # type: ignore[arg-type]
    assert m.buffer_bytes == tune_buffer_bytes(cfg, family)  # type: ignore[arg-type]


def test_fits_on_and_the_cli_take_torchtune() -> None:
    # plumbing: the bytes themselves are checked above against torchtune's measurements
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError

    from scaleplan.cli import build_parser
    from scaleplan.validation.markers import FitsOn

    tune = FitsOn(80 * 2**30, micro_batch_size=2, seq_len=4096, precision="bf16-true",
                  implementation="torchtune")
    need = sp.training_memory(LLAMA_3B, micro_batch_size=2, seq_len=4096,
                              precision="bf16-true", implementation="torchtune").total
    assert need > 72 * 2**30  # so 72 GiB is too little and 80 GiB enough
    assert TypeAdapter(Annotated[GPTConfig, tune]).validate_python(LLAMA_3B) == LLAMA_3B
    small = FitsOn(72 * 2**30, micro_batch_size=2, seq_len=4096, precision="bf16-true",
                   implementation="torchtune")
    with pytest.raises(ValidationError, match="needs"):
        TypeAdapter(Annotated[GPTConfig, small]).validate_python(LLAMA_3B)
    ns = build_parser().parse_args(["plan", "gpt2", "--gpu", "A100",
                                    "--implementation", "torchtune"])
    assert ns.implementation == "torchtune"


PEAKS = json.loads((Path(__file__).parent / "data" / "tune_peaks.json").read_text())


@pytest.mark.parametrize("row", PEAKS, ids=lambda r: f"{r['family']}-{r['precision']}")
def test_loss_side_moments_match_the_measured_peaks(row: dict) -> None:
    # tests/data/tune_peaks.json: live bytes over parameters, buffers and the batch, measured by
    # scaleplan.reference.tune_measure.measure_tune_peaks. The forward ends with the saved
    # tensors plus the fp32 logits (T V 4: unembed's .float(), kept until the recipe's `del
    # logits`); backward starts with nll_loss's and log_softmax's fp32 gradients (2 T V 4).
    from scaleplan.memory.parallel import Parallelism
    from scaleplan.memory.stage import stage_parts

    cfg, b, s = SHAPES[row["family"]], row["micro_batch_size"], row["seq_len"]
    *_, saved, _, _, _, moments = stage_parts(
        cfg, b, s, row["precision"], "adamw", "flash", "none", "cpu", Parallelism(), None,
        False, "only", implementation="torchtune")
    T, V = b * s, cfg.vocab_size
    resident = saved["rope_buffers"] + saved["token_ids"]  # buffers and the batch's ids
    # the measurement also sees the batch's labels freed (T 8) once hstack's copy replaces them,
    # the 16-byte ignore column and the loss scalar: 748 bytes fewer at b x s = 2 x 48
    labels = T * 8 - 16 - 4
    assert moments["forward_end"] == sum(saved.values()) + T * V * 4
    assert row["forward_peak"] == moments["forward_end"] - resident - labels
    assert moments["backward_start"] == sum(saved.values()) + 2 * T * V * 4
    # at log_softmax's backward nll_loss's node has released its targets and weight total
    # (T 8 + 4) and the loss and its gradient are two 4-byte scalars
    released = labels + 16 + 4 + T * 8 + 4 - 8
    assert row["loss_backward_peak"] == moments["backward_start"] - resident - released


@pytest.mark.torch
def test_live_loss_side_peaks_match_the_committed_ones() -> None:
    pytest.importorskip("torchtune")
    from scaleplan.reference.tune_measure import measure_tune_peaks

    row = next(r for r in PEAKS if r["family"] == "qwen2" and r["precision"] == "bf16-true")
    got = measure_tune_peaks(SHAPES["qwen2"], "qwen2", micro_batch_size=2, seq_len=48,
                             precision="bf16-true")
    assert got == {"forward_peak": row["forward_peak"],
                   "loss_backward_peak": row["loss_backward_peak"]}


def test_symbols_give_the_same_bytes_as_ints() -> None:
    sympy = pytest.importorskip("sympy")
    b, s = sympy.symbols("b s", positive=True, integer=True)
    for packed in (False, True):
        expr = tune_saved_bytes(LLAMA.replace(qkv_bias=True), b, s, precision="bf16-true",
                                packed=packed)
        assert expr.subs({b: 3, s: 16}) == tune_saved_bytes(
            LLAMA.replace(qkv_bias=True), 3, 16, precision="bf16-true", packed=packed)


def test_compiled_block_by_hand() -> None:
    # b=2, s=8: T=16, d=64, a=4, k=2, h=16, f=128, bf16. Inductor's partition of the compiled
    # layer keeps its input, the attention norm's output, the residual after attention and the
    # MLP norm's output (4 T d 2), both rstd (T 4 each), SDPA's q, expanded k and v, output and
    # lse, and gate, up and their product (3 T f 2); the norms' fp32 copies, RoPE and SiLU are
    # recomputed.
    t = tune_block_saved_terms(LLAMA, 2, 8, precision="bf16-true", compiled=True)
    assert sum(t.values()) == 4 * 16 * 64 * 2 + 2 * 16 * 4 + 4 * 16 * 4 * 16 * 2 \
        + 2 * 4 * 8 * 4 + 3 * 16 * 128 * 2
    packed = tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", compiled=True, packed=True,
                              device="cpu")
    assert packed["input_pos"] == 16 * 8  # kept once to redo the RoPE gathers
    assert packed["attn_mask"] == 2 * 2 * 8 * 8 * 2  # per layer, as in eager
    assert "rope_cache_slices" not in packed
    ckpt = tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", compiled=True, packed=True,
                            checkpointing="full")
    assert ckpt["block_input"] == 2 * 16 * 64 * 2 and "input_pos" not in ckpt


def test_compile_with_torchtune_keeps_the_eager_loss() -> None:
    kw = {"micro_batch_size": 2, "seq_len": 4096, "precision": "bf16-true",
          "implementation": "torchtune", "hold_logits": False}
    eager = sp.training_memory(LLAMA_3B, **kw)
    compiled = sp.training_memory(LLAMA_3B, compile=True, **kw)
    T, V, d, f = 2 * 4096, 128256, 3072, 8192
    # per layer the compiled partition drops the norms' fp32 copies (4 T d 4 - 2 T d 2) and one
    # f-wide tensor (T f 2); the head, the loss and its moments are the eager ones
    assert eager.saved_for_backward - compiled.saved_for_backward == 28 * (
        4 * T * d * 4 - 2 * T * d * 2 + T * f * 2)
    assert compiled.transient == eager.transient == 2 * T * V * 4
    assert compiled.saved_breakdown["log_softmax"] == T * V * 4


COMPILED = json.loads((Path(__file__).parent / "data" / "tune_compiled.json").read_text())


@pytest.mark.parametrize("row", COMPILED, ids=lambda r: "-".join(
    str(r[k]) for k in ("family", "precision", "packed")))
def test_committed_compiled_measurement_is_predicted_exactly(row: dict) -> None:
    # tests/data/tune_compiled.json: scaleplan.reference.tune_compiled, torchtune's layers
    # compiled by training.compile_model and the saved tensors read from the autograd graph
    cfg, b, s = SHAPES[row["family"]], row["micro_batch_size"], row["seq_len"]
    kw = {"precision": row["precision"], "packed": row["packed"], "family": row["family"]}
    assert tune_saved_bytes(cfg, b, s, compiled=True, **kw) == row["saved_for_backward"]
    block = tune_block_saved_terms(cfg, b, s, compiled=True, device="cpu", **kw)
    input_pos = b * s * 8 if row["packed"] else 0  # saved by the first compiled layer
    assert cfg.n_layer * sum(block.values()) + input_pos == row["compiled_layers"]


@pytest.mark.torch
@pytest.mark.slow
def test_live_compiled_torchtune_measurement_is_predicted_exactly() -> None:
    pytest.importorskip("torchtune")
    from scaleplan.reference.tune_compiled import measure_tune_compiled

    m = measure_tune_compiled(SHAPES["llama3_1"], "llama3_1", micro_batch_size=2, seq_len=24,
                              precision="bf16-true", packed=True)
    assert m["saved_for_backward"] == tune_saved_bytes(
        SHAPES["llama3_1"], 2, 24, precision="bf16-true", packed=True, family="llama3_1",
        compiled=True)


CHUNKED = json.loads((Path(__file__).parent / "data" / "tune_compiled_chunked.json").read_text())


@pytest.mark.parametrize("row", CHUNKED, ids=lambda r: f"{r['family']}-{r['precision']}")
def test_compiled_chunked_loss_terms_replace_the_standard_loss_side(row: dict) -> None:
    # tests/data/tune_compiled_chunked.json: measure_tune_compiled(..., loss="chunked"), the
    # layers compiled and CEWithChunkedOutputLoss's compute_cross_entropy compiled in place
    from scaleplan.memory.tune_terms import tune_compiled_chunked_loss_terms

    cfg, b, s = SHAPES[row["family"]], row["micro_batch_size"], row["seq_len"]
    kw = {"precision": row["precision"], "family": row["family"]}
    head = tune_head_saved_terms(cfg, b, s, **kw)
    chunked = tune_compiled_chunked_loss_terms(cfg, b, s, precision=row["precision"])
    assert chunked == {"logits": b * s * cfg.vocab_size * (4 if row["precision"] == "32-true"
                                                            else 2),
                       "targets": b * s * 8 + 8, "logsumexp": 2 * b * s * 4}
    assert row["saved_for_backward"] == tune_saved_bytes(cfg, b, s, compiled=True, **kw) \
        - head["log_softmax"] - head["targets"] + sum(chunked.values())


# what the backward has freed when a checkpointed block is rebuilt: the head's and the loss's
# saves (the final norm's, the logits', the log-softmax's, the targets)
_LOSS_SIDE = ("final_norm", "lm_head", "log_softmax", "logits", "logsumexp", "targets", "loss_")


@pytest.mark.parametrize("row", [r for r in COMPILED if not r["packed"]], ids=lambda r: "-".join(
    str(r[k]) for k in ("family", "precision")))
def test_compiled_checkpointed_rebuild_keeps_the_measured_compiled_block(row: dict) -> None:
    # torchtune's compiled layers under full checkpointing: the block rebuilt in the backward
    # saves what inductor's partition of the compiled layer keeps on CPU, measured per layer in
    # tests/data/tune_compiled.json (compiled_layers / n_layer), on top of the checkpointed
    # saves that are still alive (no autocast copies with bf16 or fp32 parameters)
    cfg, b, s = SHAPES[row["family"]], row["micro_batch_size"], row["seq_len"]
    parts = stage_parts(cfg, b, s, row["precision"], "adamw", "flash", "full", "cpu",
                        Parallelism(), None, False, "only", compiled=True,
                        implementation="torchtune")
    saved, moments = parts[3], parts[-1]
    kept = sum(v for k, v in saved.items() if not k.startswith(_LOSS_SIDE))
    assert moments["recompute"] - kept == row["compiled_layers"] // cfg.n_layer
