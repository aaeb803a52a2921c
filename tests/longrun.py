"""A synthetic long run folder: a real run's results repeated back to back.

``make_long_run(src, dst, repeats)`` writes a run folder whose results tables are
``src``'s repeated ``repeats`` times, each copy shifted by the source's duration
(``step``, ``interval``, ``t_s``, ``t_start_s`` / ``t_end_s``, the interval prefix of
``trade_id``), written the way a streamed run writes them: one Parquet file per
table, appended with ``pyarrow.parquet.ParquetWriter`` in row groups of
``rows_per_group`` rows (or one per copy), so intervals are split across row groups.
Its config is the source's with ``study.duration`` x ``repeats``.

``replicate`` > 1 stands in for a larger population: every per-participant row is
repeated ``replicate`` times within its step / interval, the copies renamed
``<name>r<i>`` (the feeder-wide tables, ``grid``, ``lines``, ``unbalance``,
``control``, ``clearing``, and the ``background`` loss row stay as they are).

The post-run tables (``kpis``, ``loss_allocation``, ``loss_charges``, ``monthly``) are not copied:
they are what is computed on the result. Its reference is the source's own: the
per-interval KPIs and loss rows of the long run are the source's, repeated with the
shifts (tests/unit/test_post_run_stream.py).

Used by tests/unit/test_post_run_stream.py and benchmarks/post_run.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

POST_RUN_TABLES = ("kpis", "loss_allocation", "loss_charges", "monthly")
#: columns naming a participant, per table (replicated with ``replicate`` > 1)
PARTICIPANT_COLUMNS = {
    "voltages": ["participant"], "profiles": ["participant"], "customer_losses": ["participant"],
    "meters": ["meter"], "ami": ["meter"], "settlements": ["participant"], "bids": ["participant"],
    "trades": ["seller", "buyer"], "curtailed_trades": ["seller", "buyer"],
    "curtailment_energy": ["participant"], "curtailments": ["participant"],
    "control_violations": ["participant"], "envelopes": ["participant"],
    "dso_envelopes": ["participant"], "prosumers": ["participant"],
}
KEEP_NAMES = {"grid", "background"}
SKIP_FILES = {"report.html", "summary.txt", "ledger.jsonl"}


def _rename(values: pd.Series, i: int) -> pd.Series:
    if i == 0:
        return values
    s = values.astype(object)
    keep = s.isna() | s.isin(KEEP_NAMES)
    return s.where(keep, s.astype(str) + f"r{i}")


def _replicate(name: str, df: pd.DataFrame, replicate: int) -> pd.DataFrame:
    cols = PARTICIPANT_COLUMNS.get(name)
    if replicate == 1 or not cols or df.empty:
        return df
    copies = []
    for i in range(replicate):
        c = df.copy()
        if i > 0 and name == "customer_losses":
            c = c[c["participant"].astype(str) != "background"]
        for col in cols:
            c[col] = _rename(c[col], i)
        if "trade_id" in c and i > 0:
            c["trade_id"] = c["trade_id"].astype(str) + f"r{i}"
        if "index" in c and name == "prosumers":
            c["index"] = c["index"] + i * len(df)
        copies.append(c)
    out = pd.concat(copies, ignore_index=True)
    key = "step" if "step" in out else ("interval" if "interval" in out else None)
    if key is not None:
        out = out.sort_values(key, kind="stable", ignore_index=True)
    return out


def _shifted(df: pd.DataFrame, r: int, n_steps: int, n_intervals: int, duration_s: float,
             trade_tail: pd.Series | None, trade_head: np.ndarray | None) -> pd.DataFrame:
    if r == 0:
        return df
    out = df.copy()
    if "step" in out:
        out["step"] = out["step"] + r * n_steps
    if "interval" in out:
        out["interval"] = out["interval"] + r * n_intervals
    for col in ("t_s", "t_start_s", "t_end_s"):
        if col in out:
            out[col] = out[col] + r * duration_s
    if trade_tail is not None:
        out["trade_id"] = (trade_head + r * n_intervals).astype(str) + trade_tail
    return out


def make_long_run(src: Path, dst: Path, repeats: int, *, replicate: int = 1,
                  rows_per_group: int | None = None) -> Path:
    """Write the run folder ``dst`` (see the module doc); returns it."""
    src, dst = Path(src), Path(dst)
    cfg = yaml.safe_load((src / "config.resolved.yaml").read_text())
    study = cfg["study"]
    duration_s = float(study["duration"])
    n_intervals = round(duration_s / float(study["market_interval"]))
    n_steps = round(duration_s / float(study["physics_step"]))
    dst.mkdir(parents=True, exist_ok=False)
    for f in src.iterdir():
        if f.is_file() and f.name not in SKIP_FILES:
            shutil.copy2(f, dst / f.name)
    (dst / "logs").mkdir()
    cfg["study"]["duration"] = duration_s * repeats
    cfg["prosumers"]["count"] = int(cfg["prosumers"]["count"]) * replicate
    (dst / "config.resolved.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.pop("summary", None)
    manifest["synthetic"] = {"source": str(src), "repeats": repeats, "replicate": replicate}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (dst / "results").mkdir()
    for path in sorted((src / "results").glob("*.parquet")):
        if path.stem in POST_RUN_TABLES:
            continue
        df = _replicate(path.stem, pd.read_parquet(path), replicate)
        table = pa.Table.from_pandas(df, preserve_index=False)
        trade_tail = trade_head = None
        if "trade_id" in df and len(df):
            parts = df["trade_id"].astype(str).str.split("-", n=1)
            trade_head = parts.str[0].astype(np.int64).to_numpy()
            trade_tail = "-" + parts.str[1]
        repeated = path.stem != "prosumers"
        with pq.ParquetWriter(dst / "results" / path.name, table.schema) as w:
            for r in range(repeats if repeated else 1):
                part = _shifted(df, r, n_steps, n_intervals, duration_s, trade_tail, trade_head)
                w.write_table(pa.Table.from_pandas(part, schema=table.schema, preserve_index=False),
                              row_group_size=rows_per_group)
    return dst


def tiled(df: pd.DataFrame, repeats: int, n_intervals: int, interval_s: float,
          trade_ids: bool = False) -> pd.DataFrame:
    """A per-interval table (``kpis``, ``loss_allocation``, ``loss_charges``) of one
    source run repeated as ``make_long_run`` repeats its inputs: ``interval``, ``t_s``,
    ``time`` and the interval prefix of ``trade_id`` shifted per copy."""
    parts = []
    for r in range(repeats):
        c = df.copy()
        c["interval"] = c["interval"] + r * n_intervals
        if "t_s" in c:
            c["t_s"] = c["t_s"] + r * n_intervals * interval_s
        if "time" in c:
            c["time"] = c["time"] + pd.Timedelta(seconds=r * n_intervals * interval_s)
        if trade_ids:
            has = c["trade_id"].astype(str) != ""
            head = c.loc[has, "trade_id"].astype(str).str.split("-", n=1)
            c.loc[has, "trade_id"] = ((head.str[0].astype(np.int64) + r * n_intervals).astype(str)
                                      + "-" + head.str[1])
        parts.append(c)
    return pd.concat(parts, ignore_index=True)
