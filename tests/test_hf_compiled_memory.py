"""``compile=True`` with ``implementation="hf"``: `scaleplan.memory.hf_compiled_terms` against
what torch.compile'd transformers 5.25 models saved for backward (CPU, inductor, torch 2.13).

tests/data/hf_compiled.json (2 layers, 2 x 48 tokens) and tests/data/hf_compiled_variation.json
(3 layers, 3 x 32 tokens) were written by ``python -m scaleplan.reference.hf_compiled`` (and
``--variation``); their replay needs no torch. The torch-marked test re-measures one case live.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.hf_compiled_terms import HF_COMPILED_FAMILIES, hf_compiled_saved_terms
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).parent / "data"
ROWS = [r for name in ("hf_compiled.json", "hf_compiled_variation.json")
        if (DATA / name).exists() for r in json.loads((DATA / name).read_text())]

# scaleplan.reference.hf_measure.GRID_SHAPES (which imports torch), the families modelled
_LLAMA = dict(n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352, vocab_size=512,
              block_size=128, bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
SHAPES = {
    "llama": GPTConfig(n_layer=2, tie_embeddings=False, **_LLAMA),  # type: ignore[arg-type]
    "qwen2": GPTConfig(n_layer=2, qkv_bias=True, tie_embeddings=True,  # type: ignore[arg-type]
                       **_LLAMA),
    "mistral": GPTConfig(n_layer=2, n_head=8, n_kv_head=2, n_embd=128, mlp_hidden=448,
                         vocab_size=512, block_size=128, bias=False, mlp="swiglu",
                         norm="rmsnorm", position="rope", tie_embeddings=False),
    "gemma": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=128, head_dim=64,
                       mlp_hidden=512, vocab_size=512, block_size=128, bias=False,
                       mlp="geglu", norm="rmsnorm", position="rope", tie_embeddings=True),
}
MODELLED = [r for r in ROWS if r["family"] in HF_COMPILED_FAMILIES
            and r["checkpointing"] == "none"]


def _case(r: dict[str, object]) -> str:
    return f"{r['family']}-{r['precision']}-L{r['n_layer']}-b{r['micro_batch_size']}"


@pytest.mark.parametrize("row", MODELLED, ids=_case)
def test_compiled_terms_match_the_measured_partition_exactly(row: dict[str, object]) -> None:
    cfg = SHAPES[str(row["family"])].replace(n_layer=row["n_layer"])
    terms = hf_compiled_saved_terms(cfg, row["micro_batch_size"], row["seq_len"],
                                    precision=row["precision"])  # type: ignore[arg-type]
    assert sum(terms.values()) == row["saved_for_backward"]


def test_the_replay_covers_every_modelled_family_both_precisions_and_two_shapes() -> None:
    seen = {(r["family"], r["precision"], r["n_layer"]) for r in MODELLED}
    assert {(f, p, 2) for f in HF_COMPILED_FAMILIES
            for p in ("32-true", "bf16-mixed")} <= seen
    assert ("llama", "bf16-mixed", 3) in seen


def test_llama_fp32_by_hand() -> None:
    # Llama grid shape, b = 2, s = 48: T = 96, d = 128, a = 4, h = 32, f = 352, V = 512, e = 4.
    # Per layer: norm inputs 2*96*128*4 = 98304, rsqrt 2*96*4 = 768, q/k/v and MLP inputs
    # 2*96*128*4 = 98304, SDPA q, k, v, out 4*96*4*32*4 = 196608, lse 2*4*48*4 = 1536,
    # SwiGLU 3*96*352*4 = 405504: 801024; two layers 1602048. First layer: o_proj's input
    # instead of the residual, 96*128*(4 - 4) = 0. Mask 2*48*48*4 = 18432. Head: final norm
    # 96*128*4 + 96*4 = 49536, lm_head input 49152, logits 96*512*4 = 196608, max and lse
    # 2*96*4 = 768, labels 2*49*8 + 4 = 788: 296852. Total 1917332.
    terms = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="32-true")
    assert sum(terms.values()) == 1602048 + 18432 + 296852


def test_gemma_one_kv_head_by_hand() -> None:
    # Gemma grid shape, b = 2, s = 48, fp32: T = 96, a = 4, one kv head, h = 64. SDPA keeps q
    # and the output expanded (2*96*4*64*4 = 196608), k and v unexpanded (2*96*64*4 = 49152)
    # per layer; in bf16 k is expanded (96*4*64*2 = 49152) and v not (96*64*2 = 12288).
    terms = hf_compiled_saved_terms(SHAPES["gemma"], 2, 48, precision="32-true")
    assert terms["sdpa_qkv_out"] == 2 * (196608 + 49152)
    assert terms["first_layer_o_proj_input"] == 0
    bf16 = hf_compiled_saved_terms(SHAPES["gemma"], 2, 48, precision="bf16-mixed")
    assert bf16["sdpa_qkv_out"] == 2 * (96 * 4 * 64 * 2 * 2 + 49152 + 12288)


def test_bf16_keeps_16_bit_logits_not_an_fp32_upcast() -> None:
    # the compiled ForCausalLMLoss saves the bf16 logits and fp32 max / log-sum-exp per token
    terms = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="bf16-mixed")
    assert terms["logits"] == 96 * 512 * 2
    assert terms["loss_max_lse"] == 2 * 96 * 4
    assert terms["first_layer_o_proj_input"] == 96 * 128 * (2 - 4)


def test_training_memory_takes_the_compiled_hf_terms() -> None:
    cfg = SHAPES["llama"]
    kw = dict(micro_batch_size=2, seq_len=48, implementation="hf", precision="bf16-mixed")
    compiled = training_memory(cfg, compile=True, **kw)  # type: ignore[arg-type]
    eager = training_memory(cfg, **kw)  # type: ignore[arg-type]
    assert compiled.saved_for_backward == 1060244  # the measured bf16 grid case
    assert compiled.saved_for_backward < eager.saved_for_backward


@pytest.mark.parametrize(("change", "kw", "match"), [
    ({"norm": "layernorm", "mlp": "gelu", "position": "learned"}, {}, "'gpt2' layout"),
    ({}, {"checkpointing": "full"}, "checkpointing='full'"),
    ({}, {"precision": "16-mixed"}, "precision='16-mixed'"),
    ({"dropout": 0.1}, {}, "dropout=0.1"),
    ({"n_kv_head": 1}, {}, "n_kv_head=1 with SwiGLU"),
    ({"mlp": "geglu", "n_kv_head": 2}, {}, "n_kv_head=2 with Gemma's layout"),
    ({}, {"attention": "eager"}, "attention='eager'"),
])
def test_unmeasured_combinations_are_refused_by_name(change: dict[str, object],
                                                     kw: dict[str, object], match: str) -> None:
    cfg = SHAPES["llama"].replace(**change)
    with pytest.raises(ScaleplanError, match=match):
        training_memory(cfg, micro_batch_size=2, seq_len=48, implementation="hf",
                        compile=True, **kw)  # type: ignore[arg-type]


def test_lora_under_compile_is_refused() -> None:
    from scaleplan.model.lora import LoRA

    with pytest.raises(ScaleplanError, match="lora with compile=True is not modelled yet"):
        training_memory(SHAPES["llama"], micro_batch_size=2, seq_len=48, implementation="hf",
                        compile=True, lora=LoRA(rank=8))


@pytest.mark.torch
@pytest.mark.slow
def test_live_llama_bf16_matches_the_terms() -> None:
    pytest.importorskip("transformers")
    from scaleplan.reference.hf_compiled import measure_hf_compiled

    cfg = SHAPES["llama"]
    m = measure_hf_compiled(cfg, "llama", micro_batch_size=1, seq_len=40,
                            precision="bf16-mixed")
    terms = hf_compiled_saved_terms(cfg, 1, 40, precision="bf16-mixed")
    assert sum(terms.values()) == m["saved_for_backward"]
    assert m["logits_saved"]  # the returned logits are the saved ones: held, they add nothing
