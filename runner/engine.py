"""The in-process engine: the federation's domain calls, in the federation's order,
with no HELICS. It is the fast path for sweeps and the oracle for the federation: for
the same run folder the federation's tables equal these (tests/federation).

The order mirrors federates/*/federate.py on the timeline of
``federates.common.timeline``: at each market interval k the prosumers take the
confirmations of k-1, bid for k and play out k's steps; the meters record k-1 and
report it, the feeder reports the curtailment of k-1, the DSO takes the AMI data and
gives envelopes for k; the market settles k-1 and clears k; then each physics step
runs feeder (solve, inverters settle) -> (DSO -> feeder)* until the DSO has nothing
to do; the feeder shows the DSO a view only when it must (report by exception,
federates.common.alarms; ``poll_dso`` shows it every view, with the same results).
With ``prosumers.flex_dispatch: cleared`` the prosumers only bid at the report time;
after the market time they take the confirmations (and the DSO's envelopes) of k and
play out k's steps (the dispatch time, ``Timeline.dispatch_time``).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from federates.common.comms import CommsLink
from federates.common.messages import Confirmation
from federates.common.study import Study
from federates.common.tables import TableCollector, TableWriter, drain_due, study_chunk_intervals
from federates.common.timeline import ADMM_POLL_ROUNDS
from federates.controllers.role import ControllersRole
from federates.feeder.role import FeederRole
from federates.market.role import MarketRole, MarketTime
from federates.meters.role import MetersRole
from federates.prosumers.role import ProsumersRole


@dataclass
class EngineTimes:
    """Wall time [s] spent in each role (``market_books``: the market's book-keeping,
    ``MarketRole.keep_books``, which the federate does while the feeder plays the
    interval; ``market``: the rest of its work), and the views the DSO was shown in every
    physics step (the federation's timeline of hops: benchmarks/ replays it in a no-op
    federation)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("setup", "prosumers", "market", "feeder", "meters", "controllers", "market_books"), 0.0))
    dso_views: array = field(default_factory=lambda: array("H"))  # 2 bytes a step: a year is 1 MB

    def add(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.seconds[name] += t1 - t0
        return t1


def run_inprocess(study: Study, times: EngineTimes | None = None,
                  progress: Callable[[float], None] | None = None,
                  sink: TableWriter | TableCollector | None = None, *,
                  poll_dso: bool = False) -> dict[str, pd.DataFrame]:
    """Run the study in this process; return every federate's tables.

    ``progress`` (optional) is called with the simulated time reached [s] once per
    market interval (the study's duration once the last physics step is done).
    ``sink`` takes the tables chunk by chunk (federates.common.tables: every role
    drains at the same market times as in the federation); with a ``TableWriter``
    nothing is returned, without one the chunks are concatenated and returned.
    ``poll_dso``: the DSO is shown the feeder's view after every control round, not
    only by exception (a check: the results are the same)."""
    times = times or EngineTimes()
    clock = _Clock(times)
    engine = _Engine(study, clock, poll_dso)
    clock.took("setup")
    collect = sink is None
    sink = TableCollector() if sink is None else sink
    tl = study.cfg.timeline
    every = study_chunk_intervals(study.cfg, len(study.sites))
    for k in range(tl.n_intervals + 1):
        if progress is not None:
            progress(tl.interval_start_s(k))
        engine.report_time(k)
        engine.market_time(k)
        if k == tl.n_intervals:
            break
        if drain_due(tl, k, every):
            engine.drain(sink)
            clock.took("setup")
        engine.play(k)
    engine.drain(sink)
    clock.took("setup")
    return sink.tables() if collect else {}


class _Clock:
    """Charges the wall time since the last charge to a role (``EngineTimes``)."""

    def __init__(self, times: EngineTimes) -> None:
        self.times, self.t = times, time.perf_counter()

    def took(self, name: str) -> None:
        self.t = self.times.add(name, self.t)


class _InFlight:
    """Messages to the market in flight, as the HELICS delay filter makes them (the roles
    drop what the comms layer loses): (arrival [ns, HELICS time], kind, items)."""

    def __init__(self, comms: CommsLink) -> None:
        self.comms = comms
        self.messages: list[tuple[int, str, list]] = []

    def post(self, kind: str, items: list, send_s: float) -> None:
        self.messages.append((_ns(send_s) + _ns(self.comms.latency_of(kind)), kind, items))

    def deliver(self, kind: str, t_s: float) -> list:
        """The ``kind`` items that arrived by ``t_s`` (in arrival order); the rest stay in flight."""
        due = [m for m in self.messages if m[1] == kind and m[0] <= _ns(t_s)]
        self.messages[:] = [m for m in self.messages if not (m[1] == kind and m[0] <= _ns(t_s))]
        return [x for m in sorted(due, key=lambda m: m[0]) for x in m[2]]


class _Engine:
    """The five roles and what passes between them within one market interval k, in
    the federation's order (the module docstring)."""

    def __init__(self, study: Study, clock: _Clock, poll_dso: bool) -> None:
        self.tl, self.clock, self.poll_dso = study.cfg.timeline, clock, poll_dso
        self.settle_losses = study.cfg.market.settle_losses
        self.prosumers = ProsumersRole.from_study(study)
        self.market = MarketRole.from_study(study)
        self.feeder = FeederRole.from_study(study)
        self.meters = MetersRole.from_study(study)
        self.controllers = ControllersRole.from_study(study)
        self.inflight = _InFlight(self.prosumers.comms)
        # what one time of the interval hands the next
        self.confirmations: Sequence[Confirmation] = []  # the market's Rows (columns)
        self.schedule_p_kw = np.zeros(len(study.sites))
        self.deviation_p_kw = np.zeros((0, len(study.sites)))
        self.notices: list = []
        self.losses: list = []
        self.deliveries: list = []  # what the demand-response calls of k-1 got, to the market
        self.envelopes: list = []
        self.constraints: list = []
        self.inverter_envelopes: list = []
        self.dr_calls: list = []  # the DSO's demand-response calls for the next interval
        self.cleared = study.cfg.prosumers.flex_dispatch == "cleared"
        self.load_limits: list = []  # the DSO's load limits for the next interval

    def drain(self, sink) -> None:
        for role in (self.prosumers, self.market, self.feeder, self.meters, self.controllers):
            sink.append(role.drain_tables())

    def report_time(self, k: int) -> None:
        """The AMI and report times of ``k``: confirmations of k-1 to the prosumers and
        their bids for k (and what the demand-response calls of k-1 got); the meters' readings of k-1; the feeder's curtailments (and
        losses) of k-1; the DSO's envelopes or grid constraints for k."""
        tl, last = self.tl, k == self.tl.n_intervals
        if k >= 1 and not self.cleared:  # cleared: taken at the dispatch time of k-1
            self.prosumers.on_confirmations(k - 1, self.confirmations)
        if self.dr_calls:
            self.prosumers.on_demand_response(k, self.dr_calls)
            self.dr_calls = []
        if self.load_limits:
            self.prosumers.on_load_limits(k, self.load_limits)
            self.load_limits = []
        self.deliveries = self.prosumers.dr_deliveries(k - 1) if k >= 1 else []
        if not last and self.cleared:
            self.inflight.post("bids", self.prosumers.orders_sent(k), tl.report_time(k))
        elif not last:
            bids, self.deviation_p_kw = self.prosumers.bids_sent(k)
            self.inflight.post("bids", bids, tl.report_time(k))
        self.clock.took("prosumers")
        ami = []
        if k >= 1:
            self.meters.record_interval(k - 1, *self.feeder.meter_block(k - 1))
            ami = self.meters.ami(k - 1)
            self.inflight.post("interval_energy", self.meters.report_sent(k - 1), tl.report_time(k))
        self.clock.took("meters")
        self.notices = self.feeder.curtailment_notices(k - 1) if k >= 1 else []
        self.losses = self.feeder.loss_energy(k - 1) if k >= 1 and self.settle_losses else []
        self.clock.took("feeder")
        if k >= 1:
            self.controllers.on_ami(k - 1, ami)
        self.envelopes = [] if last else self.controllers.envelopes(k)
        self.constraints = [] if last else self.controllers.grid_constraints(k)
        self.clock.took("controllers")

    def market_time(self, k: int) -> None:
        """The market settles k-1 and clears k; the DSO takes the confirmations of k."""
        t_s = self.tl.market_time(k)
        out = self.market.on_market_time(k, self.inflight.deliver("bids", t_s),
                                         self.inflight.deliver("interval_energy", t_s), self.notices,
                                         self.envelopes, self.constraints, losses=self.losses,
                                         deliveries=self.deliveries)
        if out is None:  # the distributed P2P clearing (market.mechanism admm_distributed)
            out = self._admm_rounds(k)
        self.confirmations, self.schedule_p_kw = out.confirmations, out.schedule_p_kw
        # the inverters hold the export envelopes: the DSO's, or what the constrained clearing accepted
        self.inverter_envelopes = self.envelopes if out.inverter_envelopes is None else out.inverter_envelopes
        self.clock.took("market")
        self.market.keep_books()  # the federate keeps them while the feeder plays k
        self.clock.took("market_books")

    def _admm_rounds(self, k: int) -> MarketTime:
        """The rounds of the distributed clearing of ``k``, as the market and the
        prosumers federates go through them (federates.common.timeline: admm_time,
        admm_reply_time): the market reads the replies that have arrived and sends
        requests, or its word that it is done; the prosumers read the requests that have
        arrived and reply, until they have the word. ``comms.latency_s`` delays each way
        (in the federation each ADMM endpoint holds what it receives until it arrives:
        federates.common.door.LateEndpoint)."""
        tl, latency_ns = self.tl, _ns(self.prosumers.comms.latency_of("admm"))
        down: list[tuple[int, list, bool]] = []  # (arrival ns, requests, done) to the prosumers
        up: list[tuple[int, list]] = []  # (arrival ns, replies) to the market
        out = None
        for h in range(ADMM_POLL_ROUNDS):
            if out is None:
                t_m = _ns(tl.admm_time(k, h))
                replies = [r for at, items in up if at <= t_m for r in items]
                up = [m for m in up if m[0] > t_m]
                requests, out = self.market.admm_round(k, h, replies)
                down.append((t_m + latency_ns, requests, out is not None))
            t_p = _ns(tl.admm_reply_time(k, h))
            due = [m for m in down if m[0] <= t_p]
            down = [m for m in down if m[0] > t_p]
            requests = [r for _, items, _ in due for r in items]
            if requests:
                up.append((t_p + latency_ns, self.prosumers.admm_replies(k, requests)))
            if any(done for _, _, done in due):
                break
        self.clock.took("market")
        return out

    def play(self, k: int) -> None:
        """The physics steps of ``k``, each with its control rounds (with ``cleared``,
        first the prosumers' dispatch time: confirmations and envelopes of k in, k's
        steps played)."""
        if self.cleared:
            self.prosumers.on_confirmations(k, self.confirmations)
            self.prosumers.on_envelopes(k, self.envelopes)
            self.deviation_p_kw = self.prosumers.dispatch_sent(k)
            self.clock.took("prosumers")
        self.controllers.on_confirmations(k, self.confirmations)
        self.clock.took("controllers")
        self.feeder.on_envelopes(k, self.inverter_envelopes)
        for j, g in enumerate(self.tl.steps_of_interval(k)):
            self.feeder.begin_step(g, self.schedule_p_kw, self.deviation_p_kw[j])
            self.clock.took("feeder")
            self.clock.times.dso_views.append(self._control_rounds(g))
        if k + 1 < self.tl.n_intervals:  # the views of k are over: the DSO's calls (and load limits) for k+1
            self.dr_calls = self.controllers.demand_response_calls(k + 1)
            self.load_limits = limits = self.controllers.load_limits(k + 1)
            self.clock.took("controllers")
            self.feeder.on_load_limits(k + 1, limits)
            self.feeder.on_demand_response(k + 1, self.dr_calls)  # recorded in curtailments
            self.clock.took("feeder")

    def _control_rounds(self, g: int) -> int:
        """Show the DSO step ``g``'s views until it is quiet; how many it was shown."""
        views = 0
        while (view := self.feeder.dso_view(g, every=self.poll_dso)) is not None:
            views += 1
            reply = self.controllers.on_view(view)
            self.clock.took("controllers")
            m = self.feeder.apply(g, reply)
            self.clock.took("feeder")
            if m is None:
                break
        return views


def _ns(t_s: float) -> int:
    """``t_s`` [s] as HELICS time (integer ns, rounded as HELICS converts a double)."""
    return round(t_s * 1e9)
