"""A machine-wide readers-writer lock so timing never overlaps training on the same cores.

Training holds the lock *shared* (several trainers may run, e.g. on a big machine); latency
measurement holds it *exclusive*, so a measurement waits for running epochs to end and no epoch
starts while a model is being timed. It is an `fcntl.flock` on one file per machine, so it works
across processes (several search workers) and is released by the kernel if a process dies.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nas import faults


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


@contextmanager
def measuring() -> Iterator[None]:
    """Hold while timing a model: no training runs on this machine meanwhile."""
    with _flock(fcntl.LOCK_EX):
        faults.trace("measure start")
        try:
            faults.point("measure")
            yield
        finally:
            faults.trace("measure end")


@contextmanager
def training() -> Iterator[None]:
    """Hold while training (per epoch, so measurements can slip in between epochs)."""
    with _flock(fcntl.LOCK_SH):
        faults.trace("train start")
        try:
            faults.point("train")
            yield
        finally:
            faults.trace("train end")
