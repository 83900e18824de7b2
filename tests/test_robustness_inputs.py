"""Issue 20 ("Robustness round 2"): the config readers, GPTConfig and the GPU registry.

One test per defect, each quoting it. Bad input is a ScaleplanError (or a pydantic
ValidationError) naming the argument or the file; inputs that used to take seconds finish well
inside a generous bound.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from scaleplan.cli import main
from scaleplan.compute import hardware
from scaleplan.compute.hardware import GPUSpec, gpu, register_gpu
from scaleplan.errors import ConfigFileError, ScaleplanError
from scaleplan.files import read_bytes, read_text
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import MAX_CONFIG_BYTES, from_hf, load_nanogpt_config
from scaleplan.model.nanogpt_file import parse_amount, parse_size
from scaleplan.model.params import count_params

posix_only = pytest.mark.skipif(sys.platform == "win32" or not Path("/dev/zero").exists(),
                                reason="needs /dev/zero and mkfifo")


def within(seconds: float, func: Callable[[], Any]) -> Any:
    """``func()``'s result (or its exception), failing the test if it runs past ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# A record in the format of scaleplan/data/gpus.json.
RECORD: dict[str, Any] = {
    "name": "Robustness Card", "memory_gib": 8, "memory_bandwidth_gb_s": 448, "sm_count": 36,
    "has_bf16_tensor_cores": True,
    "peak_tflops": {"bf16": {"tflops": 40, "accumulate": "fp32", "source": "test"}},
}


# Defect 1: "load_nanogpt_config(text="# " + "1"*20000) takes 17 s (a regex with
# quadratic/cubic backtracking). Every pattern in model/ and compute/hardware.py must be
# linear-time."
def test_claimed_size_regexes_are_linear_time() -> None:
    slow_before = [
        "# " + "1" * 20000,  # 17 s: tried from every digit, every split of the run
        "# " + " " * 20000 + "x",  # "~?\s*" before the number: quadratic in the spaces
        "# " + "1." * 10000,
        "# 1" + " " * 20000 + "M" + "-" * 20000 + "x",
    ]
    for text in slow_before:
        run = within(2.0, lambda text=text: load_nanogpt_config("train.py", text=text))
        assert run.claimed_params is None
    # A real claim after the long run is still found: 125 x 10**6.
    run = within(2.0, lambda: load_nanogpt_config(
        "train.py", text="# " + "1" * 20000 + " Model (~125M parameters)\n"))
    assert run.claimed_params == 125_000_000
    # A size of 400 digits is no claim (float() overflowed into round(inf)).
    assert parse_size("1" * 400 + "M parameters") is None
    assert parse_amount("1" * 400 + "M") is None
    assert within(2.0, lambda: parse_amount("~" + " " * 20000 + "1" * 20000 + "x")) is None
    assert parse_amount("1.5B") == 1_500_000_000
    # The GPU-name normaliser on a long name: linear, and the error quotes it shortened.
    with pytest.raises(ScaleplanError, match="unknown GPU") as info:
        within(2.0, lambda: gpu("rtx " + "4070 " * 200_000))
    assert len(str(info.value)) < 2_500


# Defect 2: "from_hf on JSON nested 100,000 deep raises RecursionError; a 5,000-digit number
# gives the raw int-limit message with no file name. Both must become ConfigFileError naming
# the file (and ideally the key)."
def test_hf_json_too_deep_or_too_long_a_number_names_the_file(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"model_type": "gpt2", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigFileError, match=r"deep\.json: nested too deeply"):
        from_hf(deep)
    digits = tmp_path / "digits.json"
    digits.write_text('{"model_type": "gpt2", "n_embd": ' + "1" * 5000 + "}")
    with pytest.raises(ConfigFileError, match=r"digits\.json: n_embd = 1+\.\.\.: a number of "
                                              r"5,000 characters"):
        from_hf(digits)
    nested = tmp_path / "nan.json"
    nested.write_text('{"model_type": "gpt2", "rope_scaling": {"factor": [1, NaN]}}')
    with pytest.raises(ConfigFileError, match=r"nan\.json: rope_scaling\.factor\[1\] = NaN"):
        from_hf(nested)
    overflow = tmp_path / "inf.json"
    overflow.write_text('{"model_type": "gpt2", "layer_norm_epsilon": 1e999}')
    with pytest.raises(ConfigFileError, match=r"layer_norm_epsilon = 1e999: the number "
                                              r"overflows"):
        from_hf(overflow)
    # The same through register_gpu's file, and a dict holding a 5,000-digit int.
    gpus = tmp_path / "gpus.json"
    gpus.write_text('{"gpus": [' + "[" * 100_000 + "]" * 100_000 + "]}")
    with pytest.raises(ConfigFileError, match=r"gpus\.json: nested too deeply"):
        register_gpu(gpus)
    with pytest.raises(ScaleplanError, match="n_embd"):
        from_hf({"model_type": "gpt2", "n_embd": 10**5000 + 1})


