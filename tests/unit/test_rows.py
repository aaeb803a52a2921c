"""``federates.common.rows.Rows``: a clearing's trades and confirmations as columns.

The reference is the dataclass itself: every object a ``Rows`` hands out equals the one
``cls(...)`` makes (type, fields in field order, ==, hash, repr, asdict, replace, pickle,
frozen), and a message encoded from the columns is the message of those objects."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, asdict, replace

import pytest

from federates.common.messages import Confirmation, Trade, decode, encode
from federates.common.rows import Rows, Same, maker
from federates.market import fastbook

WANT = [Trade(4, "a", "b", 1.5, 0.2, 0.0, "4-0"), Trade(4, "c", "grid", 0.25, 0.1, 0.0, "4-1")]


def _rows() -> Rows:
    return Rows(Trade, 2, {"interval": Same(4), "seller": ["a", "c"], "buyer": ["b", "grid"],
                           "energy_kwh": [1.5, 0.25], "price_usd_per_kwh": [0.2, 0.1],
                           "fee_usd": Same(0.0), "trade_id": ["4-0", "4-1"]})


def test_objects_are_the_frozen_class():
    rows = _rows()
    assert len(rows) == 2 and rows == WANT and WANT == rows and rows != WANT[:1]
    for got, ref in zip(rows, WANT, strict=True):
        assert type(got) is Trade and got == ref and hash(got) == hash(ref)
        assert repr(got) == repr(ref) and asdict(got) == asdict(ref)
        assert list(vars(got)) == list(vars(ref))  # the field order (record bodies, rows)
        assert replace(got, energy_kwh=9.0) == replace(ref, energy_kwh=9.0)
        assert pickle.loads(pickle.dumps(got)) == ref
        with pytest.raises(FrozenInstanceError):
            got.energy_kwh = 1.0  # type: ignore[misc]
    assert rows[1] is rows[1] and rows[-1] == WANT[-1] and rows[:1] == WANT[:1]  # made once
    assert repr(rows) == repr(WANT) and rows + WANT[:0] == WANT and WANT[:0] + rows == WANT
    assert pickle.loads(pickle.dumps(rows)) == WANT and type(copy.deepcopy(rows)) is list
    with pytest.raises(TypeError):
        hash(rows)


def test_columns_change_without_objects():
    rows = _rows()
    priced = rows.with_columns(price_usd_per_kwh=Same(0.3))
    assert priced == [replace(t, price_usd_per_kwh=0.3) for t in WANT] and rows == WANT
    assert priced.column("price_usd_per_kwh") == [0.3, 0.3]
    assert Rows.of(Trade, WANT) == WANT and Rows.of(Trade, rows) is rows
    assert list(rows.tuples()) == [tuple(vars(t).values()) for t in WANT]


def test_bad_columns_named():
    with pytest.raises(ValueError, match="trade_id"):
        Rows(Trade, 1, {"interval": Same(0)})
    with pytest.raises(ValueError, match="'seller' has 1 values, not 2"):
        _rows().with_columns(seller=["a"])
    with pytest.raises(ValueError, match="no fields"):
        _rows().with_columns(colour=["a", "b"])


def test_message_from_columns_is_the_objects_message():
    rows = _rows()
    assert encode(rows, kind="trades", interval=4) == encode(WANT, kind="trades", interval=4)
    assert decode(encode(rows)).items == WANT
    conf = fastbook.make_confirmations(["a"], 1, [1.0], [1.0], [0.0], [0.0], [0.0], None)
    with pytest.raises(ValueError, match="Confirmation"):
        encode(conf, kind="trades")


def test_fastbook_result_rows_equal_constructed_objects():
    (t,) = fastbook.make_trades(3, ["a"], ["b"], [1.5], [0.2])
    assert t == Trade(3, "a", "b", 1.5, 0.2) and hash(t) == hash(Trade(3, "a", "b", 1.5, 0.2))
    (c,) = fastbook.make_confirmations(["a"], 1, [1.0], [1.0], [0.0], [0.0], [0.0], 0.2)
    assert type(c) is Confirmation and c == Confirmation("a", 1, 1.0, 1.0, 0.0, 0.0, 0.0, 0.2)
    with pytest.raises(ValueError):
        fastbook.make_trades(0, ["a", "b"], ["c"], [1.0, 2.0], [0.1, 0.1])
    assert maker(Trade)(*vars(WANT[0]).values()) == WANT[0]
