"""`tecosim report | compare | sweep` and the run's progress output, as a user runs them.

Every study here is the default one over 30 min around solar noon, in process; the
two runs of ``two_runs`` start side by side. No wall-clock assertions.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest

from runner import cli
from runner.progress import (
    Progress,
    eta_s,
    format_duration,
    read_progress_file,
    write_progress_file,
)
from runner.sweep import Axis, make_points, parse_sets, sanitise, split_values
from tests.conftest import DEFAULT, REPO, tecosim

SHORT = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=30min"]
PROGRESS_LINE = re.compile(r"^tecosim run: +(\d+) %", re.MULTILINE)

# `tecosim run` with a runner.report whose write_report fails: the run must survive it
FAILING_REPORT = """
import sys, types
m = types.ModuleType("runner.report")
def write_report(run_dir, *, quiet=False):
    raise RuntimeError("report exploded on purpose")
m.write_report = write_report
sys.modules["runner.report"] = m
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Controllers on (progress shown, a report that fails) and off (--quiet, report written)."""
    root = tmp_path_factory.mktemp("runs")
    on, off = root / "ctl", root / "noctl"
    procs = {
        "on": (on, _start([sys.executable, "-c", FAILING_REPORT, "run", str(DEFAULT), "--engine", "inprocess",
                           "--out", str(on), *SHORT])),
        "off": (off, _start([sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--engine", "inprocess",
                             "--out", str(off), *SHORT, "--set", "controllers.enabled=false",
                             "--quiet"])),
    }
    out = {}
    for name, (run_dir, p) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (run_dir, subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.feeder
def test_run_progress_lines_end_at_100_and_quiet_prints_nothing(two_runs):
    _, r = two_runs["on"]
    assert r.returncode == 0, r.stderr
    pct = [int(x) for x in PROGRESS_LINE.findall(r.stderr)]
    assert pct and pct[-1] == 100 and pct == sorted(pct), r.stderr
    assert "\r" not in r.stderr  # stderr is a pipe: lines, no bar
    assert "simulated 0:30:00 of 0:30:00" in r.stderr
    assert "energy traded peer-to-peer" in r.stdout  # the summary
    off, q = two_runs["off"]
    assert q.returncode == 0, q.stderr
    assert q.stdout == "" and q.stderr == ""
    assert (off / "report.html").is_file()  # written at the end of the run, quietly


@pytest.mark.feeder
def test_a_failing_report_does_not_fail_the_run(two_runs):
    run_dir, r = two_runs["on"]
    assert r.returncode == 0
    assert "warning" in r.stderr and "report exploded on purpose" in r.stderr
    assert f"tecosim report {run_dir}" in r.stderr  # how to retry
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok" and "energy_traded_kwh" in manifest["summary"]
    assert (run_dir / "results" / "kpis.parquet").is_file() and (run_dir / "summary.txt").is_file()
    assert not (run_dir / "report.html").exists()


@pytest.mark.feeder
def test_compare_two_runs_labels_from_the_config_diff(two_runs, tmp_path):
    on, off = two_runs["on"][0], two_runs["off"][0]
    out = tmp_path / "cmp"
    r = tecosim("compare", str(on), str(off), "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    page = (out / "compare.html").read_text()
    refs = re.findall(r"""(?:src|href)=['"]([^'"]*)""", page)
    assert refs and all(x.startswith(("data:", "#")) for x in refs), refs
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert page.count("data:image/png;base64,") >= 5
    kpis = pd.read_csv(out / "compare_kpis.csv")
    labels = list(kpis.columns[2:])
    assert list(kpis.columns[:2]) == ["kpi", "unit"] and len(labels) == 2
    assert [s.lower() for s in labels] == ["controllers.enabled=true", "controllers.enabled=false"]
    row = kpis.set_index("kpi")
    assert row.loc["curtailed_kwh", "unit"] == "kWh"
    # control clears the voltage violations here; without it they stay
    assert row.loc["violation_min_after", labels[0]] < row.loc["violation_min_after", labels[1]]
    for png in ("voltage_max", "curtailment", "substation_power", "clearing_price", "losses"):
        assert (out / f"{png}.png").stat().st_size > 1000


