"""Game-theoretic views of the community market (review section 4.1, Table 3).

Three techniques, all built on the uniform-price auction ``clear_uniform_price``:

1. Non-cooperative bidding (``nash_markups``): each participant's strategy is a markup
   [USD/kWh] on its true value (buyers bid ``value - m``) or cost (sellers ask
   ``cost + m``); best-response iteration on a finite markup grid looks for a pure Nash
   equilibrium and an explicit unilateral-deviation check certifies it.
2. Cooperative (``shapley_values`` exact, ``shapley_sampled`` by random permutations,
   ``community_surplus`` as the characteristic function): how the savings of trading
   inside the community, versus everyone trading with the grid, are shared.
3. Evolutionary (``replicator``, ``market_fitness_fn``): discrete-time replicator
   dynamics of bidding strategies across days.

Units: energy [kWh], prices and markups [USD/kWh], money and payoffs [USD].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from federates.common.messages import Order
from federates.common.rng import stream
from federates.market.community import ClearingResult, clear_uniform_price

ValueFn = Callable[[frozenset], float]

# ---------------------------------------------------------------------------------------
# Payoffs of one clearing
# ---------------------------------------------------------------------------------------


def _with_markup(o: Order, markup_usd_per_kwh: float) -> Order:
    """``o`` with its limit shaded by a markup [USD/kWh]: buyers bid lower, sellers ask more."""
    sign = -1.0 if o.side == "buy" else 1.0
    return Order(
        o.participant,
        o.side,
        o.interval,
        o.energy_kwh,
        o.price_usd_per_kwh + sign * markup_usd_per_kwh,
        o.bus,
        o.phase,
        o.community,
    )


def _profits_usd(
    true_book: Sequence[Order],
    result: ClearingResult,
    *,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> dict[str, float]:
    """Profit [USD] of each participant of ``true_book`` (one order each) after ``result``.

    Buyer: (value - price) * peer_bought + (value - retail) * grid_bought.
    Seller: (price - cost) * peer_sold + (feed_in - cost) * grid_sold.
    Value / cost [USD/kWh] is the order's (true) limit in ``true_book``.
    """
    conf = {c.participant: c for c in result.confirmations}
    price = result.price_usd_per_kwh
    out: dict[str, float] = {}
    for o in true_book:
        c = conf.get(o.participant)
        if c is None:
            out[o.participant] = 0.0
            continue
        v = o.price_usd_per_kwh
        if o.side == "buy":
            peer = 0.0 if price is None else (v - price) * c.peer_bought_kwh
            out[o.participant] = peer + (v - retail_usd_per_kwh) * c.grid_bought_kwh
        else:
            peer = 0.0 if price is None else (price - v) * c.peer_sold_kwh
            out[o.participant] = peer + (feed_in_usd_per_kwh - v) * c.grid_sold_kwh
    return out


def _check_one_order_each(book: Sequence[Order]) -> list[str]:
    players = [o.participant for o in book]
    if len(set(players)) != len(players):
        raise ValueError("each participant must have exactly one order in the book")
    if len({o.interval for o in book}) > 1:
        raise ValueError("all orders of the book must be for the same interval")
    return players


def profits_with_markups(
    book: Sequence[Order],
    markups_usd_per_kwh: dict[str, float],
    *,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> dict[str, float]:
    """Profit [USD] of each participant when it shades its true limit by its markup [USD/kWh].

    ``book``: one order per participant, all for one interval, at true value / cost
    [USD/kWh]. Participants missing from ``markups_usd_per_kwh`` bid truthfully.
    """
    _check_one_order_each(book)
    if not book:
        return {}
    shaded = [_with_markup(o, markups_usd_per_kwh.get(o.participant, 0.0)) for o in book]
    res = clear_uniform_price(
        shaded,
        interval=book[0].interval,
        retail_usd_per_kwh=retail_usd_per_kwh,
        feed_in_usd_per_kwh=feed_in_usd_per_kwh,
    )
    return _profits_usd(
        book, res, retail_usd_per_kwh=retail_usd_per_kwh, feed_in_usd_per_kwh=feed_in_usd_per_kwh
    )


# ---------------------------------------------------------------------------------------
# 1. Non-cooperative bidding: pure Nash equilibrium of markups on a grid
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NashResult:
    """Outcome of ``nash_markups``.

    ``markups_usd_per_kwh`` [USD/kWh] and ``profits_usd`` [USD] per participant at the
    final profile; ``rounds`` best-response rounds run; ``converged``: a full round
    changed nobody's markup (a pure Nash equilibrium on the grid);
    ``deviation_gain_usd`` [USD]: the largest gain any single player could get by
    switching alone to any grid markup (<= 1e-9 at an equilibrium).
    """

    markups_usd_per_kwh: dict[str, float]
    profits_usd: dict[str, float]
    rounds: int
    converged: bool
    deviation_gain_usd: float


def nash_markups(
    book: Sequence[Order],
    *,
    markups_usd_per_kwh: np.ndarray,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    max_rounds: int = 50,
    tol_usd: float = 1e-9,
) -> NashResult:
    """Best-response iteration of markups [USD/kWh] on a grid, from truthful bidding.

    ``book``: one order per participant (true value / cost as the limit [USD/kWh]).
    ``markups_usd_per_kwh``: the allowed markups [USD/kWh] (e.g. 0..0.1). Players (by
    participant id) in turn pick the grid markup maximising their profit [USD] given the
    others; a player keeps its markup unless another gains more than ``tol_usd`` [USD]
    (then the smallest best markup is taken). Stops after a round with no change or
    after ``max_rounds``. Then every unilateral deviation to a grid markup is checked.
    """
    players = sorted(_check_one_order_each(book))
    grid = [float(m) for m in np.asarray(markups_usd_per_kwh, dtype=float).ravel()]
    if not grid:
        raise ValueError("the markup grid is empty")
    cache: dict[tuple[float, ...], dict[str, float]] = {}

    def payoff(profile: dict[str, float]) -> dict[str, float]:
        key = tuple(profile[p] for p in players)
        if key not in cache:
            cache[key] = profits_with_markups(
                book,
                profile,
                retail_usd_per_kwh=retail_usd_per_kwh,
                feed_in_usd_per_kwh=feed_in_usd_per_kwh,
            )
        return cache[key]

    start = 0.0 if 0.0 in grid else min(grid)
    profile = dict.fromkeys(players, start)
    rounds = 0
    converged = False
    while rounds < max_rounds:
        rounds += 1
        changed = False
        for p in players:
            current = payoff(profile)[p]
            best_m, best_u = profile[p], current
            for m in grid:
                u = payoff({**profile, p: m})[p]
                if u > best_u + tol_usd:
                    best_m, best_u = m, u
            if best_m != profile[p]:
                profile[p] = best_m
                changed = True
        if not changed:
            converged = True
            break

    final = payoff(profile)
    gain = 0.0
    for p in players:
        for m in grid:
            gain = max(gain, payoff({**profile, p: m})[p] - final[p])
    return NashResult(
        markups_usd_per_kwh=dict(profile),
        profits_usd=dict(final),
        rounds=rounds,
        converged=converged,
        deviation_gain_usd=gain,
    )


# ---------------------------------------------------------------------------------------
# 2. Cooperative: Shapley values
# ---------------------------------------------------------------------------------------


def shapley_values(players: Sequence[Hashable], value_fn: ValueFn) -> dict:
    """Exact Shapley value [units of ``value_fn``, e.g. USD] of each player, n <= 10.

    ``value_fn(frozenset_of_players)`` is the coalition's worth; v(empty set) is taken
    from ``value_fn`` too (normally 0). All 2^n coalitions are evaluated once.
    """
    ps = list(players)
    n = len(ps)
    if len(set(ps)) != n:
        raise ValueError("players must be distinct")
    if n > 10:
        raise ValueError(
            f"exact Shapley values are limited to n <= 10 (got {n}); use shapley_sampled"
        )
    worth: dict[frozenset, float] = {}
    for k in range(n + 1):
        for c in combinations(ps, k):
            s = frozenset(c)
            worth[s] = float(value_fn(s))
    weight = [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    out: dict = {}
    for p in ps:
        others = [q for q in ps if q != p]
        phi = 0.0
        for k in range(n):
            for c in combinations(others, k):
                s = frozenset(c)
                phi += weight[k] * (worth[s | {p}] - worth[s])
        out[p] = phi
    return out


def shapley_sampled(
    players: Sequence[Hashable],
    value_fn: ValueFn,
    *,
    n_permutations: int,
    seed: int,
) -> dict:
    """Monte-Carlo Shapley value [units of ``value_fn``]: mean marginal contribution over
    ``n_permutations`` uniformly random orderings drawn from ``stream(seed, "shapley")``.

    Efficiency holds exactly per permutation, so the estimates sum to v(N) - v(empty).
    Coalition worths are cached, so repeated coalitions cost one call.
    """
    ps = list(players)
    if len(set(ps)) != len(ps):
        raise ValueError("players must be distinct")
    if n_permutations < 1:
        raise ValueError("n_permutations must be >= 1")
    rng = stream(seed, "shapley_sampled")
    cache: dict[frozenset, float] = {}

    def v(s: frozenset) -> float:
        if s not in cache:
            cache[s] = float(value_fn(s))
        return cache[s]

    total = dict.fromkeys(ps, 0.0)
    for _ in range(n_permutations):
        order = rng.permutation(len(ps))
        s: frozenset = frozenset()
        prev = v(s)
        for i in order:
            s = s | {ps[int(i)]}
            cur = v(s)
            total[ps[int(i)]] += cur - prev
            prev = cur
    return {p: total[p] / n_permutations for p in ps}


def community_surplus(
    orders: Sequence[Order],
    *,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> ValueFn:
    """Characteristic function [USD] of the community-trading game.

    The worth of a coalition (a frozenset of participant ids) is what its members save,
    summed over intervals, by clearing their own ``orders`` (true limits) in a uniform
    auction among themselves, with the rest traded with the grid, versus all of them
    trading only with the grid (buy at retail, sell at feed-in). The uniform price
    transfers cancel inside the coalition, so the worth is
    (retail - feed_in) [USD/kWh] * peer-traded energy [kWh]. Results are cached.
    """
    spread = retail_usd_per_kwh - feed_in_usd_per_kwh
    intervals = sorted({o.interval for o in orders})
    cache: dict[frozenset, float] = {}

    def value(coalition: frozenset) -> float:
        key = frozenset(coalition)
        if key not in cache:
            mine = [o for o in orders if o.participant in key]
            traded_kwh = 0.0
            for k in intervals:
                traded_kwh += clear_uniform_price(
                    mine,
                    interval=k,
                    retail_usd_per_kwh=retail_usd_per_kwh,
                    feed_in_usd_per_kwh=feed_in_usd_per_kwh,
                ).traded_kwh
            cache[key] = spread * traded_kwh
        return cache[key]

    return value


# ---------------------------------------------------------------------------------------
# 3. Evolutionary: replicator dynamics
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicatorResult:
    """Replicator trajectory.

    ``shares`` [-]: (days + 1, k) population shares of the k strategies, row 0 the
    start, each row a probability vector; ``fitness_usd`` [USD]: (days, k) fitness of
    each strategy on each day; ``strategies``: the strategy names (may be empty).
    """

    shares: np.ndarray
    fitness_usd: np.ndarray
    strategies: list[str] = field(default_factory=list)

    @property
    def final(self) -> np.ndarray:
        """Shares [-] after the last day."""
        return self.shares[-1]


PayoffFn = Callable[[int, np.ndarray], np.ndarray]


def replicator(
    payoff: np.ndarray | PayoffFn,
    shares0: Sequence[float] | np.ndarray,
    *,
    days: int,
    step: float,
    strategies: Sequence[str] = (),
) -> ReplicatorResult:
    """Discrete-time replicator dynamics of strategy shares over ``days`` days.

    ``payoff``: a k x k payoff matrix [USD] (fitness = A @ shares, a strategy meeting a
    random opponent) or a function ``(day, shares) -> fitness [USD] per strategy`` (e.g.
    average profit in that day's market). ``shares0`` [-]: initial shares (normalised).
    ``step`` [1/USD]: share growth rate per USD of fitness advantage per day. Each day
    ``x_i <- x_i + step * x_i * (f_i - mean f)``; the update keeps the sum at 1, and if a
    too-large step drives a share negative it is clipped at 0 and the vector
    renormalised, so every row is a probability vector.
    """
    x = np.asarray(shares0, dtype=float).copy()
    if x.ndim != 1 or x.size == 0 or np.any(x < 0) or not np.all(np.isfinite(x)) or x.sum() <= 0:
        raise ValueError("shares0 must be a non-empty, non-negative, finite vector")
    x /= x.sum()
    k = x.size
    if callable(payoff):
        fit_fn: PayoffFn = payoff
    else:
        a = np.asarray(payoff, dtype=float)
        if a.shape != (k, k):
            raise ValueError(f"payoff matrix must be {k}x{k}, got {a.shape}")

        def fit_fn(_day: int, s: np.ndarray) -> np.ndarray:
            return a @ s

    shares = np.empty((days + 1, k))
    fitness = np.empty((days, k))
    shares[0] = x
    for d in range(days):
        f = np.asarray(fit_fn(d, x.copy()), dtype=float)
        if f.shape != (k,):
            raise ValueError(f"fitness must have shape ({k},), got {f.shape}")
        fitness[d] = f
        x = x + step * x * (f - float(x @ f))
        x = np.clip(x, 0.0, None)
        x /= x.sum()
        shares[d + 1] = x
    return ReplicatorResult(shares=shares, fitness_usd=fitness, strategies=list(strategies))


def market_fitness_fn(
    book_for_day: Callable[[int], Sequence[Order]],
    strategy_markups_usd_per_kwh: Sequence[float],
    *,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    seed: int,
) -> PayoffFn:
    """A ``replicator`` fitness function [USD] from a daily community market.

    Each day, every participant of ``book_for_day(day)`` (one true-limit order each)
    draws a strategy with probabilities = current shares (from
    ``stream(seed, "replicator", day)``), shades its limit by that strategy's markup
    [USD/kWh], and the book is cleared. A strategy's fitness is the average profit [USD]
    of the participants that played it; a strategy nobody played gets the population's
    average profit (no selection pressure on it that day).
    """
    mk = [float(m) for m in strategy_markups_usd_per_kwh]

    def fitness(day: int, shares: np.ndarray) -> np.ndarray:
        book = list(book_for_day(day))
        players = sorted(_check_one_order_each(book))
        rng = stream(seed, "replicator", day)
        drawn = rng.choice(len(mk), size=len(players), p=shares)
        profile = {p: mk[int(s)] for p, s in zip(players, drawn, strict=True)}
        prof = profits_with_markups(
            book,
            profile,
            retail_usd_per_kwh=retail_usd_per_kwh,
            feed_in_usd_per_kwh=feed_in_usd_per_kwh,
        )
        mean_all = float(np.mean([prof[p] for p in players])) if players else 0.0
        out = np.full(len(mk), mean_all)
        for s in range(len(mk)):
            who = [p for p, d in zip(players, drawn, strict=True) if int(d) == s]
            if who:
                out[s] = float(np.mean([prof[p] for p in who]))
        return out

    return fitness
