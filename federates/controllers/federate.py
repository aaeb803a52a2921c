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
from federates.common.study import Study
from federates.common.tables import drain_due, study_chunk_intervals
from federates.controllers.role import ControllersRole
from federates.runtime import drain_into, federate_main


class _ControllersDoor:
    """The DSO's HELICS interfaces and its exchanges: per interval the AMI readings,
    the confirmations, envelopes or grid constraints; per view of the feeder, caps."""

    def __init__(self, study: Study, role: ControllersRole, door: Door) -> None:
        self.role, self.tl, self.n = role, study.cfg.timeline, len(study.sites)
        self.door = door
        self.sub_view = door.subscription(*keys.FEEDER_DSO_VIEW)
        self.view_size = 3 + 2 * self.n + (0 if role.scada_shape is None else Scada.size(*role.scada_shape))
        self.ep = door.endpoint(keys.CONTROLLERS)
        self.prosumers = keys.prosumers_names(study.cfg.prosumers.federates)
        self.cleared = study.cfg.prosumers.flex_dispatch == "cleared"  # envelopes to the prosumers too

    def dispatch(self) -> ViewsDone | None:
        """AMI readings and confirmations, in arrival order; the feeder's word that the
        interval has no more views, if it came."""
        done = None
        for text in self.door.receive(self.ep):
            env = decode(text)
            if env.kind == "ami_readings":
                self.role.on_ami(int(env.header["interval"]), env.items)
            elif env.kind == "confirmations":
                self.role.on_confirmations(int(env.header["interval"]), env.items)
            elif env.kind == "views_done":
                done = env.items[0]
            else:
                raise ValueError(f"controllers got an unexpected {env.kind!r} message")
        return done

    def plan(self, k: int) -> None:
        """At the report time of ``k``: the AMI readings of k-1 in; the envelopes and
        grid constraints of ``k`` out (none at the end of the study)."""
        self.door.advance(self.tl.report_time(k))
        if self.dispatch() is not None:  # the AMI readings of k-1
            raise RuntimeError(f"interval {k - 1}: the feeder ended its views after the interval")
        if k == self.tl.n_intervals:
            return
        envelopes = self.role.envelopes(k)
        self.door.send(self.ep, keys.MARKET, encode(envelopes, kind="envelopes", interval=k))
        if envelopes:
            self.door.send(self.ep, keys.FEEDER, encode(envelopes, kind="envelopes", interval=k))
        if envelopes and self.cleared:  # the devices keep to the import envelope at dispatch
            text = encode(envelopes, kind="envelopes", interval=k)
            for name in self.prosumers:
                self.door.send(self.ep, name, text)
        self.door.send(self.ep, keys.MARKET, encode(self.role.grid_constraints(k), kind="grid_constraints",
                                                    interval=k))

    def serve(self, k: int) -> None:
        """Answer the feeder's views of interval ``k`` until it says there are no more."""
        for v in range(self.tl.max_views(k) + 1):
            self.door.advance(self.tl.answer_time(k, v))
            done = self.dispatch()  # the confirmations of k come before its first view
            shown = self.door.updated(self.sub_view)
            if done is not None:
                if shown or done.views != v or done.interval != k:
                    raise RuntimeError(f"interval {k}: the feeder ended the views of {done.interval} at "
                                       f"{done.views}, the DSO is at view {v}{' with a new view' if shown else ''}")
                self._call_demand(k + 1)
                return
            if not shown:
                raise RuntimeError(f"interval {k}: no view {v} from the feeder and no end of its views")
            self._answer(k, v)
        raise RuntimeError(f"interval {k}: more than {self.tl.max_views(k)} views from the feeder")

    def _call_demand(self, k: int) -> None:
        """The demand-response calls for ``k`` to every prosumer part (each takes its own),
        read at their report time of ``k``, and to the feeder (it records them, read at its
        first step of ``k``), and the load limits for ``k`` to the feeder, read at its
        first step of ``k``, and to the prosumers, with the calls; nothing to send without
        calls or limits."""
        if k >= self.tl.n_intervals:
            return
        calls = self.role.demand_response_calls(k)
        if calls:
            text = encode(calls, kind="dr_calls", interval=k)
            for name in (*self.prosumers, keys.FEEDER):  # the feeder records them (curtailments)
                self.door.send(self.ep, name, text)
        limits = self.role.load_limits(k)
        if limits:
            text = encode(limits, kind="load_limits", interval=k)
            self.door.send(self.ep, keys.FEEDER, text)
            for name in self.prosumers:  # their devices lose the import above a limit first
                self.door.send(self.ep, name, text)

    def _answer(self, k: int, v: int) -> None:
        view = DsoView.from_vector(self.door.vector(self.sub_view, self.view_size), self.n, self.role.scada_shape)
        if self.tl.interval_of_step(view.step) != k:
            raise RuntimeError(f"interval {k}: view {v} is of step {view.step}, outside the interval")
        reply = self.role.on_view(view)
        self.door.send(self.ep, keys.FEEDER, encode(reply.caps, kind="dso_caps", step=view.step,
                                                    capped=reply.capped, quiet=reply.quiet))


def run(study: Study, broker: str, log: logging.Logger, sink):
    tl = study.cfg.timeline
    opening = Door.opening(keys.CONTROLLERS, broker, log=log)  # registers while the role is built
    role = ControllersRole.from_study(study)
    link = _ControllersDoor(study, role, opening.door())
    every = study_chunk_intervals(study.cfg, len(study.sites))
    link.door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            if k >= 1:
                link.plan(k)
            if k == tl.n_intervals:
                break
            if drain_due(tl, k, every):
                drain_into(sink, role)
            link.serve(k)
    finally:
        link.door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.controllers.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.CONTROLLERS, run)


if __name__ == "__main__":
    main()
