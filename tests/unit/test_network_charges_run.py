"""P2P network charges through a whole in-process study: collected, not vanished.

References: each trade's own ``fee_usd`` (the trades table, made by the P2P clearing)
for what the grid operator must collect, and money conservation over every party: the
prosumers and the grid operator together pay the utility exactly what the utility's
side of the settlements says (sum of net_cost_usd = sum of grid_paid - grid_received).
"""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import load_config
from federates.common.messages import GRID_OPERATOR
from runner.engine import run_inprocess
from runner.launch import prepare_run
from tests.conftest import REPO

pytestmark = pytest.mark.feeder


def test_p2p_charges_are_paid_by_sellers_and_collected_by_the_grid_operator(tmp_path):
    cfg = load_config(REPO / "configs" / "p2p.yaml", ["study.start=2026-06-21T11:00:00-04:00", "study.duration=1h",
                                                       "market.p2p_charge_usd_per_kwh_per_km=0.02"])
    t = run_inprocess(prepare_run(cfg, tmp_path / "run"))
    s, trades = t["settlements"], t["trades"]
    assert trades["fee_usd"].sum() > 0.01  # the charges are there to collect
    dso = s[s["participant"] == GRID_OPERATOR]
    others = s[s["participant"] != GRID_OPERATOR]
    assert len(dso) == cfg.timeline.n_intervals
    # every charge paid is collected, interval by interval
    paid = others.groupby("interval")["charges_paid_usd"].sum()
    got = dso.set_index("interval")["charges_received_usd"]
    np.testing.assert_allclose(paid.to_numpy(), got.reindex(paid.index).to_numpy(), rtol=0, atol=1e-12)
    # a seller pays its trades' fees, scaled down only where the DSO curtailed it
    cut = set(s.loc[s["curtailed_kwh"] > 0, "participant"])
    fees = trades[trades["kind"] == "peer"].groupby("seller")["fee_usd"].sum()
    by_seller = others.groupby("participant")["charges_paid_usd"].sum()
    for seller, fee in fees.items():
        if seller in cut:
            assert by_seller[seller] <= fee + 1e-12
        else:
            assert by_seller[seller] == pytest.approx(fee, rel=0, abs=1e-12)
    # buyers pay no charge; no money vanishes
    buyers = set(trades.loc[trades["kind"] == "peer", "buyer"]) - set(fees.index)
    assert (others[others["participant"].isin(buyers)]["charges_paid_usd"] == 0).all()
    assert s["net_cost_usd"].sum() == pytest.approx((s["grid_paid_usd"] - s["grid_received_usd"]).sum(),
                                                    rel=0, abs=1e-9)
    assert (s["peer_paid_usd"].sum() + s["charges_paid_usd"].sum()
            == pytest.approx(s["peer_received_usd"].sum() + s["charges_received_usd"].sum(), rel=0, abs=1e-9))
