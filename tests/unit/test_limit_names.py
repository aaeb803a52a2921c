"""The limit names (federates/common/limits.py): one vocabulary, written as plain strings."""

from __future__ import annotations

import pandas as pd

from federates.common.limits import Limit, limit_key, limit_of


def test_limits_are_their_names():
    assert [str(x) for x in Limit] == ["v_max", "v_min", "thermal", "vuf", "export", "import",
                                       "volt_watt", "envelope", "load_limit", "demand_response"]
    assert Limit.V_MAX == "v_max" and {"v_max": 1}[Limit.V_MAX] == 1
    assert limit_key(Limit.THERMAL, "line.l12") == "thermal:line.l12"
    assert limit_of("v_min:p003") == Limit.V_MIN and limit_of(limit_key(Limit.EXPORT, "source")) == "export"


def test_a_table_of_limits_holds_plain_strings(tmp_path):
    df = pd.DataFrame({"limit": [Limit.V_MAX, Limit.VOLT_WATT]}).astype({"limit": str})
    df.to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"limit": ["v_max", "volt_watt"]}).astype({"limit": str}).to_parquet(tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert [type(x) for x in pd.read_parquet(tmp_path / "a.parquet")["limit"]] == [str, str]


def test_every_curtailment_cause_has_a_colour_in_the_report():
    from federates.feeder.inverters import CAUSES
    from runner.report import CAUSE_COLOURS, CAUSE_LABELS

    assert set(CAUSES) - {""} == set(CAUSE_COLOURS) == set(CAUSE_LABELS)
