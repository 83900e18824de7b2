"""Per-GPU memory under data, tensor and pipeline parallelism; bad layouts."""

from __future__ import annotations

import math

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

GPT2 = GPTConfig.preset("gpt2")
N_GPT2 = 124_439_808  # count_params(gpt2).total; 148 parameter tensors
TINY = GPTConfig(n_layer=4, n_head=4, n_embd=64, block_size=128, vocab_size=200)
KW = dict(micro_batch_size=1, seq_len=128)


def test_zero1_shards_the_megatron_optimizer_states_over_data_ranks() -> None:
    # bf16-fp32-master: 2 B weights, 4 B grads, 12 B (master + 2 Adam states) + 4 B step per
    # tensor; ZeRO-1 over 8 ranks keeps weights and grads whole (plus one 25 MiB bucket).
    m = training_memory(GPT2, precision="bf16-fp32-master",
                        parallelism=Parallelism(data=8, zero=1), **KW)  # type: ignore[arg-type]
    assert m.optimizer == math.ceil((12 * N_GPT2 + 4 * 148) / 8)
    assert m.weights == 2 * N_GPT2
    assert m.gradients == 4 * N_GPT2 + 25 * 2**20


def test_ddp_without_bucket_view_keeps_a_second_copy_of_the_gradients() -> None:
    # PyTorch DDP docs: gradient_as_bucket_view=True saves memory equal to the gradients' size.
    copy = training_memory(GPT2, parallelism=Parallelism(data=2), **KW)  # type: ignore[arg-type]
    view = training_memory(GPT2, parallelism=Parallelism(data=2, ddp_bucket_view=True),
                           **KW)  # type: ignore[arg-type]
    assert (copy.gradients, view.gradients) == (2 * 4 * N_GPT2, 4 * N_GPT2)


def test_fsdp_full_shard_equals_zero3() -> None:
    a = training_memory(GPT2, parallelism=Parallelism(data=4, zero=3), **KW)  # type: ignore[arg-type]
    b = training_memory(GPT2, parallelism=Parallelism(data=4, fsdp="full_shard"), **KW)  # type: ignore[arg-type]
    # ZeRO-3: a quarter of the fp32 weights, plus the largest layer (wte, 50257 x 768) gathered
    assert a == b and a.weights == math.ceil(4 * N_GPT2 / 4) + 4 * 50257 * 768


def test_tensor_parallel_splits_attention_and_mlp_and_sequence_parallel_the_rest() -> None:
    # Korthikanti et al. 2022, Table 2: MLP activations / t always; norm inputs / t only with SP.
    one = training_memory(TINY, **KW).saved_breakdown  # type: ignore[arg-type]
    tp = training_memory(TINY, parallelism=Parallelism(tensor=4), **KW).saved_breakdown  # type: ignore[arg-type]
    sp = training_memory(TINY, parallelism=Parallelism(tensor=4, sequence_parallel=True),
                         **KW).saved_breakdown  # type: ignore[arg-type]
    assert tp["mlp_activations"] * 4 == one["mlp_activations"]
    assert tp["norm1_input"] == one["norm1_input"]
    assert sp["norm1_input"] * 4 == one["norm1_input"]


def test_pipeline_first_stage_holds_p_micro_batches_of_its_layers() -> None:
    # 1F1B: the first of 2 stages holds 2 micro-batches of 2 layers = 4 layers' activations,
    # as many as one GPU with all 4 layers (Korthikanti et al. 2022, Sec. 4.2.3).
    one = training_memory(TINY, **KW).saved_breakdown  # type: ignore[arg-type]
    pp = training_memory(TINY, parallelism=Parallelism(pipeline=2), **KW).saved_breakdown  # type: ignore[arg-type]
    assert pp["mlp_activations"] == one["mlp_activations"]
    assert "log_softmax" not in pp  # the loss lives on the last stage


@pytest.mark.parametrize(("layout", "cfg", "match"), [
    (dict(zero=4), GPT2, r"zero=4 is not a ZeRO stage; use 0 \(DDP\), 1"),
    (dict(tensor=5), GPT2,
     r"tensor=5 does not divide n_head=12 and n_kv_head=12.*\(1, 2, 3, 4, 6, 12\)"),
    (dict(tensor=16), GPTConfig.preset("llama-3-8b"),
     r"tensor=16 does not divide n_head=32 and n_kv_head=8"),
    (dict(pipeline=13), GPT2, r"pipeline=13 exceeds n_layer=12"),
    (dict(sequence_parallel=True), GPT2, r"sequence_parallel=True needs tensor > 1"),
    (dict(zero=2, fsdp="full_shard"), GPT2, r"give one"),
])
def test_bad_layouts_are_rejected(layout: dict[str, object], cfg: GPTConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        training_memory(cfg, parallelism=Parallelism(**layout), **KW)  # type: ignore[arg-type]
