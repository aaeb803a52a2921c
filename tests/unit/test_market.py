"""Community uniform-price market: hand-computed books, edge cases, properties, role."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.config import StudyFile
from federates.common.messages import GRID, CurtailmentNotice, IntervalEnergy, Order
from federates.market.community import ClearingResult, clear_uniform_price
from federates.market.role import MarketRole

RETAIL = 0.26
FEED_IN = 0.08


def clear(orders: list[Order], interval: int = 0) -> ClearingResult:
    return clear_uniform_price(
        orders, interval=interval, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN
    )


def buy(p: str, kwh: float, usd: float, k: int = 0) -> Order:
    return Order(p, "buy", k, kwh, usd)


def sell(p: str, kwh: float, usd: float, k: int = 0) -> Order:
    return Order(p, "sell", k, kwh, usd)


def pairs(r: ClearingResult) -> list[tuple[str, str, float, float]]:
    return [(t.seller, t.buyer, t.energy_kwh, t.price_usd_per_kwh) for t in r.trades]


def conf(r: ClearingResult, p: str):
    (c,) = [c for c in r.confirmations if c.participant == p]
    return c


# --------------------------------------------------------------------- hand-computed books


def test_hand_book_three_by_three():
    # bids  (desc): A 3 kWh @0.25, B 2 kWh @0.20, C 1 kWh @0.12
    # offers (asc): X 2 kWh @0.10, Y 2 kWh @0.15, Z 2 kWh @0.22
    # walk: A-X 2 (X done) ; A-Y 1 (A done) ; B-Y 1 (Y done) ; B 0.20 < Z 0.22 -> stop
    # traded 2+1+1 = 4 kWh; marginal bid B 0.20, marginal offer Y 0.15 -> price 0.175
    # welfare = 2*(0.25-0.10) + 1*(0.25-0.15) + 1*(0.20-0.15) = 0.30+0.10+0.05 = 0.45
    # grid: B 1 + C 1 = 2 kWh bought at retail; Z 2 kWh sold at feed-in
    orders = [
        sell("Z", 2, 0.22), buy("C", 1, 0.12), sell("X", 2, 0.10),
        buy("A", 3, 0.25), sell("Y", 2, 0.15), buy("B", 2, 0.20),
    ]
    r = clear(orders)
    assert r.status == "cleared"
    assert r.price_usd_per_kwh == pytest.approx(0.175, abs=1e-15)
    assert r.traded_kwh == 4.0
    assert r.unmatched_buy_kwh == 2.0 and r.unmatched_sell_kwh == 2.0
    assert r.welfare_usd == pytest.approx(0.45, abs=1e-15)
    assert r.n_bids == 3 and r.n_offers == 3
    p = r.price_usd_per_kwh
    assert pairs(r) == [
        ("X", "A", 2.0, p), ("Y", "A", 1.0, p), ("Y", "B", 1.0, p),
        (GRID, "B", 1.0, RETAIL), (GRID, "C", 1.0, RETAIL), ("Z", GRID, 2.0, FEED_IN),
    ]
    assert [c.participant for c in r.confirmations] == ["A", "B", "C", "X", "Y", "Z"]
    assert [c.scheduled_kwh for c in r.confirmations] == [3.0, 2.0, 1.0, -2.0, -2.0, -2.0]
    b = conf(r, "B")
    assert (b.peer_bought_kwh, b.grid_bought_kwh, b.peer_sold_kwh, b.grid_sold_kwh) == (1, 1, 0, 0)
    z = conf(r, "Z")
    assert (z.peer_sold_kwh, z.grid_sold_kwh, z.scheduled_kwh) == (0, 2, -2)
    assert all(c.price_usd_per_kwh == p for c in r.confirmations)


def test_limits_are_clipped_to_the_tariffs():
    # A bids 0.40 > retail -> effective 0.26; X asks 0.02 < feed-in -> effective 0.08
    # price = (0.26 + 0.08) / 2 = 0.17; welfare uses the submitted limits: 1*(0.40-0.02)
    r = clear([buy("A", 1, 0.40), sell("X", 1, 0.02)])
    assert r.status == "cleared"
    assert r.price_usd_per_kwh == pytest.approx(0.17, abs=1e-15)
    assert r.welfare_usd == pytest.approx(0.38, abs=1e-15)
    assert FEED_IN <= r.price_usd_per_kwh <= RETAIL


def test_offer_above_retail_does_not_cross():
    # X asks 0.30 > retail 0.26: no buyer pays a peer more than the utility asks
    r = clear([buy("A", 1, 0.50), sell("X", 1, 0.30)])
    assert r.status == "no_crossing" and r.price_usd_per_kwh is None
    assert pairs(r) == [(GRID, "A", 1.0, RETAIL), ("X", GRID, 1.0, FEED_IN)]
    assert r.traded_kwh == 0.0 and r.welfare_usd == 0.0


def test_exact_quantities_leave_no_residue():
    # 0.75 = 0.5 + 0.25 exactly: the buyer gets nothing from the grid
    r = clear([buy("A", 0.75, 0.2), sell("X", 0.5, 0.1), sell("Y", 0.25, 0.15)])
    assert r.traded_kwh == 0.75 and r.unmatched_buy_kwh == 0.0
    assert r.grid_trades == []
    # marginal bid A 0.2, marginal offer Y 0.15 -> 0.175
    assert r.price_usd_per_kwh == pytest.approx(0.175, abs=1e-15)


def test_price_is_midpoint_of_marginal_orders_and_partial_fill():
    # A 1 @0.24 ; X 3 @0.10 -> X partially filled (1 of 3), price (0.24+0.10)/2 = 0.17
    r = clear([buy("A", 1, 0.24), sell("X", 3, 0.10)])
    assert r.price_usd_per_kwh == pytest.approx(0.17, abs=1e-15)
    assert pairs(r)[1:] == [("X", GRID, 2.0, FEED_IN)]
    assert conf(r, "X").scheduled_kwh == -3.0


# ------------------------------------------------------------------------------ edge cases


def test_empty_book():
    r = clear([])
    assert r.status == "empty" and r.price_usd_per_kwh is None
    assert r.trades == [] and r.confirmations == []
    assert (r.traded_kwh, r.unmatched_buy_kwh, r.unmatched_sell_kwh, r.welfare_usd) == (0, 0, 0, 0)


def test_zero_quantities_are_left_out_but_confirmed():
    r = clear([buy("A", 0.0, 0.2), sell("X", 0.0, 0.1)])
    assert r.status == "empty" and r.trades == []
    assert [(c.participant, c.scheduled_kwh) for c in r.confirmations] == [("A", 0.0), ("X", 0.0)]
    r = clear([buy("A", 1.0, 0.2), sell("X", 0.0, 0.1)])
    assert r.status == "one_sided" and r.n_offers == 0
    assert pairs(r) == [(GRID, "A", 1.0, RETAIL)]


def test_invalid_quantities_do_not_raise():
    r = clear([buy("A", -1.0, 0.2), sell("X", math.nan, 0.1), sell("Y", 1.0, math.inf)])
    assert r.status == "empty" and r.trades == []


def test_one_sided_books_go_to_the_grid():
    r = clear([buy("A", 1, 0.2), buy("B", 2, 0.3)])
    assert r.status == "one_sided" and r.price_usd_per_kwh is None
    assert pairs(r) == [(GRID, "A", 1.0, RETAIL), (GRID, "B", 2.0, RETAIL)]
    assert r.unmatched_buy_kwh == 3.0
    r = clear([sell("X", 1, 0.1)])
    assert r.status == "one_sided" and pairs(r) == [("X", GRID, 1.0, FEED_IN)]
    assert conf(r, "X").scheduled_kwh == -1.0


def test_no_crossing():
    r = clear([buy("A", 1, 0.10), sell("X", 1, 0.20)])
    assert r.status == "no_crossing" and r.price_usd_per_kwh is None
    assert r.traded_kwh == 0.0 and r.unmatched_buy_kwh == 1.0 and r.unmatched_sell_kwh == 1.0


def test_equal_limits_trade_at_that_price():
    r = clear([buy("A", 1, 0.15), sell("X", 1, 0.15)])
    assert r.status == "cleared" and r.price_usd_per_kwh == 0.15 and r.welfare_usd == 0.0


def test_ties_broken_by_participant_id():
    # two bids at 0.20 for the one offered kWh: "A" < "B" wins, whatever the input order
    r = clear([buy("B", 1, 0.20), buy("A", 1, 0.20), sell("X", 1, 0.10)])
    assert pairs(r)[0][:3] == ("X", "A", 1.0)
    assert pairs(r)[1] == (GRID, "B", 1.0, RETAIL)
    r = clear([sell("Y", 1, 0.10), sell("X", 1, 0.10), buy("A", 1, 0.20)])
    assert pairs(r)[0][:3] == ("X", "A", 1.0)
    assert pairs(r)[1] == ("Y", GRID, 1.0, FEED_IN)


def test_other_interval_orders_are_ignored():
    r = clear([buy("A", 1, 0.2, k=3), sell("X", 1, 0.1, k=2)], interval=3)
    assert r.status == "one_sided" and [c.participant for c in r.confirmations] == ["A"]


def test_multiple_orders_of_one_participant_merge_per_pair():
    # A: 1 @0.25 and 1 @0.20 ; X 2 @0.10 -> one trade X->A of 2 kWh
    # marginal bid 0.20, offer 0.10 -> 0.15 ; welfare 1*0.15 + 1*0.10 = 0.25
    r = clear([buy("A", 1, 0.25), buy("A", 1, 0.20), sell("X", 2, 0.10)])
    assert pairs(r) == [("X", "A", 2.0, pytest.approx(0.15, abs=1e-15))]
    assert r.welfare_usd == pytest.approx(0.25, abs=1e-15)


# ---------------------------------------------------------------------- property tests

ids = st.sampled_from(["p0", "p1", "p2", "p3", "p4", "p5"])
energies = st.one_of(st.just(0.0), st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False))
prices = st.floats(0.0, 0.5, allow_nan=False, allow_infinity=False)
orders_st = st.lists(
    st.builds(Order, ids, st.sampled_from(["buy", "sell"]), st.just(0), energies, prices),
    max_size=14,
)


def _eff(o: Order) -> Fraction:
    p = Fraction(o.price_usd_per_kwh)
    return min(p, Fraction(RETAIL)) if o.side == "buy" else max(p, Fraction(FEED_IN))


def independent_volume(orders: list[Order]) -> Fraction:
    """max over candidate prices p of min(D(p), S(p)) on the clipped limits (no matching)."""
    book = [o for o in orders if o.energy_kwh > 0]
    best = Fraction(0)
    for p in {_eff(o) for o in book}:
        d = sum((Fraction(o.energy_kwh) for o in book if o.side == "buy" and _eff(o) >= p), Fraction(0))
        s = sum((Fraction(o.energy_kwh) for o in book if o.side == "sell" and _eff(o) <= p), Fraction(0))
        best = max(best, min(d, s))
    return best


def check_invariants(orders: list[Order], r: ClearingResult) -> None:
    peer = r.peer_trades
    bought = math.fsum(t.energy_kwh for t in peer)
    assert bought == pytest.approx(r.traded_kwh, rel=1e-12, abs=1e-12)
    assert all(t.energy_kwh > 0 for t in r.trades)
    assert not any(t.seller == GRID and t.buyer == GRID for t in r.trades)
    # each participant's peer + grid equals what it ordered, per side
    for c in r.confirmations:
        want_buy = math.fsum(o.energy_kwh for o in orders if o.participant == c.participant
                             and o.side == "buy" and o.energy_kwh > 0)
        want_sell = math.fsum(o.energy_kwh for o in orders if o.participant == c.participant
                              and o.side == "sell" and o.energy_kwh > 0)
        assert c.peer_bought_kwh + c.grid_bought_kwh == pytest.approx(want_buy, rel=1e-12, abs=1e-12)
        assert c.peer_sold_kwh + c.grid_sold_kwh == pytest.approx(want_sell, rel=1e-12, abs=1e-12)
        net = c.peer_bought_kwh + c.grid_bought_kwh - c.peer_sold_kwh - c.grid_sold_kwh
        assert c.scheduled_kwh == pytest.approx(net, rel=1e-12, abs=1e-12)
        # nobody trades beyond its quantity; individual rationality per unit:
        # peer purchases fit in the bids whose (clipped) limit is >= the price, etc.
        if r.price_usd_per_kwh is None:
            assert c.peer_bought_kwh == 0 and c.peer_sold_kwh == 0
            continue
        price = Fraction(r.price_usd_per_kwh)
        ok_buy = math.fsum(o.energy_kwh for o in orders if o.participant == c.participant
                           and o.side == "buy" and o.energy_kwh > 0 and _eff(o) >= price)
        ok_sell = math.fsum(o.energy_kwh for o in orders if o.participant == c.participant
                            and o.side == "sell" and o.energy_kwh > 0 and _eff(o) <= price)
        assert c.peer_bought_kwh <= ok_buy * (1 + 1e-12) + 1e-12
        assert c.peer_sold_kwh <= ok_sell * (1 + 1e-12) + 1e-12
    # budget balance among peers: what buyers pay is what sellers receive
    paid = {c.participant: 0.0 for c in r.confirmations}
    recv = dict(paid)
    for t in peer:
        paid[t.buyer] += t.energy_kwh * t.price_usd_per_kwh
        recv[t.seller] += t.energy_kwh * t.price_usd_per_kwh
    assert math.fsum(paid.values()) == pytest.approx(math.fsum(recv.values()), rel=1e-12, abs=1e-12)
    # uniform price inside the tariffs; grid trades at the tariffs
    if r.price_usd_per_kwh is not None:
        assert FEED_IN <= r.price_usd_per_kwh <= RETAIL
        assert all(t.price_usd_per_kwh == r.price_usd_per_kwh for t in peer)
    assert all(t.price_usd_per_kwh == RETAIL for t in r.grid_trades if t.seller == GRID)
    assert all(t.price_usd_per_kwh == FEED_IN for t in r.grid_trades if t.buyer == GRID)
    assert r.welfare_usd >= 0
    assert (r.status == "cleared") == (r.traded_kwh > 0) == (r.price_usd_per_kwh is not None)


@settings(max_examples=300, deadline=None)
@given(orders_st)
def test_properties_on_random_books(orders):
    r = clear(orders)
    check_invariants(orders, r)
    # independent check of the traded volume (exact rationals on both sides)
    assert r.traded_kwh == float(independent_volume(orders))
    unmatched_buy = math.fsum(o.energy_kwh for o in orders if o.side == "buy" and o.energy_kwh > 0)
    assert r.unmatched_buy_kwh + r.traded_kwh == pytest.approx(unmatched_buy, rel=1e-12, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(orders_st, st.randoms(use_true_random=False))
def test_input_order_does_not_matter(orders, rnd):
    shuffled = list(orders)
    rnd.shuffle(shuffled)
    assert clear(shuffled) == clear(orders)


small_orders_st = st.lists(
    st.tuples(st.sampled_from(["buy", "sell"]), st.integers(0, 3).map(float),
              st.sampled_from([0.05, 0.08, 0.1, 0.15, 0.2, 0.26, 0.3])),
    max_size=6,
).map(lambda xs: [Order(f"p{i}", side, 0, e, p) for i, (side, e, p) in enumerate(xs)])


def brute_force(orders: list[Order]) -> tuple[Fraction, Fraction]:
    """(max welfare, largest volume reaching it) by enumerating every integer allocation."""
    book = [o for o in orders if o.energy_kwh > 0]
    best_w, best_v = Fraction(0), Fraction(0)
    for x in itertools.product(*[range(int(o.energy_kwh) + 1) for o in book]):
        vb = sum(q for q, o in zip(x, book, strict=True) if o.side == "buy")
        vs = sum(q for q, o in zip(x, book, strict=True) if o.side == "sell")
        if vb != vs:
            continue
        w = sum((q * _eff(o) if o.side == "buy" else -q * _eff(o))
                for q, o in zip(x, book, strict=True))
        if w > best_w or (w == best_w and vb > best_v):
            best_w, best_v = Fraction(w), Fraction(vb)
    return best_w, best_v


@settings(max_examples=200, deadline=None)
@given(small_orders_st)
def test_volume_is_the_maximum_welfare_volume_by_enumeration(orders):
    # one order per participant, so a confirmation is that order's allocation
    r = clear(orders)
    w, v = brute_force(orders)
    assert r.traded_kwh == float(v)
    by_p = {o.participant: o for o in orders}
    reached = sum((Fraction(c.peer_bought_kwh) * _eff(by_p[c.participant])
                   - Fraction(c.peer_sold_kwh) * _eff(by_p[c.participant])
                   for c in r.confirmations), Fraction(0))
    assert reached == w  # welfare on the clipped limits is the maximum


# ------------------------------------------------------------------------------ the role


def study(**market) -> StudyFile:
    return StudyFile.model_validate({"study": {"duration": "30min", "market_interval": "15min",
                                               "physics_step": "60s"},
                                     "market": market})


def test_role_rejects_unknown_topology():
    with pytest.raises(ValueError, match=r"topology='p2p'.*allowed.*community"):
        MarketRole(study(topology="p2p", mechanism="uniform_price"), ["a"])


def test_role_clears_settles_and_tabulates():
    role = MarketRole(study(), ["b", "a", "c"])
    t = role.tables()
    assert all(len(df) == 0 for df in t.values())
    assert t["clearing"]["price_usd_per_kwh"].dtype == np.float64
    assert t["settlements"]["missing_reading"].dtype == bool

    orders = [buy("a", 1.0, 0.2), sell("b", 2.0, 0.1), buy("c", 1.0, 0.3, k=5)]
    confs, sched, _ = role.on_market_time(0, orders, [], [])
    # a buys 1 kWh from b at (0.2+0.1)/2; b sells 1 more to the grid; c's order is late
    assert [c.participant for c in confs] == ["a", "b"]
    # 15 min = 0.25 h: a +1 kWh -> +4 kW; b -2 kWh -> -8 kW; c none -> 0
    assert sched.tolist() == [-8.0, 4.0, 0.0]

    energies = [IntervalEnergy("a", 0, 1.5), IntervalEnergy("b", 0, -2.0), IntervalEnergy("a", 9, 7.0)]
    confs, sched, _ = role.on_market_time(1, [], energies, [CurtailmentNotice("x", 7, 1.0, "v")])
    assert confs == [] and sched.tolist() == [0.0, 0.0, 0.0]
    confs, sched, _ = role.on_market_time(2, [], [], [])
    assert confs == [] and sched.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        role.on_market_time(2, [], [], [])

    t = role.tables()
    assert t["clearing"]["status"].tolist() == ["cleared", "empty"]
    assert t["clearing"]["late_orders"].tolist() == [1, 0]
    assert math.isnan(t["clearing"]["price_usd_per_kwh"].iloc[1])
    assert t["bids"]["participant"].tolist() == ["a", "b", "c"]  # c's order is for interval 5: kept, cut
    assert t["bids"]["cut_reason"].tolist() == ["", "", "wrong_interval"]
    assert t["bids"]["energy_kwh"].tolist() == [1.0, 2.0, 0.0] and t["bids"]["requested_kwh"].tolist()[2] == 1.0
    assert t["trades"]["kind"].tolist() == ["peer", "grid"]
    s = t["settlements"]
    assert s["interval"].tolist() == [0, 0, 0, 1, 1, 1]
    assert s["participant"].tolist() == ["b", "a", "c"] * 2
    a0 = s[(s.interval == 0) & (s.participant == "a")].iloc[0]
    # a metered 1.5 vs 1 scheduled: 0.5 kWh at retail on top of 1 kWh at 0.15
    assert a0.imbalance_kwh == 0.5
    assert a0.net_cost_usd == pytest.approx(1 * 0.15 + 0.5 * RETAIL, abs=1e-12)
    c0 = s[(s.interval == 0) & (s.participant == "c")].iloc[0]
    assert bool(c0.missing_reading) and c0.metered_kwh == 0.0
    assert set(t["clearing"].columns) >= {"n_bids", "n_offers", "welfare_usd"}


def test_role_is_deterministic_under_message_order():
    orders = [buy("a", 1.0, 0.2), sell("b", 2.0, 0.1), buy("c", 0.5, 0.25), sell("d", 0.3, 0.12)]
    outs = []
    for seed in range(3):
        shuffled = list(orders)
        random.Random(seed).shuffle(shuffled)
        role = MarketRole(study(), ["a", "b", "c", "d"])
        role.on_market_time(0, shuffled, [], [])
        role.on_market_time(1, [], [], [])
        outs.append(role.tables())
    for t in outs[1:]:
        for name, df in t.items():
            assert df.equals(outs[0][name]), name


def _week_of_orders(seed: int, n_intervals: int = 12):
    from federates.market.ledger import KeyRing, sign_order

    rng = random.Random(5)
    names = ["a", "b", "c", "d", "e", "f"]
    keys = KeyRing.from_seed(seed, names)
    for k in range(n_intervals + 1):
        orders = [sign_order(keys, Order(p, rng.choice(["buy", "sell"]), k, round(rng.uniform(0.1, 3.0), 3),
                                         round(rng.uniform(0.05, 0.3), 3), phase=rng.choice("abc")))
                  for p in names if rng.random() < 0.8] if k < n_intervals else []
        energies = [IntervalEnergy(p, k - 1, rng.uniform(-3, 3)) for p in names] if k else []
        notices = [CurtailmentNotice(p, k - 1, rng.uniform(0, 1), "v_max")
                   for p in names if k and rng.random() < 0.3]
        yield k, orders, energies, notices


def test_drain_tables_streams_the_same_rows(tmp_path):
    """Draining every few market times and concatenating the chunks gives exactly the
    tables of one run that never drains (same columns, dtypes, rows); after a drain the
    role keeps no rows, and its pending state is one interval at most once its books
    are kept. Keeping the books right after each market time (as the engines do) or
    only at the next one gives the same tables and the same ledger bytes."""
    cfg = StudyFile.model_validate({"study": {"duration": "3h", "market_interval": "15min",
                                              "physics_step": "60s"}})
    names = ["a", "b", "c", "d", "e", "f"]
    once = MarketRole(cfg, names, tmp_path / "once.jsonl")
    chunked = MarketRole(cfg, names, tmp_path / "chunked.jsonl")
    chunks = []
    for k, orders, energies, notices in _week_of_orders(cfg.study.seed):
        once.on_market_time(k, orders, energies, notices)  # its books kept by the next market time
        chunked.on_market_time(k, orders, energies, notices)
        assert len(chunked._pending) <= 2  # k-1's result until its settlement is kept, and k's
        chunked.keep_books()  # as the engines do after a market time
        assert len(chunked._pending) <= 1
        if k % 5 == 4:
            chunks.append(chunked.drain_tables())
            assert not (chunked._bids or chunked._trades or chunked._clearing
                        or chunked._settlements or chunked._curtailed_trades or chunked._envelopes)
    chunks.append(chunked.tables())  # = drain the rest
    whole = once.tables()
    assert sum(len(c["settlements"]) for c in chunks) == len(whole["settlements"]) == 12 * 6
    assert len(whole["curtailed_trades"]) > 0
    import pandas as pd
    for name, df in whole.items():
        got = pd.concat([c[name] for c in chunks], ignore_index=True)
        assert list(got.dtypes) == list(df.dtypes), name
        pd.testing.assert_frame_equal(got, df, check_exact=True)
    assert all(len(df) == 0 for df in once.tables().values())  # drained
    assert (tmp_path / "once.jsonl").read_bytes() == (tmp_path / "chunked.jsonl").read_bytes()


def test_trades_carry_their_id_into_both_tables(tmp_path):
    """Each cleared trade is numbered ``"<k>-<j>"`` in clearing order; a curtailed trade's
    row names the trade by that id, seller, buyer and scheduled energy agreeing; the
    ledger's trade records leave the id out (it is their position in the block)."""
    from federates.common.messages import Trade
    from federates.market.books import money_flows
    from federates.market.ledger import read_blocks

    cfg = StudyFile.model_validate({"study": {"duration": "3h", "market_interval": "15min",
                                              "physics_step": "60s"}})
    role = MarketRole(cfg, ["a", "b", "c", "d", "e", "f"], tmp_path / "ledger.zst")
    for k, orders, energies, notices in _week_of_orders(cfg.study.seed):
        role.on_market_time(k, orders, energies, notices)
    t = role.tables()
    trades, cut = t["trades"], t["curtailed_trades"]
    for k, ids in trades.groupby("interval")["trade_id"]:
        assert list(ids) == [f"{k}-{j}" for j in range(len(ids))]
    assert len(cut) > 0
    by_id = trades.set_index("trade_id")
    for r in cut.itertuples():
        tr = by_id.loc[r.trade_id]
        assert (tr.interval, tr.seller, tr.buyer, tr.energy_kwh) == (r.interval, r.seller, r.buyer, r.scheduled_kwh)
    bodies = [r["body"] for b in read_blocks(tmp_path / "ledger.zst") for r in b["records"] if r["kind"] == "trade"]
    assert len(bodies) == len(trades) and all("trade_id" not in b for b in bodies)
    # money_flows matches cuts to trades by id: un-numbered trades are refused
    x = Trade(0, "a", "b", 1.0, 0.1)
    with pytest.raises(ValueError, match="numbered"):
        money_flows([], [x], [(x, 0.5)], retail_usd_per_kwh=0.3, feed_in_usd_per_kwh=0.05)


