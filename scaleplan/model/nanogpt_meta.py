"""The vocabulary a nanoGPT run trains with, read from its data folder's ``meta.pkl``.

nanoGPT's ``train.py`` opens ``data/<dataset>/meta.pkl`` when there is one and builds the model
with its ``vocab_size`` (65 for ``shakespeare_char``); without one it pads GPT-2's 50,257 tokens
to 50,304. ``meta.pkl`` is a pickle, and unpickling a file runs whatever code it names, so it is
never handed to `pickle`. `read_meta` decodes its opcodes with `pickletools.genops` (a decoder
that runs nothing) and rebuilds only plain data: dicts, lists, tuples, strings, numbers, None and
booleans. Any opcode that names or calls code (``GLOBAL``, ``STACK_GLOBAL``, ``REDUCE``,
``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ``, persistent ids, extension codes), and sets or bytes,
which a ``meta.pkl`` never needs, are refused. At most `MAX_META_BYTES` are read.

`dataset_vocab` finds the file where nanoGPT would: ``data/<dataset>/meta.pkl`` next to the
config file, next to its folder (nanoGPT's ``config/`` sits beside ``data/``), and under the
current directory. A file that is refused or unreadable, or a character-level dataset without
one, leaves the vocabulary unknown, with a note that says why.
"""

from __future__ import annotations

import os
import pickletools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scaleplan.errors import ConfigFileError, shown
from scaleplan.files import read_bytes

__all__ = ["KNOWN_CHAR_VOCABS", "MAX_META_BYTES", "PADDED_GPT2_VOCAB", "DatasetVocab",
           "dataset_vocab", "read_meta"]

#: nanoGPT train.py: "defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for
#: efficiency)" when the data folder has no meta.pkl.
PADDED_GPT2_VOCAB = 50304

#: A character-level meta.pkl holds vocab_size and two maps of that many entries: about 1 kB for
#: tiny Shakespeare's 65 characters, about 1 MB for 60,000 characters. Decoding runs in Python at
#: about a million opcodes a second, so the cap also bounds the time a hostile file can take.
MAX_META_BYTES = 2 * 1024 * 1024

# Token ids are stored as uint16 in nanoGPT's .bin files; forks that need more use uint32, so a
# vocab_size past 2**32 is no vocabulary.
_MAX_VOCAB = 2**32

# nanoGPT's GPT-2 BPE data sets (data/openwebtext/prepare.py, data/shakespeare/prepare.py encode
# with tiktoken's "gpt2" and write no meta.pkl).
# ... and FineWeb as the seed case and llm.c / modded-nanogpt prepare it (GPT-2 tokens, no meta.pkl)
_BPE_DATASETS = frozenset({"openwebtext", "shakespeare", "fineweb", "fineweb10B", "fineweb_edu",
                           "fineweb-edu", "edu_fineweb10B"})
# nanoGPT data/shakespeare_char/prepare.py prints "vocab size: 65" (tiny Shakespeare's characters).
KNOWN_CHAR_VOCABS = {"shakespeare_char": 65}
# nanoGPT names character-level data "<name>_char"; anchored on separators, so linear.
_CHAR_LEVEL = re.compile(r"(?:^|[_\-])char(?:$|[_\-])")


@dataclass(frozen=True)
class DatasetVocab:
    """What `dataset_vocab` found: the vocabulary (None when unknown), the file and a note."""

    vocab_size: int | None
    path: str | None = None
    note: str | None = None


