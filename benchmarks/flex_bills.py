"""What ``prosumers.flex_dispatch: cleared`` costs the households against ``planned``,
with the bills split by the settlements table.

The study: ``configs/tou.yaml`` (the default grid, 40 prosumers, a 16-21 h peak) from
2026-06-21 12:00 local for 20 h, EVs at half the homes (smart), heat pumps / ACs at
half (transactive), water heaters at 30 % (transactive), in process; once with each
dispatch mode. Per mode: the ACs' energy in the 16-21 h peak, the discomfort, the
metered energy, the bills and the absolute imbalance, then the bills split into

* ``peer``: paid to peers - received from peers,
* ``grid``: the scheduled purchases from the utility (retail),
* ``feed_in``: the scheduled sales to the utility (- received),
* ``imbalance``: metered - scheduled at the imbalance price (retail for a shortfall,
  feed-in for a surplus),

with the energy of each part, and the devices' bids (``flex_bids``: the energy bid for,
what the owner's own surplus covered, what was planned once dispatched).

    .venv/bin/python benchmarks/flex_bills.py [--modes planned,cleared] [--out DIR] [--reuse]

Prints one block per mode and the deltas; ``--reuse`` reads the run folders already in
``--out``. Nothing is asserted (tests/feeder/test_flex_dispatch_run.py checks results).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runner.run_folder import read_tables  # noqa: E402

CONFIG = REPO / "configs" / "tou.yaml"
SETS = ["study.start=2026-06-21T12:00:00-04:00", "study.duration=20h",
        "prosumers.ev.share=0.5", "prosumers.ev.control=smart",
        "prosumers.hvac.share=0.5", "prosumers.hvac.control=transactive",
        "prosumers.water_heater.share=0.3", "prosumers.water_heater.control=transactive"]
PEAK_HOURS = (16, 21)  # local, configs/tou.yaml's peak


def run(mode: str, out: Path, extra: list[str]) -> Path:
    run_dir = out / mode
    args = [sys.executable, "-m", "runner.cli", "run", str(CONFIG), "--engine", "inprocess", "--out",
            str(run_dir), "--no-report", "--quiet"]
    for s in [*SETS, f"prosumers.flex_dispatch={mode}", *extra]:
        args += ["--set", s]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{r.stdout}\n{r.stderr}")
    return run_dir


def figures(run_dir: Path) -> dict[str, float]:
    t = read_tables(run_dir)
    s = t["settlements"]
    s = s[s.participant.astype(str) != "dso"]
    f = t["flex"]
    # the 16-21 h peak by the tariff table (its retail is the peak's 0.42)
    tariff = t["tariff"].set_index("interval")
    peak = tariff.index[tariff.retail_usd_per_kwh == tariff.retail_usd_per_kwh.max()]
    imb_cost = s.imbalance_cost_usd
    out = {
        "ac_peak_kwh": float(f[f.interval.isin(peak)].hvac_kwh.sum()),
        "discomfort_c_h": float(f.discomfort_c_h.sum()),
        "ev_kwh": float(f.ev_kwh.sum()), "hvac_kwh": float(f.hvac_kwh.sum()), "wh_kwh": float(f.wh_kwh.sum()),
        "metered_kwh": float(s.metered_kwh.sum()),
        "bills_usd": float(s.net_cost_usd.sum()),
        "abs_imbalance_kwh": float(s.imbalance_kwh.abs().sum()),
        "imbalance_short_kwh": float(s.imbalance_kwh.clip(lower=0).sum()),
        "imbalance_surplus_kwh": float((-s.imbalance_kwh).clip(lower=0).sum()),
        "usd_peer": float((s.peer_paid_usd - s.peer_received_usd).sum()),
        "usd_grid": float((s.grid_paid_usd - s.replacement_cost_usd - imb_cost.clip(lower=0)).sum()),
        "usd_feed_in": float(-(s.grid_received_usd - (-imb_cost).clip(lower=0)).sum()),
        "usd_imbalance": float(imb_cost.sum()),
        "usd_imbalance_short": float(imb_cost.clip(lower=0).sum()),
        "usd_imbalance_surplus": float(imb_cost.clip(upper=0).sum()),
        "usd_replacement": float(s.replacement_cost_usd.sum()),
        "usd_charges": float(s.charges_usd.sum()),
        "kwh_peer_bought": float(s.peer_bought_kwh.sum()),
        "kwh_grid_scheduled": float((s.grid_bought_kwh - s.imbalance_kwh.clip(lower=0)).sum()),
        "kwh_feed_in_scheduled": float((s.grid_sold_kwh - (-s.imbalance_kwh).clip(lower=0)).sum()),
    }
    if "flex_bids" in t:
        fb = t["flex_bids"]
        for dev in ("ev", "hvac", "water_heater"):
            d = fb.device == dev
            out[f"bids_{dev}_kwh"] = float(fb.bid_kwh[d].sum())
            out[f"own_supply_{dev}_kwh"] = float(fb.own_kwh[d].sum()) if "own_kwh" in fb else 0.0
            out[f"planned_{dev}_kwh"] = float(fb.planned_kwh[d].sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="planned,cleared")
    ap.add_argument("--out", type=Path, default=Path("/tmp/flex_bills"))
    ap.add_argument("--reuse", action="store_true", help="read the run folders already in --out")
    ap.add_argument("--set", action="append", default=[], help="more overrides, for both modes")
    a = ap.parse_args()
    rows = {}
    for mode in a.modes.split(","):
        run_dir = a.out / mode if a.reuse else run(mode, a.out, a.set)
        rows[mode] = figures(run_dir)
    df = pd.DataFrame(rows)
    if len(rows) == 2:
        m0, m1 = list(rows)
        df["delta"] = df[m1] - df[m0]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.max_rows", 200):
        print(df.replace({np.nan: None}))


if __name__ == "__main__":
    main()
