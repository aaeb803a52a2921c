"""Prosumers federate: per market interval the bids (one message to the market) and the
real deviations of every step of the interval (one value)."""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from functools import partial

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import Confirmation, DemandResponseCall, decode, encode
from federates.common.study import Study
from federates.common.tables import drain_due, study_chunk_intervals
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
    inbox: dict[int, list[Confirmation]] = defaultdict(list)
    calls: dict[int, list[DemandResponseCall]] = defaultdict(list)  # the DSO's, by interval
    every = study_chunk_intervals(cfg, len(study.sites))
    part_sink = sink if parts == 1 else _PartSink(sink, part)

    def drain() -> None:
        for text in door.receive(ep):
            env = decode(text)
            (calls if env.kind == "dr_calls" else inbox)[int(env.header["interval"])].extend(env.items)

    door.enter()
    try:
        for k in range(tl.n_intervals):
            door.advance(tl.report_time(k))
            drain()
            if k >= 1:
                role.on_confirmations(k - 1, inbox.pop(k - 1, []))
            if k in calls:
                role.on_demand_response(k, calls.pop(k))
            orders, deviation_p_kw = role.bids_sent(k)
            door.send(ep, keys.MARKET, encode(orders, kind="orders", interval=k))
            door.publish(pub, deviation_p_kw.ravel())
            if drain_due(tl, k, every):
                drain_into(part_sink, role)
        door.advance(tl.report_time(tl.n_intervals))
        drain()
        role.on_confirmations(tl.n_intervals - 1, inbox.pop(tl.n_intervals - 1, []))
    finally:
        door.close()
    if parts == 1:
        return role.tables()
    return {f"{table}.part{part}": df for table, df in role.tables().items()}  # runner.launch merges


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
