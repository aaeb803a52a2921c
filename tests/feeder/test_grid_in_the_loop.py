"""The grid in the loop of whole studies: limits recorded, DSO curtailment by limit and
policy, curtailment named down to the trade, and network-aware clearing.

Real in-process runs of the CLI on real OpenDSS models (the federation gives the same
tables: tests/federation). References: the configured limits themselves (a curtailed
limit must be within its value after control), conservation of curtailed energy from
the DSO's records through settlement to the trades, and the comparison of the same
study with and without operating envelopes.
"""

from __future__ import annotations

import pandas as pd
import pytest

from federates.market.ledger import verify_ledger
from tests.conftest import DEFAULT, REPO, tecosim

pytestmark = pytest.mark.feeder

NOON_1H = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=1h"]
MIDDAY_2H = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=2h"]


def run(tmp_path_factory, name: str, config, *args: str) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp(name)
    r = tecosim("run", str(config), "--engine", "inprocess", "--out", str(out), *args)
    assert r.returncode == 0, r.stdout + r.stderr
    tables = {p.stem: pd.read_parquet(p) for p in (out / "results").glob("*.parquet")}
    tables["_dir"] = out
    return tables


@pytest.fixture(scope="module")
def thermal(tmp_path_factory):
    """IEEE 13 default study with 15 kVA service transformers: midday export of three
    PV homes overloads some of them (reverse flow)."""
    return run(tmp_path_factory, "thermal", DEFAULT, *NOON_1H,
               "--set", "feeder.customer_connection.transformer_kva=15")


def test_overloaded_service_transformers_are_curtailed_back_within_rating(thermal):
    v = thermal["violations"]
    th = v[v["limit"] == "thermal"]
    assert (th["value_before"] > 100.0).any()  # overloaded before control
    assert th["element"].str.startswith("transformer.svc_").all()
    # after control every overload is back within the rating (the limit is the reference)
    assert th["resolved"].all() and (th["value"] <= 100.0).all()
    cur = thermal["curtailments"]
    by_thermal = cur[cur["limit"] == "thermal"]
    assert len(by_thermal) > 0
    assert set(by_thermal["element"]) <= set(th["element"])
    assert (by_thermal["cap_kw"] < by_thermal["export_kw"]).all()


def test_curtailed_energy_is_conserved_down_to_the_trades(thermal):
    energy = thermal["curtailment_energy"]
    st = thermal["settlements"]
    ct = thermal["curtailed_trades"]
    assert set(energy["limit"]) >= {"thermal", "v_max"}
    # what the DSO curtailed (kWh) = what the settlement applied, participant by
    # participant and interval, unless more was curtailed than was scheduled for sale
    # (settlement rule 2: only scheduled sales are excused)
    k = energy["step"] // 15
    dso = energy.groupby([k, energy["participant"]])["energy_kwh"].sum()
    applied = st.set_index(["interval", "participant"])["curtailed_kwh"]
    reported = st.set_index(["interval", "participant"])["curtailed_reported_kwh"]
    assert dso.to_numpy() == pytest.approx(reported.loc[dso.index].to_numpy(), rel=1e-9, abs=1e-12)
    assert (applied <= reported + 1e-12).all()
    # and the settlement's applied curtailment is split over named trades exactly
    per_seller = ct.groupby(["interval", "seller"])["curtailed_kwh"].sum()
    assert per_seller.to_numpy() == pytest.approx(applied.loc[per_seller.index].to_numpy(), rel=1e-9)
    assert (ct["trade_id"] != "").all()
    assert set(ct["trade_id"]) <= set(thermal["trades"]["trade_id"])
    assert set(ct["limit"]) <= {"thermal", "v_max", "volt_watt"}
    # the ledger carries one signed record per curtailed trade and stays intact
    r = verify_ledger(thermal["_dir"] / "ledger.zst")
    assert r.ok, r.first_bad


@pytest.mark.parametrize("policy", ["proportional", "sensitivity", "least_cost"])
def test_every_policy_clears_the_midday_over_voltage(tmp_path_factory, policy):
    t = run(tmp_path_factory, policy, DEFAULT, *NOON_1H, "--set", f"controllers.curtailment.policy={policy}")
    v = t["violations"]
    over = v[v["limit"] == "v_max"]
    assert (over["value_before"] > 1.05).any()
    assert over["resolved"].all()
    assert t["control"]["converged"].all()
    cur = t["curtailments"]
    assert (cur["limit"] == "v_max").any()
    # the cap set is what the plan left of the measured export (never above it)
    assert (cur["cap_kw"] <= cur["export_kw"] + 1e-12).all()


