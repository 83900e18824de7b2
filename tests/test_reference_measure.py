"""The measuring harness against values known by construction or derived by hand."""

from __future__ import annotations

import pytest

from scaleplan.model.config import GPTConfig

torch = pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                            '"scaleplan[torch]"')

from torch import nn  # noqa: E402

from scaleplan.reference.measure import StepMeasurement, count_flops, measure  # noqa: E402
from scaleplan.reference.tracking import (  # noqa: E402
    LiveBytesTracker,
    SavedTensorsRecorder,
    storage_key,
)

FP32, BF16 = 4, 2  # bytes per element

# A: GPT-2 style (LayerNorm, GELU, learned positions, biases, tied head).
GPT_TINY = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=32)
# B: Llama style (GQA 4:2, head_dim 4, SwiGLU 12, RMSNorm, RoPE, untied, no biases).
LLAMA_TINY = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=8, head_dim=4, block_size=16,
                       vocab_size=16, bias=False, mlp="swiglu", mlp_hidden=12, norm="rmsnorm",
                       position="rope", tie_embeddings=False)


@pytest.mark.parametrize("attention", ["flash", "eager"])
def test_flops_equal_the_hand_counted_matmuls_gpt2_style(attention: str) -> None:
    b, s, T = 2, 4, 8  # T = b*s tokens
    # Weight matmuls per layer: c_attn 8x24 + c_proj 8x8 + c_fc 8x32 + c_proj 32x8 = 768.
    # Two layers + lm_head 8x32 = 2*768 + 256 = 1792 weights, 2 FLOPs each per token.
    linear = 2 * T * 1792  # 28,672
    # Attention per layer: QK^T and AV, each 2*b*a*s*s*h = 2*2*2*4*4*4 = 512 (no causal halving).
    attn = 2 * 2 * 512  # 2,048 for two layers: present, not 0 as the CPU flash kernel would give
    forward, backward = count_flops(GPT_TINY, micro_batch_size=b, seq_len=s,
                                    attention=attention)  # type: ignore[arg-type]
    assert forward == linear + attn == 30_720
    assert backward == 2 * forward  # grad wrt input and wrt weight for every matmul


def test_flops_equal_the_hand_counted_matmuls_llama_style() -> None:
    b, s, T = 1, 6, 6
    # c_attn 8x(4*4 + 2*2*4) = 256, c_proj 16x8 = 128, c_fc + c_gate 2*8x12 = 192,
    # c_proj 12x8 = 96, lm_head 8x16 = 128: 800 weights.
    linear = 2 * T * 800  # 9,600
    attn = 2 * (2 * b * 4 * s * s * 4)  # k, v expanded to the 4 query heads: 2,304
    forward, backward = count_flops(LLAMA_TINY, micro_batch_size=b, seq_len=s)
    assert (forward, backward) == (linear + attn, 2 * (linear + attn)) == (11_904, 23_808)


def test_checkpointing_recomputes_the_blocks_forward_in_backward() -> None:
    blocks_forward = 2 * 8 * 1536 + 2048  # config A's blocks (no lm_head), b=2, s=4: 26,624
    # Non-reentrant checkpointing stops recomputing once every saved tensor is back, so each
    # block's last matmul (mlp.c_proj, 32x8, whose output nobody saved) is not rerun.
    last_matmuls = 2 * (2 * 8 * 32 * 8)  # 8,192
    forward, backward = count_flops(GPT_TINY, micro_batch_size=2, seq_len=4, checkpointing=True)
    assert forward == 30_720
    assert backward == 2 * 30_720 + blocks_forward - last_matmuls


def test_saved_tensors_of_linear_then_gelu_are_exact() -> None:
    # Linear(4, 8) on x (3x4, no grad) saves x for the weight gradient: 3*4*4 = 48 bytes (its
    # weight is only needed for x's gradient, which nobody wants). GELU saves its input, the
    # linear's output: 3*8*4 = 96 bytes.
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU())
    rec = SavedTensorsRecorder(param_keys={storage_key(p) for p in model.parameters()})
    with rec.recording(model):
        model(torch.randn(3, 4)).sum()
    assert rec.totals() == ({"0": 48, "1": 96}, {"float32": 144}, 0)


