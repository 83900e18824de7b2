"""scaleplan: plan GPT training runs from arithmetic alone.

Every public name is listed here; ``tests/test_public_api.py`` pins the list. Names load on first
use (PEP 562), so ``import scaleplan`` costs almost nothing and a script that only counts
parameters never builds the planner's models; type checkers read the imports below.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from scaleplan.batching import grad_accum_steps
    from scaleplan.budget import plan_for_budget
    from scaleplan.config import GPTConfig, TrainingConfig
    from scaleplan.diagnose import Diagnosis, diagnose
    from scaleplan.errors import ConfigFileError, ScaleplanError, UnknownNameError
    from scaleplan.findings import Finding
    from scaleplan.flops import StepFlops, flops_per_token, step_flops, training_flops
    from scaleplan.hardware import GPUSpec, gpu, gpus, register_gpu
    from scaleplan.loaders import NanoGPTRun, from_hf, load_nanogpt_config
    from scaleplan.logs import TrainingLog, read_log
    from scaleplan.memory import MemoryBreakdown, training_memory
    from scaleplan.memory_limits import max_micro_batch_size, max_seq_len
    from scaleplan.parallel import Parallelism
    from scaleplan.params import ParamCount, count_params
    from scaleplan.planner import Plan, plan
    from scaleplan.scaling import ScalingLaw, scaling_law, scaling_laws
    from scaleplan.scaling_base import ComputeOptimal
    from scaleplan.scaling_budget import (
        chinchilla_tokens,
        overtraining_ratio,
        tokens_seen,
        training_compute,
    )
    from scaleplan.scaling_fit import fit_scaling_law
    from scaleplan.scaling_rules import (
        critical_batch_size,
        data_constrained_loss,
        inference_optimal,
    )
    from scaleplan.sweep import sweep
    from scaleplan.throughput import (
        Throughput,
        TrainingTime,
        Utilization,
        from_nanogpt_mfu,
        mfu,
        throughput_at_mfu,
        time_to_train,
    )
    from scaleplan.validators import (
        DivisibleStep,
        FitsOn,
        MaxParams,
        ParamsNear,
        TokensPerParam,
        check,
    )

__version__ = "0.1.0"

# module (under scaleplan) -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {
    "batching": ("grad_accum_steps",),
    "budget": ("plan_for_budget",),
    "config": ("GPTConfig", "TrainingConfig"),
    "diagnose": ("Diagnosis", "diagnose"),
    "errors": ("ConfigFileError", "ScaleplanError", "UnknownNameError"),
    "findings": ("Finding",),
    "flops": ("StepFlops", "flops_per_token", "step_flops", "training_flops"),
    "hardware": ("GPUSpec", "gpu", "gpus", "register_gpu"),
    "loaders": ("NanoGPTRun", "from_hf", "load_nanogpt_config"),
    "logs": ("TrainingLog", "read_log"),
    "memory": ("MemoryBreakdown", "training_memory"),
    "memory_limits": ("max_micro_batch_size", "max_seq_len"),
    "parallel": ("Parallelism",),
    "params": ("ParamCount", "count_params"),
    "planner": ("Plan", "plan"),
    "scaling": ("ScalingLaw", "scaling_law", "scaling_laws"),
    "scaling_base": ("ComputeOptimal",),
    "scaling_budget": (
        "chinchilla_tokens", "overtraining_ratio", "tokens_seen", "training_compute",
    ),
    "scaling_fit": ("fit_scaling_law",),
    "scaling_rules": ("critical_batch_size", "data_constrained_loss", "inference_optimal"),
    "sweep": ("sweep",),
    "throughput": (
        "Throughput", "TrainingTime", "Utilization", "from_nanogpt_mfu", "mfu",
        "throughput_at_mfu", "time_to_train",
    ),
    "validators": ("DivisibleStep", "FitsOn", "MaxParams", "ParamsNear", "TokensPerParam", "check"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ComputeOptimal",
    "ConfigFileError",
    "Diagnosis",
    "DivisibleStep",
    "Finding",
    "FitsOn",
    "GPTConfig",
    "GPUSpec",
    "MaxParams",
    "MemoryBreakdown",
    "NanoGPTRun",
    "Parallelism",
    "ParamCount",
    "ParamsNear",
    "Plan",
    "ScaleplanError",
    "ScalingLaw",
    "StepFlops",
    "Throughput",
    "TokensPerParam",
    "TrainingConfig",
    "TrainingLog",
    "TrainingTime",
    "UnknownNameError",
    "Utilization",
    "check",
    "chinchilla_tokens",
    "count_params",
    "critical_batch_size",
    "data_constrained_loss",
    "diagnose",
    "fit_scaling_law",
    "flops_per_token",
    "from_hf",
    "from_nanogpt_mfu",
    "gpu",
    "gpus",
    "grad_accum_steps",
    "inference_optimal",
    "load_nanogpt_config",
    "max_micro_batch_size",
    "max_seq_len",
    "mfu",
    "overtraining_ratio",
    "plan",
    "plan_for_budget",
    "read_log",
    "register_gpu",
    "scaling_law",
    "scaling_laws",
    "step_flops",
    "sweep",
    "throughput_at_mfu",
    "time_to_train",
    "tokens_seen",
    "training_compute",
    "training_flops",
    "training_memory",
]


def __getattr__(name: str) -> _typing.Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'scaleplan' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"scaleplan.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
