"""`make bench-scale`: how the cost grows with prosumer count and feeder size.

Runs ``configs/default.yaml`` on the synthetic feeder (``feeder.model: synthetic``,
``feeder.synthetic.n_loads`` scaled with the prosumer count, ``max(60, count // 3)``)
through the real code paths (``load_config`` -> ``prepare_run`` -> ``run_study``), each
case in its own Python process (so peak memory is per case), and writes the section
between ``<!-- scale:begin -->`` and ``<!-- scale:end -->`` of BENCHMARKS.md (the rest,
written by ``benchmarks/run.py``, is kept):

* prosumer count 100, 300, 1000, 3000, in-process;
* 1000 prosumers as a federation with ``prosumers.federates`` K = 1 and K = 4;
* feeder size: ``n_loads`` 60, 300, 1000 with 100 prosumers, in-process.

Per case: ``prepare_run`` time (placement and the DSO's sensitivities), the
sensitivities file size, wall time of ``run_study``, time per physics step per role
(in-process: manifest ``engine_seconds``) or per federate (federation: the federate's
time loop, from its ``executing`` to its ``done in`` log line, over the steps), and
peak resident memory (VmHWM from /proc: of the case's process for in-process runs,
sampled per federate process for the federation).

    .venv/bin/python benchmarks/scale.py [--duration 24h] [--duration-for LABEL=2h ...]
                                         [--only LABEL ...] [--keep] [--set KEY=VALUE ...]

``--duration-for`` gives single cases another duration (e.g. the 3000-prosumer case a
midday window when a whole day does not fit the time at hand); the tables show each
case's duration, and ``scale.json`` is written after every case so that an interrupted
bench keeps what it measured (``--from-json`` writes the section from it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONFIG = REPO / "configs" / "default.yaml"
OUT = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
ROLES = ("prosumers", "market", "feeder", "meters", "controllers")
SAMPLE_S = 0.2
#: cases shorter than a day run from this hour of the study day: midday PV brings the
#: control rounds and curtailment, so their per-step cost is the day's highest and the
#: 24 h extrapolation errs high
MIDDAY_START_H = 11
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ INFO (executing|done in ([\d.]+) s)\b.*$")


def n_loads_for(count: int) -> int:
    return max(60, count // 3)


#: (label, group, prosumers, n_loads, engine, K)
CASES = [
    *[(f"count-{c}", "count", c, n_loads_for(c), "inprocess", 1) for c in (100, 300, 1000, 3000)],
    *[(f"fed-1000-k{k}", "federation", 1000, n_loads_for(1000), "federation", k) for k in (1, 4)],
    *[(f"feeder-{n}", "feeder", 100, n, "inprocess", 1) for n in (60, 300, 1000)],
]


# -- one case, in its own process ----------------------------------------------------
def vm_hwm_kib(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> dict[int, int]:
    """The processes descended from ``root`` now, each with its parent (from /proc)."""
    ppid_of = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid_of[int(entry.name)] = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, grew = {root}, True
    while grew:
        new = {p for p, pp in ppid_of.items() if pp in mine and p not in mine}
        mine |= new
        grew = bool(new)
    return {p: ppid_of[p] for p in mine - {root}}


class DescendantSampler:
    """Calls :meth:`sample` with every descendant of this process (pid -> parent) every
    ``period_s`` seconds, in a thread, while the ``with`` block runs."""

    def __init__(self, period_s: float = SAMPLE_S) -> None:
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.period_s):
            self.sample(descendants(me))

    def sample(self, procs: dict[int, int]) -> None:
        raise NotImplementedError


class PeakRss(DescendantSampler):
    """Largest VmHWM [KiB] seen of each descendant of this process, sampled every SAMPLE_S."""

    def __init__(self) -> None:
        super().__init__()
        self.peak: dict[int, int] = {}
        self.parent: dict[int, int] = {}

    def sample(self, procs: dict[int, int]) -> None:
        for pid, ppid in procs.items():
            self.parent[pid] = ppid
            self.peak[pid] = max(self.peak.get(pid, 0), vm_hwm_kib(pid))

    def of(self, pid: int) -> int:
        """Peak of ``pid`` plus that of its own children."""
        return self.peak.get(pid, 0) + sum(v for p, v in self.peak.items() if self.parent.get(p) == pid)


def loop_s(log: Path) -> float | None:
    """Seconds from the federate's ``executing`` log line to its ``done in`` line."""
    t = {}
    try:
        for line in log.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m:
                t[m.group(2).split()[0]] = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    except OSError:
        return None
    if "executing" in t and "done" in t:
        return (t["done"] - t["executing"]).total_seconds()
    return None


