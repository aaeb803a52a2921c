"""Feeder federate: applies schedules plus real deviations, solves OpenDSS, lets the
customers' inverters settle, shows the DSO its view of a control round when it must
(report by exception, federates.common.alarms) and re-solves with the DSO's caps;
per interval it reports the curtailment to the market and publishes the meters'
block. It asks HELICS for time only when it exchanges something: at the start of the
interval's steps (schedule, deviations, envelopes) and for the DSO's answer to each
view it shows (federates.common.timeline: view_time)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from federates.common import keys
from federates.common.conservation import ConservationError
from federates.common.door import Door
from federates.common.errors import PowerFlowNotConverged
from federates.common.messages import ViewsDone, decode, encode
from federates.common.study import Study, write_progress_file
from federates.common.tables import drain_due, study_chunk_intervals
from federates.common.timeline import MAX_ROUNDS
from federates.controllers.role import DsoReply
from federates.feeder.role import FeederRole
from federates.runtime import drain_into, federate_main, stop_federate

#: the least wall time [s] between two writes of the run's progress file
PROGRESS_EVERY_S = 0.25


class _FeederDoor:
    """The feeder's HELICS interfaces and the exchanges of one market interval."""

    def __init__(self, study: Study, role: FeederRole, door: Door) -> None:
        cfg = study.cfg
        self.role, self.tl, self.run_dir = role, cfg.timeline, study.run_dir
        self.n, self.s = len(study.sites), self.tl.steps_per_interval
        self.settle_losses = cfg.market.settle_losses
        self.door = door
        self.sub_schedule = door.subscription(*keys.SCHEDULE_P_KW)
        parts = cfg.prosumers.federates
        self.sub_deviation = [door.subscription(*keys.deviation_key(i, parts)) for i in range(parts)]
        self.part_sizes = [hi - lo for lo, hi in (keys.part_bounds(self.n, i, parts) for i in range(parts))]
        self.pub_view = door.publication(*keys.FEEDER_DSO_VIEW)
        self.pub_block = door.publication(*keys.FEEDER_METER_BLOCK)
        self.ep = door.endpoint(keys.FEEDER)
        self.progress_at = -math.inf  # when the progress file was last written [s, monotonic]

    def report(self, k: int) -> None:
        """The curtailment (and losses) of interval ``k`` to the market."""
        self.door.advance(self.tl.report_time(k + 1))
        self.door.send(self.ep, keys.MARKET, encode(self.role.curtailment_notices(k), kind="curtailments",
                                                    interval=k))
        if self.settle_losses:  # each customer's losses of k, for the settlement to charge
            self.door.send(self.ep, keys.MARKET, encode(self.role.loss_energy(k), kind="loss_energy", interval=k))

    def play(self, k: int) -> None:
        """Interval ``k``'s steps: schedule + deviations in, every step solved with the
        DSO asked when it must, the meters' block and the end of the views out."""
        tl, door, role = self.tl, self.door, self.role
        door.advance(tl.view_time(k, 0))
        self._envelopes(k)
        schedule_p_kw, deviation_p_kw = door.vector(self.sub_schedule, self.n), self._deviations()
        v = 0  # the views of the interval shown so far
        for i, g in enumerate(tl.steps_of_interval(k)):
            door.working(tl.step_t_s(g))
            role.begin_step(g, schedule_p_kw, deviation_p_kw[i])
            v = self._control_rounds(k, g, v)
        door.send(self.ep, keys.CONTROLLERS, encode([ViewsDone(interval=k, views=v)]))
        door.publish(self.pub_block, np.concatenate([[float(k)], *(a.ravel() for a in role.meter_block(k))]))
        self._progress(k)

    def _progress(self, k: int) -> None:
        """The study time reached to the run's progress file: after the last interval,
        else at most once per PROGRESS_EVERY_S of wall time (a file replaced costs ~1-2 ms
        of the feeder's time on the critical path; the runner reads it every 0.1 s)."""
        now = time.monotonic()
        if k + 1 == self.tl.n_intervals or now - self.progress_at >= PROGRESS_EVERY_S:
            write_progress_file(self.run_dir, self.tl.interval_start_s(k + 1))
            self.progress_at = now

    def _control_rounds(self, k: int, g: int, v: int) -> int:
        """Show the DSO step ``g``'s views until it is quiet; the views of ``k`` shown."""
        rounds = 0
        while (view := self.role.dso_view(g)) is not None:
            if rounds == MAX_ROUNDS:
                raise RuntimeError(f"step {g}: the DSO still capping after {MAX_ROUNDS} rounds")
            reply = self._ask_dso(k, v, view)
            v, rounds = v + 1, rounds + 1
            if self.role.apply(g, reply) is None:
                break
        return v

    def _deviations(self) -> np.ndarray:
        """Every prosumer part's deviations of the interval's steps [kW], (steps, sites)."""
        blocks = [self.door.vector(sub, self.s * m).reshape(self.s, m)
                  for sub, m in zip(self.sub_deviation, self.part_sizes, strict=True)]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)

    def _envelopes(self, k: int) -> None:
        """Envelopes (to the inverters) and the DSO's load limits and demand-response calls
        of interval ``k``, at its first step."""
        for text in self.door.receive(self.ep):
            env = decode(text)
            if env.kind == "envelopes":
                self.role.on_envelopes(k, env.items)
            elif env.kind == "load_limits" and int(env.header["interval"]) == k:
                self.role.on_load_limits(k, env.items)
            elif env.kind == "dr_calls" and int(env.header["interval"]) == k:
                self.role.on_demand_response(k, env.items)
            else:
                raise RuntimeError(f"interval {k}: unexpected {env.kind!r} message ({env.header})")

    def _ask_dso(self, k: int, v: int, view) -> DsoReply:
        """Show the DSO ``view``, view ``v`` of interval ``k``; its reply."""
        self.door.publish(self.pub_view, view.to_vector())  # at view_time(k, v)
        self.door.advance(self.tl.view_time(k, v + 1))  # the DSO answered at answer_time(k, v)
        replies = [decode(text) for text in self.door.receive(self.ep)]
        if len(replies) != 1 or replies[0].kind != "dso_caps" or int(replies[0].header["step"]) != view.step:
            raise RuntimeError(f"step {view.step}: expected the DSO's one reply, got "
                               f"{[(e.kind, e.header) for e in replies]}")
        env = replies[0]
        return DsoReply(env.items, capped=bool(env.header["capped"]), quiet=bool(env.header["quiet"]))


def run(study: Study, broker: str, log: logging.Logger, sink):
    tl = study.cfg.timeline
    opening = Door.opening(keys.FEEDER, broker, log=log)  # registers while the role is built
    role = FeederRole.from_study(study)
    link = _FeederDoor(study, role, opening.door())
    every = study_chunk_intervals(study.cfg, len(study.sites))
    link.door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            if k >= 1:
                link.report(k - 1)
            if k == tl.n_intervals:
                break
            if drain_due(tl, k, every):
                drain_into(sink, role)
            link.play(k)
    except (PowerFlowNotConverged, ConservationError) as e:
        stop_federate("feeder", log, sink, e)  # feeder.on_nonconvergence or a conservation check
    finally:
        link.door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.feeder.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.FEEDER, run)


if __name__ == "__main__":
    main()
