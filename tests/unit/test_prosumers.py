"""Prosumer profiles, specs, strategies and the ProsumersRole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federates.common.config import SiteConfig, StudyFile
from federates.common.grid import CustomerSite
from federates.prosumers import profiles
from federates.prosumers.agents import make_specs
from federates.prosumers.role import ETA_ONE_WAY, ProsumersRole, battery_limits_kw, soc_after
from federates.prosumers.strategies import STRATEGIES, limit_price

SAN_JUAN = SiteConfig()  # defaults: San Juan, Puerto Rico
DAY_1MIN = pd.date_range("2026-06-21T00:00:00-04:00", periods=1440, freq="60s")
DAY_15MIN = pd.date_range("2026-06-21T00:00:00-04:00", periods=96, freq="900s")


def make_sites(n: int) -> list[CustomerSite]:
    return [
        CustomerSite(f"p{i:03d}", i, f"bus{i % 5}", "abc"[i % 3], f"t{i // 3}", f"load{i % 5}")
        for i in range(n)
    ]


def make_cfg(**prosumers) -> StudyFile:
    raw = {"study": {"seed": prosumers.pop("seed", 42)}, "prosumers": prosumers}
    return StudyFile.model_validate(raw)


def run_role(role: ProsumersRole) -> tuple[list[list], np.ndarray]:
    """Play the whole study: the orders of every interval and the deviations [kW] of every
    step, shape (steps, participants)."""
    orders, deviations = [], []
    tl = role.timeline
    for k in range(tl.n_intervals):
        orders.append(role.bids(k))
        for g in tl.steps_of_interval(k):
            deviations.append(role.step(g))
    return orders, np.array(deviations)


def played_arrays(role: ProsumersRole) -> dict[str, np.ndarray]:
    """The ``profiles`` table of a played role as (steps, participants) arrays per column."""
    p = role.tables()["profiles"]
    n = len(role.specs)
    cols = ("load_kw", "pv_kw", "battery_kw", "soc_kwh", "net_kw", "forecast_net_kw")
    return {c: p[c].to_numpy().reshape(-1, n) for c in cols}


@pytest.fixture(scope="module")
def played_role() -> tuple[ProsumersRole, list[list], np.ndarray, dict[str, np.ndarray]]:
    role = ProsumersRole(make_cfg(count=12, battery_share=0.5, cloudiness=0.4), make_sites(12))
    orders, deviations = run_role(role)
    return role, orders, deviations, played_arrays(role)


# ---- load ---------------------------------------------------------------------------
@pytest.mark.parametrize("times", [DAY_1MIN, DAY_15MIN], ids=["1min", "15min"])
def test_load_daily_energy_matches_on_average(times):
    daily_kwh = 12.0
    dt_h = profiles.step_seconds(times) / 3600.0
    energies = [
        profiles.household_load_kw(daily_kwh, times, seed=5, index=i).sum() * dt_h for i in range(400)
    ]
    assert np.mean(energies) == pytest.approx(daily_kwh, rel=0.03)
    assert np.std(energies) > 0.5  # households differ


def test_load_never_negative_and_has_daily_shape():
    loads = profiles.household_loads_kw(
        np.full(200, 10.0), DAY_1MIN, seed=3, indices=np.arange(200)
    )
    assert loads.shape == (1440, 200)
    assert (loads >= 0).all()
    hourly = loads.mean(axis=1).reshape(24, 60).mean(axis=1)
    assert hourly[20] > 1.3 * hourly.mean()  # evening peak
    assert hourly[3] < 0.8 * hourly.mean()  # night base


def test_load_deterministic_per_seed_and_index():
    a = profiles.household_load_kw(10.0, DAY_1MIN, seed=1, index=4)
    assert np.array_equal(a, profiles.household_load_kw(10.0, DAY_1MIN, seed=1, index=4))
    assert not np.array_equal(a, profiles.household_load_kw(10.0, DAY_1MIN, seed=2, index=4))
    assert not np.array_equal(a, profiles.household_load_kw(10.0, DAY_1MIN, seed=1, index=5))
    many = profiles.household_loads_kw(np.array([7.0, 10.0]), DAY_1MIN, seed=1, indices=np.array([9, 4]))
    assert np.array_equal(many[:, 1], a)


def test_rasterise_is_exact():
    out = profiles._rasterise(np.array([1.5, 0.0]), np.array([3.25, 0.5]), np.array([2.0, 4.0]), 5)
    assert np.allclose(out, [2.0, 1.0, 2.0, 0.5, 0.0])


# ---- PV ----------------------------------------------------------------------------
def test_pv_clear_sky_daily_yield_san_juan_june():
    """Clear-sky AC yield of 1 kWp, 15 deg south roof, San Juan on 21 June.

    Reference band 4.5-5.5 kWh/kWp/day: NREL PVWatts v5 (Dobos 2014, 14 % system losses)
    for San Juan gives about this range for a low-tilt roof in early summer. A clear day
    must sit at or above the PVWatts all-sky monthly mean, hence the test also bounds it
    by the clear-sky plane-of-array insolation times the loss and inverter factors.
    """
    ac = profiles.pv_ac_kw(
        1.0, DAY_1MIN, SAN_JUAN, cloudiness=0.0, seed=1, index=0, tilt_deg=15.0, azimuth_deg=180.0
    )
    yield_kwh = ac.sum() / 60.0
    assert 4.5 <= yield_kwh <= 5.5
    ghi_kwh_m2 = profiles.clearsky_ghi(DAY_1MIN, SAN_JUAN).sum() / 60.0 / 1000.0
    assert 6.5 < ghi_kwh_m2 < 8.0  # clear-sky insolation in the tropics near the solstice
    assert yield_kwh < ghi_kwh_m2 * 0.86 * 0.96


def test_pv_zero_at_night_and_never_negative():
    ac = profiles.pv_ac_kw(5.0, DAY_1MIN, SAN_JUAN, cloudiness=0.3, seed=1, index=3)
    hours = DAY_1MIN.hour
    night = (hours < 5) | (hours >= 20)
    assert (ac >= 0).all()
    assert (ac[night] == 0).all()
    assert ac[(hours >= 11) & (hours < 13)].mean() > 1.0


def test_pv_clipped_at_inverter_rating():
    ac = profiles.pv_ac_kw(
        10.0, DAY_1MIN, SAN_JUAN, cloudiness=0.0, seed=1, index=0, inverter_kva=4.0
    )
    assert ac.max() <= 4.0 + 1e-12
    assert ac.max() == pytest.approx(4.0)  # the clip binds at noon


def test_cloudiness_reduces_pv_and_weather_is_shared():
    kt = profiles.clear_sky_index(DAY_1MIN, cloudiness=0.5, seed=9)
    assert ((kt >= 0.1) & (kt <= 1.0)).all()
    assert np.array_equal(kt, profiles.clear_sky_index(DAY_1MIN, cloudiness=0.5, seed=9))
    assert (profiles.clear_sky_index(DAY_1MIN, cloudiness=0.0, seed=9) == 1.0).all()
    # cloud passages last minutes, whatever the step length
    changes_per_h = []
    for step in ("10s", "60s"):
        t = pd.date_range("2026-06-21T00:00:00-04:00", periods=int(3 * 86400 / pd.Timedelta(step).total_seconds()), freq=step)
        k = profiles.clear_sky_index(t, cloudiness=0.5, seed=9)
        changes_per_h.append((np.diff(k < 1.0) != 0).sum() / 72.0)
    assert 1.0 < changes_per_h[1] < 12.0  # mean spell between 5 min and 1 h
    assert changes_per_h[0] == pytest.approx(changes_per_h[1], rel=0.25)
    energy = [
        profiles.pv_ac_kw(1.0, DAY_1MIN, SAN_JUAN, cloudiness=c, seed=9, index=0).sum()
        for c in (0.0, 0.3, 0.7, 1.0)
    ]
    assert energy == sorted(energy, reverse=True)
    # neighbours with the same roof see the same clouds: their outputs are proportional
    a = profiles.pv_ac_kw(3.0, DAY_1MIN, SAN_JUAN, cloudiness=0.5, seed=9, index=1,
                          inverter_kva=10.0, tilt_deg=15.0, azimuth_deg=180.0)
    b = profiles.pv_ac_kw(6.0, DAY_1MIN, SAN_JUAN, cloudiness=0.5, seed=9, index=2,
                          inverter_kva=20.0, tilt_deg=15.0, azimuth_deg=180.0)
    assert np.allclose(2 * a, b, rtol=0.02, atol=1e-6)


def test_pv_deterministic():
    a = profiles.pv_ac_kw(4.0, DAY_1MIN, SAN_JUAN, cloudiness=0.4, seed=1, index=2)
    assert np.array_equal(a, profiles.pv_ac_kw(4.0, DAY_1MIN, SAN_JUAN, cloudiness=0.4, seed=1, index=2))
    assert not np.array_equal(a, profiles.pv_ac_kw(4.0, DAY_1MIN, SAN_JUAN, cloudiness=0.4, seed=2, index=2))


# ---- specs -------------------------------------------------------------------------
def test_make_specs_shares_ranges_and_inverters():
    cfg = make_cfg(count=50, pv_share=0.6, battery_share=0.3, pv_kwp_min=3.0, pv_kwp_max=6.0)
    specs = make_specs(cfg, make_sites(50))
    assert [s.participant for s in specs] == [f"p{i:03d}" for i in range(50)]
    pv = [s for s in specs if s.pv_kwp > 0]
    bat = [s for s in specs if s.battery_kwh > 0]
    assert len(pv) == 30 and len(bat) == 15
    assert all(s.pv_kwp > 0 for s in bat)  # PV owners get batteries first
    assert all(3.0 <= s.pv_kwp <= 6.0 for s in pv)
    assert all(8.0 <= s.daily_load_kwh <= 25.0 for s in specs)
    for s in specs:
        assert s.inverter_kva == pytest.approx(max(s.pv_kwp * 1.2, s.battery_kw))
    assert make_specs(cfg, make_sites(50)) == specs


def test_battery_without_pv_gets_inverter_of_battery_rating():
    specs = make_specs(make_cfg(count=10, pv_share=0.0, battery_share=0.2), make_sites(10))
    assert [s.inverter_kva for s in specs if s.battery_kw > 0] == [5.0, 5.0]
    assert all(s.inverter_kva == 0.0 for s in specs if s.battery_kw == 0)


# ---- strategies --------------------------------------------------------------------
def test_limit_prices_between_tariffs():
    for name in STRATEGIES:
        for side in ("buy", "sell"):
            for k in range(50):
                p = limit_price(name, side=side, retail_usd_per_kwh=0.26, feed_in_usd_per_kwh=0.08,
                                seed=1, index=3, interval=k)
                assert 0.08 <= p <= 0.26
    kw = dict(retail_usd_per_kwh=0.26, feed_in_usd_per_kwh=0.08, seed=1, index=3, interval=0)
    assert limit_price("truthful_tariff", side="buy", **kw) == 0.26
    assert limit_price("truthful_tariff", side="sell", **kw) == 0.08
    a = limit_price("limit_price_uniform", side="buy", **kw)
    assert a == limit_price("limit_price_uniform", side="buy", **kw)
    assert a != limit_price("limit_price_uniform", side="buy", **{**kw, "interval": 1})


def test_unknown_strategy_names_allowed():
    with pytest.raises(ValueError, match=r"limit_price_uniform.*truthful_tariff"):
        limit_price("greedy", side="buy", retail_usd_per_kwh=0.26, feed_in_usd_per_kwh=0.08,
                    seed=1, index=0, interval=0)


# ---- battery and role --------------------------------------------------------------
def test_battery_helpers_keep_soc_in_bounds():
    cap = np.array([10.0, 10.0, 10.0])
    soc = np.array([9.99, 0.01, 5.0])
    p = battery_limits_kw(np.array([5.0, -5.0, 3.0]), soc, cap, 0.25)
    new = soc_after(soc, p, cap, 0.25)
    assert new[0] == pytest.approx(10.0) and new[1] == pytest.approx(0.0)
    assert new[2] == pytest.approx(5.0 + 3.0 * ETA_ONE_WAY * 0.25)


def test_role_battery_soc_bounds_and_energy_conservation(played_role):
    role, _, _, a = played_role
    cap = np.array([s.battery_kwh for s in role.specs])
    assert (cap > 0).sum() == 6
    assert (a["soc_kwh"] >= -1e-12).all() and (a["soc_kwh"] <= cap + 1e-12).all()
    b = a["battery_kw"]
    dt_h = role.timeline.step_h
    stored = (np.where(b > 0, b * ETA_ONE_WAY, b / ETA_ONE_WAY) * dt_h).sum(axis=0)
    assert np.allclose(a["soc_kwh"][-1] - role.initial_soc_kwh, stored, atol=1e-9)
    assert np.array_equal(a["soc_kwh"][-1], role.soc_kwh_now)
    assert (np.abs(b) <= np.array([s.battery_kw for s in role.specs]) + 1e-12).all()
    assert (b[:, cap == 0] == 0).all()
    assert (b > 0).any() and (b < 0).any()  # it charged from PV and discharged at night
    assert np.allclose(a["net_kw"], a["load_kw"] - a["pv_kw"] + b)


def test_bid_energy_is_forecast_net_times_interval(played_role):
    role, orders, _, a = played_role
    h = role.timeline.interval_h
    m = role.cfg.market
    forecast_net_kw = a["forecast_net_kw"][:: role.timeline.steps_per_interval]  # per interval
    n_orders = 0
    for k, ords in enumerate(orders):
        by_id = {o.participant: o for o in ords}
        for j, spec in enumerate(role.specs):
            net = forecast_net_kw[k, j]
            o = by_id.get(spec.participant)
            if net == 0.0:
                assert o is None
                continue
            n_orders += 1
            assert o.interval == k
            assert o.energy_kwh == pytest.approx(abs(net) * h, rel=1e-12)
            assert o.side == ("buy" if net > 0 else "sell")
            assert (o.bus, o.phase) == (spec.bus, spec.phase)
            assert m.feed_in_usd_per_kwh <= o.price_usd_per_kwh <= m.retail_usd_per_kwh
    assert n_orders > 0
    sides = {o.side for ords in orders for o in ords}
    assert sides == {"buy", "sell"}


def test_deviation_is_actual_minus_forecast(played_role):
    _, _, deviations, a = played_role
    assert np.array_equal(deviations, a["net_kw"] - a["forecast_net_kw"])


def test_role_deterministic_and_seed_dependent(played_role):
    role, orders, deviations, a = played_role
    again = ProsumersRole(role.cfg, make_sites(12))
    again_orders, again_deviations = run_role(again)
    assert again_orders == orders and np.array_equal(again_deviations, deviations)
    b = played_arrays(again)
    assert all(np.array_equal(a[c], b[c]) for c in a)
    other = ProsumersRole(make_cfg(count=12, battery_share=0.5, cloudiness=0.4, seed=7), make_sites(12))
    run_role(other)
    c = played_arrays(other)
    assert not np.array_equal(c["load_kw"], a["load_kw"])
    assert not np.array_equal(c["pv_kw"], a["pv_kw"])


def test_role_call_order_is_enforced():
    role = ProsumersRole(make_cfg(count=3), make_sites(3))
    with pytest.raises(RuntimeError):
        role.step(0)  # no bids yet
    role.bids(0)
    with pytest.raises(RuntimeError):
        role.bids(1)  # interval 0 not played yet
    role.step(0)
    with pytest.raises(RuntimeError):
        role.step(5)


def test_tables(played_role):
    role, _, _, a = played_role
    t = role.tables()
    assert len(t["prosumers"]) == 12
    p = t["profiles"]
    assert list(p.columns) == ["step", "t_s", "participant", "load_kw", "pv_kw", "battery_kw",
                               "soc_kwh", "net_kw", "forecast_net_kw"]
    assert len(p) == 12 * role.timeline.n_steps
    row = p[(p.step == 100) & (p.participant == "p004")].iloc[0]
    assert row.t_s == 100 * 60.0
    assert row.net_kw == a["net_kw"][100, 4]
    assert row.forecast_net_kw == a["forecast_net_kw"][100 // 15 * 15, 4]
    assert p.groupby([p.step // 15, "participant"]).forecast_net_kw.nunique().max() == 1  # per interval


def test_last_confirmations_are_kept_and_only_they():
    from federates.common.messages import Confirmation

    role = ProsumersRole(make_cfg(count=2), make_sites(2))
    c = [Confirmation("p000", 0, 1.0, 0.5, 0.0, 0.5, 0.0, 0.2)]
    role.on_confirmations(0, c)
    assert role.confirmations == {0: c}
    c1 = [Confirmation("p000", 1, 1.0, 0.5, 0.0, 0.5, 0.0, 0.2)]
    role.on_confirmations(1, c1)
    assert role.confirmations == {1: c1}  # memory does not grow with the study
