"""One training step's objects for the reference GPT, and the calls a step makes.

`TrainingStep` holds the model (built in the parameter dtype the precision asks for), AdamW (on
fp32 master copies for ``"bf16-fp32-master"``, which receive each bf16 gradient as it is
produced) and a random batch; `scaleplan.reference.measure` runs its ``forward``, ``update`` and
``zero_grad`` under its trackers.

>>> step = TrainingStep(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=8),
...                     micro_batch_size=1, seq_len=2, precision="32-true", attention="flash",
...                     checkpointing=False, device=torch.device("cpu"), cuda_semantics=False,
...                     optimizer="fused")
>>> step.forward().backward()
>>> sum(p.numel() for p in step.params), len(step.resident_groups()["grads"]) == len(step.params)
(316, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from scaleplan.memory.sharding import OptimizerImpl  # the one list of AdamW implementations
from scaleplan.model.config import GPTConfig
from scaleplan.reference.model import GPT, AttentionKind, Routing

__all__ = ["AUTOCAST_DTYPES", "PARAM_DTYPES", "OptimizerImpl", "TrainingStep"]


# Precisions that autocast (parameters stay fp32), and those whose parameters are 16-bit.
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16-mixed": torch.bfloat16,
                                           "16-mixed": torch.float16}
PARAM_DTYPES: dict[str, torch.dtype] = {"bf16-true": torch.bfloat16,
                                        "bf16-fp32-master": torch.bfloat16}


class TrainingStep:
    """One training step's objects, built under whatever tensor mode is active."""

    def __init__(self, cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                 precision: str, attention: AttentionKind, checkpointing: bool,
                 device: torch.device, cuda_semantics: bool, optimizer: OptimizerImpl,
                 hold_logits: bool = False, routing: Routing = "balanced") -> None:
        with device, _default_dtype(PARAM_DTYPES.get(precision, torch.float32)):
            # built in place: Module.to() cannot swap FakeTensor parameters
            self.model = GPT(cfg, attention=attention, checkpointing=checkpointing,
                             cuda_semantics=cuda_semantics, routing=routing)
        self.params: list[torch.Tensor] = list(self.model.parameters())
        self.masters: list[torch.Tensor] = []
        if precision == "bf16-fp32-master":  # Megatron-style: AdamW updates fp32 masters
            self.masters = [p.detach().float().requires_grad_() for p in self.params]
            for p, m in zip(self.params, self.masters, strict=True):
                p.register_post_accumulate_grad_hook(_accumulate_into(m))  # type: ignore[no-untyped-call]
        self.opt = _optimizer(self.masters or self.params, optimizer)
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.device = device
        self.hold_logits = hold_logits
        self.logits: torch.Tensor | None = None
        self.idx = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len), device=device)
        self.targets = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len),
                                     device=device)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def forward(self) -> torch.Tensor:
        with self.autocast():
            logits, loss = self.model(self.idx, self.targets)
        # nanoGPT's ``logits, loss = model(X, Y)`` keeps the logits alive through backward
        self.logits = logits if self.hold_logits else None
        assert loss is not None
        out: torch.Tensor = loss
        return out

    def update(self) -> None:
        self.opt.step()
        if self.masters:
            with torch.no_grad():
                for p, m in zip(self.params, self.masters, strict=True):
                    p.copy_(m)

    def zero_grad(self) -> None:
        self.logits = None
        self.opt.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None

    def resident_groups(self) -> dict[str, list[torch.Tensor]]:
        grads = [t.grad for t in self.params + self.masters if t.grad is not None]
        states = [v for s in self.opt.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor)]
        return {"params": self.params, "grads": grads,
                "optimizer_states": self.masters + states,
                "other": [*self.model.buffers(), self.idx, self.targets,
                          *([self.logits] if self.logits is not None else [])]}


def _optimizer(params: list[torch.Tensor], impl: OptimizerImpl) -> torch.optim.Optimizer:
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "for-loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(params, lr=1e-4, **flags)  # type: ignore[arg-type]


def _accumulate_into(master: torch.Tensor) -> Any:
    """A hook that moves a bf16 parameter's gradient into its fp32 master's ``.grad`` as soon as
    it is accumulated, as Megatron-LM's ``main_grad`` buffers do (gradients kept in fp32)."""
    def hook(p: torch.Tensor) -> None:
        assert p.grad is not None
        with torch.no_grad():
            if master.grad is None:
                master.grad = p.grad.float()
            else:
                master.grad.add_(p.grad)
        p.grad = None

    return hook


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
