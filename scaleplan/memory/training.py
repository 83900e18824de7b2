"""Training memory per GPU: `training_memory` -> `MemoryBreakdown`.

The step's worst moment is one of two: the start of backward (every saved tensor live, plus the
loss gradient's s b V buffers) or the optimizer step (saved tensors freed, optimizer temporaries
live). Both are computed and the larger is reported, so that "fits" means the step does not run
out of memory. Saved tensors are derived per operation in `scaleplan.memory.activations`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleplan.checks import is_integer, one_of
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.activations import (
    AttentionKind,
    CheckpointingKind,
    DeviceKind,
    embedding_saved_terms,
    head_saved_terms,
    layers_saved_terms,
    model_saved_terms,
)
from scaleplan.memory.options import StepOptions, overhead_bytes, step_options
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl
from scaleplan.memory.stage import Stage, stage_parts_alive
from scaleplan.memory.states import OptimizerName
from scaleplan.memory.step_switches import (
    LossKind,
    StepSwitches,
    gradients_at,
    largest_gradient_bytes,
)
from scaleplan.memory.titan_streams import step_stream_cache
from scaleplan.model.config import GPTConfig, Precision, normalize_precision
from scaleplan.model.lora import LoRA
from scaleplan.units import format_gib

__all__ = [
    "ALLOCATOR_SLACK_FRACTION",
    "CUDA_CONTEXT_BYTES",
    "MemoryBreakdown",
    "OptimizerImpl",
    "check_shape",
    "saved_for_backward_bytes",
    "training_memory",
]

MiB = 2**20

# A CUDA process's context (driver state, cuBLAS/cuDNN handles and kernels loaded by torch):
# published tools budget 650 MB to 1 GiB (design notes); a fresh torch 2.x process measures
# ~500 MiB on recent data-centre GPUs. Override with ``cuda_context_bytes=``.
CUDA_CONTEXT_BYTES = 512 * MiB
# PyTorch's caching allocator rounds blocks to 512 B and carves 2 MiB / 20 MiB segments, so
# reserved memory exceeds the live tensor peak; a few per cent is typical for a training step.
# Override with ``allocator_slack_fraction=``.
ALLOCATOR_SLACK_FRACTION = 0.05

class MemoryBreakdown(BaseModel):
    """Bytes a training step needs on one GPU, at the step's worst moment.

    ``weights + gradients + optimizer + saved_for_backward + autocast_weight_copies + transient
    + overhead == total``; ``tensor_peak == total - overhead``. Sizes are bytes (ints);
    ``str()`` prints GiB (2^30 bytes).

    >>> m = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=1024)
    >>> m.total == m.tensor_peak + m.overhead
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: int = Field(description="The parameters in their stored dtype (per GPU, sharded "
                         "as the parallelism says).")
    gradients: int = Field(description="Gradients alive at the worst moment: all of them, all "
                           "step, with gradient accumulation (the default); fp32 for "
                           "bf16-fp32-master.")
    optimizer: int = Field(description="Optimizer states, plus the fp32 master weights of "
                           "bf16-fp32-master.")
    saved_for_backward: int = Field(
        description="Everything autograd holds after forward + loss, parameters excluded: "
        "per-operation block activations, embedding ids and masks, the final norm, the output "
        "layer's input and the loss's fp32 log-softmax (s b V x 4 bytes).")
    autocast_weight_copies: int = Field(
        description="bf16/fp16 copies of the linear weights that autocast makes, live at the "
        "worst moment (0 unless bf16-mixed/16-mixed): the ones the matmuls save, and under "
        "full checkpointing every copy autocast's cache holds until the forward ends.")
    transient: int = Field(
        description="Live on top of the fields above at the worst moment: the logits and their "
        "gradient at the start of backward, or, when the optimizer step is the worst moment, its "
        "temporaries minus the saved tensors already freed by then.")
    overhead: int = Field(description="CUDA context + the side streams' cache (`stream_cache`) + "
                          "caching-allocator slack (0 on CPU).")
    total: int = Field(description="What the GPU must hold: the sum of the fields above.")
    tensor_peak: int = Field(description="total - overhead: the peak of live tensor bytes, "
                             "comparable with torch.cuda.max_memory_allocated.")
    logits: int = Field(description="Informational, inside saved_for_backward: the loss side "
                        "(fp32 log-softmax, targets).")
    stream_cache: int = Field(0, description="Informational, inside overhead: bytes the caching "
                              "allocator keeps for FSDP2's all-gather and reduce-scatter streams "
                              "beyond tensor_peak (torchtitan's FSDP2 step; 0 elsewhere), "
                              "`scaleplan.memory.titan_streams`.")
    peak_moment: Literal["forward_end", "backward_start", "recompute", "optimizer_step",
                         "head_backward", "offload_backward", "block_backward", "block_end",
                         "root_end", "backward_end"] = Field(
        description="Which moment of the step is the worst (``block_end`` and ``root_end``: "
                    "FSDP1's, `scaleplan.memory.litgpt_fsdp_terms`; ``backward_end``: a "
                    "compiled graph returning every gradient, "
                    "`scaleplan.memory.compiled_terms.compiled_end_moment`).")
    saved_breakdown: dict[str, int] = Field(
        description="saved_for_backward by operation, summed over layers.")

    @model_validator(mode="after")
    def _parts_sum_to_total(self) -> MemoryBreakdown:
        parts = (self.weights + self.gradients + self.optimizer + self.saved_for_backward
                 + self.autocast_weight_copies + self.transient + self.overhead)
        if parts != self.total or self.tensor_peak != self.total - self.overhead:
            raise ValueError(f"memory parts sum to {parts}, not total={self.total}")
        return self

    @property
    def activations(self) -> int:
        """Alias of ``saved_for_backward``."""
        return self.saved_for_backward

    def __str__(self) -> str:
        rows = ["weights", "gradients", "optimizer", "saved_for_backward",
                "autocast_weight_copies", "transient", "overhead", "total"]
        return "\n".join(f"{r:>24}: {format_gib(getattr(self, r), width=9, decimals=3)}"
                         for r in rows)


