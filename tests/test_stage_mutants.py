"""Hand calculations of `stage_parts`' moments on the paths mutmut's run found unchecked: the
LoRA step (`_moments`) and torchtitan under FSDP2 (`titan_stage_parts`). `training_memory`
shows only the worst moment; these tests check every moment of the stage. Torch-free.

The saved tensors themselves are checked term by term elsewhere (tests/test_lora.py,
tests/test_titan_memory.py); here the moments are written out on top of their sum S.
"""

from __future__ import annotations

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.titan_sdpa_terms import titan_sdpa_saved_terms
from scaleplan.memory.training import training_memory as sp_memory
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
    # the policy's cache: block input, wqkv's output, SDPA's outputs, w1's and w2's outputs
    cache = (256 * 64 * 2 + 256 * 128 * 2 + 256 * 64 * 2 + 2 * 4 * 128 * 4 + 256 * 192 * 2
             + 256 * 64 * 2)
    # the last block's MLP backward (titan_fsdp_moments): block 0's cache, its own less the
    # consumed wqkv and w2 outputs plus what it rebuilds, two b s F gradients, the incoming
    # gradient and the loss; the head unit's fp32 reduce-scatter input, this block and the
    # prefetched one in bf16, w2's bf16 gradient; the token ids and positions
    last = (cache + cache - 256 * 128 * 2 - 256 * 64 * 2 + rebuilt
            + 2 * 256 * 192 * 2 + 256 * 64 * 2 + 8
            + HEAD * 4 + 2 * BLOCK * 2 + 64 * 192 * 2 + 2 * 256 * 8)
    assert S - loss_side == 2 * cache + 2 * 256 * 8  # what the old moment started from
    assert moments == {
        # the bf16 logits, their fp32 upcast and log-softmax; the gathered lm_head in bf16
        "forward_end": S + TV * 2 + TV * 4 + HEAD * 2,
        "backward_start": S + 2 * TV * 4 + HEAD * 2,
        "optimizer_step": 0,  # torchtitan's AdamW is fused
        "recompute": last,
        # lm_head's weight gradient made: every saved tensor but the fp32 log-softmax, the
        # [norm, lm_head] unit gathered and lm_head's gradient in bf16, the logits' gradient
        # (T V x 2), the final norm's input gradient (T d x 2), the loss's 8 bytes, the last
        # block prefetched
        "head_backward": (S - TV * 4 + HEAD * 2 + (HEAD - 64) * 2 + TV * 2 + 256 * 64 * 2 + 8
                          + BLOCK * 2),
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


def test_titan_one_rank_gathers_the_head_unit() -> None:
    # one data rank: torchtitan's FSDP2 on a one-rank mesh still copies the [final norm,
    # lm_head] unit into bf16 unsharded parameters (not resharded after forward) beside the
    # bf16 logits and their fp32 upcast
    *_, saved, _, _, _, moments = _titan(data=1)
    assert moments["forward_end"] == sum(saved.values()) + TV * 2 + TV * 4 + HEAD * 2


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


# What the 2026-12-05 rerun of mutmut over `scaleplan.memory.stage` found unchecked: the options
# each code path hands on (attention, device, impl, optimizer, compiled, checkpointing), the
# recompute code of compiled torchtune and of Hugging Face's compiled models, litgpt's weight
# copies at the backward start, torchtune's optimizer_in_backward held bytes, torchtitan without
# checkpointing. The callees' values are checked term by term in their own tests; here each
# path is shown to reach them with the options given, and a hand-written difference shows
# each option matters.

LLAMA = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=128,
                  vocab_size=100, block_size=32, bias=False, mlp="swiglu", norm="rmsnorm",
                  position="rope")  # tests/test_tune_litgpt_mutants.py's; tied head
