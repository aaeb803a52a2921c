"""The DSO's linear model over the feeder's connection points (federates/feeder/sensitivity.py)
against the per-customer model, on IEEE 13 with ``customer_connection.kind: direct``
(40 prosumers on 12 bus nodes: several customers per point).

References: the per-customer perturbation model (one perturbed power flow per
customer, ``compute_sensitivities(per_customer=True)``, the model before connection
points), expanded ``E A E^T`` / ``B E^T`` against it; the n x n closed-loop formula
``(I - S_q K)^-1 S_p`` against its u x u push-through form; the DSO's decisions on the
point model against the same decisions on the expanded dense arrays; a study with
shared points run in process with its conservation checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import load_config
from federates.common.messages import DsoView
from federates.controllers.demand_response import DemandResponse
from federates.controllers.dso import (
    POLICIES,
    closed_loop_dv,
    grid_constraints,
    operating_envelopes,
    plan_curtailment,
    violated_constraints,
)
from federates.controllers.load_limit import LoadLimiter
from federates.feeder.sensitivity import Sensitivities, compute_sensitivities
from federates.prosumers.agents import inverter_kva_of
from runner.launch import prepare_run
from tests.conftest import DEFAULT
from tests.feeder.sensitivity_cases import (
    MATRICES,
    dense_of,
    feeder_of,
    limits_at,
    measured,
    weak_grid_hour,
)

pytestmark = pytest.mark.feeder

DIRECT = ["prosumers.pv_share=1.0", "feeder.customer_connection.kind=direct"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cfg = load_config(DEFAULT, DIRECT)
    return prepare_run(cfg, tmp_path_factory.mktemp("points"))


@pytest.fixture(scope="module")
def models(study):
    """(point model, per-customer model), both solved to 1e-10 pu."""
    kva = inverter_kva_of(study.cfg, study.sites)
    pts = compute_sensitivities(feeder_of(study, 1e-10), kva)
    per = compute_sensitivities(feeder_of(study, 1e-10), kva, per_customer=True)
    return pts, per


def test_customers_on_the_same_bus_node_share_a_point(study):
    f = feeder_of(study)
    point_of = f.customer_point_of
    where = [(s.bus.lower(), s.phase) for s in study.sites]
    first = {}
    for i, w in enumerate(where):
        first.setdefault(w, len(first))
        assert point_of[i] == first[w]  # numbered by first appearance, one per (bus, phase)
    assert len(first) == 12 and len(where) == 40


def test_point_model_is_the_per_customer_model(models):
    """Measured at 1e-10 pu: voltages and VUF agree to 7e-8 of the largest entry (the
    float32 storage); loading and flow to 2e-5 of the largest entry (the element powers'
    residual at that tolerance). At the run's 1e-4 pu the two differ by up to 0.75 %,
    as much as the per-customer model's columns of co-located customers (physically
    the same injection) differ from each other: the solver's tolerance, not the points."""
    pts, per = models
    n, u = len(pts.participants), pts.n_points
    assert (n, u) == (40, 12)
    assert pts.dv_pu_per_kw.shape == pts.dv_pu_per_kvar.shape == (u, u)
    assert pts.dflow_kw_per_kw.shape == (len(pts.elements), u) and pts.dsource_kw_per_kw.shape == (u,)
    assert per.n_points == n
    rel = {"dv_pu_per_kw": 2e-7, "dv_pu_per_kvar": 2e-7, "dvuf_pct_per_kw": 2e-7,
           "dloading_pct_per_kw": 5e-5, "dflow_kw_per_kw": 5e-5}
    for m in MATRICES:
        a = getattr(pts, f"customer_{m}").dense().astype(float)
        b = getattr(per, m).astype(float)
        assert np.abs(a - b).max() <= rel[m] * np.abs(b).max(), m
    np.testing.assert_allclose(pts.customer_dsource_kw_per_kw, per.dsource_kw_per_kw, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pts.v0_pu, per.v0_pu)


