"""The saved-tensor terms of one pipeline stage in eager mode, and the recompute moment of full
checkpointing: the parts of `scaleplan.memory.stage.stage_parts` that depend on how the step
runs (`scaleplan.memory.compiled_terms` has them under torch.compile)."""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import (
    TENSOR_PARALLEL_SPLIT_TERMS,
    AttentionKind,
    CheckpointingKind,
    DeviceKind,
    block_saved_terms,
    embedding_saved_terms,
    head_saved_terms,
    layers_saved_terms,
    model_saved_terms,
)
from scaleplan.memory.compiled_terms import compiled_block_saved_terms
from scaleplan.memory.hf_terms import hf_block_saved_terms
from scaleplan.memory.litgpt_terms import litgpt_block_saved_terms
from scaleplan.memory.parallel import Parallelism, tensor_parallel_split
from scaleplan.memory.sharding import mlp_gradient_buffer
from scaleplan.memory.tune_terms import tune_block_saved_terms
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["eager_saved_terms", "recompute_moment", "split_terms"]


def split_terms(terms: dict[str, Any], par: Parallelism) -> dict[str, Any]:
    """Each saved term per tensor-parallel rank (`tensor_parallel_split`)."""
    if par.tensor == 1:
        return terms
    return {k: tensor_parallel_split(0, v, t=par.tensor, sequence_parallel=par.sequence_parallel)
            if k in TENSOR_PARALLEL_SPLIT_TERMS else
            tensor_parallel_split(v, 0, t=par.tensor, sequence_parallel=par.sequence_parallel)
            for k, v in terms.items()}


def eager_saved_terms(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                      checkpointing: CheckpointingKind, device: DeviceKind, par: Parallelism,
                      layers: int, in_flight: int, embeds: bool, heads: bool) -> dict[str, Any]:
    """The saved terms of one stage in eager mode, split over tensor-parallel ranks."""
    dropout = cfg.dropout > 0
    saved: dict[str, Any] = {}
    if embeds:
        emb = embedding_saved_terms(cfg, b, s, precision=p, device=device, dropout=dropout)
        saved.update({k: in_flight * v for k, v in split_terms(emb, par).items()})
    blocks = layers_saved_terms(cfg, b, s, layers, precision=p, attention=attention,
                                checkpointing=checkpointing, device=device, dropout=dropout,
                                each=lambda terms: split_terms(terms, par))
    saved.update({k: in_flight * v for k, v in blocks.items()})
    saved.update(split_terms(model_saved_terms(cfg, b, s, precision=p, attention=attention,
                                               checkpointing=checkpointing, device=device), par))
    if heads:
        saved.update(split_terms(head_saved_terms(cfg, b, s, precision=p, device=device), par))
    return saved


_LOSS_SIDE = ("final_norm", "lm_head", "log_softmax", "logits", "logsumexp", "targets", "loss_")


def recompute_moment(cfg: GPTConfig, b: Any, s: Any, p: Precision, attention: AttentionKind,
                     device: DeviceKind, par: Parallelism, saved: dict[str, Any], copies: Any,
                     all_copies: Any, layers: int, code: str = "nanogpt") -> Any:
    """Full checkpointing's recompute moment: the saved tensors less the loss side (freed by
    then), one block rebuilt with what it saves, its weight copies and its MLP gradients.
    ``code``: "nanogpt", "hf" (Hugging Face's layer), "litgpt" (litgpt's Block), "torchtune" or
    "torchtune-compiled" (its layer, eager or compiled) or "compiled" (torch.compile's)."""
    dropout = cfg.dropout > 0
    if code == "hf":
        block = hf_block_saved_terms(cfg, b, s, precision=p,
                                     attention="eager" if attention == "eager" else "sdpa",
                                     device="cpu" if device == "cpu" else "cuda")
    elif code.startswith("torchtune"):  # "torchtune" or "torchtune-compiled"
        block = tune_block_saved_terms(cfg, b, s, precision=p,
                                       device="cpu" if device == "cpu" else "cuda",
                                       compiled=code.endswith("compiled"))
    elif code == "litgpt":
        block = litgpt_block_saved_terms(cfg, b, s, precision=p, device=device)
    elif code == "compiled":
        block = compiled_block_saved_terms(cfg, b, s, precision=p, checkpointing="none",
                                           dropout=dropout, device=device)
    else:
        block = split_terms(block_saved_terms(cfg, b, s, precision=p, attention=attention,
                                              checkpointing="none", device=device,
                                              dropout=dropout,
                                              kind="moe" if cfg.moe is not None else "dense"),
                            par)
    loss_side = sum(v for k, v in saved.items() if k.startswith(_LOSS_SIDE))
    return (sum(saved.values()) - loss_side + copies + sum(block.values())
            + (all_copies - copies) // max(layers, 1) + mlp_gradient_buffer(cfg, p, par))
