"""What mutmut's run over `scaleplan.memory.tune_lora_terms` and
`scaleplan.memory.tune_lora_states` found unchecked (torchtune 0.6.1's LoRA / QLoRA step):
which layer's adapters keep a dropout mask, the default device's bool masks, ``layers``, the
compiled layer's terms by name and with k or v adapted alone, what `tune_lora_stage_parts`
hands on (device, compiled, base weights, the chunk count), and the refusals' texts.
Torch-free: replays of the committed measurements (tests/data/tune_lora_memory.json and
tune_lora_compiled.json, written by `scaleplan.reference.tune_lora_measure`) and hand
calculations written out beside each assertion.

Shapes: tests/test_tune_lora_memory.py's (the grid's llama3_2: 2 layers, d 256, 4 query heads and
2 key-value heads of 64, f 512, V 512, RoPE cache 128 x 64; llama3_1: 1 key-value head, f 448,
V 384), b 2 x s 48 = 96 tokens unless said, bf16 (2 bytes), rank 8.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.memory.tune_lora_states import check_tune_lora, check_tune_lora_compile
from scaleplan.memory.tune_lora_terms import (
    tune_lora_block_saved_terms,
    tune_lora_compiled_block_terms,
    tune_lora_saved_terms,
    tune_lora_stage_parts,
)
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA

DATA = Path(__file__).parent / "data"
SAVED = json.loads((DATA / "tune_lora_memory.json").read_text())["saved"]
COMPILED = json.loads((DATA / "tune_lora_compiled.json").read_text())
_LLAMA = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
SHAPES = {  # scaleplan.reference.tune_measure.GRID_SHAPES, written out (no torch import)
    "llama3_2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
                          vocab_size=512, block_size=128, tie_embeddings=True, **_LLAMA),
    "llama3_1": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=256, mlp_hidden=448,
                          vocab_size=384, block_size=96, tie_embeddings=False, **_LLAMA),
}
TINY = SHAPES["llama3_2"]
TARGETS = {"qv": ("q", "v"), "all": ("q", "k", "v", "o", "gate", "up", "down"), "o": ("o",),
           "qvo_mlp": ("q", "v", "o", "gate", "up", "down")}
ALL = TARGETS["all"]
T, D, F = 96, 256, 512
ROPE = 128 * 64 * 4 + 32 * 4  # the fp32 RoPE cache and theta, resident
LOSS = T * 512 * 4 + T * 8 + 4  # fp32 log-softmax, int64 shifted labels, the weight total

# The measurement's modules (by_module: bytes of the storages each module's forward left for
# backward) and the adapter group of `tune_lora_block_saved_terms` each belongs to.
GROUPS = {"attn.q_proj": "attn", "attn.k_proj": "attn", "attn.v_proj": "attn",
          "attn.output_proj": "o", "mlp.w1": "mlp", "mlp.w3": "mlp", "mlp.w2": "down"}


def _measured_adapter_terms(row: dict[str, Any], layer: int) -> dict[str, int]:
    """One layer's adapter terms as measured: each ``lora_a`` keeps its input (the dropout's
    output with dropout), each ``dropout`` its mask, each ``lora_b`` lora_a's output."""
    out: dict[str, int] = {}
    for name, nbytes in row["by_module"].items():
        prefix, _, rest = name.partition(f"layers.{layer}.")
        if prefix or not rest.endswith((".lora_a", ".lora_b", ".dropout")):
            continue
        module, _, part = rest.rpartition(".")
        key = {"lora_a": f"lora_{GROUPS[module]}_a_input", "lora_b": "lora_b_input",
               "dropout": f"lora_{GROUPS[module]}_dropout_mask"}[part]
        out[key] = out.get(key, 0) + nbytes
    return out


EAGER = [r for r in SAVED if r["checkpointing"] == "none" and r["base_weights"] == "bf16"]


@pytest.mark.parametrize("row", EAGER, ids=lambda r: f"{r['family']}-{r['targets']}-"
                         f"{r['dropout']}-{r['loss']}")
