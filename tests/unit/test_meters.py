"""MetersRole: the final solve of each step, interval energy, tables; and the inverters'
local sensing noise (federates/feeder/inverters.py)."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import StudyFile
from federates.common.grid import CustomerSite
from federates.feeder.inverters import InverterFleet
from federates.meters.meter import measure
from federates.meters.role import MetersRole

DT_S = 60.0
STEP_H = DT_S / 3600.0


def make_cfg(noise_pct: float = 0.0, seed: int = 7) -> StudyFile:
    return StudyFile.model_validate({
        "study": {"duration": 1800, "market_interval": 900, "physics_step": DT_S, "seed": seed},
        "meters": {"noise_pct": noise_pct},
    })


def make_sites(n: int = 3) -> list[CustomerSite]:
    return [CustomerSite(participant=f"p{i}", index=i, bus="680", phase="abc"[i % 3],
                         group=f"t{i // 3}", load="l") for i in range(n)]


def test_energy_is_sum_of_final_readings_with_overwrite():
    role = MetersRole(make_cfg(), make_sites())
    ones = np.ones(3)
    steps = 15  # 900 s / 60 s
    rng = np.random.default_rng(0)
    final_p = rng.uniform(-5, 5, size=(2 * steps, 3))
    for g in range(2 * steps):
        # two provisional solves (control rounds), then the final one
        role.record_step(g, ones, final_p[g] + 10.0, 0 * ones)
        role.record_step(g, ones, final_p[g] - 7.0, 0 * ones)
        role.record_step(g, ones, final_p[g], 0 * ones)
    for k in range(2):
        rep = role.report(k)
        assert [e.meter for e in rep] == ["p0", "p1", "p2"]
        assert all(e.interval == k for e in rep)
        expected = final_p[k * steps:(k + 1) * steps].sum(axis=0) * STEP_H
        np.testing.assert_allclose([e.energy_kwh for e in rep], expected, rtol=1e-12)


def test_interval_block_equals_step_by_step():
    rng = np.random.default_rng(3)
    v, p, q = (rng.uniform(-2, 2, size=(30, 3)) for _ in range(3))
    by_step, by_block = MetersRole(make_cfg(), make_sites()), MetersRole(make_cfg(), make_sites())
    for g in range(30):
        by_step.record_step(g, v[g], p[g], q[g])
    for k in range(2):
        by_block.record_interval(k, v[15 * k:15 * (k + 1)], p[15 * k:15 * (k + 1)], q[15 * k:15 * (k + 1)])
    for k in range(2):
        assert by_step.report(k) == by_block.report(k)
    assert by_step.tables()["meters"].equals(by_block.tables()["meters"])


def test_energy_restarts_each_interval():
    role = MetersRole(make_cfg(), make_sites(1))
    for g in range(16):
        role.record_step(g, np.ones(1), np.array([6.0]), np.zeros(1))
    assert role.report(0)[0].energy_kwh == pytest.approx(6.0 * 0.25)
    role.record_step(16, np.ones(1), np.array([6.0]), np.zeros(1))
    role.record_step(17, np.ones(1), np.array([6.0]), np.zeros(1))
    assert role.report(1)[0].energy_kwh == pytest.approx(3 * 6.0 * STEP_H)


def test_tables_hold_final_reading_per_step():
    role = MetersRole(make_cfg(), make_sites())
    ones = np.ones(3)
    role.record_step(0, ones, ones * 1.0, ones * 0.1)
    role.record_step(0, ones * 1.02, ones * 2.0, ones * 0.2)
    role.record_step(2, ones * 0.98, ones * -3.0, ones * -0.3)
    t = role.tables()["meters"]
    assert list(t.columns) == ["step", "t_s", "meter", "v_pu", "p_kw", "q_kvar"]
    assert len(t) == 6
    assert t["step"].tolist() == [0, 0, 0, 2, 2, 2]
    assert t["t_s"].tolist() == [0.0] * 3 + [120.0] * 3
    assert t["meter"].tolist() == ["p0", "p1", "p2"] * 2
    assert t["p_kw"].tolist() == [2.0] * 3 + [-3.0] * 3
    assert t["v_pu"].tolist()[:3] == [1.02] * 3


def test_meters_record_the_truth_whatever_the_sensing_noise():
    role = MetersRole(make_cfg(noise_pct=5.0), make_sites())
    p = np.array([1.0, 2.0, 3.0])
    role.record_step(0, np.ones(3), p, np.zeros(3))
    assert [e.energy_kwh for e in role.report(0)] == (p * STEP_H).tolist()


def test_sensing_noise_is_deterministic_for_a_seed():
    """The inverters' local sensing: (seed, step, solve number) fixes the draw."""
    n = 50
    v = np.full(n, 1.0)
    p = np.linspace(-5, 5, n)
    q = np.full(n, 0.5)
    sites = make_sites(n)
    kva = np.zeros(n)

    def run(seed: int, earlier_steps: int = 0):
        fleet = InverterFleet(make_cfg(noise_pct=1.0, seed=seed), sites, kva)
        for g in range(earlier_steps):  # other steps do not change the draws of step 3
            fleet.on_solve(g, v, p, q, np.zeros(n))
        out = []
        for _ in range(2):
            fleet.on_solve(3, v, p, q, np.zeros(n))
            out.append(tuple(x.copy() for x in fleet.sensed))
        return out

    a, b, c = run(7), run(7, earlier_steps=3), run(8)
    same = [(x.tolist(), y.tolist()) for x, y in a]
    assert same == [(x.tolist(), y.tolist()) for x, y in run(7)]
    assert same == [(x.tolist(), y.tolist()) for x, y in b]
    assert a[0][0].tolist() != a[1][0].tolist()  # a second solve of the step draws fresh noise
    assert a[0][0].tolist() != c[0][0].tolist()  # another seed, other numbers
    assert a[0][0].tolist() != v.tolist()
    # it is the configured model: true x (1 + 1 % z), z from stream(seed, "meter", step, solve)
    from federates.common.rng import stream
    want = measure(np.stack([v, p, q]), 1.0, stream(7, "meter", 3, 0))
    np.testing.assert_array_equal(a[0][0], want[0])
    np.testing.assert_array_equal(a[0][1], want[1])
    # without noise the inverters sense the truth
    fleet = InverterFleet(make_cfg(), sites, kva)
    fleet.on_solve(0, v, p, q, np.zeros(n))
    assert fleet.sensed[0].tolist() == v.tolist() and fleet.sensed[1].tolist() == p.tolist()


def test_noise_has_the_configured_spread():
    rng = np.random.default_rng(1)
    x = np.full(20000, 2.0)
    rel = measure(x, 2.0, rng) / x - 1.0
    assert rel.mean() == pytest.approx(0.0, abs=0.001)
    assert rel.std() == pytest.approx(0.02, rel=0.03)
    assert np.array_equal(measure(x, 0.0, rng), x)


def test_bad_input_is_named():
    role = MetersRole(make_cfg(), make_sites())
    with pytest.raises(ValueError, match="p_kw"):
        role.record_step(0, np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="outside the study"):
        role.record_step(30, np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="q_kvar of interval 0"):
        role.record_interval(0, np.ones((15, 3)), np.ones((15, 3)), np.ones((14, 3)))
