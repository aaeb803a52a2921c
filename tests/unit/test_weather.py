"""Weather files (federates/prosumers/weather.py): each format read, the mapping onto the
study's year, the energy kept by the interpolation, the checks that refuse a bad file,
and PV from a file against pvlib's own ModelChain.

References: the files' own rows, read here with the csv module or by column position
(independent of the module's pvlib-based reading and time shifts); the energy property
is a conservation law (each file interval's irradiation over its steps); the PV check is
pvlib's ModelChain run on the hourly data."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib
import pytest

from federates.common.config import SiteConfig, validate
from federates.common.errors import ConfigError
from federates.prosumers import profiles
from federates.prosumers.weather import (
    FileWeather,
    SyntheticWeather,
    WeatherFileError,
    read_weather_file,
    site_values,
    weather_of,
)

PVLIB_DATA = Path(pvlib.__file__).parent / "data"
TMY3 = PVLIB_DATA / "723170TYA.CSV"
TMY3_AK = PVLIB_DATA / "703165TY.csv"
TMY2 = PVLIB_DATA / "12839.tm2"
REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("ghi", "dni", "dhi")
#: the energy property holds to rounding: the correction c_j is computed so, and a day's
#: sum of ~1e5 W/m2 * 60 s terms rounds at ~1e-16 relative each
ENERGY_RTOL = 1e-9


def _tmy3_rows(path: Path = TMY3) -> pd.DataFrame:
    """The TMY3 file's rows read with the csv module: month, day, hour ending (1..24),
    GHI, DNI, DHI [W/m2], dry bulb [degC], wind [m/s]."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[2:]
    return pd.DataFrame({
        "month": [int(r[0][:2]) for r in rows], "day": [int(r[0][3:5]) for r in rows],
        "hour": [int(r[1][:2]) for r in rows],
        "ghi": [float(r[4]) for r in rows], "dni": [float(r[7]) for r in rows],
        "dhi": [float(r[10]) for r in rows], "temp": [float(r[31]) for r in rows],
        "wind": [float(r[46]) for r in rows],
    })


def _weather(path: Path, fmt: str = "auto") -> FileWeather:
    data = read_weather_file(path, fmt)
    h = data.header
    return FileWeather(data, h.latitude, h.longitude, h.altitude_m)


