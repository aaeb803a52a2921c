"""The sorted-book clearing of ``book.py``, vectorised and still exact.

``book.py`` walks the book one step at a time in ``fractions.Fraction`` arithmetic: exact,
and the reference, but ~30 us per order. This module computes the same walk on whole
arrays and gives a ``ClearingResult`` equal to ``book.assemble``'s, bit for bit:

* Energies are exact integers. Every finite float is ``M * 2**e`` with an integer
  mantissa ``M``; with ``E`` the smallest ``e`` of the book, every energy is the Python
  int ``M << (e - E)`` in units of ``2**E`` kWh (numpy object arrays of ints; sums and
  differences stay exact whatever their size). Converting back divides by ``2**-E``
  once, correctly rounded, as ``float(Fraction)`` does.
* The greedy walk (community.py rule 4) is the merge of the two sides' cumulative
  volumes: bid ``i`` covers (CB[i-1], CB[i]] of the traded volume, offer ``j`` covers
  (CS[j-1], CS[j]]; the walk trades up to ``V = max_i min(CB[i], S_i)`` with ``S_i`` the
  volume of the offers whose limit is <= bid ``i``'s (limits are monotone along the
  sorted sides, so the walk's stop is this crossing). Its steps are the segments between
  the distinct breakpoints below ``V``; a step's bid (offer) is the number of bid (offer)
  breakpoints at or below its start. Ties (a bid and an offer exhausted at the same
  volume) are one breakpoint, as the walk advances both.
* Limits [USD/kWh] are floats: clipping (min / max with a tariff) and comparing floats
  is exact. A step's midpoint price ``(bid limit + offer limit) / 2`` is
  ``0.5 * a + 0.5 * b`` (the halvings are exact, the one addition rounds correctly);
  steps merge into one Trade by (seller, buyer, exact midpoint), the exact sum kept as
  the pair (rounded sum, its rounding error) of an error-free addition.
* Welfare [USD] is an exact integer sum of energy x price difference products.

Books of at most ``SMALL_BOOK`` orders (a default day's ~40) are cleared by ``clear_small``:
the same walk and rules on Python lists, where numpy's fixed cost per call would be most
of the time.

Books this cannot represent exactly fall back to ``book.py`` (``build`` returns None):
energies or prices that are not floats (ints beyond 2**53, Fractions, ...), participant
ids that are not strings, and prices so small or large that halving them is inexact (|p| < 2**-1020
or > 2**1020). Tests compare both paths on random books (tests/unit/test_fastbook.py).
Units: energy [kWh], prices [USD/kWh], money [USD].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from fractions import Fraction
from itertools import accumulate, repeat
from math import frexp, ldexp
from typing import Literal

import numpy as np

from federates.common.messages import GRID, Confirmation, Order, Trade
from federates.common.rows import Rows, Same
from federates.market.book import ClearingResult, ClearingStatus

Pricing = Literal["uniform", "midpoint"]

_TINY_USD_PER_KWH = 2.0**-1020  # below this, halving a price may round (subnormal)
_HUGE_USD_PER_KWH = 2.0**1020
_MIN_NORMAL = 2.2250738585072014e-308


# ------------------------------------------------------------------ exact numbers


def exact_ints(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(``N``, ``E``) with ``x == N * 2**E`` exactly: ``N`` an object array of Python ints.

    ``x``: finite float64 values. ``E`` is the smallest binary exponent of any element's
    last mantissa bit (0 for an empty or all-zero array)."""
    if x.size == 0:
        return np.zeros(0, dtype=object), 0
    m, ex = np.frexp(x)
    mant = np.ldexp(m, 53).astype(np.int64)  # exact: |m| < 1, 53-bit mantissa
    e = ex.astype(np.int64) - 53
    nz = mant != 0
    if not nz.any():
        return np.zeros(x.size, dtype=object), 0
    low = int(e[nz].min())
    shift = np.where(nz, e - low, 0)
    return mant.astype(object) << shift.astype(object), low


def to_floats(n: np.ndarray, e: int) -> np.ndarray:
    """``n * 2**e`` as float64, each correctly rounded (as ``float(Fraction)``)."""
    if n.size == 0:
        return np.zeros(0)
    try:
        f = np.ldexp(n.astype(np.float64), e)  # int -> float rounds once; ldexp is exact ...
    except OverflowError:
        f = None
    if f is not None:
        bad = (f != 0) & ~(np.abs(f) >= _MIN_NORMAL)  # ... unless the result is subnormal
        if not bad.any():
            return f
        out = f.copy()
        for i in np.nonzero(bad)[0]:
            out[i] = to_float(int(n[i]), e)
        return out
    return np.array([to_float(int(v), e) for v in n], dtype=np.float64)


