"""Whole training steps at real sizes on one GPU: the caching allocator's peaks beside
`training_memory` (``python -m scaleplan.reference.gpu_steps --out DIR``).

The quick grid of ``python -m scaleplan.reference.validate --device cuda --quick`` steps tiny
models, whose kilobyte tensors say little about the allocator's 2 MiB blocks and large segments.
These `CASES` are the sizes people train: the seed run (nanoGPT's layout, 40.56M parameters,
16 x 1024, bf16 autocast, dropout 0.1, eager and compiled), GPT-2 124M as nanoGPT trains it,
GPT-2 XL, and transformers' Llama (TinyLlama 1.1B, with and without checkpointing), Qwen2-0.5B
and GPT-2. Each case runs nanoGPT's loop: fused AdamW, two micro-batches of gradient
accumulation per optimizer step, two warm-up steps (compilation, optimizer states, the
allocator's segments), then one measured step from ``reset_peak_memory_stats``:
``max_memory_allocated`` (compare with ``tensor_peak``), ``max_memory_reserved``, and the device
memory in use by the process (``mem_get_info``: reserved plus the CUDA context; compare with
``total``). The slack ``reserved / allocated - 1`` of these cases is what
`scaleplan.memory.training.ALLOCATOR_SLACK_FRACTION` stands for.

Needs torch with CUDA (transformers for the ``hf`` cases); without CUDA it exits with status 2.
The JSON it writes is replayed without torch by tests/test_gpu_steps.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.model.config import GPTConfig

__all__ = ["CASES", "GPUCase", "build_step", "compare", "main", "markdown", "predict",
           "run_case"]

MIB = 2**20


class GPUCase(BaseModel):
    """One whole-step measurement: a preset, whose code runs it, and the step's shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Label in the report.")
    preset: str = Field(description="`GPTConfig.preset` name (the seed run: 'seed').")
    implementation: Literal["nanogpt", "hf"] = Field(
        description="'nanogpt': scaleplan's reference GPT (nanoGPT's layout); 'hf': "
                    "transformers' causal LM of `family` built from the preset.")
    family: str | None = Field(default=None, description="transformers family for 'hf'.")
    micro_batch_size: int
    seq_len: int
    precision: Literal["32-true", "bf16-mixed"] = "bf16-mixed"
    attention: Literal["flash", "eager"] = "flash"
    dropout: float | None = Field(default=None, description="None: the preset's.")
    checkpointing: bool = False
    compile: bool = False

    def config(self) -> GPTConfig:
        """The model: the preset, with this case's dropout and a block size of at least
        ``seq_len``."""
        cfg = SEED if self.preset == "seed" else GPTConfig.preset(self.preset)
        changes: dict[str, Any] = {"block_size": max(cfg.block_size, self.seq_len)}
        if self.dropout is not None:
            changes["dropout"] = self.dropout
        return cfg.replace(**changes)


# The seed run (seed-case.md): nanoGPT, n_layer 12, n_head 12, n_embd 384, dropout 0.1, and
# nanoGPT's defaults bias False, vocab 50,304, block 1024: 40.56M parameters as nanoGPT prints
# them.
SEED = GPTConfig(n_layer=12, n_head=12, n_embd=384, block_size=1024, vocab_size=50304,
                 bias=False, dropout=0.1)

