"""The DSO's grouped linear model (``controllers.sensitivities: grouped``) through the
federation: the very weak synthetic grid with the DSO's envelopes and curtailment,
the prosumers split in two federates; the tables equal the in-process engine's (both
read the same ``sensitivities.npz`` and do the same arithmetic on it)."""

from __future__ import annotations

import numpy as np
import pytest

from runner.run_folder import read_tables
from tests.conftest import DEFAULT, assert_same_tables, run_both_engines

pytestmark = pytest.mark.federation

VERY_WEAK = DEFAULT.parent / "very_weak_grid.yaml"
NOON = ["--set", "study.start=2026-06-21T11:00:00-04:00", "--set", "study.duration=1h",
        "--set", "prosumers.federates=2", "--set", "controllers.sensitivities=grouped",
        "--set", "market.network_aware=envelopes"]


def test_grouped_model_federation_equals_inprocess_engine(tmp_path):
    runs = run_both_engines(tmp_path, VERY_WEAK, "--no-report", *NOON)
    with np.load(runs["inprocess"] / "sensitivities.npz") as z:
        assert "own_dv_pu_per_kw" in z.files
    a = read_tables(runs["inprocess"])
    b = read_tables(runs["federation"])
    assert len(a["dso_envelopes"]) and (a["dso_envelopes"]["binding"] != "").any()
    assert_same_tables(a, b)
