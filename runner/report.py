"""The study report of one run folder: ``<run>/report.html`` (self-contained, figures
embedded as base64 PNG, opens offline) and ``<run>/report/<figure-id>.png``.

It reads only the run folder: ``config.resolved.yaml`` (validated), ``manifest.json``
and ``results/*.parquet``. Figures (ids = PNG file stems):

=====================  ===============================================================
``voltage_envelope``   customer voltage per phase: min, 5/50/95th percentile, max of
                       ``voltages.v_pu`` per step, the same of ``v_before_pu`` lighter,
                       and the ``limits`` band
``voltage_heatmap``    every customer (grouped by phase, then bus) x time, colour = v_pu
``market``             clearing price and peer-traded energy per market interval
``grid_exchange``      substation active power (+ import, - export), substation caps
``curtailment``        curtailed PV energy per interval, stacked by cause
``line_loading``       loading of the 5 elements with the highest peak (``lines``)
``unbalance``          VUF of three-phase buses: max over buses, the 3 worst, the limit
``losses``             feeder losses; customers' vs background share (``customer_losses``)
``bills``              per-prosumer net cost with the market vs the no-market baseline
``months``             per calendar month: energy, bills, violations (``monthly``
                       table; only when the study spans more than one month)
=====================  ===============================================================

A figure whose table is missing or empty (e.g. no curtailment) becomes a text block
saying so, and no PNG. The KPI table's KPIs are defined in ``runner.kpis``
(``REPORT_KPIS``).

**Bounded memory.** The tables are never read whole: :func:`aggregate` reads them in
chunks of whole market intervals (:func:`runner.run_folder.interval_chunks`) and keeps
only aggregates whose size does not grow with the study: per-step series reduced into
at most :data:`MAX_SERIES_POINTS` time bins of whole steps, the heat map into at most
:data:`MAX_HEATMAP_COLUMNS` time columns, per-interval bars into at most
:data:`MAX_INTERVAL_BARS` bins of whole intervals, bills and peaks per prosumer /
element, and running totals for the KPIs (a second pass reads the series of the few
worst lines and buses). A run with no more steps / intervals than that (a day at
1-min steps: 1440 steps, 96 intervals) has one step / interval per bin, and its
figures show exactly the per-step data they always did. Longer runs say so in the
caption; per bin: the voltage envelope draws the lowest minimum, the highest maximum
and the mean of the per-step percentiles; the heat map the customer's voltage
furthest from 1 pu in the bin (its minimum or maximum); unbalance and line loading
the maximum; substation power and losses the mean (substation power also its
min-max band); market and curtailment bars the energy summed over the bin, the
clearing price its mean over the bin's intervals, the peer trade price volume-weighted.

Time axes are local clock hours of ``study.start`` (its UTC offset): 10.5 = 10:30.
Matplotlib draws on its Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), without
pyplot: no global backend switch, no figure registry, safe in any host process.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from federates.common.config import StudyFile
from federates.common.limits import Limit
from federates.common.tariff import Tariff
from runner import html
from runner.kpis import BILL_PARTS, bill_sums, bills, kpis_of, report_table
from runner.kpis import baseline_bills as baseline_bills  # where callers import it from
from runner.months import (
    BILL_KPIS,
    CURTAILMENT_KPIS,
    ENERGY_KPIS,
    MONTHLY_KPIS,
    VIOLATION_KPIS,
    monthly_of,
)
from runner.run_folder import CHUNK_ROWS, RunFolder, interval_chunks, run_tariff, table_file

REPORT_FILE = "report.html"
FIGURE_DIR = "report"
DPI = 100
WIDTH_IN = 11.0
TOP_LINES = 5
WORST_BUSES = 3

#: figure ids, in report order
FIGURE_IDS = ("voltage_envelope", "voltage_heatmap", "unbalance", "market", "bills",
              "grid_exchange", "line_loading", "losses", "curtailment")

#: curtailment causes (``curtailment_energy.limit``) in stacking order, with colours
CAUSE_COLOURS = {
    Limit.V_MAX: "#d62728", Limit.THERMAL: "#ff7f0e", Limit.VUF: "#9467bd", Limit.EXPORT: "#8c564b",
    Limit.VOLT_WATT: "#1f77b4", Limit.ENVELOPE: "#7f7f7f",
}
CAUSE_LABELS = {
    Limit.V_MAX: "over-voltage (DSO)", Limit.THERMAL: "thermal (DSO)", Limit.VUF: "unbalance (DSO)",
    Limit.EXPORT: "substation export cap (DSO)", Limit.VOLT_WATT: "Volt-Watt (inverter)",
    Limit.ENVELOPE: "held back by envelope (ex ante)",
}

REFERENCES = (
    "Self-sufficiency after Luthander, Widén, Nilsson & Palm (2015), 'Photovoltaic "
    "self-consumption in buildings: A review', Applied Energy 142, 80-94: self-sufficiency "
    "= self-consumed local generation / total consumption, with storage counted as part of "
    "the self-consumption; applied here to the prosumers as one community behind a virtual "
    "meter (community) and to each household alone. Voltage band: ANSI C84.1; voltage "
    "unbalance factor: IEC 61000-4-30 (negative- over positive-sequence voltage), limit "
    "after EN 50160."
)

#: per-step series of a run with more physics steps than this are drawn per bin of
#: whole steps (2 days at 1-min steps are drawn step by step)
MAX_SERIES_POINTS = 2880
#: time columns of the voltage heat map (a day at 1-min steps: one per step)
MAX_HEATMAP_COLUMNS = 1440
#: bars of the per-interval figures (market, curtailment): 10 days at 15 min, one per interval
MAX_INTERVAL_BARS = 1000

#: the tables and columns the report reads (first pass)
REPORT_COLUMNS: dict[str, list[str]] = {
    "voltages": ["step", "t_s", "participant", "bus", "phase", "v_pu", "v_before_pu", "curtailed_p_kw"],
    "grid": ["step", "t_s", "source_p_kw", "losses_kw"],
    "customer_losses": ["step", "participant", "loss_kw"],
    "profiles": ["step", "participant", "load_kw", "pv_kw", "battery_kw"],
    "settlements": ["interval", "participant", "metered_kwh", "net_cost_usd", "market_cost_usd",
                    "replacement_cost_usd", "imbalance_cost_usd", "charges_usd"],
    "trades": ["interval", "kind", "energy_kwh", "price_usd_per_kwh"],
    "clearing": ["interval", "price_usd_per_kwh", "traded_kwh", "unmatched_buy_kwh", "unmatched_sell_kwh",
                 "welfare_usd"],
    "curtailment_energy": ["step", "limit", "energy_kwh"],
    "unbalance": ["step", "t_s", "bus", "vuf_pct"],
    "lines": ["step", "t_s", "element", "loading_pct"],
}


# ---- aggregates ------------------------------------------------------------------------

class Bins:
    """``n_units`` consecutive physics steps (or market intervals) in bins of ``width``
    whole units, at most ``max_bins`` bins; width 1: every unit its own bin."""

    def __init__(self, n_units: int, max_bins: int) -> None:
        n_units = max(int(n_units), 1)
        self.width = -(-n_units // max(int(max_bins), 1))
        self.n = -(-n_units // self.width)

    @property
    def binned(self) -> bool:
        return self.width > 1

    def of(self, units) -> np.ndarray:
        return np.asarray(units, dtype=np.int64) // self.width

    def starts(self) -> np.ndarray:
        """The first unit of every bin."""
        return np.arange(self.n, dtype=np.int64) * self.width


class Binned:
    """One series over :class:`Bins`: the ``min``, ``max``, ``sum`` or ``mean`` of the
    values added to each bin (NaN values skipped). With width 1 and one value per unit
    it is that value, unchanged. Units outside the bins are ignored."""

    def __init__(self, bins: Bins, how: str) -> None:
        if how not in ("min", "max", "sum", "mean"):
            raise ValueError(how)
        self.bins, self.how = bins, how
        self.acc = np.full(bins.n, np.nan) if how in ("min", "max") else np.zeros(bins.n)
        self.rows = np.zeros(bins.n, dtype=np.int64)  # values added, NaN or not
        self.valid = np.zeros(bins.n, dtype=np.int64)

    def add(self, units, values) -> None:
        b = self.bins.of(units)
        x = np.asarray(values, dtype=float)
        inside = (b >= 0) & (b < self.bins.n)
        if not inside.all():
            b, x = b[inside], x[inside]
        np.add.at(self.rows, b, 1)
        ok = ~np.isnan(x)
        if not ok.all():
            b, x = b[ok], x[ok]
        if self.how == "min":
            np.fmin.at(self.acc, b, x)
        elif self.how == "max":
            np.fmax.at(self.acc, b, x)
        else:
            np.add.at(self.acc, b, x)
        np.add.at(self.valid, b, 1)

    @property
    def present(self) -> np.ndarray:
        """Bins that got at least one value (NaN included)."""
        return self.rows > 0

    def values(self) -> np.ndarray:
        """Per bin; NaN where no valid value was added (``sum``: 0 there)."""
        if self.how == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(self.valid > 0, self.acc / np.maximum(self.valid, 1), np.nan)
        return self.acc.copy()


def _steps_t(df: pd.DataFrame) -> pd.Series:
    """Each step's time [s] (its first ``t_s``), indexed by step."""
    return df.groupby("step")["t_s"].first()


