"""Graph-based loss allocation (GBLA) on IEEE 13 with 40 customers attached.

References: OpenDSS's ``Circuit.Losses`` is the sum of its PD elements' losses; the
published IEEE 13 case (tests/feeder/test_ieee13.py); OpenDSS's per-conductor
``CktElement.PhaseLosses``; the review's GBLA idea (refs. [32]-[35]): element losses
traced along each customer's energy path from the source and shared by the users of
that path, one graph layer per phase.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from federates.common.config import CustomerConnection, validate
from federates.common.messages import GRID, Trade
from federates.feeder.losses import (
    BACKGROUND,
    LAYERS,
    PhaseLossIncidence,
    allocate_losses_to_customers,
    allocate_losses_to_trades,
    allocate_phase_losses_to_customers,
)
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.placement import place_customers
from federates.feeder.role import FeederRole

pytestmark = pytest.mark.feeder

REPO = Path(__file__).resolve().parents[2]
MASTER = REPO / "feeders" / "ieee13" / "IEEE13.dss"
N = 40
SWITCHES = {"line.671692"}  # IEEE13.dss: Line.671692 ... switch=yes (0 km)
P_ABS = 5.0  # kW, every customer the same |p|


@pytest.fixture(scope="module")
def solved():
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), N, seed=7)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    f.hold_taps(True)
    rng = np.random.default_rng(11)
    p = np.where(rng.random(N) < 0.5, -P_ABS, P_ABS)  # exporters and importers
    f.set_customer_powers(p, np.zeros(N))
    f.solve(controls=False)
    return f, sites, p, f.element_losses_kw(), f.customer_paths()


def test_element_losses_sum_to_circuit_losses(solved):
    f, _, _, el, _ = solved
    assert "line.650632" in el and "transformer.sub" in el
    assert any(k.startswith("line.drop_") for k in el) and any(k.startswith("transformer.svc_") for k in el)
    # OpenDSS's Circuit.Losses is the sum of its PD elements' losses: measured 2e-16
    # relative here; asserted to 1e-9 (float rounding over ~200 elements, with margin)
    assert sum(el.values()) == pytest.approx(f.losses_kw(), rel=1e-9)


def test_paths_run_from_source_to_customer(solved):
    _, sites, _, el, paths = solved
    assert len(paths) == N
    for s, path in zip(sites, paths, strict=True):
        assert path[0] == "transformer.sub"  # sourcebus -> 650
        assert path[-1] == f"line.drop_{s.participant}"
        assert path[-2] == f"transformer.svc_{s.group}"
        assert all(e in el for e in path)
        if s.bus.lower() != "650":
            assert "line.650632" in path


def test_customer_allocation_conserves_losses(solved):
    f, _, p, el, paths = solved
    cust, background = allocate_losses_to_customers(el, paths, p)
    assert cust.shape == (N,)
    assert np.all(cust >= 0)
    assert background >= 0
    assert cust.sum() + background == pytest.approx(sum(el.values()), abs=1e-9)
    assert cust.sum() + background == pytest.approx(f.losses_kw(), rel=1e-9)
    # idle customers carry nothing, and everything is background when all are idle
    c0, b0 = allocate_losses_to_customers(el, paths, np.zeros(N))
    assert np.all(c0 == 0) and b0 == pytest.approx(sum(el.values()), abs=1e-9)


def test_farther_customer_gets_at_least_as_much(solved):
    _, _, p, el, paths = solved
    cust, _ = allocate_losses_to_customers(el, paths, p)
    # pairs on the same lateral: i's primary path (all but its service transformer and
    # drop) is a strict prefix of j's and the extra part holds a real line (not only the
    # 0 km switch), so j is electrically farther with the same |p|
    pairs = []
    for i in range(N):
        for j in range(N):
            up_i, up_j = paths[i][:-2], paths[j][:-2]
            if len(up_i) < len(up_j) and up_j[: len(up_i)] == up_i:
                if any(e.startswith("line.") and e not in SWITCHES for e in up_j[len(up_i):]):
                    pairs.append((i, j))
    assert pairs, "IEEE 13 with 40 customers must have customers on one lateral at different depths"
    for i, j in pairs:
        assert cust[j] >= cust[i], (paths[i], paths[j], cust[i], cust[j])


def test_trade_allocation_sums_back(solved):
    _, sites, p, el, paths = solved
    cust, _ = allocate_losses_to_customers(el, paths, p)
    names = [s.participant for s in sites]
    sellers = [names[k] for k in range(N) if p[k] < 0]
    buyers = [names[k] for k in range(N) if p[k] > 0]
    rng = np.random.default_rng(5)
    trades = [Trade(0, s, b, float(rng.uniform(0.1, 1.0)), 0.1) for s, b in zip(sellers, buyers, strict=False)]
    trades += [Trade(0, s, GRID, 0.5, 0.05) for s in sellers[:5]]
    trades += [Trade(0, GRID, b, 0.7, 0.2) for b in buyers[:5]]
    trades += [Trade(1, sellers[0], buyers[0], 3.0, 0.1)]  # another interval: ignored
    a = allocate_losses_to_trades(cust, names, trades, interval=0)
    np.testing.assert_allclose(a.customer_kw(names, trades), cust, rtol=0, atol=1e-12)
    assert a.trade_kw[-1] == 0.0
    assert np.all(a.trade_kw[~a.is_peer] == 0.0)
    assert np.all(a.trade_kw[:-1][a.is_peer[:-1]] > 0.0)
    # customers without any trade keep all their loss on the grid side
    traded = {t.seller for t in trades[:-1]} | {t.buyer for t in trades[:-1]}
    for k, nm in enumerate(names):
        if nm not in traded:
            assert a.grid_kw[k] == cust[k]
    # pro rata: a seller's peer shares are proportional to the traded energies
    s0 = sellers[0]
    mine = [t for t, tr in enumerate(trades[:-1]) if tr.seller == s0]
    e = np.array([trades[t].energy_kwh for t in mine])
    shares = np.array([a.seller_kw[t] for t in mine])
    peer = np.array([a.is_peer[t] for t in mine])
    np.testing.assert_allclose(shares[peer], cust[names.index(s0)] * e[peer] / e.sum(), rtol=1e-12)
    # metered energy larger than the trades: the uncovered part goes to the grid
    big = allocate_losses_to_trades(cust, names, trades, interval=0, customer_energy_kwh=np.full(N, 100.0))
    np.testing.assert_allclose(big.customer_kw(names, trades), cust, rtol=0, atol=1e-12)
    assert big.grid_kw.sum() > a.grid_kw.sum()
    # grid_kw itemised: the customer side of each GRID trade + the untraded rest
    for x in (a, big):
        assert np.all(x.grid_trade_kw[x.is_peer] == 0.0)
        assert np.all(x.grid_trade_kw[:-1][~x.is_peer[:-1]] > 0.0)
        back = x.untraded_kw.copy()
        for t, tr in enumerate(trades):
            if not x.is_peer[t] and x.grid_trade_kw[t]:
                back[names.index(tr.buyer if tr.seller == GRID else tr.seller)] += x.grid_trade_kw[t]
        np.testing.assert_allclose(back, x.grid_kw, rtol=0, atol=1e-12)
    assert np.all(big.untraded_kw > a.untraded_kw - 1e-12)


# ---------------------------------------------------------------- per-phase layers
META = yaml.safe_load((REPO / "feeders" / "ieee13" / "feeder.yaml").read_text())
COL = {x: i for i, x in enumerate(LAYERS)}


@pytest.fixture(scope="module")
def published_case() -> OpenDSSFeeder:
    f = OpenDSSFeeder(MASTER)
    f.set_regulator_taps(META["published_taps"])
    f.hold_taps(True)
    f.solve(controls=False)
    return f


def test_phase_layers_sum_to_circuit_losses_published_case(published_case):
    f = published_case
    layers = f.phase_losses_kw()
    names = f.phase_loss_elements()
    el = f.element_losses_kw()
    assert layers.shape == (len(names), 4) and set(names) == set(el)
    # the layers add up to OpenDSS's Circuit.Losses (110.6 kW here): measured 3e-15
    # relative, asserted to 1e-9
    assert layers.sum() == pytest.approx(f.losses_kw(), rel=1e-9)
    # ... and each element's layers to its own CktElement.Losses
    np.testing.assert_allclose(layers.sum(axis=1), [el[e] for e in names], rtol=0, atol=1e-9)
    row = dict(zip(names, layers, strict=True))
    # single- and two-phase laterals and regulators sit in their own phases only
    for e, phases in {"line.684611": "c", "line.684652": "a", "line.632645": "bc",
                      "line.671684": "ac", "transformer.reg_b": "b"}.items():
        for x in "abcn":
            if x not in phases:
                assert abs(row[e][COL[x]]) < 1e-9, (e, x, row[e])
        assert all(row[e][COL[x]] > 0 for x in phases), (e, row[e])
    # Kron-reduced lines, wye-wye and single-phase transformers: no neutral layer
    assert np.all(np.abs(layers[:, COL["n"]]) < 1e-9)


def test_phase_layers_are_opendss_phase_losses_without_mutual_reactance(published_case):
    """OpenDSS's per-conductor PhaseLosses (Re(V I*) over both terminals) add up to the
    same element loss, but the mutual reactance moves power between phases and makes
    phase b of the trunk negative; the resistive split keeps every phase >= 0."""
    f = published_case
    dss = f._dss
    row = dict(zip(f.phase_loss_elements(), f.phase_losses_kw(), strict=True))
    dss.Circuit.SetActiveElement("line.650632")
    per_conductor = np.asarray(dss.CktElement.PhaseLosses(), dtype=float)[0::2]  # kW, phases a, b, c
    assert per_conductor.sum() == pytest.approx(row["line.650632"].sum(), rel=1e-9)
    assert per_conductor[1] < 0 < row["line.650632"][COL["b"]]
    lines = np.array([r[:3] for e, r in row.items() if e.startswith("line.")])
    assert lines.min() > -1e-9
    # the delta-wye substation transformer: split by current, not per conductor index
    assert np.all(row["transformer.sub"][:3] > 0)
    assert row["transformer.sub"].sum() == pytest.approx(f.element_losses_kw()["transformer.sub"], rel=1e-9)


def test_service_transformers_and_drops_are_in_the_customers_phase(solved):
    f, sites, _, _, _ = solved
    assert f.customer_layers() == [s.phase for s in sites]
    row = f.element_phase_losses_kw()
    for s in sites:
        for e in (f"transformer.svc_{s.group}", f"line.drop_{s.participant}"):
            assert row[e][s.phase] > 0, (e, row[e])
            assert row[e][s.phase] == pytest.approx(sum(row[e].values()), abs=1e-12), (e, row[e])


def test_phase_allocation_conserves_circuit_losses(solved):
    f, _, p, _, paths = solved
    layers = f.phase_losses_kw()
    inc = PhaseLossIncidence.build(f.phase_loss_elements(), paths, f.customer_layers())
    cust, background = inc.allocate(layers, p)
    assert cust.shape == (N,) and np.all(cust > 0) and background > 0
    assert cust.sum() + background == pytest.approx(layers.sum(), abs=1e-9)
    assert cust.sum() + background == pytest.approx(f.losses_kw(), rel=1e-3)
    # the mapping API gives the same
    c2, b2 = allocate_phase_losses_to_customers(f.element_phase_losses_kw(), paths, f.customer_layers(), p)
    np.testing.assert_allclose(c2, cust, rtol=1e-12)
    assert b2 == pytest.approx(background, rel=1e-12)
    # idle customers carry nothing
    c0, b0 = inc.allocate(layers, np.zeros(N))
    assert np.all(c0 == 0) and b0 == pytest.approx(layers.sum(), abs=1e-9)


def test_phase_a_customer_gets_no_share_of_phase_b_or_c_losses(solved):
    f, sites, p, _, paths = solved
    layers = f.phase_losses_kw()
    inc = PhaseLossIncidence.build(f.phase_loss_elements(), paths, f.customer_layers())
    on = {x: np.array([s.phase == x for s in sites]) for x in "abc"}
    assert all(m.any() for m in on.values())
    only_bc = layers.copy()
    only_bc[:, [COL["a"], COL["n"]]] = 0.0
    cust, background = inc.allocate(only_bc, p)
    assert np.all(cust[on["a"]] == 0.0)
    assert np.all(cust[on["b"] | on["c"]] > 0.0)
    assert cust.sum() + background == pytest.approx(only_bc.sum(), abs=1e-9)
    # ten times the b and c losses: phase-a customers' shares do not move
    base, _ = inc.allocate(layers, p)
    more = layers.copy()
    more[:, [COL["b"], COL["c"]]] *= 10.0
    bumped, _ = inc.allocate(more, p)
    np.testing.assert_allclose(bumped[on["a"]], base[on["a"]], rtol=1e-12)
    assert np.all(bumped[on["b"]] > base[on["b"]])


def test_phase_allocation_by_hand():
    """One three-phase line: x (a, 1 kW) and y (a, 3 kW) share layer a 1:3, z alone has
    layer b, all three share n by |p| (1:3:2), nobody uses c (background)."""
    losses = {"line.l1": {"a": 1.0, "b": 2.0, "c": 3.0, "n": 0.6}, "line.l2": {"a": 5.0}}
    cust, background = allocate_phase_losses_to_customers(
        losses, [["line.l1"], ["line.l1"], ["line.l1", "line.unknown"]], ["a", "a", "b"],
        np.array([1.0, -3.0, 2.0]))
    np.testing.assert_allclose(cust, [0.25 + 0.1, 0.75 + 0.3, 2.0 + 0.2], rtol=1e-12)
    assert background == pytest.approx(3.0 + 5.0)
    with pytest.raises(ValueError, match="layer"):
        allocate_phase_losses_to_customers(losses, [["line.l1"]], ["x"], np.ones(1))


def test_phase_allocation_with_background_loads_by_hand():
    """Layer a of l1 (1 kW): customers x (a, 1 kW) and y (a, 3 kW) and a three-phase
    background load B (a 2, b 1, c 1 kW) share it 1:3:2; layer b (2 kW): B alone
    (z sits on l2 only); n (0.6 kW): x, y and B by |p| 1:3:4; nobody uses c of l2."""
    losses = {"line.l1": {"a": 1.0, "b": 2.0, "c": 3.0, "n": 0.6}, "line.l2": {"c": 5.0}}
    cust, background = allocate_phase_losses_to_customers(
        losses, [["line.l1"], ["line.l1"], ["line.l2"]], ["a", "a", "b"], np.array([1.0, -3.0, 2.0]),
        background_paths=[["line.l1"]], background_layer_kw=[{"a": 2.0, "b": -1.0, "c": 1.0}])
    np.testing.assert_allclose(cust, [1 / 6 + 0.6 / 8, 3 / 6 + 1.8 / 8, 0.0], rtol=1e-12)
    b_share = 2 / 6 + 2.0 + 3.0 + 2.4 / 8  # a, b, c and n of l1
    assert background == pytest.approx(b_share + 5.0, rel=1e-12)
    assert cust.sum() + background == pytest.approx(11.6, rel=1e-12)
    # itemised: the background load's own share and the unused rest (l2's c layer)
    bw = np.array([[2.0, 1.0, 1.0, 4.0]])
    inc = PhaseLossIncidence.build(["line.l1", "line.l2"], [["line.l1"], ["line.l1"], ["line.l2"]], ["a", "a", "b"],
                                   background_paths=[["line.l1"]], background_layers=[("a", "b", "c")])
    d = inc.allocate_detail(np.array([[1.0, 2.0, 3.0, 0.6], [0.0, 0.0, 5.0, 0.0]]), np.array([1.0, -3.0, 2.0]), bw)
    np.testing.assert_allclose(d.background_load_kw, [b_share], rtol=1e-12)
    assert d.unused_kw == pytest.approx(5.0, rel=1e-12)
    assert d.background_kw == pytest.approx(background, rel=1e-12)
    with pytest.raises(ValueError, match="background"):
        inc.allocate(np.zeros((2, 4)), np.ones(3))  # the background weights are required


# ---------------------------------------------------------------- background loads as users
#: A midday operating point: 60 % of the customers export PV (3-8 kW), the rest import
#: 0.5-2 kW; the background loads at their published (nominal) power, taps as published.
MIDDAY_SEED = 21


@pytest.fixture(scope="module")
def midday_published():
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), N, seed=7)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    f.set_regulator_taps(META["published_taps"])
    f.hold_taps(True)
    rng = np.random.default_rng(MIDDAY_SEED)
    p = np.where(rng.random(N) < 0.6, -rng.uniform(3.0, 8.0, N), rng.uniform(0.5, 2.0, N))
    f.set_customer_powers(p, np.zeros(N))
    f.solve(controls=False)
    inc = PhaseLossIncidence.build(f.phase_loss_elements(), f.customer_paths(), f.customer_layers(),
                                   background_paths=f.background_load_paths(),
                                   background_layers=f.background_load_layers())
    return f, sites, p, inc


def _published_load_powers(f: OpenDSSFeeder) -> dict[str, dict[str, float]]:
    """Each original Load's active power per phase [kW], read one Load at a time with
    CktElement.Powers; on IEEE 13 node k of every bus is phase 'abc'[k - 1]."""
    dss = f._dss
    out = {}
    for lp in f.load_points():
        dss.Loads.Name(lp.name)
        pw = np.asarray(dss.CktElement.Powers(), dtype=float)[0::2]
        nodes = dss.CktElement.NodeOrder()
        out[lp.name] = {"abc"[x - 1]: float(pk) for x, pk in zip(nodes, pw, strict=True) if x}
    return out


def test_background_loads_are_read_per_phase(midday_published):
    f, _, _, _ = midday_published
    names = f.background_load_names()
    assert names == [lp.name for lp in f.load_points()] and not any(x.startswith("cust_") for x in names)
    layers = dict(zip(names, f.background_load_layers(), strict=True))
    # the published connections (IEEE13.dss): wye single-phase, delta line-to-line, delta three-phase
    assert layers["634a"] == ("a",) and layers["611"] == ("c",) and layers["646"] == ("b", "c")
    assert layers["692"] == ("c", "a") and layers["671"] == ("a", "b", "c")
    w = f.background_layer_kw()
    ref = _published_load_powers(f)
    col = {x: LAYERS.index(x) for x in LAYERS}
    for j, nm in enumerate(names):
        total = abs(sum(ref[nm].values()))
        assert w[j, col["n"]] == pytest.approx(total, rel=1e-12), nm
        assert w[j, :3].sum() == pytest.approx(total, rel=1e-12), nm
        phase_abs = {x: abs(v) for x, v in ref[nm].items()}
        for x in "abc":
            expect = total * phase_abs.get(x, 0.0) / sum(phase_abs.values())
            assert w[j, col[x]] == pytest.approx(expect, rel=1e-12, abs=1e-12), (nm, x)
    # the bulk read (one DSS C-API batch call) and the per-Load fallback read agree
    assert f._background_load_index().batch is not None
    np.testing.assert_array_equal(f._background_load_powers(), f._background_load_powers_per_load())


def test_background_load_paths_run_from_the_source(midday_published):
    f, _, _, _ = midday_published
    paths = dict(zip(f.background_load_names(), f.background_load_paths(), strict=True))
    assert all(path[0] == "transformer.sub" and "line.650632" in path for path in paths.values())
    assert paths["634a"][-1] == "transformer.xfm1"
    assert paths["611"][-2:] == ["line.671684", "line.684611"]


def test_trunk_layer_a_is_shared_by_every_user_of_layer_a(midday_published):
    """Line 650632's layer-a loss split by |p| among all users of layer a: the phase-a
    customers (every customer is beyond 650) and every original Load with a phase-a
    conductor (all of IEEE 13's loads are beyond 632). Reference: that arithmetic."""
    f, sites, p, inc = midday_published
    names = f.phase_loss_elements()
    layers = f.phase_losses_kw()
    k, a = names.index("line.650632"), LAYERS.index("a")
    only = np.zeros_like(layers)
    only[k, a] = layers[k, a]
    assert only[k, a] > 1.0  # kW: the trunk's phase a carries the feeder's heaviest phase
    ref = _published_load_powers(f)
    bg_a = 0.0
    for per_phase in ref.values():
        if "a" in per_phase:
            phase_abs = {x: abs(v) for x, v in per_phase.items()}
            bg_a += abs(sum(per_phase.values())) * phase_abs["a"] / sum(phase_abs.values())
    on_a = np.array([s.phase == "a" for s in sites])
    users_kw = np.abs(p[on_a]).sum() + bg_a
    expect = np.where(on_a, only[k, a] * np.abs(p) / users_kw, 0.0)
    d = inc.allocate_detail(only, p, f.background_layer_kw())
    np.testing.assert_allclose(d.customer_kw, expect, rtol=1e-12, atol=1e-15)
    assert d.background_load_kw.sum() == pytest.approx(only[k, a] * bg_a / users_kw, rel=1e-12)
    assert d.unused_kw == pytest.approx(0.0, abs=1e-12)


def test_customers_carry_their_share_of_the_power_not_the_trunk(midday_published):
    f, _, p, inc = midday_published
    names = f.phase_loss_elements()
    layers = f.phase_losses_kw()
    w = f.background_layer_kw()
    cust, background = inc.allocate(layers, p, w)
    # conservation against OpenDSS's Circuit.Losses
    assert cust.sum() + background == pytest.approx(f.losses_kw(), rel=1e-9)
    assert np.all(cust > 0)
    # elements the customers share with the original loads (not their own service
    # transformers and drops): the customers' part is about their part of the |p| drawn
    # through them (a few kW of 3.5 MW); within 20 % of it here (the exact ratio depends
    # on which laterals and phases carry them)
    own = np.array([e.startswith(("transformer.svc_", "line.drop_")) for e in names])
    shared = layers.copy()
    shared[own] = 0.0
    c_shared, _ = inc.allocate(shared, p, w)
    power_share = np.abs(p).sum() / (np.abs(p).sum() + w[:, LAYERS.index("n")].sum())
    assert c_shared.sum() / shared.sum() == pytest.approx(power_share, rel=0.2)
    # the customers-only rule put nearly all the feeder's losses on the customers
    customers_only = PhaseLossIncidence.build(names, f.customer_paths(), f.customer_layers())
    c_old, _ = customers_only.allocate(layers, p)
    assert c_old.sum() / layers.sum() > 0.9
    assert cust.sum() / layers.sum() < 0.1


def _role(**feeder_cfg) -> FeederRole:
    cfg = validate({
        "study": {"duration": "30min", "market_interval": "15min", "physics_step": "60s",
                  "start": "2026-06-21T12:00:00-04:00"},
        "feeder": {"model": "ieee13", **feeder_cfg},
    })
    f = OpenDSSFeeder(MASTER)
    return FeederRole(cfg, MASTER, place_customers(f.load_points(), N, seed=7))


def test_role_records_customer_losses_each_step():
    role = _role()
    rng = np.random.default_rng(3)
    for g in (0, 1, 2):
        role.begin_step(g, rng.uniform(-6.0, 4.0, N), np.zeros(N))
    t = role.tables()
    cl, grid = t["customer_losses"], t["grid"]
    assert list(cl.columns) == ["step", "t_s", "participant", "loss_kw"]
    assert len(cl) == 3 * (N + 1)
    assert set(cl["participant"]) == {*role.participants, BACKGROUND}
    per_step = cl.groupby("step")["loss_kw"].sum()
    # conservation against OpenDSS's Circuit.Losses (the grid table's losses_kw)
    np.testing.assert_allclose(per_step.to_numpy(), grid["losses_kw"].to_numpy(), rtol=1e-9)
    assert (cl.loc[cl.participant != BACKGROUND, "loss_kw"] >= 0).all()
    # the original loads are users too: with a few kW of customers among ~1.7 MW of
    # background load, the background carries most of the losses
    bg = cl.loc[cl.participant == BACKGROUND, "loss_kw"].to_numpy()
    assert np.all(bg > 0.5 * grid["losses_kw"].to_numpy())
    off = _role(loss_allocation=False)
    off.begin_step(0, np.zeros(N), np.zeros(N))
    empty = off.tables()["customer_losses"]
    assert empty.empty and list(empty.columns) == ["step", "t_s", "participant", "loss_kw"]


def test_losses_of_many_steps_at_once_are_bit_for_bit_those_of_each_step():
    """The feeder role computes a batch of steps' per-phase losses and allocation at
    once (FeederRole._flush_losses); every step must come out exactly (not within
    rounding) as computed alone: delta transformer, lines, background Loads."""
    f = OpenDSSFeeder(MASTER)
    sites = place_customers(f.load_points(), N, seed=7)
    f.attach_customers(sites, CustomerConnection(kind="secondary"))
    inc = PhaseLossIncidence.build(f.phase_loss_elements(), f.customer_paths(), f.customer_layers(),
                                   background_paths=f.background_load_paths(),
                                   background_layers=f.background_load_layers())
    assert inc.n_background > 0
    rng = np.random.default_rng(5)
    snaps, ps, alone = [], [], []
    for t in range(9):
        p = rng.uniform(-8.0, 6.0, N)
        f.set_background_scale(0.3 + 0.1 * t)
        f.set_customer_powers(p, rng.uniform(-1.0, 1.0, N))
        f.solve(controls=t % 2 == 0)
        layers, weights = f.phase_losses_kw(), f.background_layer_kw()
        alone.append((layers, weights, *inc.allocate(layers, p, weights)))
        snaps.append(tuple(x.copy() for x in f.loss_snapshot()))
        ps.append(p)
    layers = f.phase_losses_kw_of(np.stack([s[0] for s in snaps]), np.stack([s[1] for s in snaps]))
    weights = f.background_layer_kw_of(np.stack([s[2] for s in snaps]))
    cust, background = inc.allocate_many(layers, np.stack(ps), weights)
    for t, (l1, w1, c1, b1) in enumerate(alone):
        assert np.array_equal(layers[t], l1) and np.array_equal(weights[t], w1)
        assert np.array_equal(cust[t], c1) and background[t] == b1
    assert len({float(b) for b in background}) == len(background)  # nine different solutions
