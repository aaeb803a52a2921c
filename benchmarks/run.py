"""`make bench`: both engines on the default study, each beside its floor; writes BENCHMARKS.md.

In one run, on one machine, each case under a load monitor (benchmarks/machine.py):

1. a traced in-process run of ``configs/default.yaml`` (not timed): the byte size of every
   message the federation would send and the views the DSO was shown in every step
   (``benchmarks/floors.py`` ``trace_plan``), and the applied powers and solves of every
   step for floor (a);
2. ``--repeat`` rounds of: the in-process engine (``run_study``, manifest ``engine_seconds``),
   the federation with ``federation.helics_profiler: true`` (split per federate by HELICS's
   profile, ``benchmarks/helics_profile.py``), the federation without the profiler (what the
   profiler costs), floor (b) (the no-op federation, ``benchmarks/noop_federate.py``, forked
   as the real federates are) and floor (a) (the bare OpenDSS loop, the run's solves and one
   solve per step);
3. floor (b) once more without the profiler, once exec'd, once with the broker started
   through the ``helics_broker`` console script (what that Python wrapper costs);
4. the federation with K prosumer federates (``--k``) on a study where the prosumers'
   work matters (``--k-prosumers`` on the synthetic feeder, ``--k-duration`` from 11:00;
   ``benchmarks/scale.py`` ``case_config``), and that study in process;
5. ``benchmarks/market.py`` (clearing, a default-day market time, ADMM, the default day's ledger).

The figures are written to BENCHMARKS.md (its sections between ``<!-- scale:begin -->`` and
``<!-- scale:end -->``, written by ``make bench-scale``, and between ``<!-- long:begin -->``
and ``<!-- long:end -->``, written by ``make bench-long``, are kept). Run folders go to
``runs/bench-<UTC stamp>/`` and are deleted unless ``--keep`` or something failed.

    .venv/bin/python benchmarks/run.py [--duration 24h] [--repeat 3] [--k 1,2,4] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import floors, scale  # noqa: E402
from benchmarks.helics_profile import RunSplit, split_run  # noqa: E402
from benchmarks.machine import Load, LoadMonitor, machine  # noqa: E402
from benchmarks.tables import DASH, f, med, pct, ratio, spread, table  # noqa: E402
from federates.common import keys  # noqa: E402
from federates.common.errors import TecosimError  # noqa: E402

CONFIG = REPO / "configs" / "default.yaml"
OUT = REPO / "BENCHMARKS.md"
ROLES = (keys.PROSUMERS, keys.MARKET, keys.FEEDER, keys.METERS, keys.CONTROLLERS)
KEPT = (("<!-- scale:begin -->", "<!-- scale:end -->"),  # sections other benchmarks own
        ("<!-- long:begin -->", "<!-- long:end -->"))
LOAD_LIMIT = 2.0  # load average above which the figures of a case are inflated (2 CPUs)
#: the cases of one round, in their order: (key, label)
ROUND = (
    ("inprocess", "in-process"),
    ("federation", "federation (profiler on)"),
    ("federation_plain", "federation (profiler off)"),
    ("floor_b", "floor (b) (profiler on)"),
    ("floor_b_plain", "floor (b) (profiler off)"),
    ("floor_b_exec", "floor (b) exec'd (profiler on)"),
    ("floor_b_script", "floor (b) with the broker's console script (profiler on)"),
    ("floor_a", "floor (a)"),
)


# ---- one case of each kind ------------------------------------------------------------------
def _prepare(cfg, run_dir: Path):
    from runner.launch import prepare_run

    t0 = time.perf_counter()
    study = prepare_run(cfg, run_dir, config_dir=CONFIG.parent)
    return study, time.perf_counter() - t0


def inprocess(cfg, run_dir: Path) -> dict:
    from runner.launch import run_study

    study, prepare_s = _prepare(cfg, run_dir)
    wall = run_study(study, "inprocess")
    m = json.loads((run_dir / "manifest.json").read_text())
    return {"wall": wall, "prepare": prepare_s, "engine_seconds": m["engine_seconds"], "run_dir": run_dir}


def _split(run: floors.FederationRun) -> RunSplit | None:
    if run.profile is None:
        return None
    return split_run(run.profile, run.wall_s, run.t_begin, run.starts, run.ends)


def federation(cfg, run_dir: Path, study=None) -> dict:
    if study is None:
        study, _ = _prepare(cfg, run_dir)
    run = floors.real_federation(study)
    return {"wall": run.wall_s, "split": _split(run), "startup_log": run.startup_log, "run_dir": run_dir,
            "pending_s": _pending_s(run_dir / "logs" / f"{keys.MARKET}.log")}


def _pending_s(log: Path) -> float | None:
    """The work a federate did while its time requests were pending (``Door.later``),
    from its log's time-loop line."""
    m = re.search(r"of which ([\d.]+) s with a request pending", log.read_text()) if log.is_file() else None
    return None if m is None else float(m.group(1))


def floor_b(cfg, run_dir: Path, plan, launch: str = "fork", script_broker: bool = False) -> dict:
    study, _ = _prepare(cfg, run_dir)
    run = floors.floor_helics(study, plan, launch, script_broker=script_broker)
    return {"wall": run.wall_s, "split": _split(run), "startup_log": run.startup_log}


def floor_a(cfg, run_dir: Path, results: Path) -> dict:
    study, _ = _prepare(cfg, run_dir)
    return {"all": floors.floor_physics(study, results), "one": floors.floor_physics(study, results, one_solve=True)}


