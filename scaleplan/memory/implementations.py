"""Whose code runs the training step (``training_memory(implementation=...)``) and what each
implementation's terms were measured with: `check_implementation` refuses, naming the option,
an implementation or a combination of options whose memory is not modelled, never a guess.

Each implementation's terms live in their own module (`scaleplan.memory.hf_terms`,
`scaleplan.memory.titan_terms`, `scaleplan.memory.tune_terms`, ...); the layouts and options
they cover are listed here, beside the checks, so that `scaleplan.memory.options.step_options`
checks them all in one place.
"""

from __future__ import annotations

from typing import Any

from scaleplan.checks import one_of
from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.model.config import GPTConfig

__all__ = ["IMPLEMENTATIONS", "check_hf", "check_implementation", "check_litgpt", "check_titan",
           "check_titan_one_gpu_loss", "check_titan_qwen3", "check_titan_tp", "check_torchtune"]


IMPLEMENTATIONS = ("nanogpt", "hf", "torchtitan", "torchtune", "litgpt")
"""Whose code the step runs: nanoGPT's layout (scaleplan's reference model), Hugging Face
transformers' modeling code (`scaleplan.memory.hf_terms`), torchtitan's Llama 3 under FSDP2
(`scaleplan.memory.titan_terms`), torchtune's models and recipes (`scaleplan.memory.tune_terms`)
or litgpt's GPT in its fine-tune step (`scaleplan.memory.litgpt_terms`)."""
# GPTConfig options the Hugging Face terms were not measured with (scaleplan.memory.hf_terms).
_HF_UNMEASURED = ("qk_norm", "norm_position", "norm_affine", "embedding_norm", "lm_head_bias",
                  "position_offset", "sliding_window", "attn_softcap", "final_softcap", "mla",
                  "moe")


_HF_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def check_implementation(cfg: GPTConfig, implementation: Any, *, compile: bool, attention: str,
                         checkpointing: str, parallelism: Parallelism,
                         precision: str = "bf16-mixed") -> None:
    """Refuse, naming the option, an implementation or a combination that is not modelled."""
    one_of("implementation", implementation, IMPLEMENTATIONS)
    split = parallelism.tensor * parallelism.pipeline > 1
    titan_tp = implementation == "torchtitan" and parallelism.pipeline == 1 and not compile
    if (compile or implementation != "nanogpt") and split and not titan_tp:
        what = "compile=True" if compile else f"implementation={implementation!r}"
        raise ScaleplanError(f"{what} is modelled for data parallelism (DDP, ZeRO, FSDP), not "
                             "yet with tensor or pipeline parallelism")
    if implementation == "torchtune":
        check_torchtune(cfg, precision=precision, checkpointing=checkpointing,
                        attention=attention)
    if implementation == "hf":
        check_hf(cfg, checkpointing=checkpointing, precision=precision)
        if compile:  # Llama, Qwen2, Mistral, Gemma, GPT-2, GPT-NeoX under torch.compile(model)
            from scaleplan.memory.hf_compiled_terms import check_hf_compiled

            check_hf_compiled(cfg, precision=precision, checkpointing=checkpointing,
                              attention=attention)
            return
    compiled = ("nanogpt", "torchtune", "torchtitan")  # torchtitan: its per-block compile
    if compile and (attention == "eager" or implementation not in compiled):
        raise ScaleplanError("compile=True is modelled for nanoGPT's layout with "
                             "attention='flash' (SDPA), for implementation='torchtune', for "
                             "implementation='torchtitan' (its per-block compile) and for "
                             "implementation='hf' (Llama, Qwen2, Mistral, Gemma, GPT-2, "
                             "GPT-NeoX); use those or compile=False")
    if implementation == "litgpt":
        check_litgpt(cfg, attention=attention, checkpointing=checkpointing, precision=precision)


