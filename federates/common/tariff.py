"""The utility's tariffs per market interval: retail (what a customer pays for grid
energy) and feed-in (what the grid pays for exported energy) [USD/kWh].

A study's ``market.tariff`` is one of three kinds (:class:`federates.common.config.schema.TariffConfig`):

* ``flat``: ``market.retail_usd_per_kwh`` / ``market.feed_in_usd_per_kwh`` in every
  interval (the default; the arrays hold exactly those two floats).
* ``tou`` (time of use): named periods, each a set of local hours of the day
  (``site.timezone``, so DST-aware), day types (``weekday``, ``weekend``, ``holiday``)
  and months, with a retail and a feed-in price. The periods cover every hour of every
  day type of every month exactly once (:func:`tou_coverage_problems`). A date in
  ``holidays`` is a ``holiday`` when a period names that day type (it must then be
  covered), else it is priced as a ``weekend``.
* ``dynamic``: a CSV time series ``time,retail_usd_per_kwh,feed_in_usd_per_kwh``
  (:func:`read_price_csv`): a row's prices hold from its time to the next row's; the
  series' resolution is its most common spacing, the last row holds for one
  resolution, and a spacing longer than the resolution is a gap.

Both time-varying kinds are piecewise constant in time and are mapped to each market
interval by the time-weighted mean over the interval (:func:`interval_means`); an
interval inside one piece gets that piece's price exactly.

:class:`Tariff` is what the roles and the post-run code use: ``retail_usd_per_kwh[k]``
and ``feed_in_usd_per_kwh[k]`` of interval ``k``, computed once per study. The run
folder's ``results/tariff.parquet`` (:meth:`Tariff.table`) holds the same arrays, so
post-run code reads the prices from the run, not from the config.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from federates.common.errors import ConfigError, Problem

if TYPE_CHECKING:
    from federates.common.config.schema import StudyFile, TariffConfig, TouPeriod

TARIFF_KINDS = ("flat", "tou", "dynamic")
DAY_TYPES = ("weekday", "weekend", "holiday")
CSV_COLUMNS = ("time", "retail_usd_per_kwh", "feed_in_usd_per_kwh")
#: the results table of the tariff (one row per market interval)
TABLE = "tariff"
TABLE_DTYPES = {"interval": "int64", "t_s": "float64", "retail_usd_per_kwh": "float64",
                "feed_in_usd_per_kwh": "float64"}
#: [s] the blocks a TOU tariff is evaluated on, aligned to UTC: every time zone's
#: offset is a whole number of quarter hours, so a local hour never changes inside one
_TOU_BLOCK_S = 900


@dataclass(frozen=True)
class Tariff:
    """Retail and feed-in prices [USD/kWh] of each market interval ``k`` (arrays of
    ``n_intervals``), and the interval length [s]."""

    kind: str
    retail_usd_per_kwh: np.ndarray
    feed_in_usd_per_kwh: np.ndarray
    market_interval_s: float

    def __post_init__(self) -> None:
        r = np.asarray(self.retail_usd_per_kwh, dtype=float)
        f = np.asarray(self.feed_in_usd_per_kwh, dtype=float)
        if r.shape != f.shape or r.ndim != 1:
            raise ValueError(f"retail {r.shape} and feed-in {f.shape} need one value per interval")
        r.flags.writeable = False
        f.flags.writeable = False
        object.__setattr__(self, "retail_usd_per_kwh", r)
        object.__setattr__(self, "feed_in_usd_per_kwh", f)

    @classmethod
    def flat(cls, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float, n_intervals: int,
             market_interval_s: float) -> Tariff:
        return cls("flat", np.full(n_intervals, float(retail_usd_per_kwh)),
                   np.full(n_intervals, float(feed_in_usd_per_kwh)), float(market_interval_s))

    @property
    def n_intervals(self) -> int:
        return len(self.retail_usd_per_kwh)

    def retail(self, k: int) -> float:
        """Retail price of interval ``k`` [USD/kWh], a Python float."""
        return float(self.retail_usd_per_kwh[k])

    def feed_in(self, k: int) -> float:
        """Feed-in price of interval ``k`` [USD/kWh], a Python float."""
        return float(self.feed_in_usd_per_kwh[k])

    def table(self) -> pd.DataFrame:
        """The ``tariff`` results table: interval, t_s (its start [s]), the two prices."""
        n = self.n_intervals
        return pd.DataFrame({
            "interval": np.arange(n, dtype="int64"),
            "t_s": np.arange(n, dtype="int64") * float(self.market_interval_s),
            "retail_usd_per_kwh": self.retail_usd_per_kwh.copy(),
            "feed_in_usd_per_kwh": self.feed_in_usd_per_kwh.copy(),
        })

    @classmethod
    def from_table(cls, df: pd.DataFrame, market_interval_s: float, kind: str = "table") -> Tariff:
        """The tariff a ``tariff`` results table holds (rows in any order, one per interval)."""
        df = df.sort_values("interval")
        k = df["interval"].to_numpy()
        if not np.array_equal(k, np.arange(len(k))):
            raise ValueError("the tariff table needs one row per interval 0..n-1")
        return cls(kind, df["retail_usd_per_kwh"].to_numpy(dtype=float),
                   df["feed_in_usd_per_kwh"].to_numpy(dtype=float), market_interval_s)


# ---- time of use ------------------------------------------------------------------------

def parse_hours(text: str) -> list[int]:
    """The local hours [0..23] of ``"H1-H2"``: H1 (inclusive) to H2 (exclusive), 0 <= H1,
    H2 <= 24, wrapping past midnight when H2 <= H1 (``"21-7"``); ``"0-24"`` is the day.
    Raises ValueError."""
    parts = str(text).split("-")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (int(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not an hour range like '16-21'") from None
    if not (0 <= a <= 23 and 0 <= b <= 24):
        raise ValueError(f"{text!r}: start hour in 0..23, end hour in 0..24")
    if a < b:
        return list(range(a, b))
    return list(range(a, 24)) + list(range(0, b))


def _hours(values: Sequence[int]) -> str:
    """``"hour 7"`` or ``"hours 1-3, 7"``."""
    return ("hour " if len(set(values)) == 1 else "hours ") + _ranges(values)


def _months(values: Sequence[int]) -> str:
    return ("month " if len(set(values)) == 1 else "months ") + _ranges(values)


def _ranges(values: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"``."""
    out, vs = [], sorted(set(values))
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        out.append(f"{vs[i]}" if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ", ".join(out)


def _day_types(periods: Sequence[TouPeriod]) -> tuple[str, ...]:
    """The day types the periods must cover: weekday and weekend, and holiday when a
    period names it."""
    named = {d for p in periods for d in p.days}
    return tuple(d for d in DAY_TYPES if d != "holiday" or d in named)


def tou_coverage_problems(periods: Sequence[TouPeriod], field: str = "market.tariff.periods") -> list[Problem]:
    """Every (month, day type, hour) covered by no period or by more than one, grouped
    by day type and hour set, each naming the months, the hours and the periods."""
    problems: list[Problem] = []
    if not periods:
        return [Problem(field, "a tou tariff needs periods", "a list of periods with hours, days, months and prices")]
    cover: dict[tuple[int, str, int], list[str]] = {}
    for p in periods:
        try:
            hours = sorted({h for text in p.hours for h in parse_hours(text)})
        except ValueError as e:
            problems.append(Problem(f"{field}.{p.name}.hours", str(e), "'H1-H2' with 0 <= H1 <= 23, 0 <= H2 <= 24"))
            continue
        for m in p.months:
            for d in p.days:
                for h in hours:
                    cover.setdefault((m, d, h), []).append(p.name)
    # group the gaps and overlaps: (day type, hours, names) -> months
    gaps: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    doubles: dict[tuple[str, int, tuple[str, ...]], list[int]] = {}
    for d in _day_types(periods):
        for m in range(1, 13):
            missing = tuple(h for h in range(24) if not cover.get((m, d, h)))
            if missing:
                gaps.setdefault((d, missing), []).append(m)
            for h in range(24):
                names = cover.get((m, d, h), [])
                if len(names) > 1:
                    doubles.setdefault((d, h, tuple(names)), []).append(m)
    allowed = "periods that cover every hour of every day type and month exactly once"
    by_days: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}  # (hours, months) -> day types
    for (d, hours), months in gaps.items():
        by_days.setdefault((hours, tuple(months)), []).append(d)
    for (hours, months), days in by_days.items():
        problems.append(Problem(field, f"{', '.join(days)} {_hours(hours)} of {_months(months)}: covered by no "
                                "period", allowed))
    merged: dict[tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]], list[str]] = {}
    hours_of: dict[tuple[str, tuple[str, ...], tuple[int, ...]], list[int]] = {}
    for (d, h, names), months in doubles.items():
        hours_of.setdefault((d, names, tuple(months)), []).append(h)
    for (d, names, months), hours in hours_of.items():
        merged.setdefault((names, tuple(hours), months), []).append(d)
    for (names, hours, months), days in merged.items():
        problems.append(Problem(field, f"{', '.join(days)} {_hours(hours)} of {_months(months)}: covered by "
                                f"{len(names)} periods ({', '.join(names)})", allowed))
    return problems


