"""Graph-based loss allocation (GBLA): network losses traced to customers and trades.

Pure numpy (no OpenDSS): the inputs come from the adapter,
:meth:`federates.feeder.opendss.OpenDSSFeeder.phase_losses_kw` (the loss of each PD
element split over the phase layers a, b, c and n [kW]),
:meth:`~federates.feeder.opendss.OpenDSSFeeder.customer_paths` (the PD elements on each
customer's path from the source bus) and
:meth:`~federates.feeder.opendss.OpenDSSFeeder.customer_layers` (each customer's
phase layer).

The rule (the graph-based loss allocation idea of the review's refs. [32]-[35]: the
loss of each branch is traced along the energy path and shared by the users of that
path, one graph layer per phase):

* the feeder graph has one layer per phase (:data:`LAYERS` a, b, c) and a neutral
  layer ``n``; each PD element ``e`` has a loss ``L_e,l`` in each layer ``l`` (the
  adapter's split, summing to the element's OpenDSS loss exactly);
* a customer on phase ``x`` uses, on every element of its path, layer ``x`` and the
  neutral layer ``n``; each (element, layer) loss is shared among its users in
  proportion to their ``|p_kw|`` (importers and exporters alike: both make the branch
  carry current). A single-phase customer on phase a gets no share of a three-phase
  line's b- and c-layer losses;
* an (element, layer) used by no customer (e.g. one feeding only background loads, a
  shunt capacitor, another phase), or used only by customers with ``p_kw = 0``, goes
  to a ``background`` remainder;
* so customer allocations + background = sum of ``L_e,l`` = OpenDSS's total losses
  (conservation by construction; tests/feeder/test_losses.py checks it against
  ``Circuit.Losses``).

Approximation: the whole loss of an (element, layer) on a customer's path is shared
among customers even when background loads also draw through it (on IEEE 13 the
customers' few kW then carry the trunk losses of the MW of background load).
:func:`allocate_losses_to_customers` is the older all-phase variant (each element's
total loss shared by every customer using the element, whatever its phase).

:func:`allocate_losses_to_trades` then splits each customer's allocated loss over its
trades pro rata by traded energy; trades with :data:`~federates.common.messages.GRID`
(and energy not covered by any trade) get the rest. It is linear, so it takes losses
in kW (a step) or in kWh (an interval) alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federates.common.messages import GRID, Trade

__all__ = ["BACKGROUND", "LAYERS", "NEUTRAL", "PhaseLossIncidence", "TradeLossAllocation",
           "allocate_losses_to_customers", "allocate_losses_to_trades",
           "allocate_phase_losses_to_customers"]

#: Graph layers: the phases a, b, c and the neutral / ground return ``n``.
LAYERS: tuple[str, ...] = ("a", "b", "c", "n")
NEUTRAL = "n"
#: Name of the remainder no customer carries (tables: ``participant == BACKGROUND``).
BACKGROUND = "background"
_LAYER_POS = {x: i for i, x in enumerate(LAYERS)}


@dataclass(frozen=True)
class PhaseLossIncidence:
    """Which (element, layer) cells each customer uses: built once, applied per step.

    ``cell[j]``, ``customer[j]``: pair ``j`` says customer ``customer[j]`` uses cell
    ``cell[j] = element * 4 + layer`` (rows of :meth:`allocate`'s loss array, layers in
    :data:`LAYERS` order). Each pair appears once.
    """

    n_elements: int
    n_customers: int
    cell: np.ndarray
    customer: np.ndarray

    @classmethod
    def build(cls, elements: Sequence[str], paths: Sequence[Sequence[str]],
              customer_layers: Sequence[str]) -> PhaseLossIncidence:
        """Pairs for customers with ``paths`` (element names) on ``customer_layers``
        (``a``, ``b`` or ``c``; ``n`` uses only the neutral layer); ``elements`` names
        the rows of the loss array. Path elements not in ``elements`` carry no loss."""
        if len(paths) != len(customer_layers):
            raise ValueError(f"{len(paths)} paths but {len(customer_layers)} customer layers")
        row = {e: i for i, e in enumerate(elements)}
        n_layers = len(LAYERS)
        cells: list[int] = []
        custs: list[int] = []
        for k, (path, layer) in enumerate(zip(paths, customer_layers, strict=True)):
            if layer not in _LAYER_POS:
                raise ValueError(f"customer {k}: layer {layer!r} is not one of {LAYERS}")
            mine = {_LAYER_POS[layer], _LAYER_POS[NEUTRAL]}
            for e in dict.fromkeys(path):  # an element counts once per customer
                i = row.get(e)
                if i is None:
                    continue
                for lay in sorted(mine):
                    cells.append(i * n_layers + lay)
                    custs.append(k)
        return cls(n_elements=len(elements), n_customers=len(paths),
                   cell=np.asarray(cells, dtype=np.int64), customer=np.asarray(custs, dtype=np.int64))

    def allocate(self, layer_losses_kw: np.ndarray, p_kw: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-customer losses [kW] and the background remainder [kW] of one solve.

        ``layer_losses_kw``: (elements, 4) losses per layer [kW]; ``p_kw``: customer
        active power [kW] (sign ignored). A few numpy operations, no Python loop.
        ``customer.sum() + background`` equals ``layer_losses_kw.sum()`` up to one
        float rounding.
        """
        loss = np.asarray(layer_losses_kw, dtype=float)
        if loss.shape != (self.n_elements, len(LAYERS)):
            raise ValueError(f"expected layer losses of shape {(self.n_elements, len(LAYERS))}, got {loss.shape}")
        w = np.abs(np.asarray(p_kw, dtype=float))
        if w.shape != (self.n_customers,):
            raise ValueError(f"expected {self.n_customers} customer powers, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("customer powers must be finite")
        flat = loss.reshape(-1)
        wj = w[self.customer]
        users_w = np.bincount(self.cell, weights=wj, minlength=flat.size)
        per_w = np.divide(flat, users_w, out=np.zeros_like(flat), where=users_w > 0)
        out = np.bincount(self.customer, weights=per_w[self.cell] * wj, minlength=self.n_customers)
        return out, float(flat.sum() - out.sum())


def allocate_phase_losses_to_customers(
    element_phase_losses_kw: Mapping[str, Mapping[str, float]],
    paths: Sequence[Sequence[str]],
    customer_layers: Sequence[str],
    p_kw: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Per-phase-layer GBLA (see the module doc): ``(customer_kw, background_kw)``.

    ``element_phase_losses_kw``: element -> {layer: loss [kW]} (layers of
    :data:`LAYERS`; missing layers are 0); ``paths`` and ``customer_layers`` in
    customer order; ``p_kw`` customer active power [kW] (sign ignored).
    """
    elements = list(element_phase_losses_kw)
    loss = np.zeros((len(elements), len(LAYERS)))
    for i, e in enumerate(elements):
        for layer, x in element_phase_losses_kw[e].items():
            if layer not in _LAYER_POS:
                raise ValueError(f"{e}: layer {layer!r} is not one of {LAYERS}")
            loss[i, _LAYER_POS[layer]] += float(x)
    inc = PhaseLossIncidence.build(elements, paths, customer_layers)
    return inc.allocate(loss, p_kw)


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
    if customer_energy_kwh is not None:
        metered = np.abs(np.asarray(customer_energy_kwh, dtype=float))
        if metered.shape != (n,):
            raise ValueError(f"expected {n} customer energies, got shape {metered.shape}")
    m = len(trades)
    seller_kw = np.zeros(m)
    buyer_kw = np.zeros(m)
    is_peer = np.array([tr.seller != GRID and tr.buyer != GRID for tr in trades], dtype=bool)
    traded = np.zeros(n)
    sides: list[tuple[int, int, str, float]] = []  # (trade, customer, side, energy)
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
    denom = traded if customer_energy_kwh is None else np.maximum(metered, traded)
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
