"""The floors `make bench` sets beside each engine's figures.

* :func:`trace_plan`: one in-process run of the study (its tables written as usual) with
  the roles' message-making calls wrapped to note the byte size of every message the
  federation would send (``federates.common.messages.encode``, as the federates call it)
  and the views the DSO was shown in every step (``runner.engine.EngineTimes.dso_views``): the
  :class:`~benchmarks.noop_federate.Plan` of the no-op federation, and the inputs of the
  physics floor. Not timed.
* :func:`floor_physics`, floor (a): the bare OpenDSS loop on the same model and customers,
  replaying the in-process run's solves (module ``federates.feeder.opendss`` only).
* :func:`floor_helics`, floor (b): the no-op federation (``benchmarks/noop_federate.py``)
  started by ``runner.launch.Federation.run`` (the same broker command, heartbeat,
  time-outs and clean-up as a real run), its federates forked from this process or
  exec'd as ``python benchmarks/noop_federate.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import noop_federate
from benchmarks.helics_profile import FederateProfile, read_profile
from benchmarks.noop_federate import Plan
from federates.common.study import Study
from runner.launch import HELICS_PROFILE_FILE, ForkedProcess, Proc, fork_main

NOOP_SCRIPT = Path(noop_federate.__file__).resolve()


# ---- the plan: message sizes and DSO views of an in-process run -----------------------
@contextlib.contextmanager
def _wrapped(cls, name: str, after):
    """``cls.name`` calls ``after(self, result, *args)`` once it returns (restored on exit)."""
    orig = getattr(cls, name)

    def wrapper(self, *args, **kw):
        out = orig(self, *args, **kw)
        after(self, out, *args, **kw)
        return out

    setattr(cls, name, wrapper)
    try:
        yield
    finally:
        setattr(cls, name, orig)


def trace_plan(study: Study) -> tuple[Plan, list[int], float]:
    """Run ``study`` in process (tables to its run folder) and note what the federation
    would send; returns (the plan, ``EngineTimes.dso_views``, wall time [s] of this run,
    slowed by the noting)."""
    from federates.common.comms import CommsLink
    from federates.common.messages import ViewsDone, encode
    from federates.common.tables import TableWriter
    from federates.controllers.role import ControllersRole
    from federates.feeder.role import FeederRole
    from federates.market.role import MarketRole
    from federates.meters.role import MetersRole
    from federates.prosumers.role import ProsumersRole
    from runner.engine import EngineTimes, run_inprocess

    cfg, tl = study.cfg, study.cfg.timeline
    if cfg.prosumers.federates != 1:
        raise ValueError("the no-op federation has one prosumers federate (prosumers.federates: 1)")
    comms, m = CommsLink.of(cfg.comms), tl.n_intervals
    plan = Plan(duration_s=tl.duration_s, market_interval_s=tl.market_interval_s,
                physics_step_s=tl.physics_step_s, n=len(study.sites), view_size=0,
                replies=[[] for _ in range(tl.n_steps)], **{k: [0] * m for k in (
                    "orders", "confirmations", "market_envelopes", "envelopes", "feeder_envelopes",
                    "grid_constraints", "ami", "interval_energy", "curtailments", "views_done")},
                bids_latency_s=comms.latency_of("bids"), energy_latency_s=comms.latency_of("interval_energy"))

    def size(items, **header) -> int:
        return len(encode(items, **header).encode("utf-8"))

    def bids(self, out, k):  # out: (the orders sent, the deviations)
        plan.orders[k] = size(out[0], kind="orders", interval=k)

    def market_time(self, out, k, orders, energies, notices, envelopes=None, constraints=None, losses=None,
                    deliveries=None):
        # (market.settle_losses' loss_energy and demand response's dr_delivered messages are
        # not in the plan: the bench runs the default study, which has neither)
        if k < m:
            plan.confirmations[k] = size(out[0], kind="confirmations", interval=k)
            if out.inverter_envelopes is not None:
                plan.market_envelopes[k] = size(out.inverter_envelopes, kind="envelopes", interval=k)

    def ami(self, out, k):
        plan.ami[k] = size(out, kind="ami_readings", interval=k)

    def report(self, out, k):
        plan.interval_energy[k] = size(out, kind="interval_energy", interval=k)

    def notices(self, out, k):
        plan.curtailments[k] = size(out, kind="curtailments", interval=k)

    def envelopes(self, out, k):
        plan.envelopes[k] = size(out, kind="envelopes", interval=k)
        plan.feeder_envelopes[k] = plan.envelopes[k] if out else 0

    def constraints(self, out, k):
        plan.grid_constraints[k] = size(out, kind="grid_constraints", interval=k)

    def on_view(self, reply, view):
        plan.replies[view.step].append(size(reply.caps, kind="dso_caps", step=view.step, capped=reply.capped,
                                            quiet=reply.quiet))

    def dso_view(self, view, g, **kw):
        if view is None:
            return
        n = len(view.to_vector())
        if plan.view_size not in (0, n):
            raise RuntimeError(f"the DSO view changed length: {plan.view_size} -> {n}")
        plan.view_size = n

    times = EngineTimes()
    with contextlib.ExitStack() as stack:
        for cls, name, fn in ((ProsumersRole, "bids_sent", bids), (MarketRole, "on_market_time", market_time),
                              (MetersRole, "ami", ami), (MetersRole, "report_sent", report),
                              (FeederRole, "curtailment_notices", notices),
                              (ControllersRole, "envelopes", envelopes),
                              (ControllersRole, "grid_constraints", constraints),
                              (ControllersRole, "on_view", on_view), (FeederRole, "dso_view", dso_view)):
            stack.enter_context(_wrapped(cls, name, fn))
        t0 = time.perf_counter()
        with TableWriter(study.run_dir) as writer:
            run_inprocess(study, times, sink=writer)
        wall = time.perf_counter() - t0
    if plan.views != list(times.dso_views):
        raise RuntimeError("the DSO replies noted differ from EngineTimes.dso_views")
    for k in range(m):
        views = sum(plan.views[g] for g in tl.steps_of_interval(k))
        plan.views_done[k] = size([ViewsDone(interval=k, views=views)])
    return plan, list(times.dso_views), wall


# ---- floor (a): the physics --------------------------------------------------------------
@dataclass
class PhysicsFloor:
    solves: int
    steps: int
    build_s: float  # OpenDSSFeeder + attach_customers (not in the loop)
    loop_s: float  # the whole replay loop
    set_s: float  # set_background_scale + set_customer_powers
    solve_s: float  # solve(controls=...)
    read_s: float  # customer_v_pu (Circuit.AllBusVmag)

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.loop_s / self.steps


def replay_inputs(study: Study, results: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p_kw, q_kvar: steps x customers, final applied values; background multiplier and
    solves per step) of an in-process run's ``voltages`` and ``grid`` tables."""
    import pandas as pd

    n = len(study.sites)
    v = pd.read_parquet(results / "voltages.parquet", columns=["step", "participant", "p_kw", "q_kvar"])
    grid = pd.read_parquet(results / "grid.parquet", columns=["step", "n_solves", "background_mult"])
    steps = grid["step"].to_numpy()
    if not (np.diff(steps) == 1).all() or len(v) != n * len(steps):
        raise ValueError(f"{results}: not one row per step (and customer)")
    if list(v["participant"].iloc[:n]) != study.participants or not (v["step"].to_numpy()[::n] == steps).all():
        raise ValueError(f"{results}: voltages not in step x site order")
    return (v["p_kw"].to_numpy().reshape(-1, n), v["q_kvar"].to_numpy().reshape(-1, n),
            grid["background_mult"].to_numpy(), grid["n_solves"].to_numpy())