def tou_period_index(periods: Sequence[TouPeriod], holidays: Sequence[dt.date],
                     local: pd.DatetimeIndex) -> np.ndarray:
    """For each local time of ``local`` (tz-aware, the site's zone), the index into
    ``periods`` of the period that holds (periods covering each hour exactly once)."""
    day_types = _day_types(periods)
    table = np.full((13, len(DAY_TYPES), 24), -1, dtype=np.int64)
    for i, p in enumerate(periods):
        hours = sorted({h for text in p.hours for h in parse_hours(text)})
        for m in p.months:
            for d in p.days:
                table[m, DAY_TYPES.index(d), hours] = i
    day = np.where(local.day_of_week.to_numpy() >= 5, 1, 0)
    if holidays:
        hol = np.isin(np.asarray(local.date, dtype="datetime64[D]"),
                      np.asarray(sorted(holidays), dtype="datetime64[D]"))
        day = np.where(hol, 2 if "holiday" in day_types else 1, day)
    idx = table[local.month.to_numpy(), day, local.hour.to_numpy()]
    if (idx < 0).any():  # the coverage check runs first; this is a bug, not bad input
        raise ValueError("a local hour no TOU period covers")
    return idx


# ---- dynamic: a CSV time series --------------------------------------------------------

@dataclass(frozen=True)
class PriceSeries:
    """A piecewise-constant price series: piece ``i`` spans ``[start_s[i], end_s[i])``
    [s since the Unix epoch] at ``retail`` / ``feed_in`` [USD/kWh]; ``line`` its CSV line."""

    start_s: np.ndarray
    end_s: np.ndarray
    retail: np.ndarray
    feed_in: np.ndarray
    line: np.ndarray


