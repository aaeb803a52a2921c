"""Config validation: every problem named with its field and allowed values, exit 2."""

from __future__ import annotations

import pytest
import yaml

from federates.common.config import apply_overrides, load_config, validate
from federates.common.errors import ConfigError
from tests.conftest import DEFAULT, tecosim


def problems_of(raw) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        validate(raw)
    return {p.field: str(p) for p in e.value.problems}


def test_default_config_is_valid():
    cfg = load_config(DEFAULT)
    tl = cfg.timeline
    assert (tl.n_intervals, tl.steps_per_interval) == (96, 15)
    assert cfg.prosumers.count == 40


def test_every_problem_is_listed_once():
    raw = {
        "study": {"physics_step": "7min", "colour": "red"},
        "prosumers": {"count": -1},
        "feeder": {"model": "nope"},
        "market": {"topology": "barter"},
    }
    found = problems_of(raw)
    assert "study.colour" in found and "allowed" in found["study.colour"]
    assert "name" in found["study.colour"]  # allowed keys are listed
    assert "prosumers.count" in found
    assert "market.topology" in found and "community" in found["market.topology"]


def test_cross_field_rules():
    found = problems_of({"study": {"physics_step": "7min"}, "feeder": {"model": "nope"}})
    assert "does not divide" in found["study.physics_step"]
    assert "ieee13" in found["feeder.model"]


def test_feeder_path_must_exist(tmp_path):
    found = problems_of({"feeder": {"model": None, "path": str(tmp_path / "missing.dss")}})
    assert "no such file" in found["feeder.path"]


def test_overrides_parse_yaml_values():
    raw = apply_overrides({}, ["controllers.enabled=false", "prosumers.count=3"])
    assert raw == {"controllers": {"enabled": False}, "prosumers": {"count": 3}}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["no-equals-sign"])


def test_validate_cli_exits_2_listing_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"study": {"physics_step": "7min", "typo": 1},
                                   "prosumers": {"count": -5}, "feeder": {"model": "ieee999"}}))
    r = tecosim("validate", str(bad), timeout=120)
    assert r.returncode == 2
    for field in ("study.typo", "prosumers.count", "feeder.model", "study.physics_step"):
        assert field in r.stderr
    assert "Traceback" not in r.stderr


def test_run_refuses_bad_config_before_starting(tmp_path):
    r = tecosim("run", str(DEFAULT), "--out", str(tmp_path / "run"), "--set", "prosumers.count=-1",
                timeout=120)
    assert r.returncode == 2
    assert "prosumers.count" in r.stderr
    assert not (tmp_path / "run").exists()


def test_ok_config_validates_from_cli():
    r = tecosim("validate", str(DEFAULT), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "96 market intervals" in r.stdout


def test_example_configs_extend_the_default():
    from tests.conftest import REPO

    p2p = load_config(REPO / "configs" / "p2p_admm.yaml")
    assert (p2p.market.topology, p2p.market.mechanism) == ("p2p", "admm")
    assert p2p.prosumers.count == load_config(DEFAULT).prosumers.count  # from default.yaml
    assert load_config(REPO / "configs" / "community_lp.yaml").market.mechanism == "lp"


def test_base_errors_are_config_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular base"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "c.yaml")


def test_mechanism_must_belong_to_topology():
    found = problems_of({"market": {"topology": "community", "mechanism": "admm"}})
    assert "uniform_price" in found["market.mechanism"]


@pytest.mark.parametrize("override, field, limit", [
    ("prosumers.count=100001", "prosumers.count", "100000"),
    ("prosumers.count=100000000000", "prosumers.count", "100000"),
    ("study.duration=367d", "study.duration", "31622400"),
])
def test_absurd_sizes_are_refused_naming_the_field_and_the_bound(override, field, limit):
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULT, [override])
    assert [p.field for p in e.value.problems] == [field]
    assert limit in str(e.value)


def test_the_bounds_themselves_are_allowed():
    cfg = load_config(DEFAULT, ["prosumers.count=100000", "study.duration=366d"])
    assert cfg.prosumers.count == 100000 and cfg.study.duration_s == 366 * 86400


