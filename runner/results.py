"""Post-run tables and the one-screen summary, made from the run folder's files alone.

The results tables of a long run do not fit in memory whole (a year of the default
study: ~21 M rows of ``voltages``, ``meters``, ``profiles`` and ``customer_losses``
each), so the post-run path reads them in pieces: :func:`interval_chunks` hands out
consecutive ranges of whole market intervals of several tables at once, read row
group by row group with only the columns asked for (:class:`IntervalReader`). Every
KPI is per market interval, so :func:`run_kpis` computes them chunk by chunk with the
same code as the whole-table :func:`kpis` and gets the same numbers: each interval
sees the same rows in the same order. :func:`read_tables` stays for callers that want
the whole tables of a short run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from federates.common.config import StudyFile
from federates.common.conservation import POWER_TOLERANCE_PCT, ConservationError

RESULTS = "results"

#: After-run conservation checks of the kpis (:func:`conservation_failures`; the live
#: checks while the study runs are federates/common/conservation.py): an interval breaks
#: a check when its kpis error exceeds the tolerance. Energy [kWh] and money [USD] are
#: settled exactly (fractions) and only rounded to float; here they are re-added from
#: the tables' rounded rows, a year's worth per check, hence 1e-6 rather than the live
#: checks' 1e-9. The feeder's power balance holds to OpenDSS's solution tolerance, so it
#: is relative to the step's gross power-conversion flow (grid.gross_kw) [%], at least
#: 1 kW: a net load that exports nearly cancel is no base for a mismatch that scales with
#: the flows; the same tolerance as the live check's.
ENERGY_TOLERANCE_KWH = 1e-6
MONEY_TOLERANCE_USD = 1e-6




#: target rows of the largest table in one chunk of :func:`interval_chunks`: the
#: post-run memory is this chunk of each table read, plus one row group of each, plus
#: the tables' Parquet footers (a few KB per row group and table); a day of the
#: default study (57,600 ``voltages`` rows) is one chunk, a day at 1000 prosumers
#: ~15 chunks of 6 intervals. Measured (benchmarks/post_run.py): 5x this costs ~1.6x
#: the peak memory and saves no time.
CHUNK_ROWS = 100_000


def read_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every results table whole (short runs; the post-run path reads pieces)."""
    return {p.stem: pd.read_parquet(p) for p in sorted((Path(run_dir) / RESULTS).glob("*.parquet"))}


def table_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / RESULTS / f"{name}.parquet"


