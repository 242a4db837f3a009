"""Small results kept by the scheduler: losing their workers loses nothing, they reach
clients with the news, and dependents get them with their compute order."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, computes, of_type, reports, spec


def test_kept_result_survives_its_only_worker() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",))])
    out = h.finish("a", inline=b"A")
    [news] = reports(out, cmd.ReportInMemory, "cl")
    assert news.inline == b"A"
    assert h.state.inline_bytes == 1

    out = h.remove_worker("w1")
    assert not reports(out, cmd.ReportLost)
    assert not computes(out)
    assert h.task_state("a") == "memory" and h.holders("a") == set()
    assert h.state.info()["counts"]["recomputed"] == 0

    # A dependent submitted afterwards runs with the input in its order: nobody to fetch from.
    out = h.submit("cl", [spec("b", "a")])
    [order] = of_type(out, cmd.Compute)
    assert order.worker == "w2"
    assert order.who_has == {"a": []} and order.inline == {"a": b"A"}
    h.finish("b")
    # Another client asking for it gets it with the news as well.
    [news] = reports(h.desire("other", "a"), cmd.ReportInMemory, "other")
    assert news.inline == b"A"


def test_result_without_inline_is_still_lost_and_recomputed() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a")])
    worker = h.processing_on("a")
    h.finish("a")
    out = h.remove_worker(worker)
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="a")]
    assert h.task_state("a") in ("processing", "queued")


def test_release_gives_the_bytes_back() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b")], wanted=["a", "b"])
    h.finish("a", inline=b"1234")
    h.finish("b", inline=b"56")
    assert h.state.inline_bytes == 6
    h.release("cl", "a")
    assert h.state.inline_bytes == 2
    h.release("cl", "b")
    assert h.state.inline_bytes == 0 and not h.state.tasks


def test_total_is_bounded_but_every_client_still_gets_its_result() -> None:
    h = Harness(inline_limit=10)
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", workers=("w1",))], wanted=["a", "b"])
    news_a = reports(h.finish("a", inline=b"x" * 8), cmd.ReportInMemory)
    news_b = reports(h.finish("b", inline=b"y" * 8), cmd.ReportInMemory)
    # b does not fit: it travels with its news, but only w1 keeps it.
    assert [n.inline for n in news_a + news_b] == [b"x" * 8, b"y" * 8]
    assert h.state.tasks["a"].inline == b"x" * 8 and h.state.tasks["b"].inline is None
    out = h.remove_worker("w1")
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="b")]
    assert h.task_state("a") == "memory"


def test_stale_report_is_not_kept() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a")])
    old_run = h.run_id("a")
    h.cancel("cl", "a")
    h.submit("cl", [spec("a")])
    h.finish("a", run_id=old_run, inline=b"old")
    assert h.task_state("a") == "processing" and h.state.inline_bytes == 0
    h.finish("a", inline=b"new")
    assert h.state.tasks["a"].inline == b"new"


def test_holder_without_the_value_does_not_lose_a_kept_result() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a")])
    h.finish("a", inline=b"A")
    # The client found that w1 does not have it after all (missing-data).
    out = h.handle(ev.ReplicasMissing(holders=(("a", ("w1",)),)))
    assert not reports(out, cmd.ReportLost) and not computes(out)
    assert h.task_state("a") == "memory" and h.holders("a") == set()


def test_restart_forgets_kept_results() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a")])
    h.finish("a", inline=b"A")
    h.handle(ev.RestartRequested())
    assert h.state.inline_bytes == 0 and not h.state.tasks
