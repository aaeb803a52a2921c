"""Peer-to-peer market with product differentiation (bilateral trades).

Reference formulation: Sorin, Bobo & Pinson, "Consensus-based approach to
peer-to-peer electricity markets with product differentiation", IEEE Trans. Power
Systems 34(2), 2019. Every (seller, buyer) pair trades its own product: a per-pair
charge ``charge_usd_per_kwh[(seller, buyer)] >= 0`` [USD/kWh] (a grid charge from the
electrical distance plus any preference) makes some pairs cheaper than others.

Book
    As in :mod:`federates.market.community`: only orders of ``interval`` with a finite,
    positive ``energy_kwh`` and a finite price count. Effective limits are clipped to
    the utility's tariffs (buyer ``min(limit, retail)``, seller ``max(limit, feed_in)``).
    A pair (offer o, bid d) is *admissible* when
    ``eff_limit_d - eff_limit_o - charge_sb >= 0``; only admissible pairs may trade.
    Charges are looked up by (seller participant, buyer participant); missing pairs
    have charge 0. A participant that both bids and offers can be matched with itself.

Problem (both solvers solve the same LP), over admissible pairs of orders
    maximise   sum_sb (limit_b - limit_s - charge_sb) * q_sb        [USD]
    subject to sum_b q_sb <= offer energy of s  (dual mu_s >= 0)    [kWh]
               sum_s q_sb <= bid energy of b    (dual lambda_b >= 0) [kWh]
               q_sb >= 0
    with the *submitted* limits in the objective. Every admissible pair has a
    non-negative coefficient (submitted limits are at least as wide as the effective
    ones), so welfare >= 0. With zero charges the optimum equals the welfare of the
    community uniform-price auction.

Welfare
    ``ClearingResult.welfare_usd`` [USD] = the objective above: sum over peer-traded
    energy of (buyer limit - seller limit - charge). With zero charges this is exactly
    the ClearingResult definition (buyer limit minus seller limit).

Price rule (per pair, [USD/kWh])
    The buyer pays ``p_sb`` per kWh; the seller receives ``p_sb - charge_sb`` (the
    charge is recorded as ``Trade.fee_usd = charge_sb * q_sb``). Every trade's price is
    clipped into the window ``[eff_limit_s + charge_sb, eff_limit_b]`` (non-empty for an
    admissible pair), which gives individual rationality: no buyer pays above its limit,
    no seller nets below its ask, and nobody does worse than with the utility.

    - LP: ``p_sb = limit_b - lambda_b`` (the buyer's marginal value; by complementary
      slackness equal to ``limit_s + charge_sb + mu_s`` on a traded pair), clipped.
    - ADMM: ``p_sb`` is the consensus pair price at convergence, clipped.

Trades: one peer Trade per (seller participant, buyer participant), energies summed,
price volume-weighted, fees summed, in order of (seller, buyer); then unmatched energy
to / from ``GRID`` at retail / feed-in as in the community market. Confirmations carry
the participant's volume-weighted peer price (None without peer trades).

Units: energy [kWh] over the interval, prices and charges [USD/kWh], money [USD].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from federates.common.admm import Groups as _Groups
from federates.common.admm import norm as _norm
from federates.common.admm import project_groups as _project_groups
from federates.common.lazy import LazyModule
from federates.common.messages import GRID, Order, Trade
from federates.market.book import ClearingResult, ClearingStatus, confirmations_from, valid_order

pyo = LazyModule("pyomo.environ")  # imported on first use (federates/common/lazy.py)

Pair = tuple[str, str]  # (seller participant, buyer participant)

_EPS_KWH = 1e-9  # quantities below this [kWh] count as zero


# --------------------------------------------------------------------------- book


@dataclass(frozen=True)
class P2PBook:
    """The admissible bilateral book of one interval.

    ``bids`` / ``offers``: valid orders of the interval (input order kept).
    ``pairs``: admissible (offer index, bid index) pairs; ``weight_usd_per_kwh`` their
    objective coefficient (limit_b - limit_s - charge) [USD/kWh]; ``charge_usd_per_kwh``
    the pair charge [USD/kWh]; ``lo_usd_per_kwh`` / ``hi_usd_per_kwh`` the price window
    [eff_limit_s + charge, eff_limit_b] [USD/kWh].
    """

    interval: int
    participants: list[str]
    bids: list[Order]
    offers: list[Order]
    pairs: list[tuple[int, int]]
    weight_usd_per_kwh: list[float]
    charge_usd_per_kwh: list[float]
    lo_usd_per_kwh: list[float]
    hi_usd_per_kwh: list[float]
    retail_usd_per_kwh: float
    feed_in_usd_per_kwh: float




def build_book(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    charges: Mapping[Pair, float] | None = None,
) -> P2PBook:
    """The admissible pairs of ``interval`` (rules in the module docstring).

    ``charges`` [USD/kWh] per (seller, buyer) participant pair, >= 0 (ValueError
    otherwise); missing pairs are 0.
    """
    charges = charges or {}
    for k, c in charges.items():
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"charge for {k} must be finite and >= 0, got {c!r}")
    mine = [o for o in orders if o.interval == interval]
    bids = [o for o in mine if valid_order(o) and o.side == "buy"]
    offers = [o for o in mine if valid_order(o) and o.side == "sell"]
    # every (offer i, bid j) at once, offers outer and bids inner (the pairs' order);
    # the same float operations, in the same order, as one pair at a time
    price_s = np.array([o.price_usd_per_kwh for o in offers], dtype=float).reshape(-1, 1)
    price_b = np.array([o.price_usd_per_kwh for o in bids], dtype=float).reshape(1, -1)
    eff_s = np.maximum(price_s, feed_in_usd_per_kwh)
    eff_b = np.minimum(price_b, retail_usd_per_kwh)
    c = np.zeros((len(offers), len(bids)))
    if charges:
        for i, so in enumerate(offers):
            for j, bo in enumerate(bids):
                c[i, j] = float(charges.get((so.participant, bo.participant), 0.0))
    ii, jj = np.nonzero(eff_b - eff_s - c >= 0)
    c_n = c[ii, jj]
    pairs = list(zip(ii.tolist(), jj.tolist(), strict=True))
    w = (price_b[0, jj] - price_s[ii, 0] - c_n).tolist()
    ch = c_n.tolist()
    lo = (eff_s[ii, 0] + c_n).tolist()
    hi = eff_b[0, jj].tolist()
    return P2PBook(
        interval=interval,
        participants=sorted({o.participant for o in mine}),
        bids=bids,
        offers=offers,
        pairs=pairs,
        weight_usd_per_kwh=w,
        charge_usd_per_kwh=ch,
        lo_usd_per_kwh=lo,
        hi_usd_per_kwh=hi,
        retail_usd_per_kwh=retail_usd_per_kwh,
        feed_in_usd_per_kwh=feed_in_usd_per_kwh,
    )


def electrical_distance_charges(
    orders: list[Order],
    distance_km: Mapping[Pair, float],
    usd_per_kwh_per_km: float,
) -> dict[Pair, float]:
    """Grid charges [USD/kWh] for every (seller, buyer) participant pair in ``orders``.

    ``distance_km`` [km]: electrical distance per participant pair, looked up as
    (seller, buyer) then (buyer, seller); a participant trading with itself is at 0 km.
    ``usd_per_kwh_per_km`` [USD/kWh/km] >= 0. Raises ValueError naming a missing pair.
    Does not need the feeder: pass in whatever distances (e.g. feeder graph paths).
    """
    if not (math.isfinite(usd_per_kwh_per_km) and usd_per_kwh_per_km >= 0):
        raise ValueError(f"usd_per_kwh_per_km must be finite and >= 0, got {usd_per_kwh_per_km!r}")
    sellers = sorted({o.participant for o in orders if o.side == "sell"})
    buyers = sorted({o.participant for o in orders if o.side == "buy"})
    out: dict[Pair, float] = {}
    for s in sellers:
        for b in buyers:
            if s == b:
                d = 0.0
            elif (s, b) in distance_km:
                d = distance_km[(s, b)]
            elif (b, s) in distance_km:
                d = distance_km[(b, s)]
            else:
                raise ValueError(f"no electrical distance for pair ({s!r}, {b!r})")
            if not (math.isfinite(d) and d >= 0):
                raise ValueError(f"distance for ({s!r}, {b!r}) must be finite and >= 0, got {d!r}")
            out[(s, b)] = usd_per_kwh_per_km * d
    return out


# ---------------------------------------------------------------- result assembly


def _status(book: P2PBook, traded_kwh: float) -> ClearingStatus:
    if not book.bids and not book.offers:
        return "empty"
    if not book.bids or not book.offers:
        return "one_sided"
    return "cleared" if traded_kwh > 0 else "no_crossing"


def _result(book: P2PBook, q_kwh: list[float], price_usd_per_kwh: list[float]) -> ClearingResult:
    """ClearingResult from per-admissible-pair quantities [kWh] and prices [USD/kWh]."""
    k = book.interval
    sold = [0.0] * len(book.offers)
    bought = [0.0] * len(book.bids)
    agg: dict[Pair, list[float]] = {}  # -> [energy kWh, money USD, fee USD]
    welfare = 0.0
    for n in np.flatnonzero(np.asarray(q_kwh, dtype=float) > _EPS_KWH).tolist():
        i, j = book.pairs[n]
        q = q_kwh[n]
        p = min(max(price_usd_per_kwh[n], book.lo_usd_per_kwh[n]), book.hi_usd_per_kwh[n])
        sold[i] += q
        bought[j] += q
        welfare += book.weight_usd_per_kwh[n] * q
        a = agg.setdefault((book.offers[i].participant, book.bids[j].participant), [0.0, 0.0, 0.0])
        a[0] += q
        a[1] += p * q
        a[2] += book.charge_usd_per_kwh[n] * q

    zero = dict.fromkeys(book.participants, 0.0)
    peer_bought, peer_sold, money = dict(zero), dict(zero), dict(zero)
    trades: list[Trade] = []
    for (s, b), (e, m, fee) in sorted(agg.items()):
        trades.append(Trade(k, s, b, e, m / e, fee))
        peer_sold[s] += e
        peer_bought[b] += e
        money[s] += m
        money[b] += m
    grid_bought, grid_sold = dict(zero), dict(zero)
    for j, o in enumerate(book.bids):
        grid_bought[o.participant] += max(o.energy_kwh - bought[j], 0.0)
    for i, o in enumerate(book.offers):
        grid_sold[o.participant] += max(o.energy_kwh - sold[i], 0.0)
    for p in book.participants:
        if grid_bought[p] > _EPS_KWH:
            trades.append(Trade(k, GRID, p, grid_bought[p], book.retail_usd_per_kwh))
    for p in book.participants:
        if grid_sold[p] > _EPS_KWH:
            trades.append(Trade(k, p, GRID, grid_sold[p], book.feed_in_usd_per_kwh))

    confirmations = confirmations_from(
        k, book.participants, peer_bought, peer_sold, grid_bought, grid_sold,
        lambda p: money[p] / vol if (vol := peer_bought[p] + peer_sold[p]) > 0 else None,
    )
    traded = sum(sold)
    return ClearingResult(
        interval=k,
        status=_status(book, traded),
        price_usd_per_kwh=None,
        trades=trades,
        confirmations=confirmations,
        traded_kwh=traded,
        unmatched_buy_kwh=sum(max(o.energy_kwh - bought[j], 0.0) for j, o in enumerate(book.bids)),
        unmatched_sell_kwh=sum(max(o.energy_kwh - sold[i], 0.0) for i, o in enumerate(book.offers)),
        welfare_usd=welfare,
        n_bids=len(book.bids),
        n_offers=len(book.offers),
    )


# -------------------------------------------------------------- centralised LP


def build_p2p_lp(book: P2PBook) -> pyo.ConcreteModel:
    """Pyomo LP of the book: ``m.q[n]`` [kWh] per admissible pair ``n``.

    Constraints ``m.sell_cap[i]`` / ``m.buy_cap[j]`` [kWh]; objective welfare [USD];
    ``m.dual`` imports the duals [USD/kWh].
    """
    m = pyo.ConcreteModel(name="p2p")
    m.P = pyo.RangeSet(0, len(book.pairs) - 1)
    m.S = pyo.RangeSet(0, len(book.offers) - 1)
    m.B = pyo.RangeSet(0, len(book.bids) - 1)
    m.q = pyo.Var(m.P, domain=pyo.NonNegativeReals)
    by_s: dict[int, list[int]] = {i: [] for i in range(len(book.offers))}
    by_b: dict[int, list[int]] = {j: [] for j in range(len(book.bids))}
    for n, (i, j) in enumerate(book.pairs):
        by_s[i].append(n)
        by_b[j].append(n)

    def sell_cap(m: pyo.ConcreteModel, i: int) -> object:
        if not by_s[i]:
            return pyo.Constraint.Skip
        return sum(m.q[n] for n in by_s[i]) <= book.offers[i].energy_kwh

    def buy_cap(m: pyo.ConcreteModel, j: int) -> object:
        if not by_b[j]:
            return pyo.Constraint.Skip
        return sum(m.q[n] for n in by_b[j]) <= book.bids[j].energy_kwh

    m.sell_cap = pyo.Constraint(m.S, rule=sell_cap)
    m.buy_cap = pyo.Constraint(m.B, rule=buy_cap)
    m.welfare = pyo.Objective(
        expr=sum(book.weight_usd_per_kwh[n] * m.q[n] for n in m.P), sense=pyo.maximize
    )
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    return m


def solve_p2p_lp(m: pyo.ConcreteModel) -> None:
    """Solve ``m`` with HiGHS in place; raises RuntimeError unless optimal."""
    solver = pyo.SolverFactory("appsi_highs")
    res = solver.solve(m, load_solutions=True)
    tc = res.solver.termination_condition
    if tc != pyo.TerminationCondition.optimal:
        raise RuntimeError(f"P2P LP not optimal: {tc}")


def read_p2p_lp(m: pyo.ConcreteModel, book: P2PBook) -> tuple[list[float], list[float]]:
    """Per-pair quantities [kWh] and prices [USD/kWh] (``limit_b - lambda_b``, unclipped).

    The sign of the duals depends on the solver interface, so ``lambda_b`` is taken as
    ``|dual|`` (it is >= 0 for a ``<=`` constraint of a maximisation).
    """
    q = [max(float(pyo.value(m.q[n])), 0.0) for n in range(len(book.pairs))]
    lam: dict[int, float] = {}
    for j in m.B:
        c = m.buy_cap[j] if j in m.buy_cap else None
        lam[j] = abs(float(m.dual.get(c, 0.0))) if c is not None else 0.0
    prices = [book.bids[j].price_usd_per_kwh - lam[j] for (_, j) in book.pairs]
    return q, prices


def clear_p2p_lp(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    charges: Mapping[Pair, float] | None = None,
) -> ClearingResult:
    """Clear one interval centrally with the bilateral LP (pyomo + HiGHS).

    ``charges`` [USD/kWh] per (seller, buyer), default 0. ``price_usd_per_kwh`` of the
    result is None (every pair has its own price); unmatched energy goes to GRID.
    """
    book = build_book(
        orders,
        interval=interval,
        retail_usd_per_kwh=retail_usd_per_kwh,
        feed_in_usd_per_kwh=feed_in_usd_per_kwh,
        charges=charges,
    )
    if not book.pairs:
        return _result(book, [], [])
    m = build_p2p_lp(book)
    solve_p2p_lp(m)
    q, prices = read_p2p_lp(m, book)
    return _result(book, q, prices)


# ------------------------------------------------------- decentralised ADMM


@dataclass
class AdmmStats:
    """Convergence record of :func:`clear_p2p_admm`.

    ``primal_residual_kwh`` [kWh]: ||q_from_seller - q_from_buyer||_2 per iteration;
    ``dual_residual_usd`` [USD/kWh·kWh = USD]: rho * ||q_from_buyer change||_2 per
    iteration; ``rho_usd_per_kwh2`` [USD/kWh^2] the penalty per iteration.
    """

    iterations: int = 0
    converged: bool = False
    primal_residual_kwh: list[float] = field(default_factory=list)
    dual_residual_usd: list[float] = field(default_factory=list)
    rho_usd_per_kwh2: list[float] = field(default_factory=list)


def _project_capped(v: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto {x >= 0, sum x <= cap} (closed form, sort): the
    reference for ``_project_groups``."""
    x = np.maximum(v, 0.0)
    if x.sum() <= cap:
        return x
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - cap
    k = np.arange(1, len(u) + 1)
    rho_idx = np.nonzero(u - css / k > 0)[0][-1]
    tau = css[rho_idx] / (rho_idx + 1)
    return np.maximum(v - tau, 0.0)


