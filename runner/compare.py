"""``tecosim compare``: several runs side by side.

From each run folder (``runner.run_folder``): its ``manifest.json`` (its ``summary``),
``config.resolved.yaml`` and ``results/`` (``kpis``, ``voltages``, ``grid``), it writes
into one folder:

- ``compare.html``: a self-contained page (``runner.html``): the runs, how their
  configs differ, the KPI table and overlaid figures;
- one PNG per figure, next to the page;
- ``compare_kpis.csv``: columns ``kpi``, ``unit`` and one column per run (the study
  KPIs of ``runner.kpis``, then the wall time);
- with seed groups (below) also ``compare_ci.csv``: per group and KPI its mean over the
  group's runs and 95 % confidence interval (``runner.confidence``).

Seed groups (Monte Carlo): runs whose resolved configs and engines differ only in
``study.seed`` form a group (:func:`seed_groups`; ``tecosim sweep --seeds N`` names its
points as the groups). When some group has runs of two or more seeds, the page shows
each KPI's mean and Student's t 95 % interval per group (mean ± t(0.975, n-1) · s/√n,
stated on the page) before the runs' own KPIs, and the figures draw per group the mean
over its runs with that interval as a band at each time (the violation bars: the mean
with the interval as error bars).

A run's label is what sets it apart: the config keys whose values differ between
the runs (``controllers.enabled=false``), plus ``engine=`` when the engines differ;
the run folder's name when nothing differs or too much does.

Memory does not grow with the runs' length: the per-step tables (``voltages``,
``grid``) are read in batches of a few columns and reduced to one value per step, or
for a run of more than ``runner.report.MAX_SERIES_POINTS`` steps per bin of whole
steps (:meth:`RunData.step_series`); only the ``kpis`` table (one row per market
interval) is read whole.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from federates.common.errors import ConfigError, Problem
from runner.confidence import LEVEL, STATED, band, interval_table
from runner.kpis import STUDY_KPIS, UNCONVERGED, WALL_TIME, kpis_of, name_of, summary_of, unit_of
from runner.run_folder import CHUNK_ROWS, RunFolder, check_run_dirs, table_file

HTML_FILE = "compare.html"
CSV_FILE = "compare_kpis.csv"
CI_FILE = "compare_ci.csv"
SEED_KEY = "study.seed"

MAX_LABEL_KEYS = 3
"""More differing config keys than this and a run is labelled by its folder name."""

DERIVED_KEYS = frozenset({"prosumers.pv_penetration_base_kw"})
"""Resolved-config keys that follow from others (not set by the user): not labels."""

#: the order of the KPI table: the summary's (``runner.kpis.STUDY_KPIS``), with the steps
#: where control did not converge after the violation minutes
KPI_ORDER = (*(kpi.key for kpi in STUDY_KPIS if kpi is not UNCONVERGED), UNCONVERGED.key)


@dataclass
class RunData:
    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    kpis: pd.DataFrame
    summary: dict[str, Any]

    @property
    def engine(self) -> str:
        return str(self.manifest.get("engine", "?"))

    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.config["study"]["start"])

    def clock(self, t_s: np.ndarray | pd.Series) -> pd.DatetimeIndex:
        """Study time [s] -> the study's own clock (local wall time, no zone)."""
        times = self.start() + pd.to_timedelta(np.asarray(t_s, dtype=float), unit="s")
        return pd.DatetimeIndex(times).tz_localize(None) if times.tz is not None else pd.DatetimeIndex(times)

    @property
    def n_steps(self) -> int:
        study = self.config["study"]
        return max(1, round(float(study["duration"]) / float(study["physics_step"])))

    def step_series(self, name: str, column: str, how: str) -> tuple[np.ndarray, np.ndarray, int] | None:
        """``column`` of a per-step table reduced per step with ``how`` (``max``,
        ``mean``): study times [s] and values, and the steps per point (1, or the bin
        width of a run longer than ``MAX_SERIES_POINTS`` steps: the points are then the
        bins' middles and their max / mean); None when the table or column is missing
        or empty. Read in batches of ``CHUNK_ROWS`` rows, three columns."""
        from runner.report import MAX_SERIES_POINTS, Binned, Bins

        path = table_file(self.path, name)
        try:
            pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffered, iter_batches keeps every batch read
            if not {"step", "t_s", column} <= set(pf.schema_arrow.names):
                return None
            bins = Bins(self.n_steps, MAX_SERIES_POINTS)
            t, val = Binned(bins, "min"), Binned(bins, how)
            for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=["step", "t_s", column]):
                steps = batch.column(0).to_numpy()
                t.add(steps, batch.column(1).to_numpy(zero_copy_only=False))
                val.add(steps, batch.column(2).to_numpy(zero_copy_only=False))
        except (OSError, ValueError, KeyError):
            return None
        present = t.present
        if not present.any():
            return None
        t_s = t.values()[present]
        if bins.binned:
            t_s = t_s + (bins.width - 1) * float(self.config["study"]["physics_step"]) / 2.0
        return t_s, val.values()[present], bins.width


