"""Feeder federate: applies schedules plus real deviations, solves OpenDSS, lets the
customers' inverters settle, shows the DSO its view of a control round when it must
(report by exception, federates.common.alarms) and re-solves with the DSO's caps;
per interval it reports the curtailment to the market and publishes the meters'
block. It asks HELICS for time only when it exchanges something: at the start of the
interval's steps (schedule, deviations, envelopes) and for the DSO's answer to each
view it shows (federates.common.timeline: view_time)."""

from __future__ import annotations

import logging

import numpy as np

from federates.common import keys
from federates.common.conservation import ConservationError
from federates.common.door import Door
from federates.common.errors import PowerFlowNotConverged
from federates.common.messages import ViewsDone, decode, encode
from federates.common.tables import drain_due, study_chunk_intervals
from federates.common.timeline import MAX_ROUNDS
from federates.controllers.role import DsoReply
from federates.feeder.role import FeederRole
from federates.runtime import (
    Study,
    drain_into,
    federate_main,
    stop_federate,
    write_progress_file,
)


def run(study: Study, broker: str, log: logging.Logger, sink):
    cfg, tl = study.cfg, study.cfg.timeline
    role = FeederRole.from_study(study)
    n, s = len(study.sites), tl.steps_per_interval
    door = Door(keys.FEEDER, broker, log=log)
    sub_schedule = door.subscription(*keys.SCHEDULE_P_KW)
    parts = cfg.prosumers.federates
    sub_deviation = [door.subscription(*keys.deviation_key(i, parts)) for i in range(parts)]
    part_sizes = [hi - lo for lo, hi in (keys.part_bounds(n, i, parts) for i in range(parts))]
    pub_view = door.publication(*keys.FEEDER_DSO_VIEW)
    pub_block = door.publication(*keys.FEEDER_METER_BLOCK)
    ep = door.endpoint(keys.FEEDER)
    every = study_chunk_intervals(cfg, n)

    def deviations() -> np.ndarray:
        """Every prosumer part's deviations of the interval's steps [kW], (steps, sites)."""
        blocks = [door.vector(sub, s * m).reshape(s, m) for sub, m in zip(sub_deviation, part_sizes, strict=True)]
        return blocks[0] if parts == 1 else np.concatenate(blocks, axis=1)

    def inbox(k: int) -> None:
        """Envelopes of interval ``k`` (to the inverters), at its first step."""
        for text in door.receive(ep):
            env = decode(text)
            if env.kind != "envelopes":
                raise RuntimeError(f"interval {k}: unexpected {env.kind!r} message ({env.header})")
            role.on_envelopes(k, env.items)

    def ask_dso(k: int, v: int, view) -> DsoReply:
        """Show the DSO ``view``, view ``v`` of interval ``k``; its reply."""
        door.publish(pub_view, view.to_vector())  # at view_time(k, v)
        door.advance(tl.view_time(k, v + 1))  # the DSO answered at answer_time(k, v)
        replies = [decode(text) for text in door.receive(ep)]
        if len(replies) != 1 or replies[0].kind != "dso_caps" or int(replies[0].header["step"]) != view.step:
            raise RuntimeError(f"step {view.step}: expected the DSO's one reply, got "
                               f"{[(e.kind, e.header) for e in replies]}")
        env = replies[0]
        return DsoReply(env.items, capped=bool(env.header["capped"]), quiet=bool(env.header["quiet"]))

    door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            if k >= 1:  # curtailment of k-1 to the market
                door.advance(tl.report_time(k))
                door.send(ep, keys.MARKET, encode(role.curtailment_notices(k - 1), kind="curtailments",
                                                  interval=k - 1))
                if cfg.market.settle_losses:  # each customer's losses of k-1, for the settlement to charge
                    door.send(ep, keys.MARKET, encode(role.loss_energy(k - 1), kind="loss_energy", interval=k - 1))
            if k == tl.n_intervals:
                break
            if drain_due(tl, k, every):
                drain_into(sink, role)
            door.advance(tl.view_time(k, 0))
            inbox(k)
            schedule_p_kw, deviation_p_kw = door.vector(sub_schedule, n), deviations()
            v = 0  # the views of the interval shown so far
            for i, g in enumerate(tl.steps_of_interval(k)):
                door.working(tl.step_t_s(g))
                role.begin_step(g, schedule_p_kw, deviation_p_kw[i])
                rounds = 0
                while (view := role.dso_view(g)) is not None:
                    if rounds == MAX_ROUNDS:
                        raise RuntimeError(f"step {g}: the DSO still capping after {MAX_ROUNDS} rounds")
                    reply = ask_dso(k, v, view)
                    v, rounds = v + 1, rounds + 1
                    if role.apply(g, reply) is None:
                        break
            door.send(ep, keys.CONTROLLERS, encode([ViewsDone(interval=k, views=v)]))
            door.publish(pub_block, np.concatenate([[float(k)], *(a.ravel() for a in role.meter_block(k))]))
            write_progress_file(study.run_dir, tl.interval_start_s(k + 1))
    except (PowerFlowNotConverged, ConservationError) as e:
        stop_federate("feeder", log, sink, e)  # feeder.on_nonconvergence or a conservation check
    finally:
        door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.feeder.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.FEEDER, run)


if __name__ == "__main__":
    main()
