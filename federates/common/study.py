"""A run folder's study: what every role is built from (``from_study``), in both engines.

A run folder holds ``config.resolved.yaml`` and ``sites.json`` (where each prosumer
connects), written by the runner before anything starts. It may also hold
``distances_km.npy`` (the customers' electrical distances [km]) and ``v_base_v.npy``
(see ``runner.launch.prepare_run``). ``Study.load(run_dir)`` reads them back;
``write_tables`` writes a role's tables as Parquet into ``results/``. What a domain
derives from a study lives with the domain (``federates.prosumers.agents.inverter_kva_of``,
``federates.feeder.sensitivity.load_sensitivities``). No HELICS here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from federates.common.config import StudyFile, feeder_master, validate
from federates.common.config.catalog import SAFE_LOADER
from federates.common.grid import CustomerSite

CONFIG_FILE = "config.resolved.yaml"
SITES_FILE = "sites.json"
DISTANCES_FILE = "distances_km.npy"
V_BASE_FILE = "v_base_v.npy"
TARIFF_PRICES_FILE = "tariff_prices.csv"
"""A dynamic tariff's CSV, copied into the run folder (``market.tariff.path`` names it)."""
RESULTS_DIR = "results"
PROGRESS_FILE = "progress"
"""``<run>/progress``: the simulated time [s] the feeder federate has reached (text)."""


@dataclass(frozen=True)
class Study:
    """A validated config, the customer sites and the feeder master file.

    ``distance_km``: n x n electrical distances between the customers along the feeder
    [km], in site order, or None when the run folder has no ``distances_km.npy``.
    """

    cfg: StudyFile
    sites: list[CustomerSite]
    master: Path
    run_dir: Path
    distance_km: np.ndarray | None = None

    @classmethod
    def load(cls, run_dir: Path) -> Study:
        run_dir = Path(run_dir)
        raw = yaml.load((run_dir / CONFIG_FILE).read_text(), Loader=SAFE_LOADER)
        cfg = validate(raw, base_dir=run_dir, source=str(run_dir / CONFIG_FILE))
        sites = [CustomerSite(**s) for s in json.loads((run_dir / SITES_FILE).read_text())]
        distance_km = None
        if (run_dir / DISTANCES_FILE).is_file():
            distance_km = np.load(run_dir / DISTANCES_FILE)
            if distance_km.shape != (len(sites), len(sites)):
                raise ValueError(
                    f"{run_dir / DISTANCES_FILE}: shape {distance_km.shape} does not match "
                    f"{len(sites)} customer sites"
                )
        return cls(cfg=cfg, sites=sites, master=feeder_master(cfg, run_dir), run_dir=run_dir,
                   distance_km=distance_km)

    @property
    def v_base_v(self) -> np.ndarray:
        """Nominal L-N voltage of each customer's point [V]: the service secondary with a
        ``secondary`` connection, else the primary bus's base (``v_base_v.npy``,
        written by prepare_run)."""
        conn = self.cfg.feeder.customer_connection
        if conn.kind == "secondary":
            return np.full(len(self.sites), conn.secondary_kv * 1000.0)
        return np.load(self.run_dir / V_BASE_FILE)

    @property
    def participants(self) -> list[str]:
        return [s.participant for s in self.sites]


def write_sites(run_dir: Path, sites: list[CustomerSite]) -> None:
    """``sites.json``: one object per site; the optional fields that are None are left out."""
    rows = [{k: v for k, v in asdict(s).items() if v is not None} for s in sites]
    (Path(run_dir) / SITES_FILE).write_text(json.dumps(rows, indent=1))


def write_distances(run_dir: Path, distance_km: np.ndarray) -> None:
    """The customers' electrical distances [km] to ``distances_km.npy``."""
    np.save(Path(run_dir) / DISTANCES_FILE, np.asarray(distance_km, dtype=float))


def write_tables(run_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Each table to ``results/<name>.parquet`` (one owner per table)."""
    out = Path(run_dir) / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(out / f"{name}.parquet", index=False)


def write_progress_file(run_dir: Path, t_s: float) -> None:
    """Write the simulated time ``t_s`` [s] to ``<run_dir>/progress`` (atomic replace,
    so a reader never sees a half-written number; read by ``runner.progress``)."""
    path = Path(run_dir) / PROGRESS_FILE
    tmp = path.with_name(PROGRESS_FILE + ".tmp")
    tmp.write_text(f"{t_s:.17g}\n")
    os.replace(tmp, path)


