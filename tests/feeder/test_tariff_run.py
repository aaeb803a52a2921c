"""A short study under the time-of-use tariff of configs/tou.yaml, 15:00-17:00 local
time across the 16:00 start of the evening peak, in process: the prices of each
interval reach the bids, the clearing's grid trades, the settlement, the baseline
bills and the loss prices, each checked against an independent formulation from the
run's own tables and its ``tariff`` table.

Controllers are off, so no PV is curtailed and the metered energy of each interval is
the households' net power summed over the steps (``profiles.net_kw``): the baseline
bill can be recomputed from the profiles alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federates.common.study import Study
from runner.kpis import baseline_bills
from runner.report import aggregate
from runner.run_folder import read_tables, run_tariff
from tests.conftest import REPO, tecosim

TOU = REPO / "configs" / "tou.yaml"
WINDOW = ["--set", "study.start=2026-06-21T15:00:00-04:00", "--set", "study.duration=2h",
          "--set", "controllers.enabled=false", "--set", "prosumers.strategy=truthful_tariff",
          "--set", "feeder.loss_allocation=true", "--set", "market.loss_price=retail"]
MONEY_ATOL_USD = 1e-12  # float sums of a few dozen products of cents
STEP_H = 1 / 60


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tou") / "run"
    r = tecosim("run", str(TOU), "--engine", "inprocess", "--out", str(out), "--no-report", *WINDOW)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, read_tables(out)


def test_the_tariff_table_holds_both_periods(run):
    _, t = run
    ta = t["tariff"]
    assert list(ta["interval"]) == list(range(8))
    assert list(ta["t_s"]) == [k * 900.0 for k in range(8)]
    # 15:00-16:00 off peak, 16:00-17:00 peak (configs/tou.yaml)
    assert list(ta["retail_usd_per_kwh"]) == [0.21] * 4 + [0.42] * 4
    assert list(ta["feed_in_usd_per_kwh"]) == [0.08] * 4 + [0.12] * 4


def test_bids_and_grid_trades_carry_the_interval_prices(run):
    _, t = run
    ta = t["tariff"].set_index("interval")
    b = t["bids"]
    want = np.where(b["side"] == "buy", ta["retail_usd_per_kwh"].reindex(b["interval"]).to_numpy(),
                    ta["feed_in_usd_per_kwh"].reindex(b["interval"]).to_numpy())
    assert np.array_equal(b["price_usd_per_kwh"].to_numpy(), want)  # truthful_tariff
    tr = t["trades"]
    grid = tr[tr["kind"] != "peer"]
    assert len(grid) > 0
    from_grid = grid["seller"] == "grid"
    want = np.where(from_grid, ta["retail_usd_per_kwh"].reindex(grid["interval"]).to_numpy(),
                    ta["feed_in_usd_per_kwh"].reindex(grid["interval"]).to_numpy())
    assert np.array_equal(grid["price_usd_per_kwh"].to_numpy(), want)


def test_grid_part_of_every_bill_is_its_grid_energy_at_the_interval_prices(run):
    """Independent formulation: for every participant, sum over intervals of grid
    purchases x the interval's retail - grid sales x its feed-in equals what the
    settlement billed for the grid (grid_paid_usd - grid_received_usd), the scheduled
    grid trades, replacement energy and the imbalance at the tariff together."""
    _, t = run
    s = t["settlements"]
    ta = t["tariff"].set_index("interval")
    r = ta["retail_usd_per_kwh"].reindex(s["interval"]).to_numpy()
    f = ta["feed_in_usd_per_kwh"].reindex(s["interval"]).to_numpy()
    energy = (s["grid_bought_kwh"] * r - s["grid_sold_kwh"] * f).groupby(s["participant"]).sum()
    billed = (s["grid_paid_usd"] - s["grid_received_usd"]).groupby(s["participant"]).sum()
    assert len(energy) == 40  # every prosumer of the default study
    np.testing.assert_allclose(energy.to_numpy(), billed.reindex(energy.index).to_numpy(), rtol=0,
                               atol=MONEY_ATOL_USD)
    # both periods count: the peak intervals carry grid energy at the peak prices
    peak = s[s["interval"] >= 4]
    assert peak["grid_bought_kwh"].sum() > 0 and peak["grid_sold_kwh"].sum() > 0


def test_baseline_bill_is_the_profiles_net_energy_at_the_interval_prices(run):
    out, t = run
    p = t["profiles"]
    ta = t["tariff"].set_index("interval")
    spi = 15
    e = (p["net_kw"] * STEP_H).groupby([p["step"] // spi, p["participant"]]).sum()
    k = e.index.get_level_values(0)
    r = ta["retail_usd_per_kwh"].reindex(k).to_numpy()
    f = ta["feed_in_usd_per_kwh"].reindex(k).to_numpy()
    x = e.to_numpy()
    independent = pd.Series(np.clip(x, 0, None) * r - np.clip(-x, 0, None) * f, index=e.index).groupby(level=1).sum()
    cfg = Study.load(out).cfg
    tariff = run_tariff(out, cfg)
    b = baseline_bills(t["settlements"], tariff.retail_usd_per_kwh, tariff.feed_in_usd_per_kwh)
    np.testing.assert_allclose(b["baseline_usd"].reindex(independent.index).to_numpy(), independent.to_numpy(),
                               rtol=0, atol=1e-12)
    # the report's bills (read chunk by chunk, the tariff from the run folder) are the same
    d = aggregate(out, cfg)
    np.testing.assert_allclose(d.bill_sums["baseline_usd"].reindex(independent.index).to_numpy(),
                               independent.to_numpy(), rtol=0, atol=1e-12)
    # and differ from the flat default's: the tariff matters
    flat = baseline_bills(t["settlements"], 0.26, 0.08)["baseline_usd"].reindex(independent.index)
    assert np.abs(flat.to_numpy() - independent.to_numpy()).max() > 0.01


def test_loss_prices_are_the_interval_retail(run):
    _, t = run
    la = t["loss_allocation"]
    ta = t["tariff"].set_index("interval")
    assert np.array_equal(la["loss_price_usd_per_kwh"].to_numpy(),
                          ta["retail_usd_per_kwh"].reindex(la["interval"]).to_numpy())


def test_dynamic_tariff_with_negative_feed_in_runs_and_its_folder_stands_alone(tmp_path):
    """A 20-min price series with a negative feed-in at midday (a wholesale-indexed
    tariff, allow_negative_prices), named relative to its config: the run prices every
    15-min interval at the time-weighted mean, the money books balance (no conservation
    row), a seller to the grid pays for a negative feed-in, and the run folder keeps
    its own copy of the series (the report runs after the original is gone)."""
    times = [f"2026-06-21T{11 + m // 60:02d}:{m % 60:02d}:00-04:00" for m in range(0, 80, 20)]
    feed_in = [0.01, -0.02, -0.05, 0.03]
    (tmp_path / "prices.csv").write_text("time,retail_usd_per_kwh,feed_in_usd_per_kwh\n" + "".join(
        f"{t},{f + 0.15:.2f},{f}\n" for t, f in zip(times, feed_in, strict=True)))
    (tmp_path / "dyn.yaml").write_text(
        f"base: {REPO / 'configs' / 'default.yaml'}\n"
        "study: {start: '2026-06-21T11:00:00-04:00', duration: 1h}\n"
        "market: {tariff: {kind: dynamic, path: prices.csv, allow_negative_prices: true}}\n")
    out = tmp_path / "run"
    r = tecosim("run", str(tmp_path / "dyn.yaml"), "--engine", "inprocess", "--out", str(out), "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    t = read_tables(out)
    # 15-min intervals over 20-min prices: k=0 [0,15) in row 1; k=1 [15,30): 5 min row 1,
    # 10 min row 2 -> (5*0.01 + 10*-0.02)/15 = -0.01; k=2 [30,45): 10 min row 2, 5 min
    # row 3 -> (10*-0.02 + 5*-0.05)/15 = -0.03; k=3 [45,60): row 3 -> -0.05
    np.testing.assert_allclose(t["tariff"]["feed_in_usd_per_kwh"], [0.01, -0.01, -0.03, -0.05], rtol=0, atol=1e-15)
    np.testing.assert_allclose(t["tariff"]["retail_usd_per_kwh"], [0.16, 0.14, 0.12, 0.10], rtol=0, atol=1e-15)
    assert len(t["conservation"]) == 0
    s = t["settlements"]
    neg = s[s["interval"] >= 1]
    assert neg["grid_sold_kwh"].sum() > 0
    assert (neg.loc[neg["grid_sold_kwh"] > 0, "grid_received_usd"] < 0).all()  # exporting costs money
    assert (out / "tariff_prices.csv").is_file()
    (tmp_path / "prices.csv").unlink()
    r = tecosim("report", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
