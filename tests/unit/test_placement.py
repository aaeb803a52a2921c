"""Seeded prosumer placement (pure: no OpenDSS)."""

from __future__ import annotations

from collections import Counter

import pytest

from federates.common.grid import LoadPoint
from federates.feeder.placement import place_customers

LOADS = [
    LoadPoint("big3ph", "671", ("a", "b", "c"), 4.16, 1155.0, 660.0, "delta"),
    LoadPoint("small_a", "652", ("a",), 2.4, 128.0, 86.0, "wye"),
    LoadPoint("bc", "646", ("b", "c"), 4.16, 230.0, 132.0, "delta"),
    LoadPoint("zero_c", "611", ("c",), 2.4, 0.0, 0.0, "wye"),
]


def test_same_seed_same_sites_other_seed_other_sites():
    a = place_customers(LOADS, 40, seed=42)
    assert a == place_customers(LOADS, 40, seed=42)
    assert a != place_customers(LOADS, 40, seed=43)


def test_names_indices_and_order():
    sites = place_customers(LOADS, 12, seed=1)
    assert [s.participant for s in sites] == [f"p{i:03d}" for i in range(12)]
    assert [s.index for s in sites] == list(range(12))
    order = [(next(i for i, lp in enumerate(LOADS) if lp.name == s.load), s.phase) for s in sites]
    assert order == sorted(order)  # grouped by load (model order), then phase
    wide = place_customers(LOADS, 1001, seed=1)
    assert wide[0].participant == "p0000" and wide[-1].participant == "p1000"


def test_phase_is_one_of_the_loads_phases_and_zero_kw_loads_never_chosen():
    by_name = {lp.name: lp for lp in LOADS}
    sites = place_customers(LOADS, 200, seed=3)
    for s in sites:
        assert s.phase in by_name[s.load].phases
        assert s.bus == by_name[s.load].bus
    assert "zero_c" not in {s.load for s in sites}
    # proportional to kW: the 1155 kW load gets most of 1513 kW worth of draws
    share = Counter(s.load for s in sites)["big3ph"] / 200
    assert share == pytest.approx(1155 / 1513, abs=0.1)


def test_phase_restriction():
    sites = place_customers(LOADS, 50, seed=5, phase="b")
    assert {s.phase for s in sites} == {"b"}
    assert {s.load for s in sites} <= {"big3ph", "bc"}


def test_group_sizes():
    for per in (1, 3, 5):
        sites = place_customers(LOADS, 60, seed=9, customers_per_transformer=per)
        groups: dict[str, list] = {}
        for s in sites:
            groups.setdefault(s.group, []).append(s)
        for members in groups.values():
            assert 1 <= len(members) <= per
            assert len({(m.load, m.phase) for m in members}) == 1  # one load and phase per group
            idx = [m.index for m in members]
            assert idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive customers
        # only the last group of a load and phase may be short
        per_key = Counter((s.load, s.phase) for s in sites)
        expected = sum(-(-n // per) for n in per_key.values())
        assert len(groups) == expected


def test_error_when_no_load_is_eligible():
    with pytest.raises(ValueError, match="phase 'c'"):
        place_customers([LOADS[1]], 5, seed=1, phase="c")
    with pytest.raises(ValueError, match="phase 'x'"):
        place_customers(LOADS, 5, seed=1, phase="x")
    with pytest.raises(ValueError):
        place_customers([LOADS[3]], 5, seed=1)
    assert place_customers(LOADS, 0, seed=1) == []


def test_line_to_line_and_unwired_loads():
    """A line-to-line load (delta or wye across two phases) spreads its prosumers L-N over
    both of its phases, uniformly (binomial: 2000 draws, p = 1/2, sigma ~ 22); a load
    wired to no phase node never gets one."""
    ll = LoadPoint("ll_ca", "700", ("c", "a"), 12.47, 50.0, 10.0, "delta")
    neutral_only = LoadPoint("on_n", "701", (), 7.2, 500.0, 10.0, "wye")
    sites = place_customers([ll, neutral_only], 2000, seed=11)
    assert {s.load for s in sites} == {"ll_ca"}
    n = Counter(s.phase for s in sites)
    assert set(n) == {"a", "c"}
    assert abs(n["a"] - 1000) < 5 * 22.4
    with pytest.raises(ValueError):
        place_customers([neutral_only], 1, seed=1)


def test_one_per_load_takes_each_load_at_most_once():
    pts = [LoadPoint(name=f"l{i}", bus=f"b{i}", phases=("a",), kv=0.24, kw=1.0 + i, kvar=0.0, conn="wye")
           for i in range(10)]
    every = place_customers(pts, 10, seed=3, spread="one_per_load")
    assert sorted(s.load for s in every) == sorted(p.name for p in pts)  # each once
    some = place_customers(pts, 4, seed=3, spread="one_per_load")
    assert len({s.load for s in some}) == 4
    assert some == place_customers(pts, 4, seed=3, spread="one_per_load")  # seeded
    with pytest.raises(ValueError, match="only 10 loads"):
        place_customers(pts, 11, seed=3, spread="one_per_load")
    with pytest.raises(ValueError, match="spread"):
        place_customers(pts, 4, seed=3, spread="everywhere")
