"""A `Plan` written out as other tools' configuration: a nanoGPT config file, a DeepSpeed JSON,
Hugging Face ``TrainingArguments`` keyword arguments, and a ``torchrun`` command line.

The DeepSpeed, Hugging Face and torchrun exporters write only settings the plan decided (batch
shape, precision, steps). The nanoGPT one (`scaleplan.planning.nanogpt_export`) can start from
the config file the plan was made from and keep its run (data, output folder, learning rate, ...),
with the learning-rate schedule fitted to the plan's ``max_iters``.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from scaleplan.errors import ScaleplanError, shown
from scaleplan.planning.nanogpt_export import to_nanogpt_config

if TYPE_CHECKING:
    from scaleplan.planning.planner import Plan

__all__ = ["expect_plan", "to_deepspeed", "to_hf_training_args", "to_nanogpt_config",
           "to_torchrun"]


def expect_plan(plan: object) -> Plan:
    """``plan`` when it is a `Plan`, else a `ScaleplanError` saying how to make one."""
    from scaleplan.planning.planner import Plan

    if not isinstance(plan, Plan):
        raise ScaleplanError(f"plan={shown(plan)} must be a Plan, as plan(cfg, gpu) returns")
    return plan


def to_deepspeed(plan: Plan) -> dict[str, Any]:
    """A DeepSpeed config dict (``json.dump`` it to ``ds_config.json``).

    ``train_batch_size`` = micro-batch x accumulation x world size, in sequences, as DeepSpeed
    checks. ZeRO stage 0 unless the plan shards (then its stage).

    >>> from scaleplan.planning.planner import plan
    >>> from scaleplan.model.config import GPTConfig
    >>> ds = to_deepspeed(plan(GPTConfig.preset("gpt2"), "RTX 4070", tokens_per_step=524288))
    >>> ds["train_batch_size"], ds["bf16"]
    (512, {'enabled': True})
    """
    plan = expect_plan(plan)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "train_batch_size": plan.micro_batch_size * plan.grad_accum_steps * plan.world_size,
        "zero_optimization": {"stage": plan.parallelism.zero_stage if plan.parallelism else 0},
        "gradient_clipping": 1.0,
    }
    if plan.precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
    elif plan.precision.startswith("16"):
        config["fp16"] = {"enabled": True, "loss_scale": 0}  # 0: dynamic loss scaling
    if plan.checkpointing != "none":
        config["activation_checkpointing"] = {"partition_activations": False,
                                              "contiguous_memory_optimization": False}
    return config


def to_hf_training_args(plan: Plan) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments``. A plan that shards with FSDP
    sets ``fsdp``; one with a ZeRO stage sets ``deepspeed="ds_config.json"``, the file to write
    `to_deepspeed`'s config to (the Trainer takes ZeRO through DeepSpeed).

    >>> from scaleplan.planning.planner import plan
    >>> from scaleplan.model.config import GPTConfig
    >>> args = to_hf_training_args(plan(GPTConfig.preset("gpt2"), "RTX 4070",
    ...                                 tokens_per_step=524288))
    >>> args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    (8, 64)
    """
    plan = expect_plan(plan)
    args: dict[str, Any] = {
        "per_device_train_batch_size": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "max_steps": plan.steps,
        "bf16": plan.precision in ("bf16-mixed", "bf16-fp32-master"),
        "fp16": plan.precision == "16-mixed",
        "gradient_checkpointing": plan.checkpointing != "none",
    }
    if plan.optimizer == "adamw-8bit":
        args["optim"] = "adamw_bnb_8bit"
    layout = plan.parallelism
    if layout is not None and layout.fsdp is not None:
        args["fsdp"] = layout.fsdp  # TrainingArguments(fsdp="full_shard" | "shard_grad_op")
    elif layout is not None and layout.zero > 0:
        # the Trainer takes ZeRO through DeepSpeed: write to_deepspeed(plan) to this file
        args["deepspeed"] = "ds_config.json"
    return args


def to_torchrun(plan: Plan, script: str = "train.py", *extra: str) -> str:
    """A ``torchrun`` command line for one node with ``world_size`` GPUs.

    >>> from scaleplan.planning.planner import plan
    >>> from scaleplan.model.config import GPTConfig
    >>> to_torchrun(plan(GPTConfig.preset("gpt2"), "H100 SXM", tokens_per_step=524288,
    ...                  world_size=8), "train.py", "config/train_gpt2.py")
    'torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py'
    """
    plan = expect_plan(plan)
    for name, value in [("script", script), *(("extra", e) for e in extra)]:
        if not isinstance(value, str):
            raise ScaleplanError(f"{name}={shown(value)} must be a str, e.g. 'train.py'")
    return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={plan.world_size}",
                       script, *extra])
