"""A machine-wide readers-writer lock so timing never overlaps training on the same cores.

Training holds the lock *shared* (several trainers may run, e.g. on a big machine); latency
measurement holds it *exclusive*, so a measurement waits for running epochs to end and no epoch
starts while a model is being timed. It is an `fcntl.flock` on one file per machine, so it works
across processes (several search workers) and is released by the kernel if a process dies.
Hooks (`add_hook`) see each held section start and end; the chaos tests arm them (nas.faults).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Hook = Callable[[str, str], None]  # (kind: "measure" | "train", event: "start" | "end")
_hooks: list[Hook] = []


def lock_path() -> Path:
    """One lock file per machine (override with VITNAS_LOCK for tests or shared volumes)."""
    return Path(os.environ.get("VITNAS_LOCK", Path(tempfile.gettempdir()) / "vitnas-machine.lock"))


@contextmanager
def _flock(mode: int) -> Iterator[None]:
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def add_hook(hook: Hook) -> None:
    """Call `hook(kind, event)` right after this process takes the lock ("start") and right before it
    releases it ("end"). A hook that raises at "start" aborts the section (its "end" still runs)."""
    if hook not in _hooks:
        _hooks.append(hook)


@contextmanager
def _held(kind: str, mode: int) -> Iterator[None]:
    with _flock(mode):
        try:
            for hook in _hooks:
                hook(kind, "start")
            yield
        finally:
            for hook in _hooks:
                hook(kind, "end")


@contextmanager
def measuring() -> Iterator[None]:
    """Hold while timing a model: no training runs on this machine meanwhile."""
    with _held("measure", fcntl.LOCK_EX):
        yield


@contextmanager
def training() -> Iterator[None]:
    """Hold while training (per epoch, so measurements can slip in between epochs)."""
    with _held("train", fcntl.LOCK_SH):
        yield
