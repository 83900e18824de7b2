"""Coverage-guided fuzzing of the free-text name and size readers (atheris, libFuzzer).

The contract: a claimed size (`ParamsNear`, as in "~125M", "1.5B", "124,439,808") and a GPU name
(`gpu`, as in "A100 80GB") on any text give a rule / a GPU or raise a ``ValueError`` whose
message stays short (the text quoted shortened); never another exception, never a hang. Run by
hand (see fuzz/README.md):

    python fuzz/fuzz_names.py -runs=200000 -max_total_time=600 fuzz/corpus_names
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, uninstalled

from harness import fuzz, hostile  # fuzz/harness.py, beside this file

with atheris.instrument_imports():
    from scaleplan.compute.hardware import gpu
    from scaleplan.validation.markers import ParamsNear

#: A refusal quotes the text through errors.shown (~80 characters), never the whole of it.
MAX_MESSAGE = 1_000

SEEDS = [
    "~125M", "1.5B", "124,439,808", "350m", "7e9", "RTX 4070", "A100 80GB", "h100-sxm",
    "NVIDIA GeForce RTX 4090", "T4",
    *hostile(["{digits}", "~{digits}M", "{digits}.{digits}B", "1,{digits}", "A100 {digits}GB",
              "RTX {digits}", "{open}{digits}{close}"], lengths=(3_000, 10_000)),
]


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    for read in (ParamsNear, gpu):
        try:
            read(text)
        except ValueError as exc:
            assert len(str(exc)) <= MAX_MESSAGE, str(exc)[:300]


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
