"""Adaptive bidding agents: ZIP and modified Roth-Erev reinforcement learning.

Both learn a limit price [USD/kWh] between the feed-in tariff ``f`` and the retail
tariff ``r`` from the market's confirmations. A prosumer's *value* is what the
non-adaptive strategies use as its limit: a buyer's value is the retail tariff (what the
grid would charge it), a seller's cost is the feed-in tariff (what the grid would pay
it). Callers may pass another value in [f, r] (the tests do, to build supply curves).

Each participant has separate state per side (``"buy"``, ``"sell"``), since a prosumer
may import in one interval and export in the next. All randomness comes from
``stream(seed, <purpose>, key, side, ...)`` where ``key`` is the participant's integer
index when given (``indices``), else its name; results therefore do not depend on the
order of calls across participants.

* **ZIP** -- Zero-Intelligence Plus, D. Cliff (1997), "Minimal-intelligence agents for
  bargaining behaviors in market-based environments", HP Laboratories Technical Report
  HPL-97-141. Seller price ``p = c * (1 + mu)``, buyer price ``p = v * (1 - mu)``;
  after each clearing the price moves toward a target ``tau`` derived from the
  clearing price ``q`` by the Widrow-Hoff rule with momentum:
  ``Delta = beta * (tau - p)``, ``Gamma <- gamma * Gamma + (1 - gamma) * Delta``,
  ``p' = p + Gamma``, and the margin is re-derived from ``p'``. Raising targets are
  ``tau = R * q + A`` with ``R ~ U(1, 1.05)``, lowering targets ``tau = R * q - A`` with
  ``R ~ U(0.95, 1)``; ``A ~ U(0, a_max)`` with ``a_max`` = ``perturbation_fraction`` of
  the tariff span ``r - f`` (Cliff's absolute 0.05 on his price scale). Initial margins
  ``mu ~ U(0.05, 0.35)`` as in Cliff (1997).
* **Roth-Erev** -- A. E. Roth and I. Erev (1995), "Learning in extensive-form games",
  Games and Economic Behavior 8, 164-212, in the modified form of J. Nicolaisen,
  V. Petrov and L. Tesfatsion (2001), IEEE Trans. Evolutionary Computation 5(5),
  504-523: propensities ``q_j <- (1 - phi) q_j + E_j`` with ``E_j = R (1 - eps)`` for
  the chosen action and ``E_j = q_j eps / (N - 1)`` otherwise; choice probabilities
  ``q_j / sum(q)``. Actions are markups ``m``: a seller asks ``c + m (r - c)``, a buyer
  bids ``v - m (v - f)``. The reward ``R`` is the profit against the grid alternative
  per kWh offered, normalised by the tariff span, so it lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from federates.common.messages import Confirmation
from federates.common.rng import stream

ADAPTIVE_STRATEGIES = ("zip", "roth_erev")
SIDES = ("buy", "sell")

#: Cliff (1997): initial margins drawn from U(0.05, 0.35)
ZIP_INITIAL_MARGIN = (0.05, 0.35)
#: seller cost floor as a fraction of retail when the feed-in tariff is 0 (the
#: multiplicative margin needs a positive cost)
ZIP_MIN_COST_FRACTION = 0.01
#: default Roth-Erev markups (fractions of the room between limit and opposite tariff)
DEFAULT_MARKUPS = tuple(float(m) for m in np.round(np.linspace(0.0, 0.9, 10), 10))


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; allowed: {', '.join(SIDES)}")


def _check_tariffs(retail_usd_per_kwh, feed_in_usd_per_kwh) -> None:
    r, f = np.asarray(retail_usd_per_kwh, dtype=float), np.asarray(feed_in_usd_per_kwh, dtype=float)
    if r.shape != f.shape or np.any(f < 0) or np.any(f > r):
        raise ValueError("need 0 <= feed_in_usd_per_kwh <= retail_usd_per_kwh (in every interval)")


def _tariff_value(v) -> float | np.ndarray:
    """A tariff as a float, or a read-only per-interval array."""
    if np.ndim(v) == 0:
        return float(v)
    a = np.array(v, dtype=float)
    a.flags.writeable = False
    return a


def zip_initial_margin(seed: int, key: int | str, side: str) -> float:
    """Seeded initial ZIP margin of one participant on one side, U(0.05, 0.35)."""
    lo, hi = ZIP_INITIAL_MARGIN
    return float(stream(seed, "zip_margin", key, side).uniform(lo, hi))


def zip_price(
    side: str,
    margin: float,
    value_usd_per_kwh: float,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> float:
    """ZIP price [USD/kWh]: ``c (1 + mu)`` for sellers, ``v (1 - mu)`` for buyers.

    Clipped to [value, retail] for sellers and [feed-in, value] for buyers, so an agent
    never trades at a loss against its grid alternative and stays within the tariffs.
    """
    if side == "sell":
        cost = max(value_usd_per_kwh, ZIP_MIN_COST_FRACTION * retail_usd_per_kwh)
        return float(np.clip(cost * (1.0 + margin), value_usd_per_kwh, retail_usd_per_kwh))
    return float(
        np.clip(value_usd_per_kwh * (1.0 - margin), feed_in_usd_per_kwh, value_usd_per_kwh)
    )


def markup_price(
    side: str,
    markup: float,
    value_usd_per_kwh: float,
    retail_usd_per_kwh: float,
    feed_in_usd_per_kwh: float,
) -> float:
    """Roth-Erev price [USD/kWh]: seller ``c + m (r - c)``, buyer ``v - m (v - f)``."""
    if side == "sell":
        p = value_usd_per_kwh + markup * (retail_usd_per_kwh - value_usd_per_kwh)
    else:
        p = value_usd_per_kwh - markup * (value_usd_per_kwh - feed_in_usd_per_kwh)
    return float(np.clip(p, feed_in_usd_per_kwh, retail_usd_per_kwh))


def roth_erev_choice(
    seed: int, key: int | str, side: str, interval: int, probabilities: Sequence[float] | np.ndarray
) -> int:
    """Index of the markup chosen in ``interval``, drawn from a seeded per-agent stream."""
    u = float(stream(seed, "roth_erev", key, side, interval).random())
    cdf = np.cumsum(probabilities)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1))


@dataclass
class ZipState:
    """One ZIP agent (participant and side): margin ``mu`` and momentum ``Gamma`` [USD/kWh]."""

    margin: float
    momentum_usd_per_kwh: float = 0.0


@dataclass
class RothErev:
    """Modified Roth-Erev learner over ``n_actions`` discrete actions.

    ``recency`` is phi (forgetting), ``experimentation`` is epsilon. Propensities start
    at ``initial_propensity`` and stay non-negative for rewards >= 0.
    """

    n_actions: int
    recency: float = 0.1
    experimentation: float = 0.2
    initial_propensity: float = 1.0
    propensities: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.n_actions < 2:
            raise ValueError("Roth-Erev needs at least two actions")
        if not (0.0 <= self.recency <= 1.0 and 0.0 <= self.experimentation <= 1.0):
            raise ValueError("recency and experimentation must lie in [0, 1]")
        if self.initial_propensity <= 0:
            raise ValueError("initial_propensity must be positive")
        self.propensities = np.full(self.n_actions, float(self.initial_propensity))

    def probabilities(self) -> np.ndarray:
        """Choice probabilities ``q_j / sum(q)`` (uniform if all propensities are 0)."""
        total = float(self.propensities.sum())
        if total <= 0.0:
            return np.full(self.n_actions, 1.0 / self.n_actions)
        return self.propensities / total

    def update(self, action: int, reward: float) -> None:
        """Reinforce ``action`` with ``reward`` (>= 0; negative rewards are clipped to 0)."""
        r = max(float(reward), 0.0)
        eps, n = self.experimentation, self.n_actions
        q = self.propensities
        e = q * eps / (n - 1)
        e[action] = r * (1.0 - eps)
        self.propensities = (1.0 - self.recency) * q + e


@dataclass
class _Pending:
    side: str
    price_usd_per_kwh: float
    value_usd_per_kwh: float
    energy_kwh: float | None
    action: int | None


class AdaptiveBidders:
    """Per-participant adaptive bidding state for one study (strategy ``zip`` or ``roth_erev``).

    Call :meth:`price` for each order of interval ``k``, then :meth:`learn` with the
    market's confirmations of ``k``. Learning only touches participants that were
    priced in ``k``; a confirmation for an unpriced participant is ignored. The tariffs
    [USD/kWh] are one price each, or arrays of every interval's (a time-varying tariff,
    ``federates.common.tariff.Tariff``): interval ``k`` is priced and learnt within its own.
    """

    def __init__(
        self,
        strategy: str,
        *,
        retail_usd_per_kwh: float | np.ndarray,
        feed_in_usd_per_kwh: float | np.ndarray,
        seed: int,
        indices: Mapping[str, int] | None = None,
        zip_beta: float = 0.3,
        zip_gamma: float = 0.05,
        perturbation_fraction: float = 0.02,
        markups: Sequence[float] = DEFAULT_MARKUPS,
        recency: float = 0.1,
        experimentation: float = 0.2,
        initial_propensity: float = 1.0,
    ):
        if strategy not in ADAPTIVE_STRATEGIES:
            raise ValueError(
                f"unknown adaptive strategy {strategy!r}; allowed: {', '.join(ADAPTIVE_STRATEGIES)}"
            )
        _check_tariffs(retail_usd_per_kwh, feed_in_usd_per_kwh)
        if not (0.0 < zip_beta <= 1.0 and 0.0 <= zip_gamma < 1.0):
            raise ValueError("need 0 < zip_beta <= 1 and 0 <= zip_gamma < 1")
        if any(not 0.0 <= m <= 1.0 for m in markups):
            raise ValueError("markups must lie in [0, 1]")
        self.strategy = strategy
        #: the tariffs [USD/kWh]: floats, or per-interval arrays (a time-varying tariff)
        self.retail_usd_per_kwh = _tariff_value(retail_usd_per_kwh)
        self.feed_in_usd_per_kwh = _tariff_value(feed_in_usd_per_kwh)
        self.seed = int(seed)
        self.indices = dict(indices or {})
        self.zip_beta = float(zip_beta)
        self.zip_gamma = float(zip_gamma)
        self.perturbation_fraction = float(perturbation_fraction)
        self.markups = tuple(float(m) for m in markups)
        self.recency = float(recency)
        self.experimentation = float(experimentation)
        self.initial_propensity = float(initial_propensity)
        self.zip_states: dict[tuple[str, str], ZipState] = {}
        self.learners: dict[tuple[str, str], RothErev] = {}
        self._pending: dict[int, dict[str, _Pending]] = {}

    # ---- helpers -------------------------------------------------------------------
    def tariffs(self, k: int) -> tuple[float, float]:
        """(feed-in, retail) of interval ``k`` [USD/kWh]."""
        f, r = self.feed_in_usd_per_kwh, self.retail_usd_per_kwh
        return (f if isinstance(f, float) else float(f[k]), r if isinstance(r, float) else float(r[k]))

    def _key(self, participant: str) -> int | str:
        return self.indices.get(participant, participant)

    def _zip(self, participant: str, side: str) -> ZipState:
        st = self.zip_states.get((participant, side))
        if st is None:
            st = ZipState(zip_initial_margin(self.seed, self._key(participant), side))
            self.zip_states[(participant, side)] = st
        return st

    def _learner(self, participant: str, side: str) -> RothErev:
        le = self.learners.get((participant, side))
        if le is None:
            le = RothErev(
                len(self.markups), self.recency, self.experimentation, self.initial_propensity
            )
            self.learners[(participant, side)] = le
        return le

    # ---- API -----------------------------------------------------------------------
    def price(
        self,
        k: int,
        participant: str,
        side: str,
        value_usd_per_kwh: float,
        energy_kwh: float | None = None,
    ) -> float:
        """Limit price [USD/kWh] of ``participant``'s order on ``side`` for interval ``k``.

        ``value_usd_per_kwh`` is the buyer's value or the seller's cost (in [feed-in,
        retail]); ``energy_kwh`` (optional) is the order's energy, used to turn the
        Roth-Erev profit into a per-kWh reward. The result lies in [feed-in, retail].
        """
        _check_side(side)
        f, r = self.tariffs(k)
        if not f - 1e-12 <= value_usd_per_kwh <= r + 1e-12:
            raise ValueError(f"value {value_usd_per_kwh} outside the tariffs [{f}, {r}] USD/kWh")
        v = float(np.clip(value_usd_per_kwh, f, r))
        action = None
        if self.strategy == "zip":
            p = zip_price(side, self._zip(participant, side).margin, v, r, f)
        else:
            le = self._learner(participant, side)
            action = roth_erev_choice(
                self.seed, self._key(participant), side, k, le.probabilities()
            )
            p = markup_price(side, self.markups[action], v, r, f)
        self._pending.setdefault(k, {})[participant] = _Pending(side, p, v, energy_kwh, action)
        return p

    def learn(self, k: int, confirmations: Sequence[Confirmation]) -> None:
        """Update the agents priced in interval ``k`` from the market's confirmations of ``k``."""
        pending = self._pending.pop(k, {})
        for c in confirmations:
            pd_ = pending.get(c.participant)
            if pd_ is None:
                continue
            traded_kwh = c.peer_sold_kwh if pd_.side == "sell" else c.peer_bought_kwh
            # the price it got when it traded, the market's when it did not (Confirmation)
            q = c.price_usd_per_kwh if traded_kwh > 0.0 else c.market_price_usd_per_kwh
            if self.strategy == "zip":
                self._learn_zip(k, c.participant, pd_, traded_kwh, q)
            else:
                self._learn_roth_erev(k, c.participant, pd_, traded_kwh, q)

    # ---- learning ------------------------------------------------------------------
    def _learn_zip(
        self,
        k: int,
        participant: str,
        pd_: _Pending,
        traded_kwh: float,
        q: float | None,
    ) -> None:
        """Cliff's ZIP rules adapted to a call market with clearing price ``q``.

        Seller: traded -> raise margin toward ``R q + A``; not traded with ``q`` reachable
        (``q >= cost``) and ``p >= q`` -> lower toward ``R q - A``; no peer price at all
        (nothing cleared) -> lower toward ``R p - A``. Buyers mirror this.
        """
        side, p, v = pd_.side, pd_.price_usd_per_kwh, pd_.value_usd_per_kwh
        f, r = self.tariffs(k)
        rng = stream(self.seed, "zip_target", self._key(participant), side, k)
        r_up, r_down = rng.uniform(1.0, 1.05), rng.uniform(0.95, 1.0)
        a = rng.uniform(0.0, self.perturbation_fraction * (r - f))
        traded = traded_kwh > 0.0
        tau = None
        if side == "sell":
            if q is not None and traded:
                tau = r_up * q + a  # could have asked more
            elif q is not None and q >= v and p >= q:
                tau = r_down * q - a  # market price was reachable: undercut it
            elif q is None and not traded:
                tau = r_down * p - a
        else:
            if q is not None and traded:
                tau = r_down * q - a  # could have bid less
            elif q is not None and q <= v and p <= q:
                tau = r_up * q + a
            elif q is None and not traded:
                tau = r_up * p + a
        if tau is None:
            return
        st = self._zip(participant, side)
        delta = self.zip_beta * (tau - p)
        st.momentum_usd_per_kwh = (
            self.zip_gamma * st.momentum_usd_per_kwh + (1.0 - self.zip_gamma) * delta
        )
        new_p = p + st.momentum_usd_per_kwh
        if side == "sell":
            cost = max(v, ZIP_MIN_COST_FRACTION * r)
            st.margin = float(np.clip(new_p / cost - 1.0, 0.0, max(r / cost - 1.0, 0.0)))
        else:
            hi = 1.0 - f / v if v > 0 else 0.0
            st.margin = float(np.clip(1.0 - new_p / v, 0.0, hi)) if v > 0 else 0.0

    def _learn_roth_erev(
        self, k: int, participant: str, pd_: _Pending, traded_kwh: float, q: float | None
    ) -> None:
        """Reward = profit against the grid per kWh offered / the tariff span of
        interval ``k``, in [0, 1]."""
        if pd_.action is None:
            return
        f, r = self.tariffs(k)
        span = r - f
        reward = 0.0
        if q is not None and traded_kwh > 0.0 and span > 0.0:
            unit = (
                (q - pd_.value_usd_per_kwh) if pd_.side == "sell" else (pd_.value_usd_per_kwh - q)
            )
            fill = 1.0 if not pd_.energy_kwh else min(traded_kwh / pd_.energy_kwh, 1.0)
            reward = float(np.clip(unit / span, 0.0, 1.0)) * fill
        self._learner(participant, pd_.side).update(pd_.action, reward)