def check_shape(cfg: GPTConfig, micro_batch_size: Any, seq_len: Any) -> tuple[Any, Any]:
    """(b, s) as Python ints, or as float64 arrays for sweeps: int64 products would wrap."""
    if type(micro_batch_size) is int and type(seq_len) is int:  # the common case: fast
        b, s = micro_batch_size, seq_len
        few_b, few_s, long_s = b < 1, s < 1, s > cfg.block_size
    else:
        import numpy as np  # arrays (sweeps) only: a cold `scaleplan plan` never imports numpy

        b = _shape_value("micro_batch_size", micro_batch_size, "sequence")
        s = _shape_value("seq_len", seq_len, "token")
        few_b, few_s = bool(np.any(b < 1)), bool(np.any(s < 1))
        long_s = bool(np.any(np.asarray(s) > cfg.block_size))
    if few_b:
        raise ScaleplanError(f"micro_batch_size={micro_batch_size} must be >= 1 sequence")
    if few_s:
        raise ScaleplanError(f"seq_len={seq_len} must be >= 1 token")
    if cfg.position == "learned" and long_s:
        raise ScaleplanError(
            f"seq_len={seq_len} exceeds block_size={cfg.block_size}, the length of the learned "
            "position table; lower seq_len or raise block_size")
    return b, s


def _shape_value(name: str, value: Any, unit: str) -> Any:
    """An int (numpy ints become Python ints) or a float64 array of whole, finite values."""
    import numpy as np

    if isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or not np.isfinite(arr.astype(np.float64)).all():
            raise ScaleplanError(f"{name}={value!r} must hold finite numbers of {unit}s")
        return arr.astype(np.float64)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ScaleplanError(f"{name}={value!r} must be an int >= 1 {unit}, e.g. {name}=8")
    return int(value)


def saved_for_backward_bytes(
    cfg: GPTConfig, *, micro_batch_size: Any, seq_len: Any, precision: str = "bf16-mixed",
    attention: AttentionKind = "flash", checkpointing: CheckpointingKind = "none",
    device: DeviceKind = "cuda", layers: int | None = None,
) -> dict[str, Any]:
    """Bytes saved for backward by operation, summed over ``layers`` blocks (default all).

    Works on ints (exact) and on float64 numpy arrays of micro-batch sizes / lengths.

    >>> t = saved_for_backward_bytes(GPTConfig.preset("gpt2"), micro_batch_size=1,
    ...                              seq_len=1024, precision="32-true")
    >>> t["log_softmax"] == 1024 * 50257 * 4  # fp32 log-softmax over GPT-2's vocabulary
    True
    """
    p = normalize_precision(precision)
    one_of("attention", attention, ("flash", "eager"))
    one_of("checkpointing", checkpointing, ("none", "selective", "full"))
    one_of("device", device, ("cuda", "cpu", "cpu-cuda-semantics"))
    b, s = check_shape(cfg, micro_batch_size, seq_len)
    return _saved_terms(cfg, b, s, precision=p, attention=attention,
                        checkpointing=checkpointing, device=device,
                        layers=cfg.n_layer if layers is None else layers)


