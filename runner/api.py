"""The Python API of tecosim, importable as ``tecosim`` (``tecosim/__init__.py``
re-exports these names; docs/api.md).

One code path: ``tecosim run | collect | report | compare`` parse their arguments and
call these functions, which do the work and print what the command prints (nothing
with ``quiet=True``, the API's default). Errors are the command's: a bad config or
argument raises :class:`~federates.common.errors.ConfigError` naming every field (the
command's exit 2), a failed run :class:`~federates.common.errors.FederationError`
(exit 1).

* :func:`run`: run a study from a config file or dict, with overrides; a :class:`Run`.
* :func:`open_run`: an existing run folder as a :class:`Run`.
* :class:`Run`: its results tables as pandas DataFrames, read lazily from Parquet
  (:mod:`runner.run_folder`, the one reader), its KPIs (:mod:`runner.kpis`, the one
  definition), resolved config, manifest, report (:mod:`runner.report`) and figures.
* :func:`compare`: several runs side by side (:mod:`runner.compare`).

The implementation lives on the runner's floor (the CLI calls it); the ``tecosim``
package above it only re-exports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from federates.common.errors import ConfigError, Problem
from runner.run_folder import RunFolder, check_run_dirs

if TYPE_CHECKING:
    from federates.common.config import StudyFile
    from federates.common.study import Study
    from runner.report import Plot

__all__ = [
    "ENGINES",
    "Comparison",
    "ConfigLike",
    "Engine",
    "Overrides",
    "Run",
    "SweepResult",
    "Tables",
    "collect",
    "compare",
    "finish_run",
    "load",
    "open_run",
    "run",
    "sweep",
]

#: a study: the path of a study YAML file, or its sections as a dict
ConfigLike = str | os.PathLike[str] | Mapping[str, Any]
#: overrides: ``{"market.topology": "p2p"}`` (Python values, taken as they are) or
#: ``["market.topology=p2p"]`` (``--set`` strings, values parsed as YAML)
Overrides = Mapping[str, Any] | Sequence[str]
Engine = Literal["federation", "in_process", "inprocess"]

#: the engine names the API accepts -> the name the runner (and the manifest) uses
ENGINES: dict[str, str] = {"federation": "federation", "in_process": "inprocess", "inprocess": "inprocess"}


# ---------------------------------------------------------------------------- config


def load(config: ConfigLike, overrides: Overrides | None = None, *,
         base_dir: str | os.PathLike[str] | None = None) -> StudyFile:
    """The validated study (``federates.common.config.StudyFile``, every default
    filled in) of a config file or dict, with ``overrides`` applied.

    A dict goes through the same loader as a file (a top-level ``base:`` names a study
    file to start from, relative to ``base_dir``, default the working folder); a
    file's ``base_dir`` is its folder. Raises ConfigError listing every problem, each
    naming its field (``market.topology: ...``) and the allowed values.
    """
    from federates.common.config import load_config, load_config_dict

    if isinstance(overrides, str):
        raise ConfigError([Problem("overrides", f"a single string {overrides!r}",
                                   "a dict {'section.key': value} or a list of 'section.key=value' strings")],
                          "overrides")
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = list(overrides)
    if isinstance(config, Mapping):
        return load_config_dict(config, overrides, base_dir=Path(base_dir) if base_dir is not None else Path("."))
    return load_config(Path(config), overrides)


def _config_dir(config: ConfigLike, base_dir: str | os.PathLike[str] | None) -> Path:
    """Where the study's relative input files are (a feeder path, a weather file)."""
    if base_dir is not None:
        return Path(base_dir)
    return Path(".") if isinstance(config, Mapping) else Path(config).parent


def _engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError([Problem("engine", f"unknown engine {engine!r}", "federation, in_process")], "arguments")
    return ENGINES[engine]


# ---------------------------------------------------------------------------- a run folder


