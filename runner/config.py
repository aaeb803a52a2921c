"""The study config: one schema, validated before anything starts.

``load_config`` reads YAML, applies ``--set key=value`` overrides, validates with
pydantic (unknown keys are errors) and with the cross-field rules below, and raises one
:class:`ConfigError` that lists every problem with its field path and allowed values.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from federates.common.errors import ConfigError, Problem
from federates.common.rng import stream
from federates.common.timeline import Timeline
from federates.common.units import parse_duration_s

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_DURATION_S = 366 * 86400.0  # study.duration [s]
MAX_PROSUMERS = 100_000  # prosumers.count
FEEDERS_DIR = REPO_ROOT / "feeders"

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    # no field of a study is meaningful as inf or NaN (YAML reads .inf / .nan)
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class Duration(float):
    """Seconds, read from ``900``, ``"15min"``, ``"1h"``."""


def _duration(v: Any) -> float:
    try:
        return parse_duration_s(v)
    except ValueError as e:
        raise ValueError(str(e)) from None


class StudyConfig(_Strict):
    name: str = "study"
    start: str = Field(
        "2026-06-21T00:00:00-04:00",
        description="local start time, ISO 8601 with UTC offset",
    )
    # a year at most: beyond it the timeline's arrays alone outgrow memory at 1 min steps
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)] = Field(86400.0, alias="duration")
    market_interval_s: PositiveFloat = Field(900.0, alias="market_interval")
    physics_step_s: PositiveFloat = Field(60.0, alias="physics_step")
    seed: Annotated[int, Field(ge=0)] = 42
    # market intervals per chunk of results tables streamed to Parquet during the run
    # (federates.common.tables); null: automatic, about a million customer-steps per chunk
    chunk_intervals: Annotated[int, Field(ge=1)] | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    _d = field_validator("duration_s", "market_interval_s", "physics_step_s", mode="before")(
        classmethod(lambda cls, v: _duration(v))
    )

    @field_validator("start", mode="before")
    @classmethod
    def _start_text(cls, v: Any) -> Any:
        import datetime as _dt

        return v.isoformat() if isinstance(v, _dt.datetime) else v

    @field_validator("start")
    @classmethod
    def _start(cls, v: str) -> str:
        import pandas as pd

        ts = pd.Timestamp(v)
        if ts.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-06-21T00:00:00-04:00")
        return v


class SiteConfig(_Strict):
    latitude: Annotated[float, Field(ge=-90, le=90)] = 18.4655
    longitude: Annotated[float, Field(ge=-180, le=180)] = -66.1057
    altitude_m: float = 10.0
    timezone: str = "America/Puerto_Rico"


class CustomerConnection(_Strict):
    """How prosumers hang off the feeder's load buses.

    ``secondary``: each group of ``customers_per_transformer`` prosumers gets a
    single-phase service transformer (primary L-N to ``secondary_kv``) and each prosumer
    a service drop of ``service_length_m``. ``direct``: prosumers connect at the primary
    load bus node.
    """

    kind: Literal["secondary", "direct"] = "secondary"
    secondary_kv: PositiveFloat = 0.24
    transformer_kva: PositiveFloat = 25.0
    transformer_pct_r: PositiveFloat = 1.0
    transformer_pct_x: PositiveFloat = 2.0
    customers_per_transformer: Annotated[int, Field(ge=1)] = 3
    service_length_m: PositiveFloat = 40.0
    service_r_ohm_per_km: PositiveFloat = 0.5
    service_x_ohm_per_km: PositiveFloat = 0.08


class SyntheticFeederConfig(_Strict):
    """Parameters of the parametric synthetic feeder (``federates/feeder/synthetic.py``),
    used only with ``feeder.model: synthetic``.

    The defaults are the parameters of the bundled ``feeders/synthetic`` instance (its
    feeder.yaml; tests/feeder/test_weak_grid.py checks they agree), which such a run
    uses as is. When any of them differs, ``runner.launch.prepare_run`` writes the
    model into ``<run_dir>/feeder/synthetic.dss`` and the run uses that copy (see
    :func:`generated_feeder_parameters`). ``n_loads`` single-phase loads;
    ``source_mva_sc`` short-circuit power of the source [MVA]; ``lateral_km`` length of
    the three-phase trunk [km]; ``line_length_multiplier`` scales every line length
    [-]; ``phase_imbalance`` in [0, 1]: 0 spreads the loads (and so the customers placed
    on them) evenly over a/b/c, 1 puts them all on phase a; ``seed`` of the model's
    random stream (not the study seed).
    """

    n_loads: Annotated[int, Field(ge=1)] = 60
    source_mva_sc: PositiveFloat = 50.0
    lateral_km: PositiveFloat = 8.0
    line_length_multiplier: PositiveFloat = 1.0
    phase_imbalance: Fraction = 0.0
    seed: Annotated[int, Field(ge=0)] = 0


class FeederConfig(_Strict):
    model: str | None = "ieee13"
    path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _path_without_model(cls, data: Any) -> Any:
        # a feeder given by path alone is that model: the bundled default does not apply
        if isinstance(data, dict) and data.get("path") is not None and "model" not in data:
            return {**data, "model": None}
        return data
    background_load_scale: NonNegFloat = 1.0
    # model: each original load follows its own OpenDSS daily (else yearly) LoadShape
    background_load_shape: Literal["opendss_default", "flat", "model"] = "opendss_default"
    source_pu: Annotated[float, Field(gt=0.8, lt=1.2)] | None = None
    customer_connection: CustomerConnection = CustomerConnection()
    max_control_iterations: Annotated[int, Field(ge=1, le=99)] = 20
    lines_top_n: Annotated[int, Field(ge=0)] = 10  # most loaded lines/transformers kept per step
    loss_allocation: bool = True  # per-phase GBLA of the losses to customers each step (customer_losses)
    synthetic: SyntheticFeederConfig = SyntheticFeederConfig()
    # a power flow that does not converge: abort the run (default: no result ever rests
    # on physics the user did not ask for), hold the previous step, or curtail and retry
    # (federates/feeder/role.py, docs/outputs.md "nonconvergence")
    on_nonconvergence: Literal["abort", "hold", "curtail"] = "abort"
    # a broken live conservation check (energy, money, power, ledger;
    # federates/common/conservation.py): stop the run at that interval, or record a row
    # of the conservation table and go on
    conservation: Literal["fail", "warn"] = "fail"


class ProsumersConfig(_Strict):
    # 100 000 at most: 30 x the largest case benchmarked (3000, BENCHMARKS.md); more
    # would be a typo long before it is a study (the DSO's n x n model alone is 40 GB)
    count: Annotated[int, Field(ge=0, le=MAX_PROSUMERS)] = 40
    pv_share: Fraction = 0.8
    pv_kwp_min: NonNegFloat = 4.0
    pv_kwp_max: NonNegFloat = 10.0
    inverter_kva_per_kwp: Annotated[float, Field(ge=1.0, le=2.0)] = 1.2
    battery_share: Fraction = 0.2
    battery_kwh: NonNegFloat = 13.5
    battery_kw: NonNegFloat = 5.0
    daily_load_kwh_min: PositiveFloat = 8.0
    daily_load_kwh_max: PositiveFloat = 25.0
    load_model: Literal["stochastic_household"] = "stochastic_household"
    cloudiness: Fraction = 0.2
    forecast_error_pct: NonNegFloat = 10.0
    strategy: Literal["limit_price_uniform", "truthful_tariff", "zip", "roth_erev"] = "limit_price_uniform"
    phases: Literal["any", "a", "b", "c"] = "any"
    # how prosumers spread over the model's loads (federates.feeder.placement): drawn by
    # load kW, a load may get several ("weighted"), or at most one each ("one_per_load")
    placement: Literal["weighted", "one_per_load"] = "weighted"
    pv_penetration_pct: PositiveFloat | None = Field(
        default=None,
        description=(
            "PV penetration: total installed PV [kWp] / feeder peak load "
            "(pv_penetration_base_kw) x 100 [%]. When set, every drawn PV size is "
            "multiplied by one common factor so that the total matches; pv_kwp_min/max "
            "then only set the spread of the sizes. null: sizes as drawn."
        ),
    )
    pv_penetration_base_kw: PositiveFloat | None = Field(
        default=None,
        description=(
            "The feeder peak load [kW] pv_penetration_pct refers to. null: prepare_run "
            "computes it (federates.prosumers.agents.feeder_peak_load_kw: "
            "background_load_scale x the model's nominal Load kW + the prosumers' "
            "expected demand peaks) and writes it into config.resolved.yaml, so that "
            "every federate draws the same PV sizes."
        ),
    )
    federates: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1,
        description=(
            "Number of prosumer federate processes in a federation run (prosumers_0..K-1, "
            "each a contiguous slice of the sites); 1 keeps the single 'prosumers' "
            "federate. The in-process engine ignores it."
        ),
    )


#: the clearing mechanism of a topology whose config names none
DEFAULT_MECHANISM = {"community": "uniform_price", "p2p": "lp", "hybrid": "two_level"}


class MarketConfig(_Strict):
    topology: Literal["community", "p2p", "hybrid"] = "community"
    mechanism: str | None = Field(default=None, validate_default=False,
                           description="clearing mechanism; default: the topology's (DEFAULT_MECHANISM)")
    retail_usd_per_kwh: PositiveFloat = 0.26
    feed_in_usd_per_kwh: NonNegFloat = 0.08
    communities: Literal["phase", "bus"] = "phase"
    ledger: bool = True
    ledger_pow_bits: Annotated[int, Field(ge=0, le=32)] = 0
    loss_price: Literal["none", "clearing", "retail"] = Field(
        default="none",
        description=(
            "Price of the losses allocated to trades (results/loss_allocation.parquet, "
            "loss_charges.parquet): the interval's clearing price, the retail tariff or none. "
            "Ex post, unless market.settle_losses charges them in the settlement."
        ),
    )
    imbalance_price: Literal["tariff", "clearing", "dual"] = Field(
        default="tariff",
        description=(
            "Price of each participant's imbalance (metered - adjusted schedule): 'tariff' = "
            "retail for a shortfall, feed-in for a surplus; 'clearing' = the interval's market "
            "price for both; 'dual' = the European two-price rule: the tariff for an imbalance "
            "in the direction of the participants' net imbalance, the market price for one "
            "against it (federates/market/settlement.py, rule 4). Without a market price "
            "(no peer trade) every rule is the tariff."
        ),
    )
    settle_losses: bool = Field(
        default=False,
        description=(
            "Charge each customer its share of the feeder's losses (the per-phase loss "
            "allocation, feeder.loss_allocation) at market.loss_price, collected by the grid "
            "operator in the settlement (settlement rule 3b) and the ledger. false: the loss "
            "tables price them ex post only."
        ),
    )
    p2p_charge_usd_per_kwh_per_km: NonNegFloat = Field(
        default=0.0,
        description=(
            "Grid charge of a peer trade [USD/kWh per km of electrical distance along the "
            "feeder between seller and buyer] (p2p topology; hybrid's upper level stays "
            "uncharged). The default 0 keeps results unchanged."
        ),
    )
    network_aware: Literal["off", "envelopes", "constraints"] = Field(
        default="off",
        description=(
            "Ex-ante grid awareness of the clearing: 'envelopes' = the DSO sends each "
            "prosumer's import/export limits for the next interval (from meter data and "
            "sensitivities) and the market clips orders to them; 'constraints' = the DSO "
            "sends linearised voltage, thermal and substation constraints and a "
            "welfare-maximising LP accepts the orders the grid can take before the "
            "clearing; 'off' = none."
        ),
    )

    @field_validator("network_aware", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare ``off`` as false
        return "off" if v is False else v

    @model_validator(mode="after")
    def _topology_default_mechanism(self) -> MarketConfig:
        if self.mechanism is None:
            self.mechanism = DEFAULT_MECHANISM[self.topology]
        return self


class MetersConfig(_Strict):
    """Smart meters: the inverters' local sensing and the utility's AMI data.

    ``noise_pct`` is the relative standard deviation [%] of the *local* readings the
    inverters' Volt-VAR / Volt-Watt act on (one per feeder solve; 0 = the true values).

    Everything else is the AMI (advanced metering infrastructure) channel the DSO and
    billing see (federates/meters/ami.py documents the model): one reading per meter
    every ``reporting_interval`` [s; "5min", "15min", "1h" also read], with interval
    average voltage, power, and import / export energy registers.

    * ``accuracy_class``: the meters' active-energy accuracy class [%], IEC 62053-21
      (classes 1, 2) / IEC 62053-22 (0.2 S, 0.5 S) / ANSI C12.20 (0.2, 0.5). Each meter
      gets a fixed gain error drawn uniformly within +-class/2 % and each reading a
      random error with standard deviation class/3 %.
    * ``v_accuracy_pct``: voltage accuracy [% of nominal], same model (IEC 61000-4-30
      Class S instruments: +-0.5 %); ``v_resolution_v`` [V] the reported voltage's
      resolution (0 = none).
    * ``energy_resolution_kwh``: resolution of the energy registers [kWh]; the
      cumulative registers are truncated to it as a register display is and the
      interval energies are their differences (0 = none).
    * ``missing_rate``: probability that a reading is not delivered (independent).
    * ``settle_on_ami``: settle the market on the AMI registers (measured, quantised)
      instead of the true final per-step readings.
    """

    noise_pct: NonNegFloat = 0.0
    reporting_interval: PositiveFloat | None = None  # null = the market interval
    accuracy_class: Literal["0.2", "0.5", "1", "2"] = "0.5"
    v_accuracy_pct: NonNegFloat = 0.5
    v_resolution_v: NonNegFloat = 0.1
    energy_resolution_kwh: NonNegFloat = 0.001
    missing_rate: Fraction = 0.0
    settle_on_ami: bool = False

    _d = field_validator("reporting_interval", mode="before")(
        classmethod(lambda cls, v: None if v is None else _duration(v)))

    @field_validator("accuracy_class", mode="before")
    @classmethod
    def _class_text(cls, v: Any) -> Any:
        # YAML reads ``accuracy_class: 1`` as an int and ``0.5`` as a float
        if isinstance(v, int | float) and not isinstance(v, bool):
            return f"{float(v):g}"
        return v

    @property
    def reporting_interval_s(self) -> float:
        """``reporting_interval`` [s] (filled with the market interval when null)."""
        if self.reporting_interval is None:
            raise ValueError("meters.reporting_interval is not resolved; validate the whole study")
        return float(self.reporting_interval)


class VoltVarConfig(_Strict):
    """IEEE 1547-2018 Volt-VAR; defaults are the Category B default curve."""

    enabled: bool = True
    v_ref_pu: PositiveFloat = 1.0
    v1_pu: PositiveFloat = 0.92
    v2_pu: PositiveFloat = 0.98
    v3_pu: PositiveFloat = 1.02
    v4_pu: PositiveFloat = 1.08
    q1_pct: float = 44.0
    q4_pct: float = -44.0
    # the in-step damped iteration x += damping * (x_target - x), until no inverter moves
    # by more than tolerance_kvar [kvar]; an oscillating settling is accelerated
    # (ControllersConfig.anderson_depth), the fixed point is the same
    damping: Annotated[float, Field(gt=0, le=1)] = 0.5
    tolerance_kvar: PositiveFloat = 0.01
    # 90 % of a step change within this time [s] (1547-2018 Table 8, Cat B default 5 s;
    # 0 = instantaneous); see federates/controllers/role.py for the lag across steps
    open_loop_response_time_s: NonNegFloat = 5.0


class VoltWattConfig(_Strict):
    """IEEE 1547-2018 Volt-Watt (clause 5.4.2); defaults are the Category B defaults
    (Table 10): V1 = 1.06 pu, P1 = Prated, V2 = 1.10 pu, P2 = 20 % of Prated (``p2_pct:
    0`` is the standard's P'2 for DER that can absorb active power), open-loop response
    time 10 s. In tecosim the limit caps the customer's export at ``p_pct / 100 *``
    inverter kVA (federates/feeder/voltwatt.py). ``damping`` and
    ``tolerance_kw`` [kW] steer the in-step iteration as for Volt-VAR (settled together
    with it, accelerated with it: ``controllers.anderson_depth``)."""

    enabled: bool = True
    v1_pu: PositiveFloat = 1.06
    v2_pu: PositiveFloat = 1.10
    p1_pct: Annotated[float, Field(ge=0, le=100)] = 100.0
    p2_pct: Annotated[float, Field(ge=0, le=100)] = 20.0
    open_loop_response_time_s: NonNegFloat = 10.0
    damping: Annotated[float, Field(gt=0, le=1)] = 0.5
    tolerance_kw: PositiveFloat = 0.01


class CurtailmentConfig(_Strict):
    """DSO curtailment of exports after local (inverter) control, iterated in the step.

    ``policy`` picks which exports to cut when a limit is still violated:
    ``proportional`` (every contributing exporter by the same fraction),
    ``sensitivity`` (most effective first: largest relief per kW, least energy cut),
    ``least_cost`` (cheapest relief first: lowest sale price per unit of relief).
    ``group_voltage`` is the earlier heuristic (caps by service-transformer group,
    over-voltage only). See federates/controllers/dso.py.
    """

    enabled: bool = True
    policy: Literal["proportional", "sensitivity", "least_cost", "group_voltage"] = "sensitivity"
    margin_pu: NonNegFloat = 0.002
    thermal_margin_pct: NonNegFloat = 1.0
    vuf_margin_pct: NonNegFloat = 0.05
    gain_per_pu: PositiveFloat = 10.0


class ControllersConfig(_Strict):
    """``v_min_pu`` / ``v_max_pu``: the band the controllers steer to; default (null) =
    the ``limits`` band. ``anderson_depth``: once the inverters' damped settling
    oscillates (the residual of all inverters turns back by half or more in two
    successive solves), the rest of that settling stage takes Anderson-accelerated
    moves over this many past iterates; 0 = damped steps only. The fixed point and
    stop rule are the damped step's (``volt_var.damping`` / ``tolerance_kvar``,
    ``volt_watt.damping`` / ``tolerance_kw``); see federates/feeder/inverters.py,
    "Life cycle"."""

    enabled: bool = True
    v_min_pu: PositiveFloat | None = None
    v_max_pu: PositiveFloat | None = None
    anderson_depth: Annotated[int, Field(ge=0)] = 3
    volt_var: VoltVarConfig = VoltVarConfig()
    volt_watt: VoltWattConfig = VoltWattConfig()
    curtailment: CurtailmentConfig = CurtailmentConfig()


#: Customer voltage bands [pu]: ANSI C84.1-2020 Range A and Range B service voltage
#: (114-126 V and 110-127 V on 120 V), and the +-10 % band the review uses.
VOLTAGE_BANDS: dict[str, tuple[float, float]] = {
    "ansi_a": (0.95, 1.05),
    "ansi_b": (110.0 / 120.0, 127.0 / 120.0),
    "review": (0.90, 1.10),
}


class LimitsConfig(_Strict):
    """The grid limits every step is checked against (results table ``violations``).

    ``voltage_band`` names a customer voltage band (:data:`VOLTAGE_BANDS`); with
    ``custom`` give ``v_min_pu`` and ``v_max_pu``. ``thermal``: lines against their
    OpenDSS NormAmps and transformers against their rated kVA, at ``thermal_max_pct``
    [%]. ``vuf_max_pct``: voltage unbalance factor (negative- over positive-sequence
    voltage) of three-phase buses [%], 2 % as in EN 50160 and IEEE 1159. Substation
    import / export caps [kW] model limited generation or a limited connection;
    null = none.
    """

    voltage_band: Literal["ansi_a", "ansi_b", "review", "custom"] = "ansi_a"
    v_min_pu: PositiveFloat | None = None
    v_max_pu: PositiveFloat | None = None
    thermal: bool = True
    thermal_max_pct: PositiveFloat = 100.0
    vuf_max_pct: PositiveFloat = 2.0
    substation_import_max_kw: PositiveFloat | None = None
    substation_export_max_kw: PositiveFloat | None = None


#: the port of a broker joined by address when neither ``federation.broker_address`` nor
#: ``federation.broker_port`` names one (HELICS's own default for the zmq core)
HELICS_ZMQ_PORT = 23404
_HOST_ALLOWED = ("an IPv4 address or host name, optionally with :PORT (1024..65535), "
                 "e.g. 10.0.0.5, 10.0.0.5:23500 or sim-a.lan:23500")


def split_broker_address(text: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` -> (host, port or None); ValueError saying what is allowed."""
    import ipaddress
    import re

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"must be {_HOST_ALLOWED}")
    text = text.strip()
    if "://" in text:
        raise ValueError(f"{text!r}: give no scheme (tcp:// is implied); allowed: {_HOST_ALLOWED}")
    host, sep, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if text.count(":") > 1 or text.startswith("["):
        raise ValueError(f"{text!r}: IPv6 addresses are not supported; allowed: {_HOST_ALLOWED}")
    port = None
    if sep:
        if not port_text.isdigit() or not 1024 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: bad port {port_text!r}; allowed: {_HOST_ALLOWED}")
        port = int(port_text)
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            raise ValueError(f"{text!r}: 0.0.0.0 is no address to connect to (the broker's listening "
                             f"interface is federation.broker_interface); allowed: {_HOST_ALLOWED}")
    elif not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", host) or host.replace(".", "").isdigit():
        raise ValueError(f"{text!r}: not an IPv4 address or host name; allowed: {_HOST_ALLOWED}")
    return host, port


