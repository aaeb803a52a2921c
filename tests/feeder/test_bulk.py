"""The adapter's batch paths (DSS C-API ``Batch_*`` / ``Alt_CEBatch_*``) against the
classic one-element-at-a-time OpenDSS API they replace.

Reference: the classic path itself, on two adapters built from the same model with
the same customers, driven through the same set-points: every node voltage, the source
power, the losses, taps and capacitor states must agree. Measured: bit-identical
(difference 0); asserted at 1e-12 relative, the floating-point rounding of a few
operations, so a change in what the batch writes (another property, a missed Load,
the kvar mode) fails by orders of magnitude more.
"""

from __future__ import annotations

import numpy as np
import pytest

from federates.common.config import FEEDERS_DIR, CustomerConnection
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers

pytestmark = pytest.mark.feeder

RTOL = 1e-12


def _pair(master, count: int, kind: str) -> tuple[OpenDSSFeeder, OpenDSSFeeder]:
    out = []
    for _ in range(2):
        f = OpenDSSFeeder(master)
        f.attach_customers(place_customers(f.load_points(), count, seed=5), CustomerConnection(kind=kind))
        out.append(f)
    return out[0], out[1]


def _state(f: OpenDSSFeeder) -> np.ndarray:
    v = np.asarray(f._dss.Circuit.AllBusVolts(), dtype=float)
    return np.concatenate([v, f.source_pq(), [f.losses_kw()]])


@pytest.mark.parametrize("model,count,kind", [("ieee13", 40, "secondary"), ("ieee8500", 1177, "direct")])
def test_batch_writes_equal_per_load_writes(model: str, count: int, kind: str) -> None:
    master = FEEDERS_DIR / model / ("IEEE13.dss" if model == "ieee13" else "Master.dss")
    fast, slow = _pair(master, count, kind)
    rng = np.random.default_rng(7)
    p = rng.uniform(-8.0, 5.0, count)
    q = rng.uniform(-1.5, 1.5, count)
    for step, mult in enumerate((0.5, 0.8, 0.8)):
        if step == 2:  # only some customers change: the others are skipped (NaN) by the batch
            p[::3] += 1.0
        fast.set_background_scale(mult)
        slow._set_background_scale_per_load(mult)
        fast.set_customer_powers(p, q)
        slow._set_customer_powers_per_load(p, q)
        for f in (fast, slow):
            f.solve(controls=True)
        np.testing.assert_allclose(_state(fast), _state(slow), rtol=RTOL, atol=0)
        assert fast.regulator_taps() == slow._regulator_taps_per_regulator()
        assert fast.regulator_taps() == fast._regulator_taps_per_regulator()
        assert fast.capacitor_steps() == fast._capacitor_steps_per_capacitor()
        assert fast.load_kw() == fast._load_kw_per_element()
        cp, cq = fast.customer_pq()  # one batch read, against CktElement.TotalPowers per Load
        loads, el = fast._dss.Loads, fast._dss.CktElement
        classic = []
        for i in fast._cust_load_idx.tolist():
            loads.Idx(i)
            classic.append(el.TotalPowers()[:2])
        np.testing.assert_array_equal(np.column_stack([cp, cq]), np.asarray(classic))


def test_model_loadshape_batch_write_equals_per_load(tmp_path) -> None:
    """``set_background_time`` (batch) against the same Loads written one by one."""
    master = FEEDERS_DIR / "ieee13" / "IEEE13.dss"
    fast, slow = OpenDSSFeeder(master), OpenDSSFeeder(master)
    fast.set_background_time(13.5, 0.7)
    loads = slow._dss.Loads
    for k, (kw, kvar) in enumerate(fast._bg_model_written.tolist()):
        loads.Idx(k + 1)
        loads.kW(kw)
        loads.kvar(kvar)
    for f in (fast, slow):
        f.solve(controls=True)
    np.testing.assert_allclose(_state(fast), _state(slow), rtol=RTOL, atol=0)