def same_tables(a: Path, b: Path) -> tuple[int, list[str]]:
    from runner.run_folder import read_tables

    ta, tb = read_tables(a), read_tables(b)
    differ = sorted(n for n in ta.keys() | tb.keys() if n not in ta or n not in tb or not ta[n].equals(tb[n]))
    return len(ta.keys() | tb.keys()), differ


def k_split(args, bench_dir: Path, measured) -> dict:
    """The federation with K prosumer federates (and in process) on the K study: prepared
    once (K = 1; the others copy that folder with ``prosumers.federates`` set in its
    resolved config: placement and sensitivities do not depend on K)."""
    import yaml

    from federates.common.study import CONFIG_FILE, Study
    from runner.launch import run_study

    case = {"label": "k-split", "prosumers": args.k_prosumers, "n_loads": scale.n_loads_for(args.k_prosumers), "k": 1}
    cfg = scale.case_config(case, args.k_duration, ["federation.helics_profiler=true", "federation.timeout_s=1500"])
    prepared = bench_dir / "k-prepared"
    study, prepare_s = _prepare(cfg, prepared)
    out: dict = {"prepare": prepare_s, "n_steps": cfg.timeline.n_steps, "start": str(cfg.study.start),
                 "duration": args.k_duration, "prosumers": case["prosumers"], "n_loads": case["n_loads"], "runs": {}}

    def copy(label: str, parts: int) -> Study:
        d = bench_dir / label
        shutil.copytree(prepared, d)
        raw = yaml.safe_load((d / CONFIG_FILE).read_text())
        raw["prosumers"]["federates"] = parts
        (d / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
        return Study.load(d)

    for i in range(1, args.k_repeat + 1):
        for k in args.k:
            study = copy(f"k{k}-{i}", k)
            out["runs"].setdefault(k, []).append(
                measured(f"K={k} prosumer federates {i}", lambda s=study: federation(None, s.run_dir, s)))
    if args.k_inprocess:
        study = copy("k-inprocess", 1)
        out["inprocess"] = measured("K study in process", lambda: {"wall": run_study(study, "inprocess")})
    return out


def market(args, bench_dir: Path) -> dict:
    path = bench_dir / "market.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "market.py"), "--repeat", str(args.market_repeat),
            "--ledger-sizes", "40", "--no-admm-reference", "--json", str(path)]
    code, text = floors.run_subprocess(argv, args.market_timeout, REPO)
    if code != 0:
        raise RuntimeError(f"benchmarks/market.py exited {code}: {text.strip().splitlines()[-3:]}")
    return {"results": json.loads(path.read_text()), "command": " ".join(["benchmarks/market.py", *argv[2:-2]])}


# ---- the report -------------------------------------------------------------------------------
def kept_sections() -> str:
    try:
        old = OUT.read_text()
    except OSError:
        return ""
    out = []
    for begin, end in KEPT:
        a, b = old.find(begin), old.find(end)
        if a >= 0 and b > a:
            out.append("\n" + old[a:b + len(end)] + "\n")
    return "".join(out)


def critical_path_s(secs: dict[str, float], books_s: float = 0.0) -> float:
    """In-process role work that the federation cannot overlap [s]: every federate works
    alone at its HELICS times except at report time (k*M + 0.25), where the prosumers bid
    while the meters report (and the feeder and the DSO send their small interval
    messages), and after its market time, where the market keeps its books (settlement,
    ledger blocks; ``books_s``) while the feeder plays the interval:
    feeder + controllers + (market - its books) + max(prosumers, meters)."""
    return (secs[keys.FEEDER] + secs[keys.CONTROLLERS] + secs[keys.MARKET] - books_s
            + max(secs[keys.PROSUMERS], secs[keys.METERS]))


def _busy(splits: list[RunSplit], at_least: int) -> float | None:
    return med([sum(v for m, v in s.busy.items() if m >= at_least) for s in splits])


def fed_rows(splits: list[RunSplit], names: list[str], role_s: dict[str, float] | None) -> list[list[str]]:
    rows = []
    for name in names:
        fs = [s.federates[name] for s in splits if name in s.federates]
        if not fs:
            continue
        row = [name, f(med([x.startup for x in fs])), f(med([x.created for x in fs])), f(med([x.loop for x in fs])),
               f(med([x.inside for x in fs])), f(med([x.outside for x in fs])),
               pct(med([None if not x.loop else (x.outside or 0) / x.loop for x in fs])),
               f"{int(med([x.calls for x in fs]) or 0)}", f(med([x.after for x in fs]))]
        if role_s is not None:
            row.append(f(role_s.get(name)))
        rows.append(row)
    return rows


FED_HEADER = ["federate", "start-up s", "of which to MARKER s", "time loop s", "inside HELICS s",
              "outside (own work) s", "outside % of loop", "time requests", "after close s"]


def busy_rows(splits: list[RunSplit]) -> list[list[str]]:
    levels = sorted({m for s in splits for m in s.busy})
    rows = []
    for m in levels:
        v = med([s.busy.get(m, 0.0) for s in splits])
        share = med([s.busy.get(m, 0.0) / s.loop for s in splits if s.loop])
        what = ("none: every federate waiting inside HELICS" if m == 0 else
                f"{m} federate{'s' if m > 1 else ''} working at once")
        rows.append([what, f(v), pct(share, 1)])
    return rows


