"""Bytes a LoRA fine-tune (peft on transformers' modeling code) saves for backward, and holds.

With LoRA (`scaleplan.model.lora`) the base model is frozen, which changes what autograd keeps,
operation by operation (peft 0.21.2 ``tuners/lora/layer.py``, ``Linear.forward``:
``result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``):

- A frozen linear's backward needs only its weight (for the input's gradient), so base linears
  no longer save their inputs. What still holds an input is the adapter: A saves its input x
  (the same storage as the base layer's input when dropout is 0 and no cast is made), B saves
  A's output (T x r). With dropout > 0, A saves the dropout's output instead and the dropout
  its mask (T x in; fp32 on CPU, bool on CUDA); x itself is then kept by nothing.
- Under autocast, peft first casts x to the adapter's dtype (fp32, peft's default
  ``autocast_adapter_dtype=True``), so a 16-bit input (attention output, MLP product) becomes
  an fp32 copy, and autocast casts it back to 16 bits for A's matmul: every adapter saves its
  own 16-bit copy of its input (T x in x 2), never shared with the other adapters.
- Frozen norm weights: RMSNorm's final ``weight * x`` saves nothing (its fp32 normalised input
  goes); LayerNorm's kernel saves what it did (input, mean, rstd).
- The frozen embedding saves no ids, and its output needs no gradient: the first block's input
  norm saves nothing, nor does a frozen linear whose input needs no gradient (the first
  block's q/k/v projections), nor the dropout before a first-block adapter. The first block's
  attention saves what it did when any of q, k, v has an adapter (the rotated k needs no
  gradient with targets ("q", "v"), so eager attention then keeps no copy of q).
- The frozen output layer saves no input; the loss side is unchanged.
- Autocast's weight copies: a frozen weight is not cached by autocast (only leaf tensors that
  need a gradient are), but a frozen linear whose input needs a gradient saves its 16-bit copy
  for backward; every adapter's A and B copies are cached until autocast exits and saved.

The terms follow `scaleplan.memory.hf_terms` (one dict of named byte terms; plain ``+``/``*``
on ``b`` and ``s``), starting from its per-layer terms. Exact against peft 0.21.2 on CPU for
Llama, Qwen2 and GPT-2 layouts, with an fp32, bf16 or bitsandbytes NF4 / NF4-DQ base (160
cases: ``python -m scaleplan.reference.peft_measure --grid``, then ``--qlora``;
docs/validation/lora-memory.md). Targets that leave the first block's q, k and v without an
adapter (MLP-only LoRA) are counted as if its MLP input needed a gradient, an upper bound not
measured. An int8 base (bitsandbytes' LLM.int8 ``Linear8bitLt``) is counted as a 16-bit one:
on CPU it also keeps state of its own between forward and backward, outside autograd's saved
tensors (218,624 bytes more in a 2-layer d 128 Llama at 2 x 48 tokens), not modelled.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.hf_terms import (
    HFAttention,
    HFDevice,
    hf_block_saved_terms,
    hf_family,
    hf_head_saved_terms,
    hf_model_saved_terms,
)
from scaleplan.memory.lora_states import LORA_FAMILIES, lora_model_states
from scaleplan.memory.quantized import dequantized_linear_bytes
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.lora import LoRA, adapter_params, adapter_shapes, fused_qkv

__all__ = ["LORA_FAMILIES", "lora_block_saved_terms", "lora_recompute_moment",
           "lora_saved_terms", "lora_stage_parts", "lora_weight_copy_bytes"]

FP32 = 4
HALF = 2
INDEX = 8  # int64 ids
_AUTOCAST = frozenset({"bf16-mixed", "16-mixed"})
_CORE = ("attn_lse", "attn_out", "qkv", "rope_qk", "v", "q_k_v_copies", "attn_probs",
         "attn_dropout_mask", "attn_dropped", "attn_probs_cast", "fused_qkv_view",
         "dense_input")


def _groups(cfg: GPTConfig, lora: LoRA) -> dict[str, Any]:
    """Adapted roles by the tensor they read: the first norm's output (q, k, v or the fused
    qkv), the attention output (o), the second norm's output (gate, up), the MLP product
    (down); with each input's width."""
    shapes = adapter_shapes(cfg, lora)
    return {"norm1": [shapes[t][0] for t in ("q", "k", "v", "qkv") if t in shapes],
            "o": [shapes["o"][0]] if "o" in shapes else [],
            "norm2": [shapes[t][0] for t in ("gate", "up") if t in shapes],
            "down": [shapes["down"][0]] if "down" in shapes else []}


