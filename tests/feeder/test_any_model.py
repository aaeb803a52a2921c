"""Any OpenDSS model by ``feeder.path``; ``tecosim feeders list|show``; the model's loadshapes.

The big model is the parametric synthetic feeder (600 single-phase wye loads, >1000
buses) plus a three-phase 12.47 kV section with delta three-phase, delta line-to-line
(``bus.1.2``, ``bus.2.3``) and wye line-to-line (``bus.3.1``) loads, and a 4.16 kV
section behind a delta / grounded-wye transformer with delta three-phase and wye
single-phase loads, all wired in files of its own (relative Redirects). References:
the counts written here, the conservation of active power in every solved step
(source = loads + losses), OpenDSS's own wiring (``CktElement.NodeOrder``) and
OpenDSS's own daily / yearly simulation modes for the loadshapes.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import opendssdirect
import pandas as pd
import pytest
import yaml

from federates.common.config import bundled_feeders
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.opendss.topology import phases_of_bus
from federates.feeder.placement import place_customers
from federates.feeder.synthetic import write_synthetic_feeder
from runner.cli import main as cli_main
from runner.feeders import format_feeder
from tests.conftest import DEFAULT, tecosim

pytestmark = pytest.mark.feeder

N_WYE_SYNTHETIC = 600  # single-phase wye loads of the synthetic part
N_SECTION = 24  # buses of the 12.47 kV delta-load section (3 loads each)
N_LV = 6  # buses of the 4.16 kV section (2 loads each)
N_PROSUMERS = 120
# (kind, bus node suffix, phases=, conn=, kV, kW, kvar, phases it is wired to) per section bus;
# the line-to-line delta load alternates between nodes 1.2 and 2.3
SECTION_LOADS = (
    ("d3", ".1.2.3", 3, "delta", 12.47, 30.0, 10.0, ("a", "b", "c")),
    ("dab", ".1.2", 1, "delta", 12.47, 12.0, 4.0, ("a", "b")),
    ("dbc", ".2.3", 1, "delta", 12.47, 12.0, 4.0, ("b", "c")),
    ("wll", ".3.1", 1, "wye", 12.47, 12.0, 4.0, ("c", "a")),
)
LV_LOADS = (
    ("lvd3", "", 3, "delta", 4.16, 60.0, 20.0, ("a", "b", "c")),
    ("lvw1", None, 1, "wye", 2.4, 15.0, 5.0, None),  # node 1, 2, 3 in turn
)


def write_any_model(out_dir: Path) -> tuple[Path, dict[str, tuple[str, tuple[str, ...]]]]:
    """The big test model; returns its master and {load name: (conn, wired phases)} of the extra loads."""
    write_synthetic_feeder(out_dir, n_loads=N_WYE_SYNTHETIC, source_mva_sc=100.0, seed=2)
    expected: dict[str, tuple[str, tuple[str, ...]]] = {}
    lines = [
        "! three-phase section off trunk node t04 with delta and line-to-line loads",
        "New Linecode.sec3 nphases=3 units=km r1=0.19 x1=0.39 r0=0.48 x0=1.2 c1=0 c0=0 normamps=400",
        "New Line.sec00 phases=3 bus1=t04 bus2=dx00 linecode=sec3 length=0.2",
    ]
    for j in range(1, N_SECTION + 1):
        bus = f"dx{j:02d}"
        lines.append(f"New Line.sec{j:02d} phases=3 bus1=dx{j - 1:02d} bus2={bus} linecode=sec3 length=0.05")
        for kind, suffix, ph, conn, kv, kw, kvar, wired in SECTION_LOADS:
            if kind == ("dbc" if j % 2 else "dab"):
                continue  # one line-to-line delta load per bus, alternating
            name = f"{kind}_{j:02d}"
            lines.append(f"New Load.{name} bus1={bus}{suffix} phases={ph} conn={conn} model=1 "
                         f"kV={kv} kW={kw} kvar={kvar}")
            expected[name] = (conn, wired)
    lines += [
        "! a disabled load: not in the circuit, never a place for prosumers",
        "New Load.off_01 bus1=dx01.1 phases=1 conn=wye model=1 kV=7.2 kW=500 kvar=0 enabled=no",
        "New Capacitor.cap_dx phases=3 bus1=dx12 kvar=300 kV=12.47",
        "! 4.16 kV section behind a delta / grounded-wye transformer",
        "New Transformer.lvx phases=3 windings=2 buses=[dx12 lv00] conns=[delta wye] "
        "kVs=[12.47 4.16] kVAs=[1500 1500] XHL=5 %Rs=[0.5 0.5]",
    ]
    for j in range(1, N_LV + 1):
        bus = f"lv{j:02d}"
        lines.append(f"New Line.lv{j:02d} phases=3 bus1=lv{j - 1:02d} bus2={bus} linecode=sec3 length=0.05")
        for kind, suffix, ph, conn, kv, kw, kvar, wired in LV_LOADS:
            node = (j - 1) % 3 + 1
            spec = suffix if suffix is not None else f".{node}"
            wired = wired or ("abc"[node - 1],)
            name = f"{kind}_{j:02d}"
            lines.append(f"New Load.{name} bus1={bus}{spec} phases={ph} conn={conn} model=1 "
                         f"kV={kv} kW={kw} kvar={kvar}")
            expected[name] = (conn, wired)
    (out_dir / "delta_section.dss").write_text("\n".join(lines) + "\n")
    master = out_dir / "master.dss"
    master.write_text("Redirect synthetic.dss\nRedirect delta_section.dss\n"
                      "Set VoltageBases=[12.47 4.16]\nCalcVoltageBases\n")
    return master, expected


@pytest.fixture(scope="module")
def any_model(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, tuple[str, ...]]]]:
    return write_any_model(tmp_path_factory.mktemp("any_model"))


@pytest.fixture(scope="module")
def any_run(any_model, tmp_path_factory) -> Path:
    """``tecosim run`` on the big model by path (relative to the study file), 30 min, 120 prosumers."""
    master, _ = any_model
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["study"].update(name="any_model", start="2026-06-21T12:00:00-04:00", duration="30min")
    raw["feeder"].update(model=None, path=f"{master.parent.name}/{master.name}")
    raw["prosumers"]["count"] = N_PROSUMERS
    study = master.parent.parent / "any_model.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = tmp_path_factory.mktemp("runs") / "any"
    r = tecosim("run", str(study), "--engine", "inprocess", "--out", str(run_dir))
    assert r.returncode == 0, f"run failed:\n{r.stdout}\n{r.stderr}"
    return run_dir


# ---------------------------------------------------------------- wiring and placement
def test_phases_of_bus_follows_opendss_wiring(tmp_path: Path) -> None:
    """The phases read from a bus spec equal the nodes OpenDSS actually wires (NodeOrder)."""
    specs = ["b1.1.2.3 phases=3 conn=delta", "b1 phases=3 conn=delta", "b1.1.2 phases=1 conn=delta",
             "b1.3 phases=1 conn=delta", "b1 phases=1 conn=delta", "b1.1.2.3 phases=2 conn=delta",
             "b1.2.3 phases=1 conn=wye", "b1.3.1 phases=1 conn=delta", "b1.1 phases=1 conn=wye",
             "b1.1.2.3.0 phases=3 conn=wye", "b1.2 phases=3 conn=wye", "b1.2 phases=3 conn=delta",
             "b1 phases=1 conn=wye", "b1.1.4 phases=1 conn=wye", "b1.4 phases=1 conn=wye"]
    body = "\n".join(f"New Load.l{k} bus1={s.split()[0]} {' '.join(s.split()[1:])} kV=12.47 kW=10 kvar=1"
                     for k, s in enumerate(specs))
    master = tmp_path / "wiring.dss"
    master.write_text("Clear\nNew Circuit.w basekv=12.47 bus1=src MVAsc3=200 MVAsc1=200\n"
                      "New Line.l phases=3 bus1=src bus2=b1 length=1 units=km r1=0.2 x1=0.4 r0=0.6 x0=1.2\n"
                      f"{body}\nSet VoltageBases=[12.47]\nCalcVoltageBases\n")
    dss = opendssdirect.NewContext()
    dss.Text.Command(f"Compile [{master}]")
    dss.Solution.Solve()
    f = OpenDSSFeeder(master)
    points = {lp.name: lp for lp in f.load_points()}
    for k in range(len(specs)):
        dss.Loads.Name(f"l{k}")
        el = dss.CktElement
        wired: list[str] = []
        for node in el.NodeOrder():
            if 1 <= node <= 3 and "abc"[node - 1] not in wired:
                wired.append("abc"[node - 1])
        assert phases_of_bus(el.BusNames()[0], el.NumPhases(), el.NumConductors()) == tuple(wired), specs[k]
        assert points[f"l{k}"].phases == tuple(wired), specs[k]


def test_load_points_of_the_big_model(any_model) -> None:
    master, expected = any_model
    f = OpenDSSFeeder(master)
    points = {lp.name: lp for lp in f.load_points()}
    assert len(points) == N_WYE_SYNTHETIC + len(expected)
    for name, (conn, wired) in expected.items():
        assert (points[name].conn, points[name].phases) == (conn, wired), name
    sites = place_customers(f.load_points(), N_PROSUMERS, seed=42)
    for s in sites:
        assert s.phase in points[s.load].phases  # L-N on one of the load's own phases
    kinds = Counter(s.load.split("_")[0] for s in sites if s.load in expected)
    assert set(kinds) == {"d3", "dab", "dbc", "wll", "lvd3", "lvw1"}  # every kind of load gets prosumers


# ---------------------------------------------------------------- tecosim run on it
def test_run_on_a_1000_bus_model_with_delta_loads(any_model, any_run: Path) -> None:
    _, expected = any_model
    sites = json.loads((any_run / "sites.json").read_text())
    assert len(sites) == N_PROSUMERS
    assert any(s["load"] in expected and expected[s["load"]][0] == "delta" for s in sites)
    v = pd.read_parquet(any_run / "results" / "voltages.parquet")
    assert set(v["participant"]) == {s["participant"] for s in sites}
    assert v["v_pu"].notna().all() and v["v_pu"].between(0.8, 1.2).all()
    g = pd.read_parquet(any_run / "results" / "grid.parquet")
    assert len(g) == 30  # 30 one-minute steps
    # conservation of active power in every solved step: source = loads + losses
    np.testing.assert_allclose(g["source_p_kw"], g["load_kw"] + g["losses_kw"],
                               rtol=1e-3)


# ---------------------------------------------------------------- feeders show / list
def test_feeders_show_counts_what_was_written(any_model) -> None:
    master, expected = any_model
    r = tecosim("feeders", "show", str(master), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["buses"] >= 1000
    conn = Counter(c for c, _ in expected.values())
    assert d["loads"]["by_connection"] == {"wye": N_WYE_SYNTHETIC + conn["wye"], "delta": conn["delta"]}
    n_ll_delta = sum(1 for c, w in expected.values() if c == "delta" and len(w) == 2)
    n_3_delta = sum(1 for c, w in expected.values() if c == "delta" and len(w) == 3)
    assert d["loads"]["by_connection_and_phases"] == {
        "wye": {"1": N_WYE_SYNTHETIC + N_LV, "2": N_SECTION},
        "delta": {"2": n_ll_delta, "3": n_3_delta},
    }
    assert n_ll_delta == N_SECTION and n_3_delta == N_SECTION + N_LV
    assert d["loads"]["disabled"] == 1
    assert d["kv_levels"] == [12.47, 4.16]
    assert d["buses_without_kv_base"] == 0
    el = d["elements"]
    assert (el["transformers"], el["capacitors"], el["regulators"]) == (1, 1, 0)
    # the synthetic writer's lines give no NormAmps; the section's linecode does
    n_synth_lines = (master.parent / "synthetic.dss").read_text().count("New Line.")
    assert el["lines"] == n_synth_lines + 1 + N_SECTION + N_LV
    assert d["lines_without_normamps"] == n_synth_lines
    s = d["base_solve"]
    assert s["converged"] is True
    assert s["source_p_kw"] == pytest.approx(s["load_kw"] + s["losses_kw"], rel=1e-3)
    assert 0.9 < s["v_min_pu"] <= s["v_max_pu"] < 1.1
    text = format_feeder(d)  # what the command prints without --json
    assert "converged yes" in text and "kV levels  12.47, 4.16" in text


@pytest.fixture
def keep_sigterm():
    """runner.cli.main installs its own SIGINT and SIGTERM handler; give pytest its own back."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_feeders_list_and_bad_names(capsys, keep_sigterm) -> None:
    r = tecosim("feeders", "list", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"ieee13", "synthetic"} <= set(rows) and set(rows) == set(bundled_feeders())
    assert (rows["ieee13"]["buses"], rows["ieee13"]["loads"]) == (16, 15)
    assert rows["ieee13"]["kv_levels"] == [115.0, 4.16, 0.48]
    bad = tecosim("feeders", "show", "no_such_feeder", timeout=120)
    assert bad.returncode == 2
    assert all(name in bad.stderr for name in bundled_feeders())
    # the same command in this process (cheaper): the text list, a missing path
    assert cli_main(["feeders", "list"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in out] == sorted(rows)
    assert cli_main(["feeders", "show", "nowhere/master.dss"]) == 2
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------- the model's loadshapes
HOURLY = (0.30, 0.50, 0.90, 0.60, 0.40, 0.70, 1.00, 0.80, 0.65, 0.55, 0.45, 0.35,
          0.50, 0.60, 0.70, 0.80, 0.90, 1.00, 0.95, 0.85, 0.75, 0.65, 0.50, 0.40)
EXPLICIT_HOURS = (0.0, 3.0, 12.0, 24.0)
EXPLICIT_P = (0.2, 0.8, 0.5, 0.2)
EXPLICIT_Q = (0.1, 0.4, 0.9, 0.1)


def write_shaped_model(out_dir: Path, *, only_hourly: bool = False) -> Path:
    """A stiff three-phase feeder whose constant-PQ loads follow shapes written here.

    ``hourly``: 24 points, interval 1 h; ``explicit``: points at EXPLICIT_HOURS with
    its own QMult; ``q15``: 96 points, 15 min; load ``year`` has only a yearly shape;
    load ``flat`` none.
    """
    q15 = [0.5 + 0.4 * np.sin(2 * np.pi * k / 96) for k in range(96)]
    loads = [("hourly", "daily=hourly"), ("hourly2", "daily=hourly")]
    if not only_hourly:
        loads += [("explicit", "daily=explicit"), ("q15", "daily=q15"), ("year", "yearly=explicit"),
                  ("flat", "")]
    body = "\n".join(f"New Load.{n} bus1=b1.{k % 3 + 1} phases=1 conn=wye model=1 kV=7.2 kW={100 + 10 * k} "
                     f"kvar={20 + k} vminpu=0.7 vmaxpu=1.3 {s}" for k, (n, s) in enumerate(loads))
    master = out_dir / "shaped.dss"
    master.write_text(
        "Clear\nNew Circuit.s basekv=12.47 pu=1.0 bus1=src MVAsc3=500 MVAsc1=500\n"
        "New Line.l phases=3 bus1=src bus2=b1 length=0.5 units=km r1=0.2 x1=0.4 r0=0.6 x0=1.2\n"
        f"New Loadshape.hourly npts=24 interval=1 mult=({' '.join(map(str, HOURLY))})\n"
        f"New Loadshape.explicit npts=4 hour=({' '.join(map(str, EXPLICIT_HOURS))}) "
        f"mult=({' '.join(map(str, EXPLICIT_P))}) qmult=({' '.join(map(str, EXPLICIT_Q))})\n"
        f"New Loadshape.q15 npts=96 minterval=15 mult=({' '.join(f'{x:.6f}' for x in q15)})\n"
        f"{body}\nSet VoltageBases=[12.47]\nCalcVoltageBases\n")
    return master


def opendss_mode_powers(master: Path, mode: str, hour: int) -> dict[str, tuple[float, float]]:
    """Each Load's kW, kvar as OpenDSS's own daily/yearly mode sets it at ``hour``."""
    dss = opendssdirect.NewContext()
    dss.Text.Command(f"Compile [{master}]")
    dss.Text.Command(f"Set mode={mode} stepsize=1h number=1")
    dss.Solution.Hour(hour - 1)  # the mode steps the clock by one step, then solves
    dss.Solution.Solve()
    out = {}
    for name in dss.Loads.AllNames():
        dss.Loads.Name(name)
        p, q = dss.CktElement.TotalPowers()[:2]
        out[name] = (p, q)
    return out


def feeder_powers(f: OpenDSSFeeder) -> dict[str, tuple[float, float]]:
    """Each Load's kW, kvar in ``f``'s last solution (through the test's own OpenDSS view)."""
    dss = f._dss
    out = {}
    for name in dss.Loads.AllNames():
        dss.Loads.Name(name)
        p, q = dss.CktElement.TotalPowers()[:2]
        out[name] = (p, q)
    return out


@pytest.mark.parametrize("hour", [1, 2, 7, 13, 23, 24])
def test_model_shapes_match_opendss_daily_and_yearly_modes(tmp_path: Path, hour: int) -> None:
    master = write_shaped_model(tmp_path)
    f = OpenDSSFeeder(master)
    mult = f.set_background_time(hour, 1.0, hour_of_year=hour)
    f.solve(controls=False)
    got = feeder_powers(f)
    daily = opendss_mode_powers(master, "daily", hour)
    yearly = opendss_mode_powers(master, "yearly", hour)
    for name in ("hourly", "hourly2", "explicit", "q15", "flat"):
        np.testing.assert_allclose(got[name], daily[name], rtol=1e-4, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(got["year"], yearly["year"], rtol=1e-4, atol=1e-3)
    nominal = sum(lp.kw for lp in f.load_points())
    assert mult == pytest.approx(sum(p for p, _ in got.values()) / nominal, rel=1e-4)


def test_model_shapes_interpolate_and_scale(tmp_path: Path) -> None:
    f = OpenDSSFeeder(write_shaped_model(tmp_path))
    nominal = {lp.name: (lp.kw, lp.kvar) for lp in f.load_points()}
    f.set_background_time(1.5, 0.5, hour_of_year=30.0)  # half-way between points 1 and 2
    f.solve(controls=False)
    got = feeder_powers(f)
    kw, _ = nominal["hourly"]
    assert got["hourly"][0] == pytest.approx(kw * 0.5 * (HOURLY[0] + HOURLY[1]) / 2, rel=1e-4)
    # explicit hours: 1.5 h is half-way between 0 h and 3 h; its own QMult for kvar
    kw, kvar = nominal["explicit"]
    assert got["explicit"][0] == pytest.approx(kw * 0.5 * (EXPLICIT_P[0] + EXPLICIT_P[1]) / 2, rel=1e-4)
    assert got["explicit"][1] == pytest.approx(kvar * 0.5 * (EXPLICIT_Q[0] + EXPLICIT_Q[1]) / 2, rel=1e-4)
    # yearly at hour 30 of the year: the explicit shape wraps every 24 h -> 6 h
    kw, _ = nominal["year"]
    p6 = EXPLICIT_P[1] + (EXPLICIT_P[2] - EXPLICIT_P[1]) * (6 - 3) / (12 - 3)
    assert got["year"][0] == pytest.approx(kw * 0.5 * p6, rel=1e-4)
    assert got["flat"] == pytest.approx(tuple(0.5 * x for x in nominal["flat"]), rel=1e-4)
    # switching back to one multiplier writes every load again
    f.set_background_scale(1.0)
    f.solve(controls=False)
    assert feeder_powers(f)["hourly"] == pytest.approx(nominal["hourly"], rel=1e-4)


def test_model_loadshape_in_a_run(tmp_path: Path) -> None:
    """``background_load_shape: model``: the grid table's background load follows the shape written."""
    master = write_shaped_model(tmp_path, only_hourly=True)
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["study"].update(name="shaped", start="2026-06-21T00:00:00-04:00", duration="3h",
                        market_interval="1h", physics_step="30min")
    raw["feeder"].update(model=None, path=str(master), background_load_shape="model",
                         background_load_scale=0.8)
    raw["prosumers"]["count"] = 3
    study = tmp_path / "shaped.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = tmp_path / "run"
    r = tecosim("run", str(study), "--engine", "inprocess", "--out", str(run_dir))
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    g = pd.read_parquet(run_dir / "results" / "grid.parquet").set_index("step")
    v = pd.read_parquet(run_dir / "results" / "voltages.parquet")
    background_kw = g["load_kw"] - v.groupby("step")["p_kw"].sum()  # minus the prosumers
    at_1h, at_2h = 2, 4  # steps at 01:00 and 02:00 local (30 min steps)
    # OpenDSS places point k of an hourly shape at hour k: 01:00 -> HOURLY[0], 02:00 -> HOURLY[1]
    assert background_kw[at_2h] / background_kw[at_1h] == pytest.approx(HOURLY[1] / HOURLY[0], rel=0.02)
    nominal_kw = 100.0 + 110.0
    assert background_kw[at_1h] == pytest.approx(nominal_kw * 0.8 * HOURLY[0], rel=0.02)
    assert g.loc[at_1h, "background_mult"] == pytest.approx(0.8 * HOURLY[0], rel=1e-6)