def load_rows(loads: list[Load]) -> list[list[str]]:
    rows = []
    for ld in loads:
        flag = "**inflated**" if ld.load_max > LOAD_LIMIT else ""
        rows.append([ld.label, f(ld.wall_s, 1), f(ld.load_start), f(ld.load_max), f(ld.load_end),
                     f(ld.own_cpu_s / ld.wall_s if ld.wall_s else None), f(ld.others_cores), flag])
    return rows


def _get(xs: list[dict], key: str) -> list:
    return [x.get(key) for x in xs]


def _sp(xs: list[dict], attr: str) -> float | None:
    """Median of a RunSplit attribute over the profiled runs of ``xs``."""
    return med([getattr(x["split"], attr) for x in xs if x.get("split") is not None])


def report(R: dict, cfg, args, started: dt.datetime, elapsed_s: float) -> str:
    tl = cfg.timeline
    n_steps = tl.n_steps
    ip, fa = R["inprocess"], R["floor_a"]
    fe, fe0, fb, fb0 = R["federation"], R["federation_plain"], R["floor_b"], R["floor_b_plain"]
    roles = {r: med([x["engine_seconds"].get(r, 0.0) for x in ip]) or 0.0 for r in (*ROLES, "setup")}
    books = med([x["engine_seconds"].get("market_books", 0.0) for x in ip]) or 0.0
    roles[keys.MARKET] += books  # the market federate's whole work: its clearing and its books
    engine_total = sum(roles.values())
    cp = critical_path_s(roles, books)
    ip_wall = med(_get(ip, "wall"))
    fa_all, fa_one = med([x["all"].loop_s for x in fa]), med([x["one"].loop_s for x in fa])
    fe_s = [x["split"] for x in fe if x["split"] is not None]
    fb_s = [x["split"] for x in fb if x["split"] is not None]
    # profiler off: wall, start-up from the logs, the rest
    fe0_wall, fb0_wall = med(_get(fe0, "wall")), med(_get(fb0, "wall"))
    fe0_start, fb0_start = med(_get(fe0, "startup_log")), med(_get(fb0, "startup_log"))
    fe0_rest = med([x["wall"] - x["startup_log"] for x in fe0 if x["startup_log"] is not None])
    fb0_rest = med([x["wall"] - x["startup_log"] for x in fb0 if x["startup_log"] is not None])
    # profiler on: the profile's split
    fe_wall, fb_wall = med(_get(fe, "wall")), med(_get(fb, "wall"))
    fe_start, fe_loop, fe_after = _sp(fe, "startup"), _sp(fe, "loop"), _sp(fe, "after")
    fb_start, fb_loop, fb_after = _sp(fb, "startup"), _sp(fb, "loop"), _sp(fb, "after")
    fe_busy = _busy(fe_s, 1)
    fe_wait, fb_wait = med([s.busy.get(0, 0.0) for s in fe_s]), med([s.busy.get(0, 0.0) for s in fb_s])
    plan = R["plan"]
    eq = R["equal"]
    n = args.repeat

    def ms(x: float | None) -> float | None:
        return None if x is None else 1000 * x / n_steps

    def plus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a + b

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    over = [ld for ld in R["loads"] if ld.load_max > LOAD_LIMIT]
    others = med([ld.others_cores for ld in R["loads"]])
    prof_cost_fe, prof_cost_fb = minus(fe_wall, fe0_wall), minus(fb_wall, fb0_wall)
    noise = max((max(v) - min(v) for v in (_get(fe0, "wall"), _get(fb0, "wall")) if len(v) > 1), default=0.0)
    prof_free = prof_cost_fe is not None and prof_cost_fe <= noise

    out = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`benchmarks/run.py`) on {started:%Y-%m-%d %H:%M} UTC in {elapsed_s / 60:.1f} min; "
        "re-running overwrites this file (except the scale section at the end, `make bench-scale`). Every figure "
        "below was measured in that one run, on the machine below; compare ratios and shares rather than "
        "absolute seconds across machines.",
        "",
        "**Machine load.** " + (
            f"The 1-minute load average exceeded {LOAD_LIMIT:g} (the machine's CPU count) during {len(over)} of "
            f"{len(R['loads'])} cases: **the figures are inflated**. Other jobs used {f(others, 1)} of the 2 CPUs "
            "(median over the cases; /proc/stat busy time minus this benchmark's own); the processes of a case "
            "competed with them for the rest. "
            if over else
            f"The 1-minute load average stayed at or below {LOAD_LIMIT:g} in every case (other jobs: {f(others, 1)} "
            "cores, median). ") + "Per case in [Machine load per case](#machine-load-per-case).",
        "",
        "## Machine",
        "",
        table(["", ""], [[k, v] for k, v in machine()], numeric=False),
        "",
        "## Study",
        "",
        table(["", ""], [
            ["config", f"`{CONFIG.relative_to(REPO)}`" + (f" with `study.duration={args.duration}`"
                                                       if args.duration != "24h" else "")],
            ["duration", f"{tl.duration_s / 3600:g} h: {tl.n_intervals} market intervals of "
                         f"{tl.market_interval_s / 60:g} min, {n_steps} physics steps of {tl.physics_step_s / 60:g} min"],
            ["feeder", f"{cfg.feeder.model or cfg.feeder.path}, {cfg.feeder.customer_connection.kind} connection"],
            ["prosumers", f"{cfg.prosumers.count}"],
            ["market", f"{cfg.market.topology}, {cfg.market.mechanism}"],
            ["controllers", "enabled" if cfg.controllers.enabled else "disabled"],
            ["DSO views", f"{sum(plan.views)} in {sum(1 for r in plan.views if r)} of {n_steps} steps "
                          f"(most in a step: {max(plan.views, default=0)}; reported by exception, "
                          "`federates/common/alarms.py`)"],
            ["power flows", f"{R['solves']} ({R['solves'] / n_steps:.2f} per step)"],
            ["HELICS traffic", f"{plan.n_messages()} messages, {plan.n_bytes() / 1e6:.1f} MB; values: `dso_view` "
                               f"{plan.view_size} doubles per view, `meter_block` "
                               f"{1 + 3 * tl.steps_per_interval * plan.n + plan.n} per interval"],
            ["repeats", f"{n} rounds of: " + ", ".join(label for _, label in ROUND)],
        ], numeric=False),
        "",
        "## The comparison: each engine against its floor",
        "",
        f"Medians over the {n} rounds; *ms/step* divides by the study's {n_steps} physics steps.",
        "",
        "### In-process engine against floor (a), the physics",
        "",
        table(["", "s", "ms/step", "× floor (a)"], [
            ["in-process wall (`run_study`)", f(ip_wall), f(ms(ip_wall)), ratio(ip_wall, fa_all)],
            ["of which the engine (`run_inprocess`: roles and setup)", f(engine_total), f(ms(engine_total)),
             ratio(engine_total, fa_all)],
            ["of which the feeder role (OpenDSS and its bookkeeping)", f(roles[keys.FEEDER]),
             f(ms(roles[keys.FEEDER])), ratio(roles[keys.FEEDER], fa_all)],
            [f"**floor (a)**: bare OpenDSS loop, the run's {R['solves']} solves", f(fa_all, 3), f(ms(fa_all)),
             "1.00×"],
            ["floor (a) with one solve per step", f(fa_one, 3), f(ms(fa_one)), ratio(fa_one, fa_all)],
        ]),
        "",
        f"- Target *in process ≤ 3 s*: {'**reached**' if ip_wall <= 3 else '**not reached**'} ({f(ip_wall)} s). "
        f"Above the physics floor: {f(minus(engine_total, fa_all))} s of role work: "
        + ", ".join(f"{r} {f(roles[r])} s" for r in (*ROLES, "setup"))
        + f"; the feeder role alone is {ratio(roles[keys.FEEDER], fa_all, 1)} floor (a).",
        "",
        "### Federation against floor (b), HELICS",
        "",
        "Without the profiler: wall time and start-up (to the first federate's `executing` log line, 1 ms); "
        "with it: the profile's split.",
        "",
        table(["", "federation s", "floor (b) s", "difference s", "federation / floor (b)"], [
            ["**wall, profiler off**", f(fe0_wall), f(fb0_wall), f(minus(fe0_wall, fb0_wall)), ratio(fe0_wall, fb0_wall)],
            ["start-up (run asked for → first federate executing)", f(fe0_start), f(fb0_start),
             f(minus(fe0_start, fb0_start)), ratio(fe0_start, fb0_start)],
            ["time loop + after", f(fe0_rest), f(fb0_rest), f(minus(fe0_rest, fb0_rest)), ratio(fe0_rest, fb0_rest)],
            ["wall, profiler on", f(fe_wall), f(fb_wall), f(minus(fe_wall, fb_wall)), ratio(fe_wall, fb_wall)],
            ["start-up (to the first EXIT in `executing`)", f(fe_start), f(fb_start), f(minus(fe_start, fb_start)),
             ratio(fe_start, fb_start)],
            ["**time loop** (→ the last federate's closing ENTRY)", f(fe_loop), f(fb_loop), f(minus(fe_loop, fb_loop)),
             ratio(fe_loop, fb_loop)],
            ["after (disconnect, tables, exit, manifest)", f(fe_after), f(fb_after), f(minus(fe_after, fb_after)),
             ratio(fe_after, fb_after)],
            ["the profiler's cost (wall on − off)", f(prof_cost_fe), f(prof_cost_fb), "", ""],
        ]),
        "",
        table(["against the in-process engine", "s", "federation / this", "target"], [
            ["in-process wall", f(ip_wall), ratio(fe0_wall, ip_wall),
             "**≤ 1.5×: " + ("reached**" if fe0_wall is not None and fe0_wall <= 1.5 * ip_wall else "not reached**")],
            ["in-process wall (federation with the profiler)", f(ip_wall), ratio(fe_wall, ip_wall), ""],
            ["in-process role work on the critical path (cp)", f(cp), "", ""],
            ["cp + floor (b) wall, profiler off", f(plus(cp, fb0_wall)), ratio(fe0_wall, plus(cp, fb0_wall)), ""],
            ["cp + floor (b) time loop (profiler on: federation time loop / this)", f(plus(cp, fb_loop)),
             ratio(fe_loop, plus(cp, fb_loop)), ""],
        ], numeric=False),
        "",
        "- *cp* (critical path): " + critical_path_s.__doc__.split(":", 1)[1].strip().replace("\n    ", " ")
        + f" = {f(cp)} s. A federation doing the same work with nothing but HELICS's floor as overhead would "
        "take cp + floor (b).",
        "- Federation tables equal the in-process tables: "
        + (f"yes ({eq[0]} tables, first round, profiler on and off)." if not eq[1]
           else f"**no**: {', '.join(eq[1])} differ (first round)."),
        f"- The profiler (`federation.helics_profiler: true`: every ENTRY and EXIT is a message to the broker, "
        f"which writes it): federation {spread(_get(fe, 'wall'))} s with it, {spread(_get(fe0, 'wall'))} s "
        f"without; floor (b) {spread(_get(fb, 'wall'))} s with, {spread(_get(fb0, 'wall'))} s without (median "
        f"(min–max)). " + (
            "Its cost is within the run-to-run spread: the profiled runs' split stands for the unprofiled ones."
            if prof_free else
            f"**It is not free**: {f(prof_cost_fe)} s on the federation, {f(prof_cost_fb)} s on floor (b), more "
            "than the run-to-run spread; so the wall times above are the runs without it, and the profile's split "
            "(this table's lower half, the tables below) is of runs that carry its cost, mostly as time inside "
            "HELICS."),
        "",
        "### Where the federation's time goes (HELICS's own profile)",
        "",
        f"Per federate, medians over {len(fe_s)} profiled runs; *role in process* is the same role's "
        "`engine_seconds` in the in-process engine.",
        "",
        table([*FED_HEADER, "role in process s"], fed_rows(fe_s, list(keys.FEDERATES), roles)),
        "",
        "The time loop by how many federates were outside HELICS (working) at once:",
        "",
        table(["federates outside HELICS", "s", "% of loop"], busy_rows(fe_s)),
        "",
        f"- The market kept its books (`MarketRole.keep_books`: settlement, ledger blocks) while its next time "
        f"request was pending (`Door.later`): {f(med([x.get('pending_s') for x in (*fe, *fe0) if x.get('pending_s') is not None]))} s "
        "over the day (its log). HELICS's profile counts that time inside HELICS (the request was made), so the "
        "market's *outside* above is its clearing alone.",
        f"- Work on the critical path as the federation ran it (time with some federate outside HELICS): "
        f"{f(fe_busy)} s, against {f(cp)} s of the same roles' work in process (cp). Time with every federate "
        f"waiting inside HELICS (the coordination itself: broker, zmq, wake-ups, and the profiler's messages): "
        f"{f(fe_wait)} s, against {f(fb_wait)} s in floor (b).",
        "",
        "## Floor (b): the no-op federation",
        "",
        f"The same 5 federates and broker with the same interfaces, HELICS times, DSO views and "
        f"message sizes ({plan.n_messages()} messages, {plan.n_bytes() / 1e6:.1f} MB) and no domain work "
        "(`benchmarks/noop_federate.py`); forked as the real federates are. Profiled runs:",
        "",
        table([*FED_HEADER], fed_rows(fb_s, list(keys.FEDERATES), None)),
        "",
        table(["federates outside HELICS", "s", "% of loop"], busy_rows(fb_s)),
        "",
        "How it is launched:",
        "",
        table(["launch", "profiler", "wall s", "start-up s", "time loop s", "after s"], [
            ["forked from this process (as `federation.launch: fork`)", "off", spread(_get(fb0, "wall")),
             f(fb0_start), f"{f(fb0_rest)} (with after)", ""],
            ["forked from this process", "on", spread(_get(fb, "wall")), f(fb_start), f(fb_loop), f(fb_after)],
            *[[label, "on", spread(_get(R[key], "wall")), f(_sp(R[key], "startup")), f(_sp(R[key], "loop")),
               f(_sp(R[key], "after"))]
              for label, key in (("exec'd: `python benchmarks/noop_federate.py`", "floor_b_exec"),
                                 ("forked, broker through its console script", "floor_b_script"))],
        ], numeric=False),
        "",
        "- The broker is the same command as a real run's (`runner.launch.helics_bin('helics_broker')`): the "
        "binary inside the helics package. The last row starts it, with the same arguments, through the "
        "package's `helics_broker` console script (a Python program that imports helics and runs the binary "
        "as a child), as runs did before: the start-up it adds is the script's.",
        "",
        "## Floor (a): the physics",
        "",
        table(["variant", "solves", "loop s", "ms/step", "set s", "solve s", "read s", "build s"], [
            [label, str(fa[0][key].solves), spread([r[key].loop_s for r in fa], 3),
             f(ms(med([r[key].loop_s for r in fa]))), f(med([r[key].set_s for r in fa]), 3),
             f(med([r[key].solve_s for r in fa]), 3), f(med([r[key].read_s for r in fa]), 3),
             f(med([r[key].build_s for r in fa]), 3)]
            for label, key in (("the run's solves per step", "all"), ("one solve per step", "one"))
        ]),
        "",
        "## In-process engine: time per role",
        "",
        table(["role", "s", "ms/step", "% of engine"], [
            *[[r, f(roles[r]), f(ms(roles[r])), pct(roles[r] / engine_total)] for r in (*ROLES, "setup")],
            ["**total (`run_inprocess`)**", f(engine_total), f(ms(engine_total)), "100 %"],
            ["wall (`run_study`: engine + manifest)", spread(_get(ip, "wall")), f(ms(ip_wall)), ""],
        ]),
        "",
    ]
    out += k_section(R.get("k"))
    out += market_section(R.get("market"))
    out += [
        "## Machine load per case",
        "",
        f"1-minute load average at the start, highest (sampled every second) and at the end of each case; "
        f"this process's own CPU (with its children: federates, broker) and the rest of the machine's, in "
        f"cores (/proc/stat busy time minus ours, over the case's wall time). Above {LOAD_LIMIT:g} the case "
        "shared the 2 CPUs with other jobs (or with its own processes: a federation has 6) and its figures "
        "are inflated.",
        "",
        table(["case", "wall s", "load start", "load max", "load end", "own CPU cores", "others' CPU cores", ""],
              load_rows(R["loads"])),
        "",
        "## How each figure is obtained",
        "",
        "- **in-process wall**: what `run_study(study, 'inprocess')` returns (the engine, its Parquet tables, the "
        "manifest); `prepare_run` (config, placement) is not in it "
        f"({f(med([x['prepare'] for x in ip]))} s). The roles' modules and the federates' are imported before timing.",
        "- **time per role**: `EngineTimes.seconds` (manifest `engine_seconds`).",
        "- **federation wall**: what `run_study(study, 'federation')` returns (`federation.launch: fork`). "
        "The runner's `Proc.start` is wrapped in this process only, to note each process's start "
        "(`time.perf_counter`, the profile's clock: CLOCK_MONOTONIC; checked against the profile's MARKERs: "
        f"{R['clock_check']}).",
        "- **start-up / time loop / after** (run, profiler on): from the run being asked for to the first HELICS "
        "CODE EXIT in state `executing` of any federate (`helicsFederateEnterExecutingMode` returned: all have "
        "joined); from there to the last federate's closing HELICS CODE ENTRY (the disconnect, which has no "
        "EXIT); the rest of the wall time. Profiler off: start-up to the first federate's `executing` log line "
        "(`Door.enter`, just after; log time stamps to the millisecond, moved to `perf_counter` by the clocks' "
        "offset), and the rest.",
        "- **per federate**: *start-up* from its process start to its own first EXIT in `executing`; *to MARKER*: "
        "to its profiling MARKER (its HELICS federate created and known to the broker: after interpreter start "
        "(exec only), loading the study and building its role); *inside HELICS*: the sum of ENTRY → EXIT of its "
        "blocking calls in `executing` state (time requests: waiting for the grant, the messages and values); "
        "*outside*: time loop − inside (its own work, with the non-blocking HELICS calls: publish, send, "
        "receive, read); *after close*: from its disconnect to the runner seeing it exit (polled every 0.1 s).",
        "- **federates outside HELICS at once**: the loop cut at every ENTRY and EXIT of every federate; "
        "0 = every federate inside a blocking call.",
        "- **critical path**: the in-process role work that runs alone on the timeline (module "
        "`federates/common/timeline.py`): at report time the prosumers and the meters work at the same HELICS "
        "time, everything else in sequence; so feeder + controllers + market + max(prosumers, meters).",
        "- **floor (a)** (`benchmarks/floors.py` `floor_physics`): `prepare_run` into its own folder, "
        "`OpenDSSFeeder(study.master, source_pu=...)` + `attach_customers(study.sites, "
        "feeder.customer_connection)` (*build*), then per physics step: `set_background_scale` (the step's "
        "multiplier from the `grid` table; the feeder role does it too) and, for each solve the in-process run "
        "made in that step (`grid.n_solves`): `set_customer_powers` with the step's final applied kW and kvar "
        "(`voltages` table; the adapter writes in two batches, and skips a write that changes nothing), "
        "`solve(controls=j > 0)` (the step's first solve with controls off, as the feeder role does), "
        "`customer_v_pu()` (one `Circuit.AllBusVmag`). *loop* is the whole loop; *set* / *solve* / *read* sum "
        "those calls. Within a step every solve sees the same powers, so OpenDSS converges faster than in the "
        "run (where the inverters move between solves): a floor.",
        "- **floor (b)** (`benchmarks/noop_federate.py`, `floors.floor_helics`): the in-process run traced once "
        "(`floors.trace_plan`: the roles' message-making calls wrapped to note `len(encode(...))` of every "
        "message as the federates encode it, and `EngineTimes.dso_views`); each no-op federate is a "
        "`federates.common.door.Door` named as the real one (zmq core, uninterruptible, "
        "heartbeat), with the "
        "same publications, subscriptions and endpoints and vector lengths, looping over the same "
        "`Timeline` times as its `federate.py`, publishing and reading vectors of the real lengths and sending "
        "messages of the real sizes, receiving everything, doing nothing else. Started and watched by "
        "`runner.launch.Federation.run` with the real broker command.",
        f"- **repeats**: the engines and floors alternate within each of the {n} rounds (in the order of the "
        "study table's *repeats*), so a change of machine load hits them alike; cells with a range are median "
        "(min–max).",
        "",
    ]
    return "\n".join(out)


