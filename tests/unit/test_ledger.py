"""Signed ledger of market records: build, verify, and catch and name each tampering.

One test per property ``verify_ledger`` proves (see its docstring), each tampering
with a written file (``read_blocks`` / ``write_blocks``: decode and re-encode without
re-sealing) and checking that verify fails and names the problem:

1. the file decodes block by block          -> test_truncated_file_is_named, test_not_a_ledger
2. block 0 is the genesis, keys trusted     -> test_valid_ledger_verifies, test_fake_genesis_is_named
3. consecutive block indices                -> test_dropped_block_is_named, test_reordered_blocks_are_named
4. the hash chain                           -> test_renumbered_block_breaks_chain
5. participant signatures (genesis keys)    -> test_changed_bid_is_named, test_forged_signature_is_named,
                                               test_unknown_signer_is_named, test_dropped_signature_is_named
6. trades acknowledged by seller and buyer  -> test_changed_trade_is_named,
                                               test_dropped_acknowledgement_is_named,
                                               test_forged_acknowledgement_is_named
7. records vs the sealed Merkle root        -> test_changed_authority_record_is_named,
   (altered / missing / extra / moved)         test_dropped_record_is_named, test_added_record_is_named,
                                               test_reordered_records_are_named,
                                               test_dropped_record_and_locator_is_named
8. the authority's seal over each header    -> test_changed_seal_is_named, test_changed_header_is_named,
                                               test_lowered_difficulty_is_named
9. each block's hash                        -> test_changed_nonce_is_named
10. proof of work                           -> test_proof_of_work, test_missing_work_is_named
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federates.common.messages import GRID, CurtailmentNotice, Order, Trade
from federates.market.ledger import (
    KeyRing,
    Ledger,
    acknowledge_trades,
    bid_record,
    curtailment_record,
    leading_zero_bits,
    make_record,
    read_blocks,
    record_leaf,
    record_payload,
    settlement_record,
    sign_order,
    trade_record,
    verify_ledger,
    write_blocks,
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
    ledger.close()
    return ledger.path


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return build(tmp_path / "ledger.zst")


def test_a_limit_member_writes_the_bytes_of_its_plain_name(tmp_path):
    """In-process a curtailment notice carries a ``Limit`` member, through HELICS its
    decoded plain string: both ledgers are the same bytes (a str column either way)."""
    from federates.common.limits import Limit

    keys = KeyRing.from_seed(SEED, PEOPLE)
    paths = []
    for name, limits in (("member", [Limit.V_MAX, Limit.THERMAL]), ("plain", ["v_max", "thermal"]),
                         ("mixed", [Limit.V_MAX, "thermal"])):
        ledger = Ledger(tmp_path / f"{name}.zst", keys, difficulty_bits=0)
        ledger.append_block(0, [curtailment_record(keys, CurtailmentNotice("p001", 0, 0.1, lim))
                                for lim in limits])
        ledger.close()
        paths.append(ledger.path)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    assert verify_ledger(paths[0]).ok
    rec_a, rec_b = read_blocks(paths[0])[-1]["records"]
    assert type(rec_a["body"]["limit"]) is str and rec_b["body"]["limit"] == "thermal"


def tampered(path: Path, edit) -> str | None:
    blocks = read_blocks(path)
    edit(blocks)
    write_blocks(path, blocks)
    res = verify_ledger(path)
    assert not res.ok
    return res.first_bad


def test_keys_sign_and_verify() -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    sig = keys.sign("p001", {"a": 1.5})
    assert keys.verify("p001", {"a": 1.5}, sig)
    assert not keys.verify("p002", {"a": 1.5}, sig)
    assert not keys.verify("p001", {"a": 1.5000001}, sig)
    assert not keys.verify("p001", {"a": 1.5}, "zz")
    assert set(keys.public_keys_hex()) == {*PEOPLE, "market"}
    assert all(len(h) == 64 for h in keys.public_keys_hex().values())
    with pytest.raises(ValueError):
        KeyRing.from_seed(SEED, ["market"])


def test_signatures_are_rfc8032_ed25519() -> None:
    """PyNaCl (libsodium) signs as any RFC 8032 implementation: the same deterministic
    signature as OpenSSL's (through the cryptography package, a test dependency)."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import (
        ed25519 as crypto,  # the test extra installs it
    )

    keys = KeyRing.from_seed(SEED, PEOPLE)
    seed = hashlib.sha256(f"{SEED}:p001".encode()).digest()
    other = crypto.Ed25519PrivateKey.from_private_bytes(seed)
    assert keys.sign_bytes("p001", b"message") == other.sign(b"message")


