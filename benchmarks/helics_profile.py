"""HELICS's own profile of a federation, read back (``federation.helics_profiler: true``).

The broker writes one line per event of every federate (HELICS docs, "Profiling")::

    <PROFILING>feeder[131074](executing)HELICS CODE ENTRY<7026881258732>[t=1]</PROFILING>

``name[id](state)WHAT<ns>[t=granted]``: ``WHAT`` is ``MARKER`` (``<steady ns|system ns>``,
once, when profiling starts), ``HELICS CODE ENTRY`` (the federate enters a blocking HELICS
call: a time request, entering executing mode, disconnecting) or ``HELICS CODE EXIT`` (the
call returns). Times are nanoseconds of the machine's steady clock (CLOCK_MONOTONIC on
Linux, the clock of Python's ``time.perf_counter_ns``).

Per federate this gives (:func:`summarize`):

* ``executing_ns``: its first EXIT in state ``executing``: ``helicsFederateEnterExecutingMode``
  returned (every federate waits there for all the others);
* ``close_ns``: its last ENTRY that no EXIT follows: the disconnect at the end of its time
  loop (HELICS reports no EXIT for it);
* ``inside_ns``: the sum of ENTRY -> EXIT of the calls made in state ``executing`` after
  ``executing_ns``: waiting for grants (and the messages and values that come with them);
* ``outside_ns`` = (close - executing) - inside: the federate's own work between calls,
  including the non-blocking HELICS calls (publish, send, read) that the profile does not mark.

:func:`concurrency` then splits the federation's loop by how many federates were outside
HELICS at once: the time with none outside is the pure coordination cost (every federate
waiting on the broker and the network). Pure functions, no HELICS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LINE = re.compile(
    r"<PROFILING>(?P<name>.+?)\[(?P<id>-?\d+)\]\((?P<state>\w+)\)"
    r"(?P<what>MARKER|HELICS CODE ENTRY|HELICS CODE EXIT)"
    r"<(?P<ns>\d+)(?:\|(?P<sys>\d+))?>(?:\[t=(?P<t>[^\]]*)\])?</PROFILING>"
)
ENTRY, EXIT, MARKER = "HELICS CODE ENTRY", "HELICS CODE EXIT", "MARKER"
EXECUTING = "executing"


@dataclass(frozen=True)
class Event:
    name: str
    state: str
    what: str
    ns: int
    system_ns: int | None = None
    t: float | None = None


@dataclass
class FederateProfile:
    """One federate's profile [ns of the steady clock] (module doc)."""

    name: str
    marker_ns: int | None = None  # steady clock at the MARKER
    marker_system_ns: int | None = None  # system clock (ns since 1970) at the MARKER
    executing_ns: int | None = None
    close_ns: int | None = None
    inside_ns: int = 0
    calls: int = 0  # blocking calls in executing state (time requests)
    last_ns: int | None = None
    #: the spans the federate spent outside HELICS in its loop: [EXIT, next ENTRY)
    outside: list[tuple[int, int]] = field(default_factory=list)

    @property
    def loop_ns(self) -> int | None:
        if self.executing_ns is None or self.close_ns is None:
            return None
        return self.close_ns - self.executing_ns

    @property
    def outside_ns(self) -> int | None:
        loop = self.loop_ns
        return None if loop is None else loop - self.inside_ns


def parse(text: str) -> list[Event]:
    """Every profiling event of ``text`` in file order (other lines are skipped)."""
    out = []
    for m in LINE.finditer(text):
        t = m.group("t")
        try:
            t_val = float(t) if t is not None else None
        except ValueError:
            t_val = None
        out.append(Event(m.group("name"), m.group("state"), m.group("what"), int(m.group("ns")),
                         int(m.group("sys")) if m.group("sys") else None, t_val))
    return out


def summarize(events: list[Event]) -> dict[str, FederateProfile]:
    """Per federate (in order of first appearance): module doc. A federate's events are
    taken in time order (the broker may interleave federates' lines out of order)."""
    by: dict[str, list[Event]] = {}
    for e in events:
        by.setdefault(e.name, []).append(e)
    out: dict[str, FederateProfile] = {}
    for name, evs in by.items():
        evs = sorted(evs, key=lambda e: e.ns)  # stable: equal stamps keep file order
        p = FederateProfile(name)
        entry: Event | None = None  # the open blocking call
        last_exit: int | None = None
        for e in evs:
            p.last_ns = e.ns
            if e.what == MARKER:
                p.marker_ns, p.marker_system_ns = e.ns, e.system_ns
            elif e.what == ENTRY:
                if p.executing_ns is not None and e.state == EXECUTING and last_exit is not None:
                    p.outside.append((last_exit, e.ns))
                    last_exit = None
                entry = e
            elif e.what == EXIT:
                if e.state == EXECUTING and p.executing_ns is None:
                    p.executing_ns = e.ns  # entering executing mode returned: not loop time
                elif e.state == EXECUTING and entry is not None and entry.state == EXECUTING:
                    p.inside_ns += e.ns - entry.ns
                    p.calls += 1
                if e.state == EXECUTING:
                    last_exit = e.ns
                entry = None
        if p.executing_ns is not None:
            if entry is not None and entry.state == EXECUTING:
                p.close_ns = entry.ns  # the disconnect: an ENTRY with no EXIT
            else:  # every call returned: the loop ends at its last event
                p.close_ns = evs[-1].ns
                if last_exit is not None and last_exit < p.close_ns:
                    p.outside.append((last_exit, p.close_ns))
        out[name] = p
    return out


