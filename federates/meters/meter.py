"""Smart-meter mechanics: measurement noise and the per-step register.

A meter register keeps, for every physics step, the *final* reading of that step
(later reads of the same step overwrite earlier ones). Energy is metered at the
reading's power held for the whole step: ``energy_kwh = p_kw * step_h``.
"""

from __future__ import annotations

import numpy as np


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
    """Preallocated per-step buffers of the final readings of ``n_meters`` meters.

    Rows are global steps ``g`` (0 .. ``n_steps``-1), columns meters. ``step_h`` [h]
    is the length of a physics step.
    """

    def __init__(self, n_steps: int, n_meters: int, steps_per_interval: int, step_h: float):
        self.n_steps = n_steps
        self.n_meters = n_meters
        self.steps_per_interval = steps_per_interval
        self.step_h = step_h
        self.v_pu = np.zeros((n_steps, n_meters))
        self.p_kw = np.zeros((n_steps, n_meters))
        self.q_kvar = np.zeros((n_steps, n_meters))
        self.written = np.zeros(n_steps, dtype=bool)

    def record(self, g: int, v_pu: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray) -> None:
        """Store (overwrite) the reading of step ``g``: [pu], [kW], [kvar]."""
        self.v_pu[g] = v_pu
        self.p_kw[g] = p_kw
        self.q_kvar[g] = q_kvar
        self.written[g] = True

    def energy_kwh(self, k: int, last_step: int | None = None) -> np.ndarray:
        """Net energy [kWh] per meter metered in interval ``k`` up to step ``last_step``.

        ``last_step`` (a global step, inclusive) defaults to the interval's last step.
        Steps never read count as 0. The sum runs over the same rows in the same order
        whether called mid-interval or at its end, so the last reading's
        ``energy_kwh`` equals the interval report bit for bit.
        """
        first = k * self.steps_per_interval
        stop = first + self.steps_per_interval if last_step is None else last_step + 1
        return (self.p_kw[first:stop] * self.step_h).sum(axis=0)
