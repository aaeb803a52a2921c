"""One meaning of a confirmation's prices under every mechanism (federates/market/prices.py).

References: each participant's own trades (the energy-weighted mean of their prices,
recomputed here with Fractions) and, under a uniform price, the clearing price itself
bit for bit; and the DSO's least_cost order, which under pay-as-bid must follow the
sellers' own trade prices (it sorted exactly like ``sensitivity`` when the price was
None and every seller fell back to the feed-in tariff)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from federates.common.messages import GRID, Order
from federates.controllers.dso import Constraint, plan_curtailment
from federates.market.mechanisms import clear
from federates.market.prices import with_confirmation_prices

TARIFFS = {"retail_usd_per_kwh": 0.26, "feed_in_usd_per_kwh": 0.08}


def book() -> list[Order]:
    return [Order("a", "buy", 0, 3.0, 0.25), Order("b", "buy", 0, 2.0, 0.21), Order("c", "buy", 0, 1.0, 0.12),
            Order("x", "sell", 0, 2.5, 0.10), Order("y", "sell", 0, 2.0, 0.15), Order("z", "sell", 0, 1.0, 0.20)]


def exact_mean(trades, who=None) -> float | None:
    lots = [(Fraction(t.energy_kwh), Fraction(t.price_usd_per_kwh)) for t in trades
            if GRID not in (t.seller, t.buyer) and (who is None or who in (t.seller, t.buyer))]
    if not lots:
        return None
    return float(sum(e * p for e, p in lots) / sum(e for e, _ in lots))


@pytest.mark.parametrize("topology,mechanism", [("community", "uniform_price"), ("community", "pay_as_bid"),
                                                ("community", "lp"), ("p2p", "lp"), ("hybrid", "two_level")])
def test_own_and_market_price_mean_the_same_under_every_mechanism(topology, mechanism):
    r = with_confirmation_prices(clear(topology, mechanism, book(), interval=0, **TARIFFS))
    assert r.traded_kwh > 0
    market = r.confirmations[0].market_price_usd_per_kwh
    assert all(c.market_price_usd_per_kwh == market for c in r.confirmations)
    if r.price_usd_per_kwh is not None:  # a uniform price: both prices are it, bit for bit
        assert market == r.price_usd_per_kwh
        for c in r.confirmations:
            traded = c.peer_bought_kwh + c.peer_sold_kwh > 0
            assert c.price_usd_per_kwh == (r.price_usd_per_kwh if traded else None)
    else:
        assert market == pytest.approx(exact_mean(r.trades), abs=1e-15)
    for c in r.confirmations:
        own = exact_mean(r.trades, c.participant)
        assert (c.price_usd_per_kwh is None) == (own is None)
        if own is not None:
            assert c.price_usd_per_kwh == pytest.approx(own, abs=1e-15)


def test_pay_as_bid_prices_differ_per_participant_and_drive_least_cost():
    r = with_confirmation_prices(clear("community", "pay_as_bid", book(), interval=0, **TARIFFS))
    sellers = {c.participant: c.price_usd_per_kwh for c in r.confirmations if c.peer_sold_kwh > 0}
    assert len(set(sellers.values())) > 1  # own prices, not one price for all
    # the DSO must cut 1 kW worth of relief from sellers x and y; y relieves a little
    # more per kW, x's energy is cheaper (0.175 against 0.185 USD/kWh here)
    names = ["x", "y"]
    relief = np.array([0.96, 1.0])
    cons = [Constraint("v_max", "p", 1.0, 0.01, relief)]
    export = np.array([5.0, 5.0])
    price = np.array([sellers[p] for p in names])
    assert price[0] / relief[0] < price[1] / relief[1]  # x loses less value per unit of relief
    by_cost = plan_curtailment("least_cost", cons, export, price)
    by_relief = plan_curtailment("sensitivity", cons, export, price)
    assert by_relief.cut_kw[1] > 0 and by_relief.cut_kw[0] == 0  # sensitivity: y first
    assert by_cost.cut_kw[0] > 0 and by_cost.cut_kw[1] == 0  # least cost: x first
    # with the old confirmation (price None -> every seller at the feed-in tariff) both agreed
    flat = np.full(2, TARIFFS["feed_in_usd_per_kwh"])
    assert np.array_equal(plan_curtailment("least_cost", cons, export, flat).cut_kw, by_relief.cut_kw)


@pytest.mark.feeder
def test_least_cost_and_sensitivity_curtail_differently_under_pay_as_bid(tmp_path):
    """A whole study: the very weak grid at midday under pay-as-bid. With every seller's
    confirmed price None the DSO priced them all at the feed-in tariff and least_cost
    curtailed exactly like sensitivity; with their own trade prices it does not."""
    from federates.common.config import load_config
    from runner.engine import run_inprocess
    from runner.launch import prepare_run
    from tests.conftest import REPO

    def curtailments(policy: str):
        cfg = load_config(REPO / "configs" / "very_weak_grid.yaml",
                          ["study.start=2026-06-21T10:00:00-04:00", "study.duration=4h",
                           "market.mechanism=pay_as_bid", f"controllers.curtailment.policy={policy}"])
        return run_inprocess(prepare_run(cfg, tmp_path / policy))["curtailments"]

    a, b = curtailments("least_cost"), curtailments("sensitivity")
    assert len(a) and len(b)
    assert not a.equals(b)


def _prices_as_lots(result):
    """The two prices per confirmation from every participant's own lots (the general
    path, without prices.py's uniform shortcut): ``[(own, market)]``."""
    from federates.market.prices import _mean_price

    lots, market = {}, []
    for t in result.trades:
        if GRID in (t.seller, t.buyer) or t.energy_kwh <= 0:
            continue
        lot = (t.energy_kwh, t.price_usd_per_kwh)
        lots.setdefault(t.seller, []).append(lot)
        lots.setdefault(t.buyer, []).append(lot)
        market.append(lot)
    return [(_mean_price(lots.get(c.participant, [])), _mean_price(market)) for c in result.confirmations]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mechanism", ["uniform_price", "pay_as_bid"])
def test_uniform_shortcut_equals_the_lots_bit_for_bit(seed, mechanism):
    """The uniform-price shortcut (every peer trade at one non-zero price) gives each
    confirmation the prices its own lots give, bit for bit, the other fields kept."""
    import math
    import random

    rng = random.Random(seed)
    retail, feed_in = (0.26, 0.08) if seed % 3 else (0.0, 0.0)  # seed 0, 3: every price 0.0
    orders = [Order(f"p{i:03d}", rng.choice(["buy", "sell"]), 0, rng.uniform(0.01, 5),
                    rng.uniform(0, 0.4) if seed % 3 else 0.0) for i in range(300)]
    raw = clear("community", mechanism, orders, interval=0, retail_usd_per_kwh=retail, feed_in_usd_per_kwh=feed_in)
    r = with_confirmation_prices(raw)
    want = _prices_as_lots(raw)
    assert len(r.confirmations) == len(raw.confirmations) == len(want)
    for c, c0, (own, market) in zip(r.confirmations, raw.confirmations, want, strict=True):
        assert type(c) is type(c0)
        assert (c.price_usd_per_kwh, c.market_price_usd_per_kwh) == (own, market)
        for x, y in ((c.price_usd_per_kwh, own), (c.market_price_usd_per_kwh, market)):
            assert (x is None) == (y is None) and (x is None or math.copysign(1, x) == math.copysign(1, y))
        assert vars(c) == {**vars(c0), "price_usd_per_kwh": own, "market_price_usd_per_kwh": market}