class Tables(Mapping[str, pd.DataFrame]):
    """A run's results tables by name (``results/<name>.parquet``): each read into a
    pandas DataFrame on first access, then kept. Listing the names reads no table.
    Columns and units: docs/outputs.md."""

    def __init__(self, folder: RunFolder) -> None:
        self._folder = folder
        self._read: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._read:
            if not self._folder.has_table(name):
                raise KeyError(f"no table {name!r} in {self._folder.path}; it has: {', '.join(self) or 'none'}")
            self._read[name] = self._folder.read_table(name)
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._folder.table_names())

    def __len__(self) -> int:
        return len(self._folder.table_names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._folder.has_table(name)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The names of the tables read so far, in the order they were read."""
        return tuple(self._read)

    def __repr__(self) -> str:
        return f"<tables of {self._folder.path}: {', '.join(self)}>"


class Run:
    """One run folder of ``tecosim run`` (or :func:`run`), opened for reading.

    Nothing is read when it is opened: the manifest, the resolved config and each
    table are read on first use. Units are in the column and KPI names (``_kw``,
    ``_kwh``, ``_pu``, ``_usd_per_kwh``, ``_min``; docs/outputs.md).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._folder = RunFolder(self.path)
        #: the results tables, name -> DataFrame, each read on first access
        self.tables: Tables = Tables(self._folder)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -------------------------------------------------------------- what ran

    @property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json``: what ran and how it ended (status, engine, seed, wall_s
        [s], versions, git commit, the command line, ``summary``: the KPI totals)."""
        return self._folder.manifest

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config (``config.resolved.yaml``: every default and override
        applied) as nested dicts of plain values, keyed as in a study file (durations
        in seconds)."""
        return self._folder.config

    @property
    def study(self) -> StudyFile:
        """The resolved config validated (``federates.common.config.StudyFile``)."""
        return self._folder.cfg

    @property
    def engine(self) -> str:
        """``federation`` or ``inprocess`` (the manifest's)."""
        return str(self.manifest.get("engine", "?"))

    @property
    def status(self) -> str:
        """``ok``, or ``failed`` with the manifest's ``reason``."""
        return str(self.manifest.get("status", "?"))

    # -------------------------------------------------------------- results

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Results table ``name`` (``results/<name>.parquet``) as a DataFrame; with
        ``columns`` only those are read (not kept: :attr:`tables` keeps whole tables).
        KeyError names the tables the run has."""
        if columns is None:
            return self.tables[name]
        if name not in self.tables:
            return self.tables[name]  # the KeyError naming the tables
        return self._folder.read_table(name, columns)

    @property
    def kpis(self) -> dict[str, float]:
        """The KPI totals over the study, key -> value (``runner.kpis.STUDY_KPIS``:
        ``energy_traded_kwh`` [kWh], ``mean_price_usd_per_kwh`` [USD/kWh],
        ``curtailed_kwh`` [kWh], ``violation_min_before`` / ``_after`` [min],
        ``v_min_pu`` / ``v_max_pu`` [pu], ``grid_import_kwh``, ``grid_export_kwh``,
        ``losses_kwh`` [kWh], ...): the run's summary, as ``tecosim run`` printed it
        (manifest ``summary``; computed from the kpis table when the run has none).
        Units: :meth:`kpi_table`."""
        from runner.kpis import summary_of

        return dict(summary_of(self._folder))

    def kpi_table(self) -> pd.DataFrame:
        """The KPI totals as a table: columns ``kpi`` (key), ``name``, ``unit``, ``value``."""
        from runner.kpis import name_of, unit_of

        k = self.kpis
        return pd.DataFrame({"kpi": list(k), "name": [name_of(x) for x in k], "unit": [unit_of(x) for x in k],
                             "value": list(k.values())})

    @cached_property
    def kpis_per_interval(self) -> pd.DataFrame:
        """The kpis table: one row per market interval (``results/kpis.parquet``, or
        computed from the tables it is made of; docs/outputs.md)."""
        from runner.kpis import kpis_of

        k = kpis_of(self._folder)
        if k is None:
            raise KeyError(f"{self.path} has no kpis table and not the tables to compute it from")
        return k

    # -------------------------------------------------------------- report

    def report(self, *, quiet: bool = True) -> Path:
        """Write ``report.html`` (self-contained) and ``report/<figure>.png`` into the
        run folder (``runner.report``); returns the HTML path."""
        from runner.report import write_report

        return write_report(self.path, quiet=quiet)

    def figures(self, ids: Sequence[str] | None = None) -> dict[str, Plot]:
        """The report's figures the run has data for, id -> ``Plot`` (``.fig`` a
        matplotlib Figure on its own Agg canvas, ``.title``, ``.caption``); a
        notebook shows a Plot as its PNG. ``ids`` (default all): e.g.
        ``voltage_envelope``, ``market``, ``grid_exchange`` (``runner.report.FIGURE_IDS``)."""
        from runner.report import FIGURE_IDS, make_figures

        if ids is not None:
            bad = [i for i in ids if i not in FIGURE_IDS]
            if bad:
                raise ConfigError([Problem("ids", f"unknown figure(s) {', '.join(bad)}", ", ".join(FIGURE_IDS))],
                                  "figures")
        plots = {p.id: p for p in make_figures(self.path)}
        return plots if ids is None else {i: plots[i] for i in ids if i in plots}


def open_run(path: str | os.PathLike[str]) -> Run:
    """An existing run folder (``tecosim run``'s or :func:`run`'s) as a :class:`Run`.
    ConfigError when ``path`` is not one (no manifest.json or config.resolved.yaml)."""
    check_run_dirs([Path(path)])
    return Run(path)


# ---------------------------------------------------------------------------- running


def run(config: ConfigLike, *, overrides: Overrides | None = None, out: str | os.PathLike[str] | None = None,
        engine: Engine = "federation", report: bool = False, quiet: bool = True,
        base_dir: str | os.PathLike[str] | None = None, federates: Sequence[str] | None = None,
        broker: bool = False) -> Run:
    """Run a study, as ``tecosim run`` does, and return its run folder as a :class:`Run`.

    ``config``: a study YAML file or a dict of its sections (validated by the same
    loader: :func:`load`); ``overrides``: ``{"market.topology": "p2p",
    "study.duration": "2h"}``; ``out``: the run folder (default
    ``runs/<study>-<UTC stamp>``); ``engine``: ``federation`` (a HELICS broker and
    federate processes) or ``in_process`` (one process; the same tables).
    ``report``: also write report.html (:meth:`Run.report`); ``quiet=False`` prints
    what the command prints (notes, a progress bar on stderr, the summary).
    ``base_dir``: where a dict's relative paths are (default the working folder).
    ``federates`` / ``broker``: across hosts, this host's part (``--federates``,
    ``--broker``; README "Running a federation across hosts").

    After the run: its kpis table, conservation check, loss and monthly tables and
    summary (:func:`finish_run`). Raises ConfigError (bad config, field named) before
    anything runs, FederationError when the run fails (its manifest says why).
    """
    from federates.common import keys
    from runner.launch import default_run_dir, prepare_run, run_study
    from runner.progress import Progress

    eng = _engine(engine)
    cfg = load(config, overrides, base_dir=base_dir)
    chosen, broker_here = _placement(cfg, eng, federates, broker)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    study = prepare_run(cfg, run_dir, config_dir=_config_dir(config, base_dir))
    if not quiet:
        for note in cfg._notes:  # also at the top of the run's config.resolved.yaml
            print(f"tecosim: note: {note}", file=sys.stderr)
        where = "" if chosen is None else f" (this host: {', '.join(chosen)}" + \
            (", broker" if broker_here else "") + f"; broker {cfg.federation.broker_address})"
        print(f"tecosim: running {cfg.study.name} ({eng}) in {study.run_dir}{where}", flush=True)
    bar = Progress(cfg.timeline.duration_s, label="tecosim run", enabled=not quiet)
    try:
        with _command_line(config, overrides, eng):
            wall = run_study(study, eng, progress=bar.update, federates=chosen, broker_here=broker_here)
        bar.finish()
    finally:
        bar.close()
    if chosen is not None and len(chosen) < len(keys.federate_names(cfg.prosumers.federates)):
        if not quiet:
            print(f"tecosim: this host's federates ({', '.join(chosen)}) finished in {wall:.1f} s; "
                  f"results in {study.run_dir / 'results'}. Join every host's run folder into one run with: "
                  f"tecosim collect RUN_A RUN_B ... --out RUN", flush=True)
        return Run(study.run_dir)
    finish_run(study, eng, wall, quiet=quiet, report=report)
    return Run(study.run_dir)


def _placement(cfg: StudyFile, engine: str, federates: Sequence[str] | None,
               broker: bool) -> tuple[list[str] | None, bool]:
    """``--federates`` / ``--broker``: the federates to run here (None: all) and
    whether the broker runs here; ConfigError (exit 2) naming the flag."""
    from runner.launch import select_federates

    if federates is None and not broker:
        return None, True
    problems = []
    if engine != "federation":
        problems.append(Problem("--federates/--broker", f"only with --engine federation, not {engine}",
                                "--engine federation"))
    if cfg.federation.broker_address is None:
        problems.append(Problem("federation.broker_address", "is null: the broker listens on 127.0.0.1 only, "
                                "so --federates / --broker cannot join hosts",
                                "HOST[:PORT] of the broker host (in the config or --set)"))
    if problems:
        raise ConfigError(problems, "arguments")
    wanted = None if federates is None else list(federates)
    chosen = select_federates(cfg, wanted)
    return (None if wanted is None else chosen), bool(broker or wanted is None)


@contextmanager
def _command_line(config: ConfigLike, overrides: Overrides | None, engine: str) -> Iterator[None]:
    """The manifest's ``command_line`` of a run started from Python (the CLI sets its
    own argv; a notebook kernel's sys.argv says nothing about the run)."""
    from runner import launch

    if launch.COMMAND_LINE:  # tecosim run: its argv
        yield
        return
    what = "<dict>" if isinstance(config, Mapping) else str(config)
    sets = ([f"{k}={v!r}" for k, v in overrides.items()] if isinstance(overrides, Mapping)
            else list(overrides or []))
    launch.COMMAND_LINE[:] = ["tecosim.run", what, f"engine={engine}", *sets]
    try:
        yield
    finally:
        launch.COMMAND_LINE.clear()


