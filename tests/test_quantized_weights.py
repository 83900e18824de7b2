"""Bytes of quantized weights (`scaleplan.memory.quantized`): hand calculations, published
figures and a replay of the committed measurements of bitsandbytes and torchao
(``docs/validation/quantized_weights.json``, written by ``python -m
scaleplan.reference.quant_measure``), all torch-free so mutation testing sees them; and the
live measurements themselves, marked ``torch``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.quantized import (
    WEIGHT_FORMATS,
    dequantized_linear_bytes,
    linear_bytes,
    quantized_weight_bytes,
)
from scaleplan.model.config import GPTConfig

LLAMA2_7B = GPTConfig.preset("llama-2-7b")
# Llama-2-7B by hand: d = 4096, f = 11008, 32 layers, vocab 32000, untied head, RMSNorm.
# Linears per layer: q, k, v, o (4096 x 4096 each) and gate, up, down (11008 x 4096 each).
L2_LINEAR_PER_LAYER = 4 * 4096 * 4096 + 3 * 11008 * 4096  # 202,375,168
L2_LINEAR = 32 * L2_LINEAR_PER_LAYER  # 6,476,005,376
L2_LINEARS = 7 * 32  # nn.Linear modules quantized
L2_ROWS = 32 * (4 * 4096 + 2 * 11008 + 4096)  # output rows of those linears
L2_OTHER = 2 * 32000 * 4096 + (2 * 32 + 1) * 4096  # embed_tokens + lm_head + norms


def test_formats_are_the_issue_names() -> None:
    assert WEIGHT_FORMATS == ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "nf4", "nf4-dq")


def test_one_4096_square_linear_by_hand() -> None:
    n = 4096 * 4096
    assert linear_bytes("bf16", 4096, 4096) == (2 * n, 0)
    assert linear_bytes("fp32", 4096, 4096) == (4 * n, 0)
    assert linear_bytes("int8", 4096, 4096) == (n, 4 * 4096)  # LLM.int8: fp32 SCB per row
    assert linear_bytes("fp8", 4096, 4096) == (n, 4 * 4096)
    # int4: 2 per byte; 4096 / 128 = 32 groups per row, bf16 scale + bf16 zero each
    assert linear_bytes("int4", 4096, 4096) == (n // 2, 4096 * 32 * 2 * 2)
    assert linear_bytes("int4", 4096, 4096, 32) == (n // 2, 4096 * 128 * 2 * 2)
    # nf4: n / 64 = 262,144 fp32 absmax and the 16-entry fp32 code
    assert linear_bytes("nf4", 4096, 4096) == (n // 2, 262144 * 4 + 16 * 4)
    assert linear_bytes("nf4", 4096, 4096, 256) == (n // 2, 65536 * 4 + 16 * 4)
    # nf4-dq: 262,144 uint8 absmax, 262,144 / 256 = 1024 fp32 second-level absmax, the
    # 256-entry fp32 dynamic map, the fp32 offset and the 16-entry NF4 code
    assert linear_bytes("nf4-dq", 4096, 4096) == (n // 2, 262144 + 1024 * 4 + 1024 + 4 + 64)


def test_blocks_round_up_for_odd_sizes() -> None:
    # 3 x 50 = 150 elements: 75 bytes packed, ceil(150 / 64) = 3 absmax; ceil(3/256) = 1
    assert linear_bytes("nf4", 3, 50) == (75, 3 * 4 + 64)
    assert linear_bytes("nf4-dq", 3, 50) == (75, 3 + 4 + 1024 + 4 + 64)
    # int4 groups run along each row: ceil(50 / 32) = 2 groups per row, 3 rows
    assert linear_bytes("int4", 3, 50, 32) == (75, 3 * 2 * 4)
    assert linear_bytes("nf4", 1, 3) == (2, 4 + 64)  # 3 values take 2 bytes


def test_qlora_double_quantization_bits_per_parameter() -> None:
    # QLoRA (Dettmers et al. 2023, arXiv:2305.14314, Sec. 3 "Double Quantization"): blocks of
    # 64 cost 32/64 = 0.5 bits per parameter; double quantized, 8/64 + 32/(64*256) = 0.127.
    rows, cols = 4096, 4096 * 16  # large enough that per-tensor constants vanish
    n = rows * cols
    plain = linear_bytes("nf4", rows, cols)[1] * 8 / n
    dq = linear_bytes("nf4-dq", rows, cols)[1] * 8 / n
    assert plain == pytest.approx(0.5, abs=1e-5)
    assert round(dq, 3) == 0.127
    assert plain - dq == pytest.approx(0.373, abs=1e-3)  # "reduces ... by 0.373 bits"


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_parts_sum_to_total(fmt: str) -> None:
    q = quantized_weight_bytes(LLAMA2_7B, fmt)  # type: ignore[arg-type]
    assert q.quantized + q.scales + q.unquantized == q.total
    assert q.weights == fmt


def test_llama2_7b_by_hand() -> None:
    half = quantized_weight_bytes(LLAMA2_7B, "bf16")
    assert half.total == 2 * 6_738_415_616  # HF's parameter count of Llama-2-7B, bf16
    assert (half.quantized, half.scales) == (2 * L2_LINEAR, 0)
    assert quantized_weight_bytes(LLAMA2_7B, "fp32").total == 4 * 6_738_415_616
    nf4 = quantized_weight_bytes(LLAMA2_7B, "nf4")
    assert nf4.quantized == L2_LINEAR // 2
    assert nf4.scales == 4 * L2_LINEAR // 64 + 64 * L2_LINEARS
    assert nf4.unquantized == 2 * L2_OTHER
    assert nf4.group_size == 64
    dq = quantized_weight_bytes(LLAMA2_7B, "nf4-dq")
    # every Llama-2 linear has a multiple of 64 x 256 elements: no rounding
    assert dq.scales == L2_LINEAR // 64 + 4 * L2_LINEAR // (64 * 256) + 1092 * L2_LINEARS
    i8 = quantized_weight_bytes(LLAMA2_7B, "int8")
    assert (i8.quantized, i8.scales) == (L2_LINEAR, 4 * L2_ROWS)
    i4 = quantized_weight_bytes(LLAMA2_7B, "int4")
    assert i4.scales == 2 * 2 * L2_LINEAR // 128
    assert i4.group_size == 128


def test_gpt2_tied_head_and_biases_stay_16_bit() -> None:
    cfg = GPTConfig.preset("gpt2")
    # GPT-2 small: wte 50257 x 768 (the head is tied), wpe 1024 x 768, per layer 2 LayerNorms
    # (scale + bias) and the biases of c_attn (2304), attn c_proj (768), c_fc (3072),
    # mlp c_proj (768); ln_f.
    other = 50257 * 768 + 1024 * 768 + 12 * (4 * 768 + 2304 + 768 + 3072 + 768) + 2 * 768
    linear = 12 * (3 * 768 * 768 + 768 * 768 + 2 * 3072 * 768)
    q = quantized_weight_bytes(cfg, "int8")
    assert (q.quantized, q.unquantized) == (linear, 2 * other)
    assert q.quantized + q.unquantized // 2 == 124_439_808  # every parameter once


def test_moe_routed_experts_and_router_stay_16_bit() -> None:
    # transformers 5 stores routed experts as 3-D nn.Parameter and the router as its own
    # module: neither bitsandbytes nor torchao's quantize_ replaces them.
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=128, mlp="swiglu", norm="rmsnorm",
                    bias=False, position="rope", tie_embeddings=False,
                    moe={"n_experts": 4, "top_k": 2, "expert_hidden": 32})
    q = quantized_weight_bytes(cfg, "nf4")
    attn = 4 * 64 * 64  # q, k, v, o per layer
    experts = 4 * 3 * 32 * 64  # gate, up, down of 4 experts
    router = 4 * 64
    other = 2 * 128 * 64 + (2 * 2 + 1) * 64
    assert q.quantized == 2 * attn // 2
    assert q.scales == 2 * (4 * attn // 64 + 4 * 64)
    assert q.unquantized == 2 * (2 * (experts + router) + other)


def test_tensor_parallel_splits_linears_and_keeps_norms() -> None:
    par = Parallelism(tensor=2)
    q = quantized_weight_bytes(LLAMA2_7B, "int8", parallelism=par)
    # column-parallel q, k, v, gate, up halve their rows; row-parallel o, down keep theirs
    rows = 32 * (3 * 4096 // 2 + 2 * 11008 // 2 + 4096 + 4096)
    assert (q.quantized, q.scales) == (L2_LINEAR // 2, 4 * rows)
    assert q.unquantized == 2 * (32000 * 4096 + (2 * 32 + 1) * 4096)  # vocab split, norms whole


def test_dequantized_linear_is_the_largest_in_bf16() -> None:
    assert dequantized_linear_bytes(LLAMA2_7B, "nf4") == 2 * 11008 * 4096
    assert dequantized_linear_bytes(LLAMA2_7B, "int8") == 2 * 11008 * 4096
    assert dequantized_linear_bytes(LLAMA2_7B, "bf16") == 0
    # Llama-3-8B: the MLP's 14336 x 4096; q alone is 4096 x 4096 (k, v are 1024 x 4096)
    assert dequantized_linear_bytes(GPTConfig.preset("llama-3-8b"), "nf4-dq") == 2 * 14336 * 4096


def _refused(message: str, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ScaleplanError, match=f"^{re.escape(message)}$"):
        quantized_weight_bytes(LLAMA2_7B, *args, **kwargs)


def test_bad_format_is_refused_by_name() -> None:
    formats = "fp32, bf16, fp16, fp8, int8, int4, nf4, nf4-dq"
    _refused(f"weights='int3' is not a weight format; use one of {formats}", "int3")
    with pytest.raises(ScaleplanError, match=r"weights=4 is not a weight format"):
        dequantized_linear_bytes(LLAMA2_7B, 4)  # type: ignore[arg-type]


def test_bad_group_sizes_are_refused_by_name() -> None:
    _refused("group_size=100 is not a group size torchao's Int4WeightOnlyConfig accepts for "
             "weights='int4'; use one of 32, 64, 128, 256 (default 128)", "int4",
             group_size=100)
    _refused("group_size=512 is not a group size torchao's Int4WeightOnlyConfig accepts for "
             "weights='int4'; use one of 32, 64, 128, 256 (default 128)", "int4",
             group_size=512)
    _refused("group_size=16 is not a group size bitsandbytes accepts for weights='nf4'; use "
             "one of 32, 64, 128, 256, 512, 1024, 2048, 4096 (default 64)", "nf4",
             group_size=16)
    _refused("group_size=True is not a group size bitsandbytes accepts for weights='nf4-dq'; "
             "use one of 32, 64, 128, 256, 512, 1024, 2048, 4096 (default 64)", "nf4-dq",
             group_size=True)
    _refused("group_size=128 with weights='int8': int8 has per-row scales, group-wise scales "
             "are not modelled yet; leave group_size=None, or use weights='int4', 'nf4' or "
             "'nf4-dq'", "int8", group_size=128)
    _refused("group_size=64 with weights='bf16': bf16 has no scales, group-wise scales are "
             "not modelled yet; leave group_size=None, or use weights='int4', 'nf4' or "
             "'nf4-dq'", "bf16", group_size=64)
    # the sizes each library accepts are accepted
    assert quantized_weight_bytes(LLAMA2_7B, "nf4", group_size=4096).group_size == 4096
    assert quantized_weight_bytes(LLAMA2_7B, "int4", group_size=256).group_size == 256


def test_unmodelled_parallelism_is_refused() -> None:
    _refused("parallelism.pipeline=2: quantized weights per pipeline stage are not modelled "
             "yet; use pipeline=1 (tensor and expert parallelism are)", "nf4",
             parallelism=Parallelism(pipeline=2))
    for par, shown in ((Parallelism(data=2, zero=1), "zero=1, fsdp=None"),
                       (Parallelism(data=2, fsdp="full_shard"), "zero=0, fsdp='full_shard'")):
        _refused(f"parallelism.{shown}: quantized weights sharded by ZeRO/FSDP are not "
                 "modelled yet; use zero=0 and fsdp=None (each data-parallel replica then "
                 "holds the whole model)", "nf4", parallelism=par)
    _refused("parallelism={'tensor': 2} is not a Parallelism; pass Parallelism(tensor=..., "
             "expert=...) or None", "nf4", parallelism={"tensor": 2})
    # data-parallel replicas each hold the whole model
    assert quantized_weight_bytes(LLAMA2_7B, "nf4", parallelism=Parallelism(data=8)) == (
        quantized_weight_bytes(LLAMA2_7B, "nf4"))


def test_int4_applies_by_group() -> None:
    from scaleplan.memory.quantized import int4_applies

    assert int4_applies("int4", 4096, None) and not int4_applies("int4", 192, None)  # 128
    assert int4_applies("int4", 96, 32) and not int4_applies("int4", 96, 64)
    assert int4_applies("nf4", 100, None) and int4_applies("int8", 3, None)


def test_non_default_group_sizes_by_hand() -> None:
    nf4 = quantized_weight_bytes(LLAMA2_7B, "nf4", group_size=256)
    assert nf4.scales == 4 * L2_LINEAR // 256 + 64 * L2_LINEARS
    i4 = quantized_weight_bytes(LLAMA2_7B, "int4", group_size=32)
    assert i4.scales == 2 * 2 * L2_LINEAR // 32
    # 11008 = 43 x 256: Llama-2's down projection is whole groups of 256 too
    assert quantized_weight_bytes(LLAMA2_7B, "int4", group_size=256).quantized == L2_LINEAR // 2


def test_opt_projections_are_quantized_linears() -> None:
    # OPT-350m's layout: a 512-wide embedding, project_in (1024 x 512) and project_out
    # (512 x 1024) nn.Linear around a 1024-wide model; bitsandbytes replaces both.
    cfg = GPTConfig(n_layer=1, n_head=16, n_embd=1024, vocab_size=1000, embed_dim=512,
                    block_size=64)
    with_proj = quantized_weight_bytes(cfg, "int8")
    without = quantized_weight_bytes(cfg.replace(embed_dim=None), "int8")
    block = 4 * 1024 * 1024 + 2 * 4096 * 1024
    assert with_proj.quantized == block + 2 * 512 * 1024
    assert without.quantized == block
    assert with_proj.scales == 4 * (4 * 1024 + 4096 + 1024 + 1024 + 512)


def test_tensor_parallel_rounds_uneven_shares_up() -> None:
    # mlp_hidden 690 over 4 ranks: 173 rows of c_fc (and its bias) per rank, 173 inputs of
    # the down projection
    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=64, vocab_size=100, mlp_hidden=690,
                    block_size=32)
    q = quantized_weight_bytes(cfg, "int8", parallelism=Parallelism(tensor=4))
    assert q.quantized == 3 * 16 * 64 + 64 * 16 + 173 * 64 + 64 * 173
    assert q.scales == 4 * (3 * 16 + 64 + 173 + 64)
    other = (100 * 64 // 4 + 32 * 64 + 2 * 64
             + 4 * 64 + 3 * 64 // 4 + 64 + 173 + 64)  # wte, wpe, ln_f; block norms, biases
    assert q.unquantized == 2 * other


def test_tensor_and_expert_parallel_split_routed_experts_over_both() -> None:
    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=64, vocab_size=128, mlp="swiglu",
                    norm="rmsnorm", bias=False, position="rope", tie_embeddings=False,
                    moe={"n_experts": 8, "top_k": 2, "expert_hidden": 32})
    q = quantized_weight_bytes(cfg, "nf4", parallelism=Parallelism(data=2, tensor=2, expert=2))
    experts = 8 * 3 * 32 * 64 // 4
    other = 2 * 128 * 64 // 2 + 3 * 64 + experts + 8 * 64 // 2  # router split by t
    assert q.unquantized == 2 * other


def test_int4_model_with_no_whole_group_dequantizes_nothing() -> None:
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=96, vocab_size=100, block_size=32,
                    mlp_hidden=480)
    assert dequantized_linear_bytes(cfg, "int4") == 0  # 96 and 480 inputs: no 128 groups
    assert dequantized_linear_bytes(cfg, "int4", group_size=32) == 2 * 480 * 96
    # bf16 all but the biases and norms at the default group; every linear in groups of 32
    linears = 4 * 96 * 96 + 2 * 480 * 96
    assert quantized_weight_bytes(cfg, "int4").quantized == 0
    assert quantized_weight_bytes(cfg, "int4", group_size=32).quantized == linears // 2


# torchao's benchmark table (pytorch/ao, torchao/quantization/README.md, "CUDA backend |
# NVIDIA-A100-80GB GPU", Llama-2-7B = meta-llama/Llama-2-7b-chat-hf and Llama-3-8B rows):
# "Model Size (GB)" is torchao/_models/llama/generate.py's _get_model_size: the bytes of every
# parameter and buffer of the model's children except the nn.Embedding, / 1e9. There quantize_
# takes every nn.Linear, the output layer included; norms stay bf16.
def _gpt_fast_size(cfg: GPTConfig, weights: str, group_size: int | None = None,
                   pad_to: int = 1) -> float:
    from scaleplan.memory.quantized import hf_linears
    from scaleplan.model.shapes import parameters

    total = 0
    for t in parameters(cfg):
        if t.part == "token_embedding":
            continue
        times = cfg.n_layer if t.per_block else 1
        if not t.matmul:
            total += times * 2 * t.numel  # RMSNorm scales, bf16
            continue
        for rows, cols in hf_linears(cfg, t):
            padded = -(-cols // pad_to) * pad_to
            total += times * sum(linear_bytes(weights, rows, padded, group_size))  # type: ignore[arg-type]
    return total / 1e9


def test_torchao_readme_llama_model_sizes() -> None:
    llama3 = GPTConfig.preset("llama-3-8b")
    assert round(_gpt_fast_size(LLAMA2_7B, "bf16"), 2) == 13.21
    assert round(_gpt_fast_size(llama3, "bf16"), 2) == 15.01
    # int4wo-64: Llama-3-8B's widths are multiples of 1024; torchao's CUDA tinygemm layout
    # pads in_features to a multiple of 1024 (int4_tile_packed_to_4d_tensor.py:
    # find_multiple(orig_in_features, 1024)), so Llama-2-7B's 11008-wide down projection
    # holds 11264 columns: 3.717 GB unpadded, 3.736 padded, the table's 3.74.
    assert round(_gpt_fast_size(llama3, "int4", 64), 2) == 4.22
    assert round(_gpt_fast_size(LLAMA2_7B, "int4", 64, pad_to=1024), 2) == 3.74
    assert round(_gpt_fast_size(LLAMA2_7B, "int4", 64), 3) == 3.717
    # float8wo (Llama-3.1-8B, H100 table): one fp32 scale per row
    assert round(_gpt_fast_size(llama3, "fp8"), 2) == 7.51


def test_torchao_readme_int8wo_has_ten_bytes_per_row() -> None:
    # int8wo: 7.52 GB for Llama-3-8B, where LLM.int8's 4 bytes per row give 7.51: torchao's
    # int8 weight-only keeps a bf16 scale and an int64 zero point per row (10 bytes; the
    # harness measures it, docs/validation/quantized_weights.json).
    llama3 = GPTConfig.preset("llama-3-8b")
    rows = 32 * (4096 + 1024 + 1024 + 4096 + 2 * 14336 + 4096) + 128256
    llm_int8 = _gpt_fast_size(llama3, "int8")
    assert round(llm_int8, 2) == 7.51
    assert round(llm_int8 + (10 - 4) * rows / 1e9, 2) == 7.52


RECORD = Path(__file__).resolve().parents[1] / "docs" / "validation" / "quantized_weights.json"
RECORDS: list[dict[str, Any]] = json.loads(RECORD.read_text())["records"]
PARTS = ("quantized", "scales", "unquantized")
NF4_PER_TENSOR = {"nf4": 64, "nf4-dq": 64 + 1024 + 4}  # codes (and offset) per Params4bit


def _predicted(record: dict[str, Any]) -> dict[str, int]:
    """scaleplan's parts for a record, computed now (not the record's own prediction)."""
    if record["kind"] == "linear":
        data, scales = linear_bytes(record["weights"], *record["shape"], record["group_size"])
        return {"quantized": data, "scales": scales, "unquantized": 0}
    q = quantized_weight_bytes(GPTConfig.model_validate(record["config"]), record["weights"],
                               group_size=record["group_size"])
    return {"quantized": q.quantized, "scales": q.scales, "unquantized": q.unquantized}


def _known_difference(record: dict[str, Any]) -> dict[str, int]:
    """What the libraries hold beyond the formulas, written out per documented layout."""
    extra = dict.fromkeys(PARTS, 0)
    if record["kind"] == "model":
        cfg = GPTConfig.model_validate(record["config"])
    if record["library"] == "torchao" and record["weights"] == "int8":
        # torchao's int8 weight-only: a bf16 scale and an int64 zero point per row (10 bytes)
        # where LLM.int8 keeps one fp32 scale (4): the 6 extra bytes of each row
        extra["scales"] = _predicted(record)["scales"] * 6 // 4
    if record.get("case") == "gpt2" and record["weights"] in NF4_PER_TENSOR:
        # GPT-2's fused c_attn Conv1D is one Params4bit, where q, k, v are counted as three
        extra["scales"] = -2 * cfg.n_layer * NF4_PER_TENSOR[record["weights"]]
    if record.get("case") == "deepseek_v3":
        # DeepseekV3TopkRouter's weight is created fp32 (modeling_deepseek_v3.py): 2 more
        # bytes per element than the bf16 router counted here, in each MoE block
        assert cfg.moe is not None
        moe_blocks = cfg.n_layer - cfg.moe.n_dense_layers
        extra["unquantized"] = 2 * moe_blocks * cfg.moe.n_experts * cfg.n_embd
    return extra


def _label(record: dict[str, Any]) -> str:
    what = record.get("case") or "x".join(map(str, record["shape"]))
    return f"{what}-{record['library']}-{record['weights']}-g{record['group_size']}"


def test_record_covers_formats_families_and_libraries() -> None:
    cases = {r.get("case") for r in RECORDS if r["kind"] == "model"}
    assert {"llama", "qwen2", "gpt2", "mixtral", "qwen3_moe", "deepseek_v3"} <= cases
    assert {(r["library"], r["weights"]) for r in RECORDS} == {
        ("bitsandbytes", "nf4"), ("bitsandbytes", "nf4-dq"), ("bitsandbytes", "int8"),
        ("torchao", "int4"), ("torchao", "int8"), ("torchao", "fp8")}


@pytest.mark.parametrize("record", RECORDS, ids=_label)
def test_measured_bytes_replayed_exactly(record: dict[str, Any]) -> None:
    predicted = _predicted(record)
    extra = _known_difference(record)
    assert record["measured"] == {k: predicted[k] + extra[k] for k in PARTS}


@pytest.mark.parametrize("record", RECORDS, ids=_label)
def test_measured_total_within_two_percent(record: dict[str, Any]) -> None:
    # the issue's acceptance bar, with no allowance for the documented differences, except
    # for torchao's int8 on the 250-wide toy linear: its 6 more bytes per row than LLM.int8
    # are 2.4 % of 260 kB there (0.15 % at Llama's 4096 inputs; the exact replay above checks
    # that layout)
    toy = record["library"] == "torchao" and record["weights"] == "int8" and record.get(
        "shape") == [1000, 250]
    allowance = sum(_known_difference(record).values()) if toy else 0
    measured, predicted = (sum(parts.values()) for parts in (record["measured"],
                                                              _predicted(record)))
    assert measured == pytest.approx(predicted + allowance, rel=0.02)


@pytest.mark.torch
@pytest.mark.parametrize(("case", "library", "fmt"), [
    ("llama", "bitsandbytes", "nf4-dq"), ("gpt2", "bitsandbytes", "int8"),
    ("mixtral", "bitsandbytes", "nf4"), ("llama", "torchao", "int4"),
    ("qwen2", "torchao", "fp8")])
def test_live_library_bytes(case: str, library: str, fmt: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes" if library == "bitsandbytes" else "torchao")
    from scaleplan.reference.quant_measure import measure_model

    record = measure_model(case, library, fmt)
    predicted = _predicted(record)
    extra = _known_difference(record)
    assert record["measured"] == {k: predicted[k] + extra[k] for k in PARTS}


@pytest.mark.torch
def test_live_real_width_linear() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from scaleplan.reference.quant_measure import measure_linear

    record = measure_linear((1024, 4096), "bitsandbytes", "nf4-dq")
    assert record["measured"] == {"quantized": 1024 * 4096 // 2,
                                  "scales": 65536 + 4 * 256 + 1092, "unquantized": 0}


def test_gpt2_tensor_parallel_by_hand() -> None:
    # Megatron-LM's layout over 2 ranks: q, k, v (768 x 768 each), c_fc (3072 x 768) split
    # by rows; the two c_proj by inputs (768 rows kept). wte vocabulary-parallel; wpe, norms
    # and the c_proj biases whole; the c_attn and c_fc biases split.
    q = quantized_weight_bytes(GPTConfig.preset("gpt2"), "int8",
                               parallelism=Parallelism(tensor=2))
    data = 12 * (3 * 384 * 768 + 768 * 384 + 1536 * 768 + 768 * 1536)
    rows = 12 * (3 * 384 + 768 + 1536 + 768)
    other = (50257 * 768 // 2 + 1024 * 768 + 768 * 2
             + 12 * (4 * 768 + 2304 // 2 + 768 + 3072 // 2 + 768))
    assert (q.quantized, q.scales, q.unquantized) == (data, 4 * rows, 2 * other)


def test_moe_expert_parallel_splits_routed_experts() -> None:
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=128, mlp="swiglu",
                    norm="rmsnorm", bias=False, position="rope", tie_embeddings=False,
                    moe={"n_experts": 4, "top_k": 2, "expert_hidden": 32})
    q = quantized_weight_bytes(cfg, "int8", parallelism=Parallelism(data=4, expert=4))
    experts = 3 * 32 * 64  # one expert per rank
    other = 2 * 128 * 64 + 5 * 64 + 2 * (experts + 4 * 64)  # router whole
    assert q.unquantized == 2 * other
    assert q.quantized == 2 * 4 * 64 * 64  # attention untouched by expert parallelism


def test_int4_leaves_linears_with_partial_groups_in_bf16() -> None:
    # torchao skips a linear whose in_features is no multiple of the group size: the down
    # projection of a 688-wide MLP (256 x 688; 688 = 5.375 x 128) stays bf16 at group 128
    # (the harness's tiny Llama showed it: docs/validation/quantized_weights.json).
    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=256, vocab_size=100, mlp="swiglu",
                    mlp_hidden=688, norm="rmsnorm", bias=False, position="rope",
                    tie_embeddings=False)
    q = quantized_weight_bytes(cfg, "int4")
    quantized = 4 * 256 * 256 + 2 * 688 * 256  # q, k, v, o; gate, up (256 inputs)
    assert q.quantized == quantized // 2
    assert q.scales == 2 * 2 * quantized // 128
    assert q.unquantized == 2 * (256 * 688 + 2 * 100 * 256 + 3 * 256)
    # the largest weight dequantized is then gate/up (688 x 256), not down
    assert dequantized_linear_bytes(cfg, "int4") == 2 * 688 * 256
    assert dequantized_linear_bytes(cfg, "nf4") == 2 * 688 * 256
    wide = cfg.replace(mlp_hidden=1024)
    assert dequantized_linear_bytes(wide, "int4", group_size=256) == 2 * 1024 * 256


def test_format_names_are_case_insensitive_and_fp16_is_bf16_sized() -> None:
    assert quantized_weight_bytes(LLAMA2_7B, "NF4-DQ") == quantized_weight_bytes(  # type: ignore[arg-type]
        LLAMA2_7B, "nf4-dq")
    fp16, bf16 = (quantized_weight_bytes(LLAMA2_7B, f) for f in ("fp16", "bf16"))
    assert (fp16.quantized, fp16.unquantized) == (bf16.quantized, bf16.unquantized)
    assert quantized_weight_bytes(LLAMA2_7B).weights == "bf16"  # the default


def test_result_round_trips_through_json() -> None:
    from scaleplan.memory.quantized import QuantizedWeights

    q = quantized_weight_bytes(LLAMA2_7B, "int4", group_size=64)
    assert QuantizedWeights.model_validate_json(q.model_dump_json()) == q
    assert q.group_size == 64


def test_qlora_double_quantization_saves_about_3_gb_on_65b() -> None:
    # QLoRA (arXiv:2305.14314, Sec. 3): double quantization saves "approximately 3 GB for a
    # 65B model". LLaMA-65B (huggyllama/llama-65b config.json): 80 layers, d = 8192, 64
    # heads, f = 22016, vocab 32000, untied head.
    llama65 = LLAMA2_7B.replace(n_layer=80, n_head=64, n_embd=8192, mlp_hidden=22016)
    saved = (quantized_weight_bytes(llama65, "nf4").total
             - quantized_weight_bytes(llama65, "nf4-dq").total)
    assert round(saved / 1e9) == 3
    # by hand: 80 layers x (4 x 8192^2 + 3 x 22016 x 8192) elements, 0.373 bits each, less
    # the 1,028 more bytes of constants per linear (7 per layer)
    n = 80 * (4 * 8192**2 + 3 * 22016 * 8192)
    assert saved == n // 64 * 3 - n // (64 * 256) * 4 - 80 * 7 * (1092 - 64)
