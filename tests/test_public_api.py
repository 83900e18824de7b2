"""The package's public names are a contract: this test pins them, and keeps `import scaleplan`
free of heavy imports."""

from __future__ import annotations

import subprocess
import sys

import scaleplan

EXPECTED = {
    # configs and loaders
    "GPTConfig", "TrainingConfig", "NanoGPTRun", "from_hf", "load_nanogpt_config",
    # parameters
    "ParamCount", "count_params",
    # FLOPs, GPUs, throughput
    "StepFlops", "flops_per_token", "step_flops", "training_flops",
    "GPUSpec", "gpu", "gpus", "register_gpu",
    "Throughput", "TrainingTime", "Utilization", "from_nanogpt_mfu", "mfu", "throughput_at_mfu",
    "time_to_train",
    # scaling laws and token budgets
    "ScalingLaw", "ComputeOptimal", "scaling_law", "scaling_laws", "fit_scaling_law",
    "chinchilla_tokens", "overtraining_ratio", "tokens_seen", "training_compute",
    "critical_batch_size", "data_constrained_loss", "inference_optimal",
    # memory, batching, planning
    "MemoryBreakdown", "training_memory", "Parallelism", "max_micro_batch_size", "max_seq_len",
    "grad_accum_steps", "Plan", "plan", "plan_for_budget", "sweep",
    # logs and diagnosis
    "TrainingLog", "read_log", "Diagnosis", "Finding", "diagnose",
    # validators for users' own pydantic models
    "FitsOn", "ParamsNear", "MaxParams", "TokensPerParam", "DivisibleStep", "check",
    # errors
    "ConfigFileError", "ScaleplanError", "UnknownNameError",
}


def test_all_is_pinned() -> None:
    assert set(scaleplan.__all__) == EXPECTED
    assert len(scaleplan.__all__) == len(EXPECTED)  # no duplicates


def test_every_exported_name_exists_and_nothing_else_is_public() -> None:
    for name in scaleplan.__all__:
        assert hasattr(scaleplan, name), name
    public = {n for n in vars(scaleplan) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(scaleplan, n)).__name__ == "module"}
    assert public - modules == EXPECTED


def test_import_is_light() -> None:
    code = ("import sys, scaleplan; "
            "print(','.join(m for m in ('torch', 'sympy', 'matplotlib', 'pandas') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == ""