class FederationConfig(_Strict):
    """How the HELICS federation runs.

    By default the broker and every federate run on this host, the broker on
    127.0.0.1 and ``broker_port`` (null: a free port). With ``broker_address``
    (``HOST[:PORT]``) the federates may run on several hosts joined to one broker
    (``tecosim run --broker`` / ``--federates``; README "Running a federation across
    hosts"): the broker listens on ``broker_interface`` (an IPv4 address, default
    0.0.0.0 = every interface) at the port of ``broker_address``, else ``broker_port``,
    else 23404. ``connect_timeout_s`` [s] bounds the wait of a host for the broker to
    accept connections and, on a host running only some federates, for the other
    hosts' federates to join.

    ``launch``: how this host starts its federates. ``fork`` (default): the runner
    imports the federates' code once and forks one process per federate, which skips
    each federate's interpreter start-up and imports (seconds each); ``exec``: each
    federate is its own ``python -m federates.<name>.federate`` (as ``runner.json``
    describes them). Either way every federate is its own OS process.

    ``helics_profiler``: the broker records HELICS's own profile of every federate
    (the wall-clock time of entering and leaving each blocking HELICS call) in
    ``logs/helics_profile.txt``; ``benchmarks/run.py`` reads it to split each
    federate's time into waiting inside HELICS and working outside it.
    """

    core_type: Literal["zmq"] = "zmq"
    helics_profiler: bool = False
    launch: Literal["fork", "exec"] = "fork"
    timeout_s: PositiveFloat = 1800.0
    # a federation whose simulated time stops moving this long [s] is hung (runner.launch.HangWatch)
    hang_timeout_s: PositiveFloat = 120.0
    broker_port: Annotated[int, Field(ge=1024, le=65535)] | None = None
    broker_address: str | None = None
    broker_interface: str | None = None
    connect_timeout_s: PositiveFloat = 120.0

    @field_validator("broker_address")
    @classmethod
    def _broker_address(cls, v: str | None) -> str | None:
        if v is not None:
            split_broker_address(v)
        return v

    @field_validator("broker_interface")
    @classmethod
    def _broker_interface(cls, v: str | None) -> str | None:
        import ipaddress

        if v is None:
            return v
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address; allowed: an address of the broker host's "
                             "interface to listen on, or 0.0.0.0 (every interface)") from None
        return v

    @model_validator(mode="after")
    def _broker_network(self) -> FederationConfig:
        if self.broker_address is None:
            if self.broker_interface is not None:
                raise ValueError("broker_interface needs broker_address (without it the broker listens on "
                                 "127.0.0.1 only); allowed: null, or set federation.broker_address too")
            return self
        _, port = split_broker_address(self.broker_address)
        if port is not None and self.broker_port is not None and port != self.broker_port:
            raise ValueError(f"broker_address port {port} differs from broker_port {self.broker_port}; "
                             "allowed: one of them, or the same port in both")
        return self

    @property
    def broker_host(self) -> str | None:
        """The host of ``broker_address`` (None: the local broker on 127.0.0.1)."""
        return None if self.broker_address is None else split_broker_address(self.broker_address)[0]

    @property
    def broker_tcp_port(self) -> int | None:
        """The broker's port when joined by address: that of ``broker_address``, else
        ``broker_port``, else HELICS_ZMQ_PORT; None without ``broker_address``."""
        if self.broker_address is None:
            return None
        return split_broker_address(self.broker_address)[1] or self.broker_port or HELICS_ZMQ_PORT


