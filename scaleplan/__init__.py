"""scaleplan: plan GPT training runs from arithmetic alone.

Every public name is re-exported here; ``tests/test_public_api.py`` pins the list.
"""

from scaleplan.config import GPTConfig, TrainingConfig
from scaleplan.errors import ConfigFileError, ScaleplanError, UnknownNameError
from scaleplan.flops import StepFlops, flops_per_token, step_flops, training_flops
from scaleplan.hardware import GPUSpec, gpu, gpus, register_gpu
from scaleplan.loaders import NanoGPTRun, from_hf, load_nanogpt_config
from scaleplan.params import ParamCount, count_params
from scaleplan.throughput import (
    Throughput,
    TrainingTime,
    Utilization,
    from_nanogpt_mfu,
    mfu,
    throughput_at_mfu,
    time_to_train,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigFileError",
    "GPTConfig",
    "GPUSpec",
    "NanoGPTRun",
    "ParamCount",
    "ScaleplanError",
    "StepFlops",
    "Throughput",
    "TrainingConfig",
    "TrainingTime",
    "UnknownNameError",
    "Utilization",
    "count_params",
    "flops_per_token",
    "from_hf",
    "from_nanogpt_mfu",
    "gpu",
    "gpus",
    "load_nanogpt_config",
    "mfu",
    "register_gpu",
    "step_flops",
    "throughput_at_mfu",
    "time_to_train",
    "training_flops",
]