def check_hf(cfg: GPTConfig, *, checkpointing: str, precision: str) -> None:
    """Refuse, by name, what `scaleplan.memory.hf_terms` was not measured with."""
    fields = type(cfg).model_fields
    odd = [name for name in _HF_UNMEASURED if getattr(cfg, name) != fields[name].default]
    if checkpointing == "selective":
        odd.append("checkpointing='selective' (transformers checkpoints whole layers)")
    if precision not in _HF_PRECISIONS:  # measured with fp32 parameters only
        odd.append(f"precision={precision!r} (measured: {', '.join(_HF_PRECISIONS)})")
    if odd:
        raise ScaleplanError(f"implementation='hf' is modelled for Llama, Qwen2, Mistral, "
                             f"Gemma, GPT-2 and GPT-NeoX layouts; not with {', '.join(odd)}")


# torchtitan's Llama 3 (torchtitan 0.3.0, torchtitan/models/llama3/__init__.py): the layout
# `scaleplan.memory.titan_terms` derives; any other value of these fields is refused.
_TITAN_LAYOUT = {"mlp": "swiglu", "norm": "rmsnorm", "position": "rope", "bias": False,
                 "qkv_bias": False, "attn_out_bias": False, "mlp_bias": False,
                 "tie_embeddings": False, "dropout": 0.0, "rotary_fraction": 1.0,
                 "parallel": "none", "final_norm": True}


def check_titan(cfg: GPTConfig, *, precision: str, attention: str, parallelism: Parallelism,
                compile: bool) -> None:
    """Refuse, by name, what `scaleplan.memory.titan_terms` does not model for torchtitan
    (``compile=True``, its per-block compile, is `scaleplan.memory.titan_compiled_terms`)."""
    from scaleplan.memory.titan_terms import TITAN_PRECISIONS

    if precision not in TITAN_PRECISIONS:
        raise ScaleplanError(
            f"precision={precision!r} with implementation='torchtitan': torchtitan's "
            "mixed_precision_param maps to 'bf16-mixed' (bfloat16, its default: fp32 sharded "
            "parameters gathered in bf16) or '32-true' (float32); use one of those")
    if attention != "flash":
        raise ScaleplanError("attention='eager' with implementation='torchtitan': its Llama 3 "
                             "runs fused attention (O(s) statistics; 'flash' is SDPA's flash "
                             "kernel, as in its published runs); use attention='flash'")
    if parallelism.pipeline * parallelism.expert > 1:
        raise ScaleplanError("implementation='torchtitan' is modelled for FSDP2 data "
                             "parallelism and tensor parallelism, not yet with pipeline or "
                             "expert parallelism; use Parallelism(data=N, fsdp='full_shard', "
                             "tensor=T, sequence_parallel=True)")
    if parallelism.data > 1 and parallelism.fsdp != "full_shard":
        raise ScaleplanError(
            f"implementation='torchtitan' with {parallelism.data} data ranks shards with FSDP2 "
            "(fully_shard); use Parallelism(data=N, fsdp='full_shard')")
    if parallelism.data * parallelism.tensor == 1 and compile:
        raise ScaleplanError(
            "implementation='torchtitan' on one GPU is not modelled yet with compile=True: "
            "torchtitan 0.3.0 still applies FSDP2 there (a one-rank mesh), whose buffers "
            "(each unit's reduce holds three fp32 copies of its gradients) were measured with "
            "eager blocks only; use compile=False, or Parallelism(data=N, fsdp='full_shard') "
            "with N >= 2")
    odd = _titan_misfits(cfg)
    if odd:
        raise ScaleplanError("implementation='torchtitan' is modelled for its Llama 3 layout "
                             f"(SwiGLU, RMSNorm, RoPE, no bias, untied head); not with "
                             f"{', '.join(odd)}")


