"""The post-run path reads the results tables in pieces and changes no result.

``runner.results.interval_chunks`` hands out ranges of whole market intervals read
row group by row group; ``run_kpis`` and the streamed ``write_loss_tables`` must give,
value for value, the tables of today's whole-table functions, frozen in
tests/reference/post_run_v0.py (the reference). Checked on a real 2 h in-process run
as written, on a copy re-written in row groups of 997 rows (intervals split across
row groups), on a copy with its row groups out of order, and on a synthetic long run
(tests/longrun.py: the run repeated 3 times, shifted), whose KPIs and loss rows must
be the run's own repeated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from runner.config import validate
from runner.losses_table import write_loss_tables
from runner.results import IntervalReader, read_tables, run_kpis, summary
from tests.conftest import DEFAULT, MIDDAY, tecosim
from tests.longrun import make_long_run, tiled
from tests.reference import post_run_v0 as v0

REPEATS = 3
ROWS_PER_GROUP = 997  # voltages: 600 rows per interval, so intervals straddle row groups
CHUNK_ROWS = (1, 1500, 10**9)  # one interval per chunk, 2 intervals, the whole run


def _cfg(run: Path):
    return validate(yaml.safe_load((run / "config.resolved.yaml").read_text()), base_dir=run)


def _rewrite(src: Path, dst: Path, reorder: bool = False) -> Path:
    """A copy of the run whose every table is re-written in row groups of
    ROWS_PER_GROUP rows (``reorder``: those row groups in reverse order)."""
    shutil.copytree(src, dst)
    for f in (dst / "results").glob("*.parquet"):
        t = pq.read_table(f)
        if reorder:
            pieces = [t.slice(i, ROWS_PER_GROUP) for i in range(0, t.num_rows, ROWS_PER_GROUP)][::-1]
            with pq.ParquetWriter(f, t.schema) as w:
                for p in pieces or [t]:
                    w.write_table(p)
        else:
            pq.write_table(t, f, row_group_size=ROWS_PER_GROUP)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stream")
    day = base / "day"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(day), "--quiet", "--no-report", *MIDDAY)
    assert r.returncode == 0, r.stderr
    return {
        "day": day,
        "split": _rewrite(day, base / "split"),
        "reordered": _rewrite(day, base / "reordered", reorder=True),
        "long": make_long_run(day, base / "long", REPEATS, rows_per_group=ROWS_PER_GROUP),
    }


@pytest.fixture(scope="module")
def reference(runs) -> dict[str, dict[str, pd.DataFrame]]:
    """Per variant of the run: today's whole-table kpis and loss tables of its whole
    tables (``read_tables``), as written to Parquet and read back."""
    out = {}
    for variant in ("day", "split", "reordered"):
        run = runs[variant]
        cfg = _cfg(run)
        t = read_tables(run)
        alloc = v0.loss_allocation(cfg, t)
        tables = {"kpis": v0.kpis(cfg, t), "loss_allocation": alloc, "loss_charges": v0.loss_charges(alloc)}
        out[variant] = {name: _roundtrip(df, run.parent / f"ref_{variant}_{name}.parquet")
                        for name, df in tables.items()}
    return out


def _roundtrip(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    df.to_parquet(path, index=False)
    return pd.read_parquet(path)


@pytest.mark.parametrize("variant", ["day", "split", "reordered"])
def test_reader_hands_out_every_row_of_whole_intervals_in_file_order(runs, variant):
    run = runs[variant]
    spi = _cfg(run).timeline.steps_per_interval
    whole = pd.read_parquet(run / "results" / "voltages.parquet", columns=["step", "participant", "v_pu"])
    reader = IntervalReader(run / "results" / "voltages.parquet", ["participant", "v_pu"], spi)
    got = []
    for k_end in (1, 2, 5, 6, 8):
        part = reader.take(k_end)
        k = part["step"].to_numpy() // spi
        assert (k < k_end).all() and (k >= (got[-1][0] if got else 0)).all()
        expect = whole[(whole["step"] // spi < k_end) & (whole["step"] // spi >= (got[-1][0] if got else 0))]
        pd.testing.assert_frame_equal(part, expect.reset_index(drop=True), check_exact=True)
        got.append((k_end, part))
    assert reader.take(np.inf).empty


@pytest.mark.parametrize("chunk_rows", CHUNK_ROWS)
@pytest.mark.parametrize("variant", ["day", "split", "reordered"])
def test_run_kpis_equal_the_whole_table_kpis_exactly(runs, reference, variant, chunk_rows):
    run = runs[variant]
    k = run_kpis(_cfg(run), run, chunk_rows=chunk_rows)
    pd.testing.assert_frame_equal(k, reference[variant]["kpis"], check_exact=True)
    # and the kpis.parquet the run wrote (tecosim run's own post-run path)
    pd.testing.assert_frame_equal(k, pd.read_parquet(runs["day"] / "results" / "kpis.parquet"), check_exact=True)


@pytest.mark.parametrize("chunk_rows", CHUNK_ROWS)
@pytest.mark.parametrize("variant", ["day", "split", "reordered"])
def test_streamed_loss_tables_equal_the_whole_table_ones_exactly(runs, reference, tmp_path, variant, chunk_rows):
    run = shutil.copytree(runs[variant], tmp_path / "run")
    write_loss_tables(_cfg(run), run, chunk_rows=chunk_rows)
    for name in ("loss_allocation", "loss_charges"):
        got = pd.read_parquet(run / "results" / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, reference[variant][name], check_exact=True)
        assert not (run / "results" / f"{name}.parquet.partial").exists()


def test_long_run_kpis_are_the_day_repeated(runs, reference):
    cfg = _cfg(runs["day"])
    n, s = cfg.timeline.n_intervals, cfg.timeline.market_interval_s
    long = runs["long"]
    assert pq.ParquetFile(long / "results" / "voltages.parquet").metadata.num_row_groups > 10
    expect = tiled(reference["day"]["kpis"], REPEATS, n, s)
    for chunk_rows in CHUNK_ROWS:
        k = run_kpis(_cfg(long), long, chunk_rows=chunk_rows)
        pd.testing.assert_frame_equal(k, expect, check_exact=True)
    # the summary: sums over 3 x the intervals in another order: equal to the day's x 3
    # within 1e-12 relative (float summation order); extremes and counts exactly
    day_s, long_s = summary(reference["day"]["kpis"]), summary(k)
    for key, value in day_s.items():
        if key in ("v_min_pu", "v_max_pu", "v_max_before_pu", "mean_price_usd_per_kwh"):
            assert long_s[key] == pytest.approx(value, rel=1e-12, abs=0), key
        else:
            assert long_s[key] == pytest.approx(REPEATS * value, rel=1e-12, abs=1e-12), key
    assert day_s["energy_traded_kwh"] > 0 and day_s["violation_min_before"] > 0


def test_long_run_loss_tables_are_the_day_repeated(runs, reference, tmp_path):
    cfg = _cfg(runs["day"])
    n, s = cfg.timeline.n_intervals, cfg.timeline.market_interval_s
    long = shutil.copytree(runs["long"], tmp_path / "long")
    write_loss_tables(_cfg(long), long, chunk_rows=1500)
    for name in ("loss_allocation", "loss_charges"):
        got = pd.read_parquet(long / "results" / f"{name}.parquet")
        expect = tiled(reference["day"][name], REPEATS, n, s, trade_ids=name == "loss_allocation")
        pd.testing.assert_frame_equal(got, expect, check_exact=True)
        assert pq.ParquetFile(long / "results" / f"{name}.parquet").metadata.num_row_groups > 1
