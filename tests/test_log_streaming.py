"""The log reader streams (issue 23): a block of nanoGPT ``iter`` lines is classified at once
(`scaleplan.diagnosis.fastpath`) and only the records kept are read, yet the log reads exactly
as line by line; memory is bounded by `MAX_KEPT_RECORDS`, whatever the length of the log; ``-``
and pipes read like files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.diagnosis import blocks, logs, records
from scaleplan.diagnosis.fastpath import iter_lines
from scaleplan.diagnosis.logs import read_log

# ---- the fast path reads as the line-by-line path

_NUMBER = st.one_of(
    st.from_regex(r"\A[0-9]{1,4}\.[0-9]{2,4}\Z"),
    st.sampled_from(["3.", ".5", "0.0", "12345.00", "9999.99", "1" * 40 + ".0", "nan", "inf",
                     "-1.0", "", "."]),
)
_STEP = st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["", "1" * 15, "1" * 16, "x"]))


@st.composite
def _iter_line(draw: st.DrawFn) -> str:
    mfu = draw(st.one_of(_NUMBER, st.just("-100.00")))
    return (f"iter {draw(_STEP)}: loss {draw(_NUMBER)}, time {draw(_NUMBER)}ms, mfu "
            f"{mfu}%")


_OTHER = st.sampled_from([
    "", "step 250: train loss 4.1000, val loss 4.2000", "number of parameters: 123.59M",
    "tokens per iteration will be: 491,520", "iter 5: loss 3.1", "iter 5: loss 3.1000, time "
    "9.00ms", "W0412 Not enough SMs to use max_autotune_gemm mode", "saving checkpoint to out",
    "step    1/74: train loss 4.367857 (224.275024 ms, 36563 tok/s)", "val loss 4.123",
    "iter 7: loss 3.1000, time 95.10ms, mfu 40.00%  ", "  iter 7: loss 3.1000, time 95.10ms, "
    "mfu 40.00%", "iter 7: loss 3.1000, time 95.10ms, mfu 40.00%\r", "\xff\xfe", "{'loss': 2.5}",
])


def _read(text: str, *, fast: bool) -> logs.TrainingLog:
    if fast:
        return read_log("x.log", text=text)
    saved = blocks.iter_lines
    blocks.iter_lines = lambda block: None  # every line the regular way
    try:
        return read_log("x.log", text=text)
    finally:
        blocks.iter_lines = saved


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_iter_line(), _iter_line(), _iter_line(), _OTHER), min_size=1,
                max_size=60), st.integers(1, 8))
def test_fast_path_reads_as_line_by_line(lines: list[str], limit: int) -> None:
    # any mix of iter lines (good, odd and broken numbers), other lines and small record limits
    # (so records are thinned): the same TrainingLog, record for record, count for count
    text = "\n".join(lines) + "\n"
    saved = records.MAX_KEPT_RECORDS
    records.MAX_KEPT_RECORDS = limit
    try:
        try:
            slow = _read(text, fast=False)
        except logs.LogFormatError as exc:
            with pytest.raises(logs.LogFormatError, match="no loss or parameter count"):
                _read(text, fast=True)
            assert "no loss or parameter count" in str(exc)
            return
        assert _read(text, fast=True) == slow
    finally:
        records.MAX_KEPT_RECORDS = saved


def test_the_classifier_on_lines_written_out() -> None:
    # each line as nanoGPT's train.py prints it, or broken one way; True where the line reads,
    # line by line, as a training record with finite values and no warning
    cases = [
        ("iter 7: loss 3.1000, time 95.10ms, mfu 40.00%", True),
        ("iter 0: loss 10.9856, time 61234.56ms, mfu -100.00%", True),  # not measured yet
        ("iter 7: loss 3., time 95.10ms, mfu .5%", True),  # odd but numbers
        ("iter : loss 3.1000, time 95.10ms, mfu 40.00%", False),  # no step
        ("iter 7: loss ., time 95.10ms, mfu 40.00%", False),  # a point is no number
        ("iter 1234567890123456: loss 3.1, time 9.1ms, mfu 4.0%", False),  # 16-digit step
        ("iter 7: loss 3.1000, time 95.10ms, mfu 12345.00%", False),  # MFU past the bound
        ("iter 7: loss 3.1000, time 95.10ms, mfu 9999.99%", True),
        ("iter 7: loss nan, time 95.10ms, mfu 40.00%", False),
        ("iter 7: loss 3.1000, time 95.10ms, mfu 40.00% ", False),  # a trailing space
        ("iter 7: loss 3.1000, time 95.10ms", False),
        ("step 7: train loss 3.1, val loss 3.2", False),  # its skeleton is as long
        ("iter 7: loss 3.1000, time 95.10ms, mfv 40.00%", False),  # as long, and starts alike
    ]
    block = "".join(line + "\n" for line, _ in cases).encode()
    lines = iter_lines(b"iter 1: loss 1.0, time 1.0ms, mfu 1.0%\n" * 20 + block)
    assert lines is not None
    assert lines.iter.tolist()[20:] == [expected for _, expected in cases]
    # without the odd one, the block is told by counting whole lines (no line compared): the
    # same answers
    rest = [(line, ok) for line, ok in cases if "mfv" not in line]
    lines = iter_lines(b"iter 1: loss 1.0, time 1.0ms, mfu 1.0%\n" * 20 +
                       "".join(line + "\n" for line, _ in rest).encode())
    assert lines is not None
    assert lines.iter.tolist()[20:] == [expected for _, expected in rest]


# ---- memory does not grow with the log


def test_a_long_log_keeps_evenly_spaced_records_and_the_last(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_KEPT_RECORDS", 1000)
    n = 100_000
    text = "".join(f"iter {i}: loss {10 - i / 20_000:.4f}, time 95.00ms, mfu 40.00%\n"
                   for i in range(n))
    log = read_log("x.log", text=text)
    steps = [r.step for r in log.train_records()]
    # 100,000 records thinned to at most 1,000: the spacing doubles from 1 past the limit, to
    # 128 (100,000 / 128 = 782 records, 100,000 / 64 = 1,563 would be too many), and the last
    # record (step 99,999) is kept beside them
    assert steps[:-1] == list(range(0, n, 128)) and steps[-1] == n - 1
    assert log.train_records_read == n and log.lines_recognised == n
    assert log.train_records()[-1].train_loss == pytest.approx(10 - (n - 1) / 20_000, abs=1e-4)


def test_memory_is_bounded_by_the_records_kept(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    monkeypatch.setattr(records, "MAX_KEPT_RECORDS", 2_000)

    def peak(lines: int) -> int:
        path = tmp_path / f"{lines}.log"
        path.write_text("".join(f"iter {i}: loss 3.0000, time 95.00ms, mfu 40.00%\n"
                                for i in range(lines)))
        tracemalloc.start()
        try:
            read_log(path)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # 50,000 and 200,000 lines (2.4 and 9.7 MB) hold at most MAX_KEPT_RECORDS records each:
    # the peak barely moves with 4x the log
    small, large = peak(50_000), peak(200_000)
    assert large < 1.3 * small, (small, large)


def test_a_file_with_nothing_recognisable_is_refused_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # /dev/urandom has line ends every ~256 bytes, so no line is too long, and a 16 GiB cap would
    # take hours of garbage: the reader gives up once MAX_UNRECOGNISED_BYTES held nothing
    from scaleplan.diagnosis import stream

    monkeypatch.setattr(stream, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(blocks, "MAX_UNRECOGNISED_BYTES", 64 * 1024)
    garbage = ("qzx " * 60 + "\n") * 2000  # 482 KB
    with pytest.raises(logs.LogFormatError, match=r"^x\.log: nothing recognisable in the first "
                       r"[\d,]+ bytes \(over MAX_UNRECOGNISED_BYTES = 65,536\)"):
        read_log("x.log", text=garbage)
    # the same garbage after a first loss is skipped and counted, not refused
    log = read_log("x.log", text="iter 1: loss 2.0\n" + garbage)
    assert (len(log.records), log.lines_skipped) == (1, 2000)


# ---- "-" reads standard input (a pipe: `python train.py | scaleplan diagnose -`)


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    data = b"number of parameters: 40.56M\niter 0: loss 10.9856, time 61234.56ms, mfu -100.00%\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    log = read_log("-")
    assert (log.source, log.reported_params, log.records[0].train_loss) == (
        "<stdin>", 40_560_000, 10.9856)


def test_a_pipe_reads_like_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    lines = "".join(f"iter {i}: loss {5 - i / 1000:.4f}, time 95.00ms, mfu 40.00%\n"
                    for i in range(3000))
    path = tmp_path / "train.log"
    path.write_text(lines)
    code = ("import sys; from scaleplan.diagnosis.logs import read_log; "
            "print(read_log('-').model_dump_json())")
    piped = subprocess.run([sys.executable, "-c", code], input=lines.encode(),
                           capture_output=True, check=True, timeout=120)
    from_pipe = logs.TrainingLog.model_validate_json(piped.stdout)
    assert from_pipe.model_copy(update={"source": str(path)}) == read_log(path)
    assert from_pipe.train_records()[-1].train_loss == pytest.approx(5 - 2999 / 1000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["train", "eval", "lines"]), st.integers(1, 40)),
                max_size=12), st.integers(1, 6))
def test_lines_taken_in_runs_keep_what_one_at_a_time_keeps(
        runs: list[tuple[str, int]], limit: int) -> None:
    # the fast path hands the store runs of lines (append_lines); the oracle appends each
    # record alone: the same records kept, thinned the same way
    from scaleplan.diagnosis.records import LogRecord, RecordStore

    def record(kind: str, step: int) -> LogRecord:
        return LogRecord(kind=kind, step=step, train_loss=1.0)  # type: ignore[arg-type]

    parse = lambda line: record("train", int(line))  # noqa: E731
    fast, slow = RecordStore(limit, parse), RecordStore(limit, parse)
    step = 0
    for kind, count in runs:
        if kind == "lines":
            fast.append_lines(count, lambda i, first=step: str(first + i).encode())
            for i in range(count):
                slow.append(record("train", step + i))
        else:
            for i in range(count):
                fast.append(record(kind, step + i))
                slow.append(record(kind, step + i))
        step += count
    assert [(r.kind, r.step) for r in fast.records()] == \
        [(r.kind, r.step) for r in slow.records()]
    assert fast.seen == slow.seen


def test_a_digit_glued_to_mfu_reads_as_no_mfu_on_both_paths() -> None:
    # atheris found it: "1mfu" has the template's skeleton once digits are deleted, so the fast
    # path takes the line, and the general pattern finds no MFU in it (crashed on None >= 0).
    line = "iter 10: loss 9.4321, time 4321.00ms, 1mfu 1.61%\n"
    one = read_log("f.log", text=line)
    many = read_log("f.log", text=(line * 3000).encode())  # a block the fast path classifies
    assert [(r.step, r.train_loss, r.time_ms, r.mfu_percent) for r in one.records] == [
        (10, 9.4321, 4321.0, None)]
    assert len(many.records) == 3000 and many.records[-1] == one.records[0]
