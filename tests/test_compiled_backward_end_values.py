"""`compiled_backward_end_bytes` and its moment in `training_memory`, by hand (torch-free).

The compiled backward graph of a whole model returns every gradient at once (new buffers,
alive until it returns; AccumulateGrad adds them into ``.grad`` afterwards): measured on CPU,
tests/data/compiled_step_peaks.json (tests/test_compiled_step_peaks_replay.py).
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.compiled_terms import (
    COMPILED_BACKWARD_MOMENT,
    compiled_backward_end_bytes,
    compiled_end_moment,
)
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

TIED = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=320)
UNTIED = TIED.replace(tie_embeddings=False)


def test_the_moment_is_named_among_training_memorys() -> None:
    assert COMPILED_BACKWARD_MOMENT == "backward_end"


@pytest.mark.parametrize(("precision", "tied"), [
    ("32-true", 320 * 64 * 4),  # one fp32 partial beside the sum written over the other
    ("bf16-mixed", 320 * 64 * (4 + 2)),  # the fp32 and the 16-bit partial, the sum fp32
    ("16-mixed", 320 * 64 * (4 + 2)),
])
def test_new_gradients_and_the_tied_partial(precision: str, tied: int) -> None:
    assert compiled_backward_end_bytes(TIED, precision=precision, gradients=1000,
                                       accumulating=True) == 1000 + tied
    assert compiled_backward_end_bytes(TIED, precision=precision, gradients=1000,
                                       accumulating=False) == tied
    assert compiled_backward_end_bytes(UNTIED, precision=precision, gradients=1000,
                                       accumulating=True) == 1000
    assert compiled_backward_end_bytes(UNTIED, precision=precision, gradients=1000,
                                       accumulating=False) == 0
    # no gradient at all (a frozen model): nothing, not a division
    assert compiled_backward_end_bytes(UNTIED, precision=precision, gradients=0,
                                       accumulating=False) == 0
    # a stage without both ends holds no shared weight's two gradients
    assert compiled_backward_end_bytes(TIED, precision=precision, gradients=1000,
                                       accumulating=True, both_ends=False) == 1000


def test_precisions_not_measured_are_refused() -> None:
    with pytest.raises(ScaleplanError, match="compile=True is modelled for precision"):
        compiled_backward_end_bytes(TIED, precision="bf16-true", gradients=0,
                                    accumulating=True)


def _small(**kw: object) -> object:
    return training_memory(TIED, micro_batch_size=2, seq_len=24, precision="32-true",
                           compile=True, device="cpu-cuda-semantics", optimizer_impl="fused",
                           **kw)  # type: ignore[arg-type]


def test_few_tokens_peak_at_the_backward_end_by_hand() -> None:
    # nanoGPT's layout, fp32, 2 x 24 tokens, 498688 bytes of gradients (2 blocks of 49984
    # parameters, wte 20480, wpe 4096, ln_f 128; x 4): with accumulation the moment holds
    # them twice (W, G, O outside it), the embedding's V d 4 partial gradient of the tied
    # weight, the held logits T V 4 = 61440 and the batch the loop holds (ids 384, targets
    # 384 + the mean's fp32 divisor 4); and, the tied sum folded into the head's weight
    # gradient (addmm, last), the logits' gradient T V 4 = 61440 and the head's input
    # T d 4 = 12288 (the first block's last kernel holds less than the sum's V d 4 = 81920:
    # 36864 + 12288 + 12288 + 384 + 12288 + 192 + 192 = 74496, scaleplan.memory.compiled_end)
    G = (2 * 49984 + 20480 + 4096 + 128) * 4
    assert G == 498688
    m = _small(hold_logits=True)
    assert m.peak_moment == "backward_end"  # type: ignore[attr-defined]
    extra = G + 81920 + 48 * 320 * 4 + 384 + 384 + 4 + 61440 + 12288
    assert m.tensor_peak == m.weights + m.gradients + m.optimizer + extra  # type: ignore[attr-defined]
    # without accumulation the same bytes above the step's start (the measured equality)
    fresh = _small(hold_logits=True, gradient_accumulation=False)
    assert fresh.tensor_peak == m.tensor_peak - G  # type: ignore[attr-defined]
    # the logits dropped after the loss: 61440 fewer at the end, still the worst moment (the
    # logits' gradient and the head's input are kept for the late head weight gradient)
    dropped = _small(hold_logits=False)
    assert dropped.peak_moment == "backward_end"  # type: ignore[attr-defined]
    assert dropped.tensor_peak == m.tensor_peak - 61440  # type: ignore[attr-defined]


def test_not_taken_where_the_graph_is_split_or_rebuilt() -> None:
    # DDP splits a compiled graph per gradient bucket; checkpointed blocks are rebuilt by
    # the backward (their moment is the recompute): no backward-end moment there
    ddp = _small(parallelism=Parallelism(data=2))
    assert ddp.peak_moment != "backward_end"  # type: ignore[attr-defined]
    full = _small(checkpointing="full")
    assert full.peak_moment != "backward_end"  # type: ignore[attr-defined]


def test_a_7b_model_under_accumulation_holds_its_gradients_twice() -> None:
    # Llama-2-7B (6,738,415,616 parameters), transformers' code compiled, bf16 autocast
    # (fp32 gradients, 26,953,662,464 bytes), one sequence of 2048 tokens, fused AdamW: the
    # backward's end holds a second set of gradients, more than the backward's start
    cfg = GPTConfig.preset("llama-2-7b")
    kw = dict(micro_batch_size=1, seq_len=2048, precision="bf16-mixed", compile=True,
              implementation="hf", optimizer_impl="fused")
    acc = training_memory(cfg, **kw)  # type: ignore[arg-type]
    assert acc.gradients == 6_738_415_616 * 4
    assert acc.peak_moment == "backward_end"
    fresh = training_memory(cfg, gradient_accumulation=False, **kw)  # type: ignore[arg-type]
    # untied: the moment is the gradients alone (and the batch's ids, 2048 x 8), so the step
    # with accumulation needs exactly one more set of gradients
    assert acc.tensor_peak - fresh.tensor_peak == acc.gradients


def test_the_moment_holds_the_loops_batch_and_logits() -> None:
    saved = {"token_ids": 384, "targets": 388, "logits": 61440}
    step = (True, "none", True, True, True)
    tied = 320 * 64 * 4
    # nanoGPT's loop holds X and Y (the targets term: ids and the mean's fp32 divisor)
    assert compiled_end_moment(TIED, "32-true", 1000, 61440, saved, "nanogpt", step) == {
        "backward_end": 61440 + 384 + 388 + 1000 + tied}
    # transformers' labels are the token ids themselves
    assert compiled_end_moment(TIED, "32-true", 1000, 0, saved, "hf", step) == {
        "backward_end": 384 + 1000 + tied}
    # fresh: the new gradients are the ones the step counts
    assert compiled_end_moment(UNTIED, "32-true", 1000, 0, saved, "hf",
                               (True, "none", True, True, False)) == {"backward_end": 384}


@pytest.mark.parametrize("where", [
    (False, "none", True, True),  # eager
    (True, "full", True, True),  # checkpointed blocks: rebuilt, their recompute moment
    (True, "none", False, True),  # data parallel: DDP splits the graph per bucket
    (True, "none", True, False),  # a memory-saving switch besides accumulation
])
def test_no_moment_where_the_graph_is_not_one(where: tuple[bool, str, bool, bool]) -> None:
    assert compiled_end_moment(TIED, "32-true", 1000, 0, {"token_ids": 384}, "hf",
                               (*where, True)) == {}
