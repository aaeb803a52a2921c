"""The study config: one schema, validated before anything starts.

``load_config`` reads YAML, applies ``--set key=value`` overrides, validates with
pydantic (unknown keys are errors) and with the cross-field rules below, and raises one
:class:`ConfigError` that lists every problem with its field path and allowed values.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from federates.common.errors import ConfigError, Problem
from federates.common.timeline import Timeline
from federates.common.units import parse_duration_s

REPO_ROOT = Path(__file__).resolve().parents[1]
FEEDERS_DIR = REPO_ROOT / "feeders"

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


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
    duration_s: PositiveFloat = Field(86400.0, alias="duration")
    market_interval_s: PositiveFloat = Field(900.0, alias="market_interval")
    physics_step_s: PositiveFloat = Field(60.0, alias="physics_step")
    seed: Annotated[int, Field(ge=0)] = 42

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

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


class FeederConfig(_Strict):
    model: str | None = "ieee13"
    path: str | None = None
    background_load_scale: NonNegFloat = 1.0
    background_load_shape: Literal["opendss_default", "flat"] = "opendss_default"
    source_pu: Annotated[float, Field(gt=0.8, lt=1.2)] | None = None
    customer_connection: CustomerConnection = CustomerConnection()
    max_control_iterations: Annotated[int, Field(ge=1, le=99)] = 20
    lines_top_n: Annotated[int, Field(ge=0)] = 10  # most loaded lines/transformers kept per step


class ProsumersConfig(_Strict):
    count: Annotated[int, Field(ge=0)] = 40
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


class MarketConfig(_Strict):
    topology: Literal["community", "p2p", "hybrid"] = "community"
    mechanism: str = "uniform_price"
    retail_usd_per_kwh: PositiveFloat = 0.26
    feed_in_usd_per_kwh: NonNegFloat = 0.08
    communities: Literal["phase", "bus"] = "phase"
    ledger: bool = True
    ledger_pow_bits: Annotated[int, Field(ge=0, le=32)] = 0
    p2p_charge_usd_per_kwh_per_km: NonNegFloat = Field(
        default=0.0,
        description=(
            "Grid charge of a peer trade [USD/kWh per km of electrical distance along the "
            "feeder between seller and buyer] (p2p topology; hybrid's upper level stays "
            "uncharged). The default 0 keeps results unchanged."
        ),
    )


class MetersConfig(_Strict):
    noise_pct: NonNegFloat = 0.0


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
    damping: Annotated[float, Field(gt=0, le=1)] = 0.5
    tolerance_kvar: PositiveFloat = 0.01


class CurtailmentConfig(_Strict):
    enabled: bool = True
    margin_pu: NonNegFloat = 0.002
    gain_per_pu: PositiveFloat = 10.0


class ControllersConfig(_Strict):
    enabled: bool = True
    v_min_pu: PositiveFloat = 0.95
    v_max_pu: PositiveFloat = 1.05
    volt_var: VoltVarConfig = VoltVarConfig()
    curtailment: CurtailmentConfig = CurtailmentConfig()


class FederationConfig(_Strict):
    core_type: Literal["zmq"] = "zmq"
    timeout_s: PositiveFloat = 1800.0
    broker_port: Annotated[int, Field(ge=1024, le=65535)] | None = None


class StudyFile(_Strict):
    """The whole study config (one YAML file)."""

    study: StudyConfig = StudyConfig()
    site: SiteConfig = SiteConfig()
    feeder: FeederConfig = FeederConfig()
    prosumers: ProsumersConfig = ProsumersConfig()
    market: MarketConfig = MarketConfig()
    meters: MetersConfig = MetersConfig()
    controllers: ControllersConfig = ControllersConfig()
    federation: FederationConfig = FederationConfig()

    @property
    def timeline(self) -> Timeline:
        s = self.study
        return Timeline(s.duration_s, s.market_interval_s, s.physics_step_s)


def bundled_feeders() -> list[str]:
    """Names of the feeders shipped in feeders/ (folders with a feeder.yaml)."""
    return sorted(p.parent.name for p in FEEDERS_DIR.glob("*/feeder.yaml"))


def _field_path(loc: tuple[Any, ...]) -> str:
    aliases = {"duration_s": "duration", "market_interval_s": "market_interval",
               "physics_step_s": "physics_step"}
    return ".".join(aliases.get(str(p), str(p)) for p in loc)


def _cross_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    problems: list[Problem] = []
    s = cfg.study
    if s.physics_step_s < 2.0:
        problems.append(Problem("study.physics_step", f"{s.physics_step_s:g} s is too short", ">= 2 s"))
    ratio = s.market_interval_s / s.physics_step_s
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        problems.append(Problem(
            "study.physics_step",
            f"{s.physics_step_s:g} s does not divide the market interval {s.market_interval_s:g} s",
            "a divisor of study.market_interval",
        ))
    ratio = s.duration_s / s.market_interval_s
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
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
        if not p.is_absolute():
            p = (base_dir / p).resolve()
        if not p.is_file():
            problems.append(Problem("feeder.path", f"no such file: {p}", "an OpenDSS master .dss file"))
    elif f.model not in names:
        problems.append(Problem("feeder.model", f"unknown feeder {f.model!r}", ", ".join(names)))
    p = cfg.prosumers
    if p.pv_kwp_min > p.pv_kwp_max:
        problems.append(Problem("prosumers.pv_kwp_min", "is larger than prosumers.pv_kwp_max", "<= pv_kwp_max"))
    if p.daily_load_kwh_min > p.daily_load_kwh_max:
        problems.append(Problem("prosumers.daily_load_kwh_min", "is larger than daily_load_kwh_max", "<= daily_load_kwh_max"))
    m = cfg.market
    from federates.market.mechanisms import allowed_mechanisms

    allowed = allowed_mechanisms()
    if m.topology in allowed and m.mechanism not in allowed[m.topology]:
        problems.append(Problem("market.mechanism", f"{m.mechanism!r} is not a {m.topology} mechanism",
                                ", ".join(allowed[m.topology])))
    elif m.topology not in allowed:
        problems.append(Problem("market.topology", f"{m.topology!r} has no clearing mechanism yet",
                                ", ".join(allowed)))
    if m.feed_in_usd_per_kwh >= m.retail_usd_per_kwh:
        problems.append(Problem("market.feed_in_usd_per_kwh", "must be below the retail tariff", f"< {m.retail_usd_per_kwh:g}"))
    c = cfg.controllers
    if c.v_min_pu >= c.v_max_pu:
        problems.append(Problem("controllers.v_min_pu", "must be below v_max_pu", f"< {c.v_max_pu:g}"))
    vv = c.volt_var
    if not (vv.v1_pu < vv.v2_pu <= vv.v3_pu < vv.v4_pu):
        problems.append(Problem("controllers.volt_var", "curve points out of order", "v1_pu < v2_pu <= v3_pu < v4_pu"))
    return problems


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
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
            node[parts[-1]] = yaml.safe_load(value)
    if problems:
        raise ConfigError(problems, "--set")
    return out


def validate(raw: Any, base_dir: Path = Path("."), source: str = "config") -> StudyFile:
    """A StudyFile from plain data; raises ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError([Problem("<root>", "the config must be a mapping of sections",
                                   ", ".join(StudyFile.model_fields))], source)
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
    raw = _read_with_base(path, seen=())
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw, base_dir=path.parent, source=str(path))


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """YAML of ``path``; a top-level ``base: other.yaml`` (relative to this file) is read
    first and this file's keys are merged over it, section by section."""
    path = path.resolve()
    if path in seen:
        raise ConfigError([Problem("base", f"circular base: {' -> '.join(map(str, (*seen, path)))}")], str(path))
    if not path.is_file():
        raise ConfigError([Problem("base" if seen else "<file>", f"no such config file: {path}", "a YAML file")],
                          str(seen[-1] if seen else path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([Problem("<file>", f"not valid YAML: {e}")], str(path)) from None
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError([Problem("base", "must be a file name", "a YAML file next to this one")], str(path))
    return _deep_merge(_read_with_base(path.parent / base, (*seen, path)), raw)


def resolved_dict(cfg: StudyFile) -> dict[str, Any]:
    """The config with every default filled in, keyed as in YAML."""
    return cfg.model_dump(by_alias=True, mode="json")


def config_sha256(cfg: StudyFile) -> str:
    text = yaml.safe_dump(resolved_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def feeder_master(cfg: StudyFile, base_dir: Path = Path(".")) -> Path:
    """Absolute path of the OpenDSS master file of the configured feeder."""
    if cfg.feeder.path is not None:
        p = Path(cfg.feeder.path)
        return p if p.is_absolute() else (base_dir / p).resolve()
    meta = yaml.safe_load((FEEDERS_DIR / cfg.feeder.model / "feeder.yaml").read_text())
    return (FEEDERS_DIR / cfg.feeder.model / meta["master"]).resolve()
