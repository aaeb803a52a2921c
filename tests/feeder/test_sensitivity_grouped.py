"""The DSO's grouped linear model (federates/feeder/sensitivity.py, "Grouped model"):
``secondary`` customers on their service transformer's point plus their own drops,
against the per-customer model, on IEEE 13 with the default ``secondary`` connection
(40 prosumers in 17 groups of 1 to 3).

References: the per-customer perturbation model (``compute_sensitivities(per_customer=
True)``, one solve per customer), both solved to 1e-10 pu so that the solver's
tolerance is out of the comparison; the per-customer model's own linearisation error
(the model against a re-solve of the same move), which the grouping must stay well
inside; the grouped model's views and the DSO's decisions against its own expansion
to n x n arrays; the n x n closed-loop formula ``(I - S_q K)^-1 S_p``; a study with
the grouped model run in process with its conservation checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import load_config
from federates.controllers.dso import (
    POLICIES,
    closed_loop_dv,
    grid_constraints,
    operating_envelopes,
    plan_curtailment,
    violated_constraints,
)
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.sensitivity import (
    GROUPED_FIELDS,
    Sensitivities,
    chosen_model,
    compute_sensitivities,
)
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



@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return prepare_run(load_config(DEFAULT), tmp_path_factory.mktemp("grouped"))


@pytest.fixture(scope="module")
def models(study):
    """(grouped model, per-customer model), both solved to 1e-10 pu."""
    kva = inverter_kva_of(study.cfg, study.sites)
    grp = compute_sensitivities(feeder_of(study, 1e-10), kva, grouped=True)
    per = compute_sensitivities(feeder_of(study, 1e-10), kva, per_customer=True)
    return grp, per


def test_a_service_transformer_is_a_point(study, models):
    f = feeder_of(study)
    g = f.customer_group_point_of
    first = {}
    for i, s in enumerate(study.sites):
        first.setdefault(s.group, len(first))
        assert g[i] == first[s.group]
    assert len(first) == 17 and len(study.sites) == 40
    np.testing.assert_array_equal(f.customer_point_of, np.arange(40))  # secondary: a point each
    grp, _ = models
    assert grp.grouped and grp.n_points == 17 and grp.dv_pu_per_kw.shape == (17, 17)
    assert (grp.own_element >= 0).all()  # every customer has its drop


def test_grouped_model_is_the_per_customer_model_to_second_order(models):
    """Measured (largest error over the largest entry): dv 7e-4, dv per kvar 2.6e-3,
    loading 1.2e-3, flow 1.1e-3, VUF 4.7e-3, substation 2.8e-4 kW/kW; asserted at about
    twice that. It is not exact: the drops' second-order terms are modelled, not solved."""
    grp, per = models
    tol = {"dv_pu_per_kw": 1.5e-3, "dv_pu_per_kvar": 5e-3, "dloading_pct_per_kw": 2.5e-3,
           "dflow_kw_per_kw": 2.5e-3, "dvuf_pct_per_kw": 1e-2}
    for m in MATRICES:
        a = getattr(grp, f"customer_{m}").dense()
        b = getattr(per, m).astype(float)
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err <= tol[m], (m, err)
        assert err > 1e-6, m  # a model, not the same arithmetic
    np.testing.assert_allclose(grp.customer_dsource_kw_per_kw, per.dsource_kw_per_kw, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(grp.v0_pu, per.v0_pu)


def _state(f: OpenDSSFeeder) -> dict[str, np.ndarray]:
    _, ld = f.element_loading_pct()
    _, fl = f.element_p_kw()
    return {"dv_pu_per_kw": f.customer_v_pu(), "dloading_pct_per_kw": np.nan_to_num(ld), "dflow_kw_per_kw": fl}


def test_grouping_error_is_well_inside_the_linearisation_error(study, models):
    """A realistic move (1 kW more export at a fifth of the inverters, and 5 kW): what
    the grouping adds to the predicted change (grouped - per-customer) against what the
    per-customer model itself misses (per-customer - re-solve), both over the largest
    true change. Measured: voltages 9e-4 vs 1.6e-2 (1 kW) and 9e-4 vs 2.1e-2 (5 kW),
    loading 7e-4 vs 2.6e-2 and 1.3e-4 vs 1.4e-2, flow 6e-5 vs 1.3e-2 and 2e-4 vs 3e-2."""
    grp, per = models
    kva = inverter_kva_of(study.cfg, study.sites)
    f = feeder_of(study, 1e-10)
    f.set_background_scale(0.6 * study.cfg.feeder.background_load_scale)
    p0 = -0.5 * kva
    q0 = np.zeros_like(p0)
    f.set_customer_powers(p0, q0)
    f.solve(controls=True)
    f.solve(controls=False)
    s0 = _state(f)
    inv = np.flatnonzero(kva > 0)
    chosen = inv[np.random.default_rng(0).random(inv.size) < 0.2]
    for move_kw in (1.0, 5.0):
        x = np.zeros_like(p0)
        x[chosen] = move_kw
        f.set_customer_powers(p0 - x, q0)
        f.solve(controls=False)
        s1 = _state(f)
        for m in ("dv_pu_per_kw", "dloading_pct_per_kw", "dflow_kw_per_kw"):
            true = s1[m] - s0[m]
            pp = np.nan_to_num(getattr(per, m).astype(float)) @ x
            gg = getattr(grp, f"customer_{m}") @ x
            ref = np.abs(true).max()
            lin, grouping = np.abs(pp - true).max() / ref, np.abs(gg - pp).max() / ref
            assert grouping <= 0.2 * lin, (m, move_kw, grouping, lin)


def test_views_are_those_of_the_expanded_arrays(models):
    grp, _ = models
    dense = dense_of(grp)
    x = np.random.default_rng(1).uniform(-2, 2, len(grp.participants))
    for m in MATRICES:
        view, full = getattr(grp, f"customer_{m}"), getattr(dense, m)
        assert view.shape == full.shape
        np.testing.assert_allclose(view @ x, full @ x, rtol=1e-12, atol=1e-14 * np.abs(full).max())
        for r in range(full.shape[0]):
            np.testing.assert_allclose(view.row(r), full[r], rtol=1e-15, atol=0)
        clipped = view.clip_positive()
        np.testing.assert_allclose(clipped.dense(), np.clip(full, 0, None), rtol=1e-15, atol=1e-18)
        np.testing.assert_allclose(clipped @ x, np.clip(full, 0, None) @ x, rtol=1e-12,
                                   atol=1e-14 * np.abs(full).max())
        assert (full < 0).any()  # the clip has something to do


def test_closed_loop_is_the_n_by_n_formula(models):
    """The Woodbury / push-through form (dso.py ``_closed_loop_grouped``) against
    ``(I_n - S_q K)^-1 S_p`` on the expanded arrays, with slopes that differ inside a
    group and some at 0: to 1e-12 of the largest entry (measured 2.5e-16)."""
    grp, _ = models
    n = len(grp.participants)
    slope = np.random.default_rng(2).uniform(0, 400, n) * (np.arange(n) % 3 != 0)
    s_p = grp.customer_dv_pu_per_kw.dense()
    s_q = grp.customer_dv_pu_per_kvar.dense()
    full = np.linalg.solve(np.eye(n) - s_q * slope[None, :], s_p)
    cl = closed_loop_dv(grp, slope)
    assert cl.pts.shape == (grp.n_points, n)
    top = np.abs(full).max()
    assert np.abs(cl.dense() - full).max() <= 1e-12 * top
    assert np.abs(full - s_p).max() > 0.1 * np.abs(s_p).max()  # the loop matters here
    x = np.random.default_rng(3).uniform(-1, 1, n)
    assert np.abs(cl @ x - full @ x).max() <= 1e-12 * top * n
    for j in (0, 7, n - 1):
        assert np.abs(cl.row(j) - full[j]).max() <= 1e-12 * top
    assert np.abs(cl.clip_positive().dense() - np.clip(full, 0, None)).max() <= 1e-12 * top


def _decisions(sens, study, v, sc, p, kva, loop):
    kw, env_kw = limits_at(v, sc, p, kva)
    cons = violated_constraints(sens, **kw)
    price = np.linspace(0.05, 0.2, kva.size)
    plans = [plan_curtailment(policy, cons, np.clip(-p, 0, None), price) for policy in POLICIES]
    dv = None if loop is None else closed_loop_dv(sens, loop)
    env = operating_envelopes(sens, dv_pu_per_kw=dv, **env_kw)
    rows = grid_constraints(sens, 3, dv_pu_per_kw=dv, **env_kw)
    return cons, plans, env, rows


def test_dso_decisions_on_the_grouped_model(study, models):
    """Curtailment (every policy), envelopes and grid constraints (open and closed
    loop) at a high-export point. On the grouped model and on its own n x n expansion:
    the same constraints and plans, envelopes to 1e-9 kW, rows to 1e-12 (only the order
    of sums differs). Against the per-customer model: the same violated constraints
    (49: over-voltage, thermal, VUF), the planned total cut to 1e-3 of it and envelopes
    to 0.02 kW (measured: 4e-5, 0.006 kW)."""
    grp, per = models
    dense = dense_of(grp)
    kva = inverter_kva_of(study.cfg, study.sites)
    p = -0.5 * kva - 3.0 * (kva > 0)
    v, sc = measured(study, p)
    slope = np.where(v > 1.0, 0.44 * kva / 0.05, 0.0)
    for loop in (None, slope):
        ca, pa, ea, ra = _decisions(grp, study, v, sc, p, kva, loop)
        cb, pb, eb, rb = _decisions(dense, study, v, sc, p, kva, loop)
        cc, pc, ec, _ = _decisions(per, study, v, sc, p, kva, loop)
        assert len(ca) == len(cb) == len(cc) and {c.limit for c in ca} >= {"v_max", "thermal", "vuf"}
        for a, b, c in zip(ca, cb, cc, strict=True):
            assert (a.limit, a.element, a.excess) == (b.limit, b.element, b.excess) == (c.limit, c.element, c.excess)
            np.testing.assert_allclose(a.relief, b.relief, rtol=1e-12, atol=1e-15)
        for x, y, z in zip(pa, pb, pc, strict=True):
            assert x.cut_kw.sum() > 0
            np.testing.assert_allclose(x.cut_kw, y.cut_kw, rtol=1e-9, atol=1e-9)
            assert abs(x.cut_kw.sum() - z.cut_kw.sum()) <= 1e-3 * z.cut_kw.sum()
        assert 0 < ea.export_max_kw.sum() < kva.sum()
        np.testing.assert_allclose(ea.export_max_kw, eb.export_max_kw, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ea.import_max_kw, eb.import_max_kw, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ea.export_max_kw, ec.export_max_kw, rtol=0, atol=0.02)
        np.testing.assert_allclose(ea.import_max_kw, ec.import_max_kw, rtol=0, atol=0.02)
        assert ra and [(r.name, r.participants) for r in ra] == [(r.name, r.participants) for r in rb]
        for a, b in zip(ra, rb, strict=True):
            np.testing.assert_allclose(a.coef, b.coef, rtol=1e-12, atol=0)
            assert a.rhs == pytest.approx(b.rhs, rel=1e-12, abs=1e-12)


def test_save_load_keeps_the_grouped_model(models, tmp_path):
    grp, _ = models
    grp.save(tmp_path / "s.npz")
    back = Sensitivities.load(tmp_path / "s.npz")
    assert back.grouped
    for f in (*GROUPED_FIELDS, "element_rows"):
        np.testing.assert_array_equal(getattr(back, f), getattr(grp, f))
    assert grp.dflow_kw_per_kw.shape == (len(grp.elements) - 40, grp.n_points)  # 40 drops: own entries only
    x = np.random.default_rng(4).uniform(-1, 1, len(grp.participants))
    np.testing.assert_array_equal(back.customer_dflow_kw_per_kw @ x, grp.customer_dflow_kw_per_kw @ x)


def test_auto_keeps_points_for_small_studies(study):
    f = feeder_of(study)
    assert chosen_model(f, "auto") == "points"  # 40 prosumers: far below the limit
    assert chosen_model(f, "auto", limit_mb=0.0) == "grouped"  # above it
    assert chosen_model(f, "points", limit_mb=0.0) == "points"
    assert chosen_model(f, "grouped") == "grouped"


def test_a_study_on_the_grouped_model_runs_and_conserves(tmp_path):
    """The very weak synthetic grid (60 prosumers, ``secondary``, 3 per transformer)
    with the grouped model and the DSO's envelopes, 1 h around noon in process: the run
    ends ok, its live and post-run conservation checks hold, the saved model is grouped
    and it bound some envelopes."""
    run, z = weak_grid_hour(tmp_path / "run", **{"controllers.sensitivities": "grouped"})
    assert z["dv_pu_per_kw"].shape[0] < z["point_of"].size and "own_dv_pu_per_kw" in z
    # the manifest says which model was built (what ``auto`` would have chosen is not in the config)
    assert run.manifest["sensitivities"] == {
        "model": "grouped", "customers": int(z["point_of"].size), "points": int(z["dv_pu_per_kw"].shape[0]),
        "file_mb": round((run.path / "sensitivities.npz").stat().st_size / 1e6, 1)}