def floor_physics(study: Study, results: Path, *, one_solve: bool = False) -> PhysicsFloor:
    """Floor (a): build the run's circuit, then for each physics step set the background
    load's multiplier (``set_background_scale``, a no-op when unchanged) and, for each solve
    the run made in that step (one with ``one_solve``), set every customer's kW and kvar to
    the step's final applied values (``set_customer_powers``: two batch writes, skipped by
    the adapter when nothing changed since the last write), solve (the step's first solve
    with controls off, the others with regulators and capacitors acting, as the feeder
    role does; ``one_solve``: controls on) and read every bus voltage magnitude
    (``customer_v_pu``: one ``Circuit.AllBusVmag``)."""
    from federates.feeder.opendss import OpenDSSFeeder

    cfg = study.cfg
    p, q, bg, n_solves = replay_inputs(study, results)
    if one_solve:
        n_solves = np.ones_like(n_solves)
    model_shape = cfg.feeder.background_load_shape == "model"  # set per hour by the role: not replayed
    t0 = time.perf_counter()
    feeder = OpenDSSFeeder(study.master, source_pu=cfg.feeder.source_pu)
    feeder.attach_customers(study.sites, cfg.feeder.customer_connection)
    build = time.perf_counter() - t0
    set_s = solve_s = read_s = 0.0
    clock = time.perf_counter
    t_loop = clock()
    for g in range(len(n_solves)):
        pg, qg = p[g], q[g]
        for j in range(int(n_solves[g])):
            a = clock()
            if j == 0 and not model_shape:
                feeder.set_background_scale(bg[g])
            feeder.set_customer_powers(pg, qg)
            b = clock()
            feeder.solve(controls=one_solve or j > 0)
            c = clock()
            feeder.customer_v_pu()
            d = clock()
            set_s += b - a
            solve_s += c - b
            read_s += d - c
    loop = clock() - t_loop
    return PhysicsFloor(int(n_solves.sum()), len(n_solves), build, loop, set_s, solve_s, read_s)


# ---- floor (b): the no-op federation -------------------------------------------------------
def _fork_noop(argv: list[str], log: Path, cwd: Path) -> ForkedProcess:
    """``benchmarks/noop_federate.py``'s main in a child forked from this process, as
    ``runner.launch.fork_federate`` starts a real federate (``runner.launch.fork_main``)."""
    return fork_main(argv, log, cwd, lambda: noop_federate.main(argv[2:]))


