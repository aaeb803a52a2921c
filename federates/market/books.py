"""The market's two live conservation checks (federates/common/conservation.py):
money over every party, and the ledger's settlement records against the settlement.

``money_flows`` computes the interval's money twice. Once from the accounts:
settlement's per-participant rows (prosumers and the grid operator), summed. Once from
the clearing's record: each trade at its own price for the energy it delivered (a
seller's curtailment cut off, as settlement rule 2 cut it), each network charge for the
energy delivered, and the utility's energy: what it sold in grid trades, the energy
it replaced for buyers whose peer seller was curtailed (at retail), what it bought in
grid trades, and every imbalance at its imbalance price (``market.imbalance_price``);
with demand response, what the grid operator paid for the energy its calls cut (from
the prosumers' deliveries, each up to its call).
Rules in federates/market/settlement.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from federates.common.messages import GRID, GRID_OPERATOR, Trade
from federates.market.settlement import SettlementRow, imbalance_price

#: the settlement columns the ledger check totals: (column, unit)
LEDGER_TOTALS: tuple[tuple[str, str], ...] = (
    ("scheduled_kwh", "kWh"), ("metered_kwh", "kWh"), ("curtailed_kwh", "kWh"), ("imbalance_kwh", "kWh"),
    ("peer_bought_kwh", "kWh"), ("peer_sold_kwh", "kWh"), ("grid_bought_kwh", "kWh"), ("grid_sold_kwh", "kWh"),
    ("peer_paid_usd", "USD"), ("peer_received_usd", "USD"), ("grid_paid_usd", "USD"),
    ("grid_received_usd", "USD"), ("charges_paid_usd", "USD"), ("charges_received_usd", "USD"),
    ("net_cost_usd", "USD"), ("market_cost_usd", "USD"), ("replacement_cost_usd", "USD"),
    ("imbalance_cost_usd", "USD"), ("charges_usd", "USD"),
    ("dr_kwh", "kWh"), ("dr_received_usd", "USD"), ("dr_paid_usd", "USD"), ("dr_usd", "USD"),
)


def _cut_by_id(trade_cuts: Sequence[tuple[Trade, float]]) -> dict[str, float]:
    """``{trade_id: curtailed_kwh}``; ValueError unless every cut names a numbered trade, once."""
    cut = {t.trade_id: x for t, x in trade_cuts}
    if len(cut) != len(trade_cuts) or "" in cut:
        raise ValueError("trade_cuts must name numbered trades (Trade.trade_id, set by the market role), each once")
    return cut


def money_flows(rows: Sequence[SettlementRow], trades: Sequence[Trade],
                trade_cuts: Sequence[tuple[Trade, float]], *, retail_usd_per_kwh: float,
                feed_in_usd_per_kwh: float, imbalance_rule: str = "tariff",
                market_price_usd_per_kwh: float | None = None,
                loss_charges_usd: Sequence[float] = (),
                dr_payments_usd: Sequence[float] | None = None) -> list[tuple[str, float, float]]:
    """``(flow, from the clearing record, from the accounts)`` [USD] for each money
    flow of one settled interval: what peers paid and received for peer energy, the
    network charges paid and collected, what the utility was paid and paid out.

    ``rows``: the interval's settlement rows; ``trades``: its cleared trades;
    ``trade_cuts``: the ``(trade, curtailed_kwh)`` settlement reported
    (``Settlement.trade_cuts``), matched to ``trades`` by ``Trade.trade_id``; the
    tariffs [USD/kWh] the imbalance (with ``imbalance_rule`` and the interval's market
    price) and the replaced energy are priced at; ``loss_charges_usd``: each
    participant's loss energy x the loss price (``market.settle_losses``);
    ``dr_payments_usd``: each demand-response payment (paid energy x price), None
    without demand response (its two flows are then not listed)."""
    cut = _cut_by_id(trade_cuts)
    retail, feed_in = float(retail_usd_per_kwh), float(feed_in_usd_per_kwh)
    peer_value, utility_sold, utility_bought = [], [], []
    charges = list(loss_charges_usd)
    for t in trades:
        e, price, x = t.energy_kwh, t.price_usd_per_kwh, cut.get(t.trade_id, 0.0)
        if t.seller == GRID and t.buyer != GRID:
            utility_sold.append(price * e)
        elif t.buyer == GRID and t.seller != GRID:
            utility_bought.append(price * (e - x))
        elif t.seller != GRID:
            peer_value.append(price * (e - x))
            if t.fee_usd and e:
                charges.append(t.fee_usd * (e - x) / e)
            utility_sold.append(retail * x)  # the buyer's replacement energy
    mine = [r for r in rows if r.participant != GRID_OPERATOR]
    system = math.fsum(r.imbalance_kwh for r in mine)  # exactly rounded: its sign is the exact sum's
    for r in mine:
        price = imbalance_price(r.imbalance_kwh, system, imbalance_rule, retail, feed_in, market_price_usd_per_kwh)
        if r.imbalance_kwh > 0:
            utility_sold.append(price * r.imbalance_kwh)
        elif r.imbalance_kwh < 0:
            utility_bought.append(-price * r.imbalance_kwh)

    def total(col: str) -> float:
        return math.fsum(getattr(r, col) for r in rows)

    dr = [] if dr_payments_usd is None else [
        ("demand response paid by the grid operator", math.fsum(dr_payments_usd), total("dr_paid_usd")),
        ("demand response received by the customers", math.fsum(dr_payments_usd), total("dr_received_usd")),
    ]
    return [
        ("peers paid for peer energy", math.fsum(peer_value), total("peer_paid_usd")),
        ("peers received for peer energy", math.fsum(peer_value), total("peer_received_usd")),
        ("network charges paid", math.fsum(charges), total("charges_paid_usd")),
        ("network charges collected by the grid operator", math.fsum(charges), total("charges_received_usd")),
        ("utility paid (retail and grid sales)", math.fsum(utility_sold), total("grid_paid_usd")),
        ("utility paid out (feed-in and grid purchases)", math.fsum(utility_bought), total("grid_received_usd")),
        *dr,
    ]


def ledger_differences(segments: Sequence[tuple[str, dict[str, list[float]]]],
                       rows: Sequence[SettlementRow]) -> tuple[int, list[tuple[str, str, float, float, float]]]:
    """The ledger block's settlement records against the settlement ``rows`` they were
    made from: the number of settlement records, and for each :data:`LEDGER_TOTALS`
    column whose record values differ from the rows' ``(column, unit, rows' total,
    records' total, largest difference of one record)`` (inf when the counts differ).

    ``segments``: the block's float columns per segment
    (``federates.market.ledger.block_float_columns``; a column a segment lacks reads 0).
    Equal columns are found by one list comparison each; only a differing column is
    totalled (math.fsum, exactly rounded)."""
    mine = [cols for kind, cols in segments if kind == "settlement"]
    n = sum(len(next(iter(cols.values()), ())) for cols in mine)
    out = []
    for col, unit in LEDGER_TOTALS:
        got = [x for cols in mine for x in cols.get(col, [0.0] * len(next(iter(cols.values()), ())))]
        want = [getattr(r, col) for r in rows]
        if got == want:
            continue
        worst = (max(abs(float(a) - b) for a, b in zip(got, want, strict=True)) if len(got) == len(want)
                 else math.inf)
        out.append((col, unit, math.fsum(want), math.fsum(map(float, got)), worst))
    return n, out
