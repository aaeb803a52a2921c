"""The feeder's per-step fast paths equal the slow ones they replace, bit for bit.

Each fast path (fewer numpy calls, no names, values read once per model) must give
exactly the numbers of the plain path: the reference harness compares every table of
whole runs for equality, and these tests pin each replacement on its own:

* limits (federates/feeder/opendss/limits.py): ``LimitsIndex.loading_pct``,
  ``flows_kw`` and ``vuf_values_pct`` against the per-kind ``line_loading_pct`` +
  ``transformer_loading_pct``, ``element_p_kw`` and ``vuf_pct`` (Fortescue);
* regulator taps and capacitor steps as arrays against the dicts;
* the inverters' damped moves (federates/feeder/inverters.py) against the curve and
  lag functions of voltvar.py / voltwatt.py as the loop used them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from federates.common.config import CustomerConnection, StudyFile
from federates.common.grid import CustomerSite
from federates.common.tables import StepArrays
from federates.feeder.inverters import InverterFleet
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from federates.feeder.voltvar import curve_value, lagged_target, q_pct_to_q_kvar
from federates.feeder.voltwatt import p_pct_to_cap_kw

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]


def _feeder(model: str, n: int) -> OpenDSSFeeder:
    d = REPO / "feeders" / model
    meta = yaml.safe_load((d / "feeder.yaml").read_text())
    f = OpenDSSFeeder(d / meta["master"])
    sites = place_customers(f.load_points(), n, seed=3)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    return f


@pytest.fixture(scope="module", params=[("ieee13", 40), ("ieee34", 60)], ids=["ieee13", "ieee34"])
def feeder(request) -> OpenDSSFeeder:
    return _feeder(*request.param)


def _solutions(f: OpenDSSFeeder):
    """A few solutions of ``f``: exports and imports, controls on and off."""
    rng = np.random.default_rng(11)
    n = f.n_customers
    for k, mult in enumerate((0.3, 0.8, 1.2)):
        f.set_background_scale(mult)
        f.set_customer_powers(rng.uniform(-9.0, 6.0, n), rng.uniform(-2.0, 2.0, n))
        f.solve(controls=bool(k % 2))
        yield


def test_limit_readouts_equal_the_per_kind_ones(feeder):
    f = feeder
    ix = f._limits()
    for _ in _solutions(f):
        max_i, powers, volts = f._bulk("max_currents"), f._bulk("powers"), f._bulk("volts")
        slow = np.concatenate([ix.line_loading_pct(max_i)[1], ix.transformer_loading_pct(powers)[1]])
        assert ix.loading_pct(max_i, powers).tobytes() == slow.tobytes()
        assert f.element_loading_pct()[1].tobytes() == slow.tobytes()
        assert f.element_loading_pct()[0] == ix.element_names
        slow_p = ix.element_p_kw(powers)[1]
        assert ix.flows_kw(powers).tobytes() == slow_p.tobytes()
        assert f.element_p_kw()[1].tobytes() == slow_p.tobytes()
        slow_vuf = ix.vuf_pct(volts, "here")[1]
        assert ix.vuf_values_pct(volts, "here").tobytes() == slow_vuf.tobytes()
        assert f.vuf_pct() == (ix.bus3_names, pytest.approx(slow_vuf, rel=0, abs=0))


def test_limit_values_of_many_solutions_equal_each_alone(feeder):
    f = feeder
    snaps, alone = [], []
    for _ in _solutions(f):
        snaps.append(f.limit_snapshot())
        alone.append((f.element_loading_values_pct(), f.vuf_values_pct()))
    loading, vuf = f.limit_values_of(*(np.stack([s[k] for s in snaps]) for k in range(3)))
    for t, (want_loading, want_vuf) in enumerate(alone):
        assert loading[t].tobytes() == want_loading.tobytes()
        assert vuf[t].tobytes() == want_vuf.tobytes()
    no_loading, vuf_only = f.limit_values_of(None, None, np.stack([s[2] for s in snaps]))
    assert no_loading is None and vuf_only.tobytes() == vuf.tobytes()


def test_vuf_of_a_dead_bus_is_nan_in_both(feeder):
    f = feeder
    ix = f._limits()
    next(_solutions(f))
    volts = f._bulk("volts").copy()
    volts[ix.bus3_nodes[0]] = 0.0  # no positive sequence: NaN
    fast, slow = ix.vuf_values_pct(volts, "here"), ix.vuf_pct(volts, "here")[1]
    assert np.isnan(fast[0]) and fast.tobytes() == slow.tobytes()
    many = ix.vuf_values_pct_many(np.stack([volts, f._bulk("volts")]), "here")
    assert many[0].tobytes() == slow.tobytes()


def test_taps_and_capacitor_steps_as_arrays(feeder):
    f = feeder
    for _ in _solutions(f):
        taps = f.regulator_taps()
        assert f.regulator_tap_steps().tolist() == [taps[r] for r in f.regulator_names]
        steps = f.capacitor_steps()
        assert f.capacitor_step_counts().tolist() == [steps[c] for c in f.capacitor_names]


def test_step_arrays_refuse_names_of_their_own():
    a = StepArrays(4)
    for bad in ("row", "reset", "g0", "capacity", "_specs"):
        with pytest.raises(ValueError):
            a.add(bad)
    a.add("v", (2,))
    a.row(9)  # grows: the attribute follows the new array
    assert a.v is a._arrays["v"] and a.v.shape == (16, 2)


# ------------------------------------------------------------------ the inverters' moves
def _fleet(lag_s: float, n: int = 12) -> InverterFleet:
    cfg = StudyFile.model_validate({
        "study": {"duration": 600, "market_interval": 300, "physics_step": 60},
        "controllers": {"volt_var": {"open_loop_response_time_s": lag_s},
                        "volt_watt": {"enabled": True, "open_loop_response_time_s": lag_s}},
    })
    sites = [CustomerSite(participant=f"c{i}", index=i, bus="b", phase="a", group=f"g{i}", load="")
             for i in range(n)]
    kva = np.where(np.arange(n) % 3 == 0, 0.0, np.linspace(5.0, 16.0, n))  # some without an inverter
    return InverterFleet(cfg, sites, kva)


def _reference_moves(fleet: InverterFleet, v: np.ndarray):
    """The damped moves as the loop computed them with the curve and lag functions."""
    ctl, has = fleet.ctl, fleet.has_inverter
    q_curve = q_pct_to_q_kvar(curve_value(v, fleet._vv_points), fleet.inverter_kva)
    q_target = lagged_target(fleet._q_start, q_curve, fleet._alpha_vv)
    q_new = np.where(has, fleet.q_kvar + ctl.volt_var.damping * (q_target - fleet.q_kvar), 0.0)
    q_changed = has & (np.abs(q_new - fleet.q_kvar) > ctl.volt_var.tolerance_kvar)
    vw_curve = p_pct_to_cap_kw(curve_value(v, fleet._vw_points), fleet.inverter_kva)
    vw_target = lagged_target(fleet._vw_start, vw_curve, fleet._alpha_vw)
    vw_new = np.where(has, fleet.vw_cap_kw + ctl.volt_watt.damping * (vw_target - fleet.vw_cap_kw),
                      fleet.vw_cap_kw)
    vw_changed = has & (np.abs(vw_new - fleet.vw_cap_kw) > ctl.volt_watt.tolerance_kw)
    return (q_new, q_changed, q_target - fleet.q_kvar), (vw_new, vw_changed, vw_target - fleet.vw_cap_kw)


@pytest.mark.parametrize("lag_s", [0.0, 5.0, 200.0])
def test_inverter_moves_equal_the_curve_functions(lag_s):
    fleet = _fleet(lag_s)
    n = fleet.n
    rng = np.random.default_rng(5)
    compared = 0
    for g in range(6):
        for call in range(5):  # a few solves per step, the set-points moving in between
            v = rng.uniform(1.0, 1.1, n)
            if call:  # the step has started: its lag start and factors are set
                fast = fleet._volt_var_moves(v), fleet._volt_watt_moves(v)
                for got, want in zip(fast, _reference_moves(fleet, v), strict=True):
                    for a, b in zip(got, want, strict=True):
                        assert a.tobytes() == b.tobytes()
                compared += 1
            if fleet.on_solve(g, v, -rng.uniform(0, 8, n), np.zeros(n), np.zeros(n)) is None:
                break
    assert compared >= 6
    assert (fleet._alpha_vv != 1.0) == (lag_s > 0)  # the lagged branch was taken (alpha < 1)
