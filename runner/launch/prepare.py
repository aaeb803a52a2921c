"""Preparing a run: the run folder (resolved config, customer sites, distances,
voltage bases, sensitivities), the feeder check of ``tecosim validate``, which
federates run on this host (``--federates``) and a free block of loopback ports for
the broker."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from federates.common import keys
from federates.common.config import (
    GENERATED_FEEDER_DIR,
    StudyFile,
    feeder_master,
    generated_feeder_parameters,
    resolved_dict,
)
from federates.common.errors import ConfigError, FederationError, FeederModelError, Problem
from federates.common.study import (
    CONFIG_FILE,
    TARIFF_PRICES_FILE,
    V_BASE_FILE,
    Study,
    write_distances,
    write_sites,
)


def default_run_dir(cfg: StudyFile, root: Path = Path("runs")) -> Path:
    return fresh_dir(root, cfg.study.name)


def fresh_dir(root: Path, name: str) -> Path:
    """``root/<name>-<UTC time stamp>``, with ``-1``, ``-2``, ... added until no such path exists."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = root / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def prepare_run(cfg: StudyFile, run_dir: Path, config_dir: Path = Path(".")) -> Study:
    """Create the run folder: resolved config, customer sites, logs/ and results/.

    With a ``p2p`` or ``hybrid`` market it also writes ``distances_km.npy``: the
    customers' electrical distances along the feeder [km]
    (``OpenDSSFeeder.customer_distances_km``), read back as ``Study.distance_km`` by
    both engines. Community markets get no file (they price no distance, and their
    run folders stay as before); the computation is cheap (about a second for 1000
    customers), so this is only to keep those runs unchanged.

    A synthetic feeder with other than the bundled parameters is written into
    ``feeder/`` and named by the resolved config (``federates.common.config.generated_feeder_parameters``);
    with ``prosumers.pv_penetration_pct`` the resolved config also gets the peak load
    it refers to (``pv_penetration_base_kw``), so every federate sizes PV alike. A
    dynamic tariff's CSV is copied in (``tariff_prices.csv``, so the run folder stands
    alone); building the study (``Study.load``) checks the tariff covers the study.
    """
    from federates.feeder.placement import place_customers
    from federates.feeder.synthetic import write_synthetic_feeder
    from federates.prosumers.agents import feeder_peak_load_kw

    run_dir = Path(run_dir).resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "results").mkdir(exist_ok=True)
    raw = resolved_dict(cfg)
    generated = generated_feeder_parameters(cfg)
    if generated is not None:  # its own synthetic model, in the run folder (see the function)
        master = write_synthetic_feeder(run_dir / GENERATED_FEEDER_DIR, **generated)
        raw["feeder"].update(model=None, path=str(master.relative_to(run_dir)))  # Study.load: relative to run_dir
    else:
        master = feeder_master(cfg, config_dir)
        if cfg.feeder.path is not None:
            raw["feeder"]["path"] = str(master)  # absolute, so the run folder stands alone
    feeder = open_feeder(cfg, master)
    points = feeder.load_points()
    p = cfg.prosumers
    notes: list[str] = []  # what the run's inputs replace in the config, for the resolved config
    if p.sites is not None:  # named customers at given buses and phases
        from federates.feeder.sites_file import bus_phases_of_nodes, read_sites_file

        sites = read_sites_file(Path(p.sites), points, bus_phases_of_nodes(list(feeder.node_v_pu())),
                                cfg.feeder.customer_connection.customers_per_transformer)
        if len(sites) != p.count:
            raw["prosumers"]["count"] = len(sites)
            notes.append(f"prosumers.count: {len(sites)}, the customers of prosumers.sites "
                              f"({p.sites}), replaces {p.count}")
    else:
        try:
            sites = place_customers(points, p.count, seed=cfg.study.seed, phase=p.phases,
                                    customers_per_transformer=cfg.feeder.customer_connection.customers_per_transformer,
                                    spread=p.placement)
        except ValueError as e:
            raise ConfigError([Problem("prosumers", f"cannot place {p.count} prosumers on {master.name}: {e}",
                                       "a feeder with loads on the requested phases, and with prosumers.placement "
                                       "one_per_load at most one prosumer per load")], "feeder") from None
    if p.profiles is not None:
        sites = _with_measured_profiles(cfg, sites, run_dir)
    if p.pv_penetration_pct is not None and p.pv_penetration_base_kw is None:
        raw["prosumers"]["pv_penetration_base_kw"] = feeder_peak_load_kw(cfg, sites, sum(lp.kw for lp in points))
    if cfg.market.tariff.path is not None:  # a dynamic tariff's prices: a copy in the run folder, named relative to it
        shutil.copyfile(cfg.market.tariff.path, run_dir / TARIFF_PRICES_FILE)
        raw["market"]["tariff"]["path"] = TARIFF_PRICES_FILE
    notes = [*cfg._notes, *notes]
    if cfg.site.weather.source == "file":
        raw["site"], said_weather = resolve_weather(cfg, config_dir)
        notes += said_weather
    said = "".join(f"# {n}\n" for n in notes)  # what a later source replaced (config.later_wins)
    (run_dir / CONFIG_FILE).write_text(said + yaml.safe_dump(raw, sort_keys=False))
    write_sites(run_dir, sites)
    if cfg.market.topology in ("p2p", "hybrid"):
        feeder.attach_customers(sites, cfg.feeder.customer_connection)
        write_distances(run_dir, feeder.customer_distances_km())
    if cfg.feeder.customer_connection.kind == "direct":  # each meter's base: its node's, 240 V across split-phase legs
        if not feeder.sites:
            feeder.attach_customers(sites, cfg.feeder.customer_connection)
        np.save(run_dir / V_BASE_FILE, feeder.customer_v_base_v())
    study = Study.load(run_dir)
    from federates.feeder.sensitivity import (
        SENSITIVITIES_FILE,
        chosen_model,
        compute_sensitivities,
        needs_sensitivities,
    )
    from federates.prosumers.agents import inverter_kva_of

    if needs_sensitivities(cfg):
        if not feeder.sites:
            feeder.attach_customers(sites, cfg.feeder.customer_connection)
        grouped = chosen_model(feeder, cfg.controllers.sensitivities) == "grouped"
        sens = compute_sensitivities(feeder, inverter_kva_of(study.cfg, study.sites),
                                     background_mult=0.6 * cfg.feeder.background_load_scale,
                                     grouped=grouped)
        sens.save(run_dir / SENSITIVITIES_FILE)
    return study


