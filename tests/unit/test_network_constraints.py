"""Network-aware acceptance (federates/market/network_constraints.py): hand-computed
cases, an independent scipy/HiGHS formulation of the same LP, duals against finite
differences, infeasible rows, tie-breaking and input checks."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, replace

import numpy as np
import pytest
from scipy.optimize import linprog

from federates.common.messages import Order
from federates.market.network_constraints import (
    Acceptance,
    GridConstraint,
    accept_within_grid,
)

RETAIL = 0.26
FEED_IN = 0.08
H = 0.25  # 15-min interval [h]
KW = {"interval_h": H, "retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN}


def sell(p: str, kwh: float, usd: float, interval: int = 0) -> Order:
    return Order(p, "sell", interval, kwh, usd)


def buy(p: str, kwh: float, usd: float, interval: int = 0) -> Order:
    return Order(p, "buy", interval, kwh, usd)


def gc(name: str, coef: dict[str, float], rhs: float, interval: int = 0) -> GridConstraint:
    return GridConstraint(interval, name, tuple(coef), tuple(coef.values()), rhs)


def accepted(r: Acceptance) -> dict[tuple[str, str], float]:
    """Accepted energy [kWh] per (participant, side)."""
    out: dict[tuple[str, str], float] = {}
    for o in r.orders:
        out[(o.participant, o.side)] = out.get((o.participant, o.side), 0.0) + o.energy_kwh
    return out


def net_export_kw(r: Acceptance) -> dict[str, float]:
    """x_i [kW] recomputed from the accepted orders (independently of r.export_kw)."""
    x: dict[str, float] = {}
    for o in r.orders:
        x[o.participant] = (
            x.get(o.participant, 0.0) + (o.energy_kwh if o.side == "sell" else -o.energy_kwh) / H
        )
    return x


# ------------------------------------------------------------ the same LP, by hand, in scipy


def weight(o: Order) -> float:
    if o.side == "sell":
        return max(0.0, RETAIL - max(o.price_usd_per_kwh, FEED_IN))
    return max(0.0, min(o.price_usd_per_kwh, RETAIL) - FEED_IN)


def reference_objective(
    orders: list[Order], constraints: list[GridConstraint], baseline: dict[str, float]
) -> float:
    """Optimal objective [USD] of the acceptance LP written directly for linprog."""
    ordered = {o.participant for o in orders}
    c = np.array([-weight(o) for o in orders])
    a_ub = np.zeros((len(constraints), len(orders)))
    b_ub = np.zeros(len(constraints))
    for k, g in enumerate(constraints):
        col = dict(zip(g.participants, g.coef, strict=True))
        for j, o in enumerate(orders):
            a_ub[k, j] = col.get(o.participant, 0.0) * (1.0 if o.side == "sell" else -1.0) / H
        b_ub[k] = g.rhs - sum(x * baseline.get(p, 0.0) for p, x in col.items() if p not in ordered)
    res = linprog(
        c, A_ub=a_ub, b_ub=b_ub, bounds=[(0.0, o.energy_kwh) for o in orders], method="highs"
    )
    assert res.status == 0, res.message
    return -float(res.fun)


def random_case(
    seed: int,
) -> tuple[list[Order], list[GridConstraint], dict[str, float]]:
    """Orders of 7 participants (some with two, some zero-weight), 4 constraints
    (export- and import-side) that full acceptance would violate, feasible at zero
    trade, and one baseline outside the market."""
    rng = random.Random(seed)
    people = [f"p{i:03d}" for i in range(7)]
    orders: list[Order] = []
    for p in people:
        for _ in range(rng.choice((1, 1, 2))):
            side = rng.choice(("sell", "sell", "buy"))
            price = round(rng.uniform(0.05, 0.30), 4)
            orders.append(Order(p, side, 3, round(rng.uniform(0.2, 3.0), 3), price))
    baseline = {"outsider": rng.uniform(0.0, 5.0)}
    constraints = []
    for k in range(4):
        listed = [*rng.sample(people, 4), "outsider"]
        export_side = k % 2 == 0
        s = 1.0 if export_side else -1.0
        if k < 2:  # voltage [pu/kW]
            coef = {p: s * rng.uniform(0.0005, 0.005) for p in listed}
            name = f"{'v_max' if export_side else 'v_min'}:{listed[0]}"
        else:  # loading [%/kW]
            coef = {p: s * rng.uniform(0.2, 2.0) for p in listed}
            name = f"thermal:line.l{k}"
        signed = [
            coef[o.participant] * (1.0 if o.side == "sell" else -1.0) * o.energy_kwh / H
            for o in orders
            if o.participant in coef
        ]
        worst = sum(max(0.0, v) for v in signed)  # the most the orders can add [pu or %]
        # below full acceptance by 20-60 % of the worst case, positive room at zero trade
        room = max(0.05 * worst, sum(signed) - rng.uniform(0.2, 0.6) * worst)
        rhs = coef["outsider"] * baseline["outsider"] + room
        constraints.append(gc(name, coef, rhs, interval=3))
    return orders, constraints, baseline


def check_holds(r: Acceptance, constraints: list[GridConstraint], baseline: dict) -> None:
    x = {**baseline, **net_export_kw(r)}
    for p in {o.participant for o in r.orders} | set(r.export_kw):
        assert x.get(p, 0.0) == pytest.approx(r.export_kw.get(p, 0.0), abs=1e-12)
    for g in constraints:
        assert g.lhs(x) <= g.rhs + 1e-9 * (1.0 + abs(g.rhs)), g.name


# ---------------------------------------------------------------------------- basic cases


def test_no_constraint_accepts_every_order_fully():
    orders = [sell("A", 2, 0.10), buy("B", 1, 0.20), sell("C", 1, 0.40), buy("D", 1, 0.01)]
    r = accept_within_grid(orders, [], **KW)
    assert r.status == "unconstrained"
    assert r.orders == orders  # the same objects, nothing clipped
    assert r.clipped_kwh == 0.0 and r.duals == {} and r.binding == [] and r.infeasible == []


def test_slack_constraint_accepts_everything_zero_weight_orders_included():
    # C asks more than retail and D bids below feed-in: weight 0, still accepted (room left)
    orders = [sell("A", 2, 0.10), buy("B", 1, 0.20), sell("C", 1, 0.40), buy("D", 1, 0.01)]
    g = gc("v_max:a", {"A": 0.001, "C": 0.001}, 0.5)
    r = accept_within_grid(orders, [g], **KW)
    assert r.status == "optimal"
    assert r.orders == orders
    assert r.duals == {"v_max:a": 0.0} and r.binding == [] and r.clipped_kwh == 0.0
    assert r.objective_usd == pytest.approx(2 * 0.16 + 1 * 0.12, abs=1e-12)


def test_less_sensitive_seller_first_at_equal_prices():
    # A and B each offer 2 kWh (8 kW) at 0.10: equal weights 0.26 - 0.10 = 0.16 USD/kWh.
    # v_max: 0.004 x_A + 0.002 x_B <= 0.02 pu; B gives twice the energy per pu of room:
    # B fully (0.016 pu), the last 0.004 pu to A: x_A = 1 kW = 0.25 kWh. Unique optimum.
    orders = [sell("A", 2, 0.10), sell("B", 2, 0.10)]
    g = gc("v_max:a", {"A": 0.004, "B": 0.002}, 0.02)
    r = accept_within_grid(orders, [g], **KW)
    assert accepted(r) == {("A", "sell"): pytest.approx(0.25, abs=1e-12), ("B", "sell"): 2.0}
    assert r.orders[1] is orders[1]  # fully accepted orders come back unchanged
    assert r.clipped_kwh == pytest.approx(1.75, abs=1e-12)
    assert r.clipped_kwh_by_participant == {"A": pytest.approx(1.75, abs=1e-12), "B": 0.0}
    assert r.objective_usd == pytest.approx(0.16 * 2.25, abs=1e-12)
    # one more pu of room: 250 kW more of A = 62.5 kWh x 0.16 USD/kWh = 10 USD/pu
    assert r.duals["v_max:a"] == pytest.approx(10.0, rel=1e-9)
    assert r.binding == ["v_max:a"]
    assert r.export_kw == {"A": pytest.approx(1.0, abs=1e-12), "B": 8.0}
    check_holds(r, [g], {})
    bumped = accept_within_grid(orders, [replace(g, rhs=0.02 + 1e-6)], **KW)
    fd = (bumped.objective_usd - r.objective_usd) / 1e-6
    assert fd == pytest.approx(r.duals["v_max:a"], rel=1e-6)


def test_price_against_sensitivity_on_an_import_side_limit():
    # v_min on import: 0.004 m_1 + 0.002 m_2 <= 0.01 pu (m = import [kW]), coef on export < 0.
    # A pu of room is 250 kW = 62.5 kWh of P1 or 500 kW = 125 kWh of P2. P1 bids 0.25
    # (w 0.17: 10.625 USD/pu), P2 bids 0.15 (w 0.07: 8.75 USD/pu): P1 first although it is
    # the more sensitive, m_1 = 2.5 kW = 0.625 kWh, P2 gets nothing; dual 10.625 USD/pu.
    orders = [buy("P2", 1, 0.15), buy("P1", 1, 0.25)]
    g = gc("v_min:p001", {"P1": -0.004, "P2": -0.002}, 0.01)
    r = accept_within_grid(orders, [g], **KW)
    assert accepted(r) == {("P1", "buy"): pytest.approx(0.625, abs=1e-12)}
    assert r.duals["v_min:p001"] == pytest.approx(10.625, rel=1e-9)
    assert r.export_kw == {"P1": pytest.approx(-2.5, abs=1e-12), "P2": 0.0}


def test_scheduled_import_relieves_an_export_limit():
    # A sells 2 kWh (8 kW), B bids 1 kWh (4 kW import); 0.004 (x_A + x_B) <= 0.02:
    # alone A could export 5 kW; with B's import accepted, all 8 kW fit.
    g = gc("v_max:a", {"A": 0.004, "B": 0.004}, 0.02)
    alone = accept_within_grid([sell("A", 2, 0.10)], [g], **KW)
    assert accepted(alone) == {("A", "sell"): pytest.approx(1.25, abs=1e-12)}
    both = accept_within_grid([sell("A", 2, 0.10), buy("B", 1, 0.20)], [g], **KW)
    assert accepted(both) == {("A", "sell"): 2.0, ("B", "buy"): 1.0}
    assert both.binding == []


def test_baseline_of_participants_without_orders_takes_room():
    # C does not trade; its 2 kW of export use 0.008 pu of the 0.02: A gets 3 kW = 0.75 kWh
    g = gc("v_max:a", {"A": 0.004, "C": 0.004, "ghost": 1.0}, 0.02)
    r = accept_within_grid([sell("A", 2, 0.10)], [g], baseline_kw={"C": 2.0}, **KW)
    assert accepted(r) == {("A", "sell"): pytest.approx(0.75, abs=1e-12)}
    assert r.export_kw["C"] == 2.0 and r.export_kw["ghost"] == 0.0  # unknown: baseline 0
    # a participant with orders ignores its baseline: what is not ordered is not scheduled
    r2 = accept_within_grid([sell("A", 2, 0.10)], [g], baseline_kw={"A": 50.0}, **KW)
    assert accepted(r2) == {("A", "sell"): pytest.approx(1.25, abs=1e-12)}


# ------------------------------------------------------------------ against scipy, duals


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_match_an_independent_linprog(seed: int):
    orders, constraints, baseline = random_case(seed)
    r = accept_within_grid(orders, constraints, baseline_kw=baseline, **KW)
    assert r.status == "optimal" and r.infeasible == []
    ref = reference_objective(orders, constraints, baseline)
    assert r.objective_usd == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # the result's own welfare, from its orders
    w = {id(o): weight(o) for o in orders}
    by_key = {(o.participant, o.side, o.price_usd_per_kwh, o.energy_kwh): o for o in orders}
    assert len(by_key) == len(orders)
    own = 0.0
    for o in r.orders:
        src = next(s for s in orders if replace(s, energy_kwh=o.energy_kwh) == o)
        assert 0.0 < o.energy_kwh <= src.energy_kwh
        own += w[id(src)] * o.energy_kwh
    assert own == pytest.approx(ref, rel=1e-9, abs=1e-12)
    check_holds(r, constraints, baseline)
    for g in constraints:
        assert r.duals[g.name] >= 0.0
        assert (g.name in r.binding) == (
            r.duals[g.name] > 0 or g.lhs({**baseline, **net_export_kw(r)}) >= g.rhs - 1e-9
        )


def test_random_cases_exercise_binding_rows_of_every_kind():
    bound: set[str] = set()
    n_cases = 0
    for seed in range(12):
        orders, constraints, baseline = random_case(seed)
        r = accept_within_grid(orders, constraints, baseline_kw=baseline, **KW)
        n_cases += any(v > 0 for v in r.duals.values())
        bound |= {name.split(":")[0] for name, v in r.duals.items() if v > 0}
    assert n_cases >= 10 and bound == {"v_max", "v_min", "thermal"}


@pytest.mark.parametrize("seed", range(12))
def test_duals_are_the_finite_difference_of_the_optimal_objective(seed: int):
    orders, constraints, baseline = random_case(seed)
    r = accept_within_grid(orders, constraints, baseline_kw=baseline, **KW)
    base = reference_objective(orders, constraints, baseline)
    n_exact = 0
    for k, g in enumerate(constraints):
        delta = 1e-4 * max(abs(c) for c in g.coef)  # 1e-4 kW at the most sensitive
        values = []
        for d in (delta, -delta):
            moved = [*constraints[:k], replace(g, rhs=g.rhs + d), *constraints[k + 1 :]]
            values.append(reference_objective(orders, moved, baseline))
        right = (values[0] - base) / delta
        left = (base - values[1]) / delta
        dual = r.duals[g.name]
        if right == pytest.approx(left, rel=1e-6, abs=1e-6):
            assert dual == pytest.approx(right, rel=1e-6, abs=1e-6), g.name
            n_exact += 1
        else:  # a kink (degenerate dual): HiGHS's dual is one of the optimal ones
            assert right - 1e-6 <= dual <= left + 1e-6, g.name
    assert n_exact >= 3


# -------------------------------------------------------------------------- infeasibility


def test_infeasible_row_is_relaxed_by_the_least_slack_and_named():
    # v_min at P3: 0.004 x_3 + 0.002 x_4 >= 0.01 pu is needed (coef on export < 0, rhs < 0);
    # P4's whole offer (4 kW) gives 0.008, P3's bid would take more: the least violation is
    # 0.002 pu with P4 fully accepted and P3's bid rejected. The other row is feasible.
    orders = [buy("P3", 2, 0.20), sell("P4", 1, 0.10), sell("P5", 1, 0.10)]
    g = gc("v_min:p003", {"P3": -0.004, "P4": -0.002}, -0.01)
    ok = gc("thermal:line.l1", {"P4": 1.0, "P5": 1.0}, 100.0)
    r = accept_within_grid(orders, [g, ok], **KW)
    assert r.status == "relaxed"
    assert r.infeasible == ["v_min:p003"]
    assert r.slack == {"v_min:p003": pytest.approx(0.002, abs=1e-12)}
    assert accepted(r) == {("P4", "sell"): 1.0, ("P5", "sell"): 1.0}
    assert "v_min:p003" in r.binding and "thermal:line.l1" not in r.binding
    # the relaxed row's dual: one more pu lets P3 import 250 kW -> 62.5 kWh x 0.12
    assert r.duals["v_min:p003"] == pytest.approx(7.5, rel=1e-9)
    assert r.duals["thermal:line.l1"] == 0.0


def test_row_violated_by_a_baseline_alone_is_reported_and_blocks_its_exporters():
    # C (not trading) exports 10 kW: 0.03 pu > 0.02 whatever happens; A's export would add
    # to it, so A gets nothing; B's bid lowers it (import at C's row: coef 0.001 on B).
    g = gc("v_max:c", {"C": 0.003, "A": 0.002, "B": 0.001}, 0.02)
    only_baseline = gc("v_max:d", {"D": 0.01}, 0.0)
    orders = [sell("A", 1, 0.10), buy("B", 1, 0.20)]
    r = accept_within_grid(orders, [g, only_baseline], baseline_kw={"C": 10.0, "D": 1.0}, **KW)
    assert r.status == "relaxed"
    assert r.infeasible == ["v_max:c", "v_max:d"]
    assert r.slack["v_max:c"] == pytest.approx(0.01 - 0.004, abs=1e-12)  # B's 4 kW import
    assert r.slack["v_max:d"] == pytest.approx(0.01, abs=1e-12)
    assert accepted(r) == {("B", "buy"): 1.0}
    assert r.duals["v_max:d"] == 0.0


def test_infeasible_constraints_never_raise_even_without_orders():
    r = accept_within_grid([], [gc("v_max:c", {"C": 0.003}, 0.0)], baseline_kw={"C": 1.0}, **KW)
    assert r.status == "relaxed" and r.infeasible == ["v_max:c"] and r.orders == []


# ---------------------------------------------------------------------------- tie-breaking


def test_equal_weight_equal_sensitivity_ties_go_by_participant_then_position():
    # four offers at one price and one coefficient; room for 1.5 of them (6 kW): by
    # participant id A, B, C; A's two orders in input position
    orders = [sell("C", 1, 0.12), sell("B", 1, 0.12), sell("A", 0.5, 0.12), sell("A", 0.5, 0.12)]
    g = gc("thermal:line.l3", {"A": 1.0, "B": 1.0, "C": 1.0}, 6.0)
    r = accept_within_grid(orders, [g], **KW)
    assert [(o.participant, o.energy_kwh) for o in r.orders] == [
        ("B", pytest.approx(0.5, abs=1e-12)),
        ("A", 0.5),
        ("A", 0.5),
    ]
    assert r.orders[1] is orders[2] and r.orders[2] is orders[3]
    for perm in ([3, 1, 0, 2], [1, 2, 3, 0]):
        again = accept_within_grid([orders[i] for i in perm], [g], **KW)
        assert accepted(again) == accepted(r)


def test_same_participant_same_price_earlier_order_first():
    orders = [sell("A", 1, 0.12), sell("A", 1, 0.12)]
    g = gc("v_max:a", {"A": 0.002}, 0.010)  # 5 kW = 1.25 kWh
    r = accept_within_grid(orders, [g], **KW)
    assert [o.energy_kwh for o in r.orders] == [1.0, pytest.approx(0.25, abs=1e-12)]


def test_zero_weight_orders_never_displace_welfare():
    # C asks above retail (weight 0): only A (weight 0.16) gets the 5 kW of room
    orders = [sell("C", 1, 0.40), sell("A", 2, 0.10)]
    g = gc("v_max:a", {"A": 0.004, "C": 0.004}, 0.02)
    r = accept_within_grid(orders, [g], **KW)
    assert accepted(r) == {("A", "sell"): pytest.approx(1.25, abs=1e-12)}


def test_result_is_repeatable():
    orders, constraints, baseline = random_case(3)
    first = accept_within_grid(orders, constraints, baseline_kw=baseline, **KW)
    assert accept_within_grid(orders, constraints, baseline_kw=baseline, **KW) == first


# ------------------------------------------------------------------------------ bad input


def test_constraint_round_trips_through_json():
    g = gc("thermal:line.l12", {"A": 1.5, "B": -0.25}, 7.0, interval=4)
    back = GridConstraint(**json.loads(json.dumps(asdict(g))))
    assert back == g and isinstance(back.participants, tuple) and isinstance(back.coef, tuple)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"coef": (1.0,)}, "coef"),
        ({"coef": (1.0, math.nan)}, r"coef\[1\]"),
        ({"coef": (1.0, "x")}, r"coef\[1\]"),
        ({"rhs": math.inf}, "rhs"),
        ({"participants": ("A", "A")}, "participants"),
        ({"participants": "AB"}, "participants"),
        ({"name": ""}, "name"),
        ({"interval": 1.5}, "interval"),
        ({"interval": None}, "interval"),
    ],
)
def test_malformed_constraint_names_the_field(kwargs, field):
    good = {"interval": 0, "name": "v_max:a", "participants": ("A", "B"), "coef": (1.0, 2.0),
            "rhs": 1.0}  # fmt: skip
    with pytest.raises(ValueError, match=field):
        GridConstraint(**{**good, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"interval_h": 0.0}, "interval_h"),
        ({"interval_h": math.nan}, "interval_h"),
        ({"retail_usd_per_kwh": math.nan}, "retail_usd_per_kwh"),
        ({"feed_in_usd_per_kwh": math.inf}, "feed_in_usd_per_kwh"),
        ({"baseline_kw": {"C": math.nan}}, "baseline_kw"),
    ],
)
def test_malformed_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        accept_within_grid([sell("A", 1, 0.1)], [gc("v", {"A": 1.0}, 1.0)], **{**KW, **kwargs})


def test_duplicate_names_and_mixed_intervals_are_rejected():
    g = gc("v_max:a", {"A": 1.0}, 1.0)
    with pytest.raises(ValueError, match="name 'v_max:a'"):
        accept_within_grid([], [g, g], **KW)
    with pytest.raises(ValueError, match="intervals"):
        accept_within_grid([sell("A", 1, 0.1, interval=1)], [g], **KW)
    with pytest.raises(ValueError, match="GridConstraint"):
        accept_within_grid([], [("v", ("A",), (1.0,), 1.0)], **KW)  # type: ignore[list-item]


def test_invalid_orders_are_accepted_at_zero_and_dropped():
    orders = [sell("A", math.nan, 0.1), sell("B", 1, 0.1), buy("C", 0.0, 0.2)]
    g = gc("v_max:a", {"A": 0.001, "B": 0.001, "C": 0.001}, 1.0)
    r = accept_within_grid(orders, [g], baseline_kw={"A": 100.0}, **KW)
    assert r.orders == [orders[1]] and r.clipped_kwh == 0.0
    assert r.export_kw["A"] == 0.0  # it ordered (invalidly): nothing scheduled, no baseline
