"""Bad input, fuzzed: every invalid study config, order CSV or feeder file is a clear error
(exit 2, a message naming the field / row / column / file), never a traceback.

Most examples go through the parsers in-process (``federates.common.config.validate``,
``federates.market.orders_csv.read_orders_csv``) and through ``runner.cli.main`` (the
command's error handling without a process start); a few through the real ``tecosim``
command as a subprocess. Deterministic (``derandomize``) and bounded: the file runs in
well under a minute.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from federates.common.config import StudyFile, resolved_dict, validate
from federates.common.errors import ConfigError
from federates.market.orders_csv import OPTIONAL, REQUIRED, read_orders_csv
from runner.cli import main
from tests.conftest import DEFAULT, tecosim

BASE: dict[str, Any] = yaml.safe_load(DEFAULT.read_text())
#: every key path of the full config (defaults included), so mutations reach every field
FULL: dict[str, Any] = resolved_dict(validate(copy.deepcopy(BASE)))

FAST = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# capsys is read (and so reset) in every example
CLI = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
SUBPROCESS = settings(max_examples=3, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _paths(d: dict[str, Any], pre: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*pre, k))
        if isinstance(v, dict):
            out += _paths(v, (*pre, k))
    return out


PATHS = _paths(FULL)

# ---------------------------------------------------------------------- strategies
BAD_DURATIONS = ["-5min", "1e400h", "nanmin", "infs", "15 parsecs", "0s", "", "h", "--1h", "1e-300s",
                 "1e308d", "½h", "１５min", "15min\x00"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),  # unicode included
    st.sampled_from(BAD_DURATIONS),
)
garbage = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)
keys = st.one_of(st.text(max_size=10), st.sampled_from([p[-1] for p in PATHS]))


@st.composite
def mutated_configs(draw) -> Any:
    """The default study with a few random edits: a field set to garbage, a key deleted,
    an unknown key added (anywhere), a section replaced; or a YAML that is no mapping."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(scalars, st.lists(garbage, max_size=3)))
    raw = copy.deepcopy(BASE if draw(st.booleans()) else FULL)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        node: Any = raw
        for k in path[:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(k, {})
        if not isinstance(node, dict):
            continue
        op = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        if op == "set":
            node[path[-1]] = draw(garbage)
        elif op == "delete":
            node.pop(path[-1], None)
        else:
            node[draw(keys)] = draw(garbage)
    return raw


def _names_a_field(field: str, raw: Any) -> bool:
    """A Problem's field is <root>/<file>/base or a dotted path into the schema or into
    the keys the config holds (an unknown key is named as written)."""
    if field in ("<root>", "<file>", "base"):
        return True
    tops = set(StudyFile.model_fields) | ({str(k) for k in raw} if isinstance(raw, dict) else set())
    return any(field == t or field.startswith(f"{t}.") for t in tops)


def check_validate(raw: Any) -> None:
    try:
        cfg = validate(copy.deepcopy(raw))
    except ConfigError as e:
        assert e.problems, "a ConfigError without problems"
        for p in e.problems:
            assert p.field and _names_a_field(p.field, raw), (p, raw)
            assert p.message, p
    else:
        assert isinstance(cfg, StudyFile)


def _write_yaml(path: Path, raw: Any) -> None:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")


# ---------------------------------------------------------------------- config
@FAST
@given(mutated_configs())
@example({**BASE, "study": {**BASE["study"], "duration": 1e308, "market_interval": 1e-300}})
@example({**BASE, "meters": {"reporting_interval": math.inf}})
@example({**BASE, "study": {**BASE["study"], "market_interval": 1e300, "duration": 1e300},
          "meters": {"reporting_interval": 3}})
@example({**BASE, "feeder": {"model": None, "path": "a\x00b"}})
@example({**BASE, "feeder": {"model": None, "path": "x" * 5000}})
@example([1, 2])
@example(None)
def test_validate_gives_a_study_or_problems_naming_fields(raw):
    check_validate(raw)


def test_the_fixed_crashes_name_their_field():
    cases = [
        ("study.duration", {"study": {**BASE["study"], "duration": math.inf}}),
        # duration 1e308 s / market_interval 1e-300 s overflowed to inf intervals; such a
        # duration is now refused as study.duration (a year at most)
        ("study.duration", {"study": {**BASE["study"], "duration": 1e308, "market_interval": 1e-300}}),
        ("feeder.path", {"feeder": {"model": None, "path": "a\x00b"}}),
    ]
    for field, edit in cases:
        with pytest.raises(ConfigError) as e:
            validate({**BASE, **edit})
        assert field in {p.field for p in e.value.problems}, (field, e.value)


@CLI
@given(mutated_configs(), st.lists(st.sampled_from(["study.seed=[", "study=5", "=1", "study.duration=1e400h",
                                                     "a.b.c=", "nokey"]), max_size=2))
def test_validate_command_in_process_exits_0_or_2(capsys, raw, sets):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "study.yaml"
        _write_yaml(path, raw)
        argv = ["validate", str(path)]
        for s in sets:
            argv += ["--set", s]
        code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert "tecosim: invalid" in err


@pytest.mark.slow
@SUBPROCESS
@given(mutated_configs())
def test_validate_command_exits_0_or_2_without_traceback(raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "study.yaml"
        _write_yaml(path, raw)
        r = tecosim("validate", str(path), timeout=300)
    assert r.returncode in (0, 2), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("content, field", [
    (b"\xff\xfe\x00 not utf-8", "<file>"),
    (b"- 1\n- 2\n", "<root>"),
    (b"study: [\n", "<file>"),
    (b"[" * 1500 + b"]" * 1500, "<file>"),
    (b'base: "a\\0b"\n', "base"),
    (b"base: 5\n", "base"),
], ids=["binary", "list", "bad_yaml", "deep", "nul_base", "int_base"])
def test_unreadable_config_files_name_the_file(tmp_path, capsys, content, field):
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"- {field}:" in err and "Traceback" not in err


def test_bad_set_values_name_the_key(capsys):
    assert main(["validate", str(DEFAULT), "--set", "study.seed=[", "--set", "prosumers.count=-1"]) == 2
    err = capsys.readouterr().err
    assert "study.seed: value is not valid YAML" in err


# ---------------------------------------------------------------------- order CSV
FIELD = re.compile(r"^(<file>|column .+|row \d+(, column \w+)?)$")
cells = st.one_of(
    st.sampled_from(["buy", "sell", "BUY", " sell ", "hold", "", "1", "-1", "0", "nan", "inf", "-inf", "1e400",
                     "0x10", "1_000", "A", "ü", "\x00", '"', "1,5"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=8),
)
header_names = st.one_of(st.sampled_from(REQUIRED + OPTIONAL), st.text(max_size=8))


@st.composite
def order_files(draw) -> bytes:
    """Random bytes, or a CSV with a random header (required columns often present, often
    not) and rows of random cells and lengths, in UTF-8 or another encoding."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=600))
    header = list(REQUIRED) if draw(st.booleans()) else draw(st.lists(header_names, max_size=8))
    if draw(st.booleans()):
        header += draw(st.lists(header_names, max_size=2))
    buf = io.StringIO()
    w = csv.writer(buf) if draw(st.booleans()) else None
    lines = [header, *draw(st.lists(st.lists(cells, max_size=len(header) + 2), max_size=12))]
    for line in lines:
        if w is not None:
            w.writerow(line)
        else:
            buf.write(",".join(line) + draw(st.sampled_from(["\n", "\r\n", "\r"])))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return buf.getvalue().encode(encoding, errors="replace")


def check_orders(path: Path) -> None:
    try:
        orders = read_orders_csv(path)
    except ConfigError as e:
        assert e.problems and e.source == str(path)
        for p in e.problems:
            assert FIELD.match(p.field), p
            assert p.message, p
    else:
        for o in orders:
            assert o.side in ("buy", "sell") and math.isfinite(o.energy_kwh) and o.energy_kwh >= 0
            assert math.isfinite(o.price_usd_per_kwh) and o.participant


@FAST
@given(order_files())
@example(b"participant,side,energy_kwh,price_usd_per_kwh\nA,buy,1," + b"9" * 200_000 + b"\n")
@example(b"participant,side,energy_kwh,price_usd_per_kwh\nA,buy,1,0.2\n\xff,sell,1,0.1\n")
@example(b"participant,side,energy_kwh,price_usd_per_kwh\nA,buy,-1,0.2\nB,hold,1,x\n")
@example(b"")
def test_read_orders_csv_gives_orders_or_problems_naming_row_and_column(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "orders.csv"
        path.write_bytes(content)
        check_orders(path)


def test_bad_order_files_name_row_and_column(tmp_path):
    cases = {
        b"participant,side,energy_kwh,price_usd_per_kwh\nA,buy,1," + b"9" * 200_000 + b"\n": "row 2",
        b"participant,side,energy_kwh,price_usd_per_kwh\nA,buy,1,0.2\n\xff,sell,1,0.1\n": "row 3",
        b"participant,side,energy_kwh,price_usd_per_kwh\nA,buy,-1,0.2\n": "row 2, column energy_kwh",
        b"participant,side,energy_kwh\nA,buy,1\n": "column price_usd_per_kwh",
    }
    for content, field in cases.items():
        path = tmp_path / "orders.csv"
        path.write_bytes(content)
        with pytest.raises(ConfigError) as e:
            read_orders_csv(path)
        assert field in {p.field for p in e.value.problems}, e.value
    for path in (tmp_path / "missing.csv", tmp_path):
        with pytest.raises(ConfigError) as e:
            read_orders_csv(path)
        assert [p.field for p in e.value.problems] == ["<file>"]


def test_a_large_order_book_is_read(tmp_path):
    path = tmp_path / "orders.csv"
    rows = [f"p{i},{'buy' if i % 2 else 'sell'},{i % 7},{0.1 + i % 5 / 100}" for i in range(20_000)]
    path.write_text("participant,side,energy_kwh,price_usd_per_kwh\n" + "\n".join(rows) + "\n")
    assert len(read_orders_csv(path)) == 20_000


@CLI
@given(order_files(), st.sampled_from([[], ["--retail", "nan"], ["--feed-in", "-1"], ["--topology", "p2p"],
                                        ["--topology", "nope"], ["--feed-in", "0.5", "--retail", "0.1"]]))
def test_clear_command_in_process_exits_0_or_2(capsys, content, args):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "orders.csv"
        path.write_bytes(content)
        code = main(["clear", str(path), *args])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert "tecosim: invalid" in err


@pytest.mark.slow
@SUBPROCESS
@given(order_files())
def test_clear_command_exits_0_or_2_without_traceback(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "orders.csv"
        path.write_bytes(content)
        r = tecosim("clear", str(path), timeout=120)
    assert r.returncode in (0, 2), r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------- feeder files
def _feeder(tmp_path: Path, kind: str) -> Path:
    if kind == "garbage":
        p = tmp_path / "garbage.dss"
        p.write_bytes(bytes(range(256)) * 8)
    elif kind == "empty":
        p = tmp_path / "empty.dss"
        p.write_bytes(b"")
    elif kind == "directory":
        p = tmp_path / "model.dss"
        p.mkdir()
    else:
        p = tmp_path / "redirect.dss"
        p.write_text("Clear\nRedirect nothere.dss\n")
    return p


@pytest.mark.parametrize("kind", ["garbage", "empty", "directory", "redirect"])
def test_corrupted_feeder_file_is_bad_input_naming_the_file(tmp_path, capsys, kind):
    master = _feeder(tmp_path, kind)
    argv = ["validate", str(DEFAULT), "--set", "feeder.model=null", "--set", f"feeder.path={master}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "feeder.path" in err and str(master) in err
    if kind == "redirect":
        assert "nothere.dss" in err


@pytest.mark.slow
def test_run_with_a_garbage_feeder_exits_2_naming_the_file(tmp_path):
    master = _feeder(tmp_path, "garbage")
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(tmp_path / "run"),
                "--set", "feeder.model=null", "--set", f"feeder.path={master}", "--set", "study.duration=15min",
                timeout=300)
    assert r.returncode == 2, r.stderr
    assert "feeder.path" in r.stderr and str(master) in r.stderr
    assert "Traceback" not in r.stderr
