"""The journal of a batch job: one SQLite file (WAL mode) that records every item.

Only the parent process writes it, from one thread. Rows are keyed on the item's
*content*, never its position::

    key = blake2b(salt + canonical JSON of the item [+ occurrence number], 16 bytes)

``salt`` is drawn when the journal is created and kept in it, so a resumed job finds the
same keys whatever the order of its input. The job's definition (mode, function or
command template, options that change results) is stored beside it; a later run with a
different definition is refused unless forced (``check_definition``).

Tables::

    job(name TEXT PRIMARY KEY, value TEXT)     salt, definition, function source hash
    items(key BLOB PRIMARY KEY, seq, input, status, attempts, run, started, seconds,
          worker, result, error_type, error_message, exit_code, signal, stdout, stderr)
    runs(id INTEGER PRIMARY KEY, argv, started, ended, outcome, ok, failed)

An item is ``running`` from dispatch until its outcome is written (``ok`` or
``failed``); a run that stops cleanly (Ctrl-C, SIGTERM, ``--halt``) sets its unfinished
items back to ``pending``. After a SIGKILL some items stay ``running``; the next run
treats them as not done. ``run`` is the id of the last run that read the item, which is
how a duplicate within one run is recognised without a set in memory.

Writes go to the connection at once (so lookups see them) but are committed every
``COMMIT_SECONDS`` or ``COMMIT_ROWS`` rows: committing each row costs about ten times
more. What a SIGKILL can lose is therefore the last ~0.1 s of outcomes, which a resume
runs again: delivery is at least once.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from hashlib import blake2b
from typing import Any

COMMIT_SECONDS = 0.1
COMMIT_ROWS = 500
STATUSES = ("pending", "running", "ok", "failed")

# Columns of an outcome, in the order ``record`` takes them.
OUTCOME_COLUMNS = ("status", "attempts", "started", "seconds", "worker", "result",
                   "error_type", "error_message", "exit_code", "signal", "stdout", "stderr")
ROW_COLUMNS = ("key", "seq", "input", "run", *OUTCOME_COLUMNS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key BLOB PRIMARY KEY, seq INTEGER, input TEXT NOT NULL, run INTEGER,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, started REAL, seconds REAL,
    worker INTEGER, result TEXT, error_type TEXT, error_message TEXT,
    exit_code INTEGER, signal TEXT, stdout TEXT, stderr TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, argv TEXT, started REAL, ended REAL, outcome TEXT,
    ok INTEGER DEFAULT 0, failed INTEGER DEFAULT 0
);
"""


class JournalError(Exception):
    """The journal cannot be used for this job (in use, not a journal, or another job's)."""


class JournalBusyError(JournalError):
    """Another conveyor process has this journal open."""


