"""The device memory report of ``python -m scaleplan.reference.validate``: allocator peaks, the
CUDA context and the caching allocator's slack, beside scaleplan's prediction.

On a GPU (``--device cuda``) each grid point's step reports ``torch.cuda.max_memory_allocated``
and ``max_memory_reserved`` (`scaleplan.reference.measure.CudaMemory`); `context_probe` measures
the CUDA context with ``torch.cuda.mem_get_info``: once right after the driver's context is
created (``torch.cuda.init``, nothing allocated) and once after a warm-up that loads what a
training step loads (cuBLAS handles and workspaces, the SDPA and AdamW kernels), less what
PyTorch's allocator has reserved. `memory_report` puts each point beside `training_memory`'s
``tensor_peak`` (to compare with the allocated peak) and ``total`` (with the measured context,
to compare with reserved + context), and derives the allocator slack ``reserved / allocated -
1``. These two measured numbers are what `scaleplan.memory.training.CUDA_CONTEXT_BYTES` (512
MiB) and `ALLOCATOR_SLACK_FRACTION` (5 %) stand in for (docs/validation/gpu.md).

On CPU the same report is written with the harness's live-bytes peak in place of the allocator's
figures and no context or slack, so the report's plumbing is tested without a GPU.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["GPU_REPORT_BUDGET_SECONDS", "context_probe", "memory_report", "report_markdown"]

GPU_REPORT_BUDGET_SECONDS = 360  # issue 17: --device cuda --quick finishes in under 6 minutes
MIB = 2**20


def context_probe(device: str = "cuda") -> dict[str, int]:
    """The CUDA context, measured with ``torch.cuda.mem_get_info`` (bytes).

    ``driver``: device memory in use right after ``torch.cuda.init()`` (the primary context;
    includes other processes on the device). ``after_init``: in use after a warm-up step (a bf16
    and an fp32 matmul with backward, SDPA, a fused AdamW step), less ``memory_reserved()``: the
    process's memory outside PyTorch's allocator, what ``cuda_context_bytes`` means.
    Raises a ``RuntimeError`` naming the fix when CUDA is not available.
    """
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available to torch (torch.cuda.is_available() is "
                           "False): run on a GPU machine, or use --device cpu")
    dev = torch.device(device)
    torch.cuda.init()  # type: ignore[no-untyped-call]
    free, total = torch.cuda.mem_get_info(dev)
    driver = int(total - free - torch.cuda.memory_reserved(dev))
    _warm_up(dev)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(dev)
    after = int(total - free - torch.cuda.memory_reserved(dev))
    return {"total": int(total), "driver": driver, "after_init": after}


def _warm_up(dev: Any) -> None:
    """Load the libraries a training step uses: matmuls (cuBLAS), SDPA, a fused AdamW step."""
    import torch

    w = torch.randn(256, 256, device=dev, requires_grad=True)
    opt = torch.optim.AdamW([w], fused=True)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, 2, 64, 128, device=dev, dtype=dtype)
        q = (x.flatten(0, 1) @ w[:128, :128].to(dtype)).view_as(x)
        y = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        y.float().sum().backward()  # type: ignore[no-untyped-call]
    opt.step()
    opt.zero_grad(set_to_none=True)


def _predict(measurement: dict[str, Any], device: str, context: int | None) -> Any:
    from scaleplan.memory.training import CUDA_CONTEXT_BYTES, training_memory
    from scaleplan.model.config import GPTConfig

    m = measurement
    return training_memory(
        GPTConfig.model_validate(m["config"]), micro_batch_size=m["micro_batch_size"],
        seq_len=m["seq_len"], precision=m["precision"], attention=m["attention"],
        optimizer_impl=m["optimizer"], checkpointing="full" if m["checkpointing"] else "none",
        device="cpu" if device == "cpu" else "cuda", hold_logits=m["hold_logits"],
        cuda_context_bytes=CUDA_CONTEXT_BYTES if context is None else context)


def _case(row: dict[str, Any], device: str, context: int | None) -> dict[str, Any]:
    m = row["measurement"]
    cuda = m.get("cuda")
    allocated = cuda["max_allocated"] if cuda else m["peak_bytes"]
    reserved = cuda["max_reserved"] if cuda else None
    p = _predict(m, device, context)
    case: dict[str, Any] = {
        "config": row["config"], "precision": m["precision"], "attention": m["attention"],
        "dropout": m["config"]["dropout"], "checkpointing": m["checkpointing"],
        "micro_batch_size": m["micro_batch_size"], "seq_len": m["seq_len"],
        "max_allocated": allocated, "max_reserved": reserved,
        "tensor_peak": p.tensor_peak, "total": p.total,
        "tensor_peak_ratio": p.tensor_peak / allocated if allocated else None,
        "slack": reserved / allocated - 1 if reserved and allocated else None,
    }
    if reserved is not None and context is not None:
        case["total_ratio"] = p.total / (reserved + context)
    return case


def memory_report(rows: list[dict[str, Any]], *, device: str,
                  context: dict[str, int] | None = None) -> dict[str, Any]:
    """Per grid row (from `scaleplan.reference.validate.validate`): the allocator's peaks (the
    harness's live-bytes peak on CPU), scaleplan's ``tensor_peak`` and ``total`` and the slack;
    with a summary of the slack and the context beside scaleplan's placeholders."""
    from scaleplan.memory.training import ALLOCATOR_SLACK_FRACTION, CUDA_CONTEXT_BYTES

    ctx = context["after_init"] if context else None
    cases = [_case(r, device, ctx) for r in rows if not r["measurement"].get("fake")]
    slacks = [c["slack"] for c in cases if c["slack"] is not None]
    ratios = [c["tensor_peak_ratio"] for c in cases if c["tensor_peak_ratio"] is not None]
    return {
        "device": device, "context": context, "cases": cases,
        "summary": {
            "cases": len(cases),
            "slack_median": statistics.median(slacks) if slacks else None,
            "slack_max": max(slacks) if slacks else None,
            "tensor_peak_ratio_min": min(ratios) if ratios else None,
            "tensor_peak_ratio_max": max(ratios) if ratios else None,
            "placeholder_context_bytes": CUDA_CONTEXT_BYTES,
            "placeholder_slack_fraction": ALLOCATOR_SLACK_FRACTION,
        },
    }


