"""Coverage-guided fuzzing of the nanoGPT config parser (atheris, libFuzzer).

The contract: `load_nanogpt_config` on any text returns a run or raises `ConfigFileError`; it
never executes the text, never raises another exception, never hangs. Run by hand (see
fuzz/README.md):

    python fuzz/fuzz_nanogpt_config.py -runs=200000 -max_total_time=600 fuzz/corpus_config
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, uninstalled

from harness import fuzz  # fuzz/harness.py, beside this file

with atheris.instrument_imports():
    from scaleplan.errors import ConfigFileError
    from scaleplan.model.loaders import load_nanogpt_config
    from scaleplan.model.nanogpt_file import parse_size

# Seeds: nanoGPT's own config lines, and the attacks a config file may carry.
SEEDS = [
    "n_layer = 12\nn_head = 12\nn_embd = 768\nbatch_size = 12\nblock_size = 1024\n",
    "gradient_accumulation_steps = 5 * 8\nlearning_rate = 6e-4  # max\ndropout = 0.2\n",
    "import os\n__import__('os').system('touch pwned')\nx = (lambda: 0)()\n",
    "x = 10**10**10\nn_embd = 9**9**9\ny = 'a' * 10**9\n",
    "x = ().__class__.__bases__[0].__subclasses__()\n",
]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    with contextlib.suppress(ConfigFileError):
        load_nanogpt_config("fuzz.py", text=text)
    parse_size(text[:200])  # the "~125M" comment reader: a number or None, never an error


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