def test_authority_records_carry_no_second_signature() -> None:
    """The market's records rely on the seal; trades on their parties' acknowledgements."""
    keys = KeyRing.from_seed(SEED, PEOPLE)
    peer = trade_record(keys, Trade(0, "p001", "p002", 1.0, 0.1))
    grid = trade_record(keys, Trade(0, "p001", GRID, 1.0, 0.08))
    other = trade_record(keys, Trade(0, GRID, "p003", 2.0, 0.26))
    settle = settlement_record(keys, 0, {"participant": "p001"})
    assert peer["signatures"] == grid["signatures"] == settle["signatures"] == []
    acks = acknowledge_trades(keys, 0, [peer, settle, grid, other])
    assert [a[0] for a in acks] == ["p001", "p002", "p003"]  # GRID's side: the seal
    # p001 signs its two trades of the block at once
    msg = (b'{"domain":"tecosim-ledger-trades:","interval":0,"participant":"p001"}'
           + record_leaf(peer) + record_leaf(grid))
    assert keys.verify_bytes("p001", msg, acks[0][1])
    import federates.market.ledger as L
    for who in ("p001", 'q"\\é'):
        head = L.canonical_json({"domain": "tecosim-ledger-trades:", "interval": 3, "participant": who})
        assert L._ack_message(3, who, []) == head.encode()


def test_bid_keeps_the_participants_signature() -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    order = sign_order(keys, Order("p001", "sell", 3, 1.0, 0.1, bus="b1", phase="a"))
    rec = bid_record(keys, order)
    assert rec["signatures"] == [bytes.fromhex(order.signature)]
    assert "signature" not in rec["body"]



_ids = st.one_of(st.sampled_from(["p001", "", "650.1", "a"]), st.text(max_size=6),
                 st.integers(0, 3), st.none())
_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5),
                     st.sampled_from([0.0, -0.0, 1e-300, 1.5, 1e300]))


@settings(max_examples=400, deadline=None)
@given(participant=_ids, side=st.one_of(st.sampled_from(["buy", "sell"]), _ids),
       interval=st.one_of(st.integers(0, 10**6), st.booleans(), st.floats(0, 99)),
       energy=_numbers, price=_numbers, bus=_ids, phase=_ids, community=_ids,
       backstop=st.one_of(st.booleans(), st.sampled_from([0, 1, None, ""])))
def test_bid_payload_spelled_out_as_canonical_json(participant, side, interval, energy, price,
                                                   bus, phase, community, backstop) -> None:
    """The bid payload spelled out from the order's fields (``_order_payload``, what
    orders are signed and verified over) is ``record_payload``'s canonical JSON of its
    bid body byte for byte, and raises where it raises (NaN, infinity), for any field
    values an Order may carry."""
    import federates.market.ledger as L

    order = Order(participant, side, interval, energy, price, bus=bus, phase=phase,  # type: ignore[arg-type]
                  community=community, signature="ab", backstop=backstop)  # type: ignore[arg-type]
    body = L._order_body(order)
    del body["signature"]
    try:
        want = record_payload("bid", int(interval), body)
    except ValueError:  # NaN or infinity: not JSON
        with pytest.raises(ValueError):
            L._order_payload(order)
        return
    assert L._order_payload(order) == want

