"""nanoGPT's own files read as nanoGPT reads them: init_from, the data's meta.pkl, train.py.

The fixtures are short copies of karpathy/nanoGPT's files (each names its source). Expected
parameter counts are worked out by hand here from the model's tensors, never taken from
scaleplan: nanoGPT's printed count leaves out the position embedding (model.py
``get_num_params``); a block with biases holds 12 d^2 + 13 d parameters (q/k/v 3d^2 + 3d, attention
projection d^2 + d, MLP 4d^2 + 4d and 4d^2 + d, two LayerNorms 2d each), without biases
12 d^2 + 2 d (the LayerNorm weights alone).
"""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path
from typing import Any

import pytest
from nanogpt_files import SHAKESPEARE_CHAR

from scaleplan.cli import main
from scaleplan.errors import ConfigFileError
from scaleplan.model.loaders import load_nanogpt_config
from scaleplan.model.nanogpt_meta import MAX_META_BYTES, read_meta
from scaleplan.model.params import count_params

# karpathy/nanoGPT config/finetune_shakespeare.py, as published.
FINETUNE_SHAKESPEARE = """\
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False # feel free to turn on
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl' # this is the largest GPT-2 model

# only save checkpoints if the validation loss improves
always_save_checkpoint = False

# the number of examples per iter:
# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter
# shakespeare has 301,966 tokens, so 1 epoch ~= 9.2 iters
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at constant LR
learning_rate = 3e-5
decay_lr = False
"""

# karpathy/nanoGPT config/eval_gpt2.py, eval_gpt2_medium.py, eval_gpt2_large.py,
# eval_gpt2_xl.py: the same five settings, with the size in the comments and init_from.
EVAL_GPT2 = """\
# evaluate the base gpt2
# n_layer={L}, n_head={H}, n_embd={d}
# {size} parameters
batch_size = 8
eval_iters = 500 # use more iterations to get good estimate
eval_only = True
wandb_log = False
init_from = '{name}'
"""

# karpathy/nanoGPT train.py: its opening (docstring shortened), the whole defaults block as
# published, and the first lines of the code after it.
TRAIN_PY = '''\
"""
This training script can be run both on a single gpu in debug mode,
and also in a larger training run with distributed data parallel (ddp).
"""

import os
import time
import math
import pickle
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.distributed import init_process_group, destroy_process_group

from model import GPTConfig, GPT

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False # if True, script exits right after the first eval
always_save_checkpoint = True # if True, always save a checkpoint after each eval
init_from = 'scratch' # 'scratch' or 'resume' or 'gpt2*'
# wandb logging
wandb_log = False # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2' # 'run' + str(time.time())
# data
dataset = 'openwebtext'
gradient_accumulation_steps = 5 * 8 # used to simulate larger batch sizes
batch_size = 12 # if gradient_accumulation_steps > 1, this is the micro-batch size
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0 # for pretraining 0 is good, for finetuning try 0.1+
bias = False # do we use bias inside LayerNorm and Linear layers?
# adamw optimizer
learning_rate = 6e-4 # max learning rate
max_iters = 600000 # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0 # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True # whether to decay the learning rate
warmup_iters = 2000 # how many steps to warm up for
lr_decay_iters = 600000 # should be ~= max_iters per Chinchilla
min_lr = 6e-5 # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# DDP settings
backend = 'nccl' # 'nccl', 'gloo', etc.
# system
device = 'cuda' # examples: 'cpu', 'cuda', 'cuda:0', 'cuda:1' etc., or try 'mps' on macbooks
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float16' # 'float32', 'bfloat16', or 'float16', the latter will auto implement a GradScaler
compile = True # use PyTorch 2.0 to compile the model to be faster
# -----------------------------------------------------------------------------
config_keys = [k for k,v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open('configurator.py').read()) # overrides from command line or config file
config = {k: globals()[k] for k in config_keys} # will be useful for logging
# -----------------------------------------------------------------------------

# various inits, derived attributes, I/O setup
ddp = int(os.environ.get('RANK', -1)) != -1 # is this a ddp run?
if ddp:
    init_process_group(backend=backend)
    # a 1.5B-parameter model would be claimed here, but this is code, not the defaults block
'''  # noqa: E501 (two of train.py's lines, kept as published)


def block(d: int, *, bias: bool) -> int:
    """One transformer block's parameters (see the module docstring)."""
    return 12 * d * d + (13 * d if bias else 2 * d)


