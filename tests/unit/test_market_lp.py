"""LP clearing, pay-as-bid clearing and the mechanism registry: books, edges, properties."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyomo.opt import TerminationCondition

from federates.common.messages import GRID, Order
from federates.market.community import ClearingResult, clear_uniform_price
from federates.market.lp import balance_dual, build_model, clear_lp, read_solution, solve
from federates.market.mechanisms import MECHANISMS, clear, clearing_json
from federates.market.pay_as_bid import clear_pay_as_bid

RETAIL = 0.26
FEED_IN = 0.08
TARIFFS = {"retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN}


def lp(orders: list[Order], interval: int = 0) -> ClearingResult:
    return clear_lp(orders, interval=interval, **TARIFFS)


def uni(orders: list[Order], interval: int = 0) -> ClearingResult:
    return clear_uniform_price(orders, interval=interval, **TARIFFS)


def pab(orders: list[Order], interval: int = 0) -> ClearingResult:
    return clear_pay_as_bid(orders, interval=interval, **TARIFFS)


def buy(p: str, kwh: float, usd: float) -> Order:
    return Order(p, "buy", 0, kwh, usd)


def sell(p: str, kwh: float, usd: float) -> Order:
    return Order(p, "sell", 0, kwh, usd)


def pairs(r: ClearingResult) -> list[tuple[str, str, float, float]]:
    return [(t.seller, t.buyer, t.energy_kwh, t.price_usd_per_kwh) for t in r.trades]


THREE_BY_THREE = [
    sell("Z", 2, 0.22), buy("C", 1, 0.12), sell("X", 2, 0.10),
    buy("A", 3, 0.25), sell("Y", 2, 0.15), buy("B", 2, 0.20),
]  # fmt: skip


# --------------------------------------------------------------------- LP, hand-computed


def test_lp_three_by_three_price_is_the_unique_dual():
    # bids A 3@.25, B 2@.20, C 1@.12 ; offers X 2@.10, Y 2@.15, Z 2@.22
    # optimum: A 3, B 1 ; X 2, Y 2 -> 4 kWh, welfare 3*.25+1*.20-2*.10-2*.15 = 0.45
    # dual: B is partly filled -> pi = 0.20 exactly (Z 0.22 > 0.20 > Y 0.15): unique
    m = build_model(THREE_BY_THREE, **TARIFFS)
    status, tc = solve(m)
    assert tc == TerminationCondition.optimal and str(status) == "ok"
    assert balance_dual(m) == pytest.approx(0.20, abs=1e-9)
    r = read_solution(m, THREE_BY_THREE)
    assert r.status == "cleared"
    assert r.price_usd_per_kwh == pytest.approx(0.20, abs=1e-12)
    assert r.traded_kwh == 4.0 and r.welfare_usd == pytest.approx(0.45, abs=1e-12)
    p = r.price_usd_per_kwh
    assert pairs(r) == [
        ("X", "A", 2.0, p), ("Y", "A", 1.0, p), ("Y", "B", 1.0, p),
        (GRID, "B", 1.0, RETAIL), (GRID, "C", 1.0, RETAIL), ("Z", GRID, 2.0, FEED_IN),
    ]  # fmt: skip
    assert all(c.price_usd_per_kwh == p for c in r.confirmations)
    assert lp(THREE_BY_THREE) == r


def test_lp_degenerate_dual_takes_the_midpoint():
    # A 1@.20, X 1@.10: any pi in [0.10, 0.20] is optimal -> midpoint 0.15
    m = build_model([buy("A", 1, 0.20), sell("X", 1, 0.10)], **TARIFFS)
    solve(m)
    assert 0.10 - 1e-9 <= balance_dual(m) <= 0.20 + 1e-9
    r = read_solution(m, [buy("A", 1, 0.20), sell("X", 1, 0.10)])
    assert r.price_usd_per_kwh == pytest.approx(0.15, abs=1e-12)
    assert r.traded_kwh == 1.0 and r.welfare_usd == pytest.approx(0.10, abs=1e-12)


def test_lp_price_is_competitive_where_uniform_midpoint_is_not():
    # A 1@.25, B 1@.20, X 1@.10: A trades. Duals in [0.20 (B rejected), 0.25] -> 0.225.
    # community.py's marginal-order midpoint is (0.25+0.10)/2 = 0.175 < B's limit.
    book = [buy("A", 1, 0.25), buy("B", 1, 0.20), sell("X", 1, 0.10)]
    r = lp(book)
    assert r.price_usd_per_kwh == pytest.approx(0.225, abs=1e-12)
    assert uni(book).price_usd_per_kwh == pytest.approx(0.175, abs=1e-12)
    assert pairs(r)[0][:3] == ("X", "A", 1.0)
    assert pairs(r)[1] == (GRID, "B", 1.0, RETAIL)


def test_lp_limits_are_clipped_to_the_tariffs():
    # A 0.40 -> 0.26, X 0.02 -> 0.08: dual range [0.08, 0.26] -> 0.17; welfare 0.38
    r = lp([buy("A", 1, 0.40), sell("X", 1, 0.02)])
    assert r.price_usd_per_kwh == pytest.approx(0.17, abs=1e-12)
    assert r.welfare_usd == pytest.approx(0.38, abs=1e-12)
    r = lp([buy("A", 1, 0.50), sell("X", 1, 0.30)])  # offer above retail: no crossing
    assert r.status == "no_crossing" and r.price_usd_per_kwh is None


def test_lp_partial_fill_price_is_the_partly_filled_offer():
    # A 1@.24, X 3@.10: X partly filled -> pi = 0.10 (unique)
    r = lp([buy("A", 1, 0.24), sell("X", 3, 0.10)])
    assert r.price_usd_per_kwh == pytest.approx(0.10, abs=1e-12)
    assert pairs(r)[1:] == [("X", GRID, 2.0, FEED_IN)]


# ------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("fn", [lp, pab])
def test_edge_cases(fn):
    r = fn([])
    assert r.status == "empty" and r.trades == [] and r.price_usd_per_kwh is None
    r = fn([buy("A", 1, 0.2), buy("B", 2, 0.3)])
    assert r.status == "one_sided" and r.unmatched_buy_kwh == 3.0
    assert pairs(r) == [(GRID, "A", 1.0, RETAIL), (GRID, "B", 2.0, RETAIL)]
    r = fn([sell("X", 1, 0.1)])
    assert r.status == "one_sided" and pairs(r) == [("X", GRID, 1.0, FEED_IN)]
    r = fn([buy("A", 1, 0.10), sell("X", 1, 0.20)])
    assert r.status == "no_crossing" and r.price_usd_per_kwh is None and r.traded_kwh == 0.0
    r = fn([buy("A", 1, 0.15), sell("X", 1, 0.15)])  # zero-surplus unit trades
    assert r.status == "cleared" and r.traded_kwh == 1.0 and r.welfare_usd == 0.0
    # ties: "A" < "B" wins the one offered kWh, whatever the input order
    r = fn([buy("B", 1, 0.20), buy("A", 1, 0.20), sell("X", 1, 0.10)])
    assert pairs(r)[0][:3] == ("X", "A", 1.0) and pairs(r)[1] == (GRID, "B", 1.0, RETAIL)
    r = fn([sell("Y", 1, 0.10), sell("X", 1, 0.10), buy("A", 1, 0.20)])
    assert pairs(r)[0][:3] == ("X", "A", 1.0) and pairs(r)[1] == ("Y", GRID, 1.0, FEED_IN)
    # other intervals ignored
    r = fn([Order("A", "buy", 3, 1, 0.2), Order("X", "sell", 2, 1, 0.1)], interval=3)
    assert r.status == "one_sided" and [c.participant for c in r.confirmations] == ["A"]


def test_lp_ties_at_retail_follow_submitted_priority():
    # both bids clip to 0.26; the higher submitted limit (0.40) wins as in community.py
    book = [buy("B", 1, 0.30), buy("A", 1, 0.40), sell("X", 1, 0.10)]
    assert lp(book).welfare_usd == pytest.approx(uni(book).welfare_usd, abs=1e-12)
    assert pairs(lp(book))[0][:3] == ("X", "A", 1.0)


# ---------------------------------------------------------------------------- pay-as-bid


def test_pay_as_bid_three_by_three():
    # same steps as uniform: A-X 2 @ (.25+.10)/2, A-Y 1 @ (.25+.15)/2, B-Y 1 @ (.20+.15)/2
    r = pab(THREE_BY_THREE)
    assert r.status == "cleared" and r.price_usd_per_kwh is None
    assert r.traded_kwh == 4.0 and r.welfare_usd == pytest.approx(0.45, abs=1e-12)
    got = pairs(r)
    assert [g[:3] for g in got[:3]] == [("X", "A", 2.0), ("Y", "A", 1.0), ("Y", "B", 1.0)]
    assert [g[3] for g in got[:3]] == pytest.approx([0.175, 0.20, 0.175], abs=1e-12)
    assert all(c.price_usd_per_kwh is None for c in r.confirmations)


def test_pay_as_bid_keeps_steps_at_different_prices_apart():
    # A 1@.25 and 1@.20 both from X 2@.10 -> two trades X->A at .175 and .15
    r = pab([buy("A", 1, 0.25), buy("A", 1, 0.20), sell("X", 2, 0.10)])
    assert [t[:3] for t in pairs(r)] == [("X", "A", 1.0), ("X", "A", 1.0)]
    assert [t[3] for t in pairs(r)] == pytest.approx([0.175, 0.15], abs=1e-12)


# ------------------------------------------------------------------- registry and JSON


def test_registry_and_json():
    assert set(MECHANISMS["community"]) == {"uniform_price", "pay_as_bid", "lp"}
    r = clear("community", "lp", THREE_BY_THREE, interval=0, **TARIFFS)
    j = clearing_json(r)
    assert json.loads(json.dumps(j)) == j
    assert set(j) == {
        "trades", "grid_trades", "clearing_price_usd_per_kwh", "traded_kwh",
        "welfare_usd", "unmatched", "status", "iterations", "converged",
    }  # fmt: skip
    assert len(j["trades"]) == 3 and len(j["grid_trades"]) == 3
    assert j["unmatched"] == {"buy_kwh": 2.0, "sell_kwh": 2.0} and j["status"] == "cleared"
    assert j["trades"][0] == {
        "seller": "X", "buyer": "A", "energy_kwh": 2.0,
        "price_usd_per_kwh": r.price_usd_per_kwh,
    }  # fmt: skip
    j = clearing_json(clear("community", "pay_as_bid", THREE_BY_THREE, interval=0, **TARIFFS))
    assert j["clearing_price_usd_per_kwh"] is None
    assert j["trades"][0]["price_usd_per_kwh"] == pytest.approx(0.175)
    with pytest.raises(ValueError, match=r"allowed: \['lp', 'pay_as_bid', 'uniform_price'\]"):
        clear("community", "vickrey", [], interval=0, **TARIFFS)
    with pytest.raises(ValueError, match=r"allowed: \['community', 'hybrid', 'p2p'\]"):
        clear("star", "lp", [], interval=0, **TARIFFS)


# ---------------------------------------------------------------------- property tests

ids = st.sampled_from(["p0", "p1", "p2", "p3", "p4", "p5"])
energies = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(0.0, 10.0, allow_nan=False))
prices = st.one_of(st.sampled_from([0.05, 0.08, 0.10, 0.15, 0.20, 0.26, 0.30]), st.floats(0.0, 0.5))
orders_st = st.lists(
    st.builds(Order, ids, st.sampled_from(["buy", "sell"]), st.just(0), energies, prices),
    max_size=14,
)
# The LP resolves quantities only to HiGHS's feasibility tolerance (~1e-7 kWh): its
# books use energies of 0 or >= 1e-3 kWh (a meter's resolution is 1 Wh).
lp_energies = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(1e-3, 10.0, allow_nan=False)
)
lp_orders_st = st.lists(
    st.builds(Order, ids, st.sampled_from(["buy", "sell"]), st.just(0), lp_energies, prices),
    max_size=14,
)


def _eff(o: Order) -> float:
    p = o.price_usd_per_kwh
    return min(p, RETAIL) if o.side == "buy" else max(p, FEED_IN)


@settings(max_examples=50, deadline=None)
@given(lp_orders_st)
def test_lp_matches_uniform_volume_and_welfare(orders):
    a, b = lp(orders), uni(orders)
    assert a.status == b.status
    assert a.traded_kwh == pytest.approx(b.traded_kwh, abs=1e-6)
    assert a.welfare_usd == pytest.approx(b.welfare_usd, abs=1e-6)
    assert a.unmatched_buy_kwh == pytest.approx(b.unmatched_buy_kwh, abs=1e-6)
    assert a.unmatched_sell_kwh == pytest.approx(b.unmatched_sell_kwh, abs=1e-6)
    if a.status == "cleared":
        p = a.price_usd_per_kwh
        assert FEED_IN - 1e-12 <= p <= RETAIL + 1e-12
        # competitive: every peer-traded order's clipped limit accepts the price
        for t in a.peer_trades:
            assert any(_eff(o) >= p - 1e-12 for o in orders if o.participant == t.buyer)
            assert any(_eff(o) <= p + 1e-12 for o in orders if o.participant == t.seller)
    else:
        assert a.price_usd_per_kwh is None


@settings(max_examples=100, deadline=None)
@given(orders_st)
def test_pay_as_bid_properties(orders):
    a, b = pab(orders), uni(orders)
    assert a.status == b.status and a.price_usd_per_kwh is None
    assert a.traded_kwh == b.traded_kwh and a.welfare_usd == pytest.approx(b.welfare_usd, abs=1e-12)
    assert a.grid_trades == b.grid_trades
    # budget balance among peers: what buyers pay is what sellers receive
    paid = {c.participant: Fraction(0) for c in a.confirmations}
    for t in a.peer_trades:
        paid[t.buyer] += Fraction(t.energy_kwh) * Fraction(t.price_usd_per_kwh)
        paid[t.seller] -= Fraction(t.energy_kwh) * Fraction(t.price_usd_per_kwh)
    assert sum(paid.values()) == 0
    assert sum(c.peer_bought_kwh for c in a.confirmations) == pytest.approx(
        sum(c.peer_sold_kwh for c in a.confirmations), abs=1e-9
    )
    # individual rationality: price between some offer of the seller and bid of the buyer
    for t in a.peer_trades:
        p = t.price_usd_per_kwh
        assert FEED_IN <= p <= RETAIL
        assert any(_eff(o) >= p for o in orders if o.participant == t.buyer and o.side == "buy")
        assert any(_eff(o) <= p for o in orders if o.participant == t.seller and o.side == "sell")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.01, 5.0), prices), min_size=1, max_size=6),
    st.lists(st.tuples(st.floats(0.01, 5.0), prices), min_size=1, max_size=6),
)
def test_pay_as_bid_individual_rationality_single_orders(bids, offers):
    # one order per participant: each trade price lies between its own two clipped limits
    orders = [buy(f"b{i}", q, p) for i, (q, p) in enumerate(bids)]
    orders += [sell(f"s{i}", q, p) for i, (q, p) in enumerate(offers)]
    lim = {o.participant: _eff(o) for o in orders}
    for t in pab(orders).peer_trades:
        assert lim[t.seller] <= t.price_usd_per_kwh <= lim[t.buyer]


# ------------------------------------- HiGHS directly vs the pyomo reference (bit for bit)

from federates.market.lp import clear_lp_reference  # noqa: E402

lp_order = st.builds(
    Order, st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.sampled_from(["buy", "sell"]),
    st.just(0), st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]), st.floats(0.001, 10.0)),
    st.one_of(st.sampled_from([0.05, 0.08, 0.1, 0.15, 0.2, 0.26, 0.3]), st.floats(0.0, 0.4)))


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(lp_order, max_size=16))
def test_lp_highs_direct_equals_pyomo_reference(orders):
    """clear_lp (highspy, fastbook) == clear_lp_reference (pyomo, Fraction walk): every
    field, bit for bit (repr), on random books with ties, one-sided and non-crossing."""
    a = clear_lp(orders, interval=0, **TARIFFS)
    b = clear_lp_reference(orders, interval=0, **TARIFFS)
    assert a == b and repr(a) == repr(b)


@pytest.mark.parametrize("seed", range(3))
def test_lp_highs_direct_equals_pyomo_reference_large(seed):
    import random

    rng = random.Random(seed)
    orders = [Order(f"p{i:04d}", rng.choice(["buy", "sell"]), 0, rng.uniform(0.01, 10.0),
                    rng.choice([rng.uniform(0.0, 0.4), round(rng.uniform(0.0, 0.4), 2)]))
              for i in range(1500)]
    a = clear_lp(orders, interval=0, **TARIFFS)
    b = clear_lp_reference(orders, interval=0, **TARIFFS)
    assert a == b and repr(a) == repr(b)
