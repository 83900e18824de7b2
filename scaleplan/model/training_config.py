"""How a model is trained (`TrainingConfig`): batch shape, length, precision and schedule."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from scaleplan.checks import plain_numbers
from scaleplan.model.config import Precision, normalize_precision

__all__ = ["TrainingConfig"]


class TrainingConfig(BaseModel):
    """How a model is trained: batch shape, length, precision and schedule.

    Defaults are nanoGPT's ``train.py`` (GPT-2 small on OpenWebText, 8 GPUs' worth of
    gradient accumulation on one). ``grad_accum_steps`` is per rank, as nanoGPT uses it after
    dividing its configured value by the world size.

    Examples:
        >>> t = TrainingConfig(micro_batch_size=16, seq_len=1024, grad_accum_steps=32)
        >>> t.tokens_per_step
        524288
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    micro_batch_size: PositiveInt = Field(12, description="Sequences per forward pass per GPU.")
    seq_len: PositiveInt = Field(1024, description="Tokens per sequence.")
    grad_accum_steps: PositiveInt = Field(
        40, description="Micro-batches accumulated per optimizer step on each GPU."
    )
    world_size: PositiveInt = Field(1, description="Data-parallel ranks (GPUs).")
    max_iters: PositiveInt = Field(600_000, description="Optimizer steps in the run.")
    precision: Precision = Field("bf16-mixed", description="Weight and compute dtypes (see "
                                 "`Precision`).")
    optimizer: str = Field("adamw", min_length=1, description="The optimizer's name (see "
                           "`scaleplan.memory.states.OPTIMIZERS`).")
    compile: bool = Field(True, description="torch.compile the model.")
    learning_rate: float = Field(6e-4, gt=0.0, allow_inf_nan=False,
                                 description="Peak learning rate, reached after warm-up.")
    min_lr: float = Field(6e-5, ge=0.0, allow_inf_nan=False,
                          description="Learning rate at the end of the cosine decay.")
    warmup_iters: int = Field(2000, ge=0, description="Steps of linear warm-up.")
    lr_decay_iters: PositiveInt = Field(600_000, description="Step at which the cosine decay "
                                        "reaches min_lr.")
    decay_lr: bool = Field(True, description="False keeps the learning rate constant.")
    weight_decay: float = Field(0.1, ge=0.0, allow_inf_nan=False,
                                description="AdamW's decoupled weight decay.")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, allow_inf_nan=False,
                         description="AdamW's first-moment decay.")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, allow_inf_nan=False,
                         description="AdamW's second-moment decay.")
    grad_clip: float = Field(1.0, ge=0.0, allow_inf_nan=False,
                             description="Gradient norm clip (0 turns clipping off).")
    eval_interval: PositiveInt = Field(2000, description="Steps between evaluations.")
    eval_iters: PositiveInt = Field(200, description="Batches per evaluation.")

    @model_validator(mode="before")
    @classmethod
    def _canonical_precision(cls, data: Any) -> Any:
        data = plain_numbers(data)
        if isinstance(data, dict) and isinstance(data.get("precision"), str):
            data = {**data, "precision": normalize_precision(data["precision"])}
        return data

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step: micro_batch_size x seq_len x grad_accum_steps x world_size."""
        return self.micro_batch_size * self.seq_len * self.grad_accum_steps * self.world_size

    @property
    def total_tokens(self) -> int:
        """Tokens seen over ``max_iters`` steps."""
        return self.tokens_per_step * self.max_iters

    def replace(self, **changes: Any) -> TrainingConfig:
        """A copy with ``changes`` applied and validated again.

        >>> TrainingConfig(micro_batch_size=16).replace(micro_batch_size=8).micro_batch_size
        8
        """
        return type(self).model_validate({**self.model_dump(), **changes})
