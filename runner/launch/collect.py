"""Collecting tables into the run folder: the prosumer parts' tables merged into one
(``merge_part_tables``) and the run folders of a federation across hosts joined into
one complete run (``collect_runs``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from federates.common.conservation import merge_tables as merge_conservation_tables
from federates.common.errors import ConfigError, Problem
from federates.common.study import Study
from runner.launch.manifest import _sha256_file, write_manifest

#: the column each merged prosumer table is stably sorted by (the parts are in site order)
_SORT_KEY = {"profiles": "step", "flex": "interval", "ev_sessions": "departure_step", "demand_response": "interval",
             "flex_bids": "interval"}


def merge_part_tables(results: Path, parts: int) -> None:
    """The prosumer parts' tables (``<table>.part<i>.parquet``) into one ``<table>.parquet``
    each, in site order, as one prosumers federate writes them; the parts are removed.

    ``profiles`` has a row per step and participant (participants within a step): the
    parts are concatenated and stably sorted by step; likewise ``flex`` (flexible
    devices, when the study has any), ``demand_response`` and ``flex_bids`` by interval and ``ev_sessions`` by departure step
    (each part sorts its sessions by departure step, then site order). Every part drained at the same
    market times (federates.common.tables), so row group j of every part holds the
    same steps: the merge goes one row group at a time (memory bounded by a chunk)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from federates.common.tables import TableWriter

    if parts == 1:
        return
    tables = [t for t in ("prosumers", "profiles", "flex", "ev_sessions", "demand_response", "flex_bids")
              if (results / f"{t}.part0.parquet").is_file()]
    with TableWriter(results.parent) as writer:
        for table in tables:
            files = [pq.ParquetFile(results / f"{table}.part{i}.parquet") for i in range(parts)]
            groups = {f.num_row_groups for f in files}
            pieces = ([[f.read_row_group(j) for f in files] for j in range(groups.pop())] if len(groups) == 1
                      else [[f.read() for f in files]])
            for piece in pieces:
                df = pd.concat([t.to_pandas() for t in piece], ignore_index=True)
                if table in _SORT_KEY:
                    df = df.sort_values(_SORT_KEY[table], kind="stable", ignore_index=True)
                writer.append({table: df})
            for f in files:
                f.close()
    for table in tables:
        for i in range(parts):
            (results / f"{table}.part{i}.parquet").unlink()


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
    manifests = _host_manifests(runs)
    problems = _placement_problems(runs, manifests)
    files = _collected_files(runs)
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
    first = manifests[runs[0]]
    hosts = [{**m["host"], "run_dir": str(r.resolve()), "wall_s": m["wall_s"]} for r, m in manifests.items()]
    federates = [{**f, "host": m["host"]["name"]} for m in manifests.values() for f in m["federates"]]
    wall = max(float(m["wall_s"]) for m in manifests.values())
    write_manifest(study, "federation", "ok", wall, federates=federates,
                   extra={"broker_port": first.get("broker_port"), "hosts": hosts})
    return study, wall


def _host_manifests(runs: list[Path]) -> dict[Path, dict]:
    """Each folder's manifest; ConfigError naming each folder that is not a finished
    host part of a federation across hosts, or is listed twice."""
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
    return manifests


def _placement_problems(runs: list[Path], manifests: dict[Path, dict]) -> list[Problem]:
    """What is wrong with the hosts' parts together: another config than the first
    folder's, a federate run twice or nowhere, not exactly one broker host."""
    problems: list[Problem] = []
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
    return problems


def _collected_files(runs: list[Path]) -> dict[str, list[Path]]:
    """Each file to collect (path relative to its run folder) -> the folders that hold it."""
    files: dict[str, list[Path]] = {}
    for r in runs:
        for f in sorted(x for x in r.rglob("*") if x.is_file()):
            rel = f.relative_to(r).as_posix()
            if not any(Path(rel).match(pat) and (rel.count("/") == pat.count("/")) for pat in _NOT_COLLECTED):
                files.setdefault(rel, []).append(r)
    return files
