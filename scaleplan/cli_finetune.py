"""``scaleplan finetune``: does a LoRA / QLoRA fine-tune fit, and at what micro-batch.

A command of its own rather than flags of ``plan``: ``plan`` answers a pretraining run (the
compute-optimal tokens, the hours, the expected loss), which a fine-tune does not have; the
fine-tuning question is the memory of a frozen base with adapters, the trainable parameters and
the largest micro-batch that fits. It reuses ``plan``'s model loading and GPU lookup and
`training_memory`'s breakdown (``--json``: the same fields as a plan's ``memory``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.model.lora import LORA_TARGETS, LoRA

__all__ = ["FINETUNE_IMPLEMENTATIONS", "add_finetune_parser", "finetune_report"]

FINETUNE_IMPLEMENTATIONS = ("hf", "litgpt", "torchtune")
"""The implementations whose LoRA / QLoRA step `training_memory` models."""


def add_finetune_parser(sub: Any, *, positive_int: Any, default_gpu: str) -> None:
    """Add ``finetune`` to the CLI's subcommands (``sub``: argparse's subparsers)."""
    f = sub.add_parser("finetune", help="LoRA / QLoRA fine-tuning memory on a GPU: trainable "
                       "parameters, memory breakdown, largest micro-batch")
    f.add_argument("model", help="preset, config.json or nanoGPT .py")
    f.add_argument("--gpu", default=default_gpu, help="GPU name (default: %(default)s)")
    f.add_argument("--lora-rank", required=True, type=positive_int("--lora-rank", "8"),
                   help="LoRA rank r")
    f.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: "
                   "peft's 8; no effect on memory)")
    f.add_argument("--lora-targets", default=",".join(LORA_TARGETS),
                   help="comma-separated roles among q,k,v,o,gate,up,down, and head with "
                   "--implementation litgpt (default: all but head)")
    f.add_argument("--lora-dropout", type=float, default=0.0, help="peft's lora_dropout")
    f.add_argument("--base-weights", choices=["bf16", "int8", "nf4", "nf4-dq"],
                   help="the frozen base's storage (default: the precision's weight dtype); "
                   "nf4 / nf4-dq is QLoRA")
    f.add_argument("--seq-len", type=positive_int("--seq-len", "512"), default=None,
                   help="tokens per sequence (default: min(block_size, 2048))")
    f.add_argument("--micro-batch-size", type=positive_int("--micro-batch-size", "1"),
                   default=1, help="sequences per forward (default: 1)")
    f.add_argument("--precision", default="bf16-mixed", help="'bf16-mixed' (default), "
                   "'32-true', or 'bf16-true' (litgpt's and torchtune's recipes)")
    f.add_argument("--optimizer", default="adamw", help="adamw (default), adamw-8bit, "
                   "paged-adamw-8bit, ...")
    f.add_argument("--checkpointing", choices=["none", "full"], default="none",
                   help="gradient checkpointing per layer (default: none)")
    f.add_argument("--implementation", choices=FINETUNE_IMPLEMENTATIONS, default="hf",
                   help="whose LoRA step: hf (peft on transformers, default), litgpt "
                   "(finetune_lora) or torchtune (lora_finetune_single_device)")
    f.add_argument("--compile", action="store_true",
                   help="torch.compile (torchtune's recipe, with --loss chunked)")
    f.add_argument("--loss", choices=("standard", "chunked"), default="standard",
                   help="chunked: torchtune's CEWithChunkedOutputLoss")
    f.add_argument("--activation-offload", action="store_true",
                   help="torchtune's activation offloading (with --checkpointing full)")
    f.add_argument("--json", action="store_true", help="machine-readable output")


def _lora(args: argparse.Namespace) -> LoRA:
    from pydantic import ValidationError

    kw: dict[str, Any] = {"targets": args.lora_targets, "dropout": args.lora_dropout}
    if args.lora_alpha is not None:
        kw["alpha"] = args.lora_alpha
    try:
        return LoRA(args.lora_rank, **kw)
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ScaleplanError(f"--lora-*: {msg}") from None


def finetune_report(args: argparse.Namespace, cfg: Any, label: str) -> str:
    """The ``finetune`` command's output for parsed ``args`` and a loaded model."""
    from scaleplan.compute.hardware import gpu as lookup
    from scaleplan.memory.limits import max_micro_batch_size
    from scaleplan.memory.training import training_memory
    from scaleplan.units import format_gib

    lora = _lora(args)
    seq_len = args.seq_len or min(cfg.block_size, 2048)
    spec = lookup(args.gpu)
    options: dict[str, Any] = {
        "precision": args.precision, "optimizer": args.optimizer,
        "checkpointing": args.checkpointing, "implementation": args.implementation,
        "lora": lora, "base_weights": args.base_weights}
    if args.compile:
        options["compile"] = True
    if args.loss != "standard":
        options["loss"] = args.loss
    if args.activation_offload:
        options["activation_offload"] = True
    mem = training_memory(cfg, micro_batch_size=args.micro_batch_size, seq_len=seq_len,
                          **options)
    trainable, total = _params(cfg, lora, args.implementation)
    available = spec.usable_memory_bytes or spec.memory_bytes
    largest = max_micro_batch_size(cfg, spec, seq_len=seq_len, **options)
    if args.json:
        return json.dumps({
            "model": label, "gpu": spec.name, "lora": lora.model_dump(),
            "base_weights": args.base_weights, "seq_len": seq_len,
            "implementation": args.implementation,
            "micro_batch_size": args.micro_batch_size, "trainable_params": trainable,
            "total_params": total, "memory": mem.model_dump(),
            "available_bytes": available, "fits": mem.total <= available,
            "max_micro_batch_size": largest}, indent=2)
    fits = "fits" if mem.total <= available else "does NOT fit"
    return "\n".join([
        f"{label}: LoRA r={lora.rank} on {','.join(lora.targets)}, base "
        f"{args.base_weights or 'in the precision dtype'}, {args.precision}, "
        f"{args.implementation}",
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: "
        f"{100 * trainable / total:.4f}",
        f"micro_batch_size={args.micro_batch_size}, seq_len={seq_len}:",
        str(mem),
        f"{fits} in the {spec.name} ({format_gib(available).strip()} usable); largest "
        f"micro-batch that fits: {largest}"])


def _params(cfg: Any, lora: LoRA, implementation: str) -> tuple[int, int]:
    """(trainable, all) parameters: `scaleplan.model.params.count_params` with the adapters,
    or, for litgpt's adapter on the output layer (``head``, which transformers' layouts do not
    have), its blocks' adapters (`scaleplan.memory.litgpt_lora_terms.litgpt_lora_adapter_shapes`)
    and the head's pair, r x d and V x r."""
    from scaleplan.model.params import count_params

    if implementation == "litgpt" and "head" in lora.targets:
        from scaleplan.memory.litgpt_lora_terms import litgpt_lora_adapter_shapes

        block = sum(rows * cols for rows, cols in litgpt_lora_adapter_shapes(cfg, lora))
        trainable = int(cfg.n_layer * block + lora.rank * (cfg.n_embd + cfg.vocab_size))
        return trainable, count_params(cfg).total + trainable
    pc = count_params(cfg, lora=lora)
    return pc.trainable, pc.total
