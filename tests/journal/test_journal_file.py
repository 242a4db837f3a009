"""The journal file itself: cut anywhere in its WAL it opens at its last whole
transaction; damaged, foreign or of another version it is refused with a clear
JournalError and left byte for byte as it was; ``regrow journal inspect`` reads it."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from regrow import Client
from regrow.scheduler.journal import JOURNAL_VERSION, Journal, JournalError, Snapshot
from regrow.testing import wait_until

from .helpers import cli_cluster
from .tasks import add, inc, slow_inc

# The chain (61), the tree (255, one leaf of which, inc(0), is the chain's first task),
# the slow tasks (20) and the scattered array.
MIN_TASKS = 61 + 255 - 1 + 20 + 1


@dataclass
class Journaled:
    """Copies of a real journal's files, taken after its scheduler was SIGKILLed."""

    db: bytes
    wal: bytes
    client: str
    tasks: int = 0
    by_state: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> Journaled:
    """A CLI scheduler with --journal and 2 workers run a graph (chains, a tree, a
    scattered array, released keys, tasks still running); then SIGKILL: the WAL is
    left as the crash left it (never checkpointed)."""
    tmp = tmp_path_factory.mktemp("journaled")
    path = tmp / "j.db"
    with (
        cli_cluster(tmp, path) as cluster,
        Client(cluster.address, token=cluster.token, set_as_default=False) as client,
    ):
        arr = client.scatter(np.arange(100))
        # Steps longer than the journal's flush interval, each waited for: many
        # transactions in the WAL.
        chain = client.submit(inc, 0)
        for i in range(60):
            chain = client.submit(slow_inc, chain, 0.03 if i % 3 == 0 else 0.0)
            if i % 3 == 0:
                chain.result(timeout=30)
        level = client.map(inc, range(128))
        while len(level) > 1:
            level = [
                client.submit(add, None, "t", a, b)
                for a, b in zip(level[0::2], level[1::2], strict=True)
            ]
        assert level[0].result(timeout=60) == sum(range(1, 129))
        assert chain.result(timeout=60) == 61
        # Released keys: deletions in the WAL.
        gone = client.map(inc, range(1000, 1100))
        client.gather(gone, timeout=60)
        del gone
        # Still running (or waiting) at the kill, once the journal has them.
        slow = client.map(slow_inc, range(20), seconds=0.5)
        keys = [f.key for f in slow]
        wait_until(
            lambda: _count_tasks(path, keys) == len(keys), timeout=30, what="slow tasks journaled"
        )
        cluster.kill_scheduler()
        wal = Path(f"{path}-wal")
        assert wal.exists() and wal.stat().st_size > 0
        out = Journaled(path.read_bytes(), wal.read_bytes(), client.id)
        del arr, slow
    # The journal as the crash left it has the tasks the clients still wanted.
    j = _open_copy(tmp / "check", out.db, out.wal)
    try:
        snap = j.load()
        out.by_state = j.summary()["by_state"]
    finally:
        j.close()
    out.tasks = len(snap.tasks)
    assert out.tasks >= MIN_TASKS
    assert {c for c, _ in snap.wants} == {out.client}
    return out