def test_valid_ledger_verifies(ledger_path: Path) -> None:
    res = verify_ledger(ledger_path)
    assert res.ok and res.first_bad is None
    assert res.n_blocks == 5 and res.n_records == 4 * 7
    genesis = read_blocks(ledger_path)[0]
    assert verify_ledger(ledger_path, trusted_public_keys=genesis["public_keys"]).ok
    other = KeyRing.from_seed(SEED + 1, PEOPLE).public_keys_hex()
    assert "trusted" in verify_ledger(ledger_path, trusted_public_keys=other).first_bad


def test_blocks_round_trip(ledger_path: Path, tmp_path: Path) -> None:
    """Decoding and re-encoding gives the same records (so the same hashes)."""
    blocks = read_blocks(ledger_path)
    copy = tmp_path / "copy.jsonl"
    write_blocks(copy, blocks)
    assert read_blocks(copy) == blocks
    assert verify_ledger(copy).ok
    rec = blocks[2]["records"][1]
    assert rec["body"] == {"bus": "", "community": "", "energy_kwh": 1.75, "interval": 1,
                           "participant": "p002", "phase": "", "price_usd_per_kwh": 0.2, "side": "buy"}


def test_mixed_value_types_round_trip(tmp_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    ledger = Ledger(tmp_path / "l.jsonl", keys)
    odd = [{"participant": "p001", "x": 1, "y": None, "z": [1.5, "a"], "w": True, "v": 2**70},
           {"participant": "p002", "x": 2.5, "y": 0.1, "z": {"k": 1}, "w": False, "v": -1}]
    ledger.append_block(0, [settlement_record(keys, 0, b) for b in odd])
    ledger.close()
    assert [r["body"] for r in read_blocks(ledger.path)[1]["records"]] == odd
    assert verify_ledger(ledger.path).ok


def _encode_block_reference(block: dict) -> bytes:
    """encode_block as the module docstring states it, one value at a time: the writer's
    columns (transposed, typed per set of types) must give these bytes."""
    import struct

    from federates.market.ledger import LOCATOR_BYTES, canonical_json

    def column_type(vals: list) -> str:
        t = {type(v) for v in vals}
        if t == {float}:
            return "f8"
        if t == {bool}:
            return "b"
        if t == {str}:
            return "s"
        if t == {int} and all(-(2**63) <= v < 2**63 for v in vals):
            return "i"
        return "j"

    runs: list[tuple[str, list, list]] = []
    for r in block["records"]:
        keys = sorted(r["body"])
        if runs and runs[-1][0] == r["kind"] and runs[-1][1] == keys:
            runs[-1][2].append(r)
        else:
            runs.append((r["kind"], keys, [r]))
    strings: dict[str, int] = {}
    body = [bytes(block["locators"])]
    segments = []
    for kind, keys, recs in runs:
        cols = []
        for k in keys:
            vals = [r["body"][k] for r in recs]
            t = column_type(vals)
            if t == "j":
                cols.append([k, t, vals])
                continue
            cols.append([k, t])
            for v in vals:
                if t == "s":
                    v = strings.setdefault(v, len(strings))
                body.append(struct.pack({"f8": "<d", "b": "<?", "s": "<I", "i": "<q"}[t], v))
        body.append(b"".join(s for r in recs for s in r["signatures"]))
        segments.append([kind, len(recs), cols, [len(r["signatures"]) for r in recs]])
    acks = block.get("acks", [])
    body.append(b"".join(sig for _, sig in acks))
    header = {k: v for k, v in block.items() if k not in ("records", "locators", "acks")}
    header["ack_by"] = [p for p, _ in acks]
    header["n_locators"] = len(block["locators"]) // LOCATOR_BYTES
    header["segments"] = segments
    header["strings"] = list(strings)
    hb = canonical_json(header).encode()
    return struct.pack(">I", len(hb)) + hb + b"".join(body)


def test_block_bytes_equal_the_reference_encoding(ledger_path: Path, tmp_path: Path) -> None:
    from federates.market.ledger import encode_block

    keys = KeyRing.from_seed(SEED, PEOPLE)
    ledger = Ledger(tmp_path / "mixed.zst", keys)
    odd = [{"participant": "p001", "x": 1, "y": None, "z": [1.5, "a"], "w": True, "v": 2**70},
           {"participant": "p002", "x": 2.5, "y": 0.1, "z": {"k": 1}, "w": False, "v": -1},
           {"v": -(2**63), "participant": "p003", "x": 2**63 - 1, "y": "", "z": 0.0, "w": True},
           {"participant": "p001"}, {}, {"only": 3}, {"only": 2**63}]
    ledger.append_block(0, [settlement_record(keys, 0, b) for b in odd])
    ledger.close()
    blocks = read_blocks(ledger_path) + read_blocks(ledger.path)
    assert len(blocks) == 5 + 2
    for block in blocks:
        assert encode_block(block) == _encode_block_reference(block)


# ---------------------------------------------------- 1. the file decodes


def test_truncated_file_is_named(ledger_path: Path) -> None:
    import zstandard

    content = b"".join(zstandard.ZstdDecompressor().decompressobj().decompress(ledger_path.read_bytes())
                       for _ in [0])
    ledger_path.write_bytes(zstandard.ZstdCompressor().compress(content[:-100]))
    res = verify_ledger(ledger_path)
    assert not res.ok and res.first_bad.startswith("block 4: truncated")


def test_not_a_ledger(tmp_path: Path) -> None:
    p = tmp_path / "ledger.zst"
    p.write_text('{"index": 0}\n')
    assert "not a zstd stream" in verify_ledger(p).first_bad


# ------------------------------------------- 2.-4. genesis, indices, chain


def test_fake_genesis_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[0]["records"] = blocks[1]["records"][:1]
    assert tampered(ledger_path, edit) == "block 0: not a genesis block"


def test_dropped_block_is_named(ledger_path: Path) -> None:
    assert tampered(ledger_path, lambda b: b.pop(2)) == "block 2 missing (index jumps from 1 to 3)"


def test_dropped_last_block_is_not_detectable_by_chain(ledger_path: Path) -> None:
    """Truncation at the tail leaves a valid chain; n_blocks tells the caller."""
    blocks = read_blocks(ledger_path)
    write_blocks(ledger_path, blocks[:-1])
    res = verify_ledger(ledger_path)
    assert res.ok and res.n_blocks == 4


def test_reordered_blocks_are_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[2], blocks[3] = blocks[3], blocks[2]
    assert tampered(ledger_path, edit).startswith("block 2 out of order")


def test_renumbered_block_breaks_chain(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[2], blocks[3] = blocks[3], blocks[2]
        blocks[2]["index"], blocks[3]["index"] = 2, 3
    assert tampered(ledger_path, edit) == "block 2: prev_hash does not match block 1"


# ------------------------------------------- 5.-6. participant signatures


def test_changed_bid_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[2]["records"][1]["body"]["price_usd_per_kwh"] = 0.25
    assert tampered(ledger_path, edit) == "block 2 record 1: signature of p002 does not verify"


def test_changed_trade_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[3]["records"][3]["body"]["energy_kwh"] = 0.76
    assert tampered(ledger_path, edit) == (
        "block 3 record 3: altered (hash does not match records_hash leaf)")

    def edit_and_relocate(blocks):  # locators and root made to match: the parties' acks fail
        import federates.market.ledger as L
        blk = blocks[3]
        blk["records"][3]["body"]["energy_kwh"] = 0.76
        leaves = [L.record_leaf(r) for r in blk["records"]]
        blk["locators"] = b"".join(leaf[:4] for leaf in leaves)
        blk["records_hash"] = L.merkle_root(leaves)
    fresh = build(ledger_path.parent / "fresh.jsonl")
    # (the seal, checked after the acknowledgements, would fail too: the root is sealed)
    assert tampered(fresh, edit_and_relocate) == (
        "block 3 record 3: acknowledgement of p001 does not verify")


def test_forged_signature_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)

    def edit(blocks):
        rec = blocks[4]["records"][1]  # p002's bid, re-signed with p003's key
        rec["signatures"] = [keys.sign_bytes("p003", record_payload("bid", 3, rec["body"]))]
    assert tampered(ledger_path, edit) == "block 4 record 1: signature of p002 does not verify"


def test_unknown_signer_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[1]["records"][0]["body"]["participant"] = "mallory"
    assert tampered(ledger_path, edit) == "block 1 record 0: signer mallory has no key in the genesis block"


def test_dropped_signature_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[1]["records"][2]["signatures"].pop()  # p003's bid
    assert tampered(ledger_path, edit) == (
        "block 1 record 2: bid must carry signatures of ['p003'], has 0")


def test_dropped_acknowledgement_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[1]["acks"] = [a for a in blocks[1]["acks"] if a[0] != "p002"]
    assert tampered(ledger_path, edit) == "block 1 record 3: trade not acknowledged by p002"


def test_forged_acknowledgement_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)

    def edit(blocks):
        blocks[2]["acks"][0][1] = keys.sign_bytes("p003", b"anything")
    assert tampered(ledger_path, edit) == "block 2 record 3: acknowledgement of p001 does not verify"

    def edit_extra(blocks):
        blocks[2]["acks"].append(["p002", keys.sign_bytes("p002", b"x")])
    fresh = build(ledger_path.parent / "fresh.jsonl")
    assert tampered(fresh, edit_extra) == "block 2: p002 acknowledges twice"


