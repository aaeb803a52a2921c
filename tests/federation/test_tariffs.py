"""A time-of-use tariff through the HELICS federation: every role takes the interval's
prices from the study (the bids, the clearing's utility backstop, the settlement, the
DSO's least-cost curtailment, the adaptive bidders' learning), so the federation gives
the in-process engine's tables (the oracle) across the 16:00 start of the peak of
configs/tou.yaml."""

from __future__ import annotations

import pytest

from runner.run_folder import read_tables
from tests.conftest import REPO, assert_same_tables, run_both_engines

pytestmark = pytest.mark.federation

WINDOW = ["--set", "study.start=2026-06-21T15:00:00-04:00", "--set", "study.duration=2h",
          "--set", "controllers.curtailment.policy=least_cost", "--set", "prosumers.strategy=zip"]


def test_federation_equals_inprocess_under_a_tou_tariff(tmp_path):
    out = {engine: read_tables(run)
           for engine, run in run_both_engines(tmp_path, REPO / "configs" / "tou.yaml", "--no-report", *WINDOW).items()}
    a, b = out["inprocess"], out["federation"]
    # the window spans both periods, and the DSO curtailed someone
    assert sorted(set(a["tariff"]["retail_usd_per_kwh"])) == [0.21, 0.42]
    assert len(a["curtailments"]) > 0
    to_grid = a["trades"][a["trades"]["buyer"] == "grid"]  # the utility buys at each period's feed-in
    assert sorted(set(to_grid["price_usd_per_kwh"])) == [0.08, 0.12]
    assert_same_tables(a, b)
