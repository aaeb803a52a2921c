"""Faults: a frozen federate is found by its heartbeat; concurrent runs and a leftover
broker do not collide on ports."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.launch import free_port_block, helics_bin, port_block_free
from tests.conftest import DEFAULT, REPO, processes_mentioning
from tests.federation.test_failure import _pid_of, _stop

pytestmark = pytest.mark.federation

# short, to keep the five freezes under 3 min, yet far above the federation's pauses
# between two heartbeats (milliseconds) once it executes
HANG_TIMEOUT_S = 5


def _start(run_dir, *extra: str) -> subprocess.Popen:
    """`tecosim run` of a 7-day study in the background; returns once the feeder is executing
    (as test_failure's, with ``extra`` options)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir), "--quiet", "--no-report",
         "--set", "study.duration=7d", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "logs" / "feeder.log"
    deadline = time.monotonic() + 400  # generous: see test_failure._start
    while not (log.exists() and "executing" in log.read_text()):
        if time.monotonic() > deadline or proc.poll() is not None:
            rc = proc.poll()
            _stop(proc)
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the federation never started executing (exit code {rc}):\n{err[-2000:]}")
        time.sleep(0.2)
    return proc


def _run(run_dir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir), "--quiet", "--no-report",
         "--set", "study.duration=15min", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return err


# every kind is frozen in turn under `pytest -m benchmark`; make test keeps two (suite time)
@pytest.mark.parametrize("victim", [pytest.param('prosumers', marks=pytest.mark.benchmark), pytest.param('market', marks=pytest.mark.benchmark), "feeder",
                                    pytest.param('meters', marks=pytest.mark.benchmark), "controllers"])
def test_frozen_federate_is_named_and_the_next_run_starts(tmp_path, victim):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--set", f"federation.hang_timeout_s={HANG_TIMEOUT_S}")
    pid = None
    try:
        time.sleep(1.0)  # mid-run
        assert (run_dir / "logs" / f"{victim}.heartbeat").is_file()
        pid = _pid_of(run_dir, f"federates.{victim}.federate")
        assert pid is not None, f"{victim} is not running"
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=HANG_TIMEOUT_S + 60)  # a generous limit
        detected_s = time.monotonic() - t0
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)  # only if the runner left it (it must not)
            except ProcessLookupError:
                pass
        _stop(proc)
    print(f"{victim}: detected after {detected_s:.1f} s")
    assert proc.returncode == 1, err
    assert f"federate '{victim}' hung at simulated time " in err, err
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed"
    assert f"federate '{victim}' hung at simulated time" in m["reason"]
    assert isinstance(m["results_written"], list)  # none here: killed federates write no table
    assert (run_dir / "logs" / f"{victim}.log").is_file()  # logs kept
    time.sleep(0.5)
    assert processes_mentioning(str(run_dir)) == []
    if victim != "controllers":  # once is enough (a 15-min run takes ~20 s)
        return
    # the next run, in a new folder, starts and completes
    nxt = tmp_path / "next"
    p2 = _run(nxt)
    err2 = _finish(p2)
    assert p2.returncode == 0, err2
    assert json.loads((nxt / "manifest.json").read_text())["status"] == "ok"


