"""The study's vocabulary of clearing mechanisms (the schema, on the ground floor) and the
market's registry of their code name the same mechanisms, so a config the loader accepts
always finds its code, and every registered mechanism can be named in a config."""

import pytest

from federates.common.config import DEFAULT_MECHANISM, MECHANISMS_OF_TOPOLOGY, validate
from federates.common.errors import ConfigError
from federates.market.mechanisms import allowed_mechanisms


def test_schema_vocabulary_is_the_registry():
    assert {t: list(names) for t, names in MECHANISMS_OF_TOPOLOGY.items()} == allowed_mechanisms()


def test_each_topology_default_is_one_of_its_mechanisms():
    for topology, name in DEFAULT_MECHANISM.items():
        assert name in MECHANISMS_OF_TOPOLOGY[topology]


def test_unknown_mechanism_names_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        validate({"market": {"topology": "p2p", "mechanism": "uniform_price"}})
    text = str(e.value)
    assert "market.mechanism" in text and "admm, admm_distributed, lp" in text
