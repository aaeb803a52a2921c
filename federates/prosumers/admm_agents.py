"""The peers' side of the distributed P2P clearing (``market.mechanism:
admm_distributed``; the market's side and the protocol: federates.market.admm_distributed).

Each prosumer agent holds the orders it sent for the interval and, for every request the
market's coordinator sends about one of them, solves its own local problem: the seller's
or the buyer's projection of consensus ADMM (:func:`federates.common.admm.local_step`)
with its own limit price, warm-started from its previous step on that order; it replies
with its proposals. The comms layer may lose a reply (drawn per peer,
:class:`federates.common.comms.LossDraws`). Plain Python: the prosumers federate and the
in-process engine call the same methods.
"""

from __future__ import annotations

import numpy as np

from federates.common.admm import RHO_USD_PER_KWH2, AdmmReply, AdmmRequest, local_step
from federates.common.comms import CommsLink, LossDraws
from federates.common.messages import Order


class AdmmAgents:
    """The agents of ``participants`` (one prosumers part) in the distributed clearing."""

    def __init__(self, participants: list[str], comms: CommsLink, seed: int) -> None:
        self.mine = set(participants)
        self.comms, self.seed = comms, seed
        self.k: int | None = None
        self.orders: dict[tuple[str, str, float], Order] = {}
        self.tau: dict[tuple[str, str, int], np.ndarray] = {}
        self.steps = 0  # local problems solved (this interval)
        self._up: LossDraws | None = None

    def hold(self, k: int, orders: list[Order]) -> None:
        """The orders the agents sent for interval ``k`` (what they will step on)."""
        self.k = k
        self.orders = {(o.participant, o.side, o.price_usd_per_kwh): o for o in orders if o.participant in self.mine}
        self.tau = {}
        self.steps = 0
        self._up = LossDraws(self.comms, self.seed, "admm", k)

    def replies(self, k: int, requests: list[AdmmRequest]) -> list[AdmmReply]:
        """Each agent's step on each of its orders the market asked about (the latest
        request per order, of interval ``k``; other agents' requests are ignored), the
        replies the comms layer does not lose, in (participant, side, order) order."""
        if k != self.k:
            raise ValueError(f"ADMM requests of interval {k}, the agents hold the orders of {self.k}")
        latest: dict[tuple[str, str, int], AdmmRequest] = {}
        for r in requests:
            key = (r.participant, r.side, r.order)
            if r.interval == k and r.participant in self.mine and (key not in latest
                                                                   or r.step > latest[key].step):
                latest[key] = r
        out = []
        for key in sorted(latest):
            r = latest[key]
            own = self.orders.get((r.participant, r.side, r.price_usd_per_kwh))
            if own is None or r.cap_kwh > own.energy_kwh:
                raise ValueError(f"interval {k}: the market asked {r.participant!r} about a {r.side} order "
                                 f"({r.cap_kwh} kWh at {r.price_usd_per_kwh} USD/kWh) it did not send")
            proposal, self.tau[key] = local_step(r.side, own.price_usd_per_kwh, r.cap_kwh, r.charge_usd_per_kwh,
                                                 r.peer_kwh, r.pair_price_usd_per_kwh, RHO_USD_PER_KWH2,
                                                 self.tau.get(key))
            self.steps += 1
            if self._up is not None and self._up.kept(r.participant):
                out.append(AdmmReply(k, r.step, r.participant, r.side, r.order, r.pairs, proposal))
        return out
