"""Post-run loss allocation to trades: ``loss_allocation`` and ``loss_charges`` tables.

Made from the run folder's tables alone (after the run, like the kpis):

* the feeder's ``customer_losses`` (per physics step, each customer's share of the
  feeder's losses by the per-phase graph-based loss allocation of
  :mod:`federates.feeder.losses`, plus the ``background`` row: the share of the model's
  own Loads, which use the feeder like the customers do, and what no user carries;
  per step they add up to OpenDSS's ``Circuit.Losses``, the grid table's ``losses_kw``);
* the market's ``trades`` (``trade_id`` as the market numbered them,
  ``<interval>-<position>``; "" on untraded and background rows), ``clearing (prices) and the feeder's ``voltages`` (the applied
  customer powers ``p_kw``, i.e. the metered net energy per interval).

Per market interval ``k``, each customer's losses [kWh] (sum over the interval's steps
of ``loss_kw`` x step [h]) are split over its trades by
:func:`federates.feeder.losses.allocate_losses_to_trades`, pro rata by energy with the
customer's metered |net energy| as the denominator where it exceeds the traded energy.
``loss_allocation`` rows, by ``kind``:

* ``peer``: one per peer trade: ``seller_loss_kwh`` + ``buyer_loss_kwh`` = ``loss_kwh``;
* ``grid``: one per trade with the utility: the customer side's share (``participant``);
* ``untraded``: one per customer: the share of its energy no trade covers (its whole
  loss when it did not trade; ``energy_kwh`` = that uncovered energy);
* ``background``: one: the losses no customer carries, i.e. the model's own Loads'
  share plus what no user carries (``participant`` ``background``).

So per interval ``sum(loss_kwh)`` = the interval's feeder losses (sum of
``grid.losses_kw`` x step [h]); tests/feeder/test_loss_allocation_run.py checks it.

Pricing (``market.loss_price``): ``none`` (``loss_cost_usd`` NaN), ``clearing`` (the
interval's clearing price; where the mechanism sets none, the volume-weighted price of
the interval's peer trades; with no peer trade either, the retail tariff) or ``retail``
(the interval's retail price, ``results/tariff.parquet``; ``market.tariff``). ``loss_price_usd_per_kwh`` records the price used,
``loss_cost_usd`` = ``loss_kwh`` x that price. ``loss_charges``: per interval and
customer the losses it carries over all its rows (``loss_kwh``) and their cost; the
background is not charged to any customer.

The pricing is ex post: these tables are computed after the run. With
``market.settle_losses`` the market charges the same losses at the same price in the
settlement (the feeder sends each interval's per-customer loss energy; settlement rule
3b): each customer's ``loss_charges.loss_cost_usd`` is its ``settlements.charges_usd``.

Everything here is per market interval, so :func:`write_loss_tables` reads the run's
tables in chunks of whole intervals (:func:`runner.run_folder.interval_chunks`) and
appends each chunk's rows to the two Parquet files (row group by row group): the
memory is bounded by the chunk, not the study length, and the tables equal those of
the whole-table :func:`loss_allocation` / :func:`loss_charges` value for value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from federates.common.config import StudyFile
from federates.common.messages import GRID, Trade
from federates.common.tables import parquet_writer
from federates.feeder.losses import BACKGROUND, allocate_losses_to_trades
from runner.run_folder import CHUNK_ROWS, interval_chunks, table_file

__all__ = ["LOSS_ALLOCATION_DTYPES", "LOSS_CHARGES_DTYPES", "LOSS_COLUMNS", "interval_loss_allocation",
           "loss_allocation", "loss_charges", "write_loss_tables"]

#: the tables and columns the loss tables are made from
LOSS_COLUMNS: dict[str, list[str]] = {
    "customer_losses": ["step", "participant", "loss_kw"],
    "voltages": ["step", "participant", "p_kw"],
    "trades": ["interval", "trade_id", "seller", "buyer", "energy_kwh", "price_usd_per_kwh", "kind"],
    "clearing": ["interval", "price_usd_per_kwh"],
    "tariff": ["interval", "retail_usd_per_kwh"],
}

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


def _per_interval_price(cfg: StudyFile, t: Mapping[str, pd.DataFrame], intervals: np.ndarray) -> np.ndarray:
    """The loss price of each interval [USD/kWh] (NaN for ``loss_price: none``)."""
    m = cfg.market
    if m.loss_price == "none":
        return np.full(len(intervals), np.nan)
    retail = _retail(cfg, t, intervals)
    if m.loss_price == "retail":
        return retail
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
    return price.fillna(pd.Series(retail, index=intervals)).to_numpy(dtype=float)


def _retail(cfg: StudyFile, t: Mapping[str, pd.DataFrame], intervals: np.ndarray) -> np.ndarray:
    """The retail price of each interval [USD/kWh]: the run's ``tariff`` table (in
    ``t``), else the study's tariff (a run from before the table)."""
    ta = t.get("tariff")
    if ta is not None and len(ta):
        return ta.set_index("interval")["retail_usd_per_kwh"].reindex(intervals).to_numpy(dtype=float)
    return cfg.tariff.retail_usd_per_kwh[np.asarray(intervals, dtype=np.int64)].copy()


