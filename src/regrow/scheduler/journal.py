"""The scheduler's journal: what it must remember to come back after its own death.

An embedded SQLite database in WAL mode. It holds every task a client submitted
(key, opaque payload, dependencies, options), which clients want which keys,
each result's state, size and location, errors, and releases (as deletions).
Records are buffered and written in one transaction per flush, from a thread of
its own, so the scheduler's loop never waits on the disk. A journal cut
mid-write opens at its last whole transaction (SQLite's WAL guarantees that);
a file of another version, or one that is not a journal, is refused with a
clear ``JournalError``, never silently replaced.

This module knows nothing of scheduling: it stores and returns rows.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

from regrow.errors import RegrowError

JOURNAL_VERSION = 1

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    deps BLOB NOT NULL,
    run_spec BLOB,
    priority INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    workers BLOB,
    pure INTEGER NOT NULL,
    state TEXT NOT NULL,
    nbytes INTEGER NOT NULL DEFAULT 0,
    type TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    error BLOB,
    replicas INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS wants (
    client TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (client, key)
) WITHOUT ROWID;
-- A forgotten task's wants are deleted by key: without this, a scan of the whole table.
CREATE INDEX IF NOT EXISTS wants_by_key ON wants (key);
"""
    + """
-- What each coordination primitive holds (core.coordination's rows), and the answers
-- to changes that clients may ask for again after a restart (the newest ANSWERS_KEPT).
CREATE TABLE IF NOT EXISTS coordination (
    kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coordination_answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    request TEXT NOT NULL UNIQUE,
    ok INTEGER NOT NULL,
    payload BLOB,
    number REAL NOT NULL,
    error TEXT NOT NULL
);
"""
)

# The tables added since version 1 was first written: made in older journals when
# they are opened (additions only: an older regrow reading the file ignores them).
_ADDED = _SCHEMA[_SCHEMA.index("-- What each coordination") :]


class JournalError(RegrowError):
    """The journal cannot be used: another version, not a journal, or damaged."""


@dataclass
class TaskRow:
    key: str
    deps: list[str]
    run_spec: tuple[int, list[bytes]] | None
    priority: int
    retries: int
    workers: list[str] | None
    pure: bool
    state: str
    nbytes: int = 0
    type_name: str = ""
    location: str = ""
    error: dict[str, Any] | None = None
    replicas: int = 1


@dataclass
class Snapshot:
    scheduler_id: str
    tasks: list[TaskRow] = field(default_factory=list)
    wants: list[tuple[str, str]] = field(default_factory=list)
    # The workers registered when the journal was last written (None: a journal from
    # before this was kept).
    workers: list[str] | None = None
    # Coordination primitives: (kind, name, row), and remembered answers
    # (client, request, ok, payload, number, error), oldest first.
    coordination: list[tuple[str, str, Any]] = field(default_factory=list)
    answers: list[tuple[str, str, bool, bytes | None, float, str]] = field(default_factory=list)


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False)


_MAGIC = b"SQLite format 3\x00"


