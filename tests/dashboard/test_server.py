"""The dashboard's web side on real schedulers (in-process ``LocalCluster``s on loopback,
and ``regrow scheduler`` processes): its pages and assets, ``/api/state`` and the live
feed ``/api/stream``, who may see them, and where it serves (``dashboard_address``, port
fallback, ``Client.dashboard_link``)."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import itertools
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.tasks import Gate, fail, gated, inc
from integration.test_health import Processes
from regrow import Client, LocalCluster
from regrow.config import Settings
from regrow.protocol.health import COOKIE, HealthServer, dashboard_link
from regrow.scheduler.shell import Scheduler
from regrow.testing import MakeCluster, regrow_cli, stop, wait_ready, wait_until

STATES = ("waiting", "queued", "processing", "memory", "erred", "released")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# ------------------------------------------------------------------- helpers
class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.cookies = [v for k, v in headers if k.lower() == "set-cookie"]
        self.body = body

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    base: str,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> Reply:
    """One request, redirects not followed; ``path`` is sent exactly as given."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


class Feed:
    """An open ``/api/stream``: its server-sent events, one at a time."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        url = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
        self.conn.request("GET", "/api/stream", headers=headers or {})
        self.response = self.conn.getresponse()

    def next(self) -> tuple[str, dict[str, Any]]:
        kind = ""
        data: dict[str, Any] = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the feed ended")
            line = line.rstrip(b"\r\n")
            if line.startswith(b"event: "):
                kind = line[len(b"event: ") :].decode()
            elif line.startswith(b"data: "):
                data = json.loads(line[len(b"data: ") :])
            elif not line and kind:
                return kind, data

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def local(url: str) -> str:
    """``url`` (a dashboard bound off loopback) reached over loopback, as a request from
    this host: the server must still ask for the token (it listens beyond loopback)."""
    port = urllib.parse.urlsplit(url).port
    return f"http://127.0.0.1:{port}"


def scheduler_of(cluster: LocalCluster) -> Scheduler:
    scheduler = cluster._inproc_scheduler
    assert scheduler is not None
    return scheduler


def dashboard(
    make_cluster: MakeCluster, address: str = "127.0.0.1:0", **kwargs: Any
) -> tuple[LocalCluster, Client, Scheduler, str]:
    """An in-process cluster whose scheduler serves its dashboard at ``address``:
    (cluster, client, scheduler, base URL)."""
    kwargs.setdefault("n_workers", 2)
    cluster, client = make_cluster(processes=False, dashboard_address=address, **kwargs)
    scheduler = scheduler_of(cluster)
    assert scheduler.http_address
    return cluster, client, scheduler, scheduler.http_address


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[list[Gate]]:
    """Gates for tasks to wait on; all opened when the test ends, so that no worker
    thread stays blocked while its cluster closes."""
    made = [Gate(tmp_path, i) for i in range(4)]
    yield made
    for gate in made:
        gate.open()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    stop(list(reversed(started.procs)))


# -------------------------------------------------------- pages and assets


def test_the_page_and_its_assets(make_cluster: MakeCluster) -> None:
    _, _, _, base = dashboard(make_cluster)
    page = call(base, "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"<title>regrow dashboard</title>" in page.body
    # No script or style from anywhere else; never cached, never framed.
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    for asset, kind in (
        ("uPlot.min.css", "text/css"),
        ("uPlot.iife.min.js", "javascript"),
        ("index.html", "text/html"),
    ):
        reply = call(base, f"/static/{asset}")
        assert reply.status == 200 and reply.body, asset
        assert kind in reply.headers["content-type"], (asset, reply.headers)
    assert call(base, "/static/no-such-file.js").status == 404
    login = call(base, "/login")
    assert login.status == 200 and b"<form" in login.body


# Ways to ask for a file outside the static folder: none may be served.
ESCAPES = (
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/%2E%2E/server.py",
    "/static/..%2fserver.py",
    "/static/..%2Fserver.py",
    "/static/%2e%2e%2fserver.py",
    "/static/..%5cserver.py",
    "/static/..\\server.py",
    "/static/%2F..%2Fserver.py",
    "/static/....//server.py",
    "/static/./../model.py",
    "/static/../../regrow/config.py",
    "/static/%2e%2e/%2e%2e/scheduler/shell.py",
    "/static/%252e%252e/server.py",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/static/",
)


def test_static_files_stay_in_their_folder(make_cluster: MakeCluster) -> None:
    _, _, _, base = dashboard(make_cluster, n_workers=1)
    served = {}
    for path in ESCAPES:
        reply = call(base, path)
        if reply.status not in (403, 404) or b"import" in reply.body or b"root:" in reply.body:
            served[path] = (reply.status, reply.body[:100])
    assert not served


# --------------------------------------------------------------- the data


def test_api_state_matches_scheduler_info_while_tasks_run(
    make_cluster: MakeCluster, gates: list[Gate]
) -> None:
    _, client, scheduler, base = dashboard(make_cluster)
    done = client.map(inc, range(10))
    client.gather(done)
    broken = client.submit(fail, "boom")
    wait_until(broken.done, timeout=10, what="the failing task")
    running = [client.submit(gated, i, *gate.args, pure=False) for i, gate in enumerate(gates)]
    for gate in gates[:2]:
        gate.wait_started()
    info = client.scheduler_info()
    state = call(base, "/api/state")
    assert state.status == 200 and state.headers["content-type"].startswith("application/json")
    body = state.json()
    # Between the two, nothing moved (every running task waits for its gate).
    assert client.scheduler_info()["tasks"] == info["tasks"]
    assert body["version"] == 1
    assert body["scheduler"]["address"] == info["address"] == scheduler.address
    assert body["scheduler"]["clients"] == info["clients"]
    assert body["scheduler"]["recovering"] is False and body["scheduler"]["journal"] is False
    assert {
        w["address"]: (w["name"], w["nthreads"], w["processing"], w["nkeys"], w["memory"])
        for w in body["workers"]
    } == {
        a: (w["name"], w["nthreads"], w["processing"], w["nkeys"], w["memory"])
        for a, w in info["workers"].items()
    }
    assert body["tasks"] == {s: info["tasks"].get(s, 0) for s in STATES}
    assert body["tasks"]["memory"] == 10 and body["tasks"]["erred"] == 1
    assert body["counts"] == info["counts"]
    rows = {r["name"]: r for r in body["groups"]}
    assert (rows["inc"]["memory"], rows["inc"]["total"]) == (10, 10)
    assert rows["fail"]["erred"] == 1
    assert rows["gated"]["processing"] + rows["gated"]["queued"] == rows["gated"]["total"] == 4
    assert [e["action"] for e in body["events"]] == ["worker-added", "worker-added"]
    assert all(abs(e["time"] - time.time()) < 60 for e in body["events"])  # wall clock
    # A one-off look leaves nothing followed.
    assert not scheduler.recorder.active and scheduler.state.on_transition is None
    for gate in gates:
        gate.open()
    assert client.gather(running, timeout=10) == [0, 1, 2, 3]


def test_the_feed_is_a_snapshot_then_deltas_at_a_bounded_rate(
    make_cluster: MakeCluster, gates: list[Gate]
) -> None:
    _, client, _, base = dashboard(make_cluster)
    feed = Feed(base)
    try:
        assert feed.response.status == 200
        assert feed.response.getheader("Content-Type") == "text/event-stream"
        assert feed.response.getheader("Cache-Control") == "no-store"
        kind, snapshot = feed.next()
        assert kind == "snapshot" and len(snapshot["workers"]) == 2
        assert [e["action"] for e in snapshot["events"]] == ["worker-added", "worker-added"]
        # Runs become stream items in the next deltas, once each.
        futures = client.map(inc, range(20))
        assert client.gather(futures) == list(range(1, 21))
        items: list[dict[str, Any]] = []
        stamps = [snapshot["now"]]
        started = time.monotonic()
        while len(items) < 20:
            assert time.monotonic() < started + 20, items
            kind, delta = feed.next()
            assert kind == "delta" and not delta["events"] and delta["stream_dropped"] == 0
            items += delta["stream"]
            stamps.append(delta["now"])
        assert sorted(i["key"] for i in items) == sorted(f.key for f in futures)
        assert {i["group"] for i in items} == {"inc"} and all(i["ok"] for i in items)
        assert {i["worker"] for i in items} <= {w["address"] for w in snapshot["workers"]}
        assert all(i["start"] <= i["stop"] <= time.time() + 1 for i in items)
        # New events arrive in a delta too.
        client.log_event("notes", {"text": "hello"})
        while True:
            assert time.monotonic() < started + 30, "no delta with the event"
            kind, delta = feed.next()
            stamps.append(delta["now"])
            if delta["events"]:
                break
        assert [e["text"] for e in delta["events"]] == ["hello"]
        # Rate: over a window, about one message per 0.5 s at most.
        while time.monotonic() - started < 2.0:
            stamps.append(feed.next()[1]["now"])
        window = stamps[-1] - stamps[0]
        assert len(stamps) - 1 <= window / 0.5 + 1, (len(stamps), window)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert min(gaps) > 0.4, gaps
    finally:
        feed.close()


def test_viewers_attach_and_detach_the_recorder(make_cluster: MakeCluster) -> None:
    _, client, scheduler, base = dashboard(make_cluster, n_workers=1)
    assert not scheduler.recorder.active and scheduler.state.on_transition is None
    before = client.map(inc, range(5))
    client.gather(before)
    first = Feed(base)
    second: Feed | None = None
    try:
        first.next()
        # It reads the core's transition log after each batch: no per-move hook.
        assert scheduler.recorder.active and scheduler.state.on_transition is None
        # It counted what was there before anyone looked...
        assert scheduler.recorder.groups["inc"].states.get("memory") == 5
        # ... and follows what happens next.
        after = client.map(inc, range(100, 105))
        client.gather(after)
        wait_until(
            lambda: scheduler.recorder.groups["inc"].states.get("memory") == 10,
            timeout=10,
            what="the recorder follows the tasks",
        )
        second = Feed(base)
        second.next()
        first.close()
        # One viewer left: still followed (on the next write the server sees the first gone).
        wait_until(lambda: _viewers(scheduler) == 1, timeout=10, what="one viewer left")
        assert scheduler.recorder.active
        second.close()
        second = None
        wait_until(lambda: not scheduler.recorder.active, timeout=10, what="nobody watches")
        assert scheduler.recorder.groups == {} and not scheduler.recorder.stream
        assert scheduler.state.on_transition is None
        # Watching again counts from scratch.
        third = Feed(base)
        try:
            _, snapshot = third.next()
            rows = {r["name"]: r for r in snapshot["groups"]}
            assert rows["inc"]["memory"] == 10
        finally:
            third.close()
        wait_until(lambda: not scheduler.recorder.active, timeout=10, what="nobody watches")
    finally:
        first.close()
        if second is not None:
            second.close()


def _viewers(scheduler: Scheduler) -> int:
    """How many feeds the scheduler's dashboard serves now."""
    assert scheduler.health is not None and scheduler.health._runner is not None
    for resource in scheduler.health._runner.app.router.resources():
        for route in resource:
            handler = getattr(route.handler, "__self__", None)
            if handler is not None and hasattr(handler, "viewers"):
                return int(handler.viewers)
    raise AssertionError("no dashboard routes")


