"""The model's wiring: PD elements, the bus graph, distances and paths, nodes' phases.

Owns what the adapter derives from how the circuit is connected, read once per PD
element / node list: :class:`Topology` (every PD element's terminals' buses and nodes,
the bus graph of the enabled series elements with Line lengths in km, the source bus,
each bus node's primary phase layer), :func:`phases_of_bus` (OpenDSS's wiring rule for
a bus spec), and the graph questions asked of it: :func:`distances_km` between
customers and :func:`paths_from_source`. Functions take the OpenDSS context they read.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from federates.common.errors import FeederModelError
from federates.common.units import NODE_TO_PHASE
from federates.feeder.opendss.capi import Batch

__all__ = ["KM_PER_UNIT", "Topology", "distances_km", "path_elements", "paths_from_source", "phases_of_bus",
           "topology_key"]

#: OpenDSS line length unit codes (``Lines.Units``) -> km per unit. Code 0 ("none"):
#: OpenDSS then takes the length in whatever unit the impedances are per; tecosim
#: reads such lengths as km (the convention of every length it writes itself).
KM_PER_UNIT = {0: 1.0, 1: 1.609344, 2: 0.3048, 3: 1.0, 4: 1e-3, 5: 0.3048e-3, 6: 0.0254e-3,
               7: 1e-5, 8: 1e-6}


def phases_of_bus(bus_spec: str, n_phases: int, n_conductors: int | None = None) -> tuple[str, ...]:
    """Phase letters a terminal with bus spec ``bus.1.2`` connects to, as OpenDSS wires it.

    OpenDSS's rule for the conductors a spec does not name: conductor ``k`` (from 0)
    goes to node ``k + 1`` while ``k < n_phases`` and to node 0 (ground) after that;
    ``n_conductors`` (``CktElement.NumConductors``: phases + 1 for a wye Load, 2 for a
    single-phase delta Load, the phase count for other delta Loads) defaults to
    ``n_phases``. So ``bus`` of a three-phase Load is a, b, c; ``bus.1.2`` of a
    single-phase delta Load is a, b (line to line); ``bus.3`` of a single-phase delta
    Load is c (to ground, nodes 3.0); ``bus.2`` of a three-phase Load is nodes 2.2.3,
    phases b, c. Node 0 and nodes above 3 (neutrals) are no phase. Phases in wiring
    order without repeats (``692.3.1`` -> c, a). tests/feeder/test_any_model.py checks
    the rule against OpenDSS's own ``CktElement.NodeOrder``.
    """
    parts = bus_spec.split(".")
    nodes = [int(p) for p in parts[1:] if p.isdigit()]
    n_cond = n_phases if n_conductors is None else n_conductors
    nodes = nodes[:n_cond] + [k + 1 if k < n_phases else 0 for k in range(len(nodes), n_cond)]
    phases: list[str] = []
    for n in nodes:
        ph = NODE_TO_PHASE.get(n)
        if ph is not None and ph not in phases:
            phases.append(ph)
    return tuple(phases)


def topology_key(dss) -> tuple[int, int]:
    """(PD elements, nodes) of the circuit now: a :class:`Topology` holds while it is unchanged."""
    return int(dss.PDElements.Count()), int(dss.Circuit.NumNodes())


class Topology:
    """The PD elements of a model, their wiring, the bus graph and the nodes' phases.

    ``graph`` (networkx): one node per bus, an edge per enabled series PD element:
    Lines with their length in km (:data:`KM_PER_UNIT`), switches 0 km, Transformers
    0 km from every winding to the first, parallel elements: the shorter length; each
    edge also lists the PD elements (lower-case full names) that join its two buses.
    Shunt PD elements (capacitors, reactors to ground: both terminals on one bus) make
    no edge. Callers must not modify it.

    Phase layers of bus nodes (:meth:`layer`): the source bus's nodes 1, 2, 3 are a, b,
    c; going out from the source (BFS over the bus graph), a node of the far bus of an
    element takes the layer of the node its conductor has at the near bus, and every
    node behind a single-phase transformer takes the layer of its primary phase (so the
    two 120 V legs, nodes 1 and 2, of a center-tapped service transformer on a phase-b
    primary are both b). Disabled elements (no nodes) are kind ``off`` and make no edge.
    """

    def __init__(self) -> None:
        self.key: tuple[int, int] = (0, 0)  # (PD elements, nodes) when built
        self.names: list[str] = []  # PD elements, lower-case full names, PDElements order
        #: per PD element: (bus per terminal, nodes per terminal, kind): kind ``line``,
        #: ``xf1`` (single-phase transformer), ``xfd`` (with a delta winding), ``cond``
        #: (anything else), ``off`` (disabled)
        self.info: list[tuple[list[str], list[list[int]], str]] = []
        self.graph = None
        self.root = ""
        self.depth: dict[str, int] = {}  # edges from the source bus
        self.bus_layers: dict[str, dict[int, str]] = {}

    def layer(self, bus: str, node: int) -> str:
        """Phase layer (a, b, c) of ``bus``.``node``, ``n`` for node 0 and neutrals."""
        m = self.bus_layers.get(bus)
        if m is not None and node in m:
            return m[node]
        return NODE_TO_PHASE.get(node, "n")

    @classmethod
    def read(cls, dss) -> Topology:
        """The topology of the circuit of ``dss`` as it is now.

        Cost: Lines and Transformers are read in bulk (one batch call per property);
        per PD element there remain four calls (``SetActiveElement``, ``Enabled``,
        ``BusNames``, ``NodeOrder``: DSS C-API has no batch form of NodeOrder).
        """
        import networkx as nx

        topo = cls()
        topo.key = topology_key(dss)
        topo.names = [n.lower() for n in dss.PDElements.AllNames()]
        g = nx.Graph()
        g.add_nodes_from(b.lower() for b in dss.Circuit.AllBusNames())
        topo._read_elements(dss, g, _line_km(dss), _transformer_kinds(dss))
        dss.Vsources.First()
        root = dss.CktElement.BusNames()[0].split(".")[0].lower()
        topo.graph, topo.root = g, root
        topo._propagate_layers()
        return topo

    def _read_elements(self, dss, g, line_km: dict[str, float], xf_kind: dict[str, str]) -> None:
        """Each PD element's terminals (``info``) and its edges in the bus graph ``g``."""
        el = dss.CktElement
        for name in self.names:
            dss.Circuit.SetActiveElement(name)
            if not el.Enabled():
                self.info.append(([], [], "off"))
                continue
            buses = [b.split(".")[0].lower() for b in el.BusNames()]
            order = list(el.NodeOrder())
            nc = len(order) // max(len(buses), 1)
            nodes = [order[t * nc:(t + 1) * nc] for t in range(len(buses))]
            cls = name.partition(".")[0]
            if cls == "transformer":
                kind = xf_kind.get(name, "cond")
            elif cls == "line" and len(buses) == 2:
                kind = "line"
            else:
                kind = "cond"
            self.info.append((buses, nodes, kind))
            _add_edges(g, name, buses, line_km.get(name, 0.0))

    def _propagate_layers(self) -> None:
        """Depth of every bus and the phase layer of every bus node, BFS from the source."""
        import networkx as nx

        g, root = self.graph, self.root
        by_name = {x: k for k, x in enumerate(self.names)}
        self.depth[root] = 0
        for u, v in nx.bfs_edges(g, root):
            self.depth[v] = self.depth[u] + 1
            for e in g[u][v]["elements"]:
                buses, nodes, kind = self.info[by_name[e]]
                if u not in buses or v not in buses:
                    continue
                near = nodes[buses.index(u)]
                far_map = self.bus_layers.setdefault(v, {})
                # every terminal on the far bus: a center-tapped transformer has two
                # (its 120 V windings, nodes 1.0 and 0.2 of the same bus)
                for far in (nodes[t] for t, bus_t in enumerate(buses) if bus_t == v):
                    self._set_far_layers(u, near, far, kind, far_map)

    def _set_far_layers(self, u: str, near: list[int], far: list[int], kind: str,
                        far_map: dict[int, str]) -> None:
        """Layers of the nodes ``far`` of a terminal whose element reaches bus ``u`` on ``near``
        (a layer once set is kept)."""
        if kind == "xf1":
            phases = [self.layer(u, x) for x in near if self.layer(u, x) != "n"]
            for x in far:
                if x != 0:
                    far_map.setdefault(x, phases[0] if phases else "n")
        else:
            for x_near, x_far in zip(near, far, strict=False):
                if x_far != 0:
                    far_map.setdefault(x_far, self.layer(u, x_near))


