"""Launching a study: the run folder, then either the HELICS federation (a broker and
five federate processes) or the in-process engine, then the manifest and summary.

Across hosts (``federation.broker_address``): each host runs some of the federates
(``run_study(federates=...)``), one of them the broker too, each in its own run
folder; ``collect_runs`` joins the folders into one complete run.

No orphan processes: every child runs in its own process group; on any failure or
timeout every group is killed before the error propagates. Ctrl-C or SIGTERM
(``runner.interrupt``) first asks the federates to stop (SIGTERM: each closes its tables
with the chunks written so far), then kills what is left after ``STOP_GRACE_S``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
from typing import Any

import numpy as np
import yaml

from federates.common import keys
from federates.common.config import (
    GENERATED_FEEDER_DIR,
    HELICS_ZMQ_PORT,
    REPO_ROOT,
    StudyFile,
    config_sha256,
    feeder_master,
    generated_feeder_parameters,
    resolved_dict,
)
from federates.common.conservation import merge_tables as merge_conservation_tables
from federates.common.errors import ConfigError, FederationError, FeederModelError, Problem
from federates.common.tables import TableWriter
from federates.runtime import (
    CONFIG_FILE,
    V_BASE_FILE,
    Study,
    write_distances,
    write_sites,
)
from runner import interrupt

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
    ``feeder/`` and named by the resolved config (``federates.common.config.generated_feeder_parameters``);
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
                                customers_per_transformer=cfg.feeder.customer_connection.customers_per_transformer,
                                spread=p.placement)
    except ValueError as e:
        raise ConfigError([Problem("prosumers", f"cannot place {p.count} prosumers on {master.name}: {e}",
                                   "a feeder with loads on the requested phases, and with prosumers.placement "
                                   "one_per_load at most one prosumer per load")], "feeder") from None
    if p.pv_penetration_pct is not None and p.pv_penetration_base_kw is None:
        raw["prosumers"]["pv_penetration_base_kw"] = feeder_peak_load_kw(cfg, sites, sum(lp.kw for lp in points))
    said = "".join(f"# {n}\n" for n in cfg._notes)  # what a later source replaced (config.later_wins)
    (run_dir / CONFIG_FILE).write_text(said + yaml.safe_dump(raw, sort_keys=False))
    write_sites(run_dir, sites)
    if cfg.market.topology in ("p2p", "hybrid"):
        feeder.attach_customers(sites, cfg.feeder.customer_connection)
        write_distances(run_dir, feeder.customer_distances_km())
    if cfg.feeder.customer_connection.kind == "direct":  # each meter's base: its node's, 240 V across split-phase legs
        if not feeder.sites:
            feeder.attach_customers(sites, cfg.feeder.customer_connection)
        np.save(run_dir / V_BASE_FILE, feeder.customer_v_base_v())
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
    ``feeder.path`` / ``feeder.model``. So is a file that is no OpenDSS model at all
    (garbage, empty, a Redirect to a missing file: FeederFileError). Other model errors
    (OpenDSS rejects the circuit, the base case does not solve) stay FeederModelError
    (exit 1)."""
    from federates.feeder.opendss import FeederFileError, OpenDSSFeeder

    field_ = "feeder.path" if cfg.feeder.path is not None else "feeder.model"
    try:
        feeder = OpenDSSFeeder(master, source_pu=cfg.feeder.source_pu)
    except FeederFileError as e:
        raise ConfigError([Problem(field_, str(e), "an OpenDSS master .dss file")], "feeder") from None
    try:
        feeder.check_voltage_bases()
    except FeederModelError as e:
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


