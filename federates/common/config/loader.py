"""Reading a study: YAML with ``base:`` files, ``--set`` overrides, grid presets, then
validation that raises one :class:`ConfigError` listing every problem with its field
path and allowed values."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from federates.common.config.checks import cross_checks, input_file
from federates.common.config.presets import GRID_PRESETS
from federates.common.config.schema import FeederConfig, StudyFile
from federates.common.errors import ConfigError, Problem


def apply_grid_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the values of its ``grid_preset`` filled in where ``raw`` has no key.

    ``grid_preset`` is a top-level key, not ``feeder.preset``: a preset sets keys of
    two sections (``feeder.synthetic``, ``feeder.customer_connection`` and
    ``prosumers.pv_penetration_pct``), so it describes the study's grid as a whole, and
    ``--set grid_preset=weak`` says so. Keys given in the study file (or by ``--set``,
    or by a ``base:`` file) win, an explicit ``null`` included; so a scenario file meant
    to be re-run under other presets (configs/weak_grid.yaml) sets none of these keys.
    The ``feeder.synthetic`` values are filled only with ``feeder.model: synthetic``
    (:func:`federates.common.config.checks.cross_checks` rejects a preset on another bundled model). Unknown names
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


def _field_path(loc: tuple[Any, ...]) -> str:
    aliases = {"duration_s": "duration", "market_interval_s": "market_interval",
               "physics_step_s": "physics_step"}
    return ".".join(aliases.get(str(p), str(p)) for p in loc) or "<root>"



def apply_overrides(raw: dict[str, Any], overrides: list[str] | Mapping[str, Any], notes: list[str] | None = None,
                    source: str = "the config") -> dict[str, Any]:
    """``raw`` with each override applied: ``a.b.c=value`` strings (``--set``; value
    parsed as YAML) or a mapping ``{"a.b.c": value}`` of Python values (the Python API;
    taken as they are). An override wins over the pair member it replaces
    (:func:`later_wins`, told in ``notes``)."""
    if not isinstance(raw, dict):  # a file that is a list or a scalar: nothing to set keys in
        raise ConfigError([Problem("<root>", "the config must be a mapping of sections",
                                   ", ".join(StudyFile.model_fields))], "--set")
    out = copy.deepcopy(raw)
    if isinstance(overrides, Mapping):
        problems = [problem for key, value in overrides.items()
                    if (problem := _set_key(out, str(key), copy.deepcopy(value), notes, source,
                                            f"overrides[{str(key).strip()!r}]")) is not None]
        if problems:
            raise ConfigError(problems, "overrides")
        return out
    problems = [problem for item in overrides
                if (problem := _apply_override(out, item, notes, source)) is not None]
    if problems:
        raise ConfigError(problems, "--set")
    return out


def _apply_override(out: dict[str, Any], item: str, notes: list[str] | None, source: str) -> Problem | None:
    """Apply one ``a.b.c=value`` to ``out`` in place; the problem with it, if any."""
    if "=" not in item:
        return Problem(f"--set {item}", "must look like key.path=value", "section.key=value")
    key, value = item.split("=", 1)
    target = _section_of(out, key, f"--set {item}")
    if isinstance(target, Problem):
        return target
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        return Problem(key, f"value is not valid YAML: {' '.join(str(e).split())}", "a YAML scalar, list or mapping")
    _put(out, target, key, parsed, notes, source, f"--set {key.strip()}")
    return None


def _set_key(out: dict[str, Any], key: str, value: Any, notes: list[str] | None, source: str,
             said_as: str) -> Problem | None:
    """Set the dotted ``key`` of ``out`` to ``value`` in place; the problem, if any
    (``said_as``: how the override is named in a problem with its key)."""
    target = _section_of(out, key, said_as)
    if isinstance(target, Problem):
        return target
    _put(out, target, key, value, notes, source, said_as)
    return None


def _section_of(out: dict[str, Any], key: str, said_as: str) -> dict[str, Any] | Problem:
    """The section of ``out`` that holds the dotted ``key``'s last part (sections on
    the way made when missing), or the problem with the key."""
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        return Problem(said_as, "empty key", "section.key=value")
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return Problem(key, f"{part} is not a section", "a section name")
        node = child
    return node


def _put(out: dict[str, Any], node: dict[str, Any], key: str, value: Any, notes: list[str] | None,
         source: str, said_as: str) -> None:
    parts = [k for k in key.strip().split(".") if k]
    top: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        top = {part: top}
    said = later_wins(out, top, source, said_as)
    if notes is not None:
        notes.extend(said)
    node[parts[-1]] = value


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
            problems += [p for p in cross_checks(rest, base_dir) if p.field not in seen]
        raise ConfigError(problems, source) from None
    _absolute_tariff_path(cfg, base_dir)
    problems = cross_checks(cfg, base_dir)
    if problems:
        raise ConfigError(problems, source)
    _absolute_input_files(cfg, base_dir)
    return cfg


def _absolute_input_files(cfg: StudyFile, base_dir: Path) -> None:
    """Make the prosumers' input files (measured profiles, sites) absolute, so that the
    resolved config in a run folder names them wherever it is read from."""
    p = cfg.prosumers
    if p.sites is not None:
        p.sites = str(input_file(p.sites, base_dir))
    if p.profiles is not None:
        p.profiles.path = str(input_file(p.profiles.path, base_dir))
        if p.profiles.pv_path is not None:
            p.profiles.pv_path = str(input_file(p.profiles.pv_path, base_dir))


def _absolute_tariff_path(cfg: StudyFile, base_dir: Path) -> None:
    """A dynamic tariff's CSV relative to ``base_dir`` made absolute, so that the
    resolved config in a run folder names the file wherever the run starts."""
    t = cfg.market.tariff
    if t.path is not None and not Path(t.path).is_absolute():
        t.path = str((Path(base_dir) / t.path).resolve())


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


def load_config(path: str | Path, overrides: list[str] | Mapping[str, Any] | None = None) -> StudyFile:
    """Read, override and validate a study YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem("<file>", f"no such config file: {path}", "a YAML file")], str(path))
    notes: list[str] = []
    raw = _read_with_base(path, seen=(), notes=notes)
    return _override_and_validate(raw, overrides, notes, path.parent, str(path))


