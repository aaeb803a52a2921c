"""``tecosim sweep`` on a Dask cluster: a real ``LocalCluster`` of two worker
processes (one thread each), federations on the workers.

One sweep of three points through the Python function: two federations that run on
the two workers at once, each with its own broker port block, and a point the sweep
accepts (``prosumers.count: 60`` is a valid count) that fails on its worker at run
time (60 prosumers cannot each have one of the IEEE 13-node feeder's loads); its error
and log are recorded and the other two complete. Then ``tecosim sweep --dask ADDRESS``
on the command line, interrupted (SIGINT) while the federations run: the futures are
cancelled, every task stops its run, and nothing is left running on the workers.
"""

from __future__ import annotations

import io
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DEFAULT, REPO, processes_mentioning

pytestmark = [pytest.mark.federation, pytest.mark.slow]

SHORT = ["study.start=2026-06-21T11:00:00-04:00", "study.duration=30min"]
TASK_DIR = "tecosim-dask-"  # the prefix of a task's temporary folder (runner/sweep_dask.py)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def _task_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{TASK_DIR}*"))


def test_points_run_on_the_workers_and_a_failing_one_is_named(client, tmp_path):
    from runner.kpis import run_kpis, summary
    from runner.run_folder import RunFolder
    from runner.sweep import run_sweep

    before = _task_dirs()
    out = tmp_path / "sweep"
    log = io.StringIO()
    sweep = run_sweep(DEFAULT, ["prosumers.count=8,60,10", "prosumers.placement=one_per_load", *SHORT],
                      engine="federation", out=out, client=client, report=False, stream=log)
    assert sweep.exit_code == 1, log.getvalue()
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["dask"] == client.scheduler.address and doc["status"] == "failed"
    by_name = {p["name"]: p for p in doc["points"]}
    assert [p["status"] for p in doc["points"]] == ["ok", "failed", "ok"], log.getvalue()

    bad = by_name["prosumers.count=60"]
    assert bad["exit_code"] == 2 and "cannot place 60 prosumers" in bad["error"]
    assert "cannot place 60 prosumers" in (out / "prosumers.count=60" / "logs" / "run.log").read_text()
    assert "prosumers.count=60" in log.getvalue() and "cannot place 60 prosumers" in log.getvalue()

    ports = []
    for name in ("prosumers.count=8", "prosumers.count=10"):
        assert by_name[name]["exit_code"] == 0 and by_name[name]["host"]
        folder = RunFolder(out / name)
        m = folder.manifest
        assert m["status"] == "ok" and m["engine"] == "federation"
        assert folder.cfg.prosumers.count == int(name.split("=")[1])
        worker_dir = Path(m["command_line"][m["command_line"].index("--out") + 1])
        assert worker_dir.name == name and worker_dir.parent.name.startswith(TASK_DIR)
        assert not worker_dir.parent.exists()  # the task removed its temporary folder
        ports.append(m["broker_port"])
        assert (out / name / "logs" / "run.log").is_file() and (out / name / "logs" / "market.log").is_file()
    assert ports[0] != ports[1]  # each federation its own broker port block

    df = pd.read_parquet(out / "sweep.parquet")
    assert df["run"].tolist() == ["prosumers.count=8", "prosumers.count=60", "prosumers.count=10"]
    assert df["prosumers.count"].tolist() == [8, 60, 10] and df["seed"].tolist() == [42] * 3
    assert df["status"].tolist() == ["ok", "failed", "ok"]
    assert "cannot place 60 prosumers" in df["error"].iloc[1]
    assert math.isnan(df["energy_traded_kwh"].iloc[1])
    for i in (0, 2):  # the copied-back tables give the KPIs the sweep recorded
        folder = RunFolder(out / df["run"].iloc[i])
        expected = summary(run_kpis(folder.cfg, folder.path))
        assert {k: df[k].iloc[i] for k in expected} == pytest.approx(expected, rel=1e-12, abs=1e-12)
    kpis = pd.read_csv(out / "compare_kpis.csv")
    assert len(kpis.columns) == 2 + 2  # the two runs that ended ok
    assert _task_dirs() <= before  # every task removed its folder


def _wait_for(what, timeout_s: float, step_s: float = 0.2):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(step_s)
    return None


def test_ctrl_c_cancels_the_futures_and_stops_the_runs_on_the_workers(client, tmp_path):
    out = tmp_path / "sweep"
    before = _task_dirs()
    p = subprocess.Popen([sys.executable, "-m", "runner.cli", "sweep", str(DEFAULT),
                          "--set", "prosumers.count=10,20,30", "--set", "study.duration=7d",
                          "--engine", "federation", "--no-report", "--dask", client.scheduler.address,
                          "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # both workers busy: two federations' federates under way in the tasks' folders
        running = _wait_for(lambda: len({c.split("--run-dir ", 1)[1].split()[0]
                                         for c in processes_mentioning(TASK_DIR) if "--run-dir " in c}) >= 2, 180)
        assert running, "the two tasks never started their federations"
        time.sleep(2.0)  # a week of study time: no run can end before the signal (6 h did on a fast runner)
        p.send_signal(signal.SIGINT)
        _, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["status"] == "interrupted"
    assert [q["status"] for q in doc["points"]] == ["interrupted"] * 3, doc["points"]
    # every task saw the stop event, stopped its federation and removed its folder
    assert _wait_for(lambda: not processes_mentioning(TASK_DIR), 60), processes_mentioning(TASK_DIR)
    assert _wait_for(lambda: _task_dirs() <= before, 30)
    assert _wait_for(lambda: not any(client.processing().values()), 30)  # nothing left on the workers
