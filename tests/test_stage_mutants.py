"""Hand calculations of `stage_parts`' moments on the paths mutmut's run found unchecked: the
LoRA step (`_moments`) and torchtitan under FSDP2 (`_titan_parts`). `training_memory` shows only
the worst moment; these tests check every moment of the stage. Torch-free.

The saved tensors themselves are checked term by term elsewhere (tests/test_lora.py,
tests/test_titan_memory.py); here the moments are written out on top of their sum S.
"""

from __future__ import annotations

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.titan_sdpa_terms import titan_sdpa_saved_terms
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA

# tests/test_lora.py's TINY: d 8, 2 + 1 heads of 4, f 16, V 32, 2 layers; r 2 on q and v
LORA_TINY = GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=8, head_dim=4, mlp_hidden=16,
                      vocab_size=32, block_size=16, bias=False, mlp="swiglu", norm="rmsnorm",
                      position="rope", tie_embeddings=False)
QV = LoRA(2, targets=("q", "v"))

# tests/test_titan_memory.py's TINY: 131,392 parameters (its test_model_states_shard_...)
TITAN = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192, vocab_size=256,
                  block_size=256, bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                  tie_embeddings=False)
N = 256 * 64 * 2 + 2 * (64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64) + 64
BLOCK = 64 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64  # wqkv, wo, w1/w2/w3, two norms
HEAD = 256 * 64 + 64  # the lm_head unit: output weight and final norm
TV = 2 * 128 * 256  # logits of b 2, s 128


def test_lora_moments_under_autocast_by_hand() -> None:
    W, G, O, saved, copies, all_copies, held, moments = stage_parts(
        LORA_TINY, 1, 4, "bf16-mixed", "adamw", "flash", "none", "cuda", Parallelism(), None,
        True, "only", implementation="hf", lora=QV)
    S = sum(saved.values())
    tv = 4 * 32  # logits 1 x 4 x 32
    # autocast copies (tests/test_lora.py): saved (1152 - 128 + 256) x 2 + (112 - 32) x 2,
    # cached 64 more
    assert (copies, all_copies) == (2720, 2784)
    assert held == tv * 2  # the bf16 logits the loop holds
    assert moments == {
        # every cached copy, the bf16 logits and their fp32 upcast
        "forward_end": S + 2784 + tv * 2 + tv * 4,
        # the saved copies, the fp32 log-softmax's gradient and its input's
        "backward_start": S + 2720 + 2 * tv * 4,
        "optimizer_step": 112 * 4,  # foreach AdamW on CUDA: one buffer over the adapters
    }
    assert (W, G, O) == (1704 * 4 + 112 * 4, 112 * 4, 2 * 112 * 4 + 8 * 4)
    assert stage_parts(LORA_TINY, 1, 4, "bf16-mixed", "adamw", "flash", "none", "cuda",
                       Parallelism(), None, False, "only", implementation="hf",
                       lora=QV)[6] == 0


def _titan(precision: str = "bf16-mixed", device: str = "cuda", data: int = 8,
           opt: str = "adamw", impl: str | None = None) -> tuple:  # type: ignore[type-arg]
    return stage_parts(TITAN, 2, 128, precision, opt, "flash", "selective",  # type: ignore[arg-type]
                       device, Parallelism(data=data, fsdp="full_shard"), impl, False,  # type: ignore[arg-type]
                       "only", implementation="torchtitan")


