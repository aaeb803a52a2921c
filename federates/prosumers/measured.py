"""Measured load (and PV) series of named customers, read from a CSV or Parquet file and
resampled to the physics step (``prosumers.profiles``; README "Load profiles").

File layouts
    * ``long``: columns ``time``, ``customer``, one load column and optionally one PV
      column, one row per customer and interval;
    * ``wide``: ``time`` and one column per customer (its load); PV in columns named
      ``<pv_prefix><customer>`` or in a second wide file (``pv_path``).

    ``format: auto`` is long when the file has a ``customer`` column. CSV lines starting
    with ``#`` are comments; empty cells are missing values (gaps).

Units
    Load and PV columns are ``load`` / ``pv`` with a unit suffix (``load_kw``,
    ``load_w``, ``load_kwh``, ``load_wh``; ``pv_kw``, ...) or the unit stated by
    ``units`` (W, kW: the mean power over the interval; Wh, kWh: the energy of the
    interval). A column without a unit and no ``units``, an unknown suffix
    (``load_mw``) or a suffix that contradicts ``units`` is an error naming the column
    and the allowed ones. Wide files always need ``units``.

Time
    Timestamps with a UTC offset (or ``Z``) are taken as they are; naive timestamps need
    ``timezone`` (an IANA zone): a local time that does not exist (the hour skipped when
    DST starts) is an error, a repeated local time (the hour DST ends) is taken as
    summer time at its first occurrence per customer in file order and as standard time
    at its second, which is how a logger writes it. ``label``: a timestamp marks the
    start (default) or the end of its interval. The resolution is the most common step
    between consecutive timestamps; every timestamp must be on that grid. The file must
    cover the whole study period (no mapping by day of year: a study of another year
    needs a file of that year), else an error names what is missing.

Gaps
    A missing interval (a grid timestamp absent for a customer, or an empty value) is
    filled by ``gap_fill``: ``linear`` in time between the neighbouring values (the
    nearest value at the file's edges), ``previous`` value (the next one at the start),
    ``zero``, or ``error``. A gap longer than ``max_gap`` in the study period is an
    error. Per customer and series the count of missing intervals in the study and the
    longest gap are reported (:attr:`MeasuredSeries.gaps`; the run's
    ``results/profile_gaps.parquet``).

Values
    Negative loads are refused (net-metered data, import minus export, is not what a
    load column means here: give gross load and PV separately). Negative PV is refused
    too. Values are held as float64 mean power [kW] per source interval, for the study
    period (and a margin of ``max_gap`` plus one interval for the gap filling) only.

Resampling (:func:`interval_means`)
    Each source value is the mean power over its own interval; a physics step gets the
    mean of that piecewise-constant power over the step, for up- and downsampling
    alike, so the energy of every source interval is kept (to floating-point rounding).
    A step inside one source interval gets the source value itself, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from federates.common.csvfiles import leading_comment_lines
from federates.common.errors import ConfigError, Problem

#: unit suffix of a column name (lower case) -> unit
UNIT_SUFFIXES = {"w": "W", "kw": "kW", "wh": "Wh", "kwh": "kWh"}
#: unit -> (divisor to kW or kWh, is energy per interval): a division is correctly
#: rounded, so 2118 W gives the double nearest 2.118 kW, as the literal 2.118 does
_UNITS = {"W": (1000.0, False), "kW": (1.0, False), "Wh": (1000.0, True), "kWh": (1.0, True)}
_ALLOWED_UNITS = "W, kW, Wh, kWh"
_FIELD = "prosumers.profiles"


@dataclass(frozen=True)
class ProfileSpec:
    """What to read: the plain values of ``prosumers.profiles`` (config touched at the edge)."""

    path: Path
    format: str = "auto"
    units: str = "auto"
    timezone: str | None = None
    label: str = "start"
    pv_prefix: str = "pv_"
    pv_path: Path | None = None
    gap_fill: str = "linear"
    max_gap_s: float = 3600.0
    reuse: bool = False

    @classmethod
    def from_config(cls, c) -> ProfileSpec:
        return cls(path=Path(c.path), format=c.format, units=c.units, timezone=c.timezone, label=c.label,
                   pv_prefix=c.pv_prefix, pv_path=None if c.pv_path is None else Path(c.pv_path),
                   gap_fill=c.gap_fill, max_gap_s=float(c.max_gap_s), reuse=bool(c.reuse))


@dataclass(frozen=True)
class Gap:
    """Missing intervals of one customer's series in the study period: how many, the
    longest run [s] and its first missing interval's start (ISO 8601, UTC)."""

    customer: str
    series: str  # "load" | "pv"
    missing_intervals: int
    longest_gap_s: float
    longest_from: str