def loss_allocation(cfg: StudyFile, t: Mapping[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The ``loss_allocation`` table (see the module doc) from whole tables; None
    without ``customer_losses``."""
    cl = t.get("customer_losses")
    if cl is None or cl.empty:
        return None
    return interval_loss_allocation(cfg, t, list(dict.fromkeys(cl["participant"])))


def interval_loss_allocation(cfg: StudyFile, t: Mapping[str, pd.DataFrame],
                             names: Sequence[str]) -> pd.DataFrame | None:
    """The ``loss_allocation`` rows of the intervals in ``t``'s ``customer_losses``
    (whole tables, or one chunk of whole intervals); ``names``: the participants of
    the whole ``customer_losses`` table in order of first appearance (its columns;
    ``background`` among them). None when the chunk has no ``customer_losses`` row."""
    cl = t.get("customer_losses")
    if cl is None or cl.empty:
        return None
    tl = cfg.timeline
    spi = tl.steps_per_interval
    names = list(names)
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
    # whole columns once; the loop below only indexes them (pandas .loc / .iloc per
    # interval cost ~1 ms each: 80 s of a year-long run's post-processing)
    cust_kwh = loss_kwh[participants].to_numpy(dtype=float)
    metered_kwh = np.abs(net.to_numpy(dtype=float))
    background_kwh = (loss_kwh[BACKGROUND].to_numpy(dtype=float) if BACKGROUND in names
                      else np.zeros(len(intervals)))
    t_seller, t_buyer = trades["seller"].to_numpy(dtype=object), trades["buyer"].to_numpy(dtype=object)
    t_energy = trades["energy_kwh"].to_numpy(dtype=float)
    t_price = trades["price_usd_per_kwh"].to_numpy(dtype=float)
    rows: list[tuple] = []
    for j, k in enumerate(intervals.tolist()):
        cust = cust_kwh[j]
        metered = metered_kwh[j]
        idx = by_interval.get(k, np.zeros(0, dtype=np.int64))
        objs = [Trade(int(k), s, b, float(e), float(pr)) for s, b, e, pr in
                zip(t_seller[idx], t_buyer[idx], t_energy[idx], t_price[idx], strict=True)]
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
        rows.append((k, "background", "", None, None, BACKGROUND, np.nan, float(background_kwh[j]), 0.0, 0.0, pk))
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


def write_loss_tables(cfg: StudyFile, run_dir: Path, t: Mapping[str, pd.DataFrame] | None = None, *,
                      chunk_rows: int = CHUNK_ROWS) -> None:
    """Write ``results/loss_allocation.parquet`` and ``loss_charges.parquet`` (when the
    run has ``customer_losses``, i.e. ``feeder.loss_allocation`` is on).

    Without ``t`` (the post-run path) the run folder's tables are read in chunks of
    whole market intervals and each chunk's rows appended (one row group or more per
    chunk); with ``t`` (whole tables, short runs) they are made at once. Either way
    the files hold the same rows, values and dtypes.
    """
    out = Path(run_dir) / "results"
    if t is not None:
        alloc = loss_allocation(cfg, t)
        if alloc is None:
            return
        alloc.to_parquet(out / "loss_allocation.parquet", index=False)
        loss_charges(alloc).to_parquet(out / "loss_charges.parquet", index=False)
        return
    src = table_file(run_dir, "customer_losses")
    if not src.is_file():
        return
    names = _first_seen(src, "participant")
    if not names:
        return
    alloc_w = _AppendWriter(out / "loss_allocation.parquet")
    charges_w = _AppendWriter(out / "loss_charges.parquet")
    try:
        for _, chunk in interval_chunks(run_dir, cfg, LOSS_COLUMNS, chunk_rows=chunk_rows):
            alloc = interval_loss_allocation(cfg, chunk, names)
            if alloc is None or alloc.empty:
                continue
            alloc_w.write(alloc)
            charges_w.write(loss_charges(alloc))
        alloc_w.close()
        charges_w.close()
    except BaseException:
        alloc_w.abort()
        charges_w.abort()
        raise


def _first_seen(path: Path, column: str) -> list[str]:
    """The distinct values of a table's column in order of first appearance, read one
    row group (that column only) at a time."""
    pf = pq.ParquetFile(path)
    seen: dict[str, None] = {}
    for i in range(pf.metadata.num_row_groups):
        col = pf.read_row_group(i, columns=[column]).column(0)
        seen.update(dict.fromkeys(pc.unique(col).to_pylist()))
    return [x for x in seen if x is not None]


class _AppendWriter:
    """One Parquet file written a DataFrame at a time (each a row group or more), into
    a temporary name renamed over ``path`` at :meth:`close`.

    The schema is the first frame's, with no pandas metadata (as ``pandas.read_parquet``
    reads back a frame written whole: text columns as ``str``), text columns of that
    frame that hold only missing values typed as text.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.schema: pa.Schema | None = None
        self.writer: pq.ParquetWriter | None = None

    def write(self, df: pd.DataFrame) -> None:
        if self.writer is None:
            schema = pa.Schema.from_pandas(df, preserve_index=False).remove_metadata()
            self.schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
                                     for f in schema])
            self.writer = parquet_writer(self.tmp, self.schema)
        self.writer.write_table(pa.Table.from_pandas(df, schema=self.schema, preserve_index=False))

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)
