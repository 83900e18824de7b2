"""training_memory values by hand: the moments of a step, optimizer temporaries, overheads.

The model is the SwiGLU/GQA/RMSNorm/RoPE one of tests/test_gated_gqa_values.py (131,392
parameters in 17 tensors, the largest two 256 x 64 = 16,384 elements: wte and the untied head).
At b = s = 1 (T = 1 token) its activations are tiny, so the optimizer step can be the worst moment.

Saved for backward at T = 1, fp32, flash, CUDA semantics (each term as derived for T = 64 in
tests/test_gated_gqa_values.py, divided by 64 where it scales with T):

    per block: norm1 256 + 4, qkv_input 256, qkv 512, rope_qk 384, attn_lse 1 x 4 x 1 x 4 = 16,
               attn_out 256, norm2 256 + 4, mlp_input 256, mlp_activations 4 x 192 x 4 = 3072
               -> 5272; two blocks 10,544
    outside:   rope tables 8192, token ids 8, final norm 260, head input 256,
               log-softmax 256 x 4 = 1024, targets 8 + 4 = 12
    S = 10,544 + 8192 + 8 + 260 + 256 + 1024 + 12 = 20,296
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.training import MemoryBreakdown, saved_for_backward_bytes, training_memory
from scaleplan.model.config import GPTConfig

CFG = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=192,
                norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
                vocab_size=256, block_size=64)
N = 131_392
S1 = 20_296  # saved bytes at T = 1 (module docstring)
W = G = 4 * N  # 525,568 fp32 weights and gradients
ADAMW = 2 * 4 * N + 17 * 4  # 1,051,204: two fp32 moments + a 4-byte step per tensor
HELD = 256 * 4  # the logits the loop keeps, T V x 4
BACKWARD_START = S1 + 2 * 256 * 4  # + the log-softmax's and the logits' gradients: 22,344


def one_token(**kw: object) -> MemoryBreakdown:
    return training_memory(CFG, micro_batch_size=1, seq_len=1, precision="32-true", **kw)  # type: ignore[arg-type]


def test_saved_bytes_at_one_token() -> None:
    assert one_token().saved_for_backward == S1


def test_foreach_adamw_temporaries_make_the_optimizer_step_the_peak() -> None:
    # torch's foreach AdamW (the CUDA default) materialises sqrt(v) for every parameter at
    # once: one fp32 buffer of N elements = 525,568 bytes, more than backward's 22,344.
    m = one_token()
    assert m.peak_moment == "optimizer_step"
    assert m.tensor_peak == W + G + ADAMW + 4 * N + HELD
    # transient: what is live on top of the saved tensors, which are freed by then
    assert m.transient == 4 * N + HELD - S1


def test_for_loop_adamw_temporaries_are_two_of_the_largest_tensor() -> None:
    # The for-loop implementation (the CPU default) works one tensor at a time: sqrt(v) and
    # the update for the largest tensor, 2 x 16,384 x 4 = 131,072 bytes.
    for m in (one_token(optimizer_impl="for-loop"), one_token(device="cpu-cuda-semantics")):
        assert m.peak_moment == "optimizer_step"
        assert m.tensor_peak == W + G + ADAMW + 131_072 + HELD


def test_fused_adamw_and_sgd_have_no_temporaries() -> None:
    m = one_token(optimizer_impl="fused")
    assert m.peak_moment == "backward_start"
    assert m.tensor_peak == W + G + ADAMW + BACKWARD_START + HELD
    sgd = one_token(optimizer="sgd")  # plain SGD: no state, updates in place
    assert sgd.optimizer == 0
    assert sgd.tensor_peak == W + G + BACKWARD_START + HELD


def test_bf16_true_temporaries_are_in_bf16() -> None:
    # bf16 parameters, gradients and AdamW states: 2 bytes each; the foreach buffer too (N x 2).
    m = training_memory(CFG, micro_batch_size=1, seq_len=1, precision="bf16-true")
    assert m.weights == m.gradients == 2 * N
    assert m.optimizer == 2 * 2 * N + 17 * 4
    assert m.peak_moment == "optimizer_step"
    assert m.tensor_peak == 2 * N + 2 * N + (4 * N + 68) + 2 * N + 256 * 2  # held logits bf16


def test_dropped_logits_and_overheads() -> None:
    m = one_token(optimizer_impl="fused", hold_logits=False, cuda_context_bytes=1000,
                  allocator_slack_fraction=0.5)
    peak = W + G + ADAMW + BACKWARD_START  # 2,124,684, without the held logits
    assert m.tensor_peak == peak
    assert m.overhead == 1000 + peak // 2  # even: exact half
    assert m.total == peak + 1000 + peak // 2
    odd = one_token(optimizer_impl="fused", hold_logits=False, cuda_context_bytes=0,
                    allocator_slack_fraction=0.5, optimizer="sgd")
    # W + G + backward_start = 1,073,480, slack rounds up: ceil(536,740) = 536,740
    assert odd.overhead == 536_740
    assert one_token(device="cpu").overhead == 0
    # zero slack is allowed
    assert one_token(cuda_context_bytes=0, allocator_slack_fraction=0.0).overhead == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"allocator_slack_fraction": 1.0}, r"^allocator_slack_fraction=1\.0 must be below 1, e\.g\. "
                                        r"0\.05$"),
    ({"allocator_slack_fraction": -0.1}, r"^allocator_slack_fraction=-0\.1 must be >= 0; give a "
                                         r"fraction such as 0\.05$"),
    ({"cuda_context_bytes": -1}, r"^cuda_context_bytes=-1 must be >= 0, e\.g\. "
                                 r"cuda_context_bytes=2\*\*29$"),
    ({"hold_logits": 1}, r"^hold_logits=1 must be True or False$"),
    ({"micro_batch_size": 1.0}, r"^micro_batch_size=1\.0 must be an int >= 1$"),
    ({"micro_batch_size": True}, r"^micro_batch_size=True must be an int >= 1$"),
    ({"micro_batch_size": 0}, r"^micro_batch_size=0 must be >= 1 sequence$"),
    ({"seq_len": 0}, r"^seq_len=0 must be >= 1 token$"),
    ({"parallelism": "tp=2"}, r"^parallelism='tp=2' must be a scaleplan\.memory\.parallel\."
                              r"Parallelism \(or None for one GPU\)$"),
])
def test_bad_arguments_are_named_with_a_fix(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"micro_batch_size": 1, "seq_len": 1, **kwargs}
    with pytest.raises(ScaleplanError, match=message):
        training_memory(CFG, **args)  # type: ignore[arg-type]


def test_learned_positions_limit_seq_len_to_block_size() -> None:
    learned = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    with pytest.raises(ScaleplanError, match=r"^seq_len=5 exceeds block_size=4, the length of "
                                             r"the learned position table"):
        training_memory(learned, micro_batch_size=1, seq_len=5)
    assert training_memory(learned, micro_batch_size=1, seq_len=4).saved_breakdown[
        "position_ids"] == 32  # s x 8 bytes


def test_full_checkpointing_peaks_while_a_block_is_recomputed() -> None:
    # fp32, b = 2, s = 32 (T = 64), fused AdamW. Saved: token ids 512, each block's input
    # T d x 4 = 16,384 (x 2 blocks), and the loss side: final norm 16,640, head input 16,384,
    # log-softmax 65,536, targets 516 = 99,076. S = 512 + 32,768 + 99,076 = 132,356.
    # Recomputing one block in backward, once the loss side but the targets (516) is freed:
    # S - 99,076 + 516 + the block's own saved tensors, 337,408 (tests/test_gated_gqa_values.py)
    # less its RMSNorm's input, the checkpoint's storage (T d x 4 = 16,384), + its backward: the
    # residual gradient T d x 4 = 16,384 and the larger of down_proj's node (input and weight
    # gradients, T f x 4 + f d x 4 = 98,304) and the product's (2 T f x 4 = 98,304): 469,508,
    # more than the start of backward (S + 2 T V x 4 = 263,428). On top: the held logits,
    # T V x 4 = 65,536.
    m = training_memory(CFG, micro_batch_size=2, seq_len=32, precision="32-true",
                        checkpointing="full", optimizer_impl="fused")
    assert m.saved_for_backward == 132_356
    assert m.peak_moment == "recompute"
    assert m.tensor_peak == W + G + ADAMW + 132_356 - 99_076 + 516 + 337_408 - 16_384 + 16_384 \
        + 98_304 + 65_536
    assert m.tensor_peak == W + G + ADAMW + 469_508 + 65_536


def test_full_checkpointing_under_autocast_peaks_at_the_end_of_forward() -> None:
    # bf16-mixed (e = 2, fp32 residual and loss). Saved: token ids 512, block inputs
    # 2 x 64 x 64 x 4 = 32,768, final norm 16,640, head input T d x 2 = 8192, log-softmax 65,536,
    # targets 516: S = 124,164. autocast caches a bf16 copy of every matmul weight until the
    # forward ends: (2 x 49,152 + 16,384) x 2 = 229,376. The end of forward holds S, those copies,
    # the bf16 logits (T V x 2 = 32,768) and their fp32 upcast for the loss (65,536): 451,844;
    # the start of backward only the head's copy (32,768) and 2 T V x 4: 288,004; recomputing a
    # block 33,280 + 32,768 + its saved 194,048 + its weights' copies 98,304 = 358,400.
    m = training_memory(CFG, micro_batch_size=2, seq_len=32, precision="bf16-mixed",
                        checkpointing="full", optimizer_impl="fused")
    assert m.saved_for_backward == 124_164
    assert m.peak_moment == "forward_end"
    assert m.autocast_weight_copies == 229_376
    # held bf16 logits 32,768 on top: 451,844 + 32,768 - S - copies
    assert m.transient == 131_072
    assert m.tensor_peak == W + G + ADAMW + 451_844 + 32_768


def test_saved_for_backward_bytes_defaults_and_layers() -> None:
    # Defaults: bf16-mixed, flash, no checkpointing, CUDA, every layer. One block under
    # bf16-mixed (e = 2, r = 4) at b = 2, s = 32: norm1 16,384 + 256, qkv_input 8192, qkv
    # 64 x 8 x 16 x 2 = 16,384, rope_qk 64 x 6 x 16 x 2 = 12,288, attn_lse 1024, attn_out 8192,
    # norm2 16,640, mlp_input 2 x 8192 (gate and up each cast the input), mlp_activations
    # 4 x 64 x 192 x 2 = 98,304 -> 194,048. Outside: RoPE tables 8192 (fp32 parameters), token
    # ids 512, final norm 16,640, head input 8192, log-softmax 65,536, targets 516 -> 99,588.
    terms = saved_for_backward_bytes(CFG, micro_batch_size=2, seq_len=32)
    assert sum(terms.values()) == 2 * 194_048 + 99_588
    assert terms["mlp_activations"] == 2 * 98_304
    one = saved_for_backward_bytes(CFG, micro_batch_size=2, seq_len=32, layers=1)
    assert sum(one.values()) == 194_048 + 99_588


def test_saved_for_backward_bytes_passes_options_through() -> None:
    gpt = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=256, dropout=0.1)
    kw = {"micro_batch_size": 2, "seq_len": 32, "precision": "32-true"}
    # CUDA dropout: bool masks, b s d = 4096 for the embedding, 2 T d = 8192 per block
    cuda = saved_for_backward_bytes(gpt, **kw)  # type: ignore[arg-type]
    assert cuda["embedding_dropout_mask"] == 4096
    assert cuda["resid_dropout_masks"] == 2 * 8192
    # CPU's nn.Dropout keeps a mask in the input dtype: fp32, 4 x 4096
    assert saved_for_backward_bytes(gpt, device="cpu", **kw)["embedding_dropout_mask"] == 16_384  # type: ignore[arg-type]
    # eager attention saves the b a s^2 softmax output: 2 x 4 x 32 x 32 x 4 per block
    eager = saved_for_backward_bytes(gpt, attention="eager", **kw)  # type: ignore[arg-type]
    assert eager["attn_scores"] == 2 * 32_768
    # full checkpointing: block inputs only, T d x 4 per block
    full = saved_for_backward_bytes(gpt, checkpointing="full", **kw)  # type: ignore[arg-type]
    assert full["block_input"] == 2 * 16_384


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"attention": "eagr"}, r"^unknown attention 'eagr'; did you mean 'eager'\?"),
    ({"checkpointing": "selectiv"}, r"^unknown checkpointing 'selectiv'; did you mean "
                                    r"'selective'\?"),
    ({"device": "cpux"}, r"^unknown device 'cpux'; did you mean 'cpu'\?"),
    ({"micro_batch_size": "2"}, r"^micro_batch_size='2' must be an int >= 1 sequence, e\.g\. "
                                r"micro_batch_size=8$"),
    ({"seq_len": 1.5}, r"^seq_len=1\.5 must be an int >= 1 token, e\.g\. seq_len=8$"),
    ({"micro_batch_size": [1, float("nan")]}, r"^micro_batch_size=\[1, nan\] must hold finite "
                                              r"numbers of sequences$"),
    ({"seq_len": np.array(["a"])}, r"must hold finite numbers of tokens$"),
])
def test_saved_for_backward_bytes_rejects_bad_input(kwargs: dict[str, object],
                                                    message: str) -> None:
    args: dict[str, object] = {"micro_batch_size": 1, "seq_len": 8, **kwargs}
    with pytest.raises(ScaleplanError, match=message):
        saved_for_backward_bytes(CFG, **args)  # type: ignore[arg-type]


def test_numpy_sizes() -> None:
    # a numpy int is an int: exact, token ids b s x 8 = 2 x 8 x 8
    ids = saved_for_backward_bytes(CFG, micro_batch_size=np.int64(2), seq_len=8)["token_ids"]
    assert ids == 128 and type(ids) is int
    # lists and arrays sweep: float64, one value per point
    swept = saved_for_backward_bytes(CFG, micro_batch_size=[1, 2], seq_len=np.array([8, 16]))
    assert swept["token_ids"].tolist() == [64.0, 256.0]


def test_str_prints_each_part_in_gib() -> None:
    gib = 2**30
    m = MemoryBreakdown(weights=gib, gradients=2 * gib, optimizer=3 * gib,
                        saved_for_backward=4 * gib, autocast_weight_copies=gib // 4,
                        transient=gib // 2, overhead=gib // 8, total=11 * gib - gib // 8,
                        tensor_peak=11 * gib - gib // 4, logits=0, peak_moment="backward_start",
                        saved_breakdown={})
    assert str(m) == "\n".join([
        "                 weights:     1.000 GiB",
        "               gradients:     2.000 GiB",
        "               optimizer:     3.000 GiB",
        "      saved_for_backward:     4.000 GiB",
        "  autocast_weight_copies:     0.250 GiB",
        "               transient:     0.500 GiB",
        "                overhead:     0.125 GiB",
        "                   total:    10.875 GiB",
    ])


def test_allocator_slack_is_exact_past_float64_integers() -> None:
    # A model past 2^53 bytes of tensors (a 2^24 x (2^25 + 1) embedding): float64 cannot hold
    # the peak exactly, the slack is still ceil(peak x fraction) to the byte. With the fraction
    # 2^-10 (exact in binary) that is ceil(peak / 1024).
    huge = GPTConfig(n_layer=1, n_head=1, n_embd=2**24, vocab_size=2**25 + 1, block_size=8,
                     bias=False)
    m = training_memory(huge, micro_batch_size=1, seq_len=1, precision="32-true",
                        allocator_slack_fraction=2**-10, cuda_context_bytes=0)
    assert m.tensor_peak > 2**53
    assert m.overhead == -(-m.tensor_peak // 1024)


def test_full_checkpointing_under_autocast_at_512_tokens_peaks_while_recomputing() -> None:
    # bf16-mixed, full checkpointing, b = 8, s = 64: T = 512. Per token (from the T = 64 case
    # above): S = 1940 T + 4 (ids 8, block inputs 2 x 256, final norm 260, head input 128,
    # log-softmax 1024, targets 8, + the 4-byte weight) = 993,284. Moments:
    #   end of forward  S + 229,376 copies + T V (2 + 4) = 3476 T + 229,380 = 2,009,092
    #   start of backward  S + 32,768 (the head's copy) + 2 T V x 4 = 3988 T + 32,772 = 2,074,628
    #   recompute  the kept ids and block inputs 520 T, the targets 8 T + 4, one block 3032 T
    #     less its RMSNorm's input (the checkpoint, T d x 4 = 256 T), one block's bf16 weight
    #     copies 98,304 (the head's copy was freed with its backward), the residual gradient
    #     T d x 4 = 256 T, and the largest MLP backward node: down_proj's (its bf16 incoming
    #     gradient T d x 2 + input gradient T f x 2 + weight gradient f d x 2 = 384 T + 24,576),
    #     the weight gradient's fp32 cast (f d x 4 = 49,152) or the product's gradients
    #     (2 T f x 2 = 768 T): 768 T at T = 512. 4328 T + 98,308 = 2,314,244
    # Recomputing wins (it does at every T: 4328 T > 3988 T).
    m = training_memory(CFG, micro_batch_size=8, seq_len=64, precision="bf16-mixed",
                        checkpointing="full", optimizer_impl="fused")
    assert m.saved_for_backward == 993_284
    assert m.peak_moment == "recompute"
    held = 512 * 256 * 2  # bf16 logits
    assert m.tensor_peak == W + G + ADAMW + 4328 * 512 + 98_308 + held == \
        W + G + ADAMW + 2_314_244 + held


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"attention": "eagr"}, r"^unknown attention 'eagr'; did you mean 'eager'\?"),
    ({"checkpointing": "ful"}, r"^unknown checkpointing 'ful'; did you mean 'full'\?"),
    ({"device": "cudaa"}, r"^unknown device 'cudaa'; did you mean 'cuda'\?"),
])
def test_training_memory_names_unknown_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ScaleplanError, match=message):
        training_memory(CFG, micro_batch_size=1, seq_len=1, **kwargs)  # type: ignore[arg-type]


def test_selective_checkpointing_with_flash_saves_what_no_checkpointing_saves() -> None:
    # flash attention already recomputes its scores, so selective recomputation changes nothing
    # (Korthikanti et al.'s selective recompute targets the s^2 softmax, which flash never keeps):
    # 782,596 bytes at b = 2, s = 32 in fp32 (tests/test_gated_gqa_values.py)
    m = training_memory(CFG, micro_batch_size=2, seq_len=32, precision="32-true",
                        checkpointing="selective")
    assert m.saved_for_backward == 782_596


def test_swept_sizes_are_validated_point_by_point() -> None:
    tiny = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    bad = [
        ({"micro_batch_size": np.array([0, 1]), "seq_len": 4},
         r"^micro_batch_size=\[0 1\] must be >= 1 sequence$"),
        ({"micro_batch_size": [1, 2], "seq_len": np.array([0, 4])},
         r"^seq_len=\[0 4\] must be >= 1 token$"),
        ({"micro_batch_size": 2, "seq_len": np.array([4, 5])},
         r"^seq_len=\[4 5\] exceeds block_size=4, the length of the learned position table"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ScaleplanError, match=message):
            saved_for_backward_bytes(tiny, **kwargs)  # type: ignore[arg-type]
    # the bounds themselves are fine: one token, and exactly block_size; ids are b s x 8
    ok = saved_for_backward_bytes(tiny, micro_batch_size=2, seq_len=np.array([1, 4]))
    assert ok["token_ids"].tolist() == [16.0, 64.0]
    assert ok["position_ids"].tolist() == [8.0, 32.0]


def test_saved_for_backward_bytes_model_level_terms() -> None:
    kw = {"micro_batch_size": 2, "seq_len": 32}
    # RoPE tables in the parameter dtype: 2 x 64 x 16 x 2 bytes for bf16 parameters
    assert saved_for_backward_bytes(CFG, precision="bf16-true", **kw)["rope_tables"] == 4096  # type: ignore[arg-type]
    # full checkpointing recomputes them with the block: not kept
    assert "rope_tables" not in saved_for_backward_bytes(CFG, checkpointing="full", **kw)  # type: ignore[arg-type]
    # eager attention's causal mask: one s x s bool tensor
    gpt = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=256)
    assert saved_for_backward_bytes(gpt, attention="eager", **kw)["causal_mask"] == 1024  # type: ignore[arg-type]
    # CUDA dropout semantics on CPU: bool embedding mask b s d x 1 = 4096
    drop = saved_for_backward_bytes(gpt.replace(dropout=0.1), device="cpu-cuda-semantics",
                                     precision="32-true", **kw)  # type: ignore[arg-type]
    assert drop["embedding_dropout_mask"] == 4096
