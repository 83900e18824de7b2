"""Which steps without gradient accumulation (``gradient_accumulation=False``) are modelled.

Without accumulation every gradient is None when the step starts (``zero_grad(set_to_none=True)``)
and is made during backward, so what a GPU holds at each moment depends on when the code
makes and frees its gradients. That is derived and measured for one GPU (the generic
`scaleplan.memory.step_switches.gradients_at`), for litgpt under Fabric's FSDP1 with full
checkpointing (`scaleplan.memory.litgpt_fsdp_terms.litgpt_fsdp1_covers`) and for torchtitan's
FSDP2 step (`scaleplan.memory.titan_fsdp_moments.titan_fresh_covers`), eager or with its
blocks compiled on two or more ranks, and eager on one GPU (FSDP2 on a one-rank mesh,
measured too). Transformers' model compiled with full checkpointing is not: its fresh
backward was measured eager only.
`fresh_step_refusal` says why any other step is refused.
"""

from __future__ import annotations

from scaleplan.memory.litgpt_fsdp_terms import litgpt_fsdp1_covers
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_fsdp_moments import titan_fresh_covers

__all__ = ["fresh_step_refusal"]


def fresh_step_refusal(*, implementation: str, compile: bool, checkpointing: str, loss: str,
                       parallelism: Parallelism) -> str | None:
    """Why a step without gradient accumulation is not modelled (None when it is).

    >>> fresh_step_refusal(implementation="torchtitan", compile=False, checkpointing="full",
    ...                    loss="standard", parallelism=Parallelism(data=8, fsdp="full_shard"))
    >>> print(fresh_step_refusal(implementation="torchtitan", compile=True,
    ...       checkpointing="full", loss="standard", parallelism=Parallelism()))
    gradient_accumulation=False with implementation='torchtitan' is modelled for its FSDP2 ...
    """
    if implementation == "torchtitan":
        if titan_fresh_covers(implementation, compile, loss, parallelism):
            return None
        return ("gradient_accumulation=False with implementation='torchtitan' is modelled for "
                "its FSDP2 step (Parallelism(data=N, fsdp='full_shard'), with or without tensor "
                "parallelism, or eager on one GPU with the standard loss; measured whole), not "
                "yet with compile=True on one GPU or with tensor parallelism, or with "
                "loss='chunked' on one data-parallel rank; use gradient_accumulation=True")
    if implementation == "hf" and compile and checkpointing == "full":
        return ("gradient_accumulation=False with implementation='hf', compile=True and "
                "checkpointing='full' is not modelled yet: the fresh-gradient backward of "
                "transformers' checkpointed layers was measured eager "
                "(tests/data/fresh_recompute_peaks.json), its compiled model only with "
                "gradients resident or without checkpointing; use gradient_accumulation=True, "
                "compile=False or checkpointing='none'")
    if parallelism == Parallelism() or litgpt_fsdp1_covers(implementation, checkpointing,
                                                            parallelism):
        return None
    return ("gradient_accumulation=False is modelled for one GPU, litgpt's FSDP with full "
            "checkpointing and torchtitan's eager FSDP2 (DDP's and ZeRO's buckets outlive "
            "zero_grad); use gradient_accumulation=True or parallelism=None")