def read_price_csv(path: Path, *, allow_negative: bool = False, field: str = "market.tariff.path") -> PriceSeries:
    """A dynamic tariff's CSV: header ``time,retail_usd_per_kwh,feed_in_usd_per_kwh`` (any
    order), ``time`` ISO 8601 with a UTC offset, strictly increasing; prices finite and,
    unless ``allow_negative``, >= 0. Raises ConfigError naming the file, line and column
    of every bad row (at most 20), or the missing columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(field, f"no such file: {path}", "a CSV file " + ",".join(CSV_COLUMNS))], "tariff")
    problems: list[Problem] = []
    times: list[float] = []
    r: list[float] = []
    f: list[float] = []
    lines: list[int] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ConfigError([Problem(field, f"{path}: empty file", "a header " + ",".join(CSV_COLUMNS))], "tariff")
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        extra = [c for c in header if c not in CSV_COLUMNS]
        if missing or extra:
            what = "; ".join(x for x in (missing and f"missing column(s) {', '.join(missing)}",
                                          extra and f"unknown column(s) {', '.join(extra)}") if x)
            raise ConfigError([Problem(field, f"{path}:1: {what}", "the columns " + ",".join(CSV_COLUMNS))], "tariff")
        col = {c: header.index(c) for c in CSV_COLUMNS}
        for row in reader:
            n = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                problems.append(Problem(field, f"{path}:{n}: {len(row)} fields, the header has {len(header)}",
                                        ",".join(CSV_COLUMNS)))
                continue
            bad = False
            text = row[col["time"]].strip()
            try:
                t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
                if t.tzinfo is None:
                    raise ValueError
            except ValueError:
                problems.append(Problem(field, f"{path}:{n}, column time: {text!r} is not an ISO 8601 time with a "
                                        "UTC offset", "e.g. 2026-06-21T00:00:00-04:00"))
                bad = True
            prices = []
            for c in CSV_COLUMNS[1:]:
                text_p = row[col[c]].strip()
                try:
                    v = float(text_p)
                except ValueError:
                    v = math.nan
                if not math.isfinite(v) or (v < 0 and not allow_negative):
                    why = "is not a finite number" if not math.isfinite(v) else "is negative"
                    allowed = ("a finite price [USD/kWh]" if allow_negative else
                               "a finite price >= 0 [USD/kWh] (market.tariff.allow_negative_prices: true allows < 0)")
                    problems.append(Problem(field, f"{path}:{n}, column {c}: {text_p!r} {why}", allowed))
                    bad = True
                prices.append(v)
            if bad:
                continue
            ts = t.timestamp()
            if times and ts <= times[-1]:
                problems.append(Problem(field, f"{path}:{n}, column time: {text} is not after the time of line "
                                        f"{lines[-1]}", "strictly increasing times"))
                continue
            times.append(ts)
            r.append(prices[0])
            f.append(prices[1])
            lines.append(n)
    if not problems and len(times) < 2:
        problems.append(Problem(field, f"{path}: {len(times)} price row(s); the resolution needs two at least",
                                "two or more rows"))
    if problems:
        if len(problems) > 20:
            problems = [*problems[:20], Problem(field, f"{path}: and {len(problems) - 20} more bad row(s)")]
        raise ConfigError(problems, "tariff")
    t_s = np.asarray(times, dtype=float)
    gaps = np.diff(t_s)
    values, counts = np.unique(gaps, return_counts=True)
    resolution = float(values[np.argmax(counts)])  # the most common spacing (the smallest on a tie)
    end = np.r_[t_s[1:], t_s[-1] + resolution]
    end = np.minimum(end, t_s + resolution)  # a longer spacing is a gap, not a longer piece
    return PriceSeries(t_s, end, np.asarray(r, dtype=float), np.asarray(f, dtype=float),
                       np.asarray(lines, dtype=np.int64))


def interval_means(series: PriceSeries, t0_s: float, interval_s: float, n: int, *, path: str = "",
                   field: str = "market.tariff.path", tz: dt.tzinfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted mean retail and feed-in prices of intervals ``[t0 + k M, t0 + (k+1) M)``
    [s since the epoch], ``k < n``. An interval inside one piece gets its prices exactly,
    one over pieces of equal prices too. Raises ConfigError naming each stretch of the
    study no piece covers (as times in ``tz``, default UTC)."""
    a = t0_s + np.arange(n) * interval_s
    b = a + interval_s
    s, e = series.start_s, series.end_s
    # uncovered stretches of the study
    problems: list[Problem] = []
    tz = tz or dt.UTC

    def at(x: float) -> str:
        return dt.datetime.fromtimestamp(x, tz).isoformat()

    study_a, study_b = float(a[0]), float(b[-1])
    # what the pieces cover, as disjoint stretches: a piece starting after every
    # earlier one ended opens a new stretch
    reach = np.maximum.accumulate(e)
    new = np.r_[True, s[1:] > reach[:-1]]
    cov_a, cov_b = s[new], reach[np.r_[np.flatnonzero(new)[1:] - 1, len(s) - 1]]
    holes = [(max(x, study_a), min(y, study_b)) for x, y in zip(np.r_[-np.inf, cov_b], np.r_[cov_a, np.inf],
                                                                 strict=True)
             if max(x, study_a) < min(y, study_b)]
    for x, y in holes[:10]:
        problems.append(Problem(field, f"{path}: no price from {at(x)} to {at(y)}; the study runs from "
                                f"{at(study_a)} to {at(study_b)}",
                                "rows covering the whole study at the series' resolution"))
    if len(holes) > 10:
        problems.append(Problem(field, f"{path}: and {len(holes) - 10} more stretches without a price"))
    if problems:
        raise ConfigError(problems, "tariff")
    i0 = np.searchsorted(s, a, side="right") - 1  # the piece holding each interval's start
    i1 = np.searchsorted(s, b, side="left")  # first piece starting at or after its end
    count = i1 - i0
    # every (interval, piece) overlap, flattened: interval ``rep``, piece ``j``, ``w`` [s]
    rep = np.repeat(np.arange(n), count)
    first = np.cumsum(count) - count
    j = i0[rep] + (np.arange(len(rep)) - first[rep])
    w = np.minimum(e[j], b[rep]) - np.maximum(s[j], a[rep])
    out = []
    for v in (series.retail, series.feed_in):
        mean = np.bincount(rep, weights=v[j] * w, minlength=n) / interval_s
        one = (np.minimum.reduceat(v[j], first) == np.maximum.reduceat(v[j], first))
        out.append(np.where(one, v[i0], mean))  # one price over the interval: that price exactly
    return out[0], out[1]


