"""What travels as HELICS messages: orders, confirmations, meter readings, commands.

Every message is one JSON object ``{"kind": ..., "fields": [...], "rows": [[...], ...],
...}``: the item class's field names once, then one row of values per item, in field
order (half the bytes of one object per item, and faster both ways: each federate
encodes or decodes ~1000 messages a day); further keys are the message's header. Floats
are written with ``repr`` precision, so a float decodes to the same bits it was encoded
from; the in-process engine hands the same objects over directly and gets equal
results.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from federates.common.rows import Rows, maker

GRID = "grid"  # the utility as a counterparty (retail seller, feed-in buyer)
#: the grid operator (DSO) as a settlement party: it collects the network charges of
#: peer trades (``Trade.fee_usd``) and has its own settlement row when it does
GRID_OPERATOR = "dso"


@dataclass(frozen=True)
class Order:
    """A bid (side="buy") or offer (side="sell") for one market interval.

    ``energy_kwh`` >= 0 [kWh] over the interval; ``price_usd_per_kwh`` is the limit
    price: the most a buyer pays, the least a seller accepts.

    ``backstop``: whether the utility serves what the peers do not take of a bid (at
    retail, as the confirmation's grid purchase). False: a price-responsive bid (a
    flexible device's, ``prosumers.flex_dispatch: cleared``) whose unmatched energy is
    not scheduled: the device decides after clearing whether to draw it
    (:func:`peer_energy_by_order`; the market role removes it from the schedule).
    """

    participant: str
    side: Literal["buy", "sell"]
    interval: int
    energy_kwh: float
    price_usd_per_kwh: float
    bus: str = ""
    phase: str = ""
    community: str = ""
    signature: str = ""  # hex Ed25519 signature by the participant (federates/market/ledger.py)
    backstop: bool = True


def peer_energy_by_order(buys: list[Order], peer_bought_kwh: float, retail_usd_per_kwh: float) -> list[float]:
    """A participant's confirmed peer purchase [kWh] given to its buy orders ``buys``
    (in the order it sent them) as the greedy community mechanisms match them: dearest
    effective limit (``min(limit, retail)``) first, ties in send order; per order the
    energy [kWh] it got from peers (the rest of it was the utility's backstop, or not
    scheduled when ``backstop`` is False)."""
    left = max(float(peer_bought_kwh), 0.0)
    out = [0.0] * len(buys)
    for i in sorted(range(len(buys)), key=lambda i: (-min(buys[i].price_usd_per_kwh, retail_usd_per_kwh), i)):
        out[i] = min(max(buys[i].energy_kwh, 0.0), left)
        left -= out[i]
    return out


@dataclass(frozen=True)
class Trade:
    """Energy [kWh] delivered from seller to buyer in an interval at a price [USD/kWh].

    ``fee_usd`` [USD, >= 0]: the network charge of the trade (P2P's per-pair charge
    times the energy, ``market.p2p_charge_usd_per_kwh_per_km``). The buyer pays
    ``price * energy``; the seller receives that and pays the fee to the grid operator
    (:data:`GRID_OPERATOR`), so it keeps ``price * energy - fee`` (settlement: a fee
    is collected in proportion to the energy delivered).

    ``trade_id``: the market's id of the trade, ``"<interval>-<j>"`` with ``j`` its
    position in the interval's clearing; the market role numbers every trade it
    cleared (``trades.trade_id``, ``curtailed_trades.trade_id``), "" on a trade a
    mechanism made and the market has not numbered. The ledger's trade record leaves
    it out: a trade's id is its position among the block's trade records.
    """

    interval: int
    seller: str
    buyer: str
    energy_kwh: float
    price_usd_per_kwh: float
    fee_usd: float = 0.0
    trade_id: str = ""


@dataclass(frozen=True)
class Confirmation:
    """What the market tells one participant after clearing interval ``interval``.

    ``scheduled_kwh`` is the participant's net scheduled energy (+ import, - export)
    over the interval: peer and grid purchases minus peer and grid sales.

    Two prices [USD/kWh], with one meaning under every topology and mechanism (the
    market role sets both on what it sends, ``federates/market/prices.py``):

    * ``price_usd_per_kwh``: the participant's own price, the energy-weighted mean
      price of its peer trades of the interval (what it pays per kWh bought from
      peers, or receives per kWh sold to peers, before network charges); None when
      it has no peer trade. Under a uniform price it is that price.
    * ``market_price_usd_per_kwh``: the interval's market price, the same for every
      participant: the uniform clearing price, or, where each trade has its own
      price (pay-as-bid, P2P, hybrid), the energy-weighted mean price of all peer
      trades; None when nothing traded peer to peer.
    """

    participant: str
    interval: int
    scheduled_kwh: float
    peer_bought_kwh: float
    peer_sold_kwh: float
    grid_bought_kwh: float
    grid_sold_kwh: float
    price_usd_per_kwh: float | None
    market_price_usd_per_kwh: float | None = None


@dataclass(frozen=True)
class MeterReading:
    """One smart-meter reading at a customer point.

    ``v_pu`` voltage magnitude [pu of the bus's nominal L-N voltage]; ``p_kw``,
    ``q_kvar`` the power at the customer point [kW, kvar] (+ import);
    ``energy_kwh`` net energy metered so far in the current interval [kWh].
    """

    meter: str
    t_s: float
    v_pu: float
    p_kw: float
    q_kvar: float
    energy_kwh: float


@dataclass(frozen=True)
class IntervalEnergy:
    """Net energy [kWh] metered at a customer point over a whole interval (+ import)."""

    meter: str
    interval: int
    energy_kwh: float


@dataclass(frozen=True)
class AmiReading:
    """One AMI interval reading of a smart meter, as the utility's head-end receives it.

    Covers the reporting period ``[t_start_s, t_end_s)`` [s of study time]: ``v_pu``
    the period-average voltage [pu of the meter's nominal voltage], ``p_kw`` and
    ``q_kvar`` the period-average power [kW, kvar] (+ import), ``energy_import_kwh``
    and ``energy_export_kwh`` [kWh, >= 0] the advance of the import and export
    registers over the period. All are measured values: accuracy errors and register
    resolution included (federates/meters/ami.py).
    """

    meter: str
    t_start_s: float
    t_end_s: float
    v_pu: float
    p_kw: float
    q_kvar: float
    energy_import_kwh: float
    energy_export_kwh: float


@dataclass(frozen=True)
class ControlCommand:
    """An inverter set-point for one participant.

    ``q_kvar`` reactive power at the customer point (> 0 drawn from the grid, i.e.
    the inverter absorbs and lowers the local voltage; < 0 injects; see units.py);
    ``p_export_cap_kw`` the most the participant may export [kW, >= 0], None = no cap.
    """

    participant: str
    q_kvar: float
    p_export_cap_kw: float | None


@dataclass(frozen=True)
class DsoCap:
    """A DSO decision on one customer's export cap, sent to the feeder's inverters.

    ``cap_kw`` the new DSO cap [kW, >= 0], or None: the DSO lifts its cap. ``limit``
    (a ``federates.common.limits.Limit``: ``v_max``, ``thermal``, ``vuf``, ``export``)
    and ``element`` (the customer, a
    ``line.<name>`` / ``transformer.<name>``, a bus, ``source``, or with policy
    ``group_voltage`` the service-transformer group) name why; ``v_pu`` [pu] and
    ``export_kw`` [kW, >= 0] what the DSO saw (the ``curtailments`` row; NaN for a lift).
    """

    participant: str
    cap_kw: float | None
    limit: str = ""
    element: str = ""
    v_pu: float = math.nan
    export_kw: float = math.nan


@dataclass(frozen=True)
class CurtailmentNotice:
    """Energy [kWh] a participant could not deliver in an interval because the DSO capped it.

    ``limit``: the cap's cause (a ``federates.common.limits.Limit``: the DSO's limit or
    ``volt_watt``)."""

    participant: str
    interval: int
    curtailed_kwh: float
    limit: str


@dataclass(frozen=True)
class LossEnergy:
    """A customer's share of the feeder's losses over an interval [kWh] (the per-phase
    loss allocation, federates/feeder/losses.py), sent by the feeder to the market when
    ``market.settle_losses`` makes the settlement charge it."""

    participant: str
    interval: int
    loss_kwh: float


@dataclass(frozen=True)
class OperatingEnvelope:
    """The DSO's limits on one participant's net power in an interval [kW, >= 0].

    ``export_max_kw`` / ``import_max_kw``: the most it may export / import on average
    over the interval; ``binding`` names the limit that set the export value
    (``federates.common.limits.limit_key``, e.g. ``v_max:p007``, ``thermal:line.l12``;
    "" = only the inverter rating).
    """

    participant: str
    interval: int
    export_max_kw: float
    import_max_kw: float
    binding: str = ""


@dataclass(frozen=True)
class DemandResponseCall:
    """The DSO's call to a customer with flexible demand: cut it by ``reduce_kw`` [kW,
    > 0] on average over market interval ``interval``, because of ``limit`` (a
    ``federates.common.limits.Limit``: ``v_min`` or ``thermal``) at ``element`` (the
    customer, or ``line.<name>`` / ``transformer.<name>``)."""

    participant: str
    interval: int
    reduce_kw: float
    limit: str
    element: str


@dataclass(frozen=True)
class DemandResponseDelivery:
    """What a called customer's devices cut in market interval ``interval``: the call
    (``requested_kw`` [kW] on average over the interval, its ``limit`` and ``element``)
    and the energy they cut against their own plan (``reduced_kwh`` [kWh, >= 0]). Sent
    by the prosumers to the market at the report time of ``interval + 1``, as the
    feeder's curtailment notices; the settlement pays up to the call
    (``federates/market/settlement.py``, rule 3c)."""

    participant: str
    interval: int
    requested_kw: float
    reduced_kwh: float
    limit: str
    element: str


@dataclass(frozen=True)
class LoadLimit:
    """The DSO's involuntary import limit on a customer for market interval
    ``interval`` (a smart meter's load limiter, ``controllers.demand_response.load_limit``):
    its import above ``import_max_kw`` [kW] is not served. Why: ``limit`` (``v_min`` or
    ``thermal``) at ``element``, seen in the interval before with demand response in
    force, when the customer imported ``import_kw`` [kW] and its voltage was ``v_pu``
    [pu]. Sent by the DSO to the feeder with its demand-response calls."""

    participant: str
    interval: int
    import_max_kw: float
    limit: str
    element: str
    import_kw: float
    v_pu: float


def _finite(value: object, what: str) -> float:
    """``value`` as a finite float, else ValueError naming ``what``."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class GridConstraint:
    """``sum_i coef[i] * x[participants[i]] <= rhs`` for market interval ``interval``.

    ``x`` [kW] is a participant's average net EXPORT over the interval; ``coef`` [pu or
    % per kW] (negative for import-side limits), ``rhs`` [pu or %] the room at zero net
    export of every listed participant (module doc). ``name`` the limit's
    ``federates.common.limits.limit_key``, e.g. ``v_max:p007``, ``thermal:line.l12``,
    ``v_min:p003``. Lists (as JSON decodes them) become tuples;
    raises ValueError naming the field for mismatched lengths, non-finite numbers, an
    empty name or a participant listed twice.
    """

    interval: int
    name: str
    participants: tuple[str, ...]
    coef: tuple[float, ...]
    rhs: float

    def __post_init__(self) -> None:
        try:
            integral = not isinstance(self.interval, bool) and int(self.interval) == self.interval
        except (TypeError, ValueError, OverflowError):
            integral = False
        if not integral:
            raise ValueError(f"GridConstraint.interval must be an integer, got {self.interval!r}")
        object.__setattr__(self, "interval", int(self.interval))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"GridConstraint.name must be a non-empty string, got {self.name!r}")
        who = f"GridConstraint {self.name!r}"
        if isinstance(self.participants, str):
            raise ValueError(f"{who}: participants must be a sequence of ids, not one string")
        parts = tuple(self.participants)
        if not all(isinstance(p, str) and p for p in parts):
            raise ValueError(f"{who}: participants must be non-empty strings, got {parts!r}")
        if len(set(parts)) != len(parts):
            twice = sorted({p for p in parts if parts.count(p) > 1})
            raise ValueError(f"{who}: participants lists {twice} more than once")
        coef = tuple(_finite(c, f"{who}: coef[{k}]") for k, c in enumerate(self.coef))
        if len(coef) != len(parts):
            raise ValueError(
                f"{who}: participants ({len(parts)}) and coef ({len(coef)}) differ in length"
            )
        object.__setattr__(self, "participants", parts)
        object.__setattr__(self, "coef", coef)
        object.__setattr__(self, "rhs", _finite(self.rhs, f"{who}: rhs"))

    def lhs(self, export_kw: Mapping[str, float]) -> float:
        """``sum_i coef_i x_i`` [pu or %] for net exports ``export_kw`` [kW] (missing: 0)."""
        return math.fsum(
            c * export_kw.get(p, 0.0) for p, c in zip(self.participants, self.coef, strict=True)
        )


@dataclass
class Scada:
    """What the DSO's SCADA sees of the feeder after a solve (for its limit checks).

    ``loading_pct`` [%] and ``p_kw`` [kW, + away from the source] of every element of
    ``FeederRole.elements``; ``vuf_pct`` [%] of every bus of ``FeederRole.vuf_buses``;
    ``source_p_kw`` [kW, + import at the substation].
    """

    loading_pct: np.ndarray
    p_kw: np.ndarray
    vuf_pct: np.ndarray
    source_p_kw: float

    def to_vector(self) -> np.ndarray:
        """Flat vector (source_p_kw, loading..., p..., vuf...) for a value publication."""
        return np.concatenate([[self.source_p_kw], self.loading_pct, self.p_kw, self.vuf_pct])

    @classmethod
    def from_vector(cls, x: np.ndarray, n_elements: int, n_buses: int) -> Scada:
        x = np.asarray(x, dtype=float)
        if x.shape != (1 + 2 * n_elements + n_buses,):
            raise ValueError(f"SCADA vector has {x.size} values; expected {1 + 2 * n_elements + n_buses}")
        e = n_elements
        return cls(loading_pct=x[1:1 + e], p_kw=x[1 + e:1 + 2 * e], vuf_pct=x[1 + 2 * e:],
                   source_p_kw=float(x[0]))

    @staticmethod
    def size(n_elements: int, n_buses: int) -> int:
        return 1 + 2 * n_elements + n_buses


@dataclass
class DsoView:
    """What the DSO sees of step ``step`` once the inverters have settled (one control
    round): the customers' telemetry ``v_pu`` [pu], ``p_kw`` [kW, + import] (the
    inverters' local measurement), the SCADA view of the feeder (None when the DSO
    needs none), ``rounds`` the command rounds already issued in the step and
    ``may_act``: False when the step is over without the DSO (controllers disabled, or
    the inverters used the step's last round)."""

    step: int
    rounds: int
    may_act: bool
    v_pu: np.ndarray
    p_kw: np.ndarray
    scada: Scada | None = None

    def to_vector(self) -> np.ndarray:
        """(step, rounds, may_act, v..., p..., scada...) for one value publication."""
        head = [float(self.step), float(self.rounds), 1.0 if self.may_act else 0.0]
        parts = [np.asarray(head), self.v_pu, self.p_kw]
        if self.scada is not None:
            parts.append(self.scada.to_vector())
        return np.concatenate(parts)

    @classmethod
    def from_vector(cls, x: np.ndarray, n: int, scada_shape: tuple[int, int] | None) -> DsoView:
        x = np.asarray(x, dtype=float)
        want = 3 + 2 * n + (Scada.size(*scada_shape) if scada_shape is not None else 0)
        if x.shape != (want,):
            raise ValueError(f"DSO view vector has {x.size} values; expected {want}")
        scada = Scada.from_vector(x[3 + 2 * n:], *scada_shape) if scada_shape is not None else None
        return cls(step=int(x[0]), rounds=int(x[1]), may_act=bool(x[2]), v_pu=x[3:3 + n],
                   p_kw=x[3 + n:3 + 2 * n], scada=scada)


@dataclass
class ViewsDone:
    """The feeder's word to the DSO that interval ``interval`` has no more views: it
    showed ``views`` (federates.common.timeline: view_time)."""

    interval: int
    views: int


_KINDS: dict[str, type] = {
    "orders": Order,
    "trades": Trade,
    "confirmations": Confirmation,
    "readings": MeterReading,
    "interval_energy": IntervalEnergy,
    "ami_readings": AmiReading,
    "commands": ControlCommand,
    "dso_caps": DsoCap,
    "curtailments": CurtailmentNotice,
    "loss_energy": LossEnergy,
    "envelopes": OperatingEnvelope,
    "grid_constraints": GridConstraint,
    "views_done": ViewsDone,
    "dr_calls": DemandResponseCall,
    "dr_delivered": DemandResponseDelivery,
    "load_limits": LoadLimit,
}
_KIND_OF: dict[type, str] = {v: k for k, v in _KINDS.items()}
#: each kind's field names, in field order (the ``fields`` of its messages)
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in _KINDS.values()}
#: each kind's row of an item: its instance dict's values in field order. Every kind's
#: fields hold plain values, no dataclass (tests/unit/test_messages.py checks it), so
#: the instance dict is what ``dataclasses.asdict`` would give, without its deep copy
_ROW: dict[type, Callable[[dict[str, Any]], tuple]] = {
    cls: operator.itemgetter(*names) if len(names) > 1 else (lambda d, n=names[0]: (d[n],))
    for cls, names in _FIELDS.items()
}


