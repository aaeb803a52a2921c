"""`make bench-long`: the studies of issue 10 that take minutes to an hour each, run
the way a user runs them (`tecosim run`, in its own process), and their section of
BENCHMARKS.md.

* IEEE 8500 (the official model, ``feeder.model: ieee8500``) for a day as a federation:
  one prosumer on each of its 1177 houses (``prosumers.placement: one_per_load``), and
  3000 prosumers (``weighted``: several on some houses);
* the default study (IEEE 13, 40 prosumers) in process for 7 days, 30 days and a year,
  to show that time grows with the length and memory does not;
* the same grid over the calendar year 2026 under the bundled TMY3 weather file
  (``configs/tmy3_year.yaml``): a year on a weather file's whole year, with its monthly
  report.

For every case: wall time of the whole command (preparation, run, KPIs, summary,
report), the run's own wall time (manifest), the preparation time, and the peak
resident memory (VmHWM) of every process of the run, sampled from /proc: the runner
(in-process: the engine; federation: preparation, then supervision) and each federate.
A forked federate's VmHWM counts the pages it shares with the runner it was forked
from, so the per-federate figures overstate what it adds; ``PSS`` (proportional set
size, shared pages split between the processes that share them) is recorded too, at
the federate's largest RSS.

    .venv/bin/python benchmarks/long.py [--only LABEL ...] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scale import DescendantSampler  # noqa: E402

OUT = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- long:begin -->", "<!-- long:end -->"
SAMPLE_S = 0.5

#: (label, what, --set overrides, --engine, extra tecosim run arguments)
CASES = [
    ("ieee8500-1177", "IEEE 8500, a prosumer on each of its 1177 houses, 24 h, federation",
     ["feeder.model=ieee8500", "prosumers.count=1177", "prosumers.placement=one_per_load"], "federation", ["--no-report"]),
    ("ieee8500-3000", "IEEE 8500, 3000 prosumers (several on some houses), 24 h, federation",
     ["feeder.model=ieee8500", "prosumers.count=3000"], "federation", ["--no-report"]),
    ("default-7d", "default study, 7 days, in process", ["study.duration=7d"], "inprocess", []),
    ("default-30d", "default study, 30 days, in process", ["study.duration=30d"], "inprocess", []),
    ("default-365d", "default study, 365 days, in process", ["study.duration=365d"], "inprocess", []),
    ("tmy3-365d", "the default grid under the Greensboro TMY3 year (configs/tmy3_year.yaml), 2026, in process",
     ["study.start=2026-01-01T00:00:00-05:00", "study.duration=365d"], "inprocess", []),
]
#: the config of a case, when not configs/default.yaml
CONFIG_OF = {"tmy3-365d": "tmy3_year.yaml"}


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    for part in cmd.split():
        if part.startswith("federates.") and part.endswith(".federate"):
            return part.split(".")[1]
    if "helics_broker" in cmd:
        return "broker"
    if "runner.cli" in cmd or "tecosim" in cmd:
        return "runner"
    return cmd.split()[0] if cmd else "?"


class Peaks(DescendantSampler):
    """Largest VmHWM, and the PSS at the largest RSS, of every descendant of this process."""

    def __init__(self) -> None:
        super().__init__(SAMPLE_S)
        self.hwm: dict[str, int] = {}
        self.pss: dict[str, int] = {}
        self._rss: dict[int, int] = {}

    def sample(self, procs: dict[int, int]) -> None:
        for pid in procs:
            st, name = _status(pid), _name(pid)
            if not st:
                continue
            self.hwm[name] = max(self.hwm.get(name, 0), st.get("VmHWM", 0))
            if st.get("VmRSS", 0) > self._rss.get(pid, 0):
                self._rss[pid] = st["VmRSS"]
                self.pss[name] = max(self.pss.get(name, 0), _pss_kib(pid))


def run_case(label: str, overrides: list[str], engine: str, extra: list[str], root: Path) -> dict:
    run_dir = root / label
    config = REPO / "configs" / CONFIG_OF.get(label, "default.yaml")
    argv = [sys.executable, "-m", "runner.cli", "run", str(config), "--out", str(run_dir),
            "--engine", engine, "--quiet", *extra, *(x for o in overrides for x in ("--set", o))]
    t0 = time.perf_counter()
    with Peaks() as peaks:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=4 * 3600)
    wall = time.perf_counter() - t0
    out = {"label": label, "engine": engine, "exit_code": proc.returncode, "command_s": wall,
           "stderr_tail": proc.stderr[-400:] if proc.returncode else "",
           "rss_mib": {k: v / 1024 for k, v in peaks.hwm.items()},
           "pss_mib": {k: v / 1024 for k, v in peaks.pss.items()},
           "load_avg_5min": os.getloadavg()[1]}
    man = run_dir / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        out["run_s"] = m.get("wall_s")
        out["engine_seconds"] = m.get("engine_seconds")
    out["results_mb"] = sum(p.stat().st_size for p in (run_dir / "results").glob("*.parquet")) / 1e6 \
        if (run_dir / "results").is_dir() else 0.0
    ledger = run_dir / "ledger.zst"
    out["ledger_mb"] = ledger.stat().st_size / 1e6 if ledger.is_file() else 0.0
    sens = run_dir / "sensitivities.npz"
    out["sens_mb"] = sens.stat().st_size / 1e6 if sens.is_file() else 0.0
    return out


def f(x, fmt="{:.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def section(results: list[dict], started: dt.datetime) -> str:
    from runner.launch import git_commit

    lines = [BEGIN, "## Long studies: IEEE 8500 and a year", "",
             f"Written by `make bench-long` (`benchmarks/long.py`) on {started:%Y-%m-%d %H:%M} UTC, commit "
             f"{(git_commit() or 'unknown')[:12]}, {os.cpu_count()} logical CPUs (rows of cases not run "
             "this time, `--only`, are kept from the earlier run). Each case is one "
             "`tecosim run` in its own process; **command** is its whole wall time (preparation: feeder, "
             "customers, the DSO's sensitivities; the run; KPIs, summary, report where made), **run** the "
             "run's own (manifest `wall_s`).", "",
             "| case | what | engine | exit | command s | run s | results MB | ledger MB | sens. MB | "
             "peak RSS MiB (VmHWM) | PSS MiB at the largest RSS | load avg |",
             "|:---|:---|:---|---:|---:|---:|---:|---:|---:|:---|:---|---:|"]
    for r in results:
        what = next(c[1] for c in CASES if c[0] == r["label"])
        rss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["rss_mib"].items()))
        pss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["pss_mib"].items()))
        lines.append(f"| {r['label']} | {what} | {r['engine']} | {r['exit_code']} | {f(r['command_s'])} | "
                     f"{f(r.get('run_s'))} | {f(r['results_mb'], '{:.1f}')} | {f(r['ledger_mb'], '{:.1f}')} | "
                     f"{f(r['sens_mb'], '{:.0f}')} | {rss} | {pss} | {r['load_avg_5min']:.1f} |")
    lines += ["", "- A forked federate's VmHWM includes the pages it shares with the runner it was forked "
              "from (about 0.2-0.4 GiB after the preparation); PSS splits shared pages among the "
              "processes that map them.",
              "- Load average above 2 on 2 CPUs means other jobs shared the machine and times are inflated.",
              END]
    return "\n".join(lines)


def _kept_rows(old_section: str, measured: set[str]) -> list[str]:
    """The table rows of the section already in BENCHMARKS.md for the cases not run this
    time (``--only``), so a partial run adds to the table instead of wiping it."""
    labels = {c[0] for c in CASES} - measured
    return [line for line in old_section.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in labels]


def write_section(text: str, measured: set[str]) -> None:
    old = OUT.read_text() if OUT.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        kept = _kept_rows(rest.split(END, 1)[0], measured)
        if kept:
            order = [c[0] for c in CASES]
            lines = text.splitlines()
            rows = [x for x in lines if x.startswith("| ") and x.split("|")[1].strip() in order] + kept
            rows.sort(key=lambda x: order.index(x.split("|")[1].strip()))
            first = next(i for i, x in enumerate(lines) if x in rows)
            lines = [x for x in lines if x not in rows]
            lines[first:first] = rows
            text = "\n".join(lines)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    OUT.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="case labels (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the runs/long-* folder")
    ap.add_argument("--no-write", action="store_true", help="print the section only")
    args = ap.parse_args(argv)
    labels = [c[0] for c in CASES]
    for label in args.only or []:
        if label not in labels:
            ap.error(f"--only {label!r}: not a case; cases: {labels}")
    started = dt.datetime.now(dt.UTC)
    root = REPO / "runs" / f"long-{started:%Y%m%dT%H%M%SZ}"
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for label, _, overrides, engine, extra in CASES:
        if args.only and label not in args.only:
            continue
        print(f"long: {label} ...", end=" ", flush=True)
        r = run_case(label, overrides, engine, extra, root)
        results.append(r)
        (root / "long.json").write_text(json.dumps(results, indent=1))
        print(f"exit {r['exit_code']}, {r['command_s']:.0f} s, peak " +
              ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(r["rss_mib"].items())), flush=True)
    text = section(results, started)
    print(text)
    if not args.no_write:
        write_section(text, {r['label'] for r in results})
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
