"""A run folder, read: its resolved config, its manifest and its results tables.

The one reader of a finished run for everything after it (``runner.results``,
``runner.kpis``, ``runner.report``, ``runner.compare``, ``runner.losses_table``, ``runner.months``):
:class:`RunFolder` opens one (each file read on first use), :func:`check_run_dirs`
says which paths are none.

The results tables of a long run do not fit in memory whole (a year of the default
study: ~21 M rows of ``voltages``, ``meters``, ``profiles`` and ``customer_losses``
each), so they are read in pieces: :func:`interval_chunks` hands out consecutive
ranges of whole market intervals of several tables at once, read row group by row
group with only the columns asked for (:class:`IntervalReader`). Every KPI is per
market interval, so ``runner.kpis.run_kpis`` computes them chunk by chunk with the
same code as the whole-table ``runner.kpis.kpis`` and gets the same numbers: each
interval sees the same rows in the same order. :func:`read_tables` stays for callers
that want the whole tables of a short run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from federates.common.errors import ConfigError, Problem

if TYPE_CHECKING:
    from federates.common.config import StudyFile
    from federates.common.tariff import Tariff

CONFIG_FILE = "config.resolved.yaml"  # federates.common.study.CONFIG_FILE
MANIFEST_FILE = "manifest.json"
RESULTS = "results"
KPIS_FILE = Path(RESULTS) / "kpis.parquet"

#: target rows of the largest table in one chunk of :func:`interval_chunks`: the
#: post-run memory is this chunk of each table read, plus one row group of each, plus
#: the tables' Parquet footers (a few KB per row group and table); a day of the
#: default study (57,600 ``voltages`` rows) is one chunk, a day at 1000 prosumers
#: ~15 chunks of 6 intervals. Measured (benchmarks/post_run.py): 5x this costs ~1.6x
#: the peak memory and saves no time.
CHUNK_ROWS = 100_000


class RunFolder:
    """One run folder of ``tecosim run``, opened for reading; each file is read on
    first use, once (the tables: each time, whole or in chunks)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json`` ({} when the run has none)."""
        path = self.path / MANIFEST_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    @cached_property
    def config(self) -> dict[str, Any]:
        """``config.resolved.yaml`` as written: nested sections of plain values."""
        return yaml.safe_load((self.path / CONFIG_FILE).read_text()) or {}

    @cached_property
    def cfg(self) -> StudyFile:
        """``config.resolved.yaml`` validated (``federates.common.config.validate``)."""
        from federates.common.config import validate

        path = self.path / CONFIG_FILE
        return validate(yaml.safe_load(path.read_text()), base_dir=self.path, source=str(path))

    def table_file(self, name: str) -> Path:
        return table_file(self.path, name)

    def has_table(self, name: str) -> bool:
        return self.table_file(name).is_file()

    def table_names(self) -> list[str]:
        """The names of the results tables the run has (``results/<name>.parquet``), sorted."""
        return sorted(p.stem for p in (self.path / RESULTS).glob("*.parquet"))

    def read_table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One results table whole (:func:`read_table`)."""
        return read_table(self.path, name, columns)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every results table whole (:func:`read_tables`)."""
        return read_tables(self.path)

    @cached_property
    def tariff(self) -> Tariff:
        """The run's retail and feed-in prices per interval (:func:`run_tariff`)."""
        return run_tariff(self.path, self.cfg)

    def chunks(self, columns: Mapping[str, Sequence[str] | None], *,
               chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, dict[str, pd.DataFrame]]]:
        """The tables in ranges of whole market intervals (:func:`interval_chunks`)."""
        return interval_chunks(self.path, self.cfg, columns, chunk_rows=chunk_rows)



