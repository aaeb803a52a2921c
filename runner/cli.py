"""The ``tecosim`` command.

Exit codes: 0 ok, 1 the run failed (a federate died, hung or a model failed; in a
sweep: some run failed), 2 bad input (config, arguments), 130 interrupted (Ctrl-C),
143 stopped by SIGTERM (runner.interrupt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from federates.common.errors import ConfigError, FederationError, TecosimError

EXAMPLES = """examples:
  tecosim validate configs/default.yaml
  tecosim run configs/default.yaml
  tecosim run configs/default.yaml --engine inprocess --set study.duration=2h
  tecosim run configs/default.yaml --out runs/my-study --set controllers.enabled=false
  tecosim run cfg.yaml --out runs/a --broker --federates market,feeder      # host A, across hosts
  tecosim run cfg.yaml --out runs/b --federates prosumers,meters,controllers  # host B
  tecosim collect runs/a runs/b --out runs/my-study
  tecosim report runs/my-study
  tecosim compare runs/my-study runs/default-20261125T110000Z
  tecosim sweep configs/default.yaml --set controllers.enabled=true,false --jobs 2
  tecosim clear orders.csv --topology community --mechanism lp
  tecosim ledger verify runs/my-study
  tecosim feeders show path/to/Master.dss --json
"""

RUN_EXAMPLES = """examples:
  tecosim run configs/default.yaml
  tecosim run configs/default.yaml --engine inprocess --set study.duration=2h
  tecosim run configs/default.yaml --out runs/noctl --set controllers.enabled=false
  tecosim run configs/default.yaml --quiet --no-report      # nothing on the console, no report.html

A progress bar with the simulated time and an ETA goes to stderr (one line per 10 %
when stderr is not a terminal). When the run is done, its summary is printed and
report.html is written into the run folder (a failed report does not fail the run:
retry with `tecosim report RUN`).

Across hosts (federation.broker_address set in the config, the same config on every host):
  host A: tecosim run cfg.yaml --out runs/a --broker --federates market,feeder
  host B: tecosim run cfg.yaml --out runs/b --federates prosumers,meters,controllers
then, with both folders on one machine: tecosim collect runs/a runs/b --out runs/my-study
(README: "Running a federation across hosts").
"""

COLLECT_EXAMPLES = """examples:
  tecosim collect runs/a runs/b --out runs/my-study
  tecosim collect /mnt/hostA/runs/a /mnt/hostB/runs/b --out runs/my-study --no-report

Joins the run folders of the hosts of one federation (`tecosim run --federates ...`)
into one complete run folder, then computes its KPIs, summary and report as
`tecosim run` does. Exit 2 when the folders are not the parts of one run (another
config, a federate missing or twice, differing prepared inputs).
"""

REPORT_EXAMPLES = """examples:
  tecosim report runs/my-study               # writes runs/my-study/report.html (+ PNGs)
  tecosim report runs/my-study --quiet

Exit 2 when RUN is not a run folder of `tecosim run`.
"""

COMPARE_EXAMPLES = """examples:
  tecosim compare runs/ctl runs/noctl
  tecosim compare runs/ctl runs/noctl --labels "with control,without control" --out runs/ctl-vs-noctl
  tecosim compare runs/sweep-default-*/prosumers.count=* --quiet

Writes DIR/compare.html (self-contained: open it anywhere), one PNG per figure and
DIR/compare_kpis.csv (columns kpi, unit, one per run). Labels default to the config
keys in which the runs differ (e.g. "controllers.enabled=false"), else the folder
names. Exit 2 when a path is not a completed run folder.
"""

SWEEP_EXAMPLES = """examples:
  tecosim sweep configs/default.yaml --set controllers.enabled=true,false
  tecosim sweep configs/default.yaml --set prosumers.count=20,40,60 \\
      --set controllers.enabled=true,false --set study.duration=6h --jobs 3 --engine inprocess
  tecosim sweep configs/weak_grid.yaml --set market.network_aware=off,envelopes,constraints \\
      --out runs/network-aware
  tecosim sweep configs/default.yaml --set controllers.enabled=true,false --seeds 5 --jobs 2
  tecosim sweep configs/default.yaml --set prosumers.count=20,40 --dask tcp://scheduler:8786

