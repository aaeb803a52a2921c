"""The market's role, shared by the HELICS market federate and the in-process engine.

At market time ``k`` (see federates/common/timeline.py) the role first settles
interval ``k-1`` from the metered interval energies and curtailment notices of
``k-1``, then clears interval ``k`` from the orders of ``k``. It keeps the bid, trade,
clearing, settlement, curtailed-trade and envelope rows recorded since the last
:meth:`MarketRole.drain_tables` (:meth:`MarketRole.tables` drains them all); beyond
those rows it holds only the pending clearing of the interval not yet settled.

Meters are named after participants: ``IntervalEnergy.meter`` is the participant id.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from federates.common.admm import AdmmReply, AdmmRequest
from federates.common.comms import CommsLink
from federates.common.config import StudyFile
from federates.common.conservation import ENERGY_TOLERANCE_KWH, MONEY_TOLERANCE_USD, Conservation
from federates.common.messages import (
    GRID,
    Confirmation,
    CurtailmentNotice,
    DemandResponseDelivery,
    GridConstraint,
    IntervalEnergy,
    LossEnergy,
    OperatingEnvelope,
    Order,
    Trade,
    peer_energy_by_order,
)
from federates.common.rows import Rows, adopt
from federates.common.tariff import TABLE as TARIFF_TABLE
from federates.market.admm_distributed import ADMM_ROUNDS_DTYPES, AdmmCoordinator
from federates.market.books import LEDGER_TOTALS, ledger_differences, money_flows
from federates.market.community import ClearingResult
from federates.market.ledger import (
    LEDGER_FILE,
    KeyRing,
    Ledger,
    bid_record_of,
    block_float_columns,
    curtailment_record,
    make_record,
    settlement_record,
    trade_record,
    verified_bids,
)
from federates.market.mechanisms import MECHANISMS
from federates.market.p2p import build_book, electrical_distance_charges
from federates.market.prices import with_confirmation_prices
from federates.market.settlement import (
    DR_COLUMNS,
    SettlementRow,
    dr_paid_kwh,
    market_price_of,
    settle_interval,
)

if TYPE_CHECKING:
    from federates.common.study import Study

BIDS_DTYPES: dict[str, str] = {
    "interval": "int64", "participant": "object", "side": "object",
    "energy_kwh": "float64", "price_usd_per_kwh": "float64", "bus": "object", "phase": "object",
    "requested_kwh": "float64", "cut_reason": "object",
}
#: why an order's accepted energy (``bids.energy_kwh``) is below what it asked for
#: (``bids.requested_kwh``): clipped to the DSO's operating envelope, to the grid
#: constraints' acceptance LP, dropped for a missing or invalid signature, or received
#: after its interval was cleared (late) / for no interval being cleared now
CUT_ENVELOPE, CUT_GRID, CUT_SIGNATURE, CUT_LATE, CUT_WRONG_INTERVAL = (
    "envelope", "grid_constraint", "invalid_signature", "late", "wrong_interval")
CUT_REASONS = ("", CUT_ENVELOPE, CUT_GRID, CUT_SIGNATURE, CUT_LATE, CUT_WRONG_INTERVAL)
TRADES_DTYPES: dict[str, str] = {
    "interval": "int64", "trade_id": "object", "seller": "object", "buyer": "object",
    "energy_kwh": "float64",
    "price_usd_per_kwh": "float64", "fee_usd": "float64", "kind": "object",
}
CLEARING_DTYPES: dict[str, str] = {
    "interval": "int64", "status": "object", "price_usd_per_kwh": "float64",
    "traded_kwh": "float64", "unmatched_buy_kwh": "float64", "unmatched_sell_kwh": "float64",
    "welfare_usd": "float64", "n_bids": "int64", "n_offers": "int64", "late_orders": "int64",
    "iterations": "int64", "converged": "bool", "rejected_orders": "int64",
    "envelope_clipped_kwh": "float64",
}
CURTAILED_TRADES_DTYPES: dict[str, str] = {
    "interval": "int64", "trade_id": "object", "seller": "object", "buyer": "object",
    "kind": "object", "scheduled_kwh": "float64", "curtailed_kwh": "float64", "limit": "object",
}
ENVELOPES_DTYPES: dict[str, str] = {
    "interval": "int64", "participant": "object", "export_max_kw": "float64",
    "import_max_kw": "float64", "binding": "object",
}
_ROW_DTYPES = {"int": "int64", "float": "float64", "str": "object", "bool": "bool"}
#: the settlements table's columns with demand response on; without it the
#: demand-response ones (``settlement.DR_COLUMNS``) are left out
SETTLEMENTS_DTYPES: dict[str, str] = {
    f.name: _ROW_DTYPES[str(f.type)] for f in fields(SettlementRow)
}


def _without_dr(row: SettlementRow) -> dict:
    """A settlement row's fields but the demand-response ones (demand response off)."""
    body = dict(vars(row))
    for c in DR_COLUMNS:
        del body[c]
    return body


