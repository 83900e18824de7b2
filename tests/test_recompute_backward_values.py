"""Full checkpointing's recompute moment for nanoGPT's block by hand, torch-free: what the
rebuilt block's backward adds (`scaleplan.memory.stage_terms.block_backward_bytes`), the block
input that is the checkpoint's own storage, and a tied head's gradient waiting for the
embedding's backward. The terms were found live at the peak of the reference model's step
(tests/recompute_peaks.py, replayed by tests/test_recompute_peaks_replay.py).

Tiny GPT-2 layout: d = 8, f = 32, V = 16; b = 1, s = 4, so T = 4 tokens unless said.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleplan.memory.activations import block_saved_terms
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.stage_terms import block_backward_bytes, recompute_moment, split_terms
from scaleplan.model.config import GPTConfig

GPT = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=64)
SWIGLU = GPT.replace(mlp="swiglu", mlp_hidden=32, bias=False)


def backward(cfg: GPTConfig, b: object, precision: str = "32-true", dropout: bool = False,
             device: str = "cuda", s: int = 4) -> object:
    return block_backward_bytes(cfg, b, s, precision, dropout=dropout,  # type: ignore[arg-type]
                                device=device, par=Parallelism())  # type: ignore[arg-type]


def test_fp32_peaks_at_the_output_projections_node() -> None:
    # residual gradient T d 4 = 128; c_proj's input gradient T f 4 = 512 and weight gradient
    # f d 4 = 1024 (its incoming gradient is the residual gradient itself)
    assert backward(GPT, 1) == 128 + 512 + 1024 == 1664


def test_autocast_casts_the_weight_gradient_to_fp32() -> None:
    # bf16-mixed, T = 4: the residual gradient stays fp32 (128). c_proj's node: its bf16
    # incoming gradient T d 2 = 64, input gradient T f 2 = 256, weight gradient f d 2 = 512:
    # 832; the next node's fp32 cast of the weight gradient, f d 4 = 1024, is larger
    assert backward(GPT, 1, "bf16-mixed") == 128 + 1024
    # at T = 64 (b = 16) c_proj's node wins: 64 x 8 x 2 + 64 x 32 x 2 + 512 = 5632
    assert backward(GPT, 16, "bf16-mixed") == 64 * 8 * 4 + 5632 == 7680


def test_a_gated_products_gradients_can_be_the_worst_node() -> None:
    # SwiGLU, fp32: down_proj's node T f 4 + f d 4 = 512 + 1024 = 1536 against the product's
    # gradient and its two factors' less the freed product, 2 T f 4 = 1024: down_proj wins
    assert backward(SWIGLU, 1) == 128 + 1536
    # T = 64: down_proj 8192 + 1024 = 9216, the product 2 x 64 x 32 x 4 = 16,384
    assert backward(SWIGLU, 16) == 64 * 8 * 4 + 16_384 == 18_432


def test_dropout_masks_the_incoming_gradient_and_frees_its_mask() -> None:
    # CUDA semantics: a bool mask T d = 32 is freed, the masked gradient T d 4 = 128 is c_proj's
    # incoming gradient, a tensor of its own
    assert backward(GPT, 1, dropout=True) == 128 - 32 + 128 + 512 + 1024 == 1760
    assert backward(GPT, 1, dropout=True, device="cpu-cuda-semantics") == 1760
    # CPU's nn.Dropout keeps its mask in the input's dtype: T d 4 = 128 freed
    assert backward(GPT, 1, dropout=True, device="cpu") == 128 - 128 + 128 + 512 + 1024
    # bf16-true on CPU: everything 2 bytes, T d 2 = 64 each
    assert backward(GPT, 1, "bf16-true", dropout=True, device="cpu") == 64 - 64 + 64 + 256 + 512


def test_arrays_and_symbols_take_the_larger_node_elementwise() -> None:
    got = backward(SWIGLU, np.array([1.0, 16.0]))
    assert got.tolist() == [1664, 18_432]  # type: ignore[attr-defined]
    sympy = pytest.importorskip("sympy")
    b = sympy.Symbol("b", positive=True, integer=True)
    expr = backward(SWIGLU, b)
    assert expr.subs(b, 1) == 1664 and expr.subs(b, 16) == 18_432  # type: ignore[attr-defined]


def test_tensor_parallelism_splits_the_mlp_side() -> None:
    # t = 2: c_proj's gradients (512 + 1024) halve, the residual gradient (128) is replicated,
    # and split with sequence parallelism
    par = Parallelism(tensor=2)
    assert block_backward_bytes(GPT, 1, 4, "32-true", dropout=False, device="cuda",
                                par=par) == 128 + 768
    par = Parallelism(tensor=2, sequence_parallel=True)
    assert block_backward_bytes(GPT, 1, 4, "32-true", dropout=False, device="cuda",
                                par=par) == 64 + 768


SAVED = {"token_ids": 100, "block_input": 1000, "final_norm_input": 7, "lm_head_input": 11,
         "log_softmax": 13, "targets": 23}


def rebuilt_less_block(cfg: GPTConfig, precision: str, device: str) -> int:
    """The recompute moment less the rebuilt block's saved tensors and backward: the kept
    terms 1100, the targets 23, one block's weight copies (0 here), less the block input."""
    got = recompute_moment(cfg, 1, 4, precision, "flash", device,  # type: ignore[arg-type]
                           Parallelism(), SAVED, 30, 30, 2)
    block = block_saved_terms(cfg, 1, 4, precision=precision,  # type: ignore[arg-type]
                              attention="flash", checkpointing="none",
                              device=device, dropout=False)  # type: ignore[arg-type]
    return int(got - sum(block.values()) - backward(cfg, 1, precision, device=device))  # type: ignore[operator]


