"""Flexible devices that act on the cleared price (``prosumers.flex_dispatch: cleared``).

TESP's transactive loop (bid -> clear -> each device sets its power from the cleared
price; Fuller, Schneider and Chassin, "Analysis of residential demand response and
double-auction markets", IEEE PES GM 2011, the double-auction HVAC controller of
PNNL's Olympic Peninsula demonstration that TESP's hvac agent implements), with the
orders the community market already takes. The smallest design that closes it:

Bids (k*M + 0.25)
    The prosumer's own order (forecast load - PV + battery, its strategy's price) is
    sent as with ``planned``, without its devices. Every device that wants energy in
    ``k`` sends its own buy order for ``k`` (a :class:`DeviceBid`: one ``Order`` of the
    prosumer per device; the greedy community mechanisms clear several orders of one
    participant order by order): energy = the mean power it would draw over ``k`` as
    its comfort or charging need asks, times the interval; limit price = its bid:

    * heat pump / AC, transactive: TESP's bid ``mean + ramp x sd x (T - setpoint) /
      band`` [USD/kWh] at the base setpoint (``thermal.bid_price_usd_per_kwh``, the
      mean and sd of the prices expected over the last day); energy: the house
      simulated through ``k`` on the setpoint of its plan (``FlexDemand.plan_kw``: the
      base setpoint moved by the price it expects, as with ``planned``), so that the
      energy it bids is what it draws when it gets it.
    * EV, smart: the dearest expected price among the cheapest intervals that together
      deliver what the car still needs before its departure
      (``EvFleet.threshold_usd_per_kwh``): the bid rises as the departure nears and the
      intervals left grow fewer; with no slack left it bids the retail price (which
      every purchase clears at or below). Energy: its charger (less a demand-response
      cut) while plugged in, up to what it needs.
    * water heater, transactive: ``mean + ramp x sd x (setpoint - T) / band_c`` (a
      colder tank bids more), floored at 0; energy: its persistence forecast.
    * a device on a plain thermostat or an uncontrolled EV bids the retail price: a
      price taker, it runs whatever the price.

Own supply first (:func:`own_supply_kw`)
    A home energy manager nets its own devices against its own surplus before it
    trades. When the prosumer's own order would sell (PV and battery beyond the rest of
    its load: ``-net``), that surplus serves its devices first, dearest bid first, each
    up to its planned mean power, only a device whose bid covers the feed-in price
    (what the surplus fetches when nobody takes it). What they take leaves both the
    prosumer's sale and their orders (a device served in full sends none). Without it,
    the sale could go to the grid at feed-in while the device, bidding below the
    prosumer's own ask, was unmatched and drew the same kWh from its own roof as
    imbalance at retail. The served energy is priced at the feed-in price.

The price a device pays (:func:`paid_prices`)
    The confirmation tells the prosumer how much it bought from peers and at what mean
    price (its own price). It gives that peer energy to its buy orders in the order
    the greedy community mechanisms walk the book, dearest effective limit
    (``min(limit, retail)``) first, ties in send order; the rest of each order is
    priced at the retail price. A device pays the energy-weighted mean of its lots
    (its own supply at the feed-in price, peer energy, the rest at retail).
    Exact for the uniform price (every peer kWh at one price); under pay-as-bid the own
    price is the mean over all of the prosumer's peer trades.

    The rest is not scheduled ahead: a device's order below the retail price takes no
    backstop (``Order.backstop`` False; the market role takes what peers did not sell
    it off the prosumer's grid purchase and schedule), since the device itself decides
    after clearing whether to draw it. What a device then draws beyond its schedule is
    the prosumer's imbalance, bought from the utility at the imbalance price: the
    retail price under ``market.imbalance_price: tariff`` (the default), the price
    the device's rule assumes. A price taker (bid at retail) keeps the backstop: it
    runs whatever the price, and its energy is scheduled.

Dispatch (k*M + 0.75, after the confirmations of k; :meth:`FlexDemand.dispatch`)
    * EV: charges at its command iff its bid >= the price it pays, else waits.
    * heat pump / AC, transactive: setpoint = base setpoint + the TESP ramp offset
      (``thermal.setpoint_offset_c``: within the comfort band) at the price of the
      energy it would draw (:func:`setpoint_price`): for the share of its bid its owner
      is scheduled for (own supply, peer energy, a backstop), the price of its plan, at
      which it computed that energy; for the rest, retail. Under the settlement's
      imbalance rule (``tariff``) a kWh drawn beyond the schedule costs retail and one
      not drawn of it fetches feed-in, whatever the schedule cost: so a house whose
      energy is scheduled draws it (a lower setpoint for a cheap peer price would buy
      the extra at retail; a higher one would resell what it bought at feed-in), and
      one left unmatched sets its setpoint at retail, which it pays. With every price
      expected at retail (a study's first day: no market price seen a day earlier) the
      houses so draw as with ``planned``; the loop moves them from the second day.
    * water heater, transactive: setpoint moved by its ramp at the same price.
    * a device without an order (nothing foreseen for k) or under a demand-response
      call keeps its plan of bid time.

Import envelope (``market.network_aware: envelopes``; :func:`fill_envelope`)
    The DSO's envelopes of k reach the prosumers before the dispatch time. The room a
    customer's envelope leaves above its base forecast (``import_max_kw`` - (forecast
    load - PV + battery)) is filled by its devices' planned mean power, dearest bid
    first (a car without slack before all); a device beyond the room is deferred: the
    EV's charger turns down to what room is left (none: it waits; without slack it
    charges all the same), the heat pump / AC's setpoint moves by
    ``band_high_c`` the energy-saving way (the edge of the comfort band), the water
    heater's element is shed (back on below the use temperature). What is still
    planned above the envelope is recorded (``flex_bids.over_envelope_kwh``).

Units: kW (> 0 consumption), kWh, USD/kWh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from federates.common.messages import Confirmation, Order, peer_energy_by_order

DEVICES = ("ev", "hvac", "water_heater")
Key = tuple[int, str]  # a device of a prosumer: (site position, device)
FLEX_BIDS_COLUMNS = ("interval", "participant", "device", "bid_kwh", "own_kwh", "bid_usd_per_kwh",
                     "paid_usd_per_kwh", "runs", "planned_kwh", "deferred_kwh", "over_envelope_kwh")


@dataclass(frozen=True)
class DeviceBid:
    """One device's bid for an interval: the prosumer at site ``position``, its
    ``device`` (one of :data:`DEVICES`), the mean power [kW] it would draw over the
    interval if it ran, and its limit price [USD/kWh]."""

    position: int
    device: str
    kw: float
    price_usd_per_kwh: float


def paid_prices(buys: list[Order], confirmation: Confirmation | None, retail_usd_per_kwh: float) -> list[float]:
    """The mean price [USD/kWh] each of one participant's buy orders ``buys`` (in send
    order) pays: its confirmed peer energy given to the orders dearest effective limit
    first (ties in send order, ``messages.peer_energy_by_order``) at its own price, the
    rest at ``retail_usd_per_kwh`` (module docstring)."""
    own = None if confirmation is None else confirmation.price_usd_per_kwh
    if own is None or not math.isfinite(own):
        return [retail_usd_per_kwh] * len(buys)
    got = peer_energy_by_order(buys, confirmation.peer_bought_kwh, retail_usd_per_kwh)
    return [(m * own + (o.energy_kwh - m) * retail_usd_per_kwh) / o.energy_kwh if o.energy_kwh > 0.0 and m > 0.0
            else retail_usd_per_kwh for o, m in zip(buys, got, strict=True)]


def device_prices(orders: list[Order], device_of: dict[int, Key], confirmations: dict[str, Confirmation],
                  own_kwh: dict[Key, float], retail_usd_per_kwh: float, feed_in_usd_per_kwh: float,
                  ) -> tuple[dict[Key, float], dict[Key, float]]:
    """What each device pays and how much of it is scheduled, from the orders of one
    interval as sent (``orders``; ``device_of``: the position of each device's order ->
    its key), the participants' ``confirmations`` and the energy [kWh] each device takes
    of its owner's own supply (``own_kwh``, :func:`own_supply_kw`): per device key, the
    mean price [USD/kWh] it pays (own supply at ``feed_in_usd_per_kwh``, peer energy at
    its owner's own price, the rest at ``retail_usd_per_kwh``: :func:`paid_prices`) and
    the share of its energy its owner is scheduled for (own supply, peer energy, and the
    rest of an order with the utility's backstop; 0 without a confirmation)."""
    buys: dict[str, list[int]] = {}
    for at, o in enumerate(orders):
        if o.side == "buy":
            buys.setdefault(o.participant, []).append(at)
    ordered: dict[Key, tuple[float, float, float]] = {}  # key -> (energy, price, scheduled) [kWh, USD/kWh, kWh]
    for who, ats in buys.items():
        mine, c = [orders[a] for a in ats], confirmations.get(who)
        priced = c is not None and c.price_usd_per_kwh is not None and math.isfinite(c.price_usd_per_kwh)
        got = peer_energy_by_order(mine, c.peer_bought_kwh, retail_usd_per_kwh) if priced else [0.0] * len(mine)
        for at, o, m, price in zip(ats, mine, got, paid_prices(mine, c, retail_usd_per_kwh), strict=True):
            if at in device_of:
                ordered[device_of[at]] = (o.energy_kwh, price, o.energy_kwh if c is not None and o.backstop else m)
    paid = {key: price for key, (_, price, _) in ordered.items()}
    share = {key: sched / e for key, (e, _, sched) in ordered.items()}
    for key, own in own_kwh.items():
        e, price, sched = ordered.get(key, (0.0, feed_in_usd_per_kwh, 0.0))
        paid[key] = (own * feed_in_usd_per_kwh + e * price) / (own + e)
        share[key] = (own + sched) / (own + e)
    return paid, share


def setpoint_price(scheduled_share: float, plan_usd_per_kwh: float, retail_usd_per_kwh: float) -> float:
    """The price [USD/kWh] a thermostat (heat pump / AC, water heater) sets its setpoint
    at: its plan's price ``plan_usd_per_kwh`` (the price it expected, at which it
    computed the energy it bid) for the share ``scheduled_share`` of that energy its
    owner is scheduled for, ``retail_usd_per_kwh`` for the rest (module docstring)."""
    f = min(max(float(scheduled_share), 0.0), 1.0)
    return f * plan_usd_per_kwh + (1.0 - f) * retail_usd_per_kwh


def own_supply_kw(surplus_kw: float, kw: list[float], bids: list[float], value_usd_per_kwh: float) -> list[float]:
    """The mean power [kW] each of one prosumer's devices (planned mean powers ``kw``
    [kW], bids ``bids`` [USD/kWh]) takes from its owner's own expected surplus
    ``surplus_kw`` [kW] (PV and battery beyond the rest of its load) before bidding in
    the market: dearest bid first (ties in the order given), only a device whose bid
    covers ``value_usd_per_kwh`` [USD/kWh], what the surplus fetches when nobody else
    takes it (the feed-in price), each up to its plan (module docstring)."""
    out = [0.0] * len(kw)
    left = max(float(surplus_kw), 0.0)
    for i in sorted(range(len(bids)), key=lambda i: (-bids[i], i)):
        if left <= 0.0 or not bids[i] >= value_usd_per_kwh:
            continue
        out[i] = min(max(kw[i], 0.0), left)
        left -= out[i]
    return out


def fill_envelope(room_kw: float, planned_kw: list[float], bids: list[float], divisible: list[bool]) -> list[float]:
    """The mean power [kW] each device of one customer keeps within its envelope's
    ``room_kw`` [kW]: the devices' planned mean powers ``planned_kw`` [kW] taken dearest
    bid ``bids`` first (ties in the order given); a ``divisible`` device (an EV's
    charger) takes what room is left up to its plan, another (a thermostat) all its plan
    if it fits, else nothing (module docstring)."""
    out = [0.0] * len(planned_kw)
    left = max(float(room_kw), 0.0)
    for i in sorted(range(len(bids)), key=lambda i: (-bids[i], i)):
        want = max(planned_kw[i], 0.0)
        if want <= left + 1e-12:
            out[i] = want
        elif divisible[i]:
            out[i] = left
        left = max(left - out[i], 0.0)
    return out
