"""Prosumers federate: bids as messages to the market, real deviations as values."""

from __future__ import annotations

import logging
from collections import defaultdict

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import Confirmation, decode, encode
from federates.common.runtime import Study, federate_main
from federates.prosumers.role import ProsumersRole


def run(study: Study, broker: str, log: logging.Logger):
    cfg, tl = study.cfg, study.cfg.timeline
    role = ProsumersRole(cfg, study.sites)
    door = Door(keys.PROSUMERS, broker, log=log)
    pub = door.publication(*keys.DEVIATION_P_KW)
    ep = door.endpoint(keys.PROSUMERS)
    inbox: dict[int, list[Confirmation]] = defaultdict(list)

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
            for order in role.bids(k):
                door.send(ep, keys.MARKET, encode([order]))
            for g in tl.steps_of_interval(k):
                door.advance(tl.prestep_time(g))
                door.publish(pub, role.step(g))
        door.advance(tl.report_time(tl.n_intervals))
        drain()
        role.on_confirmations(tl.n_intervals - 1, inbox.pop(tl.n_intervals - 1, []))
    finally:
        door.close()
    return role.tables()


if __name__ == "__main__":
    federate_main(keys.PROSUMERS, run)
