"""scaleplan: plan GPT training runs from arithmetic alone.

Every public name is re-exported here; ``tests/test_public_api.py`` pins the list.
"""

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
from scaleplan.scaling_rules import critical_batch_size, data_constrained_loss, inference_optimal
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
