"""The monthly table (runner/months.py) and the report's Months section.

References: a conservation law (the months add up to the study's KPIs: the summary of
the kpis table, the report's KPI table, the whole-table bills) and an independent
formulation (a pandas groupby of the whole ``profiles`` / ``voltages`` / ``grid`` /
``settlements`` tables by the local calendar month of each row's time, written here,
not with runner code). Memory: on a synthetic run folder of ~1.3 M rows in many row
groups, the aggregation's peak traced memory (tracemalloc: numpy and pandas buffers)
stays far under the tables' size, and the same call that reads the tables in one
chunk exceeds the bound (so the bound can fail).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from federates.common.config import load_config
from federates.common.messages import GRID_OPERATOR
from runner.months import MONTH_COLUMNS, MONTHLY_KPIS, monthly
from runner.run_folder import RunFolder, read_tables
from tests.conftest import DEFAULT, tecosim

TZ = "America/Puerto_Rico"  # configs/default.yaml site.timezone
#: 14:00 on 30 June to 10:00 on 1 July, local: PV, trades and bills on both sides of midnight
ACROSS = ["--set", "study.start=2026-06-30T14:00:00-04:00", "--set", "study.duration=20h"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The default study across midnight 30 June (a 20 h study in process, ~10 s: its
    tests are marked ``feeder``, as every study's, and stay out of the fast tier)."""
    out = tmp_path_factory.mktemp("monthly") / "run"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(out), "--quiet", "--no-report", *ACROSS)
    assert r.returncode == 0, r.stderr
    return out


def _month(start: str, t_s) -> np.ndarray:
    """'YYYY-MM' of each time ``t_s`` [s] after ``start``, in the site's time zone."""
    t = pd.Timestamp(start) + pd.to_timedelta(np.asarray(t_s, dtype=float), unit="s")
    return pd.DatetimeIndex(t).tz_convert(TZ).strftime("%Y-%m").to_numpy()


@pytest.mark.feeder
def test_months_of_a_run_across_midnight_30_june_add_up_and_match_a_groupby(run):
    folder = RunFolder(run)
    cfg = folder.cfg
    tl = cfg.timeline
    m = pd.read_parquet(run / "results" / "monthly.parquet").set_index("month")
    assert list(m.index) == ["2026-06", "2026-07"]
    assert list(m["label"]) == ["Jun 2026 (day 30, 10 h)", "Jul 2026 (day 1, 10 h)"]
    assert list(m["days"]) == [10 / 24, 10 / 24] and not m["full"].any()
    assert list(m["intervals"]) == [40, 40]
    assert str(m["start"].iloc[1]) == "2026-07-01 00:00:00-04:00"
    # the table is what monthly() computes now, read in one chunk or one interval at a time
    for chunk_rows in (10**9, 1):
        again = monthly(cfg, run, chunk_rows=chunk_rows).set_index("month")
        pd.testing.assert_frame_equal(again, m, check_exact=False, rtol=1e-12, atol=1e-12)

    # conservation: the months add up to the study
    s = json.loads((run / "manifest.json").read_text())["summary"]
    for key in ("grid_import_kwh", "grid_export_kwh", "losses_kwh", "energy_traded_kwh", "violation_min_before",
                "violation_min_after", "thermal_violation_min_after", "vuf_violation_min_after",
                "substation_violation_min_after", "unconverged_steps"):
        assert m[key].sum() == pytest.approx(s[key], rel=1e-12, abs=1e-9), key
    assert m["v_min_pu"].min() == s["v_min_pu"] and m["v_max_pu"].max() == s["v_max_pu"]
    from runner.report import report_kpis

    rk = report_kpis(run)["value"]
    for key in ("pv_available_kwh", "curtailed_kwh", "losses_kwh"):
        assert m[key].sum() == pytest.approx(rk[key], rel=1e-12, abs=1e-9), key
    n_prosumers = cfg.prosumers.count
    assert m["bill_saving_usd"].sum() == pytest.approx(n_prosumers * rk["mean_bill_saving_usd"], rel=1e-12)
    cause_cols = [c for c in m.columns if c.startswith("curtailed_") and c != "curtailed_kwh"]
    np.testing.assert_allclose(m[cause_cols].sum(axis=1), m["curtailed_kwh"], rtol=1e-12, atol=1e-12)
    assert m["pv_available_kwh"].min() > 10 and m["energy_traded_kwh"].min() > 1  # both months have sun, trades

    # an independent groupby of the whole tables by each row's local month
    t = read_tables(run)
    start = cfg.study.start
    pr = t["profiles"]
    g = pr.groupby(_month(start, pr["t_s"]))
    np.testing.assert_allclose(m["load_kwh"], g["load_kw"].sum() * tl.step_h, rtol=1e-12)
    np.testing.assert_allclose(m["pv_available_kwh"], g["pv_kw"].sum() * tl.step_h, rtol=1e-12)
    b = pr["battery_kw"]
    np.testing.assert_allclose(m["battery_charge_kwh"], b.clip(lower=0).groupby(_month(start, pr["t_s"])).sum()
                               * tl.step_h, rtol=1e-12)
    np.testing.assert_allclose(m["battery_discharge_kwh"], (-b).clip(lower=0).groupby(_month(start, pr["t_s"]))
                               .sum() * tl.step_h, rtol=1e-12)
    gr = t["grid"]
    p = gr["source_p_kw"]
    month = _month(start, gr["t_s"])
    np.testing.assert_allclose(m["grid_import_kwh"], p.clip(lower=0).groupby(month).sum() * tl.step_h, rtol=1e-12)
    np.testing.assert_allclose(m["losses_kwh"], gr["losses_kw"].groupby(month).sum() * tl.step_h, rtol=1e-12)
    v = t["voltages"]
    month = _month(start, v["t_s"])
    step_min = tl.physics_step_s / 60
    over = (v["v_pu"] > cfg.limits.v_max_pu).groupby(month).sum() * step_min
    under = (v["v_pu"] < cfg.limits.v_min_pu).groupby(month).sum() * step_min
    np.testing.assert_array_equal(m["voltage_over_customer_min"], over.reindex(m.index, fill_value=0))
    np.testing.assert_array_equal(m["voltage_under_customer_min"], under.reindex(m.index, fill_value=0))
    st = t["settlements"]
    st = st[st["participant"] != GRID_OPERATOR]
    month = _month(start, st["interval"] * tl.market_interval_s)
    e = st["metered_kwh"]
    baseline = e.clip(lower=0) * cfg.market.retail_usd_per_kwh - (-e).clip(lower=0) * cfg.market.feed_in_usd_per_kwh
    np.testing.assert_allclose(m["bill_usd"], st["net_cost_usd"].groupby(month).sum(), rtol=1e-12)
    np.testing.assert_allclose(m["baseline_bill_usd"], baseline.groupby(month).sum(), rtol=1e-12)
    per = st.groupby([month, st["participant"]])["net_cost_usd"].sum()
    np.testing.assert_allclose(m["bill_paid_usd"], per.clip(lower=0).groupby(level=0).sum(), rtol=1e-12)
    np.testing.assert_allclose(m["bill_received_usd"], (-per).clip(lower=0).groupby(level=0).sum(), rtol=1e-12)
    np.testing.assert_allclose(m["bill_paid_usd"] - m["bill_received_usd"], m["bill_usd"], rtol=1e-12)


