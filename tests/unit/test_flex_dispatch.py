"""Flexible devices dispatched from the cleared price (``prosumers.flex_dispatch:
cleared``, federates/prosumers/flex/dispatch.py): the price each device pays from its
confirmation, the envelope's room, the EV's and the heat pump's bids and what they do
at a cleared price, against hand computations; a two-interval hand case in which the
smart car charges when the market clears below its bid (and waits without the loop)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from federates.common.config import StudyFile
from federates.common.errors import ConfigError
from federates.common.grid import CustomerSite
from federates.common.messages import Confirmation, Order
from federates.prosumers.flex.demand import FlexDemand
from federates.prosumers.flex.dispatch import (
    DeviceBid,
    device_prices,
    fill_envelope,
    own_supply_kw,
    paid_prices,
    setpoint_price,
)
from federates.prosumers.flex.ev import Session
from federates.prosumers.role import ProsumersRole

RETAIL = 0.30


def _buy(kwh: float, price: float) -> Order:
    return Order(participant="p", side="buy", interval=0, energy_kwh=kwh, price_usd_per_kwh=price)


def _conf(peer_kwh: float, price: float | None, grid_kwh: float = 0.0) -> Confirmation:
    return Confirmation(participant="p", interval=0, scheduled_kwh=peer_kwh + grid_kwh, peer_bought_kwh=peer_kwh,
                        peer_sold_kwh=0.0, grid_bought_kwh=grid_kwh, grid_sold_kwh=0.0, price_usd_per_kwh=price)


# ---- the price a device pays --------------------------------------------------------------
def test_peer_energy_goes_to_the_dearest_bids_first_the_rest_at_retail():
    """Orders of 1, 2 and 1 kWh bidding 0.20, 0.40 (above retail: counts as retail) and
    0.20; 2.5 kWh bought from peers at 0.15: the 0.40 order gets 2 kWh (all 0.15), the
    first 0.20 order (send order breaks the tie) 0.5 kWh: (0.5 x 0.15 + 0.5 x 0.30) / 1 =
    0.225, the last one nothing: 0.30."""
    paid = paid_prices([_buy(1.0, 0.20), _buy(2.0, 0.40), _buy(1.0, 0.20)], _conf(2.5, 0.15, 1.5), RETAIL)
    assert paid == pytest.approx([0.225, 0.15, 0.30], abs=1e-15)


def test_without_a_confirmation_or_peer_trade_every_order_pays_retail():
    assert paid_prices([_buy(1.0, 0.2)], None, RETAIL) == [RETAIL]
    assert paid_prices([_buy(1.0, 0.2)], _conf(0.0, None, 1.0), RETAIL) == [RETAIL]


def test_the_envelope_room_is_filled_dearest_bid_first():
    """3 kW of room, thermostats planning 2, 2 and 1 kW bidding 0.1, 0.3, 0.2: the 0.3 one
    (2 kW) then the 0.2 one (1 kW) fill it; the 0.1 one does not fit and gets nothing.
    A divisible device (a charger) takes what room is left: 1 kW of its 2."""
    assert fill_envelope(3.0, [2.0, 2.0, 1.0], [0.1, 0.3, 0.2], [False] * 3) == [0.0, 2.0, 1.0]
    assert fill_envelope(3.0, [2.0, 2.0], [0.1, 0.3], [True, False]) == [1.0, 2.0]
    assert fill_envelope(-1.0, [0.0, 1.0], [0.1, 0.2], [False, True]) == [0.0, 0.0]


# ---- the devices in FlexDemand --------------------------------------------------------------
def _flex(retail: list[float], **devices) -> tuple[FlexDemand, StudyFile]:
    cfg = StudyFile.model_validate({
        "study": {"start": "2026-06-21T20:00:00-04:00", "duration": f"{15 * len(retail)}min", "seed": 3},
        "prosumers": {"count": 1, "flex_dispatch": "cleared", **devices}})
    start = pd.Timestamp(cfg.study.start).tz_convert(cfg.site.timezone)
    flex = FlexDemand(cfg, np.array([0]), ["p"], start=start,
                      retail_usd_per_kwh=lambda k: retail[min(k, len(retail) - 1)])
    return flex, cfg


def _car_needing_one_interval(flex: FlexDemand, s: int) -> float:
    """The one car plugged in from step 0 to the end of interval 1 (2 s steps), needing
    exactly what its charger gives in one interval; no other session comes."""
    ev = flex.ev
    need = ev.p.charger_kw * s * ev.step_h
    ev._plug(0, Session(dt.date(2026, 6, 21), 20.0, 20.5, need), 0, 2 * s, need)
    ev._next_step[:] = 10**9
    return need


def _play_interval(flex: FlexDemand, k: int, s: int) -> None:
    for g in range(k * s, (k + 1) * s):
        flex.step_kw(g, 25.0)


@pytest.mark.parametrize("cleared_usd_per_kwh, charges_in_0", [(0.15, True), (0.25, False)])
def test_smart_car_charges_when_the_cleared_price_is_below_its_bid(cleared_usd_per_kwh, charges_in_0):
    """Retail 0.30 in interval 0 and 0.21 in interval 1 (a time-of-use step); the car
    needs one interval of charging before it leaves at the end of interval 1. Its bid
    for 0 is 0.21 (the dearest price among the cheapest intervals that cover its need:
    interval 1's). Interval 0 clears at 0.15, all its energy from peers: it pays 0.15 <=
    0.21 and charges in 0 (planned from the expected prices it would have waited for
    interval 1). At 0.25 > 0.21 it waits; in interval 1 it has no slack left, bids the
    retail price and charges. Either way it leaves full."""
    flex, cfg = _flex([RETAIL, 0.21], ev={"share": 1.0, "control": "smart"})
    s = cfg.timeline.steps_per_interval
    need = _car_needing_one_interval(flex, s)
    t_out = np.full(s, 25.0)
    flex.plan_kw(0, t_out)
    assert flex._ev_cmd[0] == 0.0  # the plan of the expected prices: wait for interval 1
    (bid,) = flex.offers(0, t_out, RETAIL)
    assert (bid.device, bid.price_usd_per_kwh) == ("ev", 0.21)
    assert bid.kw * cfg.timeline.interval_h == pytest.approx(need, rel=1e-12)
    energy = bid.kw * cfg.timeline.interval_h
    (paid,) = paid_prices([_buy(energy, bid.price_usd_per_kwh)], _conf(energy, cleared_usd_per_kwh), RETAIL)
    assert paid == cleared_usd_per_kwh
    flex.dispatch(0, t_out, {(0, "ev"): paid})
    _play_interval(flex, 0, s)
    got_0 = flex._acc["ev_kwh"][0]
    assert got_0 == pytest.approx(need if charges_in_0 else 0.0, abs=1e-12)
    flex.plan_kw(1, t_out)
    bids = flex.offers(1, t_out, 0.21)
    if charges_in_0:
        assert bids == []  # full: nothing to bid for
    else:
        (bid,) = bids
        assert bid.price_usd_per_kwh == 0.21  # no slack: the retail price
        flex.dispatch(1, t_out, {(0, "ev"): 0.21})  # no peer energy: retail
    _play_interval(flex, 1, s)
    assert flex.ev.need_kwh[0] == pytest.approx(0.0, abs=1e-12)
    rows = pd.DataFrame(flex.bid_rows)
    assert rows.runs.tolist() == ([True] if charges_in_0 else [False, True])


def test_heat_pump_bids_as_tesp_and_sets_its_setpoint_from_the_price_it_pays():
    """An AC (transactive, setpoint 24, ramp 2, band +2/-1 degC) in a house at 25.5 degC,
    with the day's expected prices 0.10, 0.20, 0.30 and the 0.30 of this interval (mean
    0.225, sd 0.0829): it bids mean + ramp sd (25.5 - 24) / 2 (Fuller et al. 2011's
    controller); at a paid price of 0.35 its setpoint rises by min((0.35 - mean) / (ramp
    sd) x 2, 2) degC, at 0.10 it falls by max((0.10 - mean) / (ramp sd) x 1, -1) (within
    the band), and
    a house that pays its own bid is set to its present temperature (indifferent)."""
    flex, cfg = _flex([RETAIL], hvac={"share": 1.0, "control": "transactive"})
    flex.prices.expected.update({-3: 0.10, -2: 0.20, -1: 0.30})
    flex.houses.t_in_c[:] = 25.5
    s = cfg.timeline.steps_per_interval
    t_out = np.full(s, 33.0)
    flex.plan_kw(0, t_out)
    xs = np.array([0.10, 0.20, 0.30, 0.30])
    mean, sd = xs.mean(), xs.std()
    (bid,) = flex.offers(0, t_out, RETAIL)
    assert bid.price_usd_per_kwh == pytest.approx(mean + 2.0 * sd * 1.5 / 2.0, rel=1e-12)
    state = flex.houses.state()
    for paid, want in ((0.35, 24.0 + min((0.35 - mean) / (2 * sd) * 2.0, 2.0)),
                       (0.10, 24.0 + max((0.10 - mean) / (2 * sd) * 1.0, -1.0)),
                       (bid.price_usd_per_kwh, 25.5)):
        flex.houses.restore(state)
        flex.dispatch(0, t_out, {(0, "hvac"): paid})
        assert flex._setpoint_c[0] == pytest.approx(want, abs=1e-12)
        assert 23.0 <= flex._setpoint_c[0] <= 26.0


def test_an_import_envelope_turns_the_cheapest_bid_down_and_a_car_without_slack_still_charges():
    """A car (bid 0.21) and a water heater (thermostat: bids retail) behind an envelope
    whose room leaves the car half its charger once the tank, the dearer bid, has its
    plan: the car charges at half power (half its energy of the interval deferred).
    Without slack the car charges in full all the same: what it plans above a room of
    nothing is recorded."""
    flex, cfg = _flex([RETAIL, 0.21], ev={"share": 1.0, "control": "smart"},
                      water_heater={"share": 1.0, "control": "thermostat"})
    s, h = cfg.timeline.steps_per_interval, cfg.timeline.interval_h
    need = _car_needing_one_interval(flex, s)
    t_out = np.full(s, 25.0)
    flex.plan_kw(0, t_out)
    bids = {b.device: b for b in flex.offers(0, t_out, RETAIL)}
    assert set(bids) == {"ev", "water_heater"} and bids["water_heater"].price_usd_per_kwh == RETAIL
    paid = {(0, "ev"): 0.15, (0, "water_heater"): RETAIL}  # both would run at these prices
    flex.dispatch(0, t_out, paid, room_kw=np.array([bids["water_heater"].kw + 0.5 * bids["ev"].kw]))
    rows = pd.DataFrame(flex.bid_rows).set_index("device")
    assert rows.loc["ev", "runs"] and flex._ev_cmd[0] == pytest.approx(0.5 * flex.ev.p.charger_kw, rel=1e-12)
    assert rows.loc["ev", "deferred_kwh"] == pytest.approx(0.5 * need, rel=1e-12)
    assert rows.loc["water_heater", "deferred_kwh"] == 0.0
    assert rows.over_envelope_kwh.sum() == pytest.approx(0.0, abs=1e-12)
    _play_interval(flex, 0, s)
    assert flex._acc["ev_kwh"][0] == pytest.approx(0.5 * need, rel=1e-12)
    # interval 1: no slack; a room of nothing: the car charges, what it plans is over the envelope
    flex.bid_rows.clear()
    flex.plan_kw(1, t_out)
    bids = {b.device: b for b in flex.offers(1, t_out, 0.21)}
    flex.dispatch(1, t_out, {(0, d): 0.21 for d in bids}, room_kw=np.array([0.0]))
    rows = pd.DataFrame(flex.bid_rows).set_index("device")
    assert flex._ev_cmd[0] == flex.ev.p.charger_kw
    assert rows.loc["ev", "over_envelope_kwh"] == pytest.approx(0.5 * need, rel=1e-12)
    assert rows.loc["ev", "planned_kwh"] == pytest.approx(bids["ev"].kw * h, rel=1e-12)


def test_cleared_needs_a_greedy_community_mechanism():
    from federates.common.config.checks import cross_checks

    def problems(**market):
        cfg = StudyFile.model_validate({"prosumers": {"flex_dispatch": "cleared"}, "market": market})
        return [p for p in cross_checks(cfg, base_dir=__import__("pathlib").Path(".")) if
                p.field == "prosumers.flex_dispatch"]

    assert problems(topology="community", mechanism="uniform_price") == []
    assert problems(topology="community", mechanism="pay_as_bid") == []
    (p,) = problems(topology="p2p", mechanism="lp")
    assert "uniform_price or pay_as_bid" in p.allowed
    with pytest.raises(Exception, match="flex_dispatch"):
        StudyFile.model_validate({"prosumers": {"flex_dispatch": "sometimes"}})
    assert ConfigError  # the CLI reports the problem as a ConfigError (test_config checks the CLI path)


def test_a_device_bid_without_backstop_is_not_scheduled_beyond_what_peers_sold_it():
    """Community uniform price, retail 0.30: a seller offers 1.5 kWh at 0.10; prosumer p
    bids 1 kWh for its house at 0.26 (backstop) and 2 kWh for its car at 0.20 without
    backstop. The walk matches p's 0.26 bid (1 kWh), then 0.5 kWh of the car's; the
    price is (0.20 + 0.10) / 2 = 0.15. The car's unmatched 1.5 kWh comes off p's grid
    purchase and schedule: p is scheduled 1.5 kWh, all of it from the peer, and its
    car pays (0.5 x 0.15 + 1.5 x 0.30) / 2 = 0.2625 for its whole bid."""
    from federates.market.community import clear_uniform_price
    from federates.market.role import _without_backstop

    orders = [Order("s", "sell", 0, 1.5, 0.10), Order("p", "buy", 0, 1.0, 0.26),
              Order("p", "buy", 0, 2.0, 0.20, backstop=False)]
    r = clear_uniform_price(orders, interval=0, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=0.08)
    (before,) = [c for c in r.confirmations if c.participant == "p"]
    assert (before.peer_bought_kwh, before.grid_bought_kwh) == (1.5, 1.5)
    out = _without_backstop(r, orders, RETAIL)
    (c,) = [c for c in out.confirmations if c.participant == "p"]
    assert (c.peer_bought_kwh, c.grid_bought_kwh, c.scheduled_kwh) == (1.5, 0.0, 1.5)
    assert [t for t in out.trades if t.buyer == "p" and t.seller == "grid"] == []
    assert paid_prices(orders[1:], c, RETAIL) == pytest.approx([0.15, (0.5 * 0.15 + 1.5 * RETAIL) / 2], abs=1e-15)


# ---- own supply first, and the schedule the thermostat keeps ----------------------------------
def test_own_surplus_serves_the_dearest_device_first():
    """3 kW of the prosumer's own surplus, devices planning 2, 2 and 1.5 kW bidding 0.20,
    0.30 and 0.05, feed-in 0.08: the 0.30 one takes its 2 kW, the 0.20 one the 1 kW left;
    the 0.05 one bids below what the surplus fetches at feed-in and takes none. No
    surplus: nothing."""
    assert own_supply_kw(3.0, [2.0, 2.0, 1.5], [0.20, 0.30, 0.05], 0.08) == [1.0, 2.0, 0.0]
    assert own_supply_kw(5.0, [2.0, 2.0, 1.5], [0.20, 0.30, 0.05], 0.08) == [2.0, 2.0, 0.0]
    assert own_supply_kw(0.0, [2.0], [0.30], 0.08) == [0.0]
    assert own_supply_kw(-1.0, [2.0], [0.30], 0.08) == [0.0]


def test_a_prosumer_nets_its_devices_against_its_own_surplus_before_it_trades():
    """One prosumer whose own order would sell 2 kW (15 min: 0.5 kWh), an AC bidding 1 kW
    at 0.30 and a car 1.5 kW at 0.21 (default tariff: retail 0.26, feed-in 0.08). The AC
    takes 1 kW of the surplus, the car the 1 kW left: the prosumer sells nothing, the
    AC sends no order, the car bids for the rest, 0.5 kW x 0.25 h = 0.125 kWh at 0.21,
    without backstop. Unmatched, the car pays (0.25 kWh x 0.08 + 0.125 x 0.26) / 0.375 =
    0.14 and is scheduled for 2/3 of its energy (its own supply); 0.125 kWh from peers
    at 0.15: (0.02 + 0.125 x 0.15) / 0.375, all of it scheduled. The AC pays the
    feed-in price, all of it scheduled. Without the netting the prosumer offered 0.5
    kWh while its devices bid for 0.625 kWh."""
    cfg = StudyFile.model_validate({"study": {"duration": "1h"}, "prosumers": {"count": 1, "flex_dispatch": "cleared"}})
    role = ProsumersRole(cfg, [CustomerSite("p000", 0, "bus0", "a", "t0", "load0")])
    bids = [DeviceBid(0, "ev", 1.5, 0.21), DeviceBid(0, "hvac", 1.0, 0.30)]
    net = role._net_of_own_supply(np.array([-2.0]), bids, 0.08)
    assert net.tolist() == [0.0]
    assert role._own_kw == {(0, "ev"): 1.0, (0, "hvac"): 1.0}
    (order,) = role._with_device_orders(0, [], bids)
    assert (order.side, order.energy_kwh, order.price_usd_per_kwh, order.backstop) == ("buy", 0.125, 0.21, False)
    assert role._device_of == {0: (0, "ev")}
    own = {key: kw * 0.25 for key, kw in role._own_kw.items()}
    unmatched = Confirmation(participant="p000", interval=0, scheduled_kwh=0.0, peer_bought_kwh=0.0,
                             peer_sold_kwh=0.0, grid_bought_kwh=0.0, grid_sold_kwh=0.0, price_usd_per_kwh=None)
    paid, share = device_prices([order], role._device_of, {"p000": unmatched}, own, 0.26, 0.08)
    assert paid == pytest.approx({(0, "ev"): 0.14, (0, "hvac"): 0.08}, abs=1e-15)
    assert share == pytest.approx({(0, "ev"): 2.0 / 3.0, (0, "hvac"): 1.0}, abs=1e-15)
    matched = Confirmation(participant="p000", interval=0, scheduled_kwh=0.125, peer_bought_kwh=0.125,
                           peer_sold_kwh=0.0, grid_bought_kwh=0.0, grid_sold_kwh=0.0, price_usd_per_kwh=0.15)
    paid, share = device_prices([order], role._device_of, {"p000": matched}, own, 0.26, 0.08)
    assert paid[(0, "ev")] == pytest.approx((0.25 * 0.08 + 0.125 * 0.15) / 0.375, abs=1e-15)
    assert share[(0, "ev")] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("scheduled_share", [1.0, 0.0])
def test_a_scheduled_heat_pump_draws_what_it_bid_an_unmatched_one_sets_its_setpoint_at_retail(scheduled_share):
    """The AC of the TESP case above, its plan made at 0.20 (the market price of the same
    interval a day earlier, below the 0.30 retail; expected prices of the day 0.10, 0.20,
    0.30, 0.20: mean 0.20, the plan's setpoint the base 24 degC): it bids the energy it
    draws on that setpoint. It pays a peer price of 0.12. Scheduled for all of it, it
    keeps its plan's setpoint (setpoint_price: 0.20) and draws exactly what it bid (a
    setpoint for 0.12 would pre-cool, and the extra kWh would be imbalance at retail);
    scheduled for none, it sets its setpoint at retail, 24 + (0.30 - 0.20) / (2 sd) x 2
    degC (sd = 0.0707), and draws less."""
    flex, cfg = _flex([RETAIL], hvac={"share": 1.0, "control": "transactive"})
    flex.prices.expected.update({-3: 0.10, -2: 0.20, -1: 0.30})
    flex.prices.market[-flex.prices.day] = 0.20
    flex.houses.t_in_c[:] = 25.5
    s, h = cfg.timeline.steps_per_interval, cfg.timeline.interval_h
    t_out = np.full(s, 33.0)
    flex.plan_kw(0, t_out)
    assert flex._setpoint_c[0] == 24.0
    (bid,) = flex.offers(0, t_out, RETAIL)
    assert setpoint_price(scheduled_share, 0.20, RETAIL) == pytest.approx(0.30 - 0.10 * scheduled_share, abs=1e-15)
    flex.dispatch(0, t_out, {(0, "hvac"): 0.12}, scheduled={(0, "hvac"): scheduled_share})
    sd = np.array([0.10, 0.20, 0.30, 0.20]).std()
    want = 24.0 if scheduled_share == 1.0 else 24.0 + (0.30 - 0.20) / (2.0 * sd) * 2.0
    assert flex._setpoint_c[0] == pytest.approx(want, abs=1e-12)
    _play_interval(flex, 0, s)
    drawn = flex._acc["hvac_kwh"][0]
    if scheduled_share == 1.0:
        assert drawn == pytest.approx(bid.kw * h, rel=1e-12)
    else:
        assert drawn < bid.kw * h - 0.1


def test_a_day_of_one_price_has_no_spread_and_moves_no_setpoint():
    """Five intervals expected at 0.21 (numpy's std of them is 2.8e-17, not 0, and
    0.21 - their mean -2.8e-17: a ramp offset of -0.5 x band): the spread is exactly 0
    and the transactive AC keeps its base setpoint, 24 degC."""
    assert np.array([0.21] * 5).std() > 0.0  # the float noise this guards against
    flex, cfg = _flex([0.21], hvac={"share": 1.0, "control": "transactive"})
    flex.prices.expected.update({j: 0.21 for j in range(-4, 0)})
    flex.plan_kw(0, np.full(cfg.timeline.steps_per_interval, 30.0))
    assert flex.prices.stats(0) == (0.21, 0.0)
    assert flex._setpoint_c[0] == 24.0
