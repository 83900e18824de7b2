"""How sizes print: counts as 40.56M / 6.74B, bytes in GiB (2^30) labelled GiB. One place, so
every message, report and table reads the same."""

from __future__ import annotations

__all__ = ["GiB", "format_count", "format_gib"]

GiB = 2**30  # GPU memory is binary: a "12 GB" card holds 12 GiB

_UNITS = (("T", 10**12), ("B", 10**9), ("M", 10**6))


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


def format_gib(n_bytes: float, *, width: int = 0) -> str:
    """Bytes as GiB with two decimals, labelled: ``format_gib(12 * 2**30) == '12.00 GiB'``.

    >>> format_gib(11_844_538_368), format_gib(2**30, width=6)
    ('11.03 GiB', '  1.00 GiB')
    """
    return f"{n_bytes / GiB:{width}.2f} GiB"
