"""Several inverters on one node settle, and where a single inverter of their summed
rating would (federates/feeder/inverters.py, "Life cycle": Anderson acceleration).

The case, on a real (tiny) OpenDSS model: a 12.47 kV source, a three-phase trunk and a
long single-phase lateral; at its end, node ``pv``, six PV customers connected
directly (kind ``direct``: all six Loads on the same bus node, so all six inverters
measure the same voltage), Volt-VAR on (Category B curve), Volt-Watt off. Their export
lifts the node onto the curve's absorbing slope. Moving together, the six inverters
have a loop gain G = sum of curve slopes [kvar/pu] * dV/dQ [pu/kvar] of about 3.6:
the damped step (damping 0.5) needs G < 3 and never settles, whatever the cap.

The independent reference: on the same OpenDSS model, the voltage v* at which the node
voltage with every inverter at its curve value, q_i = curve_i(v*), is v* itself, found
by bisection (the node voltage falls as the inverters absorb more, so the residual is
monotone). The curve is linear in the rating, so this is also the fixed point of one
inverter of the summed rating.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from federates.common.config import CustomerConnection, StudyFile, VoltVarConfig
from federates.common.grid import CustomerSite
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.voltvar import volt_var_points, volt_var_q_kvar
from tests.control_loop import ControlLoop

pytestmark = pytest.mark.feeder

KV_LL = 12.47
KV_LN = KV_LL / math.sqrt(3.0)
INVERTER_KVA = np.array([250.0, 300.0, 350.0, 300.0, 250.0, 350.0])  # six on one node
EXPORT_KW = INVERTER_KVA / 1.2  # each PV at its Pmpp (kVA = 1.2 kWp)
N = len(INVERTER_KVA)
VV = VoltVarConfig()  # Category B defaults
VV_CURVE = volt_var_points(VV)
MAX_ROUNDS = 20  # feeder.max_control_iterations of the default study

NETWORK = f"""\
Clear
New Circuit.settle basekv={KV_LL} pu=1.04 phases=3 bus1=src MVAsc3=200 MVAsc1=200
New Linecode.trunk nphases=3 r1=0.2 x1=0.4 r0=0.6 x0=1.2 c1=0 c0=0 units=km
New Linecode.lateral nphases=1 r1=1.0 x1=2.5 r0=1.0 x0=2.5 c1=0 c0=0 units=km
New Line.trunk bus1=src bus2=n1 linecode=trunk length=2 units=km
New Line.lateral phases=1 bus1=n1.1 bus2=pv.1 linecode=lateral length=4 units=km
New Load.near bus1=n1 phases=3 kV={KV_LL} kW=300 pf=1 model=1 vminpu=0.7 vmaxpu=1.3
Set voltagebases=[{KV_LL}]
Calcv
Set tolerance=1e-9
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("settle") / "master.dss"
    path.write_text(NETWORK)
    return path


def sites(n: int) -> list[CustomerSite]:
    return [CustomerSite(participant=f"pv{i}", index=i, bus="pv", phase="a", group=f"g{i}", load="")
            for i in range(n)]


def feeder_for(master: Path, n: int) -> OpenDSSFeeder:
    feeder = OpenDSSFeeder(master)
    feeder.attach_customers(sites(n), CustomerConnection(kind="direct"))
    return feeder


def node_v_pu(feeder: OpenDSSFeeder, p_kw: np.ndarray, q_kvar: np.ndarray) -> float:
    """The voltage of node ``pv`` [pu] with the customers at ``p_kw`` / ``q_kvar``."""
    feeder.set_customer_powers(p_kw, q_kvar)
    feeder.solve(controls=False)
    v = feeder.customer_v_pu()
    assert np.ptp(v) < 1e-12  # one node: every inverter measures the same voltage
    return float(v[0])


def study(anderson_depth: int | None = None) -> StudyFile:
    controllers = {"volt_var": {"open_loop_response_time_s": 0.0},  # the curve itself each step
                   "volt_watt": {"enabled": False}, "curtailment": {"enabled": False}}
    if anderson_depth is not None:
        controllers["anderson_depth"] = anderson_depth
    return StudyFile.model_validate({
        "study": {"duration": 60, "market_interval": 60, "physics_step": 60},
        "feeder": {"max_control_iterations": MAX_ROUNDS},
        "controllers": controllers,
    })


