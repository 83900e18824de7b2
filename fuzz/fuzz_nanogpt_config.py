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

from harness import fuzz, hostile  # fuzz/harness.py, beside this file

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
    # Hostile: long digit runs where numbers and claims go (int() of 10^4 digits, regexes that
    # backtrack: '# ' + '1' * 20_000 took 17 s), and deep nesting for the expression reader.
    *hostile([
        "n_layer = {digits}\n",
        "learning_rate = {digits}.{digits}e-{digits}\n",
        "# ~{digits}M parameters\n# {digits}\n",
        "batch_size = {open}{digits}{close}\n",
        "n_embd = 2**{digits}\nmax_iters = {digits} * {digits}\n",
        "x = '{digits}'\n",
    ]),
    "n_layer = " + "-" * 20_000 + "1\n",
    "n_layer = 1" + " + 1" * 10_000 + "\n",
    "n_layer = " + "2 ** " * 2_000 + "2\n",
    "x = " + "{1: " * 3_000 + "1" + "}" * 3_000 + "\n",
    "n_layer = 12\n" * 20_000,  # at the line limit
]


def test_one_input(data: bytes) -> None:
    # UTF-8 as a file would be read (FuzzedDataProvider's text spends the first byte on an
    # encoding choice, so the seeds would not arrive as written).
    text = data.decode("utf-8", errors="replace")
    with contextlib.suppress(ConfigFileError):
        load_nanogpt_config("fuzz.py", text=text)
    parse_size(text)  # the "~125M" comment reader: a number or None, never an error


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
