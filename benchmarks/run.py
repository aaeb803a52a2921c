"""`make bench`: time the default study with both engines and write BENCHMARKS.md.

Runs ``configs/default.yaml`` through the real code paths (``load_config`` ->
``prepare_run`` -> ``run_study``) once per engine and repeat, each in its own folder
under ``runs/bench-<UTC stamp>/`` (deleted afterwards unless ``--keep`` or a run
failed), then reports:

* wall time of each engine (min and median over ``--repeat``) and their ratio;
* the in-process engine's time per role (``EngineTimes``, manifest ``engine_seconds``);
* per federate: process wall time (manifest ``federates``), start-up / setup / time
  loop split from the federate's own log lines (``executing``, ``done in X s``), CPU
  time sampled from /proc, and the estimate of HELICS waiting: wall time minus the
  in-process time of the same role. Federate code is not touched.

    .venv/bin/python benchmarks/run.py [--duration 24h] [--repeat N] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

from federates.common import keys
from federates.common.errors import TecosimError
from runner.config import REPO_ROOT, config_sha256, load_config
from runner.launch import git_commit, prepare_run, run_study, versions
from runner.results import read_tables

CONFIG = REPO_ROOT / "configs" / "default.yaml"
OUT = REPO_ROOT / "BENCHMARKS.md"
ENGINES = ("inprocess", "federation")
ROLES = (keys.FEEDER, keys.MARKET, keys.PROSUMERS, keys.METERS, keys.CONTROLLERS)
ROLE_LABEL = {keys.FEEDER: "feeder (power flow)", keys.MARKET: "market", keys.PROSUMERS: "prosumers",
              keys.METERS: "meters", keys.CONTROLLERS: "controllers", "setup": "setup (build roles, tables)"}
SAMPLE_S = 0.05
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ INFO (executing|done in ([\d.]+) s)\s*$")


# -- machine -------------------------------------------------------------------------
def machine() -> list[tuple[str, str]]:
    def first(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    sep = "=" if key.endswith("=") else ":"
                    return line.split(sep, 1)[1].strip().strip('"')
        except OSError:
            pass
        return None

    mem_kb = first("/proc/meminfo", "MemTotal")
    mem = f"{int(mem_kb.split()[0]) / 2**20:.1f} GiB" if mem_kb else "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    v = versions()
    return [
        ("CPU", first("/proc/cpuinfo", "model name") or platform.processor() or "unknown"),
        ("logical CPUs", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("memory", mem),
        ("OS", f"{first('/etc/os-release', 'PRETTY_NAME=') or platform.system()}, kernel {platform.release()}"),
        ("Python", f"{v['python']} ({platform.python_implementation()})"),
        ("helics", v["helics"]),
        ("opendssdirect.py", f"{v['opendssdirect.py']} (dss-python {v['dss-python']})"),
        ("tecosim commit", git_commit() or "unknown"),
    ]


# -- per-child CPU time, sampled from /proc while the federation runs ------------------
class ChildCpu:
    """Samples the CPU time [s] (user+system) of each child of this process, plus that of
    the child's own children (``helics_broker`` is a Python wrapper around the broker
    binary), every SAMPLE_S. Keeps each child's largest total; may miss the last
    <= SAMPLE_S of a child's life. The exact grand total comes from getrusage."""

    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ChildCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _procs(self) -> dict[int, tuple[int, float]]:
        """pid -> (ppid, own CPU + CPU of its reaped children) [s], for every process."""
        out = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # after the command: state ppid ...; [11] utime [12] stime [13] cutime [14] cstime
            out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / self._tick)
        return out

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.wait(SAMPLE_S):
            procs = self._procs()
            for pid, (ppid, cpu) in procs.items():
                if ppid == me:
                    cpu += sum(c for pp, c in procs.values() if pp == pid)
                    self.cpu[pid] = max(cpu, self.cpu.get(pid, 0.0))


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- one run ---------------------------------------------------------------------------
def federate_log(path: Path) -> dict[str, float]:
    """``done_in`` (the federate's own clock: load study .. tables written) and ``loop``
    (from its ``executing`` line to its ``done`` line) [s]; empty if not found."""
    stamps: dict[str, dt.datetime] = {}
    out: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = LOG_LINE.match(line)
        if m:
            kind = "executing" if m.group(2) == "executing" else "done"
            stamps[kind] = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            if m.group(3):
                out["done_in"] = float(m.group(3))
    if "executing" in stamps and "done" in stamps:
        out["loop"] = (stamps["done"] - stamps["executing"]).total_seconds()
    return out