def _count_tasks(path: Path, keys: list[str]) -> int:
    """How many of ``keys`` a live journal holds (read only, next to its scheduler)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        marks = ", ".join("?" * len(keys))
        row = db.execute(f"SELECT COUNT(*) FROM tasks WHERE key IN ({marks})", keys).fetchone()
        return int(row[0])


def _open_copy(where: Path, db: bytes, wal: bytes | None) -> Journal:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "j.db"
    path.write_bytes(db)
    if wal is not None:
        Path(f"{path}-wal").write_bytes(wal)
    return Journal(path)


def _consistent(snap: Snapshot) -> None:
    keys = {t.key for t in snap.tasks}
    assert len(keys) == len(snap.tasks)
    for t in snap.tasks:
        missing = set(t.deps) - keys
        assert not missing, f"{t.key} depends on {missing}, not in the journal"
        assert t.state in {"released", "memory", "erred"}, t.state
    assert {k for _, k in snap.wants} <= keys


def _commit_ends(wal: bytes) -> list[int]:
    """Offsets in the WAL just after each commit frame (the transaction boundaries)."""
    (page,) = struct.unpack(">I", wal[8:12])
    salt = wal[16:24]
    frame = 24 + page
    ends = []
    for off in range(32, len(wal) - frame + 1, frame):
        if wal[off + 8 : off + 16] != salt:
            break  # left over from before the WAL was restarted: not part of it
        (commit,) = struct.unpack(">I", wal[off + 4 : off + 8])
        if commit:
            ends.append(off + frame)
    return ends


def _as_rows(snap: Snapshot) -> tuple[list[tuple[object, ...]], list[tuple[str, str]]]:
    tasks: list[tuple[object, ...]] = [
        (t.key, t.state, tuple(t.deps), t.nbytes, t.location) for t in snap.tasks
    ]
    return tasks, sorted(snap.wants)


def test_wal_cut_anywhere_opens_at_a_transaction(journaled: Journaled, tmp_path: Path) -> None:
    ends = _commit_ends(journaled.wal)
    assert len(ends) > 10, "the WAL holds few transactions"
    rng = random.Random(20261122)
    size = len(journaled.wal)
    offsets = sorted({0, 7, 31, 32, 33, size - 1, *rng.sample(range(size), 12)})
    seen = set()
    for off in offsets:
        j = _open_copy(tmp_path / f"cut-{off}", journaled.db, journaled.wal[:off])
        try:
            snap = j.load()
        finally:
            j.close()
        _consistent(snap)
        # Exactly the state after the last whole transaction before the cut.
        whole = [e for e in ends if e <= off]
        if whole:
            ref = _open_copy(tmp_path / f"ref-{off}", journaled.db, journaled.wal[: whole[-1]])
            try:
                assert _as_rows(snap) == _as_rows(ref.load()), off
            finally:
                ref.close()
        else:
            assert not snap.tasks and not snap.wants
        seen.add(len(snap.tasks))
    assert len(seen) > 3, f"cuts gave too few distinct prefixes: {sorted(seen)}"
    # Uncut, it holds everything.
    j = _open_copy(tmp_path / "whole", journaled.db, journaled.wal)
    try:
        assert len(j.load().tasks) == journaled.tasks
    finally:
        j.close()


def _checkpointed(journaled: Journaled, where: Path) -> bytes:
    """The journal folded into its main file (no WAL): what a clean stop leaves."""
    j = _open_copy(where, journaled.db, journaled.wal)
    j.close()
    assert not Path(f"{where / 'j.db'}-wal").exists()
    return (where / "j.db").read_bytes()


def _refused(path: Path, *words: str) -> str:
    before = path.read_bytes()
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert path.read_bytes() == before, "a refused journal was modified"
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_damaged_main_file_is_refused_untouched(journaled: Journaled, tmp_path: Path) -> None:
    db = _checkpointed(journaled, tmp_path / "clean")
    assert len(db) >= 4 * 4096
    rng = random.Random(7)
    cuts = sorted({1, 50, 100, 1000, 4096, 4096 + 100, len(db) // 2, len(db) - 4096, len(db) - 1})
    cuts += rng.sample(range(1, len(db)), 5)
    for cut in cuts:
        path = tmp_path / f"cut-{cut}.db"
        path.write_bytes(db[:cut])
        _refused(path, "untouched")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(rng.randbytes(len(db)))
    _refused(garbage, "not a regrow journal")
    # A valid SQLite header over damaged pages.
    scrambled = tmp_path / "scrambled.db"
    scrambled.write_bytes(db[:4096] + rng.randbytes(len(db) - 4096))
    _refused(scrambled, "untouched")
    # Text, as if another file had been given.
    text = tmp_path / "notes.db"
    text.write_text("hello\n" * 1000)
    _refused(text, "not a regrow journal")


def test_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE stuff (x INTEGER)")
        db.execute("INSERT INTO stuff VALUES (1)")
    db.close()
    _refused(path, "not a regrow journal")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("stuff",)]
    db.close()


def test_other_version_is_refused(journaled: Journaled, tmp_path: Path) -> None:
    db = _checkpointed(journaled, tmp_path / "v")
    path = tmp_path / "v999.db"
    path.write_bytes(db)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE name = 'version'")
    conn.close()
    message = _refused(path, "version 999", f"version {JOURNAL_VERSION}")
    assert "regrow journal" in message


def test_a_new_file_opens_and_reopens_as_the_same_journal(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    j = Journal(path)
    try:
        snap = j.load()
        assert not snap.tasks and not snap.wants and snap.scheduler_id
    finally:
        j.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".new")] == []
    j2 = Journal(path)
    try:
        assert j2.scheduler_id == snap.scheduler_id
    finally:
        j2.close()


def test_an_empty_file_is_refused_unless_a_new_journal_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    message = _refused(path, "empty file", "--journal-new")
    assert "left untouched" in message
    assert path.read_bytes() == b""
    j = Journal(path, new=True)
    try:
        assert j.load().scheduler_id
    finally:
        j.close()
    # --journal-new never overwrites a journal that holds something.
    with pytest.raises(JournalError, match="already holds data"):
        Journal(path, new=True)


def test_the_scheduler_refuses_an_empty_journal_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    cmd = [sys.executable, "-m", "regrow.cli", "scheduler", "--port", "0", "--journal", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty file" in lines[0] and "--journal-new" in lines[0], r.stderr


# ------------------------------------------------------------ journal inspect
def _inspect(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regrow.cli", "journal", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_inspect_real_journal(journaled: Journaled, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(journaled.db)
    Path(f"{path}-wal").write_bytes(journaled.wal)
    size = len(journaled.db) + len(journaled.wal)
    out = _inspect(path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"(version {JOURNAL_VERSION}, {size:,} bytes)" in text, text
    assert f"tasks        {journaled.tasks:,} (1 scattered)" in text, text
    for state, n in journaled.by_state.items():
        assert f"  {state:<11}{n:,}\n" in text, text
    assert {"memory", "released"} <= set(journaled.by_state), journaled.by_state
    assert "clients      1\n" in text, text
    assert f"  {journaled.client}  wants " in text, text
    assert "results held" in text and "bytes" in text


@pytest.mark.parametrize("what", ["garbage", "missing", "truncated", "version"])
def test_inspect_refuses_in_one_line(journaled: Journaled, tmp_path: Path, what: str) -> None:
    path = tmp_path / "j.db"
    if what == "garbage":
        path.write_bytes(random.Random(3).randbytes(20_000))
    elif what == "truncated":
        path.write_bytes(_checkpointed(journaled, tmp_path / "clean")[:6000])
    elif what == "version":
        path.write_bytes(_checkpointed(journaled, tmp_path / "clean"))
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE meta SET value = '999' WHERE name = 'version'")
        conn.close()
    before = path.read_bytes() if path.exists() else None
    out = _inspect(path)
    assert out.returncode != 0
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(path) in lines[0] and "Traceback" not in out.stderr
    if before is None:
        assert not path.exists(), "inspect created a journal"
    else:
        assert path.read_bytes() == before
    if what == "version":
        assert "version 999" in lines[0]
