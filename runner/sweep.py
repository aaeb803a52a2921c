"""``tecosim sweep``: the cartesian grid of one study config, run by run.

``--set key=v1,v2`` gives an axis (values split on commas outside brackets and quotes,
each parsed as YAML by the run's config loader); ``--set key=value`` with one value
is an override common to every point. Every run is validated before anything
runs. Each run is its own ``tecosim run`` subprocess (its own process group and
HELICS port block), writing the run folder ``DIR/<key>=<v>_<key2>=<a>`` and its
console output to ``logs/run.log`` inside it; up to ``jobs`` run at a time.

Monte Carlo (``--seeds N``): each point runs N times, with the study seeds S, S+1, ...,
S+N-1 (S the point's ``study.seed``: the config's, or ``--set study.seed=S``), each in
``DIR/<point>_seed=<s>`` (``DIR/seed=<s>`` without axes); the compare page shows each
KPI's mean and 95 % t interval per point (``runner.compare``, ``runner.confidence``).

On a Dask cluster (``--dask tcp://scheduler:8786``, or :func:`run_sweep` with a
``dask.distributed.Client``): each run is a task (``runner.sweep_dask``) that runs
``tecosim run`` on a worker in a temporary folder of its own and returns the run
folder's files, which the client writes to ``DIR/<run>``; ``jobs`` does not apply
(the cluster's worker threads do).

``DIR/sweep.json`` holds the runs, their status (pending, submitted (Dask), running,
ok, failed, interrupted, not started), exit code, pid (or the Dask worker's host),
error and wall time; it is rewritten at every change. When the runs are done,
``DIR/sweep.parquet`` holds a row per run (its point, the axes' values, seed, status and
KPIs) and ``compare`` covers the successful ones (``DIR/compare.html``). On Ctrl-C /
SIGTERM every running child is asked to stop (SIGTERM to its process group: it kills
its own federates), then killed, and any federate process still naming its run folder
is killed too; on Dask the futures are cancelled and every task stops its run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from federates.common.errors import ConfigError, Problem, TecosimError
from runner.progress import eta_s, format_duration

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.parquet"
SEED_KEY = "study.seed"
RUN_LOG = Path("logs") / "run.log"
POLL_S = 0.2
STOP_GRACE_S = 20.0
"""How long stopped children get to kill their own federates before SIGKILL [s]."""
MAX_NAME_CHARS = 120


@dataclass
class Axis:
    key: str
    values: list[str]  # the YAML text of each value, as given


@dataclass
class Point:
    """One run of the sweep: a point of the grid (``values``), with ``--seeds`` one of
    its seeds."""

    name: str  # the run folder's name
    values: dict[str, str]  # axis key -> YAML text
    run_dir: Path
    seed: int | None = None  # the study seed the sweep sets (--seeds), else None
    point: str = ""  # the grid point's name (the run's without the seed)
    status: str = "pending"
    exit_code: int | None = None
    pid: int | None = None
    wall_s: float | None = None
    t0: float = 0.0
    error: str | None = None  # why it failed, when known (Dask: the task's error or the log's last word)
    host: str | None = None  # the Dask worker's host
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def overrides(self) -> list[str]:
        seed = [] if self.seed is None else [f"{SEED_KEY}={self.seed}"]
        return [*(f"{k}={v}" for k, v in self.values.items()), *seed]

    @property
    def label(self) -> str:
        return ", ".join(self.overrides) or self.name

    @property
    def point_label(self) -> str:
        """The grid point's label (the same for each of its seeds)."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or self.point or self.name

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "point": self.point or self.name, "run_dir": str(self.run_dir),
                "set": self.values, "seed": self.seed, "status": self.status,
                "exit_code": self.exit_code, "pid": self.pid, "host": self.host,
                "wall_s": None if self.wall_s is None else round(self.wall_s, 3),
                "error": self.error, "log": str(self.run_dir / RUN_LOG)}


