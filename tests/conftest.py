"""Shared helpers: run the real `tecosim` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "default.yaml"
# A 2-hour window around solar noon: the weak-grid default overvolts there, so the
# control loop and curtailment have work to do.
MIDDAY = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=2h"]

#: a test in one of these folders that carries neither marker gets its folder's: a new
#: file there stays out of the fast tier (``make test-fast``) without remembering to mark it
FOLDER_MARKERS = {"feeder": "feeder", "federation": "federation"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        rel = Path(item.path).relative_to(REPO) if Path(item.path).is_relative_to(REPO) else Path()
        mark = FOLDER_MARKERS.get(rel.parts[1]) if len(rel.parts) > 2 and rel.parts[0] == "tests" else None
        if mark and not any(item.get_closest_marker(name) for name in FOLDER_MARKERS.values()):
            item.add_marker(mark)


def tecosim(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes containing ``text`` (from /proc)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(p.name) != os.getpid():
            found.append(f"{p.name}: {cmd}")
    return found


def run_both_engines(folder: Path, config: Path, *args: str) -> dict[str, Path]:
    """``tecosim run config args`` once in process and once as a federation, into
    ``folder/inprocess`` and ``folder/federation``; the two run folders (each run must
    succeed)."""
    out = {}
    for engine in ("inprocess", "federation"):
        run_dir = Path(folder) / engine
        r = tecosim("run", str(config), "--engine", engine, "--out", str(run_dir), *args)
        assert r.returncode == 0, f"{engine} run failed:\n{r.stdout}\n{r.stderr}"
        out[engine] = run_dir
    return out


@pytest.fixture(scope="session")
def midday_runs(tmp_path_factory) -> dict[str, Path]:
    """The default study over the midday window, once with each engine. The federation
    streams its tables in chunks of 3 market intervals (``study.chunk_intervals``), the
    in-process engine writes each table in one piece: equal tables also show that
    streaming changes nothing."""
    out = {}
    for engine in ("inprocess", "federation"):
        run_dir = tmp_path_factory.mktemp("runs") / engine
        chunks = ["--set", "study.chunk_intervals=3"] if engine == "federation" else []
        r = tecosim("run", str(DEFAULT), "--engine", engine, "--out", str(run_dir), *MIDDAY, *chunks)
        assert r.returncode == 0, f"{engine} run failed:\n{r.stdout}\n{r.stderr}"
        out[engine] = run_dir
    return out


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    """The same tables, columns and rows: non-float columns exactly, floats within 1e-9."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns), name
        assert len(x) == len(y), name
        for col in x.columns:
            if pd.api.types.is_float_dtype(x[col]):
                np.testing.assert_allclose(x[col].to_numpy(), y[col].to_numpy(), rtol=0, atol=1e-9,
                                           err_msg=f"{name}.{col}")
            else:
                assert x[col].tolist() == y[col].tolist(), f"{name}.{col}"
