"""Feeder limits: line/transformer loading and voltage unbalance (VUF).

References: IEC 61000-4-30 / IEEE 1159 voltage unbalance factor VUF = |V2| / |V1|
(Fortescue symmetrical components, a = exp(j 2 pi / 3)); IEEE PES IEEE 13 Node Test
Feeder published power-flow results (W. H. Kersting, "Radial distribution test
feeders", 2001): current of line 650-632 at node 650 Ia 593.3 A, Ib 435.7 A,
Ic 626.6 A with regulator taps 10 / 8 / 11.
"""

from __future__ import annotations

import cmath
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from federates.common.config import validate
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.opendss.limits import fortescue_vuf_pct
from federates.feeder.placement import place_customers
from federates.feeder.role import FeederRole

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
FEEDER_DIR = REPO / "feeders" / "ieee13"
META = yaml.safe_load((FEEDER_DIR / "feeder.yaml").read_text())
MASTER = FEEDER_DIR / META["master"]
A = cmath.exp(2j * math.pi / 3)
PUBLISHED_650_632_A = np.array([593.3, 435.7, 626.6])  # phases a, b, c [A], at node 650


def seq_to_abc(v0: complex, v1: complex, v2: complex) -> np.ndarray:
    """Phase phasors from symmetrical components (inverse Fortescue)."""
    return np.array([v0 + v1 + v2, v0 + A * A * v1 + A * v2, v0 + A * v1 + A * A * v2])


# ------------------------------------------------------------------ Fortescue
def test_balanced_set_has_zero_vuf():
    v = 2401.8 * np.exp(1j * np.deg2rad([0.0, -120.0, 120.0]))
    assert fortescue_vuf_pct(v) == pytest.approx(0.0, abs=1e-12)


def test_known_negative_sequence_gives_its_ratio():
    assert fortescue_vuf_pct(seq_to_abc(0.0, 1.0, 0.02)) == pytest.approx(2.0, rel=1e-12)
    # the zero sequence does not count; the angle of V2 does not matter
    v = seq_to_abc(0.1, 1.0 * cmath.exp(0.3j), 0.05 * cmath.exp(-2.0j))
    assert fortescue_vuf_pct(v) == pytest.approx(5.0, rel=1e-12)
    # vectorised over leading axes
    batch = np.stack([seq_to_abc(0, 1, 0), seq_to_abc(0, 1, 0.01), seq_to_abc(0, 2, 0.06)])
    np.testing.assert_allclose(fortescue_vuf_pct(batch), [0.0, 1.0, 3.0], atol=1e-12)


# ------------------------------------------------------------------ IEEE 13 base case
@pytest.fixture(scope="module")
def published_case() -> OpenDSSFeeder:
    f = OpenDSSFeeder(MASTER)
    f.set_regulator_taps(META["published_taps"])
    f.hold_taps(True)
    f.solve(controls=False)
    return f


def test_line_650_632_current_matches_published(published_case):
    f = published_case
    # the published current is at node 650, i.e. the regulator's source side
    i_650 = np.array([f.element_currents_a(f"Transformer.reg_{p}")[0] for p in "abc"])
    np.testing.assert_allclose(i_650, PUBLISHED_650_632_A, rtol=0.02)
    # the line itself (rg60 -> 632) carries it divided by the regulator ratio
    ratio = np.array([1 + 0.00625 * META["published_taps"][f"reg_{p}"] for p in "abc"])
    i_line = f.element_currents_a("Line.650632")
    np.testing.assert_allclose(i_line * ratio, PUBLISHED_650_632_A, rtol=0.02)


def test_line_loading_is_max_current_over_normamps(published_case):
    f = published_case
    names, pct = f.line_loading_pct()
    assert len(names) == len(pct) == 12 and "650632" in names
    f._dss.Lines.Name("650632")
    norm_a = f._dss.Lines.NormAmps()
    # configuration 601: 556,500 26/7 ACSR phases, 730 A (Kersting's conductor table,
    # feeders/ieee13/feeder.yaml line_ratings_a)
    assert norm_a == 730.0
    i_max_a = f.element_currents_a("Line.650632").max()
    assert pct[names.index("650632")] == pytest.approx(i_max_a / norm_a * 100.0, rel=1e-9)
    # published currents at node 650 divided by the published regulator ratios are the
    # line's currents (phase c the largest, 626.6 A / 1.06875 = 586 A): about 80 % of 730 A
    ratio = np.array([1 + 0.00625 * META["published_taps"][f"reg_{p}"] for p in "abc"])
    assert pct[names.index("650632")] == pytest.approx(
        (PUBLISHED_650_632_A / ratio).max() / 730.0 * 100, rel=0.02)