class CommsConfig(_Strict):
    """The communication layer between the customers' devices and the market.

    ``latency_s`` [s] delays and ``loss_rate`` drops the messages named in
    ``applies_to``: ``bids`` (each order, prosumers -> market, sent at ``k*M + 0.25``)
    and ``interval_energy`` (each meter's billing energy, meters -> market, sent at
    ``k*M + 0.25``). A message arriving after its interval's market time (``k*M + 0.5``,
    i.e. ``latency_s >= 0.25``) is seen at a later market time: a late order (counted,
    ignored) or a missing reading (the settlement's ``missing_reading`` rule). The
    per-solve control readings are not affected: Volt-VAR / Volt-Watt measure at the
    inverter terminals, with no communication link. AMI readings to the DSO already
    have their own loss model (``meters.missing_rate``).

    Losses are drawn by the sender from ``stream(study.seed, "comms", what, k)``, one
    draw per message in send order, so both engines drop the same messages (HELICS's
    random-drop filter has its own, unseeded RNG); the federation applies the latency
    with a HELICS delay filter, the in-process engine by delivering at the first market
    time at or after the arrival. With 0 latency and 0 loss nothing changes.
    """

    latency_s: NonNegFloat = 0.0
    loss_rate: Fraction = 0.0
    applies_to: list[Literal["bids", "interval_energy"]] = ["bids", "interval_energy"]

    def latency_of(self, what: str) -> float:
        """Latency [s] of the ``what`` messages (0 if the layer does not apply)."""
        return self.latency_s if what in self.applies_to else 0.0

    def kept(self, seed: int, what: str, k: int, senders: list[str]) -> list[bool]:
        """Which of the ``what`` messages about interval ``k`` get through, one per
        entry of ``senders`` (the participant / meter of each message, in send order):
        the j-th message of a sender is lost when the j-th draw of ``stream(seed,
        "comms", what, k, sender)`` is below ``loss_rate`` (so the drops do not depend
        on how the senders are split over federates)."""
        if self.loss_rate <= 0.0 or what not in self.applies_to:
            return [True] * len(senders)
        draws = {s: iter(stream(seed, "comms", what, k, s).random(c)) for s, c in Counter(senders).items()}
        return [bool(next(draws[s]) >= self.loss_rate) for s in senders]

    def unscheduled(self, seed: int, tl: Timeline, k: int, participants: list[str]) -> set[str]:
        """The bidders of interval ``k`` (``participants``: one per order, in send order)
        whose order is lost or reaches the market after its market time: they get no
        schedule, so the physics adds their forecast to their published deviation (the
        feeder's power = schedule + deviation stays their real net power)."""
        late = (round(tl.report_time(k) * 1e9) + round(self.latency_of("bids") * 1e9)
                > round(tl.market_time(k) * 1e9))  # HELICS time [ns], as runner.engine._ns
        kept = self.kept(seed, "bids", k, participants)
        return {p for p, ok in zip(participants, kept, strict=True) if late or not ok}


