"""Report by exception: when the feeder must show the DSO its view of a control round.

A SCADA system does not have its master station decide on every point every cycle:
field devices report by exception, when a value crosses an alarm limit. tecosim's DSO
(``ControllersRole.on_view``) works the same way. It acts on a view only for a limit
violated in it, or to finish what it started earlier in the market interval:

* the curtailment policies on the feeder's sensitivities
  (:func:`federates.controllers.dso.violated_constraints`) act on a customer voltage
  above ``v_max``, a line or transformer loaded above ``thermal_max_pct`` with reverse
  flow, a bus voltage unbalance above ``vuf_max_pct`` and a substation export above
  ``substation_export_max_kw`` (the last three from the SCADA part of the view);
* ``group_voltage`` acts on a customer voltage above ``v_max`` only;
* demand response (``controllers.demand_response``) notes a customer voltage below
  ``v_min`` and a line or transformer loaded above ``thermal_max_pct`` with forward
  flow, to call flexible demand in the next interval;
* business started: caps set for a limit the cuts proved unable to relieve are lifted
  again, and the observed relief of the last cut is compared with the predicted one.
  The DSO says in every reply whether it has any (``DsoReply.quiet`` is False then).

So the feeder hands the DSO a view only when the inverters leave it the turn
(``DsoView.may_act``) and an :class:`Alarms` limit is crossed or the DSO's last reply
was not quiet (every market interval starts quiet: the DSO's caps and what it learnt
end with the interval). Any other view would get an empty reply and change nothing
in the DSO: the run's results are those of a DSO shown every view
(tests/federation/test_report_by_exception.py checks it), with one HELICS exchange per
alarm instead of one per physics step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federates.common.messages import DsoView


def dso_wants_scada(cfg) -> bool:
    """Whether the DSO needs the feeder's SCADA values with every view: its
    sensitivity-based curtailment (thermal, unbalance, substation export) or its demand
    response (forward-flow overloads). One rule for the feeder and the DSO."""
    ctl = cfg.controllers
    cur = ctl.curtailment
    return bool(ctl.enabled and ((cur.enabled and cur.policy != "group_voltage") or ctl.demand_response.enabled))


def dso_curtails_on_sensitivities(cfg) -> bool:
    """Whether the DSO curtails by a sensitivity policy (proportional, sensitivity,
    least_cost) rather than ``group_voltage`` or not at all."""
    cur = cfg.controllers.curtailment
    return bool(cfg.controllers.enabled and cur.enabled and cur.policy != "group_voltage")


@dataclass(frozen=True)
class Alarms:
    """The limits whose crossing calls the DSO (None: that kind never does)."""

    enabled: bool  # controllers.enabled and (its curtailment or its demand response)
    v_max_pu: float  # customer voltage [pu]
    thermal_max_pct: float | None  # element loading [%] with reverse flow (SCADA)
    vuf_max_pct: float | None  # bus voltage unbalance factor [%] (SCADA)
    export_max_kw: float | None  # substation export [kW] (SCADA)
    v_min_pu: float | None = None  # customer voltage [pu] below: demand response only
    forward_thermal: bool = False  # overloads with forward flow too: demand response only

    @classmethod
    def from_config(cls, cfg) -> Alarms:
        """The limits the study's DSO acts on (``cfg``: a ``federates.common.config.StudyFile``)."""
        ctl, lim = cfg.controllers, cfg.limits
        dr = bool(ctl.enabled and ctl.demand_response.enabled)
        if dr and not ctl.curtailment.enabled:  # only demand response: only its limits
            return cls(enabled=True, v_max_pu=float("inf"),
                       thermal_max_pct=float(lim.thermal_max_pct) if lim.thermal else None,
                       vuf_max_pct=None, export_max_kw=None, v_min_pu=float(ctl.v_min_pu),
                       forward_thermal=True)
        return cls(enabled=bool(ctl.enabled and ctl.curtailment.enabled),
                   v_max_pu=float(ctl.v_max_pu), v_min_pu=float(ctl.v_min_pu) if dr else None,
                   forward_thermal=dr,
                   thermal_max_pct=float(lim.thermal_max_pct) if lim.thermal else None,
                   vuf_max_pct=None if lim.vuf_max_pct is None else float(lim.vuf_max_pct),
                   export_max_kw=(None if lim.substation_export_max_kw is None
                                  else float(lim.substation_export_max_kw)))

    def raised(self, view: DsoView) -> bool:
        """Whether ``view`` crosses any of the limits (the SCADA ones only when the view
        carries SCADA values). NaN never crosses a limit."""
        if not self.enabled:
            return False
        if (np.asarray(view.v_pu) > self.v_max_pu).any():
            return True
        if self.v_min_pu is not None and (np.asarray(view.v_pu) < self.v_min_pu).any():
            return True
        s = view.scada
        if s is None:
            return False
        # comparisons with NaN are False and quiet (no errstate: its context costs more
        # than the comparisons, and the feeder asks this at every physics step)
        if self.thermal_max_pct is not None:
            over = np.asarray(s.loading_pct) > self.thermal_max_pct
            if (over if self.forward_thermal else over & (np.asarray(s.p_kw) < 0)).any():
                return True
        if self.vuf_max_pct is not None and (np.asarray(s.vuf_pct) > self.vuf_max_pct).any():
            return True
        return self.export_max_kw is not None and -float(s.source_p_kw) > self.export_max_kw
