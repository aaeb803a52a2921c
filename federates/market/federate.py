"""Market federate: orders, meter energy and curtailment notices in; confirmations
(messages) and per-prosumer scheduled kW (a value) out; with grid constraints the
export envelopes it set go to the feeder's inverters."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.conservation import ConservationError
from federates.common.door import Door
from federates.common.messages import decode, encode
from federates.common.tables import drain_due, study_chunk_intervals
from federates.market.role import MarketRole
from federates.runtime import Study, drain_into, federate_main, stop_federate


def run(study: Study, broker: str, log: logging.Logger, sink):
    cfg, tl = study.cfg, study.cfg.timeline
    role = MarketRole.from_study(study)
    door = Door(keys.MARKET, broker, log=log)
    pub = door.publication(*keys.SCHEDULE_P_KW)
    ep = door.endpoint(keys.MARKET)
    parts = cfg.prosumers.federates
    every = study_chunk_intervals(cfg, len(study.participants))
    names = keys.prosumers_names(parts)
    position = {p: j for j, p in enumerate(study.participants)}
    part_of = {p: i for i in range(parts)
               for p in study.participants[slice(*keys.part_bounds(len(study.participants), i, parts))]}
    door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            door.advance(tl.market_time(k))
            inbox: dict[str, list] = {"orders": [], "interval_energy": [], "curtailments": [], "loss_energy": [],
                                      "envelopes": [], "grid_constraints": []}
            for text in door.receive(ep):
                env = decode(text)
                if env.kind not in inbox:
                    raise ValueError(f"market got an unexpected {env.kind!r} message")
                inbox[env.kind].extend(env.items)
            if parts > 1:  # parts' orders arrive interleaved: site order, as from one federate
                inbox["orders"].sort(key=lambda o: position.get(o.participant, len(position)))
            out = role.on_market_time(
                k, inbox["orders"], inbox["interval_energy"], inbox["curtailments"], inbox["envelopes"],
                inbox["grid_constraints"], losses=inbox["loss_energy"],
            )
            if k < tl.n_intervals:
                text = encode(out.confirmations, kind="confirmations", interval=k)
                if parts == 1:
                    door.send(ep, keys.PROSUMERS, text)
                else:  # each prosumer part its own participants' confirmations
                    for i, name in enumerate(names):
                        mine = [c for c in out.confirmations if part_of.get(c.participant) == i]
                        door.send(ep, name, encode(mine, kind="confirmations", interval=k))
                door.send(ep, keys.CONTROLLERS, text)  # the DSO's view of the schedule
                if out.inverter_envelopes is not None:  # the export limits the constrained clearing set
                    door.send(ep, keys.FEEDER, encode(out.inverter_envelopes, kind="envelopes", interval=k))
                door.publish(pub, out.schedule_p_kw)
                if drain_due(tl, k, every):
                    drain_into(sink, role)
    except ConservationError as e:
        stop_federate("market", log, sink, e)
    finally:
        door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.market.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.MARKET, run)


if __name__ == "__main__":
    main()
