"""Settlement of an interval: hand-computed cases and conservation properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.messages import GRID, GRID_OPERATOR, Confirmation, Order, Trade
from federates.market.community import clear_uniform_price
from federates.market.settlement import SettlementRow, settle_interval

RETAIL = 0.26
FEED_IN = 0.08
PRICE = 0.17
K = 4


def settle(confs, trades, metered, curtailed=None, participants=None) -> dict[str, SettlementRow]:
    rows = settle_interval(
        K, confs, trades, metered, curtailed or {},
        retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN, participants=participants,
    ).rows
    return {r.participant: r for r in rows}


def c(p: str, pb=0.0, ps=0.0, gb=0.0, gs=0.0) -> Confirmation:
    return Confirmation(p, K, pb + gb - ps - gs, pb, ps, gb, gs, PRICE)


# S sells 2 kWh to B at 0.17 USD/kWh
ONE_TRADE = [Trade(K, "S", "B", 2.0, PRICE)]
ONE_CONFS = [c("S", ps=2.0), c("B", pb=2.0)]
A = pytest.approx


def test_no_deviation():
    # peer trade settles at 2 * 0.17 = 0.34 USD; no imbalance
    r = settle(ONE_CONFS, ONE_TRADE, {"S": -2.0, "B": 2.0})
    s, b = r["S"], r["B"]
    assert list(r) == ["B", "S"]
    assert (s.imbalance_kwh, b.imbalance_kwh) == (0.0, 0.0)
    assert s.peer_received_usd == A(0.34) and b.peer_paid_usd == A(0.34)
    assert s.net_cost_usd == A(-0.34) and b.net_cost_usd == A(0.34)
    assert s.grid_bought_kwh == s.grid_sold_kwh == b.grid_bought_kwh == 0.0
    assert not s.missing_reading and not b.missing_reading


def test_over_consumption_bought_at_retail():
    # B meters 2.5: imbalance +0.5 kWh at 0.26 = 0.13 USD; net 0.34 + 0.13 = 0.47
    b = settle(ONE_CONFS, ONE_TRADE, {"S": -2.0, "B": 2.5})["B"]
    assert b.imbalance_kwh == 0.5 and b.grid_bought_kwh == 0.5
    assert b.grid_paid_usd == A(0.13) and b.net_cost_usd == A(0.47)


def test_under_delivery_by_a_seller():
    # S meters -1.5 (scheduled -2), not curtailed: its peer sale still settles in full,
    # the missing 0.5 kWh is bought from the grid at retail: -0.34 + 0.13 = -0.21
    r = settle(ONE_CONFS, ONE_TRADE, {"S": -1.5, "B": 2.0})
    s, b = r["S"], r["B"]
    assert s.imbalance_kwh == 0.5 and s.peer_sold_kwh == 2.0
    assert s.grid_paid_usd == A(0.13) and s.net_cost_usd == A(-0.21)
    assert b.net_cost_usd == A(0.34)


def test_under_export_sold_at_feed_in():
    # S meters -2.5: 0.5 kWh more export, sold at 0.08 = 0.04 USD; net -0.34 - 0.04
    s = settle(ONE_CONFS, ONE_TRADE, {"S": -2.5, "B": 2.0})["S"]
    assert s.imbalance_kwh == -0.5 and s.grid_sold_kwh == 0.5
    assert s.grid_received_usd == A(0.04) and s.net_cost_usd == A(-0.38)


def test_dso_curtailment_of_a_seller_with_a_peer_buyer():
    # S curtailed 0.5 kWh, meters -1.5: its peer sale is cut to 1.5 kWh (0.255 USD);
    # adjusted schedule -2 + 0.5 = -1.5 -> no imbalance, no penalty.
    # B still meters 2.0 and its schedule is unchanged: it gets 1.5 from S (0.255 USD)
    # and 0.5 from the grid at retail (0.13 USD): 0.385 USD.
    r = settle(ONE_CONFS, ONE_TRADE, {"S": -1.5, "B": 2.0}, {"S": 0.5})
    s, b = r["S"], r["B"]
    assert s.curtailed_kwh == 0.5 and s.imbalance_kwh == 0.0
    assert s.peer_sold_kwh == 1.5 and s.peer_received_usd == A(0.255)
    assert s.net_cost_usd == A(-0.255)
    assert b.scheduled_kwh == 2.0 and b.imbalance_kwh == 0.0
    assert b.peer_bought_kwh == 1.5 and b.grid_bought_kwh == 0.5
    assert b.peer_paid_usd == A(0.255) and b.grid_paid_usd == A(0.13)
    assert b.net_cost_usd == A(0.385)


def test_curtailment_pro_rata_then_grid_then_capped():
    # S sells 2 to B1, 1 to B2 (peer, 0.17) and 1 to the grid (0.08): scheduled -4.
    trades = [Trade(K, "S", "B1", 2.0, PRICE), Trade(K, "S", "B2", 1.0, PRICE),
              Trade(K, "S", GRID, 1.0, FEED_IN)]
    confs = [c("S", ps=3.0, gs=1.0), c("B1", pb=2.0), c("B2", pb=1.0)]
    met = {"B1": 2.0, "B2": 1.0}
    # curtailed 1.5 <= peer sales 3: B1 loses 1.5*2/3 = 1.0, B2 loses 1.5*1/3 = 0.5
    r = settle(confs, trades, {**met, "S": -2.5}, {"S": 1.5})
    assert r["B1"].peer_bought_kwh == 1.0 and r["B1"].grid_bought_kwh == 1.0
    assert r["B2"].peer_bought_kwh == 0.5 and r["B2"].grid_bought_kwh == 0.5
    # S: 1.5 peer (0.255) + 1 grid (0.08) = 0.335 received, no imbalance
    assert r["S"].imbalance_kwh == 0.0 and r["S"].net_cost_usd == A(-0.335)
    # curtailed 3.5: all 3 peer kWh cut, then 0.5 of the grid sale -> 0.5 * 0.08 = 0.04
    r = settle(confs, trades, {**met, "S": -0.5}, {"S": 3.5})
    assert r["S"].peer_sold_kwh == 0.0 and r["S"].grid_sold_kwh == 0.5
    assert r["S"].imbalance_kwh == 0.0 and r["S"].net_cost_usd == A(-0.04)
    assert r["B1"].grid_bought_kwh == 2.0 and r["B2"].grid_bought_kwh == 1.0
    # curtailed 6 > scheduled sales 4: applied 4, the rest was unscheduled export
    r = settle(confs, trades, {**met, "S": 0.0}, {"S": 6.0})
    assert r["S"].curtailed_kwh == 4.0 and r["S"].curtailed_reported_kwh == 6.0
    assert r["S"].imbalance_kwh == 0.0 and r["S"].net_cost_usd == 0.0


def test_curtailment_of_a_buyer_is_not_applied():
    b = settle(ONE_CONFS, ONE_TRADE, {"S": -2.0, "B": 2.0}, {"B": 1.0})["B"]
    assert b.curtailed_kwh == 0.0 and b.curtailed_reported_kwh == 1.0 and b.imbalance_kwh == 0.0


def test_missing_reading_counts_as_scheduled_and_is_flagged():
    r = settle(ONE_CONFS, ONE_TRADE, {"S": -2.0})
    b = r["B"]
    assert b.missing_reading and b.metered_kwh == 2.0 and b.imbalance_kwh == 0.0
    assert b.net_cost_usd == A(0.34)
    # a curtailed seller without reading: metered = adjusted schedule (-1.5), no penalty
    s = settle(ONE_CONFS, ONE_TRADE, {"B": 2.0}, {"S": 0.5})["S"]
    assert s.missing_reading and s.metered_kwh == -1.5 and s.imbalance_kwh == 0.0


def test_participant_without_confirmation_settles_with_the_grid():
    # P did not bid and consumed 1 kWh: bought at retail; Q has no reading either
    r = settle([], [], {"P": 1.0}, participants=["Q", "P"])
    assert list(r) == ["Q", "P"]
    assert r["P"].grid_bought_kwh == 1.0 and r["P"].net_cost_usd == A(0.26)
    assert r["Q"].missing_reading and r["Q"].net_cost_usd == 0.0


def test_other_interval_items_are_ignored():
    r = settle([Confirmation("B", K + 1, 2.0, 2.0, 0, 0, 0, PRICE)],
               [Trade(K + 1, "S", "B", 2.0, PRICE)], {"B": 0.0})
    assert list(r) == ["B"] and r["B"].scheduled_kwh == 0.0 and r["B"].net_cost_usd == 0.0


# --------------------------------------------------------------------------- properties

ids = st.sampled_from(["p0", "p1", "p2", "p3", "p4"])
kwh = st.floats(0.0, 5.0, allow_nan=False)
book = st.lists(st.builds(Order, ids, st.sampled_from(["buy", "sell"]), st.just(K), kwh,
                          st.floats(0.0, 0.4, allow_nan=False)), max_size=10)
maybe_meter = st.one_of(st.none(), st.floats(-6.0, 6.0, allow_nan=False))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(book, st.dictionaries(ids, maybe_meter), st.dictionaries(ids, st.floats(0.0, 8.0)),
       st.sampled_from(["tariff", "clearing", "dual"]))
def test_conservation_on_random_cleared_books(orders, meters, curtailed, rule):
    from federates.market.prices import with_confirmation_prices
    from federates.market.settlement import imbalance_price, market_price_of

    cr = with_confirmation_prices(clear_uniform_price(orders, interval=K, retail_usd_per_kwh=RETAIL,
                                                      feed_in_usd_per_kwh=FEED_IN))
    metered = {p: v for p, v in meters.items() if v is not None}
    rows = settle_interval(K, cr.confirmations, cr.trades, metered, curtailed,
                           retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN, imbalance_rule=rule).rows
    tol = dict(rel=1e-9, abs=1e-9)
    # every bill is the sum of its parts; the imbalance is priced by the rule
    clearing = market_price_of(list(cr.confirmations), K)
    system = math.fsum(r.imbalance_kwh for r in rows)
    for r in rows:
        parts = r.market_cost_usd + r.replacement_cost_usd + r.imbalance_cost_usd + r.charges_usd
        assert r.net_cost_usd == A(parts, **tol)
        price = imbalance_price(r.imbalance_kwh, system, rule, RETAIL, FEED_IN, clearing)
        assert r.imbalance_cost_usd == A(r.imbalance_kwh * price, **tol)
    # money among peers is conserved
    assert math.fsum(r.peer_paid_usd for r in rows) == A(math.fsum(r.peer_received_usd for r in rows), **tol)
    assert math.fsum(r.peer_bought_kwh for r in rows) == A(math.fsum(r.peer_sold_kwh for r in rows), **tol)
    confs = {x.participant: x for x in cr.confirmations}
    for r in rows:
        # settled energy equals metered energy
        net = r.peer_bought_kwh + r.grid_bought_kwh - r.peer_sold_kwh - r.grid_sold_kwh
        assert net == A(r.metered_kwh, **tol)
        assert r.imbalance_kwh == A(r.metered_kwh - r.scheduled_kwh - r.curtailed_kwh, **tol)
        assert r.missing_reading == (r.participant not in metered)
        if r.missing_reading:
            assert r.imbalance_kwh == 0.0
        paid = r.peer_paid_usd + r.grid_paid_usd - r.peer_received_usd - r.grid_received_usd
        assert r.net_cost_usd == A(paid, **tol)
        # curtailment never exceeds the scheduled sales, and is never paid
        x = confs.get(r.participant)
        sched_sales = (x.peer_sold_kwh + x.grid_sold_kwh) if x else 0.0
        assert 0.0 <= r.curtailed_kwh <= sched_sales * (1 + 1e-12) + 1e-12
        if x:
            assert r.peer_sold_kwh <= x.peer_sold_kwh * (1 + 1e-12) + 1e-12
            assert r.peer_bought_kwh <= x.peer_bought_kwh * (1 + 1e-12) + 1e-12
        assert min(r.peer_bought_kwh, r.peer_sold_kwh, r.grid_bought_kwh, r.grid_sold_kwh) >= 0
    # total grid energy: what the grid sells minus buys equals the community's net metered
    grid_net = math.fsum(r.grid_bought_kwh - r.grid_sold_kwh for r in rows)
    assert grid_net == A(math.fsum(r.metered_kwh for r in rows), **tol)


# ------------------------------------------- exact integers vs the Fraction reference

from federates.market.prices import with_confirmation_prices  # noqa: E402
from federates.market.settlement import IMBALANCE_PRICES, settle_interval_reference  # noqa: E402

nonfinite_or_meter = st.one_of(maybe_meter, st.just(float("nan")), st.sampled_from([0.5, -1.25, 2.0]))


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(book, st.dictionaries(ids, nonfinite_or_meter), st.dictionaries(ids, st.floats(0.0, 8.0)),
       st.booleans(), st.sampled_from(IMBALANCE_PRICES))
def test_integer_settlement_equals_fraction_reference(orders, meters, curtailed, named, rule):
    """settle_interval (exact integers) == settle_interval_reference (Fraction): every
    row bit for bit (repr), and the same trade cuts; with curtailments that cut peer
    sales pro rata (the reference path), grid sales only, or none; under every
    imbalance price rule."""
    cr = with_confirmation_prices(clear_uniform_price(orders, interval=K, retail_usd_per_kwh=RETAIL,
                                                      feed_in_usd_per_kwh=FEED_IN))
    metered = {p: v for p, v in meters.items() if v is not None}
    kw = {"retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN, "imbalance_rule": rule,
          "participants": ["p4", "p0", "p2"] if named else None}
    a = settle_interval(K, cr.confirmations, cr.trades, metered, curtailed, **kw)
    b = settle_interval_reference(K, cr.confirmations, cr.trades, metered, curtailed, **kw)
    assert a == b and repr(a) == repr(b)  # the rows and the trade cuts
    assert [list(vars(r).items()) for r in a.rows] == [list(vars(r).items()) for r in b.rows]  # ledger bodies


def test_integer_settlement_grid_sale_cut_and_nonfinite_inputs():
    confs = [c("S", gs=2.0), c("B", gb=1.0)]
    trades = [Trade(K, "S", GRID, 2.0, FEED_IN), Trade(K, GRID, "B", 1.0, RETAIL)]
    for curtailed in ({"S": 0.3}, {"S": 5.0}, {}):
        kw = {"retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN}
        a = settle_interval(K, confs, trades, {"S": -1.7, "B": 1.1}, curtailed, **kw)
        b = settle_interval_reference(K, confs, trades, {"S": -1.7, "B": 1.1}, curtailed, **kw)
        assert repr(a) == repr(b)  # the rows and the trade cuts
        assert [x for _, x in a.trade_cuts] == ([min(curtailed["S"], 2.0)] if curtailed else [])
    with pytest.raises(ValueError, match="curtailed_kwh"):
        settle_interval(K, confs, trades, {}, {"S": float("inf")},
                        retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)


# ---- network charges (settlement rule 3a) ----------------------------------------------
def test_network_charge_is_paid_by_the_seller_to_the_grid_operator():
    """The review's case: a 0.05 USD/kWh charge on 2 kWh at 0.25 USD/kWh. The buyer pays
    0.50, the seller receives 0.50 and pays 0.10, the grid operator collects 0.10: the
    seller keeps price minus charge and no money vanishes."""
    trades = [Trade(K, "S", "B", 2.0, 0.25, fee_usd=0.10)]
    r = settle(ONE_CONFS, trades, {"S": -2.0, "B": 2.0})
    s, b, dso = r["S"], r["B"], r[GRID_OPERATOR]
    assert list(r) == ["B", "S", GRID_OPERATOR]
    assert b.peer_paid_usd == A(0.50) and b.net_cost_usd == A(0.50) and b.charges_paid_usd == 0.0
    assert s.peer_received_usd == A(0.50) and s.charges_paid_usd == A(0.10)
    assert s.net_cost_usd == A(-0.40)  # 0.25 - 0.05 per kWh
    assert dso.charges_received_usd == A(0.10) and dso.net_cost_usd == A(-0.10)
    assert not dso.missing_reading and dso.metered_kwh == 0.0 and dso.imbalance_kwh == 0.0
    assert sum(x.net_cost_usd for x in r.values()) == A(0.0, abs=1e-12)


def test_network_charge_follows_the_energy_delivered_when_curtailed():
    """A seller curtailed by 0.5 of its 2 kWh delivers 1.5 kWh: it pays three quarters
    of the trade's charge, and what the buyer then buys from the grid carries none."""
    trades = [Trade(K, "S", "B", 2.0, 0.25, fee_usd=0.10)]
    r = settle(ONE_CONFS, trades, {"S": -1.5, "B": 2.0}, curtailed={"S": 0.5})
    assert r["S"].peer_sold_kwh == 1.5 and r["S"].charges_paid_usd == A(0.075)
    assert r[GRID_OPERATOR].charges_received_usd == A(0.075)
    assert r["B"].grid_bought_kwh == A(0.5) and r["B"].charges_paid_usd == 0.0


