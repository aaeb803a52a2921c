"""Peak memory and wall time of the prosumers role alone, against study length.

Drives ``ProsumersRole`` as the engines do, without market or grid: per market interval
``on_confirmations(k-1, [])``, ``bids(k)``, ``interval_deviations(k)``, and, when the
role has ``drain_tables`` (the streaming role), ``drain_tables()`` after every simulated
day; at the end ``tables()`` (the whole run for a role that cannot drain, as the
engines call it today). The study is ``configs/default.yaml`` (1-min physics steps,
15-min market, seed 42) with ``study.duration`` and ``prosumers.count`` overridden;
the prosumers hang off synthetic sites (the role never looks at the grid).

Each case runs in a fresh Python process, so its peak resident memory is its own
(``VmHWM`` from ``/proc/self/status``, Linux). ``--before REV`` runs every case also on
the code of git revision REV (extracted with ``git archive`` into a temporary folder
put first on the child's ``sys.path``), for a before/after table.

    .venv/bin/python benchmarks/prosumers.py [--counts 40,1000] [--days 1,7,30]
                                             [--setup-counts 3000] [--before REV]
                                             [--json FILE]

Prints a Markdown table per section: wall and CPU time (the CPU time of the case's
process: less sensitive to a shared machine), peak RSS. A year (366 days) is
extrapolated linearly from the longest case: its CPU time per simulated day, and for
memory the growth per day between the two longest cases (flat memory extrapolates to
itself).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "default.yaml"
YEAR_DAYS = 366


def peak_rss_mib() -> float:
    """Peak resident set size of this process [MiB] (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(src: str, count: int, days: float, setup_only: bool) -> dict:
    """One case, in this (fresh) process: the role imported from ``src``."""
    sys.path.insert(0, src)
    from federates.common.config import load_config
    from federates.common.grid import CustomerSite
    from federates.prosumers import role as role_module

    cfg = load_config(CONFIG, [f"study.duration={round(days * 24 * 3600)}", f"prosumers.count={count}"])
    sites = [CustomerSite(f"p{i:04d}", i, f"bus{i % 7}", "abc"[i % 3], f"t{i // 3}", f"load{i % 7}")
             for i in range(count)]
    tl = cfg.timeline
    t0, c0 = time.perf_counter(), time.process_time()
    role = role_module.ProsumersRole(cfg, sites)
    t_setup = time.perf_counter() - t0
    out = {"src": str(Path(role_module.__file__).resolve()), "count": count, "days": days,
           "setup_s": t_setup, "streaming": hasattr(role, "drain_tables")}
    if setup_only:  # the constructor and the first interval's bids (the first block)
        t0 = time.perf_counter()
        role.bids(0)
        out["first_bids_s"] = time.perf_counter() - t0
        out["cpu_s"] = time.process_time() - c0
        out["peak_mib"] = peak_rss_mib()
        return out
    per_day = max(1, round(86400.0 / tl.market_interval_s))
    rows = 0
    t0 = time.perf_counter()
    for k in range(tl.n_intervals):
        if k >= 1:
            role.on_confirmations(k - 1, [])
        role.bids(k)
        role.interval_deviations(k)
        if out["streaming"] and (k + 1) % per_day == 0:
            rows += len(role.drain_tables()["profiles"])
    out["run_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows += len(role.tables()["profiles"])
    out["tables_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0  # setup included
    out["rows"] = rows
    if rows != tl.n_steps * count:
        raise RuntimeError(f"{rows} profiles rows, expected {tl.n_steps * count}")
    out["peak_mib"] = peak_rss_mib()
    return out


def run_case(src: Path, count: int, days: float, setup_only: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(src), str(count), str(days)]
    if setup_only:
        cmd.append("--setup-only")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"count": count, "days": days, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extract(rev: str, into: Path) -> Path:
    """The tree of git revision ``rev`` in ``into`` (git archive)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def year_row(cases: list[dict]) -> tuple[float, float, float]:
    """(CPU time [s], peak [MiB], memory growth [MiB/day]) of a 366-day study, extrapolated linearly in days
    from the longest case (its time per simulated day, setup included)."""
    ok = sorted((c for c in cases if "error" not in c), key=lambda c: c["days"])
    last = ok[-1]
    t_year = last["cpu_s"] / last["days"] * YEAR_DAYS
    if len(ok) >= 2:
        prev = ok[-2]
        slope = max(0.0, (last["peak_mib"] - prev["peak_mib"]) / (last["days"] - prev["days"]))
    else:
        slope = 0.0
    return t_year, last["peak_mib"] + slope * (YEAR_DAYS - last["days"]), slope


def markdown(results: dict[str, list[dict]], setup: dict[str, list[dict]]) -> str:
    lines = ["| code | prosumers | days | setup [s] | bids + steps + drains [s] | final tables() [s] "
             "| total wall [s] | total CPU [s] | peak RSS [MiB] |", "|---|---|---|---|---|---|---|---|---|"]
    for label, cases in results.items():
        for count in sorted({c["count"] for c in cases}):
            mine = [c for c in cases if c["count"] == count]
            for c in mine:
                if "error" in c:
                    lines.append(f"| {label} | {count} | {c['days']:g} | failed: {c['error']} | | | | | |")
                    continue
                total = c["setup_s"] + c["run_s"] + c["tables_s"]
                lines.append(f"| {label} | {count} | {c['days']:g} | {c['setup_s']:.2f} | {c['run_s']:.1f} "
                             f"| {c['tables_s']:.2f} | {total:.1f} | {c['cpu_s']:.1f} | {c['peak_mib']:.0f} |")
            if any("error" not in c for c in mine):
                t_year, m_year, slope = year_row(mine)
                lines.append(f"| {label} | {count} | {YEAR_DAYS} (extrapolated) | | | | | ~{t_year:.0f} "
                             f"| ~{m_year:.0f} ({slope:.2f} MiB/day) |")
    if setup:
        lines += ["", "| code | prosumers | constructor [s] | first bids(0) [s] (first block) | CPU [s] "
                  "| peak RSS [MiB] |", "|---|---|---|---|---|---|"]
        for label, cases in setup.items():
            for c in cases:
                if "error" in c:
                    lines.append(f"| {label} | {c['count']} | failed: {c['error']} | | | |")
                else:
                    lines.append(f"| {label} | {c['count']} | {c['setup_s']:.2f} | {c['first_bids_s']:.2f} "
                                 f"| {c['cpu_s']:.2f} | {c['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="40,1000", help="prosumer counts, comma separated")
    ap.add_argument("--days", default="1,7,30", help="study durations [days], comma separated")
    ap.add_argument("--setup-counts", default="3000", help="counts for the setup-time table ('' for none)")
    ap.add_argument("--setup-days", type=float, default=1.0, help="study duration of the setup cases [days]")
    ap.add_argument("--before", metavar="REV", help="also run every case on git revision REV")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the extracted tree
    counts = [int(x) for x in args.counts.split(",") if x]
    days = [float(x) for x in args.days.split(",") if x]
    setup_counts = [int(x) for x in args.setup_counts.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="tecosim-before-") as tmp:
        sources = {"after": REPO}
        if args.before:
            sources = {f"before ({args.before})": extract(args.before, Path(tmp)), **sources}
        results: dict[str, list[dict]] = {}
        setup: dict[str, list[dict]] = {}
        for label, src in sources.items():
            results[label] = []
            for count in counts:
                for d in days:
                    results[label].append(run_case(src, count, d))
                    print(f"{label} {count} prosumers {d:g} days: {results[label][-1]}", file=sys.stderr)
            setup[label] = [run_case(src, c, args.setup_days, setup_only=True) for c in setup_counts]
            for c in setup[label]:
                print(f"{label} setup: {c}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "setup": setup}, indent=1))
    print(markdown(results, setup if setup_counts else {}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, src, count, days, *rest = sys.argv
        print(json.dumps(child(src, int(count), float(days), setup_only="--setup-only" in rest)))
        sys.exit(0)
    sys.exit(main())
