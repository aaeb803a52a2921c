"""Household load and rooftop PV profiles at the physics-step resolution (pure functions).

All functions take ``times``: the tz-aware *local* start times of the physics steps (a
regular ``pd.DatetimeIndex``). Each value returned is the **mean over the step**
``[t, t + dt)``; models are evaluated at the step midpoint ``t + dt/2``. Powers are in
kW, ``p_kw >= 0`` (a load consumes, PV produces; the sign convention of
``federates.common.units`` is applied by the caller).

Every random draw comes from :func:`federates.common.rng.stream` keyed by the study seed,
a purpose string and the participant index (and a calendar day where draws are per day),
so a household's profile does not depend on the other households or on call order.

Load model (:func:`household_load_kw`)
    ``P(t) = s * E_base/24 * shape(h(t) - shift) + appliance events(t) + noise(t)``

    * ``shape`` is a smooth, 24 h-periodic daily shape with mean 1: a night base plus
      von Mises (periodic Gaussian) bumps for the morning peak, a small midday shoulder
      and the evening peak. The bump positions and relative heights are hand-set to
      follow the features of the BDEW/VDEW standard household load profile H0 (VDEW,
      "Repräsentative VDEW-Lastprofile", M-28/1999; summer workday): night minimum
      about 0.6x the daily mean around 02:00-04:00, a morning peak of about 1.3x at
      07:00-08:00, a midday shoulder of about 1.15x, and the daily maximum of about
      1.65x in the evening 19:00-21:00 (hourly means of the shape). They are hand-set,
      *not* a fit to the H0 table (see the ``_SHAPE_*`` constants).
    * ``s`` ~ lognormal with mean 1 (sd of log 0.15): per-household level; ``shift`` ~
      N(0, 0.5 h): per-household timing of the routine.
    * Appliance events (kettle, washer, oven, A/C cycling, ...), after the idea of the
      activity-driven model of Richardson et al., "Domestic electricity use: A
      high-resolution energy demand model", Energy and Buildings 42 (2010) 1878-1887:
      starts are a non-homogeneous Poisson process whose rate follows the household's
      daily shape (people switch appliances on when they are active); each event draws
      a power ~ U[1, 3] kW and a duration ~ lognormal (median 20 min, mean ~27 min).
      The rate is set so that events carry ``_APPLIANCE_SHARE`` (30 %) of the expected
      daily energy. Events are drawn per local calendar day (keyed by the date), from
      4 h before the first step, and rasterised exactly (a step gets the energy that
      falls inside it; see :func:`_rasterise` for the rounding over long studies).
    * Noise: white, N(0, (5 % of the smooth part)^2) per step.
    * The expected daily energy is ``daily_kwh`` (exactly for the smooth part over whole
      days; the events lose only the tail of durations > 4 h at the study start); the
      result is clipped at 0 (the noise is 5 %, so clipping practically never binds).

Block generation (:class:`LoadBlocks`, :class:`CloudBlocks`, :func:`sky_state` of a
block): a long study is generated a block of steps at a time, each generator carrying
its state to the next block, with every number bit for bit equal to the whole-study
call (tests/unit/test_prosumers_stream.py).

PV model (:func:`pv_ac_kw`)
    * Clear sky: pvlib Ineichen-Perez with the Linke turbidity from pvlib's bundled
      monthly climatology (``pvlib.clearsky.lookup_linke_turbidity`` reads the
      ``LinkeTurbidities.h5`` shipped inside pvlib: works offline; checked with pvlib
      0.16.1).
    * Transposition to the roof plane with the isotropic sky model
      (``pvlib.irradiance.get_total_irradiance``), albedo 0.2, and the physical
      incidence-angle modifier (``pvlib.iam.physical``) on the beam.
    * Clouds: one weather process per study (stream key ``weather_seed_key``, default
      ``"weather"``), the same for every household. It is a two-state model (sun clear /
      sun obscured) in the spirit of the stochastic two-state solar irradiance model of
      Morf, Solar Energy 85 (2011) 1899-1912: the sun is obscured while a latent
      stationary Gaussian process exceeds the threshold
      ``Phi^-1(1 - cloudiness)``, so the sun is obscured a fraction ``cloudiness`` of
      the time and cloud passages last minutes. The latent process is an AR(1) (time
      constant 10 min) smoothed by a first-order low-pass (2 min), so its threshold
      crossings happen at a finite rate that hardly depends on the step length (an
      unsmoothed AR(1) would flicker more at shorter steps): at ``cloudiness = 0.5`` a
      cloud passage and a clear spell last about 14 min each on average. While
      obscured, the clear-sky index is ``clip(0.35 + 0.12 z2, 0.1, 0.7)`` with a second
      AR(1) ``z2`` (time constant 5 min); while clear it is 1. The clear-sky index therefore lies in [0.1, 1] and its
      mean is about ``1 - 0.65 * cloudiness`` (0: clear sky; 1: overcast all day). It
      scales the plane-of-array irradiance (all components alike, a simplification).
    * Cell temperature: SAPM model (``pvlib.temperature.sapm_cell``,
      "open_rack_glass_polymer") plus 4 K for a stand-off roof mount (the difference of
      the PVWatts v5 INOCT of roof-mount and open-rack arrays, 49 vs 45 degC); air
      temperature a fixed cosine cycle 26-31 degC (coolest 02:00, warmest 14:00; about
      San Juan in June), wind 2 m/s; with ``site.weather.source: file`` the file's
      irradiance, air temperature and wind replace the clear sky, the clouds and these
      (``federates/prosumers/weather.py``).
    * DC: ``pvlib.pvsystem.pvwatts_dc`` (gamma -0.37 %/K) times (1 - 14 %) PVWatts
      default system losses (Dobos, "PVWatts Version 5 Manual", NREL/TP-6A20-62641,
      2014). AC: ``pvlib.inverter.pvwatts`` with nominal efficiency 0.96, clipped at the
      inverter rating (unity power factor: kVA = kW).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pvlib
from scipy.signal import lfilter
from scipy.special import ndtri

from federates.common.config import SiteConfig
from federates.common.rng import stream

# ---- load model parameters -------------------------------------------------------
_SHAPE_NIGHT_BASE = 0.28  # constant part of the shape (before normalising to mean 1)
# (centre [h], height, concentration kappa) of the periodic bumps
_SHAPE_BUMPS: tuple[tuple[float, float, float], ...] = (
    (7.5, 0.35, 8.0),  # morning peak
    (12.5, 0.30, 4.0),  # midday shoulder
    (20.3, 0.55, 5.0),  # evening peak
)
_LOAD_SCALE_SIGMA = 0.15  # sd of log of the per-household level
_LOAD_SHIFT_SD_H = 0.5  # sd of the per-household shift of the routine [h]
_APPLIANCE_SHARE = 0.30  # share of expected daily energy in appliance events
_APPLIANCE_P_KW = (1.0, 3.0)  # uniform range of event power [kW]
_APPLIANCE_DUR_MEDIAN_H = 20.0 / 60.0  # median event duration [h]
_APPLIANCE_DUR_SIGMA = 0.75  # sd of log of the event duration
_APPLIANCE_LEAD_H = 4.0  # events are drawn from this long before the first step [h]
_NOISE_REL_SD = 0.05  # sd of the white noise relative to the smooth part

# ---- PV model parameters ---------------------------------------------------------
PV_TILT_DEG = 15.0  # nominal roof tilt [deg]
PV_AZIMUTH_DEG = 180.0  # nominal roof azimuth [deg, 180 = south]
_PV_TILT_RANGE_DEG = (10.0, 20.0)  # seeded per household
_PV_AZIMUTH_RANGE_DEG = (150.0, 210.0)  # seeded per household
_ALBEDO = 0.2
_GAMMA_PDC_PER_K = -0.0037  # power temperature coefficient [1/K]
_SYSTEM_LOSSES = 0.14  # PVWatts v5 default system losses [-]
INVERTER_ETA_NOM = 0.96  # PVWatts nominal inverter efficiency [-]
_TEMP_AIR_MEAN_C = 28.5
_TEMP_AIR_AMPL_C = 2.5
_TEMP_AIR_PEAK_H = 14.0
_WIND_M_PER_S = 2.0
_ROOF_MOUNT_EXTRA_K = 4.0  # roof mount vs open rack [K]
_CLOUD_TAU_S = 10 * 60.0  # time constant of the cloud-state process [s]
_CLOUD_SMOOTH_S = 2 * 60.0  # smoothing time constant of the cloud-state process [s]
_CLOUD_DEPTH_TAU_S = 5 * 60.0  # time constant of the in-cloud clear-sky index [s]
_CLOUD_KT_MEAN = 0.35
_CLOUD_KT_SD = 0.12
KT_MIN = 0.1  # smallest clear-sky index [-]
_CLOUD_KT_RANGE = (KT_MIN, 0.7)


# ---- time helpers ----------------------------------------------------------------
def step_seconds(times: pd.DatetimeIndex) -> float:
    """Length of one step [s] of a regular index (60 s if it has a single entry)."""
    if len(times) < 2:
        return 60.0
    d = np.asarray((times[1:] - times[:-1]).total_seconds(), dtype=float)
    if not np.allclose(d, d[0]):
        raise ValueError("times must be regularly spaced")
    return float(d[0])


def _check_times(times: pd.DatetimeIndex) -> None:
    if not isinstance(times, pd.DatetimeIndex) or times.tz is None:
        raise ValueError("times must be a tz-aware pandas DatetimeIndex of local step starts")


def _midpoints(times: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return times + pd.Timedelta(seconds=step_seconds(times) / 2.0)


def _local_hours(times: pd.DatetimeIndex) -> np.ndarray:
    """Local clock hour [h, 0..24) of each time."""
    return np.asarray(times.hour + times.minute / 60.0 + times.second / 3600.0, dtype=float)


# ---- load --------------------------------------------------------------------------
def _raw_shape(h: np.ndarray) -> np.ndarray:
    out = np.full_like(h, _SHAPE_NIGHT_BASE, dtype=float)
    for centre, height, kappa in _SHAPE_BUMPS:
        out += height * np.exp(kappa * (np.cos(2 * np.pi * (h - centre) / 24.0) - 1.0))
    return out


_SHAPE_NORM = float(_raw_shape(np.arange(0.0, 24.0, 1.0 / 600.0)).mean())


def daily_shape(h: np.ndarray) -> np.ndarray:
    """Base daily load shape [-] at local hour ``h`` [h]; 24 h-periodic, mean 1 over a day."""
    return _raw_shape(np.asarray(h, dtype=float)) / _SHAPE_NORM


_MINUTE_GRID_H = np.arange(0.0, 24.0, 1.0 / 60.0)  # 1-min grid for the inverse CDF [h]


def _events_per_day(daily_kwh: float | np.ndarray) -> float | np.ndarray:
    """Expected number of appliance events per day [1/day] for ``daily_kwh`` [kWh/day]."""
    mean_p = 0.5 * (_APPLIANCE_P_KW[0] + _APPLIANCE_P_KW[1])
    mean_d = _APPLIANCE_DUR_MEDIAN_H * np.exp(0.5 * _APPLIANCE_DUR_SIGMA**2)
    return _APPLIANCE_SHARE * daily_kwh / (mean_p * mean_d)


def _start_cdf(shift_h: float | np.ndarray) -> np.ndarray:
    """CDF of an event's start over the 1-min grid of a day (column per shift if an array)."""
    h = _MINUTE_GRID_H if np.ndim(shift_h) == 0 else _MINUTE_GRID_H[:, None]
    cdf = np.cumsum(daily_shape(h - shift_h), axis=0)
    cdf /= cdf[-1]
    return cdf