class StudyFile(_Strict):
    """The whole study config (one YAML file)."""

    study: StudyConfig = StudyConfig()
    site: SiteConfig = SiteConfig()
    feeder: FeederConfig = FeederConfig()
    prosumers: ProsumersConfig = ProsumersConfig()
    market: MarketConfig = MarketConfig()
    meters: MetersConfig = MetersConfig()
    limits: LimitsConfig = LimitsConfig()
    controllers: ControllersConfig = ControllersConfig()
    federation: FederationConfig = FederationConfig()
    comms: CommsConfig = CommsConfig()
    grid_preset: Literal["strong", "weak", "very_weak"] | None = None  # see GRID_PRESETS
    #: what a later source replaced (runner.config.later_wins), for the resolved config
    _notes: list[str] = PrivateAttr(default_factory=list)

    @field_validator("grid_preset", mode="before")
    @classmethod
    def _preset_name(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and v in GRID_PRESETS):
            raise ValueError(f"unknown grid preset {v!r}; allowed: {', '.join(GRID_PRESETS)} or null")
        return v

    @model_validator(mode="after")
    def _fill_bands(self) -> StudyFile:
        """Voltage limits from the named band (values given explicitly are kept and
        checked against it in :func:`_cross_checks`); controller targets default to the
        limits."""
        lim = self.limits
        band = VOLTAGE_BANDS.get(lim.voltage_band)
        if band is not None:
            if lim.v_min_pu is None:
                lim.v_min_pu = band[0]
            if lim.v_max_pu is None:
                lim.v_max_pu = band[1]
        if self.meters.reporting_interval is None:
            self.meters.reporting_interval = self.study.market_interval_s
        c = self.controllers
        if c.v_min_pu is None:
            c.v_min_pu = lim.v_min_pu
        if c.v_max_pu is None:
            c.v_max_pu = lim.v_max_pu
        return self

    @property
    def timeline(self) -> Timeline:
        s = self.study
        return Timeline(s.duration_s, s.market_interval_s, s.physics_step_s)


