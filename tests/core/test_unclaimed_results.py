"""Results a worker brings to a scheduler restarted from its journal that the journal
does not know. A scatter whose registration never reached the dead scheduler is one:
its client resends the registration once it is back, and the data must still be there.
So the core keeps such results until ``ReattachGraceEnded`` and frees only those
nobody claimed by then (found by the chaos soak as a ``LostDataError``)."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, freed


def _restarted(h: Harness) -> None:
    """A scheduler back from a journal holding only task ``j`` (done)."""
    rows = (ev.RestoredTask(key="j", dependencies=(), run_spec=("run", "j")),)
    h.handle(ev.StateRestored(tasks=rows, wants=(("c", "j"),), stimulus_id=h.sid()))


def _offered(h: Harness, worker: str, *keys: str) -> list[cmd.Command]:
    """``worker`` (re)registers, holding ``keys``."""
    held = tuple((key, 8) for key in keys)
    return h.handle(ev.WorkerAdded(worker=worker, keys=held, stimulus_id=h.sid()))


def _scattered(h: Harness, key: str, *workers: str) -> None:
    item = ev.ScatteredKey(key=key, nbytes=8, type_name="bytes", workers=workers)
    h.handle(ev.DataScattered(client="c", keys=(item,), stimulus_id=h.sid()))


def test_an_unknown_result_offered_while_recovering_waits_for_its_client() -> None:
    h = Harness()
    _restarted(h)
    out = _offered(h, "w1", "j", "s")
    assert freed(out) == set()  # "s" is unknown, and kept
    out = h.handle(ev.RecoveryFinished(stimulus_id=h.sid()))
    assert freed(out) == set()
    # The client resends its scatter: the result is its, on w1.
    h.handle(ev.ClientConnected(client="c"))
    _scattered(h, "s", "w1")
    assert h.task_state("s") == "memory"
    out = h.handle(ev.ReattachGraceEnded(stimulus_id=h.sid()))
    assert freed(out) == set()
    assert h.state.unclaimed == {}
    assert {ws.address for ws in h.state.tasks["s"].who_has} == {"w1"}


def test_a_worker_joining_after_recovery_keeps_its_unknown_results_too() -> None:
    h = Harness()
    _restarted(h)
    _offered(h, "w1", "j")
    h.handle(ev.RecoveryFinished(stimulus_id=h.sid()))
    out = _offered(h, "w2", "s")
    assert freed(out) == set()
    assert h.state.unclaimed == {"s": {"w2"}}


def test_unclaimed_results_are_freed_when_the_grace_ends() -> None:
    h = Harness()
    _restarted(h)
    _offered(h, "w1", "s", "t")
    _offered(h, "w2", "s")
    h.handle(ev.RecoveryFinished(stimulus_id=h.sid()))
    h.handle(ev.ClientConnected(client="c"))
    _scattered(h, "t", "w1")  # claimed; "s" is not
    out = h.handle(ev.ReattachGraceEnded(stimulus_id=h.sid()))
    assert freed(out) == {("w1", "s"), ("w2", "s")}
    assert h.state.unclaimed == {}
    assert "s" not in h.state.tasks


def test_a_claim_naming_other_holders_frees_the_copy_it_does_not_name() -> None:
    h = Harness()
    _restarted(h)
    _offered(h, "w1", "s")
    _offered(h, "w2")
    h.handle(ev.RecoveryFinished(stimulus_id=h.sid()))
    h.handle(ev.ClientConnected(client="c"))
    # Registered with w2 only: the copy w1 offered is one nobody knows of.
    _scattered(h, "s", "w2")
    out = h.handle(ev.ReattachGraceEnded(stimulus_id=h.sid()))
    assert freed(out) == {("w1", "s")}
    assert {ws.address for ws in h.state.tasks["s"].who_has} == {"w2"}


def test_an_unclaimed_result_of_a_departed_worker_is_not_freed() -> None:
    h = Harness()
    _restarted(h)
    _offered(h, "w1", "s")
    _offered(h, "w2")
    h.handle(ev.RecoveryFinished(stimulus_id=h.sid()))
    h.handle(ev.WorkerRemoved(worker="w1", reason="gone", stimulus_id=h.sid()))
    out = h.handle(ev.ReattachGraceEnded(stimulus_id=h.sid()))
    assert freed(out) == set()
    assert h.state.unclaimed == {}


def test_a_result_unknown_outside_recovery_is_freed_at_once() -> None:
    h = Harness()
    out = _offered(h, "w1", "s")
    assert freed(out) == {("w1", "s")}
    assert h.state.unclaimed == {}
