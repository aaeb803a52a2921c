"""The vectorised clearing (fastbook.py: arrays, and lists for small books) against the
exact step-by-step walk (book.py), and the two fast paths against each other.

Reference: ``clear_uniform_price_reference`` / ``clear_pay_as_bid_reference`` (exact
``fractions.Fraction`` arithmetic). Tolerance: none. Every result must be equal, bit for
bit (``repr`` equal, so also no 0.0 / -0.0 difference), on random books with ties,
repeated participants, zero and invalid quantities, one-sided and non-crossing books,
and energies from 1e-300 to 1e300 kWh.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.messages import Order
from federates.market import fastbook
from federates.market.community import clear_uniform_price, clear_uniform_price_reference
from federates.market.pay_as_bid import clear_pay_as_bid, clear_pay_as_bid_reference

TARIFFS = {"retail_usd_per_kwh": 0.26, "feed_in_usd_per_kwh": 0.08}
PAIRS = [(clear_uniform_price, clear_uniform_price_reference),
         (clear_pay_as_bid, clear_pay_as_bid_reference)]


def same(fast, ref, orders, interval=0, **tariffs):
    tariffs = tariffs or TARIFFS
    a = fast(orders, interval=interval, **tariffs)
    b = ref(orders, interval=interval, **tariffs)
    assert a == b
    assert repr(a) == repr(b)


energy = st.one_of(
    st.just(0.0), st.just(-1.0), st.just(float("nan")), st.just(float("inf")),
    st.floats(1e-6, 20.0), st.sampled_from([0.5, 1.0, 1.5, 2.0, 0.1, 0.2, 0.3]),
    st.floats(1e-300, 1e-250), st.floats(1e250, 1e300), st.integers(1, 5),
)
price = st.one_of(st.sampled_from([0.0, 0.05, 0.08, 0.1, 0.15, 0.2, 0.26, 0.3]),
                  st.floats(-0.1, 0.5), st.just(float("nan")))
order = st.builds(Order, st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                  st.sampled_from(["buy", "sell", "buy", "sell", "hold"]), st.sampled_from([0, 0, 0, 1]),
                  energy, price)


# mostly valid orders that cross, with many ties in price and in cumulative energy
clean_order = st.builds(Order, st.sampled_from(["a", "b", "c", "d", "e", "f", "g"]),
                        st.sampled_from(["buy", "sell"]), st.just(0),
                        st.one_of(st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0]), st.floats(0.01, 10.0)),
                        st.one_of(st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.3]), st.floats(0.0, 0.4)))


@pytest.mark.slow
@pytest.mark.parametrize(("fast", "ref"), PAIRS)
@settings(max_examples=400, deadline=None)
@given(orders=st.lists(order, max_size=16))
def test_random_books_bit_identical(fast, ref, orders):
    same(fast, ref, orders)


@pytest.mark.slow
@pytest.mark.parametrize(("fast", "ref"), PAIRS)
@settings(max_examples=400, deadline=None)
@given(orders=st.lists(clean_order, max_size=24))
def test_random_crossing_books_bit_identical(fast, ref, orders):
    same(fast, ref, orders)


@pytest.mark.slow
@pytest.mark.parametrize(("fast", "ref"), PAIRS)
@settings(max_examples=300, deadline=None)
@given(sides=st.lists(st.sets(st.sampled_from(["buy", "sell"])), max_size=12),
       data=st.data())
def test_one_order_per_side_bit_identical(fast, ref, sides, data):
    """The role's books: each participant at most one bid and one offer (fastbook's
    per-order shortcut for the participants' totals)."""
    orders = [Order(f"p{i:02d}", side, 0, data.draw(clean_order).energy_kwh,
                    data.draw(clean_order).price_usd_per_kwh)
              for i, both in enumerate(sides) for side in sorted(both)]
    same(fast, ref, orders)