def port_block_free(base: int, width: int) -> bool:
    """Whether ports base..base+width-1 can all be bound on 127.0.0.1 now (no SO_REUSEADDR:
    a port listened on by anything, e.g. a leftover ``helics_broker``, or in TIME_WAIT is
    not free)."""
    socks = []
    try:
        for port in range(base, base + width):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux; else the IANA range)."""
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 49152, 65535


def free_port_block(width: int = 20, tries: int = 200, rng: random.Random | None = None) -> int:
    """A port P with P..P+width-1 free on loopback (zmq brokers use P and P+1, cores more).

    Blocks are drawn at random (seeded by pid and clock, so concurrent runs draw
    differently) below the kernel's ephemeral range when there is room (20000..32767 on
    a default Linux), so outgoing connections of other processes cannot take a port of
    the block between this check and the cores binding it; a block with any port in
    use (say by a broker left over from a killed run) is skipped."""
    rng = rng or random.Random(os.getpid() ^ time.time_ns())
    eph_lo, eph_hi = _ephemeral_ports()
    below, above = (20000, min(60000, eph_lo)), (max(20000, eph_hi + 1), 60000)
    lo, hi = max(below, above, key=lambda r: r[1] - r[0])
    if hi - lo < 2000:  # the ephemeral range covers it all: draw anywhere
        lo, hi = 20000, 60000
    for _ in range(tries):
        base = rng.randrange(lo, hi - width)
        if port_block_free(base, width):
            return base
    raise FederationError("broker", "found no free port block on 127.0.0.1")


def helics_bin(name: str) -> str:
    """Path of a HELICS executable shipped with the helics wheel: the binary in the
    package's ``install/bin`` (found without importing helics), else the console script
    of that name next to python or on PATH. The console scripts are Python programs
    that import helics and run the binary as a child: 0.3 s more start-up per run
    (BENCHMARKS.md, floor (b) "broker binary started directly") and a second process."""
    import importlib.util

    spec = importlib.util.find_spec("helics")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        binary = Path(folder) / "install" / "bin" / name
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FederationError("broker", f"cannot find {name}; is the helics package installed?")
    return found


class ForkedProcess:
    """A federate forked from this runner (:func:`fork_federate`): the part of
    ``subprocess.Popen`` that :class:`Proc` uses (``pid``, ``poll``, ``wait``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


#: the federate modules a forked federate runs (imported once, by the runner)
FEDERATE_MODULES = tuple(f"federates.{name}.federate" for name in keys.FEDERATES)


def preimport_federates() -> None:
    """Import every federate's module into this runner, so that forked federates find
    their code (numpy, pandas, helics, OpenDSS, pvlib, ...) loaded already. No HELICS
    object exists before the fork: a forked child creates its own core and threads."""
    import importlib

    for module in FEDERATE_MODULES:
        importlib.import_module(module)


def fork_federate(argv: list[str], log: Path, cwd: Path) -> ForkedProcess:
    """Run ``argv`` (``python -m federates.<name>.federate ...``, as an exec'd federate
    would be started) in a child forked from this runner (:func:`fork_main`), the
    module's ``main()`` run from the modules this runner imported
    (:func:`preimport_federates`)."""
    if argv[1:2] != ["-m"] or argv[2] not in FEDERATE_MODULES:
        raise ValueError(f"not a federate command: {argv}")
    module = argv[2]

    def main() -> None:
        import importlib

        sys.argv = [str(cwd / (module.replace(".", "/") + ".py")), *argv[3:]]
        importlib.import_module(module).main()  # what `python -m module` runs

    return fork_main(argv, log, cwd, main)


def die_with_parent(parent_pid: int) -> None:
    """In a child of the runner: have the kernel send it SIGTERM when the runner dies,
    however it dies (SIGKILL, a crash: nothing of the runner's own clean-up runs then),
    so that no federate or broker outlives it (Linux ``prctl(PR_SET_PDEATHSIG)``; a
    federate stops on SIGTERM with its tables closed, ``runtime.federate_main``). A
    runner already gone by now (the race the kernel call cannot see) ends the child at
    once. Elsewhere than Linux: nothing (the runner's supervision still stops them)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(143)


def fork_main(argv: list[str], log: Path, cwd: Path, main: Callable[[], None]) -> ForkedProcess:
    """``main()`` in a child forked from this process, as if ``argv`` had been exec'd:
    a new session (killed as a process group), stdin from /dev/null, stdout and stderr
    to ``log``, working directory ``cwd``, default SIGINT / SIGTERM handling, the
    command line shown as ``argv`` (setproctitle). The child never returns into the
    caller's code: it leaves with ``os._exit`` and ``main``'s exit code (0 when it
    returns, its SystemExit code, 1 on any other exception, whose traceback goes to
    ``log``).

    SIGINT and SIGTERM are blocked across the fork: one sent to the child before it
    has its own handling waits in the kernel and then takes effect, instead of reaching
    the handler the child inherited from the runner (``runner.interrupt``, which only
    records it while the runner supervises a federation: the child would run on)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    parent = os.getpid()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, interrupt.STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(fd)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(fd)
        return ForkedProcess(pid)
    code = 1
    try:  # the child
        os.setsid()
        die_with_parent(parent)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # fds 1, 2 stay open
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(cwd)
        for sig in interrupt.STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop signal sent meanwhile acts now
        import logging

        import setproctitle

        logging.root.handlers.clear()  # the child configures its own log
        setproctitle.setproctitle(" ".join(argv))
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | ForkedProcess | None = None
    t0: float = 0.0
    wall_s: float | None = None
    exit_code: int | None = None
    fork: bool = False  # start by forking this runner (fork_federate) instead of exec

    def start(self, cwd: Path) -> None:
        self.t0 = time.perf_counter()
        if self.fork:
            self.popen = fork_federate(self.argv, self.log, cwd)
            return
        fh = open(self.log, "w")
        parent = os.getpid()
        self.popen = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                      start_new_session=True, stdin=subprocess.DEVNULL,
                                      preexec_fn=lambda: die_with_parent(parent))
        fh.close()

    def poll(self) -> int | None:
        if self.exit_code is None and self.popen is not None:
            code = self.popen.poll()
            if code is not None:
                self.exit_code = code
                self.wall_s = time.perf_counter() - self.t0
        return self.exit_code

    def send(self, sig: int) -> None:
        """``sig`` to the process's group; to the process itself when it has no group
        yet (a forked federate between its fork and its ``setsid``: ``killpg`` finds no
        such group, and the federate would run on as an orphan)."""
        if self.popen is None or self.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` [s] for the process to exit (and reap it)."""
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout=max(0.0, timeout))
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


#: HELICS's own profile of the federates (``federation.helics_profiler``), in logs/
HELICS_PROFILE_FILE = "helics_profile.txt"

# as in federates/common/door.py (not imported here: it imports helics)
HEARTBEAT_ENV = "TECOSIM_HEARTBEAT_DIR"
#: after Ctrl-C / SIGTERM, how long [s] the federates have to close their tables and leave
#: the federation before they are killed (Federation.stop)
STOP_GRACE_S = 3.0
HEARTBEAT_SUFFIX = ".heartbeat"
INTERFACE_ENV = "TECOSIM_LOCAL_INTERFACE"


# ---- a federation across hosts -------------------------------------------------------
def select_federates(cfg: StudyFile, wanted: list[str] | None) -> list[str]:
    """The federates of ``--federates`` (None: all), in federation order.

    ``prosumers`` stands for every prosumer part when ``prosumers.federates`` > 1.
    ConfigError (exit 2) naming the allowed names for an unknown or repeated name, or
    an empty list."""
    names = keys.federate_names(cfg.prosumers.federates)
    if wanted is None:
        return names
    allowed = ", ".join(dict.fromkeys([*names, keys.PROSUMERS]))
    problems, chosen = [], []
    for w in wanted:
        got = keys.prosumers_names(cfg.prosumers.federates) if w == keys.PROSUMERS else [w]
        if got[0] not in names:
            problems.append(Problem("--federates", f"unknown federate {w!r}", allowed))
        elif any(g in chosen for g in got):
            problems.append(Problem("--federates", f"{w!r} is listed twice", "each federate once"))
        else:
            chosen += got
    if not wanted:
        problems.append(Problem("--federates", "names no federate", allowed))
    if problems:
        raise ConfigError(problems, "arguments")
    return [n for n in names if n in chosen]


def resolve_host(host: str) -> str:
    """The IPv4 address of ``host`` (an address stays as is)."""
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise FederationError("broker", f"cannot resolve the host {host!r} of federation.broker_address: {e}") from None


def source_address(ip: str, port: int) -> str:
    """This host's address on the route to ``ip`` (what the broker reaches this host's
    federates at: HELICS's zmq cores listen for the broker on it). No packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((ip, port))
            return s.getsockname()[0]
        except OSError as e:
            raise FederationError("broker", f"no route to the broker at tcp://{ip}:{port}: {e}") from None


def broker_listening(ip: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``ip:port`` now."""
    try:
        with socket.create_connection((ip, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_broker(ip: str, port: int, timeout_s: float, poll_s: float = 0.5) -> None:
    """Return once the broker at ``ip:port`` accepts connections; FederationError naming
    its address after ``timeout_s`` [s] (``federation.connect_timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not broker_listening(ip, port, timeout_s=min(1.0, timeout_s)):
        interrupt.check()
        if time.monotonic() >= deadline:
            raise FederationError("broker", f"no broker at tcp://{ip}:{port}: nothing accepted a connection "
                                  f"within federation.connect_timeout_s={timeout_s:g} s (start the broker host's "
                                  f"`tecosim run ... --broker` first, and check federation.broker_address and "
                                  f"that the port is open)")
        time.sleep(poll_s)


def _fmt_s(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


def _stopped(pid: int | None) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, a debugger), from /proc (Linux)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("T", "t")


class HangWatch:
    """Finds a hung federation from the federates' heartbeats (``federates.common.door``).

    Each federate's ``<run>/logs/<name>.heartbeat`` says whether it was granted a time
    (``grnt``, computing), waits in a time request (``reqt``) or closed (``done``). When no
    heartbeat has changed for ``timeout_s`` while some federate is still open, the
    federation is hung. The culprit is the federate that was granted a time and never
    requested again (the others sit in a request waiting for it); when every open
    federate waits in a request, it is a stopped process among them and the broker, else
    the broker. The clock starts with the first heartbeat (the federates entering
    executing mode), so a slow start is left to ``federation.timeout_s``.
    """

    def __init__(self, logs: Path, names: list[str], timeout_s: float) -> None:
        self.paths = {n: logs / f"{n}{HEARTBEAT_SUFFIX}" for n in names}
        self.timeout_s = timeout_s
        self._seen: dict | None = None
        self._since = 0.0

    def clear(self) -> None:
        """Remove heartbeats of an earlier run in this folder."""
        for path in self.paths.values():
            path.unlink(missing_ok=True)

    def read(self) -> dict[str, tuple[str, float, float] | None]:
        """name -> (state, requested [s], granted [s]), None without a (complete) heartbeat."""
        out: dict[str, tuple[str, float, float] | None] = {}
        for name, path in self.paths.items():
            try:
                state, req, granted = path.read_text().split()
                out[name] = (state, float(req), float(granted))
            except (OSError, ValueError):
                out[name] = None
        return out

    def check(self, procs: list[Proc], now: float) -> FederationError | None:
        """A FederationError naming the hung process, or None while time moves."""
        beats = self.read()
        if all(b is None for b in beats.values()):
            return None  # not executing yet
        if beats != self._seen:
            self._seen, self._since = beats, now
            return None
        stalled_s = now - self._since
        if stalled_s < self.timeout_s:
            return None
        open_ = [p for p in procs if p.name in beats and p.poll() is None
                 and (beats[p.name] is None or beats[p.name][0] != "done")]
        if not open_:
            return None  # all closed, finishing up: federation.timeout_s covers the rest
        computing = [p for p in open_ if beats[p.name] is None or beats[p.name][0] != "reqt"]
        if computing:
            t = min((beats[p.name] or ("", 0.0, 0.0))[2] for p in computing)
            return FederationError(", ".join(p.name for p in computing),
                                   f"hung at simulated time {_fmt_s(t)} s (no time request for "
                                   f"{stalled_s:.0f} s)", {p.name: p.tail(8) for p in computing})
        broker = [p for p in procs if p.name == "broker"]
        stopped = [p for p in open_ + broker if _stopped(p.popen.pid if p.popen else None)]
        for p in stopped:
            if p.name in beats:
                _, req, granted = beats[p.name]
                return FederationError(p.name, f"hung at simulated time {_fmt_s(granted)} s (process "
                                       f"stopped while requesting {_fmt_s(req)} s; no time grant for "
                                       f"{stalled_s:.0f} s)", {p.name: p.tail(8)})
        t = min(beats[p.name][2] for p in open_)
        waiting = ", ".join(f"{p.name} for {_fmt_s(beats[p.name][1])} s" for p in open_)
        return FederationError("broker", f"hung at simulated time {_fmt_s(t)} s "
                               f"({'process stopped; ' if stopped else ''}no time grant for "
                               f"{stalled_s:.0f} s; waiting: {waiting})",
                               {p.name: p.tail(8) for p in broker})


@dataclass
class Federation:
    """The broker and the federate processes of one run (on this host).

    Across hosts only ``local`` of the federates ``names`` run here, and the broker
    only with ``broker_here``; it is told the total count (``len(names)``)."""

    study: Study
    port: int
    procs: list[Proc] = field(default_factory=list)
    host: str = "127.0.0.1"  # the broker's address
    names: list[str] = field(default_factory=list)  # every federate of the run
    local: list[str] = field(default_factory=list)  # the federates started here
    broker_here: bool = True
    env: dict[str, str] = field(default_factory=dict)  # for the federates (INTERFACE_ENV)

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def across_hosts(self) -> bool:
        """Some federates run elsewhere (or the broker does)."""
        return self.local != self.names or not self.broker_here

    def host_record(self) -> dict[str, Any]:
        """The manifest's ``host``: this host's part of a federation across hosts."""
        return {"name": socket.gethostname(), "broker_address": self.address, "broker_here": self.broker_here,
                "federates_here": list(self.local), "federates": list(self.names),
                "complete": self.local == self.names}

    @classmethod
    def build(cls, study: Study, federates: list[str] | None = None, broker_here: bool = True) -> Federation:
        """``federates`` (None: all) run here; the broker too with ``broker_here``.

        Without ``federation.broker_address`` the broker listens on 127.0.0.1
        (``broker_port`` or a free port). With it, on ``broker_interface`` (default
        0.0.0.0) at its port, and every federate's zmq core listens on this host's
        address on the route to the broker (``source_address``; the broker connects
        back to it)."""
        cfg = study.cfg
        fc = cfg.federation
        parts = cfg.prosumers.federates
        names = keys.federate_names(parts)
        local = [n for n in names if federates is None or n in federates]
        if fc.broker_address is None:
            if local != names or not broker_here:
                raise ConfigError([Problem("federation.broker_address", "is null: the broker listens on "
                                           "127.0.0.1 only, so every federate and the broker run on this host",
                                           "HOST[:PORT] of the broker host, to run --federates / without --broker")],
                                  "arguments")
            port, host, listen, env = fc.broker_port or free_port_block(), "127.0.0.1", "127.0.0.1", {}
        else:
            port = fc.broker_tcp_port or HELICS_ZMQ_PORT
            host = resolve_host(fc.broker_host or "")
            listen = fc.broker_interface or "0.0.0.0"
            env = {INTERFACE_ENV: source_address(host, port)}
        fed = cls(study, port, host=host, names=names, local=local, broker_here=broker_here, env=env)
        logs = study.run_dir / "logs"
        address = fed.address
        if broker_here:
            fed.procs.append(Proc("broker", [
                helics_bin("helics_broker"), "-f", str(len(names)), "--coretype=zmq",
                f"--local_interface=tcp://{listen}", f"--port={port}", f"--name=tecosim_broker_{port}",
                "--loglevel=warning", "--timeout=60s",
                *([f"--profiler={logs / HELICS_PROFILE_FILE}"] if fc.helics_profiler else []),
            ], logs / "broker.log"))
        for name in local:
            part = name.removeprefix(f"{keys.PROSUMERS}_")
            module = keys.PROSUMERS if part != name else name
            fed.procs.append(Proc(name, [
                sys.executable, "-m", f"federates.{module}.federate",
                "--run-dir", str(study.run_dir), "--broker-address", address,
                *(["--part", f"{part}/{parts}"] if module != name else []),
            ], logs / f"{name}.log", fork=fc.launch == "fork"))
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
            progress: Callable[[float], None] | None = None, hang_timeout_s: float | None = None) -> None:
        """Start everything, wait, and on any failure kill everything and raise.

        ``progress`` (optional) is called with the simulated time [s] the feeder
        federate writes to ``<run>/progress`` (once per market interval), when it changes.
        A federation whose simulated time stops for ``hang_timeout_s`` (default
        ``federation.hang_timeout_s``) is hung (``HangWatch`` names the culprit).

        Across hosts, a host without the broker first waits (``federation.connect_timeout_s``)
        for the broker to accept connections, and a host whose federates have all joined
        waits as long for the other hosts' federates (their first heartbeat: entering
        executing mode needs every federate of the run).
        """
        from runner.progress import PROGRESS_FILE, read_progress_file

        reached_s: float | None = None
        fc = self.study.cfg.federation
        (self.study.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # of an earlier run in this folder
        logs = self.study.run_dir / "logs"
        watch = HangWatch(logs, [p.name for p in self.procs if p.name != "broker"],
                          hang_timeout_s or fc.hang_timeout_s)
        watch.clear()
        joined_since: float | None = None
        with interrupt.deferred():  # a stop signal is raised by interrupt.check() (see runner.interrupt)
            try:
                if not self.broker_here:
                    wait_for_broker(self.host, self.port, fc.connect_timeout_s)
                if any(p.fork for p in self.procs):
                    preimport_federates()
                interrupt.check()
                env = {HEARTBEAT_ENV: str(logs), **self.env}  # inherited by the federates (federates.common.door)
                before = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    for p in self.procs:
                        p.start(REPO_ROOT)
                        interrupt.check()
                finally:
                    for k, v in before.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                deadline = time.monotonic() + timeout_s
                while True:
                    interrupt.check()
                    federates = [p for p in self.procs if p.name != "broker"]
                    for p in self.procs:
                        code = p.poll()
                        if code not in (None, 0):
                            raise FederationError(p.name, f"exited with code {code}{self._when(watch, p.name)}",
                                                  {p.name: p.tail()})
                    if all(p.poll() == 0 for p in federates):
                        broker = next((p for p in self.procs if p.name == "broker"), None)
                        end = time.monotonic() + 15
                        while broker is not None and broker.poll() is None and time.monotonic() < end:
                            interrupt.check()
                            time.sleep(poll_s)
                        if broker is not None and broker.poll() is None:
                            raise FederationError("broker", "did not exit after all federates finished",
                                                  {"broker": broker.tail()})
                        return
                    if self.across_hosts and joined_since is None and self.local != self.names \
                            and all(path.exists() for path in watch.paths.values()) \
                            and all(b is None for b in watch.read().values()):
                        joined_since = time.monotonic()  # every local federate registered, none executing
                    if joined_since is not None and any(b is not None for b in watch.read().values()):
                        joined_since = -1.0  # executing: the other hosts' federates joined
                    if joined_since is not None and joined_since >= 0 \
                            and time.monotonic() - joined_since > fc.connect_timeout_s:
                        others = [n for n in self.names if n not in self.local]
                        raise FederationError(
                            ", ".join(others), f"did not join the broker at {self.address} within "
                            f"federation.connect_timeout_s={fc.connect_timeout_s:g} s after this host's federates "
                            f"({', '.join(self.local)}) had (start the other hosts' `tecosim run ... --federates "
                            f"{','.join(others)}`)",
                            {p.name: p.tail(8) for p in self.procs if p.name == "broker"})
                    if time.monotonic() > deadline:
                        running = [p for p in federates if p.poll() is None]
                        raise FederationError(", ".join(p.name for p in running),
                                              f"still running after timeout_s={timeout_s:g} s"
                                              f"{self._when(watch, running[0].name if running else '')}",
                                              {p.name: p.tail(8) for p in running})
                    hung = watch.check(self.procs, time.monotonic())
                    if hung is not None and self.across_hosts and hung.federate == "broker":
                        others = [n for n in self.names if n not in self.local]
                        raise FederationError(hung.federate + (f" or {', '.join(others)} (another host)" if others
                                                               else " (another host)"), hung.reason, hung.log_tails)
                    if hung is not None:
                        raise hung
                    if progress is not None:
                        t_s = read_progress_file(self.study.run_dir)
                        if t_s is not None and t_s != reached_s:
                            reached_s = t_s
                            progress(t_s)
                    time.sleep(poll_s)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM (interrupt.Interrupted)
                # before executing mode no federate has a table to close: no grace then
                executing = any(b is not None for b in watch.read().values())
                self.stop(STOP_GRACE_S if executing else 0.0)
                raise
            finally:
                self.kill_all()

    @staticmethod
    def _when(watch: HangWatch, name: str) -> str:
        """`` at simulated time T s`` from ``name``'s heartbeat (the last time it was
        granted), or that it never entered executing mode."""
        beat = watch.read().get(name)
        if beat is None:
            return " before entering executing mode (simulated time 0 s)"
        return f" at simulated time {_fmt_s(beat[2])} s"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the federation asked to stop (Ctrl-C, SIGTERM): SIGTERM every federate
        (each closes its tables with the chunks written so far and leaves the federation,
        ``federates.runtime.federate_main``), wait up to ``grace_s`` [s] for them,
        then kill what is left, the broker included (:meth:`kill_all`). A federate
        blocked in a long call (loading a large feeder, waiting in HELICS for a
        federate that is gone) is killed at the end of the grace time; a second stop
        signal ends the wait at once."""
        federates = [p for p in self.procs if p.name != "broker" and p.popen is not None]  # started
        for p in federates:
            p.send(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and interrupt.pending() is None \
                and any(p.poll() is None for p in federates):
            time.sleep(0.05)
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every process group left, then wait (10 s at most) until each has exited."""
        live = [p for p in reversed(self.procs) if p.popen is not None and p.poll() is None]
        for p in live:
            p.send(signal.SIGKILL)
        deadline = time.monotonic() + 10
        for p in live:
            p.wait(deadline - time.monotonic())


