"""Bids are signed by their participants; the market clears only verified bids."""

from __future__ import annotations

from dataclasses import replace

from federates.common.config import validate
from federates.common.messages import Order
from federates.market.ledger import KeyRing, read_blocks, sign_order, verify_ledger
from federates.market.role import MarketRole


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
    confirmations, _, _ = market.on_market_time(0, [good_buy, good_sell, forged, unsigned], [], [])
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
    """verified_bids splits the signatures of a large book over threads; each order
    must still get its own answer (and its own payload): forged orders at odd and even
    places."""
    from federates.market import ledger
    from federates.market.ledger import _order_payload, verified_bids

    names = [f"p{i:02d}" for i in range(50)]
    keys = KeyRing.from_seed(3, names)
    orders = [sign_order(keys, Order(p, "sell" if i % 2 else "buy", 0, 1.0 + i, 0.1)) for i, p in enumerate(names)]
    bad = {3, 4, 17, 30, 49}
    orders = [replace(o, energy_kwh=o.energy_kwh + 1.0) if i in bad else o for i, o in enumerate(orders)]
    assert len(orders) >= ledger.PARALLEL_VERIFY_MIN
    checked = verified_bids(keys, orders)
    got = [v is not None for v in checked]
    assert got == [i not in bad for i in range(len(orders))]
    one_by_one = [v is not None for o in orders for v in verified_bids(keys, [o])]
    assert got == one_by_one
    assert all(v == (_order_payload(o), bytes.fromhex(o.signature)) for o, v in zip(orders, checked, strict=True) if v)


def test_the_acknowledgements_of_a_large_block_made_on_threads_equal_one_by_one(monkeypatch):
    """acknowledge_trades signs a block of many parties on several threads; each party's
    signature must be the one it makes alone, in the order of first appearance."""
    from federates.common.messages import GRID, Trade
    from federates.market import ledger
    from federates.market.ledger import acknowledge_trades, trade_record

    names = [f"p{i:02d}" for i in range(40)]
    keys = KeyRing.from_seed(5, names)
    trades = [Trade(2, names[i], names[(i * 7 + 3) % 40], 0.5 + i, 0.12) for i in range(40)]
    trades += [Trade(2, GRID, names[i], 0.25, 0.26) for i in range(0, 40, 3)]
    records = [trade_record(keys, t) for t in trades]
    assert len(records) >= ledger.PARALLEL_VERIFY_MIN
    threaded = acknowledge_trades(keys, 2, records)
    monkeypatch.setattr(ledger, "PARALLEL_VERIFY_MIN", 10**9)
    assert threaded == acknowledge_trades(keys, 2, records)
    assert [p for p, _ in threaded] == list(dict.fromkeys(
        p for t in trades for p in (t.seller, t.buyer) if p != GRID))


def test_parallel_map_keeps_each_answer_in_its_place_and_raises():
    import time

    import pytest

    from federates.market.ledger import _parallel_map

    def slow_square(x: int) -> int:
        time.sleep(0.001 * (x % 3))  # releases the GIL: the threads interleave
        return x * x

    items = list(range(50))
    assert _parallel_map(slow_square, items) == [x * x for x in items]
    assert _parallel_map(slow_square, items[:3]) == [0, 1, 4]

    def fails_at_31(x: int) -> int:
        if x == 31:
            raise ValueError("31")
        return slow_square(x)

    with pytest.raises(ValueError, match="31"):
        _parallel_map(fails_at_31, items)


def test_parallel_map_does_not_wait_for_a_stalled_helper(monkeypatch):
    """A helper that holds an item far longer than an item takes (descheduled on a busy
    machine) does not hold up the answer: the calling thread computes the item itself."""
    import threading
    import time

    from federates.market import ledger

    if ledger._verify_pool()[0] is None:
        return  # one CPU: no helpers
    main = threading.get_ident()
    stalled = []

    def fn(x: int) -> int:
        if threading.get_ident() != main and not stalled:
            stalled.append(x)
            time.sleep(1.0)  # the helper's first item: stalled
        else:
            time.sleep(0.0005)
        return -x

    t0 = time.perf_counter()
    got = ledger._parallel_map(fn, list(range(20)))
    assert got == [-x for x in range(20)]
    assert time.perf_counter() - t0 < 0.5
    time.sleep(1.0)  # let the stalled helper finish before other tests use the pool
