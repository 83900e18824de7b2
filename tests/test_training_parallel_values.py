"""Per-GPU model states and activations under ZeRO, tensor and pipeline parallelism, by hand.

The model is the SwiGLU/GQA/RMSNorm/RoPE one of tests/test_gated_gqa_values.py: 131,392
parameters (wte 16,384; two blocks of 49,280, each 49,152 matrix weights + two 64-wide norm
scales; final norm 64; untied head 16,384), 17 tensors. fp32, fused AdamW (no optimizer
temporaries), b = 2, s = 32, CUDA semantics: saved per block 337,408 bytes, outside the blocks
token ids 512, RoPE tables 8192, final norm 16,640, head input 16,384, log-softmax 65,536,
targets 516 (all derived in tests/test_gated_gqa_values.py).
"""

from __future__ import annotations

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.training import MemoryBreakdown, training_memory
from scaleplan.model.config import GPTConfig

CFG = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=192,
                norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
                vocab_size=256, block_size=64)
N = 131_392
ADAMW = 2 * 4 * N + 17 * 4  # 1,051,204
BLOCK = 337_408
HEAD = 16_640 + 16_384 + 65_536 + 516  # final norm, head input, log-softmax, targets: 99,076
TV4 = 64 * 256 * 4  # one T x V fp32 tensor: 65,536


def run(par: Parallelism, **kw: object) -> MemoryBreakdown:
    options: dict[str, object] = {"precision": "32-true", "optimizer_impl": "fused", **kw}
    return training_memory(CFG, micro_batch_size=2, seq_len=32, parallelism=par, **options)  # type: ignore[arg-type]