Every point of the grid is validated before any run starts (exit 2 names each bad
point and field). Each point is a `tecosim run` subprocess writing DIR/<key>=<value>_...
(console output in its logs/run.log); DIR/sweep.json records each point's status,
pid, exit code and wall time; DIR/sweep.parquet has a row per run (point, axes, seed,
status, KPIs); DIR/compare.html compares the successful runs. --seeds N runs each
point with N study seeds (DIR/<point>_seed=<s>) and shows each KPI's mean and 95 %
t interval per point. --dask runs each point as a task on a Dask cluster, each in a
temporary folder of its worker, the run folder copied back into DIR. Exit 1 names
the points that failed (the others still complete); Ctrl-C stops every run.
"""

VALIDATE_EXAMPLES = """examples:
  tecosim validate configs/default.yaml
  tecosim validate configs/default.yaml --set market.topology=p2p --set market.mechanism=admm

Exit 0 when valid; else lists every problem (field, what is wrong, what is allowed)
and exits 2. Also loads and solves the feeder model once.
"""

CLEAR_EXAMPLES = """examples:
  tecosim clear orders.csv
  tecosim clear orders.csv --topology community --mechanism lp
  tecosim clear orders.csv --topology p2p --mechanism admm --retail 0.30 --feed-in 0.05
"""

LEDGER_EXAMPLES = """examples:
  tecosim ledger verify runs/my-study          # exit 0 intact, 1 names the first bad record
  tecosim ledger verify runs/my-study/ledger.zst
  tecosim ledger dump runs/my-study | head -3  # the blocks as JSON lines (signatures in hex)
