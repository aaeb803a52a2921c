"""Weak-grid knobs: ``grid_preset``, ``feeder.synthetic`` and ``prosumers.pv_penetration_pct``.

References: the Thevenin impedance of the source, |Z1| = V_LL^2 / S_sc (Ohm's law on
the positive-sequence drop at the source bus); the ANSI C84.1 Range A upper limit
(1.05 pu) that the weak scenario crosses at noon; the definition of PV penetration
(total kWp / feeder peak load) recomputed here from the model's loads and the load
model's daily shape.
"""

from __future__ import annotations

import cmath
import math
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import yaml

from federates.common.config import GRID_PRESETS, SyntheticFeederConfig, load_config, validate
from federates.common.errors import ConfigError
from federates.common.study import Study
from federates.feeder.opendss import OpenDSSFeeder
from federates.prosumers.agents import make_specs
from federates.prosumers.profiles import daily_shape
from runner.engine import run_inprocess
from runner.launch import prepare_run
from tests.conftest import REPO, tecosim

pytestmark = pytest.mark.feeder

WEAK_GRID = REPO / "configs" / "weak_grid.yaml"
BUNDLED_SYNTHETIC = REPO / "feeders" / "synthetic" / "feeder.yaml"
PRESETS = ("strong", "weak", "very_weak")
ANSI_RANGE_A_MAX_PU = 1.05  # ANSI C84.1 service voltage Range A, upper limit (126 V on 120 V)
NOON = ["study.start=2026-06-21T11:00:00-04:00", "study.duration=2h", "controllers.enabled=false"]
A = cmath.exp(2j * math.pi / 3)  # Fortescue operator


def synthetic_raw(**synthetic) -> dict:
    """A small study on the synthetic feeder (community market, 6 prosumers, no control)."""
    return {"study": {"duration": "1h"}, "feeder": {"model": "synthetic", "synthetic": synthetic},
            "prosumers": {"count": 6}, "controllers": {"enabled": False}}


def test_synthetic_defaults_are_the_bundled_parameters() -> None:
    bundled = yaml.safe_load(BUNDLED_SYNTHETIC.read_text())["parameters"]
    defaults = SyntheticFeederConfig().model_dump()
    assert defaults == {k: bundled[k] for k in defaults}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fills_its_values(preset: str) -> None:
    cfg = validate({"grid_preset": preset, "feeder": {"model": "synthetic"}})
    want = GRID_PRESETS[preset]
    for key, value in want["feeder"]["synthetic"].items():
        assert getattr(cfg.feeder.synthetic, key) == value, key
    for key, value in want["feeder"]["customer_connection"].items():
        assert getattr(cfg.feeder.customer_connection, key) == value, key
    assert cfg.prosumers.pv_penetration_pct == want["prosumers"]["pv_penetration_pct"]


def test_explicit_keys_win_over_the_preset() -> None:
    cfg = validate({
        "grid_preset": "very_weak",
        "feeder": {"model": "synthetic", "synthetic": {"source_mva_sc": 12.0},
                   "customer_connection": {"service_length_m": 20.0}},
        "prosumers": {"pv_penetration_pct": None},
    })
    preset = GRID_PRESETS["very_weak"]["feeder"]
    assert cfg.feeder.synthetic.source_mva_sc == 12.0
    assert cfg.feeder.synthetic.line_length_multiplier == preset["synthetic"]["line_length_multiplier"]
    assert cfg.feeder.customer_connection.service_length_m == 20.0
    assert cfg.feeder.customer_connection.transformer_kva == preset["customer_connection"]["transformer_kva"]
    assert cfg.prosumers.pv_penetration_pct is None  # an explicit null wins too


def test_scenario_files_differ_only_in_their_preset() -> None:
    for preset in PRESETS:
        cfg = load_config(REPO / "configs" / f"{preset}_grid.yaml")
        assert cfg.grid_preset == preset
        assert cfg.feeder.synthetic.source_mva_sc == GRID_PRESETS[preset]["feeder"]["synthetic"]["source_mva_sc"]
        assert cfg.prosumers.pv_penetration_pct == GRID_PRESETS[preset]["prosumers"]["pv_penetration_pct"]
        assert cfg.feeder.model == "synthetic" and cfg.prosumers.count == 60
    over = load_config(WEAK_GRID, ["grid_preset=strong"])
    assert over.model_dump() | {"study": None} == load_config(REPO / "configs" / "strong_grid.yaml").model_dump() | {
        "study": None}


def test_bad_preset_names_the_field_and_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        validate({"grid_preset": "medium", "feeder": {"model": "synthetic"}})
    found = {p.field: str(p) for p in e.value.problems}
    assert set(found) == {"grid_preset"}
    assert all(name in found["grid_preset"] for name in PRESETS)
    with pytest.raises(ConfigError) as e:
        validate({"grid_preset": "weak", "feeder": {"model": "ieee13"}})
    assert "synthetic" in {p.field: str(p) for p in e.value.problems}["grid_preset"]
    r = tecosim("validate", str(WEAK_GRID), "--set", "grid_preset=medium")
    assert r.returncode == 2
    assert "grid_preset" in r.stderr and "very_weak" in r.stderr


