"""``market.settle_losses``: each customer's share of the feeder's losses, charged in the
settlement at ``market.loss_price`` and collected by the grid operator.

Reference: the post-run loss tables (runner/losses_table.py) price the same per-phase
loss allocation ex post; with the losses settled, each participant's ``charges_usd``
equals its ``loss_charges.loss_cost_usd`` and the grid operator collects their sum
(measured: within 4e-18 USD; asserted 1e-12). The live money check (federates/market/
books.py) holds every interval, or the run would have stopped. The federation charges
the same (the feeder sends each interval's loss energy to the market).
"""

from __future__ import annotations

import pytest

from runner.run_folder import read_tables
from tests.conftest import DEFAULT, assert_same_tables, tecosim

pytestmark = pytest.mark.feeder

SETTLE = ["--set", "study.start=2026-06-21T10:00:00-04:00", "--set", "study.duration=1h",
          "--set", "market.settle_losses=true", "--set", "market.loss_price=clearing", "--no-report", "--quiet"]


def _charges_equal_the_loss_tables(run) -> None:
    t = read_tables(run)
    s, lc = t["settlements"], t["loss_charges"]
    prosumers = s[s["participant"] != "dso"].merge(lc, on=["interval", "participant"], how="left")
    assert prosumers["loss_cost_usd"].notna().all()
    assert prosumers["charges_usd"].to_numpy() == pytest.approx(prosumers["loss_cost_usd"].to_numpy(), abs=1e-12)
    dso = s[s["participant"] == "dso"].set_index("interval")["charges_received_usd"]
    per_k = lc.groupby("interval")["loss_cost_usd"].sum()
    assert dso.to_numpy() == pytest.approx(per_k.reindex(dso.index).to_numpy(), abs=1e-12)
    assert len(dso) == s["interval"].nunique() and dso.gt(0).all()  # every interval has losses to collect
    assert len(t["conservation"]) == 0


def test_losses_settled_in_process(tmp_path):
    run = tmp_path / "run"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(run), *SETTLE)
    assert r.returncode == 0, r.stderr
    _charges_equal_the_loss_tables(run)


@pytest.mark.federation
def test_losses_settled_as_a_federation_equal_in_process(tmp_path):
    runs = {}
    for engine in ("inprocess", "federation"):
        runs[engine] = tmp_path / engine
        r = tecosim("run", str(DEFAULT), "--engine", engine, "--out", str(runs[engine]), *SETTLE)
        assert r.returncode == 0, r.stderr
    _charges_equal_the_loss_tables(runs["federation"])
    assert_same_tables(read_tables(runs["inprocess"]), read_tables(runs["federation"]))


def test_settle_losses_needs_a_loss_price():
    r = tecosim("validate", str(DEFAULT), "--set", "market.settle_losses=true")
    assert r.returncode == 2
    assert "market.settle_losses: needs a loss price to charge the losses at " \
           "(allowed: market.loss_price: clearing or retail)" in r.stderr
    r = tecosim("validate", str(DEFAULT), "--set", "market.settle_losses=true", "--set", "market.loss_price=retail",
                "--set", "feeder.loss_allocation=false")
    assert r.returncode == 2 and "feeder.loss_allocation: true" in r.stderr