def _line_km(dss) -> dict[str, float]:
    """Length of every Line (``line.<name>``) [km]; switches 0 km. One batch read per property."""
    lines = Batch.of_class(dss, "Line")
    km_per = np.asarray([KM_PER_UNIT.get(int(u), 1.0) for u in lines.get_i32("units")])
    km = np.where(lines.get_i32("switch") != 0, 0.0, lines.get_f64("length") * km_per)
    return dict(zip((f"line.{x}" for x in lines.names()), km.tolist(), strict=True))


def _transformer_kinds(dss) -> dict[str, str]:
    """Kind of every Transformer (``transformer.<name>``): ``xf1`` single-phase, ``xfd``
    with a delta winding, ``cond`` otherwise."""
    xfs = Batch.of_class(dss, "Transformer")
    xf_phases = xfs.get_i32("phases")
    xf_delta = [any(c.startswith("d") or c == "ll" for c in re.findall(r"[a-z]+", x.lower()))
                for x in xfs.get_str("conns")]
    return {f"transformer.{x}": ("xf1" if ph == 1 else "xfd" if dl else "cond")
            for x, ph, dl in zip(xfs.names(), xf_phases.tolist(), xf_delta, strict=True)}


def _add_edges(g, name: str, buses: list[str], length: float) -> None:
    """Edges from an element's first bus to each of its other buses (parallel: the shorter km)."""
    for other in buses[1:]:
        a, b = buses[0], other
        if a == b:
            continue
        if g.has_edge(a, b):
            g[a][b]["km"] = min(length, g[a][b]["km"])
            g[a][b]["elements"].append(name)
        else:
            g.add_edge(a, b, km=length, elements=[name])