def dataset_vocab(dataset: str, *, config_path: str | os.PathLike[str]) -> DatasetVocab:
    """The vocabulary nanoGPT builds for ``dataset``, looking for its ``meta.pkl`` where the run
    would (see the module's docstring).

    >>> dataset_vocab("openwebtext", config_path="no/such/dir/config.py").vocab_size
    50304
    >>> unknown = dataset_vocab("enwik8_char", config_path="no/such/dir/config.py")
    >>> unknown.vocab_size is None, "meta.pkl" in (unknown.note or "")
    (True, True)
    """
    candidates = _candidates(dataset, config_path)
    for candidate in candidates:
        if not _is_file(candidate):
            continue
        try:
            vocab = _vocab_of(read_meta(candidate), candidate)
        except ConfigFileError as exc:
            return DatasetVocab(None, candidate, f"{exc}; vocab_size unknown")
        return DatasetVocab(vocab, candidate, f"vocab_size = {vocab} from {candidate}, as "
                            "train.py reads it")
    where = f"data/{dataset}/meta.pkl"
    if dataset in _BPE_DATASETS:
        return DatasetVocab(PADDED_GPT2_VOCAB)
    if dataset in KNOWN_CHAR_VOCABS:
        known = KNOWN_CHAR_VOCABS[dataset]
        return DatasetVocab(known, None, f"{where} not found; vocab_size = {known} assumed, the "
                            f"vocabulary nanoGPT's data/{dataset}/prepare.py builds")
    if _CHAR_LEVEL.search(dataset):
        return DatasetVocab(None, None, f"dataset {shown(dataset)} is character-level but "
                            f"{where} was not found (looked in {', '.join(candidates)}); "
                            "vocab_size unknown: run the data's prepare.py or pass the config "
                            "from beside the data")
    return DatasetVocab(PADDED_GPT2_VOCAB, None, f"{where} not found; vocab_size = "
                        f"{PADDED_GPT2_VOCAB} assumed (train.py's padded GPT-2 vocabulary for "
                        "data without a meta.pkl)")


def _candidates(dataset: str, config_path: str | os.PathLike[str]) -> list[str]:
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the current directory was removed
        cwd = None
    config = os.fsdecode(config_path)
    here = os.path.dirname(os.path.normpath(os.path.join(cwd, config) if cwd else config))
    out: list[str] = []
    for base in (here, os.path.dirname(here), cwd):
        path = None if base is None else os.path.join(base, "data", dataset, "meta.pkl")
        if path is not None and path not in out:
            out.append(path)
    return out


def _is_file(path: str) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):  # a NUL in the dataset's name
        return False


def _vocab_of(meta: object, path: str) -> int:
    vocab = meta.get("vocab_size") if isinstance(meta, dict) else None
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 < vocab <= _MAX_VOCAB:
        raise ConfigFileError(f"holds no usable vocab_size (found {shown(vocab, limit=40)})",
                              path=path)
    return vocab


def read_meta(path: str | os.PathLike[str]) -> object:
    """The data in a ``meta.pkl``, rebuilt from its opcodes without running anything.

    Refused, as a `ConfigFileError` naming the file: any opcode that names or calls code, sets,
    bytes, a dict key that is not a string or a number, a malformed pickle, and a file larger
    than `MAX_META_BYTES`.

    >>> import pathlib, pickle, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "meta.pkl"
    >>> _ = path.write_bytes(pickle.dumps({"vocab_size": 3, "itos": {0: "a", 1: "b", 2: "c"}}))
    >>> read_meta(path)["vocab_size"]
    3
    """
    where = os.fsdecode(path)
    data = read_bytes(path, limit=MAX_META_BYTES, what="meta.pkl")
    machine = _Machine(where)
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "STOP":
                return machine.result()
            machine.step(opcode.name, arg)
    except ConfigFileError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError, MemoryError, RecursionError) as exc:
        raise ConfigFileError(f"not a readable pickle ({type(exc).__name__}: "
                              f"{shown(str(exc), limit=60)})", path=where) from None
    raise ConfigFileError("not a readable pickle (no STOP)", path=where)  # pragma: no cover


# Opcodes whose argument is the value itself (numbers, strings, booleans in protocol 0's INT).
_SCALARS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8",
})
_CONSTANTS: dict[str, Callable[[], object]] = {
    "NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False,
    "EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple,
}
_KEY_TYPES = (str, int, float, bool, type(None))  # never a tuple: hashing one can take forever


