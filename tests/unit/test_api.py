"""The Python API (``import tecosim``, runner/api.py) against the ``tecosim`` command.

The reference for a run through the API is the command's run of the same study: the
same tables, file for file, and the same KPIs; the KPIs are also recomputed from the
whole tables (``runner.kpis.kpis``, the whole-table formulation of the chunked
post-run path). A bad field is the same ConfigError the command prints.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import tecosim
from federates.common.config import load_config, resolved_dict
from runner.kpis import kpis, summary
from runner.run_folder import read_tables
from tests.conftest import DEFAULT
from tests.conftest import tecosim as tecosim_cli

START, DURATION = "2026-06-21T11:00:00-04:00", "30min"
OVERRIDES = {"study.start": START, "study.duration": DURATION, "prosumers.count": 12}
CLI_SETS = ["--set", f"study.start={START}", "--set", f"study.duration={DURATION}",
            "--set", "prosumers.count=12"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The default study over 30 min around noon with 12 prosumers: once through the
    API from a dict (the file's sections) with overrides, once by ``tecosim run``."""
    root = tmp_path_factory.mktemp("api")
    raw = yaml.safe_load(DEFAULT.read_text())
    run = tecosim.run(raw, overrides=OVERRIDES, engine="in_process", out=root / "api", base_dir=DEFAULT.parent)
    r = tecosim_cli("run", str(DEFAULT), "--engine", "inprocess", "--out", str(root / "cli"), "--quiet",
                    "--no-report", *CLI_SETS)
    assert r.returncode == 0, r.stderr
    return {"api": run.path, "cli": root / "cli"}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.feeder
def test_a_run_from_a_dict_gives_the_commands_tables_and_kpis(runs):
    api, cli = tecosim.open_run(runs["api"]), tecosim.open_run(runs["cli"])
    assert api.status == cli.status == "ok" and api.engine == "inprocess"
    assert api.config == cli.config  # the same resolved study
    assert list(api.tables) == list(cli.tables) and len(api.tables) > 20
    differ = [n for n in api.tables
              if api.path.joinpath("results", f"{n}.parquet").read_bytes()
              != cli.path.joinpath("results", f"{n}.parquet").read_bytes()]
    assert not differ, f"tables whose Parquet files differ: {differ}"
    # the KPIs: the command's summary, and the totals of the whole-table kpis
    assert api.kpis.keys() == cli.kpis.keys()
    assert all(_same(api.kpis[k], cli.kpis[k]) for k in api.kpis), (api.kpis, cli.kpis)
    whole = summary(kpis(api.study, read_tables(api.path)))
    assert all(_same(api.kpis[k], float(v)) for k, v in whole.items()), (api.kpis, whole)
    assert api.kpis["violation_min_before"] > 0  # the window has work for the control (not vacuous)
    t = api.kpi_table().set_index("kpi")
    assert t.loc["v_min_pu", "unit"] == "pu" and t.loc["energy_traded_kwh", "unit"] == "kWh"
    pd.testing.assert_frame_equal(api.kpis_per_interval, cli.table("kpis"))
    assert api.manifest["command_line"][0] == "tecosim.run"  # not the test runner's argv


@pytest.mark.feeder
def test_tables_are_read_when_asked_and_kept(runs, tmp_path):
    folder = shutil.copytree(runs["cli"], tmp_path / "run")
    run = tecosim.open_run(folder)
    assert "voltages" in run.tables and len(run.tables) == len(list(run.tables))
    assert run.tables.loaded == ()  # listing reads nothing
    grid = run.tables["grid"]
    assert run.tables.loaded == ("grid",) and run.tables["grid"] is grid
    # a table is read from its file when first asked for, not when the run is opened
    other = pd.DataFrame({"step": [0, 1], "v_pu": [1.0, 1.01]})
    other.to_parquet(folder / "results" / "voltages.parquet", index=False)
    pd.testing.assert_frame_equal(run.tables["voltages"], other)
    assert run.tables.loaded == ("grid", "voltages")
    cols = run.table("grid", columns=["t_s"])
    assert list(cols.columns) == ["t_s"] and cols["t_s"].tolist() == grid["t_s"].tolist()
    with pytest.raises(KeyError, match="voltages"):  # names the tables there are
        run.tables["no_such_table"]


