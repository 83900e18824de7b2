"""How a training job is split over GPUs, and what that does to each GPU's memory.

`Parallelism` describes data parallelism (DDP, ZeRO stages 0-3, FSDP), tensor parallelism (with
or without sequence parallelism) and pipeline parallelism (1F1B). The arithmetic that
`scaleplan.memory.training.training_memory` applies per GPU lives here, once, and the published
estimators in `scaleplan.memory.published` call the same pieces:

- `zero_shard`: ZeRO's partitioning (Rajbhandari et al. 2020, "ZeRO", Sec. 5): stage 1 shards
  the optimizer states over the data-parallel ranks, stage 2 also the gradients, stage 3 also the
  parameters;
- `zero3_gathered_bytes`: the parameters and gradients of the largest layer, gathered whole
  while that layer runs (DeepSpeed's ``estimate_zero3_model_states_mem_needs``);
- `tensor_parallel_split`: Korthikanti et al. 2022, Table 2: with tensor parallelism of degree t
  the activations inside the attention and MLP are divided by t and the rest (norm inputs, the
  inputs of the first linear layers, the residual dropout masks: 10 s b h bytes in their
  accounting) is replicated; sequence parallelism divides that rest by t too.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

__all__ = [
    "DDP_BUCKET_BYTES",
    "Parallelism",
    "tensor_parallel_split",
    "zero3_gathered_bytes",
    "zero_shard",
]

MiB = 2**20
# torch.nn.parallel.DistributedDataParallel: bucket_cap_mb=25 (PyTorch docs). ZeRO-2/3 reduce
# gradients through buckets of a similar size; one bucket is in flight at a time.
DDP_BUCKET_BYTES = 25 * MiB
ZERO_STAGES = (0, 1, 2, 3)
FSDP_STRATEGIES = ("full_shard", "shard_grad_op")


class Parallelism(BaseModel):
    """The parallel layout of a training job; memory is predicted per GPU.

    - ``data``: data-parallel degree (replicas, or shards under ZeRO/FSDP);
    - ``zero``: ZeRO stage 0-3 (0: plain DDP); ``fsdp``: PyTorch FSDP's ``"full_shard"``
      (shards like ZeRO-3) or ``"shard_grad_op"`` (like ZeRO-2); give one or the other;
    - ``ddp_bucket_view``: DDP's ``gradient_as_bucket_view``; False (PyTorch's default) keeps
      a second, bucketed copy of every gradient for the all-reduce (PyTorch DDP docs);
    - ``tensor``: tensor-parallel degree t; ``sequence_parallel``: Korthikanti et al. 2022's
      sequence parallelism (needs t > 1);
    - ``pipeline``: pipeline stages p, scheduled 1F1B: the first stage holds the activations of
      p micro-batches in flight (Narayanan et al. 2021, Sec. 2.2; Korthikanti et al. 2022,
      Sec. 4.2.3);
    - ``expert``: expert-parallel degree for a mixture of experts: each rank of an expert group
      holds ``n_experts / expert`` of every MoE layer's routed experts (their weights,
      gradients and optimizer states) and runs the tokens routed to them, exchanged all-to-all.
      The expert groups are carved out of the data-parallel ranks, so ``expert`` divides
      ``data`` and adds no GPUs, as DeepSpeed-MoE's ``ep_size`` groups the data-parallel world
      (Rajbhandari et al. 2022, "DeepSpeed-MoE"; the experts' states are sharded by ZeRO over
      the ``data / expert`` ranks that hold the same experts) and as Megatron-Core's
      ``expert_model_parallel_size``, which must divide the number of experts (NeMo's
      parallelism guide). With balanced routing a rank processes T x top_k routed rows per
      micro-batch, as without expert parallelism.

    >>> Parallelism(data=8, zero=3).gpus
    8
    >>> Parallelism(data=4, fsdp="shard_grad_op").zero_stage
    2
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: int = Field(default=1, ge=1, description="Data-parallel degree: replicas, or "
                      "shards under ZeRO/FSDP.")
    zero: int = Field(default=0, description="ZeRO stage: 0, 1, 2 or 3.")
    fsdp: Literal["full_shard", "shard_grad_op"] | None = Field(
        default=None, description="FSDP sharding strategy, instead of a ZeRO stage.")
    ddp_bucket_view: bool = Field(default=False,
                                  description="DDP gradient_as_bucket_view (no bucket copy).")
    bucket_bytes: int = Field(default=DDP_BUCKET_BYTES, ge=0,
                              description="Gradient-reduction bucket size (bytes).")
    tensor: int = Field(default=1, ge=1, description="Tensor-parallel degree t.")
    sequence_parallel: bool = Field(default=False, description="Sequence parallelism (t > 1).")
    pipeline: int = Field(default=1, ge=1, description="Pipeline stages p (1F1B).")
    expert: int = Field(default=1, ge=1, description="Expert-parallel degree (divides data).")

    @field_validator("zero")
    @classmethod
    def _known_stage(cls, v: int) -> int:
        if v not in ZERO_STAGES:
            raise ValueError(f"zero={v} is not a ZeRO stage; use 0 (DDP), 1 (optimizer states "
                             "sharded), 2 (+ gradients) or 3 (+ parameters)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Parallelism:
        if self.fsdp is not None and self.zero != 0:
            raise ValueError(f"fsdp={self.fsdp!r} and zero={self.zero} both set; give one "
                             "(full_shard is ZeRO-3's sharding, shard_grad_op ZeRO-2's)")
        if self.data % self.expert:
            raise ValueError(f"expert={self.expert} does not divide data={self.data}: expert "
                             "parallelism splits the experts over data-parallel ranks; use an "
                             f"expert degree that divides data ({_divisors(self.data)})")
        if self.sequence_parallel and self.tensor == 1:
            raise ValueError("sequence_parallel=True needs tensor > 1 (it splits the "
                             "activations that tensor parallelism replicates)")
        return self

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage this layout shards like (FSDP mapped to 3 or 2)."""
        if self.fsdp is not None:
            return 3 if self.fsdp == "full_shard" else 2
        return self.zero

    @property
    def gpus(self) -> int:
        """GPUs in the job: data x tensor x pipeline."""
        return self.data * self.tensor * self.pipeline

    def check(self, cfg: GPTConfig) -> None:
        """Reject a layout that cannot split ``cfg``.

        >>> Parallelism(tensor=5).check(GPTConfig.preset("gpt2"))
        Traceback (most recent call last):
        ...
        scaleplan.errors.ScaleplanError: tensor=5 does not divide n_head=12 ...
        """
        t = self.tensor
        if cfg.n_head % t or cfg.n_kv_head % t:
            raise ScaleplanError(
                f"tensor={t} does not divide n_head={cfg.n_head} and n_kv_head="
                f"{cfg.n_kv_head}: each rank needs whole heads; use a tensor degree that "
                f"divides both ({_divisors(math.gcd(cfg.n_head, cfg.n_kv_head))})")
        if self.expert > 1 and cfg.moe is None:
            raise ScaleplanError(
                f"expert={self.expert} needs a mixture of experts (cfg.moe is None): expert "
                "parallelism splits routed experts; use expert=1 for a dense model")
        if cfg.moe is not None and cfg.moe.n_experts % self.expert:
            raise ScaleplanError(
                f"expert={self.expert} does not divide moe.n_experts={cfg.moe.n_experts}: every "
                "rank holds the same number of whole experts; use a degree in "
                f"({_divisors(cfg.moe.n_experts)})")
        if self.pipeline > cfg.n_layer:
            raise ScaleplanError(
                f"pipeline={self.pipeline} exceeds n_layer={cfg.n_layer}: every stage needs at "
                f"least one block; use pipeline <= {cfg.n_layer}")

    def layers_per_stage(self, cfg: GPTConfig) -> int:
        """Blocks on the most loaded pipeline stage: ceil(n_layer / pipeline).

        >>> Parallelism(pipeline=4).layers_per_stage(GPTConfig.preset("gpt2"))
        3
        """
        return -(-cfg.n_layer // self.pipeline)


_DIVISOR_SEARCH = 1024  # trial divisions for the hint: bounded whatever n_head a user types


def _divisors(n: int) -> str:
    """The divisors of ``n`` for an error's hint, in bounded time (n_head can be 10**18, and a
    loop up to n hung): those up to `_DIVISOR_SEARCH` and their cofactors, at most 16 shown.

    >>> _divisors(12)
    '1, 2, 3, 4, 6, 12'
    >>> _divisors(10**18)
    '1, 2, 4, 5, 8, 10, 16, 20, ..., 500000000000000000, 1000000000000000000'
    """
    small = [k for k in range(1, min(n, _DIVISOR_SEARCH) + 1) if n % k == 0]
    found = sorted(set(small) | {n // k for k in small})
    if len(found) <= 16:
        return ", ".join(map(str, found))
    return ", ".join(map(str, found[:8])) + ", ..., " + ", ".join(map(str, found[-2:]))


def zero_shard(*, weights: int, gradients: int, optimizer: int, stage: int,
               data: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per GPU after ZeRO partitioning over ``data``
    ranks: stage >= 1 shards the optimizer states, >= 2 the gradients, 3 the parameters
    (Rajbhandari et al. 2020, Sec. 5.1, Fig. 1). Shards round up (the last rank pads).

    >>> zero_shard(weights=2, gradients=2, optimizer=12, stage=1, data=4)
    (2, 2, 3)
    """
    def shard(x: int, on: bool) -> int:
        return -(-x // data) if on else x

    return shard(weights, stage >= 3), shard(gradients, stage >= 2), shard(optimizer, stage >= 1)


def zero3_gathered_bytes(largest_layer_params: int, *, param_bytes: int, grad_bytes: int) -> int:
    """Bytes of the largest layer gathered whole under ZeRO-3/FSDP full_shard: its parameters
    and its gradient before the reduce-scatter. DeepSpeed's estimator counts 4 bytes per
    parameter of the largest layer (fp16 parameters + fp16 gradients).

    >>> zero3_gathered_bytes(1000, param_bytes=2, grad_bytes=2)
    4000
    """
    return largest_layer_params * (param_bytes + grad_bytes)


def tensor_parallel_split(replicated: Any, split: Any, *, t: int,
                          sequence_parallel: bool) -> Any:
    """Activation bytes per tensor-parallel rank (Korthikanti et al. 2022, Table 2): ``split``
    (inside attention and the MLP) divided by t; ``replicated`` (norm inputs, the first linear
    layers' inputs, residual dropout masks) divided by t only with sequence parallelism.

    Each part is rounded up to whole bytes, for Python ints (exactly) and for float64 numpy
    arrays alike, so `scaleplan.memory.limits.memory_grid` and
    `scaleplan.memory.training.training_memory` agree to the byte.

    >>> tensor_parallel_split(10, 24, t=8, sequence_parallel=False)
    13
    """
    r = t if sequence_parallel else 1
    return -(-replicated // r) + -(-split // t)
