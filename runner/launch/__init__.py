"""Launching a study: the run folder, then either the HELICS federation (a broker and
five federate processes) or the in-process engine, then the manifest and summary.

Across hosts (``federation.broker_address``): each host runs some of the federates
(``run_study(federates=...)``), one of them the broker too, each in its own run
folder; ``collect_runs`` joins the folders into one complete run.

No orphan processes: every child runs in its own process group; on any failure or
timeout every group is killed before the error propagates. Ctrl-C or SIGTERM
(``runner.interrupt``) first asks the federates to stop (SIGTERM: each closes its tables
with the chunks written so far), then kills what is left after ``STOP_GRACE_S``.

One module per step:

- ``prepare``: the run folder (resolved config, sites, distances, sensitivities), the
  feeder check of ``tecosim validate``, ``--federates``, free loopback ports;
- ``processes``: one child process (exec'd or forked federate, the broker): :class:`Proc`;
- ``hang``: a hung federation found from the federates' heartbeats: :class:`HangWatch`;
- ``federation``: the broker and federates of a run, started, supervised, stopped:
  :class:`Federation`;
- ``run``: ``run_study`` with either engine;
- ``manifest``: ``manifest.json`` (versions, git commit, feeder file, command line);
- ``collect``: tables merged into the run folder (prosumer parts; hosts' run folders).

The names below are what callers import from ``runner.launch``.
"""

from federates.common.study import Study
from runner.launch.collect import collect_runs, merge_part_tables
from runner.launch.federation import HELICS_PROFILE_FILE, STOP_GRACE_S, Federation
from runner.launch.hang import HangWatch
from runner.launch.manifest import (
    COMMAND_LINE,
    _sha256_file,
    git_commit,
    git_dirty,
    parquet_complete,
    versions,
    write_manifest,
)
from runner.launch.prepare import (
    check_feeder,
    check_weather,
    default_run_dir,
    free_port_block,
    open_feeder,
    port_block_free,
    prepare_run,
    select_federates,
)
from runner.launch.processes import (
    ForkedProcess,
    Proc,
    die_with_parent,
    fork_federate,
    fork_main,
    helics_bin,
    preimport_federates,
)
from runner.launch.run import run_study

__all__ = [
    "COMMAND_LINE",
    "HELICS_PROFILE_FILE",
    "STOP_GRACE_S",
    "Federation",
    "ForkedProcess",
    "HangWatch",
    "Proc",
    "Study",
    "_sha256_file",
    "check_feeder",
    "check_weather",
    "collect_runs",
    "default_run_dir",
    "die_with_parent",
    "fork_federate",
    "fork_main",
    "free_port_block",
    "git_commit",
    "git_dirty",
    "helics_bin",
    "merge_part_tables",
    "open_feeder",
    "parquet_complete",
    "port_block_free",
    "preimport_federates",
    "prepare_run",
    "run_study",
    "select_federates",
    "versions",
    "write_manifest",
]
