"""Flexible demand (EVs charging smart, air conditioners on the transactive setpoint)
through the federation, its prosumers split in two federates: the tables equal the
in-process engine's, ``flex`` and ``ev_sessions`` included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runner.run_folder import read_tables
from tests.conftest import DEFAULT, assert_same_tables, run_both_engines, tecosim

pytestmark = pytest.mark.federation

EVENING = ["--set", "study.start=2026-06-21T17:00:00-04:00", "--set", "study.duration=2h",
           "--set", "prosumers.federates=2",
           "--set", "prosumers.ev.share=0.5", "--set", "prosumers.ev.control=smart",
           "--set", "prosumers.hvac.share=0.5", "--set", "prosumers.hvac.control=transactive"]


@pytest.fixture(scope="module")
def flex_runs(tmp_path_factory) -> dict:
    return run_both_engines(tmp_path_factory.mktemp("flex"), DEFAULT, "--no-report", *EVENING)


def test_flex_federation_equals_inprocess_engine(flex_runs):
    a = read_tables(flex_runs["inprocess"])
    b = read_tables(flex_runs["federation"])
    assert {"flex", "ev_sessions"} <= set(a)
    assert_same_tables(a, b)


def test_evening_arrivals_charge(flex_runs):
    """Cars come home in the evening window and charge (sessions that began inside it)."""
    t = read_tables(flex_runs["federation"])
    ev: pd.DataFrame = t["ev_sessions"]
    arrived = ev[ev.arrival_step >= 0]
    assert len(arrived) >= 3 and arrived.delivered_kwh.sum() > 0
    assert t["flex"].ev_kwh.sum() == pytest.approx(ev.delivered_kwh.sum(), rel=1e-9)


VERY_WEAK = DEFAULT.parent / "very_weak_grid.yaml"
DR_EVENING = ["--set", "study.start=2026-06-21T17:00:00-04:00", "--set", "study.duration=2h",
              "--set", "prosumers.federates=2", "--set", "prosumers.ev.share=0.4",
              "--set", "prosumers.hvac.share=0.3", "--set", "prosumers.water_heater.share=0.3"]


@pytest.fixture(scope="module")
def dr_runs(tmp_path_factory) -> dict:
    out = {}
    for name, engine, dr, limit in (("inprocess", "inprocess", "true", "on"),
                                    ("federation", "federation", "true", "on"),
                                    ("no_dr", "inprocess", "false", "off")):
        run_dir = tmp_path_factory.mktemp("dr") / name
        r = tecosim("run", str(VERY_WEAK), "--engine", engine, "--out", str(run_dir), "--no-report", *DR_EVENING,
                    "--set", f"controllers.demand_response.enabled={dr}",
                    "--set", f"controllers.demand_response.load_limit={limit}")
        assert r.returncode == 0, f"{name} run failed:\n{r.stdout}\n{r.stderr}"
        out[name] = run_dir
    return out


def test_demand_response_federation_equals_inprocess_engine(dr_runs):
    """The same tables, the DR payments in settlement included (the deliveries reach the
    market from both prosumer parts at the report time of k+1) and the load limits that
    follow a failed demand response (the DSO's limits reach the feeder with its calls),
    the calls recorded by the feeder (``curtailments`` rows ``demand_response``, one per
    call the prosumers answered), and the same ledger, byte for byte (its
    demand_response records and settlement records with DR columns)."""
    a = read_tables(dr_runs["inprocess"])
    b = read_tables(dr_runs["federation"])
    assert len(a["demand_response"]) > 0
    assert (a["curtailments"].limit == "load_limit").sum() > 0
    for t in (a, b):
        calls = t["curtailments"][t["curtailments"].limit == "demand_response"]
        assert sorted(zip(calls.step // 15, calls.participant, calls.cap_kw, strict=True)) == sorted(
            zip(t["demand_response"].interval, t["demand_response"].participant,
                t["demand_response"].requested_kw, strict=True))
    assert a["curtailment_energy"][a["curtailment_energy"].limit == "load_limit"].energy_kwh.sum() > 0
    assert a["settlements"].dr_paid_usd.sum() > 0
    assert a["settlements"].dr_paid_usd.sum() == pytest.approx(a["demand_response"].credit_usd.sum(), rel=1e-12)
    assert_same_tables(a, b)
    assert (dr_runs["inprocess"] / "ledger.zst").read_bytes() == (dr_runs["federation"] / "ledger.zst").read_bytes()


def test_demand_response_pays_what_was_cut_and_lifts_the_voltages(dr_runs):
    """Each call is paid its price for the energy its devices cut against their plan; the
    EVs' evening charging under-voltage (very weak feeder, 40 % of homes with a 7.2 kW
    charger) is seen in fewer customer-steps with the calls than without."""
    t = read_tables(dr_runs["inprocess"])
    dr = t["demand_response"]
    assert (dr.requested_kw > 0).all() and dr.reduced_kwh.sum() > 0
    asked_kwh = dr.requested_kw * 0.25  # 15-min intervals
    paid_kwh = np.minimum(dr.reduced_kwh, asked_kwh)
    assert dr.credit_usd.to_numpy() == pytest.approx((paid_kwh * dr.price_usd_per_kwh).to_numpy())
    assert set(dr.limit) <= {"v_min", "thermal"}

    def low(run) -> int:
        v = read_tables(run)["violations"]
        return int((v.limit == "v_min").sum())

    assert low(dr_runs["inprocess"]) < 0.8 * low(dr_runs["no_dr"])
    assert not (read_tables(dr_runs["no_dr"])["curtailments"].limit == "demand_response").any()


def test_report_has_the_flexible_demand_section(dr_runs):
    """The report's flexible-demand figure sums the flex and demand_response tables per
    interval (the same energy), and its section and table are in report.html."""
    from federates.common.config import load_config
    from runner.report import flex_series, write_report

    run = dr_runs["inprocess"]
    t = read_tables(run)
    cfg = load_config(run / "config.resolved.yaml")
    f = flex_series(run, cfg)
    h = cfg.timeline.interval_h
    assert f.ev_kw.sum() * h == pytest.approx(t["flex"].ev_kwh.sum(), rel=1e-12)
    assert f.hvac_kw.sum() * h == pytest.approx(t["flex"].hvac_kwh.sum(), rel=1e-12)
    assert f.dr_cut_kw.sum() * h == pytest.approx(t["demand_response"].reduced_kwh.sum(), rel=1e-12)
    out = write_report(run, quiet=True)
    text = out.read_text()
    assert "Flexible demand" in text and "EV energy missing at departure" in text
    assert (run / "report" / "flex.png").is_file()


CLEARED = ["--set", "study.start=2026-06-21T17:30:00-04:00", "--set", "study.duration=2h",
           "--set", "prosumers.federates=2", "--set", "prosumers.ev.share=0.5", "--set", "prosumers.ev.control=smart",
           "--set", "prosumers.hvac.share=0.5", "--set", "prosumers.hvac.control=transactive",
           "--set", "prosumers.water_heater.share=0.3", "--set", "prosumers.water_heater.control=transactive",
           "--set", "prosumers.flex_dispatch=cleared", "--set", "market.network_aware=envelopes"]


def test_cleared_dispatch_federation_equals_inprocess_engine(tmp_path):
    """``prosumers.flex_dispatch: cleared`` on the very weak feeder with the DSO's
    envelopes, the prosumers split in two: the dispatch time (confirmations and
    envelopes in at k*M + 0.75, the deviations out) gives the engine's tables, with
    devices deferred by their import envelope."""
    runs = run_both_engines(tmp_path, VERY_WEAK, "--no-report", *CLEARED)
    a = read_tables(runs["inprocess"])
    b = read_tables(runs["federation"])
    assert len(a["flex_bids"]) > 0 and a["flex_bids"].deferred_kwh.sum() > 0 and a["flex"].ev_kwh.sum() > 0
    assert_same_tables(a, b)
