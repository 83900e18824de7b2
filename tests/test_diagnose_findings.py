# ruff: noqa: E501  (the sample logs keep their real, long lines)
"""diagnose()'s findings on real-shaped logs (issue 23): divergence, stuck, initial-loss,
overfitting from eval losses alone, under-trained, repeated-data, throughput,
batch-size-changed; a log diagnosed without a config; unknown GPUs; and the false alarms it must
not raise (batch noise is no spike, a healthy llm.c run is no plateau, a schedule that is not
known is not judged).

Expected values are worked out by hand in each test, or read off the fixture's own lines.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nanogpt_files import SHAKESPEARE_CHAR

from scaleplan.diagnosis.examine import diagnose
from scaleplan.diagnosis.logs import TrainingLog, read_log
from scaleplan.diagnosis.records import LogRecord, LogWarning
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import load_nanogpt_config
from scaleplan.model.training_config import TrainingConfig
from scaleplan.scaling.laws import scaling_law

LN_50304 = math.log(50304)  # 10.826: the loss of a uniform guess over nanoGPT's vocabulary

# GPT-2 small as nanoGPT's config file gives it (bias and vocab at train.py's defaults), from
# scratch, 524,288 tokens a step; a schedule of 5000 steps.
GPT2_FILE = """\
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
batch_size = 16
gradient_accumulation_steps = 32
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 100
"""


def iter_lines(losses: list[float], start: int = 0) -> str:
    """nanoGPT train.py's per-step lines, one per loss."""
    return "".join(f"iter {start + i}: loss {v:.4f}, time 100.00ms, mfu 30.00%\n"
                   for i, v in enumerate(losses))


def noisy_curve(n: int, *, noise: float, seed: int = 0) -> list[float]:
    """A falling loss (10.8 -> ~3.3, a power law in the step) with relative batch noise."""
    rng = random.Random(seed)
    return [(3.0 + 7.8 / (1 + i / 40) ** 0.7) * (1 + rng.uniform(-noise, noise))
            for i in range(n)]


# ---- the log alone --------------------------------------------------------------------------

def test_the_log_alone_is_diagnosed_with_notes() -> None:
    text = "".join(f"iter {i}: loss {v:.4f}, time 10.00ms, mfu 5.00%\n"
                   for i, v in enumerate([10.9, 9.0, 8.0, 7.2, 6.9]))
    text += "iter 5: loss nan, time 10.00ms, mfu 5.00%\n"
    d = diagnose(log=read_log("t.log", text=text))
    assert (d.nanogpt_params, d.total_params, d.recommendation) == (None, None, None)
    assert d.codes() == ("divergence",)  # the NaN on line 6 needs no model
    assert any(n.startswith("no model config: size-mismatch") for n in d.notes)
    assert any("pass vocab_size=" in n for n in d.notes)  # no vocab: ln(vocab) checks skipped
    f = d.finding("divergence")
    assert f is not None and f.severity == "error"
    assert (f.numbers["non-finite-loss_count"], f.numbers["non-finite-loss_line"]) == (1, 6)


def test_the_log_alone_with_a_vocab_checks_the_first_loss() -> None:
    # 12.5 at iter 0 is 1.67 nats above ln(50304): logits far from uniform at the start
    log = read_log("t.log", text=iter_lines([12.5, 11.0, 9.0]))
    assert diagnose(log=log).finding("initial-loss") is None  # no vocab, no check
    f = diagnose(log=log, vocab_size=50304).finding("initial-loss")
    assert f is not None
    assert math.isclose(float(f.numbers["difference"]), 12.5 - LN_50304)
    assert "ln(50,304) = 10.826" in f.message


def test_a_config_scaleplan_cannot_model_is_a_note(tmp_path: Path) -> None:
    # T5 is an encoder-decoder: from_hf refuses it; the log is still diagnosed
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "t5", "d_model": 512, "num_layers": 6}))
    log = read_log("t.log", text="{'loss': 0.0, 'learning_rate': 5e-05, 'epoch': 0.1}\n" * 4)
    d = diagnose(config=config, log=log)
    assert d.nanogpt_params is None
    assert any("scaleplan cannot model this config" in n and "'t5'" in n for n in d.notes)
    # four zeros in a row; four printed rates are too few to judge a schedule (LR_MIN_PRINTED)
    assert d.codes() == ("stuck",)
    # an unreadable config is still an error: the user's to fix
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        diagnose(config=tmp_path / "bad.json", log=log)


# ---- GPUs -----------------------------------------------------------------------------------

def test_an_unknown_gpu_is_a_note_not_an_abort() -> None:
    run = load_nanogpt_config("t.py", text="n_embd = 384\n")
    log = read_log("t.log", text="iter 10: loss 4.0000, time 100.00ms, mfu 11.62%\n")
    d = diagnose(config=run, log=log, gpu="TITAN Xp")
    assert d.gpu is None and "mfu-reference-gpu" not in d.codes()
    assert any(n.startswith("gpu='TITAN Xp' is not a GPU scaleplan can use") for n in d.notes)


