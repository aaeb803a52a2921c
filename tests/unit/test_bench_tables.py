"""The bench's table and number formats (benchmarks/tables.py), the critical path it
compares the federation with (benchmarks/run.py) and the no-op federation's message
count (benchmarks/noop_federate.py), against hand-computed values."""

from __future__ import annotations

import pytest

from benchmarks.tables import f, med, pct, ratio, spread, table


def test_table_pads_and_aligns():
    text = table(["role", "s"], [["feeder", "4.07"], ["market", "12.50"]])
    assert text.splitlines() == [
        "| role   |     s |",
        "|:-------|------:|",
        "| feeder |  4.07 |",
        "| market | 12.50 |",
    ]


def test_table_text_columns_and_short_rows():
    text = table(["a", "b", "c"], [["x"]], numeric=False)
    assert text.splitlines() == ["| a | b | c |", "|:--|:--|:--|", "| x |   |   |"]
    with pytest.raises(ValueError):
        table(["a"], [["1", "2"]])


def test_numbers():
    assert f(1.23456) == "1.23" and f(1.23456, 1) == "1.2" and f(None) == "–"
    assert pct(0.256) == "26 %" and pct(0.256, 1) == "25.6 %" and pct(None) == "–"
    assert ratio(3.0, 2.0) == "1.50×" and ratio(1.0, 0.0) == "–" and ratio(None, 1.0) == "–"
    assert med([3.0, None, 1.0, 2.0]) == 2.0 and med([None]) is None
    assert spread([2.0, 1.0, 4.0]) == "2.00 (1.00–4.00)" and spread([5.0]) == "5.00" and spread([]) == "–"


def test_critical_path_overlaps_prosumers_and_meters_only():
    from benchmarks.run import critical_path_s

    secs = {"prosumers": 0.7, "market": 2.7, "feeder": 4.1, "meters": 0.8, "controllers": 1.5, "setup": 0.8}
    assert critical_path_s(secs) == pytest.approx(4.1 + 1.5 + 2.7 + 0.8)


def test_noop_plan_counts_what_the_federates_send():
    from benchmarks.noop_federate import Plan

    # 2 intervals, 4 steps; the DSO is shown two views in step 1 and one in step 3
    plan = Plan(duration_s=240, market_interval_s=120, physics_step_s=60, n=3, view_size=9,
                replies=[[], [10, 11], [], [12]], orders=[100, 101], confirmations=[50, 51],
                market_envelopes=[0, 0], envelopes=[7, 8], feeder_envelopes=[0, 8], grid_constraints=[5, 6],
                ami=[30, 31], interval_energy=[20, 21], curtailments=[3, 4], views_done=[40, 41])
    assert plan.views == [0, 2, 0, 1]
    # orders 2 + confirmations 2 x 2 + envelopes, constraints from interval 1 on: 1 + 1 + feeder
    # envelopes 1 + ami 2 + energy 2 + curtailments 2 + replies 3 + views done 2 = 20
    assert plan.n_messages() == 20
    assert plan.n_bytes() == 201 + 2 * 101 + 8 + 8 + 6 + 61 + 41 + 7 + 33 + 81
    assert plan.timeline.n_steps == 4
