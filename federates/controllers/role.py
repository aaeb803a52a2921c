"""The controllers role: Volt-VAR and Volt-Watt of every inverter, then DSO export caps.

Life cycle (after pandapower's controller loop: act, re-solve, check convergence):
the feeder solves physics step ``g``, the meters read, and :meth:`ControllersRole.on_readings`
is called once per solve. It returns the commands for the feeder to apply before it
re-solves, or ``[]`` when the controllers have converged (or gave up). Within one
call only one stage acts:

1. **Inverters** (IEEE 1547-2018): Volt-VAR (if ``volt_var.enabled``) and Volt-Watt
   (if ``volt_watt.enabled``) settle together. Every inverter moves its reactive
   power and its Volt-Watt export cap a damped step toward its lagged target at its
   measured voltage, ``x += damping * (x_target - x)`` (``x_target`` below). While
   any inverter moves by more than ``tolerance_kvar`` / ``tolerance_kw`` the call
   returns those moves.
2. **DSO curtailment** (if ``curtailment.enabled``), only once the inverters have
   settled: for every limit still violated (customer over-voltage, reverse-flow
   overload of a line or transformer, voltage unbalance, substation export cap; the
   last three from the feeder's SCADA view) the DSO cuts exports by the configured
   ``policy`` on the feeder's sensitivities (:mod:`federates.controllers.dso`,
   :class:`federates.controllers.dso_agent.DsoAgent`); with policy ``group_voltage``
   the earlier over-voltage-only heuristic of :mod:`federates.controllers.curtailment`.
   After caps change, the inverters get to settle again at the next call.
3. Nothing left to do: ``[]`` (converged).

Volt-Watt as an export cap
    The Volt-Watt limit caps the customer's export at ``p_pct(v) / 100 * inverter_kva``
    (:mod:`federates.controllers.voltwatt` explains the mapping). A command's
    ``p_export_cap_kw`` is the smaller of the Volt-Watt cap and the DSO cap of stage 2;
    the two are held separately (:attr:`ControllersRole.vw_cap_kw`,
    :attr:`ControllersRole.dso_cap_kw`). A Volt-Watt cap at the inverter's rating
    (within the stop rule, ``tolerance_kw / damping``) is no cap. Curtailed energy is
    attributed to the cap that is the smaller one at each final solve (``limit``
    ``"volt_watt"`` or the DSO limit that set the cap); a notice per participant and
    cause. With ``market.network_aware: envelopes`` each customer's export is also
    capped from the start of each interval at its operating envelope (limit
    ``"envelope"``, ex ante: recorded, but no notice, since the market already
    clipped the schedule to the envelope).

Open-loop response time (a first-order lag across physics steps)
    1547-2018 gives each function an open-loop response time T_ol: 90 % of a step
    change of the set-point within T_ol. With ``tau = T_ol / ln(10)`` and ``dt`` the
    time since the previous step solved (``physics_step_s`` normally), the set-point
    an inverter reaches by the end of step ``g`` is::

        x_g = x_{g-1} + alpha * (curve(v_g) - x_{g-1}),   alpha = 1 - exp(-dt / tau)

    with ``x_{g-1}`` the set-point at the end of the previous step. ``v_g`` depends on
    ``x_g``, so within the step the damped iteration above still looks for the fixed
    point, now of the lagged map: ``x_target = x_{g-1} + alpha * (curve(v) - x_{g-1})``.
    With the defaults (dt = 60 s; T_ol = 5 s Volt-VAR, 10 s Volt-Watt) alpha is 1 to
    within 1e-6 and every step reaches the curve's steady state; with physics steps
    shorter than T_ol the inverters follow a voltage change over several steps. Both
    the reactive power and the Volt-Watt cap are lagged, each with its own T_ol.

Missing readings
    A customer without a reading in a call (or with a non-finite one) keeps the last
    voltage and power read from it; a customer that has never been read is an error.

Iteration count
    ``iterations`` of a step is the number of command rounds the controllers have
    issued in it (= calls - 1 once the step converged). When a call finds that
    ``cfg.feeder.max_control_iterations`` rounds were already issued it returns
    ``[]`` without acting (its would-be commands are dropped, the state is kept as the
    feeder has it) and the step is recorded as not converged; its remaining
    violations are unresolved. The feeder therefore solves a step at most
    ``max_control_iterations + 1`` times.

State
    The controllers hold the last commanded ``q_kvar`` and export caps of every
    customer; the feeder is expected to hold them too until changed. ``q_kvar`` and
    the Volt-Watt cap are kept across steps (inverters keep their set-point); DSO caps
    are cleared at the first call of each market interval. The feeder clears all its
    caps then, so that call re-sends the Volt-Watt caps still in force.

Determinism
    Results depend only on the calls received; no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from federates.common.grid import CustomerSite
from federates.common.messages import (
    ControlCommand,
    CurtailmentNotice,
    MeterReading,
    OperatingEnvelope,
)
from federates.controllers.curtailment import export_caps, group_codes
from federates.controllers.dso_agent import DsoAgent
from federates.controllers.voltvar import (
    lagged_target,
    q_pct_to_q_kvar,
    response_alpha,
    volt_var_q_pct,
)
from federates.controllers.voltwatt import volt_watt_cap_kw
from runner.config import StudyFile

LIMIT_V_MAX = "v_max"
LIMIT_V_MIN = "v_min"
LIMIT_VOLT_WATT = "volt_watt"
LIMIT_ENVELOPE = "envelope"
#: causes of curtailed energy, by code (0 = none)
CAUSES = ("", LIMIT_VOLT_WATT, LIMIT_ENVELOPE, LIMIT_V_MAX, "thermal", "vuf", "export")
_CAUSE = {c: i for i, c in enumerate(CAUSES)}


class ControllersRole:
    """Volt-VAR, Volt-Watt and over-voltage curtailment for all customers of one study.

    ``sites`` fixes the customer order; ``inverter_kva`` [kVA] the nameplate apparent
    power of each customer's inverter (0 = no inverter: never gets reactive power nor
    a Volt-Watt cap).
    """

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite], inverter_kva: np.ndarray,
                 *, sensitivities=None):
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

        # the DSO (stage 2 with sensitivities; envelopes)
        cur = self.ctl.curtailment
        self.want_scada = bool(self.ctl.enabled and cur.enabled and cur.policy != "group_voltage")
        self.network_aware = cfg.market.network_aware
        needs_dso = self.want_scada or self.network_aware != "off"
        if needs_dso and sensitivities is None:
            raise ValueError("curtailment policy "
                             f"{cur.policy!r} / market.network_aware {self.network_aware!r} need the "
                             "feeder's sensitivities (sensitivities.npz, written by prepare_run)")
        self.dso = DsoAgent(cfg, self.participants, self.inverter_kva, sensitivities) if needs_dso else None
        self.scada_size = (1 + 2 * len(sensitivities.elements) + len(sensitivities.buses)
                           if sensitivities is not None else 0)
        self._envelopes: dict[int, np.ndarray] = {}  # interval -> export envelope [kW]

        # commanded state, as the feeder holds it
        self.q_kvar = np.zeros(n)
        self.vw_cap_kw = self.ctl.volt_watt.p1_pct / 100.0 * self.inverter_kva  # Volt-Watt set-point
        self.dso_cap_kw = np.full(n, np.inf)  # stage 2
        self.dso_cause = np.zeros(n, dtype=np.int8)  # cause code of each DSO cap
        self.dso_reason = np.full(n, "", dtype=object)  # "limit:element" of each DSO cap
        self.env_cap_kw = np.full(n, np.inf)  # the interval's operating envelope (export)

        # the step in progress
        self._g: int | None = None
        self._calls = 0  # calls received in the step
        self._rounds = 0  # command rounds issued in the step
        self._q_start = self.q_kvar.copy()  # set-points at the end of the previous step
        self._vw_start = self.vw_cap_kw.copy()
        self._alpha_vv = 1.0  # lag factors of the step (module doc)
        self._alpha_vw = 1.0
        self._resend = np.zeros(n, dtype=bool)  # Volt-Watt caps the feeder dropped

        # last reading of every customer (held when a reading is missing)
        self._v_held = np.full(n, np.nan)
        self._p_held = np.full(n, np.nan)

        # per-step records (preallocated; the last call of a step overwrites)
        n_steps = self.timeline.n_steps
        self._seen = np.zeros(n_steps, dtype=bool)
        self._v_first = np.zeros((n_steps, n))
        self._v_last = np.zeros((n_steps, n))
        self._over_any = np.zeros((n_steps, n), dtype=bool)
        self._under_any = np.zeros((n_steps, n), dtype=bool)
        self._curtailed_kw = np.zeros((n_steps, n))
        self._cause = np.zeros((n_steps, n), dtype=np.int8)  # which cap limits (CAUSES code)
        self._iterations = np.zeros(n_steps, dtype=np.int64)
        self._converged = np.zeros(n_steps, dtype=bool)
        self._n_q = np.zeros(n_steps, dtype=np.int64)
        self._n_cap = np.zeros(n_steps, dtype=np.int64)
        self._curtailment_rows: list[dict[str, Any]] = []
        self._envelope_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    @property
    def cap_kw(self) -> np.ndarray:
        """Export cap of every customer as the feeder holds it [kW, inf = none]: the
        smaller of the Volt-Watt and the DSO cap."""
        return np.minimum(np.minimum(self._vw_cap_in_force(), self.dso_cap_kw), self.env_cap_kw)

    def _limiting_cause(self) -> np.ndarray:
        """CAUSES code of the cap that limits each customer now (0 = none)."""
        vw = self._vw_cap_in_force()
        caps = np.stack([vw, self.env_cap_kw, self.dso_cap_kw])
        which = np.argmin(caps, axis=0)
        code = np.choose(which, [np.full(self.n, _CAUSE[LIMIT_VOLT_WATT], dtype=np.int8),
                                 np.full(self.n, _CAUSE[LIMIT_ENVELOPE], dtype=np.int8),
                                 self.dso_cause])
        return np.where(np.isfinite(caps.min(axis=0)), code, 0).astype(np.int8)

    def _vw_cap_in_force(self) -> np.ndarray:
        """The Volt-Watt caps [kW] that limit anything: inf where Volt-Watt is off, the
        customer has no inverter or the cap is at the inverter's rating (within the stop
        rule of the iteration, ``tolerance_kw / damping``)."""
        vw = self.ctl.volt_watt
        if not vw.enabled:
            return np.full(self.n, np.inf)
        at_rating_kw = self.inverter_kva - vw.tolerance_kw / vw.damping
        binding = self.has_inverter & (self.vw_cap_kw < at_rating_kw)
        return np.where(binding, self.vw_cap_kw, np.inf)

    def _read(self, readings: Sequence[MeterReading]) -> tuple[np.ndarray, np.ndarray]:
        """Voltage [pu] and power [kW] of every customer: this call's reading, or the
        last one held where it is missing (module doc)."""
        for r in readings:
            i = self._index.get(r.meter)
            if i is None:
                raise ValueError(f"reading from unknown meter {r.meter!r}")
            if np.isfinite(r.v_pu) and np.isfinite(r.p_kw):
                self._v_held[i] = r.v_pu
                self._p_held[i] = r.p_kw
        never = [self.participants[i] for i in np.flatnonzero(np.isnan(self._v_held))]
        if never:
            raise ValueError(f"no reading yet from {len(never)} customer(s): {never[:5]}")
        return self._v_held.copy(), self._p_held.copy()

    def _start_step(self, g: int) -> None:
        prev = self._g
        if prev is not None and g < prev:
            raise ValueError(f"step {g} comes after step {prev}; steps must not go back")
        if prev is None or self.timeline.interval_of_step(g) != self.timeline.interval_of_step(prev):
            self.dso_cap_kw[:] = np.inf  # new market interval: DSO caps are cleared
            self.dso_cause[:] = 0
            self.dso_reason[:] = ""
            if self.dso is not None:
                self.dso.new_interval()
            k = self.timeline.interval_of_step(g)
            self.env_cap_kw = self._envelopes.pop(k, np.full(self.n, np.inf))
            # the feeder clears all its caps; Volt-Watt caps and envelopes are (re-)sent
            self._resend = np.isfinite(self._vw_cap_in_force()) | np.isfinite(self.env_cap_kw)
        dt_s = (g - prev if prev is not None else 1) * self.timeline.physics_step_s
        self._alpha_vv = response_alpha(dt_s, self.ctl.volt_var.open_loop_response_time_s)
        self._alpha_vw = response_alpha(dt_s, self.ctl.volt_watt.open_loop_response_time_s)
        self._q_start = self.q_kvar.copy()
        self._vw_start = self.vw_cap_kw.copy()
        self._g = g
        self._calls = 0
        self._rounds = 0
        self._seen[g] = True
        self._n_q[g] = 0
        self._n_cap[g] = 0

    def _commands(self, which: np.ndarray) -> list[ControlCommand]:
        cap_kw = self.cap_kw
        return [
            ControlCommand(
                participant=self.participants[i],
                q_kvar=float(self.q_kvar[i]),
                p_export_cap_kw=None if np.isinf(cap_kw[i]) else float(cap_kw[i]),
            )
            for i in np.flatnonzero(which)
        ]

    # ------------------------------------------------------------------ the loop
    def on_readings(self, g: int, readings: Sequence[MeterReading],
                    curtailed_p_kw: np.ndarray, scada=None) -> list[ControlCommand]:
        """Commands after one feeder solve of step ``g``; ``[]`` = converged or gave up.

        ``readings`` at most one per customer (any order; a missing one holds the
        customer's last reading); ``curtailed_p_kw`` [kW, >= 0] the PV power the
        feeder currently curtails under the caps, per customer in ``sites`` order;
        ``scada`` the feeder's :class:`~federates.feeder.role.Scada` of this solve
        (needed when :attr:`want_scada`).
        """
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")
        if g != self._g:
            self._start_step(g)
        curtailed = np.asarray(curtailed_p_kw, dtype=float)
        if curtailed.shape != (self.n,):
            raise ValueError(f"curtailed_p_kw has shape {curtailed.shape}; expected ({self.n},)")
        v, p = self._read(readings)
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
        self._cause[g] = self._limiting_cause()  # the caps of this solve: which one limits
        self._iterations[g] = self._rounds
        self._converged[g] = True

        if not ctl.enabled:
            return []

        # 1. inverters: Volt-VAR and Volt-Watt, each toward its lagged target
        q_new = self.q_kvar
        q_changed = np.zeros(self.n, dtype=bool)
        if ctl.volt_var.enabled:
            vv = ctl.volt_var
            # volt_var_q_pct is in the standard's sign (+ = injection); q_pct_to_q_kvar
            # flips it to tecosim's (q_kvar < 0 = injection).
            q_curve = q_pct_to_q_kvar(volt_var_q_pct(v, vv), self.inverter_kva)
            q_target = lagged_target(self._q_start, q_curve, self._alpha_vv)
            q_new = np.where(self.has_inverter,
                             self.q_kvar + vv.damping * (q_target - self.q_kvar), 0.0)
            q_changed = self.has_inverter & (np.abs(q_new - self.q_kvar) > vv.tolerance_kvar)
        vw_new = self.vw_cap_kw
        vw_changed = np.zeros(self.n, dtype=bool)
        if ctl.volt_watt.enabled:
            vw = ctl.volt_watt
            vw_curve = volt_watt_cap_kw(v, vw, self.inverter_kva)
            vw_target = lagged_target(self._vw_start, vw_curve, self._alpha_vw)
            vw_new = np.where(self.has_inverter,
                              self.vw_cap_kw + vw.damping * (vw_target - self.vw_cap_kw),
                              self.vw_cap_kw)
            vw_changed = self.has_inverter & (np.abs(vw_new - self.vw_cap_kw) > vw.tolerance_kw)
        inverters = q_changed | vw_changed | self._resend
        if inverters.any():
            if not self._may_act():
                return []
            self.q_kvar = np.where(q_changed, q_new, self.q_kvar)
            self.vw_cap_kw = np.where(vw_changed, vw_new, self.vw_cap_kw)
            self._record_volt_watt(g, vw_changed, v, p, curtailed)
            self._n_q[g] += int(q_changed.sum())
            self._n_cap[g] += int(vw_changed.sum())
            self._resend = np.zeros(self.n, dtype=bool)
            return self._issue(inverters)

        # 2. curtailment, once the inverters have settled
        cur = ctl.curtailment
        if cur.enabled and self.dso is not None:
            if self.want_scada and scada is None:
                raise ValueError(f"step {g}: the DSO needs the feeder's SCADA values")
            plan = self.dso.plan(v, p, scada)
            # caps set for a limit the cuts proved unable to relieve are lifted again
            lift = np.isin(self.dso_reason, list(self.dso.ignored)) & np.isfinite(self.dso_cap_kw)
            if lift.any():
                if not self._may_act():
                    return []
                self.dso_cap_kw[lift] = np.inf
                self.dso_cause[lift] = 0
                self.dso_reason[lift] = ""
                return self._issue(lift)
            if plan is not None and (plan.cut_kw > 0).any():
                if not self._may_act():
                    return []
                export_kw = np.maximum(-p, 0.0)
                changed = plan.cut_kw > 0
                new_cap = np.minimum(self.dso_cap_kw, np.maximum(export_kw - plan.cut_kw, 0.0))
                t_s = self.timeline.step_t_s(g)
                for i in np.flatnonzero(changed):
                    self._curtailment_rows.append({
                        "step": g, "t_s": t_s, "iteration": self._rounds,
                        "participant": self.participants[i], "group": self.group_names[i],
                        "limit": plan.limit[i], "element": plan.element[i], "v_pu": float(v[i]),
                        "export_kw": float(export_kw[i]), "cap_kw": float(new_cap[i]),
                    })
                    self.dso_cause[i] = _CAUSE[plan.limit[i]]
                    self.dso_reason[i] = f"{plan.limit[i]}:{plan.element[i]}"
                self.dso_cap_kw = np.where(changed, new_cap, self.dso_cap_kw)
                self._n_cap[g] += int(changed.sum())
                return self._issue(changed)
        elif cur.enabled and over.any():
            decision = export_caps(v, p, self.dso_cap_kw, self.groups, ctl.v_max_pu,
                                   cur.margin_pu, cur.gain_per_pu)
            if decision.changed.any():
                if not self._may_act():
                    return []
                t_s = self.timeline.step_t_s(g)
                for i in np.flatnonzero(decision.changed):
                    self._curtailment_rows.append({
                        "step": g, "t_s": t_s, "iteration": self._rounds,
                        "participant": self.participants[i], "group": self.group_names[i],
                        "limit": LIMIT_V_MAX, "element": self.group_names[i],
                        "v_pu": float(decision.v_violation_pu[i]),
                        "export_kw": float(decision.export_kw[i]),
                        "cap_kw": float(decision.cap_kw[i]),
                    })
                self.dso_cap_kw = decision.cap_kw.copy()
                self.dso_cause[decision.changed] = _CAUSE[LIMIT_V_MAX]
                self._n_cap[g] += int(decision.changed.sum())
                return self._issue(decision.changed)

        # 3. converged
        return []

    def _record_volt_watt(self, g: int, changed: np.ndarray, v: np.ndarray, p: np.ndarray,
                          curtailed: np.ndarray) -> None:
        """``curtailments`` rows for the Volt-Watt caps that changed and bind: the new
        cap is below the export the customer would have without caps (measured export
        plus what the caps curtail now)."""
        cap_kw = self._vw_cap_in_force()
        export_kw = np.maximum(-p, 0.0)
        uncapped_kw = np.maximum(-p + curtailed, 0.0)
        binds = changed & (cap_kw < uncapped_kw)
        if not binds.any():
            return
        t_s = self.timeline.step_t_s(g)
        for i in np.flatnonzero(binds):
            self._curtailment_rows.append({
                "step": g, "t_s": t_s, "iteration": self._rounds,
                "participant": self.participants[i], "group": self.group_names[i],
                "limit": LIMIT_VOLT_WATT, "element": self.participants[i], "v_pu": float(v[i]),
                "export_kw": float(export_kw[i]), "cap_kw": float(cap_kw[i]),
            })

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

    # ------------------------------------------------------------------ the DSO's inputs
    def on_confirmations(self, k: int, confirmations) -> None:
        """The market's confirmations of interval ``k`` (prices for ``least_cost``)."""
        if self.dso is not None:
            self.dso.on_confirmations(k, confirmations)

    def on_ami(self, k: int, readings) -> None:
        """AMI readings delivered for interval ``k`` (the DSO's envelopes use them)."""
        if self.dso is not None:
            self.dso.on_ami(k, readings)

    def envelopes(self, k: int) -> list[OperatingEnvelope]:
        """Operating envelopes for interval ``k`` (``market.network_aware: envelopes``;
        [] otherwise or before any AMI data). The export envelopes also become export
        caps from the first step of ``k`` (kept until then)."""
        if self.dso is None or self.network_aware != "envelopes":
            return []
        env = self.dso.envelopes(k)
        if env:
            self._envelopes[k] = np.array([e.export_max_kw for e in env], dtype=float)
            self._envelope_rows.extend(
                {"interval": k, "participant": e.participant, "export_max_kw": e.export_max_kw,
                 "import_max_kw": e.import_max_kw, "binding": e.binding} for e in env)
        return env

    def grid_constraints(self, k: int):
        """Linearised grid limits for the clearing of ``k`` (``market.network_aware:
        constraints``; [] otherwise or before any AMI data)."""
        if self.dso is None or self.network_aware != "constraints":
            return []
        return self.dso.grid_constraints(k)

    def on_envelopes(self, k: int, envelopes) -> None:
        """Export limits the clearing of ``k`` set (``constraints`` mode: what the grid
        let a participant sell / interval): export caps from the first step of ``k``."""
        if not envelopes:
            return
        caps = np.full(self.n, np.inf)
        for e in envelopes:
            i = self._index.get(e.participant)
            if i is not None and e.interval == k:
                caps[i] = e.export_max_kw
        self._envelopes[k] = caps

    # ------------------------------------------------------------------ reports
    def report(self, k: int) -> list[CurtailmentNotice]:
        """Energy [kWh] each participant lost to caps in interval ``k``, one notice per
        participant and cause (only those > 0).

        The sum over the steps of ``k`` of the final ``curtailed_p_kw * step_h``,
        attributed at each step to the cap that limited (``limit``: ``volt_watt`` or
        the DSO limit ``v_max``, ``thermal``, ``vuf``, ``export``). Energy held back by
        an operating envelope gets no notice (module doc).
        """
        if not 0 <= k < self.timeline.n_intervals:
            raise ValueError(f"interval {k} is outside the study (0..{self.timeline.n_intervals - 1})")
        steps = self.timeline.steps_of_interval(k)
        lost_kwh = self._curtailed_kw[steps.start:steps.stop] * self.timeline.step_h
        cause = self._cause[steps.start:steps.stop]
        notices = []
        for i in range(self.n):
            by_cause = np.bincount(cause[:, i], weights=lost_kwh[:, i], minlength=len(CAUSES))
            if lost_kwh[:, i].sum() > 0 and by_cause[0] > 0:
                by_cause[_CAUSE[LIMIT_V_MAX]] += by_cause[0]  # caps released at the same solve
            for c in np.flatnonzero(by_cause > 0):
                if c == 0 or CAUSES[c] == LIMIT_ENVELOPE:
                    continue
                notices.append(CurtailmentNotice(participant=self.participants[i], interval=k,
                                                 curtailed_kwh=float(by_cause[c]), limit=CAUSES[c]))
        return notices

    def curtailment_energy(self) -> pd.DataFrame:
        """``curtailment_energy``: per step, participant and cause the PV energy held back
        [kWh] (step, t_s, participant, limit, energy_kwh), rows > 0 only."""
        steps, cols = np.nonzero(self._curtailed_kw > 0)
        e = self._curtailed_kw[steps, cols] * self.timeline.step_h
        cause = self._cause[steps, cols]
        cause = np.where(cause == 0, _CAUSE[LIMIT_V_MAX], cause)
        return pd.DataFrame({
            "step": steps.astype(np.int64),
            "t_s": (steps * self.timeline.physics_step_s).astype(float),
            "participant": np.asarray(self.participants, dtype=object)[cols].astype(str),
            "limit": np.asarray(CAUSES, dtype=object)[cause].astype(str),
            "energy_kwh": e.astype(float),
        })

    def tables(self) -> dict[str, pd.DataFrame]:
        """``control_violations``, ``curtailments``, ``control``, ``curtailment_energy``
        (and ``dso_envelopes`` with a DSO); see the module doc for meaning.

        control_violations: the controllers' own view (from the readings they acted
        on; the feeder's ``violations`` table is the physical record of every limit):
        one row per step and customer and limit violated at any solve of
        the step: step, t_s [s], participant, limit, v_pu (final) [pu], v_pu_initial
        (first solve) [pu], stage ("final"), resolved (the final state is within the
        limit), iterations.
        curtailments: one row per DSO cap change (limit v_max, thermal, vuf or export;
        element the customer, line/transformer, bus or "source" whose limit caused it;
        with policy group_voltage the group and v_pu its worst voltage) and per
        binding Volt-Watt cap change (limit "volt_watt"): step, t_s, iteration,
        participant, group, limit, element, v_pu [pu], export_kw [kW, measured],
        cap_kw [kW, the new cap of that limit].
        control: one row per step: step, t_s, iterations, converged, n_q_changes,
        n_cap_changes (DSO and Volt-Watt caps).
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
                            "element", "v_pu", "export_kw", "cap_kw"]
        curtailments = pd.DataFrame(self._curtailment_rows, columns=curtailment_cols)
        curtailments = curtailments.astype({"step": np.int64, "t_s": float, "iteration": np.int64,
                                            "participant": str, "group": str, "limit": str,
                                            "element": str, "v_pu": float, "export_kw": float,
                                            "cap_kw": float})
        control = pd.DataFrame({
            "step": steps.astype(np.int64),
            "t_s": t_s.astype(float),
            "iterations": self._iterations[steps],
            "converged": self._converged[steps],
            "n_q_changes": self._n_q[steps],
            "n_cap_changes": self._n_cap[steps],
        })
        out = {"control_violations": violations, "curtailments": curtailments, "control": control,
               "curtailment_energy": self.curtailment_energy()}
        if self.dso is not None:
            out["dso_envelopes"] = pd.DataFrame(
                self._envelope_rows,
                columns=["interval", "participant", "export_max_kw", "import_max_kw", "binding"],
            ).astype({"interval": np.int64, "participant": str, "export_max_kw": float,
                      "import_max_kw": float, "binding": str})
        return out