# ---- every order received keeps one bids row, with why it was cut --------------------
def _bids(role, t=None) -> dict[tuple[int, str, str], tuple[float, float, str]]:
    from federates.market.role import CUT_REASONS

    b = (t or role.tables())["bids"]
    assert set(b["cut_reason"]) <= set(CUT_REASONS)
    return {(int(r.interval), r.participant, r.side): (r.energy_kwh, r.requested_kwh, r.cut_reason)
            for r in b.itertuples()}


def test_bids_rows_of_orders_clipped_by_envelopes_even_to_nothing():
    """The review's case: once an order of the interval is clipped to zero, every row
    showed the accepted energy as requested and the dropped order had no row."""
    from federates.common.messages import OperatingEnvelope

    role = MarketRole(study(), ["a", "b", "c"])
    env = [OperatingEnvelope("b", 0, export_max_kw=2.0, import_max_kw=10.0),  # 0.5 kWh in 15 min
           OperatingEnvelope("c", 0, export_max_kw=0.0, import_max_kw=10.0)]
    out = role.on_market_time(0, [buy("a", 3.0, 0.3), sell("b", 2.0, 0.1), sell("c", 1.5, 0.12)], [], [], env)
    assert out.inverter_envelopes is None  # the DSO's envelopes reach the inverters from the DSO
    rows = _bids(role)
    assert rows[(0, "a", "buy")] == (3.0, 3.0, "")
    assert rows[(0, "b", "sell")] == (0.5, 2.0, "envelope")
    assert rows[(0, "c", "sell")] == (0.0, 1.5, "envelope")