def merge_part_tables(results: Path, parts: int) -> None:
    """The prosumer parts' tables (``<table>.part<i>.parquet``) into one ``<table>.parquet``
    each, in site order, as one prosumers federate writes them; the parts are removed.

    ``profiles`` has a row per step and participant (participants within a step): the
    parts are concatenated and stably sorted by step. Every part drained at the same
    market times (federates.common.tables), so row group j of every part holds the
    same steps: the merge goes one row group at a time (memory bounded by a chunk)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from federates.common.tables import TableWriter

    if parts == 1:
        return
    with TableWriter(results.parent) as writer:
        for table in ("prosumers", "profiles"):
            files = [pq.ParquetFile(results / f"{table}.part{i}.parquet") for i in range(parts)]
            groups = {f.num_row_groups for f in files}
            pieces = ([[f.read_row_group(j) for f in files] for j in range(groups.pop())] if len(groups) == 1
                      else [[f.read() for f in files]])
            for piece in pieces:
                df = pd.concat([t.to_pandas() for t in piece], ignore_index=True)
                if table == "profiles":
                    df = df.sort_values("step", kind="stable", ignore_index=True)
                writer.append({table: df})
            for f in files:
                f.close()
    for table in ("prosumers", "profiles"):
        for i in range(parts):
            (results / f"{table}.part{i}.parquet").unlink()


def git_dirty() -> bool | None:
    """Whether tecosim's working tree differs from ``git_commit`` (then the commit alone
    does not reproduce the code); None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def feeder_record(study: Study) -> dict[str, Any]:
    """The model a run used: its bundled name (or null), the absolute path of the
    OpenDSS master file and that file's sha256 (files it redirects to are not hashed)."""
    cfg = study.cfg
    out: dict[str, Any] = {"model": cfg.feeder.model, "master": None, "master_sha256": None}
    try:
        master = feeder_master(cfg, study.run_dir)  # a relative feeder.path is relative to the run folder
        out.update(master=str(master), master_sha256=_sha256_file(master))
    except (OSError, ValueError) as e:
        out["error"] = str(e)
    return out


