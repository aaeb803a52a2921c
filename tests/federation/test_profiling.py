"""Profiling a federation as a user does (``TECOSIM_PROFILE_DIR``): one cProfile per
federate, holding its role's work; each federate's log splits its time loop."""

from __future__ import annotations

import os
import pstats
import re
import subprocess
import sys

import pytest

from federates.common import keys
from tests.conftest import DEFAULT, MIDDAY, REPO

pytestmark = pytest.mark.federation

#: a function of each role that the federate must have run
ROLE_WORK = {"prosumers": "bids_sent", "market": "on_market_time", "feeder": "begin_step",
             "meters": "record_interval", "controllers": "envelopes"}


def test_profiled_federation_leaves_a_profile_and_a_split_per_federate(tmp_path):
    run_dir, prof = tmp_path / "run", tmp_path / "prof"
    done = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(run_dir),
                           "--quiet", "--no-report", *MIDDAY], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TECOSIM_PROFILE_DIR": str(prof)})
    assert done.returncode == 0, done.stderr
    n_intervals = 8  # 2 h of 15 min
    assert sorted(p.stem for p in prof.glob("*.prof")) == sorted(keys.FEDERATES)
    for name in keys.FEDERATES:
        ran = {(os.path.basename(f), fn) for f, _, fn in pstats.Stats(str(prof / f"{name}.prof")).stats}
        assert ("role.py", ROLE_WORK[name]) in ran, name
        log = (run_dir / "logs" / f"{name}.log").read_text()
        loop = re.search(r"time loop ([\d.]+) s: (\d+) time requests waited ([\d.]+) s \(CPU [\d.]+ s\); "
                         r"outside them ([\d.]+) s", log)
        assert loop is not None, log
        assert re.search(r"done in [\d.]+ s \(CPU [\d.]+ s, of which the main thread [\d.]+ s\)", log), log
        if name in ("prosumers", "market"):  # one request a market interval, one at the end (timeline)
            assert int(loop.group(2)) == n_intervals + 1
    assert float((run_dir / "progress").read_text()) == n_intervals * 900  # the last one written
