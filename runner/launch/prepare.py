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
    try:
        sites = place_customers(points, p.count, seed=cfg.study.seed, phase=p.phases,
                                customers_per_transformer=cfg.feeder.customer_connection.customers_per_transformer,
                                spread=p.placement)
    except ValueError as e:
        raise ConfigError([Problem("prosumers", f"cannot place {p.count} prosumers on {master.name}: {e}",
                                   "a feeder with loads on the requested phases, and with prosumers.placement "
                                   "one_per_load at most one prosumer per load")], "feeder") from None
    if p.pv_penetration_pct is not None and p.pv_penetration_base_kw is None:
        raw["prosumers"]["pv_penetration_base_kw"] = feeder_peak_load_kw(cfg, sites, sum(lp.kw for lp in points))
    if cfg.market.tariff.path is not None:  # a dynamic tariff's prices: a copy in the run folder, named relative to it
        shutil.copyfile(cfg.market.tariff.path, run_dir / TARIFF_PRICES_FILE)
        raw["market"]["tariff"]["path"] = TARIFF_PRICES_FILE
    said = "".join(f"# {n}\n" for n in cfg._notes)  # what a later source replaced (config.later_wins)
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
        compute_sensitivities,
        needs_sensitivities,
    )
    from federates.prosumers.agents import inverter_kva_of

    if needs_sensitivities(cfg):
        if not feeder.sites:
            feeder.attach_customers(sites, cfg.feeder.customer_connection)
        sens = compute_sensitivities(feeder, inverter_kva_of(study.cfg, study.sites),
                                     background_mult=0.6 * cfg.feeder.background_load_scale)
        sens.save(run_dir / SENSITIVITIES_FILE)
    return study


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