def _max_by(df: pd.DataFrame, by: str, value: str, acc: pd.Series | None) -> pd.Series:
    """Running maximum of ``value`` per ``by`` (index sorted as groupby sorts it)."""
    part = df.groupby(by, observed=True)[value].max()
    return part if acc is None else pd.concat([acc, part]).groupby(level=0).max()


class _Heat:
    """The heat map's customers x time columns: per customer and column the lowest and
    highest ``v_pu`` (one array with width 1, where they are the step's value)."""

    def __init__(self, bins: Bins) -> None:
        self.bins = bins
        self.rows: dict[str, int] = {}
        self.bus: list[str] = []
        self.phase: list[str] = []
        self.lo = np.full((0, bins.n), np.nan)
        self.hi = np.full((0, bins.n), np.nan) if bins.binned else None
        self.t = Binned(bins, "min")

    def add(self, v: pd.DataFrame) -> None:
        first = v.groupby("participant", observed=True, sort=False)[["bus", "phase"]].first()
        new = [p for p in first.index if p not in self.rows]
        if new:
            for p in new:
                self.rows[p] = len(self.rows)
                self.bus.append(str(first.at[p, "bus"]))
                self.phase.append(str(first.at[p, "phase"]))
            grow = np.full((len(new), self.bins.n), np.nan)
            self.lo = np.vstack([self.lo, grow])
            if self.hi is not None:
                self.hi = np.vstack([self.hi, grow])
        rows = pd.Index(list(self.rows)).get_indexer(v["participant"])
        cols = self.bins.of(v["step"].to_numpy())
        x = v["v_pu"].to_numpy(dtype=float)
        ok = (cols >= 0) & (cols < self.bins.n)
        if not ok.all():
            rows, cols, x = rows[ok], cols[ok], x[ok]
        np.fmin.at(self.lo, (rows, cols), x)
        if self.hi is not None:
            np.fmax.at(self.hi, (rows, cols), x)
        st = _steps_t(v)
        self.t.add(st.index.to_numpy(), st.to_numpy())

    def values(self) -> np.ndarray:
        """customers (registration order) x bins: the value furthest from 1 pu."""
        if self.hi is None:
            return self.lo
        with np.errstate(invalid="ignore"):
            return np.where(self.hi - 1.0 >= 1.0 - self.lo, self.hi, self.lo)


@dataclass
class ReportData:
    """What the figures and the KPI table need, aggregated chunk by chunk (see the module
    doc): nothing in it grows with the study length."""

    steps: Bins
    intervals: Bins
    heat_steps: Bins
    rows: dict[str, int]  # rows of each table the run has (missing: absent)
    columns: dict[str, list[str]]  # the columns of each table the run has
    # voltages
    phases: dict[str, set] = field(default_factory=dict)  # phase -> its participants
    envelope: dict[tuple[str, str, int], Binned] = field(default_factory=dict)  # (phase, col, q)
    v_t: Binned | None = None
    heat: _Heat | None = None
    # unbalance, lines (second pass: the series of the worst buses / most loaded elements)
    ub_t: Binned | None = None
    ub_max: Binned | None = None
    ub_peak: pd.Series | None = None
    ub_series: dict[str, Binned] = field(default_factory=dict)
    ln_t: Binned | None = None
    ln_peak: pd.Series | None = None
    ln_series: dict[str, Binned] = field(default_factory=dict)
    # grid, losses
    g_t: Binned | None = None
    g_p: dict[str, Binned] = field(default_factory=dict)  # mean, min, max, import, export
    g_loss: dict[str, Binned] = field(default_factory=dict)  # mean, sum of losses_kw
    c_loss: dict[str, Binned] = field(default_factory=dict)  # customers / background: mean, sum
    # market, curtailment (per interval bins)
    cl_rows: Binned | None = None
    cl: dict[str, Binned] = field(default_factory=dict)  # price (mean), traded, unmatched (sums)
    peer_rows: int = 0
    peer_paid: Binned | None = None
    peer_vol: Binned | None = None
    curtailed: dict[str, Binned] = field(default_factory=dict)  # cause -> energy per interval bin
    # totals (KPI table) and per-prosumer bills
    traded_kwh: float = 0.0
    total_load: float = 0.0
    comm: float = 0.0
    house: float = 0.0
    pv_sum_kw: float = 0.0
    curtailed_kwh: float = 0.0
    vuf_max_pct: float = np.nan
    losses_sum_kw: float = 0.0
    import_sum_kw: float = 0.0
    welfare_usd: float = 0.0
    bill_sums: pd.DataFrame | None = None
    # the run's tariff: retail and feed-in per interval bin (Binned, mean), flat or not
    tariff: dict = field(default_factory=dict)

    def has(self, name: str) -> bool:
        """The run has the table and it has rows (as ``_Run.table`` had it)."""
        return self.rows.get(name, 0) > 0


def aggregate(run_dir: Path, cfg: StudyFile, *, chunk_rows: int = CHUNK_ROWS) -> ReportData:
    """The report's aggregates of a run folder: one pass over the tables in chunks of
    whole market intervals, and a second over ``unbalance`` / ``lines`` for the series
    of the worst buses and most loaded elements."""
    tl = cfg.timeline
    rows, columns = {}, {}
    for name in REPORT_COLUMNS:
        path = table_file(run_dir, name)
        if path.is_file():
            pf = pq.ParquetFile(path)
            rows[name] = pf.metadata.num_rows
            columns[name] = pf.schema_arrow.names
    d = ReportData(steps=Bins(tl.n_steps, MAX_SERIES_POINTS), intervals=Bins(tl.n_intervals, MAX_INTERVAL_BARS),
                   heat_steps=Bins(tl.n_steps, MAX_HEATMAP_COLUMNS), rows=rows, columns=columns)
    tariff = run_tariff(run_dir, cfg)
    _add_tariff(d, tariff)
    for _, t in interval_chunks(run_dir, cfg, REPORT_COLUMNS, chunk_rows=chunk_rows):
        _add_voltages(d, t)
        _add_grid(d, t)
        _add_market(d, t, tariff.retail_usd_per_kwh, tariff.feed_in_usd_per_kwh)
        _add_profiles(d, t)
        _add_curtailment(d, t, tl.steps_per_interval)
        _add_peaks(d, t)
    top_buses = [] if d.ub_peak is None else d.ub_peak.sort_values(ascending=False).index[:WORST_BUSES].tolist()
    top_lines = ([] if d.ln_peak is None else
                 d.ln_peak.sort_values(ascending=False).index[:TOP_LINES].astype(str).tolist())
    d.ub_series = {b: Binned(d.steps, "max") for b in top_buses}
    d.ln_series = {e: Binned(d.steps, "max") for e in top_lines}
    second = {name: REPORT_COLUMNS[name] for name, top in (("unbalance", top_buses), ("lines", top_lines))
              if top}
    if second:
        for _, t in interval_chunks(run_dir, cfg, second, chunk_rows=chunk_rows):
            for name, col, value, series in (("unbalance", "bus", "vuf_pct", d.ub_series),
                                             ("lines", "element", "loading_pct", d.ln_series)):
                df = t.get(name)
                if df is None or df.empty or not series:
                    continue
                key = df[col].astype(str)
                for e, s in series.items():
                    sel = df[key == str(e)]
                    s.add(sel["step"].to_numpy(), sel[value].to_numpy())
    return d