def _check_file(path: str) -> None:
    """Refuse a file that is not whole SQLite pages, before SQLite sees it (SQLite would
    take an empty file, or one shorter than its header, for an empty database)."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return
    if size == 0:
        # regrow makes a journal whole before it bears its name (_create): an empty one
        # is damaged, or another program's, and must not quietly become a new journal.
        raise JournalError(
            f"{path} is an empty file, not a journal regrow made (it writes a new journal "
            "whole before giving it its name): it may be a damaged one. It was left "
            "untouched; move it away, or start with --journal-new to make it a new journal"
        )
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise JournalError(
            f"{path} is not a regrow journal (not an SQLite database file); it was left untouched"
        )
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header counts only if written with the current change counter.
    counted = header[24:28] == header[92:96]
    wal = f"{path}-wal"
    # With a WAL holding transactions, the main file may lag behind (SQLite reconciles them).
    bare = not os.path.exists(wal) or os.path.getsize(wal) == 0
    if page < 512 or size % page or (bare and counted and size < pages * page):
        raise JournalError(
            f"{path} is a truncated or damaged journal ({size:,} bytes; its header says "
            f"{pages:,} pages of {page:,} bytes); it was left untouched"
        )


def _write_schema(db: sqlite3.Connection) -> None:
    """Schema and identity in one transaction: a journal cut at its birth holds either
    nothing or both."""
    db.execute("BEGIN")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "INSERT OR REPLACE INTO meta VALUES ('version', ?), ('scheduler_id', ?)",
        (str(JOURNAL_VERSION), uuid.uuid4().hex),
    )
    db.execute("COMMIT")


def _create(path: str) -> None:
    """A new journal at ``path``, made whole under another name first and then renamed:
    a scheduler killed while making it leaves no empty or partial file at ``path``."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.new"
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            _write_schema(db)
        finally:
            db.close()
        os.replace(tmp, path)
    except (OSError, sqlite3.DatabaseError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise JournalError(f"cannot create the journal {path}: {exc}") from None


class Journal:
    def __init__(self, path: str | os.PathLike[str], *, new: bool = False) -> None:
        """Open the journal at ``path``, or create it where there is no file. ``new``
        (the operator's --journal-new): also make a new journal of an empty file; a
        file holding anything is refused all the same (nothing is ever overwritten)."""
        self.path = os.fspath(path)
        exists = os.path.exists(self.path)
        if new and exists and os.path.getsize(self.path) > 0:
            raise JournalError(
                f"--journal-new: {self.path} already holds data; it was left untouched "
                "(move it away to start a new journal there)"
            )
        if not exists or new:
            _create(self.path)
        _check_file(self.path)
        try:
            # check_same_thread=False: flushes run in a worker thread, one at a time (_lock).
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from None
        try:
            rows = self._check()
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; a power cut may lose
            # the last transactions but never corrupts the file.
            self.db.execute("PRAGMA synchronous=NORMAL")
            if not rows:
                # An SQLite file with no journal in it yet (an older regrow cut at the
                # birth of one): made a journal in place.
                _write_schema(self.db)
                rows = dict(self.db.execute("SELECT name, value FROM meta").fetchall())
            self.db.executescript(f"BEGIN; {_ADDED} COMMIT;")
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise JournalError(
                f"{self.path} is not a readable regrow journal ({exc}); it was left untouched"
            ) from None
        except BaseException:
            self.db.close()
            raise
        self.scheduler_id = rows["scheduler_id"]
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self.writes = 0

    def _check(self) -> dict[str, str]:
        """What the file holds, read before anything is written to it: its meta rows
        (none for a new journal). Refuses, with JournalError, anything but a whole
        regrow journal of this version (the caller closes the connection)."""
        tables = {
            name
            for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            return {}  # a new file, or one cut before its first transaction: nothing in it
        if "meta" not in tables:
            raise JournalError(
                f"{self.path} is an SQLite file but not a regrow journal; it was left untouched"
            )
        rows = dict(self.db.execute("SELECT name, value FROM meta").fetchall())
        if not rows and (
            "tasks" not in tables
            or self.db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
        ):
            return {}  # cut at its birth by an older regrow (schema not yet whole)
        version = rows.get("version", "?")
        if version != str(JOURNAL_VERSION):
            raise JournalError(
                f"{self.path} is a regrow journal of version {version}; this regrow reads "
                f"version {JOURNAL_VERSION}. Inspect it with a matching regrow, or move it away."
            )
        if "scheduler_id" not in rows or not {"tasks", "wants"} <= tables:
            raise JournalError(
                f"{self.path} is an incomplete regrow journal (tables {sorted(tables)}, "
                f"meta {sorted(rows)}); it was left untouched"
            )
        problems = [" ".join(r.split()) for (r,) in self.db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise JournalError(
                f"{self.path} is a damaged regrow journal ({'; '.join(problems)}); "
                "it was left untouched"
            )
        return rows

    # -- recording (cheap: appends to a list) ---------------------------------
    def task_added(
        self,
        key: str,
        deps: list[str],
        run_spec: tuple[int, list[Any]] | None,
        priority: int,
        retries: int,
        workers: list[str] | None,
        pure: bool,
        replicas: int = 1,
    ) -> None:
        spec = None
        if run_spec is not None:
            fnf, frames = run_spec
            spec = _pack([fnf, [bytes(f) for f in frames]])
        self._pending.append(
            (
                "INSERT OR REPLACE INTO tasks (key, deps, run_spec, priority, retries, workers,"
                " pure, state, replicas) VALUES (?, ?, ?, ?, ?, ?, ?, 'released', ?)",
                (
                    key,
                    _pack(deps),
                    spec,
                    priority,
                    retries,
                    _pack(workers),
                    int(pure),
                    replicas,
                ),
            )
        )

    def task_state(
        self,
        key: str,
        state: str,
        nbytes: int = 0,
        type_name: str = "",
        location: str = "",
        error: dict[str, Any] | None = None,
    ) -> None:
        self._pending.append(
            (
                "UPDATE tasks SET state = ?, nbytes = ?, type = ?, location = ?, error = ?"
                " WHERE key = ?",
                (state, nbytes, type_name, location, _pack(error) if error else None, key),
            )
        )

    def task_forgotten(self, key: str) -> None:
        self._pending.append(("DELETE FROM tasks WHERE key = ?", (key,)))
        self._pending.append(("DELETE FROM wants WHERE key = ?", (key,)))

    def client_gone(self, client: str) -> None:
        self._pending.append(("DELETE FROM wants WHERE client = ?", (client,)))

    def want(self, client: str, key: str, wanted: bool) -> None:
        if wanted:
            self._pending.append(("INSERT OR IGNORE INTO wants VALUES (?, ?)", (client, key)))
        else:
            self._pending.append(("DELETE FROM wants WHERE client = ? AND key = ?", (client, key)))

    def workers_now(self, addresses: list[str]) -> None:
        """The workers registered now: those a restarted scheduler waits for."""
        self._pending.append(
            ("INSERT OR REPLACE INTO meta VALUES ('workers', ?)", (json.dumps(addresses),))
        )

    def clear(self) -> None:
        self._pending.append(("DELETE FROM tasks", ()))
        self._pending.append(("DELETE FROM wants", ()))

    def coordination_row(self, kind: str, name: str, data: object | None) -> None:
        """What a coordination primitive holds now (None: nothing, its row goes)."""
        if data is None:
            self._pending.append(
                ("DELETE FROM coordination WHERE kind = ? AND name = ?", (kind, name))
            )
        else:
            self._pending.append(
                ("INSERT OR REPLACE INTO coordination VALUES (?, ?, ?)", (kind, name, _pack(data)))
            )

    def answer_kept(
        self,
        client: str,
        request: str,
        ok: bool,
        payload: bytes | None,
        number: float,
        error: str,
    ) -> None:
        """An answer to remember (see ``answers_trimmed``)."""
        self._pending.append(
            (
                "INSERT OR REPLACE INTO coordination_answers (client, request, ok, payload,"
                " number, error) VALUES (?, ?, ?, ?, ?, ?)",
                (client, request, int(ok), payload, number, error),
            )
        )

    def answers_trimmed(self, kept: int) -> None:
        """Only the newest ``kept`` answers stay."""
        self._pending.append(
            (
                "DELETE FROM coordination_answers WHERE seq <= "
                "(SELECT MAX(seq) FROM coordination_answers) - ?",
                (kept,),
            )
        )

    # -- writing ------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Hand over what was recorded since the last take (call in the loop's thread)."""
        batch, self._pending = self._pending, []
        return batch

    def write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Write a batch in one transaction (safe to call from another thread)."""
        if not batch:
            return
        with self._lock:
            self.db.execute("BEGIN")
            try:
                # Runs of the same statement in one executemany: the order is kept, and a
                # 10,000-task run's ~50,000 statements cost a few hundred Python calls
                # (one execute() per statement was 30% of the journaled scheduler's CPU).
                for sql, run in itertools.groupby(batch, key=operator.itemgetter(0)):
                    self.db.executemany(sql, [args for _, args in run])
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self.writes += len(batch)

    def flush(self) -> None:
        self.write(self.take())

    # -- reading ------------------------------------------------------------------
    def load(self) -> Snapshot:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, TypeError, IndexError) as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from None

    def _load(self) -> Snapshot:
        snap = Snapshot(self.scheduler_id)
        with self._lock:
            for row in self.db.execute(
                "SELECT key, deps, run_spec, priority, retries, workers, pure, state, nbytes,"
                " type, location, error, replicas FROM tasks ORDER BY rowid"
            ):
                spec = _unpack(row[2])
                snap.tasks.append(
                    TaskRow(
                        key=row[0],
                        deps=_unpack(row[1]),
                        run_spec=(spec[0], spec[1]) if spec is not None else None,
                        priority=row[3],
                        retries=row[4],
                        workers=_unpack(row[5]),
                        pure=bool(row[6]),
                        state=row[7],
                        nbytes=row[8],
                        type_name=row[9],
                        location=row[10],
                        error=_unpack(row[11]),
                        replicas=row[12],
                    )
                )
            snap.wants = [(c, k) for c, k in self.db.execute("SELECT client, key FROM wants")]
            row = self.db.execute("SELECT value FROM meta WHERE name = 'workers'").fetchone()
            if row is not None:
                workers = json.loads(row[0])
                if not isinstance(workers, list) or not all(isinstance(w, str) for w in workers):
                    raise ValueError("meta 'workers' is not a list of addresses")
                snap.workers = workers
            for kind, name, data in self.db.execute("SELECT kind, name, data FROM coordination"):
                snap.coordination.append((kind, name, _unpack(data)))
            for client, request, ok, payload, number, error in self.db.execute(
                "SELECT client, request, ok, payload, number, error FROM coordination_answers"
                " ORDER BY seq"
            ):
                snap.answers.append((client, request, bool(ok), payload, number, error))
        return snap

    def summary(self) -> dict[str, Any]:
        """What ``regrow journal inspect`` prints."""
        with self._lock:
            states = dict(
                self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
            )
            clients = dict(
                self.db.execute("SELECT client, COUNT(*) FROM wants GROUP BY client").fetchall()
            )
            scattered = self.db.execute(
                "SELECT COUNT(*) FROM tasks WHERE run_spec IS NULL"
            ).fetchone()[0]
            nbytes = self.db.execute(
                "SELECT COALESCE(SUM(nbytes), 0) FROM tasks WHERE state = 'memory'"
            ).fetchone()[0]
        size = os.path.getsize(self.path)
        wal = self.path + "-wal"
        if os.path.exists(wal):
            size += os.path.getsize(wal)
        return {
            "path": self.path,
            "version": JOURNAL_VERSION,
            "scheduler_id": self.scheduler_id,
            "tasks": sum(states.values()),
            "by_state": states,
            "scattered": scattered,
            "clients": clients,
            "result_bytes": nbytes,
            "file_bytes": size,
        }

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.DatabaseError):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()
