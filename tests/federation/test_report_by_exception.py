"""Report by exception (federates/common/alarms.py): the feeder shows the DSO a view
only when a limit is crossed or the DSO is not quiet, and the run is the one a DSO
shown every view gives.

References: the DSO polled after every control round (``run_inprocess(poll_dso=True)``,
the protocol before report by exception) for the tables, and the DSO's own violation
check (``federates.controllers.dso.violated_constraints``) for the alarms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federates.common.alarms import Alarms
from federates.common.config import load_config
from federates.common.messages import DsoView, Scada
from federates.controllers.dso import violated_constraints
from federates.feeder.sensitivity import Sensitivities
from runner.engine import EngineTimes, run_inprocess
from runner.launch import prepare_run
from tests.conftest import DEFAULT, REPO

pytestmark = pytest.mark.feeder

NOON = ["study.start=2026-06-21T11:00:00-04:00", "study.duration=1h"]
VERY_WEAK = REPO / "configs" / "very_weak_grid.yaml"

CASES = {
    # IEEE 13 at noon: the sensitivity policy on the customers' voltages
    "default": (DEFAULT, []),
    # group_voltage beside network-aware envelopes: the DSO's linear model is there for
    # the envelopes, the cuts are group_voltage's (they once went to the linear model's
    # planner, which knows no such policy, and the run failed at the first over-voltage)
    "group_envelopes": (VERY_WEAK, ["controllers.curtailment.policy=group_voltage",
                                    "market.network_aware=envelopes"]),
    # the sensitivity policies on every SCADA limit: thermal, unbalance, a substation export cap
    # (a light background load, so that the feeder exports)
    "proportional": (VERY_WEAK, ["controllers.curtailment.policy=proportional",
                                 "feeder.background_load_scale=0.1", "limits.substation_export_max_kw=20"]),
    "least_cost": (VERY_WEAK, ["controllers.curtailment.policy=least_cost", "limits.vuf_max_pct=1.0"]),
    "envelopes": (VERY_WEAK, ["market.network_aware=envelopes", "controllers.volt_watt.enabled=true"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_dso_shown_every_view_gives_the_same_run(tmp_path, case):
    path, overrides = CASES[case]
    cfg = load_config(path, [*NOON, *overrides])
    by_exception, polled = EngineTimes(), EngineTimes()
    a = run_inprocess(prepare_run(cfg, tmp_path / "by_exception"), by_exception)
    b = run_inprocess(prepare_run(cfg, tmp_path / "polled"), polled, poll_dso=True)
    assert sorted(a) == sorted(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    shown, every = np.asarray(by_exception.dso_views), np.asarray(polled.dso_views)
    n_steps = cfg.timeline.n_steps
    assert len(shown) == len(every) == n_steps
    assert (every >= 1).all()  # polled: at least the settled view of every step
    assert (shown <= every).all()
    # the DSO acted (curtailment rows) and was called for it, but not in every step
    assert len(a["curtailments"]) > 0
    assert 0 < shown.sum() < every.sum()


def random_sensitivities(rng, n, n_elements, n_buses) -> Sensitivities:
    return Sensitivities(
        participants=[f"p{i}" for i in range(n)], elements=[f"e{i}" for i in range(n_elements)],
        buses=[f"b{i}" for i in range(n_buses)], v0_pu=np.ones(n), loading0_pct=np.zeros(n_elements),
        flow0_kw=np.zeros(n_elements), vuf0_pct=np.zeros(n_buses), source0_kw=0.0,
        dv_pu_per_kw=rng.uniform(0, 1e-3, (n, n)), dloading_pct_per_kw=rng.uniform(0, 1, (n_elements, n)),
        dflow_kw_per_kw=rng.uniform(-1, 0, (n_elements, n)), dvuf_pct_per_kw=rng.uniform(0, 0.1, (n_buses, n)),
        dsource_kw_per_kw=-np.ones(n), dv_pu_per_kvar=rng.uniform(0, 1e-3, (n, n)))


@pytest.mark.parametrize("thermal", [True, False])
@pytest.mark.parametrize("export_max_kw", [None, 100.0])
def test_an_alarm_is_raised_exactly_when_the_dso_finds_a_violation(thermal, export_max_kw):
    cfg = load_config(DEFAULT, [f"limits.thermal={str(thermal).lower()}",
                                f"limits.substation_export_max_kw={export_max_kw or 'null'}"])
    alarms = Alarms.from_config(cfg)
    assert alarms.enabled and alarms.v_max_pu == cfg.controllers.v_max_pu
    lim, cur = cfg.limits, cfg.controllers.curtailment
    rng = np.random.default_rng(7)
    n, ne, nb = 12, 5, 4
    sens = random_sensitivities(rng, n, ne, nb)
    raised = 0
    for trial in range(2000):
        # each kind near its limit, so that single crossings of each kind occur
        v = rng.uniform(1.0, alarms.v_max_pu + 0.004, n)
        loading = rng.uniform(60, lim.thermal_max_pct + 3, ne)
        flow = rng.uniform(-50, 20, ne)
        vuf = rng.uniform(0, lim.vuf_max_pct + 0.1, nb)
        loading[rng.random(ne) < 0.05] = np.nan  # an element without a rating
        source = float(rng.uniform(-120, 50))
        scada = None if trial % 5 == 0 else Scada(loading_pct=loading, p_kw=flow, vuf_pct=vuf, source_p_kw=source)
        view = DsoView(step=0, rounds=0, may_act=True, v_pu=v, p_kw=-rng.uniform(0, 5, n), scada=scada)
        found = violated_constraints(
            sens, v_pu=v, loading_pct=None if scada is None else loading, flow_kw=None if scada is None else flow,
            vuf_pct=None if scada is None else vuf, source_p_kw=None if scada is None else source,
            v_max_pu=cfg.controllers.v_max_pu, margin_pu=cur.margin_pu,
            thermal_max_pct=lim.thermal_max_pct if lim.thermal else None,
            thermal_margin_pct=cur.thermal_margin_pct, vuf_max_pct=lim.vuf_max_pct,
            vuf_margin_pct=cur.vuf_margin_pct, export_max_kw=lim.substation_export_max_kw)
        assert alarms.raised(view) == bool(found), (trial, [c.limit for c in found])
        raised += bool(found)
    assert 200 < raised < 1800  # both outcomes well represented


def test_no_alarm_without_curtailment():
    cfg = load_config(DEFAULT, ["controllers.curtailment.enabled=false"])
    view = DsoView(step=0, rounds=0, may_act=True, v_pu=np.full(3, 1.2), p_kw=np.zeros(3), scada=None)
    assert not Alarms.from_config(cfg).raised(view)