def test_a_gpu_without_bf16_is_read_against_its_fp16_peak() -> None:
    # V100 SXM2: 125 TFLOP/s fp16 tensor (datasheet), no bf16. nanoGPT's 11.62% of 312 TFLOP/s
    # = 36.25 TFLOP/s achieved = 29.0% of 125.
    run = load_nanogpt_config("t.py", text="n_embd = 384\n")
    log = read_log("t.log", text="iter 10: loss 4.0000, time 100.00ms, mfu 11.62%\n")
    f = diagnose(config=run, log=log, gpu="V100 SXM2 16GB").finding("mfu-reference-gpu")
    assert f is not None
    assert f.numbers["gpu_peak_flops"] == 125e12
    assert math.isclose(float(f.numbers["real_mfu_percent"]), 100 * 0.1162 * 312 / 125)
    assert "no dense bf16 peak, so its fp16 peak (125 TFLOP/s) is used" in f.message


# ---- divergence -----------------------------------------------------------------------------

def test_a_non_finite_loss_names_its_count_line_and_step() -> None:
    log = TrainingLog(
        source="t.log", format="nanogpt",
        records=tuple(LogRecord(kind="train", step=i, train_loss=3.0) for i in range(1, 5)),
        warnings=(LogWarning(code="non-finite-loss", line=313, step=312, count=7,
                             text="iter 312: loss nan, time 95.10ms, mfu 40.00%"),
                  LogWarning(code="non-finite-grad-norm", line=311, step=311,
                             text="step 311 | loss 3.1 | norm inf")))
    f = diagnose(log=log).finding("divergence")
    assert f is not None and f.severity == "error"
    assert (f.numbers["non-finite-loss_count"], f.numbers["non-finite-loss_line"],
            f.numbers["non-finite-loss_step"]) == (7, 313, 312)
    assert f.numbers["non-finite-grad-norm_step"] == 311
    assert "on 7 line(s), first on line 313 at step 312" in f.message
    assert "gradient norm" in f.message


def test_a_spike_far_above_the_trend_is_divergence() -> None:
    # 40 steps at 3.00-3.02, then 7.5: the median of the 20 before is 3.01, and 7.5 is 2.49x it
    losses = [3.0 + 0.01 * (i % 3) for i in range(40)] + [7.5, 7.4, 7.6]
    f = diagnose(log=read_log("t.log", text=iter_lines(losses))).finding("divergence")
    assert f is not None and f.severity == "error"  # not back down by the end
    assert (f.numbers["spike_step"], f.numbers["spike_loss"]) == (40, 7.5)  # the first
    assert f.numbers["median_before_spike"] == 3.01
    assert (f.numbers["spike_count"], f.numbers["highest_spike_loss"]) == (3, 7.6)
    assert "2.49x the median 3.0100" in f.message


def test_a_spike_that_recovers_is_a_warning() -> None:
    losses = [3.0 + 0.01 * (i % 3) for i in range(40)] + [6.0] + [3.0] * 10
    f = diagnose(log=read_log("t.log", text=iter_lines(losses))).finding("divergence")
    assert f is not None and f.severity == "warning" and f.numbers["recovered"] == 1
    assert "came back down" in f.message


