"""The pieces of P2P consensus ADMM (Sorin, Bobo & Pinson 2019) that a peer and the
market share: the projection of a peer's proposals onto its order, one peer's local
step, and what travels between the market and the peers every round of the
distributed clearing (``market.mechanism: admm_distributed``).

Plain Python and numpy, on the ground floor so that the market (the coordinator,
``federates.market.admm_distributed``), the prosumers (the peers,
``federates.prosumers.admm_agents``) and the central clearing
(``federates.market.p2p.clear_p2p_admm``) run the same floating-point operations: with
perfect comms the distributed iterates are the central ones, bit for bit.

Units: energy [kWh] over the interval, prices and charges [USD/kWh], the penalty
``rho`` [USD/kWh^2].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Pairs grouped by one side's order: ``perm`` puts the pairs in group order (stable),
    ``member`` is each of those entries' group, ``starts`` the groups' first entries,
    ``cap`` their energies [kWh]."""

    perm: np.ndarray
    inverse: np.ndarray
    member: np.ndarray
    starts: np.ndarray
    cap: np.ndarray

    @classmethod
    def of(cls, idx: np.ndarray, cap_kwh: list[float]) -> Groups:
        perm = np.argsort(idx, kind="stable")
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        g = idx[perm]
        new = np.r_[True, g[1:] != g[:-1]]
        starts = np.flatnonzero(new)
        return cls(perm, inverse, np.cumsum(new) - 1, starts,
                   np.asarray(cap_kwh, dtype=float)[g[starts]])


