"""The prosumers' role, shared by the HELICS federate and the in-process engine.

Per market interval ``k`` the role forecasts each prosumer's mean load and PV, plans the
battery for self-consumption and bids the forecast net energy (:meth:`bids`). Per
physics step ``g`` it plays out the actual load and PV, runs the battery on its plan
within its real state of charge and reports the deviation from the forecast
(:meth:`step`). Powers follow ``federates.common.units``: ``> 0`` is consumption
(import); the battery's ``battery_kw > 0`` is charging.

Battery model: usable capacity ``battery_kwh``, power limit ``battery_kw`` for charge and
discharge, round-trip efficiency ``ROUND_TRIP_EFFICIENCY`` = 0.95 split evenly
(``eta = sqrt(0.95)`` each way): charging at ``p`` kW for ``dt`` h adds ``p*eta*dt`` kWh,
discharging at ``p`` kW removes ``p/eta*dt`` kWh. Initial state of charge
``INITIAL_SOC_FRACTION`` = 0.5 of capacity.

Call order (as in ``federates.common.timeline``): ``bids(k)`` after ``step`` of the last
step of interval k-1 and before the first step of k (it needs the real state of charge at
the start of k); ``step(g)`` once per step, in order. With ``prosumers.flex_dispatch:
cleared`` the flexible devices bid in orders of their own (:meth:`orders_sent`) and the
steps of k are played only after k's confirmations (:meth:`dispatch_sent`,
``federates/prosumers/flex/dispatch.py``).

Memory does not grow with the study's length. Profiles are generated in blocks of whole
market intervals (``block_intervals``, default one day's worth) when ``bids`` first needs
them, by ``profiles.LoadBlocks`` / ``CloudBlocks`` / the weather's ``at`` (``weather.py``) and the per-household
forecast-error generators, all carrying their state from block to block so that every
number equals the whole-study generation's bit for bit (tests/unit/test_prosumers_stream.py
checks it against the whole-study reference). A block is dropped once it is played out
and its rows are drained (:meth:`ProsumersRole.drain_tables`); only then are the rows
forgotten. A caller that never drains keeps every row, as before, for :meth:`tables`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from federates.common.admm import AdmmReply, AdmmRequest
from federates.common.comms import CommsLink
from federates.common.config import StudyFile
from federates.common.grid import CustomerSite
from federates.common.keys import part_bounds
from federates.common.messages import (
    Confirmation,
    DemandResponseCall,
    DemandResponseDelivery,
    LoadLimit,
    OperatingEnvelope,
    Order,
)
from federates.common.rng import stream
from federates.market.ledger import KeyRing, sign_order
from federates.prosumers import battery, measured, profiles
from federates.prosumers.adaptive import ADAPTIVE_STRATEGIES, AdaptiveBidders
from federates.prosumers.admm_agents import AdmmAgents
from federates.prosumers.agents import ProsumerSpec, make_specs, spec_arrays
from federates.prosumers.flex.demand import FlexDemand
from federates.prosumers.flex.dispatch import device_prices, own_supply_kw
from federates.prosumers.strategies import limit_price
from federates.prosumers.weather import Weather, weather_of

if TYPE_CHECKING:
    from federates.common.study import Study

ROUND_TRIP_EFFICIENCY = 0.95
ETA_ONE_WAY = float(np.sqrt(ROUND_TRIP_EFFICIENCY))
INITIAL_SOC_FRACTION = 0.5
MIN_ORDER_KWH = 1e-9  # orders below this energy [kWh] are not sent


def study_times(cfg: StudyFile, first_step: int = 0, n_steps: int | None = None) -> pd.DatetimeIndex:
    """Local start times (site time zone) of ``n_steps`` physics steps from ``first_step``
    (default: all steps); the same timestamps as the slice of the whole study's."""
    tl = cfg.timeline
    start = pd.Timestamp(cfg.study.start)
    dt = pd.Timedelta(seconds=tl.physics_step_s)
    n = tl.n_steps - first_step if n_steps is None else n_steps
    times = pd.date_range(start + dt * first_step, periods=n, freq=dt)
    return times.tz_convert(cfg.site.timezone)


def default_block_intervals(market_interval_s: float) -> int:
    """Market intervals per profile block: about one day (at least one interval)."""
    return max(1, round(86400.0 / market_interval_s))


def battery_limits_kw(
    p_kw: np.ndarray, soc_kwh: np.ndarray, capacity_kwh: np.ndarray, dt_h: float
) -> np.ndarray:
    """``p_kw`` [kW, > 0 charging] limited so the SoC stays in [0, capacity] over ``dt_h`` [h]."""
    max_charge = np.maximum(capacity_kwh - soc_kwh, 0.0) / (ETA_ONE_WAY * dt_h)
    max_discharge = np.maximum(soc_kwh, 0.0) * ETA_ONE_WAY / dt_h
    return np.clip(p_kw, -max_discharge, max_charge)


