"""A federation across hosts: two network namespaces joined by a veth pair.

Host A (namespace A, 10.231.X.1) runs the broker, the market and the feeder; host B
(namespace B, 10.231.X.2) the prosumers, meters and controllers, joined to A's broker
by ``federation.broker_address`` (README "Running a federation across hosts"). Each
host writes its own run folder; ``tecosim collect`` joins them into one, whose tables
must equal those of an in-process run of the same study: every value the federates of
one host got from the other crossed the veth pair (namespace B has nothing but its
loopback and its end of the pair; its byte counters are checked too).

Also: a host pointed at an address where no broker listens, and a broker host whose
partner never comes, both fail within ``federation.connect_timeout_s``, name the
broker's address, and leave no process behind.

Needs root and iproute2 (installed with apt-get where missing); the tests skip, saying
why, only where the machine forbids network namespaces or ``ip`` cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.cli import main
from runner.launch import _sha256_file, free_port_block
from runner.run_folder import read_tables
from tests.conftest import DEFAULT, REPO, assert_same_tables

pytestmark = pytest.mark.federation

#: half an hour around noon: two market intervals, curtailment and trading at work
SHORT = ["--set", "study.start=2026-06-21T11:30:00-04:00", "--set", "study.duration=30min"]
HOST_A = ["market", "feeder"]
HOST_B = ["prosumers", "meters", "controllers"]
RUN_TIMEOUT_S = 300  # a host's `tecosim run` (seconds on an idle 2-core machine)
CONNECT_TIMEOUT_S = 3  # federation.connect_timeout_s of the failing hosts
APT_TIMEOUT_S = 300


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def _install_iproute2() -> str:
    """'' when ``ip`` is there (installing iproute2 with apt-get if need be), else why not."""
    if shutil.which("ip"):
        return ""
    if shutil.which("apt-get") is None:
        return "the ip command (iproute2) is missing and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        r = subprocess.run(["apt-get", "install", "-y", "-q", "iproute2"], capture_output=True, text=True,
                           timeout=APT_TIMEOUT_S, env=env, check=False)
        if r.returncode != 0:  # stale or empty package lists: update, then try again
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=APT_TIMEOUT_S, env=env,
                           check=False)
            r = subprocess.run(["apt-get", "install", "-y", "-q", "iproute2"], capture_output=True, text=True,
                               timeout=APT_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        return f"apt-get install iproute2 did not finish in {APT_TIMEOUT_S} s"
    if r.returncode != 0 or not shutil.which("ip"):
        return f"apt-get install iproute2 failed (exit {r.returncode}): {(r.stdout + r.stderr).strip()[-300:]}"
    return ""


@dataclass
class Hosts:
    """Two namespaces ``a`` and ``b`` with addresses ``ip_a`` / ``ip_b`` on a veth pair."""

    a: str
    b: str
    ip_a: str
    ip_b: str
    veth_b: str

    def pids(self, ns: str) -> list[int]:
        r = _run("ip", "netns", "pids", ns)
        return [int(x) for x in r.stdout.split()]

    def tx_rx_bytes(self) -> tuple[int, int]:
        """Bytes sent and received by namespace B's end of the pair."""
        r = _run("ip", "-n", self.b, "-j", "-s", "link", "show", "dev", self.veth_b)
        stats = json.loads(r.stdout)[0]["stats64"]
        return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])


def _ip_or_fail(*args: str) -> None:
    r = _run("ip", *args)
    assert r.returncode == 0, f"ip {' '.join(args)} failed: {r.stderr.strip()}"


