"""litgpt 0.5.13's LoRA / QLoRA fine-tune step (``litgpt/finetune/lora.py``), term by term.

litgpt's own LoRA model (``litgpt/lora.py``) wraps every linear in a ``LoRALinear`` (lora.py:
86-167) and the fused q/k/v projection in a ``LoRAQKVLinear`` (lora.py:170-388); adapters are
switched per group by ``litgpt.lora.Config`` (lora.py:437-443): ``lora_query``, ``lora_key``,
``lora_value``, ``lora_projection`` (the attention output), ``lora_mlp`` (every linear of the
MLP at once) and ``lora_head`` (the output layer). `litgpt_lora_switches` maps `LoRA.targets`
onto them and refuses what does not map. The adapters live in the model's dtype (Fabric's
``"bf16-true"`` converts them with the base; ``"32-true"`` keeps fp32): unlike peft, no fp32
adapters.

What the step saves for backward (`litgpt_lora_saved_terms`) starts from litgpt's full
fine-tune terms (`scaleplan.memory.litgpt_terms`) and follows each operation:

- A frozen linear saves nothing of its input (its weight needs no gradient): the fused qkv
  input, the MLP input and the attention output copy go, unless an adapter's A reads the very
  tensor (no dropout). RMSNorm multiplies by a frozen weight: its normalised input goes too.
- Each ``LoRALinear`` (lora.py:163-167, ``dropout(x) @ A^T @ B^T``) saves A's input (``x``,
  or with dropout the dropout output and, where ``x`` needs a gradient, its mask: bool on a
  GPU, ``x``'s dtype on CPU) and A's output (T r).
- ``LoRAQKVLinear.forward`` (lora.py:367-386) saves A's input, A's output (T r per enabled
  projection) for the ``conv1d``; with q, k or v left out its ``zero_pad``'s ``index_copy_``
  (lora.py:293-297) saves the int64 index (the enabled widths) and B's output (T x the enabled
  widths).
- The first block's input (the frozen embedding's output) needs no gradient: its first norm
  saves nothing, nor does the q/k/v dropout keep a mask.
- The step runs the head in 128-token chunks (finetune/lora.py:355, ``lm_head_chunk_size``;
  model.py:177-179) and ``chunked_cross_entropy`` over the chunks (utils.py:314-331): one
  log-softmax per chunk (together b (s - 1) V), the targets (a view of the ids at b = 1, else
  copies), one weight total per chunk and the int64 count.

QLoRA (``base_weights`` "nf4" / "nf4-dq", ``--quantize bnb.nf4[-dq]``): Lightning's
``BitsandbytesPrecision`` replaces every ``torch.nn.Linear`` by bitsandbytes' ``Linear4bit``
(lightning/fabric/plugins/precision/bitsandbytes.py:104-124, 425-448: the head's too, quantized
from the fp16 cast, bitsandbytes.py:343); finetune/lora.py:218-228 builds bitsandbytes'
``PagedAdamW`` over all parameters and then swaps the token embedding for a ``StableEmbedding``
(an embedding and a LayerNorm, both trainable and in no optimizer), so the first block's input
needs a gradient and every block saves as the others. bitsandbytes 0.50.2's ``MatMul4Bit``
keeps ``(None, B)`` (autograd/_functions.py:358): a 4-bit linear saves no input. The 0.42.0
that litgpt pins (finetune/lora.py:144-147) kept ``(A, B)``: ``bnb_keeps_input=True`` adds
those inputs (not an option of `scaleplan.training_memory`; benchmarks/published_lora.py uses
it for the published rows).

Measured on CPU with litgpt's own LoRA ``GPT`` (``python -m
scaleplan.reference.litgpt_lora_measure --grid``, docs/validation/litgpt-lora-memory.md).
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.litgpt_terms import (
    litgpt_block_saved_terms,
    litgpt_embedding_saved_terms,
    litgpt_head_saved_terms,
    litgpt_model_saved_terms,
)
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.lora import LoRA

__all__ = [
    "HEAD_CHUNK",
    "LITGPT_LORA_PRECISIONS",
    "QUANTIZED_BASES",
    "check_litgpt_lora",
    "litgpt_bnb_saved_inputs",
    "litgpt_lora_adapter_shapes",
    "litgpt_lora_block_saved_terms",
    "litgpt_lora_loss_saved_terms",
    "litgpt_lora_saved_terms",
    "litgpt_lora_switches",
    "model_bytes",
]

HEAD_CHUNK = 128  # finetune/lora.py:355, model(input_ids, lm_head_chunk_size=128)
LITGPT_LORA_PRECISIONS = ("32-true", "bf16-true")
"""Fabric precisions of the LoRA step modelled (QLoRA: "bf16-true" only)."""
FP32 = 4
HALF = 2
INDEX = 8  # int64
QUANTIZED_BASES = ("nf4", "nf4-dq")
"""The 4-bit bases of litgpt's QLoRA (``--quantize bnb.nf4`` / ``bnb.nf4-dq``)."""
_LLAMA = {"mlp": "swiglu", "norm": "rmsnorm", "parallel": "none", "position": "rope"}


