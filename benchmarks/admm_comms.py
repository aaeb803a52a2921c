"""The distributed P2P clearing under lossy and slow comms: iterations, convergence and
welfare against the central LP.

    .venv/bin/python benchmarks/admm_comms.py [--duration 24h] [--start ...]
        [--cases 0:0:4,0.05:0:4,...] [--json PATH]

Each case ``loss:latency_s:patience`` runs ``configs/p2p.yaml`` in process with
``market.mechanism: admm_distributed``, ``comms.applies_to: [admm]`` (only the ADMM
iterates are lossy and late: the bids arrive as without comms), ``comms.loss_rate``,
``comms.latency_s`` and ``market.admm_patience_rounds``. Rounds are 2e-4 s apart; with
perfect comms a step's replies are in after 1 round, with a latency of 1.5e-4 s after 3,
3.5e-4 s after 5, 5.5e-4 s after 7 (the market goes on without them after
``patience`` rounds). Per case, over the intervals that have admissible pairs: how many
converged, how many fell back to the grid at the gate, the iterations and rounds
(median, max), the iterates lost, and the welfare of the clearing against the LP's on
the same accepted orders (``clear_p2p_lp`` on the run's ``bids`` table): the total, and
the worst converged interval. The in-process engine gives the federation's tables
(tests/federation/test_distributed_p2p.py), so these are the federation's figures too.
Nothing is asserted: the tests check the results, this reports the effect.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federates.common.config import load_config
from federates.common.messages import Order
from federates.market.p2p import clear_p2p_lp
from runner.engine import run_inprocess
from runner.launch import prepare_run

REPO = Path(__file__).resolve().parents[1]
CASES = "0:0:4,0.05:0:4,0.2:0:4,0.2:0:2,0:0.00015:4,0:0.00035:4,0:0.00035:8,0:0.00055:8"


def lp_welfare(bids, cfg) -> dict[int, float]:
    """The central LP's welfare [USD] of each interval's accepted orders."""
    out = {}
    for k, g in bids.groupby("interval"):
        orders = [Order(b.participant, b.side, int(k), float(b.energy_kwh), float(b.price_usd_per_kwh))
                  for b in g.itertuples() if b.energy_kwh > 0]
        out[int(k)] = clear_p2p_lp(orders, interval=int(k), retail_usd_per_kwh=cfg.tariff.retail(int(k)),
                                   feed_in_usd_per_kwh=cfg.tariff.feed_in(int(k))).welfare_usd
    return out


def run_case(loss: float, latency_s: float, patience: int, where: list[str], folder: Path) -> dict:
    cfg = load_config(REPO / "configs" / "p2p.yaml", [
        *where, "market.mechanism=admm_distributed", "comms.applies_to=[admm]", f"comms.loss_rate={loss}",
        f"comms.latency_s={latency_s}", f"market.admm_patience_rounds={patience}"])
    t0 = time.perf_counter()
    t = run_inprocess(prepare_run(cfg, folder))
    seconds = time.perf_counter() - t0
    r = t["admm_rounds"]
    r = r[r["n_pairs"] > 0]
    lp = lp_welfare(t["bids"], cfg)
    got = dict(zip(r["interval"], r["welfare_usd"], strict=True))
    conv = r[r["converged"]]
    worst = min(((got[k] - lp[k]) / lp[k] for k in conv["interval"] if lp[k] > 1e-9), default=0.0)
    lp_total = sum(lp[k] for k in got)
    return {
        "loss_rate": loss, "latency_s": latency_s, "patience_rounds": patience, "intervals": len(r),
        "converged": int(r["converged"].sum()), "fallback": int(r["fallback"].sum()),
        "iterations_median": float(r["iterations"].median()), "iterations_max": int(r["iterations"].max()),
        "rounds_median": float(r["rounds"].median()), "rounds_max": int(r["rounds"].max()),
        "requests_lost": int(r["requests_lost"].sum()), "requests_sent": int(r["requests_sent"].sum()),
        "welfare_usd": float(sum(got.values())), "lp_welfare_usd": lp_total,
        "welfare_vs_lp_pct": 100.0 * (sum(got.values()) - lp_total) / lp_total if lp_total else 0.0,
        "worst_converged_interval_vs_lp_pct": 100.0 * worst, "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", default="2026-06-21T00:00:00-04:00")
    ap.add_argument("--duration", default="24h")
    ap.add_argument("--cases", default=CASES, help="loss:latency_s:patience, comma-separated")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    where = [f"study.start={a.start}", f"study.duration={a.duration}"]
    rows = []
    print("loss  latency_s  patience  intervals  converged  fallback  it_med  it_max  rounds_med  "
          "lost/sent  welfare/LP_%  worst_conv_%  s")
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(a.cases.split(",")):
            loss, lat, pat = case.split(":")
            row = run_case(float(loss), float(lat), int(pat), where, Path(tmp) / f"c{i}")
            rows.append(row)
            print(f"{row['loss_rate']:<5} {row['latency_s']:<10} {row['patience_rounds']:<9} {row['intervals']:<10} "
                  f"{row['converged']:<10} {row['fallback']:<9} {row['iterations_median']:<7} "
                  f"{row['iterations_max']:<7} {row['rounds_median']:<11} "
                  f"{row['requests_lost']}/{row['requests_sent']:<6} {row['welfare_vs_lp_pct']:<13.3f} "
                  f"{row['worst_converged_interval_vs_lp_pct']:<13.3f} {row['seconds']:.0f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
