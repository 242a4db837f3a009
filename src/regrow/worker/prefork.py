"""A nanny's first worker process, forked from the nanny before it starts anything.

Each worker process used to be a fresh interpreter importing regrow (~0.13 CPU-s), and
a nanny starts two at once (the worker and its standby): with the nanny itself, three
interpreters per worker, which made 64 workers on 2 cores take 25 s to be ready. The
nanny has imported what a worker needs by the time it parses its command line; so,
right then (one thread, no event loop, no connection yet), ``fork`` makes a copy of it
that waits on a pipe. When the nanny starts its worker, it sends the copy the worker's
command line and environment (``go``), and the copy runs it (``cli.main``) as the
interpreter the nanny would have started would have: same arguments, same environment,
the nanny's child. Later workers (after a death) are the standby interpreters, as
before.

Nothing of the nanny is used by the copy but imported modules: it inherited no thread,
no loop and no socket (none existed). If the nanny dies first, the copy reads the end
of the pipe and exits.

``Forked`` is the nanny's handle on the copy, with what the nanny uses of
``asyncio.subprocess.Process``: ``pid``, ``returncode``, ``wait()``, ``kill()``,
``terminate()``. Its exit is reaped by a thread of its own (``waitpid`` on its pid: the
asyncio child watcher of Python 3.11 waits on each of its own children by pid too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class Forked:
    """The nanny's handle on its forked, waiting copy."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid = pid
        self._pipe = pipe
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = []
        self._watched = False

    def watch(self) -> None:
        """Start reaping it (a thread: so only once every copy is forked)."""
        if not self._watched:
            self._watched = True
            threading.Thread(target=self._reap, name="regrow-prefork-reap", daemon=True).start()

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 255  # reaped elsewhere: nothing can say how it ended
        with self._lock:
            self.returncode = code
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, code)

    async def wait(self) -> int:
        self.watch()
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            loop = asyncio.get_running_loop()
            future: asyncio.Future[int] = loop.create_future()
            self._waiters.append((loop, future))
        return await future

    def go(self, argv: list[str], env: dict[str, str]) -> bool:
        """Have the copy run ``regrow`` with ``argv`` in ``env``; False if it is gone
        (or was told already). Its pipe is closed either way."""
        if self._pipe < 0:
            return False
        line = b"go " + json.dumps({"argv": argv, "env": env}).encode() + b"\n"
        pipe, self._pipe = self._pipe, -1
        _PIPES.discard(pipe)
        try:
            with open(pipe, "wb", closefd=True) as out:
                out.write(line)
        except OSError:  # BrokenPipeError among them: the copy is gone
            return False
        return True

    def close(self) -> None:
        """It will not be needed: close its pipe, and the copy, reading the end, exits.
        Once only: the descriptor's number may be another file's afterwards."""
        pipe, self._pipe = self._pipe, -1
        if pipe >= 0:
            _PIPES.discard(pipe)
            with contextlib.suppress(OSError):
                os.close(pipe)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _settle(future: asyncio.Future[int], code: int) -> None:
    if not future.done():
        future.set_result(code)


# The write ends of the pipes of the copies forked here: a later copy closes them, or
# an earlier copy would not see the end of its pipe when the nanny dies.
_PIPES: set[int] = set()


def fork(run: Callable[[list[str]], int]) -> Forked | None:
    """Fork a copy of this process that waits for ``go`` and then exits with
    ``run(argv)``; None where fork is not possible. Call it with one thread running."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return None
    if pid == 0:  # the copy
        for fd in (write, *_PIPES):
            with contextlib.suppress(OSError):
                os.close(fd)
        _PIPES.clear()
        code = 1
        try:
            code = _wait_and_run(read, run)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(read)
    _PIPES.add(write)
    return Forked(pid, write)


def _wait_and_run(pipe: int, run: Callable[[list[str]], int]) -> int:
    data = b""
    with open(pipe, "rb", closefd=True) as source:
        data = source.readline()
    if not data.startswith(b"go "):
        return 0  # the nanny went away, or did not need it
    order: dict[str, Any] = json.loads(data[3:])
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in order["env"].items()})
    # The nanny's logging set-up is not the worker's: the worker makes its own.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.close()
    return run([str(a) for a in order["argv"]])