#: ``grid_preset``: the values a preset fills in (see :func:`apply_grid_preset`).
GRID_PRESETS: dict[str, dict[str, Any]] = {
    "strong": {
        "feeder": {
            "synthetic": {"source_mva_sc": 200.0, "line_length_multiplier": 1.0, "phase_imbalance": 0.0},
            "customer_connection": {"transformer_kva": 50.0, "service_length_m": 30.0,
                                    "service_r_ohm_per_km": 1.32, "service_x_ohm_per_km": 0.1},
        },
        "prosumers": {"pv_penetration_pct": 30.0},
    },
    "weak": {
        "feeder": {
            "synthetic": {"source_mva_sc": 30.0, "line_length_multiplier": 2.0, "phase_imbalance": 0.3},
            "customer_connection": {"transformer_kva": 25.0, "service_length_m": 100.0,
                                    "service_r_ohm_per_km": 2.09, "service_x_ohm_per_km": 0.1},
        },
        "prosumers": {"pv_penetration_pct": 80.0},
    },
    "very_weak": {
        "feeder": {
            "synthetic": {"source_mva_sc": 8.0, "line_length_multiplier": 3.0, "phase_imbalance": 0.6},
            "customer_connection": {"transformer_kva": 15.0, "service_length_m": 150.0,
                                    "service_r_ohm_per_km": 3.33, "service_x_ohm_per_km": 0.1},
        },
        "prosumers": {"pv_penetration_pct": 150.0},
    },
}


