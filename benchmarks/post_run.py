"""Peak memory of the post-run path on long runs, before and after streaming it.

Builds synthetic long run folders from one real run of the default study (a day,
in process; or ``--source RUN``) with ``tests/longrun.py: make_long_run``: the day's
results repeated back to back (``--days``), optionally with every prosumer replicated
(``--replicate``, 25 x 40 = 1000 prosumers), written as many Parquet row groups. Then,
for each code version, each of these phases runs in a fresh Python process on each
folder, and the process's peak resident memory (``VmHWM`` of /proc/self/status) is
recorded:

* ``post-run``: what ``tecosim run`` does after the federates (``runner.api.finish_run``
  without the report): kpis, conservation checks, loss_allocation / loss_charges,
  summary;
* ``report``: ``runner.report.write_report`` (report.html and its PNGs);
* ``compare``: ``runner.compare.write_compare`` of the run with itself.

Code versions (``after`` runs first): ``after`` is this checkout; ``before`` is ``--before-commit`` (default
c514ee0, the last commit that read whole tables), extracted with ``git archive`` into
a temporary folder. A phase whose resident memory passes ``--max-rss-gib`` is killed
(recorded as ``> N GiB``: the machine is shared) and so is one that runs longer than
``--timeout-s``. Where both versions complete ``post-run``, their kpis, loss tables
and summaries are compared (``identical``).

    .venv/bin/python benchmarks/post_run.py                      # 1, 30, 365 days; 30 days x 25
    .venv/bin/python benchmarks/post_run.py --cases 1,30 --versions after --keep

Correctness on such folders is tested (tests/unit/test_post_run_stream.py, and the
``benchmark``-marked test of 30 real days there); this script measures memory and wall
time only, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.longrun import make_long_run  # noqa: E402

BEFORE_COMMIT = "c514ee0"
CASES = "1,30,365,30x25"  # days, or days x replicate
PHASES = ("post-run", "report", "compare")

CHILD = r"""
import json, sys, time
from pathlib import Path
phase, run = sys.argv[1], Path(sys.argv[2])
import pandas, pyarrow, matplotlib  # the imports' own memory is in 'baseline'
from runner.api import finish_run as _finish_run
from runner.launch import Study
from runner.compare import write_compare
from runner.report import write_report
t0 = time.perf_counter()
if phase == "post-run":
    _finish_run(Study.load(run), "inprocess", 0.0, quiet=True, report=False)
elif phase == "report":
    write_report(run, quiet=True)
elif phase == "compare":
    write_compare([run, run], run.parent / (run.name + "-compare"), labels=["a", "b"])
elif phase != "baseline":
    raise SystemExit(f"unknown phase {phase}")
