"""The feeder catalog: the models bundled in ``feeders/``, the master file a study's
feeder resolves to, and the synthetic model a run must generate for itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

#: PyYAML's safe loader in C when PyYAML was built with libyaml (~10x faster than the
#: Python one, same results), for files tecosim wrote or bundles (a run folder's
#: resolved config, a feeder's ``feeder.yaml``): every federate reads them at start-up.
#: A user's config keeps ``yaml.safe_load`` (its error messages).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

if TYPE_CHECKING:
    from federates.common.config.schema import StudyFile

REPO_ROOT = Path(__file__).resolve().parents[3]
FEEDERS_DIR = REPO_ROOT / "feeders"


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
    meta = yaml.load((FEEDERS_DIR / cfg.feeder.model / "feeder.yaml").read_text(), Loader=SAFE_LOADER)
    return (FEEDERS_DIR / cfg.feeder.model / meta["master"]).resolve()