def to_float(n: int, e: int) -> float:
    """``n * 2**e`` correctly rounded (raises OverflowError like ``float(Fraction)``)."""
    return n / (1 << -e) if e < 0 else float(n << e)


def _ints_at(n: np.ndarray, e_from: int, e_to: int) -> np.ndarray:
    """The integers ``n`` (units of 2**e_from) in units of 2**e_to (e_to <= e_from)."""
    return n if e_from == e_to else n << (e_from - e_to)


# ---------------------------------------------------------------- the result's rows
# A clearing's trades and confirmations are kept as columns (``federates.common.rows``:
# ``Rows``), their objects made once where someone reads them one by one; 10k trades and
# 10k confirmations cost ~10 ms as objects, most of a 10k-order clearing.
assert [f.name for f in fields(Trade)] == [
    "interval", "seller", "buyer", "energy_kwh", "price_usd_per_kwh", "fee_usd", "trade_id"]
assert [f.name for f in fields(Confirmation)] == [
    "participant", "interval", "scheduled_kwh", "peer_bought_kwh", "peer_sold_kwh",
    "grid_bought_kwh", "grid_sold_kwh", "price_usd_per_kwh", "market_price_usd_per_kwh"]


def make_trades(interval: int, sellers: list[str], buyers: list[str], energy_kwh: list[float],
                price_usd_per_kwh: list[float]) -> list[Trade]:
    """``[Trade(interval, s, b, e, p) ...]`` (fee 0, not numbered) from columns of equal
    length, as ``Rows``."""
    return Rows(Trade, len(sellers), {
        "interval": Same(interval), "seller": sellers, "buyer": buyers, "energy_kwh": energy_kwh,
        "price_usd_per_kwh": price_usd_per_kwh, "fee_usd": Same(0.0), "trade_id": Same("")})


def make_confirmations(participants: list[str], interval: int, scheduled_kwh: list[float],
                       peer_bought_kwh: list[float], peer_sold_kwh: list[float],
                       grid_bought_kwh: list[float], grid_sold_kwh: list[float],
                       price_usd_per_kwh: float | None) -> list[Confirmation]:
    """``[Confirmation(p, interval, ...) ...]`` from columns of equal length; the market
    price None (set by the role, prices.py); as ``Rows``."""
    return Rows(Confirmation, len(participants), {
        "participant": participants, "interval": Same(interval), "scheduled_kwh": scheduled_kwh,
        "peer_bought_kwh": peer_bought_kwh, "peer_sold_kwh": peer_sold_kwh,
        "grid_bought_kwh": grid_bought_kwh, "grid_sold_kwh": grid_sold_kwh,
        "price_usd_per_kwh": Same(price_usd_per_kwh), "market_price_usd_per_kwh": Same(None)})


# ------------------------------------------------------------------------ the book


@dataclass
class FastBook:
    """One interval's sorted book as arrays (``book.Book``'s content).

    Bids by limit descending, offers ascending, ties by participant id then input
    position. ``*_pid``: index into ``ordered_by`` (every participant with an order,
    sorted); ``*_limit`` [USD/kWh] the tariff-clipped limits, ``*_price`` [USD/kWh] the
    submitted ones; ``*_q`` [2**E kWh] exact energies (``*_q_kwh`` the same as floats) and
    ``*_cum`` their running sums.
    """

    ordered_by: list[str]
    bid_pid: np.ndarray
    offer_pid: np.ndarray
    bid_limit: np.ndarray
    offer_limit: np.ndarray
    bid_price: np.ndarray
    offer_price: np.ndarray
    bid_q: np.ndarray
    offer_q: np.ndarray
    bid_q_kwh: np.ndarray
    offer_q_kwh: np.ndarray
    bid_cum: np.ndarray
    offer_cum: np.ndarray
    e: int
    retail: float
    feed_in: float

    @property
    def n_bids(self) -> int:
        return len(self.bid_q)

    @property
    def n_offers(self) -> int:
        return len(self.offer_q)

    def status(self) -> ClearingStatus:
        """As ``book.book_status``."""
        if not self.n_bids and not self.n_offers:
            return "empty"
        if not self.n_bids or not self.n_offers:
            return "one_sided"
        if self.bid_limit[0] < self.offer_limit[0]:
            return "no_crossing"
        return "cleared"


