"""The study's weather at the physics steps: the synthetic clear sky, or a weather file.

``site.weather.source: synthetic`` (default): :class:`SyntheticWeather`, pvlib's
Ineichen clear sky with the fixed air temperature and wind of
:mod:`federates.prosumers.profiles` (the clouds are its ``CloudBlocks``).

``site.weather.source: file``: :class:`FileWeather` reads a typical-year (or one real
year) file with ``pvlib.iotools`` only (``read_tmy3``, ``read_tmy2``, ``read_epw``,
``read_pvgis_tmy``, ``read_nsrdb_psm4``; the last reads the NSRDB's SAM CSV, which is
the layout of both PSM3 and PSM4 downloads), checks it (:func:`read_weather_file`) and
maps it onto the study's steps. The file's irradiance carries the clouds:
``prosumers.cloudiness`` is ignored (the run's resolved config says so).

What a file's values mean (each format's documentation; pvlib's index is shifted as noted)
    =========  ===================================  ================================
    format     irradiance [W/m2] = mean over        temperature, wind: value at
    =========  ===================================  ================================
    tmy3       the hour *ending* at pvlib's index   pvlib's index (hour end)
    tmy2       the hour *starting* at pvlib's index  pvlib's index + 1 h (hour end)
    epw        the hour *starting* at pvlib's index  pvlib's index + 1 h (hour end)
    pvgis_tmy  the file step centred on the time     the time stamp (UTC)
               stamp + the file's "Irradiance Time
               Offset" (SARAH values are instants)
    nsrdb_psm  the file step centred on the time     the time stamp
               stamp (NSRDB values are instants)
    =========  ===================================  ================================

    TMY3 / TMY2 / EPW give the irradiation of the 60 minutes before the labelled hour
    (their manuals: "received during 60 minutes prior to timestamp") and the dry bulb
    temperature and wind "at the time indicated"; pvlib labels TMY3 rows by the hour end
    and TMY2 / EPW rows by the hour start (``hour - 1``).

Time alignment (every time is handled in UTC)
    The file's clock is its header's fixed UTC offset (local standard time, no DST;
    PVGIS: UTC). Each file interval is keyed by the month, day and time of day of its
    *start* on that clock, so a TMY's months, which come from different years, land on
    the study's year. A study step lies in the interval that holds its midpoint; the
    study's intervals are the file's grid laid over the study's own calendar (its year,
    and the next one when it crosses a year end: the file wraps around). Leap day rule:
    an interval starting on Feb 29 of a leap study year takes the file's Feb 28 interval
    of the same time of day when the file has no Feb 29 (8760 rows); a file with a
    Feb 29 (8784 rows) gives it to leap years and skips it in other years. The study's
    ``site.timezone`` (DST or not) only labels its steps; the mapping is in UTC.

Irradiance interpolation (energy-preserving clear-sky-index interpolation)
    For each component c in (GHI, DNI, DHI) separately, with the interval's file value
    ``V_j`` [W/m2] (the interval mean) and the step's Ineichen clear-sky value ``C(t)``
    at the step midpoint:

    1. ``k_j = V_j / mean_j(C)``, the interval's clear-sky index (clipped to
       [0, ``K_MAX``]; undefined when ``mean_j(C) < SHAPE_MIN_W_PER_M2``: night);
    2. ``k(t)``: linear in time between the interval midpoints (an undefined neighbour
       takes the defined one's value; two undefined: 1);
    3. ``G(t) = c_j * C(t) * k(t)``, with ``c_j`` chosen so that the steps whose
       midpoints lie in interval j carry exactly its irradiation:
       ``sum_steps G * dt = V_j * file step``. An interval whose ``C * k`` is zero at
       all its steps (the sun below the horizon all through it, yet the file has light:
       twilight, or the file's own sun position) gets ``V_j * file step / (n_j dt)``
       flat at each of its ``n_j`` steps.

    So the irradiation of each file interval is kept to floating-point rounding
    (tests/unit/test_weather.py: 1e-9 relative) for any physics step up to the file's
    step, whether or not the steps tile the hour (a step straddling the hour counts
    wholly in the hour holding its midpoint), and sunrise / sunset follow the clear
    sky's shape. Steps longer than the file's step sample it (the intervals without a
    step midpoint are skipped).

Temperature and wind: linear interpolation in time between the instants the file's
values refer to (the table above), evaluated at the step midpoints.

Every value depends on its own step and the file intervals around it only (the
clear-sky sub-grid of an interval is the study's own step grid), so a block of a
study's steps gives the same numbers as the whole study (tests/unit/test_weather.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pvlib

from federates.prosumers import profiles
from federates.prosumers.profiles import SkyState

#: formats read, by ``site.weather.format`` (``auto``: from the file's name and first line)
FORMATS = ("tmy3", "tmy2", "epw", "pvgis_tmy", "nsrdb_psm")
K_MAX = 3.0  # largest clear-sky index used for the interpolation [-] (c_j keeps the energy)
SHAPE_MIN_W_PER_M2 = 1.0  # interval clear-sky mean below which k_j is undefined (night)
#: physical ranges a file's values must lie in (checked row by row)
RANGES = {
    "ghi": (0.0, 1500.0),  # [W/m2]
    "dni": (0.0, 1500.0),  # [W/m2]
    "dhi": (0.0, 1500.0),  # [W/m2]
    "temp_air_c": (-60.0, 60.0),  # [degC]
    "wind_m_per_s": (0.0, 60.0),  # [m/s]
}
_COLUMNS = tuple(RANGES)
_UNIX0 = pd.Timestamp("1970-01-01", tz="UTC")


class WeatherFileError(ValueError):
    """A weather file that cannot be used: names the file, the line and the column."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, column: str | None = None):
        self.path, self.line, self.column, self.message = str(path), line, column, message
        where = "".join([f", line {line}" if line is not None else "",
                         f", column {column!r}" if column is not None else ""])
        super().__init__(f"{path}{where}: {message}")


