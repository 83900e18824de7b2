"""Published LoRA / QLoRA peaks (issue 19): the rows parse and cite pinned sources, and the page
that sets them beside scaleplan's predictions is the one the benchmark writes now.

The rows are evidence, not fitted; the LoRA rows (peaks dominated by the bf16 base) are checked
to stay within issue 19's 10%. litgpt's rows are predicted with implementation="litgpt" (its LoRA
model, its QLoRA set-up: scaleplan.memory.litgpt_lora_terms); its QLoRA runs ran bitsandbytes
0.42, whose 4-bit matmul kept its input as a ctx attribute that outlives backward: those rows
are predicted with litgpt_bnb_tensor_peak (see scaleplan/data/published_lora.md)."""

from __future__ import annotations

import re

import pytest

from benchmarks.published_lora import (
    DOC_PATH,
    LITGPT_BNB,
    WITHIN,
    litgpt_bnb_predict,
    litgpt_bnb_terms,
    litgpt_phase_bytes,
    load_rows,
    predict,
    render,
)
from benchmarks.published_peaks import figure_bytes

ROWS = load_rows()


def test_rows_cite_a_pinned_source_and_their_bytes() -> None:
    assert len(ROWS) >= 7 and len({r["id"] for r in ROWS}) == len(ROWS)
    for row in ROWS:
        assert re.search(r"/blob/[0-9a-f]{40}/", row["source_url"]), row["id"]
        assert figure_bytes(row["figure_published"]) == int(row["figure_bytes"]), row["id"]
        assert row["figure_kind"] in ("allocated", "active") and row["unmodelled"], row["id"]


def test_lora_rows_within_ten_percent() -> None:
    for row in ROWS:  # torchtune's rows run compile=True, refused with LoRA: not checked here
        if row["base_weights"] != "bf16" or row["project"] == "torchtune":
            continue
        error = predict(row).tensor_peak / int(row["figure_bytes"]) - 1
        assert abs(error) <= WITHIN, (row["id"], error)


def test_the_page_is_current() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render(ROWS), (
        "run: python -m benchmarks.published_lora --write")


# litgpt's rows: implementation="litgpt" (its LoRA model and QLoRA set-up), plus the inputs
# the bitsandbytes 0.42 of its QLoRA runs kept (published_lora.litgpt_bnb_terms)

def _row(row_id: str) -> dict[str, str]:
    return next(r for r in ROWS if r["id"] == row_id)


def test_litgpt_rows_are_predicted_with_litgpts_step() -> None:
    for row in ROWS:
        if row["project"] != "litgpt":
            continue
        m = predict(row)
        assert any(k.startswith("lora_qkv") for k in m.saved_breakdown), row["id"]
        assert m.saved_breakdown["log_softmax"] % 4 == 0  # Fabric's fp32 logits


def test_litgpt_bnb_terms_by_hand_for_llama2_7b() -> None:
    # Llama 2 7B, micro-batch 2 x 512 (T = 1024), r 32 on q and v with dropout 0.05: bnb
    # 0.42 kept each 4-bit linear's bf16 input: per layer the qkv input, the attention output
    # copy and the MLP input (d = 4096 each) and the MLP product (11008), and the head's input
    terms = litgpt_bnb_terms(_row("litgpt-llama2-7b-qlora-1xa10g"))
    T = 1024
    assert sum(terms.values()) == 2 * T * (32 * (3 * 4096 + 11008) + 4096) == 1_535_115_264
    assert LITGPT_BNB == "0.42.0"


def test_only_litgpt_qlora_rows_get_bnb_terms() -> None:
    for row in ROWS:
        terms = litgpt_bnb_terms(row)
        assert bool(terms) == (row["project"] == "litgpt" and row["base_weights"] == "nf4")


LITGPT_QLORA = ("litgpt-llama2-7b-qlora-1xa10g", "litgpt-mistral-7b-v0.2-qlora-1xa10g",
                "litgpt-tinyllama-qlora-1xa10g")


