"""Electric resistance water heaters: a one-node (fully mixed) tank, hot-water draws, a
thermostat, and a setpoint the price or a demand-response call can move.

Tank (:class:`WaterHeaters`)
    ``C dT/dt = P s - UA (T - T_amb) - m c (T - T_in)``: capacitance ``C = V x 1.1628
    Wh/(L K)`` (water), the element's ``element_kw`` while the thermostat has it on
    (``s``), standby loss ``UA`` [W/K] to the room at ``ambient_c``, and the draws
    ``m c`` (the volume drawn in the step, replaced by mains water at ``inlet_c``). Over a
    physics step the draw flow and ``s`` are held and the step is integrated exactly
    (a linear ODE: ``T' = T_inf + (T - T_inf) exp(-b dt)``). A one-node tank ignores
    stratification: it is the simplest model that keeps the energy balance (the
    element's energy = the energy drawn + standby losses + the change stored).

Thermostat
    On below ``setpoint - deadband``, off at the setpoint, decided at the start of each
    step.

Draws (:func:`draw_events`)
    Each home's day: a Poisson number of draws with mean ``daily_draw_l / mean volume``,
    each a volume ~ lognormal (median ``DRAW_MEDIAN_L``, sd of log ``DRAW_SIGMA``) at
    ``DRAW_FLOW_L_PER_MIN``, starting at a time from a morning (N(07:00, 1 h)) or an
    evening (N(19:30, 1.5 h)) peak, half each. Hand-set to the shape of US residential
    hot-water use (morning and evening peaks, ~200 L a day for a household, the order of
    the DOE test procedure's 55 gallons a day for a medium draw pattern); not a fit.
    Keyed by (seed, "wh_draws", prosumer index, local day).

Comfort: the hot water a draw lacked below ``use_c`` is counted as energy
``V x 1.1628 Wh/(L K) x max(use_c - T, 0)`` (the ``flex.hot_water_short_kwh`` column).

Units: degC, kW, kWh, litres, hours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from federates.common.config import WaterHeaterConfig
from federates.common.rng import stream

KWH_PER_L_K = 4.186 / 3600.0  # water: 4.186 kJ/(kg K), 1 kg/L
DRAW_MEDIAN_L = 12.0
DRAW_SIGMA = 0.8
DRAW_FLOW_L_PER_MIN = 6.0
_PEAKS = ((7.0, 1.0), (19.5, 1.5))  # (mean [h], sd [h]) of the morning and evening draws


@dataclass(frozen=True)
class WaterHeaterParams:
    tank_l: float
    element_kw: float
    ua_w_per_k: float
    setpoint_c: float
    deadband_c: float
    inlet_c: float
    ambient_c: float
    use_c: float
    daily_draw_l: float
    transactive: bool
    ramp: float
    band_c: float

    @classmethod
    def of(cls, w: WaterHeaterConfig) -> WaterHeaterParams:
        return cls(tank_l=w.tank_l, element_kw=w.element_kw, ua_w_per_k=w.ua_w_per_k, setpoint_c=w.setpoint_c,
                   deadband_c=w.deadband_c, inlet_c=w.inlet_c, ambient_c=w.ambient_c, use_c=w.use_c,
                   daily_draw_l=w.daily_draw_l, transactive=w.control == "transactive", ramp=w.ramp,
                   band_c=w.band_c)


def draw_events(p: WaterHeaterParams, seed: int, index: int, day: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """(start hours after local midnight, volumes [L]) of home ``index``'s draws on ``day``."""
    rng = stream(seed, "wh_draws", index, day.toordinal())
    mean_l = DRAW_MEDIAN_L * np.exp(DRAW_SIGMA**2 / 2.0)
    n = int(rng.poisson(p.daily_draw_l / mean_l))
    peak = rng.integers(0, 2, n)
    mu = np.array([_PEAKS[i][0] for i in peak])
    sd = np.array([_PEAKS[i][1] for i in peak])
    hours = np.clip(mu + sd * rng.standard_normal(n), 0.0, 24.0 - 1e-6)
    volumes = DRAW_MEDIAN_L * np.exp(DRAW_SIGMA * rng.standard_normal(n))
    return hours, volumes