def k_section(k: dict | None) -> list[str]:
    if not k:
        return []
    runs: dict[int, list[dict]] = k["runs"]
    base = runs.get(1)
    b_wall, b_loop = (med(_get(base, "wall")), _sp(base, "loop")) if base else (None, None)
    rows = []
    for parts, rs in runs.items():
        splits = [r["split"] for r in rs if r["split"] is not None]

        def own(fn, splits=splits):
            return med([fn([v.outside or 0.0 for name, v in s.federates.items() if name.startswith(keys.PROSUMERS)])
                        for s in splits])

        wall, loop = med(_get(rs, "wall")), _sp(rs, "loop")
        rows.append([str(parts), spread(_get(rs, "wall"), 1), ratio(b_wall, wall), f(_sp(rs, "startup"), 1),
                     f(loop, 1), ratio(b_loop, loop), f(own(max), 2), f(own(sum), 2),
                     f(med([s.federates[keys.FEEDER].outside for s in splits if keys.FEEDER in s.federates]), 1),
                     f(med([s.busy.get(0, 0.0) for s in splits]), 1)])
    ip = k.get("inprocess")
    return [
        "## K prosumer federates",
        "",
        f"`configs/default.yaml` on the synthetic feeder with {k['prosumers']} prosumers and "
        f"`feeder.synthetic.n_loads: {k['n_loads']}` (`benchmarks/scale.py` `case_config`), {k['duration']} from "
        f"{k['start'][11:16]} ({k['n_steps']} physics steps), `prosumers.federates: K`, profiler on; prepared once "
        f"({f(k['prepare'], 1)} s: placement and the DSO's sensitivities); {len(base or [])} runs per K, the Ks "
        f"alternating. In process the same study takes {f(ip['wall'], 1) if ip else DASH} s.",
        "",
        table(["K", "wall s", "speed-up", "start-up s", "time loop s", "loop speed-up",
               "prosumers' own work, slowest part s", "prosumers' own work, all parts s", "feeder's own work s",
               "all federates waiting s"], rows),
        "",
        f"- *own work*: time outside HELICS in the loop (profile). The machine has {os.cpu_count()} CPUs. The "
        "prosumer parts bid at the same HELICS time (report time), so K parts run side by side only on K free "
        "CPUs: here at most 2, shared with the meters (which report at that time too), the broker (which relays "
        "every message) and the other jobs on the machine (see the load table). And the prosumers' work is a "
        "small part of the loop next to the feeder's, which no K splits: the speed-up is bounded by the cores "
        "and by that share, not by the federation.",
        "",
    ]


