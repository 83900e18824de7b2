"""litgpt's LoRA / QLoRA step (`scaleplan.memory.litgpt_lora_terms`): against litgpt 0.5.13's own
LoRA GPT on CPU (torch tests), against the committed measurements of
``python -m scaleplan.reference.litgpt_lora_measure --grid`` (tests/data/litgpt_lora_memory.json,
replayed without torch), and by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan import GPTConfig, LoRA, training_memory
from scaleplan.errors import ScaleplanError
from scaleplan.memory.litgpt_lora_states import (
    PAGED_MIN_NUMEL,
    litgpt_bnb_tensor_peak,
    litgpt_lora_model_states,
    litgpt_lora_moments,
)
from scaleplan.memory.litgpt_lora_terms import (
    litgpt_bnb_saved_inputs,
    litgpt_lora_adapter_shapes,
    litgpt_lora_block_saved_terms,
    litgpt_lora_loss_saved_terms,
    litgpt_lora_saved_terms,
    litgpt_lora_switches,
)

REPLAY = json.loads((Path(__file__).parent / "data" / "litgpt_lora_memory.json").read_text())
_LLAMA = {"bias": False, "norm": "rmsnorm", "position": "rope", "tie_embeddings": False}
# the harness's shapes (scaleplan.reference.litgpt_measure.GRID_SHAPES), repeated here so that
# the replay needs no torch
SHAPES = {
    "tinyllama": GPTConfig(n_layer=2, n_head=8, n_kv_head=2, n_embd=128, mlp_hidden=352,
                           vocab_size=512, block_size=256, mlp="swiglu", **_LLAMA),
    "llama": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=128, mlp_hidden=512,
                       vocab_size=512, block_size=256, mlp="swiglu", **_LLAMA),
    # scaleplan.reference.litgpt_bnb042.WIDE_LLAMA: the head's backward is the worst moment
    "llama-wide": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, head_dim=128, n_embd=512,
                            mlp_hidden=1024, vocab_size=4096, block_size=256, mlp="swiglu",
                            **_LLAMA),
}
ALL = ("q", "k", "v", "o", "gate", "up", "down", "head")
LORAS = {"qv": LoRA(8, alpha=16, targets=("q", "v")),
         "qv-dropout": LoRA(8, alpha=16, targets=("q", "v"), dropout=0.05),
         "all": LoRA(4, alpha=16, targets=ALL),
         "all-dropout": LoRA(4, alpha=16, targets=ALL, dropout=0.05)}
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16, block_size=64,
                 mlp="swiglu", **_LLAMA)


def _saved(name: str, which: str, b: int, s: int, precision: str, base: str | None) -> int:
    terms = litgpt_lora_saved_terms(SHAPES[name], LORAS[which], b, s, precision=precision,
                                    base_weights=base)
    return int(sum(terms.values()))


# replayed measurements (no torch)

def test_replay_covers_the_grid() -> None:
    saved = REPLAY["saved"]
    assert len(saved) >= 36 and len(REPLAY["steps"]) >= 5
    assert {r["precision"] for r in saved} == {"32-true", "bf16-true"}
    assert {r["lora"] for r in saved} == set(LORAS)
    assert {r["base_weights"] for r in saved} == {None, "nf4"}


@pytest.mark.parametrize("row", REPLAY["saved"], ids=lambda r: "-".join(
    str(r[k]) for k in ("model", "precision", "lora", "base_weights", "micro_batch_size",
                        "seq_len")))
def test_saved_for_backward_matches_litgpt_exactly(row: dict[str, Any]) -> None:
    assert _saved(row["model"], row["lora"], row["micro_batch_size"], row["seq_len"],
                  row["precision"], row["base_weights"]) == row["measured"]


@pytest.mark.parametrize("row", REPLAY["steps"], ids=lambda r: "-".join(
    str(r[k]) for k in ("model", "precision", "lora", "base_weights")))
def test_whole_step_peak_within_one_percent(row: dict[str, Any]) -> None:
    m = training_memory(SHAPES[row["model"]], micro_batch_size=row["micro_batch_size"],
                        seq_len=row["seq_len"], precision=row["precision"],
                        implementation="litgpt", device="cpu", optimizer_impl="for-loop",
                        lora=LORAS[row["lora"]], base_weights=row["base_weights"])
    assert abs(m.tensor_peak / row["measured"] - 1) < 0.01


# by hand

def test_targets_map_onto_litgpts_switches() -> None:
    assert litgpt_lora_switches(LoRA(8, targets=ALL)) == dict.fromkeys(
        ("lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp", "lora_head"),
        True)
    assert litgpt_lora_switches(LoRA(8, targets=("q", "v"))) == {
        "lora_query": True, "lora_key": False, "lora_value": True, "lora_projection": False,
        "lora_mlp": False, "lora_head": False}
    with pytest.raises(ScaleplanError, match="adapts its MLP whole"):
        litgpt_lora_switches(LoRA(8, targets=("q", "gate", "up")))


def test_block_terms_by_hand_for_q_and_v_with_dropout() -> None:
    # T = 2 x 4 tokens, d 8, a h = 8, kv h = 8 (two heads of 4, no GQA), f 16, r 2, bf16 (2 B);
    # a block that is not the first, CPU (the dropout mask in bf16)
    t = litgpt_lora_block_saved_terms(TINY, LoRA(2, targets=("q", "v"), dropout=0.1), 2, 4,
                                      precision="bf16-true")
    T = 8
    assert t["norm1_input"] == T * 8 * 4 and t["norm1_stats"] == T * 4  # fp32 x and rsqrt
    assert t["norm1_weight_fp32"] == 8 * 4  # weight.float() of a bf16 weight
    assert "norm1_normalized" not in t and "qkv_input" not in t and "proj_input" not in t
    assert t["lora_qkv_a_input"] == T * 8 * 2  # the dropout output
    assert t["lora_qkv_dropout_mask"] == T * 8 * 2
    assert t["lora_qkv_a_output"] == T * (2 * 2) * 2  # r per enabled projection
    assert t["lora_qkv_pad_index"] == (8 + 8) * 8  # int64 index of q's and v's columns
    assert t["lora_qkv_b_output"] == T * (8 + 8) * 2
    assert t["mlp_activations"] == 3 * T * 16 * 2  # fc_1 out, silu out, fc_2 out
    first = litgpt_lora_block_saved_terms(TINY, LoRA(2, targets=("q", "v"), dropout=0.1), 2, 4,
                                          precision="bf16-true", first=True)
    assert not any(k.startswith("norm1_") for k in first)
    assert "lora_qkv_dropout_mask" not in first  # the block's input needs no gradient


def test_block_terms_by_hand_for_every_linear_without_dropout() -> None:
    t = litgpt_lora_block_saved_terms(TINY, LoRA(2, targets=ALL), 1, 4, precision="32-true")
    T = 4
    assert t["proj_input"] == T * 8 * 4  # proj's A reads the attention output copy
    assert t["mlp_activations"] == 4 * T * 16 * 4  # the product is proj's A's input
    assert t["lora_mlp_a_input"] == T * 8 * 4  # norm_2's output, shared by fc_1's and fc_2's A
    assert t["lora_mlp_a_output"] == 3 * T * 2 * 4
    assert t["lora_proj_a_output"] == T * 2 * 4
    assert "lora_qkv_pad_index" not in t  # q, k and v: no zero pad
    assert "norm1_weight_fp32" not in t  # fp32 weights: .float() is the weight itself


def test_loss_terms_by_hand() -> None:
    # s = 300: head chunks of 128, 128, 44; the logits fp32 after Fabric's convert_output
    terms = litgpt_lora_loss_saved_terms(TINY, 2, 300, precision="bf16-true")
    assert terms == {"log_softmax": 2 * 299 * 16 * 4, "targets": 2 * 299 * 8,
                     "loss_weight_totals": 3 * 4, "loss_count": 8}
    assert litgpt_lora_loss_saved_terms(TINY, 1, 10, precision="32-true")["targets"] == 80
    assert litgpt_lora_loss_saved_terms(TINY, 1, 10, precision="32-true",
                                        ids_saved=True)["targets"] == 0


def test_qlora_embedding_terms_by_hand() -> None:
    # StableEmbedding: trainable, so the ids (int64) are saved and its LayerNorm keeps its
    # bf16 input and (on a GPU) fp32 mean and rstd; the first block saves as the others
    lora = LoRA(2, targets=("q", "v"))
    plain = litgpt_lora_saved_terms(TINY, lora, 2, 4, precision="bf16-true", device="cuda")
    q = litgpt_lora_saved_terms(TINY, lora, 2, 4, precision="bf16-true", base_weights="nf4",
                                device="cuda")
    assert q["token_ids"] == 8 * 8
    assert q["embedding_norm_input"] == 8 * 8 * 2 and q["embedding_norm_stats"] == 2 * 8 * 4
    assert q["norm1_input"] == 2 * plain["norm1_input"]  # both blocks' first norms
    assert litgpt_lora_saved_terms(TINY, lora, 2, 4, precision="bf16-true",
                                   base_weights="nf4", bnb_keeps_input=True
                                   )["bnb_mlp_product"] == 2 * 8 * 16 * 2


def test_bnb_042_kept_inputs_by_hand_for_llama_2_7b() -> None:
    # Llama 2 7B, b 2, s 512 (T 1024), r 32 on q and v with dropout 0.05, bf16: every
    # layer's qkv input (d 4096), attention output (4096), MLP input (4096) and product
    # (11008), and the head's input: 2 bytes each
    terms = litgpt_bnb_saved_inputs(GPTConfig.preset("llama-2-7b"),
                                    LoRA(32, targets=("q", "v"), dropout=0.05), 2, 512)
    T = 1024
    assert terms == {"bnb_qkv_input": 32 * T * 4096 * 2, "bnb_proj_input": 32 * T * 4096 * 2,
                     "bnb_mlp_input": 32 * T * 4096 * 2,
                     "bnb_mlp_product": 32 * T * 11008 * 2, "bnb_head_input": T * 4096 * 2}
    no_dropout = litgpt_bnb_saved_inputs(GPTConfig.preset("llama-2-7b"),
                                         LoRA(32, targets=("q", "v")), 2, 512)
    assert no_dropout["bnb_qkv_input"] == 0  # q's and v's A keep that very tensor


def test_paged_optimizer_states_by_hand_for_tinyllama() -> None:
    # TinyLlama 1.1B, r 32 on every linear and the head: per layer A qkv (96, 2048) and B
    # (2560, 32), proj (32, 2048) and (2048, 32), fc_1 and fc_2 (32, 2048) and (5632, 32),
    # proj (32, 5632) and (2048, 32); head (32, 2048) and (32000, 32). PagedAdamW keeps 8
    # bytes per element, paged (not counted on a GPU) from 100,000 elements on.
    cfg = GPTConfig.preset("tinyllama-1.1b")
    lora = LoRA(32, targets=ALL)
    small = 81_920 + 65_536 + 65_536 + 2 * 65_536 + 65_536  # the tensors under 10^5 per layer
    _, _, states, temp = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cuda",
                                                  None)
    assert states == 8 * (22 * small + 65_536) and temp == 0
    assert PAGED_MIN_NUMEL == 100_000
    _, _, states_cpu, _ = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cpu", None)
    adapters = 22 * sum(r * c for r, c in litgpt_lora_adapter_shapes(cfg, lora)) \
        + 32 * 2048 + 32000 * 32
    assert states_cpu == 8 * adapters  # bitsandbytes falls back to ordinary buffers on CPU


def test_qlora_weights_and_gradients_by_hand() -> None:
    # 1 layer, d 8, f 16, V 16, nf4 (4 bits, an fp32 absmax per 64 weights and the 16-level
    # fp32 code per tensor): qkv 24 x 8, proj 8 x 8, fc_1, fc_2 16 x 8, proj 8 x 16, head 16 x 8
    cfg = TINY.model_copy(update={"n_layer": 1})
    lora = LoRA(2, targets=("q", "v"))
    weights, grads, _, _ = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cuda",
                                                    None)
    linears = [192, 64, 128, 128, 128, 128]
    nf4 = sum(n // 2 + 4 * -(-n // 64) + 64 for n in linears)
    rest = 128 + 3 * 8  # wte and the three norms, bf16
    adapters = 4 * 8 + 16 * 2
    swap = 128 + 2 * 8  # the swapped-out table the optimizer holds; StableEmbedding's norm
    assert weights == nf4 + 2 * rest + 2 * adapters + 2 * swap
    assert grads == 2 * adapters + 2 * (128 + 2 * 8)  # and the new embedding's, never zeroed


def test_moments_by_hand() -> None:
    # b 2, s 200: head chunks 128 and 72; V 16, d 8, bf16 (e 2), fp32 logits after Fabric
    m = litgpt_lora_moments(TINY, 2, 200, precision="bf16-true",
                            base_weights="nf4", S=100_000, temp=7)
    lsm = 2 * 199 * 16 * 4
    assert m["forward_end"] == max(100_000 - lsm + 2 * 200 * 16 * (2 + 4),
                                   100_000 + 2 * 71 * 16 * 4)
    assert m["backward_start"] == 100_000 + 2 * (2 * 128) * 16 * 4
    # the head's backward: the loss's saved tensors freed (log-softmax, 2 x 199 int64
    # targets, 2 fp32 weight totals, the int64 count), every chunk's gradient back in bf16
    # (2 x 200 x 16 x 2) and the head dequantized into fp16 and bf16 (16 x 8 x 4)
    loss = lsm + 2 * 199 * 8 + 2 * 4 + 8
    assert m["head_backward"] == 100_000 - loss + 2 * 200 * 16 * 2 + 16 * 8 * (2 + 2)
    assert m["optimizer_step"] == 7


def test_litgpt_lora_refusals_name_the_option() -> None:
    lora = LoRA(8, targets=("q", "v"))
    llama = GPTConfig.preset("llama-2-7b")
    with pytest.raises(ScaleplanError, match="precision='bf16-mixed'"):
        training_memory(llama, micro_batch_size=1, seq_len=64, precision="bf16-mixed",
                        implementation="litgpt", lora=lora)
    with pytest.raises(ScaleplanError, match="checkpointing='full'"):
        training_memory(llama, micro_batch_size=1, seq_len=64, precision="bf16-true",
                        implementation="litgpt", lora=lora, checkpointing="full")
    with pytest.raises(ScaleplanError, match="mlp='geglu'"):
        training_memory(GPTConfig.preset("gemma-2b"), micro_batch_size=1, seq_len=64,
                        precision="bf16-true", implementation="litgpt", lora=lora)
    with pytest.raises(ScaleplanError, match="needs precision='bf16-true'"):
        training_memory(llama, micro_batch_size=1, seq_len=64, precision="32-true",
                        implementation="litgpt", lora=lora, base_weights="nf4")
    with pytest.raises(ScaleplanError, match="PagedAdamW"):
        training_memory(llama, micro_batch_size=1, seq_len=64, precision="bf16-true",
                        implementation="litgpt", lora=lora, base_weights="nf4",
                        optimizer="sgd")
    with pytest.raises(ScaleplanError, match="without q, k or v"):
        training_memory(llama, micro_batch_size=1, seq_len=64, precision="bf16-true",
                        implementation="litgpt", lora=LoRA(8, targets=("o",)))
    with pytest.raises(ScaleplanError, match="implementation='litgpt' only"):
        training_memory(llama, micro_batch_size=1, seq_len=64, implementation="hf",
                        lora=LoRA(8, targets=("q", "head")))


# against litgpt's own LoRA model on CPU

LIVE = [("llama", "bf16-true", "qv-dropout", 2, 48), ("llama", "32-true", "all", 1, 160),
        ("tinyllama", "bf16-true", "all-dropout", 2, 48), ("tinyllama", "32-true", "qv", 2, 48)]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "precision", "which", "b", "s"), LIVE)
def test_saved_for_backward_matches_litgpts_lora_model(name: str, precision: str, which: str,
                                                        b: int, s: int) -> None:
    pytest.importorskip("litgpt")
    from scaleplan.reference.litgpt_lora_measure import measure_litgpt_lora

    measured = measure_litgpt_lora(SHAPES[name], LORAS[which], micro_batch_size=b, seq_len=s,
                                   precision=precision)
    assert _saved(name, which, b, s, precision, None) == sum(measured.values())


@pytest.mark.torch
def test_qlora_saved_for_backward_matches_litgpt_with_bitsandbytes() -> None:
    pytest.importorskip("litgpt")
    pytest.importorskip("bitsandbytes")
    from scaleplan.reference.litgpt_lora_measure import measure_litgpt_lora

    measured = measure_litgpt_lora(SHAPES["tinyllama"], LORAS["all-dropout"],
                                   micro_batch_size=2, seq_len=48, base_weights="nf4")
    assert _saved("tinyllama", "all-dropout", 2, 48, "bf16-true", "nf4") == sum(
        measured.values())


@pytest.mark.torch
def test_adapter_shapes_are_litgpts() -> None:
    torch = pytest.importorskip("torch")
    lit = pytest.importorskip("litgpt.lora")
    from scaleplan.reference.litgpt_lora_measure import litgpt_lora_config

    cfg, lora = SHAPES["tinyllama"], LORAS["all"]
    with torch.device("meta"):
        model = lit.GPT(lit.Config(**litgpt_lora_config(cfg, lora)))
    shapes = sorted(tuple(p.shape) for n, p in model.named_parameters()
                    if "lora_" in n and ".h.0." in n)
    assert sorted(litgpt_lora_adapter_shapes(cfg, lora)) == shapes


@pytest.mark.torch
def test_whole_step_peak_matches_litgpt_within_one_percent() -> None:
    pytest.importorskip("litgpt")
    from scaleplan.reference.litgpt_lora_measure import measure_litgpt_lora_step

    cfg, lora = SHAPES["llama"], LORAS["qv-dropout"]
    peak, _ = measure_litgpt_lora_step(cfg, lora, micro_batch_size=2, seq_len=48)
    m = training_memory(cfg, micro_batch_size=2, seq_len=48, precision="bf16-true",
                        implementation="litgpt", device="cpu", optimizer_impl="for-loop",
                        lora=lora)
    assert abs(m.tensor_peak / peak - 1) < 0.01


def test_memory_grid_agrees_with_training_memory() -> None:
    np = pytest.importorskip("numpy")
    from scaleplan.memory.limits import memory_grid

    kw: dict[str, Any] = {"precision": "bf16-true", "implementation": "litgpt",
                          "lora": LORAS["qv-dropout"], "base_weights": "nf4"}
    grid = memory_grid(SHAPES["llama"], micro_batch_size=np.array([[1], [2]]),
                       seq_len=np.array([[100, 200]]), what="tensor_peak", **kw)
    for i, b in enumerate((1, 2)):
        for j, s in enumerate((100, 200)):
            m = training_memory(SHAPES["llama"], micro_batch_size=b, seq_len=s, **kw)
            assert grid[i, j] == m.tensor_peak


# by hand: the edges mutation testing asks about

def test_lora_states_by_hand_with_a_head_adapter() -> None:
    # TINY with 1 layer: base 920 parameters (wte, head 128 each; qkv 192, proj 64, fc_1, fc_2,
    # proj 128 each; 3 norms of 8); r 2 on q and v: A 4 x 8, B 16 x 2; head: A 2 x 8, B 16 x 2
    cfg = TINY.model_copy(update={"n_layer": 1})
    lora = LoRA(2, targets=("q", "v", "head"))
    tensors = [32, 32, 16, 32]
    n = sum(tensors)
    expect_w, expect_g = 920 * 2 + n * 2, n * 2
    expect_o = 2 * n * 2 + 4 * len(tensors)  # two bf16 moments and a 4-byte step per tensor
    by_impl = {None: n * 2, "foreach": n * 2, "for-loop": 2 * 32 * 2, "fused": 0}
    for impl, temp in by_impl.items():
        assert litgpt_lora_model_states(cfg, lora, "bf16-true", None, "cuda", impl) == (
            expect_w, expect_g, expect_o, temp)
    assert litgpt_lora_model_states(cfg, lora, "32-true", None, "cpu", None)[3] == 2 * 32 * 4


def test_paged_from_exactly_a_hundred_thousand_elements() -> None:
    # r 8 on q of d 12,500: A 8 x 12,500 and B 12,500 x 8, 10^5 elements each: both paged
    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=12_500, mlp_hidden=16, vocab_size=16,
                    block_size=64, mlp="swiglu", **_LLAMA)
    lora = LoRA(8, targets=("q",))
    assert litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cuda", None)[2] == 0
    assert litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cpu", None)[2] == \
        8 * 200_000


def test_nf4_dq_base_holds_its_double_quantized_constants() -> None:
    from scaleplan.memory.quantized import linear_bytes

    cfg = TINY.model_copy(update={"n_layer": 1})
    lora = LoRA(2, targets=("q", "v"))
    w_nf4 = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cuda", None)[0]
    w_dq = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4-dq", "cuda", None)[0]
    shapes = [(24, 8), (8, 8), (16, 8), (16, 8), (8, 16), (16, 8)]
    assert w_dq - w_nf4 == sum(sum(linear_bytes("nf4-dq", r, c)) - sum(linear_bytes("nf4", r, c))
                               for r, c in shapes)


def test_forward_end_moments_by_hand() -> None:
    # 32-true, b 2, s 200 (chunks 128, 72): the loss's flat copy of the sliced last chunk wins
    m = litgpt_lora_moments(TINY, 2, 200, precision="32-true", base_weights=None,
                            S=10_000, temp=0)
    assert m["forward_end"] == 10_000 + 2 * 71 * 16 * 4
    assert "head_backward" not in m
    # b 1: no copy; the fp32 chunks (already the model's) less the log-softmax: 4 b V more
    m = litgpt_lora_moments(TINY, 1, 200, precision="32-true", base_weights=None,
                            S=10_000, temp=0)
    assert m["forward_end"] == 10_000 + 1 * 16 * 4


@pytest.mark.parametrize(("s", "chunks", "last"), [(128, 1, 128), (129, 2, 1), (256, 2, 128)])
def test_chunk_edges_by_hand(s: int, chunks: int, last: int) -> None:
    m = litgpt_lora_moments(TINY, 2, s, precision="bf16-true", base_weights="nf4", S=0,
                            temp=0)
    # the loss's log-softmax, b > 1 targets, one weight total per chunk and the count freed;
    # every chunk's bf16 gradient (2 s 16 x 2) and the dequantized head (16 x 8 x 4) live
    freed = 2 * (s - 1) * 16 * 4 + 2 * (s - 1) * 8 + chunks * 4 + 8
    assert m["head_backward"] == -freed + 2 * s * 16 * 2 + 16 * 8 * 4
    assert s - 128 * (chunks - 1) == last
    rows = 2 * min(s - 1, 128)
    assert m["backward_start"] == 2 * rows * 16 * 4
    loss = litgpt_lora_loss_saved_terms(TINY, 2, s, precision="bf16-true")
    assert loss["loss_weight_totals"] == 4 * chunks


def test_stage_parts_by_hand() -> None:
    from scaleplan.memory.litgpt_lora_states import litgpt_lora_stage_parts

    lora = LoRA(2, targets=("q", "v"))
    parts = litgpt_lora_stage_parts(TINY, lora, None, 2, 8, "32-true", "cpu", None, True)
    saved = litgpt_lora_saved_terms(TINY, lora, 2, 8, precision="32-true")
    assert parts[3] == saved and parts[4] == 0 and parts[5] == 0
    assert parts[6] == 2 * 8 * 16 * 4  # the fp32 logits held
    assert parts[7]["backward_start"] == sum(saved.values()) + 2 * (2 * 7) * 16 * 4
    assert litgpt_lora_stage_parts(TINY, lora, None, 2, 8, "32-true", "cpu", None,
                                   False)[6] == 0
    q_cpu = litgpt_lora_stage_parts(TINY, lora, "nf4", 2, 8, "bf16-true", "cpu", None, True)
    q_gpu = litgpt_lora_stage_parts(TINY, lora, "nf4", 2, 8, "bf16-true", "cuda", None, True)
    assert "head_backward" in q_cpu[7] and q_cpu[2] == 8 * 64 * 2  # 2 layers x (32 + 32)
    assert q_gpu[3]["lora_qkv_b_output"] == q_cpu[3]["lora_qkv_b_output"]
    assert q_gpu[3]["embedding_norm_stats"] == 2 * 16 * 4  # fp32 mean and rstd on a GPU


def test_gpu_masks_are_one_byte() -> None:
    lora = LoRA(2, targets=("q", "v", "head"), dropout=0.1)
    gpu = litgpt_lora_saved_terms(TINY, lora, 2, 4, precision="bf16-true", device="cuda")
    cpu = litgpt_lora_saved_terms(TINY, lora, 2, 4, precision="bf16-true")
    T = 8
    assert gpu["lora_qkv_dropout_mask"] == T * 8 * 1  # second block only
    assert cpu["lora_qkv_dropout_mask"] == T * 8 * 2
    assert gpu["lora_head_dropout_mask"] == T * 8 and cpu["lora_head_dropout_mask"] == T * 16
    assert gpu["lora_head_a_input"] == T * 8 * 2 and gpu["lora_head_a_output"] == T * 2 * 2
    plain = litgpt_lora_saved_terms(TINY, LoRA(2, targets=("q", "v", "head")), 2, 4,
                                    precision="bf16-true", device="cuda")
    assert plain["lora_head_a_input"] == T * 8 * 2  # the final norm's output itself


def test_qlora_at_b1_counts_the_ids_once() -> None:
    q = litgpt_lora_saved_terms(TINY, LoRA(2, targets=("q", "v")), 1, 6, precision="bf16-true",
                                base_weights="nf4")
    assert q["token_ids"] == 6 * 8 and q["targets"] == 0


def test_bnb_inputs_already_kept_by_adapters_are_not_counted_twice() -> None:
    every = LoRA(2, targets=ALL)
    assert set(litgpt_bnb_saved_inputs(TINY, every, 1, 4).values()) == {0}
    dropped = litgpt_bnb_saved_inputs(TINY, every.model_copy(update={"dropout": 0.1}), 1, 4)
    assert dropped == {"bnb_qkv_input": 2 * 4 * 8 * 2, "bnb_proj_input": 2 * 4 * 8 * 2,
                       "bnb_mlp_input": 2 * 4 * 8 * 2, "bnb_mlp_product": 2 * 4 * 16 * 2,
                       "bnb_head_input": 4 * 8 * 2}


def test_adapter_shapes_without_qkv_by_hand() -> None:
    assert litgpt_lora_adapter_shapes(TINY, LoRA(2, targets=("o",))) == [(2, 8), (8, 2)]


def test_more_refusals_name_the_option() -> None:
    lora = LoRA(8, targets=("q", "v"))
    tied = GPTConfig.preset("llama-2-7b").model_copy(update={"tie_embeddings": True})
    with pytest.raises(ScaleplanError, match=r"Llama layout \(measured\); not yet with "
                       "tie_embeddings=True"):
        training_memory(tied, micro_batch_size=1, seq_len=64, precision="bf16-true",
                        implementation="litgpt", lora=lora)
    with pytest.raises(ScaleplanError, match="base_weights='int8' with implementation="
                       "'litgpt' is not modelled yet"):
        training_memory(GPTConfig.preset("llama-2-7b"), micro_batch_size=1, seq_len=64,
                        precision="bf16-true", implementation="litgpt", lora=lora,
                        base_weights="int8")
    with pytest.raises(ScaleplanError, match="its LoRA configs train with AdamW"):
        training_memory(GPTConfig.preset("llama-2-7b"), micro_batch_size=1, seq_len=64,
                        precision="bf16-true", implementation="litgpt", lora=lora,
                        optimizer="sgd")
    with pytest.raises(ScaleplanError, match=r"\(lora_mlp: fc_1, fc_2 and proj\); use all of "
                       "'gate', 'up', 'down' or none"):
        litgpt_lora_switches(LoRA(8, targets=("q", "down")))


def test_bf16_base_is_bf16_true_and_refusal_texts() -> None:
    lora = LoRA(8, targets=("q", "v"))
    llama = GPTConfig.preset("llama-2-7b")
    kw: dict[str, Any] = {"micro_batch_size": 1, "seq_len": 64, "implementation": "litgpt",
                          "lora": lora}
    assert training_memory(llama, precision="bf16-true", base_weights="bf16", **kw) == \
        training_memory(llama, precision="bf16-true", **kw)
    with pytest.raises(ScaleplanError, match="lora with implementation='litgpt' and "
                       "precision='16-mixed' is not modelled yet; use 'bf16-true' or "
                       "'32-true'"):
        training_memory(llama, precision="16-mixed", **kw)
    with pytest.raises(ScaleplanError, match=r"^lora with implementation='litgpt' is modelled "
                       "for litgpt's Llama layout"):
        training_memory(llama.model_copy(update={"parallel": "shared_norm", "norm": "layernorm"}),
                        precision="bf16-true", **kw)
    with pytest.raises(ScaleplanError, match=r"use None / 'bf16' \(with precision='bf16-true'\) "
                       r"or 'nf4' / 'nf4-dq' \(QLoRA\)"):
        training_memory(llama, precision="bf16-true", base_weights="int8", **kw)


def test_stage_parts_pass_the_optimizer_implementation() -> None:
    from scaleplan.memory.litgpt_lora_states import litgpt_lora_stage_parts

    lora = LoRA(2, targets=("q", "v"))
    fused = litgpt_lora_stage_parts(TINY, lora, None, 2, 8, "32-true", "cuda", "fused", True)
    foreach = litgpt_lora_stage_parts(TINY, lora, None, 2, 8, "32-true", "cuda", None, True)
    assert fused[7]["optimizer_step"] == 0
    assert foreach[7]["optimizer_step"] == 2 * 64 * 4  # one buffer of all adapters, fp32


def test_gpu_masks_of_every_block_by_hand() -> None:
    # every linear with dropout on a GPU: each block's proj and MLP masks are bool (1 byte)
    lora = LoRA(2, targets=ALL, dropout=0.1)
    t = litgpt_lora_saved_terms(TINY, lora, 2, 4, precision="bf16-true", device="cuda")
    T = 8
    assert t["lora_mlp_dropout_mask"] == 2 * T * (8 + 8 + 16)
    assert t["lora_proj_dropout_mask"] == 2 * T * 8


# bitsandbytes 0.42.0's kept inputs (litgpt's published QLoRA rows)

@pytest.mark.parametrize("row", REPLAY.get("bnb_042_steps", []), ids=lambda r: "-".join(
    str(r[k]) for k in ("model", "lora", "micro_batch_size", "seq_len")))
def test_bnb_042_step_peak_within_half_a_percent(row: dict[str, Any]) -> None:
    # measured on CPU with 0.42's ctx.tensors = (A, B) replayed on the installed MatMul4Bit
    peak, _ = litgpt_bnb_tensor_peak(SHAPES[row["model"]], LORAS[row["lora"]],
                                     row["micro_batch_size"], row["seq_len"],
                                     base_weights="nf4", device="cpu", impl="for-loop")
    assert abs(peak / row["measured"] - 1) < 0.005


def test_bnb_042_replay_covers_dropout_and_none() -> None:
    rows = REPLAY["bnb_042_steps"]
    assert {r["lora"] for r in rows} >= {"qv", "qv-dropout", "all", "all-dropout"}


def test_bnb_inputs_after_backward_by_hand() -> None:
    # after backward the adapters' saved copies are gone, the attribute still holds every
    # input: 2 layers x T 4 x (qkv input 8 + attention output 8 + MLP input 8 + product 16)
    # + the head's input 8, bf16
    every = LoRA(2, targets=ALL)
    after = litgpt_bnb_saved_inputs(TINY, every, 1, 4, after_backward=True)
    assert sum(after.values()) == 2 * (2 * 4 * (8 + 8 + 8 + 16) + 4 * 8) == 704
    assert sum(litgpt_bnb_saved_inputs(TINY, every, 1, 4).values()) == 0


def test_moments_with_kept_inputs_by_hand() -> None:
    # b 2, s 200, V 16, bf16; this step's kept inputs 300 in every moment, the previous
    # step's 500 only at the fp32 cast (before fit rebinds logits), not at the loss's copy
    m = litgpt_lora_moments(TINY, 2, 200, precision="bf16-true", base_weights="nf4",
                            S=100_000, temp=7, kept=300, kept_before=500)
    lsm = 2 * 199 * 16 * 4
    assert m["forward_end"] == 300 + max(100_000 - lsm + 2 * 200 * 16 * (2 + 4) + 500,
                                         100_000 + 2 * 71 * 16 * 4)
    assert m["backward_start"] == 300 + 100_000 + 2 * (2 * 128) * 16 * 4
    loss = lsm + 2 * 199 * 8 + 2 * 4 + 8
    assert m["head_backward"] == 300 + 100_000 - loss + 2 * 200 * 16 * 2 + 16 * 8 * (2 + 2)
    assert m["optimizer_step"] == 300 + 7


def test_bnb_tensor_peak_adds_the_inputs_to_the_fp32_cast_by_hand() -> None:
    # b 4, s 16 (T 64), dropout: the kept and previous inputs are the same tensors,
    # 2 layers x 64 x (8 + 8 + 8 + 16) + the head's 64 x 8, bf16 = 11,264 bytes; the fp32
    # cast's moment gains both, on top of the states and the held logits (4 x 16 x 16 x 4)
    cfg, lora = TINY, LoRA(2, targets=("q", "v"), dropout=0.1)
    kept = 2 * (2 * 64 * (8 + 8 + 8 + 16) + 64 * 8)
    assert kept == 11_264
    W, G, O, _ = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cpu", "for-loop")
    S = sum(litgpt_lora_saved_terms(cfg, lora, 4, 16, precision="bf16-true",
                                    base_weights="nf4").values())
    peak, moment = litgpt_bnb_tensor_peak(cfg, lora, 4, 16, base_weights="nf4", device="cpu",
                                          impl="for-loop")
    # the cast: the loss's log-softmax (4 x 15 x 16 x 4) not made yet, bf16 and fp32 chunks
    # (4 x 16 x 16 x 6), both steps' inputs; the loss: its flat copy (4 x 15 x 16 x 4) and
    # this step's inputs only (fit has rebound logits, freeing the previous graph)
    cast = S - 3840 + 6144 + 2 * kept
    loss = S + 3840 + kept
    assert moment == "forward_end" and cast > loss
    assert peak == W + G + O + 4 * 16 * 16 * 4 + cast


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
def test_bnb_042_kept_inputs_outlive_backward_and_match_within_half_a_percent() -> None:
    pytest.importorskip("litgpt")
    pytest.importorskip("bitsandbytes")
    from scaleplan.reference.litgpt_lora_measure import measure_litgpt_lora_step

    cfg, lora = SHAPES["llama"], LORAS["qv-dropout"]
    peak, resident = measure_litgpt_lora_step(cfg, lora, micro_batch_size=2, seq_len=48,
                                              base_weights="nf4", bnb_keeps_input=True)
    _, plain = measure_litgpt_lora_step(cfg, lora, micro_batch_size=2, seq_len=48,
                                        base_weights="nf4")
    # the first step's inputs are still alive when the second starts (its graph held by the
    # logits): 2 layers x T 96 x (128 + 128 + 128 + 512) + the head's 96 x 128, bf16
    assert resident - plain == 2 * (2 * 96 * (128 + 128 + 128 + 512) + 96 * 128) == 368_640
    pred, moment = litgpt_bnb_tensor_peak(cfg, lora, 2, 48, base_weights="nf4", device="cpu",
                                          impl="for-loop")
    assert moment == "forward_end" and abs(pred / peak - 1) < 0.005


def test_head_backward_at_b1_by_hand() -> None:
    # b 1, s 4, V 16, d 8: the loss frees its log-softmax (3 x 16 x 4), one weight total and
    # the count; its targets are views of the ids, which the StableEmbedding saves (not freed)
    m = litgpt_lora_moments(TINY, 1, 4, precision="bf16-true", base_weights="nf4",
                            S=100_000, temp=0)
    assert m["head_backward"] == 100_000 - (3 * 16 * 4 + 4 + 8) + 4 * 16 * 2 + 16 * 8 * 4


@pytest.mark.parametrize(("s", "chunks", "last"), [(130, 2, 2), (129, 2, 1), (127, 1, 127)])
def test_bnb_head_forward_by_hand(s: int, chunks: int, last: int) -> None:
    # d 256 against V 16, b 1 (head chunks of 128, the last ``last`` long): bitsandbytes 0.42
    # dequantizes the head (16 x 256) into fp16 and bf16 while the last chunk runs, beside the
    # earlier chunks' bf16 logits ((s - last) x 16 x 2), every saved tensor but the loss's
    # (log-softmax (s - 1) x 16 x 4, a weight total per chunk, the count; the targets are
    # views of the ids), this step's kept inputs (no dropout: q's and v's A keep the qkv
    # input; the attention output and MLP input 2 x s x 256 x 2 each, the product
    # 2 x s x 16 x 2, the head's input s x 256 x 2) and the previous step's (those and the qkv
    # input, 2 x s x 256 x 2)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=256, mlp_hidden=16, vocab_size=16,
                    block_size=256, mlp="swiglu", **_LLAMA)
    lora = LoRA(2, targets=("q", "v"))
    kept = 2 * s * 256 * 2 * 2 + 2 * s * 16 * 2 + s * 256 * 2
    before = kept + 2 * s * 256 * 2
    W, G, O, _ = litgpt_lora_model_states(cfg, lora, "bf16-true", "nf4", "cpu", "for-loop")
    S = sum(litgpt_lora_saved_terms(cfg, lora, 1, s, precision="bf16-true",
                                    base_weights="nf4").values())
    peak, moment = litgpt_bnb_tensor_peak(cfg, lora, 1, s, base_weights="nf4", device="cpu",
                                          impl="for-loop")
    assert moment == "head_forward"
    held = s * 16 * 4
    assert peak == W + G + O + held + S - ((s - 1) * 16 * 4 + chunks * 4 + 8) \
        + (s - last) * 16 * 2 + 16 * 256 * 4 + kept + before
