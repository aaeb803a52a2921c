"""Monte Carlo sweeps (``tecosim sweep --seeds N``): the t interval against hand
computations and printed t tables, the seeds and run names, the seed groups of
``compare``, ``sweep.parquet``'s columns, and what a Dask task is sent and returns.

The t quantiles are those of any printed table of Student's t distribution (two-sided
95 %, i.e. the 0.975 quantile): 12.706 (1 degree of freedom), 4.303 (2), 2.776 (4),
2.042 (30).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federates.common.errors import ConfigError
from runner.compare import RunData, seed_groups
from runner.confidence import band, interval_table, t_interval, t_quantile
from runner.sweep import (
    Axis,
    axis_column,
    log_error,
    make_points,
    plan_sweep,
    seed_list,
    sweep_table,
)
from tests.conftest import DEFAULT, tecosim

#: t_{0.975, n-1} from a printed table, by n
T_TABLE = {2: 12.706, 3: 4.303, 5: 2.776, 31: 2.042}


@pytest.mark.parametrize("n, t", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_printed_table(n, t):
    assert t_quantile(n) == pytest.approx(t, abs=5e-4)  # the table's 3 decimals


def test_t_interval_of_one_to_five_by_hand():
    # mean 3, s^2 = (4 + 1 + 0 + 1 + 4) / 4 = 2.5, half width 2.776 * sqrt(2.5) / sqrt(5)
    iv = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert iv.n == 5 and iv.mean == 3.0
    assert iv.std == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert iv.half_width == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=2e-4)  # 1.963
    assert iv.low == pytest.approx(3.0 - 1.963, abs=1e-3) and iv.high == pytest.approx(3.0 + 1.963, abs=1e-3)


def test_t_interval_leaves_out_missing_values_and_has_none_for_one_run():
    iv = t_interval([10.0, float("nan"), 14.0])  # n = 2: mean 12, s = sqrt(8), t = 12.706
    assert iv.n == 2 and iv.mean == 12.0
    assert iv.half_width == pytest.approx(12.706 * math.sqrt(8) / math.sqrt(2), rel=1e-4)
    one = t_interval([7.5])
    assert one.n == 1 and one.mean == 7.5 and math.isnan(one.half_width) and math.isnan(one.low)
    none = t_interval([])
    assert none.n == 0 and math.isnan(none.mean)


def test_interval_table_per_group_and_kpi():
    rows = pd.DataFrame({"group": ["a", "a", "a", "b"], "x_kwh": [1.0, 2.0, 6.0, 4.0], "y_pu": [1.0, 1.0, 1.0, 0.9]})
    t = interval_table(rows, "group", ["x_kwh", "y_pu"], ["kWh", "pu"])
    assert list(t["group"]) == ["a", "a", "b", "b"] and list(t["kpi"]) == ["x_kwh", "y_pu"] * 2
    a = t.iloc[0]  # mean 3, s^2 = (4 + 1 + 9) / 2 = 7
    assert a["n"] == 3 and a["mean"] == 3.0 and a["unit"] == "kWh"
    assert a["half_width"] == pytest.approx(4.303 * math.sqrt(7) / math.sqrt(3), rel=1e-4)
    assert a["ci_low"] == pytest.approx(3.0 - a["half_width"]) and a["ci_high"] == pytest.approx(3.0 + a["half_width"])
    assert t.iloc[1]["half_width"] == 0.0  # equal values: s = 0
    assert t.iloc[2]["n"] == 1 and math.isnan(t.iloc[2]["half_width"])


def test_band_is_the_t_interval_at_each_time():
    t_s = [0.0, 60.0, 120.0]
    curves = [pd.Series([1.0, 2.0, 5.0], index=t_s), pd.Series([3.0, 2.0, np.nan], index=t_s),
              pd.Series([5.0, 2.0, np.nan], index=t_s)]
    b = band(curves)
    assert list(b["n"]) == [3, 3, 1] and list(b["mean"]) == [3.0, 2.0, 5.0]
    assert b["high"].iloc[0] - 3.0 == pytest.approx(4.303 * 2.0 / math.sqrt(3), rel=1e-4)  # s = 2
    assert b["low"].iloc[1] == b["high"].iloc[1] == 2.0  # no spread
    assert b["low"].iloc[2] == b["high"].iloc[2] == 5.0  # one run: no band


# ---------------------------------------------------------------------------- seeds and runs


def test_seeds_follow_the_study_seed_and_name_the_runs(tmp_path):
    assert seed_list(DEFAULT, [], [], 3) == [42, 43, 44]  # configs/default.yaml: study.seed 42
    assert seed_list(DEFAULT, ["study.seed=7"], [], 2) == [7, 8]
    pts = make_points([Axis("prosumers.count", ["10", "20"])], tmp_path, seeds=[7, 8])
    assert [p.name for p in pts] == ["prosumers.count=10_seed=7", "prosumers.count=10_seed=8",
                                     "prosumers.count=20_seed=7", "prosumers.count=20_seed=8"]
    assert pts[1].overrides == ["prosumers.count=10", "study.seed=8"]
    assert pts[1].point == "prosumers.count=10" and pts[1].point_label == "prosumers.count=10"
    assert pts[1].run_dir == tmp_path / "prosumers.count=10_seed=8"
    alone = make_points([], tmp_path, seeds=[42, 43])
    assert [p.name for p in alone] == ["seed=42", "seed=43"] and alone[0].overrides == ["study.seed=42"]
    # without --seeds: the names and overrides of before
    plain = make_points([Axis("prosumers.count", ["10", "20"])], tmp_path)
    assert [p.name for p in plain] == ["prosumers.count=10", "prosumers.count=20"]
    assert plain[0].overrides == ["prosumers.count=10"] and plain[0].seed is None


def test_bad_seeds_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="--seeds: must be at least 1"):
        plan_sweep(DEFAULT, ["prosumers.count=10,20"], seeds=0, out=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"study\.seed: is an axis"):
        plan_sweep(DEFAULT, ["study.seed=1,2"], seeds=3, out=tmp_path / "b")
    r = tecosim("sweep", str(DEFAULT), "--seeds", "0", "--out", str(tmp_path / "c"), timeout=120)
    assert r.returncode == 2 and "--seeds" in r.stderr
    assert not any((tmp_path / x).exists() for x in "abc")


def test_a_sweep_plan_validates_each_seed_and_records_it(tmp_path):
    sweep = plan_sweep(DEFAULT, ["controllers.enabled=true,false", "study.duration=30min"], seeds=2,
                       engine="inprocess", out=tmp_path / "s")
    assert sweep.seeds == [42, 43]
    assert [p.name for p in sweep.points] == ["controllers.enabled=true_seed=42", "controllers.enabled=true_seed=43",
                                              "controllers.enabled=false_seed=42", "controllers.enabled=false_seed=43"]
    assert sweep.study_seeds == {p.name: p.seed for p in sweep.points}
    assert not (tmp_path / "s").exists()  # planned, nothing run


def test_parallel_dask_federations_cannot_share_one_broker(tmp_path):
    with pytest.raises(ConfigError, match=r"federation\.broker_port") as e:
        plan_sweep(DEFAULT, ["controllers.enabled=true,false", "federation.broker_port=23500"], dask=True,
                   out=tmp_path / "s")
    assert "Dask" in str(e.value) and "--jobs 1" not in str(e.value)


def test_axis_columns_are_typed():
    assert axis_column(["10", "20"]) == [10, 20]
    assert axis_column(["true", "false"]) == [True, False]
    assert axis_column(["0.5", "1"]) == [0.5, 1.0]
    assert axis_column(["community", "p2p"]) == ["community", "p2p"]
    assert axis_column(["10", "off"]) == ["10", "off"]  # kinds differ: the YAML text
    assert axis_column(["[1,2]", "[3]"]) == ["[1,2]", "[3]"]


def test_sweep_table_of_runs_that_did_not_end_ok(tmp_path):
    pts = make_points([Axis("prosumers.count", ["10", "20"])], tmp_path, seeds=[5, 6])
    for p, status in zip(pts, ["failed", "interrupted", "not started", "failed"], strict=True):
        p.status = status
    pts[0].exit_code, pts[0].wall_s, pts[0].error = 2, 1.5, "tecosim: invalid ..."
    df = sweep_table(pts, [Axis("prosumers.count", ["10", "20"])])
    assert list(df.columns) == ["point", "run", "prosumers.count", "seed", "status", "exit_code", "wall_s", "error"]
    assert list(df["prosumers.count"]) == [10, 10, 20, 20] and list(df["seed"]) == [5, 6, 5, 6]
    assert df["status"].tolist() == ["failed", "interrupted", "not started", "failed"]
    assert df["exit_code"].iloc[0] == 2 and df["exit_code"].isna().sum() == 3
    path = tmp_path / "t.parquet"
    df.to_parquet(path, index=False)  # the nullable columns survive Parquet
    back = pd.read_parquet(path)
    assert back["seed"].tolist() == [5, 6, 5, 6] and back["error"].iloc[0] == "tecosim: invalid ..."


def test_log_error_finds_what_the_run_said(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("tecosim: running default (inprocess) in /x\ntecosim run:  10 %\n"
                   "tecosim: invalid feeder: 1 problem(s)\n  - prosumers: cannot place 60 prosumers\n")
    assert log_error(log) == "tecosim: invalid feeder: 1 problem(s); - prosumers: cannot place 60 prosumers"
    log.write_text("tecosim: running x\nTraceback (most recent call last):\n  File ...\nValueError: boom\n")
    assert log_error(log) == "ValueError: boom"
    log.write_text("tecosim: running x\ntecosim run:  50 %\n")  # killed outright: no word
    assert log_error(log) is None
    assert log_error(tmp_path / "none.log") is None


# ---------------------------------------------------------------------------- compare's seed groups


def _run(name: str, seed: int, **study: object) -> RunData:
    config = {"study": {"name": "default", "seed": seed, **study}, "controllers": {"enabled": True}}
    return RunData(Path("/runs") / name, {"engine": "inprocess"}, config, pd.DataFrame(), {})


def test_seed_groups_are_runs_that_differ_only_by_seed():
    runs = [_run("a", 1), _run("b", 2), _run("c", 3)]
    assert seed_groups(runs) == ["default"] * 3  # one group, named by its study
    runs = [_run("a", 1, duration=60), _run("b", 2, duration=60), _run("c", 1, duration=120),
            _run("d", 2, duration=120)]
    assert seed_groups(runs) == ["study.duration=60"] * 2 + ["study.duration=120"] * 2
    assert seed_groups([_run("a", 1, duration=60), _run("b", 1, duration=120)]) is None  # no seed differs
    assert seed_groups([_run("a", 1), _run("b", 1)]) is None  # the same run twice: no Monte Carlo
    other_engine = _run("b", 2)
    other_engine.manifest["engine"] = "federation"
    assert seed_groups([_run("a", 1), other_engine]) is None


# ---------------------------------------------------------------------------- Dask: what a task gets and gives


def test_a_dask_task_gets_the_whole_resolved_config(tmp_path):
    from federates.common.config import load_config, resolved_dict
    from runner.sweep_dask import run_config_yaml

    sweep = plan_sweep(DEFAULT, ["prosumers.count=10,20", "study.duration=30min"], seeds=2, out=tmp_path / "s",
                       engine="inprocess")
    p = sweep.points[3]
    text = run_config_yaml(sweep, p)
    copy = tmp_path / "elsewhere" / "default.yaml"
    copy.parent.mkdir()
    copy.write_text(text)
    # read alone, far from configs/, it is the config the point would run with here
    assert resolved_dict(load_config(copy)) == resolved_dict(load_config(DEFAULT, [*sweep.fixed, *p.overrides]))
    assert load_config(copy).study.seed == 43 and load_config(copy).prosumers.count == 20


def test_files_from_a_task_stay_in_their_run_folder(tmp_path):
    from runner.sweep_dask import write_files

    write_files(tmp_path / "run", {"results/a.parquet": b"x", "manifest.json": b"{}"})
    assert (tmp_path / "run" / "results" / "a.parquet").read_bytes() == b"x"
    with pytest.raises(ValueError, match="outside its run folder"):
        write_files(tmp_path / "run", {"../escape.txt": b"x"})
    assert not (tmp_path / "escape.txt").exists()


# ---------------------------------------------------------------------------- a real sweep: 2 points x 3 seeds

SHORT = ["study.start=2026-06-21T11:00:00-04:00", "study.duration=30min"]


@pytest.fixture(scope="module")
def mc_sweep(tmp_path_factory):
    """The default study over 30 min at noon, with and without control, 3 seeds each,
    in process, 2 at a time, through the Python API (``tecosim.sweep``, which calls
    ``runner.sweep.run_sweep`` as the command does)."""
    import tecosim

    out = tmp_path_factory.mktemp("mc") / "sweep"
    axes = {"controllers.enabled": [True, False], **dict(s.split("=", 1) for s in SHORT)}
    sweep = tecosim.sweep(DEFAULT, axes, seeds=3, jobs=2, engine="in_process", out=out, report=False)
    assert sweep.exit_code == 0, sweep.table[["run", "status", "error"]].to_string()
    assert [r.path.name for r in sweep.runs] == sweep.table["run"].tolist()
    return sweep


@pytest.mark.feeder
@pytest.mark.slow
def test_sweep_parquet_rows_are_each_runs_kpis(mc_sweep):
    from runner.kpis import run_kpis, summary
    from runner.run_folder import RunFolder

    out = mc_sweep.folder
    df = pd.read_parquet(out / "sweep.parquet")
    names = [f"controllers.enabled={c}_seed={s}" for c in ("true", "false") for s in (42, 43, 44)]
    assert df["run"].tolist() == names and df["status"].tolist() == ["ok"] * 6
    assert df["point"].tolist() == ["controllers.enabled=true"] * 3 + ["controllers.enabled=false"] * 3
    assert df["controllers.enabled"].tolist() == [True] * 3 + [False] * 3
    assert df["seed"].tolist() == [42, 43, 44] * 2
    for _, row in df.iterrows():
        folder = RunFolder(out / row["run"])
        assert folder.cfg.study.seed == row["seed"]
        # the KPIs recomputed from the run's results tables, as runner/kpis.py defines them
        expected = summary(run_kpis(folder.cfg, folder.path))
        assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-12, abs=1e-12), row["run"]
    # the seeds do draw other prosumers: the interval is not a degenerate one
    assert df.loc[df["controllers.enabled"], "energy_traded_kwh"].nunique() == 3


@pytest.mark.feeder
@pytest.mark.slow
def test_the_sweep_report_shows_mean_and_interval_per_point(mc_sweep):
    out = mc_sweep.folder
    df = pd.read_parquet(out / "sweep.parquet")
    ci = pd.read_csv(out / "compare_ci.csv")
    assert list(ci["group"].unique()) == ["controllers.enabled=true", "controllers.enabled=false"]
    for (group, enabled) in (("controllers.enabled=true", True), ("controllers.enabled=false", False)):
        for kpi in ("energy_traded_kwh", "violation_min_after", "losses_kwh", "v_max_pu"):
            x = df.loc[df["controllers.enabled"] == enabled, kpi].to_numpy()
            row = ci[(ci["group"] == group) & (ci["kpi"] == kpi)].iloc[0]
            s = float(np.std(x, ddof=1))
            assert row["n"] == 3 and row["mean"] == pytest.approx(x.mean(), rel=1e-12)
            assert row["half_width"] == pytest.approx(4.303 * s / math.sqrt(3), rel=1e-4, abs=1e-12)
    page = (out / "compare.html").read_text()
    assert "mean ± t(0.975, n-1) · s/√n" in page and "(n=3)" in page
    assert "band: the 95 % confidence interval" in page
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["seeds"] == [42, 43, 44] and [p["seed"] for p in doc["points"]] == [42, 43, 44] * 2
    assert doc["table"] == str(out / "sweep.parquet")


@pytest.mark.feeder
@pytest.mark.slow
def test_compare_finds_the_seeds_of_one_point(mc_sweep, tmp_path):
    runs = [mc_sweep.folder / f"controllers.enabled=false_seed={s}" for s in (42, 43, 44)]
    r = tecosim("compare", *map(str, runs), "--out", str(tmp_path / "cmp"), timeout=300)
    assert r.returncode == 0, r.stderr
    ci = pd.read_csv(tmp_path / "cmp" / "compare_ci.csv")
    assert set(ci["group"]) == {"default"} and set(ci["n"]) == {3}
    mc = pd.read_csv(mc_sweep.folder / "compare_ci.csv")
    same = mc[mc["group"] == "controllers.enabled=false"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ci.drop(columns="group"), same.drop(columns="group"))
    kpis = pd.read_csv(tmp_path / "cmp" / "compare_kpis.csv")
    assert len(kpis.columns) == 2 + 3  # still a column per run