# Defect 3: "Size caps read from stat() are 0 for /dev/zero, pipes and /proc: read at most
# cap + 1 bytes, in every reader. A symlink to /dev/zero, or a FIFO, must give a clear one-line
# error naming the file and the cap, quickly."
@posix_only
def test_readers_cap_dev_zero_pipes_and_proc(tmp_path: Path) -> None:
    zero = tmp_path / "config.json"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    readers: list[Callable[[Path], object]] = [from_hf, load_nanogpt_config, register_gpu]
    for read in readers:
        with pytest.raises(ConfigFileError) as info:
            within(5.0, lambda read=read: read(zero))
        message = str(info.value)
        assert message.startswith(str(zero)) and "1,000,000" in message
        assert "character device" in message and "\n" not in message
        with pytest.raises(ConfigFileError, match=r"fifo\.json: a pipe \(FIFO\) with nothing to "
                                                  "read"):
            within(5.0, lambda read=read: read(fifo))
    # A pipe holding more than the cap: refused once the reader has limit + 1 bytes. A pipe
    # with a config in it (bash's <(cat config.json)) is read. Both written here, no thread: a
    # reader end held open keeps the pipe (and what was written) alive.
    stream = tmp_path / "stream.json"
    os.mkfifo(stream)
    keep = os.open(stream, os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = os.open(stream, os.O_WRONLY)
        os.write(writer, b"x" * 2_000)
        with pytest.raises(ConfigFileError, match=r"more than 1,000 bytes \(it is a pipe"):
            within(5.0, lambda: read_bytes(stream, limit=1_000))
        os.read(keep, 10_000)  # empty the pipe
        os.write(writer, b'{"model_type": "gpt2"}')
        os.close(writer)
        cfg = within(5.0, lambda: from_hf(stream))
        assert count_params(cfg).total == 124_439_808  # Hugging Face's count of gpt2
    finally:
        os.close(keep)
    # /proc files say st_size == 0 yet hold text; the reader gets it all.
    if Path("/proc/self/status").exists():
        assert "Name:" in read_text("/proc/self/status", limit=MAX_CONFIG_BYTES)


# Defect 4: "gpu() while another thread runs register_gpu() raises 'dictionary changed size
# during iteration': lock or snapshot the registry."
def test_gpu_lookup_while_another_thread_registers() -> None:
    base = gpu("RTX 4070")
    names = [f"Threaded Card {i}" for i in range(300)]
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        for name in names:
            register_gpu(base.model_copy(update={"name": name, "aliases": ()}))
        done.set()

    def reader() -> None:
        while not done.is_set():
            try:
                assert gpu("RTX 4070").memory_bytes == 12 * 2**30
            except BaseException as exc:
                errors.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the old code failed within ~20 writes
    try:
        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                         for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(interval)
        for name in names:
            hardware._REGISTERED.pop(name, None)
    assert errors == []
    assert done.is_set()


# Defect 5: "register_gpu record fields of the wrong type (a str memory_gib builds a 1 GiB
# string first): validate the type of every field before any arithmetic; clear error naming
# the field."
@pytest.mark.parametrize(("field", "value"), [
    ("memory_gib", "8"),  # "8" * 2**30: a 1 GiB string
    ("memory_bandwidth_gb_s", "448"),  # "448" * 1e9: a TypeError from deep inside
    ("usable_memory_mib", "12282"),  # "12282" * 2**20: a 5 MiB string
    ("usable_memory_mib", 12.5),
    ("boost_clock_ghz", "2.5"),
    ("sm_count", "36"),  # pydantic's lax mode took it as 36
    ("has_bf16_tensor_cores", "yes"),  # ... and this as True
    ("aliases", "abc"),  # became the aliases 'a', 'b', 'c'
    ("memory_gib", True),
    ("memory_gib", 1e300),  # 1e300 * 2**30 overflows: round(inf)
    ("peak_tflops", {"bf16": {"tflops": "40"}}),
    ("peak_tflops", {"bf16": 40}),
])
def test_register_gpu_checks_field_types_before_arithmetic(field: str, value: object) -> None:
    with pytest.raises(ScaleplanError, match=f"Robustness Card.*{field}"):
        within(5.0, lambda: register_gpu({**RECORD, field: value}))
    assert "Robustness Card" not in hardware._REGISTERED


# Defect 6: "GPTConfig(n_embd=10**308, n_head=1, mlp='swiglu') raises an OverflowError that
# escapes pydantic. Look for any other float conversions of huge ints in config derivation."
def test_huge_width_derives_exactly_and_huge_ints_are_named() -> None:
    d = 10**308
    cfg = GPTConfig(n_embd=d, n_head=1, mlp="swiglu")
    # Llama's rule: floor(2 * 4d / 3) rounded up to a multiple of 256, in exact integers.
    assert cfg.mlp_hidden % 256 == 0 and 8 * d // 3 <= cfg.mlp_hidden < 8 * d // 3 + 256
    # The rule on published widths: Llama-2-7B d=4096 -> 11008, TinyLlama d=2048 -> 5632.
    assert GPTConfig(n_embd=4096, n_head=32, mlp="swiglu").mlp_hidden == 11008
    assert GPTConfig(n_embd=2048, n_head=32, mlp="swiglu").mlp_hidden == 5632
    # An error about an int past Python's 4300-digit str limit still names the field.
    with pytest.raises(ValidationError, match=r"n_embd=.* is not divisible by n_head=2"):
        GPTConfig(n_embd=10**5000 + 1, n_head=2)


# Defect 7: "After a JSON round trip GPTConfig.replace(n_embd=384) no longer re-derives
# head_dim and mlp_hidden (62,252,160 params instead of 40,986,240 for gpt2)."
def test_json_round_trip_keeps_derived_fields_derived() -> None:
    cfg = GPTConfig.preset("gpt2")
    again = GPTConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    assert again.replace(n_embd=384) == cfg.replace(n_embd=384)
    # gpt2 at d=384 by hand: head_dim 384/12 = 32, mlp 4*384 = 1536, biases on, tied head.
    d, vocab, block, layers = 384, 50257, 1024, 12
    per_layer = (12 * d * d            # c_attn 3d^2, attn c_proj d^2, mlp 4d^2 + 4d^2
                 + 3 * d + d           # c_attn and attn c_proj biases
                 + 4 * d + d           # mlp c_fc and c_proj biases
                 + 2 * 2 * d)          # ln_1, ln_2: weight and bias
    total = vocab * d + block * d + layers * per_layer + 2 * d  # wte, wpe, blocks, ln_f
    assert total == 40_986_240
    assert count_params(again.replace(n_embd=384)).total == total
    assert again.replace(n_embd=384).head_dim == 32
    # A derived field given explicitly survives the round trip: Gemma's head_dim stays 256.
    gemma = GPTConfig.preset("gemma-2b")
    assert GPTConfig.model_validate_json(gemma.model_dump_json()).replace(
        n_embd=4096).head_dim == 256
    # A derived field given as None is derived again by replace().
    assert GPTConfig(n_head=12, n_kv_head=None).replace(n_head=16).n_kv_head == 16
    # model_dump() (Python mode) still shows every field, resolved.
    assert cfg.model_dump()["head_dim"] == 64 and cfg.model_dump()["mlp_hidden"] == 3072


# Defect 8: "count_params({...}) (a dict instead of a GPTConfig), and other wrong types given
# as the config to the public functions in model/: clear error saying to pass a GPTConfig."
def test_wrong_config_types_say_what_to_pass() -> None:
    with pytest.raises(ScaleplanError, match=r"count_params\(cfg=.*must be a GPTConfig.*"
                                             r"GPTConfig\(\*\*d\)"):
        count_params({"n_layer": 12, "n_head": 12, "n_embd": 768})  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"GPTConfig\.preset\(name\)"):
        count_params("gpt2")  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"from_hf\(config=5\).*not a int"):
        from_hf(5)  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"text must be the file's contents as a str"):
        load_nanogpt_config("train.py", text=b"n_layer = 2")  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"path=5 must be the path of a config file"):
        load_nanogpt_config(5)  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"register_gpu\(\[1\]\): pass a GPUSpec"):
        register_gpu([1])  # type: ignore[arg-type]