class WaterHeaters:
    """The tanks of the prosumers at site positions ``owners``."""

    def __init__(self, params: WaterHeaterParams, owners: np.ndarray, indices: np.ndarray, *,
                 start: pd.Timestamp, step_s: float, seed: int) -> None:
        self.p, self.seed = params, int(seed)
        self.owners = np.asarray(owners, dtype=int)
        self.indices = np.asarray(indices, dtype=int)
        self.start, self.step_s = start, float(step_s)
        n = len(self.owners)
        u = np.array([stream(seed, "wh_tank", int(i)).random() for i in self.indices])
        self.t_c = params.setpoint_c - params.deadband_c * u  # start within the deadband
        self.on = np.zeros(n, dtype=bool)
        self.c_kwh_per_k = params.tank_l * KWH_PER_L_K
        self._day: dt.date | None = None
        #: (start, end) [s of study time] of each tank's draws of this day and the day
        #: before, (tanks, most draws), padded with empty draws
        self._starts = self._ends = np.zeros((n, 0))

    def _load_days(self, t_s: float) -> None:
        """The draws of the local day of study time ``t_s`` and of the day before (a draw
        may run past midnight)."""
        day = (self.start + pd.Timedelta(seconds=t_s)).date()
        if day == self._day:
            return
        self._day = day
        flow = DRAW_FLOW_L_PER_MIN / 60.0
        days = (day - dt.timedelta(days=1), day)
        midnight_s = [(pd.Timestamp(d).tz_localize(self.start.tz, ambiguous=False, nonexistent="shift_forward")
                       - self.start).total_seconds() for d in days]
        per_tank = []
        for i in self.indices:
            s, e = [], []
            for d, m in zip(days, midnight_s, strict=True):
                h, v = draw_events(self.p, self.seed, int(i), d)
                s.append(m + h * 3600.0)
                e.append(m + h * 3600.0 + v / flow)
            per_tank.append((np.concatenate(s), np.concatenate(e)))
        width = max((len(s) for s, _ in per_tank), default=0)
        self._starts = np.zeros((len(per_tank), width))
        self._ends = np.zeros((len(per_tank), width))
        for j, (s, e) in enumerate(per_tank):
            self._starts[j, :len(s)] = s
            self._ends[j, :len(e)] = e

    def drawn_l(self, t_s: float) -> np.ndarray:
        """Litres each tank gives in the step starting at study time ``t_s``."""
        self._load_days(t_s)
        flow = DRAW_FLOW_L_PER_MIN / 60.0
        a, b = t_s, t_s + self.step_s
        overlap_s = np.minimum(self._ends, b) - np.maximum(self._starts, a)
        return flow * np.clip(overlap_s, 0.0, None).sum(axis=1)

    def would_heat(self, setpoint_c: np.ndarray | float) -> np.ndarray:
        """Whether each element would be on in the next :meth:`step_kw` at ``setpoint_c``
        [degC] (the state left as it is)."""
        sp = np.broadcast_to(np.asarray(setpoint_c, dtype=float), self.t_c.shape)
        return (self.on | (self.t_c < sp - self.p.deadband_c)) & ~(self.t_c >= sp)

    def step_kw(self, drawn_l: np.ndarray, setpoint_c: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """One step with ``drawn_l`` [L] drawn: (element power [kW], hot water short [kWh])."""
        p = self.p
        sp = np.broadcast_to(np.asarray(setpoint_c, dtype=float), self.t_c.shape)
        self.on = (self.on | (self.t_c < sp - p.deadband_c)) & ~(self.t_c >= sp)
        short_kwh = drawn_l * KWH_PER_L_K * np.maximum(p.use_c - self.t_c, 0.0)
        dt_h = self.step_s / 3600.0
        ua = p.ua_w_per_k / 1000.0  # kW/K
        mc = drawn_l * KWH_PER_L_K / dt_h  # kW/K
        power = np.where(self.on, p.element_kw, 0.0)
        b = (ua + mc) / self.c_kwh_per_k
        t_inf = (power + ua * p.ambient_c + mc * p.inlet_c) / (ua + mc)
        self.t_c = t_inf + (self.t_c - t_inf) * np.exp(-b * dt_h)
        return power, short_kwh
