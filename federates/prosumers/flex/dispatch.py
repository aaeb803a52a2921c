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
      simulated through ``k`` on its base setpoint.
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

The price a device pays (:func:`paid_prices`)
    The confirmation tells the prosumer how much it bought from peers and at what mean
    price (its own price). It gives that peer energy to its buy orders in the order
    the greedy community mechanisms walk the book, dearest effective limit
    (``min(limit, retail)``) first, ties in send order; the rest of each order is
    priced at the retail price. A device pays the energy-weighted mean of its two lots.
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
    * heat pump / AC, transactive: setpoint = base setpoint + the TESP ramp offset at
      the price it pays (``thermal.setpoint_offset_c``: within the comfort band), as
      the controller sets its setpoint from the clearing price; the thermostat then
      runs the unit (on exactly when its bid at the new temperature exceeds that price).
    * water heater, transactive: setpoint moved by its ramp at the price it pays.
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
FLEX_BIDS_COLUMNS = ("interval", "participant", "device", "bid_kwh", "bid_usd_per_kwh", "paid_usd_per_kwh",
                     "runs", "planned_kwh", "deferred_kwh", "over_envelope_kwh")


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