def _with_measured_profiles(cfg: StudyFile, sites: list, run_dir: Path) -> list:
    """``sites`` linked to their measured series (``prosumers.profiles``): a sites file's
    customers by name, placed prosumers to the file's customers in file order. The file
    is read and checked once here (coverage, units, gaps: ConfigError before anything
    starts); a customer's PV size is its PV series' peak (unless its site gives one) and
    its daily load the file's mean. Gaps go to ``results/profile_gaps.parquet`` and a
    warning line."""
    from dataclasses import replace

    from federates.common.study import write_tables
    from federates.prosumers import measured

    p = cfg.prosumers
    spec = measured.ProfileSpec.from_config(p.profiles)
    start_ns, end_ns = measured.study_span_ns(cfg.study.start, cfg.study.duration_s)
    given = [s.daily_load_kwh is not None for s in sites]
    if any(given):
        raise ConfigError([Problem("prosumers.sites", f"gives daily_load_kwh for {sites[given.index(True)].participant}, "
                                   "whose load comes from the measured profiles",
                                   "no daily_load_kwh column with prosumers.profiles")], str(p.sites))
    series = measured.read_measured(spec, start_ns, end_ns,
                                    customers=[s.participant for s in sites] if p.sites is not None else None,
                                    count=len(sites))
    peak, daily = series.pv_peak_kw(), series.daily_load_kwh()
    out = []
    for j, s in enumerate(sites):
        kwp = s.pv_kwp if s.pv_kwp is not None or not series.has_pv[j] else float(peak[j])
        out.append(replace(s, profile=series.customers[j], pv_kwp=kwp, daily_load_kwh=float(daily[j])))
    write_tables(run_dir, {"profile_gaps": measured.gaps_frame(series.gaps)})
    if series.gaps:
        worst = max(series.gaps, key=lambda g: g.longest_gap_s)
        print(f"tecosim: warning: measured profiles {spec.path.name}: {sum(g.missing_intervals for g in series.gaps)} "
              f"missing interval(s) in {len(series.gaps)} series (longest {worst.longest_gap_s:g} s, {worst.customer} "
              f"{worst.series} from {worst.longest_from}), filled by gap_fill: {spec.gap_fill} "
              f"(results/profile_gaps.parquet)", file=sys.stderr)
    return out


def open_feeder(cfg: StudyFile, master: Path):
    """The configured OpenDSS model, compiled, solved and checked for voltage bases.

    A model without voltage bases is bad input: ConfigError (exit 2) on
    ``feeder.path`` / ``feeder.model``. So is a file that is no OpenDSS model at all
    (garbage, empty, a Redirect to a missing file: FeederFileError). Other model errors
    (OpenDSS rejects the circuit, the base case does not solve) stay FeederModelError
    (exit 1)."""
    from federates.feeder.opendss import FeederFileError, OpenDSSFeeder

    field_ = "feeder.path" if cfg.feeder.path is not None else "feeder.model"
    try:
        feeder = OpenDSSFeeder(master, source_pu=cfg.feeder.source_pu)
    except FeederFileError as e:
        raise ConfigError([Problem(field_, str(e), "an OpenDSS master .dss file")], "feeder") from None
    try:
        feeder.check_voltage_bases()
    except FeederModelError as e:
        raise ConfigError([Problem(field_, str(e), "a model that sets VoltageBases and runs CalcVoltageBases")],
                          "feeder") from None
    return feeder


