"""Which process runs which trial, and whether it is still alive.

A worker claims its trial (host, pid, process start time, UTC time) in the trial's user attrs as
the trial starts. A RUNNING trial whose claimed worker is gone from this host, or that no worker
claimed within CLAIM_SECONDS, is an orphan; trials claimed on other hosts are left to the storage
heartbeat (RDB storages: server-side timestamps, so no host's clock or time zone matters).
Reads only public Optuna records (FrozenTrial), so every storage works.

Times are compared as timezone-aware UTC. Optuna's `datetime_start` is naive local time: the RDB
storages store the writing process's `datetime.now()` (its host's clock and zone), the journal
storage stores UTC and hands it back converted to the reader's zone. So a naive start read as this
host's local time is exact for the journal and for workers of one host (also across a DST change,
which naive subtraction gets wrong by an hour); for a trial another host started (an RDB shared by
several hosts) it may be hours off, and an unclaimed trial is then left to the heartbeat.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna import Study

CLAIM_SECONDS = 30  # a live worker claims its trial within milliseconds; an unclaimed older one is orphaned


def worker_claim(number: int) -> dict[str, Any]:
    """Who runs a trial: host, pid and process start time (so a reused pid is not taken for the worker)."""
    pid = os.getpid()
    return {"trial": number, "host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid),
            "claimed_utc": utc_now().isoformat()}


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An Optuna datetime as aware UTC; a naive one is read as this host's local time (see above)."""
    return moment.astimezone(UTC)


def process_start(pid: int) -> str | None:
    """The process's start time (tells a reused pid from the process that recorded it); None if unknown."""
    try:  # field 22 of /proc/<pid>/stat, after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists on this host (any user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    return True


def worker_dead(trial: FrozenTrial) -> bool | None:
    """True if the worker that claimed this trial is gone; None if unknown (no claim, another host)."""
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") != trial.number or claim.get("host") != socket.gethostname():
        return None  # unclaimed (or a claim copied from a retried trial), or on another machine
    if not pid_exists(int(claim["pid"])):
        return True
    start = process_start(int(claim["pid"]))
    return start is not None and claim.get("pid_start") is not None and start != claim["pid_start"]


def is_orphan(trial: FrozenTrial, single_host: bool = True, now: datetime | None = None) -> bool:
    """A RUNNING trial no live worker is running: its worker died, or it was never claimed.

    `single_host`: every worker of the study runs on this host, so an unclaimed trial's naive start
    is in this host's zone; otherwise an unclaimed trial is left to the storage heartbeat."""
    if trial.state != TrialState.RUNNING:
        return False
    dead = worker_dead(trial)
    if dead is not None:
        return dead
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") == trial.number or trial.datetime_start is None or not single_host:
        return False  # claimed on (or maybe started by) another machine: only the storage heartbeat can tell
    return ((now or utc_now()) - as_utc(trial.datetime_start)).total_seconds() > CLAIM_SECONDS


def is_live(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and not is_orphan(trial)


def orphan_reason(trial: FrozenTrial) -> str:
    """Why an orphan is failed, as recorded in its fail_reason."""
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") == trial.number:
        return f"worker {claim['pid']} on {claim['host']} died during the trial"
    return "no worker claimed the trial (its worker died before starting it)"


HOST_ATTR = "host:"  # study user attr `host:<name>` per host a worker joined from: {"role", "joined_utc"}


def study_hosts(study: Study) -> set[str]:
    """The hosts whose workers joined the study."""
    return {key.removeprefix(HOST_ATTR) for key in study.user_attrs if key.startswith(HOST_ATTR)}


def record_host(study: Study, role: str) -> None:
    study.set_user_attr(HOST_ATTR + socket.gethostname(), {"role": role, "joined_utc": utc_now().isoformat()})


def single_host(study: Study) -> bool:
    """Whether every worker of the study ran on this host (also when none recorded one: older studies)."""
    return study_hosts(study) <= {socket.gethostname()}
