"""Demand response in the books over a real run: the weak-grid evening
(configs/ev_evening.yaml) from 18:00 to 20:00, the EVs' arrival peak, with the DSO's
demand-response calls paid in settlement (federates/market/settlement.py, rule 3c).

The references: the prosumers' own ``demand_response`` table (what each call got,
computed where the devices plan) against the market's ``settlements`` (computed from
the deliveries the prosumers sent it); and the settlement's conservation laws, with the
DR payment a transfer from the grid operator (``dso``) to the customers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from federates.common.messages import GRID_OPERATOR
from federates.market.ledger import read_blocks, verify_ledger
from runner.run_folder import read_tables
from tests.conftest import REPO, tecosim

EV_EVENING = REPO / "configs" / "ev_evening.yaml"
PEAK = ["--set", "study.start=2026-06-21T18:00:00-04:00", "--set", "study.duration=2h"]


@pytest.fixture(scope="module", params=["planned", "cleared"])
def evening(request, tmp_path_factory) -> Path:
    """The evening peak with the devices planned at bid time, and with them bidding and
    dispatched on the cleared price (``prosumers.flex_dispatch: cleared``): the books
    must hold either way."""
    run_dir = tmp_path_factory.mktemp(f"dr_books_{request.param}") / "run"
    r = tecosim("run", str(EV_EVENING), "--engine", "inprocess", "--out", str(run_dir), "--no-report", *PEAK,
                "--set", f"prosumers.flex_dispatch={request.param}")
    assert r.returncode == 0, r.stdout + r.stderr
    return run_dir


def test_settlement_pays_what_the_demand_response_table_says(evening):
    """Per interval and participant, the settlement's DR energy and money equal the
    demand_response table's paid energy (min(cut, asked x 15 min)) x the price, summed
    independently here; the grid operator pays the interval's total."""
    t = read_tables(evening)
    dr, s = t["demand_response"], t["settlements"]
    assert len(dr) > 10 and dr.reduced_kwh.sum() > 1.0  # the evening's calls really cut something
    price = 0.50  # configs/ev_evening.yaml
    paid_kwh = np.minimum(dr.reduced_kwh, dr.requested_kw * 0.25)
    np.testing.assert_allclose(dr.paid_kwh, paid_kwh, rtol=0, atol=1e-12)
    by_table = (paid_kwh * price).groupby([dr.interval, dr.participant]).sum()
    customers = s[s.participant != GRID_OPERATOR].set_index(["interval", "participant"])
    got = customers.dr_received_usd[customers.dr_received_usd != 0]
    assert sorted(got.index) == sorted(by_table[by_table != 0].index)
    np.testing.assert_allclose(got.loc[by_table[by_table != 0].index], by_table[by_table != 0], rtol=1e-12)
    np.testing.assert_allclose(customers.dr_kwh.loc[by_table.index], paid_kwh.groupby(
        [dr.interval, dr.participant]).sum(), rtol=1e-12, atol=1e-15)
    dso = s[s.participant == GRID_OPERATOR].set_index("interval")
    per_interval = (paid_kwh * price).groupby(dr.interval).sum()
    per_interval = per_interval[per_interval > 0]
    np.testing.assert_allclose(dso.dr_paid_usd.loc[per_interval.index], per_interval, rtol=1e-12)
    assert math.fsum(s.dr_paid_usd) == pytest.approx(math.fsum(paid_kwh * price), rel=1e-12)
    assert math.fsum(s.dr_received_usd) == pytest.approx(math.fsum(dr.credit_usd), rel=1e-12)


def test_the_bills_still_close_with_the_dso_paying(evening):
    """Every interval: peers' money conserved, every charge and every DR dollar paid is
    received, the bill's five parts add up, and everyone's bills together (the grid
    operator's included) are what the utility nets: DR is a transfer, not a new source
    of money. Each customer's settled energy equals its metered energy (DR is no energy
    flow of the settlement: the meter already saw the cut)."""
    s = read_tables(evening)["settlements"]
    for k, g in s.groupby("interval"):
        assert math.fsum(g.peer_paid_usd) == pytest.approx(math.fsum(g.peer_received_usd), abs=1e-9), k
        assert math.fsum(g.charges_paid_usd) == pytest.approx(math.fsum(g.charges_received_usd), abs=1e-9), k
        assert math.fsum(g.dr_paid_usd) == pytest.approx(math.fsum(g.dr_received_usd), abs=1e-9), k
        assert math.fsum(g.net_cost_usd) == pytest.approx(
            math.fsum(g.grid_paid_usd) - math.fsum(g.grid_received_usd), abs=1e-9), k
    parts = s.market_cost_usd + s.replacement_cost_usd + s.imbalance_cost_usd + s.charges_usd + s.dr_usd
    np.testing.assert_allclose(s.net_cost_usd, parts, rtol=0, atol=1e-9)
    c = s[s.participant != GRID_OPERATOR]
    settled = c.peer_bought_kwh + c.grid_bought_kwh - c.peer_sold_kwh - c.grid_sold_kwh
    np.testing.assert_allclose(settled, c.metered_kwh, rtol=0, atol=1e-9)
    assert (s[s.participant == GRID_OPERATOR].dr_received_usd == 0).all()
    assert (c.dr_paid_usd == 0).all()