def _hourly(w: FileWeather, start: str, hours: int, step_s: int = 60, tz: str = "Etc/GMT+5"):
    """The steps of ``hours`` hours from ``start`` (file clock) and their hourly means."""
    times = pd.date_range(pd.Timestamp(start, tz=tz), periods=hours * 3600 // step_s, freq=f"{step_s}s")
    sky = w.at(times)
    df = pd.DataFrame({c: getattr(sky, c) for c in COMPONENTS}, index=times)
    return sky, df.resample("1h").mean()


def _file_hours(rows: pd.DataFrame, month: int, day: int) -> pd.DataFrame:
    """The file's 24 hours of a day (hour ending 1..24)."""
    out = rows[(rows.month == month) & (rows.day == day)]
    assert len(out) == 24
    return out


# ---- each format --------------------------------------------------------------------
def test_tmy3_each_hour_of_a_day_is_the_files_row():
    w = _weather(TMY3)
    assert w.data.format == "tmy3" and w.data.step_s == 3600
    assert (w.data.header.latitude, w.data.header.longitude, w.data.header.utc_offset_h) == (36.1, -79.95, -5.0)
    rows = _tmy3_rows()
    for month, day in ((6, 21), (1, 15), (10, 3)):
        _, hourly = _hourly(w, f"2026-{month:02d}-{day:02d}", 24)
        ref = _file_hours(rows, month, day)
        for c in COMPONENTS:
            np.testing.assert_allclose(hourly[c].to_numpy(), ref[c].to_numpy(), rtol=ENERGY_RTOL, atol=1e-9)


def test_tmy3_temperature_and_wind_are_the_files_at_the_hour_ends():
    """TMY3's dry bulb and wind are 'at the time indicated' (the hour end): at a step
    midpoint on the hour the interpolation returns the row's value."""
    w = _weather(TMY3)
    rows = _tmy3_rows()
    ref = _file_hours(rows, 6, 21)
    # steps of 2 min starting 1 min before each hour: their midpoints are the hour ends
    times = pd.DatetimeIndex([pd.Timestamp(f"2026-06-21 {h:02d}:59", tz="Etc/GMT+5") for h in range(23)])
    got = w.temp_air_c(times, step_s=120)
    np.testing.assert_allclose(got, ref["temp"].to_numpy()[:23], atol=1e-12)
    sky = w.at(times, step_s=120)
    np.testing.assert_allclose(sky.wind_m_per_s, ref["wind"].to_numpy()[:23], atol=1e-12)
    np.testing.assert_array_equal(sky.temp_air_c, got)


def test_tmy3_second_shipped_file_alaska():
    w = _weather(TMY3_AK)
    assert w.data.header.utc_offset_h == -9.0
    rows = _tmy3_rows(TMY3_AK)
    _, hourly = _hourly(w, "2026-07-01", 24, tz="Etc/GMT+9")
    ref = _file_hours(rows, 7, 1)
    for c in COMPONENTS:
        np.testing.assert_allclose(hourly[c].to_numpy(), ref[c].to_numpy(), rtol=ENERGY_RTOL, atol=1e-9)


def test_tmy2_each_hour_is_the_files_row():
    """TMY2 rows by fixed column positions (TMY2 manual: month 3-4, day 5-6, hour ending
    7-8, GHI 18-21, DNI 24-27, DHI 30-33, 1-based)."""
    w = _weather(TMY2)
    assert w.data.format == "tmy2" and w.data.header.utc_offset_h == -5
    lines = TMY2.read_text().splitlines()[1:]
    sel = [ln for ln in lines if int(ln[3:5]) == 6 and int(ln[5:7]) == 21]
    assert len(sel) == 24 and [int(ln[7:9]) for ln in sel] == list(range(1, 25))
    _, hourly = _hourly(w, "2026-06-21", 24)
    for c, (a, b) in zip(COMPONENTS, ((17, 21), (23, 27), (29, 33)), strict=True):
        np.testing.assert_allclose(hourly[c].to_numpy(), [float(ln[a:b]) for ln in sel], rtol=ENERGY_RTOL, atol=1e-9)


def _write_epw(path: Path, rows: pd.DataFrame) -> None:
    """An EPW (EnergyPlus weather: 8 header lines, 35 fields per hour, hour ending 1..24)
    of the TMY3 rows, written field by field with the csv module."""
    header = [
        ["LOCATION", "GREENSBORO", "NC", "USA", "TMY3", "723170", "36.1", "-79.95", "-5.0", "273.0"],
        ["DESIGN CONDITIONS", "0"], ["TYPICAL/EXTREME PERIODS", "0"], ["GROUND TEMPERATURES", "0"],
        ["HOLIDAYS/DAYLIGHT SAVINGS", "No", "0", "0", "0"], ["COMMENTS 1", "test"], ["COMMENTS 2", "test"],
        ["DATA PERIODS", "1", "1", "Data", "Sunday", " 1/ 1", "12/31"],
    ]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerows(header)
        for r in rows.itertuples():
            fields = [1999, r.month, r.day, r.hour, 60, "?", r.temp, 10.0, 70, 100000, 0, 0, 300,
                      r.ghi, r.dni, r.dhi, 0, 0, 0, 0, 180, r.wind, 5, 5, 20, 7777, 9, 999999999, 20, 0.1, 0, 88,
                      0.2, 0, 1]
            assert len(fields) == 35
            out.writerow(fields)


def test_epw_written_from_the_tmy3_gives_the_same_hours(tmp_path):
    rows = _tmy3_rows()
    epw = tmp_path / "greensboro.epw"
    _write_epw(epw, rows)
    w = _weather(epw)
    assert w.data.format == "epw" and w.data.header.latitude == 36.1
    ref = _weather(TMY3)
    for start in ("2026-06-21", "2026-12-31 12:00"):
        sky_e, _ = _hourly(w, start, 24)
        sky_t, _ = _hourly(ref, start, 24)
        for c in COMPONENTS:
            np.testing.assert_allclose(getattr(sky_e, c), getattr(sky_t, c), rtol=1e-12, atol=1e-9)
        # EPW's and TMY3's temperature are both at the hour end
        np.testing.assert_allclose(sky_e.temp_air_c, sky_t.temp_air_c, atol=1e-12)


def _write_psm(path: Path, rows: pd.DataFrame) -> None:
    """An NSRDB SAM CSV (2 metadata lines, a column header, one row per hour) of the
    TMY3 rows; NSRDB values are instants, so the TMY3 hour [h, h+1) goes to h:30."""
    meta_names = ["Source", "Location ID", "City", "State", "Country", "Latitude", "Longitude", "Time Zone",
                  "Elevation", "Local Time Zone"]
    meta_vals = ["NSRDB", "1", "Greensboro", "NC", "USA", "36.1", "-79.95", "-5", "273", "-5"]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(meta_names)
        out.writerow(meta_vals)
        out.writerow(["Year", "Month", "Day", "Hour", "Minute", "GHI", "DNI", "DHI", "Temperature", "Wind Speed"])
        for r in rows.itertuples():
            out.writerow([2019, r.month, r.day, r.hour - 1, 30, r.ghi, r.dni, r.dhi, r.temp, r.wind])


def test_nsrdb_psm_written_from_the_tmy3_gives_the_same_hours(tmp_path):
    rows = _tmy3_rows()
    psm = tmp_path / "psm.csv"
    _write_psm(psm, rows)
    w = _weather(psm)
    assert w.data.format == "nsrdb_psm" and w.data.step_s == 3600 and w.data.header.timezone == "Etc/GMT+5"
    _, hourly = _hourly(w, "2026-06-21", 24)
    ref = _file_hours(rows, 6, 21)
    for c in COMPONENTS:
        np.testing.assert_allclose(hourly[c].to_numpy(), ref[c].to_numpy(), rtol=ENERGY_RTOL, atol=1e-9)
    # temperature: the row's value at its time stamp h:30
    t = pd.DatetimeIndex([pd.Timestamp(f"2026-06-21 {h:02d}:29", tz="Etc/GMT+5") for h in range(24)])
    np.testing.assert_allclose(w.temp_air_c(t, step_s=120), ref["temp"].to_numpy(), atol=1e-12)


def _write_pvgis_csv(path: Path, rows: pd.DataFrame) -> None:
    """A PVGIS TMY csv (UTC time stamps, SARAH instants at the stamp + the 'Irradiance
    Time Offset') of the TMY3 rows: with an offset of 0.5 h the stamp HH:00 UTC holds the
    hour [HH:00, HH+1:00) UTC, i.e. the TMY3 hour starting 5 h earlier (UTC-5)."""
    vals = rows[["ghi", "dni", "dhi", "temp", "wind"]].to_numpy()
    vals = np.roll(vals, 5, axis=0)  # UTC hour u holds the local hour u - 5 (the year wraps)
    stamps = pd.date_range("2019-01-01 00:00", periods=8760, freq="1h")
    with open(path, "w", newline="") as f:
        f.write("Latitude (decimal degrees): 36.100\r\nLongitude (decimal degrees): -79.950\r\n"
                "Elevation (m): 273.0\r\nIrradiance Time Offset (h): 0.5\r\nmonth,year\r\n")
        for m in range(1, 13):
            f.write(f"{m},2019\r\n")
        f.write("time(UTC),T2m,RH,G(h),Gb(n),Gd(h),IR(h),WS10m,WD10m,SP\r\n")
        for t, (g, b, d, temp, wind) in zip(stamps, vals, strict=True):
            f.write(f"{t:%Y%m%d:%H%M},{temp},70,{g},{b},{d},300,{wind},180,100000\r\n")
        f.write("\r\nT2m: 2-m air temperature (degree Celsius)\r\n")


def test_pvgis_tmy_written_from_the_tmy3_gives_the_same_hours(tmp_path):
    rows = _tmy3_rows()
    pv = tmp_path / "tmy_36.100_-79.950.csv"
    _write_pvgis_csv(pv, rows)
    w = _weather(pv)
    assert w.data.format == "pvgis_tmy" and w.data.header.utc_offset_h == 0.0
    ref = _weather(TMY3)
    s_p, _ = _hourly(w, "2026-06-21", 24)
    s_t, _ = _hourly(ref, "2026-06-21", 24)
    for c in COMPONENTS:
        np.testing.assert_allclose(getattr(s_p, c), getattr(s_t, c), rtol=1e-12, atol=1e-9)
    # PVGIS names no time zone of its site: a run asks for site.timezone
    from runner.launch.prepare import resolve_weather

    raw = {"site": {"weather": {"source": "file", "path": pv.name}}}
    with pytest.raises(ConfigError, match=r"site\.timezone"):
        resolve_weather(validate(raw, base_dir=tmp_path), tmp_path)
    raw["site"]["timezone"] = "America/New_York"
    site, _ = resolve_weather(validate(raw, base_dir=tmp_path), tmp_path)
    assert (site["latitude"], site["timezone"], site["weather"]["format"]) == (36.1, "America/New_York", "pvgis_tmy")


# ---- the study's calendar -------------------------------------------------------------
def test_leap_day_takes_feb_28_and_march_follows():
    """Study year 2028 is a leap year; the TMY3 has no Feb 29: the rule gives Feb 29 the
    file's Feb 28, and Feb 28 / Mar 1 keep their own."""
    w = _weather(TMY3)
    rows = _tmy3_rows()
    _, hourly = _hourly(w, "2028-02-28", 72)
    feb28, mar1 = _file_hours(rows, 2, 28), _file_hours(rows, 3, 1)
    for c in COMPONENTS:
        got = hourly[c].to_numpy()
        ref = np.concatenate([feb28[c], feb28[c], mar1[c]])
        np.testing.assert_allclose(got, ref, rtol=ENERGY_RTOL, atol=1e-9)


def test_year_end_wraps_around_the_file():
    """A study over the new year: Dec 31 from the file's end, Jan 1 from its start, and
    temperature continuous across (linear between the file's Dec 31 24:00 and Jan 1
    01:00 values)."""
    w = _weather(TMY3)
    rows = _tmy3_rows()
    sky, hourly = _hourly(w, "2026-12-31", 48)
    ref = pd.concat([_file_hours(rows, 12, 31), _file_hours(rows, 1, 1)])
    for c in COMPONENTS:
        np.testing.assert_allclose(hourly[c].to_numpy(), ref[c].to_numpy(), rtol=ENERGY_RTOL, atol=1e-9)
    assert np.isfinite(sky.temp_air_c).all()
    # midpoint 2027-01-01 00:30: half way between Dec 31 24:00 and Jan 1 01:00
    t = pd.DatetimeIndex([pd.Timestamp("2027-01-01 00:29", tz="Etc/GMT+5")])
    expect = 0.5 * (rows.iloc[-1]["temp"] + rows.iloc[0]["temp"])
    assert w.temp_air_c(t, step_s=120)[0] == pytest.approx(expect, abs=1e-12)


def test_study_time_zone_with_dst_is_only_a_label():
    """The same instants named in New York time (EDT, UTC-4) give the same values."""
    w = _weather(TMY3)
    a = w.at(pd.date_range(pd.Timestamp("2026-06-21 00:00", tz="Etc/GMT+5"), periods=600, freq="60s"))
    b = w.at(pd.date_range(pd.Timestamp("2026-06-21 01:00", tz="America/New_York"), periods=600, freq="60s"))
    for c in (*COMPONENTS, "temp_air_c", "zenith_deg"):
        np.testing.assert_array_equal(getattr(a, c), getattr(b, c))


# ---- the interpolation ----------------------------------------------------------------
@pytest.mark.parametrize("step_s", [60, 300, 420, 3600])
def test_each_file_hour_keeps_its_irradiation(step_s):
    """Conservation: the steps whose midpoints lie in a file hour carry that hour's
    irradiation, whether or not the steps tile the hour (7-min steps do not); daily
    sums then too. Within rounding (ENERGY_RTOL): the interpolation is built so."""
    w = _weather(TMY3)
    rows = _tmy3_rows()
    start = pd.Timestamp("2026-03-20", tz="Etc/GMT+5")
    n = 3 * 86400 // step_s
    times = pd.date_range(start, periods=n, freq=f"{step_s}s")
    sky = w.at(times)
    mid_h = ((times - start).total_seconds().to_numpy() + step_s / 2) // 3600
    ref = pd.concat([_file_hours(rows, 3, d) for d in (20, 21, 22)])
    for c in COMPONENTS:
        wh = np.bincount(mid_h.astype(int), getattr(sky, c) * step_s / 3600.0, minlength=72)
        np.testing.assert_allclose(wh, ref[c].to_numpy(), rtol=ENERGY_RTOL, atol=1e-9)
        assert wh.reshape(3, 24).sum(axis=1) == pytest.approx(ref[c].to_numpy().reshape(3, 24).sum(axis=1),
                                                               rel=1e-12)
        assert (getattr(sky, c) >= 0).all()


def test_steps_follow_the_clear_sky_at_sunrise_and_sunset():
    """Outside twilight intervals the step irradiance is zero when the sun is down,
    and the minute values do not jump by more than the clear sky's own change allows
    within an hour (a smooth profile, not hourly steps)."""
    w = _weather(TMY3)
    sky, _ = _hourly(w, "2026-06-21", 24)
    down = sky.zenith_deg > 91.0
    assert (sky.ghi[down] == 0).all() and (sky.dni[down] == 0).all()
    up = sky.ghi > 0
    # the largest minute-to-minute change is well below the largest hourly mean
    assert np.abs(np.diff(sky.ghi[up])).max() < 0.25 * sky.ghi.max()


def test_blocks_equal_the_whole_study_bit_for_bit():
    w = _weather(TMY3)
    times = pd.date_range(pd.Timestamp("2026-12-30 07:00", tz="America/New_York"), periods=3 * 1440, freq="60s")
    whole = w.at(times)
    for size in (1440, 15, 1000):
        parts = [w.at(times[a:a + size], step_s=60) for a in range(0, len(times), size)]
        for c in ("ghi", "dni", "dhi", "temp_air_c", "wind_m_per_s", "zenith_deg", "azimuth_deg", "dni_extra"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, c) for p in parts]), getattr(whole, c))


