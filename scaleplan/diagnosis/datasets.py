"""Datasets whose size is known: the training tokens of each, and its vocabulary when it is not
GPT-2's, with where each number comes from.

`diagnose` divides the tokens a run has seen by its dataset's training tokens to count epochs
(``repeated-data``), and takes a character-level dataset's vocabulary for its ln(vocab) checks.

>>> known_dataset("shakespeare_char").train_tokens
1003854
>>> known_dataset("fineweb") is None  # which sample of FineWeb is not said: unknown
True
"""

from __future__ import annotations

from typing import NamedTuple

from scaleplan.model.nanogpt_meta import KNOWN_CHAR_VOCABS

__all__ = ["KNOWN_DATASETS", "KnownDataset", "known_dataset"]


class KnownDataset(NamedTuple):
    """A dataset's training split: its tokens, its vocabulary (None: GPT-2's BPE) and the
    source of the numbers."""

    name: str
    train_tokens: int
    vocab_size: int | None
    source: str


KNOWN_DATASETS: tuple[KnownDataset, ...] = (
    # nanoGPT data/openwebtext/readme.md, after prepare.py: "train has ~9B tokens
    # (9,035,582,198)" (GPT-2 BPE)
    KnownDataset("openwebtext", 9_035_582_198, None,
                 "nanoGPT data/openwebtext/prepare.py: train has 9,035,582,198 tokens"),
    # nanoGPT data/shakespeare_char/prepare.py prints "vocab size: 65", "train has 1,003,854
    # tokens" (one token a character)
    KnownDataset("shakespeare_char", 1_003_854, KNOWN_CHAR_VOCABS["shakespeare_char"],
                 "nanoGPT data/shakespeare_char/prepare.py: train has 1,003,854 tokens, "
                 "vocab size 65"),
    # nanoGPT data/shakespeare/readme.md, after prepare.py: "train.bin has 301,966 tokens"
    KnownDataset("shakespeare", 301_966, None,
                 "nanoGPT data/shakespeare/prepare.py: train.bin has 301,966 tokens"),
    # llm.c dev/data/fineweb.py writes FineWeb's sample-10BT ("download 10B Tokens sample")
    # to the folder fineweb10B, GPT-2 BPE
    KnownDataset("fineweb10B", 10_000_000_000, None,
                 "llm.c dev/data/fineweb.py: FineWeb sample-10BT, 10B GPT-2 tokens"),
)

_BY_NAME = {d.name.lower(): d for d in KNOWN_DATASETS}


def known_dataset(name: str | None) -> KnownDataset | None:
    """The known dataset named ``name`` (a nanoGPT ``dataset`` folder), case ignored; None when
    it is not in `KNOWN_DATASETS`.

    >>> known_dataset("OpenWebText").train_tokens
    9035582198
    """
    if name is None:
        return None
    return _BY_NAME.get(name.strip().lower())
