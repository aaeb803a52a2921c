"""Electric vehicles charged at home: one session a day, uncontrolled or smart.

Sessions (:func:`session`)
    A car comes home on local day ``d`` at ``arrival_h`` ~ N(``arrival_h_mean``,
    ``arrival_h_sd``) [h after local midnight], clipped to three standard deviations
    and to the day, and leaves on day ``d + 1`` at ``departure_h`` ~
    N(``departure_h_mean``, ``departure_h_sd``) (clipped likewise, and at least
    ``MIN_PLUGGED_H`` after the arrival). It needs the energy of the day's driving at
    the battery: ``km x consumption_kwh_per_km`` with ``km`` ~ lognormal (median
    ``daily_km_median``, sd of log ``daily_km_sigma``), at most ``max_need_fraction x
    battery_kwh``; from the grid that is ``need / efficiency``. The defaults (arrival
    18:00 +- 1.5 h, departure 07:30 +- 1 h, median 40 km a day at 0.18 kWh/km) are
    hand-set to the shape of US weekday home-charging sessions (evening arrivals,
    morning departures, a daily distance of the order of the ~30 miles a US
    household vehicle drives a day in the 2017 National Household Travel Survey);
    they are assumptions, not a fit. Draws are keyed by (seed, "ev", prosumer index,
    local day ordinal), so a car's sessions do not depend on the other cars, the
    study's start or the order of calls.

Steps
    A session plugs in at the first physics step starting at or after the arrival and
    unplugs at the first step starting at or after the departure. While plugged, the
    charger draws ``min(command, charger_kw, what is still needed / step)`` [kW].
    Energy not delivered by the departure is the session's ``unmet_kwh`` (the
    charging-deadline cost, :class:`EvFleet.sessions`). A session already under way at
    the study's start is taken to have charged at full power since its arrival; its
    ``need_kwh`` is what it still needed at the start.

Control (:meth:`EvFleet.plan_kw`)
    ``uncontrolled``: full power whenever plugged and not full. ``smart``: for the
    interval about to start, the car charges at full power if the interval is among
    the cheapest intervals (by the prices it expects, ties to the earlier) that
    together can deliver what it still needs before the departure it knows; it also
    charges at full power when the intervals left (this one excluded) could no longer
    deliver it (no slack: least-laxity rule). A car knows its departure once plugged
    in (the driver sets it); an arrival within an interval is not foreseen.

Units: kW (> 0 = consumption), kWh, hours [h], steps of the study's physics step.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from federates.common.config import EvConfig
from federates.common.rng import stream

MIN_PLUGGED_H = 1.0  # [h] shortest session
CHARGER_KW = {"level1": 1.44, "level2": 7.2}  # 120 V x 12 A; 240 V x 30 A (SAE J1772)
_CLIP_SD = 3.0


@dataclass(frozen=True)
class EvParams:
    """The fleet's common parameters (plain numbers: the config is read at the edge)."""

    charger_kw: float
    battery_kwh: float
    efficiency: float
    consumption_kwh_per_km: float
    daily_km_median: float
    daily_km_sigma: float
    max_need_fraction: float
    arrival_h_mean: float
    arrival_h_sd: float
    departure_h_mean: float
    departure_h_sd: float
    smart: bool

    @classmethod
    def of(cls, ev: EvConfig) -> EvParams:
        return cls(
            charger_kw=ev.charger_kw if ev.charger_kw is not None else CHARGER_KW[ev.charger],
            battery_kwh=ev.battery_kwh, efficiency=ev.efficiency,
            consumption_kwh_per_km=ev.consumption_kwh_per_km, daily_km_median=ev.daily_km_median,
            daily_km_sigma=ev.daily_km_sigma, max_need_fraction=ev.max_need_fraction,
            arrival_h_mean=ev.arrival_h_mean, arrival_h_sd=ev.arrival_h_sd,
            departure_h_mean=ev.departure_h_mean, departure_h_sd=ev.departure_h_sd,
            smart=ev.control == "smart",
        )