@dataclass
class Source:
    """Regular series of several customers: column j of ``kw`` is the mean power [kW] of
    ``customers[j]`` over ``[t0_ns + i*res_ns, t0_ns + (i+1)*res_ns)`` (UTC ns), gaps filled.
    ``peak_kw`` / ``mean_kw``: each customer's largest and mean value over the whole file."""

    customers: list[str]
    t0_ns: int
    res_ns: int
    kw: np.ndarray
    peak_kw: np.ndarray
    mean_kw: np.ndarray

    def column(self, name: str) -> int:
        return self.customers.index(name)


@dataclass
class MeasuredSeries:
    """The measured load (and PV) of the customers asked for, ready to resample."""

    customers: list[str]  # the customers asked for, in order (repeats allowed: reuse)
    load: Source
    pv: Source | None
    load_cols: np.ndarray  # column of load.kw of each customer
    pv_cols: np.ndarray  # column of pv.kw of each customer, -1: no PV in the file
    gaps: list[Gap]

    @property
    def has_pv(self) -> np.ndarray:
        """Whether each customer's PV comes from the file."""
        return self.pv_cols >= 0

    def pv_peak_kw(self) -> np.ndarray:
        """Each customer's largest PV value in the file [kW] (0 without PV in the file)."""
        if self.pv is None:
            return np.zeros(len(self.customers))
        return np.where(self.has_pv, self.pv.peak_kw[np.maximum(self.pv_cols, 0)], 0.0)

    def daily_load_kwh(self) -> np.ndarray:
        """Each customer's mean daily load [kWh] over the file's values."""
        return self.load.mean_kw[self.load_cols] * 24.0

    def block(self, edges_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean load and PV [kW], shape (steps, customers), of the steps between
        consecutive ``edges_ns`` (UTC ns); PV None without PV in the file (columns of
        customers without PV in the file are 0)."""
        load = interval_means(self.load.kw, self.load.t0_ns, self.load.res_ns, edges_ns)[:, self.load_cols]
        if self.pv is None:
            return load, None
        pv = interval_means(self.pv.kw, self.pv.t0_ns, self.pv.res_ns, edges_ns)
        pv = np.where(self.has_pv[None, :], pv[:, np.maximum(self.pv_cols, 0)], 0.0)
        return load, pv


# ---- resampling ------------------------------------------------------------------------
def interval_means(values: np.ndarray, t0_ns: int, res_ns: int, edges_ns: np.ndarray) -> np.ndarray:
    """Mean over each step ``[edges_ns[k], edges_ns[k+1])`` of the piecewise-constant
    series ``values`` (rows: intervals ``[t0_ns + i*res_ns, t0_ns + (i+1)*res_ns)``,
    columns: series), shape (len(edges_ns) - 1, columns).

    Energy-preserving: the step's energy is the integral of the source over the step
    (partial first and last intervals, whole ones between, by cumulative sums started
    at the block's first interval so they stay small); a step inside one source
    interval (or equal to one) gets that interval's value exactly."""
    values = np.asarray(values, dtype=float)
    edges = np.asarray(edges_ns, dtype=np.int64)
    n_src, n_col = values.shape
    off = edges - np.int64(t0_ns)
    if len(edges) < 2:
        return np.zeros((0, n_col))
    if off[0] < 0 or off[-1] > np.int64(res_ns) * n_src or (np.diff(edges) <= 0).any():
        raise ValueError("steps outside the source series or not increasing")
    i = off // res_ns
    f = off - i * res_ns  # [ns] into interval i
    ia, fa, ib, fb = i[:-1], f[:-1], i[1:], f[1:]
    v = np.vstack([values, np.zeros((1, n_col))])  # an edge at the very end: interval n_src, weight 0
    lo, hi = int(ia.min()), int(ib.max()) + 1
    res_s = res_ns / 1e9
    cum = np.zeros((hi - lo + 1, n_col))
    np.cumsum(v[lo:hi] * res_s, axis=0, out=cum[1:])  # energy [kW s] from the start of interval lo
    energy = (cum[ib - lo] - cum[ia - lo]) + v[ib] * (fb / 1e9)[:, None] - v[ia] * (fa / 1e9)[:, None]
    out = energy / (np.diff(edges) / 1e9)[:, None]
    inside = (ia == ib) | ((fb == 0) & (ib == ia + 1))  # the step lies in interval ia
    out[inside] = v[ia[inside]]
    return out


# ---- reading ---------------------------------------------------------------------------
def _fail(path: Path, problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(problems[:20] + ([Problem("...", f"and {len(problems) - 20} more")]
                                           if len(problems) > 20 else []), str(path))


def _where(first_line: int | None, row: int) -> str:
    """A data row's place in its file: CSV line (``first_line``: the line of row 0) or
    Parquet row (1-based; ``first_line`` None)."""
    return f"line {first_line + row}" if first_line is not None else f"row {row + 1}"


def _read_frame(path: Path, customers: list[str] | None = None) -> tuple[pd.DataFrame, int | None]:
    """The file's rows and the line of the first data row (CSV; None for Parquet). CSV:
    ``#`` lines before the header are comments; time and customer are read as
    categories (each distinct text parsed once); blank lines keep their place as
    all-empty rows (dropped by the caller), so a row's index gives its line. A long
    Parquet file is read for ``customers`` only, when given (pyarrow filters; its row
    numbers are then those of the rows read: the whole file was checked by
    ``prepare_run`` already)."""
    try:
        if path.suffix.lower() == ".csv":
            lead = leading_comment_lines(path)
            head = pd.read_csv(path, nrows=0, skiprows=lead)
            dtypes = {c: "category" for c in head.columns if str(c).lower() in ("time", "customer")}
            df = pd.read_csv(path, dtype=dtypes, skiprows=lead, skip_blank_lines=False)
            return df, lead + 2
        if customers is not None:
            import pyarrow.parquet as pq

            names = {str(c).lower(): c for c in pq.read_schema(path).names}
            if "customer" in names:
                return pd.read_parquet(path, filters=[(names["customer"], "in", sorted(set(customers)))]), None
        return pd.read_parquet(path), None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(_FIELD, f"cannot be read: {' '.join(str(e).split())[:300]}",
                                   "a CSV file with a header line, or a Parquet file")], str(path)) from None


def _unit_of(path: Path, column: str, base: str, units: str) -> str:
    name = column.lower()
    if name == base:
        if units == "auto":
            _fail(path, [Problem(f"column {column}", "names no unit and prosumers.profiles.units is auto",
                                 f"{base}_kw, {base}_w, {base}_kwh, {base}_wh, or prosumers.profiles.units: "
                                 f"{_ALLOWED_UNITS}")])
        return units
    unit = UNIT_SUFFIXES.get(name[len(base) + 1:])
    if unit is None:
        _fail(path, [Problem(f"column {column}", f"unknown unit {name[len(base) + 1:]!r}",
                             f"{base}_kw, {base}_w, {base}_kwh, {base}_wh ({_ALLOWED_UNITS})")])
    if units not in ("auto", unit):
        _fail(path, [Problem(f"column {column}", f"is in {unit}, but prosumers.profiles.units is {units}",
                             "the same unit in both, or units: auto")])
    return unit


def _numbers(path: Path, df: pd.DataFrame, column: str, at: int | None, what: str) -> np.ndarray:
    """Column ``column`` as float64; an entry that is no number, inf or negative is an error."""
    raw = df[column]
    problems = []
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        x = raw.to_numpy(dtype=float, na_value=np.nan)
    else:  # some entry is no number: find them
        text = raw.astype("string").str.strip()
        x = pd.to_numeric(text.replace("", pd.NA), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = np.isnan(x) & text.notna().to_numpy() & (text != "").fillna(False).to_numpy()
        for r in np.flatnonzero(bad)[:5]:
            problems.append(Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                                    f"{raw.iloc[r]!r} is not a number", f"a {what} value, or empty for a gap"))
    neg = np.flatnonzero(np.isinf(x) | (x < 0))
    for r in neg[:5]:
        problems.append(Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                                f"{x[r]:g} is {'not finite' if np.isinf(x[r]) else 'negative'}",
                                f"a finite {what} >= 0 (gross load and PV, not net metering data)"))
    _fail(path, problems)
    return x


