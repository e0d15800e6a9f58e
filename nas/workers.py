"""Which process runs which trial, and whether it is still alive.

A worker claims its trial (host, pid, process start time) in the trial's user attrs as the trial
starts. A RUNNING trial whose claimed worker is gone from this host, or that no worker claimed
within CLAIM_SECONDS, is an orphan; trials claimed on other hosts are left to the storage heartbeat.
Reads only public Optuna records (FrozenTrial), so every storage works.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

CLAIM_SECONDS = 30  # a live worker claims its trial within milliseconds; an unclaimed older one is orphaned


def worker_claim(number: int) -> dict[str, Any]:
    """Who runs a trial: host, pid and process start time (so a reused pid is not taken for the worker)."""
    pid = os.getpid()
    return {"trial": number, "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid)}


def _process_start(pid: int) -> str | None:
    try:  # field 22 of /proc/<pid>/stat, after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_dead(trial: FrozenTrial) -> bool | None:
    """True if the worker that claimed this trial is gone; None if unknown (no claim, another host)."""
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") != trial.number or claim.get("host") != socket.gethostname():
        return None  # unclaimed (or a claim copied from a retried trial), or on another machine
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    start = _process_start(int(claim["pid"]))
    return start is not None and claim.get("pid_start") is not None and start != claim["pid_start"]


def is_orphan(trial: FrozenTrial) -> bool:
    """A RUNNING trial no live worker is running: its worker died, or it was never claimed."""
    if trial.state != TrialState.RUNNING:
        return False
    dead = worker_dead(trial)
    if dead is not None:
        return dead
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") == trial.number or trial.datetime_start is None:
        return False  # claimed on another machine: only the storage heartbeat can tell
    return (datetime.now() - trial.datetime_start).total_seconds() > CLAIM_SECONDS


def is_live(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and not is_orphan(trial)


def orphan_reason(trial: FrozenTrial) -> str:
    """Why an orphan is failed, as recorded in its fail_reason."""
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") == trial.number:
        return f"worker {claim['pid']} on {claim['host']} died during the trial"
    return "no worker claimed the trial (its worker died before starting it)"