def test_the_rebuilt_blocks_input_is_the_checkpoints_storage() -> None:
    # LayerNorm saves its input as it is: the block input T d r is not counted twice (bf16-true:
    # T d 2 = 64; fp32: 128). The head's weight copies (30) are not counted: freed by then
    assert rebuilt_less_block(GPT, "bf16-true", "cpu") == 1100 + 23 - 64
    assert rebuilt_less_block(GPT, "32-true", "cuda") == 1100 + 23 - 128
    rms = GPT.replace(norm="rmsnorm")
    # CPU's composite RMSNorm upcasts a bf16 input: its fp32 copy is a storage of its own
    assert rebuilt_less_block(rms, "bf16-true", "cpu") == 1100 + 23
    assert rebuilt_less_block(rms, "bf16-true", "cuda") == 1100 + 23 - 64
    # fp32 (and autocast's fp32 residual): .float() is the input itself
    assert rebuilt_less_block(rms, "32-true", "cpu") == 1100 + 23 - 128
    # a post-norm block's first norm reads the attention's output, not the block input
    assert rebuilt_less_block(GPT.replace(norm_position="post"), "32-true", "cuda") == 1100 + 23


@pytest.mark.parametrize(("precision", "pending"), [
    ("32-true", 16 * 8 * 4), ("bf16-mixed", 16 * 8 * 4), ("bf16-true", 16 * 8 * 2),
    ("bf16-fp32-master", 16 * 8 * 2)])
def test_a_tied_heads_gradient_waits_for_the_embeddings(precision: str, pending: int) -> None:
    # One AccumulateGrad node for wte: the head's gradient V d (in the parameters' dtype; fp32
    # after autocast's cast back) is held until the embedding's backward adds its share
    def recompute(cfg: GPTConfig, stage: str = "only", pipeline: int = 1) -> int:
        moments = stage_parts(cfg, 1, 4, precision, "adamw", "flash",  # type: ignore[arg-type]
                              "full", "cuda", Parallelism(pipeline=pipeline), "fused", False,
                              stage)[-1]  # type: ignore[arg-type]
        return int(moments["recompute"])

    assert recompute(GPT) - recompute(GPT.replace(tie_embeddings=False)) == pending
    # pipelined, no stage holds both ends: nothing waits
    for stage in ("first", "last"):
        assert recompute(GPT, stage, 2) == recompute(GPT.replace(tie_embeddings=False), stage, 2)


def test_sequence_parallelism_splits_the_d_wide_tensors_too() -> None:
    # bf16-mixed, T = 64 (b = 16), t = 2 with sequence parallelism: the fp32 residual gradient
    # 64 x 8 x 4 = 2048 and c_proj's bf16 incoming gradient 64 x 8 x 2 = 1024 halve like the
    # f-wide ones (64 x 32 x 2 + 32 x 8 x 2 = 4608): 1024 + 512 + 2304; c_proj's node beats the
    # weight gradient's fp32 cast (32 x 8 x 4 / 2 = 512)
    sp = Parallelism(tensor=2, sequence_parallel=True)
    assert block_backward_bytes(GPT, 16, 4, "bf16-mixed", dropout=False, device="cuda",
                                par=sp) == 1024 + 512 + 2304 == 3840
    # without sequence parallelism only the f-wide part halves
    assert block_backward_bytes(GPT, 16, 4, "bf16-mixed", dropout=False, device="cuda",
                                par=Parallelism(tensor=2)) == 2048 + 1024 + 2304
    # the checkpointed block input (T d 4 = 128 at T = 4) is one rank's half of it
    got = recompute_moment(GPT, 1, 4, "32-true", "flash", "cuda", sp, SAVED, 30, 30, 2)
    block = split_terms(block_saved_terms(GPT, 1, 4, precision="32-true", attention="flash",
                                          checkpointing="none", device="cuda", dropout=False), sp)
    rebuilt = got - sum(block.values()) - block_backward_bytes(
        GPT, 1, 4, "32-true", dropout=False, device="cuda", par=sp)
    assert rebuilt == 1100 + 23 - 64
