"""Hybrid market: communities clear internally, aggregators trade P2P, residual to GRID."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.messages import GRID, Order
from federates.market.community import ClearingResult, clear_uniform_price
from federates.market.hybrid import clear_hybrid
from federates.market.mechanisms import clearer

RETAIL = 0.30
FEED_IN = 0.04
KW = {"interval": 0, "retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN}


def order(p: str, side: str, kwh: float, usd: float, community: str) -> Order:
    return Order(p, side, 0, kwh, usd, community=community)  # type: ignore[arg-type]


# Community A has surplus, community B a deficit.
HAND = [
    order("a1", "sell", 5, 0.05, "A"),
    order("a2", "sell", 3, 0.08, "A"),
    order("a3", "buy", 2, 0.20, "A"),
    order("b1", "buy", 4, 0.25, "B"),
    order("b2", "buy", 1, 0.18, "B"),
    order("b3", "sell", 1, 0.10, "B"),
]


def peer(r: ClearingResult) -> dict[tuple[str, str, float], float]:
    out: dict[tuple[str, str, float], float] = {}
    for t in r.peer_trades:
        key = (t.seller, t.buyer, round(t.price_usd_per_kwh, 9))
        out[key] = out.get(key, 0.0) + t.energy_kwh
    return out


def test_hand_two_communities():
    r = clear_hybrid(HAND, **KW)
    # Lower level, A: bid a3 2 kWh @0.20 meets offer a1 5 @0.05 -> a1->a3 2 kWh at the
    #   uniform price (0.20 + 0.05) / 2 = 0.125. Residual A: a1 3 @0.05, a2 3 @0.08.
    # Lower level, B: offer b3 1 @0.10 meets bid b1 4 @0.25 -> b3->b1 1 kWh at
    #   (0.25 + 0.10) / 2 = 0.175. Residual B: b1 3 @0.25, b2 1 @0.18.
    # Aggregators: agg:A sells 6 kWh @ max(0.05, 0.08) = 0.08; agg:B buys 4 kWh @
    #   min(0.25, 0.18) = 0.18. Upper LP trades 4 kWh; agg:A's cap is slack (mu = 0), so
    #   agg:B's dual is 0.18 - 0.08 = 0.10 and the price is 0.18 - 0.10 = 0.08.
    # Pro rata: sellers a1 3/6, a2 3/6; buyers b1 3/4, b2 1/4 ->
    #   a1->b1 = a2->b1 = 4 * 1/2 * 3/4 = 1.5; a1->b2 = a2->b2 = 4 * 1/2 * 1/4 = 0.5.
    # Grid: a1 and a2 each have 3 - 2 = 1 kWh left -> sold to GRID at feed-in 0.04.
    assert peer(r) == pytest.approx(
        {
            ("a1", "a3", 0.125): 2.0,
            ("b3", "b1", 0.175): 1.0,
            ("a1", "b1", 0.08): 1.5,
            ("a1", "b2", 0.08): 0.5,
            ("a2", "b1", 0.08): 1.5,
            ("a2", "b2", 0.08): 0.5,
        }
    )
    grid = {(t.seller, t.buyer): t.energy_kwh for t in r.grid_trades}
    assert grid == pytest.approx({("a1", GRID): 1.0, ("a2", GRID): 1.0})
    assert {t.price_usd_per_kwh for t in r.grid_trades} == {FEED_IN}
    assert r.price_usd_per_kwh is None
    assert r.status == "cleared"
    assert r.traded_kwh == pytest.approx(7.0)  # 2 + 1 lower, 4 upper
    assert r.unmatched_sell_kwh == pytest.approx(2.0)
    assert r.unmatched_buy_kwh == 0.0
    # Welfare: lower A 2 * (0.20 - 0.05) = 0.30; lower B 1 * (0.25 - 0.10) = 0.15;
    #   upper: buyers 3 * 0.25 + 1 * 0.18 = 0.93, sellers 2 * 0.05 + 2 * 0.08 = 0.26 -> 0.67.
    #   Total 1.12.
    assert r.welfare_usd == pytest.approx(1.12)
    # The flat market would serve all 7 kWh of demand from 0.05 x 5 and 0.08 x 2:
    # 4*0.25 + 2*0.20 + 0.18 - (5*0.05 + 2*0.08) = 1.17 > 1.12 (b3's 0.10 kWh traded
    # inside B instead of a2's cheaper 0.08).
    flat = clear_uniform_price(HAND, **KW)
    assert flat.welfare_usd == pytest.approx(1.17)
    conf = {c.participant: c for c in r.confirmations}
    assert conf["a1"].peer_sold_kwh == pytest.approx(4.0)
    assert conf["a1"].grid_sold_kwh == pytest.approx(1.0)
    assert conf["a1"].price_usd_per_kwh == pytest.approx((2 * 0.125 + 2 * 0.08) / 4)
    assert conf["b1"].scheduled_kwh == pytest.approx(4.0)


def test_empty_community_is_its_own_singleton():
    # Without communities every participant is alone: no peer trade is possible.
    book = [Order("s", "sell", 0, 2, 0.05), Order("b", "buy", 0, 2, 0.25)]
    r = clear_hybrid(book, **KW)
    # ... except through the aggregators agg:s and agg:b, which trade 2 kWh.
    assert r.traded_kwh == pytest.approx(2.0)
    assert {(t.seller, t.buyer) for t in r.peer_trades} == {("s", "b")}
    assert r.welfare_usd == pytest.approx(2 * (0.25 - 0.05))


def test_status_and_bad_names():
    assert clear_hybrid([], **KW).status == "empty"
    one = clear_hybrid([order("a", "buy", 1, 0.2, "A")], **KW)
    assert one.status == "one_sided"
    assert one.grid_trades[0].price_usd_per_kwh == RETAIL
    none = clear_hybrid([order("a", "buy", 1, 0.05, "A"), order("b", "sell", 1, 0.2, "B")], **KW)
    assert none.status == "no_crossing"
    with pytest.raises(ValueError, match="allowed"):
        clear_hybrid(HAND, lower=clearer("community", "nope"), **KW)
    with pytest.raises(ValueError, match="allowed"):
        clear_hybrid(HAND, upper=clearer("p2p", "nope"), **KW)


@pytest.mark.parametrize("lower", ["uniform_price", "pay_as_bid", "lp"])
def test_lower_mechanisms_same_volume_on_hand_book(lower: str):
    r = clear_hybrid(HAND, lower=clearer("community", lower), **KW)
    assert r.traded_kwh == pytest.approx(7.0)
    assert r.welfare_usd == pytest.approx(1.12)


# ---------------------------------------------------------------- properties

prices = st.integers(2, 35).map(lambda c: c / 100)
energies = st.integers(1, 20).map(lambda h: h / 2)
member = st.tuples(st.sampled_from(["buy", "sell"]), energies, prices)


@st.composite
def books(draw: st.DrawFn, max_communities: int = 4) -> list[Order]:
    n = draw(st.integers(1, max_communities))
    out: list[Order] = []
    for c in range(n):
        for m, (side, kwh, usd) in enumerate(draw(st.lists(member, min_size=1, max_size=4))):
            out.append(order(f"c{c}m{m}", side, kwh, usd, f"C{c}"))
    return out


def check_invariants(book: list[Order], r: ClearingResult) -> None:
    by_p = {o.participant: o for o in book}
    bought = dict.fromkeys(by_p, 0.0)
    sold = dict.fromkeys(by_p, 0.0)
    paid = received = 0.0
    for t in r.trades:
        assert t.energy_kwh > 0
        assert t.seller in by_p or t.seller == GRID
        assert t.buyer in by_p or t.buyer == GRID
        if t.buyer != GRID:
            bought[t.buyer] += t.energy_kwh
        if t.seller != GRID:
            sold[t.seller] += t.energy_kwh
        if t.seller != GRID and t.buyer != GRID:
            paid += t.energy_kwh * t.price_usd_per_kwh
            received += t.energy_kwh * t.price_usd_per_kwh
            # Individual rationality on effective limits.
            assert t.price_usd_per_kwh <= min(by_p[t.buyer].price_usd_per_kwh, RETAIL) + 1e-9
            assert t.price_usd_per_kwh >= max(by_p[t.seller].price_usd_per_kwh, FEED_IN) - 1e-9
    # Energy balance per participant: peer + grid = its order.
    for p, o in by_p.items():
        got = bought[p] if o.side == "buy" else sold[p]
        assert got == pytest.approx(o.energy_kwh, abs=1e-9)
    # Budget balance among peers.
    assert paid == pytest.approx(received)
    peer_vol = sum(t.energy_kwh for t in r.peer_trades)
    assert peer_vol == pytest.approx(r.traded_kwh, abs=1e-9)
    # Confirmations agree with the trades.
    for c in r.confirmations:
        pb = sum(t.energy_kwh for t in r.peer_trades if t.buyer == c.participant)
        ps = sum(t.energy_kwh for t in r.peer_trades if t.seller == c.participant)
        gb = sum(t.energy_kwh for t in r.grid_trades if t.buyer == c.participant)
        gs = sum(t.energy_kwh for t in r.grid_trades if t.seller == c.participant)
        assert (c.peer_bought_kwh, c.peer_sold_kwh) == pytest.approx((pb, ps), abs=1e-9)
        assert (c.grid_bought_kwh, c.grid_sold_kwh) == pytest.approx((gb, gs), abs=1e-9)
        assert c.scheduled_kwh == pytest.approx(pb + gb - ps - gs, abs=1e-9)
    assert sorted(c.participant for c in r.confirmations) == sorted(by_p)
    assert r.welfare_usd >= -1e-9


@settings(max_examples=40, deadline=None)
@given(books())
def test_properties_random_books(book: list[Order]):
    r = clear_hybrid(book, **KW)
    check_invariants(book, r)
    # A hierarchy cannot beat the flat market on the same book.
    flat = clear_uniform_price(book, **KW)
    assert r.welfare_usd <= flat.welfare_usd + 1e-9


@settings(max_examples=40, deadline=None)
@given(books(max_communities=1))
def test_one_community_equals_community_mechanism(book: list[Order]):
    r = clear_hybrid(book, **KW)
    flat = clear_uniform_price(book, **KW)
    assert r.traded_kwh == pytest.approx(flat.traded_kwh, abs=1e-9)
    assert r.welfare_usd == pytest.approx(flat.welfare_usd, abs=1e-9)
    assert r.status == flat.status