@pytest.fixture(scope="module")
def hosts():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add); run the tests as root")
    reason = _install_iproute2()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    x = os.getpid() % 200 + 20  # the 10.231.X.0/24 of this test run
    h = Hosts(f"tcs{tag}a", f"tcs{tag}b", f"10.231.{x}.1", f"10.231.{x}.2", f"tcv{tag}b")
    veth_a = f"tcv{tag}a"
    r = _run("ip", "netns", "add", h.a)
    if r.returncode != 0:
        pytest.skip(f"this machine forbids network namespaces: ip netns add failed: {r.stderr.strip()}")
    try:
        _ip_or_fail("netns", "add", h.b)
        _ip_or_fail("link", "add", veth_a, "type", "veth", "peer", "name", h.veth_b)
        _ip_or_fail("link", "set", veth_a, "netns", h.a)
        _ip_or_fail("link", "set", h.veth_b, "netns", h.b)
        _ip_or_fail("-n", h.a, "addr", "add", f"{h.ip_a}/24", "dev", veth_a)
        _ip_or_fail("-n", h.b, "addr", "add", f"{h.ip_b}/24", "dev", h.veth_b)
        for ns, dev in ((h.a, veth_a), (h.b, h.veth_b)):
            _ip_or_fail("-n", ns, "link", "set", "lo", "up")
            _ip_or_fail("-n", ns, "link", "set", dev, "up")
        yield h
    finally:
        for ns in (h.a, h.b):
            for pid in h.pids(ns) if shutil.which("ip") else []:  # none, unless a test failed badly
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _run("ip", "netns", "del", ns)  # takes the veth pair along
        _run("ip", "link", "del", veth_a)  # if it never moved into a namespace


