"""Graph-based loss allocation (GBLA): network losses traced to customers and trades.

Pure numpy (no OpenDSS): the inputs come from the adapter,
:meth:`federates.feeder.opendss.OpenDSSFeeder.phase_losses_kw` (the loss of each PD
element split over the phase layers a, b, c and n [kW]),
:meth:`~federates.feeder.opendss.OpenDSSFeeder.customer_paths` (the PD elements on each
customer's path from the source bus),
:meth:`~federates.feeder.opendss.OpenDSSFeeder.customer_layers` (each customer's
phase layer) and their background-Load counterparts
:meth:`~federates.feeder.opendss.OpenDSSFeeder.background_load_paths`,
:meth:`~federates.feeder.opendss.OpenDSSFeeder.background_load_layers` and
:meth:`~federates.feeder.opendss.OpenDSSFeeder.background_layer_kw`.

The rule (the graph-based loss allocation idea of the review's refs. [32]-[35]: the
loss of each branch is traced along the energy path and shared by the users of that
path, one graph layer per phase):

* the feeder graph has one layer per phase (:data:`LAYERS` a, b, c) and a neutral
  layer ``n``; each PD element ``e`` has a loss ``L_e,l`` in each layer ``l`` (the
  adapter's split, summing to the element's OpenDSS loss exactly);
* the users of the graph are the customers (prosumers) and the model's own
  (background) Loads. A customer on phase ``x`` uses, on every element of its path
  from the source, layer ``x`` and the neutral layer ``n``, with weight ``|p_kw|``
  (importers and exporters alike: both make the branch carry current). A background
  Load uses, on every element of its path, the phase layers of its conductors and
  ``n``: its ``|p|`` is split over its phase layers in proportion to its per-phase
  (per-conductor) active power, and it weighs ``|p|`` on ``n`` (a three-phase or
  delta Load thus uses each of its phases' layers; the adapter's
  :meth:`~federates.feeder.opendss.OpenDSSFeeder.background_layer_kw` reads these
  weights each step);
* each (element, layer) loss is shared among its users in proportion to their
  weights. A single-phase customer on phase a gets no share of a three-phase line's
  b- and c-layer losses;
* the background's share (:data:`BACKGROUND`) is the sum of the background Loads'
  shares plus every (element, layer) used by nobody (e.g. a shunt capacitor, a
  de-energised branch) or only by users of weight 0;
* so customer allocations + background = sum of ``L_e,l`` = OpenDSS's total losses
  (conservation by construction; tests/feeder/test_losses.py checks it against
  ``Circuit.Losses``).

Approximation: a user's weight is its own ``|p|`` at its connection point, not the
current it causes in each branch (no power-flow tracing: a customer and a background
Load drawing the same kW through a trunk line get the same share of that line's
layer, whatever their power factor or distance beyond it); losses are quadratic in
the branch current but shared linearly in ``|p|``, so the shares are pro rata, not
marginal. On the IEEE 13 published case with 40 customers the customers' share of
the losses is about their share of the power flowing through the elements they use
(a few kW among the MW of background load on the trunk), not, as when only customers
were counted as users, nearly all of the feeder's losses.
:func:`allocate_losses_to_customers` is the older all-phase, customers-only variant
(each element's total loss shared by every customer using the element, whatever its
phase).

:func:`allocate_losses_to_trades` then splits each customer's allocated loss over its
trades pro rata by traded energy; trades with :data:`~federates.common.messages.GRID`
(and energy not covered by any trade) get the rest. It is linear, so it takes losses
in kW (a step) or in kWh (an interval) alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from federates.common.messages import GRID, Trade

__all__ = ["BACKGROUND", "LAYERS", "NEUTRAL", "PhaseLossAllocation", "PhaseLossIncidence", "TradeLossAllocation",
           "allocate_losses_to_customers", "allocate_losses_to_trades",
           "allocate_phase_losses_to_customers"]

#: Graph layers: the phases a, b, c and the neutral / ground return ``n``.
LAYERS: tuple[str, ...] = ("a", "b", "c", "n")
NEUTRAL = "n"
#: Name of what no customer carries: the background Loads' shares and what no user
#: carries (tables: ``participant == BACKGROUND``).
BACKGROUND = "background"
_LAYER_POS = {x: i for i, x in enumerate(LAYERS)}


def _empty_index() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class PhaseLossAllocation:
    """One step's per-phase GBLA [kW]: ``customer_kw`` per customer,
    ``background_load_kw`` per background Load (its share of the layers it uses) and
    ``unused_kw`` (layers used by nobody or only by users of weight 0)."""

    customer_kw: np.ndarray
    background_load_kw: np.ndarray
    unused_kw: float

    @property
    def background_kw(self) -> float:
        """What no customer carries: the background Loads' shares + ``unused_kw`` [kW]."""
        return float(self.background_load_kw.sum() + self.unused_kw)


