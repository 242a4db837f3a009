"""Reaching a scheduler across hosts: in any start-up order, at an address peers can use.

Owns two things that every process talking to a scheduler needs:

- ``until_reached``: try to connect and register until it works or a deadline passes.
  Processes start in no order anyone controls (a batch system, Kubernetes, a scheduler
  restarting from its journal): a refused connection, an unreachable host, a name not
  resolvable yet or a handshake cut short is *transient* and tried again with backoff;
  a wrong token, a bad certificate or a peer that is no regrow scheduler is not, and
  fails at once. After the deadline, one ``OSError`` says where, for how long, and the
  last cause.
- ``advertised_host``: the host part of the address a worker or nanny registers, the
  one its peers will connect to: ``--contact-address``, else the address of the
  ``--interface`` it listens on, else, when it listens on every interface
  (``0.0.0.0``), the address of the interface that routes to the scheduler (never
  ``0.0.0.0``, which no other host can reach).

It also reads the scheduler file (``--scheduler-file``) a scheduler writes its address
to, waiting for it to appear.

Must not: hold connections or state; it does one attempt's bookkeeping, the caller's
coroutine does the connecting.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psutil

from regrow.config import Settings
from regrow.errors import AuthenticationError, CommClosedError, ProtocolError
from regrow.protocol.comm import (
    Connection,
    HandshakeClosedError,
    connect,
    format_address,
    parse_address,
    reconnect_delays,
    registered,
)
from regrow.protocol.messages import Message
from regrow.security import Security

T = TypeVar("T")
M = TypeVar("M", bound=Message)
logger = logging.getLogger("regrow.comm")

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EADDRNOTAVAIL,
    }
)

WILDCARDS = ("", "0.0.0.0", "::", "[::]")

# Any address off this host: routing to it names the interface that leads outwards (no
# packet is sent). Used for a scheduler listening on every interface.
OUTSIDE = "tcp://8.8.8.8:53"

# Handshakes in a row a peer may hang up on before we believe it means it.
HANDSHAKE_TRIES = 3


async def register_with(
    address: str,
    msg: Message,
    expected: type[M],
    what: str,
    *,
    token: str | None,
    settings: Settings,
    security: Security,
    timeout: float | None = None,
) -> tuple[Connection, M]:
    """Connect to the scheduler at ``address`` as a worker or nanny, send the
    registration ``msg`` and return the connection with the scheduler's ``expected``
    answer. One attempt, of at most ``timeout`` (else ``connect_timeout``) to connect;
    the connection is closed if anything fails."""
    comm = await connect(
        address,
        token=token,
        settings=settings,
        timeout=None if timeout is None else min(timeout, settings.connect_timeout),
        security=security,
        role="worker",
    )
    try:
        comm.send(msg)
        return comm, await registered(comm, expected, what)
    except BaseException:
        await comm.close()
        raise


def transient(exc: BaseException) -> bool:
    """Would trying again later help? Yes for a scheduler not up (yet, or again); no for
    one that refused us or is no regrow scheduler."""
    if isinstance(exc, AuthenticationError | ProtocolError):
        return False
    if isinstance(exc, TimeoutError | CommClosedError | ConnectionError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


async def until_reached(
    attempt: Callable[[float], Awaitable[T]],
    address: str,
    timeout: float | None,
    what: str = "the scheduler",
) -> T:
    """``await attempt(seconds_left)`` until it succeeds; transient failures are tried
    again (20 ms, growing to 250 ms apart) until ``timeout`` seconds have passed (None:
    for ever), then ``OSError`` with the last cause. Others are raised at once."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delays = reconnect_delays()
    tries = hung_up = 0
    last: BaseException | None = None
    while True:
        left = 3600.0 if deadline is None else deadline - loop.time()
        tries += 1
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                return await attempt(left)
        except Exception as exc:
            if not transient(exc):
                raise
            # A server that hangs up on every handshake is no scheduler restarting (it
            # refuses connections then): it expects TLS, or is no regrow server.
            hung_up = hung_up + 1 if isinstance(exc, HandshakeClosedError) else 0
            if hung_up >= HANDSHAKE_TRIES:
                raise
            # Our own deadline cutting the last try short says less than what came before.
            if str(exc) or last is None:
                last = exc
            if deadline is not None and loop.time() + 0.001 >= deadline:
                cause = str(last) or type(last).__name__
                raise OSError(
                    f"could not reach {what} at {address} within {timeout:g} s "
                    f"({tries} tries; last: {cause})"
                ) from None
            delay = next(delays)
            if tries == 1 or tries % 40 == 0:
                logger.info("%s at %s not reachable yet (%s); trying again", what, address, exc)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - loop.time()))
            await asyncio.sleep(delay)


