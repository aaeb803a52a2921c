"""Graph-based loss allocation (GBLA): network losses traced to customers and trades.

Pure numpy (no OpenDSS): the inputs come from the adapter,
:meth:`federates.feeder.opendss.OpenDSSFeeder.element_losses_kw` (active loss of each
PD element [kW]) and :meth:`~federates.feeder.opendss.OpenDSSFeeder.customer_paths`
(the PD elements on each customer's path from the source bus).

The rule (the graph-based loss allocation idea of the review's refs. [32]-[35]: the
loss of each branch is traced along the energy path and shared by the users of that
path, one graph layer per phase):

* every PD element ``e`` with loss ``L_e`` is shared among the customers whose path
  from the source uses ``e``, in proportion to their ``|p_kw|`` (importers and
  exporters alike: both make the branch carry current);
* an element used by no customer (e.g. one feeding only background loads, or a shunt
  capacitor), or used only by customers with ``p_kw = 0``, goes to a ``background``
  remainder;
* so customer allocations + background = sum of ``L_e``, exactly (conservation by
  construction).

Approximation (a follow-up): the review's GBLA keeps one graph layer per phase; here
each element's total (all-phase) loss is shared, so a single-phase customer on phase
a shares a three-phase line's phase-b and -c losses too. The whole loss of an element
on a customer's path is shared among customers even when background loads also draw
through it.

:func:`allocate_losses_to_trades` then splits each customer's allocated loss over its
trades pro rata by traded energy; trades with :data:`~federates.common.messages.GRID`
(and energy not covered by any trade) get the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federates.common.messages import GRID, Trade

__all__ = ["TradeLossAllocation", "allocate_losses_to_customers",
           "allocate_losses_to_trades"]


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
    loss assigned to trade ``t`` (0 on a GRID side); ``grid_kw[k]``: the part of
    customer ``k``'s loss assigned to its GRID trades and to energy not covered by any
    trade. Per customer: its seller and buyer shares + ``grid_kw`` = its allocated loss.
    """

    seller_kw: np.ndarray
    buyer_kw: np.ndarray
    grid_kw: np.ndarray
    is_peer: np.ndarray  # bool per trade: neither side is GRID

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
    trade), go to ``grid_kw[k]``. Conservation per customer holds by construction.
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
    grid_kw = loss.copy()  # what the trades do not take
    for t, k, side, e in sides:
        if denom[k] <= 0.0:
            continue
        share = loss[k] * e / denom[k]
        if not is_peer[t]:
            continue  # stays in grid_kw
        if side == "seller":
            seller_kw[t] += share
        else:
            buyer_kw[t] += share
        grid_kw[k] -= share
    return TradeLossAllocation(seller_kw=seller_kw, buyer_kw=buyer_kw, grid_kw=grid_kw, is_peer=is_peer)
