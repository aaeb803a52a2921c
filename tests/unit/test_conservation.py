"""Conservation checks of the kpis table (runner/results.py): energy, money, power.

The errors are made by ``kpis`` from the settlements and grid tables; here they are
computed on small hand-made tables (the identities of federates/market/settlement.py
and the feeder's source = load + losses) and checked against the tolerances. A real
run and a corrupted copy of it are in tests/feeder/test_nonconvergence.py.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from runner.kpis import _conservation_columns
from runner.results import (
    ENERGY_TOLERANCE_KWH,
    MONEY_TOLERANCE_USD,
    POWER_TOLERANCE_PCT,
    ConservationError,
    check_conservation,
    conservation_failures,
)


def _settlements() -> pd.DataFrame:
    # interval 0: a sells 2 kWh to b at 0.1 USD/kWh, a is curtailed 0.5 kWh of it;
    # interval 1: b imports 1 kWh more than scheduled (imbalance)
    rows = [
        dict(interval=0, participant="a", scheduled_kwh=-2.0, metered_kwh=-1.5, curtailed_kwh=0.5,
             peer_bought_kwh=0.0, peer_sold_kwh=1.5, grid_bought_kwh=0.0, grid_sold_kwh=0.0,
             imbalance_kwh=0.0, peer_paid_usd=0.0, peer_received_usd=0.15),
        dict(interval=0, participant="b", scheduled_kwh=2.0, metered_kwh=2.0, curtailed_kwh=0.0,
             peer_bought_kwh=1.5, peer_sold_kwh=0.0, grid_bought_kwh=0.5, grid_sold_kwh=0.0,
             imbalance_kwh=0.0, peer_paid_usd=0.15, peer_received_usd=0.0),
        dict(interval=1, participant="b", scheduled_kwh=1.0, metered_kwh=2.0, curtailed_kwh=0.0,
             peer_bought_kwh=0.0, peer_sold_kwh=0.0, grid_bought_kwh=2.0, grid_sold_kwh=0.0,
             imbalance_kwh=1.0, peer_paid_usd=0.0, peer_received_usd=0.0),
    ]
    return pd.DataFrame(rows)


def _grid() -> pd.DataFrame:
    # two steps per interval; source = load + losses
    load = np.array([100.0, 90.0, -50.0, 10.0])
    loss = np.array([2.0, 1.5, 1.0, 0.2])
    return pd.DataFrame({"step": np.arange(4), "source_p_kw": load + loss, "load_kw": load,
                         "losses_kw": loss})


def _kpis(s: pd.DataFrame, g: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    out = pd.DataFrame({"interval": np.arange(n), "t_s": np.arange(n) * 900.0})
    _conservation_columns(out, {"settlements": s}, g, g["step"].to_numpy() // 2, np.arange(n))
    return out


def test_balanced_tables_pass():
    k = _kpis(_settlements(), _grid())
    assert k["energy_balance_error_kwh"].max() == 0.0
    assert k["money_balance_error_usd"].max() == pytest.approx(0.0, abs=1e-15)
    assert k["power_balance_error_kw"].max() == pytest.approx(0.0, abs=1e-12)
    # an interval without rows (2) has no error
    assert k.loc[2, ["energy_balance_error_kwh", "money_balance_error_usd", "power_balance_error_kw"]].eq(0).all()
    assert conservation_failures(k) == []


def test_energy_identity_broken():
    s = _settlements()
    s.loc[2, "imbalance_kwh"] = 0.75  # scheduled + curtailed + imbalance != metered
    k = _kpis(s, _grid())
    assert k["energy_balance_error_kwh"].tolist() == pytest.approx([0.0, 0.25, 0.0])
    (msg,) = conservation_failures(k)
    assert "energy balance" in msg and "worst interval 1 (t_s=900)" in msg and "error 0.25 kWh" in msg


def test_settled_energy_identity_broken():
    s = _settlements()
    s.loc[0, "peer_sold_kwh"] = 1.0  # settled energy != metered
    k = _kpis(s, _grid())
    assert k.loc[0, "energy_balance_error_kwh"] == pytest.approx(0.5)
    assert "energy balance" in conservation_failures(k)[0]


def test_money_broken():
    s = _settlements()
    s.loc[1, "peer_paid_usd"] = 0.16
    k = _kpis(s, _grid())
    assert k.loc[0, "money_balance_error_usd"] == pytest.approx(0.01)
    (msg,) = conservation_failures(k)
    assert "money balance" in msg and "worst interval 0" in msg and "0.01 USD" in msg


def test_power_broken_relative_to_load():
    g = _grid()
    g.loc[1, "source_p_kw"] += 0.05  # 0.05 kW of 90 kW: 0.056 %, within 0.1 %
    assert conservation_failures(_kpis(_settlements(), g)) == []
    g.loc[3, "source_p_kw"] += 0.05  # 0.05 kW of 10 kW: 0.5 %
    k = _kpis(_settlements(), g)
    assert k.loc[1, "power_balance_error_kw"] == pytest.approx(0.05)
    assert k.loc[1, "power_balance_error_pct"] == pytest.approx(0.5)
    (msg,) = conservation_failures(k)
    assert "feeder power balance" in msg and "worst interval 1" in msg and "0.5 % of the gross load" in msg
    assert "(0.05 kW)" in msg


def test_power_balance_is_relative_to_the_gross_flow():
    """Exports that cancel the loads leave a net load near zero while the flows (and
    the solver's mismatch) stay large: the base is the gross power (grid.gross_kw)."""
    g = _grid()
    g.loc[3, "load_kw"] = 4.5
    g["gross_kw"] = g["load_kw"].abs() + 2000.0  # e.g. 1 MW of exports against 1 MW of loads
    g.loc[3, "source_p_kw"] = g.loc[3, "load_kw"] + g.loc[3, "losses_kw"] + 0.012  # 12 W: 0.27 % of the net load
    k = _kpis(_settlements(), g)
    assert k.loc[1, "power_balance_error_kw"] == pytest.approx(0.012)
    assert k.loc[1, "power_balance_error_pct"] == pytest.approx(0.012 / (4.5 + 2000.0) * 100.0)
    assert conservation_failures(k) == []
    g.loc[3, "source_p_kw"] += 3.0  # 3 kW of 2 MW gross: 0.15 %
    assert "feeder power balance" in conservation_failures(_kpis(_settlements(), g))[0]


def test_tolerances_and_nan():
    k = pd.DataFrame({"interval": [0, 1], "t_s": [0.0, 900.0],
                      "energy_balance_error_kwh": [ENERGY_TOLERANCE_KWH, 0.0],
                      "money_balance_error_usd": [MONEY_TOLERANCE_USD, 0.0],
                      "power_balance_error_kw": [0.0, 0.0],
                      "power_balance_error_pct": [POWER_TOLERANCE_PCT, 0.0]})
    assert conservation_failures(k) == []  # at the tolerance: still fine
    k.loc[1, "money_balance_error_usd"] = np.nan  # cannot be checked: broken
    (msg,) = conservation_failures(k)
    assert "money balance" in msg and "worst interval 1" in msg


def test_check_conservation_fails_the_run(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "ok", "reason": ""}))
    s = _settlements()
    s.loc[2, "metered_kwh"] = 3.0
    g = _grid()
    g.loc[0, "losses_kw"] = 0.0
    k = _kpis(s, g)
    with pytest.raises(ConservationError) as e:
        check_conservation(k, tmp_path)
    assert "energy balance" in str(e.value) and "feeder power balance" in str(e.value)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["status"] == "failed" and m["reason"] == str(e.value)
    check_conservation(_kpis(_settlements(), _grid()), tmp_path)  # balanced: no error


def test_summary_without_a_peer_trade_says_so_not_nan(tmp_path):
    from runner.results import format_summary

    s = {"energy_traded_kwh": 0.0, "mean_price_usd_per_kwh": float("nan"), "curtailed_kwh": 0.0,
         "violation_min_before": 0.0, "violation_min_after": 0.0, "v_min_pu": 0.98, "v_max_pu": 1.03,
         "v_max_before_pu": 1.04, "grid_import_kwh": 10.0, "grid_export_kwh": 0.0, "losses_kwh": 1.0,
         "unconverged_steps": 0,
         **{f"{n}_violation_min_{w}": 0.0 for n in ("thermal", "vuf", "substation") for w in ("before", "after")}}
    text = format_summary(s, 1.0, tmp_path, "inprocess")
    assert "nan" not in text.lower()
    assert "none (no peer trade)" in text
    s["mean_price_usd_per_kwh"] = 0.1234
    assert "0.1234 USD/kWh" in format_summary(s, 1.0, tmp_path, "inprocess")
