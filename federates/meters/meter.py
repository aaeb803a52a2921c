"""Smart-meter mechanics: measurement noise and the per-step register.

A meter register keeps, for every physics step, the *final* reading of that step
(later reads of the same step overwrite earlier ones). Energy is metered at the
reading's power held for the whole step: ``energy_kwh = p_kw * step_h``.
"""

from __future__ import annotations

import numpy as np

from federates.common.tables import StepArrays


def measure(true_values: np.ndarray, noise_pct: float, rng: np.random.Generator) -> np.ndarray:
    """Measured values: ``true * (1 + noise_pct/100 * z)``, ``z`` standard normal.

    ``noise_pct`` [%] is the standard deviation relative to each value. With
    ``noise_pct == 0`` the true values come back unchanged (no draw is made).
    """
    x = np.asarray(true_values, dtype=float)
    if noise_pct == 0.0:
        return x.copy()
    z = rng.standard_normal(x.shape)
    return x * (1.0 + noise_pct / 100.0 * z)


class MeterRegister:
    """Per-step buffers of the final readings of ``n_meters`` meters.

    Rows are global steps ``g`` (from :attr:`first_step` on: the steps before it were
    dropped, :meth:`drop_before`), columns meters. ``step_h`` [h] is the length of a
    physics step. The buffer grows as steps are recorded (federates.common.tables).
    """

    def __init__(self, n_steps: int, n_meters: int, steps_per_interval: int, step_h: float,
                 capacity: int | None = None):
        self.n_steps = n_steps
        self.n_meters = n_meters
        self.steps_per_interval = steps_per_interval
        self.step_h = step_h
        self._rows = StepArrays(n_steps if capacity is None else min(n_steps, capacity))
        self._rows.add("v_pu", (n_meters,), fill=0.0)
        self._rows.add("p_kw", (n_meters,), fill=0.0)
        self._rows.add("q_kvar", (n_meters,), fill=0.0)
        self._rows.add("written", dtype=bool, fill=False)

    @property
    def first_step(self) -> int:
        return self._rows.g0

    def record(self, g: int, v_pu: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray) -> None:
        """Store (overwrite) the reading of step ``g``: [pu], [kW], [kvar]."""
        r = self._rows.row(g)
        self._rows.v_pu[r] = v_pu
        self._rows.p_kw[r] = p_kw
        self._rows.q_kvar[r] = q_kvar
        self._rows.written[r] = True

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """The rows of ``name`` (``v_pu``, ``p_kw``, ``q_kvar``, ``written``) of steps
        ``start`` .. ``stop - 1`` (not written: 0 / False)."""
        a, b = self._rows.row(start), self._rows.row(stop - 1) + 1 if stop > start else self._rows.row(start)
        return getattr(self._rows, name)[a:b]

    def written_steps(self, start: int = 0) -> np.ndarray:
        """The steps from ``start`` on that were recorded, in order."""
        steps = np.flatnonzero(self._rows.written) + self._rows.g0
        return steps[steps >= start]

    def take(self, name: str, steps: np.ndarray) -> np.ndarray:
        """The rows of ``name`` of the given (held) steps."""
        return getattr(self._rows, name)[np.asarray(steps, dtype=np.int64) - self._rows.g0]

    def drop_before(self, g: int) -> None:
        """Forget the steps before ``g``."""
        self._rows.drop_before(g)

    def energy_kwh(self, k: int, last_step: int | None = None) -> np.ndarray:
        """Net energy [kWh] per meter metered in interval ``k`` up to step ``last_step``.

        ``last_step`` (a global step, inclusive) defaults to the interval's last step.
        Steps never read count as 0.
        """
        first = k * self.steps_per_interval
        stop = first + self.steps_per_interval if last_step is None else last_step + 1
        return (self.rows("p_kw", first, stop) * self.step_h).sum(axis=0)