def run_once(overrides: list[str], run_dir: Path, engine: str) -> dict:
    cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    study = prepare_run(cfg, run_dir, config_dir=CONFIG.parent)
    prepare_s = time.perf_counter() - t0
    c_self, c_kids = self_cpu_s(), children_cpu_s()
    if engine == "federation":
        with ChildCpu() as sampler:
            wall = run_study(study, engine)
        cpu = children_cpu_s() - c_kids
    else:
        sampler = None
        wall = run_study(study, engine)
        cpu = self_cpu_s() - c_self
    manifest = json.loads((study.run_dir / "manifest.json").read_text())
    result = {"engine": engine, "wall": wall, "cpu": cpu, "prepare": prepare_s, "run_dir": study.run_dir,
              "engine_seconds": manifest.get("engine_seconds", {}), "federates": {}}
    for rec in manifest.get("federates", []):
        row = {"wall": rec["wall_s"], **federate_log(study.run_dir / "logs" / f"{rec['name']}.log")}
        if sampler is not None and rec["pid"] in sampler.cpu:
            row["cpu"] = sampler.cpu[rec["pid"]]
        result["federates"][rec["name"]] = row
    return result


def same_tables(a: Path, b: Path) -> tuple[int, list[str]]:
    ta, tb = read_tables(a), read_tables(b)
    differ = sorted(n for n in ta.keys() | tb.keys() if n not in ta or n not in tb or not ta[n].equals(tb[n]))
    return len(ta.keys() | tb.keys()), differ


# -- report ----------------------------------------------------------------------------
KEPT = (("<!-- scale:begin -->", "<!-- scale:end -->"),)  # sections other benchmarks own


def kept_sections() -> str:
    """The marked sections of the present BENCHMARKS.md (benchmarks/scale.py's), kept
    when this benchmark rewrites the file."""
    try:
        old = OUT.read_text()
    except OSError:
        return ""
    out = []
    for begin, end in KEPT:
        a, b = old.find(begin), old.find(end)
        if a >= 0 and b > a:
            out.append("\n" + old[a:b + len(end)] + "\n")
    return "".join(out)
def table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A markdown table padded so that it also reads well as plain text; with ``numeric``
    every column but the first is right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = [numeric and i > 0 for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w)
                                 for c, w, r in zip(cells, widths, right, strict=True)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1))
                         for w, r in zip(widths, right, strict=True)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def med(values: list[float]) -> float:
    return statistics.median(values)


