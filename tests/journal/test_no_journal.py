"""Without a journal, a SIGKILLed scheduler is not brought back: pending futures fail
with SchedulerLostError once the client's reconnect_timeout has passed, and the
workers, which outlive it, keep running until their cluster closes."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from regrow import SchedulerLostError
from regrow.testing import MakeCluster, wait_until

from .tasks import inc, slow_inc

RECONNECT_TIMEOUT = 2.0
MARGIN = 4.0  # a loaded 2-core machine: process scheduling, the reconnect backoff's last step


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_without_journal(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(reconnect_timeout=RECONNECT_TIMEOUT)
    assert cluster.journal is None
    assert client.submit(inc, 1).result(timeout=30) == 2
    workers = client.scheduler_info()["workers"]
    worker_pids = [w["pid"] for w in workers.values()]
    nanny_pids = [wp.pid for wp in cluster.workers]
    assert len(worker_pids) == 2 and len(nanny_pids) == 2
    pending = client.submit(slow_inc, 0, 3.0)
    waiting = client.submit(inc, pending)
    scheduler = cluster.scheduler_proc
    assert scheduler is not None
    os.kill(scheduler.pid, signal.SIGKILL)  # the pid of the scheduler the cluster started
    killed = time.monotonic()
    with pytest.raises(SchedulerLostError, match="no scheduler came back"):
        waiting.result(timeout=60)
    took = time.monotonic() - killed
    assert RECONNECT_TIMEOUT * 0.9 <= took <= RECONNECT_TIMEOUT + MARGIN, took
    with pytest.raises(SchedulerLostError):
        pending.result(timeout=5)
    assert client.status == "lost"
    assert scheduler.wait(timeout=10) == -signal.SIGKILL
    # Nobody restarts a scheduler without a journal...
    assert cluster.scheduler_proc is scheduler
    # ...and the workers and their nannies are still there, waiting for one.
    assert all(map(_alive, worker_pids + nanny_pids)), {p: _alive(p) for p in worker_pids}
    client.close()
    cluster.close()
    wait_until(
        lambda: not any(map(_alive, worker_pids + nanny_pids)),
        timeout=20,
        what="workers and nannies stopped with their cluster",
    )
