"""Who the prosumers are: PV, battery and demand of each participant (seeded draws)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federates.common.grid import CustomerSite
from federates.common.rng import stream
from runner.config import StudyFile


@dataclass(frozen=True)
class ProsumerSpec:
    """One prosumer's equipment.

    ``daily_load_kwh`` expected demand [kWh/day]; ``pv_kwp`` PV DC rating [kWp] (0 = no
    PV); ``inverter_kva`` inverter rating [kVA]: ``pv_kwp * inverter_kva_per_kwp``, or
    ``battery_kw`` if larger, 0 with neither PV nor battery; ``battery_kwh`` usable
    capacity [kWh] and ``battery_kw`` power rating [kW] (both 0 = no battery).
    """

    participant: str
    index: int
    bus: str
    phase: str
    group: str
    daily_load_kwh: float
    pv_kwp: float
    inverter_kva: float
    battery_kwh: float
    battery_kw: float

    @property
    def has_pv(self) -> bool:
        return self.pv_kwp > 0.0

    @property
    def has_battery(self) -> bool:
        return self.battery_kwh > 0.0 and self.battery_kw > 0.0


def _pick(keys: list[tuple[float, ...]], count: int) -> set[int]:
    """Positions of the ``count`` smallest keys (ties broken by position)."""
    order = sorted(range(len(keys)), key=lambda j: (*keys[j], j))
    return set(order[:count])


def make_specs(cfg: StudyFile, sites: list[CustomerSite]) -> list[ProsumerSpec]:
    """One ProsumerSpec per site, in site order.

    PV goes to ``round(pv_share * n)`` prosumers and batteries to
    ``round(battery_share * n)`` (PV owners first); each prosumer's ownership rank, kWp
    (uniform in [pv_kwp_min, pv_kwp_max]) and daily load (uniform in
    [daily_load_kwh_min, daily_load_kwh_max]) come from streams keyed by its site index.
    """
    p = cfg.prosumers
    seed = cfg.study.seed
    n = len(sites)
    u_pv = [float(stream(seed, "pv_owner", s.index).random()) for s in sites]
    pv_owners = _pick([(u,) for u in u_pv], round(p.pv_share * n))
    u_bat = [float(stream(seed, "battery_owner", s.index).random()) for s in sites]
    bat_keys = [(0.0 if j in pv_owners else 1.0, u_bat[j]) for j in range(n)]
    bat_owners = _pick(bat_keys, round(p.battery_share * n))
    has_battery_equipment = p.battery_kwh > 0.0 and p.battery_kw > 0.0

    specs = []
    for j, site in enumerate(sites):
        kwp = 0.0
        if j in pv_owners:
            kwp = float(stream(seed, "pv_kwp", site.index).uniform(p.pv_kwp_min, p.pv_kwp_max))
        daily = float(
            stream(seed, "daily_load", site.index).uniform(p.daily_load_kwh_min, p.daily_load_kwh_max)
        )
        bat = j in bat_owners and has_battery_equipment
        b_kwh = p.battery_kwh if bat else 0.0
        b_kw = p.battery_kw if bat else 0.0
        inverter = float(max(kwp * p.inverter_kva_per_kwp, b_kw))
        specs.append(
            ProsumerSpec(
                participant=site.participant,
                index=site.index,
                bus=site.bus,
                phase=site.phase,
                group=site.group,
                daily_load_kwh=daily,
                pv_kwp=kwp,
                inverter_kva=inverter,
                battery_kwh=b_kwh,
                battery_kw=b_kw,
            )
        )
    return specs


def spec_arrays(specs: list[ProsumerSpec]) -> dict[str, np.ndarray]:
    """Columns of the specs as float arrays (site order), for vectorised models."""
    names = ("daily_load_kwh", "pv_kwp", "inverter_kva", "battery_kwh", "battery_kw")
    out = {k: np.array([getattr(s, k) for s in specs], dtype=float) for k in names}
    out["index"] = np.array([s.index for s in specs], dtype=np.int64)
    return out
