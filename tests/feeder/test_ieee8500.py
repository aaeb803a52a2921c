"""The official IEEE 8500-node feeder (feeders/ieee8500): vendored files, catalog,
OpenDSS's own solution, split-phase loads, and prosumers on them in both engines.

References: the files' sha256 (SHA256SUMS, taken from the source commit); the base
solve of the official run script computed by plain OpenDSS (feeder.yaml ``reference``);
the model's naming convention for the phase of each 120/240 V service (load and bus
names end in the primary phase letter A/B/C of their center-tapped transformer);
OpenDSS's bus voltages read through its Bus API for the customers' 240 V and legs;
the in-process engine for the federation's tables.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import opendssdirect
import pandas as pd
import pytest
import yaml

from federates.common.config import FEEDERS_DIR, CustomerConnection, bundled_feeders
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from runner.feeders import describe_feeder
from tests.conftest import DEFAULT, assert_same_tables, tecosim

pytestmark = pytest.mark.feeder

FOLDER = FEEDERS_DIR / "ieee8500"
META = yaml.safe_load((FOLDER / "feeder.yaml").read_text())
MASTER = FOLDER / META["master"]
WINDOW = ["--set", "feeder.model=ieee8500", "--set", "study.start=2026-06-21T12:00:00-04:00",
          "--set", "study.duration=15min", "--set", "feeder.customer_connection.kind=direct"]


@pytest.fixture(scope="module")
def feeder() -> OpenDSSFeeder:
    return OpenDSSFeeder(MASTER)


def test_files_are_the_vendored_bytes() -> None:
    listed = {}
    for line in (FOLDER / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    for name, digest in listed.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name
    dss_files = {p.name for p in FOLDER.iterdir() if p.suffix.lower() == ".dss"}
    assert dss_files == set(listed)  # every model file is listed, none unlisted
    assert "Solve" not in MASTER.read_text()  # the master does not solve: the adapter does


def test_in_the_catalog() -> None:
    assert "ieee8500" in bundled_feeders()
    r = tecosim("feeders", "list")
    assert r.returncode == 0, r.stderr
    row = next(x for x in r.stdout.splitlines() if x.startswith("ieee8500"))
    assert " 4876 buses" in row and " 1177 loads" in row


def test_base_solve_is_opendss_own(feeder: OpenDSSFeeder) -> None:
    """The adapter's base solve (regulators and capacitors acting) against the official
    run script solved by plain OpenDSS (values stored to 3 decimals [kW] / 5 [pu])."""
    ref = META["reference"]
    p, q = feeder.source_pq()
    assert p == pytest.approx(ref["source_p_kw"], abs=0.002)
    assert q == pytest.approx(ref["source_q_kvar"], abs=0.002)
    assert feeder.losses_kw() == pytest.approx(ref["losses_kw"], abs=0.002)
    names, v = feeder.phase_node_v_pu()
    assert v.min() == pytest.approx(ref["v_min_pu"], abs=1e-5) and names[int(v.argmin())] == ref["v_min_node"]
    assert v.max() == pytest.approx(ref["v_max_pu"], abs=1e-5) and names[int(v.argmax())] == ref["v_max_node"]
    assert feeder.regulator_taps() == ref["taps"]
    assert sum(feeder.capacitor_steps().values()) == ref["capacitors_in_service"]
    d = describe_feeder(MASTER)
    assert d["buses"] == 4876 and d["loads"]["count"] == 1177 and d["elements"]["regulators"] == 12


def test_every_load_is_split_phase_on_its_transformer_phase(feeder: OpenDSSFeeder) -> None:
    points = feeder.load_points()
    assert len(points) == 1177
    for lp in points:
        assert lp.split_phase and lp.nodes == (1, 2), lp
        assert lp.phases == (lp.bus[-1],), lp  # sx<id><A|B|C>: the primary phase
    by_phase = {ph: sum(lp.phases == (ph,) for lp in points) for ph in "abc"}
    assert by_phase == {"a": 426, "b": 390, "c": 361}


def test_customers_across_the_legs(tmp_path: Path) -> None:
    """One prosumer per load (1177), connected with the study default ``secondary``:
    every one goes across its house's legs (no service transformer of ours); its
    v_pu is |V1 - V2| over 2 x the legs' base and its extremes cover both legs over
    their base, read back through OpenDSS's Bus API. The base is the model's own:
    VoltageBases 0.208 kV L-L give the legs 120.09 V (kVBase), the 240 V 240.18 V."""
    f = OpenDSSFeeder(MASTER)
    n_xf = f.element_counts()["transformers"]
    pts = f.load_points()
    sites = place_customers(pts, 300, seed=3)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    assert f.customer_connections == ["split_phase"] * len(sites)
    assert f.element_counts()["transformers"] == n_xf  # none added
    rng = np.random.default_rng(1)
    f.set_customer_powers(rng.uniform(-8, 4, len(sites)), rng.uniform(-1, 1, len(sites)))
    f.solve(controls=True)
    v = f.customer_v_pu()
    lo, hi = f.customer_v_extremes_pu()
    dss = f._dss
    for k in range(0, len(sites), 37):
        dss.Circuit.SetActiveBus(sites[k].bus)
        base = dss.Bus.kVBase() * 1000.0
        assert base == pytest.approx(208.0 / np.sqrt(3.0), rel=1e-12)
        ph = np.asarray(dss.Bus.Voltages()).view(complex)  # nodes 1, 2 (Bus.Nodes order)
        nodes = list(dss.Bus.Nodes())
        v1, v2 = ph[nodes.index(1)], ph[nodes.index(2)]
        assert v[k] == pytest.approx(abs(v1 - v2) / (2.0 * base), rel=1e-12)
        legs = [abs(v1) / base, abs(v2) / base]
        assert lo[k] == pytest.approx(min([*legs, v[k]]), rel=1e-12)
        assert hi[k] == pytest.approx(max([*legs, v[k]]), rel=1e-12)
    np.testing.assert_allclose(f.customer_v_base_v(), 2.0 * 208.0 / np.sqrt(3.0), rtol=1e-12)
    err = f.source_pq()[0] - f.load_kw() - f.losses_kw()
    assert abs(err) <= 1e-5 * f.source_pq()[0], err


@pytest.fixture(scope="module")
def runs_8500(tmp_path_factory) -> dict[str, Path]:
    """15 min of the default study on IEEE 8500 (40 prosumers, direct), both engines."""
    out = {}
    for engine in ("inprocess", "federation"):
        run_dir = tmp_path_factory.mktemp("runs8500") / engine
        r = tecosim("run", str(DEFAULT), "--engine", engine, "--out", str(run_dir), "--no-report", *WINDOW)
        assert r.returncode == 0, f"{engine} run failed:\n{r.stdout}\n{r.stderr}"
        out[engine] = run_dir
    return out


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted((run_dir / "results").glob("*.parquet"))}


@pytest.mark.federation
def test_8500_federation_equals_inprocess(runs_8500) -> None:
    assert_same_tables(_tables(runs_8500["inprocess"]), _tables(runs_8500["federation"]))


@pytest.mark.federation
def test_8500_run_conserves_power_and_checks_legs(runs_8500) -> None:
    t = _tables(runs_8500["inprocess"])
    assert (t["kpis"]["power_balance_error_pct"] <= 1e-3).all()
    g = t["grid"]
    assert len(g) == 15 and g["converged"].all()
    assert [c for c in g.columns if c.startswith("tap_")] == [f"tap_{r}" for r in META["reference"]["taps"]]
    v, viol = t["voltages"], t["violations"]
    cust = viol[viol["kind"] == "customer"]
    # a customer's violation value is the extreme of its 240 V and legs: never inside
    # the band where its 240 V (v_pu) is outside
    merged = cust.merge(v, left_on=["step", "element"], right_on=["step", "participant"])
    hi = merged["limit"] == "v_max"
    assert (merged.loc[hi, "value"] >= merged.loc[hi, "v_pu"] - 1e-12).all()
    assert (merged.loc[~hi, "value"] <= merged.loc[~hi, "v_pu"] + 1e-12).all()


def test_a_model_opendss_cannot_use_names_file_and_problem(tmp_path: Path) -> None:
    """Bad input: exit 2 naming the file and what OpenDSS said."""
    bad = tmp_path / "Master.dss"
    bad.write_text("Clear\nNew Circuit.x basekv=12.47\nRedirect nowhere/Lines.dss\n")
    r = tecosim("run", str(DEFAULT), "--set", "feeder.model=null", "--set", f"feeder.path={bad}",
                "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(bad) in r.stderr and "Lines.dss" in r.stderr


def test_opendss_reads_the_vendored_master_alone() -> None:
    """The vendored folder is complete: plain OpenDSS compiles the master and solves it
    as the official run script does (it raises MaxIterations to 20: the default 15 is
    not enough for this model)."""
    dss = opendssdirect.NewContext()
    dss.Text.Command(f"Compile [{MASTER}]")
    dss.Text.Command("Set MaxIterations=20")
    dss.Solution.Solve()
    assert dss.Solution.Converged() and dss.Loads.Count() == 1177
