"""bitsandbytes 0.42.0's 4-bit matmul replayed on CPU, for litgpt's published QLoRA rows.

litgpt 0.5.13 supports only bitsandbytes 0.42.0 (finetune/lora.py:144-147), whose
``MatMul4Bit.forward`` keeps its input as a plain ``ctx`` attribute, ``ctx.tensors = (A, B)``
(bitsandbytes/autograd/_functions.py, read at TimDettmers/bitsandbytes@29e3420c, a later
commit whose ``MatMul4Bit`` is 0.42's; the 0.42.0 tag itself was not read); the installed
0.50.2 keeps ``(None, B)``. Autograd frees saved tensors after backward, not a node's attributes, so
those inputs live as long as the graph: in litgpt's ``fit`` until the next step's
``logits = model(...)`` returns. `bnb_042_kept_inputs` makes the installed forward keep its input
as 0.42.0 did; `bnb_042_step_grid` measures whole QLoRA steps with it
(`scaleplan.reference.litgpt_lora_measure.measure_litgpt_lora_step`'s ``bnb_keeps_input``)
beside `scaleplan.memory.litgpt_lora_states.litgpt_bnb_tensor_peak`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch

from scaleplan.model.config import GPTConfig

__all__ = ["BNB_042_STEP_CASES", "WIDE_LLAMA", "bnb_042_kept_inputs", "bnb_042_lines",
           "bnb_042_step_grid"]

BNB_042_STEP_CASES = (("llama", "qv-dropout", 2, 48), ("llama", "qv", 2, 48),
                      ("tinyllama", "all-dropout", 2, 48), ("tinyllama", "all", 1, 160),
                      ("llama-wide", "qv-dropout", 1, 16), ("llama-wide", "qv-dropout", 2, 16))
"""(shape, adapters, b, s) of the QLoRA steps (bf16-true, nf4) run with bitsandbytes 0.42.0's
kept inputs (`measure_litgpt_lora_step`'s ``bnb_keeps_input``): with and without dropout
(without, the adapters save the same inputs during the step, but not after its backward), and
a wide model (`WIDE_LLAMA`) whose head's dequantized backward is the worst moment, as in the
published Llama 3 8B row."""

WIDE_LLAMA = GPTConfig(n_layer=2, n_head=4, n_kv_head=1, head_dim=128, n_embd=512,
                       mlp_hidden=1024, vocab_size=4096, block_size=256, bias=False,
                       mlp="swiglu", norm="rmsnorm", position="rope", tie_embeddings=False)
"""``llama-wide``: d 512 against a 4096-token vocabulary, so that the head's dequantized
weight (V d x 4 bytes) outweighs the loss's chunks at a few tokens."""


@contextlib.contextmanager
def bnb_042_kept_inputs(record: list[torch.Tensor]) -> Iterator[None]:
    """bitsandbytes 0.42.0's ``MatMul4Bit.forward`` within the block: the whole weight
    dequantized (``F.dequantize_4bit(B, quant_state)``, in the quant state's dtype, fp16 here)
    and copied to A's dtype for ``F.linear``, and ``ctx.tensors = (A, B)`` where any of A, B
    needs a gradient (bitsandbytes/autograd/_functions.py, read at TimDettmers/
    bitsandbytes@29e3420c); 0.50.2's runs a fused ``gemm_4bit`` and keeps ``(None, B)``. Its
    backward (which reads only B) is left as installed. Every kept input is appended to
    ``record``."""
    fns: Any = importlib.import_module("bitsandbytes.autograd._functions")
    functional: Any = importlib.import_module("bitsandbytes.functional")
    original = fns.MatMul4Bit.forward

    def forward(ctx: Any, A: torch.Tensor, B: torch.Tensor, out: Any = None, bias: Any = None,
                quant_state: Any = None) -> torch.Tensor:
        ctx.is_empty = False
        B = B.view(-1, 1)  # the installed backward's canonical layout
        output = torch.nn.functional.linear(
            A, functional.dequantize_4bit(B, quant_state).to(A.dtype), bias)
        ctx.state = quant_state
        ctx.dtype_A, ctx.dtype_B = A.dtype, B.dtype
        ctx.dtype_bias = None if bias is None else bias.dtype
        ctx.tensors = (A, B) if any(ctx.needs_input_grad[:2]) else (None, None)
        if ctx.tensors[0] is not None:
            record.append(A)
        return output

    fns.MatMul4Bit.forward = staticmethod(forward)
    try:
        yield
    finally:
        fns.MatMul4Bit.forward = staticmethod(original)


def bnb_042_step_grid() -> list[dict[str, Any]]:
    """Each `BNB_042_STEP_CASES` step's live peak beside
    `scaleplan.memory.litgpt_lora_states.litgpt_bnb_tensor_peak` (device "cpu", for-loop)."""
    from scaleplan.memory.litgpt_lora_states import litgpt_bnb_tensor_peak
    from scaleplan.reference.litgpt_lora_measure import GRID_LORAS, measure_litgpt_lora_step
    from scaleplan.reference.litgpt_measure import GRID_SHAPES

    rows = []
    for name, which, b, s in BNB_042_STEP_CASES:
        cfg, lora = {**GRID_SHAPES, "llama-wide": WIDE_LLAMA}[name], GRID_LORAS[which]
        peak, resident = measure_litgpt_lora_step(cfg, lora, micro_batch_size=b, seq_len=s,
                                                  base_weights="nf4", bnb_keeps_input=True)
        pred, moment = litgpt_bnb_tensor_peak(cfg, lora, b, s, base_weights="nf4",
                                              device="cpu", impl="for-loop")
        rows.append({"model": name, "precision": "bf16-true", "lora": which,
                     "base_weights": "nf4", "micro_batch_size": b, "seq_len": s,
                     "measured": peak, "resident": resident, "predicted": pred,
                     "moment": moment, "error": pred / peak - 1})
    return rows


def bnb_042_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown section of `bnb_042_step_grid`'s rows."""
    worst = max(abs(r["error"]) for r in rows)
    lines = [
        "", "## QLoRA steps as bitsandbytes 0.42.0 ran them", "",
        "`measure_litgpt_lora_step(..., bnb_keeps_input=True)`: the installed bitsandbytes' "
        "`MatMul4Bit` made to keep its input as 0.42.0's did (`ctx.tensors = (A, B)`, a plain "
        "attribute that outlives backward while the loop holds the logits and so the graph), "
        "beside `scaleplan.memory.litgpt_lora_states.litgpt_bnb_tensor_peak`. `resident` "
        "includes the previous step's kept inputs. "
        f"{len(rows)} steps, largest |error| {worst:.3%}.", "",
        "| model | adapters | b | s | resident | measured | predicted | worst moment | error |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['model']} | {r['lora']} | {r['micro_batch_size']} | {r['seq_len']} "
              f"| {r['resident']:,} | {r['measured']:,} | {r['predicted']:,} | {r['moment']} "
              f"| {r['error']:+.3%} |" for r in rows]
    return lines
