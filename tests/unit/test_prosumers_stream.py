"""Profiles generated in blocks and the drained tables, against whole-study generation.

The reference is the slow path: every profile generated for the whole study at once
(``household_load_kw`` per household, ``clear_sky_index``, ``sky_state`` over all steps,
one forecast-error draw per household), as the role did before it streamed
(:class:`WholeStudyRole`, that role's code). Every comparison here is exact: block
generation reproduces the whole-study numbers bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from federates.common.config import SiteConfig, StudyFile
from federates.common.grid import CustomerSite
from federates.common.messages import Confirmation
from federates.common.rng import stream
from federates.market.ledger import KeyRing, sign_order
from federates.prosumers import profiles
from federates.prosumers.adaptive import ADAPTIVE_STRATEGIES, AdaptiveBidders
from federates.prosumers.agents import make_specs, spec_arrays
from federates.prosumers.role import (
    INITIAL_SOC_FRACTION,
    MIN_ORDER_KWH,
    ProsumersRole,
    battery_limits_kw,
    soc_after,
    study_times,
)
from federates.prosumers.strategies import limit_price

SAN_JUAN = SiteConfig()


def make_sites(n: int) -> list[CustomerSite]:
    return [
        CustomerSite(f"p{i:03d}", i, f"bus{i % 5}", "abc"[i % 3], f"t{i // 3}", f"load{i % 5}")
        for i in range(n)
    ]


def make_cfg(*, study: dict | None = None, site: dict | None = None, **prosumers) -> StudyFile:
    raw = {"study": {"seed": 42, **(study or {})}, "site": site or {}, "prosumers": prosumers}
    return StudyFile.model_validate(raw)


def split(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def mixed_split(n: int, sizes: tuple[int, ...] = (1, 1, 7, 60, 1, 1440, 13, 500)) -> list[tuple[int, int]]:
    """Blocks of 0..n cycling through ``sizes``: single steps, odd sizes, whole days."""
    out, a, i = [], 0, 0
    while a < n:
        out.append((a, min(a + sizes[i % len(sizes)], n)))
        a, i = out[-1][1], i + 1
    return out


class WholeStudyRole:
    """The reference: the role as it was before blocks (tecosim c514ee0), generating every
    profile of the whole study in its constructor, with the loads by the per-household
    whole-study path (``household_load_kw``)."""

    def __init__(self, cfg: StudyFile, sites: list[CustomerSite]):
        self.cfg, self.timeline, self.seed = cfg, cfg.timeline, cfg.study.seed
        self.specs = make_specs(cfg, sites)
        self.participants = [s.participant for s in self.specs]
        arr = spec_arrays(self.specs)
        self._capacity_kwh, self._battery_kw = arr["battery_kwh"], arr["battery_kw"]
        n, tl = len(self.specs), self.timeline
        n_steps, n_int, s = tl.n_steps, tl.n_intervals, tl.steps_per_interval
        times = study_times(cfg)
        self.load_kw = np.column_stack(
            [profiles.household_load_kw(e, times, seed=self.seed, index=int(i))
             for e, i in zip(arr["daily_load_kwh"], arr["index"], strict=True)]
        ).reshape(n_steps, n)
        orient = [profiles.pv_orientation(self.seed, int(i)) for i in arr["index"]]
        self.tilt_deg = np.array([o[0] for o in orient], dtype=float)
        self.azimuth_deg = np.array([o[1] for o in orient], dtype=float)
        if n and (arr["pv_kwp"] > 0).any():
            sky = profiles.sky_state(times, cfg.site)
            kt = profiles.clear_sky_index(times, cloudiness=cfg.prosumers.cloudiness, seed=self.seed)
            self.pv_kw = profiles.pv_ac_many_kw(
                arr["pv_kwp"], arr["inverter_kva"], self.tilt_deg, self.azimuth_deg, sky, kt
            )
        else:
            self.pv_kw = np.zeros((n_steps, n))
        load_mean = self.load_kw.reshape(n_int, s, n).mean(axis=1)
        pv_mean = self.pv_kw.reshape(n_int, s, n).mean(axis=1)
        sd = cfg.prosumers.forecast_error_pct / 100.0
        err = np.empty((n_int, n, 2))
        for j, i in enumerate(arr["index"]):
            err[:, j, :] = stream(self.seed, "forecast", int(i)).standard_normal((n_int, 2))
        self.load_forecast_kw = np.maximum(load_mean * (1.0 + sd * err[:, :, 0]), 0.0)
        self.pv_forecast_kw = np.maximum(pv_mean * (1.0 + sd * err[:, :, 1]), 0.0)
        self.battery_plan_kw = np.full((n_int, n), np.nan)
        self.forecast_net_kw = np.full((n_int, n), np.nan)
        self.battery_kw, self.soc_kwh, self.net_kw = (np.zeros((n_steps, n)) for _ in range(3))
        self._soc = INITIAL_SOC_FRACTION * self._capacity_kwh
        self._next_step = 0
        m = cfg.market
        self.keys = KeyRing.from_seed(self.seed, self.participants) if m.ledger else None
        self.adaptive = (
            AdaptiveBidders(cfg.prosumers.strategy, retail_usd_per_kwh=m.retail_usd_per_kwh,
                            feed_in_usd_per_kwh=m.feed_in_usd_per_kwh, seed=self.seed,
                            indices={s.participant: int(s.index) for s in self.specs})
            if cfg.prosumers.strategy in ADAPTIVE_STRATEGIES else None
        )

    def bids(self, k: int) -> list:
        dt_h = self.timeline.interval_h
        load, pv = self.load_forecast_kw[k], self.pv_forecast_kw[k]
        wanted = np.clip(pv - load, -self._battery_kw, self._battery_kw)
        plan = battery_limits_kw(wanted, self._soc, self._capacity_kwh, dt_h)
        net = load - pv + plan
        net = np.where(np.abs(net) * dt_h < MIN_ORDER_KWH, 0.0, net)
        self.battery_plan_kw[k], self.forecast_net_kw[k] = plan, net
        p, m = self.cfg.prosumers, self.cfg.market
        orders = []
        for j, spec in enumerate(self.specs):
            if net[j] == 0.0:
                continue
            side = "buy" if net[j] > 0 else "sell"
            if self.adaptive is not None:
                value = m.retail_usd_per_kwh if side == "buy" else m.feed_in_usd_per_kwh
                price = self.adaptive.price(k, spec.participant, side, value,
                                            energy_kwh=float(abs(net[j]) * dt_h))
            else:
                price = limit_price(p.strategy, side=side, retail_usd_per_kwh=m.retail_usd_per_kwh,
                                    feed_in_usd_per_kwh=m.feed_in_usd_per_kwh, seed=self.seed,
                                    index=spec.index, interval=k)
            from federates.common.messages import Order

            orders.append(Order(participant=spec.participant, side=side, interval=k,
                                energy_kwh=float(abs(net[j]) * dt_h), price_usd_per_kwh=price,
                                bus=spec.bus, phase=spec.phase))
        return [sign_order(self.keys, o) for o in orders] if self.keys is not None else orders

    def on_confirmations(self, k: int, confirmations: list) -> None:
        if self.adaptive is not None:
            self.adaptive.learn(k, list(confirmations))

    def step(self, g: int) -> np.ndarray:
        tl = self.timeline
        k, dt_h = tl.interval_of_step(g), tl.step_h
        b = battery_limits_kw(self.battery_plan_kw[k], self._soc, self._capacity_kwh, dt_h)
        self._soc = soc_after(self._soc, b, self._capacity_kwh, dt_h)
        net = self.load_kw[g] - self.pv_kw[g] + b
        self.battery_kw[g], self.soc_kwh[g], self.net_kw[g] = b, self._soc, net
        self._next_step = g + 1
        return net - self.forecast_net_kw[k]

    def tables(self) -> dict[str, pd.DataFrame]:
        tl = self.timeline
        pros = pd.DataFrame([asdict(s) for s in self.specs])
        pros["tilt_deg"], pros["azimuth_deg"] = self.tilt_deg, self.azimuth_deg
        n_run, n = self._next_step, len(self.specs)
        steps = np.arange(n_run)
        return {"prosumers": pros, "profiles": pd.DataFrame({
            "step": np.repeat(steps, n),
            "t_s": np.repeat(steps * tl.physics_step_s, n),
            "participant": np.tile(np.array(self.participants, dtype=object), n_run),
            "load_kw": self.load_kw[:n_run].ravel(),
            "pv_kw": self.pv_kw[:n_run].ravel(),
            "battery_kw": self.battery_kw[:n_run].ravel(),
            "soc_kwh": self.soc_kwh[:n_run].ravel(),
            "net_kw": self.net_kw[:n_run].ravel(),
            "forecast_net_kw": self.forecast_net_kw[steps // tl.steps_per_interval].ravel(),
        })}


def confirm(k: int, orders: list) -> list[Confirmation]:
    """Synthetic confirmations: sellers sold half their energy at 0.15 USD/kWh."""
    return [Confirmation(o.participant, k, 0.0, 0.0, 0.5 * o.energy_kwh if o.side == "sell" else 0.0,
                         0.0, 0.0, 0.15) for o in orders]


def drive(role, drain_every: int | None) -> tuple[list, np.ndarray, dict[str, pd.DataFrame]]:
    """Play ``role`` as the engines do (confirmations of k-1, bids(k), interval k's steps),
    draining every ``drain_every`` intervals (never if None); the orders, the deviations
    [kW] (steps, participants) and the tables: every drain plus the final ``tables()``."""
    tl = role.timeline
    orders, deviations, drained = [], [], []
    for k in range(tl.n_intervals):
        if k >= 1:
            role.on_confirmations(k - 1, confirm(k - 1, orders[-1]))
        orders.append(role.bids(k))
        deviations.extend(role.step(g) for g in tl.steps_of_interval(k))
        if drain_every is not None and (k + 1) % drain_every == 0:
            drained.append(role.drain_tables())
    drained.append(role.tables())
    tables = {name: pd.concat([d[name] for d in drained], ignore_index=True) for name in drained[0]}
    return orders, np.array(deviations), tables


CASES = {
    # 3 days, 1-min steps, 15-min market, batteries and clouds
    "3days": make_cfg(study={"duration": "72h"}, count=8, battery_share=0.5, cloudiness=0.4),
    # a start off the hour in a time zone that changes to DST in the study, 5-min market
    "dst": make_cfg(study={"duration": "48h", "start": "2026-03-07T20:13:00-05:00", "market_interval": "5min"},
                    site={"timezone": "America/New_York"}, count=5, battery_share=0.4, cloudiness=0.6),
    # adaptive bidders learning from confirmations, 15-min physics steps, 1-h market
    "zip": make_cfg(study={"duration": "72h", "physics_step": "15min", "market_interval": "1h"},
                    count=6, battery_share=0.5, cloudiness=0.3, strategy="zip"),
    # a single prosumer, overcast, no batteries
    "one": make_cfg(study={"duration": "36h"}, count=1, cloudiness=1.0, battery_share=0.0),
}


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple]:
    out = {}
    for name, cfg in CASES.items():
        n = cfg.prosumers.count
        out[name] = drive(WholeStudyRole(cfg, make_sites(n)), None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "block_intervals", "drain_every"),
    [(name, b, d) for name in CASES for b, d in ((None, 96), (7, 13), (10**6, None), (5, None))]
    + [("one", 1, 1), ("zip", 1, 1), ("3days", 2, 1)],
)
def test_role_equals_whole_study_generation_exactly(reference, name, block_intervals, drain_every):
    cfg = CASES[name]
    role = ProsumersRole(cfg, make_sites(cfg.prosumers.count), block_intervals=block_intervals)
    orders, deviations, tables = drive(role, drain_every)
    ref_orders, ref_deviations, ref_tables = reference[name]
    assert orders == ref_orders
    assert np.array_equal(deviations, ref_deviations)
    for table in ("prosumers", "profiles"):
        pd.testing.assert_frame_equal(tables[table], ref_tables[table], check_exact=True)


def test_default_block_is_one_day_and_one_block_for_the_default_day():
    role = ProsumersRole(make_cfg(count=2), make_sites(2))
    assert role.block_intervals == 96 == role.timeline.n_intervals


# ---- the generators, block by block ------------------------------------------------
@pytest.mark.parametrize(
    ("start", "tz", "n_steps", "step_s"),
    [
        ("2026-06-21T00:00:00-04:00", "America/Puerto_Rico", 3 * 1440, 60.0),
        ("2026-06-21T03:17:30-04:00", "America/Puerto_Rico", 2 * 1440 + 7, 60.0),  # steps across midnight
        ("2026-03-07T22:00:00-05:00", "America/New_York", 4000, 60.0),  # DST change
        ("2026-12-30T00:00:00-04:00", "America/Puerto_Rico", 4 * 96, 900.0),  # new year, 15-min steps
    ],
)
def test_load_blocks_equal_whole_study_per_household(start, tz, n_steps, step_s):
    times = pd.date_range(start, periods=n_steps, freq=pd.Timedelta(seconds=step_s)).tz_convert(tz)
    daily_kwh, idx = np.linspace(5.0, 30.0, 9), np.array([0, 3, 4, 11, 12, 57, 300, 301, 999])
    ref = np.column_stack(
        [profiles.household_load_kw(e, times, seed=5, index=int(i)) for e, i in zip(daily_kwh, idx, strict=True)]
    )
    assert np.array_equal(profiles.household_loads_kw(daily_kwh, times, seed=5, indices=idx), ref)
    for blocks in (mixed_split(n_steps), split(n_steps, 1440)):
        gen = profiles.LoadBlocks(daily_kwh, idx, start=times[0], step_s=step_s, n_steps=n_steps, seed=5)
        got = np.concatenate([gen.next(times[a:b]) for a, b in blocks])
        assert np.array_equal(got, ref)


def test_load_blocks_chunk_households_exactly():
    """More households than one vectorised chunk: the same numbers per household."""
    times = study_times(make_cfg(study={"duration": "2h"}))
    n = profiles._HOUSEHOLD_CHUNK + 3
    daily_kwh, idx = np.full(n, 12.0), np.arange(n)
    got = profiles.household_loads_kw(daily_kwh, times, seed=1, indices=idx)
    for j in (0, n - 4, n - 1):
        assert np.array_equal(got[:, j], profiles.household_load_kw(12.0, times, seed=1, index=j))


def test_rasterise_block_equals_rasterise():
    rng = np.random.default_rng(3)
    n = 500
    starts = np.concatenate([rng.uniform(0.0, n + 20, 300), [0.0, 7.0, 100.0, n - 1.0, float(n)]])
    ends = starts + np.concatenate([rng.lognormal(2.0, 1.5, 300), [3.0, 93.0, 0.5, 1.0, 2.0]])
    powers = rng.uniform(1.0, 3.0, len(starts))
    ref = profiles._rasterise(starts, ends, powers, n)
    for size in (1, 7, 100, n):
        sums = np.zeros((4, 1))
        cols = np.zeros(len(starts), dtype=np.int64)
        got = np.concatenate([
            profiles._rasterise_block(starts, ends, powers, cols, 1, a, b, n, sums)[:, 0]
            for a, b in split(n, size)
        ])
        assert np.array_equal(got, ref), size


@pytest.mark.parametrize("cloudiness", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("n_steps", "step"), [(3 * 1440 + 11, "60s"), (500, "900s"), (2000, "10s")])
def test_cloud_blocks_equal_whole_study(cloudiness, n_steps, step):
    times = pd.date_range("2026-06-21T00:00:00-04:00", periods=n_steps, freq=step)
    ref = profiles.clear_sky_index(times, cloudiness=cloudiness, seed=9)
    dt_s = pd.Timedelta(step).total_seconds()
    for blocks in (mixed_split(n_steps), split(n_steps, 1), split(n_steps, n_steps)):
        gen = profiles.CloudBlocks(cloudiness=cloudiness, step_s=dt_s, seed=9)
        got = np.concatenate([gen.next(b - a) for a, b in blocks])
        assert np.array_equal(got, ref)


def test_sky_state_and_pv_blocks_equal_whole_study():
    """Every sky and PV value depends on its own step only: across a new year (Linke
    turbidity interpolation, day of year), in one-step blocks too."""
    n_steps = 3 * 1440
    times = pd.date_range("2026-12-30T05:00:00-04:00", periods=n_steps, freq="60s").tz_convert("America/Puerto_Rico")
    sky = profiles.sky_state(times, SAN_JUAN)
    kt = profiles.clear_sky_index(times, cloudiness=0.5, seed=2)
    kwp, kva = np.array([3.0, 0.0, 9.0]), np.array([3.6, 5.0, 8.0])
    tilt, azim = np.array([12.0, 15.0, 19.0]), np.array([160.0, 180.0, 205.0])
    ref = profiles.pv_ac_many_kw(kwp, kva, tilt, azim, sky, kt)
    new_year = 43 * 60  # step of 2027-01-01 00:00 local
    singles = [(g, g + 1) for g in range(new_year - 5, new_year + 5)]
    for blocks in (split(n_steps, 97), [(0, new_year - 5), *singles, (new_year + 5, n_steps)]):
        parts = [profiles.sky_state(times[a:b], SAN_JUAN, step_s=60.0) for a, b in blocks]
        for field in ("zenith_deg", "azimuth_deg", "ghi", "dni", "dhi", "dni_extra", "temp_air_c"):
            assert np.array_equal(np.concatenate([getattr(p, field) for p in parts]), getattr(sky, field))
        got = np.concatenate([
            profiles.pv_ac_many_kw(kwp, kva, tilt, azim, p, kt[a:b]) for p, (a, b) in zip(parts, blocks, strict=True)
        ])
        assert np.array_equal(got, ref)


def test_generators_draw_sequentially():
    """Drawing a stream in chunks gives the numbers of one draw (the forecast errors and
    the load noise rely on it)."""
    whole = stream(1, "forecast", 7).standard_normal((100, 2))
    rng = stream(1, "forecast", 7)
    assert np.array_equal(np.concatenate([rng.standard_normal((k, 2)) for k in (1, 30, 69)]), whole)


def test_study_times_of_a_block_are_the_slice_of_the_whole():
    cfg = CASES["dst"]
    whole = study_times(cfg)
    assert whole.equals(study_times(cfg, 0))
    assert study_times(cfg, 1000, 77).equals(whole[1000:1077])


# ---- drains -------------------------------------------------------------------------
def test_drain_hands_over_rows_once_with_stable_dtypes():
    cfg = CASES["3days"]
    role = ProsumersRole(cfg, make_sites(8))
    tl = role.timeline
    role.bids(0)
    first = role.drain_tables()  # before any step: prosumers, no profiles rows
    assert len(first["prosumers"]) == 8 and len(first["profiles"]) == 0
    role.interval_deviations(0)
    role.bids(1)
    assert role.tables()["profiles"].step.max() == tl.steps_per_interval - 1  # tables() does not forget
    second = role.drain_tables()
    assert len(second["profiles"]) == 8 * tl.steps_per_interval
    assert len(second["prosumers"]) == 0
    assert list(second["prosumers"].columns) == list(first["prosumers"].columns)
    assert (second["prosumers"].dtypes == first["prosumers"].dtypes).all()
    assert (second["profiles"].dtypes == first["profiles"].dtypes).all()
    assert str(second["profiles"].participant.dtype) == str(first["profiles"].participant.dtype)
    empty = role.drain_tables()  # nothing new
    assert len(empty["profiles"]) == 0 and (empty["profiles"].dtypes == first["profiles"].dtypes).all()
    assert len(role.tables()["profiles"]) == 0


def held_bytes(role: ProsumersRole) -> int:
    blocks = sum(a.nbytes for b in role._held_blocks() for a in vars(b).values() if isinstance(a, np.ndarray))
    carry = sum(x.nbytes for c in role._loads._carry for x in c)
    return blocks + carry


def test_memory_held_does_not_grow_with_the_study():
    """Drained daily, the role holds one block (and a few carried events) on day 1 as on
    day 3; the interval just bid keeps its forecast after the drain, older ones are gone."""
    cfg = make_cfg(study={"duration": "96h"}, count=6, battery_share=0.5, cloudiness=0.4, strategy="roth_erev")
    role = ProsumersRole(cfg, make_sites(6))
    tl = role.timeline
    per_day = role.block_intervals
    held = []
    orders = []
    for k in range(tl.n_intervals):
        if k >= 1:
            role.on_confirmations(k - 1, confirm(k - 1, orders))
        orders = role.bids(k)
        role.interval_deviations(k)
        if (k + 1) % per_day == 0:
            role.drain_tables()
            assert len(role._held_blocks()) == 1
            assert np.array_equal(role.forecast_net_kw[k], role.forecast_net_kw[k])  # still there
            held.append(held_bytes(role))
        assert len(role.adaptive._pending) <= 1 and len(role.confirmations) <= 1
    assert len(held) == 4 and max(held) <= 1.05 * min(held)
    with pytest.raises(KeyError):
        role.forecast_net_kw[0]  # a drained, dropped block


def test_undrained_blocks_are_kept_for_tables():
    role = ProsumersRole(CASES["3days"], make_sites(8), block_intervals=10)
    for k in range(25):
        role.bids(k)
        role.interval_deviations(k)
    assert len(role._held_blocks()) == 3 and len(role.tables()["profiles"]) == 8 * 25 * 15
    role.drain_tables()
    role.bids(25)
    assert len(role._held_blocks()) == 1
    assert role.forecast_net_kw[25].shape == (8,)


def test_step_of_a_new_block_before_its_bids_is_refused():
    role = ProsumersRole(CASES["3days"], make_sites(8), block_intervals=1)
    role.bids(0)
    role.interval_deviations(0)
    with pytest.raises(RuntimeError, match="before bids"):
        role.step(15)


def test_pv_in_chunks_of_systems_equals_each_system_alone():
    times = pd.date_range("2026-06-21T00:00:00-04:00", periods=96, freq="900s")
    sky = profiles.sky_state(times, SAN_JUAN)
    kt = profiles.clear_sky_index(times, cloudiness=0.5, seed=4)
    m = 2 * profiles._PV_SYSTEM_CHUNK + 5
    rng = np.random.default_rng(0)
    kwp = np.where(np.arange(m) % 4 == 0, 0.0, rng.uniform(3.0, 14.0, m))
    kva, tilt, azim = 1.2 * kwp, rng.uniform(10.0, 20.0, m), rng.uniform(150.0, 210.0, m)
    many = profiles.pv_ac_many_kw(kwp, kva, tilt, azim, sky, kt)
    for j in (0, 1, profiles._PV_SYSTEM_CHUNK + 7, m - 1):
        one = profiles.pv_ac_many_kw(kwp[[j]], kva[[j]], tilt[[j]], azim[[j]], sky, kt)[:, 0]
        assert np.array_equal(many[:, j], one)
    assert (many[:, kwp == 0] == 0).all() and many.max() > 0
