"""Loaders: Hugging Face config.json and nanoGPT config files (parsed, never executed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from scaleplan.config import GPTConfig, TrainingConfig

__all__ = ["NanoGPTRun", "from_hf", "load_nanogpt_config"]


class NanoGPTRun(BaseModel):
    """A nanoGPT run read from its config file: the model, the training settings, and the file's
    own claims."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: GPTConfig
    training: TrainingConfig
    claimed_params: int | None = None


def from_hf(config: dict[str, Any] | str | Any) -> GPTConfig:
    raise NotImplementedError  # being written


def load_nanogpt_config(path: Any) -> NanoGPTRun:
    raise NotImplementedError  # being written
