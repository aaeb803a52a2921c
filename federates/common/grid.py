"""Plain descriptions of where things sit on a feeder (no OpenDSS here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadPoint:
    """A load found in a feeder model.

    ``phases`` are the phase letters it connects to; ``kv`` its rated voltage [kV]
    (as the model gives it: L-L for 3-phase and delta loads, L-N for single-phase wye);
    ``kw``/``kvar`` its nominal demand [kW, kvar].
    """

    name: str
    bus: str
    phases: tuple[str, ...]
    kv: float
    kw: float
    kvar: float
    conn: str  # "wye" | "delta"


@dataclass(frozen=True)
class CustomerSite:
    """Where one prosumer connects.

    ``bus``/``phase``: the primary bus node it hangs off (phase letter a/b/c);
    ``group``: the service transformer it shares with neighbours (same group = same
    transformer); ``load``: the model load it was placed on.
    """

    participant: str
    index: int
    bus: str
    phase: str
    group: str
    load: str