@dataclass(frozen=True)
class WeatherHeader:
    """What a file's header says of its site: ``latitude`` / ``longitude`` [deg],
    ``altitude_m`` [m], ``utc_offset_h`` [h] of the file's clock, ``name``, and
    ``local_offset_h`` [h]: the site's standard time (NSRDB's "Local Time Zone", which
    may differ from the data's; None when the file names none: PVGIS, in UTC)."""

    latitude: float
    longitude: float
    altitude_m: float
    utc_offset_h: float
    name: str
    local_offset_h: float | None = None

    @property
    def timezone(self) -> str | None:
        """The site's standard time as a fixed-offset zone name (``Etc/GMT+5`` for
        UTC-5); None when the file names none or its offset is not whole hours (no such
        zone name): the config must then set ``site.timezone``."""
        h = self.local_offset_h
        if h is None or h != round(h):
            return None
        h = round(h)
        return "UTC" if h == 0 else f"Etc/GMT{-h:+d}"


@dataclass(frozen=True)
class WeatherData:
    """A checked weather file: one row per file interval, in file order.

    ``step_s`` the file's step [s]; ``start_s`` each interval's start [s after Jan 1
    00:00 of its own year, file clock]; ``key`` each interval's (month, day, time of day)
    code (:func:`_key`); ``met_lag_s`` [s]: the instant of the temperature and wind
    after the interval's start; ``values``: ghi, dni, dhi [W/m2], temp_air_c [degC],
    wind_m_per_s [m/s]."""

    path: Path
    format: str
    header: WeatherHeader
    step_s: int
    key: np.ndarray
    met_lag_s: int
    values: dict[str, np.ndarray]
    has_feb29: bool

    @property
    def anchor_s(self) -> int:
        """Time of day of the interval starts modulo the step [s] (file clock)."""
        return int(self.key[0] % 86400) % self.step_s


def _key(month: np.ndarray, day: np.ndarray, sod: np.ndarray) -> np.ndarray:
    """One integer per (month, day, second of day)."""
    return (np.asarray(month, np.int64) * 32 + np.asarray(day, np.int64)) * 86400 + np.asarray(sod, np.int64)