# ------------------------------------------- 7. records vs the Merkle root


def test_changed_authority_record_is_named(ledger_path: Path) -> None:
    """A settlement carries no signature of its own: the seal over the Merkle root
    authenticates it, and the locators name it."""
    def edit(blocks):
        blocks[2]["records"][6]["body"]["net_cost_usd"] = 0.0
    assert tampered(ledger_path, edit) == (
        "block 2 record 6: altered (hash does not match records_hash leaf)")


def test_dropped_record_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        del blocks[2]["records"][4]
    assert tampered(ledger_path, edit).startswith("block 2 record 4 missing")


def test_added_record_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)

    def edit(blocks):
        extra = settlement_record(keys, 1, {"participant": "p003", "net_cost_usd": -5.0})
        blocks[2]["records"].insert(5, {k: extra[k] for k in ("kind", "interval", "body", "signatures")})
    assert tampered(ledger_path, edit) == "block 2 record 5: extra record not in records_hash"


def test_reordered_records_are_named(ledger_path: Path) -> None:
    def edit(blocks):
        r = blocks[3]["records"]
        r[5], r[6] = r[6], r[5]
    assert tampered(ledger_path, edit).startswith("block 3 record 5: out of order")


def test_dropped_record_and_locator_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        del blocks[2]["records"][4]
        loc = blocks[2]["locators"]
        blocks[2]["locators"] = loc[:16] + loc[20:]
    assert tampered(ledger_path, edit) == "block 2: records do not match records_hash (Merkle root)"


