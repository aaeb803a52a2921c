"""The inverters and the DSO on a toy linear feeder, and the curtailment policy functions.

The toy plant is linear: ``v = v0 - a * X @ p_kw - b * X @ q_kvar`` with ``X`` a
coupling matrix (1 on the diagonal, ``C_SAME`` between customers of the same service
transformer, ``C_OTHER`` otherwise). Export (p < 0) and injection (q < 0) raise the
voltage, as on a real feeder.
"""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import StudyFile
from federates.common.grid import CustomerSite
from federates.controllers.curtailment import curtail_fraction, export_caps, group_codes
from federates.feeder.voltvar import volt_var_points, volt_var_q_kvar
from federates.feeder.voltwatt import volt_watt_cap_kw, volt_watt_points
from federates.meters.role import MetersRole
from tests.control_loop import ControlLoop

DT_S = 60.0
STEP_H = DT_S / 3600.0
N = 6  # two service transformers of three customers
C_SAME, C_OTHER = 0.6, 0.2
A_PU_PER_KW = 0.004
B_PU_PER_KVAR = 0.004
KVA = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 0.0])  # p5 has no inverter


NO_VOLT_WATT = {"volt_watt": {"enabled": False}}  # for the tests of the DSO caps alone


def make_cfg(**controllers) -> StudyFile:
    """A study for the toy feeder; DSO curtailment by the sensitivity-free heuristic
    ``group_voltage`` unless a test sets its own ``curtailment``."""
    feeder = {"max_control_iterations": controllers.pop("max_iterations", 20)}
    controllers.setdefault("curtailment", {})
    controllers["curtailment"] = {"policy": "group_voltage", **controllers["curtailment"]}
    return StudyFile.model_validate({
        "study": {"duration": 720, "market_interval": 180, "physics_step": DT_S},
        "feeder": feeder,
        "controllers": controllers,
    })


def make_sites() -> list[CustomerSite]:
    return [CustomerSite(participant=f"p{i}", index=i, bus=f"b{i // 3}", phase="a",
                         group=f"T{i // 3}", load=f"l{i}") for i in range(N)]


class ToyFeeder:
    """A linear stand-in for the OpenDSS feeder, holding q set-points and export caps."""

    def __init__(self, v0_pu: float):
        g = np.arange(N) // 3
        self.x = np.where(g[:, None] == g[None, :], C_SAME, C_OTHER)
        np.fill_diagonal(self.x, 1.0)
        self.v0_pu = v0_pu
        self.q_kvar = np.zeros(N)
        self.cap_kw = np.full(N, np.inf)
        self.index = {f"p{i}": i for i in range(N)}

    def apply(self, commands) -> None:
        for c in commands:
            i = self.index[c.participant]
            self.q_kvar[i] = c.q_kvar
            self.cap_kw[i] = np.inf if c.p_export_cap_kw is None else c.p_export_cap_kw

    def solve(self, load_kw: np.ndarray, pv_kw: np.ndarray):
        net_kw = load_kw - pv_kw
        p_kw = np.maximum(net_kw, -self.cap_kw)  # export limited to the cap
        curtailed_kw = p_kw - net_kw  # PV not produced because of the cap, >= 0
        v = self.v0_pu - A_PU_PER_KW * self.x @ p_kw - B_PU_PER_KVAR * self.x @ self.q_kvar
        return v, p_kw, self.q_kvar.copy(), curtailed_kw


def run_step(g, feeder, meters, ctrl, load_kw, pv_kw, steps_per_interval=3):
    """One physics step of the co-simulation loop; returns (v, p, curtailed, n_solves)."""
    if g % steps_per_interval == 0:
        feeder.cap_kw[:] = np.inf  # the feeder clears caps at an interval start
    n_solves = 0
    while True:
        v, p, q, curtailed = feeder.solve(load_kw, pv_kw)
        n_solves += 1
        commands = ctrl.on_readings(g, v, p, q, curtailed)
        if not commands:
            meters.record_step(g, v, p, q)
            return v, p, curtailed, n_solves
        assert n_solves <= ctrl.max_iterations
        feeder.apply(commands)


LOAD = np.full(N, 1.0)
PV_MODERATE = np.array([5.0, 5.0, 5.0, 0.0, 0.0, 0.0])  # over 1.02, fine after Volt-VAR
PV_HEAVY = np.array([13.0, 13.0, 13.0, 2.0, 2.0, 0.0])  # over v_max even after Volt-VAR


