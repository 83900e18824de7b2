"""The tensors one GPU of a pipeline stage holds during a training step: `stage_parts`.

`scaleplan.memory.training.training_memory` takes the worst moment of each stage from it, and
`scaleplan.memory.limits.memory_grid` and `scaleplan.symbolic.formulas` run the same arithmetic on
arrays and on sympy symbols. Which saved-tensor terms a stage has depends on whose code runs the
step (`scaleplan.memory.stage_terms`, `scaleplan.memory.compiled_terms`,
`scaleplan.memory.hf_terms`, `scaleplan.memory.hf_compiled_terms`, `scaleplan.memory.tune_terms`,
`scaleplan.memory.litgpt_terms`).
"""

from __future__ import annotations

from dataclasses import replace
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
    compiled_end_moment,
    compiled_saved_terms,
)
from scaleplan.memory.hf_compiled_terms import hf_compiled_saved_terms
from scaleplan.memory.hf_terms import hf_family, hf_saved_terms
from scaleplan.memory.litgpt_fsdp_terms import litgpt_fsdp1_covers, litgpt_fsdp1_step
from scaleplan.memory.litgpt_lora_states import litgpt_lora_stage_parts
from scaleplan.memory.litgpt_terms import (
    LITGPT_LOGITS_BYTES,
    litgpt_loss_transients,
    litgpt_saved_terms,
)
from scaleplan.memory.lora_terms import lora_recompute_moment, lora_stage_parts
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl, model_states, optimizer_temporaries, per_rank
from scaleplan.memory.stage_terms import (
    eager_saved_terms,
    recompute_gradients,
    recompute_moment,
    waiting_head_gradient,
)
from scaleplan.memory.states import OptimizerName
from scaleplan.memory.step_switches import (
    NO_SWITCHES,
    StepSwitches,
    gradients_at,
    largest_gradient_bytes,
    switch_stage,
)
from scaleplan.memory.titan_stage import titan_stage_alive, titan_stage_parts
from scaleplan.memory.tune_lora_terms import tune_lora_stage_parts
from scaleplan.memory.tune_switches import (
    tune_in_backward_held_bytes,
    tune_in_backward_moments,
    tune_offload_stage,
    with_chunked_loss,
)
from scaleplan.memory.tune_terms import TUNE_LOGITS_BYTES, tune_saved_terms
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.lora import LoRA

__all__ = ["Stage", "stage_parts", "stage_parts_alive"]

Stage = Literal["only", "first", "last"]
"""Which GPUs of a pipeline: every layer on one stage, or the first or last of several."""


def stage_parts(cfg: GPTConfig, b: Any, s: Any, p: Precision, opt: OptimizerName,
                attention: AttentionKind, checkpointing: CheckpointingKind, device: DeviceKind,
                par: Parallelism, impl: OptimizerImpl | None, hold_logits: bool, stage: Stage,
                **options: Any) -> tuple[Any, ...]:
    """(weights, gradients, optimizer, saved terms, saved copies, all copies, held logits,
    moments) of one stage: `stage_parts_alive` without the gradients alive by moment."""
    return stage_parts_alive(cfg, b, s, p, opt, attention, checkpointing, device, par, impl,
                             hold_logits, stage, **options)[:8]