@dataclass
class NoopProc(Proc):
    """A no-op federate for ``runner.launch.Federation.run``: forked from this process
    (``launch="fork"``) or exec'd (``"exec"``)."""

    launch: str = "fork"

    def start(self, cwd: Path) -> None:
        if self.launch == "fork":
            self.t0 = time.perf_counter()
            self.popen = _fork_noop(self.argv, self.log, cwd)
        else:
            super().start(cwd)


@dataclass
class FederationRun:
    """What a federation run left for the split: wall [s], and per process its start and
    end [s, perf_counter], when its log says it entered executing mode (perf_counter, to
    the log's millisecond) and the HELICS profile (None without the profiler)."""

    wall_s: float
    t_begin: float  # perf_counter when the run was asked for
    starts: dict[str, float]
    ends: dict[str, float | None]
    executing: dict[str, float]
    profile: dict[str, FederateProfile] | None

    @property
    def startup_log(self) -> float | None:
        """Run asked for -> the first federate's ``executing`` log line [s] (to 1 ms)."""
        return min(self.executing.values()) - self.t_begin if self.executing else None


LOG_EXECUTING = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ INFO executing\s*$", re.M)


def executing_from_logs(logs: Path, names: list[str]) -> dict[str, float]:
    """When each federate logged ``executing`` (``Door.enter``, after entering executing
    mode) [s, perf_counter]: the log's local time stamp (1 ms), moved to perf_counter by
    the present offset between the two clocks."""
    offset = time.time() - time.perf_counter()
    out = {}
    for name in names:
        try:
            m = LOG_EXECUTING.search((logs / f"{name}.log").read_text(errors="replace"))
        except OSError:
            continue
        if m:
            stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[name] = stamp - offset
    return out


def broker_script() -> Path:
    """The helics package's ``helics_broker`` console script: a Python program
    (``helics.bin``) that imports helics and runs the broker binary as a child."""
    path = Path(sys.executable).parent / "helics_broker"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def floor_helics(study: Study, plan: Plan, launch: str = "fork", script_broker: bool = False) -> FederationRun:
    """Floor (b): the no-op federation of ``plan`` on ``study``'s federation config
    (``federation.helics_profiler`` decides the profile), started and watched by
    ``Federation.run`` with ``federation.timeout_s``. ``script_broker``: the broker
    started through the ``helics_broker`` console script instead of as the binary
    ``runner.launch.helics_bin`` finds, same arguments."""
    from runner.launch import Federation

    if launch not in ("fork", "exec"):
        raise ValueError(f"launch {launch!r}: fork or exec")
    plan_path = study.run_dir / "noop_plan.json"
    plan.save(plan_path)
    fed = Federation.build(study)
    broker = fed.procs[0]  # as for a real run
    if script_broker:
        broker.argv = [str(broker_script()), *broker.argv[1:]]
    procs: list[Proc] = [broker]
    for p in fed.procs[1:]:
        procs.append(NoopProc(p.name, [sys.executable, str(NOOP_SCRIPT), "--role", p.name, "--plan", str(plan_path),
                                       "--broker-address", fed.address], p.log, launch=launch))
    fed.procs = procs
    t_begin = time.perf_counter()
    fed.run(study.cfg.federation.timeout_s)
    wall = time.perf_counter() - t_begin
    return _run(study, wall, t_begin, procs)


def _run(study: Study, wall: float, t_begin: float, procs: list[Proc]) -> FederationRun:
    names = [p.name for p in procs if p.name != "broker"]
    return FederationRun(wall, t_begin, {p.name: p.t0 for p in procs},
                         {p.name: None if p.wall_s is None else p.t0 + p.wall_s for p in procs},
                         executing_from_logs(study.run_dir / "logs", names), _profile(study))


def _profile(study: Study) -> dict[str, FederateProfile] | None:
    path = study.run_dir / "logs" / HELICS_PROFILE_FILE
    return read_profile(path) if study.cfg.federation.helics_profiler and path.is_file() else None


@contextlib.contextmanager
def watching_procs():
    """The ``runner.launch.Proc`` objects started meanwhile (``Proc.start`` wrapped in this
    process only: the real federation's start and end times, from outside run_study)."""
    started: list[Proc] = []
    orig = Proc.start

    def start(self, cwd):
        started.append(self)
        return orig(self, cwd)

    Proc.start = start
    try:
        yield started
    finally:
        Proc.start = orig


def real_federation(study: Study) -> FederationRun:
    """``run_study(study, "federation")`` with its processes' start and end noted."""
    from runner.launch import run_study

    with watching_procs() as procs:
        t_begin = time.perf_counter()
        wall = run_study(study, "federation")
    return _run(study, wall, t_begin, procs)


def run_subprocess(argv: list[str], timeout_s: float, cwd: Path) -> tuple[int, str]:
    """(exit code, output) of ``argv`` in its own session, killed (the whole group) after
    ``timeout_s``."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, out + f"\n(killed after {timeout_s:g} s)"
    return proc.returncode, out