CASES: tuple[GPUCase, ...] = (
    GPUCase(name="seed eager", preset="seed", implementation="nanogpt", micro_batch_size=16,
            seq_len=1024),
    GPUCase(name="seed compiled", preset="seed", implementation="nanogpt",
            micro_batch_size=16, seq_len=1024, compile=True),
    GPUCase(name="gpt2 eager", preset="gpt2", implementation="nanogpt", micro_batch_size=12,
            seq_len=1024, dropout=0.0),
    GPUCase(name="gpt2 fp32 eager-attn dropout", preset="gpt2", implementation="nanogpt",
            micro_batch_size=4, seq_len=1024, precision="32-true", attention="eager",
            dropout=0.1),
    GPUCase(name="gpt2-medium checkpointed", preset="gpt2-medium", implementation="nanogpt",
            micro_batch_size=16, seq_len=1024, dropout=0.0, checkpointing=True),
    GPUCase(name="gpt2-xl", preset="gpt2-xl", implementation="nanogpt", micro_batch_size=4,
            seq_len=1024, dropout=0.0),
    GPUCase(name="hf tinyllama", preset="tinyllama-1.1b", implementation="hf", family="llama",
            micro_batch_size=4, seq_len=2048, dropout=0.0),
    GPUCase(name="hf tinyllama checkpointed", preset="tinyllama-1.1b", implementation="hf",
            family="llama", micro_batch_size=8, seq_len=2048, dropout=0.0, checkpointing=True),
    GPUCase(name="hf qwen2-0.5b", preset="qwen2-0.5b", implementation="hf", family="qwen2",
            micro_batch_size=4, seq_len=2048, dropout=0.0),
    GPUCase(name="hf gpt2", preset="gpt2", implementation="hf", family="gpt2",
            micro_batch_size=8, seq_len=1024, dropout=0.0),
    GPUCase(name="gpt2 compiled", preset="gpt2", implementation="nanogpt",
            micro_batch_size=12, seq_len=1024, dropout=0.0, compile=True),
)


def predict(case: GPUCase, *, context: int = 0) -> dict[str, int]:
    """``training_memory``'s ``tensor_peak`` and ``total`` for ``case`` (``total`` with the
    measured ``context`` and no slack: compare it with the measured reserved peak plus
    context only after adding the slack)."""
    from scaleplan.memory.training import training_memory

    p = training_memory(
        case.config(), micro_batch_size=case.micro_batch_size, seq_len=case.seq_len,
        precision=case.precision, attention=case.attention, optimizer_impl="fused",
        checkpointing="full" if case.checkpointing else "none", device="cuda",
        hold_logits=case.implementation == "nanogpt", compile=case.compile,
        implementation=case.implementation, cuda_context_bytes=context,
        allocator_slack_fraction=0.0)
    return {"tensor_peak": p.tensor_peak, "total": p.total}


def _nanogpt_step(case: GPUCase, dev: Any) -> tuple[Any, Any, list[Any]]:
    """(forward returning the loss, optimizer, parameters) of the reference GPT on ``dev``."""
    import torch

    from scaleplan.reference.step import TrainingStep

    step = TrainingStep(case.config(), micro_batch_size=case.micro_batch_size,
                        seq_len=case.seq_len, precision=case.precision,
                        attention=case.attention, checkpointing=case.checkpointing,
                        device=dev, cuda_semantics=False, optimizer="fused", hold_logits=True)
    if case.compile:
        step.model = torch.compile(step.model)  # type: ignore[assignment]
    return step.forward, step.opt, step.params


