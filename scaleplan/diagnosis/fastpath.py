"""Which lines of a block are nanoGPT ``iter`` lines, found for the whole block at once.

Most lines of a nanoGPT log are ``iter {n}: loss {:.4f}, time {:.2f}ms, mfu {:.2f}%`` (one a
step: 20 million in a 1 GB log). Matching each with a regular expression costs about a
microsecond, which caps a reader near 50 MB/s before it has done anything else. Here a block of
whole lines is classified with a handful of numpy operations instead: a line is an ``iter``
line when, with its digits deleted, it is exactly ``iter : loss ., time .ms, mfu .%`` (or
``mfu -.%``), every number in it has a digit, its step has at most 15 digits and its MFU less
than 5 before the point (so it is below `MAX_MFU_PERCENT`; a larger one is read line by line,
which warns about it). Such a line reads, line by line, as a training record with finite values
and no warning, so the reader may count it without reading it (`scaleplan.diagnosis.logs` reads
the ones it keeps, line by line, as before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["MIN_ITER_SHARE", "IterLines", "iter_lines"]

# A block whose lines are mostly something else (judged on its first 8 KiB) is read line by
# line: the numpy set-up would only add to its cost.
MIN_ITER_SHARE = 0.5
_SAMPLE_BYTES = 8192

_DIGITS = b"0123456789"
_TEMPLATE = b"iter : loss ., time .ms, mfu .%"
_TEMPLATE_NEGATIVE = b"iter : loss ., time .ms, mfu -.%"  # -100.00% before MFU is measured
_MAX_STEP_DIGITS = 15  # LogRecord.step < 1e15
_MAX_LINE = 120  # at most ~90 digits: every number far below float's range


class IterLines(NamedTuple):
    """A block's lines: ``starts[i]`` is where line ``i`` starts (``starts[-1]`` is the block's
    length) and ``iter[i]`` says whether it is a nanoGPT ``iter`` line."""

    starts: npt.NDArray[np.int64]
    iter: npt.NDArray[np.bool_]


def iter_lines(block: bytes) -> IterLines | None:
    """The lines of ``block`` (whole lines, each ended by ``\\n``) and which are ``iter`` lines;
    None when the block is not worth classifying (under `MIN_ITER_SHARE` of the lines of its
    first 8 KiB look like ``iter`` lines, or it holds a ``\\r``, or does not end in ``\\n``).

    >>> lines = iter_lines(b"iter 7: loss 3.1000, time 95.10ms, mfu 40.00%\\n"
    ...                    b"step 8: train loss 3.0, val loss 3.1\\n"
    ...                    b"iter 9: loss 3.0500, time 95.10ms, mfu -100.00%\\n")
    >>> lines.iter.tolist(), lines.starts.tolist()
    ([True, False, True], [0, 46, 83, 131])
    """
    sample = block[:_SAMPLE_BYTES]
    if not block.endswith(b"\n") or b"\r" in block or \
            sample.count(b"iter ") < MIN_ITER_SHARE * sample.count(b"\n"):
        return None
    import numpy as np

    data = np.frombuffer(block, dtype=np.uint8)
    # the skeleton: the block with its digits deleted; other[k] is where its k-th byte was
    other = np.flatnonzero((data - np.uint8(ord("0"))) > 9)
    skeleton = data[other]
    ends = np.flatnonzero(skeleton == ord("\n"))
    n_lines = ends.size
    skeleton_starts = np.empty(n_lines, dtype=np.int64)
    skeleton_starts[0] = 0
    skeleton_starts[1:] = ends[:-1] + 1
    starts = np.empty(n_lines + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = other[ends] + 1
    is_iter = np.zeros(n_lines, dtype=bool)
    templates = (_TEMPLATE, _TEMPLATE_NEGATIVE) if b"mfu -" in block else (_TEMPLATE,)
    for template in templates:
        rows = _matching(skeleton, skeleton_starts, ends - skeleton_starts, template)
        first = skeleton_starts[rows]
        is_iter[rows[_numbers_ok(other, first, template)]] = True
    is_iter &= np.diff(starts) <= _MAX_LINE + 1
    return IterLines(starts, is_iter)


def _matching(skeleton: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
              lengths: npt.NDArray[np.int64], template: bytes) -> npt.NDArray[np.int64]:
    """The lines whose skeleton is ``template``. Most blocks are told by a count: when the
    skeleton holds the template as a whole line as many times as it has lines of its length
    that start with its first byte, those are the lines; else each is compared."""
    import numpy as np

    size = len(template)
    rows = np.flatnonzero(lengths == size)
    if rows.size == 0:
        return rows
    rows = rows[skeleton[starts[rows]] == template[0]]
    found: npt.NDArray[np.int64] = rows
    # each line between its own two line ends, so that whole lines are counted apart
    whole_lines = b"\n" + skeleton.tobytes().replace(b"\n", b"\n\n")
    if whole_lines.count(b"\n" + template + b"\n") == rows.size:
        return found
    windows = np.lib.stride_tricks.sliding_window_view(skeleton, size)
    same: npt.NDArray[np.bool_] = windows[starts[rows]].view(f"S{size}").ravel() == template
    found = rows[same]
    return found


def _numbers_ok(other: npt.NDArray[np.int64], first: npt.NDArray[np.int64],
                template: bytes) -> npt.NDArray[np.bool_]:
    """For lines whose skeleton is ``template`` and starts at ``first``: whether the step has 1
    to 15 digits, each decimal number has a digit, and the MFU fewer than 5 before its point.
    The digits between two skeleton bytes are the gap between where they were."""
    import numpy as np

    where: dict[int, npt.NDArray[np.int64]] = {}  # template byte j: where it was, each line

    def digits_between(j: int) -> npt.NDArray[np.int64]:  # between template bytes j and j + 1
        for k in (j, j + 1):
            if k not in where:
                where[k] = other[first + k]
        return where[j + 1] - where[j] - 1

    step = digits_between(template.index(b":") - 1)
    ok = (step >= 1) & (step <= _MAX_STEP_DIGITS)
    points = [i for i, byte in enumerate(template) if byte == ord(".")]
    for point in points:
        ok &= (digits_between(point - 1) + digits_between(point)) >= 1
    result: npt.NDArray[np.bool_] = ok & (digits_between(points[-1] - 1) < 5)  # 10,000%: slowly
    return result if first.size else np.zeros(0, dtype=bool)