def nanogpt_count(*, L: int, d: int, V: int, bias: bool) -> int:
    """nanoGPT's printed count: token embedding (tied with the head), blocks, final LayerNorm."""
    return V * d + L * block(d, bias=bias) + (2 * d if bias else d)


def char_meta(text: str) -> dict[str, Any]:
    """The meta.pkl nanoGPT's data/shakespeare_char/prepare.py writes, for ``text``."""
    chars = sorted(set(text))
    return {"vocab_size": len(chars), "itos": dict(enumerate(chars)),
            "stoi": {ch: i for i, ch in enumerate(chars)}}


# tiny Shakespeare's 65 characters: newline, space, !$&',-.3:;? and both alphabets.
SHAKESPEARE_CHARS = "\n !$&',-.3:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"


def nanogpt_tree(tmp_path: Path, config: str, meta: bytes | None,
                 dataset: str = "shakespeare_char") -> Path:
    """nanoGPT's layout: config/<file> beside data/<dataset>/meta.pkl."""
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "train.py"
    path.write_text(config)
    if meta is not None:
        (tmp_path / "data" / dataset).mkdir(parents=True)
        (tmp_path / "data" / dataset / "meta.pkl").write_bytes(meta)
    return path


# ----------------------------------------------------------------------------- meta.pkl


def test_shakespeare_char_reads_its_meta_pkl_and_counts_what_nanogpt_builds(
        tmp_path: Path) -> None:
    assert len(set(SHAKESPEARE_CHARS)) == 65
    path = nanogpt_tree(tmp_path, SHAKESPEARE_CHAR, pickle.dumps(char_meta(SHAKESPEARE_CHARS)))
    run = load_nanogpt_config(path)
    assert run.model.vocab_size == 65 and run.vocab_known
    assert (run.model.n_layer, run.model.n_head, run.model.n_embd, run.model.block_size,
            run.model.bias) == (6, 6, 384, 256, False)
    # By hand: wte 65 * 384 = 24,960; a block without biases 12 * 384^2 + 2 * 384 = 1,770,240,
    # six of them 10,621,440; ln_f 384. nanoGPT's README prints "number of parameters: 10.65M".
    assert 65 * 384 + 6 * 1_770_240 + 384 == 10_646_784
    assert count_params(run.model).nanogpt == 10_646_784
    assert count_params(run.model).total == 10_646_784 + 256 * 384  # + wpe
    assert any("meta.pkl" in note and "65" in note for note in run.notes)


def test_meta_pkl_is_found_from_the_current_directory_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data" / "mine_char").mkdir(parents=True)
    (tmp_path / "data" / "mine_char" / "meta.pkl").write_bytes(
        pickle.dumps(char_meta("abc\n")))
    elsewhere = tmp_path / "far" / "away"
    elsewhere.mkdir(parents=True)
    config = elsewhere / "cfg.py"
    config.write_text("dataset = 'mine_char'\n")
    assert load_nanogpt_config(config).vocab_known is False  # not beside the config
    monkeypatch.chdir(tmp_path)
    assert load_nanogpt_config(config).model.vocab_size == 4


def test_char_level_dataset_without_meta_pkl_leaves_the_vocab_unknown(tmp_path: Path) -> None:
    path = nanogpt_tree(tmp_path, "dataset = 'enwik8_char'\nn_layer = 4\n", None)
    run = load_nanogpt_config(path)
    assert run.vocab_known is False
    assert run.model.n_layer == 4  # the rest of the file is read
    assert any("character-level" in n and "vocab_size unknown" in n for n in run.notes)


def test_shakespeare_char_without_meta_pkl_takes_prepare_py_vocabulary(tmp_path: Path) -> None:
    # nanoGPT data/shakespeare_char/prepare.py: "vocab size: 65".
    run = load_nanogpt_config(nanogpt_tree(tmp_path, SHAKESPEARE_CHAR, None))
    assert run.model.vocab_size == 65
    assert any("not found" in n and "65 assumed" in n for n in run.notes)


def test_bpe_datasets_keep_the_padded_gpt2_vocab_without_a_note(tmp_path: Path) -> None:
    for dataset in ("openwebtext", "shakespeare"):
        run = load_nanogpt_config("x.py", text=f"dataset = '{dataset}'\n")
        assert (run.model.vocab_size, run.vocab_known, run.notes) == (50304, True, ())