wall = time.perf_counter() - t0
status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
print(json.dumps({"peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024, "wall_s": wall}))
"""


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_phase(code: Path, phase: str, run: Path, max_rss_mib: float, timeout_s: float) -> dict:
    """One phase in a fresh process with ``code`` first on sys.path; killed past the limits."""
    env = {**os.environ, "PYTHONPATH": str(code), "MPLBACKEND": "Agg"}
    p = subprocess.Popen([sys.executable, "-c", CHILD, phase, str(run)], cwd=code, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, seen = time.monotonic(), 0.0
    while p.poll() is None:
        seen = max(seen, rss_mib(p.pid))
        if seen > max_rss_mib or time.monotonic() - t0 > timeout_s:
            p.kill()
            p.wait()
            why = f"> {max_rss_mib / 1024:g} GiB" if seen > max_rss_mib else f"> {timeout_s:g} s"
            return {"killed": why, "peak_rss_mib": seen, "wall_s": time.monotonic() - t0}
        time.sleep(0.1)
    out, err = p.communicate()
    if p.returncode != 0:
        return {"failed": err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}",
                "peak_rss_mib": seen, "wall_s": time.monotonic() - t0}
    return json.loads(out.strip().splitlines()[-1])


def extract_commit(commit: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def source_run(work: Path) -> Path:
    day = work / "day"
    if not (day / "results" / "voltages.parquet").is_file():
        r = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(REPO / "configs" / "default.yaml"),
                            "--engine", "inprocess", "--out", str(day), "--quiet", "--no-report"],
                           cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"the default study failed:\n{r.stderr}")
    return day


def parse_case(text: str) -> tuple[int, int]:
    days, _, rep = text.partition("x")
    return int(days), int(rep or 1)


def post_run_outputs(run: Path) -> dict:
    import pandas as pd

    out = {name: pd.read_parquet(run / "results" / f"{name}.parquet")
           for name in ("kpis", "loss_allocation", "loss_charges") if (run / "results" / f"{name}.parquet").is_file()}
    manifest = json.loads((run / "manifest.json").read_text())
    out["summary"] = manifest.get("summary")
    return out


def same_outputs(a: dict, b: dict) -> bool:
    import pandas as pd

    if a.keys() != b.keys() or a["summary"] != b["summary"]:
        return False
    for k in a:
        if k != "summary":
            try:
                pd.testing.assert_frame_equal(a[k], b[k], check_exact=True)
            except AssertionError:
                return False
    return True


def fmt(r: dict | None) -> str:
    if r is None:
        return "-"
    if "killed" in r:
        return f"killed ({r['killed']}; at {r['peak_rss_mib']:,.0f} MiB)"
    if "failed" in r:
        return f"failed ({r['failed'][:60]})"
    return f"{r['peak_rss_mib']:,.0f} MiB ({r['wall_s']:.0f} s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=CASES, help=f"comma-separated DAYS or DAYSxREPLICATE (default {CASES})")
    ap.add_argument("--versions", default="before,after", help="before, after or both (default)")
    ap.add_argument("--before-commit", default=BEFORE_COMMIT)
    ap.add_argument("--source", type=Path, help="the run to repeat (default: a fresh run of the default study)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--rows-per-group", type=int, help="row groups of the synthetic tables (default: one per "
                    "day-copy, at most pyarrow's 1 Mi rows)")
    ap.add_argument("--max-rss-gib", type=float, default=8.0, help="kill a phase above this resident memory")
    ap.add_argument("--timeout-s", type=float, default=3600.0)
    ap.add_argument("--json", type=Path, help="also write the measurements as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tecosim-post-run-"))
    work.mkdir(parents=True, exist_ok=True)
    # 'after' first: its kpis.parquet (the same table) lets 'before' compare even where
    # its own post-run does not finish
    versions = sorted({v.strip() for v in args.versions.split(",") if v.strip()}, key=["after", "before"].index)
    code = {"after": REPO}
    if "before" in versions:
        code["before"] = extract_commit(args.before_commit, work / f"code-{args.before_commit}")
    src = args.source or source_run(work)
    results: list[dict] = []
    try:
        for case in args.cases.split(","):
            days, rep = parse_case(case)
            rg = args.rows_per_group
            run = work / (f"run-{days}d-x{rep}" + (f"-rg{rg}" if rg else ""))
            if not run.exists():
                t0 = time.perf_counter()
                make_long_run(src, run, days, replicate=rep, rows_per_group=rg)
                print(f"{run.name}: written in {time.perf_counter() - t0:.0f} s "
                      f"({sum(f.stat().st_size for f in (run / 'results').glob('*')) / 2**20:,.0f} MiB of Parquet)",
                      flush=True)
            outputs = {}
            for version in versions:
                row = {"case": case, "days": days, "prosumers": 40 * rep, "version": version,
                       "rows_per_group": rg or "default"}
                row["baseline"] = run_phase(code[version], "baseline", run, args.max_rss_gib * 1024, args.timeout_s)
                for phase in PHASES:
                    row[phase] = run_phase(code[version], phase, run, args.max_rss_gib * 1024, args.timeout_s)
                    print(f"  {case:>6} {version:>6} {phase:>8}: {fmt(row[phase])}", flush=True)
                    if phase == "post-run" and "killed" not in row[phase] and "failed" not in row[phase]:
                        outputs[version] = post_run_outputs(run)
                results.append(row)
            if len(outputs) == 2:
                print(f"  {case:>6} post-run outputs of before and after identical: "
                      f"{same_outputs(outputs['before'], outputs['after'])}", flush=True)
                for row in results[-2:]:
                    row["identical"] = same_outputs(outputs["before"], outputs["after"])
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| case | prosumers | row groups | version | imports | post-run (kpis, checks, loss tables, summary) "
          "| report | compare |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['days']} d | {r['prosumers']} | {r['rows_per_group']} | {r['version']} | {fmt(r['baseline'])} "
              f"| {fmt(r.get('post-run'))} "
              f"| {fmt(r.get('report'))} | {fmt(r.get('compare'))} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
