"""HTTP beside a scheduler or a nanny: ``GET /health`` for Kubernetes' probes, and
``GET /metrics`` for Prometheus.

Owns: one small aiohttp server on a port of its own (``--dashboard-address``), serving
``GET /health`` (and ``HEAD``): 200 and ``ok`` while its owner's check passes, 503 and
the check's reason, one line, while it does not; ``GET /metrics`` where its owner gives
the text (the scheduler); who may read ``/metrics``: anyone on a loopback address, else
only a request that shows the cluster token (``Authorization: Bearer TOKEN``, as
Prometheus' ``authorization`` setting sends it), since metrics name task groups and
workers; and reading the ``--dashboard-address`` value (``HOST:PORT``, or ``:PORT``
for every interface, as dask's).
Must not: decide what healthy means (its owner's ``check`` does) or what the metrics
are, put anything secret in a reason (``/health`` answers anyone: a probe has no
token), or import aiohttp before ``start`` (a process that serves no HTTP must not pay
for its import).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from regrow.errors import explain

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger("regrow.health")

# None when healthy, else why not (one line).
Check = Callable[[], "str | None"]
# Adds routes to the app (the dashboard's), given the server for its login checks.
Routes = Callable[["web.Application", "HealthServer"], None]
# The dashboard's login cookie.
COOKIE = "regrow-dashboard"

# How long close() lets a request in flight finish.
_SHUTDOWN_TIMEOUT = 1.0


def parse_http_address(value: str) -> tuple[str, int]:
    """``'HOST:PORT'``, ``'[IPV6]:PORT'`` or ``':PORT'`` -> ``(host, port)``; the host is
    ``''`` for ``':PORT'`` (every interface, IPv4 and IPv6). Port 0 picks a free one."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"dashboard address {value!r} is not HOST:PORT or :PORT (e.g. 0.0.0.0:8787, :8787)"
        )
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"dashboard address {value!r}: write an IPv6 host in brackets, [::1]:8787")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def dashboard_link(url: str, token: str | None) -> str:
    """The link to a dashboard at ``url`` (``http://host:port``): off loopback, with the
    token in it (``?token=``, as Jupyter's links), which logs the browser in."""
    if not url:
        return ""
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if token and not _loopback(host):
        return f"{url}/?token={token}"
    return f"{url}/"


def http_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class HealthServer:
    """``GET /health`` on ``host:port`` once started: ``check()`` says whether all is well.
    ``url`` is where it serves (``http://host:port``, the port a port 0 got)."""

    def __init__(
        self,
        check: Check,
        metrics: Callable[[], bytes] | None = None,
        token: str | None = None,
        routes: Routes | None = None,
    ) -> None:
        self.check = check
        self.metrics = metrics
        self.token = token
        # More routes on the same server (the scheduler's dashboard).
        self.routes = routes
        self.url = ""
        self._open = True  # serving on loopback only: /metrics needs no token
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, tries: int = 1) -> str:
        """Listen (``host`` ``''``: every interface); return the URL it serves at. With
        ``tries`` > 1, a port in use means the next one, that many in all, then any free
        port (as dask's dashboard moves off a taken 8787)."""
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/health", self._health)
        if self.metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        if self.routes is not None:
            self.routes(app, self)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runner = runner
        ports = [port + i for i in range(tries) if port + i <= 65535] if port else [0]
        if tries > 1:
            ports.append(0)
        for i, candidate in enumerate(ports):
            # '' is every interface, both families; with port 0 each family would get a
            # port of its own, so that one means IPv4's.
            site = web.TCPSite(runner, host or (None if candidate else "0.0.0.0"), candidate)
            try:
                await site.start()
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and i + 1 < len(ports):
                    continue
                await self.close()
                # The errno's words; a name that does not resolve has a negative one.
                code = exc.errno or 0
                why = os.strerror(code) if code > 0 else exc.strerror or str(exc)
                where = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
                raise OSError(f"cannot serve HTTP at {where}: {why}") from None
        bound_host, bound_port = runner.addresses[0][:2]
        self.url = http_url(str(bound_host), int(bound_port))
        self._open = all(_loopback(str(a[0])) for a in runner.addresses)
        return self.url

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def status(self) -> tuple[int, str]:
        """What ``GET /health`` answers now: (200, 'ok') or (503, the reason)."""
        try:
            reason = self.check()
        except Exception as exc:  # a broken check is a failed one, not a 500 page
            logger.exception("health check failed")
            reason = f"health check failed: {explain(exc)}"
        if reason is None:
            return 200, "ok"
        return 503, " ".join(reason.split()) or "unhealthy"

    def allowed(self, authorization: str, cookie: str = "") -> bool:
        """May a request with this ``Authorization`` header (or this dashboard cookie)
        read what names tasks and workers (``/metrics``, the dashboard)?"""
        if self._open or self.token is None:
            return True
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(given.strip()):
            return True
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._cookie().encode())

    def allowed_request(self, request: web.Request) -> bool:
        return self.allowed(
            request.headers.get("Authorization", ""), request.cookies.get(COOKIE, "")
        )

    def token_ok(self, given: str) -> bool:
        """Is ``given`` the cluster token (compared in constant time)?"""
        if self.token is None:
            return True
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _cookie(self) -> str:
        """What the login cookie holds: a MAC of the token, not the token itself."""
        key = (self.token or "").encode()
        return hmac.new(key, b"regrow dashboard login", hashlib.sha256).hexdigest()

    def set_cookie(self, response: web.StreamResponse) -> None:
        """Log the browser in: an HTTP-only, same-site cookie, for this session."""
        response.set_cookie(COOKIE, self._cookie(), httponly=True, samesite="Strict", path="/")

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if not self.allowed_request(request):
            return web.Response(
                status=401,
                text="the cluster token is needed: Authorization: Bearer TOKEN\n",
                headers={"WWW-Authenticate": 'Bearer realm="regrow"'},
            )
        assert self.metrics is not None
        body = self.metrics()
        return web.Response(
            body=body,
            headers={
                "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
                "Cache-Control": "no-store",
            },
        )

    async def _health(self, request: web.Request) -> web.Response:
        from aiohttp import web

        code, text = self.status()
        return web.Response(status=code, text=text + "\n", headers={"Cache-Control": "no-store"})
