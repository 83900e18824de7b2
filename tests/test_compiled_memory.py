"""compile=True memory (issue 17): `scaleplan.memory.compiled_terms` against what inductor's
partition saves on CPU (`scaleplan.reference.compiled`), and the seed run on an RTX 4070.

Expected values come from live torch.compile measurements (tests marked ``torch``) or from
hand arithmetic written out below; none is copied from the code under test.
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.activations import autocast_weight_copy_bytes
from scaleplan.memory.compiled_terms import (
    compiled_backward_start_bytes,
    compiled_block_saved_terms,
    compiled_head_saved_terms,
    compiled_saved_terms,
)
from scaleplan.memory.training import (
    ALLOCATOR_SLACK_FRACTION,
    CUDA_CONTEXT_BYTES,
    training_memory,
)
from scaleplan.model.config import GPTConfig

GiB = 2**30

# The seed run: nanoGPT, 40.56M parameters, micro-batch 16 x 1024, bf16 autocast, compile=True,
# trained 14,500 steps on a 12 GB RTX 4070.
SEED = GPTConfig(n_layer=12, n_head=12, n_embd=384, bias=False, dropout=0.1,
                 vocab_size=50304, block_size=1024)
RTX_4070_BYTES = 12 * GiB


def _gpt(n_layer: int, dropout: float) -> GPTConfig:
    """nanoGPT's layout at a tiny width: LayerNorm, GELU, learned positions, tied head."""
    return GPTConfig(n_layer=n_layer, n_head=4, n_embd=128, block_size=64, vocab_size=512,
                     bias=False, dropout=dropout)


def _rms_learned(n_layer: int, dropout: float) -> GPTConfig:
    """A mixed layout: RMSNorm with learned positions and a GELU MLP."""
    return GPTConfig(n_layer=n_layer, n_head=4, n_embd=128, block_size=64, vocab_size=512,
                     bias=False, dropout=dropout, norm="rmsnorm")


def _llama(n_layer: int, dropout: float) -> GPTConfig:
    """Llama's layout at a tiny width: RMSNorm, SwiGLU, RoPE, GQA (4 query, 2 kv heads)."""
    return GPTConfig(n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352,
                     block_size=64, vocab_size=512, bias=False, dropout=dropout,
                     mlp="swiglu", norm="rmsnorm", position="rope")


def test_gelu_block_by_hand() -> None:
    # b=2, s=48 (T=96), d=128, f=512, 4 heads of 32, bf16 autocast (e=2), dropout on:
    # 2 LayerNorms: x_hat 96*128*4 + rstd 96*4 each = 49536 each
    # qkv input 96*128*2 = 24576; qkv 96*384*2 = 73728; attn out 24576; lse 2*4*48*4 = 1536
    # two bool masks 2*96*128 = 24576; mlp input 24576; fc out + gelu out 2*96*512*2 = 196608
    expected = 2 * 49536 + 24576 + 73728 + 24576 + 1536 + 24576 + 24576 + 196608
    got = compiled_block_saved_terms(_gpt(1, 0.1), 2, 48, precision="bf16-mixed", dropout=True)
    assert sum(got.values()) == expected == 469248


def test_swiglu_rope_block_by_hand() -> None:
    # T=96, d=128, f=352, a=4, k=2, h=32, bf16 autocast, no dropout:
    # norm1: input 96*128*4 + rstd 384; qkv input 24576; qkv 96*256*2 = 49152;
    # rotated q and k 96*192*2 = 36864; attn out 24576; lse 1536; norm2: the fp32 residual
    # sum 96*128*4 + rstd 384 (the first block: the attention projection's bf16 output,
    # 96*128*2, instead of the sum); mlp input 24576; gate, up and product 3*96*352*2
    later = (49152 + 384 + 24576 + 49152 + 36864 + 24576 + 1536 + 49152 + 384 + 24576
             + 202752)
    got = compiled_block_saved_terms(_llama(1, 0.0), 2, 48, precision="bf16-mixed",
                                     dropout=False)
    assert sum(got.values()) == later == 463104
    first = compiled_block_saved_terms(_llama(1, 0.0), 2, 48, precision="bf16-mixed",
                                       dropout=False, first=True)
    assert sum(first.values()) == later - 96 * 128 * 2


def test_loss_keeps_bf16_logits_not_an_fp32_log_softmax() -> None:
    head = compiled_head_saved_terms(SEED, 16, 1024, precision="bf16-mixed")
    assert head["logits"] == 16 * 1024 * 50304 * 2
    assert "log_softmax" not in head
    # the logits' gradient and zero tangent (bf16), and the loss backward's per-row sums
    assert compiled_backward_start_bytes(SEED, 16, 1024, precision="bf16-mixed") == (
        2 * 16 * 1024 * 50304 * 2 + 16 * 1024 * 4)


