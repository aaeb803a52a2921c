"""The prosumers' flexible demand: who owns an EV or a heat pump / air conditioner,
what each device plans for the interval about to start (the power it bids for) and
what it draws step by step.

Ownership: ``round(share x n)`` prosumers own an EV (``prosumers.ev``), and likewise a
heat pump / AC (``prosumers.hvac``), picked by seeded keys per prosumer index (as PV
and batteries, ``agents.make_specs``).

Prices a device expects (:class:`PriceView`): for interval ``j``, the retail price of
the tariff, or the community's market price of the same interval a day earlier when
that was lower (a persistence forecast of the market: a buyer pays the market price
for what peers sell it, the retail price for the rest). The market price of an interval
becomes known with its confirmations.

Per interval ``k`` (:meth:`FlexDemand.plan_kw`, at bid time): each EV's command
(``ev.EvFleet.plan_kw``) and each house's setpoint (the thermostat's, or moved with the
price of ``k`` by the transactive controller), and the mean power they will draw over
``k`` as the prosumer can know it then (:meth:`EvFleet.forecast_kw`, and the house
simulated through the interval's known weather): that goes into the bid. Per step
(:meth:`FlexDemand.step_kw`) the devices draw what they really draw (an EV that
arrives within the interval, a house whose thermostat switches, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from federates.common.config import StudyFile
from federates.common.messages import DemandResponseDelivery
from federates.common.rng import stream
from federates.prosumers.flex.dispatch import (
    FLEX_BIDS_COLUMNS,
    DeviceBid,
    fill_envelope,
    setpoint_price,
)
from federates.prosumers.flex.ev import EvFleet, EvParams
from federates.prosumers.flex.thermal import (
    Houses,
    HvacParams,
    bid_price_usd_per_kwh,
    setpoint_offset_c,
)
from federates.prosumers.flex.water_heater import KWH_PER_L_K, WaterHeaterParams, WaterHeaters

SESSION_COLUMNS = ("participant", "arrival_step", "departure_step", "need_kwh", "delivered_kwh", "unmet_kwh")
_NAME_DTYPE = pd.Series(np.array(["p"], dtype=object)).dtype  # as the profiles table's names
DR_COLUMNS = ("interval", "participant", "requested_kw", "limit", "element", "reduced_kwh",
              "price_usd_per_kwh", "credit_usd", "delivered_kw", "paid_kwh")
FLEX_COLUMNS = ("interval", "participant", "ev_kwh", "hvac_kwh", "indoor_c_min", "indoor_c_max",
                "setpoint_c", "expected_price_usd_per_kwh", "hvac_bid_usd_per_kwh", "discomfort_c_h",
                "wh_kwh", "hot_water_short_kwh", "load_limited_kwh")


def owners_of(seed: int, indices: np.ndarray, share: float, what: str) -> np.ndarray:
    """Positions (site order) of the ``round(share x n)`` owners of ``what``: the smallest
    seeded keys (ties by position)."""
    n = len(indices)
    count = round(share * n)
    if count == 0:
        return np.zeros(0, dtype=int)
    keys = np.array([stream(seed, f"{what}_owner", int(i)).random() for i in indices])
    return np.sort(np.lexsort((np.arange(n), keys))[:count])


def flex_ratings_kw(cfg: StudyFile, indices: np.ndarray) -> np.ndarray:
    """Each prosumer's flexible demand [kW]: its EV charger plus its heat pump / AC's
    electric power (``indices``: every prosumer of the study, site order)."""
    p, seed = cfg.prosumers, cfg.study.seed
    out = np.zeros(len(indices))
    out[owners_of(seed, indices, p.ev.share, "ev")] += EvParams.of(p.ev).charger_kw
    out[owners_of(seed, indices, p.hvac.share, "hvac")] += HvacParams.of(p.hvac).electric_kw
    out[owners_of(seed, indices, p.water_heater.share, "water_heater")] += p.water_heater.element_kw
    return out


class PriceView:
    """The prices [USD/kWh] the devices expect, per market interval (module docstring)."""

    def __init__(self, retail_usd_per_kwh: Callable[[int], float], intervals_per_day: int,
                 n_intervals: int) -> None:
        self.retail = retail_usd_per_kwh
        self.day = int(intervals_per_day)
        self.n_intervals = int(n_intervals)
        self.market: dict[int, float] = {}  # market price seen per interval (kept a day)
        self.expected: dict[int, float] = {}  # what was expected per interval (kept a day)

    def observe(self, k: int, market_usd_per_kwh: float | None) -> None:
        if market_usd_per_kwh is not None and np.isfinite(market_usd_per_kwh):
            self.market[k] = float(market_usd_per_kwh)
        for old in [j for j in self.market if j < k - self.day]:
            del self.market[old]

    def _in_study(self, k: int) -> int:
        """An interval past the study's end stands for the same time of day of its last
        day (a car may leave after the study ends; the tariff is known only within it)."""
        n, day = self.n_intervals, self.day
        if k < n:
            return k
        if day <= n:
            return k - day * ((k - n) // day + 1)
        return n - 1

    def of(self, k: int) -> float:
        retail = float(self.retail(self._in_study(k)))
        seen = self.market.get(k - self.day)
        return retail if seen is None else min(retail, seen)

    def window(self, k: int, n: int) -> np.ndarray:
        return np.array([self.of(j) for j in range(k, k + n)])

    def remember(self, k: int) -> float:
        """The price expected for ``k``, noted for the statistics of later intervals."""
        p = self.of(k)
        self.expected[k] = p
        for old in [j for j in self.expected if j <= k - self.day]:
            del self.expected[old]
        return p

    def stats(self, k: int) -> tuple[float, float]:
        """Mean and standard deviation of the prices expected for the day up to ``k``."""
        xs = np.array([v for j, v in self.expected.items() if k - self.day < j <= k])
        if len(xs) < 2:
            return (float(xs.mean()) if len(xs) else float("nan")), 0.0
        if xs.min() == xs.max():  # no spread: exactly 0 (numpy's std of 5 x 0.21 is 2.8e-17)
            return float(xs[0]), 0.0
        return float(xs.mean()), float(xs.std())


class FlexDemand:
    """The EVs and the heat pumps / ACs of one set of prosumers (``specs`` order)."""

    def __init__(self, cfg: StudyFile, indices: np.ndarray, participants: list[str], *,
                 start: pd.Timestamp, retail_usd_per_kwh: Callable[[int], float],
                 population_indices: np.ndarray | None = None, offset: int = 0) -> None:
        """``indices``/``participants``: these prosumers (site order); ``population_indices``:
        the prosumer indices of the whole study when these are the slice from ``offset``
        of it (a part of a split prosumers federate: ownership is drawn over everyone)."""
        tl, p, seed = cfg.timeline, cfg.prosumers, cfg.study.seed
        self.tl, self.participants = tl, list(participants)
        indices = np.asarray(indices, dtype=int)
        self.n = len(indices)
        self.step_h = tl.step_h
        pop = indices if population_indices is None else np.asarray(population_indices, dtype=int)

        def mine(at: np.ndarray) -> np.ndarray:
            at = at[(at >= offset) & (at < offset + self.n)]
            return at - offset

        ev_at = mine(owners_of(seed, pop, p.ev.share, "ev"))
        hv_at = mine(owners_of(seed, pop, p.hvac.share, "hvac"))
        self.ev = (EvFleet(EvParams.of(p.ev), ev_at, indices[ev_at], start=start, step_s=tl.physics_step_s,
                           seed=seed) if len(ev_at) else None)
        self.hvac = HvacParams.of(p.hvac)
        self.houses = Houses(self.hvac, hv_at, indices[hv_at], seed=seed) if len(hv_at) else None
        wh_at = mine(owners_of(seed, pop, p.water_heater.share, "water_heater"))
        self.wh_params = WaterHeaterParams.of(p.water_heater)
        self.water_heaters = (WaterHeaters(self.wh_params, wh_at, indices[wh_at], start=start,
                                           step_s=tl.physics_step_s, seed=seed) if len(wh_at) else None)
        self._wh_setpoint_c = np.full(len(wh_at), self.wh_params.setpoint_c)
        self._wh_shed = np.zeros(len(wh_at), dtype=bool)
        #: each tank's energy per interval of the last day, for its persistence forecast
        self._wh_history: dict[int, np.ndarray] = {}
        self._per_day = round(86400.0 / tl.market_interval_s)
        self.prices = PriceView(retail_usd_per_kwh, round(86400.0 / tl.market_interval_s), tl.n_intervals)
        self._ev_cmd = np.zeros(len(ev_at))
        self._setpoint_c = np.full(len(hv_at), self.hvac.setpoint_c)
        self._heat_setpoint_c = np.full(len(hv_at), self.hvac.heat_setpoint_c)  # mode auto
        dr = cfg.controllers.demand_response
        self.dr_on = bool(cfg.controllers.enabled and dr.enabled)
        self.dr_price = float(dr.price_usd_per_kwh)
        #: the demand-response calls answered: one row per call (``demand_response`` table)
        self.dr_rows: list[dict] = []
        #: what the called devices cut, by interval, until the market is told (``deliveries``)
        self._delivered: dict[int, list[DemandResponseDelivery]] = {}
        self._k = -1
        self._rows: list[dict[str, np.ndarray]] = []
        self._acc: dict[str, np.ndarray] = {}
        self._gave_live = self._live_drained = False  # the sessions under way at the end: given once
        #: prosumers.flex_dispatch: cleared (federates/prosumers/flex/dispatch.py): the
        #: devices bid on their own and are dispatched from the price they pay
        self.cleared = p.flex_dispatch == "cleared"
        self._calls_kw = np.zeros(self.n)  # the demand-response cut asked of each prosumer for k [kW]
        self._hvac_asked = np.zeros(len(hv_at), dtype=bool)
        self._bids: dict[tuple[int, str], DeviceBid] = {}  # k's device bids by (site position, device)
        self._ev_cap = np.zeros(len(ev_at))  # each car's command if it runs [kW]
        self._ev_must = np.zeros(len(ev_at), dtype=bool)  # no slack: it charges whatever the price
        self.bid_rows: list[dict] = []  # the ``flex_bids`` table

    def _wh_forecast_kw(self, k: int) -> np.ndarray:
        """A tank's expected power in interval ``k`` [kW]: what it drew in the same
        interval a day earlier, or (the first day) its daily mean: the day's draws heated
        from the inlet to the setpoint plus the standby loss at the setpoint."""
        seen = self._wh_history.get(k - self._per_day)
        if seen is not None:
            return seen / self.tl.interval_h
        w = self.wh_params
        heat_kw = w.daily_draw_l * KWH_PER_L_K * (w.setpoint_c - w.inlet_c) / 24.0
        return np.full(len(self.water_heaters.owners), heat_kw + w.ua_w_per_k / 1000.0 * (w.setpoint_c - w.ambient_c))

    def observe(self, k: int, market_usd_per_kwh: float | None) -> None:
        self.prices.observe(k, market_usd_per_kwh)

    # ---- per interval ----------------------------------------------------------------
    def plan_kw(self, k: int, t_out_c: np.ndarray, calls: dict[int, tuple[float, str, str]] | None = None,
                ) -> np.ndarray:
        """Commands and setpoints of interval ``k``; the forecast mean power [kW] per
        prosumer (0 without a device). ``t_out_c``: the interval's outdoor temperature
        per step [degC]. ``calls``: the DSO's demand-response calls for ``k``, {site
        position: (cut [kW], limit, element)}: each is met first by the EV (its charger
        turned down by the cut), then, for what is left, by the heat pump / AC (its
        setpoint moved by ``band_high_c`` the energy-saving way); the cut delivered is
        the plan without the call minus the plan with it (:attr:`dr_rows`)."""
        s = self.tl.steps_per_interval
        g0 = k * s
        out = np.zeros(self.n)
        price = self.prices.remember(k)
        self._plan_price = price  # the price the plan of k is made at (cleared: the thermostats' schedule)
        mean, sd = self.prices.stats(k)
        calls = calls or {}
        cut = np.zeros(self.n)
        for i, (kw, _, _) in calls.items():
            cut[i] = kw
        self._calls_kw = cut.copy()
        base_kw = np.zeros(self.n)
        if self.ev is not None:
            o = self.ev.owners
            horizon = self.prices.window(k, 2 * self._per_day)  # once per interval, not per car

            def expected(g: int, n: int) -> np.ndarray:
                return horizon[:n] if n <= len(horizon) else self.prices.window(g // s, n)

            cmd = self.ev.plan_kw(g0, s, expected)
            before = self.ev.forecast_kw(cmd, g0, s)
            self._ev_cmd = np.maximum(cmd - cut[o], 0.0) if calls else cmd
            after = self.ev.forecast_kw(self._ev_cmd, g0, s) if calls else before
            out[o] += after
            base_kw[o] += before
            cut[o] = np.maximum(cut[o] - (before - after), 0.0)
        bid = np.full(0, np.nan)
        if self.houses is not None:
            h, o = self.houses, self.houses.owners
            shift = setpoint_offset_c(price, mean, sd, self.hvac) if self.hvac.transactive else 0.0
            planned = np.full(len(o), self.hvac.setpoint_c + shift)
            # auto: the heating setpoint moves the other way (down for a high price)
            planned_heat = np.full(len(o), self.hvac.heat_setpoint_c - shift)
            bid = bid_price_usd_per_kwh(h.t_in_c, planned, mean, sd, self.hvac, planned_heat)
            before = h.preview_kw(t_out_c, planned, self.step_h, planned_heat)
            self._setpoint_c, self._heat_setpoint_c = planned, planned_heat
            after = before
            asked = cut[o] > 0
            self._hvac_asked = asked
            if asked.any():
                saving = self.hvac.band_high_c if self.hvac.cooling else -self.hvac.band_high_c
                self._setpoint_c = np.where(asked, planned + saving, planned)
                self._heat_setpoint_c = np.where(asked, planned_heat - self.hvac.band_high_c, planned_heat)
                after = h.preview_kw(t_out_c, self._setpoint_c, self.step_h, self._heat_setpoint_c)
            out[o] += after
            base_kw[o] += before
            cut[o] = np.maximum(cut[o] - (before - after), 0.0)
        if self.water_heaters is not None:
            o = self.water_heaters.owners
            w = self.wh_params
            shift = 0.0
            if w.transactive and sd > 0 and np.isfinite(sd):
                shift = -float(np.clip((price - mean) / (w.ramp * sd) * w.band_c, -w.band_c, w.band_c))
            self._wh_setpoint_c = np.full(len(o), w.setpoint_c + shift)
            before = self._wh_forecast_kw(k)
            self._wh_shed = cut[o] > 0  # called: the element shed for the interval (comfort kept)
            after = np.where(self._wh_shed, 0.0, before)
            out[o] += after
            base_kw[o] += before
        self._open_interval(k, price, bid)
        interval_h = self.tl.interval_h
        for i, (kw, limit, element) in sorted(calls.items()):
            reduced_kwh = max(float(base_kw[i] - out[i]), 0.0) * interval_h
            paid_kwh = min(reduced_kwh, kw * interval_h)  # paid up to what was asked: more is not bought
            self.dr_rows.append({"interval": k, "participant": self.participants[i], "requested_kw": kw,
                                 "limit": limit, "element": element, "reduced_kwh": reduced_kwh,
                                 "price_usd_per_kwh": self.dr_price, "credit_usd": paid_kwh * self.dr_price,
                                 "delivered_kw": reduced_kwh / interval_h, "paid_kwh": paid_kwh})
            self._delivered.setdefault(k, []).append(
                DemandResponseDelivery(self.participants[i], k, float(kw), reduced_kwh, limit, element))
        return out

    def deliveries(self, k: int) -> list[DemandResponseDelivery]:
        """What the calls of interval ``k`` got (site order), for the market to pay; given once."""
        return self._delivered.pop(k, [])

    # ---- prosumers.flex_dispatch: cleared (flex/dispatch.py) --------------------------
    def _ev_expected(self, k: int):
        s = self.tl.steps_per_interval
        horizon = self.prices.window(k, 2 * self._per_day)

        def expected(g: int, n: int) -> np.ndarray:
            return horizon[:n] if n <= len(horizon) else self.prices.window(g // s, n)

        return expected

    def offers(self, k: int, t_out_c: np.ndarray, retail_usd_per_kwh: float) -> list[DeviceBid]:
        """Each device's bid for interval ``k`` (after :meth:`plan_kw` of ``k``, which
        answered the demand-response calls): the mean power [kW] it would draw over
        ``k`` and its limit price (flex/dispatch.py), for the devices that want energy."""
        s = self.tl.steps_per_interval
        g0 = k * s
        retail = float(retail_usd_per_kwh)
        mean, sd = self.prices.stats(k)
        out: list[DeviceBid] = []
        if self.ev is not None:
            ev, o = self.ev, self.ev.owners
            self._ev_cap = np.maximum(ev.p.charger_kw - self._calls_kw[o], 0.0)
            kw = ev.forecast_kw(self._ev_cap, g0, s)
            if ev.p.smart:
                thr = ev.threshold_usd_per_kwh(g0, s, self._ev_expected(k))
                self._ev_must = np.isinf(thr)
                price = np.where(self._ev_must, retail, thr)
            else:
                self._ev_must = np.zeros(len(o), dtype=bool)
                price = np.full(len(o), retail)
            out += [DeviceBid(int(o[j]), "ev", float(kw[j]), float(price[j])) for j in np.flatnonzero(kw > 0.0)]
        if self.houses is not None:
            h, o, hv = self.houses, self.houses.owners, self.hvac
            asked = self._hvac_asked
            if hv.transactive:  # TESP's bid on the base setpoints; a house under a call bids retail
                base, base_heat = np.full(len(o), hv.setpoint_c), np.full(len(o), hv.heat_setpoint_c)
                price = np.where(asked, retail, bid_price_usd_per_kwh(h.t_in_c, base, mean, sd, hv, base_heat))
            else:
                price = np.full(len(o), retail)
            # energy: what it draws on the setpoints of plan_kw (the price it expects to pay, or
            # the call's), so that the schedule is what the meter sees when it pays that price
            kw = h.preview_kw(t_out_c, self._setpoint_c, self.step_h, self._heat_setpoint_c)
            out += [DeviceBid(int(o[j]), "hvac", float(kw[j]), float(price[j])) for j in np.flatnonzero(kw > 0.0)]
        if self.water_heaters is not None:
            w, o = self.wh_params, self.water_heaters.owners
            kw = np.where(self._wh_shed, 0.0, self._wh_forecast_kw(k))
            if w.transactive and w.band_c > 0 and np.isfinite(sd) and np.isfinite(mean):
                price = np.maximum(mean + w.ramp * sd * (w.setpoint_c - self.water_heaters.t_c) / w.band_c, 0.0)
            else:
                price = np.full(len(o), retail)
            out += [DeviceBid(int(o[j]), "water_heater", float(kw[j]), float(price[j]))
                    for j in np.flatnonzero(kw > 0.0)]
        self._bids = {(b.position, b.device): b for b in out}
        return out

    def dispatch(self, k: int, t_out_c: np.ndarray, paid: dict[tuple[int, str], float],
                 room_kw: np.ndarray | None = None, scheduled: dict[tuple[int, str], float] | None = None,
                 own_kwh: dict[tuple[int, str], float] | None = None) -> None:
        """Set the devices' power for interval ``k`` from the price each pays ``paid``
        [USD/kWh] by (site position, device), then keep each customer's devices within
        the room its import envelope leaves, ``room_kw`` [kW] per prosumer (NaN: no
        envelope; None: none at all); rows of the ``flex_bids`` table (flex/dispatch.py).
        ``scheduled``: the share of each device's energy its owner is scheduled for (its
        own supply, peer energy, a backstop); a thermostat then sets its setpoint at
        :func:`dispatch.setpoint_price` (None: at the price it pays). ``own_kwh``: what
        its owner's own surplus covers of each device's energy [kWh] (recorded)."""
        mean, sd = self.prices.stats(k)
        retail = float(self.prices.retail(k))
        s = self.tl.steps_per_interval
        g0 = k * s
        hv, w = self.hvac, self.wh_params
        ev_j = {} if self.ev is None else {int(p): j for j, p in enumerate(self.ev.owners)}
        hv_j = {} if self.houses is None else {int(p): j for j, p in enumerate(self.houses.owners)}
        wh_j = {} if self.water_heaters is None else {int(p): j for j, p in enumerate(self.water_heaters.owners)}
        runs: dict[tuple[int, str], bool] = {}
        for key, b in self._bids.items():
            pos, dev = key
            price = paid.get(key, np.inf)
            runs[key] = bool(b.price_usd_per_kwh >= price)
            if scheduled is not None and dev != "ev":
                price = setpoint_price(scheduled.get(key, 0.0), self._plan_price, retail)
            if dev == "ev":
                j = ev_j[pos]
                self._ev_cmd[j] = self._ev_cap[j] if runs[key] or self._ev_must[j] else 0.0
            elif dev == "hvac" and hv.transactive and not self._hvac_asked[hv_j[pos]]:
                shift = setpoint_offset_c(price, mean, sd, hv)
                self._setpoint_c[hv_j[pos]] = hv.setpoint_c + shift
                self._heat_setpoint_c[hv_j[pos]] = hv.heat_setpoint_c - shift
            elif dev == "water_heater" and w.transactive and np.isfinite(sd) and sd > 0 and np.isfinite(price):
                shift = -float(np.clip((price - mean) / (w.ramp * sd) * w.band_c, -w.band_c, w.band_c))
                self._wh_setpoint_c[wh_j[pos]] = w.setpoint_c + shift
        planned = self._planned_kw(g0, s, t_out_c)
        before = dict(planned)
        over: dict[tuple[int, str], float] = {}
        if room_kw is not None:
            by_pos: dict[int, list[tuple[int, str]]] = {}
            for key in self._bids:
                by_pos.setdefault(key[0], []).append(key)
            for pos, keys in sorted(by_pos.items()):
                room = float(room_kw[pos])
                if not np.isfinite(room):
                    continue
                bids = [np.inf if key[1] == "ev" and self._ev_must[ev_j[key[0]]] else
                        self._bids[key].price_usd_per_kwh for key in keys]
                kept = fill_envelope(room, [planned[key] for key in keys], bids, [key[1] == "ev" for key in keys])
                for key, keep_kw in zip(keys, kept, strict=True):
                    if keep_kw >= planned[key]:
                        continue
                    dev, pos_ = key[1], key[0]
                    if dev == "ev" and not self._ev_must[ev_j[pos_]]:
                        j = ev_j[pos_]  # the charger turned down to the room's mean power
                        home_h = np.clip(self.ev.leave_step[j] - g0, 0, s) * self.step_h
                        self._ev_cmd[j] = keep_kw * self.tl.interval_h / home_h if home_h > 0 else 0.0
                    elif dev == "hvac":
                        j = hv_j[pos_]
                        saving = hv.band_high_c if hv.cooling else -hv.band_high_c
                        self._setpoint_c[j] = hv.setpoint_c + saving
                        self._heat_setpoint_c[j] = hv.heat_setpoint_c - hv.band_high_c
                    elif dev == "water_heater":
                        self._wh_shed[wh_j[pos_]] = True
            planned = self._planned_kw(g0, s, t_out_c)
            for pos, keys in by_pos.items():
                room = float(room_kw[pos])
                if not np.isfinite(room):
                    continue
                excess = max(sum(planned[key] for key in keys) - max(room, 0.0), 0.0)
                for key in sorted(keys, key=lambda key: (self._bids[key].price_usd_per_kwh, key[1])):
                    take = min(excess, planned[key])
                    over[key] = take
                    excess -= take
        h = self.tl.interval_h
        for key, b in sorted(self._bids.items()):
            self.bid_rows.append({
                "interval": k, "participant": self.participants[key[0]], "device": key[1],
                "bid_kwh": b.kw * h, "own_kwh": (own_kwh or {}).get(key, 0.0), "bid_usd_per_kwh": b.price_usd_per_kwh,
                "paid_usd_per_kwh": float(paid.get(key, np.inf)), "runs": runs[key],
                "planned_kwh": planned[key] * h, "deferred_kwh": max(before[key] - planned[key], 0.0) * h,
                "over_envelope_kwh": over.get(key, 0.0) * h,
            })

    def _planned_kw(self, g0: int, s: int, t_out_c: np.ndarray) -> dict[tuple[int, str], float]:
        """The mean power [kW] each bidding device will draw over the interval under its
        present command / setpoint, as the prosumer can know it (EV: its session; house:
        simulated through the interval's weather; tank: its forecast, 0 shed)."""
        out: dict[tuple[int, str], float] = {}
        kinds = {d for _, d in self._bids}
        if "ev" in kinds:
            kw = self.ev.forecast_kw(self._ev_cmd, g0, s)
            out.update({(int(p), "ev"): float(x) for p, x in zip(self.ev.owners, kw, strict=True)})
        if "hvac" in kinds:
            kw = self.houses.preview_kw(t_out_c, self._setpoint_c, self.step_h, self._heat_setpoint_c)
            out.update({(int(p), "hvac"): float(x) for p, x in zip(self.houses.owners, kw, strict=True)})
        if "water_heater" in kinds:
            kw = np.where(self._wh_shed, 0.0, self._wh_forecast_kw(g0 // s))
            out.update({(int(p), "water_heater"): float(x)
                        for p, x in zip(self.water_heaters.owners, kw, strict=True)})
        return {key: out[key] for key in self._bids}

    def _open_interval(self, k: int, price: float, hvac_bid: np.ndarray) -> None:
        if self._k >= 0:
            self._close_interval()
        self._k = k
        n = self.n
        self._acc = {
            "ev_kwh": np.zeros(n), "hvac_kwh": np.zeros(n),
            "indoor_c_min": np.full(n, np.inf), "indoor_c_max": np.full(n, -np.inf),
            "discomfort_c_h": np.zeros(n), "price": np.full(n, price), "bid": np.full(n, np.nan),
            "wh_kwh": np.zeros(n), "hot_water_short_kwh": np.zeros(n), "load_limited_kwh": np.zeros(n),
        }
        if self.houses is not None:
            self._acc["bid"][self.houses.owners] = hvac_bid

    def _setpoints_by_site(self) -> np.ndarray:
        out = np.full(self.n, np.nan)
        if self.houses is not None:
            out[self.houses.owners] = self._setpoint_c
        return out

    def _close_interval(self) -> None:
        a, k = self._acc, self._k
        owners = np.zeros(self.n, dtype=bool)
        if self.ev is not None:
            owners[self.ev.owners] = True
        has_house = np.zeros(self.n, dtype=bool)
        if self.houses is not None:
            owners[self.houses.owners] = True
            has_house[self.houses.owners] = True
        if self.water_heaters is not None:
            owners[self.water_heaters.owners] = True
            self._wh_history[k] = a["wh_kwh"][self.water_heaters.owners].copy()
            self._wh_history.pop(k - self._per_day, None)
        j = np.flatnonzero(owners)
        self._rows.append({
            "interval": np.full(len(j), k, dtype=np.int64),
            "participant": np.array(self.participants, dtype=object)[j],
            "ev_kwh": a["ev_kwh"][j], "hvac_kwh": a["hvac_kwh"][j],
            "indoor_c_min": np.where(has_house, a["indoor_c_min"], np.nan)[j],
            "indoor_c_max": np.where(has_house, a["indoor_c_max"], np.nan)[j],
            "setpoint_c": self._setpoints_by_site()[j],
            "expected_price_usd_per_kwh": a["price"][j],
            "hvac_bid_usd_per_kwh": a["bid"][j],
            "discomfort_c_h": np.where(has_house, a["discomfort_c_h"], np.nan)[j],
            "wh_kwh": a["wh_kwh"][j], "hot_water_short_kwh": a["hot_water_short_kwh"][j],
            "load_limited_kwh": a["load_limited_kwh"][j],
        })
        self._k = -1

    # ---- per step --------------------------------------------------------------------
    def step_kw(self, g: int, t_out_c: float, headroom_kw: np.ndarray | None = None) -> np.ndarray:
        """What the devices draw at step ``g`` [kW] per prosumer. ``headroom_kw``: under
        the DSO's load limits, what each household may still import after the rest of
        its load (inf: no limit; None: nobody limited). The import above a limit is not
        served: the devices lose it first, the EV charger turned down to what is left,
        then the heat pump / AC and then the water heater's element switched off for the
        step when what is left cannot run them."""
        out = np.zeros(self.n)
        a = self._acc
        left = None if headroom_kw is None else np.asarray(headroom_kw, dtype=float).copy()
        if self.ev is not None:
            self.ev.begin_step(g)
            cmd = self._ev_cmd
            if left is not None:
                free = self.ev.would_draw_kw(cmd)
                cmd = np.minimum(cmd, np.maximum(left[self.ev.owners], 0.0))
            p = self.ev.step_kw(cmd)
            out[self.ev.owners] += p
            a["ev_kwh"][self.ev.owners] += p * self.step_h
            if left is not None:
                left[self.ev.owners] -= p
                a["load_limited_kwh"][self.ev.owners] += (free - p) * self.step_h
        if self.houses is not None:
            h = self.houses
            sp, sp_heat = self._setpoint_c, self._heat_setpoint_c
            if left is not None:
                off = (left[h.owners] < self.hvac.electric_kw - 1e-9) & h.would_run(sp, sp_heat)
                a["load_limited_kwh"][h.owners] += np.where(off, self.hvac.electric_kw * self.step_h, 0.0)
                sp, sp_heat = np.where(off, np.inf, sp), np.where(off, -np.inf, sp_heat)
                if not self.hvac.auto and not self.hvac.cooling:
                    sp = np.where(off, -np.inf, self._setpoint_c)
            p = h.step_kw(t_out_c, sp, self.step_h, sp_heat)
            if left is not None:
                left[h.owners] -= p
            out[h.owners] += p
            a["hvac_kwh"][h.owners] += p * self.step_h
            t = h.t_in_c
            a["indoor_c_min"][h.owners] = np.minimum(a["indoor_c_min"][h.owners], t)
            a["indoor_c_max"][h.owners] = np.maximum(a["indoor_c_max"][h.owners], t)
            # discomfort: degree-hours beyond the base setpoint's deadband (end of step)
            half = 0.5 * self.hvac.deadband_c
            if self.hvac.auto:  # too warm above the cooling band, too cold below the heating band
                over = np.maximum(t - (self.hvac.setpoint_c + half), (self.hvac.heat_setpoint_c - half) - t)
            elif self.hvac.cooling:
                over = t - (self.hvac.setpoint_c + half)
            else:
                over = (self.hvac.setpoint_c - half) - t
            a["discomfort_c_h"][h.owners] += np.maximum(over, 0.0) * self.step_h
        if self.water_heaters is not None:
            w = self.water_heaters
            # a shed element comes back on only for a tank that fell below the use temperature
            sp = np.where(self._wh_shed & (w.t_c >= self.wh_params.use_c), -np.inf, self._wh_setpoint_c)
            if left is not None:
                off = (left[w.owners] < self.wh_params.element_kw - 1e-9) & w.would_heat(sp)
                a["load_limited_kwh"][w.owners] += np.where(off, self.wh_params.element_kw * self.step_h, 0.0)
                sp = np.where(off, -np.inf, sp)
            p, short = w.step_kw(w.drawn_l(g * self.tl.physics_step_s), sp)
            out[w.owners] += p
            a["wh_kwh"][w.owners] += p * self.step_h
            a["hot_water_short_kwh"][w.owners] += short
        return out

    # ---- tables ------------------------------------------------------------------------
    def tables(self, *, final: bool = False) -> dict[str, pd.DataFrame]:
        """What has not been forgotten (:meth:`forget`): ``flex``, one row per interval
        played and device owner, and ``ev_sessions``, each session ended. With
        ``final`` (the study's last step played) the last interval is closed too and
        the sessions under way are added (``unmet_kwh`` NaN)."""
        if final and self._k >= 0:
            self._close_interval()
        rows = self._rows
        flex = (pd.DataFrame({c: np.concatenate([r[c] for r in rows]) for c in FLEX_COLUMNS}) if rows
                else pd.DataFrame({c: pd.Series(dtype=("int64" if c == "interval" else
                                                       "object" if c == "participant" else "float64"))
                                   for c in FLEX_COLUMNS}))
        live = final and not self._live_drained
        self._gave_live = live
        sessions = [] if self.ev is None else (self.ev.sessions() if live else list(self.ev.ended))
        sessions = sorted(sessions, key=lambda r: (r["departure_step"], r["owner"]))  # parts merge alike
        ev = pd.DataFrame(
            [{"participant": self.participants[r["owner"]], **{c: r[c] for c in SESSION_COLUMNS[1:]}}
             for r in sessions],
            columns=list(SESSION_COLUMNS),
        ).astype({"arrival_step": "int64", "departure_step": "int64", "need_kwh": "float64",
                  "delivered_kwh": "float64", "unmet_kwh": "float64"})
        dr = pd.DataFrame(self.dr_rows, columns=list(DR_COLUMNS)).astype(
            {"interval": "int64", "requested_kw": "float64", "reduced_kwh": "float64",
             "price_usd_per_kwh": "float64", "credit_usd": "float64", "delivered_kw": "float64",
             "paid_kwh": "float64"})
        for df, col in ((flex, "participant"), (ev, "participant"), (dr, "participant"), (dr, "limit"),
                        (dr, "element")):
            df[col] = df[col].astype(_NAME_DTYPE)
        out = {"flex": flex, "ev_sessions": ev}
        if self.dr_on:
            out["demand_response"] = dr
        if self.cleared:
            out["flex_bids"] = pd.DataFrame(self.bid_rows, columns=list(FLEX_BIDS_COLUMNS)).astype(
                {"interval": "int64", "bid_kwh": "float64", "own_kwh": "float64", "bid_usd_per_kwh": "float64",
                 "paid_usd_per_kwh": "float64", "runs": "bool", "planned_kwh": "float64",
                 "deferred_kwh": "float64", "over_envelope_kwh": "float64"})
            for col in ("participant", "device"):
                out["flex_bids"][col] = out["flex_bids"][col].astype(_NAME_DTYPE)
        return out

    def forget(self) -> None:
        """Forget the rows :meth:`tables` gave (a drain)."""
        self._rows = []
        self.dr_rows = []
        self.bid_rows = []
        self._live_drained = self._live_drained or self._gave_live
        if self.ev is not None:
            self.ev.ended.clear()