_OFFSET = r"(?:[Zz]|[+-]\d\d:?\d\d)$"


def _times_ns(path: Path, df: pd.DataFrame, column: str, groups: np.ndarray, tz: str | None,
              at: int | None) -> np.ndarray:
    """UTC ns of each row's timestamp (see the module docstring for naive times);
    ``groups``: the customer code of each row (ambiguous local times are resolved in file
    order per customer)."""
    col = df[column]
    if pd.api.types.is_datetime64_any_dtype(col.dtype):  # Parquet timestamps
        t = pd.DatetimeIndex(col)
        if t.tz is not None:
            return t.tz_convert("UTC").as_unit("ns").asi8.copy()
        strings = None
        cats, codes = t.unique(), None
    else:
        cat = col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col
        strings = pd.Series(cat.cat.categories.astype(str)).str.strip()
        codes = cat.cat.codes.to_numpy()
        missing = np.flatnonzero(codes < 0)
        if len(missing):
            _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}", "no timestamp",
                                 "an ISO 8601 time") for r in missing[:5]])
        aware = strings.str.contains(_OFFSET, regex=True).to_numpy()
        bad = np.flatnonzero(pd.to_datetime(strings, format="ISO8601", errors="coerce", utc=True).isna().to_numpy()[codes])
        if len(bad):
            _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                                 f"{col.iloc[r]!r} is not a timestamp", "ISO 8601, e.g. 2026-06-21T00:15:00-04:00")
                         for r in bad[:5]])
        if aware.any() and not aware.all():
            r = int(np.flatnonzero(~aware[codes] if aware.sum() > len(aware) / 2 else aware[codes])[0])
            _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                                 f"{col.iloc[r]!r} mixes timestamps with and without a UTC offset",
                                 "every timestamp with an offset, or none (with prosumers.profiles.timezone)")])
        parsed = pd.to_datetime(strings, format="ISO8601", errors="coerce", utc=bool(aware.all()))
        bad = np.flatnonzero(parsed.isna().to_numpy()[codes])
        if len(bad):
            _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                                 f"{col.iloc[r]!r} is not a timestamp", "ISO 8601, e.g. 2026-06-21T00:15:00-04:00")
                         for r in bad[:5]])
        if aware.all():
            return pd.DatetimeIndex(parsed).as_unit("ns").asi8[codes]
        cats = pd.DatetimeIndex(parsed)
    if tz is None:
        r = 0
        _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                             f"{col.iloc[r]!r} has no UTC offset and prosumers.profiles.timezone is not set",
                             "timestamps with a UTC offset, or prosumers.profiles.timezone (e.g. Europe/Berlin)")])
    if codes is None:  # naive Parquet timestamps: codes of their unique values
        codes = pd.Index(cats).get_indexer(pd.DatetimeIndex(col))
    dst = cats.tz_localize(tz, ambiguous=np.ones(len(cats), dtype=bool), nonexistent="NaT")
    std = cats.tz_localize(tz, ambiguous=np.zeros(len(cats), dtype=bool), nonexistent="NaT")
    skipped = np.flatnonzero(np.asarray(dst.isna())[codes])
    if len(skipped):
        _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                             f"{col.iloc[r]!r} does not exist in {tz} (skipped when DST starts)",
                             "local times that exist, or timestamps with a UTC offset") for r in skipped[:5]])
    d_ns, s_ns = dst.as_unit("ns").asi8, std.as_unit("ns").asi8
    out = s_ns[codes].copy()
    amb = np.flatnonzero(d_ns[codes] != s_ns[codes])
    if len(amb):  # first occurrence per customer: summer time, second: standard time
        key = pd.DataFrame({"g": groups[amb], "c": codes[amb]})
        nth = key.groupby(["g", "c"], sort=False).cumcount().to_numpy()
        out[amb] = np.where(nth == 0, d_ns[codes[amb]], s_ns[codes[amb]])
        again = np.flatnonzero(nth >= 2)
        _fail(path, [Problem(f"{_where(at, int(df.index[amb[r]]))}, column {column}",
                             f"{col.iloc[amb[r]]!r} appears a third time for one customer",
                             "a repeated local time at most twice (the hour DST ends)") for r in again[:5]])
    return out