_SIDE_CODE = {"buy": 1, "sell": 2}  # anything else: 0, not in the book


def _ranked(part: list[str]) -> tuple[list[str], np.ndarray]:
    """(the distinct ids of ``part`` sorted, each element's index into them).

    numpy sorts fixed-width strings by code point, as Python sorts str, in about half
    the time of ``sorted(set(part))`` and a rank dict (ASCII ids of one length go in as
    bytes: one encode). It pads with NUL, so ids holding a NUL are sorted by Python, as
    are fewer than 256 ids (numpy's fixed cost)."""
    joined = "".join(part)
    if len(part) < 256 or "\x00" in joined:  # below ~250 ids Python is quicker
        ordered_by = sorted(set(part))
        rank = {name: i for i, name in enumerate(ordered_by)}
        return ordered_by, np.fromiter(map(rank.__getitem__, part), dtype=np.int64,
                                       count=len(part))
    if joined.isascii() and part[0] and len(set(map(len, part))) == 1:
        ids = np.frombuffer(joined.encode("ascii"), dtype=f"S{len(part[0])}")
    else:
        ids = np.array(part)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    first = np.empty(len(ids), dtype=bool)  # first of its id in sorted order
    first[0] = True
    np.not_equal(ids[1:], ids[:-1], out=first[1:])
    pid = np.empty(len(ids), dtype=np.int64)
    pid[order] = np.cumsum(first) - 1
    return list(map(part.__getitem__, order[first].tolist())), pid


def build(orders: list[Order], *, retail_usd_per_kwh: float,
          feed_in_usd_per_kwh: float) -> FastBook | None:
    """The book of ``orders`` (all of one interval) as ``book.build_book`` sorts and clips
    it; None when this module cannot represent it exactly (module docstring)."""
    part = [o.participant for o in orders]
    side = [o.side for o in orders]
    q_list = [o.energy_kwh for o in orders]
    p_list = [o.price_usd_per_kwh for o in orders]
    kinds = set(map(type, q_list))
    kinds.update(map(type, p_list))
    if kinds - {float, int, np.float64}:
        return None
    if int in kinds and any(type(x) is int and abs(x) >= 2**53 for x in (*q_list, *p_list)):
        return None  # not exactly a float64
    if set(map(type, part)) - {str}:
        return None
    if any(float(t) != t for t in (retail_usd_per_kwh, feed_in_usd_per_kwh)):
        return None
    retail_usd_per_kwh, feed_in_usd_per_kwh = float(retail_usd_per_kwh), float(feed_in_usd_per_kwh)
    n = len(orders)
    try:  # book.valid_order's side test, ``side in ("buy", "sell")``, as a code per order
        code = np.fromiter(map(_SIDE_CODE.get, side, repeat(0)), dtype=np.int8, count=n)
    except TypeError:  # an unhashable side
        return None
    q = np.array(q_list, dtype=np.float64) if n else np.zeros(0)
    p = np.array(p_list, dtype=np.float64) if n else np.zeros(0)
    is_buy, is_sell = code == 1, code == 2
    valid = np.isfinite(q) & (q > 0) & np.isfinite(p) & (code != 0)
    ap = np.abs(p[valid])
    if ((ap != 0) & ((ap < _TINY_USD_PER_KWH) | (ap > _HUGE_USD_PER_KWH))).any():
        return None
    for t in (retail_usd_per_kwh, feed_in_usd_per_kwh):
        if not math.isfinite(t) or (t != 0 and not _TINY_USD_PER_KWH <= abs(t) <= _HUGE_USD_PER_KWH):
            return None
    ordered_by, pid = _ranked(part)
    pos = np.arange(n)
    b = pos[valid & is_buy]
    s = pos[valid & is_sell]
    b = b[np.lexsort((b, pid[b], -p[b]))]
    s = s[np.lexsort((s, pid[s], p[s]))]
    qn, e = exact_ints(q[np.concatenate([b, s])])
    bq, sq = qn[: len(b)], qn[len(b):]
    return FastBook(
        ordered_by=ordered_by,
        bid_pid=pid[b], offer_pid=pid[s],
        bid_limit=np.minimum(p[b], retail_usd_per_kwh) + 0.0,  # + 0.0: no -0.0 limits
        offer_limit=np.maximum(p[s], feed_in_usd_per_kwh) + 0.0,
        bid_price=p[b], offer_price=p[s],
        bid_q=bq, offer_q=sq, bid_q_kwh=q[b], offer_q_kwh=q[s],
        bid_cum=np.cumsum(bq) if len(b) else bq, offer_cum=np.cumsum(sq) if len(s) else sq,
        e=e, retail=retail_usd_per_kwh, feed_in=feed_in_usd_per_kwh,
    )


