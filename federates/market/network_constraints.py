"""Network-aware acceptance of orders (``market.network_aware: constraints``), ex ante.

The DSO writes the feeder's linearised limits for one market interval as
``GridConstraint``s; before the community market clears, ``accept_within_grid`` decides
how much of every order the feeder can take and hands the market the accepted orders.

Constraint (one per limit and interval, sparse over the participants it lists)
    ``sum_i coef_i * x_i <= rhs`` with ``x_i`` [kW] participant ``i``'s average net
    EXPORT over the interval, ``coef_i`` per kW of it and ``rhs`` in the limit's units
    (pu for voltage, % for loading). Export-side limits (over-voltage, reverse-flow
    overload) have ``coef >= 0``; import-side ones (under-voltage, forward-flow
    overload) are written the same way with ``coef <= 0`` (positive per kW of import).
    ``rhs`` is the room at ZERO net export of every listed participant, i.e. the
    absolute linear model ``v_j(x) = v_j(0) + sum_i dv_ji x_i <= v_max`` gives
    ``rhs = v_max - v_j(0)``, not the headroom left at the last measurement.

Net export of a participant
    * with at least one order in ``orders``: ``x_i = (accepted sells - accepted bids) /
      interval_h``. In tecosim every accepted order is scheduled (unmatched peer energy
      goes to / comes from the grid at the tariffs), so the scheduled net export is
      exactly this. What is not ordered is not scheduled: ``baseline_kw`` is ignored
      for a participant with orders (also invalid ones, which schedule nothing).
    * without orders: ``x_i = baseline_kw[i]`` [kW] if given, else 0 (e.g. a customer
      outside the market, or a participant a constraint lists that is not known).

Acceptance LP (pyomo + HiGHS, via ``lp.solve``)
    variables   ``a_o`` in [0, q_o] [kWh] per valid order (``book.valid_order``;
                invalid orders are accepted at 0, like every mechanism drops them)
    objective   max ``sum_o w_o a_o`` [USD]; ``w_o = max(0, retail - s_o)`` for an offer
                and ``max(0, b_o - feed_in)`` for a bid, ``s_o``, ``b_o`` the limits
                clipped as in ``book.build_book``: the surplus a kWh of the order can
                create against the tariffs (clamped at 0: an order that creates none
                is still accepted where the grid has room, see tie-breaking)
    rows        every GridConstraint, scaled internally by its ``sigma`` =
                max |coef| / interval_h [units per kWh-equivalent] so that HiGHS's
                absolute tolerances (about 1e-7) mean "kWh of export at the most
                sensitive listed participant" for pu and % rows alike.

Duals
    ``duals[name]`` = d(optimal objective) / d(rhs) [USD per unit of rhs (per pu, per
    %) for this interval], >= 0: the welfare one more unit of room would create. Where
    the dual is not unique (primal degeneracy: a binding row meeting an order at its
    bound), it is the one HiGHS reports, an element of the set of optimal duals: it may
    differ from a one-sided finite difference. Rows that no ordered participant
    influences are constants: dual 0.

Tie-breaking (deterministic by a stated rule: a second, lexicographic solve)
    Stage 1 solves the welfare LP. Complementary slackness with its dual ``y`` then
    describes the whole set of welfare-optimal acceptances exactly: an order with
    reduced cost ``w_o - y . A_o`` > 0 (< 0) is at q_o (at 0) in every optimum, a row
    with ``y > 0`` is tight in every optimum. If orders with zero reduced cost remain,
    stage 2 maximises ``sum_o p_o a_o`` over that set, with ``p_o = (n - rank_o) / n``
    in (0, 1] and ``rank_o`` the order's position when the valid orders are sorted by
    (participant, side, input position). So among welfare-equal acceptances the orders
    of participants earlier by id come first (buy before sell, earlier orders first),
    and orders with zero weight are accepted wherever the grid has room. Welfare is
    not changed by stage 2. (Stage 2 itself has several optima only if the p-ratios
    also coincide with coefficient ratios; then HiGHS's vertex is returned, which is
    the same for the same input.) Reported duals are stage 1's.

Infeasible rows (a limit already violated whatever the orders do, e.g. by a baseline
or a measured over-voltage the listed exports cannot remove)
    The acceptance never raises for that: stage 0 minimises the total scaled slack
    ``sum_k s_k`` (violations in kWh-equivalents, see ``sigma``) over
    ``sum A a - s <= b``; each row's rhs is then relaxed by its slack and stages 1 and
    2 run as above. Such rows are named in ``Acceptance.infeasible``, their remaining
    violation [constraint units] in ``Acceptance.slack``; their duals are those of the
    relaxed row. Malformed input (mismatched lengths, non-finite numbers, duplicate
    names, several intervals) raises ValueError naming the field.

Units: energy [kWh], power [kW], prices [USD/kWh], money [USD], interval length [h];
constraint coefficients [pu or % per kW of net export], rhs [pu or %].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from federates.common.lazy import LazyModule
from federates.common.messages import GridConstraint, Order, _finite
from federates.market.book import valid_order
from federates.market.lp import solve as solve_with_highs

pyo = LazyModule("pyomo.environ")  # imported on first use (federates/common/lazy.py)
pyomo_opt = LazyModule("pyomo.opt")

RC_TOL_USD_PER_KWH = 1e-9  # reduced costs within this are zero (order free on the optimal face)
DUAL_TOL = 1e-9  # scaled duals [USD per kWh-equivalent] within this are zero
HEADROOM_TOL_KWH = 1e-9  # scaled headroom [kWh-equivalent] below this: row binding
SLACK_TOL_KWH = 1e-9  # stage-0 slack [kWh-equivalent] above this: row infeasible
SNAP_KWH = 1e-9  # accepted energy within this of 0 or of the order's energy is snapped
CHECK_TOL_KWH = 1e-6  # the result must satisfy every (relaxed) row within this [kWh-eq.]
#: the termination conditions that mean no acceptance satisfies the constraints (names
#: of pyomo's TerminationCondition members: compared by name, pyomo is imported lazily)
_INFEASIBLE = ("infeasible", "infeasibleOrUnbounded")

AcceptanceStatus = Literal["unconstrained", "optimal", "relaxed"]


@dataclass(frozen=True)
class Acceptance:
    """What the grid lets the market clear in one interval.

    ``orders``: the input orders (input order kept, other fields and the signature
    unchanged) with ``energy_kwh`` the accepted energy [kWh]; orders accepted at 0 and
    invalid ones are dropped. ``duals`` [USD per unit of rhs for the interval] and
    ``binding`` (dual > 0 or no headroom left, input order) per constraint name.
    ``clipped_kwh`` [kWh] valid ordered energy not accepted (sum and per participant).
    ``status``: "unconstrained" (no constraint: everything accepted, no LP),
    "optimal", "relaxed" (some rows infeasible: ``infeasible`` names them, ``slack``
    their violation at the result [constraint units, > 0]). ``objective_usd`` [USD]
    the LP objective at the result; ``export_kw`` [kW] the net export ``x_i`` used
    for every participant that ordered or that a constraint lists.
    """

    orders: list[Order]
    duals: dict[str, float]
    binding: list[str]
    clipped_kwh: float
    status: AcceptanceStatus
    infeasible: list[str] = field(default_factory=list)
    slack: dict[str, float] = field(default_factory=dict)
    objective_usd: float = 0.0
    export_kw: dict[str, float] = field(default_factory=dict)
    clipped_kwh_by_participant: dict[str, float] = field(default_factory=dict)
    #: the accepted energy [kWh] of every input order, in input order (0 for an invalid
    #: one): what the market's ``bids`` table shows beside the requested energy
    accepted_kwh: list[float] = field(default_factory=list)


@dataclass
class _Row:
    """One constraint as an LP row in scaled units (kWh-equivalents, module doc)."""

    constraint: GridConstraint
    sigma: float  # [constraint units per kWh-equivalent] = max |coef| / interval_h
    const: float  # contribution of participants without orders [constraint units]
    terms: dict[int, float]  # order index -> scaled coefficient [per kWh]
    b: float  # scaled rhs (rhs - const) / sigma, relaxed by the stage-0 slack


Terms = Mapping[int, float]


def _lp(
    ub_kwh: Sequence[float],
    weight: Sequence[float],
    rows: Sequence[tuple[Terms, str, float]],
    *,
    min_slack: bool = False,
) -> tuple[pyomo_opt.TerminationCondition, list[float], list[float], list[float]]:
    """Solve max ``weight . a`` over ``0 <= a <= ub_kwh`` and ``rows`` (terms, "<=" or
    "==", rhs); with ``min_slack`` instead min ``sum s`` over ``A a - s <= rhs``, s >= 0.

    Returns (termination condition, a, s, row duals d(objective)/d(rhs)); the lists are
    empty unless the condition is optimal.
    """
    m = pyo.ConcreteModel(name="grid_acceptance")
    var_index = range(len(ub_kwh))
    row_index = range(len(rows))
    m.a_kwh = pyo.Var(var_index, bounds=lambda _m, j: (0.0, float(ub_kwh[j])))
    if min_slack:
        m.s_kwh = pyo.Var(row_index, domain=pyo.NonNegativeReals)
        m.obj = pyo.Objective(expr=pyo.quicksum(m.s_kwh[k] for k in row_index))
    else:
        m.obj = pyo.Objective(
            expr=pyo.quicksum(weight[j] * m.a_kwh[j] for j in var_index), sense=pyo.maximize
        )

    def row_rule(_m: pyo.ConcreteModel, k: int) -> object:
        terms, sense, rhs = rows[k]
        lhs = pyo.quicksum(c * m.a_kwh[j] for j, c in terms.items())
        if min_slack:
            lhs = lhs - m.s_kwh[k]
        return lhs == rhs if sense == "==" else lhs <= rhs

    m.row = pyo.Constraint(row_index, rule=row_rule)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    _status, tc = solve_with_highs(m)
    if tc != pyomo_opt.TerminationCondition.optimal:
        return tc, [], [], []
    # a variable in no row and with zero weight is not sent to HiGHS: value None -> 0
    a = [float(pyo.value(m.a_kwh[j], exception=False) or 0.0) for j in var_index]
    s = [float(pyo.value(m.s_kwh[k])) for k in row_index] if min_slack else []
    y = [float(m.dual.get(m.row[k], 0.0)) for k in row_index]
    return tc, a, s, y


def _snap(a_kwh: float, q_kwh: float) -> float:
    a_kwh = min(max(a_kwh, 0.0), q_kwh)
    if a_kwh < SNAP_KWH:
        return 0.0
    return q_kwh if q_kwh - a_kwh < SNAP_KWH else a_kwh


def _validate(
    orders: Sequence[Order],
    constraints: Sequence[GridConstraint],
    interval_h: float,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    baseline_kw: Mapping[str, float] | None,
) -> dict[str, float]:
    """Check the arguments (ValueError naming the field); return the baseline [kW]."""
    h = _finite(interval_h, "interval_h")
    if h <= 0:
        raise ValueError(f"interval_h must be > 0 [h], got {interval_h!r}")
    _finite(retail_usd_per_kwh, "retail_usd_per_kwh")
    _finite(feed_in_usd_per_kwh, "feed_in_usd_per_kwh")
    base = {str(p): _finite(v, f"baseline_kw[{p!r}]") for p, v in (baseline_kw or {}).items()}
    seen: set[str] = set()
    for k, c in enumerate(constraints):
        if not isinstance(c, GridConstraint):
            raise ValueError(f"constraints[{k}] is a {type(c).__name__}, not a GridConstraint")
        if c.name in seen:
            raise ValueError(f"constraints: name {c.name!r} appears more than once")
        seen.add(c.name)
    for k, o in enumerate(orders):
        if not isinstance(o, Order):
            raise ValueError(f"orders[{k}] is a {type(o).__name__}, not an Order")
    intervals = sorted({o.interval for o in orders} | {c.interval for c in constraints})
    if len(intervals) > 1:
        raise ValueError(
            f"orders and constraints span intervals {intervals}: pass one interval's "
            "(filter on Order.interval and GridConstraint.interval)"
        )
    return base


@dataclass(frozen=True)
class _Columns:
    """The valid orders as LP columns (``j`` indexes ``valid``)."""

    valid: list[tuple[int, Order]]  # (input position, order)
    q: list[float]  # the order's energy [kWh]: the column's upper bound
    sign: list[float]  # +1 for an offer (export), -1 for a bid
    weight: list[float]  # stage 1: welfare per kWh [USD/kWh] (module doc)
    priority: list[float]  # stage 2: (n - rank) / n (module doc, tie-breaking)
    by_participant: dict[str, list[int]]


def _columns(orders: Sequence[Order], retail: float, feed_in: float) -> _Columns:
    """The valid orders of ``orders`` with their bounds, weights and priorities."""
    valid = [(pos, o) for pos, o in enumerate(orders) if valid_order(o)]
    n = len(valid)
    weight = [
        max(0.0, retail - max(o.price_usd_per_kwh, feed_in))
        if o.side == "sell"
        else max(0.0, min(o.price_usd_per_kwh, retail) - feed_in)
        for _, o in valid
    ]
    rank_of = sorted(
        range(n), key=lambda j: (valid[j][1].participant, valid[j][1].side, valid[j][0])
    )
    priority = [0.0] * n
    for r, j in enumerate(rank_of):
        priority[j] = (n - r) / n
    by_participant: dict[str, list[int]] = {}
    for j, (_, o) in enumerate(valid):
        by_participant.setdefault(o.participant, []).append(j)
    return _Columns(valid=valid, q=[o.energy_kwh for _, o in valid],
                    sign=[1.0 if o.side == "sell" else -1.0 for _, o in valid],
                    weight=weight, priority=priority, by_participant=by_participant)


def _rows(constraints: Sequence[GridConstraint], cols: _Columns, ordered: set[str],
          base: Mapping[str, float], h: float) -> list[_Row]:
    """Every constraint as a scaled row over the columns; the participants without
    orders held at their baseline export, folded into the constant."""
    rows: list[_Row] = []
    for c in constraints:
        sigma = max((abs(x) for x in c.coef), default=0.0) / h or 1.0 / h
        const = math.fsum(
            x * base.get(p, 0.0)
            for p, x in zip(c.participants, c.coef, strict=True)
            if p not in ordered
        )
        terms = {
            j: cols.sign[j] * x / h / sigma
            for p, x in zip(c.participants, c.coef, strict=True)
            if x != 0.0
            for j in cols.by_participant.get(p, ())
        }
        rows.append(_Row(c, sigma, const, terms, (c.rhs - const) / sigma))
    return rows


def _relax_infeasible(lp_rows: list[_Row], cols: _Columns) -> set[str]:
    """Stage 0: relax each row by its slack at the minimum total violation; the names
    of the rows relaxed."""
    tc0, _, s, _ = _lp(cols.q, cols.weight, [(r.terms, "<=", r.b) for r in lp_rows], min_slack=True)
    if tc0 != pyomo_opt.TerminationCondition.optimal:
        raise RuntimeError(f"grid acceptance, minimum-violation stage: HiGHS {tc0}")
    relaxed: set[str] = set()
    for r, s_k in zip(lp_rows, s, strict=True):
        if s_k > SLACK_TOL_KWH:
            r.b += s_k
            relaxed.add(r.constraint.name)
    return relaxed


def _welfare(lp_rows: list[_Row], cols: _Columns) -> tuple[list[float], list[float], set[str]]:
    """Stage 1 (after stage 0 where the rows are infeasible): the welfare-maximising
    acceptance [kWh per column, snapped], the rows' scaled duals (>= 0) and the names
    of the rows stage 0 relaxed."""
    relaxed: set[str] = set()
    tc, a, _, y = _lp(cols.q, cols.weight, [(r.terms, "<=", r.b) for r in lp_rows])
    if tc.name in _INFEASIBLE:
        relaxed = _relax_infeasible(lp_rows, cols)
        tc, a, _, y = _lp(cols.q, cols.weight, [(r.terms, "<=", r.b) for r in lp_rows])
    if tc != pyomo_opt.TerminationCondition.optimal:
        raise RuntimeError(f"grid acceptance, welfare stage: HiGHS {tc}")
    a = [_snap(a_j, q_j) for a_j, q_j in zip(a, cols.q, strict=True)]
    if min(y) < -DUAL_TOL:
        raise RuntimeError(f"grid acceptance: negative dual {min(y)} (sign convention?)")
    y = [max(0.0, y_k) if y_k > DUAL_TOL else 0.0 for y_k in y]
    return a, y, relaxed


def _tie_break(lp_rows: list[_Row], y: list[float], a: list[float], cols: _Columns) -> None:
    """Stage 2: priorities over the welfare-optimal face (complementary slackness, module
    doc); the columns with zero reduced cost in ``a`` are set to its result."""
    reduced = list(cols.weight)
    for r, y_k in zip(lp_rows, y, strict=True):
        for j, t in r.terms.items():
            reduced[j] -= y_k * t
    free = [j for j in range(len(cols.q)) if abs(reduced[j]) <= RC_TOL_USD_PER_KWH]
    if not free:
        return
    col = {j: i for i, j in enumerate(free)}
    rows2: list[tuple[Terms, str, float]] = []
    for r, y_k in zip(lp_rows, y, strict=True):
        ft = {col[j]: t for j, t in r.terms.items() if j in col}
        if not ft:
            continue
        if y_k > 0.0:  # tight in every optimum: keep its free part where it is
            rows2.append((ft, "==", math.fsum(t * a[free[i]] for i, t in ft.items())))
        else:
            fixed = math.fsum(t * a[j] for j, t in r.terms.items() if j not in col)
            rows2.append((ft, "<=", r.b - fixed))
    tc2, a2, _, _ = _lp([cols.q[j] for j in free], [cols.priority[j] for j in free], rows2)
    if tc2 != pyomo_opt.TerminationCondition.optimal:
        raise RuntimeError(f"grid acceptance, tie-breaking stage: HiGHS {tc2}")
    for i, j in enumerate(free):
        a[j] = _snap(a2[i], cols.q[j])


def _export_kw(cols: _Columns, a: list[float], ordered: set[str], constraints: Sequence[GridConstraint],
               base: Mapping[str, float], h: float) -> dict[str, float]:
    """The net export ``x_i`` [kW] at acceptance ``a`` of every participant that ordered
    or that a constraint lists (module doc)."""
    export_kw: dict[str, float] = {}
    for p, js in cols.by_participant.items():
        export_kw[p] = math.fsum(cols.sign[j] * a[j] for j in js) / h
    for p in ordered:
        export_kw.setdefault(p, 0.0)
    for c in constraints:
        for p in c.participants:
            if p not in export_kw:
                export_kw[p] = base.get(p, 0.0)
    return export_kw


@dataclass
class _RowResults:
    """Per constraint at the result: dual, binding, infeasible and slack (``Acceptance``)."""

    duals: dict[str, float] = field(default_factory=dict)
    binding: list[str] = field(default_factory=list)
    infeasible: list[str] = field(default_factory=list)
    slack: dict[str, float] = field(default_factory=dict)


def _checked_rows(rows: list[_Row], export_kw: dict[str, float], y_of: dict[str, float],
                  relaxed: set[str]) -> _RowResults:
    """Every (relaxed) row checked at the result (RuntimeError if HiGHS left it violated
    beyond tolerance), with its dual, whether it binds and whether it was infeasible."""
    out = _RowResults()
    for r in rows:
        c = r.constraint
        excess = c.lhs(export_kw) - c.rhs  # > 0: violated [constraint units]
        allowed = (r.b - (c.rhs - r.const) / r.sigma) * r.sigma  # stage-0 relaxation
        if r.terms and excess > allowed + CHECK_TOL_KWH * r.sigma:
            raise RuntimeError(
                f"grid acceptance violates {c.name!r} by {excess} (allowed {allowed}): "
                "HiGHS result outside tolerance"
            )
        y_k = y_of.get(c.name, 0.0)
        out.duals[c.name] = y_k / r.sigma
        if y_k > DUAL_TOL or -excess / r.sigma < HEADROOM_TOL_KWH:
            out.binding.append(c.name)
        if c.name in relaxed or (not r.terms and excess / r.sigma > SLACK_TOL_KWH):
            out.infeasible.append(c.name)
            out.slack[c.name] = max(0.0, excess)
    return out


def accept_within_grid(
    orders: Sequence[Order],
    constraints: Sequence[GridConstraint],
    *,
    interval_h: float,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    baseline_kw: Mapping[str, float] | None = None,
) -> Acceptance:
    """The welfare-maximising acceptance of ``orders`` within ``constraints`` (module doc).

    All orders and constraints must be of one interval of ``interval_h`` [h]; tariffs
    [USD/kWh] clip the limits as in ``book.build_book``; ``baseline_kw`` [kW] the net
    export of participants without orders (default 0). Raises ValueError for malformed
    input, RuntimeError if HiGHS fails on a problem that has a solution (never for
    infeasible grid constraints: those are relaxed and reported).
    """
    base = _validate(
        orders, constraints, interval_h, retail_usd_per_kwh, feed_in_usd_per_kwh, baseline_kw
    )
    h = float(interval_h)
    cols = _columns(orders, float(retail_usd_per_kwh), float(feed_in_usd_per_kwh))
    ordered = {o.participant for o in orders}
    rows = _rows(constraints, cols, ordered, base, h)
    lp_rows = [r for r in rows if r.terms]

    a = list(cols.q)  # no row any order enters: everything accepted
    y_of: dict[str, float] = {}
    relaxed: set[str] = set()
    if lp_rows:
        a, y, relaxed = _welfare(lp_rows, cols)
        y_of = {r.constraint.name: y_k for r, y_k in zip(lp_rows, y, strict=True)}
        _tie_break(lp_rows, y, a, cols)

    export_kw = _export_kw(cols, a, ordered, constraints, base, h)
    checked = _checked_rows(rows, export_kw, y_of, relaxed)
    out: list[Order] = []
    clipped_by: dict[str, float] = {}
    accepted_kwh = [0.0] * len(orders)
    for j, (pos, o) in enumerate(cols.valid):
        clipped_by[o.participant] = clipped_by.get(o.participant, 0.0) + (cols.q[j] - a[j])
        accepted_kwh[pos] = float(a[j])
        if a[j] > 0.0:
            out.append(o if a[j] == cols.q[j] else replace(o, energy_kwh=a[j]))
    return Acceptance(
        orders=out,
        duals=checked.duals,
        binding=checked.binding,
        clipped_kwh=math.fsum(cols.q) - math.fsum(a),
        status="unconstrained" if not constraints else ("relaxed" if checked.infeasible else "optimal"),
        infeasible=checked.infeasible,
        slack=checked.slack,
        objective_usd=math.fsum(w * a_j for w, a_j in zip(cols.weight, a, strict=True)),
        export_kw=export_kw,
        clipped_kwh_by_participant=clipped_by,
        accepted_kwh=accepted_kwh,
    )
