"""Connecting customers: the OpenDSS elements that attach each prosumer to the model.

Owns how customer sites become OpenDSS elements: with a ``secondary`` connection one
single-phase service transformer per site group and a service drop per customer,
with ``direct`` the Load on the bus node itself, and for a site on a split-phase
service a 240 V Load across its two legs. :func:`plan_connection` writes the
commands and the nodes and voltage bases the adapter then indexes the customers by;
it only builds text (bus voltage bases come from the ``kv_ln`` it is given) and
touches no circuit.

Customers are OpenDSS Loads with ``model=1`` (constant P, Q) whose kW and kvar the
adapter sets every step. A constant-PQ Load keeps its set power only within
``vminpu`` .. ``vmaxpu``; customer loads use :data:`CUSTOMER_VMIN_PU` ..
:data:`CUSTOMER_VMAX_PU` so that they stay constant PQ over any voltage a study can
reach while OpenDSS still has a constant-Z fallback for a collapsing solution.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from federates.common.grid import CustomerSite, LoadPoint
from federates.common.units import PHASE_TO_NODE

if TYPE_CHECKING:
    from federates.common.config import CustomerConnection

__all__ = ["CUSTOMER_VMAX_PU", "CUSTOMER_VMIN_PU", "ConnectionPlan", "check_sites", "plan_connection"]

CUSTOMER_VMIN_PU = 0.7
CUSTOMER_VMAX_PU = 1.3

_NAME_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_sites(sites: Sequence[CustomerSite], kind: str) -> None:
    """Raise ValueError unless participant names are unique and usable as OpenDSS names,
    phases are a, b or c and ``kind`` is a connection kind."""
    names = [s.participant for s in sites]
    if len(set(names)) != len(names):
        raise ValueError("participant names must be unique")
    for s in sites:
        if not _NAME_OK.match(s.participant) or not _NAME_OK.match(s.group):
            raise ValueError(f"participant/group names must be letters, digits, _ or -: {s}")
        if s.phase not in PHASE_TO_NODE:
            raise ValueError(f"{s.participant}: phase {s.phase!r} is not one of a, b, c")
    if kind not in ("secondary", "direct"):
        raise ValueError(f"unknown customer connection kind {kind!r}; allowed: secondary, direct")


def load_command(participant: str, node: str, kv_ln: float) -> str:
    """The OpenDSS command of customer ``participant``'s Load on ``node`` at ``kv_ln`` [kV]."""
    return (
        f"New Load.cust_{participant} bus1={node} phases=1 conn=wye model=1 "
        f"kV={kv_ln!r} kW=0 kvar=0 vminpu={CUSTOMER_VMIN_PU} vmaxpu={CUSTOMER_VMAX_PU}"
    )