def collect(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, report: bool = False,
            quiet: bool = True) -> Run:
    """Join the run folders of one federation across hosts (``run(..., federates=...)``
    on each host) into the complete run folder ``out`` (new), then finish it as
    :func:`run` does (``tecosim collect``). ConfigError when the folders are not the
    parts of one run."""
    from runner.launch import collect_runs

    dirs = [Path(r) for r in runs]
    check_run_dirs(dirs)
    study, wall = collect_runs(dirs, Path(out))
    if not quiet:
        print(f"tecosim collect: {len(dirs)} host folders joined into {study.run_dir}", flush=True)
    finish_run(study, "federation", wall, quiet=quiet, report=report)
    return Run(study.run_dir)


def finish_run(study: Study, engine: str, wall: float, *, quiet: bool, report: bool) -> None:
    """A complete run's KPIs, conservation check, loss and monthly tables, summary and report.

    Each reads the results tables in chunks of whole market intervals (bounded memory
    for year-long runs), never whole."""
    import json

    from runner.kpis import flex_summary, run_kpis, summary
    from runner.losses_table import write_loss_tables
    from runner.months import write_monthly
    from runner.results import check_conservation, format_summary, live_conservation_rows

    cfg = study.cfg
    k = run_kpis(cfg, study.run_dir)
    k.to_parquet(study.run_dir / "results" / "kpis.parquet", index=False)
    warn = cfg.feeder.conservation == "warn"
    # exit 1, manifest failed when a balance is broken (feeder.conservation: warn: a warning)
    post_run = check_conservation(k, study.run_dir, warn=warn)
    write_loss_tables(cfg, study.run_dir)
    write_monthly(cfg, study.run_dir, k)
    s = summary(k)
    s.update(flex_summary(RunFolder(study.run_dir)))  # with EVs, heat pumps / ACs
    s["conservation_broken"] = broken = live_conservation_rows(study.run_dir)
    if warn and (broken or post_run):
        print(f"tecosim: warning: {broken} live conservation check(s) broke (feeder.conservation: warn; "
              f"rows in {study.run_dir / 'results' / 'conservation.parquet'})"
              + "".join(f"; after the run: {m}" for m in post_run), file=sys.stderr)
    manifest_path = study.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["summary"] = s
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    text = format_summary(s, wall, study.run_dir, engine)
    (study.run_dir / "summary.txt").write_text(text + "\n")
    if not quiet:
        print(text, flush=True)
    if report:
        _report_after_run(study.run_dir, quiet)


