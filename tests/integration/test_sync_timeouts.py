"""A synchronous client's call that raises TimeoutError itself (its own deadline, with
its own message) raises that, not a timeout of the wait for it that never was."""

from __future__ import annotations

import pytest

from regrow import Client


def test_a_timeout_the_call_raises_keeps_its_message(client: Client) -> None:
    with pytest.raises(TimeoutError, match=r"fewer than 5 workers after 0\.2 s"):
        client.wait_for_workers(5, timeout=0.2)
    assert client.submit(len, "abc").result(timeout=30) == 3