def _add_voltages(d: ReportData, t: Mapping[str, pd.DataFrame]) -> None:
    v = t.get("voltages")
    if v is None or v.empty:
        return
    if d.v_t is None:
        d.v_t = Binned(d.steps, "min")
        d.heat = _Heat(d.heat_steps)
    st = _steps_t(v)
    d.v_t.add(st.index.to_numpy(), st.to_numpy())
    phase = v["phase"].astype(str)
    for ph in sorted(phase.unique()):
        sub = v[phase == ph]
        d.phases.setdefault(ph, set()).update(sub["participant"].unique().tolist())
        for col in ("v_before_pu", "v_pu"):
            arr = sub.pivot(index="step", columns="participant", values=col).reindex(st.index).to_numpy()
            pct = np.nanpercentile if np.isnan(arr).any() else np.percentile  # nan* is slow
            for q, values in zip((0, 5, 50, 95, 100), pct(arr, [0, 5, 50, 95, 100], axis=1), strict=True):
                how = "min" if q == 0 else "max" if q == 100 else "mean"
                d.envelope.setdefault((ph, col, q), Binned(d.steps, how)).add(st.index.to_numpy(), values)
    d.heat.add(v)


def _add_grid(d: ReportData, t: Mapping[str, pd.DataFrame]) -> None:
    g = t.get("grid")
    if g is None or g.empty:
        return
    if d.g_t is None:
        d.g_t = Binned(d.steps, "min")
        d.g_p = {how: Binned(d.steps, how) for how in ("mean", "min", "max")}
        d.g_p |= {"import": Binned(d.steps, "sum"), "export": Binned(d.steps, "sum")}
        d.g_loss = {how: Binned(d.steps, how) for how in ("mean", "sum")}
        if d.has("customer_losses"):
            d.c_loss = {f"{who}_{how}": Binned(d.steps, how) for who in ("cust", "back") for how in ("mean", "sum")}
    steps = g["step"].to_numpy()
    d.g_t.add(steps, g["t_s"].to_numpy())
    p = g["source_p_kw"].to_numpy(dtype=float)
    for how in ("mean", "min", "max"):
        d.g_p[how].add(steps, p)
    d.g_p["import"].add(steps, np.clip(p, 0, None))
    d.g_p["export"].add(steps, np.clip(-p, 0, None))
    loss = g["losses_kw"].to_numpy(dtype=float)
    for b in d.g_loss.values():
        b.add(steps, loss)
    d.losses_sum_kw += float(g["losses_kw"].sum())
    d.import_sum_kw += float(np.clip(g["source_p_kw"].to_numpy(dtype=float), 0, None).sum())
    cl = t.get("customer_losses")
    if d.c_loss and cl is not None:
        bg = cl["participant"].astype(str) == "background"
        cust = cl[~bg].groupby("step")["loss_kw"].sum().reindex(g["step"], fill_value=0.0).to_numpy()
        back = cl[bg].groupby("step")["loss_kw"].sum().reindex(g["step"], fill_value=0.0).to_numpy()
        for who, x in (("cust", cust), ("back", back)):
            d.c_loss[f"{who}_mean"].add(steps, x)
            d.c_loss[f"{who}_sum"].add(steps, x)


def _add_tariff(d: ReportData, tariff: Tariff) -> None:
    """The retail and feed-in prices per interval bin (their mean over a bin's intervals)."""
    k = np.arange(tariff.n_intervals)
    d.tariff = {"flat": bool(len(np.unique(tariff.retail_usd_per_kwh)) <= 1
                             and len(np.unique(tariff.feed_in_usd_per_kwh)) <= 1)}
    for name, v in (("retail", tariff.retail_usd_per_kwh), ("feed_in", tariff.feed_in_usd_per_kwh)):
        d.tariff[name] = Binned(d.intervals, "mean")
        d.tariff[name].add(k, v)


def _add_market(d: ReportData, t: Mapping[str, pd.DataFrame], retail: np.ndarray, feed_in: np.ndarray) -> None:
    cl = t.get("clearing")
    if cl is not None and not cl.empty:
        if d.cl_rows is None:
            d.cl_rows = Binned(d.intervals, "sum")
            d.cl = {"price": Binned(d.intervals, "mean")}
            d.cl |= {c: Binned(d.intervals, "sum") for c in ("traded_kwh", "unmatched_buy_kwh", "unmatched_sell_kwh")
                     if c in cl}
        k = cl["interval"].to_numpy()
        d.cl_rows.add(k, np.ones(len(k)))
        d.cl["price"].add(k, cl["price_usd_per_kwh"].to_numpy(dtype=float))
        for c in ("traded_kwh", "unmatched_buy_kwh", "unmatched_sell_kwh"):
            if c in d.cl:
                d.cl[c].add(k, cl[c].to_numpy(dtype=float))
        d.welfare_usd += float(cl["welfare_usd"].sum())
    tr = t.get("trades")
    if tr is not None and not tr.empty:
        peer = tr[tr["kind"] == "peer"]
        d.traded_kwh += float(peer["energy_kwh"].sum())
        if not peer.empty:
            if d.peer_paid is None:
                d.peer_paid, d.peer_vol = Binned(d.intervals, "sum"), Binned(d.intervals, "sum")
            d.peer_rows += len(peer)
            vol = peer.groupby("interval")["energy_kwh"].sum()
            paid = (peer["energy_kwh"] * peer["price_usd_per_kwh"]).groupby(peer["interval"]).sum()
            d.peer_vol.add(vol.index.to_numpy(), vol.to_numpy())
            d.peer_paid.add(paid.index.to_numpy(), paid.to_numpy())
    st = t.get("settlements")
    if st is not None and not st.empty:
        part = bill_sums(st, retail, feed_in)
        d.bill_sums = part if d.bill_sums is None else d.bill_sums.add(part, fill_value=0.0)


def _add_profiles(d: ReportData, t: Mapping[str, pd.DataFrame]) -> None:
    pr = t.get("profiles")
    if pr is None or pr.empty:
        return
    load = pr.pivot(index="step", columns="participant", values="load_kw")
    supply = (pr.pivot(index="step", columns="participant", values="pv_kw")
              - pr.pivot(index="step", columns="participant", values="battery_kw"))
    v = t.get("voltages")
    if d.has("voltages") and v is not None:
        curt = v.pivot(index="step", columns="participant", values="curtailed_p_kw")
        supply = supply - curt.reindex_like(supply).fillna(0.0)
    d.total_load += float(load.to_numpy().sum())
    L = load.sum(axis=1).to_numpy()
    S = supply.sum(axis=1).to_numpy()
    d.comm += float(np.minimum(L, np.clip(S, 0, None)).sum())
    d.house += float(np.minimum(load.to_numpy(), np.clip(supply.to_numpy(), 0, None)).sum())
    d.pv_sum_kw += float(pr["pv_kw"].sum())


def _add_curtailment(d: ReportData, t: Mapping[str, pd.DataFrame], steps_per_interval: int) -> None:
    ce = t.get("curtailment_energy")
    if ce is None or ce.empty:
        return
    unserved = ce["limit"].astype(str) == str(Limit.LOAD_LIMIT)
    if unserved.any():  # import the DSO's load limits cut: no PV energy (the Flexible demand section)
        ce = ce[~unserved]
    d.curtailed_kwh += float(ce["energy_kwh"].sum())
    k = ce["step"].to_numpy() // steps_per_interval
    by = ce.groupby([k, ce["limit"].astype(str)])["energy_kwh"].sum()
    for cause, part in by.groupby(level=1):
        d.curtailed.setdefault(cause, Binned(d.intervals, "sum")).add(
            part.index.get_level_values(0).to_numpy(), part.to_numpy())


def _add_peaks(d: ReportData, t: Mapping[str, pd.DataFrame]) -> None:
    ub = t.get("unbalance")
    if ub is not None and not ub.empty:
        if d.ub_t is None:
            d.ub_t, d.ub_max = Binned(d.steps, "min"), Binned(d.steps, "max")
        st = _steps_t(ub)
        d.ub_t.add(st.index.to_numpy(), st.to_numpy())
        per_step = ub.groupby("step")["vuf_pct"].max()
        d.ub_max.add(per_step.index.to_numpy(), per_step.to_numpy())
        d.ub_peak = _max_by(ub, "bus", "vuf_pct", d.ub_peak)
        d.vuf_max_pct = float(np.fmax(d.vuf_max_pct, ub["vuf_pct"].max()))
    ln = t.get("lines")
    if ln is not None and not ln.empty:
        if d.ln_t is None:
            d.ln_t = Binned(d.steps, "min")
        st = _steps_t(ln)
        d.ln_t.add(st.index.to_numpy(), st.to_numpy())
        d.ln_peak = _max_by(ln, "element", "loading_pct", d.ln_peak)


# ---- context -------------------------------------------------------------------------