@dataclass(frozen=True)
class PhaseLossIncidence:
    """Which (element, layer) cells each user uses: built once, applied per step.

    ``cell[j]``, ``customer[j]``: pair ``j`` says customer ``customer[j]`` uses cell
    ``cell[j] = element * 4 + layer`` (rows of :meth:`allocate`'s loss array, layers in
    :data:`LAYERS` order). ``bg_cell[j]``, ``bg_slot[j]``: background Load
    ``bg_slot[j] // 4`` uses cell ``bg_cell[j]`` in layer ``bg_slot[j] % 4`` (its weight
    there is that entry of the per-step ``(n_background, 4)`` weight array). Each pair
    appears once.
    """

    n_elements: int
    n_customers: int
    cell: np.ndarray
    customer: np.ndarray
    n_background: int = 0
    bg_cell: np.ndarray = field(default_factory=_empty_index)
    bg_slot: np.ndarray = field(default_factory=_empty_index)
    # both kinds of pairs at once: cell, position in the per-step weight vector
    # (|p| of the customers, then the background weights flat), output row
    # (customers, then background Loads)
    _all_cell: np.ndarray = field(init=False, repr=False)
    _all_weight: np.ndarray = field(init=False, repr=False)
    _all_row: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nc = self.n_customers
        object.__setattr__(self, "_all_cell", np.concatenate([self.cell, self.bg_cell]).astype(np.int64))
        object.__setattr__(self, "_all_weight", np.concatenate([self.customer, nc + self.bg_slot]).astype(np.int64))
        object.__setattr__(self, "_all_row", np.concatenate([self.customer, nc + self.bg_slot // len(LAYERS)])
                           .astype(np.int64))

    @classmethod
    def build(cls, elements: Sequence[str], paths: Sequence[Sequence[str]],
              customer_layers: Sequence[str], *,
              background_paths: Sequence[Sequence[str]] = (),
              background_layers: Sequence[Sequence[str]] = ()) -> PhaseLossIncidence:
        """Pairs for customers with ``paths`` (element names) on ``customer_layers``
        (``a``, ``b`` or ``c``; ``n`` uses only the neutral layer) and background Loads
        with ``background_paths`` drawing on the phase layers ``background_layers``
        (each a collection of ``a``, ``b``, ``c``; every Load also uses ``n``);
        ``elements`` names the rows of the loss array. Path elements not in
        ``elements`` carry no loss."""
        if len(paths) != len(customer_layers):
            raise ValueError(f"{len(paths)} paths but {len(customer_layers)} customer layers")
        if len(background_paths) != len(background_layers):
            raise ValueError(f"{len(background_paths)} background paths but {len(background_layers)} "
                             "background layer sets")
        row = {e: i for i, e in enumerate(elements)}
        n_layers = len(LAYERS)
        n_pos = _LAYER_POS[NEUTRAL]

        def pairs(users_paths, users_layers, what):
            cells: list[int] = []
            users: list[int] = []
            for k, (path, layers) in enumerate(zip(users_paths, users_layers, strict=True)):
                bad = [x for x in layers if x not in _LAYER_POS]
                if bad:
                    raise ValueError(f"{what} {k}: layer {bad[0]!r} is not one of {LAYERS}")
                mine = sorted({_LAYER_POS[x] for x in layers} | {n_pos})
                for e in dict.fromkeys(path):  # an element counts once per user
                    i = row.get(e)
                    if i is None:
                        continue
                    for lay in mine:
                        cells.append(i * n_layers + lay)
                        users.append(k if what == "customer" else k * n_layers + lay)
            return np.asarray(cells, dtype=np.int64), np.asarray(users, dtype=np.int64)

        cell, customer = pairs(paths, [(x,) for x in customer_layers], "customer")
        bg_cell, bg_slot = pairs(background_paths, [tuple(x) for x in background_layers], "background load")
        return cls(n_elements=len(elements), n_customers=len(paths), cell=cell, customer=customer,
                   n_background=len(background_paths), bg_cell=bg_cell, bg_slot=bg_slot)

    @property
    def n_pairs(self) -> int:
        """Number of (user, cell) pairs: the size of a step's allocation arrays."""
        return int(self._all_cell.size)

    def allocate(self, layer_losses_kw: np.ndarray, p_kw: np.ndarray,
                 background_layer_kw: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Per-customer losses [kW] and the background's share [kW] of one solve.

        ``layer_losses_kw``: (elements, 4) losses per layer [kW]; ``p_kw``: customer
        active power [kW] (sign ignored); ``background_layer_kw``: (background Loads,
        4) weight of each background Load in each layer [kW] (required when the
        incidence has background Loads; see :meth:`allocate_detail`).
        ``customer.sum() + background`` equals ``layer_losses_kw.sum()`` up to one
        float rounding.
        """
        a = self.allocate_detail(layer_losses_kw, p_kw, background_layer_kw)
        return a.customer_kw, float(np.asarray(layer_losses_kw, dtype=float).sum() - a.customer_kw.sum())

    def allocate_detail(self, layer_losses_kw: np.ndarray, p_kw: np.ndarray,
                        background_layer_kw: np.ndarray | None = None) -> PhaseLossAllocation:
        """:meth:`allocate` itemised: each customer's, each background Load's and the
        unused share [kW]. A few numpy operations, no Python loop.

        ``background_layer_kw[j, l]``: background Load ``j``'s weight in layer ``l``
        [kW, sign ignored] (the adapter's ``background_layer_kw``: its ``|p|`` split
        over its phase layers, and ``|p|`` in ``n``); a layer the Load does not use
        (not in the ``background_layers`` it was built with) is ignored.
        """
        loss = np.asarray(layer_losses_kw, dtype=float)
        bw = None if background_layer_kw is None else np.asarray(background_layer_kw, dtype=float)[None]
        flat, out = self._shares(loss[None], np.asarray(p_kw, dtype=float)[None], bw)
        flat, out = flat[0], out[0]
        cust, bg = out[:self.n_customers], out[self.n_customers:]
        return PhaseLossAllocation(customer_kw=cust, background_load_kw=bg,
                                   unused_kw=float(flat.sum() - out.sum()))

    def allocate_many(self, layer_losses_kw: np.ndarray, p_kw: np.ndarray,
                      background_layer_kw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`allocate` of ``T`` solves at once: ``layer_losses_kw`` (T, elements, 4),
        ``p_kw`` (T, customers), ``background_layer_kw`` (T, background Loads, 4) give
        the customers' losses (T, customers) and the background's (T,) [kW], each step
        bit for bit what :meth:`allocate` gives for it alone."""
        loss = np.asarray(layer_losses_kw, dtype=float)
        flat, out = self._shares(loss, np.asarray(p_kw, dtype=float), background_layer_kw)
        cust = out[:, :self.n_customers]
        return cust, flat.sum(axis=1) - cust.sum(axis=1)

    def _shares(self, loss: np.ndarray, p_kw: np.ndarray,
                background_layer_kw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The losses flat (T, cells) and every user's share (T, customers + background
        Loads) of ``T`` steps (shapes as :meth:`allocate_many`), checked."""
        n_layers = len(LAYERS)
        n_t = loss.shape[0]
        if loss.shape[1:] != (self.n_elements, n_layers):
            raise ValueError(f"expected layer losses of shape {(self.n_elements, n_layers)}, got {loss.shape[1:]}")
        w = np.abs(p_kw)
        if w.shape != (n_t, self.n_customers):
            raise ValueError(f"expected {self.n_customers} customer powers, got shape {w.shape[1:]}")
        if not np.all(np.isfinite(w)):
            raise ValueError("customer powers must be finite")
        if background_layer_kw is None:
            if self.n_background:
                raise ValueError(f"the incidence has {self.n_background} background loads: give their layer weights")
            bw = np.zeros((n_t, 0))
        else:
            bw = np.abs(np.asarray(background_layer_kw, dtype=float))
            if bw.shape != (n_t, self.n_background, n_layers):
                raise ValueError(f"expected background weights of shape {(self.n_background, n_layers)}, "
                                 f"got {bw.shape[1:]}")
            if not np.all(np.isfinite(bw)):
                raise ValueError("background load weights must be finite")
            bw = bw.reshape(n_t, -1)
        flat = loss.reshape(n_t, -1)
        n_cells, n_users = flat.shape[1], self.n_customers + self.n_background
        row = np.arange(n_t)[:, None]

        def per_step(index: np.ndarray, size: int) -> np.ndarray:
            # each step's cells offset by step x size (one bincount for all steps)
            return index if n_t == 1 else (index[None, :] + row * size).reshape(-1)

        wj = np.concatenate([w, bw], axis=1)[:, self._all_weight]
        users_w = np.bincount(per_step(self._all_cell, n_cells), weights=wj.reshape(-1),
                              minlength=n_t * n_cells).reshape(n_t, n_cells)
        per_w = np.divide(flat, users_w, out=np.zeros_like(flat), where=users_w > 0)
        out = np.bincount(per_step(self._all_row, n_users), weights=(per_w[:, self._all_cell] * wj).reshape(-1),
                          minlength=n_t * n_users).reshape(n_t, n_users)
        return flat, out


def allocate_phase_losses_to_customers(
    element_phase_losses_kw: Mapping[str, Mapping[str, float]],
    paths: Sequence[Sequence[str]],
    customer_layers: Sequence[str],
    p_kw: np.ndarray,
    *,
    background_paths: Sequence[Sequence[str]] = (),
    background_layer_kw: Sequence[Mapping[str, float]] = (),
) -> tuple[np.ndarray, float]:
    """Per-phase-layer GBLA (see the module doc): ``(customer_kw, background_kw)``.

    ``element_phase_losses_kw``: element -> {layer: loss [kW]} (layers of
    :data:`LAYERS`; missing layers are 0); ``paths`` and ``customer_layers`` in
    customer order; ``p_kw`` customer active power [kW] (sign ignored). Background
    Loads: ``background_paths`` and, per Load, ``background_layer_kw`` {phase layer:
    its |p| there [kW]}; it uses those layers and ``n``, where it weighs the sum of
    its phase weights (its ``|p|``).
    """
    elements = list(element_phase_losses_kw)
    loss = np.zeros((len(elements), len(LAYERS)))
    for i, e in enumerate(elements):
        for layer, x in element_phase_losses_kw[e].items():
            if layer not in _LAYER_POS:
                raise ValueError(f"{e}: layer {layer!r} is not one of {LAYERS}")
            loss[i, _LAYER_POS[layer]] += float(x)
    bw = np.zeros((len(background_layer_kw), len(LAYERS)))
    for j, per_layer in enumerate(background_layer_kw):
        for layer, x in per_layer.items():
            if layer not in _LAYER_POS or layer == NEUTRAL:
                raise ValueError(f"background load {j}: layer {layer!r} is not one of {LAYERS[:-1]}")
            bw[j, _LAYER_POS[layer]] += abs(float(x))
    bw[:, _LAYER_POS[NEUTRAL]] = bw.sum(axis=1)
    inc = PhaseLossIncidence.build(elements, paths, customer_layers, background_paths=background_paths,
                                   background_layers=[list(x) for x in background_layer_kw])
    return inc.allocate(loss, p_kw, bw if inc.n_background else None)


def allocate_losses_to_customers(
    element_losses_kw: Mapping[str, float],
    paths: Sequence[Sequence[str]],
    p_kw: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Share each element's loss among the customers whose path uses it, by ``|p_kw|``.

    ``element_losses_kw``: element name -> active loss [kW]; ``paths``: the element
    names on each customer's path (customer order); ``p_kw``: customer active power
    [kW] (sign ignored). Path elements missing from ``element_losses_kw`` carry no
    loss. Returns ``(customer_kw, background_kw)``: per-customer losses [kW] and the
    background remainder [kW]; they add up to ``sum(element_losses_kw.values())``
    up to float rounding.
    """
    w = np.abs(np.asarray(p_kw, dtype=float))
    n = len(paths)
    if w.shape != (n,):
        raise ValueError(f"expected {n} customer powers, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("customer powers must be finite")
    users: dict[str, list[int]] = {}
    for k, path in enumerate(paths):
        for e in dict.fromkeys(path):  # an element counts once per customer
            users.setdefault(e, []).append(k)
    out = np.zeros(n)
    background = 0.0
    for e, loss in element_losses_kw.items():
        loss = float(loss)
        ks = users.get(e)
        if not ks:
            background += loss
            continue
        idx = np.asarray(ks, dtype=np.int64)
        wk = w[idx]
        tot = float(np.sum(wk))
        if tot <= 0.0:
            background += loss
            continue
        share = loss * wk / tot
        share[-1] = loss - float(np.sum(share[:-1]))  # the shares add up to the loss exactly
        np.add.at(out, idx, share)
    return out, background


@dataclass(frozen=True)
class TradeLossAllocation:
    """Each customer's loss split over its trades [kW].

    ``seller_kw[t]`` / ``buyer_kw[t]``: the part of the seller's / buyer's allocated
    loss assigned to peer trade ``t`` (0 on a GRID trade); ``grid_kw[k]``: the part of
    customer ``k``'s loss assigned to its GRID trades and to energy not covered by any
    trade, itemised as ``grid_trade_kw[t]`` (the customer side's share of GRID trade
    ``t``; 0 on peer trades) and ``untraded_kw[k]``. Per customer: its seller and buyer
    shares + ``grid_kw`` = its allocated loss.
    """

    seller_kw: np.ndarray
    buyer_kw: np.ndarray
    grid_kw: np.ndarray
    is_peer: np.ndarray  # bool per trade: neither side is GRID
    grid_trade_kw: np.ndarray
    untraded_kw: np.ndarray

    @property
    def trade_kw(self) -> np.ndarray:
        """Loss assigned to each trade from both its sides [kW]."""
        return self.seller_kw + self.buyer_kw

    def customer_kw(self, participants: Sequence[str], trades: Sequence[Trade]) -> np.ndarray:
        """Sum back per customer (seller and buyer shares of its peer trades + grid_kw)."""
        pos = {p: k for k, p in enumerate(participants)}
        out = np.array(self.grid_kw, dtype=float)
        for t, tr in enumerate(trades):
            if not self.is_peer[t]:
                continue
            if tr.seller in pos:
                out[pos[tr.seller]] += self.seller_kw[t]
            if tr.buyer in pos:
                out[pos[tr.buyer]] += self.buyer_kw[t]
        return out


def allocate_losses_to_trades(
    customer_loss_kw: np.ndarray,
    participants: Sequence[str],
    trades: Sequence[Trade],
    *,
    customer_energy_kwh: np.ndarray | None = None,
    interval: int | None = None,
) -> TradeLossAllocation:
    """Split each customer's allocated loss over its trades, pro rata by traded energy.

    Customer ``k`` (``participants[k]``) with loss ``L_k`` and trades ``t`` of energy
    ``E_t`` [kWh] (as seller or buyer; only those of ``interval`` when given) gets
    share ``L_k E_t / D_k`` on each, with ``D_k = sum_t E_t`` or, when
    ``customer_energy_kwh`` (metered |energy| per customer) is given,
    ``max(|energy_k|, sum_t E_t)``. Shares on GRID trades, and ``L_k (1 - sum_t E_t /
    D_k)`` for energy no trade covers (all of ``L_k`` when the customer has no
    trade), go to ``grid_kw[k]`` (itemised in ``grid_trade_kw`` and ``untraded_kw``).
    Conservation per customer holds by construction.
    """
    loss = np.asarray(customer_loss_kw, dtype=float)
    n = len(participants)
    if loss.shape != (n,):
        raise ValueError(f"expected {n} customer losses, got shape {loss.shape}")
    pos = {p: k for k, p in enumerate(participants)}
    if len(pos) != n:
        raise ValueError("participant names must be unique")
    metered = None
    if customer_energy_kwh is not None:
        metered = np.abs(np.asarray(customer_energy_kwh, dtype=float))
        if metered.shape != (n,):
            raise ValueError(f"expected {n} customer energies, got shape {metered.shape}")
    m = len(trades)
    seller_kw = np.zeros(m)
    buyer_kw = np.zeros(m)
    is_peer = np.array([tr.seller != GRID and tr.buyer != GRID for tr in trades], dtype=bool)
    sides, traded = _trade_sides(trades, pos, interval)
    denom = traded if metered is None else np.maximum(metered, traded)
    grid_kw = loss.copy()  # what the peer trades do not take
    untraded_kw = loss.copy()  # what no trade takes
    grid_trade_kw = np.zeros(m)
    for t, k, side, e in sides:
        if denom[k] <= 0.0:
            continue
        share = loss[k] * e / denom[k]
        untraded_kw[k] -= share
        if not is_peer[t]:
            grid_trade_kw[t] += share  # stays in grid_kw
            continue
        if side == "seller":
            seller_kw[t] += share
        else:
            buyer_kw[t] += share
        grid_kw[k] -= share
    return TradeLossAllocation(seller_kw=seller_kw, buyer_kw=buyer_kw, grid_kw=grid_kw, is_peer=is_peer,
                               grid_trade_kw=grid_trade_kw, untraded_kw=untraded_kw)


def _trade_sides(trades: Sequence[Trade], pos: dict[str, int],
                 interval: int | None) -> tuple[list[tuple[int, int, str, float]], np.ndarray]:
    """Each (trade, customer, side, energy [kWh]) of the customers in ``pos`` (only trades
    of ``interval`` when given), and each customer's traded energy [kWh]."""
    traded = np.zeros(len(pos))
    sides: list[tuple[int, int, str, float]] = []
    for t, tr in enumerate(trades):
        if interval is not None and tr.interval != interval:
            continue
        e = float(tr.energy_kwh)
        if e < 0 or not np.isfinite(e):
            raise ValueError(f"trade {t}: energy must be finite and >= 0, got {e}")
        for side, who in (("seller", tr.seller), ("buyer", tr.buyer)):
            k = pos.get(who)
            if k is not None:
                sides.append((t, k, side, e))
                traded[k] += e
    return sides, traded