def check_titan_one_gpu_loss(*, chunked: bool, parallelism: Parallelism) -> None:
    """Refuse, by name, torchtitan's chunked loss on one data-parallel rank (one GPU, or tensor
    parallelism alone): there FSDP2 runs on a one-rank mesh (the head unit gathered, then
    reduced after the chunk loop), and `scaleplan.memory.titan_chunked_loss` was measured whole
    on two or more FSDP2 ranks only.

    >>> check_titan_one_gpu_loss(chunked=True, parallelism=Parallelism(data=2, fsdp="full_shard"))
    >>> check_titan_one_gpu_loss(chunked=True, parallelism=Parallelism())
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: loss='chunked' with implementation='torchtitan' on one ...
    """
    if chunked and parallelism.data == 1:
        raise ScaleplanError(
            "loss='chunked' with implementation='torchtitan' on one data-parallel rank is not "
            "modelled yet: torchtitan 0.3.0 still applies FSDP2 there (a one-rank mesh: the "
            "head unit gathered and reduced after the chunk loop), and its chunked loss was "
            "measured whole on two or more FSDP2 ranks only; use loss='standard', or "
            "Parallelism(data=N, fsdp='full_shard') with N >= 2")


def check_titan_tp(*, parallelism: Parallelism, checkpointing: str,
                   compile: bool = False) -> None:
    """Refuse, by name, what `scaleplan.memory.titan_tp_terms` was not measured with under
    torchtitan's tensor parallelism: its per-op selective checkpointing and compiled blocks.
    Async TP and context parallelism have no `Parallelism` field: they are not modelled."""
    if compile:
        raise ScaleplanError(
            f"implementation='torchtitan' with tensor={parallelism.tensor} is not modelled yet "
            "with compile=True (its compiled blocks were measured without TP); use "
            "compile=False")
    if checkpointing == "selective":
        raise ScaleplanError(
            f"implementation='torchtitan' with tensor={parallelism.tensor} is not modelled yet "
            "with checkpointing='selective' (its per-op selective checkpointing was measured "
            "without TP); use 'full' or 'none'")


def _titan_misfits(cfg: GPTConfig) -> list[str]:
    """The fields of ``cfg`` (with their values) that torchtitan's Llama 3 does not have."""
    fields = type(cfg).model_fields
    odd = [f"{k}={getattr(cfg, k)!r}" for k, v in _TITAN_LAYOUT.items() if getattr(cfg, k) != v]
    qwen3 = cfg.qk_norm == "head"  # its Qwen3: given head_dim (scaleplan.memory.titan_qwen3_terms)
    if cfg.head_dim * cfg.n_head != cfg.n_embd and not qwen3:
        odd.append(f"head_dim={cfg.head_dim} (its Llama 3 takes n_embd / n_head) without "
                   "qk_norm='head' (its Qwen3, which takes head_dim as given)")
    if cfg.embed_dim != cfg.n_embd:
        odd.append(f"embed_dim={cfg.embed_dim}")
    unmeasured = [n for n in _HF_UNMEASURED if n != "qk_norm" or cfg.qk_norm != "head"]
    return odd + [name for name in unmeasured if getattr(cfg, name) != fields[name].default]


def check_titan_qwen3(cfg: GPTConfig, *, checkpointing: str, compile: bool) -> None:
    """Refuse, by name, what `scaleplan.memory.titan_qwen3_terms` was not measured with for
    torchtitan's Qwen3 (``qk_norm="head"``): its per-op selective checkpointing and its
    compiled blocks (measured eager, without and with full checkpointing)."""
    if cfg.qk_norm != "head":
        return
    if compile:
        raise ScaleplanError("implementation='torchtitan' with qk_norm='head' (its Qwen3) is "
                             "not modelled yet with compile=True (measured eager); use "
                             "compile=False")
    if checkpointing == "selective":
        raise ScaleplanError("implementation='torchtitan' with qk_norm='head' (its Qwen3) is "
                             "not modelled yet with checkpointing='selective' (measured "
                             "without checkpointing and with full); use 'full' or 'none'")


# What torchtune 0.6.1's component builders (llama3_1, llama3_2, qwen2 / qwen2_5, gemma) build:
# RMSNorm, rotary positions on every dimension, SwiGLU or tanh-GELU MLPs, no biases but Qwen2's
# q/k/v ones, attn_dropout 0 in every recipe (scaleplan.memory.tune_terms).
_TUNE_LAYOUT = {"norm": "rmsnorm", "position": "rope", "bias": False, "parallel": "none",
                "rotary_fraction": 1.0, "dropout": 0.0}
