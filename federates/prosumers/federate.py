"""Prosumers federate: per market interval the bids (one message to the market) and the
real deviations of every step of the interval (one value); with demand response, what
the last interval's calls got (one message to the market, from an endpoint of its own:
the comms layer's delay filter is the bids'). With ``prosumers.flex_dispatch: cleared``
the deviations leave at the dispatch time, after the confirmations (and the DSO's
envelopes) of the interval came in."""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from functools import partial

from federates.common import keys
from federates.common.admm import decode_admm, encode_admm
from federates.common.door import Door, LateEndpoint
from federates.common.messages import (
    Confirmation,
    DemandResponseCall,
    LoadLimit,
    OperatingEnvelope,
    decode,
    encode,
)
from federates.common.study import Study
from federates.common.tables import drain_due, study_chunk_intervals
from federates.common.timeline import ADMM_POLL_ROUNDS
from federates.prosumers.role import ProsumersRole
from federates.runtime import drain_into, federate_main


def run(study: Study, broker: str, log: logging.Logger, sink, part: int = 0, parts: int | None = None):
    cfg, tl = study.cfg, study.cfg.timeline
    if parts is not None and parts != cfg.prosumers.federates:
        raise ValueError(f"--part {part}/{parts} but prosumers.federates is {cfg.prosumers.federates}")
    parts = cfg.prosumers.federates
    name = keys.prosumers_names(parts)[part]
    opening = Door.opening(name, broker, log=log)  # registers while the role is built
    role = ProsumersRole.from_study(study, part, parts)
    door = opening.door()
    pub = door.publication(*keys.deviation_key(part, parts))
    ep = door.endpoint(name)
    door.add_delay_filter(ep, role.comms.latency_of("bids"))  # comms: bids arrive late
    admm_ep = None
    if role.admm is not None:  # market.mechanism admm_distributed: the agents step here
        admm_ep = LateEndpoint(door, door.endpoint(keys.admm_endpoint(name)), role.comms.latency_of("admm"))
    dr_ep = door.endpoint(f"{name}.dr") if role.dr_on else None

    def send_deliveries(k: int) -> None:  # what the calls of k got, at the report time of k + 1
        if dr_ep is not None:
            door.send(dr_ep, keys.MARKET, encode(role.dr_deliveries(k), kind="dr_delivered", interval=k))
    inbox: dict[int, list[Confirmation]] = defaultdict(list)
    calls: dict[int, list[DemandResponseCall]] = defaultdict(list)  # the DSO's, by interval
    envelopes: dict[int, list[OperatingEnvelope]] = defaultdict(list)  # the DSO's (cleared only)
    limits: dict[int, list[LoadLimit]] = defaultdict(list)  # the DSO's load limits, by interval
    boxes = {"dr_calls": calls, "envelopes": envelopes, "load_limits": limits}
    every = study_chunk_intervals(cfg, len(study.sites))
    part_sink = sink if parts == 1 else _PartSink(sink, part)

    def drain() -> None:
        for text in door.receive(ep):
            env = decode(text)
            boxes.get(env.kind, inbox)[int(env.header["interval"])].extend(env.items)

    door.enter()
    try:
        for k in range(tl.n_intervals):
            door.advance(tl.report_time(k))
            drain()
            if k >= 1 and not role.cleared:  # cleared: taken at the dispatch time of k-1
                role.on_confirmations(k - 1, inbox.pop(k - 1, []))
            if k in calls:
                role.on_demand_response(k, calls.pop(k))
            if k in limits:
                role.on_load_limits(k, limits.pop(k))
            if k >= 1:
                send_deliveries(k - 1)
            if role.cleared:
                door.send(ep, keys.MARKET, encode(role.orders_sent(k), kind="orders", interval=k))
                if drain_due(tl, k, every):
                    drain_into(part_sink, role)
                door.advance(tl.dispatch_time(k))
                drain()
                role.on_confirmations(k, inbox.pop(k, []))
                role.on_envelopes(k, envelopes.pop(k, []))
                door.publish(pub, role.dispatch_sent(k).ravel())
                continue
            orders, deviation_p_kw = role.bids_sent(k)
            door.send(ep, keys.MARKET, encode(orders, kind="orders", interval=k))
            door.publish(pub, deviation_p_kw.ravel())
            if admm_ep is not None:
                _admm_steps(door, admm_ep, role, tl, k)
            if drain_due(tl, k, every):
                drain_into(part_sink, role)
        door.advance(tl.report_time(tl.n_intervals))
        drain()
        if not role.cleared:
            role.on_confirmations(tl.n_intervals - 1, inbox.pop(tl.n_intervals - 1, []))
        send_deliveries(tl.n_intervals - 1)
    finally:
        door.close()
    if parts == 1:
        return role.tables()
    return {f"{table}.part{part}": df for table, df in role.tables().items()}  # runner.launch merges


def _admm_steps(door: Door, ep: LateEndpoint, role: ProsumersRole, tl, k: int) -> None:
    """The agents' steps in the distributed clearing of ``k``: at each reply time
    (``timeline.admm_reply_time``) the market's requests that have arrived, the replies
    out, until the market's word that it is done (or the last reply time)."""
    market = keys.admm_endpoint(keys.MARKET)
    for h in range(ADMM_POLL_ROUNDS):
        door.advance(tl.admm_reply_time(k, h))
        requests, done = [], False
        for text in ep.receive():
            interval, over, items = decode_admm(text)
            if interval == k:  # words of an earlier interval came after its part stopped listening
                requests += items
                done = done or over
        if requests:
            ep.send(market, encode_admm(k, role.admm_replies(k, requests)))
        if done:
            return


class _PartSink:
    """The chunks of prosumer part ``part`` under ``<table>.part<part>`` (runner.launch merges)."""

    def __init__(self, sink, part: int) -> None:
        self.sink, self.part = sink, part

    def append(self, tables) -> None:
        self.sink.append({f"{table}.part{self.part}": df for table, df in tables.items()})


def pop_part(argv: list[str]) -> tuple[int, int]:
    """Remove ``--part i/K`` from ``argv``; (i, K), (0, 1) without it."""
    if "--part" not in argv:
        return 0, 1
    at = argv.index("--part")
    i, k = (int(x) for x in argv[at + 1].split("/"))
    del argv[at:at + 2]
    return i, k


def main() -> None:
    """``python -m federates.prosumers.federate --run-dir RUN --broker-address ADDRESS [--part i/K]``."""
    part, parts = pop_part(sys.argv)
    federate_main(keys.prosumers_names(parts)[part], partial(run, part=part, parts=parts))


if __name__ == "__main__":
    main()
