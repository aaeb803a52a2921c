"""The DSO's demand response: cuts shared on the sensitivities (least-squares,
water-filled within each customer's import and flexible rating), the worst violation
first, calls that stand while violations last and wind down after; the alarm that shows
the DSO an under-voltage only when it responds to demand."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.alarms import Alarms
from federates.common.config import StudyFile
from federates.common.messages import DsoView, Scada
from federates.controllers.demand_response import DemandResponse, _share

NAMES = ["p0", "p1", "p2", "p3"]
# customer j's voltage per kW of export at customer i [pu/kW]: p0 and p1 share a lateral
DV = np.array([[0.004, 0.003, 0.0005, 0.0],
               [0.003, 0.005, 0.0005, 0.0],
               [0.0005, 0.0005, 0.002, 0.0],
               [0.0, 0.0, 0.0, 0.001]])


def _view(v, p, step=0, scada=None):
    return DsoView(step=step, rounds=0, may_act=True, v_pu=np.asarray(v, float), p_kw=np.asarray(p, float),
                   scada=scada)


def _dr(flex=(7.2, 7.2, 7.2, 7.2), **kw):
    return DemandResponse(NAMES, np.asarray(flex), v_min_pu=0.95, margin_pu=0.005, dv_pu_per_kw=DV, **kw)


def test_share_is_least_squares_within_bounds():
    s = np.array([0.004, 0.003, 0.0005, 0.0])
    x = _share(0.01, s, np.full(4, 100.0))
    assert s @ x == pytest.approx(0.01, rel=1e-12)
    assert (x[:3] > 0).all() and x[3] == 0.0
    assert x[0] / x[1] == pytest.approx(4 / 3)  # in proportion to the sensitivity
    y = _share(0.01, s, np.array([1.0, 100.0, 100.0, 100.0]))  # p0 bound: the rest share more
    assert y[0] == 1.0 and s @ y == pytest.approx(0.01, rel=1e-12)
    z = _share(1.0, s, np.array([1.0, 1.0, 1.0, 1.0]))  # cannot be met: everyone at its bound
    assert np.array_equal(z, [1.0, 1.0, 1.0, 0.0])


def test_one_under_voltage_is_called_back_to_its_margin():
    dr = _dr()
    dr.observe(_view([0.94, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 2.0]))
    calls = dr.calls(5)
    cut = np.zeros(4)
    for c in calls:
        cut[NAMES.index(c.participant)] = c.reduce_kw
        assert c.interval == 5 and c.limit == "v_min" and c.element == "p0"
    # p0's voltage, linearised, back to v_min + margin
    assert DV[0] @ cut == pytest.approx(0.955 - 0.94, rel=1e-9)
    assert cut[3] == 0.0  # p3 is on another lateral
    assert (cut <= np.minimum([8.0, 9.0, 1.0, 2.0], 7.2) + 1e-12).all()


def test_the_worst_first_and_a_second_one_counts_the_first_cut():
    dr = _dr()
    dr.observe(_view([0.93, 0.945, 0.99, 1.0], [8.0, 8.0, 1.0, 0.0]))
    cut = np.zeros(4)
    for c in dr.calls(1):
        cut[NAMES.index(c.participant)] = c.reduce_kw
    # both back to their margin (p1 was mostly fixed by p0's cut)
    assert DV[0] @ cut >= 0.955 - 0.93 - 1e-9
    assert DV[1] @ cut >= 0.955 - 0.945 - 1e-9


def test_calls_stand_while_violations_last_and_wind_down():
    dr = _dr()
    dr.observe(_view([0.94, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 2.0]))
    first = {c.participant: c.reduce_kw for c in dr.calls(1)}
    dr.observe(_view([0.952, 0.96, 0.99, 1.0], [4.0, 5.0, 1.0, 2.0]))  # better, still below the margin
    second = {c.participant: c.reduce_kw for c in dr.calls(2)}
    assert all(second[p] >= first[p] for p in first)  # kept whole, and a little more
    third = {c.participant: c.reduce_kw for c in dr.calls(3)}  # a quiet interval: 25 % released
    # (a call below 5 % of the 7.2 kW rating ends: p2's small one)
    assert third == pytest.approx({p: 0.75 * x for p, x in second.items() if 0.75 * x >= 0.05 * 7.2})
    assert len(third) < len(second)
    for k in range(4, 40):
        last = dr.calls(k)
    assert last == []  # wound down


def test_forward_overload_calls_the_customers_downstream():
    dloading = np.array([[-2.0, -2.0, 0.0, 0.0]])  # % per kW export: p0, p1 behind the transformer
    dr = _dr(thermal_max_pct=100.0, thermal_margin_pct=2.0, dloading_pct_per_kw=dloading,
             elements=["transformer.t1"])
    scada = Scada(loading_pct=np.array([110.0]), p_kw=np.array([30.0]), vuf_pct=np.zeros(0), source_p_kw=50.0)
    dr.observe(_view([0.99, 0.99, 0.99, 0.99], [8.0, 8.0, 1.0, 1.0], scada=scada))
    calls = dr.calls(0)
    assert {c.participant for c in calls} == {"p0", "p1"}
    assert sum(c.reduce_kw for c in calls) * 2.0 == pytest.approx(110.0 - 98.0)
    assert all(c.limit == "thermal" and c.element == "transformer.t1" for c in calls)
    # reverse flow (export) is the curtailment's business, not demand response's
    dr.observe(_view([0.99] * 4, [0.0] * 4, scada=Scada(np.array([110.0]), np.array([-30.0]), np.zeros(0), -50.0)))
    assert dr.calls(1) == [c.__class__(c.participant, 1, 0.75 * c.reduce_kw, c.limit, c.element)
                           for c in calls]  # only the standing calls, winding down


def test_under_voltage_alarm_only_with_demand_response():
    low = _view([0.93, 1.0], [5.0, 0.0])
    off = StudyFile.model_validate({})
    on = StudyFile.model_validate({"controllers": {"demand_response": {"enabled": True}}})
    only = StudyFile.model_validate({"controllers": {"demand_response": {"enabled": True},
                                                     "curtailment": {"enabled": False}}})
    assert not Alarms.from_config(off).raised(low)
    assert Alarms.from_config(on).raised(low)
    assert Alarms.from_config(only).raised(low)
    assert not Alarms.from_config(only).raised(_view([1.2, 1.0], [-5.0, 0.0]))  # no curtailment: no v_max


# ---- load limits after demand response (controllers.demand_response.load_limit) -----------
def _limiter(**kw):
    from federates.controllers.load_limit import LoadLimiter

    return LoadLimiter(NAMES, 5.0, v_min_pu=0.95, margin_pu=0.005, dv_pu_per_kw=DV, **kw)


def test_no_load_limit_before_demand_response_had_its_chance():
    lim = _limiter()
    lim.observe(_view([0.94, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 2.0]))
    assert lim.limits(3, dr_in_force=False) == []
    # a voltage below the demand response's margin but above v_min is no reason
    lim.observe(_view([0.953, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 2.0]))
    assert lim.limits(4, dr_in_force=True) == []


def test_load_limits_by_relief_until_the_violation_is_covered():
    """Hand case: p0 at 0.94 pu needs 0.955 - 0.94 = 0.015 pu. Import above the 5 kW
    limiter: p0 3 kW, p1 4 kW, p2 none (1 kW), p3 1 kW (no sensitivity to p0). Relief on
    the linear model: p0 0.004 x 3 = 0.012, p1 0.003 x 4 = 0.012: p0 first (ties keep site
    order), 0.003 left, then p1. p2 and p3 stay unlimited."""
    lim = _limiter()
    lim.observe(_view([0.94, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 6.0]))
    got = lim.limits(3, dr_in_force=True)
    assert [x.participant for x in got] == ["p0", "p1"]
    assert all(x.interval == 3 and x.import_max_kw == 5.0 and x.limit == "v_min" and x.element == "p0" for x in got)
    assert [x.import_kw for x in got] == [8.0, 9.0] and [x.v_pu for x in got] == [0.94, 0.96]
    # a small violation is covered by p0 alone (0.012 >= 0.955 - 0.945)
    lim2 = _limiter()
    lim2.observe(_view([0.945, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 6.0]))
    assert [x.participant for x in lim2.limits(3, dr_in_force=True)] == ["p0"]


def test_load_limits_stand_while_violated_and_lift_after_a_quiet_interval():
    lim = _limiter()
    lim.observe(_view([0.945, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 6.0]))
    assert [x.participant for x in lim.limits(3, dr_in_force=True)] == ["p0"]
    # still violated (p0 limited to 5 kW now): p0 stands, p1 added; no DR needed any more
    lim.observe(_view([0.946, 0.96, 0.99, 1.0], [5.0, 9.0, 1.0, 6.0]))
    assert [x.participant for x in lim.limits(4, dr_in_force=False)] == ["p0", "p1"]
    assert lim.limits(5, dr_in_force=True) == []  # an interval without a violation: all lifted


def test_forward_overload_limits_the_customers_behind_it():
    dloading = np.array([[-2.0, -2.0, 0.0, 0.0]])
    lim = _limiter(thermal_max_pct=100.0, thermal_margin_pct=2.0, dloading_pct_per_kw=dloading,
                   elements=["transformer.t1"])
    scada = Scada(loading_pct=np.array([104.0]), p_kw=np.array([30.0]), vuf_pct=np.zeros(0), source_p_kw=50.0)
    lim.observe(_view([0.99] * 4, [8.0, 7.0, 9.0, 1.0], scada=scada))
    got = lim.limits(0, dr_in_force=True)
    # need 104 - 98 = 6 %: p0 gives 2 x 3 = 6 % alone; p2 is not behind the transformer
    assert [(x.participant, x.limit, x.element) for x in got] == [("p0", "thermal", "transformer.t1")]


def test_calls_stand_whole_while_load_limits_are_in_force():
    """An interval quiet because load limits held the imports down does not wind the
    paid calls down (their voltages are with the limits, not without them)."""
    dr = _dr()
    dr.observe(_view([0.94, 0.96, 0.99, 1.0], [8.0, 9.0, 1.0, 2.0]))
    first = {c.participant: c.reduce_kw for c in dr.calls(1)}
    assert dr.in_force
    held = {c.participant: c.reduce_kw for c in dr.calls(2, hold=True)}
    assert held == first
    assert {c.participant: c.reduce_kw for c in dr.calls(3)} == pytest.approx(
        {p: 0.75 * x for p, x in first.items() if 0.75 * x >= 0.05 * 7.2})