def market_targets(results: list[dict]) -> list[str]:
    """Issue 10's market targets against this run's figures, as table rows."""
    by = {r["key"]: r for r in results}
    rows = []

    def row(what: str, key: str, field: str, limit: float, unit: str, fmt: str = ".1f") -> None:
        if key in by and field in by[key]:
            x = by[key][field]
            verdict = "**reached**" if x <= limit else "**not reached**"
            rows.append(f"| {what} | {x:{fmt}} {unit} | ≤ {limit:g} {unit}: {verdict} |")

    for mech in ("uniform_price", "pay_as_bid", "lp"):
        row(f"community clearing of 10k orders, `{mech}` (wall)", f"clear/{mech}", "wall_ms", 20.0, "ms")
    if "role/cpu" in by and "role" in by:
        wall = sum(by["role"].get(f"{k}_ms", 0.0) for k in ("verify", "clear", "record"))
        by["role/vcr"] = {"wall_ms": wall}
        row("default-day clearing of ~40 orders: verify + clear + record (wall)", "role/vcr", "wall_ms", 2.0,
            "ms", ".2f")
    row("P2P ADMM of 1000 orders (wall)", "admm", "wall_s", 5.0, "s", ".2f")
    if not rows:
        return []
    notes = []
    if "role/vcr" in by and "role/checks" in by:
        c, r = by["role/checks"], by["role"]
        notes = [f"- The ~40-order figure beside its floor: of its {by['role/vcr']['wall_ms']:.2f} ms, verify takes "
                 f"{r.get('verify_ms', 0.0):.2f} ms, and the same signature checks with nothing else take "
                 f"{c['threads_ms']:.2f} ms on the signature threads ({c['even_ms']:.2f} ms if they were split "
                 f"evenly over the CPUs, which one process's threads are not: CPython's GIL is handed over "
                 f"around each check); clear {r.get('clear_ms', 0.0):.2f} ms, record {r.get('record_ms', 0.0):.2f} ms.",
                 ""]
    return ["| target | this run | |", "|:--|--:|:--|", *rows, "", *notes]


