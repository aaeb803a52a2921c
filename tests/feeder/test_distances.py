"""Electrical distances between customers along the feeder graph (issue 3 item 3).

Reference line lengths: IEEE 13-node test feeder data (feeders/ieee13/IEEE13.dss):
650-632 is 2000 ft (after the regulator, a zero-length transformer edge), 632-670 is
667 ft and 670-671 is 1333 ft, so 632-671 is 2000 ft = 0.6096 km; 671-692 is a switch
(0 km).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federates.common.config import CustomerConnection
from federates.common.grid import CustomerSite
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from tests.conftest import tecosim

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
MASTER = REPO / "feeders" / "ieee13" / "IEEE13.dss"
FT_KM = 0.3048e-3
DROP_KM = 0.1  # the service drop set below: 100 m


def site(name: str, bus: str, phase: str = "a", group: str | None = None) -> CustomerSite:
    return CustomerSite(participant=name, index=0, bus=bus, phase=phase, group=group or f"g{name}", load="")


@pytest.fixture(scope="module")
def placed() -> tuple[OpenDSSFeeder, np.ndarray]:
    f = OpenDSSFeeder(MASTER)
    sites = [site("a632", "632"), site("b671", "671"), site("c692", "692"), site("d675", "675", "b"),
             site("e632", "632", group="ga632"), site("f652", "652"), site("g650", "650")]
    f.attach_customers(sites, CustomerConnection(kind="secondary", service_length_m=100))
    return f, f.customer_distances_km()


def test_metric(placed):
    _, d = placed
    assert d.shape == (7, 7)
    assert np.all(np.isfinite(d))
    assert np.allclose(d, d.T)
    assert np.all(np.diag(d) == 0)
    assert np.all(d[~np.eye(7, dtype=bool)] > 0)
    # triangle inequality for every triple
    assert np.all(d[:, None, :] <= d[:, :, None] + d[None, :, :] + 1e-12)


def test_published_line_lengths(placed):
    _, d = placed
    # 632 - 671: 2000 ft, plus two 100 m service drops (transformers are 0 km)
    assert d[0, 1] == pytest.approx(2000 * FT_KM + 2 * DROP_KM)
    # 650 - 632: 2000 ft through the regulator (0 km)
    assert d[6, 0] == pytest.approx(2000 * FT_KM + 2 * DROP_KM)
    # 671 - 692 is a switch: 0 km
    assert d[1, 2] == pytest.approx(2 * DROP_KM)
    # same bus, different service transformers: only the drops
    assert d[0, 4] == pytest.approx(2 * DROP_KM)


def test_shared_transformer_and_direct():
    f = OpenDSSFeeder(MASTER)
    sites = [site("a", "632", group="t"), site("b", "632", group="t"), site("c", "671")]
    f.attach_customers(sites, CustomerConnection(kind="secondary", service_length_m=100))
    d = f.customer_distances_km()
    assert d[0, 1] == pytest.approx(2 * DROP_KM)
    g = OpenDSSFeeder(MASTER)
    g.attach_customers(sites, CustomerConnection(kind="direct"))
    d = g.customer_distances_km()
    assert d[0, 1] == 0.0
    assert d[0, 2] == pytest.approx(2000 * FT_KM)


def test_no_customers_and_1000_customers():
    assert OpenDSSFeeder(MASTER).customer_distances_km().shape == (0, 0)
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), 1000, seed=1)
    f.attach_customers(sites, CustomerConnection(kind="secondary", service_length_m=100))
    d = f.customer_distances_km()
    assert d.shape == (1000, 1000)
    assert np.allclose(d, d.T)
    # neighbours on one service transformer are two 100 m drops apart
    same = [(i, j) for i in range(50) for j in range(i + 1, 50) if sites[i].group == sites[j].group]
    assert same and all(d[i, j] == pytest.approx(0.2) for i, j in same)


def test_p2p_charges_favour_near_pairs(tmp_path):
    run = tmp_path / "p2p_charged"
    r = tecosim("run", "configs/p2p.yaml", "--engine", "inprocess", "--out", str(run),
                "--set", "study.duration=30min", "--set", "study.start=2026-06-21T11:00:00-04:00",
                "--set", "market.p2p_charge_usd_per_kwh_per_km=0.05")
    assert r.returncode == 0, r.stdout + r.stderr
    d = np.load(run / "distances_km.npy")
    names = [s["participant"] for s in json.loads((run / "sites.json").read_text())]
    idx = {p: i for i, p in enumerate(names)}
    trades = pd.read_parquet(run / "results" / "trades.parquet")
    peer = trades[trades.kind == "peer"]
    assert len(peer) > 0
    assert (peer.fee_usd > 0).any()
    dist = np.array([d[idx[s], idx[b]] for s, b in zip(peer.seller, peer.buyer, strict=True)])
    assert np.all(peer.fee_usd.to_numpy() == pytest.approx(0.05 * dist * peer.energy_kwh.to_numpy()))
    traded_mean = float(np.average(dist, weights=peer.energy_kwh))
    bids = pd.read_parquet(run / "results" / "bids.parquet")
    pair_d = []
    for _k, g in bids.groupby("interval"):
        sellers = set(g.participant[g.side == "sell"])
        buyers = set(g.participant[g.side == "buy"])
        pair_d += [d[idx[s], idx[b]] for s in sellers for b in buyers if s != b]
    assert pair_d
    assert traded_mean < float(np.mean(pair_d))