def test_saved_tensors_set_autocast_weight_copies_apart() -> None:
    # Under CPU bf16 autocast with x requiring grad, the Linear saves the bf16 copy of x
    # (3*4*2 = 24 B) and the bf16 copy of its weight (8*4*2 = 64 B, reported apart); GELU saves
    # the bf16 linear output (3*8*2 = 48 B). The fp32 weight itself is a parameter: excluded.
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU())
    rec = SavedTensorsRecorder(param_keys={storage_key(p) for p in model.parameters()})
    tracker = LiveBytesTracker()
    tracker.on_new_storage = rec.note_new_storage
    x = torch.randn(3, 4, requires_grad=True)
    with tracker, rec.recording(model), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).sum()
    assert rec.totals() == ({"0": 24, "1": 48}, {"bfloat16": 72}, 64)


def test_peak_tracker_is_exact_on_a_hand_computed_step() -> None:
    w = nn.Parameter(torch.randn(4, 4))  # 64 B
    x = torch.randn(2, 4)  # 32 B
    tracker = LiveBytesTracker()
    assert tracker.add_resident([w, x]) == 96
    with tracker:
        tracker.set_phase("forward")
        loss = (x @ w).sum()  # x@w: 32 B, freed after the sum; loss: 4 B -> peak 96+32+4
        tracker.set_phase("backward")
        loss.backward()  # grad of loss 4 B + w.grad 64 B -> peak 100+4+64 = 168
        tracker.set_phase("optimizer")
        with torch.no_grad():
            w.add_(w.grad, alpha=-0.1)  # in place: nothing new
        tracker.set_phase("zero_grad")
        w.grad = None  # frees 64 B
        del loss  # frees 4 B
    assert tracker.phase_peaks == {"start": 96, "forward": 132, "backward": 168,
                                   "optimizer": 164, "zero_grad": 164}
    assert (tracker.peak, tracker.peak_phase, tracker.current) == (168, "backward", 96)


def test_resident_state_and_params_of_a_measured_step() -> None:
    m = measure(GPT_TINY, micro_batch_size=2, seq_len=4)
    n = 2144  # count_params(GPT_TINY).total, checked against the model in test_reference_model
    assert m.params == n
    assert m.resident.params == FP32 * n
    assert m.resident.grads == 0  # zero_grad(set_to_none=True) before the step
    # fused AdamW: exp_avg and exp_avg_sq (fp32) per parameter tensor plus a 4-byte fp32 step
    n_tensors = len(list(dict.fromkeys(GPT_TINY_PARAMS())))
    assert m.resident.optimizer_states == 2 * FP32 * n + 4 * n_tensors
    assert m.resident.other == 2 * 2 * 4 * 8  # token ids and targets, int64
    # Peak: resident + the gradients (4n) at least, reached in backward.
    assert m.peak_bytes >= m.resident.total + FP32 * n
    assert m.peak_phase == "backward"
    assert StepMeasurement.model_validate_json(m.model_dump_json()) == m


def GPT_TINY_PARAMS() -> list[int]:  # noqa: N802
    from scaleplan.reference.model import GPT

    return [id(p) for p in GPT(GPT_TINY).parameters()]


def test_cpu_dropout_semantics_are_surfaced_and_cuda_semantics_reproduce_cuda() -> None:
    cfg = GPT_TINY.replace(dropout=0.1)
    b, s, d = 2, 4, 8
    cpu = measure(cfg, micro_batch_size=b, seq_len=s)
    cuda_like = measure(cfg, micro_batch_size=b, seq_len=s, cuda_semantics=True)
    # CPU nn.Dropout saves a float mask in the input dtype; CUDA a 1-byte bool mask.
    assert cpu.saved_by_module["transformer.h.0.attn.resid_dropout"] == b * s * d * FP32
    assert cuda_like.saved_by_module["transformer.h.0.attn.resid_dropout"] == b * s * d
    assert (cpu.dropout_mask_dtype, cuda_like.dropout_mask_dtype) == ("float32", "bool")
    # SDPA with dropout > 0 on CPU runs the math kernel; without it the CPU flash kernel.
    assert cpu.sdpa_kernel == "math (composite)"
    assert cuda_like.sdpa_kernel == "_scaled_dot_product_flash_attention_for_cpu"
    assert any("CUDA saves bool" in note for note in cpu.notes)
    # The math kernel keeps s x s tensors, the flash kernel only O(s) statistics.
    assert cpu.saved_under("transformer.h.0.attn") > cuda_like.saved_under("transformer.h.0.attn")


