"""What the journal keeps of fire_and_forget and retry, through the keeper and the core
as the scheduler's shell drives them (no cluster): the scheduler's wish and its end,
and an error that a retry took away."""

from __future__ import annotations

from pathlib import Path

from regrow.core import events as ev
from regrow.core.client_requests import FIRE_AND_FORGET
from regrow.core.scheduler_state import SchedulerState
from regrow.scheduler.journal import Journal, Snapshot
from regrow.scheduler.journaling import JournalKeeper


class Shell:
    """The scheduler shell's part: record, handle, write the states, commit."""

    def __init__(self, path: Path) -> None:
        self.journal = Journal(path)
        self.keeper = JournalKeeper(self.journal, 0.02)
        self.state = SchedulerState(validate=True)
        self.state.on_transition = self.keeper.transition

    def handle(self, *events: ev.Event) -> None:
        for event in events:
            self.keeper.record(event, self.state.tasks)
        self.state.handle(*events)
        self.keeper.write_states(self.state.tasks, self.state.workers.keys())
        self.journal.flush()

    def submit(self, client: str, wanted: str, *specs: tuple[str, tuple[str, ...]]) -> None:
        tasks = tuple(
            ev.TaskSpec(key=k, dependencies=deps, run_spec=(1, [b"f"])) for k, deps in specs
        )
        self.handle(ev.TasksSubmitted(client=client, tasks=tasks, wanted=(wanted,)))

    def finish(self, key: str) -> None:
        ts = self.state.tasks[key]
        assert ts.processing_on is not None
        worker = ts.processing_on.address
        self.handle(ev.TaskFinished(worker=worker, key=key, run_id=ts.run_id, nbytes=8))

    def err(self, key: str) -> None:
        ts = self.state.tasks[key]
        assert ts.processing_on is not None
        worker = ts.processing_on.address
        self.handle(
            ev.TaskErred(
                worker=worker, key=key, run_id=ts.run_id, exception=b"e", traceback=b"", text="x"
            )
        )

    def snapshot(self) -> Snapshot:
        return self.journal.load()


def test_the_wish_is_written_and_so_is_its_end(tmp_path: Path) -> None:
    s = Shell(tmp_path / "j.db")
    s.handle(ev.WorkerAdded(worker="w1"))
    s.submit("c", "z", ("x", ()), ("y", ("x",)), ("z", ("y",)))
    s.handle(ev.KeysFiredAndForgotten(client="c", keys=("y", "z")))
    s.handle(ev.KeysReleased(client="c", keys=("z",)))
    assert set(s.snapshot().wants) == {(FIRE_AND_FORGET, "y"), (FIRE_AND_FORGET, "z")}
    s.finish("x")
    s.finish("y")  # done; kept in memory for z, but no longer wished for
    assert set(s.snapshot().wants) == {(FIRE_AND_FORGET, "z")}
    s.finish("z")
    snap = s.snapshot()
    assert snap.wants == [] and snap.tasks == []  # all let go, all forgotten


def test_a_key_done_when_fired_is_not_wished_for(tmp_path: Path) -> None:
    s = Shell(tmp_path / "j.db")
    s.handle(ev.WorkerAdded(worker="w1"))
    s.submit("c", "x", ("x", ()))
    s.finish("x")
    s.handle(ev.KeysFiredAndForgotten(client="c", keys=("x", "unknown")))
    assert s.snapshot().wants == [("c", "x")]


def test_a_retried_key_loses_its_error_in_the_journal(tmp_path: Path) -> None:
    s = Shell(tmp_path / "j.db")
    s.handle(ev.WorkerAdded(worker="w1"))
    s.submit("c", "y", ("x", ()), ("y", ("x",)))
    s.err("x")
    assert {t.key: t.state for t in s.snapshot().tasks} == {"x": "erred", "y": "erred"}
    s.handle(ev.RetryRequested(client="c", keys=("y",)))
    # x runs again, y waits for it: neither is erred any more, were the scheduler to
    # restart now.
    rows = {t.key: t for t in s.snapshot().tasks}
    assert {k: (t.state, t.error) for k, t in rows.items()} == {
        "x": ("released", None),
        "y": ("released", None),
    }
    s.finish("x")
    s.finish("y")
    assert {t.key: t.state for t in s.snapshot().tasks} == {"x": "released", "y": "memory"}