def test_bids_rows_of_orders_cut_by_grid_constraints():
    from federates.common.messages import GridConstraint

    role = MarketRole(study(), ["a", "b", "c"])
    # b's and c's export [kW] together at most 4 kW (1 kWh in 15 min)
    cons = [GridConstraint(0, "thermal:line.x", ("b", "c"), (1.0, 1.0), 4.0)]
    out = role.on_market_time(0, [buy("a", 3.0, 0.3), sell("b", 2.0, 0.1), sell("c", 1.5, 0.12)], [], [], None, cons)
    # the export limits the constrained clearing set go to the feeder's inverters
    held_kw = {e.participant: e.export_max_kw for e in out.inverter_envelopes}
    assert held_kw["b"] * 0.25 + held_kw["c"] * 0.25 == pytest.approx(1.0, abs=1e-9)
    rows = _bids(role)
    assert rows[(0, "a", "buy")][2] == ""
    sold = rows[(0, "b", "sell")][0] + rows[(0, "c", "sell")][0]
    assert sold == pytest.approx(1.0, abs=1e-9)
    assert rows[(0, "b", "sell")][1:] == (2.0, "grid_constraint") and rows[(0, "c", "sell")][1:] == (1.5, "grid_constraint")


def test_bids_rows_of_unsigned_and_late_orders(tmp_path):
    from dataclasses import replace

    from federates.market.ledger import KeyRing, sign_order

    names = ["a", "b", "c"]
    cfg = study()
    keys = KeyRing.from_seed(cfg.study.seed, names)
    role = MarketRole(cfg, names, tmp_path / "ledger.zst")
    good = [sign_order(keys, buy("a", 1.0, 0.3)), sign_order(keys, sell("b", 1.0, 0.1))]
    forged = replace(sign_order(keys, sell("c", 1.0, 0.05)), energy_kwh=2.0)  # signature no longer fits
    role.on_market_time(0, [*good, forged], [], [])
    late = sign_order(keys, buy("c", 0.7, 0.3))  # for interval 0, arriving at market time 1
    role.on_market_time(1, [late], [], [])
    t = role.tables()
    rows = _bids(role, t)
    assert rows[(0, "c", "sell")] == (0.0, 2.0, "invalid_signature")
    assert rows[(0, "c", "buy")] == (0.0, 0.7, "late")
    assert rows[(0, "a", "buy")] == (1.0, 1.0, "") and rows[(0, "b", "sell")] == (1.0, 1.0, "")
    assert t["clearing"]["late_orders"].tolist() == [0, 1]
    assert t["clearing"]["rejected_orders"].tolist()[0] == 1


def test_numbered_trades_equal_replaced_ones():
    """role._numbered (the trades' dicts copied, the id set, adopted) equals
    dataclasses.replace of each trade with its id, bit for bit, and leaves the
    trades it was given as they were."""
    from dataclasses import replace

    from federates.common.messages import Trade
    from federates.market.role import _numbered

    trades = [Trade(4, "a", "b", 1.5, 0.2), Trade(4, "c", GRID, 0.1, 0.08, 0.01), Trade(4, GRID, "a", 2.0, 0.26)]
    before = [dict(vars(t)) for t in trades]
    got = _numbered(4, trades)
    assert got == [replace(t, trade_id=f"4-{j}") for j, t in enumerate(trades)]
    assert [type(t) for t in got] == [Trade] * 3
    assert [list(vars(t).items()) for t in got] == [list(vars(replace(t, trade_id=f"4-{j}")).items())
                                                   for j, t in enumerate(trades)]
    assert [vars(t) for t in trades] == before and _numbered(4, []) == []