def test_negative_fee_is_refused():
    with pytest.raises(ValueError, match="fee_usd"):
        settle(ONE_CONFS, [Trade(K, "S", "B", 2.0, 0.25, fee_usd=-0.1)], {"S": -2.0, "B": 2.0})


# ---- imbalance price (settlement rule 4) and the bill split ----------------------------
def test_imbalance_priced_by_tariff_clearing_or_dual():
    """S sells 2 kWh to B at 0.17 (the market price); B imports 0.5 kWh more than
    scheduled and S delivers 0.2 kWh less (both short, with the community: +0.7 - 0.3),
    C, with no trade, exports 0.3 kWh (against the community's imbalance)."""
    confs = [Confirmation("S", K, -2.0, 0.0, 2.0, 0.0, 0.0, PRICE, PRICE),
             Confirmation("B", K, 2.0, 2.0, 0.0, 0.0, 0.0, PRICE, PRICE)]
    metered = {"S": -1.8, "B": 2.5, "C": -0.3}
    cost = {}
    for rule in ("tariff", "clearing", "dual"):
        rows = settle_interval(K, confs, ONE_TRADE, metered, {}, retail_usd_per_kwh=RETAIL,
                               feed_in_usd_per_kwh=FEED_IN, imbalance_rule=rule).rows
        cost[rule] = {r.participant: r.imbalance_cost_usd for r in rows}
        for r in rows:  # the split adds up; the market part is the trade
            assert r.net_cost_usd == A(r.market_cost_usd + r.imbalance_cost_usd, abs=1e-15)
        assert {r.participant: r.market_cost_usd for r in rows} == {"B": A(0.34), "C": 0.0, "S": A(-0.34)}
    assert cost["tariff"] == {"B": A(0.5 * RETAIL), "C": A(-0.3 * FEED_IN), "S": A(0.2 * RETAIL)}
    assert cost["clearing"] == {"B": A(0.5 * PRICE), "C": A(-0.3 * PRICE), "S": A(0.2 * PRICE)}
    # dual: with the community (short) at the tariff, against it at the market price
    assert cost["dual"] == {"B": A(0.5 * RETAIL), "C": A(-0.3 * PRICE), "S": A(0.2 * RETAIL)}
    # without a market price (no peer trade) every rule is the tariff
    alone = settle_interval(K, [], [], {"C": -0.3}, {}, retail_usd_per_kwh=RETAIL,
                            feed_in_usd_per_kwh=FEED_IN, imbalance_rule="clearing").rows
    assert alone[0].imbalance_cost_usd == A(-0.3 * FEED_IN)
    with pytest.raises(ValueError, match=r"market\.imbalance_price is 'spot'; allowed: tariff, clearing, dual"):
        settle_interval(K, confs, ONE_TRADE, metered, {}, retail_usd_per_kwh=RETAIL,
                        feed_in_usd_per_kwh=FEED_IN, imbalance_rule="spot")