# ---- PV from a file -------------------------------------------------------------------
@pytest.mark.parametrize("month_day", [(6, 21), (3, 21), (12, 10)])
def test_pv_energy_against_pvlib_modelchain_on_the_hourly_data(month_day):
    """One 8 kWp system, tilt 15, south: the daily AC energy of tecosim's 1-min model on
    the file weather against pvlib's ModelChain (PVWatts DC and inverter, isotropic sky,
    physical IAM, SAPM open-rack cell temperature, the same 14 % losses) run on the
    file's 24 hourly rows at the hour midpoints. Differences by construction: tecosim's
    +4 K roof-mount cell temperature (-1.5 % at 1000 W/m2) and hourly vs minute sampling
    of the sun at low elevation. Measured on five days: -0.7 to -1.3 %; asserted: the
    +4 K makes tecosim lower, by less than 2.5 %."""
    month, day = month_day
    w = _weather(TMY3)
    times = pd.date_range(pd.Timestamp(f"2026-{month:02d}-{day:02d}", tz="Etc/GMT+5"), periods=1440, freq="60s")
    sky = w.at(times)
    kwp = 8.0
    pac = profiles.pv_ac_many_kw(np.array([kwp]), np.array([kwp * 1.2]), np.array([15.0]), np.array([180.0]),
                                 sky, np.ones(len(times)))[:, 0]
    ours_kwh = pac.sum() / 60.0

    rows = _file_hours(_tmy3_rows(), month, day)
    mid = pd.date_range(pd.Timestamp(f"2026-{month:02d}-{day:02d} 00:30", tz="Etc/GMT+5"), periods=24, freq="1h")
    weather = pd.DataFrame({"ghi": rows.ghi.to_numpy(), "dni": rows.dni.to_numpy(), "dhi": rows.dhi.to_numpy(),
                            "temp_air": rows.temp.to_numpy(), "wind_speed": rows.wind.to_numpy()}, index=mid)
    prm = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    system = pvlib.pvsystem.PVSystem(
        surface_tilt=15, surface_azimuth=180, albedo=0.2,
        module_parameters={"pdc0": kwp * 1000.0, "gamma_pdc": -0.0037},
        inverter_parameters={"pdc0": kwp * 1.2 * 1000.0 / 0.96, "eta_inv_nom": 0.96},
        temperature_model_parameters=prm,
    )
    loc = pvlib.location.Location(36.1, -79.95, tz="Etc/GMT+5", altitude=273)
    mc = pvlib.modelchain.ModelChain(system, loc, transposition_model="isotropic", aoi_model="physical",
                                     spectral_model="no_loss", losses_model="no_loss")
    mc.run_model(weather)
    dc_loss = 1.0 - 0.14
    # the 14 % loss on DC before the inverter, as tecosim: rerun the inverter on the reduced DC
    pdc = mc.results.dc.clip(lower=0) * dc_loss
    ref_ac = pvlib.inverter.pvwatts(pdc, kwp * 1.2 * 1000.0 / 0.96, eta_inv_nom=0.96).clip(lower=0)
    ref_kwh = float(ref_ac.sum()) / 1000.0
    assert ref_kwh > 5.0
    assert -0.025 < ours_kwh / ref_kwh - 1.0 < 0.0  # measured -0.7 .. -1.3 % (5 days)