def test_each_layers_adapter_terms_replay_the_measured_modules(row: dict[str, Any]) -> None:
    # The first layer's input needs no gradient: its q, k, v dropouts keep no mask (measured:
    # no layers.0.attn.q_proj.dropout entry), while its output projection's and MLP's do; a
    # later layer's "o" adapter without dropout keeps nothing of its own (SDPA keeps its input)
    cfg = SHAPES[row["family"]]
    lora = LoRA(8, alpha=16, targets=TARGETS[row["targets"]], dropout=row["dropout"])
    for layer in range(cfg.n_layer):
        t = tune_lora_block_saved_terms(cfg, lora, 2, 48, first=layer == 0, device="cpu")
        model = {k: v for k, v in t.items() if k.startswith("lora_")}
        assert model == _measured_adapter_terms(row, layer), layer


def test_the_first_layers_attention_dropouts_keep_no_mask_a_later_layers_do() -> None:
    # CPU: the mask is bf16 (T x 256 x 2 per adapter); measured on layers.1 only
    lora = LoRA(8, targets=("q", "v"), dropout=0.05)
    first = tune_lora_block_saved_terms(TINY, lora, 2, 48, first=True, device="cpu")
    later = tune_lora_block_saved_terms(TINY, lora, 2, 48, device="cpu")
    assert "lora_attn_dropout_mask" not in first
    assert later["lora_attn_dropout_mask"] == 2 * T * D * 2


def test_masks_are_bool_on_the_default_device_cuda() -> None:
    # torchtune's dropout keeps a bool mask on CUDA (1 byte a value); "cuda" is the default
    lora = LoRA(8, targets=ALL, dropout=0.1)
    block = tune_lora_block_saved_terms(TINY, lora, 2, 48)
    assert block["lora_attn_dropout_mask"] == 3 * T * D * 1  # q, k, v
    assert block["lora_down_dropout_mask"] == T * F * 1
    # two layers: q, k, v masks in the later one only; o, gate, up and down in both
    masks = {"lora_attn_dropout_mask": 3 * T * D, "lora_o_dropout_mask": 2 * T * D,
             "lora_mlp_dropout_mask": 2 * 2 * T * D, "lora_down_dropout_mask": 2 * T * F}
    for device in (None, "cuda"):
        kw = {} if device is None else {"device": device}
        t = tune_lora_saved_terms(TINY, lora, 2, 48, **kw)
        assert {k: t[k] for k in masks} == masks
    cpu = tune_lora_saved_terms(TINY, lora, 2, 48, device="cpu")
    assert {k: cpu[k] for k in masks} == {k: 2 * v for k, v in masks.items()}  # bf16 on CPU


def test_layers_counts_the_first_layer_and_layers_minus_one_others() -> None:
    # q, v adapted, no dropout. The first layer: the shared norm output q's and v's A read
    # (T d 2), q, expanded k and v, SDPA's output (T d 2 each, k and v 2 T d 2) and
    # log-sum-exp (b a s 4), the second norm's fp32 input and rstd, the gate's, activation's
    # and up's outputs (3 T f 2), two lora_b inputs (T r 2 each). A later layer adds its first
    # norm's fp32 input and rstd.
    first = (T * D * 2 + 4 * T * D * 2 + 2 * 4 * 48 * 4 + T * D * 4 + T * 4
             + 3 * T * F * 2 + 2 * T * 8 * 2)
    later = first + T * D * 4 + T * 4
    tail = T * D * 4 + T * 4 + LOSS  # the final norm, the loss
    lora = LoRA(8, targets=("q", "v"))
    for layers in (1, 3):
        t = tune_lora_saved_terms(TINY, lora, 2, 48, layers=layers, buffers=False)
        assert sum(t.values()) == first + (layers - 1) * later + tail
    two = next(r for r in SAVED if r["targets"] == "qv" and r["dropout"] == 0.0
               and r["checkpointing"] == "none")
    assert first + later + tail == two["saved_for_backward"]  # the measured 2-layer model