LLAMA_PARAMS = 100 * 64 + 2 * (64 * 128 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64  # 80,448


def _one(cfg: GPTConfig, b: int, s: int, p: str, opt: str, attention: str,
         checkpointing: str, device: str, impl: str | None, hold: bool,
         **kw: object) -> tuple:  # type: ignore[type-arg]
    par = kw.pop("par", Parallelism())
    return stage_parts(cfg, b, s, p, opt, attention, checkpointing,  # type: ignore[arg-type]
                       device, par, impl, hold, "only", **kw)  # type: ignore[arg-type]


def test_lora_hf_path_hands_on_attention_device_and_impl() -> None:
    from scaleplan.memory.lora_terms import lora_recompute_moment, lora_stage_parts

    W, G, O, temp, saved, copies, all_copies = lora_stage_parts(
        LORA_TINY, QV, None, 1, 4, "bf16-mixed", "adamw", "eager", "full", "cpu", "foreach")
    parts = _one(LORA_TINY, 1, 4, "bf16-mixed", "adamw", "eager", "full", "cpu", "foreach",
                 False, implementation="hf", lora=QV)
    assert parts[:6] == (W, G, O, saved, copies, all_copies)
    assert parts[7]["optimizer_step"] == temp == 112 * 4  # foreach: one buffer, 112 adapters
    assert parts[7]["recompute"] == lora_recompute_moment(
        LORA_TINY, QV, 1, 4, "bf16-mixed", "eager", "cpu", saved, copies, all_copies)
    # eager attention saves its a x s x s probabilities, SDPA does not: the rebuilt layer grows
    flash = _one(LORA_TINY, 1, 4, "bf16-mixed", "adamw", "flash", "full", "cpu", "foreach",
                 False, implementation="hf", lora=QV)
    assert parts[7]["recompute"] != flash[7]["recompute"]
    # CPU's default is the for-loop AdamW: sqrt(v) and its quotient of the largest adapter
    # tensor (r 2: q's A 2 x 8 and B 8 x 2, v's A 2 x 8: 16 values), 2 x 16 x 4 bytes
    default = _one(LORA_TINY, 1, 4, "bf16-mixed", "adamw", "eager", "full", "cpu", None,
                   False, implementation="hf", lora=QV)
    assert default[7]["optimizer_step"] == 2 * 16 * 4


def test_lora_torchtune_and_litgpt_paths_hand_on_their_options() -> None:
    from scaleplan.memory.litgpt_lora_states import litgpt_lora_stage_parts
    from scaleplan.memory.step_switches import NO_SWITCHES
    from scaleplan.memory.tune_lora_terms import tune_lora_stage_parts

    tune = _one(LLAMA, 2, 8, "bf16-true", "adamw", "flash", "full", "cpu", "foreach", True,
                implementation="torchtune", compiled=True, lora=QV)
    assert tune == tune_lora_stage_parts(LLAMA, QV, None, 2, 8, "adamw", "full", "cpu",
                                         "foreach", True, NO_SWITCHES, True)
    # r 2 on q (A 2 x 64, B 64 x 2) and v (A 2 x 64, B 32 x 2): 448 per layer, 896 values;
    # bf16 (the recipe's dtype): foreach AdamW's one buffer 896 x 2, where CPU's default
    # for-loop makes 2 x 128 x 2 for the largest adapter tensor
    assert tune[7]["optimizer_step"] == 896 * 2
    assert _one(LLAMA, 2, 8, "bf16-true", "adamw", "flash", "full", "cpu", None, True,
                implementation="torchtune", compiled=True, lora=QV)[7]["optimizer_step"] \
        == 2 * 128 * 2
    # the compiled layer keeps less than the eager one: the recompute moment shrinks
    eager = _one(LLAMA, 2, 8, "bf16-true", "adamw", "flash", "full", "cpu", "foreach", True,
                 implementation="torchtune", lora=QV)
    assert eager[7]["recompute"] > tune[7]["recompute"]
    lit = _one(LLAMA, 2, 8, "bf16-true", "adamw", "flash", "none", "cpu", "foreach", True,
               implementation="litgpt", lora=QV)
    assert lit == litgpt_lora_stage_parts(LLAMA, QV, None, 2, 8, "bf16-true", "cpu",
                                          "foreach", True)
    assert lit[7]["optimizer_step"] == 896 * 2  # foreach, bf16 states


def test_litgpt_hands_on_checkpointing_device_and_weight_copies() -> None:
    from scaleplan.memory.litgpt_terms import litgpt_loss_transients, litgpt_saved_terms

    # GPT-2-like layout (LayerNorm): litgpt keeps fp32 LayerNorm statistics on CUDA
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=8)
    full = _one(cfg, 2, 5, "bf16-mixed", "sgd", "flash", "full", "cuda", None, False,
                implementation="litgpt")
    assert full[3] == litgpt_saved_terms(cfg, 2, 5, precision="bf16-mixed",
                                         checkpointing="full", device="cuda", layers=1)
    assert full[3] != litgpt_saved_terms(cfg, 2, 5, precision="bf16-mixed",
                                         checkpointing="none", device="cuda", layers=1)
    # in bf16 without checkpointing each LayerNorm keeps its mean and rstd per token in fp32
    # on CUDA, in bf16 on CPU: three norms (two in the block, the final one), 10 tokens
    none = _one(cfg, 2, 5, "bf16-true", "sgd", "flash", "none", "cuda", None, False,
                implementation="litgpt")
    assert none[3] == litgpt_saved_terms(cfg, 2, 5, precision="bf16-true",
                                         checkpointing="none", device="cuda", layers=1)
    cpu = litgpt_saved_terms(cfg, 2, 5, precision="bf16-true", checkpointing="none",
                             device="cpu", layers=1)
    assert sum(none[3].values()) - sum(cpu.values()) == 3 * 2 * 10 * (4 - 2)
    *_, saved, copies, all_copies, _, moments = _one(
        cfg, 2, 5, "bf16-mixed", "sgd", "flash", "none", "cuda", None, False,
        implementation="litgpt")
    # autocast's bf16 weight copies: c_attn 24 x 8, c_proj 8 x 8, c_fc 32 x 8, the MLP's
    # c_proj 8 x 32 and the tied head 16 x 8: 896 values x 2 bytes, all kept for backward
    assert copies == all_copies == 896 * 2
    fwd, bwd = litgpt_loss_transients(cfg, 2, 5, precision="bf16-mixed", hold_logits=False)
    assert moments["backward_start"] == sum(saved.values()) + 896 * 2 + bwd
    assert moments["forward_end"] == sum(saved.values()) + 896 * 2 + fwd


