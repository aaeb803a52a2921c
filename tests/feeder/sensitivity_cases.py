"""What the tests of the DSO's linear model share (tests/feeder/test_sensitivity_points.py,
tests/feeder/test_sensitivity_grouped.py): the study's feeder with its customers, one
measured solve, the per-customer expansion of a model, and the limits of a high-export
point at which the DSO's decisions are compared."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from federates.common.messages import Scada
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.sensitivity import GROUPED_FIELDS, Sensitivities

#: the customer-indexed matrices, each with a ``customer_<name>`` view
MATRICES = ("dv_pu_per_kw", "dv_pu_per_kvar", "dloading_pct_per_kw", "dflow_kw_per_kw", "dvuf_pct_per_kw")


def feeder_of(study, convergence: float | None = None) -> OpenDSSFeeder:
    """The study's feeder with its customers attached; ``convergence`` [pu] takes the
    solver's own tolerance out of a comparison."""
    f = OpenDSSFeeder(study.master)
    f.attach_customers(study.sites, study.cfg.feeder.customer_connection)
    if convergence is not None:
        f._dss.Solution.Convergence(convergence)
        f._dss.Solution.MaxIterations(100)
    return f


def dense_of(sens: Sensitivities) -> Sensitivities:
    """The model expanded to per-customer arrays (``E A E^T``, ``B E^T``, and the
    grouped model's own terms), as a plain per-customer model."""
    return replace(sens, point_of=None, element_rows=None, **{f: None for f in GROUPED_FIELDS},
                   **{m: getattr(sens, f"customer_{m}").dense() for m in MATRICES},
                   dsource_kw_per_kw=sens.customer_dsource_kw_per_kw)


def measured(study, p_kw: np.ndarray) -> tuple[np.ndarray, Scada]:
    """Customer voltages [pu] and the SCADA view of one solve at ``p_kw`` [kW]."""
    f = feeder_of(study)
    f.set_customer_powers(p_kw, np.zeros_like(p_kw))
    f.solve(controls=False)
    _, loading = f.element_loading_pct()
    _, flow = f.element_p_kw()
    _, vuf = f.vuf_pct()
    return f.customer_v_pu(), Scada(loading, flow, vuf, f.source_pq()[0])


def limits_at(v: np.ndarray, sc: Scada, p_kw: np.ndarray, kva: np.ndarray) -> tuple[dict, dict]:
    """(``violated_constraints``' keywords, ``operating_envelopes`` / ``grid_constraints``'
    keywords) for the measured point: half the customers over v_max, half the reverse-flow
    elements over their thermal limit, VUF above half its largest; envelopes with headroom
    for more export at some customers and none at others."""
    reverse = sc.p_kw < 0
    cons = dict(v_pu=v, loading_pct=sc.loading_pct, flow_kw=sc.p_kw, vuf_pct=sc.vuf_pct,
                source_p_kw=sc.source_p_kw, v_max_pu=float(np.quantile(v, 0.5)), margin_pu=0.002,
                thermal_max_pct=float(np.nanquantile(sc.loading_pct[reverse], 0.5)) if reverse.any() else None,
                thermal_margin_pct=1.0, vuf_max_pct=float(np.nanmax(sc.vuf_pct)) * 0.5, vuf_margin_pct=0.05,
                export_max_kw=None)
    env = dict(v_pu=v, p_kw=p_kw, inverter_kva=kva, import_cap_kw=np.full(kva.size, 8.0),
               v_min_pu=float(v.min()) - 0.01, v_max_pu=float(np.quantile(v, 0.9)), margin_pu=0.002,
               loading_pct=sc.loading_pct, flow_kw=sc.p_kw, thermal_max_pct=100.0,
               source_p_kw=sc.source_p_kw, export_max_kw=200.0, import_max_kw=sc.source_p_kw + 100.0)
    return cons, env


def weak_grid_hour(out, **overrides):
    """The very weak synthetic grid with the DSO's envelopes, 1 h around noon in
    process, run with ``overrides``: checked to end ok with no broken conservation
    check, its model's npz open for the caller's checks, and some envelope bound by
    the model. Returns (run, the npz's arrays as a dict)."""
    import tecosim
    from tests.conftest import REPO

    run = tecosim.run(REPO / "configs" / "very_weak_grid.yaml", engine="in_process", out=out,
                      overrides={"study.start": "2026-06-21T11:00:00-04:00", "study.duration": "1h",
                                 "market.network_aware": "envelopes", **overrides})
    assert run.status == "ok"
    assert run.manifest["summary"]["conservation_broken"] == 0
    env = run.table("dso_envelopes")
    assert len(env) and (env["binding"] != "").any()  # the DSO's model bound some envelope
    with np.load(run.path / "sensitivities.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return run, arrays