def check_run_dirs(paths: Sequence[Path], *, need_kpis: bool = False) -> None:
    """ConfigError (exit 2) naming every path that is not a run folder of ``tecosim run``
    (with ``need_kpis``: not a completed one)."""
    problems = []
    allowed = "a run folder written by tecosim run"
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            problems.append(Problem(f"RUN {p}", "no such folder", allowed))
            continue
        missing = [n for n in (MANIFEST_FILE, CONFIG_FILE) if not (p / n).is_file()]
        if missing:
            problems.append(Problem(f"RUN {p}", f"is not a run folder (no {' or '.join(missing)})", allowed))
            continue
        try:
            json.loads((p / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as e:
            problems.append(Problem(f"RUN {p}", f"unreadable {MANIFEST_FILE}: {e}", allowed))
            continue
        if need_kpis and not (p / KPIS_FILE).is_file():
            problems.append(Problem(f"RUN {p}", f"has no {KPIS_FILE.as_posix()} (the run failed or did not finish)",
                                    "a completed run"))
    if problems:
        raise ConfigError(problems, "arguments")


def read_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every results table whole (short runs; the post-run path reads pieces)."""
    return {p.stem: read_table(run_dir, p.stem) for p in sorted((Path(run_dir) / RESULTS).glob("*.parquet"))}


def read_table(run_dir: Path, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Results table ``name`` whole, with only ``columns`` (None: all)."""
    return pd.read_parquet(table_file(run_dir, name), columns=None if columns is None else list(columns))


def table_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / RESULTS / f"{name}.parquet"


def run_tariff(run_dir: Path, cfg: StudyFile) -> Tariff:
    """The retail and feed-in prices [USD/kWh] of every interval of a run: its
    ``results/tariff.parquet`` (the market's record of the prices it cleared and settled
    each interval at), or the study's tariff (``StudyFile.tariff``) in a run from
    before that table or one that stopped before its last interval."""
    from federates.common.tariff import TABLE, Tariff

    path = table_file(run_dir, TABLE)
    if not path.is_file():
        return cfg.tariff
    df = pd.read_parquet(path)
    if len(df) != cfg.timeline.n_intervals:
        return cfg.tariff
    return Tariff.from_table(df, cfg.study.market_interval_s, kind=cfg.market.tariff.kind)


class IntervalReader:
    """One results table read in market-interval order, a range of whole intervals at a time.

    The table's key is ``step`` (per-step tables; interval = step // steps per
    interval) or else ``interval``. :meth:`take` returns every row whose interval is
    below ``k_end`` and not taken yet, in file order, with the columns asked for (the
    same dtypes as ``pandas.read_parquet``). Row groups are read whole, in file order,
    each once: every row group whose smallest interval (its Parquet statistics, or
    its key column when it has none) is below ``k_end`` is read before the rows are
    split, so the rows of an interval split over row groups, or written out of order,
    are all there; the rest is carried to the next call. Memory: the rows handed out
    plus the carried rows plus one row group; when the table is written in interval
    order (every table of a run is) the carry is less than a row group.
    """

    def __init__(self, path: Path, columns: Sequence[str] | None, steps_per_interval: int,
                 key: str | None = None) -> None:
        self.path = Path(path)
        self.pf = pq.ParquetFile(self.path)
        names = self.pf.schema_arrow.names
        self.key = key or ("step" if "step" in names else "interval")
        if self.key not in names:
            raise KeyError(f"{self.path.name} has no {self.key} column")
        wanted = names if columns is None else [c for c in columns if c in names]
        self.columns = list(dict.fromkeys([self.key, *wanted]))
        self.div = int(steps_per_interval) if self.key == "step" else 1
        md = self.pf.metadata
        self.num_rows = md.num_rows
        col = names.index(self.key)
        self._rg_min = np.array([self._min_interval(i, col) for i in range(md.num_row_groups)], dtype=float)
        self._next = 0
        self._carry: pd.DataFrame | None = None

    def _min_interval(self, i: int, col: int) -> float:
        rg = self.pf.metadata.row_group(i)
        if rg.num_rows == 0:
            return np.inf
        st = rg.column(col).statistics
        if st is not None and st.has_min_max:
            return float(int(st.min) // self.div)
        keys = self.pf.read_row_group(i, columns=[self.key]).column(0).to_numpy()
        return float(int(keys.min()) // self.div)

    def empty(self) -> pd.DataFrame:
        return self.pf.schema_arrow.empty_table().select(self.columns).to_pandas()

    def take(self, k_end: float) -> pd.DataFrame:
        """The rows of every interval below ``k_end`` not taken yet (file order)."""
        frames = [] if self._carry is None else [self._carry]
        pending = np.flatnonzero(self._rg_min[self._next:] < k_end)
        if pending.size:
            last = self._next + int(pending[-1])
            for i in range(self._next, last + 1):
                frames.append(self.pf.read_row_group(i, columns=self.columns,
                                                     use_pandas_metadata=True).to_pandas())
            self._next = last + 1
        if not frames:
            return self.empty()
        buf = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        k = buf[self.key].to_numpy() // self.div
        below = k < k_end
        if below.all():
            self._carry = None
            return buf
        self._carry = buf[~below].reset_index(drop=True)
        return buf[below].reset_index(drop=True)


def interval_chunks(run_dir: Path, cfg: StudyFile, columns: Mapping[str, Sequence[str] | None], *,
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, dict[str, pd.DataFrame]]]:
    """Consecutive ranges of whole market intervals of several results tables.

    ``columns``: table name -> the columns wanted (None: all). Yields ``(intervals,
    tables)``: the interval numbers of the chunk (``0 .. n_intervals - 1`` in order
    over all chunks) and, for each table the run has, its rows of those intervals in
    file order (the last chunk also gets any rows beyond the study's intervals); a
    table the run lacks is left out, as ``read_tables`` would. A chunk spans
    ``chunk_rows`` rows of the largest table (its rows per interval on average), at
    least one interval.
    """
    tl = cfg.timeline
    n = int(tl.n_intervals)
    readers = {name: IntervalReader(table_file(run_dir, name), cols, tl.steps_per_interval)
               for name, cols in columns.items() if table_file(run_dir, name).is_file()}
    per_interval = max([r.num_rows / max(n, 1) for r in readers.values()], default=1.0)
    span = max(1, int(chunk_rows // max(per_interval, 1.0)))
    for k0 in range(0, max(n, 1), span):
        k1 = min(k0 + span, n)
        end = np.inf if k1 >= n else k1
        yield np.arange(k0, max(k1, k0), dtype=np.int64), {name: r.take(end) for name, r in readers.items()}
        pa.default_memory_pool().release_unused()  # the chunk is done: hand freed pages back