def _report_after_run(run_dir: Path, quiet: bool) -> None:
    """The run is complete and its folder written: a report that fails is a warning."""
    try:
        from runner.report import write_report

        write_report(run_dir, quiet=quiet)  # prints its path unless quiet
    except Exception as e:
        print(f"tecosim: warning: the run is complete, but its report could not be written ({e!r}); "
              f"retry with: tecosim report {run_dir}", file=sys.stderr)


# ---------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` wrote: ``compare.html`` (self-contained), one PNG per
    figure and ``compare_kpis.csv`` in one folder."""

    html: Path

    @property
    def folder(self) -> Path:
        return self.html.parent

    @cached_property
    def kpis(self) -> pd.DataFrame:
        """``compare_kpis.csv``: columns ``kpi``, ``unit``, then one per run (its label),
        each KPI's total over the run's study, full precision."""
        from runner.compare import CSV_FILE

        return pd.read_csv(self.folder / CSV_FILE)


def compare(runs: Sequence[Run | str | os.PathLike[str]], out: str | os.PathLike[str] | None = None, *,
            labels: Sequence[str] | None = None) -> Comparison:
    """Compare completed runs side by side (``tecosim compare``): the KPI table and
    overlaid figures in ``out/compare.html`` (default ``runs/compare-<UTC stamp>``).
    ``labels`` default to the config keys in which the runs differ
    (``controllers.enabled=false``), else the folder names. ConfigError names a path
    that is not a completed run, or a wrong number of labels."""
    from runner.compare import default_compare_dir, write_compare

    dirs = [r.path if isinstance(r, Run) else Path(r) for r in runs]
    check_run_dirs(dirs, need_kpis=True)
    folder = Path(out) if out is not None else default_compare_dir()
    return Comparison(write_compare(dirs, folder, labels=None if labels is None else list(labels)))


# ---------------------------------------------------------------------------- sweeping


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` ran: one run folder per point (and seed) under ``folder``,
    ``sweep.json`` (status of every run) and ``sweep.parquet`` (a row per run: point,
    the axes' values, seed, status, KPIs; docs/outputs.md)."""

    folder: Path
    exit_code: int
    """0 when every run ended ok, 1 when some failed (their errors in :attr:`table`)."""
    compare_html: Path | None

    @cached_property
    def table(self) -> pd.DataFrame:
        """``sweep.parquet`` as a DataFrame: a row per run, KPI columns."""
        return pd.read_parquet(self.folder / "sweep.parquet")

    @property
    def runs(self) -> list[Run]:
        """The runs that ended ok, in the sweep's order."""
        t = self.table
        return [open_run(self.folder / name) for name, status in zip(t["run"], t["status"], strict=True)
                if status == "ok"]