# ------------------------------------------------------------------------ the walk


@dataclass
class Side:
    """One sorted side after the walk: ``left`` [2**E kWh] what each order has left (to
    the grid), ``left_kwh`` / ``filled_kwh`` [kWh] the same and the traded part as floats
    (each correctly rounded), ``n_full`` orders 0..n_full-1 fully traded, ``n_touched``
    orders 0..n_touched-1 traded at all."""

    left: np.ndarray
    left_kwh: np.ndarray
    filled_kwh: np.ndarray
    n_full: int
    n_touched: int


def _side(q: np.ndarray, q_kwh: np.ndarray, cum: np.ndarray, e: int, volume: int) -> Side:
    """What ``volume`` [2**E kWh] traded along one sorted side leaves of each order."""
    left, left_kwh, filled_kwh = q.copy(), q_kwh.copy(), np.zeros(len(q))
    if not len(q) or volume <= 0:
        return Side(left, left_kwh, filled_kwh, 0, 0)
    k = int(np.searchsorted(cum, volume, side="right"))  # orders 0..k-1: cum <= volume
    left[:k] = 0
    left_kwh[:k] = 0.0
    filled_kwh[:k] = q_kwh[:k]
    touched = k
    if k < len(q):
        filled = volume - (cum[k - 1] if k else 0)
        if filled > 0:
            left[k] = q[k] - filled
            left_kwh[k] = to_float(int(left[k]), e)
            filled_kwh[k] = to_float(int(filled), e)
            touched = k + 1
    return Side(left, left_kwh, filled_kwh, k, touched)


@dataclass
class Walk:
    """The greedy walk's steps (``book.Match`` list as arrays) and what it leaves.

    ``bid`` / ``offer``: each step's position in the sorted sides; ``q`` [2**E kWh] its
    exact energy; ``volume`` [2**E kWh] the total; ``bids`` / ``offers`` the sides after."""

    bid: np.ndarray
    offer: np.ndarray
    q: np.ndarray
    volume: int
    bids: Side
    offers: Side


def crossing_volume(book: FastBook) -> int:
    """The volume [2**E kWh] where the walk stops: ``max_i min(CB[i], S_i)`` (module doc)."""
    if book.status() != "cleared":
        return 0
    c = np.searchsorted(book.offer_limit, book.bid_limit, side="right")
    supply = np.where(c > 0, book.offer_cum[np.maximum(c - 1, 0)], 0)
    return int(np.minimum(book.bid_cum, supply).max())


def walk(book: FastBook, volume_cap: int | None = None) -> Walk:
    """``book.match_greedy`` on the arrays: the steps up to the crossing volume, or up to
    ``volume_cap`` [2**E kWh] if that is smaller."""
    v = crossing_volume(book)
    if volume_cap is not None:
        v = max(min(v, volume_cap), 0)
    bids = _side(book.bid_q, book.bid_q_kwh, book.bid_cum, book.e, v)
    offers = _side(book.offer_q, book.offer_q_kwh, book.offer_cum, book.e, v)
    empty = np.zeros(0, dtype=np.int64)
    if v <= 0:
        return Walk(empty, empty, np.zeros(0, dtype=object), 0, bids, offers)
    kb = int(np.searchsorted(book.bid_cum, v, side="left"))  # breakpoints strictly below v
    ks = int(np.searchsorted(book.offer_cum, v, side="left"))
    vals = np.concatenate([book.bid_cum[:kb], book.offer_cum[:ks]])
    is_bid = np.concatenate([np.ones(kb, dtype=np.int64), np.zeros(ks, dtype=np.int64)])
    if len(vals):
        order = np.argsort(vals, kind="stable")
        vals, is_bid = vals[order], is_bid[order]
        new = np.ones(len(vals), dtype=bool)
        new[1:] = (vals[1:] != vals[:-1]).astype(bool)
        last = np.append(np.nonzero(new)[0][1:] - 1, len(vals) - 1)
        n_bid = np.cumsum(is_bid)[last]
        n_off = np.cumsum(1 - is_bid)[last]
        uniq = vals[new]
    else:
        n_bid = n_off = empty
        uniq = np.zeros(0, dtype=object)
    bid = np.concatenate([[0], n_bid]).astype(np.int64)
    offer = np.concatenate([[0], n_off]).astype(np.int64)
    right = np.append(uniq, v).astype(object)
    left = np.concatenate([np.zeros(1, dtype=object), uniq]).astype(object)
    return Walk(bid, offer, right - left, v, bids, offers)


