"""The live conservation checks of the meters and the market (federates/common/conservation.py).

Each check is shown to hold on a real market day of orders and to fire when its input
is broken: a meter's energy off the feeder's delivered energy, a settlement that pays
a seller the network charge it should have paid (the defect the money check was made
for), a settlement row that lost a cent, a ledger record that differs from its row.
``warn`` records the same as a row and goes on.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

import federates.market.role as market_role
from federates.common.config import validate
from federates.common.conservation import (
    DTYPES,
    ENERGY_TOLERANCE_KWH,
    SOLUTION_TOLERANCE,
    Conservation,
    ConservationError,
    merge_tables,
)
from federates.common.grid import CustomerSite
from federates.common.messages import CurtailmentNotice, IntervalEnergy, Order
from federates.market.books import LEDGER_TOTALS, money_flows
from federates.market.ledger import KeyRing, sign_order
from federates.market.role import MarketRole
from federates.market.settlement import settle_interval_reference
from federates.meters.role import MetersRole

PARTICIPANTS = ["a", "b", "c", "x", "y"]


def _p2p_cfg(mode: str = "fail", imbalance_price: str = "tariff"):
    return validate({"study": {"duration": "30min"},
                     "market": {"topology": "p2p", "mechanism": "lp", "p2p_charge_usd_per_kwh_per_km": 0.05,
                                "imbalance_price": imbalance_price},
                     "feeder": {"conservation": mode}})


def _distances() -> np.ndarray:
    n = len(PARTICIPANTS)
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) * 0.4  # km


def _orders(keys: KeyRing) -> list[Order]:
    return [sign_order(keys, o) for o in (
        Order("a", "buy", 0, 2.0, 0.25), Order("b", "buy", 0, 1.5, 0.22), Order("c", "buy", 0, 1.0, 0.20),
        Order("x", "sell", 0, 2.5, 0.08), Order("y", "sell", 0, 2.0, 0.10))]


def _day(tmp_path, mode: str = "fail", imbalance_price: str = "tariff") -> MarketRole:
    """Clear interval 0 (peer trades with network charges), settle it with imbalances
    and a curtailed seller (pro-rata cut of its peer sales, a replacement purchase)."""
    cfg = _p2p_cfg(mode, imbalance_price)
    keys = KeyRing.from_seed(cfg.study.seed, PARTICIPANTS)
    market = MarketRole(cfg, PARTICIPANTS, tmp_path / "ledger.zst", distance_km=_distances())
    confirmations, _, _ = market.on_market_time(0, _orders(keys), [], [])
    assert sum(c.peer_sold_kwh for c in confirmations) > 0
    metered = {"a": 2.2, "b": 1.25, "c": 1.0, "x": -2.0, "y": -1.9}
    energies = [IntervalEnergy(meter=p, interval=0, energy_kwh=e) for p, e in metered.items()]
    notices = [CurtailmentNotice(participant="x", interval=0, curtailed_kwh=0.5, limit="voltage")]
    market.on_market_time(1, [], energies, notices)
    market.keep_books()  # the settlement of 0 and its checks (as the engines do after a market time)
    return market


@pytest.mark.parametrize("imbalance_price", ["tariff", "clearing", "dual"])
def test_money_and_ledger_hold_on_a_p2p_day_with_charges_and_curtailment(tmp_path, imbalance_price):
    market = _day(tmp_path, imbalance_price=imbalance_price)
    assert market.books.n_broken == 0
    assert market.books.n_checked == 6 + 1 + len(LEDGER_TOTALS)  # six money flows, the ledger's count and totals
    s = market.tables()["settlements"]
    assert s["charges_paid_usd"].sum() > 0 and (s["curtailed_kwh"] > 0).any()
    assert len(market.tables()["conservation_market"]) == 0


def test_money_flows_name_what_a_broken_settlement_lost():
    """money_flows against a settlement that pays the seller the charge (issue 11, defect 1)."""
    from federates.common.messages import Confirmation, Trade

    trades = [Trade(seller="x", buyer="a", energy_kwh=2.0, price_usd_per_kwh=0.2, interval=0, fee_usd=0.1)]
    confs = [Confirmation("a", 0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.2), Confirmation("x", 0, -2.0, 0.0, 2.0, 0.0, 0.0, 0.2)]
    settled = settle_interval_reference(0, confs, trades, {"a": 2.0, "x": -2.0}, {}, retail_usd_per_kwh=0.3,
                                        feed_in_usd_per_kwh=0.05)
    rows, cuts = settled.rows, settled.trade_cuts
    flows = money_flows(rows, trades, cuts, retail_usd_per_kwh=0.3, feed_in_usd_per_kwh=0.05)
    assert all(abs(a - b) <= 1e-12 for _, a, b in flows)
    uncollected = [replace(r, charges_paid_usd=0.0, charges_received_usd=0.0) for r in rows]
    broken = {f: abs(a - b) for f, a, b in money_flows(uncollected, trades, cuts, retail_usd_per_kwh=0.3,
                                                       feed_in_usd_per_kwh=0.05)}
    assert broken["network charges paid"] == pytest.approx(0.1, abs=1e-12)
    assert broken["network charges collected by the grid operator"] == pytest.approx(0.1, abs=1e-12)
    assert broken["peers paid for peer energy"] == 0.0


@pytest.mark.parametrize("column,flow", [
    ("peer_received_usd", "peers received for peer energy"),
    ("charges_paid_usd", "network charges paid"),
    ("grid_paid_usd", "utility paid (retail and grid sales)"),
    ("grid_received_usd", "utility paid out (feed-in and grid purchases)"),
])
def test_money_check_fails_the_interval_when_a_row_loses_a_cent(tmp_path, monkeypatch, column, flow):
    real = market_role.settle_interval

    def lossy(*args, **kw):
        settled = real(*args, **kw)
        rows = list(settled.rows)
        i = next(j for j, r in enumerate(rows) if getattr(r, column) > 0)
        rows[i] = replace(rows[i], **{column: getattr(rows[i], column) - 0.01})
        return replace(settled, rows=rows)

    monkeypatch.setattr(market_role, "settle_interval", lossy)
    with pytest.raises(ConservationError, match=rf"'money' broken at interval 0 \({re.escape(flow)}\).*error 0\.01 USD"):
        _day(tmp_path)
    # warn: a row of the table, the run goes on (the ledger holds the same lossy rows)
    market = _day(tmp_path / "warn", mode="warn")
    t = market.tables()["conservation_market"]
    assert list(t["check"]) == ["money"] and list(t["subject"]) == [flow]
    assert t["error"].iloc[0] == pytest.approx(0.01, abs=1e-12) and list(t["interval"]) == [0]


def test_ledger_check_fails_when_a_record_differs_from_its_row(tmp_path, monkeypatch):
    real = market_role.settlement_record

    def altered(keys, k, row):  # a row's fields (without the demand-response ones: DR is off)
        body = dict(row)
        if body["participant"] == "b":
            body["net_cost_usd"] += 1e-6
        return real(keys, k, body)

    monkeypatch.setattr(market_role, "settlement_record", altered)
    with pytest.raises(ConservationError, match=r"'ledger' broken at interval 0 \(net_cost_usd\).*error 1e-06 USD"):
        _day(tmp_path)


def test_ledger_check_fails_when_the_written_block_lacks_a_record(tmp_path, monkeypatch):
    real = market_role.block_float_columns

    def lossy(data):
        segments = real(data)
        _, cols = [s for s in segments if s[0] == "settlement"][-1]
        for values in cols.values():
            del values[-1]  # the block as read back lacks its last settlement record
        return segments

    monkeypatch.setattr(market_role, "block_float_columns", lossy)
    with pytest.raises(ConservationError, match=r"'ledger' broken at interval 0 \(settlement records\): "
                                                r"expected 6, got 5"):
        _day(tmp_path)


def test_ledger_columns_read_back_equal_the_decoded_records(tmp_path):
    """block_float_columns (the check's fast read) against decode_block's records: no
    difference; a record changed in one column is found, with its difference."""
    from types import SimpleNamespace

    from federates.market.books import ledger_differences
    from federates.market.ledger import (
        _split_blocks,
        _stream_bytes,
        block_float_columns,
        decode_block,
    )
    from federates.market.settlement import DR_COLUMNS

    market = _day(tmp_path)
    market.on_market_time(2, [], [], [])
    raw, _ = _split_blocks(_stream_bytes(tmp_path / "ledger.zst"))
    closing = [b for b in raw if any(r["kind"] == "settlement" for r in decode_block(b)["records"])]
    assert closing
    for b in closing:
        # demand response off: the records have no DR columns, the rows hold 0 there
        rows = [SimpleNamespace(**dict.fromkeys(DR_COLUMNS, 0.0), **r["body"])
                for r in decode_block(b)["records"] if r["kind"] == "settlement"]
        assert ledger_differences(block_float_columns(b), rows) == (len(rows), [])
        rows[1].metered_kwh += 0.25
        n, differ = ledger_differences(block_float_columns(b), rows)
        assert n == len(rows) and [(d[0], d[4]) for d in differ] == [("metered_kwh", 0.25)]
        assert differ[0][2] - differ[0][3] == pytest.approx(0.25)


def _meters(mode: str = "fail") -> tuple[MetersRole, np.ndarray, np.ndarray, np.ndarray]:
    cfg = validate({"study": {"duration": "30min"}, "feeder": {"conservation": mode}})
    sites = [CustomerSite(participant=f"p{i}", index=i, bus="671", phase="a", group=f"g{i}", load="671")
             for i in range(3)]
    role = MetersRole(cfg, sites)
    s = cfg.timeline.steps_per_interval
    rng = np.random.default_rng(1)
    v, p, q = np.ones((s, 3)), rng.normal(0, 3, (s, 3)), rng.normal(0, 1, (s, 3))
    return role, v, p, q


def test_energy_check_holds_within_the_power_flow_tolerance_and_fires_beyond():
    role, v, p, q = _meters()
    h = role.timeline.step_h
    exact = (p * h).sum(axis=0)
    apparent = (np.hypot(p, q) * h).sum(axis=0)
    role.record_interval(0, v, p, q, exact + 0.5 * SOLUTION_TOLERANCE * apparent)  # within the solution's tolerance
    off = exact.copy()
    off[1] += 2 * SOLUTION_TOLERANCE * apparent[1] + ENERGY_TOLERANCE_KWH
    with pytest.raises(ConservationError, match=r"'energy' broken at interval 1 \(p1\)"):
        role.record_interval(1, v, p, q, off)
    role, v, p, q = _meters()
    with pytest.raises(ConservationError, match=r"'energy' broken at interval 0 \(p2\).*got nan"):
        bad = (p * h).sum(axis=0)
        role.record_interval(0, v, np.where(np.arange(3) == 2, np.nan, p), q, bad)


def test_energy_check_warns_and_the_runner_joins_the_rows(tmp_path):
    role, v, p, q = _meters("warn")
    h = role.timeline.step_h
    delivered = (p * h).sum(axis=0)
    delivered[0] += 1.0
    role.record_interval(0, v, p, q, delivered)
    t = role.drain_tables()["conservation_meters"]
    assert list(t["subject"]) == ["p0"] and t["error"].iloc[0] == pytest.approx(1.0, abs=1e-9)
    assert len(role.drain_tables()["conservation_meters"]) == 0  # drained
    results = tmp_path / "results"
    results.mkdir()
    t.to_parquet(results / "conservation_meters.parquet")
    t.iloc[:0].to_parquet(results / "conservation_feeder.parquet")
    merge_tables(results)
    assert sorted(x.name for x in results.iterdir()) == ["conservation.parquet"]
    import pandas as pd

    merged = pd.read_parquet(results / "conservation.parquet")
    assert list(merged.columns) == list(DTYPES) and len(merged) == 1


def test_a_check_that_cannot_be_made_is_broken():
    books = Conservation("x", "fail")
    assert books.check("power", interval=0, subject="s", expected=1.0, actual=1.0, tolerance=0.0, unit="kW")
    with pytest.raises(ConservationError):
        books.check("power", interval=0, subject="s", expected=1.0, actual=math.nan, tolerance=1.0, unit="kW")
    with pytest.raises(ValueError, match=r"feeder\.conservation is 'loud'; allowed: fail, warn"):
        Conservation("x", "loud")
