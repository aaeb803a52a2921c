"""Controllers federate: the DSO.

The feeder shows it its view of a control round (the customers' telemetry once their
inverters have settled, and the SCADA values) by exception, when a limit is crossed
or the DSO's last reply was not quiet (federates.common.alarms); the DSO answers each
view with its curtailment caps (possibly none) and whether it is quiet, until the
feeder says the interval has no more views (federates.common.timeline: view_time).
Per interval it takes the AMI readings and the market's confirmations and, with
network-aware clearing, sends operating envelopes (to the market and the feeder's
inverters) or grid constraints (to the market)."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import DsoView, Scada, ViewsDone, decode, encode
from federates.common.tables import drain_due, study_chunk_intervals
from federates.controllers.role import ControllersRole
from federates.runtime import Study, drain_into, federate_main


def run(study: Study, broker: str, log: logging.Logger, sink):
    cfg, tl = study.cfg, study.cfg.timeline
    role = ControllersRole.from_study(study)
    n = len(study.sites)
    door = Door(keys.CONTROLLERS, broker, log=log)
    sub_view = door.subscription(*keys.FEEDER_DSO_VIEW)
    view_size = 3 + 2 * n + (0 if role.scada_shape is None else Scada.size(*role.scada_shape))
    ep = door.endpoint(keys.CONTROLLERS)
    every = study_chunk_intervals(cfg, n)

    def dispatch() -> ViewsDone | None:
        """AMI readings and confirmations, in arrival order; the feeder's word that the
        interval has no more views, if it came."""
        done = None
        for text in door.receive(ep):
            env = decode(text)
            if env.kind == "ami_readings":
                role.on_ami(int(env.header["interval"]), env.items)
            elif env.kind == "confirmations":
                role.on_confirmations(int(env.header["interval"]), env.items)
            elif env.kind == "views_done":
                done = env.items[0]
            else:
                raise ValueError(f"controllers got an unexpected {env.kind!r} message")
        return done

    def serve(k: int) -> None:
        """Answer the feeder's views of interval ``k`` until it says there are no more."""
        for v in range(tl.max_views(k) + 1):
            door.advance(tl.answer_time(k, v))
            done = dispatch()  # the confirmations of k come before its first view
            shown = door.updated(sub_view)
            if done is not None:
                if shown or done.views != v or done.interval != k:
                    raise RuntimeError(f"interval {k}: the feeder ended the views of {done.interval} at {done.views}, "
                                       f"the DSO is at view {v}{' with a new view' if shown else ''}")
                return
            if not shown:
                raise RuntimeError(f"interval {k}: no view {v} from the feeder and no end of its views")
            view = DsoView.from_vector(door.vector(sub_view, view_size), n, role.scada_shape)
            if tl.interval_of_step(view.step) != k:
                raise RuntimeError(f"interval {k}: view {v} is of step {view.step}, outside the interval")
            reply = role.on_view(view)
            door.send(ep, keys.FEEDER, encode(reply.caps, kind="dso_caps", step=view.step,
                                              capped=reply.capped, quiet=reply.quiet))
        raise RuntimeError(f"interval {k}: more than {tl.max_views(k)} views from the feeder")

    door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            if k >= 1:
                door.advance(tl.report_time(k))
                if dispatch() is not None:  # the AMI readings of k-1
                    raise RuntimeError(f"interval {k - 1}: the feeder ended its views after the interval")
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
            serve(k)
    finally:
        door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.controllers.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.CONTROLLERS, run)


if __name__ == "__main__":
    main()