# ------------------------------------------- 8.-10. seal, hash, work


def test_changed_seal_is_named(ledger_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)

    def edit(blocks):
        blocks[2]["seal_signature"] = keys.sign("p001", {"anything": 1})
    assert tampered(ledger_path, edit) == "block 2: seal signature of market does not verify"


def test_changed_header_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[2]["interval"] = 7
        for r in blocks[2]["records"]:
            r["interval"] = 7
    # the bids' signatures cover their interval too; the settlement's only the seal
    assert tampered(ledger_path, edit).startswith("block 2 record 0: signature of p001")

    def edit_sealer(blocks):
        blocks[3]["sealer"] = "p001"
    fresh = build(ledger_path.parent / "fresh.jsonl")
    assert tampered(fresh, edit_sealer) == "block 3: sealed by 'p001', not 'market'"

    def edit_settlement_interval(blocks):  # records of block 2 moved to interval 7 with it:
        blocks[2]["interval"] = 7  # a block of only the authority's records: its seal fails
        blocks[2]["records"] = blocks[2]["records"][5:]
        for r in blocks[2]["records"]:
            r["interval"] = 7
    fresh = build(ledger_path.parent / "fresh2.jsonl")
    assert tampered(fresh, edit_settlement_interval).startswith("block 2 record 0: altered")


def test_changed_nonce_is_named(ledger_path: Path) -> None:
    def edit(blocks):
        blocks[1]["nonce"] = 5
    assert tampered(ledger_path, edit) == "block 1: hash does not match its contents"