def test_a_meta_pkl_beside_bpe_data_is_read_as_nanogpt_would(tmp_path: Path) -> None:
    path = nanogpt_tree(tmp_path, "dataset = 'openwebtext'\n",
                        pickle.dumps({"vocab_size": 50257}), dataset="openwebtext")
    assert load_nanogpt_config(path).model.vocab_size == 50257


class _RunsCode:
    """A pickle whose REDUCE would call os.system: it touches ``marker`` if ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_malicious_meta_pkl_is_refused_without_running_it(tmp_path: Path,
                                                            protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"vocab_size": _RunsCode(marker)}, protocol=protocol)
    path = nanogpt_tree(tmp_path, SHAKESPEARE_CHAR, payload)
    run = load_nanogpt_config(path)  # the config still loads
    assert not marker.exists()
    assert run.vocab_known is False
    assert any("refused" in n and "GLOBAL" in n and "vocab_size unknown" in n for n in run.notes)
    with pytest.raises(ConfigFileError, match=r"meta.pkl: refused: opcode (STACK_)?GLOBAL"):
        read_meta(tmp_path / "data" / "shakespeare_char" / "meta.pkl")
    assert not marker.exists()


# Hand-written pickles, one opcode each that names or builds code (pickletools' opcode table).
@pytest.mark.parametrize(
    ("payload", "opcode"),
    [
        (b"cos\nsystem\n.", "GLOBAL 'os system'"),
        (b"\x8c\x02os\x8c\x06system\x93.", "STACK_GLOBAL"),
        (b"](K\x01tR.", "REDUCE"),
        (b"}(K\x01tb.", "BUILD"),
        (b"(ios\nsystem\n.", "INST 'os system'"),
        (b"(o.", "OBJ"),
        (b"](K\x01t\x81.", "NEWOBJ"),
        (b"Pfoo\n.", "PERSID 'foo'"),
        (b"K\x01Q.", "BINPERSID"),
        (b"\x82\x01.", "EXT1"),
        (b"\x8f(K\x01\x90.", "EMPTY_SET"),
        (b"C\x01x.", "SHORT_BINBYTES"),
    ],
)
def test_opcodes_that_name_code_or_leave_plain_data_are_refused(tmp_path: Path, payload: bytes,
                                                                opcode: str) -> None:
    path = tmp_path / "meta.pkl"
    path.write_bytes(payload)
    with pytest.raises(ConfigFileError, match=rf"refused: opcode {opcode}"):
        read_meta(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickle.dumps({(1, 2): 3}), "a dict key of type tuple"),
        (b"garbage", "not a readable pickle"),
        (pickle.dumps({"vocab_size": 65})[:-1], "not a readable pickle"),
        (b"K\x01K\x02.", "does not end with one value"),
    ],
)
def test_malformed_pickles_are_refused(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "meta.pkl"
    path.write_bytes(payload)
    with pytest.raises(ConfigFileError, match=message):
        read_meta(path)


@pytest.mark.parametrize(
    "meta",
    [{"vocab": 65}, {"vocab_size": True}, {"vocab_size": 0}, {"vocab_size": "65"},
     [65], {"vocab_size": 2**40}],
)
def test_a_meta_pkl_without_a_usable_vocab_size_leaves_it_unknown(tmp_path: Path,
                                                                  meta: Any) -> None:
    run = load_nanogpt_config(nanogpt_tree(tmp_path, SHAKESPEARE_CHAR, pickle.dumps(meta)))
    assert run.vocab_known is False
    assert any("no usable vocab_size" in n for n in run.notes)


def test_a_meta_pkl_past_the_cap_is_refused_after_reading_the_cap(tmp_path: Path) -> None:
    huge = pickle.dumps({"vocab_size": 65, "pad": "x" * MAX_META_BYTES})
    run = load_nanogpt_config(nanogpt_tree(tmp_path, SHAKESPEARE_CHAR, huge))
    assert run.vocab_known is False
    assert any(f"more than {MAX_META_BYTES:,} bytes" in n for n in run.notes)


def test_plain_data_of_every_protocol_is_rebuilt(tmp_path: Path) -> None:
    data = {"vocab_size": 3, "itos": {0: "\n", 1: "é", 2: "z"}, "stoi": {"\n": 0},
            "nested": [None, True, False, 1.5, -7, 2**70, (1, "a"), [], {}]}
    path = tmp_path / "meta.pkl"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert read_meta(path) == data


def test_cli_params_counts_the_char_model(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = nanogpt_tree(tmp_path, SHAKESPEARE_CHAR, pickle.dumps(char_meta(SHAKESPEARE_CHARS)))
    assert main(["params", str(path)]) == 0
    out = capsys.readouterr().out
    assert "10,646,784" in out  # nanoGPT's count, worked out above
    assert "30,0" not in out  # not the 30.04M of a 50304-token vocabulary


# ----------------------------------------------------------------------------- init_from

GPT2 = {  # model.py from_pretrained: n_layer, n_head, n_embd by name
    "gpt2": (12, 12, 768, "124M"), "gpt2-medium": (24, 16, 1024, "350M"),
    "gpt2-large": (36, 20, 1280, "774M"), "gpt2-xl": (48, 25, 1600, "1558M"),
}
# Total parameters of openai-community/gpt2, -medium, -large, -xl on the Hugging Face hub.
HF_GPT2_TOTALS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168,
                  "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", sorted(GPT2))
def test_eval_configs_build_the_named_gpt2(name: str) -> None:
    L, H, d, size = GPT2[name]
    run = load_nanogpt_config(f"eval_{name}.py", text=EVAL_GPT2.format(L=L, H=H, d=d,
                                                                         size=size, name=name))
    cfg = run.model
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (L, H, d)
    assert (cfg.vocab_size, cfg.block_size, cfg.bias) == (50257, 1024, True)
    assert run.init_from == name and run.fine_tune
    by_hand = nanogpt_count(L=L, d=d, V=50257, bias=True) + 1024 * d
    assert by_hand == HF_GPT2_TOTALS[name]
    assert count_params(cfg).total == by_hand
    assert run.training.micro_batch_size == 8
    assert any("eval_only = True" in n for n in run.notes)


def test_finetune_shakespeare_loads_skipping_the_import_and_the_timed_name() -> None:
    run = load_nanogpt_config("finetune_shakespeare.py", text=FINETUNE_SHAKESPEARE)
    assert (run.model.n_layer, run.model.n_embd, run.model.vocab_size) == (48, 1600, 50257)
    assert run.model.dropout == 0.0
    assert run.init_from == "gpt2-xl" and run.fine_tune
    assert run.dataset == "shakespeare"
    # "1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter"
    assert run.training.tokens_per_step == 32_768
    assert run.training.learning_rate == 3e-5 and run.training.max_iters == 20
    assert run.notes[0] == "line 1: import time skipped (nothing is imported)"
    assert run.notes[1].startswith("line 8: wandb_run_name = 'ft-' + str(time.time()) skipped")
    assert len(run.notes) == 2


def test_gpt2_ignores_the_files_model_shape_and_says_so() -> None:
    run = load_nanogpt_config("ft.py", text="init_from = 'gpt2'\nn_layer = 6\nn_embd = 384\n"
                              "bias = False\ndropout = 0.1\n")
    assert (run.model.n_layer, run.model.n_embd, run.model.bias) == (12, 768, True)
    assert run.model.dropout == 0.1  # the one override from_pretrained accepts
    assert any(n.startswith("n_layer = 6, n_embd = 384, bias = False not used") for n in run.notes)


def test_a_smaller_block_size_crops_gpt2_and_a_larger_one_is_an_error() -> None:
    run = load_nanogpt_config("ft.py", text="init_from = 'gpt2'\nblock_size = 256\n")
    assert run.model.block_size == 256 and run.training.seq_len == 256
    # crop_block_size keeps the first 256 rows of wpe: (1024 - 256) * 768 fewer parameters.
    assert count_params(run.model).total == HF_GPT2_TOTALS["gpt2"] - (1024 - 256) * 768
    # nanoGPT's count leaves wpe out either way: the seed case's 123,653,376.
    assert count_params(run.model).nanogpt == 123_653_376
    with pytest.raises(ConfigFileError, match=r"ft.py, line 2: block_size = 2048: gpt2 has 1024 "
                       r"positions"):
        load_nanogpt_config("ft.py", text="init_from = 'gpt2'\nblock_size = 2048\n")
    with pytest.raises(ConfigFileError, match=r"line 2: block_size = 0: Input should be greater"):
        load_nanogpt_config("ft.py", text="init_from = 'gpt2'\nblock_size = 0\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [("'gpt2-small'", r"line 1: init_from = 'gpt2-small' is no GPT-2 nanoGPT can load"),
     ("5", r"line 1: init_from = 5 must be 'scratch', 'resume' or a GPT-2 name"),
     ("''", r"line 1: init_from = '' must be")],
)
def test_init_from_values_nanogpt_would_fail_on_are_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message):
        load_nanogpt_config("x.py", text=f"init_from = {value}\n")


def test_resume_reads_the_files_model_with_a_note() -> None:
    run = load_nanogpt_config("x.py", text="init_from = 'resume'\nn_layer = 6\n")
    assert run.init_from == "resume" and not run.fine_tune
    assert run.model.n_layer == 6
    assert any("checkpoint" in n and "only if they match" in n for n in run.notes)


def test_scratch_is_the_default_and_an_unknown_init_from_is_noted() -> None:
    assert load_nanogpt_config("x.py", text="n_layer = 2\n").init_from == "scratch"
    run = load_nanogpt_config("x.py", text="init_from = 'large_model.pth'\n")
    assert run.init_from == "large_model.pth" and run.model.n_embd == 768
    assert any("not one nanoGPT's train.py knows" in n for n in run.notes)


# ----------------------------------------------------------------------------- train.py


def test_train_py_reads_its_defaults_block() -> None:
    run = load_nanogpt_config("train.py", text=TRAIN_PY)
    cfg, t = run.model, run.training
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.bias, cfg.vocab_size) == (
        12, 12, 768, 1024, False, 50304)
    # nanoGPT's printed count for its defaults, "number of parameters: 123.59M":
    assert nanogpt_count(L=12, d=768, V=50304, bias=False) == 123_587_328
    assert count_params(cfg).nanogpt == 123_587_328
    # "12 batch size * 1024 block size * 5 gradaccum * 8 GPUs = 491,520"
    assert (t.micro_batch_size, t.grad_accum_steps, t.tokens_per_step) == (12, 40, 491_520)
    assert (t.max_iters, t.learning_rate, t.min_lr, t.warmup_iters) == (600000, 6e-4, 6e-5, 2000)
    assert (t.beta2, t.compile) == (0.95, True)
    assert t.precision == "bf16-mixed"  # dtype's GPU test is skipped; nanoGPT's default stands
    assert run.dataset == "openwebtext" and run.init_from == "scratch"
    assert run.claimed_params is None  # the comment after the defaults block is not read


def line_of(text: str, start: str) -> int:
    """The 1-based number of the first line of ``text`` that starts with ``start``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def test_train_py_notes_say_what_was_skipped() -> None:
    notes = load_nanogpt_config("train.py", text=TRAIN_PY).notes
    imports = [i for i, line in enumerate(TRAIN_PY.splitlines(), 1)
               if line.startswith(("import ", "from "))]
    assert len(imports) == 10
    assert notes[0] == f"lines {', '.join(map(str, imports))}: 10 imports skipped (nothing is " \
        "imported)"
    assert notes[1].startswith(f"line {line_of(TRAIN_PY, 'dtype =')}: dtype = 'bfloat16' if "
                               "torch.cuda.is_available() and")
    assert notes[1].endswith("scaleplan's default for dtype stands")
    assert notes[2].startswith(f"line {line_of(TRAIN_PY, 'config_keys =')} on: train.py's code "
                               "after its defaults block")
    assert len(notes) == 3