def split_values(text: str) -> list[str]:
    """``a,b,[1,2],'x,y'`` -> ``["a", "b", "[1,2]", "'x,y'"]``: commas split only
    outside brackets, braces and quotes."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_sets(items: list[str]) -> tuple[list[str], list[Axis]]:
    """``--set`` arguments -> (fixed overrides ``key=value``, axes). ConfigError on a
    malformed item, an empty value or a key given twice."""
    fixed: list[str] = []
    axes: list[Axis] = []
    seen: set[str] = set()
    problems = []
    for item in items:
        if "=" not in item:
            problems.append(Problem(f"--set {item}", "must look like key=value or key=v1,v2,...",
                                    "section.key=v1,v2"))
            continue
        key, text = (s.strip() for s in item.split("=", 1))
        if not key:
            problems.append(Problem(f"--set {item}", "empty key", "section.key=v1,v2"))
            continue
        if key in seen:
            problems.append(Problem(f"--set {key}", "given twice", "one --set per key; list its values "
                                    "comma-separated"))
            continue
        seen.add(key)
        values = split_values(text)
        if len(values) > 1 and any(v == "" for v in values):
            problems.append(Problem(f"--set {item}", "empty value in the list", "v1,v2,... with no empty item"))
            continue
        if len(set(values)) < len(values):
            problems.append(Problem(f"--set {item}", "a value is listed twice", "distinct values"))
            continue
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            axes.append(Axis(key, values))
    if problems:
        raise ConfigError(problems, "--set")
    return fixed, axes


def sanitise(text: str) -> str:
    """A folder name from ``key=value_key2=value``: letters, digits and ``._=+-``."""
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-.") or "point"
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_CHARS - 9]}-{digest}"
    return name


def make_points(axes: list[Axis], out_dir: Path, seeds: list[int] | None = None) -> list[Point]:
    """The cartesian grid (first axis slowest), one uniquely named folder each; with
    ``seeds`` one run per point and seed (``<point>_seed=<s>``, the seeds fastest)."""
    points, used = [], set()
    for combo in itertools.product(*(a.values for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo, strict=True)}
        base = sanitise("_".join(f"{k}={v}" for k, v in values.items())) if values else "point"
        name, i = base, 2
        while name.lower() in used:  # also apart on case-insensitive file systems
            name, i = f"{base}-{i}", i + 1
        used.add(name.lower())
        if seeds is None:
            points.append(Point(name, values, out_dir / name, point=name))
            continue
        for s in seeds:
            run = f"{name}_seed={s}" if values else f"seed={s}"
            points.append(Point(run, values, out_dir / run, seed=s, point=name))
    return points


def seed_list(config: Path, fixed: list[str], axes: list[Axis], n: int) -> list[int]:
    """``--seeds n``: the study seeds S .. S+n-1, S the study seed of the config with the
    fixed overrides. ConfigError when n < 1 or ``study.seed`` is an axis."""
    from federates.common.config import load_config

    problems = []
    if n < 1:
        problems.append(Problem("--seeds", f"must be at least 1, got {n}", "1, 2, ..."))
    if any(a.key == SEED_KEY for a in axes):
        problems.append(Problem(f"--set {SEED_KEY}", "is an axis, and --seeds sets the seeds",
                                f"--seeds N alone (seeds S..S+N-1 from {SEED_KEY}=S), or the axis alone"))
    if problems:
        raise ConfigError(problems, "arguments")
    base = load_config(config, fixed).study.seed
    return [base + i for i in range(n)]


def validate_points(config: Path, fixed: list[str], points: list[Point], *, engine: str = "federation",
                    jobs: int = 1, dask: bool = False) -> dict[str, int]:
    """Every point's config (and each distinct feeder model once) must load: one
    ConfigError naming every bad point and field; returns each run's study seed (by
    run name). Parallel federations (``jobs`` > 1,
    or on a Dask cluster) cannot share a fixed ``federation.broker_port`` or
    ``federation.broker_address``."""
    from federates.common.config import load_config
    from runner.launch import check_feeder

    problems: list[Problem] = []
    feeders_checked: dict[str, list[Problem]] = {}
    seeds: dict[str, int] = {}
    for p in points:
        try:
            cfg = load_config(config, [*fixed, *p.overrides])
        except ConfigError as e:
            problems += [Problem(f"[{p.label}] {q.field}", q.message, q.allowed) for q in e.problems]
            continue
        seeds[p.name] = cfg.study.seed
        many = "the Dask cluster's" if dask else str(jobs)
        alone = "" if dask else ", or --jobs 1"
        if engine == "federation" and (jobs > 1 or dask) and cfg.federation.broker_port is not None:
            problems.append(Problem(f"[{p.label}] federation.broker_port",
                                    f"fixed port {cfg.federation.broker_port} cannot serve {many} runs at a time",
                                    f"null (a free port per run){alone}"))
        elif engine == "federation" and (jobs > 1 or dask) and cfg.federation.broker_address is not None:
            problems.append(Problem(f"[{p.label}] federation.broker_address",
                                    f"one broker address ({cfg.federation.broker_address}) cannot serve {many} "
                                    "runs at a time", f"null (a local broker on a free port per run){alone}"))
        key = json.dumps([cfg.grid_preset, cfg.feeder.model_dump(mode="json")], sort_keys=True, default=str)
        if key not in feeders_checked:
            found: list[Problem] = []
            try:
                check_feeder(cfg, config.parent)
            except ConfigError as e:
                found = list(e.problems)
            except TecosimError as e:
                found = [Problem("feeder", str(e))]
            feeders_checked[key] = found
        problems += [Problem(f"[{p.label}] {q.field}", q.message, q.allowed) for q in feeders_checked[key]]
    if problems:
        raise ConfigError(problems, f"sweep of {config}")
    return seeds


def plan_sweep(config: str | Path, sets: list[str] | tuple[str, ...] = (), *, seeds: int | None = None,
               jobs: int = 1, engine: str = "federation", out: str | Path | None = None, dask: bool = False,
               report: bool = True, quiet: bool = False, stream: TextIO | None = None) -> Sweep:
    """A sweep, checked and ready to run: the grid of ``sets`` (``key=v1,v2``; one
    value: an override for every point), with ``seeds`` N each point run with the study
    seeds S..S+N-1, into ``out`` (new; default ``runs/sweep-<config>-<UTC stamp>``).
    Every run's config is validated first: ConfigError (exit 2 on the command line)
    naming each bad point and field, a bad argument, or an ``out`` already used.
    ``dask``: the runs will go to a Dask cluster (fixed broker ports refused)."""
    problems = []
    config = Path(config)
    if jobs < 1:
        problems.append(Problem("--jobs", f"must be at least 1, got {jobs}", "1, 2, ..."))
    if engine not in ("federation", "inprocess"):
        problems.append(Problem("--engine", f"unknown {engine!r}", "federation, inprocess"))
    if not config.is_file():
        problems.append(Problem("CONFIG", f"no such config file: {config}", "a YAML file"))
    if problems:
        raise ConfigError(problems, "arguments")
    config = config.resolve()
    fixed, axes = parse_sets(list(sets))
    seed_values = None if seeds is None else seed_list(config, fixed, axes, seeds)
    out = Path(out).resolve() if out is not None else default_sweep_dir(config).resolve()
    points = make_points(axes, out, seed_values)
    taken = [str(p.run_dir) for p in points if p.run_dir.exists()]
    if (out / SWEEP_FILE).exists() or taken:
        raise ConfigError([Problem("--out", f"{out} already holds a sweep or its run folders "
                                   f"({', '.join(taken) or SWEEP_FILE})", "a new folder")], "arguments")
    study_seeds = validate_points(config, fixed, points, engine=engine, jobs=jobs, dask=dask)
    return Sweep(config, out, fixed, axes, points, engine=engine, jobs=jobs, report=report, quiet=quiet,
                 stream=stream or sys.stderr, seeds=seed_values, study_seeds=study_seeds)


def run_sweep(config: str | Path, sets: list[str] | tuple[str, ...] = (), *, seeds: int | None = None,
              jobs: int = 1, engine: str = "federation", out: str | Path | None = None, client: Any = None,
              report: bool = True, quiet: bool = False, stream: TextIO | None = None) -> Sweep:
    """Plan (:func:`plan_sweep`) and run a sweep: ``jobs`` runs at a time on this
    machine, or with ``client`` (a ``dask.distributed.Client``) each run a task on its
    cluster. Returns the finished :class:`Sweep` (``exit_code`` 0 when every run ended
    ok; its table: ``pandas.read_parquet(sweep.out_dir / "sweep.parquet")``).
    KeyboardInterrupt stops every run and propagates."""
    sweep = plan_sweep(config, sets, seeds=seeds, jobs=jobs, engine=engine, out=out, dask=client is not None,
                       report=report, quiet=quiet, stream=stream)
    sweep.client = client
    sweep.run()
    return sweep


def default_sweep_dir(config: Path, root: Path = Path("runs")) -> Path:
    from runner.launch.prepare import fresh_dir

    return fresh_dir(root, f"sweep-{config.stem}")


@dataclass
class Sweep:
    config: Path
    out_dir: Path
    fixed: list[str]
    axes: list[Axis]
    points: list[Point]
    engine: str = "federation"
    jobs: int = 1
    report: bool = True
    quiet: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    seeds: list[int] | None = None  # --seeds: the study seeds of every point
    study_seeds: dict[str, int] = field(default_factory=dict)  # each run's study seed (validate_points)
    client: Any = field(default=None, repr=False)  # a dask.distributed.Client: run the points on its cluster
    status: str = "pending"
    started_utc: str = ""
    wall_s: float = 0.0
    compare_html: Path | None = None
    exit_code: int | None = None  # of run(): 0 all ok, 1 some failed

    # ------------------------------------------------------------------ state

    @property
    def dask_address(self) -> str | None:
        return None if self.client is None else str(getattr(self.client.scheduler, "address", "") or "?")

    def write_json(self) -> None:
        doc = {
            "config": str(self.config), "engine": self.engine, "jobs": self.jobs,
            "dask": self.dask_address, "fixed": self.fixed, "axes": {a.key: a.values for a in self.axes},
            "seeds": self.seeds,
            "status": self.status, "started_utc": self.started_utc, "wall_s": round(self.wall_s, 3),
            "points": [p.record() for p in self.points],
            "compare": None if self.compare_html is None else str(self.compare_html),
            "table": str(self.out_dir / TABLE_FILE) if (self.out_dir / TABLE_FILE).exists() else None,
        }
        path = self.out_dir / SWEEP_FILE
        tmp = path.with_name(SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(f"tecosim sweep: {text}\n")
            self.stream.flush()

    # ------------------------------------------------------------------ children

    def argv(self, p: Point) -> list[str]:
        argv = [sys.executable, "-m", "runner.cli", "run", str(self.config), "--out", str(p.run_dir),
                "--engine", self.engine]
        for o in (*self.fixed, *p.overrides):
            argv += ["--set", o]
        if not self.report:
            argv.append("--no-report")
        return argv

    def start(self, p: Point) -> None:
        from federates.common.config import REPO_ROOT

        (p.run_dir / RUN_LOG).parent.mkdir(parents=True, exist_ok=True)
        with open(p.run_dir / RUN_LOG, "w") as log:
            p.popen = subprocess.Popen(self.argv(p), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=REPO_ROOT, start_new_session=True)
        p.pid, p.t0, p.status = p.popen.pid, time.monotonic(), "running"

    def finished(self, p: Point, code: int) -> None:
        p.exit_code = code
        p.wall_s = time.monotonic() - p.t0
        p.status = "ok" if code == 0 else "failed"
        if code != 0:
            kill_leftovers(p.run_dir)
            p.error = log_error(p.run_dir / RUN_LOG)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Run every point (here, or on the Dask cluster of ``client``); write
        sweep.parquet and the compare page. 0 all ok, 1 some failed; on
        KeyboardInterrupt every run is stopped and it propagates."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started_utc = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.status = "running"
        self.write_json()
        if self.client is not None:
            from runner.sweep_dask import run_on_cluster

            t0 = time.monotonic()
            run_on_cluster(self, t0)
            return self._finish(t0)
        t0 = time.monotonic()
        n = len(self.points)
        self.say(f"{n} run(s), {self.jobs} at a time, engine {self.engine}, in {self.out_dir}")
        pending = deque(self.points)
        running: list[Point] = []
        done = 0
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    p = pending.popleft()
                    self.start(p)
                    running.append(p)
                    self.write_json()
                for p in list(running):
                    code = p.popen.poll() if p.popen is not None else None
                    if code is None:
                        continue
                    running.remove(p)
                    self.finished(p, code)
                    done += 1
                    self.wall_s = time.monotonic() - t0
                    self.write_json()
                    eta = "" if done == n else f", ETA {format_duration(eta_s(self.wall_s, done, n))}"
                    self.say(f"{done}/{n} done{eta} ({p.name}: {self._outcome(p)})")
                time.sleep(POLL_S)
        except BaseException:
            self.stop(running)
            for p in pending:
                p.status = "not started"
            self.interrupted(t0)
            raise
        return self._finish(t0)

    def interrupted(self, t0: float) -> None:
        """After Ctrl-C / SIGTERM, every run stopped: the table of what finished, the status."""
        self.status = "interrupted"
        self.wall_s = time.monotonic() - t0
        try:
            self.write_table()
        except Exception as e:  # the runs are stopped; say it, do not mask the interrupt
            print(f"tecosim sweep: {TABLE_FILE} could not be written: {e!r}", file=sys.stderr)
        self.write_json()

    def _finish(self, t0: float) -> int:
        """Write the compare page of the runs that ended ok and say which failed; the exit
        code (0 all ok, 1 some failed or no compare page)."""
        n = len(self.points)
        ok = [p for p in self.points if p.status == "ok"]
        failed = [p for p in self.points if p.status != "ok"]
        code = 0 if not failed else 1
        try:
            self.write_table()
        except Exception as e:
            print(f"tecosim sweep: {TABLE_FILE} could not be written: {e!r}", file=sys.stderr)
            code = 1
        if ok:
            from runner.compare import write_compare

            # with --seeds: a point's seeds are one group (mean and confidence interval)
            groups = None if self.seeds is None else \
                [p.point_label if p.values else self.config.stem for p in ok]
            try:
                self.compare_html = write_compare([p.run_dir for p in ok], self.out_dir,
                                                  labels=[p.label for p in ok], groups=groups)
            except Exception as e:
                print(f"tecosim sweep: the compare page could not be written: {e!r}", file=sys.stderr)
                code = 1
        self.exit_code = code
        self.status = "ok" if code == 0 else "failed"
        self.wall_s = time.monotonic() - t0
        self.write_json()
        if self.compare_html is not None:
            self.say(f"{len(ok)}/{n} ok in {format_duration(self.wall_s)}; compare: {self.compare_html}")
        if failed:
            lines = [f"  - {p.name}: {self._outcome(p)}; log {p.run_dir / RUN_LOG}" for p in failed]
            print(f"tecosim sweep: {len(failed)} of {n} run(s) failed:\n" + "\n".join(lines), file=sys.stderr)
        return code

    def write_table(self) -> Path:
        """``sweep.parquet``: :func:`sweep_table` of the runs, written atomically."""
        df = sweep_table(self.points, self.axes, self.study_seeds)
        path = self.out_dir / TABLE_FILE
        tmp = path.with_name(TABLE_FILE + ".tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    @staticmethod
    def _outcome(p: Point) -> str:
        if p.status == "ok":
            return f"ok in {format_duration(p.wall_s or 0.0)}"
        why = f" ({p.error})" if p.error else ""
        if p.exit_code is not None and p.exit_code < 0:
            try:
                name = signal.Signals(-p.exit_code).name
            except ValueError:
                name = str(-p.exit_code)
            return f"failed: killed by signal {-p.exit_code} ({name}){why}"
        if p.exit_code is None:
            return f"{p.status}{why}"
        return f"failed: exit code {p.exit_code}{why}"

    def stop(self, running: list[Point]) -> None:
        """SIGTERM every running child's process group (each stops its federates),
        SIGKILL what is left after the grace time, then kill leftover federates. A
        second Ctrl-C / SIGTERM meanwhile does not cut this short."""
        saved = _ignore_signals()
        try:
            self._stop(running)
        finally:
            _restore_signals(saved)

    def _stop(self, running: list[Point]) -> None:
        for p in running:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in running:
            if p.popen is None:
                continue
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in running:
            _signal_group(p, signal.SIGKILL)
            if p.popen is not None:
                try:
                    p.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                p.exit_code = p.popen.returncode
            p.wall_s = time.monotonic() - p.t0
            p.status = "interrupted"
            kill_leftovers(p.run_dir)


MAX_ERROR_CHARS = 600
_NOT_ERRORS = ("tecosim: running ", "tecosim: note:", "tecosim: warning:")


def log_error(log: Path) -> str | None:
    """What a failed ``tecosim run`` said was wrong, from its console log: its last
    ``tecosim: ...`` message (with the indented lines under it), else the last line of a
    Python traceback; None when the log says neither (say, a run killed outright)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if line.startswith("tecosim: ") and not line.startswith(_NOT_ERRORS):
            block = [line]
            block += [x.strip() for x in itertools.takewhile(lambda x: x.startswith(" "), lines[i + 1:])]
            return _cut("; ".join(block))
    if any(x.startswith("Traceback") for x in lines):
        last = next((x for x in reversed(lines) if x.strip()), "")
        return _cut(last.strip())
    return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def axis_column(values: list[str]) -> list[Any]:
    """An axis's values for one typed column: each value's YAML (``10`` -> 10,
    ``true`` -> True); ints and floats together as floats; the YAML text when the values
    are of different kinds or not scalars."""
    import yaml

    try:
        parsed = [yaml.safe_load(v) for v in values]
    except yaml.YAMLError:
        return list(values)
    kinds = {type(v) for v in parsed}
    if len(kinds) == 1 and kinds <= {bool, int, float, str}:
        return parsed
    if kinds <= {int, float}:
        return [float(v) for v in parsed]
    return list(values)


