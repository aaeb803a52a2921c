"""A federation started from Python (``tecosim.run(engine="federation")`` in this
process: its federates are forked from the caller, not from the ``tecosim`` command)
gives the in-process engine's tables, and leaves no process behind."""

from __future__ import annotations

import pytest
import yaml

import tecosim
from runner.run_folder import read_tables
from tests.conftest import DEFAULT, assert_same_tables, processes_mentioning

OVERRIDES = {"study.start": "2026-06-21T11:00:00-04:00", "study.duration": "30min", "prosumers.count": 12}


@pytest.mark.federation
def test_a_federation_from_python_equals_the_in_process_engine(tmp_path):
    raw = yaml.safe_load(DEFAULT.read_text())
    runs = {engine: tecosim.run(raw, overrides=OVERRIDES, engine=engine, out=tmp_path / engine,
                                base_dir=DEFAULT.parent)
            for engine in ("federation", "in_process")}
    fed, local = runs["federation"], runs["in_process"]
    assert fed.status == local.status == "ok" and fed.engine == "federation" and len(fed.manifest["federates"]) >= 5
    assert_same_tables(read_tables(fed.path), read_tables(local.path))
    assert fed.kpis == pytest.approx(local.kpis, rel=0, abs=1e-9)
    assert not processes_mentioning(str(tmp_path / "federation"))
