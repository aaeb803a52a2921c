"""Frozen reference: today's whole-table post-run functions (commit c514ee0).

``kpis`` (with ``_conservation_columns``) from ``runner/results.py`` and
``loss_allocation`` / ``loss_charges`` from ``runner/losses_table.py``, copied verbatim
before the post-run path was made to read the results in pieces. The tests compare
the streamed functions against these exactly; do not edit them (one later change of
meaning is marked where it was made).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from federates.common.config import StudyFile
from federates.common.messages import GRID, Trade
from federates.feeder.losses import BACKGROUND, allocate_losses_to_trades

LOSS_ALLOCATION_DTYPES: dict[str, str] = {
    "interval": "int64", "kind": "object", "trade_id": "object", "seller": "object",
    "buyer": "object", "participant": "object", "energy_kwh": "float64", "loss_kwh": "float64",
    "seller_loss_kwh": "float64", "buyer_loss_kwh": "float64",
    "loss_price_usd_per_kwh": "float64", "loss_cost_usd": "float64",
}
LOSS_CHARGES_DTYPES: dict[str, str] = {
    "interval": "int64", "participant": "object", "loss_kwh": "float64",
    "loss_price_usd_per_kwh": "float64", "loss_cost_usd": "float64",
}


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
    _conservation_columns(out, t, g, g_k, intervals)
    return out


def _conservation_columns(out: pd.DataFrame, t: dict[str, pd.DataFrame], g: pd.DataFrame,
                          g_k: np.ndarray, intervals: np.ndarray) -> None:
    """The per-interval conservation errors of :func:`kpis` (checked by
    :func:`conservation_failures`).

    ``energy_balance_error_kwh``: max over participants of
    |scheduled + curtailed + imbalance - metered| and
    |peer_bought + grid_bought - peer_sold - grid_sold - metered| (settlement rules 4
    and the settled-energy identity, federates/market/settlement.py);
    ``money_balance_error_usd``: |sum peer_paid - sum peer_received - fees| (fees are
    0: ``Trade.fee_usd`` is not settled); ``power_balance_error_kw``: max over the
    interval's steps of |source_p_kw - load_kw - losses_kw| (grid table) and
    ``power_balance_error_pct`` the same step's error over max(|load_kw|, 1 kW) x 100.
    """
    s = t["settlements"]
    e1 = (s["scheduled_kwh"] + s["curtailed_kwh"] + s["imbalance_kwh"] - s["metered_kwh"]).abs()
    e2 = (s["peer_bought_kwh"] + s["grid_bought_kwh"] - s["peer_sold_kwh"] - s["grid_sold_kwh"]
          - s["metered_kwh"]).abs()
    energy = np.maximum(e1, e2).groupby(s["interval"]).max()
    out["energy_balance_error_kwh"] = energy.reindex(intervals, fill_value=0.0).to_numpy().astype(float)
    money = (s["peer_paid_usd"] - s["peer_received_usd"]).groupby(s["interval"]).sum().abs()
    out["money_balance_error_usd"] = money.reindex(intervals, fill_value=0.0).to_numpy().astype(float)
    err = (g["source_p_kw"] - g["load_kw"] - g["losses_kw"]).abs().to_numpy()
    # the base of the power balance became the gross flow (grid.gross_kw) in commit 75b8eaa,
    # after this copy was frozen: updated here alone, as in runner/results.py
    base = g["gross_kw"] if "gross_kw" in g else g["load_kw"].abs()
    pct = err / np.maximum(base.to_numpy(), 1.0) * 100.0
    out["power_balance_error_kw"] = (pd.Series(err).groupby(g_k).max()
                                     .reindex(intervals, fill_value=0.0).to_numpy().astype(float))
    out["power_balance_error_pct"] = (pd.Series(pct).groupby(g_k).max()
                                      .reindex(intervals, fill_value=0.0).to_numpy().astype(float))


def _per_interval_price(cfg: StudyFile, t: dict[str, pd.DataFrame], intervals: np.ndarray) -> np.ndarray:
    """The loss price of each interval [USD/kWh] (NaN for ``loss_price: none``)."""
    m = cfg.market
    if m.loss_price == "none":
        return np.full(len(intervals), np.nan)
    retail = float(m.retail_usd_per_kwh)
    if m.loss_price == "retail":
        return np.full(len(intervals), retail)
    cl = t.get("clearing")
    price = pd.Series(np.nan, index=intervals)
    if cl is not None and len(cl):
        price = cl.groupby("interval")["price_usd_per_kwh"].last().reindex(intervals)
    tr = t.get("trades")
    if tr is not None and len(tr):
        peer = tr[tr["kind"] == "peer"]
        vol = peer.groupby("interval")["energy_kwh"].sum()
        paid = (peer["energy_kwh"] * peer["price_usd_per_kwh"]).groupby(peer["interval"]).sum()
        vwap = (paid / vol.where(vol > 0)).reindex(intervals)
        price = price.fillna(vwap)
    return price.fillna(retail).to_numpy(dtype=float)


def loss_allocation(cfg: StudyFile, t: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The ``loss_allocation`` table (see the module doc); None without ``customer_losses``."""
    cl = t.get("customer_losses")
    if cl is None or cl.empty:
        return None
    tl = cfg.timeline
    spi = tl.steps_per_interval
    names = list(dict.fromkeys(cl["participant"]))
    participants = [p for p in names if p != BACKGROUND]
    k_of = cl["step"].to_numpy() // spi
    loss_kwh = (cl["loss_kw"] * tl.step_h).groupby([k_of, cl["participant"]]).sum().unstack(fill_value=0.0)
    loss_kwh = loss_kwh.reindex(columns=names, fill_value=0.0)
    intervals = loss_kwh.index.to_numpy(dtype=np.int64)
    v = t["voltages"]
    net = (v["p_kw"] * tl.step_h).groupby([v["step"].to_numpy() // spi, v["participant"]]).sum().unstack(fill_value=0.0)
    net = net.reindex(index=intervals, columns=participants, fill_value=0.0)
    trades = t["trades"].reset_index(drop=True)
    trade_id = trades["trade_id"].astype(str).to_numpy()
    by_interval = {k: idx for k, idx in trades.groupby("interval").indices.items()}
    price = _per_interval_price(cfg, t, intervals)
    pos = {p: i for i, p in enumerate(participants)}
    rows: list[tuple] = []
    for j, k in enumerate(intervals.tolist()):
        cust = loss_kwh.loc[k, participants].to_numpy(dtype=float)
        metered = np.abs(net.loc[k].to_numpy(dtype=float))
        idx = by_interval.get(k, np.zeros(0, dtype=np.int64))
        sub = trades.iloc[idx]
        objs = [Trade(int(k), s, b, float(e), float(pr)) for s, b, e, pr in
                zip(sub["seller"], sub["buyer"], sub["energy_kwh"], sub["price_usd_per_kwh"], strict=True)]
        a = allocate_losses_to_trades(cust, participants, objs, customer_energy_kwh=metered)
        traded = np.zeros(len(participants))
        pk = price[j]
        for i, tr in enumerate(objs):
            for who in (tr.seller, tr.buyer):
                if who in pos:
                    traded[pos[who]] += tr.energy_kwh
            if a.is_peer[i]:
                s_l, b_l = float(a.seller_kw[i]), float(a.buyer_kw[i])
                rows.append((k, "peer", trade_id[idx[i]], tr.seller, tr.buyer, None, tr.energy_kwh,
                             s_l + b_l, s_l, b_l, pk))
            else:
                who = tr.buyer if tr.seller == GRID else tr.seller
                share = float(a.grid_trade_kw[i])
                rows.append((k, "grid", trade_id[idx[i]], tr.seller, tr.buyer, who, tr.energy_kwh, share,
                             share if who == tr.seller else 0.0, share if who == tr.buyer else 0.0, pk))
        uncovered = np.maximum(metered - traded, 0.0)
        for i, p in enumerate(participants):
            rows.append((k, "untraded", "", None, None, p, float(uncovered[i]), float(a.untraded_kw[i]),
                         0.0, 0.0, pk))
        rows.append((k, "background", "", None, None, BACKGROUND, np.nan,
                     float(loss_kwh.loc[k, BACKGROUND]) if BACKGROUND in names else 0.0, 0.0, 0.0, pk))
    cols = [c for c in LOSS_ALLOCATION_DTYPES if c != "loss_cost_usd"]
    out = pd.DataFrame(rows, columns=cols)
    out["loss_cost_usd"] = out["loss_kwh"] * out["loss_price_usd_per_kwh"]
    return out.astype(LOSS_ALLOCATION_DTYPES).reset_index(drop=True)


def loss_charges(alloc: pd.DataFrame) -> pd.DataFrame:
    """Per interval and customer: the losses it carries [kWh] and their cost [USD].

    A customer carries its seller / buyer shares of peer trades, its side of GRID
    trades and its untraded share; the background is not charged.
    """
    peer = alloc[alloc["kind"] == "peer"]
    own = alloc[alloc["kind"].isin(["grid", "untraded"])]
    parts = [
        pd.DataFrame({"interval": peer["interval"], "participant": peer["seller"], "loss_kwh": peer["seller_loss_kwh"]}),
        pd.DataFrame({"interval": peer["interval"], "participant": peer["buyer"], "loss_kwh": peer["buyer_loss_kwh"]}),
        pd.DataFrame({"interval": own["interval"], "participant": own["participant"], "loss_kwh": own["loss_kwh"]}),
    ]
    long = pd.concat(parts, ignore_index=True)
    long = long[long["participant"] != GRID]
    out = long.groupby(["interval", "participant"], sort=True)["loss_kwh"].sum().reset_index()
    price = alloc.groupby("interval")["loss_price_usd_per_kwh"].first()
    out["loss_price_usd_per_kwh"] = price.reindex(out["interval"]).to_numpy()
    out["loss_cost_usd"] = out["loss_kwh"] * out["loss_price_usd_per_kwh"]
    return out.astype(LOSS_CHARGES_DTYPES).reset_index(drop=True)
