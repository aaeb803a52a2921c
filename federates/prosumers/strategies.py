"""Bidding strategies: the limit price [USD/kWh] of a prosumer's order for one interval.

All strategies share one signature, :func:`limit_price`. Random strategies draw from
``stream(seed, "limit_price", index, interval)``, so a price depends only on the
participant and the interval.
"""

from __future__ import annotations

from collections.abc import Callable

from federates.common.rng import stream
from federates.prosumers.adaptive import (
    ADAPTIVE_STRATEGIES,
    DEFAULT_MARKUPS,
    markup_price,
    roth_erev_choice,
    zip_initial_margin,
    zip_price,
)

SIDES = ("buy", "sell")


def _limit_price_uniform(
    *, side: str, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float,
    seed: int, index: int, interval: int,
) -> float:
    """Uniform in [feed-in, retail] [USD/kWh], seeded per participant and interval."""
    rng = stream(seed, "limit_price", index, interval)
    return float(rng.uniform(feed_in_usd_per_kwh, retail_usd_per_kwh))


def _truthful_tariff(
    *, side: str, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float,
    seed: int, index: int, interval: int,
) -> float:
    """Buyers bid the retail tariff, sellers ask the feed-in tariff [USD/kWh]."""
    return float(retail_usd_per_kwh if side == "buy" else feed_in_usd_per_kwh)


def _zip_opening(
    *, side: str, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float,
    seed: int, index: int, interval: int,
) -> float:
    """ZIP agent's price with no history: its seeded initial margin on the feed-in
    (seller cost) or retail (buyer value) tariff. Learning needs state: the role uses
    :class:`federates.prosumers.adaptive.AdaptiveBidders` for ``zip``."""
    value = retail_usd_per_kwh if side == "buy" else feed_in_usd_per_kwh
    margin = zip_initial_margin(seed, index, side)
    return zip_price(side, margin, value, retail_usd_per_kwh, feed_in_usd_per_kwh)


def _roth_erev_opening(
    *, side: str, retail_usd_per_kwh: float, feed_in_usd_per_kwh: float,
    seed: int, index: int, interval: int,
) -> float:
    """Roth-Erev agent's price with uniform (initial) propensities: a seeded markup draw.
    The role uses :class:`federates.prosumers.adaptive.AdaptiveBidders` to learn."""
    value = retail_usd_per_kwh if side == "buy" else feed_in_usd_per_kwh
    n = len(DEFAULT_MARKUPS)
    action = roth_erev_choice(seed, index, side, interval, [1.0 / n] * n)
    return markup_price(side, DEFAULT_MARKUPS[action], value, retail_usd_per_kwh, feed_in_usd_per_kwh)


STRATEGIES: dict[str, Callable[..., float]] = {
    "limit_price_uniform": _limit_price_uniform,
    "truthful_tariff": _truthful_tariff,
    "zip": _zip_opening,
    "roth_erev": _roth_erev_opening,
}
#: strategies that learn across intervals (stateful: see AdaptiveBidders)
ADAPTIVE = ADAPTIVE_STRATEGIES


def limit_price(
    strategy: str,
    *,
    side: str,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
    seed: int,
    index: int,
    interval: int,
) -> float:
    """Limit price [USD/kWh] of participant ``index``'s order on ``side`` for ``interval``.

    The result lies in [feed_in_usd_per_kwh, retail_usd_per_kwh]. Raises ValueError for
    an unknown strategy (naming the valid ones) or side.
    """
    fn = STRATEGIES.get(strategy)
    if fn is None:
        raise ValueError(f"unknown bidding strategy {strategy!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; allowed: {', '.join(SIDES)}")
    if feed_in_usd_per_kwh > retail_usd_per_kwh:
        raise ValueError("feed_in_usd_per_kwh must not exceed retail_usd_per_kwh")
    return fn(
        side=side, retail_usd_per_kwh=retail_usd_per_kwh, feed_in_usd_per_kwh=feed_in_usd_per_kwh,
        seed=seed, index=index, interval=interval,
    )
