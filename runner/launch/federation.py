"""The HELICS federation of one run on this host: the broker and the federate
processes (:class:`Federation`): built from the study, started, supervised until they
finish (exit codes, ``federation.timeout_s``, hangs, across hosts the broker and the
other hosts joining), stopped on Ctrl-C / SIGTERM (``STOP_GRACE_S``) and killed on any
failure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federates.common import keys
from federates.common.config import HELICS_ZMQ_PORT, REPO_ROOT
from federates.common.errors import ConfigError, FederationError, Problem
from federates.common.study import Study
from runner import interrupt
from runner.launch.hang import HEARTBEAT_ENV, HangWatch, _fmt_s
from runner.launch.prepare import free_port_block
from runner.launch.processes import Proc, helics_bin, preimport_federates, wait_for_exit

#: HELICS's own profile of the federates (``federation.helics_profiler``), in logs/
HELICS_PROFILE_FILE = "helics_profile.txt"

#: after Ctrl-C / SIGTERM, how long [s] the federates have to close their tables and leave
#: the federation before they are killed (Federation.stop)
STOP_GRACE_S = 3.0
INTERFACE_ENV = "TECOSIM_LOCAL_INTERFACE"


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """``os.environ`` with ``env`` set meanwhile (children started inherit it), then as before."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- a federation across hosts -------------------------------------------------------
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
        from runner.progress import PROGRESS_FILE

        fc = self.study.cfg.federation
        (self.study.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # of an earlier run in this folder
        logs = self.study.run_dir / "logs"
        watch = HangWatch(logs, [p.name for p in self.procs if p.name != "broker"],
                          hang_timeout_s or fc.hang_timeout_s)
        watch.clear()
        with interrupt.deferred():  # a stop signal is raised by interrupt.check() (see runner.interrupt)
            try:
                self._start(logs)
                self._supervise(watch, timeout_s, poll_s, progress)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM (interrupt.Interrupted)
                # before executing mode no federate has a table to close: no grace then
                executing = any(b is not None for b in watch.read().values())
                self.stop(STOP_GRACE_S if executing else 0.0)
                raise
            finally:
                self.kill_all()

    def _start(self, logs: Path) -> None:
        """Start the broker and the federates (across hosts, once the broker listens),
        with the heartbeat folder and this host's interface in their environment."""
        if not self.broker_here:
            wait_for_broker(self.host, self.port, self.study.cfg.federation.connect_timeout_s)
        if any(p.fork for p in self.procs):
            preimport_federates()
        interrupt.check()
        env = {HEARTBEAT_ENV: str(logs), **self.env}  # inherited by the federates (federates.common.door)
        with _environ(env):
            for p in self.procs:
                p.start(REPO_ROOT)
                interrupt.check()

    def _supervise(self, watch: HangWatch, timeout_s: float, poll_s: float,
                   progress: Callable[[float], None] | None) -> None:
        """Poll every ``poll_s`` [s] until every federate exited with 0 (and then the
        broker); a FederationError on the first failure: a process exiting with another
        code, the other hosts' federates not joining, ``timeout_s``, a hang."""
        from runner.progress import read_progress_file

        deadline = time.monotonic() + timeout_s
        joined_since: float | None = None
        reached_s: float | None = None
        while True:
            interrupt.check()
            self._check_exits(watch)
            if self._finished(poll_s):
                return
            joined_since = self._check_joined(watch, joined_since)
            if time.monotonic() > deadline:
                raise self._timed_out(watch, timeout_s)
            self._check_hung(watch)
            if progress is not None:
                t_s = read_progress_file(self.study.run_dir)
                if t_s is not None and t_s != reached_s:
                    reached_s = t_s
                    progress(t_s)
            wait_for_exit([p for p in self.procs if p.name != "broker"], poll_s)

    def _check_exits(self, watch: HangWatch) -> None:
        """FederationError for the first process that exited with a code other than 0."""
        for p in self.procs:
            code = p.poll()
            if code not in (None, 0):
                raise FederationError(p.name, f"exited with code {code}{self._when(watch, p.name)}",
                                      {p.name: p.tail()})

    def _finished(self, poll_s: float) -> bool:
        """Whether every federate exited with 0; then the broker has 15 s to exit too
        (FederationError when it does not)."""
        if not all(p.poll() == 0 for p in self.procs if p.name != "broker"):
            return False
        broker = next((p for p in self.procs if p.name == "broker"), None)
        end = time.monotonic() + 15
        while broker is not None and broker.poll() is None and time.monotonic() < end:
            interrupt.check()
            wait_for_exit([broker], poll_s)
        if broker is not None and broker.poll() is None:
            raise FederationError("broker", "did not exit after all federates finished",
                                  {"broker": broker.tail()})
        return True

    def _check_joined(self, watch: HangWatch, joined_since: float | None) -> float | None:
        """Across hosts: when every local federate has registered and none executes yet
        (``joined_since``, returned), the other hosts' federates have
        ``federation.connect_timeout_s`` to join (FederationError naming them); -1 once
        the federation executes."""
        fc = self.study.cfg.federation
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
        return joined_since

    def _timed_out(self, watch: HangWatch, timeout_s: float) -> FederationError:
        """The error of a federation still running after ``timeout_s``, naming what runs."""
        running = [p for p in self.procs if p.name != "broker" and p.poll() is None]
        return FederationError(", ".join(p.name for p in running),
                               f"still running after timeout_s={timeout_s:g} s"
                               f"{self._when(watch, running[0].name if running else '')}",
                               {p.name: p.tail(8) for p in running})

    def _check_hung(self, watch: HangWatch) -> None:
        """The hang ``watch`` found, raised; across hosts a hung broker may also be a
        federate of another host."""
        hung = watch.check(self.procs, time.monotonic())
        if hung is not None and self.across_hosts and hung.federate == "broker":
            others = [n for n in self.names if n not in self.local]
            raise FederationError(hung.federate + (f" or {', '.join(others)} (another host)" if others
                                                   else " (another host)"), hung.reason, hung.log_tails)
        if hung is not None:
            raise hung

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
