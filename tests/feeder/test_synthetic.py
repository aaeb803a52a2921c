"""The bundled parametric synthetic feeder (issue 4): federates/feeder/synthetic.py.

Physical checks: power balance of the solved circuit (source = loads + losses), sane
load-node voltages, the phase spread of the single-phase loads, and a weaker source
(smaller short-circuit MVA) with longer lines lowering the end-of-feeder voltage.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from federates.common.config import CustomerConnection, bundled_feeders
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from federates.feeder.synthetic import write_synthetic_feeder

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "feeders" / "synthetic"


def load_bus_v(f: OpenDSSFeeder) -> list[float]:
    v = f.node_v_pu()
    out = []
    for lp in f.load_points():
        node = {"a": 1, "b": 2, "c": 3}[lp.phases[0]]
        out.append(v[f"{lp.bus}.{node}"])
    return out


@pytest.fixture(scope="module")
def bundled() -> OpenDSSFeeder:
    meta = yaml.safe_load((BUNDLED / "feeder.yaml").read_text())
    return OpenDSSFeeder(BUNDLED / meta["master"])


def test_bundled_feeder_is_listed_and_matches_its_parameters(tmp_path: Path) -> None:
    assert "synthetic" in bundled_feeders()
    meta = yaml.safe_load((BUNDLED / "feeder.yaml").read_text())
    for key in ("name", "master", "source", "base_kv", "description", "parameters"):
        assert key in meta
    regenerated = write_synthetic_feeder(tmp_path, **meta["parameters"])
    assert regenerated.read_text() == (BUNDLED / meta["master"]).read_text()


def test_bundled_power_balance_and_voltages(bundled: OpenDSSFeeder) -> None:
    p_src, _ = bundled.source_pq()
    balance = bundled.load_kw() + bundled.losses_kw()
    assert p_src > 0
    assert abs(p_src - balance) <= 1e-3 * p_src
    v = load_bus_v(bundled)
    assert len(v) == 60
    assert all(0.9 <= x <= 1.1 for x in v)


def test_bundled_load_points_spread_over_phases(bundled: OpenDSSFeeder) -> None:
    lps = bundled.load_points()
    assert len(lps) == 60
    assert all(len(lp.phases) == 1 and lp.conn == "wye" and 2.0 <= lp.kw <= 5.0 for lp in lps)
    counts = Counter(lp.phases[0] for lp in lps)
    for p in "abc":
        assert abs(counts[p] - 20) <= 0.2 * 20


def test_phase_imbalance_skews_onto_phase_a(tmp_path: Path) -> None:
    f = OpenDSSFeeder(write_synthetic_feeder(tmp_path, n_loads=90, phase_imbalance=0.6, seed=3))
    counts = Counter(lp.phases[0] for lp in f.load_points())
    assert sum(counts.values()) == 90
    assert counts["a"] > 1.5 * max(counts["b"], counts["c"])
    assert counts["b"] > 0 and counts["c"] > 0


def test_weaker_grid_and_longer_lines_lower_end_voltage(tmp_path: Path) -> None:
    cases = [(50.0, 1.0), (20.0, 1.5), (8.0, 2.5), (3.0, 4.0)]
    v_end = []
    for k, (mva, mult) in enumerate(cases):
        p = write_synthetic_feeder(tmp_path / str(k), n_loads=120, source_mva_sc=mva,
                                   line_length_multiplier=mult)
        f = OpenDSSFeeder(p)
        v = load_bus_v(f)
        assert all(0.8 <= x <= 1.1 for x in v)
        v_end.append(min(v))
    assert all(a > b for a, b in pairwise(v_end)), v_end


def test_large_model_with_1000_customers(tmp_path: Path) -> None:
    f = OpenDSSFeeder(write_synthetic_feeder(tmp_path, n_loads=1000, seed=1))
    assert f._dss.Circuit.NumBuses() >= 1000
    assert len(f.load_points()) == 1000
    sites = place_customers(f.load_points(), 1000, seed=5)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    assert f.n_customers == 1000
    v = f.customer_v_pu()
    assert v.shape == (1000,)
    assert all(0.85 <= x <= 1.1 for x in v.tolist())


def test_same_seed_same_text(tmp_path: Path) -> None:
    a = write_synthetic_feeder(tmp_path / "a", n_loads=50, phase_imbalance=0.3, seed=11).read_text()
    b = write_synthetic_feeder(tmp_path / "b", n_loads=50, phase_imbalance=0.3, seed=11).read_text()
    c = write_synthetic_feeder(tmp_path / "c", n_loads=50, phase_imbalance=0.3, seed=12).read_text()
    assert a == b
    assert a != c


def test_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_synthetic_feeder(tmp_path, n_loads=0)
    with pytest.raises(ValueError):
        write_synthetic_feeder(tmp_path, phase_imbalance=1.5)
    with pytest.raises(ValueError):
        write_synthetic_feeder(tmp_path, source_mva_sc=0.0)