def test_save_load_keeps_the_points(models, tmp_path):
    pts, _ = models
    pts.save(tmp_path / "s.npz")
    back = Sensitivities.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.point_of, pts.point_of)
    np.testing.assert_array_equal(back.dv_pu_per_kw, pts.dv_pu_per_kw)
    x = np.random.default_rng(0).uniform(-1, 1, len(pts.participants))
    np.testing.assert_array_equal(back.customer_dflow_kw_per_kw @ x, pts.customer_dflow_kw_per_kw @ x)


def test_products_and_rows_are_those_of_the_expanded_arrays(models):
    pts, _ = models
    dense = dense_of(pts)
    x = np.random.default_rng(1).uniform(-2, 2, len(pts.participants))
    for m in MATRICES:
        view, full = getattr(pts, f"customer_{m}"), getattr(dense, m).astype(float)
        assert view.shape == full.shape
        np.testing.assert_allclose(view @ x, full @ x, rtol=1e-12, atol=1e-15 * np.abs(full).max())
        for r in (0, 5, view.shape[0] - 1):
            np.testing.assert_array_equal(view.row(r), full[r])


def test_closed_loop_push_through_is_the_n_by_n_formula(models):
    """``E (I_u - A_q K_p)^-1 A_p E^T`` against ``(I_n - S_q K)^-1 S_p``, with slopes
    that differ between the customers of a point."""
    pts, _ = models
    n = len(pts.participants)
    slope = np.random.default_rng(2).uniform(0, 400, n) * (np.arange(n) % 3 != 0)  # some at 0
    s_p = pts.customer_dv_pu_per_kw.dense().astype(float)
    s_q = pts.customer_dv_pu_per_kvar.dense().astype(float)
    full = np.linalg.solve(np.eye(n) - s_q * slope[None, :], s_p)
    cl = closed_loop_dv(pts, slope)
    assert cl.pts.shape == (pts.n_points, pts.n_points)
    assert np.abs(cl.dense() - full).max() <= 1e-12 * np.abs(full).max()
    assert np.abs(full - s_p).max() > 0.1 * np.abs(s_p).max()  # the loop matters here


def test_dso_decisions_on_points_are_those_on_the_dense_model(study, models):
    """Curtailment (every policy), envelopes (open and closed loop), grid constraints:
    the same on the point model and on its expanded arrays. Reliefs and row
    coefficients are gathered entries, equal bit for bit; what goes through a product
    (``E A E^T x`` by a point sum) agrees to 1e-9 kW."""
    pts, _ = models
    dense = dense_of(pts)
    kva = inverter_kva_of(study.cfg, study.sites)
    p = -0.5 * kva - 3.0 * (kva > 0)  # a high-export point: over-voltage, reverse flow
    v, sc = measured(study, p)
    kw, env_kw = limits_at(v, sc, p, kva)
    ca, cb = violated_constraints(pts, **kw), violated_constraints(dense, **kw)
    assert len(ca) == len(cb) and {c.limit for c in ca} >= {"v_max", "vuf"}
    for a, b in zip(ca, cb, strict=True):
        assert (a.limit, a.element, a.excess) == (b.limit, b.element, b.excess)
        np.testing.assert_array_equal(a.relief, b.relief)
    price = np.linspace(0.05, 0.2, kva.size)
    for policy in POLICIES:
        pa = plan_curtailment(policy, ca, np.clip(-p, 0, None), price)
        pb = plan_curtailment(policy, cb, np.clip(-p, 0, None), price)
        assert pa.cut_kw.sum() > 0
        np.testing.assert_array_equal(pa.cut_kw, pb.cut_kw)
        assert pa.limit == pb.limit and pa.element == pb.element

    slope = np.where(v > 1.0, -0.44 * kva / 0.05, 0.0)
    point = dict(zip(pts.participants, pts.point_of.tolist(), strict=True))

    def at_point(names: list[str]) -> list[str]:
        return [f"{n.split(':')[0]}:point{point[n.split(':')[1]]}" if n.split(":")[-1] in point else n
                for n in names]

    for loop_a, loop_b in ((None, None), (closed_loop_dv(pts, slope), closed_loop_dv(dense, slope))):
        ea = operating_envelopes(pts, dv_pu_per_kw=loop_a, **env_kw)
        eb = operating_envelopes(dense, dv_pu_per_kw=loop_b, **env_kw)
        assert 0 < ea.export_max_kw.sum() < kva.sum(), ea.binding_export
        np.testing.assert_allclose(ea.export_max_kw, eb.export_max_kw, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ea.import_max_kw, eb.import_max_kw, rtol=0, atol=1e-9)
        # a customer's voltage limit is its point's: co-located customers tie exactly,
        # and which of them is named may follow the last bit of the closed-loop solve
        assert at_point(ea.binding_export) == at_point(eb.binding_export)
        assert at_point(ea.binding_import) == at_point(eb.binding_import)
        if loop_a is None:
            assert ea.binding_export == eb.binding_export and ea.binding_import == eb.binding_import
        ra = grid_constraints(pts, 3, dv_pu_per_kw=loop_a, **env_kw)
        rb = grid_constraints(dense, 3, dv_pu_per_kw=loop_b, **env_kw)
        assert ra and [(r.name, r.participants) for r in ra] == [(r.name, r.participants) for r in rb]
        for a, b in zip(ra, rb, strict=True):
            np.testing.assert_allclose(a.coef, b.coef, rtol=1e-12, atol=0)
            assert a.rhs == pytest.approx(b.rhs, rel=1e-12, abs=1e-12)


