"""Golden test: scaleplan's predictions against the committed torch measurements, without torch.

``docs/validation/validation.json`` holds what the reference harness (``python -m
scaleplan.reference.validate``, torch 2.13 on CPU) measured at every point of its 98-point grid:
the parameter count, the FlopCounterMode FLOPs, every storage autograd saved for backward
(deduplicated, split by the module that saved it), autocast's weight copies and the peak of live
tensor bytes. This test rebuilds each point's config and run settings from the JSON, as
`scaleplan.reference.validate.predictors` does, and checks scaleplan's arithmetic against the
*measured* values (never against the ``predicted`` column, which is scaleplan's own output at the
time of the run). So the CPU-only suite checks every activation term, every precision, both
attention kinds, dropout, CUDA dropout semantics and full checkpointing, with no torch installed.

Tolerances, as the report documents them (docs/validation/validation.md): params, FLOPs,
saved-for-backward bytes and autocast weight copies are exact; the tensor peak is exact up to
4 bytes (a 0-dim fp32 tensor the harness sees live at some peaks) without checkpointing, within
0.4 % under full checkpointing (the worst point, 0.33 %, is the llama-like config's RoPE tables,
resident buffers the model leaves out; before the recompute moment counted the rebuilt block's
backward it was 3.96 %), and within 1 % for the two FakeTensorMode points (GPT-2 XL,
Llama-2-7B).

If the harness is re-run with a newer torch whose kernels save different tensors, regenerate the
JSON and review the diff: a failure here means the formulas and the measurements disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scaleplan.compute.flops import step_flops
from scaleplan.memory.training import MemoryBreakdown, training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

REPORT = Path(__file__).resolve().parents[1] / "docs" / "validation" / "validation.json"
POINTS: list[dict[str, Any]] = json.loads(REPORT.read_text())
NANOGPT_LAYOUT = POINTS[:98]  # the grid before issue 18: nanoGPT's module names and layout
ARCHITECTURES = POINTS[98:]  # issue 18's: MoE, MLA, sliding windows, QK-norms, parallel blocks...

# Which of scaleplan's saved-tensor terms each group of the harness's modules saves. The harness
# attributes each storage to the innermost module that saved it (``saved_by_module``), so these
# groups are as fine as the attribution allows. Terms ending in "_" are prefixes.
TERM_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    # token ids (wte), position ids (wpe), the embedding dropout mask (drop)
    "embedding": (r"transformer\.(wte|wpe|drop)",
                  ("token_ids", "position_ids", "embedding_dropout_mask")),
    "norm1": (r"transformer\.h\.\d+\.ln_1", ("norm1_",)),
    "qkv_input": (r"transformer\.h\.\d+\.attn\.c_attn", ("qkv_input",)),
    # the attention core: SDPA's q/k/v and statistics (flash) or the copies, scores, masks and
    # dropped probabilities (eager / math), its output (c_proj's input), RoPE's rotated q, k and
    # tables, and the eager causal mask (model-level terms, saved inside the first block's attn)
    "attention": (r"transformer\.h\.\d+\.attn(\.attn_dropout|\.c_proj)?",
                  ("qkv", "rope_qk", "attn_lse", "q_k_v_copies", "attn_scores",
                   "attn_dropout_mask", "attn_dropped", "attn_out", "causal_mask",
                   "rope_tables")),
    "resid_dropout": (r"transformer\.h\.\d+\.(attn\.resid_dropout|mlp\.dropout)",
                      ("resid_dropout_masks",)),
    "norm2": (r"transformer\.h\.\d+\.ln_2", ("norm2_",)),
    "mlp": (r"transformer\.h\.\d+\.mlp(\.c_fc|\.c_gate|\.act|\.c_proj)?",
            ("mlp_input", "mlp_activations")),
    "final_norm": (r"transformer\.ln_f", ("final_norm_",)),
    "lm_head": (r"lm_head", ("lm_head_input",)),
    # the log-softmax and targets; under full checkpointing the block inputs too, which
    # torch.utils.checkpoint saves outside any module hook and the harness files under "loss"
    "loss": (r"loss", ("log_softmax", "targets", "block_input")),
}


def _point_id(point: dict[str, Any]) -> str:
    m = point["measurement"]
    parts = [point["config"], m["precision"], m["attention"], f"drop{m['config']['dropout']}"]
    parts += ["ckpt"] * m["checkpointing"] + ["cuda-sem"] * m["cuda_semantics"]
    return "-".join(parts + ["fake"] * m["fake"])


def _config(point: dict[str, Any]) -> GPTConfig:
    return GPTConfig.model_validate(point["measurement"]["config"])


def _memory(point: dict[str, Any]) -> MemoryBreakdown:
    """training_memory with the run settings the harness used (as validate.predictors maps
    them: CUDA dropout semantics on CPU is its own device kind)."""
    m = point["measurement"]
    return training_memory(
        _config(point), micro_batch_size=m["micro_batch_size"], seq_len=m["seq_len"],
        precision=m["precision"], attention=m["attention"], optimizer_impl=m["optimizer"],
        checkpointing="full" if m["checkpointing"] else "none",
        device="cpu-cuda-semantics" if m["cuda_semantics"] else m["device"],
        hold_logits=m["hold_logits"])


def _term_sum(breakdown: dict[str, int], terms: tuple[str, ...]) -> int:
    return sum(v for k, v in breakdown.items()
               if any(k.startswith(t) if t.endswith("_") else k == t for t in terms))


def test_the_report_covers_the_whole_grid() -> None:
    # 4 tiny configs x (2 dropouts x (2 attentions x 5 precisions + checkpointing + CUDA
    # dropout semantics)) + GPT-2 XL + Llama-2-7B = 4 x 24 + 2 = 98 points, all measured on CPU;
    # then issue 18's 11 architectures (MoE, MLA, windows, norms, ...) at 2 shapes: 120.
    assert len(POINTS) == 98 + 11 * 2
    assert {p["measurement"]["device"] for p in POINTS} == {"cpu"}
    assert sum(p["measurement"]["checkpointing"] for p in POINTS) == 8
    assert sum(p["measurement"]["fake"] for p in POINTS) == 2


@pytest.mark.parametrize("point", POINTS, ids=_point_id)
def test_params_flops_and_saved_bytes_equal_the_measurement(point: dict[str, Any]) -> None:
    m = point["measurement"]
    cfg = _config(point)
    assert count_params(cfg).total == m["params"]
    if not m["checkpointing"]:  # checkpointing adds recomputation, which step_flops leaves out
        s = step_flops(cfg, micro_batch_size=m["micro_batch_size"], seq_len=m["seq_len"],
                       causal=False)  # FlopCounterMode counts the whole T x T score matrix
        assert s.forward == m["flops_forward"]
        assert s.total == m["flops"]
        assert s.backward == m["flops_backward"]
    pred = _memory(point)
    assert pred.saved_for_backward == m["saved_for_backward"]
    if not m["checkpointing"]:
        # with checkpointing the model counts every copy autocast's cache holds at the peak,
        # the harness only those something saved (validate.predictors skips it too)
        assert pred.autocast_weight_copies == m["autocast_weight_copies"]


@pytest.mark.parametrize("point", NANOGPT_LAYOUT, ids=_point_id)
def test_every_saved_term_group_equals_the_modules_that_saved_it(point: dict[str, Any]) -> None:
    m = point["measurement"]
    by_module: dict[str, int] = m["saved_by_module"]
    breakdown = _memory(point).saved_breakdown
    seen_modules: set[str] = set()
    seen_terms: set[str] = set()
    for group, (pattern, terms) in TERM_GROUPS.items():
        modules = {k for k in by_module if re.fullmatch(pattern, k)}
        measured = sum(by_module[k] for k in modules)
        assert _term_sum(breakdown, terms) == measured, group
        seen_modules |= modules
        seen_terms |= {k for k in breakdown if _term_sum({k: 1}, terms)}
    # every measured module and every predicted term belongs to a group
    assert seen_modules == set(by_module)
    assert seen_terms == set(breakdown)


@pytest.mark.parametrize("point", NANOGPT_LAYOUT, ids=_point_id)
def test_tensor_peak_within_the_documented_tolerance(point: dict[str, Any]) -> None:
    m = point["measurement"]
    predicted, measured = _memory(point).tensor_peak, m["peak_bytes"]
    if m["fake"]:
        assert predicted == pytest.approx(measured, rel=0.01)
    elif m["checkpointing"]:
        assert predicted == pytest.approx(measured, rel=0.004)
    else:
        assert 0 <= measured - predicted <= 4


def test_the_architecture_points_use_the_new_options() -> None:
    # the last 22 points are issue 18's architectures; the first 98 use none of their options
    assert all(GPTConfig.model_validate(p["measurement"]["config"]).moe is None
               and p["measurement"]["config"].get("mla") is None for p in NANOGPT_LAYOUT)
    configs = [_config(p) for p in ARCHITECTURES]
    assert sum(c.moe is not None for c in configs) >= 4 and any(c.mla for c in configs)
    assert any(c.sliding_window for c in configs) and any(c.parallel != "none" for c in configs)


@pytest.mark.parametrize("point", ARCHITECTURES, ids=_point_id)
def test_architecture_peaks_are_at_most_4_percent_low(point: dict[str, Any]) -> None:
    # Saved bytes are exact on these points (above); the step's peak is exact for 13 of the 22
    # and below the measured one for the rest: Mixtral by 3.0-4.0% (the routing's transient
    # index and weight buffers live at the peak moment are not modelled), OPT-350m by 1.3%,
    # DeepSeek by up to 1.0%, GPT-J by 0.07%. Never above it.
    predicted, measured = _memory(point).tensor_peak, point["measurement"]["peak_bytes"]
    assert 0 <= measured - predicted <= 0.041 * measured
