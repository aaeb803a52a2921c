"""The ``monthly`` table: a run's energy, bills and violations per calendar month.

One row per calendar month of the study in the site's local time zone
(``site.timezone``; the UTC offset of ``study.start`` if that is no time zone name),
written after the run with the summary (``results/monthly.parquet``) and shown in the
report's "Months" section. A market interval belongs to the month in which it starts
(local time), and so do its physics steps and its settlements: each month's values are
sums over whole intervals, so the months add up to the study (a partial first or last
month is labelled with the days it covers).

Every column is a KPI of ``runner.kpis`` (:data:`MONTHLY_KPIS`), computed with its one
definition over the month's intervals:

- from the kpis table (``results/kpis.parquet``, one row per interval): the study KPIs'
  own ``total`` applied to the month's rows (peer-traded energy, grid import / export,
  losses, violation minutes, voltage extremes, unconverged steps);
- from the tables, read in chunks of whole market intervals
  (:func:`runner.run_folder.interval_chunks`, never whole): per interval, the energy of
  ``profiles`` (load, PV, battery), the curtailed energy by cause
  (``curtailment_energy``) and the customer-minutes outside the voltage band
  (``voltages``), summed per month; the bills: ``runner.kpis.bill_sums`` of the month's
  settlements (per prosumer, summed over chunks as the report does), then totalled.

Memory: the kpis table, one chunk of each table and per-interval sums (a year at 15-min
intervals: 35,136 rows) -- not the study's rows.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from federates.common.limits import Limit
from runner.kpis import (
    BASELINE_BILL,
    BATTERY_CHARGE,
    BATTERY_DISCHARGE,
    BILL,
    BILL_PAID,
    BILL_PART_TOTALS,
    BILL_PARTS,
    BILL_RECEIVED,
    BILL_SAVING,
    CURTAILED_ALL_CAUSES,
    CURTAILED_BY_CAUSE,
    CURTAILMENT_CAUSES,
    ENERGY_TRADED,
    GRID_EXPORT,
    GRID_IMPORT,
    LIMIT_VIOLATIONS,
    LOAD,
    LOSSES,
    PV_AVAILABLE,
    UNCONVERGED,
    V_MAX,
    V_MIN,
    VIOLATION_MIN_AFTER,
    VIOLATION_MIN_BEFORE,
    VOLTAGE_OVER,
    VOLTAGE_UNDER,
    Kpi,
    bill_sums,
    bills,
    kpis_of,
)
from runner.run_folder import CHUNK_ROWS, RESULTS, RunFolder, interval_chunks, run_tariff

if TYPE_CHECKING:
    from federates.common.config import StudyFile

MONTHLY_FILE = Path(RESULTS) / "monthly.parquet"

#: the tables and columns the monthly table reads in chunks (besides the kpis table)
MONTHLY_COLUMNS: dict[str, list[str]] = {
    "profiles": ["step", "load_kw", "pv_kw", "battery_kw"],
    "voltages": ["step", "v_pu"],
    "curtailment_energy": ["step", "limit", "energy_kwh"],
    "settlements": ["interval", "participant", "metered_kwh", "net_cost_usd", *(c for c, _ in BILL_PARTS)],
}

#: the monthly KPIs taken from the kpis table, by their own ``total``
FROM_KPIS: tuple[Kpi, ...] = (GRID_IMPORT, GRID_EXPORT, LOSSES, ENERGY_TRADED, VIOLATION_MIN_BEFORE,
                              VIOLATION_MIN_AFTER, V_MIN, V_MAX, *LIMIT_VIOLATIONS, UNCONVERGED)
ENERGY_KPIS: tuple[Kpi, ...] = (LOAD, PV_AVAILABLE, GRID_IMPORT, GRID_EXPORT, BATTERY_CHARGE, BATTERY_DISCHARGE,
                                LOSSES, ENERGY_TRADED)
BILL_KPIS: tuple[Kpi, ...] = (BILL, BILL_PAID, BILL_RECEIVED, *BILL_PART_TOTALS, BASELINE_BILL, BILL_SAVING)
VIOLATION_KPIS: tuple[Kpi, ...] = (VIOLATION_MIN_BEFORE, VIOLATION_MIN_AFTER, VOLTAGE_OVER, VOLTAGE_UNDER,
                                   V_MIN, V_MAX, *LIMIT_VIOLATIONS, UNCONVERGED)
CURTAILMENT_KPIS: tuple[Kpi, ...] = (CURTAILED_ALL_CAUSES, *CURTAILED_BY_CAUSE)
#: the monthly table's KPI columns, in order (after :data:`MONTH_COLUMNS`)
MONTHLY_KPIS: tuple[Kpi, ...] = (*ENERGY_KPIS, *BILL_KPIS, *VIOLATION_KPIS, *CURTAILMENT_KPIS)
#: the columns naming the month
MONTH_COLUMNS = ("month", "label", "start", "end", "days", "full", "intervals")
#: the per-interval sums read from the tables
_SUMMED: tuple[Kpi, ...] = (LOAD, PV_AVAILABLE, BATTERY_CHARGE, BATTERY_DISCHARGE, VOLTAGE_OVER, VOLTAGE_UNDER,
                            CURTAILED_ALL_CAUSES, *CURTAILED_BY_CAUSE)
_TABLE_OF = {LOAD.key: "profiles", PV_AVAILABLE.key: "profiles", BATTERY_CHARGE.key: "profiles",
             BATTERY_DISCHARGE.key: "profiles", VOLTAGE_OVER.key: "voltages", VOLTAGE_UNDER.key: "voltages",
             **{kpi.key: "curtailment_energy" for kpi in (CURTAILED_ALL_CAUSES, *CURTAILED_BY_CAUSE)}}


def local_zone(cfg: StudyFile):
    """The site's time zone (``site.timezone``), else the UTC offset of ``study.start``."""
    try:
        return zoneinfo.ZoneInfo(cfg.site.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return pd.Timestamp(cfg.study.start).tzinfo


def interval_months(cfg: StudyFile) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Per market interval: its month (``year * 12 + month - 1`` of its local start)
    and its local start time."""
    tl = cfg.timeline
    start = pd.Timestamp(cfg.study.start)
    t = start + pd.to_timedelta(np.arange(tl.n_intervals, dtype=np.int64) * tl.market_interval_s, unit="s")
    local = pd.DatetimeIndex(t).tz_convert(local_zone(cfg))
    return (local.year * 12 + local.month - 1).to_numpy(dtype=np.int64), local


def _per_interval(k: np.ndarray, x, intervals: np.ndarray) -> np.ndarray:
    """Sums of ``x`` per interval ``k`` over the consecutive ``intervals`` (rows of other
    intervals, beyond the study, are left out)."""
    if not len(intervals):
        return np.zeros(0)
    k0, n = int(intervals[0]), len(intervals)
    x = np.asarray(x, dtype=float)
    inside = (k >= k0) & (k < k0 + n)
    if not inside.all():
        k, x = k[inside], x[inside]
    return np.bincount(k - k0, weights=x, minlength=n)[:n]


def interval_sums(cfg: StudyFile, t: Mapping[str, pd.DataFrame], intervals: np.ndarray) -> pd.DataFrame:
    """Per market interval of ``intervals`` (index), the monthly KPIs read from the
    tables ``t`` (whole tables or one chunk of :func:`interval_chunks`): energy of
    ``profiles``, curtailed energy by cause, customer-minutes outside the voltage band;
    NaN where the run lacks the table."""
    tl = cfg.timeline
    spi, step_h, step_min = tl.steps_per_interval, tl.step_h, tl.physics_step_s / 60.0
    intervals = np.asarray(intervals, dtype=np.int64)
    if len(intervals) and not (np.diff(intervals) == 1).all():
        raise ValueError("interval_sums needs consecutive intervals")
    out = pd.DataFrame({kpi.key: np.nan for kpi in _SUMMED}, index=intervals)
    pr = t.get("profiles")
    if pr is not None:
        k = pr["step"].to_numpy() // spi
        b = pr["battery_kw"].to_numpy(dtype=float)
        for kpi, x in ((LOAD, pr["load_kw"].to_numpy(dtype=float)), (PV_AVAILABLE, pr["pv_kw"].to_numpy(dtype=float)),
                       (BATTERY_CHARGE, np.clip(b, 0, None)), (BATTERY_DISCHARGE, np.clip(-b, 0, None))):
            out[kpi.key] = _per_interval(k, x * step_h, intervals)
    v = t.get("voltages")
    if v is not None:
        k = v["step"].to_numpy() // spi
        x = v["v_pu"].to_numpy(dtype=float)
        out[VOLTAGE_OVER.key] = _per_interval(k, (x > cfg.limits.v_max_pu) * step_min, intervals)
        out[VOLTAGE_UNDER.key] = _per_interval(k, (x < cfg.limits.v_min_pu) * step_min, intervals)
    ce = t.get("curtailment_energy")
    if ce is not None:
        k = ce["step"].to_numpy() // spi
        e = ce["energy_kwh"].to_numpy(dtype=float)
        cause = ce["limit"].astype(str).to_numpy()
        pv = cause != str(Limit.LOAD_LIMIT)  # unserved load (load limits) is no PV energy
        out[CURTAILED_ALL_CAUSES.key] = _per_interval(k[pv], e[pv], intervals)
        for c, kpi in zip(CURTAILMENT_CAUSES, CURTAILED_BY_CAUSE, strict=True):
            sel = cause == str(c)
            out[kpi.key] = _per_interval(k[sel], e[sel], intervals)
    return out


def bill_totals(sums: pd.DataFrame | None) -> dict[str, float]:
    """The bill KPIs of a period from its per-prosumer ``runner.kpis.bill_sums``
    (None: no settlements, NaN)."""
    if sums is None:
        return {kpi.key: np.nan for kpi in BILL_KPIS}
    b = bills(sums)
    net = b["net_cost_usd"].to_numpy(dtype=float)
    return {
        BILL.key: float(net.sum()),
        BILL_PAID.key: float(np.clip(net, 0, None).sum()),
        BILL_RECEIVED.key: float(np.clip(-net, 0, None).sum()),
        **{kpi.key: float(b[col].sum()) if col in b else np.nan
           for kpi, (col, _) in zip(BILL_PART_TOTALS, BILL_PARTS, strict=True)},
        BASELINE_BILL.key: float(b["baseline_usd"].sum()),
        BILL_SAVING.key: float(b["saving_usd"].sum()),
    }


def _label(first: pd.Timestamp, end: pd.Timestamp, full: bool, days: float) -> str:
    name = first.strftime("%b %Y")
    if full:
        return name
    last = end - pd.Timedelta(1, "ns")  # the last instant covered
    span = f"day {first.day}" if last.day == first.day else f"days {first.day}-{last.day}"
    covered = f"{days * 24:.3g} h" if days < 1 else f"{days:.3g} d"
    return f"{name} ({span}, {covered})"


def monthly(cfg: StudyFile, run_dir: Path, k: pd.DataFrame | None = None, *,
            chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """The monthly table of a run folder: :data:`MONTH_COLUMNS`, then one column per
    :data:`MONTHLY_KPIS`; one row per calendar month the study touches, in order.

    ``k``: the run's kpis table (None: ``kpis_of`` the folder). The other tables are
    read in chunks of whole market intervals (:data:`MONTHLY_COLUMNS`)."""
    run_dir = Path(run_dir)
    if k is None:
        k = kpis_of(RunFolder(run_dir), chunk_rows=chunk_rows)
    tl = cfg.timeline
    n = int(tl.n_intervals)
    code, local = interval_months(cfg)
    tariff = run_tariff(run_dir, cfg)  # the prices of every interval, as the market settled them
    parts: list[pd.DataFrame] = []
    bill_acc: dict[int, pd.DataFrame] = {}
    seen: set[str] = set()
    for intervals, t in interval_chunks(run_dir, cfg, MONTHLY_COLUMNS, chunk_rows=chunk_rows):
        seen.update(t)
        parts.append(interval_sums(cfg, t, intervals))
        st = t.get("settlements")
        if st is not None and not st.empty:
            kk = st["interval"].to_numpy()
            inside = (kk >= 0) & (kk < n)
            st, kk = st[inside], kk[inside]
            mc = code[kk]
            for c in np.unique(mc):
                part = bill_sums(st[mc == c], tariff.retail_usd_per_kwh, tariff.feed_in_usd_per_kwh)
                bill_acc[c] = part if c not in bill_acc else bill_acc[c].add(part, fill_value=0.0)
    per_k = pd.concat(parts) if len(parts) > 1 else parts[0]
    for kpi in _SUMMED:  # a table the run lacks: NaN, not 0
        if _TABLE_OF[kpi.key] not in seen:
            per_k[kpi.key] = np.nan
    k_code = code[np.clip(k["interval"].to_numpy(dtype=np.int64), 0, n - 1)] if k is not None else None
    tz = local.tz
    study_end = (pd.Timestamp(cfg.study.start) + pd.Timedelta(seconds=cfg.study.duration_s)).tz_convert(tz)
    rows = []
    for c in pd.unique(code):
        idx = np.flatnonzero(code == c)
        first = local[idx[0]]
        end = min(local[idx[-1]] + pd.Timedelta(seconds=tl.market_interval_s), study_end)
        year, month = divmod(int(c), 12)
        m0 = pd.Timestamp(year=year, month=month + 1, day=1, tz=tz)
        m1 = pd.Timestamp(year=year + (month == 11), month=(month + 1) % 12 + 1, day=1, tz=tz)
        days = (end - first).total_seconds() / 86400.0
        full = bool(first == m0 and end == m1)
        row = {"month": f"{year:04d}-{month + 1:02d}", "label": _label(first, end, full, days),
               "start": first, "end": end, "days": days, "full": full, "intervals": len(idx)}
        sums = per_k.loc[idx]
        for kpi in _SUMMED:
            row[kpi.key] = float(sums[kpi.key].sum(min_count=1))
        if k is not None:
            k_m = k[k_code == c]
            for kpi in FROM_KPIS:
                row[kpi.key] = kpi.total(k_m)
        row.update(bill_totals(bill_acc.get(c) if "settlements" in seen else None))
        rows.append(row)
    out = pd.DataFrame(rows)
    for kpi in MONTHLY_KPIS:  # a run without a kpis table: NaN
        if kpi.key not in out:
            out[kpi.key] = np.nan
    out[UNCONVERGED.key] = out[UNCONVERGED.key].astype(np.int64) if k is not None else out[UNCONVERGED.key]
    return out[[*MONTH_COLUMNS, *(kpi.key for kpi in MONTHLY_KPIS)]]


def write_monthly(cfg: StudyFile, run_dir: Path, k: pd.DataFrame | None = None, *,
                  chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """:func:`monthly`, written to ``results/monthly.parquet``; returns it."""
    out = monthly(cfg, run_dir, k, chunk_rows=chunk_rows)
    out.to_parquet(Path(run_dir) / MONTHLY_FILE, index=False)
    return out


def monthly_of(folder: RunFolder, *, k: pd.DataFrame | None = None, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """A run's monthly table: its ``results/monthly.parquet``, else computed
    (:func:`monthly`, in chunks; a run from before the table)."""
    if folder.has_table("monthly"):
        return pd.read_parquet(folder.table_file("monthly"))
    return monthly(folder.cfg, folder.path, k, chunk_rows=chunk_rows)
