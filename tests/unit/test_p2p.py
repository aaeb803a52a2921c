"""Peer-to-peer clearing with product differentiation: LP and consensus ADMM."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.messages import GRID, Order
from federates.market.community import ClearingResult, clear_uniform_price
from federates.market.p2p import (
    AdmmStats,
    clear_p2p_admm,
    clear_p2p_lp,
    electrical_distance_charges,
)

RETAIL = 0.26
FEED_IN = 0.08
KW = {"interval": 0, "retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN}


def buy(p: str, kwh: float, usd: float, k: int = 0) -> Order:
    return Order(p, "buy", k, kwh, usd)


def sell(p: str, kwh: float, usd: float, k: int = 0) -> Order:
    return Order(p, "sell", k, kwh, usd)


def peer(r: ClearingResult) -> dict[tuple[str, str], tuple[float, float]]:
    return {(t.seller, t.buyer): (t.energy_kwh, t.price_usd_per_kwh) for t in r.peer_trades}


HAND = [sell("s1", 5, 0.10), sell("s2", 5, 0.12), buy("b1", 6, 0.25), buy("b2", 6, 0.22)]
HAND_CHARGES = {("s1", "b1"): 0.05, ("s2", "b2"): 0.05}


def test_hand_book_charges_make_cross_pairs_preferable():
    # Net surplus per kWh: s1->b1 0.10, s1->b2 0.12, s2->b1 0.13, s2->b2 0.05.
    # Supply 10 < demand 12, so both sellers sell out; the unique optimum is
    # s2->b1 5 kWh and s1->b2 5 kWh: welfare 5*0.13 + 5*0.12 = 1.25 USD.
    # Both buyers are left with 1 kWh, so their duals are 0 and each pays its limit.
    r = clear_p2p_lp(HAND, charges=HAND_CHARGES, **KW)
    assert r.status == "cleared"
    assert r.price_usd_per_kwh is None
    assert r.welfare_usd == pytest.approx(1.25, abs=1e-9)
    got = peer(r)
    assert set(got) == {("s2", "b1"), ("s1", "b2")}
    assert got[("s2", "b1")] == pytest.approx((5.0, 0.25))
    assert got[("s1", "b2")] == pytest.approx((5.0, 0.22))
    grid = {(t.seller, t.buyer): t.energy_kwh for t in r.grid_trades}
    assert grid == pytest.approx({(GRID, "b1"): 1.0, (GRID, "b2"): 1.0})
    assert r.traded_kwh == pytest.approx(10.0)
    assert r.unmatched_buy_kwh == pytest.approx(2.0)
    assert r.unmatched_sell_kwh == pytest.approx(0.0)
    # Without charges the same book is the community auction (1.28 USD).
    r0 = clear_p2p_lp(HAND, **KW)
    assert r0.welfare_usd == pytest.approx(1.28, abs=1e-9)
    a, stats = clear_p2p_admm(HAND, charges=HAND_CHARGES, **KW)
    assert stats.converged and stats.iterations > 0
    assert a.welfare_usd == pytest.approx(1.25, rel=5e-3)


def test_charges_are_fees_and_prices_leave_the_seller_its_ask():
    orders = [sell("s", 4, 0.10), buy("b", 2, 0.25)]
    r = clear_p2p_lp(orders, charges={("s", "b"): 0.04}, **KW)
    (t,) = r.peer_trades
    assert t.energy_kwh == pytest.approx(2.0)
    assert t.fee_usd == pytest.approx(0.08)
    assert 0.10 + 0.04 - 1e-9 <= t.price_usd_per_kwh <= 0.25 + 1e-9
    assert r.welfare_usd == pytest.approx(2 * (0.25 - 0.10 - 0.04))


def test_charge_can_kill_a_pair():
    r = clear_p2p_lp([sell("s", 4, 0.10), buy("b", 2, 0.15)], charges={("s", "b"): 0.06}, **KW)
    assert r.status == "no_crossing" and not r.peer_trades and r.welfare_usd == 0


def test_electrical_distance_charges():
    orders = [sell("s1", 1, 0.1), sell("b1", 1, 0.1), buy("b1", 1, 0.2), buy("b2", 1, 0.2)]
    dist = {("b1", "s1"): 2.0, ("s1", "b2"): 0.5, ("b1", "b2"): 1.0}
    ch = electrical_distance_charges(orders, dist, 0.01)
    assert ch == pytest.approx(
        {("s1", "b1"): 0.02, ("s1", "b2"): 0.005, ("b1", "b1"): 0.0, ("b1", "b2"): 0.01}
    )
    with pytest.raises(ValueError, match="'b1', 'b2'"):
        electrical_distance_charges(orders, {("s1", "b1"): 1.0, ("s1", "b2"): 1.0}, 0.01)
    # Near pairs are preferred: s1 sells to the closer b2 first.
    r = clear_p2p_lp([sell("s1", 1, 0.1), buy("b1", 1, 0.2), buy("b2", 1, 0.2)], charges=ch, **KW)
    assert [(t.seller, t.buyer) for t in r.peer_trades] == [("s1", "b2")]


@pytest.mark.parametrize("solver", ["lp", "admm"])
def test_edge_cases(solver: str):
    def run(orders: list[Order]) -> ClearingResult:
        if solver == "lp":
            return clear_p2p_lp(orders, **KW)
        r, stats = clear_p2p_admm(orders, **KW)
        assert isinstance(stats, AdmmStats) and stats.converged
        return r

    r = run([])
    assert r.status == "empty" and r.trades == [] and r.confirmations == []
    r = run([buy("b", 2, 0.3), buy("c", 1, 0.2)])
    assert r.status == "one_sided" and r.welfare_usd == 0
    assert {(t.seller, t.buyer, t.price_usd_per_kwh) for t in r.trades} == {
        (GRID, "b", RETAIL),
        (GRID, "c", RETAIL),
    }
    r = run([sell("s", 2, 0.1)])
    assert r.status == "one_sided" and r.trades[0].buyer == GRID
    r = run([sell("s", 2, 0.2), buy("b", 2, 0.1)])
    assert r.status == "no_crossing" and not r.peer_trades
    assert r.unmatched_buy_kwh == 2 and r.unmatched_sell_kwh == 2
    r = run([sell("s", 0, 0.1), buy("b", 1, 0.2, k=1)])
    assert r.status == "empty" and [c.participant for c in r.confirmations] == ["s"]


# ---------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "c", "d", "e"])
order_st = st.builds(
    Order,
    participant=names,
    side=st.sampled_from(["buy", "sell"]),
    interval=st.just(0),
    energy_kwh=st.floats(0.1, 10, allow_nan=False).map(lambda x: round(x, 3)),
    price_usd_per_kwh=st.floats(0.0, 0.4, allow_nan=False).map(lambda x: round(x, 3)),
)
book_st = st.lists(order_st, min_size=0, max_size=8)
charge_st = st.dictionaries(
    st.tuples(names, names), st.floats(0, 0.08).map(lambda x: round(x, 3)), max_size=25
)


def check_lp_invariants(orders: list[Order], r: ClearingResult, charges: dict) -> None:
    lim = {}
    for o in orders:
        lim.setdefault((o.participant, o.side), []).append(o.price_usd_per_kwh)
    # Energy balance per participant: peer + grid = ordered energy on each side.
    for c in r.confirmations:
        bid = sum(
            o.energy_kwh for o in orders if o.participant == c.participant and o.side == "buy"
        )
        off = sum(
            o.energy_kwh for o in orders if o.participant == c.participant and o.side == "sell"
        )
        assert c.peer_bought_kwh + c.grid_bought_kwh == pytest.approx(bid, abs=1e-7)
        assert c.peer_sold_kwh + c.grid_sold_kwh == pytest.approx(off, abs=1e-7)
        assert c.peer_bought_kwh >= -1e-9 and c.grid_bought_kwh >= -1e-9
        assert c.scheduled_kwh == pytest.approx(bid - off, abs=1e-7)
    # Individual rationality against the effective (tariff-clipped) limits.
    for t in r.peer_trades:
        ch = charges.get((t.seller, t.buyer), 0.0)
        assert t.price_usd_per_kwh <= min(max(lim[(t.buyer, "buy")]), RETAIL) + 1e-9
        assert t.price_usd_per_kwh - ch >= max(min(lim[(t.seller, "sell")]), FEED_IN) - 1e-9
        assert t.fee_usd == pytest.approx(ch * t.energy_kwh)
    assert r.welfare_usd >= -1e-9
    assert r.traded_kwh == pytest.approx(sum(t.energy_kwh for t in r.peer_trades), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(book_st, charge_st)
def test_lp_properties_on_random_books(orders, charges):
    r = clear_p2p_lp(orders, charges=charges, **KW)
    check_lp_invariants(orders, r, charges)


@settings(max_examples=30, deadline=None)
@given(book_st)
def test_zero_charges_equal_the_uniform_auction_welfare(orders):
    r = clear_p2p_lp(orders, **KW)
    u = clear_uniform_price(orders, **KW)
    assert r.welfare_usd == pytest.approx(u.welfare_usd, abs=1e-6)
    assert r.status == u.status or (u.status == "cleared" and u.welfare_usd == 0)


@settings(max_examples=30, deadline=None)
@given(book_st, charge_st)
def test_admm_matches_lp_welfare(orders, charges):
    lp = clear_p2p_lp(orders, charges=charges, **KW)
    r, stats = clear_p2p_admm(orders, charges=charges, **KW)
    assert abs(r.welfare_usd - lp.welfare_usd) <= 5e-3 * lp.welfare_usd + 1e-6
    assert stats.converged
    assert stats.iterations == len(stats.primal_residual_kwh) == len(stats.dual_residual_usd)
    if lp.n_bids and lp.n_offers and lp.traded_kwh > 0:
        assert stats.iterations > 0
    check_lp_invariants(orders, r, charges)
    again, stats2 = clear_p2p_admm(orders, charges=charges, **KW)
    assert again == r and stats2 == stats  # deterministic


def test_grouped_projection_equals_the_sort_based_one():
    """_project_groups (all peers at once, Newton on the active set from a warm start)
    against _project_capped (one peer, closed form by sorting): equal to 1e-12 kWh."""
    import numpy as np

    from federates.market.p2p import _Groups, _project_capped, _project_groups

    rng = np.random.default_rng(1)
    for _ in range(200):
        n_groups = int(rng.integers(1, 6))
        idx = np.sort(rng.integers(0, n_groups, size=int(rng.integers(1, 30))))
        caps = rng.uniform(0, 4, n_groups).tolist()
        v = rng.normal(0.5, 1.5, len(idx))
        v[rng.random(len(idx)) < 0.2] = 0.7  # ties
        gr = _Groups.of(idx, caps)
        warm = rng.uniform(-1, 3, len(gr.starts)) if rng.random() < 0.7 else None
        got, _ = _project_groups(v[gr.perm], gr, warm)
        got = got[gr.inverse]
        for g in np.unique(idx):
            want = _project_capped(v[idx == g], caps[g])
            assert np.allclose(got[idx == g], want, rtol=0, atol=1e-12)
