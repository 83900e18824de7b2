"""plan(): the seed case's question answered, checked against the memory model, hand-derived
token budgets and FLOPs, and the exporters read back."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from scaleplan.compute.hardware import gpu
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.memory.limits import available_memory_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import load_nanogpt_config
from scaleplan.planning.advice import sharded_slack_warnings
from scaleplan.planning.batching import micro_batch_sizes
from scaleplan.planning.planner import Plan, plan

GPT2 = GPTConfig.preset("gpt2")
LLAMA_SHAPE = GPTConfig(n_layer=4, n_head=8, n_kv_head=4, n_embd=512, mlp_hidden=1408,
                        vocab_size=32000, bias=False, mlp="swiglu", norm="rmsnorm",
                        position="rope", tie_embeddings=False)


@pytest.fixture(scope="module")
def seed_plan() -> Plan:
    # seed-case.md: "what micro-batch fits in 12 GB for n_embd = 768, and exactly how many
    # gradient-accumulation steps keep ~524k tokens per step?"
    return plan(GPT2, "RTX 4070", tokens_per_step=524_288)


def test_seed_case_step_is_exact_and_fits(seed_plan: Plan) -> None:
    p = seed_plan
    assert p.micro_batch_size * p.grad_accum_steps * p.seq_len == 524_288
    assert p.seq_len == 1024 and p.world_size == 1
    assert p.fits and p.memory.total <= p.available_bytes
    # the RTX 4070's nvidia-smi total is 12,282 MiB (hardware data file, sourced there)
    assert p.available_bytes == 12_282 * 2**20
    assert p.headroom_bytes == p.available_bytes - p.memory.total


def test_seed_case_next_larger_micro_batch_does_not_fit(seed_plan: Plan) -> None:
    sizes = micro_batch_sizes(524_288, 1024)
    larger = sizes[sizes.index(seed_plan.micro_batch_size) + 1]
    mem = training_memory(GPT2, micro_batch_size=larger, seq_len=1024, precision="bf16-mixed")
    assert mem.total > seed_plan.available_bytes
    marks = {c.micro_batch_size: c.fits for c in seed_plan.candidates}
    assert marks[seed_plan.micro_batch_size] and not marks[larger]


def test_choice_is_the_largest_fitting_divisor_by_exhaustive_search(seed_plan: Plan) -> None:
    fitting = [b for b in micro_batch_sizes(524_288, 1024)
               if training_memory(GPT2, micro_batch_size=b, seq_len=1024).total
               <= seed_plan.available_bytes]
    assert seed_plan.micro_batch_size == max(fitting)


@pytest.mark.parametrize(("preset", "gpu_name", "seq_len", "tokens"), [
    ("nanogpt-shakespeare-char", "T4", 256, 2**16),
    ("gpt2-medium", "RTX 3090", 1024, 2**19),
    ("smollm2-135m", "L4", 2048, 3 * 2**19),
    ("tinyllama-1.1b", "A100 SXM 80GB", 2048, 2**21),
    ("qwen2-0.5b", "RTX 4060 Ti 16GB", 512, 720 * 512),  # 720 sequences: 30 divisors
])
def test_search_matches_exhaustive_search(preset: str, gpu_name: str, seq_len: int,
                                          tokens: int) -> None:
    cfg = GPTConfig.preset(preset)
    p = plan(cfg, gpu_name, tokens_per_step=tokens, seq_len=seq_len)
    fitting = [b for b in micro_batch_sizes(tokens, seq_len)
               if training_memory(cfg, micro_batch_size=b, seq_len=seq_len,
                                  precision=p.precision).total <= p.available_bytes]
    assert p.micro_batch_size == max(fitting)


def test_model_states_are_nanogpts_16_bytes_per_parameter(seed_plan: Plan) -> None:
    # bf16-mixed as nanoGPT runs it: fp32 weights (4 B) and grads (4 B), AdamW's two fp32 states
    # (8 B): 16 bytes for each of GPT-2's 124,439,808 parameters; plus torch AdamW's 4-byte step
    # counter for each of the 148 parameter tensors (wte, wpe, ln_f weight and bias, and 12 per
    # block: ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj, each weight and bias).
    m = seed_plan.memory
    assert (m.weights, m.gradients, m.optimizer) == (4 * 124_439_808, 4 * 124_439_808,
                                                     8 * 124_439_808 + 4 * 148)


def test_precision_is_chosen_by_the_gpu() -> None:
    assert plan(GPT2, "A100 SXM 80GB").precision == "bf16-mixed"
    t4 = plan(GPT2, "T4")
    assert t4.precision == "16-mixed" and "no bf16 tensor cores" in t4.precision_reason
    forced = plan(GPT2, "V100 SXM2 32GB", precision="bf16-mixed")
    assert "no-bf16-tensor-cores" in {w.code for w in forced.warnings}


def test_default_tokens_are_chinchilla_optimal_by_hand() -> None:
    # Hoffmann et al. 2022 Approach 3, unrounded constants (design.md). For a fixed N the
    # compute-optimal D solves N = G (C/6)^a with C = 6 N D: C/6 = (N/G)^(1/a), D = (C/6) / N.
    E, A, B, alpha, beta = 1.69337368, 406.401018, 410.722827, 0.33917084, 0.2849083
    a = beta / (alpha + beta)
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = 124_439_808
    D = (N / G) ** (1 / a) / N
    p = plan(GPT2, "A100 SXM 80GB", tokens_per_step=524_288)
    assert p.total_tokens == pytest.approx(D, rel=1e-6)
    assert p.expected_loss == pytest.approx(E + A / N**alpha + B / D**beta, rel=1e-9)
    assert p.steps == math.ceil(p.total_tokens / 524_288)


def test_time_from_flops_by_hand() -> None:
    # PaLM App. B per token, causal: 6 N_matmul + 6 L H Q T. GPT-2: N_matmul = 12 layers x
    # 12 d^2 + the tied head d V = 84,934,656 + 38,597,376 = 123,532,032.
    per_token = 6 * 123_532_032 + 6 * 12 * 12 * 64 * 1024
    p = plan(GPT2, "H100 SXM", tokens_per_step=524_288, total_tokens=10**10, mfu=0.5,
             world_size=8)
    expected_hours = 10**10 * per_token / (0.5 * 989e12 * 8) / 3600  # H100 SXM dense bf16
    assert p.hours == pytest.approx(expected_hours, rel=1e-9)
    assert p.training_flops == pytest.approx(10**10 * per_token, rel=1e-12)
    assert p.grad_accum_steps * p.micro_batch_size * 1024 * 8 == 524_288


def test_hours_budget_gives_tokens() -> None:
    p = plan(GPT2, "RTX 4070", tokens_per_step=524_288, hours=24, mfu=0.3)
    per_token = 6 * 123_532_032 + 6 * 12 * 12 * 64 * 1024
    assert p.total_tokens == pytest.approx(24 * 3600 * 0.3 * 58.2912e12 / per_token, rel=1e-6)
    assert p.hours == pytest.approx(24, rel=1e-6)


def test_remedy_applied_when_micro_batch_1_does_not_fit() -> None:
    p = plan(GPTConfig.preset("gpt2-large"), "RTX 4070", tokens_per_step=524_288)
    assert p.remedy is not None and p.fits
    base = training_memory(GPTConfig.preset("gpt2-large"), micro_batch_size=1, seq_len=1024)
    assert base.total > p.available_bytes  # without the remedy it would not fit
    assert any(r.fits and r.name == p.remedy for r in p.remedies)


def test_nothing_fits_says_what_would() -> None:
    with pytest.raises(ScaleplanError, match=r"nothing fits on one RTX 4070 \(11.99 GiB\).*"
                       r"narrow the model to n_embd=\d+ \(from 4096\)"):
        plan(GPTConfig.preset("llama-2-7b"), "RTX 4070", seq_len=1024)


def test_nothing_fits_names_the_widest_width_that_fits() -> None:
    # The plan's memory cache used to key models by id(): the width search's temporary configs
    # could reuse a freed id and read another width's memory ("n_embd=1600 (from 1600)").
    # It showed from the second call in a process on, so the search runs twice.
    xl = GPTConfig.preset("gpt2-xl")  # 25 heads: widths step by 25
    widths = []
    for _ in range(2):
        with pytest.raises(ScaleplanError, match=r"n_embd=(\d+) \(from 1600\)") as caught:
            plan(xl, "T4")  # fp16 autocast there: no bf16 tensor cores
        widths.append(int(str(caught.value).split("n_embd=")[1].split(" ")[0]))
    available = available_memory_bytes(gpu("T4"))

    def total(n_embd: int) -> int:
        narrower = xl.replace(n_embd=n_embd, mlp_hidden=None, head_dim=None)
        return training_memory(narrower, micro_batch_size=1, seq_len=1024, precision="16-mixed",
                               checkpointing="full", optimizer="adamw-8bit").total

    width = widths[0]
    assert widths == [width, width]
    assert width < 1600 and total(width) <= available < total(width + 25)


def test_warnings() -> None:
    codes = {w.code for w in plan(GPT2.replace(dropout=0.1), "RTX 4070",
                                  total_tokens=10**10).warnings}
    # RTX 4070: 46 SMs < 68; 1e10 tokens is ~4.1x the ~2.44e9 compute-optimal budget
    assert {"inductor-small-gpu", "dropout-single-epoch", "past-compute-optimal"} <= codes
    assert "inductor-small-gpu" not in {w.code for w in plan(GPT2, "H100 SXM").warnings}
    rope = GPTConfig.preset("smollm2-135m").replace(block_size=512)
    assert "seq-len-above-block-size" in {w.code for w in plan(rope, "H100 SXM",
                                                               seq_len=1024).warnings}
    short = plan(GPT2, "H100 SXM", total_tokens=10**8)
    assert "short-of-compute-optimal" in {w.code for w in short.warnings}
    # a mixture of experts gets the dense law with a warning saying so; a dense model does not
    tiny_moe = GPT2.replace(n_layer=2, moe={"n_experts": 4, "top_k": 1, "expert_hidden": 256})
    assert "dense-law-for-moe" in {w.code for w in plan(tiny_moe, "H100 SXM").warnings}
    assert "dense-law-for-moe" not in {w.code for w in short.warnings}


def test_plan_round_trips_through_json(seed_plan: Plan) -> None:
    again = Plan.model_validate_json(seed_plan.model_dump_json())
    assert again == seed_plan


def test_every_field_of_plan_and_its_result_models_is_described() -> None:
    # Issue 21: the API reference and Plan.model_json_schema() show each field's description;
    # Plan had 14 fields with none. Each must be a sentence of its own, not the field's name.
    from scaleplan.planning.advice import PlanWarning
    from scaleplan.planning.fitting import Candidate
    from scaleplan.planning.remedies import Remedy
    from scaleplan.scaling.webtext import ExpectedLoss

    for model in (Plan, Candidate, Remedy, PlanWarning, ExpectedLoss):
        schema = model.model_json_schema()["properties"]
        assert list(schema) == list(model.model_fields), model.__name__
        for name, field in schema.items():
            text = field.get("description", "")
            assert len(text.split()) >= 3 and text.endswith((".", ")")), (model.__name__, name)
            assert text.lower().rstrip(".") != name.replace("_", " "), (model.__name__, name)
    assert Plan.model_json_schema()["properties"]["micro_batch_size"]["description"] == (
        "Sequences per GPU per forward and backward: the largest that fits and divides the step.")


def test_nanogpt_export_reads_back_to_the_same_settings(seed_plan: Plan) -> None:
    run = load_nanogpt_config("exported.py", text=seed_plan.to_nanogpt_config())
    assert run.model.replace(vocab_size=GPT2.vocab_size, bias=True) == GPT2.replace()
    assert run.training.micro_batch_size == seed_plan.micro_batch_size
    assert run.training.tokens_per_step == 524_288
    assert run.training.max_iters == seed_plan.steps
    assert run.training.precision == "bf16-mixed"


def test_other_exports(seed_plan: Plan) -> None:
    ds = seed_plan.to_deepspeed()
    assert ds["train_batch_size"] == 524_288 // 1024  # sequences per step, as DeepSpeed checks
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] == 512
    args = seed_plan.to_hf_training_args()
    assert args["bf16"] and not args["fp16"] and args["max_steps"] == seed_plan.steps
    eight = plan(GPT2, "H100 SXM", world_size=8, tokens_per_step=524_288)
    assert eight.to_torchrun("train.py") == "torchrun --standalone --nproc_per_node=8 train.py"
    assert json.dumps(eight.to_deepspeed())  # serialisable
    with pytest.raises(ScaleplanError, match="nanoGPT builds GPT-2-style models only"):
        plan(GPTConfig.preset("smollm2-135m"), "H100 SXM", seq_len=1024).to_nanogpt_config()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"gpu": "RTX 4071"}, UnknownNameError, r"unknown GPU 'RTX 4071'; did you mean"),
        ({"tokens_per_step": 1000}, ScaleplanError,
         r"tokens_per_step=1,000 is not a whole number of sequences .* try tokens_per_step=1,024"),
        ({"hours": 0}, ScaleplanError, r"hours=0 must be a positive number of hours"),
        ({"mfu": 0.0}, ScaleplanError, r"mfu=0.0 must be a fraction in \(0, 1\]"),
        ({"mfu": 45}, ScaleplanError, r"mfu=45 must be a fraction"),
        ({"total_tokens": -5}, ScaleplanError, r"total_tokens=-5 must be a positive int"),
        ({"world_size": 0}, ScaleplanError, r"world_size=0 must be an int >= 1"),
        ({"hours": 5, "total_tokens": 10**9}, ScaleplanError, r"not both"),
        ({"precision": "fp64"}, UnknownNameError, r"unknown precision 'fp64'"),
    ],
)
def test_bad_input(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    args: dict[str, object] = {"gpu": "RTX 4070"} | kwargs
    with pytest.raises(error, match=message):
        plan(GPT2, **args)  # type: ignore[arg-type]


def test_data_parallel_plans_count_ddp_buckets_and_offer_zero() -> None:
    # 8 GPUs: each sees 1/8 of the step; DDP keeps a second, bucketed copy of the gradients
    # (PyTorch's default gradient_as_bucket_view=False), so memory exceeds the 1-GPU figure.
    one = plan(GPT2, "H100 SXM", tokens_per_step=524_288)
    eight = plan(GPT2, "H100 SXM", tokens_per_step=524_288, world_size=8)
    assert eight.data_parallel == 8
    assert eight.micro_batch_size * eight.grad_accum_steps * 1024 * 8 == 524_288
    same_b = training_memory(GPT2, micro_batch_size=eight.micro_batch_size, seq_len=1024)
    assert eight.memory.total > same_b.total
    assert one.world_size == 1 and one.parallelism is None
    # gpt2-xl on 4 x RTX 4090 (24 GiB) does not fit plain DDP at micro-batch 1; ZeRO is tried
    # first, being free of extra compute.
    xl = plan(GPTConfig.preset("gpt2-xl"), "RTX 4090", world_size=4, seq_len=1024)
    assert xl.remedy is not None and xl.remedy.startswith("ZeRO-")
    assert xl.parallelism is not None and xl.parallelism.zero_stage >= 1 and xl.fits


def test_gpu_spec_instance_is_accepted() -> None:
    assert plan(GPT2, gpu("RTX 4090")).gpu.name == "RTX 4090"


def test_no_gradient_accumulation_plans_one_micro_batch_per_step() -> None:
    # gradient_accumulation=False computes memory with no gradients during forward; the plan
    # used to accumulate 64 micro-batches anyway. Now the step is one micro-batch: the largest
    # that fits (the next one up does not), or the step given must fit in one.
    p = plan(GPT2, "RTX 4070", gradient_accumulation=False)
    assert p.grad_accum_steps == 1 and p.tokens_per_step == p.micro_batch_size * 1024
    assert p.memory.gradients == 0  # the worst moment is before backward made any
    over = training_memory(GPT2, micro_batch_size=p.micro_batch_size + 1, seq_len=1024,
                           precision=p.precision, gradient_accumulation=False)
    assert p.fits and over.total > p.available_bytes
    with pytest.raises(ScaleplanError, match="tokens_per_step=524,288 is 512 sequences"):
        plan(GPT2, "RTX 4070", gradient_accumulation=False, tokens_per_step=2**19)
    given = plan(GPT2, "RTX 4070", gradient_accumulation=False, tokens_per_step=4 * 1024)
    assert (given.micro_batch_size, given.grad_accum_steps) == (4, 1)


def test_thin_fsdp_allocator_margin_warning() -> None:
    # published FSDP2 runs reserved 10-15% above scaleplan's tensor peak and side-stream cache
    # (torchtitan's docs/performance.md rows in docs/validation/published-peaks.md): a sharded
    # plan is warned when its GPU holds less than the CUDA context (512 MiB) plus 1.15 x those
    par = Parallelism(data=8, fsdp="full_shard")
    m = training_memory(GPT2, micro_batch_size=8, seq_len=1024, parallelism=par)
    assert m.stream_cache == 0  # nanoGPT's step: no side stream modelled
    enough = 512 * 2**20 + -(-m.tensor_peak * 115 // 100)

    def codes(available: int, parallelism: Parallelism | None = par,
              **options: Any) -> list[str]:
        memory = m if not options else training_memory(
            GPT2, micro_batch_size=8, seq_len=1024, parallelism=parallelism, **options)
        return [w.code for w in sharded_slack_warnings(memory, available, parallelism, options)]

    assert m.total < enough  # the 5% placeholder fits where the published overhead does not
    assert codes(m.total) == codes(enough - 1) == ["thin-fsdp-allocator-margin"]
    assert codes(enough) == []
    assert codes(m.total, allocator_slack_fraction=0.15) == []  # already planned for
    assert codes(m.total, parallelism=None) == []  # one GPU: no published evidence
    assert codes(m.total, parallelism=Parallelism(data=8)) == []  # DDP: nothing sharded
    assert codes(m.total, device="cpu") == []  # no allocator overhead on CPU
    message = sharded_slack_warnings(m, m.total, par, {})[0].message
    assert "allocator_slack_fraction=0.15" in message and "5%" in message
    # torchtitan's step: its side streams' cache counts beside the tensor peak
    titan = training_memory(LLAMA_SHAPE, micro_batch_size=2, seq_len=1024, parallelism=par,
                            implementation="torchtitan", gradient_accumulation=False)
    assert titan.stream_cache > 0
    enough = 512 * 2**20 + -(-(titan.tensor_peak + titan.stream_cache) * 115 // 100)
    assert [w.code for w in sharded_slack_warnings(titan, enough - 1, par, {})] == [
        "thin-fsdp-allocator-margin"]
    assert sharded_slack_warnings(titan, enough, par, {}) == []


def test_torchtitan_chunk_length_warning() -> None:
    # scaleplan takes the chunked loss in 8,192-token chunks; torchtitan 0.3.0 splits a
    # micro-batch in eight, longer above 65,536 tokens: a plan of 16 x 8,192 tokens a rank
    # (16,384-token chunks under 0.3.0, twice as long) is told so, one of 8 x 8,192 is not
    par = Parallelism(data=8, fsdp="full_shard")
    kw: dict[str, Any] = dict(seq_len=8192, parallelism=par, implementation="torchtitan",
                              loss="chunked", checkpointing="full",
                              gradient_accumulation=False)
    long = plan(LLAMA_SHAPE, "H100 SXM", tokens_per_step=16 * 8192 * 8, **kw)
    assert long.micro_batch_size == 16
    warning = next(w for w in long.warnings if w.code == "titan-chunk-length")
    assert "16,384-token chunks" in warning.message and "2.0x larger" in warning.message
    assert "set num_chunks to 16" in warning.message
    short = plan(LLAMA_SHAPE, "H100 SXM", tokens_per_step=8 * 8192 * 8, **kw)
    assert short.micro_batch_size == 8
    assert "titan-chunk-length" not in {w.code for w in short.warnings}
