"""`scaleplan.memory.tune_lora_terms` (torchtune's LoRA / QLoRA step) against hand calculations,
against the committed measurements of torchtune 0.6.1's LoRA models, and (torch-marked) against
those models live on CPU.

tests/data/tune_lora_memory.json was written by ``python -m
scaleplan.reference.tune_lora_measure --grid``: each case builds ``lora_llama3_2`` or
``lora_llama3_1`` in bf16 (NF4 base with ``quantize_base=True``), freezes all but the adapters as
``lora_finetune_single_device`` does, runs one forward and the recipe's loss and counts the unique
storages left for backward. Replayed here without torch so that mutation testing sees the
formulas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import scaleplan as sp
from scaleplan.errors import ScaleplanError
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.memory.tune_lora_states import (
    NF4_DEQUANTIZE_BYTES_PER_ELEMENT,
    check_tune_lora,
    nf4_dequantize_bytes,
    nf4_linear_bytes,
    tune_lora_model_states,
)
from scaleplan.memory.tune_lora_terms import (
    tune_lora_block_saved_terms,
    tune_lora_compiled_block_terms,
    tune_lora_saved_terms,
    tune_lora_stage_parts,
)
from scaleplan.memory.tune_switches import with_chunked_loss
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA

DATA = json.loads((Path(__file__).parent / "data" / "tune_lora_memory.json").read_text())
_LLAMA = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
# The grid's shapes (scaleplan.reference.tune_measure.GRID_SHAPES), written out again so the
# replay needs no torch import.
SHAPES = {
    "llama3_2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
                          vocab_size=512, block_size=128, tie_embeddings=True, **_LLAMA),
    "llama3_1": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=256, mlp_hidden=448,
                          vocab_size=384, block_size=96, tie_embeddings=False, **_LLAMA),
}
TARGETS = {"qv": ("q", "v"), "all": ("q", "k", "v", "o", "gate", "up", "down"), "o": ("o",),
           "qvo_mlp": ("q", "v", "o", "gate", "up", "down")}
TINY = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512, vocab_size=512,
                 block_size=128, tie_embeddings=True, **_LLAMA)


def _lora(row: dict) -> LoRA:
    return LoRA(8, alpha=16, targets=TARGETS[row["targets"]], dropout=row["dropout"])


def _predicted(row: dict) -> int:
    cfg = SHAPES[row["family"]]
    terms = tune_lora_saved_terms(cfg, _lora(row), row["micro_batch_size"], row["seq_len"],
                                  checkpointing=row["checkpointing"], device="cpu",
                                  output_adapter=row["output_adapter"], buffers=False)
    if row["loss"] == "chunked":
        terms = with_chunked_loss(terms, cfg, row["micro_batch_size"], row["seq_len"],
                                  "bf16-true", implementation="torchtune", compiled=False)
    return int(sum(terms.values()))


def test_grid_covers_targets_bases_dropout_checkpointing_and_the_output_adapter() -> None:
    rows = DATA["saved"]
    assert len(rows) == 30
    assert {r["base_weights"] for r in rows} == {"bf16", "nf4"}
    assert {r["dropout"] for r in rows} == {0.0, 0.05}
    assert {r["checkpointing"] for r in rows} == {"none", "full"}
    assert any(r["output_adapter"] for r in rows) and any(r["loss"] == "chunked" for r in rows)


@pytest.mark.parametrize("row", DATA["saved"], ids=lambda r: "-".join(
    str(r[k]) for k in ("family", "targets", "base_weights", "dropout", "checkpointing",
                        "loss")))
def test_saved_bytes_match_torchtune_measurement_exactly(row: dict) -> None:
    assert _predicted(row) == row["saved_for_backward"]


def test_nf4_base_saves_what_bf16_base_saves() -> None:
    """linear_nf4 keeps only its NF4 weight, a parameter: QLoRA saves exactly what LoRA does."""
    rows = {(r["family"], r["targets"], r["dropout"], r["checkpointing"], r["loss"],
             r["base_weights"]): r["saved_for_backward"] for r in DATA["saved"]}
    pairs = [(k, rows[(*k[:-1], "bf16")]) for k in rows if k[-1] == "nf4"
             and (*k[:-1], "bf16") in rows]
    assert len(pairs) == 14 and all(rows[k] == v for k, v in pairs)


def test_eager_nf4_dequantization_holds_fourteen_bytes_per_weight() -> None:
    """Measured live bytes of one eager linear_nf4 forward: 14 n, or up to n / 32 fewer."""
    for m in DATA["nf4_dequantize"]:
        n = m["rows"] * m["cols"]
        assert n * NF4_DEQUANTIZE_BYTES_PER_ELEMENT - n // 32 <= m["measured"] <= 14 * n


def test_block_terms_by_hand_q_v_no_dropout() -> None:
    # T = 96 tokens, d = 256, 4 heads of 64 (2 kv heads expanded), f = 512, r = 8, bf16.
    t = tune_lora_block_saved_terms(TINY, LoRA(8, targets=("q", "v")), 2, 48)
    assert t == {
        "norm1_input": 96 * 256 * 4, "norm1_stats": 96 * 4,
        "lora_attn_a_input": 96 * 256 * 2,  # the norm's bf16 output, shared by q's and v's A
        "attn_q": 96 * 256 * 2, "attn_k_v": 2 * 96 * 256 * 2, "attn_out": 96 * 256 * 2,
        "attn_lse": 2 * 4 * 48 * 4, "norm2_input": 96 * 256 * 4, "norm2_stats": 96 * 4,
        "mlp_activations": 3 * 96 * 512 * 2, "lora_b_input": 2 * 96 * 8 * 2}


def test_first_block_keeps_no_norm_or_masks_and_o_only_keeps_the_sdpa_output() -> None:
    first = tune_lora_block_saved_terms(TINY, LoRA(8, targets=("o",), dropout=0.1), 2, 48,
                                        first=True, device="cuda")
    assert "norm1_input" not in first and "attn_q" not in first
    assert first["lora_o_a_input"] == 96 * 256 * 2  # its dropout's output
    assert "lora_o_dropout_mask" not in first  # the SDPA output needs no gradient
    later = tune_lora_block_saved_terms(TINY, LoRA(8, targets=("o",), dropout=0.1), 2, 48,
                                        device="cuda")
    assert later["lora_o_dropout_mask"] == 96 * 256 * 1  # bool on CUDA
    o_only = tune_lora_block_saved_terms(TINY, LoRA(8, targets=("o",)), 2, 48, first=True)
    assert o_only["lora_o_a_input"] == 96 * 256 * 2


def test_down_adapter_keeps_the_mlp_product_and_checkpointing_keeps_layer_inputs() -> None:
    t = tune_lora_block_saved_terms(TINY, LoRA(8, targets=("q", "gate", "up", "down")), 1, 10,
                                    device="cpu")
    assert t["lora_down_a_input"] == 10 * 512 * 2 and t["lora_mlp_a_input"] == 10 * 256 * 2
    assert tune_lora_block_saved_terms(TINY, LoRA(8), 1, 10, checkpointing=True) == {
        "block_input": 10 * 256 * 2}


def test_nf4_linear_bytes_by_hand() -> None:
    # torchao to_nf4 of a 4096 x 4096 bf16 weight: 8,388,608 code bytes, 262,144 int8 scalers,
    # 1,024 bf16 factors, the bf16 mean and 16 bf16 levels
    assert nf4_linear_bytes(4096, 4096) == 8_388_608 + 262_144 + 2_048 + 2 + 32
    assert nf4_dequantize_bytes(TINY) == 14 * 512 * 256


def test_model_states_by_hand_for_llama_3_1_8b_qlora() -> None:
    cfg = GPTConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, mlp_hidden=14336,
                    vocab_size=128256, block_size=131072, tie_embeddings=False, **_LLAMA)
    lora = LoRA(8, targets=("q", "v", "o", "gate", "up", "down"))
    W, G, O, temp = tune_lora_model_states(cfg, lora, "nf4", "adamw", "cuda", None)
    # adapters per layer: q 8 x (4096 + 4096), v 8 x (4096 + 1024), o 8 x 8192,
    # gate/up 8 x (4096 + 14336) each, down the same: 65,536 + 40,960 + 65,536 + 3 x 147,456
    n = 32 * (65_536 + 40_960 + 65_536 + 3 * 147_456)
    assert 2 * n == G and 4 * n == O and temp == 2 * n
    linears = 2 * nf4_linear_bytes(4096, 4096) + 2 * nf4_linear_bytes(1024, 4096) \
        + 3 * nf4_linear_bytes(14336, 4096)
    rest = 2 * 128256 * 4096 + 65 * 4096  # embedding and head, 65 norms, bf16
    assert 32 * linears + rest * 2 + 2 * n == W


def test_training_memory_routes_torchtune_lora_and_counts_the_parts() -> None:
    lora = LoRA(8, targets=("q", "v"))
    m = sp.training_memory(TINY, micro_batch_size=2, seq_len=48, precision="bf16-true",
                           implementation="torchtune", lora=lora, device="cpu")
    saved = tune_lora_saved_terms(TINY, lora, 2, 48, device="cpu")
    W, G, O, _ = tune_lora_model_states(TINY, lora, None, "adamw", "cpu", None)
    TV = 96 * 512
    # backward start: every saved tensor, the log-softmax's and the logits' fp32 gradients
    assert m.peak_moment == "backward_start"
    assert m.tensor_peak == W + G + O + sum(saved.values()) + 2 * TV * 4


def test_qlora_with_checkpointing_peaks_in_a_layer_backward_dequantizing() -> None:
    lora = LoRA(8, targets=("q", "v"))
    _, _, _, saved, _, _, _, moments = tune_lora_stage_parts(
        TINY, lora, "nf4", 2, 48, "adamw", "full", "cpu", None, False)
    loss_side = saved["log_softmax"] + saved["targets"]
    block = sum(tune_lora_block_saved_terms(TINY, lora, 2, 48, device="cpu").values())
    assert moments["recompute"] == sum(saved.values()) - loss_side + block + 14 * 512 * 256


def test_chunked_loss_replaces_the_loss_side() -> None:
    lora = LoRA(8, targets=("q", "v"))
    _, _, _, saved, _, _, _, moments = tune_lora_stage_parts(
        TINY, lora, "bf16", 2, 48, "adamw", "none", "cpu", None, False,
        StepSwitches(loss="chunked"))
    assert saved["log_softmax"] == 96 * 512 * 4 and saved["targets"] == 96 * 8 + 8 * 4 + 8
    assert "head_backward" in moments


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"compile": True}, "loss=.standard."),
    ({"base_weights": "nf4-dq"}, "NF4Tensor"),
    ({"precision": "32-true"}, "precision='bf16-true'"),
    ({"lora": LoRA(8, targets=("q", "gate"))}, "gate, up and down together"),
    ({"lora": LoRA(8, targets=("gate", "up", "down"))}, "attention target"),
    ({"activation_offload": True}, "checkpointing='full'"),  # the recipe offloads only then
    ({"optimizer": "sgd"}, "optimizer='sgd'"),  # its recipes' AdamW states are what is counted
])
def test_refuses_what_is_not_modelled_by_name(kwargs: dict, match: str) -> None:
    args = {"micro_batch_size": 1, "seq_len": 8, "precision": "bf16-true",
            "implementation": "torchtune", "lora": LoRA(8, targets=("q", "v"))} | kwargs
    with pytest.raises(ScaleplanError, match=match):
        sp.training_memory(TINY, **args)


def test_check_refuses_a_qkv_bias_layout() -> None:
    with pytest.raises(ScaleplanError, match="qkv_bias"):
        check_tune_lora(GPTConfig(qkv_bias=True, mlp="swiglu"), LoRA(8), None,
                        precision="bf16-true", parallelism=None)


@pytest.mark.torch
@pytest.mark.parametrize(("family", "targets", "base", "dropout", "ckpt", "output"), [
    ("llama3_2", "qv", "bf16", 0.0, False, False),
    ("llama3_2", "all", "nf4", 0.05, False, False),
    ("llama3_2", "o", "nf4", 0.0, True, False),
    ("llama3_1", "all", "bf16", 0.05, False, True),
])
def test_live_torchtune_lora_measurement(family: str, targets: str, base: str, dropout: float,
                                         ckpt: bool, output: bool) -> None:
    pytest.importorskip("torchtune")
    pytest.importorskip("torchao")
    from scaleplan.reference.tune_lora_measure import measure_tune_lora

    lora = LoRA(8, alpha=16, targets=TARGETS[targets], dropout=dropout)
    m = measure_tune_lora(SHAPES[family], family, lora, micro_batch_size=1, seq_len=40,
                          base_weights=base, checkpointing=ckpt, output_adapter=output)
    row = {"family": family, "targets": targets, "dropout": dropout, "micro_batch_size": 1,
           "seq_len": 40, "checkpointing": "full" if ckpt else "none", "loss": "standard",
           "output_adapter": output}
    assert m["saved_for_backward"] == _predicted(row)


@pytest.mark.torch
def test_torchao_nf4_sizes_and_adapter_counts_match_the_model() -> None:
    pytest.importorskip("torchtune")
    torch = pytest.importorskip("torch")
    from scaleplan.reference.tune_lora_measure import build_tune_lora

    lora = LoRA(8, targets=("q", "v", "o", "gate", "up", "down"))
    model = build_tune_lora(TINY, "llama3_2", lora, base_weights="nf4")
    nbytes = 0
    for p in model.parameters():
        if hasattr(p, "__tensor_flatten__"):  # NF4Tensor: its inner tensors
            nbytes += sum(getattr(p, k).untyped_storage().nbytes()
                          for k in p.__tensor_flatten__()[0])
        else:
            assert p.dtype == torch.bfloat16
            nbytes += p.untyped_storage().nbytes()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    W, G, _, _ = tune_lora_model_states(TINY, lora, "nf4", "adamw", "cpu", None)
    assert (nbytes, 2 * trainable) == (W, G)


STEPS = json.loads((Path(__file__).parent / "data" / "tune_lora_steps.json").read_text())


@pytest.mark.parametrize("row", STEPS, ids=lambda r: f"{r['base_weights']}-{r['checkpointing']}"
                         f"-{r['loss']}")
def test_whole_step_peaks_replay_within_3_percent(row: dict) -> None:
    # measured by python -m scaleplan.reference.tune_lora_measure --steps: torchtune 0.6.1's
    # lora_llama3_2 on CPU, the recipe's loss step, backward, for-loop AdamW, zero_grad
    lora = LoRA(8, alpha=16, targets=TARGETS[row["targets"]])
    m = sp.training_memory(SHAPES[row["family"]], micro_batch_size=row["micro_batch_size"],
                           seq_len=row["seq_len"], precision="bf16-true", device="cpu",
                           optimizer_impl="for-loop", implementation="torchtune", lora=lora,
                           base_weights=row["base_weights"],
                           checkpointing=row["checkpointing"], loss=row["loss"])
    assert m.tensor_peak == pytest.approx(row["peak_bytes"], rel=0.03)


@pytest.mark.torch
def test_live_qlora_step_peak_within_3_percent() -> None:
    pytest.importorskip("torchtune")
    pytest.importorskip("torchao")
    from scaleplan.reference.tune_lora_measure import measure_tune_lora_step

    lora = LoRA(4, alpha=8, targets=("q", "k", "v", "o"), dropout=0.05)
    cfg = SHAPES["llama3_1"]  # a shape and targets the committed step grid does not hold
    measured = measure_tune_lora_step(cfg, "llama3_1", lora, micro_batch_size=1, seq_len=40,
                                      base_weights="nf4", checkpointing=True)
    m = sp.training_memory(cfg, micro_batch_size=1, seq_len=40, precision="bf16-true",
                           device="cpu", optimizer_impl="for-loop", implementation="torchtune",
                           lora=lora, base_weights="nf4", checkpointing="full")
    assert m.tensor_peak == pytest.approx(measured["peak_bytes"], rel=0.03)


COMPILED = json.loads((Path(__file__).parent / "data" / "tune_lora_compiled.json").read_text())


@pytest.mark.parametrize("row", COMPILED, ids=lambda r: f"{r['targets']}-{r['base_weights']}")
def test_compiled_saved_bytes_match_torchtune_measurement_exactly(row: dict) -> None:
    # measured by python -m scaleplan.reference.tune_lora_measure --compiled: compile_model and
    # compile_loss as lora_finetune_single_device calls them, the saved tensors read from the
    # autograd graph
    cfg = SHAPES[row["family"]]
    terms = tune_lora_saved_terms(cfg, LoRA(8, targets=TARGETS[row["targets"]]), 2, 48,
                                  device="cpu", compiled=True,
                                  base_weights=row["base_weights"], buffers=False)
    terms = with_chunked_loss(terms, cfg, 2, 48, "bf16-true", implementation="torchtune",
                              compiled=True)
    assert sum(terms.values()) == row["saved_for_backward"]


def test_compiled_block_by_hand_q_v_and_nf4() -> None:
    # what the partition of one compiled later layer keeps (T = 96, d = 256, f = 512, r = 8):
    # layer input, two fp32 rstd, the first norm's output, q, expanded k and v, SDPA's output
    # and log-sum-exp, the residual, the gate's and up's outputs, two lora_b inputs
    t = tune_lora_compiled_block_terms(TINY, LoRA(8, targets=("q", "v")), 2, 48)
    assert sum(t.values()) == (7 * 96 * 256 * 2 + 2 * 96 * 4 + 2 * 4 * 48 * 4
                               + 2 * 96 * 512 * 2 + 2 * 96 * 8 * 2)
    first = tune_lora_compiled_block_terms(TINY, LoRA(8, targets=("q", "v")), 2, 48,
                                           first=True, base_weights="nf4")
    # the first layer keeps no input and no rstd of it, and of the dequantized weights only
    # those whose input needs a gradient: o, w1, w2, w3
    assert first["dequantized_weights"] == 2 * (256 * 256 + 3 * 512 * 256)
    assert "block_input" not in first and "norm1_stats" not in first


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"loss": "standard"}, "loss='standard'"),
    ({"lora": LoRA(8, targets=("q", "v"), dropout=0.05)}, "dropout"),
    ({"lora": LoRA(8, targets=("o",))}, "q, k or v"),
])
def test_compile_refuses_what_was_not_measured(kwargs: dict, match: str) -> None:
    args = {"micro_batch_size": 1, "seq_len": 8, "precision": "bf16-true",
            "implementation": "torchtune", "lora": LoRA(8, targets=("q", "v")),
            "compile": True, "loss": "chunked"} | kwargs
    with pytest.raises(ScaleplanError, match=match):
        sp.training_memory(TINY, **args)


@pytest.mark.torch
@pytest.mark.slow
def test_live_compiled_qlora_measurement() -> None:
    pytest.importorskip("torchtune")
    pytest.importorskip("torchao")
    from scaleplan.reference.tune_lora_measure import measure_tune_lora_compiled

    lora = LoRA(8, targets=("q", "k", "v", "o", "gate", "up", "down"))
    m = measure_tune_lora_compiled(TINY, "llama3_2", lora, micro_batch_size=1, seq_len=40,
                                   base_weights="nf4")
    terms = tune_lora_saved_terms(TINY, lora, 1, 40, device="cpu", compiled=True,
                                  base_weights="nf4", buffers=False)
    terms = with_chunked_loss(terms, TINY, 1, 40, "bf16-true", implementation="torchtune",
                              compiled=True)
    assert m["saved_for_backward"] == sum(terms.values())


def test_output_adapter_adds_its_two_tensors_and_sizes_are_whole_bytes() -> None:
    lora = LoRA(8, targets=("q", "v"))
    plain = tune_lora_model_states(TINY, lora, "bf16", "adamw", "cuda", None)
    head = tune_lora_model_states(TINY, lora, "bf16", "adamw", "cuda", None,
                                  output_adapter=True)
    extra = 8 * 256 + 8 * 512  # lora_a (8, d) and lora_b (V, 8) of the output projection
    assert [h - p for h, p in zip(head, plain, strict=True)] == [2 * extra, 2 * extra,
                                                                  4 * extra, 2 * extra]
    assert type(nf4_linear_bytes(4096, 4096)) is int  # bytes, not a float


def test_compiled_checkpointed_qlora_moments_by_hand() -> None:
    # TINY (d 256, V 512, 2 layers, RoPE cache 128 x 64), 2 x 48 tokens, q and v adapted
    lora = LoRA(8, targets=("q", "v"))
    _, _, _, saved, _, _, _, moments = tune_lora_stage_parts(
        TINY, lora, "nf4", 2, 48, "adamw", "full", "cpu", None, False,
        StepSwitches(loss="chunked"), True)
    T = 96
    loss = T * 512 * 2 + (T * 8 + 8) + 2 * T * 4  # bf16 chunk logits, labels + count, lse
    S = 2 * T * 256 * 2 + T * 256 * 4 + T * 4 + loss + 128 * 64 * 4 + 32 * 4
    assert sum(saved.values()) == S == 329_736
    chunk = 2 * 6 * 512 * 2  # one of 8 chunks of 6 tokens, its logits' bf16 gradient
    block = 546_048 + 2 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 512 * 256)  # + dequantized
    assert moments == {"forward_end": S, "backward_start": S + chunk,
                       "head_backward": S - loss + 6 * chunk,
                       "recompute": S - loss + block,
                       "optimizer_step": 2 * 2048 * 2}  # for-loop: two of the largest


def test_eager_qlora_moments_by_hand() -> None:
    lora = LoRA(8, targets=("q", "v"))
    _, _, _, saved, copies, cached, held, moments = tune_lora_stage_parts(
        TINY, lora, "nf4", 2, 48, "adamw", "none", "cpu", "foreach", True)
    S = sum(saved.values())
    TV = 96 * 512
    assert (copies, cached, held) == (0, 0, 0)
    assert moments == {"forward_end": S + 4 * TV, "backward_start": S + 8 * TV,
                       "optimizer_step": 2 * 2 * (2048 + 2048 + 2048 + 1024),  # foreach
                       "recompute": S - saved["log_softmax"] - saved["targets"]
                       + 14 * 512 * 256}


def test_optimizer_temporaries_by_implementation() -> None:
    lora = LoRA(8, targets=("q", "v"))
    n = 2 * (2048 + 2048 + 2048 + 1024)  # 2 layers: q's A and B, v's A (8 x 256), B (128 x 8)
    temps = [tune_lora_model_states(TINY, lora, "bf16", "adamw", device, impl)[3]
             for device, impl in (("cuda", None), ("cpu", None), ("cuda", "fused"))]
    assert temps == [2 * n, 2 * 2 * 2048, 0]


def test_compiled_block_with_one_kv_head_and_q_alone() -> None:
    one_kv = GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=256, mlp_hidden=512,
                       vocab_size=512, **_LLAMA)
    t = tune_lora_compiled_block_terms(one_kv, LoRA(8, targets=("q",)), 1, 10)
    assert t["attn_k_v"] == 2 * 10 * 64 * 2  # one kv head: the expand is a view
    assert t["norm1_output"] == 10 * 256 * 2 and "norm2_output" not in t
    assert t["mlp_activations"] == 2 * 10 * 512 * 2


def test_output_adapter_saved_terms_by_hand() -> None:
    # apply_lora_to_output with dropout: its dropout's output (T d e) and, on CUDA, a bool mask
    lora = LoRA(8, targets=("q", "v"), dropout=0.1)
    t = tune_lora_saved_terms(TINY, lora, 1, 10, output_adapter=True, device="cuda")
    assert (t["lora_output_a_input"], t["lora_output_dropout_mask"],
            t["lora_output_b_input"]) == (10 * 256 * 2, 10 * 256, 10 * 8 * 2)
    assert t["rope_buffers"] == 128 * 64 * 4 + 32 * 4 and t["final_norm_stats"] == 10 * 4
