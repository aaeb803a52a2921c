"""The real federation (broker + five federate processes) against the in-process
engine and against conservation laws, on the midday window of the default study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from federates.common.units import SECONDS_PER_HOUR
from federates.market.ledger import read_blocks
from runner.run_folder import read_tables
from tests.conftest import assert_same_tables, processes_mentioning

pytestmark = pytest.mark.federation

TABLES = ("bids", "trades", "clearing", "settlements", "voltages", "grid", "meters",
          "curtailments", "violations", "control", "profiles", "prosumers", "kpis",
          "curtailed_trades", "curtailment_energy", "ami", "lines", "unbalance")


def test_run_folder_holds_what_the_manifest_promises(midday_runs):
    run = midday_runs["federation"]
    m = json.loads((run / "manifest.json").read_text())
    assert m["engine"] == "federation" and m["status"] == "ok"
    assert m["seed"] == 42 and len(m["config_sha256"]) == 64
    assert {"helics", "opendssdirect.py", "pandas"} <= set(m["versions"])
    names = {f["name"] for f in m["federates"]}
    assert names == {"broker", "prosumers", "market", "feeder", "meters", "controllers"}
    assert all(f["exit_code"] == 0 and f["wall_s"] > 0 for f in m["federates"])
    for name in names:
        assert (run / "logs" / f"{name}.log").is_file()
    for table in TABLES:
        assert (run / "results" / f"{table}.parquet").is_file(), table
    assert yaml.safe_load((run / "config.resolved.yaml").read_text())["study"]["duration"] == 7200
    spec = json.loads((run / "runner.json").read_text())
    assert len(spec["federates"]) == 6
    assert "summary" in m and (run / "summary.txt").is_file()


def test_federation_equals_inprocess_engine(midday_runs):
    a = read_tables(midday_runs["inprocess"])
    b = read_tables(midday_runs["federation"])
    assert_same_tables(a, b)


@pytest.fixture(scope="module")
def fed(midday_runs):
    return read_tables(midday_runs["federation"])


def test_control_loop_did_real_work_and_cleared_violations(fed):
    k = fed["kpis"]
    assert k["violation_min_before"].sum() > 30  # the weak grid overvolts at midday
    assert k["violation_min_after"].sum() < k["violation_min_before"].sum()
    assert fed["curtailments"].shape[0] > 0
    assert fed["settlements"]["curtailed_kwh"].sum() > 0
    assert (fed["voltages"]["q_kvar"] > 0).any()  # Volt-VAR absorbed reactive power


def test_every_voltage_outside_the_band_is_recorded(fed):
    v = fed["voltages"]
    bad = v[(v["v_pu"] > 1.05 + 1e-9) | (v["v_pu"] < 0.95 - 1e-9)]
    viol = fed["violations"]
    unresolved = viol[(viol["kind"] == "customer") & ~viol["resolved"]]
    recorded = set(zip(unresolved["step"], unresolved["element"], strict=True))
    missing = [(s, p) for s, p in zip(bad["step"], bad["participant"], strict=True) if (s, p) not in recorded]
    assert not missing, f"unrecorded violations: {missing[:5]}"


def test_feeder_power_balance_each_step(fed):
    g = fed["grid"]
    np.testing.assert_allclose(g["source_p_kw"], g["load_kw"] + g["losses_kw"], rtol=1e-3)


def test_meter_energy_is_what_settlement_used(fed):
    meters, st = fed["meters"], fed["settlements"]
    step_h = 60.0 / SECONDS_PER_HOUR
    meters = meters.assign(interval=meters["step"] // 15, energy_kwh=meters["p_kw"] * step_h)
    metered = meters.groupby(["interval", "meter"])["energy_kwh"].sum()
    got = st.set_index(["interval", "participant"])["metered_kwh"]
    np.testing.assert_allclose(got.loc[metered.index].to_numpy(), metered.to_numpy(), atol=1e-9)


def test_money_among_peers_is_conserved(fed):
    st = fed["settlements"].groupby("interval")[["peer_paid_usd", "peer_received_usd"]].sum()
    np.testing.assert_allclose(st["peer_paid_usd"], st["peer_received_usd"], atol=1e-9)


def test_trades_match_the_clearing_and_orders(fed):
    tr, cl = fed["trades"], fed["clearing"]
    peer = tr[tr["kind"] == "peer"].groupby("interval")["energy_kwh"].sum()
    np.testing.assert_allclose(cl.set_index("interval")["traded_kwh"].loc[peer.index], peer, atol=1e-9)
    bids = fed["bids"].groupby(["interval", "participant"])["energy_kwh"].sum()
    sold = tr.groupby(["interval", "seller"])["energy_kwh"].sum()
    bought = tr.groupby(["interval", "buyer"])["energy_kwh"].sum()
    for (k, p), e in bids.items():
        assert sold.get((k, p), 0.0) + bought.get((k, p), 0.0) == pytest.approx(e, abs=1e-9)


def test_no_process_outlives_the_runs(midday_runs):
    for run in midday_runs.values():
        assert processes_mentioning(str(run)) == []
    port = json.loads((midday_runs["federation"] / "manifest.json").read_text())["broker_port"]
    assert processes_mentioning(f"tecosim_broker_{port}") == []


def test_ledger_is_intact_and_identical_across_engines(midday_runs):
    from federates.market.ledger import verify_ledger

    a = midday_runs["inprocess"] / "ledger.zst"
    b = midday_runs["federation"] / "ledger.zst"
    assert a.read_bytes() == b.read_bytes()
    r = verify_ledger(b)
    # genesis + an opening block per interval + a closing block per interval
    assert r.ok and r.n_blocks == 1 + 2 * 8, r.first_bad
    kinds = {rec["kind"] for blk in read_blocks(b) for rec in blk["records"]}
    assert kinds == {"bid", "trade", "curtailment", "trade_curtailment", "settlement"}