def _adapter_inputs(group: str, widths: list[Any], T: Any, *, autocast: bool, dropout: bool,
                    grad_in: bool, mask: int) -> dict[str, Any]:
    """What the adapters reading one tensor save of it: A's input (the shared x, each
    adapter's own 16-bit cast under autocast, or each adapter's dropout output) and, where x
    needs a gradient, each dropout's mask."""
    if not widths:
        return {}
    a_bytes = HALF if autocast else FP32
    if dropout or autocast:
        terms = {f"lora_{group}_a_input": sum(T * n * a_bytes for n in widths)}
    else:  # one storage, x itself, read by every adapter of the group: shared unless the
        # attention output (o), which SDPA saves already (counted there)
        terms = {f"lora_{group}_a_input": T * widths[0] * FP32}
    if dropout and grad_in:
        terms[f"lora_{group}_dropout_mask"] = sum(T * n * mask for n in widths)
    return terms


def _frozen_inputs(t: dict[str, Any], *, o_input_kept: bool, math: bool,
                   product: Any) -> None:
    """Drop from ``t`` the inputs only frozen linears kept: q/k/v's and gate/up's inputs (and
    their autocast casts), RMSNorm's normalised inputs (its frozen ``weight * x``), the MLP
    product (down_proj's input, ``product`` bytes), and under eager or math attention the
    copy of the attention output that o_proj kept, unless o's A keeps that very tensor."""
    for key in ("qkv_input", "mlp_input", "norm1_normalized", "norm2_normalized"):
        t.pop(key, None)
    if math and not o_input_kept:
        t.pop("attn_out")
    t["mlp_activations"] -= product


def _first_layer(t: dict[str, Any], cfg: GPTConfig, lora: LoRA, qkv: bool, *, eager: bool,
                 tokens: Any, e: int) -> None:
    """Drop from ``t`` what the first layer does not save: its input norm's tensors (the input
    needs no gradient), the whole attention core when no q/k/v has an adapter, and under eager
    attention the copy of q (or k) when only k (or q) needs a gradient (q k^T keeps each
    operand for the other's gradient). Other partial q/k/v sets under eager attention (v
    alone, q and k without v) are counted as with all three: not measured."""
    for key in [k for k in t if k.startswith("norm1_")]:
        del t[key]
    if not qkv:
        for key in _CORE:
            t.pop(key, None)
    elif eager and not fused_qkv(cfg) and ("q" in lora.targets) != ("k" in lora.targets):
        t["q_k_v_copies"] -= tokens * cfg.n_head * cfg.head_dim * e


def lora_block_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *,
                           precision: Precision, attention: str = "sdpa", device: str = "cpu",
                           first: bool = False) -> dict[str, Any]:
    """Bytes one decoder layer saves for backward under ``lora`` (module docstring), by tensor.

    ``first``: the first layer, whose input (the frozen embedding's output) needs no gradient.
    B saves A's output, T r (2 bytes under autocast, else 4) per adapter.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32)
    >>> t = lora_block_saved_terms(cfg, LoRA(4, targets=("q", "k", "v")), 1, 2,
    ...                            precision="32-true")
    >>> t["lora_norm1_a_input"], t["lora_b_input"]  # x (2 x 8 fp32) once; 2 x 4 fp32 for B
    (64, 32)
    """
    attn: HFAttention = "eager" if attention == "eager" else "sdpa"
    dev: HFDevice = "cpu" if device == "cpu" else "cuda"
    t = hf_block_saved_terms(cfg, b, s, precision=precision, attention=attn, device=dev,
                             family=hf_family(cfg))
    T, f = b * s, cfg.mlp_hidden
    autocast, dropout = precision in _AUTOCAST, lora.dropout > 0
    e = HALF if autocast else FP32
    mask = 1 if dev == "cuda" else FP32
    g = _groups(cfg, lora)
    # x itself is A's input only in fp32 without dropout; else A saves a cast or a dropout
    # output
    own_copy = dropout or autocast
    math = attn == "eager" or (cfg.dropout > 0 and dev == "cpu")
    _frozen_inputs(t, o_input_kept=bool(g["o"]) and not own_copy, math=math,
                   product=T * f * e)
    if first:
        _first_layer(t, cfg, lora, bool(g["norm1"]), eager=attn == "eager", tokens=T, e=e)
    for group in ("norm1", "o", "norm2", "down"):
        if group == "o" and not own_copy:
            continue  # x is the attention output, counted as attn_out
        t.update(_adapter_inputs(group, g[group], T, autocast=autocast, dropout=dropout,
                                 grad_in=group != "norm1" or not first, mask=mask))
    n_adapters = len(adapter_shapes(cfg, lora))
    t["lora_b_input"] = n_adapters * T * lora.rank * (HALF if autocast else FP32)
    return t


