"""Frozen reference: runner/report.py as of commit c514ee0 (whole tables in memory),
kept verbatim for the tests that check the streamed report draws the same figures
for short runs. Do not edit.

The study report of one run folder: ``<run>/report.html`` (self-contained, figures
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
=====================  ===============================================================

A figure whose table is missing or empty (e.g. no curtailment) becomes a text block
saying so, and no PNG. The KPI table's definitions are in :func:`report_kpis`.

Time axes are local clock hours of ``study.start`` (its UTC offset): 10.5 = 10:30.
Matplotlib draws on its Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), without
pyplot: no global backend switch, no figure registry, safe in any host process.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from federates.common.config import StudyFile, validate
from runner import html
from runner.run_folder import read_tables
from tests.reference.post_run_v0 import kpis as kpis_table

CONFIG_FILE = "config.resolved.yaml"
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
    "v_max": "#d62728", "thermal": "#ff7f0e", "vuf": "#9467bd", "export": "#8c564b",
    "volt_watt": "#1f77b4", "envelope": "#7f7f7f",
}
CAUSE_LABELS = {
    "v_max": "over-voltage (DSO)", "thermal": "thermal (DSO)", "vuf": "unbalance (DSO)",
    "export": "substation export cap (DSO)", "volt_watt": "Volt-Watt (inverter)",
    "envelope": "held back by envelope (ex ante)",
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


# ---- context -------------------------------------------------------------------------

@dataclass
class _Run:
    """Everything the figures need, read once from the run folder."""

    run_dir: Path
    cfg: StudyFile
    tables: dict[str, pd.DataFrame]
    manifest: dict

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

    def table(self, name: str) -> pd.DataFrame | None:
        """The table, or None when it is missing or empty."""
        df = self.tables.get(name)
        return None if df is None or df.empty else df

    def time_axis(self, ax) -> None:
        ax.set_xlabel(self.time_label)
        ax.set_xlim(self.h0, self.h0 + self.cfg.study.duration_s / 3600.0)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=13, steps=[1, 2, 2.5, 5, 10]))
        ax.grid(True, alpha=0.3)


def load_run(run_dir: Path) -> _Run:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    cfg = validate(yaml.safe_load(path.read_text()), base_dir=run_dir, source=str(path))
    tables = read_tables(run_dir)
    if "kpis" not in tables and {"voltages", "grid", "clearing", "settlements", "control",
                                 "trades"} <= tables.keys():
        tables["kpis"] = kpis_table(cfg, tables)
    mpath = run_dir / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else {}
    return _Run(run_dir=run_dir, cfg=cfg, tables=tables, manifest=manifest)


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

def _pivot(df: pd.DataFrame, column: str, by: str, value: str) -> pd.DataFrame:
    """step x ``by`` matrix of ``value`` (rows = every step present in ``df``)."""
    return df.pivot(index=column, columns=by, values=value)


def fig_voltage_envelope(r: _Run) -> Plot | html.Text:
    v = r.table("voltages")
    if v is None:
        return html.Text("Customer voltage envelope: no voltages table in this run.")
    lim = r.cfg.limits
    phases = sorted(v["phase"].astype(str).unique())
    t_of_step = v.groupby("step")["t_s"].first()
    x = r.hours(t_of_step.to_numpy())
    fig, axes = _new_figure(0.6 + 2.9 * len(phases), nrows=len(phases))
    q = [0, 5, 50, 95, 100]
    for ax, ph in zip(axes, phases, strict=True):
        sub = v[v["phase"].astype(str) == ph]
        n = sub["participant"].nunique()
        for col, colour, alpha, tag in (("v_before_pu", "#ff7f0e", 0.45, "before control"),
                                        ("v_pu", "#1f77b4", 1.0, "after control")):
            arr = _pivot(sub, "step", "participant", col).reindex(t_of_step.index).to_numpy()
            pct = np.nanpercentile if np.isnan(arr).any() else np.percentile  # nan* is slow
            p0, p5, p50, p95, p100 = pct(arr, q, axis=1)
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
                f"the limits band ({lim.voltage_band}).", fig)


def fig_voltage_heatmap(r: _Run) -> Plot | html.Text:
    v = r.table("voltages")
    if v is None:
        return html.Text("Voltage heat map: no voltages table in this run.")
    lim = r.cfg.limits
    who = (v.groupby("participant", observed=True)[["bus", "phase"]].first()
           .astype(str).reset_index().sort_values(["phase", "bus", "participant"]))
    order = who["participant"].tolist()
    piv = _pivot(v, "step", "participant", "v_pu")
    t_of_step = v.groupby("step")["t_s"].first().reindex(piv.index)
    arr = piv[order].to_numpy().T  # customers x steps
    x = r.hours(t_of_step.to_numpy())
    dx = r.step_h
    n = len(order)
    fig, (ax,) = _new_figure(max(4.0, min(11.0, 1.6 + 0.13 * n)))
    lo = min(float(np.nanmin(arr)), lim.v_min_pu) - 0.005
    hi = max(float(np.nanmax(arr)), lim.v_max_pu) + 0.005
    norm = TwoSlopeNorm(vmin=min(lo, 0.999), vcenter=1.0, vmax=max(hi, 1.001))
    im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap="RdBu_r", norm=norm,
                   extent=(x[0], x[-1] + dx, n - 0.5, -0.5))
    cb = fig.colorbar(im, ax=ax, pad=0.01)
    cb.set_label("customer voltage (final) [pu]")
    handles = []
    yy = np.arange(n)
    xc = x + dx / 2
    for level, name, colour in ((lim.v_max_pu, "v_max", "black"), (lim.v_min_pu, "v_min", "#2ca02c")):
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
                "band is crossed.", fig)


def fig_market(r: _Run) -> Plot | html.Text:
    cl = r.table("clearing")
    if cl is None:
        return html.Text("Market: no clearing table in this run.")
    m = r.cfg.market
    tl = r.cfg.timeline
    k = cl["interval"].to_numpy()
    x0 = r.h0 + k * tl.interval_h
    fig, (ax1, ax2) = _new_figure(6.0, nrows=2)
    price = cl["price_usd_per_kwh"].to_numpy(dtype=float)
    ax1.hlines(price, x0, x0 + tl.interval_h, color="#1f77b4", lw=2.0, label="clearing price")
    tr = r.tables.get("trades")
    if tr is not None and not tr.empty:
        peer = tr[tr["kind"] == "peer"]
        if not peer.empty:
            vol = peer.groupby("interval")["energy_kwh"].sum()
            paid = (peer["energy_kwh"] * peer["price_usd_per_kwh"]).groupby(peer["interval"]).sum()
            mean = (paid / vol.where(vol > 0)).dropna()
            ax1.plot(r.h0 + (mean.index.to_numpy() + 0.5) * tl.interval_h, mean.to_numpy(), "o",
                     ms=3, color="#ff7f0e", label="mean peer trade price (volume-weighted)")
    ax1.axhline(m.retail_usd_per_kwh, color="#d62728", ls="--", lw=1,
                label=f"retail tariff {m.retail_usd_per_kwh:.3f}")
    ax1.axhline(m.feed_in_usd_per_kwh, color="#2ca02c", ls="--", lw=1,
                label=f"feed-in tariff {m.feed_in_usd_per_kwh:.3f}")
    ax1.set_ylabel("price [USD/kWh]")
    ax1.set_title(f"Clearing price per interval ({m.topology} / {m.mechanism})")
    r.time_axis(ax1)
    _legend(ax1, outside=True)
    ax2.bar(x0, cl["traded_kwh"].to_numpy(dtype=float), width=tl.interval_h, align="edge",
            color="#1f77b4", edgecolor="white", lw=0.4, label="peer-traded energy")
    if "unmatched_sell_kwh" in cl and "unmatched_buy_kwh" in cl:
        ax2.step(np.r_[x0, x0[-1] + tl.interval_h], np.r_[cl["unmatched_sell_kwh"], cl["unmatched_sell_kwh"].iloc[-1]],
                 where="post", color="#2ca02c", lw=1, label="unmatched offers (to utility)")
        ax2.step(np.r_[x0, x0[-1] + tl.interval_h], np.r_[cl["unmatched_buy_kwh"], cl["unmatched_buy_kwh"].iloc[-1]],
                 where="post", color="#d62728", lw=1, label="unmatched bids (from utility)")
    ax2.set_ylabel("energy per interval [kWh]")
    ax2.set_title("Traded energy per market interval")
    r.time_axis(ax2)
    _legend(ax2, outside=True)
    fig.suptitle("Market clearing: price and traded energy")
    return Plot("market", "Clearing price and traded energy",
                "Top: the interval's clearing price (clearing.price_usd_per_kwh; none without a peer "
                "trade) and the volume-weighted price of the peer trades, between the utility's "
                "feed-in and retail tariffs. Bottom: peer-traded energy per interval "
                "(clearing.traded_kwh) and what was left to the utility.", fig)


def baseline_bills(settlements: pd.DataFrame, retail_usd_per_kwh: float,
                   feed_in_usd_per_kwh: float) -> pd.DataFrame:
    """Per participant: ``net_cost_usd`` (with the market, summed over intervals),
    ``baseline_usd`` (no market: the same metered energy ``m`` billed at the tariffs,
    per interval net: ``sum_k max(m_k, 0) * retail - max(-m_k, 0) * feed_in``) and
    ``saving_usd = baseline_usd - net_cost_usd``; sorted by saving, largest first."""
    m = settlements["metered_kwh"].to_numpy(dtype=float)
    base = np.clip(m, 0, None) * retail_usd_per_kwh - np.clip(-m, 0, None) * feed_in_usd_per_kwh
    df = pd.DataFrame({"participant": settlements["participant"].astype(str).to_numpy(),
                       "net_cost_usd": settlements["net_cost_usd"].to_numpy(dtype=float),
                       "baseline_usd": base})
    out = df.groupby("participant").sum()
    out["saving_usd"] = out["baseline_usd"] - out["net_cost_usd"]
    return out.sort_values("saving_usd", ascending=False)


def fig_bills(r: _Run) -> Plot | html.Text:
    st = r.table("settlements")
    if st is None:
        return html.Text("Bills: no settlements in this run.")
    m = r.cfg.market
    b = baseline_bills(st, m.retail_usd_per_kwh, m.feed_in_usd_per_kwh)
    n = len(b)
    xi = np.arange(n)
    fig, (ax,) = _new_figure(4.6)
    w = 0.4
    ax.bar(xi - w / 2, b["baseline_usd"], width=w, color="#bbbbbb", label="no-market baseline (retail / feed-in)")
    ax.bar(xi + w / 2, b["net_cost_usd"], width=w, color="#1f77b4", label="with the market (net cost)")
    ax.plot(xi, b["saving_usd"], "D", ms=3.5, color="#2ca02c", label="saving (baseline - market)")
    ax.axhline(0, color="black", lw=0.6)
    if n <= 80:
        ax.set_xticks(xi, b.index.tolist(), rotation=90, fontsize=7 if n > 30 else 9)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_xlabel("prosumer [participant, sorted by saving]")
    ax.set_ylabel("bill over the study [USD]")
    ax.set_title(f"Per-prosumer bills: mean saving {b['saving_usd'].mean():.3f} USD per prosumer")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax)
    return Plot("bills", "Per-prosumer bills against a no-market baseline",
                "Net cost per prosumer over the study (settlements.net_cost_usd, negative = "
                "income) against the baseline without the market: the same metered energy "
                "(settlements.metered_kwh) billed per interval at the retail tariff when "
                "importing and the feed-in tariff when exporting. Sorted by saving.", fig)


def fig_grid_exchange(r: _Run) -> Plot | html.Text:
    g = r.table("grid")
    if g is None:
        return html.Text("Grid import / export: no grid table in this run.")
    lim = r.cfg.limits
    x = r.hours(g["t_s"].to_numpy())
    p = g["source_p_kw"].to_numpy(dtype=float)
    fig, (ax,) = _new_figure(4.0)
    ax.plot(x, p, color="black", lw=1.0, label="substation active power")
    if (p > 0).any():
        ax.fill_between(x, 0, p, where=p >= 0, color="#1f77b4", alpha=0.35, lw=0, label="import")
    if (p < 0).any():
        ax.fill_between(x, 0, p, where=p < 0, color="#2ca02c", alpha=0.45, lw=0, label="export")
    if lim.substation_import_max_kw is not None:
        ax.axhline(lim.substation_import_max_kw, color="#d62728", ls="--",
                   label=f"import cap {lim.substation_import_max_kw:g} kW")
    if lim.substation_export_max_kw is not None:
        ax.axhline(-lim.substation_export_max_kw, color="#9467bd", ls="--",
                   label=f"export cap {lim.substation_export_max_kw:g} kW")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("substation P (+ import, - export) [kW]")
    imp = float(np.clip(p, 0, None).sum() * r.step_h)
    exp = float(np.clip(-p, 0, None).sum() * r.step_h)
    ax.set_title(f"Grid import / export at the substation: {imp:,.0f} kWh in, {exp:,.0f} kWh out")
    r.time_axis(ax)
    _legend(ax, outside=True)
    caps = "" if (lim.substation_import_max_kw is None and lim.substation_export_max_kw is None) else \
        " Dashed: the configured substation caps."
    return Plot("grid_exchange", "Grid import / export at the substation",
                "Active power through the feeder's source (grid.source_p_kw) per physics step, "
                "positive = import from the upstream grid." + caps, fig)


def fig_curtailment(r: _Run) -> Plot | html.Text:
    ce = r.table("curtailment_energy")
    if ce is None or float(ce["energy_kwh"].sum()) <= 0:
        why = "controllers disabled" if not r.cfg.controllers.enabled else "no limit needed it"
        return html.Text(f"Curtailment by cause: no PV energy was curtailed or held back in this run ({why}).")
    tl = r.cfg.timeline
    k = ce["step"].to_numpy() // tl.steps_per_interval
    by = ce.groupby([k, ce["limit"].astype(str)])["energy_kwh"].sum().unstack(fill_value=0.0)
    by = by.reindex(np.arange(tl.n_intervals), fill_value=0.0)
    causes = [c for c in CAUSE_COLOURS if c in by.columns] + sorted(set(by.columns) - set(CAUSE_COLOURS))
    x0 = r.h0 + by.index.to_numpy() * tl.interval_h
    fig, (ax,) = _new_figure(4.0)
    bottom = np.zeros(len(by))
    for c in causes:
        vals = by[c].to_numpy()
        ax.bar(x0, vals, bottom=bottom, width=tl.interval_h, align="edge", lw=0.3, edgecolor="white",
               color=CAUSE_COLOURS.get(c, "#17becf"),
               label=f"{CAUSE_LABELS.get(c, c)}: {vals.sum():.1f} kWh")
        bottom += vals
    ax.set_ylabel("curtailed PV energy per interval [kWh]")
    ax.set_title(f"Curtailment by cause: {bottom.sum():.1f} kWh in total")
    r.time_axis(ax)
    _legend(ax, outside=True)
    return Plot("curtailment", "Curtailment by cause",
                "PV energy held back per market interval (curtailment_energy), stacked by the limit "
                "that caused it: DSO curtailment for over-voltage, thermal, unbalance or the "
                "substation export cap, the inverters' Volt-Watt, and energy held back ex ante by "
                "operating envelopes.", fig)


def fig_line_loading(r: _Run) -> Plot | html.Text:
    ln = r.table("lines")
    if ln is None:
        return html.Text("Line loading: no lines table in this run (feeder.lines_top_n = 0?).")
    lim = r.cfg.limits
    peak = ln.groupby("element", observed=True)["loading_pct"].max().sort_values(ascending=False)
    top = peak.index[:TOP_LINES].astype(str).tolist()
    steps = np.sort(ln["step"].unique())
    t_of_step = ln.groupby("step")["t_s"].first().reindex(steps)
    piv = _pivot(ln[ln["element"].astype(str).isin(top)], "step", "element", "loading_pct").reindex(steps)
    x = r.hours(t_of_step.to_numpy())
    fig, (ax,) = _new_figure(4.0)
    for e in top:
        ax.plot(x, piv[e].to_numpy(), lw=1.2, label=f"{e} (peak {peak[e]:.0f} %)")
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
                "means the element was not among them.", fig)


def fig_unbalance(r: _Run) -> Plot | html.Text:
    ub = r.table("unbalance")
    if ub is None:
        return html.Text("Voltage unbalance: no three-phase buses in this run (unbalance table empty).")
    lim = r.cfg.limits
    piv = _pivot(ub, "step", "bus", "vuf_pct")
    t_of_step = ub.groupby("step")["t_s"].first().reindex(piv.index)
    x = r.hours(t_of_step.to_numpy())
    peak = piv.max().sort_values(ascending=False)
    fig, (ax,) = _new_figure(4.0)
    ax.plot(x, piv.max(axis=1).to_numpy(), color="black", lw=2.0, alpha=0.5,
            label=f"max over {piv.shape[1]} three-phase buses")
    for b in peak.index[:WORST_BUSES]:
        ax.plot(x, piv[b].to_numpy(), lw=1.0, label=f"bus {b} (peak {peak[b]:.2f} %)")
    ax.axhline(lim.vuf_max_pct, color="#d62728", ls="--", lw=1, label=f"limit {lim.vuf_max_pct:g} %")
    ax.set_ylim(0, max(lim.vuf_max_pct * 1.15, float(peak.iloc[0]) * 1.1))
    ax.set_ylabel("voltage unbalance factor [%]")
    ax.set_title(f"Voltage unbalance of three-phase buses (worst {float(peak.iloc[0]):.2f} %)")
    r.time_axis(ax)
    _legend(ax, outside=True)
    return Plot("unbalance", "Voltage unbalance",
                "Voltage unbalance factor (negative- over positive-sequence voltage, IEC 61000-4-30) of "
                "every three-phase bus after control (unbalance.vuf_pct): the maximum over the buses "
                f"and the {WORST_BUSES} buses with the highest peak, against limits.vuf_max_pct.", fig)


def fig_losses(r: _Run) -> Plot | html.Text:
    g = r.table("grid")
    if g is None:
        return html.Text("Losses: no grid table in this run.")
    x = r.hours(g["t_s"].to_numpy())
    loss = g["losses_kw"].to_numpy(dtype=float)
    total_kwh = float(loss.sum() * r.step_h)
    fig, (ax,) = _new_figure(4.0)
    cl = r.table("customer_losses")
    caption = "Feeder losses per physics step (grid.losses_kw, OpenDSS)."
    if cl is not None:
        bg = cl["participant"].astype(str) == "background"
        cust = cl[~bg].groupby("step")["loss_kw"].sum().reindex(g["step"], fill_value=0.0).to_numpy()
        back = cl[bg].groupby("step")["loss_kw"].sum().reindex(g["step"], fill_value=0.0).to_numpy()
        share = 100.0 * cust.sum() / max(cust.sum() + back.sum(), 1e-12)
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
    return Plot("losses", "Feeder losses", caption, fig)


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


# ---- KPIs ------------------------------------------------------------------------------

def report_kpis(run: Path | _Run) -> pd.DataFrame:
    """The KPI table of a run folder (or a loaded run): index = key (name with unit),
    columns ``kpi``, ``value``, ``unit``, ``definition``. Definitions:

    - ``energy_traded_kwh``: sum of ``trades.energy_kwh`` of kind ``peer``.
    - ``self_sufficiency_community_pct`` (Luthander et al. 2015, at community level):
      per step the community's local supply ``S = sum_i (pv_kw - battery_kw) -
      curtailed_p_kw`` (PV delivered after curtailment, battery discharge adds, charging
      subtracts) and load ``L = sum_i load_kw``; ``100 * sum_t min(L, max(S, 0)) /
      sum_t L``: the share of the consumption the community, netted behind one
      virtual meter, does not draw from the grid (1 - net import / load where S >= 0).
    - ``self_sufficiency_households_pct``: ``min(load, max(supply, 0))`` per household
      and step, summed, over the same total load (each household alone, no sharing).
    - ``curtailed_share_pct``: ``sum(curtailment_energy.energy_kwh)`` (every cause,
      ex-ante envelopes included) / available PV energy ``sum(profiles.pv_kw) * step_h``.
    - ``violation_min_before`` / ``_after``: customer-voltage violation minutes, kpis table
      (steps with any customer outside the limits band x step length).
    - ``vuf_max_pct``: the maximum of ``unbalance.vuf_pct`` (after control).
    - ``losses_kwh``: ``sum(grid.losses_kw) * step_h``; ``losses_pct_of_import``: over the
      substation import ``sum(max(grid.source_p_kw, 0)) * step_h``.
    - ``welfare_usd``: sum of ``clearing.welfare_usd``.
    - ``mean_bill_saving_usd``: mean over prosumers of ``baseline - net cost`` (see
      :func:`baseline_bills`); ``mean_bill_saving_pct``: total saving / total
      ``|baseline|`` x 100.
    """
    r = run if isinstance(run, _Run) else load_run(Path(run))
    t = r.tables
    cfg = r.cfg
    step_h = r.step_h
    rows: list[tuple[str, str, float, str, str]] = []

    def add(key, name, value, unit, definition):
        rows.append((key, name, float(value), unit, definition))

    tr = t.get("trades")
    traded = float(tr.loc[tr["kind"] == "peer", "energy_kwh"].sum()) if tr is not None and not tr.empty else 0.0
    add("energy_traded_kwh", "energy traded peer-to-peer", traded, "kWh", "sum of the peer trades' energy")

    pr = r.table("profiles")
    v = r.table("voltages")
    comm = house = total_load = pv_kwh = np.nan
    if pr is not None:
        load = pr.pivot(index="step", columns="participant", values="load_kw")
        supply = (pr.pivot(index="step", columns="participant", values="pv_kw")
                  - pr.pivot(index="step", columns="participant", values="battery_kw"))
        if v is not None:
            curt = v.pivot(index="step", columns="participant", values="curtailed_p_kw")
            supply = supply - curt.reindex_like(supply).fillna(0.0)
        total_load = float(load.to_numpy().sum())
        L = load.sum(axis=1).to_numpy()
        S = supply.sum(axis=1).to_numpy()
        comm = float(np.minimum(L, np.clip(S, 0, None)).sum())
        house = float(np.minimum(load.to_numpy(), np.clip(supply.to_numpy(), 0, None)).sum())
        pv_kwh = float(pr["pv_kw"].sum() * step_h)
    add("self_sufficiency_community_pct", "self-sufficiency, community",
        100.0 * comm / total_load if total_load > 0 else np.nan, "%",
        "sum over steps of min(load, local supply) / load, all prosumers as one community; "
        "local supply = PV delivered after curtailment + battery discharge - charging "
        "(Luthander et al. 2015)")
    add("self_sufficiency_households_pct", "self-sufficiency, households alone",
        100.0 * house / total_load if total_load > 0 else np.nan, "%",
        "the same per household before summing (no sharing between prosumers)")
    ce = t.get("curtailment_energy")
    curtailed = float(ce["energy_kwh"].sum()) if ce is not None and not ce.empty else 0.0
    add("pv_available_kwh", "PV energy available", pv_kwh, "kWh", "sum of profiles.pv_kw x step")
    add("curtailed_kwh", "PV energy curtailed or held back", curtailed, "kWh",
        # the wording of today's definition (load limits, which v0 did not know, are not PV
        # curtailment; a run without them has the same sum)
        "sum of curtailment_energy, every PV cause (DSO, Volt-Watt, envelopes; not load_limit)")
    add("curtailed_share_pct", "curtailed share", 100.0 * curtailed / pv_kwh if pv_kwh > 0 else np.nan, "%",
        "curtailed PV energy / PV energy available")

    k = t.get("kpis")
    for when in ("before", "after"):
        val = float(k[f"violation_min_{when}"].sum()) if k is not None else np.nan
        add(f"violation_min_{when}", f"voltage violation minutes {when} control", val, "min",
            f"steps with a customer voltage outside [{cfg.limits.v_min_pu:g}, {cfg.limits.v_max_pu:g}] pu "
            f"x step length ({'uncontrolled solve' if when == 'before' else 'final solve'})")
    ub = r.table("unbalance")
    add("vuf_max_pct", "worst voltage unbalance factor", float(ub["vuf_pct"].max()) if ub is not None else np.nan,
        "%", f"max over three-phase buses and steps, after control (limit {cfg.limits.vuf_max_pct:g} %)")

    g = r.table("grid")
    if g is not None:
        losses = float(g["losses_kw"].sum() * step_h)
        imported = float(np.clip(g["source_p_kw"].to_numpy(dtype=float), 0, None).sum() * step_h)
    else:
        losses = imported = np.nan
    add("losses_kwh", "feeder losses", losses, "kWh", "sum of grid.losses_kw x step")
    add("losses_pct_of_import", "losses / energy imported", 100.0 * losses / imported if imported > 0 else np.nan,
        "%", "losses over the substation import (sum of max(source_p_kw, 0) x step)")

    cl = r.table("clearing")
    add("welfare_usd", "peer welfare", float(cl["welfare_usd"].sum()) if cl is not None else np.nan, "USD",
        "sum of the clearing's welfare over the intervals")
    st = r.table("settlements")
    if st is not None:
        b = baseline_bills(st, cfg.market.retail_usd_per_kwh, cfg.market.feed_in_usd_per_kwh)
        saving = float(b["saving_usd"].mean())
        denom = float(b["baseline_usd"].abs().sum())
        pct = 100.0 * float(b["saving_usd"].sum()) / denom if denom > 0 else np.nan
    else:
        saving = pct = np.nan
    add("mean_bill_saving_usd", "mean bill saving per prosumer", saving, "USD",
        "mean over prosumers of (no-market baseline - net cost)")
    add("mean_bill_saving_pct", "mean bill saving, relative", pct, "%",
        "total saving / total |baseline bill|")
    df = pd.DataFrame(rows, columns=["key", "kpi", "value", "unit", "definition"]).set_index("key")
    return df


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


def make_figures(run_dir: Path) -> list[Plot]:
    """Every figure the run has data for, in report order, not yet rendered: id, title,
    caption and the matplotlib figure (for inspection; :meth:`Plot.to_html` renders it)."""
    return [b for b in _blocks(load_run(run_dir)).values() if isinstance(b, Plot)]


def write_report(run_dir: Path, *, quiet: bool = False) -> Path:
    """Write ``<run>/report/<figure-id>.png`` and the self-contained ``<run>/report.html``;
    returns the HTML path."""
    t0 = time.perf_counter()
    r = load_run(run_dir)
    fig_dir = r.run_dir / FIGURE_DIR
    fig_dir.mkdir(exist_ok=True)
    for fid in FIGURE_IDS:  # no stale figure from an earlier report
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
