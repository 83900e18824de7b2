"""How sizes print: counts as 40.56M / 6.74B, bytes in GiB (2^30) labelled GiB. One place, so
every message, report and table reads the same."""

from __future__ import annotations

__all__ = ["GiB", "format_count", "format_gib"]

GiB = 2**30  # GPU memory is binary: a "12 GB" card holds 12 GiB

_UNITS = (("T", 10**12), ("B", 10**9), ("M", 10**6))
_PAST_FLOAT = 2**1000  # near float64's largest, 2**1024: such sizes print as a power of ten


def format_count(n: float) -> str:
    """A parameter or token count: two decimals at most, trailing zeros dropped.

    >>> format_count(40_560_000), format_count(125_000_000), format_count(6_738_415_616)
    ('40.56M', '125M', '6.74B')
    >>> format_count(65_536)
    '65,536'
    """
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.2f}".rstrip("0").rstrip(".") + unit
    return f"{n:,.0f}"


def format_gib(n_bytes: float, *, width: int = 0, decimals: int = 2) -> str:
    """Bytes as GiB with two decimals, labelled: ``format_gib(12 * 2**30) == '12.00 GiB'``.

    An int too large for a float (a fuzzed ``micro_batch_size=10**400``, issue 13) prints as its
    power of ten.

    >>> format_gib(11_844_538_368), format_gib(2**30, width=6), format_gib(80 * 2**30, decimals=0)
    ('11.03 GiB', '  1.00 GiB', '80 GiB')
    >>> format_gib(10**400)
    '~10^390 GiB'
    """
    if isinstance(n_bytes, int) and n_bytes > _PAST_FLOAT:
        return f"~10^{len(str(n_bytes // GiB)) - 1} GiB"
    return f"{n_bytes / GiB:{width}.{decimals}f} GiB"
