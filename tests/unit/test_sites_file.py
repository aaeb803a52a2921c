"""A sites file (prosumers.sites) checked against the real IEEE 13-node model: customers
at the buses and phases it names, every bad bus, phase, name or number reported with
the file, line, column and some allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from federates.common.config import validate
from federates.common.config.catalog import feeder_master
from federates.common.errors import ConfigError
from federates.feeder.opendss import OpenDSSFeeder
from federates.feeder.sites_file import bus_phases_of_nodes, read_sites_file
from federates.prosumers.agents import make_specs


@pytest.fixture(scope="module")
def ieee13():
    feeder = OpenDSSFeeder(feeder_master(validate({}), Path(".")))
    return feeder.load_points(), bus_phases_of_nodes(list(feeder.node_v_pu()))


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "sites.csv"
    f.write_text(text)
    return f


def test_bus_phases_of_ieee13(ieee13):
    _, phases = ieee13
    # from the published model: 611 is phase c only, 652 phase a only, 645/646 phases b and c
    assert phases["611"] == {"c"} and phases["652"] == {"a"}
    assert phases["645"] == {"b", "c"} and phases["671"] == {"a", "b", "c"}


def test_sites_in_file_order_with_groups_loads_and_overrides(tmp_path, ieee13):
    f = _write(tmp_path, "# comment\ncustomer,bus,phases,pv_kwp,battery_kwh,daily_load_kwh\n"
                         "h1,634,a,5,,\nh2,634,a,,0,\nh3,634,A,,,12\nh4,634,1,,,\nh5,671,c,,10,\nh6,684,3,,,\n")
    sites = read_sites_file(f, *ieee13, customers_per_transformer=3)
    assert [s.participant for s in sites] == ["h1", "h2", "h3", "h4", "h5", "h6"]
    assert [s.index for s in sites] == list(range(6))
    assert [(s.bus, s.phase) for s in sites] == [("634", "a")] * 4 + [("671", "c"), ("684", "c")]
    assert [s.group for s in sites] == ["g000", "g000", "g000", "g001", "g002", "g003"]  # 3 per transformer
    assert [s.load for s in sites] == ["634a"] * 4 + ["671", ""]  # 684 has no model Load
    assert (sites[0].pv_kwp, sites[1].battery_kwh, sites[2].daily_load_kwh) == (5.0, 0.0, 12.0)
    specs = make_specs(validate({"prosumers": {"count": 6}}), sites)
    assert specs[0].pv_kwp == 5.0 and specs[0].inverter_kva == pytest.approx(6.0)
    assert specs[1].battery_kwh == 0.0 and specs[1].battery_kw == 0.0
    assert specs[4].battery_kwh == 10.0 and specs[4].battery_kw == 5.0  # the configured power rating
    assert specs[2].daily_load_kwh == 12.0


def test_every_bad_row_named_by_line_and_column(tmp_path, ieee13):
    f = _write(tmp_path, "customer,bus,phase,pv_kwp\nh1,634,a,5\nh1,634,b,\nh3,6340,a,\nh4,611,a,\n"
                         "h 5,652,a,\nh6,652,a,-3\n")
    with pytest.raises(ConfigError) as e:
        read_sites_file(f, *ieee13)
    msg = str(e.value)
    assert msg.startswith(f"{f}: 5 problem(s)")
    assert "line 3, column customer: 'h1' is listed twice (first on line 2)" in msg
    assert "line 4, column bus: '6340' is not a bus of the feeder model (allowed: 634" in msg
    assert "line 5, column phase: 'a' is not a phase of bus 611 (allowed: c)" in msg
    assert "line 6, column customer: 'h 5' is not a usable name" in msg
    assert "line 7, column pv_kwp: '-3' is not a finite number >= 0" in msg


def test_missing_and_unknown_columns(tmp_path, ieee13):
    with pytest.raises(ConfigError, match=r"(?s)column kw: unknown column.*columns: no phase column"):
        read_sites_file(_write(tmp_path, "customer,bus,kw\nh1,634,3\n"), *ieee13)
    with pytest.raises(ConfigError, match=r"line 3, column group: 'T1' is on bus 634 phase a \(line 2\), not 675 a"):
        read_sites_file(_write(tmp_path, "customer,bus,phase,group\nh1,634,a,T1\nh2,675,a,T1\n"), *ieee13)
