"""The live conservation checks on real OpenDSS models, in both engines.

* ``energy``: on the very weak grid with a PV penetration of 400 % (six roofs of tens
  of kWp behind 15 kVA service transformers, no control) the customers' voltages reach
  1.76 pu at noon. OpenDSS keeps a Load constant PQ only up to its ``vmaxpu`` (1.3 pu
  for customers); above, it is constant Z and exports more than its set-point (p000:
  25.0 kWh delivered in the first 15 min, 14.7 kWh metered). Before the live check the
  run ended "ok" with the meters billing energy the physics did not deliver. Now the
  run stops at interval 0 naming the meter (in process and as a federation); with
  ``feeder.conservation: warn`` it runs on with six rows in ``conservation``.
* ``power``: the model with its own Generator, PVSystem and Storage
  (tests/feeder/test_power_balance.py) with the load readout broken the way issue 11
  found it (Loads only): the check fires at step 0; ``warn`` records every step.
* The adapter keeps OpenDSS's convergence tolerance, the one the energy check allows for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from federates.common.conservation import POWER_TOLERANCE_PCT, SOLUTION_TOLERANCE
from federates.feeder.opendss import OpenDSSFeeder
from runner.cli import main
from tests.conftest import DEFAULT, REPO, tecosim
from tests.feeder.test_power_balance import write_der_model

pytestmark = pytest.mark.feeder

CONFIG = REPO / "configs" / "very_weak_grid.yaml"
HIGH_PV = ["--set", "study.duration=15min", "--set", "prosumers.count=6", "--set", "controllers.enabled=false",
           "--set", "prosumers.pv_share=1", "--set", "prosumers.pv_penetration_pct=400",
           "--set", "study.start=2026-06-21T12:00:00-04:00", "--quiet", "--no-report"]


def test_the_adapter_keeps_the_tolerance_the_energy_check_allows_for():
    f = OpenDSSFeeder(REPO / "feeders" / "ieee13" / "IEEE13.dss")
    assert f.solution_tolerance() == SOLUTION_TOLERANCE


def test_energy_check_stops_a_run_whose_physics_did_not_deliver_what_was_metered(tmp_path, capsys):
    out = tmp_path / "fail"
    assert main(["run", str(CONFIG), "--engine", "inprocess", "--out", str(out), *HIGH_PV]) == 1
    err = capsys.readouterr().err
    assert "conservation check 'energy' broken at interval 0 (p000)" in err
    assert "metered energy vs the energy OpenDSS delivered" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "'energy'" in manifest["reason"]

    out = tmp_path / "warn"
    assert main(["run", str(CONFIG), "--engine", "inprocess", "--out", str(out), *HIGH_PV,
                 "--set", "feeder.conservation=warn"]) == 0
    assert "6 live conservation check(s) broke" in capsys.readouterr().err
    c = pd.read_parquet(out / "results" / "conservation.parquet")
    assert list(c["check"]) == ["energy"] * 6 and list(c["subject"]) == [f"p{i:03d}" for i in range(6)]
    assert (c["interval"] == 0).all() and (c["error"] > 100 * c["tolerance"]).all()
    # the metered side is what the meters table integrates; the delivered side is larger in export
    m = pd.read_parquet(out / "results" / "meters.parquet")
    metered = m.groupby("meter")["p_kw"].sum() / 60.0
    assert c.set_index("subject")["actual"].to_numpy() == pytest.approx(metered.to_numpy(), abs=1e-9)
    assert (c["expected"] < c["actual"]).all()  # delivered (constant Z above 1.3 pu) exports more
    v = pd.read_parquet(out / "results" / "voltages.parquet")
    assert v["v_pu"].max() > 1.3
    assert json.loads((out / "manifest.json").read_text())["summary"]["conservation_broken"] == 6


@pytest.mark.federation
def test_energy_check_stops_the_federation_and_names_the_meters(tmp_path):
    out = tmp_path / "fed"
    r = tecosim("run", str(CONFIG), "--out", str(out), *HIGH_PV, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "federate 'meters' exited with code 1" in r.stderr
    assert "conservation check 'energy' broken at interval 0 (p000)" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "meters" in manifest["reason"]


def _der_study(tmp_path: Path) -> Path:
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["study"].update(name="der", start="2026-06-21T12:00:00-04:00", duration="15min")
    raw["feeder"].update(model=None, path=str(write_der_model(tmp_path)))
    raw["feeder"]["customer_connection"]["kind"] = "direct"
    raw["prosumers"]["count"] = 6
    study = tmp_path / "der.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    return study


def test_power_check_stops_the_run_when_the_model_s_der_are_not_counted(tmp_path, monkeypatch, capsys):
    study = _der_study(tmp_path)

    def loads_only(self):  # the readout of issue 11: the Loads' power, the DER forgotten
        p = {c.lower(): b for c, b in self._pc_element_batches()}["load"].total_powers()[:, 0]
        return float(p.sum()), float(abs(p).sum())

    monkeypatch.setattr(OpenDSSFeeder, "load_and_gross_kw", loads_only)
    out = tmp_path / "fail"
    assert main(["run", str(study), "--engine", "inprocess", "--out", str(out), "--quiet", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "conservation check 'power' broken at interval 0, step 0 (feeder)" in err
    assert "% of the gross kW" in err

    out = tmp_path / "warn"
    assert main(["run", str(study), "--engine", "inprocess", "--out", str(out), "--quiet", "--no-report",
                 "--set", "feeder.conservation=warn"]) == 0
    c = pd.read_parquet(out / "results" / "conservation.parquet")
    assert set(c["check"]) == {"power"} and list(c["step"]) == list(range(15))
    assert (c["error"] > POWER_TOLERANCE_PCT).all()
    # the after-run check of the kpis agrees, and in warn mode is a warning too
    assert "after the run: feeder power balance" in capsys.readouterr().err


def test_power_check_holds_on_the_model_with_der(tmp_path):
    study = _der_study(tmp_path)
    out = tmp_path / "ok"
    assert main(["run", str(study), "--engine", "inprocess", "--out", str(out), "--quiet", "--no-report"]) == 0
    assert len(pd.read_parquet(out / "results" / "conservation.parquet")) == 0
