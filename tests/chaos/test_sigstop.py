"""A frozen worker (SIGSTOP): removed by heartbeat timeout, its work redone elsewhere;
once thawed (SIGCONT) it drops its stale state and registers again."""

from __future__ import annotations

import time
from pathlib import Path

from regrow.testing import wait_until

from .helpers import Frozen, MakeCluster, StillBroken, lost_events, workers
from .tasks import gated, pid, slow_inc, worker_state

HEARTBEAT_TIMEOUT = 3.0


def test_sigstop(make_cluster: MakeCluster) -> None:
    # Results stay with their workers only (none kept by the scheduler), so that the
    # frozen worker's held results are lost and must be recomputed.
    _, client = make_cluster(heartbeat_timeout=HEARTBEAT_TIMEOUT, inline_result_bytes=0)
    info = workers(client)
    victim, other = sorted(info)
    victim_pid = info[victim]["pid"]
    start = time.time()
    futs = client.map(slow_inc, range(80), seconds=0.05)
    # Freeze the victim while it holds results and has work assigned.
    wait_until(
        lambda: (
            (w := workers(client).get(victim)) is not None
            and w["nkeys"] >= 3
            and w["processing"] >= 1
        ),
        timeout=30,
        what="the victim holds results and is working",
    )
    with Frozen(victim_pid) as frozen:
        stopped_wall = time.time()
        wait_until(
            lambda: victim not in workers(client),
            timeout=HEARTBEAT_TIMEOUT + 10,
            interval=0.02,
            what="the frozen worker is removed",
        )
        gone_after = time.monotonic() - frozen.stopped_at
        assert gone_after <= HEARTBEAT_TIMEOUT + 1, gone_after
        wait_until(lambda: lost_events(client, since=start), timeout=5, what="a 'lost' event")
        [lost] = [
            (t, m["text"])
            for t, _, m in client.get_events("workers")
            if t >= start and ") lost:" in m["text"]
        ]
        assert victim in lost[1] and "no heartbeat" in lost[1], lost
        assert lost[0] - stopped_wall <= HEARTBEAT_TIMEOUT + 1, (lost[0] - stopped_wall, lost)

        # Its work (running, queued, and the results it held) finishes on the other worker.
        assert client.gather(futs, timeout=60) == list(range(1, 81))
        who_has = client.who_has(futs)
        assert all(holders == [other] for holders in who_has.values()), who_has
        assert workers(client)[other]["nkeys"] == 80
    # Thawed (SIGCONT on leaving the block): the same process comes back, told to drop
    # what it held, and registers again.
    wait_until(
        lambda: victim in workers(client),
        timeout=30,
        what="the thawed worker registers again",
    )
    back = workers(client)[victim]
    assert back["pid"] == victim_pid
    assert back["nkeys"] == 0
    # Whatever it ran when it froze is dropped once its thread returns, and the results
    # it held (3 or more) are gone. (At most the result of the task it ran when it froze
    # may be left: see test_thawed_worker_drops_late_results.)
    wait_until(
        lambda: client.run(worker_state, workers=[victim])[victim]["tasks"] == 0,
        timeout=10,
        what="the thawed worker runs nothing",
    )
    assert client.run(worker_state, workers=[victim])[victim]["data"] <= 1
    # ... and it works again.
    assert client.submit(pid, workers=[victim], pure=False).result(timeout=30) == victim_pid
    assert client.gather(futs, timeout=30) == list(range(1, 81))


def test_result_while_holder_frozen(make_cluster: MakeCluster) -> None:
    """Future.result() for a key held by a worker that freezes returns once the
    scheduler has given up on that worker and recomputed the key elsewhere."""
    _, client = make_cluster(heartbeat_timeout=HEARTBEAT_TIMEOUT)
    info = workers(client)
    victim, other = sorted(info)
    futs = client.map(slow_inc, range(20), seconds=0.01)
    # Fetch some results, so the client holds connections to both workers.
    assert client.gather(futs[:10], timeout=30) == list(range(1, 11))
    wait_until(lambda: all(f.done() for f in futs), timeout=30, what="all done")
    who_has = client.who_has(futs[10:])
    fut = next((f for f in futs[10:] if who_has[f.key] == [victim]), None)
    assert fut is not None, who_has
    with Frozen(info[victim]["pid"]):
        try:
            value = fut.result(timeout=HEARTBEAT_TIMEOUT + 8)
        except TimeoutError:
            raise StillBroken(
                f"result() still waits for the frozen worker; the key is now on "
                f"{client.who_has(fut)[fut.key]} (the other worker is {other}), "
                f"status {fut.status!r}"
            ) from None
    assert value == futs.index(fut) + 1


def test_thawed_worker_drops_late_results(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """A task that was running when its worker froze, and ends after the thawed worker
    was told to drop its state, leaves nothing behind on that worker."""
    _, client = make_cluster(heartbeat_timeout=HEARTBEAT_TIMEOUT)
    gate, started = tmp_path / "gate", tmp_path / "started"
    fut = client.submit(gated, 42, str(gate), str(started))
    try:
        wait_until(started.exists, timeout=30, what="the gated task starts")
        info = workers(client)
        [victim] = [a for a, w in info.items() if w["processing"] == 1]
        with Frozen(info[victim]["pid"]):
            wait_until(
                lambda: victim not in workers(client),
                timeout=HEARTBEAT_TIMEOUT + 10,
                what="the frozen worker is removed",
            )
        # Thawed: it re-registers and drops what it held, its gated thread still running.
        wait_until(lambda: victim in workers(client), timeout=30, what="it registers again")
        wait_until(
            lambda: (
                client.run(worker_state, workers=[victim])[victim]["data"] == 0
                and workers(client)[victim]["nkeys"] == 0
            ),
            timeout=10,
            what="the thawed worker has dropped its data",
        )
    finally:
        gate.touch()
    # The task was run again on the other worker.
    assert fut.result(timeout=30) == 42
    # Once the old thread is done, the thawed worker holds nothing.
    wait_until(
        lambda: client.run(worker_state, workers=[victim])[victim]["tasks"] == 0,
        timeout=10,
        what="the old thread is done",
    )
    state = client.run(worker_state, workers=[victim])[victim]
    if state["data"]:
        raise StillBroken(
            f"the thawed worker holds {state['data']} result(s) the scheduler does not know "
            f"of (it lists {workers(client)[victim]['nkeys']} keys there)"
        )
