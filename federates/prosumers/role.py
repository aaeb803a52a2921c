"""The prosumers' role, shared by the HELICS federate and the in-process engine.

Per market interval ``k`` the role forecasts each prosumer's mean load and PV, plans the
battery for self-consumption and bids the forecast net energy (:meth:`bids`). Per
physics step ``g`` it plays out the actual load and PV, runs the battery on its plan
within its real state of charge and reports the deviation from the forecast
(:meth:`step`). Powers follow ``federates.common.units``: ``> 0`` is consumption
(import); the battery's ``battery_kw > 0`` is charging.

Battery model: usable capacity ``battery_kwh``, power limit ``battery_kw`` for charge and
discharge, round-trip efficiency ``ROUND_TRIP_EFFICIENCY`` = 0.95 split evenly
(``eta = sqrt(0.95)`` each way): charging at ``p`` kW for ``dt`` h adds ``p*eta*dt`` kWh,
discharging at ``p`` kW removes ``p/eta*dt`` kWh. Initial state of charge
``INITIAL_SOC_FRACTION`` = 0.5 of capacity.

Call order (as in ``federates.common.timeline``): ``bids(k)`` after ``step`` of the last
step of interval k-1 and before the first step of k (it needs the real state of charge at
the start of k); ``step(g)`` once per step, in order.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from federates.common.grid import CustomerSite
from federates.common.messages import Confirmation, Order
from federates.common.rng import stream
from federates.market.ledger import KeyRing, sign_order
from federates.prosumers import profiles
from federates.prosumers.adaptive import ADAPTIVE_STRATEGIES, AdaptiveBidders
from federates.prosumers.agents import ProsumerSpec, make_specs, spec_arrays
from federates.prosumers.strategies import limit_price
from runner.config import StudyFile

ROUND_TRIP_EFFICIENCY = 0.95
ETA_ONE_WAY = float(np.sqrt(ROUND_TRIP_EFFICIENCY))
INITIAL_SOC_FRACTION = 0.5
MIN_ORDER_KWH = 1e-9  # orders below this energy [kWh] are not sent


def study_times(cfg: StudyFile) -> pd.DatetimeIndex:
    """Local start times of all physics steps (site time zone)."""
    tl = cfg.timeline
    start = pd.Timestamp(cfg.study.start)
    times = pd.date_range(start, periods=tl.n_steps, freq=pd.Timedelta(seconds=tl.physics_step_s))
    return times.tz_convert(cfg.site.timezone)


def battery_limits_kw(
    p_kw: np.ndarray, soc_kwh: np.ndarray, capacity_kwh: np.ndarray, dt_h: float
) -> np.ndarray:
    """``p_kw`` [kW, > 0 charging] limited so the SoC stays in [0, capacity] over ``dt_h`` [h]."""
    max_charge = np.maximum(capacity_kwh - soc_kwh, 0.0) / (ETA_ONE_WAY * dt_h)
    max_discharge = np.maximum(soc_kwh, 0.0) * ETA_ONE_WAY / dt_h
    return np.clip(p_kw, -max_discharge, max_charge)


def soc_after(soc_kwh: np.ndarray, p_kw: np.ndarray, capacity_kwh: np.ndarray, dt_h: float) -> np.ndarray:
    """State of charge [kWh] after holding battery power ``p_kw`` [kW, > 0 charging] for ``dt_h``."""
    delta = np.where(p_kw > 0.0, p_kw * ETA_ONE_WAY, p_kw / ETA_ONE_WAY) * dt_h
    return np.clip(soc_kwh + delta, 0.0, capacity_kwh)


class ProsumersRole:
    """All prosumers of a study: specs, precomputed profiles, bids and step deviations."""

    def __init__(self, cfg: StudyFile, sites: list[CustomerSite], specs: list[ProsumerSpec] | None = None):
        self.cfg = cfg
        self.timeline = cfg.timeline
        self.seed = cfg.study.seed
        # ``specs``: given when these sites are a slice of a larger population (a part of
        # a split prosumers federate), whose specs were drawn over all sites
        self.specs: list[ProsumerSpec] = make_specs(cfg, sites) if specs is None else list(specs)
        if len(self.specs) != len(sites):
            raise ValueError(f"{len(self.specs)} specs for {len(sites)} sites")
        self.participants: list[str] = [s.participant for s in self.specs]
        arr = spec_arrays(self.specs)
        self._index = arr["index"]
        self._capacity_kwh = arr["battery_kwh"]
        self._battery_kw = arr["battery_kw"]
        n = len(self.specs)
        tl = self.timeline
        n_steps, n_int, s = tl.n_steps, tl.n_intervals, tl.steps_per_interval

        self.times = study_times(cfg)
        #: actual demand and PV output [kW] per step g and participant i
        self.load_kw = profiles.household_loads_kw(
            arr["daily_load_kwh"], self.times, seed=self.seed, indices=self._index
        )
        orient = [profiles.pv_orientation(self.seed, int(i)) for i in self._index]
        self.tilt_deg = np.array([o[0] for o in orient], dtype=float)
        self.azimuth_deg = np.array([o[1] for o in orient], dtype=float)
        if n and (arr["pv_kwp"] > 0).any():
            sky = profiles.sky_state(self.times, cfg.site)
            kt = profiles.clear_sky_index(
                self.times, cloudiness=cfg.prosumers.cloudiness, seed=self.seed
            )
            self.pv_kw = profiles.pv_ac_many_kw(
                arr["pv_kwp"], arr["inverter_kva"], self.tilt_deg, self.azimuth_deg, sky, kt
            )
        else:
            self.pv_kw = np.zeros((n_steps, n))

        # interval means and forecasts [kW] per interval k and participant i
        self.load_mean_kw = self.load_kw.reshape(n_int, s, n).mean(axis=1)
        self.pv_mean_kw = self.pv_kw.reshape(n_int, s, n).mean(axis=1)
        sd = cfg.prosumers.forecast_error_pct / 100.0
        err = np.empty((n_int, n, 2))
        for j, i in enumerate(self._index):
            err[:, j, :] = stream(self.seed, "forecast", int(i)).standard_normal((n_int, 2))
        self.load_forecast_kw = np.maximum(self.load_mean_kw * (1.0 + sd * err[:, :, 0]), 0.0)
        self.pv_forecast_kw = np.maximum(self.pv_mean_kw * (1.0 + sd * err[:, :, 1]), 0.0)

        # plans and results (NaN = not yet computed)
        self.battery_plan_kw = np.full((n_int, n), np.nan)
        self.forecast_net_kw = np.full((n_int, n), np.nan)
        self.battery_kw = np.zeros((n_steps, n))
        self.soc_kwh = np.zeros((n_steps, n))  # at the end of each step
        self.net_kw = np.zeros((n_steps, n))
        self.deviation_p_kw = np.zeros((n_steps, n))
        self.confirmations: dict[int, list[Confirmation]] = {}
        self.initial_soc_kwh = INITIAL_SOC_FRACTION * self._capacity_kwh
        self._soc = self.initial_soc_kwh.copy()
        self._next_step = 0
        m = cfg.market
        #: each prosumer's own Ed25519 key; bids leave here signed (market.ledger)
        self.keys: KeyRing | None = (
            KeyRing.from_seed(self.seed, self.participants) if m.ledger else None
        )
        #: learning bidders when the strategy is adaptive (``zip``, ``roth_erev``), else None
        self.adaptive: AdaptiveBidders | None = (
            AdaptiveBidders(
                cfg.prosumers.strategy, retail_usd_per_kwh=m.retail_usd_per_kwh,
                feed_in_usd_per_kwh=m.feed_in_usd_per_kwh, seed=self.seed,
                indices={s.participant: int(s.index) for s in self.specs},
            )
            if cfg.prosumers.strategy in ADAPTIVE_STRATEGIES
            else None
        )

    # ---- market ------------------------------------------------------------------
    def bids(self, k: int) -> list[Order]:
        """Orders for market interval ``k``: one per participant with non-zero forecast net energy.

        Forecast net [kW] = forecast load - forecast PV + planned battery (charging > 0);
        the order's energy is ``|net| * interval_h`` [kWh], side buy if net > 0.
        """
        tl = self.timeline
        if not 0 <= k < tl.n_intervals:
            raise ValueError(f"interval {k} outside 0..{tl.n_intervals - 1}")
        if self._next_step != k * tl.steps_per_interval:
            raise RuntimeError(
                f"bids({k}) needs the state of charge at the start of interval {k}: call it "
                f"after step {k * tl.steps_per_interval - 1} and before step "
                f"{k * tl.steps_per_interval} (next step is {self._next_step})"
            )
        dt_h = tl.interval_h
        load = self.load_forecast_kw[k]
        pv = self.pv_forecast_kw[k]
        surplus = pv - load
        # self-consumption: charge from surplus, discharge to cover the deficit
        wanted = np.clip(surplus, -self._battery_kw, self._battery_kw)
        plan = battery_limits_kw(wanted, self._soc, self._capacity_kwh, dt_h)
        net = load - pv + plan
        energy = np.abs(net) * dt_h
        net = np.where(energy < MIN_ORDER_KWH, 0.0, net)
        self.battery_plan_kw[k] = plan
        self.forecast_net_kw[k] = net

        p, m = self.cfg.prosumers, self.cfg.market
        orders = []
        for j, spec in enumerate(self.specs):
            if net[j] == 0.0:
                continue
            side = "buy" if net[j] > 0 else "sell"
            if self.adaptive is not None:
                value = m.retail_usd_per_kwh if side == "buy" else m.feed_in_usd_per_kwh
                price = self.adaptive.price(
                    k, spec.participant, side, value, energy_kwh=float(abs(net[j]) * dt_h)
                )
            else:
                price = limit_price(
                    p.strategy, side=side, retail_usd_per_kwh=m.retail_usd_per_kwh,
                    feed_in_usd_per_kwh=m.feed_in_usd_per_kwh, seed=self.seed,
                    index=spec.index, interval=k,
                )
            orders.append(
                Order(
                    participant=spec.participant, side=side, interval=k,
                    energy_kwh=float(abs(net[j]) * dt_h), price_usd_per_kwh=price,
                    bus=spec.bus, phase=spec.phase,
                )
            )
        if self.keys is not None:
            orders = [sign_order(self.keys, o) for o in orders]
        return orders

    def on_confirmations(self, k: int, confirmations: list[Confirmation]) -> None:
        """Keep the market's confirmations of interval ``k``; adaptive bidders learn from them."""
        self.confirmations[k] = list(confirmations)
        if self.adaptive is not None:
            self.adaptive.learn(k, self.confirmations[k])

    # ---- physics -----------------------------------------------------------------
    def step(self, g: int) -> np.ndarray:
        """Deviation [kW] of each participant's actual net power at step ``g`` from the
        forecast net power of the step's interval (site order; > 0 = more import)."""
        tl = self.timeline
        if g != self._next_step:
            raise RuntimeError(f"step({g}) called out of order; next step is {self._next_step}")
        if g >= tl.n_steps:
            raise ValueError(f"step {g} outside 0..{tl.n_steps - 1}")
        k = tl.interval_of_step(g)
        if np.isnan(self.forecast_net_kw[k]).any():
            raise RuntimeError(f"step({g}) before bids({k}): no forecast for interval {k}")
        dt_h = tl.step_h
        b = battery_limits_kw(self.battery_plan_kw[k], self._soc, self._capacity_kwh, dt_h)
        self._soc = soc_after(self._soc, b, self._capacity_kwh, dt_h)
        net = self.load_kw[g] - self.pv_kw[g] + b
        self.battery_kw[g] = b
        self.soc_kwh[g] = self._soc
        self.net_kw[g] = net
        self.deviation_p_kw[g] = net - self.forecast_net_kw[k]
        self._next_step = g + 1
        return self.deviation_p_kw[g].copy()

    def interval_deviations(self, k: int) -> np.ndarray:
        """:meth:`step` for every step of interval ``k``, in order: deviations [kW], shape
        (steps of the interval, participants). Call after :meth:`bids` of ``k``; the
        prosumers need nothing from the grid within an interval, so the whole interval
        is played out at once (one message per interval instead of one per step)."""
        steps = self.timeline.steps_of_interval(k)
        out = np.empty((len(steps), len(self.specs)))
        for j, g in enumerate(steps):
            out[j] = self.step(g)
        return out

    def pv_step_kw(self, g: int) -> np.ndarray:
        """Actual PV output [kW] of each participant at step ``g`` (site order)."""
        return self.pv_kw[g].copy()

    # ---- outputs -----------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        """``prosumers`` (one row per spec) and ``profiles`` (one row per step run and
        participant: step, t_s, participant, load_kw, pv_kw, battery_kw, soc_kwh, net_kw,
        forecast_net_kw)."""
        tl = self.timeline
        pros = pd.DataFrame([asdict(s) for s in self.specs])
        if len(pros):
            pros["tilt_deg"] = self.tilt_deg
            pros["azimuth_deg"] = self.azimuth_deg
        n_run, n = self._next_step, len(self.specs)
        steps = np.arange(n_run)
        k_of = steps // tl.steps_per_interval
        profiles_df = pd.DataFrame(
            {
                "step": np.repeat(steps, n),
                "t_s": np.repeat(steps * tl.physics_step_s, n),
                "participant": np.tile(np.array(self.participants, dtype=object), n_run),
                "load_kw": self.load_kw[:n_run].ravel(),
                "pv_kw": self.pv_kw[:n_run].ravel(),
                "battery_kw": self.battery_kw[:n_run].ravel(),
                "soc_kwh": self.soc_kwh[:n_run].ravel(),
                "net_kw": self.net_kw[:n_run].ravel(),
                "forecast_net_kw": self.forecast_net_kw[k_of].ravel(),
            }
        )
        return {"prosumers": pros, "profiles": profiles_df}
