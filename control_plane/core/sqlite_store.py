"""The embedded default :class:`~control_plane.core.event_store.EventStore`: one SQLite file.

Why it is shaped so:

* **A row per batch, not per event.** A publish is one transaction whatever its size; a
  row per event made each transaction a few hundred inserts. The row holds the batch's
  events as their encoded fields joined by NUL (JSON text never holds a raw NUL), compressed
  with zlib at level 1: about 14 bytes a job.progress event on disk against 238 as its
  frame (the ingest benchmark reports it), and about 2 µs an event for the whole write
  (0.2 µs without it), so one hub writes some 400,000 events/s; a 1,000,000-event log is
  read back in about 2.4 s (``benchmarks/recovery.py``).
* **WAL with ``synchronous=NORMAL``** (``synchronous`` is an argument): a commit is in the
  write-ahead log, in the OS's hands, before :meth:`SQLiteEventStore.append` returns, so it
  survives the hub's process being killed (SIGKILL, OOM) without an fsync per batch. A
  power loss or kernel crash may lose the last commits (never corrupt the file): ``FULL``
  fsyncs each commit for that, at a price per batch.
* **The publishers' next numbers in the same transaction as their batches**, so a restored
  hub never appends a batch twice nor waits for one that was written.
* **Errors are the publisher's.** Every ``sqlite3.Error`` (disk full, read-only file, I/O)
  becomes :class:`~control_plane.core.errors.EventLogError` after a rollback: the batch was
  not written, so it is not appended nor acknowledged. ``max_pages`` caps the file
  (``PRAGMA max_page_count``): SQLite then fails with SQLITE_FULL as on a full disk, which
  tests use to fill the log for real.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

from control_plane.core.encoding import Encoded
from control_plane.core.errors import EventLogError
from control_plane.core.event_store import Restored, StoredBatch

__all__ = ["SQLiteEventStore", "decode_events", "encode_events"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    target TEXT NOT NULL,
    at REAL NOT NULL,
    events BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS publishers (
    name TEXT PRIMARY KEY,
    expected INTEGER NOT NULL,
    at REAL NOT NULL
);
"""

_JOINED = b"N"  # the fields joined by NUL
_JSON = b"J"  # a field held a NUL (not from our encoders): a JSON list instead


def encode_events(events: list[Encoded]) -> bytes:
    """A batch's events as one compressed blob."""
    fields = list(chain.from_iterable(events))
    text = "\x00".join(fields)
    if text.count("\x00") == len(fields) - 1:
        return _JOINED + zlib.compress(text.encode(), 1)
    return _JSON + zlib.compress(json.dumps(events).encode(), 1)


def decode_events(blob: bytes) -> list[Encoded]:
    kind, body = blob[:1], zlib.decompress(blob[1:]).decode()
    if kind == _JSON:
        return [(e[0], e[1], e[2], e[3]) for e in json.loads(body)]
    parts = iter(body.split("\x00"))
    return list(zip(parts, parts, parts, parts, strict=True))


