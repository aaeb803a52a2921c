"""The feeder's load limiter (``controllers.demand_response.load_limit``): a limited
customer's import above its cap is not served at the controlled solves of its interval
(the uncontrolled one serves it), the import not served is recorded step by step, the
meters and OpenDSS see what was served, and the limits end with their interval.

References: the hand arithmetic of the cap (served = min(requested, cap), unserved =
requested - cap, x the step), and OpenDSS's own power at the customer's Load (the
meter block's delivered energy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federates.common.config import validate
from federates.common.messages import LoadLimit
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from federates.feeder.role import FeederRole

REPO = Path(__file__).resolve().parents[2]
MASTER = REPO / "feeders" / "ieee13" / "IEEE13.dss"


def make_role() -> FeederRole:
    cfg = validate({
        "study": {"duration": "30min", "market_interval": "15min", "physics_step": "5min",
                  "start": "2026-06-21T19:00:00-04:00"},
        "feeder": {"model": "ieee13"},
        "controllers": {"enabled": False},
    })
    f = OpenDSSFeeder(MASTER)
    return FeederRole(cfg, MASTER, place_customers(f.load_points(), 6, seed=3))


def test_a_load_limit_serves_up_to_its_cap_for_its_interval():
    role = make_role()
    n, s = role._n, role.timeline.steps_per_interval  # 3 steps of 5 min
    requested = np.array([9.0, 3.0, -2.0, 8.0, 1.0, 6.0])  # kW, + import
    who = [role.participants[0], role.participants[2], role.participants[3]]
    role.on_load_limits(0, [LoadLimit(p, 0, 5.0, "v_min", p, 9.0, 0.93) for p in who])
    for g in range(2 * s):
        role.begin_step(g, requested, np.zeros(n))
    t = role.tables()
    v = t["voltages"]
    p = v.pivot(index="step", columns="participant", values="p_kw")[role.participants].to_numpy()
    served = np.where(np.isin(role.participants, who), np.minimum(requested, 5.0), requested)
    np.testing.assert_array_equal(p[:s], np.tile(served, (s, 1)))  # interval 0: limited (an export stays)
    np.testing.assert_array_equal(p[s:], np.tile(requested, (s, 1)))  # interval 1: over
    ce = t["curtailment_energy"]
    un = ce[ce.limit == "load_limit"]
    # unserved: p0 (9 - 5) and p3 (8 - 5) kW x 5 min at each step of interval 0, nothing else
    assert sorted(set(un.participant)) == sorted([who[0], who[2]]) and set(un.step) == set(range(s))
    assert un.groupby("participant").energy_kwh.sum().to_dict() == pytest.approx(
        {who[0]: 4.0 * 0.25, who[2]: 3.0 * 0.25}, rel=1e-12)
    c = t["curtailments"]
    rows = c[c.limit == "load_limit"]
    assert list(rows.participant) == who and (rows.cap_kw == 5.0).all() and (rows.step == 0).all()
    assert (rows.export_kw == -9.0).all() and (rows.element.str.startswith("v_min:")).all()
    # the meters see what was served; OpenDSS delivered the same energy to the Loads
    _, p_kw, _, delivered_kwh = role.meter_block(0)
    np.testing.assert_allclose(p_kw.sum(axis=0) * role.timeline.step_h, delivered_kwh, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(p_kw.sum(axis=0) * role.timeline.step_h, served * 0.25, rtol=1e-12)
