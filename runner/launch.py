"""Launching a study: the run folder, then either the HELICS federation (a broker and
five federate processes) or the in-process engine, then the manifest and summary.

No orphan processes: every child runs in its own process group; on any failure,
timeout or Ctrl-C every group is killed before the error propagates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from federates.common import keys
from federates.common.errors import ConfigError, FederationError, FeederModelError, Problem
from federates.common.runtime import (
    CONFIG_FILE,
    V_BASE_FILE,
    Study,
    write_distances,
    write_sites,
    write_tables,
)
from runner.config import (
    GENERATED_FEEDER_DIR,
    REPO_ROOT,
    StudyFile,
    config_sha256,
    feeder_master,
    generated_feeder_parameters,
    resolved_dict,
)

PACKAGES = ("helics", "opendssdirect.py", "dss-python", "pandas", "numpy", "pyomo", "highspy",
            "pydantic", "pyarrow", "pvlib")


def default_run_dir(cfg: StudyFile, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = root / f"{cfg.study.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def prepare_run(cfg: StudyFile, run_dir: Path, config_dir: Path = Path(".")) -> Study:
    """Create the run folder: resolved config, customer sites, logs/ and results/.

    With a ``p2p`` or ``hybrid`` market it also writes ``distances_km.npy``: the
    customers' electrical distances along the feeder [km]
    (``OpenDSSFeeder.customer_distances_km``), read back as ``Study.distance_km`` by
    both engines. Community markets get no file (they price no distance, and their
    run folders stay as before); the computation is cheap (about a second for 1000
    customers), so this is only to keep those runs unchanged.

    A synthetic feeder with other than the bundled parameters is written into
    ``feeder/`` and named by the resolved config (``runner.config.generated_feeder_parameters``);
    with ``prosumers.pv_penetration_pct`` the resolved config also gets the peak load
    it refers to (``pv_penetration_base_kw``), so every federate sizes PV alike.
    """
    from federates.feeder.placement import place_customers
    from federates.feeder.synthetic import write_synthetic_feeder
    from federates.prosumers.agents import feeder_peak_load_kw

    run_dir = Path(run_dir).resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "results").mkdir(exist_ok=True)
    raw = resolved_dict(cfg)
    generated = generated_feeder_parameters(cfg)
    if generated is not None:  # its own synthetic model, in the run folder (see the function)
        master = write_synthetic_feeder(run_dir / GENERATED_FEEDER_DIR, **generated)
        raw["feeder"].update(model=None, path=str(master.relative_to(run_dir)))  # Study.load: relative to run_dir
    else:
        master = feeder_master(cfg, config_dir)
        if cfg.feeder.path is not None:
            raw["feeder"]["path"] = str(master)  # absolute, so the run folder stands alone
    feeder = open_feeder(cfg, master)
    points = feeder.load_points()
    p = cfg.prosumers
    try:
        sites = place_customers(points, p.count, seed=cfg.study.seed, phase=p.phases,
                                customers_per_transformer=cfg.feeder.customer_connection.customers_per_transformer)
    except ValueError as e:
        raise ConfigError([Problem("prosumers", f"cannot place {p.count} prosumers on {master.name}: {e}",
                                   "a feeder with loads on the requested phases")], "feeder") from None
    if p.pv_penetration_pct is not None and p.pv_penetration_base_kw is None:
        raw["prosumers"]["pv_penetration_base_kw"] = feeder_peak_load_kw(cfg, sites, sum(lp.kw for lp in points))
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    write_sites(run_dir, sites)
    if cfg.market.topology in ("p2p", "hybrid"):
        feeder.attach_customers(sites, cfg.feeder.customer_connection)
        write_distances(run_dir, feeder.customer_distances_km())
    if cfg.feeder.customer_connection.kind == "direct":
        np.save(run_dir / V_BASE_FILE, np.array([feeder.bus_kv_ln(s.bus) * 1000.0 for s in sites]))
    study = Study.load(run_dir)
    from federates.feeder.sensitivity import (
        SENSITIVITIES_FILE,
        compute_sensitivities,
        needs_sensitivities,
    )

    if needs_sensitivities(cfg):
        if not feeder.sites:
            feeder.attach_customers(sites, cfg.feeder.customer_connection)
        sens = compute_sensitivities(feeder, study.inverter_kva,
                                     background_mult=0.6 * cfg.feeder.background_load_scale)
        sens.save(run_dir / SENSITIVITIES_FILE)
    return study


def open_feeder(cfg: StudyFile, master: Path):
    """The configured OpenDSS model, compiled, solved and checked for voltage bases.

    A model without voltage bases is bad input: ConfigError (exit 2) on
    ``feeder.path`` / ``feeder.model``. Other model errors stay FeederModelError."""
    from federates.feeder.opendss import OpenDSSFeeder

    feeder = OpenDSSFeeder(master, source_pu=cfg.feeder.source_pu)
    try:
        feeder.check_voltage_bases()
    except FeederModelError as e:
        field_ = "feeder.path" if cfg.feeder.path is not None else "feeder.model"
        raise ConfigError([Problem(field_, str(e), "a model that sets VoltageBases and runs CalcVoltageBases")],
                          "feeder") from None
    return feeder


def check_feeder(cfg: StudyFile, config_dir: Path) -> str:
    """What ``tecosim validate`` checks of the model: it loads, solves, has voltage
    bases. Returns a one-line description (generated feeders are checked at run time)."""
    if generated_feeder_parameters(cfg) is not None:
        return "synthetic feeder generated at run time"
    master = feeder_master(cfg, config_dir)
    feeder = open_feeder(cfg, master)
    return f"{master.name}: {len(feeder.load_points())} loads, base case solves"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "tecosim": _version("tecosim")}
    out.update({name: _version(name) for name in PACKAGES})
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def free_port_block(width: int = 20, tries: int = 200) -> int:
    """A port P with P..P+width-1 free on loopback (zmq brokers use P and P+1, cores more)."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(tries):
        base = rng.randrange(20000, 60000 - width)
        socks = []
        try:
            for port in range(base, base + width):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise FederationError("broker", "found no free port block on 127.0.0.1")