def test_zero_stages_shard_states_gradients_and_weights() -> None:
    # DDP (stage 0) without gradient_as_bucket_view keeps a second copy of the gradients
    ddp = run(Parallelism(data=2))
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4 * N, 2 * 4 * N, ADAMW)
    assert run(Parallelism(data=2, ddp_bucket_view=True)).gradients == 4 * N
    # ZeRO-1: optimizer states / 2 (rounded up); + one reduction bucket of gradients (1000 B)
    z1 = run(Parallelism(data=2, zero=1, bucket_bytes=1000))
    assert (z1.weights, z1.gradients, z1.optimizer) == (4 * N, 4 * N + 1000, ADAMW // 2)
    # ZeRO-2: gradients / 2 as well; the bucket is capped by the whole gradient (525,568 B)
    z2 = run(Parallelism(data=2, zero=2))
    assert (z2.weights, z2.gradients) == (4 * N, 4 * N // 2 + 4 * N)
    # ZeRO-3: weights / 2, plus the largest layer gathered whole, a block of 49,280 params
    # (larger than wte's 16,384): its fp32 weights and its fp32 gradient
    z3 = run(Parallelism(data=2, zero=3, bucket_bytes=1000))
    assert z3.weights == 4 * N // 2 + 4 * 49_280
    assert z3.gradients == 4 * N // 2 + 1000 + 4 * 49_280
    assert z3.optimizer == ADAMW // 2
    # activations are per data rank: unchanged
    assert z3.saved_for_backward == run(Parallelism()).saved_for_backward


def test_foreach_temporaries_shard_with_the_optimizer_states() -> None:
    # foreach AdamW's N-element fp32 buffer: whole under DDP, halved from ZeRO-1 on. At b = 2,
    # s = 32 backward (saved 782,596 + 2 x 65,536) outweighs it, so compare at one token, where
    # the optimizer step is the worst moment (tests/test_training_values.py): there the peak
    # is weights + gradients + states + temporaries + held logits (256 x 4).
    def one_token(par: Parallelism) -> MemoryBreakdown:
        return training_memory(CFG, micro_batch_size=1, seq_len=1, precision="32-true",
                               parallelism=par)
    ddp = one_token(Parallelism(data=2, ddp_bucket_view=True))
    assert ddp.peak_moment == "optimizer_step"
    assert ddp.tensor_peak == 4 * N + 4 * N + ADAMW + 4 * N + 1024
    z1 = one_token(Parallelism(data=2, zero=1, bucket_bytes=0))
    assert z1.tensor_peak == 4 * N + 4 * N + ADAMW // 2 + 4 * N // 2 + 1024


def test_tensor_parallel_splits_matrices_and_replicates_norms() -> None:
    # t = 2: each block's 49,152 matrix weights halve, its two norms (128) stay whole:
    # 24,576 + 128 = 24,704; wte and the untied head are vocab-parallel: 8192 each; the final
    # norm 64 stays. 2 x 24,704 + 8192 + 64 + 8192 = 65,856 parameters per rank.
    m = run(Parallelism(tensor=2))
    assert m.weights == m.gradients == 4 * 65_856
    # optimizer states scale with the parameters held (exact for AdamW's per-parameter state)
    assert m.optimizer == ADAMW * 65_856 // N
    saved = m.saved_breakdown
    # split inside attention and the MLP: qkv 2 x 32,768 / 2; replicated: the norm inputs
    assert saved["qkv"] == 32_768
    assert saved["mlp_activations"] == 196_608  # 2 blocks x 196,608 / 2
    assert saved["norm1_input"] == 2 * 16_384
    assert saved["log_softmax"] == TV4 // 2  # vocab-parallel cross-entropy
    assert saved["token_ids"] == 512  # replicated
    # sequence parallelism splits the replicated ones too
    sp = run(Parallelism(tensor=2, sequence_parallel=True)).saved_breakdown
    assert sp["norm1_input"] == 16_384
    assert sp["token_ids"] == 256


def test_pipeline_stages_hold_their_layers_and_micro_batches() -> None:
    # 2 stages of 1 block. First stage: wte + 1 block = 16,384 + 49,280 = 65,664 params, and
    # under 1F1B 2 micro-batches in flight: token ids 2 x 512, blocks 2 x 337,408, RoPE tables
    # 8192 -> saved 684,032; no head, so no logits. Last stage: 1 block + final norm + head =
    # 49,280 + 64 + 16,384 = 65,728 params; saved 337,408 + 8192 + 99,076 = 444,676, and at the
    # start of backward 2 T V x 4 of loss gradients + the held logits.
    first_w, last_w = 4 * 65_664, 4 * 65_728
    first_o, last_o = ADAMW * 65_664 // N, ADAMW * 65_728 // N
    first = 2 * first_w + first_o + 684_032
    last = 2 * last_w + last_o + 444_676 + 2 * TV4 + TV4
    m = run(Parallelism(pipeline=2))
    assert first > last  # 1,734,689 against 1,692,966: the first stage is the most loaded
    assert m.tensor_peak == first
    assert m.weights == first_w
    assert m.saved_for_backward == 684_032
    assert m.saved_breakdown["token_ids"] == 1024
    assert "log_softmax" not in m.saved_breakdown
    assert m.logits == 0  # no loss on the first stage


def test_pipeline_stages_under_autocast_copy_only_their_own_weights() -> None:
    # bf16-mixed, 2 stages: the first casts its one block's matmul weights, 49,152 x 2 bytes;
    # the last its block and the head, (49,152 + 16,384) x 2 = 131,072. The last stage is the
    # more loaded here (it holds the loss side and the logits), so it is the one reported.
    m = run(Parallelism(pipeline=2), precision="bf16-mixed")
    assert m.weights == 4 * 65_728  # the last stage's parameters, fp32
    assert m.autocast_weight_copies == 131_072


def test_pipeline_stage_parts_under_full_checkpointing_and_autocast() -> None:
    par = Parallelism(pipeline=2)
    args = (CFG, 2, 32, "bf16-mixed", "adamw", "flash", "full", "cuda", par, "fused", True)
    # First stage (1 block, 2 micro-batches in flight, no head): saved token ids 2 x 512 and
    # block inputs 2 x T d x 4 = 2 x 16,384; no weight copy survives the forward (no head);
    # autocast's cache holds its block's copies, 98,304, until the forward ends.
    _, _, _, saved, copies, all_copies, held, moments = stage_parts(*args, "first")
    assert sum(saved.values()) == 33_792
    assert (copies, all_copies, held) == (0, 98_304, 0)
    # recomputing its block: the saved 33,792 + the block's own saved tensors under bf16-mixed
    # (194,048, tests/test_training_values.py) less its RMSNorm's input (the checkpointed block
    # input, T d x 4 = 16,384) + its weights' copies 98,304 + its backward: the residual
    # gradient T d x 4 = 16,384 and down_proj's node, the largest (its bf16 incoming gradient
    # T d x 2 = 8192, input gradient T f x 2 = 24,576, weight gradient f d x 2 = 24,576: 57,344
    # against the weight gradient's fp32 cast f d x 4 = 49,152 and the product's gradients
    # 2 T f x 2 = 49,152)
    backward = 16_384 + 8192 + 24_576 + 24_576
    assert moments["recompute"] == 33_792 + 194_048 - 16_384 + 98_304 + backward == 383_488
    assert moments["forward_end"] == 33_792 + 98_304
    # Last stage: block input 16,384 + final norm 16,640 + head input 8192 + log-softmax 65,536
    # + targets 516 = 107,268; the head's copy 32,768 stays for backward; all copies 131,072;
    # it holds the bf16 logits, T V x 2 = 32,768.
    _, _, _, saved, copies, all_copies, held, moments = stage_parts(*args, "last")
    assert sum(saved.values()) == 107_268
    assert (copies, all_copies, held) == (32_768, 131_072, 32_768)
    # recompute, once the loss side (90,884) but the targets (516) is freed and the head's copy
    # with it: 16,384 + 516 + 194,048 - 16,384 + one block's copies (131,072 - 32,768) / 1 block
    # + the block's backward as on the first stage (the head is untied: no gradient waits)
    assert moments["recompute"] == 16_384 + 516 + 194_048 - 16_384 + 98_304 + backward \
        == 366_596


def one_token(par: Parallelism) -> MemoryBreakdown:
    """fp32, default (foreach) AdamW, b = s = 1: the optimizer step is the worst moment
    (tests/test_training_values.py), so the temporaries show in the peak."""
    return training_memory(CFG, micro_batch_size=1, seq_len=1, precision="32-true",
                           parallelism=par)


def test_foreach_temporaries_follow_the_parameters_held() -> None:
    # tensor = 2: 65,856 parameters per rank (above), so the foreach buffer is 4 x 65,856;
    # the held logits are vocab-parallel: ceil(256 / 2) x 4
    m = one_token(Parallelism(tensor=2))
    assert m.peak_moment == "optimizer_step"
    assert m.tensor_peak == 2 * 4 * 65_856 + ADAMW * 65_856 // N + 4 * 65_856 + 128 * 4


def test_zero_shards_round_up() -> None:
    # ZeRO-1 over 3 ranks: states and the foreach buffer are split in 3, the last rank padded:
    # ceil(1,051,204 / 3) = 350,402 and ceil(525,568 / 3) = 175,190
    m = one_token(Parallelism(data=3, zero=1, bucket_bytes=0))
    assert m.optimizer == 350_402
    assert m.tensor_peak == 4 * N + 4 * N + 350_402 + 175_190 + 256 * 4


def test_zero3_gathers_the_embedding_when_it_is_the_largest_layer() -> None:
    # GPT-2 small over 2 pipeline stages and ZeRO-3 on 2 data ranks, fp32. The last stage holds
    # 6 blocks of 7,087,872, the final LayerNorm (1536) and its own copy of the tied head
    # (50257 x 768 = 38,597,376): 81,126,144 parameters, sharded in 2, plus the largest layer
    # gathered whole: the head, larger than a block.
    gpt2 = GPTConfig.preset("gpt2")
    par = Parallelism(pipeline=2, data=2, zero=3)
    weights = stage_parts(gpt2, 1, 1024, "32-true", "adamw", "flash", "none", "cuda", par,
                          "fused", True, "last")[0]
    assert weights == 4 * 81_126_144 // 2 + 4 * 38_597_376


def test_vocab_parallel_shares_round_up() -> None:
    # An odd vocabulary over t = 2: the held logits of one token are ceil(257 / 2) = 129
    # elements on the most loaded rank, 129 x 4 bytes in fp32 (not 128.5 x 4).
    odd = CFG.replace(vocab_size=257)
    held = stage_parts(odd, 1, 1, "32-true", "adamw", "flash", "none", "cuda",
                       Parallelism(tensor=2), "fused", True, "only")[6]
    assert held == 516
    assert type(held) is int


def test_zero3_middle_pipeline_stage_gathers_a_block_not_the_embedding() -> None:
    # A middle pipeline stage holds neither the embedding nor the head, so the largest layer
    # ZeRO-3 gathers whole is one block, although GPT-2's embedding (50257 x 768 = 38,597,376)
    # is larger than a block (7,087,872). By hand, 4 blocks in fp32 over 2 data ranks:
    from scaleplan.memory.sharding import model_states

    gpt2 = GPTConfig.preset("gpt2")
    block, n = 7_087_872, 4 * 7_087_872
    zero3 = Parallelism(data=2, zero=3)
    weights, _, states_held, temp = model_states(gpt2, "32-true", "adamw", zero3, layers=4,
                                                 embeds=False, heads=False, temp=0)
    assert weights == 4 * n // 2 + 4 * block  # its shard, plus one block gathered (4 bytes each)
    # AdamW's states: two fp32 moments per parameter and a 4-byte `step` per tensor (torch 2.x;
    # GPT-2 has 148 tensors), the stage's share of them (n of 124,439,808), then sharded:
    states = 8 * 124_439_808 + 4 * 148
    assert states_held == -(-(states * n // 124_439_808) // 2)
    assert temp == 0


def test_optimizers_without_temporaries() -> None:
    # SGD updates in place and fused AdamW does the whole update in one kernel: no param-sized
    # temporaries (torch.optim docs, "fused" implementation); foreach AdamW keeps one fp32 buffer
    # the size of the parameters (GPT-2: 124,439,808 x 4 bytes).
    from scaleplan.memory.sharding import optimizer_temporaries

    gpt2 = GPTConfig.preset("gpt2")
    assert optimizer_temporaries(gpt2, "sgd", "32-true", "cuda", None) == 0
    assert optimizer_temporaries(gpt2, "adamw", "32-true", "cuda", "fused") == 0
    assert optimizer_temporaries(gpt2, "adamw", "32-true", "cuda", None) == 124_439_808 * 4
