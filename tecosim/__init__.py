"""tecosim from Python: run studies, open run folders, read their tables and KPIs,
write reports, compare runs (docs/api.md).

    import tecosim

    run = tecosim.run("configs/weak_grid.yaml", engine="in_process",
                      overrides={"study.duration": "2h"})
    run.tables["voltages"]          # a pandas DataFrame, read from Parquet when asked
    run.kpis["v_min_pu"]            # KPI totals over the study [units in the keys]
    tecosim.compare([run, tecosim.open_run("runs/other")], out="runs/cmp")
    tecosim.sweep("configs/default.yaml", {"prosumers.count": [20, 40]}, seeds=5)

The ``tecosim`` command is a thin layer over these functions (``runner/cli.py``);
they live in ``runner/api.py`` so that the command can call them, and this package
re-exports them under the one name.
"""

from federates.common.errors import ConfigError, FederationError, Problem, TecosimError
from runner.api import (
    ENGINES,
    Comparison,
    ConfigLike,
    Engine,
    Overrides,
    Run,
    SweepResult,
    Tables,
    collect,
    compare,
    load,
    open_run,
    run,
    sweep,
)

__all__ = [
    "ENGINES",
    "Comparison",
    "ConfigError",
    "ConfigLike",
    "Engine",
    "FederationError",
    "Overrides",
    "Problem",
    "Run",
    "SweepResult",
    "Tables",
    "TecosimError",
    "collect",
    "compare",
    "load",
    "open_run",
    "run",
    "sweep",
]
