"""The distributed P2P clearing through the broker (``market.mechanism:
admm_distributed``): every iterate travels as a HELICS message between the market and
the prosumer agents, in explicit rounds after the market time. The federation's tables
equal the in-process engine's (the oracle), with the agents split over two prosumers
federates and with lost and late iterates (the HELICS delay filters of the two ADMM
endpoints, the seeded drops of the senders)."""

from __future__ import annotations

import pytest

from runner.run_folder import read_tables
from tests.conftest import REPO, assert_same_tables, run_both_engines

pytestmark = pytest.mark.federation

ONE_HOUR = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=1h"]
DISTRIBUTED = ["--set", "market.mechanism=admm_distributed", "--set", "prosumers.federates=2",
               "--quiet", "--no-report"]


def test_lossy_late_iterates_give_the_same_tables_in_both_engines(tmp_path):
    """Loss 0.05 both ways and a latency of 1.5e-4 s (each iterate a round late: the
    market waits for it), on the ADMM iterates only."""
    args = [*ONE_HOUR, *DISTRIBUTED, "--set", "comms.loss_rate=0.05", "--set", "comms.latency_s=0.00015",
            "--set", "comms.applies_to=[admm]"]
    runs = run_both_engines(tmp_path, REPO / "configs" / "p2p.yaml", *args)
    a, b = read_tables(runs["inprocess"]), read_tables(runs["federation"])
    rounds = a["admm_rounds"]
    assert (rounds["requests_lost"] > 0).all()  # the loss model is at work
    assert (rounds["rounds"] > 2 * rounds["iterations"]).all()  # and the latency: the market waited
    assert rounds["converged"].all()
    assert_same_tables(a, b)
