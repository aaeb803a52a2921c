"""Community market cleared as a welfare-maximising linear programme (HiGHS).

``clear_lp`` has the signature of ``community.clear_uniform_price``: it passes the LP
below to HiGHS directly (highspy: the columns as arrays, no modelling layer) and reads
the solution on fastbook's exact arrays. ``clear_lp_reference`` does the same through
pyomo, in separate steps as in PyPSA (``build_model`` -> ``solve`` -> ``read_solution``),
on book.py's Fraction walk; both give equal results, bit for bit
(tests/unit/test_market_lp.py compares them on random books).

Model (one interval; book and clipped limits as in community.py rules 1-3)
    variables   ``bid_kwh[i]`` in [0, q_i] per bid, ``offer_kwh[j]`` in [0, q_j] per
                offer [kWh]
    objective   max  sum_i b_i * bid_kwh[i] - sum_j s_j * offer_kwh[j]  [USD], with
                b_i = min(limit_i, retail), s_j = max(limit_j, feed_in) [USD/kWh]
    balance     sum_i bid_kwh[i] - sum_j offer_kwh[j] == 0  (dual suffix ``dual``)

Price: sign convention
    The clearing price is the dual of ``balance`` as HiGHS reports it through pyomo:
    pi = d(optimal welfare) / d(rhs) [USD/kWh], the welfare gained if the community
    got one more kWh from outside (rhs > 0 means bids exceed offers by rhs). It is
    >= 0 and, with clipped limits, in [feed_in, retail]: every bid with clipped limit
    > pi is filled, every offer with clipped limit < pi is filled.

Degeneracy and determinism (stated rules, not solver accidents)
    * Primal: among welfare-optimal allocations ``read_solution`` takes the one with the
      largest volume, ``V = min(D(pi), S(pi))`` with D the bid volume with clipped limit
      >= pi and S the offer volume with clipped limit <= pi (zero-surplus units at the
      price trade, as in community.py), and gives it to the book's orders in
      community.py's priority order (sorted sides, ties by participant id then input
      position). Orders tied at one clipped limit have equal objective coefficients,
      so this changes neither the LP optimum nor the dual. Trades are then formed by
      the same greedy pairing as community.py (``pay_as_bid.match_greedy``).
    * Dual: the set of optimal duals is an interval [lo, hi], lo = the highest clipped
      limit among traded offers and not-fully-filled bids, hi = the lowest among
      traded bids and not-fully-filled offers. The reported price is its midpoint
      (lo + hi) / 2 (the analogue of community.py's midpoint rule); when the dual is
      unique, lo == hi == HiGHS's dual. HiGHS's own dual (one endpoint, solver's
      choice) is checked to lie in [lo, hi] and is available as ``balance_dual``.

Resolution: HiGHS works to a feasibility tolerance of about 1e-7 [kWh, USD/kWh];
quantities and price differences below that are not resolved (use energies of at
least 1 Wh). ``read_solution`` raises RuntimeError rather than return a result that disagrees
with the LP (solver status not optimal, objective or dual outside tolerance).
Units: energy [kWh], prices [USD/kWh], money [USD].
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from typing import Any

import highspy
import numpy as np

from federates.common.lazy import LazyModule
from federates.common.messages import Order
from federates.market import fastbook
from federates.market.book import (
    Book,
    ClearingResult,
    assemble,
    book_status,
    build_book,
    match_greedy,
)

pyo = LazyModule("pyomo.environ")  # imported on first use (federates/common/lazy.py)
pyomo_opt = LazyModule("pyomo.opt")

SOLVERS = ("appsi_highs", "highs")  # tried in this order
PRICE_TOL_USD_PER_KWH = 1e-9  # comparing the float dual with exact clipped limits
CHECK_TOL = 1e-6  # LP objective / dual vs the exact allocation


def build_model(
    orders: list[Order], *, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float
) -> pyo.ConcreteModel:
    """The LP of ``orders`` (all of one interval) as a pyomo ConcreteModel.

    Variable index i / j is the position in the sorted book of ``pay_as_bid.build_book``.
    ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh] clip the limits and are
    kept on the model as Params of the same names.
    """
    book = build_book(
        orders, retail_usd_per_kwh=retail_usd_per_kwh, feed_in_usd_per_kwh=feed_in_usd_per_kwh
    )
    m = pyo.ConcreteModel(name="community_lp")
    m.retail_usd_per_kwh = pyo.Param(initialize=retail_usd_per_kwh)
    m.feed_in_usd_per_kwh = pyo.Param(initialize=feed_in_usd_per_kwh)
    m.BIDS = pyo.Set(initialize=range(len(book.bids)), ordered=True)
    m.OFFERS = pyo.Set(initialize=range(len(book.offers)), ordered=True)
    bid_q = {i: float(s.left) for i, s in enumerate(book.bids)}
    offer_q = {j: float(s.left) for j, s in enumerate(book.offers)}
    bid_p = {i: float(s.limit) for i, s in enumerate(book.bids)}
    offer_p = {j: float(s.limit) for j, s in enumerate(book.offers)}
    m.bid_kwh = pyo.Var(m.BIDS, bounds=lambda _m, i: (0.0, bid_q[i]))
    m.offer_kwh = pyo.Var(m.OFFERS, bounds=lambda _m, j: (0.0, offer_q[j]))
    m.welfare_usd = pyo.Objective(
        expr=sum(bid_p[i] * m.bid_kwh[i] for i in m.BIDS)
        - sum(offer_p[j] * m.offer_kwh[j] for j in m.OFFERS),
        sense=pyo.maximize,
    )
    m.balance = pyo.Constraint(
        expr=sum(m.bid_kwh[i] for i in m.BIDS) - sum(m.offer_kwh[j] for j in m.OFFERS) == 0
    )
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    return m


def solve(model: pyo.ConcreteModel) -> tuple[pyomo_opt.SolverStatus, pyomo_opt.TerminationCondition]:
    """Solve ``model`` with HiGHS; return (solver status, termination condition).

    The solution (primal values and the ``dual`` suffix) is loaded only when the
    termination condition is optimal; nothing is raised or hidden here: the caller
    decides what a non-optimal outcome means.
    """
    opt = None
    for name in SOLVERS:
        candidate = pyo.SolverFactory(name)
        if candidate.available(exception_flag=False):
            opt = candidate
            break
    if opt is None:
        raise RuntimeError(f"no HiGHS interface available in pyomo; tried {list(SOLVERS)}")
    results = opt.solve(model, load_solutions=False)
    status, tc = results.solver.status, results.solver.termination_condition
    if tc == pyomo_opt.TerminationCondition.optimal:
        model.solutions.load_from(results)
    return status, tc


def balance_dual(model: pyo.ConcreteModel) -> float:
    """HiGHS's dual of the balance constraint [USD/kWh] (sign convention: module doc)."""
    return float(model.dual[model.balance])


