"""The per-phase loss index: each PD element's losses, and each background Load's
weight, split over the graph layers a, b, c, n for the per-phase GBLA of
federates/feeder/losses.py.

Owns :class:`PhaseLossIndex` (where each PD element's per-layer losses come from in
OpenDSS's bulk arrays, built once per PD element list, again after customers are
attached) with the per-solution split (:meth:`PhaseLossIndex.losses_kw`), and
:class:`BackgroundLoadIndex` (the model's own Loads as users of the loss graph) with
their layer weights (:meth:`BackgroundLoadIndex.layer_kw`). Layers come from
:class:`~federates.feeder.opendss.topology.Topology`. Each solution then costs two bulk
reads (made by the adapter) and ~20 numpy operations.
"""

from __future__ import annotations

import numpy as np

from federates.common.errors import FeederModelError
from federates.common.units import NODE_TO_PHASE
from federates.feeder.losses import LAYERS, NEUTRAL
from federates.feeder.opendss.capi import Batch, as_complex
from federates.feeder.opendss.topology import Topology, topology_key

__all__ = ["BackgroundLoadIndex", "PhaseLossIndex"]

_N_LAY = len(LAYERS)
_LAY = {x: i for i, x in enumerate(LAYERS)}
_N_OF = _LAY["n"]


