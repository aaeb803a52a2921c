"""A power flow that does not converge: recorded, handled per ``feeder.on_nonconvergence``.

The failing case is real OpenDSS non-convergence, made by a test-only config: six
prosumers, all with PV, on the very weak grid with a PV penetration of 3000 % (each
roof a few hundred kWp behind a 15 kVA service transformer). Around noon the
uncontrolled solve of every step diverges (no convergence after 100 iterations);
capping every export at 0 kW makes it converge (curtail). Early in the morning the PV
is still small enough: from 07:45 the first steps converge and the PV ramp makes the
later ones fail (hold). Each policy runs through the CLI with the in-process engine;
``abort`` also runs as a HELICS federation (exit 1, the runner names the feeder, the
log tail names the simulated time, manifest failed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from federates.common.config import load_config
from runner.cli import main
from runner.kpis import kpis
from runner.results import ConservationError, check_conservation, conservation_failures
from runner.run_folder import read_tables
from tests.conftest import REPO, tecosim

pytestmark = pytest.mark.feeder

CONFIG = REPO / "configs" / "very_weak_grid.yaml"
ABSURD_PV = ["--set", "study.duration=15min", "--set", "prosumers.count=6",
             "--set", "controllers.enabled=false", "--set", "prosumers.pv_share=1",
             "--set", "prosumers.pv_penetration_pct=3000", "--quiet", "--no-report"]
NOON = ["--set", "study.start=2026-06-21T12:00:00-04:00"]
MORNING = ["--set", "study.start=2026-06-21T07:45:00-04:00"]


def _run(tmp: Path, name: str, policy: str, start: list[str], *more: str) -> tuple[int, Path]:
    out = tmp / name
    code = main(["run", str(CONFIG), "--engine", "inprocess", "--out", str(out), *ABSURD_PV, *start,
                 "--set", f"feeder.on_nonconvergence={policy}", *more])
    return code, out


def test_default_policy_is_abort():
    assert load_config(REPO / "configs" / "default.yaml", []).feeder.on_nonconvergence == "abort"


def test_abort_inprocess_names_feeder_and_time(tmp_path, capsys):
    code, out = _run(tmp_path, "abort", "abort", NOON)
    err = capsys.readouterr().err
    assert code == 1
    assert "power flow did not converge at t_s=0" in err
    assert "solve of the feeder at step 0 (2026-06-21 12:00:00-04:00)" in err
    assert "feeder.on_nonconvergence=abort" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "did not converge" in manifest["reason"]


def test_curtail_converges_and_records(tmp_path):
    # one step (4) converges without a retry, to a solution of 4.4 pu at the customers:
    # their Loads are constant Z there and export far more than the meters record, which
    # the live energy check catches (federates/common/conservation.py); warn lets the
    # run go on to show the curtail policy on the other steps
    code, out = _run(tmp_path, "curtail", "curtail", NOON, "--set", "feeder.conservation=warn")
    assert code == 0
    c = read_tables(out)["conservation"]
    assert set(c["check"]) == {"energy"} and (c["interval"] == 0).all() and len(c) == 6
    t = read_tables(out)
    nc = t["nonconvergence"]
    assert len(nc) > 0 and set(nc["action"]) == {"curtail"}
    assert nc["detail"].str.contains("retry level 1: every export capped at 0 kW").all()
    grid = t["grid"].set_index("step")
    assert not grid.loc[nc["step"].unique(), "converged"].any()
    # every step with a curtail row: no customer exports, the export held back is curtailment
    v = t["voltages"][t["voltages"]["step"].isin(nc["step"])]
    assert (v["p_kw"] >= 0).all() and (v["curtailed_p_kw"] > 0).any()
    k = t["kpis"]
    assert conservation_failures(k) == []
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"

    # a corrupted copy of the run (one settlement's metered energy) is caught
    bad = tmp_path / "corrupted"
    shutil.copytree(out, bad)
    path = bad / "results" / "settlements.parquet"
    s = pd.read_parquet(path)
    s.loc[s.index[3], "metered_kwh"] += 0.5
    interval = int(s.loc[s.index[3], "interval"])
    s.to_parquet(path, index=False)
    cfg = load_config(bad / "config.resolved.yaml", [])
    k_bad = kpis(cfg, read_tables(bad))
    with pytest.raises(ConservationError, match=rf"energy balance .* worst interval {interval} .*error 0\.5 kWh"):
        check_conservation(k_bad, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "energy balance" in manifest["reason"]
    assert (bad / "results" / "settlements.parquet").is_file()


def test_hold_keeps_previous_step(tmp_path):
    # the steps that converge do so above 1.3 pu at the customers (constant-Z Loads that
    # export more than metered: the live energy check's rows); warn lets the run go on
    code, out = _run(tmp_path, "hold", "hold", MORNING, "--set", "feeder.conservation=warn")
    assert code == 0
    t = read_tables(out)
    assert set(t["conservation"]["check"]) == {"energy"} and t["voltages"]["v_pu"].max() > 1.3
    nc = t["nonconvergence"]
    assert len(nc) > 0 and set(nc["action"]) == {"hold"}
    first = int(nc["step"].min())
    assert first > 0
    grid = t["grid"].set_index("step")
    assert grid.loc[: first - 1, "converged"].all() and not grid.loc[first:, "converged"].any()
    cols = ["source_p_kw", "load_kw", "losses_kw"]
    held = grid.loc[first:, cols]
    assert (held == grid.loc[first - 1, cols]).all().all()
    v = t["voltages"].set_index(["step", "participant"])["v_pu"].unstack()
    assert (v.loc[first:] == v.loc[first - 1]).all().all()
    assert conservation_failures(t["kpis"]) == []

    # hold with no earlier step to hold aborts
    code, _ = _run(tmp_path, "hold0", "hold", NOON)
    assert code == 1


@pytest.mark.federation
def test_abort_federation(tmp_path):
    out = tmp_path / "fed"
    r = tecosim("run", str(CONFIG), "--out", str(out), *ABSURD_PV, *NOON, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "federate 'feeder' exited with code 1" in r.stderr
    assert "power flow did not converge at t_s=0" in r.stderr
    assert "(2026-06-21 12:00:00-04:00)" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "feeder" in manifest["reason"]