def setup(cfg: StudyFile, v0_pu: float = 1.0):
    sites = make_sites()
    return ToyFeeder(v0_pu), MetersRole(cfg, sites), ControlLoop(cfg, sites, KVA)


def test_volt_var_converges_to_the_curve():
    cfg = make_cfg(curtailment={"enabled": False})
    feeder, meters, ctrl = setup(cfg)
    v, _, _, n_solves = run_step(0, feeder, meters, ctrl, LOAD, PV_MODERATE)
    control = ctrl.tables()["control"]
    assert control["converged"].tolist() == [True]
    assert 1 < n_solves <= cfg.feeder.max_control_iterations + 1
    assert control["iterations"].iloc[0] == n_solves - 1
    vv = cfg.controllers.volt_var
    # fixed point: the applied q is on the curve at the final voltage, within the stop rule
    target = volt_var_q_kvar(v, volt_var_points(vv), KVA)
    assert np.all(np.abs(feeder.q_kvar - target) <= vv.tolerance_kvar / vv.damping + 1e-12)
    assert np.all(feeder.q_kvar[:3] > 0)  # high voltage: inverters absorb (q_kvar > 0)
    assert feeder.q_kvar[5] == 0.0  # no inverter, no reactive power
    assert np.array_equal(ctrl.q_kvar, feeder.q_kvar)  # controllers and feeder agree
    assert v.max() <= cfg.controllers.v_max_pu
    assert ctrl.tables()["curtailments"].empty


def test_volt_var_injects_at_low_voltage():
    cfg = make_cfg()
    feeder, meters, ctrl = setup(cfg, v0_pu=0.95)
    run_step(0, feeder, meters, ctrl, np.full(N, 3.0), np.zeros(N))
    assert np.all(feeder.q_kvar[:5] < 0)  # injection is q_kvar < 0


def test_curtailment_brings_voltage_below_v_max():
    cfg = make_cfg(max_iterations=60, **NO_VOLT_WATT)
    feeder, meters, ctrl = setup(cfg)
    v_max = cfg.controllers.v_max_pu
    # without controllers this export is well above the limit
    assert feeder.solve(LOAD, PV_HEAVY)[0].max() > v_max + 0.02
    v, _, curtailed, _ = run_step(0, feeder, meters, ctrl, LOAD, PV_HEAVY)
    assert v.max() <= v_max
    t = ctrl.tables()
    assert t["control"]["converged"].tolist() == [True]
    cur = t["curtailments"]
    assert not cur.empty
    # only the exporters of the violating transformer T0 are capped
    assert set(cur["group"]) == {"T0"}
    assert set(cur["participant"]) <= {"p0", "p1", "p2"}
    # caps only tighten within the interval
    for _, rows in cur.groupby("participant"):
        assert np.all(np.diff(rows["cap_kw"].to_numpy()) < 0)
    assert np.all(cur["cap_kw"] < cur["export_kw"])
    assert np.all(cur["v_pu"] > v_max)
    viol = t["control_violations"]
    vmax_rows = viol[viol["limit"] == "v_max"]
    assert len(vmax_rows) > 0 and vmax_rows["resolved"].all()
    assert (vmax_rows["v_pu_initial"] > v_max).all() and (vmax_rows["v_pu"] <= v_max).all()
    assert (viol["stage"] == "final").all()
    # the curtailed energy of the interval is reported
    notices = ctrl.report(0)
    assert {n.participant for n in notices} <= {"p0", "p1", "p2"}
    got = {n.participant: n.curtailed_kwh for n in notices}
    for i in range(3):
        if curtailed[i] > 0:
            assert got[f"p{i}"] == pytest.approx(curtailed[i] * STEP_H)
    assert all(n.limit == "v_max" and n.interval == 0 for n in notices)


