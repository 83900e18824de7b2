"""The options of a training step, checked once for every memory entry point.

`scaleplan.memory.training.training_memory` and `scaleplan.memory.limits.memory_grid` take the
same options (precision, optimizer and its implementation, attention kernel, checkpointing,
device, parallel layout, held logits, CUDA context, allocator slack). `step_options` checks and
normalises them, so that the two never disagree on what they accept, and `overhead_bytes` adds
the context and the slack the same way for both (to the byte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from scaleplan.checks import one_of, real, whole
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.activations import AttentionKind, CheckpointingKind, DeviceKind
from scaleplan.memory.implementations import (
    check_implementation,
    check_titan,
    check_titan_qwen3,
    check_titan_tp,
)
from scaleplan.memory.lora_states import check_lora
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl, normalize_optimizer_impl
from scaleplan.memory.states import OptimizerName, normalize_optimizer
from scaleplan.memory.step_switches import NO_SWITCHES, StepSwitches, check_switches
from scaleplan.memory.titan_chunked_loss import check_titan_chunked_loss
from scaleplan.model.config import GPTConfig, Precision, normalize_precision
from scaleplan.model.lora import LoRA
from scaleplan.model.shapes import per_config

__all__ = ["MAX_BYTES", "StepOptions", "overhead_bytes", "refuse_unmodelled",
           "step_options"]

# The largest byte count an argument may give: 2^53 bytes (8 PiB), past any GPU's memory, and
# the last whole number a float64 holds exactly (`memory_grid` computes in float64). A larger
# count (cuda_context_bytes=10**400) is a typo, not a plan, and would overflow a float.
MAX_BYTES = 2**53

_ONE_GPU = Parallelism()


@dataclass(frozen=True)
class StepOptions:
    """The checked options of a training step (see `step_options`)."""

    precision: Precision
    optimizer: OptimizerName
    attention: AttentionKind
    checkpointing: CheckpointingKind
    device: DeviceKind
    parallelism: Parallelism
    optimizer_impl: OptimizerImpl | None
    hold_logits: bool
    cuda_context_bytes: int
    allocator_slack_fraction: float
    compile: bool = False
    implementation: str = "nanogpt"
    loss: str = "standard"
    optimizer_in_backward: bool = False
    activation_offload: bool = False
    gradient_accumulation: bool = True
    lora: LoRA | None = None
    base_weights: str | None = None

    @property
    def switches(self) -> StepSwitches:
        """The memory-saving switches (`scaleplan.memory.step_switches`)."""
        return StepSwitches(self.loss, self.optimizer_in_backward, self.activation_offload,
                            self.gradient_accumulation)


def step_options(cfg: GPTConfig, *, precision: Any, optimizer: Any, attention: Any,
                 checkpointing: Any, device: Any, parallelism: Any, optimizer_impl: Any,
                 hold_logits: Any, cuda_context_bytes: Any,
                 allocator_slack_fraction: Any, compile: Any = False,
                 implementation: Any = "nanogpt", loss: Any = "standard",
                 optimizer_in_backward: Any = False, activation_offload: Any = False,
                 gradient_accumulation: Any = True, lora: Any = None,
                 base_weights: Any = None) -> StepOptions:
    """Every option checked (a `ScaleplanError` or `UnknownNameError` naming the argument) and
    normalised (aliases resolved, numbers as exact Python types); the layout checked against
    ``cfg``."""
    return _step_options(
        cfg, precision=precision, optimizer=optimizer, attention=attention,
        checkpointing=checkpointing, device=device, parallelism=parallelism,
        optimizer_impl=optimizer_impl, hold_logits=hold_logits,
        cuda_context_bytes=cuda_context_bytes, allocator_slack_fraction=allocator_slack_fraction,
        compile=compile, implementation=implementation, loss=loss,
        optimizer_in_backward=optimizer_in_backward, activation_offload=activation_offload,
        gradient_accumulation=gradient_accumulation, lora=lora, base_weights=base_weights)


def _step_options_body(cfg: GPTConfig, *, precision: Any, optimizer: Any, attention: Any,
                       checkpointing: Any, device: Any, parallelism: Any, optimizer_impl: Any,
                       hold_logits: Any, cuda_context_bytes: Any,
                       allocator_slack_fraction: Any, compile: Any,
                       implementation: Any, loss: Any, optimizer_in_backward: Any,
                       activation_offload: Any, gradient_accumulation: Any, lora: Any,
                       base_weights: Any) -> StepOptions:
    p, opt = normalize_precision(precision), normalize_optimizer(optimizer)
    one_of("attention", attention, ("flash", "eager"))
    one_of("checkpointing", checkpointing, ("none", "selective", "full"))
    one_of("device", device, ("cuda", "cpu", "cpu-cuda-semantics"))
    impl = normalize_optimizer_impl(optimizer_impl)
    for name, flag in (("hold_logits", hold_logits), ("compile", compile)):
        if not isinstance(flag, bool):
            raise ScaleplanError(f"{name}={shown(flag)} must be True or False")
    context = whole("cuda_context_bytes", cuda_context_bytes, minimum=0, maximum=MAX_BYTES,
                    example="cuda_context_bytes=2**29")
    slack = real("allocator_slack_fraction", allocator_slack_fraction, inclusive=True,
                 example="a fraction such as 0.05")
    if slack >= 1:
        raise ScaleplanError(f"allocator_slack_fraction={shown(allocator_slack_fraction)} must "
                             "be below 1, e.g. 0.05")
    par = parallelism if parallelism is not None else _ONE_GPU
    if not isinstance(par, Parallelism):
        raise ScaleplanError(f"parallelism={shown(parallelism)} must be a "
                             "scaleplan.memory.parallel.Parallelism (or None for one GPU)")
    par.check(cfg)
    refuse_unmodelled(cfg)
    if implementation == "torchtitan":
        check_titan(cfg, precision=p, attention=attention, parallelism=par, compile=compile)
        check_titan_qwen3(cfg, checkpointing=checkpointing, compile=compile)
        check_titan_chunked_loss(loss=loss, compile=compile)
        if par.tensor > 1:
            check_titan_tp(parallelism=par, checkpointing=checkpointing, compile=compile)
    check_lora(cfg, lora, base_weights, precision=p, implementation=implementation,
               parallelism=par)  # first: its refusals say how to run a LoRA step instead
    if lora is not None and implementation == "litgpt":
        from scaleplan.memory.litgpt_lora_terms import check_litgpt_lora

        check_litgpt_lora(cfg, lora, base_weights, precision=p, checkpointing=checkpointing,
                          optimizer=opt)
    _check_lora_compile(lora, compile=compile, implementation=implementation, loss=loss)
    check_implementation(cfg, implementation, compile=compile, attention=attention,
                         checkpointing=checkpointing, parallelism=par, precision=p)
    sw = check_switches(loss=loss, optimizer_in_backward=optimizer_in_backward,
                        activation_offload=activation_offload,
                        gradient_accumulation=gradient_accumulation,
                        implementation=implementation, compile=compile,
                        checkpointing=checkpointing, parallelism=par)
    if lora is not None:
        _check_lora_step(sw, implementation=implementation, checkpointing=checkpointing,
                         optimizer=opt)
    return StepOptions(precision=p, optimizer=opt, attention=attention,
                       checkpointing=checkpointing, device=device, parallelism=par,
                       optimizer_impl=impl, hold_logits=hold_logits, cuda_context_bytes=context,
                       allocator_slack_fraction=slack, compile=compile,
                       implementation=implementation, loss=sw.loss,
                       optimizer_in_backward=sw.optimizer_in_backward,
                       activation_offload=sw.activation_offload,
                       gradient_accumulation=sw.gradient_accumulation, lora=lora,
                       base_weights=base_weights)


def _check_lora_step(sw: StepSwitches, *, implementation: Any, checkpointing: Any,
                     optimizer: str) -> None:
    """Refuse the switches with ``lora`` where they are not modelled: torchtune's recipe takes
    the chunked loss and activation offloading (checkpointed, as it requires:
    `scaleplan.memory.tune_lora_terms.tune_lora_offload`), nothing else takes any; and an
    optimizer other than torchtune's AdamW (`tune_lora_model_states` counts its two bf16
    states)."""
    if implementation == "torchtune" and optimizer != "adamw":
        raise ScaleplanError(f"lora with implementation='torchtune' and optimizer={optimizer!r} "
                             "is not modelled yet: its LoRA recipes train the adapters with "
                             "AdamW (two bf16 states); use optimizer='adamw'")
    tune_lora = implementation == "torchtune" and sw in (
        StepSwitches(loss="chunked"), StepSwitches(activation_offload=True),
        StepSwitches(loss="chunked", activation_offload=True))
    if sw.activation_offload and tune_lora and checkpointing != "full":
        raise ScaleplanError(f"lora with activation_offload=True and checkpointing="
                             f"{checkpointing!r}: torchtune's LoRA recipe offloads only with "
                             "enable_activation_checkpointing; use checkpointing='full'")
    if sw != NO_SWITCHES and not tune_lora:
        raise ScaleplanError("lora with the memory-saving switches (loss='chunked', "
                             "optimizer_in_backward, activation_offload, "
                             "gradient_accumulation=False) is not modelled yet; drop the "
                             "switches or lora")


def _check_lora_compile(lora: Any, *, compile: bool, implementation: Any, loss: Any) -> None:
    """Refuse ``compile=True`` with ``lora`` where it is not modelled (peft's step; torchtune's
    outside what `scaleplan.memory.tune_lora_states.check_tune_lora_compile` covers)."""
    if lora is None or not compile:
        return
    if implementation == "torchtune":
        from scaleplan.memory.tune_lora_states import check_tune_lora_compile

        check_tune_lora_compile(lora, loss=loss)
        return
    raise ScaleplanError("lora with compile=True is not modelled yet (the LoRA terms were "
                         "measured without torch.compile); use compile=False")


_step_options = per_config(_step_options_body)


def refuse_unmodelled(cfg: GPTConfig) -> None:
    """Raise a `ScaleplanError` naming the field and its value when ``cfg`` uses an option
    whose saved tensors the memory model does not derive yet: never a silent number.

    >>> refuse_unmodelled(GPTConfig(n_layer=1, n_head=2, n_embd=8, position="alibi",
    ...                             sliding_window=4))
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: position='alibi' with sliding_window=4: ...
    """
    if cfg.position == "alibi" and cfg.sliding_window is not None:
        raise ScaleplanError(
            f"position='alibi' with sliding_window={cfg.sliding_window}: no released model "
            "combines them and the memory model does not derive their mask; drop one of them")


_FLOAT_EXACT = 2**53


def overhead_bytes(options: StepOptions, tensor_peak: Any, stream_cache: Any = 0) -> Any:
    """CUDA context + the side streams' cache + ceil(slack x (tensor peak + that cache)) (0 on
    CPU), for an int peak or a float64 array of peaks. The slack is computed in float64 in
    both cases, and exactly past the integers a float holds (where float64 would overflow or
    round). ``stream_cache``: `scaleplan.memory.titan_streams.step_stream_cache`."""
    if options.device == "cpu":
        return 0 * tensor_peak
    slack = options.allocator_slack_fraction
    reserved = tensor_peak + stream_cache
    if not isinstance(reserved, int):  # a float64 array (memory_grid)
        import numpy as np

        return options.cuda_context_bytes + stream_cache + np.ceil(slack * reserved)
    if reserved < _FLOAT_EXACT:
        return options.cuda_context_bytes + stream_cache + math.ceil(slack * reserved)
    return options.cuda_context_bytes + stream_cache + math.ceil(Fraction(slack) * reserved)
