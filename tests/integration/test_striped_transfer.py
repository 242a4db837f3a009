"""Large values between workers of different hosts come over several connections at
once (protocol.stripe). Workers without shared memory treat each other as being on
different hosts, so these run on one machine with ``shared_memory=False``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from regrow.testing import MakeCluster, wait_until

MB = 1 << 20
STREAMS = 3


def _arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


def _counted_arange(n: int, log: str) -> np.ndarray:
    with open(log, "a") as f:
        f.write("ran\n")
    return _arange(n)


def _pair(n: int) -> dict[str, Any]:
    return {"a": _arange(n), "b": np.arange(n // 3, dtype=np.int32)[::-1].copy(), "c": "small"}


def _digest(*values: Any) -> str:
    h = hashlib.sha256()
    for v in values:
        if isinstance(v, dict):
            h.update(_digest(*(v[k] for k in sorted(v))).encode())
        elif isinstance(v, np.ndarray):
            h.update(v.tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


def _spare_to(address: str) -> int:
    from regrow import get_worker

    return len([c for c in get_worker().peers._spare.get(address, []) if not c.closed])


def _kept() -> int:
    from regrow import get_worker

    return len(get_worker().striped)


def _keep_nothing() -> None:
    from regrow.protocol import stripe

    stripe.KEEP_SECONDS = 0.0  # what a holder keeps for its requester is gone at once


def test_large_values_from_another_host_come_in_parts(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(shared_memory=False, transfer_streams=STREAMS, stripe_bytes=2 * MB)
    a, b = sorted(client.scheduler_info()["workers"])
    expected = _digest(_arange(3_000_000), _pair(1_500_000))
    for _ in range(2):  # the second time on the connections the first one leased
        x = client.submit(_arange, 3_000_000, workers=[a], pure=False)  # 24 MB: 3 parts
        y = client.submit(_pair, 1_500_000, workers=[a], pure=False)  # 12 MB and 2 MB
        got = client.submit(_digest, x, y, workers=[b], pure=False).result(timeout=60)
        assert got == expected
        assert client.run(_spare_to, a, workers=[b]) == {b: STREAMS}
        assert sorted(client.who_has([x])[x.key]) == [a, b]
    # The holder forgets what it kept for B once B is done.
    wait_until(lambda: client.run(_kept, workers=[a]) == {a: 0}, timeout=10)


def test_one_stream_sends_values_whole(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(shared_memory=False, transfer_streams=1, stripe_bytes=2 * MB)
    a, b = sorted(client.scheduler_info()["workers"])
    x = client.submit(_arange, 3_000_000, workers=[a], pure=False)
    got = client.submit(_digest, x, workers=[b], pure=False).result(timeout=60)
    assert got == _digest(_arange(3_000_000))
    assert client.run(_spare_to, a, workers=[b]) == {b: 0}


def test_parts_that_do_not_come_are_fetched_whole(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    _, client = make_cluster(shared_memory=False, transfer_streams=STREAMS, stripe_bytes=2 * MB)
    a, b = sorted(client.scheduler_info()["workers"])
    client.run(_keep_nothing, workers=[a])
    log = tmp_path / "runs"
    x = client.submit(_counted_arange, 3_000_000, str(log), workers=[a], pure=False)
    got = client.submit(_digest, x, workers=[b], pure=False).result(timeout=60)
    assert got == _digest(_arange(3_000_000))
    # Its parts were asked for and did not come (the connections that asked for them
    # are closed, not kept): it was fetched whole from its holder, not made again.
    assert client.run(_spare_to, a, workers=[b]) == {b: 0}
    assert log.read_text() == "ran\n"
    assert sorted(client.who_has([x])[x.key]) == [a, b]