def soc_after(soc_kwh: np.ndarray, p_kw: np.ndarray, capacity_kwh: np.ndarray, dt_h: float) -> np.ndarray:
    """State of charge [kWh] after holding battery power ``p_kw`` [kW, > 0 charging] for ``dt_h``."""
    delta = np.where(p_kw > 0.0, p_kw * ETA_ONE_WAY, p_kw / ETA_ONE_WAY) * dt_h
    return np.clip(soc_kwh + delta, 0.0, capacity_kwh)


#: dtype pandas gives a column of participant names (``str`` under pandas 3); an empty
#: drain gets it too, so every drained ``profiles`` frame has the same dtypes
_NAME_DTYPE = pd.Series(np.array(["p"], dtype=object)).dtype


@dataclass
class _Block:
    """Profiles, forecasts and results of market intervals ``k0 .. k1-1`` (steps
    ``g0 .. g1-1``); per-interval arrays are (intervals, participants), per-step arrays
    (steps, participants)."""

    k0: int
    k1: int
    g0: int
    g1: int
    load_kw: np.ndarray  # actual demand
    pv_kw: np.ndarray  # actual PV output
    load_forecast_kw: np.ndarray
    pv_forecast_kw: np.ndarray
    battery_plan_kw: np.ndarray  # NaN until bid
    forecast_net_kw: np.ndarray  # NaN until bid
    battery_kw: np.ndarray  # > 0 charging
    soc_kwh: np.ndarray  # at the end of each step
    net_kw: np.ndarray
    temp_air_c: np.ndarray | None = None  # outdoor air per step [degC], with heat pumps / ACs


class IntervalForecasts:
    """``role.forecast_net_kw[k]``: the forecast net power [kW] per participant (site
    order) of market interval ``k``, the bid's (NaN before ``bids(k)``). Available for the
    intervals the role still holds: the current block's (so always the interval just
    bid) and every interval with rows not yet drained; KeyError for others."""

    def __init__(self, role: ProsumersRole):
        self._role = role

    def __getitem__(self, k: int) -> np.ndarray:
        for blk in self._role._held_blocks():
            if blk.k0 <= k < blk.k1:
                return blk.forecast_net_kw[k - blk.k0].copy()
        raise KeyError(f"forecast of interval {k} is no longer held (drained) or not generated yet")


