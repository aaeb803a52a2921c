"""The communication layer between the customers' devices and the market: which
messages arrive late and which are lost (``comms`` in the study).

``latency_s`` [s] delays and ``loss_rate`` drops the messages named in ``applies_to``:
``bids`` (each order, prosumers -> market) and ``interval_energy`` (each meter's billing
energy, meters -> market) and ``admm`` (the iterates of the distributed P2P clearing,
both ways, :class:`LossDraws`). Losses are drawn by the sender from ``stream(seed, "comms",
what, k, sender)``, one draw per message in send order, so both engines drop the same
messages (HELICS's random-drop filter has its own, unseeded RNG); the federation applies
the latency with a HELICS delay filter (the ADMM's iterates: held by the receiving
federate until they arrive, ``federates.common.door.LateEndpoint``), the in-process engine
by delivering at the first market time (round) at or after the arrival. With 0 latency and 0 loss nothing changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from federates.common.rng import stream
from federates.common.timeline import Timeline


@dataclass(frozen=True)
class CommsLink:
    """The loss and latency model of the study's ``comms`` section."""

    latency_s: float = 0.0
    loss_rate: float = 0.0
    applies_to: tuple[str, ...] = ("bids", "interval_energy")

    @classmethod
    def of(cls, comms: Any) -> CommsLink:
        """From the study's ``comms`` section (``federates.common.config.CommsConfig``)."""
        return cls(comms.latency_s, comms.loss_rate, tuple(comms.applies_to))

    def latency_of(self, what: str) -> float:
        """Latency [s] of the ``what`` messages (0 if the layer does not apply)."""
        return self.latency_s if what in self.applies_to else 0.0

    def kept(self, seed: int, what: str, k: int, senders: Sequence[str]) -> list[bool]:
        """Which of the ``what`` messages about interval ``k`` get through, one per
        entry of ``senders`` (the participant / meter of each message, in send order):
        the j-th message of a sender is lost when the j-th draw of ``stream(seed,
        "comms", what, k, sender)`` is below ``loss_rate`` (so the drops do not depend
        on how the senders are split over federates)."""
        if self.loss_rate <= 0.0 or what not in self.applies_to:
            return [True] * len(senders)
        draws = {s: iter(stream(seed, "comms", what, k, s).random(c)) for s, c in Counter(senders).items()}
        return [bool(next(draws[s]) >= self.loss_rate) for s in senders]

    def unscheduled(self, seed: int, tl: Timeline, k: int, participants: Sequence[str]) -> set[str]:
        """The bidders of interval ``k`` (``participants``: one per order, in send order)
        whose order is lost or reaches the market after its market time: they get no
        schedule, so the physics adds their forecast to their published deviation (the
        feeder's power = schedule + deviation stays their real net power)."""
        late = (round(tl.report_time(k) * 1e9) + round(self.latency_of("bids") * 1e9)
                > round(tl.market_time(k) * 1e9))  # HELICS time [ns], as runner.engine._ns
        kept = self.kept(seed, "bids", k, participants)
        return {p for p, ok in zip(participants, kept, strict=True) if late or not ok}


class LossDraws:
    """The losses of the ``what`` messages of interval ``k`` decided one message at a
    time, as the senders send them (the iterates of the distributed ADMM clearing): the
    j-th message of ``sender`` is lost when the j-th draw of ``stream(seed, "comms",
    what, k, sender)`` is below ``loss_rate`` (as :meth:`CommsLink.kept`, so the drops
    depend neither on the engine nor on how the senders are split over federates)."""

    def __init__(self, link: CommsLink, seed: int, what: str, k: int) -> None:
        self.seed, self.what, self.k = seed, what, k
        self.rate = link.loss_rate if what in link.applies_to else 0.0
        self._streams: dict[str, object] = {}

    def kept(self, sender: str) -> bool:
        if self.rate <= 0.0:
            return True
        g = self._streams.get(sender)
        if g is None:
            g = self._streams[sender] = stream(self.seed, "comms", self.what, self.k, sender)
        return bool(g.random() >= self.rate)
