"""`tecosim clear` and `tecosim ledger verify` as a user runs them."""

from __future__ import annotations

import json

import pytest

from federates.common.messages import GRID, Order, Trade
from federates.market.ledger import (
    KeyRing,
    Ledger,
    bid_record,
    read_blocks,
    trade_record,
    write_blocks,
)
from tests.conftest import tecosim

BOOK = """participant,side,energy_kwh,price_usd_per_kwh
a,buy,3,0.25
b,buy,2,0.20
x,sell,4,0.10
y,sell,2,0.22
"""


@pytest.fixture
def book(tmp_path):
    p = tmp_path / "orders.csv"
    p.write_text(BOOK)
    return p


def test_clear_community_uniform_price(book):
    r = tecosim("clear", str(book), timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # by hand: bids 0.25 (3), 0.20 (2); offers 0.10 (4), 0.22 (2). a takes 3 from x,
    # b takes 1 from x; b at 0.20 < y's 0.22 stops. Price = (0.20 + 0.10) / 2.
    assert out["traded_kwh"] == pytest.approx(4.0)
    assert out["clearing_price_usd_per_kwh"] == pytest.approx(0.15)
    assert out["welfare_usd"] == pytest.approx(3 * (0.25 - 0.10) + 1 * (0.20 - 0.10))
    assert {(t["seller"], t["buyer"]) for t in out["trades"]} == {("x", "a"), ("x", "b")}
    assert out["unmatched"] == {"buy_kwh": pytest.approx(1.0), "sell_kwh": pytest.approx(2.0)}


@pytest.mark.parametrize(("topology", "mechanism"), [("community", "lp"), ("community", "pay_as_bid"),
                                                     ("p2p", "lp"), ("p2p", "admm")])
def test_every_mechanism_trades_the_same_volume_on_this_book(book, topology, mechanism):
    r = tecosim("clear", str(book), "--topology", topology, "--mechanism", mechanism, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # ADMM stops at a relative primal residual of 1e-3 (p2p.clear_p2p_admm's rel_tol)
    rel = 1e-3 if mechanism == "admm" else 1e-5
    assert out["traded_kwh"] == pytest.approx(4.0, rel=rel)
    assert out["welfare_usd"] == pytest.approx(0.55, rel=rel)
    # the decentralised mechanism reports how long its peers negotiated
    assert out["converged"] and (out["iterations"] > 0) == (mechanism == "admm")


def test_hybrid_without_mechanism_takes_its_only_one(book):
    """``--topology hybrid`` alone clears with two_level (it was refused as mechanism '')."""
    r = tecosim("clear", str(book), "--topology", "hybrid", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mechanism"] == "two_level"
    # one community (no community column): the same optimum as the community book above
    assert out["traded_kwh"] == pytest.approx(4.0) and out["welfare_usd"] == pytest.approx(0.55)


def test_bad_csv_names_row_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("participant,side,energy_kwh,price_usd_per_kwh\na,hold,3,0.2\nb,buy,-1,x\n")
    r = tecosim("clear", str(p), timeout=120)
    assert r.returncode == 2
    assert "row 2, column side" in r.stderr and "buy" in r.stderr
    assert "row 3, column energy_kwh" in r.stderr
    assert "row 3, column price_usd_per_kwh" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_mechanism_lists_the_allowed(book):
    r = tecosim("clear", str(book), "--mechanism", "vickrey", timeout=120)
    assert r.returncode == 2
    assert "uniform_price" in r.stderr and "lp" in r.stderr


@pytest.mark.slow
def test_ledger_verify_intact_and_tampered(tmp_path):
    keys = KeyRing.from_seed(7, ["p1", "p2"])
    ledger = Ledger(tmp_path, keys)
    ledger.append_block(0, [bid_record(keys, Order("p1", "sell", 0, 2.0, 0.1)),
                            trade_record(keys, Trade(0, "p1", "p2", 2.0, 0.15)),
                            trade_record(keys, Trade(0, GRID, "p2", 1.0, 0.26))])
    ledger.append_block(1, [bid_record(keys, Order("p2", "buy", 1, 1.0, 0.2))])
    r = tecosim("ledger", "verify", str(tmp_path), timeout=120)
    assert r.returncode == 0 and "intact" in r.stdout
    path = tmp_path / "ledger.zst"
    blocks = read_blocks(path)
    blocks[1]["records"][1]["body"]["energy_kwh"] = 20.0  # the peer trade
    write_blocks(path, blocks)
    r = tecosim("ledger", "verify", str(tmp_path), timeout=120)
    assert r.returncode == 1
    assert "block 1 record 1: altered" in r.stderr


def test_ledger_dump_prints_the_blocks_as_json_lines(tmp_path):
    keys = KeyRing.from_seed(7, ["p1", "p2"])
    ledger = Ledger(tmp_path, keys)
    ledger.append_block(0, [bid_record(keys, Order("p1", "sell", 0, 2.0, 0.1))])
    # a block with a trade carries its parties' acknowledgements (bytes in the file)
    ledger.append_block(0, [trade_record(keys, Trade(0, "p1", "p2", 1.0, 0.2))])
    ledger.close()
    r = tecosim("ledger", "dump", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    blocks = [json.loads(line) for line in r.stdout.splitlines()]
    assert [b["index"] for b in blocks] == [0, 1, 2]
    (rec,) = blocks[1]["records"]
    assert rec["body"]["energy_kwh"] == 2.0 and len(rec["signatures"][0]) == 128
    assert [p for p, _ in blocks[2]["acks"]] == ["p1", "p2"]
    assert all(len(sig) == 128 and int(sig, 16) >= 0 for _, sig in blocks[2]["acks"])  # Ed25519, hex


def test_clear_into_a_closed_pipe_ends_quietly(tmp_path):
    """``tecosim clear big.csv | head -c 100``: the reader leaves early; tecosim stops
    without a BrokenPipeError traceback, with the status of a process SIGPIPE ended."""
    import subprocess
    import sys

    from tests.conftest import REPO

    rows = ["participant,side,energy_kwh,price_usd_per_kwh"]
    rows += [f"b{i},buy,1,{0.2 + i * 1e-5:.5f}" for i in range(3000)]
    rows += [f"s{i},sell,1,{0.1 + i * 1e-5:.5f}" for i in range(3000)]
    big = tmp_path / "big.csv"
    big.write_text("\n".join(rows) + "\n")
    p = subprocess.Popen([sys.executable, "-m", "runner.cli", "clear", str(big)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = p.stdout.read(100)
    p.stdout.close()  # as head does
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert head.startswith(b"{")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == 141
