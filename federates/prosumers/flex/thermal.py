"""Heat pumps and air conditioners in first-order (RC) houses, on a thermostat or on a
transactive setpoint.

House (:class:`Houses`)
    One thermal node: the indoor air and the building's mass lumped into capacitance
    ``C`` [kWh/degC], coupled to the outdoor air through resistance ``R`` [degC/kW]::

        C dT/dt = (T_out - T) / R + Q_gain + s * Q_unit

    with ``Q_gain`` the internal gains [kW] and ``Q_unit`` the unit's thermal output
    [kW]: ``-rated_kw_th`` cooling, ``+rated_kw_th`` heating, ``s`` 1 while the unit
    runs. Over a physics step the outdoor temperature and ``s`` are held, and the step
    is integrated exactly: ``T' = T_eq + (T - T_eq) exp(-dt / (R C))``, ``T_eq = T_out +
    R (Q_gain + s Q_unit)``. The electric power is ``rated_kw_th / cop`` while running.
    Each house's R and C are drawn uniformly within +-``spread`` of the configured
    values and its start temperature uniformly within the deadband (keyed by the
    prosumer index), so that units do not cycle in step.

Thermostat
    Cooling: the unit starts when ``T > setpoint + deadband/2`` and stops when ``T <
    setpoint - deadband/2`` (heating mirrored), decided at the start of each step.

Transactive setpoint (:func:`setpoint_offset_c`)
    The double-auction HVAC controller of PNNL's Olympic Peninsula demonstration, as
    in TESP (Fuller, Schneider and Chassin, "Analysis of residential demand response
    and double-auction markets", IEEE PES GM 2011): the setpoint of an interval moves
    with the price by ``(price - mean) / (ramp x sd) x band``, the mean and standard
    deviation of the prices of the last 24 h, within ``-band_low_c .. +band_high_c``,
    in the direction that saves energy when the price is high (up for cooling, down
    for heating). The same controller bids ``mean + ramp x sd x (T - setpoint) /
    band`` [USD/kWh] for the unit's power (:func:`bid_price_usd_per_kwh`): the price
    at which it is indifferent to running, recorded beside its decision.

Units: degC, kW, kWh, hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federates.common.config import HvacConfig
from federates.common.rng import stream


@dataclass(frozen=True)
class HvacParams:
    """The units' common parameters (plain numbers: the config is read at the edge)."""

    cooling: bool  # cool, or auto (whose setpoint shift is reckoned as cooling's)
    auto: bool
    heat_setpoint_c: float
    r_c_per_kw: float
    c_kwh_per_c: float
    internal_gain_kw: float
    spread: float
    rated_kw_th: float
    cop: float
    setpoint_c: float
    deadband_c: float
    transactive: bool
    ramp: float
    band_high_c: float
    band_low_c: float

    @classmethod
    def of(cls, h: HvacConfig) -> HvacParams:
        return cls(cooling=h.mode in ("cool", "auto"), auto=h.mode == "auto", heat_setpoint_c=h.heat_setpoint_c,
                   r_c_per_kw=h.r_c_per_kw, c_kwh_per_c=h.c_kwh_per_c,
                   internal_gain_kw=h.internal_gain_kw, spread=h.spread, rated_kw_th=h.rated_kw_th,
                   cop=h.cop, setpoint_c=h.setpoint_c, deadband_c=h.deadband_c,
                   transactive=h.control == "transactive", ramp=h.ramp,
                   band_high_c=h.band_high_c, band_low_c=h.band_low_c)

    @property
    def electric_kw(self) -> float:
        return self.rated_kw_th / self.cop


def setpoint_offset_c(price: float, mean: float, sd: float, p: HvacParams) -> float:
    """How far [degC] the setpoint moves at ``price`` [USD/kWh] against the recent
    ``mean`` and ``sd`` [USD/kWh]: 0 with no spread of prices."""
    if not np.isfinite(sd) or sd <= 0.0 or not np.isfinite(price):
        return 0.0
    z = (price - mean) / (p.ramp * sd)
    band = p.band_high_c if z > 0 else p.band_low_c
    shift = float(np.clip(z * band, -p.band_low_c, p.band_high_c))
    return shift if p.cooling else -shift


def bid_price_usd_per_kwh(t_in_c: np.ndarray, setpoint_c: float, mean: float, sd: float,
                          p: HvacParams, heat_setpoint_c: np.ndarray | float | None = None) -> np.ndarray:
    """The controller's bid [USD/kWh] for running now: the recent mean price, plus
    ``ramp x sd`` per ``band`` degC the house is on the uncomfortable side of the
    setpoint (warmer when cooling, colder when heating; ``auto``: of the nearer of its
    two setpoints, ``heat_setpoint_c`` the heating one)."""
    t = np.asarray(t_in_c, dtype=float)
    if p.auto:
        dev = np.maximum(t - setpoint_c, heat_setpoint_c - t)
    else:
        dev = (t - setpoint_c) if p.cooling else (setpoint_c - t)
    band = np.where(dev > 0, p.band_high_c, p.band_low_c)
    band = np.where(band > 0, band, 1.0)
    sd = sd if np.isfinite(sd) else 0.0
    return mean + p.ramp * sd * dev / band


