"""Measure what torchtitan's Llama 3 model saves for backward, on CPU.

`measure_titan` builds torchtitan's own ``Llama3Model`` (torchtitan 0.3.0,
``torchtitan/models/llama3/__init__.py``: fused ``wqkv``, complex RoPE, ``nn.RMSNorm``, SwiGLU
``FeedForward``, FlexAttention with its block-causal document mask, untied ``lm_head``) with
small widths, casts its parameters to bf16 as FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)``
gathers them (buffers untouched, no autocast), applies torchtitan's own activation
checkpointing (``torchtitan.distributed.activation_checkpoint``: ``FullAC`` or the per-op
``SelectiveAC``), with FlexAttention (0.3.0's default) or SDPA (``attn_backend="sdpa"``, the
kernel of torchtitan's published December 2024 runs; under the selective policy the CPU SDPA
kernel joins the save list in place of CUDA's, see `apply_ac`), runs one forward and
torchtitan's ``cross_entropy_loss`` and drops the logits
(as its trainer's ``del pred`` does). It then counts, once per storage and whole, every tensor
left alive for backward: the ones autograd packs (saved-tensor hooks, attributed to the module
running) and, under checkpointing, the ones the checkpoint keeps outside those hooks (block
inputs, the selective policy's cached op outputs): ``"checkpoint"``. Parameters, buffers and the
token ids are excluded.

`check_fsdp` runs ``fully_shard`` in a one-process gloo group on CPU with torchtitan's mixed
precision and reads the dtypes FSDP2 keeps and gathers.

``python -m scaleplan.reference.titan_measure --write`` measures the grid (both attention
kernels) and writes
``docs/validation/torchtitan-memory.json`` (replayed without torch by tests/test_titan_memory.py).

torchtitan 0.3.0 imports ``triton`` from its expert-parallel kernels at import time
(``torchtitan/distributed/minimal_async_ep/kernels.py``, CUDA only); on a machine without triton
that package is replaced by a stub before the import (`import_llama3`), which the dense model
never calls.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from scaleplan.model.config import GPTConfig
from scaleplan.reference.tracking import (
    LiveBytesTracker,
    SavedTensorsRecorder,
    add_checkpoint_held,
    storage_key,
)

__all__ = ["GRID", "TitanMeasurement", "TitanTracker", "apply_ac", "check_fsdp",
           "chunked_loss", "flex_on_cpu", "grid", "import_llama3", "main", "measure_titan",
           "report_main", "titan_model", "titan_model_config"]

_EP_PACKAGE = "torchtitan.distributed.minimal_async_ep"
JSON_PATH = Path("docs/validation/torchtitan-memory.json")


class _Absent:
    """Stands in for every name of the CUDA-only expert-parallel package (never called)."""

    def __call__(self, *args: Any, **kwargs: Any) -> _Absent:
        return self

    def __getattr__(self, name: str) -> _Absent:
        if name.startswith("__"):
            raise AttributeError(name)
        return self


def import_llama3() -> Any:
    """``torchtitan.models.llama3``, importable without triton (see the module docstring)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        _stub_ep_package()
    with warnings.catch_warnings():  # torchtitan's imports use APIs torch 2.13 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module("torchtitan.models.llama3")


