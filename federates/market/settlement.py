"""Settlement of one market interval from metered energy (+ import).

Inputs: the interval's confirmations and trades (peer trades and grid trades, as the
clearing produced them), the metered net energy per participant [kWh, + import], and
the energy each participant could not deliver because the DSO curtailed it [kWh]
(the sum of its CurtailmentNotices for the interval).

Rules, applied per participant ``p``:

1. Schedule. ``scheduled_kwh`` is the confirmed net energy (0 without a confirmation).
   Peer trades settle at their own price for the scheduled energy; grid trades at
   their own price (retail / feed-in).
2. DSO curtailment of a seller. Let ``c`` be p's reported curtailment. The applied
   curtailment is ``min(c, p's scheduled peer + grid sales)``: curtailment beyond
   what was scheduled for sale was unscheduled export and is neither paid nor excused.
   The applied curtailment is removed first from p's peer sales, pro rata over its
   peer trades (trade ``t`` loses ``c_peer * e_t / peer_sold``), then from its grid
   sales. Curtailed energy is not paid.
3. A buyer whose peer purchase was cut by rule 2 buys that energy from GRID at retail
   instead; its schedule is unchanged.
3a. Network charges. A peer trade's ``fee_usd`` (P2P's per-pair grid charge) is paid
   by its seller to the grid operator (``GRID_OPERATOR``, "dso") for the energy
   delivered: ``fee * delivered / energy``. The buyer pays the full price, the
   seller receives it and pays the charge (``charges_paid_usd``), so it keeps price
   minus charge; the grid operator gets a row of its own with
   ``charges_received_usd`` (only in an interval where a charge was collected).
3b. Loss charges (``market.settle_losses``). Each participant pays its share of the
   feeder's losses of the interval (``loss_kwh``, the feeder's per-phase loss
   allocation) at the loss price to the grid operator, as a charge
   (``charges_paid_usd``; the grid operator's row collects it).
3c. Demand response (``controllers.demand_response``). A customer the DSO called to cut
   its demand is paid for the energy its devices cut against their plan, up to what
   was asked (``dr_kwh``: :func:`dr_paid_kwh` of its deliveries), at the demand-response
   price, by the grid operator (the DSO that called it): ``dr_received_usd`` on the
   customer's row, ``dr_paid_usd`` on the grid operator's. The cut energy is not an
   energy flow of the settlement (the meter already shows the lower import); this is a
   transfer from the DSO to the customer.
4. Imbalance. ``adjusted schedule = scheduled_kwh + applied curtailment`` (the
   curtailed seller is not penalised for what the DSO curtailed), and
   ``imbalance_kwh = metered_kwh - adjusted schedule``. A positive imbalance is bought
   from GRID, a negative one sold to GRID, at the imbalance price of
   ``market.imbalance_price`` (:data:`IMBALANCE_PRICES`, :func:`imbalance_price`):
   ``tariff`` (the default) retail for a shortfall and feed-in for a surplus;
   ``clearing`` the interval's market price (``Confirmation.market_price_usd_per_kwh``)
   for both; ``dual`` the two-price rule of European imbalance settlement (ENTSO-E
   Electricity Balancing guideline, Regulation (EU) 2017/2195, Art. 52-55; the Nordic
   two-price model until 2021): an imbalance in the direction of the interval's net
   imbalance of all participants (the community's) pays or gets the tariff, one against
   it (it helped) the market price. Without a market price (nothing traded peer to
   peer) every rule is the tariff.
5. Missing reading. A participant without a (finite) meter reading counts as metered =
   adjusted schedule (= scheduled when not curtailed), i.e. imbalance 0, and its row
   is flagged ``missing_reading``.

Bill split (each row): ``net_cost_usd = market_cost_usd + replacement_cost_usd +
imbalance_cost_usd + charges_usd + dr_usd``: the energy it bought and sold in the market at the
trades' prices (peer trades as delivered, its scheduled grid trades), the energy
bought at retail to replace a peer purchase its seller could not deliver (rule 3),
its imbalance at the imbalance price (rule 4), the network charges it paid (less
those it collected: the grid operator's row) and the demand-response payments it made
(the grid operator) less those it received (rule 3c). Curtailment is not compensated: the
seller is not paid for energy the DSO curtailed, and not charged for it either.

Consequences (tested): every participant's settled energy
``peer_bought + grid_bought - peer_sold - grid_sold`` equals its metered energy, and
among peers money is conserved: ``sum(peer_paid_usd) == sum(peer_received_usd)``,
and every charge paid is received: ``sum(charges_paid_usd) ==
sum(charges_received_usd)``, and every demand-response payment is received:
``sum(dr_paid_usd) == sum(dr_received_usd)`` (up to float rounding).

Arithmetic is exact, converted to float once per reported number. ``settle_interval``
works in integers: energies in units of 2**-Ee kWh and prices in 2**-Ep USD/kWh, with
Ee / Ep the most binary places any input has, so sums and products are exact; an
interval where a seller's peer sales are cut pro rata (rule 2, a true division) is
settled by ``settle_interval_reference`` (``fractions.Fraction`` throughout), as is an
interval with a network charge or a demand-response payment, and any non-finite input (it raises the reference's error). Both give equal rows, bit for bit
(tests/unit/test_settlement.py). ``net_cost_usd`` is + when the participant pays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from federates.common.messages import GRID, GRID_OPERATOR, Confirmation, Trade
from federates.common.rows import adopt


@dataclass(frozen=True)
class SettlementRow:
    """One participant's settlement of one interval.

    Energies [kWh] (``scheduled_kwh``, ``metered_kwh``, ``imbalance_kwh`` + import);
    ``curtailed_kwh`` the applied curtailment (capped at scheduled sales),
    ``curtailed_reported_kwh`` what the notices said; ``peer_*`` / ``grid_*`` the
    settled energies and money [USD] with peers / the utility; ``charges_paid_usd``
    [USD] the network charges a seller pays on its delivered peer sales,
    ``charges_received_usd`` [USD] what the grid operator (row ``GRID_OPERATOR``)
    collects; ``net_cost_usd`` [USD] = paid - received (+ pays), charges included,
    split into ``market_cost_usd``, ``replacement_cost_usd``, ``imbalance_cost_usd``
    and ``charges_usd`` [USD, + pays] (module docstring, "Bill split"). Demand
    response (rule 3c): ``dr_kwh`` [kWh] the cut energy paid for, ``dr_received_usd``
    [USD] what the customer is paid, ``dr_paid_usd`` [USD] what the grid operator pays,
    ``dr_usd`` [USD, + pays] = ``dr_paid_usd - dr_received_usd``, the bill's fifth part.
    ``missing_reading``: no meter reading, metered was set to the adjusted schedule.
    """

    interval: int
    participant: str
    scheduled_kwh: float
    metered_kwh: float
    curtailed_kwh: float
    peer_bought_kwh: float
    peer_sold_kwh: float
    grid_bought_kwh: float
    grid_sold_kwh: float
    imbalance_kwh: float
    peer_paid_usd: float
    peer_received_usd: float
    grid_paid_usd: float
    grid_received_usd: float
    net_cost_usd: float
    missing_reading: bool
    curtailed_reported_kwh: float = 0.0
    charges_paid_usd: float = 0.0
    charges_received_usd: float = 0.0
    market_cost_usd: float = 0.0
    replacement_cost_usd: float = 0.0
    imbalance_cost_usd: float = 0.0
    charges_usd: float = 0.0
    dr_kwh: float = 0.0
    dr_received_usd: float = 0.0
    dr_paid_usd: float = 0.0
    dr_usd: float = 0.0


#: the demand-response columns of a settlement row (rule 3c): in the ``settlements``
#: table and the ledger's settlement records only when demand response is on
DR_COLUMNS = ("dr_kwh", "dr_received_usd", "dr_paid_usd", "dr_usd")


def dr_paid_kwh(deliveries, interval: int, interval_h: float) -> dict[str, float]:
    """Rule 3c's energy [kWh] per participant: what its devices cut in ``interval``
    (``DemandResponseDelivery.reduced_kwh``), each delivery up to its call
    (``requested_kw`` x ``interval_h`` [h]); a cut beyond the call is not bought.
    Deliveries of another interval are ignored; several of one participant add up."""
    out: dict[str, float] = {}
    for d in deliveries:
        if d.interval == interval:
            paid = min(max(float(d.reduced_kwh), 0.0), max(float(d.requested_kw), 0.0) * interval_h)
            out[d.participant] = out.get(d.participant, 0.0) + paid
    return out


@dataclass(frozen=True)
class Settlement:
    """What settling one interval gives: ``rows``, one :class:`SettlementRow` per
    participant (in the order ``settle_interval`` documents), and ``trade_cuts``,
    ``(trade, curtailed_kwh)`` for every trade rule 2 cut (peer and grid sales, in
    trade order, each once): what the curtailed-trade records and the money check name."""

    rows: list[SettlementRow]
    trade_cuts: list[tuple[Trade, float]]


class _Acc:
    """Exact running totals of one participant."""

    def __init__(self) -> None:
        z = Fraction(0)
        self.peer_bought = z
        self.peer_sold = z
        self.grid_bought = z
        self.grid_sold = z
        self.peer_paid = z
        self.peer_received = z
        self.grid_paid = z
        self.grid_received = z
        self.charges_paid = z
        self.charges_received = z
        self.grid_paid_scheduled = z  # grid trades as cleared (less curtailment), not imbalance
        self.grid_received_scheduled = z
        self.replacement = z
        self.dr_kwh = z
        self.dr_received = z
        self.dr_paid = z


def _frac(x: float, what: str) -> Fraction:
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {x!r}")
    return Fraction(x)


def _number(x: object) -> bool:
    """A float (numpy's included) or a plain int: what ``_fixed`` converts exactly."""
    return isinstance(x, float) or type(x) is int


def _places(x: float) -> int:
    """Binary places of the finite float ``x``: the k with x * 2**k an odd integer (or 0)."""
    return x.as_integer_ratio()[1].bit_length() - 1


#: how an imbalance is priced (settlement rule 4)
IMBALANCE_PRICES = ("tariff", "clearing", "dual")


def imbalance_price(imbalance, system, rule: str, retail, feed_in, clearing):
    """The price of one participant's ``imbalance`` (rule 4; + shortfall) when the
    participants' imbalances add up to ``system``; ``retail`` / ``feed_in`` the
    tariffs, ``clearing`` the interval's market price or None. Numbers of one kind:
    exact integers at one scale, Fractions or floats."""
    tariff = retail if imbalance > 0 else feed_in
    if rule == "tariff" or clearing is None:
        return tariff
    if rule == "clearing":
        return clearing
    if rule != "dual":
        raise ValueError(f"market.imbalance_price is {rule!r}; allowed: {', '.join(IMBALANCE_PRICES)}")
    return tariff if system != 0 and (system > 0) == (imbalance > 0) else clearing


def market_price_of(confirmations: list[Confirmation], interval: int) -> float | None:
    """The interval's market price [USD/kWh] (``Confirmation.market_price_usd_per_kwh``,
    the same on every confirmation of the interval), None if nothing traded peer to peer."""
    for c in confirmations:
        if c.interval == interval and c.market_price_usd_per_kwh is not None:
            return c.market_price_usd_per_kwh
    return None


def _fixed(x: float, places: int) -> int:
    """``x`` * 2**places as an exact int (``places`` >= ``_places(x)``)."""
    n, d = x.as_integer_ratio()
    return n << (places - d.bit_length() + 1)


def _accounts(who: list[str], trades: list[Trade], new) -> dict:
    """Participant -> its running totals (``new()``): everyone in ``who``, and every
    other party of ``trades`` but GRID (named by a trade but not given a row by
    ``participants``: still settled)."""
    acc = {p: new() for p in who}
    for t in trades:
        for p in (t.seller, t.buyer):
            if p != GRID and p not in acc:
                acc[p] = new()
    return acc


def _account(acc: dict[str, _Acc], p: str) -> _Acc:
    """``p``'s account in ``acc``, made on first use: the grid operator's when it first
    collects a charge, or a participant's charged losses but given no row."""
    a = acc.get(p)
    if a is None:
        a = acc[p] = _Acc()
    return a


def _named(participants: list[str] | None, confs: dict[str, Confirmation], metered_kwh: dict[str, float],
           curtailed_kwh: dict[str, float], trades: list[Trade]) -> list[str]:
    """Who gets a row, in row order: ``participants``, or else everyone named by a
    confirmation, a reading, a curtailment or a trade (but GRID), by id."""
    if participants is not None:
        return list(participants)
    names = set(confs) | set(metered_kwh) | set(curtailed_kwh)
    names |= {t.seller for t in trades} | {t.buyer for t in trades}
    names.discard(GRID)
    return sorted(names)


def _scheduled_sales(peer: list[Trade], grid: list[Trade], energy, zero):
    """Each seller's scheduled peer sales and grid sales, in ``energy``'s exact numbers
    (``zero`` their 0): what rule 2 cuts."""
    peer_sold: dict = {}
    grid_sold: dict = {}
    for t in peer:
        peer_sold[t.seller] = peer_sold.get(t.seller, zero) + energy(t.energy_kwh)
    for t in grid:
        if t.buyer == GRID:
            grid_sold[t.seller] = grid_sold.get(t.seller, zero) + energy(t.energy_kwh)
    return peer_sold, grid_sold


def _split_curtailment(curtailed_kwh: dict[str, float], amount, peer_sold: dict, grid_sold: dict, zero):
    """Rule 2 per curtailed participant ``p``: the applied curtailment (at most its
    scheduled sales), the part of it cut from its peer sales and the part cut from its
    grid sales; ``amount(p, reported)`` the reported curtailment as an exact number."""
    applied: dict = {}
    cut_peer: dict = {}
    cut_grid: dict = {}
    for p, c_raw in curtailed_kwh.items():
        c = max(amount(p, c_raw), zero)
        ps = peer_sold.get(p, zero)
        a = min(c, ps + grid_sold.get(p, zero))
        applied[p] = a
        cut_peer[p] = min(a, ps)
        cut_grid[p] = a - cut_peer[p]
    return applied, cut_peer, cut_grid


def _dyadic_places(mine: list[Trade], confs: dict[str, Confirmation], metered_kwh: dict[str, float],
                   curtailed_kwh: dict[str, float], prices: list[float]) -> tuple[int, int] | None:
    """``(Ee, Ep)``: the most binary places of any energy and of any price (the trades'
    and ``prices``), None if an input is not a finite float or int (the reference
    decides). A missing (non-finite) reading does not count."""
    energies = [t.energy_kwh for t in mine]
    energies += [c.scheduled_kwh for c in confs.values()]
    energies += list(curtailed_kwh.values())
    energies += [v for v in metered_kwh.values() if not _number(v) or math.isfinite(v)]
    prices = [t.price_usd_per_kwh for t in mine] + prices
    if not all(_number(v) and math.isfinite(v) for v in (*energies, *prices)):
        return None
    return max(map(_places, energies), default=0), max(map(_places, prices))


# The integer path's totals of a participant, a list (indexed by literals: the loops run
# per trade and per participant): peer_bought, peer_sold, grid_bought, grid_sold
# [2**-ee kWh], peer_paid, peer_received, grid_paid, grid_received [2**-(ee+ep) USD];
# [8] / [9]: grid_paid / grid_received of the scheduled grid trades (not the imbalance).


def _fixed_trades(peer: list[Trade], grid: list[Trade], cut_grid: dict[str, int], acc: dict[str, list[int]],
                  ee: int, ep: int) -> list[tuple[Trade, float]]:
    """Rule 1 (and rule 2 on grid sales only) in integers: every trade into ``acc``;
    the grid sales the curtailment cut, ``(trade, kWh)``."""
    for t in peer:
        e = _fixed(t.energy_kwh, ee)
        m = e * _fixed(t.price_usd_per_kwh, ep)
        s, b = acc[t.seller], acc[t.buyer]
        s[1] += e
        s[5] += m
        b[0] += e
        b[4] += m
    left_grid_cut = dict(cut_grid)
    cuts: list[tuple[Trade, float]] = []
    for t in grid:
        e = _fixed(t.energy_kwh, ee)
        price = _fixed(t.price_usd_per_kwh, ep)
        if t.seller == GRID:
            b = acc[t.buyer]
            b[2] += e
            b[6] += e * price
            b[8] += e * price
        else:
            x = min(left_grid_cut.get(t.seller, 0), e)
            if x:
                left_grid_cut[t.seller] -= x
                cuts.append((t, x / (1 << ee)))
            s = acc[t.seller]
            s[3] += e - x
            s[7] += (e - x) * price
            s[9] += (e - x) * price
    return cuts


def settle_interval(
    interval: int,
    confirmations: list[Confirmation],
    trades: list[Trade],
    metered_kwh: dict[str, float],
    curtailed_kwh: dict[str, float],
    *,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    participants: list[str] | None = None,
    imbalance_rule: str = "tariff",
    loss_kwh: dict[str, float] | None = None,
    loss_price_usd_per_kwh: float | None = None,
    dr_kwh: dict[str, float] | None = None,
    dr_price_usd_per_kwh: float | None = None,
) -> Settlement:
    """Settle interval ``interval`` (rules in the module docstring).

    ``confirmations`` / ``trades``: the clearing's output (items of another interval
    are ignored). ``metered_kwh`` [kWh, + import] and ``curtailed_kwh`` [kWh, >= 0]
    per participant. ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh]: the
    tariffs of imbalance energy (with ``imbalance_rule``, one of
    :data:`IMBALANCE_PRICES`) and of replacement purchases. ``participants``: who
    gets a row (default: everyone named by a confirmation, a trade, a reading or a
    curtailment); rows come in this order, or sorted by id by default.
    ``loss_kwh`` [kWh, >= 0] per participant and ``loss_price_usd_per_kwh``: the loss
    charges of rule 3b. ``dr_kwh`` [kWh, >= 0] per participant (:func:`dr_paid_kwh`) and
    ``dr_price_usd_per_kwh``: the demand-response payments of rule 3c. Returns the rows and the trades rule 2 cut
    (:class:`Settlement`). Exact integer arithmetic; equal to
    ``settle_interval_reference``.
    """
    args = (interval, confirmations, trades, metered_kwh, curtailed_kwh)
    kw = {"retail_usd_per_kwh": retail_usd_per_kwh, "feed_in_usd_per_kwh": feed_in_usd_per_kwh,
          "participants": participants, "imbalance_rule": imbalance_rule,
          "loss_kwh": loss_kwh, "loss_price_usd_per_kwh": loss_price_usd_per_kwh,
          "dr_kwh": dr_kwh, "dr_price_usd_per_kwh": dr_price_usd_per_kwh}
    if loss_kwh or dr_kwh:
        return settle_interval_reference(*args, **kw)  # loss charges (rule 3b), demand response (3c)
    if imbalance_rule not in IMBALANCE_PRICES:
        raise ValueError(f"market.imbalance_price is {imbalance_rule!r}; allowed: {', '.join(IMBALANCE_PRICES)}")
    confs = {c.participant: c for c in confirmations if c.interval == interval}
    mine = [t for t in trades if t.interval == interval]
    clearing = market_price_of(list(confs.values()), interval) if imbalance_rule != "tariff" else None
    places = _dyadic_places(mine, confs, metered_kwh, curtailed_kwh,
                            [retail_usd_per_kwh, feed_in_usd_per_kwh, *([] if clearing is None else [clearing])])
    if places is None:
        return settle_interval_reference(*args, **kw)  # NaN, Fractions, ...: the reference decides
    if any(t.fee_usd != 0 for t in mine):
        return settle_interval_reference(*args, **kw)  # network charges (rule 3a)
    ee, ep = places
    peer = [t for t in mine if t.seller != GRID and t.buyer != GRID]
    grid = [t for t in mine if (t.seller == GRID) != (t.buyer == GRID)]
    applied, cut_peer, cut_grid = _split_curtailment(
        curtailed_kwh, lambda _p, x: _fixed(x, ee),
        *_scheduled_sales(peer, grid, lambda x: _fixed(x, ee), 0), 0)
    if any(cut_peer.values()):
        return settle_interval_reference(*args, **kw)  # a pro-rata cut: not a dyadic number

    who = _named(participants, confs, metered_kwh, curtailed_kwh, mine)
    acc = _accounts(who, mine, lambda: [0] * 10)
    cuts = _fixed_trades(peer, grid, cut_grid, acc, ee, ep)

    retail = _fixed(retail_usd_per_kwh, ep)
    feed_in = _fixed(feed_in_usd_per_kwh, ep)
    clearing_fixed = None if clearing is None else _fixed(clearing, ep)
    one_e, one_m = 1 << ee, 1 << (ee + ep)
    # every participant's imbalance first: the dual price needs their sum
    settled = []
    system = 0
    for p in [*who, *sorted(set(acc) - set(who))]:
        conf = confs.get(p)
        scheduled = _fixed(conf.scheduled_kwh, ee) if conf else 0
        cur = applied.get(p, 0)
        adjusted = scheduled + cur
        reading = metered_kwh.get(p)
        missing = p not in metered_kwh or not math.isfinite(reading)
        metered = adjusted if missing else _fixed(reading, ee)
        settled.append((p, scheduled, cur, metered, metered - adjusted, missing))
        system += metered - adjusted
    rows: list[dict] = []  # SettlementRow fields: built at once below
    for p, scheduled, cur, metered, imbalance, missing in settled:
        a = acc[p]
        price = imbalance_price(imbalance, system, imbalance_rule, retail, feed_in, clearing_fixed)
        if imbalance > 0:
            a[2] += imbalance
            a[6] += imbalance * price
        elif imbalance < 0:
            a[3] -= imbalance
            a[7] -= imbalance * price
        net = a[4] + a[6] - a[5] - a[7]
        rows.append({
            "interval": interval,
            "participant": p,
            "scheduled_kwh": scheduled / one_e,
            "metered_kwh": metered / one_e,
            "curtailed_kwh": cur / one_e,
            "peer_bought_kwh": a[0] / one_e,
            "peer_sold_kwh": a[1] / one_e,
            "grid_bought_kwh": a[2] / one_e,
            "grid_sold_kwh": a[3] / one_e,
            "imbalance_kwh": imbalance / one_e,
            "peer_paid_usd": a[4] / one_m,
            "peer_received_usd": a[5] / one_m,
            "grid_paid_usd": a[6] / one_m,
            "grid_received_usd": a[7] / one_m,
            "net_cost_usd": net / one_m,
            "missing_reading": missing,
            "curtailed_reported_kwh": float(curtailed_kwh.get(p, 0.0)),
            "charges_paid_usd": 0.0,  # an interval with a network charge settles by the reference
            "charges_received_usd": 0.0,
            "market_cost_usd": (a[4] - a[5] + a[8] - a[9]) / one_m,
            "replacement_cost_usd": 0.0,  # a replacement needs a pro-rata cut: the reference's
            "imbalance_cost_usd": imbalance * price / one_m,
            "charges_usd": 0.0,
            "dr_kwh": 0.0,  # an interval with a demand-response payment settles by the reference
            "dr_received_usd": 0.0,
            "dr_paid_usd": 0.0,
            "dr_usd": 0.0,
        })
    # without SettlementRow.__init__'s 19 frozen-field assignments (2.8 -> 0.4 us a row)
    return Settlement(adopt(SettlementRow, rows), cuts)


def _reference_trades(peer: list[Trade], grid: list[Trade], cut_peer: dict[str, Fraction],
                      cut_grid: dict[str, Fraction], peer_sold: dict[str, Fraction], retail: Fraction,
                      acc: dict[str, _Acc]) -> list[tuple[Trade, float]]:
    """Rules 1, 2, 3 and 3a in Fractions: every trade into ``acc``, peer trades with the
    seller's curtailment removed pro rata (the buyer replaces it at ``retail``) and the
    network charge paid on what was delivered, grid sales with the rest of the
    curtailment removed; the trades the curtailment cut, ``(trade, kWh)``."""
    cuts: list[tuple[Trade, float]] = []
    for t in peer:
        e = Fraction(t.energy_kwh)
        price = Fraction(t.price_usd_per_kwh)
        cp = cut_peer.get(t.seller, Fraction(0))
        x = cp * e / peer_sold[t.seller] if cp else Fraction(0)
        delivered = e - x
        s, b = acc[t.seller], acc[t.buyer]
        s.peer_sold += delivered
        s.peer_received += delivered * price
        b.peer_bought += delivered
        b.peer_paid += delivered * price
        fee = _frac(t.fee_usd, "fee_usd")
        if fee < 0:
            raise ValueError(f"a trade's fee_usd must be >= 0, got {t.fee_usd!r}")
        if fee and e:  # rule 3a: the seller pays the charge of what it delivered
            charge = fee * delivered / e
            s.charges_paid += charge
            _account(acc, GRID_OPERATOR).charges_received += charge
        if x:  # the buyer gets the cut energy from the grid at retail
            b.grid_bought += x
            b.grid_paid += x * retail
            b.replacement += x * retail
            cuts.append((t, float(x)))

    # Scheduled grid trades, with the seller's remaining curtailment removed.
    left_grid_cut = dict(cut_grid)
    for t in grid:
        e = Fraction(t.energy_kwh)
        price = Fraction(t.price_usd_per_kwh)
        if t.seller == GRID:
            b = acc[t.buyer]
            b.grid_bought += e
            b.grid_paid += e * price
            b.grid_paid_scheduled += e * price
        else:
            x = min(left_grid_cut.get(t.seller, Fraction(0)), e)
            if x:
                left_grid_cut[t.seller] -= x
                cuts.append((t, float(x)))
            s = acc[t.seller]
            s.grid_sold += e - x
            s.grid_received += (e - x) * price
            s.grid_received_scheduled += (e - x) * price
    return cuts


def _priced_kwh(kwh: dict[str, float], price_usd_per_kwh: float | None, name: str,
                price_name: str) -> Iterator[tuple[str, Fraction, Fraction]]:
    """(participant, energy, money) of each non-zero entry of ``kwh`` at the price,
    exact; a missing price or a negative energy is a ValueError naming it."""
    if price_usd_per_kwh is None:
        raise ValueError(f"{name} needs {price_name}")
    price = _frac(price_usd_per_kwh, price_name)
    for p, raw in kwh.items():
        x = _frac(raw, f"{name}[{p!r}]")
        if x < 0:
            raise ValueError(f"{name}[{p!r}] must be >= 0, got {raw!r}")
        if x:
            yield p, x, x * price


def _charge_losses(loss_kwh: dict[str, float], loss_price_usd_per_kwh: float | None, acc: dict[str, _Acc]) -> None:
    """Rule 3b: each participant's losses at the loss price, paid to the grid operator."""
    for p, _, money in _priced_kwh(loss_kwh, loss_price_usd_per_kwh, "loss_kwh", "loss_price_usd_per_kwh"):
        _account(acc, p).charges_paid += money
        _account(acc, GRID_OPERATOR).charges_received += money


def _pay_demand_response(dr_kwh: dict[str, float], dr_price_usd_per_kwh: float | None,
                         acc: dict[str, _Acc]) -> None:
    """Rule 3c: each participant's demand-response energy at the DR price, paid by the
    grid operator."""
    for p, x, money in _priced_kwh(dr_kwh, dr_price_usd_per_kwh, "dr_kwh", "dr_price_usd_per_kwh"):
        a = _account(acc, p)
        a.dr_kwh += x
        a.dr_received += money
        _account(acc, GRID_OPERATOR).dr_paid += money


def settle_interval_reference(
    interval: int,
    confirmations: list[Confirmation],
    trades: list[Trade],
    metered_kwh: dict[str, float],
    curtailed_kwh: dict[str, float],
    *,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    participants: list[str] | None = None,
    imbalance_rule: str = "tariff",
    loss_kwh: dict[str, float] | None = None,
    loss_price_usd_per_kwh: float | None = None,
    dr_kwh: dict[str, float] | None = None,
    dr_price_usd_per_kwh: float | None = None,
) -> Settlement:
    """:func:`settle_interval`, the same arguments and result, computed in
    ``fractions.Fraction`` throughout: the reference the integer path is checked against."""
    retail = _frac(retail_usd_per_kwh, "retail_usd_per_kwh")
    feed_in = _frac(feed_in_usd_per_kwh, "feed_in_usd_per_kwh")
    confs = {c.participant: c for c in confirmations if c.interval == interval}
    market_price = market_price_of(list(confs.values()), interval) if imbalance_rule != "tariff" else None
    clearing = None if market_price is None else _frac(market_price, "market_price_usd_per_kwh")
    mine = [t for t in trades if t.interval == interval]
    peer = [t for t in mine if t.seller != GRID and t.buyer != GRID]
    grid = [t for t in mine if (t.seller == GRID) != (t.buyer == GRID)]

    who = _named(participants, confs, metered_kwh, curtailed_kwh, mine)
    acc = _accounts(who, mine, _Acc)
    peer_sold, grid_sold = _scheduled_sales(peer, grid, Fraction, Fraction(0))
    applied, cut_peer, cut_grid = _split_curtailment(
        curtailed_kwh, lambda p, x: _frac(x, f"curtailed_kwh[{p!r}]"), peer_sold, grid_sold, Fraction(0))
    cuts = _reference_trades(peer, grid, cut_peer, cut_grid, peer_sold, retail, acc)
    if loss_kwh:
        _charge_losses(loss_kwh, loss_price_usd_per_kwh, acc)
    if dr_kwh:
        _pay_demand_response(dr_kwh, dr_price_usd_per_kwh, acc)

    # every participant's imbalance first: the dual price needs their sum
    settled = []
    for p in [*who, *sorted(set(acc) - set(who))]:
        conf = confs.get(p)
        scheduled = _frac(conf.scheduled_kwh, f"scheduled_kwh[{p!r}]") if conf else Fraction(0)
        cur = applied.get(p, Fraction(0))
        adjusted = scheduled + cur
        # the grid operator has no meter (it only collects charges): metered 0, not missing
        missing = p != GRID_OPERATOR and (p not in metered_kwh or not math.isfinite(metered_kwh[p]))
        metered = adjusted if missing or p == GRID_OPERATOR else Fraction(metered_kwh[p])
        settled.append((p, scheduled, cur, metered, metered - adjusted, missing))
    system = sum((x[4] for x in settled), Fraction(0))
    rows: list[SettlementRow] = []
    for p, scheduled, cur, metered, imbalance, missing in settled:
        a = acc[p]
        price = imbalance_price(imbalance, system, imbalance_rule, retail, feed_in, clearing)
        if imbalance > 0:
            a.grid_bought += imbalance
            a.grid_paid += imbalance * price
        elif imbalance < 0:
            a.grid_sold -= imbalance
            a.grid_received -= imbalance * price
        net = (a.peer_paid + a.grid_paid + a.charges_paid + a.dr_paid
               - a.peer_received - a.grid_received - a.charges_received - a.dr_received)
        reported = curtailed_kwh.get(p, 0.0)
        rows.append(SettlementRow(
            interval=interval,
            participant=p,
            scheduled_kwh=float(scheduled),
            metered_kwh=float(metered),
            curtailed_kwh=float(cur),
            peer_bought_kwh=float(a.peer_bought),
            peer_sold_kwh=float(a.peer_sold),
            grid_bought_kwh=float(a.grid_bought),
            grid_sold_kwh=float(a.grid_sold),
            imbalance_kwh=float(imbalance),
            peer_paid_usd=float(a.peer_paid),
            peer_received_usd=float(a.peer_received),
            grid_paid_usd=float(a.grid_paid),
            grid_received_usd=float(a.grid_received),
            net_cost_usd=float(net),
            missing_reading=missing,
            curtailed_reported_kwh=float(reported),
            charges_paid_usd=float(a.charges_paid),
            charges_received_usd=float(a.charges_received),
            market_cost_usd=float(a.peer_paid - a.peer_received + a.grid_paid_scheduled - a.grid_received_scheduled),
            replacement_cost_usd=float(a.replacement),
            imbalance_cost_usd=float(imbalance * price),
            charges_usd=float(a.charges_paid - a.charges_received),
            dr_kwh=float(a.dr_kwh),
            dr_received_usd=float(a.dr_received),
            dr_paid_usd=float(a.dr_paid),
            dr_usd=float(a.dr_paid - a.dr_received),
        ))
    return Settlement(rows, cuts)
