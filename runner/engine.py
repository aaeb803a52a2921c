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
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from federates.common.messages import Confirmation
from federates.common.tables import TableCollector, TableWriter, drain_due, study_chunk_intervals
from federates.controllers.role import ControllersRole
from federates.feeder.role import FeederRole
from federates.market.role import MarketRole
from federates.meters.role import MetersRole
from federates.prosumers.role import ProsumersRole
from federates.runtime import Study


@dataclass
class EngineTimes:
    """Wall time [s] spent in each role, and the views the DSO was shown in every
    physics step (the federation's timeline of hops: benchmarks/ replays it in a no-op
    federation)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("setup", "prosumers", "market", "feeder", "meters", "controllers"), 0.0))
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
    t = time.perf_counter()
    cfg, tl = study.cfg, study.cfg.timeline
    prosumers = ProsumersRole.from_study(study)
    market = MarketRole.from_study(study)
    feeder = FeederRole.from_study(study)
    meters = MetersRole.from_study(study)
    controllers = ControllersRole.from_study(study)
    t = times.add("setup", t)
    collect = sink is None
    sink = TableCollector() if sink is None else sink
    roles = (prosumers, market, feeder, meters, controllers)
    every = study_chunk_intervals(cfg, len(study.sites))

    def drain() -> None:
        for role in roles:
            sink.append(role.drain_tables())

    confirmations: list[Confirmation] = []
    schedule_p_kw = np.zeros(len(study.sites))
    # messages to the market in flight, as the HELICS delay filter makes them (the roles
    # drop what the comms layer loses): (arrival [ns, HELICS time], kind, items)
    comms = prosumers.comms
    inflight: list[tuple[int, str, list]] = []

    def post(kind: str, items: list, send_s: float) -> None:
        inflight.append((_ns(send_s) + _ns(comms.latency_of(kind)), kind, items))

    def deliver(kind: str, t_s: float) -> list:
        """The ``kind`` items that arrived by ``t_s`` (in arrival order); the rest stay in flight."""
        due = [m for m in inflight if m[1] == kind and m[0] <= _ns(t_s)]
        inflight[:] = [m for m in inflight if not (m[1] == kind and m[0] <= _ns(t_s))]
        return [x for m in sorted(due, key=lambda m: m[0]) for x in m[2]]

    for k in range(tl.n_intervals + 1):
        if progress is not None:
            progress(tl.interval_start_s(k))
        # report time of k
        if k >= 1:
            prosumers.on_confirmations(k - 1, confirmations)
        if k < tl.n_intervals:
            bids, deviation_p_kw = prosumers.bids_sent(k)
            post("bids", bids, tl.report_time(k))
        t = times.add("prosumers", t)
        # AMI time of k, then report time of k
        if k >= 1:
            meters.record_interval(k - 1, *feeder.meter_block(k - 1))
        ami = meters.ami(k - 1) if k >= 1 else []
        if k >= 1:
            post("interval_energy", meters.report_sent(k - 1), tl.report_time(k))
        t = times.add("meters", t)
        notices = feeder.curtailment_notices(k - 1) if k >= 1 else []
        losses = feeder.loss_energy(k - 1) if k >= 1 and cfg.market.settle_losses else []
        t = times.add("feeder", t)
        if k >= 1:
            controllers.on_ami(k - 1, ami)
        envelopes = controllers.envelopes(k) if k < tl.n_intervals else []
        constraints = controllers.grid_constraints(k) if k < tl.n_intervals else []
        t = times.add("controllers", t)
        # market time of k
        orders, energies = deliver("bids", tl.market_time(k)), deliver("interval_energy", tl.market_time(k))
        confirmations, schedule_p_kw, market_envelopes = market.on_market_time(
            k, orders, energies, notices, envelopes, constraints, losses=losses)
        t = times.add("market", t)
        if k == tl.n_intervals:
            break
        if drain_due(tl, k, every):
            drain()
            t = times.add("setup", t)
        controllers.on_confirmations(k, confirmations)
        t = times.add("controllers", t)
        # the inverters hold the export envelopes: the DSO's, or what the constrained clearing accepted
        feeder.on_envelopes(k, envelopes if market_envelopes is None else market_envelopes)
        for j, g in enumerate(tl.steps_of_interval(k)):
            feeder.begin_step(g, schedule_p_kw, deviation_p_kw[j])
            t = times.add("feeder", t)
            views = 0
            while (view := feeder.dso_view(g, every=poll_dso)) is not None:
                views += 1
                reply = controllers.on_view(view)
                t = times.add("controllers", t)
                m = feeder.apply(g, reply)
                t = times.add("feeder", t)
                if m is None:
                    break
            times.dso_views.append(views)
    drain()
    times.add("setup", t)
    return sink.tables() if collect else {}


def _ns(t_s: float) -> int:
    """``t_s`` [s] as HELICS time (integer ns, rounded as HELICS converts a double)."""
    return round(t_s * 1e9)
