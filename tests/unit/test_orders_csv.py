"""Reading a book of orders from CSV: a good file, and every bad case named by row and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from federates.common.errors import ConfigError
from federates.common.messages import Order
from federates.market.orders_csv import read_orders_csv


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "orders.csv"
    p.write_text(text, encoding="utf-8")
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        read_orders_csv(write(tmp_path, text))
    return [str(p) for p in e.value.problems]


def test_good_csv(tmp_path):
    p = write(
        tmp_path,
        "participant,side,energy_kwh,price_usd_per_kwh,bus,phase,community\n"
        "A,buy,3,0.25,b12,a,c1\n"
        " X , SELL , 2.5 , -0.01 ,,,\n"
        "Y,sell,0,0.1,,,\n",
    )
    assert read_orders_csv(p, interval=4) == [
        Order("A", "buy", 4, 3.0, 0.25, "b12", "a", "c1"),
        Order("X", "sell", 4, 2.5, -0.01),
        Order("Y", "sell", 4, 0.0, 0.1),
    ]


def test_optional_columns_may_be_absent(tmp_path):
    p = write(tmp_path, "side,participant,price_usd_per_kwh,energy_kwh\nbuy,A,0.2,1\n")
    assert read_orders_csv(p) == [Order("A", "buy", 0, 1.0, 0.2)]


def test_missing_and_unknown_columns(tmp_path):
    got = problems(tmp_path, "participant,side,kwh\nA,buy,1\n")
    assert any(g.startswith("column energy_kwh: missing") for g in got)
    assert any(g.startswith("column price_usd_per_kwh: missing") for g in got)
    assert any(g.startswith("column 'kwh': unknown column") for g in got)
    assert all("allowed: participant, side, energy_kwh, price_usd_per_kwh" in g for g in got)


def test_every_bad_row_is_collected_once(tmp_path):
    got = problems(
        tmp_path,
        "participant,side,energy_kwh,price_usd_per_kwh\n"
        "A,buy,1,0.2\n"  # row 2: good
        ",buy,1,0.2\n"  # row 3: empty participant
        "B,bid,1,0.2\n"  # row 4: unknown side
        "C,sell,lots,0.2\n"  # row 5: non-numeric energy
        "D,sell,-1,0.2\n"  # row 6: negative energy
        "E,buy,1,inf\n"  # row 7: non-finite price
        "F,buy,nan,cheap\n",  # row 8: two problems
    )
    assert len(got) == 7
    assert got[0].startswith("row 3, column participant: empty")
    assert got[1] == "row 4, column side: unknown side 'bid' (allowed: buy, sell)"
    assert got[2].startswith("row 5, column energy_kwh: not a number ('lots')")
    assert "allowed: a finite number >= 0 [kWh]" in got[2]
    assert got[3].startswith("row 6, column energy_kwh: -1.0 is not a finite value >= 0")
    assert got[4].startswith("row 7, column price_usd_per_kwh: inf is not finite")
    assert "allowed: a finite number [USD/kWh]" in got[4]
    assert got[5].startswith("row 8, column energy_kwh: nan is not a finite value")
    assert got[6].startswith("row 8, column price_usd_per_kwh: not a number ('cheap')")


def test_error_names_the_file(tmp_path):
    p = write(tmp_path, "participant,side,energy_kwh,price_usd_per_kwh\nA,hold,1,0.2\n")
    with pytest.raises(ConfigError, match=r"orders\.csv: 1 problem\(s\)"):
        read_orders_csv(p)