@pytest.mark.parametrize("noise", [0.03, 0.10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_noise_is_no_spike(noise: float, seed: int) -> None:
    # one batch's loss varies by a few % (large batches, 0.5M tokens) to ~10%: 2000 steps of a
    # pretraining curve with uniform noise of +-noise, never a divergence
    losses = noisy_curve(2000, noise=noise, seed=seed)
    d = diagnose(log=read_log("t.log", text=iter_lines(losses)), vocab_size=50304)
    assert "divergence" not in d.codes() and "stuck" not in d.codes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fine_tune_noise_is_no_spike(seed: int) -> None:
    # a fine-tune of batch 8: its logged loss (2.5 falling to 1.0) varies by +-30% a batch
    rng = random.Random(seed)
    losses = [(1.0 + 1.5 / (1 + i / 50)) * (1 + rng.uniform(-0.3, 0.3)) for i in range(1500)]
    d = diagnose(log=read_log("t.log", text=iter_lines(losses)), vocab_size=50257)
    assert "divergence" not in d.codes() and "stuck" not in d.codes()


def test_a_jump_to_a_higher_level_that_stays_is_divergence() -> None:
    # an author's "Abnormal loss" fine-tune (tests/data/logs/hf_trainer_deberta_abnormal.log),
    # as a Trainer prints it: training loss 2.18-2.43, then 4.31 and about 4.2 to the end
    losses = [6.5124, 4.6347, 4.3661, 3.8753, 3.6069, 3.2298, 2.8288, 2.652, 2.5843, 2.3453,
              2.2699, 2.3233, 2.2385, 2.1784, 2.2486, 2.1836, 2.4345, 4.3063, 4.2751, 4.1994,
              4.2215, 4.2351, 4.202]
    text = "".join(f"{{'loss': {v}, 'epoch': {0.34 * (i + 1):.2f}}}\n" for i, v in enumerate(losses))
    f = diagnose(log=read_log("trainer.log", text=text)).finding("divergence")
    assert f is not None and f.severity == "error"
    # by hand: the 5 losses before 4.3063 are 2.2385 2.1784 2.2486 2.1836 2.4345, median 2.2385;
    # the lowest from there on is 4.1994, 1.88x it
    assert (f.numbers["shift_loss"], f.numbers["level_before_shift"],
            f.numbers["lowest_after_shift"]) == (4.3063, 2.2385, 4.1994)
    # the same jump that comes back down two logs later is no level shift (and with fewer than
    # 20 points before it, no spike either)
    back = [*losses[:19], 2.15, 2.12, 2.11, 2.10]
    text = "".join(f"{{'loss': {v}}}\n" for v in back)
    assert diagnose(log=read_log("trainer.log", text=text)).finding("divergence") is None


def test_a_jump_back_to_ln_vocab_is_divergence() -> None:
    # down to 4.0 (6.8 nats under ln(50304)), then 10.9: a uniform guess again. Evaluations
    # (nanoGPT's step lines) a few hundred steps apart: no spike check has 20 points before it
    text = ("step 0: train loss 10.9900, val loss 10.9900\nstep 500: train loss 5.0000, val loss 5.0000\n"
            "step 1000: train loss 4.0000, val loss 4.0000\nstep 1500: train loss 10.9000, val loss 10.9000\n")
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    f = diagnose(config=run, log=read_log("t.log", text=text)).finding("divergence")
    assert f is not None and f.severity == "error"
    assert (f.numbers["jump_step"], f.numbers["jump_loss"], f.numbers["lowest_before_jump"]) == \
        (1500, 10.9, 4.0)
    assert math.isclose(float(f.numbers["ln_vocab"]), LN_50304)


# ---- stuck ----------------------------------------------------------------------------------

def test_a_constant_loss_is_stuck() -> None:
    # 60 steps of 6.2341 after a normal start: the weights do not change
    losses = [10.9, 9.5, 8.1, 7.0] + [6.2341] * 60
    f = diagnose(log=read_log("t.log", text=iter_lines(losses))).finding("stuck")
    assert f is not None and f.severity == "error"
    assert (f.numbers["constant_loss"], f.numbers["points"], f.numbers["from_step"]) == \
        (6.2341, 60, 4)
    assert "from step 4 to step 63" in f.message
    # 19 of them is not enough (CONSTANT_MIN_POINTS = 20), and neither is noise at 4 decimals
    short = [10.9, 9.5, 8.1, 7.0] + [6.2341] * 19 + [6.1]
    assert diagnose(log=read_log("t.log", text=iter_lines(short))).finding("stuck") is None


def test_a_loss_that_never_left_its_first_value_is_stuck() -> None:
    # lit-gpt issue 125 posts two lines, iter 1 and iter 400, both "loss 11.0666": a fresh
    # model's loss always falls in 399 steps
    text = ("iter 1: loss 11.0666, time: 13381.00ms, speed: 306 toks/s/device\n"
            "iter 400: loss 11.0666, time: 19090.34ms, speed: 214 toks/s/device\n")
    f = diagnose(log=read_log("t.log", text=text)).finding("stuck")
    assert f is not None and (f.numbers["points"], f.numbers["from_step"]) == (2, 1)
    # the same two values later in a run (a plateau, evaluated 399 steps apart) prove nothing
    later = text.replace("iter 1:", "iter 1001:").replace("iter 400:", "iter 1400:")
    assert diagnose(log=read_log("t.log", text=later)).finding("stuck") is None
    # nor do two values 99 steps apart
    close = text.replace("iter 400:", "iter 100:")
    assert diagnose(log=read_log("t.log", text=close)).finding("stuck") is None


def test_a_trainer_logging_zero_loss_is_stuck() -> None:
    text = "".join(f"{{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': {5e-05 - i * 1e-6:.1e}, "
                   f"'epoch': {0.1 * (i + 1):.1f}}}\n" for i in range(5))
    f = diagnose(log=read_log("trainer.log", text=text)).finding("stuck")
    assert f is not None and f.numbers["points"] == 5
    assert "masked with -100" in f.message


def test_a_loss_left_at_ln_vocab_is_stuck() -> None:
    # 1000 steps, every loss within 0.2 of ln(50304) = 10.826: nothing learnt
    losses = [LN_50304 + 0.1 * math.sin(i) for i in range(0, 1001, 10)]
    text = "".join(f"iter {10 * i}: loss {v:.4f}, time 100.00ms, mfu 30.00%\n"
                   for i, v in enumerate(losses))
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    d = diagnose(config=run, log=read_log("t.log", text=text))
    f = d.finding("stuck")
    assert f is not None and f.numbers["vocab_size"] == 50304
    assert "divergence" not in d.codes()  # it never was well below ln(vocab)
    # the first 400 steps of a real run sit above ln(V) - 0.5 only at the very start
    assert diagnose(config=run, log=read_log("t.log", text=iter_lines(noisy_curve(
        1000, noise=0.03)))).finding("stuck") is None


# ---- initial loss ---------------------------------------------------------------------------

def test_initial_loss_far_below_ln_vocab_from_scratch() -> None:
    # a from-scratch nanoGPT run (init_from not set: 'scratch') whose first loss is 3.1
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    log = read_log("t.log", text=iter_lines([3.1, 3.0, 2.9]))
    f = diagnose(config=run, log=log).finding("initial-loss")
    assert f is not None
    assert math.isclose(float(f.numbers["difference"]), 3.1 - LN_50304)
    # a fine-tune from GPT-2 starts there by design: nothing
    tuned = load_nanogpt_config("ft.py", text=GPT2_FILE + "init_from = 'gpt2'\n")
    assert diagnose(config=tuned, log=log).finding("initial-loss") is None


def test_initial_loss_of_a_healthy_start_and_a_character_model(tmp_path: Path) -> None:
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    assert diagnose(config=run, log=read_log("t.log", text=iter_lines([10.99, 9.8]))
                    ).finding("initial-loss") is None
    # nanoGPT's shakespeare_char: 65 characters (its prepare.py); 4.2 is ln(65) = 4.17, not 6.6
    # nats below ln(50304), the vocab_size its config file would leave
    char = load_nanogpt_config("c.py", text="dataset = 'shakespeare_char'\nn_layer = 6\n"
                               "n_head = 6\nn_embd = 384\n")
    d = diagnose(config=char, log=read_log("t.log", text=iter_lines([4.2, 3.9])))
    assert d.finding("initial-loss") is None
    # a character dataset of unknown vocabulary: the ln(vocab) checks are skipped, with a note
    other = load_nanogpt_config("c.py", text="dataset = 'enwik8_char'\n")
    d = diagnose(config=other, log=read_log("t.log", text=iter_lines([4.2, 3.9])))
    assert d.finding("initial-loss") is None
    assert any("looks character-level" in n for n in d.notes)


# ---- overfitting from evaluation losses alone ----------------------------------------------

TRAINER_OVERFIT = """\
{'loss': 2.40, 'learning_rate': 4.5e-05, 'epoch': 0.5}
{'loss': 2.10, 'learning_rate': 4.0e-05, 'epoch': 1.0}
{'eval_loss': 2.20, 'epoch': 1.0}
{'loss': 1.60, 'learning_rate': 3.0e-05, 'epoch': 1.5}
{'loss': 1.30, 'learning_rate': 2.0e-05, 'epoch': 2.0}
{'eval_loss': 2.28, 'epoch': 2.0}
{'loss': 0.90, 'learning_rate': 1.0e-05, 'epoch': 2.5}
{'loss': 0.60, 'learning_rate': 0.0, 'epoch': 3.0}
{'eval_loss': 2.45, 'epoch': 3.0}
"""


def test_overfitting_from_trainer_eval_losses() -> None:
    d = diagnose(log=read_log("trainer.log", text=TRAINER_OVERFIT))
    f = d.finding("overfitting")
    assert f is not None
    # best 2.20 after epoch 1; 2.28 and 2.45 after it (2.45 is 11.4% up); the training loss
    # fell from 2.25 (median of 2.40, 2.10) to 0.75 (median of 0.90, 0.60)
    assert (f.numbers["best_val_loss"], f.numbers["last_val_loss"]) == (2.2, 2.45)
    assert f.numbers["evaluations_after_best"] == 2
    assert (f.numbers["train_loss_before"], f.numbers["train_loss_latest"]) == (2.25, 0.75)
    assert "from its best 2.2000 at epoch 1 to 2.4500" in f.message and "11.4% up" in f.message
    # three epochs of the fine-tuning data: repeated, but within Muennighoff et al.'s ~4
    r = d.finding("repeated-data")
    assert r is not None and r.severity == "info" and r.numbers["epochs"] == 3.0


def test_no_overfitting_when_train_and_val_rise_together() -> None:
    # both losses rise: that is no memorising (it is an LR or data problem)
    text = TRAINER_OVERFIT.replace("'loss': 0.90", "'loss': 2.50").replace("'loss': 0.60",
                                                                         "'loss': 2.70")
    assert diagnose(log=read_log("trainer.log", text=text)).finding("overfitting") is None
    # a val loss 1% up is noise, not a rise
    flat = TRAINER_OVERFIT.replace("'eval_loss': 2.28", "'eval_loss': 2.21").replace(
        "'eval_loss': 2.45", "'eval_loss': 2.22")
    assert diagnose(log=read_log("trainer.log", text=flat)).finding("overfitting") is None


# ---- the token budget and the data ----------------------------------------------------------

def test_under_trained_from_scratch_not_for_a_fine_tune() -> None:
    # 200 steps x 524,288 = 104,857,600 planned tokens; GPT-2 small (124,373,760 parameters
    # with wpe, vocab 50304) is Chinchilla-optimal (Approach 3) at 2,436,676,052 tokens
    # (tests/test_diagnose.py works the formula out): 0.043x, under a quarter
    short = GPT2_FILE.replace("max_iters = 5000", "max_iters = 200").replace(
        "lr_decay_iters = 5000", "lr_decay_iters = 200")
    run = load_nanogpt_config("t.py", text=short)
    log = read_log("t.log", text="step 0: train loss 10.9800, val loss 10.9800\n"
                   "step 100: train loss 6.1000, val loss 6.1200\n")
    f = diagnose(config=run, log=log, law="chinchilla").finding("under-trained")
    assert f is not None
    assert f.numbers["tokens"] == 200 * 524_288 and f.numbers["finished"] == 0
    assert f.numbers["compute_optimal_tokens"] == 2_436_676_052
    assert math.isclose(float(f.numbers["ratio"]), 200 * 524_288 / 2_436_676_052)
    tuned = load_nanogpt_config("ft.py", text=short + "init_from = 'gpt2'\n")
    assert diagnose(config=tuned, log=log, law="chinchilla").finding("under-trained") is None
    # the full 5000 steps: 2.62e9 tokens, about the budget
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    assert diagnose(config=run, log=log, law="chinchilla").finding("under-trained") is None


def test_repeated_data_from_a_known_dataset() -> None:
    # nanoGPT's config/train_shakespeare_char.py: 64 x 256 tokens a step, 5000 steps.
    # 5000 x 16,384 = 81,920,000 tokens over shakespeare_char's 1,003,854 = 81.6 epochs
    text = ("dataset = 'shakespeare_char'\nn_layer = 6\nn_head = 6\nn_embd = 384\n"
            "dropout = 0.2\nblock_size = 256\nbatch_size = 64\ngradient_accumulation_steps = 1\n"
            "max_iters = 5000\nlr_decay_iters = 5000\nlearning_rate = 1e-3\nmin_lr = 1e-4\n"
            "warmup_iters = 100\n")
    run = load_nanogpt_config("char.py", text=text)
    log = read_log("t.log", text="step 0: train loss 4.2874, val loss 4.2823\n"
                   "step 5000: train loss 0.6200, val loss 1.6900\n")
    f = diagnose(config=run, log=log).finding("repeated-data")
    assert f is not None and f.severity == "warning"
    assert f.numbers["dataset_tokens"] == 1_003_854
    assert math.isclose(float(f.numbers["epochs"]), 5000 * 64 * 256 / 1_003_854)
    # openwebtext (9,035,582,198 tokens): 5000 x 524,288 = 2.6e9 is 0.29 epochs: nothing
    gpt2 = load_nanogpt_config("t.py", text=GPT2_FILE)
    log = read_log("t.log", text="step 5000: train loss 3.3000, val loss 3.3100\n")
    assert diagnose(config=gpt2, log=log).finding("repeated-data") is None


# ---- throughput -----------------------------------------------------------------------------

def test_throughput_from_printed_tokens_per_second() -> None:
    # llm.c's older stdout prints tokens/s but no MFU. GPT-2 small at T = 1024, PaLM's count
    # with a causal mask: 6 x 123,532,032 matmul weights (12 x 12 x 768^2 blocks + the
    # 50257 x 768 head) + 6 x 12 x 768 x 1024 attention = 797,815,296 FLOPs per token.
    per_token = 6 * (12 * 12 * 768**2 + 50257 * 768) + 6 * 12 * 768 * 1024
    assert per_token == 797_815_296
    text = "".join(f"step {i:4d}/74: train loss {4.0 - 0.01 * i:f} (224.275024 ms, "
                   f"{36000 + i} tok/s)\n" for i in range(1, 30))
    log = read_log("llmc.txt", text=text)
    d = diagnose(config=GPTConfig.preset("gpt2"), log=log, gpu="A100 SXM 80GB")
    f = d.finding("throughput")
    assert f is not None and f.labels["dtype"] == "bf16"
    # the upper median of the last 20 printed (steps 10-29: 36,010 ... 36,029) is 36,020
    assert f.numbers["tokens_per_second"] == 36_020
    assert math.isclose(float(f.numbers["mfu_percent"]), 100 * 36_020 * per_token / 312e12)
    assert "precision assumed bf16-mixed" in f.message
    # a log that prints its own MFU gets none; nor a diagnosis without a GPU
    assert diagnose(config=GPTConfig.preset("gpt2"), log=log).finding("throughput") is None


def test_throughput_from_step_time_and_tokens_per_step() -> None:
    # 524,288 tokens a step in 1150 ms = 455,902.6 tokens/s on 8 GPUs
    log = TrainingLog(source="t.log", format="csv", reported_tokens_per_step=524_288,
                      records=tuple(LogRecord(kind="train", step=i, train_loss=3.5, time_ms=1150.0)
                                    for i in range(1, 11)))
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    t = run.training.replace(world_size=8, grad_accum_steps=4)
    d = diagnose(config=run.model, training=t, log=log, gpu="H100 SXM")
    f = d.finding("throughput")
    assert f is not None
    assert math.isclose(float(f.numbers["tokens_per_second"]), 524_288 / 1.15)
    assert f.numbers["n_gpus"] == 8 and "over 8 GPUs" in f.message
    # the same tokens/s said to come from one RTX 4070: 455,903 tokens/s x 798,031,872 FLOPs a
    # token (vocab 50304: 6 x (12 x 12 x 768^2 + 50304 x 768) + 6 x 12 x 768 x 1024) is 364
    # TFLOP/s, 6.24x the 4070's 58.29: no MFU, it ran on at least 7 GPUs
    per_token = 6 * (12 * 12 * 768**2 + 50304 * 768) + 6 * 12 * 768 * 1024
    assert per_token == f.numbers["flops_per_token"]
    assert math.ceil(524_288 / 1.15 * per_token / (46 * 2.475e9 * 512)) == 7
    one = diagnose(config=run.model, training=t.replace(world_size=1, grad_accum_steps=32),
                   log=log, gpu="RTX 4070").finding("throughput")
    assert one is not None and "mfu_percent" not in one.numbers
    assert "so it ran on at least 7 of them" in one.message


# ---- batch size changes ---------------------------------------------------------------------

def test_batch_size_changed_and_the_tokens_it_saw() -> None:
    # resumed at step 5000 with half the batch: 5000 x 524,288 + 1000 x 262,144 tokens
    log = TrainingLog(source="t.log", format="nanogpt",
                      records=(LogRecord(kind="eval", step=6000, train_loss=3.4, val_loss=3.4),),
                      reported_tokens_per_step=262_144,
                      tokens_per_step_changes=((0, 524_288), (5000, 262_144)))
    d = diagnose(log=log)
    f = d.finding("batch-size-changed")
    assert f is not None
    assert (f.numbers["first_tokens_per_step"], f.numbers["last_tokens_per_step"]) == \
        (524_288, 262_144)
    assert "524,288 from step 0, 262,144 from step 5000" in f.message
    assert d.tokens_seen == 5000 * 524_288 + 1000 * 262_144
    same = log.model_copy(update={"tokens_per_step_changes": ((0, 262_144),)})
    assert diagnose(log=same).finding("batch-size-changed") is None


# ---- no false alarms: plateau ---------------------------------------------------------------

def llmc_healthy_log(law_name: str) -> str:
    """GPT-2 124M on FineWeb 10B as llm.c trains it: 19,073 steps of 524,288 tokens, cosine
    decay of the learning rate to 0, a val loss every 250 steps that follows ``law_name``'s
    curve for this size and ends at 3.2847 (llm.c's published final val loss, quoted in
    KellerJordan/modded-nanogpt's README)."""
    law = scaling_law(law_name)
    n, steps, tps = 124_475_904, 19_073, 524_288
    end = float(law.loss(n, steps * tps))
    lines = []
    for s in range(1, steps + 1):
        lr = 6e-4 * min(1.0, s / 700) * 0.5 * (1 + math.cos(math.pi * s / steps))
        if s % 50 == 1 or s == steps:  # a fresh model starts near ln(50257) = 10.82
            loss = min(10.98, 3.2847 + float(law.loss(n, s * tps)) - end + 0.02 * math.sin(s))
            lines.append(f"step {s:5d}/{steps} | loss {loss:.6f} | norm 0.3000 | lr {lr:.2e} | "
                         f"331.00 ms | 1584000 tok/s")
        if s % 250 == 0 or s == steps:
            lines.append(f"val loss {3.2847 + float(law.loss(n, s * tps)) - end:.6f}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("data", "law_name"), [(None, "chinchilla"),
                                                ("fineweb", "porian2024-refinedweb")])
def test_a_healthy_finished_llmc_run_is_no_plateau(data: str | None, law_name: str) -> None:
    log = read_log("main.log", text=llmc_healthy_log(law_name))
    assert log.final_val_loss() == 3.2847
    # llm.c's GPT-2 (124M) run on 8 GPUs: 8 x 64 sequences of 1024 = 524,288 tokens a step
    t = TrainingConfig(micro_batch_size=64, grad_accum_steps=1, world_size=8, max_iters=19_073,
                       lr_decay_iters=19_073, warmup_iters=700, min_lr=0.0)
    d = diagnose(config=GPTConfig.preset("gpt2"), training=t, log=log, data=data,
                 gpu="A100 SXM 80GB")
    assert d.law == law_name and d.tokens_seen == 19_073 * 524_288
    for alarm in ("plateau", "divergence", "stuck", "initial-loss", "overfitting",
                  "under-trained", "lr-not-annealed", "lr-min-long-before-end",
                  "lr-schedule-longer-than-run"):
        assert alarm not in d.codes(), d.finding(alarm)
    # 10B tokens is 4-5x the law's budget for 124M, but the law's best model for the same
    # compute is only ~1% lower: information, not a warning
    past = d.finding("past-compute-optimal")
    assert past is not None and past.severity == "info"
    assert float(past.numbers["law_gain_same_compute"]) < 0.02 * 3.3
    # 1,584,000 tokens/s x 797,815,296 FLOPs a token over 8 x 312 TFLOP/s: 50.6% MFU
    f = d.finding("throughput")
    assert f is not None
    assert math.isclose(float(f.numbers["mfu_percent"]), 100 * 1_584_000 * 797_815_296 / (8 * 312e12))
    # the last quarter is flat by the 2% test alone (it follows the law: ~0.04 of 3.3)
    evals = [(r.step, r.val_loss) for r in log.eval_records()]
    window = [v for s, v in evals if s is not None and s >= 0.75 * 19_073]
    assert window[0] - window[-1] < 0.02 * window[0]


def test_a_short_excerpt_is_no_plateau() -> None:
    # the seed run's last three evaluations alone: flat, but an excerpt, not a curve
    run = load_nanogpt_config("t.py", text="n_embd = 384\nbatch_size = 16\n"
                              "gradient_accumulation_steps = 32\n")
    text = ("step 13000: train loss 3.6550, val loss 3.5850\nstep 14000: train loss 3.6450, "
            "val loss 3.5750\nstep 14500: train loss 3.6415, val loss 3.5696\n")
    assert diagnose(config=run, log=read_log("t.log", text=text)).finding("plateau") is None


def test_a_plateau_without_a_recommendation_points_at_none() -> None:
    # a flat curve, nothing for the recommendation to change (no size claim, dropout 0)
    lines = "".join(f"step {i}: train loss 3.0, val loss 3.0\n" for i in range(100, 5001, 100))
    run = load_nanogpt_config("t.py", text="n_embd = 384\n")
    d = diagnose(config=run, log=read_log("t.log", text=lines))
    f = d.finding("plateau")
    assert f is not None and d.recommendation is None
    assert "recommendation" not in f.fix
    budget = d.finding("past-compute-optimal")
    assert budget is not None and "recommendation" not in budget.fix


# ---- no false alarms: the schedule ----------------------------------------------------------

def test_no_schedule_is_invented() -> None:
    log = read_log("t.log", text="step 100: train loss 5.1, val loss 5.0\n")
    # a bare GPTConfig, a Hugging Face config: no nanoGPT schedule
    assert not any(c.startswith("lr-") for c in diagnose(config=GPTConfig(), log=log).codes())
    # with the training settings given, the schedule is known
    t = TrainingConfig(max_iters=10_000, lr_decay_iters=10_000)
    assert "lr-not-annealed" in diagnose(config=GPTConfig(), training=t, log=log).codes()


def test_printed_rates_decide_over_the_configs_schedule() -> None:
    # a nanoGPT config (warmup 100, cosine to step 5000), but the log prints a constant
    # 3e-4 at step 4000 where that schedule is at 6e-5 + 0.5 (1 + cos(0.8 pi)) 5.4e-4 = 8.6e-5
    run = load_nanogpt_config("t.py", text=GPT2_FILE)
    text = "".join(f"step {s}/5000 | loss 3.5 | lr 3.00e-04 | 100.00 ms | 5000 tok/s\n"
                   for s in range(400, 4001, 400))  # 10 printed rates (LR_MIN_PRINTED)
    d = diagnose(config=run, log=read_log("t.log", text=text))
    f = d.finding("lr-not-annealed")
    assert f is not None and f.numbers["fraction_of_peak"] == 1.0  # 3e-4 of 3e-4
    assert "highest it prints" in f.message
    assert any("another schedule" in n for n in d.notes)
    # rates that do follow the schedule, decayed to min_lr: no finding
    t = run.training
    from scaleplan.diagnosis.schedule import nanogpt_lr
    text = "".join(f"step {s}/5000 | loss 3.5 | lr {nanogpt_lr(s, t):.6e} | 100.00 ms\n"
                   for s in (1000, 2000, 3000, 4000, 5000))
    d = diagnose(config=run, log=read_log("t.log", text=text))
    assert not any(c.startswith("lr-") for c in d.codes()) and d.notes == ()


# ---- order ----------------------------------------------------------------------------------

def test_codes_come_in_the_documented_order() -> None:
    from scaleplan.diagnosis import examine

    documented = [code for line in (examine.__doc__ or "").splitlines()
                  if line.startswith("- ``") for code in re.findall(r"``([a-z-]+)``", line)]
    log = TrainingLog(
        source="t.log", format="nanogpt",
        records=(LogRecord(kind="train", step=0, train_loss=20.0),
                 *(LogRecord(kind="train", step=i, train_loss=5.0) for i in range(1, 80))),
        warnings=(LogWarning(code="non-finite-loss", line=3, text="loss nan"),),
        tokens_per_step_changes=((0, 524_288), (40, 262_144)))
    run = load_nanogpt_config("t.py", text="# Model (~125M parameters)\nn_embd = 384\n")
    codes = diagnose(config=run, log=log).codes()
    assert codes == ("size-mismatch", "divergence", "stuck", "initial-loss", "plateau",
                     "batch-size-changed", "lr-not-annealed")
    positions = [documented.index(c) for c in codes]
    assert positions == sorted(positions)


# ---- no false alarms: nanoGPT's own shakespeare_char run ------------------------------------



def test_the_shakespeare_char_run_overfits_and_repeats_its_data_and_nothing_else() -> None:
    # nanoGPT's README: this run reaches a best val loss of 1.4697 and then overfits; its first
    # loss is ln(65) = 4.17, as prepare.py's 65 characters give. Evaluations every 250 steps:
    # val falls to 1.47 by step 2500, then rises while train goes on falling.
    evals = [(0, 4.2874, 4.2823)]
    for s in range(250, 5001, 250):
        train = 1.0 + 3.0 / (1 + s / 150) if s <= 2500 else 1.17 - 0.07 * (s - 2500) / 500
        val = 1.4697 + 2.6 / (1 + s / 100) ** 2 if s <= 2500 else 1.4697 + 0.02 * (s - 2500) / 500
        evals.append((s, train, val))
    text = "".join(f"step {s}: train loss {t:.4f}, val loss {v:.4f}\n" for s, t, v in evals)
    run = load_nanogpt_config("train_shakespeare_char.py", text=SHAKESPEARE_CHAR)
    d = diagnose(config=run, log=read_log("char.log", text=text), gpu="A100 SXM 80GB")
    # 5000 x 64 x 256 = 81,920,000 tokens over 1,003,854: 81.6 epochs; the model memorises
    assert d.codes() == ("overfitting", "repeated-data"), d.findings
    assert d.finding("repeated-data").severity == "warning"  # type: ignore[union-attr]
    # no plateau ("train a larger model" would make the overfitting worse), no initial-loss
    # against ln(50304), no stuck, no under-trained (more tokens of 1M repeated ones is no cure)
    # the model has prepare.py's 65 characters, as train.py reads them from meta.pkl: nanoGPT
    # prints "number of parameters: 10.65M" for this config. By hand: 6 blocks x (12 x 384^2 +
    # 2 x 384 LayerNorm weights) + ln_f 384 + wte 65 x 384 = 10,646,784
    assert d.nanogpt_params == 6 * (12 * 384**2 + 2 * 384) + 384 + 65 * 384 == 10_646_784
    # the loader says where the 65 came from (no meta.pkl beside this text: prepare.py's count)
    assert any("vocab_size = 65" in n for n in d.notes), d.notes


# ---- any curve: an answer, in the documented order ------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=120),
       st.sampled_from([None, 50304, 65]), st.booleans())
