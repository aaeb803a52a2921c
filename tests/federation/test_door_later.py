"""``Door.later``: work done while the federate's next time request is pending, on a
real HELICS broker with two federate processes.

Federate A is granted 1.0 and leaves work for its request of 2.0; the work waits (at
most WAIT_S) for B to be granted 1.5. HELICS can grant B 1.5 only once A has asked for a
later time, so the work finishes only if A made its request before doing it: done
first (the plain request), it times out and the test fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.launch.prepare import free_port_block
from runner.launch.processes import helics_bin

pytestmark = pytest.mark.federation

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 20.0

A = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from federates.common.door import Door, wait_closed
    broker, flag, fail, wait_s = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "fail", float(sys.argv[4])
    door = Door("a", broker)
    door.enter()
    out = {"order": []}
    door.advance(1.0)
    def work():
        t0 = time.monotonic()
        while not flag.exists() and time.monotonic() - t0 < wait_s:
            time.sleep(0.01)
        out["b_granted_meanwhile"] = flag.exists()
        out["order"].append("work")
        if fail:
            raise ValueError("books do not balance")
    door.later(work)
    try:
        door.advance(2.0)
        out["order"].append(f"granted {door.granted:g}")
        door.later(lambda: out["order"].append("work at once"))
        door.advance(2.0)  # granted already: the work is done at once
        out["order"].append("after")
    except ValueError as e:
        out["raised"] = str(e)
    finally:
        out["overlapped_s"] = door.overlapped_s
        door.close()
        wait_closed()
    print(json.dumps(out))
""")

B = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from federates.common.door import Door, wait_closed
    broker, flag = sys.argv[1], Path(sys.argv[2])
    door = Door("b", broker)
    door.enter()
    granted = []
    for t in (1.5, 3.0):
        door.advance(t)
        granted.append(door.granted)
        if t == 1.5:
            flag.write_text("granted")
    door.close()
    wait_closed()
    print(json.dumps(granted))
""")


def _federation(tmp_path: Path, mode: str) -> tuple[dict, list[float]]:
    port = free_port_block()
    broker = subprocess.Popen([helics_bin("helics_broker"), "-f", "2", "--coretype=zmq", f"--port={port}",
                               "--local_interface=tcp://127.0.0.1", f"--name=door_later_{port}",
                               "--loglevel=warning", "--timeout=30s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address, flag = f"tcp://127.0.0.1:{port}", tmp_path / "b_granted"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        a = subprocess.Popen([sys.executable, "-c", A, address, str(flag), mode, str(WAIT_S)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        b = subprocess.Popen([sys.executable, "-c", B, address, str(flag)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out_a, err_a = a.communicate(timeout=60)
            out_b, err_b = b.communicate(timeout=60)
        finally:
            for p in (a, b):
                p.kill()
        assert a.returncode == 0, err_a
        assert b.returncode == 0, err_b
        return json.loads(out_a), json.loads(out_b)
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()


def test_later_work_runs_while_the_request_is_pending(tmp_path):
    a, b = _federation(tmp_path, "ok")
    assert a["b_granted_meanwhile"] is True  # B went on while A worked
    assert a["order"] == ["work", "granted 2", "work at once", "after"]
    assert a["overlapped_s"] > 0.0
    assert b == [1.5, 3.0]


def test_what_the_work_raises_is_raised_by_advance_and_the_door_still_closes(tmp_path):
    a, b = _federation(tmp_path, "fail")
    assert a["raised"] == "books do not balance"
    assert a["order"] == ["work"]  # nothing after the failed work
    assert b == [1.5, 3.0]  # B is not left waiting for A: A disconnected with its request pending
