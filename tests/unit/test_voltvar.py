"""IEEE 1547-2018 Volt-VAR curve (Category B default, Table 8) and its sign."""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import VoltVarConfig
from federates.feeder.voltvar import (
    q_pct_to_q_kvar,
    volt_var_points,
    volt_var_q_kvar,
    volt_var_q_pct,
)

CAT_B = volt_var_points(VoltVarConfig())

# Points of the Category B default curve with VRef = 1.0 pu (IEEE 1547-2018 Table 8:
# V1 = VRef-0.08, V2 = VRef-0.02, V3 = VRef+0.02, V4 = VRef+0.08; Q1 = 44 % injection,
# Q2 = Q3 = 0, Q4 = 44 % absorption), in the standard's sign (+ = injection).
CORNERS = [(0.92, 44.0), (0.98, 0.0), (1.02, 0.0), (1.08, -44.0)]
MIDPOINTS = [(0.95, 22.0), (1.00, 0.0), (1.05, -22.0)]
BEYOND = [(0.80, 44.0), (0.90, 44.0), (1.10, -44.0), (1.30, -44.0)]
# on the slopes: 44 % over 0.06 pu
ON_SLOPE = [(0.93, 44.0 * 5 / 6), (0.97, 44.0 / 6), (1.03, -44.0 / 6), (1.07, -44.0 * 5 / 6)]


def test_defaults_are_category_b():
    v_pts, q_pts = CAT_B
    np.testing.assert_allclose(v_pts, [0.92, 0.98, 1.02, 1.08])
    np.testing.assert_allclose(q_pts, [44.0, 0.0, 0.0, -44.0])


@pytest.mark.parametrize(("v_pu", "q_pct"), CORNERS + MIDPOINTS + BEYOND + ON_SLOPE)
def test_category_b_points(v_pu, q_pct):
    assert volt_var_q_pct(np.array([v_pu]), CAT_B)[0] == pytest.approx(q_pct, abs=1e-9)


def test_dead_band_is_zero_and_curve_is_monotone():
    v = np.linspace(0.85, 1.15, 601)
    q = volt_var_q_pct(v, CAT_B)
    assert np.all(np.diff(q) <= 1e-12)  # more voltage, never more injection
    band = (v >= 0.98) & (v <= 1.02)
    assert np.all(q[band] == 0.0)
    assert np.all(q[v < 0.98] > 0) and np.all(q[v > 1.02] < 0)
    assert q.max() == pytest.approx(44.0) and q.min() == pytest.approx(-44.0)


def test_shape_is_kept():
    v = np.full((2, 3), 1.05)
    assert volt_var_q_pct(v, CAT_B).shape == (2, 3)


def test_v_ref_shifts_the_curve():
    shifted = volt_var_points(VoltVarConfig(v_ref_pu=1.01))
    assert volt_var_q_pct(np.array([1.06]), shifted)[0] == pytest.approx(-22.0)
    assert volt_var_q_pct(np.array([1.03]), shifted)[0] == pytest.approx(0.0)


def test_sign_conversion_to_tecosim_convention():
    # units.py: q_kvar > 0 is drawn (absorbed), q_kvar < 0 injected.
    kva = np.array([10.0, 10.0, 0.0])
    q_pct = np.array([22.0, -22.0, 44.0])  # injection, absorption, (no inverter)
    np.testing.assert_allclose(q_pct_to_q_kvar(q_pct, kva), [-2.2, 2.2, 0.0])
    # high voltage -> absorb -> positive q_kvar; low voltage -> inject -> negative
    q = volt_var_q_kvar(np.array([1.08, 0.92, 1.0]), CAT_B, np.array([5.0, 5.0, 5.0]))
    np.testing.assert_allclose(q, [2.2, -2.2, 0.0])
