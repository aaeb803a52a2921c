"""Community market, discriminatory (pay-as-bid) pricing, and the book helpers it shares.

Clearing rule
    The book, the clipping of limits to the tariffs, the sort order, the greedy
    matching and the grid backstop are exactly those of ``community.py`` (rules 1-4
    and 7 of its docstring), so the matched volume, the matched pairs and the welfare
    equal the uniform-price auction's. Only the price differs:

    * each matched step (one bid, one offer, the quantity they trade) is priced at the
      midpoint of *its own* effective limits, ``(buyer limit + seller limit) / 2``
      [USD/kWh], limits clipped to [feed-in, retail]. It therefore lies between the
      seller's and the buyer's clipped limits (individual rationality) and in
      [feed_in, retail];
    * steps between the same seller and buyer at the same price are merged into one
      Trade; steps at different prices stay separate Trades;
    * ``ClearingResult.price_usd_per_kwh`` and every Confirmation's price are None:
      prices are per trade. Buyers pay exactly what sellers receive (budget balance).

The book helpers live in ``book.py``; ``clear_pay_as_bid`` runs the same walk on whole
arrays (``fastbook.py``), ``clear_pay_as_bid_reference`` step by step in
``fractions.Fraction``; both give equal results, bit for bit. Units: energy [kWh], prices [USD/kWh], money [USD].
"""

from __future__ import annotations

from fractions import Fraction

from federates.common.messages import Order
from federates.market import fastbook
from federates.market.book import (
    ClearingResult,
    Match,
    assemble,
    book_status,
    build_book,
    match_greedy,
)


def _own_midpoint(m: Match) -> Fraction:
    """Price [USD/kWh] of one step: midpoint of its buyer's and seller's clipped limits."""
    return (m.bid.limit + m.offer.limit) / 2


def clear_pay_as_bid(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> ClearingResult:
    """Clear one interval with per-pair midpoint prices (rule in the module docstring).

    Same arguments and conventions as ``community.clear_uniform_price``; energies
    [kWh], prices [USD/kWh]. ``price_usd_per_kwh`` of the result is always None.
    Vectorised (``fastbook``; a small book on lists); equal to ``clear_pay_as_bid_reference``.
    """
    mine = [o for o in orders if o.interval == interval]
    small = fastbook.clear_small(mine, interval=interval, retail_usd_per_kwh=retail_usd_per_kwh,
                                 feed_in_usd_per_kwh=feed_in_usd_per_kwh, pricing="midpoint")
    if small is not None:  # a small book: the same walk on lists
        return small
    book = fastbook.build(mine, retail_usd_per_kwh=retail_usd_per_kwh,
                          feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    if book is None:
        return clear_pay_as_bid_reference(
            mine, interval=interval, retail_usd_per_kwh=retail_usd_per_kwh,
            feed_in_usd_per_kwh=feed_in_usd_per_kwh)
    return fastbook.assemble(interval, book, fastbook.walk(book), book.status(), "midpoint")


def clear_pay_as_bid_reference(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> ClearingResult:
    """``clear_pay_as_bid`` by the exact step-by-step walk in ``fractions.Fraction``."""
    mine = [o for o in orders if o.interval == interval]
    book = build_book(
        mine, retail_usd_per_kwh=retail_usd_per_kwh, feed_in_usd_per_kwh=feed_in_usd_per_kwh
    )
    status = book_status(book)
    matches = match_greedy(book) if status == "cleared" else []
    return assemble(interval, book, matches, status, _own_midpoint, None)