@dataclass
class Envelope:
    """A decoded message: its kind, its items, and free-form header fields."""

    kind: str
    items: list[Any]
    header: dict[str, Any] = field(default_factory=dict)


def encode(items: list[Any], kind: str | None = None, **header: Any) -> str:
    """JSON text of ``items`` (instances of the class of ``kind``; by default the kind
    of the first item); ``header`` adds plain fields. ValueError for an item of another
    class. ``Rows`` are encoded from their columns (no object made)."""
    if isinstance(items, Rows):
        if kind is None:
            kind = _KIND_OF.get(items.cls)
        cls = _KINDS.get(kind)  # type: ignore[arg-type]
        if cls is not items.cls:
            raise ValueError(f"a {kind!r} message holds {getattr(cls, '__name__', None)} items, "
                             f"not {items.cls.__name__}")
        return json.dumps({"kind": kind, "fields": _FIELDS[cls], "rows": list(items.tuples()), **header})
    if kind is None:
        if not items:
            raise ValueError("an empty message needs an explicit kind")
        kind = _KIND_OF[type(items[0])]
    cls = _KINDS[kind]
    if not all(type(i) is cls for i in items):
        other = next(type(i).__name__ for i in items if type(i) is not cls)
        raise ValueError(f"a {kind!r} message holds {cls.__name__} items, not {other}")
    row = _ROW[cls]
    return json.dumps({"kind": kind, "fields": _FIELDS[cls], "rows": [row(i.__dict__) for i in items], **header})


def decode(text: str) -> Envelope:
    """The Envelope a message text holds; raises ValueError naming an unknown kind."""
    obj = json.loads(text)
    kind = obj.pop("kind")
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown message kind {kind!r}; allowed: {sorted(_KINDS)}")
    return Envelope(kind=kind, items=_items(cls, obj.pop("fields"), obj.pop("rows")), header=obj)


def _items(cls: type, names: list[str], rows: list[list[Any]]) -> list[Any]:
    """``cls`` instances of decoded rows of the fields ``names`` (names not fields of
    ``cls`` ignored, missing fields take their defaults). Rows of exactly the fields in
    field order, as :func:`encode` writes them, are made by :func:`maker` (no __init__:
    ~1.5x faster) unless ``cls`` has a ``__post_init__`` (its checks run)."""
    if tuple(names) == _FIELDS[cls] and not hasattr(cls, "__post_init__"):
        make = maker(cls)
        return [make(*r) for r in rows]
    keep = set(_FIELDS[cls])
    at = [(j, n) for j, n in enumerate(names) if n in keep]
    return [cls(**{n: r[j] for j, n in at}) for r in rows]
