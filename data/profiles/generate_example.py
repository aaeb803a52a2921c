"""Writes example_15min.csv: a GENERATED file in the format of a measured smart-meter data
set, NOT measured data. Six customers, three days (2026-06-20 .. 22, San Juan), 15-min
mean power in kW; load from tecosim's own stochastic household model (1-min steps
averaged to 15 min) times a lognormal "meter" noise (sd of log 0.05), PV for three of
them from its own PV model; rounded to the watt. Two gaps are put in on purpose (one
missing row, one empty value) so the gap report has something to show.

    python data/profiles/generate_example.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from federates.common.config import SiteConfig
from federates.prosumers import profiles

OUT = Path(__file__).with_name("example_15min.csv")
CUSTOMERS = {"house_a": (9.0, 6.0), "house_b": (14.0, 0.0), "house_c": (21.0, 10.0),
             "house_d": (12.0, 0.0), "house_e": (17.0, 8.0), "house_f": (25.0, 0.0)}  # kWh/day, kWp


def main() -> None:
    site = SiteConfig()
    times = pd.date_range("2026-06-20T00:00:00", periods=3 * 1440, freq="1min", tz=site.timezone)
    rng = np.random.default_rng(2026)
    frames = []
    for i, (name, (daily_kwh, kwp)) in enumerate(CUSTOMERS.items()):
        load = profiles.household_load_kw(daily_kwh, times, seed=7, index=i)
        pv = profiles.pv_ac_kw(kwp, times, site, cloudiness=0.3, seed=7, index=i) if kwp else None
        load15 = load.reshape(-1, 15).mean(axis=1) * np.exp(0.05 * rng.standard_normal(len(times) // 15))
        frames.append(pd.DataFrame({
            "time": times[::15].strftime("%Y-%m-%dT%H:%M:%S%z").str[:-2] + ":00",
            "customer": name, "load_kw": np.round(load15, 3),
            "pv_kw": np.round(pv.reshape(-1, 15).mean(axis=1), 3) if pv is not None else np.nan,
        }))
    df = pd.concat(frames, ignore_index=True)
    df = df.drop(index=df.index[(df.customer == "house_b") & (df.time == "2026-06-21T07:30:00-04:00")])
    df.loc[(df.customer == "house_d") & (df.time == "2026-06-21T19:00:00-04:00"), "load_kw"] = np.nan
    header = ("# GENERATED example in the format of a measured data set, NOT measured data:\n"
              "# tecosim's own household and PV models plus noise (data/profiles/generate_example.py).\n")
    OUT.write_text(header + df.to_csv(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
