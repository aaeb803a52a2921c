"""The communication layer (``comms``): latency and loss of bids and interval energy.

Bids and interval energy are sent at ``k*M + 0.25`` and used at the market time
``k*M + 0.5``: a latency under 0.25 s changes nothing, 0.3 s makes every bid a late
order and every reading a missing one. Losses are drawn by the senders from the study
seed, so the federation (HELICS delay filter + seeded drops) equals the in-process
engine with losses too."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from runner.run_folder import read_tables
from tests.conftest import DEFAULT, MIDDAY, assert_same_tables, tecosim

pytestmark = pytest.mark.federation

ONE_HOUR = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=1h"]


def run(out: Path, engine: str, *args: str) -> dict[str, pd.DataFrame]:
    r = tecosim("run", str(DEFAULT), "--engine", engine, "--out", str(out), "--quiet", "--no-report", *args)
    assert r.returncode == 0, f"{engine} run failed:\n{r.stdout}\n{r.stderr}"
    return read_tables(out)


def comms(latency_s: float = 0.0, loss_rate: float = 0.0) -> list[str]:
    return ["--set", f"comms.latency_s={latency_s}", "--set", f"comms.loss_rate={loss_rate}"]


def traded_kwh(t: dict[str, pd.DataFrame]) -> float:
    return float(t["trades"]["energy_kwh"].sum()) if len(t["trades"]) else 0.0


def imbalance_kwh(t: dict[str, pd.DataFrame]) -> float:
    """Energy settled at the tariffs as imbalance [kWh] (a lost bid: all of it)."""
    return float(t["settlements"]["imbalance_kwh"].abs().sum())


@pytest.fixture(scope="module")
def midday(tmp_path_factory) -> dict[str, dict[str, pd.DataFrame]]:
    """In-process runs of the 2-hour midday window."""
    d = tmp_path_factory.mktemp("comms")
    return {
        "base": run(d / "base", "inprocess", *MIDDAY),
        "latency_0.1": run(d / "lat01", "inprocess", *MIDDAY, *comms(latency_s=0.1)),
        "latency_0.3": run(d / "lat03", "inprocess", *MIDDAY, *comms(latency_s=0.3)),
        "loss_0.3": run(d / "loss03", "inprocess", *MIDDAY, *comms(loss_rate=0.3),
                        "--set", "comms.applies_to=[bids]"),
    }


def test_latency_under_the_gap_to_the_market_changes_nothing(midday):
    assert_same_tables(midday["base"], midday["latency_0.1"])


def test_latency_past_the_market_time_makes_every_bid_late_and_every_reading_missing(midday):
    base, late = midday["base"], midday["latency_0.3"]
    assert traded_kwh(base) > 0 and not base["settlements"]["missing_reading"].any()
    c = late["clearing"]
    assert (c["late_orders"].iloc[1:] > 0).all()  # the bids of k-1 arrive at the market time of k
    assert c["late_orders"].iloc[0] == 0 and (c["n_bids"] + c["n_offers"] == 0).all()
    assert traded_kwh(late) == 0.0
    assert late["settlements"]["missing_reading"].all()  # interval energy arrives a market time late


def test_lost_bids_trade_less_and_leave_more_imbalance(midday):
    base, lossy = midday["base"], midday["loss_0.3"]
    n_base = (base["clearing"]["n_bids"] + base["clearing"]["n_offers"]).sum()
    n_lossy = (lossy["clearing"]["n_bids"] + lossy["clearing"]["n_offers"]).sum()
    assert 0.5 * n_base < n_lossy < 0.9 * n_base
    assert traded_kwh(lossy) < traded_kwh(base)
    assert imbalance_kwh(lossy) > imbalance_kwh(base)
    assert not lossy["settlements"]["missing_reading"].any()  # only the bids were lossy


def test_federation_drops_and_delays_the_same_messages_as_the_engine(tmp_path):
    """Loss 0.3 on bids and interval energy and 0.1 s latency (a HELICS delay filter)."""
    args = [*ONE_HOUR, *comms(latency_s=0.1, loss_rate=0.3)]
    a = run(tmp_path / "inprocess", "inprocess", *args)
    b = run(tmp_path / "federation", "federation", *args)
    assert a["settlements"]["missing_reading"].any()
    assert_same_tables(a, b)