def test_titan_moments_by_hand() -> None:
    W, G, O, saved, copies, all_copies, held, moments = _titan()
    assert saved == titan_sdpa_saved_terms(TITAN, 2, 128, precision="bf16-mixed",
                                          checkpointing="selective", device="cuda",
                                          layers=2)  # attention="flash": SDPA
    S = sum(saved.values())
    # fp32 parameters, gradients and Adam's moments (+ 17 4-byte steps), sharded over 8 ranks
    assert (W, G, O) == (-(-4 * N // 8), -(-4 * N // 8), -(-(8 * N + 4 * 17) // 8))
    assert (copies, all_copies, held) == (0, 0, 0)
    norm = 256 * 64 * 2 + 256 * 4  # fused RMSNorm on CUDA: bf16 input, fp32 rstd
    loss_side = norm + 256 * 64 * 2 + TV * 4 + 256 * 8 + 4
    # selective AC rebuilds a block less SDPA's and w1's cached outputs (SDPA: one fp32
    # logsumexp, 2 x 4 x 128; tests/test_titan_compiled.py)
    whole = (2 * norm + 256 * 64 * 2 + 256 * 8 * 8 + 256 * (64 + 32 + 32 + 64) * 2
             + 2 * 4 * 128 * 4 + 256 * 64 * 2 + 3 * 256 * 192 * 2 + 256 * 192 * 2)
    rebuilt = whole - (256 * 64 * 2 + 2 * 4 * 128 * 4) - 256 * 192 * 2
    assert moments == {
        # the bf16 logits, their fp32 upcast and log-softmax; the gathered lm_head in bf16
        "forward_end": S + TV * 2 + TV * 4 + HEAD * 2,
        "backward_start": S + 2 * TV * 4 + HEAD * 2,
        "optimizer_step": 0,  # torchtitan's AdamW is fused
        # a block and the prefetched one in bf16, its bf16 gradients and their fp32 copy
        "recompute": S - loss_side + rebuilt + 2 * BLOCK * 2 + BLOCK * 2 + BLOCK * 4,
    }


def test_titan_fp32_logits_and_cpu_rebuild() -> None:
    # fp32 parameters: the logits are fp32 already, forward end = backward start (both hold
    # two T V fp32 tensors beside the same gathered head)
    moments = _titan("32-true")[7]
    assert moments["forward_end"] == moments["backward_start"]
    moments = _titan()[7]
    assert moments["backward_start"] - moments["forward_end"] == 2 * TV * 4 - 6 * TV
    # on CPU the composite RMSNorm keeps fp32 x and x * rstd: the rebuilt block's norms are
    # 2 x (2 x 256 x 64 x 4 + 256 x 4) instead of 2 x (256 x 64 x 2 + 256 x 4)
    cpu, cuda = _titan(device="cpu"), _titan()
    assert cpu[3] == titan_sdpa_saved_terms(TITAN, 2, 128, precision="bf16-mixed",
                                            checkpointing="selective", device="cpu", layers=2)

    def rebuilt(parts: tuple) -> int:  # type: ignore[type-arg]
        loss = sum(parts[3][k] for k in ("final_norm", "lm_head", "log_softmax", "targets"))
        return int(parts[7]["recompute"] - sum(parts[3].values()) + loss)

    assert rebuilt(cpu) - rebuilt(cuda) == 2 * (2 * 256 * 64 * 4 - 256 * 64 * 2)


def test_titan_optimizer_temporaries_and_states() -> None:
    # foreach AdamW: sqrt(v) for the whole fp32 group, sharded: ceil(4 N / 3) over 3 ranks
    parts = _titan(data=3, impl="foreach")
    assert parts[7]["optimizer_step"] == -(-4 * N // 3) == 175190
    assert type(parts[7]["optimizer_step"]) is int
    assert parts[0] == -(-4 * N // 3)
    assert _titan(impl="for-loop")[7]["optimizer_step"] == -(-2 * 256 * 64 * 4 // 8)
    assert _titan(opt="sgd")[2] == 0  # plain SGD: no state


def test_titan_one_rank_gathers_nothing() -> None:
    # one data rank: FSDP2 shards nothing, so nothing is gathered on top of the logits
    *_, saved, _, _, _, moments = _titan(data=1)
    assert moments["forward_end"] == sum(saved.values()) + TV * 2 + TV * 4


def test_litgpt_loss_moments_by_hand() -> None:
    # litgpt, fp32, b 2, s 5, V 16: forward end holds the flat shifted copy of the logits
    # 2 x 4 x 16 x 4 = 512 (the loop holds the logits themselves: 2 x 5 x 16 x 4 = 640);
    # backward the larger of two 8-row chunk pieces (2 x 8 x 16 x 4 = 1024) and the logits'
    # gradient (640)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False, mlp="swiglu",
                    norm="rmsnorm", position="rope", mlp_hidden=16)
    *_, saved, copies, all_copies, held, moments = stage_parts(
        cfg, 2, 5, "32-true", "sgd", "flash", "none", "cpu", Parallelism(), None, True,
        "only", implementation="litgpt")
    S = sum(saved.values())
    assert (copies, all_copies, held) == (0, 0, 640)
    assert moments == {"forward_end": S + 512, "backward_start": S + 1024,
                       "optimizer_step": 0}
