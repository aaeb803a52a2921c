"""Feeder federate: applies schedules plus real deviations, solves OpenDSS, and re-solves
in each control round that brings controller commands; publishes measurements."""

from __future__ import annotations

import logging
import os

import numpy as np

from federates.common import keys
from federates.common.door import Door
from federates.common.errors import PowerFlowNotConverged
from federates.common.messages import decode
from federates.common.runtime import Study, federate_main
from federates.common.timeline import MAX_ROUNDS
from federates.feeder.role import FeederRole, Measurement
from runner.progress import write_progress_file


def report_progress(study: Study, g: int) -> None:
    """After the last step of a market interval: the simulated time reached [s] to
    ``<run>/progress``, which the runner reads for its progress bar."""
    tl = study.cfg.timeline
    if (g + 1) % tl.steps_per_interval == 0:
        write_progress_file(study.run_dir, tl.step_t_s(g + 1))


def run(study: Study, broker: str, log: logging.Logger):
    cfg, tl = study.cfg, study.cfg.timeline
    role = FeederRole(cfg, study.master, study.sites)
    n = len(study.sites)
    door = Door(keys.FEEDER, broker, log=log)
    sub_schedule = door.subscription(*keys.SCHEDULE_P_KW)
    parts = cfg.prosumers.federates
    sub_deviation = [door.subscription(*keys.deviation_key(i, parts)) for i in range(parts)]
    part_sizes = [hi - lo for lo, hi in (keys.part_bounds(n, i, parts) for i in range(parts))]

    def deviation() -> np.ndarray:
        """Every prosumer part's deviations [kW], concatenated in site order."""
        if parts == 1:
            return door.vector(sub_deviation[0], n)
        return np.concatenate([door.vector(s, m) for s, m in zip(sub_deviation, part_sizes, strict=True)])
    pubs = [door.publication(*k) for k in (keys.FEEDER_V_PU, keys.FEEDER_P_KW,
                                           keys.FEEDER_Q_KVAR, keys.FEEDER_CURTAILED_P_KW)]
    pub_scada = door.publication(*keys.FEEDER_SCADA) if role.want_scada else None
    ep = door.endpoint(keys.FEEDER)

    def publish(m: Measurement) -> None:
        for pub, values in zip(pubs, (m.v_pu, m.p_kw, m.q_kvar, m.curtailed_p_kw), strict=True):
            door.publish(pub, values)
        if pub_scada is not None and m.scada is not None:
            door.publish(pub_scada, m.scada.to_vector())

    door.enter()
    try:
        for g in range(tl.n_steps):
            door.advance(tl.solve_time(g, 0))
            if door.receive(ep):
                raise RuntimeError(f"step {g}: controller commands arrived outside a control round")
            publish(role.begin_step(g, door.vector(sub_schedule, n), deviation()))
            for j in range(1, MAX_ROUNDS + 1):
                door.advance(tl.solve_time(g, j))  # every command of round j-1 is in by now
                commands = [c for text in door.receive(ep) for c in decode(text).items]
                if not commands:
                    break
                publish(role.apply(g, commands))
            else:
                raise RuntimeError(f"step {g}: controllers still commanding after {MAX_ROUNDS} rounds")
            report_progress(study, g)
    except PowerFlowNotConverged as e:
        # feeder.on_nonconvergence stopped the run: exit before closing the door, so that
        # the other federates wait for the feeder (instead of failing first for want of
        # its values) and the runner names the feeder, with this line in the log's tail
        log.error("feeder: %s", e)
        logging.shutdown()
        os._exit(1)
    finally:
        door.close()
    return role.tables()


if __name__ == "__main__":
    federate_main(keys.FEEDER, run)