def test_torchtune_hands_on_its_compiled_recompute_code() -> None:
    from scaleplan.memory.stage_terms import recompute_moment
    from scaleplan.memory.tune_terms import tune_saved_terms

    par = Parallelism()
    for compiled in (False, True):
        *_, saved, copies, all_copies, _, moments = _one(
            LLAMA, 2, 8, "bf16-true", "adamw", "flash", "full", "cpu", "fused", False,
            implementation="torchtune", compiled=compiled)
        assert saved == tune_saved_terms(LLAMA, 2, 8, precision="bf16-true",
                                         checkpointing="full", device="cpu", layers=2,
                                         compiled=compiled)
        code = "torchtune-compiled" if compiled else "torchtune"
        # the eager step waits for the tied head's gradient, V d bf16 (measured:
        # tests/data/impl_recompute_peaks.json); the compiled step's was not measured
        head = 0 if compiled else 100 * 64 * 2
        assert moments["recompute"] == recompute_moment(
            LLAMA, 2, 8, "bf16-true", "flash", "cpu", par, saved, copies, all_copies, 2, code,
            head_gradient=head)
        other = "torchtune" if compiled else "torchtune-compiled"
        assert moments["recompute"] != recompute_moment(
            LLAMA, 2, 8, "bf16-true", "flash", "cpu", par, saved, copies, all_copies, 2, other,
            head_gradient=head)


def test_hf_compiled_recompute_code_follows_what_dynamo_traces() -> None:
    # GPT-2's checkpoint is traced by dynamo, so the compiled block is rebuilt; Llama's is not
    # (a graph break: transformers' eager layer runs, hf_compiled_terms' measurement), so
    # transformers' eager layer is. stage_parts replaced the code by "compiled" for both once.
    from scaleplan.memory.hf_compiled_terms import hf_compiled_saved_terms
    from scaleplan.memory.stage_terms import recompute_moment

    gpt2 = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8)
    par = Parallelism()
    # transformers' eager layer also waits for LLAMA's tied head gradient, V d fp32
    for cfg, code, other, head in ((gpt2, "compiled", "hf", 0),
                                   (LLAMA, "hf", "compiled", 100 * 64 * 4)):
        *_, saved, copies, all_copies, _, moments = _one(
            cfg, 1, 4, "32-true", "adamw", "flash", "full", "cuda", "fused", True,
            implementation="hf", compiled=True)
        assert saved == hf_compiled_saved_terms(cfg, 1, 4, precision="32-true", layers=2,
                                                checkpointing="full", device="cuda")
        args = (cfg, 1, 4, "32-true", "flash", "cuda", par, saved, copies, all_copies, 2)
        assert moments["recompute"] == recompute_moment(*args, code, head_gradient=head)
        assert moments["recompute"] != recompute_moment(*args, other, head_gradient=head)


