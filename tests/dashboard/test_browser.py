"""The dashboard in a real headless browser that runs its JavaScript: while a computation
runs, the page shows the workers and the progress the scheduler reports; a worker
killed mid-computation appears in the timeline; a screenshot is saved."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from regrow.testing import (
    MakeCluster,
    browser_missing,
    console_errors,
    headless_browser,
    wait_until,
)

WHY = browser_missing()
if WHY is not None:
    print(f"\nskipping the dashboard's browser tests: {WHY}")
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no headless browser: {WHY}")

N = 240


def slowinc(x: int) -> int:
    time.sleep(0.025)
    return x + 1


def page_value(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def until(driver: Any, script: str, check: Callable[[Any], bool], what: str) -> Any:
    """Run ``script`` in the page until ``check`` holds of its value (deadline 20 s)."""
    seen: list[Any] = [None]

    def ok() -> bool:
        seen[0] = driver.execute_script(script)
        return bool(check(seen[0]))

    wait_until(ok, timeout=20, what=f"{what} (last seen: {seen[0]!r})")
    return seen[0]


WORKER_ROWS = """
return Array.from(document.querySelectorAll('#workers tbody tr[data-address]')).map(tr => {
  const row = {address: tr.dataset.address};
  tr.querySelectorAll('td[data-field]').forEach(td => row[td.dataset.field] = td.dataset.value);
  return row;
});
"""

GROUPS = """
return Array.from(document.querySelectorAll('#progress .group[data-group]')).map(g => ({
  group: g.dataset.group, total: +g.dataset.total, done: +g.dataset.done,
  erred: +g.dataset.erred, processing: +g.dataset.processing, waiting: +g.dataset.waiting,
}));
"""

TIMELINE = """
return Array.from(document.querySelectorAll('#timeline li[data-action]')).map(li => ({
  action: li.dataset.action, worker: li.dataset.worker || '', text: li.textContent,
}));
"""


def test_the_dashboard_follows_a_computation_and_a_worker_loss(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    _, client = make_cluster(n_workers=2, threads_per_worker=2, dashboard_address="127.0.0.1:0")
    link = client.dashboard_link
    assert link is not None and link.startswith("http://127.0.0.1:")
    with headless_browser() as driver:
        driver.get(link + "#workers")
        until(driver, "return (window.regrowDashboard || {}).messages || 0", lambda n: n >= 2,
              "the page receiving the live feed")  # fmt: skip
        futures = client.map(slowinc, range(N))

        # The workers it shows are the scheduler's, with their threads.
        info = client.scheduler_info()
        rows = until(driver, WORKER_ROWS, lambda rows: len(rows) == 2, "two worker rows")
        assert {r["address"] for r in rows} == set(info["workers"])
        for r in rows:
            assert int(r["nthreads"]) == info["workers"][r["address"]]["nthreads"] == 2
            assert r["status"] == "running"

        # Progress while it runs: the group has every task, some done, not all.
        driver.get(link + "#progress")
        groups = until(
            driver,
            GROUPS,
            lambda gs: any(g["group"] == "slowinc" and 0 < g["done"] < N for g in gs),
            "the slowinc group part done",
        )
        (g,) = [g for g in groups if g["group"] == "slowinc"]
        assert g["total"] == N and g["erred"] == 0

        # Kill a worker mid-computation: the loss appears in the timeline.
        victim = next(iter(info["workers"].values()))
        os.kill(victim["pid"], signal.SIGKILL)
        driver.get(link + "#timeline")
        lost = until(
            driver,
            TIMELINE,
            lambda items: any(
                i["action"] == "worker-lost" and i["worker"] == victim["address"] for i in items
            ),
            f"worker-lost of {victim['address']} in the timeline",
        )
        assert any("lost" in i["text"] for i in lost)

        # Every result is right, and the page's progress matches the scheduler's.
        assert client.gather(futures) == [x + 1 for x in range(N)]
        driver.get(link + "#progress")
        until(
            driver,
            GROUPS,
            lambda gs: any(g["group"] == "slowinc" and g["done"] == N for g in gs),
            "the slowinc group done",
        )
        tasks = client.scheduler_info()["tasks"]
        assert tasks.get("memory", 0) == N
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=20,
                   what="the nanny's fresh worker")  # fmt: skip
        driver.get(link + "#status")
        rows = until(driver, WORKER_ROWS, lambda rows: True, "worker rows")
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        assert console_errors(driver) == []
        del futures


def test_off_loopback_the_page_asks_for_the_token(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, dashboard_address="0.0.0.0:0")
    port = (client.dashboard_link or "").rsplit(":", 1)[-1].split("/")[0]
    with headless_browser() as driver:
        # Reached by a non-loopback name: the page sends the browser to the login form.
        host = _outward_host()
        if host is None:
            pytest.skip("this machine has no non-loopback IPv4 address")
        base = f"http://{host}:{port}/"
        driver.get(base)
        assert "login" in driver.current_url
        driver.find_element("name", "token").send_keys("not the token")
        driver.find_element("css selector", "form button, form [type=submit]").click()
        until(driver, "return location.search", lambda s: "error=1" in s, "the refusal")
        driver.find_element("name", "token").send_keys(client.token or "")
        driver.find_element("css selector", "form button, form [type=submit]").click()
        until(driver, "return (window.regrowDashboard || {}).messages || 0", lambda n: n >= 1,
              "the dashboard after login")  # fmt: skip


def _outward_host() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            host = str(s.getsockname()[0])
        except OSError:
            return None
    return None if host.startswith("127.") else host
