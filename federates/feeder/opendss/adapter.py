"""The OpenDSS adapter's stateful core: :class:`OpenDSSFeeder`.

Owns the model's life in one OpenDSS engine context (``opendssdirect.NewContext``, so
several feeders can live in one process without clearing each other): compiling it,
its load points, attaching the customers, the set-points of every step, the solve,
regulators and capacitors, and reading a solution (customer voltages and powers,
source power, losses, the bulk arrays with their per-solve cache). It keeps the
indexes the other modules of the package build (topology, limits, loss index) and
hands them the arrays of a solution; its methods are the adapter's whole API.

Customers (prosumers) are OpenDSS Loads with ``model=1`` (constant P, Q) whose kW and
kvar are set every step (how they are connected: customers.py). OpenDSS accepts a
negative Load kW: a negative load injects active power, which is how export is
modelled (no Generator needed; checked in tests/feeder/test_adapter.py).

Sign convention (federates/common/units.py): customer ``p_kw > 0`` is consumption;
an OpenDSS Load's kW has the same sign, so no flip here. ``source_pq`` flips the sign
of OpenDSS's ``Circuit.TotalPower`` (negative when the source delivers power) so that
import into the circuit is positive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import opendssdirect

from federates.common.errors import FeederModelError, PowerFlowNotConverged
from federates.common.grid import CustomerSite, LoadPoint
from federates.feeder.losses import LAYERS
from federates.feeder.opendss import inventory
from federates.feeder.opendss.capi import Batch, read_doubles
from federates.feeder.opendss.customers import check_sites, plan_connection
from federates.feeder.opendss.limits import LimitsIndex
from federates.feeder.opendss.loadshapes import ModelLoadShapes
from federates.feeder.opendss.loss_index import BackgroundLoadIndex, PhaseLossIndex
from federates.feeder.opendss.topology import (
    Topology,
    distances_km,
    path_elements,
    paths_from_source,
    phases_of_bus,
    topology_key,
)

if TYPE_CHECKING:
    from federates.common.config import CustomerConnection

__all__ = ["FeederFileError", "OpenDSSFeeder"]

MAX_CONTROL_ITERATIONS = 50  # OpenDSS control iterations per snapshot solve (regulators, capacitors)
MAX_POWER_FLOW_ITERATIONS = 100

# OpenDSS starts a snapshot solve from the previous solution. Buses that appeared
# since (customers attached, elements defined after a Solve in the master file) get
# their starting voltage from freshly allocated, uninitialised memory: mostly harmless
# near-zero values, sometimes NaN, after which the fixed-point iteration never
# converges ("no convergence after 100 iterations", seen in about 1 run in 7 on some
# hosts). The OpenDSS command ``Init`` makes the next solve initialise every node
# from a direct solution first; it is issued wherever buses may have been added.

# OpenDSS Solution.ControlMode values
_CONTROL_OFF = -1
_CONTROL_STATIC = 0


class FeederFileError(FeederModelError):
    """The master file is no OpenDSS model: missing, not a file, empty or garbage (OpenDSS
    built no circuit from it), or it redirects to a file that is not there. Bad input, as
    opposed to a model whose circuit OpenDSS rejects or cannot solve (FeederModelError)."""


#: OpenDSS error numbers of a Redirect / Compile of a file that does not exist
_FILE_NOT_FOUND_ERRORS = (243,)


#: OpenDSS classes of control and metering elements: circuit elements that neither
#: convert nor carry power (everything else in ``Circuit.AllElementNames`` that is not
#: a PD element is a power-conversion (PC) element: Load, Generator, PVSystem, Storage,
#: Vsource, Isource, VCCS, IndMach012, UPFC, GICsource, ...).
_CONTROL_CLASSES = frozenset({
    "regcontrol", "capcontrol", "invcontrol", "expcontrol", "gendispatcher", "storagecontroller",
    "relay", "recloser", "fuse", "swtcontrol", "upfccontrol", "espvlcontrol", "monitor",
    "energymeter", "sensor", "dynamicexp",
})
#: the bulk arrays of a solution (OpenDSSFeeder._bulk): DSS C-API getter, its arguments,
#: whether the doubles are (re, im) pairs
_BULK_READS: dict[str, tuple[str, tuple, bool]] = {
    "powers": ("PDElements_Get_AllPowers", (), True),
    "max_currents": ("PDElements_Get_AllMaxCurrents", (0,), False),  # terminal 1 only
    "volts": ("Circuit_Get_AllBusVolts", (), True),
    "vmag": ("Circuit_Get_AllBusVmag", (), False),
}

#: OpenDSS classes of source elements: ``Circuit.TotalPower`` (:meth:`OpenDSSFeeder.
#: source_pq`) is the sum over all of them (checked with a second Vsource and an
#: Isource in tests/feeder/test_power_balance.py), so they are the balance's other side
_SOURCE_CLASSES = frozenset({"vsource", "isource", "gicsource"})


class OpenDSSFeeder:
    """An OpenDSS feeder model with prosumers attached.

    ``master``: the OpenDSS master file; ``source_pu``: optional Vsource voltage [pu].
    The model is compiled and solved once (snapshot) on construction. Customer vectors
    (powers, voltages) are always in the order of the ``sites`` given to
    :meth:`attach_customers`.
    """

    def __init__(self, master: Path, *, source_pu: float | None = None) -> None:
        self.master = Path(master)
        if not self.master.is_file():
            raise FeederFileError(f"{self.master}: no such OpenDSS master file")
        self._dss = opendssdirect.NewContext()
        try:
            self._dss.Basic.AllowChangeDir(False)
        except Exception:  # pragma: no cover - older engines: changing dir is harmless here
            pass
        try:
            self._dss.Text.Command("Clear")
            self._dss.Text.Command(f"Compile [{self.master.resolve()}]")
            if source_pu is not None:
                self._dss.Vsources.First()
                self._dss.Vsources.PU(float(source_pu))
            self._dss.Text.Command("Set Mode=Snapshot")
            self._dss.Text.Command(f"Set MaxControlIter={MAX_CONTROL_ITERATIONS}")
            self._dss.Text.Command(f"Set MaxIterations={MAX_POWER_FLOW_ITERATIONS}")
            # buses exist only after a solve: a file without Solve / CalcVoltageBases (or
            # with elements defined after them) has none (or not all) yet
            self._dss.Text.Command("MakeBusList")
            self._dss.Text.Command("Init")  # buses defined after a Solve in the master
        except Exception as e:
            number = e.args[0] if e.args and isinstance(e.args[0], int) else None
            try:
                no_circuit = self._dss.Basic.NumCircuits() == 0
            except Exception:  # pragma: no cover - the engine cannot even say
                no_circuit = False
            cls = FeederFileError if no_circuit or number in _FILE_NOT_FOUND_ERRORS else FeederModelError
            hint = " (it defines no circuit: is it an OpenDSS master file?)" \
                if no_circuit and number not in _FILE_NOT_FOUND_ERRORS else ""
            raise cls(f"{self.master}: OpenDSS could not load the model{hint}: {e}") from None
        if self._dss.Circuit.NumBuses() == 0:
            raise FeederFileError(f"{self.master}: OpenDSS built no circuit from this file")
        self._control_mode: int | None = None
        # the model's own Loads (every Load as compiled, disabled ones too): one batch,
        # class order = Loads.Idx 1..n; nominal kW, kvar read once [kW, kvar]
        self._bg_batch = Batch.of_class(self._dss, "Load")
        self._bg_kw0 = self._bg_batch.get_f64("kW")
        self._bg_kvar0 = self._bg_batch.get_f64("kvar")
        self._background: list[tuple[int, float, float]] = [  # (load idx, kW, kvar) nominal
            (k + 1, float(kw), float(kvar)) for k, (kw, kvar) in enumerate(zip(self._bg_kw0, self._bg_kvar0, strict=True))]
        self._background_mult = 1.0
        self._load_points_cache: list[LoadPoint] | None = None
        self._topo: Topology | None = None
        self._pc_batches: list[tuple[str, Batch]] | None = None
        self._regulators: list[str] = list(self._dss.RegControls.AllNames()) if self._dss.RegControls.Count() else []
        self._reg_batch = Batch.of_class(self._dss, "RegControl") if self._regulators else None
        self._cap_batch: Batch | None = None
        self._capacitor_names: list[str] | None = None
        self._held: set[str] = set()
        self.sites: list[CustomerSite] = []
        self._cust_load_idx: np.ndarray = np.zeros(0, dtype=np.int64)
        self._cust_node_idx: np.ndarray = np.zeros(0, dtype=np.int64)
        self._cust_base_v: np.ndarray = np.zeros(0)
        # split-phase customers (240 V across the two 120 V legs of their load's bus):
        # their positions among the customers, the second leg's node index, leg base [V]
        self._split_pos = np.zeros(0, dtype=np.int64)
        self._split_node2 = np.zeros(0, dtype=np.int64)
        self._split_leg_base_v = np.zeros(0)
        self._cust_kind: list[str] = []
        self._cust_point = np.zeros(0, dtype=np.int64)
        self._cust_batch: Batch | None = None
        self._cust_bus: list[str] = []
        self._limits_index: LimitsIndex | None = None
        self._phase_ix: PhaseLossIndex | None = None
        self._solution_id = 0  # bumped by every solve: the key of the bulk-read cache
        self._bulk_cache: dict[str, tuple[int, np.ndarray]] = {}
        # background_load_shape: model (set_background_time): the shapes, read on first use,
        # and the (kW, kvar) last written per original Load
        self._bg_shapes: ModelLoadShapes | None = None
        self._bg_model_written: np.ndarray | None = None
        try:
            self.solve(controls=True)
        except PowerFlowNotConverged as e:
            raise FeederModelError(f"{self.master}: the base case does not solve: {e}") from None

    # ------------------------------------------------------------------ model facts
    def _read_load_points(self) -> list[LoadPoint]:
        """Every enabled Load with the phases it is wired to.

        Any connection: wye or delta, one to three phases, line-to-line single-phase
        (``bus.1.2``, declared delta or wye): its phases are those of its bus nodes
        by OpenDSS's wiring (:func:`~federates.feeder.opendss.topology.phases_of_bus`). A Load on a **split-phase
        secondary** (two phase conductors whose bus nodes both hang, through a
        single-phase transformer, off the same primary phase: the two 120 V legs of a
        center-tapped 120/240 V service, ``bus.1.2`` as in IEEE 8500) has that one
        primary phase and ``split_phase`` True (:meth:`_topology` gives each node its
        primary phase). Disabled Loads (``enabled=no``) are not in the circuit and are
        left out. Bulk reads (one batch of all Loads) and one ``NodeOrder`` per Load.
        """
        dss = self._dss
        b = self._bg_batch
        if not b.n:
            return []
        names = b.names()
        enabled = b.get_i32("enabled")
        kv = b.get_f64("kV")
        n_ph = b.get_i32("phases")
        conn = b.get_str("conn")
        bus1 = b.get_str("bus1")
        topo = self._topology()
        el = dss.CktElement
        points = []
        for k, name in enumerate(names):
            if not enabled[k]:
                continue
            dss.Circuit.SetActiveElement(f"Load.{name}")
            bus_spec = bus1[k]
            bus = bus_spec.split(".")[0].lower()
            phases = phases_of_bus(bus_spec, int(n_ph[k]), el.NumConductors())
            nodes = tuple(int(x) for x in el.NodeOrder() if x in (1, 2, 3))
            split = False
            if len(set(nodes)) >= 2:
                layers = {topo.layer(bus, x) for x in nodes}
                if len(layers) == 1 and layers <= {"a", "b", "c"}:
                    split = True
                    phases = (layers.pop(),)
            points.append(LoadPoint(
                name=name, bus=bus, phases=phases, kv=float(kv[k]), kw=float(self._bg_kw0[k]),
                kvar=float(self._bg_kvar0[k]), conn="delta" if conn[k].lower().startswith("d") else "wye",
                nodes=nodes, split_phase=split,
            ))
        return points

    @property
    def _load_points(self) -> list[LoadPoint]:
        if self._load_points_cache is None:
            try:
                self._load_points_cache = self._read_load_points()
            except FeederModelError:
                raise
            except Exception as e:  # OpenDSS could not give the wiring of this model
                raise FeederModelError(f"{self.master}: OpenDSS could not give the model's wiring "
                                       f"(loads, buses, nodes): {e}") from None
        return self._load_points_cache

    def load_points(self) -> list[LoadPoint]:
        """Every Load of the model as compiled (customers attached later not included)."""
        return list(self._load_points)

    def check_voltage_bases(self) -> None:
        """Raise FeederModelError naming the file and the load buses without a kV base.

        Customers are attached at their load bus's L-N kV base (:meth:`bus_kv_ln`), so
        a model without ``Set VoltageBases`` and ``CalcVoltageBases`` (OpenDSS gives a
        bus a base only there) would fail later, in :meth:`attach_customers`. Every
        bus is checked when the model has no Load. Not part of ``__init__``: ``feeders
        show`` inspects such models (it counts their buses without a kV base).
        """
        dss = self._dss
        no_base = [bus for bus in dict.fromkeys([lp.bus for lp in self._load_points] or dss.Circuit.AllBusNames())
                   if dss.Circuit.SetActiveBus(bus) < 0 or not float(dss.Bus.kVBase()) > 0]
        if no_base:
            shown = ", ".join(no_base[:10]) + (f" and {len(no_base) - 10} more" if len(no_base) > 10 else "")
            raise FeederModelError(
                f"{self.master}: {'the load buses' if self._load_points else 'the buses'} {shown} have no "
                "voltage base (kV); add `Set VoltageBases=[...]` (the model's line-to-line kV levels) and "
                "`CalcVoltageBases` after the circuit's elements"
            )

    def bus_kv_ln(self, bus: str) -> float:
        """Nominal line-to-neutral voltage of ``bus`` [kV] (its OpenDSS kVBase)."""
        if self._dss.Circuit.SetActiveBus(bus) < 0:
            raise ValueError(f"{self.master.name}: no bus {bus!r} in the model")
        kv = float(self._dss.Bus.kVBase())
        if kv <= 0:
            raise ValueError(f"{self.master.name}: bus {bus!r} has no voltage base (set VoltageBases)")
        return kv

    def default_daily_shape(self) -> np.ndarray:
        """OpenDSS's built-in ``default`` load shape: 24 hourly multipliers [-]."""
        self._dss.LoadShape.Name("default")
        return np.asarray(self._dss.LoadShape.PMult(), dtype=float)

    @property
    def regulator_names(self) -> list[str]:
        """Names of the model's RegControls, in model order."""
        return list(self._regulators)

    @property
    def n_customers(self) -> int:
        return len(self.sites)

    # ------------------------------------------------------------------ customers (customers.py)
    def attach_customers(
        self, sites: Sequence[CustomerSite], connection: CustomerConnection
    ) -> None:
        """Create the OpenDSS elements that connect each customer (once per feeder).

        ``connection`` is a :class:`federates.common.config.CustomerConnection`. ``"secondary"``:
        one single-phase service transformer per distinct ``site.group`` (primary: the
        bus node to neutral at the bus's L-N kV [kV]; secondary: ``secondary_kv`` L-N
        [kV]; ``transformer_kva`` [kVA], ``transformer_pct_r`` / ``_pct_x`` [%] on its
        own base), a service drop per customer (``service_length_m`` [m],
        ``service_r_ohm_per_km`` / ``_x_ohm_per_km`` [ohm/km]) to bus ``cust_<participant>``
        and a Load ``cust_<participant>`` there. ``"direct"``: the Load sits on the
        bus node of the site's phase itself. Customer buses get their L-N kV base.

        **Split-phase loads** (:attr:`LoadPoint.split_phase`: the model's Load sits on
        the two 120 V legs of a center-tapped 120/240 V service transformer, as every
        Load of IEEE 8500): the customer *is* that house. Its Load ``cust_<participant>``
        is a single-phase 240 V load across the two legs (``bus.1.2``, ``kV`` = 2 x the
        legs' L-N base: the legs are in anti-phase), as a 240 V inverter and the
        house's 240 V appliances are connected, with either connection kind: the
        model's own service transformer and triplex drop are the customer's
        secondary, so ``secondary`` adds no second one for these customers (it still
        does for customers on the model's other loads). Its voltage
        (:meth:`customer_v_pu`) is the leg-to-leg voltage over 240 V (what a 240 V
        inverter measures for IEEE 1547); :meth:`customer_v_extremes_pu` adds both
        120 V legs (each over its 120 V base) for the limit checks.
        """
        if self.sites:
            raise RuntimeError("customers are already attached to this feeder")
        sites = list(sites)
        check_sites(sites, connection.kind)
        points = {lp.name.lower(): lp for lp in self._load_points}
        plan = plan_connection(sites, points, connection, self.bus_kv_ln)
        try:
            for c in plan.commands:
                self._dss.Text.Command(c)
            self._dss.Text.Command("MakeBusList")
            for bus, kv in plan.new_bases.items():
                self._dss.Text.Command(f"SetkVBase bus={bus} kVLN={kv!r}")
            self._dss.Text.Command("Init")  # the new buses have no starting voltage
        except Exception as e:
            raise FeederModelError(f"{self.master}: could not attach customers: {e}") from None
        self.sites = sites
        self._cust_kind = plan.kinds
        self._cust_point = np.asarray(plan.point_of(), dtype=np.int64)
        self._cust_group_point = np.asarray(plan.group_point_of(), dtype=np.int64)
        self._limits_index = None  # new lines, transformers and buses: index again
        self._phase_ix = None
        self._cust_bus = [s.bus.lower() for s in sites]
        # the customer Loads: the last len(sites) Loads of the class, in site order
        n_loads = int(self._dss.Loads.Count())
        first = n_loads - len(sites) + 1
        self._cust_load_idx = np.arange(first, n_loads + 1, dtype=np.int64)
        self._cust_batch = Batch.of_index(self._dss, "Load", self._cust_load_idx.tolist())
        if self._cust_batch.names() != [f"cust_{s.participant}".lower() for s in sites]:
            raise FeederModelError(f"{self.master}: the customer Loads are not the last Loads of the model")
        all_nodes = {n.lower(): i for i, n in enumerate(self._dss.Circuit.AllNodeNames())}
        try:
            self._cust_node_idx = np.asarray([all_nodes[n.lower()] for n in plan.node_names], dtype=np.int64)
            pos = sorted(plan.node2_names)
            self._split_pos = np.asarray(pos, dtype=np.int64)
            self._split_node2 = np.asarray([all_nodes[plan.node2_names[k].lower()] for k in pos], dtype=np.int64)
        except KeyError as e:
            raise FeederModelError(f"{self.master}: customer node {e} not found after attaching") from None
        self._split_leg_base_v = np.asarray([plan.leg_kv[k] for k in sorted(plan.leg_kv)], dtype=float) * 1000.0
        self._cust_base_v = np.asarray(plan.base_kv, dtype=float) * 1000.0
        self._cust_p = np.zeros(len(sites))
        self._cust_q = np.zeros(len(sites))
        self.solve(controls=True)

    @property
    def customer_connections(self) -> list[str]:
        """How each customer is connected, in customer order: ``secondary`` (behind a
        service transformer and drop of tecosim's), ``direct`` (line-to-neutral on its
        bus node) or ``split_phase`` (240 V across the legs of its load's split-phase
        service; see :meth:`attach_customers`)."""
        return list(self._cust_kind)

    @property
    def customer_point_of(self) -> np.ndarray:
        """Each customer's connection point (``customers.ConnectionPlan.point_of``), in customer
        order: ints 0 .. u-1 numbered by first appearance, so ``arange(n)`` when every
        customer has a point of its own."""
        return self._cust_point.copy()

    @property
    def customer_group_point_of(self) -> np.ndarray:
        """:attr:`customer_point_of` with the ``secondary`` customers of one service
        transformer on one point (``customers.ConnectionPlan.group_point_of``)."""
        return self._cust_group_point.copy()

    def customer_drop_element(self) -> list[str]:
        """Each customer's own service drop as named in :meth:`element_p_kw`
        (``line.drop_<participant>``), "" for a customer without one (not ``secondary``)."""
        return [f"line.drop_{s.participant}".lower() if kind == "secondary" else ""
                for s, kind in zip(self.sites, self._cust_kind, strict=True)]

    def customer_v_base_v(self) -> np.ndarray:
        """Nominal voltage of each customer's :meth:`customer_v_pu` [V]: its node's L-N
        base, or 240 V (2 x the legs' base) across a split-phase service."""
        return self._cust_base_v.copy()

    # ------------------------------------------------------------------ set-points
    def set_background_scale(self, mult: float) -> None:
        """Set every original (non-customer) load to ``mult`` x its nominal kW, kvar [-].

        Two batch writes (kW, then kvar of every original Load); the classic per-Load
        path is :meth:`_set_background_scale_per_load` (tests/feeder/test_bulk.py
        checks the two give the same solution)."""
        self._forget_loads_pq()
        mult = float(mult)
        if mult == self._background_mult:
            return
        self._bg_batch.set_f64("kW", self._bg_kw0 * mult)
        self._bg_batch.set_f64("kvar", self._bg_kvar0 * mult)
        self._background_mult = mult

    def _set_background_scale_per_load(self, mult: float) -> None:
        """:meth:`set_background_scale` through the classic ``Loads`` API, one Load at a time."""
        self._forget_loads_pq()
        mult = float(mult)
        loads = self._dss.Loads
        for idx, kw, kvar in self._background:
            loads.Idx(idx)
            loads.kW(kw * mult)
            loads.kvar(kvar * mult)
        self._background_mult = mult

    @property
    def background_scale(self) -> float:
        return self._background_mult

    def set_background_time(self, hour_of_day: float, scale: float, *,
                            hour_of_year: float | None = None) -> float:
        """Set every original (non-customer) Load from its own OpenDSS loadshape, x ``scale``.

        Each Load follows its ``daily`` LoadShape at ``hour_of_day`` [h: local clock
        hours since midnight of the study's first day; may exceed 24, each shape wraps
        at its own period], or, with no daily, its ``yearly`` one at ``hour_of_year``
        [h since 1 January 00:00 local; ``hour_of_day`` when not given]; a Load with
        neither keeps its nominal kW, kvar (x ``scale``). Between the shape's points
        the multiplier is linear in time (placement:
        :func:`~federates.feeder.opendss.loadshapes.read_loadshape`; at a point's own
        hour it is OpenDSS's daily/yearly-mode value). kW = nominal kW x
        P(t) x scale, kvar = nominal kvar x Q(t) x scale; a ``UseActual`` shape gives
        kW = P(t) x scale directly and kvar = Q(t) x scale (without QMult: kW at the
        Load's nominal power factor). Shapes are read at the first call; later calls
        write only the Loads whose power changed. Returns the original Loads' total
        kW as set over their total nominal kW [-] (NaN when that is 0): the single
        multiplier that would give the same total.
        """
        self._forget_loads_pq()
        if self._bg_shapes is None:  # read at the first call
            self._bg_shapes = ModelLoadShapes.read(self._dss, self._background, self.master.name)
        new, kw0 = self._bg_shapes.powers_at(hour_of_day, scale, hour_of_year)
        n = len(new)
        old = self._bg_model_written
        # set_background_scale writes these loads too (and sets a finite multiplier):
        # the cache is only valid when it has not run since the last call here
        if old is None or not math.isnan(self._background_mult):
            changed = list(range(n))
        else:
            changed = np.flatnonzero(np.any(new != old, axis=1)).tolist()
        if changed:  # two batch writes; NaN leaves a Load as it is
            ix = np.asarray(changed, dtype=np.int64)
            kw_set = np.full(n, np.nan)
            kvar_set = np.full(n, np.nan)
            kw_set[ix] = new[ix, 0]
            kvar_set[ix] = new[ix, 1]
            self._bg_batch.set_f64("kW", kw_set)
            self._bg_batch.set_f64("kvar", kvar_set)
        self._bg_model_written = new
        self._background_mult = math.nan  # no single multiplier any more
        total = float(kw0.sum())
        return float(new[:, 0].sum() / total) if total != 0 else math.nan

    def set_customer_powers(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> None:
        """Set each customer Load's power [kW, kvar] (p_kw > 0 consumption, < 0 export).

        Two batch writes (kW, then kvar) whatever the number of customers; a customer
        whose set-point did not change is skipped (NaN in the batch array). The
        classic per-Load path is :meth:`_set_customer_powers_per_load`."""
        self._forget_loads_pq()
        p, q = self._check_customer_powers(p_kw, q_kvar)
        changed = p != self._cust_p
        changed |= q != self._cust_q
        k = np.count_nonzero(changed)
        if self._cust_batch is not None and k:
            if k == changed.size:  # every customer: the arrays as they are, no NaN to skip
                self._cust_batch.set_f64("kW", p)
                self._cust_batch.set_f64("kvar", q)
            else:
                self._cust_batch.set_f64("kW", np.where(changed, p, np.nan))
                self._cust_batch.set_f64("kvar", np.where(changed, q, np.nan))
        self._cust_p = p.copy()
        self._cust_q = q.copy()

    def solution_tolerance(self) -> float:
        """OpenDSS's power-flow convergence tolerance (``Solution.Convergence``) [pu]."""
        return float(self._dss.Solution.Convergence())

    def _check_customer_powers(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(p_kw, dtype=float)
        q = np.asarray(q_kvar, dtype=float)
        n = len(self.sites)
        if p.shape != (n,) or q.shape != (n,):
            raise ValueError(f"expected {n} customer powers, got p {p.shape} and q {q.shape}")
        if not math.isfinite(p @ p + q @ q):  # NaN or inf anywhere makes the sum non-finite
            if not (np.isfinite(p).all() and np.isfinite(q).all()):
                raise ValueError("customer powers must be finite")
        return p, q

    def _set_customer_powers_per_load(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> None:
        """:meth:`set_customer_powers` through the classic ``Loads`` API, one Load at a time."""
        self._forget_loads_pq()
        p, q = self._check_customer_powers(p_kw, q_kvar)
        changed = np.flatnonzero((p != self._cust_p) | (q != self._cust_q))
        loads = self._dss.Loads
        idx = self._cust_load_idx[changed].tolist()
        for i, pk, qk in zip(idx, p[changed].tolist(), q[changed].tolist(), strict=True):
            loads.Idx(i)
            loads.kW(pk)
            loads.kvar(qk)
        self._cust_p = p.copy()
        self._cust_q = q.copy()

    # ------------------------------------------------------------------ solving
    def solve(self, *, controls: bool = True, t_s: float = math.nan) -> None:
        """One snapshot power flow.

        ``controls=False``: ControlMode OFF, regulator taps and capacitor states stay
        where they are. ``controls=True``: ControlMode STATIC, regulators and
        capacitors act (control iterations) unless held with :meth:`hold_taps`.
        ``t_s`` [s] only labels a :class:`PowerFlowNotConverged`.
        """
        mode = _CONTROL_STATIC if controls else _CONTROL_OFF
        sol = self._dss.Solution
        self._solution_id += 1
        if mode != self._control_mode:
            sol.ControlMode(mode)
            self._control_mode = mode
        try:
            sol.Solve()
        except Exception as e:
            raise PowerFlowNotConverged(t_s, f"OpenDSS: {e}") from None
        if not sol.Converged():
            raise PowerFlowNotConverged(t_s, f"no convergence after {sol.Iterations()} iterations")

    # ------------------------------------------------------------------ regulators
    def regulator_taps(self) -> dict[str, int]:
        """Present tap position [steps from neutral] of every RegControl (one batch read
        of the RegControls' ``TapNum``)."""
        if self._reg_batch is None:
            return {}
        taps = self._reg_batch.get_i32("TapNum").tolist()
        return dict(zip(self._regulators, (int(t) for t in taps), strict=True))

    def regulator_tap_steps(self) -> np.ndarray:
        """:meth:`regulator_taps` as an array in :attr:`regulator_names` order [steps from
        neutral] (what the feeder role records every step; no dict)."""
        if self._reg_batch is None:
            return np.zeros(0, dtype=np.int64)
        return self._reg_batch.get_i32("TapNum")

    def _regulator_taps_per_regulator(self) -> dict[str, int]:
        """:meth:`regulator_taps` through the classic ``RegControls`` API, one at a time."""
        out = {}
        rc = self._dss.RegControls
        for name in self._regulators:
            rc.Name(name)
            out[name] = int(rc.TapNumber())
        return out

    @property
    def capacitor_names(self) -> list[str]:
        """Names of the model's Capacitors, in model order (read once: customers are
        Loads, so attaching them adds none)."""
        if self._capacitor_names is None:
            self._capacitor_names = list(self._dss.Capacitors.AllNames()) if self._dss.Capacitors.Count() else []
        return list(self._capacitor_names)

    def capacitor_steps(self) -> dict[str, int]:
        """Steps in service of every Capacitor [-] (0 = switched off; a one-step bank: 0/1),
        as its CapControl (if any) left it. One batch read of the Capacitors' ``states``."""
        names = self.capacitor_names
        if not names:
            return {}
        if self._cap_batch is None:
            self._cap_batch = Batch.of_class(self._dss, "Capacitor")
        states = self._cap_batch.get_str("states")
        return {n: sum(int(x) for x in re.findall(r"-?\d+", st)) for n, st in zip(names, states, strict=True)}

    def capacitor_step_counts(self) -> np.ndarray:
        """:meth:`capacitor_steps` as an array in :attr:`capacitor_names` order [-] (what the
        feeder role records every step). Read once when the model has no CapControl:
        then nothing switches a bank (tecosim itself never writes a Capacitor's
        states), and every step's states are the first ones."""
        if self._cap_fixed is not None:
            return self._cap_fixed.copy()
        steps = self.capacitor_steps()
        counts = np.asarray([steps[n] for n in self.capacitor_names], dtype=np.int64)
        if not self._dss.CapControls.Count():
            self._cap_fixed = counts.copy()
        return counts

    _cap_fixed: np.ndarray | None = None  # capacitor_step_counts of a model without CapControl

    def _capacitor_steps_per_capacitor(self) -> dict[str, int]:
        """:meth:`capacitor_steps` through the classic ``Capacitors`` API, one at a time."""
        out = {}
        caps = self._dss.Capacitors
        if not caps.Count():
            return out
        caps.First()
        while True:
            out[caps.Name()] = int(sum(caps.States()))
            if not caps.Next():
                break
        return out

    def set_regulator_taps(self, taps: dict[str, int]) -> None:
        """Move the named regulators to the given taps [steps from neutral]."""
        rc = self._dss.RegControls
        for name, tap in taps.items():
            if name.lower() not in self._regulators:
                raise ValueError(f"no regulator {name!r}; the model has {self._regulators}")
            rc.Name(name)
            rc.TapNumber(int(tap))

    def hold_taps(self, hold: bool = True, names: Sequence[str] | None = None) -> None:
        """Hold regulators at their present taps (``hold=False`` releases them).

        A held regulator's RegControl is disabled, so controlled solves leave its tap
        alone; capacitors and other controls still act.
        """
        for name in names if names is not None else self._regulators:
            name = name.lower()
            if name not in self._regulators:
                raise ValueError(f"no regulator {name!r}; the model has {self._regulators}")
            self._dss.Text.Command(f"RegControl.{name}.enabled={'no' if hold else 'yes'}")
            if hold:
                self._held.add(name)
            else:
                self._held.discard(name)

    # ------------------------------------------------------------------ results
    def customer_v_pu(self) -> np.ndarray:
        """Voltage magnitude at each customer's point [pu of its nominal voltage]: its
        node to neutral over the node's L-N base; for a split-phase customer
        (:meth:`attach_customers`) the leg-to-leg voltage |V1 - V2| over 240 V (2 x the
        legs' base), what its 240 V inverter measures."""
        vmag = self._bulk("vmag")
        v = vmag[self._cust_node_idx] / self._cust_base_v
        if self._split_pos.size:
            volts = self._bulk("volts")
            pos = self._split_pos
            v[pos] = np.abs(volts[self._cust_node_idx[pos]] - volts[self._split_node2]) / self._cust_base_v[pos]
        return v

    @property
    def has_split_phase_customers(self) -> bool:
        """Whether any customer sits across the legs of a split-phase service."""
        return bool(self._split_pos.size)

    def customer_v_extremes_pu(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) voltage of each customer's service [pu], for the voltage band.

        A customer on one node: its :meth:`customer_v_pu` twice. A split-phase
        customer: the extremes over its 240 V (:meth:`customer_v_pu`) and each 120 V
        leg to neutral over the legs' base (ANSI C84.1 states the band for both the
        120 V and the 240 V of a 120/240 V service)."""
        v = self.customer_v_pu()
        lo, hi = v.copy(), v.copy()
        if self._split_pos.size:
            vmag = self._bulk("vmag")
            pos = self._split_pos
            leg1 = vmag[self._cust_node_idx[pos]] / self._split_leg_base_v
            leg2 = vmag[self._split_node2] / self._split_leg_base_v
            lo[pos] = np.minimum(np.minimum(leg1, leg2), v[pos])
            hi[pos] = np.maximum(np.maximum(leg1, leg2), v[pos])
        return lo, hi

    def customer_pq(self) -> tuple[np.ndarray, np.ndarray]:
        """Power actually drawn by each customer Load [kW], [kvar] (+ consumption) in the
        last solution, read from the solved circuit, not from the set-points; one batch
        read. Within its ``vminpu`` .. ``vmaxpu`` (``CUSTOMER_VMIN_PU`` ..
        ``CUSTOMER_VMAX_PU`` of customers.py) a constant-PQ Load draws its set power to
        the solution tolerance (:meth:`solution_tolerance` of its apparent power);
        outside it OpenDSS makes it constant Z, and it draws more or less (what the live
        energy check, federates.common.conservation, catches)."""
        if self._cust_batch is None or not self.sites:
            return np.zeros(0), np.zeros(0)
        sol, loads = self._loads_pq  # every Load's, read by load_and_gross_kw from this solution
        s = loads[-len(self.sites):] if sol == self._solution_id else self._cust_batch.total_powers()
        return s[:, 0].copy(), s[:, 1].copy()

    def source_pq(self) -> tuple[float, float]:
        """Total power into the circuit from the source [kW], [kvar] (+ import)."""
        s = self._dss.Circuit.TotalPower()
        return -float(s[0]), -float(s[1])  # OpenDSS: negative = delivered by the source

    def losses_kw(self) -> float:
        """Total active losses of the circuit [kW]."""
        return float(self._dss.Circuit.Losses()[0]) / 1000.0

    def _pc_element_batches(self) -> list[tuple[str, Batch]]:
        """One batch per class of power-conversion (PC) element in the circuit, the
        sources (:data:`_SOURCE_CLASSES`, which ``Circuit.TotalPower`` sums) left out.

        PC classes are the classes of ``Circuit.AllElementNames`` that are neither PD
        elements nor control / metering elements (:data:`_CONTROL_CLASSES`), so a class
        OpenDSS adds later is counted without a change here. Rebuilt when the element
        count changes (customers attached)."""
        dss = self._dss
        n_el = int(dss.Circuit.NumCktElements())
        cached = self._pc_batches
        if cached is not None and self._pc_key == n_el:
            return cached
        pd = {x.partition(".")[0].lower() for x in dss.PDElements.AllNames()}
        classes: list[str] = []
        for full in dss.Circuit.AllElementNames():
            cls = full.partition(".")[0]
            if cls.lower() not in pd and cls.lower() not in _CONTROL_CLASSES and cls not in classes:
                classes.append(cls)
        out = []
        for cls in classes:
            if cls.lower() in _SOURCE_CLASSES:  # the other side of the balance (source_pq)
                continue
            b = Batch.of_class(dss, cls)
            if b.n:
                out.append((cls.lower(), b))
        self._pc_batches = out
        self._pc_key = n_el
        return out

    _pc_key = -1

    def pc_powers_kw(self) -> dict[str, float]:
        """Active power into the circuit's power-conversion elements, per class [kW]
        (+ consumption: a Generator, PVSystem or discharging Storage is negative),
        summed over each class's elements; the sources excluded. One batch read
        per class present (``Alt_CEBatch_Get_TotalPowers``)."""
        # summed in element order (a cumulative sum, not numpy's pairwise sum), so the
        # total is the one the classic element-by-element loop gives, bit for bit
        return {cls: float(np.cumsum(b.total_powers()[:, 0])[-1]) for cls, b in self._pc_element_batches()}

    def load_and_gross_kw(self) -> tuple[float, float]:
        """:meth:`load_kw` and the gross active power of the same elements, the sum of
        every one's ``|P|`` [kW]: what the solution's power mismatch scales with (a
        feeder whose exports nearly cancel its loads has a net load near zero but still
        carries the gross flows). One batch read per PC class."""
        net, gross = 0.0, 0.0
        for cls, b in self._pc_element_batches():
            s = b.total_powers()
            if cls == "load":  # the customers' Loads are its last ones: customer_pq reads them here
                self._loads_pq = (self._solution_id, s)
            p = s[:, 0]
            net += float(np.cumsum(p)[-1])  # as pc_powers_kw: in element order
            gross += float(np.abs(p).sum())
        return net, gross

    #: (solution id, every Load's (kW, kvar)) as load_and_gross_kw read them: customer_pq
    #: takes the customers' rows instead of a second read of the same solution
    _loads_pq: tuple[int, np.ndarray] = (-1, np.zeros((0, 2)))

    def _forget_loads_pq(self) -> None:
        """A set-point changed: the Loads' powers read from the last solve no longer hold."""
        if self._loads_pq[0] != -1:
            self._loads_pq = (-1, self._loads_pq[1])

    def load_kw(self) -> float:
        """Net active power drawn by every power-conversion element [kW] (+ consumption).

        Loads (customers included) minus what Generators, PVSystems, Storage (and any
        other PC element of the model but the sources) deliver: with it,
        ``source_pq()[0] = load_kw() + losses_kw()`` holds to the solution tolerance
        (conservation of active power). On a model with Loads only this is the Loads'
        total, as before. One batch read per PC class (:meth:`pc_powers_kw`)."""
        total = 0.0
        for p in self.pc_powers_kw().values():
            total += p
        return total

    def _load_kw_per_element(self) -> float:
        """:meth:`load_kw` the classic way: ``CktElement.TotalPowers`` of each PC element in turn."""
        dss = self._dss
        total = 0.0
        for cls, b in self._pc_element_batches():
            for name in b.names():
                dss.Circuit.SetActiveElement(f"{cls}.{name}")
                total += dss.CktElement.TotalPowers()[0]
        return total

    def element_currents_a(self, element: str) -> np.ndarray:
        """Current magnitude of each conductor of terminal 1 of ``element`` [A] (e.g. ``Line.650632``)."""
        if self._dss.Circuit.SetActiveElement(element) < 0:
            raise ValueError(f"{self.master.name}: no element {element!r}")
        el = self._dss.CktElement
        n = el.NumConductors()
        return np.asarray(el.CurrentsMagAng(), dtype=float)[0 : 2 * n : 2]

    def node_v_pu(self) -> dict[str, float]:
        """Voltage magnitude of every node ``bus.node`` [pu of the bus's L-N base]."""
        names = self._dss.Circuit.AllNodeNames()
        return dict(zip(names, (float(v) for v in self._dss.Circuit.AllBusMagPu()), strict=True))

    # ------------------------------------------------------------------ bulk reads
    @property
    def solution_id(self) -> int:
        """A number that changes with every solve: values read from one solution can be
        reused until it changes."""
        return self._solution_id

    def _bulk(self, what: str) -> np.ndarray:
        """One bulk array of the last solution, read from OpenDSS once per solve: the
        limit checks, SCADA, flows and loss allocation of a step all read the same
        solution (``powers``: PDElements.AllPowers as complex [kW + j kvar];
        ``max_currents``: PDElements.AllMaxCurrents [A]; ``volts``: Circuit.AllBusVolts
        as complex [V]; ``vmag``: Circuit.AllBusVmag [V]). Read-only: callers index,
        never modify."""
        hit = self._bulk_cache.get(what)
        if hit is not None and hit[0] == self._solution_id:
            return hit[1]
        try:
            fn, args, is_complex = _BULK_READS[what]
        except KeyError:
            raise ValueError(f"unknown bulk read {what!r}") from None
        a = read_doubles(self._dss, fn, *args)
        if is_complex:
            a = a.view(complex)  # (re, im) pairs, as as_complex
        a.flags.writeable = False
        self._bulk_cache[what] = (self._solution_id, a)
        return a

    # ------------------------------------------------------------------ limits (limits.py)
    def _limits(self) -> LimitsIndex:
        """Element/bus positions in OpenDSS's bulk arrays, built once per model."""
        ix = self._limits_index
        if ix is None:
            ix = self._limits_index = LimitsIndex.build(self._dss)
        return ix

    def line_loading_pct(self) -> tuple[list[str], np.ndarray]:
        """Loading of every Line [%]: its largest phase current / its NormAmps x 100.

        The current is OpenDSS's per-element maximum over the conductors of terminal 1
        (``PDElements.AllMaxCurrents``, one bulk call for all elements). Names
        (lower case, no ``Line.`` prefix) are fixed when first asked for (and again
        after :meth:`attach_customers`). A Line with NormAmps = 0 gives NaN.
        """
        return self._limits().line_loading_pct(self._bulk("max_currents"))

    def transformer_loading_pct(self) -> tuple[list[str], np.ndarray]:
        """Loading of every Transformer [%]: |S| into winding 1 / its rated kVA x 100.

        |S| is the magnitude of the complex power summed over all conductors of
        terminal 1 (``PDElements.AllPowers``, one bulk call), rated kVA the kVA of
        winding 1. Names as in :meth:`line_loading_pct`.
        """
        return self._limits().transformer_loading_pct(self._bulk("powers"))

    def vuf_pct(self) -> tuple[list[str], np.ndarray]:
        """Voltage unbalance factor of every bus with nodes 1, 2 and 3 [%].

        VUF = |V2| / |V1| x 100, negative over positive sequence of the three phase-
        to-neutral phasors (IEC 61000-4-30 / IEEE 1159 definition; see
        :func:`~federates.feeder.opendss.limits.fortescue_vuf_pct`). One bulk read of
        ``Circuit.AllBusVolts``. Bus names fixed when first asked for.
        """
        ix = self._limits()
        return list(ix.bus3_names), self.vuf_values_pct()

    def vuf_values_pct(self) -> np.ndarray:
        """:meth:`vuf_pct` without the names [%] (the feeder role reads it twice a step;
        bit for bit the same values, :meth:`LimitsIndex.vuf_values_pct`)."""
        return self._limits().vuf_values_pct(self._bulk("volts"), self.master)

    def element_p_kw(self) -> tuple[list[str], np.ndarray]:
        """Active power into terminal 1 of every Line, then every Transformer [kW].

        Signed: positive in the direction from terminal 1 (``bus1``) to terminal 2,
        which on a radial model written source-outward means away from the source
        (negative = reverse flow, e.g. from exporting customers). Names
        ``line.<name>`` / ``transformer.<name>``, the order of :meth:`line_loading_pct`
        followed by :meth:`transformer_loading_pct`. One bulk call.
        """
        ix = self._limits()
        return list(ix.element_names), self.element_p_values_kw()

    def element_p_values_kw(self) -> np.ndarray:
        """:meth:`element_p_kw` without the names [kW] (bit for bit the same values,
        :meth:`LimitsIndex.flows_kw`)."""
        return self._limits().flows_kw(self._bulk("powers"))

    def element_loading_pct(self) -> tuple[list[str], np.ndarray]:
        """:meth:`line_loading_pct` then :meth:`transformer_loading_pct` as one vector [%],
        named like :meth:`element_p_kw`."""
        ix = self._limits()
        return list(ix.element_names), self.element_loading_values_pct()

    def limit_snapshot(self, loading: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """What the last solve's element loadings and bus VUF are computed from, for
        :meth:`limit_values_of`: ``PDElements.AllMaxCurrents`` [A] and
        ``PDElements.AllPowers`` [kW + j kvar] (None, None when not ``loading``) and
        ``Circuit.AllBusVolts`` [V] (the solve's own bulk reads, read-only). The feeder
        role keeps the uncontrolled solves' snapshots and computes their values a
        batch of steps at once."""
        if not loading:
            return None, None, self._bulk("volts")
        return self._bulk("max_currents"), self._bulk("powers"), self._bulk("volts")

    def limit_values_of(self, max_currents: np.ndarray | None, powers: np.ndarray | None,
                        volts: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """:meth:`element_loading_values_pct` (None without ``max_currents``) and
        :meth:`vuf_values_pct` of ``T`` solutions at once, (T, elements) [%] and
        (T, buses) [%], from their stacked :meth:`limit_snapshot` arrays; each row bit
        for bit as for that solution alone (tests/feeder/test_fast_paths.py)."""
        ix = self._limits()
        loading = None if max_currents is None else ix.loading_pct_many(max_currents, powers)
        return loading, ix.vuf_values_pct_many(volts, self.master)

    @property
    def limit_snapshot_values(self) -> int:
        """Floats in one :meth:`limit_snapshot` (the role sizes its batches by it)."""
        return self._limits().snapshot_values

    def element_loading_values_pct(self) -> np.ndarray:
        """:meth:`element_loading_pct` without the names [%] (bit for bit the same values
        as the two per-kind methods concatenated, :meth:`LimitsIndex.loading_pct`)."""
        return self._limits().loading_pct(self._bulk("max_currents"), self._bulk("powers"))

    # ------------------------------------------------------------------ topology (topology.py)
    def _topology(self) -> Topology:
        """The model's PD elements, their terminals' buses and nodes, the bus graph and
        every bus node's phase layer (:class:`~federates.feeder.opendss.topology.Topology`),
        read again when the PD element or node list changed."""
        topo = self._topo
        if topo is None or topo.key != topology_key(self._dss):
            topo = self._topo = Topology.read(self._dss)
        return topo

    def customer_buses(self) -> list[str]:
        """Primary bus of each customer, in customer order."""
        return list(self._cust_bus)

    def _customer_node_buses(self) -> list[str]:
        """The bus of each customer's node (``cust_<id>`` behind a service drop, else its
        primary bus), in customer order."""
        names = self._dss.Circuit.AllNodeNames()
        return [names[k].split(".")[0].lower() for k in self._cust_node_idx.tolist()]

    def customer_distances_km(self) -> np.ndarray:
        """Electrical distance between every pair of customers [km], in customer order.

        The path length along the feeder between the customers' buses (``cust_<id>``
        with a secondary connection, so service drops count; the primary bus with a
        direct one), on the bus graph of :meth:`_topology` (one node per bus, an edge
        per enabled series PD element: Lines with their length in km, see
        :data:`~federates.feeder.opendss.topology.KM_PER_UNIT`, switches and
        Transformers 0 km; :func:`~federates.feeder.opendss.topology.distances_km`). On a radial feeder the
        distance is ``depth(u) + depth(v) - 2 depth(lca(u, v))`` from the source bus,
        each pair set once at its lowest common ancestor: O(n^2 + buses). A meshed
        feeder falls back to Dijkstra from each distinct customer bus (shortest
        path). Symmetric, zero on the diagonal. Raises FeederModelError when a
        customer bus is not connected to the source.
        """
        if not self.sites:
            return np.zeros((0, 0))
        if self._cust_node_idx.size:
            cust = self._customer_node_buses()
        else:  # pragma: no cover - customers are attached whenever sites are set
            cust = list(self._cust_bus)
        return distances_km(self._topology(), cust, self.master.name)

    def customer_paths(self) -> list[list[str]]:
        """PD elements on each customer's path from the source bus, in customer order.

        Element names as in :meth:`element_losses_kw`, ordered from the source towards
        the customer bus (``cust_<id>`` with a secondary connection, so the service
        transformer and drop are on the path; the primary bus with a direct one).
        Parallel elements between the same two buses are all listed. On a radial
        feeder the path is the unique tree path; on a meshed one, the shortest path by
        length (km). Raises FeederModelError when a customer bus is not connected to
        the source.
        """
        if not self.sites:
            return []
        topo = self._topology()
        cust = self._customer_node_buses()
        bus_paths = paths_from_source(topo, self.master.name)
        lost = sorted({c for c in cust if c not in bus_paths})
        if lost:
            raise FeederModelError(f"{self.master.name}: customer buses {lost} are not connected to {topo.root}")
        return [path_elements(topo, bus_paths[c]) for c in cust]

    # ------------------------------------------------------------------ losses
    def element_losses_kw(self) -> dict[str, float]:
        """Active losses of every enabled PD element of the last solution [kW].

        Keys are lower-case OpenDSS full names (``line.650632``, ``transformer.sub``,
        ``capacitor.cap675``, ...), values ``CktElement.Losses()`` (I^2 R of series
        branches plus the element's own shunt branches, e.g. line charging, transformer
        no-load losses). The sum equals :meth:`losses_kw` (OpenDSS's ``Circuit.Losses``
        is that same sum) up to floating-point rounding. Not included, as in
        ``Circuit.Losses``: the Vsource's internal impedance and anything inside
        Loads (PC elements); customer service drops and transformers are PD elements
        and are included.
        """
        dss = self._dss
        pd_el = dss.PDElements
        out: dict[str, float] = {}
        i = pd_el.First()
        while i > 0:
            if dss.CktElement.Enabled():
                out[dss.CktElement.Name().lower()] = float(dss.CktElement.Losses()[0]) / 1000.0
            i = pd_el.Next()
        return out

    # ------------------------------------------------------------------ per-phase losses (loss_index.py)
    # Element losses split over the graph layers a, b, c, n for the per-phase GBLA of
    # federates/feeder/losses.py. The index is built once per PD element list (again
    # after attach_customers); each call then makes two bulk reads and ~20 numpy ops.
    def _phase_loss_index(self) -> PhaseLossIndex:
        """The per-layer loss index of the present PD element list (built when it changed;
        layers from :meth:`_topology`)."""
        ix = self._phase_ix
        if ix is not None and ix.checked_at == self._solution_id:
            return ix  # checked since the last solve: a solve is what follows a model change
        if ix is None or ix.key != topology_key(self._dss):
            ix = self._phase_ix = PhaseLossIndex.build(self._dss, self._topology(), self.master)
        ix.checked_at = self._solution_id
        return ix

    def phase_loss_elements(self) -> list[str]:
        """PD element names (lower-case full names), the rows of :meth:`phase_losses_kw`."""
        return list(self._phase_loss_index().names)

    def phase_losses_kw(self) -> np.ndarray:
        """Active loss of every PD element in each graph layer a, b, c, n [kW] (elements x 4).

        Per element kind (``federates.feeder.losses.LAYERS`` columns):

        * Lines: the series loss I_s^H R I_s split by conductor, phase x getting
          Re(conj(I_s,x) (R I_s)_x), with I_s = Y_s (V_1 - V_2) the series current
          (Y_s from the Line's primitive Y matrix) and R = Re(Y_s^-1) its resistance
          matrix, mutual (earth return) resistances included. This is the per-conductor
          Re(V_x,1 I_x,1* + V_x,2 I_x,2*) (OpenDSS's ``CktElement.PhaseLosses``) without
          its mutual-reactance terms: those only move power between phases (they sum
          to zero over the conductors) and make a lightly loaded phase's figure
          negative (-3.2 kW of a 60 kW three-phase line in the published IEEE 13 case);
        * wye-wye Transformers, shunt and other PD elements: per conductor,
          Re(V I*) summed over the terminals (the phases of a wye bank are separate
          units, so this is each phase's own loss);
        * single-phase Transformers (service transformers, regulators): all of it to
          their primary phase;
        * Transformers with a delta winding: split over their phases in proportion to
          the conductor currents in per unit squared, |S_x|^2 kVbase^2 / |V_x|^2,
          summed over the terminals (a delta couples the phases, so per-conductor
          power is no loss).

        Conductors on node 0 or on a node with no phase (neutrals), and whatever of an
        element's total ``Re(sum V I*)`` the split does not reach (line shunt
        conductance; float rounding), are the ``n`` layer, so each row sums to the
        element's loss and the whole array to :meth:`losses_kw` (OpenDSS's
        ``Circuit.Losses``) up to rounding. Two bulk reads: ``PDElements.AllPowers``
        and ``Circuit.AllBusVolts``.
        """
        return self.phase_losses_kw_of(self._bulk("powers")[None], self._bulk("volts")[None])[0]

    @property
    def phase_loss_values(self) -> int:
        """Number of bulk values a step's per-phase losses are computed from (PD element
        conductors; the feeder role sizes its loss batches by it)."""
        return int(self._phase_loss_index().n_flat)

    def loss_snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the last solve's per-phase losses and background Load weights are
        computed from, for :meth:`phase_losses_kw_of` and :meth:`background_layer_kw_of`:
        ``PDElements.AllPowers`` [kW + j kvar], ``Circuit.AllBusVolts`` [V] (both complex,
        read-only, the solve's own bulk reads) and the background Loads' (kW, kvar) per
        conductor (empty without background Loads). The feeder role keeps a few steps'
        snapshots and computes their losses at once (per-step numpy calls cost more
        than the arithmetic on a small feeder)."""
        bx = self._background_load_index()
        bg = bx.read_powers(self._dss, self.master) if bx.names else np.zeros(0)  # _background_load_powers
        return self._bulk("powers"), self._bulk("volts"), bg

    def phase_losses_kw_of(self, powers: np.ndarray, volts: np.ndarray) -> np.ndarray:
        """:meth:`phase_losses_kw` of ``T`` solutions at once (T, elements, 4) [kW], from
        their ``powers`` (T, PD conductor values) and ``volts`` (T, nodes), complex, as
        :meth:`loss_snapshot` gives them. Each step's figures are exactly (bit for bit)
        those :meth:`phase_losses_kw` gives for that step alone: every operation runs
        per step in the same order (tests/feeder/test_losses.py checks it)."""
        return self._phase_loss_index().losses_kw(powers, volts, self.master)

    def element_phase_losses_kw(self) -> dict[str, dict[str, float]]:
        """:meth:`phase_losses_kw` as element -> {layer: kW} (layers a, b, c, n)."""
        rows = zip(self.phase_loss_elements(), self.phase_losses_kw(), strict=True)
        return {e: dict(zip(LAYERS, map(float, row), strict=True)) for e, row in rows}

    def customer_layers(self) -> list[str]:
        """Phase layer (``a``, ``b``, ``c``) of each customer's node, in customer order.

        The layer of its own node (``cust_<id>.1`` behind a service transformer, the
        primary node when connected directly), as propagated from the source (see
        :meth:`_phase_loss_index`): the phase of the primary node it hangs off.
        """
        ix = self._phase_loss_index()
        names = self._dss.Circuit.AllNodeNames()
        out = []
        for k in self._cust_node_idx.tolist():
            bus, _, node = names[k].lower().partition(".")
            out.append(ix.layer(bus, int(node)))
        return out

    def _background_load_index(self) -> BackgroundLoadIndex:
        """The background Loads' index (built once per :meth:`_phase_loss_index`)."""
        ix = self._phase_loss_index()
        if ix.bg is None:
            ix.bg = BackgroundLoadIndex.build(self._dss, self._load_points, ix)
        return ix.bg

    def _background_load_powers(self) -> np.ndarray:
        """(kW, kvar) of every background Load conductor, flat, in one bulk read when
        the batch API is there (else one ``CktElement.Powers`` per Load)."""
        return self._background_load_index().read_powers(self._dss, self.master)

    def _background_load_powers_per_load(self) -> np.ndarray:
        """As :meth:`_background_load_powers`, one ``CktElement.Powers`` per Load."""
        return self._background_load_index().read_powers_per_load(self._dss)

    def background_load_names(self) -> list[str]:
        """The model's own enabled Loads (lower case), rows of :meth:`background_layer_kw`."""
        return list(self._background_load_index().names)

    def background_load_layers(self) -> list[tuple[str, ...]]:
        """Phase layers (``a``, ``b``, ``c``) each background Load draws on, in
        :meth:`background_load_names` order: a wye Load's phase conductors, a delta
        Load's phases (``692.3.1`` -> c, a), each as propagated from the source."""
        return list(self._background_load_index().layers)

    def background_load_paths(self) -> list[list[str]]:
        """PD elements on each background Load's path from the source bus, in
        :meth:`background_load_names` order (as :meth:`customer_paths`: the tree path on
        a radial feeder, the shortest by km on a meshed one; empty for a Load whose
        bus the source does not reach)."""
        topo = self._topology()
        bus_paths = paths_from_source(topo, self.master.name)
        return [path_elements(topo, bus_paths.get(bus, [])) for bus in self._background_load_index().buses]

    def background_layer_kw(self) -> np.ndarray:
        """Each background Load's weight in each graph layer a, b, c, n [kW] (Loads x 4).

        Its ``|p|`` (|sum of its conductors' active power| of the last solve, from
        ``CktElement.Powers``) split over its phase layers in proportion to each
        layer's |conductor active power|, and ``|p|`` in ``n`` (a customer on phase x
        weighs its ``|p|`` on x and on n alike). One bulk read
        (:meth:`_background_load_powers`) and a few numpy operations.
        """
        if not self._background_load_index().names:
            return self.background_layer_kw_of(np.zeros((1, 0)))[0]
        return self.background_layer_kw_of(self._background_load_powers()[None])[0]

    def background_layer_kw_of(self, load_powers: np.ndarray) -> np.ndarray:
        """:meth:`background_layer_kw` of ``T`` solutions at once (T, Loads, 4) [kW] from
        the background Loads' (kW, kvar) per conductor (T, values), as
        :meth:`loss_snapshot` gives them; each step bit for bit as alone."""
        return self._background_load_index().layer_kw(load_powers)

    # ------------------------------------------------------------------ inventory (inventory.py)
    # Read-only facts of the compiled model for ``tecosim feeders show`` (runner/feeders.py)
    def bus_kv_bases(self) -> dict[str, float]:
        """Nominal line-to-neutral voltage (OpenDSS kVBase) of every bus [kV]; 0 = none set."""
        return inventory.bus_kv_bases(self._dss)

    def phase_node_v_pu(self) -> tuple[list[str], np.ndarray]:
        """Phase nodes ``bus.1`` .. ``bus.3`` of the buses with a kV base and their voltage
        magnitude [pu of the bus's L-N base] in the last solution (neutral nodes 0, 4+
        and buses without a base left out)."""
        return inventory.phase_node_v_pu(self._dss)

    def element_counts(self) -> dict[str, int]:
        """How many of each element class the circuit has [-]: ``lines`` (``switches``
        included), ``transformers`` (regulators' included), ``regulators``,
        ``capacitors``, ``loads``, ``loads_disabled``, ``generators``, ``pv_systems``,
        ``storage``."""
        return inventory.element_counts(self._dss)

    def lines_without_normamps(self) -> list[str]:
        """Lines (lower-case names, switches left out) with no current rating of their own
        (:func:`~federates.feeder.opendss.inventory.lines_without_normamps`)."""
        return inventory.lines_without_normamps(self._dss)