# ---- reading ------------------------------------------------------------------------
#: per format: the file's names of the columns used (for messages), first data line
_FILE_COLUMNS = {
    "tmy3": {"ghi": "GHI (W/m^2)", "dni": "DNI (W/m^2)", "dhi": "DHI (W/m^2)",
             "temp_air_c": "Dry-bulb (C)", "wind_m_per_s": "Wspd (m/s)", "time": "Time (HH:MM)"},
    "tmy2": {"ghi": "GHI", "dni": "DNI", "dhi": "DHI", "temp_air_c": "DryBulb", "wind_m_per_s": "Wspd",
             "time": "hour"},
    "epw": {"ghi": "Global Horizontal Radiation (field 14)", "dni": "Direct Normal Radiation (field 15)",
            "dhi": "Diffuse Horizontal Radiation (field 16)", "temp_air_c": "Dry Bulb Temperature (field 7)",
            "wind_m_per_s": "Wind Speed (field 22)", "time": "Hour (field 4)"},
    "pvgis_tmy": {"ghi": "G(h)", "dni": "Gb(n)", "dhi": "Gd(h)", "temp_air_c": "T2m", "wind_m_per_s": "WS10m",
                  "time": "time(UTC)"},
    "nsrdb_psm": {"ghi": "GHI", "dni": "DNI", "dhi": "DHI", "temp_air_c": "Temperature",
                  "wind_m_per_s": "Wind Speed", "time": "Hour"},
}


def detect_format(path: Path) -> str:
    """The format of ``path`` from its suffix and first line (``auto``)."""
    suffix = path.suffix.lower()
    if suffix == ".tm2":
        return "tmy2"
    if suffix == ".epw":
        return "epw"
    if suffix == ".json":
        return "pvgis_tmy"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as e:
        raise WeatherFileError(path, f"cannot be read: {e}") from None
    if first.startswith("Latitude"):
        return "pvgis_tmy"
    if first.startswith("Source"):
        return "nsrdb_psm"
    if suffix == ".csv" and first.count(",") == 6:
        return "tmy3"
    raise WeatherFileError(path, "cannot tell the format from the name and the first line",
                           line=1, column=None)


def _first_data_line(path: Path, fmt: str) -> int:
    """1-based line number of the first data row."""
    if fmt in ("tmy3",):
        return 3
    if fmt == "tmy2":
        return 2
    if fmt == "epw":
        return 9
    if fmt == "nsrdb_psm":
        return 4
    with open(path, "rb") as f:  # pvgis csv: the line after the header row
        for i, line in enumerate(f, start=1):
            if line.startswith(b"time(UTC)"):
                return i + 1
    return 1


#: TMY2 data lines: fixed-width fields (the widths of pvlib's parser), from column 2
_TMY2_WIDTHS = (2, 2, 2, 2, 4, 4, 4, 1, 1, 4, 1, 1, 4, 1, 1, 4, 1, 1, 4, 1, 1, 4, 1, 1, 4, 1, 1, 2, 1, 1, 2, 1, 1,
                4, 1, 1, 4, 1, 1, 3, 1, 1, 4, 1, 1, 3, 1, 1, 3, 1, 1, 4, 1, 1, 5, 1, 1, 10, 3, 1, 1, 3, 1, 1, 3, 1,
                1, 2, 1, 1)


