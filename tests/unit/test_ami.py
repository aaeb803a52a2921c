"""AMI data of the meters: conservation, register truncation, accuracy class statistics,
missing readings, reporting interval, determinism, voltage resolution, settlement and
the config rules (federates/meters/ami.py documents the model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federates.common.config import StudyFile, validate
from federates.common.errors import ConfigError
from federates.common.grid import CustomerSite
from federates.common.messages import AmiReading, decode, encode
from federates.meters.role import MetersRole

DT_S = 60.0
STEP_H = DT_S / 3600.0
COLUMNS = ["interval", "meter", "t_start_s", "t_end_s", "v_pu", "p_kw", "q_kvar",
           "energy_import_kwh", "energy_export_kwh", "delivered"]


def make_cfg(duration: float = 3600, seed: int = 7, **meters) -> StudyFile:
    return StudyFile.model_validate({
        "study": {"duration": duration, "market_interval": 900, "physics_step": DT_S, "seed": seed},
        "meters": meters,
    })


def make_sites(n: int = 3) -> list[CustomerSite]:
    return [CustomerSite(participant=f"p{i}", index=i, bus="680", phase="abc"[i % 3],
                         group=f"t{i // 3}", load="l") for i in range(n)]


def drive(role: MetersRole, v: np.ndarray, p: np.ndarray, q: np.ndarray, settle: bool = False):
    """Read every step (rows of v, p, q), call ami(k) after each interval; all readings."""
    tl = role.timeline
    out = []
    for k in range(tl.n_intervals):
        for g in tl.steps_of_interval(k):
            role.record_step(g, v[g], p[g], q[g])
        if settle:
            role.report(k)
        out.append(role.ami(k))
    return out


def profile(n_steps: int, n: int, seed: int = 0, p_scale: float = 5.0):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.95, 1.06, size=(n_steps, n))
    p = rng.uniform(-p_scale, p_scale, size=(n_steps, n))
    q = rng.uniform(-1.0, 1.0, size=(n_steps, n))
    return v, p, q


def by_period(readings: list[list[AmiReading]], field: str, n: int) -> np.ndarray:
    flat = [r for rs in readings for r in rs]
    return np.array([getattr(r, field) for r in flat]).reshape(-1, n)


# --- conservation and truncation -----------------------------------------------------

def test_error_free_ami_equals_the_true_integral():
    n = 4
    role = MetersRole(make_cfg(duration=86400, energy_resolution_kwh=0.0, v_resolution_v=0.0),
                      make_sites(n), ami_errors=False)
    v, p, q = profile(role.timeline.n_steps, n)
    readings = drive(role, v, p, q)
    assert all(len(rs) == n for rs in readings)  # 15 min periods: one per interval
    imp = by_period(readings, "energy_import_kwh", n)
    exp = by_period(readings, "energy_export_kwh", n)
    per = 15
    true_net = (p * STEP_H).reshape(-1, per, n).sum(axis=1)
    np.testing.assert_allclose(imp - exp, true_net, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(imp, (np.maximum(p, 0) * STEP_H).reshape(-1, per, n).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(exp, (np.maximum(-p, 0) * STEP_H).reshape(-1, per, n).sum(axis=1), rtol=1e-12)
    # conservation over the day
    np.testing.assert_allclose((imp - exp).sum(axis=0), (p * STEP_H).sum(axis=0), rtol=1e-10, atol=1e-10)
    # averages
    np.testing.assert_allclose(by_period(readings, "p_kw", n), p.reshape(-1, per, n).mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(by_period(readings, "q_kvar", n), q.reshape(-1, per, n).mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(by_period(readings, "v_pu", n), v.reshape(-1, per, n).mean(axis=1), atol=1e-12)
    first = readings[0][0]
    assert (first.meter, first.t_start_s, first.t_end_s) == ("p0", 0.0, 900.0)


@pytest.mark.parametrize("res", [0.01, 0.001, 0.1])
def test_truncated_register_never_drifts_a_step(res):
    n = 5
    role = MetersRole(make_cfg(duration=86400, energy_resolution_kwh=res, reporting_interval=300),
                      make_sites(n), ami_errors=False)
    v, p, q = profile(role.timeline.n_steps, n, seed=3, p_scale=3.0)
    readings = drive(role, v, p, q)
    for field, x in (("energy_import_kwh", np.maximum(p, 0)), ("energy_export_kwh", np.maximum(-p, 0))):
        e = by_period(readings, field, n)
        counts = e / res
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)  # whole display steps
        delivered = np.cumsum(e, axis=0)
        truth = np.cumsum((x * STEP_H).reshape(-1, 5, n).sum(axis=1), axis=0)
        drift = truth - delivered
        assert drift.min() > -1e-9 and drift.max() < res + 1e-9  # truncated, never more than a step


def test_truncation_carries_the_remainder():
    # 0.4 kW for 15 min = 0.1 kWh per period; with a 0.3 kWh display the periods
    # read 0, 0, 0.3, 0 (register 0.1, 0.2, 0.3, 0.4): the total is kept
    role = MetersRole(make_cfg(energy_resolution_kwh=0.3), make_sites(1), ami_errors=False)
    steps = role.timeline.n_steps
    readings = drive(role, np.ones((steps, 1)), np.full((steps, 1), 0.4), np.zeros((steps, 1)))
    e = [r.energy_import_kwh for rs in readings for r in rs]
    assert e == pytest.approx([0.0, 0.0, 0.3, 0.0])
    assert [r.energy_export_kwh for rs in readings for r in rs] == [0.0] * 4
    assert [r.p_kw for rs in readings for r in rs] == pytest.approx([0.4] * 4)  # demand is not truncated


# --- accuracy class ------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name,c", [("0.2", 0.2), ("1", 1.0), ("2", 2.0)])
def test_error_statistics_match_the_class(cls_name, c):
    n = 3000
    role = MetersRole(make_cfg(duration=3600, accuracy_class=cls_name, energy_resolution_kwh=0.0,
                               v_resolution_v=0.0, v_accuracy_pct=0.5), make_sites(n))
    steps = role.timeline.n_steps
    p = np.full((steps, n), 2.0)  # import only
    v = np.full((steps, n), 1.0)
    q = np.full((steps, n), 1.0)
    readings = drive(role, v, p, q)
    imp = by_period(readings, "energy_import_kwh", n)  # (4 periods, n)
    err_pct = (imp / (2.0 * 0.25) - 1.0) * 100.0
    gain = role.ami_meters.gain_pct
    # fixed gain: within +-c/2, uniform (mean 0, std c/(2 sqrt 3))
    assert np.abs(gain).max() <= c / 2
    assert abs(gain.mean()) < 0.05 * c
    assert gain.std() == pytest.approx(c / (2 * math.sqrt(3)), rel=0.1)
    # random part: std c/3 within 20 %, mean 0
    rand = err_pct - gain
    assert rand.std() == pytest.approx(c / 3, rel=0.2)
    assert abs(rand.mean()) < 0.05 * c
    # the meter's own gain is seen in its readings (mean over periods)
    assert np.corrcoef(err_pct.mean(axis=0), gain)[0, 1] > 0.5
    # reactive power: same model
    q_err = (by_period(readings, "q_kvar", n) - 1.0) * 100.0 - gain
    assert q_err.std() == pytest.approx(c / 3, rel=0.2)
    # voltage: offset within +-a/2, random std a/3 [% of nominal]
    v_err = (by_period(readings, "v_pu", n) - 1.0) * 100.0
    off = role.ami_meters.v_offset_pct
    assert np.abs(off).max() <= 0.25
    assert (v_err - off).std() == pytest.approx(0.5 / 3, rel=0.2)
    # no export, no export error
    assert np.all(by_period(readings, "energy_export_kwh", n) == 0.0)


def test_ami_ignores_the_inverters_sensing_noise():
    n = 3
    role = MetersRole(make_cfg(noise_pct=5.0, energy_resolution_kwh=0.0, v_resolution_v=0.0),
                      make_sites(n), ami_errors=False)
    v, p, q = profile(role.timeline.n_steps, n)
    drive(role, v, p, q)
    ami = role.tables()["ami"]
    # AMI is computed from the true values even when the inverters' local sensing is noisy
    np.testing.assert_allclose(ami["p_kw"].to_numpy().reshape(-1, n), p.reshape(-1, 15, n).mean(axis=1), atol=1e-12)


# --- missing readings, reporting interval --------------------------------------------------

def test_missing_rate_is_binomial_and_dropped_rows_are_kept():
    n, rate = 2000, 0.1
    role = MetersRole(make_cfg(missing_rate=rate), make_sites(n))
    v, p, q = profile(role.timeline.n_steps, n)
    readings = drive(role, v, p, q)
    total = 4 * n
    delivered = sum(len(rs) for rs in readings)
    dropped = total - delivered
    sigma = math.sqrt(total * rate * (1 - rate))
    assert abs(dropped - total * rate) < 3 * sigma
    t = role.tables()["ami"]
    assert list(t.columns) == COLUMNS
    assert len(t) == total
    assert (~t["delivered"]).sum() == dropped
    lost = t[~t["delivered"]]
    assert lost[["v_pu", "p_kw", "q_kvar", "energy_import_kwh", "energy_export_kwh"]].isna().all().all()
    assert not t[t["delivered"]][["v_pu", "energy_import_kwh"]].isna().any().any()
    # the delivered rows are exactly the readings returned
    got = {(r.meter, r.t_start_s) for rs in readings for r in rs}
    assert got == set(zip(t[t["delivered"]]["meter"], t[t["delivered"]]["t_start_s"], strict=True))


def test_missing_rate_one_and_zero():
    n = 10
    for rate, expected in ((0.0, 4 * n), (1.0, 0)):
        role = MetersRole(make_cfg(missing_rate=rate), make_sites(n))
        v, p, q = profile(role.timeline.n_steps, n)
        assert sum(len(rs) for rs in drive(role, v, p, q)) == expected


def test_reporting_interval_5min_gives_three_times_the_readings():
    n = 4
    counts = {}
    for r_s in (300, 900):
        role = MetersRole(make_cfg(reporting_interval=r_s), make_sites(n))
        v, p, q = profile(role.timeline.n_steps, n)
        readings = drive(role, v, p, q)
        counts[r_s] = sum(len(rs) for rs in readings)
        assert all(r.t_end_s - r.t_start_s == r_s for rs in readings for r in rs)
        assert all(900 * k < r.t_end_s <= 900 * (k + 1) for k, rs in enumerate(readings) for r in rs)
    assert counts[300] == 3 * counts[900] == 3 * 4 * n


def test_reporting_interval_longer_than_the_market_interval():
    n = 2
    role = MetersRole(make_cfg(duration=7200, reporting_interval="1h", energy_resolution_kwh=0.0),
                      make_sites(n), ami_errors=False)
    v, p, q = profile(role.timeline.n_steps, n)
    readings = drive(role, v, p, q)
    assert [len(rs) for rs in readings] == [0, 0, 0, n, 0, 0, 0, n]
    assert readings[3][0].t_start_s == 0.0 and readings[7][0].t_end_s == 7200.0
    np.testing.assert_allclose([r.energy_import_kwh - r.energy_export_kwh for r in readings[7]],
                               (p[60:120] * STEP_H).sum(axis=0), rtol=1e-12)


# --- determinism, voltage resolution ---------------------------------------------------------

def test_same_seed_same_readings_other_seed_other_readings():
    n = 20

    def run(seed: int, report_first: bool = False):
        role = MetersRole(make_cfg(seed=seed, missing_rate=0.2, accuracy_class="1"), make_sites(n))
        v, p, q = profile(role.timeline.n_steps, n)
        return drive(role, v, p, q, settle=report_first)

    a = run(7)
    assert a == run(7)
    assert a == run(7, report_first=True)  # other calls do not change the readings
    assert a != run(8)


@pytest.mark.parametrize("v_base", [240.0, 120.0, 277.0])
def test_voltage_is_quantised_to_its_resolution(v_base):
    n = 50
    role = MetersRole(make_cfg(v_resolution_v=0.1), make_sites(n), v_base_v=np.full(n, v_base))
    v, p, q = profile(role.timeline.n_steps, n)
    readings = drive(role, v, p, q)
    volts = by_period(readings, "v_pu", n) * v_base / 0.1
    np.testing.assert_allclose(volts, np.round(volts), atol=1e-6)
    assert len(np.unique(np.round(volts))) > 10  # not all the same value


def test_v_base_is_one_per_meter():
    with pytest.raises(ValueError, match="v_base_v"):
        MetersRole(make_cfg(), make_sites(3), v_base_v=[240.0, 240.0])
    with pytest.raises(ValueError, match="v_base_v"):
        MetersRole(make_cfg(), make_sites(2), v_base_v=[240.0, 0.0])


# --- settlement --------------------------------------------------------------------------------

def test_settlement_stays_on_true_readings_by_default():
    n = 3
    cfg = make_cfg(accuracy_class="2", energy_resolution_kwh=0.1)
    role = MetersRole(cfg, make_sites(n))
    v, p, q = profile(role.timeline.n_steps, n)
    drive(role, v, p, q)
    for k in range(4):
        expected = (p[15 * k:15 * (k + 1)] * STEP_H).sum(axis=0)
        np.testing.assert_allclose([e.energy_kwh for e in role.report(k)], expected, rtol=1e-12)


@pytest.mark.parametrize("r_s", [300, 900, 1800])
def test_settle_on_ami_uses_the_registers(r_s):
    n = 6
    cfg = make_cfg(settle_on_ami=True, accuracy_class="2", energy_resolution_kwh=0.01,
                   missing_rate=0.3, reporting_interval=r_s)
    role = MetersRole(cfg, make_sites(n))
    v, p, q = profile(role.timeline.n_steps, n)
    drive(role, v, p, q)
    tl = role.timeline
    ok = role.ami_meters  # the registers' advance over each interval, recomputed (before report(k) carries past)
    recomputed, settled = [], []
    for k in range(4):
        steps = tl.steps_of_interval(k)
        recomputed.append(ok.energy_kwh(role.register, steps.start, steps.stop))
        settled.append([e.energy_kwh for e in role.report(k)])
    settled = np.array(settled)
    true = (p * STEP_H).reshape(4, 15, n).sum(axis=1)
    assert not np.allclose(settled, true, rtol=1e-6)  # measured, truncated
    np.testing.assert_allclose(settled, true, atol=0.05 * np.abs(true).max() + 0.02)
    counts = settled / 0.01
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)
    if r_s <= 900:  # periods nest in the intervals: settlement = all AMI energy, missing or not
        ami = role.tables()["ami"]
        for k in range(4):
            e_imp, e_exp = recomputed[k]
            np.testing.assert_allclose(settled[k], e_imp - e_exp, atol=1e-12)
            rows = ami[(ami["interval"] == k) & ami["delivered"]]
            for meter, grp in rows.groupby("meter"):
                i = int(meter[1:])
                periods = len(grp)
                if periods == 900 // r_s:  # every reading of the interval delivered
                    net = (grp["energy_import_kwh"] - grp["energy_export_kwh"]).sum()
                    assert net == pytest.approx(settled[k, i], abs=1e-9)


def test_settle_on_ami_without_errors_is_the_truth():
    n = 3
    role = MetersRole(make_cfg(settle_on_ami=True, energy_resolution_kwh=0.0), make_sites(n), ami_errors=False)
    v, p, q = profile(role.timeline.n_steps, n)
    drive(role, v, p, q)
    for k in range(4):
        expected = (p[15 * k:15 * (k + 1)] * STEP_H).sum(axis=0)
        np.testing.assert_allclose([e.energy_kwh for e in role.report(k)], expected, rtol=1e-12, atol=1e-12)


# --- messages, tables --------------------------------------------------------------------------

def test_ami_reading_round_trips():
    r = AmiReading(meter="p1", t_start_s=0.0, t_end_s=900.0, v_pu=1.0123456789012345, p_kw=-0.1,
                   q_kvar=0.3, energy_import_kwh=0.0, energy_export_kwh=0.025)
    env = decode(encode([r], interval=0))
    assert env.kind == "ami_readings" and env.items == [r] and env.header == {"interval": 0}
    assert decode(encode([], kind="ami_readings")).items == []


def test_tables_before_any_ami_call():
    role = MetersRole(make_cfg(), make_sites(2))
    t = role.tables()
    assert list(t["ami"].columns) == COLUMNS and len(t["ami"]) == 0
    assert list(t["meters"].columns) == ["step", "t_s", "meter", "v_pu", "p_kw", "q_kvar"]
    with pytest.raises(ValueError, match="outside the study"):
        role.ami(4)


# --- config ----------------------------------------------------------------------------------------

def problems_of(meters: dict, study: dict | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        validate({"meters": meters, "study": study or {}})
    return {p.field: str(p) for p in e.value.problems}


def test_config_defaults_and_yaml_numbers():
    m = validate({}).meters
    assert (m.noise_pct, m.reporting_interval_s, m.accuracy_class, m.v_accuracy_pct) == (0.0, 900.0, "0.5", 0.5)
    assert (m.missing_rate, m.settle_on_ami) == (0.0, False)
    assert validate({"meters": {"accuracy_class": 1}}).meters.accuracy_class == "1"
    assert validate({"meters": {"accuracy_class": 0.2}}).meters.accuracy_class == "0.2"
    assert validate({"meters": {"reporting_interval": "5min"}}).meters.reporting_interval_s == 300.0
    assert validate({"meters": {"reporting_interval": "1h"}}).meters.reporting_interval_s == 3600.0


def test_config_bad_values_are_named():
    found = problems_of({"accuracy_class": "3", "missing_rate": 1.5, "energy_resolution_kwh": -1,
                         "v_accuracy_pct": -0.1, "colour": "red"})
    assert "'0.2', '0.5', '1' or '2'" in found["meters.accuracy_class"]
    assert "meters.missing_rate" in found and "1" in found["meters.missing_rate"]
    assert "meters.energy_resolution_kwh" in found
    assert "meters.v_accuracy_pct" in found
    assert "reporting_interval" in found["meters.colour"]  # allowed keys listed


@pytest.mark.parametrize("r", [450, 1200, 90, "7min"])
def test_config_reporting_interval_must_nest(r):
    found = problems_of({"reporting_interval": r})
    msg = found["meters.reporting_interval"]
    assert "allowed" in msg and "300" in msg and "900" in msg and "multiple of 900" in msg


def test_config_reporting_interval_accepts_divisors_and_multiples():
    for r in (60, 300, 450, 900, 1800, 3600):
        validate({"meters": {"reporting_interval": r}, "study": {"physics_step": 30}})
