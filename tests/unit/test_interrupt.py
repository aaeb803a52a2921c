"""runner.interrupt: a stop signal received while the runner supervises a federation
is recorded and raised where the runner checks, never dropped; runner.launch's
parquet_complete tells a closed table from one whose writer was killed."""

from __future__ import annotations

import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner import interrupt
from runner.launch import parquet_complete


@pytest.fixture
def handlers():
    before = {sig: signal.getsignal(sig) for sig in interrupt.STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)
    interrupt._pending = None


def test_a_signal_inside_deferred_waits_for_check(handlers):
    interrupt.install()
    with pytest.raises(interrupt.Interrupted) as e, interrupt.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes: the handler has run, and only recorded it
            pass
        assert interrupt.pending() == signal.SIGTERM
        interrupt.check()
        pytest.fail("check() did not raise")
    assert e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    assert isinstance(e.value, KeyboardInterrupt) and interrupt.pending() is None


def test_leaving_deferred_raises_what_nobody_checked(handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # run_study from Python: no install()
    with pytest.raises(interrupt.Interrupted) as e, interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    assert e.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert interrupt.exit_code(KeyboardInterrupt()) == 130


def test_outside_deferred_the_signal_raises_at_once(handlers):
    interrupt.install()
    with pytest.raises(interrupt.Interrupted):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass


def test_parquet_complete(tmp_path):
    table = pa.table({"x": list(range(100))})
    closed = tmp_path / "closed.parquet"
    pq.write_table(table, closed)
    assert parquet_complete(closed)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(closed.read_bytes()[:-30])  # a writer killed before its footer
    assert not parquet_complete(cut)
    (tmp_path / "tiny.parquet").write_bytes(b"PA")
    assert not parquet_complete(tmp_path / "tiny.parquet")
    assert not parquet_complete(tmp_path / "missing.parquet")
