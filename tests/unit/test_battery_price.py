"""Batteries planned by the price (``prosumers.battery_control: price``): the rule by
hand, exactly self-consumption under a flat tariff, and under a time-of-use tariff the
energy moved into the peak and the bill it saves, computed from the played profiles and
the tariff (an independent formulation of the no-market bill)."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import StudyFile
from federates.prosumers.battery import price_wanted_kw, self_consumption_kw
from federates.prosumers.role import ProsumersRole
from tests.unit.test_prosumers import make_sites

DAY = np.r_[np.full(64, 0.21), np.full(20, 0.42), np.full(12, 0.21)]  # 16:00-21:00 peak
TOU = {"kind": "tou", "periods": [
    {"name": "off_peak", "hours": ["0-16", "21-24"], "retail_usd_per_kwh": 0.21, "feed_in_usd_per_kwh": 0.08},
    {"name": "peak", "hours": ["16-21"], "retail_usd_per_kwh": 0.42, "feed_in_usd_per_kwh": 0.12}]}


def test_the_rule_by_hand():
    surplus, rating = np.array([2.0, -3.0, 0.0]), np.array([5.0, 5.0, 5.0])

    def want(price, feed_in=0.08, day=DAY, soc=None, ahead=None):
        soc = np.zeros(3) if soc is None else soc
        ahead = np.zeros((len(day), 3)) if ahead is None else ahead
        return price_wanted_kw(surplus, rating, retail_now=price, feed_in_now=feed_in, retail_day=day,
                               round_trip=0.95, soc_kwh=soc, capacity_kwh=np.full(3, 13.5),
                               surplus_day_kw=ahead, interval_h=0.25)

    # cheap, 64 intervals (16 h) before the peak, empty: the grid's share spread over them
    # (13.5 kWh less this interval's stored surplus, / 16 h), on top of the surplus
    assert want(0.21) == pytest.approx([2.0 + (13.5 - 0.5) / 16.0, 13.5 / 16.0, 13.5 / 16.0])
    # the same with 4 kW of surplus expected in each of 16 intervals before the peak (16 kWh):
    # nothing from the grid, no discharge
    sunny = np.zeros((96, 3))
    sunny[10:26] = 4.0
    assert np.array_equal(want(0.21, ahead=sunny), [2.0, 0.0, 0.0])
    # one interval before the peak, half full: the rest at full power at most
    assert want(0.21, day=np.r_[0.21, np.full(20, 0.42), np.full(75, 0.21)], soc=np.full(3, 6.75)) == \
        pytest.approx([5.0, 5.0, 5.0])
    assert np.array_equal(want(0.42), [2.0, -3.0, 0.0])  # dear: cover the deficit
    assert np.array_equal(want(0.42, feed_in=0.30), [-5.0, -5.0, -5.0])  # dear and feed-in pays: export
    mid_day = np.r_[DAY, 0.30]
    assert np.array_equal(want(0.30, day=mid_day), [2.0, 0.0, 0.0])  # between: keep the energy
    flat = np.full(96, 0.26)
    assert np.array_equal(want(0.26, day=flat), self_consumption_kw(surplus, rating))
    # a spread the round trip eats: self-consumption
    assert np.array_equal(want(0.20, day=np.r_[np.full(90, 0.20), np.full(6, 0.205)]),
                          self_consumption_kw(surplus, rating))


def _play(control: str, tariff: dict | None, days: int = 1) -> tuple[ProsumersRole, dict]:
    raw = {"study": {"duration": f"{24 * days}h"},
           "prosumers": {"count": 12, "battery_share": 1.0, "pv_share": 0.5, "battery_control": control}}
    if tariff is not None:
        raw["market"] = {"tariff": tariff}
    cfg = StudyFile.model_validate(raw)
    role = ProsumersRole(cfg, make_sites(12))
    for k in range(role.timeline.n_intervals):
        role.bids(k)
        role.interval_deviations(k)
    return role, role.tables()


def test_flat_tariff_gives_self_consumption_exactly():
    _, a = _play("self_consumption", None)
    _, b = _play("price", None)
    assert a["profiles"].equals(b["profiles"])


def test_tou_moves_the_stored_energy_into_the_peak_and_saves():
    """Twelve homes (half with PV) with a 13.5 kWh / 5 kW battery under the 16-21 h peak,
    three days: planned by the price, nine tenths of what the batteries give back comes
    in the peak (self-consumption spends it whenever the house draws), and the no-market
    bill, sum over steps of import x retail - export x feed-in of each interval, less
    the energy left in the batteries at the end valued at the off-peak price (so that a
    fuller battery at the end is not counted as a cost), is lower."""
    results = {}
    for control in ("self_consumption", "price"):
        role, t = _play(control, TOU, days=3)
        p = t["profiles"]
        tl = role.timeline
        k = (p["step"].to_numpy() // tl.steps_per_interval)
        retail = role.tariff.retail_usd_per_kwh[k]
        feed_in = role.tariff.feed_in_usd_per_kwh[k]
        net = p["net_kw"].to_numpy()
        bill = float(np.sum((np.clip(net, 0, None) * retail - np.clip(-net, 0, None) * feed_in) * tl.step_h))
        stored_kwh = float(role.soc_kwh_now.sum() - role.initial_soc_kwh.sum())
        dis = np.clip(-p["battery_kw"].to_numpy(), 0, None)
        peak = retail == 0.42
        results[control] = (bill - 0.21 * stored_kwh, dis[peak].sum() / dis.sum())
    assert results["price"][1] > 0.9
    assert results["self_consumption"][1] < 0.6
    assert results["price"][0] < results["self_consumption"][0]