def litgpt_lora_switches(lora: LoRA) -> dict[str, bool]:
    """``litgpt.lora.Config``'s switches for ``lora.targets``; "gate", "up" and "down" are one
    switch, ``lora_mlp`` (all three or none), "head" is ``lora_head``.

    >>> litgpt_lora_switches(LoRA(8, targets=("q", "v")))["lora_value"]
    True
    >>> litgpt_lora_switches(LoRA(8, targets=("q", "up")))
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: lora targets ('up',) of the MLP, but litgpt adapts its MLP ...
    """
    t = lora.targets
    mlp = tuple(x for x in ("gate", "up", "down") if x in t)
    if mlp and len(mlp) != 3:
        raise ScaleplanError(f"lora targets {mlp!r} of the MLP, but litgpt adapts its MLP whole "
                             "(lora_mlp: fc_1, fc_2 and proj); use all of 'gate', 'up', 'down' "
                             "or none")
    return {"lora_query": "q" in t, "lora_key": "k" in t, "lora_value": "v" in t,
            "lora_projection": "o" in t, "lora_mlp": bool(mlp), "lora_head": "head" in t}


def check_litgpt_lora(cfg: GPTConfig, lora: LoRA, base_weights: str | None, *,
                      precision: str, checkpointing: str, optimizer: str) -> None:
    """Refuse, by name, what `litgpt_lora_saved_terms` does not model: layouts other than
    Llama's (SwiGLU, RMSNorm, sequential blocks), precisions other than
    `LITGPT_LORA_PRECISIONS` (QLoRA: "bf16-true"), checkpointing (finetune/lora.py runs one
    device without it), targets without q, k or v, and QLoRA with another optimizer than AdamW
    (litgpt's ``instantiate_bnb_optimizer`` takes AdamW only)."""
    odd = [f"{k}={getattr(cfg, k)!r}" for k, v in _LLAMA.items() if getattr(cfg, k) != v]
    if cfg.tie_embeddings:
        odd.append("tie_embeddings=True")
    if cfg.sliding_window is not None:
        odd.append(f"sliding_window={cfg.sliding_window}")
    if odd:
        raise ScaleplanError("lora with implementation='litgpt' is modelled for litgpt's "
                             f"Llama layout (measured); not yet with {', '.join(odd)}")
    if precision not in LITGPT_LORA_PRECISIONS:
        raise ScaleplanError(f"lora with implementation='litgpt' and precision={precision!r} "
                             "is not modelled yet; use 'bf16-true' or '32-true'")
    if base_weights not in (None, "bf16", *QUANTIZED_BASES):
        raise ScaleplanError(f"base_weights={base_weights!r} with implementation='litgpt' is "
                             "not modelled yet; use None / 'bf16' (with precision='bf16-true') "
                             "or 'nf4' / 'nf4-dq' (QLoRA)")
    if base_weights is not None and precision != "bf16-true":
        raise ScaleplanError(f"base_weights={base_weights!r} with implementation='litgpt' "
                             f"needs precision='bf16-true', not {precision!r} (litgpt's "
                             "quantized base computes in bf16; base_weights=None for 32-true)")
    if optimizer != "adamw":
        what = ("litgpt builds bitsandbytes' PagedAdamW for QLoRA" if base_weights in
                QUANTIZED_BASES else "its LoRA configs train with AdamW; others are not "
                "modelled yet")
        raise ScaleplanError(f"optimizer={optimizer!r} with lora and implementation='litgpt': "
                             f"{what}; use optimizer='adamw'")
    if checkpointing != "none":
        raise ScaleplanError(f"checkpointing={checkpointing!r} with lora and implementation="
                             "'litgpt': finetune/lora.py runs on one device without "
                             "checkpointing; use 'none'")
    if not any(x in lora.targets for x in ("q", "k", "v")):
        raise ScaleplanError(f"lora targets {lora.targets!r} without q, k or v with "
                             "implementation='litgpt' are not modelled yet; add 'q' and 'v'")
    litgpt_lora_switches(lora)


