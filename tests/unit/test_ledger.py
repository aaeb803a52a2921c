"""Signed ledger of market records: build, verify, and catch and name each tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federates.common.messages import GRID, CurtailmentNotice, Order, Trade
from federates.market.ledger import (
    KeyRing,
    Ledger,
    bid_record,
    curtailment_record,
    leading_zero_bits,
    make_record,
    settlement_record,
    trade_record,
    verify_ledger,
)

SEED = 7
PEOPLE = ["p001", "p002", "p003"]


def interval_records(keys: KeyRing, k: int) -> list[dict]:
    """Bids, a peer trade, a grid trade, a curtailment and a settlement for interval k."""
    return [
        bid_record(keys, Order("p001", "sell", k, 1.25, 0.10)),
        bid_record(keys, Order("p002", "buy", k, 0.75 + k, 0.20)),
        bid_record(keys, Order("p003", "buy", k, 0.5, 0.30)),
        trade_record(keys, Trade(k, "p001", "p002", 0.75, 0.15)),
        trade_record(keys, Trade(k, GRID, "p003", 0.5, 0.26)),
        curtailment_record(keys, CurtailmentNotice("p001", k, 0.1, "overvoltage")),
        settlement_record(keys, k, {"participant": "p002", "net_cost_usd": 0.1125}),
    ]


def build(path: Path, seed: int = SEED, n_intervals: int = 4, difficulty_bits: int = 0) -> Path:
    keys = KeyRing.from_seed(seed, PEOPLE)
    ledger = Ledger(path, keys, difficulty_bits=difficulty_bits)
    for k in range(n_intervals):
        ledger.append_block(k, interval_records(keys, k))
    return ledger.path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, blocks: list[dict]) -> None:
    path.write_text("".join(json.dumps(b) + "\n" for b in blocks))


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return build(tmp_path / "ledger.jsonl")


def test_keys_sign_and_verify() -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    sig = keys.sign("p001", {"a": 1.5})
    assert keys.verify("p001", {"a": 1.5}, sig)
    assert not keys.verify("p002", {"a": 1.5}, sig)
    assert not keys.verify("p001", {"a": 1.5000001}, sig)
    assert set(keys.public_keys_hex()) == {*PEOPLE, "market"}
    assert all(len(h) == 64 for h in keys.public_keys_hex().values())
    with pytest.raises(ValueError):
        KeyRing.from_seed(SEED, ["market"])


def test_trade_signers() -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    peer = trade_record(keys, Trade(0, "p001", "p002", 1.0, 0.1))
    grid = trade_record(keys, Trade(0, "p001", GRID, 1.0, 0.08))
    assert peer["signer"] == ["p001", "p002"] and len(peer["signature"]) == 2
    assert grid["signer"] == ["p001", "market"]


def test_valid_ledger_verifies(ledger_path: Path) -> None:
    res = verify_ledger(ledger_path)
    assert res.ok and res.first_bad is None
    assert res.n_blocks == 5 and res.n_records == 4 * 7
    genesis = read(ledger_path)[0]
    assert verify_ledger(ledger_path, trusted_public_keys=genesis["public_keys"]).ok
    other = KeyRing.from_seed(SEED + 1, PEOPLE).public_keys_hex()
    assert "trusted" in verify_ledger(ledger_path, trusted_public_keys=other).first_bad


def test_changed_energy_is_named(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    blocks[3]["records"][3]["body"]["energy_kwh"] = 0.76
    write(ledger_path, blocks)
    res = verify_ledger(ledger_path)
    assert not res.ok
    assert res.first_bad == "block 3 record 3: signature of p001 does not verify"


def test_dropped_record_is_named(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    del blocks[2]["records"][4]
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad.startswith("block 2 record 4 missing")


def test_dropped_record_and_leaf_is_named(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    del blocks[2]["records"][4]
    del blocks[2]["record_hashes"][4]
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == (
        "block 2: record_hashes do not match records_hash"
    )


def test_dropped_block_is_named(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    del blocks[2]
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == "block 2 missing (index jumps from 1 to 3)"


def test_dropped_last_block_is_not_detectable_by_chain(ledger_path: Path) -> None:
    """Truncation at the tail leaves a valid chain; n_blocks tells the caller."""
    blocks = read(ledger_path)
    write(ledger_path, blocks[:-1])
    res = verify_ledger(ledger_path)
    assert res.ok and res.n_blocks == 4


def test_reordered_blocks_are_named(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    blocks[2], blocks[3] = blocks[3], blocks[2]
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad.startswith("block 2 out of order")


def test_renumbered_block_breaks_chain(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    blocks[2], blocks[3] = blocks[3], blocks[2]
    blocks[2]["index"], blocks[3]["index"] = 2, 3
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == "block 2: prev_hash does not match block 1"


def test_forged_signature_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    blocks = read(ledger_path)
    rec = blocks[4]["records"][1]  # p002's bid, re-signed with p003's key
    forged = make_record(keys, "bid", rec["interval"], {**rec["body"], "participant": "p003"})
    rec["signature"] = forged["signature"]
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == (
        "block 4 record 1: signature of p002 does not verify"
    )


def test_wrong_signer_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    blocks = read(ledger_path)
    rec = blocks[1]["records"][0]  # p001's offer, validly signed by p003 instead
    payload = {"domain": "tecosim-ledger-record:", "kind": "bid", "interval": 0,
               "body": rec["body"]}
    rec["signer"], rec["signature"] = "p003", keys.sign("p003", payload)
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == (
        "block 1 record 0: bid must be signed by ['p001'], not ['p003']"
    )


def test_changed_seal_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    blocks = read(ledger_path)
    blocks[2]["seal_signature"] = keys.sign("p001", {"anything": 1})
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == (
        "block 2: seal signature of market does not verify"
    )


def test_changed_nonce_is_named(ledger_path: Path) -> None:
    blocks = read(ledger_path)
    blocks[1]["nonce"] = 5
    write(ledger_path, blocks)
    assert verify_ledger(ledger_path).first_bad == "block 1: hash does not match its contents"


def test_proof_of_work(tmp_path: Path) -> None:
    path = build(tmp_path / "pow.jsonl", n_intervals=3, difficulty_bits=8)
    blocks = read(path)
    assert all(leading_zero_bits(b["hash"]) >= 8 for b in blocks)
    assert all(b["hash"].startswith("00") for b in blocks)
    assert all(b["pow_s"] >= 0.0 for b in blocks)
    assert verify_ledger(path).ok
    # same chain (hashes, nonces) regardless of pow_s timing
    again = read(build(tmp_path / "pow2.jsonl", n_intervals=3, difficulty_bits=8))
    strip = [{k: v for k, v in b.items() if k != "pow_s"} for b in blocks]
    assert strip == [{k: v for k, v in b.items() if k != "pow_s"} for b in again]


def test_lowered_difficulty_is_named(tmp_path: Path) -> None:
    path = build(tmp_path / "pow.jsonl", n_intervals=2, difficulty_bits=8)
    blocks = read(path)
    blocks[0]["difficulty_bits"] = 0
    write(path, blocks)
    # genesis difficulty is sealed: lowering it breaks its seal
    assert verify_ledger(path).first_bad == "block 0: seal signature of market does not verify"


def test_determinism(tmp_path: Path) -> None:
    a = KeyRing.from_seed(SEED, PEOPLE).public_keys_hex()
    assert a == KeyRing.from_seed(SEED, PEOPLE).public_keys_hex()
    assert a != KeyRing.from_seed(SEED + 1, PEOPLE).public_keys_hex()
    first = build(tmp_path / "a.jsonl").read_bytes()
    assert first == build(tmp_path / "b.jsonl").read_bytes()
    assert first != build(tmp_path / "c.jsonl", seed=SEED + 1).read_bytes()


def test_continue_existing_ledger(tmp_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    path = build(tmp_path / "l.jsonl", n_intervals=2)
    ledger = Ledger(path, keys)
    assert ledger.n_blocks == 3
    ledger.append_block(2, interval_records(keys, 2))
    assert path.read_bytes() == build(tmp_path / "full.jsonl", n_intervals=3).read_bytes()
    assert verify_ledger(tmp_path / "l.jsonl").ok
