"""Meters federate (AMI head-end): per market interval it takes the feeder's meter
block (the final solve of every step at the customer points), sends the AMI readings
to the DSO and the interval energy to the market."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.conservation import ConservationError
from federates.common.door import Door
from federates.common.messages import encode
from federates.common.study import Study
from federates.common.tables import drain_due, study_chunk_intervals
from federates.meters.role import MetersRole
from federates.runtime import drain_into, federate_main, stop_federate


def run(study: Study, broker: str, log: logging.Logger, sink):
    cfg, tl = study.cfg, study.cfg.timeline
    opening = Door.opening(keys.METERS, broker, log=log)  # registers while the role is built
    role = MetersRole.from_study(study)
    n, s = len(study.sites), tl.steps_per_interval
    door = opening.door()
    sub_block = door.subscription(*keys.FEEDER_METER_BLOCK)
    ep = door.endpoint(keys.METERS)
    # comms: the billing energy travels on its own delayed endpoint (the AMI data stay
    # on ``ep``); with no latency it shares ``ep``, as without comms
    latency_s = role.comms.latency_of("interval_energy")
    ep_billing = door.endpoint(f"{keys.METERS}/billing") if latency_s > 0 else ep
    door.add_delay_filter(ep_billing, latency_s)
    every = study_chunk_intervals(cfg, n)

    door.enter()
    try:
        for k in range(1, tl.n_intervals + 1):
            door.advance(tl.ami_time(k))
            block = door.vector(sub_block, 1 + 3 * s * n + n)
            if int(block[0]) != k - 1:
                raise RuntimeError(f"the feeder's meter block is of interval {int(block[0])}, expected {k - 1}")
            role.record_interval(k - 1, *block[1:1 + 3 * s * n].reshape(3, s, n), block[1 + 3 * s * n:])
            door.send(ep, keys.CONTROLLERS, encode(role.ami(k - 1), kind="ami_readings", interval=k - 1))
            door.advance(tl.report_time(k))
            door.send(ep_billing, keys.MARKET, encode(role.report_sent(k - 1), kind="interval_energy", interval=k - 1))
            if drain_due(tl, k, every):
                drain_into(sink, role)
    except ConservationError as e:
        stop_federate("meters", log, sink, e)
    finally:
        door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.meters.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.METERS, run)


if __name__ == "__main__":
    main()
