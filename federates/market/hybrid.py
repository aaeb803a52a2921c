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

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from federates.common.messages import GRID, Order, Trade
from federates.market.book import ClearingResult, ClearingStatus, confirmations_from, valid_order
from federates.market.community import clear_uniform_price
from federates.market.p2p import clear_p2p_lp

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


@dataclass
class _PeerTally:
    """The peer trades of both levels and what they add up to per participant (exact)."""

    peer_bought: dict[str, Fraction]
    peer_sold: dict[str, Fraction]
    money: dict[str, Fraction]  # [USD] paid plus received at the trades' prices
    trades: list[Trade] = field(default_factory=list)

    @classmethod
    def of(cls, participants: list[str]) -> _PeerTally:
        zero = Fraction(0)
        return cls(dict.fromkeys(participants, zero), dict.fromkeys(participants, zero),
                   dict.fromkeys(participants, zero))

    def record(self, t: Trade) -> None:
        q, p = Fraction(t.energy_kwh), Fraction(t.price_usd_per_kwh)
        self.trades.append(t)
        self.peer_sold[t.seller] += q
        self.peer_bought[t.buyer] += q
        self.money[t.seller] += q * p
        self.money[t.buyer] += q * p

    def own_price(self, p: str) -> float | None:
        """``p``'s volume-weighted peer price [USD/kWh], None without peer trades."""
        vol = self.peer_bought[p] + self.peer_sold[p]
        return float(self.money[p] / vol) if vol > 0 else None


@dataclass
class _Aggregators:
    """The aggregators' orders (rule 4) and whose residuals each pools."""

    orders: list[Order] = field(default_factory=list)
    members: dict[tuple[str, str], dict[str, Fraction]] = field(default_factory=dict)  # (agg, side) -> member -> kWh
    community: dict[str, str] = field(default_factory=dict)  # agg -> community


def _aggregator_orders(residual: dict[str, list[_Residual]], interval: int) -> _Aggregators:
    """Rule 4: per community and side with residual energy, one aggregator order of it
    all at the conservative limit (offers: the highest residual limit, bids: the lowest)."""
    zero = Fraction(0)
    out = _Aggregators()
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
            out.members[(agg, side)] = by_member
            out.community[agg] = name
            total = sum(by_member.values(), zero)
            out.orders.append(Order(agg, side, interval, float(total), price))  # type: ignore[arg-type]
    return out


def _map_back(up: ClearingResult, aggs: _Aggregators, interval: int, tally: _PeerTally
              ) -> tuple[dict[tuple[str, str], Fraction], dict[tuple[str, str], Fraction], Fraction]:
    """Rule 6: each aggregator trade as member trades, pro rata on both sides (recorded
    in ``tally``); the energy [kWh] each (community, member) sold and bought at the upper
    level, and the upper level's traded energy (exact)."""
    zero = Fraction(0)
    upper_sold: dict[tuple[str, str], Fraction] = {}
    upper_bought: dict[tuple[str, str], Fraction] = {}
    traded = zero
    for t in up.peer_trades:
        sellers = aggs.members[(t.seller, "sell")]
        buyers = aggs.members[(t.buyer, "buy")]
        u_tot = sum(sellers.values(), zero)
        v_tot = sum(buyers.values(), zero)
        q_agg = Fraction(t.energy_kwh)
        cs, cb = aggs.community[t.seller], aggs.community[t.buyer]
        for i in sorted(sellers):
            for j in sorted(buyers):
                share = sellers[i] / u_tot * buyers[j] / v_tot
                q = q_agg * share
                if q <= _EPS_KWH:
                    continue
                fee = float(Fraction(t.fee_usd) * share)
                tally.record(Trade(interval, i, j, float(q), t.price_usd_per_kwh, fee))
                upper_sold[(cs, i)] = upper_sold.get((cs, i), zero) + q
                upper_bought[(cb, j)] = upper_bought.get((cb, j), zero) + q
                traded += q
    return upper_sold, upper_bought, traded