def helics_bin(name: str) -> str:
    """Path of a HELICS executable shipped with the helics wheel (next to python)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FederationError("broker", f"cannot find {name}; is the helics package installed?")
    return found


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None
    t0: float = 0.0
    wall_s: float | None = None
    exit_code: int | None = None

    def start(self, cwd: Path) -> None:
        fh = open(self.log, "w")
        self.t0 = time.perf_counter()
        self.popen = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                      start_new_session=True, stdin=subprocess.DEVNULL)
        fh.close()

    def poll(self) -> int | None:
        if self.exit_code is None and self.popen is not None:
            code = self.popen.poll()
            if code is not None:
                self.exit_code = code
                self.wall_s = time.perf_counter() - self.t0
        return self.exit_code

    def kill(self) -> None:
        if self.popen is None or self.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.poll()

    def tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def record(self) -> dict:
        return {"name": self.name, "pid": self.popen.pid if self.popen else None,
                "exit_code": self.exit_code,
                "wall_s": None if self.wall_s is None else round(self.wall_s, 3)}


@dataclass
class Federation:
    """The broker and the federate processes of one run."""

    study: Study
    port: int
    procs: list[Proc] = field(default_factory=list)

    @classmethod
    def build(cls, study: Study) -> Federation:
        cfg = study.cfg
        port = cfg.federation.broker_port or free_port_block()
        fed = cls(study, port)
        logs = study.run_dir / "logs"
        address = f"tcp://127.0.0.1:{port}"
        fed.procs.append(Proc("broker", [
            helics_bin("helics_broker"), "-f", str(len(keys.FEDERATES)), "--coretype=zmq",
            "--local_interface=tcp://127.0.0.1", f"--port={port}", f"--name=tecosim_broker_{port}",
            "--loglevel=warning", "--timeout=60s",
        ], logs / "broker.log"))
        for name in keys.FEDERATES:
            fed.procs.append(Proc(name, [
                sys.executable, "-m", f"federates.{name}.federate",
                "--run-dir", str(study.run_dir), "--broker-address", address,
            ], logs / f"{name}.log"))
        return fed

    def write_runner_json(self) -> Path:
        """The same federation as a ``helics run --path=runner.json`` file."""
        spec = {
            "name": self.study.cfg.study.name,
            "broker": False,
            "federates": [
                {"name": p.name, "host": "localhost", "directory": str(REPO_ROOT),
                 "exec": " ".join(p.argv)} for p in self.procs
            ],
        }
        path = self.study.run_dir / "runner.json"
        path.write_text(json.dumps(spec, indent=2))
        return path

    def run(self, timeout_s: float, poll_s: float = 0.1,
            progress: Callable[[float], None] | None = None) -> None:
        """Start everything, wait, and on any failure kill everything and raise.

        ``progress`` (optional) is called with the simulated time [s] the feeder
        federate writes to ``<run>/progress`` (once per market interval), when it changes.
        """
        from runner.progress import PROGRESS_FILE, read_progress_file

        reached_s: float | None = None
        (self.study.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # of an earlier run in this folder
        try:
            for p in self.procs:
                p.start(REPO_ROOT)
            deadline = time.monotonic() + timeout_s
            while True:
                federates = [p for p in self.procs if p.name != "broker"]
                for p in self.procs:
                    code = p.poll()
                    if code not in (None, 0):
                        raise FederationError(p.name, f"exited with code {code}", {p.name: p.tail()})
                if all(p.poll() == 0 for p in federates):
                    broker = self.procs[0]
                    end = time.monotonic() + 15
                    while broker.poll() is None and time.monotonic() < end:
                        time.sleep(poll_s)
                    if broker.poll() is None:
                        raise FederationError("broker", "did not exit after all federates finished",
                                              {"broker": broker.tail()})
                    return
                if time.monotonic() > deadline:
                    running = [p for p in federates if p.poll() is None]
                    raise FederationError(", ".join(p.name for p in running),
                                          f"still running after timeout_s={timeout_s:g} s",
                                          {p.name: p.tail(8) for p in running})
                if progress is not None:
                    t_s = read_progress_file(self.study.run_dir)
                    if t_s is not None and t_s != reached_s:
                        reached_s = t_s
                        progress(t_s)
                time.sleep(poll_s)
        finally:
            self.kill_all()

    def kill_all(self) -> None:
        for p in reversed(self.procs):
            p.kill()


def write_manifest(study: Study, engine: str, status: str, wall_s: float, *, reason: str = "",
                   federates: list[dict] | None = None, extra: dict | None = None) -> Path:
    cfg = study.cfg
    manifest = {
        "study": cfg.study.name,
        "engine": engine,
        "status": status,
        "reason": reason,
        "seed": cfg.study.seed,
        "config_sha256": config_sha256(cfg),
        "git_commit": git_commit(),
        "versions": versions(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 3),
        "federates": federates or [],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rerun": f"tecosim run {study.run_dir / CONFIG_FILE} --engine {engine}",
    }
    manifest.update(extra or {})
    path = study.run_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def run_study(study: Study, engine: str, progress: Callable[[float], None] | None = None) -> float:
    """Run the study with ``engine``; writes tables, manifest; returns wall time [s].

    ``progress`` (optional) is called with the simulated time reached [s], about once
    per market interval (``runner.progress.Progress`` draws it).
    Raises FederationError (manifest written with status failed) on failure.
    """
    from runner.engine import EngineTimes, run_inprocess

    t0 = time.perf_counter()
    if engine == "inprocess":
        times = EngineTimes()
        try:
            write_tables(study.run_dir, run_inprocess(study, times, progress=progress))
        except Exception as e:
            write_manifest(study, engine, "failed", time.perf_counter() - t0, reason=repr(e))
            raise
        wall = time.perf_counter() - t0
        write_manifest(study, engine, "ok", wall,
                       extra={"engine_seconds": {k: round(v, 3) for k, v in times.seconds.items()}})
        return wall
    fed = Federation.build(study)
    fed.write_runner_json()
    try:
        fed.run(study.cfg.federation.timeout_s, progress=progress)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e).splitlines()[0]
        write_manifest(study, engine, "failed", time.perf_counter() - t0, reason=reason,
                       federates=[p.record() for p in fed.procs], extra={"broker_port": fed.port})
        raise
    wall = time.perf_counter() - t0
    write_manifest(study, engine, "ok", wall, federates=[p.record() for p in fed.procs],
                   extra={"broker_port": fed.port})
    return wall