@pytest.mark.feeder
def test_compare_two_runs_through_the_api(runs, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's backend (a notebook's inline one) is not switched to Agg
    try:
        c = tecosim.compare([tecosim.open_run(runs["api"]), runs["cli"]], tmp_path / "cmp", labels=["api", "cli"])
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert c.html.is_file() and c.html.name == "compare.html"
    k = c.kpis.set_index("kpi")
    api = tecosim.open_run(runs["api"]).kpis
    for key in ("energy_traded_kwh", "v_min_pu", "grid_import_kwh"):
        assert k.loc[key, "api"] == k.loc[key, "cli"] == api[key]
    with pytest.raises(tecosim.ConfigError, match="--labels"):
        tecosim.compare([runs["api"], runs["cli"]], tmp_path / "cmp2", labels=["one"])


@pytest.mark.feeder
def test_figures_and_report(runs, tmp_path):
    run = tecosim.open_run(shutil.copytree(runs["api"], tmp_path / "run"))
    figs = run.figures(["market", "voltage_envelope"])
    assert list(figs) == ["market", "voltage_envelope"]
    assert figs["market"]._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # what a notebook shows
    assert run.report() == run.path / "report.html" and (run.path / "report" / "market.png").is_file()
    with pytest.raises(tecosim.ConfigError, match="voltage_envelope"):  # the allowed ids
        run.figures(["nope"])


# ---- without a run ---------------------------------------------------------------------


def test_a_bad_dict_field_is_the_config_error_naming_it(tmp_path):
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["market"]["topolgy"] = "p2p"
    with pytest.raises(tecosim.ConfigError) as e:
        tecosim.run(raw, engine="in_process", out=tmp_path / "never", base_dir=DEFAULT.parent)
    assert [p.field for p in e.value.problems] == ["market.topolgy"]
    assert "topology" in e.value.problems[0].allowed
    assert not (tmp_path / "never").exists()  # nothing ran
    # a bad override value: the problem the command reports for --set
    with pytest.raises(tecosim.ConfigError) as api_err:
        tecosim.load(DEFAULT, overrides={"market.topology": "nope"})
    with pytest.raises(tecosim.ConfigError) as cli_err:
        load_config(DEFAULT, ["market.topology=nope"])
    assert api_err.value.problems == cli_err.value.problems
    assert api_err.value.problems[0].field == "market.topology"
    with pytest.raises(tecosim.ConfigError) as bad_engine:
        tecosim.run(DEFAULT, engine="threads", out=tmp_path / "never")  # type: ignore[arg-type]
    assert bad_engine.value.problems[0].field == "engine"
    with pytest.raises(tecosim.ConfigError, match="overrides"):
        tecosim.load(DEFAULT, overrides="study.duration=2h")  # type: ignore[arg-type]


def test_overrides_as_a_dict_or_as_set_strings_and_a_dict_with_a_base():
    a = tecosim.load(DEFAULT, overrides={"study.duration": "2h", "controllers.enabled": False,
                                         "market.topology": "p2p"})
    b = tecosim.load(DEFAULT, overrides=["study.duration=2h", "controllers.enabled=false", "market.topology=p2p"])
    assert resolved_dict(a) == resolved_dict(b)
    assert a.study.duration_s == 7200 and a.market.mechanism == "lp"  # p2p's default mechanism
    c = tecosim.load({"base": "default.yaml", "study": {"duration": "2h"}, "controllers": {"enabled": False}},
                     overrides={"market.topology": "p2p"}, base_dir=DEFAULT.parent)
    assert resolved_dict(c) == resolved_dict(a)


def test_open_run_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(tecosim.ConfigError, match="not a run folder"):
        tecosim.open_run(tmp_path)


def test_the_command_called_in_process_leaves_no_argv_behind(capsys):
    """``runner.cli.main`` called in a Python process (a test, a notebook) sets the
    manifest's command line for its own run only: a later ``tecosim.run`` records its
    own (this leaked from one test to another in the full suite)."""
    from runner import launch
    from runner.cli import main

    assert main(["validate", str(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")]) == 0
    assert launch.COMMAND_LINE == []