def test_caps_reset_at_interval_boundary():
    cfg = make_cfg(max_iterations=60, **NO_VOLT_WATT)
    feeder, meters, ctrl = setup(cfg)
    for g in range(3):  # interval 0
        run_step(g, feeder, meters, ctrl, LOAD, PV_HEAVY)
    caps_end_of_0 = ctrl.cap_kw.copy()
    assert np.all(np.isfinite(caps_end_of_0[:3])) and np.all(np.isinf(caps_end_of_0[3:]))
    # interval 1 starts: the feeder and the controllers both drop the caps, so the
    # first cap of step 3 is computed from the full, uncapped export again
    run_step(3, feeder, meters, ctrl, LOAD, PV_HEAVY)
    cur = ctrl.tables()["curtailments"]
    first = cur[cur["step"] == 3].iloc[0]
    export_uncapped_kw = PV_HEAVY[0] - LOAD[0]
    assert first["export_kw"] == pytest.approx(export_uncapped_kw)
    assert first["cap_kw"] > caps_end_of_0[0]


def test_caps_cleared_on_first_call_of_interval():
    cfg = make_cfg(max_iterations=60, **NO_VOLT_WATT)
    feeder, meters, ctrl = setup(cfg)
    run_step(2, feeder, meters, ctrl, LOAD, PV_HEAVY)  # last step of interval 0
    assert np.all(np.isfinite(ctrl.cap_kw[:3]))
    # a calm first solve of interval 1: Volt-VAR moves back, no cap is carried over
    commands = ctrl.on_readings(3, np.full(N, 1.0), np.full(N, 1.0), np.zeros(N), np.zeros(N))
    assert commands and all(c.p_export_cap_kw is None for c in commands)
    assert np.all(np.isinf(ctrl.cap_kw))


def test_caps_persist_within_interval():
    cfg = make_cfg(max_iterations=60, **NO_VOLT_WATT)
    feeder, meters, ctrl = setup(cfg)
    run_step(0, feeder, meters, ctrl, LOAD, PV_HEAVY)
    caps = ctrl.cap_kw.copy()
    # step 1, same interval, low PV: no violation, caps are not relaxed
    run_step(1, feeder, meters, ctrl, LOAD, np.zeros(N))
    assert np.array_equal(ctrl.cap_kw, caps)
    assert np.array_equal(feeder.cap_kw, caps)


def test_disabled_controllers_never_command_but_record():
    cfg = make_cfg(enabled=False)
    feeder, meters, ctrl = setup(cfg)
    v, p, q, curtailed = feeder.solve(LOAD, PV_HEAVY)
    assert ctrl.on_readings(0, v, p, q, curtailed) == []
    _, _, _, n_solves = run_step(1, feeder, meters, ctrl, LOAD, PV_HEAVY)
    assert n_solves == 1
    t = ctrl.tables()
    assert t["control"]["iterations"].tolist() == [0, 0]
    viol = t["control_violations"]
    assert set(viol["limit"]) == {"v_max"}
    assert not viol["resolved"].any()
    assert t["curtailments"].empty
    assert ctrl.report(0) == []


def test_iteration_cap_records_unresolved():
    cfg = make_cfg(max_iterations=2)
    feeder, meters, ctrl = setup(cfg)
    _, _, _, n_solves = run_step(0, feeder, meters, ctrl, LOAD, PV_HEAVY)
    assert n_solves == 3  # two command rounds, then the controllers give up
    t = ctrl.tables()
    row = t["control"].iloc[0]
    assert not row["converged"] and row["iterations"] == 2
    viol = t["control_violations"]
    over = viol[viol["limit"] == "v_max"]
    assert len(over) > 0 and not over["resolved"].any()
    assert (over["iterations"] == 2).all()
    # state kept as the feeder has it (the dropped round was not applied)
    assert np.array_equal(ctrl.q_kvar, feeder.q_kvar)


def test_under_voltage_is_recorded_not_curtailed():
    cfg = make_cfg()
    feeder, meters, ctrl = setup(cfg, v0_pu=0.97)
    run_step(0, feeder, meters, ctrl, np.full(N, 6.0), np.zeros(N))
    t = ctrl.tables()
    under = t["control_violations"][t["control_violations"]["limit"] == "v_min"]
    assert len(under) > 0
    assert (under["resolved"] == (under["v_pu"] >= cfg.controllers.v_min_pu)).all()
    assert t["curtailments"].empty