class _Machine:
    """The pickle virtual machine, restricted to building plain data."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def step(self, name: str, arg: Any) -> None:
        if name in _SCALARS:
            self.stack.append(arg)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name]())
        elif name in _STEPS:
            _STEPS[name](self, arg)
        else:
            detail = f" {shown(arg, limit=60)}" if isinstance(arg, str) else ""
            raise ConfigFileError(f"refused: opcode {name}{detail} is not plain data (a "
                                  "meta.pkl holds only dicts, lists, strings and numbers; "
                                  "nothing in it is run)", path=self.where)

    def result(self) -> object:
        if len(self.stack) != 1 or self.marks:
            raise ValueError("the pickle does not end with one value")
        return self.stack[0]

    def items(self) -> list[Any]:
        mark = self.marks.pop()
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def top(self, kind: type) -> Any:
        top = self.stack[-1]
        if not isinstance(top, kind):
            raise ValueError(f"adds to a {type(top).__name__}, not a {kind.__name__}")
        return top

    def set_items(self, pairs: list[Any]) -> None:
        target = self.top(dict)
        if len(pairs) % 2:
            raise ValueError("a dict item without a value")
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            if not isinstance(key, _KEY_TYPES):
                raise ValueError(f"a dict key of type {type(key).__name__}")
            target[key] = value

    def pop(self) -> None:
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self.stack.pop()

    def drop_mark(self) -> None:
        self.items()

    def append(self, items: list[Any]) -> None:
        self.top(list).extend(items)

    def set_item(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self.set_items([key, value])

    def new(self, value: object, items: list[Any]) -> None:
        """Push ``value`` (a new dict, list or tuple) holding ``items``."""
        self.stack.append(value)
        if isinstance(value, dict):
            self.set_items(items)
        elif isinstance(value, list):
            value.extend(items)

    def tuple_of(self, count: int) -> None:
        if len(self.stack) < count:
            raise IndexError("a tuple of more items than the stack holds")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        self.stack.append(tuple(items))

    def memoize(self, index: int) -> None:
        self.memo[index] = self.stack[-1]


_STEPS: dict[str, Callable[[_Machine, Any], None]] = {
    "PROTO": lambda m, _: None,
    "FRAME": lambda m, _: None,
    "MARK": lambda m, _: m.marks.append(len(m.stack)),
    "POP": lambda m, _: m.pop(),
    "POP_MARK": lambda m, _: m.drop_mark(),
    "DUP": lambda m, _: m.stack.append(m.stack[-1]),
    "DICT": lambda m, _: m.new({}, m.items()),
    "LIST": lambda m, _: m.new([], m.items()),
    "TUPLE": lambda m, _: m.stack.append(tuple(m.items())),
    "TUPLE1": lambda m, _: m.tuple_of(1),
    "TUPLE2": lambda m, _: m.tuple_of(2),
    "TUPLE3": lambda m, _: m.tuple_of(3),
    "APPEND": lambda m, _: m.append([m.stack.pop()]),
    "APPENDS": lambda m, _: m.append(m.items()),
    "SETITEM": lambda m, _: m.set_item(),
    "SETITEMS": lambda m, _: m.set_items(m.items()),
    "PUT": lambda m, arg: m.memoize(arg),
    "BINPUT": lambda m, arg: m.memoize(arg),
    "LONG_BINPUT": lambda m, arg: m.memoize(arg),
    "MEMOIZE": lambda m, _: m.memoize(len(m.memo)),
    "GET": lambda m, arg: m.stack.append(m.memo[arg]),
    "BINGET": lambda m, arg: m.stack.append(m.memo[arg]),
    "LONG_BINGET": lambda m, arg: m.stack.append(m.memo[arg]),
}