def _axis_text(value: Any) -> str:
    """A Python value as the YAML text a ``--set`` value is parsed from (JSON is YAML)."""
    import json

    return value if isinstance(value, str) else json.dumps(value)


def sweep(config: str | os.PathLike[str], axes: Mapping[str, Sequence[Any]] | Sequence[str] = (), *,
          seeds: int | None = None, jobs: int = 1, engine: Engine = "federation",
          out: str | os.PathLike[str] | None = None, client: Any = None, report: bool = True,
          quiet: bool = True) -> SweepResult:
    """Run the cartesian grid of ``axes`` over the study file ``config`` (``tecosim
    sweep``): ``axes`` as ``{"prosumers.count": [20, 40], "controllers.enabled": [True,
    False]}`` (one value = an override common to every point) or ``--set`` strings
    ``["prosumers.count=20,40"]``; ``seeds`` N runs every point with the study seeds
    S..S+N-1 (S the config's ``study.seed``) and the comparison shows each KPI's mean
    and 95 % Student-t interval; ``jobs`` runs at a time on this machine, or ``client``
    (a ``dask.distributed.Client``) runs each as a task on its cluster. Every point is
    validated before anything runs (ConfigError names them all). KeyboardInterrupt
    stops every run and propagates."""
    from runner.sweep import run_sweep

    if isinstance(axes, Mapping):
        sets = [f"{key}={','.join(_axis_text(v) for v in values)}" if not isinstance(values, str)
                else f"{key}={values}" for key, values in axes.items()]
    else:
        sets = list(axes)
    done = run_sweep(Path(config), sets, seeds=seeds, jobs=jobs, engine=_engine(engine),
                     out=None if out is None else Path(out), client=client, report=report, quiet=quiet)
    return SweepResult(done.out_dir, int(done.exit_code or 0), done.compare_html)
