"""The controllers role: the DSO's real-time curtailment and its ex-ante envelopes.

The customers' inverters (IEEE 1547 Volt-VAR and Volt-Watt) are devices on the feeder
and settle inside the feeder's own loop (:mod:`federates.feeder.inverters`). Once they
have settled in a control round of physics step ``g``, the feeder hands the DSO its
view of the grid (:class:`~federates.common.messages.DsoView`: the customers'
telemetry and the SCADA values) and :meth:`ControllersRole.on_view` decides:

* for every limit still violated (customer over-voltage, reverse-flow overload of a
  line or transformer, voltage unbalance, substation export cap; the last three from
  the SCADA view) the DSO cuts exports by the configured ``policy`` on the feeder's
  sensitivities (:mod:`federates.controllers.dso`,
  :class:`federates.controllers.dso_agent.DsoAgent`); with policy ``group_voltage``
  the earlier over-voltage-only heuristic of :mod:`federates.controllers.curtailment`;
* caps set for a limit the cuts proved unable to relieve are lifted again;
* nothing left to do: no caps (the step is over).

The decision is a :class:`DsoReply`: the DSO caps that changed (each a
:class:`~federates.common.messages.DsoCap`), after which the feeder re-solves and the
inverters settle again, or ``capped`` when the DSO wanted to act but the step had used
its ``feeder.max_control_iterations`` rounds (the step is recorded as not converged).
It also says whether the DSO is ``quiet``: whether a view crossing none of its alarm
limits would change nothing (:mod:`federates.common.alarms`; the feeder shows the DSO
only the views that cross one, or every view while it is not quiet).

DSO caps last one market interval: they are cleared at the first view of each
interval. Per interval the DSO also takes the AMI readings and the market's
confirmations, and with ``market.network_aware`` gives operating envelopes or grid
constraints for the next clearing.

Determinism
    Results depend only on the calls received; no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from federates.common.alarms import dso_curtails_on_sensitivities, dso_wants_scada
from federates.common.config import StudyFile
from federates.common.grid import CustomerSite
from federates.common.limits import Limit, limit_key
from federates.common.messages import (
    DemandResponseCall,
    DsoCap,
    DsoView,
    LoadLimit,
    OperatingEnvelope,
)
from federates.controllers.curtailment import export_caps, group_codes
from federates.controllers.demand_response import DemandResponse
from federates.controllers.dso_agent import DsoAgent
from federates.controllers.load_limit import LoadLimiter
from federates.feeder.sensitivity import load_sensitivities, needs_sensitivities
from federates.prosumers.agents import flex_kw_of, inverter_kva_of

if TYPE_CHECKING:
    from federates.common.study import Study


@dataclass
class DsoReply:
    """The DSO's decision in one round: ``caps`` that changed, or ``capped`` (it wanted
    to act but the step's rounds are used up). Falsy when there is nothing to do.
    ``quiet``: until the interval ends, only a view crossing an alarm limit could make
    the DSO act (:mod:`federates.common.alarms`)."""

    caps: list[DsoCap] = field(default_factory=list)
    capped: bool = False
    quiet: bool = True

    def __bool__(self) -> bool:
        return bool(self.caps) or self.capped


class ControllersRole:
    """The DSO of one study: curtailment caps per control round, envelopes per interval.

    ``sites`` fixes the customer order; ``inverter_kva`` [kVA] each customer's inverter
    nameplate (its export cannot exceed it; envelopes use it).
    """

    @classmethod
    def from_study(cls, study: Study) -> ControllersRole:
        """The study's DSO, with its linear model of the feeder when its curtailment or
        the network-aware clearing needs one (``sensitivities.npz`` in the run folder)."""
        sens = load_sensitivities(study) if needs_sensitivities(study.cfg) else None
        return cls(study.cfg, study.sites, inverter_kva_of(study.cfg, study.sites), sensitivities=sens,
                   flex_kw=flex_kw_of(study.cfg, study.sites))

    def __init__(self, cfg: StudyFile, sites: Sequence[CustomerSite], inverter_kva: np.ndarray,
                 *, sensitivities=None, flex_kw: np.ndarray | None = None):
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

        cur = self.ctl.curtailment
        #: the DSO curtails by a sensitivity policy (proportional, sensitivity, least_cost)
        self.curtails = dso_curtails_on_sensitivities(cfg)
        #: the DSO needs the feeder's SCADA view with every round (thermal, unbalance,
        #: substation; forward-flow overloads for its demand response)
        self.want_scada = dso_wants_scada(cfg)
        self.network_aware = cfg.market.network_aware
        needs_dso = self.curtails or self.network_aware != "off"
        dr = self.ctl.demand_response
        if (needs_dso or (self.ctl.enabled and dr.enabled)) and sensitivities is None:
            raise ValueError("curtailment policy "
                             f"{cur.policy!r} / market.network_aware {self.network_aware!r} need the "
                             "feeder's sensitivities (sensitivities.npz, written by prepare_run)")
        self.dso = DsoAgent(cfg, self.participants, self.inverter_kva, sensitivities) if needs_dso else None
        lim = cfg.limits
        #: demand-response calls for the next interval (``controllers.demand_response``)
        self.demand_response: DemandResponse | None = (
            DemandResponse(self.participants, np.zeros(n) if flex_kw is None else flex_kw,
                           v_min_pu=float(self.ctl.v_min_pu), margin_pu=dr.margin_pu,
                           dv_pu_per_kw=sensitivities.customer_dv_pu_per_kw,
                           thermal_max_pct=float(lim.thermal_max_pct) if lim.thermal else None,
                           thermal_margin_pct=dr.thermal_margin_pct,
                           dloading_pct_per_kw=sensitivities.customer_dloading_pct_per_kw,
                           elements=list(sensitivities.elements), release_fraction=dr.release_fraction)
            if self.ctl.enabled and dr.enabled else None)
        #: involuntary load limits after demand response (``demand_response.load_limit``)
        self.load_limiter: LoadLimiter | None = (
            LoadLimiter(self.participants, dr.load_limit_kw, v_min_pu=float(self.ctl.v_min_pu),
                        margin_pu=dr.margin_pu, dv_pu_per_kw=sensitivities.customer_dv_pu_per_kw,
                        thermal_max_pct=float(lim.thermal_max_pct) if lim.thermal else None,
                        thermal_margin_pct=dr.thermal_margin_pct,
                        dloading_pct_per_kw=sensitivities.customer_dloading_pct_per_kw,
                        elements=list(sensitivities.elements))
            if self.demand_response is not None and dr.load_limit == "on" else None)
        self._load_limits: dict[int, list[LoadLimit]] = {}
        #: (elements, buses) of the SCADA vector, None without SCADA
        self.scada_shape: tuple[int, int] | None = (
            (len(sensitivities.elements), len(sensitivities.buses))
            if sensitivities is not None and self.want_scada else None)

        self.dso_cap_kw = np.full(n, np.inf)  # the DSO's caps in force
        self.dso_reason = np.full(n, "", dtype=object)  # "limit:element" of each DSO cap
        self._g: int | None = None
        self._envelope_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ per round
    def _start_step(self, g: int) -> None:
        prev = self._g
        if prev is not None and g < prev:
            raise ValueError(f"step {g} comes after step {prev}; steps must not go back")
        if prev is None or self.timeline.interval_of_step(g) != self.timeline.interval_of_step(prev):
            self.dso_cap_kw[:] = np.inf  # new market interval: DSO caps are cleared
            self.dso_reason[:] = ""
            if self.dso is not None:
                self.dso.new_interval()
        self._g = g

    def on_view(self, view: DsoView) -> DsoReply:
        """The DSO's decision for one control round of step ``view.step`` (module doc)."""
        reply = self._decide(view)
        reply.quiet = self.quiet
        return reply

    def demand_response_calls(self, k: int) -> list[DemandResponseCall]:
        """At the end of interval ``k - 1``'s views: the calls for ``k`` (none without
        ``controllers.demand_response``); with ``load_limit: on`` also decides the load
        limits for ``k`` (:meth:`load_limits`)."""
        if self.demand_response is None:
            return []
        in_force = self.demand_response.in_force  # the calls of k - 1, before they are renewed
        limited = self.load_limiter is not None and self.load_limiter.in_force
        calls = self.demand_response.calls(k, hold=limited)
        if self.load_limiter is not None:
            self._load_limits[k] = self.load_limiter.limits(k, in_force)
        return calls

    def load_limits(self, k: int) -> list[LoadLimit]:
        """The load limits for ``k`` (``controllers.demand_response.load_limit``), decided
        with the calls for ``k`` (:meth:`demand_response_calls`, called first): to the
        feeder, which holds each limited customer's import to its limit through ``k``."""
        return self._load_limits.pop(k, [])

    @property
    def quiet(self) -> bool:
        """Whether a view crossing no alarm limit would leave everything as it is: no cut
        whose relief is still to be checked, no cap set for a limit found ineffective
        (to be lifted). Only the sensitivity policies keep such business."""
        dso = self.dso
        if not self.curtails:  # group_voltage, or no curtailment: no business kept
            return True
        if dso.checking:
            return False
        return not (np.isin(self.dso_reason, list(dso.ignored)) & np.isfinite(self.dso_cap_kw)).any()

    def _decide(self, view: DsoView) -> DsoReply:
        g = view.step
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")
        if g != self._g:
            self._start_step(g)
        if self.demand_response is not None:
            self.demand_response.observe(view)
        if self.load_limiter is not None:
            self.load_limiter.observe(view)
        if not view.may_act:
            return DsoReply()
        v = np.asarray(view.v_pu, dtype=float)
        p = np.asarray(view.p_kw, dtype=float)
        if v.shape != (self.n,) or p.shape != (self.n,):
            raise ValueError(f"DSO view of step {g}: v_pu {v.shape} / p_kw {p.shape}, expected ({self.n},)")
        # the sensitivity policies (the DSO also exists for group_voltage when the
        # market is network-aware: its envelopes and constraints, not its cuts)
        if self.curtails:
            return self._decide_on_sensitivities(view, v, p)
        if self.ctl.curtailment.enabled and (v > self.ctl.v_max_pu).any():
            return self._decide_group_voltage(view, v, p)
        return DsoReply()

    def _decide_on_sensitivities(self, view: DsoView, v: np.ndarray, p: np.ndarray) -> DsoReply:
        """Policies proportional, sensitivity, least_cost: first lift the caps set for a
        limit the cuts proved unable to relieve, else cut what the DSO's plan says."""
        if view.scada is None:
            raise ValueError(f"step {view.step}: the DSO needs the feeder's SCADA values")
        plan = self.dso.plan(v, p, view.scada)  # also learns which limits the cuts cannot relieve
        lift = np.isin(self.dso_reason, list(self.dso.ignored)) & np.isfinite(self.dso_cap_kw)
        if lift.any():
            if view.rounds >= self.max_iterations:
                return DsoReply(capped=True)
            self.dso_cap_kw[lift] = np.inf
            self.dso_reason[lift] = ""
            return DsoReply([DsoCap(participant=self.participants[i], cap_kw=None)
                             for i in np.flatnonzero(lift)])
        if plan is None or not (plan.cut_kw > 0).any():
            return DsoReply()
        if view.rounds >= self.max_iterations:
            return DsoReply(capped=True)
        export_kw = np.maximum(-p, 0.0)
        changed = plan.cut_kw > 0
        new_cap = np.minimum(self.dso_cap_kw, np.maximum(export_kw - plan.cut_kw, 0.0))
        caps = []
        for i in np.flatnonzero(changed):
            caps.append(DsoCap(participant=self.participants[i], cap_kw=float(new_cap[i]),
                               limit=plan.limit[i], element=plan.element[i], v_pu=float(v[i]),
                               export_kw=float(export_kw[i])))
            self.dso_reason[i] = limit_key(plan.limit[i], plan.element[i])
        self.dso_cap_kw = np.where(changed, new_cap, self.dso_cap_kw)
        return DsoReply(caps)

    def _decide_group_voltage(self, view: DsoView, v: np.ndarray, p: np.ndarray) -> DsoReply:
        """Policy group_voltage, a customer over ``v_max``: the over-voltage heuristic's
        caps per service-transformer group (federates.controllers.curtailment)."""
        cur = self.ctl.curtailment
        decision = export_caps(v, p, self.dso_cap_kw, self.groups, self.ctl.v_max_pu,
                               cur.margin_pu, cur.gain_per_pu)
        if not decision.changed.any():
            return DsoReply()
        if view.rounds >= self.max_iterations:
            return DsoReply(capped=True)
        caps = [DsoCap(participant=self.participants[i], cap_kw=float(decision.cap_kw[i]),
                       limit=Limit.V_MAX, element=self.group_names[i],
                       v_pu=float(decision.v_violation_pu[i]),
                       export_kw=float(decision.export_kw[i]))
                for i in np.flatnonzero(decision.changed)]
        self.dso_cap_kw = decision.cap_kw.copy()
        return DsoReply(caps)

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
        [] otherwise or before any AMI data). They go to the market (which clips the
        orders) and to the feeder's inverters (which hold the export envelope)."""
        if self.dso is None or self.network_aware != "envelopes":
            return []
        env = self.dso.envelopes(k)
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

    # ------------------------------------------------------------------ tables
    def drain_tables(self) -> dict[str, pd.DataFrame]:
        """:meth:`tables`, then forgotten (federates.common.tables)."""
        out = self.tables()
        self._envelope_rows = []
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """``dso_envelopes`` (with a DSO): every operating envelope the DSO gave
        (interval, participant, export_max_kw, import_max_kw [kW], binding)."""
        if self.dso is None:
            return {}
        return {"dso_envelopes": pd.DataFrame(
            self._envelope_rows,
            columns=["interval", "participant", "export_max_kw", "import_max_kw", "binding"],
        ).astype({"interval": np.int64, "participant": str, "export_max_kw": float,
                  "import_max_kw": float, "binding": str})}