def load_run(path: Path) -> RunData:
    f = RunFolder(path)
    k = kpis_of(f)
    return RunData(f.path, f.manifest, f.config, k, summary_of(f, k))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> ``{"a.b.c": value}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def format_value(v: Any) -> str:
    """A config value as it would be written after ``--set key=`` (YAML spelling)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{int(v)}" if v.is_integer() and abs(v) < 1e15 else f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


ABSENT = "(absent)"


def config_differences(runs: Sequence[RunData]) -> dict[str, list[str]]:
    """Keys (``engine`` first if the engines differ, then config keys in config
    order) whose values differ between the runs -> the formatted value of each run."""
    flat = [flatten(r.config) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out: dict[str, list[str]] = {}
    engines = [r.engine for r in runs]
    if len(set(engines)) > 1:
        out["engine"] = engines
    for key in keys:
        if key in DERIVED_KEYS:
            continue
        values = [format_value(f[key]) if key in f else ABSENT for f in flat]
        if len(set(values)) > 1:
            out[key] = values
    return out


def default_labels(runs: Sequence[RunData]) -> list[str]:
    """The differing keys of each run (``key=value, ...``), else the folder names;
    unique in any case."""
    diff = config_differences(runs)
    if diff and len(diff) <= MAX_LABEL_KEYS:
        labels = [", ".join(f"{k}={vals[i]}" for k, vals in diff.items()) for i in range(len(runs))]
    else:
        labels = [r.path.name for r in runs]
    return unique(labels, [r.path for r in runs])


def unique(labels: list[str], paths: Sequence[Path]) -> list[str]:
    out = list(labels)
    if len(set(out)) < len(out):
        out = [f"{lab} ({p.name})" if out.count(lab) > 1 else lab for lab, p in zip(out, paths, strict=True)]
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):  # still equal (same folder names): number them
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            out[i] = f"{lab} #{seen[lab]}"
    return out


def _seed(run: RunData) -> Any:
    return run.config.get("study", {}).get("seed")


def seed_groups(runs: Sequence[RunData]) -> list[str] | None:
    """A group label per run when some runs differ only in their study seed (the same
    resolved config otherwise, the same engine) and such a group holds two seeds or
    more; else None (no Monte Carlo). Groups are labelled by the config keys in which
    they differ (as :func:`default_labels`), a single group by its study name."""
    keys = []
    for r in runs:
        flat = {k: format_value(v) for k, v in flatten(r.config).items() if k != SEED_KEY and k not in DERIVED_KEYS}
        keys.append(json.dumps([r.engine, flat], sort_keys=True))
    order = list(dict.fromkeys(keys))
    seeds = {key: {format_value(_seed(r)) for r, k in zip(runs, keys, strict=True) if k == key} for key in order}
    if all(len(s) < 2 for s in seeds.values()):
        return None
    reps = [runs[keys.index(key)] for key in order]
    if len(reps) == 1:
        names = [str(reps[0].config.get("study", {}).get("name", reps[0].path.name))]
    else:
        diff = {k: v for k, v in config_differences(reps).items() if k != SEED_KEY}
        names = ([", ".join(f"{k}={vals[i]}" for k, vals in diff.items()) for i in range(len(reps))]
                 if diff and len(diff) <= MAX_LABEL_KEYS else [f"group of {r.path.name}" for r in reps])
        names = unique(names, [r.path for r in reps])
    return [names[order.index(k)] for k in keys]


def kpi_table(runs: Sequence[RunData], labels: Sequence[str]) -> pd.DataFrame:
    """Rows: every summary KPI (the union over runs, known ones first, in
    :data:`KPI_ORDER`), then the wall time; columns ``kpi``, ``unit``, one per run."""
    keys = [k for k in KPI_ORDER if any(k in r.summary for r in runs)]
    for r in runs:
        keys += [k for k in r.summary if k not in keys]
    rows = []
    for key in keys:
        rows.append({"kpi": key, "unit": unit_of(key),
                     **{lab: _number(r.summary.get(key)) for lab, r in zip(labels, runs, strict=True)}})
    rows.append({"kpi": WALL_TIME.key, "unit": WALL_TIME.unit,
                 **{lab: _number(r.manifest.get("wall_s")) for lab, r in zip(labels, runs, strict=True)}})
    return pd.DataFrame(rows, columns=["kpi", "unit", *labels])


def _fmt_kpi(v: float, unit: str) -> str:
    """A KPI value for the page: voltages and prices to 4 decimals, counts whole."""
    if v is None or not math.isfinite(v):
        return "n/a"
    if unit in ("pu", "USD/kWh"):
        return f"{v:.4f}"
    if unit in ("min", "steps"):
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def default_compare_dir(root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = root / f"compare-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def parse_labels(text: str | None, n_runs: int) -> list[str] | None:
    """``--labels a,b,c`` -> a list of ``n_runs`` labels (ConfigError otherwise)."""
    if text is None:
        return None
    labels = [s.strip() for s in text.split(",")]
    if len(labels) != n_runs or any(not s for s in labels) or len(set(labels)) != n_runs:
        raise ConfigError([Problem("--labels", f"got {len(labels)} label(s) for {n_runs} run(s): {text!r}",
                                   f"{n_runs} distinct non-empty labels, comma-separated")], "arguments")
    return labels


# ---------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _styles(n: int) -> list[dict[str, Any]]:
    """A colour and a line style per run (styles cycle so that equal curves stay visible)."""
    from matplotlib import colormaps

    dashes = ["-", "--", "-.", ":"]
    if n <= 10:
        cmap = colormaps["tab10"]
        return [{"color": cmap(i), "linestyle": dashes[i % 4]} for i in range(n)]
    cmap = colormaps["viridis"]
    return [{"color": cmap(i / (n - 1)), "linestyle": dashes[i % 4]} for i in range(n)]


def _time_axis(ax, spans_days: bool) -> None:
    import matplotlib.dates as mdates

    fmt = "%m-%d %H:%M" if spans_days else "%H:%M"
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))
    ax.set_xlabel("study clock, local time [" + ("MM-DD hh:mm" if spans_days else "hh:mm") + "]")
    ax.grid(True, alpha=0.3)


def _new_axes(title: str, ylabel: str):
    """A figure on its own Agg canvas (no pyplot: the caller's backend, e.g. a notebook's
    inline one, is left alone, and nothing is kept in pyplot's figure registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(9.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return fig, ax


def _interval_steps(run: RunData, column: str) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """A per-interval KPI as a step curve: x = interval starts plus the last end."""
    k = run.kpis
    interval_s = float(run.config["study"]["market_interval"])
    t_s = np.append(k["t_s"].to_numpy(dtype=float), float(k["t_s"].iloc[-1]) + interval_s) if len(k) else np.array([])
    y = k[column].to_numpy(dtype=float)
    return run.clock(t_s), np.append(y, y[-1]) if len(y) else y


def _legend_kw(n: int) -> dict[str, Any]:
    """A legend of ``n`` curves: inside the axes, or beside them when there are many."""
    return {"fontsize": "small", "loc": "best"} if n <= 6 else \
        {"fontsize": "x-small", "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}


@dataclass
class _Overlay:
    """The runs' curves overlaid in one figure each: one colour and line style per run
    (``styles``), one time axis for all (``spans_days``: dates on it)."""

    runs: Sequence[RunData]
    labels: Sequence[str]
    styles: list[dict[str, Any]]
    spans_days: bool

    @property
    def legend_kw(self) -> dict[str, Any]:
        return _legend_kw(len(self.runs))

    def per_step(self, fig_id, title, ylabel, table, column, how, caption, extra=None):
        """``column`` of the per-step ``table`` reduced per step with ``how`` (max, mean)."""
        from runner.html import Figure

        fig, ax = _new_axes(title, ylabel)
        missing, binned = [], []
        for r, lab, st in zip(self.runs, self.labels, self.styles, strict=True):
            s = r.step_series(table, column, how)
            if s is None:
                missing.append(lab)
                continue
            t_s, y, width = s
            if width > 1:
                binned.append(f"{lab} ({width} steps)")
            ax.plot(r.clock(t_s), y, label=lab, linewidth=1.2, **st)
        if extra is not None:
            extra(ax)
        _time_axis(ax, self.spans_days)
        ax.legend(**self.legend_kw)
        note = f" No {table} table in: {', '.join(missing)}." if missing else ""
        if binned:
            note += (f" Long runs drawn per bin of whole steps (the {'maximum' if how == 'max' else 'mean'} "
                     f"over the bin, at its middle): {', '.join(binned)}.")
        return Figure(fig_id, title, _png(fig), caption + note)

    def per_interval(self, fig_id, title, ylabel, column, caption, fallback=None):
        """The kpis table's ``column`` as steps over the market intervals (``fallback``
        for a run whose ``column`` is missing or all NaN)."""
        from runner.html import Figure

        fig, ax = _new_axes(title, ylabel)
        notes = []
        for r, lab, st in zip(self.runs, self.labels, self.styles, strict=True):
            col = column
            if fallback is not None and (column not in r.kpis or r.kpis[column].isna().all()):
                col = fallback
                notes.append(lab)
            if col not in r.kpis:
                continue
            x, y = _interval_steps(r, col)
            ax.step(x, y, where="post", label=lab, linewidth=1.3, **st)
        _time_axis(ax, self.spans_days)
        ax.legend(**self.legend_kw)
        note = (f" Mean peer trade price where the market sets no single clearing price: {', '.join(notes)}."
                if notes else "")
        return Figure(fig_id, title, _png(fig), caption + note)


BAND_NOTE = (" Line: the mean over each group's runs (seeds); band: the 95 % confidence interval of that mean "
             "at each time, mean ± t(0.975, n-1) · s/√n (none where a group has one run).")


@dataclass
class _Bands:
    """The seed groups' curves, one figure each: per group the mean over its runs and
    the t interval of the mean at each time as a band (``runner.confidence.band``);
    the same figures as :class:`_Overlay`."""

    groups: list[tuple[str, list[RunData]]]
    styles: list[dict[str, Any]]
    spans_days: bool

    @property
    def legend_kw(self) -> dict[str, Any]:
        return _legend_kw(len(self.groups))

    def _draw(self, ax, rep: RunData, b: pd.DataFrame, lab: str, st: dict[str, Any], step: bool) -> None:
        x = rep.clock(b.index.to_numpy(dtype=float))
        n = int(b["n"].max())
        kw = {"label": f"{lab} (mean of {n})", "linewidth": 1.3, **st}
        if step:
            ax.step(x, b["mean"], where="post", **kw)
            ax.fill_between(x, b["low"], b["high"], step="post", color=st["color"], alpha=0.2, linewidth=0)
        else:
            ax.plot(x, b["mean"], **kw)
            ax.fill_between(x, b["low"], b["high"], color=st["color"], alpha=0.2, linewidth=0)

    def per_step(self, fig_id, title, ylabel, table, column, how, caption, extra=None):
        from runner.html import Figure

        fig, ax = _new_axes(title, ylabel)
        missing = []
        for (lab, runs), st in zip(self.groups, self.styles, strict=True):
            curves = []
            for r in runs:
                s = r.step_series(table, column, how)
                if s is not None:
                    curves.append(pd.Series(s[1], index=s[0]))
            if not curves:
                missing.append(lab)
                continue
            self._draw(ax, runs[0], band(curves), lab, st, step=False)
        if extra is not None:
            extra(ax)
        _time_axis(ax, self.spans_days)
        ax.legend(**self.legend_kw)
        note = f" No {table} table in: {', '.join(missing)}." if missing else ""
        return Figure(fig_id, title, _png(fig), caption + BAND_NOTE + note)

    def per_interval(self, fig_id, title, ylabel, column, caption, fallback=None):
        from runner.html import Figure

        fig, ax = _new_axes(title, ylabel)
        notes = []
        for (lab, runs), st in zip(self.groups, self.styles, strict=True):
            curves = []
            for r in runs:
                col = column
                if fallback is not None and (column not in r.kpis or r.kpis[column].isna().all()):
                    col = fallback
                    notes.append(r.path.name)
                if col not in r.kpis or not len(r.kpis):
                    continue
                interval_s = float(r.config["study"]["market_interval"])
                t_s = r.kpis["t_s"].to_numpy(dtype=float)
                y = r.kpis[col].to_numpy(dtype=float)
                # the last interval drawn to its end, as _interval_steps does
                curves.append(pd.Series(np.append(y, y[-1]), index=np.append(t_s, t_s[-1] + interval_s)))
            if curves:
                self._draw(ax, runs[0], band(curves), lab, st, step=True)
        _time_axis(ax, self.spans_days)
        ax.legend(**self.legend_kw)
        note = (f" Mean peer trade price where the market sets no single clearing price: {', '.join(notes)}."
                if notes else "")
        return Figure(fig_id, title, _png(fig), caption + BAND_NOTE + note)


def _spans_days(runs: Sequence[RunData]) -> bool:
    """Whether the runs start on different dates or one lasts more than a day."""
    starts = [r.start() for r in runs]
    ends = [r.start() + pd.Timedelta(seconds=float(r.config["study"]["duration"])) for r in runs]
    return len({s.tz_localize(None).date() if s.tz else s.date() for s in starts}) > 1 or \
        any((e - s) > pd.Timedelta(hours=24) for s, e in zip(starts, ends, strict=True))


def _grouped(runs: Sequence[RunData], groups: Sequence[str]) -> list[tuple[str, list[RunData]]]:
    """(group label, its runs) in order of first appearance."""
    out: dict[str, list[RunData]] = {}
    for r, g in zip(runs, groups, strict=True):
        out.setdefault(g, []).append(r)
    return list(out.items())


def _figures(runs: Sequence[RunData], labels: Sequence[str], groups: Sequence[str] | None = None) -> list:
    """The overlaid figures: one curve per run, or with ``groups`` one mean and band per group."""
    if groups is None:
        styles = _styles(len(runs))
        o = _Overlay(runs, labels, styles, _spans_days(runs))
    else:
        grouped = _grouped(runs, groups)
        styles = _styles(len(grouped))
        o = _Bands(grouped, styles, _spans_days(runs))
    v_max = {float(r.config.get("limits", {}).get("v_max_pu", math.nan)) for r in runs}

    def band(ax):
        for v in sorted(x for x in v_max if math.isfinite(x)):
            ax.axhline(v, color="0.35", linestyle=":", linewidth=1.0, label=f"upper voltage limit {v:g} pu")

    return [
        o.per_step("voltage_max", "Highest customer voltage after control", "voltage [pu]", "voltages", "v_pu",
                   "max", "Per physics step, the highest customer voltage after Volt-VAR, Volt-Watt and "
                   "curtailment; dotted: the upper limit of the voltage band.", extra=band),
        o.per_interval("curtailment", "Curtailed energy per market interval", "curtailed energy [kWh]",
                       "curtailed_kwh", "Energy the DSO curtailed from sellers' trades, per market interval."),
        o.per_step("substation_power", "Substation active power", "active power [kW]", "grid", "source_p_kw",
                   "mean", "Power drawn from the substation per physics step (negative: reverse flow to the grid).",
                   extra=_zero_line_if_negative),
        o.per_interval("clearing_price", "Clearing price per market interval", "price [USD/kWh]",
                       "clearing_price_usd_per_kwh", "Market clearing price of each interval.",
                       fallback="mean_trade_price_usd_per_kwh"),
        o.per_interval("energy_traded", "Energy traded peer-to-peer per market interval", "energy [kWh]",
                       "traded_kwh", "Energy matched between prosumers in each interval."),
        o.per_step("losses", "Feeder losses", "losses [kW]", "grid", "losses_kw", "mean",
                   "Total feeder losses (OpenDSS) per physics step."),
        _violation_bars(runs, labels, styles) if groups is None else _violation_bars_ci(o.groups, styles),
    ]


def _zero_line_if_negative(ax) -> None:
    """Mark 0 kW where the flow reverses (not otherwise: it would squash the curves)."""
    if ax.get_ylim()[0] < 0.0:
        ax.axhline(0.0, color="0.5", linewidth=0.8)


VIOLATION_KINDS = [("violation_min", "voltage"), ("thermal_violation_min", "thermal"),
                   ("vuf_violation_min", "unbalance"), ("substation_violation_min", "substation")]


def _violation_bars(runs: Sequence[RunData], labels: Sequence[str], styles: list[dict[str, Any]]):
    """The violation minutes of each run."""
    return _violation_figure([(lab, _violation_minutes(r), None) for r, lab in zip(runs, labels, strict=True)],
                             styles, "")


def _violation_bars_ci(groups: list[tuple[str, list[RunData]]], styles: list[dict[str, Any]]):
    """The violation minutes per seed group: the mean over its runs, the 95 % t interval
    of the mean as error bars."""
    from runner.confidence import t_interval

    bars = []
    for lab, runs in groups:
        ivs = [t_interval(list(col)) for col in zip(*map(_violation_minutes, runs), strict=True)]
        bars.append((f"{lab} (mean of {len(runs)})", [iv.mean for iv in ivs], [iv.half_width for iv in ivs]))
    return _violation_figure(bars, styles, ": the mean over each group's runs (seeds); error bars: the 95 % "
                             "confidence interval of that mean, mean ± t(0.975, n-1) · s/√n (none for one run)")


def _violation_minutes(r: RunData) -> list[float]:
    """A run's minutes with a violation of each kind, before then after control."""
    return [_number(r.summary.get(f"{key}_{when}")) for key, _ in VIOLATION_KINDS for when in ("before", "after")]


def _violation_figure(bars: list[tuple[str, list[float], list[float] | None]],
                      styles: list[dict[str, Any]], caption_more: str):
    """One bar per (label, minutes, error bar half-widths or None) and kind, before / after."""
    from runner.html import Figure

    title = "Violation minutes before and after control"
    fig, ax = _new_axes(title, "violation time [min]")
    n = len(bars)
    width = 0.8 / max(1, n)
    x = np.arange(2 * len(VIOLATION_KINDS))
    for i, ((lab, y, err), st) in enumerate(zip(bars, styles, strict=True)):
        extra = {} if err is None else {"yerr": np.nan_to_num(err), "capsize": 3}
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(y), width, label=lab, color=st["color"], **extra)
    ax.set_xticks(x, [f"{name}\n{when}" for _, name in VIOLATION_KINDS for when in ("before", "after")])
    ax.set_xlabel("limit, before / after control [-]")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small" if n <= 6 else "x-small")
    return Figure("violations", title, _png(fig),
                  "Minutes with at least one violation of each limit, in the uncontrolled solve "
                  f"(before) and after control{caption_more}.")


# ---------------------------------------------------------------------------- page


def write_compare(run_dirs: Sequence[Path], out_dir: Path, labels: Sequence[str] | None = None,
                  groups: Sequence[str] | None = None) -> Path:
    """Write ``compare.html``, its PNGs and ``compare_kpis.csv`` into ``out_dir``;
    returns the HTML path. ``groups``: a seed group label per run (default: found by
    :func:`seed_groups`); when a group holds two runs or more, also ``compare_ci.csv``
    and the Monte Carlo page (module docstring). ConfigError (exit 2) names a path that
    is not a completed run."""
    from runner.html import Table, Text, page

    run_dirs = [Path(p) for p in run_dirs]
    check_run_dirs(run_dirs, need_kpis=True)
    runs = [load_run(p) for p in run_dirs]
    labels = list(labels) if labels is not None else default_labels(runs)
    if len(labels) != len(runs):
        raise ConfigError([Problem("--labels", f"{len(labels)} label(s) for {len(runs)} run(s)")], "arguments")
    groups = list(groups) if groups is not None else seed_groups(runs)
    if groups is not None and len(groups) != len(runs):
        raise ConfigError([Problem("groups", f"{len(groups)} group(s) for {len(runs)} run(s)")], "arguments")
    if groups is not None and len(set(groups)) == len(groups):
        groups = None  # one run per group: nothing to average
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    kpis = kpi_table(runs, labels)
    kpis.to_csv(out_dir / CSV_FILE, index=False)
    shown = pd.DataFrame({
        "KPI": [name_of(k) for k in kpis["kpi"]],
        "unit": kpis["unit"],
        **{lab: [_fmt_kpi(v, u) for v, u in zip(kpis[lab], kpis["unit"], strict=True)] for lab in labels},
    })

    runs_df = pd.DataFrame({
        "label": labels,
        **({} if groups is None else {"group": groups, "seed": [format_value(_seed(r)) for r in runs]}),
        "run folder": [str(r.path) for r in runs],
        "engine": [r.engine for r in runs],
        "status": [str(r.manifest.get("status", "?")) for r in runs],
        "study": [str(r.manifest.get("study", "")) for r in runs],
        "start": [str(r.config["study"]["start"]) for r in runs],
        "duration [h]": [float(r.config["study"]["duration"]) / 3600.0 for r in runs],
        "wall time [s]": [_number(r.manifest.get("wall_s")) for r in runs],
    })
    diff = config_differences(runs)
    if diff:
        diff_block = Table("Configuration keys that differ", pd.DataFrame(
            [{"key": k, **{lab: v[i] for i, lab in enumerate(labels)}} for k, v in diff.items()]),
            "From each run's config.resolved.yaml (engine: from its manifest).")
    else:
        diff_block = Text("The runs have the same resolved configuration and engine.")
    figures = _figures(runs, labels, groups)
    for f in figures:
        (out_dir / f"{f.id}.png").write_bytes(f.png)
    kpi_blocks = [Table("KPIs over each study", shown, f"Also in {CSV_FILE} (full precision). From each "
                        "run's manifest summary (results/kpis.parquet totals).")]
    if groups is not None:
        ci = ci_table(kpis, labels, groups)
        ci.to_csv(out_dir / CI_FILE, index=False)
        kpi_blocks.insert(0, Table(f"KPIs: mean and {LEVEL:.0%} confidence interval over the seeds",
                                   _ci_shown(ci), f"Each cell: {STATED} (n runs; n/a: one run). Also in "
                                   f"{CI_FILE} (full precision, with s and t)."))
    sections = [
        ("Runs", [Table("Runs", runs_df, float_format="{:,.2f}"), diff_block]),
        ("KPIs", kpi_blocks),
        ("Figures", figures),
    ]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    html_path = out_dir / HTML_FILE
    html_path.write_text(page(f"tecosim compare: {len(runs)} run(s)", f"written {stamp}", sections),
                         encoding="utf-8")
    return html_path


def ci_table(kpis: pd.DataFrame, labels: Sequence[str], groups: Sequence[str]) -> pd.DataFrame:
    """:func:`kpi_table`'s values per seed group: ``compare_ci.csv`` (columns ``group``
    then ``runner.confidence.INTERVAL_COLUMNS``), KPIs in the table's order."""
    per_run = kpis.set_index("kpi")[list(labels)].T
    per_run.insert(0, "group", list(groups))
    return interval_table(per_run, "group", list(kpis["kpi"]), list(kpis["unit"]))


def _ci_shown(ci: pd.DataFrame) -> pd.DataFrame:
    """The CI table for the page: a row per KPI, a column per group: ``mean ± half (n=k)``."""
    def cell(r) -> str:
        if r["n"] == 0:
            return "n/a"
        if r["n"] < 2:
            return f"{_fmt_kpi(r['mean'], r['unit'])} (n=1, no interval)"
        unit = "" if r["unit"] in ("min", "steps") else r["unit"]  # counts: their mean and interval to 0.01
        return f"{_fmt_kpi(r['mean'], unit)} ± {_fmt_kpi(r['half_width'], unit)} (n={r['n']})"

    order = list(dict.fromkeys(ci["group"]))
    kpis = list(dict.fromkeys(ci["kpi"]))
    table = ci.assign(cell=ci.apply(cell, axis=1)).pivot(index="kpi", columns="group", values="cell")
    units = ci.drop_duplicates("kpi").set_index("kpi")["unit"]
    return pd.DataFrame({"KPI": [name_of(k) for k in kpis], "unit": [units[k] for k in kpis],
                         **{g: [table.loc[k, g] for k in kpis] for g in order}})
