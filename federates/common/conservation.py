"""Live conservation checks: every kWh and every dollar of an interval, checked while
the study runs, in both engines, from quantities computed on different paths.

Four checks, each made by the role that holds both sides (so the federation makes the
same checks as the in-process engine, in the same federates' processes):

``energy`` (meters role, once per market interval and meter)
    The meter's interval energy (the true register: the feeder's applied set-points,
    carried to the meters and integrated there) equals the integral of the power
    OpenDSS delivered to the customer's Load in the solved circuit (read from the
    solution by the feeder and integrated there) within :data:`ENERGY_TOLERANCE_KWH`
    plus :data:`SOLUTION_TOLERANCE` of the meter's apparent energy (the power flow's
    own convergence tolerance: no solution is closer than that to the set powers).
    It breaks when the physics did not draw what the meter bills: a customer Load
    pushed out of its constant-PQ voltage range, a set-point lost on its way to
    OpenDSS, a meter block that reached the wrong meters or steps.
``money`` (market role, once per settled interval)
    What the parties paid equals what they received, over every party: the
    prosumers (their settlement rows), the utility backstop and the grid operator.
    The per-participant accounts of settlement are summed and compared with the same
    money computed from the clearing's record instead: every peer trade's price x
    delivered energy, every network charge, every grid trade, and the imbalance and
    replacement energy at their prices (:func:`federates.market.books.money_flows`),
    within :data:`MONEY_TOLERANCE_USD`.
``power`` (feeder role, every physics step)
    The source's power equals the power drawn by every power-conversion element of the
    model plus the losses (three separate OpenDSS readouts) within
    :data:`POWER_TOLERANCE_PCT` of the step's gross power-conversion flow (at least
    1 kW): the solution's tolerance, not float noise.
``ledger`` (market role, once per settled interval)
    The settlement records in the ledger block as written (its float columns read back
    from the block's bytes) are one per settlement row and hold each row's values, so
    the ledger's totals are the settlement's (:func:`federates.market.books.ledger_differences`;
    a differing column is reported by its totals and its largest difference of one record,
    against :data:`MONEY_TOLERANCE_USD` / :data:`ENERGY_TOLERANCE_KWH`).

A broken check stops the run at that interval (:class:`ConservationError`, naming the
check, the interval or step and the numbers) unless ``feeder.conservation: warn``:
then it is a row of the ``conservation`` table and the run goes on. Each role writes
its rows as ``conservation_<role>``; the runner joins them into ``conservation``
(:func:`merge_tables`), so the two engines give the same table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from federates.common.errors import TecosimError

#: metered energy vs delivered energy [kWh] and every settled amount [USD]: both sides
#: are sums of float-rounded exact values (settlement is exact, OpenDSS gives a constant
#: PQ Load its set power to the last bits), so the tolerance is float noise with room
ENERGY_TOLERANCE_KWH = 1e-9
MONEY_TOLERANCE_USD = 1e-9
#: OpenDSS's power-flow convergence tolerance (``Solution.Tolerance``, its default,
#: which the adapter keeps: tests/feeder/test_conservation_physics.py reads it): a Load's
#: current injection is the one of the last iteration's voltage, so a constant-PQ Load
#: draws its set power only to about this fraction of its apparent power. The energy
#: check allows this fraction of the meter's apparent energy (the sum of |p + jq| dt
#: over the interval) on top of ENERGY_TOLERANCE_KWH; measured on the default day: at
#: most 1e-5 of it (a Volt-VAR customer drawing little p but much q shows it best).
SOLUTION_TOLERANCE = 1e-4
#: source vs load + losses: OpenDSS's solution tolerance, relative to the gross flow [%]
POWER_TOLERANCE_PCT = 0.1

CHECKS = ("energy", "money", "power", "ledger")
MODES = ("fail", "warn")
TABLE = "conservation"
DTYPES: dict[str, str] = {
    "check": "object", "interval": "int64", "step": "int64", "subject": "object",
    "expected": "float64", "actual": "float64", "error": "float64", "tolerance": "float64",
    "unit": "object", "detail": "object",
}


class ConservationError(TecosimError):
    """A broken conservation check (energy, money, power or ledger): the check, where
    and the numbers."""


class Conservation:
    """The conservation checks one role makes, and the rows of those that broke.

    ``owner`` names the role (its rows are the table ``conservation_<owner>``);
    ``mode`` ``fail`` raises :class:`ConservationError` at the first broken check,
    ``warn`` records it and goes on.
    """

    def __init__(self, owner: str, mode: str = "fail") -> None:
        if mode not in MODES:
            raise ValueError(f"feeder.conservation is {mode!r}; allowed: {', '.join(MODES)}")
        self.owner = owner
        self.mode = mode
        self._rows: list[tuple] = []
        self.n_checked = 0
        self.n_broken = 0

    def check(self, check: str, *, interval: int, step: int = -1, subject: str, expected: float,
              actual: float, tolerance: float, unit: str, error: float | None = None,
              detail: str = "") -> bool:
        """Check that ``actual`` equals ``expected`` within ``tolerance`` [``unit``]
        (``error``: the error to compare, default ``|actual - expected|``; NaN breaks
        the check). Returns whether it held; raises in ``fail`` mode when it did not."""
        if check not in CHECKS:
            raise ValueError(f"unknown conservation check {check!r}; allowed: {', '.join(CHECKS)}")
        self.n_checked += 1
        err = abs(actual - expected) if error is None else error
        if err <= tolerance:  # NaN is not <=: a check that cannot be made is broken
            return True
        self.n_broken += 1
        where = f"interval {interval}" + (f", step {step}" if step >= 0 else "")
        msg = (f"conservation check '{check}' broken at {where} ({subject}): expected {expected:.12g}, "
               f"got {actual:.12g}, error {err:.6g} {unit} > tolerance {tolerance:g} {unit}"
               + (f"; {detail}" if detail else ""))
        if self.mode == "fail":
            raise ConservationError(msg + " (feeder.conservation: warn records it and goes on)")
        self._rows.append((check, int(interval), int(step), subject, float(expected), float(actual),
                           float(err), float(tolerance), unit, detail))
        return False

    def table(self) -> dict[str, pd.DataFrame]:
        """The broken checks recorded since the last :meth:`forget`, as ``conservation_<owner>``."""
        return {f"{TABLE}_{self.owner}": pd.DataFrame(self._rows, columns=list(DTYPES)).astype(DTYPES)}

    def forget(self) -> None:
        """Drop the rows :meth:`table` gave (a chunk boundary, federates.common.tables)."""
        self._rows = []


def relative_pct(error: float, base: float, floor: float = 1.0) -> float:
    """``error`` as a percentage of ``max(|base|, floor)``."""
    return error / max(abs(base), floor) * 100.0 if math.isfinite(base) else math.nan


def merge_tables(results: Path, *, strict: bool = True) -> None:
    """The roles' ``conservation_<role>.parquet`` files joined into ``conservation.parquet``
    (sorted by interval, step, check and subject, so that both engines give the same
    table whatever order the roles drained in); the parts are removed. A run folder
    without parts (its roles predate the live checks) is left as it is. ``strict=False``
    (a failed or interrupted run): a part that cannot be read (a federate stopped before
    closing it) leaves every part as it is instead of raising."""
    parts = sorted(Path(results).glob(f"{TABLE}_*.parquet"))
    if not parts:
        return
    try:
        frames = [pd.read_parquet(p) for p in parts]
    except Exception:
        if strict:
            raise
        return
    df = pd.concat([f.astype(DTYPES) for f in frames], ignore_index=True)
    df = df.sort_values(["interval", "step", "check", "subject"], kind="stable", ignore_index=True)
    df.to_parquet(Path(results) / f"{TABLE}.parquet", index=False)
    for p in parts:
        p.unlink()
