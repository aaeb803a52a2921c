"""One child process of the runner: a federate or the broker, exec'd or forked from
the runner (``federation.launch``), in its own process group, killed with the runner
(``die_with_parent``); :class:`Proc` starts, signals, polls and reaps it."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from federates.common import keys
from federates.common.errors import FederationError
from runner import interrupt


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


def wait_for_exit(procs: list[Proc], timeout_s: float) -> None:
    """Sleep ``timeout_s`` [s], or less: until one of ``procs`` that runs exits (Linux:
    its pidfd turns readable; the exit is not reaped: ``Proc.poll`` does that).
    Elsewhere, or for a process it cannot watch, a plain sleep. The runner notices a
    federate that finished (or failed) at once instead of at its next poll."""
    fds = []
    try:
        if hasattr(os, "pidfd_open"):
            for p in procs:
                if p.popen is not None and p.exit_code is None:
                    try:
                        fds.append(os.pidfd_open(p.popen.pid))
                    except OSError:  # no pidfd here: that one is seen at the next poll
                        pass
        if fds:
            select.select(fds, [], [], timeout_s)
        else:
            time.sleep(timeout_s)
    finally:
        for fd in fds:
            os.close(fd)


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