def test_last_call_of_step_decides_and_tables_are_deterministic():
    def run():
        cfg = make_cfg(max_iterations=60)
        feeder, meters, ctrl = setup(cfg)
        for g in range(6):
            pv = PV_HEAVY if g % 2 == 0 else PV_MODERATE
            run_step(g, feeder, meters, ctrl, LOAD, pv)
        return ctrl.tables(), [ctrl.report(k) for k in range(2)], meters.tables()

    a, b = run(), run()
    for name in a[0]:
        assert a[0][name].equals(b[0][name])
    assert a[1] == b[1]
    assert a[2]["meters"].equals(b[2]["meters"])
    assert a[0]["control"]["step"].tolist() == list(range(6))


def test_steps_must_not_go_back():
    cfg = make_cfg()
    feeder, meters, ctrl = setup(cfg)
    run_step(2, feeder, meters, ctrl, LOAD, PV_MODERATE)
    v, p, q, c = feeder.solve(LOAD, PV_MODERATE)
    with pytest.raises(ValueError, match="must not go back"):
        ctrl.on_readings(1, v, p, q, c)


# ---------------------------------------------------------------- Volt-Watt in the role
def test_volt_watt_caps_exports_on_the_curve():
    cfg = make_cfg(max_iterations=60, curtailment={"enabled": False})
    feeder, meters, ctrl = setup(cfg)
    v_uncontrolled = feeder.solve(LOAD, PV_HEAVY)[0]
    vw = cfg.controllers.volt_watt
    assert v_uncontrolled[:3].min() > vw.v2_pu  # T0 starts beyond the curve's end
    v, p, curtailed, _ = run_step(0, feeder, meters, ctrl, LOAD, PV_HEAVY)
    t = ctrl.tables()
    assert t["control"]["converged"].tolist() == [True]
    # fixed point: T0's caps are on the curve at the final voltages, within the stop rule
    cap_curve_kw = volt_watt_cap_kw(v, volt_watt_points(vw), KVA)
    assert v[:3].min() > vw.v1_pu
    np.testing.assert_allclose(feeder.cap_kw[:3], cap_curve_kw[:3], atol=vw.tolerance_kw / vw.damping)
    # ... and bind: the exports sit at the caps, the rest is curtailed
    np.testing.assert_allclose(-p[:3], feeder.cap_kw[:3])
    np.testing.assert_allclose(curtailed[:3], PV_HEAVY[:3] - LOAD[:3] - feeder.cap_kw[:3])
    assert np.all(np.isinf(feeder.cap_kw[3:]))  # below V1 (p3, p4) or no inverter (p5)
    assert np.array_equal(ctrl.cap_kw, feeder.cap_kw)
    assert np.all(np.isinf(ctrl.dso_cap_kw))
    cur = t["curtailments"]
    assert set(cur["limit"]) == {"volt_watt"} and set(cur["participant"]) == {"p0", "p1", "p2"}
    assert np.all(cur["cap_kw"] < PV_HEAVY[0] - LOAD[0])  # below the uncapped export: binding
    notices = ctrl.report(0)
    assert [n.participant for n in notices] == ["p0", "p1", "p2"]
    for n in notices:
        i = int(n.participant[1:])
        assert n.limit == "volt_watt"
        assert n.curtailed_kwh == pytest.approx(curtailed[i] * STEP_H)


def test_dso_caps_act_after_volt_watt_and_own_the_curtailment():
    cfg = make_cfg(max_iterations=60)
    feeder, meters, ctrl = setup(cfg)
    v, _, curtailed, _ = run_step(0, feeder, meters, ctrl, LOAD, PV_HEAVY)
    v_max = cfg.controllers.v_max_pu
    assert v.max() <= v_max < cfg.controllers.volt_watt.v1_pu
    # below V1 the Volt-Watt caps went back to the rating: only the DSO caps bind
    assert np.all(np.isinf(ctrl._vw_cap_in_force()))
    np.testing.assert_array_equal(feeder.cap_kw, ctrl.dso_cap_kw)
    cur = ctrl.tables()["curtailments"]
    assert {"volt_watt", "v_max"} == set(cur["limit"])
    first_dso = cur.index[cur["limit"] == "v_max"][0]
    assert (cur.loc[:first_dso, "limit"].iloc[:-1] == "volt_watt").all()  # stage 1 first
    notices = ctrl.report(0)
    assert notices and all(n.limit == "v_max" for n in notices)
    assert sum(n.curtailed_kwh for n in notices) == pytest.approx(curtailed.sum() * STEP_H)


