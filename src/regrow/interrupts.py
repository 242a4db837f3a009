"""A Ctrl-C that lands in a finalizer is passed on, not lost.

Python runs a signal's handler in the main thread at whatever step it has reached,
also inside ``__del__``, where an exception is only printed ("Exception ignored in")
and dropped. A Future collected while the user pressed Ctrl-C therefore swallowed the
KeyboardInterrupt: the program went on as if nothing had been pressed (1 time in ~50
in a loop of ``submit(...).result()`` interrupted at random). regrow's finalizers catch
it and call ``pass_on``.
"""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Callable


def quietly(step: Callable[[], object]) -> None:
    """Run ``step`` in a finalizer: an error is dropped (there is nobody to tell; at
    interpreter shutdown there may be nothing left to do it with), a Ctrl-C passed on."""
    try:
        step()
    except KeyboardInterrupt:  # the user's, not ours to drop
        pass_on()
    except Exception:
        pass


def pass_on() -> None:
    """Send SIGINT to the main thread again, once the finalizer has returned.

    Not from here: raised now, it would land in the finalizer again (a C call's return
    is a point where Python runs handlers). A thread of its own sends it when it gets
    the interpreter: at the main thread's next switch or wait, after the finalizer has
    returned. (Started with ``_thread``: ``Thread.start`` waits for the thread, and the
    signal would come back during that wait.) A real signal, so that it also wakes a
    main thread blocked in a wait, and meets whatever handler the program set. Should
    it land in a finalizer again, that one passes it on in turn."""
    _thread.start_new_thread(_resend, ())


def _resend() -> None:
    main = threading.main_thread().ident
    kill = getattr(signal, "pthread_kill", None)
    if kill is None or main is None:  # not POSIX
        _thread.interrupt_main(signal.SIGINT)
        return
    kill(main, signal.SIGINT)
