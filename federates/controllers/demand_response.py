"""The DSO's demand response: flexible demand called down ahead of an interval because
demand pushed the last one past a limit.

A DSO cannot cut a household's demand within seconds as it caps an inverter's export;
what it can do is ask the loads enrolled for demand response (EV chargers, heat pumps /
air conditioners: ``prosumers.agents.flex_kw_of``) to draw less over the next market
interval. So, over the views of interval ``k`` (:meth:`DemandResponse.observe`; the
feeder shows the DSO a view whenever a customer is below ``v_min`` or an element is
overloaded, ``federates.common.alarms``) it notes

* each customer's lowest voltage below ``v_min + margin_pu``, with every customer's
  import at that moment, and
* with its SCADA, each line or transformer's highest loading above ``thermal_max_pct -
  thermal_margin_pct`` with forward flow (power towards the customers), with the imports;

and at the end of ``k`` (:meth:`DemandResponse.calls`) it turns them into calls for
``k + 1``. The cuts in force in ``k`` are kept whole while ``k`` still saw a violation
(the voltages it saw are with them in place) and otherwise released by
``release_fraction`` each interval (a demand-response event winds down rather than
ending at once: the deferred demand would all come back in one interval); they are
also kept whole through an interval the DSO's load limits were in force in
(``federates.controllers.load_limit``: it saw the voltages with the limits, not without
them; the paid calls are not swapped for involuntary ones). Then, for the
worst violation first, the further cut that brings it back to its margin on
the DSO's linear model (the feeder's sensitivities, ``federates.feeder.sensitivity``:
a kW less import at customer ``i`` raises customer ``j``'s voltage by
``dv_pu_per_kw[j, i]`` and changes an element's loading by ``dloading_pct_per_kw[e, i]``)
is shared among the enrolled customers in proportion to their sensitivity to it
(least-squares: ``cut_i = need * s_i / sum(s^2)``), each cut at most what the customer
imported then and its flexible rating; a customer that reaches its bound drops out and
the rest is shared again. Later violations count the cuts already given. One call per
customer and interval (the largest cut it was given, with the limit that asked most).

This is a persistence rule: what the last interval's demand did, the next one's would
do again. Cuts ask for kW on average over the interval; each prosumer decides how its
devices deliver them and reports what it cut against its own plan (the prosumers'
``demand_response`` table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federates.common.limits import Limit
from federates.common.messages import DemandResponseCall, DsoView
from federates.feeder.sensitivity import PointMatrix

_TOL = 1e-9


@dataclass
class Seen:
    """The worst of one limit in the interval: how far past its margin, and every
    customer's import [kW] and voltage [pu] then."""

    need: float  # [pu] or [%] beyond the margin
    import_kw: np.ndarray
    v_pu: np.ndarray


def note_worst(view: DsoView, voltage: dict[int, Seen], thermal: dict[int, Seen], *, v_below_pu: float,
               v_floor_pu: float, loading_above_pct: float | None, loading_target_pct: float | None) -> None:
    """Keep in ``voltage`` (``thermal``) the worst of each customer below ``v_below_pu``
    (each element above ``loading_above_pct`` with forward flow: power towards the
    customers, the view's SCADA; none without it or with ``loading_above_pct`` None)
    seen so far, its need the way back to ``v_floor_pu`` [pu] (down to
    ``loading_target_pct`` [%])."""
    v = np.asarray(view.v_pu, dtype=float)
    imports = np.maximum(np.asarray(view.p_kw, dtype=float), 0.0)
    for j in np.flatnonzero(v < v_below_pu - _TOL):
        need = v_floor_pu - float(v[j])
        if j not in voltage or need > voltage[j].need:
            voltage[int(j)] = Seen(need, imports.copy(), v.copy())
    s = view.scada
    if s is None or loading_above_pct is None or loading_target_pct is None:
        return
    loading = np.asarray(s.loading_pct, dtype=float)
    forward = np.asarray(s.p_kw, dtype=float) > 0
    for e in np.flatnonzero((loading > loading_above_pct + _TOL) & forward):
        need = float(loading[e]) - loading_target_pct
        if e not in thermal or need > thermal[e].need:
            thermal[int(e)] = Seen(need, imports.copy(), v.copy())


