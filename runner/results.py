"""Post-run tables and the one-screen summary, made from the run folder's files alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.config import StudyFile

RESULTS = "results"


def read_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted((Path(run_dir) / RESULTS).glob("*.parquet"))}


def kpis(cfg: StudyFile, t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per market interval: trading, curtailment, voltage quality, grid energy.

    Violation minutes count physics steps in which at least one customer voltage is
    outside the ``limits`` band ``[v_min_pu, v_max_pu]``, times the step length [min];
    "before" is the uncontrolled solve of each step, "after" the final controlled one.
    ``thermal_`` / ``vuf_`` / ``substation_violation_min_*`` do the same for the
    other limits (from the ``violations`` table).
    """
    tl = cfg.timeline
    c = cfg.limits
    step_min = tl.physics_step_s / 60.0
    intervals = np.arange(tl.n_intervals)
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
    out["violation_min_before"] = outside("v_before_pu").reindex(intervals, fill_value=0).to_numpy()
    out["violation_min_after"] = outside("v_pu").reindex(intervals, fill_value=0).to_numpy()
    out["v_min_pu"] = v.groupby(v_k)["v_pu"].min().reindex(intervals).to_numpy()
    out["v_max_pu"] = v.groupby(v_k)["v_pu"].max().reindex(intervals).to_numpy()
    out["v_max_before_pu"] = v.groupby(v_k)["v_before_pu"].max().reindex(intervals).to_numpy()
    out["import_kwh"] = pd.Series(np.clip(src, 0, None) * tl.step_h).groupby(g_k).sum().reindex(intervals, fill_value=0.0).to_numpy()
    out["export_kwh"] = pd.Series(np.clip(-src, 0, None) * tl.step_h).groupby(g_k).sum().reindex(intervals, fill_value=0.0).to_numpy()
    out["losses_kwh"] = pd.Series(g["losses_kw"].to_numpy() * tl.step_h).groupby(g_k).sum().reindex(intervals, fill_value=0.0).to_numpy()
    viol = t.get("violations")
    for name, limits in (("thermal", ["thermal"]), ("vuf", ["vuf"]), ("substation", ["import", "export"])):
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
    return out


def summary(k: pd.DataFrame) -> dict[str, float]:
    """Totals over the study, from the kpis table."""
    traded = float(k["traded_kwh"].sum())
    priced = k.dropna(subset=["mean_trade_price_usd_per_kwh"])
    vol = float(priced["traded_kwh"].sum())
    mean_price = (float((priced["traded_kwh"] * priced["mean_trade_price_usd_per_kwh"]).sum() / vol)
                  if vol > 0 else float("nan"))
    return {
        "energy_traded_kwh": traded,
        "mean_price_usd_per_kwh": mean_price,
        "curtailed_kwh": float(k["curtailed_kwh"].sum()),
        "violation_min_before": float(k["violation_min_before"].sum()),
        "violation_min_after": float(k["violation_min_after"].sum()),
        "v_min_pu": float(k["v_min_pu"].min()),
        "v_max_pu": float(k["v_max_pu"].max()),
        "v_max_before_pu": float(k["v_max_before_pu"].max()),
        "grid_import_kwh": float(k["import_kwh"].sum()),
        "grid_export_kwh": float(k["export_kwh"].sum()),
        "losses_kwh": float(k["losses_kwh"].sum()),
        "unconverged_steps": int(k["unconverged_steps"].sum()),
        **{f"{name}_violation_min_{when}": float(k[f"{name}_violation_min_{when}"].sum())
           for name in ("thermal", "vuf", "substation") for when in ("before", "after")},
    }


def format_summary(s: dict[str, float], wall_s: float, run_dir: Path, engine: str) -> str:
    lines = [
        f"tecosim run: {run_dir}  (engine: {engine}, wall time {wall_s:.1f} s)",
        f"  energy traded peer-to-peer    {s['energy_traded_kwh']:10.1f} kWh",
        f"  mean peer trade price         {s['mean_price_usd_per_kwh']:10.4f} USD/kWh",
        f"  curtailed energy              {s['curtailed_kwh']:10.1f} kWh",
        f"  violation minutes before ctrl {s['violation_min_before']:10.0f} min",
        f"  violation minutes after ctrl  {s['violation_min_after']:10.0f} min",
        f"  customer voltage min / max    {s['v_min_pu']:.4f} / {s['v_max_pu']:.4f} pu"
        f" (max {s['v_max_before_pu']:.4f} pu before control)",
        f"  grid import / export          {s['grid_import_kwh']:.0f} / {s['grid_export_kwh']:.0f} kWh,"
        f" losses {s['losses_kwh']:.1f} kWh",
        f"  thermal / unbalance / substation violation minutes before -> after ctrl: "
        f"{s['thermal_violation_min_before']:.0f} -> {s['thermal_violation_min_after']:.0f}, "
        f"{s['vuf_violation_min_before']:.0f} -> {s['vuf_violation_min_after']:.0f}, "
        f"{s['substation_violation_min_before']:.0f} -> {s['substation_violation_min_after']:.0f} min",
        f"  steps where control did not converge: {s['unconverged_steps']}",
        f"  results: {run_dir / RESULTS}",
    ]
    return "\n".join(lines)
