"""Monte Carlo statistics: a KPI's mean over the seeds of one point and its 95 %
confidence interval.

The interval is Student's t interval of the mean of n independent runs,

    mean ± t_{0.975, n-1} · s / √n,

with ``s`` the sample standard deviation (n - 1 in its denominator) and
``t_{0.975, n-1}`` the 97.5 % quantile of Student's t distribution with n - 1 degrees
of freedom (``scipy.stats.t.ppf``; 12.706 for n = 2, 4.303 for n = 3, 2.776 for n = 5).
The seeds make the runs independent (every random draw follows the study seed:
placement, PV and battery owners, PV sizes, loads, clouds, bid prices;
``federates/common/rng.py``); that the KPI is
about normal over the seeds is the interval's assumption, which matters less as n
grows. One run gives no interval (NaN); values that are not finite (a KPI a run has no
value for) are left out and ``n`` counts the rest.

Used by ``runner/compare.py`` (the KPI table, ``compare_ci.csv`` and the bands of the
figures, when runs differ only by their seed) and ``runner/sweep.py``
(``tecosim sweep --seeds N``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
"""The confidence level of every interval [-]."""

STATED = ("mean ± t(0.975, n-1) · s/√n over the n seeds of a point: Student's t 95 % "
          "confidence interval of the mean, s the sample standard deviation")
"""The interval in words, for the pages and figures that show one."""

#: the columns of :func:`interval_table`, after the group column
INTERVAL_COLUMNS = ["kpi", "unit", "n", "mean", "std", "t", "half_width", "ci_low", "ci_high"]


def t_quantile(n: int, level: float = LEVEL) -> float:
    """``t_{(1+level)/2, n-1}``: the two-sided Student's t quantile for ``n`` values
    [-]; NaN for fewer than two."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf((1.0 + level) / 2.0, n - 1))


@dataclass(frozen=True)
class Interval:
    """A t interval of a mean: ``n`` values, their ``mean``, sample standard deviation
    ``std`` and the quantile ``t`` used; ``half_width`` = t · std / √n (NaN for n < 2),
    all in the values' unit (``t`` in none)."""

    n: int
    mean: float
    std: float
    t: float
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def t_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """The ``level`` t interval of the mean of the finite ``values`` (module docstring)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    t = t_quantile(n, level)
    return Interval(n, mean, std, t, t * std / math.sqrt(n))


def interval_table(rows: pd.DataFrame, group: str, kpis: Sequence[str], units: Sequence[str],
                   level: float = LEVEL) -> pd.DataFrame:
    """One row per group (in order of first appearance) and KPI: the group, then
    :data:`INTERVAL_COLUMNS`, from ``rows`` (one row per run, a column ``group`` and a
    column per KPI)."""
    out = []
    for g, runs in rows.groupby(group, sort=False):
        for kpi, unit in zip(kpis, units, strict=True):
            iv = t_interval(runs[kpi] if kpi in runs else [], level)
            out.append({group: g, "kpi": kpi, "unit": unit, "n": iv.n, "mean": iv.mean, "std": iv.std,
                        "t": iv.t, "half_width": iv.half_width, "ci_low": iv.low, "ci_high": iv.high})
    return pd.DataFrame(out, columns=[group, *INTERVAL_COLUMNS])


def band(curves: Sequence[pd.Series], level: float = LEVEL) -> pd.DataFrame:
    """Curves of the runs of one point (each a Series over the same time axis) -> per
    time: ``n``, ``mean``, ``low``, ``high`` (the t interval of the mean at that time;
    ``low`` = ``high`` = ``mean`` where only one run has a value)."""
    m = pd.concat(list(curves), axis=1)
    n = m.notna().sum(axis=1)
    mean = m.mean(axis=1)
    std = m.std(axis=1, ddof=1)
    t = n.map(lambda k: t_quantile(int(k), level))
    half = (t * std / np.sqrt(n)).where(n >= 2, 0.0)
    return pd.DataFrame({"n": n, "mean": mean, "low": mean - half, "high": mean + half})