def tou_series(periods: Sequence[TouPeriod], holidays: Sequence[dt.date], timezone: str,
               t0_s: float, t1_s: float) -> PriceSeries:
    """A TOU tariff as a piecewise-constant series over ``[t0_s, t1_s)`` [s since the
    epoch]: one piece per UTC quarter hour (a local hour never changes inside one)."""
    q0 = math.floor(t0_s / _TOU_BLOCK_S) * _TOU_BLOCK_S
    q1 = math.ceil(t1_s / _TOU_BLOCK_S) * _TOU_BLOCK_S
    start = np.arange(q0, q1, _TOU_BLOCK_S, dtype=float)
    local = pd.to_datetime(start, unit="s", utc=True).tz_convert(timezone)
    idx = tou_period_index(periods, holidays, local)
    retail = np.array([p.retail_usd_per_kwh for p in periods], dtype=float)[idx]
    feed_in = np.array([p.feed_in_usd_per_kwh for p in periods], dtype=float)[idx]
    return PriceSeries(start, start + _TOU_BLOCK_S, retail, feed_in, np.zeros(len(start), dtype=np.int64))


# ---- a study's tariff -------------------------------------------------------------------

def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path(base_dir) / p).resolve()


def build_tariff(cfg: StudyFile, base_dir: Path = Path(".")) -> Tariff:
    """The study's tariff per market interval. Raises ConfigError (the TOU periods'
    coverage, a bad CSV row, a gap, negative prices or feed-in above retail)."""
    m, s = cfg.market, cfg.study
    tc: TariffConfig = m.tariff
    tl = cfg.timeline
    n = tl.n_intervals
    if tc.kind == "flat":
        return Tariff.flat(m.retail_usd_per_kwh, m.feed_in_usd_per_kwh, n, tl.market_interval_s)
    start = pd.Timestamp(s.start)
    t0 = start.timestamp()
    if tc.kind == "tou":
        problems = tou_coverage_problems(tc.periods)
        if problems:
            raise ConfigError(problems, "tariff")
        try:
            series = tou_series(tc.periods, tc.holidays, cfg.site.timezone, t0, t0 + s.duration_s)
        except Exception as e:  # an unknown time zone name
            raise ConfigError([Problem("site.timezone", f"{cfg.site.timezone!r}: {e}",
                                       "an IANA time zone name, e.g. America/New_York")], "tariff") from None
        where = "market.tariff.periods"
        path = ""
    else:
        if tc.path is None:
            raise ConfigError([Problem("market.tariff.path", "a dynamic tariff needs its CSV file",
                                       "a CSV file " + ",".join(CSV_COLUMNS))], "tariff")
        p = _resolve(tc.path, base_dir)
        series = read_price_csv(p, allow_negative=tc.allow_negative_prices)
        where, path = "market.tariff.path", str(p)
    retail, feed_in = interval_means(series, t0, tl.market_interval_s, n, path=path, tz=start.tzinfo)
    problems = price_problems(retail, feed_in, allow_negative=tc.allow_negative_prices, field=where)
    if problems:
        raise ConfigError(problems, "tariff")
    return Tariff(tc.kind, retail, feed_in, tl.market_interval_s)