#: the command line recorded in manifests: ``tecosim`` and the arguments ``runner.cli.main``
#: was given (set there; also right when main() is called from Python, where sys.argv
#: is the caller's); empty: sys.argv
COMMAND_LINE: list[str] = []


def parquet_complete(path: Path) -> bool:
    """Whether ``path`` ends as a closed Parquet file does (its footer: the ``PAR1`` magic
    after the metadata). A writer killed mid-run leaves the row groups without it, and
    no reader opens the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            return head == b"PAR1" and f.read(4) == b"PAR1"
    except OSError:  # shorter than 4 bytes, gone
        return False


def write_manifest(study: Study, engine: str, status: str, wall_s: float, *, reason: str = "",
                   federates: list[dict] | None = None, extra: dict | None = None) -> Path:
    """``<run>/manifest.json``: what ran, how it ended, and what a rerun needs: the
    resolved config (``config_file``, every default and ``--set`` applied; its
    ``config_sha256``), the seed, the engine, tecosim's git commit (and whether the
    working tree differed from it), the package and Python versions, the feeder master
    file and its sha256, the command line and the ``rerun`` command."""
    cfg = study.cfg
    manifest = {
        "study": cfg.study.name,
        "engine": engine,
        "status": status,
        "reason": reason,
        "seed": cfg.study.seed,
        "config_file": CONFIG_FILE,
        "config_sha256": config_sha256(cfg),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "versions": versions(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "command_line": list(COMMAND_LINE or sys.argv),
        "feeder": feeder_record(study),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 3),
        "federates": federates or [],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rerun": f"tecosim run {study.run_dir / CONFIG_FILE} --engine {engine}",
    }
    manifest.update(extra or {})
    if status == "failed":  # the results of a failed run are whatever its roles wrote before it stopped
        tables = sorted((study.run_dir / "results").glob("*.parquet"))
        manifest["results_written"] = [p.stem for p in tables if parquet_complete(p)]
        # a table whose writer was killed before closing it: its chunks are there, its footer is not
        manifest["results_incomplete"] = [p.stem for p in tables if not parquet_complete(p)]
    path = study.run_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def run_study(study: Study, engine: str, progress: Callable[[float], None] | None = None, *,
              federates: list[str] | None = None, broker_here: bool = True) -> float:
    """Run the study with ``engine``; writes tables, manifest; returns wall time [s].

    ``progress`` (optional) is called with the simulated time reached [s], about once
    per market interval (``runner.progress.Progress`` draws it).
    ``federates`` (None: all) and ``broker_here``: this host's part of a federation
    across hosts (``Federation.build``); the manifest then has a ``host`` record and
    the results hold only these federates' tables (``collect_runs`` joins the hosts).
    Raises FederationError (manifest written with status failed) on failure.
    """
    from runner.engine import EngineTimes, run_inprocess

    t0 = time.perf_counter()
    if engine == "inprocess":
        times = EngineTimes()
        try:
            with TableWriter(study.run_dir) as writer:
                run_inprocess(study, times, progress=progress, sink=writer)
        except BaseException as e:
            merge_conservation_tables(study.run_dir / "results", strict=False)
            write_manifest(study, engine, "failed", time.perf_counter() - t0,
                           reason=_interrupted(e) if isinstance(e, KeyboardInterrupt) else repr(e))
            raise
        merge_conservation_tables(study.run_dir / "results")
        wall = time.perf_counter() - t0
        write_manifest(study, engine, "ok", wall,
                       extra={"engine_seconds": {k: round(v, 3) for k, v in times.seconds.items()}})
        return wall
    try:
        fed = Federation.build(study, federates, broker_here)
    except FederationError as e:
        write_manifest(study, engine, "failed", time.perf_counter() - t0, reason=str(e).splitlines()[0])
        raise
    fed.write_runner_json()
    extra: dict[str, Any] = {"broker_port": fed.port}
    if fed.across_hosts:
        extra["host"] = fed.host_record()
    try:
        fed.run(study.cfg.federation.timeout_s, progress=progress)
    except BaseException as e:
        if fed.local == fed.names:
            merge_conservation_tables(study.run_dir / "results", strict=False)
        reason = _interrupted(e) if isinstance(e, KeyboardInterrupt) else str(e).splitlines()[0]
        write_manifest(study, engine, "failed", time.perf_counter() - t0, reason=reason,
                       federates=[p.record() for p in fed.procs], extra=extra)
        raise
    if fed.local == fed.names:
        merge_part_tables(study.run_dir / "results", study.cfg.prosumers.federates)
        merge_conservation_tables(study.run_dir / "results")
    wall = time.perf_counter() - t0
    write_manifest(study, engine, "ok", wall, federates=[p.record() for p in fed.procs], extra=extra)
    return wall


def _interrupted(e: KeyboardInterrupt) -> str:
    """A manifest's reason for a run stopped by Ctrl-C or SIGTERM."""
    by = interrupt.signal_name(e.signum) if isinstance(e, interrupt.Interrupted) else "SIGINT"
    return f"interrupted ({by})"