def test_concurrent_runs_do_not_collide(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pa, pb = _run(a), _run(b)
    err_a, err_b = _finish(pa), _finish(pb)
    assert pa.returncode == 0, err_a
    assert pb.returncode == 0, err_b
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["status"] == mb["status"] == "ok"
    assert ma["broker_port"] != mb["broker_port"]
    assert processes_mentioning(str(tmp_path)) == []


class _FirstThen(random.Random):
    """An rng whose first draw is ``first`` (the block a run would choose)."""

    def __init__(self, first: int) -> None:
        super().__init__(0)
        self.first = first

    def randrange(self, *args, **kwargs):
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return super().randrange(*args, **kwargs)


def _leftover_broker(port: int) -> subprocess.Popen:
    """A helics_broker on ``port`` as a killed run leaves it (waiting for federates)."""
    broker = subprocess.Popen(
        [helics_bin("helics_broker"), "-f", "5", "--coretype=zmq", "--local_interface=tcp://127.0.0.1",
         f"--port={port}", f"--name=tecosim_leftover_{port}", "--loglevel=warning", "--timeout=600s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while port_block_free(port, 2):
        assert broker.poll() is None and time.monotonic() < deadline, "the leftover broker did not listen"
        time.sleep(0.1)
    return broker


def test_leftover_broker_does_not_block_the_next_run(tmp_path):
    port = free_port_block()
    broker = _leftover_broker(port)
    try:
        assert not port_block_free(port, 20)
        assert free_port_block(rng=_FirstThen(port)) != port  # its block is skipped
        run_dir = tmp_path / "run"
        p = _run(run_dir)
        err = _finish(p)
        assert p.returncode == 0, err
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["status"] == "ok"
        assert port + 1 < m["broker_port"] or port >= m["broker_port"] + 20  # blocks apart
        assert broker.poll() is None  # it was not in the way, and nobody touched it
    finally:  # the whole group: helics_broker in the venv is a wrapper that starts the binary
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(timeout=10)
        assert processes_mentioning(f"tecosim_leftover_{port}") == []


def _beat(logs, name: str, state: str, req: float, granted: float) -> None:
    (logs / f"{name}.heartbeat").write_text(f"{state} {req:.6f} {granted:.6f}".ljust(47) + "\n")


def test_hang_watch_names_the_culprit(tmp_path):
    """HangWatch alone, on hand-written heartbeats (no federation)."""
    from runner.launch import HangWatch, Proc

    names = ["prosumers", "market", "feeder"]
    procs = [Proc(n, [], tmp_path / f"{n}.log") for n in ["broker", *names]]
    watch = HangWatch(tmp_path, names, timeout_s=10)
    assert watch.check(procs, 0.0) is None  # no heartbeat: not executing yet, never hung
    assert watch.check(procs, 100.0) is None
    _beat(tmp_path, "prosumers", "reqt", 901.25, 900.5)
    _beat(tmp_path, "market", "grnt", 900.5, 900.5)
    _beat(tmp_path, "feeder", "reqt", 901.0, 900.003)
    assert watch.check(procs, 100.0) is None  # changed: the clock restarts
    assert watch.check(procs, 109.0) is None
    e = watch.check(procs, 111.0)
    assert e is not None and str(e).startswith(
        "federate 'market' hung at simulated time 900.5 s (no time request for 11 s)")
    _beat(tmp_path, "market", "reqt", 901.5, 900.5)  # everyone requests: the broker
    assert watch.check(procs, 200.0) is None
    e = watch.check(procs, 300.0)
    assert e is not None and e.federate == "broker" and "hung at simulated time 900.003 s" in str(e)
    for n in names:  # all closed: finishing up, not hung
        _beat(tmp_path, n, "done", 901.0, 901.0)
    assert watch.check(procs, 400.0) is None
    assert watch.check(procs, 500.0) is None
    sleeper = subprocess.Popen(["sleep", "60"])  # a process stopped while it requests
    try:
        os.kill(sleeper.pid, signal.SIGSTOP)
        # the signal is delivered asynchronously: wait until the kernel shows it stopped
        stat = Path(f"/proc/{sleeper.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            assert time.monotonic() < deadline, "sleep did not stop"
            time.sleep(0.01)
        procs[2].popen = sleeper
        _beat(tmp_path, "market", "reqt", 1801.5, 1800.5)
        assert watch.check(procs, 600.0) is None
        e = watch.check(procs, 700.0)
        assert e is not None and str(e).startswith("federate 'market' hung at simulated time 1800.5 s")
    finally:
        sleeper.kill()
        sleeper.wait()
