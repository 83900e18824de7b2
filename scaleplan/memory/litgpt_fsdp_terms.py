"""What Fabric's FSDP1 adds to litgpt's full fine-tune step, measured whole.

``litgpt finetune_full`` on several GPUs runs Lightning Fabric's ``FSDPStrategy``: torch's
``FullyShardedDataParallel`` (FSDP1) with one unit per ``Block``, ``FULL_SHARD`` and
``use_orig_params=True``; the root unit holds everything outside the blocks (the embedding, the
final norm, the untied ``lm_head``). tests/litgpt_fsdp_step.py measures whole micro-batches of
it on rank 0 of a fake process group, FSDP1's storage resizes counted
(tests/data/litgpt_fsdp_step.json), during gradient accumulation (``no_sync()``: every unit's
gradient unsharded and resident, `scaleplan.memory.litgpt_terms.litgpt_no_sync_gradient_bytes`).
Beside the shards and those gradients a GPU holds:

- the root unit gathered from the first forward to the end of backward (FSDP1 does not reshard
  the root after forward, and the embedding's backward comes last), in place of the generic
  FSDP term's largest layer (`scaleplan.memory.sharding`);
- while a block runs its backward (full checkpointing's recompute): that block and a second one
  gathered, the fresh gradients made so far (w2's at the MLP, the block's first weight gradient)
  and the root unit's gradients other than the embedding's (the lm_head's and the final norm's:
  with ``use_orig_params`` each unit's gradients are gathered into one flat gradient only once
  the unit's backward has ended, the root's with the embedding's, last);
- at a block's end: both blocks gathered, all of the block's fresh weight gradients and the flat
  gradient they are copied into, the root's waiting ones, the block's input and its incoming
  gradient;
- at the root's end: the root gathered, its fresh gradients and their flat copy (three root-sized
  tensors) beside the held logits.

Measured on CPU with full checkpointing: an accumulating micro-batch is the step's worst (the
last, which reduce-scatters, frees each unit's unsharded gradient for its shard and peaks as
high or lower). Without accumulation (``gradient_accumulation=False``, `litgpt_fsdp1_covers`)
no gradient is resident when the step starts (FSDP1 drops its flat parameters' gradients in
the forward once every view's is None) and none stays unsharded for long: each unit's is
reduce-scattered at its end into a shard, so a block's recompute peaks one block further down
beside the shard above, and the root's end holds every block's shard. Without checkpointing
the generic term stays (not measured).
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.dtypes import larger
from scaleplan.memory.litgpt_terms import litgpt_no_sync_gradient_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import largest_gathered_layer
from scaleplan.memory.states import weight_bytes
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.params import param_terms

__all__ = ["litgpt_fsdp1_covers", "litgpt_fsdp1_moments", "litgpt_fsdp1_step",
           "litgpt_fsdp1_units"]

LOSS_SCALARS = 8  # the loss and the ones its backward starts from (fp32)


def litgpt_fsdp1_covers(implementation: str, checkpointing: str, par: Parallelism) -> bool:
    """Whether the step is litgpt's under Fabric's FSDP1 (data ranks only, full sharding) with
    full checkpointing: what the whole micro-batches measured, with and without accumulation.

    >>> litgpt_fsdp1_covers("litgpt", "full", Parallelism(data=2, fsdp="full_shard"))
    True
    """
    return (implementation == "litgpt" and checkpointing == "full" and par.fsdp == "full_shard"
            and par.data > 1 and par.tensor * par.pipeline * par.expert == 1)


def litgpt_fsdp1_units(cfg: GPTConfig) -> dict[str, int]:
    """Parameters of litgpt's FSDP1 units: ``root`` (all but the blocks), ``block`` (one),
    ``waiting`` (the root's parameters whose gradients wait for the embedding's: all but the
    embeddings).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> litgpt_fsdp1_units(cfg)  # wte 61,440 + lm_head 61,440 + final norm 160
    {'root': 123040, 'block': 292160, 'waiting': 61600}
    """
    terms = param_terms(cfg)
    root = terms["total"] - cfg.n_layer * terms["per_layer"]
    embeddings = terms["token_embedding"] + terms["position_embedding"]
    return {"root": root, "block": terms["per_layer"], "waiting": root - embeddings}


def litgpt_fsdp1_moments(cfg: GPTConfig, b: Any, s: Any, moments: dict[str, Any], *, e: int,
                         largest_gathered: Any, fresh: bool, data: int) -> dict[str, Any]:
    """``moments`` (litgpt's one-GPU moments on sharded states, whose weights count
    ``largest_gathered`` bytes gathered) with FSDP1's units as measured (module docstring):
    the root gathered at every moment but the optimizer step's, the recompute moment's blocks
    and gradients, and the block's and the root's ends. ``e``: bytes of a gathered value.

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> moments = {"recompute": 0, "optimizer_step": 0}
    >>> litgpt_fsdp1_moments(cfg, 2, 96, moments, e=2, largest_gathered=0, fresh=False,
    ...                      data=4)["root_end"]  # 3 x 123,040 x 2 + 8
    738248
    """
    units = litgpt_fsdp1_units(cfg)
    root, block, waiting = units["root"] * e, units["block"] * e, units["waiting"] * e
    T, d = b * s, cfg.n_embd
    out = {k: v if k == "optimizer_step" else v + root - largest_gathered
           for k, v in moments.items()}
    # without accumulation each unit's gradient is reduce-scattered at its end into a shard
    shard = -(-units["block"] // data) * e if fresh else 0
    if "recompute" in out:
        first_gradient = d * cfg.mlp_hidden * e  # the MLP's output projection's
        last = out["recompute"] + 2 * block + first_gradient + waiting
        # fresh: one block further down, its input freed and the block above's shard made
        out["recompute"] = larger(last, last - T * d * e + shard)
        out["block_end"] = (root + 2 * block + 2 * block + waiting + 2 * T * d * e
                            + LOSS_SCALARS - largest_gathered)
    out["root_end"] = 3 * root + cfg.n_layer * shard + LOSS_SCALARS - largest_gathered
    return out


def litgpt_fsdp1_step(cfg: GPTConfig, b: Any, s: Any, moments: dict[str, Any], *,
                      precision: Precision, par: Parallelism, W: Any, G: Any,
                      counted: dict[str, Any], fresh: bool
                      ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(moments, the weights and gradients alive at each) of litgpt's full fine-tune under
    Fabric's FSDP1 (`litgpt_fsdp1_moments`), from its one-GPU ``moments`` on sharded states:
    bytes on top of ``W`` (the generic FSDP weights: shards and the largest layer gathered,
    in the parameters' dtype), ``G`` (shards, the largest layer's gradient, a bucket) and
    optimizer states, less the gradients each does not count (``counted``: the bytes of
    ``G`` each moment stands on, `scaleplan.memory.step_switches.gradients_at`).

    Weights: the root unit gathered (in the gathered dtype) from the first forward to the end
    of backward in place of the generic largest layer, nothing gathered at the optimizer step
    (the blocks a backward gathers are its moment's transient). Gradients: accumulating
    (``no_sync``), through forward and backward the whole model's, unsharded
    (`scaleplan.memory.litgpt_terms.litgpt_no_sync_gradient_bytes`), until the last
    micro-batch's backward reduce-scatters them, not ``G``; the optimizer step sees their
    shards. Without accumulation (``fresh``) none is resident until each unit's is
    reduce-scattered into a shard at its end: a block's at the recompute one block further
    down (where that moment peaks), every block's at the root's end; what a unit's backward
    is making (its per-parameter gradients and their flat copy) is its moment's transient.

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> _, alive = litgpt_fsdp1_step(cfg, 1, 8, {"optimizer_step": 0, "forward_end": 0},
    ...                              precision="bf16-true", W=0, G=0, counted={}, fresh=False,
    ...                              par=Parallelism(data=4, fsdp="full_shard"))
    >>> alive["gradients"]  # 3 blocks x 292,160 + the root's 123,040 parameters, bf16; a quarter
    {'optimizer_step': 499760, 'forward_end': 1999040, 'root_end': 1999040}
    >>> alive["weights"]["forward_end"] - alive["weights"]["optimizer_step"]  # the root, bf16
    246080
    """
    unsharded = litgpt_no_sync_gradient_bytes(cfg, precision=precision)
    e = weight_bytes(1, "32-true" if precision == "32-true" else "bf16-true")  # gathered
    largest = largest_gathered_layer(cfg, par) * weight_bytes(1, precision)  # the generic
    moments = litgpt_fsdp1_moments(cfg, b, s, moments, e=e, largest_gathered=largest,
                                   fresh=fresh, data=par.data)
    shards = -(-unsharded // par.data)
    held = 0 if fresh else unsharded
    out = {k: v - largest - (G - shards) if k == "optimizer_step"
           else v + held - counted.get(k, G) for k, v in moments.items()}
    root = litgpt_fsdp1_units(cfg)["root"] * e
    weights = {k: W - largest + (0 if k == "optimizer_step" else root) for k in out}
    gradients = {k: shards if k == "optimizer_step" else held for k in out}
    if fresh:  # the shards reduce-scattered by then (litgpt_fsdp1_moments' fresh branches)
        shard = -(-litgpt_fsdp1_units(cfg)["block"] // par.data) * e
        gradients.update(recompute=shard * (shard > b * s * cfg.n_embd * e),
                         root_end=cfg.n_layer * shard)
        gradients = {k: v for k, v in gradients.items() if k in out}
    return out, {"weights": weights, "gradients": gradients}