@pytest.mark.parametrize(("cfg", "kwargs"), [
    (GPT_TINY.replace(dropout=0.1), {"attention": "eager"}),
    (GPT_TINY, {"precision": "bf16-mixed", "checkpointing": True}),
    (LLAMA_TINY, {"precision": "bf16-true", "cuda_semantics": True}),
    (LLAMA_TINY, {"precision": "bf16-fp32-master", "optimizer": "foreach"}),
])
def test_fake_tensors_measure_what_real_tensors_measure(cfg: GPTConfig, kwargs: dict) -> None:
    real = measure(cfg, micro_batch_size=2, seq_len=6, **kwargs)
    fake = measure(cfg, micro_batch_size=2, seq_len=6, fake=True, **kwargs)
    skip = {"fake", "notes"}
    assert fake.model_dump(exclude=skip) == real.model_dump(exclude=skip)


def test_bad_measure_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"attention='sdpa' is not a kind; use 'flash'"):
        measure(GPT_TINY, micro_batch_size=1, seq_len=2, attention="sdpa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'"):
        measure(GPT_TINY, micro_batch_size=1, seq_len=2, precision="fp8")


def test_accumulating_step_starts_with_the_gradients_resident() -> None:
    fresh = measure(GPT_TINY, micro_batch_size=2, seq_len=4)
    last = measure(GPT_TINY, micro_batch_size=2, seq_len=4, accumulating=True)
    assert last.resident.grads == FP32 * 2144  # one fp32 gradient per parameter
    assert last.resident.total == fresh.resident.total + FP32 * 2144
    # Forward does not touch gradients: the same bytes on top of a larger base.
    assert last.live_after_forward - fresh.live_after_forward == FP32 * 2144
    assert last.peak_bytes > fresh.peak_bytes


def test_cpu_math_attention_under_autocast_saves_fp32() -> None:
    # b=2, a=2, s=8, h=4, dropout 0.1 -> math kernel. Under bf16 autocast it still saves in
    # fp32: q and k (b*a*s*h*4 = 512 B each), the softmax and the dropped-out probabilities and
    # the float mask (b*a*s*s*4 = 1024 B each), and v (512 B): 4,608 B, all float32.
    from scaleplan.reference.model import GPT

    model = GPT(GPT_TINY.replace(dropout=0.1, n_layer=1))
    rec = SavedTensorsRecorder(param_keys={storage_key(p) for p in model.parameters()})
    idx = torch.zeros(2, 8, dtype=torch.long)
    with rec.recording(model), torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx, idx)
    attention_core = [(n, dtype) for mod, n, dtype in rec.by_storage.values()
                      if mod == "transformer.h.0.attn"]
    assert sum(n for n, _ in attention_core) == 3 * 512 + 3 * 1024
    assert {dtype for _, dtype in attention_core} == {"float32"}


def test_a_gathered_view_of_a_functional_collective_counts_once() -> None:
    # torch's autograd all-gather of a sequence-sharded (1, 8, 4) fp32 activation over 2 fake
    # ranks (as a TP plan gathers a block's input): the collective's output (2, 8, 4), 256 B,
    # comes back wrapped in an AsyncCollectiveTensor and, one sequence, the gathered
    # (1, 16, 4) is a view of that wrapper, which the matmul saves. Live: the input 128 B,
    # the weight 64 B, the gathered 256 B and the matmul's output 256 B. The wrappers allocate
    # nothing; counted by their own storages (before `plain_tensors`) the step showed 1,472 B.
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from scaleplan.reference.tracking import plain_tensors

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        x = torch.randn(1, 8, 4, requires_grad=True)
        w = torch.randn(4, 4, requires_grad=True)
        tracker = LiveBytesTracker()
        tracker.add_resident([x, w])
        with tracker:
            gathered = funcol.all_gather_single_autograd(x, gather_dim=1, group=mesh)
            out = gathered @ w
            del gathered
        assert out.shape == (1, 16, 4)
        assert tracker.current == 128 + 64 + 256 + 256
        # a wrapper's plain tensors are what it wraps: here the collective's whole output
        waited = funcol.all_gather_single(x.detach(), gather_dim=0, group=mesh)
        assert [t.shape for t in plain_tensors(waited)] == [(2, 8, 4)]
    finally:
        dist.destroy_process_group()