# ----------------------------------------------------------------- security


def test_off_loopback_the_dashboard_needs_the_token(make_cluster: MakeCluster) -> None:
    cluster, client, scheduler, url = dashboard(make_cluster, "0.0.0.0:0", n_workers=1)
    base = local(url)
    token = cluster.token
    # Not logged in: no data, and the page sends the browser to the login form.
    for path in ("/api/state", "/api/stream"):
        refused = call(base, path)
        assert refused.status == 401, path
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert b"token" in refused.body and token.encode() not in refused.body
    page = call(base, "/")
    assert page.status == 302 and page.location.startswith("login?next=")
    assert urllib.parse.parse_qs(page.location.split("?", 1)[1])["next"] == ["/"]
    assert b"regrow dashboard" not in page.body
    assert call(base, "/api/state", headers={"Authorization": "Bearer nope"}).status == 401
    assert call(base, "/api/state", headers={"Cookie": f"{COOKIE}=forged"}).status == 401
    assert call(base, "/api/state", headers={"Cookie": f"{COOKIE}={token}"}).status == 401
    assert not scheduler.recorder.active
    # The link's ?token= logs the browser in (a cookie), then leaves the address bar.
    wrong = call(base, "/?token=nope")
    assert wrong.status == 302 and wrong.location.startswith("login?error=1")
    assert not wrong.cookies
    link = call(base, f"/?token={token}")
    assert link.status == 302 and link.location == "/"
    (cookie,) = link.cookies
    parts = [p.strip() for p in cookie.split(";")]
    name, _, value = parts[0].partition("=")
    assert name == COOKIE and value and token not in value
    attributes = {p.lower() for p in parts[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    logged_in = {"Cookie": f"{COOKIE}={value}"}
    page = call(base, "/", headers=logged_in)
    assert page.status == 200 and b"<title>regrow dashboard</title>" in page.body
    state = call(base, "/api/state", headers=logged_in)
    assert state.status == 200 and len(state.json()["workers"]) == 1
    bearer = call(base, "/api/state", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status == 200
    feed = Feed(base, headers=logged_in)
    try:
        assert feed.next()[0] == "snapshot"
    finally:
        feed.close()
    # The metrics take the same cookie; /health asks for nothing.
    assert call(base, "/metrics", headers=logged_in).status == 200
    assert call(base, "/metrics").status == 401
    assert call(base, "/health").status == 200
    # The client's link is the server's, with the token when its host is off loopback.
    assert client.dashboard_link == dashboard_link(url, token)


def login(base: str, token: str, next_: str | None) -> Reply:
    form = {"token": token} if next_ is None else {"token": token, "next": next_}
    return call(base, "/login", "POST", FORM, urllib.parse.urlencode(form))


def test_login_form(make_cluster: MakeCluster) -> None:
    cluster, _, _, url = dashboard(make_cluster, "0.0.0.0:0", n_workers=1)
    base = local(url)
    token = cluster.token
    bad = login(base, "not-the-token", "/api/state")
    assert bad.status == 302 and not bad.cookies
    query = urllib.parse.parse_qs(bad.location.split("?", 1)[1])
    assert bad.location.startswith("login?") and query == {"error": ["1"], "next": ["/api/state"]}
    assert login(base, "", None).status == 302 and not login(base, "", None).cookies
    ok = login(base, token, "/api/state")
    assert ok.status == 302 and ok.location == "/api/state" and ok.cookies
    value = ok.cookies[0].split(";")[0].split("=", 1)[1]
    assert call(base, "/api/state", headers={"Cookie": f"{COOKIE}={value}"}).status == 200
    assert login(base, token, None).location == "/"


# Where a login form's "next" may try to send the browser: never off this server.
OFF_SITE = (
    "//evil.com",
    "///evil.com",
    "http://evil.com",
    "https://evil.com/",
    "javascript:alert(1)",
    "/\\evil.com",
    "\\\\evil.com",
    "/\t/evil.com",
    "/\n/evil.com",
    "/\r/evil.com",
    " //evil.com",
    "evil.com",
)


def test_login_never_redirects_off_site(make_cluster: MakeCluster) -> None:
    cluster, _, _, url = dashboard(make_cluster, "0.0.0.0:0", n_workers=1)
    base = local(url)
    here = urllib.parse.urlsplit(base).netloc
    off_site = []
    for target in OFF_SITE:
        for token in (cluster.token, "wrong"):
            reply = login(base, token, target)
            assert reply.status == 302
            # Where a browser goes: resolved against the form's page, tabs and newlines
            # dropped first (as WHATWG URL parsing does).
            location = reply.location
            cleaned = location.replace("\t", "").replace("\n", "").replace("\r", "")
            landed = urllib.parse.urlsplit(urllib.parse.urljoin(f"{base}/login", cleaned))
            if (landed.scheme, landed.netloc) != ("http", here):
                off_site.append((target, token == cluster.token, location))
    assert not off_site


def test_on_loopback_no_token_is_needed(make_cluster: MakeCluster) -> None:
    cluster, client, _, base = dashboard(make_cluster, n_workers=1)
    assert call(base, "/").status == 200
    assert call(base, "/api/state").status == 200
    feed = Feed(base)
    try:
        assert feed.next()[0] == "snapshot"
    finally:
        feed.close()
    link = client.dashboard_link
    assert link == base + "/" and "token" not in link
    assert cluster.dashboard_link == link


# ------------------------------------------------------- where it serves


def test_dashboard_link(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(processes=False, n_workers=1)  # no dashboard (conftest)
    assert client.dashboard_link is None and cluster.dashboard_link is None
    assert client.scheduler_info()["dashboard"] == ""
    assert "dashboard: none" in client._repr_html_() and "dashboard=" not in repr(client)
    cluster, client, scheduler, _ = dashboard(make_cluster, n_workers=1)
    link = client.dashboard_link
    assert link == f"{scheduler.http_address}/" and link.startswith("http://127.0.0.1:")
    assert client.scheduler_info()["dashboard"] == scheduler.http_address
    assert f'href="{link}"' in client._repr_html_() and f"dashboard={link}" in repr(client)
    assert cluster.dashboard_link == link


def test_dashboard_link_off_loopback(make_cluster: MakeCluster) -> None:
    cluster, client, _, url = dashboard(make_cluster, "0.0.0.0:0", n_workers=1)
    host = urllib.parse.urlsplit(url).hostname or ""
    if ipaddress.ip_address(host).is_loopback:
        pytest.skip("this host has no address beyond loopback to link to")
    link = client.dashboard_link
    assert link == f"{url}/?token={cluster.token}"
    assert client.scheduler_info()["dashboard"] == url
    assert cluster.dashboard_link == link
    assert "token=" in client._repr_html_()
    # Following the link from another host's point of view logs in.
    reply = call(url, f"/?token={cluster.token}")
    assert reply.status == 302 and reply.location == "/" and reply.cookies
    value = reply.cookies[0].split(";")[0].split("=", 1)[1]
    assert call(url, "/", headers={"Cookie": f"{COOKIE}={value}"}).status == 200


def test_dashboard_link_function() -> None:
    assert dashboard_link("", "t") == ""
    assert dashboard_link("http://127.0.0.1:8787", "t") == "http://127.0.0.1:8787/"
    assert dashboard_link("http://localhost:8787", "t") == "http://localhost:8787/"
    assert dashboard_link("http://[::1]:8787", "t") == "http://[::1]:8787/"
    assert dashboard_link("http://10.1.2.3:8787", "t") == "http://10.1.2.3:8787/?token=t"
    assert dashboard_link("http://[fd00::1]:8787", "t") == "http://[fd00::1]:8787/?token=t"
    assert dashboard_link("http://10.1.2.3:8787", None) == "http://10.1.2.3:8787/"


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_taken_port_moves_to_the_next_free_one() -> None:
    async def main(port: int) -> tuple[str, str]:
        server = HealthServer(lambda: None)
        try:
            moved = await server.start("127.0.0.1", port, tries=3)
        finally:
            await server.close()
        refused = HealthServer(lambda: None)
        with pytest.raises(OSError) as info:
            await refused.start("127.0.0.1", port, tries=1)
        assert refused._runner is None  # cleaned up
        return moved, str(info.value)

    with taken_port() as sock:
        port = sock.getsockname()[1]
        moved, error = asyncio.run(main(port))
    assert moved.startswith("http://127.0.0.1:") and not moved.endswith(f":{port}")
    assert error == f"cannot serve HTTP at 127.0.0.1:{port}: Address already in use"
    assert "\n" not in error


def test_a_cluster_dashboard_moves_off_a_taken_port(make_cluster: MakeCluster) -> None:
    with taken_port() as sock:
        port = sock.getsockname()[1]
        _, client, _, base = dashboard(make_cluster, f"127.0.0.1:{port}", n_workers=1)
        assert not base.endswith(f":{port}")
        assert client.dashboard_link == base + "/"
        assert call(base, "/").status == 200


def test_scheduler_cli_serves_the_dashboard_where_the_setting_says(
    processes: Processes, tmp_path: Path
) -> None:
    assert Settings.from_env({}).dashboard_address == "127.0.0.1:8787"
    processes.env["REGROW_DASHBOARD_ADDRESS"] = "127.0.0.1:0"
    _, address, health = processes.start("scheduler", ["scheduler", "--port", "0"])
    log = (tmp_path / "scheduler.log").read_text()
    base = health.removesuffix("/health")
    assert f"dashboard at {base}/" in log, log
    assert base.startswith("http://127.0.0.1:") and not base.endswith(":0")
    assert call(base, "/").status == 200
    with Client(address, token=processes.env["REGROW_TOKEN"], set_as_default=False) as client:
        assert client.dashboard_link == base + "/"
        assert client.scheduler_info()["dashboard"] == base


def test_scheduler_cli_setting_moves_off_a_taken_port(processes: Processes, tmp_path: Path) -> None:
    with taken_port() as sock:
        port = sock.getsockname()[1]
        processes.env["REGROW_DASHBOARD_ADDRESS"] = f"127.0.0.1:{port}"
        _, _, health = processes.start("scheduler", ["scheduler", "--port", "0"])
        base = health.removesuffix("/health")
        assert not base.endswith(f":{port}")
        assert f"dashboard at {base}/" in (tmp_path / "scheduler.log").read_text()
        assert call(base, "/").status == 200


def test_no_dashboard_serves_health_and_metrics_only(processes: Processes, tmp_path: Path) -> None:
    args = ["scheduler", "--port", "0", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    _, address, health = processes.start("scheduler", args)
    base = health.removesuffix("/health")
    assert call(base, "/health").status == 200
    assert call(base, "/metrics").status == 200
    for path in ("/", "/api/state", "/api/stream", "/login", "/static/uPlot.min.css"):
        assert call(base, path).status == 404, path
    assert "dashboard at" not in (tmp_path / "scheduler.log").read_text()
    with Client(address, token=processes.env["REGROW_TOKEN"], set_as_default=False) as client:
        assert client.dashboard_link is None
        assert client.scheduler_info()["dashboard"] == ""


def test_no_dashboard_and_no_address_serves_no_http(processes: Processes, tmp_path: Path) -> None:
    processes.env["REGROW_DASHBOARD_ADDRESS"] = "127.0.0.1:0"
    ready, log = tmp_path / "s.ready", tmp_path / "s.log"
    args = ["scheduler", "--port", "0", "--no-dashboard", "--log-file", str(log)]
    proc = regrow_cli(args, processes.env, ready)
    processes.procs.append(proc)
    address = wait_ready(proc, ready)
    assert "health at" not in log.read_text() and "dashboard at" not in log.read_text()
    with Client(address, token=processes.env["REGROW_TOKEN"], set_as_default=False) as client:
        assert client.dashboard_link is None


def test_a_process_cluster_links_to_its_dashboard(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=1, dashboard_address="127.0.0.1:0")
    link = client.dashboard_link
    assert link is not None and link.startswith("http://127.0.0.1:") and link.endswith("/")
    assert cluster.dashboard_link == link
    assert "dashboard at" in cluster.get_logs()["scheduler"]
    assert call(link, "/api/state").json()["workers"][0]["nthreads"] == 1
