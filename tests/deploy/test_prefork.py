"""A nanny's first worker and its standby are copies of the nanny forked at its start:
they are its children, run the worker's command line when told, take over in turn when
a worker dies (with the death's cause reported), and leave nothing behind when the nanny
is killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from regrow import Client
from regrow.testing import child_env, regrow_cli, stop, wait_ready, wait_until


def _worker_pid(client: Client) -> int | None:
    workers = list(client.scheduler_info()["workers"].values())
    return int(workers[0]["pid"]) if len(workers) == 1 else None


def test_forked_workers_take_over_in_turn(tmp_path: Path) -> None:
    env = child_env("token-prefork")
    scheduler = regrow_cli(["scheduler", "--port", "0"], env, tmp_path / "s")
    nanny = None
    try:
        address = wait_ready(scheduler, tmp_path / "s")
        nanny = regrow_cli(["worker", address], env, tmp_path / "w")
        wait_ready(nanny, tmp_path / "w")
        parent = psutil.Process(nanny.pid)
        with Client(address, token="token-prefork", set_as_default=False) as client:
            client.wait_for_workers(1, timeout=30)
            first = _worker_pid(client)
            assert first is not None
            copies = {p.pid for p in parent.children()}
            assert first in copies and len(copies) == 2  # the worker and its standby
            # Forked: the same program as the nanny (no new interpreter).
            assert psutil.Process(first).cmdline() == parent.cmdline()
            assert client.submit(pow, 2, 10).result(timeout=30) == 1024
            for _ in range(2):  # the forked standby, then an interpreter started since
                before = _worker_pid(client)
                assert before is not None
                os.kill(before, signal.SIGKILL)
                # One look at a time: the only worker listed, and not the one killed (the
                # old one may still be listed beside the new one for a moment).
                seen: list[int] = []

                def replaced(b: int = before, seen: list[int] = seen) -> bool:
                    pid = _worker_pid(client)
                    if pid is None or pid == b:
                        return False
                    seen.append(pid)
                    return True

                wait_until(replaced, timeout=30, what="a new worker")
                assert psutil.Process(seen[-1]).ppid() == nanny.pid
                assert client.submit(pow, 3, 3, pure=False).result(timeout=30) == 27
            died = [e for _, _, e in client.get_events("workers") if e["action"] == "worker-lost"]
            assert len(died) == 2 and all("SIGKILL" in e["text"] for e in died)
            # The nanny killed outright: its waiting standby and its worker go too.
            children = parent.children()
            os.kill(nanny.pid, signal.SIGKILL)
            nanny.wait(timeout=30)
            _, alive = psutil.wait_procs(children, timeout=30)
            assert alive == []
    finally:
        stop([p for p in (nanny, scheduler) if p is not None])
