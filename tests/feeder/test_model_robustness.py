"""Model files that OpenDSS accepts but that lack what tecosim needs before the first solve.

References: OpenDSS builds its bus list at the first solve (``Solve``,
``CalcVoltageBases``) or on ``MakeBusList``, and a bus has a voltage base only after
``CalcVoltageBases`` (or ``SetkVBase``); runner/cli.py's exit codes (2 bad input,
1 failed run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from federates.common.config import CustomerConnection
from federates.common.errors import FeederModelError
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from tests.conftest import DEFAULT, tecosim

pytestmark = pytest.mark.feeder

KV_LL = 4.16  # kV
KV_LN = KV_LL / np.sqrt(3.0)
#: A tiny feeder with no Solve: source, one line, a three-phase bus b1 with a load per phase.
CIRCUIT = f"""\
Clear
New Circuit.tiny basekv={KV_LL} pu=1.0 phases=3 bus1=src MVAsc3=200 MVAsc1=200
New Line.l1 bus1=src bus2=b1 phases=3 r1=0.1 x1=0.2 r0=0.3 x0=0.6 c1=0 c0=0 length=1 units=km
""" + "".join(f"New Load.ld{k} bus1=b1.{k} phases=1 kV={KV_LN:.4f} kW=100 kvar=30 model=1\n" for k in (1, 2, 3))
BASES = f"Set VoltageBases=[{KV_LL}]\nCalcVoltageBases\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_model_without_solve_loads(tmp_path):
    f = OpenDSSFeeder(_write(tmp_path, "no_solve.dss", CIRCUIT + BASES))
    f.check_voltage_bases()
    assert {lp.name for lp in f.load_points()} == {"ld1", "ld2", "ld3"}
    assert f.bus_kv_ln("b1") == pytest.approx(KV_LN, rel=1e-3)
    sites = place_customers(f.load_points(), 3, seed=1)
    f.attach_customers(sites, CustomerConnection(kind="direct"))
    f.set_customer_powers(np.full(3, 2.0), np.zeros(3))
    f.solve()
    # 300 kW over 1 km at 4.16 kV: a drop of a few tenths of a percent
    assert np.all((f.customer_v_pu() > 0.98) & (f.customer_v_pu() < 1.0))


def test_elements_after_calcvoltagebases_are_found(tmp_path):
    """A bus created after CalcVoltageBases is not in OpenDSS's bus list until the next
    solve; the adapter builds the list itself and then names the bus as baseless."""
    late = "New Line.l2 bus1=b1 bus2=b2 phases=3 r1=0.1 x1=0.2 r0=0.3 x0=0.6 c1=0 c0=0 length=1 units=km\n" \
           f"New Load.late bus1=b2.1 phases=1 kV={KV_LN:.4f} kW=50 model=1\n"
    f = OpenDSSFeeder(_write(tmp_path, "late.dss", CIRCUIT + BASES + late))
    assert "late" in {lp.name for lp in f.load_points()}
    with pytest.raises(FeederModelError, match=r"late\.dss: the load buses b2 have no voltage base"):
        f.check_voltage_bases()


@pytest.mark.parametrize("tail", ["", f"Set VoltageBases=[{KV_LL}]\n"], ids=["no_bases", "no_calc"])
def test_model_without_voltage_bases_names_the_file_and_the_fix(tmp_path, tail):
    f = OpenDSSFeeder(_write(tmp_path, "no_bases.dss", CIRCUIT + tail))  # loads and solves
    assert f.losses_kw() > 0
    with pytest.raises(FeederModelError) as e:
        f.check_voltage_bases()
    msg = str(e.value)
    assert "no_bases.dss" in msg and "the load buses b1 have no voltage base" in msg
    assert "Set VoltageBases=[...]" in msg and "CalcVoltageBases" in msg


def test_run_without_voltage_bases_is_bad_input(tmp_path):
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["feeder"]["model"] = None
    cfg["feeder"]["path"] = str(_write(tmp_path, "no_bases.dss", CIRCUIT))
    cfg["study"]["duration"] = "15min"
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(cfg))
    r = tecosim("run", str(study), "--engine", "inprocess", "--out", str(tmp_path / "run"), timeout=120)
    assert r.returncode == 2, r.stderr  # runner/cli.py: ConfigError -> 2
    assert "feeder.path" in r.stderr and "no_bases.dss" in r.stderr
    assert "Set VoltageBases=[...]" in r.stderr and "CalcVoltageBases" in r.stderr
    assert "Traceback" not in r.stderr


def test_feeders_show_still_inspects_a_model_without_voltage_bases(tmp_path):
    """``feeders show`` is how one finds out what such a model lacks: the voltage-base
    check is a separate call (prepare_run's), not part of loading the model."""
    from runner.feeders import describe_feeder

    d = describe_feeder(_write(tmp_path, "no_bases.dss", CIRCUIT))
    assert d["buses"] == 2 and d["buses_without_kv_base"] == 2  # src, b1
    assert d["loads"]["count"] == 3 and d["base_solve"]["converged"]


def test_validate_also_refuses_a_model_without_voltage_bases(tmp_path):
    import yaml

    from tests.conftest import DEFAULT, tecosim

    model = tmp_path / "nobases.dss"
    model.write_text(
        "Clear\nNew Circuit.nb basekv=4.16 pu=1.0 phases=3 bus1=src\n"
        "New Line.l1 bus1=src bus2=b1 phases=3 r1=0.1 x1=0.2 r0=0.3 x0=0.6 length=1 units=km\n"
        "New Load.ld1 bus1=b1.1 phases=1 kV=2.4 kW=10 kvar=2\n")
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["feeder"]["model"] = None
    cfg["feeder"]["path"] = str(model)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    r = tecosim("validate", str(tmp_path / "study.yaml"), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "feeder.path" in r.stderr and "VoltageBases" in r.stderr