def test_limits_that_exports_cannot_clear_are_recorded_not_curtailed(tmp_path_factory):
    """A 1000 kW import cap on IEEE 13 (which imports over 1.6 MW at noon): the
    substation import is recorded as violated before and after control and nobody's
    export is cut for it (cutting exports would raise the import)."""
    t = run(tmp_path_factory, "import_cap", DEFAULT, *NOON_1H,
            "--set", "limits.substation_import_max_kw=1000")
    v = t["violations"]
    imp = v[v["limit"] == "import"]
    steps = t["control"]["step"].nunique()
    assert len(imp) == steps and (imp["element"] == "source").all()
    assert (imp["value_before"] > 1000).all() and not imp["resolved"].any()
    assert not (t["curtailments"]["limit"] == "import").any()
    k = t["kpis"]
    assert k["substation_violation_min_after"].sum() == steps  # 1 min steps


@pytest.fixture(scope="module")
def very_weak(tmp_path_factory):
    cfg = REPO / "configs" / "very_weak_grid.yaml"
    return {na: run(tmp_path_factory, f"vw_{na}", cfg, *MIDDAY_2H, "--set", f"market.network_aware={na}")
            for na in ("off", "envelopes", "constraints")}


def test_envelopes_cut_ex_post_curtailment_on_the_very_weak_grid(very_weak):
    def by_limit(t):
        e = t["curtailment_energy"]
        return e.groupby("limit")["energy_kwh"].sum()

    off, env = by_limit(very_weak["off"]), by_limit(very_weak["envelopes"])
    ex_post_off = off.drop("envelope", errors="ignore").sum()
    ex_post_env = env.drop("envelope", errors="ignore").sum()
    assert ex_post_off > 5.0  # a real problem without envelopes
    assert ex_post_env < 0.25 * ex_post_off
    assert "envelope" in env.index and "envelope" not in off.index
    # the market cleared within the envelopes: orders were clipped, and the envelopes
    # the DSO sent are the ones the clearing used
    cl = very_weak["envelopes"]["clearing"]
    assert cl["envelope_clipped_kwh"].sum() > 0
    assert very_weak["off"]["clearing"]["envelope_clipped_kwh"].sum() == 0
    sent = very_weak["envelopes"]["dso_envelopes"].set_index(["interval", "participant"])
    used = very_weak["envelopes"]["envelopes"].set_index(["interval", "participant"])
    pd.testing.assert_frame_equal(sent.sort_index(), used.sort_index(), check_like=True)
    # and no more voltage violation is left after control than without envelopes
    k_off, k_env = very_weak["off"]["kpis"], very_weak["envelopes"]["kpis"]
    assert k_env["violation_min_after"].sum() <= k_off["violation_min_after"].sum()


def test_constrained_clearing_cuts_ex_post_curtailment_and_holds_back_less(very_weak):
    def by_limit(t):
        return t["curtailment_energy"].groupby("limit")["energy_kwh"].sum()

    off, con, env = (by_limit(very_weak[m]) for m in ("off", "constraints", "envelopes"))
    ex_post_off = off.drop("envelope", errors="ignore").sum()
    assert con.drop("envelope", errors="ignore").sum() < 0.5 * ex_post_off
    # the LP gives the grid's room to the orders worth most: less held back than the
    # equal-share envelopes
    assert con.get("envelope", 0.0) < env["envelope"]
    e = very_weak["constraints"]["envelopes"]
    assert len(e) > 0 and e["binding"].str.contains("v_max:").any()


@pytest.mark.parametrize("mode", ["envelopes", "constraints"])
def test_no_sale_is_scheduled_beyond_an_envelope(very_weak, mode):
    t = very_weak[mode]
    env = t["envelopes"].set_index(["interval", "participant"])
    tr = t["trades"]
    sold = tr.groupby(["interval", "seller"])["energy_kwh"].sum()
    sold = sold[sold.index.isin(env.index)]
    cap_kwh = env.loc[sold.index, "export_max_kw"] * 0.25  # 15 min intervals
    assert (sold.to_numpy() <= cap_kwh.to_numpy() + 1e-9).all()


def test_regulator_taps_and_capacitor_states_are_in_the_grid_table(thermal):
    g = thermal["grid"]
    # IEEE 13: three single-phase regulators and the two shunt banks at 675 and 611,
    # both in service in the published case (no CapControl switches them)
    assert {"tap_reg_a", "tap_reg_b", "tap_reg_c"} <= set(g.columns)
    assert (g["cap_cap675"] == 1).all() and (g["cap_cap611"] == 1).all()
    assert g[["tap_reg_a", "tap_reg_b", "tap_reg_c"]].abs().max().max() <= 16  # OpenDSS range