def test_command_cap_is_the_smaller_of_volt_watt_and_dso():
    cfg = make_cfg()
    _, _, ctrl = setup(cfg)
    p = -np.ones(N)
    assert ctrl.on_readings(0, np.ones(N), p, np.zeros(N), np.zeros(N)) == []
    ctrl.dso_cap_kw[0] = 3.0  # as if stage 2 had capped p0 in this interval
    v = np.full(N, 1.08)  # Volt-Watt target 60 % of 10 kVA; one damped step: 8 kW
    commands = {c.participant: c for c in ctrl.on_readings(0, v, p, np.zeros(N), np.zeros(N))}
    vw = cfg.controllers.volt_watt
    vw_step_kw = KVA[0] + vw.damping * (volt_watt_cap_kw(v, volt_watt_points(vw), KVA)[0] - KVA[0])
    assert commands["p0"].p_export_cap_kw == pytest.approx(3.0)
    assert commands["p1"].p_export_cap_kw == pytest.approx(vw_step_kw)
    assert "p5" not in commands  # no inverter: neither Volt-VAR nor Volt-Watt


def test_volt_watt_caps_are_resent_when_the_feeder_clears_caps():
    cfg = make_cfg(max_iterations=60, curtailment={"enabled": False})
    feeder, meters, ctrl = setup(cfg)
    run_step(2, feeder, meters, ctrl, LOAD, PV_HEAVY)  # last step of interval 0
    caps = ctrl.cap_kw.copy()
    assert np.all(np.isfinite(caps[:3]))
    # interval 1: the feeder drops every cap; a first reading that would not move the
    # inverters still brings the Volt-Watt caps back
    feeder.cap_kw[:] = np.inf
    v, p, q, curtailed = feeder.solve(LOAD, np.minimum(PV_HEAVY, LOAD + caps))
    commands = ctrl.on_readings(3, v, p, q, curtailed)
    got = {c.participant: c.p_export_cap_kw for c in commands}
    assert {f"p{i}" for i in range(3)} <= set(got)
    np.testing.assert_allclose([got[f"p{i}"] for i in range(3)], caps[:3])
    feeder.apply(commands)
    assert np.array_equal(feeder.cap_kw, ctrl.cap_kw)


# ---------------------------------------------------------------- policy functions
def test_group_codes_give_empty_group_its_own_code():
    sites = [CustomerSite(f"p{i}", i, "b", "a", grp, "l")
             for i, grp in enumerate(["T1", "", "T1", "", "T2"])]
    codes = group_codes(sites)
    assert codes[0] == codes[2]
    assert len({codes[1], codes[3], codes[0], codes[4]}) == 4


def test_fraction_is_clipped():
    f = curtail_fraction(np.array([1.0501, 1.06, 1.2]), v_max_pu=1.05, margin_pu=0.002,
                         gain_per_pu=10.0)
    np.testing.assert_allclose(f, [0.05, 0.12, 0.5])


def test_export_caps_target_the_violating_transformer():
    groups = np.array([0, 0, 0, 1, 1])
    v = np.array([1.04, 1.06, 1.03, 1.049, 1.049])
    p = np.array([-4.0, -2.0, 1.5, -6.0, -6.0])  # p2 imports
    caps = np.array([np.inf, np.inf, np.inf, np.inf, np.inf])
    d = export_caps(v, p, caps, groups, v_max_pu=1.05, margin_pu=0.002, gain_per_pu=10.0)
    f = 10.0 * (1.06 - 1.05 + 0.002)
    np.testing.assert_array_equal(d.changed, [True, True, False, False, False])
    np.testing.assert_allclose(d.cap_kw[:2], [4.0 * (1 - f), 2.0 * (1 - f)])
    assert np.isinf(d.cap_kw[2:]).all()
    np.testing.assert_allclose(d.v_violation_pu[:3], 1.06)
    assert np.isnan(d.v_violation_pu[3:]).all()
    # caps only tighten: a lower existing cap is kept
    d2 = export_caps(v, p, np.array([1.0, np.inf, np.inf, np.inf, np.inf]), groups,
                     v_max_pu=1.05, margin_pu=0.002, gain_per_pu=10.0)
    assert d2.cap_kw[0] == 1.0 and not d2.changed[0] and d2.changed[1]