# ---- a later source wins over the pair member it replaces (federates.common.config.later_wins)
IEEE34 = str(DEFAULT.parents[1] / "feeders" / "ieee34" / "IEEE34.dss")


def test_a_path_on_the_command_line_replaces_the_files_model(tmp_path):
    cfg = load_config(DEFAULT, [f"feeder.path={IEEE34}"])
    assert (cfg.feeder.model, cfg.feeder.path) == (None, IEEE34)
    assert cfg._notes == [f"feeder.path (--set feeder.path) replaces feeder.model: ieee13 ({DEFAULT})"]
    # and back: a model replaces a path given earlier
    cfg = load_config(DEFAULT, [f"feeder.path={IEEE34}", "feeder.model=ieee34"])
    assert (cfg.feeder.model, cfg.feeder.path) == ("ieee34", None)
    # both in one source is still a mistake, named
    with pytest.raises(ConfigError, match="not both"):
        validate({"feeder": {"model": "ieee13", "path": IEEE34}})


def test_a_file_that_inherits_a_model_may_name_a_path(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text(yaml.safe_dump({"base": str(DEFAULT), "feeder": {"path": IEEE34}}))
    cfg = load_config(child)
    assert (cfg.feeder.model, cfg.feeder.path) == (None, IEEE34)
    assert cfg._notes and "replaces feeder.model: ieee13" in cfg._notes[0]
    # a path alone, no base: the bundled default model does not apply
    assert validate({"feeder": {"path": IEEE34}}).feeder.model is None


def test_a_topology_without_a_mechanism_takes_its_default():
    for topology, mechanism in (("p2p", "lp"), ("hybrid", "two_level"), ("community", "uniform_price")):
        cfg = load_config(DEFAULT, [f"market.topology={topology}"])
        assert cfg.market.mechanism == mechanism
    assert load_config(DEFAULT, ["market.topology=p2p"])._notes[0].startswith(
        "market.topology: p2p (--set market.topology) drops market.mechanism: uniform_price")
    assert load_config(DEFAULT, ["market.topology=p2p", "market.mechanism=admm"]).market.mechanism == "admm"
    # a mechanism named with the topology is still checked against it
    with pytest.raises(ConfigError, match="not a p2p mechanism"):
        load_config(DEFAULT, ["market.topology=p2p", "market.mechanism=uniform_price"])


@pytest.mark.feeder
def test_the_run_folder_says_what_was_replaced(tmp_path):
    out = tmp_path / "run"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(out), "--no-report",
                "--set", "study.duration=15min", "--set", "market.topology=p2p", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "tecosim: note: market.topology: p2p" in r.stderr
    head = (out / "config.resolved.yaml").read_text().splitlines()[0]
    assert head.startswith("# market.topology: p2p (--set market.topology) drops market.mechanism")
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["market"]["mechanism"] == "lp"


def test_load_limit_needs_demand_response_and_reads_bare_on_off():
    """``controllers.demand_response.load_limit: on`` acts only after demand response:
    refused without it, naming the field and what is allowed; YAML's bare on / off
    (booleans in YAML 1.1) read as the words."""
    found = problems_of({"controllers": {"demand_response": {"load_limit": "on"}}})
    msg = found["controllers.demand_response.load_limit"]
    assert "demand response" in msg and "controllers.demand_response.enabled" in msg
    raw = apply_overrides({}, ["controllers.demand_response.enabled=true", "controllers.demand_response.load_limit=on"])
    assert validate(raw).controllers.demand_response.load_limit == "on"
    assert validate(apply_overrides({}, ["controllers.demand_response.load_limit=off"])
                    ).controllers.demand_response.load_limit == "off"
    assert "controllers.demand_response.load_limit" in problems_of(
        {"controllers": {"demand_response": {"enabled": True, "load_limit": "sometimes"}}})


def test_sensitivity_model_choice_is_checked():
    """``controllers.sensitivities``: a bad value names the field and the allowed values."""
    found = problems_of({"controllers": {"sensitivities": "per_group"}})
    msg = found["controllers.sensitivities"]
    assert all(v in msg for v in ("auto", "points", "grouped"))
    assert load_config(DEFAULT).controllers.sensitivities == "auto"
    assert load_config(DEFAULT, ["controllers.sensitivities=grouped"]).controllers.sensitivities == "grouped"
