"""The study config on the ground floor: its schema, its loader and its cross-field
rules. Everything above (the domain packages, the roles, the federates and the runner)
reads a study through these names; this package imports nothing above
``federates.common``.

* :mod:`.schema`: the sections of a study file as strict pydantic models;
* :mod:`.loader`: YAML with ``base:`` files, ``--set`` overrides, grid presets,
  validation into one :class:`ConfigError`;
* :mod:`.checks`: the cross-field rules;
* :mod:`.presets`: the grid presets' values;
* :mod:`.catalog`: the bundled feeders and the master file a study resolves to.
"""

from federates.common.config.catalog import (
    FEEDERS_DIR,
    GENERATED_FEEDER_DIR,
    REPO_ROOT,
    bundled_feeders,
    feeder_master,
    generated_feeder_parameters,
)
from federates.common.config.loader import (
    apply_grid_preset,
    apply_overrides,
    config_sha256,
    later_wins,
    load_config,
    load_config_dict,
    resolved_dict,
    validate,
)
from federates.common.config.presets import GRID_PRESETS
from federates.common.config.schema import (
    DEFAULT_MECHANISM,
    HELICS_ZMQ_PORT,
    MAX_DURATION_S,
    MAX_PROSUMERS,
    MECHANISMS_OF_TOPOLOGY,
    VOLTAGE_BANDS,
    CommsConfig,
    ControllersConfig,
    CurtailmentConfig,
    CustomerConnection,
    DemandResponseConfig,
    EvConfig,
    FederationConfig,
    FeederConfig,
    HvacConfig,
    LimitsConfig,
    MarketConfig,
    MeasuredProfilesConfig,
    MetersConfig,
    ProsumersConfig,
    SiteConfig,
    StudyConfig,
    StudyFile,
    SyntheticFeederConfig,
    VoltVarConfig,
    VoltWattConfig,
    WaterHeaterConfig,
    WeatherConfig,
    split_broker_address,
)

__all__ = [
    "DEFAULT_MECHANISM",
    "FEEDERS_DIR",
    "GENERATED_FEEDER_DIR",
    "GRID_PRESETS",
    "HELICS_ZMQ_PORT",
    "MAX_DURATION_S",
    "MAX_PROSUMERS",
    "MECHANISMS_OF_TOPOLOGY",
    "REPO_ROOT",
    "VOLTAGE_BANDS",
    "CommsConfig",
    "ControllersConfig",
    "CurtailmentConfig",
    "CustomerConnection",
    "DemandResponseConfig",
    "EvConfig",
    "FederationConfig",
    "FeederConfig",
    "HvacConfig",
    "LimitsConfig",
    "MarketConfig",
    "MeasuredProfilesConfig",
    "MetersConfig",
    "ProsumersConfig",
    "SiteConfig",
    "StudyConfig",
    "StudyFile",
    "SyntheticFeederConfig",
    "VoltVarConfig",
    "VoltWattConfig",
    "WaterHeaterConfig",
    "WeatherConfig",
    "apply_grid_preset",
    "apply_overrides",
    "bundled_feeders",
    "config_sha256",
    "feeder_master",
    "generated_feeder_parameters",
    "later_wins",
    "load_config",
    "load_config_dict",
    "resolved_dict",
    "split_broker_address",
    "validate",
]