"""

FEEDERS_EXAMPLES = """examples:
  tecosim feeders list
  tecosim feeders list --json
  tecosim feeders show ieee34
  tecosim feeders show path/to/Master.dss --json
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tecosim", description="Transactive-energy co-simulation "
                                 "on unbalanced distribution feeders (HELICS + OpenDSS).",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help="run a study", epilog=RUN_EXAMPLES, formatter_class=raw)
    run.add_argument("config", type=Path, help="study YAML file")
    run.add_argument("--out", type=Path, help="the run folder itself (default runs/<study>-<UTC stamp>)")
    run.add_argument("--engine", choices=("federation", "inprocess"), default="federation",
                     help="HELICS federation (default) or the in-process engine")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set study.duration=2h (repeatable)")
    run.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary on the console")
    run.add_argument("--federates", metavar="NAME[,NAME...]",
                     help="across hosts: run only these federates on this host (market, feeder, meters, "
                     "controllers, prosumers or prosumers_<i>); needs federation.broker_address")
    run.add_argument("--broker", action="store_true",
                     help="across hosts: this host also runs the broker (implied without --federates)")
    col = sub.add_parser("collect", help="join the run folders of a federation across hosts into one run",
                         epilog=COLLECT_EXAMPLES, formatter_class=raw)
    col.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="each host's run folder")
    col.add_argument("--out", type=Path, required=True, metavar="DIR", help="the complete run folder (new)")
    col.add_argument("--no-report", action="store_true", help="do not write report.html")
    col.add_argument("--quiet", action="store_true", help="no summary on the console")
    rep_ = sub.add_parser("report", help="write a run's report.html (figures and KPIs)",
                          description="Write RUN/report.html (self-contained) and its PNG figures.",
                          epilog=REPORT_EXAMPLES, formatter_class=raw)
    rep_.add_argument("run", type=Path, metavar="RUN", help="a run folder")
    rep_.add_argument("--quiet", action="store_true", help="print nothing on success")
    cmp_ = sub.add_parser("compare", help="compare runs side by side (KPI table, overlaid figures)",
                          description="A KPI table and overlaid figures of several runs in one HTML page.",
                          epilog=COMPARE_EXAMPLES, formatter_class=raw)
    cmp_.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders")
    cmp_.add_argument("--out", type=Path, metavar="DIR", help="output folder (default runs/compare-<UTC stamp>)")
    cmp_.add_argument("--labels", metavar="A,B,...", help="one label per run, comma-separated "
                      "(default: the config keys that differ, else the folder names)")
    cmp_.add_argument("--quiet", action="store_true", help="print nothing on success")
    swp = sub.add_parser("sweep", help="run the cartesian grid of a study's config values, then compare",
                         description="Run one study over the cartesian grid of --set values, up to "
                         "--jobs at a time, then compare the runs.",
                         epilog=SWEEP_EXAMPLES, formatter_class=raw)
    swp.add_argument("config", type=Path, help="study YAML file")
    swp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="an axis of the grid (values split on commas, each parsed as YAML), or with one "
                     "value an override for every point (repeatable)")
    swp.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    swp.add_argument("--seeds", type=int, metavar="N", help="Monte Carlo: run each point with the study seeds "
                     "S..S+N-1 (S: study.seed) and report each KPI's mean and 95 %% confidence interval")
    swp.add_argument("--dask", metavar="tcp://HOST:8786", help="run each point as a task on this Dask "
                     "scheduler's workers (tecosim installed on each); --jobs does not apply")
    swp.add_argument("--engine", choices=("federation", "inprocess"), default="federation",
                     help="engine of every run (default federation)")
    swp.add_argument("--out", type=Path, metavar="DIR",
                     help="sweep folder (default runs/sweep-<config>-<UTC stamp>)")
    swp.add_argument("--no-report", action="store_true", help="no report.html in the run folders")
    swp.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    val = sub.add_parser("validate", help="check a study config and list every problem",
                         epilog=VALIDATE_EXAMPLES, formatter_class=raw)
    val.add_argument("config", type=Path)
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    clr = sub.add_parser("clear", help="clear one order book (CSV) and print the result as JSON",
                         description="CSV columns: participant, side (buy|sell), energy_kwh, "
                         "price_usd_per_kwh; optional bus, phase, community.",
                         epilog=CLEAR_EXAMPLES, formatter_class=raw)
    clr.add_argument("orders", type=Path)
    clr.add_argument("--topology", default="community")
    clr.add_argument("--mechanism", help="default: uniform_price (community), lp (p2p), two_level (hybrid)")
    clr.add_argument("--retail", type=float, default=0.26, help="retail tariff [USD/kWh]")
    clr.add_argument("--feed-in", type=float, default=0.08, help="feed-in tariff [USD/kWh]")
    led = sub.add_parser("ledger", help="ledger tools", epilog=LEDGER_EXAMPLES, formatter_class=raw)
    led_sub = led.add_subparsers(dest="ledger_command", required=True)
    ver = led_sub.add_parser("verify", help="verify a run's ledger.zst (hash chain, seals, signatures, "
                             "Merkle roots, proof of work)",
                             epilog=LEDGER_EXAMPLES, formatter_class=raw)
    ver.add_argument("run", type=Path, help="a run folder or a ledger.zst file")
    dmp = led_sub.add_parser("dump", help="print a ledger's blocks as JSON lines (the file is a "
                             "zstd stream of binary blocks)", epilog=LEDGER_EXAMPLES, formatter_class=raw)
    dmp.add_argument("run", type=Path, help="a run folder or a ledger.zst file")
    fdr = sub.add_parser("feeders", help="the bundled feeders; what any OpenDSS model holds",
                         epilog=FEEDERS_EXAMPLES, formatter_class=raw)
    fdr_sub = fdr.add_subparsers(dest="feeders_command", required=True)
    fdr_list = fdr_sub.add_parser("list", help="one line per bundled feeder", epilog=FEEDERS_EXAMPLES,
                                  formatter_class=raw)
    fdr_list.add_argument("--json", action="store_true", help="print JSON")
    fdr_show = fdr_sub.add_parser("show", help="buses, phases, loads, kV levels and a base-solve check",
                                  description="A bundled feeder by name, or any OpenDSS model by the "
                                  "path of its master file (or of a folder with a feeder.yaml). "
                                  "Exit 1 when its base case does not converge.",
                                  epilog=FEEDERS_EXAMPLES, formatter_class=raw)
    fdr_show.add_argument("feeder", metavar="NAME|PATH")
    fdr_show.add_argument("--json", action="store_true", help="print JSON")
    return ap


