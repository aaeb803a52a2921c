"""Who the prosumers are: PV, battery and demand of each participant (seeded draws)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federates.common.config import ProsumersConfig, StudyFile
from federates.common.grid import CustomerSite
from federates.common.rng import stream
from federates.prosumers.flex.demand import flex_ratings_kw
from federates.prosumers.profiles import daily_shape

_SHAPE_MAX = float(daily_shape(np.arange(0.0, 24.0, 1.0 / 600.0)).max())  # [-], 6 s grid


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
    With ``pv_penetration_pct`` every kWp drawn is then multiplied by one common factor
    so that their sum is ``pv_penetration_pct / 100 * pv_penetration_base_kw``.
    A site's own ``pv_kwp``, ``battery_kwh`` (with the configured ``battery_kw``) or
    ``daily_load_kwh`` (a sites file's, or measured profiles') replaces its draw, as is
    (not scaled by the penetration).
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

    kwp_of = [float(stream(seed, "pv_kwp", s.index).uniform(p.pv_kwp_min, p.pv_kwp_max)) if j in pv_owners
              else 0.0 for j, s in enumerate(sites)]
    kwp_of = _scale_to_penetration(kwp_of, p)

    specs = []
    for j, site in enumerate(sites):
        kwp = kwp_of[j] if site.pv_kwp is None else float(site.pv_kwp)
        daily = _daily_load_kwh(cfg, site)
        bat = j in bat_owners and has_battery_equipment
        b_kwh = p.battery_kwh if bat else 0.0
        b_kw = p.battery_kw if bat else 0.0
        if site.battery_kwh is not None:  # a sites file's battery: the configured power rating
            b_kwh = float(site.battery_kwh)
            b_kw = p.battery_kw if b_kwh > 0.0 else 0.0
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


def expected_peak_kw(daily_load_kwh: float) -> float:
    """A household's expected demand peak [kW]: ``daily_load_kwh / 24 h`` times the
    maximum of the load model's daily shape (``profiles.daily_shape``, mean 1, max about
    1.68). The appliance events follow the same shape in expectation, so this is the
    peak of the expected demand (not of one noisy day)."""
    return float(daily_load_kwh) / 24.0 * _SHAPE_MAX


def feeder_peak_load_kw(cfg: StudyFile, sites: list[CustomerSite], model_load_kw: float) -> float:
    """The feeder peak load [kW] that ``prosumers.pv_penetration_pct`` refers to.

    ``P_peak = background_load_scale * model_load_kw + sum_j expected_peak_kw(E_j)``:
    ``model_load_kw`` is the sum of the nominal kW of the feeder model's own Loads (as
    compiled, before customers are attached); both background shapes
    (``opendss_default``, ``flat``) peak at 1.0 x nominal, so the first term is the
    background's peak. ``E_j`` is prosumer j's drawn daily load [kWh]. The peaks are
    added without a coincidence factor (an upper bound of the coincident peak), the
    convention of PV penetration = installed PV / peak load in e.g. Hoke et al., "Steady-
    State Analysis of Maximum Photovoltaic Penetration Levels on Typical Distribution
    Feeders", IEEE Trans. Sustainable Energy 4 (2013) 350-357.
    """
    peaks = sum(expected_peak_kw(_daily_load_kwh(cfg, s)) for s in sites)
    return cfg.feeder.background_load_scale * float(model_load_kw) + peaks


def _daily_load_kwh(cfg: StudyFile, site: CustomerSite) -> float:
    """The prosumer's expected daily load [kWh]: its site's, else drawn from its own stream."""
    if site.daily_load_kwh is not None:
        return float(site.daily_load_kwh)
    p = cfg.prosumers
    return float(stream(cfg.study.seed, "daily_load", site.index).uniform(p.daily_load_kwh_min, p.daily_load_kwh_max))


def _scale_to_penetration(kwp: list[float], p: ProsumersConfig) -> list[float]:
    """``kwp`` [kWp] times one factor so that the total is the requested penetration."""
    if p.pv_penetration_pct is None:
        return kwp
    if p.pv_penetration_base_kw is None:
        raise ValueError("prosumers.pv_penetration_pct needs pv_penetration_base_kw (prepare_run fills it in)")
    total = sum(kwp)
    if total <= 0.0:
        raise ValueError("prosumers.pv_penetration_pct: no prosumer has PV to scale")
    factor = p.pv_penetration_pct / 100.0 * p.pv_penetration_base_kw / total
    return [k * factor for k in kwp]


def spec_arrays(specs: list[ProsumerSpec]) -> dict[str, np.ndarray]:
    """Columns of the specs as float arrays (site order), for vectorised models."""
    names = ("daily_load_kwh", "pv_kwp", "inverter_kva", "battery_kwh", "battery_kw")
    out = {k: np.array([getattr(s, k) for s in specs], dtype=float) for k in names}
    out["index"] = np.array([s.index for s in specs], dtype=np.int64)
    return out


def inverter_kva_of(cfg: StudyFile, sites: list[CustomerSite]) -> np.ndarray:
    """Inverter nameplate [kVA] of each customer of ``sites`` (site order), from the
    prosumer specs: the DER the utility has registered."""
    return np.array([s.inverter_kva for s in make_specs(cfg, sites)], dtype=float)


def flex_kw_of(cfg: StudyFile, sites: list[CustomerSite]) -> np.ndarray:
    """Flexible demand [kW] of each customer of ``sites`` (site order): its EV charger's
    power plus its heat pump / AC's electric power, 0 without either. What a DSO has on
    its register of loads enrolled for demand response."""
    return flex_ratings_kw(cfg, np.array([s.index for s in sites], dtype=int))
