"""The post-run path reads the results tables in pieces and changes no result.

``runner.run_folder.interval_chunks`` hands out ranges of whole market intervals read
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

from federates.common.config import validate
from runner.kpis import run_kpis, summary
from runner.losses_table import write_loss_tables
from runner.run_folder import IntervalReader, read_tables
from tests.conftest import DEFAULT, MIDDAY, tecosim
from tests.longrun import make_long_run, tiled
from tests.reference import post_run_v0 as v0

REPEATS = 3
ROWS_PER_GROUP = 997  # voltages: 600 rows per interval, so intervals straddle row groups
CHUNK_ROWS = (1, 1500, 10**9)  # one interval per chunk, 2 intervals, the whole run

# every test reads the module's in-process run of the default study (OpenDSS solves)
pytestmark = pytest.mark.feeder


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


# ---- the report and compare -----------------------------------------------------------

def _figures(module, run: Path, **kw) -> dict:
    return {p.id: p for p in module.make_figures(run, **kw)}


@pytest.mark.parametrize("variant", ["day", "split"])
def test_report_draws_todays_figures_of_a_short_run(runs, variant):
    """One chunk or one interval per chunk: the same data, the same marks, the same
    captions as today's whole-table report (tests/reference/report_v0.py), exactly;
    only the bills (per-prosumer sums over chunks) may differ by float rounding."""
    from runner import report
    from tests.figure_data import assert_same_figure, figure_data
    from tests.reference import report_v0

    run = runs[variant]
    ref = _figures(report_v0, run)
    assert len(ref) == len(report.FIGURE_IDS)
    # the bills figure and its KPIs have changed since: the bill split in its parts
    # (compared whole against chunked below); every other figure is today's exactly
    whole_bills = None
    for chunk_rows in (10**9, 1):
        got = _figures(report, run, chunk_rows=chunk_rows)
        assert list(got) == list(ref)
        for fid, p in ref.items():
            q = got[fid]
            if fid == "bills":
                if whole_bills is None:
                    whole_bills = (q.title, q.caption, figure_data(q.fig)[1])
                    continue
                a, b = whole_bills[2], figure_data(q.fig)[1]
                assert (q.title, q.caption) == whole_bills[:2]
                assert a["xticks"] == b["xticks"] and a["legend"] == b["legend"]
                np.testing.assert_allclose([x[3] for x in b["patches"]], [x[3] for x in a["patches"]],
                                           rtol=1e-12, atol=1e-12)
                continue
            assert (q.title, q.caption) == (p.title, p.caption), fid
            assert_same_figure(p.fig, q.fig, f"{variant} chunk_rows={chunk_rows} {fid}")
        for p in got.values():
            p.fig.clear()
    k_ref = report_v0.report_kpis(run)
    k_now = report.report_kpis(run)
    pd.testing.assert_frame_equal(k_now.loc[k_ref.index], k_ref, check_exact=True)
    k = report.report_kpis(report.load_run(run, chunk_rows=1))
    np.testing.assert_allclose(k["value"].to_numpy(), k_now["value"].to_numpy(), rtol=1e-12, atol=1e-15)


@pytest.fixture
def small_bins(monkeypatch):
    """Bins small enough that the 3 x 2 h long run (360 steps, 24 intervals) is drawn
    per bin: series of 4 steps, heat map columns of 8 steps, bars of 3 intervals."""
    from runner import report

    monkeypatch.setattr(report, "MAX_SERIES_POINTS", 100)
    monkeypatch.setattr(report, "MAX_HEATMAP_COLUMNS", 50)
    monkeypatch.setattr(report, "MAX_INTERVAL_BARS", 10)
    return {"series": 4, "heat": 8, "bars": 3}


def _tile(by_unit: pd.Series, n_units: int) -> pd.Series:
    """A per-step (per-interval) series of the day repeated REPEATS times, shifted."""
    parts = [pd.Series(by_unit.to_numpy(), index=by_unit.index.to_numpy() + r * n_units) for r in range(REPEATS)]
    return pd.concat(parts)


def _bin(s: pd.Series, width: int, how: str, n_units: int | None = None) -> np.ndarray:
    """Reduced per bin of ``width`` units (NaN for a bin without a value when ``n_units`` is given)."""
    out = s.groupby(s.index // width).agg(how)
    if n_units is not None:
        out = out.reindex(range(-(-n_units // width)))
    return out.to_numpy()


def test_long_run_report_aggregates_are_the_day_repeated(runs, small_bins):
    """The reference: the day's whole tables, repeated 3 times, then reduced per bin.
    Minima / maxima (envelope min / max, heat map, unbalance, line loading, substation
    min / max) exactly; means and sums (float summation order) within 1e-12 relative."""
    from runner import report

    day, long = runs["day"], runs["long"]
    t = read_tables(day)
    tl = _cfg(day).timeline
    n_steps, n_k = tl.n_steps, tl.n_intervals
    d = report.load_run(long, chunk_rows=1500).data
    w, wh, wk = small_bins["series"], small_bins["heat"], small_bins["bars"]
    assert (d.steps.width, d.heat_steps.width, d.intervals.width) == (w, wh, wk)

    v = t["voltages"]
    for ph, sub in v.groupby("phase"):
        for col in ("v_before_pu", "v_pu"):
            arr = sub.pivot(index="step", columns="participant", values=col)
            for q in (0, 5, 50, 95, 100):
                per_step = _tile(pd.Series(np.percentile(arr.to_numpy(), q, axis=1), index=arr.index), n_steps)
                how = "min" if q == 0 else "max" if q == 100 else "mean"
                expect, got = _bin(per_step, w, how), d.envelope[(ph, col, q)].values()
                if how == "mean":
                    np.testing.assert_allclose(got, expect, rtol=1e-12)
                else:
                    np.testing.assert_array_equal(got, expect)
    piv = v.pivot(index="step", columns="participant", values="v_pu")
    heat = d.heat.values()
    for p in piv.columns:
        s = _tile(piv[p], n_steps)
        lo, hi = _bin(s, wh, "min"), _bin(s, wh, "max")
        np.testing.assert_array_equal(heat[d.heat.rows[p]], np.where(hi - 1 >= 1 - lo, hi, lo))

    ub = t["unbalance"]
    np.testing.assert_array_equal(d.ub_max.values(), _bin(_tile(ub.groupby("step")["vuf_pct"].max(), n_steps), w, "max"))
    ln = t["lines"]
    for name, df, col, value, series in (("unbalance", ub, "bus", "vuf_pct", d.ub_series),
                                         ("lines", ln, "element", "loading_pct", d.ln_series)):
        assert series, name
        for e, b in series.items():
            s = df[df[col] == e].set_index("step")[value]
            np.testing.assert_array_equal(b.values(), _bin(_tile(s, n_steps), w, "max", REPEATS * n_steps),
                                          err_msg=f"{name} {e}")

    g = t["grid"].set_index("step")
    p = _tile(g["source_p_kw"], n_steps)
    np.testing.assert_allclose(d.g_p["mean"].values(), _bin(p, w, "mean"), rtol=1e-12)
    np.testing.assert_array_equal(d.g_p["min"].values(), _bin(p, w, "min"))
    np.testing.assert_array_equal(d.g_p["max"].values(), _bin(p, w, "max"))

    cl = t["clearing"].set_index("interval")
    np.testing.assert_allclose(d.cl["traded_kwh"].values(), _bin(_tile(cl["traded_kwh"], n_k), wk, "sum"), rtol=1e-12)
    np.testing.assert_allclose(d.cl["price"].values(), _bin(_tile(cl["price_usd_per_kwh"], n_k), wk, "mean"),
                               rtol=1e-12)
    ce = t["curtailment_energy"]
    by = ce.groupby([ce["step"] // tl.steps_per_interval, "limit"])["energy_kwh"].sum().unstack(fill_value=0.0)
    assert set(d.curtailed) == set(by.columns)
    for cause in by.columns:
        s = _tile(by[cause].reindex(range(n_k), fill_value=0.0), n_k)
        np.testing.assert_allclose(d.curtailed[cause].values(), _bin(s, wk, "sum"), rtol=1e-12, atol=1e-15)

    m = _cfg(day).market
    bills = report.bills(d.bill_sums)
    ref = report.baseline_bills(t["settlements"], m.retail_usd_per_kwh, m.feed_in_usd_per_kwh)
    for col in ("net_cost_usd", "baseline_usd", "saving_usd"):
        np.testing.assert_allclose(bills[col].reindex(ref.index).to_numpy(), REPEATS * ref[col].to_numpy(),
                                   rtol=1e-12, atol=1e-12)


def test_long_run_report_kpis_are_the_days(runs):
    from runner import report
    from tests.reference import report_v0

    ref = report_v0.report_kpis(runs["day"])["value"]
    new = report.report_kpis(runs["day"])["value"]  # the KPIs added since (the bill's parts)
    ref = pd.concat([ref, new[[k for k in new.index if k not in ref.index]]])
    got = report.report_kpis(report.load_run(runs["long"], chunk_rows=1500))["value"]
    assert list(got.index) == list(ref.index)
    totals = {"energy_traded_kwh", "pv_available_kwh", "curtailed_kwh", "violation_min_before",
              "violation_min_after", "losses_kwh", "welfare_usd", "mean_bill_saving_usd",
              "mean_bill_market_usd", "mean_bill_replacement_usd", "mean_bill_imbalance_usd",
              "mean_bill_charges_usd"}
    for key in ref.index:
        factor = REPEATS if key in totals else 1
        assert got[key] == pytest.approx(factor * ref[key], rel=1e-12, abs=1e-12, nan_ok=True), key


def test_long_run_report_says_how_it_is_binned(runs, small_bins, tmp_path):
    from runner.report import FIGURE_IDS, write_report

    long = shutil.copytree(runs["long"], tmp_path / "long")
    text = write_report(long, quiet=True, chunk_rows=1500).read_text(encoding="utf-8")
    assert "Long run: drawn per bin of 4 physics steps (4 min, 90 bins)" in text
    assert "Long run: drawn per bin of 8 physics steps (8 min, 45 bins)" in text  # heat map
    assert "Long run: bars per bin of 3 market intervals (0.75 h, 8 bins)" in text
    assert {p.stem for p in (long / "report").glob("*.png")} == set(FIGURE_IDS)


def test_compare_series_of_a_long_run_are_the_day_repeated(runs, small_bins):
    day_t = read_tables(runs["day"])
    n_steps = _cfg(runs["day"]).timeline.n_steps
    long = load_compare_run_with_kpis(runs["long"])
    t_s, y, width = long.step_series("voltages", "v_pu", "max")
    assert width == small_bins["series"]
    expect = _bin(_tile(day_t["voltages"].groupby("step")["v_pu"].max(), n_steps), width, "max")
    np.testing.assert_array_equal(y, expect)
    step_s = _cfg(runs["day"]).timeline.physics_step_s
    np.testing.assert_array_equal(t_s, np.arange(len(y)) * width * step_s + (width - 1) * step_s / 2)  # bin middles
    t_s, y, width = long.step_series("grid", "losses_kw", "mean")
    assert len(t_s) == len(y) == REPEATS * n_steps // width
    np.testing.assert_allclose(y, _bin(_tile(day_t["grid"].set_index("step")["losses_kw"], n_steps), width, "mean"),
                               rtol=1e-12)


def test_compare_series_of_a_short_run_are_todays(runs):
    """One point per step: today's groupby of the whole table (runner/compare.py at c514ee0)."""
    from runner.compare import load_run as load_compare_run

    day_t = read_tables(runs["day"])
    day = load_compare_run(runs["day"])
    t_s, y, width = day.step_series("voltages", "v_pu", "max")
    s = day_t["voltages"].groupby("t_s")["v_pu"].max()
    assert width == 1
    np.testing.assert_array_equal(t_s, s.index.to_numpy())
    np.testing.assert_array_equal(y, s.to_numpy())
    t_s, y, width = day.step_series("grid", "source_p_kw", "mean")
    s = day_t["grid"].groupby("t_s")["source_p_kw"].mean()
    assert width == 1
    np.testing.assert_array_equal(t_s, s.index.to_numpy())
    np.testing.assert_array_equal(y, s.to_numpy())