class _PairDistances(Mapping[tuple[str, str], float]):
    """Read-only (a, b) -> distance [km] view of an n x n matrix (no n^2 dict)."""

    def __init__(self, index: dict[str, int], matrix: np.ndarray) -> None:
        self._index = index
        self._m = matrix

    def __getitem__(self, pair: tuple[str, str]) -> float:
        a, b = pair
        try:
            return float(self._m[self._index[a], self._index[b]])
        except KeyError:
            raise KeyError(pair) from None

    def __contains__(self, pair: object) -> bool:
        return (isinstance(pair, tuple) and len(pair) == 2
                and pair[0] in self._index and pair[1] in self._index)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((a, b) for a in self._index for b in self._index)

    def __len__(self) -> int:
        return len(self._index) ** 2


def _frame(rows: list[dict], dtypes: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly ``dtypes``' columns and dtypes, also when empty."""
    df = pd.DataFrame(rows, columns=list(dtypes))
    return df.astype(dtypes).reset_index(drop=True)


def _numbered(k: int, trades: Sequence[Trade]) -> Rows:
    """The trades of interval ``k``'s clearing, each with its ``trade_id`` ``"<k>-<j>"``
    (``j`` its position in the clearing): the id its rows in ``trades`` and
    ``curtailed_trades`` carry. As columns (``Rows``: one column replaced)."""
    return Rows.of(Trade, trades).with_columns(
        trade_id=list(map(f"{k}-".__add__, map(str, range(len(trades))))))


def _replaced(o: Order, **changes: object) -> Order:
    """``dataclasses.replace(o, **changes)`` without re-running Order's __init__
    (a quarter of the time; Order has no __post_init__ to skip)."""
    (out,) = adopt(Order, [{**vars(o), **changes}])
    return out



def _without_backstop(result: ClearingResult, orders: list[Order], retail_usd_per_kwh: float) -> ClearingResult:
    """``result`` without the utility's backstop for the bids that want none
    (``Order.backstop`` False, the flexible devices' of ``prosumers.flex_dispatch:
    cleared``): each participant's confirmed peer purchase is given to its bids as the
    greedy community mechanisms matched them (``peer_energy_by_order``); what its
    no-backstop bids did not get comes off its grid purchase (trade and confirmation)
    and so off its schedule. The ``clearing`` table still counts it unmatched."""
    buys: dict[str, list[Order]] = {}
    for o in orders:
        if o.side == "buy":
            buys.setdefault(o.participant, []).append(o)
    cut: dict[str, float] = {}
    for c in result.confirmations:
        mine = buys.get(c.participant, [])
        if all(o.backstop for o in mine):
            continue
        got = peer_energy_by_order(mine, c.peer_bought_kwh, retail_usd_per_kwh)
        u = math.fsum(o.energy_kwh - g for o, g in zip(mine, got, strict=True) if not o.backstop)
        u = min(u, c.grid_bought_kwh)
        if u > 0.0:
            cut[c.participant] = u
    if not cut:
        return result
    confirmations = [replace(c, grid_bought_kwh=c.grid_bought_kwh - cut[c.participant],
                             scheduled_kwh=c.scheduled_kwh - cut[c.participant])
                     if c.participant in cut else c for c in result.confirmations]
    trades = []
    for t in result.trades:
        if t.seller == GRID and t.buyer in cut:
            left = t.energy_kwh - cut[t.buyer]
            if left <= 1e-12:
                continue
            t = replace(t, energy_kwh=left)
        trades.append(t)
    return replace(result, confirmations=confirmations, trades=trades)


class _Opening(NamedTuple):
    """What the opening block of interval k and its clearing's records are made from,
    once k is cleared (:meth:`MarketRole._book_opening`)."""

    #: every order received: (order, energy accepted for clearing [kWh], cut reason)
    rows: list[tuple[Order, float, str]]
    late: int  # orders of another interval
    #: each signed order of a known participant with the payload and signature checked
    verified: list[tuple[Order, tuple[bytes, bytes]]]
    env_k: list[OperatingEnvelope]  # the envelopes the clearing used
    rejected: int  # orders without a valid signature
    clipped_kwh: float  # energy the envelopes and grid constraints cut [kWh]


class MarketTime(NamedTuple):
    """What the market sends at the market time of interval k."""

    #: the confirmations of k, to the prosumers and the DSO (as columns: ``Rows``)
    confirmations: Sequence[Confirmation]
    #: each participant's scheduled power of k [kW, + import], to the feeder
    schedule_p_kw: np.ndarray
    #: with grid constraints (``market.network_aware: constraints``) the export limits
    #: the constrained clearing set, to the feeder's inverters; None without them
    inverter_envelopes: list[OperatingEnvelope] | None

class MarketRole:
    """Clears and settles the market, one market time after the other.

    ``cfg``: the study; ``participants``: the prosumer ids in schedule-vector order;
    ``distance_km``: their n x n electrical distances [km] (``Study.distance_km``).
    With ``topology: p2p`` and ``market.p2p_charge_usd_per_kwh_per_km > 0`` every
    (seller, buyer) pair pays that rate x its distance [USD/kWh]
    (``p2p.electrical_distance_charges``); then ``distance_km`` is required. The
    hybrid topology's upper level trades between aggregators and stays uncharged.
    """

    @classmethod
    def from_study(cls, study: Study) -> MarketRole:
        """The study's market, its ledger in the run folder (``ledger.zst``)."""
        return cls(study.cfg, study.participants, study.run_dir / LEDGER_FILE, distance_km=study.distance_km)

    def __init__(
        self,
        cfg: StudyFile,
        participants: list[str],
        ledger_path: Path | None = None,
        *,
        distance_km: np.ndarray | None = None,
    ):
        m = cfg.market
        by_name = MECHANISMS.get(m.topology, {})
        if m.mechanism not in by_name:
            allowed = ", ".join(f"topology={t!r} with mechanism={k!r}" for t, names in MECHANISMS.items()
                                for k in names)
            raise ValueError(
                f"market topology={m.topology!r} with mechanism={m.mechanism!r} is not "
                f"implemented; allowed: {allowed}"
            )
        if len(set(participants)) != len(participants):
            raise ValueError("participants must be unique")
        if GRID in participants:
            raise ValueError(f"{GRID!r} is the utility and cannot be a participant")
        self.cfg = cfg
        self.participants: list[str] = list(participants)
        self._index = {p: i for i, p in enumerate(self.participants)}
        self._clear = by_name[m.mechanism]  # the clearing function (federates.market.mechanisms)
        self._charge_rate = float(m.p2p_charge_usd_per_kwh_per_km)
        self._distances: _PairDistances | None = None
        if m.topology == "p2p" and self._charge_rate > 0:
            if distance_km is None:
                raise ValueError(
                    "market.p2p_charge_usd_per_kwh_per_km > 0 needs the customers' electrical "
                    "distances (distances_km.npy in the run folder, written by prepare_run)"
                )
            d = np.asarray(distance_km, dtype=float)
            n = len(self.participants)
            if d.shape != (n, n):
                raise ValueError(f"distance_km has shape {d.shape}, expected ({n}, {n})")
            self._distances = _PairDistances(self._index, d)
        self._timeline = cfg.timeline
        #: the utility's retail and feed-in prices of each interval (market.tariff)
        self.tariff = cfg.tariff
        self._tariff_rows: list[int] = []  # intervals cleared, for the ``tariff`` table
        self._last_k: int | None = None
        self._pending: dict[int, ClearingResult] = {}
        #: the book-keeping a market time leaves for :meth:`keep_books` (closures, in order)
        self._books_due: list = []
        self._bids: list[dict] = []
        self._trades: list[dict] = []
        self._clearing: list[dict] = []
        self._settlements: list[dict] = []
        self._curtailed_trades: list[dict] = []
        self._envelopes: list[dict] = []
        # the signed ledger (ledger.zst): one block per market time. Participant keys
        # are derived from the study seed here, a study simplification: the prosumers
        # should sign their own bids and the market verify them.
        self._keys: KeyRing | None = None
        self._ledger: Ledger | None = None
        self.books = Conservation("market", cfg.feeder.conservation)  # the live money and ledger checks
        self._imbalance_rule = cfg.market.imbalance_price
        # the distributed P2P clearing (market.mechanism admm_distributed): its gate
        # closure in iterations, the clearing under way and what it will finish with
        self._admm_max_iterations = (m.admm_max_iterations if m.topology == "p2p" and m.mechanism == "admm_distributed"
                                     else None)
        self._comms = CommsLink.of(cfg.comms)
        self._admm: AdmmCoordinator | None = None
        self._admm_open: _Opening | None = None
        self._admm_constraints = False
        self._admm_rows: list[dict] = []
        self._loss_price = cfg.market.loss_price
        dr = cfg.controllers.demand_response
        #: demand response (``controllers.demand_response``): its deliveries are paid in
        #: settlement (rule 3c); without it the settlements and the ledger have no DR columns
        self._dr_price: float | None = float(dr.price_usd_per_kwh) if cfg.controllers.enabled and dr.enabled else None
        self._settlement_dtypes = (SETTLEMENTS_DTYPES if self._dr_price is not None else
                                   {c: t for c, t in SETTLEMENTS_DTYPES.items() if c not in DR_COLUMNS})
        if ledger_path is not None and m.ledger:
            self._keys = KeyRing.from_seed(cfg.study.seed, self.participants)
            self._ledger = Ledger(ledger_path, self._keys, difficulty_bits=m.ledger_pow_bits)

    @property
    def n_intervals(self) -> int:
        return self._timeline.n_intervals

    def on_market_time(
        self,
        k: int,
        orders: list[Order],
        energies: list[IntervalEnergy],
        notices: list[CurtailmentNotice],
        envelopes: list[OperatingEnvelope] | None = None,
        constraints: list[GridConstraint] | None = None,
        losses: list[LossEnergy] | None = None,
        deliveries: list[DemandResponseDelivery] | None = None,
    ) -> MarketTime | None:
        """Settle ``k-1`` (if ``k >= 1``), then clear ``k`` (if ``k < n_intervals``).

        ``orders``: the bids and offers received for ``k`` (orders of another interval
        are ignored and counted as ``late_orders``); ``energies`` / ``notices``: the
        metered energy [kWh, + import] and curtailments [kWh] of ``k-1`` (items of
        another interval are ignored; several notices of one participant add up; of
        several readings of one meter the last counts). Returns the confirmations of
        ``k`` and ``schedule_p_kw`` [kW, + import]: scheduled_kwh / interval_h per
        participant, 0 without a confirmation (:class:`MarketTime`). At ``k ==
        n_intervals`` only settles and returns no confirmations and zeros. Market times
        must come in increasing order.

        ``envelopes`` (``market.network_aware: envelopes``): the DSO's operating
        envelopes for ``k``; each participant's offers (bids) are clipped, cheapest
        offer (dearest bid) first, to ``export_max_kw`` (``import_max_kw``) x the
        interval length before clearing. The clipped energy is in the ``clearing``
        table, each order's original energy in ``bids.requested_kwh``, and every
        envelope in the ledger.

        ``constraints`` (``market.network_aware: constraints``): the DSO's linearised
        grid limits for ``k``; the orders the grid can take are chosen by a
        welfare-maximising LP under them
        (:func:`federates.market.network_constraints.accept_within_grid`) before the
        configured mechanism clears them. Every participant whose sales the LP clipped
        gets an envelope (its accepted sales / purchases per interval hour) in
        ``MarketTime.inverter_envelopes``, the ``envelopes`` table and the ledger; the
        feeder's inverters hold its export to it.

        ``losses`` (``market.settle_losses``): each customer's share of the feeder's
        losses of ``k-1`` [kWh], charged in its settlement at ``market.loss_price``.

        ``deliveries`` (``controllers.demand_response``): what the customers the DSO
        called cut in ``k-1``, paid in its settlement (up to each call) at the
        demand-response price by the grid operator, and signed into its closing block.

        With ``market.mechanism: admm_distributed`` (k < n_intervals) the clearing of
        ``k`` only begins here and None is returned: :meth:`admm_round` drives it
        and returns the MarketTime when it is over.
        """
        n = self.n_intervals
        if not 0 <= k <= n:
            raise ValueError(f"market time k={k} is outside 0..{n}")
        if self._last_k is not None and k <= self._last_k:
            raise ValueError(f"market time k={k} after k={self._last_k}: must increase")
        self._last_k = k
        if self._admm is not None:
            raise RuntimeError(f"market time k={k}: the distributed clearing of {self._admm.k} is not over")

        self.keep_books()  # what the last market time left, if nobody kept it yet
        # the ledger gets two blocks per market time: the closing block of k-1
        # (curtailments, settlements) and the opening block of k (bids, trades); both
        # are left to keep_books, once the confirmations of k are out
        if k >= 1:
            self._books_due.append(partial(self._close_interval, k - 1, energies, notices, losses or [],
                                           deliveries or []))
        if k == n:
            self.keep_books()
            if self._ledger is not None:
                self._ledger.close()
            return MarketTime([], np.zeros(len(self.participants), dtype=float), None)
        opened = self._open_interval(k, orders, envelopes or [], constraints or [])
        if opened is None:  # the distributed clearing has begun: admm_round ends it
            self._admm_constraints = bool(constraints)
            return None
        return self._market_time_out(*opened, bool(constraints))

    def admm_round(self, k: int, h: int, replies: list[AdmmReply]) -> tuple[list[AdmmRequest], MarketTime | None]:
        """Round ``h`` of the distributed clearing of ``k`` (``market.mechanism:
        admm_distributed``, begun by :meth:`on_market_time`, which then returned None;
        federates.market.admm_distributed): take the peers' ``replies`` that have
        arrived; the requests to send, and, once the clearing is over, what the market
        sends at its market time (then no requests)."""
        admm = self._admm
        if admm is None or admm.k != k:
            raise RuntimeError(f"interval {k}: no distributed clearing under way")
        requests = admm.on_round(h, replies)
        if not admm.done:
            return requests, None
        self._admm = None
        self._admm_rows.append(admm.row)
        result = self._numbered_result(admm.result)
        opening, self._admm_open = self._admm_open, None
        self._finish_open(k, result, opening)
        return [], self._market_time_out(result, opening.env_k, self._admm_constraints)

    def keep_books(self) -> None:
        """The book-keeping of the last market time, which :meth:`on_market_time` (and
        :meth:`admm_round`) leave so that the confirmations and the schedule go out
        first: the settlement of k-1 and its closing block (with the live money and
        ledger checks), then the records of k's clearing and its opening block. Nothing
        the clearing of k returns depends on it. The federate keeps the books while it
        waits for its next time (``Door.later``), in parallel with the feeder's steps;
        the in-process engine right after the market time. The next market time,
        :meth:`drain_tables` and :meth:`tables` keep what is still due first, in order."""
        while self._books_due:
            self._books_due.pop(0)()

    def _market_time_out(self, result: ClearingResult, env_k: list[OperatingEnvelope],
                         constrained: bool) -> MarketTime:
        """What the market sends once ``k`` is cleared: the confirmations, the schedule,
        and with grid constraints the envelopes the clearing set."""
        schedule_p_kw = np.zeros(len(self.participants), dtype=float)
        interval_h = self._timeline.interval_h
        confirmations = Rows.of(Confirmation, result.confirmations)
        for p, kwh in zip(confirmations.column("participant"), confirmations.column("scheduled_kwh"),
                          strict=True):
            i = self._index.get(p)
            if i is not None:
                schedule_p_kw[i] = kwh / interval_h
        return MarketTime(confirmations, schedule_p_kw, env_k if constrained else None)

    def _close_interval(self, k: int, energies: list[IntervalEnergy], notices: list[CurtailmentNotice],
                        losses: list[LossEnergy], deliveries: list[DemandResponseDelivery]) -> None:
        """Settle interval ``k`` and seal its closing block: its curtailments, the trades
        they cut, the demand-response deliveries, its settlements (then check the block
        against the settlement)."""
        deliveries = self._deliveries_of(k, deliveries)
        rows, cut_rows = self._settle(k, energies, notices, losses, deliveries)
        if self._keys is not None:
            closing = [curtailment_record(self._keys, nt) for nt in notices if nt.interval == k]
            closing += [make_record(self._keys, "trade_curtailment", k, r) for r in cut_rows]
            closing += [make_record(self._keys, "demand_response", k, d) for d in deliveries]
            if self._dr_price is not None:
                closing += [settlement_record(self._keys, k, r) for r in rows]
            else:  # the settlement records as before demand response existed
                closing += [settlement_record(self._keys, k, _without_dr(r)) for r in rows]
            self._seal(k, closing)
            self._check_ledger(k, rows)

    def _deliveries_of(self, k: int, deliveries: list[DemandResponseDelivery]) -> list[DemandResponseDelivery]:
        """The demand-response deliveries of ``k`` in site order (a split prosumers
        federate's parts send theirs separately), none without demand response."""
        if self._dr_price is None:
            return []
        mine = [d for d in deliveries if d.interval == k]
        return sorted(mine, key=lambda d: (self._index.get(d.participant, len(self._index)), d.participant))

    def _open_interval(self, k: int, orders: list[Order], envelopes: list[OperatingEnvelope],
                       constraints: list[GridConstraint]
                       ) -> tuple[ClearingResult, list[OperatingEnvelope]] | None:
        """Clear interval ``k`` from the signed orders of ``k`` the grid admits, record
        every order received, and seal the opening block: the bids, the envelopes the
        clearing used, the trades. Returns the result and those envelopes (None when the
        distributed clearing begins: :meth:`admm_round` finishes)."""
        raw = [o for o in orders if o.interval == k]
        # every order received keeps a bids row: (order, energy accepted for clearing, cut reason)
        rows: list[tuple[Order, float, str]] = [
            (o, 0.0, CUT_LATE if o.interval < k else CUT_WRONG_INTERVAL) for o in orders if o.interval != k]
        late = len(orders) - len(raw)
        raw, unsigned, verified = self._signed(raw)
        rows += [(o, 0.0, CUT_SIGNATURE) for o in unsigned]
        mine, accepted, reason, env_k = self._admitted(k, raw, envelopes, constraints)
        rows += [(o, a, why) for o, a, why in zip(raw, accepted, reason, strict=True)]
        opening = _Opening(rows, late, verified, env_k, len(unsigned),
                           float(sum(o.energy_kwh for o in raw) - sum(o.energy_kwh for o in mine)))
        if self._admm_max_iterations is not None:
            self._admm = AdmmCoordinator(
                build_book(mine, interval=k, retail_usd_per_kwh=self.tariff.retail(k),
                           feed_in_usd_per_kwh=self.tariff.feed_in(k), **self._charges(mine)),
                comms=self._comms, seed=self.cfg.study.seed, max_iterations=self._admm_max_iterations,
                patience=self.cfg.market.admm_patience_rounds)
            self._admm_open = opening
            return None
        result = self._cleared(k, mine)
        self._finish_open(k, result, opening)
        return result, env_k

    def _finish_open(self, k: int, result: ClearingResult, opening: _Opening) -> None:
        """The rest of :meth:`_open_interval` once ``k`` is cleared: keep the result for
        the settlement; the clearing's records and its opening block left to
        :meth:`keep_books`."""
        self._pending[k] = result
        self._books_due.append(partial(self._book_opening, k, result, opening))

    def _book_opening(self, k: int, result: ClearingResult, opening: _Opening) -> None:
        """Record the clearing of ``k`` and the envelopes it used, and seal its opening
        block: the bids, the envelopes, the trades."""
        self._envelopes.extend(dict(vars(e)) for e in opening.env_k)
        self._record_clearing(k, opening, result)
        if self._keys is not None:
            # the bid records of the payloads verified in _signed
            block = [bid_record_of(o, payload, sig) for o, (payload, sig) in opening.verified]
            block += [make_record(self._keys, "envelope", k, e) for e in opening.env_k]
            block += [trade_record(self._keys, t) for t in result.trades]
            self._seal(k, block)

    def _signed(self, orders: list[Order]
                ) -> tuple[list[Order], list[Order], list[tuple[Order, tuple[bytes, bytes]]]]:
        """With a ledger only the orders their participant signed are cleared: ``(signed,
        not signed, each signed order of a known participant with the payload and
        signature checked)``, from which the books make its bid record; without one
        every order counts as signed."""
        if self._keys is None:
            return orders, [], []
        checked = verified_bids(self._keys, orders)
        signed = [o for o, v in zip(orders, checked, strict=True) if v is not None]
        unsigned = [o for o, v in zip(orders, checked, strict=True) if v is None]
        verified = [(o, v) for o, v in zip(orders, checked, strict=True)
                    if v is not None and o.participant in self._index]
        return signed, unsigned, verified

    def _admitted(self, k: int, orders: list[Order], envelopes: list[OperatingEnvelope],
                  constraints: list[GridConstraint]
                  ) -> tuple[list[Order], list[float], list[str], list[OperatingEnvelope]]:
        """What the clearing of ``k`` takes of ``orders`` (``market.network_aware``): the
        orders to clear (with their community, clipped to the envelopes of ``k``, then
        to what the grid constraints of ``k`` accept; none empty); per order given the
        energy accepted [kWh] and why it was cut (``CUT_REASONS``); the envelopes the
        clearing used or the grid acceptance set."""
        mine = self._with_communities(orders)
        reason = [""] * len(mine)
        env_k = [e for e in envelopes if e.interval == k]
        if env_k:
            clipped = self._clip_to_envelopes(mine, env_k)  # aligned with mine
            reason = [CUT_ENVELOPE if c.energy_kwh != o.energy_kwh else "" for o, c in zip(mine, clipped, strict=True)]
            mine = clipped
        accepted = [o.energy_kwh for o in mine]
        mine = [o for o in mine if o.energy_kwh > 0]
        cons_k = [c for c in constraints if c.interval == k]
        if cons_k:
            pos = [j for j, e in enumerate(accepted) if e > 0]
            mine, env_k, got = self._accept_within_grid(k, mine, cons_k)
            for j, a in zip(pos, got, strict=True):
                if a != accepted[j]:
                    accepted[j] = a
                    reason[j] = reason[j] or CUT_GRID
        return mine, accepted, reason, env_k

    def _cleared(self, k: int, orders: list[Order]) -> ClearingResult:
        """``orders`` cleared by the study's mechanism (with the P2P distance charges
        where set), the confirmations' prices set and the trades numbered."""
        retail = self.tariff.retail(k)
        result = self._clear(orders, interval=k, retail_usd_per_kwh=retail,
                             feed_in_usd_per_kwh=self.tariff.feed_in(k), **self._charges(orders))
        if any(not o.backstop for o in orders):
            result = _without_backstop(result, orders, retail)
        return self._numbered_result(result)

    def _charges(self, orders: list[Order]) -> dict:
        """The P2P distance charges of ``orders`` as a keyword argument, where set."""
        if self._distances is None:
            return {}
        known = [o for o in orders if o.participant in self._index]
        return {"charges": electrical_distance_charges(known, self._distances, self._charge_rate)}

    @staticmethod
    def _numbered_result(cleared: ClearingResult) -> ClearingResult:
        """The confirmations' prices set and the trades numbered."""
        result = with_confirmation_prices(cleared)
        return replace(result, trades=_numbered(result.interval, result.trades))

    def _clip_to_envelopes(self, orders: list[Order], envelopes: list[OperatingEnvelope]) -> list[Order]:
        """Orders with each participant's sell (buy) energy within its envelope [kWh], in
        the order given (an order clipped to nothing has energy 0: the caller drops it)."""
        h = self._timeline.interval_h
        room: dict[tuple[str, str], float] = {}
        for e in envelopes:
            room[(e.participant, "sell")] = max(0.0, e.export_max_kw) * h
            room[(e.participant, "buy")] = max(0.0, e.import_max_kw) * h
        # offers cheapest first and bids dearest first keep the most valuable energy
        order = sorted(range(len(orders)), key=lambda i: (
            orders[i].participant, orders[i].side,
            orders[i].price_usd_per_kwh if orders[i].side == "sell" else -orders[i].price_usd_per_kwh, i))
        out = list(orders)
        for i in order:
            o = orders[i]
            key = (o.participant, o.side)
            if key not in room:
                continue
            e = min(o.energy_kwh, room[key])
            room[key] -= e
            if e != o.energy_kwh:
                out[i] = _replaced(o, energy_kwh=e)
        return out

    def _accept_within_grid(self, k: int, orders: list[Order],
                            constraints: list[GridConstraint]
                            ) -> tuple[list[Order], list[OperatingEnvelope], list[float]]:
        """The orders the grid constraints let through, the energy accepted of each
        order given [kWh, in the order given], and an envelope per participant
        whose sales were clipped or who sells into a binding constraint (accepted sales
        and purchases per interval hour; the controllers hold its export to the first). Clipped purchases show in the
        ``bids`` table only (loads are not capped physically)."""
        from federates.market.network_constraints import accept_within_grid

        acc = accept_within_grid(orders, constraints, interval_h=self._timeline.interval_h,
                                 retail_usd_per_kwh=self.tariff.retail(k), feed_in_usd_per_kwh=self.tariff.feed_in(k))
        h = self._timeline.interval_h
        accepted: dict[tuple[str, str], float] = {}
        for o in acc.orders:
            key = (o.participant, o.side)
            accepted[key] = accepted.get(key, 0.0) + o.energy_kwh
        requested: dict[tuple[str, str], float] = {}
        for o in orders:
            key = (o.participant, o.side)
            requested[key] = requested.get(key, 0.0) + max(o.energy_kwh, 0.0)
        clipped = {key for key, e in requested.items() if accepted.get(key, 0.0) < e - 1e-9}
        binding = set(acc.binding)
        out = []
        # sellers in a binding row are held to what they were accepted for, clipped or
        # not: the row assumed exactly that export
        in_binding = {p for c in constraints if c.name in binding for p in c.participants}
        sellers = {p for p, side in requested if side == "sell"}
        for p in sorted({p for p, side in clipped if side == "sell"} | (in_binding & sellers)):
            names = sorted(c.name for c in constraints if c.name in binding and p in c.participants)
            out.append(OperatingEnvelope(
                participant=p, interval=k, export_max_kw=accepted.get((p, "sell"), 0.0) / h,
                import_max_kw=accepted.get((p, "buy"), 0.0) / h, binding=";".join(names)))
        return acc.orders, out, acc.accepted_kwh

    def _with_communities(self, orders: list[Order]) -> list[Order]:
        """The orders, each with its community set from its location where it came
        without one (``market.communities``: the feeder phase or bus it sits on; hybrid
        topology); the new orders made at once (``adopt``)."""
        by_phase = self.cfg.market.communities == "phase"
        out = list(orders)
        at, changed = [], []
        for i, o in enumerate(orders):
            if o.community:
                continue
            where = o.phase if by_phase else o.bus
            if where:
                at.append(i)
                changed.append({**vars(o), "community": where})
        for i, o in zip(at, adopt(Order, changed), strict=True):
            out[i] = o
        return out

    def _seal(self, k: int, records: list[dict]) -> None:
        if self._ledger is not None:
            self._ledger.append_block(k, records)

    def _check_ledger(self, k: int, rows: list[SettlementRow]) -> None:
        """The live ledger check (federates.common.conservation): the settlement records
        of the block just written, read back from its bytes, are one per settlement row
        and hold the rows' values, so the ledger's totals are the settlement's."""
        if self._ledger is None:
            return
        n, differ = ledger_differences(block_float_columns(self._ledger.last_block_bytes), rows)
        self.books.check("ledger", interval=k, subject="settlement records", expected=len(rows), actual=n,
                         tolerance=0.0, unit="records")
        self.books.n_checked += len(LEDGER_TOTALS) - len(differ)
        for col, unit, in_rows, in_ledger, worst in differ:
            self.books.check("ledger", interval=k, subject=col, expected=in_rows, actual=in_ledger, error=worst,
                             tolerance=ENERGY_TOLERANCE_KWH if unit == "kWh" else MONEY_TOLERANCE_USD, unit=unit,
                             detail=("totals of the ledger's settlement records vs the settlement rows; "
                                     f"the largest difference of one record: {worst:.6g} {unit}"))

    def _settle(
        self, k: int, energies: list[IntervalEnergy], notices: list[CurtailmentNotice],
        losses: list[LossEnergy], deliveries: list[DemandResponseDelivery],
    ) -> tuple[list[SettlementRow], list[dict]]:
        """Settle interval ``k``: its settlement rows and curtailed-trade rows (both also
        kept for the tables)."""
        result = self._pending.pop(k, None)
        confs = result.confirmations if result else []
        trades: list[Trade] = result.trades if result else []
        metered: dict[str, float] = {}
        for e in energies:
            if e.interval == k:
                metered[e.meter] = e.energy_kwh
        curtailed: dict[str, float] = {}
        by_limit: dict[str, dict[str, float]] = {}
        for nt in notices:
            if nt.interval == k:
                curtailed[nt.participant] = curtailed.get(nt.participant, 0.0) + nt.curtailed_kwh
                lim = by_limit.setdefault(nt.participant, {})
                lim[nt.limit] = lim.get(nt.limit, 0.0) + nt.curtailed_kwh
        market_price = market_price_of(list(confs), k)
        loss_kwh: dict[str, float] = {}
        for x in losses:
            if x.interval == k:
                loss_kwh[x.participant] = loss_kwh.get(x.participant, 0.0) + x.loss_kwh
        # the loss price: the interval's market price (else retail) or retail (runner/losses_table.py)
        retail, feed_in = self.tariff.retail(k), self.tariff.feed_in(k)
        loss_price = (market_price if self._loss_price == "clearing" and market_price is not None
                      else retail)
        dr_kwh = dr_paid_kwh(deliveries, k, self._timeline.interval_h) if self._dr_price is not None else {}
        settled = settle_interval(
            k, list(confs), list(trades), metered, curtailed,
            retail_usd_per_kwh=retail, feed_in_usd_per_kwh=feed_in,
            participants=self.participants, imbalance_rule=self._imbalance_rule,
            loss_kwh=loss_kwh or None, loss_price_usd_per_kwh=loss_price if loss_kwh else None,
            dr_kwh=dr_kwh or None, dr_price_usd_per_kwh=self._dr_price,
        )
        rows, cuts = settled.rows, settled.trade_cuts
        self._settlements.extend(dict(vars(r)) for r in rows)
        for flow, expected, actual in money_flows(
                rows, trades, cuts, retail_usd_per_kwh=retail, feed_in_usd_per_kwh=feed_in,
                imbalance_rule=self._imbalance_rule, market_price_usd_per_kwh=market_price,
                loss_charges_usd=[x * loss_price for x in loss_kwh.values()],
                dr_payments_usd=(None if self._dr_price is None else
                                 [x * self._dr_price for x in dr_kwh.values()])):
            self.books.check("money", interval=k, subject=flow, expected=expected, actual=actual,
                             tolerance=MONEY_TOLERANCE_USD, unit="USD",
                             detail="from the clearing's record vs the sum of the parties' settlement rows")
        cut_rows = []
        for t, x in cuts:
            limits = by_limit.get(t.seller, {})
            cut_rows.append({
                "interval": k, "trade_id": t.trade_id, "seller": t.seller, "buyer": t.buyer,
                "kind": "grid" if GRID in (t.seller, t.buyer) else "peer",
                "scheduled_kwh": t.energy_kwh, "curtailed_kwh": x,
                # the seller's curtailment by limit: the largest names the trade's cut
                "limit": max(limits, key=limits.get) if limits else "",
            })
        self._curtailed_trades.extend(cut_rows)
        return rows, cut_rows

    def _record_clearing(self, k: int, opening: _Opening, r: ClearingResult) -> None:
        """``opening.rows``: every order received at market time ``k`` as submitted, the
        energy accepted for clearing [kWh] and why it was cut (``CUT_REASONS``; "" = not
        cut)."""
        bids = sorted(opening.rows, key=lambda x: (x[0].interval, x[0].participant, x[0].side,
                                           x[0].price_usd_per_kwh, x[1], x[0].bus, x[0].phase))
        self._bids.extend(
            {"interval": o.interval, "participant": o.participant, "side": o.side,
             "energy_kwh": accepted, "price_usd_per_kwh": o.price_usd_per_kwh,
             "bus": o.bus, "phase": o.phase, "requested_kwh": o.energy_kwh, "cut_reason": why}
            for o, accepted, why in bids
        )
        trades = Rows.of(Trade, r.trades)  # the rows from the columns: no Trade made here
        self._trades.extend(
            {"interval": i, "trade_id": j, "seller": s, "buyer": b, "energy_kwh": e,
             "price_usd_per_kwh": p, "fee_usd": f, "kind": "grid" if GRID in (s, b) else "peer"}
            for i, s, b, e, p, f, j in trades.tuples()
        )
        self._tariff_rows.append(k)
        self._clearing.append({
            "interval": k, "status": r.status,
            "price_usd_per_kwh": math.nan if r.price_usd_per_kwh is None else r.price_usd_per_kwh,
            "traded_kwh": r.traded_kwh, "unmatched_buy_kwh": r.unmatched_buy_kwh,
            "unmatched_sell_kwh": r.unmatched_sell_kwh, "welfare_usd": r.welfare_usd,
            "n_bids": r.n_bids, "n_offers": r.n_offers, "late_orders": opening.late,
            "iterations": r.iterations, "converged": r.converged,
            "rejected_orders": opening.rejected,
            "envelope_clipped_kwh": opening.clipped_kwh,
        })

    def drain_tables(self) -> dict[str, pd.DataFrame]:
        """The rows recorded since the last drain, as :meth:`tables` gives them (same
        tables, columns and dtypes, in interval order), and forget them: a long study
        can stream its market tables to disk in chunks (e.g. one Parquet row group per
        drain) with memory bounded by the rows of one chunk. The books still due are
        kept first (:meth:`keep_books`)."""
        self.keep_books()
        out = {
            "bids": _frame(self._bids, BIDS_DTYPES),
            "trades": _frame(self._trades, TRADES_DTYPES),
            "clearing": _frame(self._clearing, CLEARING_DTYPES),
            "settlements": _frame(self._settlements, self._settlement_dtypes),
            "curtailed_trades": _frame(self._curtailed_trades, CURTAILED_TRADES_DTYPES),
            "envelopes": _frame(self._envelopes, ENVELOPES_DTYPES),
            # the prices each cleared interval was cleared and settled at
            TARIFF_TABLE: self.tariff.table().iloc[self._tariff_rows].reset_index(drop=True),
            **self.books.table(),
        }
        if self._admm_max_iterations is not None:  # only a distributed clearing has it
            out["admm_rounds"] = _frame(self._admm_rows, ADMM_ROUNDS_DTYPES)
            self._admm_rows = []
        self.books.forget()
        self._tariff_rows = []
        self._bids, self._trades, self._clearing = [], [], []
        self._settlements, self._curtailed_trades, self._envelopes = [], [], []
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """``bids``, ``trades``, ``clearing``, ``settlements``, ``curtailed_trades``
        (each trade the DSO's curtailment cut: interval, trade_id, seller, buyer, kind,
        scheduled_kwh, curtailed_kwh [kWh], limit), ``envelopes`` (the operating
        envelopes the clearing used) and ``tariff`` (each cleared interval's retail and
        feed-in prices, ``federates.common.tariff.Tariff.table``), in interval order: every row not yet drained by
        :meth:`drain_tables` (all of them if it was never called); drains them."""
        return self.drain_tables()