# ---- refusing a bad file ----------------------------------------------------------------
def _copy_tmy3(tmp_path: Path) -> list[str]:
    return TMY3.read_text().splitlines(keepends=True)


def _write(tmp_path: Path, lines: list[str], name: str = "bad.csv") -> Path:
    p = tmp_path / name
    p.write_text("".join(lines))
    return p


def test_truncated_file_names_the_last_line(tmp_path):
    lines = _copy_tmy3(tmp_path)[:5000]
    p = _write(tmp_path, lines)
    with pytest.raises(WeatherFileError) as e:
        read_weather_file(p, "tmy3")
    assert e.value.line == 5000 and e.value.column == "Time (HH:MM)" and str(p) in str(e.value)
    assert "4998 data rows" in str(e.value) and "8760" in str(e.value)


def test_line_cut_short_names_line_and_column(tmp_path):
    lines = _copy_tmy3(tmp_path)
    lines[4000] = lines[4000][:40]  # line 4001 ends inside its fields
    p = _write(tmp_path, lines[:4001])
    with pytest.raises(WeatherFileError) as e:
        read_weather_file(p, "tmy3")
    assert e.value.line == 4001 and "cut short" in str(e.value) and e.value.column is not None


def _set_field(line: str, k: int, value: str) -> str:
    f = line.rstrip("\n").split(",")
    f[k] = value
    return ",".join(f) + "\n"


