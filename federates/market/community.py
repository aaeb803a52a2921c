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

Quantities are matched in exact arithmetic (the input floats as exact rationals) and
converted to float once at the end, so no residues like 5.5e-17 kWh appear and results
are bit-for-bit deterministic. ``clear_uniform_price`` does it on whole arrays
(``fastbook.py``: exact integers in units of the book's smallest mantissa bit);
``clear_uniform_price_reference`` walks the book step by step in ``fractions.Fraction``
(``book.py``), and both give equal results, bit for bit (tests/unit/test_fastbook.py).

Units: energy [kWh] over the interval, prices [USD/kWh], money [USD].
"""

from __future__ import annotations

from fractions import Fraction

from federates.common.messages import Order
from federates.market import fastbook
from federates.market.book import (
    ClearingResult,
    ClearingStatus,
    assemble,
    book_status,
    build_book,
    match_greedy,
)

__all__ = ["ClearingResult", "ClearingStatus", "clear_uniform_price",
           "clear_uniform_price_reference"]


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
    returns a status instead. Vectorised (``fastbook``; a small book on lists); equal to
    ``clear_uniform_price_reference``.
    """
    mine = [o for o in orders if o.interval == interval]
    small = fastbook.clear_small(mine, interval=interval, retail_usd_per_kwh=retail_usd_per_kwh,
                                 feed_in_usd_per_kwh=feed_in_usd_per_kwh, pricing="uniform")
    if small is not None:  # a small book: the same walk on lists
        return small
    book = fastbook.build(mine, retail_usd_per_kwh=retail_usd_per_kwh,
                          feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    if book is None:  # not exactly representable in fastbook's integers: the reference
        return clear_uniform_price_reference(
            mine, interval=interval, retail_usd_per_kwh=retail_usd_per_kwh,
            feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    w = fastbook.walk(book)
    return fastbook.assemble(interval, book, w, book.status(), "uniform",
                             fastbook.uniform_price(book, w))


def clear_uniform_price_reference(
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
    returns a status instead. The exact step-by-step walk in ``fractions.Fraction``.
    """
    mine = [o for o in orders if o.interval == interval]
    book = build_book(mine, retail_usd_per_kwh=retail_usd_per_kwh, feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    status = book_status(book)
    matches = match_greedy(book) if status == "cleared" else []
    price: Fraction | None = None
    if matches:  # rule 5: midpoint of the last bid's and the last offer's effective limits
        price = (matches[-1].bid.limit + matches[-1].offer.limit) / 2
    return assemble(interval, book, matches, status, lambda _m: price,
                    None if price is None else float(price))
