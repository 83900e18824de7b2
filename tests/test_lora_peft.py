"""LoRA and QLoRA against peft on CPU (issue 19): what a peft-wrapped transformers model saves
for backward and how many parameters it trains, measured live
(`scaleplan.reference.peft_measure.measure_peft`; QLoRA with bitsandbytes' NF4 linears, which
0.50.2 quantizes on the CPU) and predicted (`scaleplan.memory.lora_terms`,
`scaleplan.count_params`). Bar: within 3%; they are exact. The whole grid is replayed
torch-free from docs/validation/lora.json in tests/test_lora.py."""

from __future__ import annotations

import pytest

from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA

pytestmark = pytest.mark.torch

CASES = [  # family, precision, attention, checkpointing, lora dropout, targets, base weights
    ("llama", "32-true", "sdpa", False, 0.0, ("q", "v"), None),
    ("llama", "bf16-mixed", "eager", False, 0.1, ("q", "k", "v", "o", "gate", "up", "down"),
     None),
    ("qwen2", "bf16-mixed", "sdpa", True, 0.0, ("q", "v"), None),
    ("gpt2", "32-true", "eager", False, 0.1, ("q", "k", "v", "o", "up", "down"), None),
    ("gpt2", "bf16-mixed", "sdpa", True, 0.0, ("q", "k", "v"), None),
    ("llama", "bf16-mixed", "sdpa", True, 0.0, ("q", "v"), "bf16"),
    ("llama", "bf16-mixed", "eager", False, 0.0, ("q", "k", "v", "o", "gate", "up", "down"),
     "nf4-dq"),
]


@pytest.mark.parametrize(("family", "precision", "attention", "ckpt", "p", "targets", "base"),
                         CASES)
def test_saved_tensors_and_trainable_params_match_peft(
        family: str, precision: str, attention: str, ckpt: bool, p: float,
        targets: tuple[str, ...], base: str | None) -> None:
    pytest.importorskip("peft")
    if base is not None and base.startswith("nf4"):
        pytest.importorskip("bitsandbytes")  # 0.50.2 quantizes Linear4bit on the CPU
    from scaleplan.memory.lora_terms import lora_saved_terms, lora_weight_copy_bytes
    from scaleplan.model.params import count_params
    from scaleplan.reference.hf_measure import GRID_SHAPES
    from scaleplan.reference.peft_measure import measure_peft

    cfg = GRID_SHAPES[family]
    lora = LoRA(8, targets=targets, dropout=p)
    m = measure_peft(cfg, family, lora, micro_batch_size=2, seq_len=24,  # type: ignore[arg-type]
                     precision=precision, attention=attention,  # type: ignore[arg-type]
                     checkpointing=ckpt, base_weights=base)
    terms = lora_saved_terms(cfg, lora, 2, 24, precision=precision,  # type: ignore[arg-type]
                             attention=attention, checkpointing="full" if ckpt else "none",
                             base_16bit=base is not None)
    assert sum(terms.values()) == pytest.approx(m.saved_for_backward, rel=0.03)
    pc = count_params(cfg, lora=lora)
    assert pc.trainable == m.trainable_params
    if base is None or base == "bf16":  # a 4-bit weight packs two values per element
        assert pc.total == m.all_params
    copies = lora_weight_copy_bytes(cfg, lora, precision,  # type: ignore[arg-type]
                                    checkpointing="full" if ckpt else "none",
                                    base_copies=base is None)[0]
    assert copies == m.autocast_weight_copies


def test_llama_shape_trainable_params_match_peft_on_meta() -> None:
    """peft's own count for a real-width Llama (d 4096, GQA 8 kv heads, f 14336; 2 layers),
    built on the meta device."""
    pytest.importorskip("peft")
    import torch

    from scaleplan.model.params import count_params
    from scaleplan.reference.peft_measure import build_peft_model

    cfg = GPTConfig(n_layer=2, n_head=32, n_kv_head=8, n_embd=4096, mlp_hidden=14336,
                    vocab_size=128256, block_size=8192, bias=False, mlp="swiglu",
                    norm="rmsnorm", position="rope", tie_embeddings=False)
    lora = LoRA(16, targets=("q", "k", "v", "o", "gate", "up", "down"))
    with torch.device("meta"):
        model = build_peft_model(cfg, "llama", lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    every = sum(p.numel() for p in model.parameters())
    pc = count_params(cfg, lora=lora)
    assert (pc.trainable, pc.total) == (trainable, every)