@pytest.mark.parametrize(("fast", "ref"), PAIRS)
@pytest.mark.parametrize("seed", range(4))
def test_large_books_bit_identical(fast, ref, seed):
    rng = random.Random(seed)
    n = 3000
    names = [f"p{i:04d}" for i in range(n // (1 + seed))]  # seeds > 0: several orders each
    orders = [Order(rng.choice(names), rng.choice(["buy", "sell"]), 0,
                    rng.choice([rng.uniform(0.001, 15.0), round(rng.uniform(0, 5), 1)]),
                    rng.choice([rng.uniform(0.0, 0.4), round(rng.uniform(0.0, 0.4), 2)]))
              for _ in range(n)]
    same(fast, ref, orders)


def _on_arrays(orders, pricing, **tariffs):
    book = fastbook.build(orders, **tariffs)
    w = fastbook.walk(book)
    price = fastbook.uniform_price(book, w) if pricing == "uniform" else None
    return fastbook.assemble(0, book, w, book.status(), pricing, price)


@pytest.mark.parametrize("seed", range(3))
def test_small_books_on_lists_as_on_arrays(seed):
    """fastbook.clear_small (the walk on lists, for books up to SMALL_BOOK orders) gives
    the arrays' result bit for bit (repr equal), on books of 0 to SMALL_BOOK orders with
    ties, repeated participants, invalid orders, self-trades and extreme energies
    (the hypothesis tests above compare both with book.py through the mechanisms)."""
    rng = random.Random(seed)
    energies = [0.0, -1.0, float("nan"), float("inf"), 0.5, 1.0, 0.1, 0.2, 0.3]
    prices = [0.0, -0.0, 0.05, 0.08, 0.1, 0.2, 0.26, 0.3, float("nan")]
    for _ in range(150):
        n = rng.choice([0, 1, 2, 3, 5, 8, 13, 40, fastbook.SMALL_BOOK])
        people = [f"p{i}" for i in range(rng.choice([1, 2, 3, 5, 40, 200]))]
        orders = [Order(rng.choice(people), rng.choice(["buy", "sell", "buy", "sell", "hold"]), 0,
                        rng.choice([*energies, rng.uniform(0.01, 10), rng.uniform(1e-300, 1e-250),
                                    rng.uniform(1e250, 1e300)]),
                        rng.choice([*prices, rng.uniform(-0.1, 0.5)]))
                  for _ in range(n)]
        tariffs = {"retail_usd_per_kwh": rng.choice([0.26, 0.3, 0.0]),
                   "feed_in_usd_per_kwh": rng.choice([0.08, 0.0])}
        for pricing in ("uniform", "midpoint"):
            small = fastbook.clear_small(orders, interval=0, pricing=pricing, **tariffs)
            arrays = _on_arrays(orders, pricing, **tariffs)
            assert small == arrays and repr(small) == repr(arrays)
    too_many = [Order(f"p{i}", "buy", 0, 1.0, 0.2) for i in range(fastbook.SMALL_BOOK + 1)]
    assert fastbook.clear_small(too_many, interval=0, pricing="uniform", **TARIFFS) is None
    assert fastbook.clear_small([Order("a", "buy", 0, 2, 0.3)], interval=0, pricing="uniform",
                                **TARIFFS) is None  # an int energy: the arrays decide


@pytest.mark.parametrize(("fast", "ref"), PAIRS)
@pytest.mark.parametrize("case", [
    [],
    [Order("a", "buy", 0, 1.0, 0.2)],
    [Order("x", "sell", 0, 1.0, 0.1)],
    [Order("a", "buy", 0, 1.0, 0.1), Order("x", "sell", 0, 1.0, 0.2)],  # no crossing
    [Order("a", "buy", 0, 1.0, 0.15), Order("x", "sell", 0, 1.0, 0.15)],  # equal limits
    [Order("a", "buy", 0, 1.0, 0.16), Order("b", "buy", 0, 1.0, 0.16),  # ties
     Order("x", "sell", 0, 1.0, 0.15)],
    [Order("a", "buy", 0, 0.1, 0.2), Order("a", "buy", 0, 0.2, 0.2),  # sums meet exactly
     Order("x", "sell", 0, 0.3, 0.1), Order("y", "sell", 0, 0.3, 0.1)],
    [Order("a", "buy", 0, 1e-300, 0.3), Order("x", "sell", 0, 1e300, 0.1),
     Order("b", "buy", 0, 5e-324, 0.25)],
    [Order("a", "buy", 0, 2, 0.3), Order("x", "sell", 0, 1, 0)],  # ints
    [Order("a", "buy", 0, 2**60 + 1, 0.3), Order("x", "sell", 0, 1.0, 0.1)],  # not a float64
    [Order("a", "buy", 0, 1.0, 1e-310), Order("x", "sell", 0, 1.0, -1e-310)],  # subnormal
    [Order("a", "buy", 0, 1.0, 0.2), Order("b", ["sell"], 0, 1.0, 0.1),  # type: ignore[arg-type]
     Order("c", 1, 0, 1.0, 0.1), Order("x", "sell", 0, 1.0, 0.1)],  # type: ignore[arg-type]
])
def test_edge_books_bit_identical(fast, ref, case):
    same(fast, ref, case)
    same(fast, ref, case, retail_usd_per_kwh=0.3, feed_in_usd_per_kwh=0.0)


def test_exact_ints_round_trip():
    x = np.array([0.1, 3.0, 5e-324, 1e300, 2.5e-7])
    n, e = fastbook.exact_ints(x)
    assert (fastbook.to_floats(n, e) == x).all()
    # a sum that floats would round: exact, then rounded once
    total = int(n.sum())
    assert fastbook.to_float(total, e) == float(sum(__import__("fractions").Fraction(v) for v in x))


@pytest.mark.parametrize("xs", [
    [], [0.0, 0.0], [0.1, 3.0, 2.5e-7], [-0.26, 0.0, 0.08, -0.0, 1e-9],
    [5e-324, 1.0], [1e-300, 1e300],  # a spread ldexp cannot scale: the exact ratios
    [2.0**60, 2.0**70, 3.0 * 2.0**80],  # every value a multiple of 2**60: a positive unit
])
def test_small_books_exact_integers(xs):
    """``_scaled`` (floats -> exact integers in one unit) and ``_floats`` (back, each
    correctly rounded) of the small-book path, against ``fractions.Fraction``: the
    integers are the floats exactly, and their sums come back as float(Fraction sum)."""
    from fractions import Fraction

    n, e = fastbook._scaled(xs)
    assert [Fraction(v) * Fraction(2) ** e for v in n] == [Fraction(x) for x in xs]
    assert fastbook._floats(n, e) == xs
    sums = [n[i] + n[j] for i in range(len(n)) for j in range(i, len(n))]
    want = [float(Fraction(xs[i]) + Fraction(xs[j])) for i in range(len(xs)) for j in range(i, len(xs))]
    assert fastbook._floats(sums, e) == want


def test_fast_objects_equal_constructed_ones():
    from dataclasses import asdict, replace

    from federates.common.messages import Confirmation, Trade
    (t,) = fastbook.make_trades(3, ["a"], ["b"], [1.5], [0.2])
    assert t == Trade(3, "a", "b", 1.5, 0.2) and hash(t) == hash(Trade(3, "a", "b", 1.5, 0.2))
    assert asdict(t) == asdict(Trade(3, "a", "b", 1.5, 0.2))
    assert replace(t, energy_kwh=2.0) == Trade(3, "a", "b", 2.0, 0.2)
    (c,) = fastbook.make_confirmations(["a"], 1, [1.0], [1.0], [0.0], [0.0], [0.0], None)
    assert c == Confirmation("a", 1, 1.0, 1.0, 0.0, 0.0, 0.0, None)
    assert repr(c) == repr(Confirmation("a", 1, 1.0, 1.0, 0.0, 0.0, 0.0, None))


@pytest.mark.parametrize("names", [
    ["b", "a", "b", "ab", "a"],
    ["p1", "p10", "p2", "p1 ", "", "P1"],
    ["é", "e", "z", "\U0001f600", "\ud800", "Z", "ä", "a"],
    ["a\x00", "a", "a\x00b", "\x00"],  # NUL: numpy would pad; sorted by Python
    ["b1", "a2", "b1", "a1", "B1", "~~", "  "],  # ASCII of one length: as bytes
    ["", ""], [],
])
def test_ranked_participants_as_python_sorts(names):
    """fastbook._ranked (numpy's unicode sort from 256 ids) orders ids as
    ``sorted(set(...))`` does."""
    for ids in (names, names * (256 // max(len(names), 1) + 1)):
        ordered_by, pid = fastbook._ranked(ids)
        assert ordered_by == sorted(set(ids))
        assert [ordered_by[i] for i in pid] == ids


@pytest.mark.parametrize(("fast", "ref"), PAIRS)
def test_unicode_and_nul_ids_bit_identical(fast, ref):
    names = ["é", "e", "z", "\U0001f600", "Z", "a\x00", "a", "", "p10", "p1"]
    rng = random.Random(5)
    orders = [Order(rng.choice(names), rng.choice(["buy", "sell"]), 0, rng.uniform(0.1, 3.0),
                    rng.choice([0.1, 0.15, 0.2])) for _ in range(600)]
    same(fast, ref, orders)
    same(fast, ref, [o for o in orders if "\x00" not in o.participant])
