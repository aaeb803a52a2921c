"""Prosumers federate: per market interval the bids (one message to the market) and the
real deviations of every step of the interval (one value)."""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from functools import partial

import numpy as np

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import Confirmation, decode, encode
from federates.common.runtime import Study, drain_into, federate_main
from federates.common.tables import drain_due, study_chunk_intervals
from federates.prosumers.agents import make_specs
from federates.prosumers.role import ProsumersRole


def part_role(study: Study, part: int, parts: int) -> ProsumersRole:
    """The prosumers of part ``part`` of ``parts`` (``keys.part_bounds``): a ProsumersRole
    over that slice of the sites whose specs are the slice of the whole population's
    (PV/battery ownership and the penetration factor are drawn over all sites)."""
    if parts == 1:
        return ProsumersRole(study.cfg, study.sites)
    lo, hi = keys.part_bounds(len(study.sites), part, parts)
    specs = make_specs(study.cfg, study.sites)[lo:hi]
    return ProsumersRole(study.cfg, study.sites[lo:hi], specs=specs)


def run(study: Study, broker: str, log: logging.Logger, sink, part: int = 0, parts: int | None = None):
    cfg, tl = study.cfg, study.cfg.timeline
    if parts is not None and parts != cfg.prosumers.federates:
        raise ValueError(f"--part {part}/{parts} but prosumers.federates is {cfg.prosumers.federates}")
    parts = cfg.prosumers.federates
    name = keys.prosumers_names(parts)[part]
    role = part_role(study, part, parts)
    door = Door(name, broker, log=log)
    pub = door.publication(*keys.deviation_key(part, parts))
    ep = door.endpoint(name)
    door.add_delay_filter(ep, cfg.comms.latency_of("bids"))  # comms: bids arrive late
    inbox: dict[int, list[Confirmation]] = defaultdict(list)
    every = study_chunk_intervals(cfg, len(study.sites))
    part_sink = sink if parts == 1 else _PartSink(sink, part)

    def drain() -> None:
        for text in door.receive(ep):
            env = decode(text)
            inbox[int(env.header["interval"])].extend(env.items)

    door.enter()
    try:
        for k in range(tl.n_intervals):
            door.advance(tl.report_time(k))
            drain()
            if k >= 1:
                role.on_confirmations(k - 1, inbox.pop(k - 1, []))
            orders = role.bids(k)
            kept = cfg.comms.kept(cfg.study.seed, "bids", k, [o.participant for o in orders])
            sent = [o for o, ok in zip(orders, kept, strict=True) if ok]  # comms: lost bids
            door.send(ep, keys.MARKET, encode(sent, kind="orders", interval=k))
            lost = cfg.comms.unscheduled(cfg.study.seed, tl, k, [o.participant for o in orders])
            unscheduled_kw = np.where(np.isin(role.participants, list(lost)), role.forecast_net_kw[k], 0.0)
            # comms: a lost bid has no schedule, its real power is all deviation
            door.publish(pub, (role.interval_deviations(k) + unscheduled_kw).ravel())
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