@pytest.mark.parametrize("k, value, column, what", [
    (4, "", "GHI (W/m^2)", "NaN"),
    (4, "1700", "GHI (W/m^2)", "outside the physical range 0..1500"),
    (31, "99.9", "Dry-bulb (C)", "outside the physical range -60..60"),
    (46, "-1", "Wspd (m/s)", "outside the physical range 0..60"),
])
def test_bad_value_names_file_line_and_column(tmp_path, k, value, column, what):
    lines = _copy_tmy3(tmp_path)
    lines[1234] = _set_field(lines[1234], k, value)  # line 1235
    p = _write(tmp_path, lines)
    with pytest.raises(WeatherFileError) as e:
        read_weather_file(p, "tmy3")
    assert (e.value.line, e.value.column) == (1235, column)
    assert what in str(e.value) and str(p) in str(e.value)


def test_rows_out_of_order_are_refused(tmp_path):
    lines = _copy_tmy3(tmp_path)
    lines[101], lines[102] = lines[102], lines[101]  # lines 102 and 103 swapped
    p = _write(tmp_path, lines)
    with pytest.raises(WeatherFileError) as e:
        read_weather_file(p, "tmy3")
    assert e.value.line == 102 and "does not follow" in str(e.value)


def test_garbage_is_refused_with_the_file_named(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("hello\nworld\n")
    with pytest.raises(WeatherFileError, match=r"x\.csv"):
        read_weather_file(p)


# ---- config ---------------------------------------------------------------------------------
def test_default_weather_is_synthetic_and_its_sky_is_profiles():
    site = SiteConfig()
    assert site.weather.source == "synthetic" and site.weather.path is None
    w = weather_of(site)
    assert isinstance(w, SyntheticWeather)
    times = pd.date_range("2026-06-21", periods=60, freq="60s", tz="America/Puerto_Rico")
    a, b = w.at(times), profiles.sky_state(times, site)
    np.testing.assert_array_equal(a.ghi, b.ghi)
    np.testing.assert_array_equal(w.temp_air_c(times), b.temp_air_c)
    assert (a.wind_m_per_s == 2.0).all()


def test_config_file_source_needs_an_existing_path(tmp_path):
    with pytest.raises(ConfigError, match=r"site\.weather\.path"):
        validate({"site": {"weather": {"source": "file"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        validate({"site": {"weather": {"source": "file", "path": "none.csv"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"only used with site\.weather\.source: file"):
        validate({"site": {"weather": {"path": "x.csv"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"site\.weather\.format"):
        validate({"site": {"weather": {"source": "file", "path": "x.csv", "format": "csv"}}}, base_dir=tmp_path)
    shutil.copy(TMY3, tmp_path / "w.csv")
    cfg = validate({"site": {"weather": {"source": "file", "path": "w.csv"}}}, base_dir=tmp_path)
    assert cfg.site.weather.format == "auto"


def test_coordinates_from_the_header_unless_the_config_sets_them(tmp_path):
    shutil.copy(TMY3, tmp_path / "w.csv")
    header = read_weather_file(tmp_path / "w.csv").header
    cfg = validate({"site": {"weather": {"source": "file", "path": "w.csv"}}}, base_dir=tmp_path)
    v = site_values(cfg.site, header)
    assert (v.latitude, v.longitude, v.altitude_m, v.timezone) == (36.1, -79.95, 273.0, "Etc/GMT+5")
    assert set(v.source.values()) == {"file"}
    cfg = validate({"site": {"latitude": 36.0, "timezone": "America/New_York",
                             "weather": {"source": "file", "path": "w.csv"}}}, base_dir=tmp_path)
    v = site_values(cfg.site, header)
    assert (v.latitude, v.longitude, v.timezone) == (36.0, -79.95, "America/New_York")
    assert v.source["latitude"] == "config" and v.source["longitude"] == "file"


def test_example_config_validates_and_resolves_the_shipped_file():
    from federates.common.config import load_config
    from runner.launch import check_weather

    cfg = load_config(REPO / "configs" / "tmy3_year.yaml")
    assert cfg.site.weather.source == "file"
    said = check_weather(cfg, REPO / "configs")
    assert "723170TYA.CSV (tmy3) at 36.1, -79.95, America/New_York" == said
    assert (REPO / "data" / "weather" / "723170TYA.CSV").read_bytes() == TMY3.read_bytes()


def test_tmy2_line_cut_short_names_its_field(tmp_path):
    lines = TMY2.read_text().splitlines(keepends=True)
    lines[10] = lines[10][:20] + "\n"  # line 11 ends inside GHI (characters 18-21)
    p = _write(tmp_path, lines, "bad.tm2")
    with pytest.raises(WeatherFileError) as e:
        read_weather_file(p)
    assert (e.value.line, e.value.column) == (11, "GHI") and "cut short" in str(e.value)


def test_cli_refuses_a_bad_weather_file_with_exit_2(tmp_path):
    from tests.conftest import tecosim

    lines = TMY3.read_text().splitlines(keepends=True)
    lines[1234] = _set_field(lines[1234], 4, "1700")
    bad = _write(tmp_path, lines)
    r = tecosim("validate", str(REPO / "configs" / "tmy3_year.yaml"), "--set", f"site.weather.path={bad}")
    assert r.returncode == 2
    assert f"{bad}, line 1235, column 'GHI (W/m^2)': 1700 outside the physical range" in r.stderr


def test_a_whole_leap_year_at_hourly_steps_holds_the_files_year_plus_feb_28():
    """366 days of 2028 at 1-h steps: every file hour once, Feb 28's twice (leap day
    rule), so the year's irradiation is the file's plus Feb 28's (conservation)."""
    w = _weather(TMY3)
    rows = _tmy3_rows()
    times = pd.date_range(pd.Timestamp("2028-01-01", tz="Etc/GMT+5"), periods=366 * 24, freq="3600s")
    sky = w.at(times)
    feb28 = _file_hours(rows, 2, 28)
    for c in COMPONENTS:
        assert getattr(sky, c).sum() == pytest.approx(rows[c].sum() + feb28[c].sum(), rel=1e-12)
    assert np.isfinite(sky.temp_air_c).all() and (sky.wind_m_per_s >= 0).all()
