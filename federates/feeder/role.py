"""What the feeder does each physics step, used by the HELICS federate and the engine.

Plain Python over :class:`federates.feeder.opendss.OpenDSSFeeder` (no helics here).
Each step ``g``:

1. :meth:`FeederRole.begin_step` applies the requested net power of every prosumer
   (market schedule + real deviation), solves once *uncontrolled* (OpenDSS controls
   off, inverter q = 0, no export caps: the voltages "before control"), then once
   *controlled* (regulators/capacitors act; each prosumer's present inverter q and
   DSO export cap applied) and returns that :class:`Measurement`.
2. :meth:`FeederRole.apply` takes controller commands (q, export caps), re-solves and
   returns the new Measurement; the last call of a step is what the tables keep.

Besides customer voltages and the grid row, the final controlled solve of each step
records the ``feeder.lines_top_n`` most loaded Lines and Transformers (loading [%]
of NormAmps / rated kVA) and the voltage unbalance factor [%] of every three-phase
bus (IEC 61000-4-30 / IEEE 1159 VUF), read lazily like the grid row.

Export caps last one market interval: they are cleared at the first step of each
interval. Inverter q set-points persist until a new command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from federates.common.grid import CustomerSite
from federates.common.messages import ControlCommand
from federates.feeder.opendss import OpenDSSFeeder
from runner.config import StudyFile

#: Lines and transformers kept per step in the ``lines`` table when the study file
#: does not say (``feeder.lines_top_n``).

# OpenDSS's built-in "default" daily load shape (24 hourly multipliers), as defined in
# the OpenDSS source (LoadShape.pas, the shape every Load uses for "daily" unless told
# otherwise) and read back from the engine by OpenDSSFeeder.default_daily_shape();
# tests/feeder/test_adapter.py checks the two are equal. Multiplier i is placed at
# local clock hour i (00:00 -> 0.677) and interpolated linearly between hours,
# wrapping from 23:00 to 24:00 = 00:00.
OPENDSS_DEFAULT_DAILY_SHAPE: tuple[float, ...] = (
    0.677, 0.6256, 0.6087, 0.5833, 0.58028, 0.6025, 0.657, 0.7477, 0.832, 0.88, 0.94, 0.989,
    0.985, 0.98, 0.9898, 0.999, 1.0, 0.958, 0.936, 0.913, 0.876, 0.876, 0.828, 0.756,
)


def daily_shape_mult(hour_of_day: float, shape: tuple[float, ...] = OPENDSS_DEFAULT_DAILY_SHAPE) -> float:
    """The hourly ``shape`` at local clock time ``hour_of_day`` [h], linear between hours [-]."""
    n = len(shape)
    h = float(hour_of_day) % n
    i = int(h)
    frac = h - i
    return shape[i] * (1.0 - frac) + shape[(i + 1) % n] * frac


@dataclass
class Measurement:
    """What the feeder measures at each customer point, in customer order.

    ``v_pu`` voltage magnitude [pu of the L-N base]; ``p_kw``/``q_kvar`` power at the
    customer point [kW, kvar] (+ import): the set-point applied to the constant-PQ
    customer load, which OpenDSS draws within its solution tolerance;
    ``curtailed_p_kw`` export held back by DSO caps [kW, >= 0] (applied - requested).
    """

    v_pu: np.ndarray
    p_kw: np.ndarray
    q_kvar: np.ndarray
    curtailed_p_kw: np.ndarray


class FeederRole:
    """The feeder's work over a study: steps, controls, and the recorded tables."""

    def __init__(self, cfg: StudyFile, master: Path, sites: list[CustomerSite]) -> None:
        self.cfg = cfg
        self.timeline = cfg.timeline
        self.sites = list(sites)
        self.participants = [s.participant for s in self.sites]
        self._index = {p: i for i, p in enumerate(self.participants)}
        self.feeder = OpenDSSFeeder(Path(master), source_pu=cfg.feeder.source_pu)
        self.feeder.attach_customers(self.sites, cfg.feeder.customer_connection)
        self.regulators = self.feeder.regulator_names

        f = cfg.feeder
        self._shape_flat = f.background_load_shape == "flat"
        self._scale = float(f.background_load_scale)
        start = pd.Timestamp(cfg.study.start)
        self._start_hour = (
            start.hour + start.minute / 60.0 + (start.second + start.microsecond / 1e6) / 3600.0
        )

        n = len(self.sites)
        self._n = n
        self._q_kvar = np.zeros(n)
        self._cap_kw = np.full(n, np.nan)  # NaN = no cap
        self._requested = np.zeros(n)
        self._step: int | None = None
        self._pending_grid: int | None = None
        self._n_solves = 0

        steps = self.timeline.n_steps
        self._done = np.zeros(steps, dtype=bool)
        self._v = np.full((steps, n), np.nan)
        self._v_before = np.full((steps, n), np.nan)
        self._p = np.full((steps, n), np.nan)
        self._q = np.full((steps, n), np.nan)
        self._curt = np.full((steps, n), np.nan)
        self._src_p = np.full(steps, np.nan)
        self._src_q = np.full(steps, np.nan)
        self._loss = np.full(steps, np.nan)
        self._load = np.full(steps, np.nan)
        self._solves = np.zeros(steps, dtype=np.int64)
        self._taps = np.zeros((steps, len(self.regulators)), dtype=np.int64)
        self._bg = np.full(steps, np.nan)

        # limits (names fixed now that customers are attached)
        line_names, _ = self.feeder.line_loading_pct()
        xf_names, _ = self.feeder.transformer_loading_pct()
        self.elements = [f"line.{x}" for x in line_names] + [f"transformer.{x}" for x in xf_names]
        self.vuf_buses, _ = self.feeder.vuf_pct()
        top_n = int(f.lines_top_n)
        if top_n < 0:
            raise ValueError(f"feeder.lines_top_n must be >= 0, got {top_n}")
        self._top_n = min(top_n, len(self.elements))
        self._top_elem = np.zeros((steps, self._top_n), dtype=np.int64)
        self._top_load = np.full((steps, self._top_n), np.nan)
        self._vuf = np.full((steps, len(self.vuf_buses)), np.nan)

    # ------------------------------------------------------------------ helpers
    def background_mult(self, g: int) -> float:
        """Multiplier of the original loads at step ``g`` [-] (shape x scale)."""
        if self._shape_flat:
            return self._scale
        hour = self._start_hour + self.timeline.step_t_s(g) / 3600.0
        return self._scale * daily_shape_mult(hour)

    def _check_step(self, g: int) -> None:
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")

    def _vector(self, name: str, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.shape != (self._n,):
            raise ValueError(f"{name} must have one value per customer ({self._n}), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite")
        return a

    def _applied_p(self) -> np.ndarray:
        # export is negative p: a cap c [kW] limits p to >= -c
        capped = np.maximum(self._requested, -self._cap_kw)
        return np.where(np.isnan(self._cap_kw), self._requested, capped)

    def _controlled_solve(self, g: int) -> Measurement:
        applied = self._applied_p()
        self.feeder.set_customer_powers(applied, self._q_kvar)
        self.feeder.solve(controls=True, t_s=self.timeline.step_t_s(g))
        self._n_solves += 1
        m = Measurement(
            v_pu=self.feeder.customer_v_pu(),
            p_kw=applied.copy(),
            q_kvar=self._q_kvar.copy(),
            curtailed_p_kw=applied - self._requested,
        )
        self._record(g, m)
        return m

    def _record(self, g: int, m: Measurement) -> None:
        self._v[g] = m.v_pu
        self._p[g] = m.p_kw
        self._q[g] = m.q_kvar
        self._curt[g] = m.curtailed_p_kw
        self._solves[g] = self._n_solves
        self._done[g] = True
        self._pending_grid = g

    def _finalize_grid(self) -> None:
        """Record the grid row of the step in progress from the last solve.

        Called before the next step changes the model and by :meth:`tables`, so the
        per-element readouts (load_kw loops over every Load) run once per step, not
        once per solve.
        """
        g = self._pending_grid
        if g is None:
            return
        self._pending_grid = None
        self._src_p[g], self._src_q[g] = self.feeder.source_pq()
        self._loss[g] = self.feeder.losses_kw()
        self._load[g] = self.feeder.load_kw()
        taps = self.feeder.regulator_taps()
        self._taps[g] = [taps[r] for r in self.regulators]
        if self._top_n:
            loading = np.concatenate([self.feeder.line_loading_pct()[1],
                                      self.feeder.transformer_loading_pct()[1]])
            key = np.where(np.isnan(loading), -np.inf, loading)  # NaN (no rating) last
            top = np.argsort(-key, kind="stable")[: self._top_n]
            self._top_elem[g] = top
            self._top_load[g] = loading[top]
        self._vuf[g] = self.feeder.vuf_pct()[1]

    # ------------------------------------------------------------------ the step
    def begin_step(self, g: int, schedule_p_kw: np.ndarray, deviation_p_kw: np.ndarray) -> Measurement:
        """Solve step ``g`` for requested p = schedule + deviation [kW] (+ import).

        Returns the controlled Measurement; the uncontrolled voltages are kept as
        ``v_before_pu`` in the tables.
        """
        self._check_step(g)
        sched = self._vector("schedule_p_kw", schedule_p_kw)
        dev = self._vector("deviation_p_kw", deviation_p_kw)
        self._finalize_grid()
        if g % self.timeline.steps_per_interval == 0:
            self._cap_kw[:] = np.nan
        self._requested = sched + dev
        self._step = g
        self._n_solves = 0
        mult = self.background_mult(g)
        self.feeder.set_background_scale(mult)
        self._bg[g] = mult

        self.feeder.set_customer_powers(self._requested, np.zeros(self._n))
        self.feeder.solve(controls=False, t_s=self.timeline.step_t_s(g))
        self._n_solves += 1
        self._v_before[g] = self.feeder.customer_v_pu()
        return self._controlled_solve(g)

    def apply(self, g: int, commands: list[ControlCommand]) -> Measurement:
        """Apply inverter q [kvar] and export caps [kW] of the named prosumers, re-solve.

        Raises ValueError for a step that was not begun last, an unknown participant
        or a negative cap.
        """
        if g != self._step:
            raise ValueError(f"apply for step {g}, but the step in progress is {self._step}")
        updates: list[tuple[int, float, float]] = []  # checked first: all or nothing
        for c in commands:
            i = self._index.get(c.participant)
            if i is None:
                raise ValueError(f"command for unknown participant {c.participant!r}")
            q = float(c.q_kvar)
            if not np.isfinite(q):
                raise ValueError(f"{c.participant}: q_kvar must be finite")
            cap = np.nan if c.p_export_cap_kw is None else float(c.p_export_cap_kw)
            if c.p_export_cap_kw is not None and not (cap >= 0 and np.isfinite(cap)):
                raise ValueError(f"{c.participant}: p_export_cap_kw must be >= 0, got {cap}")
            updates.append((i, q, cap))
        for i, q, cap in updates:
            self._q_kvar[i] = q
            self._cap_kw[i] = cap
        return self._controlled_solve(g)

    @property
    def export_caps_kw(self) -> np.ndarray:
        """Present export cap of each prosumer [kW]; NaN = no cap."""
        return self._cap_kw.copy()

    @property
    def q_kvar(self) -> np.ndarray:
        """Present inverter q set-point of each prosumer [kvar]."""
        return self._q_kvar.copy()

    # ------------------------------------------------------------------ tables
    def tables(self) -> dict[str, pd.DataFrame]:
        """Tables of the steps run so far.

        ``voltages`` (step x customer rows), ``grid`` (one row per step), ``lines``
        (step x the ``lines_top_n`` most loaded Lines/Transformers, most loaded first:
        ``element`` ``line.<name>`` or ``transformer.<name>``, ``loading_pct`` [%]) and
        ``unbalance`` (step x three-phase bus: ``vuf_pct`` [%]).
        """
        self._finalize_grid()
        steps = np.flatnonzero(self._done)
        n = self._n
        t = steps.astype(float) * self.timeline.physics_step_s
        k = len(steps)
        buses = np.asarray([s.bus for s in self.sites], dtype=object)
        phases = np.asarray([s.phase for s in self.sites], dtype=object)
        names = np.asarray(self.participants, dtype=object)
        voltages = pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), n),
            "t_s": np.repeat(t, n),
            "participant": np.tile(names, k),
            "bus": np.tile(buses, k),
            "phase": np.tile(phases, k),
            "v_pu": self._v[steps].reshape(-1),
            "v_before_pu": self._v_before[steps].reshape(-1),
            "p_kw": self._p[steps].reshape(-1),
            "q_kvar": self._q[steps].reshape(-1),
            "curtailed_p_kw": self._curt[steps].reshape(-1),
        })
        grid_cols: dict[str, np.ndarray] = {
            "step": steps.astype(np.int64),
            "t_s": t,
            "source_p_kw": self._src_p[steps],
            "source_q_kvar": self._src_q[steps],
            "losses_kw": self._loss[steps],
            "load_kw": self._load[steps],
            "n_solves": self._solves[steps],
        }
        for j, r in enumerate(self.regulators):
            grid_cols[f"tap_{r}"] = self._taps[steps, j]
        grid_cols["background_mult"] = self._bg[steps]
        m = self._top_n
        elem_names = np.asarray(self.elements, dtype=object)
        lines = pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), m),
            "t_s": np.repeat(t, m),
            "element": elem_names[self._top_elem[steps].reshape(-1)] if m else np.zeros(0, dtype=object),
            "loading_pct": self._top_load[steps].reshape(-1),
        })
        nb = len(self.vuf_buses)
        unbalance = pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), nb),
            "t_s": np.repeat(t, nb),
            "bus": np.tile(np.asarray(self.vuf_buses, dtype=object), k),
            "vuf_pct": self._vuf[steps].reshape(-1),
        })
        return {"voltages": voltages, "grid": pd.DataFrame(grid_cols), "lines": lines,
                "unbalance": unbalance}
