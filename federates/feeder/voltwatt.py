"""IEEE 1547-2018 Volt-Watt characteristic (clause 5.4.2), as pure functions.

The curve limits the DER's active power as a function of its voltage: piecewise
linear through (V1, P1) and (V2, P2), flat outside [V1, V2]. The standard's default
for Category B DER (Table 10) is::

    V1 = 1.06 VN    P1 = Prated
    V2 = 1.10 VN    P2 = min(0.2 Prated, Pmin)   (DER that cannot absorb active power)
                    P'2 = 0                       (DER that can absorb active power)

which is what :class:`federates.common.config.VoltWattConfig` holds by default (``p2_pct: 0``
gives P'2). Unlike Volt-VAR, the curve is defined on the nominal voltage VN, not on
VRef, so ``volt_var.v_ref_pu`` does not shift it.

How tecosim applies it
    tecosim models a prosumer as one net power at its meter (PV, battery and house
    load behind one point of common coupling), not the PV inverter's own output. The
    Volt-Watt limit is therefore applied to what the customer *exports*: it becomes
    an export cap::

        p_export_cap_kw = p_pct(v) / 100 * inverter_kva

    i.e. the inverter's rated active power is taken to be its nameplate apparent
    power (``Prated = kVA``, as for a unity-power-factor rating). A real inverter
    limits its own AC output; with a load behind the meter the house consumes part of
    that output, so the export cap lets the same PV inverter produce up to the cap
    *plus* the load. tecosim's Volt-Watt is in that respect less strict than a limit on
    PV output; without behind-the-meter load the two coincide (which is what
    tests/feeder/test_inverter_vs_opendss.py checks against OpenDSS's InvControl with
    ``VoltwattYAxis=KVARATINGPU``).

The open-loop response time (90 % of a step change within ``open_loop_response_time_s``)
is a first-order lag applied by the controllers role across physics steps
(:func:`federates.feeder.voltvar.response_alpha`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from federates.feeder.voltvar import Curve, curve_value

if TYPE_CHECKING:
    from federates.common.config import VoltWattConfig


def volt_watt_points(cfg: VoltWattConfig) -> Curve:
    """The study's Volt-Watt curve (``controllers.volt_watt``) as its corner points:
    voltages [pu of VN] and active-power limits [% of Prated]. The one place the config
    is read; the functions below take the points."""
    return Curve(np.array([cfg.v1_pu, cfg.v2_pu]), np.array([cfg.p1_pct, cfg.p2_pct]))


def volt_watt_p_pct(v_pu: np.ndarray, curve: Curve) -> np.ndarray:
    """Active-power limit the Volt-Watt curve sets at voltages ``v_pu`` [pu].

    Returns [% of the inverter's rated active power], same shape as ``v_pu``:
    ``p1_pct`` at and below V1, ``p2_pct`` at and above V2, linear in between.
    ``curve`` from :func:`volt_watt_points`.
    """
    return curve_value(v_pu, curve)


def p_pct_to_cap_kw(p_pct: np.ndarray, inverter_kva: np.ndarray) -> np.ndarray:
    """Export cap [kW] from a Volt-Watt limit [% of rated active power].

    Rated active power = ``inverter_kva`` [kVA], the nameplate apparent power (0 = no
    inverter, which gives a 0 kW cap: the caller must not apply it to such customers).
    """
    return np.asarray(p_pct, dtype=float) / 100.0 * np.asarray(inverter_kva, dtype=float)


def volt_watt_cap_kw(v_pu: np.ndarray, curve: Curve, inverter_kva: np.ndarray) -> np.ndarray:
    """Volt-Watt export cap [kW] at voltages ``v_pu`` [pu] for inverters of ``inverter_kva`` [kVA]."""
    return p_pct_to_cap_kw(volt_watt_p_pct(v_pu, curve), inverter_kva)
