"""Wire types that travel as HELICS values: the DSO's view and the SCADA vector."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.messages import DsoCap, DsoView, Scada, decode, encode


def test_dso_view_round_trips_through_one_vector():
    rng = np.random.default_rng(0)
    scada = Scada(loading_pct=rng.uniform(0, 120, 7), p_kw=rng.normal(0, 50, 7), vuf_pct=rng.uniform(0, 3, 2),
                  source_p_kw=-12.5)
    view = DsoView(step=1439, rounds=3, may_act=True, v_pu=rng.uniform(0.9, 1.1, 5), p_kw=rng.normal(0, 4, 5),
                   scada=scada)
    x = view.to_vector()
    assert x.shape == (3 + 2 * 5 + Scada.size(7, 2),)
    back = DsoView.from_vector(x, 5, (7, 2))
    assert (back.step, back.rounds, back.may_act) == (1439, 3, True)
    np.testing.assert_array_equal(back.v_pu, view.v_pu)
    np.testing.assert_array_equal(back.p_kw, view.p_kw)
    np.testing.assert_array_equal(back.scada.to_vector(), scada.to_vector())
    quiet = DsoView.from_vector(DsoView(0, 0, False, np.ones(5), np.zeros(5)).to_vector(), 5, None)
    assert quiet.scada is None and not quiet.may_act
    with pytest.raises(ValueError, match="expected 13"):
        DsoView.from_vector(x, 5, None)


def test_dso_caps_travel_as_json_with_their_lift():
    caps = [DsoCap("p001", 2.5, "v_max", "p001", 1.061, 4.0), DsoCap("p002", None)]
    env = decode(encode(caps, kind="dso_caps", step=7, capped=False))
    assert env.kind == "dso_caps" and env.header == {"step": 7, "capped": False}
    assert env.items[0] == caps[0]
    assert env.items[1].participant == "p002" and env.items[1].cap_kw is None
    assert np.isnan(env.items[1].v_pu)


def test_every_message_kind_is_flat_and_encodes_as_asdict_would():
    """encode writes a message item's instance dict values as they are (no
    dataclasses.asdict deep copy), one row per item under the kind's field names: every
    kind's fields hold plain values (no dataclass, at any depth of their type), each row
    read with the fields is what asdict gives, and the text decodes to equal items."""
    import dataclasses
    import json
    import typing

    from federates.common import messages as m

    def dataclass_inside(tp) -> bool:
        return dataclasses.is_dataclass(tp) or any(dataclass_inside(a) for a in typing.get_args(tp))

    for kind, cls in m._KINDS.items():
        hints = typing.get_type_hints(cls)
        assert not any(dataclass_inside(t) for t in hints.values()), kind
    items = [m.GridConstraint(interval=3, name="v_max:p1", participants=("p1", "p2"), coef=(0.5, 0.25), rhs=0.02)]
    for x in [m.Confirmation("p1", 3, 1.0, 1.0, 0.0, 0.0, 0.0, 0.17, 0.17), m.LossEnergy("p1", 3, 0.01), *items]:
        text = m.encode([x])
        obj = json.loads(text)
        assert obj["fields"] == [f.name for f in dataclasses.fields(x)]
        assert [dict(zip(obj["fields"], r, strict=True)) for r in obj["rows"]] == \
            [json.loads(json.dumps(dataclasses.asdict(x)))]
        assert m.decode(text).items == [x]
    with pytest.raises(ValueError, match="'confirmations' message holds Confirmation items, not LossEnergy"):
        m.encode([m.LossEnergy("p1", 3, 0.01)], kind="confirmations")


def _field_values(cls, seed: int) -> list:
    """One value per field of ``cls``, of the field's kind, distinct per seed."""
    import dataclasses
    import typing

    out = []
    for i, f in enumerate(dataclasses.fields(cls)):
        tp = typing.get_type_hints(cls)[f.name]
        out.append(seed * 100 + i if tp is int else f"s{seed}.{i}" if tp is str else
                   seed + i / 8 if tp is float or float in typing.get_args(tp) else None)
    return out


def test_maker_objects_are_the_dataclass_own_bit_for_bit():
    """rows.maker (the fast constructor without __init__: decoded messages, Rows) gives what the dataclass's
    __init__ gives: same type, fields, ==, hash, repr, asdict, replace, still frozen;
    refuses a class with __post_init__ (whose checks it would skip)."""
    import dataclasses

    from federates.common import messages as m
    from federates.common.rows import maker

    for cls in m._KINDS.values():
        if hasattr(cls, "__post_init__"):
            with pytest.raises(ValueError, match="__post_init__"):
                maker(cls)
            continue
        for seed in range(3):
            values = _field_values(cls, seed)
            fast, slow = maker(cls)(*values), cls(*values)
            assert type(fast) is cls and fast == slow and repr(fast) == repr(slow), cls
            assert vars(fast) == vars(slow) and list(vars(fast)) == list(vars(slow))
            assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
            if cls.__hash__ is not None:
                assert hash(fast) == hash(slow)
            name = dataclasses.fields(cls)[0].name
            if cls.__dataclass_params__.frozen:
                with pytest.raises(dataclasses.FrozenInstanceError):
                    setattr(fast, name, values[0])
            assert dataclasses.replace(fast, **{name: values[0]}) == slow
            assert m.encode([fast], kind=m._KIND_OF[cls]) == m.encode([slow], kind=m._KIND_OF[cls])


def test_decode_fast_path_equals_the_constructor():
    """decode makes items with exactly the fields in field order (as encode writes them)
    by maker, and others (fields in another order; missing fields: defaults; extra
    fields: ignored; a __post_init__) through __init__: equal items either way."""
    import json

    from federates.common import messages as m

    for kind, cls in m._KINDS.items():
        if hasattr(cls, "__post_init__"):
            continue
        items = [cls(*_field_values(cls, s)) for s in range(3)]
        assert m.decode(m.encode(items, kind=kind)).items == items
        raw = json.loads(m.encode(items, kind=kind))
        raw["fields"].append("extra")  # not a field: the slow path for the whole message
        for row in raw["rows"]:
            row.append(1)
        assert m.decode(json.dumps(raw)).items == items
        raw = json.loads(m.encode(items, kind=kind))
        raw["fields"].reverse()
        for row in raw["rows"]:
            row.reverse()
        assert m.decode(json.dumps(raw)).items == items
    t = m.decode('{"kind": "trades", "fields": ["interval", "seller", "buyer", "energy_kwh", "price_usd_per_kwh"], '
                 '"rows": [[1, "a", "b", 1.5, 0.2]], "step": 3}')
    assert t.items == [m.Trade(1, "a", "b", 1.5, 0.2)] and t.header == {"step": 3}
