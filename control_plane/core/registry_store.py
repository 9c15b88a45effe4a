"""Where the controller's registry outlives the controller: jobs, outcomes and checkpoints.

The controller is a detached actor that Ray restarts by running ``__init__`` again, with
nothing of the old process kept. So each thing a restarted controller needs is written here
as it happens, and read back whole at start-up:

* ``jobs``: one row a job: what it is (name, owner, the pickled target, arguments and
  options, so that a lost actor can be made again), where it is (state, progress, message,
  error), and how many times it was restarted;
* ``outcomes``: the return value or the typed error of a finished job, pickled, so that
  ``ray.get(job.result)`` answers after a restart. A value over ``inline_limit`` bytes
  (1 MiB by default) goes to a file ``results/<job_id>.pickle`` beside the database, and
  the row names it: SQLite keeps a large blob in overflow pages of the one file, and a few
  such results would make each start-up read and each vacuum copy them;
* ``checkpoints``: each job's last ``ctx.save`` state, pickled (``max_checkpoint`` bytes).

:class:`RegistryStore` is the interface; :class:`SqliteRegistryStore`, on the standard
library's ``sqlite3`` (WAL, one transaction per call), is the embedded default. No Ray here
(pickling happens in the controller), so ``tests/unit/test_registry_store.py`` runs it in
milliseconds. The file is written by one process only, the controller, on one thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

from jobs.lifecycle import TERMINAL_STATES

INLINE_LIMIT = 1 << 20  # outcome bytes kept in the database; larger ones go to a file
MAX_CHECKPOINT = 16 << 20  # a ctx.save state larger than this is refused


class CheckpointTooLarge(ValueError):
    """A ``ctx.save`` state over the store's limit."""


@dataclass
class StoredJob:
    """One job's row: what the controller needs to show it, control it and make it again."""

    job_id: str
    name: str
    owner: str
    created_at: str
    spec: bytes  # the pickled (target, args, kwargs, options)
    state: str = "pending"
    progress: float = 0.0
    message: str | None = None
    updated_at: str = ""
    error: str | None = None
    forced: bool = False
    restarts: int = 0


@dataclass
class StoredOutcome:
    """A finished job's outcome: ``kind`` is ``value`` or ``error``; ``blob`` is pickled."""

    kind: str
    blob: bytes


_JOB_COLUMNS = [f.name for f in fields(StoredJob)]
_STATE_COLUMNS = ["state", "progress", "message", "updated_at", "error", "forced", "restarts"]
# A finished job's row is final: a late event (or a stale copy of the job) never reopens it.
_FINAL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES))


class RegistryStore(Protocol):
    """The registry's storage; one writer (the controller)."""

    def put_job(self, job: StoredJob) -> None:
        """Insert or replace a job's whole row."""

    def update_jobs(self, jobs: Iterable[StoredJob]) -> None:
        """Write the state columns of existing rows, in one transaction; a row already in a
        terminal state keeps it."""

    def jobs(self) -> list[StoredJob]:
        """Every job, oldest first."""

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop jobs with their outcomes and checkpoints."""

    def put_outcome(self, job_id: str, outcome: StoredOutcome) -> None: ...

    def outcome(self, job_id: str) -> StoredOutcome | None: ...

    def put_checkpoint(self, job_id: str, blob: bytes) -> None: ...

    def checkpoint(self, job_id: str) -> bytes | None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL,
    created_at TEXT NOT NULL, spec BLOB NOT NULL, state TEXT NOT NULL,
    progress REAL NOT NULL, message TEXT, updated_at TEXT NOT NULL, error TEXT,
    forced INTEGER NOT NULL, restarts INTEGER NOT NULL, added INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, blob BLOB, file TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT PRIMARY KEY, blob BLOB NOT NULL
);
"""


