"""A blockchain-style signed ledger of market records (bids, trades, curtailments, settlements).

Participants and the market authority ("market") hold Ed25519 keys (``KeyRing``, signed
and verified with libsodium through PyNaCl).

Records
    A record is ``{"kind", "interval", "body", "signers", "signatures"}``: ``body`` a dict
    of JSON values (e.g. an ``Order``'s fields), ``signers`` the participants whose own
    signature it carries (``required_signers``: derived from kind and body, so never
    stored) and ``signatures`` those raw 64-byte Ed25519 signatures, in that order:

    * ``bid``: an ``Order`` (its ``signature`` field left out of the body), signed by its
      participant, with the signature the participant made (``sign_order``);
    * ``trade``: a ``Trade``, acknowledged by its seller and its buyer (GRID's side is the
      market's): each party signs once per block the list of its trades in the block
      (``acknowledge_trades``), as a participant would sign its confirmation;
    * ``curtailment`` (a ``CurtailmentNotice``), ``demand_response`` (a
      ``DemandResponseDelivery``: what a called customer cut, paid in its settlement),
      ``settlement`` (e.g. a ``SettlementRow``), ``envelope`` and ``trade_curtailment``:
      the market's.

    The market's part of a record is not a second signature by the key that seals the
    block: the block seal signs the Merkle root over every record of the block, which
    authenticates them as the authority's. A participant's signature of a record covers
    its *payload*, the canonical JSON of ``{"domain": "tecosim-ledger-record:", "kind",
    "interval", "body"}``; canonical JSON is ``json.dumps(sort_keys=True,
    separators=(",", ":"), allow_nan=False)`` (floats written with ``repr``, so they
    decode to the same bits). A record's leaf hash is ``sha256(0x00 || payload ||
    signatures)`` (the number of signatures follows from kind and body). A trade
    acknowledgement by ``p`` signs ``canonical JSON of {"domain":
    "tecosim-ledger-trades:", "interval", "participant": p} || the leaf hashes of p's
    trades in the block, in block order``.

Blocks
    ``{index, interval, prev_hash, difficulty_bits, sealer, records_hash, records,
    locators, acks, seal_signature, nonce, hash}`` (genesis: plus ``public_keys``, hex, of
    every participant and the authority). ``records_hash`` is the Merkle root of the
    records' leaf hashes. The sealer (always "market": proof of authority) signs the
    header ``{index, interval, prev_hash, difficulty_bits, sealer, records_hash}`` (plus
    ``public_keys`` in the genesis block). ``hash`` is sha256 of the canonical header plus
    ``seal_signature`` (hex) and ``nonce``; with ``difficulty_bits > 0`` the nonce is
    searched until the hash has that many leading zero bits (proof of work) and the block
    carries ``pow_s``, the search's wall time [s], not hashed (so only a ledger without
    proof of work is byte-for-byte reproducible). ``locators``: the first 4 bytes of each
    record's leaf hash, so that ``verify_ledger`` can name the record that was altered,
    dropped, added or moved; they are hints, the Merkle root under the seal is the proof.
    ``acks``: ``[participant, signature]`` per party of the block's trades, in order of
    first appearance (seller before buyer).

File (``ledger.zst``, the name the runner gives it: see docs/outputs.md)
    One zstandard stream, flushed after every block (a reader decodes every block
    written so far), of ``b"tecosim-ledger 2\\n"`` then per block ``u32 length || block``
    (big-endian). A block is ``u32 n || header || body``: ``header`` n bytes of canonical
    JSON (the fields above but ``records`` and ``locators``, plus ``segments`` and
    ``strings``), ``body`` the locators then, per segment, its columns and signatures.
    A segment is a run of records of one kind with the same body keys and value types,
    stored column by column: ``f8`` float64 little-endian, ``b`` one byte per bool,
    ``s`` u32 index into the block's ``strings``, ``i`` int64, ``j`` values kept in the
    header as JSON. A block is decoded back to exactly the record dicts it was built
    from, and so to the same payloads and hashes.

``verify_ledger`` checks the chain from the genesis keys; ``read_blocks`` /
``write_blocks`` decode and re-encode a file without re-sealing (tests use them to
tamper with a ledger).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing
import numpy as np
import zstandard

from federates.common.messages import GRID, GRID_OPERATOR, CurtailmentNotice, Order, Trade

#: the ledger's file name in a run folder
LEDGER_FILE = "ledger.zst"
AUTHORITY = "market"
RECORD_KINDS = ("bid", "trade", "curtailment", "settlement", "envelope", "trade_curtailment", "demand_response")
GENESIS_PREV_HASH = "0" * 64
MAGIC = b"tecosim-ledger 2\n"
LOCATOR_BYTES = 4
ZSTD_LEVEL = 9  # 1000 prosumers, one day: level 3 +2 % size, 19 -1 % at 15x the time
_RECORD_DOMAIN = "tecosim-ledger-record:"
_SEAL_DOMAIN = "tecosim-ledger-seal:"
_ACK_DOMAIN = "tecosim-ledger-trades:"
_HEADER_KEYS = ("index", "interval", "prev_hash", "difficulty_bits", "sealer", "records_hash")
_SIG = 64
_sha256 = hashlib.sha256
_U32 = struct.Struct(">I")


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
try:  # json's own C encoder, made once instead of per call (what json.dumps does)
    from json.encoder import c_make_encoder as _c_make_encoder
    _C_JSON = _c_make_encoder(None, _JSON.default, json.encoder.encode_basestring_ascii, None,
                              ":", ",", True, False, False)
except (ImportError, TypeError):  # pure-Python json: no C encoder
    _C_JSON = None


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, floats as ``repr``, no NaN/inf
    (``json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)``)."""
    if _C_JSON is not None and isinstance(obj, dict):
        return "".join(_C_JSON(obj, 0))
    return _JSON.encode(obj)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def leading_zero_bits(hex_digest: str) -> int:
    """Number of leading zero bits of a hex digest."""
    n_bits = 4 * len(hex_digest)
    return n_bits - int(hex_digest, 16).bit_length()