def model_bytes(precision: str) -> int:
    """Bytes of the model's dtype: the parameters, adapters and activations."""
    return FP32 if precision == "32-true" else HALF


def litgpt_lora_adapter_shapes(cfg: GPTConfig, lora: LoRA) -> list[tuple[Any, Any]]:
    """(rows, cols) of one block's adapter tensors in litgpt: one A (r per enabled projection
    x d) and one B (enabled widths x r) for the fused q/k/v (lora.py:244-258), A (r x in) and B
    (out x r) for every other adapted linear. The head's pair is not in it.

    >>> litgpt_lora_adapter_shapes(GPTConfig.preset("llama-3-8b"), LoRA(32, targets=("q", "v")))
    [(64, 4096), (5120, 32)]
    """
    r, t = lora.rank, lora.targets
    d, f, q = cfg.n_embd, cfg.mlp_hidden, cfg.n_head * cfg.head_dim
    kv = cfg.n_kv_head * cfg.head_dim
    widths = [w for name, w in (("q", q), ("k", kv), ("v", kv)) if name in t]
    shapes: list[tuple[Any, Any]] = [(r * len(widths), d), (sum(widths), r)] if widths else []
    if "o" in t:
        shapes += [(r, q), (d, r)]
    if "down" in t:
        shapes += [(r, d), (f, r), (r, d), (f, r), (r, f), (d, r)]
    return shapes


def _qkv_adapter(cfg: GPTConfig, lora: LoRA, T: Any, e: int, *, dropout: bool, grad_in: bool,
                 mask: int) -> dict[str, Any]:
    """What ``LoRAQKVLinear`` saves: A's input, A's output, and for a partial q/k/v set the
    zero pad's index and B's output."""
    d, q, kv = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    widths = [w for name, w in (("q", q), ("k", kv), ("v", kv)) if name in lora.targets]
    terms: dict[str, Any] = {"lora_qkv_a_input": T * d * e,
                             "lora_qkv_a_output": T * lora.rank * len(widths) * e}
    if dropout and grad_in:
        terms["lora_qkv_dropout_mask"] = T * d * mask
    if len(widths) < 3:  # zero_pad's index_copy_ keeps the index and its source
        terms["lora_qkv_pad_index"] = sum(widths) * INDEX
        terms["lora_qkv_b_output"] = T * sum(widths) * e
    return terms


def _linear_adapters(group: str, widths: list[Any], T: Any, r: int, e: int, *,
                     dropout: bool, mask: int) -> dict[str, Any]:
    """What the ``LoRALinear`` adapters reading one tensor save: each one's dropout output and
    mask (or, without dropout, the shared input once: ``lora_<group>_a_input`` 0 where the
    tensor is already counted) and each one's A output."""
    terms: dict[str, Any] = {f"lora_{group}_a_output": len(widths) * T * r * e}
    if dropout:
        terms[f"lora_{group}_a_input"] = sum(T * n * e for n in widths)
        terms[f"lora_{group}_dropout_mask"] = sum(T * n * mask for n in widths)
    return terms