class Houses:
    """The houses at site positions ``owners`` (prosumer ``indices`` key their draws)."""

    def __init__(self, params: HvacParams, owners: np.ndarray, indices: np.ndarray, *, seed: int) -> None:
        self.p = params
        self.owners = np.asarray(owners, dtype=int)
        n = len(self.owners)
        u = np.array([stream(seed, "hvac_house", int(i)).random(3) for i in indices]).reshape(n, 3)
        lo, hi = 1.0 - params.spread, 1.0 + params.spread
        self.r_c_per_kw = params.r_c_per_kw * (lo + (hi - lo) * u[:, 0])
        self.c_kwh_per_c = params.c_kwh_per_c * (lo + (hi - lo) * u[:, 1])
        self.t_in_c = params.setpoint_c + params.deadband_c * (u[:, 2] - 0.5)
        self.running = np.zeros(n, dtype=bool)
        self.heating = np.zeros(n, dtype=bool)  # auto: which way the unit runs
        self.sign = -1.0 if params.cooling else 1.0

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.t_in_c.copy(), self.running.copy(), self.heating.copy()

    def restore(self, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.t_in_c, self.running, self.heating = state[0].copy(), state[1].copy(), state[2].copy()

    def step_kw(self, t_out_c: float, setpoint_c: np.ndarray | float, step_h: float,
                heat_setpoint_c: np.ndarray | float | None = None) -> np.ndarray:
        """One physics step at outdoor ``t_out_c`` [degC] and ``setpoint_c`` [degC]: the
        thermostat decides, the house moves; the electric power [kW] per unit. ``auto``:
        ``setpoint_c`` is the cooling setpoint, ``heat_setpoint_c`` the heating one."""
        half = 0.5 * self.p.deadband_c
        t, sp = self.t_in_c, np.broadcast_to(np.asarray(setpoint_c, dtype=float), self.t_in_c.shape)
        if self.p.auto:
            return self._step_auto(t_out_c, sp, heat_setpoint_c, half, step_h)
        if self.p.cooling:
            start, stop = t > sp + half, t < sp - half
        else:
            start, stop = t < sp - half, t > sp + half
        self.running = (self.running | start) & ~stop
        q_kw = self.p.internal_gain_kw + self.sign * self.p.rated_kw_th * self.running
        t_eq = t_out_c + self.r_c_per_kw * q_kw
        self.t_in_c = t_eq + (t - t_eq) * np.exp(-step_h / (self.r_c_per_kw * self.c_kwh_per_c))
        return np.where(self.running, self.p.electric_kw, 0.0)

    def would_run(self, setpoint_c: np.ndarray | float, heat_setpoint_c: np.ndarray | float | None = None
                  ) -> np.ndarray:
        """Whether each unit's thermostat would run it in the next :meth:`step_kw` at these
        setpoints [degC] (the state left as it is)."""
        half = 0.5 * self.p.deadband_c
        t, sp = self.t_in_c, np.broadcast_to(np.asarray(setpoint_c, dtype=float), self.t_in_c.shape)
        if self.p.auto:
            sp_heat = np.broadcast_to(np.asarray(heat_setpoint_c, dtype=float), t.shape)
            cooling = ((self.running & ~self.heating) | (t > sp + half)) & ~(t < sp - half)
            heating = ((self.running & self.heating) | (t < sp_heat - half)) & ~(t > sp_heat + half) & ~cooling
            return cooling | heating
        if self.p.cooling:
            return (self.running | (t > sp + half)) & ~(t < sp - half)
        return (self.running | (t < sp - half)) & ~(t > sp + half)

    def _step_auto(self, t_out_c: float, sp_cool: np.ndarray, sp_heat, half: float, step_h: float) -> np.ndarray:
        """``step_kw`` of a heat pump that heats and cools: two thermostats, one unit
        (a heating and a cooling band that do not overlap, HvacConfig checks it)."""
        t = self.t_in_c
        sp_heat = np.broadcast_to(np.asarray(sp_heat, dtype=float), t.shape)
        cooling = ((self.running & ~self.heating) | (t > sp_cool + half)) & ~(t < sp_cool - half)
        heating = ((self.running & self.heating) | (t < sp_heat - half)) & ~(t > sp_heat + half) & ~cooling
        self.running, self.heating = cooling | heating, heating
        q_kw = self.p.internal_gain_kw + self.p.rated_kw_th * (heating.astype(float) - cooling)
        t_eq = t_out_c + self.r_c_per_kw * q_kw
        self.t_in_c = t_eq + (t - t_eq) * np.exp(-step_h / (self.r_c_per_kw * self.c_kwh_per_c))
        return np.where(self.running, self.p.electric_kw, 0.0)

    def preview_kw(self, t_out_c: np.ndarray, setpoint_c: np.ndarray | float, step_h: float,
                   heat_setpoint_c: np.ndarray | float | None = None) -> np.ndarray:
        """The mean electric power [kW] per unit over the steps at outdoor temperatures
        ``t_out_c`` [degC] (one per step), from the present state, which is left as it
        is (the forecast of an interval with a known weather)."""
        saved = self.state()
        total = np.zeros(len(self.owners))
        for t_out in t_out_c:
            total += self.step_kw(float(t_out), setpoint_c, step_h, heat_setpoint_c)
        self.restore(saved)
        return total / max(len(t_out_c), 1)