def _upper_welfare(residual: dict[str, list[_Residual]], upper_sold: dict[tuple[str, str], Fraction],
                   upper_bought: dict[tuple[str, str], Fraction]) -> Fraction:
    """The upper level's welfare [USD] on the members' own residual orders, best limit
    first (module doc, "Result"); the residuals are reduced by what the upper level took."""
    zero = Fraction(0)
    welfare = zero
    for name, res_list in residual.items():
        for p in {r.order.participant for r in res_list}:
            mine_p = [r for r in res_list if r.order.participant == p]
            bids_p = [r for r in mine_p if r.order.side == "buy"]
            offers_p = [r for r in mine_p if r.order.side == "sell"]
            welfare += _take_best_first(bids_p, upper_bought.get((name, p), zero), buy=True)
            welfare -= _take_best_first(offers_p, upper_sold.get((name, p), zero), buy=False)
    return welfare


def _grid_residual(residual: dict[str, list[_Residual]], participants: list[str]
                   ) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """Rule 7: what each participant still has to buy from / sell to GRID [kWh]."""
    zero = Fraction(0)
    grid_bought: dict[str, Fraction] = dict.fromkeys(participants, zero)
    grid_sold: dict[str, Fraction] = dict.fromkeys(participants, zero)
    for res_list in residual.values():
        for r in res_list:
            if r.left_kwh > _EPS_KWH:
                (grid_bought if r.order.side == "buy" else grid_sold)[r.order.participant] += (
                    r.left_kwh
                )
    return grid_bought, grid_sold


def _status(traded: Fraction, n_bids: int, n_offers: int) -> ClearingStatus:
    if traded > 0:
        return "cleared"
    if n_bids == 0 and n_offers == 0:
        return "empty"
    if n_bids == 0 or n_offers == 0:
        return "one_sided"
    return "no_crossing"


def clear_hybrid(
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    lower: Callable[..., ClearingResult] = clear_uniform_price,
    upper: Callable[..., ClearingResult] = clear_p2p_lp,
) -> ClearingResult:
    """Clear one interval of the hybrid market (rule in the module docstring).

    ``orders``: bids and offers [kWh, USD/kWh] carrying ``community``; only those of
    ``interval`` count. ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh]: the
    utility's tariffs. ``lower``: the communities' clearing (a community mechanism,
    e.g. ``mechanisms.clearer("community", name)``), ``upper``: the aggregators' (a P2P
    mechanism).
    """

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

    tally = _PeerTally.of(participants)
    welfare = Fraction(0)
    traded = Fraction(0)
    n_bids = n_offers = 0

    # ---- lower level: each community alone, GRID trades stripped
    residual: dict[str, list[_Residual]] = {}
    for name in sorted(groups):
        res = lower(groups[name], **tariffs)
        n_bids += res.n_bids
        n_offers += res.n_offers
        welfare += Fraction(res.welfare_usd)
        for t in res.peer_trades:
            tally.record(t)
            traded += Fraction(t.energy_kwh)
        residual[name] = _residuals(groups[name], res)

    # ---- aggregator orders, upper level and pro-rata mapping back to members
    aggs = _aggregator_orders(residual, interval)
    if aggs.orders:
        upper_sold, upper_bought, upper_traded = _map_back(upper(aggs.orders, **tariffs), aggs, interval,
                                                           tally)
        traded += upper_traded
        welfare += _upper_welfare(residual, upper_sold, upper_bought)

    # ---- grid residual
    grid_bought, grid_sold = _grid_residual(residual, participants)
    trades = tally.trades
    for p in participants:
        if grid_bought[p] > 0:
            trades.append(Trade(interval, GRID, p, float(grid_bought[p]), retail_usd_per_kwh))
    for p in participants:
        if grid_sold[p] > 0:
            trades.append(Trade(interval, p, GRID, float(grid_sold[p]), feed_in_usd_per_kwh))

    confirmations = confirmations_from(
        interval, participants, tally.peer_bought, tally.peer_sold, grid_bought, grid_sold, tally.own_price,
    )
    zero = Fraction(0)
    return ClearingResult(
        interval=interval,
        status=_status(traded, n_bids, n_offers),
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