@dataclass(frozen=True)
class Session:
    """One stay at home: ``arrival_h`` on local day ``day`` and ``departure_h`` [h after
    that day's local midnight, > 24: the next day], ``need_kwh`` from the grid."""

    day: dt.date
    arrival_h: float
    departure_h: float
    need_kwh: float


def _clipped_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    x = mean + sd * float(rng.standard_normal())
    return float(np.clip(x, max(lo, mean - _CLIP_SD * sd), min(hi, mean + _CLIP_SD * sd)))


def session(p: EvParams, seed: int, index: int, day: dt.date) -> Session:
    """The session of prosumer ``index``'s car that starts on local ``day``."""
    rng = stream(seed, "ev", index, day.toordinal())
    arr = _clipped_normal(rng, p.arrival_h_mean, p.arrival_h_sd, 0.0, 24.0 - 1e-9)
    dep = 24.0 + _clipped_normal(rng, p.departure_h_mean, p.departure_h_sd, 0.0, 24.0 - 1e-9)
    dep = max(dep, arr + MIN_PLUGGED_H)
    km = p.daily_km_median * float(np.exp(p.daily_km_sigma * rng.standard_normal()))
    need_at_battery = min(km * p.consumption_kwh_per_km, p.max_need_fraction * p.battery_kwh)
    return Session(day, arr, dep, need_at_battery / p.efficiency)


