"""A persistent latency cache shared by processes: one SQLite database (stdlib sqlite3, WAL).

One table, `latency`, keyed by the `CacheKey` columns (arch/file key, backend, device, resolution,
threads, runtime version, precision, machine); a row holds the `LatencyStats` as JSON. A put
replaces the entry of its key, so the latest measurement wins. WAL and a 60 s busy timeout let
several search workers on one machine read and write the file at once (not on a network file
system: SQLite's locks need a local one). Rows of another `SCHEMA` are ignored, and the runtime
version is part of the key, so upgrading a runtime turns old entries into misses;
`compact(keep=...)` drops them from the file.

A file that is not this cache (damaged, truncated, another program's database) is a one-line
UserError naming it (exit 2 from the CLIs), raised when the cache is opened, before any work:
delete or move it aside, a cache only saves re-measuring. A JSON-lines cache written by an
older version under the same name is imported once (its current-schema lines) and kept beside
it as `<name>.jsonl`.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, fields
from pathlib import Path

from filelock import FileLock

from nas.errors import UserError
from nas.latency._stats import CacheKey, LatencyStats

SCHEMA = 2  # 2: precision and machine fingerprint in the key (schema-1 entries had neither: ignored)
ENV_VAR = "VITNAS_LATENCY_CACHE"
PREPARE_RETRY_SECONDS = 30.0  # how long opening retries a "locked" answer (see LatencyCache._db)
APPLICATION_ID = 0x764E4C43  # "vNLC" in the header: marks a database as this cache
_MAGIC = b"SQLite format 3\x00"
_KEY_COLUMNS = tuple(f.name for f in fields(CacheKey))
_TABLE = f"""CREATE TABLE IF NOT EXISTS latency (
    key TEXT NOT NULL, backend TEXT NOT NULL, device TEXT NOT NULL, resolution INTEGER NOT NULL,
    threads INTEGER NOT NULL, runtime_version TEXT NOT NULL, precision TEXT NOT NULL, machine TEXT NOT NULL,
    schema INTEGER NOT NULL, estimate_ms REAL NOT NULL, measured_at REAL NOT NULL, stats TEXT NOT NULL,
    PRIMARY KEY ({", ".join(_KEY_COLUMNS)}))"""
_WHERE_KEY = " AND ".join(f"{c} = ?" for c in _KEY_COLUMNS)


class CacheError(UserError):
    """The cache file cannot be used (damaged or not a latency cache): one line naming it."""


def default_cache_path() -> Path:
    """$VITNAS_LATENCY_CACHE, else $XDG_CACHE_HOME/vitnas/latency.sqlite (~/.cache by default)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vitnas" / "latency.sqlite"


