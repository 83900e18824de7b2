"""Bytes of quantized weights (`scaleplan.memory.quantized`): hand calculations and published
figures (torch-free, so mutation testing sees them)."""

from __future__ import annotations

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


def test_bad_format_is_refused_by_name() -> None:
    with pytest.raises(ScaleplanError, match=r"weights='int3' is not a weight format"):
        quantized_weight_bytes(LLAMA2_7B, "int3")  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"weights=4 is not a weight format"):
        dequantized_linear_bytes(LLAMA2_7B, 4)  # type: ignore[arg-type]


def test_bad_group_sizes_are_refused_by_name() -> None:
    with pytest.raises(ScaleplanError, match=r"group_size=100 is not a group size .*int4"):
        quantized_weight_bytes(LLAMA2_7B, "int4", group_size=100)
    with pytest.raises(ScaleplanError, match=r"group_size=16 is not a group size bitsandbytes"):
        quantized_weight_bytes(LLAMA2_7B, "nf4", group_size=16)
    with pytest.raises(ScaleplanError, match=r"group_size=True"):
        quantized_weight_bytes(LLAMA2_7B, "nf4", group_size=True)
    with pytest.raises(ScaleplanError, match=r"group_size=128 with weights='int8'.*not modelled"):
        quantized_weight_bytes(LLAMA2_7B, "int8", group_size=128)
    with pytest.raises(ScaleplanError, match=r"group_size=64 with weights='bf16'"):
        quantized_weight_bytes(LLAMA2_7B, "bf16", group_size=64)


def test_unmodelled_parallelism_is_refused() -> None:
    with pytest.raises(ScaleplanError, match=r"parallelism=.*not modelled yet"):
        quantized_weight_bytes(LLAMA2_7B, "nf4", parallelism=Parallelism(pipeline=2))
    with pytest.raises(ScaleplanError, match=r"parallelism=.*not modelled yet"):
        quantized_weight_bytes(LLAMA2_7B, "nf4", parallelism=Parallelism(data=2, zero=3))
    with pytest.raises(ScaleplanError, match=r"parallelism=\{'tensor': 2\} is not a Parallelism"):
        quantized_weight_bytes(LLAMA2_7B, "nf4", parallelism={"tensor": 2})  # type: ignore[arg-type]