def test_any_loss_curve_gets_an_answer_in_order(losses: list[float], vocab: int | None,
                                                with_config: bool) -> None:
    from scaleplan.diagnosis import examine

    documented = [code for line in (examine.__doc__ or "").splitlines()
                  if line.startswith("- ``") for code in re.findall(r"``([a-z-]+)``", line)]
    # max_iters 5000 with lr_decay_iters 2000: lr-min-long-before-end comes with lr-not-annealed
    text = GPT2_FILE.replace("lr_decay_iters = 5000", "lr_decay_iters = 2000")
    run = load_nanogpt_config("t.py", text=text) if with_config else None
    d = diagnose(config=run, log=read_log("t.log", text=iter_lines(losses)), vocab_size=vocab)
    positions = [documented.index(c) for c in d.codes()]
    assert positions == sorted(positions) and len(set(d.codes())) == len(d.codes())
    assert not with_config or d.codes()[-2:] == ("lr-min-long-before-end", "lr-not-annealed")


def chinchilla_optimal_tokens(n: float) -> float:
    """Hoffmann et al. 2022's Approach 3 (E, A, B, alpha, beta unrounded, design.md): the D for
    which N is compute-optimal, D = (N/G)^((alpha+beta)/beta) / N with G = (alpha A /
    beta B)^(1/(alpha+beta)) (their eq. 4)."""
    A, B, alpha, beta = 406.401018, 410.722827, 0.33917084, 0.2849083
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    return (n / G) ** ((alpha + beta) / beta) / n