def case_config(case: dict, duration: str, extra: list[str] | None = None):
    """The config of ``case`` (label, prosumers, n_loads, k) for ``duration``: the default
    study on the synthetic feeder; shorter than a day, from MIDDAY_START_H (the costliest
    hours). ``extra``: more ``--set`` overrides. (benchmarks/run.py's K split uses it too.)"""
    from federates.common.config import load_config

    overrides = [f"study.duration={duration}", f"study.name={case['label']}", "feeder.model=synthetic",
                 f"feeder.synthetic.n_loads={case['n_loads']}", f"prosumers.count={case['prosumers']}",
                 f"prosumers.federates={case['k']}", *(extra or [])]
    cfg = load_config(CONFIG, overrides)
    if cfg.study.duration_s < 86400:  # a window: the midday one, the costliest
        start = dt.datetime.fromisoformat(str(cfg.study.start)) + dt.timedelta(hours=MIDDAY_START_H)
        cfg = load_config(CONFIG, [*overrides, f"study.start={start.isoformat()}"])
    return cfg


def run_case(case: dict, duration: str, run_dir: Path) -> dict:
    from federates.feeder.sensitivity import SENSITIVITIES_FILE
    from runner.launch import prepare_run, run_study

    cfg = case_config(case, duration, case.get("extra"))
    import runner.engine  # noqa: F401  (imports before timing)

    t0 = time.perf_counter()
    study = prepare_run(cfg, run_dir, REPO)
    prepare_s = time.perf_counter() - t0
    rss_prepare = vm_hwm_kib("self")
    sens = run_dir / SENSITIVITIES_FILE
    n_steps = cfg.timeline.n_steps
    with PeakRss() as rss:
        wall = run_study(study, case["engine"])
    m = json.loads((run_dir / "manifest.json").read_text())
    out = {**case, "duration": duration, "n_steps": n_steps, "prepare_s": prepare_s, "wall_s": wall,
           "sens_mb": sens.stat().st_size / 1e6 if sens.is_file() else 0.0,
           "rss_prepare_mib": rss_prepare / 1024, "rss_self_mib": vm_hwm_kib("self") / 1024}
    if case["engine"] == "inprocess":
        secs = dict(m["engine_seconds"])
        secs["market"] = secs.get("market", 0.0) + secs.pop("market_books", 0.0)  # its clearing and its books
        out["ms_per_step"] = {r: 1000 * s / n_steps for r, s in secs.items() if r in ROLES}
        out["setup_s"] = m["engine_seconds"].get("setup")
    else:
        out["federates"] = {}
        for f in m["federates"]:
            loop = loop_s(run_dir / "logs" / f"{f['name']}.log")
            out["federates"][f["name"]] = {
                "wall_s": f["wall_s"], "loop_s": loop,
                "ms_per_step": None if loop is None else 1000 * loop / n_steps,
                "rss_mib": rss.of(f["pid"]) / 1024 if f["pid"] else None,
            }
    return out


