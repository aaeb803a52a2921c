"""The distributed P2P clearing (``market.mechanism: admm_distributed``): the market's
coordinator (federates.market.admm_distributed) and the prosumer agents
(federates.prosumers.admm_agents) exchanging requests and replies round by round.

References: the central ADMM ``clear_p2p_admm`` (the same algorithm: with perfect comms
the same iterates, bit for bit), the central LP ``clear_p2p_lp`` (the optimum: the
welfare within 0.5 %), energy conservation of the fallback (every order's energy to the
grid), and the timeline's phases (the rounds fit between the market time and +0.75).
"""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.admm import decode_admm, encode_admm
from federates.common.comms import CommsLink
from federates.common.config import load_config, validate
from federates.common.errors import ConfigError
from federates.common.messages import GRID, Order
from federates.common.timeline import (
    ADMM_MAX_ITERATIONS,
    ADMM_POLL_ROUNDS,
    PHASE_ADMM_GATE_S,
    PHASE_MARKET_S,
    Timeline,
)
from federates.market.admm_distributed import AdmmCoordinator
from federates.market.p2p import build_book, clear_p2p_admm, clear_p2p_lp
from federates.prosumers.admm_agents import AdmmAgents
from runner.engine import run_inprocess
from runner.launch import prepare_run
from tests.conftest import REPO

RETAIL, FEED_IN = 0.26, 0.08


def random_orders(seed: int, n: int = 40) -> list[Order]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        side = "sell" if i % 2 else "buy"
        out.append(Order(f"p{i:02d}", side, 3, float(rng.uniform(0.1, 2.0)), float(rng.uniform(0.05, 0.3))))
    return out


PERFECT = CommsLink()


def distributed(orders: list[Order], *, comms: CommsLink = PERFECT, seed: int = 7,
                max_iterations: int = ADMM_MAX_ITERATIONS, patience: int = 4, parts: int = 1,
                charges=None, wire: bool = False) -> AdmmCoordinator:
    """The coordinator and the agents (in ``parts`` groups) exchanging one round at a
    time with no latency (the engine's loop); ``wire``: through :func:`encode_admm` text
    both ways, as the federation's messages."""
    book = build_book(orders, interval=3, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN, charges=charges)
    coord = AdmmCoordinator(book, comms=comms, seed=seed, max_iterations=max_iterations, patience=patience)
    names = sorted({o.participant for o in orders})
    groups = [AdmmAgents(names[i::parts], comms, seed) for i in range(parts)]
    for g in groups:
        g.hold(3, orders)
    replies = []
    for h in range(2 * ADMM_MAX_ITERATIONS + 1):
        requests = coord.on_round(h, replies)
        if coord.done:
            return coord
        if wire:
            requests = decode_admm(encode_admm(3, requests))[2]
        replies = [r for g in groups for r in g.replies(3, requests)]
        if wire:
            replies = decode_admm(encode_admm(3, replies))[2]
    raise AssertionError("no end by the gate")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_perfect_comms_gives_the_central_admm_bit_for_bit(seed):
    orders = random_orders(seed)
    charges = {(s.participant, b.participant): 0.002 * ((i + j) % 5)
               for i, s in enumerate(orders) if s.side == "sell" for j, b in enumerate(orders) if b.side == "buy"}
    central, stats = clear_p2p_admm(orders, interval=3, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN,
                                    charges=charges, max_iter=ADMM_MAX_ITERATIONS)
    coord = distributed(orders, charges=charges, parts=3, wire=True)
    got = coord.result
    assert stats.converged and coord.stats.converged
    assert coord.stats.iterations == stats.iterations
    assert coord.stats.primal_residual_kwh == stats.primal_residual_kwh  # every iterate, exactly
    assert coord.stats.dual_residual_usd == stats.dual_residual_usd
    assert got.trades == central.trades and got.welfare_usd == central.welfare_usd
    assert coord.row["rounds"] == 2 * stats.iterations  # a step per round: nobody waits
    assert coord.row["requests_sent"] == coord.row["replies_received"]


