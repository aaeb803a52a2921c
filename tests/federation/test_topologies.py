"""Every topology's example config runs as a federation and reports the same KPIs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from federates.market.ledger import verify_ledger
from tests.conftest import REPO, tecosim

pytestmark = pytest.mark.federation

WINDOW = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=30min"]


# p2p_admm through the federation runs under `pytest -m benchmark` (suite time; ADMM is
# unit-tested against the central LP)
@pytest.mark.parametrize("config", ["p2p.yaml", pytest.param('p2p_admm.yaml', marks=pytest.mark.benchmark), "hybrid.yaml", "community_lp.yaml"])
def test_topology_runs_as_federation_with_comparable_kpis(tmp_path, config, midday_runs):
    run = tmp_path / "run"
    r = tecosim("run", str(REPO / "configs" / config), "--out", str(run), *WINDOW)
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "ok"
    reference = pd.read_parquet(midday_runs["federation"] / "results" / "kpis.parquet")
    k = pd.read_parquet(run / "results" / "kpis.parquet")
    assert list(k.columns) == list(reference.columns)
    assert set(m["summary"]) == set(json.loads((midday_runs["federation"] / "manifest.json").read_text())["summary"])
    assert k["traded_kwh"].sum() > 0  # midday: peers trade in every topology
    assert verify_ledger(run / "ledger.zst").ok
    trades = pd.read_parquet(run / "results" / "trades.parquet")
    peer = trades[trades["kind"] == "peer"]
    assert (peer["price_usd_per_kwh"] >= 0.08 - 1e-9).all() and (peer["price_usd_per_kwh"] <= 0.26 + 1e-9).all()
