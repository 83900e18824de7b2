"""FitsOn on the real memory model and GPU database: bounds worked out by hand."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from scaleplan.model.config import GPTConfig
from scaleplan.model.training_config import TrainingConfig
from scaleplan.validation.markers import FitsOn, check

GiB = 2**30
SEED = GPTConfig(n_layer=12, n_head=12, n_embd=384, vocab_size=50304, block_size=1024,
                 bias=False, dropout=0.1)
GPT2 = GPTConfig.preset("gpt2")


class Run(BaseModel):
    model: GPTConfig
    training: TrainingConfig


def test_gpt2_small_at_micro_batch_64_does_not_fit_12_gib() -> None:
    # A lower bound by hand: Korthikanti et al. 2022, Table 2, keeps 34 s b h bytes per layer
    # with flash attention (the 5 a s^2 b term gone): 12 x 34 x 1024 x 64 x 768 bytes
    # = 20,535,312,384 = 19.1 GiB, before weights, gradients and AdamW states (16 bytes per
    # parameter x 124,439,808 = 1.85 GiB). Far above the RTX 4070's 12 GiB.
    lower_bound = 12 * 34 * 1024 * 64 * 768 + 16 * 124_439_808
    ta = TypeAdapter(Annotated[GPTConfig, FitsOn("RTX 4070", micro_batch_size=64,
                                                 seq_len=1024)])
    with pytest.raises(ValidationError) as exc:
        ta.validate_python(GPT2)
    [err] = exc.value.errors()
    assert err["type"] == "scaleplan.does_not_fit"
    assert err["ctx"]["needed_bytes"] >= lower_bound
    assert err["ctx"]["available_bytes"] == 12_282 * 2**20  # nvidia-smi total on an RTX 4070
    assert "but RTX 4070 has 11.99 GiB" in err["msg"]
    assert " GB" not in err["msg"]


def test_seed_config_at_micro_batch_1_fits_an_80_gib_a100() -> None:
    # An upper bound by hand, far from 80 GiB: 16 bytes per parameter x 40,953,216 = 0.61 GiB;
    # activations at b=1 are tens of s b h bytes per layer (34 x 1024 x 384 x 12 = 0.15 GiB);
    # logits and their gradients a few s b V x 4 bytes (3 x 1024 x 50304 x 4 = 0.58 GiB); a CUDA
    # context under 1 GiB. Under 5 GiB in all.
    marker = FitsOn("A100 80GB", micro_batch_size=1, seq_len=1024)
    assert marker.available_bytes == 80 * GiB
    assert TypeAdapter(Annotated[GPTConfig, marker]).validate_python(SEED) == SEED
    assert check(SEED, marker) == []
    assert marker.needed_bytes(SEED, micro_batch_size=1, seq_len=1024, precision="bf16-mixed",
                               optimizer="adamw", attention="flash",
                               checkpointing="none") < 5 * GiB


def test_the_suggested_micro_batch_fits_and_the_next_does_not() -> None:
    run = Run(model=GPT2, training=TrainingConfig(micro_batch_size=32, seq_len=1024,
                                                  grad_accum_steps=16))
    marker = FitsOn("RTX 4070")
    [finding] = check(run, marker)
    best = int(finding.numbers["max_micro_batch_size"])
    assert 1 <= best < 32
    fits = check(Run(model=GPT2, training=run.training.replace(micro_batch_size=best)), marker)
    assert all(f.severity == "warning" for f in fits)
    over = run.training.replace(micro_batch_size=best + 1)
    assert check(Run(model=GPT2, training=over), marker)[0].code == "scaleplan.does_not_fit"


def test_precision_from_the_training_part_changes_the_verdict() -> None:
    # fp32 everything needs more than bf16 weights and states at the same shape.
    def needed(precision: str) -> int:
        return FitsOn(10**15).needed_bytes(GPT2, micro_batch_size=4, seq_len=1024,
                                           precision=precision, optimizer="adamw",
                                           attention="flash", checkpointing="none")

    assert needed("32-true") > needed("bf16-true")


def test_fits_on_takes_compile_and_the_implementation() -> None:
    # The seed run (micro-batch 16 x 1024, bf16 autocast) trained on a 12 GB RTX 4070 under
    # torch.compile: FitsOn says so with compile=True, and not without it (15.36 GiB eager).
    seed = GPTConfig(n_layer=12, n_head=12, n_embd=384, bias=False, dropout=0.1)
    ta = TypeAdapter(Annotated[GPTConfig, FitsOn("RTX 4070", micro_batch_size=16, seq_len=1024,
                                                 compile=True)])
    assert ta.validate_python(seed) == seed
    eager = TypeAdapter(Annotated[GPTConfig, FitsOn("RTX 4070", micro_batch_size=16,
                                                    seq_len=1024)])
    with pytest.raises(ValidationError, match=r"needs 15\.36 GiB but RTX 4070 has 11\.99 GiB"):
        eager.validate_python(seed)
    with pytest.raises(ValueError, match="implementation='megatron' is not one of"):
        FitsOn("RTX 4070", implementation="megatron")