class ProsumersRole:
    """All prosumers of a study: specs, profiles (generated in blocks), bids and step
    deviations; ``profiles`` rows are handed over by :meth:`drain_tables`."""

    def __init__(
        self, cfg: StudyFile, sites: list[CustomerSite], specs: list[ProsumerSpec] | None = None,
        *, block_intervals: int | None = None, population_indices: np.ndarray | None = None, offset: int = 0,
    ):
        self.cfg = cfg
        self.timeline = tl = cfg.timeline
        self.seed = cfg.study.seed
        # ``specs``: given when these sites are a slice of a larger population (a part of
        # a split prosumers federate), whose specs were drawn over all sites
        self.specs: list[ProsumerSpec] = make_specs(cfg, sites) if specs is None else list(specs)
        if len(self.specs) != len(sites):
            raise ValueError(f"{len(self.specs)} specs for {len(sites)} sites")
        self.participants: list[str] = [s.participant for s in self.specs]
        #: market intervals per profile block (the last block may be shorter)
        self.block_intervals = (
            default_block_intervals(tl.market_interval_s) if block_intervals is None else int(block_intervals)
        )
        if self.block_intervals < 1:
            raise ValueError("block_intervals must be >= 1")
        arr = spec_arrays(self.specs)
        self._index = arr["index"]
        self._capacity_kwh = arr["battery_kwh"]
        self._battery_kw = arr["battery_kw"]
        self._pv_kwp = arr["pv_kwp"]
        self._inverter_kva = arr["inverter_kva"]
        n = len(self.specs)

        orient = [profiles.pv_orientation(self.seed, int(i)) for i in self._index]
        self.tilt_deg = np.array([o[0] for o in orient], dtype=float)
        self.azimuth_deg = np.array([o[1] for o in orient], dtype=float)
        #: measured load (and PV) series of ``prosumers.profiles``, None: the synthetic model
        self._measured: measured.MeasuredSeries | None = None
        self._pv_model_kwp = self._pv_kwp  # the PV the pvlib model computes
        self._start_ns, _ = measured.study_span_ns(cfg.study.start, cfg.study.duration_s)
        self._step_ns = round(tl.physics_step_s * 1e9)
        if cfg.prosumers.profiles is not None:
            names = [s.profile for s in sites]
            if any(name is None for name in names):
                raise ValueError("measured profiles need each site's profile name (runner.launch.prepare_run sets it)")
            self._measured = measured.read_measured(
                measured.ProfileSpec.from_config(cfg.prosumers.profiles),
                *measured.study_span_ns(cfg.study.start, cfg.study.duration_s), customers=names, skip_others=True,
            )
            self._pv_model_kwp = np.where(self._measured.has_pv, 0.0, self._pv_kwp)
        # block generators: each carries its state (generators, filters, events) between blocks
        self._loads = profiles.LoadBlocks(
            arr["daily_load_kwh"], self._index, start=study_times(cfg, 0, 1)[0],
            step_s=tl.physics_step_s, n_steps=tl.n_steps, seed=self.seed,
        ) if self._measured is None else None
        self._has_pv = bool(n and (self._pv_model_kwp > 0).any())  # PV the model computes
        #: the study's sky (``site.weather``): irradiance, air temperature and wind per step
        self.weather: Weather = weather_of(cfg.site)
        # the synthetic sky's clouds; a weather file's irradiance carries its own
        self._clouds = (
            profiles.CloudBlocks(cloudiness=cfg.prosumers.cloudiness, step_s=tl.physics_step_s, seed=self.seed)
            if self._has_pv and cfg.site.weather.source == "synthetic"
            else None
        )
        self._forecast_rngs = [stream(self.seed, "forecast", int(i)) for i in self._index]
        self._block: _Block | None = None  # the block of the interval last bid
        self._done: list[_Block] = []  # earlier blocks with rows not yet drained
        self._drained_step = 0  # first step whose profiles row is not yet drained
        self._prosumers_drained = False

        #: ``forecast_net_kw[k]`` [kW] of the current and undrained intervals
        self.forecast_net_kw = IntervalForecasts(self)
        #: the market's confirmations of the last interval confirmed: {k: [...]}
        self.confirmations: dict[int, list[Confirmation]] = {}
        self.initial_soc_kwh = INITIAL_SOC_FRACTION * self._capacity_kwh
        self._soc = self.initial_soc_kwh.copy()
        self._next_step = 0
        m = cfg.market
        #: the utility's retail and feed-in prices of each interval (market.tariff)
        self.tariff = cfg.tariff
        self._battery_by_price = cfg.prosumers.battery_control == "price"
        #: each prosumer's own Ed25519 key; bids leave here signed (market.ledger)
        self.keys: KeyRing | None = (
            KeyRing.from_seed(self.seed, self.participants) if m.ledger else None
        )
        #: learning bidders when the strategy is adaptive (``zip``, ``roth_erev``), else None
        self.adaptive: AdaptiveBidders | None = (
            AdaptiveBidders(
                cfg.prosumers.strategy, retail_usd_per_kwh=self.tariff.retail_usd_per_kwh,
                feed_in_usd_per_kwh=self.tariff.feed_in_usd_per_kwh, seed=self.seed,
                indices={s.participant: int(s.index) for s in self.specs},
            )
            if cfg.prosumers.strategy in ADAPTIVE_STRATEGIES
            else None
        )
        self.comms = CommsLink.of(cfg.comms)
        #: the agents' side of the distributed P2P clearing (``market.mechanism:
        #: admm_distributed``), else None
        self.admm: AdmmAgents | None = (
            AdmmAgents(self.participants, self.comms, self.seed)
            if m.topology == "p2p" and m.mechanism == "admm_distributed" else None
        )
        #: EVs and heat pumps / ACs (``prosumers.ev``, ``prosumers.hvac``); None without any.
        #: On for every part of a split federate alike (its tables exist where a part owns none)
        self._dr_calls: dict[int, dict[int, tuple[float, str, str]]] = {}  # {k: {site position: call}}
        #: the DSO's load limits by interval: each household's import cap [kW] (inf: none)
        self._load_limits: dict[int, np.ndarray] = {}
        self.flex: FlexDemand | None = (
            FlexDemand(cfg, self._index, self.participants, start=study_times(cfg, 0, 1)[0],
                       retail_usd_per_kwh=self.tariff.retail,
                       population_indices=population_indices, offset=offset)
            if cfg.prosumers.has_flex else None
        )
        #: ``prosumers.flex_dispatch: cleared``: the devices bid on their own and are
        #: dispatched after the confirmations (:meth:`orders_sent`, :meth:`dispatch_sent`)
        self.cleared = cfg.prosumers.flex_dispatch == "cleared"
        self._orders_k: list[Order] = []  # every order of the interval last bid, as sent or lost
        self._device_of: dict[int, tuple[int, str]] = {}  # order position -> (site position, device)
        self._base_net_kw = np.zeros(n)  # the interval's forecast net without the bidding devices
        self._own_kw: dict[tuple[int, str], float] = {}  # what each device takes of its owner's surplus [kW]
        self._import_max_kw: dict[int, dict[int, float]] = {}  # {k: {site position: envelope [kW]}}

    @classmethod
    def from_study(cls, study: Study, part: int = 0, parts: int = 1) -> ProsumersRole:
        """The prosumers of part ``part`` of ``parts`` of the study (``keys.part_bounds``;
        the whole population with ``parts=1``): a slice of the sites whose specs are the
        slice of the whole population's (PV/battery ownership and the penetration factor
        are drawn over all sites)."""
        if parts == 1:
            return cls(study.cfg, study.sites)
        lo, hi = part_bounds(len(study.sites), part, parts)
        return cls(study.cfg, study.sites[lo:hi], specs=make_specs(study.cfg, study.sites)[lo:hi],
                   population_indices=np.array([s.index for s in study.sites]), offset=lo)

    # ---- profile blocks ------------------------------------------------------------
    def _make_block(self, k0: int) -> _Block:
        """Generate intervals ``k0 ..`` (the generators' next block)."""
        tl, n = self.timeline, len(self.specs)
        s = tl.steps_per_interval
        k1 = min(k0 + self.block_intervals, tl.n_intervals)
        g0, g1 = k0 * s, k1 * s
        n_int, n_steps = k1 - k0, g1 - g0
        times = study_times(self.cfg, g0, n_steps)
        measured_pv = None
        if self._measured is None:
            if self._loads.next_step != g0:
                raise RuntimeError(f"profile block from step {g0}, but the generators are at step {self._loads.next_step}")
            load_kw = self._loads.next(times)
        else:  # the file's series, energy-preserving means over the steps
            edges_ns = self._start_ns + np.arange(g0, g1 + 1, dtype=np.int64) * self._step_ns
            load_kw, measured_pv = self._measured.block(edges_ns)
        sky = None
        if self._has_pv or (self.flex is not None and self.flex.houses is not None):
            sky = self.weather.at(times, step_s=tl.physics_step_s)
        if self._has_pv:
            kt = self._clouds.next(n_steps) if self._clouds is not None else np.ones(n_steps)
            pv_kw = profiles.pv_ac_many_kw(
                self._pv_model_kwp, self._inverter_kva, self.tilt_deg, self.azimuth_deg, sky, kt
            )
        else:
            pv_kw = np.zeros((n_steps, n))
        if measured_pv is not None:
            pv_kw = np.where(self._measured.has_pv[None, :], measured_pv, pv_kw)
        # interval means and forecasts [kW] per interval and participant
        load_mean_kw = load_kw.reshape(n_int, s, n).mean(axis=1)
        pv_mean_kw = pv_kw.reshape(n_int, s, n).mean(axis=1)
        sd = self.cfg.prosumers.forecast_error_pct / 100.0
        err = np.empty((n_int, n, 2))
        for j, rng in enumerate(self._forecast_rngs):
            err[:, j, :] = rng.standard_normal((n_int, 2))  # sequential: as one whole-study draw
        return _Block(
            k0=k0, k1=k1, g0=g0, g1=g1, load_kw=load_kw, pv_kw=pv_kw,
            load_forecast_kw=np.maximum(load_mean_kw * (1.0 + sd * err[:, :, 0]), 0.0),
            pv_forecast_kw=np.maximum(pv_mean_kw * (1.0 + sd * err[:, :, 1]), 0.0),
            battery_plan_kw=np.full((n_int, n), np.nan), forecast_net_kw=np.full((n_int, n), np.nan),
            battery_kw=np.zeros((n_steps, n)), soc_kwh=np.zeros((n_steps, n)), net_kw=np.zeros((n_steps, n)),
            temp_air_c=None if sky is None else sky.temp_air_c,
        )

    def _block_for_bids(self, k: int) -> _Block:
        """The block of interval ``k``, generating it if ``k`` starts the next one (the
        current one is then played out: it is kept only while it has undrained rows)."""
        blk = self._block
        if blk is not None and blk.k0 <= k < blk.k1:
            return blk
        if blk is not None and self._drained_step < blk.g1:
            self._done.append(blk)
        self._block = None
        self._block = self._make_block(k)
        return self._block

    def _held_blocks(self) -> list[_Block]:
        return [*self._done, *([self._block] if self._block is not None else [])]

    # ---- market ------------------------------------------------------------------
    def bids(self, k: int) -> list[Order]:
        """Orders for market interval ``k``: one per participant with non-zero forecast net energy.

        Forecast net [kW] = forecast load - forecast PV + planned battery (charging > 0);
        the order's energy is ``|net| * interval_h`` [kWh], side buy if net > 0.
        """
        tl = self.timeline
        if not 0 <= k < tl.n_intervals:
            raise ValueError(f"interval {k} outside 0..{tl.n_intervals - 1}")
        if self._next_step != k * tl.steps_per_interval:
            raise RuntimeError(
                f"bids({k}) needs the state of charge at the start of interval {k}: call it "
                f"after step {k * tl.steps_per_interval - 1} and before step "
                f"{k * tl.steps_per_interval} (next step is {self._next_step})"
            )
        blk = self._block_for_bids(k)
        i = k - blk.k0
        dt_h = tl.interval_h
        load = blk.load_forecast_kw[i]
        device_bids = []
        planned_kw = 0.0  # the devices' plan at the expected prices (the battery plans around it)
        if self.flex is not None:  # the devices' plan for k: what they bid for
            t_out = self._t_out(blk, i)
            planned_kw = self.flex.plan_kw(k, t_out, self._dr_calls.pop(k, None))
            if self.cleared:  # each device its own order (flex/dispatch.py)
                device_bids = self.flex.offers(k, t_out, self.tariff.retail(k))
            else:
                load = load + planned_kw
        pv = blk.pv_forecast_kw[i]
        surplus = pv - (load + planned_kw if self.cleared else load)
        if self._battery_by_price:  # shaped by the day's expected prices (prosumers.battery_control)
            day = self.tariff.retail_usd_per_kwh
            idx = battery.day_ahead(k, round(86400.0 / tl.market_interval_s), tl.n_intervals)
            held = (idx >= k) & (idx < blk.k1)  # the intervals whose forecasts this block holds
            surplus_day = np.zeros((len(idx), len(surplus)))
            surplus_day[held] = blk.pv_forecast_kw[idx[held] - blk.k0] - blk.load_forecast_kw[idx[held] - blk.k0]
            wanted = battery.price_wanted_kw(surplus, self._battery_kw, retail_now=float(day[k]),
                                             feed_in_now=float(self.tariff.feed_in_usd_per_kwh[k]),
                                             retail_day=day[idx], round_trip=ROUND_TRIP_EFFICIENCY,
                                             soc_kwh=self._soc, capacity_kwh=self._capacity_kwh,
                                             surplus_day_kw=surplus_day, interval_h=dt_h)
        else:  # self-consumption: charge from surplus, discharge to cover the deficit
            wanted = battery.self_consumption_kw(surplus, self._battery_kw)
        plan = battery_limits_kw(wanted, self._soc, self._capacity_kwh, dt_h)
        net = load - pv + plan
        energy = np.abs(net) * dt_h
        net = np.where(energy < MIN_ORDER_KWH, 0.0, net)
        blk.battery_plan_kw[i] = plan
        blk.forecast_net_kw[i] = net
        p = self.cfg.prosumers
        retail, feed_in = self.tariff.retail(k), self.tariff.feed_in(k)
        if self.cleared:
            self._base_net_kw = net.copy()
            for b in device_bids:
                blk.forecast_net_kw[i][b.position] += b.kw
            net = self._net_of_own_supply(net, device_bids, feed_in)
            net = np.where(np.abs(net) * dt_h < MIN_ORDER_KWH, 0.0, net)

        orders = []
        for j, spec in enumerate(self.specs):
            if net[j] == 0.0:
                continue
            side = "buy" if net[j] > 0 else "sell"
            if self.adaptive is not None:
                value = retail if side == "buy" else feed_in
                price = self.adaptive.price(
                    k, spec.participant, side, value, energy_kwh=float(abs(net[j]) * dt_h)
                )
            else:
                price = limit_price(
                    p.strategy, side=side, retail_usd_per_kwh=retail,
                    feed_in_usd_per_kwh=feed_in, seed=self.seed,
                    index=spec.index, interval=k,
                )
            orders.append(
                Order(
                    participant=spec.participant, side=side, interval=k,
                    energy_kwh=float(abs(net[j]) * dt_h), price_usd_per_kwh=price,
                    bus=spec.bus, phase=spec.phase,
                )
            )
        if self.cleared:
            orders = self._with_device_orders(k, orders, device_bids)
        if self.keys is not None:
            orders = [sign_order(self.keys, o) for o in orders]
        if self.cleared:
            self._orders_k = orders
        return orders

    def _t_out(self, blk: _Block, i: int) -> np.ndarray:
        """Outdoor air [degC] of each step of the block's interval ``i`` (0 without a sky)."""
        s = self.timeline.steps_per_interval
        return blk.temp_air_c[i * s:(i + 1) * s] if blk.temp_air_c is not None else np.zeros(s)

    def _net_of_own_supply(self, net_kw: np.ndarray, device_bids: list, feed_in_usd_per_kwh: float) -> np.ndarray:
        """``prosumers.flex_dispatch: cleared``: each prosumer's devices served first by
        its own expected surplus (``-net_kw`` [kW] > 0: PV and battery beyond the rest of
        its load), as a home energy manager nets them before it trades
        (``dispatch.own_supply_kw``); the energy they take leaves the prosumer's own sale
        and their orders (``_own_kw``). The net [kW] the prosumer's own order then bids."""
        out = net_kw.copy()
        self._own_kw = {}
        by_pos: dict[int, list] = {}
        for b in device_bids:
            by_pos.setdefault(b.position, []).append(b)
        for j, bs in by_pos.items():
            if out[j] >= 0.0:
                continue
            took = own_supply_kw(-out[j], [b.kw for b in bs], [b.price_usd_per_kwh for b in bs], feed_in_usd_per_kwh)
            for b, kw in zip(bs, took, strict=True):
                if kw > 0.0:
                    self._own_kw[(j, b.device)] = kw
            out[j] = min(out[j] + math.fsum(took), 0.0)
        return out

    def _with_device_orders(self, k: int, orders: list[Order], device_bids: list) -> list[Order]:
        """Each prosumer's order followed by one buy order per bidding device (site order);
        notes which order is which device's (``prosumers.flex_dispatch: cleared``)."""
        dt_h = self.timeline.interval_h
        by_pos: dict[int, list] = {}
        for b in device_bids:
            by_pos.setdefault(b.position, []).append(b)
        base = {o.participant: o for o in orders}
        out: list[Order] = []
        self._device_of = {}
        for j, spec in enumerate(self.specs):
            if spec.participant in base:
                out.append(base[spec.participant])
            for b in by_pos.get(j, []):
                energy = (b.kw - self._own_kw.get((j, b.device), 0.0)) * dt_h  # the rest of its own supply
                if energy < MIN_ORDER_KWH:
                    continue
                self._device_of[len(out)] = (j, b.device)
                # a bid below the retail price takes no backstop: what peers do not sell it is not scheduled
                out.append(Order(participant=spec.participant, side="buy", interval=k, energy_kwh=energy,
                                 price_usd_per_kwh=b.price_usd_per_kwh, bus=spec.bus, phase=spec.phase,
                                 backstop=b.price_usd_per_kwh >= self.tariff.retail(k)))
        return out

    def bids_sent(self, k: int) -> tuple[list[Order], np.ndarray]:
        """What leaves the prosumers at the report time of interval ``k``: the orders the
        comms layer does not lose (:class:`CommsLink`), and every step's deviation [kW],
        shape (steps of the interval, participants), for the physics. A bidder whose
        order is lost or arrives after the market time gets no schedule, so its whole
        forecast is added to its deviation: the feeder's power (schedule + deviation)
        stays its real net power."""
        orders = self.bids(k)
        senders = [o.participant for o in orders]
        kept = self.comms.kept(self.seed, "bids", k, senders)
        lost = self.comms.unscheduled(self.seed, self.timeline, k, senders)
        unscheduled_kw = np.where(np.isin(self.participants, list(lost)), self.forecast_net_kw[k], 0.0)
        sent = [o for o, ok in zip(orders, kept, strict=True) if ok]
        if self.admm is not None:
            self.admm.hold(k, sent)
        return sent, self.interval_deviations(k) + unscheduled_kw

    def orders_sent(self, k: int) -> list[Order]:
        """``prosumers.flex_dispatch: cleared``: what leaves the prosumers at the report
        time of ``k``, the orders the comms layer does not lose; the steps of ``k`` are
        played at the dispatch time (:meth:`dispatch_sent`)."""
        orders = self.bids(k)
        kept = self.comms.kept(self.seed, "bids", k, [o.participant for o in orders])
        return [o for o, ok in zip(orders, kept, strict=True) if ok]

    def on_envelopes(self, k: int, envelopes: list[OperatingEnvelope]) -> None:
        """The DSO's operating envelopes of ``k`` (``market.network_aware: envelopes``,
        with ``prosumers.flex_dispatch: cleared``); other participants' are ignored."""
        pos = {p: j for j, p in enumerate(self.participants)}
        mine = {pos[e.participant]: float(e.import_max_kw) for e in envelopes
                if e.interval == k and e.participant in pos}
        if mine:
            self._import_max_kw[k] = mine

    def dispatch_sent(self, k: int) -> np.ndarray:
        """``prosumers.flex_dispatch: cleared``, after :meth:`on_confirmations` of ``k``
        (and :meth:`on_envelopes`): each bidding device's power set from the price it
        pays (flex/dispatch.py), within the customer's import envelope, then every step
        of ``k`` played: deviations [kW] (steps, participants) from each participant's
        schedule (its confirmation's energy / interval_h, 0 without one), so that the
        feeder's schedule + deviation is its real net power."""
        tl = self.timeline
        h = tl.interval_h
        conf = {c.participant: c for c in self.confirmations.get(k, [])}
        if self.flex is not None:
            blk = self._block
            retail = self.tariff.retail(k)
            own_kwh = {key: kw * h for key, kw in self._own_kw.items()}
            paid, share = device_prices(self._orders_k, self._device_of, conf, own_kwh, retail, self.tariff.feed_in(k))
            room = None
            envelopes = self._import_max_kw.pop(k, None)
            if envelopes:
                room = np.full(len(self.specs), np.nan)
                for j, imp in envelopes.items():
                    room[j] = imp - self._base_net_kw[j]
            self.flex.dispatch(k, self._t_out(blk, k - blk.k0), paid, room, scheduled=share, own_kwh=own_kwh)
        scheduled = np.array([conf[p].scheduled_kwh / h if p in conf else 0.0 for p in self.participants])
        return self.interval_deviations(k, reference_kw=scheduled)

    def admm_replies(self, k: int, requests: list[AdmmRequest]) -> list[AdmmReply]:
        """The agents' steps on the market's ADMM requests of interval ``k`` that have
        arrived, the replies the comms layer does not lose (``market.mechanism:
        admm_distributed``; :class:`AdmmAgents`)."""
        if self.admm is None:
            raise RuntimeError("ADMM requests without market.mechanism admm_distributed")
        return self.admm.replies(k, requests)

    def on_demand_response(self, k: int, calls: list[DemandResponseCall]) -> None:
        """The DSO's demand-response calls for interval ``k`` (before ``bids(k)``); calls to
        other participants (another part's) are ignored. Without flexible devices no call
        can be met (and the DSO calls only enrolled ones)."""
        pos = {p: j for j, p in enumerate(self.participants)}
        mine = {pos[c.participant]: (float(c.reduce_kw), str(c.limit), str(c.element))
                for c in calls if c.participant in pos and c.interval == k}
        if mine and self.flex is not None:
            self._dr_calls[k] = mine

    def on_load_limits(self, k: int, limits: list[LoadLimit]) -> None:
        """The DSO's load limits for interval ``k`` (before ``bids(k)``; others' ignored):
        a limited household's import above its cap is not served (the feeder holds it),
        and its devices are the first to lose it (``FlexDemand.step_kw``: the EV charger
        turned down, then the heat pump / AC and the water heater off for a step), so
        that what they record is what they got."""
        pos = {p: j for j, p in enumerate(self.participants)}
        mine = [(pos[x.participant], float(x.import_max_kw)) for x in limits
                if x.participant in pos and x.interval == k]
        for old in [j for j in self._load_limits if j < k]:
            del self._load_limits[old]
        if mine and self.flex is not None:
            cap = np.full(len(self.participants), np.inf)
            for j, kw in mine:
                cap[j] = kw
            self._load_limits[k] = cap

    def dr_deliveries(self, k: int) -> list[DemandResponseDelivery]:
        """What the demand-response calls of interval ``k`` got (site order): sent to the
        market at the report time of ``k + 1``, which pays them in ``k``'s settlement
        (``federates/market/settlement.py``, rule 3c). Empty without a call; given once."""
        return [] if self.flex is None else self.flex.deliveries(k)

    @property
    def dr_on(self) -> bool:
        """Whether the DSO's demand response runs (its deliveries go to the market)."""
        return self.flex is not None and self.flex.dr_on

    def on_confirmations(self, k: int, confirmations: list[Confirmation]) -> None:
        """The market's confirmations of interval ``k``: adaptive bidders learn from them;
        only the last interval's are kept (``confirmations``)."""
        self.confirmations = {k: list(confirmations)}
        if self.flex is not None:
            seen = [c.market_price_usd_per_kwh for c in confirmations if c.market_price_usd_per_kwh is not None]
            self.flex.observe(k, seen[0] if seen else None)
        if self.adaptive is not None:
            self.adaptive.learn(k, self.confirmations[k])

    # ---- physics -----------------------------------------------------------------
    def step(self, g: int, reference_kw: np.ndarray | None = None) -> np.ndarray:
        """Deviation [kW] of each participant's actual net power at step ``g`` from the
        forecast net power of the step's interval (site order; > 0 = more import), or
        from ``reference_kw`` [kW] where given (the schedule, ``dispatch_sent``)."""
        tl = self.timeline
        if g != self._next_step:
            raise RuntimeError(f"step({g}) called out of order; next step is {self._next_step}")
        if g >= tl.n_steps:
            raise ValueError(f"step {g} outside 0..{tl.n_steps - 1}")
        k = tl.interval_of_step(g)
        blk = self._block
        if blk is None or not blk.k0 <= k < blk.k1 or np.isnan(blk.forecast_net_kw[k - blk.k0]).any():
            raise RuntimeError(f"step({g}) before bids({k}): no forecast for interval {k}")
        i, r = k - blk.k0, g - blk.g0
        dt_h = tl.step_h
        b = battery_limits_kw(blk.battery_plan_kw[i], self._soc, self._capacity_kwh, dt_h)
        self._soc = soc_after(self._soc, b, self._capacity_kwh, dt_h)
        if self.flex is not None:  # the devices draw what they draw: into the household's load
            t_out = float(blk.temp_air_c[r]) if blk.temp_air_c is not None else 0.0
            cap = self._load_limits.get(k)  # under a load limit the devices lose the import above it first
            headroom = None if cap is None else cap - (blk.load_kw[r] - blk.pv_kw[r] + b)
            blk.load_kw[r] = blk.load_kw[r] + self.flex.step_kw(g, t_out, headroom)
        net = blk.load_kw[r] - blk.pv_kw[r] + b
        blk.battery_kw[r] = b
        blk.soc_kwh[r] = self._soc
        blk.net_kw[r] = net
        self._next_step = g + 1
        return net - (blk.forecast_net_kw[i] if reference_kw is None else reference_kw)

    def interval_deviations(self, k: int, reference_kw: np.ndarray | None = None) -> np.ndarray:
        """:meth:`step` for every step of interval ``k``, in order: deviations [kW], shape
        (steps of the interval, participants). Call after :meth:`bids` of ``k``; the
        prosumers need nothing from the grid within an interval, so the whole interval
        is played out at once (one message per interval instead of one per step)."""
        steps = self.timeline.steps_of_interval(k)
        out = np.empty((len(steps), len(self.specs)))
        for j, g in enumerate(steps):
            out[j] = self.step(g, reference_kw)
        return out

    def pv_step_kw(self, g: int) -> np.ndarray:
        """Actual PV output [kW] of each participant at step ``g`` (site order), for the
        steps of a block still held (the current one, or with rows not yet drained)."""
        for blk in self._held_blocks():
            if blk.g0 <= g < blk.g1:
                return blk.pv_kw[g - blk.g0].copy()
        raise KeyError(f"step {g} is no longer held (drained) or not generated yet")

    @property
    def soc_kwh_now(self) -> np.ndarray:
        """State of charge [kWh] per participant after the last step played."""
        return self._soc.copy()

    # ---- outputs -----------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        """What has not been drained yet (:meth:`drain_tables`), without forgetting it:
        ``prosumers`` (one row per spec; empty, same columns and dtypes, once drained) and
        ``profiles`` (one row per step played and participant: step, t_s, participant,
        load_kw, pv_kw, battery_kw, soc_kwh, net_kw, forecast_net_kw). A run that never
        drains gets every row here."""
        out = {
            "prosumers": self._prosumers_table(),
            "profiles": self._profiles_table(self._drained_step, self._next_step),
        }
        if self.flex is not None:
            out.update(self.flex.tables(final=self._next_step == self.timeline.n_steps))
        return out

    def drain_tables(self) -> dict[str, pd.DataFrame]:
        """The rows recorded since the previous drain (as :meth:`tables`), then forgotten:
        ``profiles`` of every step played since, ``prosumers`` in the first drain only (an
        empty frame with the same columns and dtypes afterwards). Concatenating every
        drain and the final :meth:`tables` (``ignore_index=True``) gives the tables of a
        run that never drains. Call it at market-interval boundaries (after ``bids(k)`` /
        ``interval_deviations(k)``): a played-out block is dropped once drained."""
        out = self.tables()
        if self.flex is not None:
            self.flex.forget()
        self._drained_step = self._next_step
        self._prosumers_drained = True
        self._done = []  # earlier blocks are played out: every row of theirs is drained now
        return out

    def _prosumers_table(self) -> pd.DataFrame:
        pros = pd.DataFrame([asdict(s) for s in self.specs])
        if len(pros):
            pros["tilt_deg"] = self.tilt_deg
            pros["azimuth_deg"] = self.azimuth_deg
        return pros.iloc[:0].copy() if self._prosumers_drained else pros

    def _profiles_table(self, first_step: int, end_step: int) -> pd.DataFrame:
        """``profiles`` rows of steps ``first_step .. end_step-1`` (from the held blocks)."""
        tl, n = self.timeline, len(self.specs)
        s = tl.steps_per_interval
        n_run = end_step - first_step
        steps = np.arange(first_step, end_step)
        pieces = [(b, max(first_step, b.g0), min(end_step, b.g1)) for b in self._held_blocks()]
        pieces = [(b, lo, hi) for b, lo, hi in pieces if lo < hi]

        def column(get) -> np.ndarray:
            parts = [get(b, lo, hi) for b, lo, hi in pieces]
            if not parts:
                return np.zeros(0)
            return (parts[0] if len(parts) == 1 else np.concatenate(parts)).ravel()

        def rows(name: str):
            return lambda b, lo, hi: getattr(b, name)[lo - b.g0:hi - b.g0]

        df = pd.DataFrame(
            {
                "step": np.repeat(steps, n),
                "t_s": np.repeat(steps * tl.physics_step_s, n),
                "participant": np.tile(np.array(self.participants, dtype=object), n_run),
                "load_kw": column(rows("load_kw")),
                "pv_kw": column(rows("pv_kw")),
                "battery_kw": column(rows("battery_kw")),
                "soc_kwh": column(rows("soc_kwh")),
                "net_kw": column(rows("net_kw")),
                "forecast_net_kw": column(
                    lambda b, lo, hi: b.forecast_net_kw[np.arange(lo, hi) // s - b.k0]
                ),
            }
        )
        if len(df) == 0:
            df["participant"] = df["participant"].astype(_NAME_DTYPE)
        return df
