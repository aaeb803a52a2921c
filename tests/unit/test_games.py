"""Game-theory techniques on the community market: Nash markups, Shapley, replicator."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.messages import Order
from federates.common.rng import stream
from federates.market.games import (
    community_surplus,
    market_fitness_fn,
    nash_markups,
    profits_with_markups,
    replicator,
    shapley_sampled,
    shapley_values,
)

RETAIL = 0.26
FEED_IN = 0.08
GRID_MARKUPS = np.linspace(0.0, 0.1, 11)  # [USD/kWh]


def buy(p: str, kwh: float, usd: float) -> Order:
    return Order(p, "buy", 0, kwh, usd)


def sell(p: str, kwh: float, usd: float) -> Order:
    return Order(p, "sell", 0, kwh, usd)


def random_book(seed: int, n_buyers: int, n_sellers: int) -> list[Order]:
    rng = stream(seed, "test_games_book")
    book = [
        buy(f"b{i}", float(rng.uniform(0.5, 3.0)), float(rng.uniform(0.12, 0.30)))
        for i in range(n_buyers)
    ]
    book += [
        sell(f"s{i}", float(rng.uniform(0.5, 3.0)), float(rng.uniform(0.05, 0.20)))
        for i in range(n_sellers)
    ]
    return book


# --- 1. Nash markups ---------------------------------------------------------------------


def test_profits_truthful_hand_computed() -> None:
    # Bid 0.20, ask 0.10, 2 kWh each: price 0.15, each side gains 0.05 * 2 = 0.10 USD.
    p = profits_with_markups(
        [buy("b", 2.0, 0.20), sell("s", 2.0, 0.10)],
        {},
        retail_usd_per_kwh=RETAIL,
        feed_in_usd_per_kwh=FEED_IN,
    )
    assert p["b"] == pytest.approx(0.10)
    assert p["s"] == pytest.approx(0.10)


def test_profits_include_grid_trades() -> None:
    # Buyer needs 3 kWh, seller offers 1: 2 kWh from grid at retail (value 0.20 < 0.26).
    p = profits_with_markups(
        [buy("b", 3.0, 0.20), sell("s", 1.0, 0.10)],
        {},
        retail_usd_per_kwh=RETAIL,
        feed_in_usd_per_kwh=FEED_IN,
    )
    assert p["b"] == pytest.approx(0.05 * 1 + (0.20 - RETAIL) * 2)
    assert p["s"] == pytest.approx(0.05)


def test_bilateral_nash_buyer_moves_first() -> None:
    # Players in id order: the buyer shades its bid down to the seller's cost, after
    # which any seller markup kills the trade (feed-in loss), so nobody moves again.
    r = nash_markups(
        [buy("b", 2.0, 0.20), sell("s", 2.0, 0.10)],
        markups_usd_per_kwh=GRID_MARKUPS,
        retail_usd_per_kwh=RETAIL,
        feed_in_usd_per_kwh=FEED_IN,
    )
    assert r.converged
    assert r.deviation_gain_usd <= 1e-9
    assert r.markups_usd_per_kwh["s"] == 0.0
    assert r.markups_usd_per_kwh["b"] == pytest.approx(0.1)
    assert r.profits_usd["b"] == pytest.approx(0.2)
    assert r.profits_usd["s"] == pytest.approx(0.0)


def test_nash_deviation_check_matches_brute_force() -> None:
    book = random_book(3, 3, 3)
    grid = np.linspace(0.0, 0.08, 5)
    r = nash_markups(
        book, markups_usd_per_kwh=grid, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN
    )
    assert r.rounds <= 50
    base = profits_with_markups(
        book, r.markups_usd_per_kwh, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN
    )
    assert base == pytest.approx(r.profits_usd)
    gain = 0.0
    for o in book:
        for m in grid:
            dev = profits_with_markups(
                book,
                {**r.markups_usd_per_kwh, o.participant: float(m)},
                retail_usd_per_kwh=RETAIL,
                feed_in_usd_per_kwh=FEED_IN,
            )
            gain = max(gain, dev[o.participant] - base[o.participant])
    assert r.deviation_gain_usd == pytest.approx(gain, abs=1e-12)
    if r.converged:
        assert r.deviation_gain_usd <= 1e-9


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), nb=st.integers(1, 3), ns=st.integers(1, 3))
def test_nash_converged_means_no_profitable_deviation(seed: int, nb: int, ns: int) -> None:
    r = nash_markups(
        random_book(seed, nb, ns),
        markups_usd_per_kwh=np.linspace(0.0, 0.1, 6),
        retail_usd_per_kwh=RETAIL,
        feed_in_usd_per_kwh=FEED_IN,
        max_rounds=20,
    )
    assert r.deviation_gain_usd >= 0.0
    if r.converged:
        assert r.deviation_gain_usd <= 1e-9
    assert set(r.markups_usd_per_kwh) == set(r.profits_usd)


def test_nash_rejects_two_orders_per_participant() -> None:
    with pytest.raises(ValueError, match="exactly one order"):
        nash_markups(
            [buy("a", 1.0, 0.2), sell("a", 1.0, 0.1)],
            markups_usd_per_kwh=GRID_MARKUPS,
            retail_usd_per_kwh=RETAIL,
            feed_in_usd_per_kwh=FEED_IN,
        )


# --- 2. Shapley --------------------------------------------------------------------------


def glove(s: frozenset) -> float:
    """Player 1 holds a left glove, players 2 and 3 right gloves; a pair is worth 1."""
    return 1.0 if 1 in s and (2 in s or 3 in s) else 0.0


def test_glove_game_reference() -> None:
    # Textbook (e.g. Osborne & Rubinstein; Maschler, Solan & Zamir): (2/3, 1/6, 1/6).
    phi = shapley_values([1, 2, 3], glove)
    assert phi[1] == pytest.approx(2 / 3)
    assert phi[2] == pytest.approx(1 / 6)
    assert phi[3] == pytest.approx(1 / 6)


def test_community_glove_market() -> None:
    # One 1 kWh seller, two 1 kWh buyers: the glove game scaled by (retail - feed_in).
    orders = [sell("s", 1.0, 0.10), buy("b1", 1.0, 0.25), buy("b2", 1.0, 0.25)]
    v = community_surplus(orders, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
    spread = RETAIL - FEED_IN
    assert v(frozenset()) == 0.0
    assert v(frozenset({"b1", "b2"})) == 0.0
    assert v(frozenset({"s", "b1"})) == pytest.approx(spread)
    phi = shapley_values(["s", "b1", "b2"], v)
    assert phi["s"] == pytest.approx(2 / 3 * spread)
    assert phi["b1"] == pytest.approx(1 / 6 * spread)
    assert phi["b2"] == pytest.approx(1 / 6 * spread)


def six_player_game() -> tuple[list[str], object]:
    book = random_book(11, 3, 3)
    v = community_surplus(book, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
    return [o.participant for o in book], v


def test_shapley_efficiency() -> None:
    players, v = six_player_game()
    phi = shapley_values(players, v)
    assert sum(phi.values()) == pytest.approx(v(frozenset(players)), abs=1e-12)
    assert v(frozenset(players)) > 0


def test_shapley_symmetry_and_null_player() -> None:
    orders = [
        sell("s1", 2.0, 0.10),
        sell("s2", 2.0, 0.10),  # symmetric sellers
        buy("b1", 3.0, 0.22),
        buy("null", 5.0, 0.05),  # below feed-in: never crosses any offer
    ]
    v = community_surplus(orders, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
    phi = shapley_values(["s1", "s2", "b1", "null"], v)
    assert phi["s1"] == pytest.approx(phi["s2"], abs=1e-12)
    assert phi["null"] == pytest.approx(0.0, abs=1e-12)
    assert sum(phi.values()) == pytest.approx(v(frozenset({"s1", "s2", "b1", "null"})))


def test_exact_and_sampled_agree_within_sampling_error() -> None:
    players, v = six_player_game()
    exact = shapley_values(players, v)
    n_perm = 2000
    sampled = shapley_sampled(players, v, n_permutations=n_perm, seed=7)
    # Sampled values are efficient exactly.
    assert sum(sampled.values()) == pytest.approx(v(frozenset(players)), abs=1e-12)
    for p in players:
        others = [q for q in players if q != p]
        margins = [
            v(frozenset(c) | {p}) - v(frozenset(c))
            for k in range(len(others) + 1)
            for c in itertools.combinations(others, k)
        ]
        sigma_max = (max(margins) - min(margins)) / 2  # Popoviciu bound on the std dev
        assert abs(sampled[p] - exact[p]) <= 4 * sigma_max / np.sqrt(n_perm) + 1e-12


def test_sampled_is_deterministic_in_seed() -> None:
    players, v = six_player_game()
    a = shapley_sampled(players, v, n_permutations=50, seed=1)
    b = shapley_sampled(players, v, n_permutations=50, seed=1)
    assert a == b


def test_exact_shapley_limited_to_ten() -> None:
    with pytest.raises(ValueError, match="n <= 10"):
        shapley_values(list(range(11)), lambda s: float(len(s)))


# --- 3. Replicator -----------------------------------------------------------------------


def test_hawk_dove_converges_to_v_over_c() -> None:
    # Maynard Smith's Hawk-Dove with V < C: the ESS is a share V/C of hawks.
    v_usd, c_usd = 2.0, 6.0
    a = np.array([[(v_usd - c_usd) / 2, v_usd], [0.0, v_usd / 2]])
    r = replicator(a, [0.9, 0.1], days=2000, step=0.1, strategies=["hawk", "dove"])
    assert r.shares.shape == (2001, 2)
    assert r.final[0] == pytest.approx(v_usd / c_usd, abs=1e-6)
    assert np.allclose(r.shares.sum(axis=1), 1.0)


def test_replicator_zero_share_stays_zero_and_dominant_wins() -> None:
    a = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    r = replicator(a, [0.0, 0.5, 0.5], days=500, step=0.5)
    assert np.all(r.shares[:, 0] == 0.0)
    assert r.final[2] > 0.99


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(2, 4),
    step=st.floats(0.01, 50.0),
    days=st.integers(1, 30),
)
def test_replicator_shares_stay_probability_vector(
    seed: int, k: int, step: float, days: int
) -> None:
    rng = stream(seed, "test_replicator")
    a = rng.normal(size=(k, k))
    r = replicator(a, rng.dirichlet(np.ones(k)), days=days, step=step)
    assert np.all(r.shares >= 0.0)
    assert np.allclose(r.shares.sum(axis=1), 1.0)


def test_market_replicator_runs_and_is_deterministic() -> None:
    def book_for_day(day: int) -> list[Order]:
        return random_book(100 + day, 4, 4)

    strategies = ["truthful", "markup_low", "markup_high"]
    markups = [0.0, 0.02, 0.06]

    def run() -> np.ndarray:
        fit = market_fitness_fn(
            book_for_day,
            markups,
            retail_usd_per_kwh=RETAIL,
            feed_in_usd_per_kwh=FEED_IN,
            seed=5,
        )
        return replicator(fit, np.ones(3) / 3, days=20, step=2.0, strategies=strategies).shares

    s1, s2 = run(), run()
    assert np.array_equal(s1, s2)
    assert s1.shape == (21, 3)
    assert np.all(s1 >= 0.0)
    assert np.allclose(s1.sum(axis=1), 1.0)