def _saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                 attention: AttentionKind, checkpointing: CheckpointingKind, device: DeviceKind,
                 layers: Any) -> dict[str, Any]:
    """`saved_for_backward_bytes` unchecked: plain arithmetic on b, s and the config's sizes,
    which `scaleplan.symbolic.formulas` also evaluates on sympy symbols."""
    p, dropout = precision, cfg.dropout > 0
    out: dict[str, Any] = dict(embedding_saved_terms(cfg, b, s, precision=p, device=device,
                                                     dropout=dropout))
    out.update(layers_saved_terms(cfg, b, s, layers, precision=p, attention=attention,
                                  checkpointing=checkpointing, device=device, dropout=dropout))
    out.update(model_saved_terms(cfg, b, s, precision=p, attention=attention,
                                 checkpointing=checkpointing, device=device))
    out.update(head_saved_terms(cfg, b, s, precision=p, device=device))
    return out


def training_memory(
    cfg: GPTConfig, *, micro_batch_size: int, seq_len: int, precision: str = "bf16-mixed",
    optimizer: str = "adamw", attention: AttentionKind = "flash",
    checkpointing: CheckpointingKind = "none", device: DeviceKind = "cuda",
    parallelism: Parallelism | None = None, optimizer_impl: OptimizerImpl | None = None,
    hold_logits: bool = True, cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    allocator_slack_fraction: float = ALLOCATOR_SLACK_FRACTION, compile: bool = False,
    implementation: str = "nanogpt", loss: LossKind = "standard",
    optimizer_in_backward: bool = False, activation_offload: bool = False,
    gradient_accumulation: bool = True, lora: LoRA | None = None,
    base_weights: str | None = None,
) -> MemoryBreakdown:
    """Memory one GPU needs to train ``cfg`` for one optimizer step.

    Args:
        cfg: the model.
        micro_batch_size: sequences per forward pass per GPU (b).
        seq_len: tokens per sequence (s).
        precision: see `scaleplan.model.config.Precision` (aliases such as ``"amp-bf16"`` accepted).
        optimizer: one of `scaleplan.memory.states.OPTIMIZERS`.
        attention: ``"flash"`` (SDPA: O(s) statistics) or ``"eager"`` (saves the s x s scores).
        checkpointing: ``"none"``, ``"selective"`` (attention core recomputed) or ``"full"``
            (only block inputs kept; one block's activations are rebuilt during backward).
        device: ``"cuda"`` or ``"cpu"`` (CPU semantics: float dropout masks, math attention
            when dropout > 0; no context overhead).
        parallelism: a `scaleplan.memory.parallel.Parallelism`, or None for one GPU. Memory is
            that of the most loaded GPU (with pipeline parallelism, the first or the last stage).
        optimizer_impl: torch's AdamW implementation; None means torch's default for the
            device (foreach on CUDA, for-loop on CPU).
        hold_logits: the training loop keeps the logits alive until the next forward replaces
            them, as nanoGPT's ``logits, loss = model(X, Y)`` does; False: dropped once the loss
            is computed (``_, loss = model(X, Y)``).
        cuda_context_bytes: CUDA context size (default `CUDA_CONTEXT_BYTES`).
        allocator_slack_fraction: allocator slack as a fraction of the tensor peak.
        compile: the model runs under ``torch.compile`` (nanoGPT's default): what inductor's
            partition saves (`scaleplan.memory.compiled_terms`: bf16 logits and no fp32
            log-softmax, bool dropout masks, cheap pointwise ops recomputed), measured exactly
            on CPU for the reference layout with SDPA attention, one GPU or data parallelism;
            with ``implementation="hf"``, `scaleplan.memory.hf_compiled_terms` (Llama, Qwen2,
            Mistral, Gemma, GPT-2, GPT-NeoX; full checkpointing for Llama and GPT-2).
        implementation: whose code runs the step: ``"nanogpt"`` (scaleplan's reference model,
            nanoGPT's layout) or ``"hf"`` (Hugging Face transformers' modeling code: separate
            q/k/v projections, RMSNorm's fp32 upcasts, rotary tables per forward, eager softmax
            in fp32, GPT-2's gelu_new; `scaleplan.memory.hf_terms`, exact against transformers
            5.25 on CPU for Llama, Qwen2, Mistral, Gemma, GPT-2 and GPT-NeoX layouts),
            ``"torchtitan"`` (torchtitan 0.3.0's Llama 3 under FSDP2 mixed precision: fp32
            shards, bf16 blocks gathered, no autocast; ``checkpointing="selective"`` is its
            per-op SAC; ``attention="flash"`` is SDPA; ``compile`` compiles each block; its
            trainer drops the logits, so ``hold_logits`` does not apply;
            `scaleplan.memory.titan_sdpa_terms` and `scaleplan.memory.titan_compiled_terms`,
            exact against torchtitan on CPU; with ``Parallelism(tensor=T)`` its tensor and
            sequence parallelism and vocabulary-parallel loss,
            `scaleplan.memory.titan_tp_terms`),
            ``"torchtune"`` (torchtune 0.6.1's Llama 3.x / Qwen2 / Gemma models and
            full_finetune_single_device's loss, bf16-true or 32-true, compiled per layer with
            ``compile``; `scaleplan.memory.tune_terms`, exact against torchtune on CPU) or
            ``"litgpt"`` (litgpt 0.5.13's GPT in its full fine-tune step, chunked loss included;
            `scaleplan.memory.litgpt_terms`, exact on CPU for Llama, Gemma, Phi-2 and Pythia
            layouts in 32-true, bf16-true and bf16-mixed).
        loss: ``"standard"`` (one cross-entropy over all logits) or ``"chunked"`` (torchtune's
            ``CEWithChunkedOutputLoss``: 8 sequence chunks, each projected and upcast to fp32
            on its own; `scaleplan.memory.step_switches`).
        optimizer_in_backward: each parameter stepped and its gradient freed as soon as it is
            ready (torchtune's ``optimizer_in_bwd``); needs ``gradient_accumulation=False``.
        activation_offload: saved activations copied to host memory (torchtune's
            ``OffloadActivations``), the loss side, small tensors and the blocks in flight left;
            with ``implementation="torchtune"`` its recipe's, which needs
            ``checkpointing="full"`` (`scaleplan.memory.tune_switches.tune_offload_stage`).
        gradient_accumulation: True: gradients resident all step (the last micro-batch of
            accumulation); False: one micro-batch per optimizer step, no gradients during
            forward and at the start of backward.
        lora: a `scaleplan.model.lora.LoRA`: the base frozen, adapters trained in fp32
            (`scaleplan.memory.lora_terms`, exact against peft on CPU; implementation="hf"),
            or with ``implementation="litgpt"`` litgpt 0.5.13's finetune/lora.py step
            (adapters in the model's dtype, "32-true" or "bf16-true", targets mapped onto
            litgpt's switches, "head" included; `scaleplan.memory.litgpt_lora_terms`, exact
            against litgpt's LoRA GPT on CPU), or with implementation="torchtune" torchtune
            0.6.1's lora_finetune_single_device in bf16 (`scaleplan.memory.tune_lora_terms`,
            exact against its LoRA models on CPU; precision="bf16-true", loss "standard" or
            "chunked", compiled with the chunked loss).
        base_weights: the frozen base's storage with ``lora``: None (the precision's weight
            dtype), "bf16", "int8", "nf4" or "nf4-dq" (QLoRA; with implementation="litgpt"
            Lightning's bitsandbytes plugin, the head quantized too, and litgpt's
            StableEmbedding swap and paged AdamW; with implementation="torchtune" "bf16" or
            "nf4", its quantize_base: torchao's NF4Tensor); an error without ``lora``.

    Gradients are resident throughout, as in the last micro-batch of gradient accumulation
    (the reference harness's ``accumulating=True``), unless ``gradient_accumulation=False``.
    The worst moment is the largest of

    - ``forward_end``: saved tensors + every autocast weight copy (autocast caches them until
      its region exits, even those checkpointing does not save) + the logits (s b V, activation
      dtype) and, under autocast, their fp32 upcast for the loss;
    - ``backward_start``: saved tensors + saved weight copies + the log-softmax's gradient and
      the logits' gradient (2 s b V in the loss dtype), Korthikanti et al. 2022's activations
      plus the loss side that their count leaves out;
    - ``recompute`` (full checkpointing): one block rebuilt during backward, its weight copies
      and its backward's gradients, once the loss side is freed;
    - ``optimizer_step``: the optimizer's temporaries (none with ``optimizer_in_backward``);
    - ``head_backward`` (``loss="chunked"``): the output layer's backward, chunk by chunk
      (`scaleplan.memory.step_switches.switch_moments`);
    - ``offload_backward`` (``activation_offload``): a block's MLP backward with its offloaded
      tensors brought back (`scaleplan.memory.step_switches.offload_backward_moment`);
    - ``block_backward`` (torchtune, ``optimizer_in_backward``, no checkpointing): the last
      layer's MLP backward stepping its down projection
      (`scaleplan.memory.tune_switches.tune_in_backward_moments`);

    each on top of weights + gradients + optimizer states, and of the held logits.

    >>> m = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=16, seq_len=1024)
    >>> m.saved_breakdown["log_softmax"] == 16 * 1024 * 50257 * 4, m.peak_moment
    (True, 'backward_start')
    """
    for name, value in (("micro_batch_size", micro_batch_size), ("seq_len", seq_len)):
        if not is_integer(value):  # not a list, a float or a bool
            raise ScaleplanError(f"{name}={shown(value)} must be an int >= 1")
    o = step_options(cfg, precision=precision, optimizer=optimizer, attention=attention,
                     checkpointing=checkpointing, device=device, parallelism=parallelism,
                     optimizer_impl=optimizer_impl, hold_logits=hold_logits,
                     cuda_context_bytes=cuda_context_bytes,
                     allocator_slack_fraction=allocator_slack_fraction, compile=compile,
                     implementation=implementation, loss=loss,
                     optimizer_in_backward=optimizer_in_backward,
                     activation_offload=activation_offload,
                     gradient_accumulation=gradient_accumulation, lora=lora,
                     base_weights=base_weights)
    micro_batch_size, seq_len = check_shape(cfg, micro_batch_size, seq_len)
    par = o.parallelism
    stages: tuple[Stage, ...] = ("only",) if par.pipeline == 1 else ("first", "last")
    found = [_stage_memory(cfg, micro_batch_size, seq_len, o.precision, o.optimizer, o.attention,
                           o.checkpointing, o.device, par, o.optimizer_impl, o.hold_logits,
                           stage, o.compile, o.implementation, o.switches, lora=o.lora,
                           base_weights=o.base_weights, options=o) for stage in stages]
    tensor_peak, fields = max(found, key=lambda f: f[0])
    overhead = overhead_bytes(o, tensor_peak, fields["stream_cache"])
    return MemoryBreakdown(**fields, overhead=overhead, total=tensor_peak + overhead,
                           tensor_peak=tensor_peak)