def _dual_range(book: Book) -> tuple[Fraction, Fraction]:
    """[lo, hi] of optimal duals [USD/kWh] given the allocation left in ``book``."""
    lo = [s.limit for s in book.offers if s.left < Fraction(s.order.energy_kwh)]
    lo += [b.limit for b in book.bids if b.left > 0]
    hi = [b.limit for b in book.bids if b.left < Fraction(b.order.energy_kwh)]
    hi += [s.limit for s in book.offers if s.left > 0]
    return max(lo), min(hi)


def read_solution(
    model: pyo.ConcreteModel, orders: list[Order], *, interval: int | None = None
) -> ClearingResult:
    """The ClearingResult of a solved ``model`` built from ``orders`` (rules: module doc).

    ``interval`` defaults to the first order's (0 for no orders). Status values are
    ClearingResult's; ``price_usd_per_kwh`` [USD/kWh] is None without peer trades.
    """
    if interval is None:
        interval = orders[0].interval if orders else 0
    retail = pyo.value(model.retail_usd_per_kwh)
    feed_in = pyo.value(model.feed_in_usd_per_kwh)
    book = build_book(orders, retail_usd_per_kwh=retail, feed_in_usd_per_kwh=feed_in)
    status = book_status(book)
    if status != "cleared" and status != "no_crossing":
        return assemble(interval, book, [], status, lambda _m: Fraction(0), None)
    if len(book.bids) != len(model.BIDS) or len(book.offers) != len(model.OFFERS):
        raise RuntimeError("read_solution: orders are not those the model was built from")
    if model.balance not in model.dual:
        raise RuntimeError("read_solution: the model has no solution loaded (solve it first)")

    pi = balance_dual(model)
    lp_volume = sum(pyo.value(model.bid_kwh[i]) for i in model.BIDS)
    demand = sum((b.left for b in book.bids if b.limit >= pi - PRICE_TOL_USD_PER_KWH), Fraction(0))
    supply = sum(
        (s.left for s in book.offers if s.limit <= pi + PRICE_TOL_USD_PER_KWH), Fraction(0)
    )
    volume = min(demand, supply)
    if float(volume) < lp_volume - CHECK_TOL:
        raise RuntimeError(f"LP volume {lp_volume} kWh exceeds the volume at its dual {volume}")
    matches = match_greedy(book, volume)
    clipped = sum((m.energy_kwh * (m.bid.limit - m.offer.limit) for m in matches), Fraction(0))
    objective = pyo.value(model.welfare_usd)
    if abs(float(clipped) - objective) > CHECK_TOL * (1.0 + abs(objective)):
        raise RuntimeError(f"allocation welfare {float(clipped)} USD != LP optimum {objective}")
    if not matches:
        return assemble(interval, book, [], "no_crossing", lambda _m: Fraction(0), None)
    lo, hi = _dual_range(book)
    if not (float(lo) - CHECK_TOL <= pi <= float(hi) + CHECK_TOL):
        raise RuntimeError(f"HiGHS dual {pi} outside the optimal dual range [{lo}, {hi}]")
    price = (lo + hi) / 2
    return assemble(interval, book, matches, "cleared", lambda _m: price, float(price))


