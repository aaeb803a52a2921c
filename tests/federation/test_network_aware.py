"""Network-aware clearing through the HELICS federation: the AMI readings, operating
envelopes, grid constraints, SCADA values and the envelopes the constrained clearing
sets travel between processes and give the same tables as the in-process engine (the
oracle, which calls the same roles in the same order)."""

from __future__ import annotations

import pytest

from runner.run_folder import read_tables
from tests.conftest import REPO, assert_same_tables, tecosim

pytestmark = pytest.mark.federation

WINDOW = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=1h"]


# envelopes through the federation run under `pytest -m benchmark` (suite time); the
# in-process envelope results are tested in tests/feeder/test_grid_in_the_loop.py
@pytest.mark.parametrize("mode", [pytest.param('envelopes', marks=pytest.mark.benchmark), "constraints"])
def test_federation_equals_inprocess_with_network_aware_clearing(tmp_path, mode):
    cfg = REPO / "configs" / "very_weak_grid.yaml"
    out = {}
    for engine in ("inprocess", "federation"):
        run = tmp_path / engine
        r = tecosim("run", str(cfg), "--engine", engine, "--out", str(run), *WINDOW,
                    "--set", f"market.network_aware={mode}")
        assert r.returncode == 0, r.stdout + r.stderr
        out[engine] = read_tables(run)
    a, b = out["inprocess"], out["federation"]
    assert len(a["envelopes"]) > 0  # the network-aware path did something
    assert_same_tables(a, b)