#: files of a host's run folder that ``collect_runs`` does not copy (it writes its own)
_NOT_COLLECTED = ("manifest.json", "runner.json", "summary.txt", "report.html", "report/*")


def collect_runs(runs: list[Path], out: Path) -> tuple[Study, float]:
    """The run folders of one federation across hosts (``tecosim run --federates``,
    one per host) joined into the complete run folder ``out``; returns it and the
    longest host wall time [s].

    Checked first (ConfigError, exit 2, naming the folder): each is a finished host
    part (manifest ``status: ok`` with a ``host`` record) of the same config, every
    federate of the run ran on exactly one of them, and a file in several folders (the
    prepared inputs: resolved config, sites, sensitivities, ...) is the same in each
    (sha256). Then every file but the manifest, runner.json, summary and report is
    copied into ``out`` (a new folder), the prosumer parts' tables are merged and the
    manifest lists every host (``hosts``) and federate (with its ``host``)."""
    runs = [Path(r) for r in runs]
    out = Path(out)
    problems: list[Problem] = []
    manifests: dict[Path, dict] = {}
    for r in runs:
        try:
            m = json.loads((r / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            problems.append(Problem(f"RUN {r}", f"no readable manifest.json ({e})",
                                    "the run folder of one host's `tecosim run --federates ...`"))
            continue
        if not isinstance(m.get("host"), dict):
            problems.append(Problem(f"RUN {r}", "is not one host's part of a federation across hosts "
                                    "(its manifest has no host record)",
                                    "the run folder of one host's `tecosim run --federates ...`"))
        elif m.get("status") != "ok":
            problems.append(Problem(f"RUN {r}", f"this host's part failed: {m.get('reason', '')}",
                                    "a host part with manifest status ok"))
        else:
            manifests[r] = m
    if len(set(map(str, (r.resolve() for r in runs)))) != len(runs):
        problems.append(Problem("RUN", "a folder is listed twice", "each host's folder once"))
    if problems:
        raise ConfigError(problems, "arguments")
    first = manifests[runs[0]]
    names = first["host"]["federates"]
    owner: dict[str, Path] = {}
    for r, m in manifests.items():
        if m["config_sha256"] != first["config_sha256"] or m["host"]["federates"] != names:
            problems.append(Problem(f"RUN {r}", f"ran another config than {runs[0]} (config_sha256 differs)",
                                    "the host parts of one run: the same config and --set on every host"))
        for n in m["host"]["federates_here"]:
            if n in owner:
                problems.append(Problem(f"RUN {r}", f"federate {n} also ran in {owner[n]}", "each federate once"))
            owner.setdefault(n, r)
    missing = [n for n in names if n not in owner]
    if missing:
        problems.append(Problem("RUN", f"no folder holds the federates {', '.join(missing)}",
                                "the folders of every host, together running " + ", ".join(names)))
    if sum(bool(m["host"]["broker_here"]) for m in manifests.values()) != 1:
        problems.append(Problem("RUN", "not exactly one folder is the broker host's (--broker)",
                                "one broker host"))
    files: dict[str, list[Path]] = {}
    for r in runs:
        for f in sorted(x for x in r.rglob("*") if x.is_file()):
            rel = f.relative_to(r).as_posix()
            if not any(Path(rel).match(pat) and (rel.count("/") == pat.count("/")) for pat in _NOT_COLLECTED):
                files.setdefault(rel, []).append(r)
    for rel, where in files.items():
        if len({_sha256_file(r / rel) for r in where}) > 1:
            problems.append(Problem(f"RUN {where[1]}", f"{rel} differs from that of {where[0]}",
                                    "the same prepared inputs on every host (same repo version, config, seed)"))
    if out.exists() and any(out.iterdir()):
        problems.append(Problem("--out", f"{out} is not empty", "a new folder"))
    if problems:
        raise ConfigError(problems, "arguments")
    for rel, where in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(where[0] / rel, out / rel)
    (out / "logs").mkdir(exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    study = Study.load(out)
    merge_part_tables(out / "results", study.cfg.prosumers.federates)
    merge_conservation_tables(out / "results")
    hosts = [{**m["host"], "run_dir": str(r.resolve()), "wall_s": m["wall_s"]} for r, m in manifests.items()]
    federates = [{**f, "host": m["host"]["name"]} for m in manifests.values() for f in m["federates"]]
    wall = max(float(m["wall_s"]) for m in manifests.values())
    write_manifest(study, "federation", "ok", wall, federates=federates,
                   extra={"broker_port": first.get("broker_port"), "hosts": hosts})
    return study, wall