def test_proof_of_work(tmp_path: Path) -> None:
    path = build(tmp_path / "pow.jsonl", n_intervals=3, difficulty_bits=8)
    blocks = read_blocks(path)
    assert all(leading_zero_bits(b["hash"]) >= 8 for b in blocks)
    assert all(b["pow_s"] >= 0.0 for b in blocks)
    assert verify_ledger(path).ok
    # same chain (hashes, nonces) regardless of pow_s timing
    again = read_blocks(build(tmp_path / "pow2.jsonl", n_intervals=3, difficulty_bits=8))
    strip = [{k: v for k, v in b.items() if k != "pow_s"} for b in blocks]
    assert strip == [{k: v for k, v in b.items() if k != "pow_s"} for b in again]


def test_missing_work_is_named(tmp_path: Path) -> None:
    path = build(tmp_path / "pow.jsonl", n_intervals=2, difficulty_bits=8)
    plain = read_blocks(build(tmp_path / "plain.jsonl", n_intervals=2))

    def edit(blocks):  # a block without work, its header otherwise intact
        blocks[2] = {**plain[2], "difficulty_bits": 8}
    assert tampered(path, edit).startswith("block 2: prev_hash does not match block 1")

    def edit_hash(blocks):  # the last block's nonce zeroed and its hash recomputed
        import federates.market.ledger as L
        blocks[2]["nonce"] = 0
        blocks[2]["hash"] = L._block_hash(L._header(blocks[2]), blocks[2]["seal_signature"], 0)
    path = build(tmp_path / "pow2.jsonl", n_intervals=2, difficulty_bits=8)
    assert "leading zero bits, difficulty requires 8" in tampered(path, edit_hash)


def test_lowered_difficulty_is_named(tmp_path: Path) -> None:
    path = build(tmp_path / "pow.jsonl", n_intervals=2, difficulty_bits=8)

    def edit(blocks):
        blocks[0]["difficulty_bits"] = 0
    # genesis difficulty is sealed: lowering it breaks its seal
    assert tampered(path, edit) == "block 0: seal signature of market does not verify"


# ------------------------------------------------------------ the writer


def test_determinism(tmp_path: Path) -> None:
    a = KeyRing.from_seed(SEED, PEOPLE).public_keys_hex()
    assert a == KeyRing.from_seed(SEED, PEOPLE).public_keys_hex()
    assert a != KeyRing.from_seed(SEED + 1, PEOPLE).public_keys_hex()
    first = build(tmp_path / "a.jsonl").read_bytes()
    assert first == build(tmp_path / "b.jsonl").read_bytes()
    assert first != build(tmp_path / "c.jsonl", seed=SEED + 1).read_bytes()


def test_every_block_is_readable_when_written(tmp_path: Path) -> None:
    """Flushed per block: a reader sees each block as soon as it is sealed, before close."""
    keys = KeyRing.from_seed(SEED, PEOPLE)
    ledger = Ledger(tmp_path / "l.jsonl", keys)
    for k in range(3):
        ledger.append_block(k, interval_records(keys, k))
        res = verify_ledger(ledger.path)
        assert res.ok and res.n_blocks == k + 2
    ledger.close()


def test_continue_existing_ledger(tmp_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    path = build(tmp_path / "l.jsonl", n_intervals=2)
    ledger = Ledger(path, keys)
    assert ledger.n_blocks == 3
    ledger.append_block(2, interval_records(keys, 2))
    ledger.close()
    assert path.read_bytes() == build(tmp_path / "full.jsonl", n_intervals=3).read_bytes()
    assert verify_ledger(tmp_path / "l.jsonl").ok


def test_records_of_another_interval_are_refused(tmp_path: Path) -> None:
    keys = KeyRing.from_seed(SEED, PEOPLE)
    ledger = Ledger(tmp_path / "l.jsonl", keys)
    with pytest.raises(ValueError, match="interval 1"):
        ledger.append_block(1, [make_record(keys, "settlement", 2, {"participant": "p001"})])