def _day_events(
    events_per_day: float, cdf: np.ndarray, day: int, d0: int, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Appliance events of local day ``day``: start, end [h after day ``d0`` midnight],
    power [kW]; None if the day has none."""
    rng = stream(seed, "load_events", index, int(day))
    n = int(rng.poisson(events_per_day))
    if n == 0:
        return None
    u = rng.random(n)
    t = _MINUTE_GRID_H[np.searchsorted(cdf, u)] + rng.random(n) / 60.0  # [h within the day]
    dur = _APPLIANCE_DUR_MEDIAN_H * np.exp(_APPLIANCE_DUR_SIGMA * rng.standard_normal(n))
    p = rng.uniform(*_APPLIANCE_P_KW, size=n)
    s = (int(day) - d0) * 24.0 + t
    return s, s + dur, p


def _event_rows(
    daily_kwh: float, days: np.ndarray, shift_h: float, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Appliance events of the given local days: start [h after day 0 midnight], end, power [kW]."""
    events_per_day = _events_per_day(daily_kwh)
    cdf = _start_cdf(shift_h)
    starts, ends, powers = [], [], []
    d0 = int(days[0])
    for day in days:
        ev = _day_events(events_per_day, cdf, int(day), d0, seed, index)
        if ev is None:
            continue
        starts.append(ev[0])
        ends.append(ev[1])
        powers.append(ev[2])
    if not starts:
        z = np.zeros(0)
        return z, z, z
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(powers)


def _rasterise(starts: np.ndarray, ends: np.ndarray, powers: np.ndarray, n: int) -> np.ndarray:
    """Mean power [kW] in each of ``n`` unit cells of boxes [start, end) (in cell units).

    Exact: the integral I(x) = sum_e P_e (ramp(x - s_e) - ramp(x - e_e)) is evaluated at
    the cell edges with cumulative sums, and the cell means are its differences. Up to
    rounding, which grows with the number of cells (the integral grows with the study):
    against each event's overlap with each cell computed on its own, at 1-min cells,
    the largest difference is 4e-12 kW on the first day, 3e-9 kW on day 30 and 6e-7 kW
    on day 365 (one household, 18 kWh/day, measured).
    """
    edges = np.arange(n + 1, dtype=float)
    integral = np.zeros(n + 1)
    for pos, sign in ((starts, 1.0), (ends, -1.0)):
        keep = pos < n
        pos, p = pos[keep], sign * powers[keep]
        first = np.clip(np.ceil(pos).astype(np.int64), 0, n)
        s1 = np.zeros(n + 1)
        s2 = np.zeros(n + 1)
        np.add.at(s1, first, p)
        np.add.at(s2, first, p * pos)
        integral += edges * np.cumsum(s1) - np.cumsum(s2)
    return np.diff(integral)


@dataclass(frozen=True)
class _LoadGrid:
    """What the load model needs of ``times``, computed once for many households."""

    n: int
    dt_h: float  # step [h]
    h_mid: np.ndarray  # local hour of each step midpoint [h]
    day_ids: np.ndarray  # local calendar days (days since 1970-01-01) events are drawn for
    offset_h: float  # first step start, in hours after midnight of day_ids[0]


def _load_grid(times: pd.DatetimeIndex) -> _LoadGrid:
    _check_times(times)
    n = len(times)
    if n == 0:
        return _LoadGrid(0, 1.0, np.zeros(0), np.zeros(0, dtype=np.int64), 0.0)
    dt_s = step_seconds(times)
    lead = times[0] - pd.Timedelta(hours=_APPLIANCE_LEAD_H)
    first_day = lead.normalize()
    days = pd.date_range(first_day, times[-1].normalize(), freq="D")
    day_ids = (days.tz_localize(None) - pd.Timestamp("1970-01-01")).days.to_numpy()
    return _LoadGrid(
        n=n,
        dt_h=dt_s / 3600.0,
        h_mid=_local_hours(_midpoints(times)),
        day_ids=day_ids,
        offset_h=(times[0] - first_day).total_seconds() / 3600.0,
    )


def _load_on_grid(daily_kwh: float, grid: _LoadGrid, seed: int, index: int) -> np.ndarray:
    if daily_kwh < 0:
        raise ValueError("daily_kwh must be >= 0")
    if grid.n == 0:
        return np.zeros(0)
    rng = stream(seed, "load_household", index)
    level = float(np.exp(_LOAD_SCALE_SIGMA * rng.standard_normal() - 0.5 * _LOAD_SCALE_SIGMA**2))
    shift_h = float(_LOAD_SHIFT_SD_H * rng.standard_normal())

    smooth = (1.0 - _APPLIANCE_SHARE) * daily_kwh / 24.0 * level * daily_shape(grid.h_mid - shift_h)

    # appliance events per local calendar day, from _APPLIANCE_LEAD_H before the start;
    # hours after the first day's midnight -> step units after the first step (a day is
    # 24 h of local clock: elapsed time differs only across DST changes, ignored)
    s_h, e_h, p_kw = _event_rows(daily_kwh, grid.day_ids, shift_h, seed, index)
    s_cells = (s_h - grid.offset_h) / grid.dt_h
    e_cells = (e_h - grid.offset_h) / grid.dt_h
    keep = e_cells > 0
    events = _rasterise(np.maximum(s_cells[keep], 0.0), e_cells[keep], p_kw[keep], grid.n)

    noise = stream(seed, "load_noise", index).standard_normal(grid.n) * _NOISE_REL_SD * smooth
    return np.maximum(smooth + events + noise, 0.0)


def household_load_kw(
    daily_kwh: float, times: pd.DatetimeIndex, *, seed: int, index: int
) -> np.ndarray:
    """Stochastic household demand [kW] for each step starting at ``times``.

    ``daily_kwh`` [kWh/day] is the expected daily energy; ``times`` tz-aware local step
    starts; the result is the step-mean power [kW, >= 0], deterministic for
    (``seed``, ``index``, ``times``). See the module docstring for the model.
    """
    return _load_on_grid(float(daily_kwh), _load_grid(times), seed, index)


def household_loads_kw(
    daily_kwh: np.ndarray, times: pd.DatetimeIndex, *, seed: int, indices: np.ndarray
) -> np.ndarray:
    """Loads [kW] of many households, shape (len(times), len(indices)); column j is
    ``household_load_kw(daily_kwh[j], times, seed=seed, index=indices[j])``, bit for bit
    (vectorised over households: one :class:`LoadBlocks` block)."""
    _check_times(times)
    if len(times) == 0:
        return np.zeros((0, len(indices)))
    blocks = LoadBlocks(
        daily_kwh, indices, start=times[0], step_s=step_seconds(times), n_steps=len(times), seed=seed
    )
    return blocks.next(times)


def _day_ids(days: pd.DatetimeIndex) -> np.ndarray:
    """Local calendar days as days since 1970-01-01 (as :func:`_load_grid`)."""
    return (days.tz_localize(None) - pd.Timestamp("1970-01-01")).days.to_numpy()


#: households generated together in one vectorised pass of :class:`LoadBlocks`: its
#: temporaries, (block steps x this) floats, stay in cache (1.4x faster than 256)
_HOUSEHOLD_CHUNK = 32


def _rasterise_block(
    starts: np.ndarray, ends: np.ndarray, powers: np.ndarray, cols: np.ndarray, n_cols: int,
    g0: int, g1: int, n: int, sums: np.ndarray,
) -> np.ndarray:
    """Cells ``g0 .. g1-1`` of :func:`_rasterise` over ``n`` cells, for ``n_cols`` columns
    at once (event e belongs to column ``cols[e]``), by the same floating-point operations.

    :func:`_rasterise` adds each event at the edge ``ceil(pos)`` and takes cumulative
    sums over all edges; here only the edges ``g0 < edge <= g1`` (``0 <= edge <= g1`` for
    the first block) take events, and ``sums`` (shape (4, n_cols): the cumulative sums
    of power and power x position of the start and end passes at edge ``g0``, zeros for
    the first block) seeds the sums, so every cumulative sum, the integral at every edge
    and every cell mean equal the whole-study ones bit for bit. ``sums`` is updated in
    place to edge ``g1``. Events of one column must come in the whole-study order.
    """
    nb = g1 - g0
    edges = np.arange(g0, g1 + 1, dtype=float)
    integral = np.zeros((nb + 1, n_cols))
    for q, (pos, sign) in enumerate(((starts, 1.0), (ends, -1.0))):
        keep = pos < n
        pos, p, c = pos[keep], sign * powers[keep], cols[keep]
        first = np.clip(np.ceil(pos).astype(np.int64), 0, n)
        here = (first <= g1) & ((first > g0) | (g0 == 0))
        s1 = np.zeros((nb + 1, n_cols))
        s2 = np.zeros((nb + 1, n_cols))
        s1[0] = sums[2 * q]
        s2[0] = sums[2 * q + 1]
        at = (first[here] - g0, c[here])
        np.add.at(s1, at, p[here])
        np.add.at(s2, at, p[here] * pos[here])
        c1 = np.cumsum(s1, axis=0)
        c2 = np.cumsum(s2, axis=0)
        integral += edges[:, None] * c1 - c2
        sums[2 * q] = c1[-1]
        sums[2 * q + 1] = c2[-1]
    return np.diff(integral, axis=0)


class LoadBlocks:
    """:func:`household_load_kw` of many households over one study of ``n_steps`` steps of
    ``step_s`` [s] from the local time ``start``, generated block by block: consecutive
    runs of steps, in order (:meth:`next`). Every value equals the whole-study call's bit
    for bit, whatever the block boundaries.

    What carries over from block to block, per household: its noise generator (drawn
    sequentially), its appliance events that reach past the block (each local day's
    events are drawn once, by the first block that can contain them), and four running
    sums of the exact rasterisation (see :func:`_rasterise_block`). Memory: O(households),
    independent of the study's length.
    """

    def __init__(
        self, daily_kwh: np.ndarray, indices: np.ndarray, *, start: pd.Timestamp, step_s: float,
        n_steps: int, seed: int,
    ):
        e = np.asarray(daily_kwh, dtype=float)
        idx = np.asarray(indices, dtype=np.int64)
        if e.ndim != 1 or e.shape != idx.shape:
            raise ValueError("daily_kwh and indices must be 1-D of the same length")
        if (e < 0).any():
            raise ValueError("daily_kwh must be >= 0")
        if start.tzinfo is None:
            raise ValueError("start must be a tz-aware local time")
        self.n_households = len(idx)
        self.n_steps = int(n_steps)
        self.step_s = float(step_s)
        self.seed = int(seed)
        self._dt_h = self.step_s / 3600.0
        self._indices = idx
        level = np.empty(len(idx))
        shift_h = np.empty(len(idx))
        for j, i in enumerate(idx):
            rng = stream(seed, "load_household", int(i))
            level[j] = np.exp(_LOAD_SCALE_SIGMA * rng.standard_normal() - 0.5 * _LOAD_SCALE_SIGMA**2)
            shift_h[j] = _LOAD_SHIFT_SD_H * rng.standard_normal()
        self._coef_kw = (1.0 - _APPLIANCE_SHARE) * e / 24.0 * level  # smooth part / shape [kW]
        self._shift_h = shift_h
        self._events_per_day = _events_per_day(e)
        self._noise = [stream(seed, "load_noise", int(i)) for i in idx]
        # the whole-study day grid of _load_grid
        self._first_day = (start - pd.Timedelta(hours=_APPLIANCE_LEAD_H)).normalize()
        self._d0 = int(_day_ids(pd.DatetimeIndex([self._first_day]))[0])
        self._offset_h = (start - self._first_day).total_seconds() / 3600.0
        self._last_day = (start + pd.Timedelta(seconds=self.step_s) * max(self.n_steps - 1, 0)).normalize()
        self._days_drawn = 0  # days whose events are drawn: a prefix of the study's days
        z = np.zeros(0)
        #: per household: events still to be rasterised, start / end [cells from the
        #: study's first step] and power [kW], in whole-study order
        self._carry: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(z, z, z)] * len(idx)
        self._sums = np.zeros((4, len(idx)))
        self._next_step = 0

    @property
    def next_step(self) -> int:
        """First step of the next block."""
        return self._next_step

    def next(self, times: pd.DatetimeIndex) -> np.ndarray:
        """Loads [kW], shape (len(times), households), of the next block: ``times`` are
        the local starts of steps ``next_step .. next_step + len(times) - 1``."""
        _check_times(times)
        nb, n_h = len(times), self.n_households
        g0, g1 = self._next_step, self._next_step + len(times)
        if g1 > self.n_steps:
            raise ValueError(f"block ends at step {g1}, after the study's {self.n_steps} steps")
        out = np.empty((nb, n_h))
        if nb == 0:
            return out
        h_mid = _local_hours(times + pd.Timedelta(seconds=self.step_s / 2.0))
        # days whose events can fall in this block (their midnight is before its end),
        # no later than the whole study's last day
        end = times[-1] + pd.Timedelta(seconds=self.step_s)
        last = min((end - pd.Timedelta(1, "ns")).normalize(), self._last_day)
        day_ids = _day_ids(pd.date_range(self._first_day, last, freq="D"))
        new_days = [int(d) for d in day_ids[self._days_drawn:]]
        self._days_drawn = max(self._days_drawn, len(day_ids))
        for a in range(0, n_h, _HOUSEHOLD_CHUNK):
            b = min(a + _HOUSEHOLD_CHUNK, n_h)
            out[:, a:b] = self._chunk(a, b, h_mid, new_days, g0, g1)
        self._next_step = g1
        return out

    def _chunk(self, a: int, b: int, h_mid: np.ndarray, new_days: list[int], g0: int, g1: int) -> np.ndarray:
        shift_h = self._shift_h[a:b]
        smooth = self._coef_kw[a:b] * daily_shape(h_mid[:, None] - shift_h)
        cdf = _start_cdf(shift_h) if new_days else None
        starts, ends, powers, cols = [], [], [], []
        for c, j in enumerate(range(a, b)):
            parts = [self._carry[j]]
            for day in new_days:
                ev = _day_events(
                    self._events_per_day[j], cdf[:, c], day, self._d0, self.seed, int(self._indices[j])
                )
                if ev is None:
                    continue
                s_cells = (ev[0] - self._offset_h) / self._dt_h
                e_cells = (ev[1] - self._offset_h) / self._dt_h
                keep = e_cells > 0
                parts.append((np.maximum(s_cells[keep], 0.0), e_cells[keep], ev[2][keep]))
            for x, acc in zip(zip(*parts, strict=True), (starts, ends, powers), strict=True):
                acc.append(np.concatenate(x))
            cols.append(np.full(len(starts[-1]), c, dtype=np.int64))
        s, e, p, col = (np.concatenate(x) for x in (starts, ends, powers, cols))
        sums = self._sums[:, a:b].copy()
        events = _rasterise_block(s, e, p, col, b - a, g0, g1, self.n_steps, sums)
        self._sums[:, a:b] = sums
        # carry what a later block still rasterises: a start or an end after edge g1
        n = self.n_steps
        later = ((s < n) & (np.ceil(s) > g1)) | ((e < n) & (np.ceil(e) > g1))
        bounds = np.cumsum([len(x) for x in starts])[:-1]
        for j, s_j, e_j, p_j, k_j in zip(
            range(a, b), *(np.split(x, bounds) for x in (s, e, p, later)), strict=True
        ):
            self._carry[j] = (s_j[k_j], e_j[k_j], p_j[k_j])
        noise = np.empty((b - a, len(h_mid)))
        for c, j in enumerate(range(a, b)):
            noise[c] = self._noise[j].standard_normal(len(h_mid))
        noise = noise.T * _NOISE_REL_SD * smooth
        return np.maximum(smooth + events + noise, 0.0)