def test_compiled_later_layer_terms_by_name() -> None:
    # what the partition keeps (tune_lora_compiled_block_terms' docstring, measured), all seven
    # targets: every lora_b input, the first norm's output (q, k, v adapted) and the second's
    # (gate, up adapted), the gate's and up's outputs and their product (down adapted)
    t = tune_lora_compiled_block_terms(TINY, LoRA(8, targets=ALL), 2, 48)
    assert t == {"block_input": T * D * 2, "norm1_stats": T * 4, "norm1_output": T * D * 2,
                 "attn_q": T * D * 2, "attn_k_v": 2 * T * D * 2, "attn_out": T * D * 2,
                 "attn_lse": 2 * 4 * 48 * 4, "attn_residual": T * D * 2, "norm2_stats": T * 4,
                 "norm2_output": T * D * 2, "mlp_activations": 3 * T * F * 2,
                 "lora_b_input": 7 * T * 8 * 2}


@pytest.mark.parametrize("targets", [("q",), ("k",), ("v",), ("k", "o"), ("v", "o")])
def test_compiled_layer_keeps_the_first_norms_output_for_any_of_q_k_v(targets: tuple) -> None:
    # lora_a of q, k or v reads the first norm's bf16 output: the partition keeps it (T d 2)
    t = tune_lora_compiled_block_terms(TINY, LoRA(8, targets=targets), 1, 10)
    assert t["norm1_output"] == 10 * D * 2
    check_tune_lora_compile(LoRA(8, targets=targets), loss="chunked")  # not refused
    check_tune_lora(TINY, LoRA(8, targets=targets), None, precision="bf16-true",
                    parallelism=None)


@pytest.mark.parametrize("targets", [("o",), ("o", "gate", "up", "down")])
def test_an_o_adapter_alone_is_an_attention_target(targets: tuple) -> None:
    check_tune_lora(TINY, LoRA(8, targets=targets), "nf4", precision="bf16-true",
                    parallelism=None)


@pytest.mark.parametrize("row", COMPILED, ids=lambda r: f"{r['targets']}-{r['base_weights']}")
def test_compiled_stage_parts_replay_the_measured_saved_bytes(row: dict[str, Any]) -> None:
    # compile: True without checkpointing: the step's saved terms are the compiled layers'
    # (NF4: with the dequantized weights), measured with the compiled chunked loss; the RoPE
    # buffers are resident, not in the measurement
    lora = LoRA(8, targets=TARGETS[row["targets"]])
    saved = tune_lora_stage_parts(TINY, lora, row["base_weights"], 2, 48, "adamw", "none",
                                  "cpu", None, False, StepSwitches(loss="chunked"), True)[3]
    assert sum(saved.values()) - ROPE == row["saved_for_backward"]


@pytest.mark.parametrize(("device", "mask"), [("cuda", 1), ("cpu", 2)])
def test_stage_parts_hands_the_device_to_the_saved_and_rebuilt_layers(device: str,
                                                                       mask: int) -> None:
    lora = LoRA(8, targets=("q", "v"), dropout=0.1)
    saved = tune_lora_stage_parts(TINY, lora, "bf16", 2, 48, "adamw", "none", device, None,
                                  False)[3]
    assert saved["lora_attn_dropout_mask"] == 2 * T * D * mask  # the later layer's q and v
    # checkpointed: the recompute rebuilds one later layer on top of what stays saved. That
    # layer: first norm (T d 4 + T 4), q's and v's dropout outputs (2 T d 2) and masks, q,
    # expanded k, v, SDPA output (4 T d 2) and lse, second norm, 3 T f 2, two lora_b inputs
    _, _, _, saved, _, _, _, moments = tune_lora_stage_parts(
        TINY, lora, "bf16", 2, 48, "adamw", "full", device, None, False)
    assert sum(saved.values()) == 2 * T * D * 2 + T * D * 4 + T * 4 + LOSS + ROPE
    rebuilt = (2 * (T * D * 4 + T * 4) + 2 * T * D * 2 + 2 * T * D * mask + 4 * T * D * 2
               + 2 * 4 * 48 * 4 + 3 * T * F * 2 + 2 * T * 8 * 2)
    assert moments["recompute"] == sum(saved.values()) - LOSS + rebuilt


