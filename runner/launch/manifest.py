"""``<run>/manifest.json``: what ran, how it ended, and what a rerun needs (versions,
git commit, the feeder master file and its sha256, the command line)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from federates.common.config import REPO_ROOT, config_sha256, feeder_master
from federates.common.study import CONFIG_FILE, Study
from federates.feeder.sensitivity import SENSITIVITIES_FILE, describe_file

PACKAGES = ("helics", "opendssdirect.py", "dss-python", "pandas", "numpy", "pyomo", "highspy",
            "pydantic", "pyarrow", "pvlib")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "tecosim": _version("tecosim")}
    out.update({name: _version(name) for name in PACKAGES})
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> bool | None:
    """Whether tecosim's working tree differs from ``git_commit`` (then the commit alone
    does not reproduce the code); None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def feeder_record(study: Study) -> dict[str, Any]:
    """The model a run used: its bundled name (or null), the absolute path of the
    OpenDSS master file and that file's sha256 (files it redirects to are not hashed)."""
    cfg = study.cfg
    out: dict[str, Any] = {"model": cfg.feeder.model, "master": None, "master_sha256": None}
    try:
        master = feeder_master(cfg, study.run_dir)  # a relative feeder.path is relative to the run folder
        out.update(master=str(master), master_sha256=_sha256_file(master))
    except (OSError, ValueError) as e:
        out["error"] = str(e)
    return out


def weather_record(study: Study) -> dict[str, Any]:
    """The weather a run used: ``site.weather``'s source and, with a file, its absolute
    path, format and sha256, and the coordinates and time zone the run used (the
    resolved config's: the file header's unless the config set them)."""
    site = study.cfg.site
    w = site.weather
    out: dict[str, Any] = {"source": w.source}
    if w.source == "file":
        out.update(path=w.path, format=w.format, latitude=site.latitude, longitude=site.longitude,
                   altitude_m=site.altitude_m, timezone=site.timezone)
        try:
            out["sha256"] = _sha256_file(Path(w.path))
        except OSError as e:
            out["error"] = str(e)
    return out


def input_files_record(study: Study) -> dict[str, Any]:
    """The prosumers' input files a run read (``prosumers.profiles`` path and pv_path,
    ``prosumers.sites``): each config field with the file's absolute path and sha256;
    empty without any."""
    p = study.cfg.prosumers
    named = {"prosumers.sites": p.sites}
    if p.profiles is not None:
        named.update({"prosumers.profiles.path": p.profiles.path, "prosumers.profiles.pv_path": p.profiles.pv_path})
    out: dict[str, Any] = {}
    for field_, path in named.items():
        if path is None:
            continue
        try:
            out[field_] = {"path": str(path), "sha256": _sha256_file(Path(path))}
        except OSError as e:
            out[field_] = {"path": str(path), "error": str(e)}
    return out


#: the command line recorded in manifests: ``tecosim`` and the arguments ``runner.cli.main``
#: was given (set there; also right when main() is called from Python, where sys.argv
#: is the caller's); empty: sys.argv
COMMAND_LINE: list[str] = []


def parquet_complete(path: Path) -> bool:
    """Whether ``path`` ends as a closed Parquet file does (its footer: the ``PAR1`` magic
    after the metadata). A writer killed mid-run leaves the row groups without it, and
    no reader opens the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            return head == b"PAR1" and f.read(4) == b"PAR1"
    except OSError:  # shorter than 4 bytes, gone
        return False


def write_manifest(study: Study, engine: str, status: str, wall_s: float, *, reason: str = "",
                   federates: list[dict] | None = None, extra: dict | None = None) -> Path:
    """``<run>/manifest.json``: what ran, how it ended, and what a rerun needs: the
    resolved config (``config_file``, every default and ``--set`` applied; its
    ``config_sha256``), the seed, the engine, tecosim's git commit (and whether the
    working tree differed from it), the package and Python versions, the feeder master
    file and its sha256, the command line and the ``rerun`` command."""
    cfg = study.cfg
    manifest = {
        "study": cfg.study.name,
        "engine": engine,
        "status": status,
        "reason": reason,
        "seed": cfg.study.seed,
        "config_file": CONFIG_FILE,
        "config_sha256": config_sha256(cfg),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "versions": versions(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "command_line": list(COMMAND_LINE or sys.argv),
        "feeder": feeder_record(study),
        "weather": weather_record(study),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 3),
        "federates": federates or [],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rerun": f"tecosim run {study.run_dir / CONFIG_FILE} --engine {engine}",
    }
    inputs = input_files_record(study)
    if inputs:
        manifest["inputs"] = inputs
    sens_path = study.run_dir / SENSITIVITIES_FILE
    if sens_path.is_file():  # the DSO's linear model prepare_run built (controllers.sensitivities: auto chooses)
        manifest["sensitivities"] = describe_file(sens_path)
    manifest.update(extra or {})
    if status == "failed":  # the results of a failed run are whatever its roles wrote before it stopped
        tables = sorted((study.run_dir / "results").glob("*.parquet"))
        manifest["results_written"] = [p.stem for p in tables if parquet_complete(p)]
        # a table whose writer was killed before closing it: its chunks are there, its footer is not
        manifest["results_incomplete"] = [p.stem for p in tables if not parquet_complete(p)]
    path = study.run_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path