# -- the report ---------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def f1(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def growth(by: dict[str, dict]) -> list[str]:
    """One line per scan: how the run's cost per step and prepare time grow between cases."""

    out = []
    for group, key, what in (("count", "prosumers", "prosumers"), ("feeder", "n_loads", "feeder loads")):
        rs = sorted((r for r in by.values() if r["group"] == group), key=lambda r: r[key])
        parts = []
        for a, b in itertools.pairwise(rs):
            ratio = b[key] / a[key]
            if a["duration"] != b["duration"]:  # a midday window costs more per step than a day
                parts.append(f"{a[key]} → {b[key]} {what}: not compared ({a['duration']} against {b['duration']})")
                continue
            per_step = ((b["wall_s"] - (b["setup_s"] or 0)) / b["n_steps"]) / ((a["wall_s"] - (a["setup_s"] or 0)) / a["n_steps"])
            parts.append(f"{a[key]} → {b[key]} {what} (×{ratio:.3g}): time per step ×{per_step:.2f} "
                         f"(exponent {math.log(per_step) / math.log(ratio):.2f}), prepare ×{b['prepare_s'] / a['prepare_s']:.1f}")
        if parts:
            out += [f"- Growth with {what}: " + "; ".join(parts) + "."]
    return [*out, ""] if out else []


def day_s(r: dict) -> str:
    """The 24 h wall time [s]: measured when the case ran a whole day, else extrapolated."""
    if r["n_steps"] >= 1440:
        return f"{r['wall_s']:.0f} (measured)"
    return f"{day_estimate_s(r):.0f} (extrapolated)"


def day_estimate_s(r: dict) -> float:
    """A rough 24 h wall time [s] from a shorter run: ``(wall - setup) / steps * 1440 + setup``
    (federation: setup taken as wall minus the slowest time loop). Excludes prepare."""
    if r["engine"] == "inprocess":
        setup = r["setup_s"] or 0.0
    else:
        setup = r["wall_s"] - max(f["loop_s"] or 0.0 for f in r["federates"].values())
    return (r["wall_s"] - setup) / r["n_steps"] * 1440 + setup