def test_bill_split_with_replacement_and_charges():
    """A curtailed peer seller (pro rata: the buyer replaces the energy at retail) on a
    trade with a network charge: market + replacement + imbalance + charges = net."""
    trades = [Trade(K, "S", "B", 2.0, PRICE, fee_usd=0.04)]
    rows = {r.participant: r for r in settle_interval(
        K, ONE_CONFS, trades, {"S": -1.5, "B": 2.0}, {"S": 0.5},
        retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN).rows}
    b, s, dso = rows["B"], rows["S"], rows[GRID_OPERATOR]
    assert b.market_cost_usd == A(1.5 * PRICE) and b.replacement_cost_usd == A(0.5 * RETAIL)
    assert s.market_cost_usd == A(-1.5 * PRICE) and s.charges_usd == A(0.04 * 1.5 / 2.0)
    assert dso.charges_usd == A(-0.04 * 1.5 / 2.0) and dso.net_cost_usd == A(dso.charges_usd)
    for r in rows.values():
        assert r.net_cost_usd == A(r.market_cost_usd + r.replacement_cost_usd + r.imbalance_cost_usd
                                   + r.charges_usd, abs=1e-15)


# ---- loss charges (settlement rule 3b, market.settle_losses) ----------------------------
def test_loss_charges_are_paid_to_the_grid_operator():
    loss = {"S": 0.02, "B": 0.05}
    rows = {r.participant: r for r in settle_interval(
        K, ONE_CONFS, ONE_TRADE, {"S": -2.0, "B": 2.0}, {}, retail_usd_per_kwh=RETAIL,
        feed_in_usd_per_kwh=FEED_IN, loss_kwh=loss, loss_price_usd_per_kwh=PRICE).rows}
    assert rows["S"].charges_paid_usd == A(0.02 * PRICE) and rows["B"].charges_paid_usd == A(0.05 * PRICE)
    assert rows[GRID_OPERATOR].charges_received_usd == A(0.07 * PRICE)
    assert rows["B"].net_cost_usd == A(2.0 * PRICE + 0.05 * PRICE)
    assert rows["B"].charges_usd == A(0.05 * PRICE) and rows["B"].market_cost_usd == A(2.0 * PRICE)
    with pytest.raises(ValueError, match=r"loss_kwh\['S'\] must be >= 0"):
        settle_interval(K, ONE_CONFS, ONE_TRADE, {}, {}, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN,
                        loss_kwh={"S": -0.1}, loss_price_usd_per_kwh=PRICE)
    with pytest.raises(ValueError, match="loss_kwh needs loss_price_usd_per_kwh"):
        settle_interval(K, ONE_CONFS, ONE_TRADE, {}, {}, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN,
                        loss_kwh={"S": 0.1})


