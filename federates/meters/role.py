"""The meters role: reads every customer point, reports interval energy.

One smart meter per customer (meter id = participant id), in ``sites`` order. The
same object is driven by the meters federate and by the in-process engine; its
results depend only on the calls it receives:

* ``read(g, ...)`` once per feeder solve of physics step ``g`` (several times per
  step while the controllers iterate; the last read of a step is the one that
  counts, earlier ones are overwritten);
* ``report(k)`` once after the last step of market interval ``k``;
* ``tables()`` at the end.

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
from federates.common.messages import IntervalEnergy, MeterReading
from federates.common.rng import stream
from federates.meters.meter import MeterRegister, measure
from runner.config import StudyFile


class MetersRole:
    """Smart meters of all customers of one study."""

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite]):
        self.cfg = cfg
        self.timeline = cfg.timeline
        self.seed = cfg.study.seed
        self.noise_pct = float(cfg.meters.noise_pct)
        self.meter_ids: list[str] = [s.participant for s in sites]
        self.n = len(self.meter_ids)
        tl = self.timeline
        self.register = MeterRegister(tl.n_steps, self.n, tl.steps_per_interval, tl.step_h)
        self._calls = np.zeros(tl.n_steps, dtype=np.int64)  # reads so far per step

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
        self.register.record(g, v_m, p_m, q_m)
        k = self.timeline.interval_of_step(g)
        energy_kwh = self.register.energy_kwh(k, last_step=g)
        t_s = self.timeline.step_t_s(g)
        return [
            MeterReading(meter=m, t_s=t_s, v_pu=float(v_m[i]), p_kw=float(p_m[i]),
                         q_kvar=float(q_m[i]), energy_kwh=float(energy_kwh[i]))
            for i, m in enumerate(self.meter_ids)
        ]

    def report(self, k: int) -> list[IntervalEnergy]:
        """Net energy [kWh, + import] of interval ``k`` per meter, from the final readings."""
        if not 0 <= k < self.timeline.n_intervals:
            raise ValueError(f"interval {k} is outside the study (0..{self.timeline.n_intervals - 1})")
        energy_kwh = self.register.energy_kwh(k)
        return [IntervalEnergy(meter=m, interval=k, energy_kwh=float(energy_kwh[i]))
                for i, m in enumerate(self.meter_ids)]

    def tables(self) -> dict[str, pd.DataFrame]:
        """``meters``: the final reading of every step read, one row per step per meter.

        Columns: step, t_s [s], meter, v_pu [pu], p_kw [kW], q_kvar [kvar].
        """
        reg = self.register
        steps = np.flatnonzero(reg.written)
        n = self.n
        return {
            "meters": pd.DataFrame({
                "step": np.repeat(steps, n).astype(np.int64),
                "t_s": np.repeat(steps * self.timeline.physics_step_s, n).astype(float),
                "meter": np.tile(np.asarray(self.meter_ids, dtype=object), len(steps)),
                "v_pu": reg.v_pu[steps].ravel(),
                "p_kw": reg.p_kw[steps].ravel(),
                "q_kvar": reg.q_kvar[steps].ravel(),
            }).astype({"meter": str})
        }