def apply_grid_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the values of its ``grid_preset`` filled in where ``raw`` has no key.

    ``grid_preset`` is a top-level key, not ``feeder.preset``: a preset sets keys of
    two sections (``feeder.synthetic``, ``feeder.customer_connection`` and
    ``prosumers.pv_penetration_pct``), so it describes the study's grid as a whole, and
    ``--set grid_preset=weak`` says so. Keys given in the study file (or by ``--set``,
    or by a ``base:`` file) win, an explicit ``null`` included; so a scenario file meant
    to be re-run under other presets (configs/weak_grid.yaml) sets none of these keys.
    The ``feeder.synthetic`` values are filled only with ``feeder.model: synthetic``
    (:func:`_cross_checks` rejects a preset on another bundled model). Unknown names
    are left to the schema, which lists the allowed ones.

    ===========  =======  =====  =========  =====  ==========================  =======  =========  =======
    preset       S_sc     lines  imbalance  PV     service transformer, drop   SCR_fdr  SCR_cust   V_noon
    ===========  =======  =====  =========  =====  ==========================  =======  =========  =======
    strong       200 MVA  1x     0 (33 %)   30 %   50 kVA, 30 m 1/0 Al         17.5     >= 186     1.041
    weak          30 MVA  2x     0.3 (53%)  80 %   25 kVA, 100 m #2 Al          2.6     >= 32      1.054
    very_weak      8 MVA  3x     0.6 (73%)  150 %  15 kVA, 150 m #4 Al          0.7     >= 7.6     1.099
    ===========  =======  =====  =========  =====  ==========================  =======  =========  =======

    * S_sc (``feeder.synthetic.source_mva_sc``): three- and single-phase short-circuit
      power at the 12.47 kV source bus; 200 / 30 / 8 MVA are fault currents of 9.3 /
      1.4 / 0.37 kA. SCR_fdr = S_sc / S_rated, with S_rated the feeder's rated power:
      its trunk's thermal rating, 336,400 26/7 ACSR at 530 A (W. H. Kersting,
      "Distribution System Modeling and Analysis", Appendix B): sqrt(3) x 12.47 kV x
      530 A = 11.4 MVA. IEEE Std 1204-1997 (planning dc links at ac locations with low
      short-circuit capacity) calls SCR < 3 low and < 2 very low: strong is above 3,
      weak in 2-3, very_weak below 2. SCR_cust is the same ratio where the inverters
      connect (NERC's SCR at the point of interconnection: short-circuit power there /
      the rating of the inverter connected there), computed with OpenDSS for every PV
      customer of the weak_grid scenario: it stays far above 3 in every preset. The
      community's PV (<= 0.3 MVA) is small against any of the sources, so what the
      customers see of a weak grid is its resistance to them: the lines (x ``lines``
      the bundled 8 km trunk and laterals) and, most of all, the service
      transformer and drop.
    * imbalance (``feeder.synthetic.phase_imbalance``): the share of the feeder's
      single-phase loads, and so of the customers placed on them, on phase a is (1 + 2
      imbalance) / 3 (in brackets). No standard gives a value; these are choices. The
      largest voltage unbalance factor of the three-phase buses at noon (weak_grid, no
      control) is 0.02 / 0.28 / 1.13 %, against the 2 % of EN 50160.
    * PV (``prosumers.pv_penetration_pct``): installed PV over the feeder's peak load,
      the definition of Hoke et al., "Steady-State Analysis of Maximum Photovoltaic
      Penetration Levels on Typical Distribution Feeders", IEEE Trans. Sustainable
      Energy 4 (2013) 350-357 (peak load as in
      ``federates.prosumers.agents.feeder_peak_load_kw``).
    * service (``feeder.customer_connection``): standard single-phase pole-mount
      transformer sizes (50, 25, 15 kVA; percent R and X left at their defaults) shared
      by ``customers_per_transformer`` homes, and 240 V aluminium triplex drops whose
      loop resistance is twice the conductor's dc resistance at 75 degC from NEC
      (NFPA 70) Chapter 9 Table 8: 1/0 Al 0.201, #2 Al 0.319, #4 Al 0.508 ohm/kft ->
      1.32, 2.09, 3.33 ohm/km; loop reactance 0.1 ohm/km.
    * V_noon: the highest customer voltage [pu] of configs/weak_grid.yaml (source
      1.04 pu) from 11:00 to 13:00 local time with ``controllers.enabled: false``
      (``tecosim run configs/weak_grid.yaml --engine inprocess --set grid_preset=...``);
      tests/feeder/test_weak_grid.py checks the order and the ANSI C84.1 Range A limit.
    """
    name = raw.get("grid_preset")
    if not (isinstance(name, str) and name in GRID_PRESETS):
        return raw
    preset = copy.deepcopy(GRID_PRESETS[name])
    feeder = raw.get("feeder")
    model = feeder.get("model", FeederConfig.model_fields["model"].default) if isinstance(feeder, dict) \
        else FeederConfig.model_fields["model"].default
    if model != "synthetic":
        del preset["feeder"]["synthetic"]
    return _deep_merge(preset, raw)


def generated_feeder_parameters(cfg: StudyFile) -> dict[str, Any] | None:
    """``write_synthetic_feeder`` arguments when the run needs its own synthetic model.

    None unless ``feeder.model`` is ``synthetic`` and ``feeder.synthetic`` differs from
    the bundled instance's parameters (feeders/synthetic/feeder.yaml). When it is not
    None, ``prepare_run`` writes that model to ``<run_dir>/feeder/synthetic.dss`` and
    puts ``feeder.model: null, feeder.path: feeder/synthetic.dss`` into
    config.resolved.yaml. Why a relative path and not a run-folder-aware
    ``feeder_master``: ``Study.load`` already resolves a relative ``feeder.path``
    against the run folder, so every federate and a moved or copied run folder find the
    copy with no special case, ``feeder_master`` keeps one meaning of its ``base_dir``,
    and the model a run used is a plain file in it. ``feeder.synthetic`` stays in the
    resolved config as the record of how the copy was made. (``tecosim run
    <run>/config.resolved.yaml`` uses that copy as it would any ``feeder.path``: the new
    run names it by absolute path.)
    """
    f = cfg.feeder
    if f.path is not None or f.model != "synthetic":
        return None
    bundled = yaml.safe_load((FEEDERS_DIR / "synthetic" / "feeder.yaml").read_text())["parameters"]
    params = {**bundled, **f.synthetic.model_dump()}
    return None if params == bundled else params


#: The folder of the run folder that ``prepare_run`` writes a generated synthetic model into.
GENERATED_FEEDER_DIR = "feeder"


def bundled_feeders() -> list[str]:
    """Names of the feeders shipped in feeders/ (folders with a feeder.yaml)."""
    return sorted(p.parent.name for p in FEEDERS_DIR.glob("*/feeder.yaml"))


def _field_path(loc: tuple[Any, ...]) -> str:
    aliases = {"duration_s": "duration", "market_interval_s": "market_interval",
               "physics_step_s": "physics_step"}
    return ".".join(aliases.get(str(p), str(p)) for p in loc) or "<root>"


def _whole(ratio: float) -> bool:
    """``ratio`` is a whole number >= 1 (False for inf / NaN, e.g. 1e308 s / 1e-300 s)."""
    return math.isfinite(ratio) and abs(ratio - round(ratio)) <= 1e-9 and round(ratio) >= 1


def _cross_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    problems: list[Problem] = []
    s = cfg.study
    if s.physics_step_s < 2.0:
        problems.append(Problem("study.physics_step", f"{s.physics_step_s:g} s is too short", ">= 2 s"))
    if not _whole(s.market_interval_s / s.physics_step_s):
        problems.append(Problem(
            "study.physics_step",
            f"{s.physics_step_s:g} s does not divide the market interval {s.market_interval_s:g} s",
            "a divisor of study.market_interval",
        ))
    if not _whole(s.duration_s / s.market_interval_s):
        problems.append(Problem(
            "study.market_interval",
            f"{s.market_interval_s:g} s does not divide the duration {s.duration_s:g} s",
            "a divisor of study.duration",
        ))
    f = cfg.feeder
    names = bundled_feeders()
    if f.path is None and f.model is None:
        problems.append(Problem("feeder", "name a bundled model or a path", f"feeder.model in {names} or feeder.path"))
    elif f.path is not None and f.model is not None:
        problems.append(Problem("feeder", "give feeder.model or feeder.path, not both", "one of them; set the other to null"))
    elif f.path is not None:
        p = Path(f.path)
        try:
            if not p.is_absolute():
                p = (base_dir / p).resolve()
            found = p.is_file()
        except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system
            problems.append(Problem("feeder.path", f"not a usable file name: {e}", "an OpenDSS master .dss file"))
        else:
            if not found:
                what = "is a directory" if p.is_dir() else "no such file"
                problems.append(Problem("feeder.path", f"{what}: {p}", "an OpenDSS master .dss file"))
    elif f.model not in names:
        problems.append(Problem("feeder.model", f"unknown feeder {f.model!r}", ", ".join(names)))
    p = cfg.prosumers
    if p.pv_kwp_min > p.pv_kwp_max:
        problems.append(Problem("prosumers.pv_kwp_min", "is larger than prosumers.pv_kwp_max", "<= pv_kwp_max"))
    if p.daily_load_kwh_min > p.daily_load_kwh_max:
        problems.append(Problem("prosumers.daily_load_kwh_min", "is larger than daily_load_kwh_max", "<= daily_load_kwh_max"))
    if p.federates > 1 and p.federates > p.count:
        problems.append(Problem("prosumers.federates", f"{p.federates} federates for {p.count} prosumers",
                                f"<= prosumers.count ({p.count})"))
    problems += _grid_checks(cfg)
    m = cfg.market
    from federates.market.mechanisms import allowed_mechanisms

    allowed = allowed_mechanisms()
    if m.topology in allowed and m.mechanism not in allowed[m.topology]:
        problems.append(Problem("market.mechanism", f"{m.mechanism!r} is not a {m.topology} mechanism",
                                ", ".join(allowed[m.topology])))
    elif m.topology not in allowed:
        problems.append(Problem("market.topology", f"{m.topology!r} has no clearing mechanism yet",
                                ", ".join(allowed)))
    if m.settle_losses and m.loss_price == "none":
        problems.append(Problem("market.settle_losses", "needs a loss price to charge the losses at",
                                "market.loss_price: clearing or retail"))
    if m.settle_losses and not cfg.feeder.loss_allocation:
        problems.append(Problem("market.settle_losses", "needs the per-customer losses",
                                "feeder.loss_allocation: true"))
    if m.feed_in_usd_per_kwh >= m.retail_usd_per_kwh:
        problems.append(Problem("market.feed_in_usd_per_kwh", "must be below the retail tariff", f"< {m.retail_usd_per_kwh:g}"))
    # meters: AMI periods are whole physics steps and nest with the market intervals
    r_s, dt_s, m_s = cfg.meters.reporting_interval_s, s.physics_step_s, s.market_interval_s
    if not (_whole(r_s / dt_s) and (_whole(m_s / r_s) or _whole(r_s / m_s))):
        n_dt = round(m_s / dt_s) if _whole(m_s / dt_s) else 1
        # the divisors of n_dt (at most the first 12: n_dt may be huge)
        divisors = [f"{i * dt_s:g}" for i in itertools.islice(
            (i for i in range(1, min(n_dt, 10**6) + 1) if n_dt % i == 0), 12)]
        problems.append(Problem(
            "meters.reporting_interval",
            f"{r_s:g} s is not a whole number of physics steps ({dt_s:g} s) that divides or is a "
            f"multiple of the market interval ({m_s:g} s)",
            f"one of {', '.join(divisors)} s, or a multiple of {m_s:g} s",
        ))
    lim = cfg.limits
    band = VOLTAGE_BANDS.get(lim.voltage_band)
    if band is None and (lim.v_min_pu is None or lim.v_max_pu is None):
        problems.append(Problem("limits.voltage_band", "custom needs limits.v_min_pu and limits.v_max_pu",
                                ", ".join(VOLTAGE_BANDS) + ", or custom with both values"))
        return problems
    for name, value in zip(("v_min_pu", "v_max_pu"), band or (), strict=False):
        given = getattr(lim, name)
        if abs(given - value) > 1e-9:
            problems.append(Problem(f"limits.{name}", f"{given:g} contradicts voltage_band "
                                    f"{lim.voltage_band!r} ({value:g})",
                                    "the band's value, or limits.voltage_band: custom"))
    if lim.v_min_pu >= lim.v_max_pu:
        problems.append(Problem("limits.v_min_pu", "must be below limits.v_max_pu", f"< {lim.v_max_pu:g}"))
    c = cfg.controllers
    if c.v_min_pu >= c.v_max_pu:
        problems.append(Problem("controllers.v_min_pu", "must be below v_max_pu", f"< {c.v_max_pu:g}"))
    vv = c.volt_var
    if not (vv.v1_pu < vv.v2_pu <= vv.v3_pu < vv.v4_pu):
        problems.append(Problem("controllers.volt_var", "curve points out of order", "v1_pu < v2_pu <= v3_pu < v4_pu"))
    if not c.volt_watt.v1_pu < c.volt_watt.v2_pu:
        problems.append(Problem("controllers.volt_watt", "curve points out of order", "v1_pu < v2_pu"))
    return problems


def _grid_checks(cfg: StudyFile) -> list[Problem]:
    """Rules of ``grid_preset``, ``feeder.synthetic`` and the PV penetration."""
    problems: list[Problem] = []
    f, p = cfg.feeder, cfg.prosumers
    other_model = f.model is not None and f.model != "synthetic"
    if other_model and cfg.grid_preset is not None:
        problems.append(Problem("grid_preset", f"sets the synthetic feeder's source and lines, but feeder.model "
                                f"is {f.model!r}", "feeder.model: synthetic, or grid_preset: null"))
    if other_model and f.synthetic != SyntheticFeederConfig():
        problems.append(Problem("feeder.synthetic", f"is only used with feeder.model: synthetic, not {f.model!r}",
                                "feeder.model: synthetic, or drop feeder.synthetic"))
    if p.pv_penetration_base_kw is not None and p.pv_penetration_pct is None:
        problems.append(Problem("prosumers.pv_penetration_base_kw", "is only used with pv_penetration_pct",
                                "a pv_penetration_pct, or null"))
    if p.pv_penetration_pct is not None and (round(p.pv_share * p.count) == 0 or p.pv_kwp_max <= 0):
        problems.append(Problem("prosumers.pv_penetration_pct", "no prosumer gets PV to scale",
                                "round(pv_share * count) >= 1 and pv_kwp_max > 0, or null"))
    return problems


def apply_overrides(raw: dict[str, Any], overrides: list[str], notes: list[str] | None = None,
                    source: str = "the config") -> dict[str, Any]:
    """``raw`` with each ``a.b.c=value`` applied (value parsed as YAML); an override
    wins over the pair member it replaces (:func:`later_wins`, told in ``notes``)."""
    if not isinstance(raw, dict):  # a file that is a list or a scalar: nothing to set keys in
        raise ConfigError([Problem("<root>", "the config must be a mapping of sections",
                                   ", ".join(StudyFile.model_fields))], "--set")
    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(Problem(f"--set {item}", "must look like key.path=value", "section.key=value"))
            continue
        key, value = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            problems.append(Problem(f"--set {item}", "empty key", "section.key=value"))
            continue
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(Problem(key, f"{part} is not a section", "a section name"))
                break
            node = child
        else:
            try:
                parsed = yaml.safe_load(value)
                top: dict[str, Any] = {parts[-1]: parsed}
                for part in reversed(parts[:-1]):
                    top = {part: top}
                said = later_wins(out, top, source, f"--set {key.strip()}")
                if notes is not None:
                    notes.extend(said)
                node[parts[-1]] = parsed
            except yaml.YAMLError as e:
                problems.append(Problem(key, f"value is not valid YAML: {' '.join(str(e).split())}",
                                        "a YAML scalar, list or mapping"))
    if problems:
        raise ConfigError(problems, "--set")
    return out


def validate(raw: Any, base_dir: Path = Path("."), source: str = "config") -> StudyFile:
    """A StudyFile from plain data; raises ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError([Problem("<root>", "the config must be a mapping of sections",
                                   ", ".join(StudyFile.model_fields))], source)
    raw = apply_grid_preset(raw)
    try:
        cfg = StudyFile.model_validate(raw)
    except ValidationError as e:
        problems = []
        pruned = copy.deepcopy(raw)
        for err in e.errors():
            path = _field_path(err["loc"])
            if err["type"] == "extra_forbidden":
                parent = err["loc"][:-1]
                problems.append(Problem(path, "unknown key", ", ".join(_allowed_keys(parent))))
            else:
                problems.append(Problem(path, err["msg"]))
            _drop(pruned, err["loc"])
        # the rest of the config still gets its cross-field checks, so that every
        # problem is reported in one go
        try:
            rest = StudyFile.model_validate(pruned)
        except ValidationError:
            rest = None
        if rest is not None:
            seen = {p.field for p in problems}
            problems += [p for p in _cross_checks(rest, base_dir) if p.field not in seen]
        raise ConfigError(problems, source) from None
    problems = _cross_checks(cfg, base_dir)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _drop(raw: Any, loc: tuple[Any, ...]) -> None:
    """Remove the key at ``loc`` from nested dicts (so its default applies)."""
    node = raw
    for part in loc[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = StudyFile
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            for f in model.model_fields.values():
                if f.alias == part:
                    field = f
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [f.alias or name for name, f in model.model_fields.items()]


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyFile:
    """Read, override and validate a study YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem("<file>", f"no such config file: {path}", "a YAML file")], str(path))
    notes: list[str] = []
    raw = _read_with_base(path, seen=(), notes=notes)
    if overrides:
        raw = apply_overrides(raw, overrides, notes, str(path))
    cfg = validate(raw, base_dir=path.parent, source=str(path))
    cfg._notes = notes
    return cfg


def later_wins(base: dict[str, Any], top: dict[str, Any], base_source: str, top_source: str) -> list[str]:
    """Drop from ``base`` (in place) what a later source ``top`` replaces by choosing the
    other of a pair, and say so (one note each, for the resolved config):

    * ``feeder.path`` replaces an earlier ``feeder.model`` and ``feeder.model`` an
      earlier ``feeder.path`` (they name the feeder two ways; one of them wins);
    * ``market.topology`` without ``market.mechanism`` drops an earlier mechanism of
      another topology: the new topology's default applies (``DEFAULT_MECHANISM``).
    """
    notes = []
    bf, tf = base.get("feeder"), top.get("feeder")
    if isinstance(bf, dict) and isinstance(tf, dict):
        for new, old in (("path", "model"), ("model", "path")):
            if tf.get(new) is not None and old not in tf and bf.get(old) is not None:
                notes.append(f"feeder.{new} ({top_source}) replaces feeder.{old}: {bf.pop(old)} ({base_source})")
                if new == "path":
                    bf[old] = None
    bm, tm = base.get("market"), top.get("market")
    if isinstance(bm, dict) and isinstance(tm, dict) and "topology" in tm and "mechanism" not in tm:
        if tm["topology"] != bm.get("topology", "community") and bm.get("mechanism") is not None:
            notes.append(f"market.topology: {tm['topology']} ({top_source}) drops market.mechanism: "
                         f"{bm.pop('mechanism')} ({base_source}); the topology's default applies")
    return notes


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_with_base(path: Path, seen: tuple[Path, ...], notes: list[str] | None = None) -> dict[str, Any]:
    """YAML of ``path``; a top-level ``base: other.yaml`` (relative to this file) is read
    first and this file's keys are merged over it, section by section."""
    try:
        path = path.resolve()
    except (OSError, ValueError) as e:  # a NUL byte in a base: name
        raise ConfigError([Problem("base" if seen else "<file>", f"not a usable file name: {e}", "a YAML file")],
                          str(seen[-1] if seen else path)) from None
    if path in seen:
        raise ConfigError([Problem("base", f"circular base: {' -> '.join(map(str, (*seen, path)))}")], str(path))
    if not path.is_file():
        raise ConfigError([Problem("base" if seen else "<file>", f"no such config file: {path}", "a YAML file")],
                          str(seen[-1] if seen else path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError([Problem("<file>", f"not valid YAML: {e}")], str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([Problem("<file>", f"not UTF-8 text: {e}", "a UTF-8 YAML file")], str(path)) from None
    except RecursionError:
        raise ConfigError([Problem("<file>", "nested too deeply to read", "a study YAML file")], str(path)) from None
    except OSError as e:
        raise ConfigError([Problem("<file>", f"cannot be read: {e}", "a readable YAML file")], str(path)) from None
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError([Problem("base", "must be a file name", "a YAML file next to this one")], str(path))
    under = _read_with_base(path.parent / base, (*seen, path), notes)
    said = later_wins(under, raw, str(path.parent / base), str(path))
    if notes is not None:
        notes.extend(said)
    return _deep_merge(under, raw)


def resolved_dict(cfg: StudyFile) -> dict[str, Any]:
    """The config with every default filled in, keyed as in YAML."""
    return cfg.model_dump(by_alias=True, mode="json")


def config_sha256(cfg: StudyFile) -> str:
    text = yaml.safe_dump(resolved_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def feeder_master(cfg: StudyFile, base_dir: Path = Path(".")) -> Path:
    """Absolute path of the OpenDSS master file of the configured feeder.

    A relative ``feeder.path`` is taken relative to ``base_dir``. A synthetic model with
    parameters other than the bundled ones has no master file before
    ``prepare_run`` writes it into the run folder (:func:`generated_feeder_parameters`):
    ValueError.
    """
    if generated_feeder_parameters(cfg) is not None:
        raise ValueError("feeder.synthetic differs from the bundled model: prepare_run writes it into the run "
                         "folder, whose config.resolved.yaml then names it in feeder.path")
    if cfg.feeder.path is not None:
        p = Path(cfg.feeder.path)
        return p if p.is_absolute() else (base_dir / p).resolve()
    meta = yaml.safe_load((FEEDERS_DIR / cfg.feeder.model / "feeder.yaml").read_text())
    return (FEEDERS_DIR / cfg.feeder.model / meta["master"]).resolve()