def load_compare_run_with_kpis(run: Path):
    from runner.compare import RunData

    cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
    return RunData(run, {}, cfg, run_kpis(_cfg(run), run), {})


def test_the_post_run_path_reads_no_table_whole(runs, tmp_path, monkeypatch):
    """tecosim run's post-run (kpis, conservation, loss and monthly tables, summary,
    report) and tecosim compare on the long run: no results table is read whole but
    ``kpis`` and ``tariff`` (one row per market interval each) and ``monthly`` (one row
    per calendar month); read_tables is never called."""
    import pyarrow.parquet as pq_mod

    from runner import cli, run_folder
    from runner.compare import write_compare
    from runner.launch import Study

    long = shutil.copytree(runs["long"], tmp_path / "long")
    whole: list[str] = []
    read_parquet, read_table, pf_read = pd.read_parquet, pq_mod.read_table, pq_mod.ParquetFile.read

    def spy_read_parquet(path, *a, **kw):
        whole.append(Path(path).name)
        return read_parquet(path, *a, **kw)

    def spy_read_table(source, *a, **kw):
        whole.append(Path(str(source)).name)
        return read_table(source, *a, **kw)

    def spy_pf_read(self, *a, **kw):
        whole.append("ParquetFile.read")
        return pf_read(self, *a, **kw)

    def no_read_tables(run_dir):
        raise AssertionError("read_tables called on the post-run path")

    monkeypatch.setattr(pd, "read_parquet", spy_read_parquet)
    monkeypatch.setattr(pq_mod, "read_table", spy_read_table)
    monkeypatch.setattr(pq_mod.ParquetFile, "read", spy_pf_read)
    monkeypatch.setattr(run_folder, "read_tables", no_read_tables)
    cli._finish_run(Study.load(long), "inprocess", 0.0, quiet=True, report=True)
    assert (long / "report.html").is_file() and (long / "summary.txt").is_file()
    write_compare([runs["day"], long], tmp_path / "cmp", labels=["day", "long"])
    assert (tmp_path / "cmp" / "compare.html").is_file()
    assert whole and set(whole) == {"kpis.parquet", "tariff.parquet", "monthly.parquet"}, whole