def _start(ns: str, out: Path, address: str, federates: list[str], *extra: str) -> subprocess.Popen:
    """One host's `tecosim run` in namespace ``ns``."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "runner.cli", "run", str(DEFAULT), "--out", str(out),
         "--federates", ",".join(federates), *extra, *SHORT, "--set", f"federation.broker_address={address}",
         "--quiet", "--no-report"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout_s: float) -> tuple[int, str, float]:
    """Exit code, stderr and seconds waited; the process is killed on timeout."""
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"still running after {timeout_s} s:\n{err[-2000:]}")
    return proc.returncode, err, time.monotonic() - t0


def _tails(run_dir: Path) -> str:
    logs = run_dir / "logs"
    return "\n".join(f"--- {p.name}\n{p.read_text()[-600:]}" for p in sorted(logs.glob("*.log"))) \
        if logs.is_dir() else ""


@pytest.fixture(scope="module")
def runs(hosts, tmp_path_factory):
    root = tmp_path_factory.mktemp("hosts")
    address = f"{hosts.ip_a}:{free_port_block()}"
    before = hosts.tx_rx_bytes()
    a = _start(hosts.a, root / "a", address, HOST_A, "--broker")
    b = _start(hosts.b, root / "b", address, HOST_B)
    code_a, err_a, _ = _finish(a, RUN_TIMEOUT_S)
    code_b, err_b, _ = _finish(b, RUN_TIMEOUT_S)
    assert (code_a, code_b) == (0, 0), f"host A: {err_a}\n{_tails(root / 'a')}\nhost B: {err_b}\n{_tails(root / 'b')}"
    after = hosts.tx_rx_bytes()
    assert main(["run", str(DEFAULT), "--engine", "inprocess", "--out", str(root / "inprocess"), *SHORT,
                 "--quiet", "--no-report"]) == 0
    assert main(["collect", str(root / "a"), str(root / "b"), "--out", str(root / "all"),
                 "--quiet", "--no-report"]) == 0
    return {"a": root / "a", "b": root / "b", "all": root / "all", "inprocess": root / "inprocess",
            "address": address, "bytes": (after[0] - before[0], after[1] - before[1]), "root": root}


def test_both_hosts_prepared_the_same_inputs(runs):
    for name in ("config.resolved.yaml", "sites.json", "sensitivities.npz"):
        assert (runs["a"] / name).is_file(), name
        assert _sha256_file(runs["a"] / name) == _sha256_file(runs["b"] / name), name


def test_each_host_wrote_its_federates_tables_only(runs):
    a = {p.stem for p in (runs["a"] / "results").glob("*.parquet")}
    b = {p.stem for p in (runs["b"] / "results").glob("*.parquet")}
    assert {"trades", "clearing", "voltages", "grid", "control"} <= a  # the feeder hosts the inverters
    assert {"prosumers", "profiles", "meters", "ami", "dso_envelopes"} <= b
    assert not a & b
    for host, names, broker in (("a", HOST_A, True), ("b", HOST_B, False)):
        m = json.loads((runs[host] / "manifest.json").read_text())
        assert m["status"] == "ok"
        assert m["host"]["federates_here"] == names
        assert m["host"]["broker_here"] is broker
        assert m["host"]["broker_address"] == f"tcp://{runs['address']}"
        assert sorted(m["host"]["federates"]) == sorted(HOST_A + HOST_B)  # the broker counts all five
        assert [f["name"] for f in m["federates"]] == (["broker"] if broker else []) + names


def test_the_collected_run_equals_the_in_process_run(runs, hosts):
    a, b = read_tables(runs["all"]), read_tables(runs["inprocess"])
    assert len(a) >= 15
    assert len(a["trades"]) > 0  # not trivially equal
    assert_same_tables(a, b)
    tx, rx = runs["bytes"]
    assert tx > 10_000 and rx > 10_000, f"namespace B's veth sent {tx} and received {rx} bytes"
    m = json.loads((runs["all"] / "manifest.json").read_text())
    assert m["status"] == "ok" and "summary" in m
    assert [h["federates_here"] for h in m["hosts"]] == [HOST_A, HOST_B]
    assert {f["name"] for f in m["federates"]} == {"broker", *HOST_A, *HOST_B}
    assert (runs["all"] / "summary.txt").is_file()
    assert not hosts.pids(hosts.a) and not hosts.pids(hosts.b)


def test_collect_refuses_an_incomplete_set_of_hosts(runs, capsys):
    assert main(["collect", str(runs["a"]), "--out", str(runs["root"] / "half"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no folder holds the federates prosumers, meters, controllers" in err
    assert main(["collect", str(runs["a"]), str(runs["inprocess"]), "--out", str(runs["root"] / "mixed")]) == 2
    assert "no host record" in capsys.readouterr().err


def test_missing_broker_and_missing_partner_fail_in_time_and_leave_nothing(hosts, tmp_path):
    """Host B pointed at an address where no broker listens; host A's broker waiting
    for federates that never come (its own port, so the two do not meet)."""
    port_a, port_b = free_port_block(), free_port_block()
    timeout = ["--set", f"federation.connect_timeout_s={CONNECT_TIMEOUT_S}"]
    lonely_b = _start(hosts.b, tmp_path / "b", f"{hosts.ip_a}:{port_b}", HOST_B, *timeout)
    lonely_a = _start(hosts.a, tmp_path / "a", f"{hosts.ip_a}:{port_a}", HOST_A, "--broker", *timeout)
    # prepare_run (seconds), the connect timeout, then stopping everything
    code_b, err_b, took_b = _finish(lonely_b, 120)
    code_a, err_a, took_a = _finish(lonely_a, 120)
    assert code_b == 1, err_b
    assert f"no broker at tcp://{hosts.ip_a}:{port_b}" in err_b
    assert f"connect_timeout_s={CONNECT_TIMEOUT_S}" in err_b
    assert code_a == 1, err_a
    assert f"did not join the broker at tcp://{hosts.ip_a}:{port_a}" in err_a
    for host, port in (("a", port_a), ("b", port_b)):
        m = json.loads((tmp_path / host / "manifest.json").read_text())
        assert m["status"] == "failed"
        assert f"tcp://{hosts.ip_a}:{port}" in m["reason"]
    assert not hosts.pids(hosts.a) and not hosts.pids(hosts.b), "processes left in the namespaces"
    assert max(took_a, took_b) < 90


def test_bad_host_flags_and_addresses_exit_2(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["run", str(DEFAULT), "--out", out, "--federates", "market,bogus",
                 "--set", "federation.broker_address=10.0.0.1"]) == 2
    assert "unknown federate 'bogus' (allowed: prosumers, market, feeder, meters, controllers)" in capsys.readouterr().err
    assert main(["run", str(DEFAULT), "--out", out, "--federates", "market"]) == 2
    assert "federation.broker_address: is null" in capsys.readouterr().err
    assert main(["run", str(DEFAULT), "--out", out, "--set", "federation.broker_address=tcp://10.0.0.1"]) == 2
    assert "federation.broker_address" in capsys.readouterr().err
    assert main(["run", str(DEFAULT), "--out", out, "--set", "federation.broker_address=10.0.0.1:80"]) == 2
    assert "1024..65535" in capsys.readouterr().err
    assert main(["run", str(DEFAULT), "--out", out, "--set", "federation.broker_interface=eth0",
                 "--set", "federation.broker_address=10.0.0.1"]) == 2
    assert "federation.broker_interface" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
