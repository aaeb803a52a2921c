"""Plain descriptions of where things sit on a feeder (no OpenDSS here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadPoint:
    """A load found in a feeder model.

    ``phases`` are the phase letters it connects to; ``kv`` its rated voltage [kV]
    (as the model gives it: L-L for 3-phase and delta loads, L-N for single-phase wye);
    ``kw``/``kvar`` its nominal demand [kW, kvar]. ``nodes``: the bus nodes (1..3)
    its phase conductors are wired to, in wiring order. ``split_phase``: the Load sits
    on a 120/240 V split-phase (center-tapped) secondary, its two nodes the two 120 V
    legs of one single-phase service transformer; ``phases`` is then that
    transformer's primary phase (one letter), not the node numbers.
    """

    name: str
    bus: str
    phases: tuple[str, ...]
    kv: float
    kw: float
    kvar: float
    conn: str  # "wye" | "delta"
    nodes: tuple[int, ...] = ()
    split_phase: bool = False


@dataclass(frozen=True)
class CustomerSite:
    """Where one prosumer connects.

    ``bus``/``phase``: the bus it hangs off and its phase (letter a/b/c: the bus node
    of that phase, or, on a split-phase load, the primary phase of the load's service
    transformer; such a customer connects across the load's two 120 V legs);
    ``group``: the service transformer it shares with neighbours (same group = same
    transformer); ``load``: the model load it was placed on ("" when a sites file puts
    it on a bus without one).

    Set only by a sites file or measured profiles (None otherwise, and then left out of
    ``sites.json``): ``pv_kwp`` [kWp], ``battery_kwh`` [kWh] and ``daily_load_kwh``
    [kWh/day] replace the prosumer's seeded draws; ``profile`` names its customer in
    the measured profiles file.
    """

    participant: str
    index: int
    bus: str
    phase: str
    group: str
    load: str
    pv_kwp: float | None = None
    battery_kwh: float | None = None
    daily_load_kwh: float | None = None
    profile: str | None = None