def test_many_imports_make_one_short_note() -> None:
    run = load_nanogpt_config("x.py", text="import os\n" * 5000 + "n_layer = 3\n")
    assert run.model.n_layer == 3
    assert run.notes == ("lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, "
                         "19, 20, ...: 5,000 imports skipped (nothing is imported)",)


def test_only_an_assignment_before_the_defaults_end_is_read() -> None:
    text = "n_layer = 4\nexec(open('configurator.py').read())\nn_layer = 8\nimport os\n"
    run = load_nanogpt_config("train.py", text=text)
    assert run.model.n_layer == 4
    # exec of anything else is no train.py: still refused.
    with pytest.raises(ConfigFileError, match="line 2: an expression statement"):
        load_nanogpt_config("x.py", text="n_layer = 4\nexec('n_layer = 8')\n")


def test_non_literal_values_are_refused_outside_the_logging_settings() -> None:
    with pytest.raises(ConfigFileError, match="line 2: a function call is not allowed"):
        load_nanogpt_config("x.py", text="import time\nmax_iters = int(time.time())\n")
    run = load_nanogpt_config("x.py", text="out_dir = f'out-{1}'\ndevice = 'cuda:' + str(0)\n")
    assert [n.split(":")[0] for n in run.notes] == ["line 1", "line 2"]
