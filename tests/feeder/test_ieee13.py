"""The bundled IEEE 13-node feeder against the published power-flow results.

Reference: IEEE PES Distribution System Analysis Subcommittee, IEEE 13 Node Test
Feeder, radial test feeders power-flow results (tests/data/ieee13_published_voltages.csv,
named in feeders/ieee13/feeder.yaml).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from federates.common.errors import FeederModelError
from federates.feeder.opendss import OpenDSSFeeder

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
FEEDER_DIR = REPO / "feeders" / "ieee13"
META = yaml.safe_load((FEEDER_DIR / "feeder.yaml").read_text())
MASTER = FEEDER_DIR / META["master"]
TOL_PU = 0.002
ANSI_A_PU = (0.95, 1.05)  # ANSI C84.1 Range A, service voltage
ANSI_B_PU = (110 / 120, 127 / 120)  # ANSI C84.1 Range B


def published() -> list[tuple[str, str, float]]:
    with (REPO / META["reference"]).open() as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        return [(r["bus"], r["phase"], float(r["v_pu"])) for r in rows]


@pytest.fixture(scope="module")
def published_case() -> OpenDSSFeeder:
    f = OpenDSSFeeder(MASTER)
    f.set_regulator_taps(META["published_taps"])
    f.hold_taps(True)
    f.solve(controls=False)
    return f


def test_feeder_yaml_is_complete():
    for key in ("name", "master", "source", "base_kv", "description", "reference", "published_taps"):
        assert key in META, key
    assert META["base_kv"] == [115.0, 4.16, 0.48]
    # published taps 10/8/11 steps of 0.625 % = 1.0625/1.0500/1.0687 pu
    ratios = {k: 1 + 0.00625 * v for k, v in META["published_taps"].items()}
    assert ratios == pytest.approx({"reg_a": 1.0625, "reg_b": 1.0500, "reg_c": 1.06875})


def test_every_published_voltage_within_0_002_pu(published_case):
    v = published_case.node_v_pu()
    rows = published()
    assert len(rows) == 35
    assert published_case.regulator_taps() == META["published_taps"]
    misses = []
    for bus, phase, v_pub in rows:
        node = f"{bus}.{'abc'.index(phase) + 1}"
        assert node in v, f"node {node} of the published results is not in the model"
        if abs(v[node] - v_pub) > TOL_PU:
            misses.append((node, v_pub, round(v[node], 5)))
    assert not misses, f"nodes off the published voltages by more than {TOL_PU} pu: {misses}"


def test_power_balance_published_case(published_case):
    p_src, q_src = published_case.source_pq()
    p_loads = published_case.load_kw()
    losses = published_case.losses_kw()
    assert p_src == pytest.approx(p_loads + losses, rel=1e-3)
    # published total input: about 3577 kW, 1725 kvar at the substation
    assert p_src == pytest.approx(3577, rel=0.005)
    assert q_src == pytest.approx(1725, rel=0.01)


def test_load_points_match_the_published_loads():
    f = OpenDSSFeeder(MASTER)
    lps = {lp.name: lp for lp in f.load_points()}
    assert len(lps) == 15
    # published spot loads 3266 kW (1158 + 973 + 1135) + distributed load 200 kW
    assert sum(lp.kw for lp in lps.values()) == pytest.approx(3466.0)
    assert lps["671"].phases == ("a", "b", "c") and lps["671"].conn == "delta"
    assert lps["692"].phases == ("c", "a") and lps["692"].conn == "delta"
    assert lps["646"].phases == ("b", "c")
    assert lps["611"].phases == ("c",) and lps["611"].bus == "611"
    assert lps["634a"].kv == pytest.approx(0.277)


def test_regulated_case_converges_within_ansi_band():
    f = OpenDSSFeeder(MASTER)  # regulators free, controls on
    f.solve(controls=True)
    taps = f.regulator_taps()
    assert all(1 <= t <= 16 for t in taps.values()), taps  # regulators boost this loaded feeder
    v = f.node_v_pu()
    load_nodes = set()
    for lp in f.load_points():
        for ph in lp.phases:
            load_nodes.add(f"{lp.bus}.{'abc'.index(ph) + 1}")
    for node in load_nodes:
        assert ANSI_A_PU[0] <= v[node] <= ANSI_A_PU[1], (node, v[node])
    feeder_nodes = {n: x for n, x in v.items() if not n.startswith("sourcebus")}
    assert all(ANSI_B_PU[0] <= x <= ANSI_B_PU[1] for x in feeder_nodes.values()), feeder_nodes
    p_src, _ = f.source_pq()
    assert p_src == pytest.approx(f.load_kw() + f.losses_kw(), rel=1e-3)


def test_missing_master_names_the_file(tmp_path):
    missing = tmp_path / "nope.dss"
    with pytest.raises(FeederModelError, match=r"nope\.dss"):
        OpenDSSFeeder(missing)


def test_broken_master_reports_opendss_message(tmp_path):
    bad = tmp_path / "bad.dss"
    bad.write_text("Clear\nNew Circuit.x basekv=4.16\nNew Load.l1 bus1=a kW=notanumber\n")
    with pytest.raises(FeederModelError, match=r"(?s)bad\.dss.*notanumber"):
        OpenDSSFeeder(bad)
