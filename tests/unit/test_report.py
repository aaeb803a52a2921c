"""The study report (runner/report.py): a self-contained report.html with one PNG per
figure, every figure labelled, KPIs equal to independent recomputations from the
results tables, and a text instead of a figure when a table is empty."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from runner.report import (
    FIGURE_DIR,
    FIGURE_IDS,
    REPORT_FILE,
    baseline_bills,
    make_figures,
    report_kpis,
    write_report,
)
from tests.conftest import DEFAULT, tecosim

MIDDAY_3H = ["--set", "study.start=2026-06-21T10:00:00-04:00", "--set", "study.duration=3h"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 3 h midday in-process run (curtailment happens) and a 30 min one with the
    controllers off (no curtailment), started side by side."""
    base = tmp_path_factory.mktemp("report")
    jobs = {
        "ctl": ("run", str(DEFAULT), "--engine", "inprocess", "--out", str(base / "ctl"), *MIDDAY_3H),
        "noctl": ("run", str(DEFAULT), "--engine", "inprocess", "--out", str(base / "noctl"),
                  "--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=30min",
                  "--set", "controllers.enabled=false"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(tecosim, *args) for name, args in jobs.items()}
        for name, f in futures.items():
            r = f.result()
            assert r.returncode == 0, f"{name} run failed:\n{r.stdout}\n{r.stderr}"
    return {name: base / name for name in jobs}


@pytest.fixture(scope="module")
def report(runs) -> Path:
    return write_report(runs["ctl"], quiet=True)


def _table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(run / "results" / f"{name}.parquet")


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.resolved.yaml").read_text())


@pytest.mark.feeder
def test_report_is_self_contained(runs, report):
    assert report == runs["ctl"] / REPORT_FILE and report.is_file()
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    imgs = re.findall(r"<img\b[^>]*>", text)
    srcs = [re.search(r"""src=['"]([^'"]*)['"]""", i).group(1) for i in imgs]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    pngs = sorted((runs["ctl"] / FIGURE_DIR).glob("*.png"))
    assert len(imgs) == len(pngs) == len(FIGURE_IDS)  # midday: every figure has data
    assert {p.stem for p in pngs} == set(FIGURE_IDS)
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.feeder
def test_every_figure_has_title_units_and_legend(runs):
    plots = make_figures(runs["ctl"])
    assert [p.id for p in plots] == list(FIGURE_IDS)
    for block in plots:
        fig = block.fig
        assert block.title and block.caption
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        for ax in fig.axes:
            where = f"{block.id}: axes {ax.get_title()!r}"
            if ax.get_label() == "<colorbar>":
                assert "[" in ax.get_ylabel(), where
                continue
            assert ax.get_title() or suptitle, where
            assert "[" in ax.get_xlabel() and "]" in ax.get_xlabel(), where
            assert "[" in ax.get_ylabel() and "]" in ax.get_ylabel(), where
            legend = ax.get_legend()
            assert legend is not None and len(legend.get_texts()) >= 1, where
            assert all(t.get_text() and not t.get_text().startswith("_") for t in legend.get_texts()), where
        fig.clear()


@pytest.mark.feeder
def test_kpis_equal_independent_recomputation(runs, report):
    run = runs["ctl"]
    cfg = _config(run)
    k = report_kpis(run)["value"]
    step_h = cfg["study"]["physics_step"] / 3600.0

    trades = _table(run, "trades")
    assert k["energy_traded_kwh"] == pytest.approx(trades.loc[trades["kind"] == "peer", "energy_kwh"].sum())
    assert k["energy_traded_kwh"] > 0

    grid = _table(run, "grid")
    assert k["losses_kwh"] == pytest.approx(grid["losses_kw"].sum() * step_h)
    imported = grid["source_p_kw"].clip(lower=0).sum() * step_h
    assert k["losses_pct_of_import"] == pytest.approx(100 * grid["losses_kw"].sum() * step_h / imported)

    # bills: per interval, import at retail, export at feed-in
    st = _table(run, "settlements")
    retail, feed_in = cfg["market"]["retail_usd_per_kwh"], cfg["market"]["feed_in_usd_per_kwh"]
    saving = {}
    for p, rows in st.groupby("participant"):
        base = sum(m * retail if m > 0 else m * feed_in for m in rows["metered_kwh"])
        saving[p] = base - rows["net_cost_usd"].sum()
    assert k["mean_bill_saving_usd"] == pytest.approx(np.mean(list(saving.values())))

    prof = _table(run, "profiles")
    ce = _table(run, "curtailment_energy")
    assert ce["energy_kwh"].sum() > 0
    assert k["curtailed_share_pct"] == pytest.approx(100 * ce["energy_kwh"].sum() / (prof["pv_kw"].sum() * step_h))

    # community self-sufficiency: local supply (PV after curtailment, battery) vs load, per step
    v = _table(run, "voltages")[["step", "participant", "curtailed_p_kw"]]
    j = prof.merge(v, on=["step", "participant"])
    per_step = j.assign(s=j["pv_kw"] - j["battery_kw"] - j["curtailed_p_kw"]).groupby("step")[["load_kw", "s"]].sum()
    covered = np.minimum(per_step["load_kw"], per_step["s"].clip(lower=0)).sum()
    assert k["self_sufficiency_community_pct"] == pytest.approx(100 * covered / prof["load_kw"].sum())
    alone = np.minimum(j["load_kw"], (j["pv_kw"] - j["battery_kw"] - j["curtailed_p_kw"]).clip(lower=0)).sum()
    assert k["self_sufficiency_households_pct"] == pytest.approx(100 * alone / prof["load_kw"].sum())
    assert 0 < k["self_sufficiency_households_pct"] <= k["self_sufficiency_community_pct"] <= 100

    # violation minutes: steps with any customer outside the band, x 1 min
    volts = _table(run, "voltages")
    lo, hi = cfg["limits"]["v_min_pu"], cfg["limits"]["v_max_pu"]
    for when, col in (("before", "v_before_pu"), ("after", "v_pu")):
        bad = volts[(volts[col] > hi) | (volts[col] < lo)]["step"].nunique()
        assert k[f"violation_min_{when}"] == bad * cfg["study"]["physics_step"] / 60.0
    assert k["violation_min_before"] > 0

    assert k["vuf_max_pct"] == pytest.approx(_table(run, "unbalance")["vuf_pct"].max())
    assert k["welfare_usd"] == pytest.approx(_table(run, "clearing")["welfare_usd"].sum())

    text = report.read_text(encoding="utf-8")
    assert "Luthander" in text and "self-sufficiency" in text


def test_baseline_bills_formula():
    st = pd.DataFrame({"interval": [0, 1, 0, 1], "participant": ["a", "a", "b", "b"],
                       "metered_kwh": [2.0, -1.0, -3.0, 0.0], "net_cost_usd": [0.4, -0.1, -0.3, 0.0]})
    b = baseline_bills(st, retail_usd_per_kwh=0.26, feed_in_usd_per_kwh=0.08)
    assert b.loc["a", "baseline_usd"] == pytest.approx(2 * 0.26 - 1 * 0.08)
    assert b.loc["b", "baseline_usd"] == pytest.approx(-3 * 0.08)
    assert b.loc["a", "saving_usd"] == pytest.approx(0.44 - 0.3)
    assert b.loc["b", "saving_usd"] == pytest.approx(-0.24 + 0.3)
    assert list(b.index) == ["a", "b"]  # sorted by saving, largest first


@pytest.mark.feeder
def test_no_curtailment_gives_text_not_figure(runs):
    run = runs["noctl"]
    assert _table(run, "curtailment_energy")["energy_kwh"].sum() == 0
    out = write_report(run, quiet=True)
    text = out.read_text(encoding="utf-8")
    assert "no PV energy was curtailed" in text
    assert not (run / FIGURE_DIR / "curtailment.png").exists()
    pngs = {p.stem for p in (run / FIGURE_DIR).glob("*.png")}
    assert "curtailment" not in pngs and pngs == set(FIGURE_IDS) - {"curtailment"}
    assert len(re.findall(r"<img\b", text)) == len(pngs)
