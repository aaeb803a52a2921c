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


def test_demand_response_calls_are_recorded_after_their_first_step():
    """The DSO's calls for interval 1 reach the feeder before its first step and, as the
    engine does, before a drain of the tables: each becomes one ``curtailments`` row
    (limit ``demand_response``) at that first step, iteration 0, with the customer's
    voltage and power of the step's final solve (the ``voltages`` table of the same run)
    and the cut asked as ``cap_kw``; the feeder serves the import as asked (the cut is the
    devices', not the feeder's) and no ``curtailment_energy`` row is written."""
    from federates.common.messages import DemandResponseCall

    role = make_role()
    n, s = role._n, role.timeline.steps_per_interval
    requested = np.array([9.0, 3.0, -2.0, 8.0, 1.0, 6.0])
    for g in range(s):
        role.begin_step(g, requested, np.zeros(n))
    calls = [DemandResponseCall(role.participants[3], 1, 2.5, "v_min", role.participants[0]),
             DemandResponseCall(role.participants[1], 1, 0.75, "thermal", "line.650632")]
    role.on_demand_response(1, calls)
    first = role.drain_tables()  # drained before interval 1 is played: the calls wait for its first step
    assert not (first["curtailments"].limit == "demand_response").any()
    for g in range(s, 2 * s):
        role.begin_step(g, requested, np.zeros(n))
    t = role.tables()
    rows = t["curtailments"][t["curtailments"].limit == "demand_response"]
    assert list(rows.participant) == [role.participants[3], role.participants[1]]
    assert (rows.step == s).all() and (rows.iteration == 0).all() and (rows.t_s == s * 300.0).all()
    assert list(rows.element) == [f"v_min:{role.participants[0]}", "thermal:line.650632"]
    assert list(rows.cap_kw) == [2.5, 0.75]
    v = t["voltages"].set_index(["step", "participant"])
    at = v.loc[[(s, p) for p in rows.participant]]
    np.testing.assert_array_equal(rows.v_pu.to_numpy(), at.v_pu.to_numpy())
    np.testing.assert_array_equal(rows.export_kw.to_numpy(), -at.p_kw.to_numpy())
    assert list(rows.export_kw) == [-8.0, -3.0]  # served as requested
    assert (t["voltages"].p_kw.to_numpy() == np.tile(requested, s)).all()
    assert t["curtailment_energy"].empty
    with pytest.raises(ValueError, match="unknown participant"):
        role.on_demand_response(2, [DemandResponseCall("nobody", 2, 1.0, "v_min", "nobody")])