@dataclass
class _Run:
    """Everything the figures need, read once from the run folder (aggregated)."""

    run_dir: Path
    cfg: StudyFile
    data: ReportData
    kpis: pd.DataFrame | None
    manifest: dict
    months: pd.DataFrame | None = None  # the monthly table (runner/months.py)

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.cfg.study.start)

    @property
    def h0(self) -> float:
        """Local clock hour of the study start [h]."""
        s = self.start
        return s.hour + s.minute / 60.0 + s.second / 3600.0

    @property
    def time_label(self) -> str:
        z = self.start.strftime("%z")
        tz = f"UTC{z[:3]}:{z[3:]}" if z else "local"
        return f"local time ({tz}) [h]"

    @property
    def step_h(self) -> float:
        return self.cfg.timeline.step_h

    @property
    def interval_h(self) -> float:
        return self.cfg.timeline.interval_h

    def hours(self, t_s) -> np.ndarray:
        """Local clock hours [h] of seconds from the study start."""
        return self.h0 + np.asarray(t_s, dtype=float) / 3600.0

    def series_x(self, t: Binned) -> tuple[np.ndarray, np.ndarray]:
        """(present bins, their x [h]) of a per-step series: the step's time, or the
        bin's middle when bins hold several steps."""
        present = t.present
        t_s = t.values()[present]
        if t.bins.binned:
            t_s = t_s + (t.bins.width - 1) * self.cfg.timeline.physics_step_s / 2.0
        return present, self.hours(t_s)

    def step_bin_note(self, bins: Bins, what: str) -> str:
        """Caption sentence of a figure drawn per bin of steps ('' when not binned)."""
        if not bins.binned:
            return ""
        minutes = bins.width * self.cfg.timeline.physics_step_s / 60.0
        return (f" Long run: drawn per bin of {bins.width} physics steps ({minutes:g} min, "
                f"{bins.n} bins): {what}.")

    def interval_bin_note(self, what: str) -> str:
        b = self.data.intervals
        if not b.binned:
            return ""
        return (f" Long run: bars per bin of {b.width} market intervals "
                f"({b.width * self.interval_h:g} h, {b.n} bins): {what}.")

    def time_axis(self, ax) -> None:
        ax.set_xlabel(self.time_label)
        ax.set_xlim(self.h0, self.h0 + self.cfg.study.duration_s / 3600.0)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=13, steps=[1, 2, 2.5, 5, 10]))
        ax.grid(True, alpha=0.3)


def load_run(run_dir: Path, *, chunk_rows: int = CHUNK_ROWS) -> _Run:
    """The run folder's config, manifest, kpis and monthly tables (computed in chunks
    when the run has none) and report aggregates; no table is read whole but ``kpis``
    and ``monthly``."""
    f = RunFolder(run_dir)
    cfg = f.cfg
    k = kpis_of(f, chunk_rows=chunk_rows)  # one row per market interval
    manifest = f.manifest
    return _Run(run_dir=f.path, cfg=cfg, data=aggregate(f.path, cfg, chunk_rows=chunk_rows), kpis=k,
                manifest=manifest, months=monthly_of(f, k=k, chunk_rows=chunk_rows))


@dataclass
class Plot:
    """A figure before rendering: id (PNG stem and anchor), title, caption, matplotlib figure."""

    id: str
    title: str
    caption: str
    fig: MplFigure

    def to_html(self) -> html.Figure:
        """The HTML block, with the figure rendered to PNG."""
        return html.Figure(self.id, self.title, render_png(self.fig), self.caption)

    def _repr_png_(self) -> bytes:
        """A notebook (IPython) shows the figure as its PNG."""
        return render_png(self.fig)


def _new_figure(height_in: float = 4.0, nrows: int = 1, sharex: bool = True):
    fig = MplFigure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def _legend(ax, outside: bool = False, **kw) -> None:
    kw.setdefault("fontsize", 8)
    if outside:
        ax.legend(loc="center left", bbox_to_anchor=(1.005, 0.5), **kw)
    else:
        ax.legend(**kw)


def render_png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# ---- figures ---------------------------------------------------------------------------