class PhaseLossIndex:
    """Where each PD element's per-layer losses come from in the bulk arrays.

    Cells: ``element * 4 + layer`` (layers a, b, c, n), plus one dummy cell at the
    end for padding. ``lin_cell`` sends every terminal conductor's Re(S) to a cell:
    per-conductor elements to the conductor's layer, single-phase transformers to
    their phase, Lines and delta transformers to their ``n`` cell (their total,
    from which the resistive / current-weighted split is then moved out).

    Each element's conductors take their layers from its terminal nearest the source
    (:class:`~federates.feeder.opendss.topology.Topology` layers: a service
    transformer on 671.2 and the drops and customer buses behind it are phase b).
    Node 0 and nodes without a layer (neutrals) are ``n``.
    """

    def __init__(self) -> None:
        self.key: tuple[int, int] = (0, 0)  # (PD elements, nodes) when built
        self.checked_at = -1  # the solution id at which the key was last checked
        self.names: list[str] = []
        self.n_flat = 0
        self.bus_layers: dict[str, dict[int, str]] = {}
        self.lin_cell = np.zeros(0, dtype=np.int64)
        # transformers with a delta winding: split by per-unit current squared
        self.xfd_ncell = np.zeros(0, dtype=np.int64)  # n cell of each such transformer
        self.xfd_loc = np.zeros(0, dtype=np.int64)  # its transformer, per phase conductor
        self.xfd_pos = np.zeros(0, dtype=np.int64)  # flat position
        self.xfd_node = np.zeros(0, dtype=np.int64)  # node index
        self.xfd_base2 = np.zeros(0)  # (terminal kV base)^2
        self.xfd_cell = np.zeros(0, dtype=np.int64)
        # lines: I_s = Y_s (V1 - V2), loss_x = Re(conj(I_s,x) (R I_s)_x), padded
        self.ln_n1 = np.zeros((0, 0), dtype=np.int64)  # node index (n_nodes = ground)
        self.ln_n2 = np.zeros((0, 0), dtype=np.int64)
        self.ln_ys = np.zeros((0, 0, 0), dtype=complex)  # series admittance [S]
        self.ln_r = np.zeros((0, 0, 0))  # series resistance [ohm]
        self.ln_cell = np.zeros((0, 0), dtype=np.int64)  # padding: the dummy cell
        self.ln_ncell = np.zeros(0, dtype=np.int64)
        self.bg: BackgroundLoadIndex | None = None  # built on first use

    def layer(self, bus: str, node: int) -> str:
        m = self.bus_layers.get(bus)
        if m is not None and node in m:
            return m[node]
        return NODE_TO_PHASE.get(node, "n")

    @classmethod
    def build(cls, dss, topo: Topology, where: object) -> PhaseLossIndex:
        """The index of the PD elements of context ``dss`` now (``topo``: its topology)."""
        ix = cls()
        pd_el = dss.PDElements
        ix.key = topology_key(dss)
        ix.names = [n.lower() for n in pd_el.AllNames()]
        dummy = len(ix.names) * _N_LAY
        n_cond = np.asarray(pd_el.AllNumConductors(), dtype=np.int64)
        n_term = np.asarray(pd_el.AllNumTerminals(), dtype=np.int64)
        ix.n_flat = int(np.sum(n_cond * n_term))
        offset = np.concatenate([[0], np.cumsum(n_cond * n_term)]).astype(np.int64)
        node_idx = {x: i for i, x in enumerate(x.lower() for x in dss.Circuit.AllNodeNames())}
        if topo.names != ix.names:  # pragma: no cover - both read PDElements.AllNames
            raise FeederModelError(f"{where}: the PD element list changed while indexing")
        depth = topo.depth
        ix.bus_layers = topo.bus_layers
        ix.lin_cell = np.full(ix.n_flat, dummy, dtype=np.int64)
        xfd = _DeltaRows()
        lines = []  # (n1, n2, ys, r, cells, n cell)
        for k, (buses, nodes, kind) in enumerate(topo.info):
            if kind == "off":  # disabled: no conductors carry anything (its cells stay empty)
                continue
            t0 = min(range(len(buses)), key=lambda t: depth.get(buses[t], 1 << 30))
            cells = [k * _N_LAY + _LAY[ix.layer(buses[t0], x)] for x in nodes[t0]]
            ncell = k * _N_LAY + _N_OF
            span = slice(int(offset[k]), int(offset[k + 1]))
            if kind == "cond":  # per conductor, Re(S) summed over the terminals
                ix.lin_cell[span] = np.tile(cells, len(buses))
            elif kind == "xf1":  # all of it to the primary phase
                phase_cells = [c for c in cells if c % _N_LAY != _N_OF]
                ix.lin_cell[span] = phase_cells[0] if phase_cells else ncell
            elif kind == "xfd":
                ix.lin_cell[span] = ncell
                xfd.add(dss, offset[k], buses, nodes, cells, ncell, node_idx)
            else:  # line
                ix.lin_cell[span] = ncell
                lines.append(_line_row(dss, ix.names[k], buses, nodes, cells, ncell, node_idx))
        xfd.pack(ix)
        ix._pack_lines(lines, dummy, len(node_idx))
        return ix

    def _pack_lines(self, lines: list[tuple], dummy: int, ground: int) -> None:
        """The Lines' rows as arrays padded to the widest Line (padding: ground, the dummy cell)."""
        i64 = np.int64
        m = max((len(ln[4]) for ln in lines), default=0)
        nl = len(lines)
        self.ln_n1 = np.full((nl, m), ground, dtype=i64)
        self.ln_n2 = np.full((nl, m), ground, dtype=i64)
        self.ln_ys = np.zeros((nl, m, m), dtype=complex)
        self.ln_r = np.zeros((nl, m, m))
        self.ln_cell = np.full((nl, m), dummy, dtype=i64)
        self.ln_ncell = np.asarray([ln[5] for ln in lines], dtype=i64)
        for j, (n1, n2, ys, r, cells, _) in enumerate(lines):
            c = len(cells)
            self.ln_n1[j, :c], self.ln_n2[j, :c], self.ln_cell[j, :c] = n1, n2, cells
            self.ln_ys[j, :c, :c], self.ln_r[j, :c, :c] = ys, r

    def losses_kw(self, powers: np.ndarray, volts: np.ndarray, where: object) -> np.ndarray:
        """Per-layer losses of ``T`` solutions at once (T, elements, 4) [kW], from their
        ``powers`` (T, PD conductor values: ``PDElements.AllPowers``) and ``volts`` (T,
        nodes: ``Circuit.AllBusVolts``), complex. Each step's figures are exactly (bit
        for bit) those of that step alone: every operation runs per step in the same
        order (tests/feeder/test_losses.py checks it). Raises FeederModelError (naming
        ``where``) when the PD element list is not the indexed one."""
        s = np.asarray(powers)
        n_t = s.shape[0]
        if s.ndim != 2 or s.shape[1] != self.n_flat:
            raise FeederModelError(f"{where}: the PD element list changed; call attach_customers only")
        ne = len(self.names)
        n_cells = ne * _N_LAY + 1  # + the dummy cell
        row = np.arange(n_t)[:, None]

        def per_step(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
            # np.bincount of each step's weights (T, len(index)) into (T, size)
            flat = index if n_t == 1 else (index[None, :] + row * size).reshape(-1)
            return np.bincount(flat, weights=weights.reshape(-1), minlength=n_t * size).reshape(n_t, size)

        out = per_step(self.lin_cell, s.real, n_cells)
        v = np.concatenate([np.asarray(volts), np.zeros((n_t, 1))], axis=1)  # V, + ground
        if self.xfd_ncell.size:
            total = out[:, self.xfd_ncell]  # all of each delta transformer's loss sits in its n cell
            v2 = np.abs(v[:, self.xfd_node]) ** 2
            w = np.divide(np.abs(s[:, self.xfd_pos]) ** 2 * self.xfd_base2, v2, out=np.zeros_like(v2), where=v2 > 0)
            w_el = per_step(self.xfd_loc, w, total.shape[1])[:, self.xfd_loc]
            part = np.divide(w * total[:, self.xfd_loc], w_el, out=np.zeros_like(w), where=w_el > 0)
            out += per_step(self.xfd_cell, part, n_cells)
            out[:, self.xfd_ncell] -= per_step(self.xfd_loc, part, total.shape[1])
        if self.ln_ncell.size:
            i_s = self.ln_ys @ (v[:, self.ln_n1] - v[:, self.ln_n2])[..., None]  # A
            loss_kw = (np.conj(i_s) * (self.ln_r @ i_s)).real[..., 0] / 1000.0
            out += per_step(self.ln_cell.reshape(-1), loss_kw, n_cells)
            out[:, self.ln_ncell] -= loss_kw.sum(axis=2)
        return out[:, :-1].reshape(n_t, ne, _N_LAY)


class _DeltaRows:
    """The phase conductors of the transformers with a delta winding, gathered while
    indexing (one row per conductor not on a neutral or node 0)."""

    def __init__(self) -> None:
        self.ncell: list[int] = []
        self.loc: list[int] = []
        self.pos: list[int] = []
        self.node: list[int] = []
        self.base2: list[float] = []
        self.cell: list[int] = []

    def add(self, dss, offset: int, buses: list[str], nodes: list[list[int]], cells: list[int],
            ncell: int, node_idx: dict[str, int]) -> None:
        """One transformer: its terminals' conductors from flat position ``offset`` on."""
        ground = len(node_idx)
        nc = len(cells)
        loc = len(self.ncell)
        self.ncell.append(ncell)
        for t in range(len(buses)):
            dss.Circuit.SetActiveBus(buses[t])
            base = float(dss.Bus.kVBase()) or 1.0
            for x in range(nc):
                node = nodes[t][x]
                if cells[x] % _N_LAY != _N_OF and node:
                    self.loc.append(loc)
                    self.pos.append(offset + t * nc + x)
                    self.node.append(node_idx.get(f"{buses[t]}.{node}", ground))
                    self.base2.append(base * base)
                    self.cell.append(cells[x])

    def pack(self, ix: PhaseLossIndex) -> None:
        i64 = np.int64
        ix.xfd_ncell, ix.xfd_loc = np.asarray(self.ncell, dtype=i64), np.asarray(self.loc, dtype=i64)
        ix.xfd_pos, ix.xfd_node = np.asarray(self.pos, dtype=i64), np.asarray(self.node, dtype=i64)
        ix.xfd_base2, ix.xfd_cell = np.asarray(self.base2, dtype=float), np.asarray(self.cell, dtype=i64)


def _line_row(dss, name: str, buses: list[str], nodes: list[list[int]], cells: list[int],
              ncell: int, node_idx: dict[str, int]) -> tuple:
    """One Line's row: (nodes at bus 1, nodes at bus 2, series Y_s [S], R = Re(Y_s^-1)
    [ohm], cells, n cell), Y_s from its primitive Y matrix."""
    ground = len(node_idx)
    nc = len(cells)
    dss.Circuit.SetActiveElement(name)
    y = as_complex(dss.CktElement.YPrim()).reshape(2 * nc, 2 * nc)
    ys = -y[:nc, nc:]
    try:
        r = np.linalg.inv(ys).real
    except np.linalg.LinAlgError:
        r = np.linalg.pinv(ys).real
    n1 = [node_idx.get(f"{buses[0]}.{x}", ground) if x else ground for x in nodes[0]]
    n2 = [node_idx.get(f"{buses[1]}.{x}", ground) if x else ground for x in nodes[1]]
    return n1, n2, ys, r, cells, ncell


class BackgroundLoadIndex:
    """The model's own (background) Loads as users of the loss graph.

    Per Load (the enabled Loads of the model as compiled, ``load_points`` order): its
    name, bus, phase layers and ``Loads.Idx``; per conductor (in ``CktElement.Powers``
    order) the cell ``load * 4 + layer`` its power goes to. A conductor's layer is its
    node's layer at the Load's bus (as propagated from the source; node 0 and neutral
    nodes: ``n``), so a Load behind a wye-wye transformer or a single-phase service
    transformer takes the phase it hangs off. ``batch``: a DSS C-API batch of these
    Loads, so that ``Alt_CEBatch_Get_Powers`` reads every conductor's power in one
    call; None when the engine has no batch API (then one ``CktElement.Powers`` per Load).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.buses: list[str] = []
        self.layers: list[tuple[str, ...]] = []
        self.load_idx: list[int] = []
        self.cond_cell = np.zeros(0, dtype=np.int64)
        self.cond_load = np.zeros(0, dtype=np.int64)
        self.n_values = 0  # floats per read: (kW, kvar) per conductor
        self.batch: Batch | None = None

    @classmethod
    def build(cls, dss, load_points, ix: PhaseLossIndex) -> BackgroundLoadIndex:
        """The index of the Loads ``load_points`` (``LoadPoint``) with the layers of ``ix``."""
        bx = cls()
        loads, el = dss.Loads, dss.CktElement
        cells: list[int] = []
        owner: list[int] = []
        for j, lp in enumerate(load_points):
            loads.Name(lp.name)
            bx.names.append(lp.name.lower())
            bx.load_idx.append(int(loads.Idx()))
            bus = el.BusNames()[0].split(".")[0].lower()
            bx.buses.append(bus)
            conductor_layers = [ix.layer(bus, int(x)) if x else "n" for x in el.NodeOrder()]
            bx.layers.append(tuple(dict.fromkeys(x for x in conductor_layers if x != "n")))
            cells += [j * _N_LAY + _LAY[x] for x in conductor_layers]
            owner += [j] * len(conductor_layers)
        bx.cond_cell = np.asarray(cells, dtype=np.int64)
        bx.cond_load = np.asarray(owner, dtype=np.int64)
        bx.n_values = 2 * len(cells)
        bx.batch = _load_batch(dss, bx.load_idx, bx.names)
        return bx

    def read_powers(self, dss, where: object) -> np.ndarray:
        """(kW, kvar) of every Load conductor of the last solution, flat, in one bulk read
        when the batch API is there (else :meth:`read_powers_per_load`)."""
        s = self.batch.powers() if self.batch is not None else self.read_powers_per_load(dss)
        if s.size != self.n_values:
            raise FeederModelError(f"{where}: read {s.size} background load power values, "
                                   f"expected {self.n_values}")
        return s

    def read_powers_per_load(self, dss) -> np.ndarray:
        """As :meth:`read_powers`, one ``CktElement.Powers`` per Load."""
        loads, el = dss.Loads, dss.CktElement
        parts = []
        for i in self.load_idx:
            loads.Idx(i)
            parts.append(np.asarray(el.Powers(), dtype=float))
        return np.concatenate(parts) if parts else np.zeros(0)

    def layer_kw(self, load_powers: np.ndarray) -> np.ndarray:
        """Each Load's weight in each graph layer a, b, c, n of ``T`` solutions at once
        (T, Loads, 4) [kW] from the Loads' (kW, kvar) per conductor (T, values); each
        step bit for bit as alone.

        Its ``|p|`` (|sum of its conductors' active power|) split over its phase layers
        in proportion to each layer's |conductor active power|, and ``|p|`` in ``n`` (a
        customer on phase x weighs its ``|p|`` on x and on n alike)."""
        n = len(self.names)
        s = np.asarray(load_powers, dtype=float)
        n_t = s.shape[0]
        if not n:
            return np.zeros((n_t, 0, _N_LAY))
        row = np.arange(n_t)[:, None]
        p = s[:, 0::2]
        load = (self.cond_load[None, :] + row * n).reshape(-1)
        total = np.abs(np.bincount(load, weights=p.reshape(-1), minlength=n_t * n)).reshape(n_t, n)
        cell = (self.cond_cell[None, :] + row * (n * _N_LAY)).reshape(-1)
        per = np.bincount(cell, weights=np.abs(p).reshape(-1), minlength=n_t * n * _N_LAY).reshape(n_t, n, _N_LAY)
        k_n = LAYERS.index(NEUTRAL)
        per[:, :, k_n] = 0.0
        phase_sum = per.sum(axis=2)
        per *= np.divide(total, phase_sum, out=np.zeros((n_t, n)), where=phase_sum > 0)[:, :, None]
        per[:, :, k_n] = total
        return per


def _load_batch(dss, load_idx: list[int], names: list[str]) -> Batch | None:
    """A DSS C-API batch of the Loads ``load_idx`` (``Loads.Idx``), or None.

    None when there are no Loads, when the engine lacks the batch API, or when the
    batch does not hold exactly ``names`` in this order (checked once here, by
    ``Obj_GetName``). The batch holds pointers to the Load objects, which live as
    long as the circuit (the adapter never clears or recompiles it after
    ``__init__``); cffi frees the batch array with the adapter.
    """
    if not load_idx:
        return None
    try:
        batch = Batch.of_index(dss, "Load", load_idx)
        got = batch.names()
    except Exception:  # pragma: no cover - engines without the batch API: per-Load reads
        return None
    return batch if got == names else None