def test_under_trained_when_a_finished_run_saw_too_few_tokens() -> None:
    # llm.c-style, from scratch (first loss 10.98, near ln(50304) = 10.83), 500 steps of
    # 524,288 tokens (the log says so) with the learning rate decayed to 0: finished at
    # 262,144,000 tokens. GPTConfig's GPT-2 shape with biases and vocab 50304 has 124,475,904
    # parameters: 12 x (12 d^2 + 13 d) + 2d + (50304 + 1024) d at d = 768
    text = "tokens per iteration will be: 524,288\n" + "".join(
        f"step {s:4d}/500 | loss {10.98 - 0.012 * s:.6f} | lr "
        f"{6e-4 * 0.5 * (1 + math.cos(math.pi * s / 500)):.2e} | 300.00 ms\n"
        for s in range(1, 501))
    d = diagnose(config=GPTConfig(vocab_size=50304), log=read_log("t.log", text=text))
    n = 12 * (12 * 768**2 + 13 * 768) + 2 * 768 + (50304 + 1024) * 768
    assert d.total_params == n == 124_475_904
    f = d.finding("under-trained")
    assert f is not None and f.numbers["finished"] == 1
    assert f.numbers["tokens"] == 500 * 524_288
    assert f.numbers["compute_optimal_tokens"] == round(chinchilla_optimal_tokens(n))
    # the same log cut at step 300, the rate still at 35% of its peak: not finished, no plan
    # known (a bare GPTConfig): nothing said
    cut = "".join(text.splitlines(keepends=True)[:301])
    assert diagnose(config=GPTConfig(vocab_size=50304),
                    log=read_log("t.log", text=cut)).finding("under-trained") is None