class SqliteRegistryStore:
    """:class:`RegistryStore` in one SQLite file (``":memory:"`` for tests, no spill files
    then unless ``spill_dir`` is given)."""

    def __init__(
        self,
        path: str | Path,
        spill_dir: str | Path | None = None,
        inline_limit: int = INLINE_LIMIT,
        max_checkpoint: int = MAX_CHECKPOINT,
    ) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            spill_dir = spill_dir or Path(path).parent / "results"
        # NORMAL in WAL mode: a commit survives a process crash (our case: a SIGKILLed
        # controller), only a power loss may take the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._spill = Path(spill_dir) if spill_dir is not None else None
        self._inline_limit = inline_limit
        self._max_checkpoint = max_checkpoint
        row = self._db.execute("SELECT COALESCE(MAX(added), 0) FROM jobs").fetchone()
        self._added = int(row[0])

    # --- jobs ----------------------------------------------------------------------------

    def put_job(self, job: StoredJob) -> None:
        self._added += 1
        values = [getattr(job, c) for c in _JOB_COLUMNS]
        marks = ", ".join("?" * (len(_JOB_COLUMNS) + 1))
        self._db.execute(
            f"INSERT OR REPLACE INTO jobs ({', '.join(_JOB_COLUMNS)}, added) VALUES ({marks})",
            [*values, self._added],
        )

    def update_jobs(self, jobs: Iterable[StoredJob]) -> None:
        rows = [[getattr(j, c) for c in _STATE_COLUMNS] + [j.job_id] for j in jobs]
        if not rows:
            return
        sets = ", ".join(f"{c} = ?" for c in _STATE_COLUMNS)
        with self._transaction():
            self._db.executemany(
                f"UPDATE jobs SET {sets} WHERE job_id = ? AND state NOT IN ({_FINAL})", rows
            )

    def jobs(self) -> list[StoredJob]:
        cursor = self._db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs ORDER BY added")
        out = []
        for row in cursor:
            job = StoredJob(**dict(zip(_JOB_COLUMNS, row, strict=True)))
            job.forced = bool(job.forced)
            out.append(job)
        return out

    def forget(self, job_ids: Iterable[str]) -> None:
        ids = [(j,) for j in job_ids]
        if not ids:
            return
        files = [
            row[0]
            for (job_id,) in ids
            for row in self._db.execute(
                "SELECT file FROM outcomes WHERE job_id = ? AND file IS NOT NULL", (job_id,)
            )
        ]
        with self._transaction():
            for table in ("jobs", "outcomes", "checkpoints"):
                self._db.executemany(f"DELETE FROM {table} WHERE job_id = ?", ids)
        for name in files:
            self._spill_path(name).unlink(missing_ok=True)

    # --- outcomes ------------------------------------------------------------------------

    def put_outcome(self, job_id: str, outcome: StoredOutcome) -> None:
        blob: bytes | None = outcome.blob
        file: str | None = None
        if len(outcome.blob) > self._inline_limit and self._spill is not None:
            file = f"{job_id}.pickle"
            self._spill.mkdir(parents=True, exist_ok=True)
            path = self._spill_path(file)
            partial = path.with_suffix(".partial")
            partial.write_bytes(outcome.blob)
            partial.replace(path)  # a crash leaves no half file under the name the row gives
            blob = None
        self._db.execute(
            "INSERT OR REPLACE INTO outcomes (job_id, kind, blob, file) VALUES (?, ?, ?, ?)",
            (job_id, outcome.kind, blob, file),
        )

    def outcome(self, job_id: str) -> StoredOutcome | None:
        row = self._db.execute(
            "SELECT kind, blob, file FROM outcomes WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        kind, blob, file = row
        if file is not None:
            blob = self._spill_path(file).read_bytes()
        return StoredOutcome(kind, bytes(blob))

    def _spill_path(self, name: str) -> Path:
        assert self._spill is not None
        return self._spill / name

    # --- checkpoints ---------------------------------------------------------------------

    def put_checkpoint(self, job_id: str, blob: bytes) -> None:
        if len(blob) > self._max_checkpoint:
            raise CheckpointTooLarge(
                f"a saved state of {len(blob):,} bytes is over the limit of "
                f"{self._max_checkpoint:,}: save a small state (say, a position) and keep "
                "large data elsewhere"
            )
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints (job_id, blob) VALUES (?, ?)", (job_id, blob)
        )

    def checkpoint(self, job_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT blob FROM checkpoints WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN`` … ``COMMIT`` (``ROLLBACK`` on an error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, et: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc is None else "ROLLBACK")
