"""Swapping the feeder: any OpenDSS master by path gives the same study as the bundled name."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.conftest import DEFAULT, REPO, tecosim

pytestmark = pytest.mark.feeder

SHORT = ["--set", "study.start=2026-06-21T12:00:00-04:00", "--set", "study.duration=30min"]


def test_feeder_by_path_equals_feeder_by_name(tmp_path):
    by_name = tmp_path / "name"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(by_name), *SHORT)
    assert r.returncode == 0, r.stderr
    # a study file elsewhere, pointing at the master with a path relative to itself
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["feeder"]["model"] = None
    master = REPO / "feeders" / "ieee13" / "IEEE13.dss"
    study_dir = tmp_path / "studies"
    study_dir.mkdir()
    cfg["feeder"]["path"] = str(master)  # absolute works everywhere
    (study_dir / "abs.yaml").write_text(yaml.safe_dump(cfg))
    by_path = tmp_path / "path"
    r = tecosim("run", str(study_dir / "abs.yaml"), "--engine", "inprocess", "--out", str(by_path), *SHORT)
    assert r.returncode == 0, r.stderr
    a = pd.read_parquet(by_name / "results" / "voltages.parquet")
    b = pd.read_parquet(by_path / "results" / "voltages.parquet")
    pd.testing.assert_frame_equal(a, b)
    resolved = yaml.safe_load((by_path / "config.resolved.yaml").read_text())
    assert resolved["feeder"]["path"] == str(master)
    assert json.loads((by_path / "manifest.json").read_text())["status"] == "ok"


def test_relative_feeder_path_is_relative_to_the_config_file(tmp_path):
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["feeder"]["model"] = None
    model_dir = tmp_path / "models" / "ieee13"
    model_dir.mkdir(parents=True)
    (model_dir / "IEEE13.dss").write_text((REPO / "feeders" / "ieee13" / "IEEE13.dss").read_text())
    cfg["feeder"]["path"] = "models/ieee13/IEEE13.dss"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    r = tecosim("validate", str(tmp_path / "study.yaml"), timeout=120)
    assert r.returncode == 0, r.stderr


def test_broken_feeder_file_is_a_clear_error(tmp_path):
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["feeder"]["model"] = None
    bad = tmp_path / "broken.dss"
    bad.write_text("New Circuit.x basekv=4.16\nNew Line.l1 bus1=nowhere bus2= linecode=missing_code\n")
    cfg["feeder"]["path"] = str(bad)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    r = tecosim("run", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "run"), *SHORT)
    assert r.returncode == 1
    assert "broken.dss" in r.stderr
    assert "Traceback" not in r.stderr
