"""The plumbing every federate process shares: its entry point (:func:`federate_main`:
arguments, logging, the study, its tables), stopping on the study's own rules or on a
signal, and watching the runner. Used by the federate doors only. No HELICS here (the
door is ``federates.common.door``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from federates.common.study import Study


def drain_into(sink, role) -> None:
    """Hand the rows ``role`` recorded since its last drain to ``sink`` (a chunk
    boundary, federates.common.tables)."""
    sink.append(role.drain_tables())


def stop_federate(name: str, log: logging.Logger, sink, error: Exception) -> None:
    """Stop this federate because the study's own rule stopped the run (a power flow
    that did not converge under ``feeder.on_nonconvergence: abort``, a broken live
    conservation check): the error goes to the log, the tables drained so far are
    closed into their files, and the process exits 1 at once, before its HELICS door
    closes, so that the other federates wait for it (instead of failing first for want
    of its values) and the runner names it, with the error in its log's tail."""
    log.error("%s: %s", name, error)
    try:
        sink.close()
    finally:
        logging.shutdown()
        os._exit(1)


class Stopped(SystemExit):
    """The runner asked this federate to stop (SIGTERM: ``runner.launch.Federation.stop``)."""


def _stop_on(name: str) -> Callable:
    def stop(signum, frame) -> None:
        signal.signal(signum, signal.SIG_IGN)  # once: the unwinding that follows is not cut short
        door = sys.modules.get("federates.common.door")  # not imported: no door open
        if door is not None:
            door.abort_all(f"federate {name!r} stopped by {signal.Signals(signum).name}")
        raise Stopped(128 + signum)
    return stop


#: how long a federate whose runner died may take to stop by itself on the SIGTERM the
#: kernel sends it (``runner.launch.die_with_parent``) before it ends at once: the
#: runner's own grace (``runner.launch.STOP_GRACE_S``)
ORPHAN_GRACE_S = 3.0


def _watch_parent(grace_s: float = ORPHAN_GRACE_S, poll_s: float = 0.25) -> None:
    """End this federate ``grace_s`` after its parent (the runner) is gone.

    The kernel sends it SIGTERM when the runner dies (``die_with_parent``), which stops
    it with its tables closed, but only once its main thread is back from a blocking
    HELICS call, and with the runner dead nobody may ever answer that call. A daemon
    thread sees the runner gone (this process re-parented) and, if the federate is still
    there ``grace_s`` later, ends it (exit 143), as the runner's own stop would have
    killed it after its grace."""
    import threading

    parent = os.getppid()
    if parent <= 1:  # started by init or in a container's root: nobody to outlive
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="watch-runner", daemon=True).start()


#: with this set to a folder, every federate runs its body under cProfile and writes
#: ``<folder>/<federate>.prof`` (``python -m pstats``, snakeviz) when it ends
PROFILE_ENV = "TECOSIM_PROFILE_DIR"


def _cpu_s() -> tuple[float, float]:
    """CPU seconds used so far by this process (every thread: HELICS's own included) and
    by its main thread alone (the federate's Python: its role, its door)."""
    return time.process_time(), time.thread_time()


def _profiled(name: str, body: Callable[[], None]) -> Callable[[], None]:
    """``body`` under cProfile when ``TECOSIM_PROFILE_DIR`` is set (:data:`PROFILE_ENV`),
    writing ``<dir>/<name>.prof`` when it returns or raises; ``body`` itself otherwise."""
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return body

    def run() -> None:
        import cProfile

        prof = cProfile.Profile()
        try:
            prof.runcall(body)
        finally:
            Path(folder).mkdir(parents=True, exist_ok=True)
            prof.dump_stats(Path(folder) / f"{name}.prof")
    return run


def _wait_door_closed() -> None:
    """Wait for HELICS's library to be closed (``door.wait_closed``), when a door was open."""
    door = sys.modules.get("federates.common.door")
    if door is not None:
        door.wait_closed()


def federate_main(name: str, body: Callable[..., dict[str, pd.DataFrame]]) -> None:
    """Entry point of a federate process: args, logging, run, write tables, exit code.

    ``body(study, broker_address, log, sink)`` runs the federate, hands the chunks of its
    tables to ``sink`` (a :class:`federates.common.tables.TableWriter` on the run folder)
    as it goes and returns the rest. Exit 0 on success; on any exception the traceback
    goes to the log and the exit code is 1, so the runner can name the federate and
    show the log's tail.

    SIGTERM (the runner stopping on Ctrl-C or its own SIGTERM) raises :class:`Stopped`
    where the federate is (once it is back from a call into OpenDSS or HELICS), after a
    HELICS global error (``door.abort_all``) that stops every other federate in its next
    or current HELICS call, on this host or another, rather than let them run on
    without this one; the tables are closed with the chunks written so far, readable;
    exit 143.

    The last log line gives the wall time, the CPU time of the process and of its main
    thread; with ``TECOSIM_PROFILE_DIR`` set the federate (from loading the study to its
    tables closed) runs under cProfile (:data:`PROFILE_ENV`).
    """
    from federates.common.tables import TableWriter

    ap = argparse.ArgumentParser(prog=f"python -m federates.{name}.federate")
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--broker-address", required=True, help="e.g. tcp://127.0.0.1:23404")
    args = ap.parse_args()
    level = os.environ.get("TECOSIM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(stream=sys.stderr, level=level,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    log = logging.getLogger(name)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    signal.signal(signal.SIGTERM, _stop_on(name))
    _watch_parent()

    def whole() -> None:
        study = Study.load(args.run_dir)
        with TableWriter(args.run_dir) as sink:
            sink.append(body(study, args.broker_address, log, sink))

    try:
        _profiled(name, whole)()
    except Stopped:
        log.warning("stopped by SIGTERM after %.2f s; results/ holds this federate's chunks written so far",
                    time.perf_counter() - t0)
        raise
    except Exception:
        log.error("failed:\n%s", traceback.format_exc())
        sys.exit(1)
    finally:
        _wait_door_closed()
    cpu = [b - a for a, b in zip(cpu0, _cpu_s(), strict=True)]
    log.info("done in %.2f s (CPU %.2f s, of which the main thread %.2f s)", time.perf_counter() - t0, *cpu)