def test_demand_response_and_load_limits_on_points_are_those_on_the_dense_model(study, models):
    """Calls and limits after an interval of under-voltage and forward-flow overloads,
    on the point model and on its expanded arrays: equal to 1e-12 kW (the rows are the
    same entries; only the order of sums could differ)."""
    pts, _ = models
    dense = dense_of(pts)
    n = len(pts.participants)
    p = np.full(n, 6.0)  # every customer importing
    v, sc = measured(study, p)
    v_min = float(np.quantile(v, 0.5)) + 0.005  # half the customers under the floor
    thermal = float(np.nanquantile(sc.loading_pct[sc.p_kw > 0], 0.8))
    view = DsoView(step=0, rounds=0, may_act=True, v_pu=v, p_kw=p, scada=sc)
    flex = np.linspace(1.0, 7.0, n)
    for ceiling, kinds in ((None, {"v_min"}), (thermal, {"thermal"})):  # voltage alone, then thermal too
        calls, limits = [], []
        for s in (pts, dense):
            kw = dict(v_min_pu=v_min, margin_pu=0.005, dv_pu_per_kw=s.customer_dv_pu_per_kw,
                      thermal_max_pct=ceiling, thermal_margin_pct=2.0,
                      dloading_pct_per_kw=s.customer_dloading_pct_per_kw, elements=s.elements)
            dr = DemandResponse(s.participants, flex, **kw)
            lim = LoadLimiter(s.participants, 2.0, **kw)
            dr.observe(view)
            lim.observe(view)
            calls.append(dr.calls(1))
            limits.append(lim.limits(1, dr_in_force=True))
        assert calls[0] and limits[0]
        assert kinds <= {c.limit for c in calls[0]}
        assert [(c.participant, c.limit, c.element) for c in calls[0]] == [
            (c.participant, c.limit, c.element) for c in calls[1]]
        np.testing.assert_allclose([c.reduce_kw for c in calls[0]], [c.reduce_kw for c in calls[1]],
                                   rtol=0, atol=1e-12)
        assert limits[0] == limits[1]


def test_a_study_with_shared_points_runs_and_conserves(tmp_path):
    """The very weak grid with every prosumer on its bus node (60 prosumers on 39
    points), the DSO's envelopes, 1 h around noon in process (about 1 s): the run ends
    ok, its live and post-run conservation checks hold, and the point model bound some
    envelopes."""
    run, z = weak_grid_hour(tmp_path / "run", **{"feeder.customer_connection.kind": "direct"})
    assert z["dv_pu_per_kw"].shape[0] < z["point_of"].size  # shared points
    assert run.manifest["sensitivities"]["model"] == "points"
