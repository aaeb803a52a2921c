"""The market's side of the distributed P2P clearing (``market.mechanism:
admm_distributed``): it coordinates, the peers compute.

The iterations are those of :func:`federates.market.p2p.clear_p2p_admm` (Sorin, Bobo &
Pinson 2019 consensus ADMM, over-relaxed), but every seller's and buyer's projection runs
in its prosumer agent (``federates.prosumers.admm_agents``) on its own order: the market
sends each peer, per step, in rounds (``federates.common.timeline.admm_time``), the
counterparts' latest proposals and the pair prices of its order's pairs
(:class:`~federates.common.admm.AdmmRequest`) and keeps the proposals that come back
(:class:`~federates.common.admm.AdmmReply`). It holds the pair list, the consensus
values x (the sellers'), y (the buyers'), the pair prices pi and their update, and the
stopping test. One iteration is two steps:

- step 2(i-1): to every seller order, y and pi; the sellers reply with x;
- step 2i-1: with the x held, xr = relax*x + (1-relax)*y; to every buyer order, xr and
  pi; the buyers reply with y;
- then the market updates ``pi += rho * (y - xr)`` with the y held and tests.

A step ends at the first round at which every order's reply to it has arrived, or
``market.admm_patience_rounds`` rounds after its requests went out; with perfect comms
that is the next round (an iteration takes 2 rounds).

Comms (``comms.applies_to`` with ``admm``): every request and reply is lost with
``comms.loss_rate`` (drawn per peer, :class:`~federates.common.comms.LossDraws`) and
delayed by ``comms.latency_s``; whoever misses an iterate keeps the last one it had (a
peer that gets no request does not step).

Stopping rule: iteration i is tested only when a reply of every order with a pair has
arrived since the last test (so lost replies cannot fake a converged iterate); then, as
``clear_p2p_admm``: primal residual ||x - y|| [kWh] < tol*sqrt(n) + rel_tol*max(||x||,
||y||) and dual residual rho*||y - y_prev|| [USD] < tol*sqrt(n) + rel_tol*||pi||.
Gate closure: ``market.admm_max_iterations``. Not converged by then: the fallback, every
order's energy to the grid at retail / feed-in (no peer trade), recorded
(``admm_rounds.fallback``). With perfect comms the iterates, the trades and the stopping
iteration are ``clear_p2p_admm``'s (same operations in the same order).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from federates.common.admm import (
    REL_TOL,
    RELAX,
    RHO_USD_PER_KWH2,
    TOL,
    AdmmReply,
    AdmmRequest,
    norm,
)
from federates.common.comms import CommsLink, LossDraws
from federates.common.timeline import ADMM_MAX_ITERATIONS
from federates.market.book import ClearingResult
from federates.market.p2p import AdmmStats, P2PBook, _result

ADMM_ROUNDS_DTYPES: dict[str, str] = {
    "interval": "int64", "n_pairs": "int64", "n_orders": "int64", "rounds": "int64", "iterations": "int64",
    "converged": "bool", "fallback": "bool", "primal_residual_kwh": "float64",
    "dual_residual_usd": "float64", "requests_sent": "int64", "requests_lost": "int64",
    "replies_received": "int64", "welfare_usd": "float64",
}


class AdmmCoordinator:
    """The distributed clearing of one interval's book (module docstring), driven one
    round at a time by :meth:`on_round`."""

    def __init__(self, book: P2PBook, *, comms: CommsLink, seed: int, max_iterations: int, patience: int,
                 gate_round: int = 2 * ADMM_MAX_ITERATIONS) -> None:
        self.book, self.k, self.max_iterations = book, book.interval, max_iterations
        self.patience, self.gate_round = patience, gate_round
        self.step = -1  # the step under way: even 2(i-1) the sellers' of iteration i, odd 2i-1 the buyers'
        self._sent_at = 0  # the round its requests went out
        self._held: dict[tuple[str, int], int] = {}  # (side, order) -> the step of the proposal held
        self.rounds = 0
        n = len(book.pairs)
        pairs = np.array(book.pairs, dtype=np.int64).reshape(-1, 2)
        self.sell_pairs = {int(i): np.flatnonzero(pairs[:, 0] == i) for i in np.unique(pairs[:, 0])}
        self.buy_pairs = {int(j): np.flatnonzero(pairs[:, 1] == j) for j in np.unique(pairs[:, 1])}
        self.charge = np.array(book.charge_usd_per_kwh, dtype=float)
        self.x = np.zeros(n)
        self.y = np.zeros(n)
        self.xr = np.zeros(n)
        self.y_old = np.zeros(n)
        self.pi = 0.5 * (np.array(book.lo_usd_per_kwh) + np.array(book.hi_usd_per_kwh))
        self.eps = TOL * math.sqrt(n)
        self.stats = AdmmStats()
        self._fresh_s: set[int] = set()
        self._fresh_b: set[int] = set()
        self._down = LossDraws(comms, seed, "admm", self.k)
        self.sent = self.lost = self.received = 0
        self.result: ClearingResult | None = None
        self.row: dict | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def on_round(self, h: int, replies: list[AdmmReply]) -> list[AdmmRequest]:
        """At round ``h`` (``timeline.admm_time``): take the ``replies`` that have arrived
        (of this interval; others are ignored, and a reply older than the value held is
        dropped); once every order of the step under way has answered, or after
        ``patience`` rounds, end the step (after a buyers' step: the price update and the
        test) and return the requests of the next step that the comms layer does not
        lose (none while waiting, and none once :attr:`done`: then :attr:`result` holds
        the clearing). The last round is the gate."""
        if self.done:
            raise RuntimeError(f"interval {self.k}: the distributed clearing is over")
        self.rounds = h
        for r in sorted((r for r in replies if r.interval == self.k), key=lambda r: r.step):
            self.received += 1
            key = (r.side, r.order)
            if r.step <= self._held.get(key, -1):
                continue
            self._held[key] = r.step
            (self.x if r.side == "sell" else self.y)[r.pairs] = r.proposal_kwh
            (self._fresh_s if r.side == "sell" else self._fresh_b).add(r.order)
        if not self.book.pairs:
            self.stats.converged = True
            self._finish()
            return []
        gate = h >= self.gate_round
        if self.step >= 0:
            side, orders = ("sell", self.sell_pairs) if self.step % 2 == 0 else ("buy", self.buy_pairs)
            waiting = any(self._held.get((side, i), -1) < self.step for i in orders)
            if waiting and h - self._sent_at < self.patience and not gate:
                return []
            if self.step % 2 == 1 and self._iterated((self.step + 1) // 2):
                self._finish()
                return []
        if gate:
            self._finish()
            return []
        self.step += 1
        self._sent_at = h
        if self.step % 2 == 1:  # the sellers' x is in: the buyers' step
            self.y_old = self.y.copy()
            self.xr = self.x if RELAX == 1.0 else RELAX * self.x + (1.0 - RELAX) * self.y_old
            return self._requests(self.step, "buy", self.buy_pairs, self.xr)
        return self._requests(self.step, "sell", self.sell_pairs, self.y)

    def _iterated(self, it: int) -> bool:
        """The end of iteration ``it`` (the buyers' y is in): the price update and the
        stopping test; whether the clearing is over."""
        rho = RHO_USD_PER_KWH2
        self.pi = self.pi + rho * (self.y - self.xr)
        r = norm(self.x - self.y)
        d = rho * norm(self.y - self.y_old)
        st = self.stats
        st.primal_residual_kwh.append(r)
        st.dual_residual_usd.append(d)
        st.rho_usd_per_kwh2.append(rho)
        st.iterations = it
        if len(self._fresh_s) == len(self.sell_pairs) and len(self._fresh_b) == len(self.buy_pairs):
            self._fresh_s, self._fresh_b = set(), set()  # every order has answered since the last test
            if r < self.eps + REL_TOL * max(norm(self.x), norm(self.y)) and d < self.eps + REL_TOL * norm(self.pi):
                st.converged = True
        return st.converged or it >= self.max_iterations

    def _requests(self, step: int, side: str, by_order: dict[int, np.ndarray], peer: np.ndarray) -> list[AdmmRequest]:
        orders = self.book.offers if side == "sell" else self.book.bids
        out = []
        for i, at in by_order.items():
            o = orders[i]
            self.sent += 1
            if not self._down.kept(f"market>{o.participant}"):
                self.lost += 1
                continue
            out.append(AdmmRequest(self.k, step, o.participant, side, i, o.price_usd_per_kwh, o.energy_kwh, at,
                                   self.charge[at], peer[at], self.pi[at]))
        return out

    def _finish(self) -> None:
        """The clearing: the consensus if converged, else everything to the grid."""
        st, book = self.stats, self.book
        if st.converged:
            result = _result(book, np.minimum(self.x, self.y).tolist(), self.pi.tolist())
        else:
            result = _result(book, [], [])  # the fallback at the gate closure
        self.result = replace(result, iterations=st.iterations, converged=st.converged)
        self.row = {
            "interval": self.k, "n_pairs": len(book.pairs), "n_orders": len(self.sell_pairs) + len(self.buy_pairs),
            "rounds": self.rounds, "iterations": st.iterations, "converged": st.converged, "fallback": not st.converged,
            "primal_residual_kwh": st.primal_residual_kwh[-1] if st.primal_residual_kwh else 0.0,
            "dual_residual_usd": st.dual_residual_usd[-1] if st.dual_residual_usd else 0.0,
            "requests_sent": self.sent, "requests_lost": self.lost, "replies_received": self.received,
            "welfare_usd": result.welfare_usd,
        }
