"""How a prosumer's battery is planned for the interval about to start.

``self_consumption`` (the default): charge from the PV surplus, discharge to cover the
deficit, whatever the price.

``price``: the same, shaped by the prices the prosumer expects over the next day (the
tariff's retail price of every interval, ``Tariff``; the feed-in price of this one).
With ``low`` and ``high`` the lowest and highest of the day's expected retail prices and
``eta`` the round-trip efficiency:

* no spread worth cycling for (``high x eta <= low``: a flat tariff): self-consumption,
  exactly;
* a cheap interval (price within the lowest quarter of the span, ``<= low + (high -
  low) / 4``): do not discharge; store the surplus, and from the grid what the battery
  will still lack at the next dear interval after the surplus expected until then (the
  prosumer's own forecasts), spread over the intervals left before it: fill up for the
  dear hours without crowding out the PV;
* a dear interval (price within the highest quarter, ``>= high - (high - low) / 4``):
  discharge to cover the deficit (as self-consumption), and at full power, exporting,
  when the interval's feed-in price pays more than the cheapest energy cost
  (``feed_in x eta > low``: a dynamic tariff with high feed-in);
* otherwise: charge from the surplus only, and keep the stored energy for the dear
  hours (no discharge).

A rule, not an optimisation: transparent, cheap for thousands of batteries, and the
same in both engines. Its effect under a time-of-use tariff (energy moved into the peak,
bills) is measured in tests/unit/test_battery_price.py.
"""

from __future__ import annotations

import numpy as np


def day_ahead(k: int, per_day: int, n_intervals: int) -> np.ndarray:
    """The intervals of the day from ``k`` (``per_day`` of them); one past the study's
    end stands for the same time of day of the study's last day (the tariff is known
    within the study only), or for the last interval in a study shorter than a day."""
    j = np.arange(k, k + per_day)
    if per_day <= n_intervals:
        past = j >= n_intervals
        j[past] -= per_day * ((j[past] - n_intervals) // per_day + 1)
        return j
    return np.minimum(j, n_intervals - 1)


def self_consumption_kw(surplus_kw: np.ndarray, battery_kw: np.ndarray) -> np.ndarray:
    """Wanted battery power [kW, + charging]: the surplus within the power rating."""
    return np.clip(surplus_kw, -battery_kw, battery_kw)


def price_wanted_kw(surplus_kw: np.ndarray, battery_kw: np.ndarray, *, retail_now: float,
                    feed_in_now: float, retail_day: np.ndarray, round_trip: float,
                    soc_kwh: np.ndarray, capacity_kwh: np.ndarray, surplus_day_kw: np.ndarray,
                    interval_h: float) -> np.ndarray:
    """Wanted battery power [kW, + charging] under the ``price`` rule (module docstring);
    ``retail_day``: the expected retail prices [USD/kWh] of the day ahead (this interval
    first); ``surplus_day_kw`` (day, batteries): the expected PV surplus [kW] of those
    intervals (0 where unknown). The caller limits it by the state of charge."""
    base = self_consumption_kw(surplus_kw, battery_kw)
    day = np.asarray(retail_day, dtype=float)
    low, high = float(day.min()), float(day.max())
    if high * round_trip <= low:
        return base
    quarter = 0.25 * (high - low)
    if retail_now <= low + quarter:
        dear = np.flatnonzero(day[1:] >= high - quarter)
        if len(dear) == 0:
            return np.maximum(base, 0.0)
        d = int(dear[0]) + 1  # intervals from now to the next dear one
        stored_kwh = np.clip(np.asarray(surplus_day_kw, dtype=float)[1:d], 0.0, battery_kw).sum(axis=0) * interval_h
        lack_kwh = np.maximum(capacity_kwh - soc_kwh - np.maximum(base, 0.0) * interval_h - stored_kwh, 0.0)
        grid_kw = np.minimum(lack_kwh / (d * interval_h), battery_kw - np.maximum(base, 0.0))
        return np.maximum(base, 0.0) + grid_kw
    if retail_now >= high - quarter:
        if feed_in_now * round_trip > low:
            return -np.asarray(battery_kw, dtype=float)
        return base  # self-consumption
    return np.maximum(base, 0.0)