def test_synthetic_section_only_with_the_synthetic_model() -> None:
    with pytest.raises(ConfigError) as e:
        validate({"feeder": {"model": "ieee13", "synthetic": {"n_loads": 30}}})
    assert "feeder.synthetic" in {p.field for p in e.value.problems}


def test_bundled_parameters_use_the_bundled_file(tmp_path: Path) -> None:
    study = prepare_run(validate(synthetic_raw()), tmp_path / "run")
    assert study.master == (REPO / "feeders" / "synthetic" / "synthetic.dss").resolve()
    assert not (tmp_path / "run" / "feeder").exists()


def test_generated_feeder_is_in_the_run_folder_with_the_asked_source(tmp_path: Path) -> None:
    """The generated model is used and its source has the Thevenin impedance
    |Z1| = V_LL^2 / S_sc: the positive-sequence drop from the open-circuit source
    voltage to the source bus is |Z1| |I1| (Ohm's law)."""
    s_sc_mva = 12.0
    cfg = validate(synthetic_raw(source_mva_sc=s_sc_mva, line_length_multiplier=1.5))
    run = tmp_path / "run"
    prepare_run(cfg, run)
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert resolved["feeder"]["model"] is None
    assert resolved["feeder"]["path"] == "feeder/synthetic.dss"
    assert resolved["feeder"]["synthetic"]["source_mva_sc"] == s_sc_mva  # the record of the copy
    # the run folder stands alone: moved, it still finds its own model
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    study = Study.load(moved)
    assert study.master == (moved / "feeder" / "synthetic.dss").resolve()
    assert f"MVAsc3={s_sc_mva:g}" in study.master.read_text()

    f = OpenDSSFeeder(study.master)  # base case: the model's own loads
    kv_ll = 12.47
    v_oc = np.array([1.0, A**2, A]) * kv_ll * 1e3 / math.sqrt(3.0)  # [V], angles 0, -120, +120 deg
    f._dss.Circuit.SetActiveBus("sourcebus")
    v_bus = np.asarray(f._dss.Bus.Voltages()).view(complex)[:3]
    f._dss.Circuit.SetActiveElement("Vsource.source")
    i_src = np.asarray(f._dss.CktElement.Currents()).view(complex)[:3]

    def positive(x: np.ndarray) -> complex:
        return complex((x[0] + A * x[1] + A**2 * x[2]) / 3.0)

    z1_ohm = kv_ll**2 / s_sc_mva
    i1 = abs(positive(i_src))
    assert i1 > 1.0  # [A] the feeder draws a real current
    assert abs(positive(v_oc - v_bus)) == pytest.approx(z1_ohm * i1, rel=1e-3)


def test_pv_penetration_is_total_kwp_over_peak_load(tmp_path: Path) -> None:
    pct = 80.0
    raw = synthetic_raw()
    raw["feeder"]["background_load_scale"] = 0.5
    raw["prosumers"] = {"count": 20, "pv_share": 0.6, "pv_penetration_pct": pct}
    study = prepare_run(validate(raw), tmp_path / "run")
    specs = make_specs(study.cfg, study.sites)
    model_kw = sum(lp.kw for lp in OpenDSSFeeder(study.master).load_points())
    shape_max = float(daily_shape(np.linspace(0.0, 24.0, 24 * 3600, endpoint=False)).max())
    peak_kw = 0.5 * model_kw + sum(s.daily_load_kwh / 24.0 * shape_max for s in specs)
    total_kwp = sum(s.pv_kwp for s in specs)
    assert total_kwp / peak_kw * 100.0 == pytest.approx(pct, rel=0.01)
    assert study.cfg.prosumers.pv_penetration_base_kw == pytest.approx(peak_kw, rel=1e-3)
    # one common factor: the sizes keep the proportions of the unscaled draw
    raw["prosumers"]["pv_penetration_pct"] = None
    plain = make_specs(validate(raw), study.sites)
    ratios = [a.pv_kwp / b.pv_kwp for a, b in zip(specs, plain, strict=True) if b.pv_kwp > 0]
    assert len(ratios) == round(0.6 * 20)
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    assert all(a.inverter_kva == pytest.approx(1.2 * a.pv_kwp) for a in specs if a.pv_kwp > 0)


def test_presets_solve_and_raise_the_noon_voltage_progressively(tmp_path: Path) -> None:
    """The weak scenario over its 2 h around noon, without control: every preset's
    base case solves, and the highest customer voltage (before any control) rises
    strong < weak < very_weak; strong stays inside ANSI Range A, weak leaves it."""
    v_max = {}
    for preset in PRESETS:
        cfg = load_config(WEAK_GRID, [*NOON, f"grid_preset={preset}"])
        study = prepare_run(cfg, tmp_path / preset, config_dir=WEAK_GRID.parent)
        v = run_inprocess(study)["voltages"]
        assert np.isfinite(v["v_before_pu"]).all()
        v_max[preset] = float(v["v_before_pu"].max())
    values = [v_max[p] for p in PRESETS]
    assert all(a < b for a, b in pairwise(values)), v_max
    assert v_max["strong"] <= ANSI_RANGE_A_MAX_PU < v_max["weak"], v_max
