"""The DSO's decisions from measurements and the feeder's sensitivities (plain numpy).

Two things, both on the linear model of :mod:`federates.feeder.sensitivity` (per kW of
customer export: customer voltages, element loading and flow, bus VUF, substation
import):

**Ex-post curtailment** (:func:`plan_curtailment`), inside a physics step after local
inverter control has settled: every limit still violated by exports becomes a
constraint ``sum_i a_i x_i >= R`` with ``R`` the excess over the limit less a margin,
``a_i >= 0`` the relief per kW of export curtailed at customer ``i`` and
``0 <= x_i <= export_i`` the curtailment [kW]. Export-caused violations only:

=========  ============================================  =============================
limit      excess ``R``                                  relief ``a_i`` per kW cut
=========  ============================================  =============================
v_max      ``v_j - (v_max - margin_pu)`` [pu]            ``dv_pu_per_kw[j, i]``
thermal    ``loading_e - (max - margin_pct)`` [%],        ``loading_e |dflow_ei| / |p_e|``
           reverse flow (``p_e < 0``) only               for ``dflow_ei < 0``
vuf        ``vuf_b - (max - margin_pct)`` [%]            ``dvuf_pct_per_kw[b, i]``
export     ``export - (cap - margin)`` [kW]              ``-dsource_kw_per_kw[i]``
=========  ============================================  =============================

(``[j, i]``: entry of customer ``j`` (or element, bus) and customer ``i`` of the
customer-level view, ``Sensitivities.customer_*``: the model is held over the feeder's
connection points and a customer's row or column is its point's, gathered per row,
never an n x n array. The thermal relief scales the live loading by the share of the element's live
active flow that customer ``i`` carries, so it holds whichever way the element was
loaded when the sensitivities were computed.) Constraints are handled worst first
(largest excess relative to its limit), each topped up after the ones before it;
per constraint the policy decides who is cut:

* ``proportional``: every contributor (``a_i >= 10 %`` of the largest) cut by the
  same fraction of its export (equal treatment, the usual "pro rata" DSO rule);
* ``sensitivity``: largest ``a_i`` first (least energy curtailed in total);
* ``least_cost``: lowest ``price_i / a_i`` first (least value lost per unit of
  relief; ``price_i`` [USD/kWh] the seller's trade price or the feed-in tariff).

The plan's cuts are then applied as export caps; the feeder re-solves and the
controllers call again, so the linearisation error is corrected by iteration within
the step (at most ``feeder.max_control_iterations`` rounds).

Not every violation is the exports' doing: background load, regulator taps or the
source can cause an unbalance or an overload that cutting every export would barely
touch. A constraint whose relief with *all* available exports cut is below
:data:`MIN_FIXABLE_SHARE` of its excess is therefore not curtailed for (it stays a
recorded, unresolved violation: ``plan.skipped``), and
:class:`federates.controllers.dso_agent.DsoAgent` stops curtailing for a constraint
whose observed improvement after a cut falls short of :data:`MIN_EFFECTIVE_SHARE` of
the predicted one (the linear model is wrong there), or that is still violated once
every export that could relieve it has been cut, for the rest of the interval, and
lifts the caps it set for it: cuts that do not clear a limit are not worth their
energy.

**Operating envelopes** (:func:`operating_envelopes`), ex ante, for the next market
interval, from what the meters measured in the last one: the largest common export
(import) ``E`` of the customers that influence a constraint such that the linear
model keeps it within its limit, taken per customer as the minimum over the
constraints it influences, clipped to ``[0, inverter kVA]`` (export) and
``[0, import_cap]`` (import). "Same limit for everyone who shares the constraint" is
the equal-allocation rule of dynamic operating envelopes (cf. Petrou et al., "Ensuring
distribution network integrity using dynamic operating limits for prosumers",
IEEE Trans. Smart Grid 12(5), 2021).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from federates.common.limits import Limit, limit_key
from federates.common.messages import GridConstraint
from federates.feeder.sensitivity import PointMatrix, Sensitivities

POLICIES = ("proportional", "sensitivity", "least_cost")
CONTRIBUTOR_SHARE = 0.1  # a_i below this share of the largest a_i: not a contributor
MIN_CUT_KW = 0.01  # smaller cuts are not worth a command
MIN_FIXABLE_SHARE = 1.0  # cutting every contributing export must clear the excess (linear model)
MIN_EFFECTIVE_SHARE = 0.25  # observed / predicted relief below this: stop for that limit


@dataclass(frozen=True)
class Constraint:
    """One violated limit: ``sum_i relief_i x_i >= excess`` (units of the limit)."""

    limit: Limit  # v_max | thermal | vuf | export
    element: str  # customer, line./transformer., bus or "source"
    excess: float
    severity: float  # excess relative to the limit value, to order constraints
    relief: np.ndarray  # per kW of export curtailed, >= 0, one per customer


@dataclass
class CurtailmentPlan:
    """Cuts [kW] per customer, and for each cut the constraint that caused it."""

    cut_kw: np.ndarray
    limit: list[str] = field(default_factory=list)
    element: list[str] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "limit:element" exports cannot fix
    predicted_relief: dict[str, float] = field(default_factory=dict)  # "limit:element" -> relief


def violated_constraints(sens: Sensitivities, *, v_pu: np.ndarray, loading_pct: np.ndarray | None,
                         flow_kw: np.ndarray | None, vuf_pct: np.ndarray | None,
                         source_p_kw: float | None, v_max_pu: float, margin_pu: float,
                         thermal_max_pct: float | None, thermal_margin_pct: float,
                         vuf_max_pct: float | None, vuf_margin_pct: float,
                         export_max_kw: float | None) -> list[Constraint]:
    """Export-caused violations of the present solve as constraints (see module doc).

    ``v_pu`` per customer; ``loading_pct``, ``flow_kw`` per element of
    ``sens.elements``; ``vuf_pct`` per bus of ``sens.buses``; ``source_p_kw`` [kW,
    + import]. A ``None`` limit or measurement skips that kind.
    """
    out: list[Constraint] = []
    v = np.asarray(v_pu, dtype=float)
    dv = sens.customer_dv_pu_per_kw
    for j in np.flatnonzero(v > v_max_pu):
        out.append(Constraint(Limit.V_MAX, sens.participants[j], float(v[j] - (v_max_pu - margin_pu)),
                              float((v[j] - v_max_pu) / v_max_pu), np.clip(dv.row(j), 0, None)))
    if thermal_max_pct is not None and loading_pct is not None and flow_kw is not None:
        ld = np.asarray(loading_pct, dtype=float)
        fl = np.asarray(flow_kw, dtype=float)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero((ld > thermal_max_pct) & (fl < 0))
        for e in bad:
            share = np.clip(-sens.customer_dflow_kw_per_kw.row(e), 0, None)  # reverse flow carried per kW export
            relief = ld[e] * share / max(abs(fl[e]), 1e-9)
            out.append(Constraint(Limit.THERMAL, sens.elements[e], float(ld[e] - (thermal_max_pct - thermal_margin_pct)),
                                  float((ld[e] - thermal_max_pct) / thermal_max_pct), relief))
    if vuf_max_pct is not None and vuf_pct is not None:
        u = np.asarray(vuf_pct, dtype=float)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(u > vuf_max_pct)
        for b in bad:
            out.append(Constraint(Limit.VUF, sens.buses[b], float(u[b] - (vuf_max_pct - vuf_margin_pct)),
                                  float((u[b] - vuf_max_pct) / vuf_max_pct),
                                  np.clip(sens.customer_dvuf_pct_per_kw.row(b), 0, None)))
    if export_max_kw is not None and source_p_kw is not None and -source_p_kw > export_max_kw:
        export = -float(source_p_kw)
        margin_kw = 0.01 * export_max_kw
        out.append(Constraint(Limit.EXPORT, "source", export - (export_max_kw - margin_kw),
                              (export - export_max_kw) / export_max_kw,
                              np.clip(-sens.customer_dsource_kw_per_kw, 0, None)))
    out.sort(key=lambda c: -c.severity)
    return out


def _order(policy: str, relief: np.ndarray, price: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Contributors ``idx`` in the order the policy cuts them (stable on ties)."""
    if policy == "sensitivity":
        return idx[np.argsort(-relief[idx], kind="stable")]
    if policy == "least_cost":
        return idx[np.argsort(price[idx] / relief[idx], kind="stable")]
    raise ValueError(f"unknown curtailment policy {policy!r}; allowed: {', '.join(POLICIES)}")