def test_hf_compiled_takes_the_compiled_loss() -> None:
    gpt2 = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8)
    for cfg in (gpt2, LLAMA):
        *_, saved, _, all_copies, held, moments = _one(
            cfg, 1, 4, "32-true", "adamw", "flash", "full", "cuda", "fused", True,
            implementation="hf", compiled=True)
        # the compiled loss: the returned logits are the saved ones, nothing held on top
        assert held == 0
        assert moments["forward_end"] == sum(saved.values()) + all_copies


def test_torchtune_optimizer_in_backward_held_by_hand() -> None:
    from scaleplan.memory.step_switches import StepSwitches

    sw = StepSwitches(gradient_accumulation=False, optimizer_in_backward=True)

    def block_backward(device: str, impl: str | None) -> int:
        *_, moments = _one(LLAMA, 1, 4, "32-true", "adamw", "flash", "none", device, impl,
                           False, implementation="torchtune", switches=sw)
        return int(moments["block_backward"])

    *_, G, _, saved, _, _, _, _ = _one(LLAMA, 1, 4, "32-true", "adamw", "flash", "none",
                                       "cuda", None, False, implementation="torchtune",
                                       switches=sw)
    assert G == LLAMA_PARAMS * 4
    head_side = ("final_norm_input", "final_norm_stats", "final_norm_normalized",
                 "lm_head_input", "log_softmax", "targets")
    activations = sum(v for k, v in saved.items() if k not in head_side)
    # fp32, T = 4, d 64, f 128, V 100, tied: the output layer's gradient V d, the down
    # projection's gradient d f and foreach AdamW's one d f temporary (CUDA's default);
    # the MLP's two T f gradients are smaller
    held = 100 * 64 * 4 + 64 * 128 * 4 + 64 * 128 * 4
    assert block_backward("cuda", None) == activations + 4 * 64 * 4 + held - G
    # for-loop (CPU's default) makes two d f temporaries
    assert block_backward("cuda", "for-loop") - block_backward("cuda", None) == 64 * 128 * 4
    assert block_backward("cpu", None) == block_backward("cuda", "for-loop")
    assert block_backward("cpu", "foreach") == block_backward("cuda", None)


def test_titan_without_checkpointing_has_a_block_backward_not_a_recompute() -> None:
    moments = stage_parts(TITAN, 2, 128, "bf16-mixed", "adamw", "flash", "none", "cuda",
                          Parallelism(data=8, fsdp="full_shard"), None, False, "only",
                          implementation="torchtitan")[7]
    assert set(moments) == {"forward_end", "backward_start", "optimizer_step", "block_backward",
                            "head_backward"}


def test_titan_tensor_parallel_hands_on_its_options() -> None:
    from scaleplan.memory.titan_stage import titan_tp_parts

    par = Parallelism(data=2, tensor=2, fsdp="full_shard")
    parts = stage_parts(TITAN, 2, 128, "bf16-mixed", "adamw", "flash", "full", "cpu", par,
                        "foreach", False, "only", implementation="torchtitan")
    assert parts == titan_tp_parts(TITAN, 2, 128, "bf16-mixed", "adamw", "full", "cpu", par,
                                   "foreach")
    assert parts != titan_tp_parts(TITAN, 2, 128, "bf16-mixed", "adamw", "full", "cuda", par,
                                   "foreach")
    # foreach AdamW's fp32 sqrt(v) buffer over this rank's shard; fused (its default) none
    assert parts[7]["optimizer_step"] > 0
    assert titan_tp_parts(TITAN, 2, 128, "bf16-mixed", "adamw", "full", "cpu", par,
                          None)[7]["optimizer_step"] == 0
    assert parts[2] > titan_tp_parts(TITAN, 2, 128, "bf16-mixed", "sgd", "full", "cpu", par,
                                     "foreach")[2] == 0