def sweep_table(points: list[Point], axes: list[Axis], study_seeds: dict[str, int] | None = None) -> pd.DataFrame:
    """``sweep.parquet``: a row per run, in sweep order: ``point`` (the grid point's
    name), ``run`` (its folder's name), one column per axis (its key; the values typed
    by :func:`axis_column`), ``seed`` (the run's study seed), ``status``, ``exit_code``,
    ``wall_s``, ``error``, then the run's KPIs (its manifest ``summary``:
    ``runner.kpis``; NaN for a run that did not end ok)."""
    from runner.compare import KPI_ORDER
    from runner.kpis import summary_of
    from runner.run_folder import RunFolder

    study_seeds = study_seeds or {}
    typed = {a.key: dict(zip(a.values, axis_column(a.values), strict=True)) for a in axes}
    summaries = {p.name: summary_of(RunFolder(p.run_dir)) for p in points if p.status == "ok"}
    keys = [k for k in KPI_ORDER if any(k in s for s in summaries.values())]
    for s in summaries.values():
        keys += [k for k in s if k not in keys]
    rows = []
    for p in points:
        seed = p.seed if p.seed is not None else study_seeds.get(p.name)
        row = {"point": p.point or p.name, "run": p.name,
               **{a.key: typed[a.key][p.values[a.key]] for a in axes},
               "seed": seed, "status": p.status, "exit_code": p.exit_code,
               "wall_s": math.nan if p.wall_s is None else float(p.wall_s), "error": p.error}
        got = summaries.get(p.name, {})
        row.update({k: _float(got.get(k)) for k in keys})
        rows.append(row)
    columns = ["point", "run", *(a.key for a in axes), "seed", "status", "exit_code", "wall_s", "error", *keys]
    df = pd.DataFrame(rows, columns=columns)
    df["seed"] = df["seed"].astype("Int64")
    df["exit_code"] = df["exit_code"].astype("Int64")
    df["error"] = df["error"].astype("string")
    return df


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _ignore_signals() -> dict[int, Any]:
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            saved[sig] = signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
    return saved