def price_problems(retail: np.ndarray, feed_in: np.ndarray, *, allow_negative: bool,
                   field: str) -> list[Problem]:
    """Prices per interval that break the rules: finite; >= 0 unless ``allow_negative``;
    feed-in below retail (the clearing's utility backstop buys at retail and sells at
    feed-in: feed-in at or above retail would let a prosumer buy from the grid to sell it
    back, and leaves the adaptive bidders no tariff span to learn in)."""
    problems = []

    def first(mask: np.ndarray) -> str:
        k = np.flatnonzero(mask)
        more = f" (and {len(k) - 5} more)" if len(k) > 5 else ""
        return ", ".join(str(int(i)) for i in k[:5]) + more

    bad = ~(np.isfinite(retail) & np.isfinite(feed_in))
    if bad.any():
        problems.append(Problem(field, f"prices not finite in intervals {first(bad)}", "finite prices [USD/kWh]"))
    if not allow_negative:
        neg = (retail < 0) | (feed_in < 0)
        if neg.any():
            problems.append(Problem(field, f"negative prices in intervals {first(neg)}",
                                    "prices >= 0, or market.tariff.allow_negative_prices: true"))
    above = feed_in >= retail
    if above.any():
        problems.append(Problem(field, f"feed-in not below retail in intervals {first(above)}",
                                "feed-in < retail in every interval"))
    return problems