# ------------------------------------------------------------- HiGHS directly


def _highs() -> highspy.Highs:
    """A silent HiGHS instance. The first one of a process prints a banner on the C
    stdout (not through Python): it is sent to /dev/null, as pyomo does, so that e.g.
    ``tecosim clear``'s JSON on stdout stays clean."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    h.setOptionValue("output_flag", False)
    return h


def solve_highs(book: fastbook.FastBook,
                start: fastbook.Walk | None = None) -> tuple[float, float, float]:
    """Solve the module docstring's LP of ``book`` with HiGHS: (balance dual [USD/kWh],
    optimal welfare [USD], traded volume [kWh] = sum of the bid columns). Columns are
    the sorted bids then the sorted offers. Raises RuntimeError unless optimal.

    HiGHS's presolve is off: on this one-row LP it costs ~20x the solve (0.9 s of 0.95 s
    at 10k orders). ``start``: a walk whose allocation gives the starting basis (filled
    orders at their upper bound, the partly filled one basic, the rest at zero). The
    greedy walk's allocation is optimal, so dual simplex only confirms it (0 iterations
    instead of a cold start's crash); HiGHS iterates as usual from any other basis, and
    no result depends on the start (the price is read from the optimal dual range)."""
    nb, no = book.n_bids, book.n_offers
    n = nb + no
    h = _highs()
    h.setOptionValue("presolve", "off")
    # the LP's arrays handed over as numpy buffers: a HighsLp's vector fields would copy
    # them element by element through Python floats (2.2 ms of 6 at 10k orders)
    passed = h.passModel(
        n, 1, n, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMaximize),
        0.0,  # offset
        np.concatenate([book.bid_limit, -book.offer_limit]),  # col_cost
        np.zeros(n), np.concatenate([book.bid_q_kwh, book.offer_q_kwh]),  # col bounds
        np.zeros(1), np.zeros(1),  # row bounds: balance == 0
        np.arange(n + 1, dtype=np.int32), np.zeros(n, dtype=np.int32),  # a_start, a_index
        np.concatenate([np.ones(nb), -np.ones(no)]),  # a_value
        np.zeros(n, dtype=np.int32))  # integrality: all continuous
    if passed == highspy.HighsStatus.kError:
        raise RuntimeError("LP clearing: HiGHS rejected the model")
    if start is not None and n:
        basis_status = highspy.HighsBasisStatus
        status = [basis_status.kLower] * n
        status[: start.bids.n_full] = [basis_status.kUpper] * start.bids.n_full
        status[nb: nb + start.offers.n_full] = [basis_status.kUpper] * start.offers.n_full
        partial_offer = start.offers.n_touched > start.offers.n_full
        status[nb + start.offers.n_full if partial_offer else min(start.bids.n_full, nb - 1)] = (
            basis_status.kBasic)
        basis = highspy.HighsBasis()
        basis.col_status = status
        basis.row_status = [basis_status.kUpper]
        basis.valid = True
        h.setBasis(basis)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"LP clearing: HiGHS {h.modelStatusToString(status)}")
    sol = h.getSolution()
    return float(sol.row_dual[0]), float(h.getInfo().objective_function_value), sum(sol.col_value[:nb])


def read_highs(interval: int, book: fastbook.FastBook, pi: float, objective: float,
               lp_volume: float, walked: fastbook.Walk | None = None) -> ClearingResult:
    """``read_solution``'s rules on fastbook's arrays: the largest welfare-optimal volume
    at the dual ``pi`` [USD/kWh], given to the orders in priority order, priced at the
    midpoint of the optimal dual range; ``objective`` [USD] and ``lp_volume`` [kWh] are
    HiGHS's, checked against the exact allocation (RuntimeError when they disagree).
    ``walked``: a walk of ``book`` already made (``solve_highs``'s start), used instead
    of walking again when it stopped at that volume (the walk is a function of it)."""
    # bid limits descend, offer limits ascend: both sets below are prefixes
    nd = int(np.searchsorted(-book.bid_limit, -(pi - PRICE_TOL_USD_PER_KWH), side="right"))
    ns = int(np.searchsorted(book.offer_limit, pi + PRICE_TOL_USD_PER_KWH, side="right"))
    demand = int(book.bid_cum[nd - 1]) if nd else 0
    supply = int(book.offer_cum[ns - 1]) if ns else 0
    volume = min(demand, supply)
    if fastbook.to_float(volume, book.e) < lp_volume - CHECK_TOL:
        raise RuntimeError(f"LP volume {lp_volume} kWh exceeds the volume at its dual "
                           f"{fastbook.to_float(volume, book.e)}")
    w = walked if walked is not None and walked.volume == volume else fastbook.walk(
        book, volume_cap=volume)
    clipped = fastbook.welfare_usd(book, w, book.bid_limit, book.offer_limit)
    if abs(clipped - objective) > CHECK_TOL * (1.0 + abs(objective)):
        raise RuntimeError(f"allocation welfare {clipped} USD != LP optimum {objective}")
    if not len(w.q):
        return fastbook.assemble(interval, book, w, "no_crossing", "uniform", None)
    b, o = w.bids, w.offers
    lo = max(book.offer_limit[: o.n_touched].max(), book.bid_limit[b.n_full:].max(initial=-np.inf))
    hi = min(book.bid_limit[: b.n_touched].min(), book.offer_limit[o.n_full:].min(initial=np.inf))
    if not (lo - CHECK_TOL <= pi <= hi + CHECK_TOL):
        raise RuntimeError(f"HiGHS dual {pi} outside the optimal dual range [{lo}, {hi}]")
    price = (Fraction(float(lo)) + Fraction(float(hi))) / 2
    return fastbook.assemble(interval, book, w, "cleared", "uniform", price)


def clear_lp(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> ClearingResult:
    """Clear one interval by the LP (rules in the module docstring), HiGHS called directly.

    Same arguments and conventions as ``community.clear_uniform_price``; energies
    [kWh], prices [USD/kWh]. Empty and one-sided books need no LP (nothing can trade
    between peers) and are returned directly. Raises RuntimeError naming the solver
    status if HiGHS does not report an optimal solution. Equal to ``clear_lp_reference``.
    """
    mine = [o for o in orders if o.interval == interval]
    book = fastbook.build(mine, retail_usd_per_kwh=retail_usd_per_kwh,
                          feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    if book is None:
        return clear_lp_reference(mine, interval=interval, retail_usd_per_kwh=retail_usd_per_kwh,
                                  feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    status = book.status()
    if status in ("empty", "one_sided"):
        return fastbook.assemble(interval, book, fastbook.walk(book), status, "uniform", None)
    w = fastbook.walk(book)
    try:
        pi, objective, lp_volume = solve_highs(book, start=w)
    except RuntimeError as exc:
        raise RuntimeError(f"LP clearing of interval {interval}: {exc}") from None
    return read_highs(interval, book, pi, objective, lp_volume, walked=w)


def clear_lp_reference(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> ClearingResult:
    """``clear_lp`` through pyomo (``build_model`` -> ``solve`` -> ``read_solution``) and
    book.py's exact Fraction walk."""
    mine = [o for o in orders if o.interval == interval]
    tariffs: dict[str, Any] = {
        "retail_usd_per_kwh": retail_usd_per_kwh,
        "feed_in_usd_per_kwh": feed_in_usd_per_kwh,
    }
    book = build_book(mine, **tariffs)
    status = book_status(book)
    if status in ("empty", "one_sided"):
        return assemble(interval, book, [], status, lambda _m: Fraction(0), None)
    model = build_model(mine, **tariffs)
    solver_status, tc = solve(model)
    if tc != pyomo_opt.TerminationCondition.optimal:
        raise RuntimeError(f"LP clearing of interval {interval}: {solver_status}, {tc}")
    return read_solution(model, mine, interval=interval)
