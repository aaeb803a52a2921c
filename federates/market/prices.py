"""The two prices of a confirmation, set the same way whatever mechanism cleared.

Mechanisms fill ``Confirmation.price_usd_per_kwh`` their own way (the uniform price for
everyone, None under pay-as-bid, a per-participant mean under P2P); the market role
passes every result through :func:`with_confirmation_prices` before anyone sees it,
so that the participants and the DSO read one documented meaning
(``federates.common.messages.Confirmation``):

* own price: the energy-weighted mean price of the participant's peer trades;
* market price: the uniform clearing price, else the energy-weighted mean price of
  all peer trades.

A mean of prices that are all equal is that price exactly (no rounding through
``sum(p * e) / sum(e)``), so under a uniform price both are the clearing price bit
for bit; other means are ``math.fsum`` sums (exactly rounded). Plain Python.
"""

from __future__ import annotations

import math
from dataclasses import replace

from federates.common.messages import GRID, Confirmation, Trade
from federates.common.rows import Rows, Same
from federates.market.book import ClearingResult


def _mean_price(lots: list[tuple[float, float]]) -> float | None:
    """Energy-weighted mean price [USD/kWh] of (energy [kWh], price) lots; None if none."""
    if not lots:
        return None
    first = lots[0][1]
    if all(p == first for _, p in lots):
        return float(first)
    return math.fsum(e * p for e, p in lots) / math.fsum(e for e, _ in lots)  # energies > 0


def _own_prices(result: ClearingResult) -> tuple[list[float | None], float | None]:
    """Each confirmation's own price and the market price (module doc), from the
    columns of the result's trades (peer trades with energy: not <= 0, NaN counts as in
    the mean). Where every peer trade has one non-zero price (a uniform price) both are
    that price for whoever has a peer trade, as the means give it, without the
    per-participant lots."""
    trades = Rows.of(Trade, result.trades)
    participants = Rows.of(Confirmation, result.confirmations).column("participant")
    peer = [(s, b, e, p) for s, b, e, p in zip(
        trades.column("seller"), trades.column("buyer"), trades.column("energy_kwh"),
        trades.column("price_usd_per_kwh"), strict=True) if s != GRID and b != GRID and not e <= 0]
    market = _mean_price([(e, p) for _, _, e, p in peer])
    first = peer[0][3] if peer else None
    if first and all(x[3] == first for x in peer):  # equal and non-zero: the same bits
        traded = {x[0] for x in peer} | {x[1] for x in peer}
        return [market if c in traded else None for c in participants], market
    lots: dict[str, list[tuple[float, float]]] = {}
    for s, b, e, p in peer:
        lots.setdefault(s, []).append((e, p))
        lots.setdefault(b, []).append((e, p))
    return [_mean_price(lots.get(c, [])) for c in participants], market


def with_confirmation_prices(result: ClearingResult) -> ClearingResult:
    """``result`` with every confirmation's own and market price set (module doc), its
    confirmations as columns (``Rows``: two columns replaced, no object made)."""
    own, market_price = _own_prices(result)
    confirmations = Rows.of(Confirmation, result.confirmations).with_columns(
        price_usd_per_kwh=own, market_price_usd_per_kwh=Same(market_price))
    return replace(result, confirmations=confirmations)