class IntervalReader:
    """One results table read in market-interval order, a range of whole intervals at a time.

    The table's key is ``step`` (per-step tables; interval = step // steps per
    interval) or else ``interval``. :meth:`take` returns every row whose interval is
    below ``k_end`` and not taken yet, in file order, with the columns asked for (the
    same dtypes as ``pandas.read_parquet``). Row groups are read whole, in file order,
    each once: every row group whose smallest interval (its Parquet statistics, or
    its key column when it has none) is below ``k_end`` is read before the rows are
    split, so the rows of an interval split over row groups, or written out of order,
    are all there; the rest is carried to the next call. Memory: the rows handed out
    plus the carried rows plus one row group; when the table is written in interval
    order (every table of a run is) the carry is less than a row group.
    """

    def __init__(self, path: Path, columns: Sequence[str] | None, steps_per_interval: int,
                 key: str | None = None) -> None:
        self.path = Path(path)
        self.pf = pq.ParquetFile(self.path)
        names = self.pf.schema_arrow.names
        self.key = key or ("step" if "step" in names else "interval")
        if self.key not in names:
            raise KeyError(f"{self.path.name} has no {self.key} column")
        wanted = names if columns is None else [c for c in columns if c in names]
        self.columns = list(dict.fromkeys([self.key, *wanted]))
        self.div = int(steps_per_interval) if self.key == "step" else 1
        md = self.pf.metadata
        self.num_rows = md.num_rows
        col = names.index(self.key)
        self._rg_min = np.array([self._min_interval(i, col) for i in range(md.num_row_groups)], dtype=float)
        self._next = 0
        self._carry: pd.DataFrame | None = None

    def _min_interval(self, i: int, col: int) -> float:
        rg = self.pf.metadata.row_group(i)
        if rg.num_rows == 0:
            return np.inf
        st = rg.column(col).statistics
        if st is not None and st.has_min_max:
            return float(int(st.min) // self.div)
        keys = self.pf.read_row_group(i, columns=[self.key]).column(0).to_numpy()
        return float(int(keys.min()) // self.div)

    def empty(self) -> pd.DataFrame:
        return self.pf.schema_arrow.empty_table().select(self.columns).to_pandas()

    def take(self, k_end: float) -> pd.DataFrame:
        """The rows of every interval below ``k_end`` not taken yet (file order)."""
        frames = [] if self._carry is None else [self._carry]
        pending = np.flatnonzero(self._rg_min[self._next:] < k_end)
        if pending.size:
            last = self._next + int(pending[-1])
            for i in range(self._next, last + 1):
                frames.append(self.pf.read_row_group(i, columns=self.columns,
                                                     use_pandas_metadata=True).to_pandas())
            self._next = last + 1
        if not frames:
            return self.empty()
        buf = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        k = buf[self.key].to_numpy() // self.div
        below = k < k_end
        if below.all():
            self._carry = None
            return buf
        self._carry = buf[~below].reset_index(drop=True)
        return buf[below].reset_index(drop=True)


def interval_chunks(run_dir: Path, cfg: StudyFile, columns: Mapping[str, Sequence[str] | None], *,
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, dict[str, pd.DataFrame]]]:
    """Consecutive ranges of whole market intervals of several results tables.

    ``columns``: table name -> the columns wanted (None: all). Yields ``(intervals,
    tables)``: the interval numbers of the chunk (``0 .. n_intervals - 1`` in order
    over all chunks) and, for each table the run has, its rows of those intervals in
    file order (the last chunk also gets any rows beyond the study's intervals); a
    table the run lacks is left out, as ``read_tables`` would. A chunk spans
    ``chunk_rows`` rows of the largest table (its rows per interval on average), at
    least one interval.
    """
    tl = cfg.timeline
    n = int(tl.n_intervals)
    readers = {name: IntervalReader(table_file(run_dir, name), cols, tl.steps_per_interval)
               for name, cols in columns.items() if table_file(run_dir, name).is_file()}
    per_interval = max([r.num_rows / max(n, 1) for r in readers.values()], default=1.0)
    span = max(1, int(chunk_rows // max(per_interval, 1.0)))
    for k0 in range(0, max(n, 1), span):
        k1 = min(k0 + span, n)
        end = np.inf if k1 >= n else k1
        yield np.arange(k0, max(k1, k0), dtype=np.int64), {name: r.take(end) for name, r in readers.items()}
        pa.default_memory_pool().release_unused()  # the chunk is done: hand freed pages back


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


#: (kpis column, check name, tolerance, unit) of each conservation check
CONSERVATION_CHECKS: tuple[tuple[str, str, float, str], ...] = (
    ("energy_balance_error_kwh", "energy balance (scheduled + curtailed + imbalance = metered)",
     ENERGY_TOLERANCE_KWH, "kWh"),
    ("money_balance_error_usd", "money balance (peer payments and network charges paid = received)",
     MONEY_TOLERANCE_USD, "USD"),
    ("power_balance_error_pct", "feeder power balance (source = load + losses)",
     POWER_TOLERANCE_PCT, "% of the gross load"),
)


def conservation_failures(k: pd.DataFrame) -> list[str]:
    """One message per broken conservation check of the kpis table ``k`` (empty: all hold).

    Each names the check, the worst interval, its error and the tolerance; a NaN
    error breaks the check too (something could not be checked).
    """
    out = []
    for col, name, tol, unit in CONSERVATION_CHECKS:
        x = k[col].to_numpy(dtype=float)
        bad = ~(x <= tol)
        if not bad.any():
            continue
        worst = np.where(np.isnan(x), np.inf, x)
        i = int(np.argmax(np.where(bad, worst, -np.inf)))
        n = int(bad.sum())
        extra = ("" if col != "power_balance_error_pct"
                 else f" ({float(k['power_balance_error_kw'].iloc[i]):.6g} kW)")
        out.append(f"{name} broken in {n} interval(s), worst interval {int(k['interval'].iloc[i])} "
                   f"(t_s={float(k['t_s'].iloc[i]):g}): error {x[i]:.6g} {unit}{extra} > tolerance {tol:g} {unit}")
    return out


def live_conservation_rows(run_dir: Path) -> int:
    """The live conservation checks that broke in a run with ``feeder.conservation:
    warn`` (rows of ``results/conservation.parquet``; 0 without the table)."""
    path = table_file(run_dir, "conservation")
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0


def check_conservation(k: pd.DataFrame, run_dir: Path, *, warn: bool = False) -> list[str]:
    """Fail the run when the kpis break a conservation check.

    Raises :class:`ConservationError` naming every broken check and writes the
    run's ``manifest.json`` status ``failed`` with that reason; the result tables stay.
    ``warn`` (``feeder.conservation: warn``): return the failures instead.
    """
    import json

    failures = conservation_failures(k)
    if not failures or warn:
        return failures
    msg = "conservation check failed: " + "; ".join(failures)
    path = Path(run_dir) / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        manifest["status"] = "failed"
        manifest["reason"] = msg
        path.write_text(json.dumps(manifest, indent=2, default=str))
    raise ConservationError(msg)


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
        (f"  mean peer trade price         {s['mean_price_usd_per_kwh']:10.4f} USD/kWh"
         if math.isfinite(s["mean_price_usd_per_kwh"]) else "  mean peer trade price               none (no peer trade)"),
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
        *([f"  conservation checks broken:   {s['conservation_broken']} (feeder.conservation: warn; "
           "rows in results/conservation.parquet)"] if s.get("conservation_broken") else []),
        f"  results: {run_dir / RESULTS}",
    ]
    return "\n".join(lines)
