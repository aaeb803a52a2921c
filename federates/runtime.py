"""What every federate process and the in-process engine share: the study they run.

A run folder holds ``config.resolved.yaml`` and ``sites.json`` (where each prosumer
connects), written by the runner before anything starts. It may also hold ``distances_km.npy``
(the customers' electrical distances [km], see ``runner.launch.prepare_run``).
``Study.load(run_dir)`` reads them back; ``write_tables`` writes a role's tables as Parquet into
``results/``. No HELICS here.

Above the domain packages and below the federate doors and the runner: the study as
the roles are built from (each role's ``from_study``), and the plumbing every federate
process shares (:func:`federate_main`, stopping, watching the runner).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from federates.common.config import StudyFile, feeder_master, validate
from federates.common.grid import CustomerSite
from federates.feeder.sensitivity import SENSITIVITIES_FILE, Sensitivities

CONFIG_FILE = "config.resolved.yaml"
SITES_FILE = "sites.json"
DISTANCES_FILE = "distances_km.npy"
V_BASE_FILE = "v_base_v.npy"
RESULTS_DIR = "results"
PROGRESS_FILE = "progress"
"""``<run>/progress``: the simulated time [s] the feeder federate has reached (text)."""


@dataclass(frozen=True)
class Study:
    """A validated config, the customer sites and the feeder master file.

    ``distance_km``: n x n electrical distances between the customers along the feeder
    [km], in site order, or None when the run folder has no ``distances_km.npy``.
    """

    cfg: StudyFile
    sites: list[CustomerSite]
    master: Path
    run_dir: Path
    distance_km: np.ndarray | None = None

    @classmethod
    def load(cls, run_dir: Path) -> Study:
        run_dir = Path(run_dir)
        raw = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
        cfg = validate(raw, base_dir=run_dir, source=str(run_dir / CONFIG_FILE))
        sites = [CustomerSite(**s) for s in json.loads((run_dir / SITES_FILE).read_text())]
        distance_km = None
        if (run_dir / DISTANCES_FILE).is_file():
            distance_km = np.load(run_dir / DISTANCES_FILE)
            if distance_km.shape != (len(sites), len(sites)):
                raise ValueError(
                    f"{run_dir / DISTANCES_FILE}: shape {distance_km.shape} does not match "
                    f"{len(sites)} customer sites"
                )
        return cls(cfg=cfg, sites=sites, master=feeder_master(cfg, run_dir), run_dir=run_dir,
                   distance_km=distance_km)

    def sensitivities(self):
        """The DSO's linear model of the feeder (``sensitivities.npz``, written by
        prepare_run when curtailment or network-aware clearing needs it)."""
        path = self.run_dir / SENSITIVITIES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sensitivities in this run folder")
        sens = Sensitivities.load(path)
        if sens.participants != self.participants:
            raise ValueError(f"{path}: customers do not match {SITES_FILE}")
        return sens

    @property
    def v_base_v(self) -> np.ndarray:
        """Nominal L-N voltage of each customer's point [V]: the service secondary with a
        ``secondary`` connection, else the primary bus's base (``v_base_v.npy``,
        written by prepare_run)."""
        conn = self.cfg.feeder.customer_connection
        if conn.kind == "secondary":
            return np.full(len(self.sites), conn.secondary_kv * 1000.0)
        return np.load(self.run_dir / V_BASE_FILE)

    @property
    def participants(self) -> list[str]:
        return [s.participant for s in self.sites]

    @property
    def inverter_kva(self) -> np.ndarray:
        """Inverter nameplate [kVA] per customer, from the prosumer specs (registered DER)."""
        from federates.prosumers.agents import make_specs  # on use: it imports pvlib (~1 s)

        return np.array([s.inverter_kva for s in make_specs(self.cfg, self.sites)], dtype=float)


def write_sites(run_dir: Path, sites: list[CustomerSite]) -> None:
    (Path(run_dir) / SITES_FILE).write_text(json.dumps([asdict(s) for s in sites], indent=1))


def write_distances(run_dir: Path, distance_km: np.ndarray) -> None:
    """The customers' electrical distances [km] to ``distances_km.npy``."""
    np.save(Path(run_dir) / DISTANCES_FILE, np.asarray(distance_km, dtype=float))


def write_tables(run_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Each table to ``results/<name>.parquet`` (one owner per table)."""
    out = Path(run_dir) / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(out / f"{name}.parquet", index=False)


def write_progress_file(run_dir: Path, t_s: float) -> None:
    """Write the simulated time ``t_s`` [s] to ``<run_dir>/progress`` (atomic replace,
    so a reader never sees a half-written number; read by ``runner.progress``)."""
    path = Path(run_dir) / PROGRESS_FILE
    tmp = path.with_name(PROGRESS_FILE + ".tmp")
    tmp.write_text(f"{t_s:.17g}\n")
    os.replace(tmp, path)


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
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, _stop_on(name))
    _watch_parent()
    try:
        study = Study.load(args.run_dir)
        with TableWriter(args.run_dir) as sink:
            sink.append(body(study, args.broker_address, log, sink))
    except Stopped:
        log.warning("stopped by SIGTERM after %.2f s; results/ holds this federate's chunks written so far",
                    time.perf_counter() - t0)
        raise
    except Exception:
        log.error("failed:\n%s", traceback.format_exc())
        sys.exit(1)
    log.info("done in %.2f s", time.perf_counter() - t0)