@pytest.mark.feeder
def test_the_report_has_a_months_section(run, tmp_path):
    import shutil

    from runner.report import FIGURE_DIR, MONTHS_FIGURE, write_report

    copy = shutil.copytree(run, tmp_path / "run")
    text = write_report(copy, quiet=True).read_text(encoding="utf-8")
    assert "<h2>Months</h2>" in text
    section = text.split("<h2>Months</h2>", 1)[1].split("</section>", 1)[0]
    assert "<h3>Per calendar month</h3>" in section
    assert "Jun 2026 (day 30, 10 h)" in section and "Jul 2026 (day 1, 10 h)" in section
    assert "prosumers&#x27; bills with the market [USD]" in section
    assert f"<figure id='{MONTHS_FIGURE}'>" in section and "data:image/png;base64," in section
    assert (copy / FIGURE_DIR / f"{MONTHS_FIGURE}.png").stat().st_size > 10_000
    # a report of a run without monthly.parquet (from before the table) computes it
    (copy / "results" / "monthly.parquet").unlink()
    again = write_report(copy, quiet=True).read_text(encoding="utf-8")
    assert "Jun 2026 (day 30, 10 h)" in again.split("<h2>Months</h2>", 1)[1]


# ---- memory: a synthetic run folder of many row groups ------------------------------------

DAYS = 35  # 1 June to 5 July: June whole, July partial
PARTICIPANTS = 12
ROWS_PER_GROUP = PARTICIPANTS * 360  # 6 h of steps