def _stub_ep_package() -> None:
    if _EP_PACKAGE not in sys.modules:
        stub = types.ModuleType(_EP_PACKAGE)
        stub.__file__ = __file__
        stub.__path__ = []
        absent = _Absent()

        def attribute(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return absent

        stub.__getattr__ = attribute  # type: ignore[method-assign]
        sys.modules[_EP_PACKAGE] = stub


def titan_model(cfg: GPTConfig, attn_backend: str = "flex") -> Any:
    """torchtitan's ``Llama3Model`` with ``cfg``'s widths (its 8B recipe's parts otherwise) and
    ``attn_backend`` "flex" (FlexAttention, 0.3.0's default) or "sdpa" (its
    ``ScaledDotProductAttention``, causal, built directly: 0.3.0's ``get_attention_config``
    no longer offers it for language models, but it is the kernel torchtitan's Llama ran
    before FlexAttention, ``F.scaled_dot_product_attention(..., is_causal=True)``)."""
    return titan_model_config(cfg, attn_backend).build()


def titan_model_config(cfg: GPTConfig, attn_backend: str = "flex") -> Any:
    """The ``Llama3Model.Config`` `titan_model` builds (to set its sharding before the build);
    for ``qk_norm="head"``, torchtitan's ``Qwen3Model.Config``
    (`scaleplan.reference.titan_qwen3_measure.qwen3_model_config`)."""
    import_llama3()
    if cfg.qk_norm == "head":
        from scaleplan.reference.titan_qwen3_measure import qwen3_model_config

        return qwen3_model_config(cfg, attn_backend)
    common = importlib.import_module("torchtitan.models.common")
    utils = importlib.import_module("torchtitan.models.common.config_utils")
    model_mod = importlib.import_module("torchtitan.models.llama3.model")
    d, h, k = cfg.n_embd, cfg.n_head, cfg.n_kv_head
    init = {"weight": torch.nn.init.ones_}
    lin = {"weight": torch.nn.init.normal_}
    attention = importlib.import_module("torchtitan.models.common.attention")
    inner = (utils.get_attention_config("flex") if attn_backend == "flex"
             else attention.ScaledDotProductAttention.Config())
    rope = common.ComplexRoPE.Config(dim=d // h, max_seq_len=cfg.block_size, theta=500000,
                                     scaling="llama")
    layers = [model_mod.Llama3TransformerBlock.Config(
        attention_norm=common.RMSNorm.Config(normalized_shape=d, param_init=init),
        ffn_norm=common.RMSNorm.Config(normalized_shape=d, param_init=init),
        attention=utils.make_gqa_config(
            dim=d, n_heads=h, n_kv_heads=k, wqkv_param_init=lin, wo_param_init=lin,
            inner_attention=inner, fuse_qkv=True, rope=rope),
        feed_forward=utils.make_ffn_config(dim=d, hidden_dim=cfg.mlp_hidden,
                                           w1_param_init=lin, w2w3_param_init=lin),
    ) for _ in range(cfg.n_layer)]
    config = model_mod.Llama3Model.Config(
        dim=d, vocab_size=cfg.vocab_size,
        tok_embeddings=common.Embedding.Config(num_embeddings=cfg.vocab_size, embedding_dim=d,
                                               param_init=lin),
        norm=common.RMSNorm.Config(normalized_shape=d, param_init=init),
        lm_head=common.Linear.Config(in_features=d, out_features=cfg.vocab_size,
                                     param_init=lin),
        layers=layers)
    return config


class _Tracker(LiveBytesTracker):  # type: ignore[no-untyped-call]
    """`LiveBytesTracker` that also lets higher-order operators (flex_attention) through:
    their outputs are registered, their internals run unseen."""

    supports_higher_order_operators = True


class TitanMeasurement(BaseModel):
    """Saved-for-backward bytes of one torchtitan forward + loss, by module."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: GPTConfig
    micro_batch_size: int
    seq_len: int
    checkpointing: str
    attn_backend: str = "flex"
    saved_for_backward: int
    saved_by_module: dict[str, int]
    parameter_dtypes: list[str]


def apply_ac(model: Any, checkpointing: str, *, cuda_policy: bool = True) -> None:
    ac = importlib.import_module("torchtitan.distributed.activation_checkpoint")
    if checkpointing == "full":
        ac.FullAC(ac.FullAC.Config()).apply(model)
    elif checkpointing == "selective":
        policy = _cuda_policy_sac() if cuda_policy else ac.SelectiveAC
        policy(policy.Config()).apply(model)


def _cuda_policy_sac() -> Any:
    """torchtitan's ``SelectiveAC`` with its save list as on a GPU: the list names CUDA's SDPA
    kernels (``_scaled_dot_product_flash_attention`` through torch's compute-intensive ops,
    ``_scaled_dot_product_cudnn_attention``), not the CPU one SDPA takes here
    (``_scaled_dot_product_flash_attention_for_cpu``, which keeps the same output and fp32
    logsumexp), so the CPU kernel joins the list in their stead."""
    ac = importlib.import_module("torchtitan.distributed.activation_checkpoint")

    class CudaPolicySAC(ac.SelectiveAC):  # type: ignore[misc, name-defined]
        def get_save_ops(self) -> set[Any]:
            ops: set[Any] = super().get_save_ops()
            return ops | {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}

    return CudaPolicySAC


def measure_titan(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                  checkpointing: str = "none", attn_backend: str = "flex",
                  cuda_policy: bool = True, seed: int = 0) -> TitanMeasurement:
    """Measure one forward + loss of torchtitan's Llama 3 for ``cfg`` on CPU (bf16 params),
    with ``attn_backend`` "flex" or "sdpa" (`titan_model`); ``cuda_policy``: the selective
    policy saves SDPA's CPU kernel as it saves CUDA's (`_cuda_policy_sac`)."""
    torch.manual_seed(seed)
    model = titan_model(cfg, attn_backend)
    with torch.no_grad():
        model.init_states()
    for p in model.parameters():  # FSDP2's gathered parameters: bf16, buffers unchanged
        p.data = p.data.to(torch.bfloat16)
    apply_ac(model, checkpointing, cuda_policy=cuda_policy)
    model.train()
    loss_mod = importlib.import_module("torchtitan.components.loss")
    b, s = micro_batch_size, seq_len
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    labels = torch.randint(0, cfg.vocab_size, (b, s))
    positions = torch.arange(s).repeat(b, 1)
    masks = model.get_attention_masks(positions=positions) if attn_backend == "flex" else None
    params = {storage_key(p) for p in model.parameters()}
    resident = {storage_key(x) for x in model.buffers()} | params
    resident |= {storage_key(x) for x in (ids, labels, positions)}
    tracker = _Tracker()
    recorder = SavedTensorsRecorder(param_keys=params)
    gc.collect()
    with _flex_on_cpu(), tracker, recorder.recording(model):
        pred = model(ids, positions=positions, attention_masks=masks)
        loss = loss_mod.cross_entropy_loss(pred, labels)
        del pred
        gc.collect()
    by_module, _, _ = recorder.totals()
    add_checkpoint_held(by_module, tracker, recorder, resident, loss)
    del loss
    return TitanMeasurement(
        config=cfg, micro_batch_size=b, seq_len=s, checkpointing=checkpointing,
        attn_backend=attn_backend, saved_for_backward=sum(by_module.values()),
        saved_by_module=by_module,
        parameter_dtypes=sorted({str(p.dtype) for p in model.parameters()}))


@contextmanager
def _flex_on_cpu() -> Iterator[None]:
    """Run torchtitan's FlexAttention eagerly on CPU: its class-level ``torch.compile`` of
    ``flex_attention`` replaced by the uncompiled function (the same higher-order op, run by
    its dense reference implementation, called directly rather than through dynamo, which
    refuses the measuring dispatch mode) and torch's CPU-backward guard lifted, so that autograd
    saves what the op saves on a GPU (q, k, v, out, logsumexp, the block mask)."""
    flex: Any = importlib.import_module("torch.nn.attention.flex_attention")
    attention = importlib.import_module("torchtitan.models.common.attention")
    cls = attention.FlexAttention
    compiled, guard = cls.__dict__["_compiled_flex_attn"], flex._validate_device
    direct = flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
    cls._compiled_flex_attn = staticmethod(flex.flex_attention)
    flex._validate_device = lambda *_: None
    flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True  # the op itself, no dynamo around it
    try:
        yield
    finally:
        cls._compiled_flex_attn, flex._validate_device = compiled, guard
        flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = direct


def check_fsdp(cfg: GPTConfig) -> dict[str, Any]:
    """Shard torchtitan's model with torchtitan's own ``apply_fsdp_to_decoder``
    (``param_dtype=bf16, reduce_dtype=fp32``) in a one-process gloo group on CPU and run one
    forward and backward; report the dtypes FSDP2 keeps (sharded parameters, their gradients)
    and gathers, the bytes of block 0 gathered during its forward, and whether block 0 and the
    lm_head are still gathered once the forward is over (a sharded parameter is a DTensor)."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = titan_model(cfg)
        with torch.no_grad():
            model.init_states()
        fsdp = importlib.import_module("torchtitan.distributed.fsdp")
        fsdp.apply_fsdp_to_decoder(model, init_device_mesh("cpu", (1,)),
                                   param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                   pp_enabled=False)
        block = model.layers["0"]
        seen: dict[str, Any] = {}

        def gathered(_module: Any, _args: Any) -> None:
            params = list(block.parameters())
            seen["gathered"] = sorted({str(p.dtype) for p in params})
            seen["gathered_block_bytes"] = sum(p.numel() * p.element_size() for p in params)

        handle = block.attention.register_forward_pre_hook(gathered)
        ids = torch.randint(0, cfg.vocab_size, (1, 8))
        positions = torch.arange(8).repeat(1, 1)
        with _flex_on_cpu():
            out = model(ids, positions=positions,
                        attention_masks=model.get_attention_masks(positions=positions))
            after = {"block_gathered_after_forward": _gathered(block.attention.wo.weight),
                     "lm_head_gathered_after_forward": _gathered(model.lm_head.weight)}
            out.float().sum().backward()
        handle.remove()
        param = model.lm_head.weight
        return {"sharded": str(param.dtype), **seen, **after,
                "lm_head_gathered_after_backward": _gathered(param),
                "gradient": str(param.grad.dtype) if param.grad is not None else "none"}
    finally:
        dist.destroy_process_group()


# Public names for the tensor-parallel harness (scaleplan.reference.titan_tp_measure).
TitanTracker = _Tracker
flex_on_cpu = _flex_on_cpu


def _gathered(param: Any) -> bool:
    return type(param).__name__ != "DTensor"


GRID: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
                      vocab_size=256, block_size=256, bias=False, mlp="swiglu",
                      norm="rmsnorm", position="rope", tie_embeddings=False),
    "mha": GPTConfig(n_layer=3, n_head=4, n_kv_head=4, n_embd=96, mlp_hidden=256,
                     vocab_size=384, block_size=256, bias=False, mlp="swiglu",
                     norm="rmsnorm", position="rope", tie_embeddings=False),
}
"""Small Llama 3 shapes (GQA and MHA) of the committed measurements."""