def test_unmodelled_options_are_refused() -> None:
    with pytest.raises(ScaleplanError, match="qk_norm"):
        compiled_saved_terms(SEED.model_copy(update={"qk_norm": "rmsnorm"}), 1, 8,
                             precision="bf16-mixed")
    with pytest.raises(ScaleplanError, match="dropout"):
        compiled_saved_terms(SEED, 1, 8, precision="bf16-mixed", device="cpu")
    with pytest.raises(ScaleplanError, match="precision"):
        compiled_saved_terms(SEED, 1, 8, precision="bf16-true")
    with pytest.raises(ScaleplanError, match="checkpointing"):
        compiled_saved_terms(SEED, 1, 8, precision="bf16-mixed", checkpointing="selective")


def test_seed_run_fits_an_rtx_4070_with_compile() -> None:
    """The seed run trained on a 12 GB card; with compile's terms it must fit it.

    The weights, gradients, optimizer states, autocast weight copies and overhead are
    `training_memory`'s, unchanged; the saved tensors and the backward-start transient are
    compile's; the held logits add nothing (they are the saved logits).
    """
    eager = training_memory(SEED, micro_batch_size=16, seq_len=1024, precision="bf16-mixed")
    saved = sum(compiled_saved_terms(SEED, 16, 1024, precision="bf16-mixed").values())
    backward_start = (saved + eager.autocast_weight_copies
                      + compiled_backward_start_bytes(SEED, 16, 1024, precision="bf16-mixed"))
    tensor_peak = eager.weights + eager.gradients + eager.optimizer + backward_start
    total = tensor_peak + CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK_FRACTION * tensor_peak
    assert eager.total > RTX_4070_BYTES  # the eager model says it does not fit (15.36 GiB)
    assert total <= RTX_4070_BYTES
    # By hand, T = 16384 tokens, d = 384, f = 1536, V = 50304, bf16 (2 bytes) under autocast:
    # a block keeps two fp32 x_hat + rstd (2 x 1540 B per token), the qkv input, the
    # attention output, the MLP input (768 B each), qkv (2304 B), two bool masks (768 B),
    # fc out + GELU out (6144 B) per token, and the log-sum-exp 16 x 12 x 1024 x 4 B.
    T = 16 * 1024
    block = T * (2 * 1540 + 768 + 768 + 768 + 2304 + 768 + 6144) + 16 * 12 * 1024 * 4
    embedding = T * 8 + 1024 * 8 + T * 384  # token ids, position ids, bool dropout mask
    # at 16 rows the partition rebuilds the first block's input (scaleplan.memory.
    # compiled_first_input): the position embedding's output (fp32) and ln_1's mean
    embedding += 1024 * 384 * 4 + T * 4
    head = T * 1540 + T * 768 + T * 50304 * 2 + 2 * T * 4 + T * 8 + 4
    assert saved == 12 * block + embedding + head
    # training_memory(compile=True) is that assembly: the acceptance, through the API
    compiled = training_memory(SEED, micro_batch_size=16, seq_len=1024, precision="bf16-mixed",
                               compile=True)
    assert compiled.saved_for_backward == saved
    assert compiled.peak_moment == "backward_start"
    assert compiled.total == pytest.approx(total, abs=1)  # the slack rounds up to a whole byte
    assert compiled.total <= RTX_4070_BYTES < eager.total


def test_plan_with_compile_picks_the_seed_runs_micro_batch() -> None:
    # The seed run used micro-batch 16 x 1024 with compile on its RTX 4070 (seed case); without
    # compile's terms the plan could only offer 8, with them 16 fits.
    from scaleplan.planning.planner import plan

    kw = {"seq_len": 1024, "tokens_per_step": 2**19}
    assert plan(SEED, "RTX 4070", compile=True, **kw).micro_batch_size == 16
    assert plan(SEED, "RTX 4070", **kw).micro_batch_size == 8


def test_compile_is_refused_where_it_is_not_modelled() -> None:
    from scaleplan.memory.parallel import Parallelism

    with pytest.raises(ScaleplanError, match="compile=True is modelled for data parallelism"):
        training_memory(SEED, micro_batch_size=1, seq_len=64, compile=True,
                        parallelism=Parallelism(tensor=2))
    with pytest.raises(ScaleplanError,
                       match="compile=True is modelled for nanoGPT's layout with attention="):
        training_memory(SEED, micro_batch_size=1, seq_len=64, compile=True, attention="eager")
    with pytest.raises(ScaleplanError, match="compile='yes' must be True or False"):
        training_memory(SEED, micro_batch_size=1, seq_len=64, compile="yes")  # type: ignore[arg-type]


torch_only = pytest.mark.torch


@pytest.fixture(scope="module")
def compiled() -> object:
    pytest.importorskip("torch", reason='needs torch: pip install "scaleplan[torch]"')
    return pytest.importorskip("scaleplan.reference.compiled")


CASES = [(layout, dropout, precision) for layout in ("gpt", "llama") for dropout in (0.0, 0.1)
         for precision in ("32-true", "bf16-mixed")] + [
    ("gpt", 0.1, "16-mixed"), ("rms_learned", 0.0, "bf16-mixed"),
    ("rms_learned", 0.1, "bf16-mixed")]
LAYOUTS = {"gpt": _gpt, "llama": _llama, "rms_learned": _rms_learned}