def read_profile(path) -> dict[str, FederateProfile]:
    from pathlib import Path

    return summarize(parse(Path(path).read_text(errors="replace")))


def concurrency(profiles: dict[str, FederateProfile], start_ns: int | None = None,
                end_ns: int | None = None) -> dict[int, int]:
    """How long [ns] exactly m federates were outside HELICS at once (m = 0, 1, ...),
    between ``start_ns`` and ``end_ns`` (default: the first federate entering executing
    mode and the last one closing). m = 0: every federate waiting inside HELICS."""
    starts = [p.executing_ns for p in profiles.values() if p.executing_ns is not None]
    ends = [p.close_ns for p in profiles.values() if p.close_ns is not None]
    if not starts or not ends:
        return {}
    lo = min(starts) if start_ns is None else start_ns
    hi = max(ends) if end_ns is None else end_ns
    edges: list[tuple[int, int]] = []
    for p in profiles.values():
        for a, b in p.outside:
            a, b = max(a, lo), min(b, hi)
            if b > a:
                edges += [(a, 1), (b, -1)]
    edges.sort()
    out: dict[int, int] = {}
    level, at = 0, lo
    for ns, d in edges:
        if ns > at:
            out[level] = out.get(level, 0) + ns - at
            at = ns
        level += d
    if hi > at:
        out[level] = out.get(level, 0) + hi - at
    return dict(sorted(out.items()))


def clock_offset_ns(profiles: dict[str, FederateProfile]) -> int | None:
    """system - steady clock [ns] at the profile's MARKERs (their median), None without one:
    compare with ``time.time_ns() - time.perf_counter_ns()`` to check that the profile's
    steady clock is Python's."""
    offs = sorted(p.marker_system_ns - p.marker_ns for p in profiles.values()
                  if p.marker_ns is not None and p.marker_system_ns is not None)
    return offs[len(offs) // 2] if offs else None


# ---- a federation run split by the profile ---------------------------------------------------
@dataclass
class FederateSplit:
    """One federate of a run [s]: ``startup`` process start -> executing mode entered, of
    which ``created`` process start -> its MARKER (its federate object created and joined
    to the broker's profiling: the process started, built what it builds before opening
    its door, and reached the broker); ``loop`` executing -> close; ``inside`` / ``outside``
    HELICS in the loop; ``after`` close -> the runner saw the process end (None: unknown)."""

    startup: float | None
    created: float | None
    loop: float | None
    inside: float
    outside: float | None
    calls: int
    after: float | None


@dataclass
class RunSplit:
    """A federation run [s]: ``startup`` = run asked for -> the first federate executing
    (broker and federates started, roles built, interfaces registered, everyone joined);
    ``loop`` = the first federate executing -> the last one closing; ``after`` = the rest of
    the wall time (disconnect, tables written, processes exited and reaped, manifest).
    ``busy`` [m] = loop time during which exactly m federates were outside HELICS."""

    wall: float
    startup: float
    loop: float
    after: float
    federates: dict[str, FederateSplit]
    busy: dict[int, float]


def split_run(profiles: dict[str, FederateProfile], wall_s: float, t_begin_s: float,
              starts_s: dict[str, float], ends_s: dict[str, float | None]) -> RunSplit:
    """Split a run by its profile. ``t_begin_s``, ``starts_s`` (each process's start) and
    ``ends_s`` are seconds of the profile's clock (``time.perf_counter`` on Linux)."""
    ns = 1e-9
    execs = [p.executing_ns for p in profiles.values() if p.executing_ns is not None]
    closes = [p.close_ns for p in profiles.values() if p.close_ns is not None]
    if not execs or not closes:
        raise ValueError("the profile has no federate that entered executing mode and closed")
    first, last = min(execs) * ns, max(closes) * ns
    feds = {}
    for name, p in profiles.items():
        start, end = starts_s.get(name), ends_s.get(name)
        ex = None if p.executing_ns is None else p.executing_ns * ns
        close = None if p.close_ns is None else p.close_ns * ns
        feds[name] = FederateSplit(
            startup=None if start is None or ex is None else ex - start,
            created=None if start is None or p.marker_ns is None else p.marker_ns * ns - start,
            loop=None if p.loop_ns is None else p.loop_ns * ns,
            inside=p.inside_ns * ns,
            outside=None if p.outside_ns is None else p.outside_ns * ns,
            calls=p.calls,
            after=None if end is None or close is None else end - close,
        )
    startup = first - t_begin_s
    loop = last - first
    busy = {m: v * ns for m, v in concurrency(profiles).items()}
    return RunSplit(wall_s, startup, loop, wall_s - startup - loop, feds, busy)
