"""Results streamed in chunks (federates/common/tables.py) equal the tables written in
one piece, and a chunk's buffers hold only the chunk."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from federates.common.config import load_config
from federates.common.tables import StepArrays, TableWriter, chunk_intervals
from federates.common.timeline import Timeline
from runner.engine import run_inprocess
from runner.launch import prepare_run
from tests.conftest import DEFAULT

pytestmark = pytest.mark.feeder

HOUR = ["study.start=2026-06-21T11:00:00-04:00", "study.duration=1h"]


def run(tmp_path, name, *overrides):
    cfg = load_config(DEFAULT, [*HOUR, *overrides])
    return run_inprocess(prepare_run(cfg, tmp_path / name))


@pytest.mark.parametrize("extra", [[], ["meters.reporting_interval=30min", "meters.settle_on_ami=true",
                                        "market.network_aware=envelopes"]])
def test_chunks_of_one_interval_give_the_same_tables(tmp_path, extra):
    whole = run(tmp_path, "whole", *extra)
    chunked = run(tmp_path, "chunked", "study.chunk_intervals=1", *extra)
    assert sorted(whole) == sorted(chunked)
    for name in whole:
        pd.testing.assert_frame_equal(whole[name], chunked[name], check_exact=True, obj=name)
    assert len(whole["voltages"]) == 60 * 40 and len(whole["ami"]) > 0


def test_writer_appends_one_row_group_per_chunk_and_reads_back(tmp_path):
    cfg = load_config(DEFAULT, [*HOUR, "study.chunk_intervals=1"])
    study = prepare_run(cfg, tmp_path / "run")
    with TableWriter(study.run_dir) as writer:
        assert run_inprocess(study, sink=writer) == {}
    whole = run(tmp_path, "whole")
    results = study.run_dir / "results"
    for name, df in whole.items():
        df.to_parquet(tmp_path / "one_piece.parquet", index=False)  # as tables were written before streaming
        pd.testing.assert_frame_equal(pd.read_parquet(results / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "one_piece.parquet"), check_exact=True, obj=name)
    # the feeder's tables came in 4 chunks (one per market interval), the prosumers' in one
    assert pq.ParquetFile(results / "voltages.parquet").num_row_groups == 4
    assert writer.rows["voltages"] == 60 * 40


def test_chunk_length_bounds_the_customer_steps():
    tl = Timeline(duration_s=366 * 86400.0, market_interval_s=900.0, physics_step_s=60.0)
    assert chunk_intervals(tl, 40) * 15 * 40 <= 250_000 < (chunk_intervals(tl, 40) + 1) * 15 * 40
    assert chunk_intervals(tl, 3000) == 5  # 75 steps x 3000 customers
    assert chunk_intervals(tl, 10**7) == 1  # at least one interval


def test_step_arrays_grow_reset_and_drop():
    a = StepArrays(2)
    a.add("x", (3,), fill=0.0)
    for g in range(5):
        r = a.row(g)  # before a.x: growing replaces the arrays
        a.x[r] = g
    assert a.capacity >= 5 and a.x[:5, 0].tolist() == [0, 1, 2, 3, 4]
    a.drop_before(3)
    assert a.g0 == 3 and a.x[a.row(4), 0] == 4 and a.x[a.row(3), 0] == 3
    with pytest.raises(ValueError, match="drained"):
        a.row(2)
    a.reset(5)
    assert a.g0 == 5 and not a.x.any()


def test_a_step_held_across_a_chunk_boundary_is_the_last_good_one(tmp_path):
    """feeder.on_nonconvergence: hold keeps the last good step's record; with a drain
    between them the feeder keeps that record for the next chunk
    (tests/feeder/test_nonconvergence.py has the case: 3000 % PV from 07:45)."""
    absurd = ["study.start=2026-06-21T07:45:00-04:00", "study.duration=30min", "prosumers.count=6",
              "controllers.enabled=false", "prosumers.pv_share=1", "prosumers.pv_penetration_pct=3000",
              "feeder.on_nonconvergence=hold", "grid_preset=very_weak", "feeder.model=synthetic",
              "feeder.conservation=warn"]  # the steps that converge are far above 1.3 pu: energy rows
    cfg = load_config(DEFAULT.parent / "very_weak_grid.yaml", absurd)
    whole = run_inprocess(prepare_run(cfg, tmp_path / "whole"))
    cfg = load_config(DEFAULT.parent / "very_weak_grid.yaml", [*absurd, "study.chunk_intervals=1"])
    chunked = run_inprocess(prepare_run(cfg, tmp_path / "chunked"))
    held = whole["nonconvergence"]
    assert (held["action"] == "hold").any() and held["step"].max() >= 15  # held in the second chunk
    for name in whole:
        pd.testing.assert_frame_equal(whole[name], chunked[name], check_exact=True, obj=name)