def _write(path: Path, df: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=ROWS_PER_GROUP)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A run folder's results of 35 days at 1-min steps, 12 participants (0.6 M rows of
    ``profiles`` and ``voltages`` each, 140 row groups), random values."""
    cfg = load_config(DEFAULT, ["study.start=2026-06-01T00:00:00-04:00", f"study.duration={DAYS}d"])
    tl = cfg.timeline
    rng = np.random.default_rng(1)
    steps = np.repeat(np.arange(tl.n_steps, dtype=np.int64), PARTICIPANTS)
    n = len(steps)
    t = {
        "profiles": pd.DataFrame({"step": steps, "t_s": steps * tl.physics_step_s, "load_kw": rng.uniform(0, 3, n),
                                  "pv_kw": rng.uniform(0, 5, n), "battery_kw": rng.uniform(-2, 2, n)}),
        "voltages": pd.DataFrame({"step": steps, "t_s": steps * tl.physics_step_s,
                                  "v_pu": rng.normal(1.0, 0.03, n)}),
    }
    ks = np.repeat(np.arange(tl.n_intervals, dtype=np.int64), PARTICIPANTS + 1)
    who = np.tile([*(f"p{i:03d}" for i in range(PARTICIPANTS)), GRID_OPERATOR], tl.n_intervals)
    t["settlements"] = pd.DataFrame({"interval": ks, "participant": who, "metered_kwh": rng.normal(0, 1, len(ks)),
                                     "net_cost_usd": rng.normal(0, 0.3, len(ks))})
    ce_steps = np.sort(rng.choice(tl.n_steps, 5000))
    t["curtailment_energy"] = pd.DataFrame({"step": ce_steps, "t_s": ce_steps * tl.physics_step_s,
                                            "limit": rng.choice(["v_max", "volt_watt", "envelope"], len(ce_steps)),
                                            "energy_kwh": rng.uniform(0, 0.05, len(ce_steps))})
    run = tmp_path_factory.mktemp("synthetic")
    (run / "results").mkdir()
    for name, df in t.items():
        _write(run / "results" / f"{name}.parquet", df)
    return cfg, run, t


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_monthly_reads_the_tables_in_chunks_in_bounded_memory(synthetic):
    cfg, run, t = synthetic
    assert pq.ParquetFile(run / "results" / "voltages.parquet").metadata.num_row_groups > 100
    size_mib = sum(df.memory_usage(deep=False).sum() for name, df in t.items()) / 2**20  # ~38 MiB
    bound_mib = 8.0
    result = {}
    chunked = _peak_mib(lambda: result.setdefault("m", monthly(cfg, run, chunk_rows=20_000)))
    whole = _peak_mib(lambda: monthly(cfg, run, chunk_rows=10**9))  # one chunk: every table read at once
    print(f"peak traced memory: chunked {chunked:.1f} MiB, whole {whole:.1f} MiB, tables {size_mib:.0f} MiB")
    assert chunked < bound_mib < size_mib / 4, (chunked, size_mib)
    assert whole > bound_mib, whole  # the bound fails when the tables are read whole

    m = result["m"].set_index("month")
    assert list(m.columns) == [*MONTH_COLUMNS[1:], *(kpi.key for kpi in MONTHLY_KPIS)]
    assert list(m.index) == ["2026-06", "2026-07"]
    assert list(m["label"]) == ["Jun 2026", "Jul 2026 (days 1-5, 5 d)"]
    assert list(m["full"]) == [True, False] and list(m["days"]) == [30.0, 5.0]
    tl = cfg.timeline
    pr = t["profiles"]
    month = np.where(pr["step"] < 30 * 1440, "2026-06", "2026-07")  # 00:00 1 July local = step 43,200
    np.testing.assert_allclose(m["load_kwh"], pr["load_kw"].groupby(month).sum() * tl.step_h, rtol=1e-10)
    np.testing.assert_allclose(m["battery_discharge_kwh"],
                               (-pr["battery_kw"]).clip(lower=0).groupby(month).sum() * tl.step_h, rtol=1e-10)
    v = t["voltages"]
    month = np.where(v["step"] < 30 * 1440, "2026-06", "2026-07")
    np.testing.assert_array_equal(m["voltage_over_customer_min"], (v["v_pu"] > cfg.limits.v_max_pu).groupby(month)
                                  .sum().to_numpy().astype(float))
    ce = t["curtailment_energy"]
    month = np.where(ce["step"] < 30 * 1440, "2026-06", "2026-07")
    by = ce.groupby([month, "limit"])["energy_kwh"].sum().unstack(fill_value=0.0)
    for cause in ("v_max", "volt_watt", "envelope"):
        np.testing.assert_allclose(m[f"curtailed_{cause}_kwh"], by[cause], rtol=1e-10)
    assert (m["curtailed_thermal_kwh"] == 0).all()
    st = t["settlements"]
    st = st[st["participant"] != GRID_OPERATOR]
    month = np.where(st["interval"] < 30 * 96, "2026-06", "2026-07")
    np.testing.assert_allclose(m["bill_usd"], st["net_cost_usd"].groupby(month).sum(), rtol=1e-10)
    # no kpis table and none of the tables it is made of: those KPIs are NaN, the rest is there
    assert m["grid_import_kwh"].isna().all() and m["load_kwh"].notna().all()
