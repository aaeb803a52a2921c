"""A sweep's runs as tasks on a Dask cluster (``tecosim sweep --dask tcp://host:8786``).

The client (:func:`run_on_cluster`, called by ``runner.sweep.Sweep.run``) resolves each
run's config itself (its file, the sweep's fixed overrides, the point's values and
seed: ``federates.common.config.resolved_dict``, input files named by absolute paths)
and submits one task per run, :func:`run_task`. On its worker the task writes that
config into a temporary folder of its own, runs ``tecosim run`` on it there as a
subprocess in its own process group (the engine the sweep names; a federation draws
its own free block of loopback ports, as the runs of ``--jobs N`` do), and returns the
run folder's files (``{relative path: bytes}``), its exit code, wall time, host and
error, then removes the folder. The client writes the files into ``DIR/<run>``, so a
finished sweep folder is the same as one of ``--jobs N``; the manifest's
``config_file`` names the worker's temporary copy.

A run that fails is recorded as failed with its error (the run's last ``tecosim:``
message, or the task's exception) and its log (``logs/run.log``; the traceback of a
task that raised), and the others go on. Ctrl-C / SIGTERM on the client sets a Dask
``Event`` that every task polls: each stops its run (SIGTERM to its process group,
SIGKILL after the grace time) and returns; the futures not yet started are cancelled.

Workers need tecosim installed (the same version: the task is this module's
function) and every input file a config names by path (a feeder, weather, profiles,
sites or tariff file) at the same absolute path, e.g. on a shared file system; the
bundled feeders and weather are found in each worker's own installation.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federates.common.errors import ConfigError, Problem
from runner.progress import eta_s, format_duration
from runner.sweep import RUN_LOG, STOP_GRACE_S, Point, kill_leftovers, log_error

if TYPE_CHECKING:
    from runner.sweep import Sweep

POLL_S = 0.5
"""How often a task looks whether its run ended [s]."""
STOP_POLL_S = 2.0
"""How often a task asks the scheduler whether the sweep was stopped [s]."""
CONNECT_TIMEOUT_S = 30.0
SCHEDULER_SILENCE_S = 60.0
"""A task whose scheduler has not answered for this long stops its run [s]."""


def connect(address: str) -> Any:
    """A ``dask.distributed.Client`` of the scheduler at ``address``
    (``tcp://host:8786``). ConfigError (exit 2) without dask installed or with an
    address that is not one; TecosimError (exit 1) when no scheduler answers."""
    from federates.common.errors import TecosimError

    try:
        from distributed import Client
    except ImportError:
        raise ConfigError([Problem("--dask", "needs dask.distributed, which is not installed",
                                   "pip install 'tecosim[dask]' (or dask[distributed])")], "arguments") from None
    if "://" not in address and ":" not in address:
        raise ConfigError([Problem("--dask", f"{address!r} is not a scheduler address",
                                   "tcp://HOST:PORT, e.g. tcp://scheduler:8786")], "arguments")
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise TecosimError(f"no Dask scheduler answered at {address}: {e}") from None


# ---------------------------------------------------------------------------- the client


def run_config_yaml(sweep: Sweep, p: Point) -> str:
    """The run's config as one self-contained YAML text: the sweep's config with its
    fixed overrides, the point's values and seed, every default filled in, the feeder
    and weather files named by absolute paths (the measured profiles, sites and tariff
    files are made absolute by the loader)."""
    import yaml

    from federates.common.config import load_config, resolved_dict

    cfg = load_config(sweep.config, [*sweep.fixed, *p.overrides])
    raw = resolved_dict(cfg)
    base = sweep.config.parent
    if raw["feeder"].get("path") is not None and not Path(raw["feeder"]["path"]).is_absolute():
        raw["feeder"]["path"] = str((base / raw["feeder"]["path"]).resolve())
    weather = raw["site"]["weather"]
    if weather.get("path") is not None and not Path(weather["path"]).is_absolute():
        weather["path"] = str((base / weather["path"]).resolve())
    notes = "".join(f"# {n}\n" for n in cfg._notes)
    return notes + yaml.safe_dump(raw, sort_keys=False)


def run_on_cluster(sweep: Sweep, t0: float) -> None:
    """Submit every run of ``sweep`` to its client's cluster and record each as it ends
    (sweep.json rewritten each time); on KeyboardInterrupt stop them all (module
    docstring) and let it propagate."""
    from distributed import as_completed

    client = sweep.client
    n = len(sweep.points)
    stop_name = f"tecosim-sweep-stop-{uuid.uuid4().hex}"
    sweep.say(f"{n} run(s) on the Dask cluster at {sweep.dask_address}, engine {sweep.engine}, in {sweep.out_dir}")
    futures: dict[Any, Point] = {}
    try:
        for p in sweep.points:
            spec = {"name": p.name, "config_name": sweep.config.name, "config_yaml": run_config_yaml(sweep, p),
                    "engine": sweep.engine, "report": sweep.report, "stop_event": stop_name}
            fut = client.submit(run_task, spec, key=f"tecosim-run-{p.name}-{uuid.uuid4().hex[:8]}", pure=False)
            futures[fut] = p
            p.status, p.t0 = "submitted", time.monotonic()
        sweep.write_json()
        done = 0
        for fut in as_completed(list(futures)):
            p = futures[fut]
            record(p, fut)
            done += 1
            sweep.wall_s = time.monotonic() - t0
            sweep.write_json()
            eta = "" if done == n else f", ETA {format_duration(eta_s(sweep.wall_s, done, n))}"
            where = f" on {p.host}" if p.host else ""
            sweep.say(f"{done}/{n} done{eta} ({p.name}{where}: {sweep._outcome(p)})")
    except BaseException:
        _stop(client, stop_name, futures)
        for p in futures.values():
            if p.status in ("submitted", "running"):
                p.status = "interrupted"
        for p in sweep.points:
            if p.status == "pending":
                p.status = "not started"
        sweep.interrupted(t0)
        raise


def _stop(client: Any, stop_name: str, futures: dict[Any, Point]) -> None:
    """Tell every task to stop its run, and cancel the futures (those not started never start)."""
    from distributed import Event

    try:
        Event(stop_name, client=client).set()
    except Exception as e:  # the scheduler is gone: nothing runs there any more
        print(f"tecosim sweep: could not tell the Dask tasks to stop: {e!r}", file=sys.stderr)
    try:
        client.cancel([f for f in futures if not f.done()])
    except Exception as e:
        print(f"tecosim sweep: could not cancel the Dask tasks: {e!r}", file=sys.stderr)


def record(p: Point, fut: Any) -> None:
    """A finished future -> the run's folder under the sweep and its status."""
    p.run_dir.mkdir(parents=True, exist_ok=True)
    if fut.status == "finished":
        r = fut.result()
        write_files(p.run_dir, r["files"])
        p.exit_code, p.wall_s, p.host = r["exit_code"], r["wall_s"], r["host"]
        p.status = "ok" if r["exit_code"] == 0 and not r["stopped"] else ("interrupted" if r["stopped"] else "failed")
        p.error = r["error"]
        return
    p.status = "interrupted" if fut.status == "cancelled" else "failed"
    p.wall_s = time.monotonic() - p.t0
    if fut.status == "error":
        exc, tb = fut.exception(), fut.traceback()
        p.error = f"the Dask task failed: {type(exc).__name__}: {exc}"
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        (p.run_dir / RUN_LOG).parent.mkdir(parents=True, exist_ok=True)
        (p.run_dir / RUN_LOG).write_text(f"tecosim sweep: {p.error}\n{text}")


def write_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a task's files under ``run_dir``; a path that would leave it is refused."""
    root = run_dir.resolve()
    for rel, data in files.items():
        dest = (root / rel).resolve()
        if not dest.is_relative_to(root) or dest == root:
            raise ValueError(f"a Dask task returned a file outside its run folder: {rel!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


# ---------------------------------------------------------------------------- the worker


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """On a worker: run one study (``spec``: ``name``, ``config_name``, ``config_yaml``,
    ``engine``, ``report``, optional ``stop_event``) in a temporary folder; returns
    ``files`` (the run folder's, by relative path), ``exit_code``, ``wall_s``,
    ``host``, ``error`` (None when ok) and ``stopped`` (the stop event ended it)."""
    from federates.common.config import REPO_ROOT

    tmp = Path(tempfile.mkdtemp(prefix="tecosim-dask-"))
    try:
        config = tmp / "config" / spec["config_name"]
        config.parent.mkdir()
        config.write_text(spec["config_yaml"], encoding="utf-8")
        run_dir = tmp / spec["name"]
        (run_dir / RUN_LOG).parent.mkdir(parents=True)
        argv = [sys.executable, "-m", "runner.cli", "run", str(config), "--out", str(run_dir),
                "--engine", spec["engine"], *([] if spec.get("report", True) else ["--no-report"])]
        stop = _stop_event(spec.get("stop_event"))
        t0 = time.monotonic()
        with open(run_dir / RUN_LOG, "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO_ROOT, start_new_session=True)
        stopped = False
        unheard_since: float | None = None  # since when the scheduler has not answered
        asked = time.monotonic()
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
                if stop is None or time.monotonic() - asked < STOP_POLL_S:
                    continue
                asked = time.monotonic()
                try:
                    stopped = bool(stop.is_set())
                    unheard_since = None
                except Exception:  # the scheduler did not answer: the client may be gone with it
                    unheard_since = unheard_since or time.monotonic()
                    stopped = time.monotonic() - unheard_since > SCHEDULER_SILENCE_S
                if stopped:
                    _end(proc)
                    break
        except BaseException:
            _end(proc)
            raise
        finally:
            if proc.poll() is None:
                _end(proc)
        code = proc.returncode
        wall_s = time.monotonic() - t0
        if code != 0:
            kill_leftovers(run_dir)
        error = None
        if stopped:
            error = "stopped: the sweep was interrupted (or its scheduler went silent)"
        elif code != 0:
            error = log_error(run_dir / RUN_LOG) or f"exit code {code}"
        files = {p.relative_to(run_dir).as_posix(): p.read_bytes()
                 for p in sorted(run_dir.rglob("*")) if p.is_file()}
        return {"files": files, "exit_code": code, "wall_s": wall_s, "host": socket.gethostname(),
                "error": error, "stopped": stopped}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stop_event(name: str | None) -> Any:
    if name is None:
        return None
    try:
        from distributed import Event

        return Event(name)
    except Exception:  # not on a Dask worker (the function called directly)
        return None


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group (it stops its own federates), SIGKILL after
    the grace time."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
