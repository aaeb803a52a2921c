"""Cross-field rules of a study: what a single field's type cannot say (a physics step
that divides the market interval, a feeder that exists, a mechanism of the chosen
topology, ...). Each broken rule is one :class:`Problem` naming the field and the
allowed values; :func:`federates.common.config.loader.validate` reports them together."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from federates.common.config.catalog import bundled_feeders
from federates.common.config.schema import (
    MECHANISMS_OF_TOPOLOGY,
    VOLTAGE_BANDS,
    StudyFile,
    SyntheticFeederConfig,
)
from federates.common.errors import ConfigError, Problem


def _whole(ratio: float) -> bool:
    """``ratio`` is a whole number >= 1 (False for inf / NaN, e.g. 1e308 s / 1e-300 s)."""
    return math.isfinite(ratio) and abs(ratio - round(ratio)) <= 1e-9 and round(ratio) >= 1


def cross_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    """Every broken cross-field rule of ``cfg``, section by section (``base_dir``: what
    a relative ``feeder.path`` is relative to)."""
    problems = _study_checks(cfg) + _feeder_checks(cfg, base_dir) + _prosumers_checks(cfg)
    problems += _weather_checks(cfg, base_dir)
    problems += _input_file_checks(cfg, base_dir)
    problems += _grid_checks(cfg) + _market_checks(cfg, base_dir) + _meters_checks(cfg)
    lim = cfg.limits
    if VOLTAGE_BANDS.get(lim.voltage_band) is None and (lim.v_min_pu is None or lim.v_max_pu is None):
        # no voltage limits: nothing to check the limits and the controllers against
        return [*problems, Problem("limits.voltage_band", "custom needs limits.v_min_pu and limits.v_max_pu",
                                   ", ".join(VOLTAGE_BANDS) + ", or custom with both values")]
    return problems + _limits_checks(cfg) + _controllers_checks(cfg)


def _study_checks(cfg: StudyFile) -> list[Problem]:
    """The clock: a physics step that divides the market interval, which divides the duration."""
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
    return problems


def _feeder_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    """One feeder, named by a bundled model or a usable file."""
    problems: list[Problem] = []
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
    return problems


def _weather_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    """A weather file that exists with ``source: file``, no path without it (the file's
    content is checked when a run is prepared: ``runner.launch.prepare.check_weather``)."""
    w = cfg.site.weather
    allowed = "a weather file (TMY3, TMY2, EPW, PVGIS TMY, NSRDB PSM CSV), relative to the config's folder"
    if w.source == "synthetic":
        if w.path is not None:
            return [Problem("site.weather.path", "is only used with site.weather.source: file",
                            "site.weather.source: file, or no path")]
        return []
    if w.path is None:
        return [Problem("site.weather.path", "site.weather.source: file needs a file", allowed)]
    p = Path(w.path)
    try:
        if not p.is_absolute():
            p = (base_dir / p).resolve()
        found = p.is_file()
    except (OSError, ValueError) as e:
        return [Problem("site.weather.path", f"not a usable file name: {e}", allowed)]
    if not found:
        return [Problem("site.weather.path", f"{'is a directory' if p.is_dir() else 'no such file'}: {p}", allowed)]
    return []


def _prosumers_checks(cfg: StudyFile) -> list[Problem]:
    """Ranges in order; no more prosumer federates than prosumers."""
    problems: list[Problem] = []
    p = cfg.prosumers
    if p.pv_kwp_min > p.pv_kwp_max:
        problems.append(Problem("prosumers.pv_kwp_min", "is larger than prosumers.pv_kwp_max", "<= pv_kwp_max"))
    if p.daily_load_kwh_min > p.daily_load_kwh_max:
        problems.append(Problem("prosumers.daily_load_kwh_min", "is larger than daily_load_kwh_max", "<= daily_load_kwh_max"))
    if p.federates > 1 and p.federates > p.count:
        problems.append(Problem("prosumers.federates", f"{p.federates} federates for {p.count} prosumers",
                                f"<= prosumers.count ({p.count})"))
    m = cfg.market
    if p.flex_dispatch == "cleared" and not (m.topology == "community" and m.mechanism in CLEARED_MECHANISMS):
        # the devices' own buy orders: one participant with several orders (and a sell
        # and a buy at once), which the greedy community mechanisms clear order by order
        problems.append(Problem("prosumers.flex_dispatch", f"'cleared' with market.topology {m.topology!r} "
                                f"and mechanism {m.mechanism!r}",
                                "market.topology: community with mechanism " + " or ".join(CLEARED_MECHANISMS)))
    return problems


#: the mechanisms whose clearing the devices' dispatch reads (prosumers.flex_dispatch: cleared)
CLEARED_MECHANISMS = ("uniform_price", "pay_as_bid")


def input_file(path: str, base_dir: Path) -> Path:
    """A study's input file: ``path`` itself if absolute, else relative to ``base_dir``
    (the config file's folder)."""
    p = Path(path)
    return p if p.is_absolute() else (base_dir / p).resolve()


def _input_file_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    """Measured profiles and a sites file that exist (their content is checked when the
    run is prepared, against the feeder model and the study period)."""
    p = cfg.prosumers
    named = [("prosumers.sites", p.sites, "a CSV file of customer, bus, phase")]
    if p.profiles is not None:
        named += [("prosumers.profiles.path", p.profiles.path, "a CSV or Parquet file of load series"),
                  ("prosumers.profiles.pv_path", p.profiles.pv_path, "a CSV or Parquet file of PV series")]
        if p.profiles.pv_path is not None and p.profiles.format == "long":
            return [Problem("prosumers.profiles.pv_path", "is for the wide format (long files carry a pv column)",
                            "format: wide or auto, or pv_path: null")]
    problems = []
    for field_, path, what in named:
        if path is None:
            continue
        try:
            f = input_file(path, base_dir)
            found = f.is_file()
        except (OSError, ValueError) as e:
            problems.append(Problem(field_, f"not a usable file name: {e}", what))
            continue
        if not found:
            problems.append(Problem(field_, f"{'is a directory' if f.is_dir() else 'no such file'}: {f}", what))
        elif field_ != "prosumers.sites" and f.suffix.lower() not in (".csv", ".parquet", ".pq"):
            problems.append(Problem(field_, f"{f.name}: unknown file type {f.suffix!r}", ".csv, .parquet"))
    return problems


def _market_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    """A mechanism of the topology; what settling the losses needs; tariffs in order."""
    problems: list[Problem] = []
    m = cfg.market
    allowed = MECHANISMS_OF_TOPOLOGY
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
    if "admm" in cfg.comms.applies_to and m.mechanism != "admm_distributed":
        problems.append(Problem("comms.applies_to", "'admm' names the iterates of the distributed P2P clearing, "
                                f"which market.mechanism {m.mechanism!r} does not send",
                                "market.topology: p2p, market.mechanism: admm_distributed"))
    if m.feed_in_usd_per_kwh >= m.retail_usd_per_kwh:
        problems.append(Problem("market.feed_in_usd_per_kwh", "must be below the retail tariff", f"< {m.retail_usd_per_kwh:g}"))
    return problems + _tariff_checks(cfg, base_dir)


def _tariff_checks(cfg: StudyFile, base_dir: Path) -> list[Problem]:
    """A time-varying tariff is built here (TOU coverage, the CSV's rows and coverage of
    the study, prices per interval) and kept on ``cfg`` (``StudyFile.tariff``); learning
    bidders need prices >= 0 (their margins are fractions of the prices)."""
    tc = cfg.market.tariff
    if tc.kind == "flat":
        return []
    from federates.common.tariff import build_tariff

    try:
        cfg.timeline  # noqa: B018 - a clock with whole intervals to price
    except ValueError:
        return []  # reported by _study_checks
    try:
        tariff = build_tariff(cfg, base_dir)
    except ConfigError as e:
        return e.problems
    cfg._tariff = (cfg.tariff_key(), tariff)  # StudyFile.tariff builds it again only if the config changes
    problems = []
    negative = bool((tariff.retail_usd_per_kwh < 0).any() or (tariff.feed_in_usd_per_kwh < 0).any())
    if negative and cfg.prosumers.strategy in ("zip", "roth_erev"):
        problems.append(Problem("prosumers.strategy", f"{cfg.prosumers.strategy} learns margins on prices >= 0; "
                                "the tariff has negative prices", "truthful or random with negative prices"))
    return problems


def _meters_checks(cfg: StudyFile) -> list[Problem]:
    """AMI periods: whole physics steps that nest with the market intervals."""
    problems: list[Problem] = []
    s = cfg.study
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
    return problems


def _limits_checks(cfg: StudyFile) -> list[Problem]:
    """Voltage limits that agree with their named band and are in order."""
    problems: list[Problem] = []
    lim = cfg.limits
    band = VOLTAGE_BANDS.get(lim.voltage_band)
    for name, value in zip(("v_min_pu", "v_max_pu"), band or (), strict=False):
        given = getattr(lim, name)
        if abs(given - value) > 1e-9:
            problems.append(Problem(f"limits.{name}", f"{given:g} contradicts voltage_band "
                                    f"{lim.voltage_band!r} ({value:g})",
                                    "the band's value, or limits.voltage_band: custom"))
    if lim.v_min_pu >= lim.v_max_pu:
        problems.append(Problem("limits.v_min_pu", "must be below limits.v_max_pu", f"< {lim.v_max_pu:g}"))
    return problems


def _controllers_checks(cfg: StudyFile) -> list[Problem]:
    """Controller targets and curve points in order."""
    problems: list[Problem] = []
    c = cfg.controllers
    if c.v_min_pu >= c.v_max_pu:
        problems.append(Problem("controllers.v_min_pu", "must be below v_max_pu", f"< {c.v_max_pu:g}"))
    vv = c.volt_var
    if not (vv.v1_pu < vv.v2_pu <= vv.v3_pu < vv.v4_pu):
        problems.append(Problem("controllers.volt_var", "curve points out of order", "v1_pu < v2_pu <= v3_pu < v4_pu"))
    if not c.volt_watt.v1_pu < c.volt_watt.v2_pu:
        problems.append(Problem("controllers.volt_watt", "curve points out of order", "v1_pu < v2_pu"))
    dr = c.demand_response
    if dr.load_limit == "on" and not (c.enabled and dr.enabled):
        problems.append(Problem("controllers.demand_response.load_limit",
                                "limits loads only after demand response has had its chance",
                                "off, or controllers.enabled and controllers.demand_response.enabled true"))
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

