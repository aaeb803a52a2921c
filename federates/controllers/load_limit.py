"""The DSO's involuntary action after demand response: smart-meter load limiters
(``controllers.demand_response.load_limit: on``).

Demand response asks; it may not be enough (the enrolled devices were few, or already
cut to nothing, or the household's own load is the problem). So, over the views of
interval ``k`` (:meth:`LoadLimiter.observe`), the DSO notes each customer's lowest
voltage below ``v_min`` itself (not the demand response's margin: a real violation) and,
with its SCADA, each line or transformer's highest loading above ``thermal_max_pct``
with forward flow, with every customer's import at that moment; at the end of ``k``
(:meth:`LoadLimiter.limits`) it turns them into import limits for ``k + 1``:

* nothing is limited unless demand-response calls were in force in ``k`` or limits
  already stand (demand response has its chance first);
* the limits in force in ``k`` stand while ``k`` still saw such a violation, and are all
  lifted after an interval without one (an involuntary limit is not wound down);
* for the worst violation first, the customers not yet limited whose import then was
  above the limiter's setting ``cap_kw`` are limited in order of the relief the DSO's
  linear model gives (``sens_i x (import_i - cap_kw)``, the feeder's sensitivities as
  for demand response: ``dv_pu_per_kw[j, i]`` for customer ``j``'s voltage,
  ``-dloading_pct_per_kw[e, i]`` for element ``e``'s loading) until the estimated
  relief covers the violation back to its margin (``v_min + margin_pu``, ``thermal_max
  - thermal_margin_pct``); later violations count the relief already given.

A limited customer's import above ``cap_kw`` is not served for the whole interval: its
devices give way first (``federates.prosumers.flex.demand``, ``flex.load_limited_kwh``)
and the feeder cuts what is left at every controlled solve (``federates.feeder.role``,
recorded as ``curtailments`` and ``curtailment_energy``, cause ``load_limit``).
"""

from __future__ import annotations

import numpy as np

from federates.common.limits import Limit
from federates.common.messages import DsoView, LoadLimit
from federates.controllers.demand_response import Seen, customer_row, note_worst
from federates.feeder.sensitivity import PointMatrix

_TOL = 1e-9


class LoadLimiter:
    """The load limits of one DSO (module docstring). ``cap_kw`` [kW]: the limiter's
    setting; the sensitivities as :class:`federates.controllers.demand_response.DemandResponse`."""

    def __init__(self, participants: list[str], cap_kw: float, *, v_min_pu: float, margin_pu: float,
                 dv_pu_per_kw: np.ndarray | PointMatrix, thermal_max_pct: float | None = None, thermal_margin_pct: float = 0.0,
                 dloading_pct_per_kw: np.ndarray | PointMatrix | None = None, elements: list[str] | None = None) -> None:
        self.participants = list(participants)
        self.cap_kw = float(cap_kw)
        self.v_min_pu = float(v_min_pu)
        self.v_floor_pu = float(v_min_pu) + float(margin_pu)
        self.dv = PointMatrix.of(dv_pu_per_kw, rows_by_point=True)
        self.thermal_max_pct = (None if thermal_max_pct is None or dloading_pct_per_kw is None
                                else float(thermal_max_pct))
        self.thermal_target_pct = None if self.thermal_max_pct is None else self.thermal_max_pct - thermal_margin_pct
        self.dloading = (None if dloading_pct_per_kw is None
                         else PointMatrix.of(dloading_pct_per_kw, rows_by_point=False))
        self.elements = list(elements or [])
        self._voltage: dict[int, Seen] = {}
        self._thermal: dict[int, Seen] = {}
        n = len(self.participants)
        self._limited = np.zeros(n, dtype=bool)  # the limits in force
        self._why: list[tuple[str, str, float, float]] = [("", "", 0.0, 0.0)] * n  # limit, element, import, v

    @property
    def in_force(self) -> bool:
        """Whether limits are in force: those of the last :meth:`limits` (before the next)."""
        return bool(self._limited.any())

    def observe(self, view: DsoView) -> None:
        """Note the view's customers below ``v_min`` and elements above the thermal
        limit with forward flow (the worst of each in the interval)."""
        note_worst(view, self._voltage, self._thermal, v_below_pu=self.v_min_pu, v_floor_pu=self.v_floor_pu,
                   loading_above_pct=self.thermal_max_pct, loading_target_pct=self.thermal_target_pct)

    def limits(self, interval: int, dr_in_force: bool) -> list[LoadLimit]:
        """The limits for ``interval`` from what was noted since the last call (forgets
        it); ``dr_in_force``: demand-response calls were in force in the interval seen."""
        violated = bool(self._voltage or self._thermal)
        if not violated:
            self._limited[:] = False
        elif dr_in_force or self._limited.any():
            todo = [(seen.need, Limit.V_MIN, self.participants[j], customer_row(self.dv, j), seen)
                    for j, seen in self._voltage.items()]
            for e, seen in self._thermal.items():
                todo.append((seen.need, Limit.THERMAL, self.elements[e], -customer_row(self.dloading, e), seen))
            relief = np.zeros(len(self.participants))  # the import the new limits take off [kW]
            for need, limit, element, sens, seen in sorted(todo, key=lambda t: -t[0]):
                left = need - float(sens @ relief)
                excess = np.maximum(seen.import_kw - self.cap_kw, 0.0)
                gain = np.where(~self._limited & (sens > 0) & (excess > _TOL), sens * excess, 0.0)
                for i in np.argsort(-gain, kind="stable"):
                    if left <= _TOL or gain[i] <= 0:
                        break
                    self._limited[i] = True
                    relief[i] = excess[i]
                    left -= gain[i]
                    self._why[i] = (str(limit), element, float(seen.import_kw[i]), float(seen.v_pu[i]))
        self._voltage.clear()
        self._thermal.clear()
        return [LoadLimit(self.participants[i], interval, self.cap_kw, *self._why[i])
                for i in np.flatnonzero(self._limited)]
