"""A task that SIGKILLs its worker ends as KilledWorker; work around it is unharmed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from regrow import KilledWorker

from .helpers import MakeCluster, StillBroken, lost_events, wait_for_workers, workers
from .tasks import record_run, slow_inc, suicide


def test_poison(make_cluster: MakeCluster) -> None:
    # The death reports checked below: give the nanny's report time to arrive on a loaded
    # machine (the default 0.3 s wait, then the reason is only "connection closed").
    _, client = make_cluster(
        n_workers=2, threads_per_worker=1, allowed_failures=3, death_report_wait=2.0
    )
    start = time.time()
    poison = client.submit(suicide)
    innocents = client.map(slow_inc, range(50), seconds=0.02)

    with pytest.raises(KilledWorker) as info:
        poison.result(timeout=60)
    exc = info.value
    assert exc.key == poison.key
    assert poison.key in str(exc)
    assert "SIGKILL" in str(exc)
    assert len(exc.workers) == 3, exc.workers
    assert poison.status == "error"

    assert client.gather(innocents, timeout=60) == list(range(1, 51))
    assert all(f.status == "finished" for f in innocents)
    assert not [f for f in innocents if f.exception(timeout=1) is not None]

    # Both nannies bring a worker back; the scheduler reported exactly three deaths.
    wait_for_workers(client, 2, timeout=30)
    lost = lost_events(client, since=start)
    assert len(lost) == 3, lost
    assert all("SIGKILL" in m for m in lost), lost
    # The cluster still computes.
    assert client.submit(slow_inc, 100, 0.0).result(timeout=30) == 101


def test_poison_spares_innocent_neighbours(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """Innocent tasks sharing a worker with the poison die with it once, run alone
    afterwards, and finish; only the poison is blamed."""
    _, client = make_cluster(n_workers=2, threads_per_worker=2, allowed_failures=3)
    start = time.time()
    # The poison first, with a head start, so that it runs while innocents run next to it.
    poison = client.submit(suicide, 0.4, priority=10)
    logs = [tmp_path / f"runs-{i}" for i in range(8)]
    innocents = [client.submit(record_run, str(log), i, 1.0) for i, log in enumerate(logs)]

    with pytest.raises(KilledWorker) as info:
        poison.result(timeout=90)
    assert info.value.key == poison.key
    assert len(info.value.workers) == 3

    assert client.gather(innocents, timeout=90) == list(range(1, 9))
    for f in innocents:
        assert f.status == "finished"
        assert f.exception(timeout=1) is None
    # A run that started and never ended was killed with its worker.
    killed_while_running = [
        log.read_text().count("start") - log.read_text().count("end") for log in logs
    ]
    # Some innocent was running next to the poison when it killed its worker, but none
    # was killed twice: suspects run alone, so later deaths hit the poison only. (An
    # innocent may still run again, when the result it left on a worker dies with it.)
    assert max(killed_while_running) == 1, [log.read_text().split() for log in logs]
    lost = lost_events(client, since=start)
    assert len(lost) == 3, lost
    wait_for_workers(client, 2, timeout=30)


def test_killed_worker_spares_tasks_that_never_started(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """README: a task errs with KilledWorker 'after allowed_failures deaths while it ran'.
    A task queued behind the poison on a one-thread worker never ran."""
    _, client = make_cluster(n_workers=2, threads_per_worker=1, allowed_failures=1)
    info = workers(client)
    victim = sorted(info)[0]
    nanny, victim_pid = info[victim]["nanny"], info[victim]["pid"]
    poison = client.submit(suicide, 0.5, workers=[nanny])
    log = tmp_path / "runs"
    # Pinned to the same nanny: queued behind the poison on its worker's only thread.
    queued = client.submit(record_run, str(log), 1, 0.0, workers=[nanny])
    with pytest.raises(KilledWorker):
        poison.result(timeout=60)
    # The queued task never started in the process the poison killed...
    assert str(victim_pid) not in (log.read_text().split() if log.exists() else [])
    # ... so it was not running there: it should run on the fresh worker. (Today it errs
    # with KilledWorker 'was running on 1 worker(s) that died'.)
    try:
        value = queued.result(timeout=60)
    except KilledWorker as exc:
        raise StillBroken(f"a task that never ran: {exc}") from exc
    assert value == 2
