"""A federate killed mid-run: the runner stops everything, names it, exits non-zero."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import DEFAULT, REPO, processes_mentioning

pytestmark = pytest.mark.federation


def _pid_of(run_dir, module: str) -> int | None:
    for line in processes_mentioning(str(run_dir)):
        if module in line:
            return int(line.split(":", 1)[0])
    return None


@pytest.mark.parametrize("victim", ["controllers", "feeder"])
def test_killed_federate_is_named_and_nothing_is_left(tmp_path, victim):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir),
         "--set", "study.duration=6h"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = run_dir / "logs" / f"{victim}.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and "executing" in log.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{victim} never started executing")
        time.sleep(1.0)  # mid-run
        pid = _pid_of(run_dir, f"federates.{victim}.federate")
        assert pid is not None, f"{victim} is not running"
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert f"federate '{victim}' exited with code -9" in err
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and victim in m["reason"]
    time.sleep(0.5)
    assert processes_mentioning(str(run_dir)) == []


def test_ctrl_c_stops_everything(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir),
         "--set", "study.duration=6h"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = run_dir / "logs" / "feeder.log"
        deadline = time.monotonic() + 120
        while not (log.exists() and "executing" in log.read_text()):
            assert time.monotonic() < deadline, "feeder never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    time.sleep(0.5)
    assert processes_mentioning(str(run_dir)) == []


def test_global_timeout_names_the_running_federates(tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir),
         "--set", "study.duration=24h", "--set", "federation.timeout_s=4"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "still running after timeout_s=4" in r.stderr
    assert "last lines of logs/" in r.stderr
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and "timeout" in m["reason"]
    assert processes_mentioning(str(run_dir)) == []
