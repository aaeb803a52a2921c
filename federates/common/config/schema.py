"""The study schema: every section of a study YAML file as a strict pydantic model.

Unknown keys are errors, every field has its unit in its name or its docstring, and the
defaults are the bundled default study's. Reading a file, ``--set`` overrides and the
cross-field rules are :mod:`.loader` and :mod:`.checks`; this module holds no behaviour
beyond filling defaults that follow from other fields.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from federates.common.config.presets import GRID_PRESETS
from federates.common.timeline import ADMM_MAX_ITERATIONS, Timeline
from federates.common.units import parse_duration_s

MAX_DURATION_S = 366 * 86400.0  # study.duration [s]
MAX_PROSUMERS = 100_000  # prosumers.count

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


class WeatherConfig(_Strict):
    """Where the study's irradiance, air temperature and wind come from.

    ``source: synthetic`` (default): pvlib's clear sky times the synthetic cloud process
    of ``prosumers.cloudiness``, a fixed temperature cycle and 2 m/s wind
    (``federates/prosumers/profiles.py``). ``source: file``: the weather file ``path``
    (relative to the config file's folder) in ``format``: tmy3, tmy2, epw, pvgis_tmy
    (csv or json), nsrdb_psm (NSRDB PSM3 / PSM4 SAM CSV), or auto. The file's irradiance
    carries its clouds: ``prosumers.cloudiness`` is then ignored (a note in the run's
    resolved config says so). ``site.latitude`` / ``longitude`` / ``altitude_m`` /
    ``timezone`` come from the file's header unless the config sets them; the run's
    resolved config records the values used. How the file is mapped onto the study's
    year and steps: ``federates/prosumers/weather.py``.
    """

    source: Literal["synthetic", "file"] = "synthetic"
    path: str | None = None
    format: Literal["auto", "tmy3", "tmy2", "epw", "pvgis_tmy", "nsrdb_psm"] = "auto"


class SiteConfig(_Strict):
    latitude: Annotated[float, Field(ge=-90, le=90)] = 18.4655
    longitude: Annotated[float, Field(ge=-180, le=180)] = -66.1057
    altitude_m: float = 10.0
    timezone: str = "America/Puerto_Rico"
    weather: WeatherConfig = WeatherConfig()


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


class EvConfig(_Strict):
    """Electric vehicles charged at home (``federates/prosumers/flex/ev.py``).

    ``share`` of the prosumers own one (0: none, the default). One charging session a
    day: the car comes home at ``arrival_h`` ~ N(``arrival_h_mean``, ``arrival_h_sd``)
    [h, local time] and leaves the next morning at ``departure_h`` ~
    N(``departure_h_mean``, ``departure_h_sd``); it needs the energy of the day's
    driving, ``km`` ~ lognormal(median ``daily_km_median``, sd of log
    ``daily_km_sigma``) x ``consumption_kwh_per_km`` [kWh at the battery], at most
    ``max_need_fraction`` of ``battery_kwh``. ``charger``: level 1 (120 V, 12 A: 1.44 kW)
    or level 2 (240 V, 30 A: 7.2 kW; SAE J1772), or ``charger_kw`` [kW] if set;
    ``efficiency`` grid to battery. ``control``: ``uncontrolled`` charges at full power
    from arrival until full; ``smart`` charges in the cheapest intervals before the
    departure it expects, at the prices it expects (the tariff, and the market price
    seen the day before), and at full power once the deadline leaves no slack.
    """

    share: Fraction = 0.0
    charger: Literal["level1", "level2"] = "level2"
    charger_kw: PositiveFloat | None = None
    battery_kwh: PositiveFloat = 60.0
    efficiency: Annotated[float, Field(gt=0, le=1)] = 0.9
    consumption_kwh_per_km: PositiveFloat = 0.18
    daily_km_median: PositiveFloat = 40.0
    daily_km_sigma: NonNegFloat = 0.6
    max_need_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    arrival_h_mean: Annotated[float, Field(ge=0, lt=24)] = 18.0
    arrival_h_sd: NonNegFloat = 1.5
    departure_h_mean: Annotated[float, Field(ge=0, lt=24)] = 7.5
    departure_h_sd: NonNegFloat = 1.0
    control: Literal["uncontrolled", "smart"] = "uncontrolled"


class HvacConfig(_Strict):
    """Heat pumps / air conditioners in first-order (RC) houses
    (``federates/prosumers/flex/thermal.py``).

    ``share`` of the prosumers have one (0: none, the default). The house: thermal
    resistance ``r_c_per_kw`` [degC/kW] to the outdoor air (the weather's temperature),
    capacitance ``c_kwh_per_c`` [kWh/degC], internal gains ``internal_gain_kw`` [kW];
    each house's R and C are drawn within +-``spread`` of these. The unit:
    ``mode`` cool or heat, or ``auto`` (a heat pump that heats below
    ``heat_setpoint_c`` and cools above ``setpoint_c``: a year's seasons), thermal output
    ``rated_kw_th`` [kW] at ``cop`` (electric power = rated_kw_th / cop), on/off by a
    thermostat at ``setpoint_c`` with ``deadband_c``. ``control``: ``thermostat`` (the fixed setpoint) or ``transactive``:
    the setpoint moves with the interval's expected price as in the double-auction HVAC
    controller of PNNL's Olympic Peninsula demonstration and TESP (Fuller, Schneider and
    Chassin, "Analysis of residential demand response and double-auction markets",
    IEEE PES General Meeting 2011): by ``(price - mean) / (ramp x sd)`` x the band, the
    mean and sd of the prices of the last 24 h, within ``-band_low_c`` ..
    ``+band_high_c`` (in the direction that saves energy for a high price).
    """

    share: Fraction = 0.0
    mode: Literal["cool", "heat", "auto"] = "cool"
    heat_setpoint_c: Annotated[float, Field(ge=5, le=35)] = 20.0
    r_c_per_kw: PositiveFloat = 2.5
    c_kwh_per_c: PositiveFloat = 8.0
    internal_gain_kw: NonNegFloat = 0.5
    spread: Annotated[float, Field(ge=0, lt=1)] = 0.2
    rated_kw_th: PositiveFloat = 10.5
    cop: PositiveFloat = 3.0
    setpoint_c: Annotated[float, Field(ge=5, le=35)] = 24.0
    deadband_c: Annotated[float, Field(gt=0, le=5)] = 1.0
    control: Literal["thermostat", "transactive"] = "thermostat"
    ramp: PositiveFloat = 2.0
    band_high_c: NonNegFloat = 2.0
    band_low_c: NonNegFloat = 1.0

    @model_validator(mode="after")
    def _auto_band(self) -> HvacConfig:
        if self.mode == "auto" and self.heat_setpoint_c + self.deadband_c > self.setpoint_c:
            raise ValueError(f"mode auto: heat_setpoint_c ({self.heat_setpoint_c}) + deadband_c "
                             f"({self.deadband_c}) must not exceed setpoint_c ({self.setpoint_c}), the cooling "
                             "setpoint: the unit would heat and cool in turn")
        return self


class MeasuredProfilesConfig(_Strict):
    """Measured per-customer load (and optionally PV) time series that replace the
    synthetic household model (``federates/prosumers/measured.py`` reads them; README
    "Load profiles").

    ``path``: a CSV or Parquet file (relative: to the config file's folder). ``format``:
    ``long`` (columns ``time``, ``customer``, a load column and optionally a PV column)
    or ``wide`` (``time`` and one column per customer; PV in columns ``<pv_prefix><customer>``
    or in a second file ``pv_path`` of the same layout); ``auto``: long when there is a
    ``customer`` column. ``units``: ``W``, ``kW`` (mean power over the interval) or
    ``Wh``, ``kWh`` (energy per interval); ``auto`` reads it from the column names
    (``load_kw``, ``load_w``, ``load_kwh``, ``load_wh``, ``pv_kw``, ...). ``timezone``: the
    IANA zone of naive timestamps (null: every timestamp must carry a UTC offset).
    ``label``: a timestamp marks the ``start`` (default) or the ``end`` of its interval.
    ``gap_fill``: how missing intervals (absent timestamps or empty values) are filled:
    ``linear`` in time between the neighbours, ``previous`` value, ``zero``, or
    ``error``; a gap longer than ``max_gap`` [s; "1h"] is an error. ``reuse``: without a
    sites file, profiles are handed to the placed prosumers in file order; fewer
    profiles than prosumers is an error unless ``reuse`` cycles through them.
    """

    path: str
    format: Literal["auto", "long", "wide"] = "auto"
    units: Literal["auto", "W", "kW", "Wh", "kWh"] = "auto"
    timezone: str | None = None
    label: Literal["start", "end"] = "start"
    pv_prefix: str = "pv_"
    pv_path: str | None = None
    gap_fill: Literal["linear", "previous", "zero", "error"] = "linear"
    max_gap_s: NonNegFloat = Field(3600.0, alias="max_gap")
    reuse: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    _d = field_validator("max_gap_s", mode="before")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; an IANA name such as Europe/Berlin or UTC") from None
        return v


class WaterHeaterConfig(_Strict):
    """Electric resistance water heaters (``federates/prosumers/flex/water_heater.py``):
    ``share`` of the prosumers have one (0: none, the default); a fully mixed tank of
    ``tank_l`` litres with an ``element_kw`` element, standby loss ``ua_w_per_k``
    [W/K] to a room at ``ambient_c``, mains water at ``inlet_c``, a thermostat at
    ``setpoint_c`` with ``deadband_c``; about ``daily_draw_l`` litres drawn a day in
    morning and evening draws; water below ``use_c`` counts as hot water short.
    ``control``: ``thermostat``, or ``transactive``: the setpoint moves down with the
    expected price by ``(price - mean) / (ramp x sd)`` x ``band_c`` (within
    ``+-band_c``; up for a low price). A demand-response call sheds the element for the
    interval unless the tank falls below ``use_c``."""

    share: Fraction = 0.0
    tank_l: PositiveFloat = 190.0
    element_kw: PositiveFloat = 4.5
    ua_w_per_k: NonNegFloat = 2.5
    setpoint_c: Annotated[float, Field(ge=30, le=90)] = 55.0
    deadband_c: Annotated[float, Field(gt=0, le=20)] = 5.0
    inlet_c: Annotated[float, Field(ge=0, le=30)] = 15.0
    ambient_c: Annotated[float, Field(ge=0, le=40)] = 20.0
    use_c: Annotated[float, Field(ge=20, le=70)] = 45.0
    daily_draw_l: NonNegFloat = 200.0
    control: Literal["thermostat", "transactive"] = "thermostat"
    ramp: PositiveFloat = 2.0
    band_c: NonNegFloat = 5.0


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
    # fraction of time the synthetic sky's sun is obscured (profiles.clear_sky_index);
    # ignored with site.weather.source: file (the file's irradiance carries the clouds)
    cloudiness: Fraction = 0.2
    forecast_error_pct: NonNegFloat = 10.0
    strategy: Literal["limit_price_uniform", "truthful_tariff", "zip", "roth_erev"] = "limit_price_uniform"
    phases: Literal["any", "a", "b", "c"] = "any"
    # how prosumers spread over the model's loads (federates.feeder.placement): drawn by
    # load kW, a load may get several ("weighted"), or at most one each ("one_per_load")
    placement: Literal["weighted", "one_per_load"] = "weighted"
    # measured load / PV series (MeasuredProfilesConfig; a bare path is read as
    # {path: ...}); null: the synthetic household model (federates/prosumers/profiles.py)
    profiles: MeasuredProfilesConfig | None = None
    # a CSV file placing named customers at given buses and phases (columns customer,
    # bus, phase; optional group, pv_kwp, battery_kwh, daily_load_kwh; relative: to the
    # config file's folder; federates/feeder/sites_file.py); null: seeded placement
    sites: str | None = None
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
    #: how batteries are planned: ``self_consumption`` (charge from the PV surplus, cover the
    #: deficit) or ``price`` (also shaped by the day's expected tariff prices:
    #: federates/prosumers/battery.py)
    battery_control: Literal["self_consumption", "price"] = "self_consumption"
    #: flexible demand: EVs and heat pumps / air conditioners (none by default)
    ev: EvConfig = EvConfig()
    hvac: HvacConfig = HvacConfig()
    water_heater: WaterHeaterConfig = WaterHeaterConfig()
    flex_dispatch: Literal["planned", "cleared"] = Field(
        default="planned",
        description=(
            "When the flexible devices (EVs, heat pumps / ACs, water heaters) set their power "
            "for a market interval. planned: at bid time, from the prices they expect; their "
            "plan is part of the prosumer's one order. cleared: each device bids for its energy "
            "in its own buy order at its own price (federates/prosumers/flex/dispatch.py) and "
            "sets its power only after the market's confirmations of the interval, from the "
            "price it pays, within the DSO's import envelope when there is one "
            "(federates.common.timeline: the dispatch time k*M + 0.75). Needs market.topology: "
            "community with uniform_price or pay_as_bid."
        ),
    )

    @property
    def has_flex(self) -> bool:
        """Whether any prosumer may own a flexible device (EV, heat pump / AC, water heater)."""
        return self.ev.share > 0 or self.hvac.share > 0 or self.water_heater.share > 0

    @field_validator("profiles", mode="before")
    @classmethod
    def _profiles_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v


#: the clearing mechanisms a study may name, by topology: the study's vocabulary. Their
#: code is registered under the same names in ``federates.market.mechanisms.MECHANISMS``
#: (tests/unit/test_mechanisms.py checks the two agree).
MECHANISMS_OF_TOPOLOGY: dict[str, tuple[str, ...]] = {
    "community": ("lp", "pay_as_bid", "uniform_price"),
    "p2p": ("admm", "admm_distributed", "lp"),
    "hybrid": ("two_level",),
}
#: the clearing mechanism of a topology whose config names none
DEFAULT_MECHANISM = {"community": "uniform_price", "p2p": "lp", "hybrid": "two_level"}


class TouPeriod(_Strict):
    """One period of a time-of-use tariff: the local hours (``site.timezone``, DST-aware)
    of the day types and months it holds, and its prices [USD/kWh]."""

    name: str = Field(min_length=1)
    hours: list[str] = Field(
        min_length=1,
        description=("hour ranges 'H1-H2' of local time, H1 inclusive, H2 exclusive (0..24); "
                     "'21-7' wraps past midnight, '0-24' is the whole day"),
    )
    days: list[Literal["weekday", "weekend", "holiday"]] = Field(
        default=["weekday", "weekend"], min_length=1,
        description=("day types: weekday (Mon-Fri), weekend (Sat, Sun); holiday (the dates of "
                     "market.tariff.holidays) once a period names it, else holidays are weekends"),
    )
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(
        default=list(range(1, 13)), min_length=1, description="months 1..12 (a season)")
    retail_usd_per_kwh: float = Field(description="retail price in the period [USD/kWh]")
    feed_in_usd_per_kwh: float = Field(description="feed-in price in the period [USD/kWh]")


class TariffConfig(_Strict):
    """The utility's tariffs over time (``federates/common/tariff.py``).

    * ``flat``: market.retail_usd_per_kwh / market.feed_in_usd_per_kwh in every interval.
    * ``tou``: ``periods`` covering every hour of every day type and month exactly once
      (``holidays``: local dates priced as the ``holiday`` day type, or as weekends when
      no period names it).
    * ``dynamic``: ``path``, a CSV ``time,retail_usd_per_kwh,feed_in_usd_per_kwh`` (ISO
      8601 times with offset, any resolution, relative to the config file), mapped to
      each market interval by the time-weighted mean; it must cover the study.

    Every interval's feed-in must be below its retail; prices are >= 0 unless
    ``allow_negative_prices`` (wholesale-indexed tariffs can go negative)."""

    kind: Literal["flat", "tou", "dynamic"] = "flat"
    periods: list[TouPeriod] = Field(default_factory=list, description="tou: the periods")
    holidays: list[datetime.date] = Field(default_factory=list, description="tou: local dates priced as holidays")
    path: str | None = Field(default=None, description="dynamic: the CSV file of prices")
    allow_negative_prices: bool = Field(
        default=False, description="allow retail / feed-in prices < 0 (tou, dynamic)")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> TariffConfig:
        if self.kind != "tou" and (self.periods or self.holidays):
            raise ValueError(f"periods and holidays belong to a tou tariff, not {self.kind}")
        if self.kind != "dynamic" and self.path is not None:
            raise ValueError(f"path belongs to a dynamic tariff, not {self.kind}")
        if self.kind == "dynamic" and self.path is None:
            raise ValueError("a dynamic tariff needs path: its CSV file")
        if self.kind == "tou" and not self.periods:
            raise ValueError("a tou tariff needs periods")
        if self.kind == "flat" and self.allow_negative_prices:
            raise ValueError("allow_negative_prices applies to tou and dynamic tariffs")
        names = [p.name for p in self.periods]
        if len(set(names)) != len(names):
            raise ValueError(f"period names must be unique: {', '.join(names)}")
        return self


class MarketConfig(_Strict):
    topology: Literal["community", "p2p", "hybrid"] = "community"
    mechanism: str | None = Field(default=None, validate_default=False,
                           description="clearing mechanism; default: the topology's (DEFAULT_MECHANISM)")
    retail_usd_per_kwh: PositiveFloat = Field(0.26, description="flat retail tariff [USD/kWh] (tariff.kind flat)")
    feed_in_usd_per_kwh: NonNegFloat = Field(0.08, description="flat feed-in tariff [USD/kWh] (tariff.kind flat)")
    tariff: TariffConfig = Field(
        default_factory=TariffConfig,
        description="the tariffs over time: flat (the two fields above), tou or dynamic (TariffConfig)",
    )
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

    admm_max_iterations: Annotated[int, Field(ge=1, le=ADMM_MAX_ITERATIONS)] = Field(
        default=ADMM_MAX_ITERATIONS,
        description=(
            "mechanism admm_distributed: the most ADMM iterations (each a sellers' and a "
            "buyers' step, messages market -> peers -> market, federates.common.timeline); "
            "an interval not converged by then goes to the grid at retail / feed-in "
            f"(at most {ADMM_MAX_ITERATIONS}: what fits before k*M + 0.7)."
        ),
    )

    admm_patience_rounds: Annotated[int, Field(ge=1, le=2 * ADMM_MAX_ITERATIONS)] = Field(
        default=4,
        description=(
            "mechanism admm_distributed: how many rounds (2e-4 s apart, "
            "federates.common.timeline.admm_time) the market waits for the peers' replies "
            "to a step before it goes on with the last values it has (a lost or late "
            "iterate); with perfect comms every reply is in after 1 round."
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


class DemandResponseConfig(_Strict):
    """The DSO's demand response (``federates/controllers/demand_response.py``): when a
    market interval's views show a customer below ``v_min`` + ``margin_pu`` (or, with
    the DSO's SCADA, a line or transformer loaded above ``thermal_max_pct`` -
    ``thermal_margin_pct`` with forward flow), the DSO calls the customers with
    flexible demand (EVs, heat pumps / ACs) to cut it by a kW figure in the next
    interval, allocated on the feeder's sensitivities; each kWh they cut against their
    own plan, up to what was asked, is paid ``price_usd_per_kwh`` by the DSO in the
    market's settlement of the interval (tables ``demand_response``, ``settlements``). A
    call stands while the interval it covers still sees a violation, and is released by
    ``release_fraction`` per interval without one.

    ``load_limit``: ``on`` lets the DSO limit loads involuntarily once demand response
    has had its chance: when an interval with calls in force still sees a customer below
    ``v_min`` (or, with SCADA, an element overloaded by forward flow), the customers
    whose import relieves it most (on the sensitivities, worst violation first, until
    the linear estimate covers it) get a smart-meter load limiter for the next interval:
    their import above ``load_limit_kw`` [kW] is not served: their devices lose it first
    (``flex.load_limited_kwh``), the feeder cuts the rest at every controlled solve
    (tables ``curtailments`` and ``curtailment_energy``, cause ``load_limit``). The
    limits stand while each interval still sees such a violation and are lifted after
    one without. ``off`` (default): no involuntary action."""

    enabled: bool = False
    margin_pu: NonNegFloat = 0.005
    thermal_margin_pct: NonNegFloat = 2.0
    price_usd_per_kwh: NonNegFloat = 0.50
    release_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25
    load_limit: Literal["off", "on"] = "off"
    load_limit_kw: PositiveFloat = 5.0

    @field_validator("load_limit", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare ``on`` / ``off`` as true / false
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class ControllersConfig(_Strict):
    """``v_min_pu`` / ``v_max_pu``: the band the controllers steer to; default (null) =
    the ``limits`` band. ``anderson_depth``: once the inverters' damped settling
    oscillates (the residual of all inverters turns back by half or more in two
    successive solves), the rest of that settling stage takes Anderson-accelerated
    moves over this many past iterates; 0 = damped steps only. The fixed point and
    stop rule are the damped step's (``volt_var.damping`` / ``tolerance_kvar``,
    ``volt_watt.damping`` / ``tolerance_kw``); see federates/feeder/inverters.py,
    "Life cycle".

    ``sensitivities``: the DSO's linear model of the feeder (federates/feeder/
    sensitivity.py, used by curtailment, demand response and network-aware clearing).
    ``points``: one perturbation per connection point (per customer with ``secondary``
    connections), exact to first order, memory growing as customers squared;
    ``grouped``: one per service transformer plus each ``secondary`` customer's own
    drop (about 1e-3 of the largest entry from ``points``, well inside the model's
    linearisation error; no customers-squared arrays); ``auto``: ``points`` unless its
    matrices would exceed :data:`~federates.feeder.sensitivity.AUTO_GROUPED_MB`, then
    ``grouped``."""

    enabled: bool = True
    sensitivities: Literal["auto", "points", "grouped"] = "auto"
    v_min_pu: PositiveFloat | None = None
    v_max_pu: PositiveFloat | None = None
    anderson_depth: Annotated[int, Field(ge=0)] = 3
    volt_var: VoltVarConfig = VoltVarConfig()
    volt_watt: VoltWattConfig = VoltWattConfig()
    curtailment: CurtailmentConfig = CurtailmentConfig()
    demand_response: DemandResponseConfig = DemandResponseConfig()


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
    ``k*M + 0.25``), and, when listed, ``admm`` (every iterate of the distributed P2P
    clearing, ``market.mechanism: admm_distributed``, both ways, per peer: a lost or late
    iterate leaves the receiver with the last one it had; rounds are 2e-4 s apart, 1e-4 s a
    hop, so a latency up to 1e-4 s costs nothing and a longer one makes the replies of a
    step wait for later rounds, ``market.admm_patience_rounds``). A message arriving after its interval's market
    time (``k*M + 0.5``,
    i.e. ``latency_s >= 0.25``) is seen at a later market time: a late order (counted,
    ignored) or a missing reading (the settlement's ``missing_reading`` rule). The
    per-solve control readings are not affected: Volt-VAR / Volt-Watt measure at the
    inverter terminals, with no communication link. AMI readings to the DSO already
    have their own loss model (``meters.missing_rate``).

    The loss model both engines run is :class:`federates.common.comms.CommsLink`.
    """

    latency_s: NonNegFloat = 0.0
    loss_rate: Fraction = 0.0
    applies_to: list[Literal["bids", "interval_energy", "admm"]] = ["bids", "interval_energy"]


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
    #: what a later source replaced (federates.common.config.later_wins), for the resolved config
    _notes: list[str] = PrivateAttr(default_factory=list)
    #: the tariff per market interval, built once (:attr:`tariff`)
    _tariff: Any = PrivateAttr(default=None)

    @field_validator("grid_preset", mode="before")
    @classmethod
    def _preset_name(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and v in GRID_PRESETS):
            raise ValueError(f"unknown grid preset {v!r}; allowed: {', '.join(GRID_PRESETS)} or null")
        return v

    @model_validator(mode="after")
    def _fill_bands(self) -> StudyFile:
        """Voltage limits from the named band (values given explicitly are kept and
        checked against it in :func:`federates.common.config.checks.cross_checks`); controller targets default to the
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

    @property
    def tariff(self):  # -> federates.common.tariff.Tariff
        """The retail and feed-in prices of every market interval
        (:func:`federates.common.tariff.build_tariff`), built on first use and kept; a
        relative ``market.tariff.path`` is relative to the working directory here (the
        loader makes it absolute). Rebuilt when what it depends on changed (a
        ``model_copy`` with another market or clock)."""
        key = self.tariff_key()
        if self._tariff is None or self._tariff[0] != key:
            from federates.common.tariff import build_tariff

            self._tariff = (key, build_tariff(self))
        return self._tariff[1]

    def tariff_key(self) -> tuple:
        """What :attr:`tariff` depends on."""
        m, s = self.market, self.study
        return (m.tariff.model_dump_json(), m.retail_usd_per_kwh, m.feed_in_usd_per_kwh, s.start,
                s.duration_s, s.market_interval_s, self.site.timezone)