def stage_parts_alive(cfg: GPTConfig, b: Any, s: Any, p: Precision, opt: OptimizerName,
                      attention: AttentionKind, checkpointing: CheckpointingKind,
                      device: DeviceKind, par: Parallelism, impl: OptimizerImpl | None,
                      hold_logits: bool, stage: Stage, *, compiled: bool = False,
                      implementation: str = "nanogpt", switches: StepSwitches = NO_SWITCHES,
                      lora: LoRA | None = None, base_weights: str | None = None
                      ) -> tuple[Any, ...]:
    """(weights, gradients, optimizer, saved terms, saved copies, all copies, held logits,
    moments, alive) of one stage; plain arithmetic on b and s, so ints and float64 arrays
    both work. ``alive``: the bytes alive at the moments where they are not the weights and
    what `gradients_at` gives, by part ("weights", "gradients") and moment (full
    checkpointing's rebuilds with fresh gradients,
    `scaleplan.memory.stage_terms.recompute_gradients`; litgpt's FSDP1 step,
    `scaleplan.memory.litgpt_fsdp_terms.litgpt_fsdp1_step`), which `training_memory`'s
    breakdown reports as its ``weights`` and ``gradients``, the rest of the moment as
    transient.
    ``compiled``: under torch.compile (`scaleplan.memory.compiled_terms`); ``implementation``
    "hf": Hugging Face's modeling code (`scaleplan.memory.hf_terms`), "torchtune": torchtune's
    models and recipe loss (`scaleplan.memory.tune_terms`), "torchtitan": its Llama 3 under
    FSDP2 (`scaleplan.memory.titan_terms`; with tensor parallelism
    `scaleplan.memory.titan_tp_terms`), "litgpt": litgpt's GPT and chunked loss
    (`scaleplan.memory.litgpt_terms`); each on one stage and, torchtitan apart, with no tensor
    parallelism, as `step_options` checks. ``switches``: the memory-saving switches
    (`scaleplan.memory.step_switches`; nanoGPT's, Hugging Face's and torchtune's layouts,
    torchtune's chunked loss from `scaleplan.memory.tune_switches`): the moments stay on
    top of weights, all gradients and optimizer states, less the gradients not alive at each
    moment. ``lora``: a frozen base with adapters (`scaleplan.memory.lora_terms`; transformers'
    code, one GPU; litgpt's LoRA step, `scaleplan.memory.litgpt_lora_states`; torchtune's
    recipe, `scaleplan.memory.tune_lora_terms`), ``base_weights`` its dtype."""
    if lora is not None:
        return (*_lora_parts(cfg, lora, base_weights, b, s, p, opt, attention, checkpointing,
                             device, impl, hold_logits, implementation, switches, compiled), {})
    t = par.tensor
    layers = cfg.n_layer if stage == "only" else par.layers_per_stage(cfg)
    in_flight = par.pipeline if stage in ("only", "first") else 1  # 1F1B
    embeds, heads = stage != "last", stage != "first"
    if implementation == "torchtitan":
        fresh = not switches.gradient_accumulation
        return (*titan_stage_parts(cfg, b, s, p, opt, checkpointing, device, par, impl,
                                   layers, compiled=compiled,
                                   chunked=switches.loss == "chunked", fresh=fresh),
                titan_stage_alive(cfg, b, s, precision=p, checkpointing=checkpointing,
                                  device=device, par=par, compiled=compiled, fresh=fresh))
    tune = implementation == "torchtune"  # fp32 logits (its unembed's .float())
    compile_loss = compiled  # torchtune's recipe compiles the chunked loss, not the standard
    saved, code, compiled = _saved_terms(cfg, b, s, p, attention, checkpointing, device, par,
                                         layers, in_flight, embeds, heads, compiled,
                                         implementation)
    if switches.loss == "chunked" and heads:
        saved = with_chunked_loss(saved, cfg, b, s, p, implementation=implementation,
                                  compiled=compile_loss)
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
    logit_bytes, loss_bytes = (TUNE_LOGITS_BYTES,) * 2 if tune else (e, loss_bytes)
    # litgpt: Fabric's wrapper returns the logits cast to fp32
    logit_bytes = {"litgpt": LITGPT_LOGITS_BYTES}.get(implementation, logit_bytes)
    held = TV * logit_bytes if hold_logits else 0
    end = compiled_end_moment(cfg, p, G, held, saved, implementation, (
        compiled, checkpointing, par == Parallelism(), replace(
            switches, gradient_accumulation=True) == NO_SWITCHES, switches.gradient_accumulation),
        shape=(b, s))
    moments, held = _loss_moments(cfg, b, s, p, S, copies, all_copies, temp, TV, held,
                                  logit_bytes, loss_bytes, compiled=compiled,
                                  litgpt=implementation == "litgpt", hold_logits=hold_logits)
    moments.update(end)
    fsdp1 = litgpt_fsdp1_covers(implementation, checkpointing, par)
    alive = _recompute(moments, (cfg, b, s, p, attention, device, par, saved, copies,
                                 all_copies, layers, code), checkpointing, G=G,
                       switches=switches, both_ends=embeds and heads, fsdp1=fsdp1)
    if switches != NO_SWITCHES:
        saved, moments = _switched(cfg, b, s, p, opt, impl, device, saved, moments,
                                   (copies, all_copies, TV, e, G), heads, switches, tune)
    if implementation == "litgpt" and par.fsdp is not None:  # Fabric's FSDP1
        moments, alive = _no_sync(cfg, b, s, p, par, moments, alive, (W, G), switches, fsdp1)
    return W, G, O, saved, copies, all_copies, held, moments, alive


