"""Bids are signed by their participants; the market clears only verified bids."""

from __future__ import annotations

from dataclasses import replace

from federates.common.messages import Order
from federates.market.ledger import KeyRing, read_blocks, sign_order, verify_ledger
from federates.market.role import MarketRole
from runner.config import validate


def test_market_rejects_forged_and_unsigned_bids(tmp_path):
    cfg = validate({"study": {"duration": "30min"}})
    participants = ["a", "b", "x", "y"]
    keys = KeyRing.from_seed(cfg.study.seed, participants)  # the prosumers' keys
    good_buy = sign_order(keys, Order("a", "buy", 0, 2.0, 0.25))
    good_sell = sign_order(keys, Order("x", "sell", 0, 2.0, 0.10))
    # b raises its bid after signing; y never signs
    forged = replace(sign_order(keys, Order("b", "buy", 0, 3.0, 0.12)), price_usd_per_kwh=0.26)
    unsigned = Order("y", "sell", 0, 3.0, 0.09)
    market = MarketRole(cfg, participants, tmp_path / "ledger.zst")
    confirmations, _ = market.on_market_time(0, [good_buy, good_sell, forged, unsigned], [], [])
    clearing = market.tables()["clearing"]
    assert int(clearing["rejected_orders"].iloc[0]) == 2
    traded_by = {c.participant for c in confirmations if c.peer_bought_kwh or c.peer_sold_kwh}
    assert traded_by == {"a", "x"}
    market.on_market_time(1, [], [], [])
    market.on_market_time(2, [], [], [])
    r = verify_ledger(tmp_path / "ledger.zst")
    assert r.ok, r.first_bad
    bids = [rec for b in read_blocks(tmp_path / "ledger.zst") for rec in b["records"]
            if rec["kind"] == "bid"]
    assert [b["body"]["participant"] for b in bids] == ["a", "x"]
    # the participant's own signature, not re-signed
    assert [s.hex() for s in bids[0]["signatures"]] == [good_buy.signature]


def test_a_large_book_is_verified_on_threads_with_the_same_answer_per_order():
    """verified_bid_records splits the signatures of a large book over threads; each
    order must still get its own answer: forged orders at odd and even places."""
    from federates.market import ledger
    from federates.market.ledger import verified_bid_records

    names = [f"p{i:02d}" for i in range(50)]
    keys = KeyRing.from_seed(3, names)
    orders = [sign_order(keys, Order(p, "sell" if i % 2 else "buy", 0, 1.0 + i, 0.1)) for i, p in enumerate(names)]
    bad = {3, 4, 17, 30, 49}
    orders = [replace(o, energy_kwh=o.energy_kwh + 1.0) if i in bad else o for i, o in enumerate(orders)]
    assert len(orders) >= ledger.PARALLEL_VERIFY_MIN
    got = [r is not None for r in verified_bid_records(keys, orders)]
    assert got == [i not in bad for i in range(len(orders))]
    one_by_one = [r is not None for o in orders for r in verified_bid_records(keys, [o])]
    assert got == one_by_one