def grid(b: int = 2, s: int = 128) -> list[dict[str, Any]]:
    """Measure every shape of `GRID` under each checkpointing mode, with FlexAttention and with
    SDPA; and SDPA under the selective policy with its CPU save list (``cuda_policy=False``)."""
    rows = []
    for name, cfg in GRID.items():
        for backend in ("flex", "sdpa"):
            for ckpt in ("none", "full", "selective"):
                m = measure_titan(cfg, micro_batch_size=b, seq_len=s, checkpointing=ckpt,
                                  attn_backend=backend)
                rows.append({"shape": name, **json.loads(m.model_dump_json())})
        m = measure_titan(cfg, micro_batch_size=b, seq_len=s, checkpointing="selective",
                          attn_backend="sdpa", cuda_policy=False)
        rows.append({"shape": name, "cuda_policy": False, **json.loads(m.model_dump_json())})
    return rows


def chunked_loss(model: Any, cfg: GPTConfig, chunks: int) -> Callable[[Any, Any], Any]:
    """torchtitan's trainer's chunked loss for ``model``: a ``ChunkedLossWrapper`` of
    ``chunks`` chunks around its cross-entropy (told ``cfg``'s vocabulary), given the model's
    ``lm_head``, the model set to skip it (``_skip_lm_head``); as ``loss(pred, labels)``."""
    loss_mod: Any = importlib.import_module("torchtitan.components.loss")
    wrapper = loss_mod.ChunkedLossWrapper(loss_mod.ChunkedLossWrapper.Config(
        num_chunks=chunks,
        loss_fn=loss_mod.CrossEntropyLoss.Config(global_vocab_size=cfg.vocab_size)))
    wrapper.set_lm_head(model.lm_head)
    model._skip_lm_head = True
    return lambda pred, labels: wrapper(pred, labels)[0]


def report_main(prog: str, out: Path, argv: list[str] | None,
                build: Callable[[], dict[str, Any]]) -> int:
    """The ``main`` of a torchtitan harness: parse ``--write`` and ``--out`` (default ``out``)
    for ``python -m <prog>``, then measure (``build()``: the report's fields), print the JSON
    with torch's and torchtitan's versions and, with ``--write``, write it to ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--out", default=str(out))
    args = parser.parse_args(argv)
    tt = importlib.import_module("importlib.metadata").version("torchtitan")
    data = {"torch": torch.__version__, "torchtitan": tt, **build()}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        Path(args.out).write_text(text)
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure the grid (and FSDP2's dtypes) and write the JSON."""
    return report_main("scaleplan.reference.titan_measure", JSON_PATH, argv,
                       lambda: {"rows": grid(), "fsdp": check_fsdp(GRID["tiny"])})


if __name__ == "__main__":
    raise SystemExit(main())
