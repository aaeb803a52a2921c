"""Time-varying tariffs (federates/common/tariff.py): the TOU period of each local hour
across a DST change and the weekend, the coverage errors, the time-weighted mean of a
dynamic CSV series over the market intervals, and the errors for bad input. Every
expected price below is worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import load_config, validate
from federates.common.errors import ConfigError
from federates.common.tariff import Tariff, parse_hours
from tests.conftest import DEFAULT, REPO

WEEKDAY_OFF = {"name": "weekday_off", "hours": ["21-16"], "days": ["weekday"],
               "retail_usd_per_kwh": 0.20, "feed_in_usd_per_kwh": 0.05}
WEEKDAY_PEAK = {"name": "weekday_peak", "hours": ["16-21"], "days": ["weekday"],
                "retail_usd_per_kwh": 0.40, "feed_in_usd_per_kwh": 0.10}
WEEKEND = {"name": "weekend", "hours": ["0-24"], "days": ["weekend"],
           "retail_usd_per_kwh": 0.15, "feed_in_usd_per_kwh": 0.04}


def _study(start: str, duration: str, interval: str, tariff: dict, tz: str = "America/New_York",
           base_dir=REPO) -> object:
    raw = {"study": {"start": start, "duration": duration, "market_interval": interval, "physics_step": "1min"},
           "site": {"timezone": tz}, "market": {"tariff": tariff}}
    return validate(raw, base_dir=base_dir)


def _tou(*periods: dict, **extra) -> dict:
    return {"kind": "tou", "periods": list(periods), **extra}


# ---- TOU ------------------------------------------------------------------------------

def test_parse_hours_wraps_past_midnight():
    assert parse_hours("16-21") == [16, 17, 18, 19, 20]
    assert parse_hours("22-2") == [22, 23, 0, 1]
    assert parse_hours("0-24") == list(range(24))
    for bad in ("16", "a-b", "3-25", "24-3"):
        with pytest.raises(ValueError):
            parse_hours(bad)


def test_tou_periods_follow_local_time_across_the_dst_change_and_the_weekend():
    # Saturday 2026-03-07 00:00 EST (UTC-5), 72 one-hour intervals. New York springs
    # forward on Sunday 2026-03-08 at 02:00 (EST -> EDT): Sunday has 23 local hours.
    cfg = _study("2026-03-07T00:00:00-05:00", "72h", "1h", _tou(WEEKDAY_OFF, WEEKDAY_PEAK, WEEKEND))
    r = cfg.tariff.retail_usd_per_kwh
    f = cfg.tariff.feed_in_usd_per_kwh
    # Saturday: k 0..23; Sunday: k 24..46 (local 00, 01, then 03..23 EDT)
    assert (r[:47] == 0.15).all() and (f[:47] == 0.04).all()
    # Monday 00:00 EDT = 04:00 UTC = Saturday 05:00 UTC + 47 h: k = 47. The peak
    # 16:00-21:00 EDT is k = 47+16 .. 47+20 = 63..67 (without the DST change it would
    # have been 64..68).
    peak = np.zeros(72, dtype=bool)
    peak[63:68] = True
    assert (r[47:][~peak[47:]] == 0.20).all() and (f[47:][~peak[47:]] == 0.05).all()
    assert (r[peak] == 0.40).all() and (f[peak] == 0.10).all()
    assert r[62] == 0.20 and r[68] == 0.20


def test_a_holiday_is_a_weekend_unless_a_period_names_it():
    # Monday 2026-03-09 (EDT): a holiday priced as a weekend day by default
    start, dur = "2026-03-09T00:00:00-04:00", "24h"
    cfg = _study(start, dur, "1h", _tou(WEEKDAY_OFF, WEEKDAY_PEAK, WEEKEND, holidays=["2026-03-09"]))
    assert (cfg.tariff.retail_usd_per_kwh == 0.15).all()
    own = {"name": "holiday", "hours": ["0-24"], "days": ["holiday"],
           "retail_usd_per_kwh": 0.12, "feed_in_usd_per_kwh": 0.03}
    cfg = _study(start, dur, "1h", _tou(WEEKDAY_OFF, WEEKDAY_PEAK, WEEKEND, own, holidays=["2026-03-09"]))
    assert (cfg.tariff.retail_usd_per_kwh == 0.12).all()
    # the next day is no holiday: its peak is back
    cfg = _study("2026-03-10T00:00:00-04:00", dur, "1h",
                 _tou(WEEKDAY_OFF, WEEKDAY_PEAK, WEEKEND, own, holidays=["2026-03-09"]))
    assert list(np.flatnonzero(cfg.tariff.retail_usd_per_kwh == 0.40)) == [16, 17, 18, 19, 20]


def test_seasons_by_month_and_an_interval_across_a_period_boundary_gets_the_time_weighted_mean():
    summer_peak = {**WEEKDAY_PEAK, "name": "summer_peak", "days": ["weekday", "weekend"], "months": [6, 7, 8, 9]}
    summer_off = {**WEEKDAY_OFF, "name": "summer_off", "days": ["weekday", "weekend"], "months": [6, 7, 8, 9]}
    rest = {**WEEKEND, "name": "rest", "days": ["weekday", "weekend"], "months": [1, 2, 3, 4, 5, 10, 11, 12]}
    # 40-min intervals from 15:00 EDT on Sunday 2026-06-21: k=1 spans 15:40-16:20, 20
    # min off peak and 20 min in the peak: (0.20 + 0.40) / 2 = 0.30 retail, (0.05 +
    # 0.10) / 2 = 0.075 feed-in; k=0 is off peak, k=2 (16:20-17:00) in the peak.
    cfg = _study("2026-06-21T15:00:00-04:00", "2h", "40min", _tou(summer_peak, summer_off, rest))
    np.testing.assert_allclose(cfg.tariff.retail_usd_per_kwh, [0.20, 0.30, 0.40], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cfg.tariff.feed_in_usd_per_kwh, [0.05, 0.075, 0.10], rtol=0, atol=1e-15)
    # October: the rest of the year's price all day
    cfg = _study("2026-10-05T15:00:00-04:00", "2h", "40min", _tou(summer_peak, summer_off, rest))
    assert (cfg.tariff.retail_usd_per_kwh == 0.15).all()


def test_tou_coverage_errors_name_the_uncovered_and_doubly_covered_hours():
    off = {**WEEKDAY_OFF, "hours": ["0-15", "20-24"]}  # 15 uncovered, 20 also in the peak
    with pytest.raises(ConfigError) as e:
        _study("2026-06-22T00:00:00-04:00", "1h", "15min", _tou(off, WEEKDAY_PEAK))
    msg = str(e.value)
    assert "weekday hour 15 of months 1-12: covered by no period" in msg
    assert "weekday hour 20 of months 1-12: covered by 2 periods (weekday_off, weekday_peak)" in msg
    assert "weekend hours 0-23 of months 1-12: covered by no period" in msg
    with pytest.raises(ConfigError, match="covered by no period"):  # a holiday period must cover its day
        half = {"name": "h", "hours": ["0-12"], "days": ["holiday"], "retail_usd_per_kwh": 0.1,
                "feed_in_usd_per_kwh": 0.0}
        _study("2026-06-22T00:00:00-04:00", "1h", "15min", _tou(WEEKDAY_OFF, WEEKDAY_PEAK, WEEKEND, half))


def test_tou_feed_in_at_or_above_retail_and_negative_prices_are_refused():
    bad = {**WEEKEND, "feed_in_usd_per_kwh": 0.15}
    with pytest.raises(ConfigError, match=r"feed-in not below retail in intervals 0, 1, 2, 3"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", _tou(WEEKDAY_OFF, WEEKDAY_PEAK, bad))
    neg = {**WEEKEND, "feed_in_usd_per_kwh": -0.02}
    with pytest.raises(ConfigError, match="allow_negative_prices"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", _tou(WEEKDAY_OFF, WEEKDAY_PEAK, neg))
    cfg = _study("2026-06-21T00:00:00-04:00", "1h", "15min",
                 _tou(WEEKDAY_OFF, WEEKDAY_PEAK, neg, allow_negative_prices=True))
    assert (cfg.tariff.feed_in_usd_per_kwh == -0.02).all()


def test_fields_of_another_kind_are_refused():
    with pytest.raises(ConfigError, match="path belongs to a dynamic tariff"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "flat", "path": "x.csv"})
    with pytest.raises(ConfigError, match="a tou tariff needs periods"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "tou"})


# ---- flat -----------------------------------------------------------------------------

def test_flat_default_holds_exactly_the_two_fields():
    cfg = load_config(DEFAULT)
    t = cfg.tariff
    assert t.kind == "flat" and t.n_intervals == 96
    assert (t.retail_usd_per_kwh == 0.26).all() and (t.feed_in_usd_per_kwh == 0.08).all()
    assert type(t.retail(5)) is float and t.retail(5) == 0.26
    table = t.table()
    assert list(table.columns) == ["interval", "t_s", "retail_usd_per_kwh", "feed_in_usd_per_kwh"]
    assert table["t_s"].iloc[3] == 2700.0
    back = Tariff.from_table(table, 900.0)
    assert np.array_equal(back.retail_usd_per_kwh, t.retail_usd_per_kwh)


def test_tou_yaml_has_its_evening_peak():
    cfg = load_config(REPO / "configs" / "tou.yaml")
    r = cfg.tariff.retail_usd_per_kwh
    # 15-min intervals from 00:00 local: 16:00-21:00 is k 64..83
    assert list(np.flatnonzero(r == 0.42)) == list(range(64, 84))
    assert (np.delete(r, np.arange(64, 84)) == 0.21).all()


# ---- dynamic --------------------------------------------------------------------------

def _csv(tmp_path, text: str, name: str = "prices.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_dynamic_csv_time_weighted_mean_over_each_interval(tmp_path):
    # 10-min prices from 00:00 (UTC-4), 15-min intervals:
    #   k=0 [00:00, 00:15): 10 min at row 1 and 5 min at row 2
    #       retail (10*0.30 + 5*0.60)/15 = 0.40, feed-in (10*0.06 + 5*0.12)/15 = 0.08
    #   k=1 [00:15, 00:30): 5 min at row 2, 10 min at row 3 -> (5*0.60 + 10*0.15)/15 = 0.30,
    #       feed-in (5*0.12 + 10*0.03)/15 = 0.06
    #   k=2 [00:30, 00:45): 10 min at row 4, 5 min at row 5 -> (10*0.24 + 5*0.24)/15 = 0.24
    #       exactly (equal prices), feed-in likewise 0.09
    #   k=3 [00:45, 01:00): 5 min at row 5 (0.24) and 10 min at row 6, the last, which
    #       holds one resolution (10 min) -> (5*0.24 + 10*0.36)/15 = 0.32; feed-in
    #       (5*0.09 + 10*0.0)/15 = 0.03
    p = _csv(tmp_path, "time,retail_usd_per_kwh,feed_in_usd_per_kwh\n"
             "2026-06-21T00:00:00-04:00,0.30,0.06\n"
             "2026-06-21T00:10:00-04:00,0.60,0.12\n"
             "2026-06-21T04:20:00Z,0.15,0.03\n"  # the same instant as 00:20-04:00
             "2026-06-21T00:30:00-04:00,0.24,0.09\n"
             "2026-06-21T00:40:00-04:00,0.24,0.09\n"
             "\n"
             "2026-06-21T00:50:00-04:00,0.36,0.0\n")
    cfg = _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "dynamic", "path": p.name},
                 base_dir=tmp_path)
    np.testing.assert_allclose(cfg.tariff.retail_usd_per_kwh, [0.40, 0.30, 0.24, 0.32], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cfg.tariff.feed_in_usd_per_kwh, [0.08, 0.06, 0.09, 0.03], rtol=0, atol=1e-15)
    assert cfg.tariff.retail(2) == 0.24  # one price over the interval: that price exactly
    assert cfg.market.tariff.path == str(p)  # made absolute against the config's folder


def test_dynamic_hourly_prices_hold_in_each_quarter_hour(tmp_path):
    p = _csv(tmp_path, "feed_in_usd_per_kwh,time,retail_usd_per_kwh\n"  # columns in any order
             "0.05,2026-06-21T00:00:00-04:00,0.2\n0.07,2026-06-21T01:00:00-04:00,0.3\n")
    cfg = _study("2026-06-21T00:00:00-04:00", "2h", "15min", {"kind": "dynamic", "path": str(p)})
    assert list(cfg.tariff.retail_usd_per_kwh) == [0.2] * 4 + [0.3] * 4
    assert list(cfg.tariff.feed_in_usd_per_kwh) == [0.05] * 4 + [0.07] * 4


def test_dynamic_gap_is_named(tmp_path):
    # hourly rows with 02:00 missing: no price from 02:00 to 03:00; and the series
    # ends at 04:00 while the study runs to 05:00
    p = _csv(tmp_path, "time,retail_usd_per_kwh,feed_in_usd_per_kwh\n" + "".join(
        f"2026-06-21T{h:02d}:00:00-04:00,0.2,0.05\n" for h in (0, 1, 3)))
    with pytest.raises(ConfigError) as e:
        _study("2026-06-21T00:00:00-04:00", "5h", "15min", {"kind": "dynamic", "path": str(p)})
    msg = str(e.value)
    assert "no price from 2026-06-21T02:00:00-04:00 to 2026-06-21T03:00:00-04:00" in msg
    assert "no price from 2026-06-21T04:00:00-04:00 to 2026-06-21T05:00:00-04:00" in msg
    # a series starting late
    with pytest.raises(ConfigError, match="no price from 2026-06-20T23:00:00-04:00 to 2026-06-21T00:00:00-04:00"):
        _study("2026-06-20T23:00:00-04:00", "1h", "15min", {"kind": "dynamic", "path": str(p)})


def test_dynamic_bad_rows_are_named_by_file_line_and_column(tmp_path):
    p = _csv(tmp_path, "time,retail_usd_per_kwh,feed_in_usd_per_kwh\n"
             "2026-06-21T00:00:00-04:00,0.2,0.05\n"
             "2026-06-21T01:00:00,0.2,0.05\n"  # line 3: no UTC offset
             "2026-06-21T02:00:00-04:00,abc,0.05\n"  # line 4: retail not a number
             "2026-06-21T03:00:00-04:00,0.2,-0.01\n"  # line 5: negative feed-in
             "2026-06-21T03:00:00-04:00,0.2,0.05\n"  # line 6: not after line 5's time
             "2026-06-21T04:00:00-04:00,0.2\n"  # line 7: a field short
             "2026-06-21T05:00:00-04:00,nan,0.05\n")  # line 8: not finite
    with pytest.raises(ConfigError) as e:
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "dynamic", "path": str(p)})
    msg = str(e.value)
    assert f"{p}:3, column time: '2026-06-21T01:00:00' is not an ISO 8601 time with a UTC offset" in msg
    assert f"{p}:4, column retail_usd_per_kwh: 'abc' is not a finite number" in msg
    assert f"{p}:5, column feed_in_usd_per_kwh: '-0.01' is negative" in msg
    assert f"{p}:7: 2 fields, the header has 3" in msg
    assert f"{p}:8, column retail_usd_per_kwh: 'nan' is not a finite number" in msg
    p2 = _csv(tmp_path, "time,retail_usd_per_kwh,feed_in_usd_per_kwh\n"
              "2026-06-21T01:00:00-04:00,0.2,0.05\n2026-06-21T01:00:00-04:00,0.2,0.05\n", "dup.csv")
    with pytest.raises(ConfigError, match=r"dup.csv:3, column time: .* is not after the time of line 2"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "dynamic", "path": str(p2)})
    p3 = _csv(tmp_path, "time,retail,feed_in_usd_per_kwh\n", "cols.csv")
    with pytest.raises(ConfigError, match=r"cols.csv:1: missing column\(s\) retail_usd_per_kwh; unknown column"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "dynamic", "path": str(p3)})
    with pytest.raises(ConfigError, match=r"market\.tariff\.path: no such file"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", {"kind": "dynamic", "path": str(tmp_path / "none.csv")})


def test_dynamic_negative_prices_need_the_option_and_a_non_learning_strategy(tmp_path):
    p = _csv(tmp_path, "time,retail_usd_per_kwh,feed_in_usd_per_kwh\n"
             "2026-06-21T00:00:00-04:00,0.02,-0.03\n2026-06-21T00:30:00-04:00,0.10,0.01\n")
    tariff = {"kind": "dynamic", "path": str(p)}
    with pytest.raises(ConfigError, match=r"column feed_in_usd_per_kwh: '-0.03' is negative"):
        _study("2026-06-21T00:00:00-04:00", "1h", "15min", tariff)
    cfg = _study("2026-06-21T00:00:00-04:00", "1h", "15min", {**tariff, "allow_negative_prices": True})
    assert list(cfg.tariff.feed_in_usd_per_kwh) == [-0.03, -0.03, 0.01, 0.01]
    raw = {"study": {"start": "2026-06-21T00:00:00-04:00", "duration": "1h"},
           "prosumers": {"strategy": "zip"}, "market": {"tariff": {**tariff, "allow_negative_prices": True}}}
    with pytest.raises(ConfigError, match=r"prosumers\.strategy: zip learns margins on prices >= 0"):
        validate(raw)


def test_a_broken_clock_is_reported_once_not_as_a_tariff_error():
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs" / "tou.yaml", ["study.physics_step=1s"])
    assert [p.field for p in e.value.problems] == ["study.physics_step"]


# ---- the roles take the interval's prices ----------------------------------------------

def test_dso_least_cost_prices_an_unsold_export_at_the_interval_feed_in():
    from federates.common.messages import Confirmation
    from federates.controllers.dso_agent import DsoAgent

    cfg = load_config(REPO / "configs" / "tou.yaml")  # feed-in 0.08 off peak, 0.12 in 16:00-21:00
    dso = DsoAgent(cfg, ["p1", "p2"], np.array([5.0, 5.0]), None)
    sold = Confirmation("p2", 70, -1.0, 0.0, 1.0, 0.0, 0.0, 0.15)  # p2 sold to a peer at 0.15
    dso.on_confirmations(70, [sold])  # interval 70: 17:30, the peak
    assert list(dso.price_usd_per_kwh) == [0.12, 0.15]
    dso.on_confirmations(10, [])  # 02:30, off peak
    assert list(dso.price_usd_per_kwh) == [0.08, 0.08]


@pytest.mark.parametrize("strategy", ["zip", "roth_erev"])
def test_adaptive_bidders_stay_within_each_interval_tariffs(strategy):
    from federates.prosumers.adaptive import AdaptiveBidders

    cfg = load_config(REPO / "configs" / "tou.yaml")
    t = cfg.tariff
    ab = AdaptiveBidders(strategy, retail_usd_per_kwh=t.retail_usd_per_kwh,
                         feed_in_usd_per_kwh=t.feed_in_usd_per_kwh, seed=1)
    for k in (10, 70):  # off peak [0.08, 0.21], peak [0.12, 0.42]
        f, r = t.feed_in(k), t.retail(k)
        assert ab.tariffs(k) == (f, r)
        for side, value in (("buy", r), ("sell", f)):
            p = ab.price(k, "p1", side, value, energy_kwh=1.0)
            assert f <= p <= r
    with pytest.raises(ValueError, match="outside the tariffs"):  # the peak's retail is no off-peak value
        ab.price(10, "p2", "buy", 0.42)
