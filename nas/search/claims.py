"""Study-level claims that survive kills, on every Optuna storage (SQLite, journal, PostgreSQL).

A claim is an empty Optuna study named `<study>:claim:<key>:<generation>`. Creating a study under a
name is atomic in every storage (a unique name column in RDB, log order in the journal): of the
workers racing to create one name, exactly one succeeds. The holder records who it is (host, pid,
process start, time) in the claim's user attrs. A claim whose holder died (on this host) or that is
older than `LEASE_SECONDS` (a holder on another host; a holder killed before it recorded itself) is
stale: the next generation's name is then up for grabs, so a takeover is as atomic as the first claim.

Claims guard steps that take milliseconds (check, then create): holders re-check their condition
after claiming and release (delete) the claims once the guarded work is visible in the study.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError

from nas.search._optuna import storage_of
from nas.workers import pid_exists, process_start

LEASE_SECONDS = 30.0  # a live holder finishes within milliseconds; older claims are stale
POLL_SECONDS = 0.2


def _prefix(study: optuna.Study, key: str) -> str:
    return f"{study.study_name}:claim:{key}:"


def holder() -> dict[str, Any]:
    """This process, as a claim records it."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid), "time": time.time()}


def holder_gone(record: dict[str, Any]) -> bool | None:
    """True if the holder process is gone from this host; None if it holds on another host."""
    if record.get("host") != socket.gethostname():
        return None
    if not pid_exists(int(record["pid"])):
        return True
    return process_start(int(record["pid"])) != record.get("pid_start")


def _claims(study: optuna.Study, key: str) -> list[tuple[int, Any]]:
    """(generation, the storage's FrozenStudy) of the claims on `key`, newest last."""
    prefix = _prefix(study, key)
    found = [(int(s.study_name.removeprefix(prefix)), s) for s in storage_of(study).get_all_studies()
             if s.study_name.startswith(prefix) and s.study_name.removeprefix(prefix).isdigit()]
    return sorted(found, key=lambda pair: pair[0])


def try_claim(study: optuna.Study, key: str, first_seen: dict[int, float]) -> bool:
    """One attempt: True if this process now holds the claim on `key`; False if a live holder has it
    or another worker won this round (call again after POLL_SECONDS). `first_seen` remembers, per
    generation, when this caller first saw a claim without a holder record."""
    claims = _claims(study, key)
    generation = claims[-1][0] + 1 if claims else 0
    if claims:
        current = claims[-1][1]
        record = current.user_attrs.get("holder")
        if record is None:  # created, holder not recorded yet (milliseconds), or killed in between
            seen = first_seen.setdefault(claims[-1][0], time.monotonic())
            if time.monotonic() - seen < LEASE_SECONDS:
                return False
        else:
            gone = holder_gone(record)  # another host's holder: by the lease (wall clocks, seconds apart)
            if not (gone if gone is not None else time.time() - float(record["time"]) > LEASE_SECONDS):
                return False
    try:
        claim = optuna.create_study(storage=storage_of(study), study_name=_prefix(study, key) + str(generation))
    except DuplicatedStudyError:
        return False
    claim.set_user_attr("holder", holder())
    return True


def release(study: optuna.Study, key: str) -> None:
    """Delete every claim on `key` (call once the guarded work is visible in the study)."""
    for _, claim in _claims(study, key):
        try:
            optuna.delete_study(study_name=claim.study_name, storage=storage_of(study))
        except KeyError:
            pass  # another worker released it first


def once(study: optuna.Study, key: str, pending: Callable[[], bool], work: Callable[[], None]) -> bool:
    """Do `work` once across all workers and kills: while `pending()`, take the claim on `key`,
    re-check under it (a worker that held an earlier claim may have done it), work, then release the
    claims (also one a killed worker left). True if this call did the work."""
    first_seen: dict[int, float] = {}
    done = False
    while pending():
        if not try_claim(study, key, first_seen):
            time.sleep(POLL_SECONDS)  # a live worker holds it for milliseconds
            continue
        if pending():
            work()
            done = True
        break
    release(study, key)
    return done