_TUNE_UNMEASURED = ("qk_norm", "norm_position", "norm_affine", "embedding_norm", "lm_head_bias",
                    "position_offset", "sliding_window", "attn_softcap", "final_softcap", "mla",
                    "moe")


def check_torchtune(cfg: GPTConfig, *, precision: str, checkpointing: str,
                    attention: str = "flash") -> None:
    """Refuse, by name, what ``implementation="torchtune"`` does not model: layouts torchtune's
    Llama 3.x / Qwen2 / Gemma builders do not build, precisions its recipes do not run (``dtype:
    bf16`` is "bf16-true", ``fp32`` is "32-true"; no autocast) and its selective layer
    checkpointing (``ac_mode="selective"``, every n-th layer), which is not modelled yet.
    ``compile=True`` is its recipes' ``compile: True`` (each layer compiled; the standard loss
    stays eager)."""
    fields = type(cfg).model_fields
    odd = [f"{name}={getattr(cfg, name)!r}" for name, want in _TUNE_LAYOUT.items()
           if getattr(cfg, name) != want]
    odd += [name for name in _TUNE_UNMEASURED if getattr(cfg, name) != fields[name].default]
    if cfg.mlp not in ("swiglu", "geglu"):
        odd.append(f"mlp={cfg.mlp!r}")
    if precision not in ("bf16-true", "32-true"):
        odd.append(f"precision={precision!r} (its recipes run dtype bf16, 'bf16-true', or "
                   "fp32, '32-true')")
    if attention != "flash":
        odd.append(f"attention={attention!r} (torchtune calls SDPA or flex attention: "
                   "'flash')")
    if checkpointing == "selective":
        odd.append("checkpointing='selective' (torchtune's every-n-th-layer selective "
                   "checkpointing is not modelled yet; use 'full' or 'none')")
    if odd:
        raise ScaleplanError(f"implementation='torchtune' is modelled for its Llama 3.x, "
                             f"Qwen2 and Gemma builders; not with {', '.join(odd)}")


# GPTConfig options litgpt's terms were not measured with (scaleplan.memory.litgpt_terms), and
# litgpt's own limits: rotary positions only, no dropout, SDPA unless soft-capping.
_LITGPT_UNMEASURED = tuple(name for name in _HF_UNMEASURED  # Phi-2's bias, Phi-3's window
                           if name not in ("lm_head_bias", "sliding_window"))


def check_litgpt(cfg: GPTConfig, *, attention: str, checkpointing: str,
                 precision: str = "bf16-true") -> None:
    """Refuse, naming them, what `scaleplan.memory.litgpt_terms` does not model."""
    from scaleplan.memory.litgpt_terms import LITGPT_PRECISIONS

    fields = type(cfg).model_fields
    odd = [f"{name}={getattr(cfg, name)!r}" for name in _LITGPT_UNMEASURED
           if getattr(cfg, name) != fields[name].default]
    if cfg.sliding_window is not None and cfg.sliding_window_layers != cfg.n_layer:
        odd.append(f"sliding_window_layers={cfg.sliding_window_layers} (litgpt's window in "
                   "every block is modelled)")
    if cfg.position != "rope":
        odd.append(f"position={cfg.position!r} (litgpt's GPT uses rotary positions)")
    if cfg.dropout > 0:
        odd.append(f"dropout={cfg.dropout} (litgpt's GPT has no dropout)")
    if attention != "flash":
        odd.append("attention='eager' (litgpt calls SDPA)")
    if checkpointing == "selective":
        odd.append("checkpointing='selective' (litgpt checkpoints whole blocks under FSDP)")
    if precision not in LITGPT_PRECISIONS:
        odd.append(f"precision={precision!r} (its fine-tune scripts offer "
                   f"{', '.join(map(repr, LITGPT_PRECISIONS))})")
    if odd:
        raise ScaleplanError("implementation='litgpt' is modelled for litgpt 0.5.13's GPT "
                             "(Llama, Gemma, Phi-2 and Pythia layouts); not yet with "
                             + ", ".join(odd))
