"""``tecosim run`` writes the loss allocation to trades (results/loss_allocation.parquet).

Reference: conservation. Per market interval the allocated losses (peer, grid,
untraded and background rows) add up to the feeder's losses, sum of the grid table's
``losses_kw`` (OpenDSS's ``Circuit.Losses``) x step [h]; the priced variant's cost is
the allocated kWh x the interval's clearing price.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federates.common.config import load_config
from runner.losses_table import LOSS_ALLOCATION_DTYPES, loss_allocation, loss_charges
from runner.run_folder import read_tables
from tests.conftest import DEFAULT, tecosim

pytestmark = pytest.mark.feeder

WINDOW = ["--set", "study.start=2026-06-21T12:00:00-04:00", "--set", "study.duration=30min"]
PRICED = [*WINDOW, "--set", "market.loss_price=clearing"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("loss_run") / "run"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(out), *PRICED)
    assert r.returncode == 0, f"run failed:\n{r.stdout}\n{r.stderr}"
    return out


def test_interval_totals_equal_the_feeder_losses(run):
    a = pd.read_parquet(run / "results" / "loss_allocation.parquet")
    g = pd.read_parquet(run / "results" / "grid.parquet")
    assert list(a.columns) == list(LOSS_ALLOCATION_DTYPES)
    assert set(a["kind"]) == {"peer", "grid", "untraded", "background"}
    step_h = 60.0 / 3600.0
    feeder_kwh = (g["losses_kw"] * step_h).groupby(g["step"] // 15).sum()
    allocated_kwh = a.groupby("interval")["loss_kwh"].sum()
    assert list(allocated_kwh.index) == [0, 1] and list(feeder_kwh.index) == [0, 1]
    # the allocation closes on OpenDSS's Circuit.Losses to float rounding (measured ~1e-15)
    np.testing.assert_allclose(allocated_kwh.to_numpy(), feeder_kwh.to_numpy(), rtol=1e-9)
    assert (feeder_kwh > 0).all()
    # the feeder's own loads use it too: at midday the customers' ~0.1 MW of |p| against
    # ~1.7 MW of background load leaves most of the losses with the background
    background_kwh = a[a["kind"] == "background"].groupby("interval")["loss_kwh"].sum()
    assert (background_kwh > 0.5 * feeder_kwh).all()
    peer = a[a["kind"] == "peer"]
    assert len(peer) and (peer["loss_kwh"] > 0).all()
    np.testing.assert_allclose(peer["loss_kwh"], peer["seller_loss_kwh"] + peer["buyer_loss_kwh"], rtol=1e-12)
    trades = pd.read_parquet(run / "results" / "trades.parquet")
    priced = a[a["trade_id"] != ""]
    assert sorted(priced["trade_id"]) == sorted(trades["trade_id"])
    t = trades.set_index("trade_id").loc[priced["trade_id"]]
    assert priced["seller"].tolist() == t["seller"].tolist()
    np.testing.assert_allclose(priced["energy_kwh"], t["energy_kwh"], rtol=0)


def test_clearing_priced_losses(run):
    a = pd.read_parquet(run / "results" / "loss_allocation.parquet")
    cl = pd.read_parquet(run / "results" / "clearing.parquet").set_index("interval")
    price = cl["price_usd_per_kwh"].reindex(a["interval"]).to_numpy()
    has_price = np.isfinite(price)
    assert has_price.any()
    np.testing.assert_allclose(a["loss_cost_usd"].to_numpy()[has_price],
                               a["loss_kwh"].to_numpy()[has_price] * price[has_price], rtol=1e-12)
    assert np.isfinite(a["loss_cost_usd"]).all()
    ch = pd.read_parquet(run / "results" / "loss_charges.parquet")
    assert list(ch.columns) == ["interval", "participant", "loss_kwh", "loss_price_usd_per_kwh", "loss_cost_usd"]
    # the customers are charged every allocated kWh but the background
    charged = ch.groupby("interval")["loss_kwh"].sum()
    not_bg = a[a["kind"] != "background"].groupby("interval")["loss_kwh"].sum()
    np.testing.assert_allclose(charged.to_numpy(), not_bg.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(ch["loss_cost_usd"].sum(), a.loc[a["kind"] != "background", "loss_cost_usd"].sum(),
                               rtol=1e-12)


def test_retail_and_unpriced_variants(run):
    cfg = load_config(DEFAULT, [x for x in PRICED if x != "--set"])
    tables = read_tables(run)
    for price, expect in (("retail", cfg.market.retail_usd_per_kwh), ("none", np.nan)):
        c = cfg.model_copy(update={"market": cfg.market.model_copy(update={"loss_price": price})})
        a = loss_allocation(c, tables)
        np.testing.assert_array_equal(a["loss_price_usd_per_kwh"].to_numpy(), np.full(len(a), expect))
        if price == "none":
            assert a["loss_cost_usd"].isna().all()
        else:
            np.testing.assert_allclose(a["loss_cost_usd"], a["loss_kwh"] * expect, rtol=1e-12)
        assert len(loss_charges(a)) == len(pd.read_parquet(run / "results" / "loss_charges.parquet"))
    no_losses = {**tables, "customer_losses": tables["customer_losses"].iloc[:0]}
    assert loss_allocation(cfg, no_losses) is None
