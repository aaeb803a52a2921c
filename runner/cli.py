"""The ``tecosim`` command.

Exit codes: 0 ok, 1 the run failed (a federate died, hung or a model failed),
2 bad input (config, arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from federates.common.errors import ConfigError, FederationError, TecosimError

EXAMPLES = """examples:
  tecosim validate configs/default.yaml
  tecosim run configs/default.yaml
  tecosim run configs/default.yaml --engine inprocess --set study.duration=2h
  tecosim run configs/default.yaml --out runs/my-study --set controllers.enabled=false
  tecosim clear orders.csv --topology community --mechanism lp
  tecosim ledger verify runs/my-study
  tecosim feeders show path/to/Master.dss --json
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tecosim", description="Transactive-energy co-simulation "
                                 "on unbalanced distribution feeders (HELICS + OpenDSS).",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", type=Path, help="study YAML file")
    run.add_argument("--out", type=Path, help="the run folder itself (default runs/<study>-<UTC stamp>)")
    run.add_argument("--engine", choices=("federation", "inprocess"), default="federation",
                     help="HELICS federation (default) or the in-process engine")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set study.duration=2h (repeatable)")
    val = sub.add_parser("validate", help="check a study config and list every problem")
    val.add_argument("config", type=Path)
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    clr = sub.add_parser("clear", help="clear one order book (CSV) and print the result as JSON",
                         description="CSV columns: participant, side (buy|sell), energy_kwh, "
                         "price_usd_per_kwh; optional bus, phase, community.")
    clr.add_argument("orders", type=Path)
    clr.add_argument("--topology", default="community")
    clr.add_argument("--mechanism", help="default: uniform_price (community), lp (p2p)")
    clr.add_argument("--retail", type=float, default=0.26, help="retail tariff [USD/kWh]")
    clr.add_argument("--feed-in", type=float, default=0.08, help="feed-in tariff [USD/kWh]")
    led = sub.add_parser("ledger", help="ledger tools")
    led_sub = led.add_subparsers(dest="ledger_command", required=True)
    ver = led_sub.add_parser("verify", help="verify a run's ledger.jsonl (hash chain, seals, signatures)")
    ver.add_argument("run", type=Path, help="a run folder or a ledger.jsonl file")
    fdr = sub.add_parser("feeders", help="the bundled feeders; what any OpenDSS model holds")
    fdr_sub = fdr.add_subparsers(dest="feeders_command", required=True)
    fdr_list = fdr_sub.add_parser("list", help="one line per bundled feeder")
    fdr_list.add_argument("--json", action="store_true", help="print JSON")
    fdr_show = fdr_sub.add_parser("show", help="buses, phases, loads, kV levels and a base-solve check",
                                  description="A bundled feeder by name, or any OpenDSS model by the "
                                  "path of its master file (or of a folder with a feeder.yaml). "
                                  "Exit 1 when its base case does not converge.")
    fdr_show.add_argument("feeder", metavar="NAME|PATH")
    fdr_show.add_argument("--json", action="store_true", help="print JSON")
    return ap


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def cmd_validate(args) -> int:
    from runner.config import load_config
    from runner.launch import check_feeder

    cfg = load_config(args.config, args.overrides)
    tl = cfg.timeline
    model = check_feeder(cfg, args.config.parent)
    print(f"{args.config}: ok ({tl.n_intervals} market intervals x {tl.steps_per_interval} steps, "
          f"{cfg.prosumers.count} prosumers, feeder {cfg.feeder.model or cfg.feeder.path}: {model})")
    return 0


def cmd_run(args) -> int:
    from runner.config import load_config
    from runner.launch import default_run_dir, prepare_run, run_study
    from runner.losses_table import write_loss_tables
    from runner.results import format_summary, kpis, read_tables, summary

    cfg = load_config(args.config, args.overrides)
    run_dir = args.out or default_run_dir(cfg)
    study = prepare_run(cfg, run_dir, config_dir=args.config.parent)
    print(f"tecosim: running {cfg.study.name} ({args.engine}) in {study.run_dir}", flush=True)
    wall = run_study(study, args.engine)
    tables = read_tables(study.run_dir)
    k = kpis(cfg, tables)
    k.to_parquet(study.run_dir / "results" / "kpis.parquet", index=False)
    write_loss_tables(cfg, study.run_dir, tables)
    s = summary(k)
    manifest_path = study.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["summary"] = s
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    text = format_summary(s, wall, study.run_dir, args.engine)
    (study.run_dir / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


def cmd_clear(args) -> int:
    from federates.common.errors import Problem
    from federates.market.mechanisms import allowed_mechanisms, clear, clearing_json
    from federates.market.orders_csv import read_orders_csv

    allowed = allowed_mechanisms()
    mechanism = args.mechanism or {"community": "uniform_price", "p2p": "lp"}.get(args.topology, "")
    if args.topology not in allowed:
        raise ConfigError([Problem("--topology", f"unknown {args.topology!r}", ", ".join(allowed))], "arguments")
    if mechanism not in allowed[args.topology]:
        raise ConfigError([Problem("--mechanism", f"unknown {mechanism!r} for {args.topology}",
                                   ", ".join(allowed[args.topology]))], "arguments")
    orders = read_orders_csv(args.orders)
    result = clear(args.topology, mechanism, orders, interval=0,
                   retail_usd_per_kwh=args.retail, feed_in_usd_per_kwh=args.feed_in)
    out = {"topology": args.topology, "mechanism": mechanism, **clearing_json(result)}
    print(json.dumps(out, indent=2))
    return 0


def cmd_ledger(args) -> int:
    from federates.market.ledger import verify_ledger

    path = args.run / "ledger.jsonl" if args.run.is_dir() else args.run
    if not path.is_file():
        print(f"tecosim: no ledger at {path}", file=sys.stderr)
        return 2
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
    signal.signal(signal.SIGTERM, _sigterm)
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "clear":
            return cmd_clear(args)
        if args.command == "feeders":
            return cmd_feeders(args)
        if args.command == "ledger":
            return cmd_ledger(args)
        return cmd_run(args)
    except ConfigError as e:
        print(f"tecosim: invalid {e}", file=sys.stderr)
        return 2
    except FederationError as e:
        print(f"tecosim: run failed: {e}", file=sys.stderr)
        return 1
    except TecosimError as e:
        print(f"tecosim: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tecosim: interrupted; all processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
