"""Controllers federate: the DSO.

In every control round of a physics step it reads the feeder's view (the customers'
telemetry once their inverters have settled, and the SCADA values) and sends the
feeder its curtailment caps, or nothing (the step is over). Per interval it takes the
AMI readings and the market's confirmations and, with network-aware clearing, sends
operating envelopes (to the market and the feeder's inverters) or grid constraints
(to the market)."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import DsoView, Scada, decode, encode
from federates.common.runtime import Study, drain_into, federate_main
from federates.common.tables import drain_due, study_chunk_intervals
from federates.common.timeline import MAX_ROUNDS
from federates.controllers.role import ControllersRole
from federates.feeder.sensitivity import needs_sensitivities


def run(study: Study, broker: str, log: logging.Logger, sink):
    cfg, tl = study.cfg, study.cfg.timeline
    sens = study.sensitivities() if needs_sensitivities(cfg) else None
    role = ControllersRole(cfg, study.sites, study.inverter_kva, sensitivities=sens)
    n = len(study.sites)
    door = Door(keys.CONTROLLERS, broker, log=log)
    sub_view = door.subscription(*keys.FEEDER_DSO_VIEW)
    view_size = 3 + 2 * n + (0 if role.scada_shape is None else Scada.size(*role.scada_shape))
    ep = door.endpoint(keys.CONTROLLERS)
    every = study_chunk_intervals(cfg, n)

    def dispatch() -> None:
        """AMI readings and confirmations, in arrival order."""
        for text in door.receive(ep):
            env = decode(text)
            if env.kind == "ami_readings":
                role.on_ami(int(env.header["interval"]), env.items)
            elif env.kind == "confirmations":
                role.on_confirmations(int(env.header["interval"]), env.items)
            else:
                raise ValueError(f"controllers got an unexpected {env.kind!r} message")

    door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            if k >= 1:
                door.advance(tl.report_time(k))
                dispatch()  # the AMI readings of k-1
                if k < tl.n_intervals:
                    envelopes = role.envelopes(k)
                    door.send(ep, keys.MARKET, encode(envelopes, kind="envelopes", interval=k))
                    if envelopes:
                        door.send(ep, keys.FEEDER, encode(envelopes, kind="envelopes", interval=k))
                    door.send(ep, keys.MARKET, encode(role.grid_constraints(k), kind="grid_constraints",
                                                      interval=k))
            if k == tl.n_intervals:
                break
            if drain_due(tl, k, every):
                drain_into(sink, role)
            for g in tl.steps_of_interval(k):
                for j in range(MAX_ROUNDS + 1):
                    door.advance(tl.decide_time(g, j))
                    dispatch()  # the confirmations of k, before the first step's view
                    view = DsoView.from_vector(door.vector(sub_view, view_size), n, role.scada_shape)
                    if view.step != g:
                        raise RuntimeError(f"step {g} round {j}: the feeder's view is of step {view.step}")
                    reply = role.on_view(view)
                    if not reply:
                        break  # nothing to do: the step is over
                    door.send(ep, keys.FEEDER, encode(reply.caps, kind="dso_caps", step=g, capped=reply.capped))
                    if reply.capped:
                        break
    finally:
        door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.controllers.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.CONTROLLERS, run)


if __name__ == "__main__":
    main()
