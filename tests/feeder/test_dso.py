"""The DSO's linear model (sensitivities), curtailment policies and operating envelopes,
checked against OpenDSS re-solves of the same case and against an independent LP.

References: superposition on the OpenDSS model (the sensitivities are finite
differences; a combined perturbation must match the sum of the single ones);
fractional-knapsack optimality (greedy by relief, or by price per relief, is the
optimum of the one-constraint LP, solved independently with scipy's HiGHS);
the limits themselves after an OpenDSS re-solve.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from federates.common.config import load_config
from federates.controllers.dso import (
    operating_envelopes,
    plan_curtailment,
    violated_constraints,
)
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.sensitivity import Sensitivities, compute_sensitivities
from federates.prosumers.agents import inverter_kva_of
from runner.launch import prepare_run
from tests.conftest import DEFAULT

pytestmark = pytest.mark.feeder

V_MAX = 1.05


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cfg = load_config(DEFAULT, ["prosumers.pv_share=1.0"])  # neighbours share the limits
    study = prepare_run(cfg, tmp_path_factory.mktemp("dso"))
    f = OpenDSSFeeder(study.master)
    f.attach_customers(study.sites, cfg.feeder.customer_connection)
    kva = inverter_kva_of(study.cfg, study.sites)
    sens = compute_sensitivities(f, kva)
    return f, sens, kva


def solve_at(f: OpenDSSFeeder, p_kw: np.ndarray) -> np.ndarray:
    f.set_customer_powers(p_kw, np.zeros_like(p_kw))
    f.solve(controls=False)
    return f.customer_v_pu()


def test_save_load_roundtrip(case, tmp_path):
    _, sens, _ = case
    sens.save(tmp_path / "s.npz")
    back = Sensitivities.load(tmp_path / "s.npz")
    assert back.participants == sens.participants and back.elements == sens.elements
    np.testing.assert_array_equal(back.dv_pu_per_kw, sens.dv_pu_per_kw)


def test_sensitivities_superpose_on_the_opendss_model(case):
    f, sens, kva = case
    p0 = -0.5 * kva
    rng = np.random.default_rng(1)
    dx = rng.uniform(0, 1.5, kva.size) * (kva > 0)  # more export everywhere
    v = solve_at(f, p0 - dx)
    pred = sens.v0_pu + sens.dv_pu_per_kw @ dx
    assert np.abs(v - pred).max() < 1e-3  # pu, linear model error
    # a kW exported raises one's own voltage (positive diagonal), and import at the
    # substation falls by about a kW (less the marginal losses)
    assert (np.diag(sens.dv_pu_per_kw) > 0).all()
    assert np.all(np.abs(sens.dsource_kw_per_kw + 1) < 0.1)


def high_export(case, extra_kw: float = 2.0):
    f, _, kva = case
    p = -0.5 * kva - extra_kw * (kva > 0)
    v = solve_at(f, p)
    return p, v


@pytest.mark.parametrize("policy", ["proportional", "sensitivity", "least_cost"])
def test_each_policy_clears_the_overvoltage_on_resolve(case, policy):
    f, sens, kva = case
    p, v = high_export(case)
    assert v.max() > V_MAX + 0.005  # a real violation to clear
    price = np.linspace(0.05, 0.2, kva.size)
    cut_total = np.zeros_like(p)
    for _ in range(4):  # the controllers iterate inside the step the same way
        cons = violated_constraints(sens, v_pu=v, loading_pct=None, flow_kw=None, vuf_pct=None,
                                    source_p_kw=None, v_max_pu=V_MAX, margin_pu=0.002,
                                    thermal_max_pct=None, thermal_margin_pct=1.0,
                                    vuf_max_pct=None, vuf_margin_pct=0.05, export_max_kw=None)
        if not cons:
            break
        plan = plan_curtailment(policy, cons, np.clip(-(p + cut_total * 0) , 0, None) - cut_total, price)
        assert all(lim == "v_max" for lim, c in zip(plan.limit, plan.cut_kw, strict=True) if c > 0)
        cut_total += plan.cut_kw
        v = solve_at(f, p + cut_total)
    assert v.max() <= V_MAX + 1e-4
    assert (cut_total <= np.clip(-p, 0, None) + 1e-9).all()


def one_constraint(case):
    """The violated over-voltage with the most exporters that relieve it."""
    from federates.controllers.dso import CONTRIBUTOR_SHARE

    _, sens, _ = case
    p, v = high_export(case)
    avail = np.clip(-p, 0, None)
    cons = violated_constraints(
        sens, v_pu=v, loading_pct=None, flow_kw=None, vuf_pct=None, source_p_kw=None,
        v_max_pu=V_MAX, margin_pu=0.002, thermal_max_pct=None, thermal_margin_pct=1.0,
        vuf_max_pct=None, vuf_margin_pct=0.05, export_max_kw=None)

    def n_contributors(c):
        return int(((c.relief >= CONTRIBUTOR_SHARE * c.relief.max()) & (avail > 0)).sum())

    best = max(cons, key=n_contributors)
    assert n_contributors(best) >= 3
    return [best], avail


def lp_optimum(c, cons, avail):
    a = cons[0].relief
    from federates.controllers.dso import CONTRIBUTOR_SHARE
    ok = (a >= CONTRIBUTOR_SHARE * a.max()) & (avail > 0)
    res = linprog(c, A_ub=-a[None, :], b_ub=[-cons[0].excess],
                  bounds=[(0, float(avail[i]) if ok[i] else 0) for i in range(a.size)], method="highs")
    assert res.status == 0
    return res.fun


def test_sensitivity_policy_cuts_least_energy_as_the_lp(case):
    cons, avail = one_constraint(case)
    plan = plan_curtailment("sensitivity", cons, avail, np.zeros(avail.size))
    prop = plan_curtailment("proportional", cons, avail, np.zeros(avail.size))
    assert plan.cut_kw.sum() == pytest.approx(lp_optimum(np.ones(avail.size), cons, avail), rel=1e-6, abs=0.011)
    assert plan.cut_kw.sum() < prop.cut_kw.sum()


def test_least_cost_policy_is_the_cheapest_as_the_lp(case):
    cons, avail = one_constraint(case)
    price = np.random.default_rng(3).uniform(0.05, 0.3, avail.size)
    plan = plan_curtailment("least_cost", cons, avail, price)
    assert float(price @ plan.cut_kw) == pytest.approx(lp_optimum(price, cons, avail), rel=1e-6, abs=0.003)
    sens_plan = plan_curtailment("sensitivity", cons, avail, price)
    assert float(price @ plan.cut_kw) <= float(price @ sens_plan.cut_kw) + 1e-9


def test_unknown_policy_names_the_allowed_ones(case):
    cons, avail = one_constraint(case)
    with pytest.raises(ValueError, match="proportional, sensitivity, least_cost"):
        plan_curtailment("random", cons, avail, np.zeros(avail.size))


def test_export_envelopes_keep_voltages_within_the_limit(case):
    f, sens, kva = case
    p, v = high_export(case, extra_kw=0.0)  # "last interval" as measured
    env = operating_envelopes(sens, v_pu=v, p_kw=p, inverter_kva=kva,
                              import_cap_kw=np.full(kva.size, 20.0), v_min_pu=0.95,
                              v_max_pu=V_MAX, margin_pu=0.002)
    assert (env.export_max_kw <= kva + 1e-12).all()
    # everyone exporting its full envelope: OpenDSS keeps every voltage within the limit
    v_env = solve_at(f, -env.export_max_kw)
    assert v_env.max() <= V_MAX + 1e-3
    # and the envelopes are not trivially zero: some export is allowed
    assert env.export_max_kw.sum() > 0.25 * kva.sum()
    assert any(b.startswith("v_max:") for b in env.binding_export)


def test_closed_loop_response_with_volt_var_matches_opendss(case):
    """Volt-VAR iterated to its fixed point on OpenDSS, before and after more export,
    against closed_loop_dv's prediction (and the open-loop one overshoots)."""
    from federates.common.config import VoltVarConfig
    from federates.controllers.dso import closed_loop_dv
    from federates.feeder.voltvar import volt_var_points, volt_var_q_kvar

    f, sens, kva = case
    vv = VoltVarConfig()

    def settle(p):
        q = np.zeros_like(p)
        for _ in range(200):
            f.set_customer_powers(p, q)
            f.solve(controls=False)
            v = f.customer_v_pu()
            q_new = q + 0.5 * (volt_var_q_kvar(v, volt_var_points(vv), kva) - q)
            if np.abs(q_new - q).max() < 1e-6:
                return v
            q = q_new
        raise AssertionError("Volt-VAR did not settle")

    p0 = -0.5 * kva
    v0 = settle(p0)
    on_slope = (v0 > vv.v3_pu) & (v0 < vv.v4_pu) & (kva > 0)
    assert on_slope.sum() >= 10  # most inverters absorb at this point
    dx = 0.5 * (kva > 0)  # half a kW more export from every PV home
    v1 = settle(p0 - dx)
    slope = np.where(on_slope, -vv.q4_pct / 100.0 * kva / (vv.v4_pu - vv.v3_pu), 0.0)
    closed = closed_loop_dv(sens, slope) @ dx
    open_ = sens.dv_pu_per_kw @ dx
    err_closed = np.abs(v1 - v0 - closed).max()
    err_open = np.abs(v1 - v0 - open_).max()
    assert err_closed < 0.02 * np.abs(v1 - v0).max()  # measured: 7.6e-6 pu of 1.9e-3 pu
    assert err_closed < 0.1 * err_open