# Defect 9: "a deeply nested config.json and a symlink to /dev/zero given to the CLI must give
# a one-line error."
@posix_only
def test_cli_one_line_errors_for_deep_json_and_dev_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "config.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    for path, says in ((deep, "nested too deeply"), (zero, "more than 1,000,000 bytes")):
        assert within(10.0, lambda path=path: main(["params", str(path)])) == 2
        err = capsys.readouterr().err
        assert err.startswith("scaleplan: error: ") and str(path) in err and says in err
        assert err.count("\n") == 1 and "Traceback" not in err


# Also in the issue: "a numpy-int or float byte size taken for a GPU": byte sizes are ints;
# numpy ints are converted, floats refused with a hint to use int(...).
def test_byte_sizes_are_ints() -> None:
    a100_80 = gpu("A100", memory_bytes=np.int64(80 * 2**30))
    assert a100_80.memory_bytes == 80 * 2**30
    assert gpu("A100", memory_bytes=40 * 2**30).memory_bytes == 40 * 2**30
    with pytest.raises(ScaleplanError, match=r"memory_bytes=80000000000\.0 .*int\(8"):
        gpu("A100", memory_bytes=80e9)
    with pytest.raises(ScaleplanError, match=r"memory_bytes=12\.5"):
        gpu("A100", memory_bytes=12.5)
    with pytest.raises(ScaleplanError, match=r"gpu=12000000000\.0 .*memory_bytes="):
        gpu(12e9)  # type: ignore[arg-type]
    spec = gpu("RTX 4070")
    moved = GPUSpec(**{**spec.model_dump(), "memory_bytes": np.int64(12 * 2**30)})
    assert type(moved.memory_bytes) is int and moved.memory_bytes == 12 * 2**30
    with pytest.raises(ValidationError, match=r"memory_bytes=12000000000\.0 .*int\("):
        GPUSpec(**{**spec.model_dump(), "memory_bytes": 12e9})
    with pytest.raises(ValidationError, match=r"usable_memory_bytes"):
        GPUSpec(**{**spec.model_dump(), "usable_memory_bytes": 12.0 * 2**30})


def test_numpy_scalars_in_configs_are_python_numbers() -> None:
    # Issue 20 (numpy small ints): strict fields refused np.int64(768) from a numpy sweep, and a
    # kept np.int8 would wrap around in products. Converted at the boundary, the config is the
    # one built from Python numbers, with Python ints inside.
    from scaleplan.model.training_config import TrainingConfig

    cfg = GPTConfig(n_embd=np.int64(384), n_head=np.int8(6), n_layer=np.uint8(6),
                    dropout=np.float32(0.25), bias=np.bool_(False))
    assert cfg == GPTConfig(n_embd=384, n_head=6, n_layer=6, dropout=0.25, bias=False)
    assert type(cfg.n_embd) is int and type(cfg.bias) is bool
    # 16 x 1024 x 40 x 1: np.int8(16) * 1024 would wrap in int8 arithmetic
    assert TrainingConfig(micro_batch_size=np.int8(16)).tokens_per_step == 16 * 1024 * 40
    with pytest.raises(ValidationError, match="n_embd"):
        GPTConfig(n_embd=np.array([384, 768]))