def _scan_lines(path: Path, fmt: str, line0: int) -> None:
    """Every data line whole: as many fields as the header names (CSV formats) or the
    full fixed width (TMY2). pvlib fails on a line cut short with a parser message
    naming neither the line nor the column; this names both."""
    if fmt == "pvgis_tmy" and path.suffix.lower() == ".json":
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    if fmt == "tmy2":
        width = 1 + sum(_TMY2_WIDTHS)
        for i, text in enumerate(lines[line0 - 1:], start=line0):
            if len(text) < width:
                # the field the line ends in (field k spans up to 1 + the first k + 1 widths)
                k = int(np.searchsorted(1 + np.cumsum(_TMY2_WIDTHS), len(text), side="right"))
                name = _TMY2_FIELDS[k] if k < len(_TMY2_FIELDS) else f"field {k + 1}"
                raise WeatherFileError(path, f"line cut short ({len(text)} of {width} characters)", line=i,
                                       column=name)
        return
    if fmt == "epw":
        names = [f"field {k + 1}" for k in range(35)]
    else:
        names = [c.strip() for c in lines[line0 - 2].split(",")] if len(lines) >= line0 - 1 else []
        names = [c for c in names if c]
    for i, text in enumerate(lines[line0 - 1:], start=line0):
        if fmt == "pvgis_tmy" and not text.strip():
            break  # the footer follows a blank line
        fields = text.split(",")
        if len(fields) < len(names):
            raise WeatherFileError(path, f"line cut short ({len(fields)} of {len(names)} fields)", line=i,
                                   column=names[len(fields) - 1] if fields else names[0])


_TMY2_FIELDS = ("year", "month", "day", "hour", "ETR", "ETRN", "GHI", "GHISource", "GHIUncertainty", "DNI",
                "DNISource", "DNIUncertainty", "DHI", "DHISource", "DHIUncertainty")


def _read_raw(path: Path, fmt: str) -> tuple[pd.DataFrame, WeatherHeader, float, float, float]:
    """pvlib's frame with the used columns (pvlib index), the header, and where the
    values lie from pvlib's index: the irradiance interval's start [file steps] plus
    [s], and the temperature / wind instant [file steps]."""
    io = pvlib.iotools
    extra_s = 0.0
    if fmt == "tmy3":
        data, meta = io.read_tmy3(path, map_variables=True)
        frame = data[["ghi", "dni", "dhi", "temp_air", "wind_speed"]]
        head = WeatherHeader(meta["latitude"], meta["longitude"], meta["altitude"], meta["TZ"],
                             str(meta.get("Name", "")).strip('"'), meta["TZ"])
        irr, met = -1.0, 0.0  # interval ends at the index
    elif fmt == "tmy2":
        data, meta = io.read_tmy2(str(path))
        frame = pd.DataFrame({"ghi": data["GHI"], "dni": data["DNI"], "dhi": data["DHI"],
                              "temp_air": data["DryBulb"] / 10.0, "wind_speed": data["Wspd"] / 10.0})
        head = WeatherHeader(meta["latitude"], meta["longitude"], meta["altitude"], meta["TZ"],
                             str(meta.get("City", "")).strip(), meta["TZ"])
        irr, met = 0.0, 1.0
    elif fmt == "epw":
        data, meta = io.read_epw(path)
        frame = data[["ghi", "dni", "dhi", "temp_air", "wind_speed"]]
        head = WeatherHeader(meta["latitude"], meta["longitude"], meta["altitude"], meta["TZ"],
                             str(meta.get("city", "")), meta["TZ"])
        irr, met = 0.0, 1.0
    elif fmt == "pvgis_tmy":
        data, meta = io.read_pvgis_tmy(path, map_variables=True)
        frame = data[["ghi", "dni", "dhi", "temp_air", "wind_speed"]]
        inputs = meta["inputs"]
        loc = inputs.get("location", inputs)  # json: inputs.location; csv: inputs
        head = WeatherHeader(float(loc["latitude"]), float(loc["longitude"]),
                             float(loc.get("elevation", 0.0)), 0.0, "PVGIS")
        # SARAH instants, at the time stamp + the "Irradiance Time Offset" (newer files)
        extra_s = float(inputs.get("irradiance time offset", 0.0) or 0.0) * 3600.0
        irr, met = -0.5, 0.0
    elif fmt == "nsrdb_psm":
        data, meta = io.read_nsrdb_psm4(path, map_variables=True)
        frame = data[["ghi", "dni", "dhi", "temp_air", "wind_speed"]]
        head = WeatherHeader(meta["latitude"], meta["longitude"], float(meta["altitude"]),
                             float(meta["Time Zone"]), str(meta.get("City", "")),
                             float(meta.get("Local Time Zone", meta["Time Zone"])))
        irr, met = -0.5, 0.0
    else:
        raise ValueError(f"unknown weather format {fmt!r}; allowed: {', '.join(FORMATS)}")
    frame = frame.rename(columns={"temp_air": "temp_air_c", "wind_speed": "wind_m_per_s"})
    return frame, head, irr, extra_s, met


