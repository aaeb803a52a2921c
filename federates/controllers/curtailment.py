"""Export caps against over-voltage: the issue-2 DSO policy (pure functions).

When, after Volt-VAR has settled, some customer voltage is above ``v_max_pu``, the
DSO curtails the transactions that feed the violation. In this first policy those
are taken to be:

* the exports of every customer on the same service transformer (same
  :attr:`CustomerSite.group`) as a violating customer, and
* the export of the violating customer itself (a customer without a group,
  ``group == ""``, forms a group of its own).

Every such customer exporting more than ``min_export_kw`` gets the cap::

    cap_kw = export_kw * (1 - f)
    f      = clip(gain_per_pu * (v_violation_pu - v_max_pu + margin_pu), 0.05, 0.5)

with ``v_violation_pu`` the worst (highest) voltage in its group and ``export_kw``
the exported power measured now (``-p_kw`` for ``p_kw < 0``). Caps only tighten
within a market interval: the new cap is the smaller of the old and the computed
one; the caller clears them at the start of each interval.

This is a proximity rule, not an optimal one. Sensitivity-based policies (dV/dP of
each export on each violating node, shares by contribution) come later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federates.common.grid import CustomerSite

F_MIN = 0.05
"""Smallest fraction of an export a cap cuts [-]."""
F_MAX = 0.5
"""Largest fraction of an export a cap cuts in one iteration [-]."""
MIN_EXPORT_KW = 1e-3
"""Exports at or below this [kW] are not capped (avoids endless tiny cuts)."""


def group_codes(sites: Sequence[CustomerSite]) -> np.ndarray:
    """One integer per customer naming its service-transformer group.

    Customers with the same non-empty ``group`` share a code; a customer with
    ``group == ""`` gets a code of its own. Codes are assigned in ``sites`` order.
    """
    codes: dict[str, int] = {}
    out = np.empty(len(sites), dtype=np.int64)
    for i, site in enumerate(sites):
        key = site.group if site.group else f"\x00own:{i}"
        out[i] = codes.setdefault(key, len(codes))
    return out


def curtail_fraction(v_violation_pu: np.ndarray, v_max_pu: float, margin_pu: float,
                     gain_per_pu: float) -> np.ndarray:
    """Fraction of the export to cut [-] for a group's worst voltage ``v_violation_pu`` [pu]."""
    raw = gain_per_pu * (np.asarray(v_violation_pu, dtype=float) - v_max_pu + margin_pu)
    return np.clip(raw, F_MIN, F_MAX)


@dataclass(frozen=True)
class CapDecision:
    """Result of :func:`export_caps`, one entry per customer.

    ``cap_kw`` the caps after the decision [kW, inf = none]; ``changed`` where the cap
    tightened; ``export_kw`` the export measured [kW, >= 0]; ``v_violation_pu`` the
    worst voltage of the customer's group where the group violates, else NaN [pu];
    ``fraction`` the cut applied [-] (0 where unchanged).
    """

    cap_kw: np.ndarray
    changed: np.ndarray
    export_kw: np.ndarray
    v_violation_pu: np.ndarray
    fraction: np.ndarray


def export_caps(v_pu: np.ndarray, p_kw: np.ndarray, cap_kw: np.ndarray, groups: np.ndarray,
                v_max_pu: float, margin_pu: float, gain_per_pu: float,
                min_export_kw: float = MIN_EXPORT_KW) -> CapDecision:
    """Tighter export caps for the groups with a voltage above ``v_max_pu`` [pu].

    ``v_pu`` [pu], ``p_kw`` [kW, + import] measured per customer; ``cap_kw`` the
    current caps [kW, inf = none]; ``groups`` integer codes from :func:`group_codes`.
    ``margin_pu`` [pu] aims below the limit; ``gain_per_pu`` [1/pu] turns the excess
    voltage into a fraction. Inputs are not modified.
    """
    v = np.asarray(v_pu, dtype=float)
    cap = np.asarray(cap_kw, dtype=float)
    groups = np.asarray(groups)
    export_kw = np.maximum(-np.asarray(p_kw, dtype=float), 0.0)  # p_kw < 0 is export

    # worst voltage of every violating group, spread back to its members
    n_groups = int(groups.max()) + 1 if groups.size else 0
    worst_pu = np.full(n_groups, -np.inf)
    np.maximum.at(worst_pu, groups, v)
    v_group_pu = worst_pu[groups] if groups.size else np.empty(0)
    in_violation = v_group_pu > v_max_pu
    v_violation_pu = np.where(in_violation, v_group_pu, np.nan)

    f = np.where(in_violation,
                 curtail_fraction(np.where(in_violation, v_group_pu, v_max_pu),
                                  v_max_pu, margin_pu, gain_per_pu),
                 0.0)
    candidate_kw = export_kw * (1.0 - f)
    changed = in_violation & (export_kw > min_export_kw) & (candidate_kw < cap)
    new_cap = np.where(changed, candidate_kw, cap)
    return CapDecision(cap_kw=new_cap, changed=changed, export_kw=export_kw,
                       v_violation_pu=v_violation_pu, fraction=np.where(changed, f, 0.0))