class LatencyCache:
    """Latest `LatencyStats` per `CacheKey`, persisted in the SQLite database at `path`.

    An existing file is checked when the cache is constructed; a missing one is created on first use.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self.hits = 0
        self.misses = 0
        if self.path.is_dir():
            raise CacheError(f"{self.path}: a directory, not a latency cache file; pass a file path")
        if self.path.exists():  # check it now, then let go: a refused command leaves no -wal/-shm behind
            self._db()
            self.close()

    def __repr__(self) -> str:
        return f"LatencyCache({str(self.path)!r})"

    def close(self) -> None:
        """Close this process's connection (the next use reopens it)."""
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def __len__(self) -> int:
        return len(self.entries())

    def get(self, key: CacheKey) -> LatencyStats | None:
        rows = self._query(f"SELECT stats FROM latency WHERE {_WHERE_KEY} AND schema = ?", (*astuple(key), SCHEMA))
        stats = next(_parsed(rows), None)
        if stats is None:
            self.misses += 1
        else:
            self.hits += 1
        return stats

    def put(self, stats: LatencyStats) -> None:
        if not stats.key:
            raise ValueError("only keyed measurements can be cached (LatencyStats.key is empty)")
        self._query("INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*astuple(stats.cache_key()), SCHEMA, stats.estimate_ms, stats.measured_at,
                     json.dumps(stats.to_dict(), sort_keys=True)))

    def entries(self) -> list[LatencyStats]:
        return list(_parsed(self._query("SELECT stats FROM latency WHERE schema = ?", (SCHEMA,))))

    def compact(self, keep: Callable[[LatencyStats], bool] | None = None) -> int:
        """Drop entries of other schemas, unreadable ones and those `keep` rejects; returns how many remain.

        E.g. `cache.compact(lambda s: s.runtime_version == current)` drops stale versions.
        """
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            drop = []
            for rowid, schema, text in db.execute("SELECT rowid, schema, stats FROM latency").fetchall():
                stats = next(_parsed([(text,)]), None) if schema == SCHEMA else None
                if stats is None or (keep is not None and not keep(stats)):
                    drop.append((rowid,))
            db.executemany("DELETE FROM latency WHERE rowid = ?", drop)
            db.execute("COMMIT")
            return db.execute("SELECT count(*) FROM latency").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise self._error(exc) from None

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        db = self._db()
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def _db(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own), opened and checked on first use."""
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _import_json_lines(self.path)
        header = _header(self.path)
        if header and header != _MAGIC:
            raise CacheError(f"{self.path}: not a latency cache (not an SQLite database); delete it or move it "
                             "aside (a cache only saves re-measuring)")
        deadline = time.monotonic() + PREPARE_RETRY_SECONDS
        for attempt in itertools.count():
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            try:
                _prepare(db, self.path)
                break
            except sqlite3.OperationalError as exc:
                db.close()
                # Switching a fresh file to WAL (or recovering one) answers "locked" at once to processes
                # opening it meanwhile, without waiting out the busy timeout: wait and try again.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise self._error(exc) from None
                time.sleep(min(1.0, 0.05 * (attempt + 1)))
            except sqlite3.DatabaseError as exc:
                db.close()
                raise self._error(exc) from None
            except BaseException:
                db.close()
                raise
        self._connection, self._pid = db, os.getpid()
        return db

    def _error(self, exc: sqlite3.DatabaseError) -> CacheError:
        return CacheError(f"{self.path}: cannot use the latency cache ({exc}); if it is damaged, delete it or move "
                          "it aside (a cache only saves re-measuring)")


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """WAL, the table and the application id; refuse another program's database or a damaged one."""
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; a power cut may lose the last entries
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if application_id not in (0, APPLICATION_ID) or (tables and "latency" not in tables):
        raise CacheError(f"{path}: another program's SQLite database, not a latency cache; pass another cache path")
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check: {check}")
    if application_id == 0 or "latency" not in tables:
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(_TABLE)
        db.execute("COMMIT")


def _header(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_MAGIC))
    except FileNotFoundError:
        return b""


def _import_json_lines(path: Path) -> None:
    """Caches before the SQLite one were JSON lines under the same name: import their current-schema
    lines once (under a file lock, as workers may start together), keep the old file as <name>.jsonl."""
    if not _header(path).lstrip().startswith(b"{"):
        return
    with FileLock(str(path) + ".lock"):
        if not _header(path).lstrip().startswith(b"{"):
            return  # another process imported it meanwhile
        legacy = path.with_name(path.name + ".jsonl")
        os.replace(path, legacy)
        cache = LatencyCache(path)
        for stats in _parsed_lines(legacy.read_bytes()):
            cache.put(stats)
        cache.close()


def _parsed_lines(data: bytes) -> Iterator[LatencyStats]:
    for raw in data.splitlines():
        try:
            record = json.loads(raw)
            if record.get("schema") == SCHEMA:
                yield LatencyStats.from_dict(record["stats"])
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a torn or foreign line


def _parsed(rows: list[tuple] | Iterator[tuple]) -> Iterator[LatencyStats]:
    for (text,) in rows:
        try:
            yield LatencyStats.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a row from a foreign writer: a miss rather than a failed search
