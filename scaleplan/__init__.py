"""scaleplan: plan GPT training runs from arithmetic alone.

The public API is the table `_EXPORTS` below: each module (under ``scaleplan``) and the public
names it provides. ``__all__`` and the lazy loader both read it; ``tests/test_public_api.py`` pins
the names and checks that the imports type checkers read (the ``TYPE_CHECKING`` block) say the
same. Names load on first use (PEP 562), so ``import scaleplan`` costs almost nothing and a script
that only counts parameters never builds the planner's models.

Where things live (one folder per concern; see each folder's ``__init__``): ``model`` (configs,
presets, layer shapes, exact parameter counts, readers of other tools' files), ``compute`` (FLOPs,
GPUs, throughput), ``memory`` (training memory, activations, optimizer states, parallelism, the
largest batch that fits), ``inference`` (KV cache, serving memory, longest context, largest
batch, decode speed), ``scaling`` (laws, token budgets, rules, fitting), ``planning``
(``plan``, remedies, reports, exporters, batching, GPU-hour budgets, sweeps), ``diagnosis`` (logs,
``diagnose``, the next run), ``validation`` (pydantic markers), ``symbolic`` (sympy formulas),
``reference`` (the torch reference model and harness).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:  # what type checkers read; the same names as _EXPORTS (tested)
    from scaleplan.compute.flops import (
        StepFlops as StepFlops,
        flops_per_token as flops_per_token,
        step_flops as step_flops,
        training_flops as training_flops,
    )
    from scaleplan.compute.hardware import (
        GPUSpec as GPUSpec,
        gpu as gpu,
        gpus as gpus,
        register_gpu as register_gpu,
    )
    from scaleplan.compute.throughput import (
        Throughput as Throughput,
        TrainingTime as TrainingTime,
        Utilization as Utilization,
        from_nanogpt_mfu as from_nanogpt_mfu,
        mfu as mfu,
        throughput_at_mfu as throughput_at_mfu,
        time_to_train as time_to_train,
    )
    from scaleplan.diagnosis.examine import (
        Diagnosis as Diagnosis,
        diagnose as diagnose,
    )
    from scaleplan.diagnosis.logs import (
        TrainingLog as TrainingLog,
        read_log as read_log,
    )
    from scaleplan.errors import (
        ConfigFileError as ConfigFileError,
        ScaleplanError as ScaleplanError,
        UnknownNameError as UnknownNameError,
    )
    from scaleplan.findings import (
        Finding as Finding,
    )
    from scaleplan.inference.kv_cache import (
        kv_cache_bytes as kv_cache_bytes,
        kv_cache_bytes_per_token as kv_cache_bytes_per_token,
    )
    from scaleplan.inference.limits import (
        max_batch as max_batch,
        max_context as max_context,
    )
    from scaleplan.inference.memory import (
        InferenceMemory as InferenceMemory,
        inference_memory as inference_memory,
    )
    from scaleplan.inference.speed import (
        InferenceSpeed as InferenceSpeed,
        inference_speed as inference_speed,
    )
    from scaleplan.memory.limits import (
        max_micro_batch_size as max_micro_batch_size,
        max_seq_len as max_seq_len,
    )
    from scaleplan.memory.parallel import (
        Parallelism as Parallelism,
    )
    from scaleplan.memory.training import (
        MemoryBreakdown as MemoryBreakdown,
        training_memory as training_memory,
    )
    from scaleplan.model.architecture import (
        MLA as MLA,
        MoE as MoE,
    )
    from scaleplan.model.config import (
        GPTConfig as GPTConfig,
    )
    from scaleplan.model.loaders import (
        NanoGPTRun as NanoGPTRun,
        from_hf as from_hf,
        load_nanogpt_config as load_nanogpt_config,
    )
    from scaleplan.model.lora import (
        LoRA as LoRA,
    )
    from scaleplan.model.params import (
        ParamCount as ParamCount,
        count_params as count_params,
    )
    from scaleplan.model.training_config import (
        TrainingConfig as TrainingConfig,
    )
    from scaleplan.planning.batching import (
        grad_accum_steps as grad_accum_steps,
    )
    from scaleplan.planning.budget import (
        plan_for_budget as plan_for_budget,
    )
    from scaleplan.planning.planner import (
        Plan as Plan,
        plan as plan,
    )
    from scaleplan.planning.sweeps import (
        sweep as sweep,
    )
    from scaleplan.scaling.base import (
        ComputeOptimal as ComputeOptimal,
    )
    from scaleplan.scaling.fit import (
        fit_scaling_law as fit_scaling_law,
    )
    from scaleplan.scaling.laws import (
        ScalingLaw as ScalingLaw,
        scaling_law as scaling_law,
        scaling_laws as scaling_laws,
    )
    from scaleplan.scaling.rules import (
        critical_batch_size as critical_batch_size,
        data_constrained_loss as data_constrained_loss,
        inference_optimal as inference_optimal,
    )
    from scaleplan.scaling.tokens import (
        chinchilla_tokens as chinchilla_tokens,
        overtraining_ratio as overtraining_ratio,
        tokens_seen as tokens_seen,
        training_compute as training_compute,
    )
    from scaleplan.scaling.webtext import (
        ExpectedLoss as ExpectedLoss,
        expected_loss as expected_loss,
    )
    from scaleplan.validation.markers import (
        DivisibleStep as DivisibleStep,
        FitsOn as FitsOn,
        MaxParams as MaxParams,
        ParamsNear as ParamsNear,
        TokensPerParam as TokensPerParam,
        check as check,
    )

__version__ = "0.1.0"

# module (under scaleplan) -> the public names it provides: the one list of the public API
_EXPORTS: dict[str, tuple[str, ...]] = {
    "compute.flops": ("StepFlops", "flops_per_token", "step_flops", "training_flops"),
    "compute.hardware": ("GPUSpec", "gpu", "gpus", "register_gpu"),
    "compute.throughput": (
        "Throughput", "TrainingTime", "Utilization", "from_nanogpt_mfu", "mfu",
        "throughput_at_mfu", "time_to_train",
    ),
    "diagnosis.examine": ("Diagnosis", "diagnose"),
    "diagnosis.logs": ("TrainingLog", "read_log"),
    "errors": ("ConfigFileError", "ScaleplanError", "UnknownNameError"),
    "findings": ("Finding",),
    "inference.kv_cache": ("kv_cache_bytes", "kv_cache_bytes_per_token"),
    "inference.limits": ("max_batch", "max_context"),
    "inference.memory": ("InferenceMemory", "inference_memory"),
    "inference.speed": ("InferenceSpeed", "inference_speed"),
    "memory.limits": ("max_micro_batch_size", "max_seq_len"),
    "memory.parallel": ("Parallelism",),
    "memory.training": ("MemoryBreakdown", "training_memory"),
    "model.architecture": ("MLA", "MoE"),
    "model.config": ("GPTConfig",),
    "model.loaders": ("NanoGPTRun", "from_hf", "load_nanogpt_config"),
    "model.lora": ("LoRA",),
    "model.params": ("ParamCount", "count_params"),
    "model.training_config": ("TrainingConfig",),
    "planning.batching": ("grad_accum_steps",),
    "planning.budget": ("plan_for_budget",),
    "planning.planner": ("Plan", "plan"),
    "planning.sweeps": ("sweep",),
    "scaling.base": ("ComputeOptimal",),
    "scaling.fit": ("fit_scaling_law",),
    "scaling.laws": ("ScalingLaw", "scaling_law", "scaling_laws"),
    "scaling.rules": ("critical_batch_size", "data_constrained_loss", "inference_optimal"),
    "scaling.tokens": (
        "chinchilla_tokens", "overtraining_ratio", "tokens_seen", "training_compute",
    ),
    "scaling.webtext": ("ExpectedLoss", "expected_loss"),
    "validation.markers": (
        "DivisibleStep", "FitsOn", "MaxParams", "ParamsNear", "TokensPerParam", "check",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)  # built from the table; tests/test_public_api.py pins it


def __getattr__(name: str) -> _typing.Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'scaleplan' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"scaleplan.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