def _grid(path: Path, t_ns: np.ndarray, df: pd.DataFrame, at: int | None, column: str) -> tuple[int, int, int]:
    """(first timestamp, resolution, number of grid intervals) [ns]; error for a timestamp off the grid."""
    uniq = np.sort(pd.unique(t_ns))  # hashing, then sorting the few distinct times
    if len(uniq) < 2:
        _fail(path, [Problem(f"column {column}", "needs at least two different timestamps to tell the resolution",
                             "a series of at least two intervals")])
    d = np.diff(uniq)
    vals, counts = np.unique(d, return_counts=True)
    res = int(vals[np.argmax(counts)])
    off = (t_ns - uniq[0]) % res
    bad = np.flatnonzero(off != 0)
    if len(bad):
        r = int(bad[0])
        _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {column}",
                             f"{df[column].iloc[r]!r} is off the file's {res / 1e9:g} s grid starting at "
                             f"{pd.Timestamp(int(uniq[0]), tz='UTC').isoformat()}",
                             "timestamps on one regular grid (missing ones are gaps)")])
    return int(uniq[0]), res, int((uniq[-1] - uniq[0]) // res) + 1


@dataclass
class _Table:
    """One file's series on its grid: customers, grid, rows placed in the kept window."""

    names: list[str]
    t0_ns: int
    res_ns: int
    n_grid: int
    kw: dict[str, np.ndarray]  # series -> (window intervals, customers) [kW], NaN = gap
    lo: int  # first grid interval kept
    peak_kw: dict[str, np.ndarray]
    mean_kw: dict[str, np.ndarray]


def _read_table(path: Path, spec: ProfileSpec, start_ns: int, end_ns: int, wide_pv: bool,
                customers: list[str] | None = None) -> _Table:
    """Read one file (``wide_pv``: the wide PV file of ``pv_path``; ``customers``: the
    ones needed, None: all)."""
    df, at = _read_frame(path, customers)
    df = df.dropna(how="all") if at is not None else df
    cols = {c.lower(): c for c in df.columns}
    fmt = spec.format if not wide_pv else "wide"
    if fmt == "auto":
        fmt = "long" if "customer" in cols else "wide"
    if "time" not in cols:
        _fail(path, [Problem("columns", f"no time column (has {', '.join(map(str, df.columns[:8]))})",
                             "time, customer, load_kw [, pv_kw] (long) or time, <customer>... (wide)")])
    tcol = cols["time"]
    # series -> (customer of each row, or which columns a wide file has; values; unit; column)
    series: dict[str, tuple[np.ndarray, np.ndarray, str, str | None]] = {}
    if fmt == "long":
        if "customer" not in cols:
            _fail(path, [Problem("columns", "the long format needs a customer column", "time, customer, load_kw [, pv_kw]")])
        ccol = cols["customer"]
        cust = df[ccol].astype("category") if not isinstance(df[ccol].dtype, pd.CategoricalDtype) else df[ccol]
        codes = cust.cat.codes.to_numpy()
        if (codes < 0).any():
            r = int(np.flatnonzero(codes < 0)[0])
            _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {ccol}", "no customer name", "a name")])
        # customers in order of first appearance (O(rows), no sort)
        k = len(cust.cat.categories)
        first_row = np.full(k, len(codes), dtype=np.int64)
        np.minimum.at(first_row, codes, np.arange(len(codes), dtype=np.int64))
        first = np.flatnonzero(first_row < len(codes))
        first = first[np.argsort(first_row[first], kind="stable")]
        names = [str(cust.cat.categories[c]).strip() for c in first]
        remap = np.full(k, -1, dtype=np.int64)
        remap[first] = np.arange(len(first))
        codes = remap[codes]
        value_cols = {}
        problems = []
        for name in df.columns:
            low = name.lower()
            if name in (tcol, ccol):
                continue
            base = "load" if low == "load" or low.startswith("load_") else \
                "pv" if low == "pv" or low.startswith("pv_") else None
            if base is None:
                problems.append(Problem(f"column {name}", "unknown column",
                                        "time, customer, load[_kw|_w|_kwh|_wh], pv[_kw|_w|_kwh|_wh]"))
            elif base in value_cols:
                problems.append(Problem(f"column {name}", f"a second {base} column (first: {value_cols[base]})",
                                        f"one {base} column"))
            else:
                value_cols[base] = name
        if "load" not in value_cols:
            problems.append(Problem("columns", "no load column", "load_kw, load_w, load_kwh or load_wh"))
        _fail(path, problems)
        for base, name in value_cols.items():
            unit = _unit_of(path, name, base, spec.units)
            series[base] = (codes, _numbers(path, df, name, at, base), unit, name)
    else:
        if spec.units == "auto":
            _fail(path, [Problem("prosumers.profiles.units", "a wide file's customer columns carry no unit",
                                 _ALLOWED_UNITS)])
        others = [c for c in df.columns if c != tcol]
        pre = spec.pv_prefix
        pv_cols = [] if wide_pv else [c for c in others if pre and str(c).startswith(pre)]
        load_cols = [c for c in others if c not in pv_cols]
        if wide_pv:
            load_cols = []
            pv_cols = others
        names = list(dict.fromkeys(
            [str(c).strip() for c in load_cols] +
            [str(c)[len(pre):].strip() if str(c).startswith(pre) and pre else str(c).strip() for c in pv_cols]))
        codes = np.zeros(len(df), dtype=np.int64)
        for base, group in (("load", load_cols), ("pv", pv_cols)):
            if not group:
                continue
            vals = np.full((len(df), len(names)), np.nan)
            present = np.zeros(len(names), dtype=bool)
            for c in group:
                nm = str(c)[len(pre):].strip() if base == "pv" and pre and str(c).startswith(pre) else str(c).strip()
                j = names.index(nm)
                vals[:, j] = _numbers(path, df, c, at, base)
                present[j] = True
            series[base] = (present, vals, spec.units, None)
        if not load_cols and not wide_pv:
            _fail(path, [Problem("columns", "no customer column", "time and one column per customer")])
    t_ns = _times_ns(path, df, tcol, codes, spec.timezone, at)
    t0, res, n_grid = _grid(path, t_ns, df, at, tcol)
    if spec.label == "end":
        t0 -= res
        t_ns = t_ns - res
    gi = (t_ns - t0) // res
    _check_cover(path, t0, res, n_grid, start_ns, end_ns)
    margin = int(np.ceil((spec.max_gap_s * 1e9 + res) / res))
    lo = max(0, (start_ns - t0) // res - margin)
    hi = min(n_grid, -((t0 - end_ns) // res) + margin)
    kw, peak, mean = {}, {}, {}
    for base, (who, vals, unit, _colname) in series.items():
        divisor, energy = _UNITS[unit]
        divisor = divisor * (res / 3.6e12) if energy else divisor  # energy per interval -> mean kW
        win = np.full((hi - lo, len(names)), np.nan)
        keep = np.flatnonzero((gi >= lo) & (gi < hi))
        cell = (gi[keep] - lo) * (len(names) if fmt == "long" else 1) + (who[keep] if fmt == "long" else 0)
        twice = np.flatnonzero(np.bincount(cell) > 1)
        if len(twice):  # a row given twice in the study period (and its margin)
            r = int(keep[np.flatnonzero(cell == twice[0])[1]])
            whom = f" for customer {names[who[r]]!r}" if fmt == "long" else ""
            _fail(path, [Problem(f"{_where(at, int(df.index[r]))}, column {tcol}",
                                 f"{df[tcol].iloc[r]!r} is given twice{whom}", "one row per customer and interval")])
        if fmt == "long":
            win[gi[keep] - lo, who[keep]] = vals[keep] / divisor
            ok = ~np.isnan(vals)
            count = np.bincount(who[ok], minlength=len(names))
            total = np.bincount(who[ok], weights=vals[ok], minlength=len(names))
            top = np.full(len(names), -np.inf)
            np.maximum.at(top, who[ok], vals[ok])
        else:
            win[gi[keep] - lo] = vals[keep] / divisor
            ok = ~np.isnan(vals)
            count = np.where(who, ok.sum(axis=0), 0)
            total = np.where(ok, vals, 0.0).sum(axis=0)
            top = np.where(ok, vals, -np.inf).max(axis=0, initial=-np.inf)
        # a customer without a single value has no such series in the file (NaN)
        peak[base] = np.where(count > 0, top / divisor, np.nan)
        mean[base] = np.where(count > 0, total / np.maximum(count, 1) / divisor, np.nan)
        if fmt == "wide":
            win[:, ~who] = np.nan
        kw[base] = win
    return _Table(names=names, t0_ns=t0, res_ns=res, n_grid=n_grid, kw=kw, lo=int(lo), peak_kw=peak,
                  mean_kw=mean)


def _iso(t_ns: int) -> str:
    return pd.Timestamp(int(t_ns), tz="UTC").isoformat()


def _check_cover(path: Path, t0: int, res: int, n_grid: int, start_ns: int, end_ns: int) -> None:
    t1 = t0 + res * n_grid
    if t0 <= start_ns and end_ns <= t1:
        return
    missing = []
    if start_ns < t0:
        missing.append(f"{_iso(start_ns)} to {_iso(min(t0, end_ns))}")
    if end_ns > t1:
        missing.append(f"{_iso(max(t1, start_ns))} to {_iso(end_ns)}")
    _fail(path, [Problem("time", f"covers {_iso(t0)} to {_iso(t1)}, but the study runs {_iso(start_ns)} to "
                                 f"{_iso(end_ns)}: missing {' and '.join(missing)}",
                         "a file covering the whole study period (study.start, study.duration)")])


def _fill(path: Path, spec: ProfileSpec, table: _Table, base: str, start_ns: int, end_ns: int,
          wanted: list[int]) -> tuple[np.ndarray, list[Gap]]:
    """The kept window of series ``base`` with its gaps filled (columns ``wanted``), and
    the gaps of the study period."""
    win = table.kw[base][:, wanted]
    res, t0w = table.res_ns, table.t0_ns + table.lo * table.res_ns
    s_lo = (start_ns - t0w) // res  # study intervals in window rows
    s_hi = -((t0w - end_ns) // res)
    gaps, problems = [], []
    idx = np.arange(len(win))
    for j, c in enumerate(wanted):
        x = win[:, j]
        nan = np.isnan(x)
        if not nan[s_lo:s_hi].any():
            continue
        d = np.diff(np.concatenate([[0], nan.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        hit = (ends > s_lo) & (starts < s_hi)
        starts, ends = starts[hit], ends[hit]
        lengths = ends - starts
        k = int(np.argmax(lengths))
        name = table.names[c]
        gaps.append(Gap(customer=name, series=base, missing_intervals=int(nan[s_lo:s_hi].sum()),
                        longest_gap_s=float(lengths[k] * res / 1e9), longest_from=_iso(t0w + starts[k] * res)))
        if spec.gap_fill == "error":
            problems.append(Problem(f"customer {name}, {base}",
                                    f"{int(nan[s_lo:s_hi].sum())} missing interval(s) from {_iso(t0w + starts[0] * res)}",
                                    "no gaps, or prosumers.profiles.gap_fill: linear, previous or zero"))
            continue
        long_ = np.flatnonzero(lengths * res / 1e9 > spec.max_gap_s)
        for q in long_[:3]:
            problems.append(Problem(f"customer {name}, {base}",
                                    f"a gap of {lengths[q] * res / 1e9:g} s from {_iso(t0w + starts[q] * res)}",
                                    f"gaps up to prosumers.profiles.max_gap = {spec.max_gap_s:g} s"))
        if len(long_):
            continue
        if nan.all():
            problems.append(Problem(f"customer {name}, {base}", "has no value near the study period", "values"))
            continue
        ok = ~nan
        if spec.gap_fill == "linear":
            x[nan] = np.interp(idx[nan], idx[ok], x[ok])
        elif spec.gap_fill == "previous":
            last = np.maximum.accumulate(np.where(ok, idx, -1))
            nxt = np.flatnonzero(ok)[0]
            x[nan] = x[np.where(last >= 0, last, nxt)][nan]
        else:
            x[nan] = 0.0
        win[:, j] = x
    _fail(path, problems)
    return win, gaps


def read_measured(spec: ProfileSpec, start_ns: int, end_ns: int, customers: list[str] | None = None,
                  count: int | None = None, *, skip_others: bool = False) -> MeasuredSeries:
    """The measured series of ``customers`` for the study period ``[start_ns, end_ns)``
    (UTC ns). ``customers`` None: the first ``count`` customers of the file in file order
    (every customer with ``count`` None); fewer than ``count`` is an error unless
    ``spec.reuse`` (then they are used again, in order). ConfigError naming the file,
    line and column of what is wrong (module docstring). ``skip_others``: a long Parquet
    file's other customers are not read at all (a prosumer federate's part, once
    ``prepare_run`` has checked the whole file: row numbers in errors are then those of
    the rows read)."""
    table = _read_table(spec.path, spec, start_ns, end_ns, wide_pv=False,
                        customers=customers if skip_others else None)
    pv_table = table if "pv" in table.kw else None
    if spec.pv_path is not None:
        pv_table = _read_table(spec.pv_path, spec, start_ns, end_ns, wide_pv=True)
    load_names = [n for j, n in enumerate(table.names) if "load" in table.kw and _has(table, "load", j)]
    if customers is None and count is not None:
        if len(load_names) < count and not spec.reuse:
            _fail(spec.path, [Problem("prosumers.profiles.reuse", f"the file has {len(load_names)} load series "
                                      f"for {count} prosumers", "as many series as prosumers.count, a sites file "
                                      "naming the customers, or reuse: true to use them again in order")])
        customers = [load_names[j % len(load_names)] for j in range(count)] if load_names else []
    elif customers is None:
        customers = load_names
    missing = [c for c in dict.fromkeys(customers) if c not in load_names]
    if missing:
        _fail(spec.path, [Problem("customer", f"no load series for {', '.join(missing[:10])}"
                                  + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
                                  f"customers of the file: {', '.join(load_names[:10])}"
                                  + (" ..." if len(load_names) > 10 else ""))])
    uniq = list(dict.fromkeys(customers))
    cols = [table.names.index(c) for c in uniq]
    load_kw, gaps = _fill(spec.path, spec, table, "load", start_ns, end_ns, cols)
    load = Source(customers=uniq, t0_ns=table.t0_ns + table.lo * table.res_ns, res_ns=table.res_ns, kw=load_kw,
                  peak_kw=table.peak_kw["load"][cols], mean_kw=table.mean_kw["load"][cols])
    pv, pv_cols = None, np.full(len(customers), -1, dtype=np.int64)
    if pv_table is not None:
        pv_uniq = [c for c in uniq if c in pv_table.names and _has(pv_table, "pv", pv_table.names.index(c))]
        if pv_uniq:
            pcols = [pv_table.names.index(c) for c in pv_uniq]
            pv_kw, pv_gaps = _fill(spec.pv_path or spec.path, spec, pv_table, "pv", start_ns, end_ns, pcols)
            gaps += pv_gaps
            pv = Source(customers=pv_uniq, t0_ns=pv_table.t0_ns + pv_table.lo * pv_table.res_ns,
                        res_ns=pv_table.res_ns, kw=pv_kw, peak_kw=pv_table.peak_kw["pv"][pcols],
                        mean_kw=pv_table.mean_kw["pv"][pcols])
            pv_cols = np.array([pv_uniq.index(c) if c in pv_uniq else -1 for c in customers], dtype=np.int64)
    return MeasuredSeries(customers=list(customers), load=load, pv=pv,
                          load_cols=np.array([uniq.index(c) for c in customers], dtype=np.int64),
                          pv_cols=pv_cols, gaps=gaps)


def _has(table: _Table, base: str, j: int) -> bool:
    """Whether customer ``j`` of ``table`` has a ``base`` series at all (a wide column, or
    at least one value in a long file)."""
    peak = table.peak_kw.get(base)
    return peak is not None and not np.isnan(peak[j])


def study_span_ns(start: str, duration_s: float) -> tuple[int, int]:
    """The study period [UTC ns] from ``study.start`` (ISO with offset) and its duration [s]."""
    t0 = pd.Timestamp(start).value
    return int(t0), int(t0 + round(duration_s * 1e9))


def gaps_frame(gaps: list[Gap]) -> pd.DataFrame:
    """The ``profile_gaps`` table: one row per customer and series with a gap in the study."""
    cols = ["customer", "series", "missing_intervals", "longest_gap_s", "longest_from"]
    df = pd.DataFrame([vars(g) for g in gaps], columns=cols)
    return df.astype({"missing_intervals": "int64", "longest_gap_s": "float64"})