def _restore_signals(saved: dict[int, Any]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _signal_group(p: Point, sig: signal.Signals) -> None:
    if p.popen is None or p.popen.poll() is not None:
        return
    try:
        os.killpg(p.popen.pid, sig)
    except ProcessLookupError:
        pass


def kill_leftovers(run_dir: Path) -> list[int]:
    """Kill (SIGKILL, by process group) any process still working for ``run_dir``: a
    federate (``--run-dir <run_dir>``) or the broker named in its ``runner.json``.
    They outlive a ``tecosim run`` that was killed outright. Linux (/proc) only;
    returns the pids it killed."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    run_dir = Path(run_dir).resolve()
    broker_names = _broker_names(run_dir)
    killed = []
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        argv = _argv(d)
        ours = argv is not None and (
            any(a == "--run-dir" and i + 1 < len(argv) and argv[i + 1] == str(run_dir) for i, a in enumerate(argv))
            or bool(broker_names & set(argv)))
        if ours and _kill_group(int(d.name)):
            killed.append(int(d.name))
    return killed


def _broker_names(run_dir: Path) -> set[str]:
    """The ``--name=tecosim_broker_...`` arguments of the brokers in ``runner.json``."""
    try:
        spec = json.loads((run_dir / "runner.json").read_text())
    except (OSError, ValueError):
        return set()
    return {a for fed in spec.get("federates", []) for a in str(fed.get("exec", "")).split()
            if a.startswith("--name=tecosim_broker_")}


def _argv(proc_dir: Path) -> list[str] | None:
    """A process's command line (None once it is gone)."""
    try:
        return (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def _kill_group(pid: int) -> bool:
    """SIGKILL ``pid``'s process group (never our own), else ``pid`` alone; False if
    neither could be signalled."""
    try:
        pgid = os.getpgid(pid)
        if pgid == os.getpgrp():  # never our own group
            raise PermissionError
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
    return True