def lora_saved_terms(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, *, precision: Precision,
                     attention: str = "flash", checkpointing: str = "none",
                     device: str = "cpu", layers: Any = None,
                     base_16bit: bool = False) -> dict[str, Any]:
    """Bytes saved for backward by one forward + loss of a peft LoRA model of ``cfg``: no
    embedding terms (frozen), the first layer and ``layers - 1`` others
    (`lora_block_saved_terms`), the shared rotary tables, and the head without the frozen
    output layer's input (and without RMSNorm's normalised input). With ``checkpointing``
    "full" each layer keeps its fp32 input, as without LoRA. ``attention`` "flash"/"sdpa" or
    "eager"; ``device`` "cpu" or "cuda". GPT-2 under checkpointing also holds the position
    ids and its token embedding's output (measured). ``base_16bit``: the base stored in 16
    bits (``base_weights``), whose residual stream (the checkpointed layer inputs), rotary
    cos/sin and eager attention's causal mask are 16-bit; the rest is as for an fp32 base
    under autocast (measured: the norms upcast to fp32, the adapters cast their inputs).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> sum(lora_saved_terms(cfg, LoRA(2), 1, 4, precision="32-true",
    ...                      checkpointing="full").values())
    876

    (block inputs 2 x 4 x 8 x 4 = 256; GPT-2's position ids 4 x 8 = 32 and token embedding
    output 4 x 8 x 4 = 128; final LayerNorm input 128 and stats 32; fp32 log-softmax
    4 x 16 x 4 = 256; 5 padded int64 labels + 4 = 44; no lm_head input.)
    """
    n = cfg.n_layer if layers is None else layers
    family = hf_family(cfg)
    attn: HFAttention = "eager" if attention == "eager" else "sdpa"
    ckpt = checkpointing == "full"
    out: dict[str, Any] = {}
    if ckpt:
        block = hf_block_saved_terms(cfg, b, s, precision=precision, checkpointing=True)
        out.update({k: n * v for k, v in block.items()})
        if family == "gpt2":  # measured: each checkpointed call is handed the position ids
            # (the frozen wpe no longer saves them), and the token embedding's fp32 output
            # stays alive beside its sum with the positions (the first layer's input)
            out["layer_position_ids"] = s * INDEX
            out["embedding_output"] = b * s * cfg.n_embd * FP32
    else:
        first = lora_block_saved_terms(cfg, lora, b, s, precision=precision, attention=attn,
                                       device=device, first=True)
        rest = lora_block_saved_terms(cfg, lora, b, s, precision=precision, attention=attn,
                                      device=device)
        for key in first.keys() | rest.keys():
            out[key] = first.get(key, 0) + (n - 1) * rest.get(key, 0)
    out.update(hf_model_saved_terms(cfg, b, s, precision=precision, attention=attn,
                                    checkpointing=ckpt, family=family))
    head = hf_head_saved_terms(cfg, b, s, precision=precision, family=family)
    for key in ("lm_head_input", "final_norm_normalized"):
        head.pop(key, None)
    out.update(head)
    if base_16bit:  # a bf16 base: the residual stream, the rotary tables and the additive
        # causal mask (the model's dtype) are 16-bit
        for key in ("block_input", "rope_cos_sin", "causal_mask"):
            if key in out:
                out[key] = out[key] // 2
    return out