def resolve_weather(cfg: StudyFile, config_dir: Path) -> tuple[dict, list[str]]:
    """The ``site`` section a run with a weather file records: the file's absolute path
    (the run folder stands alone), its format, and the coordinates and time zone used
    (the config's where it sets them, else the file header's:
    ``federates.prosumers.weather.site_values``); with notes for the resolved config.
    A file that cannot be used is ConfigError (exit 2) on ``site.weather.path``."""
    from federates.prosumers.weather import WeatherFileError, read_weather_file, site_values

    w = cfg.site.weather
    path = Path(w.path)
    path = (path if path.is_absolute() else config_dir / path).resolve()
    allowed = "a whole year of weather (TMY3, TMY2, EPW, PVGIS TMY, NSRDB PSM CSV) with physical values"
    try:
        data = read_weather_file(path, w.format)
        used = site_values(cfg.site, data.header)
    except (WeatherFileError, ValueError) as e:
        raise ConfigError([Problem("site.weather.path", str(e), allowed)], "weather") from None
    if used.timezone is None:
        raise ConfigError([Problem("site.timezone", f"{path.name} names no whole-hour time zone of its site",
                                   "an IANA time zone, e.g. Europe/Berlin")], "weather")
    site = resolved_dict(cfg)["site"]
    site.update(latitude=used.latitude, longitude=used.longitude, altitude_m=used.altitude_m,
                timezone=used.timezone)
    site["weather"].update(path=str(path), format=data.format)
    from_file = [k for k, v in used.source.items() if v == "file"]
    notes = [f"site.{k} from the weather file's header ({path.name})" for k in from_file]
    if "cloudiness" in cfg.prosumers.model_fields_set:
        notes.append(f"prosumers.cloudiness ({cfg.prosumers.cloudiness:g}) is ignored: the weather file's "
                     "irradiance carries the clouds")
    return site, notes


def check_weather(cfg: StudyFile, config_dir: Path) -> str | None:
    """What ``tecosim validate`` checks of a weather file (None without one)."""
    if cfg.site.weather.source != "file":
        return None
    site, _ = resolve_weather(cfg, config_dir)
    return (f"{Path(site['weather']['path']).name} ({site['weather']['format']}) at "
            f"{site['latitude']:g}, {site['longitude']:g}, {site['timezone']}")


def check_feeder(cfg: StudyFile, config_dir: Path) -> str:
    """What ``tecosim validate`` checks of the model: it loads, solves, has voltage
    bases. Returns a one-line description (generated feeders are checked at run time)."""
    if generated_feeder_parameters(cfg) is not None:
        return "synthetic feeder generated at run time"
    master = feeder_master(cfg, config_dir)
    feeder = open_feeder(cfg, master)
    return f"{master.name}: {len(feeder.load_points())} loads, base case solves"



def port_block_free(base: int, width: int) -> bool:
    """Whether ports base..base+width-1 can all be bound on 127.0.0.1 now (no SO_REUSEADDR:
    a port listened on by anything, e.g. a leftover ``helics_broker``, or in TIME_WAIT is
    not free)."""
    socks = []
    try:
        for port in range(base, base + width):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux; else the IANA range)."""
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 49152, 65535


def free_port_block(width: int = 20, tries: int = 200, rng: random.Random | None = None) -> int:
    """A port P with P..P+width-1 free on loopback (zmq brokers use P and P+1, cores more).

    Blocks are drawn at random (seeded by pid and clock, so concurrent runs draw
    differently) below the kernel's ephemeral range when there is room (20000..32767 on
    a default Linux), so outgoing connections of other processes cannot take a port of
    the block between this check and the cores binding it; a block with any port in
    use (say by a broker left over from a killed run) is skipped."""
    rng = rng or random.Random(os.getpid() ^ time.time_ns())
    eph_lo, eph_hi = _ephemeral_ports()
    below, above = (20000, min(60000, eph_lo)), (max(20000, eph_hi + 1), 60000)
    lo, hi = max(below, above, key=lambda r: r[1] - r[0])
    if hi - lo < 2000:  # the ephemeral range covers it all: draw anywhere
        lo, hi = 20000, 60000
    for _ in range(tries):
        base = rng.randrange(lo, hi - width)
        if port_block_free(base, width):
            return base
    raise FederationError("broker", "found no free port block on 127.0.0.1")



def select_federates(cfg: StudyFile, wanted: list[str] | None) -> list[str]:
    """The federates of ``--federates`` (None: all), in federation order.

    ``prosumers`` stands for every prosumer part when ``prosumers.federates`` > 1.
    ConfigError (exit 2) naming the allowed names for an unknown or repeated name, or
    an empty list."""
    names = keys.federate_names(cfg.prosumers.federates)
    if wanted is None:
        return names
    allowed = ", ".join(dict.fromkeys([*names, keys.PROSUMERS]))
    problems, chosen = [], []
    for w in wanted:
        got = keys.prosumers_names(cfg.prosumers.federates) if w == keys.PROSUMERS else [w]
        if got[0] not in names:
            problems.append(Problem("--federates", f"unknown federate {w!r}", allowed))
        elif any(g in chosen for g in got):
            problems.append(Problem("--federates", f"{w!r} is listed twice", "each federate once"))
        else:
            chosen += got
    if not wanted:
        problems.append(Problem("--federates", "names no federate", allowed))
    if problems:
        raise ConfigError(problems, "arguments")
    return [n for n in names if n in chosen]