def test_chunked_loss_head_backward_waits_on_the_chunks_torch_chunk_makes() -> None:
    # s = 4: logits.chunk(8, dim=1) gives 4 chunks of 1 token (torch.chunk: chunks of
    # ceil(4 / 8) = 1), so the output layer's backward holds 4 - 2 = 2 chunks' bf16 logit
    # gradients (1 x 1 x 512 x 2 bytes each) beside the saved tensors less the loss side
    lora = LoRA(8, targets=("q", "v"))
    _, _, _, saved, _, _, _, moments = tune_lora_stage_parts(
        TINY, lora, "bf16", 1, 4, "adamw", "none", "cpu", None, False,
        StepSwitches(loss="chunked"))
    loss_side = saved["log_softmax"] + saved["targets"]
    assert saved["log_softmax"] == 4 * 512 * 4  # every chunk's fp32 log-softmax
    assert moments["head_backward"] == sum(saved.values()) - loss_side + 2 * 512 * 2


# The refusals' whole texts: each names the argument, its value and what to use instead.
LLAMA_BUILDERS = ("lora with implementation='torchtune' is modelled for its Llama 3.x builders "
                  "(lora_llama3_1, lora_llama3_2: SwiGLU, no q/k/v bias); not with "
                  "mlp='gelu', qkv_bias=False")


@pytest.mark.parametrize(("args", "message"), [
    ((TINY, LoRA(8, targets=("q", "v")), "int8"),
     "base_weights='int8' with implementation='torchtune': its quantize_base stores the base "
     "as torchao's NF4Tensor (scalers quantized to int8 already); use base_weights='nf4', or "
     "'bf16'"),
    ((TINY, LoRA(8, targets=("q", "v")), None, "32-true"),
     "lora with implementation='torchtune' and precision='32-true' is not modelled yet; its "
     "LoRA recipes run dtype bf16: use precision='bf16-true'"),
    ((TINY, LoRA(8, targets=("gate", "up", "down")), None),
     "lora=LoRA(..., targets=('gate', 'up', 'down')) with implementation='torchtune': its "
     "builders need at least one attention target (lora_attn_modules may not be empty); add "
     "'q', 'k', 'v' or 'o'"),
    ((TINY, LoRA(8, targets=("q", "up")), None),
     "lora=LoRA(..., targets=('q', 'up')) with implementation='torchtune': its "
     "apply_lora_to_mlp adapts gate, up and down together; name all three or none"),
    ((GPTConfig(mlp="gelu", bias=False), LoRA(8, targets=("q", "v")), None), LLAMA_BUILDERS),
])
def test_tune_lora_refusals_whole(args: tuple, message: str) -> None:
    cfg, lora, base, *precision = args
    with pytest.raises(ScaleplanError) as err:
        check_tune_lora(cfg, lora, base, precision=(precision or ["bf16-true"])[0],
                        parallelism=None)
    assert str(err.value) == message


@pytest.mark.parametrize(("lora", "loss", "message"), [
    (LoRA(8, targets=("q", "v")), "standard",
     "compile=True with lora and loss='standard' is not modelled yet (the LoRA recipe then "
     "compiles the whole cross-entropy; not measured); use loss='chunked' (its configs' "
     "CEWithChunkedOutputLoss) or compile=False"),
    (LoRA(8, targets=("q", "v"), dropout=0.05), "chunked",
     "compile=True with lora dropout=0.05 is not modelled yet (measured with dropout 0, its "
     "configs' default); use dropout=0 or compile=False"),
    (LoRA(8, targets=("o",)), "chunked",
     "compile=True with lora targets=('o',) is not modelled yet (measured with q, k or v "
     "adapted); add one or use compile=False"),
])
def test_tune_lora_compile_refusals_whole(lora: LoRA, loss: str, message: str) -> None:
    with pytest.raises(ScaleplanError) as err:
        check_tune_lora_compile(lora, loss=loss)
    assert str(err.value) == message
