"""Controllers federate: inverter Volt-VAR / Volt-Watt and the DSO.

In each control round it turns meter readings (and the feeder's SCADA view) into
commands to the feeder; per interval it takes the AMI readings and the market's
confirmations, and sends curtailment notices and (network-aware clearing) operating
envelopes to the market."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import decode, encode
from federates.common.runtime import Study, federate_main
from federates.common.timeline import MAX_ROUNDS
from federates.controllers.role import ControllersRole
from federates.feeder.role import Scada
from federates.feeder.sensitivity import needs_sensitivities
from federates.meters.federate import events


def run(study: Study, broker: str, log: logging.Logger):
    cfg, tl = study.cfg, study.cfg.timeline
    sens = study.sensitivities() if needs_sensitivities(cfg) else None
    role = ControllersRole(cfg, study.sites, study.inverter_kva, sensitivities=sens)
    n = len(study.sites)
    door = Door(keys.CONTROLLERS, broker, log=log)
    sub_curtailed = door.subscription(*keys.FEEDER_CURTAILED_P_KW)
    sub_scada = door.subscription(*keys.FEEDER_SCADA) if role.want_scada else None
    ep = door.endpoint(keys.CONTROLLERS)

    def scada():
        if sub_scada is None:
            return None
        return Scada.from_vector(door.vector(sub_scada, role.scada_size), len(sens.elements), len(sens.buses))

    def dispatch(texts: list[str]) -> list:
        """Handle AMI and confirmations; return the readings (in arrival order)."""
        readings = []
        for text in texts:
            env = decode(text)
            if env.kind == "readings":
                readings.append(env.items)
            elif env.kind == "ami_readings":
                role.on_ami(int(env.header["interval"]), env.items)
            elif env.kind == "confirmations":
                role.on_confirmations(int(env.header["interval"]), env.items)
            elif env.kind == "envelopes":
                role.on_envelopes(int(env.header["interval"]), env.items)
            else:
                raise ValueError(f"controllers got an unexpected {env.kind!r} message")
        return readings

    door.enter()
    try:
        for _, kind, x in events(tl):
            if kind == "ami":
                continue  # AMI arrives with the report below
            if kind == "report":
                door.advance(tl.report_time(x + 1))
                dispatch(door.receive(ep))
                door.send(ep, keys.MARKET, encode(role.report(x), kind="curtailments", interval=x))
                if x + 1 < tl.n_intervals:
                    door.send(ep, keys.MARKET, encode(role.envelopes(x + 1), kind="envelopes", interval=x + 1))
                    door.send(ep, keys.MARKET, encode(role.grid_constraints(x + 1), kind="grid_constraints",
                                                      interval=x + 1))
                continue
            for j in range(MAX_ROUNDS + 1):
                door.advance(tl.decide_time(x, j))
                batches = dispatch(door.receive(ep))
                if not batches:
                    break  # no readings: the feeder did not re-solve, the step is over
                for items in batches:
                    commands = role.on_readings(x, items, door.vector(sub_curtailed, n), scada())
                    if commands:
                        door.send(ep, keys.FEEDER, encode(commands, kind="commands", step=x))
    finally:
        door.close()
    return role.tables()


if __name__ == "__main__":
    federate_main(keys.CONTROLLERS, run)