def lora_weight_copy_bytes(cfg: GPTConfig, lora: LoRA, precision: Precision, *,
                           checkpointing: str = "none", base_copies: bool = True
                           ) -> tuple[Any, Any]:
    """(saved, cached) bytes of autocast's 16-bit weight copies under LoRA, 0 without autocast.

    Saved for backward: the frozen linears' copies where the input needs a gradient (every
    layer but the first's q/k/v projections, and the output layer), and every adapter's A and
    B but the first layer's q/k/v A (their input needs no gradient). With full checkpointing,
    only the output layer's. Cached until autocast exits (the forward's end): the saved ones
    and every adapter's copy (autocast caches leaf tensors that need a gradient). A 16-bit or
    quantized base (``base_copies=False``) makes no copies of its own.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32)
    >>> lora_weight_copy_bytes(cfg, LoRA(2, targets=("o",)), "bf16-mixed")
    (1472, 1472)

    (frozen: c_attn 8 x 24 (not saved in the first layer), c_proj 8 x 8, c_fc and mlp c_proj
    8 x 32 each, head 16 x 8: (64 + 512 + 128) x 2 = 1408; o's A and B 2 x (8 + 8) x 2 = 64.)
    """
    if precision not in _AUTOCAST:
        return 0, 0
    d, V = cfg.n_embd, cfg.vocab_size
    shapes = adapter_shapes(cfg, lora)
    r = lora.rank
    adapters = adapter_params(cfg, lora) * HALF
    first_a = sum(r * shapes[t][0] for t in ("q", "k", "v", "qkv") if t in shapes) * HALF
    head = V * d * HALF if base_copies else 0  # a 16-bit base's head is already 16-bit
    if checkpointing == "full":
        return head, head + adapters
    frozen = 0
    if base_copies:
        a, k, h, f = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
        qkv = d * (a + 2 * k) * h
        mlp = (3 if cfg.mlp in ("swiglu", "geglu") else 2) * d * f
        frozen = (cfg.n_layer * (qkv + a * h * d + mlp) - qkv) * HALF + head
    saved = frozen + adapters - first_a
    return saved, saved + first_a


def lora_stage_parts(cfg: GPTConfig, lora: LoRA, base_weights: str | None, b: Any, s: Any,
                     p: Precision, optimizer: str, attention: str, checkpointing: str,
                     device: str, impl: str | None) -> tuple[Any, ...]:
    """(weights, gradients, optimizer, temporaries, saved terms, saved copies, cached copies)
    of a LoRA step on one GPU: `lora_model_states`, `lora_saved_terms` and
    `lora_weight_copy_bytes`. A quantized base adds its one weight dequantized in flight
    (bitsandbytes dequantizes each layer's weight for the forward and again in backward) to
    the copies."""
    W, G, O, temp = lora_model_states(cfg, lora, p, optimizer, base_weights, device, impl)
    saved = lora_saved_terms(cfg, lora, b, s, precision=p, attention=attention,
                             checkpointing=checkpointing, device=device,
                             base_16bit=base_weights is not None)
    copies, cached = lora_weight_copy_bytes(cfg, lora, p, checkpointing=checkpointing,
                                            base_copies=base_weights is None)
    if base_weights is not None:  # 0 for bf16, which nothing dequantizes
        in_flight = dequantized_linear_bytes(cfg, base_weights)  # type: ignore[arg-type]
        copies, cached = copies + in_flight, cached + in_flight
    return W, G, O, temp, saved, copies, cached


def lora_recompute_moment(cfg: GPTConfig, lora: LoRA, b: Any, s: Any, p: Precision,
                          attention: str, device: str, saved: dict[str, Any], copies: Any,
                          cached: Any) -> Any:
    """Full checkpointing's recompute moment under LoRA: the saved tensors less the loss side
    (freed by then), one layer rebuilt with what it saves under LoRA and the copies; the
    frozen base has no weight gradients to build."""
    loss_side = sum(v for k, v in saved.items()
                    if k.startswith(("final_norm", "log_softmax", "targets")))
    block = lora_block_saved_terms(cfg, lora, b, s, precision=p, attention=attention,
                                   device=device)
    return sum(saved.values()) - loss_side + cached + sum(block.values())