def project_groups(v: np.ndarray, gr: Groups,
                   tau: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The Euclidean projection of every group of ``v`` (in group order) onto {x >= 0,
    sum x <= cap} at once: (x, tau).

    x = max(v - tau_g, 0) with tau_g = 0 where the group's positive part fits its cap,
    else the root of sum max(v - tau, 0) = cap. Only positive entries can be non-zero, so
    the root is found on those alone: Newton steps on the active set (Michelot's
    iteration), started from the previous call's ``tau`` (ADMM moves it little) and
    restarted from Michelot's lower bound if that start leaves a group empty; each group
    stops when its tau no longer changes, i.e. at the exact root of its final active set.
    A group's result depends on its own entries and tau only (the sums run over each
    group's entries in order): one group alone gives the same bits as all at once.
    """
    n_g = len(gr.starts)
    x = np.zeros(len(v))
    pos = np.flatnonzero(v > 0.0)
    if not len(pos):
        return x, np.zeros(n_g)
    vp = v[pos]
    gp = gr.member[pos]
    total = np.bincount(gp, weights=vp, minlength=n_g)
    need = total > gr.cap
    t = np.zeros(n_g)
    if need.any():
        count = np.bincount(gp, minlength=n_g)
        low = (total - gr.cap) / np.maximum(count, 1)  # Michelot's start: <= the root
        t = np.where(need, low if tau is None else np.maximum(tau, low), 0.0)
        todo = np.flatnonzero(need)
        sub = need[gp]  # entries of the groups still iterating
        vs, gs = vp[sub], gp[sub]
        for _ in range(4 * len(vp) + 2):  # finite: Newton on a piecewise-linear root
            act = vs > t[gs]
            cnt = np.bincount(gs[act], minlength=n_g)
            sm = np.bincount(gs[act], weights=vs[act], minlength=n_g)
            cur = t[todo]
            new = np.where(cnt[todo] > 0, (sm[todo] - gr.cap[todo]) / np.maximum(cnt[todo], 1),
                           low[todo])
            moved = new != cur
            if not moved.any():
                break
            t[todo] = new
            todo = todo[moved]
            keep = np.zeros(n_g, dtype=bool)
            keep[todo] = True
            sub = keep[gs]
            vs, gs = vs[sub], gs[sub]
    x[pos] = np.maximum(vp - t[gp], 0.0)
    return x, t


def norm(v: np.ndarray) -> float:
    """Euclidean norm without BLAS (whose threads, on a busy 2-core machine, cost more
    than the sum: 15 ms instead of 0.1 ms for 100k entries)."""
    return math.sqrt(float(np.add.reduce(v * v)))


def local_step(side: str, price_usd_per_kwh: float, cap_kwh: float, charge_usd_per_kwh: np.ndarray,
               peer_kwh: np.ndarray, pair_price_usd_per_kwh: np.ndarray, rho: float,
               tau: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One peer's ADMM step on one of its orders, over the order's pairs: (proposals
    [kWh], tau for the next warm start).

    - seller (``side="sell"``, ``peer_kwh`` = the buyers' y):
      ``x = proj(y - (limit + charge - pi) / rho)``;
    - buyer (``side="buy"``, ``peer_kwh`` = the sellers' relaxed x):
      ``y = proj(x + (limit - pi) / rho)``;

    onto {>= 0, sum <= cap_kwh}, with the operations of ``clear_p2p_admm``.
    """
    if side == "sell":
        v = peer_kwh - (price_usd_per_kwh + charge_usd_per_kwh - pair_price_usd_per_kwh) / rho
    elif side == "buy":
        v = peer_kwh + (price_usd_per_kwh - pair_price_usd_per_kwh) / rho
    else:
        raise ValueError(f"side must be 'sell' or 'buy', got {side!r}")
    one = Groups(np.arange(len(v)), np.arange(len(v)), np.zeros(len(v), dtype=np.int64),
                 np.zeros(1, dtype=np.int64), np.array([cap_kwh], dtype=float))
    return project_groups(v, one, tau)


# ------------------------------------------------------------ what travels


@dataclass(frozen=True)
class AdmmRequest:
    """Market -> the peer ``participant``, step ``step`` of the clearing of ``interval``
    (even: the sellers' step of iteration step/2 + 1, odd: the buyers'): take your step
    on your order ``order`` (its index in the market's book of offers
    (``side="sell"``) or bids (``"buy"``)) over its ``pairs`` (pair ids).

    ``price_usd_per_kwh``: the order's limit as the market received it (the peer finds
    its own order by it); ``cap_kwh``: the energy the market accepted for clearing;
    per pair: ``charge_usd_per_kwh``, the counterparts' latest proposals ``peer_kwh``
    (the buyers' y for a seller, the sellers' relaxed x for a buyer) and the pair prices
    ``pair_price_usd_per_kwh`` (pi)."""

    interval: int
    step: int
    participant: str
    side: str
    order: int
    price_usd_per_kwh: float
    cap_kwh: float
    pairs: np.ndarray
    charge_usd_per_kwh: np.ndarray
    peer_kwh: np.ndarray
    pair_price_usd_per_kwh: np.ndarray


@dataclass(frozen=True)
class AdmmReply:
    """Peer -> market: the proposals [kWh] of ``participant``'s order ``order`` over its
    ``pairs``, the answer to the request of step ``step``."""

    interval: int
    step: int
    participant: str
    side: str
    order: int
    pairs: np.ndarray
    proposal_kwh: np.ndarray


_ARRAYS = {"pairs": np.int64, "charge_usd_per_kwh": float, "peer_kwh": float,
           "pair_price_usd_per_kwh": float, "proposal_kwh": float}


def encode_admm(interval: int, items: list[AdmmRequest] | list[AdmmReply], *, done: bool = False) -> str:
    """One HELICS message: the ``items`` of ``interval`` (JSON; floats as their shortest
    repr, so they arrive bit for bit), ``done``: the market's word that the clearing of
    ``interval`` is over."""
    rows = []
    for it in items:
        row = dict(vars(it))
        for key in _ARRAYS:
            if key in row:
                row[key] = np.asarray(row[key]).tolist()
        row["kind"] = "request" if isinstance(it, AdmmRequest) else "reply"
        rows.append(row)
    return json.dumps({"interval": interval, "done": done, "items": rows}, separators=(",", ":"))


def decode_admm(text: str) -> tuple[int, bool, list[AdmmRequest | AdmmReply]]:
    """(interval, done, items) of :func:`encode_admm`'s text."""
    msg = json.loads(text)
    items: list[AdmmRequest | AdmmReply] = []
    for row in msg["items"]:
        cls = AdmmRequest if row.pop("kind") == "request" else AdmmReply
        for key, dtype in _ARRAYS.items():
            if key in row:
                row[key] = np.asarray(row[key], dtype=dtype)
        items.append(cls(**row))
    return int(msg["interval"]), bool(msg["done"]), items


#: the settings of the distributed clearing, those of ``clear_p2p_admm``'s defaults (the
#: coordinator and every peer use these): penalty [USD/kWh^2], absolute [kWh] and
#: relative tolerances of the stopping test, over-relaxation
RHO_USD_PER_KWH2 = 0.5
TOL = 1e-6
REL_TOL = 1e-3
RELAX = 1.6
