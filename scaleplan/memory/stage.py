"""The tensors one GPU of a pipeline stage holds during a training step: `stage_parts`.

`scaleplan.memory.training.training_memory` takes the worst moment of each stage from it, and
`scaleplan.memory.limits.memory_grid` and `scaleplan.symbolic.formulas` run the same arithmetic on
arrays and on sympy symbols. Which saved-tensor terms a stage has depends on whose code runs the
step (`scaleplan.memory.stage_terms`, `scaleplan.memory.compiled_terms`,
`scaleplan.memory.hf_terms`).
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.memory.activations import (
    AUTOCAST,
    FP32_BYTES,
    AttentionKind,
    CheckpointingKind,
    DeviceKind,
    activation_bytes,
    autocast_weight_copy_bytes,
    residual_bytes,
)
from scaleplan.memory.compiled_terms import (
    compiled_backward_start_bytes,
    compiled_saved_terms,
)
from scaleplan.memory.hf_terms import hf_saved_terms
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl, model_states, optimizer_temporaries, per_rank
from scaleplan.memory.stage_terms import eager_saved_terms, recompute_moment
from scaleplan.memory.states import OptimizerName
from scaleplan.memory.step_switches import (
    NO_SWITCHES,
    StepSwitches,
    chunked_loss_terms,
    switch_stage,
)
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["Stage", "stage_parts"]

Stage = Literal["only", "first", "last"]
"""Which GPUs of a pipeline: every layer on one stage, or the first or last of several."""


def stage_parts(cfg: GPTConfig, b: Any, s: Any, p: Precision, opt: OptimizerName,
                 attention: AttentionKind, checkpointing: CheckpointingKind,
                 device: DeviceKind, par: Parallelism, impl: OptimizerImpl | None,
                 hold_logits: bool, stage: Stage, *, compiled: bool = False,
                 implementation: str = "nanogpt",
                 switches: StepSwitches = NO_SWITCHES) -> tuple[Any, ...]:
    """(weights, gradients, optimizer, saved terms, saved copies, all copies, held logits,
    moments) of one stage; plain arithmetic on b and s, so ints and float64 arrays both work.
    ``compiled``: under torch.compile (`scaleplan.memory.compiled_terms`); ``implementation``
    "hf": Hugging Face's modeling code (`scaleplan.memory.hf_terms`); each on one stage with no
    tensor parallelism, as `step_options` checks. ``switches``: the memory-saving switches
    (`scaleplan.memory.step_switches`); the moments stay on top of weights, all gradients and
    optimizer states, less the gradients not alive at each moment."""
    t = par.tensor
    layers = cfg.n_layer if stage == "only" else par.layers_per_stage(cfg)
    in_flight = par.pipeline if stage in ("only", "first") else 1  # 1F1B
    embeds, heads = stage != "last", stage != "first"
    if compiled:
        saved = compiled_saved_terms(cfg, b, s, precision=p, checkpointing=checkpointing,
                                     device=device, layers=layers)
    elif implementation == "hf":
        saved = hf_saved_terms(cfg, b, s, precision=p, attention=attention,
                               checkpointing=checkpointing, device=device, layers=layers)
    else:
        saved = eager_saved_terms(cfg, b, s, p, attention, checkpointing, device, par, layers,
                             in_flight, embeds, heads)
    if switches.loss == "chunked" and heads:
        saved = {**saved, **chunked_loss_terms(cfg, b, s)}
    S = sum(saved.values())

    W, G, O, temp = model_states(cfg, p, opt, par, layers, embeds, heads,
                                  optimizer_temporaries(cfg, opt, p, device, impl))
    ep = par.expert
    all_copies = per_rank(autocast_weight_copy_bytes(cfg, p, layers=layers, head=heads,
                                                     expert=ep), t)
    copies = all_copies if checkpointing != "full" else per_rank(autocast_weight_copy_bytes(
        cfg, p, layers=0, head=heads, expert=ep), t)
    TV = per_rank(b * s * cfg.vocab_size, t) if heads else 0  # vocab-parallel logits
    e, loss_bytes = activation_bytes(p), residual_bytes(p)
    held = TV * e if hold_logits else 0
    if compiled:  # the returned logits are the saved ones: held only once backward freed them
        moments: dict[str, Any] = {
            "forward_end": S + all_copies,
            "backward_start": S + copies + compiled_backward_start_bytes(cfg, b, s, precision=p),
            "optimizer_step": temp + held,
        }
        held = 0
    else:
        moments = {
            "forward_end": S + all_copies + TV * e + (TV * FP32_BYTES if p in AUTOCAST else 0),
            "backward_start": S + copies + 2 * TV * loss_bytes,
            "optimizer_step": temp,
        }
    if checkpointing == "full":
        moments["recompute"] = recompute_moment(cfg, b, s, p, attention, device, par, saved,
                                                copies, all_copies, layers,
                                                "compiled" if compiled else implementation)
    if switches != NO_SWITCHES:
        saved, moments = switch_stage(cfg, b, s, p, saved=saved, moments=moments,
                                      copies=copies, all_copies=all_copies, TV=TV, e=e, G=G,
                                      heads=heads, sw=switches)
    return W, G, O, saved, copies, all_copies, held, moments
