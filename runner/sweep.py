"""``tecosim sweep``: the cartesian grid of one study config, run by run.

``--set key=v1,v2`` gives an axis (values split on commas outside brackets and quotes,
each parsed as YAML by the run's config loader); ``--set key=value`` with one value
is an override common to every point. Every point is validated before anything
runs. Each point is its own ``tecosim run`` subprocess (its own process group and
HELICS port block), writing the run folder ``DIR/<key>=<v>_<key2>=<a>`` and its
console output to ``logs/run.log`` inside it; up to ``jobs`` run at a time.

``DIR/sweep.json`` holds the points, their status (pending, running, ok, failed,
interrupted, not started), exit code, pid and wall time; it is rewritten at every
change. When the runs are done, ``compare`` covers the successful ones
(``DIR/compare.html``). On Ctrl-C / SIGTERM every running child is asked to stop
(SIGTERM to its process group: it kills its own federates), then killed, and any
federate process still naming its run folder is killed too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
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

from federates.common.errors import ConfigError, Problem, TecosimError
from runner.progress import eta_s, format_duration

SWEEP_FILE = "sweep.json"
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
    name: str
    values: dict[str, str]  # axis key -> YAML text
    run_dir: Path
    status: str = "pending"
    exit_code: int | None = None
    pid: int | None = None
    wall_s: float | None = None
    t0: float = 0.0
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]

    @property
    def label(self) -> str:
        return ", ".join(self.overrides) or self.name

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "run_dir": str(self.run_dir), "set": self.values, "status": self.status,
                "exit_code": self.exit_code, "pid": self.pid,
                "wall_s": None if self.wall_s is None else round(self.wall_s, 3),
                "log": str(self.run_dir / RUN_LOG)}


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


def make_points(axes: list[Axis], out_dir: Path) -> list[Point]:
    """The cartesian grid (first axis slowest), one uniquely named folder each."""
    points, used = [], set()
    for combo in itertools.product(*(a.values for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo, strict=True)}
        base = sanitise("_".join(f"{k}={v}" for k, v in values.items())) if values else "point"
        name, i = base, 2
        while name.lower() in used:  # also apart on case-insensitive file systems
            name, i = f"{base}-{i}", i + 1
        used.add(name.lower())
        points.append(Point(name, values, out_dir / name))
    return points


def validate_points(config: Path, fixed: list[str], points: list[Point], *, engine: str = "federation",
                    jobs: int = 1) -> None:
    """Every point's config (and each distinct feeder model once) must load: one
    ConfigError naming every bad point and field. Parallel federations cannot share
    a fixed ``federation.broker_port`` or ``federation.broker_address``."""
    from federates.common.config import load_config
    from runner.launch import check_feeder

    problems: list[Problem] = []
    feeders_checked: dict[str, list[Problem]] = {}
    for p in points:
        try:
            cfg = load_config(config, [*fixed, *p.overrides])
        except ConfigError as e:
            problems += [Problem(f"[{p.label}] {q.field}", q.message, q.allowed) for q in e.problems]
            continue
        if engine == "federation" and jobs > 1 and cfg.federation.broker_port is not None:
            problems.append(Problem(f"[{p.label}] federation.broker_port",
                                    f"fixed port {cfg.federation.broker_port} cannot serve {jobs} runs at a time",
                                    "null (a free port per run), or --jobs 1"))
        elif engine == "federation" and jobs > 1 and cfg.federation.broker_address is not None:
            problems.append(Problem(f"[{p.label}] federation.broker_address",
                                    f"one broker address ({cfg.federation.broker_address}) cannot serve {jobs} "
                                    "runs at a time", "null (a local broker on a free port per run), or --jobs 1"))
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
    status: str = "pending"
    started_utc: str = ""
    wall_s: float = 0.0
    compare_html: Path | None = None

    # ------------------------------------------------------------------ state

    def write_json(self) -> None:
        doc = {
            "config": str(self.config), "engine": self.engine, "jobs": self.jobs,
            "fixed": self.fixed, "axes": {a.key: a.values for a in self.axes},
            "status": self.status, "started_utc": self.started_utc, "wall_s": round(self.wall_s, 3),
            "points": [p.record() for p in self.points],
            "compare": None if self.compare_html is None else str(self.compare_html),
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

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Run every point; write the compare page. 0 all ok, 1 some failed; on
        KeyboardInterrupt every child is stopped and it propagates."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started_utc = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.status = "running"
        self.write_json()
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
            self.status = "interrupted"
            self.wall_s = time.monotonic() - t0
            self.write_json()
            raise
        return self._finish(t0)

    def _finish(self, t0: float) -> int:
        """Write the compare page of the runs that ended ok and say which failed; the exit
        code (0 all ok, 1 some failed or no compare page)."""
        n = len(self.points)
        ok = [p for p in self.points if p.status == "ok"]
        failed = [p for p in self.points if p.status != "ok"]
        code = 0 if not failed else 1
        if ok:
            from runner.compare import write_compare

            try:
                self.compare_html = write_compare([p.run_dir for p in ok], self.out_dir,
                                                  labels=[p.label for p in ok])
            except Exception as e:
                print(f"tecosim sweep: the compare page could not be written: {e!r}", file=sys.stderr)
                code = 1
        self.status = "ok" if code == 0 else "failed"
        self.wall_s = time.monotonic() - t0
        self.write_json()
        if self.compare_html is not None:
            self.say(f"{len(ok)}/{n} ok in {format_duration(self.wall_s)}; compare: {self.compare_html}")
        if failed:
            lines = [f"  - {p.name}: {self._outcome(p)}; log {p.run_dir / RUN_LOG}" for p in failed]
            print(f"tecosim sweep: {len(failed)} of {n} run(s) failed:\n" + "\n".join(lines), file=sys.stderr)
        return code

    @staticmethod
    def _outcome(p: Point) -> str:
        if p.status == "ok":
            return f"ok in {format_duration(p.wall_s or 0.0)}"
        if p.exit_code is not None and p.exit_code < 0:
            try:
                name = signal.Signals(-p.exit_code).name
            except ValueError:
                name = str(-p.exit_code)
            return f"failed: killed by signal {-p.exit_code} ({name})"
        return f"failed: exit code {p.exit_code}"

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
