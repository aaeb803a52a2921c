"""Markdown tables and number formats of BENCHMARKS.md (pure helpers, tested)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

DASH = "–"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True) -> str:
    """A markdown table padded so that it also reads well as plain text; with ``numeric``
    every column but the first is right-aligned. Rows shorter than the header are padded
    with empty cells."""
    ncol = len(header)
    rows = [list(r) + [""] * (ncol - len(r)) for r in rows]
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"a row has more than the header's {ncol} cells")
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(ncol)]
    right = [numeric and i > 0 for i in range(ncol)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w)
                                 for c, w, r in zip(cells, widths, right, strict=True)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1))
                         for w, r in zip(widths, right, strict=True)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def med(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def lo(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def f(x: float | None, nd: int = 2) -> str:
    """``x`` with ``nd`` decimals; a dash for None."""
    return DASH if x is None else f"{x:.{nd}f}"


def pct(x: float | None, nd: int = 0) -> str:
    """A fraction as a percentage; a dash for None."""
    return DASH if x is None else f"{100 * x:.{nd}f} %"


def ratio(a: float | None, b: float | None, nd: int = 2) -> str:
    """``a / b`` as ``N.NN×``; a dash when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return DASH
    return f"{a / b:.{nd}f}×"


def spread(values: Sequence[float | None], nd: int = 2) -> str:
    """``median (min-max)`` of several values, the value alone for one, a dash for none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return DASH
    if len(vals) == 1:
        return f(vals[0], nd)
    return f"{f(statistics.median(vals), nd)} ({f(min(vals), nd)}–{f(max(vals), nd)})"
