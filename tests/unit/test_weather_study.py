"""A whole study on a weather file (configs/tmy3_year.yaml, one day, in process): it
runs, records the weather it used, and its PV energy matches what the file's
plane-of-array irradiation leads to."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pvlib
import pytest
import yaml

from runner.run_folder import read_tables
from tests.conftest import REPO, tecosim
from tests.unit.test_weather import _file_hours, _tmy3_rows

CONFIG = REPO / "configs" / "tmy3_year.yaml"
#: the loss chain of the PV model (federates/prosumers/profiles.py) and what is left to a
#: band: 14 % system losses and the PVWatts inverter (0.96 nominal, 0.94-0.96 at the part
#: loads of a day) are fixed; incidence-angle losses (physical IAM, 2-5 % over a day for
#: 10-20 deg south-ish roofs) and the cell temperature (SAPM + 4 K: cells at 45-60 degC
#: at noon in June at 25 degC air, -0.37 %/K: 0-13 % loss) give the band
PR_BAND = (0.86 * 0.94 * 0.95 * 0.87, 0.86 * 0.96 * 0.98 * 1.0)


@pytest.mark.slow
def test_tmy3_day_runs_and_its_pv_follows_the_files_poa_irradiation(tmp_path):
    run = tmp_path / "run"
    r = tecosim("run", str(CONFIG), "--engine", "inprocess", "--out", str(run), "--no-report",
                "--set", "prosumers.count=12", "--set", "prosumers.cloudiness=0.9")
    assert r.returncode == 0, r.stderr
    resolved_text = (run / "config.resolved.yaml").read_text()
    site = yaml.safe_load(resolved_text)["site"]
    assert (site["latitude"], site["longitude"], site["altitude_m"]) == (36.1, -79.95, 273.0)  # header
    assert site["timezone"] == "America/New_York"  # the config's
    assert site["weather"]["path"] == str(REPO / "data" / "weather" / "723170TYA.CSV")
    assert "prosumers.cloudiness (0.9) is ignored" in resolved_text
    m = json.loads((run / "manifest.json").read_text())
    assert m["weather"]["sha256"] == "1e96f84638ce98e6b29002bc45a27aa69bb29b0ed0368d3b52b7b1f81610c6c9"

    t = read_tables(run)
    pros = t["prosumers"].set_index("participant")
    pv = t["profiles"].groupby("participant")["pv_kw"].sum() / 60.0  # [kWh], 1-min steps
    has_pv = pros.index[pros["pv_kwp"] > 0]
    assert len(has_pv) >= 3
    # the file's own hours (Jun 21, local standard time = the study's day less its
    # last hour, which is night), transposed at the hour midpoints: independent of the
    # interpolation to minutes
    rows = _file_hours(_tmy3_rows(), 6, 21)
    mid = pd.date_range(pd.Timestamp("2026-06-21 00:30", tz="Etc/GMT+5"), periods=24, freq="1h")
    loc = pvlib.location.Location(36.1, -79.95, altitude=273)
    sp = loc.get_solarposition(mid)
    pr = []
    for p in has_pv:
        poa = pvlib.irradiance.get_total_irradiance(
            pros.at[p, "tilt_deg"], pros.at[p, "azimuth_deg"], sp["apparent_zenith"], sp["azimuth"],
            rows.dni.to_numpy(), rows.ghi.to_numpy(), rows.dhi.to_numpy(),
            dni_extra=pvlib.irradiance.get_extra_radiation(mid), albedo=0.2, model="isotropic")
        h_poa_kwh_per_m2 = float(np.nansum(poa["poa_global"])) / 1000.0
        pr.append(pv[p] / (pros.at[p, "pv_kwp"] * h_poa_kwh_per_m2))
    pr = np.array(pr)
    assert ((pr > PR_BAND[0]) & (pr < PR_BAND[1])).all(), pr
    assert np.ptp(pr) < 0.01  # one sky for every roof: the ratios agree (measured 0.764 +- 0.0004)
