"""A study on a weather file gives the same tables in both engines (each prosumers
federate reads the file itself, from the path the run's resolved config records)."""

from __future__ import annotations

import pytest

from runner.run_folder import read_tables
from tests.conftest import REPO, assert_same_tables, run_both_engines

pytestmark = pytest.mark.federation

WINDOW = ["--set", "study.start=2026-06-21T10:00:00-04:00", "--set", "study.duration=2h",
          "--set", "prosumers.count=12", "--set", "prosumers.federates=2", "--no-report"]


def test_weather_file_gives_equal_tables_in_both_engines(tmp_path):
    runs = run_both_engines(tmp_path, REPO / "configs" / "tmy3_year.yaml", *WINDOW)
    a, b = read_tables(runs["inprocess"]), read_tables(runs["federation"])
    assert a["profiles"]["pv_kw"].sum() > 0  # midday: the file's sun shines
    assert_same_tables(a, b)
