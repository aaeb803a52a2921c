"""Flexible demand: the RC house and its thermostat against an independent ODE solver and
the heat balance, the transactive setpoint by hand, EV sessions and charging by the
energy they need, smart charging against a time-of-use price."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

from federates.common.config import EvConfig, HvacConfig, StudyFile
from federates.prosumers.flex.ev import CHARGER_KW, EvFleet, EvParams, session
from federates.prosumers.flex.thermal import (
    Houses,
    HvacParams,
    bid_price_usd_per_kwh,
    setpoint_offset_c,
)

TZ = "America/New_York"


def _houses(n=1, spread=0.0, **kw) -> Houses:
    return Houses(HvacParams.of(HvacConfig(share=1.0, spread=spread, **kw)), np.arange(n), np.arange(n), seed=1)


# ---- the house ----------------------------------------------------------------------
def test_house_step_is_the_exact_solution_of_the_rc_ode():
    """Unit held on for 2 h at a varying outdoor temperature (held per step): every
    step's end temperature equals scipy's adaptive RK45 integration of C dT/dt = (T_out -
    T)/R + Q_gain - Q_rated to 1e-7 degC."""
    h = _houses(deadband_c=5.0)  # wide band: the unit does not switch off over the test
    h.t_in_c[:] = 27.0
    h.running[:] = True
    p = h.p
    r, c = float(h.r_c_per_kw[0]), float(h.c_kwh_per_c[0])
    step_h = 1.0 / 60.0
    t_out = 30.0 + 3.0 * np.sin(np.arange(120) / 20.0)
    t = 27.0
    for x in t_out:
        h.step_kw(float(x), 26.0, step_h)
        sol = solve_ivp(lambda _, y, x=x: [((x - y[0]) / r + p.internal_gain_kw - p.rated_kw_th) / c],
                        (0.0, step_h), [t], rtol=1e-11, atol=1e-12)
        t = sol.y[0, -1]
        assert h.t_in_c[0] == pytest.approx(t, abs=1e-7)
    assert h.running[0]


def test_thermostat_holds_the_band_and_the_heat_balance():
    """At a constant 32 degC outside over 3 days, the indoor temperature stays within
    the deadband (plus one step's drift), and the heat the unit removed equals the heat
    that came in: rated x run time = sum over steps of (T_out - T)/R + gains (the
    balance C dT = ... summed, with the house's own exact per-step integral), and the
    mean electric power is that over the COP."""
    h = _houses(setpoint_c=24.0, deadband_c=1.0)
    p = h.p
    r, c = float(h.r_c_per_kw[0]), float(h.c_kwh_per_c[0])
    step_h, t_out = 1.0 / 60.0, 32.0
    t0 = float(h.t_in_c[0])
    temps, runs, p_el = [], [], []
    for _ in range(3 * 1440):
        p_el.append(h.step_kw(t_out, 24.0, step_h)[0])
        temps.append(h.t_in_c[0])
        runs.append(h.running[0])
    temps = np.array(temps)
    drift = (t_out - 23.0) / r / c * step_h + p.rated_kw_th / c * step_h  # most a step moves it
    assert temps.min() > 24.0 - 0.5 - drift and temps.max() < 24.0 + 0.5 + drift
    removed_kwh = p.rated_kw_th * np.sum(runs) * step_h
    # heat in over the run: C (T_end - T_0) + removed = gains in; gains from the exact integral
    # of (T_out - T)/R: per step it is C dT - (gain - q) dt, i.e. conservation by construction;
    # the independent check is the mean power from the steady heat balance at the mean temperature
    gains_kwh = ((t_out - temps.mean()) / r + p.internal_gain_kw) * len(temps) * step_h
    stored_kwh = c * (temps[-1] - t0)
    assert removed_kwh == pytest.approx(gains_kwh - stored_kwh, rel=0.01)
    assert np.mean(p_el) == pytest.approx(removed_kwh / (len(temps) * step_h) / p.cop, rel=1e-12)
    assert 0.1 < np.mean(runs) < 0.9  # it cycles


def test_heating_mirrors_cooling():
    h = _houses(mode="heat", setpoint_c=20.0, deadband_c=1.0)
    for _ in range(2000):
        h.step_kw(0.0, 20.0, 1.0 / 60.0)
    assert 19.4 < h.t_in_c[0] < 20.6


def test_preview_leaves_the_house_as_it_was_and_equals_the_steps():
    h = _houses(n=5, spread=0.2)
    before = h.state()
    t_out = np.linspace(28.0, 33.0, 15)
    mean = h.preview_kw(t_out, 24.0, 1.0 / 60.0)
    assert np.array_equal(h.t_in_c, before[0]) and np.array_equal(h.running, before[1])
    stepped = np.mean([h.step_kw(float(x), 24.0, 1.0 / 60.0) for x in t_out], axis=0)
    assert np.array_equal(mean, stepped)


def test_transactive_setpoint_by_hand():
    p = HvacParams.of(HvacConfig(share=1.0, control="transactive", ramp=2.0, band_high_c=2.0, band_low_c=1.0))
    # price one ramp x sd above the mean: the full band up (cooling saves energy warmer)
    assert setpoint_offset_c(0.30 + 2.0 * 0.05, 0.30, 0.05, p) == pytest.approx(2.0)
    assert setpoint_offset_c(0.30 + 1.0 * 0.05, 0.30, 0.05, p) == pytest.approx(1.0)
    assert setpoint_offset_c(0.30 + 9.0 * 0.05, 0.30, 0.05, p) == pytest.approx(2.0)  # clipped
    assert setpoint_offset_c(0.30 - 2.0 * 0.05, 0.30, 0.05, p) == pytest.approx(-1.0)
    assert setpoint_offset_c(0.40, 0.30, 0.0, p) == 0.0  # no spread of prices: no move
    heat = HvacParams.of(HvacConfig(share=1.0, mode="heat", control="transactive"))
    assert setpoint_offset_c(0.40, 0.30, 0.05, heat) == pytest.approx(-1.0 * heat.band_high_c)
    # the bid: mean + ramp x sd x (T - setpoint) / band
    bid = bid_price_usd_per_kwh(np.array([25.0, 23.0]), 24.0, 0.30, 0.05, p)
    assert bid == pytest.approx([0.30 + 2.0 * 0.05 * 1.0 / 2.0, 0.30 - 2.0 * 0.05 * 1.0 / 1.0])


# ---- EVs -----------------------------------------------------------------------------
def _params(**kw) -> EvParams:
    return EvParams.of(EvConfig(share=1.0, **kw))


def test_sessions_follow_the_stated_distribution():
    """2000 car-days: arrival mean and sd, departure mean, median daily need, within the
    sampling error of the stated distribution (clipped at 3 sd: mean unchanged, sd
    0.986 x)."""
    p = _params()
    ss = [session(p, 7, i, dt.date(2026, 6, 1) + dt.timedelta(days=d)) for i in range(100) for d in range(20)]
    arr = np.array([s.arrival_h for s in ss])
    dep = np.array([s.departure_h for s in ss]) - 24.0
    assert arr.mean() == pytest.approx(18.0, abs=4 * 1.5 / np.sqrt(len(ss)))
    assert arr.std() == pytest.approx(1.5 * 0.986, rel=0.06)
    assert dep.mean() == pytest.approx(7.5, abs=4 * 1.0 / np.sqrt(len(ss)))
    need_at_battery = np.array([s.need_kwh for s in ss]) * p.efficiency
    assert np.median(need_at_battery) == pytest.approx(40.0 * 0.18, rel=0.06)
    assert need_at_battery.max() <= 0.8 * 60.0 + 1e-9
    # keyed draws: the same session whatever else was drawn
    assert session(p, 7, 3, dt.date(2026, 6, 5)) == ss[3 * 20 + 4]


def _run(fleet: EvFleet, steps: int, command) -> np.ndarray:
    out = []
    for g in range(steps):
        fleet.begin_step(g)
        out.append(fleet.step_kw(command(g)))
    return np.array(out)


def test_uncontrolled_cars_get_what_they_need_by_the_morning():
    """Uncontrolled, 50 cars over 3 days: every session that ended got its need (a
    night at 7.2 kW is far more than 48 kWh); the energy drawn step by step equals the
    sessions' delivered energy (conservation); each car draws the charger's power or
    less, and only while home."""
    start = pd.Timestamp("2026-06-01 00:00", tz=TZ)
    p = _params()
    fleet = EvFleet(p, np.arange(50), np.arange(50), start=start, step_s=60.0, seed=3)
    drawn = _run(fleet, 3 * 1440, lambda g: np.full(50, CHARGER_KW["level2"]))
    rec = pd.DataFrame(fleet.sessions())
    ended = rec[rec.ended]
    assert len(ended) >= 100
    assert np.allclose(ended.unmet_kwh, 0.0) and np.allclose(ended.delivered_kwh, ended.need_kwh)
    assert drawn.sum() / 60.0 == pytest.approx(rec.delivered_kwh.sum(), rel=1e-12)
    assert drawn.max() <= 7.2 + 1e-12
    # nothing drawn between 10:00 and 12:00 (every car left by 10:30 at the latest: 7.5 + 3 sd)
    day_steps = np.arange(3 * 1440) % 1440
    assert drawn[(day_steps >= 630) & (day_steps < 720)].sum() == 0.0


def test_smart_cars_charge_in_the_cheap_hours_and_still_by_the_departure():
    """A time-of-use price, 0.10 USD/kWh from 00:00 to 06:00 and 0.30 otherwise: smart
    cars put every kWh they can into the cheap hours, and leave with what they need
    (a need of at most 48 kWh fits in 6 h at 7.2 kW, the cars leave after 04:30). The
    uncontrolled ones charge on arrival in the evening."""
    start = pd.Timestamp("2026-06-01 00:00", tz=TZ)
    s, n = 15, 40
    local_h = lambda g: ((start + pd.Timedelta(minutes=int(g))).hour)  # noqa: E731

    def price(g_from, count):
        return np.array([0.10 if local_h(g_from + i * s) < 6 else 0.30 for i in range(count)])

    def drive(smart: bool) -> tuple[np.ndarray, pd.DataFrame]:
        fleet = EvFleet(_params(control="smart" if smart else "uncontrolled"), np.arange(n), np.arange(n),
                        start=start, step_s=60.0, seed=5)
        out = []
        for k in range(3 * 96):
            cmd = fleet.plan_kw(k * s, s, price)
            for g in range(k * s, (k + 1) * s):
                fleet.begin_step(g)
                out.append(fleet.step_kw(cmd))
        return np.array(out), pd.DataFrame(fleet.sessions())

    smart, rec_s = drive(True)
    dumb, _rec_d = drive(False)
    hours = (np.arange(len(smart)) // 60) % 24
    cheap = hours < 6
    # the first night's sessions began before the start (already charging): skip day 0's night
    after = np.arange(len(smart)) >= 1440
    assert smart[after & ~cheap].sum() / smart[after].sum() < 0.02
    assert dumb[after & ~cheap].sum() / dumb[after].sum() > 0.5
    ended = rec_s[rec_s.ended & (rec_s.arrival_step > 0)]
    assert len(ended) >= 60
    assert np.allclose(ended.unmet_kwh, 0.0, atol=1e-9)


def test_smart_car_with_no_slack_charges_at_once():
    """A car that needs more than the intervals after this one can give charges now,
    even at the dearest price."""
    start = pd.Timestamp("2026-06-01 00:00", tz=TZ)
    fleet = EvFleet(_params(control="smart"), np.arange(1), np.arange(1), start=start, step_s=60.0, seed=1)
    fleet.begin_step(0)
    fleet.plugged[0] = True
    fleet.leave_step[0] = 60  # one hour: four intervals of 15 min
    fleet.need_kwh[0] = 7.2 * 0.9  # 54 min at full power: the three later intervals give 45 min
    cmd = fleet.plan_kw(0, 15, lambda g, n: np.array([9.0, 0.1, 0.1, 0.1][:n]))
    assert cmd[0] == 7.2
    fleet.need_kwh[0] = 7.2 * 0.5  # 30 min: fits in the cheap later intervals
    assert fleet.plan_kw(0, 15, lambda g, n: np.array([9.0, 0.1, 0.1, 0.1][:n]))[0] == 0.0


# ---- in the prosumers role ----------------------------------------------------------------
def _role_cfg(**flex):
    from tests.unit.test_prosumers import make_cfg
    return make_cfg(count=12, battery_share=0.5, cloudiness=0.4, **flex)


def _play(role, drain_every: int | None = None) -> list[dict[str, pd.DataFrame]]:
    tl, chunks = role.timeline, []
    for k in range(tl.n_intervals):
        role.bids(k)
        role.interval_deviations(k)
        if drain_every and k % drain_every == drain_every - 1:
            chunks.append(role.drain_tables())
    chunks.append(role.drain_tables() if drain_every else role.tables())
    return chunks


FLEX = {"ev": {"share": 0.5, "control": "smart"}, "hvac": {"share": 0.5, "control": "transactive"},
        "water_heater": {"share": 0.5}}


def test_devices_add_to_the_household_load_and_their_tables_add_up():
    """With EVs and ACs the profiles' load is the household's base load (the same seed
    without devices) plus what the devices drew, step by step; the ``flex`` table's
    energy per interval is that difference summed; ``ev_sessions`` delivered what
    ``flex`` says the cars drew; the net power and the battery follow the new load."""
    from federates.prosumers.role import ProsumersRole
    from tests.unit.test_prosumers import make_sites

    base = ProsumersRole(_role_cfg(), make_sites(12))
    with_flex = ProsumersRole(_role_cfg(**FLEX), make_sites(12))
    (b,) = _play(base)
    (f,) = _play(with_flex)
    pb, pf = b["profiles"], f["profiles"]
    extra_kw = (pf.load_kw - pb.load_kw).to_numpy().reshape(-1, 12)
    assert (extra_kw >= -1e-12).all() and extra_kw.sum() > 0
    s = with_flex.timeline.steps_per_interval
    per_interval_kwh = extra_kw.reshape(-1, s, 12).sum(axis=1) * with_flex.timeline.step_h
    flex = f["flex"]
    got = np.zeros_like(per_interval_kwh)
    idx = {p: j for j, p in enumerate(with_flex.participants)}
    for row in flex.itertuples():
        got[row.interval, idx[row.participant]] = row.ev_kwh + row.hvac_kwh + row.wh_kwh
    assert np.allclose(got, per_interval_kwh, atol=1e-9)
    assert f["ev_sessions"].delivered_kwh.sum() == pytest.approx(flex.ev_kwh.sum(), rel=1e-12)
    assert np.allclose(pf.net_kw, pf.load_kw - pf.pv_kw + pf.battery_kw, atol=1e-12)
    # six owners of each kind; the devices' owners are the only rows of flex
    f = with_flex.flex
    owners = set(f.ev.owners) | set(f.houses.owners) | set(f.water_heaters.owners)
    assert flex.groupby("interval").size().iloc[0] == len(owners)
    assert flex.wh_kwh.sum() > 0


def test_drained_chunks_equal_the_whole_run():
    from federates.prosumers.role import ProsumersRole
    from tests.unit.test_prosumers import make_sites

    (whole,) = _play(ProsumersRole(_role_cfg(**FLEX), make_sites(12)))
    chunks = _play(ProsumersRole(_role_cfg(**FLEX), make_sites(12)), drain_every=7)
    for table in ("flex", "ev_sessions", "profiles"):
        joined = pd.concat([c[table] for c in chunks], ignore_index=True)
        pd.testing.assert_frame_equal(joined.sort_values(list(joined.columns[:2])).reset_index(drop=True),
                                      whole[table].sort_values(list(joined.columns[:2])).reset_index(drop=True))


def test_split_parts_own_the_same_devices_as_the_whole():
    """A prosumers federate split in three draws device ownership over everyone: the
    parts' tables, put together, are the whole role's."""
    from federates.common.keys import part_bounds
    from federates.prosumers.agents import make_specs
    from federates.prosumers.role import ProsumersRole
    from tests.unit.test_prosumers import make_sites

    cfg, sites = _role_cfg(**FLEX), make_sites(12)
    (whole,) = _play(ProsumersRole(cfg, sites))
    parts = []
    for i in range(3):
        lo, hi = part_bounds(12, i, 3)
        parts.append(_play(ProsumersRole(cfg, sites[lo:hi], specs=make_specs(cfg, sites)[lo:hi],
                                         population_indices=np.arange(12), offset=lo))[0])
    for table, key in (("flex", "interval"), ("ev_sessions", "departure_step")):
        joined = pd.concat([p[table] for p in parts], ignore_index=True).sort_values(key, kind="stable",
                                                                                     ignore_index=True)
        pd.testing.assert_frame_equal(joined, whole[table])


def test_smart_cars_wait_for_the_end_of_the_tou_peak_in_the_role():
    """In the prosumers role under configs/tou.yaml's tariff (16-21 h peak at twice the
    off-peak price), smart cars that come home in the evening wait for 21:00: they draw
    under 5 % of their energy in the peak, uncontrolled ones most of it (they come home
    around 18:00), and every smart session that ended got its energy."""
    from federates.prosumers.role import ProsumersRole
    from tests.unit.test_battery_price import TOU
    from tests.unit.test_prosumers import make_sites

    def peak_share(control: str) -> tuple[float, pd.DataFrame]:
        raw = {"study": {"duration": "48h"}, "market": {"tariff": TOU},
               "prosumers": {"count": 20, "ev": {"share": 1.0, "control": control}}}
        role = ProsumersRole(StudyFile.model_validate(raw), make_sites(20))
        (t,) = _play(role)
        f = t["flex"]
        peak = role.tariff.retail_usd_per_kwh[f["interval"].to_numpy()] > 0.3
        return float(f.ev_kwh[peak].sum() / f.ev_kwh.sum()), t["ev_sessions"]

    smart, sessions = peak_share("smart")
    dumb, _ = peak_share("uncontrolled")
    assert smart < 0.05 < 0.5 < dumb
    ended = sessions[sessions.departure_step < 2 * 1440]
    assert len(ended) >= 20 and np.allclose(ended.unmet_kwh, 0.0, atol=1e-9)



# ---- water heaters -------------------------------------------------------------------------
def _tanks(n=1, **kw):
    from federates.common.config import WaterHeaterConfig
    from federates.prosumers.flex.water_heater import WaterHeaterParams, WaterHeaters

    p = WaterHeaterParams.of(WaterHeaterConfig(share=1.0, **kw))
    return WaterHeaters(p, np.arange(n), np.arange(n), start=pd.Timestamp("2026-01-05 00:00", tz=TZ),
                        step_s=60.0, seed=4)


def test_tank_step_is_the_exact_solution_of_its_ode():
    """Element on, 3 L drawn in the minute: the step's end temperature equals scipy's
    RK45 integration of C dT/dt = P - UA (T - T_amb) - m c (T - T_in) to 1e-7 degC."""
    from federates.prosumers.flex.water_heater import KWH_PER_L_K

    w = _tanks()
    w.t_c[:] = 40.0
    p = w.p
    c = p.tank_l * KWH_PER_L_K
    mc = 3.0 * KWH_PER_L_K * 60.0  # kW/K over a 1-min step
    w.step_kw(np.array([3.0]), 55.0)
    sol = solve_ivp(lambda _, y: [(p.element_kw - p.ua_w_per_k / 1000 * (y[0] - p.ambient_c)
                                   - mc * (y[0] - p.inlet_c)) / c], (0.0, 1 / 60), [40.0], rtol=1e-11, atol=1e-12)
    assert w.on[0] and w.t_c[0] == pytest.approx(sol.y[0, -1], abs=1e-7)


def test_draws_and_heat_balance_over_ten_days():
    """Twenty tanks over ten days: the draws average the configured 200 L a day (within
    the sampling error of a Poisson count of lognormal volumes), and the element's energy
    is the heat the draws took from the inlet temperature plus the standby loss plus
    the change stored, each summed with the tank's temperature at the step (1 %)."""
    from federates.prosumers.flex.water_heater import KWH_PER_L_K

    w = _tanks(n=20)
    p = w.p
    t0 = w.t_c.copy()
    drawn = element = to_draws = standby = 0.0
    for g in range(10 * 1440):
        v = w.drawn_l(g * 60.0)
        t_before = w.t_c.copy()
        kw, _ = w.step_kw(v, 55.0)
        t_mid = 0.5 * (t_before + w.t_c)
        drawn += v.sum()
        element += kw.sum() / 60.0
        to_draws += (v * KWH_PER_L_K * (t_mid - p.inlet_c)).sum()
        standby += (p.ua_w_per_k / 1000 * (t_mid - p.ambient_c)).sum() / 60.0
    stored = (w.t_c - t0).sum() * p.tank_l * KWH_PER_L_K
    assert drawn / 200.0 == pytest.approx(200.0, rel=0.08)  # litres per tank-day
    assert element == pytest.approx(to_draws + standby + stored, rel=0.01)
    assert 45.0 < w.t_c.mean() < 56.0


def test_a_shed_tank_keeps_the_water_usable():
    """Shed (setpoint -inf unless below use_c, as a demand-response call does), a tank
    draws nothing while above 45 degC and comes back on below it."""
    w = _tanks()
    w.t_c[:] = 47.0
    on_at = []
    for _ in range(6 * 60):
        sp = np.where(w.t_c >= w.p.use_c, -np.inf, 55.0)
        kw, _ = w.step_kw(np.array([2.0]), sp)
        on_at.append(kw[0] > 0)
    assert not on_at[0] and any(on_at)
    assert w.t_c[0] > 44.0


def test_auto_heat_pump_heats_in_winter_cools_in_summer_and_floats_between():
    """``mode: auto`` (heat below 20 degC, cool above 24 degC, 1 degC deadband): at 0 degC
    outside it heats and holds the heating band, at 35 degC it cools and holds the
    cooling band, at 21 degC outside (with 0.5 kW of gains: the house settles about
    22 degC) it does neither. The same house in ``cool`` mode at 35 degC gives the
    same temperatures as ``auto`` (one thermostat path is the other's)."""
    def settle(t_out: float, mode: str = "auto") -> tuple[np.ndarray, float]:
        h = _houses(n=4, spread=0.2, mode=mode, setpoint_c=24.0, heat_setpoint_c=20.0, deadband_c=1.0)
        temps, kwh = [], 0.0
        for _ in range(2 * 1440):
            kwh += h.step_kw(t_out, 24.0, 1 / 60, 20.0).sum() / 60
            temps.append(h.t_in_c.copy())
        return np.array(temps[1440:]), kwh

    cold, heat_kwh = settle(0.0)
    hot, cool_kwh = settle(35.0)
    mild, mild_kwh = settle(21.0)
    assert 19.4 < cold.min() and cold.max() < 20.6 and heat_kwh > 0
    assert 23.4 < hot.min() and hot.max() < 24.6 and cool_kwh > 0
    assert mild_kwh == 0.0 and 20.5 < mild.min() and mild.max() < 23.5
    cool_only, _ = settle(35.0, mode="cool")
    assert np.allclose(hot, cool_only)


def test_auto_mode_refuses_overlapping_bands():
    with pytest.raises(ValueError, match="heat_setpoint_c"):
        HvacConfig(mode="auto", setpoint_c=21.0, heat_setpoint_c=20.5, deadband_c=1.0)


def test_under_a_load_limit_the_devices_lose_the_import_first():
    """Every household limited to 3 kW for the whole day (the DSO's load limits): the
    devices never take the import above the limit (an EV charger turned down to what the
    rest of the household leaves, a heat pump / AC or water heater off for the step when
    that is less than its rating), so the household's import exceeds 3 kW only where its
    load without the devices does; what the limit withheld from the devices is recorded
    (``flex.load_limited_kwh``), and the EV sessions delivered what ``flex`` says."""
    from federates.common.messages import LoadLimit
    from federates.prosumers.role import ProsumersRole
    from tests.unit.test_prosumers import make_sites

    flex = {"ev": {"share": 0.5, "control": "uncontrolled"}, "hvac": {"share": 0.5},
            "water_heater": {"share": 0.5}}
    base = ProsumersRole(_role_cfg(), make_sites(12))
    limited = ProsumersRole(_role_cfg(**flex), make_sites(12))
    (b,) = _play(base)
    tl = limited.timeline
    for k in range(tl.n_intervals):
        limited.on_load_limits(k, [LoadLimit(p, k, 3.0, "v_min", p, 8.0, 0.93) for p in limited.participants])
        limited.bids(k)
        limited.interval_deviations(k)
    f = limited.tables()
    pl, pb = f["profiles"], b["profiles"]
    device_kw = (pl.load_kw - pb.load_kw).to_numpy()
    assert (device_kw >= -1e-12).all() and device_kw.sum() > 0
    net = pl.net_kw.to_numpy()
    without_devices = net - device_kw
    assert (net <= np.maximum(3.0, without_devices) + 1e-9).all()
    assert f["flex"].load_limited_kwh.sum() > 1.0
    assert f["ev_sessions"].delivered_kwh.sum() == pytest.approx(f["flex"].ev_kwh.sum(), rel=1e-12)
    # unlimited, the same devices go above the limit
    free = ProsumersRole(_role_cfg(**flex), make_sites(12))
    (u,) = _play(free)
    assert (u["profiles"].net_kw.to_numpy() > 3.0 + 1e-9).sum() > (net > 3.0 + 1e-9).sum()
    assert (u["flex"].load_limited_kwh == 0).all()
