"""The controllers role: Volt-VAR of every inverter, then DSO export caps.

Life cycle (after pandapower's controller loop: act, re-solve, check convergence):
the feeder solves physics step ``g``, the meters read, and :meth:`ControllersRole.on_readings`
is called once per solve. It returns the commands for the feeder to apply before it
re-solves, or ``[]`` when the controllers have converged (or gave up). Within one
call only one stage acts:

1. **Volt-VAR** (IEEE 1547-2018, if ``volt_var.enabled``): every inverter moves its
   reactive power a damped step toward the curve at its measured voltage,
   ``q += damping * (q_target - q)``. While any inverter moves by more than
   ``tolerance_kvar`` the call returns those moves.
2. **Curtailment** (if ``curtailment.enabled``), only once Volt-VAR has settled: if a
   customer voltage is above ``v_max_pu``, the exports feeding it are capped
   (:mod:`federates.controllers.curtailment`). After caps change, Volt-VAR gets to
   settle again at the next call.
3. Nothing left to do: ``[]`` (converged).

Iteration count
    ``iterations`` of a step is the number of command rounds the controllers have
    issued in it (= calls - 1 once the step converged). When a call finds that
    ``cfg.feeder.max_control_iterations`` rounds were already issued it returns
    ``[]`` without acting (its would-be commands are dropped, the state is kept as the
    feeder has it) and the step is recorded as not converged; its remaining
    violations are unresolved. The feeder therefore solves a step at most
    ``max_control_iterations + 1`` times.

State
    The controllers hold the last commanded ``q_kvar`` and export cap of every
    customer; the feeder is expected to hold them too until changed. ``q_kvar`` is
    kept across steps (inverters keep their set-point); caps are cleared at the first
    call of each market interval (the feeder clears its caps at the same time).

Determinism
    Results depend only on the calls received; no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from federates.common.grid import CustomerSite
from federates.common.messages import ControlCommand, CurtailmentNotice, MeterReading
from federates.controllers.curtailment import export_caps, group_codes
from federates.controllers.voltvar import q_pct_to_q_kvar, volt_var_q_pct
from runner.config import StudyFile

LIMIT_V_MAX = "v_max"
LIMIT_V_MIN = "v_min"


class ControllersRole:
    """Volt-VAR and over-voltage curtailment for all customers of one study.

    ``sites`` fixes the customer order; ``inverter_kva`` [kVA] the nameplate apparent
    power of each customer's inverter (0 = no inverter, never gets reactive power).
    """

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite], inverter_kva: np.ndarray):
        self.cfg = cfg
        self.ctl = cfg.controllers
        self.timeline = cfg.timeline
        self.max_iterations = int(cfg.feeder.max_control_iterations)
        self.participants: list[str] = [s.participant for s in sites]
        self.group_names: list[str] = [s.group for s in sites]
        self.n = n = len(self.participants)
        self._index = {p: i for i, p in enumerate(self.participants)}
        if len(self._index) != n:
            raise ValueError("participants in sites must be unique")
        self.groups = group_codes(sites)
        self.inverter_kva = np.asarray(inverter_kva, dtype=float).copy()
        if self.inverter_kva.shape != (n,):
            raise ValueError(f"inverter_kva has shape {self.inverter_kva.shape}; expected ({n},)")
        if np.any(self.inverter_kva < 0):
            raise ValueError("inverter_kva must be >= 0")
        self.has_inverter = self.inverter_kva > 0

        # commanded state, as the feeder holds it
        self.q_kvar = np.zeros(n)
        self.cap_kw = np.full(n, np.inf)

        # the step in progress
        self._g: int | None = None
        self._calls = 0  # calls received in the step
        self._rounds = 0  # command rounds issued in the step

        # per-step records (preallocated; the last call of a step overwrites)
        n_steps = self.timeline.n_steps
        self._seen = np.zeros(n_steps, dtype=bool)
        self._v_first = np.zeros((n_steps, n))
        self._v_last = np.zeros((n_steps, n))
        self._over_any = np.zeros((n_steps, n), dtype=bool)
        self._under_any = np.zeros((n_steps, n), dtype=bool)
        self._curtailed_kw = np.zeros((n_steps, n))
        self._iterations = np.zeros(n_steps, dtype=np.int64)
        self._converged = np.zeros(n_steps, dtype=bool)
        self._n_q = np.zeros(n_steps, dtype=np.int64)
        self._n_cap = np.zeros(n_steps, dtype=np.int64)
        self._curtailment_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    def _voltages(self, readings: Sequence[MeterReading]) -> np.ndarray:
        v = np.full(self.n, np.nan)
        for r in readings:
            i = self._index.get(r.meter)
            if i is None:
                raise ValueError(f"reading from unknown meter {r.meter!r}")
            v[i] = r.v_pu
        missing = [self.participants[i] for i in np.flatnonzero(np.isnan(v))]
        if missing:
            raise ValueError(f"no reading for {len(missing)} customer(s): {missing[:5]}")
        return v

    def _powers(self, readings: Sequence[MeterReading]) -> np.ndarray:
        p = np.zeros(self.n)
        for r in readings:
            p[self._index[r.meter]] = r.p_kw
        return p

    def _start_step(self, g: int) -> None:
        prev = self._g
        if prev is not None and g < prev:
            raise ValueError(f"step {g} comes after step {prev}; steps must not go back")
        if prev is None or self.timeline.interval_of_step(g) != self.timeline.interval_of_step(prev):
            self.cap_kw[:] = np.inf  # new market interval: caps are cleared
        self._g = g
        self._calls = 0
        self._rounds = 0
        self._seen[g] = True
        self._n_q[g] = 0
        self._n_cap[g] = 0

    def _commands(self, which: np.ndarray) -> list[ControlCommand]:
        return [
            ControlCommand(
                participant=self.participants[i],
                q_kvar=float(self.q_kvar[i]),
                p_export_cap_kw=None if np.isinf(self.cap_kw[i]) else float(self.cap_kw[i]),
            )
            for i in np.flatnonzero(which)
        ]

    # ------------------------------------------------------------------ the loop
    def on_readings(self, g: int, readings: Sequence[MeterReading],
                    curtailed_p_kw: np.ndarray) -> list[ControlCommand]:
        """Commands after one feeder solve of step ``g``; ``[]`` = converged or gave up.

        ``readings`` one per customer (any order); ``curtailed_p_kw`` [kW, >= 0] the PV
        power the feeder currently curtails under the caps, per customer in ``sites``
        order.
        """
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")
        if g != self._g:
            self._start_step(g)
        curtailed = np.asarray(curtailed_p_kw, dtype=float)
        if curtailed.shape != (self.n,):
            raise ValueError(f"curtailed_p_kw has shape {curtailed.shape}; expected ({self.n},)")
        v = self._voltages(readings)
        p = self._powers(readings)
        ctl = self.ctl
        over = v > ctl.v_max_pu
        under = v < ctl.v_min_pu

        # record: the last call of the step decides
        if self._calls == 0:
            self._v_first[g] = v
            self._over_any[g] = False
            self._under_any[g] = False
        self._calls += 1
        self._v_last[g] = v
        self._over_any[g] |= over
        self._under_any[g] |= under
        self._curtailed_kw[g] = curtailed
        self._iterations[g] = self._rounds
        self._converged[g] = True

        if not ctl.enabled:
            return []

        # 1. Volt-VAR
        q_new = self.q_kvar
        q_changed = np.zeros(self.n, dtype=bool)
        if ctl.volt_var.enabled:
            vv = ctl.volt_var
            # volt_var_q_pct is in the standard's sign (+ = injection); q_pct_to_q_kvar
            # flips it to tecosim's (q_kvar < 0 = injection).
            q_target = q_pct_to_q_kvar(volt_var_q_pct(v, vv), self.inverter_kva)
            q_new = np.where(self.has_inverter,
                             self.q_kvar + vv.damping * (q_target - self.q_kvar), 0.0)
            q_changed = self.has_inverter & (np.abs(q_new - self.q_kvar) > vv.tolerance_kvar)
        if q_changed.any():
            if not self._may_act():
                return []
            self.q_kvar = np.where(q_changed, q_new, self.q_kvar)
            self._n_q[g] += int(q_changed.sum())
            return self._issue(q_changed)

        # 2. curtailment, once Volt-VAR has settled
        cur = ctl.curtailment
        if cur.enabled and over.any():
            decision = export_caps(v, p, self.cap_kw, self.groups, ctl.v_max_pu,
                                   cur.margin_pu, cur.gain_per_pu)
            if decision.changed.any():
                if not self._may_act():
                    return []
                t_s = self.timeline.step_t_s(g)
                for i in np.flatnonzero(decision.changed):
                    self._curtailment_rows.append({
                        "step": g, "t_s": t_s, "iteration": self._rounds,
                        "participant": self.participants[i], "group": self.group_names[i],
                        "limit": LIMIT_V_MAX, "v_pu": float(decision.v_violation_pu[i]),
                        "export_kw": float(decision.export_kw[i]),
                        "cap_kw": float(decision.cap_kw[i]),
                    })
                self.cap_kw = decision.cap_kw.copy()
                self._n_cap[g] += int(decision.changed.sum())
                return self._issue(decision.changed)

        # 3. converged
        return []

    def _may_act(self) -> bool:
        """False (and the step marked not converged) once the iteration cap is reached."""
        if self._rounds >= self.max_iterations:
            self._converged[self._g] = False
            return False
        return True

    def _issue(self, which: np.ndarray) -> list[ControlCommand]:
        """Commands for ``which``; the step is not converged until a call returns []."""
        self._rounds += 1
        self._iterations[self._g] = self._rounds
        self._converged[self._g] = False
        return self._commands(which)

    # ------------------------------------------------------------------ reports
    def report(self, k: int) -> list[CurtailmentNotice]:
        """Energy [kWh] each participant lost to caps in interval ``k`` (only those > 0).

        The sum over the steps of ``k`` of the final ``curtailed_p_kw * step_h``.
        """
        if not 0 <= k < self.timeline.n_intervals:
            raise ValueError(f"interval {k} is outside the study (0..{self.timeline.n_intervals - 1})")
        steps = self.timeline.steps_of_interval(k)
        energy_kwh = (self._curtailed_kw[steps.start:steps.stop] * self.timeline.step_h).sum(axis=0)
        return [
            CurtailmentNotice(participant=self.participants[i], interval=k,
                              curtailed_kwh=float(energy_kwh[i]), limit=LIMIT_V_MAX)
            for i in np.flatnonzero(energy_kwh > 0.0)
        ]

    def tables(self) -> dict[str, pd.DataFrame]:
        """``violations``, ``curtailments`` and ``control`` (see the module doc for meaning).

        violations: one row per step and customer and limit violated at any solve of
        the step: step, t_s [s], participant, limit, v_pu (final) [pu], v_pu_initial
        (first solve) [pu], stage ("final"), resolved (the final state is within the
        limit), iterations.
        curtailments: one row per cap change: step, t_s, iteration, participant, group,
        limit, v_pu (worst voltage of the group) [pu], export_kw [kW], cap_kw [kW].
        control: one row per step: step, t_s, iterations, converged, n_q_changes,
        n_cap_changes.
        """
        steps = np.flatnonzero(self._seen)
        t_s = steps * self.timeline.physics_step_s
        parts = []
        for limit, any_mask, bad in (
            (LIMIT_V_MAX, self._over_any, self._v_last > self.ctl.v_max_pu),
            (LIMIT_V_MIN, self._under_any, self._v_last < self.ctl.v_min_pu),
        ):
            rows, cols = np.nonzero(any_mask[steps])
            g = steps[rows]
            parts.append(pd.DataFrame({
                "_site": cols,
                "step": g.astype(np.int64),
                "t_s": (g * self.timeline.physics_step_s).astype(float),
                "participant": np.asarray(self.participants, dtype=object)[cols],
                "limit": limit,
                "v_pu": self._v_last[g, cols],
                "v_pu_initial": self._v_first[g, cols],
                "stage": "final",
                "resolved": ~bad[g, cols],
                "iterations": self._iterations[g],
            }))
        violations = (pd.concat(parts, ignore_index=True)
                      .sort_values(["step", "limit", "_site"], kind="stable")
                      .drop(columns="_site")
                      .reset_index(drop=True)
                      .astype({"participant": str, "limit": str, "stage": str}))
        curtailment_cols = ["step", "t_s", "iteration", "participant", "group", "limit",
                            "v_pu", "export_kw", "cap_kw"]
        curtailments = pd.DataFrame(self._curtailment_rows, columns=curtailment_cols)
        curtailments = curtailments.astype({"step": np.int64, "t_s": float, "iteration": np.int64,
                                            "participant": str, "group": str, "limit": str,
                                            "v_pu": float, "export_kw": float, "cap_kw": float})
        control = pd.DataFrame({
            "step": steps.astype(np.int64),
            "t_s": t_s.astype(float),
            "iterations": self._iterations[steps],
            "converged": self._converged[steps],
            "n_q_changes": self._n_q[steps],
            "n_cap_changes": self._n_cap[steps],
        })
        return {"violations": violations, "curtailments": curtailments, "control": control}
