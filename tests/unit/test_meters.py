"""MetersRole: readings, energy with overwrite semantics, noise, tables."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.grid import CustomerSite
from federates.meters.meter import measure
from federates.meters.role import MetersRole
from runner.config import StudyFile

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


def test_reading_fields_and_truth_without_noise():
    role = MetersRole(make_cfg(), make_sites())
    v = np.array([1.01, 0.99, 1.04])
    p = np.array([2.5, -3.0, 0.0])
    q = np.array([0.4, -1.2, 0.0])
    readings = role.read(4, v, p, q)
    assert [r.meter for r in readings] == ["p0", "p1", "p2"]
    assert all(r.t_s == 4 * DT_S for r in readings)
    # noise 0 reproduces the truth exactly
    assert [r.v_pu for r in readings] == v.tolist()
    assert [r.p_kw for r in readings] == p.tolist()
    assert [r.q_kvar for r in readings] == q.tolist()


def test_energy_is_sum_of_final_readings_with_overwrite():
    role = MetersRole(make_cfg(), make_sites())
    ones = np.ones(3)
    steps = 15  # 900 s / 60 s
    rng = np.random.default_rng(0)
    final_p = rng.uniform(-5, 5, size=(2 * steps, 3))
    last = {}
    for g in range(2 * steps):
        # two provisional reads (control iterations), then the final one
        role.read(g, ones, final_p[g] + 10.0, 0 * ones)
        role.read(g, ones, final_p[g] - 7.0, 0 * ones)
        last[g] = role.read(g, ones, final_p[g], 0 * ones)
        k = g // steps
        expected = final_p[k * steps: g + 1].sum(axis=0) * STEP_H
        np.testing.assert_allclose([r.energy_kwh for r in last[g]], expected, rtol=1e-12)
    for k in range(2):
        rep = role.report(k)
        assert [e.meter for e in rep] == ["p0", "p1", "p2"]
        assert all(e.interval == k for e in rep)
        expected = final_p[k * steps:(k + 1) * steps].sum(axis=0) * STEP_H
        np.testing.assert_allclose([e.energy_kwh for e in rep], expected, rtol=1e-12)
        # the last reading of the interval carries exactly the reported energy
        assert [e.energy_kwh for e in rep] == [r.energy_kwh for r in last[(k + 1) * steps - 1]]


def test_energy_restarts_each_interval():
    role = MetersRole(make_cfg(), make_sites(1))
    for g in range(15):
        role.read(g, np.ones(1), np.array([6.0]), np.zeros(1))
    first = role.read(15, np.ones(1), np.array([6.0]), np.zeros(1))
    assert first[0].energy_kwh == pytest.approx(6.0 * STEP_H)
    assert role.report(0)[0].energy_kwh == pytest.approx(6.0 * 0.25)


def test_tables_hold_final_reading_per_step():
    role = MetersRole(make_cfg(), make_sites())
    ones = np.ones(3)
    role.read(0, ones, ones * 1.0, ones * 0.1)
    role.read(0, ones * 1.02, ones * 2.0, ones * 0.2)
    role.read(2, ones * 0.98, ones * -3.0, ones * -0.3)
    t = role.tables()["meters"]
    assert list(t.columns) == ["step", "t_s", "meter", "v_pu", "p_kw", "q_kvar"]
    assert len(t) == 6
    assert t["step"].tolist() == [0, 0, 0, 2, 2, 2]
    assert t["t_s"].tolist() == [0.0] * 3 + [120.0] * 3
    assert t["meter"].tolist() == ["p0", "p1", "p2"] * 2
    assert t["p_kw"].tolist() == [2.0] * 3 + [-3.0] * 3
    assert t["v_pu"].tolist()[:3] == [1.02] * 3


def test_noise_is_deterministic_for_a_seed():
    v = np.full(50, 1.0)
    p = np.linspace(-5, 5, 50)
    q = np.full(50, 0.5)
    sites = make_sites(50)

    def run(seed: int, extra_reads: int = 0):
        role = MetersRole(make_cfg(noise_pct=1.0, seed=seed), sites)
        for g in range(extra_reads):  # other steps do not change the draws of step 3
            role.read(g, v, p, q)
        return [role.read(3, v, p, q), role.read(3, v, p, q)]

    def values(reads):
        return [[(r.v_pu, r.p_kw, r.q_kvar) for r in rs] for rs in reads]

    a, b, c = run(7), run(7, extra_reads=3), run(8)
    assert a == run(7)  # same seed, same calls: same readings
    # same (seed, step, call number): same noise, whatever else was read before
    # (energy differs: b also metered steps 0..2)
    assert values(a) == values(b)
    assert a[0] != a[1]  # a second read of the step draws fresh noise
    assert a != c  # another seed, other numbers
    assert [r.v_pu for r in a[0]] != v.tolist()


def test_noise_has_the_configured_spread():
    rng = np.random.default_rng(1)
    x = np.full(20000, 2.0)
    rel = measure(x, 2.0, rng) / x - 1.0
    assert rel.mean() == pytest.approx(0.0, abs=0.001)
    assert rel.std() == pytest.approx(0.02, rel=0.03)
    assert np.array_equal(measure(x, 0.0, rng), x)


def test_noisy_energy_uses_measured_power():
    role = MetersRole(make_cfg(noise_pct=5.0), make_sites())
    readings = role.read(0, np.ones(3), np.array([1.0, 2.0, 3.0]), np.zeros(3))
    for r in readings:
        assert r.energy_kwh == r.p_kw * STEP_H


def test_bad_input_is_named():
    role = MetersRole(make_cfg(), make_sites())
    with pytest.raises(ValueError, match="p_kw"):
        role.read(0, np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="outside the study"):
        role.read(30, np.ones(3), np.ones(3), np.ones(3))