@pytest.mark.feeder
def test_compare_with_labels_and_a_bad_path(two_runs, tmp_path):
    on, off = two_runs["on"][0], two_runs["off"][0]
    r = tecosim("compare", str(on), str(tmp_path), "--out", str(tmp_path / "x"), timeout=120)
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "not a run folder" in r.stderr
    assert not (tmp_path / "x").exists()
    r = tecosim("compare", str(on), str(off), "--labels", "a", timeout=120)
    assert r.returncode == 2 and "--labels" in r.stderr


@pytest.mark.feeder
def test_report_command(two_runs, tmp_path, monkeypatch):
    r = tecosim("report", str(tmp_path), timeout=120)
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "not a run folder" in r.stderr
    # on a run folder it hands over to runner.report.write_report (which the run itself
    # already exercised above; here only the wiring, without rendering again)
    calls = []
    fake = types.ModuleType("runner.report")
    fake.write_report = lambda run_dir, *, quiet=False: calls.append((Path(run_dir), quiet)) or run_dir
    monkeypatch.setitem(sys.modules, "runner.report", fake)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # main() would take over SIGTERM
    run_dir = two_runs["off"][0]
    assert cli.main(["report", str(run_dir), "--quiet"]) == 0
    assert calls == [(run_dir, True)]


@pytest.mark.feeder
def test_sweep_grid_of_four(tmp_path):
    out = tmp_path / "sweep"
    r = tecosim("sweep", str(DEFAULT), "--set", "prosumers.count=10,20", "--set", "controllers.enabled=true,false",
                *SHORT, "--jobs", "2", "--engine", "inprocess", "--out", str(out), "--no-report", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    names = [f"prosumers.count={n}_controllers.enabled={c}" for n in (10, 20) for c in ("true", "false")]
    doc = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in doc["points"]] == names
    assert [p["status"] for p in doc["points"]] == ["ok"] * 4 and doc["status"] == "ok"
    assert all(p["exit_code"] == 0 and p["wall_s"] > 0 for p in doc["points"])
    for name in names:
        assert json.loads((out / name / "manifest.json").read_text())["status"] == "ok"
        assert "100 %" in (out / name / "logs" / "run.log").read_text()
    assert doc["axes"] == {"prosumers.count": ["10", "20"], "controllers.enabled": ["true", "false"]}
    assert (out / "compare.html").is_file()
    kpis = pd.read_csv(out / "compare_kpis.csv")
    assert len(kpis.columns) == 2 + 4
    assert "prosumers.count=20, controllers.enabled=false" in kpis.columns
    lines = re.findall(r"^tecosim sweep: (\d)/4 done", r.stderr, re.MULTILINE)
    assert lines == ["1", "2", "3", "4"]


def test_sweep_with_a_bad_point_runs_nothing(tmp_path):
    out = tmp_path / "sweep"
    r = tecosim("sweep", str(DEFAULT), "--set", "market.topology=community,nope", *SHORT,
                "--engine", "inprocess", "--out", str(out), timeout=120)
    assert r.returncode == 2
    assert "[market.topology=nope] market.topology" in r.stderr
    assert "community" in r.stderr  # what is allowed
    assert "[market.topology=community]" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("fixed, field", [("federation.broker_port=23500", "federation.broker_port"),
                                          ("federation.broker_address=10.0.0.5", "federation.broker_address")])