def load_config_dict(raw: Mapping[str, Any], overrides: list[str] | Mapping[str, Any] | None = None, *,
                     base_dir: str | Path = ".", source: str = "config (dict)") -> StudyFile:
    """Override and validate a study given as plain data (the sections of a study
    file), as :func:`load_config` does a file's: the same ConfigError naming each field.
    A top-level ``base:`` names a study file (relative to ``base_dir``) read first;
    the dict's keys are merged over it, section by section. Relative input files (a
    feeder path, profiles, a tariff CSV) are relative to ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise ConfigError([Problem("<root>", "the config must be a mapping of sections",
                                   ", ".join(StudyFile.model_fields))], source)
    notes: list[str] = []
    data = copy.deepcopy(dict(raw))
    if "base" in data:
        base = data.pop("base")
        if not isinstance(base, (str, Path)):
            raise ConfigError([Problem("base", "must be a file name", "a study YAML file")], source)
        under = _read_with_base(Path(base_dir) / base, seen=(), notes=notes)
        notes.extend(later_wins(under, data, str(Path(base_dir) / base), source))
        data = _deep_merge(under, data)
    return _override_and_validate(data, overrides, notes, Path(base_dir), source)


def _override_and_validate(raw: Any, overrides: list[str] | Mapping[str, Any] | None, notes: list[str],
                           base_dir: Path, source: str) -> StudyFile:
    if overrides:
        raw = apply_overrides(raw, overrides, notes, source)
    cfg = validate(raw, base_dir=base_dir, source=source)
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
    raw = _read_yaml(path)
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


def _read_yaml(path: Path) -> Any:
    """The YAML document of ``path`` ({} if empty); ConfigError naming what is wrong."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError([Problem("<file>", f"not valid YAML: {e}")], str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([Problem("<file>", f"not UTF-8 text: {e}", "a UTF-8 YAML file")], str(path)) from None
    except RecursionError:
        raise ConfigError([Problem("<file>", "nested too deeply to read", "a study YAML file")], str(path)) from None
    except OSError as e:
        raise ConfigError([Problem("<file>", f"cannot be read: {e}", "a readable YAML file")], str(path)) from None


def resolved_dict(cfg: StudyFile) -> dict[str, Any]:
    """The config with every default filled in, keyed as in YAML."""
    return cfg.model_dump(by_alias=True, mode="json")


def config_sha256(cfg: StudyFile) -> str:
    text = yaml.safe_dump(resolved_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()

