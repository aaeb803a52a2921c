"""Power balance over every power-conversion element, on a model with Generator, PVSystem,
Storage, InvControl (and sources other than the circuit's own Vsource).

Reference: conservation of active power. OpenDSS's ``Circuit.TotalPower`` (the
adapter's ``source_pq``) is what every source (Vsource, Isource) delivers; it must
equal the net power into all other power-conversion elements (``load_kw``: Loads minus
what Generators, PVSystems and Storage deliver) plus the PD elements' losses
(``Circuit.Losses``), to the solution tolerance (measured: 6e-6 kW of 223 kW, 3e-8
relative; asserted at 1e-5 relative). The model's DER stay the model's own: the
adapter neither removes nor replaces them (their power is what OpenDSS solved).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from federates.common.config import CustomerConnection
from federates.common.grid import CustomerSite
from federates.feeder.opendss import OpenDSSFeeder
from tests.conftest import DEFAULT, tecosim

pytestmark = pytest.mark.feeder

#: a 12.47 kV feeder with three-, two- and single-phase primary loads, a split-phase
#: 120/240 V house behind a center-tapped transformer, and the model's own DER
DER_MODEL = """\
Clear
New Circuit.der basekv=12.47 pu=1.02 phases=3 bus1=src MVAsc3=200 MVAsc1=180
New Linecode.mv nphases=3 r1=0.2 x1=0.4 r0=0.5 x0=1.2 c1=0 c0=0 units=km normamps=400
New Linecode.tpx nphases=2 units=km rmatrix=[0.5 0.2 | 0.2 0.5] xmatrix=[0.1 0.03 | 0.03 0.1] cmatrix=[0 | 0 0] normamps=200
New Line.l1 bus1=src bus2=b1 linecode=mv length=1
New Line.l2 bus1=b1 bus2=b2 linecode=mv length=1.5
New Line.l3 bus1=b2 bus2=b3 linecode=mv length=1
New Load.l3ph bus1=b1 phases=3 kV=12.47 kW=300 kvar=100 model=1
New Load.l2ph bus1=b2.1.2 phases=2 kV=12.47 kW=120 kvar=40 model=1
New Load.l1ph bus1=b3.2 phases=1 kV=7.2 kW=60 kvar=20 model=1
New Transformer.ct phases=1 windings=3 buses=[b3.3 sec.1.0 sec.0.2] kVs=[7.2 0.12 0.12] kVAs=[50 50 50] %Rs=[0.6 1.2 1.2] XHL=2.04 XHT=2.04 XLT=1.36
New Line.tpx bus1=sec.1.2 bus2=house.1.2 phases=2 linecode=tpx length=0.03
New Load.house bus1=house.1.2 phases=2 kV=0.208 kW=8 pf=0.97 model=1 conn=wye
New Generator.g1 bus1=b1 phases=3 kV=12.47 kW=150 pf=1 model=1
New PVSystem.pv1 bus1=b2 phases=3 kV=12.47 kVA=120 Pmpp=100 irradiance=0.9 %cutin=0.1 %cutout=0.1
New Storage.bat bus1=b3 phases=3 kV=12.47 kWrated=50 kWhrated=200 %stored=80 State=DISCHARGING %Discharge=50
New XYCurve.vv npts=4 Xarray=[0.5 0.95 1.05 1.5] Yarray=[1 0 0 -1]
New InvControl.ic mode=VOLTVAR vvc_curve1=vv voltage_curvex_ref=rated DERList=[PVSystem.pv1]
{extra}
Set VoltageBases=[12.47 0.208]
CalcVoltageBases
"""
#: a second (weak) Vsource and an Isource: sources, summed by Circuit.TotalPower
EXTRA_SOURCES = ("New Isource.inj bus1=b3.1 phases=1 amps=2 angle=0\n"
                 "New Vsource.v2 bus1=b3 basekv=12.47 pu=1.0 MVAsc3=5 MVAsc1=5")
#: the model's DER at their set-points [kW delivered]: Generator kW, PVSystem Pmpp x
#: irradiance, Storage kWrated x %Discharge
DER_KW = {"generator": 150.0, "pvsystem": 90.0, "storage": 25.0}
REL_TOL = 1e-5


def write_der_model(out_dir: Path, extra: str = "") -> Path:
    master = out_dir / "der.dss"
    master.write_text(DER_MODEL.format(extra=extra))
    return master


def _balance_error_kw(f: OpenDSSFeeder) -> float:
    return f.source_pq()[0] - f.load_kw() - f.losses_kw()


@pytest.mark.parametrize("extra", ["", EXTRA_SOURCES], ids=["one_source", "more_sources"])
def test_balance_counts_every_pc_element(tmp_path: Path, extra: str) -> None:
    f = OpenDSSFeeder(write_der_model(tmp_path, extra))
    pc = f.pc_powers_kw()
    assert set(pc) == {"load", "generator", "pvsystem", "storage"}  # sources are the other side
    for cls, kw in DER_KW.items():  # the model's own DER, at their own set-points
        assert pc[cls] == pytest.approx(-kw, rel=1e-6), cls
    err = _balance_error_kw(f)
    assert abs(err) <= REL_TOL * f.source_pq()[0], err
    # without the DER the balance would be off by their whole output
    assert abs(f.source_pq()[0] - pc["load"] - f.losses_kw()) > 0.5 * sum(DER_KW.values())
    # the element-by-element sum gives the same number, bit for bit
    assert f._load_kw_per_element() == f.load_kw()


def test_balance_with_customers_and_invcontrol(tmp_path: Path) -> None:
    """Customers (exporting and importing, one on the split-phase house) on the model
    with its DER and InvControl; every solve conserves power."""
    f = OpenDSSFeeder(write_der_model(tmp_path))
    pts = {lp.name: lp for lp in f.load_points()}
    assert pts["house"].split_phase and pts["house"].phases == ("c",)
    assert not pts["l2ph"].split_phase and pts["l2ph"].phases == ("a", "b")
    sites = [CustomerSite("p0", 0, "b2", "b", "g0", "l2ph"),  # 2-phase primary load, phase b
             CustomerSite("p1", 1, "b1", "a", "g1", "l3ph"),
             CustomerSite("p2", 2, "house", "c", "g2", "house")]
    f.attach_customers(sites, CustomerConnection(kind="direct"))
    assert f.customer_connections == ["direct", "direct", "split_phase"]
    for p in ([-5.0, 3.0, -6.0], [4.0, -2.0, 3.5]):
        f.set_customer_powers(np.asarray(p), np.asarray([0.5, 0.0, -1.0]))
        f.solve(controls=True)
        assert abs(_balance_error_kw(f)) <= REL_TOL * f.source_pq()[0]
        cp, _ = f.customer_pq()
        # constant-PQ: drawn = set, to the solution tolerance (measured <= 4e-4 kW)
        np.testing.assert_allclose(cp, p, atol=2e-3)
    assert f.element_counts()["pv_systems"] == 1  # kept, not replaced


def test_run_on_a_model_with_der_passes_the_balance_check(tmp_path: Path) -> None:
    """``tecosim run`` on the DER model by path: the run's conservation check (kpis
    power_balance_error_pct <= 0.1 %) passes; before, load_kw counted Loads only and the
    check failed with an error of the DER's share."""
    master = write_der_model(tmp_path)
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["study"].update(name="der", start="2026-06-21T12:00:00-04:00", duration="15min")
    raw["feeder"].update(model=None, path=str(master))
    raw["feeder"]["customer_connection"]["kind"] = "direct"
    raw["prosumers"]["count"] = 6
    study = tmp_path / "der.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = tmp_path / "run"
    r = tecosim("run", str(study), "--engine", "inprocess", "--out", str(run_dir), "--no-report")
    assert r.returncode == 0, f"run failed:\n{r.stdout}\n{r.stderr}"
    import pandas as pd

    k = pd.read_parquet(run_dir / "results" / "kpis.parquet")
    assert (k["power_balance_error_pct"] <= 1e-3).all(), k["power_balance_error_pct"].max()


def test_customer_powers_taken_from_the_loads_read_equal_their_own_read(tmp_path: Path) -> None:
    """customer_pq reuses load_and_gross_kw's read of every Load (the customers are the
    last Loads) within one solution: bit for bit its own batch read; a set-point
    changed since makes it read again."""
    f = OpenDSSFeeder(write_der_model(tmp_path))
    sites = [CustomerSite("p0", 0, "b2", "b", "g0", "l2ph"), CustomerSite("p1", 1, "b1", "a", "g1", "l3ph")]
    f.attach_customers(sites, CustomerConnection(kind="direct"))
    f.set_customer_powers(np.asarray([-5.0, 3.0]), np.asarray([0.5, 0.0]))
    f.solve(controls=True)
    f.load_and_gross_kw()
    own = f._cust_batch.total_powers()
    p, q = f.customer_pq()
    assert np.array_equal(p, own[:, 0]) and np.array_equal(q, own[:, 1])
    f.set_customer_powers(np.asarray([-1.0, 1.0]), np.asarray([0.0, 0.0]))  # no solve yet
    assert f._loads_pq[0] == -1
    p2, _ = f.customer_pq()
    assert np.array_equal(p2, f._cust_batch.total_powers()[:, 0])