# ---- demand response (settlement rule 3c, controllers.demand_response) -----------------
def test_demand_response_is_paid_by_the_grid_operator_up_to_the_call():
    """Hand case, 15-min interval, DR price 0.50 USD/kWh. B was asked 2 kW (0.5 kWh) and
    cut 0.3 kWh: paid 0.3 x 0.5 = 0.15 USD. C was asked 1 kW (0.25 kWh) and cut 0.4 kWh:
    paid only the 0.25 kWh asked, 0.125 USD. The grid operator pays both, 0.275 USD; B's
    bill is its peer purchase 2 x 0.17 = 0.34 less 0.15 = 0.19 USD."""
    from federates.common.messages import DemandResponseDelivery
    from federates.market.books import money_flows
    from federates.market.settlement import dr_paid_kwh

    deliveries = [DemandResponseDelivery("B", K, 2.0, 0.3, "v_min", "B"),
                  DemandResponseDelivery("C", K, 1.0, 0.4, "thermal", "line.l1"),
                  DemandResponseDelivery("B", K + 1, 5.0, 1.0, "v_min", "B")]  # another interval
    dr = dr_paid_kwh(deliveries, K, 0.25)
    assert dr == {"B": A(0.3), "C": A(0.25)}
    settled = settle_interval(K, ONE_CONFS, ONE_TRADE, {"S": -2.0, "B": 2.0, "C": 0.0}, {},
                              retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN, participants=["S", "B", "C"],
                              dr_kwh=dr, dr_price_usd_per_kwh=0.5)
    rows = {r.participant: r for r in settled.rows}
    assert list(rows) == ["S", "B", "C", GRID_OPERATOR]
    b, cc, s, dso = rows["B"], rows["C"], rows["S"], rows[GRID_OPERATOR]
    assert (b.dr_kwh, b.dr_received_usd, b.dr_paid_usd, b.dr_usd) == (A(0.3), A(0.15), 0.0, A(-0.15))
    assert (cc.dr_kwh, cc.dr_received_usd, cc.net_cost_usd) == (A(0.25), A(0.125), A(-0.125))
    assert b.net_cost_usd == A(0.34 - 0.15) and b.market_cost_usd == A(0.34)
    assert s.dr_kwh == 0.0 and s.net_cost_usd == A(-0.34)
    # the grid operator: no meter, no energy, pays both
    assert (dso.metered_kwh, dso.imbalance_kwh, dso.missing_reading) == (0.0, 0.0, False)
    assert dso.dr_paid_usd == A(0.275) and dso.net_cost_usd == A(0.275) and dso.dr_usd == A(0.275)
    for r in rows.values():  # the bill's five parts
        assert r.net_cost_usd == A(r.market_cost_usd + r.replacement_cost_usd + r.imbalance_cost_usd
                                   + r.charges_usd + r.dr_usd, abs=1e-15)
    # every DR dollar paid is received, and the whole interval's bills sum to what the utility nets
    assert sum(r.dr_paid_usd for r in rows.values()) == A(sum(r.dr_received_usd for r in rows.values()))
    flows = money_flows(settled.rows, ONE_TRADE, [], retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN,
                        dr_payments_usd=[0.3 * 0.5, 0.25 * 0.5])
    for flow, expected, actual in flows:
        assert actual == A(expected, abs=1e-12), flow
    assert {f for f, _, _ in flows} >= {"demand response paid by the grid operator",
                                        "demand response received by the customers"}
    # the same interval without demand response: the integer path, no DR money, no DSO row
    plain = settle_interval(K, ONE_CONFS, ONE_TRADE, {"S": -2.0, "B": 2.0, "C": 0.0}, {},
                            retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN, participants=["S", "B", "C"])
    assert [r.participant for r in plain.rows] == ["S", "B", "C"]
    assert all(r.dr_kwh == r.dr_usd == 0.0 for r in plain.rows)


def test_demand_response_inputs_are_checked():
    with pytest.raises(ValueError, match="dr_kwh needs dr_price_usd_per_kwh"):
        settle_interval(K, ONE_CONFS, ONE_TRADE, {}, {}, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN,
                        dr_kwh={"B": 0.1})
    with pytest.raises(ValueError, match=r"dr_kwh\['B'\] must be >= 0"):
        settle_interval(K, ONE_CONFS, ONE_TRADE, {}, {}, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN,
                        dr_kwh={"B": -0.1}, dr_price_usd_per_kwh=0.5)
