"""The KPIs of a run, each defined once: its key, name, unit and how it is computed.

Three layers, each made from the one before or from the results tables:

- **per market interval**: the ``kpis`` table (``results/kpis.parquet``, one row per
  interval: trading, curtailment, voltage quality, grid energy, conservation errors),
  from the results tables, whole (:func:`kpis`) or read in chunks of whole intervals
  (:func:`run_kpis`, the same numbers);
- **over the study, from the kpis table**: :data:`STUDY_KPIS`, the run's ``summary``
  (:func:`summary`: ``manifest.json``, ``summary.txt``, the ``tecosim compare`` table);
- **over the study, in the report**: :data:`REPORT_KPIS`, the report's KPI table
  (:func:`report_table`), from the report's aggregates of the tables
  (``runner.report.aggregate``) and the kpis table; some of them are study KPIs too
  (the same :class:`Kpi`).

Two KPIs share the key ``curtailed_kwh`` but are different quantities:
:data:`CURTAILED` (the summary's: the peer sales the DSO curtailed, settled) and
:data:`CURTAILED_ALL_CAUSES` (the report's: every PV energy held back, Volt-Watt and
envelopes included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from federates.common.limits import Limit
from federates.common.messages import GRID_OPERATOR
from runner.run_folder import CHUNK_ROWS, RunFolder, interval_chunks

if TYPE_CHECKING:
    from federates.common.config import StudyFile
    from runner.report import ReportData


@dataclass(frozen=True)
class Kpi:
    """One KPI: ``key`` (its column / summary key, the unit as a suffix), ``name``
    (what tables call it), ``unit``, ``definition`` (how it is computed, in words; may
    name the study's ``{limits.<field>}``), ``total`` (for a study KPI: its value from
    the kpis table) and ``report_name`` (where the report's KPI table words the name
    otherwise)."""

    key: str
    name: str
    unit: str
    definition: str = ""
    total: Callable[[pd.DataFrame], float] | None = None
    report_name: str | None = None

    def describe(self, cfg: StudyFile) -> str:
        """The definition with the study's limits filled in."""
        return self.definition.format(limits=cfg.limits)


# ---- per market interval: the kpis table --------------------------------------------------

#: the tables and columns :func:`kpis` reads
KPI_COLUMNS: dict[str, list[str]] = {
    "voltages": ["step", "v_pu", "v_before_pu"],
    "grid": ["step", "source_p_kw", "losses_kw", "load_kw", "gross_kw"],
    "clearing": ["interval", "traded_kwh", "price_usd_per_kwh", "welfare_usd"],
    "settlements": ["interval", "curtailed_kwh", "imbalance_kwh", "scheduled_kwh", "metered_kwh",
                    "peer_bought_kwh", "grid_bought_kwh", "peer_sold_kwh", "grid_sold_kwh",
                    "peer_paid_usd", "peer_received_usd", "charges_paid_usd", "charges_received_usd"],
    "trades": ["interval", "kind", "energy_kwh", "price_usd_per_kwh"],
    "control": ["step", "converged"],
    "violations": ["step", "limit", "limit_value", "value_before", "value"],
}


