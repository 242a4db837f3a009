"""The dashboard's web side: its pages, its assets and its live feed, on the scheduler's
``--dashboard-address`` server (``protocol.health``, aiohttp).

Owns: the routes ``/`` (the page), ``/static/...`` (its script, styles and uPlot, served
from this package: no CDN, it works offline), ``/login`` (a form taking the cluster
token), ``/api/state`` (a snapshot, JSON) and ``/api/stream`` (server-sent events: a
snapshot, then a delta every ``interval`` seconds at most, each built by
``dashboard.model``); who may see them (``HealthServer.allowed``: anyone on a loopback
address, else only with the cluster token, from ``?token=`` in the link, the login
form's cookie, or ``Authorization: Bearer``); and telling the scheduler when someone
starts or stops watching (``watching``), so that nobody watching costs nothing.
Everything here is read-only: no route changes the cluster.

Must not: read or change the core's state except through ``dashboard.model``, or
serve a file that is not one of its own assets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from regrow.dashboard.model import Cursor, Recorder, message

if TYPE_CHECKING:
    from aiohttp import web

    from regrow.core.scheduler_state import SchedulerState
    from regrow.protocol.health import HealthServer

logger = logging.getLogger("regrow.dashboard")

# Live feeds served at once, at most (each costs a message per interval).
MAX_VIEWERS = 64
# Pages get no script or style from anywhere but here.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    """The dashboard of one scheduler: ``install`` adds its routes to an aiohttp app."""

    def __init__(
        self,
        state: SchedulerState,
        recorder: Recorder,
        scheduler: Callable[[], dict[str, Any]],
        watching: Callable[[bool], None],
        interval: float = 0.5,
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.scheduler = scheduler
        self.watching = watching
        self.interval = interval
        self.viewers = 0
        self.closing = asyncio.Event()
        self._encoder = msgspec.json.Encoder()
        self._server: HealthServer | None = None

    # ------------------------------------------------------------ routes
    def install(self, app: web.Application, server: HealthServer) -> None:
        self._server = server
        static = resources.files("regrow.dashboard") / "static"
        app.router.add_get("/", self._index)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_static("/static", str(static), follow_symlinks=False)
        app.on_shutdown.append(self._on_shutdown)
        app.on_response_prepare.append(_secure)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.closing.set()

    def _allowed(self, request: web.Request) -> bool:
        assert self._server is not None
        return self._server.allowed_request(request)

    # ------------------------------------------------------------- pages
    async def _index(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        assert self._server is not None
        token = request.query.get("token")
        if token is not None:
            # A link with the token (Client.dashboard_link): remember it in a cookie and
            # take it out of the address bar and history.
            if not self._server.token_ok(token):
                raise web.HTTPFound("login?error=1")
            response = web.HTTPFound(request.path)
            self._server.set_cookie(response)
            raise response
        if not self._allowed(request):
            raise web.HTTPFound("login?next=" + quote(request.path_qs, safe=""))
        return self._file("index.html")

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        return self._file("login.html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        assert self._server is not None
        form = await request.post()
        token = form.get("token")
        target = _local_path(str(form.get("next") or "/"))
        if not isinstance(token, str) or not self._server.token_ok(token):
            raise web.HTTPFound("login?error=1&next=" + quote(target, safe=""))
        response = web.HTTPFound(target)
        self._server.set_cookie(response)
        raise response

    def _file(self, name: str) -> web.Response:
        from aiohttp import web

        body = (resources.files("regrow.dashboard") / "static" / name).read_bytes()
        return web.Response(body=body, content_type="text/html", headers=_HEADERS)

    # --------------------------------------------------------------- data
    def _message(self, cursor: Cursor, first: bool) -> bytes:
        wall = time.time()
        body = message(
            self.state,
            self.recorder,
            cursor,
            self.scheduler(),
            now=wall,
            offset=wall - time.monotonic(),
            first=first,
        )
        return self._encoder.encode(body)

    def _refuse(self) -> web.Response:
        from aiohttp import web

        return web.Response(
            status=401,
            text="the cluster token is needed: log in at /login, or add ?token=TOKEN\n",
            headers={"WWW-Authenticate": 'Bearer realm="regrow"', **_HEADERS},
        )

    async def _state(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if not self._allowed(request):
            return self._refuse()
        # A one-off look counts the tasks by group once, unless a feed already does
        # (nothing here awaits: no feed can open meanwhile).
        attached = not self.recorder.active
        if attached:
            self.recorder.attach(self.state)
        try:
            body = self._message(Cursor(), first=True)
        finally:
            if attached:
                self.recorder.detach()
        return web.Response(body=body, content_type="application/json", headers=_HEADERS)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if not self._allowed(request):
            return self._refuse()
        if self.viewers >= MAX_VIEWERS:
            return web.Response(status=503, text="too many dashboard viewers\n")
        response = web.StreamResponse(
            headers={
                **_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self.viewers += 1
        if self.viewers == 1:
            self.watching(True)
        try:
            cursor = Cursor()
            first = True
            while not self.closing.is_set():
                kind = b"snapshot" if first else b"delta"
                await response.write(b"event: " + kind + b"\ndata: " + self._message(cursor, first))
                await response.write(b"\n\n")
                first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), self.interval)
        except (ConnectionError, RuntimeError):
            pass  # the page went away
        finally:
            self.viewers -= 1
            if self.viewers == 0:
                self.watching(False)
        return response


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, assets included: no framing, no sniffing, no outside script."""
    for name, value in _HEADERS.items():
        if name != "Cache-Control" or request.path.startswith("/api/"):
            response.headers.setdefault(name, value)


def _local_path(target: str) -> str:
    r"""``target`` if it is a path on this server, else ``/``: never an open redirect
    (browsers and URL parsers drop tabs and newlines, and read a backslash as a slash,
    so ``/\t/evil.com`` would become ``//evil.com``)."""
    from yarl import URL

    if (
        not target.startswith("/")
        or target.startswith("//")
        or any(c.isspace() or c == "\\" or ord(c) < 32 or ord(c) == 127 for c in target)
    ):
        return "/"
    try:
        url = URL(target)
    except ValueError:
        return "/"
    if url.scheme or url.host or url.raw_path.startswith("//"):
        return "/"
    return target
