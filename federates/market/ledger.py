"""A blockchain-style signed ledger of market records (bids, trades, curtailments, settlements).

Participants and the market authority ("market") hold Ed25519 keys (``KeyRing``).

Records are plain dicts ``{"kind", "interval", "body", "signer", "signature"}``:

* ``bid``: an ``Order``, signed by its participant;
* ``trade``: a ``Trade``, signed by seller and buyer (``signer`` and ``signature`` are
  then two-element lists ``[seller side, buyer side]``); the GRID side of a grid trade is
  signed by the market authority;
* ``curtailment`` (a ``CurtailmentNotice``) and ``settlement`` (e.g. a ``SettlementRow``):
  signed by the market.

A signature covers the canonical JSON of ``{"kind", "interval", "body"}``. Canonical JSON
is ``json.dumps(sort_keys=True, separators=(",", ":"), allow_nan=False)``: sorted keys, no
spaces, floats written with ``repr`` (so they decode to the same bits).

Blocks (one JSON line each in ``ledger.jsonl``, flushed per block)::

    {index, interval, prev_hash, difficulty_bits, sealer, records_hash, record_hashes,
     records, seal_signature, nonce, hash, pow_s}

``record_hashes`` are the sha256 leaves of the canonical records and ``records_hash``
their Merkle root. The sealer (always "market", proof of authority) signs the header
``{index, interval, prev_hash, difficulty_bits, sealer, records_hash}`` (plus
``public_keys`` in the genesis block). ``hash`` is sha256 of the canonical header plus
``seal_signature`` and ``nonce``; with ``difficulty_bits > 0`` the nonce is searched until
the hash has that many leading zero bits (proof of work). ``pow_s`` [s] is the wall time
of that search; it is *not* hashed and is exactly 0.0 when ``difficulty_bits == 0``, so a
ledger without proof of work is byte-for-byte reproducible.

Block 0 (genesis) has no records and carries the hex public keys of every participant
and of the authority; ``verify_ledger`` checks every signature against them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from federates.common.messages import GRID, CurtailmentNotice, Order, Trade

AUTHORITY = "market"
RECORD_KINDS = ("bid", "trade", "curtailment", "settlement", "envelope", "trade_curtailment")
GENESIS_PREV_HASH = "0" * 64
_RECORD_TAG = b"tecosim-ledger-record:"
_SEAL_TAG = b"tecosim-ledger-seal:"
_HEADER_KEYS = ("index", "interval", "prev_hash", "difficulty_bits", "sealer", "records_hash")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, floats as ``repr``, no NaN/inf."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def leading_zero_bits(hex_digest: str) -> int:
    """Number of leading zero bits of a hex digest."""
    n_bits = 4 * len(hex_digest)
    return n_bits - int(hex_digest, 16).bit_length()


def merkle_root(leaves_hex: list[str]) -> str:
    """Merkle root (hex) of hex sha256 leaves; an odd node is promoted unchanged.

    Inner nodes are ``sha256(0x01 || left || right)``; the root of no leaves is
    ``sha256(b"")``; the root of one leaf is that leaf.
    """
    if not leaves_hex:
        return sha256_hex(b"")
    level = [bytes.fromhex(h) for h in leaves_hex]
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def record_hash(record: dict[str, Any]) -> str:
    """Leaf hash of a record: sha256(0x00 || canonical JSON of the whole record)."""
    return sha256_hex(b"\x00" + canonical_json(record).encode())


class KeyRing:
    """Ed25519 keys of the participants and of the market authority ("market")."""

    def __init__(
        self,
        public_keys: dict[str, Ed25519PublicKey],
        private_keys: dict[str, Ed25519PrivateKey] | None = None,
    ) -> None:
        """Wrap public keys (and, for signing, private keys) by participant name."""
        self._public = dict(public_keys)
        self._private = dict(private_keys or {})

    @classmethod
    def from_seed(cls, seed: int, participants: list[str]) -> KeyRing:
        """Keys derived deterministically from the study ``seed``.

        The private key of ``p`` is ``sha256(f"{seed}:{p}")`` (32 bytes); the authority
        "market" is added. SEEDED KEYS ARE FOR REPRODUCIBLE STUDIES, NOT FOR SECURITY:
        anyone who knows the seed and the names can sign as any participant.
        """
        names = list(dict.fromkeys(participants))
        for reserved in (AUTHORITY, GRID):
            if reserved in names:
                raise ValueError(f"participant name {reserved!r} is reserved")
        private = {
            name: Ed25519PrivateKey.from_private_bytes(
                hashlib.sha256(f"{seed}:{name}".encode()).digest()
            )
            for name in [*names, AUTHORITY]
        }
        return cls({n: k.public_key() for n, k in private.items()}, private)

    @classmethod
    def from_public_hex(cls, public_keys_hex: dict[str, str]) -> KeyRing:
        """A verify-only key ring from hex raw public keys."""
        return cls(
            {n: Ed25519PublicKey.from_public_bytes(bytes.fromhex(h)) for n, h in public_keys_hex.items()}
        )

    @property
    def participants(self) -> list[str]:
        """Every key holder, the authority included, sorted."""
        return sorted(self._public)

    def public_key_hex(self, participant: str) -> str:
        """Raw 32-byte public key of ``participant`` as hex."""
        return self._public[participant].public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def public_keys_hex(self) -> dict[str, str]:
        """Hex public keys of every key holder."""
        return {p: self.public_key_hex(p) for p in self.participants}

    def sign(self, participant: str, payload: dict[str, Any]) -> str:
        """Hex Ed25519 signature by ``participant`` of the canonical JSON of ``payload``."""
        if participant not in self._private:
            raise KeyError(f"no private key for {participant!r}")
        return self._private[participant].sign(canonical_json(payload).encode()).hex()

    def verify(self, participant: str, payload: dict[str, Any], signature: str) -> bool:
        """Whether ``signature`` (hex) is ``participant``'s signature of ``payload``."""
        key = self._public.get(participant)
        if key is None:
            return False
        try:
            key.verify(bytes.fromhex(signature), canonical_json(payload).encode())
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