def market_section(m: dict | None) -> list[str]:
    if not m:
        return []
    return [
        "## Market",
        "",
        *market_targets(m["results"]),
        f"`{m['command']}` (its own process; wall times are the least of the repeats, the CPU times beside "
        "them are steadier on a shared machine). The full set (ledger of 1000 participants, ADMM against the "
        "P2P LP) is `python benchmarks/market.py`.",
        "",
        "```",
        *[r["line"] for r in m["results"]],
        "```",
        "",
        "- `clear`: one community book of 10 000 orders per mechanism (and the exact Fraction / pyomo "
        "references); a result holds its trades and confirmations as columns (`federates/common/rows.py`), "
        "their 20 000 Python objects made where they are first read one by one (the settlement, the ledger, the "
        "in-process prosumers; a federation's messages are encoded from the columns), which the next line "
        "measures and the clearing lines do not contain: `role10k` shows the whole path, objects included; "
        "`role`: a default-sized market day replayed through `MarketRole.on_market_time`, per "
        "market time, split into verify / clear / record / ledger / settle, in wall time and in CPU time (all "
        "threads: on a busy machine the signature threads do not run side by side); the Ed25519 floor is the "
        "signatures such a market time needs at this machine's speed; `admm`: P2P ADMM of 1000 orders; "
        "`ledger`: the default day's ledger (40 participants) size and `verify_ledger` time.",
        "",
    ]