def plan_curtailment(policy: str, constraints: list[Constraint], export_kw: np.ndarray,
                     price_usd_per_kwh: np.ndarray) -> CurtailmentPlan:
    """Cuts [kW] that the linear model says clear ``constraints`` (as far as exports can).

    ``export_kw`` [kW, >= 0] each customer's present export (the most it can be cut);
    ``price_usd_per_kwh`` per customer (``least_cost`` only).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown curtailment policy {policy!r}; allowed: {', '.join(POLICIES)}")
    avail = np.clip(np.asarray(export_kw, dtype=float), 0, None).copy()
    price = np.asarray(price_usd_per_kwh, dtype=float)
    n = avail.size
    cut = np.zeros(n)
    why: list[tuple[str, str] | None] = [None] * n
    skipped: list[str] = []
    for c in constraints:
        residual = c.excess - float(c.relief @ cut)
        if residual <= 0:
            continue
        a = c.relief
        top = float(a.max()) if a.size else 0.0
        idx = np.flatnonzero((a >= CONTRIBUTOR_SHARE * top) & (avail > 0)) if top > 0 else np.zeros(0, int)
        if idx.size == 0 or float(a[idx] @ avail[idx]) < MIN_FIXABLE_SHARE * residual:
            skipped.append(limit_key(c.limit, c.element))  # not the exports' doing
            continue
        x = np.zeros(n)
        if policy == "proportional":
            room = float(a[idx] @ avail[idx])
            frac = min(1.0, residual / room) if room > 0 else 0.0
            x[idx] = frac * avail[idx]
        else:
            for i in _order(policy, a, price, idx):
                take = min(avail[i], residual / a[i])
                x[i] = take
                residual -= take * a[i]
                if residual <= 1e-12:
                    break
        for i in np.flatnonzero(x > 0):
            if why[i] is None:
                why[i] = (c.limit, c.element)
        cut += x
        avail -= x
    cut[cut < MIN_CUT_KW] = 0.0
    plan = CurtailmentPlan(cut_kw=cut, constraints=list(constraints), skipped=skipped)
    plan.predicted_relief = {limit_key(c.limit, c.element): float(c.relief @ cut) for c in constraints}
    plan.limit = [w[0] if w else "" for w in why]
    plan.element = [w[1] if w else "" for w in why]
    return plan


@dataclass(frozen=True)
class Envelopes:
    """Per-customer limits for the next interval [kW]; ``binding_*`` names the limit
    that set each value ("" = only the inverter / import cap)."""

    export_max_kw: np.ndarray
    import_max_kw: np.ndarray
    binding_export: list[str]
    binding_import: list[str]


def closed_loop_dv(sens: Sensitivities, slope_kvar_per_pu: np.ndarray) -> PointMatrix:
    """Voltage response to export [pu / kW] with every inverter's Volt-VAR acting.

    An inverter on the sloped part of its curve draws ``slope_i`` [kvar per pu] more
    reactive power per pu of voltage rise, so ``dv = S_p dx + S_q K dv``, i.e.
    ``dv = (I - S_q K)^-1 S_p dx`` with ``S_p = dv_pu_per_kw``, ``S_q =
    dv_pu_per_kvar`` (< 0) and ``K = diag(slope)`` (0 where the inverter sits in its
    dead band or at its limit), all per customer (n x n).

    Over the u connection points (:class:`~federates.feeder.sensitivity.PointMatrix`)
    ``S_p = E A_p E^T`` and ``S_q = E A_q E^T`` with ``E`` the n x u incidence, so by
    the push-through identity ``(I_n - U V)^-1 U = U (I_u - V U)^-1`` (``U = E``,
    ``V = A_q E^T K``):

        (I_n - E A_q E^T K)^-1 E A_p E^T = E (I_u - A_q K_p)^-1 A_p E^T,

    ``K_p = E^T K E = diag(sum of slope_i over each point's customers)``: a u x u
    solve, returned over the points. With a point per customer ``E = I`` and this is
    the n x n solve itself, in the same arithmetic.
    """
    k = np.asarray(slope_kvar_per_pu, dtype=float)
    if sens.grouped:
        return _closed_loop_grouped(sens, k)
    point_of = sens.customer_dv_pu_per_kw.point_of
    u = sens.n_points
    k_pts = k if point_of is None else np.bincount(point_of, weights=k, minlength=u)
    a = np.eye(u) - sens.dv_pu_per_kvar * k_pts[None, :]
    return PointMatrix(np.linalg.solve(a, sens.dv_pu_per_kw), point_of, True)


def _closed_loop_grouped(sens: Sensitivities, k: np.ndarray) -> PointMatrix:
    """:func:`closed_loop_dv` on the grouped model, without an n x n array.

    There ``S_p = R E A_p E^T W + D_p`` and ``S_q = R E A_q E^T + D_q`` (``R``, ``W``
    the diagonal row and column weights ``v_row_w``, ``kw_col_w``; ``D`` the diagonal
    own-drop terms). With ``L = I - D_q K`` (diagonal) and ``U = R E A_q``, ``V = E^T K``:

        I - S_q K = L - U V,   so by Woodbury
        (L - U V)^-1 = L^-1 + L^-1 U (I_u - V L^-1 U)^-1 V L^-1,

    where ``V L^-1 R E = Om`` is the u x u diagonal of ``sum k_i r_i / l_i`` over each
    point's customers. Push-through, ``I + A_q (I - Om A_q)^-1 Om = (I - A_q Om)^-1``, gives
    ``(I - S_q K)^-1 R E = L^-1 R E (I - A_q Om)^-1``, hence

        (I - S_q K)^-1 S_p = L^-1 [ R E C E^T W + R E F E^T H + D_p ],
        C = (I - A_q Om)^-1 A_p,  F = (I - A_q Om)^-1 A_q,  H = diag(k d_p / l):

    a u x u solve with two right-hand sides; held as the (u, n) matrix ``C E^T W + F E^T
    H`` with row weights ``r / l`` and own terms ``d_p / l``
    (tests/feeder/test_sensitivity_grouped.py checks it against the n x n solve).
    """
    p = np.asarray(sens.point_of)
    u = sens.n_points
    r, w = sens.v_row_w, sens.kw_col_w
    lam = 1.0 - sens.own_dv_pu_per_kvar * k
    om = np.bincount(p, weights=k * r / lam, minlength=u)
    a_q = np.asarray(sens.dv_pu_per_kvar, dtype=float)
    cf = np.linalg.solve(np.eye(u) - a_q * om[None, :],
                         np.concatenate([np.asarray(sens.dv_pu_per_kw, dtype=float), a_q], axis=1))
    h = k * sens.own_dv_pu_per_kw / lam
    return PointMatrix(cf[:, :u][:, p] * w + cf[:, u:][:, p] * h, p, True, row_w=r / lam,
                       own=sens.own_dv_pu_per_kw / lam, cols_expanded=True)


def _common_limit(headroom: float, a: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, float]:
    """Contributors of one constraint and the largest common level ``E`` for them.

    The constraint is ``sum_i a_i (E - baseline_i) <= headroom`` over contributors
    (``a_i >= CONTRIBUTOR_SHARE`` of the largest).
    """
    top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return np.zeros(0, dtype=np.int64), np.inf
    idx = np.flatnonzero(a >= CONTRIBUTOR_SHARE * top)
    s = float(a[idx].sum())
    return idx, (headroom + float(a[idx] @ baseline[idx])) / s


def _tighten(limits: np.ndarray, binding: list[str], idx: np.ndarray, level: float, name: str) -> None:
    """Lower ``limits`` of ``idx`` to ``level`` (at least 0) where it is below, naming ``name`` as binding."""
    level = max(level, 0.0)
    for i in idx:
        if level < limits[i]:
            limits[i] = level
            binding[i] = name


def _thermal_envelopes(sens: Sensitivities, e_max: np.ndarray, i_max: np.ndarray, bind_e: list[str],
                       bind_i: list[str], export_now: np.ndarray, import_now: np.ndarray,
                       loading_pct: np.ndarray, flow_kw: np.ndarray, thermal_max_pct: float) -> None:
    """Tighten the envelopes to every element with a measured loading: reverse flow
    limits export, forward flow import (module doc)."""
    ld = np.asarray(loading_pct, dtype=float)
    fl = np.asarray(flow_kw, dtype=float)
    dflow = sens.customer_dflow_kw_per_kw
    for e in np.flatnonzero(np.isfinite(ld) & (np.abs(fl) > 1e-6)):
        share = np.clip(-dflow.row(e), 0, None)  # of a kW export, kW reverse flow
        per_kw = ld[e] / abs(fl[e])  # % loading per kW of flow, at the measured point
        a = share * per_kw
        # flow is f_e; net export x moves it by -share @ dx. Reverse flow loads it with export,
        # forward flow with import.
        headroom = thermal_max_pct - ld[e]
        if fl[e] < 0:
            idx, level = _common_limit(headroom, a, export_now - import_now)
            _tighten(e_max, bind_e, idx, level, limit_key(Limit.THERMAL, sens.elements[e]))
        else:
            idx, level = _common_limit(headroom, a, import_now - export_now)
            _tighten(i_max, bind_i, idx, level, limit_key(Limit.THERMAL, sens.elements[e]))


def _correct_voltages(v: np.ndarray, dv: PointMatrix, e_max: np.ndarray, i_max: np.ndarray,
                      net_now: np.ndarray, v_min_pu: float, v_max_pu: float, margin_pu: float) -> None:
    """The common levels move only each constraint's contributors; everyone moving to
    their envelope at once adds the small effects of the others. Correct on the full
    linear model: lower the contributors of any voltage still predicted out of bounds
    by the excess, until none is (a few passes)."""
    dv_pos = dv.clip_positive()
    for _ in range(20):
        v_hi = v + dv_pos @ (e_max - net_now)  # everyone at its export envelope
        v_lo = v - dv_pos @ (i_max + net_now)  # everyone at its import envelope
        hi = np.flatnonzero(v_hi > v_max_pu - margin_pu + 1e-6)
        lo = np.flatnonzero(v_lo < v_min_pu + margin_pu - 1e-6)
        if hi.size == 0 and lo.size == 0:
            break
        for j in hi:
            row = dv_pos.row(j)
            idx, _ = _common_limit(0.0, row, net_now)
            idx = idx[e_max[idx] > 0]
            if idx.size:
                e_max[idx] = np.clip(e_max[idx] - (v_hi[j] - v_max_pu + margin_pu) / row[idx].sum(), 0, None)
        for j in lo:
            row = dv_pos.row(j)
            idx, _ = _common_limit(0.0, row, -net_now)
            idx = idx[i_max[idx] > 0]
            if idx.size:
                i_max[idx] = np.clip(i_max[idx] - (v_min_pu + margin_pu - v_lo[j]) / row[idx].sum(), 0, None)


def operating_envelopes(sens: Sensitivities, *, v_pu: np.ndarray, p_kw: np.ndarray,
                        inverter_kva: np.ndarray, import_cap_kw: np.ndarray,
                        v_min_pu: float, v_max_pu: float, margin_pu: float,
                        loading_pct: np.ndarray | None = None, flow_kw: np.ndarray | None = None,
                        thermal_max_pct: float | None = None,
                        source_p_kw: float | None = None, export_max_kw: float | None = None,
                        import_max_kw: float | None = None,
                        dv_pu_per_kw: np.ndarray | PointMatrix | None = None) -> Envelopes:
    """Export / import envelopes [kW] from measured ``v_pu`` [pu] and ``p_kw`` [kW, + import].

    Voltage constraints for every customer (``v_max`` against export, ``v_min``
    against import), thermal constraints of elements with a measured loading
    (``loading_pct`` with ``flow_kw``, optional: the DSO's SCADA), substation caps on
    ``source_p_kw``. ``import_cap_kw`` is each customer's own import limit (e.g. its
    service rating). ``dv_pu_per_kw`` (n x n, or over points) replaces
    ``sens.customer_dv_pu_per_kw`` (e.g. the closed-loop response with Volt-VAR, :func:`closed_loop_dv`). See the module doc
    for the rule.
    """
    v = np.asarray(v_pu, dtype=float)
    p = np.asarray(p_kw, dtype=float)
    n = v.size
    export_now = np.clip(-p, 0, None)
    import_now = np.clip(p, 0, None)
    e_max = np.asarray(inverter_kva, dtype=float).copy()
    i_max = np.asarray(import_cap_kw, dtype=float).copy()
    bind_e = [""] * n
    bind_i = [""] * n
    dv = sens.customer_dv_pu_per_kw if dv_pu_per_kw is None else PointMatrix.of(dv_pu_per_kw, rows_by_point=True)

    # net export x_i = export_i - import_i moves voltages by dv @ dx
    for j in range(n):
        a = np.clip(dv.row(j), 0, None)
        # over-voltage against more export: v_j + sum a_i (E - x_i) <= v_max - margin, x = net export
        idx, level = _common_limit(v_max_pu - margin_pu - v[j], a, export_now - import_now)
        _tighten(e_max, bind_e, idx, level, limit_key(Limit.V_MAX, sens.participants[j]))
        # under-voltage against more import: v_j - sum a_i (I - m_i) >= v_min + margin
        idx, level = _common_limit(v[j] - (v_min_pu + margin_pu), a, import_now - export_now)
        _tighten(i_max, bind_i, idx, level, limit_key(Limit.V_MIN, sens.participants[j]))
    if thermal_max_pct is not None and loading_pct is not None and flow_kw is not None:
        _thermal_envelopes(sens, e_max, i_max, bind_e, bind_i, export_now, import_now, loading_pct, flow_kw,
                           thermal_max_pct)
    _correct_voltages(v, dv, e_max, i_max, export_now - import_now, v_min_pu, v_max_pu, margin_pu)
    if source_p_kw is not None:
        ones = np.clip(-sens.customer_dsource_kw_per_kw, 0, None)
        if export_max_kw is not None:
            idx, level = _common_limit(export_max_kw + source_p_kw, ones, export_now - import_now)
            _tighten(e_max, bind_e, idx, level, limit_key(Limit.EXPORT, "source"))
        if import_max_kw is not None:
            idx, level = _common_limit(import_max_kw - source_p_kw, ones, import_now - export_now)
            _tighten(i_max, bind_i, idx, level, limit_key(Limit.IMPORT, "source"))
    return Envelopes(export_max_kw=np.clip(e_max, 0, None), import_max_kw=np.clip(i_max, 0, None),
                     binding_export=bind_e, binding_import=bind_i)


def grid_constraints(sens: Sensitivities, interval: int, *, v_pu: np.ndarray, p_kw: np.ndarray,
                     inverter_kva: np.ndarray, import_cap_kw: np.ndarray, v_min_pu: float,
                     v_max_pu: float, margin_pu: float, dv_pu_per_kw: np.ndarray | PointMatrix | None = None,
                     loading_pct: np.ndarray | None = None, flow_kw: np.ndarray | None = None,
                     thermal_max_pct: float | None = None, source_p_kw: float | None = None,
                     export_max_kw: float | None = None,
                     import_max_kw: float | None = None) -> list[GridConstraint]:
    """Linearised grid limits for the clearing of ``interval`` (``network_aware: constraints``).

    The same linear model and measurements as :func:`operating_envelopes`, written as
    rows ``sum_i coef_i x_i <= rhs`` over the contributors' average net export
    ``x_i`` [kW] (the market's :class:`~federates.common.messages.GridConstraint`):
    customers outside a row are held at their measured export, folded into ``rhs``.
    Only rows that could bind are sent: those the contributors could break by all
    exporting at their inverter rating (export-side rows) or all importing at their
    import cap (import-side rows). Units: pu for voltage rows, % for thermal rows, kW
    for the substation rows.
    """
    v = np.asarray(v_pu, dtype=float)
    x_meas = -np.asarray(p_kw, dtype=float)  # net export [kW]
    kva = np.asarray(inverter_kva, dtype=float)
    imp = np.asarray(import_cap_kw, dtype=float)
    dv = sens.customer_dv_pu_per_kw if dv_pu_per_kw is None else PointMatrix.of(dv_pu_per_kw, rows_by_point=True)
    names = sens.participants
    rows: list[GridConstraint] = []

    def add(name: str, a: np.ndarray, sign: float, rhs_base: float) -> None:
        """Row ``sign * sum a_i x_i <= rhs_base + sign * sum a_i x_meas_i`` if it can bind."""
        idx, _ = _common_limit(0.0, a, x_meas)
        if idx.size == 0:
            return
        rhs = rhs_base + sign * float(a[idx] @ x_meas[idx])
        worst = float(a[idx] @ (kva[idx] if sign > 0 else imp[idx]))
        if worst <= rhs:
            return  # cannot bind even at the contributors' extremes
        rows.append(GridConstraint(interval=interval, name=name,
                                   participants=tuple(names[i] for i in idx),
                                   coef=tuple(float(sign * a[i]) for i in idx), rhs=rhs))

    for j in range(v.size):
        a = np.clip(dv.row(j), 0, None)
        add(limit_key(Limit.V_MAX, names[j]), a, +1.0, v_max_pu - margin_pu - v[j])
        add(limit_key(Limit.V_MIN, names[j]), a, -1.0, v[j] - v_min_pu - margin_pu)
    if thermal_max_pct is not None and loading_pct is not None and flow_kw is not None:
        ld = np.asarray(loading_pct, dtype=float)
        fl = np.asarray(flow_kw, dtype=float)
        dflow = sens.customer_dflow_kw_per_kw
        for e in np.flatnonzero(np.isfinite(ld) & (np.abs(fl) > 1e-6)):
            a = np.clip(-dflow.row(e), 0, None) * ld[e] / abs(fl[e])
            # reverse flow grows with export, forward flow with import
            add(limit_key(Limit.THERMAL, sens.elements[e]), a, +1.0 if fl[e] < 0 else -1.0, thermal_max_pct - ld[e])
    if source_p_kw is not None:
        ones = np.clip(-sens.customer_dsource_kw_per_kw, 0, None)
        if export_max_kw is not None:
            add(limit_key(Limit.EXPORT, "source"), ones, +1.0, export_max_kw + source_p_kw)
        if import_max_kw is not None:
            add(limit_key(Limit.IMPORT, "source"), ones, -1.0, import_max_kw - source_p_kw)
    return rows
