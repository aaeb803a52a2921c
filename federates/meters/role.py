"""The meters role: reads every customer point, reports interval energy.

One smart meter per customer (meter id = participant id), in ``sites`` order. The
same object is driven by the meters federate and by the in-process engine; its
results depend only on the calls it receives:

* ``read(g, ...)`` once per feeder solve of physics step ``g`` (several times per
  step while the controllers iterate; the last read of a step is the one that
  counts, earlier ones are overwritten);
* ``report(k)`` once after the last step of market interval ``k``;
* ``ami(k)`` once after the last step of market interval ``k``;
* ``tables()`` at the end.

Two data paths leave the meters:

* local sensing, ``read``: what the inverters' Volt-VAR / Volt-Watt act on, the
  true local values unless ``meters.noise_pct`` > 0 (below);
* AMI data, ``ami``: what the DSO and billing receive, one interval reading per
  meter and reporting period, with the meters' accuracy errors, register
  resolution and missing readings (federates/meters/ami.py documents the model).
  It is computed from the *true* final per-step values, not from the noisy local
  readings.

``report(k)`` is the interval energy the market settles on: the (local) final
readings' energy as before, or, with ``meters.settle_on_ami``, the advance of the
meters' AMI import register minus that of the export register over the interval.

Measurement noise, if ``cfg.meters.noise_pct > 0``, is drawn from
``rng.stream(seed, "meter", g, call_no)`` with ``call_no`` the number of earlier
reads of step ``g``; it applies to v, p and q independently, and the energy
register meters the *measured* power (as a real meter would).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from federates.common.grid import CustomerSite
from federates.common.messages import AmiReading, IntervalEnergy, MeterReading
from federates.common.rng import stream
from federates.meters.ami import DEFAULT_V_BASE_V, AmiBatch, AmiMeters, AmiSpec
from federates.meters.meter import MeterRegister, measure
from runner.config import StudyFile


class MetersRole:
    """Smart meters of all customers of one study."""

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite], *,
                 v_base_v: Sequence[float] | np.ndarray | None = None, ami_errors: bool = True):
        """``v_base_v``: each meter's nominal voltage [V] (``sites`` order), the base of
        its ``v_pu``; default 240 V for all. ``ami_errors=False`` makes the AMI meters
        error-free instruments (register resolution and missing readings still apply),
        to check or isolate the effect of the accuracy errors."""
        self.cfg = cfg
        self.timeline = cfg.timeline
        self.seed = cfg.study.seed
        self.noise_pct = float(cfg.meters.noise_pct)
        self.settle_on_ami = bool(cfg.meters.settle_on_ami)
        self.meter_ids: list[str] = [s.participant for s in sites]
        self.n = len(self.meter_ids)
        tl = self.timeline
        self.register = MeterRegister(tl.n_steps, self.n, tl.steps_per_interval, tl.step_h)
        self.truth = MeterRegister(tl.n_steps, self.n, tl.steps_per_interval, tl.step_h)
        self._calls = np.zeros(tl.n_steps, dtype=np.int64)  # reads so far per step
        base = np.full(self.n, DEFAULT_V_BASE_V) if v_base_v is None else self._vector("v_base_v", v_base_v)
        self.ami_meters = AmiMeters(AmiSpec.from_config(cfg.meters, errors=ami_errors), tl, self.seed, base)
        self._ami: dict[int, AmiBatch] = {}  # readings of each interval ami() was called for

    def _vector(self, name: str, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.shape != (self.n,):
            raise ValueError(f"{name} has shape {a.shape}; expected ({self.n},), one per customer")
        return a

    def read(self, g: int, v_pu: np.ndarray, p_kw: np.ndarray,
             q_kvar: np.ndarray) -> list[MeterReading]:
        """One reading per customer of the feeder solution at step ``g``.

        ``v_pu`` [pu], ``p_kw`` [kW, + import], ``q_kvar`` [kvar, + drawn] per customer
        in ``sites`` order. Each reading's ``energy_kwh`` [kWh] is the net energy of the
        current market interval up to and including this step.
        """
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")
        true = np.stack([self._vector("v_pu", v_pu), self._vector("p_kw", p_kw),
                         self._vector("q_kvar", q_kvar)])
        call_no = int(self._calls[g])
        self._calls[g] += 1
        if self.noise_pct > 0.0:
            measured = measure(true, self.noise_pct, stream(self.seed, "meter", g, call_no))
        else:
            measured = true
        v_m, p_m, q_m = measured
        self.truth.record(g, *true)
        self.register.record(g, v_m, p_m, q_m)
        k = self.timeline.interval_of_step(g)
        energy_kwh = self.register.energy_kwh(k, last_step=g)
        t_s = self.timeline.step_t_s(g)
        return [
            MeterReading(meter=m, t_s=t_s, v_pu=float(v_m[i]), p_kw=float(p_m[i]),
                         q_kvar=float(q_m[i]), energy_kwh=float(energy_kwh[i]))
            for i, m in enumerate(self.meter_ids)
        ]

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
            e_imp, e_exp = self.ami_meters.energy_kwh(self.truth, steps.start, steps.stop)
            energy_kwh = e_imp - e_exp
        else:
            energy_kwh = self.register.energy_kwh(k)
        return [IntervalEnergy(meter=m, interval=k, energy_kwh=float(energy_kwh[i]))
                for i, m in enumerate(self.meter_ids)]

    def ami(self, k: int) -> list[AmiReading]:
        """The AMI readings delivered in market interval ``k``: for every meter and every
        reporting period ending in ``(k*M, (k+1)*M]`` one reading, unless it went
        missing. Call once after the last step of ``k``; ordered by period, then meter.
        """
        self._check_interval(k)
        b = self.ami_meters.readings(self.truth, k)
        self._ami[k] = b
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

    def tables(self) -> dict[str, pd.DataFrame]:
        """``meters``: the final reading of every step read, one row per step per meter.

        Columns: step, t_s [s], meter, v_pu [pu], p_kw [kW], q_kvar [kvar].

        ``ami``: every AMI reading of the intervals ``ami`` was called for, one row per
        reporting period per meter, delivered or not. Columns: interval (the market
        interval it was delivered in), meter, t_start_s, t_end_s [s], v_pu [pu], p_kw
        [kW], q_kvar [kvar], energy_import_kwh, energy_export_kwh [kWh], delivered
        (False: the reading went missing; its values are NaN).
        """
        reg = self.register
        steps = np.flatnonzero(reg.written)
        n = self.n
        return {
            "ami": self._ami_table(),
            "meters": pd.DataFrame({
                "step": np.repeat(steps, n).astype(np.int64),
                "t_s": np.repeat(steps * self.timeline.physics_step_s, n).astype(float),
                "meter": np.tile(np.asarray(self.meter_ids, dtype=object), len(steps)),
                "v_pu": reg.v_pu[steps].ravel(),
                "p_kw": reg.p_kw[steps].ravel(),
                "q_kvar": reg.q_kvar[steps].ravel(),
            }).astype({"meter": str})
        }
