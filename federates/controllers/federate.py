"""Controllers federate: Volt-VAR and DSO curtailment from meter readings; commands to
the feeder in each control round, curtailment notices to the market per interval."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import decode, encode
from federates.common.runtime import Study, federate_main
from federates.common.timeline import MAX_ROUNDS
from federates.controllers.role import ControllersRole
from federates.meters.federate import events


def run(study: Study, broker: str, log: logging.Logger):
    cfg, tl = study.cfg, study.cfg.timeline
    role = ControllersRole(cfg, study.sites, study.inverter_kva)
    n = len(study.sites)
    door = Door(keys.CONTROLLERS, broker, log=log)
    sub_curtailed = door.subscription(*keys.FEEDER_CURTAILED_P_KW)
    ep = door.endpoint(keys.CONTROLLERS)

    door.enter()
    try:
        for _, kind, x in events(tl):
            if kind == "report":
                door.advance(tl.report_time(x + 1))
                door.send(ep, keys.MARKET, encode(role.report(x), kind="curtailments", interval=x))
                continue
            for j in range(MAX_ROUNDS + 1):
                door.advance(tl.decide_time(x, j))
                messages = door.receive(ep)
                if not messages:
                    break  # no readings: the feeder did not re-solve, the step is over
                for text in messages:
                    commands = role.on_readings(x, decode(text).items, door.vector(sub_curtailed, n))
                    if commands:
                        door.send(ep, keys.FEEDER, encode(commands, kind="commands", step=x))
    finally:
        door.close()
    return role.tables()


if __name__ == "__main__":
    federate_main(keys.CONTROLLERS, run)
