"""The meters role: the customers' revenue meters and the utility's AMI head-end.

One smart meter per customer (meter id = participant id), in ``sites`` order. The
same object is driven by the meters federate and by the in-process engine; its
results depend only on the calls it receives:

* ``record_interval(k, ...)`` once after the last step of market interval ``k``, with
  the final solve of every step of ``k`` at the customer points (the feeder's
  ``meter_block``); ``record_step`` does the same for one step;
* ``report(k)`` and ``ami(k)`` once after ``k`` was recorded;
* ``tables()`` at the end.

Two data paths leave the meters:

* interval energy, ``report``: what the market settles on, the metered energy of the
  interval (true power held over each step), or, with ``meters.settle_on_ami``, the
  advance of the meters' AMI import register minus that of the export register over
  the interval;
* AMI data, ``ami``: what the DSO receives, one interval reading per meter and
  reporting period, with the meters' accuracy errors, register resolution and missing
  readings (federates/meters/ami.py documents the model).

The inverters act on their own local sensing (``meters.noise_pct``, applied in
:mod:`federates.feeder.inverters`), not on these meters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from federates.common.comms import CommsLink
from federates.common.config import StudyFile
from federates.common.conservation import ENERGY_TOLERANCE_KWH, SOLUTION_TOLERANCE, Conservation
from federates.common.grid import CustomerSite
from federates.common.messages import AmiReading, IntervalEnergy
from federates.common.tables import chunk_intervals
from federates.meters.ami import DEFAULT_V_BASE_V, AmiBatch, AmiMeters, AmiSpec
from federates.meters.meter import MeterRegister

if TYPE_CHECKING:
    from federates.common.study import Study


class MetersRole:
    """Smart meters of all customers of one study."""

    @classmethod
    def from_study(cls, study: Study) -> MetersRole:
        """The meters of every customer of the study, each on its nominal voltage."""
        return cls(study.cfg, study.sites, v_base_v=study.v_base_v)

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite], *,
                 v_base_v: Sequence[float] | np.ndarray | None = None, ami_errors: bool = True):
        """``v_base_v``: each meter's nominal voltage [V] (``sites`` order), the base of
        its ``v_pu``; default 240 V for all. ``ami_errors=False`` makes the AMI meters
        error-free instruments (register resolution and missing readings still apply),
        to check or isolate the effect of the accuracy errors."""
        self.cfg = cfg
        self.timeline = cfg.timeline
        self.seed = cfg.study.seed
        self.comms = CommsLink.of(cfg.comms)
        self.settle_on_ami = bool(cfg.meters.settle_on_ami)
        self.meter_ids: list[str] = [s.participant for s in sites]
        self.n = len(self.meter_ids)
        tl = self.timeline
        self.register = MeterRegister(tl.n_steps, self.n, tl.steps_per_interval, tl.step_h,
                                      capacity=chunk_intervals(tl, self.n) * tl.steps_per_interval)
        base = np.full(self.n, DEFAULT_V_BASE_V) if v_base_v is None else self._vector("v_base_v", v_base_v)
        self.ami_meters = AmiMeters(AmiSpec.from_config(cfg.meters, errors=ami_errors), tl, self.seed, base)
        self._ami: dict[int, AmiBatch] = {}  # readings of each interval ami() was called for, not drained
        self._emitted_to = 0  # steps before it are in drained `meters` rows
        self._last_ami = -1  # the last interval ami() / report() was called for
        self._last_report = -1
        self.books = Conservation("meters", cfg.feeder.conservation)  # the live energy check

    def _vector(self, name: str, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.shape != (self.n,):
            raise ValueError(f"{name} has shape {a.shape}; expected ({self.n},), one per customer")
        return a

    def record_step(self, g: int, v_pu: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray) -> None:
        """The final solve of physics step ``g`` at every meter: ``v_pu`` [pu], ``p_kw``
        [kW, + import], ``q_kvar`` [kvar, + drawn], in ``sites`` order (a later call for
        the same step overwrites)."""
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")
        self.register.record(g, self._vector("v_pu", v_pu), self._vector("p_kw", p_kw),
                             self._vector("q_kvar", q_kvar))

    def record_interval(self, k: int, v_pu: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray,
                        delivered_kwh: np.ndarray | None = None) -> None:
        """The final solve of every step of interval ``k``: arrays (steps of the
        interval, meters) of ``v_pu`` [pu], ``p_kw`` [kW], ``q_kvar`` [kvar].

        ``delivered_kwh`` [kWh] (one per meter): the feeder's own integral of the power
        OpenDSS delivered to each customer (``FeederRole.meter_block``); when given, each
        meter's interval energy is checked against it (the live energy check,
        federates.common.conservation)."""
        self._check_interval(k)
        steps = self.timeline.steps_of_interval(k)
        shape = (len(steps), self.n)
        for name, a in (("v_pu", v_pu), ("p_kw", p_kw), ("q_kvar", q_kvar)):
            if np.shape(a) != shape:
                raise ValueError(f"{name} of interval {k} has shape {np.shape(a)}; expected {shape}")
        for j, g in enumerate(steps):
            self.register.record(g, np.asarray(v_pu[j], dtype=float), np.asarray(p_kw[j], dtype=float),
                                 np.asarray(q_kvar[j], dtype=float))
        if delivered_kwh is not None:
            self._check_energy(k, self._vector("delivered_kwh", delivered_kwh))

    def _check_energy(self, k: int, delivered_kwh: np.ndarray) -> None:
        """Each meter's energy of interval ``k`` (its true register: what settlement
        uses unless ``meters.settle_on_ami``, whose AMI registers carry the meters'
        accuracy errors by design) = the energy the feeder delivered [kWh]."""
        metered_kwh = self.register.energy_kwh(k)
        steps = self.timeline.steps_of_interval(k)
        s_kva = np.hypot(self.register.rows("p_kw", steps.start, steps.stop),
                         self.register.rows("q_kvar", steps.start, steps.stop))
        gross_kvah = (s_kva * self.timeline.step_h).sum(axis=0)
        tol_kwh = ENERGY_TOLERANCE_KWH + SOLUTION_TOLERANCE * gross_kvah
        err = np.abs(metered_kwh - delivered_kwh)
        bad = np.flatnonzero(~(err <= tol_kwh))  # NaN breaks the check
        self.books.n_checked += len(err) - len(bad)
        for i in bad:
            self.books.check("energy", interval=k, subject=self.meter_ids[i], expected=float(delivered_kwh[i]),
                             actual=float(metered_kwh[i]), error=float(err[i]), tolerance=float(tol_kwh[i]),
                             unit="kWh", detail=("metered energy vs the energy OpenDSS delivered to the customer "
                                                 f"(apparent energy {gross_kvah[i]:.6g} kVAh)"))

    def _check_interval(self, k: int) -> None:
        if not 0 <= k < self.timeline.n_intervals:
            raise ValueError(f"interval {k} is outside the study (0..{self.timeline.n_intervals - 1})")

    def report(self, k: int) -> list[IntervalEnergy]:
        """Net energy [kWh, + import] of interval ``k`` per meter.

        From the final readings, or with ``meters.settle_on_ami`` from the AMI
        registers (import advance minus export advance over the interval).
        """
        self._check_interval(k)
        if self.settle_on_ami:
            steps = self.timeline.steps_of_interval(k)
            e_imp, e_exp = self.ami_meters.energy_kwh(self.register, steps.start, steps.stop)
            energy_kwh = e_imp - e_exp
        else:
            energy_kwh = self.register.energy_kwh(k)
        self._last_report = max(self._last_report, k)
        self._forget()
        return [IntervalEnergy(meter=m, interval=k, energy_kwh=float(energy_kwh[i]))
                for i, m in enumerate(self.meter_ids)]

    def report_sent(self, k: int) -> list[IntervalEnergy]:
        """What leaves the meters for the market about interval ``k``: :meth:`report`
        less the readings the comms layer loses (:class:`CommsLink`)."""
        energies = self.report(k)
        kept = self.comms.kept(self.seed, "interval_energy", k, [e.meter for e in energies])
        return [e for e, ok in zip(energies, kept, strict=True) if ok]

    def _forget(self) -> None:
        """Carry the AMI registers past what no later reading or settlement asks for, and
        drop the register rows no table, reading or settlement needs any more."""
        tl, pp = self.timeline, self.ami_meters.steps_per_period
        # the next readings start at the period holding the first step of the next interval
        need = (self._last_ami + 1) * tl.steps_per_interval // pp * pp
        if self.settle_on_ami:  # the next settlement starts at the next interval
            need = min(need, (self._last_report + 1) * tl.steps_per_interval)
        self.ami_meters.carry(self.register, need)
        self.register.drop_before(min(self.ami_meters.reg_at, self._emitted_to))

    def ami(self, k: int) -> list[AmiReading]:
        """The AMI readings delivered in market interval ``k``: for every meter and every
        reporting period ending in ``(k*M, (k+1)*M]`` one reading, unless it went
        missing. Call once after the last step of ``k``; ordered by period, then meter.
        """
        self._check_interval(k)
        b = self.ami_meters.readings(self.register, k)
        self._ami[k] = b
        self._last_ami = max(self._last_ami, k)
        self._forget()
        out = []
        for r in range(len(b.periods)):
            t0, t1 = float(b.t_start_s[r]), float(b.t_end_s[r])
            for i in np.flatnonzero(b.delivered[r]):
                out.append(AmiReading(
                    meter=self.meter_ids[i], t_start_s=t0, t_end_s=t1, v_pu=float(b.v_pu[r, i]),
                    p_kw=float(b.p_kw[r, i]), q_kvar=float(b.q_kvar[r, i]),
                    energy_import_kwh=float(b.energy_import_kwh[r, i]),
                    energy_export_kwh=float(b.energy_export_kwh[r, i])))
        return out

    def _ami_table(self) -> pd.DataFrame:
        n = self.n
        batches = [(k, self._ami[k]) for k in sorted(self._ami)]
        rows = [len(b.periods) * n for _, b in batches]

        def cat(f, dtype=float) -> np.ndarray:
            parts = [f(k, b) for k, b in batches]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return pd.DataFrame({
            "interval": cat(lambda k, b: np.full(len(b.periods) * n, k), np.int64),
            "meter": np.tile(np.asarray(self.meter_ids, dtype=object), sum(rows) // n if n else 0),
            "t_start_s": cat(lambda k, b: np.repeat(b.t_start_s, n)),
            "t_end_s": cat(lambda k, b: np.repeat(b.t_end_s, n)),
            "v_pu": cat(lambda k, b: b.v_pu.ravel()),
            "p_kw": cat(lambda k, b: b.p_kw.ravel()),
            "q_kvar": cat(lambda k, b: b.q_kvar.ravel()),
            "energy_import_kwh": cat(lambda k, b: b.energy_import_kwh.ravel()),
            "energy_export_kwh": cat(lambda k, b: b.energy_export_kwh.ravel()),
            "delivered": cat(lambda k, b: b.delivered.ravel(), bool),
        }).astype({"meter": str})

    def drain_tables(self) -> dict[str, pd.DataFrame]:
        """:meth:`tables`, then forgotten (federates.common.tables)."""
        out = self.tables()
        steps = self.register.written_steps(self._emitted_to)
        self._ami = {}
        self.books.forget()
        if len(steps):
            self._emitted_to = int(steps[-1]) + 1
        self.register.drop_before(min(self.ami_meters.reg_at, self._emitted_to))
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """``meters``: the final solve of every step recorded since the last drain, one
        row per step per meter.

        Columns: step, t_s [s], meter, v_pu [pu], p_kw [kW], q_kvar [kvar].

        ``ami``: every AMI reading of the intervals ``ami`` was called for, one row per
        reporting period per meter, delivered or not. Columns: interval (the market
        interval it was delivered in), meter, t_start_s, t_end_s [s], v_pu [pu], p_kw
        [kW], q_kvar [kvar], energy_import_kwh, energy_export_kwh [kWh], delivered
        (False: the reading went missing; its values are NaN).
        """
        reg = self.register
        steps = reg.written_steps(self._emitted_to)
        n = self.n
        return {
            **self.books.table(),
            "ami": self._ami_table(),
            "meters": pd.DataFrame({
                "step": np.repeat(steps, n).astype(np.int64),
                "t_s": np.repeat(steps * self.timeline.physics_step_s, n).astype(float),
                "meter": np.tile(np.asarray(self.meter_ids, dtype=object), len(steps)),
                "v_pu": reg.take("v_pu", steps).ravel(),
                "p_kw": reg.take("p_kw", steps).ravel(),
                "q_kvar": reg.take("q_kvar", steps).ravel(),
            }).astype({"meter": str})
        }
