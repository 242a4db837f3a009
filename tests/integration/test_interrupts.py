"""Ctrl-C reaches the program even when it lands in one of regrow's finalizers."""

from __future__ import annotations

import gc
import signal
import time

import pytest

from regrow import Client, LocalCluster, interrupts


def test_ctrl_c_in_a_futures_finalizer_reaches_the_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(abs, -1, pure=False)
        assert future.result(timeout=30) == 1
        release = client.release_key
        finalized: list[str] = []

        def interrupted(key: str) -> None:
            # As SIGINT's handler does when the signal arrives during the release.
            monkeypatch.setattr(client, "release_key", release)
            finalized.append(key)
            release(key)
            raise KeyboardInterrupt

        monkeypatch.setattr(client, "release_key", interrupted)
        # Python's own handler, whatever earlier code in this process set.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        # Garbage of earlier tests, collected meanwhile, could run finalizers of other
        # libraries in the main thread, where the signal might land and be dropped
        # (Python's own WeakSet callback does that): collected now, and no collection
        # while the signal is on its way.
        gc.collect()
        gc.disable()
        try:
            deadline = time.monotonic() + 10
            with pytest.raises(KeyboardInterrupt):
                del future  # collected: Future.__del__ releases its key
                if not finalized:
                    gc.collect()  # something else still held it: collected now
                while time.monotonic() < deadline:  # the main thread's next steps
                    pass
        finally:
            gc.enable()
            signal.signal(signal.SIGINT, previous)
        assert finalized, "the future was never finalized"
        assert time.monotonic() < deadline, "the interrupt was lost in the finalizer"
        # Nothing is left half done: the client goes on.
        assert client.submit(abs, -2, pure=False).result(timeout=30) == 2


def test_quietly_drops_errors_and_passes_a_ctrl_c_on() -> None:
    """What Client, LocalCluster and SLURMCluster finalizers run their close with."""

    def fails() -> None:
        raise ValueError("nobody to tell")

    def interrupted() -> None:
        raise KeyboardInterrupt

    interrupts.quietly(fails)  # dropped
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    gc.collect()
    gc.disable()
    deadline = time.monotonic() + 10
    returned = False
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.quietly(interrupted)
            returned = True  # it returns: the interrupt comes after, from the main thread
            while time.monotonic() < deadline:
                pass
    finally:
        gc.enable()
        signal.signal(signal.SIGINT, previous)
    assert returned, "quietly let the interrupt through instead of passing it on"
    assert time.monotonic() < deadline, "the interrupt was lost"