def _switched(cfg: GPTConfig, b: Any, s: Any, p: Precision, opt: OptimizerName,
              impl: OptimizerImpl | None, device: DeviceKind, saved: dict[str, Any],
              moments: dict[str, Any], sizes: tuple[Any, ...], heads: bool,
              switches: StepSwitches, tune: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(saved terms on the GPU, moments) under the switches: `switch_stage`, and for
    torchtune its own offloading (`scaleplan.memory.tune_switches.tune_offload_stage`) and
    layer backward under optimizer_in_backward (``tune_in_backward_moments``)."""
    copies, all_copies, TV, e, G = sizes
    tune_offload = tune and switches.activation_offload
    sw = replace(switches, activation_offload=False) if tune_offload else switches
    saved, moments = switch_stage(cfg, b, s, p, saved=saved, moments=moments, copies=copies,
                                  all_copies=all_copies, TV=TV, e=e, G=G, heads=heads, sw=sw)
    largest = largest_gradient_bytes(cfg, p) if switches.optimizer_in_backward else 0
    if tune_offload:
        saved, moments = tune_offload_stage(
            cfg, b, s, p, saved=saved, moments=moments,
            gradients=gradients_at("offload_backward", G, largest, switches) - G)
    if tune and switches.optimizer_in_backward:
        moments = tune_in_backward_moments(
            cfg, b, s, p, saved=saved, moments=moments, G=G,
            held=tune_in_backward_held_bytes(cfg, b, s, p, optimizer=opt, impl=impl,
                                             device=device),
            largest=largest)
    return saved, moments


def _no_sync(cfg: GPTConfig, b: Any, s: Any, p: Precision, par: Parallelism,
             moments: dict[str, Any], alive: dict[str, Any], states: tuple[Any, Any],
             switches: StepSwitches, fsdp1: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(moments, alive) of litgpt's step under FSDP1 where measured (`litgpt_fsdp1_step`):
    accumulating (``no_sync``), or not with full checkpointing (``fsdp1``)."""
    if not (switches.gradient_accumulation or fsdp1):
        return moments, alive
    W, G = states
    return litgpt_fsdp1_step(cfg, b, s, moments, precision=p, par=par, W=W, G=G,
                             fresh=not switches.gradient_accumulation,
                             counted={k: gradients_at(k, G, 0, switches) for k in moments})


def _recompute(moments: dict[str, Any], rebuild: tuple[Any, ...], checkpointing: str, *,
               G: Any, switches: StepSwitches, both_ends: bool,
               fsdp1: bool) -> dict[str, dict[str, Any]]:
    """Full checkpointing's recompute moment put in ``moments`` (`recompute_moment`, given
    its first twelve arguments, ``rebuild``; under litgpt's FSDP1, ``fsdp1``, the
    accumulated moment, which it adjusts) and the gradients alive at it."""
    if checkpointing != "full":
        return {}
    cfg, p, par, code = rebuild[0], rebuild[3], rebuild[6], rebuild[11]
    recompute = dict(head_gradient=waiting_head_gradient(cfg, p, par.tensor, code, both_ends),
                     fresh_gradients=_fresh_gradients(switches) and not fsdp1,
                     gradients=_recompute_gradients(cfg, p, G, switches, par))
    moments["recompute"] = recompute_moment(*rebuild, **recompute)
    return {"gradients": recompute_gradients(*rebuild, **recompute)}


def _fresh_gradients(switches: StepSwitches) -> bool:
    """Whether the step's gradients start as None (no accumulation, or each freed by its
    optimizer step in backward)."""
    return not switches.gradient_accumulation or switches.optimizer_in_backward


def _recompute_gradients(cfg: GPTConfig, p: Precision, G: Any, switches: StepSwitches,
                         par: Parallelism) -> tuple[Any, Any, bool]:
    """`scaleplan.memory.stage_terms.recompute_moment`'s ``gradients``: (every gradient's
    bytes, those the switch moments count at the recompute moment (`gradients_at`; None, the
    earlier recompute moment kept, under activation offloading, whose moments are derived
    from it, and on more than one GPU, where fresh gradients are not measured), whether the
    optimizer steps in backward)."""
    in_backward = switches.optimizer_in_backward
    largest = largest_gradient_bytes(cfg, p) if in_backward else 0
    bound = None if switches.activation_offload or par != Parallelism() else gradients_at(
        "recompute", G, largest, switches)
    return G, bound, in_backward


def _lora_parts(cfg: GPTConfig, lora: LoRA, base_weights: str | None, b: Any, s: Any,
                p: Precision, opt: OptimizerName, attention: AttentionKind,
                checkpointing: CheckpointingKind, device: DeviceKind,
                impl: OptimizerImpl | None, hold_logits: bool, implementation: str,
                switches: StepSwitches, compiled: bool = False) -> tuple[Any, ...]:
    """`stage_parts` under LoRA: litgpt's step (`scaleplan.memory.litgpt_lora_states`),
    torchtune's recipe (`scaleplan.memory.tune_lora_terms`), or peft's on transformers' code
    (`scaleplan.memory.lora_terms`)."""
    if implementation == "litgpt":
        return litgpt_lora_stage_parts(cfg, lora, base_weights, b, s, p, device, impl,
                                       hold_logits)
    if implementation == "torchtune":
        return tune_lora_stage_parts(cfg, lora, base_weights, b, s, opt, checkpointing, device,
                                     impl, hold_logits, switches, compiled)
    W, G, O, temp, saved, copies, all_copies = lora_stage_parts(
        cfg, lora, base_weights, b, s, p, opt, attention, checkpointing, device, impl)
    return _moments(cfg, b, s, p, checkpointing, hold_logits, saved, copies, all_copies,
                    (W, G, O, temp), recompute=lambda: lora_recompute_moment(
                        cfg, lora, b, s, p, attention, device, saved, copies, all_copies))


def _loss_moments(cfg: GPTConfig, b: Any, s: Any, p: Precision, S: Any, copies: Any,
                  all_copies: Any, temp: Any, TV: Any, held: Any, logit_bytes: int,
                  loss_bytes: int, *, compiled: bool, litgpt: bool,
                  hold_logits: bool) -> tuple[dict[str, Any], Any]:
    """(the forward-end, backward-start and optimizer-step moments, the logits held on top of
    them) for the loss as the code computes it: compiled (the returned logits are the saved
    ones, held only once backward freed them), litgpt's chunked loss on Fabric's fp32 logits,
    or a log-softmax of the (upcast) logits."""
    if compiled:
        return {
            "forward_end": S + all_copies,
            "backward_start": S + copies + compiled_backward_start_bytes(cfg, b, s, precision=p),
            "optimizer_step": temp + held,
        }, 0
    if litgpt:
        fwd, bwd = litgpt_loss_transients(cfg, b, s, precision=p, hold_logits=hold_logits)
        return {"forward_end": S + all_copies + fwd, "backward_start": S + copies + bwd,
                "optimizer_step": temp}, held
    return {
        "forward_end": S + all_copies + TV * logit_bytes
        + (TV * FP32_BYTES if p in AUTOCAST else 0),
        "backward_start": S + copies + 2 * TV * loss_bytes,
        "optimizer_step": temp,
    }, held


def _saved_terms(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                 checkpointing: CheckpointingKind, device: DeviceKind, par: Parallelism,
                 layers: int, in_flight: int, embeds: bool, heads: bool, compiled: bool,
                 implementation: str) -> tuple[dict[str, Any], str, bool]:
    """(saved terms, the code whose recompute moment applies, whether the compiled loss and
    moments apply) of one stage: torchtune compiles its layers but not its standard loss."""
    if implementation == "torchtune":
        saved = tune_saved_terms(cfg, b, s, precision=p, checkpointing=checkpointing,
                                 device=device, layers=layers, compiled=compiled)
        return saved, "torchtune-compiled" if compiled else implementation, False
    if compiled and implementation == "hf":  # its loss compiled too: the compiled moments
        saved = hf_compiled_saved_terms(cfg, b, s, precision=p, layers=layers,
                                        checkpointing=checkpointing, device=device)
        # a checkpointed block is rebuilt by the compiled backward (GPT-2: dynamo traces the
        # checkpoint) or by transformers' eager layer (Llama: dynamo runs it eagerly)
        return saved, "compiled" if hf_family(cfg) == "gpt2" else "hf", True
    if compiled:  # nanoGPT's layout: the compiled block is rebuilt
        return compiled_saved_terms(cfg, b, s, precision=p, checkpointing=checkpointing,
                                    device=device, layers=layers), "compiled", True
    if implementation == "hf":
        return hf_saved_terms(cfg, b, s, precision=p, attention=attention,
                              checkpointing=checkpointing, device=device,
                              layers=layers), implementation, False
    if implementation == "litgpt":
        return litgpt_saved_terms(cfg, b, s, precision=p, checkpointing=checkpointing,
                                  device=device, layers=layers), implementation, False
    return eager_saved_terms(cfg, b, s, p, attention, checkpointing, device, par, layers,
                             in_flight, embeds, heads), implementation, False


def _moments(cfg: GPTConfig, b: Any, s: Any, p: Precision, checkpointing: CheckpointingKind,
             hold_logits: bool, saved: dict[str, Any], copies: Any, all_copies: Any,
             states: tuple[Any, Any, Any, Any], recompute: Any) -> tuple[Any, ...]:
    """`stage_parts`' result for one GPU holding the whole model (no tensor parallelism), the
    loss in transformers' way (fp32 log-softmax of upcast logits), given its states and saved
    tensors; ``recompute`` gives full checkpointing's recompute moment."""
    W, G, O, temp = states
    S = sum(saved.values())
    TV = b * s * cfg.vocab_size
    e, loss_bytes = activation_bytes(p), residual_bytes(p)
    moments: dict[str, Any] = {
        "forward_end": S + all_copies + TV * e + (TV * FP32_BYTES if p in AUTOCAST else 0),
        "backward_start": S + copies + 2 * TV * loss_bytes,
        "optimizer_step": temp,
    }
    if checkpointing == "full":
        moments["recompute"] = recompute()
    return W, G, O, saved, copies, all_copies, TV * e if hold_logits else 0, moments