def read_weather_file(path: Path | str, fmt: str = "auto") -> WeatherData:
    """Read and check a weather file; :class:`WeatherFileError` naming the file, the line
    and the column for anything unusable.

    Checks (pvlib reads a truncated file without complaint): a whole year of rows at the
    file's step (8760 / 8784 hourly, or 365 / 366 days at a sub-hourly step), the
    intervals one step apart in time order (wrapping at the year end), no NaN and each
    value in :data:`RANGES` in the columns used."""
    path = Path(path)
    if not path.is_file():
        raise WeatherFileError(path, "no such file")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise WeatherFileError(path, f"unknown format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    line0 = _first_data_line(path, fmt)
    cols = _FILE_COLUMNS[fmt]
    _scan_lines(path, fmt, line0)
    try:
        frame, head, irr_steps, irr_extra_s, met_steps = _read_raw(path, fmt)
    except WeatherFileError:
        raise
    except Exception as e:
        raise WeatherFileError(path, f"pvlib.iotools cannot read it as {fmt}: {type(e).__name__}: {e}") from None
    n = len(frame)
    if n < 2:
        raise WeatherFileError(path, f"{n} data rows; a year needs 8760 (hourly)", line=line0 + n,
                               column=cols["time"])
    idx = pd.DatetimeIndex(frame.index)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    # the file's clock: its header's fixed offset
    clock = idx.tz_convert(round(head.utc_offset_h * 3600)) if fmt != "pvgis_tmy" else idx.tz_convert("UTC")
    # the file step: the most common spacing of the rows' times of day
    sod = np.asarray(clock.hour * 3600 + clock.minute * 60 + clock.second, dtype=np.int64)
    d = np.diff(sod) % 86400
    d = d[d > 0]
    if len(d) == 0:
        raise WeatherFileError(path, "every row has the same time of day", line=line0 + 1, column=cols["time"])
    step_s = int(np.bincount(d).argmax())
    irr_shift_s = round(irr_steps * step_s + irr_extra_s)
    met_lag_s = round(met_steps * step_s) - irr_shift_s
    per_day = 86400 // step_s if 86400 % step_s == 0 else None
    if per_day is None:
        raise WeatherFileError(path, f"a step of {step_s} s does not divide a day", line=line0 + 1,
                               column=cols["time"])
    if n not in (365 * per_day, 366 * per_day):
        raise WeatherFileError(
            path, f"{n} data rows, lines {line0}..{line0 + n - 1} (a truncated or padded file?); a year "
            f"at this file's step of {step_s} s needs {365 * per_day} (or {366 * per_day} with Feb 29)",
            line=line0 + n - 1, column=cols["time"])
    has_feb29 = n == 366 * per_day
    # positions in the file's own calendar (its labels' month, day and time of day: a
    # TMY's months come from different years), wrapped at the year end
    cal_year, year_s = (2000, 366 * 86400) if has_feb29 else (2001, 365 * 86400)
    month, day = np.asarray(clock.month), np.asarray(clock.day)
    leap = np.flatnonzero((month == 2) & (day == 29))
    if not has_feb29 and len(leap):
        raise WeatherFileError(path, "a Feb 29 row in a 365-day file", line=line0 + int(leap[0]),
                               column=cols["time"])
    doy = np.asarray(pd.to_datetime(pd.DataFrame({"year": np.full(n, cal_year), "month": month, "day": day}))
                     .dt.day_of_year, dtype=np.int64) - 1
    pos = (doy * 86400 + sod + irr_shift_s) % year_s  # interval starts
    gaps = np.diff(pos) % year_s
    bad = np.flatnonzero(gaps != step_s)
    if len(bad):
        r = int(bad[0]) + 1
        raise WeatherFileError(
            path, f"row time {clock[r]:%m/%d %H:%M} does not follow the previous row's "
            f"({clock[r - 1]:%m/%d %H:%M}) by the file's step of {step_s} s", line=line0 + r,
            column=cols["time"])
    start_day = pd.Timestamp(f"{cal_year}-01-01") + pd.to_timedelta(pos // 86400, unit="D")
    values = {}
    for name in _COLUMNS:
        v = np.asarray(pd.to_numeric(frame[name], errors="coerce"), dtype=float)
        lo, hi = RANGES[name]
        nan = np.flatnonzero(~np.isfinite(v))
        if len(nan):
            raise WeatherFileError(path, "missing value (NaN)", line=line0 + int(nan[0]), column=cols[name])
        out = np.flatnonzero((v < lo) | (v > hi))
        if len(out):
            r = int(out[0])
            raise WeatherFileError(path, f"{v[r]:g} outside the physical range {lo:g}..{hi:g}",
                                   line=line0 + r, column=cols[name])
        values[name] = v
    return WeatherData(
        path=path, format=fmt, header=head, step_s=step_s,
        key=_key(start_day.month, start_day.day, pos % 86400), met_lag_s=met_lag_s, values=values,
        has_feb29=has_feb29,
    )


# ---- the study's weather --------------------------------------------------------------
class Weather(Protocol):
    """What the prosumer models ask of the weather, at the steps starting at ``times``
    (tz-aware, regular; each value is the step's, evaluated at its midpoint)."""

    def at(self, times: pd.DatetimeIndex, step_s: float | None = None) -> SkyState: ...

    def temp_air_c(self, times: pd.DatetimeIndex, step_s: float | None = None) -> np.ndarray: ...


class SyntheticWeather:
    """The synthetic model's sky (:func:`federates.prosumers.profiles.sky_state`): clear
    sky, fixed temperature cycle and wind; the clouds are ``profiles.CloudBlocks``."""

    def __init__(self, site):
        self.site = site

    def at(self, times: pd.DatetimeIndex, step_s: float | None = None) -> SkyState:
        return profiles.sky_state(times, self.site, step_s=step_s)

    def temp_air_c(self, times: pd.DatetimeIndex, step_s: float | None = None) -> np.ndarray:
        """Air temperature [degC] of each step."""
        return self.at(times, step_s).temp_air_c


@dataclass(frozen=True)
class SiteFromFile:
    """The coordinates the file weather runs with: the config's where it sets them, else
    the file header's (``source`` says which, per field)."""

    latitude: float
    longitude: float
    altitude_m: float
    timezone: str | None
    source: dict[str, str]


def site_values(site, header: WeatherHeader) -> SiteFromFile:
    """Latitude, longitude, altitude and time zone: those the config sets explicitly
    (pydantic's ``model_fields_set``), else the file header's. ``timezone`` is None
    when the config sets none and the header names no whole-hour offset (PVGIS files
    are in UTC and name none): the run then asks for ``site.timezone``."""
    given = site.model_fields_set
    out, src = {}, {}
    for name, from_file in (("latitude", header.latitude), ("longitude", header.longitude),
                            ("altitude_m", header.altitude_m)):
        out[name] = float(getattr(site, name)) if name in given else float(from_file)
        src[name] = "config" if name in given else "file"
    if "timezone" in given:
        out["timezone"], src["timezone"] = site.timezone, "config"
    else:
        out["timezone"], src["timezone"] = header.timezone, "file"
    return SiteFromFile(**out, source=src)


class FileWeather:
    """The weather of a file (:func:`read_weather_file`) at the study's steps (the
    module docstring gives the alignment and interpolation rules)."""

    def __init__(self, data: WeatherData, latitude: float, longitude: float, altitude_m: float):
        self.data = data
        self.latitude, self.longitude, self.altitude_m = float(latitude), float(longitude), float(altitude_m)
        self._loc = pvlib.location.Location(self.latitude, self.longitude, tz="UTC", altitude=self.altitude_m)
        self._offset_s = round(data.header.utc_offset_h * 3600) if data.format != "pvgis_tmy" else 0
        order = np.argsort(data.key, kind="stable")
        self._keys_sorted = data.key[order]
        self._rows_sorted = order

    @classmethod
    def from_site(cls, site, base_dir: Path | None = None) -> FileWeather:
        """The file of ``site.weather`` (a relative path: relative to ``base_dir``, default
        the working directory) with the coordinates of :func:`site_values`."""
        w = site.weather
        p = Path(w.path)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        data = read_weather_file(p, w.format)
        v = site_values(site, data.header)
        return cls(data, v.latitude, v.longitude, v.altitude_m)

    # -- the file intervals laid over the study's calendar --
    def _rows(self, j: np.ndarray) -> np.ndarray:
        """File rows of the study's intervals ``j`` (interval j starts at ``j * step +
        anchor`` s after 1970-01-01 on the file's clock)."""
        d = self.data
        t = j * d.step_s + d.anchor_s  # file clock [s since 1970]
        stamp = pd.to_datetime(t, unit="s")
        month, day = np.asarray(stamp.month), np.asarray(stamp.day)
        if not d.has_feb29:
            leap = (month == 2) & (day == 29)
            day = np.where(leap, 28, day)  # leap day rule: Feb 28's data
        k = _key(month, day, t % 86400)
        pos = np.searchsorted(self._keys_sorted, k)
        pos = np.minimum(pos, len(self._keys_sorted) - 1)
        if not np.array_equal(self._keys_sorted[pos], k):
            raise ValueError(f"{d.path}: no row for some study intervals")  # a checked file has them all
        return self._rows_sorted[pos]

    def _interval_of(self, t_utc_s: np.ndarray) -> np.ndarray:
        d = self.data
        return np.floor((t_utc_s + self._offset_s - d.anchor_s) / d.step_s).astype(np.int64)

    def _interval_start_utc(self, j: np.ndarray) -> np.ndarray:
        d = self.data
        return j * d.step_s + d.anchor_s - self._offset_s

    # -- the sky --
    def at(self, times: pd.DatetimeIndex, step_s: float | None = None) -> SkyState:
        """Sun position and the file's irradiance, air temperature and wind at the steps
        starting at ``times`` (``step_s`` [s]: default from ``times``)."""
        profiles._check_times(times)
        n = len(times)
        dt = profiles.step_seconds(times) if step_s is None else float(step_s)
        if n == 0:
            z = np.zeros(0)
            return SkyState(z, z, z, z, z, z, z, z)
        d = self.data
        t = np.asarray((times - _UNIX0).total_seconds(), dtype=float)
        t0 = float(t[0])
        # the steps' places on the lattice t0 + i dt (times need not be consecutive steps)
        i_step = np.rint((t - t0) / dt).astype(np.int64)
        mid = t0 + dt * i_step + dt / 2.0
        j_mid = self._interval_of(mid)
        jlo, jhi = int(j_mid.min()) - 1, int(j_mid.max()) + 1
        # the sub-grid: the study's steps whose midpoints lie in intervals jlo..jhi
        lo_s = float(self._interval_start_utc(np.array([jlo]))[0])
        hi_s = float(self._interval_start_utc(np.array([jhi + 1]))[0])
        g_lo = math.ceil((lo_s - dt / 2.0 - t0) / dt)
        g_hi = math.ceil((hi_s - dt / 2.0 - t0) / dt)
        g = np.arange(g_lo, g_hi)
        sub_mid = t0 + dt * g + dt / 2.0
        iv = self._interval_of(sub_mid) - jlo  # 0 .. jhi - jlo
        n_iv = jhi - jlo + 1
        mids = pd.DatetimeIndex(pd.to_datetime(sub_mid, unit="s", utc=True))
        sp = self._loc.get_solarposition(mids)
        cs = self._loc.get_clearsky(mids, model="ineichen", solar_position=sp)
        js = np.arange(jlo, jhi + 1)
        rows = self._rows(js)
        count = np.bincount(iv, minlength=n_iv).astype(float)
        centre = self._interval_start_utc(js) + d.step_s / 2.0
        irr = {}
        for name in ("ghi", "dni", "dhi"):
            irr[name] = _keep_energy(
                cs[name].to_numpy(float), d.values[name][rows], iv, count, centre, sub_mid, d.step_s, dt
            )
        take = i_step - g_lo  # the block's steps within the sub-grid
        # temperature and wind: linear between the file's instants
        jm = np.arange(jlo - 1, jhi + 2)
        rows_m = self._rows(jm)
        inst = self._interval_start_utc(jm) + d.met_lag_s
        temp = np.interp(mid, inst, d.values["temp_air_c"][rows_m])
        wind = np.interp(mid, inst, d.values["wind_m_per_s"][rows_m])
        return SkyState(
            zenith_deg=sp["apparent_zenith"].to_numpy(float)[take],
            azimuth_deg=sp["azimuth"].to_numpy(float)[take],
            ghi=irr["ghi"][take], dni=irr["dni"][take], dhi=irr["dhi"][take],
            dni_extra=np.asarray(pvlib.irradiance.get_extra_radiation(mids[take]), dtype=float),
            temp_air_c=temp, wind_m_per_s=wind,
        )

    def temp_air_c(self, times: pd.DatetimeIndex, step_s: float | None = None) -> np.ndarray:
        """Air temperature [degC] of each step starting at ``times`` (at its midpoint)."""
        profiles._check_times(times)
        n = len(times)
        if n == 0:
            return np.zeros(0)
        dt = profiles.step_seconds(times) if step_s is None else float(step_s)
        mid = np.asarray((times - _UNIX0).total_seconds(), dtype=float) + dt / 2.0
        j = self._interval_of(mid)
        jm = np.arange(int(j.min()) - 2, int(j.max()) + 3)
        inst = self._interval_start_utc(jm) + self.data.met_lag_s
        return np.interp(mid, inst, self.data.values["temp_air_c"][self._rows(jm)])


def _keep_energy(
    shape: np.ndarray, value: np.ndarray, iv: np.ndarray, count: np.ndarray, centre: np.ndarray,
    t: np.ndarray, file_step_s: int, dt: float,
) -> np.ndarray:
    """Step values [W/m2] on the sub-grid (module docstring, steps 1-3): ``shape`` the
    clear sky at the sub-grid midpoints ``t`` [s], ``iv`` their interval (0..),
    ``count`` steps per interval, ``value`` the intervals' file means, ``centre`` the
    intervals' midpoints [s]."""
    n_iv = len(value)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_shape = np.bincount(iv, shape, minlength=n_iv) / count
        k = np.where(mean_shape >= SHAPE_MIN_W_PER_M2, np.clip(value / mean_shape, 0.0, K_MAX), np.nan)
    # linear in time between interval midpoints: the neighbour on the point's side
    side = np.where(t < centre[iv], -1, 1)
    other = np.clip(iv + side, 0, n_iv - 1)
    w = np.abs(t - centre[iv]) / file_step_s  # weight of the neighbour, 0..0.5
    k_own, k_nb = k[iv], k[other]
    k_own_f = np.where(np.isnan(k_own), np.where(np.isnan(k_nb), 1.0, k_nb), k_own)
    k_nb_f = np.where(np.isnan(k_nb), k_own_f, k_nb)
    raw = shape * ((1.0 - w) * k_own_f + w * k_nb_f)
    with np.errstate(invalid="ignore", divide="ignore"):  # intervals without a step: unused
        target = value * file_step_s / (count * dt)  # the interval mean the steps must have
        c = target / (np.bincount(iv, raw, minlength=n_iv) / count)
    ok = np.isfinite(c)
    return np.where(ok[iv], raw * np.where(ok, c, 0.0)[iv], target[iv])


def weather_of(site, base_dir: Path | None = None) -> Weather:
    """The study's weather: :class:`FileWeather` with ``site.weather.source: file``,
    else :class:`SyntheticWeather`."""
    if site.weather.source == "file":
        return FileWeather.from_site(site, base_dir)
    return SyntheticWeather(site)
