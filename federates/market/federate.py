"""Market federate: orders, meter energy, curtailment notices and demand-response
deliveries in; confirmations (messages) and per-prosumer scheduled kW (a value) out;
with grid constraints the export envelopes it set go to the feeder's inverters."""

from __future__ import annotations

import logging

from federates.common import keys
from federates.common.admm import decode_admm, encode_admm
from federates.common.comms import CommsLink
from federates.common.conservation import ConservationError
from federates.common.door import Door, LateEndpoint
from federates.common.messages import decode, encode
from federates.common.study import Study
from federates.common.tables import drain_due, study_chunk_intervals
from federates.common.timeline import ADMM_MAX_ITERATIONS
from federates.market.role import MarketRole, MarketTime
from federates.runtime import drain_into, federate_main, stop_federate

#: the messages the market takes at its market time, by kind
INBOX_KINDS = ("orders", "interval_energy", "curtailments", "loss_energy", "envelopes", "grid_constraints",
               "dr_delivered")


class _MarketDoor:
    """The market's HELICS interfaces: what it takes at a market time, what it sends."""

    def __init__(self, study: Study, door: Door) -> None:
        self.door = door
        self.pub = door.publication(*keys.SCHEDULE_P_KW)
        self.ep = door.endpoint(keys.MARKET)
        participants = study.participants
        self.parts = parts = study.cfg.prosumers.federates
        self.names = keys.prosumers_names(parts)
        self.position = {p: j for j, p in enumerate(participants)}
        self.part_of = {p: i for i in range(parts)
                        for p in participants[slice(*keys.part_bounds(len(participants), i, parts))]}
        self.admm_ep = None
        m = study.cfg.market
        if m.topology == "p2p" and m.mechanism == "admm_distributed":
            self.admm_ep = LateEndpoint(door, door.endpoint(keys.admm_endpoint(keys.MARKET)),
                                        CommsLink.of(study.cfg.comms).latency_of("admm"))

    def inbox(self) -> dict[str, list]:
        """Everything received by now, by kind; orders in site order."""
        inbox: dict[str, list] = {kind: [] for kind in INBOX_KINDS}
        for text in self.door.receive(self.ep):
            env = decode(text)
            if env.kind not in inbox:
                raise ValueError(f"market got an unexpected {env.kind!r} message")
            inbox[env.kind].extend(env.items)
        if self.parts > 1:  # parts' orders arrive interleaved: site order, as from one federate
            inbox["orders"].sort(key=lambda o: self.position.get(o.participant, len(self.position)))
        return inbox

    def admm(self, k: int, role: MarketRole, tl) -> MarketTime:
        """The distributed clearing of ``k`` (``market.mechanism: admm_distributed``), one
        round at a time (``timeline.admm_time``): the replies that have arrived in,
        each part's requests out; once done, the word to every part."""
        for h in range(2 * ADMM_MAX_ITERATIONS + 1):
            self.door.advance(tl.admm_time(k, h))
            replies = [r for text in self.admm_ep.receive() for r in decode_admm(text)[2]]
            requests, out = role.admm_round(k, h, replies)
            if out is not None:
                for name in self.names:
                    self.admm_ep.send(keys.admm_endpoint(name), encode_admm(k, [], done=True))
                return out
            by_part: dict[int, list] = {}
            for r in requests:
                by_part.setdefault(self.part_of.get(r.participant, 0), []).append(r)
            for i, mine in sorted(by_part.items()):
                self.admm_ep.send(keys.admm_endpoint(self.names[i]), encode_admm(k, mine))
        raise RuntimeError(f"interval {k}: the distributed clearing did not end by its gate")

    def send(self, k: int, out: MarketTime) -> None:
        """The confirmations of ``k`` to the prosumers (each part its own) and the DSO,
        the schedule to the feeder, and the envelopes the clearing set to its inverters."""
        text = encode(out.confirmations, kind="confirmations", interval=k)
        if self.parts == 1:
            self.door.send(self.ep, keys.PROSUMERS, text)
        else:
            for i, name in enumerate(self.names):
                mine = [c for c in out.confirmations if self.part_of.get(c.participant) == i]
                self.door.send(self.ep, name, encode(mine, kind="confirmations", interval=k))
        self.door.send(self.ep, keys.CONTROLLERS, text)  # the DSO's view of the schedule
        if out.inverter_envelopes is not None:
            self.door.send(self.ep, keys.FEEDER, encode(out.inverter_envelopes, kind="envelopes", interval=k))
        self.door.publish(self.pub, out.schedule_p_kw)


def run(study: Study, broker: str, log: logging.Logger, sink):
    tl = study.cfg.timeline
    opening = Door.opening(keys.MARKET, broker, log=log)  # registers while the role is built
    role = MarketRole.from_study(study)
    link = _MarketDoor(study, opening.door())
    every = study_chunk_intervals(study.cfg, len(study.participants))
    link.door.enter()
    try:
        for k in range(tl.n_intervals + 1):
            link.door.advance(tl.market_time(k))
            inbox = link.inbox()
            out = role.on_market_time(k, inbox["orders"], inbox["interval_energy"], inbox["curtailments"],
                                      inbox["envelopes"], inbox["grid_constraints"], losses=inbox["loss_energy"],
                                      deliveries=inbox["dr_delivered"])
            if out is None:  # market.mechanism admm_distributed: the peers clear k
                out = link.admm(k, role, tl)
            if k < tl.n_intervals:
                link.send(k, out)
                # the books (settlement of k-1, records, ledger blocks) while the feeder plays k
                link.door.later(role.keep_books)
                if drain_due(tl, k, every):
                    link.door.later(lambda: drain_into(sink, role))
    except ConservationError as e:
        stop_federate("market", log, sink, e)
    finally:
        link.door.close()
    return role.tables()


def main() -> None:
    """``python -m federates.market.federate --run-dir RUN --broker-address ADDRESS``."""
    federate_main(keys.MARKET, run)


if __name__ == "__main__":
    main()