def cmd_validate(args) -> int:
    from federates.common.config import load_config
    from runner.launch import check_feeder, check_weather

    cfg = load_config(args.config, args.overrides)
    tl = cfg.timeline
    for note in cfg._notes:
        print(f"tecosim: note: {note}", file=sys.stderr)
    model = check_feeder(cfg, args.config.parent)
    weather = check_weather(cfg, args.config.parent)
    print(f"{args.config}: ok ({tl.n_intervals} market intervals x {tl.steps_per_interval} steps, "
          f"{cfg.prosumers.count} prosumers, feeder {cfg.feeder.model or cfg.feeder.path}: {model}"
          + (f", weather {weather}" if weather else "") + ")")
    return 0


def _federates(args) -> list[str] | None:
    """``--federates a,b``: the names (None: the flag not given)."""
    return None if args.federates is None else [n.strip() for n in args.federates.split(",") if n.strip()]


def cmd_run(args) -> int:
    from runner import api

    api.run(args.config, overrides=args.overrides, out=args.out, engine=args.engine,
            report=not args.no_report, quiet=args.quiet, federates=_federates(args), broker=args.broker)
    return 0


def cmd_collect(args) -> int:
    from runner import api

    api.collect(args.runs, args.out, report=not args.no_report, quiet=args.quiet)
    return 0


def _finish_run(study, engine: str, wall: float, *, quiet: bool, report: bool) -> None:
    """After a complete run: ``runner.api.finish_run`` (the one post-run path)."""
    from runner.api import finish_run

    finish_run(study, engine, wall, quiet=quiet, report=report)


def cmd_report(args) -> int:
    from runner import api

    api.open_run(args.run).report(quiet=args.quiet)  # prints its path unless quiet
    return 0


def cmd_compare(args) -> int:
    from runner import api
    from runner.compare import parse_labels

    labels = parse_labels(args.labels, len(args.runs))
    path = api.compare(args.runs, args.out, labels=labels).html
    if not args.quiet:
        print(f"tecosim compare: {path} ({len(args.runs)} runs; KPIs in {path.parent / 'compare_kpis.csv'})")
    return 0


def cmd_sweep(args) -> int:
    from runner.sweep import plan_sweep

    sweep = plan_sweep(args.config, args.sets, seeds=args.seeds, jobs=args.jobs, engine=args.engine,
                       out=args.out, dask=args.dask is not None, report=not args.no_report, quiet=args.quiet)
    if args.dask is None:
        return sweep.run()
    from runner.sweep_dask import connect

    with connect(args.dask) as client:
        sweep.client = client
        return sweep.run()


def cmd_clear(args) -> int:
    from federates.common.config import DEFAULT_MECHANISM
    from federates.common.errors import Problem
    from federates.market.mechanisms import allowed_mechanisms, clear, clearing_json
    from federates.market.orders_csv import read_orders_csv

    allowed = allowed_mechanisms()
    mechanism = args.mechanism or DEFAULT_MECHANISM.get(args.topology, "")
    if args.topology not in allowed:
        raise ConfigError([Problem("--topology", f"unknown {args.topology!r}", ", ".join(allowed))], "arguments")
    if mechanism not in allowed[args.topology]:
        raise ConfigError([Problem("--mechanism", f"unknown {mechanism!r} for {args.topology}",
                                   ", ".join(allowed[args.topology]))], "arguments")
    # the tariffs as market.retail_usd_per_kwh / feed_in_usd_per_kwh of a study config
    problems = []
    if not (math.isfinite(args.retail) and args.retail > 0):
        problems.append(Problem("--retail", f"{args.retail:g} is not a finite price > 0", "a price > 0 [USD/kWh]"))
    if not (math.isfinite(args.feed_in) and args.feed_in >= 0):
        problems.append(Problem("--feed-in", f"{args.feed_in:g} is not a finite price >= 0", "a price >= 0 [USD/kWh]"))
    elif not problems and args.feed_in >= args.retail:
        problems.append(Problem("--feed-in", "must be below the retail tariff", f"< {args.retail:g}"))
    if problems:
        raise ConfigError(problems, "arguments")
    orders = read_orders_csv(args.orders)
    result = clear(args.topology, mechanism, orders, interval=0,
                   retail_usd_per_kwh=args.retail, feed_in_usd_per_kwh=args.feed_in)
    out = {"topology": args.topology, "mechanism": mechanism, **clearing_json(result)}
    print(json.dumps(out, indent=2))
    return 0


