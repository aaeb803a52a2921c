"""AMI interval data: what the utility's head-end receives from the smart meters.

The inverters act on *local* sensing (``MetersRole.read``, the true values unless
``meters.noise_pct`` > 0). The DSO and billing see only AMI data, computed here from
the true final per-step values of the feeder (``MeterRegister`` rows; steps never
read count as zero power and are left out of the voltage average).

Reporting periods
    Period ``j`` covers study time ``[j*R, (j+1)*R)``, ``R`` = ``meters.reporting_interval``,
    a whole number of physics steps that divides or is a multiple of the market
    interval. A reading is delivered in the market interval in which its period ends
    (``MetersRole.ami(k)``); a period that would end after the study is never read.

Energy registers and accuracy (per meter ``i``, class ``c`` [%])
    Every step's true import ``max(p, 0) * dt`` and export ``max(-p, 0) * dt`` [kWh]
    advance two cumulative registers, each scaled by ``1 + (g_i + e_ij)/100``:

    * ``g_i`` ~ U(-c/2, +c/2) [%], the meter's fixed gain error, drawn once
      (``rng.stream(seed, "ami_gain")``): an in-service meter typically uses about half
      of its class limit;
    * ``e_ij`` ~ N(0, (c/3)^2) [%], the random error of reading ``j``, drawn
      independently for the import and export registers and the reactive power
      (``rng.stream(seed, "ami_error", j)``).

    The class is the active-energy accuracy class of IEC 62053-21 (classes 1, 2;
    +-c % over the rated current range at unity power factor), IEC 62053-22 (0.2 S,
    0.5 S) or ANSI C12.20 (0.2, 0.5). The split into a fixed half-class gain and a
    class/3 random part is this model's assumption, not a requirement of the
    standards; a reading's total error can exceed the class limit (the standards also
    allow more at low currents, e.g. +-1.5 % below 0.1 I_b for class 1). There is no
    creep: zero true energy meters as zero. The reactive power uses the same gain and
    class (a varh element of the same quality; IEC 62053-23/-24 would set its own).

    A register display truncates: the delivered energies are differences of the
    cumulative registers truncated *down* to ``energy_resolution_kwh``, so the
    remainder carries over and the sum of delivered energies never drifts from the
    (measured) register by a resolution step or more. 0 = no truncation.

Averages
    ``p_kw`` = (measured import - measured export) / period, before truncation (a
    demand register has its own, finer resolution); ``q_kvar`` = the true average times
    ``1 + (g_i + e_q)/100``; ``v_pu`` = the mean of the true per-step voltages of the
    period plus ``(b_i + e_v)/100`` pu, with ``b_i`` ~ U(-a/2, a/2) and ``e_v`` ~
    N(0, (a/3)^2), ``a`` = ``meters.v_accuracy_pct`` [% of nominal] (IEC 61000-4-30
    Class S instruments: +-0.5 % of the declared voltage), rounded to
    ``v_resolution_v`` [V] of the meter's nominal voltage ``v_base_v``.

Missing readings
    Each reading is independently not delivered with probability ``missing_rate``
    (``rng.stream(seed, "ami_missing", k, j)``, ``k`` the delivering interval). The
    meter keeps counting: the registers, and a settlement on them, lose no energy.

Settlement (``meters.settle_on_ami``)
    Interval energy = the advance of the truncated import register over the market
    interval minus that of the export register: the meter's measured energy, read at
    the interval boundaries (a settlement channel, independent of delivery).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from federates.common.rng import stream
from federates.common.timeline import Timeline
from federates.meters.meter import MeterRegister

if TYPE_CHECKING:
    from federates.common.config import MetersConfig

ACCURACY_CLASS_PCT: dict[str, float] = {"0.2": 0.2, "0.5": 0.5, "1": 1.0, "2": 2.0}
DEFAULT_V_BASE_V = 240.0
_FLOOR_REL_TOL = 1e-12  # a register at k*res - 1 ulp still shows k*res


@dataclass(frozen=True)
class AmiSpec:
    """The AMI parameters as plain numbers (``class_pct`` 0 = an error-free meter)."""

    reporting_interval_s: float = 900.0
    class_pct: float = 0.5
    v_accuracy_pct: float = 0.5
    v_resolution_v: float = 0.1
    energy_resolution_kwh: float = 0.001
    missing_rate: float = 0.0

    @classmethod
    def from_config(cls, meters: MetersConfig, errors: bool = True) -> AmiSpec:
        """The spec of a ``MetersConfig``; ``errors=False`` zeroes the accuracy errors."""
        return cls(
            reporting_interval_s=float(meters.reporting_interval_s),
            class_pct=ACCURACY_CLASS_PCT[meters.accuracy_class] if errors else 0.0,
            v_accuracy_pct=float(meters.v_accuracy_pct) if errors else 0.0,
            v_resolution_v=float(meters.v_resolution_v),
            energy_resolution_kwh=float(meters.energy_resolution_kwh),
            missing_rate=float(meters.missing_rate),
        )


@dataclass(frozen=True)
class AmiBatch:
    """The readings of reporting periods ``periods`` (rows) for every meter (columns).

    Values of readings not delivered are NaN in every array except ``delivered``.
    """

    periods: np.ndarray  # (P,) period indices
    t_start_s: np.ndarray  # (P,)
    t_end_s: np.ndarray  # (P,)
    v_pu: np.ndarray  # (P, n)
    p_kw: np.ndarray
    q_kvar: np.ndarray
    energy_import_kwh: np.ndarray
    energy_export_kwh: np.ndarray
    delivered: np.ndarray  # (P, n) bool


def _truncate(register_kwh: np.ndarray, resolution: float) -> np.ndarray:
    """Register counts shown by a display of ``resolution`` [kWh] (whole counts, floats)."""
    return np.floor(register_kwh / resolution * (1.0 + _FLOOR_REL_TOL))


class AmiMeters:
    """AMI readings of ``n`` meters from a register of true per-step values."""

    def __init__(self, spec: AmiSpec, timeline: Timeline, seed: int, v_base_v: np.ndarray):
        self.spec = spec
        self.timeline = timeline
        self.seed = int(seed)
        self.v_base_v = np.asarray(v_base_v, dtype=float)
        if self.v_base_v.ndim != 1 or not np.all(self.v_base_v > 0):
            raise ValueError("v_base_v must be one positive nominal voltage [V] per meter")
        self.n = len(self.v_base_v)
        ratio = spec.reporting_interval_s / timeline.physics_step_s
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(f"reporting interval {spec.reporting_interval_s:g} s is not a whole "
                             f"number of physics steps ({timeline.physics_step_s:g} s)")
        self.steps_per_period = round(ratio)
        s, p = timeline.steps_per_interval, self.steps_per_period
        if s % p != 0 and p % s != 0:
            raise ValueError(f"reporting interval {spec.reporting_interval_s:g} s neither divides nor "
                             f"is a multiple of the market interval {timeline.market_interval_s:g} s")
        self.n_periods = timeline.n_steps // p  # whole periods inside the study
        c, a = spec.class_pct, spec.v_accuracy_pct
        u = stream(self.seed, "ami_gain").uniform(-1.0, 1.0, size=(2, self.n))
        self.gain_pct = u[0] * c / 2.0  # fixed energy gain error per meter [%]
        self.v_offset_pct = u[1] * a / 2.0  # fixed voltage error per meter [% of nominal]
        self._sigma = np.array([c, c, c, a])[:, None] / 3.0
        self._errors: dict[int, np.ndarray] = {}
        # the measured cumulative import / export registers [kWh] at step boundary _reg_at
        self._reg_at = 0
        self._reg = (np.zeros(self.n), np.zeros(self.n))

    # --- random errors ---------------------------------------------------------
    def errors_pct(self, j: int) -> np.ndarray:
        """Random errors [%] of reading ``j``: rows import, export, q, v (one column per meter)."""
        e = self._errors.get(j)
        if e is None:
            e = stream(self.seed, "ami_error", j).standard_normal((4, self.n)) * self._sigma
            self._errors[j] = e
        return e

    def delivered(self, k: int, j: int) -> np.ndarray:
        """Which meters' reading ``j`` (delivered in interval ``k``) reaches the head-end."""
        rate = self.spec.missing_rate
        if rate <= 0.0:
            return np.ones(self.n, dtype=bool)
        return stream(self.seed, "ami_missing", k, j).random(self.n) >= rate

    # --- registers ---------------------------------------------------------------
    def periods_of_interval(self, k: int) -> range:
        """Reporting periods ending inside market interval ``k``, i.e. in ``(k*M, (k+1)*M]``."""
        s, p = self.timeline.steps_per_interval, self.steps_per_period
        return range(min(k * s // p, self.n_periods), min((k + 1) * s // p, self.n_periods))

    def _step_energy(self, truth: MeterRegister, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Measured import and export [kWh] of steps ``start`` .. ``stop - 1`` (rows), per meter."""
        p_kw = truth.rows("p_kw", start, stop)
        imp = np.maximum(p_kw, 0.0) * truth.step_h
        exp = np.maximum(-p_kw, 0.0) * truth.step_h
        if self.spec.class_pct == 0.0:
            return imp, exp
        pp = self.steps_per_period
        periods = np.arange(start, stop) // pp
        first = start // pp
        e = np.stack([self.errors_pct(j)[:2] for j in range(first, -(-stop // pp))]) if stop > start \
            else np.zeros((0, 2, self.n))
        e = e[periods - first]  # (steps, 2, n)
        imp = imp * (1.0 + (self.gain_pct + e[:, 0]) / 100.0)
        exp = exp * (1.0 + (self.gain_pct + e[:, 1]) / 100.0)
        return imp, exp

    def _registers(self, truth: MeterRegister, bounds: list[int]):
        """Per-step measured energies from the carried registers' step (:attr:`reg_at`)
        up to ``bounds[-1]`` (rows from ``reg_at``) and the cumulative registers at
        ``bounds``: sums from step 0 in step order (carried from ``reg_at``), so a
        boundary's value does not depend on the other boundaries asked for."""
        a = self._reg_at
        if bounds[0] < a:
            raise ValueError(f"registers at step {bounds[0]} were carried past already (now at step {a})")
        steps = self._step_energy(truth, a, bounds[-1])
        at = [b - a for b in bounds]
        regs = [np.cumsum(np.concatenate([carried[None, :], x]), axis=0)[at]
                for x, carried in zip(steps, self._reg, strict=True)]
        return steps, regs

    def _between(self, truth: MeterRegister, bounds: list[int]):
        """:meth:`_registers` and the delivered energies between consecutive ``bounds``."""
        steps, regs = self._registers(truth, bounds)
        res = self.spec.energy_resolution_kwh
        at = [b - self._reg_at for b in bounds]
        if res > 0.0:
            advances = [np.diff(_truncate(reg, res), axis=0) * res for reg in regs]
        else:
            advances = [np.stack([x[i:j].sum(axis=0) for i, j in pairwise(at)]) for x in steps]
        return steps, regs, advances

    @property
    def reg_at(self) -> int:
        """The step boundary the cumulative registers are carried at (earlier steps are
        not needed any more)."""
        return self._reg_at

    def carry(self, truth: MeterRegister, g: int) -> None:
        """Carry the cumulative registers to step boundary ``g`` (>= :attr:`reg_at`):
        later readings and settlements only ask for boundaries from ``g`` on, so the
        register rows and the random errors before it can go."""
        if g <= self._reg_at:
            return
        _, (ci, ce) = self._registers(truth, [g])
        self._reg = (ci[0], ce[0])
        self._reg_at = g
        first = g // self.steps_per_period
        for j in [j for j in self._errors if j < first]:
            del self._errors[j]

    def registers_kwh(self, truth: MeterRegister, bounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Measured cumulative import and export registers [kWh] at step boundaries
        ``bounds`` (non-decreasing, from :attr:`reg_at` on; rows follow ``bounds``), not
        truncated."""
        _, (ci, ce) = self._registers(truth, list(bounds))
        return ci, ce

    def energy_kwh(self, truth: MeterRegister, first_step: int, stop_step: int) -> tuple[np.ndarray, np.ndarray]:
        """Import and export [kWh] per meter: the advance of the (truncated) registers
        from step boundary ``first_step`` to ``stop_step``."""
        _, _, (e_imp, e_exp) = self._between(truth, [first_step, stop_step])
        return e_imp[0], e_exp[0]

    # --- readings --------------------------------------------------------------------
    def readings(self, truth: MeterRegister, k: int) -> AmiBatch:
        """The readings of the periods ending in market interval ``k`` (delivered or not)."""
        periods = self.periods_of_interval(k)
        pp, n = self.steps_per_period, self.n
        n_p = len(periods)
        dt_s = self.timeline.physics_step_s
        t_start = np.array([j * pp * dt_s for j in periods], dtype=float)
        t_end = np.array([(j + 1) * pp * dt_s for j in periods], dtype=float)
        nan = np.full((n_p, n), np.nan)
        if n_p == 0:
            return AmiBatch(np.array(periods, dtype=np.int64), t_start, t_end, nan, nan.copy(), nan.copy(),
                            nan.copy(), nan.copy(), np.zeros((0, n), dtype=bool))
        bounds = [periods[0] * pp] + [(j + 1) * pp for j in periods]
        (imp_s, exp_s), _, (e_imp, e_exp) = self._between(truth, bounds)
        off = self._reg_at  # rows of imp_s / exp_s start there
        period_h = pp * truth.step_h
        v = np.empty((n_p, n))
        p = np.empty((n_p, n))
        q = np.empty((n_p, n))
        ok = np.empty((n_p, n), dtype=bool)
        for r, j in enumerate(periods):
            a, b = j * pp, (j + 1) * pp
            err = self.errors_pct(j)
            p[r] = (imp_s[a - off:b - off].sum(axis=0) - exp_s[a - off:b - off].sum(axis=0)) / period_h
            q_true = truth.rows("q_kvar", a, b).sum(axis=0) / pp
            q[r] = q_true * (1.0 + (self.gain_pct + err[2]) / 100.0)
            written = truth.rows("written", a, b)
            if written.any():
                v_true = truth.rows("v_pu", a, b)[written].mean(axis=0)
            else:
                v_true = np.full(n, np.nan)
            v_m = v_true + (self.v_offset_pct + err[3]) / 100.0
            res_v = self.spec.v_resolution_v
            if res_v > 0.0:
                v_m = np.round(v_m * self.v_base_v / res_v) * res_v / self.v_base_v
            v[r] = v_m
            ok[r] = self.delivered(k, j)
        mask = ~ok
        for arr in (v, p, q, e_imp, e_exp):
            arr[mask] = np.nan
        return AmiBatch(np.array(periods, dtype=np.int64), t_start, t_end, v, p, q, e_imp, e_exp, ok)
