"""IEEE 1547-2018 Volt-Watt curve (Category B default, Table 10), the open-loop response
time as a first-order lag across physics steps, and missing-reading tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federates.common.config import StudyFile, VoltVarConfig, VoltWattConfig, validate
from federates.common.errors import ConfigError
from federates.common.grid import CustomerSite
from federates.feeder.voltvar import lagged_target, response_alpha, volt_var_points, volt_var_q_kvar
from federates.feeder.voltwatt import (
    p_pct_to_cap_kw,
    volt_watt_cap_kw,
    volt_watt_p_pct,
    volt_watt_points,
)
from tests.control_loop import ControlLoop

CAT_B_CFG = VoltWattConfig()
CAT_B = volt_watt_points(CAT_B_CFG)

# IEEE 1547-2018 Table 10, Category B defaults: V1 = 1.06 VN with P1 = Prated,
# V2 = 1.10 VN with P2 = 0.2 Prated (P'2 = 0 for DER that can absorb active power).
TABLE_10 = {"v1_pu": 1.06, "p1_pct": 100.0, "v2_pu": 1.10, "p2_pct": 20.0, "p2_absorbing_pct": 0.0}
# Table 10's open-loop response time default (Volt-Watt) and Table 8's for Volt-VAR Cat B
VW_RESPONSE_S = 10.0
VV_RESPONSE_S = 5.0
# 1547 defines the response time as reaching 90 % of the change
RESPONSE_FRACTION = 0.9

CORNERS = [(1.06, 100.0), (1.10, 20.0)]
ON_SLOPE = [(1.07, 80.0), (1.08, 60.0), (1.09, 40.0)]  # 80 % over 0.04 pu
BEYOND = [(0.90, 100.0), (1.00, 100.0), (1.059, 100.0), (1.11, 20.0), (1.30, 20.0)]


def test_defaults_are_table_10():
    v_pts, p_pts = volt_watt_points(CAT_B_CFG)
    np.testing.assert_allclose(v_pts, [TABLE_10["v1_pu"], TABLE_10["v2_pu"]])
    np.testing.assert_allclose(p_pts, [TABLE_10["p1_pct"], TABLE_10["p2_pct"]])
    assert CAT_B_CFG.open_loop_response_time_s == VW_RESPONSE_S
    assert VoltVarConfig().open_loop_response_time_s == VV_RESPONSE_S


@pytest.mark.parametrize(("v_pu", "p_pct"), CORNERS + ON_SLOPE + BEYOND)
def test_category_b_points(v_pu, p_pct):
    assert volt_watt_p_pct(np.array([v_pu]), CAT_B)[0] == pytest.approx(p_pct, abs=1e-9)


def test_absorbing_der_goes_to_zero():
    absorbing = volt_watt_points(VoltWattConfig(p2_pct=TABLE_10["p2_absorbing_pct"]))
    np.testing.assert_allclose(volt_watt_p_pct(np.array([1.06, 1.08, 1.10, 1.2]), absorbing),
                               [100.0, 50.0, 0.0, 0.0], atol=1e-9)


def test_curve_is_monotone_and_keeps_shape():
    v = np.linspace(0.9, 1.2, 301)
    p = volt_watt_p_pct(v, CAT_B)
    assert np.all(np.diff(p) <= 1e-12)
    assert volt_watt_p_pct(np.full((2, 3), 1.08), CAT_B).shape == (2, 3)


def test_cap_is_percent_of_inverter_kva():
    kva = np.array([10.0, 5.0, 0.0])
    np.testing.assert_allclose(p_pct_to_cap_kw(np.array([60.0, 100.0, 60.0]), kva), [6.0, 5.0, 0.0])
    np.testing.assert_allclose(volt_watt_cap_kw(np.array([1.08, 1.0, 1.2]), CAT_B, kva), [6.0, 5.0, 0.0])


def test_curve_points_must_be_ordered():
    with pytest.raises(ConfigError) as e:
        validate({"controllers": {"volt_watt": {"v1_pu": 1.10, "v2_pu": 1.06}}})
    assert "controllers.volt_watt" in {p.field for p in e.value.problems}


# ---------------------------------------------------------------- the lag
def test_response_alpha_reaches_90_percent_at_the_response_time():
    assert response_alpha(VW_RESPONSE_S, VW_RESPONSE_S) == pytest.approx(RESPONSE_FRACTION)
    assert response_alpha(VV_RESPONSE_S, VV_RESPONSE_S) == pytest.approx(RESPONSE_FRACTION)
    # tau = T_ol / ln(10)
    tau_s = VW_RESPONSE_S / math.log(10.0)
    assert response_alpha(tau_s, VW_RESPONSE_S) == pytest.approx(1.0 - math.exp(-1.0))
    assert response_alpha(3.0, 0.0) == 1.0  # no response time: instantaneous
    # the default physics step is far longer than the response times: steady state
    assert response_alpha(60.0, VV_RESPONSE_S) > 1.0 - 1e-11
    assert response_alpha(60.0, VW_RESPONSE_S) > 1.0 - 1e-5
    # n steps of dt are one step of n * dt
    for n in (1, 2, 5):
        assert (1.0 - response_alpha(2.0, VW_RESPONSE_S)) ** n == pytest.approx(
            1.0 - response_alpha(n * 2.0, VW_RESPONSE_S))
    with pytest.raises(ValueError):
        response_alpha(-1.0, 5.0)


def test_lagged_target():
    x = lagged_target(np.array([10.0, 0.0]), np.array([6.0, 2.0]), 0.25)
    np.testing.assert_allclose(x, [9.0, 0.5])
    np.testing.assert_array_equal(lagged_target(np.array([10.0]), np.array([6.0]), 1.0), [6.0])


DT_S = 2.0  # the shortest physics step a study may have
KVA = np.array([10.0, 10.0, 0.0])
V_HIGH_PU = 1.08  # Volt-Watt 60 %, Volt-VAR absorbing 5/6 of 44 %


def lag_cfg(**controllers) -> StudyFile:
    base = {
        "curtailment": {"enabled": False},
        "volt_var": {"damping": 1.0, "tolerance_kvar": 1e-9, "open_loop_response_time_s": VW_RESPONSE_S},
        "volt_watt": {"damping": 1.0, "tolerance_kw": 1e-9},
    }
    base.update(controllers)
    return StudyFile.model_validate({
        "study": {"duration": 40, "market_interval": 20, "physics_step": DT_S},
        "feeder": {"max_control_iterations": 10},
        "controllers": base,
    })


def sites(n: int = 3) -> list[CustomerSite]:
    return [CustomerSite(participant=f"p{i}", index=i, bus="b", phase="a", group=f"T{i}", load=f"l{i}")
            for i in range(n)]


def settle(ctrl: ControlLoop, g: int, v_pu: np.ndarray, p_kw: np.ndarray) -> None:
    """One step on a plant whose voltage does not depend on the inverters."""
    n = len(v_pu)
    for _ in range(ctrl.max_iterations + 1):
        if not ctrl.on_readings(g, v_pu, p_kw, np.zeros(n), np.zeros(n)):
            return
    raise AssertionError("did not settle")


def test_set_points_follow_a_step_change_with_the_first_order_lag():
    cfg = lag_cfg()
    ctrl = ControlLoop(cfg, sites(), KVA)
    v = np.full(3, V_HIGH_PU)
    p = np.array([-1.0, -1.0, 1.0])
    vw_curve_kw = volt_watt_cap_kw(v, volt_watt_points(cfg.controllers.volt_watt), KVA)
    q_curve_kvar = volt_var_q_kvar(v, volt_var_points(cfg.controllers.volt_var), KVA)
    vw_start_kw = KVA.copy()  # Volt-Watt starts at 100 % of rating, Volt-VAR at 0 kvar
    alpha = response_alpha(DT_S, VW_RESPONSE_S)
    n_steps = cfg.timeline.n_steps
    gaps = []
    for g in range(n_steps):
        settle(ctrl, g, v, p)
        gap_n = (1.0 - alpha) ** (g + 1)
        np.testing.assert_allclose(ctrl.fleet.vw_cap_kw[:2], vw_curve_kw[:2] + gap_n * (vw_start_kw - vw_curve_kw)[:2])
        np.testing.assert_allclose(ctrl.q_kvar[:2], q_curve_kvar[:2] * (1.0 - gap_n))
        gaps.append((ctrl.fleet.vw_cap_kw[0] - vw_curve_kw[0]) / (vw_start_kw - vw_curve_kw)[0])
    # 90 % of the change is done after the open-loop response time
    steps_in_t_ol = round(VW_RESPONSE_S / DT_S)
    assert gaps[steps_in_t_ol - 1] == pytest.approx(1.0 - RESPONSE_FRACTION)
    assert ctrl.fleet.vw_cap_kw[2] == 0.0 and ctrl.q_kvar[2] == 0.0  # no inverter


def test_a_skipped_step_lags_for_the_time_elapsed():
    cfg = lag_cfg()
    ctrl = ControlLoop(cfg, sites(), KVA)
    v = np.full(3, V_HIGH_PU)
    p = np.array([-1.0, -1.0, 1.0])
    settle(ctrl, 0, v, p)
    settle(ctrl, 3, v, p)  # steps 1 and 2 not solved: 3 * dt since step 0
    vw_curve_kw = volt_watt_cap_kw(v, volt_watt_points(cfg.controllers.volt_watt), KVA)
    gap = 1.0 - response_alpha(4 * DT_S, VW_RESPONSE_S)
    np.testing.assert_allclose(ctrl.fleet.vw_cap_kw[:2], vw_curve_kw[:2] + gap * (KVA - vw_curve_kw)[:2])


def test_zero_response_time_is_the_steady_state_at_once():
    cfg = lag_cfg(volt_watt={"damping": 1.0, "tolerance_kw": 1e-9, "open_loop_response_time_s": 0.0})
    ctrl = ControlLoop(cfg, sites(), KVA)
    v = np.full(3, V_HIGH_PU)
    settle(ctrl, 0, v, np.array([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(ctrl.fleet.vw_cap_kw[:2], volt_watt_cap_kw(v, volt_watt_points(cfg.controllers.volt_watt), KVA)[:2])
