"""The DSO inside the controllers federate: what it knows and what it decides.

It knows only what a DSO would: the schedule (the market's confirmations), the
smart meters' AMI data (interval averages, late by one interval, with gaps), the
SCADA view of the feeder after each solve (element loading and flow, bus unbalance,
substation power) and the linear model of the feeder computed once on the OpenDSS
model (``sensitivities.npz``). It decides, with :mod:`federates.controllers.dso`:

* ex post, inside a physics step once inverter control has settled, which exports
  to curtail for every limit still violated (:meth:`DsoAgent.plan`), by the
  configured policy;
* ex ante, with ``market.network_aware: envelopes``, each prosumer's operating
  envelope for the next interval (:meth:`DsoAgent.envelopes`) from its AMI data.

Missing AMI readings: the last delivered value of that meter is held; a meter that
has never delivered one counts at the highest voltage (lowest, for import limits)
any meter delivered, the conservative assumption.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federates.common.config import StudyFile
from federates.common.limits import Limit, limit_key, limit_of
from federates.common.messages import AmiReading, Confirmation, GridConstraint, OperatingEnvelope
from federates.controllers.dso import (
    MIN_EFFECTIVE_SHARE,
    CurtailmentPlan,
    closed_loop_dv,
    grid_constraints,
    operating_envelopes,
    plan_curtailment,
    violated_constraints,
)
from federates.feeder.sensitivity import Sensitivities


class DsoAgent:
    """The DSO's state and decisions for one study (customers in ``participants`` order)."""

    def __init__(self, cfg: StudyFile, participants: Sequence[str], inverter_kva: np.ndarray,
                 sens: Sensitivities | None):
        self.cfg = cfg
        self.participants = list(participants)
        self.n = n = len(self.participants)
        self._index = {p: i for i, p in enumerate(self.participants)}
        if sens is not None and sens.participants != self.participants:
            raise ValueError("sensitivities were computed for other customers")
        self.sens = sens
        self.inverter_kva = np.asarray(inverter_kva, dtype=float)
        self.policy = cfg.controllers.curtailment.policy
        self.lim = cfg.limits
        self.cur = cfg.controllers.curtailment
        self.v_max_pu = float(cfg.controllers.v_max_pu)
        self.v_min_pu = float(cfg.controllers.v_min_pu)
        #: the feed-in price of each interval [USD/kWh] (market.tariff): what an unsold export is worth
        self.tariff = cfg.tariff
        self.price_usd_per_kwh = np.full(n, self.tariff.feed_in(0))
        conn = cfg.feeder.customer_connection
        #: each customer's own import limit for envelopes: its share of the service transformer
        self.import_cap_kw = np.full(n, conn.transformer_kva / conn.customers_per_transformer
                                     if conn.kind == "secondary" else 2.0 * conn.transformer_kva)
        self.v_ami_pu = np.full(n, np.nan)
        self.p_ami_kw = np.full(n, np.nan)
        self.ami_received = 0
        self.ami_missing = 0
        self.last_scada = None
        self.ignored: set[str] = set()  # "limit:element" found ineffective this interval
        self._last: dict[str, tuple[float, float]] = {}  # name -> (excess, predicted relief)
        self._cut: set[str] = set()  # limits cut for this interval

    # ------------------------------------------------------------------ inputs
    def on_confirmations(self, k: int, confirmations: Sequence[Confirmation]) -> None:
        """The schedule of ``k``: a seller's peer price is what curtailing it loses, the
        interval's feed-in price for one without a peer sale."""
        self.price_usd_per_kwh[:] = self.tariff.feed_in(k)
        for c in confirmations:
            i = self._index.get(c.participant)
            if i is not None and c.interval == k and c.peer_sold_kwh > 0 and c.price_usd_per_kwh is not None:
                self.price_usd_per_kwh[i] = float(c.price_usd_per_kwh)

    def on_ami(self, k: int, readings: Sequence[AmiReading]) -> None:
        """AMI readings delivered for interval ``k``: the latest period of each meter counts."""
        latest: dict[int, AmiReading] = {}
        for r in readings:
            i = self._index.get(r.meter)
            if i is None:
                raise ValueError(f"AMI reading from unknown meter {r.meter!r}")
            if i not in latest or r.t_end_s > latest[i].t_end_s:
                latest[i] = r
        for i, r in latest.items():
            self.v_ami_pu[i] = r.v_pu
            self.p_ami_kw[i] = r.p_kw
        self.ami_received += len(latest)
        self.ami_missing += self.n - len(latest)

    def on_scada(self, scada) -> None:
        self.last_scada = scada

    def new_interval(self) -> None:
        """Forget which limits proved ineffective (the operating point moved on)."""
        self.ignored.clear()
        self._last.clear()
        self._cut.clear()

    @property
    def checking(self) -> bool:
        """Whether the next view checks the relief of the last cuts (:meth:`plan`)."""
        return bool(self._last)

    # ------------------------------------------------------------------ decisions
    def plan(self, v_pu: np.ndarray, p_kw: np.ndarray, scada) -> CurtailmentPlan | None:
        """Ex-post cuts [kW] for the limits violated now (None: nothing violated)."""
        if self.sens is None:
            raise RuntimeError("the DSO needs sensitivities.npz (prepare_run writes it)")
        lim, cur = self.lim, self.cur
        cons = violated_constraints(
            self.sens, v_pu=v_pu,
            loading_pct=None if scada is None else scada.loading_pct,
            flow_kw=None if scada is None else scada.p_kw,
            vuf_pct=None if scada is None else scada.vuf_pct,
            source_p_kw=None if scada is None else scada.source_p_kw,
            v_max_pu=self.v_max_pu, margin_pu=cur.margin_pu,
            thermal_max_pct=lim.thermal_max_pct if lim.thermal else None,
            thermal_margin_pct=cur.thermal_margin_pct,
            vuf_max_pct=lim.vuf_max_pct, vuf_margin_pct=cur.vuf_margin_pct,
            export_max_kw=lim.substation_export_max_kw)
        # a limit whose excess did not fall by MIN_EFFECTIVE_SHARE of the relief the
        # last cut predicted is not one exports can fix here: stop curtailing for it
        now = {limit_key(c.limit, c.element): c.excess for c in cons}
        for name, (excess, relief) in self._last.items():
            if name in now and relief > 0 and excess - now[name] < MIN_EFFECTIVE_SHARE * relief:
                self.ignored.add(name)
        cons = [c for c in cons if limit_key(c.limit, c.element) not in self.ignored]
        self._last = {}
        if not cons:
            return None
        export_kw = np.clip(-np.asarray(p_kw, dtype=float), 0, None)
        plan = plan_curtailment(self.policy, cons, export_kw, self.price_usd_per_kwh)
        # cut before, still violated, and nothing left that could relieve it: the cuts
        # did not clear the limit, so they are not worth their energy
        self.ignored.update(name for name in plan.skipped if name in self._cut)
        self._last = {name: (now[name], relief) for name, relief in plan.predicted_relief.items()
                      if relief > 0}
        self._cut.update(self._last)
        return plan

    def _closed_loop_dv(self, v_pu: np.ndarray) -> np.ndarray | None:
        """The voltage response to export with the inverters' Volt-VAR acting, at the
        measured voltages: inverters between V3 and V4 (the absorbing slope of the
        curve, where more export meets more absorption) count with the curve's slope.
        None (open loop) without Volt-VAR."""
        vv = self.cfg.controllers.volt_var
        if not (self.cfg.controllers.enabled and vv.enabled):
            return None
        shift = vv.v_ref_pu - 1.0
        v3, v4 = vv.v3_pu + shift, vv.v4_pu + shift
        slope = -vv.q4_pct / 100.0 * self.inverter_kva / (v4 - v3)  # kvar drawn per pu
        on_slope = (v_pu >= v3 - 0.01) & (v_pu < v4)  # about to enter it counts too
        return closed_loop_dv(self.sens, np.where(on_slope, slope, 0.0))

    def _measured(self):
        """(known, v_hi, v_lo, p) from the AMI data so far: a meter never read counts at
        the highest (for export limits) / lowest (import limits) voltage delivered."""
        known = np.isfinite(self.v_ami_pu)
        if not known.any():
            return None
        v_hi = np.where(known, self.v_ami_pu, np.nanmax(self.v_ami_pu))
        v_lo = np.where(known, self.v_ami_pu, np.nanmin(self.v_ami_pu))
        return known, v_hi, v_lo, np.where(known, self.p_ami_kw, 0.0)

    def _model_inputs(self, v_hi: np.ndarray) -> dict:
        """What envelopes and grid constraints share: limits, the last SCADA view and
        the closed-loop voltage response at the measured voltages ``v_hi``."""
        scada = self.last_scada
        return dict(inverter_kva=self.inverter_kva, import_cap_kw=self.import_cap_kw,
                    v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu, margin_pu=self.cur.margin_pu,
                    loading_pct=None if scada is None else scada.loading_pct,
                    flow_kw=None if scada is None else scada.p_kw,
                    thermal_max_pct=self.lim.thermal_max_pct if self.lim.thermal else None,
                    source_p_kw=None if scada is None else scada.source_p_kw,
                    export_max_kw=self.lim.substation_export_max_kw,
                    import_max_kw=self.lim.substation_import_max_kw,
                    dv_pu_per_kw=self._closed_loop_dv(v_hi))

    def grid_constraints(self, k: int) -> list[GridConstraint]:
        """Linearised limits for the clearing of ``k`` (``network_aware: constraints``)."""
        if self.sens is None:
            raise RuntimeError("the DSO needs sensitivities.npz (prepare_run writes it)")
        m = self._measured()
        if m is None:
            return []
        known, v_hi, v_lo, p = m
        kw = self._model_inputs(v_hi)
        rows = grid_constraints(self.sens, k, v_pu=v_hi, p_kw=p, **kw)
        if not known.all():  # import-side rows at the conservative low voltages
            low = grid_constraints(self.sens, k, v_pu=v_lo, p_kw=p, **kw)
            rows = [r for r in rows if limit_of(r.name) != Limit.V_MIN]
            rows += [r for r in low if limit_of(r.name) == Limit.V_MIN]
        return rows

    def envelopes(self, k: int) -> list[OperatingEnvelope]:
        """Operating envelopes for interval ``k`` from the AMI data so far ([] before any)."""
        if self.sens is None:
            raise RuntimeError("the DSO needs sensitivities.npz (prepare_run writes it)")
        m = self._measured()
        if m is None:
            return []
        known, v_hi, v_lo, p = m
        kw = self._model_inputs(v_hi)
        exp = operating_envelopes(self.sens, v_pu=v_hi, p_kw=p, **kw)
        imp = exp if known.all() else operating_envelopes(self.sens, v_pu=v_lo, p_kw=p, **kw)
        return [OperatingEnvelope(participant=self.participants[i], interval=k,
                                  export_max_kw=float(exp.export_max_kw[i]),
                                  import_max_kw=float(imp.import_max_kw[i]),
                                  binding=exp.binding_export[i])
                for i in range(self.n)]