# ------------------------------------------------------------------------- result


def _group_sum(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=object)
    if len(values):
        np.add.at(out, groups, values)
    return out


def _scatter(values: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[at] = values
    return out


def _one_each(pid: np.ndarray) -> bool:
    return not len(pid) or int(np.bincount(pid).max()) <= 1


def welfare_usd(book: FastBook, w: Walk, bid_price: np.ndarray | None = None,
                offer_price: np.ndarray | None = None) -> float:
    """Sum over traded energy of (buyer's price - seller's price) [USD], exact, rounded
    once (per order: filled energy x price). Prices [USD/kWh] per sorted order default to
    the submitted limits (the ClearingResult's welfare); pass the clipped ones for the
    welfare the LP maximises."""
    nb, ns = w.bids.n_touched, w.offers.n_touched
    if not nb:
        return 0.0
    bp = book.bid_price if bid_price is None else bid_price
    op = book.offer_price if offer_price is None else offer_price
    pn, pe = exact_ints(np.concatenate([bp[:nb], op[:ns]]))
    filled_b = book.bid_q[:nb] - w.bids.left[:nb]
    filled_s = book.offer_q[:ns] - w.offers.left[:ns]
    total = int((filled_b * pn[:nb]).sum()) - int((filled_s * pn[nb:]).sum())
    return to_float(total, pe + book.e)


def assemble(interval: int, book: FastBook, w: Walk, status: ClearingStatus,
             pricing: Pricing, uniform_price: Fraction | None = None) -> ClearingResult:
    """``book.assemble`` on the arrays. ``pricing="uniform"``: every step at
    ``uniform_price`` [USD/kWh] (None without peer trades); ``"midpoint"``: each step at
    the midpoint of its own clipped limits, the result's price None."""
    names = book.ordered_by
    n_p = len(names)
    name_of = np.empty(n_p, dtype=object)  # participant index -> id, gathered in C
    name_of[:] = names
    e = book.e
    seller = book.offer_pid[w.offer]
    buyer = book.bid_pid[w.bid]
    n_steps = len(w.q)
    sel = buy = np.zeros(0, dtype=np.int64)
    energy_l: list[float] = []
    price_l: list[float] = []
    if n_steps:
        if pricing == "uniform":
            assert uniform_price is not None
            price_f = np.full(n_steps, float(uniform_price))
        else:
            a, b = book.bid_limit[w.bid], book.offer_limit[w.offer]
            price_f = 0.5 * a + 0.5 * b + 0.0
        # steps merge by (seller, buyer, price); they can only where a pair repeats
        uniq, first, inv = np.unique(seller * n_p + buyer, return_index=True,
                                     return_inverse=True)
        if pricing != "uniform" and len(uniq) < n_steps:
            hi = a + b  # exact sum = hi + lo (error-free addition)
            bb = hi - a
            lo = (a - (hi - bb)) + (b - bb)
            keys = np.rec.fromarrays([seller, buyer, hi, lo])
            uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        inv = np.asarray(inv).reshape(-1)
        if len(uniq) == n_steps:  # no two steps share a pair (and price): no merging
            energy = to_floats(w.q, e)
            sel, buy, price_l = seller, buyer, price_f.tolist()
        else:
            rank = np.empty(len(first), dtype=np.int64)
            rank[np.argsort(first, kind="stable")] = np.arange(len(first))
            energy = to_floats(_group_sum(w.q, rank[inv], len(first)), e)
            reps = np.sort(first)
            sel, buy, price_l = seller[reps], buyer[reps], price_f[reps].tolist()
        energy_l = energy.tolist()

    if _one_each(book.bid_pid) and _one_each(book.offer_pid):
        # at most one bid and one offer per participant: its bid is filled + left, both
        # already correctly rounded, and bought - sold = bid - offer rounds once
        pb_f = _scatter(w.bids.filled_kwh, book.bid_pid, n_p)
        gb_f = _scatter(w.bids.left_kwh, book.bid_pid, n_p)
        ps_f = _scatter(w.offers.filled_kwh, book.offer_pid, n_p)
        gs_f = _scatter(w.offers.left_kwh, book.offer_pid, n_p)
        sched_f = (_scatter(book.bid_q_kwh, book.bid_pid, n_p)
                   - _scatter(book.offer_q_kwh, book.offer_pid, n_p))
    else:
        peer_bought = _group_sum(w.q, buyer, n_p)
        peer_sold = _group_sum(w.q, seller, n_p)
        grid_bought = _group_sum(w.bids.left, book.bid_pid, n_p)
        grid_sold = _group_sum(w.offers.left, book.offer_pid, n_p)
        pb_f, ps_f = to_floats(peer_bought, e), to_floats(peer_sold, e)
        gb_f, gs_f = to_floats(grid_bought, e), to_floats(grid_sold, e)
        sched_f = to_floats(peer_bought + grid_bought - peer_sold - grid_sold, e)
    # the trades: peer trades in matching order, grid purchases, grid sales (by id)
    gb_i, gs_i = np.flatnonzero(gb_f > 0), np.flatnonzero(gs_f > 0)
    n_gb, n_gs = len(gb_i), len(gs_i)
    sellers = name_of[sel].tolist() + [GRID] * n_gb + name_of[gs_i].tolist()
    buyers = name_of[buy].tolist() + name_of[gb_i].tolist() + [GRID] * n_gs
    energy_l += gb_f[gb_i].tolist() + gs_f[gs_i].tolist()
    price_l += [book.retail] * n_gb + [book.feed_in] * n_gs

    price = None if pricing != "uniform" or uniform_price is None else float(uniform_price)
    trades = make_trades(interval, sellers, buyers, energy_l, price_l)
    confirmations = make_confirmations(names, interval, (sched_f + 0.0).tolist(), pb_f.tolist(),
                                       ps_f.tolist(), gb_f.tolist(), gs_f.tolist(), price)
    total_bid = int(book.bid_cum[-1]) if book.n_bids else 0
    total_offer = int(book.offer_cum[-1]) if book.n_offers else 0
    return ClearingResult(
        interval=interval,
        status=status,
        price_usd_per_kwh=price,
        trades=trades,
        confirmations=confirmations,
        traded_kwh=to_float(w.volume, e),
        unmatched_buy_kwh=to_float(total_bid - w.volume, e),
        unmatched_sell_kwh=to_float(total_offer - w.volume, e),
        welfare_usd=welfare_usd(book, w),
        n_bids=book.n_bids,
        n_offers=book.n_offers,
    )


def uniform_price(book: FastBook, w: Walk) -> Fraction | None:
    """Rule 5: the midpoint of the last step's bid and offer limits (None without steps)."""
    if not len(w.q):
        return None
    return (Fraction(float(book.bid_limit[w.bid[-1]])) + Fraction(float(book.offer_limit[w.offer[-1]]))) / 2


# ------------------------------------------------------------------- small books
# A default-day book (~40 orders) costs the arrays above ~0.35 ms, nearly all of it
# numpy's fixed cost per call (~150 calls on arrays of a few dozen). ``clear_small``
# makes the same walk on Python lists, with the same exact integers (energies in units
# of the smallest energy's last mantissa bit, ``_scaled``: another unit than ``build``'s,
# the same numbers, so every float made from them is the same) and the same rules, in
# about a third of the time (38 orders: 0.35 -> 0.12 ms); from ~130 orders on the
# arrays are quicker (``SMALL_BOOK`` leaves a margin).
# Tests compare it with the arrays and with book.py (tests/unit/test_market_fastbook.py).

#: books of at most this many orders are cleared on lists (``clear_small``)
SMALL_BOOK = 100


def _scaled(xs: list[float]) -> tuple[list[int], int]:
    """(``N``, ``E``) with ``xs[i] == N[i] * 2**E`` exactly (finite floats).

    ``E`` is the last mantissa bit of the smallest nonzero ``|x|``: every other ``x`` is
    a multiple of it (its exponent is no smaller), so ``ldexp(x, -E)`` is an exact
    integer, made in C (a third of the time of ``as_integer_ratio`` and shifts). Where
    that overflows (a spread of ~970 binades) the exact ratios give a finer unit."""
    tiny = min(map(abs, xs), default=0.0)
    if tiny == 0.0:
        tiny = min((abs(x) for x in xs if x), default=0.0)
        if tiny == 0.0:
            return [0] * len(xs), 0
    k = 53 - frexp(tiny)[1]
    try:
        return list(map(int, map(ldexp, xs, repeat(k)))), -k
    except OverflowError:
        ratios = [x.as_integer_ratio() for x in xs]
        k = max(d for _, d in ratios).bit_length() - 1
        return [n << (k - d.bit_length() + 1) for n, d in ratios], -k


def _floats(ns: list[int], e: int) -> list[float]:
    """``[to_float(n, e) for n in ns]``: each ``n * 2**e`` correctly rounded. ``float(n)``
    rounds once and ``ldexp`` is then exact, unless a result could be subnormal (``e``
    below the normal range) or ``n`` is beyond a float: those take ``to_float``."""
    if e >= -1022:
        try:
            return list(map(ldexp, map(float, ns), repeat(e)))
        except OverflowError:
            pass
    return [to_float(n, e) for n in ns]


def _filled(cum: list[int], volume: int) -> int:
    """How many orders of a side with running sums ``cum`` a traded ``volume`` fills."""
    lo, hi = 0, len(cum)
    while lo < hi:  # bisect_right
        mid = (lo + hi) // 2
        if cum[mid] <= volume:
            lo = mid + 1
        else:
            hi = mid
    return lo


def clear_small(orders: list[Order], *, interval: int, retail_usd_per_kwh: float,
                feed_in_usd_per_kwh: float, pricing: Pricing) -> ClearingResult | None:
    """``assemble(interval, build(orders), walk(...), ...)`` with ``pricing`` ("uniform":
    community.py's rule 5 price; "midpoint": pay-as-bid's per-step price) on lists, for
    the orders of one interval; None (use the arrays) for more than ``SMALL_BOOK``
    orders or anything but float energies and prices, str ids and sides and float
    tariffs in ``build``'s range."""
    n = len(orders)
    if n > SMALL_BOOK:
        return None
    retail, feed_in = retail_usd_per_kwh, feed_in_usd_per_kwh
    if type(retail) is not float or type(feed_in) is not float:
        return None
    for t in (retail, feed_in):
        if not math.isfinite(t) or (t != 0 and not _TINY_USD_PER_KWH <= abs(t) <= _HUGE_USD_PER_KWH):
            return None
    part, bids, offers = [], [], []
    isfinite, inf, tiny, huge = math.isfinite, math.inf, _TINY_USD_PER_KWH, _HUGE_USD_PER_KWH
    for pos, o in enumerate(orders):
        q, p, s, who = o.energy_kwh, o.price_usd_per_kwh, o.side, o.participant
        if type(q) is not float or type(p) is not float or type(who) is not str or type(s) is not str:
            return None
        part.append(who)
        if not (q > 0 and q != inf and isfinite(p)):
            continue  # not in the book (book.valid_order)
        # sorted by price (bids descending), participant id, position
        if s == "buy":
            bids.append((-p, who, pos, q, p))
        elif s == "sell":
            offers.append((p, who, pos, q, p))
        else:
            continue  # not in the book
        if p and not tiny <= abs(p) <= huge:
            return None
    bids.sort()
    offers.sort()
    names = sorted(set(part))
    n_b, n_s = len(bids), len(offers)
    qn, e = _scaled([b[3] for b in bids] + [s[3] for s in offers])
    bq, sq = qn[:n_b], qn[n_b:]
    b_lim = [min(b[4], retail) + 0.0 for b in bids]
    s_lim = [max(s[4], feed_in) + 0.0 for s in offers]
    b_cum, s_cum = list(accumulate(bq)), list(accumulate(sq))
    if not n_b and not n_s:
        status: ClearingStatus = "empty"
    elif not n_b or not n_s:
        status = "one_sided"
    elif b_lim[0] < s_lim[0]:
        status = "no_crossing"
    else:
        status = "cleared"
    volume = 0
    if status == "cleared":  # max over bids of min(bids' volume, offers' volume at or below its limit)
        j = 0
        for i in range(n_b - 1, -1, -1):  # bid limits ascending
            while j < n_s and s_lim[j] <= b_lim[i]:
                j += 1
            v = b_cum[i] if j and b_cum[i] < s_cum[j - 1] else (s_cum[j - 1] if j else 0)
            if v > volume:
                volume = v
    # the walk's steps: between the distinct breakpoints below the volume
    steps: list[tuple[int, int, int]] = []  # (bid, offer, energy [2**E kWh])
    if volume > 0:
        i = j = 0
        at = 0
        while at < volume:
            end = min(b_cum[i], s_cum[j], volume)
            steps.append((i, j, end - at))
            at = end
            if b_cum[i] == end:
                i += 1
            if j < n_s and s_cum[j] == end:
                j += 1
    # what each order has left (to the grid) [2**E kWh]
    nb_full, ns_full = _filled(b_cum, volume), _filled(s_cum, volume)
    b_left = [0] * nb_full + bq[nb_full:]
    s_left = [0] * ns_full + sq[ns_full:]
    if nb_full < n_b:
        b_left[nb_full] = b_cum[nb_full] - volume if volume > 0 else bq[nb_full]
    if ns_full < n_s:
        s_left[ns_full] = s_cum[ns_full] - volume if volume > 0 else sq[ns_full]
    # the peer trades: steps merged by (seller, buyer[, exact price sum]), first seen first
    groups: dict[tuple, list] = {}
    for bi, si, q in steps:
        seller, buyer = offers[si][1], bids[bi][1]
        if pricing == "uniform":
            key: tuple = (seller, buyer)
            price = 0.0
        else:
            a, b = b_lim[bi], s_lim[si]
            hi = a + b  # the exact sum a + b = hi + lo (error-free addition)
            bb = hi - a
            key = (seller, buyer, hi, (a - (hi - bb)) + (b - bb))
            price = 0.5 * a + 0.5 * b + 0.0
        g = groups.get(key)
        if g is None:
            groups[key] = [seller, buyer, q, price]
        else:
            g[2] += q
    uniform = None
    if pricing == "uniform" and steps:  # (a + b) / 2 rounded once, as the Fraction of book.py
        a, b = b_lim[steps[-1][0]], s_lim[steps[-1][1]]
        uniform = 0.5 * a + 0.5 * b + 0.0  # the halvings are exact (limits in build's range)
    # each participant's exact totals: peer bought, peer sold, grid bought, grid sold
    at = {p: i for i, p in enumerate(names)}
    b_at, s_at = [at[b[1]] for b in bids], [at[s[1]] for s in offers]
    pb_n, ps_n, gb_n, gs_n = [0] * len(names), [0] * len(names), [0] * len(names), [0] * len(names)
    for bi, si, q in steps:
        pb_n[b_at[bi]] += q
        ps_n[s_at[si]] += q
    for i, left in zip(b_at, b_left, strict=True):
        gb_n[i] += left
    for i, left in zip(s_at, s_left, strict=True):
        gs_n[i] += left
    groups_l = list(groups.values())
    sellers = [g[0] for g in groups_l]
    buyers = [g[1] for g in groups_l]
    energy = _floats([g[2] for g in groups_l], e)
    prices = [uniform] * len(groups_l) if pricing == "uniform" else [g[3] for g in groups_l]
    pb, ps, gb, gs = _floats(pb_n, e), _floats(ps_n, e), _floats(gb_n, e), _floats(gs_n, e)
    # the unmatched energy with the utility: purchases at retail, then sales at feed-in
    for left_kwh, buy, price_usd in ((gb, True, retail), (gs, False, feed_in)):
        for p, x in zip(names, left_kwh, strict=True):
            if x > 0:
                sellers.append(GRID if buy else p)
                buyers.append(p if buy else GRID)
                energy.append(x)
                prices.append(price_usd)
    sched = _floats([a + c - b - d for a, b, c, d in zip(pb_n, ps_n, gb_n, gs_n, strict=True)], e)
    # welfare: filled energy x submitted price, exact, rounded once
    nb_touched = nb_full + (nb_full < n_b and volume > 0 and b_left[nb_full] < bq[nb_full])
    ns_touched = ns_full + (ns_full < n_s and volume > 0 and s_left[ns_full] < sq[ns_full])
    welfare = 0.0
    if nb_touched:
        pn, pe = _scaled([b[4] for b in bids[:nb_touched]] + [s[4] for s in offers[:ns_touched]])
        w = sum((q - left) * x for q, left, x in zip(bq, b_left, pn[:nb_touched], strict=False))
        w -= sum((q - left) * x for q, left, x in zip(sq, s_left, pn[nb_touched:], strict=False))
        welfare = to_float(w, pe + e)
    price = uniform if pricing == "uniform" else None
    trades = make_trades(interval, sellers, buyers, energy, prices)
    confirmations = make_confirmations(names, interval, sched, pb, ps, gb, gs, price)
    return ClearingResult(
        interval=interval, status=status, price_usd_per_kwh=price, trades=trades,
        confirmations=confirmations, traded_kwh=to_float(volume, e),
        unmatched_buy_kwh=to_float((b_cum[-1] if n_b else 0) - volume, e),
        unmatched_sell_kwh=to_float((s_cum[-1] if n_s else 0) - volume, e),
        welfare_usd=welfare, n_bids=n_b, n_offers=n_s,
    )