# ---- PV ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkyState:
    """Sun position and clear-sky irradiance at the step midpoints.

    ``zenith_deg``, ``azimuth_deg`` apparent solar position [deg]; ``ghi``, ``dni``,
    ``dhi`` irradiance [W/m2] (clear sky here; a weather file's in
    ``federates.prosumers.weather``); ``dni_extra`` [W/m2]; ``temp_air_c`` air
    temperature [degC]; ``wind_m_per_s`` wind speed at 10 m [m/s].
    """

    zenith_deg: np.ndarray
    azimuth_deg: np.ndarray
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    dni_extra: np.ndarray
    temp_air_c: np.ndarray
    wind_m_per_s: np.ndarray


def _location(site: SiteConfig) -> pvlib.location.Location:
    return pvlib.location.Location(
        site.latitude, site.longitude, tz=site.timezone, altitude=site.altitude_m
    )


def sky_state(times: pd.DatetimeIndex, site: SiteConfig, *, step_s: float | None = None) -> SkyState:
    """Sun position and Ineichen clear sky (offline Linke turbidity) at the step midpoints.

    ``step_s`` [s]: the step length (default: from ``times``, 60 s for a single step).
    Every value depends on its own step only, so a block of a study's steps gives the
    same numbers as the whole study."""
    _check_times(times)
    mid = _midpoints(times) if step_s is None else times + pd.Timedelta(seconds=step_s / 2.0)
    loc = _location(site)
    sp = loc.get_solarposition(mid)
    cs = loc.get_clearsky(mid, model="ineichen", solar_position=sp)
    h = _local_hours(mid.tz_convert(site.timezone))
    temp = _TEMP_AIR_MEAN_C + _TEMP_AIR_AMPL_C * np.cos(2 * np.pi * (h - _TEMP_AIR_PEAK_H) / 24.0)
    return SkyState(
        zenith_deg=sp["apparent_zenith"].to_numpy(float),
        azimuth_deg=sp["azimuth"].to_numpy(float),
        ghi=cs["ghi"].to_numpy(float),
        dni=cs["dni"].to_numpy(float),
        dhi=cs["dhi"].to_numpy(float),
        dni_extra=np.asarray(pvlib.irradiance.get_extra_radiation(mid), dtype=float),
        temp_air_c=temp,
        wind_m_per_s=np.full(len(mid), _WIND_M_PER_S),
    )


