"""``run_study``: one run with either engine (the in-process engine or the HELICS
federation), then its tables merged and its manifest written."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from federates.common.conservation import merge_tables as merge_conservation_tables
from federates.common.errors import FederationError
from federates.common.study import Study
from federates.common.tables import TableWriter
from runner import interrupt
from runner.launch.collect import merge_part_tables
from runner.launch.federation import Federation
from runner.launch.manifest import write_manifest


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