def canonical(value: Any) -> str:
    """The item's content as compact JSON with sorted keys: equal items, equal text."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise TypeError(f"item {value!r} is not JSON data") from None
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes that were not UTF-8: escaped, so SQLite can store it
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text


def make_key(salt: bytes, content: str, occurrence: int = 0) -> bytes:
    """The key of the ``occurrence``-th copy (from 0) of an item with this content."""
    h = blake2b(salt, digest_size=16)
    # surrogatepass: a line that was not valid UTF-8 (read with surrogateescape) still hashes.
    h.update(content.encode("utf-8", "surrogatepass"))
    if occurrence:
        h.update(b"\0%d" % occurrence)
    return h.digest()


class Journal:
    """An open journal. ``path`` may be ``None`` for a private temporary one."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._in_tx = False
        self._last_commit = time.monotonic()
        self._uncommitted = 0
        self._running: list[tuple[Any, ...]] = []
        self._outcomes: list[tuple[Any, ...]] = []
        self._touched: list[tuple[Any, ...]] = []
        if readonly:
            if not os.path.exists(path):
                raise JournalError(f"no journal at {path}")
            uri = f"file:{path}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise JournalBusyError(
                    f"the journal {path} is in use by another conveyor process") from None
            self.db = sqlite3.connect(path, isolation_level=None)
        try:
            self.db.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(_SCHEMA)
            self.db.execute("SELECT count(*) FROM items").fetchone()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise JournalError(f"{path} is not a conveyor journal ({exc})") from None

    # ------------------------------------------------------------------ job metadata

    def get(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM job WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, name: str, value: str) -> None:
        self._begin()
        self.db.execute("INSERT INTO job(name, value) VALUES (?, ?) ON CONFLICT(name) "
                        "DO UPDATE SET value = excluded.value", (name, value))

    def salt(self) -> bytes:
        """The journal's key salt, drawn on first use."""
        value = self.get("salt")
        if value is None:
            value = os.urandom(16).hex()
            self.set("salt", value)
            self.commit()
        return bytes.fromhex(value)

    def definition(self) -> dict[str, Any] | None:
        text = self.get("definition")
        return None if text is None else dict(json.loads(text))

    def item_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM items").fetchone()[0])

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.db.execute("SELECT status, count(*) FROM items GROUP BY status"):
            counts[status] = n
        return counts

    def clear(self) -> None:
        """Forget every item and run (``--fresh``); keeps nothing of the old job."""
        self._begin()
        self.db.execute("DELETE FROM items")
        self.db.execute("DELETE FROM runs")
        self.db.execute("DELETE FROM job")
        self.commit()

    # ------------------------------------------------------------------------ runs

    def start_run(self, argv: Sequence[str]) -> int:
        self._begin()
        cur = self.db.execute("INSERT INTO runs(argv, started, outcome) VALUES (?, ?, ?)",
                              (json.dumps(list(argv)), time.time(), "running"))
        self.commit()
        return int(cur.lastrowid or 0)

    def end_run(self, run: int, outcome: str, ok: int, failed: int) -> None:
        self._begin()
        self.db.execute("UPDATE runs SET ended = ?, outcome = ?, ok = ?, failed = ? "
                        "WHERE id = ?", (time.time(), outcome, ok, failed, run))

    def runs(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, argv, started, ended, outcome, ok, failed FROM runs "
                              "ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    # ------------------------------------------------------------------------ items

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, dict[str, Any]]:
        """The rows of these keys that exist, as dicts (buffered writes included)."""
        self._apply()
        found: dict[bytes, dict[str, Any]] = {}
        cols = ", ".join(ROW_COLUMNS)
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT {cols} FROM items WHERE key IN ({marks})", part):
                found[row[0]] = dict(zip(ROW_COLUMNS, row, strict=True))
        return found

    def touch(self, key: bytes, seq: int, run: int) -> None:
        """Mark an item read by this run without running it (a resume skips it)."""
        self._touched.append((seq, run, key))
        self._maybe_commit()

    def mark_running(self, key: bytes, seq: int, content: str, run: int) -> None:
        self._running.append((key, seq, content, run))
        self._maybe_commit()

    def record(self, key: bytes, outcome: Sequence[Any]) -> None:
        """Write an item's outcome: values for ``OUTCOME_COLUMNS``."""
        self._outcomes.append((*outcome, key))
        self._maybe_commit()

    def reset_running(self) -> int:
        """Unfinished items back to ``pending`` (a run that stops cleanly)."""
        self._apply()
        self._begin()
        cur = self.db.execute("UPDATE items SET status = 'pending' WHERE status = 'running'")
        return cur.rowcount

    def _apply(self) -> None:
        if not (self._running or self._outcomes or self._touched):
            return
        self._begin()
        if self._running:
            self.db.executemany(
                "INSERT INTO items(key, seq, input, run, status) VALUES (?, ?, ?, ?, 'running') "
                "ON CONFLICT(key) DO UPDATE SET seq = excluded.seq, run = excluded.run, "
                "status = 'running'", self._running)
            self._running.clear()
        if self._touched:
            self.db.executemany("UPDATE items SET seq = ?, run = ? WHERE key = ?", self._touched)
            self._touched.clear()
        if self._outcomes:
            sets = ", ".join(f"{c} = ?" for c in OUTCOME_COLUMNS)
            self.db.executemany(f"UPDATE items SET {sets} WHERE key = ?", self._outcomes)
            self._outcomes.clear()

    def _begin(self) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _maybe_commit(self) -> None:
        self._uncommitted += 1
        if (self._uncommitted >= COMMIT_ROWS
                or time.monotonic() - self._last_commit >= COMMIT_SECONDS):
            self.commit()

    def tick(self) -> None:
        """Commit if the last commit is older than ``COMMIT_SECONDS`` (call when idle)."""
        if self._uncommitted and time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        self._apply()
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False
        self._uncommitted = 0
        self._last_commit = time.monotonic()

    def iter_items(self, statuses: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Rows in input order (``seq`` of the run that last read them)."""
        cols = ", ".join(ROW_COLUMNS)
        if statuses is None:
            cur = self.db.execute(f"SELECT {cols} FROM items ORDER BY seq")
        else:
            wanted = list(statuses)
            marks = ",".join("?" * len(wanted))
            cur = self.db.execute(
                f"SELECT {cols} FROM items WHERE status IN ({marks}) ORDER BY seq", wanted)
        while True:
            rows = cur.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield dict(zip(ROW_COLUMNS, row, strict=True))

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            if not self.readonly and self._in_tx:
                self.commit()
            db.close()
            self.db = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