def _mib(value: Any) -> str:
    return "n/a" if value is None else f"{value / MIB:.2f}"


def _ratio(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2%}" if percent else f"{value:.4f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page (MiB; ratio = predicted / measured)."""
    s, ctx = report["summary"], report["context"]
    peak = "max allocated" if report["device"] == "cuda" else "live-bytes peak (CPU)"
    lines = [f"# Device memory report ({report['device']})", ""]
    if ctx:
        lines += [f"CUDA context: {_mib(ctx['driver'])} MiB after `torch.cuda.init()`, "
                  f"{_mib(ctx['after_init'])} MiB after a warm-up step (outside the allocator; "
                  f"scaleplan's placeholder: {_mib(s['placeholder_context_bytes'])} MiB). "
                  f"Device total {_mib(ctx['total'])} MiB.", ""]
    lines += [f"{s['cases']} cases. Allocator slack (reserved / allocated - 1): median "
              f"{_ratio(s['slack_median'], True)}, max {_ratio(s['slack_max'], True)} "
              f"(placeholder {s['placeholder_slack_fraction']:.0%}). tensor_peak / {peak}: "
              f"{_ratio(s['tensor_peak_ratio_min'])} to {_ratio(s['tensor_peak_ratio_max'])}.",
              "", f"| config | precision | attn | drop | ckpt | {peak} MiB | max reserved MiB "
              "| tensor_peak MiB | total MiB | tensor_peak ratio | slack |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in report["cases"]:
        lines.append(
            f"| {c['config']} | {c['precision']} | {c['attention']} | {c['dropout']} | "
            f"{c['checkpointing']} | {_mib(c['max_allocated'])} | {_mib(c['max_reserved'])} | "
            f"{_mib(c['tensor_peak'])} | {_mib(c['total'])} | "
            f"{_ratio(c['tensor_peak_ratio'])} | {_ratio(c['slack'], True)} |")
    return "\n".join(lines) + "\n"
