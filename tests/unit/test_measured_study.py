"""Measured profiles through a whole in-process study on IEEE 13: the ``profiles`` table's
load_kw (and pv_kw where the file has PV) is the file's series resampled to the
1-minute steps, which for 15-minute data is each quarter's value repeated exactly;
the sites come from a sites file, or from the seeded placement in file order."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from federates.common.config import load_config
from federates.common.errors import ConfigError
from runner.engine import run_inprocess
from runner.launch import prepare_run
from runner.launch.manifest import write_manifest
from tests.conftest import DEFAULT

pytestmark = pytest.mark.feeder

START, HOURS = "2026-06-21T09:00:00-04:00", 3
QUARTERS = pd.date_range("2026-06-21T00:00:00-04:00", periods=96, freq="15min")


def _files(tmp_path):
    rng = np.random.default_rng(11)
    load_w = {c: rng.integers(300, 3000, 96) for c in ("m1", "m2", "m3")}  # whole watts, as meters give
    pv_w = np.round(np.clip(np.sin((np.arange(96) / 4 - 6) / 12 * np.pi), 0, None) * 5000.0)
    rows = []
    for c, v in load_w.items():
        rows.append(pd.DataFrame({"time": [t.isoformat() for t in QUARTERS], "customer": c, "load_w": v,
                                  "pv_w": pv_w if c == "m2" else np.nan}))
    prof = tmp_path / "prof.csv"
    pd.concat(rows).to_csv(prof, index=False)
    sites = tmp_path / "sites.csv"
    sites.write_text("customer,bus,phase\nm3,675,b\nm1,634,a\nm2,671,c\n")
    # the file's series in kW: W / 1000, the double nearest each value in kW
    return prof, sites, {c: v / 1000.0 for c, v in load_w.items()}, pv_w / 1000.0


def _quarters(values: np.ndarray) -> np.ndarray:
    """The study's 1-min steps of a 15-min day series."""
    i0 = (pd.Timestamp(START) - QUARTERS[0]) // pd.Timedelta("15min")
    return np.repeat(values[i0:i0 + HOURS * 4], 15)


def test_measured_profiles_and_sites_file_in_a_study(tmp_path):
    prof, sites, load, pv = _files(tmp_path)
    cfg = load_config(DEFAULT, [f"study.start={START}", f"study.duration={HOURS}h",
                                f"prosumers.profiles={prof}", f"prosumers.sites={sites}"])
    study = prepare_run(cfg, tmp_path / "run")
    assert [s.participant for s in study.sites] == ["m3", "m1", "m2"]
    assert study.cfg.prosumers.count == 3  # the sites file's, noted in the resolved config
    assert "# prosumers.count: 3" in (tmp_path / "run" / "config.resolved.yaml").read_text()
    t = run_inprocess(study)
    write_manifest(study, "inprocess", "ok", 0.0)
    inputs = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    assert inputs["prosumers.profiles.path"] == {"path": str(prof), "sha256": hashlib.sha256(prof.read_bytes()).hexdigest()}
    assert inputs["prosumers.sites"]["path"] == str(sites)
    p = t["profiles"]
    for c in ("m1", "m2", "m3"):
        rows = p[p["participant"] == c]
        assert np.array_equal(rows["load_kw"].to_numpy(), _quarters(load[c]))  # 15 min -> 1 min, bit for bit
    m2 = p[p["participant"] == "m2"]
    assert np.array_equal(m2["pv_kw"].to_numpy(), _quarters(pv))
    pros = t["prosumers"].set_index("participant")
    assert pros.loc["m2", "pv_kwp"] == pv.max()  # the file's peak
    assert pros.loc["m1", "daily_load_kwh"] == pytest.approx(load["m1"].mean() * 24, rel=1e-12)
    # the net power the feeder saw is load - PV + battery, step by step
    np.testing.assert_allclose(p["net_kw"], p["load_kw"] - p["pv_kw"] + p["battery_kw"], rtol=0, atol=1e-12)
    gaps = pd.read_parquet(tmp_path / "run" / "results" / "profile_gaps.parquet")
    assert len(gaps) == 0 and list(gaps.columns) == ["customer", "series", "missing_intervals", "longest_gap_s",
                                                     "longest_from"]


def test_placed_prosumers_take_the_profiles_in_file_order(tmp_path):
    prof, *_ = _files(tmp_path)
    base = [f"study.start={START}", "study.duration=1h", f"prosumers.profiles.path={prof}", "prosumers.count=4"]
    with pytest.raises(ConfigError, match="the file has 3 load series for 4 prosumers"):
        prepare_run(load_config(DEFAULT, base), tmp_path / "a")
    study = prepare_run(load_config(DEFAULT, [*base, "prosumers.profiles.reuse=true"]), tmp_path / "b")
    assert [s.profile for s in study.sites] == ["m1", "m2", "m3", "m1"]
    saved = json.loads((tmp_path / "b" / "sites.json").read_text())
    assert [s["profile"] for s in saved] == ["m1", "m2", "m3", "m1"]


def test_default_sites_json_has_no_new_keys(tmp_path):
    cfg = load_config(DEFAULT, ["study.duration=1h"])
    study = prepare_run(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "sites.json").read_text())
    assert set(saved[0]) == {"participant", "index", "bus", "phase", "group", "load"}
    assert not (tmp_path / "run" / "results" / "profile_gaps.parquet").exists()
    assert "inputs" not in json.loads(write_manifest(study, "inprocess", "ok", 0.0).read_text())
