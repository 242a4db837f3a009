"""Large frames sent and received on threads of their own, not on the event loop.

A process's event loop is one thread. Every frame of a connection goes through it: the
kernel's copy of each byte into or out of the socket, and over a veth pair or a real
network the TCP stack's work that goes with it, all on that one core. A worker fetching a
value striped over 4 connections (protocol.stripe) therefore moved ~2,400 MB/s across a
veth pair where 4 raw socket pairs, a thread each, moved ~4,400.

So a frame of at least ``THREAD_FROM`` bytes on a plain TCP connection is moved by a
thread started for it (``Bulk``), on a duplicate of the connection's socket:

- receiving: the connection stops reading (``pause_reading``) once its decoder knows the
  frame's size and place, the thread fills that place, and the loop reads on;
- sending: the connection's queue waits while the thread sends the frame.

Each thread holds no lock while it moves bytes (``recv_into`` and ``send`` release the
GIL) and touches nothing but its socket and its buffer; it reports to the loop with
``call_soon_threadsafe``. Closing the connection cancels it (``Bulk.cancel`` shuts the
socket down, which wakes the thread). A thread per frame, not a pool: a pool's threads
could all wait on peers that wait on us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Protocol

# Below this a frame is moved by the loop, as any other: a thread's start and hand-back
# (~0.1 ms) is worth it only for frames that take milliseconds.
THREAD_FROM = 8 << 20
# How often a waiting thread looks whether it was cancelled (cancel also wakes it).
_POLL_MS = 1000

Done = Callable[[int, "BaseException | None"], None]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class Bulk:
    """One frame (``view``) moving through ``sock`` on a thread: received into ``view``
    (``receive``) or sent from it. ``done(nbytes, error)`` is called on ``loop`` when
    it ends: all of ``view`` moved and error None, or the error that stopped it."""

    def __init__(
        self,
        sock: _HasFileno,
        view: memoryview,
        *,
        receive: bool,
        loop: asyncio.AbstractEventLoop,
        done: Done,
    ) -> None:
        # A duplicate of our own: the connection may close its socket object meanwhile,
        # and the thread must never act on a descriptor number reused since.
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self._receive = receive
        self._loop = loop
        self._done = done
        self._lock = threading.Lock()
        self._cancelled = False
        self._finished = False
        # Bytes moved so far (written by the thread only; read by the loop).
        self.moved = 0
        self.thread = threading.Thread(
            target=self._run, name="regrow-bulk-" + ("recv" if receive else "send"), daemon=True
        )
        self.thread.start()

    def cancel(self) -> None:
        """Stop it (its connection is closing); ``done`` is still called, with an error."""
        with self._lock:
            self._cancelled = True
            if not self._finished:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        moved = 0
        error: BaseException | None = None
        try:
            moved = self._recv() if self._receive else self._send()
        except OSError as exc:  # ConnectionError among them
            error = exc
        finally:
            with self._lock:
                self._finished = True
                self._sock.close()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._done, moved, error)

    def _check(self) -> None:
        if self._cancelled:
            raise ConnectionAbortedError("the connection was closed")

    def _wait(self, poller: select.poll) -> None:
        while not poller.poll(_POLL_MS) and not self._cancelled:
            pass
        self._check()

    def _recv(self) -> int:
        view, sock = self._view, self._sock
        n = view.nbytes
        got = 0
        # A connection raises it while a large frame comes (fewer wake-ups); never above
        # what is still to come, or the socket would not turn readable for the last bytes.
        lowat = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while got < n:
            self._check()
            try:
                k = sock.recv_into(view[got:])
            except (BlockingIOError, InterruptedError):
                if lowat > n - got:
                    lowat = n - got
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self._wait(poller)
                continue
            if k == 0:
                self._check()
                raise ConnectionResetError(
                    "the peer closed the connection in the middle of a frame"
                )
            got += k
            self.moved = got
        if lowat != 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return got

    def _send(self) -> int:
        view, sock = self._view, self._sock
        n = view.nbytes
        sent = 0
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        while sent < n:
            self._check()
            try:
                sent += sock.send(view[sent:])
                self.moved = sent
            except (BlockingIOError, InterruptedError):
                self._wait(poller)
        return sent
