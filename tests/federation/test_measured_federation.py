"""Measured profiles and a sites file (configs/measured.yaml) in a federation split over
two prosumer federates, each reading its own customers' series: the federation's
tables and ledger equal the in-process engine's."""

from __future__ import annotations

import pytest

from runner.run_folder import read_tables
from tests.conftest import REPO, assert_same_tables, run_both_engines

pytestmark = pytest.mark.federation

MEASURED = REPO / "configs" / "measured.yaml"
WINDOW = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=1h",
          "--set", "prosumers.federates=2"]


@pytest.fixture(scope="module")
def measured_runs(tmp_path_factory) -> dict:
    return run_both_engines(tmp_path_factory.mktemp("measured"), MEASURED, "--no-report", *WINDOW)


def test_measured_federation_equals_inprocess_engine(measured_runs):
    a = read_tables(measured_runs["inprocess"])
    b = read_tables(measured_runs["federation"])
    assert "profile_gaps" in a
    assert set(a["profiles"]["participant"]) == {"house_a", "house_b", "house_c", "house_d", "house_e", "house_f"}
    assert_same_tables(a, b)
    assert (measured_runs["inprocess"] / "ledger.zst").read_bytes() == \
        (measured_runs["federation"] / "ledger.zst").read_bytes()