def _hex(obj: object) -> str:
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    raise TypeError(f"{type(obj).__name__} in a ledger block")


def cmd_ledger(args) -> int:
    from federates.market.ledger import read_blocks, verify_ledger

    path = args.run / "ledger.zst" if args.run.is_dir() else args.run
    if not path.is_file():
        print(f"tecosim: no ledger at {path}", file=sys.stderr)
        return 2
    if args.ledger_command == "dump":
        try:
            blocks = read_blocks(path)
        except ValueError as exc:
            print(f"tecosim: {path}: {exc}", file=sys.stderr)
            return 1
        try:
            for b in blocks:  # signatures, acknowledgements and locators are bytes: hex
                print(json.dumps(b, sort_keys=True, separators=(",", ":"), default=_hex))
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    r = verify_ledger(path)
    if r.ok:
        print(f"{path}: intact ({r.n_blocks} blocks, {r.n_records} records)")
        return 0
    print(f"{path}: NOT intact: {r.first_bad}", file=sys.stderr)
    return 1


def cmd_feeders(args) -> int:
    from runner.feeders import (
        describe_feeder,
        feeder_summaries,
        format_feeder,
        format_feeder_list,
        resolve_feeder,
    )

    if args.feeders_command == "list":
        rows = feeder_summaries()
        print(json.dumps(rows, indent=2) if args.json else format_feeder_list(rows))
        return 0
    name, master = resolve_feeder(args.feeder)
    d = describe_feeder(master)
    print(json.dumps({"name": name, **d}, indent=2) if args.json else format_feeder(d, name))
    return 0 if d["base_solve"]["converged"] else 1


def main(argv: list[str] | None = None) -> int:
    from runner import interrupt

    interrupt.install()  # SIGINT and SIGTERM stop the command (every process) with 128 + the signal
    args = _parser().parse_args(argv)
    from runner import launch

    launch.COMMAND_LINE[:] = ["tecosim", *(sys.argv[1:] if argv is None else argv)]
    try:
        return _command(args)
    finally:  # main() called in a Python process (tests, a notebook) leaves no argv for a later tecosim.run
        launch.COMMAND_LINE.clear()


def _command(args) -> int:
    from runner import interrupt

    commands = {"validate": cmd_validate, "clear": cmd_clear, "feeders": cmd_feeders, "ledger": cmd_ledger,
                "report": cmd_report, "compare": cmd_compare, "sweep": cmd_sweep, "run": cmd_run,
                "collect": cmd_collect}
    try:
        return commands[args.command](args)
    except ConfigError as e:
        print(f"tecosim: invalid {e}", file=sys.stderr)
        return 2
    except FederationError as e:
        print(f"tecosim: run failed: {e}", file=sys.stderr)
        return 1
    except TecosimError as e:
        print(f"tecosim: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        code = interrupt.exit_code(e)
        print(f"tecosim: interrupted ({interrupt.signal_name(code - 128)}); all processes stopped", file=sys.stderr)
        return code
    except BrokenPipeError:
        # the reader of our output went away (``tecosim clear ... | head``): no traceback,
        # and nothing more to stdout (Python's docs on SIGPIPE)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