def test_perfect_comms_welfare_is_within_half_a_percent_of_the_lp():
    for seed in (5, 6):
        orders = random_orders(seed)
        lp = clear_p2p_lp(orders, interval=3, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
        got = distributed(orders).result
        assert lp.welfare_usd > 0.5
        assert lp.welfare_usd * 0.995 <= got.welfare_usd <= lp.welfare_usd + 1e-9


def test_losses_are_the_same_however_the_agents_are_split():
    lossy = CommsLink(loss_rate=0.1, applies_to=("admm",))
    one, three = distributed(random_orders(8), comms=lossy), distributed(random_orders(8), comms=lossy, parts=3)
    assert one.row == three.row and one.result.trades == three.result.trades
    assert 0 < one.row["requests_lost"] < one.row["requests_sent"]
    assert one.row["replies_received"] < one.row["requests_sent"] - one.row["requests_lost"]  # replies lost too


def test_lost_iterates_cost_iterations_and_rounds_but_still_converge_near_the_lp():
    orders = random_orders(9)
    lp = clear_p2p_lp(orders, interval=3, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
    clean = distributed(orders)
    lossy = distributed(orders, comms=CommsLink(loss_rate=0.05, applies_to=("admm",)))
    assert lossy.stats.converged
    assert lossy.row["rounds"] > clean.row["rounds"]  # the market waited for lost replies
    assert lossy.result.welfare_usd <= lp.welfare_usd + 1e-9
    assert lossy.result.welfare_usd >= 0.99 * lp.welfare_usd


def test_not_converged_by_the_gate_everything_goes_to_the_grid():
    """The fallback: no peer trade; each participant's bids bought from the grid at
    retail and offers sold to it at feed-in, energy for energy."""
    orders = random_orders(10)
    coord = distributed(orders, max_iterations=3)
    r = coord.result
    assert not r.converged and r.iterations == 3 and coord.row["fallback"]
    assert r.traded_kwh == 0 and r.welfare_usd == 0 and not r.peer_trades
    bought = sum(t.energy_kwh for t in r.trades if t.seller == GRID)
    sold = sum(t.energy_kwh for t in r.trades if t.buyer == GRID)
    assert bought == pytest.approx(sum(o.energy_kwh for o in orders if o.side == "buy"), abs=1e-12)
    assert sold == pytest.approx(sum(o.energy_kwh for o in orders if o.side == "sell"), abs=1e-12)
    assert {t.price_usd_per_kwh for t in r.trades if t.seller == GRID} == {RETAIL}
    assert {t.price_usd_per_kwh for t in r.trades if t.buyer == GRID} == {FEED_IN}


def test_no_test_of_convergence_until_every_order_has_answered():
    """Stopping rule: a peer whose replies never arrive keeps the clearing from being
    called converged (stale values could look converged), up to the gate."""
    orders = random_orders(11)
    book = build_book(orders, interval=3, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
    coord = AdmmCoordinator(book, comms=CommsLink(), seed=7, max_iterations=60, patience=2)
    agents = AdmmAgents(sorted({o.participant for o in orders}), CommsLink(), 7)
    agents.hold(3, orders)
    silent = book.offers[0].participant
    replies = []
    for h in range(2 * ADMM_MAX_ITERATIONS + 1):
        requests = coord.on_round(h, replies)
        if coord.done:
            break
        replies = [r for r in agents.replies(3, requests) if r.participant != silent]
    assert not coord.stats.converged and coord.stats.iterations == 60
    assert coord.row["rounds"] == 60 * (2 + 1)  # each seller step waits its patience (2), each buyer step 1


def test_an_agent_steps_only_on_an_order_it_sent():
    orders = random_orders(12, n=6)
    book = build_book(orders, interval=3, retail_usd_per_kwh=RETAIL, feed_in_usd_per_kwh=FEED_IN)
    coord = AdmmCoordinator(book, comms=CommsLink(), seed=7, max_iterations=5, patience=1)
    agents = AdmmAgents(sorted({o.participant for o in orders}), CommsLink(), 7)
    agents.hold(3, [o for o in orders if o.side == "buy"])  # the offers were never sent
    with pytest.raises(ValueError, match="did not send"):
        agents.replies(3, coord.on_round(0, []))


def test_the_rounds_fit_between_the_market_time_and_the_next_phase():
    tl = Timeline(3600, 900, 60)
    for k in (0, 3):
        t0 = k * 900
        assert tl.admm_time(k, 0) == tl.market_time(k)
        assert tl.admm_time(k, 2 * ADMM_MAX_ITERATIONS) - t0 == pytest.approx(PHASE_ADMM_GATE_S, abs=1e-9)
        last = tl.admm_reply_time(k, ADMM_POLL_ROUNDS - 1) - t0
        assert PHASE_MARKET_S < last < 0.75 - 1e-5  # +0.75 is the prosumers' dispatch phase
        with pytest.raises(ValueError, match="gate"):
            tl.admm_time(k, 2 * ADMM_MAX_ITERATIONS + 1)


def test_config_names_the_gate_field_and_its_bound():
    with pytest.raises(ConfigError) as e:
        validate({"market": {"topology": "p2p", "mechanism": "admm_distributed",
                             "admm_max_iterations": ADMM_MAX_ITERATIONS + 1}})
    assert "market.admm_max_iterations" in str(e.value) and str(ADMM_MAX_ITERATIONS) in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate({"comms": {"applies_to": ["admm", "votes"]}})
    assert "comms.applies_to" in str(e.value) and "admm" in str(e.value)
    with pytest.raises(ConfigError) as e:  # no iterates to delay without the distributed clearing
        validate({"market": {"topology": "p2p", "mechanism": "admm"}, "comms": {"applies_to": ["admm"]}})
    assert "comms.applies_to" in str(e.value) and "admm_distributed" in str(e.value)
    validate({"market": {"topology": "p2p", "mechanism": "admm_distributed"}, "comms": {"applies_to": ["admm"]}})


@pytest.mark.feeder
def test_the_p2p_study_clears_as_the_central_admm_and_near_the_lp(tmp_path):
    """The default p2p study's midday window (8 intervals, all cleared), run in process:
    the distributed clearing gives the central ADMM's tables exactly, and each
    interval's welfare is within 0.5 % of the LP's on the same accepted orders."""
    where = ["study.start=2026-06-21T11:00:00-04:00", "study.duration=2h"]
    central = run_inprocess(prepare_run(load_config(REPO / "configs" / "p2p_admm.yaml", where), tmp_path / "c"))
    cfg = load_config(REPO / "configs" / "p2p_admm.yaml", [*where, "market.mechanism=admm_distributed"])
    t = run_inprocess(prepare_run(cfg, tmp_path / "d"))
    for name in ("trades", "clearing", "settlements", "bids", "voltages"):
        assert t[name].equals(central[name]), name
    rounds = t["admm_rounds"]
    assert rounds["converged"].all() and not rounds["fallback"].any() and (rounds["n_pairs"] > 0).all()
    assert (rounds["iterations"] == t["clearing"]["iterations"]).all()
    for k, bids in t["bids"].groupby("interval"):
        orders = [Order(b.participant, b.side, int(k), float(b.energy_kwh), float(b.price_usd_per_kwh))
                  for b in bids.itertuples() if b.energy_kwh > 0]
        lp = clear_p2p_lp(orders, interval=int(k), retail_usd_per_kwh=cfg.tariff.retail(int(k)),
                          feed_in_usd_per_kwh=cfg.tariff.feed_in(int(k)))
        got = float(t["clearing"].loc[t["clearing"]["interval"] == k, "welfare_usd"].iloc[0])
        assert lp.welfare_usd * 0.995 <= got <= lp.welfare_usd + 1e-9, k
    # docs/outputs.md documents the table this mechanism adds, column by column, with its types
    from tests.unit.test_outputs_doc import DOC, Doc, _type

    documented = Doc(DOC.read_text()).columns["admm_rounds"]
    assert {c: _type(rounds[c]) for c in rounds.columns} == documented
    assert list(rounds.columns) == list(documented)
