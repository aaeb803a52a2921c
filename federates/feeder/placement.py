"""Where prosumers connect: a seeded placement on a feeder's loads (pure, no OpenDSS).

Works on the loads of any OpenDSS model (``feeder.path``), whatever their connection:
a prosumer always attaches line-to-neutral to ONE phase of the load it is placed on
(``CustomerSite.phase``), because a household service is single-phase. For a wye
single-phase load that is its phase; for a three-phase load (wye or delta,
``bus.1.2.3``) one of a, b, c; for a line-to-line load (single-phase delta or wye
across ``bus.1.2``, or a two-phase delta) one of its two phases, uniformly. This
is a deliberate simplification: tecosim's service transformer
(``OpenDSSFeeder.attach_customers``) is always single-phase from the bus node to
ground at the bus's L-N kV base, so every prosumer has one phase for the phase
communities, unbalance and loss layers. On a four-wire feeder a delta load is only
the model's way of spreading demand over phase pairs and L-N service is what the
real customers have. On a three-wire section (no neutral, e.g. behind a delta
winding) a real service transformer would be line-to-line; tecosim still connects
its primary node-to-ground, which OpenDSS accepts (ground is every node's
reference), but the section then needs a ground reference somewhere (a grounded
wye winding) or OpenDSS's voltages there float. Loads wired to no phase node (only
neutral nodes 0 or 4+) have no phases and are never chosen.

A load on a 120/240 V split-phase secondary (``LoadPoint.split_phase``: its two nodes
are the legs of one center-tapped transformer, as every load of IEEE 8500) has one
phase, its transformer's primary phase; the prosumer there is that house and is
connected across both legs (240 V) by ``OpenDSSFeeder.attach_customers``, not
line-to-neutral.
"""

from __future__ import annotations

import numpy as np

from federates.common.grid import CustomerSite, LoadPoint
from federates.common.rng import stream
from federates.common.units import PHASES


def _check_arguments(phase: str, count: int, customers_per_transformer: int) -> None:
    """ValueError for an unknown phase, a negative count or a group size below 1."""
    if phase != "any" and phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not allowed; use 'any', 'a', 'b' or 'c'")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if customers_per_transformer < 1:
        raise ValueError(f"customers_per_transformer must be >= 1, got {customers_per_transformer}")


def place_customers(
    load_points: list[LoadPoint],
    count: int,
    *,
    seed: int,
    phase: str = "any",
    customers_per_transformer: int = 3,
    spread: str = "weighted",
) -> list[CustomerSite]:
    """``count`` prosumer sites on the model's loads, the same for the same ``seed``.

    ``spread="weighted"``: each prosumer picks a load with probability proportional to
    its nominal kW (loads with kW <= 0 are never picked; a load may get several);
    ``"one_per_load"``: ``count`` distinct loads, drawn without replacement with the
    same weights (every eligible load once when ``count`` equals their number; more
    than that raises ValueError naming how many there are). Then a phase uniformly
    among the load's phases (in the load's wiring order; see the module docstring for
    delta and line-to-line loads), or the given ``phase`` (a/b/c; loads without it are
    not eligible).
    Sites are ordered by load (model order) and phase (a, b, c) and named ``p000``,
    ``p001``, ... in that order (wider numbers above 1000 prosumers); consecutive
    prosumers on the same load and phase share a service transformer ``group``
    (``g000``, ...) of at most ``customers_per_transformer``.

    Raises ValueError for an unknown phase, a negative count, a group size below 1,
    or when no load is eligible (naming the phase).
    """
    _check_arguments(phase, count, customers_per_transformer)
    eligible = [
        i for i, lp in enumerate(load_points)
        if lp.kw > 0 and lp.phases and (phase == "any" or phase in lp.phases)
    ]
    if not eligible:
        which = "any phase" if phase == "any" else f"phase {phase!r}"
        raise ValueError(f"no load with positive kW on {which} to place prosumers on")
    if count == 0:
        return []
    if spread not in ("weighted", "one_per_load"):
        raise ValueError(f"spread {spread!r} is not allowed; use 'weighted' or 'one_per_load'")
    if spread == "one_per_load" and count > len(eligible):
        raise ValueError(f"{count} prosumers, one per load, but only {len(eligible)} loads are eligible")
    rng = stream(seed, "placement")
    kw = np.asarray([load_points[i].kw for i in eligible], dtype=float)
    picks = rng.choice(len(eligible), size=count, p=kw / kw.sum(), replace=spread == "weighted")
    u = rng.random(count)
    draws: list[tuple[int, int]] = []  # (load index in load_points, phase index in PHASES)
    for k, r in zip(picks.tolist(), u.tolist(), strict=True):
        lp = load_points[eligible[k]]
        options = lp.phases if phase == "any" else (phase,)
        ph = options[min(int(r * len(options)), len(options) - 1)]
        draws.append((eligible[k], PHASES.index(ph)))
    draws.sort()
    width = max(3, len(str(count - 1)))
    sites: list[CustomerSite] = []
    group = -1
    in_group = customers_per_transformer
    last: tuple[int, int] | None = None
    for index, (li, pi) in enumerate(draws):
        if (li, pi) != last or in_group >= customers_per_transformer:
            group += 1
            in_group = 0
            last = (li, pi)
        in_group += 1
        lp = load_points[li]
        sites.append(CustomerSite(
            participant=f"p{index:0{width}d}",
            index=index,
            bus=lp.bus,
            phase=PHASES[pi],
            group=f"g{group:0{width}d}",
            load=lp.name,
        ))
    return sites
