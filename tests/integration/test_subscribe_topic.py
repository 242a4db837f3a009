"""``Client.subscribe_topic``: a handler called with ``(time, event)`` for each event."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from regrow import Client
from regrow.testing import MakeCluster, wait_until


def test_a_handler_sees_each_event_of_its_topic_until_unsubscribed(
    make_cluster: MakeCluster,
) -> None:
    cluster, client = make_cluster(n_workers=1)
    seen: list[tuple[float, dict[str, Any]]] = []
    threads: set[str] = set()

    def handler(event: tuple[float, dict[str, Any]]) -> None:
        seen.append(event)
        threads.add(threading.current_thread().name)

    client.subscribe_topic("workers", handler)
    before = time.time()
    (new,) = cluster.scale_up(1)
    wait_until(
        lambda: any(m["action"] == "worker-added" for _, m in seen),
        timeout=10,
        what="the join event",
    )
    stamp, message = next(e for e in seen if e[1]["action"] == "worker-added")
    assert before - 0.1 <= stamp <= time.time() and f"({new.name}) joined" in message["text"]
    assert message["name"] == new.name and message["worker"].startswith("tcp://")
    assert threads == {t for t in threads if t.startswith("regrow-callback")}
    assert (stamp, "workers", message) in client.get_events("workers")
    client.unsubscribe_topic("workers")
    count = len(seen)
    cluster.scale_up(1)
    wait_until(lambda: len(client.get_events("workers")) >= 2, timeout=10)
    assert len(seen) == count
    with pytest.raises(ValueError, match="no handler"):
        client.unsubscribe_topic("workers")
    with pytest.raises(TypeError, match="callable"):
        client.subscribe_topic("workers", "print")  # type: ignore[arg-type]

    async def coroutine_handler(event: tuple[float, dict[str, Any]]) -> None:
        pass

    with pytest.raises(TypeError, match="asynchronous Client only"):
        client.subscribe_topic("workers", coroutine_handler)


def test_a_coroutine_handler_on_an_asynchronous_client(make_cluster: MakeCluster) -> None:
    cluster, _ = make_cluster(n_workers=1)

    async def main() -> list[str]:
        seen: list[str] = []

        async def handler(event: tuple[float, dict[str, Any]]) -> None:
            await asyncio.sleep(0)
            seen.append(event[1]["text"])

        async with Client(cluster, asynchronous=True, set_as_default=False) as client:
            client.subscribe_topic("workers", handler)
            await asyncio.to_thread(cluster.scale_up, 1)
            async with asyncio.timeout(10):
                while not any("joined" in m for m in seen):
                    await asyncio.sleep(0.01)
        return seen

    assert any("joined" in m for m in asyncio.run(main()))