def clear_p2p_admm(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    charges: Mapping[Pair, float] | None = None,
    rho: float = 0.5,
    tol: float = 1e-6,
    rel_tol: float = 1e-3,
    max_iter: int = 20000,
    adaptive_rho: bool = False,
    relax: float = 1.6,
) -> tuple[ClearingResult, AdmmStats]:
    """Clear one interval by consensus ADMM among the peers (same LP as the centralised one).

    Each seller s keeps its proposals ``x_sb`` [kWh], each buyer b its ``y_sb`` [kWh];
    peers exchange only these proposals and the pair prices ``pi_sb`` [USD/kWh].
    One iteration (all in closed form):

    - seller s: ``x_s = proj(y_s - (limit_s + charge_sb - pi_sb) / rho)`` onto
      {x >= 0, sum_b x_sb <= offer energy};
    - buyer b: ``y_b = proj(x_b + (limit_b - pi_sb) / rho)`` onto
      {y >= 0, sum_s y_sb <= bid energy};
    - pair price: ``pi_sb += rho * (y_sb - x_sb)`` (the price rises when the buyer
      wants more than the seller offers; with the multiplier ``lambda = -pi`` this is
      ``lambda_sb += rho * (x_sb - y_sb)``).

    Every peer's step is computed for all peers at once on arrays (``_project_groups``);
    the iterates are those of one peer at a time, up to floating-point rounding.

    ``rho`` [USD/kWh^2] penalty, fixed by default (``adaptive_rho`` turns on residual
    balancing, x2 or /2 at most every 10 iterations; on books of 40 orders it made some
    runs oscillate, so it is off). ``relax``: over-relaxation (Boyd et al. 2011, sec.
    3.4.3): the buyers and the prices see ``relax * x + (1 - relax) * y_prev`` instead of
    ``x``; 1 is plain ADMM. Stops when the primal residual ||x - y|| [kWh] is below
    ``tol * sqrt(n) + rel_tol * max(||x||, ||y||)`` and the dual residual
    ``rho * ||y - y_prev||`` [USD] below ``tol * sqrt(n) + rel_tol * ||pi||`` (sec.
    3.3.1; n pairs), or after ``max_iter`` iterations; ``rel_tol=0, relax=1`` is the
    earlier absolute test of plain ADMM (with the earlier ``rho=0.05, relax=1``). On 1000
    random orders (102k pairs, no charges; benchmarks/market.py) the welfare is 0.017 %
    below the LP's after 69 iterations with the defaults; 0.008 % after 400 with
    ``rel_tol=1e-4``; 0.002 % after 1077 with ``rel_tol=0``; 0.002 % after ~9600 with the
    earlier settings (rho 0.05, plain ADMM, absolute test). Deterministic.
    The scheduled quantity of a pair is ``min(x_sb, y_sb)`` (feasible for both sides).
    """
    book = build_book(
        orders,
        interval=interval,
        retail_usd_per_kwh=retail_usd_per_kwh,
        feed_in_usd_per_kwh=feed_in_usd_per_kwh,
        charges=charges,
    )
    stats = AdmmStats()
    n = len(book.pairs)
    if n == 0:
        stats.converged = True
        return _result(book, [], []), stats
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")

    pairs = np.array(book.pairs, dtype=np.int64).reshape(-1, 2)
    s_idx, b_idx = pairs[:, 0], pairs[:, 1]
    offer_price = np.array([o.price_usd_per_kwh for o in book.offers])
    bid_price = np.array([o.price_usd_per_kwh for o in book.bids])
    cost_s = offer_price[s_idx] + np.array(book.charge_usd_per_kwh)
    value_b = bid_price[b_idx]
    sellers = _Groups.of(s_idx, [o.energy_kwh for o in book.offers])
    buyers = _Groups.of(b_idx, [o.energy_kwh for o in book.bids])
    tau_s = tau_b = None

    x = np.zeros(n)
    y = np.zeros(n)
    pi = 0.5 * (np.array(book.lo_usd_per_kwh) + np.array(book.hi_usd_per_kwh))
    eps = tol * math.sqrt(n)
    for it in range(1, max_iter + 1):
        vx = y - (cost_s - pi) / rho
        xs, tau_s = _project_groups(vx[sellers.perm], sellers, tau_s)
        x = xs[sellers.inverse]
        y_old = y
        xr = x if relax == 1.0 else relax * x + (1.0 - relax) * y_old  # over-relaxation
        vy = xr + (value_b - pi) / rho
        ys, tau_b = _project_groups(vy[buyers.perm], buyers, tau_b)
        y = ys[buyers.inverse]
        pi = pi + rho * (y - xr)
        r = _norm(x - y)
        d = rho * _norm(y - y_old)
        stats.primal_residual_kwh.append(r)
        stats.dual_residual_usd.append(d)
        stats.rho_usd_per_kwh2.append(rho)
        stats.iterations = it
        if r < eps + rel_tol * max(_norm(x), _norm(y)) and d < eps + rel_tol * _norm(pi):
            stats.converged = True
            break
        if adaptive_rho and it % 10 == 0:
            if r > 10 * d:
                rho *= 2.0
            elif d > 10 * r:
                rho /= 2.0
    return _result(book, np.minimum(x, y).tolist(), pi.tolist()), stats