def kpis(cfg: StudyFile, t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per market interval: trading, curtailment, voltage quality, grid energy,
    from whole tables (``read_tables``; short runs). :func:`run_kpis` reads a run
    folder in pieces and gives the same table.

    Violation minutes count physics steps in which at least one customer voltage is
    outside the ``limits`` band ``[v_min_pu, v_max_pu]``, times the step length [min];
    "before" is the uncontrolled solve of each step, "after" the final controlled one.
    ``thermal_`` / ``vuf_`` / ``substation_violation_min_*`` do the same for the
    other limits (from the ``violations`` table).
    """
    return interval_kpis(cfg, t, np.arange(cfg.timeline.n_intervals))


def run_kpis(cfg: StudyFile, run_dir: Path, *, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """The kpis table of a run folder, read in chunks of whole market intervals
    (:func:`interval_chunks`): equal to ``kpis(cfg, read_tables(run_dir))``, value for
    value (each interval's numbers come from the same rows in the same order)."""
    parts = [interval_kpis(cfg, t, k) for k, t in interval_chunks(run_dir, cfg, KPI_COLUMNS, chunk_rows=chunk_rows)]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def interval_kpis(cfg: StudyFile, t: Mapping[str, pd.DataFrame], intervals: np.ndarray) -> pd.DataFrame:
    """The kpis rows of ``intervals`` from tables ``t`` holding (at least) every row of
    those intervals: whole tables, or one chunk of :func:`interval_chunks`."""
    tl = cfg.timeline
    c = cfg.limits
    step_min = tl.physics_step_s / 60.0
    intervals = np.asarray(intervals, dtype=np.int64)
    v = t["voltages"]
    v_k = v["step"].to_numpy() // tl.steps_per_interval

    def outside(col: str) -> pd.Series:
        bad = (v[col] > c.v_max_pu) | (v[col] < c.v_min_pu)
        per_step = bad.groupby(v["step"]).any()
        return per_step.groupby(per_step.index // tl.steps_per_interval).sum() * step_min

    g = t["grid"]
    g_k = g["step"].to_numpy() // tl.steps_per_interval
    src = g["source_p_kw"].to_numpy()
    cl = t["clearing"].set_index("interval")
    st = t["settlements"].groupby("interval")
    ctrl = t["control"]
    start = pd.Timestamp(cfg.study.start)
    out = pd.DataFrame({
        "interval": intervals,
        "t_s": intervals * tl.market_interval_s,
        "time": start + pd.to_timedelta(intervals * tl.market_interval_s, unit="s"),
    })
    out["traded_kwh"] = cl["traded_kwh"].reindex(intervals, fill_value=0.0).to_numpy()
    out["clearing_price_usd_per_kwh"] = cl["price_usd_per_kwh"].reindex(intervals).to_numpy()
    # volume-weighted price of peer trades: comparable across topologies, also where
    # prices are per trade (pay-as-bid, p2p, hybrid)
    tr = t["trades"]
    peer = tr[tr["kind"] == "peer"]
    paid = (peer["energy_kwh"] * peer["price_usd_per_kwh"]).groupby(peer["interval"]).sum()
    vol = peer.groupby("interval")["energy_kwh"].sum()
    out["mean_trade_price_usd_per_kwh"] = (paid / vol.where(vol > 0)).reindex(intervals).to_numpy()
    out["welfare_usd"] = cl["welfare_usd"].reindex(intervals, fill_value=0.0).to_numpy()
    out["curtailed_kwh"] = st["curtailed_kwh"].sum().reindex(intervals, fill_value=0.0).to_numpy()
    out["imbalance_kwh"] = st["imbalance_kwh"].sum().reindex(intervals, fill_value=0.0).to_numpy()
    out["violation_min_before"] = outside("v_before_pu").reindex(intervals, fill_value=0).to_numpy().astype(float)
    out["violation_min_after"] = outside("v_pu").reindex(intervals, fill_value=0).to_numpy().astype(float)
    out["v_min_pu"] = v.groupby(v_k)["v_pu"].min().reindex(intervals).to_numpy()
    out["v_max_pu"] = v.groupby(v_k)["v_pu"].max().reindex(intervals).to_numpy()
    out["v_max_before_pu"] = v.groupby(v_k)["v_before_pu"].max().reindex(intervals).to_numpy()
    out["import_kwh"] = pd.Series(np.clip(src, 0, None) * tl.step_h).groupby(g_k).sum().reindex(intervals, fill_value=0.0).to_numpy()
    out["export_kwh"] = pd.Series(np.clip(-src, 0, None) * tl.step_h).groupby(g_k).sum().reindex(intervals, fill_value=0.0).to_numpy()
    out["losses_kwh"] = pd.Series(g["losses_kw"].to_numpy() * tl.step_h).groupby(g_k).sum().reindex(intervals, fill_value=0.0).to_numpy()
    viol = t.get("violations")
    for name, limits in (("thermal", [Limit.THERMAL]), ("vuf", [Limit.VUF]), ("substation", [Limit.IMPORT, Limit.EXPORT])):
        for when, col in (("before", "value_before"), ("after", "value")):
            if viol is None or viol.empty:
                out[f"{name}_violation_min_{when}"] = 0.0
                continue
            rows = viol[viol["limit"].isin(limits) & (viol[col] > viol["limit_value"])]
            steps = pd.Series(rows["step"].unique())
            per_k = steps.groupby(steps // tl.steps_per_interval).size() * step_min
            out[f"{name}_violation_min_{when}"] = per_k.reindex(intervals, fill_value=0).to_numpy().astype(float)
    unconverged = (~ctrl["converged"].astype(bool)).groupby(ctrl["step"] // tl.steps_per_interval).sum()
    out["unconverged_steps"] = unconverged.reindex(intervals, fill_value=0).to_numpy().astype(np.int64)
    _conservation_columns(out, t, g, g_k, intervals)
    return out


def _conservation_columns(out: pd.DataFrame, t: Mapping[str, pd.DataFrame], g: pd.DataFrame,
                          g_k: np.ndarray, intervals: np.ndarray) -> None:
    """The per-interval conservation errors of :func:`kpis` (checked by
    :func:`conservation_failures`).

    ``energy_balance_error_kwh``: max over participants of
    |scheduled + curtailed + imbalance - metered| and
    |peer_bought + grid_bought - peer_sold - grid_sold - metered| (settlement rules 4
    and the settled-energy identity, federates/market/settlement.py);
    ``money_balance_error_usd``: |sum (peer_paid + charges_paid) - sum (peer_received +
    charges_received)| over the interval's rows (the grid operator's row collects the
    network charges, settlement rule 3a); ``power_balance_error_kw``: max over the
    interval's steps of |source_p_kw - load_kw - losses_kw| (grid table) and
    ``power_balance_error_pct`` the same step's error over max(gross_kw, 1 kW) x 100.
    """
    s = t["settlements"]
    e1 = (s["scheduled_kwh"] + s["curtailed_kwh"] + s["imbalance_kwh"] - s["metered_kwh"]).abs()
    e2 = (s["peer_bought_kwh"] + s["grid_bought_kwh"] - s["peer_sold_kwh"] - s["grid_sold_kwh"]
          - s["metered_kwh"]).abs()
    energy = np.maximum(e1, e2).groupby(s["interval"]).max()
    out["energy_balance_error_kwh"] = energy.reindex(intervals, fill_value=0.0).to_numpy().astype(float)
    paid, received = s["peer_paid_usd"], s["peer_received_usd"]
    if "charges_paid_usd" in s:  # runs from before network charges were settled have none
        paid, received = paid + s["charges_paid_usd"], received + s["charges_received_usd"]
    money = (paid - received).groupby(s["interval"]).sum().abs()
    out["money_balance_error_usd"] = money.reindex(intervals, fill_value=0.0).to_numpy().astype(float)
    err = (g["source_p_kw"] - g["load_kw"] - g["losses_kw"]).abs().to_numpy()
    base = g["gross_kw"] if "gross_kw" in g else g["load_kw"].abs()  # runs before gross_kw: the net load
    pct = err / np.maximum(base.to_numpy(), 1.0) * 100.0
    out["power_balance_error_kw"] = (pd.Series(err).groupby(g_k).max()
                                     .reindex(intervals, fill_value=0.0).to_numpy().astype(float))
    out["power_balance_error_pct"] = (pd.Series(pct).groupby(g_k).max()
                                      .reindex(intervals, fill_value=0.0).to_numpy().astype(float))




#: the tables :func:`kpis` cannot do without (a run without ``violations`` has none)
KPI_TABLES = tuple(name for name in KPI_COLUMNS if name != "violations")


# ---- over the study, from the kpis table: the summary ----------------------------------

def _sum(column: str) -> Callable[[pd.DataFrame], float]:
    return lambda k: float(k[column].sum())


def _mean_trade_price(k: pd.DataFrame) -> float:
    """The intervals' peer trade prices weighted by the energy traded (NaN without a trade)."""
    priced = k.dropna(subset=["mean_trade_price_usd_per_kwh"])
    vol = float(priced["traded_kwh"].sum())
    return (float((priced["traded_kwh"] * priced["mean_trade_price_usd_per_kwh"]).sum() / vol)
            if vol > 0 else float("nan"))


_VIOLATION = "steps with a customer voltage outside [{limits.v_min_pu:g}, {limits.v_max_pu:g}] pu x step length"

ENERGY_TRADED = Kpi("energy_traded_kwh", "energy traded peer-to-peer", "kWh", "sum of the peer trades' energy",
                    total=_sum("traded_kwh"))
MEAN_PRICE = Kpi("mean_price_usd_per_kwh", "mean peer trade price", "USD/kWh",
                 "the intervals' mean peer trade prices weighted by the energy traded", total=_mean_trade_price)
CURTAILED = Kpi("curtailed_kwh", "curtailed energy", "kWh",
                "sum of settlements.curtailed_kwh (the DSO curtailment applied to scheduled sales)",
                total=_sum("curtailed_kwh"))
VIOLATION_MIN_BEFORE = Kpi("violation_min_before", "voltage violation before control", "min",
                           _VIOLATION + " (uncontrolled solve)", total=_sum("violation_min_before"),
                           report_name="voltage violation minutes before control")
VIOLATION_MIN_AFTER = Kpi("violation_min_after", "voltage violation after control", "min",
                          _VIOLATION + " (final solve)", total=_sum("violation_min_after"),
                          report_name="voltage violation minutes after control")
V_MIN = Kpi("v_min_pu", "customer voltage min", "pu", "the lowest customer voltage after control",
            total=lambda k: float(k["v_min_pu"].min()))
V_MAX = Kpi("v_max_pu", "customer voltage max", "pu", "the highest customer voltage after control",
            total=lambda k: float(k["v_max_pu"].max()))
V_MAX_BEFORE = Kpi("v_max_before_pu", "customer voltage max before control", "pu",
                   "the highest customer voltage in the uncontrolled solves",
                   total=lambda k: float(k["v_max_before_pu"].max()))
GRID_IMPORT = Kpi("grid_import_kwh", "grid import", "kWh", "sum of max(grid.source_p_kw, 0) x step",
                  total=_sum("import_kwh"))
GRID_EXPORT = Kpi("grid_export_kwh", "grid export", "kWh", "sum of max(-grid.source_p_kw, 0) x step",
                  total=_sum("export_kwh"))
LOSSES = Kpi("losses_kwh", "feeder losses", "kWh", "sum of grid.losses_kw x step", total=_sum("losses_kwh"))
UNCONVERGED = Kpi("unconverged_steps", "steps where control did not converge", "steps",
                  "steps whose control loop did not converge (control.converged false)",
                  total=lambda k: int(k["unconverged_steps"].sum()))
#: thermal, unbalance and substation violation minutes, before and after control
LIMIT_VIOLATIONS = tuple(
    Kpi(f"{limit}_violation_min_{when}", f"{name} violation {when} control", "min",
        f"steps with a {name} violation ({what}) x step length", total=_sum(f"{limit}_violation_min_{when}"))
    for limit, name, what in (("thermal", "thermal", "violations.limit thermal"),
                              ("vuf", "unbalance", "violations.limit vuf"),
                              ("substation", "substation", "violations.limit import or export"))
    for when in ("before", "after"))

#: the run's summary, in its order (``manifest.json``, ``summary.txt``)
STUDY_KPIS: tuple[Kpi, ...] = (ENERGY_TRADED, MEAN_PRICE, CURTAILED, VIOLATION_MIN_BEFORE, VIOLATION_MIN_AFTER,
                               V_MIN, V_MAX, V_MAX_BEFORE, GRID_IMPORT, GRID_EXPORT, LOSSES, UNCONVERGED,
                               *LIMIT_VIOLATIONS)
#: the wall time of a run (its manifest's ``wall_s``), next to its KPIs in ``tecosim compare``
WALL_TIME = Kpi("wall_time_s", "wall time", "s", "the run's wall time (manifest wall_s)")


def summary(k: pd.DataFrame) -> dict[str, float]:
    """Totals over the study, from the kpis table: :data:`STUDY_KPIS`."""
    return {kpi.key: kpi.total(k) for kpi in STUDY_KPIS}


_BY_KEY = {kpi.key: kpi for kpi in (*STUDY_KPIS, WALL_TIME)}
#: the unit of a key that is no study KPI, by its suffix
UNIT_SUFFIXES = (("_usd_per_kwh", "USD/kWh"), ("_kwh", "kWh"), ("_kw", "kW"), ("_kvar", "kvar"),
                 ("_usd", "USD"), ("_pu", "pu"), ("_pct", "%"), ("_s", "s"), ("_steps", "steps"))


def name_of(key: str) -> str:
    """The name of a summary key: a study KPI's, else the key in words."""
    return _BY_KEY[key].name if key in _BY_KEY else key.replace("_", " ")


def unit_of(key: str) -> str:
    """The unit of a summary key: a study KPI's, else ``min`` for violation minutes,
    else by its suffix ('' for none)."""
    if key in _BY_KEY:
        return _BY_KEY[key].unit
    if "_min_" in key or key.endswith("_min"):
        return "min"
    for suffix, unit in UNIT_SUFFIXES:
        if key.endswith(suffix):
            return unit
    return ""


# ---- over the study, in the report ------------------------------------------------------

#: the parts of a bill (settlements, federates/market/settlement.py "Bill split"):
#: (column, label); they add up to net_cost_usd
BILL_PARTS: tuple[tuple[str, str], ...] = (
    ("market_cost_usd", "energy bought / sold in the market"),
    ("replacement_cost_usd", "replacement of curtailed peer purchases (retail)"),
    ("imbalance_cost_usd", "imbalance (forecast error)"),
    ("charges_usd", "network charges"),
)


def bill_sums(settlements: pd.DataFrame, retail_usd_per_kwh: float | np.ndarray,
              feed_in_usd_per_kwh: float | np.ndarray) -> pd.DataFrame:
    """Per participant: ``net_cost_usd``, its parts (:data:`BILL_PARTS`, in runs that
    have them) and ``baseline_usd`` summed over the rows (the grid operator's rows,
    which collect network charges, are no prosumer's bill). The tariffs [USD/kWh]: one
    price, or an array of every interval's (``Tariff.retail_usd_per_kwh``, indexed by
    the rows' ``interval``)."""
    settlements = settlements[settlements["participant"].astype(str) != GRID_OPERATOR]
    m = settlements["metered_kwh"].to_numpy(dtype=float)
    retail, feed_in = _per_row(settlements, retail_usd_per_kwh), _per_row(settlements, feed_in_usd_per_kwh)
    base = np.clip(m, 0, None) * retail - np.clip(-m, 0, None) * feed_in
    df = pd.DataFrame({"participant": settlements["participant"].astype(str).to_numpy(),
                       "net_cost_usd": settlements["net_cost_usd"].to_numpy(dtype=float),
                       "baseline_usd": base,
                       **{col: settlements[col].to_numpy(dtype=float) for col, _ in BILL_PARTS
                          if col in settlements}})
    return df.groupby("participant").sum()


def _per_row(rows: pd.DataFrame, price: float | np.ndarray) -> float | np.ndarray:
    """``price`` [USD/kWh] of each row's interval (a scalar stays one)."""
    if np.ndim(price) == 0:
        return price
    return np.asarray(price, dtype=float)[rows["interval"].to_numpy(dtype=np.int64)]


def bills(sums: pd.DataFrame) -> pd.DataFrame:
    """:func:`bill_sums` with ``saving_usd = baseline_usd - net_cost_usd``, sorted by
    saving, largest first."""
    out = sums.copy()
    out["saving_usd"] = out["baseline_usd"] - out["net_cost_usd"]
    return out.sort_values("saving_usd", ascending=False)


def baseline_bills(settlements: pd.DataFrame, retail_usd_per_kwh: float | np.ndarray,
                   feed_in_usd_per_kwh: float | np.ndarray) -> pd.DataFrame:
    """Per participant: ``net_cost_usd`` (with the market, summed over intervals),
    ``baseline_usd`` (no market: the same metered energy ``m`` billed at the tariffs,
    per interval net: ``sum_k max(m_k, 0) * retail_k - max(-m_k, 0) * feed_in_k``, the
    prices one number or per interval as in :func:`bill_sums`) and
    ``saving_usd = baseline_usd - net_cost_usd``; sorted by saving, largest first.
    (The report sums the same per chunk of intervals.)"""
    return bills(bill_sums(settlements, retail_usd_per_kwh, feed_in_usd_per_kwh))


SELF_SUFFICIENCY_COMMUNITY = Kpi(
    "self_sufficiency_community_pct", "self-sufficiency, community", "%",
    "sum over steps of min(load, local supply) / load, all prosumers as one community; "
    "local supply = PV delivered after curtailment + battery discharge - charging "
    "(Luthander et al. 2015)")
SELF_SUFFICIENCY_HOUSEHOLDS = Kpi(
    "self_sufficiency_households_pct", "self-sufficiency, households alone", "%",
    "the same per household before summing (no sharing between prosumers)")
PV_AVAILABLE = Kpi("pv_available_kwh", "PV energy available", "kWh", "sum of profiles.pv_kw x step")
CURTAILED_ALL_CAUSES = Kpi("curtailed_kwh", "PV energy curtailed or held back", "kWh",
                           "sum of curtailment_energy, every PV cause (DSO, Volt-Watt, envelopes; not load_limit)")
CURTAILED_SHARE = Kpi("curtailed_share_pct", "curtailed share", "%", "curtailed PV energy / PV energy available")
VUF_MAX = Kpi("vuf_max_pct", "worst voltage unbalance factor", "%",
              "max over three-phase buses and steps, after control (limit {limits.vuf_max_pct:g} %)")
LOSSES_PCT_OF_IMPORT = Kpi("losses_pct_of_import", "losses / energy imported", "%",
                           "losses over the substation import (sum of max(source_p_kw, 0) x step)")
WELFARE = Kpi("welfare_usd", "peer welfare", "USD", "sum of the clearing's welfare over the intervals")
MEAN_BILL_SAVING = Kpi("mean_bill_saving_usd", "mean bill saving per prosumer", "USD",
                       "mean over prosumers of (no-market baseline - net cost)")
MEAN_BILL_SAVING_PCT = Kpi("mean_bill_saving_pct", "mean bill saving, relative", "%",
                           "total saving / total |baseline bill|")
PROSUMERS_PAYING_MORE = Kpi("prosumers_paying_more_n", "prosumers paying more than the baseline", "-",
                            "prosumers whose net cost exceeds their no-market baseline")
#: the mean over prosumers of each part of the bill (:data:`BILL_PARTS`)
MEAN_BILL_PARTS = tuple(
    Kpi("mean_bill_" + col.removesuffix("_cost_usd").removesuffix("_usd") + "_usd", f"mean bill part: {label}",
        "USD", f"mean over prosumers of sum(settlements.{col}) (+ pays); the parts add up to the net cost "
        "(with demand response, with the mean demand-response part)")
    for col, label in BILL_PARTS)

#: the report's KPI table, in its order
REPORT_KPIS: tuple[Kpi, ...] = (
    ENERGY_TRADED, SELF_SUFFICIENCY_COMMUNITY, SELF_SUFFICIENCY_HOUSEHOLDS, PV_AVAILABLE, CURTAILED_ALL_CAUSES,
    CURTAILED_SHARE, VIOLATION_MIN_BEFORE, VIOLATION_MIN_AFTER, VUF_MAX, LOSSES, LOSSES_PCT_OF_IMPORT, WELFARE,
    MEAN_BILL_SAVING, MEAN_BILL_SAVING_PCT, PROSUMERS_PAYING_MORE, *MEAN_BILL_PARTS,
)


def report_table(d: ReportData, k: pd.DataFrame | None, cfg: StudyFile) -> pd.DataFrame:
    """The report's KPI table (:data:`REPORT_KPIS`): index = key, columns ``kpi``,
    ``value``, ``unit``, ``definition``; from the report's aggregates ``d`` and the
    kpis table ``k`` (None: the run has none; its KPIs are NaN)."""
    values = _report_values(d, k, cfg.timeline.step_h)
    rows = [(kpi.key, kpi.report_name or kpi.name, float(values[kpi.key]), kpi.unit, kpi.describe(cfg))
            for kpi in REPORT_KPIS]
    return pd.DataFrame(rows, columns=["key", "kpi", "value", "unit", "definition"]).set_index("key")


def _report_values(d: ReportData, k: pd.DataFrame | None, step_h: float) -> dict[str, float]:
    """The value of each report KPI (key -> value; NaN where the run lacks the table).

    Self-sufficiency (Luthander et al. 2015, at community level): per step the
    community's local supply ``S = sum_i (pv_kw - battery_kw) - curtailed_p_kw`` (PV
    delivered after curtailment, battery discharge adds, charging subtracts) and load
    ``L = sum_i load_kw``; ``100 * sum_t min(L, max(S, 0)) / sum_t L``: the share of the
    consumption the community, netted behind one virtual meter, does not draw from the
    grid (1 - net import / load where S >= 0); per household: ``min(load, max(supply,
    0))`` per household and step, summed, over the same total load. The bills: see
    :func:`baseline_bills`; the saving in percent is the total saving over the total
    ``|baseline|``."""
    v: dict[str, float] = {ENERGY_TRADED.key: d.traded_kwh if d.has("trades") else 0.0}
    comm = house = total_load = pv_kwh = np.nan
    if d.has("profiles"):
        comm, house, total_load = d.comm, d.house, d.total_load
        pv_kwh = float(d.pv_sum_kw * step_h)
    v[SELF_SUFFICIENCY_COMMUNITY.key] = 100.0 * comm / total_load if total_load > 0 else np.nan
    v[SELF_SUFFICIENCY_HOUSEHOLDS.key] = 100.0 * house / total_load if total_load > 0 else np.nan
    curtailed = d.curtailed_kwh if d.has("curtailment_energy") else 0.0
    v[PV_AVAILABLE.key] = pv_kwh
    v[CURTAILED_ALL_CAUSES.key] = curtailed
    v[CURTAILED_SHARE.key] = 100.0 * curtailed / pv_kwh if pv_kwh > 0 else np.nan
    for kpi in (VIOLATION_MIN_BEFORE, VIOLATION_MIN_AFTER):
        v[kpi.key] = float(k[kpi.key].sum()) if k is not None else np.nan
    v[VUF_MAX.key] = d.vuf_max_pct if d.has("unbalance") else np.nan
    if d.has("grid"):
        losses = float(d.losses_sum_kw * step_h)
        imported = float(d.import_sum_kw * step_h)
    else:
        losses = imported = np.nan
    v[LOSSES.key] = losses
    v[LOSSES_PCT_OF_IMPORT.key] = 100.0 * losses / imported if imported > 0 else np.nan
    v[WELFARE.key] = d.welfare_usd if d.has("clearing") else np.nan
    v.update(_bill_values(d.bill_sums if d.has("settlements") else None))
    return v


def _bill_values(sums: pd.DataFrame | None) -> dict[str, float]:
    """The report's bill KPIs from the per-prosumer :func:`bill_sums` (None: no settlements)."""
    if sums is None:
        return {kpi.key: np.nan for kpi in (MEAN_BILL_SAVING, MEAN_BILL_SAVING_PCT, PROSUMERS_PAYING_MORE,
                                            *MEAN_BILL_PARTS)}
    b = bills(sums)
    denom = float(b["baseline_usd"].abs().sum())
    return {
        MEAN_BILL_SAVING.key: float(b["saving_usd"].mean()),
        MEAN_BILL_SAVING_PCT.key: 100.0 * float(b["saving_usd"].sum()) / denom if denom > 0 else np.nan,
        PROSUMERS_PAYING_MORE.key: float((b["saving_usd"] < 0).sum()),
        **{kpi.key: float(sums[col].mean()) if col in sums else np.nan
           for kpi, (col, _) in zip(MEAN_BILL_PARTS, BILL_PARTS, strict=True)},
    }


def kpis_of(folder: RunFolder, *, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame | None:
    """A run's kpis table (one row per market interval): its ``results/kpis.parquet``,
    else computed from the tables it is made of (:func:`run_kpis`, in chunks), else None
    (a run that did not write them)."""
    if folder.has_table("kpis"):
        return pd.read_parquet(folder.table_file("kpis"))
    if all(folder.has_table(n) for n in KPI_TABLES):
        return run_kpis(folder.cfg, folder.path, chunk_rows=chunk_rows)
    return None


def summary_of(folder: RunFolder, k: pd.DataFrame | None = None) -> dict:
    """A run's totals: its manifest's ``summary``, else :func:`summary` of its kpis table
    ``k`` (:func:`kpis_of` when not given)."""
    return folder.manifest.get("summary") or summary(kpis_of(folder) if k is None else k)


# ---- per calendar month: the monthly table (runner/months.py) ----------------------------

LOAD = Kpi("load_kwh", "prosumer load", "kWh", "sum of profiles.load_kw x step")
BATTERY_CHARGE = Kpi("battery_charge_kwh", "battery charging", "kWh", "sum of max(profiles.battery_kw, 0) x step")
BATTERY_DISCHARGE = Kpi("battery_discharge_kwh", "battery discharging", "kWh",
                        "sum of max(-profiles.battery_kw, 0) x step")
#: curtailment causes (``curtailment_energy.limit``) with a column of their own
CURTAILMENT_CAUSES = (Limit.V_MAX, Limit.THERMAL, Limit.VUF, Limit.EXPORT, Limit.VOLT_WATT, Limit.ENVELOPE)
CURTAILED_BY_CAUSE = tuple(
    Kpi(f"curtailed_{cause}_kwh", f"PV energy curtailed or held back: {cause}", "kWh",
        f"sum of curtailment_energy.energy_kwh with limit {cause}")
    for cause in CURTAILMENT_CAUSES)
VOLTAGE_OVER = Kpi("voltage_over_customer_min", "customer-minutes above the voltage band", "min",
                   "customers x steps with voltages.v_pu > {limits.v_max_pu:g} pu (after control) x step length")
VOLTAGE_UNDER = Kpi("voltage_under_customer_min", "customer-minutes below the voltage band", "min",
                    "customers x steps with voltages.v_pu < {limits.v_min_pu:g} pu (after control) x step length")
BILL = Kpi("bill_usd", "prosumers' bills with the market", "USD",
           "sum over prosumers of settlements.net_cost_usd (+ paid, - received)")
BILL_PAID = Kpi("bill_paid_usd", "paid by prosumers with a net cost", "USD",
                "sum over prosumers of max(net cost in the period, 0)")
BILL_RECEIVED = Kpi("bill_received_usd", "received by prosumers with a net income", "USD",
                    "sum over prosumers of max(-net cost in the period, 0)")
BASELINE_BILL = Kpi("baseline_bill_usd", "prosumers' bills without the market", "USD",
                    "sum over prosumers of the no-market baseline (baseline_bills)")
BILL_SAVING = Kpi("bill_saving_usd", "prosumers' saving with the market", "USD",
                  "baseline_bill_usd - bill_usd")
#: each part of the prosumers' bills (:data:`BILL_PARTS`), summed over prosumers
BILL_PART_TOTALS = tuple(
    Kpi("bill_" + col.removesuffix("_cost_usd").removesuffix("_usd") + "_usd", f"bill part: {label}", "USD",
        f"sum over prosumers of settlements.{col} (+ pays)")
    for col, label in BILL_PARTS)


# ---- flexible demand (runs with EVs, heat pumps / ACs: the flex, ev_sessions and ----------
# ---- demand_response tables, one row per interval and owner, session or call) ------------

EV_CHARGED = Kpi("ev_charged_kwh", "EV charging", "kWh", "sum of flex.ev_kwh")
EV_UNMET = Kpi("ev_unmet_kwh", "EV energy missing at departure", "kWh",
               "sum of ev_sessions.unmet_kwh over the sessions that ended: the charging-deadline cost")
HVAC_ENERGY = Kpi("hvac_kwh", "heat pump / AC energy", "kWh", "sum of flex.hvac_kwh")
DISCOMFORT = Kpi("discomfort_c_h", "discomfort", "degC h",
                 "sum of flex.discomfort_c_h: indoor temperature beyond the base setpoint's deadband x time")
WH_ENERGY = Kpi("wh_kwh", "water heater energy", "kWh", "sum of flex.wh_kwh")
HOT_WATER_SHORT = Kpi("hot_water_short_kwh", "hot water short", "kWh",
                      "sum of flex.hot_water_short_kwh: heat the draws lacked below water_heater.use_c")
DR_CALLED = Kpi("dr_requested_kwh", "demand response asked for", "kWh",
                "sum of demand_response.requested_kw x interval length")
DR_CUT = Kpi("dr_cut_kwh", "demand response delivered", "kWh",
             "sum of demand_response.reduced_kwh: what the devices cut against their plan")
DR_PAID = Kpi("dr_paid_usd", "demand response paid to prosumers", "USD",
              "sum of demand_response.credit_usd (= the DSO's settlements.dr_paid_usd)")
UNSERVED = Kpi("unserved_kwh", "load not served (load limits)", "kWh",
               "import the DSO's load limiters cut: sum of flex.load_limited_kwh (the devices, first) and of "
               "curtailment_energy.energy_kwh with limit load_limit (the rest, cut by the feeder)")
UNDER_BEFORE = Kpi("voltage_under_before_customer_min", "customer-minutes below v_min before control", "min",
                   "customers x steps with voltages.v_before_pu < {limits.v_min_pu:g} pu x step length "
                   "(demand response's cuts are in the demand already)")
UNDER_AFTER = Kpi("voltage_under_after_customer_min", "customer-minutes below v_min after control", "min",
                  "customers x steps with voltages.v_pu < {limits.v_min_pu:g} pu x step length (after the load limits)")
MEAN_BILL_DR = Kpi("mean_bill_dr_usd", "mean bill part: demand response", "USD",
                   "mean over prosumers of sum(settlements.dr_usd) (+ pays: a credit is negative)")
FLEX_KPIS: tuple[Kpi, ...] = (EV_CHARGED, EV_UNMET, HVAC_ENERGY, DISCOMFORT, WH_ENERGY, HOT_WATER_SHORT,
                              DR_CALLED, DR_CUT, DR_PAID, MEAN_BILL_DR, UNSERVED, UNDER_BEFORE, UNDER_AFTER)
_BY_KEY.update({kpi.key: kpi for kpi in FLEX_KPIS})


def flex_summary(folder: RunFolder) -> dict[str, float]:
    """:data:`FLEX_KPIS` of a run with flexible devices (empty without the ``flex``
    table; the demand-response ones only with ``demand_response``). The tables are one
    row per interval and device owner, session or call: read whole."""
    if not folder.has_table("flex"):
        return {}
    flex = pd.read_parquet(folder.table_file("flex"), columns=["ev_kwh", "hvac_kwh", "discomfort_c_h", "wh_kwh",
                                                               "hot_water_short_kwh"])
    out = {EV_CHARGED.key: float(flex["ev_kwh"].sum()), HVAC_ENERGY.key: float(flex["hvac_kwh"].sum()),
           DISCOMFORT.key: float(flex["discomfort_c_h"].sum()),  # NaN rows (no AC) skipped
           WH_ENERGY.key: float(flex["wh_kwh"].sum()), HOT_WATER_SHORT.key: float(flex["hot_water_short_kwh"].sum())}
    ev = pd.read_parquet(folder.table_file("ev_sessions"), columns=["unmet_kwh"]) \
        if folder.has_table("ev_sessions") else pd.DataFrame({"unmet_kwh": []})
    out[EV_UNMET.key] = float(ev["unmet_kwh"].sum())  # the sessions under way at the end: NaN, skipped
    if folder.has_table("demand_response"):
        dr = pd.read_parquet(folder.table_file("demand_response"),
                             columns=["requested_kw", "reduced_kwh", "credit_usd"])
        out[DR_CALLED.key] = float(dr["requested_kw"].sum() * folder.cfg.timeline.interval_h)
        out[DR_CUT.key] = float(dr["reduced_kwh"].sum())
        out[DR_PAID.key] = float(dr["credit_usd"].sum())
        out.update(_demand_side_grid(folder))
    return out


def _demand_side_grid(folder: RunFolder) -> dict[str, float]:
    """With demand response: :data:`UNSERVED` and the customer-minutes below ``v_min``
    before and after control (the voltages read in row groups)."""
    import pyarrow.parquet as pq

    out = {UNSERVED.key: 0.0}
    if folder.has_table("flex"):
        out[UNSERVED.key] += float(pd.read_parquet(folder.table_file("flex"), columns=["load_limited_kwh"]).sum().iloc[0])
    if folder.has_table("settlements"):
        s = pd.read_parquet(folder.table_file("settlements"), columns=["participant", "dr_usd"])
        s = s[s["participant"].astype(str) != GRID_OPERATOR]
        out[MEAN_BILL_DR.key] = float(s.groupby("participant")["dr_usd"].sum().mean()) if len(s) else 0.0
    if folder.has_table("curtailment_energy"):
        ce = pd.read_parquet(folder.table_file("curtailment_energy"), columns=["limit", "energy_kwh"])
        out[UNSERVED.key] += float(ce.loc[ce["limit"] == str(Limit.LOAD_LIMIT), "energy_kwh"].sum())
    if folder.has_table("voltages"):
        v_min, step_min = folder.cfg.limits.v_min_pu, folder.cfg.timeline.physics_step_s / 60.0
        before = after = 0
        for batch in pq.ParquetFile(folder.table_file("voltages")).iter_batches(columns=["v_pu", "v_before_pu"]):
            before += int((batch.column("v_before_pu").to_numpy() < v_min).sum())
            after += int((batch.column("v_pu").to_numpy() < v_min).sum())
        out[UNDER_BEFORE.key], out[UNDER_AFTER.key] = before * step_min, after * step_min
    return out