async def reconnect(
    register: Callable[[], Awaitable[None]],
    address: str,
    death_timeout: float | None,
    stopped: asyncio.Event,
) -> bool:
    """Try ``register()`` on a scheduler that went away until it works (True), the
    service stops (True: nothing to do), or ``death_timeout`` passes (False: the
    caller closes, as dask's --death-timeout)."""
    delays = reconnect_delays()
    give_up = death_clock(death_timeout)
    while not stopped.is_set():
        try:
            await register()
            return True
        except (OSError, TimeoutError, CommClosedError, ProtocolError) as exc:
            delay = next(delays)
            logger.info("the scheduler at %s is still unreachable (%s)", address, exc)
        if give_up():
            logger.error(
                "no scheduler at %s for %g s (--death-timeout): closing", address, death_timeout
            )
            return False
        await asyncio.sleep(delay)
    return True


def death_clock(seconds: float | None) -> Callable[[], bool]:
    """A check that turns true ``seconds`` after it was made (never, for None): how long
    a worker or nanny that lost its scheduler keeps trying before it closes."""
    if seconds is None:
        return lambda: False
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline


def interface_address(name: str) -> str:
    """The IPv4 (else IPv6) address of network interface ``name``; ValueError naming the
    interfaces there are when it has none."""
    addrs = psutil.net_if_addrs()
    if name not in addrs:
        raise ValueError(
            f"no network interface {name!r} here (there are: {', '.join(sorted(addrs))})"
        )
    for family in (socket.AF_INET, socket.AF_INET6):
        for a in addrs[name]:
            if a.family == family:
                return a.address.split("%", 1)[0]
    raise ValueError(f"network interface {name!r} has no IP address")


def route_to(address: str) -> str:
    """The local address of the interface this host would use to reach ``address``
    (a UDP socket 'connected' there: no packet is sent)."""
    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return socket.gethostbyname(socket.gethostname())
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(sockaddr)
        except OSError:
            return socket.gethostbyname(socket.gethostname())
        local = str(s.getsockname()[0])
    return local


def outward_host() -> str:
    """This host's address on the route outwards (else the address of its name)."""
    return route_to(OUTSIDE)


def advertised_host(listen_host: str, contact_host: str, scheduler_address: str) -> str:
    """The host peers should use for a process listening on ``listen_host``."""
    if contact_host:
        return contact_host
    if listen_host in WILDCARDS:
        return route_to(scheduler_address)
    return listen_host


def split_contact(contact: str) -> tuple[str, int]:
    """'HOST', 'HOST:PORT', '[v6]:PORT' or a tcp:// address -> (host, port or 0)."""
    text = contact.strip()
    if not text:
        return "", 0
    if "://" in text or (text.count(":") == 1 and not text.startswith("[")):
        host, port = parse_address(text)
        return host, port
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
    try:
        ipaddress.ip_address(text)  # a bare IPv6 address: no port
    except ValueError:
        if ":" in text:
            raise ValueError(f"cannot read {contact!r} as HOST or HOST:PORT") from None
    return text, 0


def advertise(bound: str, listen_host: str, contact: str, scheduler_address: str) -> str:
    """The address to register for a listener bound at ``bound`` on ``listen_host``:
    ``contact`` ('HOST' or 'HOST:PORT') where given, else what ``advertised_host``
    finds, with the bound port unless ``contact`` names another."""
    scheme = bound.split("://", 1)[0] if "://" in bound else "tcp"
    _, port = parse_address(bound)
    contact_host, contact_port = split_contact(contact)
    host = advertised_host(listen_host, contact_host, scheduler_address)
    return format_address(host, contact_port or port, scheme)


def read_scheduler_file(path: str, timeout: float | None) -> str:
    """The address a scheduler wrote to ``path`` (``regrow scheduler --scheduler-file``),
    waiting up to ``timeout`` s (None: for ever) for the file to appear: the scheduler
    may start after us. OSError when it does not come, ValueError for another file."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            with open(path) as f:
                address = json.load(f)["address"]
        except FileNotFoundError:
            if deadline is not None and time.monotonic() > deadline:
                raise OSError(f"no scheduler file at {path} after {timeout:g} s") from None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            continue
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} is not a scheduler file (JSON with an 'address')") from None
        if not isinstance(address, str):
            raise ValueError(f"{path} is not a scheduler file (its 'address' is no string)")
        return address