def merkle_root(leaves: list[bytes]) -> str:
    """Merkle root (hex) of 32-byte leaves; an odd node is promoted unchanged.

    Inner nodes are ``sha256(0x01 || left || right)``; the root of no leaves is
    ``sha256(b"")``; the root of one leaf is that leaf.
    """
    if not leaves:
        return sha256_hex(b"")
    level = list(leaves)
    sha = hashlib.sha256
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


# ------------------------------------------------------------------------ keys


class KeyRing:
    """Ed25519 keys of the participants and of the market authority ("market")."""

    def __init__(self, public_keys: dict[str, bytes],
                 private_keys: dict[str, nacl.signing.SigningKey] | None = None) -> None:
        """Raw 32-byte public keys (and, for signing, PyNaCl signing keys) by name."""
        self._public = dict(public_keys)
        self._private = dict(private_keys or {})
        self._names = sorted(self._public)

    @classmethod
    def from_seed(cls, seed: int, participants: list[str]) -> KeyRing:
        """Keys derived deterministically from the study ``seed``.

        The private key (RFC 8032 seed) of ``p`` is ``sha256(f"{seed}:{p}")``; the
        authority "market" is added. SEEDED KEYS ARE FOR REPRODUCIBLE STUDIES, NOT FOR
        SECURITY: anyone who knows the seed and the names can sign as any participant.
        """
        names = list(dict.fromkeys(participants))
        for reserved in (AUTHORITY, GRID, GRID_OPERATOR):
            if reserved in names:
                raise ValueError(f"participant name {reserved!r} is reserved")
        private = {n: nacl.signing.SigningKey(hashlib.sha256(f"{seed}:{n}".encode()).digest())
                   for n in [*names, AUTHORITY]}
        return cls({n: bytes(k.verify_key) for n, k in private.items()}, private)

    @classmethod
    def from_public_hex(cls, public_keys_hex: dict[str, str]) -> KeyRing:
        """A verify-only key ring from hex raw public keys."""
        keys = {n: bytes.fromhex(h) for n, h in public_keys_hex.items()}
        if any(len(k) != 32 for k in keys.values()):
            raise ValueError("a public key is not 32 bytes")
        return cls(keys)

    @property
    def participants(self) -> list[str]:
        """Every key holder, the authority included, sorted."""
        return self._names

    def public_key_hex(self, participant: str) -> str:
        """Raw 32-byte public key of ``participant`` as hex."""
        return self._public[participant].hex()

    def public_keys_hex(self) -> dict[str, str]:
        """Hex public keys of every key holder."""
        return {p: self._public[p].hex() for p in self._names}

    def sign_bytes(self, participant: str, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature of ``message`` by ``participant``."""
        key = self._private.get(participant)
        if key is None:
            raise KeyError(f"no private key for {participant!r}")
        return key.sign(message).signature

    def verify_bytes(self, participant: str, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``participant``'s signature of ``message``."""
        key = self._public.get(participant)
        if key is None or len(signature) != _SIG:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + message, key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    def sign(self, participant: str, payload: dict[str, Any]) -> str:
        """Hex Ed25519 signature by ``participant`` of the canonical JSON of ``payload``."""
        return self.sign_bytes(participant, canonical_json(payload).encode()).hex()

    def verify(self, participant: str, payload: dict[str, Any], signature: str) -> bool:
        """Whether ``signature`` (hex) is ``participant``'s signature of ``payload``."""
        try:
            sig = bytes.fromhex(signature)
        except (ValueError, TypeError):
            return False
        return self.verify_bytes(participant, canonical_json(payload).encode(), sig)


# --------------------------------------------------------------------- records


def _body(obj: Any) -> dict[str, Any]:
    """A record body: a dict's copy, or a flat dataclass's fields (the messages and
    SettlementRow are flat: their values are JSON scalars)."""
    return dict(obj) if isinstance(obj, dict) else dict(vars(obj))


def record_payload(kind: str, interval: int, body: dict[str, Any]) -> bytes:
    """The bytes a record's signatures cover (module docstring)."""
    return canonical_json({"domain": _RECORD_DOMAIN, "kind": kind, "interval": interval,
                           "body": body}).encode()


def required_signers(kind: str, body: dict[str, Any]) -> list[str]:
    """Whose own signature a record of ``kind`` with ``body`` carries: a bid's
    participant; nobody for a trade (its parties acknowledge it per block,
    ``trade_parties``) or for the authority's records (the seal covers them)."""
    if kind == "bid":
        return [str(body["participant"])]
    if kind in ("trade", "curtailment", "settlement", "envelope", "trade_curtailment", "demand_response"):
        return []
    raise ValueError(f"unknown record kind {kind!r}; allowed: {list(RECORD_KINDS)}")


def trade_parties(body: dict[str, Any]) -> list[str]:
    """Who must acknowledge a trade: seller and buyer, but GRID (the market's side)."""
    return list(dict.fromkeys(str(body[s]) for s in ("seller", "buyer") if body[s] != GRID))


def _ack_message(interval: Any, participant: str, leaves: list[bytes]) -> bytes:
    """canonical_json({"domain", "interval", "participant"}) || leaves; the JSON spelled
    out (keys sorted, an int interval) as canonical_json writes it, at a tenth of the time."""
    if type(interval) is int and type(participant) is str:
        head = (f'{{"domain":"{_ACK_DOMAIN}","interval":{interval},'
                f'"participant":{json.encoder.encode_basestring_ascii(participant)}}}')
    else:
        head = canonical_json({"domain": _ACK_DOMAIN, "interval": interval, "participant": participant})
    return head.encode() + b"".join(leaves)


def _trades_by_party(records: list[dict[str, Any]], leaves: list[bytes]) -> dict[str, list[int]]:
    """Each trade party -> positions of its trade records (first appearance order)."""
    out: dict[str, list[int]] = {}
    for j, r in enumerate(records):
        if r["kind"] == "trade":
            for p in trade_parties(r["body"]):
                out.setdefault(p, []).append(j)
    return out


def acknowledge_trades(keyring: KeyRing, interval: int, records: list[dict[str, Any]],
                       leaves: list[bytes] | None = None) -> list[list[Any]]:
    """``[participant, signature]`` of every party of the trades among ``records``: its
    signature of its trades of the block (module docstring), made with ``keyring``."""
    leaves = [record_leaf(r) for r in records] if leaves is None else leaves
    todo = [(p, _ack_message(interval, p, [leaves[j] for j in js]))
            for p, js in _trades_by_party(records, leaves).items()]
    # the many parties of a large block sign on several threads
    sigs = _parallel_map(lambda pm: keyring.sign_bytes(*pm), todo)
    return [[p, sig] for (p, _), sig in zip(todo, sigs, strict=True)]


def leaf_hash(payload: bytes, signatures: list[bytes]) -> bytes:
    """A record's 32-byte Merkle leaf: sha256(0x00 || payload || signatures)."""
    return hashlib.sha256(b"\x00" + payload + b"".join(signatures)).digest()


def record_leaf(record: dict[str, Any]) -> bytes:
    """The leaf hash of a record dict (its payload recomputed from kind, interval, body)."""
    payload = record_payload(record["kind"], record["interval"], record["body"])
    return leaf_hash(payload, list(record["signatures"]))


def _record(kind: str, interval: int, body: dict[str, Any], signers: list[str],
            signatures: list[bytes], payload: bytes) -> dict[str, Any]:
    # "_leaf" caches the leaf hash for the writer; it is not part of the record
    return {"kind": kind, "interval": interval, "body": body, "signers": signers,
            "signatures": signatures, "_leaf": leaf_hash(payload, signatures)}


def make_record(keyring: KeyRing, kind: str, interval: int, body: Any) -> dict[str, Any]:
    """A record of ``kind`` with every participant signature it needs, made with
    ``keyring``; ``body`` is a dict or a flat dataclass."""
    b = _body(body)
    interval = int(interval)
    signers = required_signers(kind, b)
    payload = record_payload(kind, interval, b)
    if not signers:  # the authority's records and trades: the leaf of the payload alone
        return {"kind": kind, "interval": interval, "body": b, "signers": signers,
                "signatures": [], "_leaf": _sha256(b"\x00" + payload).digest()}
    sigs = [keyring.sign_bytes(s, payload) for s in signers]
    return _record(kind, interval, b, signers, sigs, payload)


def _order_body(order: Order) -> dict[str, Any]:
    """A bid record's body: the order's fields, ``backstop`` only where it is not the
    default (a price-responsive bid: the records of every other order are as before it
    existed), the signature kept for the caller to take out."""
    body = dict(vars(order))
    if body.get("backstop", True):
        body.pop("backstop", None)
    return body


_ascii = json.encoder.encode_basestring_ascii
_float_repr = float.__repr__
_isfinite = math.isfinite
_BID_TAIL = f'}},"domain":"{_RECORD_DOMAIN}","interval":'


def _order_payload(order: Order) -> bytes:
    """The payload an order is signed and verified over: ``record_payload`` of its bid
    body (the order's fields without its signature, ``_order_body``), spelled out from
    the order's fields, keys in the sorted order canonical_json writes, at a third of
    its time where every field has its usual type (str ids, an int interval, finite
    float energy and price, a bool ``backstop``); canonical_json itself otherwise. A
    test compares both. No body dict is made: this is on the clearing's way
    (``verified_bids``)."""
    q, p, k, backstop = order.energy_kwh, order.price_usd_per_kwh, order.interval, order.backstop
    if (type(q) is float and type(p) is float and type(k) is int and _isfinite(q) and _isfinite(p)
            and (backstop is True or backstop is False) and len(vars(order)) == 10):
        head = '{"body":{"bus":' if backstop else '{"body":{"backstop":false,"bus":'
        try:
            return (f'{head}{_ascii(order.bus)},"community":{_ascii(order.community)},'
                    f'"energy_kwh":{_float_repr(q)},"interval":{k},'
                    f'"participant":{_ascii(order.participant)},"phase":{_ascii(order.phase)},'
                    f'"price_usd_per_kwh":{_float_repr(p)},"side":{_ascii(order.side)}'
                    f'{_BID_TAIL}{k},"kind":"bid"}}').encode()
        except TypeError:  # an id that is not a str
            pass
    body = _order_body(order)
    del body["signature"]  # the signature covers everything else
    return record_payload("bid", int(k), body)


def sign_order(keyring: KeyRing, order: Order) -> Order:
    """The order with its participant's signature (hex); signed where the participant
    is (the prosumers federate), over exactly the payload its ledger record carries."""
    sig = keyring.sign_bytes(order.participant, _order_payload(order))
    return replace(order, signature=sig.hex())


def verify_order(keyring: KeyRing, order: Order) -> bool:
    """Whether ``order`` carries a valid signature of its participant."""
    return verify_orders(keyring, [order])[0]


def verify_orders(keyring: KeyRing, orders: list[Order]) -> list[bool]:
    """Whether each order carries a valid signature of its participant."""
    return [v is not None for v in verified_bids(keyring, orders)]


#: signatures checked (made) on several threads from this many on (libsodium runs
#: outside the GIL: 40 verifications take 1.3 instead of 2.5 ms on 2 cores)
PARALLEL_VERIFY_MIN = 16
_pool: tuple[int, ThreadPoolExecutor | None, int] = (0, None, 1)  # (pid, pool, threads): per process


def _verify_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """This process's signature threads and their number (None, 1 on one CPU); a
    forked child makes its own."""
    global _pool
    pid = os.getpid()
    if _pool[0] != pid:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        n = min(cpus, 4)
        _pool = (pid, ThreadPoolExecutor(n - 1, thread_name_prefix="verify") if n > 1 else None, n)
    return _pool[1], _pool[2]


def _parallel_map(fn: Any, items: list[Any]) -> list[Any]:
    """``[fn(x) for x in items]``, on this thread and the signature threads for a list of
    ``PARALLEL_VERIFY_MIN`` or more. ``fn`` must be a pure function of its item (the
    same answer, or the same exception, whenever called: an item may be computed
    twice) and is mostly a libsodium call, which releases the GIL.

    The threads take the next item from one counter, so a thread that gets no CPU (a
    shared machine) leaves its share to the others; an item a helper still holds when
    this thread runs out is waited for about twice an item's time, then computed here.
    So a busy machine costs at most about the serial time, never the time a descheduled
    helper takes to come back. Each answer goes to its item's place, whoever computed
    it; a helper's exception is left to this thread to raise (by computing the item)."""
    pool, n = _verify_pool() if len(items) >= PARALLEL_VERIFY_MIN else (None, 1)
    if pool is None:
        return list(map(fn, items))
    count = len(items)
    # no lock per item: ``next`` on an itertools.count and a list item's assignment are
    # each one step under the GIL; a helper's answers go to their own list, and this
    # thread alone builds the answer, so a helper that finishes late changes nothing
    counter = itertools.count()
    theirs: list[Any] = [None] * count
    done = [False] * count  # set by a helper once theirs[i] holds its answer
    stop = [False]
    waiting = [False]  # this thread waits: a helper notifies after each answer
    cond = threading.Condition()

    def helper() -> None:
        while not stop[0] and (i := next(counter)) < count:
            try:
                answer = fn(items[i])
            except Exception:  # left undone: the calling thread computes it again and raises
                continue
            theirs[i] = answer
            done[i] = True
            if waiting[0]:
                with cond:
                    cond.notify_all()

    helpers = [pool.submit(helper) for _ in range(n - 1)]
    out: list[Any] = [None] * count
    mine = [False] * count
    try:
        t0, n_mine = time.perf_counter(), 0
        while (i := next(counter)) < count:
            out[i] = fn(items[i])
            mine[i] = True
            n_mine += 1
        patience_s = 2 * (time.perf_counter() - t0) / n_mine if n_mine else 1e-3
        waiting[0] = True
        for i in range(count):
            if mine[i]:
                continue
            if not done[i]:  # a missed notification costs at most the patience
                with cond:
                    cond.wait_for(lambda i=i: done[i], timeout=patience_s)
            out[i] = theirs[i] if done[i] else fn(items[i])
    finally:
        stop[0] = True
        for f in helpers:
            f.cancel()
    return out


def verified_bids(keyring: KeyRing, orders: list[Order]) -> list[tuple[bytes, bytes] | None]:
    """Per order ``(payload, signature)`` if it carries a valid signature of its
    participant over that payload, else None: what the market must know before it
    clears; the bid records are made from these later (:func:`bid_record_of`), with
    the books. The orders of a large book are taken on several threads
    (``_parallel_map``), each whole: its payload and its signature checked (libsodium,
    outside the GIL), so one thread's Python overlaps another's check (40 orders on 2
    cores: 1.57 -> 1.3 ms, against the payloads made first on one thread and only the
    checks shared)."""
    verify = keyring.verify_bytes

    def check(o: Order) -> tuple[bytes, bytes] | None:
        try:
            sig = bytes.fromhex(o.signature) if o.signature else b""
        except (ValueError, TypeError):
            return None
        if not sig:
            return None
        payload = _order_payload(o)
        return (payload, sig) if verify(o.participant, payload, sig) else None

    return _parallel_map(check, orders)


def bid_record_of(order: Order, payload: bytes, signature: bytes) -> dict[str, Any]:
    """The bid record of ``order`` from what :func:`verified_bids` checked: its
    payload (not made again) and its participant's signature."""
    body = _order_body(order)
    del body["signature"]
    return _record("bid", int(order.interval), body, [order.participant], [signature], payload)


def bid_record(keyring: KeyRing, order: Order) -> dict[str, Any]:
    """A bid record carrying its participant's signature: the one the order brings (not
    re-signed), or made with the participant's key in ``keyring`` if it has none."""
    if not order.signature:
        order = sign_order(keyring, order)
    return bid_record_of(order, _order_payload(order), bytes.fromhex(order.signature))


def trade_record(keyring: KeyRing, trade: Trade) -> dict[str, Any]:
    """A trade record (its parties acknowledge it when its block is sealed). The body is
    the trade without its ``trade_id``: the market's id ``"<interval>-<j>"`` is the
    record's position ``j`` among the block's trade records."""
    body = dict(vars(trade))
    body.pop("trade_id", None)
    return make_record(keyring, "trade", trade.interval, body)


def curtailment_record(keyring: KeyRing, notice: CurtailmentNotice) -> dict[str, Any]:
    """A curtailment record (the market's: covered by the seal)."""
    return make_record(keyring, "curtailment", notice.interval, notice)


def settlement_record(keyring: KeyRing, interval: int, row: Any) -> dict[str, Any]:
    """A settlement record (dict or e.g. ``SettlementRow``; the market's: the seal)."""
    return make_record(keyring, "settlement", interval, row)


# ---------------------------------------------------------------- block codec


def _column_type(values: list[Any] | tuple[Any, ...]) -> str:
    types = set(map(type, values))
    if len(types) == 1:
        (t,) = types
        if t is float:
            return "f8"
        if t is bool:
            return "b"
        if t is str:
            return "s"
        if t is int and -(2**63) <= min(values) and max(values) < 2**63:
            return "i"
    if types and all(issubclass(t, str) for t in types):
        # a str subclass (a limit name, federates.common.limits.Limit) is written as its
        # text: the same bytes whether it came as the member or as the plain string
        return "s"
    return "j"


_KEY_ORDER: dict[tuple[Any, ...], list[Any]] = {}  # a body's keys as given -> sorted (few shapes)


def _sorted_keys(body: dict[str, Any]) -> list[Any]:
    """``sorted(body)``, remembered per key sequence (the records of a kind share one)."""
    given = tuple(body)
    keys = _KEY_ORDER.get(given)
    if keys is None:
        keys = sorted(given)
        if len(_KEY_ORDER) < 1024:
            _KEY_ORDER[given] = keys
    return keys


def _segments(records: list[dict[str, Any]]) -> list[tuple[str, list[str], list[dict[str, Any]]]]:
    """Runs of records of one kind with the same body keys (in order of appearance)."""
    out: list[tuple[str, list[str], list[dict[str, Any]]]] = []
    for r in records:
        keys = _sorted_keys(r["body"])
        if out and out[-1][0] == r["kind"] and out[-1][1] == keys:
            out[-1][2].append(r)
        else:
            out.append((r["kind"], keys, [r]))
    return out


def _columns(keys: list[Any], bodies: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Per key of ``keys`` the tuple of its values in ``bodies`` (the segment transposed)."""
    if len(keys) == 1:
        return [tuple(b[keys[0]] for b in bodies)]
    if not keys:
        return []
    return list(zip(*map(itemgetter(*keys), bodies), strict=True))


def encode_block(block: dict[str, Any]) -> bytes:
    """The stored bytes of ``block`` (module docstring); ``decode_block`` inverts it."""
    strings: dict[str, int] = {}
    body = [bytes(block["locators"])]
    segments = []
    for kind, keys, recs in _segments(block["records"]):
        cols = []
        n = len(recs)
        for k, vals in zip(keys, _columns(keys, [r["body"] for r in recs]), strict=True):
            t = _column_type(vals)
            if t == "f8":
                body.append(struct.pack(f"<{n}d", *vals))
                cols.append([k, t])
            elif t == "b":
                body.append(bytes(vals))
                cols.append([k, t])
            elif t == "s":
                body.append(struct.pack(f"<{n}I", *[strings.setdefault(v, len(strings)) for v in vals]))
                cols.append([k, t])
            elif t == "i":
                body.append(struct.pack(f"<{n}q", *vals))
                cols.append([k, t])
            else:
                cols.append([k, t, list(vals)])
        n_sigs = [len(r["signatures"]) for r in recs]
        body.append(b"".join([s for r in recs for s in r["signatures"]]))
        segments.append([kind, n, cols, n_sigs])
    acks = block.get("acks", [])
    body.append(b"".join(sig for _, sig in acks))
    header = {k: v for k, v in block.items() if k not in ("records", "locators", "acks")}
    header["ack_by"] = [p for p, _ in acks]
    header["n_locators"] = len(block["locators"]) // LOCATOR_BYTES
    header["segments"] = segments
    header["strings"] = list(strings)
    hb = canonical_json(header).encode()
    return _U32.pack(len(hb)) + hb + b"".join(body)


_WIDTH = {"f8": 8, "b": 1, "s": 4, "i": 8}  # bytes per value of a column type in the body


def _read_columns(data: bytes, pos: int, cols: list[list[Any]], count: int, strings: list[str],
                  records: bool) -> tuple[dict[str, list], int]:
    """One segment's columns ``{name: values}`` read from ``data`` at ``pos`` (the "j"
    columns from the header), and the position after them; without ``records`` only
    the float and "j" columns are kept."""
    columns: dict[str, list] = {}
    for col in cols:
        name, t = col[0], col[1]
        width = _WIDTH.get(t)
        if width is None:
            if t != "j" or len(col[2]) != count:
                raise ValueError(f"bad column {name!r} of type {t!r}")
            columns[name] = col[2]
            continue
        raw = data[pos:pos + width * count]
        if len(raw) != width * count:
            raise ValueError(f"truncated block (column {name!r})")
        pos += len(raw)
        if t == "f8":
            columns[name] = np.frombuffer(raw, dtype="<f8").tolist()
        elif not records:  # only the float columns are asked for
            continue
        elif t == "b":
            columns[name] = [bool(x) for x in raw]
        elif t == "s":
            columns[name] = [strings[i] for i in np.frombuffer(raw, dtype="<u4").tolist()]
        else:
            columns[name] = np.frombuffer(raw, dtype="<i8").tolist()
    return columns, pos


def _read_records(data: bytes, pos: int, header: dict[str, Any], kind: str, count: int, names: list[str],
                  columns: dict[str, list], n_sigs: list[int]) -> tuple[list[dict[str, Any]], int]:
    """A segment's ``count`` records, their bodies from ``columns`` and their signatures
    read from ``data`` at ``pos``, and the position after them."""
    out = []
    for i in range(count):
        body = {k: columns[k][i] for k in names}
        sigs = []
        for _ in range(n_sigs[i]):
            sigs.append(data[pos:pos + _SIG])
            pos += _SIG
        out.append({"kind": kind, "interval": header["interval"], "body": body, "signatures": sigs})
    return out, pos


def _decode(data: bytes, *, records: bool = True) -> tuple[dict[str, Any], list[tuple[str, dict[str, list]]]]:
    """The header of an encoded block and its segments as ``(kind, {column: values})``;
    with ``records`` also the header's ``records``, ``acks`` and ``locators`` (the
    record dicts built from the columns), else only the columns are read."""
    (n,) = _U32.unpack_from(data, 0)
    header = json.loads(data[4:4 + n])
    pos = 4 + n
    strings = header.pop("strings")
    segments = header.pop("segments")
    n_locators = header.pop("n_locators")
    locators = data[pos:pos + LOCATOR_BYTES * n_locators]
    if len(locators) != LOCATOR_BYTES * n_locators:
        raise ValueError("truncated block (locators)")
    pos += len(locators)
    out_records = []
    out_columns = []
    for kind, count, cols, n_sigs in segments:
        columns, pos = _read_columns(data, pos, cols, count, strings, records)
        out_columns.append((kind, columns))
        if not records:
            pos += _SIG * sum(n_sigs)
            continue
        recs, pos = _read_records(data, pos, header, kind, count, [c[0] for c in cols], columns, n_sigs)
        out_records += recs
    acks = []
    for p in header.pop("ack_by"):
        sig = data[pos:pos + _SIG]
        if len(sig) != _SIG:
            raise ValueError("truncated block (acknowledgements)")
        acks.append([p, sig])
        pos += _SIG
    if pos != len(data):
        raise ValueError(f"block has {len(data) - pos} bytes after its records")
    if records:
        header["acks"] = acks
        header["records"] = out_records
        header["locators"] = locators
    return header, out_columns


def decode_block(data: bytes) -> dict[str, Any]:
    """The block dict ``encode_block`` was given (records without the writer's cache)."""
    return _decode(data)[0]


def block_float_columns(data: bytes) -> list[tuple[str, dict[str, list[float]]]]:
    """The float columns of an encoded block, per segment: ``(record kind, {body field:
    values})``, read straight from the bytes without building the records (the market's
    live ledger check totals them)."""
    return _decode(data, records=False)[1]


def _stream_bytes(path: Path) -> bytes:
    """The decompressed content of a ledger file (every zstd frame; an unfinished last
    frame gives what it holds)."""
    data = path.read_bytes()
    out = []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        data = d.unused_data if d.eof else b""
    return b"".join(out)


def _split_blocks(stream: bytes) -> tuple[list[bytes], str | None]:
    """The blocks' bytes of a decompressed stream, and a problem (or None)."""
    if not stream.startswith(MAGIC):
        return [], "not a tecosim ledger (no 'tecosim-ledger 2' header)"
    pos, out = len(MAGIC), []
    while pos < len(stream):
        if pos + 4 > len(stream):
            return out, f"block {len(out)}: truncated"
        (n,) = _U32.unpack_from(stream, pos)
        if pos + 4 + n > len(stream):
            return out, f"block {len(out)}: truncated ({len(stream) - pos - 4} of {n} bytes)"
        out.append(stream[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out, None


def read_blocks(path: str | Path) -> list[dict[str, Any]]:
    """Every block of a ledger file, decoded (raises ValueError on a damaged file)."""
    raw, problem = _split_blocks(_stream_bytes(_file(path)))
    if problem:
        raise ValueError(problem)
    return [decode_block(b) for b in raw]


def write_blocks(path: str | Path, blocks: list[dict[str, Any]]) -> None:
    """Write ``blocks`` as a ledger file as they are: nothing re-signed or re-hashed."""
    c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    payload = MAGIC + b"".join(_U32.pack(len(b)) + b for b in map(encode_block, blocks))
    _file(path).write_bytes(c.compress(payload))


def _file(path: str | Path) -> Path:
    p = Path(path)
    return p / LEDGER_FILE if p.is_dir() else p


# ---------------------------------------------------------------------- blocks


def _header(block: dict[str, Any]) -> dict[str, Any]:
    h = {k: block[k] for k in _HEADER_KEYS}
    if block["index"] == 0:
        h["public_keys"] = block["public_keys"]
    h["domain"] = _SEAL_DOMAIN
    return h


def _block_hash(header: dict[str, Any], seal_signature: str, nonce: int) -> str:
    return sha256_hex(canonical_json({**header, "seal_signature": seal_signature, "nonce": nonce}).encode())


class Ledger:
    """Append-only signed hash chain of blocks (file format: module docstring).

    ``path`` is the file, or a directory that gets ``ledger.zst``. A new file starts
    with the genesis block; an existing one is continued in a new zstd frame (its
    genesis keys and difficulty must match). Every block is flushed to the file when
    sealed; ``close`` ends the stream (a file not closed is still readable).
    """

    def __init__(self, path: str | Path, keyring: KeyRing, difficulty_bits: int = 0) -> None:
        """Open or create the ledger at ``path``."""
        p = Path(path)
        self.path = p / LEDGER_FILE if p.is_dir() else p
        self.keyring = keyring
        self.difficulty_bits = int(difficulty_bits)
        if not 0 <= self.difficulty_bits <= 64:
            raise ValueError("difficulty_bits must be in 0..64")
        self._last: dict[str, Any] | None = None
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        if self.path.exists() and self.path.stat().st_size > 0:
            raw, problem = _split_blocks(_stream_bytes(self.path))
            if problem:
                raise ValueError(f"{self.path}: {problem}")
            blocks = [decode_block(b) for b in raw]
            genesis, last = blocks[0], blocks[-1]
            if genesis["public_keys"] != keyring.public_keys_hex():
                raise ValueError(f"{self.path}: genesis keys differ from this key ring")
            if genesis["difficulty_bits"] != self.difficulty_bits:
                raise ValueError(f"{self.path}: ledger difficulty is {genesis['difficulty_bits']} bits")
            self._last = last
            # the stream is written again as it was (same calls, same flushes: the same
            # bytes), so that new blocks continue it instead of a possibly unfinished frame
            self._fh = self.path.open("wb")
            self._write(MAGIC)
            for b in raw:
                self._write(_U32.pack(len(b)) + b)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")
            self._write(MAGIC)
            self._seal(None, [], public_keys=keyring.public_keys_hex())

    @property
    def n_blocks(self) -> int:
        """Blocks written so far, genesis included."""
        return 0 if self._last is None else self._last["index"] + 1

    def append_block(self, interval: int, records: list[dict[str, Any]],
                     acks: list[list[Any]] | None = None) -> dict[str, Any]:
        """Seal ``records`` of market interval ``interval`` into a block, write and return
        it. ``acks``: the trade parties' acknowledgements (``acknowledge_trades``); by
        default made with this ledger's key ring (which then holds their keys)."""
        return self._seal(int(interval), list(records), acks=acks)

    def close(self) -> None:
        """End the compressed stream and close the file (idempotent)."""
        if not self._fh.closed:
            self._fh.write(self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self._fh.close()

    def _write(self, data: bytes) -> None:
        self._fh.write(self._zstd.compress(data))
        self._fh.write(self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        self._fh.flush()

    def _seal(self, interval: int | None, records: list[dict[str, Any]],
              public_keys: dict[str, str] | None = None,
              acks: list[list[Any]] | None = None) -> dict[str, Any]:
        if any(r["interval"] != interval for r in records):
            raise ValueError(f"every record of the block of interval {interval} must be of that interval")
        leaves = [r.get("_leaf") or record_leaf(r) for r in records]
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
        nonce = 0
        digest = _block_hash(header, seal, nonce)
        if self.difficulty_bits > 0:
            t0 = time.perf_counter()
            while leading_zero_bits(digest) < self.difficulty_bits:
                nonce += 1
                digest = _block_hash(header, seal, nonce)
            block["pow_s"] = time.perf_counter() - t0  # wall time [s] of the search; not hashed
        if acks is None:
            acks = acknowledge_trades(self.keyring, interval, records, leaves) if records else []
        block.update(
            records=[{"kind": r["kind"], "interval": r["interval"], "body": r["body"],
                      "signatures": r["signatures"]} for r in records],
            locators=b"".join(leaf[:LOCATOR_BYTES] for leaf in leaves),
            acks=acks,
            seal_signature=seal,
            nonce=nonce,
            hash=digest,
        )
        data = encode_block(block)
        self._write(_U32.pack(len(data)) + data)
        self._last = block
        self.last_block_bytes = data  # as written: a reader (the market's ledger check) decodes it
        return block


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify_ledger``: ``first_bad`` names the first problem found."""

    ok: bool
    first_bad: str | None
    n_blocks: int
    n_records: int


def _check_record(rec: dict[str, Any], b: int, j: int, interval: Any,
                  keys: KeyRing) -> tuple[str | None, bytes]:
    where = f"block {b} record {j}"
    try:
        kind, body, sigs = rec["kind"], rec["body"], rec["signatures"]
        signers = required_signers(kind, body)
        payload = record_payload(kind, rec["interval"], body)
    except (KeyError, TypeError, ValueError) as exc:
        return f"{where}: malformed record ({exc!r})", b""
    if rec["interval"] != interval:
        return f"{where}: interval {rec['interval']} is not the block's interval {interval}", b""
    if len(sigs) != len(signers):
        return f"{where}: {kind} must carry signatures of {signers}, has {len(sigs)}", b""
    for who, sig in zip(signers, sigs, strict=True):
        if who not in keys.participants:
            return f"{where}: signer {who} has no key in the genesis block", b""
        if not keys.verify_bytes(who, payload, sig):
            return f"{where}: signature of {who} does not verify", b""
    return None, leaf_hash(payload, sigs)


def _check_leaves(block: dict[str, Any], b: int, leaves: list[bytes]) -> str | None:
    """Records against the committed locators (naming the first difference), then the
    Merkle root of the recomputed leaves against the sealed ``records_hash``."""
    loc = block["locators"]
    want = [bytes(loc[i:i + LOCATOR_BYTES]) for i in range(0, len(loc), LOCATOR_BYTES)]
    have = [leaf[:LOCATOR_BYTES] for leaf in leaves]
    for j in range(max(len(want), len(have))):
        if j >= len(have):
            return f"block {b} record {j} missing (block has {len(have)} of {len(want)} records)"
        if j >= len(want):
            return f"block {b} record {j}: extra record not in records_hash"
        if have[j] != want[j]:
            if have[j] in want[j + 1:]:
                later = want.index(have[j], j + 1)
                if want[j] in have[j + 1:]:
                    return f"block {b} record {j}: out of order (record {later} of the sealed order found here)"
                return f"block {b} record {j} missing ({len(have)} of {len(want)} records present)"
            if j + 1 < len(have) and have[j + 1] == want[j]:
                return f"block {b} record {j}: extra record not in records_hash"
            return f"block {b} record {j}: altered (hash does not match records_hash leaf)"
    if merkle_root(leaves) != block["records_hash"]:
        return f"block {b}: records do not match records_hash (Merkle root)"
    return None


def _check_acks(block: dict[str, Any], b: int, leaves: list[bytes], keys: KeyRing) -> str | None:
    """Every party of the block's trades acknowledged exactly its trades, once."""
    parties = _trades_by_party(block["records"], leaves)
    acks = block["acks"]
    seen: set[str] = set()
    for p, sig in acks:
        if p not in parties:
            return f"block {b}: acknowledgement by {p}, who has no trade in the block"
        if p in seen:
            return f"block {b}: {p} acknowledges twice"
        seen.add(p)
        first = parties[p][0]
        if p not in keys.participants:
            return f"block {b} record {first}: signer {p} has no key in the genesis block"
        msg = _ack_message(block["interval"], p, [leaves[j] for j in parties[p]])
        if not keys.verify_bytes(p, msg, bytes(sig)):
            return f"block {b} record {first}: acknowledgement of {p} does not verify"
    for p, js in parties.items():
        if p not in seen:
            return f"block {b} record {js[0]}: trade not acknowledged by {p}"
    return None


def _check_block(block: dict[str, Any], b: int, difficulty: int, keys: KeyRing) -> str | None:
    leaves = []
    for j, rec in enumerate(block["records"]):
        bad, leaf = _check_record(rec, b, j, block["interval"], keys)
        if bad:
            return bad
        leaves.append(leaf)
    bad = _check_leaves(block, b, leaves) or _check_acks(block, b, leaves, keys)
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


def _decoded_blocks(raw: list[bytes], problem: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The blocks decoded up to the first that cannot be (which then is the problem)."""
    blocks: list[dict[str, Any]] = []
    for n, data in enumerate(raw):
        try:
            blocks.append(decode_block(data))
        except (ValueError, KeyError, TypeError, IndexError, json.JSONDecodeError) as exc:
            problem = f"block {n}: cannot be decoded ({exc})"
            break
    return blocks, problem


def _genesis_problem(genesis: dict[str, Any], trusted_public_keys: dict[str, str] | None) -> str | None:
    if genesis.get("index") != 0:
        return f"block 0 missing (first block has index {genesis.get('index')})"
    if genesis["prev_hash"] != GENESIS_PREV_HASH or genesis["records"]:
        return "block 0: not a genesis block"
    if trusted_public_keys is not None and genesis["public_keys"] != trusted_public_keys:
        return "block 0: public keys differ from the trusted keys"
    return None


def _link_problem(blocks: list[dict[str, Any]], pos: int, indices: list[Any]) -> str | None:
    """Whether block ``pos`` (> 0) follows block ``pos - 1``: its index and prev_hash."""
    block, prev = blocks[pos], blocks[pos - 1]
    b = block["index"]
    if b != pos:
        if pos in indices[pos + 1:]:
            return f"block {pos} out of order (block {b} found in its place, after block {prev['index']})"
        return f"block {pos} missing (index jumps from {prev['index']} to {b})"
    if block["prev_hash"] != prev["hash"]:
        return f"block {b}: prev_hash does not match block {pos - 1}"
    return None


def _chain_problem(blocks: list[dict[str, Any]], trusted_public_keys: dict[str, str] | None) -> str | None:
    """The first problem of the decoded chain: its genesis, then block by block its
    link to the one before and its own content (``_check_block``); None if none."""
    pos = 0
    try:
        genesis = blocks[0]
        msg = _genesis_problem(genesis, trusted_public_keys)
        if msg:
            return msg
        keys = KeyRing.from_public_hex(genesis["public_keys"])
        difficulty = int(genesis["difficulty_bits"])
        indices = [blk.get("index") for blk in blocks]
        for pos, block in enumerate(blocks):
            b = block["index"]
            msg = (_link_problem(blocks, pos, indices) if pos > 0 else None) or _check_block(block, b, difficulty, keys)
            if msg:
                return msg
    except (KeyError, TypeError, ValueError) as exc:
        return f"block {pos}: malformed ({exc!r})"
    return None


def verify_ledger(
    path: str | Path, trusted_public_keys: dict[str, str] | None = None
) -> VerifyResult:
    """Check a ledger file end to end; stop at the first problem and name it.

    Checks: the file decodes block by block (naming a truncated or undecodable block);
    consecutive indices (naming a missing or out-of-order block); the hash chain
    (prev_hash = the previous block's hash); every participant signature of every record
    against the genesis public keys (and, if given, the genesis keys against
    ``trusted_public_keys``), the signers being those ``required_signers`` names; every
    record against its block's locators (naming an altered, missing, extra or moved
    record) and the Merkle root of the recomputed leaves against ``records_hash``; every
    trade acknowledged by its seller and buyer (but GRID), each party once per block over
    exactly its trades; the
    authority's seal over the header (which authenticates the authority's records); each
    block's hash and its proof of work.
    """
    p = _file(path)
    try:
        stream = _stream_bytes(p)
    except zstandard.ZstdError as exc:
        return VerifyResult(False, f"not a zstd stream ({exc})", 0, 0)
    raw, problem = _split_blocks(stream)
    blocks, problem = _decoded_blocks(raw, problem)
    n_records = sum(len(b.get("records", [])) for b in blocks)
    if not blocks:
        return VerifyResult(False, problem or "ledger is empty (no genesis block)", 0, n_records)
    msg = _chain_problem(blocks, trusted_public_keys) or problem or None
    return VerifyResult(msg is None, msg, len(blocks), n_records)
