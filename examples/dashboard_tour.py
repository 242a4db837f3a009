"""The dashboard during a computation that goes wrong twice, photographed by a real
headless browser: the README's screenshot.

    python examples/dashboard_tour.py [--out docs/dashboard.png] [--tabs]

A local cluster of 3 workers (2 threads each, with nannies) serves its dashboard on a
loopback port. Three task groups run: ``count`` (a word count per standard-library
file), ``merge`` (their pairwise merges) and ``slowinc``. A third of the way through,
one worker is killed with SIGKILL (its nanny starts another; its results are computed
again), and a ``poison`` task kills every worker it runs on until the scheduler blames
it (KilledWorker), so the timeline shows a worker lost, results recomputed, a suspect
run alone and blamed. Needs chromium, chromium-driver and selenium (``.ci/run``
installs them). ``--tabs`` also saves each other tab next to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sysconfig
import time
from collections import Counter
from pathlib import Path

from regrow import Client, LocalCluster, wait
from regrow.testing import headless_browser, wait_until

_WORD = re.compile(r"[A-Za-z_]+")


def count(path: str) -> Counter[str]:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    time.sleep(0.02)
    return Counter(w.lower() for w in _WORD.findall(text))


def merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    out = Counter(a)
    out.update(b)
    return out


def slowinc(x: int) -> int:
    time.sleep(0.05)
    return x + 1


def poison() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--tabs", action="store_true")
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in root.rglob("*.py") if "site-packages" not in p.parts)[:300]
    with (
        LocalCluster(
            n_workers=3, threads_per_worker=2, dashboard_address="127.0.0.1:0", log_level="ERROR"
        ) as cluster,
        Client(cluster) as client,
        headless_browser(1400, 1000) as driver,
    ):
        link = client.dashboard_link
        assert link is not None
        print(f"dashboard: {link}")
        driver.get(link + "#status")
        wait_until(
            lambda: (
                (driver.execute_script("return (window.regrowDashboard||{}).messages") or 0) >= 2
            ),
            timeout=30,
            what="the page's live feed",
        )
        counts = client.map(count, files, key=[f"count-{i}" for i in range(len(files))])
        level, merges = list(counts), []
        while len(level) > 1:
            pairs = [
                client.submit(merge, a, b, key=f"merge-{len(merges) + j}")
                for j, (a, b) in enumerate(zip(level[::2], level[1::2], strict=False))
            ]
            merges.extend(pairs)
            level = pairs + ([level[-1]] if len(level) % 2 else [])
        incs = client.map(slowinc, range(240))
        wait_until(
            lambda: sum(f.done() for f in counts) > len(counts) // 3,
            timeout=60,
            what="a third of the counts",
        )
        victim = next(iter(client.scheduler_info()["workers"].values()))
        os.kill(victim["pid"], signal.SIGKILL)
        bad = client.submit(poison, key="poison-1")
        wait([*counts, *merges, *incs, bad], timeout=120)
        assert bad.status == "error", bad.status
        total = level[0].result()
        serial = Counter[str]()
        for path in files:
            serial.update(count(path))
        assert total == serial, "the word count differs from a serial run"
        print(f"{sum(total.values()):,} words, as a serial run; the poison: {bad.exception()!r}")
        time.sleep(2)  # let the charts and the stream show the last second
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        print(f"saved {out}")
        if args.tabs:
            for tab in ("workers", "progress", "stream", "timeline"):
                driver.get(f"{link}#{tab}")
                time.sleep(1.5)
                path = out.with_name(f"{out.stem}-{tab}{out.suffix}")
                driver.save_screenshot(str(path))
                print(f"saved {path}")


if __name__ == "__main__":
    main()
