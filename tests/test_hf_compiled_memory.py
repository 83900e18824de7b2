"""``compile=True`` with ``implementation="hf"``: `scaleplan.memory.hf_compiled_terms` against
what torch.compile'd transformers 5.25 models saved for backward (CPU, inductor, torch 2.13).

tests/data/hf_compiled.json (2 layers, 2 x 48 tokens), tests/data/hf_compiled_variation.json
(3 layers, 3 x 32 tokens) and tests/data/hf_compiled_checkpointing.json (2 layers, every layer
checkpointed) were written by ``python -m scaleplan.reference.hf_compiled`` (and
``--variation``, ``--checkpointing``); their replay needs no torch. The torch-marked tests
re-measure cases live.
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
ROWS = [r for name in ("hf_compiled.json", "hf_compiled_variation.json",
                        "hf_compiled_checkpointing.json")
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
    "gpt2": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=128),
    "gpt_neox": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=128,
                          position="rope", rotary_fraction=0.25, parallel="separate_norms",
                          tie_embeddings=False),
}
MODELLED = [r for r in ROWS if r["family"] in HF_COMPILED_FAMILIES]
# GPT-2 at 3 x 32 tokens: the partition keeps, for the first ln_1, the token and position
# embeddings' fp32 outputs and the mean in place of x_hat (read from the saved values'
# names: embedding, embedding_1, getitem_1 instead of mul); not modelled
EXCHANGED = [r for r in MODELLED if r["family"] == "gpt2" and r["micro_batch_size"] == 3
             and r["checkpointing"] == "none"]
EXACT = [r for r in MODELLED if r not in EXCHANGED]


def _case(r: dict[str, object]) -> str:
    return (f"{r['family']}-{r['precision']}-L{r['n_layer']}-b{r['micro_batch_size']}"
            f"-{r['checkpointing']}")


def _predicted(row: dict[str, object]) -> int:
    cfg = SHAPES[str(row["family"])].replace(n_layer=row["n_layer"])
    terms = hf_compiled_saved_terms(cfg, row["micro_batch_size"], row["seq_len"],
                                    precision=row["precision"],  # type: ignore[arg-type]
                                    checkpointing=str(row["checkpointing"]), device="cpu")
    return int(sum(terms.values()))


@pytest.mark.parametrize("row", EXACT, ids=_case)
def test_compiled_terms_match_the_measured_partition_exactly(row: dict[str, object]) -> None:
    assert row["token_ids_saved"]  # the embedding's backward keeps them: counted
    assert _predicted(row) == row["saved_for_backward"]


@pytest.mark.parametrize("row", EXCHANGED, ids=_case)
def test_gpt2_at_three_rows_misses_only_the_first_norms_exchange(row: dict[str, object]) -> None:
    # b = 3, s = 32, d = 128: the position embedding's output s d 4 = 16384 and the mean
    # T 4 = 384 are kept on top of what x_hat would have cost (the token embedding's output
    # takes x_hat's T d 4): 16768 bytes, within the 5% the compiled terms promise
    measured = int(row["saved_for_backward"])  # type: ignore[call-overload]
    assert measured - _predicted(row) == 32 * 128 * 4 + 3 * 32 * 4
    assert abs(_predicted(row) / measured - 1) < 0.05


def test_the_replay_covers_every_modelled_family_both_precisions_and_two_shapes() -> None:
    seen = {(r["family"], r["precision"], r["n_layer"], r["checkpointing"]) for r in MODELLED}
    assert {(f, p, 2, "none") for f in HF_COMPILED_FAMILIES
            for p in ("32-true", "bf16-mixed")} <= seen
    assert {(f, p, 3, "none") for f in ("llama", "gpt2", "gpt_neox")
            for p in ("32-true", "bf16-mixed")} <= seen
    assert {(f, p, 2, "full") for f in ("llama", "gpt2")
            for p in ("32-true", "bf16-mixed")} <= seen


def test_llama_fp32_by_hand() -> None:
    # Llama grid shape, b = 2, s = 48: T = 96, d = 128, a = 4, h = 32, f = 352, V = 512, e = 4.
    # Per layer: norm inputs 2*96*128*4 = 98304, rsqrt 2*96*4 = 768, q/k/v and MLP inputs
    # 2*96*128*4 = 98304, SDPA q, k, v, out 4*96*4*32*4 = 196608, lse 2*4*48*4 = 1536,
    # SwiGLU 3*96*352*4 = 405504: 801024; two layers 1602048. First layer: o_proj's input
    # instead of the residual, 96*128*(4 - 4) = 0. Mask 2*48*48*4 = 18432. Head: final norm
    # 96*128*4 + 96*4 = 49536, lm_head input 49152, logits 96*512*4 = 196608, max and lse
    # 2*96*4 = 768, labels 2*49*8 + 4 = 788: 296852. Token ids 2*48*8 = 768. Total 1918100.
    terms = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="32-true")
    assert sum(terms.values()) == 768 + 1602048 + 18432 + 296852


def test_gpt2_bf16_by_hand() -> None:
    # GPT-2 grid shape, b = 2, s = 48, bf16 autocast: T = 96, d = 128, a = 4, h = 32, f = 512,
    # V = 512, e = 2. Per block: ln_1 and ln_2 x_hat 2*96*128*4 = 98304 and rstd/d
    # 2*96*4 = 768, two Conv1D inputs 2*96*128*2 = 49152, c_attn's fused output
    # 96*384*2 = 73728, SDPA's output 96*128*2 = 24576 and lse 2*4*48*4 = 1536, c_fc's and
    # gelu_new's outputs 2*96*512*2 = 196608: 444672; two blocks 889344. Position ids
    # 48*8 = 384, token ids 768, mask 2*48*48*2 = 9216. Head: ln_f 96*128*4 + 96*4 = 49536,
    # lm_head input 24576, bf16 logits 98304, max and lse 768, labels 788: 173972.
    terms = hf_compiled_saved_terms(SHAPES["gpt2"], 2, 48, precision="bf16-mixed")
    assert sum(terms.values()) == 889344 + 384 + 768 + 9216 + 173972


def test_neox_keeps_rotated_q_k_and_the_second_layers_bf16_sum_by_hand() -> None:
    # GPT-NeoX grid shape, b = 2, s = 48: T = 96, d = 128, a = k = 4, h = 32, e = 2 (bf16).
    # Partial rotary concatenates rotated and passed-through dims: q and k are new tensors,
    # 2*96*4*32*2 = 49152 per block. The first layer keeps the embedding's output and the
    # shared mean and rstd, 96*128*4 + 2*96*4 = 49920; the second, under bf16, the first's
    # attention + MLP sum (96*128*2 = 24576) and its mean and rstd (768) instead of x_hat and
    # rstd / d (49152 + 384): 25344 - 49536 = -24192. Three linear inputs 3*96*128*2 per block.
    terms = hf_compiled_saved_terms(SHAPES["gpt_neox"], 2, 48, precision="bf16-mixed")
    assert terms["rotated_qk"] == 2 * 49152
    assert terms["first_layer_input_stats"] == 49920
    assert terms["second_layer_exchange"] == -24192
    assert terms["linear_inputs"] == 2 * 3 * 96 * 128 * 2
    fp32 = hf_compiled_saved_terms(SHAPES["gpt_neox"], 2, 48, precision="32-true")
    assert fp32["second_layer_exchange"] == 0  # fp32 keeps x_hat (T d 4) there too
    one = hf_compiled_saved_terms(SHAPES["gpt_neox"], 2, 48, precision="bf16-mixed", layers=1)
    assert one["second_layer_exchange"] == 0 and one["norm_normalized"] == 0


def test_checkpointed_gpt2_and_llama_by_hand() -> None:
    # every layer checkpointed, b = 2, s = 48, fp32, on CPU (the RNG state: 5056 bytes).
    # GPT-2 (traced checkpoints): token ids 768, position ids 384, the token and position
    # embeddings' outputs 96*128*4 + 48*128*4 = 73728, the second block's input 49152, two
    # RNG states 10112, mask 2*48*48*4 = 18432, ln_f mean and rstd 768; head 49152 + 196608
    # + 768 + 788 = 247316.
    gpt2 = hf_compiled_saved_terms(SHAPES["gpt2"], 2, 48, precision="32-true",
                                   checkpointing="full", device="cpu")
    assert sum(gpt2.values()) == 768 + 384 + 73728 + 49152 + 10112 + 18432 + 768 + 247316
    # Llama (eager layers): token ids 768, two layer inputs 98304, two stashed CPU RNG states
    # 10112, bool mask 2*48*48 = 4608, cos and sin 2*48*32*4 = 12288, position ids 384, the
    # compiled final norm's input and rsqrt 49536; head 247316.
    llama = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="32-true",
                                    checkpointing="full", device="cpu")
    assert sum(llama.values()) == (768 + 98304 + 10112 + 4608 + 12288 + 384 + 49536
                                   + 247316)
    on_gpu = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="32-true",
                                     checkpointing="full", device="cuda")
    assert on_gpu["rng_state"] == 0  # the stashed states are host tensors


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
    assert compiled.saved_for_backward == 1060244 + 768  # the measured bf16 grid case
    assert compiled.saved_for_backward < eager.saved_for_backward


@pytest.mark.parametrize(("change", "kw", "match"), [
    ({"norm": "layernorm", "mlp": "swiglu"}, {}, "mlp='swiglu' with LayerNorm"),
    ({"norm": "layernorm", "mlp": "gelu", "position": "none"}, {},
     "position='none' with GPT-2's layout"),
    ({"norm": "layernorm", "mlp": "gelu", "position": "rope"}, {},
     "parallel='none' with GPT-NeoX's layout"),
    ({"mlp": "gelu"}, {}, "mlp='gelu' with RMSNorm"),
    ({"mlp": "geglu", "n_kv_head": 1}, {"checkpointing": "full"},
     "checkpointing='full' with the 'gemma' layout"),
    ({}, {"precision": "16-mixed"}, "precision='16-mixed'"),
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


@pytest.mark.torch
@pytest.mark.slow
def test_live_checkpointed_gpt2_matches_the_terms() -> None:
    pytest.importorskip("transformers")
    from scaleplan.reference.hf_compiled import measure_hf_compiled

    cfg = SHAPES["gpt2"]
    m = measure_hf_compiled(cfg, "gpt2", micro_batch_size=2, seq_len=40, precision="32-true",
                            checkpointing=True)
    terms = hf_compiled_saved_terms(cfg, 2, 40, precision="32-true", checkpointing="full",
                                    device="cpu")
    assert sum(terms.values()) == m["saved_for_backward"]
    names = {v[4] for v in m["saved"]}
    assert {"rng_state_output_0", "rng_state_output_1"} <= names  # one per checkpointed block


def test_training_memory_takes_the_checkpointed_terms_and_the_device() -> None:
    # the measured checkpointed GPT-2 (fp32, 2 x 48, on CPU: 400660 bytes); on CUDA each
    # traced region keeps inductor's Philox seed and offset (16 bytes) instead of the CPU
    # generator's 5056-byte state: 2 x (5056 - 16) less
    kw = dict(micro_batch_size=2, seq_len=48, implementation="hf", precision="32-true",
              checkpointing="full", compile=True)
    cpu = training_memory(SHAPES["gpt2"], device="cpu", **kw)  # type: ignore[arg-type]
    assert cpu.saved_for_backward == 400660
    gpu = training_memory(SHAPES["gpt2"], device="cuda", **kw)  # type: ignore[arg-type]
    assert gpu.saved_for_backward == 400660 - 2 * (5056 - 16)
    semantics = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="32-true",
                                        checkpointing="full", device="cpu-cuda-semantics")
    assert semantics["rng_state"] == 2 * 5056  # the eager checkpoint stashes the CPU state


HEAD = {"token_ids", "causal_mask", "final_norm", "lm_head_input", "logits", "loss_max_lse",
        "loss_labels"}


@pytest.mark.parametrize(("family", "checkpointing", "names"), [
    ("llama", "none", HEAD | {"norm_inputs", "norm_rsqrt", "linear_inputs", "sdpa_qkv_out",
                              "sdpa_lse", "swiglu", "first_layer_o_proj_input"}),
    ("gpt2", "none", HEAD | {"position_ids", "norm_normalized", "norm_rstd", "linear_inputs",
                             "fused_qkv", "sdpa_out", "sdpa_lse", "mlp"}),
    ("gpt_neox", "none", HEAD | {"first_layer_input_stats", "norm_normalized",
                                 "second_layer_exchange", "linear_inputs", "fused_qkv",
                                 "sdpa_out", "sdpa_lse", "rotated_qk", "mlp"}),
    ("gpt2", "full", HEAD - {"final_norm"} | {"position_ids", "embedding_outputs",
                                              "block_inputs", "rng_state",
                                              "final_norm_stats"}),
    ("llama", "full", HEAD | {"block_inputs", "rng_state", "rope_cos_sin", "position_ids"}),
])
def test_the_terms_are_named_per_operation(family: str, checkpointing: str,
                                           names: set[str]) -> None:
    # the loss side (final_norm*, lm_head*, logits, loss_*) is what the recompute moment
    # leaves out: its names must keep those prefixes
    terms = hf_compiled_saved_terms(SHAPES[family], 2, 48, precision="bf16-mixed",
                                    checkpointing=checkpointing, device="cpu")
    assert set(terms) == names
    exchanges = ("second_layer_exchange", "first_layer_o_proj_input")  # may be negative
    assert all(v > 0 for k, v in terms.items() if k not in exchanges)


def test_a_layernorm_model_with_another_mlp_is_refused() -> None:
    cfg = SHAPES["gpt2"].replace(mlp="relu")
    with pytest.raises(ScaleplanError, match="mlp='relu' with LayerNorm"):
        training_memory(cfg, micro_batch_size=2, seq_len=48, implementation="hf", compile=True)
    neox = SHAPES["gpt_neox"].replace(mlp="relu")
    with pytest.raises(ScaleplanError, match="mlp='relu' with LayerNorm"):
        training_memory(neox, micro_batch_size=2, seq_len=48, implementation="hf", compile=True)


def test_refusals_say_what_was_measured_and_the_fix() -> None:
    kw = dict(micro_batch_size=2, seq_len=48, implementation="hf", compile=True)
    gemma = SHAPES["gemma"]
    with pytest.raises(ScaleplanError, match=r"precision='16-mixed' \(measured: 32-true, "
                       r"bf16-mixed\), checkpointing='full' with the 'gemma' layout "
                       r"\(measured: 'full' with Llama's and GPT-2's\); use compile=False$"):
        training_memory(gemma, checkpointing="full", precision="16-mixed",
                        **kw)  # type: ignore[arg-type]
    shared = SHAPES["gpt_neox"].replace(parallel="shared_norm")
    with pytest.raises(ScaleplanError, match=r"parallel='shared_norm' with GPT-NeoX's layout "
                       r"\(measured: its parallel residual, 'separate_norms'\)"):
        training_memory(shared, **kw)  # type: ignore[arg-type]
    one_kv = SHAPES["llama"].replace(n_kv_head=1)
    with pytest.raises(ScaleplanError, match=r"one kv head with Gemma's GeGLU layout\)"):
        training_memory(one_kv, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision='16-mixed': measured with 32-true, "
                       "bf16-mixed"):
        hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="16-mixed")


def test_checkpointed_terms_default_to_cuda() -> None:
    # inductor's Philox seed and offset, 16 bytes per traced region, on the default device
    gpt2 = hf_compiled_saved_terms(SHAPES["gpt2"], 2, 48, precision="32-true",
                                   checkpointing="full")
    assert gpt2["rng_state"] == 2 * 16
    # transformers' own mask for the eager layers is bool: one byte per element
    llama = hf_compiled_saved_terms(SHAPES["llama"], 2, 48, precision="32-true",
                                    checkpointing="full")
    assert llama["causal_mask"] == 2 * 48 * 48 and isinstance(llama["causal_mask"], int)


def test_training_memory_takes_gpt_neox_and_gpt2_under_compile() -> None:
    # the measured bf16 grid cases (tests/data/hf_compiled.json), through the option checks
    kw = dict(micro_batch_size=2, seq_len=48, implementation="hf", precision="bf16-mixed",
              compile=True)
    neox = training_memory(SHAPES["gpt_neox"], **kw)  # type: ignore[arg-type]
    assert neox.saved_for_backward == 1097876
    gpt2 = training_memory(SHAPES["gpt2"], **kw)  # type: ignore[arg-type]
    assert gpt2.saved_for_backward == 1073684
