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
      falls inside it).
    * Noise: white, N(0, (5 % of the smooth part)^2) per step.
    * The expected daily energy is ``daily_kwh`` (exactly for the smooth part over whole
      days; the events lose only the tail of durations > 4 h at the study start); the
      result is clipped at 0 (the noise is 5 %, so clipping practically never binds).

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
      San Juan in June), wind 2 m/s.
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

from federates.common.rng import stream
from runner.config import SiteConfig

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


def _event_rows(
    daily_kwh: float, days: np.ndarray, shift_h: float, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Appliance events of the given local days: start [h after day 0 midnight], end, power [kW]."""
    mean_p = 0.5 * (_APPLIANCE_P_KW[0] + _APPLIANCE_P_KW[1])
    mean_d = _APPLIANCE_DUR_MEDIAN_H * np.exp(0.5 * _APPLIANCE_DUR_SIGMA**2)
    events_per_day = _APPLIANCE_SHARE * daily_kwh / (mean_p * mean_d)
    grid = np.arange(0.0, 24.0, 1.0 / 60.0)  # 1-min grid for the inverse CDF
    cdf = np.cumsum(daily_shape(grid - shift_h))
    cdf /= cdf[-1]
    starts, ends, powers = [], [], []
    d0 = int(days[0])
    for day in days:
        rng = stream(seed, "load_events", index, int(day))
        n = int(rng.poisson(events_per_day))
        if n == 0:
            continue
        u = rng.random(n)
        t = grid[np.searchsorted(cdf, u)] + rng.random(n) / 60.0  # [h within the day]
        dur = _APPLIANCE_DUR_MEDIAN_H * np.exp(_APPLIANCE_DUR_SIGMA * rng.standard_normal(n))
        p = rng.uniform(*_APPLIANCE_P_KW, size=n)
        s = (int(day) - d0) * 24.0 + t
        starts.append(s)
        ends.append(s + dur)
        powers.append(p)
    if not starts:
        z = np.zeros(0)
        return z, z, z
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(powers)


def _rasterise(starts: np.ndarray, ends: np.ndarray, powers: np.ndarray, n: int) -> np.ndarray:
    """Mean power [kW] in each of ``n`` unit cells of boxes [start, end) (in cell units).

    Exact: the integral I(x) = sum_e P_e (ramp(x - s_e) - ramp(x - e_e)) is evaluated at
    the cell edges with cumulative sums, and the cell means are its differences.
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
    ``household_load_kw(daily_kwh[j], times, seed=seed, index=indices[j])``."""
    grid = _load_grid(times)
    out = np.empty((len(times), len(indices)))
    for j, (e, i) in enumerate(zip(daily_kwh, indices, strict=True)):
        out[:, j] = _load_on_grid(float(e), grid, seed, int(i))
    return out


# ---- PV ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkyState:
    """Sun position and clear-sky irradiance at the step midpoints.

    ``zenith_deg``, ``azimuth_deg`` apparent solar position [deg]; ``ghi``, ``dni``,
    ``dhi`` clear-sky irradiance [W/m2]; ``dni_extra`` [W/m2]; ``temp_air_c`` [degC].
    """

    zenith_deg: np.ndarray
    azimuth_deg: np.ndarray
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    dni_extra: np.ndarray
    temp_air_c: np.ndarray


def _location(site: SiteConfig) -> pvlib.location.Location:
    return pvlib.location.Location(
        site.latitude, site.longitude, tz=site.timezone, altitude=site.altitude_m
    )


def sky_state(times: pd.DatetimeIndex, site: SiteConfig) -> SkyState:
    """Sun position and Ineichen clear sky (offline Linke turbidity) at the step midpoints."""
    _check_times(times)
    mid = _midpoints(times)
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


def pv_orientation(seed: int, index: int) -> tuple[float, float]:
    """Seeded roof (tilt [deg], azimuth [deg]) of household ``index``."""
    rng = stream(seed, "pv_orientation", index)
    return float(rng.uniform(*_PV_TILT_RANGE_DEG)), float(rng.uniform(*_PV_AZIMUTH_RANGE_DEG))


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
    ``kt`` clear-sky index per step [-]. Systems with ``pv_kwp == 0`` give 0.
    """
    pv_kwp = np.asarray(pv_kwp, dtype=float)
    inverter_kva = np.asarray(inverter_kva, dtype=float)
    out = np.zeros((len(sky.ghi), len(pv_kwp)))
    on = (pv_kwp > 0) & (inverter_kva > 0)
    if not on.any():
        return out
    tilt = np.asarray(tilt_deg, dtype=float)[on][None, :]
    azim = np.asarray(azimuth_deg, dtype=float)[on][None, :]
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
    k = np.asarray(kt, dtype=float)[:, None]
    poa_global = k * (beam + diffuse)
    effective = k * (beam * iam + diffuse)
    prm = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    t_cell = pvlib.temperature.sapm_cell(
        poa_global, sky.temp_air_c[:, None], _WIND_M_PER_S, prm["a"], prm["b"], prm["deltaT"]
    ) + _ROOF_MOUNT_EXTRA_K
    pdc = pvlib.pvsystem.pvwatts_dc(effective, t_cell, pv_kwp[on][None, :], _GAMMA_PDC_PER_K)
    pdc = np.maximum(np.asarray(pdc, dtype=float), 0.0) * (1.0 - _SYSTEM_LOSSES)
    pdc0_inv = inverter_kva[on][None, :] / INVERTER_ETA_NOM  # so that pac0 = inverter_kva
    pac = pvlib.inverter.pvwatts(pdc, pdc0_inv, eta_inv_nom=INVERTER_ETA_NOM)
    pac = np.clip(np.asarray(pac, dtype=float), 0.0, inverter_kva[on][None, :])
    out[:, on] = pac
    return out


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
