"""Hybrid market: communities clear internally, their aggregators trade peer-to-peer.

The review's hybrid topology (section 2.3): every community runs its own market; what a
community cannot match internally is pooled by its aggregator ``agg:<community>``, the
aggregators trade bilaterally at the upper level, and only what is still left goes to
the utility (``GRID``).

Clearing rule
    1. Orders of ``interval`` are grouped by ``Order.community``; an order with an
       empty community is its own singleton community named after its participant.
    2. Lower level: each community is cleared with the community mechanism ``lower``
       (``MECHANISMS["community"]``); its peer trades are kept, its GRID trades are
       dropped (the residual is not sent to the grid yet).
    3. Residual per order: a participant's peer-matched volume (from the lower
       confirmations) is attributed to its own orders best limit first (bids highest
       limit first, offers lowest limit first), as the greedy / welfare-maximising
       matching does; the rest of each order is its residual.
    4. Aggregator orders: a community with residual supply offers it all as one order
       ``agg:<community>`` at the *highest* residual offer limit; residual demand is
       bid as one order at the *lowest* residual bid limit [USD/kWh]. (The brief
       suggested the lowest offer limit; that would let the upper level sell a member's
       energy below its ask. With the conservative limit every upper-level price lies
       inside every pooled member's window, so individual rationality holds.)
    5. Upper level: the aggregators clear with the P2P mechanism ``upper``
       (``MECHANISMS["p2p"]``, zero charges).
    6. Mapping back: an aggregator trade (agg:A -> agg:B, q [kWh], p [USD/kWh]) becomes
       one Trade per (seller member i of A, buyer member j of B) of
       ``q * u_i / U_A * v_j / V_B`` [kWh] at price p, where u_i / v_j are the members'
       residual volumes and U_A / V_B the aggregators' totals (pro rata on both sides).
       Fees are split the same way.
    7. What is still unmatched goes to GRID: one Trade ``GRID -> buyer`` at retail and
       one ``seller -> GRID`` at feed-in per participant.

Result: ``trades`` = lower peer trades (community by community), upper peer trades,
grid purchases, grid sales (by participant id); ``price_usd_per_kwh`` None; confirmations
per participant (by id) with the volume-weighted peer price; ``traded_kwh`` peer energy
at both levels; ``welfare_usd`` = lower welfare + upper welfare, where the upper part
charges each member's upper volume to its residual orders best limit first (sum over
peer-traded energy of buyer limit - seller limit); ``status`` "cleared" when any peer
trade happened, otherwise "empty" / "one_sided" / "no_crossing" for the whole book.

Units: energy [kWh] over the interval, prices [USD/kWh], money [USD].
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from federates.common.messages import GRID, Order, Trade
from federates.market.book import ClearingResult, ClearingStatus, confirmations_from, valid_order

AGG_PREFIX = "agg:"
_EPS_KWH = Fraction(1, 10**12)  # residues below this [kWh] count as zero




def community_of(o: Order) -> str:
    """The community an order belongs to: ``o.community``, or its participant when empty."""
    return o.community or o.participant


@dataclass
class _Residual:
    """What is left of one order after the lower level: ``left_kwh`` [kWh] exact."""

    order: Order
    left_kwh: Fraction


def _residuals(orders: list[Order], lower: ClearingResult) -> list[_Residual]:
    """Residual of each valid order of one community (rule 3 of the module docstring)."""
    bought = {c.participant: Fraction(c.peer_bought_kwh) for c in lower.confirmations}
    sold = {c.participant: Fraction(c.peer_sold_kwh) for c in lower.confirmations}
    out: list[_Residual] = []
    valid = [o for o in orders if valid_order(o)]
    bids = sorted((o for o in valid if o.side == "buy"), key=lambda o: -o.price_usd_per_kwh)
    offers = sorted((o for o in valid if o.side == "sell"), key=lambda o: o.price_usd_per_kwh)
    for side_orders, matched in ((bids, bought), (offers, sold)):
        for o in side_orders:
            e = Fraction(o.energy_kwh)
            used = min(e, matched.get(o.participant, Fraction(0)))
            matched[o.participant] = matched.get(o.participant, Fraction(0)) - used
            left = e - used
            out.append(_Residual(o, left if left > _EPS_KWH else Fraction(0)))
    return out


def _take_best_first(res: list[_Residual], volume_kwh: Fraction, buy: bool) -> Fraction:
    """Value [USD] of taking ``volume_kwh`` from residual orders ``res`` best limit first.

    Bids: highest limit first; offers: lowest first. ``left_kwh`` is reduced in place.
    """
    value = Fraction(0)
    key = (lambda r: -r.order.price_usd_per_kwh) if buy else (lambda r: r.order.price_usd_per_kwh)
    for r in sorted(res, key=key):
        if volume_kwh <= 0:
            break
        q = min(r.left_kwh, volume_kwh)
        value += q * Fraction(r.order.price_usd_per_kwh)
        r.left_kwh -= q
        volume_kwh -= q
    return value


def clear_hybrid(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    lower: str = "uniform_price",
    upper: str = "lp",
) -> ClearingResult:
    """Clear one interval of the hybrid market (rule in the module docstring).

    ``orders``: bids and offers [kWh, USD/kWh] carrying ``community``; only those of
    ``interval`` count. ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh]: the
    utility's tariffs. ``lower``: a community mechanism name, ``upper``: a P2P mechanism
    name (ValueError listing the allowed names otherwise).
    """
    from federates.market.mechanisms import MECHANISMS  # the registry lists hybrid itself

    lower_fn = MECHANISMS["community"].get(lower)
    if lower_fn is None:
        raise ValueError(
            f"unknown lower mechanism {lower!r}; allowed: {sorted(MECHANISMS['community'])}"
        )
    upper_fn = MECHANISMS["p2p"].get(upper)
    if upper_fn is None:
        raise ValueError(f"unknown upper mechanism {upper!r}; allowed: {sorted(MECHANISMS['p2p'])}")
    tariffs = {
        "interval": interval,
        "retail_usd_per_kwh": retail_usd_per_kwh,
        "feed_in_usd_per_kwh": feed_in_usd_per_kwh,
    }
    mine = [o for o in orders if o.interval == interval]
    participants = sorted({o.participant for o in mine})
    groups: dict[str, list[Order]] = {}
    for o in mine:
        groups.setdefault(community_of(o), []).append(o)

    zero = Fraction(0)
    peer_bought: dict[str, Fraction] = dict.fromkeys(participants, zero)
    peer_sold: dict[str, Fraction] = dict.fromkeys(participants, zero)
    money: dict[str, Fraction] = dict.fromkeys(participants, zero)
    trades: list[Trade] = []
    welfare = Fraction(0)
    traded = Fraction(0)
    n_bids = n_offers = 0

    def record(t: Trade) -> None:
        q, p = Fraction(t.energy_kwh), Fraction(t.price_usd_per_kwh)
        trades.append(t)
        peer_sold[t.seller] += q
        peer_bought[t.buyer] += q
        money[t.seller] += q * p
        money[t.buyer] += q * p

    # ---- lower level: each community alone, GRID trades stripped
    residual: dict[str, list[_Residual]] = {}
    for name in sorted(groups):
        res = lower_fn(groups[name], **tariffs)
        n_bids += res.n_bids
        n_offers += res.n_offers
        welfare += Fraction(res.welfare_usd)
        for t in res.peer_trades:
            record(t)
            traded += Fraction(t.energy_kwh)
        residual[name] = _residuals(groups[name], res)

    # ---- aggregator orders
    agg_orders: list[Order] = []
    members: dict[tuple[str, str], dict[str, Fraction]] = {}  # (agg, side) -> member -> kWh
    community_of_agg: dict[str, str] = {}
    for name, res_list in residual.items():
        for side in ("sell", "buy"):
            rs = [r for r in res_list if r.order.side == side and r.left_kwh > 0]
            if not rs:
                continue
            by_member: dict[str, Fraction] = {}
            for r in rs:
                by_member[r.order.participant] = (
                    by_member.get(r.order.participant, zero) + r.left_kwh
                )
            limits = [r.order.price_usd_per_kwh for r in rs]
            price = max(limits) if side == "sell" else min(limits)
            agg = AGG_PREFIX + name
            members[(agg, side)] = by_member
            community_of_agg[agg] = name
            total = sum(by_member.values(), zero)
            agg_orders.append(Order(agg, side, interval, float(total), price))  # type: ignore[arg-type]

    # ---- upper level and pro-rata mapping back to members
    # (community, member) -> energy traded at the upper level [kWh]
    upper_sold: dict[tuple[str, str], Fraction] = {}
    upper_bought: dict[tuple[str, str], Fraction] = {}
    if agg_orders:
        up = upper_fn(agg_orders, **tariffs)
        for t in up.peer_trades:
            sellers = members[(t.seller, "sell")]
            buyers = members[(t.buyer, "buy")]
            u_tot = sum(sellers.values(), zero)
            v_tot = sum(buyers.values(), zero)
            q_agg = Fraction(t.energy_kwh)
            cs, cb = community_of_agg[t.seller], community_of_agg[t.buyer]
            for i in sorted(sellers):
                for j in sorted(buyers):
                    share = sellers[i] / u_tot * buyers[j] / v_tot
                    q = q_agg * share
                    if q <= _EPS_KWH:
                        continue
                    fee = float(Fraction(t.fee_usd) * share)
                    record(Trade(interval, i, j, float(q), t.price_usd_per_kwh, fee))
                    upper_sold[(cs, i)] = upper_sold.get((cs, i), zero) + q
                    upper_bought[(cb, j)] = upper_bought.get((cb, j), zero) + q
                    traded += q
        # Upper welfare on the members' own residual orders, best limit first.
        for name, res_list in residual.items():
            for p in {r.order.participant for r in res_list}:
                mine_p = [r for r in res_list if r.order.participant == p]
                bids_p = [r for r in mine_p if r.order.side == "buy"]
                offers_p = [r for r in mine_p if r.order.side == "sell"]
                welfare += _take_best_first(bids_p, upper_bought.get((name, p), zero), buy=True)
                welfare -= _take_best_first(offers_p, upper_sold.get((name, p), zero), buy=False)

    # ---- grid residual
    grid_bought: dict[str, Fraction] = dict.fromkeys(participants, zero)
    grid_sold: dict[str, Fraction] = dict.fromkeys(participants, zero)
    for res_list in residual.values():
        for r in res_list:
            if r.left_kwh > _EPS_KWH:
                (grid_bought if r.order.side == "buy" else grid_sold)[r.order.participant] += (
                    r.left_kwh
                )
    for p in participants:
        if grid_bought[p] > 0:
            trades.append(Trade(interval, GRID, p, float(grid_bought[p]), retail_usd_per_kwh))
    for p in participants:
        if grid_sold[p] > 0:
            trades.append(Trade(interval, p, GRID, float(grid_sold[p]), feed_in_usd_per_kwh))

    confirmations = confirmations_from(
        interval, participants, peer_bought, peer_sold, grid_bought, grid_sold,
        lambda p: float(money[p] / vol) if (vol := peer_bought[p] + peer_sold[p]) > 0 else None,
    )

    status: ClearingStatus
    if traded > 0:
        status = "cleared"
    elif n_bids == 0 and n_offers == 0:
        status = "empty"
    elif n_bids == 0 or n_offers == 0:
        status = "one_sided"
    else:
        status = "no_crossing"
    return ClearingResult(
        interval=interval,
        status=status,
        price_usd_per_kwh=None,
        trades=trades,
        confirmations=confirmations,
        traded_kwh=float(traded),
        unmatched_buy_kwh=float(sum(grid_bought.values(), zero)),
        unmatched_sell_kwh=float(sum(grid_sold.values(), zero)),
        welfare_usd=float(welfare),
        n_bids=n_bids,
        n_offers=n_offers,
    )
