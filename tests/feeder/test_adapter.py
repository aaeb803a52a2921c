"""The OpenDSS adapter with prosumers attached, and the FeederRole step logic.

References: the linear voltage-rise approximation of a radial branch,
dV ~= (R*P + X*Q) / V (e.g. Kersting, "Distribution System Modeling and Analysis");
power balance of the solved circuit; OpenDSS's built-in "default" load shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federates.common.config import CustomerConnection, validate
from federates.common.messages import ControlCommand
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from federates.feeder.role import OPENDSS_DEFAULT_DAILY_SHAPE, FeederRole, daily_shape_mult

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
MASTER = REPO / "feeders" / "ieee13" / "IEEE13.dss"
N = 40


def make_feeder(kind: str = "secondary", n: int = N, seed: int = 7) -> tuple[OpenDSSFeeder, list]:
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), n, seed=seed)
    f.attach_customers(sites, CustomerConnection(kind=kind))
    return f, sites


@pytest.fixture(scope="module")
def feeder():
    f, sites = make_feeder()
    f.hold_taps(True)  # taps fixed: voltage changes below come from the customers alone
    return f, sites


def zeros() -> np.ndarray:
    return np.zeros(N)


def test_attach_40_customers(feeder):
    f, sites = feeder
    assert f.n_customers == N
    f.set_customer_powers(zeros(), zeros())
    f.solve(controls=False)
    v = f.customer_v_pu()
    assert v.shape == (N,)
    assert np.all((v > 0.93) & (v < 1.07)), v
    # each customer node is its own bus with a 0.24 kV L-N base
    nodes = f.node_v_pu()
    assert v[0] == pytest.approx(nodes[f"cust_{sites[0].participant}.1"])
    assert f.bus_kv_ln(f"cust_{sites[0].participant}") == pytest.approx(0.24)
    # with no customer power the drop carries no current: customer = transformer secondary
    assert v[0] == pytest.approx(nodes[f"svc_{sites[0].group}.1"], abs=1e-6)


def test_negative_kw_is_accepted_as_export(feeder):
    f, _ = feeder
    p = np.full(N, -3.0)
    q = np.full(N, 0.5)
    f.set_customer_powers(p, q)
    f.solve(controls=False)
    p_act, q_act = f.customer_pq()
    np.testing.assert_allclose(p_act, p, rtol=1e-4)  # OpenDSS converges to ~1e-5 pu
    np.testing.assert_allclose(q_act, q, rtol=1e-3)


def test_export_raises_voltage_at_its_own_node(feeder):
    f, sites = feeder
    k = 5
    f.set_customer_powers(zeros(), zeros())
    f.solve(controls=False)
    v0 = f.customer_v_pu()
    p = zeros()
    p[k] = -8.0  # 8 kW export
    f.set_customer_powers(p, zeros())
    f.solve(controls=False)
    v1 = f.customer_v_pu()
    assert v1[k] > v0[k]
    assert v1[k] - v0[k] == pytest.approx(np.max(v1 - v0))  # largest rise at its own node
    # rise across the service drop alone, against dV ~= R*P/V with R = 0.5 ohm/km * 40 m
    nodes = f.node_v_pu()
    v_sec = nodes[f"svc_{sites[k].group}.1"]
    r_ohm = 0.5 * 0.040
    v_ln = 240.0 * v1[k]
    dv_expected_pu = r_ohm * (8000.0 / v_ln) / 240.0
    assert v1[k] - v_sec == pytest.approx(dv_expected_pu, rel=0.02)


def test_q_absorption_lowers_voltage(feeder):
    f, _ = feeder
    k = 11
    f.set_customer_powers(zeros(), zeros())
    f.solve(controls=False)
    v0 = f.customer_v_pu()
    q = zeros()
    q[k] = 5.0  # units.py: q_kvar > 0 is reactive power drawn (absorbed) by the customer
    f.set_customer_powers(zeros(), q)
    f.solve(controls=False)
    v1 = f.customer_v_pu()
    assert v1[k] < v0[k]
    q[k] = -5.0  # injection raises it
    f.set_customer_powers(zeros(), q)
    f.solve(controls=False)
    assert f.customer_v_pu()[k] > v0[k]


def test_power_balance_with_customers(feeder):
    f, _ = feeder
    rng = np.random.default_rng(3)
    f.set_customer_powers(rng.uniform(-8, 4, N), rng.uniform(-2, 2, N))
    f.solve(controls=False)
    p_src, _ = f.source_pq()
    assert p_src == pytest.approx(f.load_kw() + f.losses_kw(), rel=1e-3)
    p_cust, _ = f.customer_pq()
    assert p_cust.min() < 0 < p_cust.max()  # a mix of export and import


def test_background_scale_scales_original_loads_only(feeder):
    f, _ = feeder
    f.set_customer_powers(np.full(N, 2.0), zeros())
    f.set_background_scale(0.5)
    f.solve(controls=False)
    p_cust, _ = f.customer_pq()
    np.testing.assert_allclose(p_cust, 2.0, rtol=1e-4)
    # constant-Z / constant-I loads move with voltage: within 1 % of half of 3466 kW
    assert f.load_kw() - p_cust.sum() == pytest.approx(0.5 * 3466.0, rel=0.01)
    f.set_background_scale(1.0)


def test_direct_connection_sits_on_the_primary_node():
    f, sites = make_feeder(kind="direct", n=6, seed=2)
    f.set_customer_powers(np.zeros(6), np.zeros(6))
    f.solve(controls=False)
    v = f.customer_v_pu()
    nodes = f.node_v_pu()
    for s, vk in zip(sites, v, strict=True):
        assert vk == pytest.approx(nodes[f"{s.bus}.{'abc'.index(s.phase) + 1}"])


def test_default_shape_is_opendss_builtin(feeder):
    f, _ = feeder
    np.testing.assert_array_equal(f.default_daily_shape(), np.asarray(OPENDSS_DEFAULT_DAILY_SHAPE))
    assert daily_shape_mult(0.0) == 0.677
    assert daily_shape_mult(16.0) == 1.0
    assert daily_shape_mult(0.5) == pytest.approx((0.677 + 0.6256) / 2)
    assert daily_shape_mult(23.5) == pytest.approx((0.756 + 0.677) / 2)


# ---------------------------------------------------------------- FeederRole
def make_role(seed: int = 7, **feeder_cfg) -> FeederRole:
    cfg = validate({
        "study": {"duration": "30min", "market_interval": "15min", "physics_step": "60s",
                  "start": "2026-06-21T12:00:00-04:00"},
        "feeder": {"model": "ieee13", **feeder_cfg},
        "controllers": {"enabled": False},  # the physics of commands, without the inverters' own control
    })
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), N, seed=seed)
    return FeederRole(cfg, MASTER, sites)


def test_caps_limit_export_and_report_curtailment_exactly():
    role = make_role()
    sched = np.full(N, -6.0)  # everyone exports 6 kW
    dev = np.zeros(N)
    dev[1] = 7.5  # p001 imports 1.5 kW net
    m0 = role.begin_step(0, sched, dev)
    np.testing.assert_array_equal(m0.curtailed_p_kw, 0.0)
    m = role.apply_commands(0, [ControlCommand("p000", 0.0, 2.0), ControlCommand("p001", 0.0, 0.5)])
    assert m.p_kw[0] == -2.0
    assert m.curtailed_p_kw[0] == 4.0  # applied - requested = -2 - (-6)
    assert m.p_kw[1] == 1.5 and m.curtailed_p_kw[1] == 0.0  # importing: the cap does not bind
    assert np.all(m.curtailed_p_kw[2:] == 0.0)
    assert m.v_pu[0] < m0.v_pu[0]  # less export, lower voltage
    # caps last the market interval (15 steps), then clear
    m1 = role.begin_step(1, sched, np.zeros(N))
    assert m1.curtailed_p_kw[0] == 4.0 and m1.p_kw[0] == -2.0
    m15 = role.begin_step(15, sched, np.zeros(N))
    assert m15.curtailed_p_kw[0] == 0.0 and m15.p_kw[0] == -6.0
    # a None cap removes it within the interval
    role.apply_commands(15, [ControlCommand("p000", 0.0, 1.0)])
    m = role.apply_commands(15, [ControlCommand("p000", 0.0, None)])
    assert m.curtailed_p_kw[0] == 0.0
    with pytest.raises(ValueError, match="nobody"):
        role.apply_commands(15, [ControlCommand("nobody", 0.0, None)])

    t = role.tables()
    v, g = t["voltages"], t["grid"]
    assert list(v.columns) == ["step", "t_s", "participant", "bus", "phase", "v_pu", "v_before_pu",
                               "p_kw", "q_kvar", "curtailed_p_kw"]
    assert len(v) == 3 * N and list(g["step"]) == [0, 1, 15]
    row = v[(v.step == 0) & (v.participant == "p000")].iloc[0]
    assert row.curtailed_p_kw == 4.0 and row.p_kw == -2.0
    assert row.v_before_pu > row.v_pu  # before control: uncapped export
    assert list(g["n_solves"]) == [4, 2, 4]  # step 0: the warm start, uncontrolled, controlled, the caps
    assert {"tap_reg_a", "tap_reg_b", "tap_reg_c", "background_mult"} <= set(g.columns)
    assert g["source_p_kw"].to_numpy() == pytest.approx((g["load_kw"] + g["losses_kw"]).to_numpy(), rel=1e-3)


def test_q_command_persists_and_lowers_voltage():
    role = make_role()
    sched = np.full(N, -6.0)
    m0 = role.begin_step(0, sched, np.zeros(N))
    m = role.apply_commands(0, [ControlCommand("p010", 4.0, None)])  # draw 4 kvar
    assert m.q_kvar[10] == 4.0 and m.v_pu[10] < m0.v_pu[10]
    m1 = role.begin_step(1, sched, np.zeros(N))
    assert m1.q_kvar[10] == 4.0  # carried from the last command


def test_background_mult_follows_default_shape_on_local_time():
    role = make_role(background_load_scale=0.8)
    # start 12:00 local: step 0 at hour 12 (multiplier 0.985), step 10 at 12:10
    assert role.background_mult(0) == pytest.approx(0.8 * 0.985)
    assert role.background_mult(10) == pytest.approx(0.8 * (0.985 + (0.98 - 0.985) * 10 / 60))
    flat = make_role(background_load_shape="flat", background_load_scale=0.6)
    assert flat.background_mult(7) == 0.6


def test_tables_are_deterministic():
    def run() -> dict[str, pd.DataFrame]:
        role = make_role(seed=11)
        rng = np.random.default_rng(5)
        for g in range(4):
            role.begin_step(g, rng.uniform(-6, 3, N), rng.normal(0, 0.5, N))
            role.apply_commands(g, [ControlCommand("p003", -1.0, 1.0)])
        return role.tables()

    a, b = run(), run()
    for name in ("voltages", "grid"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert a["voltages"]["participant"].tolist()[:3] == ["p000", "p001", "p002"]
    assert a["voltages"]["step"].dtype == np.int64
