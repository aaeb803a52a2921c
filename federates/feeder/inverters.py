"""The customers' inverters: IEEE 1547-2018 Volt-VAR and Volt-Watt at every solve, and
the export caps they enforce. Plain Python; hosted by the feeder (role.py).

Why the feeder hosts them
    A smart inverter's autonomous functions act on its own terminal measurement with
    no communication (IEEE 1547-2018 clause 5.3-5.4): they are part of the device, as
    OpenDSS's InvControl is part of the circuit. The feeder therefore settles them in
    its own loop, one re-solve per round, and only then hands the settled state to the
    DSO (the controllers federate, :mod:`federates.controllers.role`), whose decisions
    do cross the network. (Until the scale work of issue 10 the inverters ran in the
    controllers federate, one federation round trip per inverter round; results are
    the same, the rounds now cost no HELICS hops.)

Life cycle (after pandapower's controller loop: act, re-solve, check convergence)
    The feeder solves physics step ``g`` and calls :meth:`InverterFleet.on_solve` after
    every solve. It returns which inverters move (their reactive power and export cap
    are re-applied and the feeder re-solves) or None once the inverters have settled;
    then :attr:`InverterFleet.dso_may_act` says whether the DSO gets its turn. A DSO
    decision comes back through :meth:`InverterFleet.apply_dso`, after which the
    inverters settle again. Within one call only one stage acts:

    1. **Inverters**: Volt-VAR (if ``volt_var.enabled``) and Volt-Watt (if
       ``volt_watt.enabled``) settle together. Every inverter moves its reactive power
       and its Volt-Watt export cap a damped step toward its lagged target at its
       measured voltage, ``x += damping * (x_target - x)``. While any inverter moves by
       more than ``tolerance_kvar`` / ``tolerance_kw`` those moves are applied.
    2. **DSO** (controllers federate), only once the inverters have settled.

Settling many inverters: Anderson acceleration once a stage oscillates
    The damped step converges when ``damping * (1 + G) < 2``, G the loop gain of the
    slowest mode: curve slope [kvar/pu] times dV/dQ [pu/kvar], summed over the inverters
    that move together. Many inverters on one feeder make a *collective* mode: they all
    see the same primary voltage, so G grows with the kVA on the curve's slopes, not
    with how many sit on one node. (IEEE 8500 with 3000 prosumers, 1800 inverters, at
    midday: dV/dQ of a phase ~1-2e-4 pu per kvar of the phase's total, G ~ 4-9; every
    inverter of a phase, one per house or twenty, swings in step, the phase's residual
    reversing every round; damping 0.5 never settles in 20 rounds.)
    A settling stage (the inverters' rounds of a step up to the DSO's turn, and again
    after each DSO decision) is therefore watched: with ``r`` the residuals
    ``x_target - x`` of all inverters (kvar and kW stacked), the stage *oscillates* once
    ``r_n . r_(n-1) <= -OSCILLATION_RATIO * |r_(n-1)|^2`` (the residual turned back by at
    least half) in ``OSCILLATION_ROUNDS`` (2) successive solves. From then on, for the
    rest of the stage, the moves are those of Anderson acceleration (type II, depth
    ``m = controllers.anderson_depth``, 3; 0 = off) over the stage's last ``m + 1``
    iterates: with ``dX``, ``dR`` the last ``m`` changes of ``x`` and ``r``, ``gamma``
    the least-squares solution of ``dR gamma = r``, ``x += damping * r - (dX + damping *
    dR) gamma``, clipped to the curves' ranges. It is the damped step corrected by the
    secant information of the last rounds, so the collective mode is damped out in a
    round or two. The stop rule is unchanged (an inverter moves only while its damped
    step exceeds the tolerance; the stage settles when none does), so the fixed point
    and the precision it is reached to are those of the damped step; only the path
    differs, and only in stages that oscillated: a stage that settles without a
    sustained oscillation (one overshoot after a disturbance is not one) takes the
    damped steps bit for bit. Scaling the damping by 1 / (inverters on the node) was
    tried and does not help: the mode is not a node's (measured on IEEE 8500: 30 of 30
    steps still at the cap).

Volt-Watt as an export cap
    The Volt-Watt limit caps the customer's export at ``p_pct(v) / 100 * inverter_kva``
    (:mod:`federates.feeder.voltwatt` explains the mapping). The cap a customer is held
    to is the smallest of its Volt-Watt cap, its operating envelope (ex ante,
    ``market.network_aware``) and the DSO's curtailment cap. A Volt-Watt cap at the
    inverter's rating (within the stop rule, ``tolerance_kw / damping``) is no cap.
    Curtailed energy is attributed to the cap that is the smallest one at each final
    solve (``volt_watt``, ``envelope`` or the DSO limit that set the cap); a notice per
    participant and cause (:meth:`report`), none for envelopes (the market clipped the
    schedule to the envelope already).

Open-loop response time (a first-order lag across physics steps)
    1547-2018 gives each function an open-loop response time T_ol: 90 % of a step
    change of the set-point within T_ol. With ``tau = T_ol / ln(10)`` and ``dt`` the
    time since the previous step solved (``physics_step_s`` normally), the set-point
    an inverter reaches by the end of step ``g`` is::

        x_g = x_{g-1} + alpha * (curve(v_g) - x_{g-1}),   alpha = 1 - exp(-dt / tau)

    with ``x_{g-1}`` the set-point at the end of the previous step. ``v_g`` depends on
    ``x_g``, so within the step the damped iteration still looks for the fixed point,
    now of the lagged map: ``x_target = x_{g-1} + alpha * (curve(v) - x_{g-1})``. With
    the defaults (dt = 60 s; T_ol = 5 s Volt-VAR, 10 s Volt-Watt) alpha is 1 to within
    1e-6 and every step reaches the curve's steady state.

Local sensing
    Each inverter acts on its own measurement of the customer point: the true values,
    or with ``meters.noise_pct`` > 0 the true values times ``1 + noise_pct/100 * z``
    with ``z`` drawn from ``rng.stream(seed, "meter", g, call_no)``, ``call_no`` the
    number of earlier solves of step ``g`` (one draw of v, p, q per solve). The DSO's
    real-time view of the customers is this telemetry (:attr:`sensed`).

Iteration count
    ``iterations`` of a step is the number of command rounds issued in it, by the
    inverters and the DSO together. Once ``feeder.max_control_iterations`` rounds were
    issued nothing acts any more (the would-be moves are dropped) and the step is
    recorded as not converged; its remaining violations are unresolved. The feeder
    therefore solves a step at most ``max_control_iterations + 1`` times (plus the
    uncontrolled solve).

State
    ``q_kvar`` and the Volt-Watt cap are kept across steps (inverters keep their
    set-point); DSO caps and envelopes last one market interval. The feeder clears its
    caps at the first step of an interval, so the Volt-Watt caps and envelopes still in
    force are re-applied by the first round of the interval.

Determinism
    Results depend only on the calls received (and the seeded sensing noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from federates.common.config import StudyFile
from federates.common.grid import CustomerSite
from federates.common.limits import Limit
from federates.common.messages import CurtailmentNotice, DsoCap, OperatingEnvelope
from federates.common.rng import stream
from federates.common.tables import StepArrays, chunk_intervals
from federates.feeder.voltvar import (
    q_pct_to_q_kvar,
    response_alpha,
    volt_var_points,
)
from federates.feeder.voltwatt import volt_watt_points

try:  # np.interp's compiled core: the wrapper's checks cost more than the interpolation
    from numpy._core.multiarray import interp as _interp  # (here on 40 values, twice a solve)
except ImportError:  # pragma: no cover - another numpy layout: the public function
    _interp = np.interp

#: a settling stage oscillates once its residual turns back by at least this fraction of
#: the previous one: r_n . r_(n-1) <= -OSCILLATION_RATIO |r_(n-1)|^2 (module doc)
OSCILLATION_RATIO = 0.5
#: ... in this many successive solves
OSCILLATION_ROUNDS = 2
#: causes of curtailed energy, by code (0 = none)
CAUSES = ("", Limit.VOLT_WATT, Limit.ENVELOPE, Limit.V_MAX, Limit.THERMAL, Limit.VUF, Limit.EXPORT)
CAUSE_CODE = {c: i for i, c in enumerate(CAUSES)}

CURTAILMENT_COLUMNS = {"step": np.int64, "t_s": float, "iteration": np.int64, "participant": str,
                       "group": str, "limit": str, "element": str, "v_pu": float, "export_kw": float,
                       "cap_kw": float}


class InverterFleet:
    """Volt-VAR, Volt-Watt and the export caps of every customer's inverter.

    ``sites`` fixes the customer order; ``inverter_kva`` [kVA] the nameplate apparent
    power of each customer's inverter (0 = no inverter: never gets reactive power nor a
    Volt-Watt cap).
    """

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite], inverter_kva: np.ndarray):
        self.cfg = cfg
        self.ctl = cfg.controllers
        self.timeline = cfg.timeline
        self.seed = cfg.study.seed
        self.noise_pct = float(cfg.meters.noise_pct)
        self.max_iterations = int(cfg.feeder.max_control_iterations)
        self.participants: list[str] = [s.participant for s in sites]
        self.group_names: list[str] = [s.group for s in sites]
        self.n = n = len(self.participants)
        self._index = {p: i for i, p in enumerate(self.participants)}
        if len(self._index) != n:
            raise ValueError("participants in sites must be unique")
        self.inverter_kva = np.asarray(inverter_kva, dtype=float).copy()
        if self.inverter_kva.shape != (n,):
            raise ValueError(f"inverter_kva has shape {self.inverter_kva.shape}; expected ({n},)")
        if np.any(self.inverter_kva < 0):
            raise ValueError("inverter_kva must be >= 0")
        self.has_inverter = self.inverter_kva > 0
        self._with_inverter = np.flatnonzero(self.has_inverter)
        self._all_inverters = bool(self.has_inverter.all())
        vw_cfg = self.ctl.volt_watt
        #: a Volt-Watt cap at or above this is at the rating: no cap [kW] (_vw_cap_in_force)
        self._vw_at_rating_kw = self.inverter_kva - vw_cfg.tolerance_kw / vw_cfg.damping
        self._vw_in_force: tuple[np.ndarray | None, np.ndarray] = (None, np.zeros(0))  # (set-points, caps)
        self._no_move = np.zeros(n, dtype=bool)  # read-only: "nobody moves"
        self._no_move.flags.writeable = False
        # Anderson acceleration of the settling (module doc, "Life cycle")
        self.anderson_depth = int(self.ctl.anderson_depth)
        self._hist_x: list[tuple[np.ndarray, np.ndarray]] = []  # the stage's set-points (q [kvar], cap [kW]) ...
        self._hist_f: list[np.ndarray] = []  # ... and their residuals (target - set-point)
        self._turns_back = 0  # successive solves whose residual turned back (OSCILLATION_RATIO)
        self._accelerating = False  # the stage oscillates: its moves are accelerated

        # set-points and caps in force (the feeder applies them)
        self.q_kvar = np.zeros(n)
        self.vw_cap_kw = self.ctl.volt_watt.p1_pct / 100.0 * self.inverter_kva  # Volt-Watt set-point
        self.dso_cap_kw = np.full(n, np.inf)  # the DSO's curtailment caps
        self.dso_cause = np.zeros(n, dtype=np.int8)  # cause code of each DSO cap
        self.env_cap_kw = np.full(n, np.inf)  # the interval's operating envelope (export)
        self._envelopes: dict[int, np.ndarray] = {}  # interval -> export envelope [kW]

        # the step in progress
        self._g: int | None = None
        self._calls = 0  # solves seen in the step
        self._rounds = 0  # command rounds issued in the step
        self._q_start = self.q_kvar.copy()  # set-points at the end of the previous step
        self._vw_start = self.vw_cap_kw.copy()
        # the curves' corner points, built once (volt_var_points / volt_watt_points)
        self._vv_points = volt_var_points(self.ctl.volt_var)
        self._vw_points = volt_watt_points(self.ctl.volt_watt)
        self._alpha_vv = 1.0  # lag factors of the step (module doc)
        self._alpha_vw = 1.0
        self._alpha_dt_s = -1.0  # the time since the previous step they were computed for [s]
        self._resend = self._no_move  # caps the feeder cleared at the interval start
        #: after :meth:`on_solve` returned None: whether the DSO gets its turn now
        self.dso_may_act = False
        #: the local measurement of the last solve: (v_pu, p_kw) per customer
        self.sensed: tuple[np.ndarray, np.ndarray] = (np.full(n, np.nan), np.full(n, np.nan))

        # per-step records of the chunk in progress (the last call of a step overwrites;
        # federates.common.tables)
        tl = self.timeline
        rec = self._rec = StepArrays(min(tl.n_steps, chunk_intervals(tl, n) * tl.steps_per_interval))
        rec.add("seen", dtype=bool, fill=False)
        rec.add("v_first", (n,), fill=0.0)
        rec.add("v_last", (n,), fill=0.0)
        rec.add("over_any", (n,), dtype=bool, fill=False)
        rec.add("under_any", (n,), dtype=bool, fill=False)
        rec.add("curtailed_kw", (n,), fill=0.0)
        rec.add("cause", (n,), dtype=np.int8, fill=0)  # which cap limits (CAUSES code)
        for name in ("iterations", "n_q", "n_cap"):
            rec.add(name, dtype=np.int64, fill=0)
        rec.add("converged", dtype=bool, fill=False)
        self._curtailment_rows: list[dict[str, Any]] = []
        #: the import the DSO's load limits left unserved: (step, sites, kWh) per step
        self._unserved: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._cause_step: int | None = None  # the step whose limiting cause is still to record

    # ------------------------------------------------------------------ caps
    @property
    def cap_kw(self) -> np.ndarray:
        """Export cap of every customer [kW, inf = none]: the smallest of the Volt-Watt
        cap, the operating envelope and the DSO cap."""
        return np.minimum(np.minimum(self._vw_cap_in_force(), self.dso_cap_kw), self.env_cap_kw)

    def _limiting_cause(self) -> np.ndarray:
        """CAUSES code of the cap that limits each customer now (0 = none)."""
        vw = self._vw_cap_in_force()
        if not np.isfinite(np.minimum(np.minimum(vw, self.env_cap_kw), self.dso_cap_kw)).any():
            return np.zeros(self.n, dtype=np.int8)  # no cap anywhere (most steps)
        caps = np.stack([vw, self.env_cap_kw, self.dso_cap_kw])
        which = np.argmin(caps, axis=0)
        code = np.choose(which, [np.full(self.n, CAUSE_CODE[Limit.VOLT_WATT], dtype=np.int8),
                                 np.full(self.n, CAUSE_CODE[Limit.ENVELOPE], dtype=np.int8),
                                 self.dso_cause])
        return np.where(np.isfinite(caps.min(axis=0)), code, 0).astype(np.int8)

    def _vw_cap_in_force(self) -> np.ndarray:
        """The Volt-Watt caps [kW] that limit anything: inf where Volt-Watt is off, the
        customer has no inverter or the cap is at the inverter's rating (within the stop
        rule of the iteration, ``tolerance_kw / damping``)."""
        vw_cap = self.vw_cap_kw
        held = self._vw_in_force
        if held[0] is vw_cap:  # the set-points are replaced, never written in place
            return held[1]
        if not self.ctl.volt_watt.enabled:
            out = np.full(self.n, np.inf)
        else:
            binding = vw_cap < self._vw_at_rating_kw
            binding &= self.has_inverter
            out = np.where(binding, vw_cap, np.inf)
        out.flags.writeable = False  # shared by the callers until the set-points move
        self._vw_in_force = (vw_cap, out)
        return out

    def on_envelopes(self, k: int, envelopes: Sequence[OperatingEnvelope]) -> None:
        """Export envelopes for interval ``k`` (the DSO's ``envelopes``, or the export the
        constrained clearing accepted): export caps from the first step of ``k``;
        customers without one are not capped by an envelope."""
        if not envelopes:
            return
        caps = np.full(self.n, np.inf)
        for e in envelopes:
            i = self._index.get(e.participant)
            if i is not None and e.interval == k:
                caps[i] = e.export_max_kw
        self._envelopes[k] = caps

    # ------------------------------------------------------------------ the loop
    def _close_step(self) -> None:
        """Record which cap limits each customer at the last solve of the step in progress.

        The caps a solve ran with are those in force when :meth:`on_solve` is called;
        after the last solve of a step nothing changes them any more (a last solve is
        one that brought no move, no DSO cap, or hit the iteration cap), so they are
        read once, when the step is over, not at every solve."""
        if self._cause_step is not None:
            r = self._rec.row(self._cause_step)  # before the array: row() may grow it
            self._rec.cause[r] = self._limiting_cause()
            self._cause_step = None

    def _start_step(self, g: int) -> None:
        self._close_step()
        prev = self._g
        if prev is not None and g < prev:
            raise ValueError(f"step {g} comes after step {prev}; steps must not go back")
        if prev is None or self.timeline.interval_of_step(g) != self.timeline.interval_of_step(prev):
            self.dso_cap_kw[:] = np.inf  # new market interval: DSO caps are cleared
            self.dso_cause[:] = 0
            k = self.timeline.interval_of_step(g)
            self.env_cap_kw = self._envelopes.pop(k, np.full(self.n, np.inf))
            # the feeder clears all its caps; Volt-Watt caps and envelopes are re-applied
            self._resend = np.isfinite(self._vw_cap_in_force()) | np.isfinite(self.env_cap_kw)
        dt_s = (g - prev if prev is not None else 1) * self.timeline.physics_step_s
        if dt_s != self._alpha_dt_s:  # the same every step but after a skipped one
            self._alpha_dt_s = dt_s
            self._alpha_vv = response_alpha(dt_s, self.ctl.volt_var.open_loop_response_time_s)
            self._alpha_vw = response_alpha(dt_s, self.ctl.volt_watt.open_loop_response_time_s)
        self._q_start = self.q_kvar.copy()
        self._vw_start = self.vw_cap_kw.copy()
        self._g = g
        self._calls = 0
        self._rounds = 0
        self._new_stage()
        r = self._rec.row(g)
        self._rec.seen[r] = True
        self._rec.n_q[r] = 0
        self._rec.n_cap[r] = 0

    def _sense(self, g: int, v_pu: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inverters' local measurement of this solve (module doc): (v [pu], p [kW])."""
        if self.noise_pct == 0.0:
            return v_pu.copy(), p_kw.copy()
        true = np.stack([v_pu, p_kw, q_kvar])
        z = stream(self.seed, "meter", g, self._calls).standard_normal(true.shape)
        v, p, _ = true * (1.0 + self.noise_pct / 100.0 * z)
        return v, p

    def on_solve(self, g: int, v_pu: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray,
                 curtailed_p_kw: np.ndarray) -> np.ndarray | None:
        """The inverters' moves after one feeder solve of step ``g``.

        ``v_pu`` [pu], ``p_kw`` [kW, + import], ``q_kvar`` [kvar] true values at each
        customer point; ``curtailed_p_kw`` [kW, >= 0] the export the caps hold back
        now. Returns the mask of customers whose set-point (:attr:`q_kvar`) or cap
        (:attr:`cap_kw`) changed, or None once the inverters have settled (then
        :attr:`dso_may_act` tells whether the DSO decides next).
        """
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")
        if g != self._g:
            self._start_step(g)
        self.dso_may_act = False
        v, p = self._sense(g, np.asarray(v_pu, dtype=float), np.asarray(p_kw, dtype=float),
                           np.asarray(q_kvar, dtype=float))
        self.sensed = (v, p)
        curtailed = np.asarray(curtailed_p_kw, dtype=float)
        r = self._record_solve(g, v, curtailed)
        if not self.ctl.enabled:
            return None
        q_new, q_changed, q_res = self._volt_var_moves(v)
        vw_new, vw_changed, vw_res = self._volt_watt_moves(v)
        if self.anderson_depth and (q_res is not None or vw_res is not None):
            q_new, vw_new = self._anderson(q_new, vw_new, q_res, vw_res)
        moves = q_changed | vw_changed
        moves |= self._resend
        if not np.count_nonzero(moves):
            self.dso_may_act = True  # settled: the DSO's turn
            return None
        if not self._may_act():
            return None
        self.q_kvar = np.where(q_changed, q_new, self.q_kvar)
        n_cap = np.count_nonzero(vw_changed)
        if n_cap:
            self.vw_cap_kw = np.where(vw_changed, vw_new, self.vw_cap_kw)
            self._record_volt_watt(g, vw_changed, v, p, curtailed)
        rec = self._rec
        rec.n_q[r] += np.count_nonzero(q_changed)
        rec.n_cap[r] += n_cap
        self._resend = self._no_move
        return self._issue(moves)

    def _record_solve(self, g: int, v: np.ndarray, curtailed: np.ndarray) -> int:
        """Record what the inverters measured at this solve (the last solve of a step
        decides; the first one's voltages are kept too); the step's row."""
        ctl = self.ctl
        rec, r = self._rec, self._rec.row(g)
        over_any, under_any = rec.over_any[r], rec.under_any[r]  # views: written in place
        if self._calls == 0:
            rec.v_first[r] = v
            np.greater(v, ctl.v_max_pu, out=over_any)
            np.less(v, ctl.v_min_pu, out=under_any)
        else:
            over_any |= v > ctl.v_max_pu
            under_any |= v < ctl.v_min_pu
        self._calls += 1
        rec.v_last[r] = v
        rec.curtailed_kw[r] = curtailed
        self._cause_step = g  # which cap limits: from the caps of the step's last solve (_close_step)
        rec.iterations[r] = self._rounds
        rec.converged[r] = True
        return r

    def _volt_var_moves(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Volt-VAR's damped moves at the sensed voltages ``v`` [pu]: (new q [kvar], which
        inverters move, residual lagged target - q [kvar]; None when Volt-VAR is off).

        The arithmetic of :func:`~federates.feeder.voltvar.q_pct_to_q_kvar` and
        :func:`~federates.feeder.voltvar.lagged_target`, term for
        term (tests/feeder/test_inverter_settling.py checks it against them)."""
        vv = self.ctl.volt_var
        if not vv.enabled:
            return self.q_kvar, self._no_move, None
        # the curve is in the standard's sign (+ = injection); tecosim's q_kvar < 0 is injection
        q_target = -_interp(v, self._vv_points[0], self._vv_points[1]) / 100.0 * self.inverter_kva
        alpha = self._alpha_vv
        if alpha != 1.0:
            q_target = self._q_start + alpha * (q_target - self._q_start)
        q_res = q_target - self.q_kvar
        q_new = self.q_kvar + vv.damping * q_res
        if not self._all_inverters:
            q_new = np.where(self.has_inverter, q_new, 0.0)
        step = np.abs(q_new - self.q_kvar)
        q_changed = step > vv.tolerance_kvar
        if not self._all_inverters:
            q_changed &= self.has_inverter
        return q_new, q_changed, q_res

    def _volt_watt_moves(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Volt-Watt's damped moves at the sensed voltages ``v`` [pu]: (new cap [kW], which
        inverters move, residual lagged target - cap [kW]; None when Volt-Watt is off).
        As :func:`~federates.feeder.voltwatt.p_pct_to_cap_kw` and
        :func:`~federates.feeder.voltvar.lagged_target`, term for term."""
        vw = self.ctl.volt_watt
        if not vw.enabled:
            return self.vw_cap_kw, self._no_move, None
        vw_target = _interp(v, self._vw_points[0], self._vw_points[1]) / 100.0 * self.inverter_kva
        alpha = self._alpha_vw
        if alpha != 1.0:
            vw_target = self._vw_start + alpha * (vw_target - self._vw_start)
        vw_res = vw_target - self.vw_cap_kw
        vw_new = self.vw_cap_kw + vw.damping * vw_res
        if not self._all_inverters:
            vw_new = np.where(self.has_inverter, vw_new, self.vw_cap_kw)
        vw_changed = np.abs(vw_new - self.vw_cap_kw) > vw.tolerance_kw
        if not self._all_inverters:
            vw_changed &= self.has_inverter
        return vw_new, vw_changed, vw_res

    def apply_dso(self, g: int, caps: Sequence[DsoCap], capped: bool = False) -> np.ndarray | None:
        """The DSO's decision after the inverters settled at step ``g``: its new caps
        (a ``cap_kw`` of None lifts the customer's DSO cap). Returns the mask of
        customers whose cap changed (re-applied, then the feeder re-solves), or None:
        no change, or ``capped`` (the DSO wanted to act but the step had used its
        ``max_control_iterations`` rounds; the step is recorded as not converged)."""
        if g != self._g:
            raise ValueError(f"DSO caps for step {g}, but the step in progress is {self._g}")
        if capped:
            r = self._rec.row(g)  # before the array: row() may grow it
            self._rec.converged[r] = False
            return None
        if not caps:
            return None
        changed = np.zeros(self.n, dtype=bool)
        t_s = self.timeline.step_t_s(g)
        cuts = 0
        for c in caps:
            i = self._index.get(c.participant)
            if i is None:
                raise ValueError(f"DSO cap for unknown participant {c.participant!r}")
            changed[i] = True
            if c.cap_kw is None:  # lifted
                self.dso_cap_kw[i] = np.inf
                self.dso_cause[i] = 0
                continue
            cuts += 1
            self.dso_cap_kw[i] = c.cap_kw
            self.dso_cause[i] = CAUSE_CODE[c.limit]
            self._curtailment_rows.append({
                "step": g, "t_s": t_s, "iteration": self._rounds,
                "participant": c.participant, "group": self.group_names[i],
                "limit": c.limit, "element": c.element, "v_pu": c.v_pu,
                "export_kw": c.export_kw, "cap_kw": c.cap_kw,
            })
        r = self._rec.row(g)  # before the array: row() may grow it
        self._rec.n_cap[r] += cuts
        self._new_stage()  # the inverters settle anew around the DSO's caps
        return self._issue(changed)

    def _new_stage(self) -> None:
        """Forget the iterates of the settling stage that ended (module doc, "Life cycle")."""
        self._hist_x = []
        self._hist_f = []
        self._turns_back = 0
        self._accelerating = False

    def _anderson(self, q_new: np.ndarray, vw_new: np.ndarray, q_res: np.ndarray | None,
                  vw_res: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The damped moves ``q_new`` [kvar] / ``vw_new`` [kW], or, once the stage
        oscillates, their Anderson-accelerated version (module doc, "Life cycle").

        ``q_res`` / ``vw_res``: residuals (lagged target - set-point) of this solve, None
        for a function that is off. Which inverters move is still the damped step's stop
        rule, decided by the caller.
        """
        idx = self._with_inverter
        k = idx.size
        zero = np.zeros(k)
        f = np.concatenate([zero if q_res is None else q_res[idx], zero if vw_res is None else vw_res[idx]])
        if self._hist_f and not self._accelerating:
            f_prev = self._hist_f[-1]
            ff = float(f_prev @ f_prev)
            turned_back = ff > 0.0 and float(f @ f_prev) <= -OSCILLATION_RATIO * ff
            self._turns_back = self._turns_back + 1 if turned_back else 0
            self._accelerating = self._turns_back >= OSCILLATION_ROUNDS
        # the set-points as they are (replaced, never written in place): stacked only
        # once the stage accelerates, most stages never do
        self._hist_x.append((self.q_kvar, self.vw_cap_kw))
        self._hist_f.append(f)
        del self._hist_x[:-(self.anderson_depth + 1)], self._hist_f[:-(self.anderson_depth + 1)]
        if not self._accelerating:
            return q_new, vw_new
        ctl = self.ctl
        hist_x = [np.concatenate([q[idx], vw[idx]]) for q, vw in self._hist_x]
        x = hist_x[-1]
        beta = np.concatenate([np.full(k, ctl.volt_var.damping), np.full(k, ctl.volt_watt.damping)])
        d_x = np.diff(np.array(hist_x), axis=0).T  # (2k, m): the last m changes
        d_f = np.diff(np.array(self._hist_f), axis=0).T
        gamma = np.linalg.lstsq(d_f, f, rcond=None)[0]
        x_new = x + beta * f - (d_x + beta[:, None] * d_f) @ gamma
        kva = self.inverter_kva[idx]
        if q_res is not None:
            vv = ctl.volt_var
            q_ends_kvar = q_pct_to_q_kvar(np.array([vv.q1_pct, vv.q4_pct])[:, None], kva[None, :])
            q_new = q_new.copy()
            q_new[idx] = np.clip(x_new[:k], q_ends_kvar.min(axis=0), q_ends_kvar.max(axis=0))
        if vw_res is not None:
            vw = ctl.volt_watt
            vw_new = vw_new.copy()
            vw_new[idx] = np.clip(x_new[k:], min(vw.p1_pct, vw.p2_pct) / 100.0 * kva,
                                  max(vw.p1_pct, vw.p2_pct) / 100.0 * kva)
        return q_new, vw_new

    @property
    def rounds(self) -> int:
        """Command rounds issued so far in the step in progress."""
        return self._rounds

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
                "limit": Limit.VOLT_WATT, "element": self.participants[i], "v_pu": float(v[i]),
                "export_kw": float(export_kw[i]), "cap_kw": float(cap_kw[i]),
            })

    def _may_act(self) -> bool:
        """False (and the step marked not converged) once the iteration cap is reached."""
        if self._rounds >= self.max_iterations:
            r = self._rec.row(self._g)  # before the array: row() may grow it
            self._rec.converged[r] = False
            return False
        return True

    def _issue(self, which: np.ndarray) -> np.ndarray:
        """A command round for ``which``; the step is not converged until a solve
        brings no move and no DSO cap."""
        self._rounds += 1
        r = self._rec.row(self._g)
        self._rec.iterations[r] = self._rounds
        self._rec.converged[r] = False
        return which

    # ------------------------------------------------------------------ reports
    def report(self, k: int) -> list[CurtailmentNotice]:
        """Energy [kWh] each participant lost to caps in interval ``k``, one notice per
        participant and cause (only those > 0).

        The sum over the steps of ``k`` of the final ``curtailed_p_kw * step_h``,
        attributed at each step to the cap that limited (``limit``: ``volt_watt`` or
        the DSO limit ``v_max``, ``thermal``, ``vuf``, ``export``). Energy held back by
        an operating envelope gets no notice (module doc).
        """
        self._close_step()
        if not 0 <= k < self.timeline.n_intervals:
            raise ValueError(f"interval {k} is outside the study (0..{self.timeline.n_intervals - 1})")
        steps = self.timeline.steps_of_interval(k)
        rec = self._rec
        sl = slice(rec.row(steps.start), rec.row(steps.stop - 1) + 1)
        lost_kwh = rec.curtailed_kw[sl] * self.timeline.step_h
        # every customer's energy per cause in one bincount: customer-major, so each
        # (customer, cause) bin adds its steps in step order, as one bincount per customer did
        n_c = len(CAUSES)
        bins = (np.arange(self.n)[:, None] * n_c + rec.cause[sl].T).reshape(-1)
        by_cause = np.bincount(bins, weights=lost_kwh.T.reshape(-1), minlength=self.n * n_c).reshape(self.n, n_c)
        # caps released at the same solve (cause 0) count as v_max; lost energy is >= 0,
        # so "any > 0" is "its sum > 0"
        late = (lost_kwh > 0).any(axis=0) & (by_cause[:, 0] > 0)
        by_cause[late, CAUSE_CODE[Limit.V_MAX]] += by_cause[late, 0]
        notices = []
        for i, c in zip(*np.nonzero(by_cause > 0), strict=True):
            if c == 0 or CAUSES[c] == Limit.ENVELOPE:
                continue
            notices.append(CurtailmentNotice(participant=self.participants[i], interval=k,
                                             curtailed_kwh=float(by_cause[i, c]), limit=CAUSES[c]))
        return notices

    def note_load_limits(self, g: int, limits) -> None:
        """``curtailments`` rows for the DSO's load limits that start at step ``g``
        (``federates.common.messages.LoadLimit``: limit ``load_limit``, element the
        violation's, v_pu the customer's voltage the DSO saw, export_kw the negative of
        the import it saw, cap_kw the import cap)."""
        t_s = self.timeline.step_t_s(g)
        for x in limits:
            self._curtailment_rows.append({
                "step": g, "t_s": t_s, "iteration": 0, "participant": x.participant,
                "group": self.group_names[self._index[x.participant]], "limit": Limit.LOAD_LIMIT,
                "element": f"{x.limit}:{x.element}", "v_pu": float(x.v_pu), "export_kw": -float(x.import_kw),
                "cap_kw": float(x.import_max_kw),
            })

    def note_demand_response(self, g: int, calls, v_pu: np.ndarray, p_kw: np.ndarray) -> None:
        """``curtailments`` rows for the DSO's demand-response calls of the interval that
        starts at step ``g`` (``federates.common.messages.DemandResponseCall``: limit
        ``demand_response``, iteration 0, element the call's ``<limit>:<element>``, v_pu
        and export_kw = -p_kw the customer's at step ``g``'s final solve [pu, kW; NaN
        when not at hand], cap_kw the import cut asked [kW]). Noted once step ``g`` is
        over: placed after the step's ``load_limit`` rows and before its other rows."""
        t_s = self.timeline.step_t_s(g)
        rows = []
        for c in calls:
            i = self._index[c.participant]
            rows.append({
                "step": g, "t_s": t_s, "iteration": 0, "participant": c.participant,
                "group": self.group_names[i], "limit": Limit.DEMAND_RESPONSE,
                "element": f"{c.limit}:{c.element}", "v_pu": float(v_pu[i]), "export_kw": -float(p_kw[i]),
                "cap_kw": float(c.reduce_kw),
            })
        old = self._curtailment_rows
        at = len(old)
        while at and (old[at - 1]["step"] > g or (old[at - 1]["step"] == g and old[at - 1]["limit"] != Limit.LOAD_LIMIT)):
            at -= 1
        old[at:at] = rows

    def note_unserved(self, g: int, unserved_kw: np.ndarray) -> None:
        """The import [kW] the load limits left unserved in step ``g``'s final solve:
        ``curtailment_energy`` rows (limit ``load_limit``) for those > 0."""
        at = np.flatnonzero(unserved_kw > 0)
        if len(at):
            self._unserved.append((g, at, unserved_kw[at] * self.timeline.step_h))

    def _curtailment_energy(self, local: np.ndarray) -> pd.DataFrame:
        """``curtailment_energy``: per step, participant and cause the PV energy held back
        [kWh] (step, t_s, participant, limit, energy_kwh), rows > 0 only; and the import
        the DSO's load limits left unserved (limit ``load_limit``) after each step's PV
        rows."""
        rec = self._rec
        seen = np.zeros(len(rec.seen), dtype=bool)
        seen[local] = True
        rows, cols = np.nonzero((rec.curtailed_kw > 0) & seen[:, None])
        e = rec.curtailed_kw[rows, cols] * self.timeline.step_h
        cause = rec.cause[rows, cols]
        cause = np.where(cause == 0, CAUSE_CODE[Limit.V_MAX], cause)
        steps = rows + rec.g0
        out = pd.DataFrame({
            "step": steps.astype(np.int64),
            "t_s": (steps * self.timeline.physics_step_s).astype(float),
            "participant": np.asarray(self.participants, dtype=object)[cols].astype(str),
            "limit": np.asarray(CAUSES, dtype=object)[cause].astype(str),
            "energy_kwh": e.astype(float),
        })
        if not self._unserved:
            return out
        g = np.concatenate([np.full(len(at), step) for step, at, _ in self._unserved]).astype(np.int64)
        at = np.concatenate([at for _, at, _ in self._unserved])
        unserved = pd.DataFrame({
            "step": g, "t_s": (g * self.timeline.physics_step_s).astype(float),
            "participant": np.asarray(self.participants, dtype=object)[at].astype(str),
            "limit": str(Limit.LOAD_LIMIT), "energy_kwh": np.concatenate([e for _, _, e in self._unserved]),
        })
        both = pd.concat([out, unserved], ignore_index=True)
        return both.sort_values("step", kind="stable").reset_index(drop=True).astype(out.dtypes.to_dict())

    def drain_tables(self) -> dict[str, pd.DataFrame]:
        """:meth:`tables`, then forgotten (call between steps; federates.common.tables)."""
        out = self.tables()
        self._curtailment_rows = []
        self._unserved = []
        self._rec.reset(self._rec.g0 if self._g is None else self._g + 1)
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """``control_violations``, ``curtailments``, ``control``, ``curtailment_energy``
        of the steps since the last drain (all of them for a run never drained).

        control_violations: the inverters' own view (from the measurements they acted
        on; the feeder's ``violations`` table is the physical record of every limit):
        one row per step and customer and limit violated at any solve of the step:
        step, t_s [s], participant, limit, v_pu (final) [pu], v_pu_initial (first
        solve) [pu], stage ("final"), resolved (the final state is within the limit),
        iterations.
        curtailments: one row per DSO cap change (limit v_max, thermal, vuf or export;
        element the customer, line/transformer, bus or "source" whose limit caused it;
        with policy group_voltage the group and v_pu its worst voltage) and per binding
        Volt-Watt cap change (limit "volt_watt"), and one per DSO load limit
        (:meth:`note_load_limits`) and demand-response call (:meth:`note_demand_response`):
        step, t_s, iteration, participant, group, limit, element, v_pu [pu], export_kw
        [kW, measured], cap_kw [kW, the new cap of that limit; the import cap; the cut asked].
        control: one row per step: step, t_s, iterations, converged, n_q_changes,
        n_cap_changes (DSO and Volt-Watt caps).
        """
        self._close_step()
        rec = self._rec
        local = np.flatnonzero(rec.seen)
        steps = local + rec.g0
        t_s = steps * self.timeline.physics_step_s
        parts = []
        for limit, any_mask, bad in (
            (Limit.V_MAX, rec.over_any, rec.v_last > self.ctl.v_max_pu),
            (Limit.V_MIN, rec.under_any, rec.v_last < self.ctl.v_min_pu),
        ):
            rows, cols = np.nonzero(any_mask[local])
            lr = local[rows]
            g = lr + rec.g0
            parts.append(pd.DataFrame({
                "_site": cols,
                "step": g.astype(np.int64),
                "t_s": (g * self.timeline.physics_step_s).astype(float),
                "participant": np.asarray(self.participants, dtype=object)[cols],
                "limit": limit,
                "v_pu": rec.v_last[lr, cols],
                "v_pu_initial": rec.v_first[lr, cols],
                "stage": "final",
                "resolved": ~bad[lr, cols],
                "iterations": rec.iterations[lr],
            }))
        violations = (pd.concat(parts, ignore_index=True)
                      .sort_values(["step", "limit", "_site"], kind="stable")
                      .drop(columns="_site")
                      .reset_index(drop=True)
                      .astype({"participant": str, "limit": str, "stage": str}))
        curtailments = pd.DataFrame(self._curtailment_rows, columns=list(CURTAILMENT_COLUMNS))
        curtailments = curtailments.astype(CURTAILMENT_COLUMNS)
        control = pd.DataFrame({
            "step": steps.astype(np.int64),
            "t_s": t_s.astype(float),
            "iterations": rec.iterations[local],
            "converged": rec.converged[local],
            "n_q_changes": rec.n_q[local],
            "n_cap_changes": rec.n_cap[local],
        })
        return {"control_violations": violations, "curtailments": curtailments, "control": control,
                "curtailment_energy": self._curtailment_energy(local)}
