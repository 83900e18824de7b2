"""Predicted vs measured over the validation grid, for scaleplan and for each peer.

The measurements come from `scaleplan.reference.measure` (the torch harness) over the grid of
`scaleplan.reference.validate`; scaleplan's predictions are that module's `predictors`, the
peers' are `benchmarks.peers`. Error = predicted / measured - 1.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.peers import MISSES, PEERS, Prediction, llm_analysis_available

__all__ = ["QUANTITIES", "accuracy", "scaleplan_prediction", "summarise"]

# Our key -> the StepMeasurement field it is compared with.
QUANTITIES = {"params": "params", "flops": "flops", "saved": "saved_for_backward",
              "peak": "peak_bytes"}
QUICK_POINTS = 2


def scaleplan_prediction(m: Any) -> Prediction:
    """scaleplan's predictions of one measurement (validate's plugged-in predictors)."""
    from scaleplan.reference.validate import predictors

    found: dict[str, float] = {}
    for predict in predictors().values():
        found.update(predict(m))
    return {"params": found.get("params"), "flops": found.get("flops"),
            "saved": found.get("saved_for_backward"), "peak": found.get("peak_bytes")}


def _peer_predictions(m: Any) -> dict[str, Prediction]:
    out = {}
    for name, peer in PEERS.items():
        if name == "llm_analysis" and not llm_analysis_available():
            continue
        p = peer(m.config, b=m.micro_batch_size, s=m.seq_len, precision=m.precision,
                 attention=m.attention, params=m.params)
        if m.checkpointing:  # the peers' no-recompute formulas; not compared
            p = {**p, "flops": None, "saved": None, "peak": None}
        out[name] = p
    return out


def accuracy(quick: bool) -> dict[str, Any]:
    """Measure the grid (2 points with ``quick``) and compare every predictor."""
    from scaleplan.reference.measure import measure
    from scaleplan.reference.validate import grid

    points = list(grid(quick=quick, device="cpu"))
    if quick:
        points = points[:QUICK_POINTS]
    rows = []
    for name, cfg, kwargs in points:
        start = time.perf_counter()
        m = measure(cfg, device="cpu", **kwargs)
        measured = {k: float(getattr(m, f)) for k, f in QUANTITIES.items()}
        predicted = {"scaleplan": scaleplan_prediction(m), **_peer_predictions(m)}
        if m.checkpointing:
            predicted["scaleplan"]["flops"] = None
        rows.append({"config": name, "precision": m.precision, "attention": m.attention,
                     "dropout": cfg.dropout, "checkpointing": m.checkpointing, "fake": m.fake,
                     "cuda_semantics": m.cuda_semantics,
                     "micro_batch_size": m.micro_batch_size, "seq_len": m.seq_len,
                     "seconds": round(time.perf_counter() - start, 2),
                     "measured": measured, "predicted": predicted})
    skipped = [] if llm_analysis_available() else [
        "llm_analysis (not installed: pip install llm-analysis)"]
    return {"rows": rows, "summary": summarise(rows), "misses": MISSES, "skipped": skipped}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per predictor and quantity: points compared, median and max |error|, as fractions."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        for source, prediction in row["predicted"].items():
            for q, value in prediction.items():
                actual = row["measured"][q]
                if value is None or not actual:
                    continue
                out.setdefault(source, {}).setdefault(q, {"errors": []})["errors"].append(
                    value / actual - 1)
    for per in out.values():
        for q, entry in per.items():
            errors = entry.pop("errors")
            per[q] = {"n": len(errors),
                      "median_abs_error": statistics.median(abs(e) for e in errors),
                      "max_abs_error": max(abs(e) for e in errors),
                      "median_error": statistics.median(errors)}
    return out