def settle(master: Path, kva: np.ndarray, export_kw: np.ndarray, cfg: StudyFile) -> dict:
    """One physics step driven as the feeder drives it: solve, the inverters move, re-solve."""
    n = len(kva)
    feeder = feeder_for(master, n)
    loop = ControlLoop(cfg, sites(n), kva)
    index = {s.participant: s.index for s in sites(n)}
    q_kvar = np.zeros(n)
    while True:
        v = node_v_pu(feeder, -export_kw, q_kvar)
        commands = loop.on_readings(0, np.full(n, v), -export_kw, q_kvar, np.zeros(n))
        if not commands:
            break
        for c in commands:
            q_kvar[index[c.participant]] = c.q_kvar
    control = loop.tables()["control"].iloc[0]
    return {"v_pu": v, "q_kvar": q_kvar, "rounds": int(control["iterations"]),
            "converged": bool(control["converged"])}


def fixed_point_v_pu(master: Path) -> float:
    """v* with node_v(q_i = curve_i(v*)) = v*, by bisection [pu]."""
    feeder = feeder_for(master, N)

    def residual(v_pu: float) -> float:
        return node_v_pu(feeder, -EXPORT_KW, volt_var_q_kvar(np.full(N, v_pu), VV_CURVE, INVERTER_KVA)) - v_pu

    lo, hi = VV.v3_pu, VV.v4_pu  # the absorbing slope
    assert residual(lo) > 0 > residual(hi)
    while hi - lo > 1e-10:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if residual(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.fixture(scope="module")
def v_star(master) -> float:
    return fixed_point_v_pu(master)


def test_the_case_oscillates_under_damped_steps(master, v_star):
    """The case is what it claims: the six inverters' loop gain is above 3 (where
    damping 0.5 diverges) and the damped step alone hits the round cap."""
    feeder = feeder_for(master, N)
    slope_kvar_per_pu = float(np.sum(0.01 * VV.q1_pct * INVERTER_KVA / (VV.v4_pu - VV.v3_pu)))
    q_star = volt_var_q_kvar(np.full(N, v_star), VV_CURVE, INVERTER_KVA)
    dq_kvar = 10.0
    dv_dq = (node_v_pu(feeder, -EXPORT_KW, q_star + dq_kvar / N) - node_v_pu(feeder, -EXPORT_KW, q_star)) / dq_kvar
    gain = -slope_kvar_per_pu * dv_dq
    print(f"v* = {v_star:.6f} pu, loop gain {gain:.2f}")
    assert 3.0 < gain < 6.0  # 3.64
    damped = settle(master, INVERTER_KVA, EXPORT_KW, study(anderson_depth=0))
    assert not damped["converged"] and damped["rounds"] == MAX_ROUNDS


def test_several_inverters_on_one_node_settle_at_the_fixed_point(master, v_star):
    ours = settle(master, INVERTER_KVA, EXPORT_KW, study())
    q_star = volt_var_q_kvar(np.full(N, v_star), VV_CURVE, INVERTER_KVA)
    print(f"{ours['rounds']} rounds, |v - v*| = {abs(ours['v_pu'] - v_star):.2e} pu, "
          f"max |q - q*| = {np.abs(ours['q_kvar'] - q_star).max():.4f} kvar")
    assert ours["converged"] and ours["rounds"] <= 10
    assert abs(ours["v_pu"] - v_star) < 1e-5
    # the stop rule: every inverter within tolerance_kvar / damping of its curve value
    np.testing.assert_allclose(ours["q_kvar"], q_star, atol=VV.tolerance_kvar / VV.damping)


def test_same_fixed_point_as_one_inverter_of_the_summed_rating(master, v_star):
    several = settle(master, INVERTER_KVA, EXPORT_KW, study())
    one = settle(master, np.array([INVERTER_KVA.sum()]), np.array([EXPORT_KW.sum()]), study())
    print(f"six: {several['rounds']} rounds, one: {one['rounds']} rounds, "
          f"v six - one = {several['v_pu'] - one['v_pu']:.2e} pu")
    assert several["converged"] and one["converged"]
    assert abs(one["v_pu"] - v_star) < 1e-5
    assert abs(several["v_pu"] - one["v_pu"]) < 1e-5
    assert abs(several["q_kvar"].sum() - one["q_kvar"][0]) < N * VV.tolerance_kvar / VV.damping


def test_a_stage_that_does_not_oscillate_takes_the_damped_steps_bit_for_bit(master):
    """One small inverter on the node (loop gain ~0.5): no sustained oscillation, so the
    acceleration never engages and the result is the damped step's, bit for bit."""
    kva, export_kw = INVERTER_KVA[:1], EXPORT_KW[:1]
    damped = settle(master, kva, export_kw, study(anderson_depth=0))
    ours = settle(master, kva, export_kw, study())
    assert damped["converged"] and ours["converged"]
    assert ours["rounds"] == damped["rounds"]
    assert ours["v_pu"] == damped["v_pu"]
    np.testing.assert_array_equal(ours["q_kvar"], damped["q_kvar"])
