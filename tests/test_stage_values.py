"""`scaleplan.memory.stage.stage_parts` by hand: one stage's states, saved terms, weight copies,
held logits and moments for nanoGPT's code, Hugging Face's and torch.compile's, on one stage
and on the first and last of a pipeline. torch-free, so mutation testing sees it.

Tiny GPT-2 layout: 2 layers, d = 8, a = 2 heads of h = 4, f = 32, V = 16, block_size 8,
LayerNorm with bias, tied head. b = 1, s = 4: T = 4 tokens, T V = 64 logits. AdamW, CUDA.

Parameters: wte 16 x 8 = 128, wpe 8 x 8 = 64; per block ln_1 16, c_attn 24 x 8 + 24 = 216,
attention c_proj 64 + 8 = 72, ln_2 16, c_fc 256 + 32 = 288, MLP c_proj 256 + 8 = 264 (872);
ln_f 16: 128 + 64 + 2 x 872 + 16 = 1952.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.model.config import GPTConfig

GPT = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8)
PARAMS = 128 + 64 + 2 * 872 + 16
# saved terms, from tests/test_stage_terms_values.py and tests/test_compiled_terms_values.py:
# nanoGPT's block 2144, its embedding 64 (token and position ids), its head 580
BLOCK, EMBEDDING, HEAD = 2144, 64, 580
HF_BLOCK = 3680  # transformers' GPT-2 layer at b = 1 (tests/test_stage_terms_values.py)
COMPILED_BLOCK = 2112  # torch.compile's: LayerNorm keeps x_hat and rstd, not input and mean


def parts(precision: str = "32-true", checkpointing: str = "none", stage: str = "only",
          par: Parallelism | None = None, impl: str = "fused", hold_logits: bool = False,
          cfg: GPTConfig = GPT, device: str = "cuda", attention: str = "flash",
          **kw: Any) -> tuple[Any, ...]:
    return stage_parts(cfg, 1, 4, precision, "adamw", attention,  # type: ignore[arg-type]
                       checkpointing, device, par or Parallelism(),  # type: ignore[arg-type]
                       impl, hold_logits, stage, **kw)  # type: ignore[arg-type]


def test_one_stage_in_fp32() -> None:
    W, G, O, saved, copies, all_copies, held, moments = parts(impl="for-loop")
    # fp32 weights, gradients, AdamW's m and v, and its fp32 step count per tensor (wte, wpe,
    # 12 per block, ln_f's 2: 28)
    assert (W, G, O) == (PARAMS * 4, PARAMS * 4, 2 * PARAMS * 4 + 28 * 4)
    S = EMBEDDING + 2 * BLOCK + HEAD
    assert sum(saved.values()) == S == 4932
    assert (copies, all_copies, held) == (0, 0, 0)
    assert moments == {
        "forward_end": S + 64 * 4,  # + the fp32 logits
        "backward_start": S + 2 * 64 * 4,  # + the logits and their gradient
        # for-loop AdamW: sqrt(v) and the quotient of the largest tensor (c_fc, 256), fp32
        "optimizer_step": 2 * 256 * 4,
    }


def test_autocast_adds_weight_copies_and_the_fp32_loss() -> None:
    _, _, _, saved, copies, all_copies, held, moments = parts("bf16-mixed", hold_logits=True)
    S = sum(saved.values())
    # bf16 copies of the matmul weights: per block 192 + 64 + 256 + 256 = 768, two blocks, and
    # the tied head's 128: 1664 elements x 2 bytes
    assert copies == all_copies == 1664 * 2
    assert held == 64 * 2  # the held bf16 logits
    assert moments["forward_end"] == S + 3328 + 64 * 2 + 64 * 4  # bf16 logits + fp32 upcast
    assert moments["backward_start"] == S + 3328 + 2 * 64 * 4  # fp32 loss side
    assert moments["optimizer_step"] == 0  # fused AdamW


def test_full_checkpointing_recomputes_one_block() -> None:
    _, _, _, saved, copies, all_copies, _, moments = parts("bf16-mixed", "full")
    assert all_copies == 3328
    assert copies == 128 * 2  # only the head's copy stays through the backward
    S = sum(saved.values())
    # the saved block inputs T d 4 = 128 each, the embedding's ids 64, the head (fp32 norm
    # 128 + 32, lm_head's bf16 input 64, fp32 log-softmax 256, targets 36)
    assert S == 2 * 128 + 64 + (128 + 32 + 64 + 256 + 36) == 836
    assert moments["backward_start"] == S + 256 + 2 * 64 * 4
    assert "recompute" in moments


def test_hugging_face_code() -> None:
    _, _, _, saved, _, _, _, moments = parts(implementation="hf")
    # the labels' padded storage at b = 1: (s + 1) int64 + the fp32 weight total = 44
    S = 64 + 2 * HF_BLOCK + (128 + 32 + 128 + 256 + 44)
    assert sum(saved.values()) == S == 8012
    assert moments["forward_end"] == S + 256
    _, _, _, saved, _, _, _, moments = parts(checkpointing="full", implementation="hf")
    S = 64 + 2 * 128 + 588  # each layer's fp32 input T d 4
    assert sum(saved.values()) == S == 908
    # the recompute moment: the loss side (588) freed, one transformers layer rebuilt (its
    # ln_1 input, T d 4 = 128, is the checkpoint's); the backward at c_proj's node: the
    # residual gradient T d 4 = 128, c_proj's input gradient T f 4 = 512 and weight gradient
    # f d 4 = 1024; the tied head's gradient V d 4 = 16 x 8 x 4 = 512 waits for the
    # embedding's (measured: tests/test_impl_recompute_peaks_replay.py)
    assert moments["recompute"] == S - 588 + HF_BLOCK - 128 + 128 + 512 + 1024 + 512 == 6048


def test_compiled_code() -> None:
    _, _, _, saved, _, _, held, moments = parts(compiled=True, hold_logits=True)
    S = 64 + 2 * COMPILED_BLOCK + (128 + 16 + 128 + 256 + 32 + 36)
    assert sum(saved.values()) == S == 4884
    assert held == 0  # the held logits are the saved ones
    assert moments == {
        "forward_end": S,
        # the logits' gradient and the zero tangent, the loss backward's per-row sums T x 4
        "backward_start": S + 2 * 64 * 4 + 4 * 4,
        "optimizer_step": 64 * 4,  # the held logits, once backward freed the saved ones
        # the compiled backward's end: every gradient a second time (new buffers; 2 blocks of
        # 872 parameters, wte 128, wpe 64, ln_f 16: 1952 x 4), the embedding's partial
        # gradient of the tied weight (V d 4 = 512), the held logits (256) and the batch the
        # loop holds (token ids 32, targets 32 + the mean's divisor 4); and what the graph's
        # last kernels hold (scaleplan.memory.compiled_end): the tied sum folded into the
        # head's late weight gradient keeps the logits' gradient (T V 4 = 256) and the head's
        # input (T d 4 = 128), and the first block's last fused kernel (qkv gradient 384, ln_1
        # output and residual gradients 128 each, two row sums 16 each, ln_1's x_hat 128 and
        # rstd 16, position ids 32: 848) outweighs the sum (V d 4 = 512) by 336
        "backward_end": 1952 * 4 + 512 + 256 + 32 + 36 + 256 + 128 + 848 - 512,
    }
    _, _, _, saved, _, _, _, moments = parts(checkpointing="full", compiled=True)
    # embedding: ids 64 (at b = 1 no position embedding output); per block its input 128 and
    # the RNG state 16; head: LayerNorm's mean and rstd 32, lm_head 128, logits 256, max and
    # lse 32, targets 36
    S = 64 + 2 * 144 + (32 + 128 + 256 + 32 + 36)
    assert sum(saved.values()) == S == 836
    assert moments["recompute"] == S - 484 + COMPILED_BLOCK == 2464


def test_pipeline_first_and_last_stages() -> None:
    pp = Parallelism(pipeline=2)
    W, _, _, saved, _, _, _, moments = parts(stage="first", par=pp)
    # one layer, two micro-batches in flight (1F1B), embeddings, no head
    assert sum(saved.values()) == 2 * (EMBEDDING + BLOCK)
    assert moments["forward_end"] == moments["backward_start"] == 2 * (EMBEDDING + BLOCK)
    assert W == (128 + 64 + 872) * 4
    _, _, _, saved, _, _, _, moments = parts(stage="last", par=pp)
    # one layer, one micro-batch, the head and its logits
    assert sum(saved.values()) == BLOCK + HEAD
    assert moments["forward_end"] == BLOCK + HEAD + 64 * 4
    assert moments["backward_start"] == BLOCK + HEAD + 2 * 64 * 4


def test_device_and_attention_reach_the_hf_and_compiled_terms() -> None:
    drop = GPT.replace(dropout=0.1)
    # transformers on CUDA: bool masks (the embedding's T d and two T d per layer); on CPU
    # fp32 masks, and SDPA with dropout runs the math kernel
    cuda = parts(cfg=drop, implementation="hf")[3]
    assert cuda["resid_dropout_masks"] == 2 * 2 * 4 * 8 * 1
    cpu = parts(cfg=drop, implementation="hf", device="cpu")[3]
    assert cpu["resid_dropout_masks"] == 2 * 2 * 4 * 8 * 4
    assert "attn_dropout_mask" in cpu and "attn_dropout_mask" not in cuda
    # eager attention: the fp32 softmax, b a s^2 x 4 = 128 per layer
    eager = parts(implementation="hf", attention="eager")[3]
    assert eager["attn_probs"] == 2 * 128
    # torch.compile under full checkpointing on CPU keeps the CPU generator's state per block
    compiled = parts(checkpointing="full", compiled=True, device="cpu-cuda-semantics")[3]
    assert compiled["rng_state"] == 2 * 5056


def test_compiled_forward_end_holds_the_weight_copies() -> None:
    _, _, _, saved, _, all_copies, _, moments = parts("bf16-mixed", compiled=True)
    assert all_copies == 1664 * 2  # as in eager mode
    assert moments["forward_end"] == sum(saved.values()) + 3328


def test_expert_parallel_ranks_copy_their_own_experts() -> None:
    # 4 routed experts of hidden 16, no biases, bf16 autocast: per block the matmul weights
    # c_attn 24 x 8 = 192, c_proj 64, the router 4 x 8 = 32 and the experts' up and down
    # 2 x 4 x 16 x 8 = 1024; the tied head 128. With 2 expert-parallel ranks each holds (and
    # casts) 2 of the 4 experts: 512 per block
    from scaleplan.model.architecture import MoE

    moe = GPT.replace(bias=False, moe=MoE(n_experts=4, top_k=2, expert_hidden=16))
    one = parts("bf16-mixed", cfg=moe)[5]
    assert one == (2 * (192 + 64 + 32 + 1024) + 128) * 2
    two = parts("bf16-mixed", cfg=moe, par=Parallelism(data=2, expert=2))[5]
    assert two == (2 * (192 + 64 + 32 + 512) + 128) * 2
