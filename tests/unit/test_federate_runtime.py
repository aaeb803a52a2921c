"""The federate processes' plumbing that costs time: profiling a federate
(``TECOSIM_PROFILE_DIR``), the runner waking when a process exits, the run folder's
YAML read with libyaml."""

from __future__ import annotations

import pstats
import time
from pathlib import Path

import yaml

from federates.common.config import load_config, resolved_dict
from federates.common.config.catalog import FEEDERS_DIR, SAFE_LOADER
from federates.runtime import PROFILE_ENV, _profiled
from runner.launch.processes import Proc, wait_for_exit
from tests.conftest import DEFAULT


def _busy() -> int:
    return sum(i * i for i in range(20_000))


def test_profile_dir_gets_one_profile_per_federate(tmp_path, monkeypatch):
    """With TECOSIM_PROFILE_DIR set the federate runs under cProfile and leaves
    ``<dir>/<name>.prof``, which pstats reads and which holds what the federate ran;
    without it the federate's body is run as it is."""
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert _profiled("feeder", _busy) is _busy
    folder = tmp_path / "prof"
    monkeypatch.setenv(PROFILE_ENV, str(folder))
    _profiled("feeder", _busy)()
    stats = pstats.Stats(str(folder / "feeder.prof"))
    assert any(fn == "_busy" and Path(f).name == "test_federate_runtime.py" for f, _, fn in stats.stats)


def test_wait_for_exit_wakes_when_a_process_exits(tmp_path):
    """The runner's wait between two polls ends when a watched process exits, not when
    its timeout does (the timeout here is far beyond the process's life); the exit is
    left for Proc.poll to reap."""
    p = Proc("sleeper", ["sleep", "0.2"], tmp_path / "sleeper.log")
    p.start(tmp_path)
    t0 = time.monotonic()
    while p.poll() is None:
        wait_for_exit([p], 120.0)
        assert time.monotonic() - t0 < 60, "wait_for_exit slept to its timeout"
    assert p.exit_code == 0
    wait_for_exit([p], 0.0)  # an exited process is not watched: returns


def test_safe_loader_reads_what_safe_load_reads():
    """Study.load's libyaml loader gives the same objects as ``yaml.safe_load`` for a
    resolved config (as prepare_run writes it: every field, with its comments) and for
    every bundled feeder.yaml."""
    for cfg in (load_config(DEFAULT), load_config(DEFAULT, ["market.topology=p2p", "market.mechanism=admm"])):
        resolved = "# a note\n" + yaml.safe_dump(resolved_dict(cfg), sort_keys=False)
        texts = [resolved, *(p.read_text() for p in FEEDERS_DIR.glob("*/feeder.yaml"))]
        assert len(texts) > 2
        for text in texts:
            assert yaml.load(text, Loader=SAFE_LOADER) == yaml.safe_load(text)