# ---- a month of the default study (pytest -m benchmark: minutes) -------------------------

DAYS = 30


@pytest.mark.benchmark
def test_thirty_days_of_the_default_study_are_its_day_repeated_in_bounded_memory(tmp_path):
    """The default study's real day repeated 30 times (43,200 steps, 1.7 M rows of
    voltages, meters, profiles and customer_losses each), through tecosim run's
    post-run path, report and compare: the kpis and loss tables are the day's
    repeated (exactly), the summary and report KPIs the day's x 30 (1e-12), and the
    peak memory of each phase, in a fresh process, stays within that of the day plus
    a margin (it does not grow with the study)."""
    from benchmarks.post_run import run_phase
    from runner import report
    from tests.reference import report_v0

    day = tmp_path / "day"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(day), "--quiet")
    assert r.returncode == 0, r.stderr
    long = make_long_run(day, tmp_path / "long", DAYS)
    cfg = _cfg(day)
    n, s = cfg.timeline.n_intervals, cfg.timeline.market_interval_s
    peaks = {}
    for name, run in (("day", day), ("long", long)):
        for phase in ("post-run", "report", "compare"):
            out = run_phase(Path(__file__).resolve().parents[2], phase, run, 8 * 1024, 3600)
            assert "peak_rss_mib" in out and "failed" not in out and "killed" not in out, out
            peaks[name, phase] = out["peak_rss_mib"]
    for name in ("kpis", "loss_allocation", "loss_charges"):
        expect = tiled(pd.read_parquet(day / "results" / f"{name}.parquet"), DAYS, n, s,
                       trade_ids=name == "loss_allocation")
        pd.testing.assert_frame_equal(pd.read_parquet(long / "results" / f"{name}.parquet"), expect,
                                      check_exact=True)
    ref = report_v0.report_kpis(day)["value"]
    got = report.report_kpis(long)["value"]
    totals = {"energy_traded_kwh", "pv_available_kwh", "curtailed_kwh", "violation_min_before",
              "violation_min_after", "losses_kwh", "welfare_usd", "mean_bill_saving_usd"}
    for key in ref.index:
        assert got[key] == pytest.approx((DAYS if key in totals else 1) * ref[key], rel=1e-12, abs=1e-12,
                                         nan_ok=True), key
    assert (long / "report.html").is_file()  # 21 June + 30 days: June and July, so the months figure too
    assert {p.stem for p in (long / "report").glob("*.png")} == {*report.FIGURE_IDS, report.MONTHS_FIGURE}
    months = pd.read_parquet(long / "results" / "monthly.parquet")
    assert list(months["label"]) == ["Jun 2026 (days 21-30, 10 d)", "Jul 2026 (days 1-20, 20 d)"]
    for key in ("pv_available_kwh", "curtailed_kwh", "losses_kwh"):
        assert months[key].sum() == pytest.approx(got[key], rel=1e-12), key
    for phase in ("post-run", "report", "compare"):
        assert peaks["long", phase] <= 1.5 * peaks["day", phase] + 100, (phase, peaks)
