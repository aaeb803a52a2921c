"""Measured load profiles (federates/prosumers/measured.py): layouts, units, time zones,
gaps and the energy-preserving resampling, checked against hand computations and the
conservation of each source interval's energy; bad files give errors naming the file,
line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federates.common.config import validate
from federates.common.errors import ConfigError
from federates.prosumers.measured import ProfileSpec, interval_means, read_measured, study_span_ns

START = "2026-06-21T06:00:00-04:00"
MIN_NS = 60 * 10**9


def _long(path: Path, times: pd.DatetimeIndex, data: dict[str, np.ndarray], col: str = "load_kw",
          pv: dict[str, np.ndarray] | None = None, fmt: str = "%Y-%m-%dT%H:%M:%S%z") -> Path:
    stamps = [t.strftime(fmt) for t in times]
    stamps = [s[:-2] + ":" + s[-2:] if fmt.endswith("%z") else s for s in stamps]
    frames = []
    for name, v in data.items():
        f = pd.DataFrame({"time": stamps, "customer": name, col: v})
        if pv is not None:
            f["pv_kw"] = pv.get(name, np.nan)
        frames.append(f)
    df = pd.concat(frames, ignore_index=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def _steps(start: str, hours: float, step_s: int = 60) -> np.ndarray:
    s0, s1 = study_span_ns(start, hours * 3600)
    return np.arange(s0, s1 + 1, step_s * 10**9, dtype=np.int64)


QUARTERS = pd.date_range("2026-06-21T00:00:00-04:00", periods=96, freq="15min")
RNG = np.random.default_rng(3)
LOADS = {"h1": np.round(RNG.uniform(0.2, 4.0, 96), 3), "h2": np.round(RNG.uniform(0.2, 4.0, 96), 3)}


# ---------------------------------------------------------------- resampling
def test_15min_to_1min_gives_each_source_value_exactly_and_keeps_energy(tmp_path):
    f = _long(tmp_path / "p.csv", QUARTERS, LOADS)
    s0, s1 = study_span_ns(START, 4 * 3600)
    m = read_measured(ProfileSpec(path=f), s0, s1)
    load, pv = m.block(_steps(START, 4))
    assert pv is None and load.shape == (240, 2)
    src = np.column_stack([LOADS["h1"], LOADS["h2"]])[24:40]  # 06:00 .. 10:00 local
    assert np.array_equal(load, np.repeat(src, 15, axis=0))  # bit for bit
    # energy of every source interval [kWh]: its 15 steps' energy
    step_e = load.reshape(16, 15, 2).sum(axis=1) / 60.0
    np.testing.assert_allclose(step_e, src * 0.25, rtol=1e-14)


def test_1s_to_1min_keeps_the_energy_of_every_source_interval():
    rng = np.random.default_rng(1)
    src = rng.uniform(0.0, 5.0, (3 * 3600, 2))  # 3 h of 1-s kW
    t0 = study_span_ns(START, 1)[0]
    edges = t0 + np.arange(0, 181) * MIN_NS
    out = interval_means(src, t0, 10**9, edges)
    # each minute's energy [kW s] is the sum of its 60 source seconds' energies
    np.testing.assert_allclose(out * 60.0, src.reshape(180, 60, 2).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose((out * 60.0).sum(axis=0), src.sum(axis=0), rtol=1e-12)


def test_steps_that_straddle_source_intervals_get_the_overlap_weighted_mean():
    # hand computation: 15-min source 1, 2, 3 kW; 7-min steps from 00:00
    src = np.array([[1.0], [2.0], [3.0]])
    edges = np.arange(0, 43, 7) * MIN_NS
    out = interval_means(src, 0, 15 * MIN_NS, edges)[:, 0]
    want = [1.0, 1.0, (1 * 1 + 2 * 6) / 7, (2 * 7) / 7, (2 * 2 + 3 * 5) / 7, 3.0]
    np.testing.assert_allclose(out, want, rtol=1e-15)
    np.testing.assert_allclose((out * 7).sum(), 1 * 15 + 2 * 15 + 3 * 12, rtol=1e-15)


# ---------------------------------------------------------------- units and layouts
@pytest.mark.parametrize(("col", "factor"), [("load_kw", 1.0), ("load_w", 1000.0), ("load_kwh", 0.25),
                                             ("load_wh", 250.0), ("LOAD_KW", 1.0)])
def test_units_from_the_column_name(tmp_path, col, factor):
    f = _long(tmp_path / "p.csv", QUARTERS, {k: v * factor for k, v in LOADS.items()}, col=col)
    s0, s1 = study_span_ns(START, 2 * 3600)
    load, _ = read_measured(ProfileSpec(path=f), s0, s1).block(_steps(START, 2))
    np.testing.assert_allclose(load[::15, 0], LOADS["h1"][24:32], rtol=1e-12)


def test_units_field_for_a_bare_column_and_its_contradiction(tmp_path):
    f = _long(tmp_path / "p.csv", QUARTERS, {k: v * 1000 for k, v in LOADS.items()}, col="load")
    s0, s1 = study_span_ns(START, 3600)
    load, _ = read_measured(ProfileSpec(path=f, units="W"), s0, s1).block(_steps(START, 1))
    np.testing.assert_allclose(load[::15, 1], LOADS["h2"][24:28], rtol=1e-12)
    with pytest.raises(ConfigError, match=r"column load: names no unit.*load_kw, load_w, load_kwh, load_wh"):
        read_measured(ProfileSpec(path=f), s0, s1)
    g = _long(tmp_path / "q.csv", QUARTERS, LOADS, col="load_kw")
    with pytest.raises(ConfigError, match=r"column load_kw: is in kW, but prosumers.profiles.units is Wh"):
        read_measured(ProfileSpec(path=g, units="Wh"), s0, s1)


def test_wide_and_parquet_layouts_equal_the_long_csv(tmp_path):
    s0, s1 = study_span_ns(START, 3 * 3600)
    pv = {"h1": np.round(RNG.uniform(0, 5, 96), 3)}
    ref = read_measured(ProfileSpec(path=_long(tmp_path / "a.csv", QUARTERS, LOADS, pv=pv)), s0, s1)
    ref_load, ref_pv = ref.block(_steps(START, 3))
    stamps = [t.isoformat() for t in QUARTERS]
    wide = pd.DataFrame({"time": stamps, **LOADS, "pv_h1": pv["h1"]})
    wide.to_csv(tmp_path / "w.csv", index=False)
    wide.to_parquet(tmp_path / "w.parquet", index=False)
    _long(tmp_path / "l.parquet", QUARTERS, LOADS, pv=pv)
    pd.DataFrame({"time": stamps, "h1": pv["h1"]}).to_csv(tmp_path / "pv.csv", index=False)
    wide.drop(columns="pv_h1").to_csv(tmp_path / "w2.csv", index=False)
    for spec in (ProfileSpec(path=tmp_path / "w.csv", units="kW"), ProfileSpec(path=tmp_path / "w.parquet", units="kW"),
                 ProfileSpec(path=tmp_path / "l.parquet"),
                 ProfileSpec(path=tmp_path / "w2.csv", units="kW", pv_path=tmp_path / "pv.csv")):
        m = read_measured(spec, s0, s1)
        load, pv_kw = m.block(_steps(START, 3))
        assert m.customers == ["h1", "h2"], spec
        assert list(m.has_pv) == [True, False], spec
        assert np.array_equal(load, ref_load) and np.array_equal(pv_kw, ref_pv), spec
        assert m.pv_peak_kw()[0] == pv["h1"].max()
    with pytest.raises(ConfigError, match=r"prosumers\.profiles\.units: a wide file's customer columns carry no unit"):
        read_measured(ProfileSpec(path=tmp_path / "w.csv"), s0, s1)


# ---------------------------------------------------------------- gaps
def _gappy(tmp_path) -> Path:
    """h1 misses the row of 07:00 and has an empty value at 08:15 and 08:30 (local)."""
    v = dict(LOADS)
    h1 = v["h1"].astype(float).copy()
    h1[[33, 34]] = np.nan
    v["h1"] = h1
    f = _long(tmp_path / "g.csv", QUARTERS, v)
    lines = f.read_text().splitlines()
    f.write_text("\n".join(x for x in lines if not x.startswith("2026-06-21T07:00:00-04:00,h1")) + "\n")
    return f


@pytest.mark.parametrize("rule", ["linear", "previous", "zero"])
def test_each_gap_fill_rule(tmp_path, rule):
    f = _gappy(tmp_path)
    s0, s1 = study_span_ns(START, 4 * 3600)
    m = read_measured(ProfileSpec(path=f, gap_fill=rule), s0, s1)
    load, _ = m.block(_steps(START, 4))
    q = load[::15, 0]  # per quarter from 06:00 (index 24 of the day)
    x = LOADS["h1"]
    want = {"linear": (x[27] + x[29]) / 2, "previous": x[27], "zero": 0.0}[rule]
    assert q[28 - 24] == pytest.approx(want, rel=1e-12)
    want2 = {"linear": (x[32] + (x[35] - x[32]) / 3, x[32] + 2 * (x[35] - x[32]) / 3),
             "previous": (x[32], x[32]), "zero": (0.0, 0.0)}[rule]
    np.testing.assert_allclose(q[[33 - 24, 34 - 24]], want2, rtol=1e-12)
    assert np.array_equal(load[:, 1], np.repeat(LOADS["h2"][24:40], 15))  # h2 untouched
    (g,) = m.gaps
    assert (g.customer, g.series, g.missing_intervals, g.longest_gap_s) == ("h1", "load", 3, 1800.0)
    assert g.longest_from == "2026-06-21T12:15:00+00:00"


def test_gap_fill_error_and_max_gap(tmp_path):
    f = _gappy(tmp_path)
    s0, s1 = study_span_ns(START, 4 * 3600)
    with pytest.raises(ConfigError, match=r"customer h1, load: 3 missing interval\(s\) from 2026-06-21T11:00"):
        read_measured(ProfileSpec(path=f, gap_fill="error"), s0, s1)
    with pytest.raises(ConfigError, match=r"a gap of 1800 s from 2026-06-21T12:15.*max_gap = 900 s"):
        read_measured(ProfileSpec(path=f, max_gap_s=900), s0, s1)
    # a gap outside the study (and its margin) is neither reported nor an error
    late = study_span_ns("2026-06-21T12:00:00-04:00", 3600)
    assert read_measured(ProfileSpec(path=f, gap_fill="error"), *late).gaps == []


# ---------------------------------------------------------------- time zones
def test_naive_local_times_over_the_end_of_dst(tmp_path):
    # New York, 2026-11-01: 01:00-02:00 local comes twice (EDT, then EST); 15-min rows
    # written by a logger in local time, the repeated hour in file order
    utc = pd.date_range("2026-11-01T04:00:00Z", "2026-11-01T08:45:00Z", freq="15min")
    local = utc.tz_convert("America/New_York").tz_localize(None)
    v = np.arange(len(utc), dtype=float) + 1.0
    f = tmp_path / "ny.csv"
    pd.DataFrame({"time": local.strftime("%Y-%m-%d %H:%M"), "customer": "h", "load_kw": v}).to_csv(f, index=False)
    assert pd.read_csv(f)["time"].duplicated().sum() == 4  # the repeated hour
    s0, s1 = study_span_ns("2026-11-01T00:00:00-04:00", 5 * 3600)
    m = read_measured(ProfileSpec(path=f, timezone="America/New_York"), s0, s1)
    load, _ = m.block(s0 + np.arange(0, 5 * 4 + 1) * 15 * MIN_NS)
    assert m.gaps == []
    assert np.array_equal(load[:, 0], v[:20])  # every UTC quarter in order: no hour lost or doubled
    with pytest.raises(ConfigError, match=r"line 2, column time: '2026-11-01 00:00' has no UTC offset"):
        read_measured(ProfileSpec(path=f), s0, s1)
    # spring forward: 02:30 does not exist
    g = tmp_path / "spring.csv"
    g.write_text("time,customer,load_kw\n2026-03-08 01:45,h,1\n2026-03-08 02:30,h,1\n2026-03-08 03:00,h,1\n")
    with pytest.raises(ConfigError, match=r"line 3, column time: '2026-03-08 02:30' does not exist in America/New_York"):
        read_measured(ProfileSpec(path=g, timezone="America/New_York"), s0, s1)


def test_offsets_that_change_with_dst_and_end_labels(tmp_path):
    utc = pd.date_range("2026-11-01T04:00:00Z", periods=24, freq="15min")
    stamps = utc.tz_convert("America/New_York")
    v = np.arange(24.0)
    f = tmp_path / "aware.csv"
    pd.DataFrame({"time": [t.isoformat() for t in stamps], "customer": "h", "load_kw": v}).to_csv(f, index=False)
    s0, _ = study_span_ns("2026-11-01T00:00:00-04:00", 1)
    edges = s0 + np.arange(0, 21) * 15 * MIN_NS
    load, _ = read_measured(ProfileSpec(path=f), s0, int(edges[-1])).block(edges)
    assert np.array_equal(load[:, 0], v[:20])
    # label: end: the row at 00:15 is the interval 00:00-00:15
    e0 = int(edges[1])
    load, _ = read_measured(ProfileSpec(path=f, label="end"), e0 - 15 * MIN_NS, int(edges[-1])).block(edges[:20])
    assert np.array_equal(load[:, 0], v[1:20])


# ---------------------------------------------------------------- bad files
@pytest.mark.parametrize(("text", "match"), [
    ("time,customer\n2026-06-21T00:00-04:00,h\n", r"(?s)p.csv: 1 problem.*columns: no load column"),
    ("time,customer,load_mw\n2026-06-21T00:00-04:00,h,1\n", r"column load_mw: unknown unit 'mw'.*load_kw, load_w"),
    ("time,customer,load_kw\n2026-06-21T00:00-04:00,h,1\nyesterday,h,1\n",
     r"line 3, column time: 'yesterday' is not a timestamp"),
    ("# a comment\ntime,customer,load_kw\n2026-06-21T00:00-04:00,h,1\n2026-06-21T00:15-04:00,h,-0.5\n",
     r"line 4, column load_kw: -0.5 is negative"),
    ("time,customer,load_kw\n2026-06-21T00:00-04:00,h,1\n2026-06-21T00:15-04:00,h,abc\n",
     r"line 3, column load_kw: 'abc' is not a number"),
    ("time,customer,load_kw\n2026-06-21T06:00-04:00,h,1\n2026-06-21T06:15-04:00,h,1\n2026-06-21T06:00-04:00,h,2\n"
     "2026-06-21T10:00-04:00,h,1\n",
     r"line 4, column time: '2026-06-21T06:00-04:00' is given twice for customer 'h'"),
    ("time,customer,load_kw,tariff\n2026-06-21T00:00-04:00,h,1,2\n", r"column tariff: unknown column"),
    ("time,customer,load_kw\n2026-06-21T00:00-04:00,h,1\n2026-06-21T00:15-04:00,h,1\n2026-06-21T00:30-04:00,h,1\n"
     "2026-06-21T00:40-04:00,h,1\n2026-06-21T00:45-04:00,h,1\n",
     r"line 5, column time: '2026-06-21T00:40-04:00' is off the file's 900 s grid"),
    ("time,customer,load_kw\n2026-06-21T06:00-04:00,h,1\n2026-06-21T06:15-04:00,h,1\n",
     r"time: covers 2026-06-21T10:00:00\+00:00 to 2026-06-21T10:30:00\+00:00, but the study runs "
     r"2026-06-21T10:00:00\+00:00 to 2026-06-21T14:00:00\+00:00: missing 2026-06-21T10:30:00\+00:00 to "
     r"2026-06-21T14:00:00\+00:00"),
])
def test_bad_files_name_file_line_and_column(tmp_path, text, match):
    f = tmp_path / "p.csv"
    f.write_text(text)
    s0, s1 = study_span_ns(START, 4 * 3600)
    with pytest.raises(ConfigError, match=match) as e:
        read_measured(ProfileSpec(path=f), s0, s1)
    assert str(f) in str(e.value)


def test_fewer_profiles_than_prosumers_and_reuse(tmp_path):
    f = _long(tmp_path / "p.csv", QUARTERS, LOADS)
    s0, s1 = study_span_ns(START, 3600)
    with pytest.raises(ConfigError, match=r"prosumers.profiles.reuse: the file has 2 load series for 3 prosumers"):
        read_measured(ProfileSpec(path=f), s0, s1, count=3)
    m = read_measured(ProfileSpec(path=f, reuse=True), s0, s1, count=3)
    assert m.customers == ["h1", "h2", "h1"]
    load, _ = m.block(_steps(START, 1))
    assert np.array_equal(load[:, 0], load[:, 2])
    with pytest.raises(ConfigError, match=r"customer: no load series for h9"):
        read_measured(ProfileSpec(path=f), s0, s1, customers=["h1", "h9"])


def test_config_fields_and_missing_file(tmp_path):
    f = _long(tmp_path / "p.csv", QUARTERS, LOADS)
    cfg = validate({"prosumers": {"profiles": "p.csv"}}, base_dir=tmp_path)
    assert cfg.prosumers.profiles.path == str(f) and cfg.prosumers.profiles.max_gap_s == 3600.0
    cfg = validate({"prosumers": {"profiles": {"path": str(f), "max_gap": "2h", "gap_fill": "zero"}}})
    assert cfg.prosumers.profiles.max_gap_s == 7200.0
    with pytest.raises(ConfigError, match=r"prosumers.profiles.path: no such file: .*nope.csv"):
        validate({"prosumers": {"profiles": "nope.csv"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"prosumers.profiles.units"):
        validate({"prosumers": {"profiles": {"path": str(f), "units": "MW"}}})
    with pytest.raises(ConfigError, match=r"prosumers.profiles.timezone: .*unknown time zone 'Mars/Base'"):
        validate({"prosumers": {"profiles": {"path": str(f), "timezone": "Mars/Base"}}})
    with pytest.raises(ConfigError, match=r"prosumers.sites: no such file"):
        validate({"prosumers": {"sites": "sites.csv"}}, base_dir=tmp_path)


def test_a_long_parquet_file_read_for_some_customers_gives_their_series(tmp_path):
    f = _long(tmp_path / "l.parquet", QUARTERS, {**LOADS, "h3": LOADS["h1"] * 2})
    s0, s1 = study_span_ns(START, 3600)
    whole, _ = read_measured(ProfileSpec(path=f), s0, s1).block(_steps(START, 1))
    some = read_measured(ProfileSpec(path=f), s0, s1, customers=["h3", "h1"], skip_others=True)
    load, _ = some.block(_steps(START, 1))
    assert some.load.customers == ["h3", "h1"]  # only these were read
    assert np.array_equal(load, whole[:, [2, 0]])


def test_naive_parquet_timestamps_with_a_stated_zone(tmp_path):
    # the same instants as the long CSV's, stored as naive local Parquet timestamps
    local = QUARTERS.tz_localize(None)
    f = tmp_path / "naive.parquet"
    pd.DataFrame({"time": local, **LOADS}).to_parquet(f, index=False)
    s0, s1 = study_span_ns(START, 2 * 3600)
    ref, _ = read_measured(ProfileSpec(path=_long(tmp_path / "a.csv", QUARTERS, LOADS)), s0, s1).block(_steps(START, 2))
    got, _ = read_measured(ProfileSpec(path=f, units="kW", timezone="America/Puerto_Rico"), s0, s1).block(
        _steps(START, 2))
    assert np.array_equal(got, ref)
    with pytest.raises(ConfigError, match=r"row 1, column time: .* has no UTC offset"):
        read_measured(ProfileSpec(path=f, units="kW"), s0, s1)


def test_a_1s_file_of_energies_read_and_averaged_to_minutes_keeps_every_interval_energy(tmp_path):
    # 1-s energy per interval in Wh (a fast logger), 2 h, wide; the minutes' energy [kWh]
    # must be the sum of their 60 source energies, and the total the file's total
    rng = np.random.default_rng(5)
    t = pd.date_range(START, periods=2 * 3600, freq="1s")
    wh = np.round(rng.uniform(0.0, 1.5, (len(t), 2)), 4)  # up to 5.4 kW
    f = tmp_path / "fast.csv"
    pd.DataFrame({"time": [x.isoformat() for x in t], "a": wh[:, 0], "b": wh[:, 1]}).to_csv(f, index=False)
    s0, s1 = study_span_ns(START, 2 * 3600)
    m = read_measured(ProfileSpec(path=f, units="Wh", max_gap_s=0), s0, s1)
    assert m.load.res_ns == 10**9 and m.gaps == []
    load, _ = m.block(_steps(START, 2))
    minute_kwh = load / 60.0
    np.testing.assert_allclose(minute_kwh, wh.reshape(120, 60, 2).sum(axis=1) / 1000.0, rtol=1e-12)
    np.testing.assert_allclose(minute_kwh.sum(axis=0), wh.sum(axis=0) / 1000.0, rtol=1e-12)
