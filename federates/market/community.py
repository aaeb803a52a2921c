"""Community market: a uniform-price (pay-as-clear) double auction among peers.

The utility (``GRID``) is the backstop: whatever a buyer does not get from peers it
buys from the grid at the retail tariff, whatever a seller does not sell to peers it
sells to the grid at the feed-in tariff.

Clearing rule
    1. The book is the orders of ``interval`` with a finite, positive ``energy_kwh``
       and a finite price. Orders of another interval and zero / negative / non-finite
       quantities are left out of the book (a participant that sent only such orders
       still gets an all-zero confirmation if its order was for ``interval``).
    2. Limits are first clipped to the utility's tariffs, because the utility is
       always there: a buyer's effective limit is ``min(limit, retail)`` (nobody pays a
       peer more than the utility asks), a seller's effective limit is
       ``max(limit, feed_in)`` (nobody sells to a peer for less than the utility pays).
    3. Bids are sorted by limit descending, offers by limit ascending; ties are broken
       by participant id (ascending), then by the order's position in the input.
    4. The sorted sides are walked together (greedy matching): while the current bid's
       effective limit >= the current offer's effective limit, the smaller remaining
       quantity of the two is traded between them. The traded volume is where the
       stepped demand and supply curves cross (the largest volume among the
       welfare-maximising ones; zero-surplus units at equal limits are traded).
    5. Clearing price [USD/kWh] = (effective limit of the marginal bid + effective
       limit of the marginal offer) / 2, where the marginal bid / offer are the last
       bid and the last offer that trade. Because every traded bid has an effective
       limit >= the marginal bid's and every traded offer one <= the marginal offer's,
       the price satisfies every traded order's limit (individual rationality), and it
       lies in [feed_in, retail].
    6. Every peer trade is at the clearing price. Several matched steps between the
       same seller and buyer are merged into one Trade. A participant that both bids
       and offers in one interval can be matched with itself (seller == buyer); such a
       trade nets out in its confirmation and in settlement.
    7. Each buyer's unmatched volume becomes one Trade ``GRID -> buyer`` at retail,
       each seller's unmatched volume one Trade ``seller -> GRID`` at feed-in.

Quantities are matched in exact rational arithmetic (``fractions.Fraction`` of the
input floats) and converted to float once at the end, so no residues like 5.5e-17 kWh
appear and results are bit-for-bit deterministic.

Units: energy [kWh] over the interval, prices [USD/kWh], money [USD].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

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
    trades: list[Trade] = field(default_factory=list)
    confirmations: list[Confirmation] = field(default_factory=list)
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
class _Step:
    """One order in the book, with its remaining quantity [kWh] as an exact rational."""

    order: Order
    pos: int
    limit: Fraction  # effective limit [USD/kWh], clipped to the tariffs
    left: Fraction  # remaining energy [kWh]


def _valid(o: Order) -> bool:
    return (
        math.isfinite(o.energy_kwh)
        and o.energy_kwh > 0
        and math.isfinite(o.price_usd_per_kwh)
        and o.side in ("buy", "sell")
    )


def clear_uniform_price(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> ClearingResult:
    """Clear one interval of the community market (rule in the module docstring).

    ``orders``: bids and offers [kWh, USD/kWh]; only those with ``interval`` count.
    ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh]: the utility's selling
    and buying prices (feed-in <= retail). Never raises on a book that cannot clear:
    returns a status instead.
    """
    retail = Fraction(retail_usd_per_kwh)
    feed_in = Fraction(feed_in_usd_per_kwh)
    mine = [o for o in orders if o.interval == interval]
    ordered_by = sorted({o.participant for o in mine})

    bids: list[_Step] = []
    offers: list[_Step] = []
    for pos, o in enumerate(mine):
        if not _valid(o):
            continue
        p = Fraction(o.price_usd_per_kwh)
        if o.side == "buy":
            bids.append(_Step(o, pos, min(p, retail), Fraction(o.energy_kwh)))
        else:
            offers.append(_Step(o, pos, max(p, feed_in), Fraction(o.energy_kwh)))
    # Sort on the submitted limit (monotone in the effective one), then participant, pos.
    bids.sort(key=lambda s: (-s.order.price_usd_per_kwh, s.order.participant, s.pos))
    offers.sort(key=lambda s: (s.order.price_usd_per_kwh, s.order.participant, s.pos))

    if not bids and not offers:
        status: ClearingStatus = "empty"
    elif not bids or not offers:
        status = "one_sided"
    elif bids[0].limit < offers[0].limit:
        status = "no_crossing"
    else:
        status = "cleared"

    # Greedy matching of the sorted sides: (seller, buyer) -> energy, in first-seen order.
    matched: dict[tuple[str, str], Fraction] = {}
    welfare = Fraction(0)
    traded = Fraction(0)
    marginal_bid: _Step | None = None
    marginal_offer: _Step | None = None
    i = j = 0
    while status == "cleared" and i < len(bids) and j < len(offers):
        b, s = bids[i], offers[j]
        if b.limit < s.limit:
            break
        q = min(b.left, s.left)
        key = (s.order.participant, b.order.participant)
        matched[key] = matched.get(key, Fraction(0)) + q
        welfare += q * (Fraction(b.order.price_usd_per_kwh) - Fraction(s.order.price_usd_per_kwh))
        traded += q
        marginal_bid, marginal_offer = b, s
        b.left -= q
        s.left -= q
        if b.left == 0:
            i += 1
        if s.left == 0:
            j += 1

    price: Fraction | None = None
    if marginal_bid is not None and marginal_offer is not None:
        price = (marginal_bid.limit + marginal_offer.limit) / 2
    price_f = None if price is None else float(price)

    zero = Fraction(0)
    peer_bought: dict[str, Fraction] = dict.fromkeys(ordered_by, zero)
    peer_sold: dict[str, Fraction] = dict.fromkeys(ordered_by, zero)
    trades: list[Trade] = []
    for (seller, buyer), q in matched.items():
        trades.append(Trade(interval, seller, buyer, float(q), price_f))  # type: ignore[arg-type]
        peer_sold[seller] += q
        peer_bought[buyer] += q

    grid_bought: dict[str, Fraction] = dict.fromkeys(ordered_by, zero)
    grid_sold: dict[str, Fraction] = dict.fromkeys(ordered_by, zero)
    for b in bids:
        grid_bought[b.order.participant] += b.left
    for s in offers:
        grid_sold[s.order.participant] += s.left
    for p in ordered_by:
        if grid_bought[p] > 0:
            trades.append(Trade(interval, GRID, p, float(grid_bought[p]), retail_usd_per_kwh))
    for p in ordered_by:
        if grid_sold[p] > 0:
            trades.append(Trade(interval, p, GRID, float(grid_sold[p]), feed_in_usd_per_kwh))

    confirmations = [
        Confirmation(
            participant=p,
            interval=interval,
            scheduled_kwh=float(peer_bought[p] + grid_bought[p] - peer_sold[p] - grid_sold[p]),
            peer_bought_kwh=float(peer_bought[p]),
            peer_sold_kwh=float(peer_sold[p]),
            grid_bought_kwh=float(grid_bought[p]),
            grid_sold_kwh=float(grid_sold[p]),
            price_usd_per_kwh=price_f,
        )
        for p in ordered_by
    ]
    return ClearingResult(
        interval=interval,
        status=status,
        price_usd_per_kwh=price_f,
        trades=trades,
        confirmations=confirmations,
        traded_kwh=float(traded),
        unmatched_buy_kwh=float(sum((b.left for b in bids), zero)),
        unmatched_sell_kwh=float(sum((s.left for s in offers), zero)),
        welfare_usd=float(welfare),
        n_bids=len(bids),
        n_offers=len(offers),
    )