def _stage_memory(cfg: GPTConfig, b: int, s: int, p: Precision, opt: OptimizerName,
                  attention: AttentionKind, checkpointing: CheckpointingKind,
                  device: DeviceKind, par: Parallelism, impl: OptimizerImpl | None,
                  hold_logits: bool, stage: Stage, compiled: bool,
                  implementation: str, sw: StepSwitches, *, lora: LoRA | None = None,
                  base_weights: str | None = None,
                  options: StepOptions) -> tuple[int, dict[str, Any]]:
    """(tensor peak, breakdown fields) of one pipeline stage's GPU (``options``: the same,
    checked, for `step_stream_cache`)."""
    W, G, O, saved, copies, all_copies, held, moments, alive = stage_parts_alive(
        cfg, b, s, p, opt, attention, checkpointing, device, par, impl, hold_logits, stage,
        compiled=compiled, implementation=implementation, switches=sw, lora=lora,
        base_weights=base_weights)
    S = sum(saved.values())
    moment = max(moments, key=lambda k: moments[k])
    # the gradients and weights alive at the moment, where stage_parts_alive knows them
    grads = alive.get("gradients", {}).get(moment, gradients_at(
        moment, G, largest_gradient_bytes(cfg, p) if sw.optimizer_in_backward else 0, sw))
    weights = alive.get("weights", {}).get(moment, W)
    worst = moments[moment] + held + G - grads  # the moments count every gradient
    copies_field = all_copies if moment == "forward_end" else 0 if sw.activation_offload \
        else copies  # offloaded, the saved copies are in host memory after forward
    tensor_peak = int(W + grads + O + worst)
    return tensor_peak, dict(
        weights=int(weights), gradients=int(grads), optimizer=O, saved_for_backward=int(S),
        autocast_weight_copies=int(copies_field),
        transient=int(worst + W - weights - S - copies_field),
        logits=int(sum(saved.get(k, 0) for k in ("log_softmax", "logits", "logsumexp",
                                                  "targets"))),
        peak_moment=moment, saved_breakdown={k: int(v) for k, v in saved.items()},
        stream_cache=int(step_stream_cache(
            cfg, b, s, options, layers=cfg.n_layer if stage == "only"
            else par.layers_per_stage(cfg), states=(W, G, O), moments=moments)))
