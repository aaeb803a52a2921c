"""A federate killed mid-run: the runner stops everything, names it, exits non-zero."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from runner.sweep import kill_leftovers
from tests.conftest import DEFAULT, REPO, processes_mentioning

pytestmark = pytest.mark.federation


def _pid_of(run_dir, module: str) -> int | None:
    for line in processes_mentioning(str(run_dir)):
        if module in line:
            return int(line.split(":", 1)[0])
    return None


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the runner (it then stops its federation); kill it only if it ignores that."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _start(run_dir, duration: str = "7d") -> subprocess.Popen:
    """`tecosim run` in the background; returns once the feeder is executing."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir),
         "--set", f"study.duration={duration}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "logs" / "feeder.log"
    # generous: the first federation of a fresh checkout compiles every module in six
    # processes at once on a 2-core machine (seen: over 120 s under load)
    deadline = time.monotonic() + 400
    while not (log.exists() and "executing" in log.read_text()):
        if time.monotonic() > deadline or proc.poll() is not None:
            rc = proc.poll()
            _stop(proc)
            _, err = proc.communicate(timeout=30)
            tails = {p.name: p.read_text()[-800:] for p in sorted((run_dir / "logs").glob("*.log"))} \
                if (run_dir / "logs").is_dir() else {}
            pytest.fail(f"the federation never started executing (exit code {rc}):\n{err[-2000:]}\n{tails}")
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("victim", ["controllers", "feeder"])
def test_killed_federate_is_named_and_nothing_is_left(tmp_path, victim):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    try:
        time.sleep(1.0)  # mid-run
        pid = _pid_of(run_dir, f"federates.{victim}.federate")
        assert pid is not None, f"{victim} is not running"
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err
    assert f"federate '{victim}' exited with code -9 at simulated time " in err
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and victim in m["reason"] and "at simulated time" in m["reason"]
    time.sleep(0.5)
    assert processes_mentioning(str(run_dir)) == []


def test_ctrl_c_stops_everything(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 130, err
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    time.sleep(0.5)
    assert processes_mentioning(str(run_dir)) == []


def test_global_timeout_names_the_running_federates(tmp_path):
    """A week cannot end within 4 s: its no-op federation alone (floor b of
    BENCHMARKS.md, ~0.9 s a day) takes longer. A day could, on a fast machine: CI's
    runner finished one in under 4 s once the engines got faster."""
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir),
         "--set", "study.duration=7d", "--set", "federation.timeout_s=4"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "still running after timeout_s=4" in r.stderr and "simulated time" in r.stderr
    assert "last lines of logs/" in r.stderr
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and "timeout" in m["reason"]
    assert processes_mentioning(str(run_dir)) == []


def _gone(run_dir, port, within_s: float = 10.0) -> list[str]:
    """The processes of the run (federates: ``--run-dir``; the broker: its name) still
    alive after ``within_s`` [s]."""
    deadline = time.monotonic() + within_s
    while True:
        left = processes_mentioning(str(run_dir)) + processes_mentioning(f"tecosim_broker_{port}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_sigterm_while_the_runner_forks_its_federates(tmp_path):
    """SIGTERM to the runner as it forks its federates (fourteen here: ten prosumer
    parts), one after the other, each fork of a runner that holds the prepared study.
    A signal raised in the middle of a fork was lost: in logging's at-fork hook
    ("Exception ignored in: _releaseLock") while the run went on to its end with exit 0,
    or between a fork and the federate's own process group, which orphaned that
    federate. It must stop everything with 143."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir), "--quiet", "--no-report",
         "--set", "study.duration=7d", "--set", "prosumers.federates=10", "--set", "federation.launch=fork"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run_dir / "logs" / "prosumers_0.log"  # opened just before the first fork
    deadline = time.monotonic() + 400  # generous: see _start
    try:
        try:
            while not first.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "the runner never forked a federate"
                time.sleep(0.001)
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail("the runner lost the SIGTERM: still running 30 s later")
        finally:
            _stop(proc)
        m = json.loads((run_dir / "manifest.json").read_text())
        assert _gone(run_dir, m["broker_port"]) == []
        assert proc.returncode == 143, err
        assert "interrupted (SIGTERM)" in err and "Exception ignored" not in err
        assert m["status"] == "failed" and m["reason"] == "interrupted (SIGTERM)"
    finally:
        kill_leftovers(run_dir)  # what a failed check above left, not to burden the next tests


def test_sigterm_mid_run_keeps_the_tables_written(tmp_path):
    """SIGTERM to the runner while the federates compute: they close their tables with
    the chunks written so far (readable Parquet, listed by the manifest), nothing of the
    run is left, exit 143. Killed outright (SIGKILL, as the runner did), each table lost
    its footer and with it every chunk."""
    import pyarrow.parquet as pq

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir), "--quiet", "--no-report",
         "--set", "study.duration=7d", "--set", "study.chunk_intervals=1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = run_dir / "progress"
    deadline = time.monotonic() + 400  # generous: see _start
    try:
        while not (progress.exists() and float(progress.read_text() or 0) >= 3 * 900):  # 3 chunks in
            assert proc.poll() is None and time.monotonic() < deadline, "the federation never got going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert _gone(run_dir, m["broker_port"]) == []
    tables = sorted((run_dir / "results").glob("*.parquet"))
    assert {"meters", "voltages", "trades", "settlements"} <= {p.stem for p in tables}
    for path in tables:
        pq.ParquetFile(path)  # readable: closed with its footer
    assert pq.ParquetFile(run_dir / "results" / "meters.parquet").metadata.num_rows > 0
    assert m["results_written"] == [p.stem for p in tables] and m["results_incomplete"] == []
    assert proc.returncode == 143, err
    assert m["status"] == "failed" and m["reason"] == "interrupted (SIGTERM)"


def test_nothing_outlives_a_runner_killed_outright(tmp_path):
    """SIGKILL to the runner mid-run: none of its own clean-up runs, yet the kernel
    sends each federate and the broker SIGTERM as their parent dies
    (``runner.launch.die_with_parent``), so nothing of the run is left."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir), "--quiet", "--no-report",
         "--set", "study.duration=7d"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = run_dir / "progress"
    deadline = time.monotonic() + 400  # generous: see _start
    try:
        while not (progress.exists() and float(progress.read_text() or 0) >= 900):
            assert proc.poll() is None and time.monotonic() < deadline, "the federation never got going"
            time.sleep(0.05)
        federates = processes_mentioning(str(run_dir))
        ports = {m.group(1) for c in federates for m in [re.search(r"--broker-address \S+:(\d+)", c)] if m}
        assert len(federates) >= 5 and len(ports) == 1, federates  # the federates are there
        port = ports.pop()
        assert processes_mentioning(f"tecosim_broker_{port}"), "the broker is there"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    assert _gone(run_dir, port) == []