def litgpt_lora_block_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                                  precision: Precision, device: str = "cpu",
                                  first: bool = False) -> dict[str, Any]:
    """Bytes one litgpt ``Block`` with ``lora``'s adapters saves for backward, by tensor.

    From `scaleplan.memory.litgpt_terms.litgpt_block_saved_terms` (T = b s tokens, e the
    model's bytes): the frozen linears' inputs and the norms' normalised inputs go; the
    attention output copy (``proj_input``, T a h e) and the MLP product (T f e) stay only
    where an adapter without dropout reads them; the adapters' terms are added (module
    docstring). ``first``: the first block, whose input needs no gradient.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, position="rope", norm="rmsnorm", mlp="swiglu")
    >>> t = litgpt_lora_block_saved_terms(cfg, LoRA(2, targets=("q", "v")), 1, 4,
    ...                                   precision="32-true")
    >>> t["lora_qkv_a_input"], t["lora_qkv_pad_index"]  # x 4 x 8 fp32; q and v widths 8 + 4
    (128, 128)
    """
    e = model_bytes(precision)
    mask = 1 if device != "cpu" else e  # dropout's mask: bool on CUDA, the input's dtype on CPU
    dropout, r, T = lora.dropout > 0, lora.rank, b * s
    d, f, ah = cfg.n_embd, cfg.mlp_hidden, cfg.n_head * cfg.head_dim
    on = litgpt_lora_switches(lora)
    t = litgpt_block_saved_terms(cfg, b, s, precision=precision, device=device)
    for key in ("qkv_input", "mlp_input", "norm1_normalized", "norm2_normalized"):
        t.pop(key, None)
    if first:
        for key in [k for k in t if k.startswith("norm1_")]:
            del t[key]
    if not on["lora_projection"] or dropout:
        del t["proj_input"]
    if not on["lora_mlp"] or dropout:  # the product is proj's input only
        t["mlp_activations"] -= T * f * e
    t.update(_qkv_adapter(cfg, lora, T, e, dropout=dropout, grad_in=not first, mask=mask))
    if on["lora_projection"]:
        t.update(_linear_adapters("proj", [ah], T, r, e, dropout=dropout, mask=mask))
    if on["lora_mlp"]:
        t.update(_linear_adapters("mlp", [d, d, f], T, r, e, dropout=dropout, mask=mask))
        if not dropout:  # fc_1 and fc_2 read norm_2's output (its cast), proj the product
            t["lora_mlp_a_input"] = T * d * e
    return t


def litgpt_lora_loss_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                                 ids_saved: bool = False) -> dict[str, Any]:
    """``chunked_cross_entropy`` over the head's chunks (utils.py:314-331), on fp32 logits
    (Fabric's ``convert_output`` casts every chunk the model returns to the default dtype,
    lightning/fabric/wrappers.py:138; ``precision`` is checked only): the log-softmax of every
    chunk (b (s - 1) V x 4 together), the targets (b (s - 1) int64 copies for b > 1; at b = 1
    views of the ids, s int64, counted here unless ``ids_saved``: the embedding saves them), one
    fp32 weight total per chunk (ceil(s / 128)) and the int64 count.

    >>> litgpt_lora_loss_saved_terms(GPTConfig(vocab_size=16), 1, 130, precision="bf16-true")
    {'log_softmax': 8256, 'targets': 1040, 'loss_weight_totals': 8, 'loss_count': 8}
    """
    model_bytes(precision)
    one = b == 1  # a bool, or an array of them (memory_grid)
    targets = one * (0 if ids_saved else s * INDEX) + (1 - one) * b * (s - 1) * INDEX
    return {"log_softmax": b * (s - 1) * cfg.vocab_size * FP32, "targets": targets,
            "loss_weight_totals": (s + HEAD_CHUNK - 1) // HEAD_CHUNK * FP32,
            "loss_count": INDEX}


def _head_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *, precision: Precision,
                device: str) -> dict[str, Any]:
    """The final norm (its normalised input goes: frozen weight) and a LoRA head's adapter
    (its input is the final norm's output, split into chunks: one storage)."""
    e, T = model_bytes(precision), b * s
    t = litgpt_head_saved_terms(cfg, b, s, precision=precision, device=device)
    t.pop("final_norm_normalized")
    t.pop("lm_head_input")
    if "head" in lora.targets:
        t.update(_linear_adapters("head", [cfg.n_embd], T, lora.rank, e,
                                  dropout=lora.dropout > 0,
                                  mask=1 if device != "cpu" else e))
        if lora.dropout == 0:
            t["lora_head_a_input"] = T * cfg.n_embd * e
    return t