@dataclass
class ConnectionPlan:
    """The OpenDSS commands that connect the customers and where each one ends up."""

    commands: list[str] = field(default_factory=list)
    new_bases: dict[str, float] = field(default_factory=dict)  # new bus -> L-N kV base
    node_names: list[str] = field(default_factory=list)  # each customer's node (bus.node)
    node2_names: dict[int, str] = field(default_factory=dict)  # position -> second leg node (split-phase)
    base_kv: list[float] = field(default_factory=list)  # each customer's nominal voltage [kV]
    leg_kv: dict[int, float] = field(default_factory=dict)  # position -> leg L-N base [kV] (split-phase)
    kinds: list[str] = field(default_factory=list)  # secondary, direct or split_phase
    service_nodes: dict[int, str] = field(default_factory=dict)  # position -> its group's transformer node (secondary)

    def point_of(self) -> list[int]:
        """Each customer's connection point, numbered in order of first appearance:
        customers whose Loads sit on the same node(s) with the same connection kind
        (``direct`` on one bus node, ``split_phase`` across the same two legs) share a
        point and inject into the network identically; a ``secondary`` customer's own
        service drop makes its point its own."""
        numbers: dict[tuple[str, str, str], int] = {}
        return [numbers.setdefault((kind, node.lower(), self.node2_names.get(k, "").lower()), len(numbers))
                for k, (kind, node) in enumerate(zip(self.kinds, self.node_names, strict=True))]

    def group_point_of(self) -> list[int]:
        """:meth:`point_of` with the ``secondary`` customers of one service transformer
        sharing a point (its node ``svc_<group>.1``, where their drops start), numbered
        in order of first appearance: the points of the DSO's grouped linear model
        (federates/feeder/sensitivity.py), in which each of them adds its own drop."""
        numbers: dict[tuple[str, str, str], int] = {}
        return [numbers.setdefault((kind, self.service_nodes.get(k, node).lower(),
                                    self.node2_names.get(k, "").lower()), len(numbers))
                for k, (kind, node) in enumerate(zip(self.kinds, self.node_names, strict=True))]

    def _split_phase(self, k: int, s: CustomerSite, lp: LoadPoint, kv_ln: Callable[[str], float]) -> None:
        """Customer ``k`` across the two 120 V legs of the model's own split-phase service."""
        bus = lp.bus
        kv_leg = kv_ln(bus)
        n1, n2 = lp.nodes[0], lp.nodes[1]
        self.commands.append(load_command(s.participant, f"{bus}.{n1}.{n2}", 2.0 * kv_leg))
        self.node_names.append(f"{bus}.{n1}")
        self.node2_names[k] = f"{bus}.{n2}"
        self.base_kv.append(2.0 * kv_leg)
        self.leg_kv[k] = kv_leg
        self.kinds.append("split_phase")

    def _service_transformers(self, sites: Sequence[CustomerSite], split: list[bool],
                              connection: CustomerConnection, kv_ln: Callable[[str], float]) -> None:
        """One single-phase service transformer per group of the sites not on a split-phase service."""
        groups: dict[str, tuple[str, str]] = {}
        for s, sp in zip(sites, split, strict=True):
            if sp:
                continue
            where = (s.bus.lower(), s.phase)
            if groups.setdefault(s.group, where) != where:
                raise ValueError(f"group {s.group!r} mixes buses/phases: {groups[s.group]} and {where}")
        v_sec = float(connection.secondary_kv)
        half_r = float(connection.transformer_pct_r) / 2.0
        for group, (bus, phase) in groups.items():
            kv_prim = kv_ln(bus)
            node = PHASE_TO_NODE[phase]
            self.commands.append(
                f"New Transformer.svc_{group} phases=1 windings=2 "
                f"buses=[{bus}.{node} svc_{group}.1] conns=[wye wye] "
                f"kVs=[{kv_prim!r} {v_sec!r}] kVAs=[{connection.transformer_kva!r} {connection.transformer_kva!r}] "
                f"%Rs=[{half_r!r} {half_r!r}] XHL={float(connection.transformer_pct_x)!r}"
            )
            self.new_bases[f"svc_{group}"] = v_sec

    def _secondary(self, s: CustomerSite, connection: CustomerConnection) -> None:
        """A service drop from the group's transformer to bus ``cust_<participant>``, the Load there."""
        v_sec = float(connection.secondary_kv)
        length_km = float(connection.service_length_m) / 1000.0
        r = float(connection.service_r_ohm_per_km)
        x = float(connection.service_x_ohm_per_km)
        cb = f"cust_{s.participant}"
        self.commands.append(
            f"New Line.drop_{s.participant} phases=1 bus1=svc_{s.group}.1 bus2={cb}.1 "
            f"r1={r!r} x1={x!r} r0={r!r} x0={x!r} c1=0 c0=0 length={length_km!r} units=km"
        )
        self.commands.append(load_command(s.participant, f"{cb}.1", v_sec))
        self.new_bases[cb] = v_sec
        self.service_nodes[len(self.node_names)] = f"svc_{s.group}.1"
        self.node_names.append(f"{cb}.1")
        self.base_kv.append(v_sec)
        self.kinds.append("secondary")

    def _direct(self, s: CustomerSite, kv_ln: Callable[[str], float]) -> None:
        """The Load on the bus node of the site's phase itself."""
        bus = s.bus.lower()
        kv = kv_ln(bus)
        node = f"{bus}.{PHASE_TO_NODE[s.phase]}"
        self.commands.append(load_command(s.participant, node, kv))
        self.node_names.append(node)
        self.base_kv.append(kv)
        self.kinds.append("direct")


def plan_connection(sites: Sequence[CustomerSite], points: dict[str, LoadPoint],
                    connection: CustomerConnection, kv_ln: Callable[[str], float]) -> ConnectionPlan:
    """The elements that connect ``sites`` (checked by :func:`check_sites`) to the model.

    ``points``: the model's Loads by lower-case name (a site whose ``load`` is a
    split-phase one is connected across its legs); ``kv_ln``: a bus's L-N kV base.
    Commands in the order OpenDSS must run them: service transformers first.
    """
    split = [bool(s.load) and points.get(s.load.lower()) is not None and points[s.load.lower()].split_phase
             for s in sites]
    plan = ConnectionPlan()
    if connection.kind == "secondary":
        plan._service_transformers(sites, split, connection, kv_ln)
    for k, (s, sp) in enumerate(zip(sites, split, strict=True)):
        if sp:
            plan._split_phase(k, s, points[s.load.lower()], kv_ln)
        elif connection.kind == "secondary":
            plan._secondary(s, connection)
        else:
            plan._direct(s, kv_ln)
    return plan
