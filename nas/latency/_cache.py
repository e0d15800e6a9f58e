"""A persistent latency cache shared by processes: a JSON-lines file plus a file lock.

One line per measurement, appended under the lock, so several search workers can share one file
and a person can read it. A reader never takes the lock: it reads only complete lines and
remembers how far it got, so repeated lookups read just what other processes appended since.
A torn last line (a writer killed mid-write) is skipped. `compact()` rewrites the file atomically
(temporary file + rename). The runtime version is part of the key, so upgrading a runtime turns
old entries into misses; `compact(keep=...)` can drop them from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from nas.latency._stats import CacheKey, LatencyStats

SCHEMA = 2  # 2: precision and machine fingerprint in the key (schema-1 entries had neither: ignored)
ENV_VAR = "VITNAS_LATENCY_CACHE"


def default_cache_path() -> Path:
    """$VITNAS_LATENCY_CACHE, else $XDG_CACHE_HOME/vitnas/latency.jsonl (~/.cache by default)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vitnas" / "latency.jsonl"


class LatencyCache:
    """Latest `LatencyStats` per `CacheKey`, persisted in `path`."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._lock = FileLock(str(self.path) + ".lock")
        self._entries: dict[str, LatencyStats] = {}
        self._offset = 0
        self._inode: int | None = None
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"LatencyCache({str(self.path)!r})"

    def __len__(self) -> int:
        self._refresh()
        return len(self._entries)

    def get(self, key: CacheKey) -> LatencyStats | None:
        self._refresh()
        stats = self._entries.get(key.as_str())
        if stats is None:
            self.misses += 1
        else:
            self.hits += 1
        return stats

    def put(self, stats: LatencyStats) -> None:
        if not stats.key:
            raise ValueError("only keyed measurements can be cached (LatencyStats.key is empty)")
        line = (json.dumps({"schema": SCHEMA, "stats": stats.to_dict()}, sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":  # a writer died mid-line: don't glue ours onto it
                    line = b"\n" + line
            handle.write(line)  # one write of one line, under the lock: never interleaved
        self._entries[stats.cache_key().as_str()] = stats

    def entries(self) -> list[LatencyStats]:
        self._refresh()
        return list(self._entries.values())

    def compact(self, keep: Callable[[LatencyStats], bool] | None = None) -> int:
        """Rewrite the file with the latest entry per key (and only those `keep` accepts).

        E.g. `cache.compact(lambda s: s.runtime_version == current)` drops stale versions.
        Returns the number of entries kept.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._offset, self._inode, self._entries = 0, None, {}
            self._refresh()
            kept = [s for s in self._entries.values() if keep is None or keep(s)]
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    for stats in kept:
                        handle.write(json.dumps({"schema": SCHEMA, "stats": stats.to_dict()},
                                                sort_keys=True) + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._offset, self._inode, self._entries = 0, None, {}
        return len(kept)

    def _refresh(self) -> None:
        """Read lines appended since the last call (everything again if the file was replaced)."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            self._offset, self._inode, self._entries = 0, None, {}
            return
        with handle:
            info = os.fstat(handle.fileno())
            if info.st_ino != self._inode or info.st_size < self._offset:
                self._offset, self._inode, self._entries = 0, info.st_ino, {}
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # only complete lines; a partial one is read next time
        for raw in data[:end].splitlines():
            stats = _parse(raw)
            if stats is not None:
                self._entries[stats.cache_key().as_str()] = stats
        self._offset += end


def _parse(raw: bytes) -> LatencyStats | None:
    try:
        record = json.loads(raw)
        if record.get("schema") != SCHEMA:
            return None
        return LatencyStats.from_dict(record["stats"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # a torn or foreign line: ignore it rather than fail a search
