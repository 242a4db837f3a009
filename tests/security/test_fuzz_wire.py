"""Random messages against a real scheduler after the real handshake (~300 per run):
it stays up, logs no traceback, and a legitimate client still computes correctly.

A fixed seed by default (the same messages each run); REGROW_FUZZ_SEED=N for another,
REGROW_FUZZ_SEED=random for a fresh one (printed). Longer runs:
``python -m tests.security.fuzz --minutes 60``.
"""

from __future__ import annotations

import operator
import os
import random
from collections.abc import Callable

import pytest

from regrow.testing import wait_until

from .cluster import Cluster, computes
from .fuzz import check, fuzz_wire
from .wire import authenticated, is_registered, register_client, submit, task_entry

Start = Callable[..., Cluster]

SEED = 20261204


def test_random_messages_after_handshake(start: Callable[..., Cluster]) -> None:
    chosen = os.environ.get("REGROW_FUZZ_SEED") or str(SEED)
    seed = random.randrange(2**32) if chosen == "random" else int(chosen)
    print(f"REGROW_FUZZ_SEED={seed}")
    c = start(handshake_timeout=2, client_grace=1)
    with c.client() as good:
        computes(good)
        stats = fuzz_wire(c.address, c.token, random.Random(seed), 300)
        print(dict(stats))
        assert c.alive(), f"the scheduler died (REGROW_FUZZ_SEED={seed})"
        computes(good)
    check(c)  # alive, no traceback nor "Task exception was never retrieved", a new client


def test_restart_asked_by_a_client_that_leaves(start: Callable[..., Cluster]) -> None:
    """Found by the fuzzer: a restart (which waits for every nanny's fresh worker) asked
    by a client that is gone when the answer is ready; the answer must not crash."""
    c = start()
    with c.client() as good:
        computes(good)
        # A nanny that never brings a fresh worker: the restart waits out its timeout.
        with authenticated(c.address, c.token) as nanny:
            nanny.send({"op": "register-nanny", "address": "tcp://127.0.0.1:7", "name": "n"})
            assert is_registered(nanny.recv())
            with authenticated(c.address, c.token) as p:
                p.send(register_client(f"leaves-{random.randrange(10**9)}"))
                assert is_registered(p.recv())
                p.send({"op": "restart", "timeout": 1.0, "rid": 1})
                assert nanny.recv_until(lambda m: m["op"] == "kill-worker")
            # The client is gone; the restart times out a second after it began.
            with pytest.raises(TimeoutError):
                good.restart(timeout=1.5)
        computes(good)
    check(c)


def test_a_worker_claiming_huge_results_does_not_break_scheduler_info(start: Start) -> None:
    """Found by the harness: sizes each within 64 bits summed past them, and the
    scheduler-info reply could no longer be encoded, for every client."""
    c = start()
    big, fake = 2**63 - 1, "tcp://127.0.0.1:9"
    with authenticated(c.address, c.token) as w, authenticated(c.address, c.token) as p:
        w.send({"op": "register-worker", "address": fake, "nthreads": 2})
        assert is_registered(w.recv())
        p.send(register_client("probe"))
        assert is_registered(p.recv())
        tasks = []
        for k in "abc":
            entry, frames = task_entry(k, operator.add, 1, 2)
            entry["w"] = [fake]
            tasks.append((entry, frames))
        p.send(submit(tasks))
        for _ in range(3):
            m = w.recv_until(lambda m: m["op"] == "compute")
            w.send({"op": "task-finished", "key": m["key"], "run": m["run"], "nbytes": big})
        p.send({"op": "scheduler-info", "rid": 5})
        reply = p.recv_until(lambda m: m.get("rid") == 5)
        assert reply["op"] == "scheduler-info-reply", reply
        assert reply["info"]["workers"][fake]["memory"] == big
    assert not c.log_problems(), c.log_problems()


def test_an_authenticated_peer_that_never_registers_is_dropped(start: Start) -> None:
    c = start(handshake_timeout=1)
    with authenticated(c.address, c.token) as p:
        # A stray reply, then silence: neither a registration nor a goodbye.
        p.send({"op": "ack", "rid": 12345})
        wait_until(lambda: not c.open_connections(p.port), timeout=10, what="peer dropped")
    assert "did not register within 1 s" in c.log()
    with c.client() as good:
        computes(good)
