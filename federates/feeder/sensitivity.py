"""Sensitivities of the feeder's limits to each customer's export, by perturbation.

Computed once per run on the OpenDSS model itself (:class:`OpenDSSFeeder` with the
customers attached), at a *high-export operating point* where the export-caused
limits (over-voltage, reverse-flow overload, export unbalance, substation export)
bind: every customer with an inverter exports ``export_share`` of its nameplate
[kW = kVA x share], the others draw nothing, the original loads sit at
``background_mult`` x nominal, regulators and capacitors held where the base solve
left them (OpenDSS controls off, so the derivatives are those of the network alone,
the seconds-scale view the DSO acts on).

**Connection points.** Customers whose Loads sit on the same node(s) with the same
connection kind (``direct`` on one bus node, ``split_phase`` across the same two legs:
``OpenDSSFeeder.customer_point_of``) inject into the network identically: a kW
exported by either changes it the same way, and both see the same voltage. So the
model is built over the u distinct points, ``point_of`` (n,) mapping each customer to
its point; ``secondary`` customers each have a service drop of their own, a point each.
For each point in turn the export of its first customer (site order) is raised by
``delta_kw`` and the model re-solved; finite differences against the operating point
give, per kW of *export* at point ``p`` (a kW of curtailment gives the opposite):

``dv_pu_per_kw``         (u, u)  voltage magnitude at each point [pu / kW]
``dloading_pct_per_kw``  (m, u)  loading of each Line / Transformer [% / kW]
``dflow_kw_per_kw``      (m, u)  active power into terminal 1 of each element [kW / kW]
``dvuf_pct_per_kw``      (b, u)  VUF of each three-phase bus [% / kW]
``dsource_kw_per_kw``    (u,)    substation import [kW / kW] (about -1 - marginal losses)
``dv_pu_per_kvar``       (u, u)  voltage magnitude per kvar *drawn* at point ``p``
                                 [pu / kvar] (negative: absorbing lowers voltage),
                                 so that the DSO can account for the inverters' Volt-VAR

plus the operating point's values (``v0_pu`` per customer, ``loading0_pct``,
``flow0_kw``, ``vuf0_pct``, ``source0_kw``) and the names (``participants``,
``elements``, ``buses``). The per-customer model is ``E A E^T`` for the voltage
matrices and ``B E^T`` for the element and bus ones, ``E`` the n x u incidence
(``E[i, point_of[i]] = 1``); the DSO never builds it: :class:`PointMatrix`
(``Sensitivities.customer_*``) gives a customer's row (``A[point_of[j]][point_of]``,
length n) and products (``E (A (E^T x))``). The DSO's curtailment and operating
envelopes (federates/controllers/dso.py) use them as a linear model around what it
measures; the step's re-solves correct the linearisation error. When every customer
has its own point (``point_of`` the identity: the default ``secondary`` connection)
the solves, arrays and arithmetic are those of the per-customer model exactly.
``compute_sensitivities(per_customer=True)`` keeps that model for any feeder (one
perturbation per customer; the tests compare the two).

**Grouped model** (``grouped=True``; ``controllers.sensitivities``). With the
default ``secondary`` connection every customer has its own service drop
(``Line.drop_<participant>`` from its group's transformer node ``svc_<group>.1``), so
u = n above. But a customer's export changes everything upstream of its drop as an
export at its group's node would, and its neighbours see that node's voltage, so the
customers of one service transformer share a point (``customer_group_point_of``) and
each adds its own drop:

    dv[j, i] = r_j A[g(j), g(i)] w_i + [i = j] d_i       (voltages, per kW and per kvar)
    de[e, i] = B[e, g(i)] w_i + [e = drop(i)] o_i        (element, bus and source rows)

One perturbation per point (its first customer) for kW and one for kvar, ``2 g + 1``
solves. The own-drop rise ``d`` of a point's first customer is what the solve shows
at it less what it shows at the point's second customer (the group node's part);
another customer's ``d`` is that one's scaled by the drop's shape ``1 / (v + c a / v)``
at its own operating point (``a`` its export [kW], ``v`` its voltage [pu]; ``c`` the
drop's resistance in pu of voltage per kW, the median over the points of what their
measured ``d`` says; all drops have the connection's one impedance), a point of one
customer takes that shape times the median scale. The second-order terms that make
customers of one group differ are kept analytically: ``w_i = 1 - l_i`` the kW that
reaches the group node per kW exported (``l_i = c (2 a_i + delta) / v_i^2`` the drop's
marginal loss over the perturbation, scaled to the loss the first customers' drops
measure), ``r_j = 1 / (1 + c a_j / v_j^2)`` customer ``j``'s voltage per pu at its
group node (its drop's drop shrinks as the node rises). A drop's row is its own
customer's alone (``o``: its loading scaled from the first customer's by ``(1 - a
dv_ii / v) / v``, its flow ``-1`` plus the marginal loss); the others' effect on it is
second order and left out (its row of ``B`` is zero and not stored: ``element_rows``
lists the rows that are). Customers not ``secondary``
keep their points, weights 1 and no own terms. Held as u x u / m x u arrays plus
seven per-customer vectors (:class:`PointMatrix` with ``row_w``, ``col_w``, ``own``).

Measured against the per-customer model, both solved to 1e-10 pu (largest error over
the largest entry): IEEE 13 with 40 prosumers in 17 groups, dv 7e-4, dv per kvar
2.6e-3, loading 1.2e-3, flow 1.1e-3, VUF 4.7e-3, substation 2.8e-4 kW/kW; the synthetic
feeder with 600 prosumers in 268 groups, 5.9e-4, 2.9e-3, 1.3e-3, 1.2e-3, 2.8e-3,
1.2e-3. Without the weights (every customer of a group the same column) it was 1e-2
to 5e-2. Against what the per-customer model itself misses for a realistic move (1 or
5 kW more export at a fifth of the inverters, over the largest true change): the
grouping adds 1e-4 to 1.5e-3 to the voltages where linearisation misses 9e-3 to 4e-2,
4e-5 to 2e-3 to the loadings against 6e-3 to 0.3, 6e-5 to 4e-4 to the flows against
2e-3 to 3e-2. The DSO's decisions follow: on IEEE 13 at a high-export point the same
49 violated constraints, the planned cut within 4e-5, envelopes within 0.006 kW.
3000 prosumers on the 1000-load synthetic feeder (1351 service transformers), at 1e-10
pu: entries within 7.3e-4 (dv), 2.7e-3 (per kvar), 1.2e-3 (loading, flow), 3.9e-3 (VUF),
4e-4 kW/kW (substation); for 1 / 5 kW more export at a fifth of the inverters the
grouping adds 1.6e-3 / 2.3e-3 to the voltages where linearisation misses 7.4e-2 /
0.16, but 2.7e-3 / 2.0e-3 to the loadings against 5.9e-3 / 1.4e-2 (the drops' rows
leave out the others' second-order effect on them: the closest call). At the
run's own solver tolerance: the grouping adds 1.9e-2 to the voltages of a 1 kW move
at a fifth of the inverters where linearisation misses 0.24, 4e-3 to the loadings
against 4e-2, 7e-5 to the flows against 2e-2 (entry by entry it differs from the
per-customer model by 2.5e-3 for voltages, 1.7e-2 per kvar and 0.14 for VUF, where
the per-customer model's own solver noise is of that order too: co-located customers
differ by up to 0.75 % at that tolerance, tests/feeder/test_sensitivity_points.py).
Measured with benchmarks/scale.py count-3000 (2 h in process, 2-core machine,
``--set controllers.sensitivities=...``), points -> grouped: prepare_run 41.1 -> 13.5 s
(6001 -> 2703 solves), ``sensitivities.npz`` 225.5 -> 51.9 MB (the drops' rows not
stored: 3359 of 6359 element rows), peak RSS after prepare 669 -> 508 MiB, the whole
run's 766 -> 603 MiB; the run's steps cost the same (wall 18.8 -> 16.3 s).

Cost: ``2 u + 1`` power flows (about 1 ms each on IEEE 13 with 40 customers), each
with O(1) OpenDSS calls (two batch writes, one solve, four bulk reads); memory
``4 (2 u^2 + 2 m u + b u)`` bytes. Per customer (u = n) on IEEE 8500 (4893 lines and
transformers) measured on a 2-core machine: 1177 customers 20.6 s (2355 solves,
8.8 ms each), 3000 customers 65 s (6001 solves, 10.9 ms each; 0.53 GB peak for the
whole process). Over points, IEEE 8500's split-phase houses are the points (at most
1177 whatever the prosumers): 3000 prosumers on 1010 of them measured before -> after
(whole prepare_run, same machine): 38.8 -> 14.1 s, ``sensitivities.npz`` 198 -> 51 MB,
the preparing process's peak RSS 614 -> 391 MiB.
3000 prosumers on the 1000-load synthetic feeder with ``customer_connection.kind:
direct`` (927 points) measured before -> after: prepare_run 15.5 -> 7.0 s (6001 -> 1855
solves), ``sensitivities.npz`` 121 -> 22 MB, the in-process 2 h run's peak RSS 622 -> 524 MiB.
The arrays go to ``sensitivities.npz`` in the run folder, uncompressed: the
operating point's vectors as float64, the matrices as float32 (relative rounding
6e-8, far below the linearisation error of ~1e-3 pu; it halves the memory of every
federate that loads them: 3000 customers on the 1000-load synthetic feeder with the
default ``secondary`` connection (3000 points) measured 226 MB, 1000 customers 25 MB
(BENCHMARKS.md); compressing them had cost a quarter of prepare_run at 1000
customers). A file without ``point_of`` (written before points) loads as per customer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from federates.common.config import StudyFile
    from federates.common.study import Study
    from federates.feeder.opendss import OpenDSSFeeder

SENSITIVITIES_FILE = "sensitivities.npz"

#: The grouped model's per-customer arrays (:class:`Sensitivities`), saved as they are.
GROUPED_FIELDS = ("v_row_w", "kw_col_w", "own_dv_pu_per_kw", "own_dv_pu_per_kvar", "own_element",
                  "own_dloading_pct_per_kw", "own_dflow_kw_per_kw")


def needs_sensitivities(cfg: StudyFile) -> bool:
    """The DSO's linear model is needed by sensitivity-based curtailment, by its demand
    response and by network-aware clearing."""
    ctl = cfg.controllers
    cur = ctl.curtailment
    curtails = ctl.enabled and cur.enabled and cur.policy != "group_voltage"
    return curtails or (ctl.enabled and ctl.demand_response.enabled) or cfg.market.network_aware != "off"


#: ``controllers.sensitivities: auto`` takes the grouped model when the point model's
#: float32 matrices, ``4 (2 u^2 + 2 m u + b u)`` bytes, would exceed this [MB]: on the
#: 1000-load synthetic feeder with ``secondary`` connections 1000 prosumers stay on
#: points (25 MB), 3000 go grouped (226 MB); every study of 40 prosumers stays on points.
AUTO_GROUPED_MB = 64.0


def chosen_model(feeder: OpenDSSFeeder, setting: str, limit_mb: float = AUTO_GROUPED_MB) -> str:
    """``points`` or ``grouped``: what ``controllers.sensitivities`` (``auto``, ``points``,
    ``grouped``) picks for ``feeder`` with its customers attached; ``auto`` goes
    grouped above ``limit_mb`` of point-model matrices when that has fewer points."""
    if setting in ("points", "grouped"):
        return setting
    if setting != "auto":
        raise ValueError(f"controllers.sensitivities: {setting!r} is not one of auto, points, grouped")
    u = int(np.unique(feeder.customer_point_of).size)
    m = len(feeder.element_p_kw()[0])
    b = len(feeder.vuf_pct()[0])
    dense_mb = 4.0 * (2 * u * u + 2 * m * u + b * u) / 1e6
    fewer = np.unique(feeder.customer_group_point_of).size < u
    return "grouped" if dense_mb > limit_mb and fewer else "points"


def _identity(point_of: np.ndarray | None, n_points: int) -> bool:
    return point_of is None or (point_of.size == n_points
                                and bool((point_of == np.arange(n_points)).all()))


@dataclass(frozen=True)
class PointMatrix:
    """A customer-indexed matrix held over connection points, never expanded.

    Entry ``(r, i)`` is ``pts[point_of[r], point_of[i]]`` when ``rows_by_point``
    (customer voltages: ``E A E^T``, ``E`` the n x u incidence ``E[i, point_of[i]] =
    1``) and ``pts[r, point_of[i]]`` otherwise (element or bus rows: ``B E^T``).
    ``point_of`` None: every customer its own point, and every operation is the plain
    array's (``pts[r]``, ``pts @ x``), bit for bit.

    The grouped model (module doc) adds per-customer weights and own terms: entry
    ``(r, i)`` is ``row_w[r] * pts[., point_of[i]] * col_w[i]`` plus ``own[i]`` where
    ``r`` is customer ``i`` itself (rows by point: ``R E A E^T W + D``) or its own
    element ``own_row[i]`` (element rows: ``B E^T W`` plus one entry per customer).
    ``cols_expanded``: ``pts`` is (u, n), its columns already the customers' (the
    closed-loop response, federates/controllers/dso.py ``closed_loop_dv``). ``row_of``
    (element rows): each row's index in ``pts``, -1 for a row that is zero but for own
    entries (the grouped model's drops). Any of them None / False: that part is absent;
    all absent is the plain point matrix.
    """

    pts: np.ndarray  # (u, u) or (m, u); (u, n) when cols_expanded
    point_of: np.ndarray | None  # (n,) ints in 0 .. u-1; None: the identity
    rows_by_point: bool
    row_w: np.ndarray | None = None  # (n,) rows by point only
    col_w: np.ndarray | None = None  # (n,)
    own: np.ndarray | None = None  # (n,)
    own_row: np.ndarray | None = None  # (n,) element rows: customer i's own row, -1 none
    cols_expanded: bool = False
    row_of: np.ndarray | None = None  # (m,) element rows only

    @classmethod
    def of(cls, m, *, rows_by_point: bool) -> PointMatrix:
        """``m`` itself if a PointMatrix, else the customer-level array ``m`` (float64) as one."""
        if isinstance(m, PointMatrix):
            return m
        return cls(np.asarray(m, dtype=float), None, rows_by_point)

    @property
    def _plain(self) -> bool:
        return (self.row_w is None and self.col_w is None and self.own is None
                and not self.cols_expanded and self.row_of is None)

    @cached_property
    def _p(self) -> np.ndarray:
        """``point_of`` as an array (the identity spelled out)."""
        if self.point_of is not None:
            return np.asarray(self.point_of)
        return np.arange(self.pts.shape[0] if self.rows_by_point else self.pts.shape[1])

    @property
    def _m(self) -> int:
        """Element rows (the stored ones and the zero ones)."""
        return self.pts.shape[0] if self.row_of is None else self.row_of.size

    @cached_property
    def _owner(self) -> np.ndarray:
        """(m,) the customer whose own entry sits in each element row, -1 none."""
        owner = np.full(self._m, -1, dtype=np.int64)
        if self.own_row is not None:
            has = np.flatnonzero(self.own_row >= 0)
            owner[self.own_row[has]] = has
        return owner

    @property
    def shape(self) -> tuple[int, int]:
        if self.point_of is None and self._plain:
            return self.pts.shape
        n = self._p.size
        return (n if self.rows_by_point else self._m, n)

    def row(self, r: int) -> np.ndarray:
        """Row ``r`` (a customer, or an element / bus) over the customers (length n)."""
        if self._plain:
            if self.point_of is None:
                return self.pts[r]
            return self.pts[self.point_of[r] if self.rows_by_point else r][self.point_of]
        p = self._p
        k = p[r] if self.rows_by_point else (r if self.row_of is None else self.row_of[r])
        if k < 0:
            out = np.zeros(p.size)
        else:
            src = self.pts[k]
            out = np.array(src if self.cols_expanded else src[p], dtype=float)  # a copy
        if self.col_w is not None:
            out *= self.col_w
        if self.row_w is not None:
            out *= self.row_w[r]
        if self.own is not None:
            i = r if self.rows_by_point else int(self._owner[r])
            if i >= 0:
                out[i] += self.own[i]
        return out

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        """``M @ x`` for ``x`` per customer: ``E (A (E^T x))`` (rows by point) or ``B (E^T x)``."""
        if self._plain:
            if self.point_of is None:
                return self.pts @ x
            y = self.pts @ np.bincount(self.point_of, weights=np.asarray(x, dtype=float),
                                       minlength=self.pts.shape[1])
            return y[self.point_of] if self.rows_by_point else y
        x = np.asarray(x, dtype=float)
        p = self._p
        xw = x if self.col_w is None else x * self.col_w
        y = self.pts @ (xw if self.cols_expanded else np.bincount(p, weights=xw, minlength=self.pts.shape[1]))
        if self.rows_by_point:
            y = y[p]
        elif self.row_of is not None:
            y = np.concatenate([y, [0.0]])[self.row_of]  # -1: the appended zero
        if self.row_w is not None:
            y = y * self.row_w
        if self.own is not None:
            if self.rows_by_point:
                y = y + self.own * x
            else:
                has = np.flatnonzero(self.own_row >= 0)
                y = y.copy()
                np.add.at(y, self.own_row[has], self.own[has] * x[has])
        return y

    def _base_at_own(self) -> np.ndarray:
        """The weighted ``pts`` part of each customer's own entry (0 where it has none)."""
        p, n = self._p, self._p.size
        cols = np.arange(n) if self.cols_expanded else p
        if self.rows_by_point:
            rows, has = p, np.arange(n)
        else:
            has = np.flatnonzero(self.own_row >= 0)
            rows = self.own_row[has] if self.row_of is None else self.row_of[self.own_row[has]]
            cols = cols[has]
            stored = rows >= 0
            has, rows, cols = has[stored], rows[stored], cols[stored]
        base = np.zeros(n)
        base[has] = np.asarray(self.pts[rows, cols], dtype=float)
        if self.col_w is not None:
            base[has] *= self.col_w[has]
        if self.row_w is not None:
            base[has] *= self.row_w[has]
        return base

    def clip_positive(self) -> PointMatrix:
        """``max(M, 0)`` elementwise (it commutes with the expansion and with
        non-negative weights; an own entry becomes ``max(base + own, 0) - max(base, 0)``)."""
        if self._plain:
            return PointMatrix(np.clip(self.pts, 0, None), self.point_of, self.rows_by_point)
        for w in (self.row_w, self.col_w):
            if w is not None and (w < 0).any():
                raise ValueError("clip_positive needs non-negative row and column weights")
        own = self.own
        if own is not None:
            base = self._base_at_own()
            own = np.clip(base + own, 0, None) - np.clip(base, 0, None)
        return PointMatrix(np.clip(self.pts, 0, None), self.point_of, self.rows_by_point, self.row_w,
                           self.col_w, own, self.own_row, self.cols_expanded, self.row_of)

    def dense(self) -> np.ndarray:
        """The customer-level array (n x n or m x n): for tests and small cases only."""
        if self._plain:
            if self.point_of is None:
                return np.asarray(self.pts)
            rows = self.pts[self.point_of] if self.rows_by_point else self.pts
            return rows[:, self.point_of]
        p = self._p
        if self.rows_by_point:
            rows = np.asarray(self.pts[p], dtype=float)
        elif self.row_of is not None:
            rows = np.concatenate([np.asarray(self.pts, dtype=float),
                                   np.zeros((1, self.pts.shape[1]))])[self.row_of]
        else:
            rows = np.asarray(self.pts, dtype=float)
        out = rows if self.cols_expanded else rows[:, p]
        if self.col_w is not None:
            out = out * self.col_w[None, :]
        if self.row_w is not None:
            out = out * self.row_w[:, None]
        out = np.array(out, dtype=float)
        if self.own is not None:
            if self.rows_by_point:
                out[np.arange(p.size), np.arange(p.size)] += self.own
            else:
                has = np.flatnonzero(self.own_row >= 0)
                out[self.own_row[has], has] += self.own[has]
        return out


@dataclass(frozen=True)
class Sensitivities:
    """Linear model of the limits around an operating point (see the module doc).

    The matrices are over the u connection points (``point_of`` maps each of the n
    customers to its point; None: every customer its own, u = n); the operating
    point's ``v0_pu`` and the names are per customer. Consumers read them per customer
    through the ``customer_*`` views (:class:`PointMatrix`)."""

    participants: list[str]
    elements: list[str]
    buses: list[str]
    v0_pu: np.ndarray
    loading0_pct: np.ndarray
    flow0_kw: np.ndarray
    vuf0_pct: np.ndarray
    source0_kw: float
    dv_pu_per_kw: np.ndarray  # (u, u)
    dloading_pct_per_kw: np.ndarray  # (m, u)
    dflow_kw_per_kw: np.ndarray  # (m, u)
    dvuf_pct_per_kw: np.ndarray  # (b, u)
    dsource_kw_per_kw: np.ndarray  # (u,)
    dv_pu_per_kvar: np.ndarray  # (u, u)
    point_of: np.ndarray | None = None  # (n,)
    # the grouped model (module doc), all (n,) and all None otherwise
    v_row_w: np.ndarray | None = None  # a customer's voltage per pu at its point [-]
    kw_col_w: np.ndarray | None = None  # kW arriving at its point per kW exported [-]
    own_dv_pu_per_kw: np.ndarray | None = None  # its own drop's voltage rise [pu / kW]
    own_dv_pu_per_kvar: np.ndarray | None = None  # ... per kvar drawn [pu / kvar]
    own_element: np.ndarray | None = None  # index of its drop in ``elements``, -1 none
    own_dloading_pct_per_kw: np.ndarray | None = None  # its drop's loading [% / kW]
    own_dflow_kw_per_kw: np.ndarray | None = None  # its drop's flow [kW / kW]
    element_rows: np.ndarray | None = None  # grouped: the elements whose loading / flow rows are stored

    def __post_init__(self) -> None:
        n, u = len(self.participants), np.shape(self.dv_pu_per_kw)[0]
        problems = []
        if self.point_of is None:
            if u != n:
                problems.append(f"{u} points without point_of for {n} customers")
        else:
            p = np.asarray(self.point_of)
            if p.shape != (n,) or (n and (p.min() < 0 or p.max() >= u)):
                problems.append(f"point_of must hold {n} ints in 0..{u - 1}")
        m = len(self.elements) if self.element_rows is None else np.shape(self.element_rows)[0]
        for name, want in (("dv_pu_per_kw", (u, u)), ("dv_pu_per_kvar", (u, u)),
                           ("dloading_pct_per_kw", (m, u)),
                           ("dflow_kw_per_kw", (m, u)),
                           ("dvuf_pct_per_kw", (len(self.buses), u)), ("dsource_kw_per_kw", (u,))):
            if np.shape(getattr(self, name)) != want:
                problems.append(f"{name} has shape {np.shape(getattr(self, name))}, expected {want}")
        grouped = [getattr(self, f) is not None for f in GROUPED_FIELDS]
        if any(grouped) and not all(grouped):
            problems.append("the grouped model needs all of " + ", ".join(GROUPED_FIELDS))
        if all(grouped):
            if self.point_of is None:
                problems.append("the grouped model needs point_of")
            for f in GROUPED_FIELDS:
                if np.shape(getattr(self, f)) != (n,):
                    problems.append(f"{f} has shape {np.shape(getattr(self, f))}, expected ({n},)")
        if problems:
            raise ValueError("inconsistent sensitivities: " + "; ".join(problems))

    @property
    def n_points(self) -> int:
        """u, the distinct connection points."""
        return int(np.shape(self.dv_pu_per_kw)[0])

    @property
    def grouped(self) -> bool:
        """The grouped model: ``secondary`` customers on their service transformer's
        point plus their own drops (module doc)."""
        return self.own_dv_pu_per_kw is not None

    @cached_property
    def _row_of(self) -> np.ndarray | None:
        """Each element's row in the stored loading / flow matrices, -1 for the zero
        rows left out (None: every row stored)."""
        if self.element_rows is None:
            return None
        row_of = np.full(len(self.elements), -1, dtype=np.int64)
        row_of[np.asarray(self.element_rows)] = np.arange(np.shape(self.element_rows)[0])
        return row_of

    @cached_property
    def _cols(self) -> np.ndarray | None:
        """``point_of`` as the views take it: None when it is the identity."""
        return None if _identity(self.point_of, self.n_points) else np.asarray(self.point_of)

    @property
    def customer_dv_pu_per_kw(self) -> PointMatrix:
        """(n, n) [pu / kW]: customer ``j``'s voltage per kW exported by customer ``i``."""
        if self.grouped:
            return PointMatrix(self.dv_pu_per_kw, self.point_of, True, row_w=self.v_row_w,
                               col_w=self.kw_col_w, own=self.own_dv_pu_per_kw)
        return PointMatrix(self.dv_pu_per_kw, self._cols, True)

    @property
    def customer_dv_pu_per_kvar(self) -> PointMatrix:
        """(n, n) [pu / kvar]: customer ``j``'s voltage per kvar drawn by customer ``i``."""
        if self.grouped:
            return PointMatrix(self.dv_pu_per_kvar, self.point_of, True, row_w=self.v_row_w,
                               own=self.own_dv_pu_per_kvar)
        return PointMatrix(self.dv_pu_per_kvar, self._cols, True)

    @property
    def customer_dloading_pct_per_kw(self) -> PointMatrix:
        """(m, n) [% / kW]: element loading per kW exported by customer ``i``."""
        if self.grouped:
            return PointMatrix(self.dloading_pct_per_kw, self.point_of, False, col_w=self.kw_col_w,
                               own=self.own_dloading_pct_per_kw, own_row=self.own_element, row_of=self._row_of)
        return PointMatrix(self.dloading_pct_per_kw, self._cols, False)

    @property
    def customer_dflow_kw_per_kw(self) -> PointMatrix:
        """(m, n) [kW / kW]: element flow per kW exported by customer ``i``."""
        if self.grouped:
            return PointMatrix(self.dflow_kw_per_kw, self.point_of, False, col_w=self.kw_col_w,
                               own=self.own_dflow_kw_per_kw, own_row=self.own_element, row_of=self._row_of)
        return PointMatrix(self.dflow_kw_per_kw, self._cols, False)

    @property
    def customer_dvuf_pct_per_kw(self) -> PointMatrix:
        """(b, n) [% / kW]: bus VUF per kW exported by customer ``i``."""
        if self.grouped:
            return PointMatrix(self.dvuf_pct_per_kw, self.point_of, False, col_w=self.kw_col_w)
        return PointMatrix(self.dvuf_pct_per_kw, self._cols, False)

    @property
    def customer_dsource_kw_per_kw(self) -> np.ndarray:
        """(n,) [kW / kW]: substation import per kW exported by customer ``i``."""
        if self.grouped:
            return self.dsource_kw_per_kw[self.point_of] * self.kw_col_w
        cols = self._cols
        return self.dsource_kw_per_kw if cols is None else self.dsource_kw_per_kw[cols]

    def save(self, path: Path) -> None:
        f32 = np.float32
        n = len(self.participants)
        point_of = np.arange(n) if self.point_of is None else np.asarray(self.point_of)
        np.savez(
            path, participants=np.asarray(self.participants), elements=np.asarray(self.elements),
            buses=np.asarray(self.buses), v0_pu=self.v0_pu, loading0_pct=self.loading0_pct,
            flow0_kw=self.flow0_kw, vuf0_pct=self.vuf0_pct, source0_kw=np.float64(self.source0_kw),
            dv_pu_per_kw=np.asarray(self.dv_pu_per_kw, f32),
            dloading_pct_per_kw=np.asarray(self.dloading_pct_per_kw, f32),
            dflow_kw_per_kw=np.asarray(self.dflow_kw_per_kw, f32),
            dvuf_pct_per_kw=np.asarray(self.dvuf_pct_per_kw, f32),
            dsource_kw_per_kw=self.dsource_kw_per_kw, dv_pu_per_kvar=np.asarray(self.dv_pu_per_kvar, f32),
            point_of=point_of.astype(np.int64),
            **({f: getattr(self, f) for f in GROUPED_FIELDS} if self.grouped else {}),
            **({} if self.element_rows is None else {"element_rows": np.asarray(self.element_rows, np.int64)}))

    @classmethod
    def load(cls, path: Path) -> Sensitivities:
        """The arrays :meth:`save` wrote; a file without ``point_of`` (written before
        connection points) is per customer, which is what its shapes must then be."""
        with np.load(path, allow_pickle=False) as z:
            return cls(
                participants=[str(x) for x in z["participants"]],
                elements=[str(x) for x in z["elements"]], buses=[str(x) for x in z["buses"]],
                v0_pu=z["v0_pu"], loading0_pct=z["loading0_pct"], flow0_kw=z["flow0_kw"],
                vuf0_pct=z["vuf0_pct"], source0_kw=float(z["source0_kw"]),
                dv_pu_per_kw=z["dv_pu_per_kw"], dloading_pct_per_kw=z["dloading_pct_per_kw"],
                dflow_kw_per_kw=z["dflow_kw_per_kw"], dvuf_pct_per_kw=z["dvuf_pct_per_kw"],
                dsource_kw_per_kw=z["dsource_kw_per_kw"], dv_pu_per_kvar=z["dv_pu_per_kvar"],
                point_of=z["point_of"] if "point_of" in z.files else None,
                **{f: z[f] for f in (*GROUPED_FIELDS, "element_rows") if f in z.files})


def _state(feeder: OpenDSSFeeder) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    _, loading = feeder.element_loading_pct()
    _, flow = feeder.element_p_kw()
    _, vuf = feeder.vuf_pct()
    return feeder.customer_v_pu(), loading, flow, vuf, feeder.source_pq()[0]


def compute_sensitivities(feeder: OpenDSSFeeder, inverter_kva: np.ndarray, *,
                          export_share: float = 0.5, background_mult: float = 0.6,
                          delta_kw: float = 1.0, per_customer: bool = False,
                          grouped: bool = False) -> Sensitivities:
    """Perturbation sensitivities of ``feeder`` (customers attached) per kW of export.

    ``inverter_kva`` [kVA] per customer sets the operating point's exports
    (``export_share`` x kVA [kW]); ``background_mult`` [-] scales the original loads;
    ``delta_kw`` [kW, and kvar for ``dv_pu_per_kvar``] is the perturbation. One
    perturbation per connection point (``feeder.customer_point_of``), applied to its
    first customer in site order; ``per_customer``: one per customer whatever the
    points (the model before connection points, kept to check them against);
    ``grouped``: the grouped model, one perturbation per service transformer
    (``feeder.customer_group_point_of``) and each ``secondary`` customer's own drop
    (module doc, :func:`_grouped`). The feeder is left at the operating point with OpenDSS controls as the last solve had
    them; build a fresh feeder for a run.
    """
    kva = np.asarray(inverter_kva, dtype=float)
    n = feeder.n_customers
    if kva.shape != (n,):
        raise ValueError(f"inverter_kva has shape {kva.shape}; expected ({n},)")
    if delta_kw <= 0:
        raise ValueError(f"delta_kw must be > 0, got {delta_kw}")
    if per_customer and grouped:
        raise ValueError("per_customer and grouped exclude each other")
    point_of = (np.arange(n) if per_customer else feeder.customer_group_point_of if grouped
                else feeder.customer_point_of)
    # each point's first customer: points are numbered by first appearance, so these ascend
    reps = np.unique(point_of, return_index=True)[1]
    u = reps.size
    second = _second_of(point_of, reps) if grouped else None
    feeder.set_background_scale(background_mult)
    p0 = -export_share * kva  # export is negative p
    q0 = np.zeros(n)
    feeder.set_customer_powers(p0, q0)
    feeder.solve(controls=True)  # regulators/capacitors settle at the operating point ...
    feeder.solve(controls=False)  # ... then stay there for every perturbation
    v0, l0, f0, u0, s0 = _state(feeder)
    v0_pts = v0[reps]
    elements, _ = feeder.element_p_kw()
    buses, _ = feeder.vuf_pct()
    f32 = np.float32  # see the module doc
    dv = np.empty((u, u), f32)
    dl = np.empty((len(l0), u), f32)
    df = np.empty((len(f0), u), f32)
    du = np.empty((len(u0), u), f32)
    ds = np.empty(u)
    p = p0.copy()
    dv_second = np.zeros((2, u))  # grouped: each point's second customer, per kW and per kvar
    for k, i in enumerate(reps):
        p[i] = p0[i] - delta_kw
        feeder.set_customer_powers(p, q0)
        feeder.solve(controls=False)
        v, ld, fl, uf, s = _state(feeder)
        dv[:, k] = (v[reps] - v0_pts) / delta_kw
        if second is not None and second[k] >= 0:
            dv_second[0, k] = (v[second[k]] - v0[second[k]]) / delta_kw
        dl[:, k] = (ld - l0) / delta_kw
        df[:, k] = (fl - f0) / delta_kw
        du[:, k] = (uf - u0) / delta_kw
        ds[k] = (s - s0) / delta_kw
        p[i] = p0[i]
    dvq = np.empty((u, u), f32)
    q = q0.copy()
    feeder.set_customer_powers(p0, q)
    for k, i in enumerate(reps):
        q[i] = delta_kw  # kvar drawn
        feeder.set_customer_powers(p0, q)
        feeder.solve(controls=False)
        v = feeder.customer_v_pu()
        dvq[:, k] = (v[reps] - v0_pts) / delta_kw
        if second is not None and second[k] >= 0:
            dv_second[1, k] = (v[second[k]] - v0[second[k]]) / delta_kw
        q[i] = 0.0
    feeder.set_customer_powers(p0, q0)
    if grouped:
        return _grouped(Sensitivities(
            participants=[s.participant for s in feeder.sites], elements=list(elements),
            buses=list(buses), v0_pu=v0, loading0_pct=l0, flow0_kw=f0, vuf0_pct=u0, source0_kw=s0,
            dv_pu_per_kw=dv, dloading_pct_per_kw=np.nan_to_num(dl), dflow_kw_per_kw=df,
            dvuf_pct_per_kw=np.nan_to_num(du), dsource_kw_per_kw=ds, dv_pu_per_kvar=dvq,
            point_of=np.asarray(point_of, dtype=np.int64)), reps, second, dv_second,
            feeder.customer_drop_element(), -p0, delta_kw)
    return Sensitivities(
        participants=[s.participant for s in feeder.sites], elements=list(elements),
        buses=list(buses), v0_pu=v0, loading0_pct=l0, flow0_kw=f0, vuf0_pct=u0, source0_kw=s0,
        dv_pu_per_kw=dv, dloading_pct_per_kw=np.nan_to_num(dl), dflow_kw_per_kw=df,
        dvuf_pct_per_kw=np.nan_to_num(du), dsource_kw_per_kw=ds, dv_pu_per_kvar=dvq,
        point_of=np.asarray(point_of, dtype=np.int64))


def _second_of(point_of: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Each point's second customer in site order, -1 for a point of one customer."""
    second = np.full(reps.size, -1, dtype=np.int64)
    for i in range(point_of.size - 1, -1, -1):  # backwards: the earliest non-first wins
        k = point_of[i]
        if i != reps[k]:
            second[k] = i
    return second


def _grouped(raw: Sensitivities, reps: np.ndarray, second: np.ndarray, dv_second: np.ndarray,
             drop_element: list[str], export_kw: np.ndarray, delta_kw: float) -> Sensitivities:
    """The grouped model from one perturbation per point (``raw``: columns of each
    point's first customer, rows at the points' first customers) and the responses at
    each point's second customer (``dv_second``: per kW, per kvar); ``export_kw`` the
    operating point's exports. See the module doc, "Grouped model", for the drop model
    and what is measured against it."""
    p = np.asarray(raw.point_of)
    u = reps.size
    x = np.asarray(raw.v0_pu, dtype=float)
    a = np.asarray(export_kw, dtype=float)
    index = {e: k for k, e in enumerate(raw.elements)}
    own_el = np.asarray([index.get(e, -1) if e else -1 for e in drop_element], dtype=np.int64)
    sec = own_el >= 0  # customers with a drop of their own
    dv = np.asarray(raw.dv_pu_per_kw, dtype=float)
    dvq = np.asarray(raw.dv_pu_per_kvar, dtype=float)
    has = (second >= 0) & sec[reps]  # points of two or more drop customers: the drop is measurable
    rep_has, sec_has = reps[has], second[has]
    kk = np.flatnonzero(has)
    # the drop's resistance c [pu voltage per kW at 1 pu], from the first customers' own rise d
    d_meas = dv[kk, kk] - dv_second[0, kk]
    if d_meas.size:
        c = float(np.median(d_meas * x[rep_has] / (1.0 - d_meas * a[rep_has] / x[rep_has])))
    else:  # no point with two: from the drops' marginal losses (flow per kW = -1 + c (2 a + delta) / x^2)
        r_own = reps[sec[reps]]
        f_own = np.asarray(raw.dflow_kw_per_kw, dtype=float)[own_el[r_own], p[r_own]]
        c = float(np.median((f_own + 1.0) * x[r_own] ** 2 / (2.0 * a[r_own] + delta_kw))) if r_own.size else 0.0
    c_i = np.where(sec, c, 0.0)
    ell = c_i * (2.0 * a + delta_kw) / x**2  # marginal drop loss per kW exported (secant over delta)
    diag = np.arange(u)
    r_el = own_el[reps]
    ok = r_el >= 0
    f_rep = np.zeros(u)
    f_rep[ok] = raw.dflow_kw_per_kw[r_el[ok], diag[ok]]
    if ok.any() and (ell[reps[ok]] > 0).all():  # the losses' scale as the first customers' drops measure it
        ell *= float(np.median((f_rep[ok] + 1.0) / ell[reps[ok]]))
    col_w = 1.0 - ell
    row_w = 1.0 / (1.0 + c_i * a / x**2)
    shape = 1.0 / (x + c_i * a / x)  # own rise per unit c at each customer's operating point

    def own_of(m: np.ndarray, meas_second: np.ndarray) -> np.ndarray:
        """Each point's first customer's own term (measured where a second customer
        tells the point's part from the drop's), then every drop customer's by its shape."""
        d_pt = np.zeros(u)
        d_pt[kk] = m[kk, kk] - row_w[rep_has] / row_w[sec_has] * meas_second[kk]
        k_shape = float(np.median(d_pt[kk] / shape[rep_has])) if kk.size else 0.0
        lone = np.flatnonzero(~has & sec[reps])
        d_pt[lone] = k_shape * shape[reps[lone]]
        return np.where(sec, d_pt[p] * shape / shape[reps][p], 0.0)

    own_kw = own_of(dv, dv_second[0])
    own_kvar = own_of(dvq, dv_second[1])
    a_kw = dv.copy()
    a_kw[diag, diag] -= own_kw[reps]
    a_kw /= row_w[reps][:, None] * col_w[reps][None, :]
    a_kvar = dvq.copy()
    a_kvar[diag, diag] -= own_kvar[reps]
    a_kvar /= row_w[reps][:, None]
    # element rows: the points' columns per kW arriving at the point; drop rows are
    # their own customer's alone (the others' effect on them is second order)
    f32 = np.float32
    per_pt = (1.0 / col_w[reps]).astype(f32)[None, :]  # float32 in place: no m x u float64 copies
    l_rep = np.zeros(u)
    l_rep[ok] = raw.dloading_pct_per_kw[r_el[ok], diag[ok]]
    keep = np.setdiff1d(np.arange(len(raw.elements)), own_el[sec])  # drop rows: own entries only
    dl = raw.dloading_pct_per_kw[keep]
    dl *= per_pt
    df = raw.dflow_kw_per_kw[keep]
    df *= per_pt
    du = np.array(raw.dvuf_pct_per_kw, dtype=f32)
    du *= per_pt
    # loading ~ |I| = a / v: its change per kW (1 - a dv_ii / v) / v; flow -1 + marginal loss
    dv_ii = row_w * a_kw[p, p] * col_w + own_kw
    g = (1.0 - a * dv_ii / x) / x
    rp = reps[p]
    own_l = np.where(sec, l_rep[p] * g / g[rp], 0.0)
    own_f = np.where(sec, -1.0 + (f_rep[p] + 1.0) * ell / np.where(ell[rp] > 0, ell[rp], 1.0), 0.0)
    return replace(
        raw, dv_pu_per_kw=a_kw.astype(f32), dv_pu_per_kvar=a_kvar.astype(f32),
        dloading_pct_per_kw=dl, dflow_kw_per_kw=df, element_rows=keep, dvuf_pct_per_kw=du,
        dsource_kw_per_kw=np.asarray(raw.dsource_kw_per_kw, dtype=float) / col_w[reps],
        v_row_w=row_w, kw_col_w=col_w, own_dv_pu_per_kw=own_kw, own_dv_pu_per_kvar=own_kvar,
        own_element=own_el, own_dloading_pct_per_kw=own_l, own_dflow_kw_per_kw=own_f)


def describe_file(path: Path) -> dict[str, object]:
    """What ``sensitivities.npz`` at ``path`` holds, for the run's manifest: the model
    (``points`` or ``grouped``: what ``controllers.sensitivities`` chose), customers,
    points (u) and the file's size [MB]; reads the arrays' headers only."""
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        n = int(z["point_of"].shape[0]) if "point_of" in names else int(z["participants"].shape[0])
        u = int(z["dv_pu_per_kw"].shape[0])
    return {"model": "grouped" if GROUPED_FIELDS[0] in names else "points", "customers": n, "points": u,
            "file_mb": round(path.stat().st_size / 1e6, 1)}


def load_sensitivities(study: Study) -> Sensitivities:
    """The DSO's linear model of the study's feeder (``sensitivities.npz`` in its run
    folder, written by prepare_run when curtailment or network-aware clearing needs it),
    checked to be of the study's customers."""
    path = study.run_dir / SENSITIVITIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sensitivities in this run folder")
    sens = Sensitivities.load(path)
    if sens.participants != study.participants:
        raise ValueError(f"{path}: customers do not match the run folder's sites.json")
    return sens
