"""torchtitan's Llama 3 step under FSDP2 as one stage's parts: `titan_stage_parts`.

`scaleplan.memory.stage.stage_parts` hands torchtitan's steps here: the saved tensors, the
sharded states and the step's moments (the loss's, the head's backward, the blocks' backward
measured whole, the optimizer step's), with tensor parallelism in
`scaleplan.memory.titan_tp_terms`.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import FP32_BYTES, CheckpointingKind, DeviceKind
from scaleplan.memory.implementations import check_titan_one_gpu_loss
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl, optimizer_temporaries
from scaleplan.memory.states import OptimizerName
from scaleplan.memory.titan_chunked_loss import titan_chunked_moments, titan_chunked_saved_terms
from scaleplan.memory.titan_compiled_terms import titan_step_terms
from scaleplan.memory.titan_fsdp_moments import (
    titan_block_backward_moment,
    titan_fresh_gradients,
)
from scaleplan.memory.titan_terms import (
    TITAN_PRECISIONS,
    titan_fsdp_in_flight,
    titan_head_backward_bytes,
    titan_model_states,
)
from scaleplan.memory.titan_tp_moments import (
    titan_tp_block_backward_moment,
    titan_tp_fresh_gradients,
)
from scaleplan.memory.titan_tp_terms import (
    titan_tp_fsdp_in_flight,
    titan_tp_loss_transients,
    titan_tp_model_states,
    titan_tp_saved_terms,
)
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["titan_stage_alive", "titan_stage_parts", "titan_tp_parts"]


def titan_stage_parts(cfg: GPTConfig, b: Any, s: Any, p: Precision, opt: OptimizerName,
                      checkpointing: CheckpointingKind, device: DeviceKind, par: Parallelism,
                      impl: OptimizerImpl | None, layers: int, *, compiled: bool,
                      chunked: bool, fresh: bool) -> tuple[Any, ...]:
    """`scaleplan.memory.stage.stage_parts` for torchtitan under FSDP2
    (`scaleplan.memory.titan_terms`) with SDPA attention, its blocks compiled or eager
    (`scaleplan.memory.titan_compiled_terms`): no autocast weight copies, the logits dropped
    before backward (its trainer's ``del pred``), its AdamW ``fused`` unless ``impl`` says
    otherwise, FSDP2's gathered parameters and unsharded gradients at each moment.

    ``recompute`` (full or per-op selective checkpointing, or ``block_backward`` without): the
    backward's worst moment as measured whole, eager or compiled
    (`scaleplan.memory.titan_fsdp_moments.titan_block_backward_moment`; compile=True is
    refused on one GPU before this); ``head_backward``: lm_head's weight gradient made
    (`scaleplan.memory.titan_terms.titan_head_backward_bytes`). With tensor parallelism:
    `titan_tp_parts`. ``chunked``: its ``ChunkedLossWrapper``
    (`scaleplan.memory.titan_chunked_loss`). ``fresh``: no gradient accumulation
    (`scaleplan.memory.titan_fsdp_moments.titan_fresh_covers`): no sharded gradient until the
    head unit's reduce-scatter, each unit's shard made at its end (the moments count them,
    less ``G``); compiled blocks on two or more ranks too. One GPU (``par.data == 1``) is
    FSDP2 on a one-rank mesh, its chunked loss refused by name (with tensor parallelism
    too)."""
    check_titan_one_gpu_loss(chunked=chunked, parallelism=par)
    if par.tensor > 1:
        return titan_tp_parts(cfg, b, s, p, opt, checkpointing, device, par, impl,
                              chunked=chunked, fresh=fresh)
    saved = titan_step_terms(cfg, b, s, precision=p, checkpointing=checkpointing,
                             device=device, layers=layers, compiled=compiled)
    S = sum(saved.values())
    W, G, O = titan_model_states(cfg, opt, data=par.data)
    gathered = titan_fsdp_in_flight(cfg, p, data=par.data, one_rank_mesh=True)
    temp = -(-optimizer_temporaries(cfg, opt, "32-true", device, impl or "fused") // par.data)
    TV = b * s * cfg.vocab_size
    e = 2 if p == "bf16-mixed" else FP32_BYTES
    moments: dict[str, Any] = {
        # the bf16 logits, their fp32 upcast and the fp32 log-softmax, all live at once
        "forward_end": S + TV * e + TV * FP32_BYTES + gathered["forward_end"],
        # the log-softmax's gradient and its input's
        "backward_start": S + 2 * TV * FP32_BYTES + gathered["backward_start"],
        "optimizer_step": temp,
        "head_backward": titan_head_backward_bytes(cfg, b, s, saved, e=e, data=par.data)}
    # measured whole (titan_fsdp_moments; compiled blocks, on two or more ranks only:
    # titan_compiled_step); "recompute" names it as before
    batch = sum(v for k, v in saved.items() if k in ("embedding_ids", "positions"))
    moments["recompute" if checkpointing != "none" else "block_backward"] = (
        batch + titan_block_backward_moment(cfg, b, s, precision=p,
                                            checkpointing=checkpointing, device=device,
                                            layers=layers, data=par.data, fresh=fresh,
                                            compiled=compiled, head_reduced=chunked))
    if chunked:  # the same recompute: the loss side is freed before the blocks' backward
        saved = titan_chunked_saved_terms(saved, cfg, b, s, e=e)
        moments.update(titan_chunked_moments(cfg, b, s, saved, e=e, tensor=1, data=par.data,
                                             gathered_head=gathered["forward_end"],
                                             fresh=fresh))
    if fresh:  # every moment but the optimizer step's on top of the shards made by then
        moments = {k: v if k == "optimizer_step" else v - G for k, v in moments.items()}
    return W, G, O, saved, 0, 0, 0, moments


def titan_tp_parts(cfg: GPTConfig, b: Any, s: Any, p: str, opt: str, checkpointing: str,
                   device: str, par: Parallelism, impl: OptimizerImpl | None, *,
                   chunked: bool = False, fresh: bool = False) -> tuple[Any, ...]:
    """`scaleplan.memory.stage.stage_parts` for torchtitan under FSDP2 x TP, with or without
    sequence parallelism (one pipeline stage): (weights, gradients, optimizer, saved terms, 0, 0, 0,
    moments). No autocast weight copies; the logits dropped before backward (its trainer's
    ``del pred``); ``forward_end`` and ``backward_start`` add the loss's transients
    (`scaleplan.memory.titan_tp_terms.titan_tp_loss_transients`) and FSDP2's gathered units;
    ``recompute`` (full checkpointing, or ``block_backward`` without): the backward's worst
    moment as measured whole (`scaleplan.memory.titan_tp_moments`). ``fresh``: no gradient
    accumulation, each unit's shard made at its end (the moments count them, less ``G``).
    ``chunked``: torchtitan's
    ``ChunkedLossWrapper`` (`scaleplan.memory.titan_chunked_loss`) in place of the loss. The
    optimizer's temporaries (none for torchtitan's default fused AdamW) are split over all the GPUs.
    Attention is SDPA, as for ``attention="flash"`` without TP
    (`scaleplan.memory.titan_sdpa_terms`): the saved terms were measured with FlexAttention,
    whose one extra statistic and block mask the SDPA kernel does not keep, and whole steps
    with SDPA."""
    t, sp = par.tensor, par.sequence_parallel
    saved = titan_tp_saved_terms(cfg, b, s, precision=p, checkpointing=checkpointing,
                                 device=device, layers=cfg.n_layer, tensor=t,
                                 sequence_parallel=sp, kernel="sdpa")
    S = sum(saved.values())
    W, G, O = titan_tp_model_states(cfg, opt, data=par.data, tensor=t)
    gathered = titan_tp_fsdp_in_flight(cfg, p, data=par.data, tensor=t)
    temp = -(-optimizer_temporaries(cfg, opt, "32-true", device, impl or "fused")
             // (par.data * t))
    fwd, bwd = titan_tp_loss_transients(cfg, b, s, precision=p, tensor=t)
    moments: dict[str, Any] = {"forward_end": S + fwd + gathered["forward_end"],
                               "backward_start": S + bwd + gathered["backward_start"],
                               "optimizer_step": temp}
    # measured whole (scaleplan.memory.titan_tp_moments), beside the embedding's saved ids
    # and mask and the positions the checkpointed blocks keep
    batch = sum(v for k, v in saved.items() if k in ("embedding", "positions"))
    moments["recompute" if checkpointing != "none" else "block_backward"] = (
        batch + titan_tp_block_backward_moment(
            cfg, b, s, precision=p, checkpointing=checkpointing, device=device,
            layers=cfg.n_layer, data=par.data, tensor=t, sequence_parallel=sp, fresh=fresh,
            head_reduced=chunked))
    if chunked:  # ChunkedLossWrapper, vocabulary-parallel per chunk (titan_chunked_loss)
        e = TITAN_PRECISIONS[p]
        saved = titan_chunked_saved_terms(saved, cfg, b, s, e=e)
        moments.update(titan_chunked_moments(cfg, b, s, saved, e=e, tensor=t, data=par.data,
                                             gathered_head=gathered["forward_end"],
                                             fresh=fresh))
    if fresh:  # every moment but the optimizer step's on top of the shards made by then
        moments = {k: v if k == "optimizer_step" else v - G for k, v in moments.items()}
    return W, G, O, saved, 0, 0, 0, moments


def titan_stage_alive(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                      device: str, par: Parallelism, compiled: bool,
                      fresh: bool) -> dict[str, dict[str, Any]]:
    """The gradients alive at the backward's worst moment without accumulation, by part and
    moment, as `scaleplan.memory.stage.stage_parts_alive` reports them: the shards made by
    then (`scaleplan.memory.titan_fsdp_moments.titan_fresh_gradients`; with tensor
    parallelism `scaleplan.memory.titan_tp_moments.titan_tp_fresh_gradients`); empty with
    accumulation (every gradient resident) and for arrays of shapes (totals only)."""
    if not fresh or not (isinstance(b, int) and isinstance(s, int)):
        return {}
    moment = "recompute" if checkpointing != "none" else "block_backward"
    kw: dict[str, Any] = dict(precision=precision, checkpointing=checkpointing, device=device,
                              layers=cfg.n_layer, data=par.data)
    made = titan_fresh_gradients(cfg, b, s, compiled=compiled, **kw) if par.tensor == 1 else \
        titan_tp_fresh_gradients(cfg, b, s, tensor=par.tensor,
                                 sequence_parallel=par.sequence_parallel, **kw)
    return {"gradients": {moment: made}}