def section(results: list[dict], failed: dict[str, str], duration: str, started: dt.datetime,
            command: str | None = None) -> str:
    from runner.launch import git_commit

    by = {r["label"]: r for r in results}
    out = [
        BEGIN,
        "## Scale: prosumer count, feeder size, split prosumer federates",
        "",
        f"Written by `make bench-scale` (`{command or f'benchmarks/scale.py --duration {duration}'}`) on "
        f"{started:%Y-%m-%d %H:%M} UTC, commit {(git_commit() or 'unknown')[:12]}, {os.cpu_count()} logical CPUs. "
        f"`configs/default.yaml` on the synthetic feeder (`feeder.synthetic.n_loads` = max(60, count / 3) "
        f"unless stated), study duration per case in the column **duration** (from 00:00, the day's "
        "start; cases shorter than a day from 11:00, the costliest hours) at 15 min market / 1 min physics, controllers and "
        "DSO curtailment on (so `prepare_run` computes sensitivities). Each case runs in its own process.",
        "",
        "### In-process engine: cost against prosumer count and feeder size",
        "",
    ]
    rows = []
    for label, *_ in [c for c in CASES if c[4] == "inprocess"]:
        case = next(c for c in CASES if c[0] == label)
        if label not in by:
            rows.append([label, str(case[2]), str(case[3]), "not run: " + failed.get(label, "skipped"),
                         *[""] * (8 + len(ROLES))])
            continue
        r = by[label]
        ms = r["ms_per_step"]
        rows.append([label, str(r["prosumers"]), str(r["n_loads"]), r["duration"], f1(r["prepare_s"]), f1(r["sens_mb"]),
                     f1(r["wall_s"]), f1(r["setup_s"]), f1(1000 * r["wall_s"] / r["n_steps"]),
                     *[f1(ms.get(x), "{:.2f}") for x in ROLES],
                     f1(r["rss_prepare_mib"], "{:.0f}"), f1(r["rss_self_mib"], "{:.0f}"),
                     day_s(r)])
    out += [table(["case", "prosumers", "feeder loads", "duration", "prepare s", "sens. npz MB", "wall s", "setup s",
                   "wall ms/step", *[f"{x} ms/step" for x in ROLES], "peak RSS after prepare MiB",
                   "peak RSS MiB", "24 h wall s"], rows), ""]
    loads = [r["load_avg_5min"] for r in results if "load_avg_5min" in r]
    if loads:
        out += [f"- Machine load: the 5-minute load average at the end of each case was {min(loads):.1f} to "
                f"{max(loads):.1f} on {os.cpu_count()} CPUs (above 2, other jobs shared the CPUs and times are inflated).",
                ""]
    if "count-100" in by and "feeder-60" in by:  # the same case twice: how noisy the machine was
        out += [f"- Repeatability: count-100 and feeder-60 are the same case; their wall times "
                f"{by['count-100']['wall_s']:.1f} s and {by['feeder-60']['wall_s']:.1f} s show the run-to-run "
                "noise on this machine (other jobs share its CPUs). Read ratios between rows with that spread.",
                ""]
    out += [*growth(by), "### Federation, 1000 prosumers: one prosumers federate against four", ""]
    rows = []
    for label in ("fed-1000-k1", "fed-1000-k4"):
        if label not in by:
            rows.append([label, "not run: " + failed.get(label, "skipped"), "", "", "", ""])
            continue
        r = by[label]
        for name, f in r["federates"].items():
            rows.append([label if name == "broker" else "", name, f1(f["wall_s"]), f1(f["loop_s"]),
                         f1(f["ms_per_step"], "{:.2f}"), f1(f["rss_mib"], "{:.0f}")])
        rows.append([f"**{label} total** ({r['duration']})", f"prepare {r['prepare_s']:.1f} s",
                     f"**{r['wall_s']:.1f}**", f"24 h: {day_s(r)} s", "", ""])
    out += [table(["case", "federate", "wall s", "time loop s", "loop ms/step", "peak RSS MiB"], rows), ""]
    out += [
        "How the columns are obtained:",
        "",
        "- **prepare**: `prepare_run` (synthetic feeder written and compiled, customers placed, "
        "and the DSO's sensitivities `federates/feeder/sensitivity.py`: one perturbed power flow "
        "per customer and kW plus one per kvar, stored as float32 n x n voltage and elements x n loading and flow matrices in "
        "`sensitivities.npz`, column **sens. npz MB**).",
        "- **wall**: what `run_study` returns (engine plus tables and manifest, plus merging the "
        "prosumer parts' tables for K > 1); **setup**: building the roles (in-process `EngineTimes`).",
        "- **role ms/step** (in-process): manifest `engine_seconds` per role over the physics steps.",
        "- **time loop / loop ms/step** (federation): from the federate's `executing` log line to "
        "its `done in` line (time loop plus its tables), over the physics steps; it includes time "
        "waiting for other federates' grants.",
        "- **24 h wall**: measured where the case ran 24 h; for shorter cases extrapolated as "
        "(wall − setup) / steps × 1440 + setup, excluding prepare. An extrapolation, not a measurement: "
        "per-step cost varies over the day (midday PV brings control rounds and curtailment).",
        "- **peak RSS**: VmHWM from /proc. In-process: of the case's process after prepare_run and "
        "at the end (prepare_run runs in the same process, so the second is max(prepare, run)). "
        f"Federation: of each federate process, sampled every {SAMPLE_S * 1000:.0f} ms while it "
        "runs (broker: the helics_broker binary).",
    ]
    if failed:
        out += ["", "Not run / failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()) + "."]
    out += [END]
    return "\n".join(out)


def write_section(text: str) -> None:
    old = OUT.read_text() if OUT.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    OUT.write_text(new)


def stage(run_dir: Path) -> str:
    """Where a killed case was: still in prepare_run (no manifest, and no sensitivities
    yet) or in run_study."""
    from federates.feeder.sensitivity import SENSITIVITIES_FILE

    if (run_dir / "manifest.json").is_file():
        return ""
    if not (run_dir / SENSITIVITIES_FILE).is_file():
        return " while still in prepare_run (sensitivities not yet written)"
    return " in run_study"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Scale benchmark: write the scale section of BENCHMARKS.md.")
    ap.add_argument("--duration", default="24h", help="study.duration of every case (default 24h)")
    ap.add_argument("--duration-for", action="append", default=[], metavar="LABEL=DURATION",
                    help="another study.duration for one case (repeatable)")
    ap.add_argument("--only", nargs="*", help="case labels to run (default: all)")
    ap.add_argument("--case-timeout", type=float, default=3600.0, help="seconds per case before it is killed")
    ap.add_argument("--keep", action="store_true", help="keep the runs/scale-* folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
                    help="a config override for every case (repeatable), e.g. controllers.sensitivities=grouped")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    ap.add_argument("--from-json", type=Path, help="re-write the section from a run's scale.json; run nothing")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case (JSON) in this process
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    labels = [c[0] for c in CASES]
    per_case: dict[str, str] = {}
    for item in args.duration_for:
        label, sep, dur = item.partition("=")
        if not sep or label not in labels or not dur:
            ap.error(f"--duration-for {item!r}: expected LABEL=DURATION with LABEL one of {labels}")
        per_case[label] = dur
    for label in args.only or []:
        if label not in labels:
            ap.error(f"--only {label!r}: not a case; cases: {labels}")
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case), args.duration, args.run_dir)))
        return 0
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for label, why in saved["failed"].items():
            if "case-timeout" in why and "prepare_run" not in why and "run_study" not in why:
                saved["failed"][label] = why + stage(args.from_json.parent / label)
        when = dt.datetime.fromtimestamp(args.from_json.stat().st_mtime, dt.UTC)
        text = section(saved["results"], saved["failed"], saved["results"][0]["duration"], when,
                       saved.get("command"))
        print(text)
        if not args.no_write:
            write_section(text)
        return 0

    started = dt.datetime.now(dt.UTC)
    bench_dir = REPO / "runs" / f"scale-{started:%Y%m%dT%H%M%SZ}"
    results, failed = [], {}
    command = "benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save() -> None:
        bench_dir.mkdir(parents=True, exist_ok=True)
        (bench_dir / "scale.json").write_text(json.dumps(
            {"command": command.strip(), "results": results, "failed": failed}, indent=1))

    for label, group, count, n_loads, engine, k in CASES:
        if args.only and label not in args.only:
            continue
        case = {"label": label, "group": group, "prosumers": count, "n_loads": n_loads, "engine": engine, "k": k,
                "extra": args.extra}
        duration = per_case.get(label, args.duration)
        print(f"scale: {label} ({count} prosumers, {n_loads} loads, {engine}, K={k}, {duration}) ...",
              end=" ", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--case", json.dumps(case), "--duration", duration,
                                 "--run-dir", str(bench_dir / label)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=args.case_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            failed[label] = f"exceeded --case-timeout {args.case_timeout:g} s" + stage(bench_dir / label)
            print(failed[label], flush=True)
            save()
            continue
        got = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not got:
            failed[label] = f"exit {proc.returncode}: {text.strip().splitlines()[-1] if text.strip() else ''}"
            print(failed[label], flush=True)
            save()
            continue
        results.append({**json.loads(got[-1][7:]), "load_avg_5min": os.getloadavg()[1]})
        save()
        print(f"{time.perf_counter() - t0:.1f} s", flush=True)
    text = section(results, failed, args.duration, started, command.strip())
    print()
    print(text)
    save()
    if not args.no_write:
        write_section(text)
        print(f"scale: wrote the scale section of {OUT.relative_to(REPO)}")
    if not args.keep and not failed:
        shutil.rmtree(bench_dir, ignore_errors=True)
    else:
        print(f"scale: run folders in {bench_dir}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
