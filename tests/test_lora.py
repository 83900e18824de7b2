"""LoRA (issue 19): the config, adapter counts, and the memory of a frozen base with adapters.

Torch-free: hand calculations written out in each test, published peft outputs, and a replay of
the committed peft measurements (docs/validation/lora.json, written by
``python -m scaleplan.reference.peft_measure --grid``), so mutation testing sees the formulas.
The live peft measurements are in tests/test_lora_peft.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import scaleplan as sp
from scaleplan.cli import main
from scaleplan.errors import ScaleplanError
from scaleplan.memory.limits import memory_grid
from scaleplan.memory.lora_states import lora_model_states
from scaleplan.memory.lora_terms import (
    lora_block_saved_terms,
    lora_saved_terms,
    lora_weight_copy_bytes,
)
from scaleplan.memory.quantized import quantized_weight_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA, adapter_params, adapter_shapes

ROOT = Path(__file__).resolve().parents[1]
ROWS = json.loads((ROOT / "docs/validation/lora.json").read_text())

# d 8, 2 query heads and 1 kv head of 4, f 16, V 32: small enough to add up by hand
TINY = GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=8, head_dim=4, mlp_hidden=16,
                 vocab_size=32, block_size=16, bias=False, mlp="swiglu", norm="rmsnorm",
                 position="rope", tie_embeddings=False)
QV = LoRA(2, targets=("q", "v"))


def test_lora_config_validates_and_orders_targets() -> None:
    assert LoRA(8, targets=("v", "q")).targets == ("q", "v")
    assert LoRA(rank=4, targets="q, v").targets == ("q", "v")
    assert LoRA(8).targets == ("q", "k", "v", "o", "gate", "up", "down")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        LoRA(0)
    with pytest.raises(ValidationError, match="'query' is not a LoRA target"):
        LoRA(8, targets=("query",))
    with pytest.raises(ValidationError, match="names a role twice"):
        LoRA(8, targets=("q", "q"))
    with pytest.raises(ValidationError, match="at least one"):
        LoRA(8, targets=())
    with pytest.raises(ValidationError):
        LoRA(8, dropout=1.0)


def test_llama_2_7b_trainable_params_match_peft_published() -> None:
    # peft's print_trainable_parameters for Llama-2-7B, r 8 on q_proj and v_proj:
    # "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
    # (peft README / docs quicktour; 32 layers x 2 x 8 x (4096 + 4096) = 4,194,304)
    cfg = GPTConfig.preset("llama-2-7b")
    pc = sp.count_params(cfg, lora=LoRA(8, targets=("q", "v")))
    assert (pc.trainable, pc.total) == (4_194_304, 6_742_609_920)
    assert pc.lora == 4_194_304 and sum(pc.components().values()) == pc.total
    # every linear: per layer 8 x ((4096 + 4096) x 4 + (4096 + 11008) x 3) = 624,640
    assert adapter_params(cfg, LoRA(8)) == 32 * 624_640 == 19_988_480
    plain = sp.count_params(cfg)
    assert plain.trainable == plain.total and plain.lora == 0
    assert "lora" not in plain.components()


def test_gpt2_fused_qkv_is_one_adapter() -> None:
    cfg = GPTConfig.preset("gpt2")
    # c_attn 768 -> 2304 adapted whole: 12 x 8 x (768 + 2304) = 294,912
    assert adapter_shapes(cfg, LoRA(8, targets=("q", "k", "v"))) == {"qkv": (768, 2304)}
    assert adapter_params(cfg, LoRA(8, targets=("q", "k", "v"))) == 294_912
    with pytest.raises(ScaleplanError, match="one fused matrix"):
        adapter_shapes(cfg, LoRA(8, targets=("q", "v")))
    with pytest.raises(ScaleplanError, match="has no gate"):
        adapter_shapes(cfg, LoRA(8, targets=("gate",)))
    with pytest.raises(ScaleplanError, match="mixture of experts is not modelled"):
        adapter_shapes(GPTConfig.preset("mixtral-8x7b"), LoRA(8))


def test_block_terms_by_hand_fp32() -> None:
    # T = 4 tokens, d 8, a 2, k 1, h 4, f 16, r 2, 4 bytes: RMSNorm input 128 and rstd 16
    # (its normalised input goes: frozen weight), rotated q and k 4 x 3 x 4 x 4 = 192, v 64,
    # SDPA's lse 2 x 4 x 4 = 32 and output 128; MLP gate out, act out, up out 3 x 4 x 16 x 4
    # = 768 (the product only down_proj kept); q and v's A share x 128; B keeps 2 x 4 x 2 x 4
    t = lora_block_saved_terms(TINY, QV, 1, 4, precision="32-true")
    assert t["lora_norm1_a_input"] == 128 and t["lora_b_input"] == 64
    assert t["mlp_activations"] == 768 and "qkv_input" not in t and "mlp_input" not in t
    assert sum(t.values()) == 144 + 192 + 64 + 32 + 128 + 144 + 768 + 128 + 64 == 1664
    first = lora_block_saved_terms(TINY, QV, 1, 4, precision="32-true", first=True)
    assert sum(first.values()) == 1664 - 144  # the first norm's input needs no gradient


def test_block_terms_by_hand_autocast_and_dropout() -> None:
    # autocast: 2-byte activations, each adapter its own 16-bit cast of x (2 x 4 x 8 x 2)
    t = lora_block_saved_terms(TINY, QV, 1, 4, precision="bf16-mixed")
    assert t["lora_norm1_a_input"] == 128 and t["lora_b_input"] == 2 * 4 * 2 * 2
    assert sum(t.values()) == 144 + 96 + 32 + 32 + 64 + 144 + 384 + 128 + 32 == 1056
    # dropout 0.1 in fp32 on CPU: each adapter its dropout output and an fp32 mask, 128 each
    drop = LoRA(2, targets=("q", "v"), dropout=0.1)
    t = lora_block_saved_terms(TINY, drop, 1, 4, precision="32-true")
    assert (t["lora_norm1_a_input"], t["lora_norm1_dropout_mask"]) == (256, 256)
    assert sum(t.values()) == 1664 - 128 + 512
    first = lora_block_saved_terms(TINY, drop, 1, 4, precision="32-true", first=True)
    assert "lora_norm1_dropout_mask" not in first  # no mask where x needs no gradient
    assert sum(first.values()) == 1664 - 128 + 256 - 144
    cuda = lora_block_saved_terms(TINY, drop, 1, 4, precision="32-true", device="cuda")
    assert cuda["lora_norm1_dropout_mask"] == 2 * 4 * 8  # bool masks on CUDA


def test_model_terms_by_hand() -> None:
    # blocks 1520 + 1664, rotary cos and sin 2 x 4 x 4 x 4 = 128, final norm 128 + 16, fp32
    # log-softmax 4 x 32 x 4 = 512, 5 padded int64 labels + 4 = 44; no ids, no lm_head input
    terms = lora_saved_terms(TINY, QV, 1, 4, precision="32-true")
    assert "token_ids" not in terms and "lm_head_input" not in terms
    assert sum(terms.values()) == 1520 + 1664 + 128 + 144 + 512 + 44 == 4012
    ckpt = lora_saved_terms(TINY, QV, 1, 4, precision="32-true", checkpointing="full")
    # each layer's fp32 input 4 x 8 x 4, the position ids 4 x 8 bytes, cos/sin, the head
    assert sum(ckpt.values()) == 2 * 128 + 32 + 128 + 144 + 512 + 44


def test_bf16_base_halves_the_residual_stream_and_rotary_tables() -> None:
    # checkpointed: each layer's input 4 x 8 in bf16 (2 bytes), cos/sin 2 x 4 x 4 x 2
    ckpt = lora_saved_terms(TINY, QV, 1, 4, precision="bf16-mixed", checkpointing="full",
                            base_16bit=True)
    assert ckpt["block_input"] == 2 * 4 * 8 * 2 and ckpt["rope_cos_sin"] == 2 * 4 * 4 * 2
    with pytest.raises(ScaleplanError, match="GPT-2's layout is not modelled yet"):
        sp.training_memory(GPTConfig(n_layer=2, n_head=2, n_embd=8), micro_batch_size=1,
                           seq_len=4, implementation="hf", lora=LoRA(2), base_weights="bf16")
    with pytest.raises(ScaleplanError, match="computes under autocast"):
        sp.training_memory(TINY, micro_batch_size=1, seq_len=4, implementation="hf", lora=QV,
                           base_weights="bf16", precision="32-true")


def test_model_states_by_hand() -> None:
    # base: wte 256, per layer q 64, k 32, v 32, o 64, gate/up/down 128 each, norms 16
    # (592 x 2), final norm 8, lm_head 256 = 1,704; adapters per layer q 2 x 16 + v 2 x 12 = 56
    W, G, O, temp = lora_model_states(TINY, QV, "32-true", "adamw", None, "cuda", None)
    assert (W, G) == (1704 * 4 + 112 * 4, 112 * 4)
    assert O == 2 * 112 * 4 + 8 * 4  # two fp32 moments + a 4-byte step per adapter tensor
    assert temp == 112 * 4  # foreach: one buffer over all adapters
    _, _, O8, _ = lora_model_states(TINY, QV, "bf16-mixed", "adamw-8bit", "bf16", "cuda",
                                    "fused")
    assert O8 == 2 * 112 * 4  # tensors under 4096 elements keep 32-bit states
    paged = sp.training_memory(TINY, micro_batch_size=1, seq_len=4, implementation="hf",
                               lora=QV, optimizer="paged-adamw-8bit")
    assert paged.optimizer == O8  # paging counted as adamw-8bit on the GPU
    # down's A 8 x 4096: 2 one-byte states + an fp32 absmax per 2048 values; its B 8 x 8
    # (under 4096 elements) 2 fp32 states; 2 layers
    wide = LoRA(8, targets=("down",))
    cfg = TINY.replace(mlp_hidden=4096)
    _, _, O_wide, _ = lora_model_states(cfg, wide, "32-true", "adamw-8bit", None, "cuda", None)
    assert O_wide == 2 * (2 * (32768 + 4 * 16) + 2 * 64 * 4)
    W16, *_ = lora_model_states(TINY, QV, "bf16-mixed", "adamw", "bf16", "cuda", None)
    assert W16 == 1704 * 2 + 112 * 4


def test_weight_copies_by_hand() -> None:
    # frozen per layer 64 + 32 + 32 + 64 + 3 x 128 = 576, less the first layer's q/k/v 128,
    # plus lm_head 256: (1152 - 128 + 256) x 2; adapters 112 x 2, less the first layer's A of
    # q and v (2 x 8 each) x 2
    saved, cached = lora_weight_copy_bytes(TINY, QV, "bf16-mixed")
    assert saved == (1152 - 128 + 256) * 2 + 112 * 2 - 32 * 2
    assert cached == saved + 32 * 2
    assert lora_weight_copy_bytes(TINY, QV, "32-true") == (0, 0)
    assert lora_weight_copy_bytes(TINY, QV, "bf16-mixed", checkpointing="full") == (
        512, 512 + 224)
    assert lora_weight_copy_bytes(TINY, QV, "bf16-mixed", base_copies=False)[0] == 224 - 64


def test_training_memory_with_lora_adds_up() -> None:
    m = sp.training_memory(TINY, micro_batch_size=1, seq_len=4, precision="32-true",
                           implementation="hf", lora=QV, device="cpu")
    assert m.saved_for_backward == 4012 and m.gradients == 448
    assert m.weights + m.gradients + m.optimizer + m.saved_for_backward + m.transient == m.total
    grid = memory_grid(TINY, micro_batch_size=[2, 3], seq_len=4, precision="32-true",
                       implementation="hf", lora=QV, device="cpu")  # arrays: b > 1's labels
    for i, b in enumerate((2, 3)):
        assert grid[i] == sp.training_memory(TINY, micro_batch_size=b, seq_len=4,
                                             precision="32-true", implementation="hf",
                                             lora=QV, device="cpu").total
    nf4 = sp.training_memory(GPTConfig.preset("llama-2-7b"), micro_batch_size=1, seq_len=512,
                             implementation="hf", lora=LoRA(8), base_weights="nf4-dq")
    # 19,988,480 fp32 adapter parameters (see above): gradients 4 bytes each; AdamW two fp32
    # moments each plus a 4-byte step for each of 32 layers x 7 adapters x (A, B) tensors
    assert nf4.gradients == 4 * 19_988_480
    assert nf4.optimizer == 8 * 19_988_480 + 4 * 32 * 7 * 2
    base = quantized_weight_bytes(GPTConfig.preset("llama-2-7b"), "nf4-dq").total
    assert nf4.weights == base + 4 * 19_988_480


def test_lora_options_refused_by_name() -> None:
    kw = {"micro_batch_size": 1, "seq_len": 4}
    with pytest.raises(ScaleplanError, match="base_weights='nf4' is for a frozen base"):
        sp.training_memory(TINY, base_weights="nf4", **kw)
    with pytest.raises(ScaleplanError, match="implementation='nanogpt' is not modelled yet"):
        sp.training_memory(TINY, lora=QV, **kw)
    with pytest.raises(ScaleplanError, match="precision='bf16-true' is not modelled yet"):
        sp.training_memory(TINY, lora=QV, implementation="hf", precision="bf16-true", **kw)
    with pytest.raises(ScaleplanError, match=r"base_weights 'int3'"):
        sp.training_memory(TINY, lora=QV, implementation="hf", base_weights="int3", **kw)
    neox = GPTConfig(n_layer=2, n_head=2, n_embd=8, position="rope", parallel="separate_norms")
    with pytest.raises(ScaleplanError, match="gpt_neox layout is not modelled yet"):
        sp.training_memory(neox, lora=LoRA(2), implementation="hf", **kw)
    with pytest.raises(ScaleplanError, match=r"must be a scaleplan\.LoRA"):
        sp.training_memory(TINY, lora={"rank": 8}, implementation="hf", **kw)  # type: ignore[arg-type]


def test_fits_on_takes_lora() -> None:
    cfg = GPTConfig.preset("llama-2-7b")
    lora = LoRA(8, targets=("q", "v"))
    qlora = sp.FitsOn("RTX 4090", micro_batch_size=1, seq_len=512, implementation="hf",
                      lora=lora, base_weights="nf4")
    full = sp.FitsOn("RTX 4090", micro_batch_size=1, seq_len=512, implementation="hf")
    assert sp.check(cfg, qlora) == []
    [finding] = sp.check(cfg, full)  # a full fine-tune of 7B needs ~100 GiB
    assert finding.code == "scaleplan.does_not_fit"
    assert qlora.needed_bytes(cfg, micro_batch_size=1, seq_len=512, implementation="hf",
                              lora=lora, base_weights="nf4") == sp.training_memory(
        cfg, micro_batch_size=1, seq_len=512, implementation="hf", lora=lora,
        base_weights="nf4").total


def test_finetune_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "llama-2-7b", "--gpu", "RTX 4090", "--lora-rank", "8",
                 "--lora-targets", "q,v", "--base-weights", "nf4", "--seq-len", "512"]) == 0
    out = capsys.readouterr().out
    assert "trainable params: 4,194,304 || all params: 6,742,609,920" in out
    assert "fits in the RTX 4090" in out
    assert main(["finetune", "gpt2", "--lora-rank", "4", "--lora-targets", "q,k,v", "--json",
                 "--precision", "32-true"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_params"] == 12 * 4 * (768 + 2304)
    assert main(["finetune", "gpt2", "--lora-rank", "4", "--lora-targets", "q,v"]) == 2
    assert "one fused matrix" in capsys.readouterr().err


@pytest.mark.parametrize("row", ROWS, ids=lambda r: "-".join(
    [r["family"], r.get("base_weights") or "fp32", r["precision"], r["attention"],
     r["checkpointing"], str(r["lora_dropout"]), ",".join(r["targets"])]))
def test_replay_peft_measurements(row: dict) -> None:  # type: ignore[type-arg]
    cfg = GPTConfig(**row["config"])
    lora = LoRA(row["rank"], targets=tuple(row["targets"]), dropout=row["lora_dropout"])
    bf16 = row.get("base_weights") is not None
    terms = lora_saved_terms(cfg, lora, row["micro_batch_size"], row["seq_len"],
                             precision=row["precision"], attention=row["attention"],
                             checkpointing=row["checkpointing"], device="cpu", base_16bit=bf16)
    assert abs(sum(terms.values()) / row["measured"] - 1) <= 0.03  # issue 19's bar
    assert adapter_params(cfg, lora) == row["trainable_params"]
    copies = lora_weight_copy_bytes(cfg, lora, row["precision"], base_copies=not bf16,
                                    checkpointing=row["checkpointing"])[0]
    assert copies == row["autocast_weight_copies"]


def test_plan_counts_the_adapters_and_keeps_its_options() -> None:
    # plan() with a LoRA: params is count_params with the adapters, so trainable is peft's
    # published 4,194,304 for Llama-2-7B r 8 on q, v (as above), and the options it was made
    # with survive a JSON round trip (a rerun needs them: memory depends on every one).
    cfg = GPTConfig.preset("llama-2-7b")
    lora = LoRA(8, targets=("q", "v"))
    p = sp.plan(cfg, "H100 SXM", lora=lora, base_weights="nf4", implementation="hf")
    assert (p.params.trainable, p.params.total) == (4_194_304, 6_742_609_920)
    assert p.memory_options == {"lora": lora, "base_weights": "nf4", "implementation": "hf"}
    again = type(p).model_validate_json(p.model_dump_json())
    assert again == p and isinstance(again.memory_options["lora"], LoRA)
    plain = sp.plan(GPTConfig.preset("gpt2"), "RTX 4070", compile=True)
    assert plain.memory_options == {"compile": True}
    assert plain.params.trainable == plain.params.total == 124_439_808  # GPT-2 small, tied head
    # the terminal report names them (and says nothing when there are none)
    from scaleplan.planning.report import format_plan

    assert "  memory options       compile=True\n" in format_plan(plain)
    assert "memory options" not in format_plan(sp.plan(GPTConfig.preset("gpt2"), "RTX 4070"))


def test_finetune_cli_takes_litgpt_and_torchtune_steps(capsys: pytest.CaptureFixture[str]) -> None:
    # litgpt with an adapter on the head (its lora_head): TinyLlama, d 2048, 32 query and 4 KV
    # heads of 64, mlp 5632, V 32000, 22 layers, r 8. Per block: fused qkv A 24 x 2048 = 49,152
    # and B (2048 + 256 + 256) x 8 = 20,480; o 8 x 2048 x 2 = 32,768; gate, up, down
    # 3 x 8 x (2048 + 5632) = 184,320; 286,720 a block, x 22 = 6,307,840; head 8 x (2048 +
    # 32000) = 272,384: 6,580,224 trainable.
    assert main(["finetune", "tinyllama-1.1b", "--lora-rank", "8", "--lora-targets",
                 "q,k,v,o,gate,up,down,head", "--implementation", "litgpt", "--precision",
                 "bf16-true", "--seq-len", "512", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_params"] == 6_580_224 and data["implementation"] == "litgpt"
    cfg = GPTConfig.preset("tinyllama-1.1b")
    assert data["total_params"] == sp.count_params(cfg).total + 6_580_224
    lora = LoRA(8, targets=("q", "k", "v", "o", "gate", "up", "down", "head"))
    assert data["memory"] == sp.training_memory(
        cfg, micro_batch_size=1, seq_len=512, precision="bf16-true", implementation="litgpt",
        lora=lora).model_dump()
    # torchtune's recipe with its switches is the same call as training_memory's
    args = ["finetune", "llama-3-8b", "--lora-rank", "8", "--lora-targets", "q,v,o,gate,up,down",
            "--base-weights", "nf4", "--seq-len", "2048", "--micro-batch-size", "2",
            "--implementation", "torchtune", "--precision", "bf16-true", "--checkpointing",
            "full", "--compile", "--loss", "chunked", "--activation-offload", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["memory"] == sp.training_memory(
        GPTConfig.preset("llama-3-8b"), micro_batch_size=2, seq_len=2048, precision="bf16-true",
        checkpointing="full", implementation="torchtune",
        lora=LoRA(8, targets=("q", "v", "o", "gate", "up", "down")), base_weights="nf4",
        compile=True, loss="chunked", activation_offload=True).model_dump()
    # the torchtune recipe refuses offloading without checkpointing, by name
    assert main([a for a in args if a not in ("--checkpointing", "full")]) == 2
    assert "activation_offload" in capsys.readouterr().err