class EvFleet:
    """The cars of the prosumers at positions ``owners`` (site order) of a study whose
    first physics step starts at ``start`` (tz-aware, local) and lasts ``step_s`` [s].

    State per car: plugged, the step it leaves, the energy still needed [kWh from the
    grid]. :meth:`step` moves it one physics step; :meth:`plan_kw` is the command of
    the interval about to start; :meth:`sessions` the record of every session that
    ended (and the ones under way, at the end)."""

    def __init__(self, params: EvParams, owners: np.ndarray, indices: np.ndarray, *,
                 start: pd.Timestamp, step_s: float, seed: int) -> None:
        self.p, self.seed = params, int(seed)
        self.owners = np.asarray(owners, dtype=int)
        self.indices = np.asarray(indices, dtype=int)
        self.start, self.step_s, self.step_h = start, float(step_s), float(step_s) / 3600.0
        self.tz = start.tz
        n = len(self.owners)
        self.plugged = np.zeros(n, dtype=bool)
        self.leave_step = np.full(n, -1, dtype=np.int64)
        self.need_kwh = np.zeros(n)
        self._cur: list[Session | None] = [None] * n
        self._arrive_step = np.zeros(n, dtype=np.int64)
        self._delivered = np.zeros(n)
        self._need0 = np.zeros(n)  # what the session needed when it plugged in (or at the start)
        self._next: list[Session] = []
        self._next_step = np.zeros(n, dtype=np.int64)
        #: the sessions that ended, in order (the caller clears it when it has them)
        self.ended: list[dict] = []
        first_day = start.tz_convert(self.tz).date() - dt.timedelta(days=1)
        for j in range(n):
            s = session(self.p, self.seed, int(self.indices[j]), first_day)
            a, d = self._steps_of(s)
            if a < 0 < d:  # under way at the start: charged at full power since it came
                charged = min(s.need_kwh, self.p.charger_kw * (-a) * self.step_h)
                self._plug(j, s, a, d, s.need_kwh - charged)
                nxt = session(self.p, self.seed, int(self.indices[j]), s.day + dt.timedelta(days=1))
            elif d <= 0:
                nxt = session(self.p, self.seed, int(self.indices[j]), s.day + dt.timedelta(days=1))
            else:
                nxt = s
            self._next.append(nxt)
            self._next_step[j] = self._steps_of(nxt)[0]

    # ---- time --------------------------------------------------------------------
    def _step_at(self, day: dt.date, hours: float) -> int:
        """First step starting at or after ``hours`` after ``day``'s local midnight."""
        midnight = pd.Timestamp(day).tz_localize(self.tz, ambiguous=False, nonexistent="shift_forward")
        t = midnight + pd.Timedelta(hours=hours)
        return int(np.ceil((t - self.start).total_seconds() / self.step_s - 1e-9))

    def _steps_of(self, s: Session) -> tuple[int, int]:
        return self._step_at(s.day, s.arrival_h), self._step_at(s.day, s.departure_h)

    def _plug(self, j: int, s: Session, a: int, d: int, need_kwh: float) -> None:
        self.plugged[j] = True
        self._cur[j] = s
        self._arrive_step[j] = a
        self.leave_step[j] = d
        self.need_kwh[j] = need_kwh
        self._need0[j] = need_kwh
        self._delivered[j] = 0.0

    def _unplug(self, j: int) -> None:
        s = self._cur[j]
        self.ended.append(self._record(j, s, ended=True))
        self.plugged[j] = False
        self._cur[j] = None
        self.need_kwh[j] = 0.0

    def _record(self, j: int, s: Session, *, ended: bool) -> dict:
        return {
            "owner": int(self.owners[j]), "arrival_step": int(self._arrive_step[j]),
            "departure_step": int(self.leave_step[j]), "need_kwh": float(self._need0[j]),
            "delivered_kwh": float(self._delivered[j]),
            "unmet_kwh": float(self.need_kwh[j]) if ended else float("nan"),
            "ended": ended,
        }

    # ---- the physics ---------------------------------------------------------------
    def begin_step(self, g: int) -> None:
        """Departures and arrivals at the start of step ``g`` (call once per step, in order)."""
        for j in np.flatnonzero(self.plugged & (self.leave_step <= g)):
            self._unplug(int(j))
        for j in np.flatnonzero(self._next_step <= g):
            j = int(j)
            if self.plugged[j]:  # the next session cannot start before this one ends
                continue
            s = self._next[j]
            a, d = self._steps_of(s)
            if d > g:
                self._plug(j, s, a, d, s.need_kwh)
            else:  # came and went within a step (cannot happen with sessions >= 1 h)
                self.ended.append({"owner": int(self.owners[j]), "arrival_step": a, "departure_step": d,
                                      "need_kwh": s.need_kwh, "delivered_kwh": 0.0,
                                      "unmet_kwh": s.need_kwh, "ended": True})
            nxt = session(self.p, self.seed, int(self.indices[j]), s.day + dt.timedelta(days=1))
            self._next[j] = nxt
            self._next_step[j] = self._steps_of(nxt)[0]

    def would_draw_kw(self, command_kw: np.ndarray) -> np.ndarray:
        """What :meth:`step_kw` would draw at ``command_kw`` [kW] per car, the state left
        as it is."""
        cap = np.minimum(self.need_kwh / self.step_h, self.p.charger_kw)
        return np.where(self.plugged, np.clip(command_kw, 0.0, cap), 0.0)

    def step_kw(self, command_kw: np.ndarray) -> np.ndarray:
        """Charge every car for one step at ``command_kw`` [kW], within its charger and
        what it still needs; the power drawn [kW] per car."""
        cap = np.minimum(self.need_kwh / self.step_h, self.p.charger_kw)
        p_kw = np.where(self.plugged, np.clip(command_kw, 0.0, cap), 0.0)
        e = p_kw * self.step_h
        self.need_kwh = np.maximum(self.need_kwh - e, 0.0)
        self._delivered += e
        return p_kw

    # ---- control -------------------------------------------------------------------
    def plan_kw(self, g0: int, steps: int, expected_usd_per_kwh) -> np.ndarray:
        """The command [kW] per car for the interval of ``steps`` steps from ``g0``.

        ``expected_usd_per_kwh(g_from, n)``: the prices [USD/kWh] the cars expect for
        ``n`` consecutive intervals of ``steps`` steps from step ``g_from`` (used by
        ``smart`` cars only)."""
        if not self.p.smart:  # full power, also for a car that comes home within the interval
            return np.full(len(self.owners), self.p.charger_kw)
        full = np.where(self.plugged & (self.need_kwh > 0.0), self.p.charger_kw, 0.0)
        out = np.zeros_like(full)
        per_interval_kwh = self.p.charger_kw * steps * self.step_h
        for j in np.flatnonzero(full > 0.0):
            left = int(self.leave_step[j]) - g0  # steps until it leaves
            n_int = max(int(np.ceil(left / steps)), 1)
            # what each interval until the departure can deliver (the last one may be partial)
            room = np.full(n_int, per_interval_kwh)
            room[-1] = self.p.charger_kw * (left - (n_int - 1) * steps) * self.step_h if left > 0 else 0.0
            need = float(self.need_kwh[j])
            if room[1:].sum() < need - 1e-9:  # no slack: charge now
                out[j] = self.p.charger_kw
                continue
            prices = np.asarray(expected_usd_per_kwh(g0, n_int), dtype=float)
            order = np.lexsort((np.arange(n_int), prices))  # cheapest first, ties to the earlier
            covered, chosen = 0.0, set()
            for i in order:
                if covered >= need - 1e-9:
                    break
                if room[i] > 0.0:
                    chosen.add(int(i))
                    covered += room[i]
            out[j] = self.p.charger_kw if 0 in chosen else 0.0
        return out

    def threshold_usd_per_kwh(self, g0: int, steps: int, expected_usd_per_kwh) -> np.ndarray:
        """What each car is willing to pay [USD/kWh] for charging in the interval of
        ``steps`` steps from ``g0`` (``prosumers.flex_dispatch: cleared``): the dearest
        expected price among the cheapest intervals that together deliver what it still
        needs before its departure (the choice of :meth:`plan_kw`), so the bid rises as
        the departure nears and the intervals left grow fewer; +inf with no slack (the
        intervals after this one could no longer deliver it: it must charge now); NaN
        for a car not plugged in or full."""
        out = np.full(len(self.owners), np.nan)
        per_interval_kwh = self.p.charger_kw * steps * self.step_h
        for j in np.flatnonzero(self.plugged & (self.need_kwh > 0.0)):
            left = int(self.leave_step[j]) - g0
            n_int = max(int(np.ceil(left / steps)), 1)
            room = np.full(n_int, per_interval_kwh)
            room[-1] = self.p.charger_kw * (left - (n_int - 1) * steps) * self.step_h if left > 0 else 0.0
            need = float(self.need_kwh[j])
            if room[1:].sum() < need - 1e-9:
                out[j] = np.inf
                continue
            prices = np.asarray(expected_usd_per_kwh(g0, n_int), dtype=float)
            covered, dearest = 0.0, -np.inf
            for i in np.lexsort((np.arange(n_int), prices)):
                if covered >= need - 1e-9:
                    break
                if room[i] > 0.0:
                    covered += room[i]
                    dearest = max(dearest, float(prices[i]))
            out[j] = dearest
        return out

    def forecast_kw(self, command_kw: np.ndarray, g0: int, steps: int) -> np.ndarray:
        """The mean power [kW] per car over the interval of ``steps`` steps from ``g0``
        under ``command_kw``, as the car can know it now: its current session only (no
        arrival foreseen), until it is full or leaves."""
        home = np.clip(self.leave_step - g0, 0, steps)
        cap_kwh = np.minimum(np.minimum(command_kw, self.p.charger_kw) * home * self.step_h, self.need_kwh)
        return np.where(self.plugged, cap_kwh / (steps * self.step_h), 0.0)

    # ---- record --------------------------------------------------------------------
    def sessions(self) -> list[dict]:
        """Every session that ended (since :attr:`ended` was last cleared), then the ones
        under way (``ended`` False, ``unmet_kwh`` NaN): owner (site position),
        arrival/departure steps (study steps; negative: before the start), need_kwh,
        delivered_kwh, unmet_kwh."""
        live = [self._record(int(j), self._cur[j], ended=False) for j in np.flatnonzero(self.plugged)]
        return [*self.ended, *live]
