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
    """encode writes a message item's instance dict as it is (no dataclasses.asdict deep
    copy): every kind's fields hold plain values (no dataclass, at any depth of their
    type), and the text decodes to equal items, as asdict's would."""
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
        assert json.loads(text)["items"] == [json.loads(json.dumps(dataclasses.asdict(x)))]
        assert m.decode(text).items == [x]