def f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def report(runs: dict[str, list[dict]], cfg, overrides: list[str], repeat: int, started: dt.datetime,
           equal: tuple[int, list[str]]) -> str:
    tl = cfg.timeline
    ip, fe = runs["inprocess"], runs["federation"]
    walls = {e: [r["wall"] for r in runs[e]] for e in ENGINES}
    stat = "median" if repeat > 1 else "value"
    out = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`benchmarks/run.py`) on {started:%Y-%m-%d %H:%M} UTC; "
        "re-running overwrites this file. Figures depend on the machine below; compare "
        "ratios and shares rather than absolute seconds across machines.",
        "",
        "## Machine",
        "",
        table(["", ""], [[k, v] for k, v in machine()], numeric=False),
        "",
        "## Study",
        "",
        table(["", ""], [
            ["config", f"`{CONFIG.relative_to(REPO_ROOT)}`" + (f" with `{' '.join(overrides)}`" if overrides else "")],
            ["config sha256", config_sha256(cfg)[:16] + "…"],
            ["duration", f"{tl.duration_s / 3600:g} h ({tl.n_intervals} market intervals of "
                         f"{tl.market_interval_s / 60:g} min, {tl.n_steps} physics steps of {tl.physics_step_s / 60:g} min)"],
            ["feeder", f"{cfg.feeder.model or cfg.feeder.path}, {cfg.feeder.customer_connection.kind} connection"],
            ["prosumers", f"{cfg.prosumers.count}"],
            ["market", f"{cfg.market.topology}, {cfg.market.mechanism}"],
            ["controllers", "enabled" if cfg.controllers.enabled else "disabled"],
            ["repeats", f"{repeat} per engine (engines alternate: in-process, federation, ...)"],
        ], numeric=False),
        "",
        "## Wall time per engine",
        "",
        table(["engine", "min s", "median s", f"CPU s ({stat})"], [
            ["in-process (`--engine inprocess`)", f(min(walls["inprocess"])), f(med(walls["inprocess"])),
             f(med([r["cpu"] for r in ip]))],
            ["federation (default: broker + 5 processes)", f(min(walls["federation"])), f(med(walls["federation"])),
             f(med([r["cpu"] for r in fe]))],
        ]),
        "",
        f"**Co-simulation overhead: federation / in-process = {min(walls['federation']) / min(walls['inprocess']):.1f}× "
        f"(min), {med(walls['federation']) / med(walls['inprocess']):.1f}× (median).**",
        "",
        "- Wall time is what `run_study` returns: the engine plus writing its Parquet tables "
        "and manifest. `prepare_run` (resolved config, customer placement on the feeder) "
        f"is shared by both engines and not included ({f(med([r['prepare'] for rs in runs.values() for r in rs]))} s median).",
        "- In-process CPU is this process's user+system time; federation CPU is the exact total "
        "of the broker and the five federate processes (getrusage of children).",
        "- The in-process engine's modules are imported before timing; each federate process pays "
        "its own interpreter start-up and imports, which is part of the federation's overhead.",
        "- Federation tables equal the in-process tables: "
        + (f"yes ({equal[0]} tables, first repeat)." if not equal[1]
           else f"**no**: {', '.join(equal[1])} differ (first repeat)."),
        "",
        "## In-process engine: time per role",
        "",
    ]
    secs = {name: med([r["engine_seconds"].get(name, 0.0) for r in ip]) for name in (*ROLES, "setup")}
    total = sum(secs.values())
    stepping = sum(secs[r] for r in ROLES)
    rows = [[ROLE_LABEL[r], f(secs[r]), pct(secs[r] / total), pct(secs[r] / stepping)] for r in ROLES]
    rows.append([ROLE_LABEL["setup"], f(secs["setup"]), pct(secs["setup"] / total), ""])
    rows.append(["**total (`run_inprocess`)**", f(total), "100 %", ""])
    out += [
        f"`EngineTimes` seconds from manifest.json `engine_seconds` ({stat} over repeats).",
        "",
        table(["role", "s", "% of engine", "% of role work"], rows),
        "",
        "## Federation: per federate",
        "",
    ]
    rows = []
    for name in ("broker", *keys.FEDERATES):
        recs = [r["federates"].get(name, {}) for r in fe]

        def m(key: str, recs: list[dict] = recs) -> float | None:
            vals = [x[key] for x in recs if x.get(key) is not None]
            return med(vals) if vals else None

        wall, done_in, loop, cpu = m("wall"), m("done_in"), m("loop"), m("cpu")
        startup = None if wall is None or done_in is None else wall - done_in
        setup = None if done_in is None or loop is None else done_in - loop
        if name == "broker":
            rows.append([name, f(wall), "", "", "", f(cpu), "", "", "", "", ""])
            continue
        role = secs[name]
        idle = None if wall is None else wall - role
        loop_idle = None if loop is None else loop - role
        rows.append([name, f(wall), f(startup), f(setup), f(loop), f(cpu), f(role),
                     f(idle), pct(None if idle is None else idle / wall),
                     f(loop_idle), pct(None if loop_idle is None else loop_idle / loop)])
    loops = [float(r[4]) for r in rows if r[4] not in ("", "–")]
    starts = [(float(r[2]), r[0]) for r in rows if r[2] not in ("", "–")]
    if loops and starts:
        slow_s, slow = max(starts)
        out += [
            f"Time loop: {max(loops):.1f} s for {tl.n_steps} physics steps = "
            f"{1000 * max(loops) / tl.n_steps:.1f} ms per step, against {1000 * total / tl.n_steps:.1f} ms "
            f"per step for the whole in-process engine. Slowest start-up + exit: {slow} ({slow_s:.1f} s); "
            "the others wait for it in setup.",
            "",
        ]
    out += [
        table(["process", "wall s", "start-up + exit s", "setup s", "time loop s", "CPU s", "role s (in-process)",
               "HELICS waiting s (est.)", "% of wall", "waiting in loop s (est.)", "% of loop"], rows),
        "",
        f"Seconds are the {stat} over repeats. How each column is obtained (federate code is unchanged):",
        "",
        "- **wall**: process lifetime as the runner saw it (manifest.json `federates[].wall_s`; the "
        "runner polls every 0.1 s).",
        "- **start-up + exit**: wall minus the federate's own `done in X s` log line: interpreter "
        "start-up and imports, interpreter exit, and ≤ 0.1 s of runner polling.",
        "- **setup**: `done in` minus the time loop: loading the study, building the role, "
        "registering HELICS interfaces and waiting for every federate to enter executing mode.",
        "- **time loop**: from the federate's `executing` log line to its `done` line: the HELICS "
        "time loop plus writing its tables.",
        f"- **CPU**: user+system time of the process and its children, sampled from /proc every "
        f"{SAMPLE_S * 1000:.0f} ms (includes HELICS' core threads; may miss the last few ms). "
        "`broker` is the `helics_broker` Python wrapper plus the broker binary it runs.",
        "- **role (in-process)**: the same role's compute time in the in-process engine "
        "(table above); role construction and table building are in the in-process `setup` row, not here.",
        "- **HELICS waiting (est.)** = wall − role (in-process). This is an *estimate*, not a "
        "measurement inside HELICS time requests: it assumes the role computes as fast in its own "
        "process as in-process, and it also contains start-up, exit, setup, HELICS call and message "
        "overhead and table writing. Read it as an upper bound on time spent waiting for grants.",
        "- **waiting in loop (est.)** = time loop − role (in-process): the same estimate "
        "without start-up, exit and setup, the closer figure for time spent in time requests.",
        f"- The machine has {os.cpu_count()} logical CPUs for 6 processes, so time a federate spends "
        "runnable but not scheduled also counts as waiting.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time configs/default.yaml with both engines; write BENCHMARKS.md.")
    ap.add_argument("--duration", default="24h", help="study.duration override (default 24h)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per engine; report min and median (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the runs/bench-* folder")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    overrides = [f"study.duration={args.duration}"]
    try:
        cfg = load_config(CONFIG, overrides)
    except TecosimError as e:
        print(f"bench: invalid {e}", file=sys.stderr)
        return 2

    import runner.engine  # noqa: F401  (import the roles before timing the in-process engine)

    started = dt.datetime.now(dt.UTC)
    bench_dir = REPO_ROOT / "runs" / f"bench-{started:%Y%m%dT%H%M%SZ}"
    runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
    try:
        for i in range(1, args.repeat + 1):
            for engine in ENGINES:
                print(f"bench: {engine} run {i}/{args.repeat} ({args.duration}) ...", end=" ", flush=True)
                r = run_once(overrides, bench_dir / f"{engine}-{i}", engine)
                runs[engine].append(r)
                print(f"{r['wall']:.2f} s", flush=True)
    except (TecosimError, KeyboardInterrupt) as e:
        print(f"\nbench: failed: {e}\nbench: run folders kept in {bench_dir}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    equal = same_tables(runs["inprocess"][0]["run_dir"], runs["federation"][0]["run_dir"])
    text = report(runs, cfg, overrides if args.duration != "24h" else [], args.repeat, started, equal)
    OUT.write_text(text + kept_sections())
    print()
    print(text)
    print(f"bench: wrote {OUT.relative_to(REPO_ROOT)}")
    if args.keep:
        print(f"bench: run folders kept in {bench_dir}")
    else:
        shutil.rmtree(bench_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