def test_torchtune_offload_without_checkpointing_under_optimizer_in_backward() -> None:
    from scaleplan.memory.step_switches import StepSwitches

    def offload_backward(in_backward: bool) -> int:
        sw = StepSwitches(gradient_accumulation=False, optimizer_in_backward=in_backward,
                          activation_offload=True)
        *_, moments = _one(LLAMA, 1, 4, "32-true", "adamw", "flash", "none", "cuda", None,
                           False, implementation="torchtune", switches=sw)
        return int(moments["offload_backward"])

    # the moments sit on all gradients G (80,448 fp32 values); stepped in backward only the
    # largest parameter's gradient is alive: the MLP's 64 x 128 (the embedding is 100 x 64)
    assert offload_backward(True) - offload_backward(False) == 64 * 128 * 4 - LLAMA_PARAMS * 4


def test_lora_paths_take_the_device() -> None:
    # torchtune's LoRA on CUDA: foreach AdamW by default, one bf16 buffer of the 896 adapter
    # values (on CPU the for-loop's 2 x 128 x 2, test above)
    tune = _one(LLAMA, 2, 8, "bf16-true", "adamw", "flash", "full", "cuda", None, False,
                implementation="torchtune", lora=QV)
    assert tune[7]["optimizer_step"] == 896 * 2
    # peft's LoRA dropout: the rebuilt layer keeps its masks as bool on CUDA, fp32 on CPU;
    # a later layer's two q and v masks of 1 x 4 x 8: 2 x 32 x (4 - 1) bytes fewer on CUDA
    drop = LoRA(2, targets=("q", "v"), dropout=0.1)

    def recompute(device: str) -> int:
        return int(_one(LORA_TINY, 1, 4, "32-true", "adamw", "flash", "full", device, "fused",
                        False, implementation="hf", lora=drop)[7]["recompute"])

    saved_cpu = _one(LORA_TINY, 1, 4, "32-true", "adamw", "flash", "full", "cpu", "fused",
                     False, implementation="hf", lora=drop)[3]
    saved_cuda = _one(LORA_TINY, 1, 4, "32-true", "adamw", "flash", "full", "cuda", "fused",
                      False, implementation="hf", lora=drop)[3]
    assert saved_cpu == saved_cuda  # checkpointed: only the block inputs and the head
    assert recompute("cpu") - recompute("cuda") == 2 * 32 * 3


def test_the_stage_hands_its_device_to_the_model_wide_terms() -> None:
    # Two sliding blocks (window 16) at s = 64 with SDPA: CPU's fused kernel takes the band as a
    # mask and keeps a float copy of it per sliding block (the reference grid's mistral-window
    # row measures it): 2 x 64 x 64 x 4 bytes in fp32; CUDA's kernels take the window itself
    # (flash-attn's window_size) and keep nothing s x s, so the window changes no saved byte.
    base = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=128, block_size=64)
    kw = dict(micro_batch_size=2, seq_len=64, precision="32-true", attention="flash")
    windowed = GPTConfig(**base, sliding_window=16, sliding_window_layers=2)
    plain = GPTConfig(**base)
    for device, band in (("cuda", 0), ("cpu", 2 * 64 * 64 * 4)):
        grown = (sp_memory(windowed, device=device, **kw).saved_for_backward
                 - sp_memory(plain, device=device, **kw).saved_for_backward)
        assert grown == band, device


def test_litgpt_rebuilt_layernorm_keeps_fp32_stats_on_cuda_by_hand() -> None:
    # litgpt's Pythia layout (tests/test_impl_recompute_peaks_replay.py's shape: d 128, two
    # blocks with separate norms), bf16 weights, b 2 x s 48 = T 96, full checkpointing. The
    # rebuilt block's two LayerNorms each keep a mean and an rstd per token: in bf16 on CPU (the
    # measured Pythia bf16-true step there is exact), in fp32 on CUDA (its layer_norm kernel
    # makes them in the accumulate type): 2 norms x 2 x 96 x (4 - 2) = 768 bytes more
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=256,
                    position="rope", rotary_fraction=0.25, parallel="separate_norms",
                    tie_embeddings=False)
    recompute = {device: stage_parts(cfg, 2, 48, "bf16-true", "adamw", "flash", "full", device,
                                     Parallelism(), None, True, "only",
                                     implementation="litgpt")[-1]["recompute"]
                 for device in ("cpu", "cuda")}
    assert recompute["cuda"] - recompute["cpu"] == 2 * 2 * 96 * (4 - 2)