@torch_only
@pytest.mark.slow
@pytest.mark.parametrize(("layout", "dropout", "precision"), CASES)
def test_compiled_terms_match_inductor_partition(compiled: object, layout: str,
                                                 dropout: float, precision: str) -> None:
    """The issue asks for 5%; on torch 2.13's CPU inductor every case is exact."""
    cfg = LAYOUTS[layout](2, dropout)
    m = compiled.measure_compiled(  # type: ignore[attr-defined]
        cfg, micro_batch_size=2, seq_len=48, precision=precision)
    predicted = sum(compiled_saved_terms(cfg, 2, 48, precision=precision).values())
    assert abs(predicted - m.saved_for_backward) <= 0.05 * m.saved_for_backward
    assert predicted == m.saved_for_backward
    assert m.autocast_weight_copies == autocast_weight_copy_bytes(cfg, precision)
    assert m.logits_saved  # the returned logits are a saved tensor: holding them is free
    assert m.saved_by_dtype.get("bool", 0) == (0 if dropout == 0 else 5 * 96 * 128)


@torch_only
@pytest.mark.slow
def test_one_later_block_by_difference(compiled: object) -> None:
    """Measured at 2 and 3 layers, the difference is one later block: it keeps the fp32
    residual sum where the first block keeps the attention projection's bf16 output."""
    cfg = _llama(2, 0.0)
    block, rest = compiled.block_bytes_by_difference(  # type: ignore[attr-defined]
        cfg, micro_batch_size=2, seq_len=48, precision="bf16-mixed")
    later = compiled_block_saved_terms(cfg, 2, 48, precision="bf16-mixed", dropout=False)
    assert block == sum(later.values())
    terms = compiled_saved_terms(cfg, 2, 48, precision="bf16-mixed")
    assert rest == sum(terms.values()) - 2 * block


def test_full_checkpointing_by_hand() -> None:
    # nanoGPT layout, 2 layers, T=96, d=128, V=512, bf16 autocast, dropout 0.1, CPU RNG:
    # token ids 768 + position ids 384 + position embedding output 48*128*4 + embedding mask
    # 96*128; per block its fp32 input 96*128*4 and the CPU generator state 5056; five int64
    # seeds; the final LayerNorm's mean and rstd 2*96*4; lm_head input 96*128*2; bf16 logits
    # 96*512*2; max and log-sum-exp 2*96*4; targets 768 + 4.
    expected = (768 + 384 + 24576 + 12288 + 2 * (49152 + 5056) + 5 * 8 + 768 + 24576
                + 98304 + 768 + 772)
    got = compiled_saved_terms(_gpt(2, 0.1), 2, 48, precision="bf16-mixed",
                               checkpointing="full", device="cpu-cuda-semantics")
    assert sum(got.values()) == expected == 271660


@torch_only
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["gpt", "llama"])
def test_full_checkpointing_matches_inductor_partition(compiled: object, layout: str) -> None:
    cfg = (_gpt if layout == "gpt" else _llama)(2, 0.1)
    m = compiled.measure_compiled(  # type: ignore[attr-defined]
        cfg, micro_batch_size=2, seq_len=48, precision="bf16-mixed", checkpointing=True)
    predicted = sum(compiled_saved_terms(cfg, 2, 48, precision="bf16-mixed",
                                         checkpointing="full",
                                         device="cpu-cuda-semantics").values())
    assert predicted == m.saved_for_backward


def _modded(n_layer: int, dropout: float) -> GPTConfig:
    """modded-nanogpt's block at a tiny width: RMSNorm without a weight, per-head QK-norm,
    RoPE, a ReLU MLP, untied head (scaleplan.memory.compiled_layout)."""
    return GPTConfig(n_layer=n_layer, n_head=4, n_embd=128, block_size=64, vocab_size=512,
                     bias=False, dropout=dropout, norm="rmsnorm", norm_affine=False,
                     qk_norm="head", position="rope", mlp="relu", tie_embeddings=False)


@torch_only
def test_modded_block_matches_inductor_partition(compiled: object) -> None:
    """One small modded-like model, re-measured live (the committed grid is
    tests/data/compiled_layouts_golden.json): exact, the q/k norms' rstd and the ReLU's mask
    read off the partition."""
    cfg = _modded(2, 0.1)
    m = compiled.measure_compiled(  # type: ignore[attr-defined]
        cfg, micro_batch_size=2, seq_len=48, precision="bf16-mixed")
    terms = compiled_saved_terms(cfg, 2, 48, precision="bf16-mixed")
    assert sum(terms.values()) == m.saved_for_backward
    # per block, the q and k norms' rstd: 2 x (4 + 4) x 48 x 4 = 3072
    rstd = sum(v.nbytes for v in m.saved if v.module.endswith(("q_norm", "k_norm")))
    assert rstd == terms["qk_norm_rstd"] == 2 * 3072
    # bool: the ReLU's mask T f = 96 x 512 per block, the dropout masks 5 x 96 x 128
    assert m.saved_by_dtype["bool"] == 2 * 96 * 512 + 5 * 96 * 128
