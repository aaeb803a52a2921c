"""The bench's reading of HELICS's profile (benchmarks/helics_profile.py), on a small
literal profile whose sums are worked out by hand below."""

from __future__ import annotations

import pytest

from benchmarks.helics_profile import (
    clock_offset_ns,
    concurrency,
    parse,
    split_run,
    summarize,
)

# Two federates, times in ns. "a": created at 100 (system clock 5000100), enters
# executing mode 150 -> 1000; requests 1100 -> 1500 and 1600 -> 2500; disconnects at
# 2600 (no EXIT). "b": created at 120, enters 160 -> 1010; one request 1200 -> 2400;
# disconnects at 2700. Lines out of time order, as the broker may write them; one
# foreign line in between.
PROFILE = """\
<PROFILING>a[131072](created)MARKER<100|5000100>[t=-9223372036.854776]</PROFILING>
<PROFILING>b[131073](created)MARKER<120|5000121>[t=-9223372036.854776]</PROFILING>
<PROFILING>a[131072](initializing)HELICS CODE ENTRY<150>[t=-1000000]</PROFILING>
<PROFILING>b[131073](initializing)HELICS CODE ENTRY<160>[t=-1000000]</PROFILING>
<PROFILING>b[131073](executing)HELICS CODE EXIT<1010>[t=0]</PROFILING>
<PROFILING>a[131072](executing)HELICS CODE EXIT<1000>[t=0]</PROFILING>
<PROFILING>a[131072](executing)HELICS CODE ENTRY<1100>[t=0]</PROFILING>
some other log line
<PROFILING>b[131073](executing)HELICS CODE ENTRY<1200>[t=0]</PROFILING>
<PROFILING>a[131072](executing)HELICS CODE EXIT<1500>[t=0.25]</PROFILING>
<PROFILING>a[131072](executing)HELICS CODE ENTRY<1600>[t=0.25]</PROFILING>
<PROFILING>b[131073](executing)HELICS CODE EXIT<2400>[t=1.001]</PROFILING>
<PROFILING>a[131072](executing)HELICS CODE EXIT<2500>[t=1]</PROFILING>
<PROFILING>a[131072](executing)HELICS CODE ENTRY<2600>[t=1]</PROFILING>
<PROFILING>b[131073](executing)HELICS CODE ENTRY<2700>[t=1.001]</PROFILING>
"""


def test_parse_reads_every_profiling_line():
    events = parse(PROFILE)
    assert len(events) == 14  # the foreign line skipped
    first = events[0]
    assert (first.name, first.state, first.what, first.ns, first.system_ns) == ("a", "created", "MARKER", 100, 5000100)
    assert events[-1].t == pytest.approx(1.001)
    assert events[-1].what == "HELICS CODE ENTRY" and events[-1].state == "executing"


def test_summary_per_federate():
    p = summarize(parse(PROFILE))
    assert list(p) == ["a", "b"]
    a, b = p["a"], p["b"]
    assert (a.marker_ns, a.executing_ns, a.close_ns) == (100, 1000, 2600)
    # inside: (1500 - 1100) + (2500 - 1600) = 400 + 900; the EXIT of entering executing
    # mode (ENTRY in state initializing) is not loop time
    assert a.inside_ns == 1300 and a.calls == 2
    assert a.loop_ns == 1600 and a.outside_ns == 300
    # outside: 1000 -> 1100, 1500 -> 1600, 2500 -> 2600
    assert a.outside == [(1000, 1100), (1500, 1600), (2500, 2600)]
    assert (b.executing_ns, b.close_ns, b.inside_ns, b.calls) == (1010, 2700, 1200, 1)
    assert b.outside == [(1010, 1200), (2400, 2700)]
    assert b.loop_ns == b.inside_ns + sum(e - s for s, e in b.outside)


def test_concurrency_splits_the_loop_by_federates_working():
    p = summarize(parse(PROFILE))
    # loop 1000 .. 2700. a works 1000-1100, 1500-1600, 2500-2600; b 1010-1200, 2400-2700.
    # two at once: 1010-1100 (90), 2500-2600 (100) = 190
    # one: 1000-1010 (10) + 1100-1200 (100) + 1500-1600 (100) + 2400-2500 (100) + 2600-2700 (100) = 410
    # none: 1700 - 190 - 410 = 1100 (1200-1500, 1600-2400)
    assert concurrency(p) == {0: 1100, 1: 410, 2: 190}
    assert concurrency(p, start_ns=1500, end_ns=1600) == {1: 100}


def test_split_run_against_process_starts():
    p = summarize(parse(PROFILE))
    ns = 1e-9
    starts = {"a": 50 * ns, "b": 60 * ns}
    ends = {"a": 2800 * ns, "b": None}
    s = split_run(p, wall_s=3000 * ns, t_begin_s=0.0, starts_s=starts, ends_s=ends)
    assert s.startup == pytest.approx(1000 * ns)  # the first federate executing
    assert s.loop == pytest.approx(1700 * ns)  # 1000 -> 2700
    assert s.after == pytest.approx(300 * ns)
    a, b = s.federates["a"], s.federates["b"]
    assert a.startup == pytest.approx(950 * ns) and a.created == pytest.approx(50 * ns)
    assert a.inside == pytest.approx(1300 * ns) and a.outside == pytest.approx(300 * ns)
    assert a.after == pytest.approx(200 * ns) and b.after is None
    assert b.startup == pytest.approx(950 * ns) and b.calls == 1
    assert sum(s.busy.values()) == pytest.approx(s.loop)


def test_clock_offset_is_the_markers_median():
    assert clock_offset_ns(summarize(parse(PROFILE))) in (5000000, 5000001)


def test_a_profile_without_executing_federates_cannot_be_split():
    p = summarize(parse(PROFILE.splitlines()[0]))
    assert p["a"].loop_ns is None and p["a"].outside_ns is None
    with pytest.raises(ValueError):
        split_run(p, 1.0, 0.0, {}, {})
