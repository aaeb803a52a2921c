"""Bilevel energy-hub pricing solved as one MILP via the lower levels' KKT conditions.

Review section 4.2, reference [29]: an energy hub (upper level) sets internal prices
``pi_t`` [USD/kWh]; every prosumer (lower level) minimises its own cost at those
prices; the bilevel problem becomes a single MILP by replacing each lower-level LP
with its KKT conditions (complementarity via big-M binaries).

Conventions
    ``p[i, t]`` [kW] is prosumer ``i``'s *net import* in slot ``t`` (slot length
    ``dt_h`` [h]). A flexible load has ``0 <= lo <= p <= hi`` and a marginal utility
    ``v`` [USD/kWh]; a distributed generator producing ``g = -p`` has
    ``lo = -g_max <= p <= hi = -g_min <= 0`` and a marginal cost ``v`` [USD/kWh]
    (its cost ``v * g - pi * g`` equals ``(pi - v) * p``). Both are therefore

        lower level i:  min_p  sum_t (pi_t - v_i) * p[i, t] * dt_h
                        s.t.   lo[i, t] <= p[i, t] <= hi[i, t]   (duals mu_lo, mu_hi >= 0)

    The hub buys ``b_t >= 0`` [kW] from the grid at ``retail_t`` and sells ``s_t >= 0``
    [kW] at ``feed_in_t`` [USD/kWh], with optional limits, and balances
    ``b_t - s_t = sum_i p[i, t]``. Internal prices are bounded:
    ``feed_in_t <= pi_t <= retail_t``.

Upper level (default ``objective="community"``)
    The hub minimises the community's total cost [USD]
        hub cost + sum_i prosumer cost_i
        = sum_t (retail_t b_t - feed_in_t s_t - sum_i pi_t p[i, t]) dt_h
          + sum_i sum_t (pi_t - v_i) p[i, t] dt_h
    Optionally (``objective="hub"``) it minimises only its own cost (a profit-seeking
    hub; not equal to the social optimum in general).

KKT reformulation of lower level i, slot t
    stationarity   pi_t - v_i - mu_lo + mu_hi = 0
    primal         lo <= p <= hi
    complementary  mu_lo <= M_mu z_lo,  p - lo <= (hi - lo)(1 - z_lo)
                   mu_hi <= M_mu z_hi,  hi - p <= (hi - lo)(1 - z_hi)
    At most one multiplier is nonzero (lo < hi is required) and it equals
    ``|pi_t - v_i| <= max(|retail_t - v_i|, |feed_in_t - v_i|)``; ``M_mu`` is twice that
    plus 1 USD/kWh, and :func:`read_bilevel` reports the largest ``mu / M_mu`` ratio
    (it must be < 1: the big-M is never binding). The M on ``p`` is the box width, so
    it is exact.

Strong duality linearisation of ``pi_t * p[i, t]``
    At a lower-level optimum, primal = dual objective per slot:
        (pi_t - v_i) p = lo mu_lo - hi mu_hi
    so ``pi_t p = v_i p + lo mu_lo - hi mu_hi`` (linear), used in both the hub cost
    and the prosumers' costs. The MILP is therefore exact. (With the community
    objective the transfers cancel and the objective is the social cost; the hub then
    only needs prices that make the social optimum each prosumer's own choice, which
    exist in ``[feed_in, retail]`` -- so bilevel total cost = centralised optimum.)

Ties (``pi_t = v_i``) are resolved in the hub's favour (optimistic bilevel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from federates.common.lazy import LazyModule

pyo = LazyModule("pyomo.environ")  # imported on first use (federates/common/lazy.py)


SOLVER = "appsi_highs"
BIG_M_MARGIN_USD_PER_KWH = 1.0  # added to 2 * max |pi - v| for M_mu


@dataclass(frozen=True)
class Prosumer:
    """One lower-level agent.

    ``name``; ``marginal_value_usd_per_kwh`` [USD/kWh] (utility of a load or cost of a
    DG); ``p_min_kw`` / ``p_max_kw`` [kW] net-import bounds per slot (negative =
    generation), ``p_min_kw[t] < p_max_kw[t]``.
    """

    name: str
    marginal_value_usd_per_kwh: float
    p_min_kw: tuple[float, ...]
    p_max_kw: tuple[float, ...]


@dataclass(frozen=True)
class BilevelCase:
    """A community over ``len(retail_usd_per_kwh)`` slots.

    ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh] per slot
    (feed-in <= retail); ``dt_h`` [h] slot length; ``import_max_kw`` /
    ``export_max_kw`` [kW] optional grid limits per slot (None = unlimited).
    """

    prosumers: tuple[Prosumer, ...]
    retail_usd_per_kwh: tuple[float, ...]
    feed_in_usd_per_kwh: tuple[float, ...]
    dt_h: float = 1.0
    import_max_kw: tuple[float, ...] | None = None
    export_max_kw: tuple[float, ...] | None = None

    @property
    def n_slots(self) -> int:
        """Number of time slots [-]."""
        return len(self.retail_usd_per_kwh)

    def validate(self) -> None:
        """Raise ValueError on inconsistent data (lengths, bounds, tariffs)."""
        n = self.n_slots
        if n == 0 or len(self.feed_in_usd_per_kwh) != n:
            raise ValueError("retail and feed-in need the same, non-zero length")
        if self.dt_h <= 0:
            raise ValueError("dt_h must be > 0")
        for t in range(n):
            if self.feed_in_usd_per_kwh[t] > self.retail_usd_per_kwh[t]:
                raise ValueError(f"feed-in > retail in slot {t}")
        for lim in (self.import_max_kw, self.export_max_kw):
            if lim is not None and len(lim) != n:
                raise ValueError("grid limits need one value per slot")
        names = [p.name for p in self.prosumers]
        if len(set(names)) != len(names):
            raise ValueError("prosumer names must be unique")
        for p in self.prosumers:
            if len(p.p_min_kw) != n or len(p.p_max_kw) != n:
                raise ValueError(f"{p.name}: bounds need one value per slot")
            if any(lo >= hi for lo, hi in zip(p.p_min_kw, p.p_max_kw, strict=True)):
                raise ValueError(f"{p.name}: need p_min_kw < p_max_kw")
            if not math.isfinite(p.marginal_value_usd_per_kwh):
                raise ValueError(f"{p.name}: marginal value must be finite")


@dataclass
class BilevelResult:
    """Outcome of :func:`solve_bilevel`.

    ``status`` solver status and ``termination`` condition (strings); ``ok`` True iff
    optimal. On success: ``prices_usd_per_kwh`` [USD/kWh] per slot; ``p_kw`` [kW]
    per prosumer name per slot; ``grid_import_kw`` / ``grid_export_kw`` [kW];
    ``hub_cost_usd`` [USD] (grid bill minus internal revenue); ``prosumer_cost_usd``
    [USD] per prosumer; ``total_cost_usd`` [USD] (hub + prosumers = social cost);
    ``big_m_ratio`` [-] max ``mu / M_mu`` (< 1 means big-M not binding).
    """

    status: str
    termination: str
    ok: bool
    prices_usd_per_kwh: list[float] = field(default_factory=list)
    p_kw: dict[str, list[float]] = field(default_factory=dict)
    grid_import_kw: list[float] = field(default_factory=list)
    grid_export_kw: list[float] = field(default_factory=list)
    hub_cost_usd: float = math.nan
    prosumer_cost_usd: dict[str, float] = field(default_factory=dict)
    total_cost_usd: float = math.nan
    big_m_ratio: float = math.nan


@dataclass
class CentralResult:
    """Outcome of :func:`solve_centralised` (social-optimum LP).

    ``status`` / ``termination`` / ``ok`` as in :class:`BilevelResult`;
    ``prices_usd_per_kwh`` [USD/kWh] the balance duals (marginal cost of one more kWh
    of net load); ``p_kw`` [kW] per prosumer per slot; ``grid_import_kw`` /
    ``grid_export_kw`` [kW]; ``total_cost_usd`` [USD] = grid bill - utilities + DG
    costs.
    """

    status: str
    termination: str
    ok: bool
    prices_usd_per_kwh: list[float] = field(default_factory=list)
    p_kw: dict[str, list[float]] = field(default_factory=dict)
    grid_import_kw: list[float] = field(default_factory=list)
    grid_export_kw: list[float] = field(default_factory=list)
    total_cost_usd: float = math.nan


# ------------------------------------------------------------------ shared


def _add_grid_and_prosumers(m: pyo.ConcreteModel, case: BilevelCase) -> None:
    """Index sets, net imports p [kW], grid import b / export s [kW] and balance."""
    m.I = pyo.RangeSet(0, len(case.prosumers) - 1)
    m.T = pyo.RangeSet(0, case.n_slots - 1)

    def p_bounds(m: pyo.ConcreteModel, i: int, t: int) -> tuple[float, float]:
        pr = case.prosumers[i]
        return (pr.p_min_kw[t], pr.p_max_kw[t])

    def b_bounds(m: pyo.ConcreteModel, t: int) -> tuple[float, float | None]:
        return (0.0, None if case.import_max_kw is None else case.import_max_kw[t])

    def s_bounds(m: pyo.ConcreteModel, t: int) -> tuple[float, float | None]:
        return (0.0, None if case.export_max_kw is None else case.export_max_kw[t])

    m.p_kw = pyo.Var(m.I, m.T, bounds=p_bounds)
    m.b_kw = pyo.Var(m.T, bounds=b_bounds)
    m.s_kw = pyo.Var(m.T, bounds=s_bounds)
    m.balance = pyo.Constraint(
        m.T, rule=lambda m, t: sum(m.p_kw[i, t] for i in m.I) - m.b_kw[t] + m.s_kw[t] == 0
    )


def _grid_bill_usd(m: pyo.ConcreteModel, case: BilevelCase) -> object:
    """Grid bill expression [USD]."""
    return sum(
        (case.retail_usd_per_kwh[t] * m.b_kw[t] - case.feed_in_usd_per_kwh[t] * m.s_kw[t])
        * case.dt_h
        for t in m.T
    )


def _solve(m: pyo.ConcreteModel) -> tuple[str, str, bool]:
    """Solve ``m`` with HiGHS; load the solution only if optimal.

    Returns (solver status, termination condition, optimal?) -- never raises on a
    non-optimal outcome.
    """
    res = pyo.SolverFactory(SOLVER).solve(m, load_solutions=False)
    tc = res.solver.termination_condition
    ok = tc == pyo.TerminationCondition.optimal
    if ok:
        m.solutions.load_from(res)
    return str(res.solver.status), str(tc), ok


def big_m_usd_per_kwh(case: BilevelCase, i: int, t: int) -> float:
    """Big-M [USD/kWh] on the multipliers of prosumer ``i`` in slot ``t``."""
    v = case.prosumers[i].marginal_value_usd_per_kwh
    bound = max(abs(case.retail_usd_per_kwh[t] - v), abs(case.feed_in_usd_per_kwh[t] - v))
    return 2.0 * bound + BIG_M_MARGIN_USD_PER_KWH


# ------------------------------------------------------------------ bilevel


def build_bilevel(
    case: BilevelCase, objective: Literal["community", "hub"] = "community"
) -> pyo.ConcreteModel:
    """Single-level MILP of the hub-pricing bilevel problem (see module docstring)."""
    case.validate()
    if objective not in ("community", "hub"):
        raise ValueError(f"unknown objective {objective!r}")
    m = pyo.ConcreteModel(name="bilevel_hub_kkt")
    _add_grid_and_prosumers(m, case)
    m.pi_usd_per_kwh = pyo.Var(
        m.T, bounds=lambda m, t: (case.feed_in_usd_per_kwh[t], case.retail_usd_per_kwh[t])
    )
    m.mu_lo_usd_per_kwh = pyo.Var(m.I, m.T, domain=pyo.NonNegativeReals)
    m.mu_hi_usd_per_kwh = pyo.Var(m.I, m.T, domain=pyo.NonNegativeReals)
    m.z_lo = pyo.Var(m.I, m.T, domain=pyo.Binary)
    m.z_hi = pyo.Var(m.I, m.T, domain=pyo.Binary)

    def lo(i: int, t: int) -> float:
        return case.prosumers[i].p_min_kw[t]

    def hi(i: int, t: int) -> float:
        return case.prosumers[i].p_max_kw[t]

    def v(i: int) -> float:
        return case.prosumers[i].marginal_value_usd_per_kwh

    m.stationarity = pyo.Constraint(
        m.I,
        m.T,
        rule=lambda m, i, t: (
            m.pi_usd_per_kwh[t] - v(i) - m.mu_lo_usd_per_kwh[i, t] + m.mu_hi_usd_per_kwh[i, t] == 0
        ),
    )
    m.cs_mu_lo = pyo.Constraint(
        m.I,
        m.T,
        rule=lambda m, i, t: (
            m.mu_lo_usd_per_kwh[i, t] <= big_m_usd_per_kwh(case, i, t) * m.z_lo[i, t]
        ),
    )
    m.cs_p_lo = pyo.Constraint(
        m.I,
        m.T,
        rule=lambda m, i, t: m.p_kw[i, t] - lo(i, t) <= (hi(i, t) - lo(i, t)) * (1 - m.z_lo[i, t]),
    )
    m.cs_mu_hi = pyo.Constraint(
        m.I,
        m.T,
        rule=lambda m, i, t: (
            m.mu_hi_usd_per_kwh[i, t] <= big_m_usd_per_kwh(case, i, t) * m.z_hi[i, t]
        ),
    )
    m.cs_p_hi = pyo.Constraint(
        m.I,
        m.T,
        rule=lambda m, i, t: hi(i, t) - m.p_kw[i, t] <= (hi(i, t) - lo(i, t)) * (1 - m.z_hi[i, t]),
    )

    # strong duality: (pi - v) p = lo mu_lo - hi mu_hi  =>  pi p is linear
    def pi_p_usd_per_h(m: pyo.ConcreteModel, i: int, t: int) -> object:
        return (
            v(i) * m.p_kw[i, t]
            + lo(i, t) * m.mu_lo_usd_per_kwh[i, t]
            - hi(i, t) * m.mu_hi_usd_per_kwh[i, t]
        )

    m.hub_cost_usd = pyo.Expression(
        expr=_grid_bill_usd(m, case)
        - sum(pi_p_usd_per_h(m, i, t) * case.dt_h for i in m.I for t in m.T)
    )
    m.prosumer_cost_usd = pyo.Expression(
        m.I,
        rule=lambda m, i: sum(
            (lo(i, t) * m.mu_lo_usd_per_kwh[i, t] - hi(i, t) * m.mu_hi_usd_per_kwh[i, t])
            * case.dt_h
            for t in m.T
        ),
    )
    if objective == "community":
        m.obj = pyo.Objective(expr=m.hub_cost_usd + sum(m.prosumer_cost_usd[i] for i in m.I))
    else:
        m.obj = pyo.Objective(expr=m.hub_cost_usd)
    return m


def solve_model(m: pyo.ConcreteModel) -> tuple[str, str, bool]:
    """Solve a bilevel or centralised model in place with HiGHS.

    Returns (solver status, termination condition, optimal?).
    """
    return _solve(m)


def read_bilevel(
    m: pyo.ConcreteModel, case: BilevelCase, status: str, termination: str, ok: bool
) -> BilevelResult:
    """Read the solved MILP back; costs are evaluated from the (bilinear) definitions."""
    if not ok:
        return BilevelResult(status=status, termination=termination, ok=False)
    dt = case.dt_h
    prices = [float(pyo.value(m.pi_usd_per_kwh[t])) for t in m.T]
    p = {case.prosumers[i].name: [float(pyo.value(m.p_kw[i, t])) for t in m.T] for i in m.I}
    b = [float(pyo.value(m.b_kw[t])) for t in m.T]
    s = [float(pyo.value(m.s_kw[t])) for t in m.T]
    bill = sum(
        (case.retail_usd_per_kwh[t] * b[t] - case.feed_in_usd_per_kwh[t] * s[t]) * dt for t in m.T
    )
    revenue = sum(prices[t] * p[pr.name][t] * dt for pr in case.prosumers for t in m.T)
    pros = {
        pr.name: sum((prices[t] - pr.marginal_value_usd_per_kwh) * p[pr.name][t] * dt for t in m.T)
        for pr in case.prosumers
    }
    ratio = max(
        max(
            float(pyo.value(m.mu_lo_usd_per_kwh[i, t])),
            float(pyo.value(m.mu_hi_usd_per_kwh[i, t])),
        )
        / big_m_usd_per_kwh(case, i, t)
        for i in m.I
        for t in m.T
    )
    hub = bill - revenue
    return BilevelResult(
        status=status,
        termination=termination,
        ok=True,
        prices_usd_per_kwh=prices,
        p_kw=p,
        grid_import_kw=b,
        grid_export_kw=s,
        hub_cost_usd=hub,
        prosumer_cost_usd=pros,
        total_cost_usd=hub + sum(pros.values()),
        big_m_ratio=ratio,
    )


def solve_bilevel(
    case: BilevelCase, objective: Literal["community", "hub"] = "community"
) -> BilevelResult:
    """Build, solve and read the KKT MILP; a non-optimal solve returns its status."""
    m = build_bilevel(case, objective)
    status, tc, ok = solve_model(m)
    return read_bilevel(m, case, status, tc, ok)


# ------------------------------------------------------------------ centralised


def build_centralised(case: BilevelCase) -> pyo.ConcreteModel:
    """Social-optimum LP: the hub dispatches every prosumer directly.

    min sum_t (retail_t b_t - feed_in_t s_t - sum_i v_i p[i, t]) dt_h  [USD]
    over the same bounds and balance; ``m.dual`` imports the balance duals.
    """
    case.validate()
    m = pyo.ConcreteModel(name="bilevel_centralised")
    _add_grid_and_prosumers(m, case)
    m.obj = pyo.Objective(
        expr=_grid_bill_usd(m, case)
        - sum(
            case.prosumers[i].marginal_value_usd_per_kwh * m.p_kw[i, t] * case.dt_h
            for i in m.I
            for t in m.T
        )
    )
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    return m


def read_centralised(
    m: pyo.ConcreteModel, case: BilevelCase, status: str, termination: str, ok: bool
) -> CentralResult:
    """Read the solved LP back; prices are ``|dual| / dt_h`` of the balance [USD/kWh]."""
    if not ok:
        return CentralResult(status=status, termination=termination, ok=False)
    prices = [abs(float(m.dual.get(m.balance[t], 0.0))) / case.dt_h for t in m.T]
    return CentralResult(
        status=status,
        termination=termination,
        ok=True,
        prices_usd_per_kwh=prices,
        p_kw={case.prosumers[i].name: [float(pyo.value(m.p_kw[i, t])) for t in m.T] for i in m.I},
        grid_import_kw=[float(pyo.value(m.b_kw[t])) for t in m.T],
        grid_export_kw=[float(pyo.value(m.s_kw[t])) for t in m.T],
        total_cost_usd=float(pyo.value(m.obj)),
    )


def solve_centralised(case: BilevelCase) -> CentralResult:
    """Build, solve and read the social-optimum LP; a non-optimal solve returns its status."""
    m = build_centralised(case)
    status, tc, ok = solve_model(m)
    return read_centralised(m, case, status, tc, ok)


# ------------------------------------------------------------------ checks


def solve_lower_level(
    prosumer: Prosumer, prices_usd_per_kwh: list[float], dt_h: float = 1.0
) -> tuple[str, float, list[float]]:
    """Solve one prosumer's LP alone at fixed prices.

    Returns (termination condition, optimal cost [USD], p [kW] per slot); cost is nan
    and p empty if not optimal.
    """
    m = pyo.ConcreteModel(name=f"lower_{prosumer.name}")
    m.T = pyo.RangeSet(0, len(prices_usd_per_kwh) - 1)
    m.p_kw = pyo.Var(m.T, bounds=lambda m, t: (prosumer.p_min_kw[t], prosumer.p_max_kw[t]))
    m.obj = pyo.Objective(
        expr=sum(
            (prices_usd_per_kwh[t] - prosumer.marginal_value_usd_per_kwh) * m.p_kw[t] * dt_h
            for t in m.T
        )
    )
    _, tc, ok = _solve(m)
    if not ok:
        return tc, math.nan, []
    return tc, float(pyo.value(m.obj)), [float(pyo.value(m.p_kw[t])) for t in m.T]
