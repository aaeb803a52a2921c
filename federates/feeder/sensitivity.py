"""Sensitivities of the feeder's limits to each customer's export, by perturbation.

Computed once per run on the OpenDSS model itself (:class:`OpenDSSFeeder` with the
customers attached), at a *high-export operating point* where the export-caused
limits (over-voltage, reverse-flow overload, export unbalance, substation export)
bind: every customer with an inverter exports ``export_share`` of its nameplate
[kW = kVA x share], the others draw nothing, the original loads sit at
``background_mult`` x nominal, regulators and capacitors held where the base solve
left them (OpenDSS controls off, so the derivatives are those of the network alone,
the seconds-scale view the DSO acts on).

For each customer ``i`` in turn its export is raised by ``delta_kw`` and the model
re-solved; finite differences against the operating point give, per kW of *export*
of customer ``i`` (a kW of curtailment gives the opposite):

``dv_pu_per_kw``         (n, n)  customer voltage magnitude [pu / kW]
``dloading_pct_per_kw``  (m, n)  loading of each Line / Transformer [% / kW]
``dflow_kw_per_kw``      (m, n)  active power into terminal 1 of each element [kW / kW]
``dvuf_pct_per_kw``      (b, n)  VUF of each three-phase bus [% / kW]
``dsource_kw_per_kw``    (n,)    substation import [kW / kW] (about -1 - marginal losses)
``dv_pu_per_kvar``       (n, n)  customer voltage magnitude per kvar *drawn* at customer
                                 ``i`` [pu / kvar] (negative: absorbing lowers voltage),
                                 so that the DSO can account for the inverters' Volt-VAR

plus the operating point's values (``v0_pu``, ``loading0_pct``, ``flow0_kw``,
``vuf0_pct``, ``source0_kw``) and the names (``participants``, ``elements``, ``buses``).
The DSO's curtailment and operating envelopes (federates/controllers/dso.py) use
them as a linear model around what it measures; the step's re-solves correct the
linearisation error.

Cost: ``2 n + 1`` power flows (about 1 ms each on IEEE 13 with 40 customers), each
with O(1) OpenDSS calls (two batch writes, one solve, four bulk reads). On IEEE 8500
(4893 lines and transformers) measured on a 2-core machine: 1177 customers 20.6 s
(2355 solves, 8.8 ms each), 3000 customers 65 s (6001 solves, 10.9 ms each; 0.53 GB
peak for the whole process).
The arrays go to ``sensitivities.npz`` in the run folder, uncompressed: the
operating point's vectors as float64, the four matrices as float32 (relative rounding
6e-8, far below the linearisation error of ~1e-3 pu; it halves the memory of every
federate that loads them: 3000 customers on the 1000-load synthetic feeder measured
226 MB, 1000 customers 25 MB (BENCHMARKS.md); compressing them had cost a quarter of
prepare_run at 1000 customers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from federates.common.config import StudyFile
    from federates.common.study import Study
    from federates.feeder.opendss import OpenDSSFeeder

SENSITIVITIES_FILE = "sensitivities.npz"


def needs_sensitivities(cfg: StudyFile) -> bool:
    """The DSO's linear model is needed by sensitivity-based curtailment, by its demand
    response and by network-aware clearing."""
    ctl = cfg.controllers
    cur = ctl.curtailment
    curtails = ctl.enabled and cur.enabled and cur.policy != "group_voltage"
    return curtails or (ctl.enabled and ctl.demand_response.enabled) or cfg.market.network_aware != "off"


@dataclass(frozen=True)
class Sensitivities:
    """Linear model of the limits around an operating point (see the module doc)."""

    participants: list[str]
    elements: list[str]
    buses: list[str]
    v0_pu: np.ndarray
    loading0_pct: np.ndarray
    flow0_kw: np.ndarray
    vuf0_pct: np.ndarray
    source0_kw: float
    dv_pu_per_kw: np.ndarray
    dloading_pct_per_kw: np.ndarray
    dflow_kw_per_kw: np.ndarray
    dvuf_pct_per_kw: np.ndarray
    dsource_kw_per_kw: np.ndarray
    dv_pu_per_kvar: np.ndarray

    def save(self, path: Path) -> None:
        f32 = np.float32
        np.savez(
            path, participants=np.asarray(self.participants), elements=np.asarray(self.elements),
            buses=np.asarray(self.buses), v0_pu=self.v0_pu, loading0_pct=self.loading0_pct,
            flow0_kw=self.flow0_kw, vuf0_pct=self.vuf0_pct, source0_kw=np.float64(self.source0_kw),
            dv_pu_per_kw=np.asarray(self.dv_pu_per_kw, f32),
            dloading_pct_per_kw=np.asarray(self.dloading_pct_per_kw, f32),
            dflow_kw_per_kw=np.asarray(self.dflow_kw_per_kw, f32),
            dvuf_pct_per_kw=np.asarray(self.dvuf_pct_per_kw, f32),
            dsource_kw_per_kw=self.dsource_kw_per_kw, dv_pu_per_kvar=np.asarray(self.dv_pu_per_kvar, f32))

    @classmethod
    def load(cls, path: Path) -> Sensitivities:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                participants=[str(x) for x in z["participants"]],
                elements=[str(x) for x in z["elements"]], buses=[str(x) for x in z["buses"]],
                v0_pu=z["v0_pu"], loading0_pct=z["loading0_pct"], flow0_kw=z["flow0_kw"],
                vuf0_pct=z["vuf0_pct"], source0_kw=float(z["source0_kw"]),
                dv_pu_per_kw=z["dv_pu_per_kw"], dloading_pct_per_kw=z["dloading_pct_per_kw"],
                dflow_kw_per_kw=z["dflow_kw_per_kw"], dvuf_pct_per_kw=z["dvuf_pct_per_kw"],
                dsource_kw_per_kw=z["dsource_kw_per_kw"], dv_pu_per_kvar=z["dv_pu_per_kvar"])


def _state(feeder: OpenDSSFeeder) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    _, loading = feeder.element_loading_pct()
    _, flow = feeder.element_p_kw()
    _, vuf = feeder.vuf_pct()
    return feeder.customer_v_pu(), loading, flow, vuf, feeder.source_pq()[0]


def compute_sensitivities(feeder: OpenDSSFeeder, inverter_kva: np.ndarray, *,
                          export_share: float = 0.5, background_mult: float = 0.6,
                          delta_kw: float = 1.0) -> Sensitivities:
    """Perturbation sensitivities of ``feeder`` (customers attached) per kW of export.

    ``inverter_kva`` [kVA] per customer sets the operating point's exports
    (``export_share`` x kVA [kW]); ``background_mult`` [-] scales the original loads;
    ``delta_kw`` [kW, and kvar for ``dv_pu_per_kvar``] is the perturbation. The feeder is left at the operating point
    with OpenDSS controls as the last solve had them; build a fresh feeder for a run.
    """
    kva = np.asarray(inverter_kva, dtype=float)
    n = feeder.n_customers
    if kva.shape != (n,):
        raise ValueError(f"inverter_kva has shape {kva.shape}; expected ({n},)")
    if delta_kw <= 0:
        raise ValueError(f"delta_kw must be > 0, got {delta_kw}")
    feeder.set_background_scale(background_mult)
    p0 = -export_share * kva  # export is negative p
    q0 = np.zeros(n)
    feeder.set_customer_powers(p0, q0)
    feeder.solve(controls=True)  # regulators/capacitors settle at the operating point ...
    feeder.solve(controls=False)  # ... then stay there for every perturbation
    v0, l0, f0, u0, s0 = _state(feeder)
    elements, _ = feeder.element_p_kw()
    buses, _ = feeder.vuf_pct()
    f32 = np.float32  # see the module doc
    dv = np.empty((n, n), f32)
    dl = np.empty((len(l0), n), f32)
    df = np.empty((len(f0), n), f32)
    du = np.empty((len(u0), n), f32)
    ds = np.empty(n)
    p = p0.copy()
    for i in range(n):
        p[i] = p0[i] - delta_kw
        feeder.set_customer_powers(p, q0)
        feeder.solve(controls=False)
        v, ld, fl, u, s = _state(feeder)
        dv[:, i] = (v - v0) / delta_kw
        dl[:, i] = (ld - l0) / delta_kw
        df[:, i] = (fl - f0) / delta_kw
        du[:, i] = (u - u0) / delta_kw
        ds[i] = (s - s0) / delta_kw
        p[i] = p0[i]
    dvq = np.empty((n, n), f32)
    q = q0.copy()
    feeder.set_customer_powers(p0, q)
    for i in range(n):
        q[i] = delta_kw  # kvar drawn
        feeder.set_customer_powers(p0, q)
        feeder.solve(controls=False)
        dvq[:, i] = (feeder.customer_v_pu() - v0) / delta_kw
        q[i] = 0.0
    feeder.set_customer_powers(p0, q0)
    return Sensitivities(
        participants=[s.participant for s in feeder.sites], elements=list(elements),
        buses=list(buses), v0_pu=v0, loading0_pct=l0, flow0_kw=f0, vuf0_pct=u0, source0_kw=s0,
        dv_pu_per_kw=dv, dloading_pct_per_kw=np.nan_to_num(dl), dflow_kw_per_kw=df,
        dvuf_pct_per_kw=np.nan_to_num(du), dsource_kw_per_kw=ds, dv_pu_per_kvar=dvq)


def load_sensitivities(study: Study) -> Sensitivities:
    """The DSO's linear model of the study's feeder (``sensitivities.npz`` in its run
    folder, written by prepare_run when curtailment or network-aware clearing needs it),
    checked to be of the study's customers."""
    path = study.run_dir / SENSITIVITIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sensitivities in this run folder")
    sens = Sensitivities.load(path)
    if sens.participants != study.participants:
        raise ValueError(f"{path}: customers do not match the run folder's sites.json")
    return sens
