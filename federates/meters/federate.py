"""Meters federate (AMI head-end): reads the feeder's customer-point values after every
solve, sends readings to the controllers and interval energy to the market."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.door import Door
from federates.common.messages import encode
from federates.common.runtime import Study, federate_main
from federates.common.timeline import MAX_ROUNDS, Timeline
from federates.meters.role import MetersRole


def events(tl: Timeline) -> list[tuple[float, str, int]]:
    """(HELICS time, kind, index) of every physics step, AMI delivery and interval
    report, in order (index: the step, or the interval reported on)."""
    ev = [(tl.step_time(g), "step", g) for g in range(tl.n_steps)]
    ev += [(tl.ami_time(k), "ami", k - 1) for k in range(1, tl.n_intervals + 1)]
    ev += [(tl.report_time(k), "report", k - 1) for k in range(1, tl.n_intervals + 1)]
    return sorted(ev)


def run(study: Study, broker: str, log: logging.Logger):
    cfg, tl = study.cfg, study.cfg.timeline
    role = MetersRole(cfg, study.sites, v_base_v=study.v_base_v)
    n = len(study.sites)
    door = Door(keys.METERS, broker, log=log)
    sub_v, sub_p, sub_q = (door.subscription(*k) for k in
                           (keys.FEEDER_V_PU, keys.FEEDER_P_KW, keys.FEEDER_Q_KVAR))
    ep = door.endpoint(keys.METERS)
    # comms: the billing energy travels on its own delayed endpoint (the control readings
    # and AMI stay on ``ep``); with no latency it shares ``ep``, as without comms
    latency_s = cfg.comms.latency_of("interval_energy")
    ep_billing = door.endpoint(f"{keys.METERS}/billing") if latency_s > 0 else ep
    door.add_delay_filter(ep_billing, latency_s)

    door.enter()
    try:
        for _, kind, x in events(tl):
            if kind == "ami":
                door.advance(tl.ami_time(x + 1))
                door.send(ep, keys.CONTROLLERS, encode(role.ami(x), kind="ami_readings", interval=x))
                continue
            if kind == "report":
                door.advance(tl.report_time(x + 1))
                energies = role.report(x)
                kept = cfg.comms.kept(cfg.study.seed, "interval_energy", x, [e.meter for e in energies])
                energies = [e for e, ok in zip(energies, kept, strict=True) if ok]  # comms: lost readings
                door.send(ep_billing, keys.MARKET, encode(energies, kind="interval_energy", interval=x))
                continue
            for j in range(MAX_ROUNDS + 1):
                door.advance(tl.read_time(x, j))
                if not door.updated(sub_v):
                    if j == 0:
                        raise RuntimeError(f"step {x}: no feeder values to read")
                    break  # the feeder did not re-solve: the step is over
                readings = role.read(x, door.vector(sub_v, n), door.vector(sub_p, n), door.vector(sub_q, n))
                door.send(ep, keys.CONTROLLERS, encode(readings, kind="readings", step=x))
    finally:
        door.close()
    return role.tables()


if __name__ == "__main__":
    federate_main(keys.METERS, run)