def fig_voltage_envelope(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("voltages") or d.v_t is None:
        return html.Text("Customer voltage envelope: no voltages table in this run.")
    lim = r.cfg.limits
    phases = sorted(d.phases)
    present, x = r.series_x(d.v_t)
    fig, axes = _new_figure(0.6 + 2.9 * len(phases), nrows=len(phases))
    for ax, ph in zip(axes, phases, strict=True):
        n = len(d.phases[ph])
        for col, colour, alpha, tag in (("v_before_pu", "#ff7f0e", 0.45, "before control"),
                                        ("v_pu", "#1f77b4", 1.0, "after control")):
            p0, p5, p50, p95, p100 = (d.envelope[(ph, col, q)].values()[present] for q in (0, 5, 50, 95, 100))
            ax.fill_between(x, p5, p95, color=colour, alpha=0.35 * alpha, lw=0,
                            label=f"{tag}: 5th-95th percentile")
            ax.plot(x, p50, color=colour, alpha=alpha, lw=1.4, ls="-" if alpha == 1.0 else "--",
                    label=f"{tag}: median")
            ax.plot(x, p0, color=colour, alpha=alpha, lw=0.8, ls=":", label=f"{tag}: min / max")
            ax.plot(x, p100, color=colour, alpha=alpha, lw=0.8, ls=":")
        ax.axhline(lim.v_max_pu, color="#d62728", ls="--", lw=1.0,
                   label=f"limits {lim.v_min_pu:.3f} / {lim.v_max_pu:.3f} pu")
        ax.axhline(lim.v_min_pu, color="#d62728", ls="--", lw=1.0)
        ax.set_title(f"phase {ph} ({n} customers)")
        ax.set_ylabel("customer voltage [pu]")
        r.time_axis(ax)
        _legend(ax, outside=True)
    fig.suptitle("Customer voltage envelope per phase, before and after control")
    return Plot("voltage_envelope", "Customer voltage envelope per phase",
                "Per physics step and phase: minimum, 5th / 50th / 95th percentile and maximum of "
                "the customers' voltage after control (voltages.v_pu, blue) and in the "
                "uncontrolled solve of the same step (v_before_pu, orange, lighter); dashed red: "
                f"the limits band ({lim.voltage_band})."
                + r.step_bin_note(d.steps, "the lowest minimum, the highest maximum and the mean of each "
                                  "per-step percentile over the bin"), fig)


def fig_voltage_heatmap(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("voltages") or d.heat is None:
        return html.Text("Voltage heat map: no voltages table in this run.")
    lim = r.cfg.limits
    h = d.heat
    who = (pd.DataFrame({"participant": list(h.rows), "bus": h.bus, "phase": h.phase, "row": list(h.rows.values())})
           .sort_values(["phase", "bus", "participant"]))
    order = who["participant"].tolist()
    present = h.t.present
    arr = h.values()[who["row"].to_numpy()][:, present]  # customers x steps (or bins of steps)
    x = r.hours(h.t.values()[present])
    dx = r.step_h * h.bins.width
    n = len(order)
    fig, (ax,) = _new_figure(max(4.0, min(11.0, 1.6 + 0.13 * n)))
    lo = min(float(np.nanmin(arr)), lim.v_min_pu) - 0.005
    hi = max(float(np.nanmax(arr)), lim.v_max_pu) + 0.005
    norm = TwoSlopeNorm(vmin=min(lo, 0.999), vcenter=1.0, vmax=max(hi, 1.001))
    im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap="RdBu_r", norm=norm,
                   extent=(x[0], x[-1] + dx, n - 0.5, -0.5))
    cb = fig.colorbar(im, ax=ax, pad=0.01)
    cb.set_label("customer voltage (final) [pu]" if not h.bins.binned else
                 "customer voltage (final), furthest from 1 pu in the bin [pu]")
    handles = []
    yy = np.arange(n)
    xc = x + dx / 2
    for level, name, colour in ((lim.v_max_pu, Limit.V_MAX, "black"), (lim.v_min_pu, Limit.V_MIN, "#2ca02c")):
        reached = bool((arr > level).any() and (arr < level).any())
        if reached and arr.shape[1] > 1 and n > 1:
            ax.contour(xc, yy, arr, levels=[level], colors=colour, linewidths=0.9)
        handles.append(Line2D([], [], color=colour, lw=0.9,
                              label=f"{name} {level:.3f} pu contour" + ("" if reached else " (not reached)")))
    phases = who["phase"].to_numpy()
    bounds = np.flatnonzero(phases[1:] != phases[:-1]) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", lw=1.5)
        ax.axhline(b, color="black", lw=0.6, ls="--")
    if len(bounds):
        handles.append(Line2D([], [], color="black", lw=0.6, ls="--", label="phase group boundary"))
    labels = [f"{p} {b}.{ph}" for p, b, ph in who[["participant", "bus", "phase"]].itertuples(index=False)]
    if n <= 70:
        ax.set_yticks(yy, labels, fontsize=6 if n > 30 else 8)
    else:
        starts = np.r_[0, np.ceil(bounds).astype(int)]
        ends = np.r_[np.ceil(bounds).astype(int), n]
        ax.set_yticks((starts + ends - 1) / 2, [f"phase {phases[s]}" for s in starts])
    ax.set_ylabel("customer (participant bus.phase) [sorted by phase, bus]")
    ax.set_title("Customer voltage by customer and time (after control)")
    r.time_axis(ax)
    ax.grid(False)
    _legend(ax, handles=handles, loc="upper left")
    return Plot("voltage_heatmap", "Customer voltage heat map",
                "Every customer's final voltage (voltages.v_pu) per physics step, customers grouped "
                "by phase, then bus; red above 1 pu, blue below. Contours mark where the limits "
                "band is crossed."
                + r.step_bin_note(h.bins, "each column is a bin, its colour the customer's voltage furthest "
                                  "from 1 pu in the bin (the bin's minimum or maximum), so no excursion "
                                  "is averaged away"), fig)


def fig_market(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("clearing") or d.cl_rows is None:
        return html.Text("Market: no clearing table in this run.")
    m = r.cfg.market
    tl = r.cfg.timeline
    b = d.intervals
    present = d.cl_rows.present
    width_h = b.width * tl.interval_h
    per = "interval" if not b.binned else f"bin of {b.width} intervals"
    x0 = r.h0 + b.starts()[present] * tl.interval_h
    fig, (ax1, ax2) = _new_figure(6.0, nrows=2)
    price = d.cl["price"].values()[present]
    ax1.hlines(price, x0, x0 + width_h, color="#1f77b4", lw=2.0,
               label="clearing price" if not b.binned else "clearing price (mean over the bin)")
    if d.peer_rows:
        vol, paid = d.peer_vol.values(), d.peer_paid.values()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(vol > 0, paid / np.where(vol > 0, vol, 1.0), np.nan)
        ok = d.peer_vol.present & ~np.isnan(mean)
        ax1.plot(r.h0 + (b.starts()[ok] + 0.5 * b.width) * tl.interval_h, mean[ok], "o",
                 ms=3, color="#ff7f0e", label="mean peer trade price (volume-weighted)")
    _tariff_lines(r, ax1)
    ax1.set_ylabel("price [USD/kWh]")
    ax1.set_title(f"Clearing price per {per} ({m.topology} / {m.mechanism})")
    r.time_axis(ax1)
    _legend(ax1, outside=True)
    ax2.bar(x0, d.cl["traded_kwh"].values()[present], width=width_h, align="edge",
            color="#1f77b4", edgecolor="white", lw=0.4, label="peer-traded energy")
    if "unmatched_sell_kwh" in d.cl and "unmatched_buy_kwh" in d.cl:
        sell = d.cl["unmatched_sell_kwh"].values()[present]
        buy = d.cl["unmatched_buy_kwh"].values()[present]
        ax2.step(np.r_[x0, x0[-1] + width_h], np.r_[sell, sell[-1]],
                 where="post", color="#2ca02c", lw=1, label="unmatched offers (to utility)")
        ax2.step(np.r_[x0, x0[-1] + width_h], np.r_[buy, buy[-1]],
                 where="post", color="#d62728", lw=1, label="unmatched bids (from utility)")
    ax2.set_ylabel(f"energy per {per} [kWh]")
    ax2.set_title(f"Traded energy per market {per}" if not b.binned else f"Traded energy per {per}")
    r.time_axis(ax2)
    _legend(ax2, outside=True)
    fig.suptitle("Market clearing: price and traded energy")
    return Plot("market", "Clearing price and traded energy",
                "Top: the interval's clearing price (clearing.price_usd_per_kwh; none without a peer "
                "trade) and the volume-weighted price of the peer trades, between the utility's "
                "feed-in and retail tariffs"
                + ("" if d.tariff.get("flat", True) else
                   " (market.tariff, per interval: results/tariff.parquet, averaged over a bin)")
                + ". Bottom: peer-traded energy per interval "
                "(clearing.traded_kwh) and what was left to the utility."
                + r.interval_bin_note("energies summed over the bin, the clearing price averaged over the "
                                      "bin's intervals that have one, the peer trade price volume-weighted"),
                fig)


def _tariff_lines(r: _Run, ax) -> None:
    """The run's retail and feed-in tariffs on a price axis: two lines when flat, else
    their steps over the study (per interval, or the mean over each bin)."""
    d, tl = r.data, r.cfg.timeline
    if not d.tariff:
        return
    retail, feed_in = d.tariff["retail"].values(), d.tariff["feed_in"].values()
    if d.tariff["flat"]:
        ax.axhline(retail[0], color="#d62728", ls="--", lw=1, label=f"retail tariff {retail[0]:.3f}")
        ax.axhline(feed_in[0], color="#2ca02c", ls="--", lw=1, label=f"feed-in tariff {feed_in[0]:.3f}")
        return
    b = d.intervals
    x = r.h0 + np.r_[b.starts(), b.n * b.width] * tl.interval_h
    x[-1] = min(x[-1], r.h0 + tl.n_intervals * tl.interval_h)
    kind = r.cfg.market.tariff.kind
    ax.step(x, np.r_[retail, retail[-1]], where="post", color="#d62728", ls="--", lw=1,
            label=f"retail tariff ({kind})")
    ax.step(x, np.r_[feed_in, feed_in[-1]], where="post", color="#2ca02c", ls="--", lw=1,
            label=f"feed-in tariff ({kind})")


def fig_bills(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("settlements") or d.bill_sums is None:
        return html.Text("Bills: no settlements in this run.")
    b = bills(d.bill_sums)
    n = len(b)
    xi = np.arange(n)
    fig, (ax,) = _new_figure(4.6)
    w = 0.4
    ax.bar(xi - w / 2, b["baseline_usd"], width=w, color="#bbbbbb", label="no-market baseline (retail / feed-in)")
    parts = [(col, label) for col, label in BILL_PARTS if col in b]
    if parts:  # the bill with the market, split into its parts: credits below zero, costs above
        up, down = np.zeros(n), np.zeros(n)
        for (col, label), color in zip(parts, ("#1f77b4", "#9467bd", "#ff7f0e", "#8c564b"), strict=False):
            v = b[col].to_numpy(dtype=float)
            if not np.any(v):
                continue
            pos, neg = np.clip(v, 0, None), np.clip(v, None, 0)
            ax.bar(xi + w / 2, pos, bottom=up, width=w, color=color, label=label)
            ax.bar(xi + w / 2, neg, bottom=down, width=w, color=color)
            up, down = up + pos, down + neg
        ax.plot(xi + w / 2, b["net_cost_usd"], "_", ms=9, mew=2, color="black", label="with the market (net cost)")
    else:  # a run from before the bill split
        ax.bar(xi + w / 2, b["net_cost_usd"], width=w, color="#1f77b4", label="with the market (net cost)")
    ax.plot(xi, b["saving_usd"], "D", ms=3.5, color="#2ca02c", label="saving (baseline - market)")
    ax.axhline(0, color="black", lw=0.6)
    if n <= 80:
        ax.set_xticks(xi, b.index.tolist(), rotation=90, fontsize=7 if n > 30 else 9)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_xlabel("prosumer [participant, sorted by saving]")
    ax.set_ylabel("bill over the study [USD]")
    more = int((b["saving_usd"] < 0).sum())
    ax.set_title(f"Per-prosumer bills: mean saving {b['saving_usd'].mean():.3f} USD per prosumer; "
                 f"{more} of {n} pay more than the baseline")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax)
    return Plot("bills", "Per-prosumer bills against a no-market baseline",
                "Net cost per prosumer over the study (settlements.net_cost_usd, negative = "
                "income), split into its parts: energy bought and sold in the market at the "
                "trades' prices, energy bought at retail to replace a peer purchase the DSO "
                "curtailed, the imbalance between metered and scheduled energy at the "
                f"imbalance price (market.imbalance_price: {r.cfg.market.imbalance_price}), and "
                "network charges; against the baseline without the market: the same metered "
                "energy (settlements.metered_kwh) billed per interval at the interval's retail "
                "price when importing and its feed-in price when exporting (results/tariff.parquet). A prosumer pays more than the "
                "baseline when its imbalance (bought at retail, sold at feed-in under the "
                "tariff rule) costs more than the market saved it. Sorted by saving.", fig)


def fig_grid_exchange(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("grid") or d.g_t is None:
        return html.Text("Grid import / export: no grid table in this run.")
    lim = r.cfg.limits
    present, x = r.series_x(d.g_t)
    p = d.g_p["mean"].values()[present]
    fig, (ax,) = _new_figure(4.0)
    ax.plot(x, p, color="black", lw=1.0,
            label="substation active power" + (" (mean over the bin)" if d.steps.binned else ""))
    if (p > 0).any():
        ax.fill_between(x, 0, p, where=p >= 0, color="#1f77b4", alpha=0.35, lw=0, label="import")
    if (p < 0).any():
        ax.fill_between(x, 0, p, where=p < 0, color="#2ca02c", alpha=0.45, lw=0, label="export")
    if d.steps.binned:
        ax.fill_between(x, d.g_p["min"].values()[present], d.g_p["max"].values()[present], color="0.25",
                        alpha=0.35, lw=0, label="min - max over the bin")
    if lim.substation_import_max_kw is not None:
        ax.axhline(lim.substation_import_max_kw, color="#d62728", ls="--",
                   label=f"import cap {lim.substation_import_max_kw:g} kW")
    if lim.substation_export_max_kw is not None:
        ax.axhline(-lim.substation_export_max_kw, color="#9467bd", ls="--",
                   label=f"export cap {lim.substation_export_max_kw:g} kW")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("substation P (+ import, - export) [kW]")
    imp = float(d.g_p["import"].values()[present].sum() * r.step_h)
    exp = float(d.g_p["export"].values()[present].sum() * r.step_h)
    ax.set_title(f"Grid import / export at the substation: {imp:,.0f} kWh in, {exp:,.0f} kWh out")
    r.time_axis(ax)
    _legend(ax, outside=True)
    caps = "" if (lim.substation_import_max_kw is None and lim.substation_export_max_kw is None) else \
        " Dashed: the configured substation caps."
    return Plot("grid_exchange", "Grid import / export at the substation",
                "Active power through the feeder's source (grid.source_p_kw) per physics step, "
                "positive = import from the upstream grid." + caps
                + r.step_bin_note(d.steps, "the mean over the bin (its energy), with the bin's minimum - "
                                  "maximum as a grey band"), fig)


def fig_curtailment(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("curtailment_energy") or d.curtailed_kwh <= 0:
        why = "controllers disabled" if not r.cfg.controllers.enabled else "no limit needed it"
        return html.Text(f"Curtailment by cause: no PV energy was curtailed or held back in this run ({why}).")
    tl = r.cfg.timeline
    b = d.intervals
    causes = [c for c in CAUSE_COLOURS if c in d.curtailed] + sorted(set(d.curtailed) - set(CAUSE_COLOURS))
    x0 = r.h0 + b.starts() * tl.interval_h
    fig, (ax,) = _new_figure(4.0)
    bottom = np.zeros(b.n)
    for c in causes:
        vals = d.curtailed[c].values()
        ax.bar(x0, vals, bottom=bottom, width=b.width * tl.interval_h, align="edge", lw=0.3, edgecolor="white",
               color=CAUSE_COLOURS.get(c, "#17becf"),
               label=f"{CAUSE_LABELS.get(c, c)}: {vals.sum():.1f} kWh")
        bottom += vals
    ax.set_ylabel("curtailed PV energy per interval [kWh]" if not b.binned else
                  f"curtailed PV energy per bin of {b.width} intervals [kWh]")
    ax.set_title(f"Curtailment by cause: {bottom.sum():.1f} kWh in total")
    r.time_axis(ax)
    _legend(ax, outside=True)
    return Plot("curtailment", "Curtailment by cause",
                "PV energy held back per market interval (curtailment_energy), stacked by the limit "
                "that caused it: DSO curtailment for over-voltage, thermal, unbalance or the "
                "substation export cap, the inverters' Volt-Watt, and energy held back ex ante by "
                "operating envelopes." + r.interval_bin_note("energy summed over the bin"), fig)


def fig_line_loading(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("lines") or d.ln_peak is None:
        return html.Text("Line loading: no lines table in this run (feeder.lines_top_n = 0?).")
    lim = r.cfg.limits
    peak = d.ln_peak.sort_values(ascending=False)
    top = peak.index[:TOP_LINES].astype(str).tolist()
    present, x = r.series_x(d.ln_t)
    fig, (ax,) = _new_figure(4.0)
    for e in top:
        ax.plot(x, d.ln_series[e].values()[present], lw=1.2, label=f"{e} (peak {peak[e]:.0f} %)")
    ax.axhline(100.0, color="#d62728", ls="--", lw=1, label="100 % of rating")
    if abs(lim.thermal_max_pct - 100.0) > 1e-9:
        ax.axhline(lim.thermal_max_pct, color="#9467bd", ls=":", lw=1,
                   label=f"thermal limit {lim.thermal_max_pct:g} %")
    ax.set_ylim(0, max(110.0, float(peak.iloc[0]) * 1.05))
    ax.set_ylabel("loading [% of rating]")
    ax.set_title(f"Loading of the {len(top)} most loaded lines and transformers")
    r.time_axis(ax)
    _legend(ax, outside=True)
    return Plot("line_loading", "Loading of the most loaded lines and transformers",
                f"The {len(top)} elements with the highest peak loading (lines.loading_pct: max phase "
                "current / NormAmps for lines, kVA / rated kVA for transformers). The lines table "
                f"keeps the {r.cfg.feeder.lines_top_n} most loaded elements of each step; a gap "
                "means the element was not among them."
                + r.step_bin_note(d.steps, "the maximum over the bin"), fig)


def fig_unbalance(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("unbalance") or d.ub_peak is None:
        return html.Text("Voltage unbalance: no three-phase buses in this run (unbalance table empty).")
    lim = r.cfg.limits
    present, x = r.series_x(d.ub_t)
    peak = d.ub_peak.sort_values(ascending=False)
    fig, (ax,) = _new_figure(4.0)
    ax.plot(x, d.ub_max.values()[present], color="black", lw=2.0, alpha=0.5,
            label=f"max over {len(d.ub_peak)} three-phase buses")
    for b in peak.index[:WORST_BUSES]:
        ax.plot(x, d.ub_series[b].values()[present], lw=1.0, label=f"bus {b} (peak {peak[b]:.2f} %)")
    ax.axhline(lim.vuf_max_pct, color="#d62728", ls="--", lw=1, label=f"limit {lim.vuf_max_pct:g} %")
    ax.set_ylim(0, max(lim.vuf_max_pct * 1.15, float(peak.iloc[0]) * 1.1))
    ax.set_ylabel("voltage unbalance factor [%]")
    ax.set_title(f"Voltage unbalance of three-phase buses (worst {float(peak.iloc[0]):.2f} %)")
    r.time_axis(ax)
    _legend(ax, outside=True)
    return Plot("unbalance", "Voltage unbalance",
                "Voltage unbalance factor (negative- over positive-sequence voltage, IEC 61000-4-30) of "
                "every three-phase bus after control (unbalance.vuf_pct): the maximum over the buses "
                f"and the {WORST_BUSES} buses with the highest peak, against limits.vuf_max_pct."
                + r.step_bin_note(d.steps, "the maximum over the bin"), fig)


def fig_losses(r: _Run) -> Plot | html.Text:
    d = r.data
    if not d.has("grid") or d.g_t is None:
        return html.Text("Losses: no grid table in this run.")
    present, x = r.series_x(d.g_t)
    loss = d.g_loss["mean"].values()[present]
    total_kwh = float(d.g_loss["sum"].values()[present].sum() * r.step_h)
    fig, (ax,) = _new_figure(4.0)
    caption = "Feeder losses per physics step (grid.losses_kw, OpenDSS)."
    if d.c_loss:
        cust = d.c_loss["cust_mean"].values()[present]
        back = d.c_loss["back_mean"].values()[present]
        cust_sum = d.c_loss["cust_sum"].values()[present].sum()
        back_sum = d.c_loss["back_sum"].values()[present].sum()
        share = 100.0 * cust_sum / max(cust_sum + back_sum, 1e-12)
        ax.stackplot(x, cust, back, colors=["#1f77b4", "#bbbbbb"], alpha=0.7,
                     labels=[f"allocated to prosumers ({share:.0f} %)",
                             f"allocated to background load ({100 - share:.0f} %)"])
        caption += (" Stacked: the losses traced along the feeder graph and shared by the users of "
                    "each element (customer_losses), prosumers vs the model's own (background) loads.")
    ax.plot(x, loss, color="black", lw=1.0, label=f"total losses ({total_kwh:,.1f} kWh)")
    ax.set_ylabel("losses [kW]")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Feeder losses: {total_kwh:,.1f} kWh over the study")
    r.time_axis(ax)
    _legend(ax, outside=True)
    return Plot("losses", "Feeder losses", caption + r.step_bin_note(d.steps, "the mean over the bin"), fig)


BUILDERS: dict[str, Callable[[_Run], Plot | html.Text]] = {
    "voltage_envelope": fig_voltage_envelope,
    "voltage_heatmap": fig_voltage_heatmap,
    "unbalance": fig_unbalance,
    "market": fig_market,
    "bills": fig_bills,
    "grid_exchange": fig_grid_exchange,
    "line_loading": fig_line_loading,
    "losses": fig_losses,
    "curtailment": fig_curtailment,
}
assert tuple(BUILDERS) == FIGURE_IDS


# ---- months ----------------------------------------------------------------------------

MONTHS_FIGURE = "months"
FEEDER_ENERGY = tuple(kpi for kpi in ENERGY_KPIS if kpi.key in ("grid_import_kwh", "grid_export_kwh", "losses_kwh"))
#: the bars of the months figure: (panel title, y label, KPIs)
MONTH_PANELS: tuple[tuple[str, str, tuple], ...] = (
    ("Prosumers' energy", "energy per month [kWh]",
     tuple(kpi for kpi in (*ENERGY_KPIS, CURTAILMENT_KPIS[0]) if kpi not in FEEDER_ENERGY)),
    ("Feeder (prosumers and the model's own loads)", "energy per month [kWh]", FEEDER_ENERGY),
    ("Prosumers' bills", "USD per month", BILL_KPIS[:1] + BILL_KPIS[-2:]),
    ("Violations (after control, and voltage before control)", "minutes per month",
     tuple(kpi for kpi in VIOLATION_KPIS
           if kpi.unit == "min" and (kpi.key == "violation_min_before" or not kpi.key.endswith("_before")))),
)


def months_table(r: _Run) -> html.Table | html.Text:
    """The monthly table, one column per month, one row per KPI (name, unit)."""
    m = r.months
    if m is None or m.empty:
        return html.Text("Months: no monthly table for this run.")
    rows = {"days covered": [_fmt(v) for v in m["days"]]}
    for kpi in MONTHLY_KPIS:
        rows[f"{kpi.name} [{kpi.unit}]"] = [_fmt(v) for v in m[kpi.key]]
    df = pd.DataFrame(rows, index=m["label"].tolist()).T.reset_index(names="quantity")
    return html.Table("Per calendar month", df,
                      f"results/monthly.parquet: one column per calendar month in the site's time zone "
                      f"({r.cfg.site.timezone}); a partial month is labelled with the days it covers. Each "
                      "market interval counts in the month it starts in; the months add up to the study "
                      "(paid / received: per prosumer and month). Definitions: docs/outputs.md, monthly.")


def fig_months(r: _Run) -> Plot | html.Text:
    m = r.months
    if m is None or len(m) < 2:
        return html.Text("Months: the study lies within one calendar month (see the table).")
    labels = [lab.replace(" ", "\n", 1).replace(" (", "\n(").replace(", ", ",\n") for lab in m["label"]]
    x = np.arange(len(m))
    fig, axes = _new_figure(3.0 * len(MONTH_PANELS) + 0.8, nrows=len(MONTH_PANELS), sharex=False)
    for ax, (title, ylabel, kpis) in zip(axes, MONTH_PANELS, strict=True):
        kpis = [kpi for kpi in kpis if m[kpi.key].notna().any()]
        w = 0.8 / max(len(kpis), 1)
        for i, kpi in enumerate(kpis):
            ax.bar(x - 0.4 + (i + 0.5) * w, m[kpi.key].to_numpy(dtype=float), width=w, label=kpi.name)
        ax.axhline(0, color="black", lw=0.5)
        if not kpis or not np.nanmax(np.abs(m[[kpi.key for kpi in kpis]].to_numpy(dtype=float))) > 0:
            ax.set_ylim(0, 1)
            title += ": none"
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        _legend(ax, outside=True)
    fig.suptitle("Per calendar month")
    return Plot(MONTHS_FIGURE, "Energy, bills and violations per calendar month",
                "Per calendar month of the study (results/monthly.parquet): energy (prosumers' load, PV "
                "available, substation import / export, battery charging / discharging, feeder losses, "
                "peer-traded and curtailed energy), the prosumers' bills with the market summed, the "
                "no-market baseline and the saving, and the violation minutes after control (customer-"
                "minutes outside the voltage band; steps with any violation x step length; voltage also "
                "before control). A partial month has less energy for fewer days.", fig)


# ---- flexible demand ---------------------------------------------------------------------

FLEX_FIGURE = "flex"


@dataclass
class FlexSeries:
    """The flexible devices per market interval, summed over their owners (from the
    ``flex`` and ``demand_response`` tables, read in row groups)."""

    ev_kw: np.ndarray
    hvac_kw: np.ndarray
    wh_kw: np.ndarray
    dr_requested_kw: np.ndarray
    dr_cut_kw: np.ndarray
    indoor_min_c: np.ndarray
    indoor_max_c: np.ndarray
    setpoint_mean_c: np.ndarray


def flex_series(run_dir: Path, cfg: StudyFile) -> FlexSeries | None:
    """:class:`FlexSeries` of a run with flexible devices (None without the ``flex``
    table). Memory: a few arrays of the study's intervals."""
    path = table_file(run_dir, "flex")
    if not path.is_file():
        return None
    tl = cfg.timeline
    n = tl.n_intervals
    ev, hv, wh = np.zeros(n), np.zeros(n), np.zeros(n)
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    sp_sum, sp_n = np.zeros(n), np.zeros(n)
    with pq.ParquetFile(path) as f:
        for b in f.iter_batches(columns=["interval", "ev_kwh", "hvac_kwh", "indoor_c_min", "indoor_c_max",
                                         "setpoint_c", "wh_kwh"]):
            d = b.to_pandas()
            k = d["interval"].to_numpy(dtype=np.int64)
            np.add.at(ev, k, d["ev_kwh"].to_numpy(dtype=float))
            np.add.at(hv, k, d["hvac_kwh"].to_numpy(dtype=float))
            np.add.at(wh, k, d["wh_kwh"].to_numpy(dtype=float))
            has = d["setpoint_c"].notna().to_numpy()
            np.minimum.at(lo, k[has], d["indoor_c_min"].to_numpy(dtype=float)[has])
            np.maximum.at(hi, k[has], d["indoor_c_max"].to_numpy(dtype=float)[has])
            np.add.at(sp_sum, k[has], d["setpoint_c"].to_numpy(dtype=float)[has])
            np.add.at(sp_n, k[has], 1.0)
    req, cut = np.zeros(n), np.zeros(n)
    dr_path = table_file(run_dir, "demand_response")
    if dr_path.is_file():
        dr = pd.read_parquet(dr_path, columns=["interval", "requested_kw", "reduced_kwh"])
        k = dr["interval"].to_numpy(dtype=np.int64)
        np.add.at(req, k, dr["requested_kw"].to_numpy(dtype=float))
        np.add.at(cut, k, dr["reduced_kwh"].to_numpy(dtype=float) / tl.interval_h)
    with np.errstate(invalid="ignore", divide="ignore"):
        sp = np.where(sp_n > 0, sp_sum / sp_n, np.nan)
    return FlexSeries(ev_kw=ev / tl.interval_h, hvac_kw=hv / tl.interval_h, wh_kw=wh / tl.interval_h,
                      dr_requested_kw=req, dr_cut_kw=cut,
                      indoor_min_c=np.where(np.isfinite(lo), lo, np.nan),
                      indoor_max_c=np.where(np.isfinite(hi), hi, np.nan), setpoint_mean_c=sp)


def fig_flex(r: _Run, f: FlexSeries) -> Plot:
    tl = r.cfg.timeline
    x = r.hours(np.arange(tl.n_intervals) * tl.market_interval_s + tl.market_interval_s / 2.0)
    has_houses = np.isfinite(f.setpoint_mean_c).any()
    fig, axes = _new_figure(6.5 if has_houses else 3.5, nrows=2 if has_houses else 1)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(x, f.ev_kw, label="EV charging", drawstyle="steps-mid")
    ax.plot(x, f.hvac_kw, label="heat pumps / ACs", drawstyle="steps-mid")
    if f.wh_kw.any():
        ax.plot(x, f.wh_kw, label="water heaters", drawstyle="steps-mid")
    if f.dr_requested_kw.any():
        ax.plot(x, f.dr_requested_kw, label="demand response asked", drawstyle="steps-mid", ls="--")
        ax.plot(x, f.dr_cut_kw, label="demand response cut", drawstyle="steps-mid", ls=":")
    ax.set_ylabel("power, interval mean [kW]")
    ax.set_title("Flexible demand, summed over the owners")
    _legend(ax, outside=True)
    r.time_axis(ax)
    if has_houses:
        ax = axes[1]
        ax.fill_between(x, f.indoor_min_c, f.indoor_max_c, step="mid", alpha=0.3, label="indoor, lowest to highest")
        ax.plot(x, f.setpoint_mean_c, label="setpoint, mean", drawstyle="steps-mid")
        ax.set_ylabel("temperature [degC]")
        ax.set_title("Houses with a heat pump / AC")
        _legend(ax, outside=True)
        r.time_axis(ax)
    return Plot(FLEX_FIGURE, "Flexible demand: EVs, heat pumps / ACs and demand response",
                "Per market interval (results/flex and demand_response): the power the owners' EV chargers, "
                "heat pumps / ACs and water heaters drew, summed; the DSO's demand-response calls (the cut asked for) and "
                "what the devices cut against their plan; the lowest and highest indoor temperature of the "
                "houses and their mean setpoint (moved by the price under hvac.control: transactive, and by "
                "demand-response calls).", fig)


def flex_table(r: _Run) -> html.Table:
    from runner.kpis import FLEX_KPIS

    s = r.manifest.get("summary") or {}
    rows = [(kpi.name, _fmt(s.get(kpi.key, np.nan)), kpi.unit, kpi.describe(r.cfg)) for kpi in FLEX_KPIS]
    return html.Table("Flexible demand", pd.DataFrame(rows, columns=["kpi", "value", "unit", "definition"]),
                      "The comfort and charging-deadline costs, the demand response the DSO paid in "
                      "settlement (settlements.dr_paid_usd), the load its load limiters left unserved and "
                      "the under-voltage left before and after control (manifest summary).")


# ---- KPIs ------------------------------------------------------------------------------

def report_kpis(run: Path | _Run) -> pd.DataFrame:
    """The KPI table of a run folder (or a loaded run): index = key (name with unit),
    columns ``kpi``, ``value``, ``unit``, ``definition``: ``runner.kpis.REPORT_KPIS``,
    each defined there, computed from the report's aggregates (:func:`aggregate`) and
    the kpis table (``runner.kpis.report_table``).

    Sums run chunk by chunk (:func:`aggregate`): a run read in one chunk (a day of the
    default study) gives the numbers of the whole tables exactly; over several chunks a
    sum is the sum of the chunks' sums (equal within float rounding, ~1e-15 relative).
    """
    r = run if isinstance(run, _Run) else load_run(Path(run))
    return report_table(r.data, r.kpis, r.cfg)


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{v:,d}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "n/a"
        if v == 0:
            return "0"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _summary_table(r: _Run) -> html.Table | html.Text:
    s = r.manifest.get("summary")
    if not s:
        return html.Text("Run summary: manifest.json has no summary (the run did not finish?).")
    df = pd.DataFrame({"quantity": list(s), "value": [_fmt(v) for v in s.values()]})
    return html.Table("Run summary (manifest.json)", df,
                      "Totals from the kpis table, as printed at the end of the run (summary.txt).")


def _run_table(r: _Run) -> html.Table:
    m = r.manifest
    c = r.cfg
    items = {
        "study": c.study.name, "engine": m.get("engine", "?"), "status": m.get("status", "?"),
        "start": str(c.study.start), "duration [h]": _fmt(c.study.duration_s / 3600.0),
        "market interval / physics step [s]": f"{c.study.market_interval_s:g} / {c.study.physics_step_s:g}",
        "feeder": str(c.feeder.model or c.feeder.path),
        "prosumers": _fmt(c.prosumers.count),
        "market": f"{c.market.topology} / {c.market.mechanism}, network_aware {c.market.network_aware}",
        "controllers": "enabled" if c.controllers.enabled else "disabled",
        "seed": _fmt(c.study.seed), "git commit": str(m.get("git_commit", "?")),
        "wall time [s]": _fmt(m.get("wall_s", np.nan)), "created (UTC)": str(m.get("created_utc", "?")),
    }
    return html.Table("Run", pd.DataFrame({"item": list(items), "value": list(items.values())}))


# ---- assembly --------------------------------------------------------------------------

SECTIONS = (
    ("Voltage", ("voltage_envelope", "voltage_heatmap", "unbalance")),
    ("Market and bills", ("market", "bills")),
    ("Grid", ("grid_exchange", "line_loading", "losses")),
    ("Curtailment", ("curtailment",)),
)


def _blocks(r: _Run) -> dict[str, Plot | html.Text]:
    return {fid: BUILDERS[fid](r) for fid in FIGURE_IDS}


def make_figures(run_dir: Path, *, chunk_rows: int = CHUNK_ROWS) -> list[Plot]:
    """Every figure the run has data for, in report order, not yet rendered: id, title,
    caption and the matplotlib figure (for inspection; :meth:`Plot.to_html` renders it)."""
    return [b for b in _blocks(load_run(run_dir, chunk_rows=chunk_rows)).values() if isinstance(b, Plot)]


def write_report(run_dir: Path, *, quiet: bool = False, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write ``<run>/report/<figure-id>.png`` and the self-contained ``<run>/report.html``;
    returns the HTML path. The tables are read in chunks (:func:`aggregate`)."""
    t0 = time.perf_counter()
    r = load_run(run_dir, chunk_rows=chunk_rows)
    fig_dir = r.run_dir / FIGURE_DIR
    fig_dir.mkdir(exist_ok=True)
    for fid in (*FIGURE_IDS, MONTHS_FIGURE):  # no stale figure from an earlier report
        (fig_dir / f"{fid}.png").unlink(missing_ok=True)
    rendered: dict[str, html.Block] = {}
    for fid, b in _blocks(r).items():
        if isinstance(b, Plot):
            rendered[fid] = b.to_html()
            (fig_dir / f"{fid}.png").write_bytes(rendered[fid].png)
            b.fig.clear()
        else:
            rendered[fid] = b
    k = report_kpis(r)
    kt = k.reset_index(drop=True)
    kt["value"] = [_fmt(v) for v in kt["value"]]
    key_blocks: list[html.Block] = [
        html.Table("Key performance indicators", kt[["kpi", "value", "unit", "definition"]]),
        html.Text(REFERENCES),
        _summary_table(r),
        _run_table(r),
    ]
    sections = [("Key performance indicators and run summary", key_blocks)]
    months = fig_months(r)
    if isinstance(months, Plot):
        rendered[MONTHS_FIGURE] = months.to_html()
        (fig_dir / f"{MONTHS_FIGURE}.png").write_bytes(rendered[MONTHS_FIGURE].png)
        months.fig.clear()
    sections.append(("Months", [months_table(r), rendered.get(MONTHS_FIGURE, months)]))
    (fig_dir / f"{FLEX_FIGURE}.png").unlink(missing_ok=True)
    flex = flex_series(r.run_dir, r.cfg)
    if flex is not None:  # EVs, heat pumps / ACs
        plot = fig_flex(r, flex)
        rendered[FLEX_FIGURE] = plot.to_html()
        (fig_dir / f"{FLEX_FIGURE}.png").write_bytes(rendered[FLEX_FIGURE].png)
        plot.fig.clear()
        sections.append(("Flexible demand", [flex_table(r), rendered[FLEX_FIGURE]]))
    sections += [(name, [rendered[f] for f in ids]) for name, ids in SECTIONS]
    c = r.cfg
    subtitle = (f"{r.run_dir.name}: {c.study.start}, {c.study.duration_s / 3600:g} h, "
                f"{c.prosumers.count} prosumers on {c.feeder.model or c.feeder.path}, "
                f"{c.market.topology} / {c.market.mechanism}, engine {r.manifest.get('engine', '?')}")
    out = r.run_dir / REPORT_FILE
    out.write_text(html.page(f"tecosim report: {c.study.name}", subtitle, sections), encoding="utf-8")
    if not quiet:
        n = sum(isinstance(b, html.Figure) for b in rendered.values())
        print(f"tecosim report: {out} ({n} figures, {time.perf_counter() - t0:.1f} s)")
    return out