def test_throughput_of_a_per_device_rate_is_one_gpus() -> None:
    # lit-gpt 2023 prints "speed: 3,000 toks/s/device": one GPU's tokens. On 8 GPUs the MFU is
    # still that rate against ONE GPU's peak: 3,000 x 797,815,296 FLOPs / 312e12 = 0.767%
    # (GPT-2 small, vocab 50257, T = 1024; see the test above for the FLOPs per token)
    per_token = 797_815_296
    text = "".join(f"iter {i}: loss {4.0 - 0.01 * i:.4f}, time: 500.00ms, speed: 3000 "
                   f"toks/s/device\n" for i in range(1, 30))
    log = read_log("litgpt.log", text=text)
    assert log.format == "litgpt"
    t = TrainingConfig(world_size=8, grad_accum_steps=8)
    f = diagnose(config=GPTConfig.preset("gpt2"), training=t, log=log,
                 gpu="A100 SXM 80GB").finding("throughput")
    assert f is not None and f.numbers["n_gpus"] == 1
    assert math.isclose(float(f.numbers["mfu_percent"]), 100 * 3000 * per_token / 312e12)
    assert "printed tokens/s per GPU" in f.message


def test_plan_and_diagnose_give_one_compute_optimal_budget_on_calibrated_data() -> None:
    # issue 21: "plan says the compute-optimal budget is 649,341,607 tokens and diagnose says
    # near 0.82B. Use one definition everywhere, and say which." For a run on FineWeb both now
    # take Porian et al.'s RefinedWeb law (the data's law, named in both); without data both
    # take Chinchilla's
    from scaleplan.model.params import count_params
    from scaleplan.planning.planner import plan
    from scaleplan.scaling.tokens import chinchilla_tokens

    run = load_nanogpt_config("train_fineweb.py", text="n_layer = 12\nn_head = 6\nn_embd = 384\n"
                              "dataset = 'fineweb'\n")
    total = count_params(run.model).total  # 40,953,216 (the seed model, wpe included)
    log = read_log("t.log", text="step 14500: train loss 3.6415, val loss 3.5696\n")
    d = diagnose(config=run, log=log)
    p = plan(run.model, "RTX 4070", data="fineweb")
    budget = d.finding("past-compute-optimal")
    assert budget is not None and d.law == p.law == "porian2024-refinedweb"
    assert budget.numbers["compute_optimal_tokens"] == p.compute_optimal_tokens == \
        int(chinchilla_tokens(total, method="porian2024-refinedweb"))
    assert "porian2024-refinedweb's compute-optimal budget" in budget.message
    assert plan(run.model, "RTX 4070").law == "chinchilla"  # no data: Chinchilla's, as before