def test_transformer_loading_and_vuf_of_base_case(published_case):
    f = published_case
    names, pct = f.transformer_loading_pct()
    assert names == ["sub", "reg_a", "reg_b", "reg_c", "xfm1"]
    # reg_a: |V_650a| x I_650a / 1666 kVA
    v650 = f.node_v_pu()["650.1"] * 4.16 / math.sqrt(3)
    i = f.element_currents_a("Transformer.reg_a")[0]
    assert pct[1] == pytest.approx(v650 * i / 1666 * 100, rel=0.01)
    buses, vuf = f.vuf_pct()
    assert set(buses) == {"sourcebus", "650", "rg60", "632", "670", "671", "680", "633", "692", "675", "634"}
    assert vuf[buses.index("sourcebus")] < 0.01  # ideal balanced source
    assert np.all((vuf >= 0) & (vuf < 5.0))
    assert vuf[buses.index("671")] > 1.0  # the unbalanced 4.16 kV backbone end


# ------------------------------------------------------------------ FeederRole tables
def make_role(**feeder_cfg) -> FeederRole:
    cfg = validate({
        "study": {"duration": "30min", "market_interval": "15min", "physics_step": "60s",
                  "start": "2026-06-21T12:00:00-04:00"},
        "feeder": {"model": "ieee13", **feeder_cfg},
        "controllers": {"enabled": False},  # the physics of commands, without the inverters' own control
    })
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), 20, seed=3)
    return FeederRole(cfg, MASTER, sites)


def test_role_records_lines_and_unbalance():
    role = make_role()
    n = role._n
    for g in range(3):
        role.begin_step(g, np.full(n, -2.0), np.zeros(n))
        role.apply_commands(g, [])
    t = role.tables()
    lines, unb = t["lines"], t["unbalance"]
    assert list(lines.columns) == ["step", "t_s", "element", "loading_pct"]
    assert list(unb.columns) == ["step", "t_s", "bus", "vuf_pct"]
    top_n = role.cfg.feeder.lines_top_n
    assert len(lines) == 3 * top_n
    assert len(unb) == 3 * len(role.vuf_buses) and len(role.vuf_buses) >= 11
    assert lines["step"].tolist() == np.repeat([0, 1, 2], top_n).tolist()
    assert lines["t_s"].iloc[-1] == 120.0
    for _, grp in lines.groupby("step"):
        x = grp["loading_pct"].to_numpy()
        assert np.all(np.diff(x) <= 0)  # most loaded first
        assert grp["element"].is_unique
    assert set(lines["element"]) <= set(role.elements)
    assert "line.650632" in set(lines["element"])
    assert np.all(np.isfinite(unb["vuf_pct"])) and np.all(unb["vuf_pct"] >= 0)
    # the recorded row is the final solve of the step
    _, vuf = role.feeder.vuf_pct()
    np.testing.assert_allclose(unb[unb.step == 2]["vuf_pct"].to_numpy(), vuf)


def test_first_step_before_control_starts_from_settled_taps():
    """A run's first step has no previous step: its powers are solved with the controls
    on first (a warm start), so its before-control voltages do not depend on the taps
    the model was compiled with. Reference: the regulators' own bandwidth (IEEE 13:
    band 2 V on 120 V, 0.0167 pu; where a regulator stops in its band depends on
    where it came from): with every regulator forced 10 taps up before the run, the
    first step's uncontrolled voltages stay within that band of the plain run's
    (without the warm start they are ~10 taps, 0.063 pu, higher)."""
    plain, raised = make_role(), make_role()
    raised.feeder.set_regulator_taps({n: min(t + 10, 16) for n, t in raised.feeder.regulator_taps().items()})
    rc = plain.feeder._dss.RegControls
    rc.First()
    band_pu = rc.ForwardBand() / 120.0
    assert band_pu == pytest.approx(2.0 / 120.0)
    v_before = []
    for role in (plain, raised):
        n = role._n
        role.begin_step(0, np.full(n, 1.5), np.zeros(n))
        role.apply_commands(0, [])
        v = role.tables()["voltages"]
        v_before.append(v.loc[v.step == 0, "v_before_pu"].to_numpy())
    assert np.max(np.abs(v_before[1] - v_before[0])) < band_pu