class DemandResponse:
    """Demand-response calls of one DSO (module docstring). ``flex_kw`` [kW]: each
    customer's flexible rating (site order); ``dv_pu_per_kw`` (n, n) and
    ``dloading_pct_per_kw`` (m, n) with ``elements`` (m names): the feeder's
    sensitivities to export (None: no thermal calls), as arrays or as the
    :class:`~federates.feeder.sensitivity.PointMatrix` views over the connection points
    (``Sensitivities.customer_*``), read one row at a time."""

    def __init__(self, participants: list[str], flex_kw: np.ndarray, *, v_min_pu: float, margin_pu: float,
                 dv_pu_per_kw: np.ndarray | PointMatrix, thermal_max_pct: float | None = None, thermal_margin_pct: float = 0.0,
                 dloading_pct_per_kw: np.ndarray | PointMatrix | None = None, elements: list[str] | None = None,
                 release_fraction: float = 0.25) -> None:
        self.participants = list(participants)
        self.flex_kw = np.asarray(flex_kw, dtype=float)
        self.v_floor_pu = float(v_min_pu) + float(margin_pu)
        self.dv = PointMatrix.of(dv_pu_per_kw, rows_by_point=True)
        self.thermal_ceiling_pct = (None if thermal_max_pct is None or dloading_pct_per_kw is None
                                    else float(thermal_max_pct) - float(thermal_margin_pct))
        self.dloading = (None if dloading_pct_per_kw is None
                         else PointMatrix.of(dloading_pct_per_kw, rows_by_point=False))
        self.elements = list(elements or [])
        self._voltage: dict[int, Seen] = {}
        self._thermal: dict[int, Seen] = {}
        self.release_fraction = float(release_fraction)
        self._standing = np.zeros(len(self.participants))  # the cuts in force [kW]
        self._why: list[tuple[str, str]] = [("", "")] * len(self.participants)

    def observe(self, view: DsoView) -> None:
        """Note the view's customers below the voltage floor and elements above the
        thermal ceiling with forward flow (the worst of each in the interval)."""
        note_worst(view, self._voltage, self._thermal, v_below_pu=self.v_floor_pu, v_floor_pu=self.v_floor_pu,
                   loading_above_pct=self.thermal_ceiling_pct, loading_target_pct=self.thermal_ceiling_pct)

    @property
    def in_force(self) -> bool:
        """Whether calls are in force: those of the last :meth:`calls` (before the next)."""
        return bool((self._standing > _TOL).any())

    def calls(self, interval: int, *, hold: bool = False) -> list[DemandResponseCall]:
        """The calls for ``interval`` from what was noted since the last call; forgets it.
        ``hold``: the standing calls are kept whole even without a violation seen (load
        limits were in force: the interval's voltages are with them, not without them)."""
        violated = bool(self._voltage or self._thermal) or hold
        standing = self._standing.copy()
        if not violated:  # wind down; a call below 5 % of the customer's flexible rating ends
            standing *= 1.0 - self.release_fraction
            standing[standing < 0.05 * np.maximum(self.flex_kw, _TOL)] = 0.0
        cut = np.zeros(len(self.participants))
        why_kw = np.zeros(len(self.participants))
        why = list(self._why)
        # (how far past the margin, limit, element, its sensitivity to a kW less import, imports then)
        todo = [(seen.need, Limit.V_MIN, self.participants[j], customer_row(self.dv, j), seen.import_kw)
                for j, seen in self._voltage.items()]
        for e, seen in self._thermal.items():
            # a kW more export changes the loading by dloading; a kW less import by the same
            todo.append((seen.need, Limit.THERMAL, self.elements[e], -customer_row(self.dloading, e), seen.import_kw))
        # worst first; each later one counts what the earlier cuts already give
        for need, limit, element, sens, imports in sorted(todo, key=lambda t: -t[0]):
            left = need - float(sens @ cut)
            if left <= _TOL:
                continue
            # what each can still give: its import then (the standing cuts already out of it),
            # within its flexible rating beyond the standing cut
            bound = np.minimum(imports - cut, self.flex_kw - standing - cut)
            add = _share(left, np.where(sens > 0, sens, 0.0), np.maximum(bound, 0.0))
            cut += add
            for i in np.flatnonzero(add > why_kw):
                why_kw[i] = add[i]
                why[i] = (str(limit), element)
        self._voltage.clear()
        self._thermal.clear()
        total = standing + cut
        self._standing, self._why = total, why
        return [DemandResponseCall(self.participants[i], interval, float(total[i]), *why[i])
                for i in np.flatnonzero(total > _TOL)]


def customer_row(m: PointMatrix, r: int) -> np.ndarray:
    """Row ``r`` of ``m`` over the customers, as float64 (the model is stored as float32)."""
    return np.asarray(m.row(r), dtype=float)


def _share(need: float, sens: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Cuts ``x`` >= 0, ``x <= bound``, with ``sens @ x = need`` (or as near as the
    bounds allow), in proportion to ``sens`` among those not at their bound
    (least-squares shares, water-filled)."""
    x = np.zeros_like(sens)
    free = (sens > 0) & (bound > _TOL)
    left = need
    while left > _TOL and free.any():
        s = np.where(free, sens, 0.0)
        step = left * s / float(s @ s)
        over = free & (x + step > bound)
        if not over.any():
            x += step
            break
        x[over] = bound[over]
        free &= ~over
        left = need - float(sens @ x)
    return x
