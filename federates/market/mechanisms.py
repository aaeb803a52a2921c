"""Registry of market-clearing mechanisms per topology, and a JSON view of a result.

Every mechanism has the signature of ``community.clear_uniform_price``:
``(orders, *, interval, retail_usd_per_kwh, feed_in_usd_per_kwh) -> ClearingResult``;
the p2p mechanisms also take ``charges`` ({(seller, buyer): USD/kWh}, default none),
e.g. from ``p2p.electrical_distance_charges``. Community and hybrid mechanisms take
no charges.
Units: energy [kWh], prices [USD/kWh], money [USD].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from federates.common.messages import Order, Trade
from federates.market.community import ClearingResult, clear_uniform_price
from federates.market.hybrid import clear_hybrid
from federates.market.lp import clear_lp
from federates.market.p2p import clear_p2p_admm, clear_p2p_lp
from federates.market.pay_as_bid import clear_pay_as_bid

Mechanism = Callable[..., ClearingResult]


def _p2p_admm(orders: list[Order], **kw: Any) -> ClearingResult:
    """Decentralised P2P clearing; iterations and convergence go into the result."""
    result, stats = clear_p2p_admm(orders, **kw)
    return replace(result, iterations=stats.iterations, converged=stats.converged)


#: the registry: topology -> mechanism name -> clearing function (``market.topology`` and
#: ``market.mechanism``); the config check (allowed_mechanisms), the market role and
#: hybrid's two levels read it
MECHANISMS: dict[str, dict[str, Mechanism]] = {
    "community": {
        "uniform_price": clear_uniform_price,
        "pay_as_bid": clear_pay_as_bid,
        "lp": clear_lp,
    },
    "p2p": {
        "lp": clear_p2p_lp,
        "admm": _p2p_admm,
        # in a study the peers run the iterations (federates.market.admm_distributed, the
        # same iterates); called alone, with no peers to ask, it is the central one
        "admm_distributed": _p2p_admm,
    },
    "hybrid": {
        "two_level": clear_hybrid,
    },
}


def allowed_mechanisms() -> dict[str, list[str]]:
    """Topology -> names of its mechanisms (for config errors and --help)."""
    return {t: sorted(m) for t, m in MECHANISMS.items()}


def clearer(topology: str, mechanism: str) -> Mechanism:
    """The clearing function registered as ``MECHANISMS[topology][mechanism]``
    (ValueError listing the allowed names for an unknown topology or mechanism)."""
    by_name = MECHANISMS.get(topology)
    if by_name is None:
        raise ValueError(f"unknown market topology {topology!r}; allowed: {sorted(MECHANISMS)}")
    fn = by_name.get(mechanism)
    if fn is None:
        raise ValueError(
            f"unknown clearing mechanism {mechanism!r} for topology {topology!r}; "
            f"allowed: {sorted(by_name)}"
        )
    return fn


def clear(
    topology: str,
    mechanism: str,
    orders: list[Order],
    *,
    interval: int,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    charges: Mapping[tuple[str, str], float] | None = None,
) -> ClearingResult:
    """Clear ``orders`` of ``interval`` with ``MECHANISMS[topology][mechanism]``.

    ``retail_usd_per_kwh`` / ``feed_in_usd_per_kwh`` [USD/kWh] are the utility's
    tariffs; ``charges`` [USD/kWh] per (seller, buyer) only with ``topology="p2p"``.
    Raises ValueError listing the allowed names for an unknown topology or
    mechanism, or for charges with another topology.
    """
    fn = clearer(topology, mechanism)
    extra: dict[str, Any] = {}
    if charges:
        if topology != "p2p":
            raise ValueError(f"per-pair charges apply to topology 'p2p' only, not {topology!r}")
        extra["charges"] = charges
    return fn(
        orders,
        interval=interval,
        retail_usd_per_kwh=retail_usd_per_kwh,
        feed_in_usd_per_kwh=feed_in_usd_per_kwh,
        **extra,
    )


def _trade_json(t: Trade) -> dict[str, Any]:
    return {
        "seller": t.seller,
        "buyer": t.buyer,
        "energy_kwh": t.energy_kwh,
        "price_usd_per_kwh": t.price_usd_per_kwh,
    }


def clearing_json(result: ClearingResult) -> dict[str, Any]:
    """A JSON-ready dict of ``result``.

    Keys: ``trades`` (peer trades only, each {seller, buyer, energy_kwh [kWh],
    price_usd_per_kwh [USD/kWh]}), ``grid_trades`` (same shape), ``clearing_price_usd_per_kwh``
    (None/null without peer trades or where prices are per trade), ``traded_kwh`` [kWh],
    ``welfare_usd`` [USD], ``unmatched`` ({buy_kwh, sell_kwh} [kWh]), ``status``,
    ``iterations`` / ``converged`` (of decentralised clearing; 0 / true otherwise).
    """
    return {
        "trades": [_trade_json(t) for t in result.peer_trades],
        "grid_trades": [_trade_json(t) for t in result.grid_trades],
        "clearing_price_usd_per_kwh": result.price_usd_per_kwh,
        "traded_kwh": result.traded_kwh,
        "welfare_usd": result.welfare_usd,
        "unmatched": {
            "buy_kwh": result.unmatched_buy_kwh,
            "sell_kwh": result.unmatched_sell_kwh,
        },
        "status": result.status,
        "iterations": result.iterations,
        "converged": result.converged,
    }