def litgpt_bnb_saved_inputs(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                            precision: Precision = "bf16-true", after_backward: bool = False
                            ) -> dict[str, Any]:
    """The inputs bitsandbytes 0.42.0's ``MatMul4Bit`` keeps (``ctx.tensors = (A, B)``) that
    no other operation of litgpt's QLoRA step saves, by tensor, all blocks: the fused qkv's
    input (norm_1's output, T d), the attention output copy (T a h), the MLP input (norm_2's
    output, shared by fc_1 and fc_2, T d), the MLP product (T f) and the head's input (T d),
    each unless an adapter without dropout already saves it. 0.50.2 keeps none.
    ``after_backward``: what the attributes still hold once backward has freed the saved
    tensors (the graph kept alive, `scaleplan.memory.litgpt_lora_states.litgpt_lora_moments`):
    every one of these inputs, shared with an adapter or not.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, position="rope", norm="rmsnorm", mlp="swiglu")
    >>> sum(litgpt_bnb_saved_inputs(cfg, LoRA(2, targets=("q", "v"), dropout=0.1), 1, 4
    ...                             ).values())  # 2 bytes x 4 x (2 (8 + 8 + 8 + 16) + 8)
    704
    """
    e, T, on = model_bytes(precision), b * s, litgpt_lora_switches(lora)
    dropout, L = lora.dropout > 0, cfg.n_layer
    d, f, ah = cfg.n_embd, cfg.mlp_hidden, cfg.n_head * cfg.head_dim
    kept = {"qkv": not dropout, "proj": on["lora_projection"] and not dropout,
            "mlp": on["lora_mlp"] and not dropout, "head": on["lora_head"] and not dropout}
    if after_backward:
        kept = dict.fromkeys(kept, False)
    terms = {"bnb_qkv_input": 0 if kept["qkv"] else L * T * d * e,
             "bnb_proj_input": 0 if kept["proj"] else L * T * ah * e,
             "bnb_mlp_input": 0 if kept["mlp"] else L * T * d * e,
             "bnb_mlp_product": 0 if kept["mlp"] else L * T * f * e,
             "bnb_head_input": 0 if kept["head"] else T * d * e}
    return terms


def litgpt_lora_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                            precision: Precision, base_weights: str | None = None,
                            device: str = "cpu", bnb_keeps_input: bool = False
                            ) -> dict[str, Any]:
    """Bytes saved for backward by one forward + chunked loss of litgpt's LoRA step, by term,
    summed over blocks: the first block (`litgpt_lora_block_saved_terms` with ``first``) and
    ``n_layer - 1`` others, the rotary tables, the head and the loss
    (`litgpt_lora_loss_saved_terms`). QLoRA (``base_weights`` "nf4"/"nf4-dq"): the
    ``StableEmbedding`` (trainable) saves the ids and its LayerNorm's input and statistics, and
    the first block saves as the others; ``bnb_keeps_input``: bitsandbytes 0.42's kept inputs
    (`litgpt_bnb_saved_inputs`).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, position="rope", norm="rmsnorm", mlp="swiglu")
    >>> litgpt_lora_saved_terms(cfg, LoRA(2, targets=("q", "v")), 1, 4,
    ...                         precision="32-true")["log_softmax"]  # 3 rows x 16 x 4
    192
    """
    qlora = base_weights in QUANTIZED_BASES
    e = model_bytes(precision)
    first = litgpt_lora_block_saved_terms(cfg, lora, b, s, precision=precision, device=device,
                                          first=not qlora)
    rest = litgpt_lora_block_saved_terms(cfg, lora, b, s, precision=precision, device=device)
    n = cfg.n_layer
    out: dict[str, Any] = {}
    if qlora:  # StableEmbedding: F.embedding saves the ids; its LayerNorm input and stats
        out.update(litgpt_embedding_saved_terms(cfg, b, s, precision=precision))
        stat = e if device == "cpu" else FP32
        out.update(embedding_norm_input=b * s * cfg.n_embd * e, embedding_norm_stats=2 * b * s
                   * stat)
    for key in first.keys() | rest.keys():
        out[key] = first.get(key, 0) + (n - 1) * rest.get(key, 0)
    out.update(litgpt_model_saved_terms(cfg, b, s, precision=precision))
    out.update(_head_terms(cfg, lora, b, s, precision=precision, device=device))
    out.update(litgpt_lora_loss_saved_terms(cfg, b, s, precision=precision, ids_saved=qlora))
    if qlora and bnb_keeps_input:
        out.update(litgpt_bnb_saved_inputs(cfg, lora, b, s, precision=precision))
    return out
