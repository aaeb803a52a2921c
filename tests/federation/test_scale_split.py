"""Prosumers split across three federate processes (``prosumers.federates: 3``): the
federation still equals the in-process engine (one ProsumersRole) table for table."""

from __future__ import annotations

import json

import pytest

from runner.run_folder import read_tables
from tests.conftest import (
    DEFAULT,
    assert_same_tables,
    processes_mentioning,
    run_both_engines,
)

pytestmark = pytest.mark.federation

WINDOW = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=30min",
          "--set", "prosumers.federates=3"]


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory) -> dict:
    return run_both_engines(tmp_path_factory.mktemp("split"), DEFAULT, *WINDOW)


def test_manifest_lists_the_three_prosumer_parts(split_runs):
    run = split_runs["federation"]
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "ok"
    names = {f["name"] for f in m["federates"]}
    assert names == {"broker", "prosumers_0", "prosumers_1", "prosumers_2", "market", "feeder", "meters",
                     "controllers"}
    assert all(f["exit_code"] == 0 for f in m["federates"])
    for name in names:
        assert (run / "logs" / f"{name}.log").is_file()
    assert not list((run / "results").glob("*.part*.parquet"))  # merged
    assert processes_mentioning(str(run)) == []


def test_split_federation_equals_inprocess_engine(split_runs):
    a = read_tables(split_runs["inprocess"])
    b = read_tables(split_runs["federation"])
    assert_same_tables(a, b)


def test_ledger_identical_across_engines(split_runs):
    a = split_runs["inprocess"] / "ledger.zst"
    b = split_runs["federation"] / "ledger.zst"
    assert a.read_bytes() == b.read_bytes()
