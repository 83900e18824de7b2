"""Published memory formulas, in their authors' own accounting, for comparison with scaleplan's.

These reproduce the papers' numbers exactly. They differ from
`scaleplan.memory.training.training_memory` in what they count: Korthikanti et al. count 16-bit
activations of a GELU MLP (hidden 4h) with 1-byte dropout masks and eager attention, and leave out
the embedding, the final norm, the output layer, the loss's s b V logits, norm statistics and
autocast's fp32 residual stream; scaleplan derives every saved tensor per operation for the
precision, MLP, norm and attention actually used. DeepSpeed's estimator counts model states only
(no activations). """

from __future__ import annotations

import math
from typing import Literal

from scaleplan.checks import finite, one_of, whole
from scaleplan.memory.parallel import tensor_parallel_split, zero3_gathered_bytes, zero_shard

__all__ = ["deepspeed_zero3_gpu_bytes", "korthikanti_activation_bytes",
           "megatron_model_state_bytes"]

FP16_BYTES = 2
MEGATRON_BYTES_PER_PARAM = 18  # Megatron-LM docs: bf16 params 2 + fp32 grads 4 + master 4 + Adam 8


def korthikanti_activation_bytes(
    *, s: int, b: int, h: int, a: int, L: int, t: int = 1, sequence_parallel: bool = False,
    recompute: Literal["none", "selective", "full"] = "none",
) -> float:
    """Activation bytes of L layers per GPU, Korthikanti et al. 2022, Table 2.

    - none: s b h L (10 + 24/t + 5 a s / (h t)), or s b h L (34/t + 5 a s/(h t)) with sequence
      parallelism (t = 1 gives the single-GPU 34 + 5 a s / h of Eq. 1);
    - selective: the 5 a s / (h t) term dropped;
    - full: 2 s b h L (only the block inputs, divided by t with sequence parallelism).

    >>> round(korthikanti_activation_bytes(s=2048, b=4, h=6144, a=64, L=48, t=8) / 2**30, 4)
    59.25
    """
    s, b, h, a, L, t = (whole(name, value) for name, value in
                        (("s", s), ("b", b), ("h", h), ("a", a), ("L", L), ("t", t)))
    one_of("recompute", recompute, ("none", "selective", "full"))
    sbhL = s * b * h * L
    if recompute == "full":
        replicated, split = 2 * sbhL, 0
    else:  # 10 sbh replicated across the t ranks, 24 sbh + 5 a s^2 b split over them
        replicated, split = 10 * sbhL, 24 * sbhL + (5 * a * s * s * b * L
                                                    if recompute == "none" else 0)
    return finite("korthikanti_activation_bytes", tensor_parallel_split(
        replicated, split, t=t, sequence_parallel=sequence_parallel))


def megatron_model_state_bytes(*, h: int, L: int, t: int = 1) -> float:
    """Parameters + gradients + optimizer of the transformer layers per GPU: 18 bytes for each of
    the 12 L h^2 layer parameters, split over t tensor-parallel ranks (Korthikanti et al. 2022,
    Fig. 1; bytes per parameter from the Megatron-LM docs).

    >>> megatron_model_state_bytes(h=6144, L=48, t=8) / 2**30
    45.5625
    """
    h, L, t = whole("h", h), whole("L", L), whole("t", t)
    try:
        states = MEGATRON_BYTES_PER_PARAM * 12 * L * h * h / t  # int / int: correctly rounded
    except OverflowError:  # past float64's range
        states = math.inf
    return finite("megatron_model_state_bytes", states)


def deepspeed_zero3_gpu_bytes(*, total_params: int, largest_layer_params: int,
                              n_gpus: int = 1) -> int:
    """DeepSpeed's ZeRO-3 model-state estimate per GPU without offload
    (``estimate_zero3_model_states_mem_needs``): 4 x the largest layer (its gathered fp16 params
    and grads) + 18 bytes per parameter over the GPUs. Shares `scaleplan.memory.parallel`'s ZeRO
    pieces with `scaleplan.memory.training.training_memory`.

    >>> round(deepspeed_zero3_gpu_bytes(total_params=60_506_624,
    ...                                 largest_layer_params=16_449_536) / 2**30, 2)
    1.08
    """
    total_params = whole("total_params", total_params, minimum=0)
    largest_layer_params = whole("largest_layer_params", largest_layer_params, minimum=0)
    n_gpus = whole("n_gpus", n_gpus)
    gathered = zero3_gathered_bytes(largest_layer_params, param_bytes=FP16_BYTES,
                                    grad_bytes=FP16_BYTES)
    states = zero_shard(weights=0, gradients=0, optimizer=MEGATRON_BYTES_PER_PARAM * total_params,
                        stage=3, data=n_gpus)
    return gathered + sum(states)
