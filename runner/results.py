"""After a run: the conservation checks of its kpis table and the one-screen summary.

The run folder is read by ``runner.run_folder`` (whole tables, or chunks of whole
market intervals for long runs); the KPIs, the per-interval kpis table and the study
totals of the summary are defined in ``runner.kpis``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from federates.common.conservation import POWER_TOLERANCE_PCT, ConservationError
from runner.run_folder import RESULTS, table_file

#: After-run conservation checks of the kpis (:func:`conservation_failures`; the live
#: checks while the study runs are federates/common/conservation.py): an interval breaks
#: a check when its kpis error exceeds the tolerance. Energy [kWh] and money [USD] are
#: settled exactly (fractions) and only rounded to float; here they are re-added from
#: the tables' rounded rows, a year's worth per check, hence 1e-6 rather than the live
#: checks' 1e-9. The feeder's power balance holds to OpenDSS's solution tolerance, so it
#: is relative to the step's gross power-conversion flow (grid.gross_kw) [%], at least
#: 1 kW: a net load that exports nearly cancel is no base for a mismatch that scales with
#: the flows; the same tolerance as the live check's.
ENERGY_TOLERANCE_KWH = 1e-6
MONEY_TOLERANCE_USD = 1e-6


#: (kpis column, check name, tolerance, unit) of each conservation check
CONSERVATION_CHECKS: tuple[tuple[str, str, float, str], ...] = (
    ("energy_balance_error_kwh", "energy balance (scheduled + curtailed + imbalance = metered)",
     ENERGY_TOLERANCE_KWH, "kWh"),
    ("money_balance_error_usd", "money balance (peer payments and network charges paid = received)",
     MONEY_TOLERANCE_USD, "USD"),
    ("power_balance_error_pct", "feeder power balance (source = load + losses)",
     POWER_TOLERANCE_PCT, "% of the gross load"),
)


def conservation_failures(k: pd.DataFrame) -> list[str]:
    """One message per broken conservation check of the kpis table ``k`` (empty: all hold).

    Each names the check, the worst interval, its error and the tolerance; a NaN
    error breaks the check too (something could not be checked).
    """
    out = []
    for col, name, tol, unit in CONSERVATION_CHECKS:
        x = k[col].to_numpy(dtype=float)
        bad = ~(x <= tol)
        if not bad.any():
            continue
        worst = np.where(np.isnan(x), np.inf, x)
        i = int(np.argmax(np.where(bad, worst, -np.inf)))
        n = int(bad.sum())
        extra = ("" if col != "power_balance_error_pct"
                 else f" ({float(k['power_balance_error_kw'].iloc[i]):.6g} kW)")
        out.append(f"{name} broken in {n} interval(s), worst interval {int(k['interval'].iloc[i])} "
                   f"(t_s={float(k['t_s'].iloc[i]):g}): error {x[i]:.6g} {unit}{extra} > tolerance {tol:g} {unit}")
    return out


def live_conservation_rows(run_dir: Path) -> int:
    """The live conservation checks that broke in a run with ``feeder.conservation:
    warn`` (rows of ``results/conservation.parquet``; 0 without the table)."""
    path = table_file(run_dir, "conservation")
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0


def check_conservation(k: pd.DataFrame, run_dir: Path, *, warn: bool = False) -> list[str]:
    """Fail the run when the kpis break a conservation check.

    Raises :class:`ConservationError` naming every broken check and writes the
    run's ``manifest.json`` status ``failed`` with that reason; the result tables stay.
    ``warn`` (``feeder.conservation: warn``): return the failures instead.
    """
    import json

    failures = conservation_failures(k)
    if not failures or warn:
        return failures
    msg = "conservation check failed: " + "; ".join(failures)
    path = Path(run_dir) / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        manifest["status"] = "failed"
        manifest["reason"] = msg
        path.write_text(json.dumps(manifest, indent=2, default=str))
    raise ConservationError(msg)



def format_summary(s: dict[str, float], wall_s: float, run_dir: Path, engine: str) -> str:
    lines = [
        f"tecosim run: {run_dir}  (engine: {engine}, wall time {wall_s:.1f} s)",
        f"  energy traded peer-to-peer    {s['energy_traded_kwh']:10.1f} kWh",
        (f"  mean peer trade price         {s['mean_price_usd_per_kwh']:10.4f} USD/kWh"
         if math.isfinite(s["mean_price_usd_per_kwh"]) else "  mean peer trade price               none (no peer trade)"),
        f"  curtailed energy              {s['curtailed_kwh']:10.1f} kWh",
        f"  violation minutes before ctrl {s['violation_min_before']:10.0f} min",
        f"  violation minutes after ctrl  {s['violation_min_after']:10.0f} min",
        f"  customer voltage min / max    {s['v_min_pu']:.4f} / {s['v_max_pu']:.4f} pu"
        f" (max {s['v_max_before_pu']:.4f} pu before control)",
        f"  grid import / export          {s['grid_import_kwh']:.0f} / {s['grid_export_kwh']:.0f} kWh,"
        f" losses {s['losses_kwh']:.1f} kWh",
        f"  thermal / unbalance / substation violation minutes before -> after ctrl: "
        f"{s['thermal_violation_min_before']:.0f} -> {s['thermal_violation_min_after']:.0f}, "
        f"{s['vuf_violation_min_before']:.0f} -> {s['vuf_violation_min_after']:.0f}, "
        f"{s['substation_violation_min_before']:.0f} -> {s['substation_violation_min_after']:.0f} min",
        f"  steps where control did not converge: {s['unconverged_steps']}",
        *([f"  EV charging {s['ev_charged_kwh']:.1f} kWh, missing at departure {s['ev_unmet_kwh']:.1f} kWh; "
           f"heat pumps / ACs {s['hvac_kwh']:.1f} kWh, discomfort {s['discomfort_c_h']:.1f} degC h; "
           f"water heaters {s.get('wh_kwh', 0.0):.1f} kWh, hot water short {s.get('hot_water_short_kwh', 0.0):.1f} kWh"]
          if "ev_charged_kwh" in s else []),
        *([f"  demand response: {s['dr_requested_kwh']:.1f} kWh asked, {s['dr_cut_kwh']:.1f} kWh cut, "
           f"{s['dr_paid_usd']:.2f} USD paid; load not served (load limits) {s.get('unserved_kwh', 0.0):.1f} kWh; "
           f"customer-minutes below v_min {s.get('voltage_under_before_customer_min', 0.0):.0f} before, "
           f"{s.get('voltage_under_after_customer_min', 0.0):.0f} after control"] if "dr_cut_kwh" in s else []),
        *([f"  conservation checks broken:   {s['conservation_broken']} (feeder.conservation: warn; "
           "rows in results/conservation.parquet)"] if s.get("conservation_broken") else []),
        f"  results: {run_dir / RESULTS}",
    ]
    return "\n".join(lines)
