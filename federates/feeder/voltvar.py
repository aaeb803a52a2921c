"""IEEE 1547-2018 Volt-VAR characteristic (clause 5.3.3), as a pure function.

The curve is piecewise linear through four points (V1, Q1), (V2, 0), (V3, 0),
(V4, Q4) and flat outside [V1, V4]. The standard's default for Category B DER
(Table 8) is::

    V1 = VRef - 0.08 VN   Q1 = 44 % of nameplate apparent power, injection
    V2 = VRef - 0.02 VN   Q2 = 0
    V3 = VRef + 0.02 VN   Q3 = 0
    V4 = VRef + 0.08 VN   Q4 = 44 % of nameplate apparent power, absorption

which with VRef = VN = 1 pu is what :class:`federates.common.config.VoltVarConfig` holds by
default. The standard defines V1..V4 relative to VRef; the config gives them for
VRef = 1.0 pu, so a ``v_ref_pu`` other than 1.0 shifts all four points by
``v_ref_pu - 1.0`` [pu].

Sign
    :func:`volt_var_q_pct` returns the *standard's* sign: ``+`` = reactive power
    injected (over-excited, raises voltage), ``-`` = absorbed. tecosim's convention
    (units.py) is the opposite: ``q_kvar > 0`` is drawn, ``q_kvar < 0`` injected.
    :func:`q_pct_to_q_kvar` is the one place that flips it.

Open-loop response time
    1547-2018 specifies how fast a DER follows its curve as the *open-loop response
    time* T_ol: the time to reach 90 % of the new set-point after a step change of the
    voltage (Volt-VAR Cat B default 5 s, Table 8; Volt-Watt 10 s, Table 10). tecosim
    models it as a first-order lag with time constant ``tau = T_ol / ln(10)`` (then
    ``1 - exp(-T_ol / tau) = 0.9``), sampled at the physics step ``dt``:
    :func:`response_alpha` is the fraction of the remaining gap closed in ``dt`` and
    :func:`lagged_target` the set-point the inverter reaches by the end of the step.
    This module (and :mod:`federates.feeder.voltwatt`) share both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from federates.common.config import VoltVarConfig


class Curve(NamedTuple):
    """A piecewise-linear IEEE 1547 curve: its corner voltages [pu] and the values there
    (Volt-VAR: reactive power [% of nameplate kVA, + = injection]; Volt-Watt: active
    power limit [% of rated power]); flat beyond the first and last corner."""

    v_pu: np.ndarray
    value: np.ndarray


def volt_var_points(cfg: VoltVarConfig) -> Curve:
    """The study's Volt-VAR curve (``controllers.volt_var``) as its corner points:
    voltages [pu] and reactive powers [% of nameplate kVA], in the standard's sign
    (+ = injection). The voltages include the shift ``v_ref_pu - 1.0`` [pu]. The one
    place the config is read; the functions below take the points."""
    shift_pu = cfg.v_ref_pu - 1.0
    v_points_pu = np.array([cfg.v1_pu, cfg.v2_pu, cfg.v3_pu, cfg.v4_pu]) + shift_pu
    q_points_pct = np.array([cfg.q1_pct, 0.0, 0.0, cfg.q4_pct])
    return Curve(v_points_pu, q_points_pct)


def volt_var_q_pct(v_pu: np.ndarray, curve: Curve) -> np.ndarray:
    """Reactive power the Volt-VAR curve asks for at voltages ``v_pu`` [pu].

    Returns [% of the inverter's nameplate apparent power], same shape as ``v_pu``,
    in the standard's sign: ``+`` injection below V2 (up to ``q1_pct`` at and below
    V1), ``0`` in the dead band [V2, V3], ``-`` absorption above V3 (down to
    ``q4_pct`` at and beyond V4); ``curve`` from :func:`volt_var_points`.
    """
    return curve_value(v_pu, curve)


def curve_value(v_pu: np.ndarray, points: Curve) -> np.ndarray:
    """The piecewise-linear curve through ``points`` (corner voltages [pu], values) at
    ``v_pu``, flat beyond its first and last corner (np.interp), as IEEE 1547 holds
    both the Volt-VAR and the Volt-Watt curve."""
    return np.interp(np.asarray(v_pu, dtype=float), points[0], points[1])


def q_pct_to_q_kvar(q_pct: np.ndarray, inverter_kva: np.ndarray) -> np.ndarray:
    """tecosim ``q_kvar`` [kvar] from a Volt-VAR set-point [% of nameplate kVA, + = injection].

    ``inverter_kva`` [kVA] is each inverter's nameplate apparent power (0 = none,
    which gives 0 kvar).
    """
    # Sign flip: the standard's + is injection; in tecosim injection is q_kvar < 0.
    return -np.asarray(q_pct, dtype=float) / 100.0 * np.asarray(inverter_kva, dtype=float)


def volt_var_q_kvar(v_pu: np.ndarray, curve: Curve, inverter_kva: np.ndarray) -> np.ndarray:
    """Volt-VAR reactive power [kvar] in tecosim's sign (q_kvar < 0 = injected) at ``v_pu`` [pu]."""
    return q_pct_to_q_kvar(volt_var_q_pct(v_pu, curve), inverter_kva)


def response_alpha(dt_s: float, open_loop_response_time_s: float) -> float:
    """Fraction [-] of a step change a first-order lag completes in ``dt_s`` [s].

    ``alpha = 1 - exp(-dt_s / tau)`` with ``tau = open_loop_response_time_s / ln(10)``,
    so that 90 % of the change is done after ``open_loop_response_time_s`` [s] (the
    1547-2018 definition). A response time of 0 gives 1 (instantaneous).
    """
    if dt_s < 0 or open_loop_response_time_s < 0:
        raise ValueError(f"dt_s ({dt_s}) and open_loop_response_time_s "
                         f"({open_loop_response_time_s}) must be >= 0")
    if open_loop_response_time_s == 0:
        return 1.0
    tau_s = open_loop_response_time_s / math.log(10.0)
    return -math.expm1(-dt_s / tau_s)


def lagged_target(x_prev: np.ndarray, x_curve: np.ndarray, alpha: float) -> np.ndarray:
    """``x_prev + alpha * (x_curve - x_prev)``: the set-point after one lagged step.

    ``x_prev`` the set-point at the end of the previous step, ``x_curve`` the curve's
    value at the voltage now, ``alpha`` from :func:`response_alpha` (any unit, same for
    both). With ``alpha = 1`` it is ``x_curve``.
    """
    x_prev = np.asarray(x_prev, dtype=float)
    if alpha == 1.0:
        return np.asarray(x_curve, dtype=float).copy()
    return x_prev + alpha * (np.asarray(x_curve, dtype=float) - x_prev)
