"""Graph-based loss allocation (GBLA) on IEEE 13 with 40 customers attached.

References: OpenDSS's ``Circuit.Losses`` is the sum of its PD elements' losses; the
review's GBLA idea (refs. [32]-[35]): element losses traced along each customer's
energy path from the source and shared by the users of that path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federates.common.messages import GRID, Trade
from federates.feeder.losses import allocate_losses_to_customers, allocate_losses_to_trades
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from runner.config import CustomerConnection

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
MASTER = REPO / "feeders" / "ieee13" / "IEEE13.dss"
N = 40
SWITCHES = {"line.671692"}  # IEEE13.dss: Line.671692 ... switch=yes (0 km)
P_ABS = 5.0  # kW, every customer the same |p|


@pytest.fixture(scope="module")
def solved():
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), N, seed=7)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    f.hold_taps(True)
    rng = np.random.default_rng(11)
    p = np.where(rng.random(N) < 0.5, -P_ABS, P_ABS)  # exporters and importers
    f.set_customer_powers(p, np.zeros(N))
    f.solve(controls=False)
    return f, sites, p, f.element_losses_kw(), f.customer_paths()


def test_element_losses_sum_to_circuit_losses(solved):
    f, _, _, el, _ = solved
    assert "line.650632" in el and "transformer.sub" in el
    assert any(k.startswith("line.drop_") for k in el) and any(k.startswith("transformer.svc_") for k in el)
    assert sum(el.values()) == pytest.approx(f.losses_kw(), rel=1e-2)


def test_paths_run_from_source_to_customer(solved):
    _, sites, _, el, paths = solved
    assert len(paths) == N
    for s, path in zip(sites, paths, strict=True):
        assert path[0] == "transformer.sub"  # sourcebus -> 650
        assert path[-1] == f"line.drop_{s.participant}"
        assert path[-2] == f"transformer.svc_{s.group}"
        assert all(e in el for e in path)
        if s.bus.lower() != "650":
            assert "line.650632" in path


def test_customer_allocation_conserves_losses(solved):
    f, _, p, el, paths = solved
    cust, background = allocate_losses_to_customers(el, paths, p)
    assert cust.shape == (N,)
    assert np.all(cust >= 0)
    assert background >= 0
    assert cust.sum() + background == pytest.approx(sum(el.values()), abs=1e-9)
    assert cust.sum() + background == pytest.approx(f.losses_kw(), rel=1e-2)
    # idle customers carry nothing, and everything is background when all are idle
    c0, b0 = allocate_losses_to_customers(el, paths, np.zeros(N))
    assert np.all(c0 == 0) and b0 == pytest.approx(sum(el.values()), abs=1e-9)


def test_farther_customer_gets_at_least_as_much(solved):
    _, _, p, el, paths = solved
    cust, _ = allocate_losses_to_customers(el, paths, p)
    # pairs on the same lateral: i's primary path (all but its service transformer and
    # drop) is a strict prefix of j's and the extra part holds a real line (not only the
    # 0 km switch), so j is electrically farther with the same |p|
    pairs = []
    for i in range(N):
        for j in range(N):
            up_i, up_j = paths[i][:-2], paths[j][:-2]
            if len(up_i) < len(up_j) and up_j[: len(up_i)] == up_i:
                if any(e.startswith("line.") and e not in SWITCHES for e in up_j[len(up_i):]):
                    pairs.append((i, j))
    assert pairs, "IEEE 13 with 40 customers must have customers on one lateral at different depths"
    for i, j in pairs:
        assert cust[j] >= cust[i], (paths[i], paths[j], cust[i], cust[j])


def test_trade_allocation_sums_back(solved):
    _, sites, p, el, paths = solved
    cust, _ = allocate_losses_to_customers(el, paths, p)
    names = [s.participant for s in sites]
    sellers = [names[k] for k in range(N) if p[k] < 0]
    buyers = [names[k] for k in range(N) if p[k] > 0]
    rng = np.random.default_rng(5)
    trades = [Trade(0, s, b, float(rng.uniform(0.1, 1.0)), 0.1) for s, b in zip(sellers, buyers, strict=False)]
    trades += [Trade(0, s, GRID, 0.5, 0.05) for s in sellers[:5]]
    trades += [Trade(0, GRID, b, 0.7, 0.2) for b in buyers[:5]]
    trades += [Trade(1, sellers[0], buyers[0], 3.0, 0.1)]  # another interval: ignored
    a = allocate_losses_to_trades(cust, names, trades, interval=0)
    np.testing.assert_allclose(a.customer_kw(names, trades), cust, rtol=0, atol=1e-12)
    assert a.trade_kw[-1] == 0.0
    assert np.all(a.trade_kw[~a.is_peer] == 0.0)
    assert np.all(a.trade_kw[:-1][a.is_peer[:-1]] > 0.0)
    # customers without any trade keep all their loss on the grid side
    traded = {t.seller for t in trades[:-1]} | {t.buyer for t in trades[:-1]}
    for k, nm in enumerate(names):
        if nm not in traded:
            assert a.grid_kw[k] == cust[k]
    # pro rata: a seller's peer shares are proportional to the traded energies
    s0 = sellers[0]
    mine = [t for t, tr in enumerate(trades[:-1]) if tr.seller == s0]
    e = np.array([trades[t].energy_kwh for t in mine])
    shares = np.array([a.seller_kw[t] for t in mine])
    peer = np.array([a.is_peer[t] for t in mine])
    np.testing.assert_allclose(shares[peer], cust[names.index(s0)] * e[peer] / e.sum(), rtol=1e-12)
    # metered energy larger than the trades: the uncovered part goes to the grid
    big = allocate_losses_to_trades(cust, names, trades, interval=0, customer_energy_kwh=np.full(N, 100.0))
    np.testing.assert_allclose(big.customer_kw(names, trades), cust, rtol=0, atol=1e-12)
    assert big.grid_kw.sum() > a.grid_kw.sum()
