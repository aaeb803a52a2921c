"""A study with ``prosumers.flex_dispatch: cleared`` under configs/tou.yaml's tariff, an
evening and night (EVs charging smart, ACs and water heaters transactive): the
devices act on the price they paid (``flex_bids``), the energy balances, the cars leave
full and the houses stay in their comfort band."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runner.run_folder import read_tables
from tests.conftest import DEFAULT, tecosim

pytestmark = pytest.mark.feeder

TOU = DEFAULT.parent / "tou.yaml"
NIGHT = ["--no-report", "--set", "study.start=2026-06-21T17:00:00-04:00", "--set", "study.duration=15h",
         "--set", "controllers.enabled=false"]  # no DSO cap: the meters see the prosumers' own net power
FLEX = ["--set", "prosumers.ev.share=0.5", "--set", "prosumers.ev.control=smart",
        "--set", "prosumers.hvac.share=0.5", "--set", "prosumers.hvac.control=transactive",
        "--set", "prosumers.water_heater.share=0.3", "--set", "prosumers.water_heater.control=transactive",
        "--set", "prosumers.flex_dispatch=cleared"]


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict[str, dict[str, pd.DataFrame]]:
    out = {}
    for name, args in (("cleared", FLEX), ("no_devices", [])):
        run_dir = tmp_path_factory.mktemp("tesploop") / name
        r = tecosim("run", str(TOU), "--engine", "inprocess", "--out", str(run_dir), *NIGHT, *args)
        assert r.returncode == 0, f"{name} run failed:\n{r.stdout}\n{r.stderr}"
        out[name] = read_tables(run_dir)
    return out


def _per_interval(df: pd.DataFrame, who: str, value: pd.Series, steps: int) -> pd.Series:
    return value.groupby([df.step // steps, df[who]]).sum()


def test_metered_energy_is_devices_plus_base_load_minus_pv_plus_battery(night):
    """Per prosumer and interval: the meter's energy = what its devices drew (``flex``:
    EV + heat pump / AC + water heater) + its base load (the same study without devices:
    the same seeded household) - PV + battery, to 1e-9 kWh."""
    t, base = night["cleared"], night["no_devices"]
    steps, step_h = 15, 1.0 / 60.0
    m = t["meters"]
    metered = _per_interval(m, "meter", m.p_kw * step_h, steps)
    p, b = t["profiles"], base["profiles"]
    assert (p.participant.to_numpy() == b.participant.to_numpy()).all()
    own = _per_interval(p, "participant", (b.load_kw - p.pv_kw + p.battery_kw) * step_h, steps)
    f = t["flex"].set_index(["interval", "participant"])
    devices = (f.ev_kwh + f.hvac_kwh + f.wh_kwh).reindex(own.index, fill_value=0.0)
    assert devices.sum() > 50.0  # the devices drew real energy
    gap = (metered.rename_axis(own.index.names) - (own + devices)).abs()
    assert gap.max() < 1e-9


def test_devices_act_on_the_price_they_paid(night):
    """Every bidding car charged its plan when its bid covered what it paid and drew
    nothing when it did not; both happen (the loop is live). The price a device paid is
    never above the retail price of its interval."""
    t = night["cleared"]
    fb = t["flex_bids"]
    assert fb.runs.equals(fb.bid_usd_per_kwh >= fb.paid_usd_per_kwh)
    ev = fb[fb.device == "ev"].set_index(["interval", "participant"])
    assert ev.runs.any() and not ev.runs.all()
    drawn = t["flex"].set_index(["interval", "participant"]).ev_kwh.reindex(ev.index)
    assert np.allclose(drawn[~ev.runs], 0.0, atol=1e-12)
    assert np.allclose(drawn[ev.runs], ev.planned_kwh[ev.runs], rtol=1e-9, atol=1e-12)
    retail = t["tariff"].set_index("interval").retail_usd_per_kwh
    assert (fb.paid_usd_per_kwh <= retail.reindex(fb.interval).to_numpy() + 1e-12).all()


def test_cars_leave_full_and_houses_stay_in_the_band(night):
    """Every session that ended within the study and could get its energy (need <=
    charger x time plugged in) left with nothing missing; every house's indoor
    temperature stayed within the comfort band the price may move its setpoint in
    (24 - 1 .. 24 + 2 degC) widened by half the 1 degC deadband and a 0.1 degC
    overshoot of the step in which the thermostat switches."""
    t = night["cleared"]
    s = t["ev_sessions"]
    ended = s[s.unmet_kwh.notna()]
    plugged_h = (ended.departure_step - ended.arrival_step.clip(lower=0)) / 60.0
    feasible = ended[ended.need_kwh <= 7.2 * plugged_h]
    assert len(feasible) >= 5
    assert np.allclose(feasible.unmet_kwh, 0.0, atol=1e-9)
    f = t["flex"].dropna(subset=["indoor_c_max"])
    assert len(f) > 0
    assert f.indoor_c_max.max() <= 24.0 + 2.0 + 0.5 + 0.1
    assert f.indoor_c_min.min() >= 24.0 - 1.0 - 0.5 - 0.1
