"""Floor (b): a federate that makes the real federate's HELICS calls and nothing else.

``python benchmarks/noop_federate.py --role feeder --plan plan.json --broker-address ADDR``
(or forked by ``benchmarks/floors.py``) opens a :class:`federates.common.door.Door` with the
real federate's name, core, flags and heartbeat, registers the same publications,
subscriptions and endpoints (same keys, same vector lengths), enters executing mode and
runs the real federate's time loop (``federates/<role>/federate.py``) on the same
``federates.common.timeline.Timeline``: the same HELICS times requested in the same order,
the DSO's views of every physics step replayed from the in-process run
(``runner.engine.EngineTimes.dso_views``), vectors of the real lengths published and
read, and messages of the real sizes in bytes (measured on the in-process run:
``benchmarks/floors.py`` ``trace_plan``) sent to the same endpoints at the same times and
received. No domain work: no roles, no OpenDSS, no JSON, no tables.

One prosumers federate only (``prosumers.federates: 1``), the default study's case.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the repo's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federates.common import keys
from federates.common.door import Door, wait_closed
from federates.common.timeline import Timeline

ROLES = keys.FEDERATES


@dataclass
class Plan:
    """What the no-op federates replay: the study's clock and sizes, the views the DSO
    was shown in every step and the byte size of every message, by interval or step."""

    duration_s: float
    market_interval_s: float
    physics_step_s: float
    n: int  # customers
    view_size: int  # feeder/dso_view vector length
    #: per step: the sizes [bytes] of the DSO's replies, one per view it was shown
    replies: list[list[int]] = field(default_factory=list)
    # per interval k (0..n_intervals-1), bytes of each message; 0: not sent
    orders: list[int] = field(default_factory=list)  # prosumers -> market at report_time(k)
    confirmations: list[int] = field(default_factory=list)  # market -> prosumers, controllers
    market_envelopes: list[int] = field(default_factory=list)  # market -> feeder (grid constraints)
    envelopes: list[int] = field(default_factory=list)  # controllers -> market at report_time(k)
    feeder_envelopes: list[int] = field(default_factory=list)  # controllers -> feeder (0: none)
    grid_constraints: list[int] = field(default_factory=list)  # controllers -> market
    # per interval k-1 (k = 1..n_intervals), bytes
    ami: list[int] = field(default_factory=list)  # meters -> controllers at ami_time(k)
    interval_energy: list[int] = field(default_factory=list)  # meters -> market at report_time(k)
    curtailments: list[int] = field(default_factory=list)  # feeder -> market at report_time(k)
    # per interval k, bytes: feeder -> controllers after the interval's views ("views_done")
    views_done: list[int] = field(default_factory=list)
    bids_latency_s: float = 0.0
    energy_latency_s: float = 0.0

    @property
    def timeline(self) -> Timeline:
        return Timeline(self.duration_s, self.market_interval_s, self.physics_step_s)

    @property
    def views(self) -> list[int]:
        return [len(r) for r in self.replies]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**json.loads(Path(path).read_text()))

    def n_messages(self) -> int:
        """Messages the no-op federation sends (confirmations twice: prosumers, controllers;
        the controllers' envelopes and constraints from interval 1 on, as the real ones)."""
        m = len(self.orders)
        return (m + 2 * len(self.confirmations) + sum(1 for x in self.market_envelopes if x)
                + 2 * (m - 1) + sum(1 for x in self.feeder_envelopes[1:] if x)
                + len(self.ami) + len(self.interval_energy) + len(self.curtailments)
                + sum(len(r) for r in self.replies) + len(self.views_done))

    def n_bytes(self) -> int:
        """Bytes of those messages."""
        return (sum(self.orders) + 2 * sum(self.confirmations) + sum(self.market_envelopes)
                + sum(self.envelopes[1:]) + sum(self.feeder_envelopes[1:]) + sum(self.grid_constraints[1:])
                + sum(self.ami) + sum(self.interval_energy) + sum(self.curtailments)
                + sum(map(sum, self.replies)) + sum(self.views_done))


_TEXT: dict[int, str] = {}


def payload(size: int) -> str:
    """A message body of ``size`` bytes."""
    text = _TEXT.get(size)
    if text is None:
        text = _TEXT[size] = "x" * size
    return text


def run(role: str, plan: Plan, broker: str, log: logging.Logger) -> int:
    """The time loop of ``role`` with no work; returns the number of time requests."""
    tl, n = plan.timeline, plan.n
    s = tl.steps_per_interval
    door = Door(role, broker, log=log)
    if role == keys.PROSUMERS:
        pub = door.publication(*keys.DEVIATION_P_KW)
        ep = door.endpoint(keys.PROSUMERS)
        door.add_delay_filter(ep, plan.bids_latency_s)
        deviations = np.zeros(s * n)
        door.enter()
        try:
            for k in range(tl.n_intervals):
                door.advance(tl.report_time(k))
                door.receive(ep)
                door.send(ep, keys.MARKET, payload(plan.orders[k]))
                deviations[0] = k
                door.publish(pub, deviations)
            door.advance(tl.report_time(tl.n_intervals))
            door.receive(ep)
        finally:
            door.close()
    elif role == keys.MARKET:
        pub = door.publication(*keys.SCHEDULE_P_KW)
        ep = door.endpoint(keys.MARKET)
        schedule = np.zeros(n)
        door.enter()
        try:
            for k in range(tl.n_intervals + 1):
                door.advance(tl.market_time(k))
                door.receive(ep)
                if k < tl.n_intervals:
                    text = payload(plan.confirmations[k])
                    door.send(ep, keys.PROSUMERS, text)
                    door.send(ep, keys.CONTROLLERS, text)
                    if plan.market_envelopes[k]:
                        door.send(ep, keys.FEEDER, payload(plan.market_envelopes[k]))
                    schedule[0] = k
                    door.publish(pub, schedule)
        finally:
            door.close()
    elif role == keys.FEEDER:
        sub_schedule = door.subscription(*keys.SCHEDULE_P_KW)
        sub_deviation = door.subscription(*keys.DEVIATION_P_KW)
        pub_view = door.publication(*keys.FEEDER_DSO_VIEW)
        pub_block = door.publication(*keys.FEEDER_METER_BLOCK)
        ep = door.endpoint(keys.FEEDER)
        view = np.zeros(plan.view_size)
        block = np.zeros(1 + 3 * s * n + n)  # v, p, q of every step; the delivered energy
        door.enter()
        try:
            for k in range(tl.n_intervals + 1):
                if k >= 1:
                    door.advance(tl.report_time(k))
                    door.send(ep, keys.MARKET, payload(plan.curtailments[k - 1]))
                if k == tl.n_intervals:
                    break
                door.advance(tl.view_time(k, 0))
                door.receive(ep)
                door.vector(sub_schedule, n)
                door.vector(sub_deviation, s * n)
                v = 0
                for g in tl.steps_of_interval(k):
                    door.working(tl.step_t_s(g))
                    for _ in plan.replies[g]:
                        view[0], view[1] = g, v
                        door.publish(pub_view, view)
                        v += 1
                        door.advance(tl.view_time(k, v))
                        if len(door.receive(ep)) != 1:
                            raise RuntimeError(f"interval {k} view {v - 1}: no reply from the no-op DSO")
                door.send(ep, keys.CONTROLLERS, payload(plan.views_done[k]))
                block[0] = k
                door.publish(pub_block, block)
        finally:
            door.close()
    elif role == keys.METERS:
        sub_block = door.subscription(*keys.FEEDER_METER_BLOCK)
        ep = door.endpoint(keys.METERS)
        ep_billing = door.endpoint(f"{keys.METERS}/billing") if plan.energy_latency_s > 0 else ep
        door.add_delay_filter(ep_billing, plan.energy_latency_s)
        door.enter()
        try:
            for k in range(1, tl.n_intervals + 1):
                door.advance(tl.ami_time(k))
                door.vector(sub_block, 1 + 3 * s * n + n)
                door.send(ep, keys.CONTROLLERS, payload(plan.ami[k - 1]))
                door.advance(tl.report_time(k))
                door.send(ep_billing, keys.MARKET, payload(plan.interval_energy[k - 1]))
        finally:
            door.close()
    elif role == keys.CONTROLLERS:
        sub_view = door.subscription(*keys.FEEDER_DSO_VIEW)
        ep = door.endpoint(keys.CONTROLLERS)

        replies = [[size for g in tl.steps_of_interval(k) for size in plan.replies[g]]
                   for k in range(tl.n_intervals)]
        door.enter()
        try:
            for k in range(tl.n_intervals + 1):
                if k >= 1:
                    door.advance(tl.report_time(k))
                    door.receive(ep)
                    if k < tl.n_intervals:
                        door.send(ep, keys.MARKET, payload(plan.envelopes[k]))
                        if plan.feeder_envelopes[k]:
                            door.send(ep, keys.FEEDER, payload(plan.feeder_envelopes[k]))
                        door.send(ep, keys.MARKET, payload(plan.grid_constraints[k]))
                if k == tl.n_intervals:
                    break
                for v in range(len(replies[k]) + 1):
                    door.advance(tl.answer_time(k, v))
                    door.receive(ep)
                    if v < len(replies[k]):
                        if not door.updated(sub_view):
                            raise RuntimeError(f"interval {k}: no view {v} from the no-op feeder")
                        door.vector(sub_view, plan.view_size)
                        door.send(ep, keys.FEEDER, payload(replies[k][v]))
        finally:
            door.close()
    else:
        raise ValueError(f"no-op federate: unknown role {role!r} (one of {', '.join(ROLES)})")
    return door.n_requests


def main(argv: list[str] | None = None) -> None:
    """Entry point (exec'd or forked): args, the real federates' log format, run, exit code."""
    ap = argparse.ArgumentParser(prog="benchmarks/noop_federate.py")
    ap.add_argument("--role", required=True, choices=ROLES)
    ap.add_argument("--plan", required=True, type=Path)
    ap.add_argument("--broker-address", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("TECOSIM_LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s {args.role} %(levelname)s %(message)s")
    log = logging.getLogger(args.role)
    t0 = time.perf_counter()
    try:
        requests = run(args.role, Plan.load(args.plan), args.broker_address, log)
    except Exception:
        import traceback

        log.error("failed:\n%s", traceback.format_exc())
        sys.exit(1)
    wait_closed()  # HELICS's library, closed in the background (as a real federate waits for it)
    log.info("done in %.2f s (%d time requests)", time.perf_counter() - t0, requests)


if __name__ == "__main__":
    main()