def _hf_step(case: GPUCase, dev: Any) -> tuple[Any, Any, list[Any]]:
    """(forward returning the loss, optimizer, parameters) of transformers' model on ``dev``:
    the model's own loss, fp32 parameters, autocast for bf16-mixed, the outputs dropped."""
    import torch

    from scaleplan.reference.hf_measure import build_hf_model

    cfg = case.config()
    model = build_hf_model(cfg, case.family, "sdpa" if case.attention == "flash"  # type: ignore[arg-type]
                           else "eager").to(dev)
    model.train()
    if case.checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    if case.compile:
        model = torch.compile(model)
    ids = torch.randint(0, cfg.vocab_size, (case.micro_batch_size, case.seq_len), device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def forward() -> Any:
        if case.precision == "bf16-mixed":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(input_ids=ids, labels=ids, use_cache=False).loss
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    return forward, opt, params


def build_step(case: GPUCase, device: str) -> tuple[Any, Any, list[Any]]:
    """(forward returning the loss, optimizer, trainable parameters) of ``case`` on ``device``
    ("cuda"; "cpu" builds the same objects, for tests)."""
    import torch

    build = _nanogpt_step if case.implementation == "nanogpt" else _hf_step
    return build(case, torch.device(device))


def _optimizer_step(forward: Any, opt: Any, micro_batches: int = 2) -> None:
    for _ in range(micro_batches):
        forward().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_case(case: GPUCase, device: str = "cuda") -> dict[str, Any]:
    """Measure ``case`` on ``device`` (a CUDA device): two warm-up optimizer steps, then the
    allocator's peaks over a third (bytes; seconds of the whole case)."""
    import torch

    start = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(0)
    forward, opt, params = build_step(case, device)
    for _ in range(2):
        _optimizer_step(forward, opt)
    gc.collect()
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    _optimizer_step(forward, opt)
    torch.cuda.synchronize(dev)
    free, total = torch.cuda.mem_get_info(dev)
    row = {"allocated_before": before, "max_allocated": torch.cuda.max_memory_allocated(dev),
           "max_reserved": torch.cuda.max_memory_reserved(dev),
           "reserved_after": torch.cuda.memory_reserved(dev), "device_used": total - free,
           "params": sum(p.numel() for p in params),
           "seconds": round(time.perf_counter() - start, 1)}
    del forward, opt, params
    gc.collect()
    torch.cuda.empty_cache()
    return row


def compare(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each measured case of a ``gpu-steps.json`` report beside `predict`: ``tensor_peak`` over
    ``max_allocated``, the allocator's slack (``max_reserved / max_allocated - 1``), the
    context the training process holds outside the allocator (``device_used -
    reserved_after``) and ``total`` (with that context and the measured slack: an upper bound
    on what the process holds) over ``device_used``. Cases that failed keep their error."""
    rows = []
    for entry in report["cases"]:
        case = GPUCase.model_validate(entry["case"])
        m = entry.get("measured")
        if m is None:
            rows.append({"name": case.name, "error": entry.get("error", "not measured")})
            continue
        context = m["device_used"] - m["reserved_after"]
        slack = m["max_reserved"] / m["max_allocated"] - 1
        p = predict(case, context=context)
        rows.append({"name": case.name, "max_allocated": m["max_allocated"],
                     "max_reserved": m["max_reserved"], "device_used": m["device_used"],
                     "context": context, "slack": slack, "tensor_peak": p["tensor_peak"],
                     "tensor_peak_ratio": p["tensor_peak"] / m["max_allocated"],
                     "total_ratio": (p["total"] + slack * p["tensor_peak"]) / m["device_used"]})
    return rows


def markdown(report: dict[str, Any]) -> str:
    """`compare`'s rows as a Markdown table (MiB), under the versions and the context probe."""
    v, ctx = report["versions"], report["context"]
    lines = [f"# Whole steps on {v['gpu']}", "",
             f"torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, Python "
             f"{v['python']}. CUDA context after a warm-up (outside the allocator): "
             f"{ctx['after_init'] / MIB:.0f} MiB.", "",
             "| case | max allocated | max reserved | in use | context | slack | tensor_peak "
             "| tensor_peak / allocated |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in compare(report):
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['max_allocated'] / MIB:,.0f} | {r['max_reserved'] / MIB:,.0f} "
            f"| {r['device_used'] / MIB:,.0f} | {r['context'] / MIB:,.0f} | {r['slack']:+.1%} "
            f"| {r['tensor_peak'] / MIB:,.0f} | {r['tensor_peak_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": str(torch.version.cuda), "gpu": torch.cuda.get_device_name()}
    try:
        out["transformers"] = importlib.import_module("transformers").__version__
    except ImportError:
        out["transformers"] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: measure every case (or those named by ``--only``) and write
    ``gpu-steps.json`` after each one; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.gpu_steps",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("validation-gpu"))
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    args = parser.parse_args(argv)
    from scaleplan.reference.device_report import context_probe

    try:  # before any tensor: the context as a fresh process has it
        context = context_probe("cuda")
    except (RuntimeError, ImportError) as exc:
        print(f"error: gpu_steps needs a CUDA GPU: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"versions": _versions(), "context": context, "cases": []}
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        entry: dict[str, Any] = {"case": case.model_dump()}
        try:
            entry["measured"] = run_case(case)
        except Exception as exc:  # one failing case must not lose the others' figures
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        report["cases"].append(entry)
        (args.out / "gpu-steps.json").write_text(json.dumps(report, indent=1))
        print(f"{case.name}: {entry.get('measured', entry.get('error'))}", flush=True)
    try:  # the table needs only scaleplan; a failure here must not hide the JSON
        (args.out / "gpu-steps.md").write_text(markdown(report))
        print(markdown(report))
    except Exception as exc:
        print(f"gpu-steps.md not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