@pytest.mark.parametrize("row_id", LITGPT_QLORA)
def test_litgpt_qlora_rows_within_ten_percent(row_id: str) -> None:
    row = _row(row_id)
    total, _ = litgpt_bnb_predict(row)
    assert abs(total / int(row["figure_bytes"]) - 1) <= WITHIN


@pytest.mark.xfail(strict=True, reason="Llama 3 8B QLoRA is +12%: bitsandbytes 0.42's forward "
                   "dequantizes its 128,256 x 4096 head whole (2.1 GB) beside both steps' kept "
                   "inputs; the rows of the same run with Llama 2's tokenizer are +2% to +4% "
                   "(see scaleplan/data/published_lora.md)")
def test_litgpt_llama3_qlora_within_ten_percent() -> None:
    row = _row("litgpt-llama3-8b-qlora-1xa10g")
    total, _ = litgpt_bnb_predict(row)
    assert abs(total / int(row["figure_bytes"]) - 1) <= WITHIN


def test_head_forward_by_hand_for_llama2_7b() -> None:
    # bitsandbytes 0.42's forward dequantizes the 32,000 x 4096 head into fp16 and bf16
    # (x 4 bytes) while the last of its 4 chunks runs, beside the three earlier bf16 chunks
    # (2 x 384 x 32,000 x 2), every saved tensor but the loss's (log-softmax 2 x 511 x 32,000
    # x 4, targets 2 x 511 x 8, 4 weight totals, the count), the states, the held fp32 logits
    # and both steps' kept inputs (1,535,115,264 bytes each: dropout, so the same tensors)
    row = _row("litgpt-llama2-7b-qlora-1xa10g")
    peak, moment = litgpt_bnb_predict(row)
    assert moment == "head_forward"
    V, d = 32000, 4096
    m = predict(row)
    loss = 2 * 511 * V * 4 + 2 * 511 * 8 + 4 * 4 + 8
    held = 2 * 512 * V * 4  # the previous step's fp32 logits list, bound until now
    assert peak == m.weights + m.gradients + m.optimizer + held + m.saved_for_backward \
        - loss + 2 * 384 * V * 2 + 4 * V * d + 2 * 1_535_115_264


def test_previous_step_inputs_by_hand_for_tinyllama() -> None:
    # TinyLlama 1.1B, b 8 x 512 (T 4096), every linear adapted with dropout 0.05: no adapter
    # saves a 4-bit linear's own input, so the previous step's inputs are this step's: per
    # layer qkv input, attention output, MLP input (d 2048 each) and product (5632), + head
    row = _row("litgpt-tinyllama-qlora-1xa10g")
    T = 4096
    both = 2 * T * (22 * (3 * 2048 + 5632) + 2048)
    assert sum(litgpt_bnb_terms(row).values()) == both == 2_139_095_040
    assert sum(litgpt_bnb_terms(row, after_backward=True).values()) == both
    assert litgpt_bnb_predict(row)[1] == "forward_end"


def test_validation_transient_by_hand_for_tinyllama_lora() -> None:
    # b 8, s 512, V 32000: the unchunked logits (b s V = 131,072,000); the largest moment is
    # the loss on fp32 logits: the logits, the sliced flat copy and its log-softmax
    # (8 x 511 x 32000 x 4 each); on top of the held training logits (b s V x 4), the weights
    # and AdamW states; no kept inputs without bitsandbytes
    row = _row("litgpt-tinyllama-lora-1xa10g")
    bsv = 8 * 512 * 32000
    transient = bsv * 4 + 2 * 8 * 511 * 32000 * 4
    phases = litgpt_phase_bytes(row)
    m = predict(row)
    assert phases["validation"] == m.weights + m.optimizer + bsv * 4 + transient
    assert phases["load"] == m.weights


def test_load_and_validation_stay_below_the_step() -> None:
    for row in ROWS:
        if row["project"] != "litgpt":
            continue
        step = litgpt_bnb_predict(row)[0] if row["base_weights"] == "nf4" \
            else predict(row).tensor_peak
        assert max(litgpt_phase_bytes(row).values()) < step, row["id"]
