"""The order book every clearing mechanism shares, and the result they all return.

``build_book`` turns orders into the sorted, tariff-clipped book (community.py rules
1-3), ``book_status`` names an empty / one-sided / non-crossing book, ``match_greedy``
walks the sorted sides together (rule 4), and ``assemble`` turns matched steps into a
``ClearingResult`` with the grid backstop (rule 7) and a pricing rule passed in. The
uniform-price auction, pay-as-bid, the community LP and the hybrid market call these
instead of keeping copies. Quantities are exact rationals (``fractions.Fraction``)
until ``assemble`` converts them once. Units: energy [kWh], prices [USD/kWh], money [USD].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from federates.common.messages import GRID, Confirmation, Order, Trade

ClearingStatus = Literal["cleared", "no_crossing", "empty", "one_sided"]


@dataclass(frozen=True)
class ClearingResult:
    """The outcome of clearing one interval.

    ``status``: "cleared" (some peer trade), "no_crossing" (both sides present, the
    best bid is below the best offer), "one_sided" (only bids or only offers), "empty"
    (no order with positive energy). ``price_usd_per_kwh`` [USD/kWh] is None when no
    peer trade happened. ``trades`` holds the peer trades (in matching order) then the
    grid purchases then the grid sales (each by participant id). ``confirmations``:
    one per participant that ordered for the interval, by participant id.
    ``traded_kwh`` [kWh] is peer-to-peer only; ``unmatched_buy_kwh`` /
    ``unmatched_sell_kwh`` [kWh] went to / came from the grid. ``welfare_usd`` [USD] is
    the sum over peer-traded energy of (buyer's submitted limit - seller's submitted
    limit). ``n_bids`` / ``n_offers`` count the orders in the book.
    """

    interval: int
    status: ClearingStatus
    price_usd_per_kwh: float | None
    trades: Sequence[Trade] = field(default_factory=list)  # a list, or Rows (fastbook, the role)
    confirmations: Sequence[Confirmation] = field(default_factory=list)
    traded_kwh: float = 0.0
    unmatched_buy_kwh: float = 0.0
    unmatched_sell_kwh: float = 0.0
    welfare_usd: float = 0.0
    n_bids: int = 0
    n_offers: int = 0
    iterations: int = 0  # of an iterative (decentralised) clearing; 0 = solved directly
    converged: bool = True

    @property
    def peer_trades(self) -> list[Trade]:
        """Trades between two peers (neither side is GRID)."""
        return [t for t in self.trades if t.seller != GRID and t.buyer != GRID]

    @property
    def grid_trades(self) -> list[Trade]:
        """Trades with the utility as one side."""
        return [t for t in self.trades if t.seller == GRID or t.buyer == GRID]


@dataclass
class Step:
    """One order in the book, with its remaining quantity [kWh] as an exact rational."""

    order: Order
    pos: int
    limit: Fraction  # effective limit [USD/kWh], clipped to the tariffs
    left: Fraction  # remaining energy [kWh]


def valid_order(o: Order) -> bool:
    """A finite, positive quantity at a finite price on a known side."""
    return (
        math.isfinite(o.energy_kwh)
        and o.energy_kwh > 0
        and math.isfinite(o.price_usd_per_kwh)
        and o.side in ("buy", "sell")
    )


@dataclass
class Book:
    """One interval's sorted book: bids by limit descending, offers ascending.

    ``ordered_by``: every participant with an order in the interval (also invalid
    ones), by id. ``retail`` / ``feed_in`` [USD/kWh] the tariffs as exact rationals.
    """

    bids: list[Step]
    offers: list[Step]
    ordered_by: list[str]
    retail: Fraction
    feed_in: Fraction


@dataclass(frozen=True)
class Match:
    """One greedy step: ``energy_kwh`` [kWh] from ``offer`` to ``bid``."""

    bid: Step
    offer: Step
    energy_kwh: Fraction


def build_book(
    orders: list[Order], *, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float
) -> Book:
    """The book of ``orders`` (all of one interval), as in community.py rules 1-3.

    Limits [USD/kWh] are clipped: bids to ``min(limit, retail)``, offers to
    ``max(limit, feed_in)``; ties are broken by participant id, then input position.
    """
    retail = Fraction(retail_usd_per_kwh)
    feed_in = Fraction(feed_in_usd_per_kwh)
    bids: list[Step] = []
    offers: list[Step] = []
    for pos, o in enumerate(orders):
        if not valid_order(o):
            continue
        p = Fraction(o.price_usd_per_kwh)
        if o.side == "buy":
            bids.append(Step(o, pos, min(p, retail), Fraction(o.energy_kwh)))
        else:
            offers.append(Step(o, pos, max(p, feed_in), Fraction(o.energy_kwh)))
    bids.sort(key=lambda s: (-s.order.price_usd_per_kwh, s.order.participant, s.pos))
    offers.sort(key=lambda s: (s.order.price_usd_per_kwh, s.order.participant, s.pos))
    return Book(bids, offers, sorted({o.participant for o in orders}), retail, feed_in)


def book_status(book: Book) -> ClearingStatus:
    """ "empty", "one_sided", "no_crossing" or "cleared", as ClearingResult defines them."""
    if not book.bids and not book.offers:
        return "empty"
    if not book.bids or not book.offers:
        return "one_sided"
    if book.bids[0].limit < book.offers[0].limit:
        return "no_crossing"
    return "cleared"


def match_greedy(book: Book, volume_kwh: Fraction | None = None) -> list[Match]:
    """Walk the sorted sides together (community.py rule 4) and return the steps.

    While the current bid's effective limit >= the current offer's, the smaller
    remaining quantity is traded. ``volume_kwh`` [kWh], if given, caps the total
    traded volume (the walk stops there). Decrements ``Step.left`` in place, so what
    is left afterwards is the unmatched volume that goes to the grid.
    """
    out: list[Match] = []
    traded = Fraction(0)
    i = j = 0
    bids, offers = book.bids, book.offers
    while i < len(bids) and j < len(offers):
        b, s = bids[i], offers[j]
        if b.limit < s.limit:
            break
        q = min(b.left, s.left)
        if volume_kwh is not None:
            q = min(q, volume_kwh - traded)
            if q <= 0:
                break
        out.append(Match(b, s, q))
        traded += q
        b.left -= q
        s.left -= q
        if b.left == 0:
            i += 1
        if s.left == 0:
            j += 1
    return out


def confirmations_from(
    interval: int,
    participants: list[str],
    peer_bought: Mapping[str, Any],
    peer_sold: Mapping[str, Any],
    grid_bought: Mapping[str, Any],
    grid_sold: Mapping[str, Any],
    price_of: Callable[[str], float | None],
) -> list[Confirmation]:
    """One Confirmation per participant from its peer and grid energies [kWh] (floats or
    Fractions); ``scheduled_kwh`` = bought - sold (+ import); ``price_of(p)`` [USD/kWh]."""
    return [
        Confirmation(
            participant=p,
            interval=interval,
            scheduled_kwh=float(peer_bought[p] + grid_bought[p] - peer_sold[p] - grid_sold[p]),
            peer_bought_kwh=float(peer_bought[p]),
            peer_sold_kwh=float(peer_sold[p]),
            grid_bought_kwh=float(grid_bought[p]),
            grid_sold_kwh=float(grid_sold[p]),
            price_usd_per_kwh=price_of(p),
        )
        for p in participants
    ]


def assemble(
    interval: int,
    book: Book,
    matches: list[Match],
    status: ClearingStatus,
    price_of: Callable[[Match], Fraction],
    uniform_price_usd_per_kwh: float | None,
) -> ClearingResult:
    """The ClearingResult of ``matches`` (after ``match_greedy`` has run on ``book``).

    ``price_of`` gives each step's price [USD/kWh]; steps with the same (seller, buyer,
    price) merge into one Trade, in first-seen order. Unmatched volume goes to the
    grid (community.py rule 7). ``uniform_price_usd_per_kwh`` [USD/kWh] is the result's
    and the confirmations' price (None for per-trade pricing or no peer trade).
    Welfare [USD] = sum of energy x (buyer's submitted limit - seller's submitted limit).
    """
    zero = Fraction(0)
    merged: dict[tuple[str, str, Fraction], Fraction] = {}
    welfare = zero
    traded = zero
    peer_bought = dict.fromkeys(book.ordered_by, zero)
    peer_sold = dict.fromkeys(book.ordered_by, zero)
    for m in matches:
        seller, buyer = m.offer.order.participant, m.bid.order.participant
        key = (seller, buyer, price_of(m))
        merged[key] = merged.get(key, zero) + m.energy_kwh
        welfare += m.energy_kwh * (
            Fraction(m.bid.order.price_usd_per_kwh) - Fraction(m.offer.order.price_usd_per_kwh)
        )
        traded += m.energy_kwh
        peer_sold[seller] += m.energy_kwh
        peer_bought[buyer] += m.energy_kwh
    trades = [Trade(interval, s, b, float(q), float(p)) for (s, b, p), q in merged.items()]

    grid_bought = dict.fromkeys(book.ordered_by, zero)
    grid_sold = dict.fromkeys(book.ordered_by, zero)
    for b in book.bids:
        grid_bought[b.order.participant] += b.left
    for s in book.offers:
        grid_sold[s.order.participant] += s.left
    retail_f, feed_in_f = float(book.retail), float(book.feed_in)
    trades += [
        Trade(interval, GRID, p, float(grid_bought[p]), retail_f)
        for p in book.ordered_by
        if grid_bought[p] > 0
    ]
    trades += [
        Trade(interval, p, GRID, float(grid_sold[p]), feed_in_f)
        for p in book.ordered_by
        if grid_sold[p] > 0
    ]
    confirmations = confirmations_from(
        interval, book.ordered_by, peer_bought, peer_sold, grid_bought, grid_sold,
        lambda _p: uniform_price_usd_per_kwh,
    )
    return ClearingResult(
        interval=interval,
        status=status,
        price_usd_per_kwh=uniform_price_usd_per_kwh,
        trades=trades,
        confirmations=confirmations,
        traded_kwh=float(traded),
        unmatched_buy_kwh=float(sum((b.left for b in book.bids), zero)),
        unmatched_sell_kwh=float(sum((s.left for s in book.offers), zero)),
        welfare_usd=float(welfare),
        n_bids=len(book.bids),
        n_offers=len(book.offers),
    )