def test_parallel_federations_cannot_share_one_broker(tmp_path, fixed, field):
    out = tmp_path / "sweep"
    r = tecosim("sweep", str(DEFAULT), "--set", "controllers.enabled=true,false", "--set", fixed, *SHORT,
                "--jobs", "2", "--out", str(out), timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"] {field}" in r.stderr and "--jobs 1" in r.stderr
    assert not out.exists()


@pytest.mark.feeder
def test_sweep_child_killed_mid_run_fails_only_its_point(tmp_path):
    """SIGKILL one child as soon as sweep.json names its pid (seconds before it could
    finish: it is still importing); the other point completes and is compared."""
    out = tmp_path / "sweep"
    p = _start([sys.executable, "-m", "runner.cli", "sweep", str(DEFAULT), "--set", "controllers.enabled=true,false",
                *SHORT, "--jobs", "2", "--engine", "inprocess", "--out", str(out), "--no-report"])
    try:
        victim = None
        end = time.monotonic() + 120
        while victim is None and time.monotonic() < end and p.poll() is None:
            try:
                points = json.loads((out / "sweep.json").read_text())["points"]
            except (OSError, ValueError):
                points = []
            if len(points) == 2 and all(q["pid"] for q in points):
                victim = points[1]
            else:
                time.sleep(0.05)
        assert victim is not None, "the sweep never started both runs"
        os.kill(victim["pid"], signal.SIGKILL)
        _, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, stderr
    assert "controllers.enabled=false: failed: killed by signal 9" in stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert [q["status"] for q in doc["points"]] == ["ok", "failed"]
    assert doc["points"][1]["exit_code"] == -signal.SIGKILL
    kpis = pd.read_csv(out / "compare_kpis.csv")
    assert len(kpis.columns) == 2 + 1


# ---------------------------------------------------------------------------- pieces


def test_split_values_and_parse_sets():
    assert split_values("a, b,[1,2],{x: 1, y: 2},'p,q'") == ["a", "b", "[1,2]", "{x: 1, y: 2}", "'p,q'"]
    fixed, axes = parse_sets(["study.duration=2h", "prosumers.count=10,20", "x.y=[1,2]"])
    assert fixed == ["study.duration=2h", "x.y=[1,2]"]
    assert axes == [Axis("prosumers.count", ["10", "20"])]
    with pytest.raises(Exception, match="given twice"):
        parse_sets(["a.b=1,2", "a.b=3"])
    with pytest.raises(Exception, match="key=value"):
        parse_sets(["nonsense"])
    assert sanitise("feeder.path=/data/my feeder/Master.dss") == "feeder.path=-data-my-feeder-Master.dss"
    pts = make_points([Axis("a.b", ["x/y", "x:y"])], Path("/tmp/s"))
    assert [p.name for p in pts] == ["a.b=x-y", "a.b=x-y-2"]  # apart after sanitising


def test_progress_lines_every_ten_percent_and_tty_bar(tmp_path):
    now = [0.0]
    buf = io.StringIO()
    bar = Progress(3600.0, stream=buf, tty=False, clock=lambda: now[0])
    for k in range(13):  # 5-minute intervals
        now[0] += 2.0
        bar.update(k * 300.0)
    bar.finish()
    pct = [int(x) for x in re.findall(r"(\d+) %", buf.getvalue())]
    assert pct == [17, 25, 33, 42, 50, 67, 75, 83, 92, 100]  # a line per 10 % step crossed
    tty = io.StringIO()
    bar = Progress(100.0, stream=tty, tty=True, clock=lambda: now[0])
    bar.update(50.0)
    bar.finish()
    assert tty.getvalue().startswith("\r") and tty.getvalue().endswith("\n") and "done" in tty.getvalue()
    quiet = io.StringIO()
    bar = Progress(100.0, stream=quiet, enabled=False)
    bar.update(100.0)
    bar.finish()
    assert quiet.getvalue() == ""
    assert eta_s(10.0, 25.0, 100.0) == pytest.approx(30.0)
    assert format_duration(125) == "2 min 05 s" and format_duration(3900) == "1 h 05 min"
    write_progress_file(tmp_path, 900.0)
    assert read_progress_file(tmp_path) == 900.0
    assert read_progress_file(tmp_path / "none") is None