def test_the_ledger_signs_the_deliveries_and_the_payments(evening):
    """`tecosim ledger verify` passes; each closing block holds one demand_response record
    per call answered (the table's rows) and settlement records carrying the DR columns,
    whose totals are the table's."""
    assert verify_ledger(evening / "ledger.zst").ok
    t = read_tables(evening)
    records = [r for b in read_blocks(evening / "ledger.zst") for r in b["records"]]
    got = sorted((r["interval"], r["body"]["participant"], r["body"]["reduced_kwh"])
                 for r in records if r["kind"] == "demand_response")
    dr = t["demand_response"]
    assert got == sorted(zip(dr.interval.tolist(), dr.participant.tolist(), dr.reduced_kwh.tolist(), strict=True))
    paid = math.fsum(r["body"]["dr_paid_usd"] for r in records if r["kind"] == "settlement")
    assert paid == pytest.approx(math.fsum(t["settlements"].dr_paid_usd), rel=1e-15)


def test_the_kpis_of_the_evening(evening):
    """The configured evening limits loads after demand response (load_limit: on): the
    KPIs read the unserved import, the DSO's DR payment and the customers' DR credit from
    the tables, and unserved import is not PV curtailment."""
    from runner.kpis import flex_summary
    from runner.run_folder import RunFolder

    t = read_tables(evening)
    s = flex_summary(RunFolder(evening))
    ce = t["curtailment_energy"]
    unserved = math.fsum(ce[ce.limit == "load_limit"].energy_kwh) + math.fsum(t["flex"].load_limited_kwh)
    assert (t["curtailments"].limit == "load_limit").sum() > 0
    assert unserved > 0 and s["unserved_kwh"] == pytest.approx(unserved, rel=1e-12)
    assert s["dr_paid_usd"] == pytest.approx(math.fsum(t["settlements"].dr_paid_usd), rel=1e-12)
    customers = t["settlements"][t["settlements"].participant != GRID_OPERATOR]
    assert s["mean_bill_dr_usd"] == pytest.approx(-s["dr_paid_usd"] / customers.participant.nunique(), rel=1e-12)
    v = t["voltages"]
    assert s["voltage_under_after_customer_min"] == (v.v_pu < 0.95).sum()  # 1-min steps
    assert s["voltage_under_before_customer_min"] == (v.v_before_pu < 0.95).sum()
    # the monthly table's PV curtailment: every cause but load_limit
    assert t["monthly"].curtailed_kwh.sum() == pytest.approx(math.fsum(ce[ce.limit != "load_limit"].energy_kwh),
                                                             abs=1e-12)


def test_every_call_is_a_curtailments_row(evening):
    """The feeder's ``curtailments`` rows with limit ``demand_response`` are the calls the
    DSO sent it, recorded independently of the prosumers' ``demand_response`` table (which
    is made where the devices answer them): one to one, interval, participant, asked cut
    and cause equal; each at its interval's first step, iteration 0, with the customer's
    voltage and power of that step's final solve (the ``voltages`` table). No DR energy in
    ``curtailment_energy``, so the PV curtailment KPIs do not see the calls."""
    t = read_tables(evening)
    dr, c, v = t["demand_response"], t["curtailments"], t["voltages"]
    rows = c[c.limit == "demand_response"]
    assert len(rows) == len(dr) > 10
    steps_per_interval = 15  # 1-min steps, 15-min intervals
    assert (rows.step % steps_per_interval == 0).all() and (rows.iteration == 0).all()
    feeder = sorted(zip((rows.step // steps_per_interval).tolist(), rows.participant, rows.cap_kw.tolist(),
                        rows.element, strict=True))
    prosumers = sorted(zip(dr.interval.tolist(), dr.participant, dr.requested_kw.tolist(),
                           (dr.limit + ":" + dr.element), strict=True))
    assert feeder == prosumers
    at = v.set_index(["step", "participant"]).loc[list(zip(rows.step, rows.participant, strict=True))]
    np.testing.assert_array_equal(rows.v_pu.to_numpy(), at.v_pu.to_numpy())
    np.testing.assert_array_equal(rows.export_kw.to_numpy(), -at.p_kw.to_numpy())
    assert (rows.group.to_numpy() == t["prosumers"].set_index("participant").group.loc[rows.participant]).all()
    assert "demand_response" not in set(t["curtailment_energy"].limit)
    # the rows of a step are in order: the load limits and calls (iteration 0) before the caps
    assert (c.groupby("step").iteration.apply(lambda s: s.is_monotonic_increasing)).all()