class SQLiteEventStore:
    """The hub's log in ``path`` (``":memory:"`` for tests)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        max_pages: int | None = None,
        read_only: bool = False,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self._db = self._open(read_only)
        if max_pages is not None:
            self.set_max_pages(max_pages)

    def _open(self, read_only: bool) -> sqlite3.Connection:
        try:
            if read_only:
                uri = f"file:{self.path}?mode=ro"
                db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file only: see fill()
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous}")
                db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise EventLogError(f"the event log {self.path} cannot be opened: {e}") from e
        return db

    # --- the interface ---------------------------------------------------------------------

    def load(self) -> Restored:
        try:
            db = self._db
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            rows = db.execute(
                "SELECT first_seq, target, at, events FROM batches ORDER BY first_seq"
            ).fetchall()
            publishers = dict(db.execute("SELECT name, expected FROM publishers").fetchall())
        except sqlite3.Error as e:
            raise EventLogError(f"the event log {self.path} cannot be read: {e}") from e
        batches = [StoredBatch(s, t, at, decode_events(blob)) for s, t, at, blob in rows]
        batches = _contiguous_tail(batches)
        head = max(int(meta.get("head", 0)), batches[-1].last_seq if batches else 0)
        return Restored(meta.get("epoch"), head, batches, publishers)

    def begin(self, epoch: str) -> None:
        self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,)
            )
        )

    def append(self, batches: list[StoredBatch], publishers: dict[str, int]) -> None:
        if not batches and not publishers:
            return
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO batches (first_seq, last_seq, target, at, events) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (b.first_seq, b.last_seq, b.target, b.at, encode_events(b.events))
                    for b in batches
                ],
            )
            if publishers:
                db.executemany(
                    "INSERT OR REPLACE INTO publishers (name, expected, at) VALUES (?, ?, ?)",
                    [(name, expected, now) for name, expected in publishers.items()],
                )

        self._write(write)

    def retain(self, oldest_seq: int, older_than: float, publishers_before: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            # The head survives the rows that held it.
            head = db.execute("SELECT max(last_seq) FROM batches").fetchone()[0]
            if head is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)", (str(head),)
                )
            cut = db.execute(
                "SELECT coalesce(max(last_seq), 0) FROM batches WHERE at < ?", (older_than,)
            ).fetchone()[0]
            cut = max(cut + 1, oldest_seq)
            db.execute("DELETE FROM batches WHERE first_seq < ? AND last_seq < ?", (cut, cut))
            db.execute("DELETE FROM publishers WHERE at < ?", (publishers_before,))

        self._write(write)

    def close(self) -> None:
        self._db.close()

    # --- for tests and benchmarks ----------------------------------------------------------

    def set_max_pages(self, pages: int) -> int:
        """Cap the file at ``pages`` pages (never below its size); return the cap."""
        row = self._db.execute(f"PRAGMA max_page_count={int(pages)}").fetchone()
        return int(row[0])

    def fill(self) -> int:
        """Cap the file at its present size, its free pages given back first: the next write
        that needs a page fails with SQLITE_FULL, as on a full disk. Returns the cap."""
        self._db.execute("PRAGMA incremental_vacuum").fetchall()
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return self.set_max_pages(pages)

    def reopen(self, read_only: bool) -> None:
        """Open the file again, read-only or writable (a read-only one refuses every write
        with SQLITE_READONLY, as a file on a read-only mount)."""
        self._db.close()
        self._db = self._open(read_only)

    def stats(self, frames: bool = False) -> dict[str, Any]:
        """The file's ``path``, the ``bytes`` its pages in use take, the ``batches`` and
        ``events`` it holds; with ``frames``, ``frame_bytes``: those events as the frames
        sent to sockets (decodes every batch)."""
        db = self._db
        pages, free, size = (
            int(db.execute(f"PRAGMA {p}").fetchone()[0])
            for p in ("page_count", "freelist_count", "page_size")
        )
        rows, events = db.execute(
            "SELECT count(*), coalesce(sum(last_seq - first_seq + 1), 0) FROM batches"
        ).fetchone()
        out: dict[str, Any] = {
            "path": self.path,
            "bytes": (pages - free) * size,
            "batches": int(rows),
            "events": int(events),
        }
        if frames:
            out["frame_bytes"] = sum(
                len(head) + len(tail) + len(f',"seq":{first + k}')
                for first, blob in db.execute("SELECT first_seq, events FROM batches")
                for k, (_, _, head, tail) in enumerate(decode_events(blob))
            )
        return out

    def _write(self, write: Callable[[sqlite3.Connection], object]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                write(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise EventLogError(f"the event log {self.path} could not be written: {e}") from e


def _contiguous_tail(batches: list[StoredBatch]) -> list[StoredBatch]:
    """The batches after the last gap in their seqs (a log is contiguous; a gap means the
    part before it cannot be served as the history of what follows)."""
    start = 0
    for i in range(1, len(batches)):
        if batches[i].first_seq != batches[i - 1].last_seq + 1:
            start = i
    return batches[start:]
