"""`scaleplan.memory.stage_terms` by hand: the per-rank split of the saved terms, one stage's
eager terms, and full checkpointing's recompute moment for each code (nanoGPT's, Hugging
Face's, torch.compile's), torch-free so mutation testing sees them.

Tiny GPT-2 layout: d = 8, a = 2 heads of h = 4, f = 32, V = 16, LayerNorm with bias, learned
positions. b = 1, s = 4, so T = 4 tokens; fp32 (4 bytes), flash attention, CUDA semantics.

One nanoGPT block saves (each derived in tests/test_activations_values.py's terms):
norm1 input T d 4 = 128 and mean + rstd 2 T 4 = 32; c_attn's input 128; q, k, v 3 T d 4 = 384;
the log-sum-exp b a s 4 = 32; the attention output (c_proj's input) 128; norm2 128 + 32;
c_fc's input 128; the GELU's input and output 2 T f 4 = 1024. Sum 2144.
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage_terms import (
    block_backward_bytes,
    eager_saved_terms,
    recompute_moment,
    split_terms,
)
from scaleplan.model.architecture import MoE
from scaleplan.model.config import GPTConfig

GPT = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8)
BLOCK = 128 + 32 + 128 + 384 + 32 + 128 + 128 + 32 + 128 + 1024
# the tensor-parallel split part of a block: q, k, v, lse, attention output, MLP activations
BLOCK_SPLIT = 384 + 32 + 128 + 1024
EMBEDDING = 4 * 8 + 4 * 8  # int64 token ids (T) and position ids (s)
# final LayerNorm 128 + 32, lm_head's input 128, the fp32 log-softmax T V 4 = 256, the int64
# targets T 8 plus the 4-byte weight total
HEAD = 128 + 32 + 128 + 256 + 32 + 4


def test_no_tensor_parallelism_keeps_the_terms() -> None:
    terms = {"qkv": 10, "norm1_input": 7}
    assert split_terms(terms, Parallelism()) == {"qkv": 10, "norm1_input": 7}


def test_split_terms_round_up_per_rank() -> None:
    terms = {"qkv": 10, "norm1_input": 7, "log_softmax": 5}
    # t = 3: the split terms (q/k/v, the vocab-parallel log-softmax) are ceil(x / 3) per rank;
    # the norm input is replicated on every rank without sequence parallelism
    assert split_terms(terms, Parallelism(tensor=3)) == {
        "qkv": 4, "norm1_input": 7, "log_softmax": 2}
    # sequence parallelism splits the replicated part too: ceil(7 / 3) = 3
    assert split_terms(terms, Parallelism(tensor=3, sequence_parallel=True)) == {
        "qkv": 4, "norm1_input": 3, "log_softmax": 2}


def eager(layers: int = 2, in_flight: int = 1, embeds: bool = True, heads: bool = True,
          par: Parallelism | None = None, attention: str = "flash") -> dict[str, int]:
    return eager_saved_terms(GPT, 1, 4, "32-true", attention,  # type: ignore[arg-type]
                             "none", "cuda", par or Parallelism(), layers, in_flight, embeds,
                             heads)


def test_one_stage_holds_embedding_blocks_and_head() -> None:
    t = eager()
    assert t["token_ids"] == 32 and t["position_ids"] == 32
    assert t["mlp_activations"] == 2 * 1024  # two layers
    assert t["log_softmax"] == 256 and t["targets"] == 36
    assert sum(t.values()) == EMBEDDING + 2 * BLOCK + HEAD == 4932


def test_first_pipeline_stage_holds_in_flight_micro_batches_without_the_head() -> None:
    # 1F1B: the first of two stages holds two micro-batches' embeddings and blocks
    t = eager(layers=1, in_flight=2, heads=False)
    assert t["token_ids"] == 2 * 32
    assert "log_softmax" not in t and "final_norm_input" not in t
    assert sum(t.values()) == 2 * (EMBEDDING + BLOCK) == 4416


def test_last_stage_has_no_embedding_and_one_shared_causal_mask() -> None:
    t = eager(layers=1, in_flight=3, embeds=False, attention="eager")
    assert "token_ids" not in t
    assert t["causal_mask"] == 4 * 4  # one s x s bool mask, not one per micro-batch
    assert t["log_softmax"] == 256


def test_tensor_parallel_stage_splits_blocks_and_logits() -> None:
    # t = 2: the split terms halve, the replicated ones stay (embedding ids too)
    t = eager(par=Parallelism(tensor=2))
    head = HEAD - 256 // 2
    assert sum(t.values()) == EMBEDDING + 2 * (BLOCK - BLOCK_SPLIT // 2) + head == 3236
    # with sequence parallelism every term halves (all even here)
    t = eager(par=Parallelism(tensor=2, sequence_parallel=True))
    assert sum(t.values()) == (EMBEDDING + 2 * BLOCK + HEAD) // 2 == 2466


# a stage's saved terms: 1000 bytes of blocks and embedding, 90 on the loss side (freed before
# the backward reaches the recomputed blocks)
SAVED = {"token_ids": 100, "block_terms": 1000, "final_norm_input": 7, "lm_head_input": 11,
         "log_softmax": 13, "logits": 17, "logsumexp": 19, "targets": 23}
KEPT = 1100


def moment(code: str, cfg: GPTConfig = GPT, device: str = "cuda", attention: str = "flash",
           par: Parallelism | None = None, copies: int = 30, all_copies: int = 131) -> int:
    return recompute_moment(cfg, 1, 4, "32-true", attention,  # type: ignore[arg-type]
                            device, par or Parallelism(), SAVED,  # type: ignore[arg-type]
                            copies, all_copies, 2, code)


# nanoGPT's rebuilt block (measured live at this moment on the reference model, see
# tests/test_recompute_peaks_replay.py): its norm1 input is the checkpointed block input
# (T d 4 = 128, not counted twice); the targets (23) stay with the batch; the head's weight
# copies (30) were freed with the head's backward. Its backward at c_proj's node adds the
# residual gradient T d 4 = 128, c_proj's input gradient T f 4 = 512 and weight gradient
# f d 4 = 1024: 1664.
BACKWARD = 128 + 512 + 1024


def test_recompute_moment_nanogpt() -> None:
    # kept terms + targets + one rebuilt block less its input + one block's share of the
    # other copies (131 - 30) // 2 = 50 (whole bytes) + its backward
    assert moment("nanogpt") == KEPT + 23 + BLOCK - 128 + 50 + BACKWARD == 4853
    # tensor parallelism: the rebuilt block is split like the saved ones; its input (128) and
    # the residual gradient (128) are replicated, c_proj's gradients (512 + 1024) split
    assert moment("nanogpt", par=Parallelism(tensor=2)) == \
        KEPT + 23 + BLOCK - BLOCK_SPLIT // 2 - 128 + 50 + 128 + (512 + 1024) // 2 == 3301


def test_recompute_moment_nanogpt_with_dropout_on_cuda() -> None:
    # dropout adds the two residual dropouts' bool T d masks (64); flash attention's own
    # dropout happens inside the kernel and saves no mask. In backward the MLP's mask (32) is
    # freed once its dropout node ran, and c_proj's incoming gradient is the masked one, a
    # tensor of its own (T d 4 = 128)
    assert moment("nanogpt", GPT.replace(dropout=0.1)) == \
        KEPT + 23 + BLOCK + 64 - 128 + 50 + BACKWARD + 128 - 32 == 5013


# Hugging Face's GPT-2 layer (hf_terms), fp32, b = 1: both LayerNorms 2 x (128 + 32); c_attn's
# input 128; SDPA's fused kernel: q, k, v as views of c_attn's output 3 T d 4 = 384, output
# 128, log-sum-exp 32; c_fc's input 128; gelu_new's four kept f-wide tensors and c_proj's
# input 5 T f 4 = 2560
HF_BLOCK = 2 * (128 + 32) + 128 + 384 + 128 + 32 + 128 + 2560


def test_recompute_moment_hf_sdpa() -> None:
    # as nanoGPT's (measured in whole steps, tests/test_impl_recompute_peaks_replay.py): ln_1's
    # input is the checkpoint's (128), the head's copies (30) are freed, the backward at
    # c_proj's node adds 1664; but the targets (23) went with transformers' loss
    assert HF_BLOCK == 3680
    assert moment("hf") == KEPT + HF_BLOCK - 128 + 50 + BACKWARD == 6366
    # "flash" is transformers' sdpa; "cpu-cuda-semantics" counts as CUDA (bool masks, SDPA
    # stays fused with dropout): + two bool T d residual masks = 64; in backward the MLP's
    # mask (32) is freed and c_proj's incoming gradient is the masked one (T d 4 = 128)
    assert moment("hf", GPT.replace(dropout=0.1), device="cpu-cuda-semantics") == \
        KEPT + HF_BLOCK + 64 - 128 + 50 + BACKWARD + 128 - 32


def test_recompute_moment_hf_eager_and_cpu_math_kernel() -> None:
    # eager: q, k, v copies 3 T a h 4 = 384 and the fp32 softmax b a s^2 4 = 128 replace SDPA's
    # q/k/v views 384 and log-sum-exp 32
    assert moment("hf", attention="eager") == KEPT + HF_BLOCK + 96 - 128 + 50 + BACKWARD
    # CPU SDPA with dropout runs the fp32 math kernel: q, k, v 384, softmax 128, mask 128,
    # dropped 128, output 128, and at b = 1 c_attn's whole output kept through v's view (2 more
    # T d 4 = 256); the residual masks are fp32 on CPU: 2 T d 4 = 256
    math = 384 + 128 + 128 + 128 + 128 + 256
    block = 2 * (128 + 32) + 128 + math + 128 + 2560 + 256
    assert block == 4544
    # in backward the MLP's fp32 mask (128) is freed, c_proj's masked incoming gradient (128)
    # made
    assert moment("hf", GPT.replace(dropout=0.1), device="cpu") == \
        KEPT + block - 128 + 50 + BACKWARD + 128 - 128


# torch.compile's later block (compiled_terms): LayerNorm keeps x_hat (128) and rstd (16), not
# its input and mean: 2144 - 2 x 16
COMPILED_BLOCK = BLOCK - 2 * 16


def test_recompute_moment_compiled() -> None:
    assert moment("compiled") == KEPT + 30 + COMPILED_BLOCK + 50 == 3292
    # with dropout: two bool T d residual masks
    assert moment("compiled", GPT.replace(dropout=0.1)) == KEPT + 30 + COMPILED_BLOCK + 64 + 50


@pytest.mark.parametrize(("layers", "share"), [(0, 101), (1, 101), (3, 33)])
def test_recompute_moment_shares_the_block_copies_over_layers(layers: int, share: int) -> None:
    # one block's share of the block weight copies: (131 - 30) // layers; a stage without
    # layers takes them all
    got = recompute_moment(GPT, 1, 4, "32-true", "flash", "cuda", Parallelism(), SAVED, 30, 131,
                           layers)
    assert got == KEPT + 23 + BLOCK - 128 + share + BACKWARD


def test_recompute_moment_of_an_moe_block() -> None:
    # 4 experts of hidden 16, top-2, GELU, no biases: the rebuilt block is an MoE block. Its
    # attention and norms as above: 128 + 32 + 128 + 384 + 32 + 128 + 128 + 32 = 992. Its MLP
    # (mlp_terms, fp32, T = 4 tokens, 8 routed rows): the router's input T d 4 = 128, its
    # probabilities T 4 4 = 64, the top-2 indices and weights and their sum 4 x 2 x 12 + 16 =
    # 112, the rows' inputs 8 d 4 = 256, GELU activations 2 x 8 x 16 x 4 = 1024, outputs and
    # routing weights 8 d 4 + 8 x 4 = 288, weighted outputs 256, two int64 indices per row 128
    moe = GPT.replace(bias=False, moe=MoE(n_experts=4, top_k=2, expert_hidden=16))
    block = 992 + 128 + 64 + 112 + 256 + 1024 + 288 + 256 + 128
    # while its backward runs, the MLP's weight gradients as whole stacked tensors: the router
    # 4 x 8, the experts' up 4 x 16 x 8 and down 4 x 8 x 16, fp32
    buffer = (4 * 8 + 4 * 16 * 8 + 4 * 8 * 16) * 4
    assert moment("nanogpt", moe) == KEPT + 30 + block + 50 + buffer == 8652


def test_recompute_moment_compiled_on_cpu_with_dropout_is_refused() -> None:
    with pytest.raises(ScaleplanError, match="compile=True with dropout is modelled with CUDA"):
        moment("compiled", GPT.replace(dropout=0.1), device="cpu")


def test_a_python_rmsnorm_upcast_keeps_its_own_copy_on_cuda() -> None:
    # bf16 parameters on CUDA, T = 4, d = 8, f = 32: nanoGPT's F.rms_norm saves the bf16 block
    # input, the checkpoint's own storage (T d 2 = 64 taken off the rebuilt block); torchtune's
    # RMSNorm upcasts in Python (x.float()) on every device, so what it saves is a copy of its
    # own and nothing is taken off
    from scaleplan.memory.tune_terms import tune_block_saved_terms

    llama = GPT.replace(bias=False, norm="rmsnorm", mlp="swiglu", position="rope",
                        tie_embeddings=False, mlp_hidden=32)
    backward = block_backward_bytes(llama, 1, 4, "bf16-true", dropout=False, device="cuda",
                                    par=Parallelism())
    block = sum(tune_block_saved_terms(llama, 1, 4, precision="bf16-true",
                                       device="cuda").values())
    got = recompute_moment(llama, 1, 4, "bf16-true", "flash", "cuda", Parallelism(), SAVED,
                           0, 0, 2, "torchtune")
    assert got == KEPT + block + backward
