"""Training memory of mixture-of-experts and latent-attention models (issue 18), by hand.

Mixtral-8x7B and DeepSeek-V3 are built from their released config.json values
(https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json,
https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json; fixtures in
tests/data/hf_configs). Their parameter totals are the published ones (46.7B; 671B, with
transformers 5.25's meta-device counts in tests/data/hf_configs/SOURCES.md), and every figure
below is written out from the config's sizes.
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.activations import block_saved_terms
from scaleplan.memory.mlp_terms import routed_rows
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.architecture import MLA, MoE
from scaleplan.model.config import GPTConfig
from scaleplan.planning.planner import plan

LLAMA_LIKE = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
              "tie_embeddings": False}
MIXTRAL = GPTConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, vocab_size=32000,
                    block_size=32768, mlp_hidden=14336, **LLAMA_LIKE,  # type: ignore[arg-type]
                    moe=MoE(n_experts=8, top_k=2, expert_hidden=14336))
DEEPSEEK_V3 = GPTConfig(
    n_layer=61, n_head=128, n_embd=7168, vocab_size=129280, block_size=163840,
    mlp_hidden=18432, **LLAMA_LIKE,  # type: ignore[arg-type]
    mla=MLA(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
            v_head_dim=128),
    moe=MoE(n_experts=256, top_k=8, expert_hidden=2048, n_shared_experts=1, n_dense_layers=3))

# Mixtral-8x7B by hand: per block 2 norms of 4096, q/k/v 4096 x (32 + 2 x 8) x 128, output
# 4096 x 4096, router 8 x 4096, experts 8 x 3 x 14336 x 4096; embedding and head 32000 x 4096
# each, final norm 4096.
MIXTRAL_ROUTED = 32 * 8 * 3 * 14336 * 4096
MIXTRAL_OTHER = (32 * (2 * 4096 + 4096 * 48 * 128 + 4096 * 4096 + 8 * 4096)
                 + 2 * 32000 * 4096 + 4096)

# DeepSeek-V3 by hand: per block norms 2 x 7168 + 1536 (q latent) + 512 (kv latent); MLA
# q_a 7168 x 1536, q_b 1536 x 128 x 192, kv_a 7168 x (512 + 64), kv_b 512 x 128 x (128 + 128),
# output 128 x 128 x 7168; 3 dense MLPs 3 x 18432 x 7168; 58 MoE MLPs: router 256 x 7168,
# shared expert 3 x 2048 x 7168, routed 256 x 3 x 2048 x 7168.
DS_NORMS = 2 * 7168 + 1536 + 512
DS_MLA = (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168)
DS_MOE_DENSE_PART = 256 * 7168 + 3 * 2048 * 7168  # router and shared expert
DS_ROUTED_PER_BLOCK = 256 * 3 * 2048 * 7168
DS_EMBEDDING = 129280 * 7168  # and the untied head, as large


def test_hand_counts_are_the_published_totals() -> None:
    # the presets are these released configs
    assert GPTConfig.preset("mixtral-8x7b") == MIXTRAL
    assert GPTConfig.preset("deepseek-v3") == DEEPSEEK_V3
    # Mixtral-8x7B 46,702,792,704 and DeepSeek-V3 671,026,404,352 (SOURCES.md: transformers'
    # meta-device counts; 46.7B and 671B as published)
    assert MIXTRAL_ROUTED + MIXTRAL_OTHER == 46_702_792_704
    ds = (2 * DS_EMBEDDING + 7168 + 61 * (DS_NORMS + DS_MLA) + 3 * 3 * 18432 * 7168
          + 58 * (DS_MOE_DENSE_PART + DS_ROUTED_PER_BLOCK))
    assert ds == 671_026_404_352


def test_mixtral_holds_every_expert_on_one_gpu() -> None:
    m = training_memory(MIXTRAL, micro_batch_size=1, seq_len=4096, precision="bf16-mixed")
    n = MIXTRAL_ROUTED + MIXTRAL_OTHER
    assert m.weights == 4 * n and m.gradients == 4 * n  # fp32 parameters and gradients
    # AdamW: two fp32 moments, plus a 4-byte step per tensor: per block 2 norms, c_attn,
    # c_proj, router, the 3 stacked expert tensors (8 tensors); wte, ln_f, lm_head
    assert m.optimizer == 8 * n + 4 * (32 * 8 + 3)


def test_mixtral_expert_parallelism_divides_the_routed_experts() -> None:
    par = Parallelism(data=8, expert=8, zero=1)
    m = training_memory(MIXTRAL, micro_batch_size=1, seq_len=4096, precision="bf16-mixed",
                        parallelism=par)
    held = MIXTRAL_OTHER + MIXTRAL_ROUTED // 8  # one expert of each layer per rank
    assert m.weights == 4 * held
    # ZeRO-1: gradients whole plus one 25 MiB reduction bucket
    assert m.gradients == 4 * held + 25 * 2**20
    # ZeRO-1 shards AdamW's 8 bytes per parameter: the non-expert ones over the 8 data ranks,
    # each rank's expert over the data / expert = 1 ranks that hold it (not at all); the
    # 4-byte step tensors are shared out with them (a few hundred bytes)
    assert m.optimizer == pytest.approx(8 * (MIXTRAL_OTHER / 8 + MIXTRAL_ROUTED / 8), abs=2048)


def test_moe_block_saved_terms_by_hand() -> None:
    # b=2, s=8: T=16 tokens, top_k=2 of 4 experts: 32 routed rows; d=16, f_e=24, fp32
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=32, block_size=8, **LLAMA_LIKE,  # type: ignore[arg-type]
                    moe=MoE(n_experts=4, top_k=2, expert_hidden=24, n_shared_experts=1))
    t = block_saved_terms(cfg, 2, 8, precision="32-true", attention="flash",
                          checkpointing="none", device="cpu", dropout=False, kind="moe")
    assert t["mlp_input"] == 16 * 16 * 4  # the router's input
    assert t["moe_router_probs"] == 16 * 4 * 4
    assert t["moe_routing"] == 16 * 2 * (8 + 4) + 16 * 4  # indices, weights, their sum
    assert t["moe_expert_inputs"] == 32 * 16 * 4
    assert t["moe_expert_activations"] == 4 * 32 * 24 * 4  # gate, act, up, product
    assert t["moe_expert_outputs"] == 32 * 16 * 4 + 32 * 4  # output and routing weight
    assert t["moe_expert_weighted"] == 32 * 16 * 4  # index_add_'s source
    assert t["moe_routed_indices"] == 32 * 2 * 8  # token and slot, int64
    assert t["moe_shared_activations"] == 4 * 16 * 24 * 4  # one shared expert of 24
    assert t["moe_shared_input"] == 0  # the router's input storage, saved once
    dense = block_saved_terms(cfg, 2, 8, precision="32-true", attention="flash",
                              checkpointing="none", device="cpu", dropout=False)
    assert "moe_router_probs" not in dense and dense["mlp_activations"] > 0


def test_capacity_factor_pads_every_expert_buffer() -> None:
    # 100 tokens x top_k 2 over 8 experts, capacity 1.25: ceil(1.25 x 200 / 8) = 32 rows each
    cfg = MIXTRAL.replace(moe=MoE(n_experts=8, top_k=2, expert_hidden=64,
                                  capacity_factor=1.25))
    assert routed_rows(cfg, 100) == 8 * 32
    assert routed_rows(MIXTRAL, 100) == 200  # dropless: tokens x top_k


def test_mla_saves_latents_not_full_keys() -> None:
    # DeepSeek-V3's attention on CUDA (fused kernel), b=1, s=1024, bf16-true (e=2)
    t = block_saved_terms(DEEPSEEK_V3, 1, 1024, precision="bf16-true", attention="flash",
                          checkpointing="none", device="cuda", dropout=False)
    T = 1024
    assert t["mla_q_latent"] == T * 1536 * 2
    assert t["mla_kv_latent_rope"] == T * (512 + 64) * 2
    assert t["mla_kv_latent"] == T * 512 * 2
    assert t["mla_qk_rotated"] == 2 * T * 128 * 192 * 2
    assert t["mla_kv_heads"] == T * 128 * (128 + 128) * 2
    assert t["attn_out"] == T * 128 * 128 * 2  # the value width, not head_dim 192


def test_deepseek_v3_plan_with_expert_tensor_and_pipeline_parallelism() -> None:
    par = Parallelism(data=64, expert=64, tensor=8, pipeline=4, zero=1)
    p = plan(DEEPSEEK_V3, "H100 SXM", world_size=par.gpus, parallelism=par,
             total_tokens=10**12, seq_len=4096, precision="bf16-fp32-master")
    assert p.fits
    # the first stage: ceil(61 / 4) = 16 blocks, all MoE (the most a stage can hold), and the
    # embedding split over 8 tensor ranks; matrices / 8, norms replicated, routed experts over
    # 8 tensor x 64 expert ranks; 2-byte bf16 weights, ZeRO-1 leaves them whole
    block = (-(-(DS_MLA + DS_MOE_DENSE_PART) // 8) + DS_NORMS
             + DS_ROUTED_PER_BLOCK // (8 * 64))
    assert p.memory.weights == 2 * (DS_EMBEDDING // 8 + 16 * block)
    assert p.parallelism is not None and p.parallelism.expert == 64


def test_expert_parallelism_is_checked() -> None:
    with pytest.raises(ValueError, match="expert=3 does not divide data=8"):
        Parallelism(data=8, expert=3)
    with pytest.raises(ScaleplanError, match="needs a mixture of experts"):
        training_memory(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=64,
                        parallelism=Parallelism(data=2, expert=2))
    with pytest.raises(ScaleplanError, match=r"expert=16 does not divide moe.n_experts=8"):
        training_memory(MIXTRAL, micro_batch_size=1, seq_len=64,
                        parallelism=Parallelism(data=16, expert=16))


def test_alibi_saves_no_mask_and_promotes_eager_scores() -> None:
    # ALiBi's bias is added (nothing saved); under autocast the fp32 bias promotes the scores:
    # softmax keeps b a s^2 fp32 and the product with v a bf16 cast. b=1, a=4, s=64
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, position="alibi")
    m = training_memory(cfg, micro_batch_size=1, seq_len=64, attention="eager", device="cpu")
    t = m.saved_breakdown
    assert "causal_mask" not in t and "position_ids" not in t
    assert t["attn_scores"] == 2 * 4 * 64 * 64 * 4  # two blocks
    assert t["attn_scores_cast"] == 2 * 4 * 64 * 64 * 2


def test_alibi_with_a_sliding_window_is_refused_by_name() -> None:
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, position="alibi",
                    sliding_window=16)
    with pytest.raises(ScaleplanError, match="position='alibi' with sliding_window=16"):
        training_memory(cfg, micro_batch_size=1, seq_len=64)


def test_max_micro_batch_and_fits_on_for_mixtral() -> None:
    from scaleplan.memory.limits import available_memory_bytes, max_micro_batch_size
    from scaleplan.validation import FitsOn, check

    par = Parallelism(data=8, expert=8, tensor=8, zero=1)
    b = max_micro_batch_size(MIXTRAL, "H100 SXM", seq_len=4096, parallelism=par)
    limit = available_memory_bytes("H100 SXM")

    def total(n: int) -> int:
        return training_memory(MIXTRAL, micro_batch_size=n, seq_len=4096,
                               parallelism=par).total

    assert b >= 1 and total(b) <= limit < total(b + 1)
    # one H100 cannot hold 46.7B parameters' fp32 weights, gradients and AdamW moments
    # (16 bytes each: 747 GB), whatever the micro-batch
    assert limit < 16 * (MIXTRAL_ROUTED + MIXTRAL_OTHER)
    findings = check(MIXTRAL, FitsOn("H100 SXM", micro_batch_size=1, seq_len=4096))
    assert findings and findings[0].code == "scaleplan.does_not_fit"


def test_memory_grid_agrees_with_training_memory_for_moe_and_windows() -> None:
    import numpy as np

    from scaleplan.memory.limits import memory_grid

    # capacity-factor rows (a ceiling), a sliding band on CPU (s > window) and dense + MoE
    # blocks: the float64 grid runs the same arithmetic as the exact scalar function
    cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=64, block_size=64, vocab_size=200,
                    **LLAMA_LIKE, sliding_window=16, sliding_window_layers=1,  # type: ignore[arg-type]
                    moe=MoE(n_experts=4, top_k=2, expert_hidden=32, capacity_factor=1.5,
                            n_dense_layers=1))
    sizes, lengths = [1, 2, 3], [8, 16, 48]
    grid = memory_grid(cfg, micro_batch_size=np.array([[b] for b in sizes]),
                       seq_len=np.array([lengths]), device="cpu")
    assert [[int(v) for v in row] for row in np.asarray(grid)] == [
        [training_memory(cfg, micro_batch_size=b, seq_len=s, device="cpu").total
         for s in lengths] for b in sizes]