def distances_km(topo: Topology, buses: list[str], where: str) -> np.ndarray:
    """Path length along the feeder between every pair of ``buses`` [km] (n, n).

    On a radial feeder the distance is ``depth(u) + depth(v) - 2 depth(lca(u, v))``
    from the source bus, each pair set once at its lowest common ancestor: O(n^2 +
    buses). A meshed feeder falls back to Dijkstra from each distinct bus (shortest
    path). Symmetric, zero on the diagonal. Raises FeederModelError (naming ``where``)
    when a bus is not connected to the source.
    """
    import networkx as nx

    g, root = topo.graph, topo.root
    comp = nx.node_connected_component(g, root)
    lost = sorted({c for c in buses if c not in comp})
    if lost:
        raise FeederModelError(f"{where}: customer buses {lost} are not connected to {root}")
    tree = g.subgraph(comp)
    if tree.number_of_edges() == tree.number_of_nodes() - 1:  # radial
        out = _radial_distances(tree, root, buses)
    else:  # meshed: shortest paths
        out = _meshed_distances(tree, buses)
    np.fill_diagonal(out, 0.0)
    return np.maximum(out, 0.0)


def _radial_distances(tree, root: str, buses: list[str]) -> np.ndarray:
    """:func:`distances_km` on a tree: depths and lowest common ancestors."""
    import networkx as nx

    n = len(buses)
    depth, parent = {root: 0.0}, {root: None}
    order = [root]
    for u, v in nx.bfs_edges(tree, root):
        depth[v] = depth[u] + tree[u][v]["km"]
        parent[v] = u
        order.append(v)
    at: dict[str, list[int]] = {}
    for k, c in enumerate(buses):
        at.setdefault(c, []).append(k)
    d = np.array([depth[c] for c in buses])
    lca_depth = np.zeros((n, n))
    below: dict[str, np.ndarray] = {}
    for w in reversed(order):  # children before parents
        parts = [np.asarray(at[w], dtype=np.int64)] if w in at else []
        parts += [below.pop(c) for c in tree.neighbors(w) if parent.get(c) == w and c in below]
        # each customer at w is its own branch; pairs in different branches meet at w
        branches = [np.array([k]) for k in parts[0]] + parts[1:] if w in at else parts
        if len(branches) > 1:
            below[w] = _meet_at(lca_depth, branches, depth[w])
        elif branches:
            below[w] = branches[0]
    return d[:, None] + d[None, :] - 2.0 * lca_depth


def _meet_at(lca_depth: np.ndarray, branches: list[np.ndarray], depth_w: float) -> np.ndarray:
    """Set ``lca_depth`` of every pair in two different ``branches`` to ``depth_w``; all of them."""
    seen = branches[0]
    for b in branches[1:]:
        lca_depth[np.ix_(seen, b)] = depth_w
        lca_depth[np.ix_(b, seen)] = depth_w
        seen = np.concatenate([seen, b])
    return seen


def _meshed_distances(tree, buses: list[str]) -> np.ndarray:
    """:func:`distances_km` on a meshed graph: Dijkstra from each distinct bus."""
    import networkx as nx

    n = len(buses)
    out = np.zeros((n, n))
    rows: dict[str, np.ndarray] = {}
    for k, c in enumerate(buses):
        if c not in rows:
            dist = nx.single_source_dijkstra_path_length(tree, c, weight="km")
            rows[c] = np.array([dist[x] for x in buses])
        out[k] = rows[c]
    return out


def paths_from_source(topo: Topology, where: str) -> dict[str, list[str]]:
    """Buses on the path from the source bus to every bus it reaches, source first (the
    tree path on a radial feeder, the shortest by km on a meshed one)."""
    import networkx as nx

    try:
        return nx.single_source_dijkstra_path(topo.graph, topo.root, weight="km")
    except nx.NodeNotFound:  # pragma: no cover - the source bus is always a bus
        raise FeederModelError(f"{where}: source bus {topo.root!r} not in the bus graph") from None


def path_elements(topo: Topology, bus_path: list[str]) -> list[str]:
    """PD elements along ``bus_path`` (parallel elements between two buses all listed)."""
    g = topo.graph
    return [e for a, b in itertools.pairwise(bus_path) for e in g[a][b]["elements"]]