# ---------------------------------------------------------------- records


def _plain(x: Any) -> Any:
    """``x`` with dataclasses turned into dicts, recursively: what ``dataclasses.asdict``
    gives for the JSON-able messages here, without its deep copy of every leaf (a
    quarter less time per record)."""
    if is_dataclass(x) and not isinstance(x, type):
        return {name: _plain(getattr(x, name)) for name in x.__dataclass_fields__}
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _body(obj: Any) -> dict[str, Any]:
    return _plain(obj) if is_dataclass(obj) and not isinstance(obj, type) else dict(obj)


def _record_payload(kind: str, interval: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"domain": _RECORD_TAG.decode(), "kind": kind, "interval": interval, "body": body}


def required_signers(kind: str, body: dict[str, Any]) -> list[str]:
    """Who must sign a record of ``kind`` with ``body`` (GRID's side is the market's)."""
    if kind == "bid":
        return [str(body["participant"])]
    if kind == "trade":
        return [AUTHORITY if body[s] == GRID else str(body[s]) for s in ("seller", "buyer")]
    if kind in ("curtailment", "settlement", "envelope", "trade_curtailment"):
        return [AUTHORITY]
    raise ValueError(f"unknown record kind {kind!r}; allowed: {list(RECORD_KINDS)}")


def make_record(keyring: KeyRing, kind: str, interval: int, body: Any) -> dict[str, Any]:
    """A signed record; ``body`` is a dict or dataclass. Trades get two signatures."""
    b = _body(body)
    signers = required_signers(kind, b)
    payload = _record_payload(kind, int(interval), b)
    sigs = [keyring.sign(s, payload) for s in signers]
    two = kind == "trade"
    return {
        "kind": kind,
        "interval": int(interval),
        "body": b,
        "signer": signers if two else signers[0],
        "signature": sigs if two else sigs[0],
    }


def _order_payload(order: Order) -> dict[str, Any]:
    body = _plain(order)
    body.pop("signature")  # the signature covers everything else
    return _record_payload("bid", int(order.interval), body)


def sign_order(keyring: KeyRing, order: Order) -> Order:
    """The order with its participant's signature; signed where the participant is (the
    prosumers federate), over exactly the payload its ledger record carries."""
    return replace(order, signature=keyring.sign(order.participant, _order_payload(order)))


def verify_order(keyring: KeyRing, order: Order) -> bool:
    """Whether ``order`` carries a valid signature of its participant."""
    return bool(order.signature) and keyring.verify(order.participant, _order_payload(order), order.signature)


def bid_record(keyring: KeyRing, order: Order) -> dict[str, Any]:
    """A bid/offer record carrying its participant's signature: the one the order brings
    (not re-signed), or made with the participant's key in ``keyring`` if it has none."""
    if not order.signature:
        order = sign_order(keyring, order)
    payload = _order_payload(order)
    return {"kind": "bid", "interval": payload["interval"], "body": payload["body"],
            "signer": order.participant, "signature": order.signature}


def trade_record(keyring: KeyRing, trade: Trade) -> dict[str, Any]:
    """A trade record signed by seller and buyer (GRID's side by the market)."""
    return make_record(keyring, "trade", trade.interval, trade)


def curtailment_record(keyring: KeyRing, notice: CurtailmentNotice) -> dict[str, Any]:
    """A curtailment record signed by the market."""
    return make_record(keyring, "curtailment", notice.interval, notice)