def clearsky_ghi(times: pd.DatetimeIndex, site: SiteConfig) -> np.ndarray:
    """Clear-sky global horizontal irradiance [W/m2] at each step (Ineichen-Perez,
    Linke turbidity from pvlib's bundled climatology), evaluated at the step midpoints."""
    return sky_state(times, site).ghi


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary Gaussian AR(1) with unit variance and lag-1 correlation ``phi``."""
    eps = rng.standard_normal(n)
    x0 = eps[0]
    eps[0] = 0.0
    return lfilter([np.sqrt(1.0 - phi**2)], [1.0, -phi], eps, zi=[x0])[0]


def _smooth_gauss(rng: np.random.Generator, n: int, dt_s: float, tau1_s: float, tau2_s: float) -> np.ndarray:
    """Stationary, unit-variance smooth Gaussian process sampled every ``dt_s`` [s].

    An AR(1) with time constant ``tau1_s`` passed through a first-order low-pass with
    time constant ``tau2_s`` [s] (a discretised, once-differentiable Gaussian process):
    its level crossings happen at a finite rate, about ``1/(2 pi sqrt(tau1 tau2))`` up-
    crossings of its mean per second (Rice), nearly independent of ``dt_s``.
    """
    phi = np.exp(-dt_s / tau1_s)
    a = np.exp(-dt_s / tau2_s)
    burn = int(np.ceil(8.0 * tau2_s / dt_s))
    x = _ar1(rng, n + burn, phi)
    y = lfilter([1.0 - a], [1.0, -a], x, zi=[a * x[0]])[0]
    var = (1.0 - a) ** 2 * (1.0 + a * phi) / ((1.0 - a * phi) * (1.0 - a**2))
    return y[burn:] / np.sqrt(var)


def clear_sky_index(
    times: pd.DatetimeIndex, *, cloudiness: float, seed: int, weather_seed_key: str = "weather"
) -> np.ndarray:
    """Clear-sky index [-, in [0.1, 1]] of the study's shared weather at each step.

    ``cloudiness`` in [0, 1] is the fraction of time the sun is obscured (0: clear sky);
    the mean index is about ``1 - 0.65 * cloudiness``. Same for every household.
    """
    if not 0.0 <= cloudiness <= 1.0:
        raise ValueError("cloudiness must be in [0, 1]")
    n = len(times)
    if cloudiness == 0.0 or n == 0:
        return np.ones(n)
    dt_s = step_seconds(times)
    z = _smooth_gauss(
        stream(seed, weather_seed_key, "cloud_state"), n, dt_s, _CLOUD_TAU_S, _CLOUD_SMOOTH_S
    )
    obscured = z > ndtri(1.0 - cloudiness) if cloudiness < 1.0 else np.ones(n, dtype=bool)
    z2 = _ar1(stream(seed, weather_seed_key, "cloud_depth"), n, np.exp(-dt_s / _CLOUD_DEPTH_TAU_S))
    kt_cloud = np.clip(_CLOUD_KT_MEAN + _CLOUD_KT_SD * z2, *_CLOUD_KT_RANGE)
    return np.where(obscured, kt_cloud, 1.0)


class CloudBlocks:
    """:func:`clear_sky_index` of one study, generated block by block (consecutive runs
    of steps, in order: :meth:`next`), bit for bit equal to the whole-study call.

    Carried from block to block: the two generators (drawn sequentially), the states of
    the AR(1) filters and of the low-pass (``scipy.signal.lfilter``'s final state is the
    next block's initial state); the burn-in is drawn by the first block only.
    """

    def __init__(self, *, cloudiness: float, step_s: float, seed: int, weather_seed_key: str = "weather"):
        if not 0.0 <= cloudiness <= 1.0:
            raise ValueError("cloudiness must be in [0, 1]")
        self.cloudiness = float(cloudiness)
        self.step_s = float(step_s)
        dt_s = self.step_s
        self._state_rng = stream(seed, weather_seed_key, "cloud_state")
        self._depth_rng = stream(seed, weather_seed_key, "cloud_depth")
        self._phi = np.exp(-dt_s / _CLOUD_TAU_S)
        self._a = np.exp(-dt_s / _CLOUD_SMOOTH_S)
        self._burn = int(np.ceil(8.0 * _CLOUD_SMOOTH_S / dt_s))
        a, phi = self._a, self._phi
        self._var = (1.0 - a) ** 2 * (1.0 + a * phi) / ((1.0 - a * phi) * (1.0 - a**2))
        self._phi_depth = np.exp(-dt_s / _CLOUD_DEPTH_TAU_S)
        #: final filter states (AR(1), low-pass, depth AR(1)); None before the first block
        self._zi: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def next(self, n_steps: int) -> np.ndarray:
        """Clear-sky index [-] of the next ``n_steps`` steps."""
        if self.cloudiness == 0.0 or n_steps == 0:
            return np.ones(n_steps)
        ar = ([np.sqrt(1.0 - self._phi**2)], [1.0, -self._phi])
        lowpass = ([1.0 - self._a], [1.0, -self._a])
        depth = ([np.sqrt(1.0 - self._phi_depth**2)], [1.0, -self._phi_depth])
        if self._zi is None:  # as _smooth_gauss and _ar1: burn-in, stationary start
            eps = self._state_rng.standard_normal(n_steps + self._burn)
            x0 = eps[0]
            eps[0] = 0.0
            x, zi_ar = lfilter(*ar, eps, zi=[x0])
            y, zi_lp = lfilter(*lowpass, x, zi=[self._a * x[0]])
            y = y[self._burn:]
            eps2 = self._depth_rng.standard_normal(n_steps)
            x0 = eps2[0]
            eps2[0] = 0.0
            z2, zi_depth = lfilter(*depth, eps2, zi=[x0])
        else:
            zi_ar, zi_lp, zi_depth = self._zi
            x, zi_ar = lfilter(*ar, self._state_rng.standard_normal(n_steps), zi=zi_ar)
            y, zi_lp = lfilter(*lowpass, x, zi=zi_lp)
            z2, zi_depth = lfilter(*depth, self._depth_rng.standard_normal(n_steps), zi=zi_depth)
        self._zi = (zi_ar, zi_lp, zi_depth)
        z = y / np.sqrt(self._var)
        c = self.cloudiness
        obscured = z > ndtri(1.0 - c) if c < 1.0 else np.ones(n_steps, dtype=bool)
        kt_cloud = np.clip(_CLOUD_KT_MEAN + _CLOUD_KT_SD * z2, *_CLOUD_KT_RANGE)
        return np.where(obscured, kt_cloud, 1.0)


def pv_orientation(seed: int, index: int) -> tuple[float, float]:
    """Seeded roof (tilt [deg], azimuth [deg]) of household ``index``."""
    rng = stream(seed, "pv_orientation", index)
    return float(rng.uniform(*_PV_TILT_RANGE_DEG)), float(rng.uniform(*_PV_AZIMUTH_RANGE_DEG))


#: PV systems computed together by :func:`pv_ac_many_kw`: (steps x this) temporaries stay
#: in cache (1800 systems over a day: 0.35 s instead of 0.5-1.2 s at once; same numbers)
_PV_SYSTEM_CHUNK = 128


def pv_ac_many_kw(
    pv_kwp: np.ndarray,
    inverter_kva: np.ndarray,
    tilt_deg: np.ndarray,
    azimuth_deg: np.ndarray,
    sky: SkyState,
    kt: np.ndarray,
) -> np.ndarray:
    """AC power [kW], shape (steps, systems), of PV systems under a shared sky.

    ``pv_kwp`` DC ratings [kWp]; ``inverter_kva`` AC ratings [kVA] (output clipped there);
    ``tilt_deg``/``azimuth_deg`` roof planes [deg]; ``sky`` from :func:`sky_state`;
    ``kt`` clear-sky index per step [-]. Systems with ``pv_kwp == 0`` give 0. Every
    value depends on its own step and system only.
    """
    pv_kwp = np.asarray(pv_kwp, dtype=float)
    inverter_kva = np.asarray(inverter_kva, dtype=float)
    out = np.zeros((len(sky.ghi), len(pv_kwp)))
    on = np.flatnonzero((pv_kwp > 0) & (inverter_kva > 0))
    tilt_deg = np.asarray(tilt_deg, dtype=float)
    azimuth_deg = np.asarray(azimuth_deg, dtype=float)
    k = np.asarray(kt, dtype=float)[:, None]
    for a in range(0, len(on), _PV_SYSTEM_CHUNK):
        j = on[a:a + _PV_SYSTEM_CHUNK]
        out[:, j] = _pv_ac_kw(pv_kwp[j], inverter_kva[j], tilt_deg[j], azimuth_deg[j], sky, k)
    return out


def _pv_ac_kw(
    pv_kwp: np.ndarray, inverter_kva: np.ndarray, tilt_deg: np.ndarray, azimuth_deg: np.ndarray,
    sky: SkyState, k: np.ndarray,
) -> np.ndarray:
    """:func:`pv_ac_many_kw` of systems that all have PV and an inverter; ``k`` (steps, 1)."""
    tilt = tilt_deg[None, :]
    azim = azimuth_deg[None, :]
    zen = sky.zenith_deg[:, None]
    saz = sky.azimuth_deg[:, None]
    poa = pvlib.irradiance.get_total_irradiance(
        tilt, azim, zen, saz, sky.dni[:, None], sky.ghi[:, None], sky.dhi[:, None],
        dni_extra=sky.dni_extra[:, None], albedo=_ALBEDO, model="isotropic",
    )
    aoi = pvlib.irradiance.aoi(tilt, azim, zen, saz)
    iam = np.nan_to_num(pvlib.iam.physical(aoi), nan=0.0)
    beam = np.maximum(np.asarray(poa["poa_direct"], dtype=float), 0.0)
    diffuse = np.maximum(np.asarray(poa["poa_diffuse"], dtype=float), 0.0)
    poa_global = k * (beam + diffuse)
    effective = k * (beam * iam + diffuse)
    prm = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    # a wind that is one value (the synthetic model's) stays a scalar: exp() of a scalar
    # and of an array need not agree to the last bit, and the tables must not move
    w = sky.wind_m_per_s
    wind = float(w[0]) if len(w) and np.all(w == w[0]) else w[:, None]
    t_cell = pvlib.temperature.sapm_cell(
        poa_global, sky.temp_air_c[:, None], wind, prm["a"], prm["b"], prm["deltaT"]
    ) + _ROOF_MOUNT_EXTRA_K
    pdc = pvlib.pvsystem.pvwatts_dc(effective, t_cell, pv_kwp[None, :], _GAMMA_PDC_PER_K)
    pdc = np.maximum(np.asarray(pdc, dtype=float), 0.0) * (1.0 - _SYSTEM_LOSSES)
    pdc0_inv = inverter_kva[None, :] / INVERTER_ETA_NOM  # so that pac0 = inverter_kva
    pac = pvlib.inverter.pvwatts(pdc, pdc0_inv, eta_inv_nom=INVERTER_ETA_NOM)
    return np.clip(np.asarray(pac, dtype=float), 0.0, inverter_kva[None, :])


def pv_ac_kw(
    pv_kwp: float,
    times: pd.DatetimeIndex,
    site: SiteConfig,
    *,
    cloudiness: float,
    seed: int,
    index: int,
    weather_seed_key: str = "weather",
    inverter_kva: float | None = None,
    tilt_deg: float | None = None,
    azimuth_deg: float | None = None,
) -> np.ndarray:
    """AC output [kW, >= 0] of a rooftop PV system for each step starting at ``times``.

    ``pv_kwp`` DC rating [kWp]; ``inverter_kva`` AC rating [kVA] (default ``pv_kwp``);
    the roof plane is seeded per household (tilt U[10, 20] deg, azimuth U[150, 210] deg)
    unless ``tilt_deg``/``azimuth_deg`` [deg] are given; ``cloudiness`` [0..1] drives the
    shared weather process keyed by (``seed``, ``weather_seed_key``).
    """
    _check_times(times)
    if pv_kwp < 0:
        raise ValueError("pv_kwp must be >= 0")
    tilt, azim = pv_orientation(seed, index)
    tilt = tilt if tilt_deg is None else tilt_deg
    azim = azim if azimuth_deg is None else azimuth_deg
    inv = pv_kwp if inverter_kva is None else inverter_kva
    sky = sky_state(times, site)
    kt = clear_sky_index(times, cloudiness=cloudiness, seed=seed, weather_seed_key=weather_seed_key)
    return pv_ac_many_kw(
        np.array([pv_kwp]), np.array([inv]), np.array([tilt]), np.array([azim]), sky, kt
    )[:, 0]
