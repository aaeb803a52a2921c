"""Bilevel hub pricing (KKT MILP) vs the centralised social optimum."""

from __future__ import annotations

import pytest

from federates.market.bilevel import (
    BilevelCase,
    Prosumer,
    solve_bilevel,
    solve_centralised,
    solve_lower_level,
)

TOL = 1e-6


def small_case() -> BilevelCase:
    """3 slots, 4 prosumers: two flexible loads, two DGs [kW, USD/kWh]."""
    return BilevelCase(
        prosumers=(
            Prosumer("load_a", 0.30, (1.0, 1.0, 0.5), (4.0, 3.0, 2.0)),
            Prosumer("load_b", 0.12, (0.0, 0.5, 0.0), (3.0, 3.0, 3.0)),
            Prosumer("dg_c", 0.08, (-5.0, -2.0, -4.0), (0.0, 0.0, 0.0)),
            Prosumer("dg_d", 0.20, (-3.0, -3.0, -3.0), (-0.5, 0.0, 0.0)),
        ),
        retail_usd_per_kwh=(0.25, 0.15, 0.28),
        feed_in_usd_per_kwh=(0.05, 0.10, 0.05),
        dt_h=0.5,
    )


@pytest.fixture(scope="module")
def case() -> BilevelCase:
    return small_case()


@pytest.fixture(scope="module")
def results(case: BilevelCase) -> tuple:
    return solve_bilevel(case), solve_centralised(case)


def test_bilevel_equals_centralised(results: tuple) -> None:
    bi, ce = results
    assert bi.ok and ce.ok, (bi.termination, ce.termination)
    assert bi.total_cost_usd == pytest.approx(ce.total_cost_usd, abs=TOL)
    # hub + prosumers = social cost (internal transfers cancel)
    assert bi.hub_cost_usd + sum(bi.prosumer_cost_usd.values()) == pytest.approx(
        bi.total_cost_usd, abs=TOL
    )


def test_prices_in_bounds_and_balance(case: BilevelCase, results: tuple) -> None:
    bi, _ = results
    for t in range(case.n_slots):
        pi = bi.prices_usd_per_kwh[t]
        assert case.feed_in_usd_per_kwh[t] - TOL <= pi <= case.retail_usd_per_kwh[t] + TOL
        net_kw = sum(bi.p_kw[p.name][t] for p in case.prosumers)
        assert net_kw == pytest.approx(bi.grid_import_kw[t] - bi.grid_export_kw[t], abs=TOL)


@pytest.mark.parametrize("which", ["bilevel", "centralised"])
def test_responses_are_lower_level_optimal(case: BilevelCase, results: tuple, which: str) -> None:
    res = results[0] if which == "bilevel" else results[1]
    for pr in case.prosumers:
        tc, best_usd, _ = solve_lower_level(pr, res.prices_usd_per_kwh, case.dt_h)
        assert tc == "optimal"
        mine_usd = sum(
            (res.prices_usd_per_kwh[t] - pr.marginal_value_usd_per_kwh)
            * res.p_kw[pr.name][t]
            * case.dt_h
            for t in range(case.n_slots)
        )
        assert mine_usd == pytest.approx(best_usd, abs=TOL), pr.name
        if which == "bilevel":
            assert res.prosumer_cost_usd[pr.name] == pytest.approx(best_usd, abs=TOL)


def test_big_m_not_binding(results: tuple) -> None:
    bi, _ = results
    assert 0.0 <= bi.big_m_ratio < 1.0 - 1e-6


def test_profit_seeking_hub_does_not_beat_social_optimum(case: BilevelCase, results: tuple) -> None:
    _, ce = results
    hub = solve_bilevel(case, objective="hub")
    assert hub.ok and hub.big_m_ratio < 1.0
    assert hub.total_cost_usd >= ce.total_cost_usd - TOL
    assert hub.hub_cost_usd <= results[0].hub_cost_usd + TOL


def test_infeasible_case_returns_status() -> None:
    # a 1 kW must-serve load, a DG of at most 0.1 kW and a 0.1 kW import cap
    case = BilevelCase(
        prosumers=(
            Prosumer("load", 0.30, (1.0, 1.0), (2.0, 2.0)),
            Prosumer("dg", 0.05, (-0.1, -0.1), (0.0, 0.0)),
        ),
        retail_usd_per_kwh=(0.25, 0.25),
        feed_in_usd_per_kwh=(0.05, 0.05),
        import_max_kw=(0.1, 0.1),
    )
    bi = solve_bilevel(case)
    ce = solve_centralised(case)
    assert not bi.ok and not ce.ok
    assert "infeasible" in bi.termination.lower()
    assert "infeasible" in ce.termination.lower()
    assert bi.prices_usd_per_kwh == [] and ce.p_kw == {}