def settlement_record(keyring: KeyRing, interval: int, row: Any) -> dict[str, Any]:
    """A settlement record (dict or e.g. ``SettlementRow``) signed by the market."""
    return make_record(keyring, "settlement", interval, row)


# ---------------------------------------------------------------- blocks


def _header(block: dict[str, Any]) -> dict[str, Any]:
    h = {k: block[k] for k in _HEADER_KEYS}
    if block["index"] == 0:
        h["public_keys"] = block["public_keys"]
    h["domain"] = _SEAL_TAG.decode()
    return h


def _block_hash(header: dict[str, Any], seal_signature: str, nonce: int) -> str:
    return sha256_hex(canonical_json({**header, "seal_signature": seal_signature, "nonce": nonce}).encode())


class Ledger:
    """Append-only signed hash chain of blocks, one JSON line per block.

    ``path`` is the ``.jsonl`` file, or a directory that gets ``ledger.jsonl``. A new
    file starts with the genesis block; an existing one is continued (its genesis keys
    and difficulty must match).
    """

    def __init__(self, path: str | Path, keyring: KeyRing, difficulty_bits: int = 0) -> None:
        """Open or create the ledger at ``path``."""
        p = Path(path)
        self.path = p / "ledger.jsonl" if p.is_dir() else p
        self.keyring = keyring
        self.difficulty_bits = int(difficulty_bits)
        if not 0 <= self.difficulty_bits <= 64:
            raise ValueError("difficulty_bits must be in 0..64")
        self._last: dict[str, Any] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            lines = self.path.read_text().splitlines()
            genesis, last = json.loads(lines[0]), json.loads(lines[-1])
            if genesis["public_keys"] != keyring.public_keys_hex():
                raise ValueError(f"{self.path}: genesis keys differ from this key ring")
            if genesis["difficulty_bits"] != self.difficulty_bits:
                raise ValueError(f"{self.path}: ledger difficulty is {genesis['difficulty_bits']} bits")
            self._last = last
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            self._seal(None, [], public_keys=keyring.public_keys_hex())

    @property
    def n_blocks(self) -> int:
        """Blocks written so far, genesis included."""
        return 0 if self._last is None else self._last["index"] + 1

    def append_block(self, interval: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Seal ``records`` of market interval ``interval`` into a block, write and return it."""
        return self._seal(int(interval), list(records))

    def _seal(
        self,
        interval: int | None,
        records: list[dict[str, Any]],
        public_keys: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        leaves = [record_hash(r) for r in records]
        block: dict[str, Any] = {
            "index": self.n_blocks,
            "interval": interval,
            "prev_hash": GENESIS_PREV_HASH if self._last is None else self._last["hash"],
            "difficulty_bits": self.difficulty_bits,
            "sealer": AUTHORITY,
            "records_hash": merkle_root(leaves),
        }
        if public_keys is not None:
            block["public_keys"] = public_keys
        header = _header(block)
        seal = self.keyring.sign(AUTHORITY, header)
        nonce, pow_s = 0, 0.0
        digest = _block_hash(header, seal, nonce)
        if self.difficulty_bits > 0:
            t0 = time.perf_counter()
            while leading_zero_bits(digest) < self.difficulty_bits:
                nonce += 1
                digest = _block_hash(header, seal, nonce)
            pow_s = time.perf_counter() - t0
        block.update(
            record_hashes=leaves,
            records=records,
            seal_signature=seal,
            nonce=nonce,
            hash=digest,
            pow_s=pow_s,  # wall time [s] of the nonce search; not hashed
        )
        with self.path.open("a") as fh:
            fh.write(canonical_json(block) + "\n")
            fh.flush()
        self._last = block
        return block


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify_ledger``: ``first_bad`` names the first problem found."""

    ok: bool
    first_bad: str | None
    n_blocks: int
    n_records: int


def _check_record(rec: Any, b: int, j: int, interval: Any, keys: KeyRing) -> str | None:
    where = f"block {b} record {j}"
    try:
        kind, body = rec["kind"], rec["body"]
        signers = required_signers(kind, body)
        got_signers = rec["signer"] if isinstance(rec["signer"], list) else [rec["signer"]]
        sigs = rec["signature"] if isinstance(rec["signature"], list) else [rec["signature"]]
        payload = _record_payload(kind, rec["interval"], body)
    except (KeyError, TypeError, ValueError) as exc:
        return f"{where}: malformed record ({exc!r})"
    if rec["interval"] != interval:
        return f"{where}: interval {rec['interval']} is not the block's interval {interval}"
    if got_signers != signers or len(sigs) != len(signers):
        return f"{where}: {kind} must be signed by {signers}, not {got_signers}"
    for who, sig in zip(signers, sigs, strict=True):
        if who not in keys.participants:
            return f"{where}: signer {who} has no key in the genesis block"
        if not keys.verify(who, payload, sig):
            return f"{where}: signature of {who} does not verify"
    return None


def _check_leaves(block: dict[str, Any], b: int) -> str | None:
    leaves, records = block["record_hashes"], block["records"]
    if merkle_root(leaves) != block["records_hash"]:
        return f"block {b}: record_hashes do not match records_hash"
    actual = [record_hash(r) for r in records]
    for j in range(max(len(leaves), len(actual))):
        if j >= len(actual):
            return f"block {b} record {j} missing (block has {len(actual)} of {len(leaves)} records)"
        if j >= len(leaves):
            return f"block {b} record {j}: extra record not in records_hash"
        if actual[j] != leaves[j]:
            if actual[j] in leaves[j + 1 :]:
                return f"block {b} record {j} missing ({len(actual)} of {len(leaves)} records present)"
            if j + 1 < len(actual) and actual[j + 1] == leaves[j]:
                return f"block {b} record {j}: extra record not in records_hash"
            return f"block {b} record {j}: altered (hash does not match records_hash leaf)"
    return None


def _check_block(block: dict[str, Any], b: int, difficulty: int, keys: KeyRing) -> str | None:
    for j, rec in enumerate(block["records"]):
        bad = _check_record(rec, b, j, block["interval"], keys)
        if bad:
            return bad
    bad = _check_leaves(block, b)
    if bad:
        return bad
    if block["sealer"] != AUTHORITY:
        return f"block {b}: sealed by {block['sealer']!r}, not {AUTHORITY!r}"
    header = _header(block)
    if not keys.verify(AUTHORITY, header, block["seal_signature"]):
        return f"block {b}: seal signature of {AUTHORITY} does not verify"
    if _block_hash(header, block["seal_signature"], block["nonce"]) != block["hash"]:
        return f"block {b}: hash does not match its contents"
    if block["difficulty_bits"] != difficulty:
        return f"block {b}: difficulty {block['difficulty_bits']} bits, genesis says {difficulty}"
    zeros = leading_zero_bits(block["hash"])
    if zeros < difficulty:
        return f"block {b}: hash has {zeros} leading zero bits, difficulty requires {difficulty}"
    return None


def verify_ledger(
    path: str | Path, trusted_public_keys: dict[str, str] | None = None
) -> VerifyResult:
    """Check a ledger file end to end; stop at the first problem and name it.

    Checks consecutive indices (naming a missing or out-of-order block), the hash chain,
    every record signature against the genesis public keys (and, if given, the genesis
    keys against ``trusted_public_keys``), every record against the committed leaves and
    Merkle root, the seal signature, each block hash and its proof of work.
    """
    p = Path(path)
    p = p / "ledger.jsonl" if p.is_dir() else p
    blocks: list[dict[str, Any]] = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        try:
            blocks.append(json.loads(line))
        except json.JSONDecodeError:
            return VerifyResult(False, f"line {n}: not valid JSON", len(blocks), 0)
    n_records = sum(len(b.get("records", [])) for b in blocks)

    def bad(msg: str) -> VerifyResult:
        return VerifyResult(False, msg, len(blocks), n_records)

    if not blocks:
        return bad("ledger is empty (no genesis block)")
    pos = 0
    try:
        genesis = blocks[0]
        if genesis.get("index") != 0:
            return bad(f"block 0 missing (first block has index {genesis.get('index')})")
        if genesis["prev_hash"] != GENESIS_PREV_HASH or genesis["records"]:
            return bad("block 0: not a genesis block")
        if trusted_public_keys is not None and genesis["public_keys"] != trusted_public_keys:
            return bad("block 0: public keys differ from the trusted keys")
        keys = KeyRing.from_public_hex(genesis["public_keys"])
        difficulty = int(genesis["difficulty_bits"])
        indices = [blk.get("index") for blk in blocks]
        for pos, block in enumerate(blocks):
            b = block["index"]
            if pos > 0:
                prev = blocks[pos - 1]
                if b != pos:
                    if pos in indices[pos + 1 :]:
                        return bad(f"block {pos} out of order (block {b} found in its place, after block {prev['index']})")
                    return bad(f"block {pos} missing (index jumps from {prev['index']} to {b})")
                if block["prev_hash"] != prev["hash"]:
                    return bad(f"block {b}: prev_hash does not match block {pos - 1}")
            msg = _check_block(block, b, difficulty, keys)
            if msg:
                return bad(msg)
    except (KeyError, TypeError, ValueError) as exc:
        return bad(f"block {pos}: malformed ({exc!r})")
    return VerifyResult(True, None, len(blocks), n_records)
