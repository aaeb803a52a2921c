"""What the feeder does each physics step, used by the HELICS federate and the engine.

Plain Python over :class:`federates.feeder.opendss.OpenDSSFeeder` (no helics here).
Each step ``g``:

1. :meth:`FeederRole.begin_step` applies the requested net power of every prosumer
   (market schedule + real deviation), solves once *uncontrolled* (OpenDSS controls
   off, inverter q = 0, no export caps: the voltages "before control", with the
   regulator taps and capacitor states the previous step left), then
   *controlled* (regulators/capacitors act; each prosumer's present inverter q and
   export cap applied), and lets the customers' inverters settle (IEEE 1547 Volt-VAR
   and Volt-Watt, :mod:`federates.feeder.inverters`; one re-solve per round). It
   returns that :class:`Measurement`; :meth:`FeederRole.dso_view` is what the DSO
   (the controllers) sees of it, when it must see it: the views are reported by
   exception (:mod:`federates.common.alarms`), None when the DSO would do nothing.
2. :meth:`FeederRole.apply` takes the DSO's reply (its export caps), re-solves, lets
   the inverters settle again and returns the new Measurement (None when the DSO had
   nothing to do or the step used up its rounds); the last solve of a step is what
   the tables keep.

The first step of a run has no previous step: its powers are solved once *controlled*
first (a warm start, as a feeder that has been regulating before the study began), so
that its "before control" voltages are not those of whatever tap positions the model
was compiled with. An official model whose master solves at peak load (IEEE 8500) would
otherwise show every customer near 1.2 pu before control at midnight.

Besides customer voltages and the grid row, the final controlled solve of each step
records the ``feeder.lines_top_n`` most loaded Lines and Transformers (loading [%]
of NormAmps / rated kVA) and the voltage unbalance factor [%] of every three-phase
bus (IEC 61000-4-30 / IEEE 1159 VUF), read lazily like the grid row.

Export caps last one market interval: they are cleared at the first step of each
interval. Inverter q set-points persist until a new command.

Load limits (``controllers.demand_response.load_limit``, :meth:`FeederRole.on_load_limits`):
the DSO's import caps for one market interval, a smart meter's load limiter: at every
controlled solve of the interval a limited customer's import above its cap is not
served (the uncontrolled solve, "before control", serves it). The cap change is a
``curtailments`` row (limit ``load_limit``), the import not served in each step's final
solve a ``curtailment_energy`` row (limit ``load_limit``, kWh); the meters meter what
was served.

Demand-response calls (``controllers.demand_response``, :meth:`FeederRole.on_demand_response`):
the feeder gets the DSO's calls with its load limits and only records them: one
``curtailments`` row per call (limit ``demand_response``) at the interval's first step,
with the customer's voltage and import of that step's final solve. The cut itself is the
prosumers' (their devices plan less), metered, and paid in settlement.

A solve that does not converge (:class:`PowerFlowNotConverged`) is never skipped: it
gets a row in the ``nonconvergence`` table (step, t_s, solve, action, detail), the
grid table's ``converged`` is false for its step, and ``feeder.on_nonconvergence``
says what happens:

* ``abort`` (default): the row is recorded and PowerFlowNotConverged is raised, naming
  the feeder, the step, the simulated time and the solve (the run fails).
* ``hold``: the step keeps the last recorded step's solution (voltages, powers and
  grid row copied; the returned Measurement is that step's); a later solve of the same
  step that converges replaces it. With no earlier step to hold, it aborts.
* ``curtail``: the same solve is retried with the customers' powers limited, one
  level after another until it converges (:data:`CURTAIL_LEVELS`): level 1 caps
  every export at 0 kW (recorded as curtailment, ``curtailed_p_kw``, like a DSO cap);
  levels 2.. also scale every import by 0.5, 0.25 and 0 (shed load is not
  curtailment: it is metered, so it shows as imbalance). The level holds for the rest
  of the step (every later solve of it); the next step starts unlimited again. When
  even level 4 (no customer power at all) does not converge, it aborts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from federates.common.alarms import Alarms, dso_wants_scada
from federates.common.config import StudyFile
from federates.common.conservation import POWER_TOLERANCE_PCT, Conservation, relative_pct
from federates.common.errors import PowerFlowNotConverged
from federates.common.grid import CustomerSite
from federates.common.limits import Limit
from federates.common.messages import (
    ControlCommand,
    CurtailmentNotice,
    DemandResponseCall,
    DsoView,
    LoadLimit,
    LossEnergy,
    OperatingEnvelope,
    Scada,
)
from federates.common.tables import StepArrays, chunk_intervals
from federates.feeder.inverters import InverterFleet
from federates.feeder.opendss import OpenDSSFeeder
from federates.prosumers.agents import inverter_kva_of

if TYPE_CHECKING:
    from federates.common.study import Study

#: Lines and transformers kept per step in the ``lines`` table when the study file
#: does not say (``feeder.lines_top_n``).

# OpenDSS's built-in "default" daily load shape (24 hourly multipliers), as defined in
# the OpenDSS source (LoadShape.pas, the shape every Load uses for "daily" unless told
# otherwise) and read back from the engine by OpenDSSFeeder.default_daily_shape();
# tests/feeder/test_adapter.py checks the two are equal. Multiplier i is placed at
# local clock hour i (00:00 -> 0.677) and interpolated linearly between hours,
# wrapping from 23:00 to 24:00 = 00:00.
OPENDSS_DEFAULT_DAILY_SHAPE: tuple[float, ...] = (
    0.677, 0.6256, 0.6087, 0.5833, 0.58028, 0.6025, 0.657, 0.7477, 0.832, 0.88, 0.94, 0.989,
    0.985, 0.98, 0.9898, 0.999, 1.0, 0.958, 0.936, 0.913, 0.876, 0.876, 0.828, 0.756,
)


#: ``feeder.on_nonconvergence: curtail``: the import multiplier of retry level 2, 3, 4
#: (level 1 only caps exports at 0 kW) [-]
CURTAIL_IMPORT_SCALES: tuple[float, ...] = (0.5, 0.25, 0.0)
CURTAIL_LEVELS = 1 + len(CURTAIL_IMPORT_SCALES)

#: the loss allocation of the kept steps is computed once this many steps are kept
#: (FeederRole._record_losses), fewer where a step's arrays are large: the batch's
#: temporaries hold (steps x user-cell pairs) values, kept under LOSS_BATCH_VALUES
#: (IEEE 13 with 40 customers: 64 steps at once; IEEE 8500 with 1177: 835k pairs, one
#: step at a time, as before batching, where per-step numpy calls cost nothing next to
#: the arithmetic; batching it by bytes alone had taken the feeder to 1.4 GiB)
LOSS_BATCH_STEPS = 64
LOSS_BATCH_VALUES = 1_000_000
#: the violations of the kept steps are checked once this many steps are kept
#: (FeederRole._flush_violations), fewer where a step's limit snapshot is large (the
#: kept snapshots hold at most LOSS_BATCH_VALUES floats)
VIOLATION_BATCH_STEPS = 64


def daily_shape_mult(hour_of_day: float, shape: tuple[float, ...] = OPENDSS_DEFAULT_DAILY_SHAPE) -> float:
    """The hourly ``shape`` at local clock time ``hour_of_day`` [h], linear between hours [-]."""
    n = len(shape)
    h = float(hour_of_day) % n
    i = int(h)
    frac = h - i
    return shape[i] * (1.0 - frac) + shape[(i + 1) % n] * frac


@dataclass
class Measurement:
    """What the feeder measures at each customer point, in customer order.

    ``v_pu`` voltage magnitude [pu of the L-N base; for a customer across a split-phase
    120/240 V service the leg-to-leg voltage over 240 V]; ``p_kw``/``q_kvar`` power at the
    customer point [kW, kvar] (+ import): the set-point applied to the constant-PQ
    customer load, which OpenDSS draws within its solution tolerance;
    ``curtailed_p_kw`` export held back by DSO caps [kW, >= 0] (applied - requested).
    """

    v_pu: np.ndarray
    p_kw: np.ndarray
    q_kvar: np.ndarray
    curtailed_p_kw: np.ndarray
    scada: Scada | None = None


class FeederRole:
    """The feeder's work over a study: steps, controls, and the recorded tables."""

    @classmethod
    def from_study(cls, study: Study) -> FeederRole:
        """The study's feeder model with its customers and their inverters."""
        return cls(study.cfg, study.master, study.sites, inverter_kva=inverter_kva_of(study.cfg, study.sites))

    def __init__(self, cfg: StudyFile, master: Path, sites: list[CustomerSite], *,
                 inverter_kva: np.ndarray | None = None) -> None:
        """``inverter_kva`` [kVA] each customer's inverter nameplate (default: from the
        prosumer specs of ``cfg``, as the prosumers draw them)."""
        self.cfg = cfg
        self.timeline = cfg.timeline
        self.sites = list(sites)
        self.participants = [s.participant for s in self.sites]
        self._index = {p: i for i, p in enumerate(self.participants)}
        self.feeder = OpenDSSFeeder(Path(master), source_pu=cfg.feeder.source_pu)
        self.feeder.attach_customers(self.sites, cfg.feeder.customer_connection)
        self.regulators = self.feeder.regulator_names
        self.capacitors = self.feeder.capacitor_names

        f = cfg.feeder
        self._shape_flat = f.background_load_shape == "flat"
        self._scale = float(f.background_load_scale)
        start = pd.Timestamp(cfg.study.start)
        self._start_hour = (
            start.hour + start.minute / 60.0 + (start.second + start.microsecond / 1e6) / 3600.0
        )

        n = len(self.sites)
        self._n = n
        self._q_kvar = np.zeros(n)
        self._cap_kw = np.full(n, np.nan)  # NaN = no cap
        self._import_cap_kw = np.full(n, np.nan)  # the DSO's load limits (NaN = none)
        self._load_limit_k = -1  # the interval they hold for
        self._unserved: tuple[int, np.ndarray] | None = None  # (step, kW) of the last controlled solve
        #: the DSO's demand-response calls to record once their first step is over: (step, calls)
        self._dr_calls: tuple[int, list[DemandResponseCall]] | None = None
        self._requested = np.zeros(n)
        self._step: int | None = None
        self._pending_grid: int | None = None
        self._n_solves = 0
        # non-convergence (feeder.on_nonconvergence)
        self._policy = cfg.feeder.on_nonconvergence
        self._nc_level = 0  # curtail retry level of the step in progress (0 = unlimited)
        self._nc_rows: list[tuple] = []
        self._last_good: int | None = None  # last step with a complete record (for hold)
        self._warm = False  # the controls settled to the first step's powers (begin_step)
        self._step_scada: Scada | None = None  # SCADA of the last recorded solve
        self._good_scada: Scada | None = None  # ... of step _last_good (hold returns it)

        # per-step records of the chunk in progress (federates.common.tables); the
        # split-phase customers (240 V across two 120 V legs) have the band checked on
        # the lowest / highest of their 240 V and both legs (OpenDSSFeeder.
        # customer_v_extremes_pu); without any, v_pu is checked
        tl = self.timeline
        self._legs = self.feeder.has_split_phase_customers
        rec = self._rec = StepArrays(min(tl.n_steps, chunk_intervals(tl, n) * tl.steps_per_interval))
        rec.add("done", dtype=bool, fill=False)
        for name in ("v", "v_before", "p", "p_delivered", "q", "curt", "cust_loss",
                     *(("v_lo", "v_hi", "v_lo_before", "v_hi_before") if self._legs else ())):
            rec.add(name, (n,))
        for name in ("src_p", "src_q", "loss", "load", "gross", "bg", "bg_loss"):
            rec.add(name)
        rec.add("solves", dtype=np.int64, fill=0)
        rec.add("taps", (len(self.regulators),), dtype=np.int64, fill=0)
        rec.add("caps", (len(self.capacitors),), dtype=np.int64, fill=0)
        rec.add("converged", dtype=bool, fill=True)
        self._held_row: dict[str, np.ndarray] = {}  # the last good step's record once drained (hold)

        # limits (names fixed now that customers are attached)
        line_names, _ = self.feeder.line_loading_pct()
        xf_names, _ = self.feeder.transformer_loading_pct()
        self.elements = [f"line.{x}" for x in line_names] + [f"transformer.{x}" for x in xf_names]
        self.vuf_buses, _ = self.feeder.vuf_pct()
        top_n = int(f.lines_top_n)
        if top_n < 0:
            raise ValueError(f"feeder.lines_top_n must be >= 0, got {top_n}")
        self._top_n = min(top_n, len(self.elements))
        self.element_kind = np.asarray([e.partition(".")[0] for e in self.elements], dtype=object)
        self.limits = cfg.limits
        #: the controllers' DSO needs SCADA after every solve (thermal, unbalance, substation)
        self.want_scada = dso_wants_scada(cfg)
        # the uncontrolled solve's limit readouts (OpenDSSFeeder.limit_snapshot and the
        # source kW), and the steps whose violations are still to check (_flush_violations)
        self._before: tuple[np.ndarray | None, np.ndarray | None, np.ndarray, float] | None = None
        self._viol_pending: list[tuple[int, tuple, tuple[np.ndarray, np.ndarray, float]]] = []
        self._viol_batch_steps = max(1, min(VIOLATION_BATCH_STEPS,
                                            LOSS_BATCH_VALUES // max(self.feeder.limit_snapshot_values, 1)))
        self._limits_of: tuple[int, tuple[np.ndarray, np.ndarray, float]] | None = None  # (solution id, values)
        self._violation_rows: list[tuple] = []
        rec.add("top_elem", (self._top_n,), dtype=np.int64, fill=0)
        rec.add("top_load", (self._top_n,))
        rec.add("vuf", (len(self.vuf_buses),))
        # per-phase loss allocation (GBLA, federates/feeder/losses.py): customer_losses
        from federates.feeder.losses import PhaseLossIncidence

        # users of the graph: the customers and the model's own (background) Loads
        self._loss_inc = (PhaseLossIncidence.build(self.feeder.phase_loss_elements(),
                                                   self.feeder.customer_paths(),
                                                   self.feeder.customer_layers(),
                                                   background_paths=self.feeder.background_load_paths(),
                                                   background_layers=self.feeder.background_load_layers())
                          if cfg.feeder.loss_allocation else None)
        self._loss_pending: list[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []  # _record_losses
        per_step = 0 if self._loss_inc is None else self._loss_inc.n_pairs + 2 * self.feeder.phase_loss_values
        self._loss_batch_steps = max(1, min(LOSS_BATCH_STEPS, LOSS_BATCH_VALUES // max(per_step, 1)))
        # the customers' inverters (Volt-VAR, Volt-Watt, the caps they hold)
        if inverter_kva is None:
            inverter_kva = inverter_kva_of(cfg, self.sites)
        self.inverters = InverterFleet(cfg, self.sites, inverter_kva)
        self._settled: Measurement | None = None  # the Measurement the DSO is shown
        self.alarms = Alarms.from_config(cfg)
        self._dso_quiet = True  # the DSO's last reply (DsoReply.quiet); true at each interval start
        self.books = Conservation("feeder", cfg.feeder.conservation)  # the live power check

    # ------------------------------------------------------------------ helpers
    def background_mult(self, g: int) -> float:
        """Multiplier of the original loads at step ``g`` [-] (shape x scale).

        NaN with ``background_load_shape: model``: each load then follows its own
        OpenDSS loadshape (``OpenDSSFeeder.set_background_time``), and the grid
        table's ``background_mult`` records the kW-weighted mean multiplier that call
        returns (the original loads' total kW as set over their nominal total).
        """
        if self._shape_flat:
            return self._scale
        if self.cfg.feeder.background_load_shape == "model":
            return float("nan")
        hour = self._start_hour + self.timeline.step_t_s(g) / 3600.0
        return self._scale * daily_shape_mult(hour)

    def _check_step(self, g: int) -> None:
        if not 0 <= g < self.timeline.n_steps:
            raise ValueError(f"step {g} is outside the study (0..{self.timeline.n_steps - 1})")

    def _vector(self, name: str, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.shape != (self._n,):
            raise ValueError(f"{name} must have one value per customer ({self._n}), got shape {a.shape}")
        # NaN or inf anywhere makes the sum of squares non-finite (so may a huge value: then check each)
        if not math.isfinite(a @ a) and not np.isfinite(a).all():
            raise ValueError(f"{name} must be finite")
        return a

    def _limit_values(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Element loading [%], bus VUF [%] and substation import [kW] of the last solve
        (computed once per solve: the DSO's SCADA and the step's record read the same)."""
        f = self.feeder
        sid = f.solution_id
        if self._limits_of is not None and self._limits_of[0] == sid:
            return self._limits_of[1]
        loading = f.element_loading_values_pct() if self.limits.thermal or self._top_n else np.zeros(0)
        values = (loading, f.vuf_values_pct(), f.source_pq()[0])
        self._limits_of = (sid, values)
        return values

    def scada(self) -> Scada:
        """The SCADA view of the last solve (see :class:`Scada`)."""
        loading, vuf, src_p = self._limit_values()
        if loading.size == 0:
            loading = self.feeder.element_loading_values_pct()
        return Scada(loading_pct=loading, p_kw=self.feeder.element_p_values_kw(), vuf_pct=vuf,
                     source_p_kw=src_p)

    def _before_snapshot(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, float]:
        """The uncontrolled solve's readouts for the ``violations`` table's value_before:
        the limit snapshot (the loading inputs only with thermal limits; read when
        the loading is, as before) and the source import [kW]."""
        f = self.feeder
        read_loading = bool(self.limits.thermal or self._top_n)
        max_i, powers, volts = f.limit_snapshot(loading=read_loading)
        if not (self.limits.thermal and self.elements):
            max_i = powers = None
        return max_i, powers, volts, f.source_pq()[0]

    def _flush_violations(self) -> None:
        """Rows of the ``violations`` table for the kept steps: every limit violated
        before control (the uncontrolled solve) or after it (the final solve). The
        before values of the batch are computed at once (each step bit for bit as
        alone); rows in step order, then customers (v_max, v_min), elements, buses,
        source, as one step at a time gave them."""
        pending = self._viol_pending
        if not pending:
            return
        self._viol_pending = []
        checks = self._violation_checks(pending)
        any_bad = np.zeros(len(pending), dtype=bool)
        bads = []
        for *_, bound, vb, va, over in checks:
            bad = np.greater(vb, bound) if over else np.less(vb, bound)  # NaN: False
            bad |= np.greater(va, bound) if over else np.less(va, bound)
            any_bad |= bad.any(axis=1)
            bads.append(bad)
        for t in np.flatnonzero(any_bad).tolist():
            self._violation_rows_of(pending[t][0], t, checks, bads)

    def _violation_rows_of(self, g: int, t: int, checks: list[tuple], bads: list[np.ndarray]) -> None:
        """The ``violations`` rows of step ``g``, row ``t`` of the checked batch."""
        rows = self._violation_rows
        t_s = self.timeline.step_t_s(g)
        for (names, kind, limit, bound, vb, va, _), bad in zip(checks, bads, strict=True):
            for i in np.flatnonzero(bad[t]).tolist():
                kind_i = kind if isinstance(kind, str) else kind[i]
                rows.append((g, t_s, names[i], kind_i, limit, bound, float(vb[t, i]), float(va[t, i])))

    def _violation_checks(self, pending: list[tuple]) -> list[tuple]:
        """The checks of the kept steps, in row order: (names, kind, limit, bound,
        values before (steps, items), values after, over: bigger is worse)."""
        lim, rec, parts = self.limits, self._rec, self.participants
        r = np.asarray([rec.row(g) for g, _, _ in pending])
        if self._legs:  # split-phase services: their highest / lowest of 240 V and both legs
            hi_b, hi_a, lo_b, lo_a = rec.v_hi_before[r], rec.v_hi[r], rec.v_lo_before[r], rec.v_lo[r]
        else:
            hi_b = lo_b = rec.v_before[r]
            hi_a = lo_a = rec.v[r]
        checks = [(parts, "customer", Limit.V_MAX, lim.v_max_pu, hi_b, hi_a, True),
                  (parts, "customer", Limit.V_MIN, lim.v_min_pu, lo_b, lo_a, False)]
        before = [b for _, b, _ in pending]
        after = [a for _, _, a in pending]
        thermal = before[0][0] is not None

        def stacked(k: int) -> np.ndarray:
            return np.stack([b[k] for b in before])

        loading_b, vuf_b = self.feeder.limit_values_of(stacked(0) if thermal else None,
                                                       stacked(1) if thermal else None, stacked(2))
        if thermal:
            checks.append((self.elements, self.element_kind, Limit.THERMAL, lim.thermal_max_pct, loading_b,
                           np.stack([a[0] for a in after]), True))
        checks.append((self.vuf_buses, "bus", Limit.VUF, lim.vuf_max_pct, vuf_b, np.stack([a[1] for a in after]), True))
        src_b = np.asarray([[b[3]] for b in before], dtype=float)
        src_a = np.asarray([[a[2]] for a in after], dtype=float)
        if lim.substation_import_max_kw is not None:
            checks.append((["source"], "source", Limit.IMPORT, lim.substation_import_max_kw, src_b, src_a, True))
        if lim.substation_export_max_kw is not None:
            checks.append((["source"], "source", Limit.EXPORT, lim.substation_export_max_kw, -src_b, -src_a, True))
        return checks

    def violations_table(self) -> pd.DataFrame:
        """``violations``: one row per step, element and limit violated before or after
        control: step, t_s [s], element (participant, ``line.<name>``,
        ``transformer.<name>``, bus or ``source``), kind (customer, line, transformer,
        bus, source), limit (v_max, v_min [pu]; thermal [% of NormAmps / rated kVA];
        vuf [%]; import, export [kW at the substation]), limit_value, value_before
        (uncontrolled solve), value (final solve), resolved (value within the limit)."""
        self._flush_violations()
        cols = ["step", "t_s", "element", "kind", "limit", "limit_value", "value_before", "value"]
        df = pd.DataFrame(self._violation_rows, columns=cols)
        df = df.astype({"step": np.int64, "t_s": float, "element": str, "kind": str, "limit": str,
                        "limit_value": float, "value_before": float, "value": float})
        lower = df["limit"] == Limit.V_MIN
        df["resolved"] = np.where(lower, df["value"] >= df["limit_value"], df["value"] <= df["limit_value"])
        return df

    def _applied_p(self) -> np.ndarray:
        # export is negative p: a cap c [kW] limits p to >= -c
        capped = np.maximum(self._requested, -self._cap_kw)
        capped = np.where(np.isnan(self._cap_kw), self._requested, capped)
        return np.maximum(capped, 0.0) if self._nc_level >= 1 else capped

    def _limit_imports(self, p: np.ndarray) -> np.ndarray:
        """``p`` with each load-limited customer's import held to its cap [kW]."""
        if self._load_limit_k < 0:
            return p
        return np.where(np.isnan(self._import_cap_kw), p, np.minimum(p, self._import_cap_kw))

    def _flush_unserved(self) -> None:
        """The import the load limits left unserved in the last step's final solve, to
        the ``curtailment_energy`` table."""
        if self._unserved is not None:
            self.inverters.note_unserved(*self._unserved)
            self._unserved = None

    def _flush_demand_response(self) -> None:
        """The demand-response calls whose first step is over, to the ``curtailments``
        table with that step's final voltage and power (NaN for a step not recorded)."""
        if self._dr_calls is None or self._step is None or self._step < self._dr_calls[0]:
            return
        g, calls = self._dr_calls
        self._dr_calls = None
        rec = self._rec
        if g >= rec.g0 and rec.done[rec.row(g)]:
            v, p = rec.v[rec.row(g)], rec.p[rec.row(g)]
        else:
            v = p = np.full(self._n, np.nan)
        self.inverters.note_demand_response(g, calls, v, p)

    def _shed(self, p: np.ndarray) -> np.ndarray:
        """``p`` with the imports scaled by the curtail level of the step [kW]."""
        if self._nc_level < 2:
            return p
        return p * CURTAIL_IMPORT_SCALES[self._nc_level - 2]

    def _solve(self, g: int, controls: bool, set_powers) -> bool:
        """``set_powers()`` then one solve; on non-convergence act per ``on_nonconvergence``.

        Returns True when the solve converged (curtail retries included), False when
        the step is held; raises PowerFlowNotConverged on abort.
        """
        t_s = self.timeline.step_t_s(g)
        kind = "controlled" if controls else "uncontrolled"
        while True:
            set_powers()
            try:
                self.feeder.solve(controls=controls, t_s=t_s)
                self._n_solves += 1
                return True
            except PowerFlowNotConverged as e:
                self._n_solves += 1
                r = self._rec.row(g)  # before the array: row() may grow it
                self._rec.converged[r] = False
                why = str(e).partition(": ")[2] or str(e)
                if self._policy == "curtail" and self._nc_level < CURTAIL_LEVELS:
                    self._nc_level += 1
                    lv = self._nc_level
                    how = ("every export capped at 0 kW" if lv == 1 else
                           f"every export capped at 0 kW, imports x {CURTAIL_IMPORT_SCALES[lv - 2]:g}")
                    self._nc_rows.append((g, t_s, kind, "curtail", f"{why}; retry level {lv}: {how}"))
                    continue
                if self._policy == "hold" and self._last_good is not None and self._last_good < g:
                    self._nc_rows.append((g, t_s, kind, "hold",
                                          f"{why}; holding the solution of step {self._last_good}"))
                    return False
                reason = {"abort": "", "hold": " (no earlier step to hold)",
                          "curtail": " (still not converging with no customer power at all)"}[self._policy]
                detail = (f"{why}; {kind} solve of the feeder at step {g} "
                          f"({self._time_label(t_s)}); feeder.on_nonconvergence={self._policy}{reason} "
                          "stops the run")
                self._nc_rows.append((g, t_s, kind, "abort", detail))
                raise PowerFlowNotConverged(t_s, detail) from None

    def _time_label(self, t_s: float) -> str:
        return str(pd.Timestamp(self.cfg.study.start) + pd.to_timedelta(t_s, unit="s"))

    def _hold(self, g: int) -> Measurement:
        """Step ``g`` takes the record of step ``self._last_good``; its Measurement."""
        h = self._last_good
        assert h is not None
        self._flush_losses()  # the last good step's losses, before they are copied
        rec, r = self._rec, self._rec.row(g)
        for name in self._HELD:
            if name in rec._arrays:
                a = getattr(rec, name)
                a[r] = a[h - rec.g0] if h >= rec.g0 else self._held_row[name]
        rec.solves[r] = self._n_solves
        rec.done[r] = True
        self._pending_grid = None  # the engine holds no usable solution
        self._last_good = g
        return Measurement(v_pu=rec.v[r].copy(), p_kw=rec.p[r].copy(), q_kvar=rec.q[r].copy(),
                           curtailed_p_kw=rec.curt[r].copy(), scada=self._good_scada)

    #: what a held step copies from the last good one
    _HELD = ("v", "v_before", "p", "p_delivered", "q", "curt", "src_p", "src_q", "loss", "load", "gross", "taps", "caps", "top_elem",
             "top_load", "vuf", "cust_loss", "bg_loss", "v_lo", "v_hi", "v_lo_before", "v_hi_before")

    def _controlled_solve(self, g: int) -> Measurement:
        sent: list[np.ndarray] = []  # (capped, applied) of the last attempt: its curtail level

        def set_powers() -> None:
            capped = self._applied_p()
            limited = self._limit_imports(capped)
            sent[:] = (capped, limited, self._shed(limited))
            self.feeder.set_customer_powers(sent[2], self._q_kvar)

        if not self._solve(g, True, set_powers):
            return self._hold(g)
        capped, limited, applied = sent  # the level cannot change after the attempt that converged
        if self._load_limit_k >= 0:
            self._unserved = (g, capped - limited)
        m = Measurement(
            v_pu=self.feeder.customer_v_pu(),
            p_kw=applied.copy(),
            q_kvar=self._q_kvar.copy(),
            curtailed_p_kw=capped - self._requested,
        )
        self._record(g, m)
        if self._legs:
            r = self._rec.row(g)
            self._rec.v_lo[r], self._rec.v_hi[r] = self.feeder.customer_v_extremes_pu()
        return m

    def _record(self, g: int, m: Measurement) -> None:
        rec, r = self._rec, self._rec.row(g)
        rec.v[r] = m.v_pu
        rec.p[r] = m.p_kw
        rec.q[r] = m.q_kvar
        rec.curt[r] = m.curtailed_p_kw
        rec.solves[r] = self._n_solves
        rec.done[r] = True
        self._pending_grid = g

    def _finalize_grid(self) -> None:
        """Record the grid row of the step in progress from the last solve.

        Called before the next step changes the model and by :meth:`tables`, so these
        readouts (source, losses, the net power of every power-conversion element:
        ``load_kw``, taps, capacitors, loss allocation) run once per step, not once
        per solve.
        """
        g = self._pending_grid
        if g is None:
            return
        self._pending_grid = None
        rec, r = self._rec, self._rec.row(g)
        rec.src_p[r], rec.src_q[r] = self.feeder.source_pq()
        rec.loss[r] = self.feeder.losses_kw()
        self._record_losses(g)
        rec.load[r], rec.gross[r] = self.feeder.load_and_gross_kw()
        rec.p_delivered[r] = self.feeder.customer_pq()[0]
        self._check_power(g, rec.src_p[r], rec.load[r], rec.loss[r], rec.gross[r])
        if self.regulators:  # regulator_names order, as self.regulators
            rec.taps[r] = self.feeder.regulator_tap_steps()
        if self.capacitors:  # capacitor_names order, as self.capacitors
            rec.caps[r] = self.feeder.capacitor_step_counts()
        after = self._limit_values()
        loading, vuf, _ = after
        if self._top_n:
            key = np.where(np.isnan(loading), -np.inf, loading)  # NaN (no rating) last
            top = np.argsort(-key, kind="stable")[: self._top_n]
            rec.top_elem[r] = top
            rec.top_load[r] = loading[top]
        rec.vuf[r] = vuf
        if self._before is not None:  # the violations of the step, checked a batch at a time
            self._viol_pending.append((g, self._before, after))
            if len(self._viol_pending) >= self._viol_batch_steps:
                self._flush_violations()
        self._last_good = g
        self._good_scada = self._step_scada

    def _check_power(self, g: int, src_kw: float, load_kw: float, loss_kw: float, gross_kw: float) -> None:
        """The live power check of step ``g`` (federates.common.conservation): the
        source's power = every power-conversion element's + the losses [kW], within
        POWER_TOLERANCE_PCT of the gross flow."""
        err_kw = abs(src_kw - load_kw - loss_kw)
        pct = relative_pct(err_kw, gross_kw)
        if pct <= POWER_TOLERANCE_PCT:
            return
        self.books.check("power", interval=g // self.timeline.steps_per_interval, step=g, subject="feeder",
                         expected=src_kw, actual=load_kw + loss_kw, error=pct, tolerance=POWER_TOLERANCE_PCT,
                         unit="% of the gross kW",
                         detail=(f"source {src_kw:.9g} kW vs loads {load_kw:.9g} kW + losses {loss_kw:.9g} kW: "
                                 f"{err_kw:.6g} kW off, gross flow {gross_kw:.6g} kW"))

    def _record_losses(self, g: int) -> None:
        """Per-phase GBLA of step ``g``'s losses: each customer's share and the background [kW].

        The (element, layer) incidence of the customers and the background Loads is
        fixed in ``__init__``. Here only the solve's bulk arrays are kept
        (:meth:`OpenDSSFeeder.loss_snapshot`); :meth:`_flush_losses` computes the losses
        of the kept steps (up to ``_loss_batch_steps``, see LOSS_BATCH_VALUES) at once (:meth:`OpenDSSFeeder.phase_losses_kw_of`,
        :meth:`OpenDSSFeeder.background_layer_kw_of`, ``PhaseLossIncidence.allocate_many``),
        each step bit for bit as on its own, before anything reads the rows: the
        tables, a held step. Weights: the customer powers applied in the final solve
        (``|p_kw|``) and the background Loads' per-phase powers of that solve. The
        background row is the background Loads' shares plus what no user carries.
        """
        if self._loss_inc is None:
            return
        self._loss_pending.append((g, self.feeder.loss_snapshot()))
        if len(self._loss_pending) >= self._loss_batch_steps:
            self._flush_losses()

    def _flush_losses(self) -> None:
        """Compute the customer losses of the steps :meth:`_record_losses` kept."""
        pending = self._loss_pending
        if not pending:
            return
        self._loss_pending = []
        rec = self._rec
        rows = np.asarray([rec.row(g) for g, _ in pending])
        layers = self.feeder.phase_losses_kw_of(np.stack([x[0] for _, x in pending]),
                                                np.stack([x[1] for _, x in pending]))
        weights = self.feeder.background_layer_kw_of(np.stack([x[2] for _, x in pending]))
        cust, background = self._loss_inc.allocate_many(layers, rec.p[rows], weights)
        rec.cust_loss[rows] = cust
        rec.bg_loss[rows] = background

    def _customer_losses_table(self, steps: np.ndarray, t_s: np.ndarray) -> pd.DataFrame:
        """``customer_losses``: step x (customers + ``background``) rows, ``loss_kw`` [kW].

        ``background``: the shares of the model's own Loads (users of the graph like
        the customers, see :mod:`federates.feeder.losses`) plus what no user carries,
        as one row (per-Load rows would look like customers to the post-run trade
        allocation, runner/losses_table.py). Per step the rows add up to the feeder's
        PD element losses (OpenDSS's ``Circuit.Losses``, the grid table's
        ``losses_kw``). Empty when ``feeder.loss_allocation`` is false.
        """
        from federates.feeder.losses import BACKGROUND

        if self._loss_inc is None:
            steps = steps[:0]
        names = np.asarray([*self.participants, BACKGROUND], dtype=object)
        m = len(names)
        local = steps - self._rec.g0
        per_step = np.column_stack([self._rec.cust_loss[local], self._rec.bg_loss[local]])
        return pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), m),
            "t_s": np.repeat(t_s[: len(steps)], m),
            "participant": np.tile(names, len(steps)),
            "loss_kw": per_step.reshape(-1),
        })

    # ------------------------------------------------------------------ the step
    def begin_step(self, g: int, schedule_p_kw: np.ndarray, deviation_p_kw: np.ndarray) -> Measurement:
        """Solve step ``g`` for requested p = schedule + deviation [kW] (+ import).

        Returns the controlled Measurement; the uncontrolled voltages are kept as
        ``v_before_pu`` in the tables.
        """
        self._check_step(g)
        sched = self._vector("schedule_p_kw", schedule_p_kw)
        dev = self._vector("deviation_p_kw", deviation_p_kw)
        self._finalize_grid()
        self._flush_unserved()
        self._flush_demand_response()
        if g % self.timeline.steps_per_interval == 0:
            self._cap_kw[:] = np.nan
            self._dso_quiet = True
            if self._load_limit_k >= 0 and self._load_limit_k != self.timeline.interval_of_step(g):
                self._import_cap_kw[:] = np.nan  # the limits of an earlier interval are over
                self._load_limit_k = -1
        self._requested = sched + dev
        self._step = g
        self._n_solves = 0
        self._nc_level = 0
        if self.cfg.feeder.background_load_shape == "model":
            hour = self._start_hour + self.timeline.step_t_s(g) / 3600.0
            day0 = pd.Timestamp(self.cfg.study.start).day_of_year - 1
            mult = self.feeder.set_background_time(hour, self._scale, hour_of_year=24.0 * day0 + hour)
        else:
            mult = self.background_mult(g)
            self.feeder.set_background_scale(mult)
        r = self._rec.row(g)  # before the array: row() may grow it
        self._rec.bg[r] = mult

        def set_powers() -> None:
            self.feeder.set_customer_powers(self._shed(np.maximum(self._requested, 0.0) if self._nc_level
                                                       else self._requested), np.zeros(self._n))

        if not self._warm:  # the first step: regulators and capacitors settle to it first
            self._warm = True
            if not self._solve(g, True, set_powers):
                return self._settle(g, self._hold(g))
        if not self._solve(g, False, set_powers):
            return self._settle(g, self._hold(g))
        rec, r = self._rec, self._rec.row(g)
        rec.v_before[r] = self.feeder.customer_v_pu()
        if self._legs:
            rec.v_lo_before[r], rec.v_hi_before[r] = self.feeder.customer_v_extremes_pu()
        self._before = self._before_snapshot()
        return self._settle(g, self._controlled_solve(g))

    def _settle(self, g: int, m: Measurement) -> Measurement:
        """Let the inverters act on ``m`` until they settle (one re-solve per round)."""
        inv = self.inverters
        while True:
            moved = inv.on_solve(g, m.v_pu, m.p_kw, m.q_kvar, m.curtailed_p_kw)
            if moved is None:
                break
            m = self._set_inverters(g, moved)
        if m.scada is None and self.want_scada:
            m.scada = self.scada()
        self._step_scada = m.scada
        self._settled = m
        return m

    def _set_inverters(self, g: int, which: np.ndarray) -> Measurement:
        """Apply the inverters' set-points (q [kvar], export cap [kW]) of ``which``, re-solve."""
        cap = self.inverters.cap_kw
        self._q_kvar = np.where(which, self.inverters.q_kvar, self._q_kvar)
        self._cap_kw = np.where(which, np.where(np.isinf(cap), np.nan, cap), self._cap_kw)
        return self._controlled_solve(g)

    def dso_view(self, g: int, *, every: bool = False) -> DsoView | None:
        """What the DSO sees of step ``g`` now that the inverters have settled: the
        customers' telemetry (the inverters' local measurement), the SCADA view (when
        the DSO's policy needs it), the rounds used and whether the DSO may act.

        Reported by exception (:mod:`federates.common.alarms`): None unless the DSO may
        act and the view crosses an alarm limit or the DSO's last reply was not quiet.
        ``every``: the view regardless (a DSO polled every round; the same results)."""
        m = self._settled
        if g != self._step or m is None:
            raise ValueError(f"DSO view of step {g}, but the step in progress is {self._step}")
        inv = self.inverters
        v, p = inv.sensed
        view = DsoView(step=g, rounds=inv.rounds, may_act=inv.dso_may_act, v_pu=v, p_kw=p,
                       scada=m.scada if self.want_scada else None)
        if every or (view.may_act and (not self._dso_quiet or self.alarms.raised(view))):
            return view
        return None

    def apply(self, g: int, reply) -> Measurement | None:
        """The DSO's reply (:class:`federates.controllers.role.DsoReply`: its changed
        export caps, or ``capped``, and whether it is quiet) to the last
        :meth:`dso_view` of step ``g``: apply the caps, re-solve and let the inverters
        settle again. None when there is nothing to apply (the step is over)."""
        if g != self._step:
            raise ValueError(f"apply for step {g}, but the step in progress is {self._step}")
        self._dso_quiet = bool(reply.quiet)
        which = self.inverters.apply_dso(g, reply.caps, capped=reply.capped)
        if which is None:
            return None
        return self._settle(g, self._set_inverters(g, which))

    def on_envelopes(self, k: int, envelopes: list[OperatingEnvelope]) -> None:
        """Export envelopes of interval ``k`` for the inverters to hold (see
        :meth:`InverterFleet.on_envelopes`)."""
        self.inverters.on_envelopes(k, envelopes)

    def on_load_limits(self, k: int, limits: list[LoadLimit]) -> None:
        """The DSO's load limits for interval ``k`` (module docstring), before its first
        step: they replace any earlier ones; each is a ``curtailments`` row at the
        interval's first step."""
        if not limits:
            return
        g = k * self.timeline.steps_per_interval
        self._import_cap_kw[:] = np.nan
        for x in limits:
            i = self._index.get(x.participant)
            if i is None:
                raise ValueError(f"load limit for unknown participant {x.participant!r}")
            if x.interval != k:
                raise ValueError(f"load limit of interval {x.interval} given for interval {k}")
            self._import_cap_kw[i] = float(x.import_max_kw)
        self._load_limit_k = k
        self.inverters.note_load_limits(g, limits)

    def on_demand_response(self, k: int, calls: list[DemandResponseCall]) -> None:
        """The DSO's demand-response calls for interval ``k``, before its first step: each
        a ``curtailments`` row at that step once it is over (module docstring)."""
        if not calls:
            return
        for c in calls:
            if c.participant not in self._index:
                raise ValueError(f"demand-response call to unknown participant {c.participant!r}")
            if c.interval != k:
                raise ValueError(f"demand-response call of interval {c.interval} given for interval {k}")
        self._flush_demand_response()
        self._dr_calls = (k * self.timeline.steps_per_interval, list(calls))

    def curtailment_notices(self, k: int) -> list[CurtailmentNotice]:
        """The energy the caps held back in interval ``k``, per participant and cause."""
        return self.inverters.report(k)

    def loss_energy(self, k: int) -> list[LossEnergy]:
        """Each customer's share of the feeder's losses over interval ``k`` [kWh]: its
        ``customer_losses`` rows of the interval x the step (what ``market.settle_losses``
        charges; empty without ``feeder.loss_allocation``)."""
        if self._loss_inc is None:
            return []
        self._finalize_grid()
        self._flush_losses()
        steps = self.timeline.steps_of_interval(k)
        rec = self._rec
        sl = slice(rec.row(steps.start), rec.row(steps.stop - 1) + 1)
        loss_kwh = (rec.cust_loss[sl] * self.timeline.step_h).sum(axis=0)
        return [LossEnergy(participant=p, interval=k, loss_kwh=float(x))
                for p, x in zip(self.participants, loss_kwh, strict=True)]

    def meter_block(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The final solve of every step of interval ``k`` at the customer points, as
        the revenue meters see it: (v_pu [pu], p_kw [kW, + import], q_kvar [kvar]),
        each (steps of the interval, customers); and the feeder's own account of the
        interval, ``delivered_kwh`` [kWh] per customer: the integral of the power
        OpenDSS delivered to its Load in each final solve (the meters check their
        energy against it: federates.common.conservation)."""
        self._finalize_grid()  # the last step's readouts (delivered power) are taken
        steps = self.timeline.steps_of_interval(k)
        rec = self._rec
        sl = slice(rec.row(steps.start), rec.row(steps.stop - 1) + 1)
        delivered_kwh = (rec.p_delivered[sl] * self.timeline.step_h).sum(axis=0)
        return rec.v[sl].copy(), rec.p[sl].copy(), rec.q[sl].copy(), delivered_kwh

    def apply_commands(self, g: int, commands: list[ControlCommand]) -> Measurement:
        """Set inverter q [kvar] and export caps [kW] of the named prosumers and re-solve,
        bypassing the inverters' own control (for tests of the physics of caps).

        Raises ValueError for a step that was not begun last, an unknown participant
        or a negative cap.
        """
        if g != self._step:
            raise ValueError(f"apply for step {g}, but the step in progress is {self._step}")
        updates: list[tuple[int, float, float]] = []  # checked first: all or nothing
        for c in commands:
            i = self._index.get(c.participant)
            if i is None:
                raise ValueError(f"command for unknown participant {c.participant!r}")
            q = float(c.q_kvar)
            if not np.isfinite(q):
                raise ValueError(f"{c.participant}: q_kvar must be finite")
            cap = np.nan if c.p_export_cap_kw is None else float(c.p_export_cap_kw)
            if c.p_export_cap_kw is not None and not (cap >= 0 and np.isfinite(cap)):
                raise ValueError(f"{c.participant}: p_export_cap_kw must be >= 0, got {cap}")
            updates.append((i, q, cap))
        for i, q, cap in updates:
            self._q_kvar[i] = q
            self._cap_kw[i] = cap
        return self._controlled_solve(g)

    @property
    def export_caps_kw(self) -> np.ndarray:
        """Present export cap of each prosumer [kW]; NaN = no cap."""
        return self._cap_kw.copy()

    @property
    def q_kvar(self) -> np.ndarray:
        """Present inverter q set-point of each prosumer [kvar]."""
        return self._q_kvar.copy()

    # ------------------------------------------------------------------ tables
    def drain_tables(self) -> dict[str, pd.DataFrame]:
        """:meth:`tables`, then forgotten (federates.common.tables); call between steps."""
        out = self.tables()
        rec = self._rec
        h = self._last_good  # a later hold may still need the last good step's record
        if h is not None and h >= rec.g0:
            self._held_row = {name: getattr(rec, name)[h - rec.g0].copy() for name in self._HELD
                              if name in rec._arrays}
        self._violation_rows = []
        self._nc_rows = []
        self.books.forget()
        rec.reset(rec.g0 if self._step is None else self._step + 1)
        self.inverters.drain_tables()
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """The rows of the steps run since the last drain (all of them for a run never
        drained).

        ``voltages`` (step x customer rows), ``grid`` (one row per step), ``lines``
        (step x the ``lines_top_n`` most loaded Lines/Transformers, most loaded first:
        ``element`` ``line.<name>`` or ``transformer.<name>``, ``loading_pct`` [%]),
        ``unbalance`` (step x three-phase bus: ``vuf_pct`` [%]), ``violations``,
        ``customer_losses``, ``nonconvergence``, and the inverters' tables
        (:meth:`InverterFleet.drain_tables`).
        """
        self._finalize_grid()
        self._flush_losses()
        self._flush_unserved()
        self._flush_demand_response()
        rec = self._rec
        local = np.flatnonzero(rec.done)
        steps = local + rec.g0
        n = self._n
        t = steps.astype(float) * self.timeline.physics_step_s
        k = len(steps)
        buses = np.asarray([s.bus for s in self.sites], dtype=object)
        phases = np.asarray([s.phase for s in self.sites], dtype=object)
        names = np.asarray(self.participants, dtype=object)
        voltages = pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), n),
            "t_s": np.repeat(t, n),
            "participant": np.tile(names, k),
            "bus": np.tile(buses, k),
            "phase": np.tile(phases, k),
            "v_pu": rec.v[local].reshape(-1),
            "v_before_pu": rec.v_before[local].reshape(-1),
            "p_kw": rec.p[local].reshape(-1),
            "q_kvar": rec.q[local].reshape(-1),
            "curtailed_p_kw": rec.curt[local].reshape(-1),
        })
        grid_cols: dict[str, np.ndarray] = {
            "step": steps.astype(np.int64),
            "t_s": t,
            "source_p_kw": rec.src_p[local],
            "source_q_kvar": rec.src_q[local],
            "losses_kw": rec.loss[local],
            "load_kw": rec.load[local],
            "gross_kw": rec.gross[local],
            "n_solves": rec.solves[local],
        }
        for j, r in enumerate(self.regulators):
            grid_cols[f"tap_{r}"] = rec.taps[local, j]
        for j, c in enumerate(self.capacitors):
            grid_cols[f"cap_{c}"] = rec.caps[local, j]
        grid_cols["background_mult"] = rec.bg[local]
        grid_cols["converged"] = rec.converged[local]
        m = self._top_n
        elem_names = np.asarray(self.elements, dtype=object)
        lines = pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), m),
            "t_s": np.repeat(t, m),
            "element": elem_names[rec.top_elem[local].reshape(-1)] if m else np.zeros(0, dtype=object),
            "loading_pct": rec.top_load[local].reshape(-1),
        })
        nb = len(self.vuf_buses)
        unbalance = pd.DataFrame({
            "step": np.repeat(steps.astype(np.int64), nb),
            "t_s": np.repeat(t, nb),
            "bus": np.tile(np.asarray(self.vuf_buses, dtype=object), k),
            "vuf_pct": rec.vuf[local].reshape(-1),
        })
        return {"voltages": voltages, "grid": pd.DataFrame(grid_cols), "lines": lines,
                "unbalance": unbalance, "violations": self.violations_table(),
                "customer_losses": self._customer_losses_table(steps, t),
                "nonconvergence": self.nonconvergence_table(), **self.inverters.tables(), **self.books.table()}

    def nonconvergence_table(self) -> pd.DataFrame:
        """``nonconvergence``: one row per solve that did not converge: step, t_s [s],
        solve (uncontrolled, controlled), action (curtail, hold, abort; see the module
        docstring) and detail (what OpenDSS said and what was done)."""
        df = pd.DataFrame(self._nc_rows, columns=["step", "t_s", "solve", "action", "detail"])
        return df.astype({"step": np.int64, "t_s": float, "solve": str, "action": str, "detail": str})
