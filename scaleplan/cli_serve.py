"""``scaleplan serve``: what serving a model on a GPU takes, how much fits and how fast it runs.

    scaleplan serve llama-3-8b --gpu "RTX 4090"                     # longest context, 1 request
    scaleplan serve llama-3-8b --gpu "H100 SXM" --context-len 8192  # most requests of 8k tokens
    scaleplan serve config.json --gpu A100-80GB --batch-size 16 --weights int4 --json

With ``--batch-size`` alone it finds the longest context for that many requests; with
``--context-len`` alone the most requests of that length; with both it checks that point (and
gives both limits); with neither, one request. Memory is `scaleplan.inference.inference_memory`
at that point, speed `scaleplan.inference.speed.inference_speed`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from scaleplan.cli_options import positive_int
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.units import GiB

__all__ = ["add_serve_parser", "format_serve", "serve_report"]

Loader = Callable[[str], tuple[GPTConfig, str, int | None]]


def add_serve_parser(sub: Any, load_model: Loader) -> None:
    """Register ``serve`` on the subparsers ``sub``; ``load_model`` reads the MODEL argument."""
    s = sub.add_parser("serve", help="inference memory, longest context, largest batch and "
                       "decode speed on a GPU")
    s.add_argument("model", help="preset, config.json or nanoGPT .py")
    s.add_argument("--gpu", required=True, help="GPU name; `scaleplan gpus` lists them")
    s.add_argument("--batch-size", type=positive_int("--batch-size", "8"),
                   help="concurrent requests (alone: find the longest context)")
    s.add_argument("--context-len", type=positive_int("--context-len", "8192"),
                   help="tokens per request (alone: find the most requests)")
    s.add_argument("--weights", default="bf16",
                   help="weight format: bf16, fp16, fp32, fp8, int8, int4, nf4 (default bf16)")
    s.add_argument("--group-size", type=positive_int("--group-size", "128"),
                   help="quantisation group size for int4/nf4")
    s.add_argument("--kv-cache", default="bf16",
                   help="KV cache dtype: bf16, fp16, fp32, fp8, int8 (default bf16)")
    s.add_argument("--tensor-parallel", type=positive_int("--tensor-parallel", "2"), default=1,
                   help="GPUs splitting each layer's heads (default 1)")
    s.add_argument("--headroom", type=float, default=0.0,
                   help="fraction of the GPU kept free (vLLM's gpu_memory_utilization=0.9 is "
                   "0.1; default 0)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=lambda args: _cmd_serve(args, load_model))


def serve_report(cfg: GPTConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The numbers ``serve`` prints, as a JSON-ready dict."""
    from scaleplan.inference.kv_cache import kv_cache_bytes_per_token
    from scaleplan.inference.limits import max_batch, max_context, serving_budget
    from scaleplan.inference.memory import inference_memory
    from scaleplan.inference.speed import inference_speed
    from scaleplan.memory.parallel import Parallelism

    par = Parallelism(tensor=args.tensor_parallel) if args.tensor_parallel > 1 else None
    opts: dict[str, Any] = {"weights": args.weights, "group_size": args.group_size,
                            "kv_cache": args.kv_cache, "parallelism": par}
    budget = serving_budget(args.gpu, args.headroom)
    batch, context = args.batch_size, args.context_len
    report: dict[str, Any] = {
        "gpu": args.gpu, "budget_bytes": budget, **{k: v for k, v in opts.items()
                                                    if k != "parallelism"},
        "tensor_parallel": args.tensor_parallel, "block_size": cfg.block_size,
        "kv_bytes_per_token": kv_cache_bytes_per_token(cfg, args.kv_cache, parallelism=par)}
    if context is None:
        batch = batch or 1
        context = max_context(cfg, args.gpu, batch_size=batch, headroom=args.headroom, **opts)
        report["max_context"] = context
    if args.batch_size is None and args.context_len is not None:
        batch = max_batch(cfg, args.gpu, context_len=context, headroom=args.headroom, **opts)
        report["max_batch"] = batch
    elif args.batch_size is not None and args.context_len is not None:
        report["max_context"] = max_context(cfg, args.gpu, batch_size=batch,
                                            headroom=args.headroom, **opts)
        report["max_batch"] = max_batch(cfg, args.gpu, context_len=context,
                                        headroom=args.headroom, **opts)
    report["batch_size"], report["context_len"] = batch, context
    if not batch or not context:
        weights = inference_memory(cfg, batch_size=1, context_len=1, **opts).weights
        raise ScaleplanError(
            f"nothing fits on {args.gpu}: the weights alone are {weights / GiB:.2f} GiB of a "
            f"{budget / GiB:.2f} GiB budget; try --weights int4, --tensor-parallel 2 or a "
            "larger GPU")
    memory = inference_memory(cfg, batch_size=batch, context_len=context, **opts)
    report["memory"] = memory.model_dump()
    report["fits"] = memory.total <= budget
    report["speed"] = inference_speed(cfg, args.gpu, batch_size=batch, context_len=context,
                                      **opts).model_dump()
    return report


def format_serve(report: dict[str, Any], label: str) -> str:
    """The text ``serve`` prints for ``report`` (from `serve_report`)."""
    m, s = report["memory"], report["speed"]
    lines = [f"{label} on {report['gpu']} ({report['budget_bytes'] / GiB:.2f} GiB usable), "
             f"weights {report['weights']}, KV cache {report['kv_cache']}"
             + (f", tensor parallel {report['tensor_parallel']}"
                if report["tensor_parallel"] > 1 else ""),
             f"KV cache per token: {report['kv_bytes_per_token']:,} bytes"]
    if "max_context" in report:
        limit = " (the model's block_size)" if report["max_context"] == report[
            "block_size"] else ""
        lines.append(f"longest context at batch {report['batch_size']}: "
                     f"{report['max_context']:,} tokens{limit}")
    if "max_batch" in report:
        lines.append(f"most requests at {report['context_len']:,} tokens: "
                     f"{report['max_batch']:,}")
    lines.append(f"memory at batch {report['batch_size']} x {report['context_len']:,} tokens"
                 + ("" if report["fits"] else " (does NOT fit)") + ":")
    for key in ("weights", "kv_cache", "activations", "overhead", "total"):
        lines.append(f"  {key.replace('_', ' '):<12} {m[key] / GiB:9.2f} GiB")
    lines.append(f"decode: {s['time_per_output_token_s'] * 1e3:.2f} ms per token "
                 f"({s['bound']}-bound), {s['tokens_per_s']:,.0f} tokens/s for the batch")
    lines.append(f"time to first token ({s['prompt_len']:,}-token prompt, mfu "
                 f"{s['mfu']:.3g}): {s['time_to_first_token_s'] * 1e3:.1f} ms")
    return "\n".join(lines)


def _cmd_serve(args: argparse.Namespace, load_model: Loader) -> int:
    cfg, label, _ = load_model(args.model)
    report = serve_report(cfg, args)
    if args.json:
        print(json.dumps({"model": label, **report}, indent=2))
    else:
        print(format_serve(report, label))
    return 0