# ---- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Both engines on configs/default.yaml beside their floors; "
                                             "writes BENCHMARKS.md.")
    ap.add_argument("--duration", default="24h", help="study.duration of the default study (default 24h)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of engines and floors (default 5)")
    ap.add_argument("--k", default="1,2,4", help="prosumer federate counts to compare ('' for none)")
    ap.add_argument("--k-prosumers", type=int, default=1000)
    ap.add_argument("--k-duration", default="2h", help="study.duration of the K study (from 11:00)")
    ap.add_argument("--k-repeat", type=int, default=2, help="rounds of the K cases (default 2)")
    ap.add_argument("--no-k-inprocess", dest="k_inprocess", action="store_false",
                    help="skip the K study in process")
    ap.add_argument("--no-market", dest="market", action="store_false")
    ap.add_argument("--market-repeat", type=int, default=3)
    ap.add_argument("--market-timeout", type=float, default=900.0)
    ap.add_argument("--keep", action="store_true", help="keep the runs/bench-* folder")
    ap.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.k = [int(x) for x in args.k.split(",") if x.strip()]
    from federates.common.config import load_config

    base = [f"study.duration={args.duration}", "federation.timeout_s=900"]
    try:
        cfg = load_config(CONFIG, [*base, "federation.helics_profiler=true"])
        cfg_plain = load_config(CONFIG, [*base, "federation.helics_profiler=false"])
    except TecosimError as e:
        print(f"bench: invalid {e}", file=sys.stderr)
        return 2

    import runner.engine  # noqa: F401  (the roles, imported before timing)
    from runner.launch import preimport_federates

    preimport_federates()  # what a forking runner imports before its first federate
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    bench_dir = REPO / "runs" / f"bench-{started:%Y%m%dT%H%M%SZ}"
    R: dict = {"loads": []}

    def measured(label: str, fn):
        print(f"bench: {label} ...", end=" ", flush=True)
        with LoadMonitor(label) as mon:
            out = fn()
        R["loads"].append(mon.load)
        wall = out.get("wall") if isinstance(out, dict) else None
        print(f"{wall if wall is not None else mon.load.wall_s:.2f} s (load {mon.load.load_max:.1f})", flush=True)
        return out

    try:
        trace_study, _ = _prepare(cfg, bench_dir / "trace")
        plan, _rounds, _ = measured("traced in-process run (not timed)",
                                    lambda: floors.trace_plan(trace_study))
        trace_results = trace_study.run_dir / "results"
        R["plan"] = plan
        cases = {
            "inprocess": lambda d: inprocess(cfg, d),
            "federation": lambda d: federation(cfg, d),
            "federation_plain": lambda d: federation(cfg_plain, d),
            "floor_b": lambda d: floor_b(cfg, d, plan),
            "floor_b_plain": lambda d: floor_b(cfg_plain, d, plan),
            "floor_b_exec": lambda d: floor_b(cfg, d, plan, launch="exec"),
            "floor_b_script": lambda d: floor_b(cfg, d, plan, script_broker=True),
            "floor_a": lambda d: floor_a(cfg, d, trace_results),
        }
        for i in range(1, args.repeat + 1):
            for key, label in ROUND:
                d = bench_dir / f"{key}-{i}"
                R.setdefault(key, []).append(measured(f"{label} {i}", lambda key=key, d=d: cases[key](d)))
        R["solves"] = R["floor_a"][0]["all"].solves
        eq1 = same_tables(R["inprocess"][0]["run_dir"], R["federation"][0]["run_dir"])
        eq2 = same_tables(R["inprocess"][0]["run_dir"], R["federation_plain"][0]["run_dir"])
        R["equal"] = (eq1[0], sorted(set(eq1[1]) | set(eq2[1])))
        R["clock_check"] = clock_check(R["federation"][0]["split"], R["federation"][0]["run_dir"])
        if args.k:
            R["k"] = k_split(args, bench_dir, measured)
        if args.market:
            R["market"] = measured("market benchmarks", lambda: market(args, bench_dir))
    except (TecosimError, RuntimeError, OSError, KeyboardInterrupt) as e:
        traceback.print_exc()
        print(f"\nbench: failed: {e}\nbench: run folders kept in {bench_dir}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    text = report(R, cfg, args, started, time.perf_counter() - t_start)
    if not args.no_write:
        OUT.write_text(text + kept_sections())
    print()
    print(text)
    if not args.no_write:
        print(f"bench: wrote {OUT.relative_to(REPO)}")
    if args.keep:
        print(f"bench: run folders kept in {bench_dir}")
    else:
        shutil.rmtree(bench_dir, ignore_errors=True)
    return 0


def clock_check(split: RunSplit | None, run_dir: Path) -> str:
    """Whether the profile's steady clock is this process's perf_counter: the MARKERs'
    system - steady offset against Python's, now."""
    from benchmarks.helics_profile import clock_offset_ns, read_profile
    from runner.launch import HELICS_PROFILE_FILE

    path = run_dir / "logs" / HELICS_PROFILE_FILE
    if split is None or not path.is_file():
        return "no profile"
    off = clock_offset_ns(read_profile(path))
    if off is None:
        return "no MARKER"
    mine = time.time_ns() - time.perf_counter_ns()
    return f"offsets differ by {abs(off - mine) / 1e6:.1f} ms"


if __name__ == "__main__":
    sys.exit(main())
