"""The study's storage and the workers that share it: opening a storage URL, the sampler, the
checks a joining worker passes (same machine, same run identity), and failing orphaned trials."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nas.errors import UserError
from nas.identity import RunIdentity, check_identity
from nas.search._optuna import fail_trial
from nas.search.norepeat import NoRepeatSampler
from nas.workers import is_orphan, orphan_reason, single_host

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
# A trial whose worker died is failed and run again, at most twice (then it is likely the trial's fault).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = RetryHeartbeatStaleTrialCallback(max_retry=2)
SAMPLERS = ("nsga2", "tpe", "gp", "random")


def storage_for(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at `url` (`journal:PATH` or an SQLAlchemy URL); one-line UserError if it cannot open.

    Heartbeats let a resumed or parallel search fail trials whose worker died, then retry them."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        backend = JournalFileBackend(url.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                              heartbeat_stale_trial_callback=RETRY,
                                              engine_kwargs={"connect_args": {"timeout": 60}}
                                              if url.startswith("sqlite") else None)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # workers starting together race to create the schema; on SQLite the loser sees
            # "table ... already exists" (an OperationalError): retry, the other one won
            if isinstance(exc, OperationalError) and "already exists" not in str(exc):
                raise _cannot_open(url, exc) from None
            if attempt == 2:
                raise UserError(f"--storage {url!r}: cannot create the Optuna schema ({type(exc).__name__})") from None
            time.sleep(1.0)
        except Exception as exc:  # bad URL, missing driver, unreachable server
            raise _cannot_open(url, exc) from None
    raise AssertionError("unreachable")


def _cannot_open(url: str, exc: Exception) -> UserError:
    return UserError(f"--storage {url!r}: cannot open Optuna storage ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0]})")


def make_sampler(name: str, seed: int, arch_key: Callable[[dict[str, Any]], str] | None = None
                 ) -> optuna.samplers.BaseSampler:
    """Optuna 5 samplers (all but random) read the latency constraint each trial sets with `trial.set_constraint`.

    With `arch_key` (parameters -> architecture hash), a relative proposal that repeats an evaluated
    architecture is replaced by a random one (`NoRepeatSampler`).
    """
    sampler: optuna.samplers.BaseSampler
    if name == "tpe":  # constant_liar: parallel workers do not all propose the same point
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    elif name == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    elif name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    return sampler if arch_key is None else NoRepeatSampler(sampler, arch_key)


def check_study_identity(study: optuna.Study, identity: RunIdentity) -> None:
    """The resume check against the study, for workers that share a storage but not a run directory."""
    current = identity.model_dump(mode="json")
    recorded = study.user_attrs.get("identity")
    if recorded is None:
        study.set_user_attr("identity", current)
        return
    # The machine is check_machine's (it names both machines); a space file's path may differ per worker.
    skip = {"machine", "space_file"}
    check_identity({k: v for k, v in recorded.items() if k not in skip}, current, f"study {study.study_name!r}")


def check_machine(study: optuna.Study) -> None:
    """One machine per study: a worker on a machine described differently (CPU, ISA, OpenVINO
    capabilities) would put latencies of another clock into the same front. The first worker
    records its description in the study, which every storage (SQLite, journal, PostgreSQL) shares."""
    from nas.latency import describe_machine, machine_line

    mine = describe_machine()
    recorded = study.user_attrs.get("machine")
    if recorded is None:
        study.set_user_attr("machine", mine)
    elif recorded.get("fingerprint") != mine["fingerprint"]:
        raise UserError(f"study {study.study_name!r}: its latencies come from {machine_line(recorded)}, this worker "
                        f"runs on {machine_line(mine)}; latencies of different machines cannot share one front "
                        "(--role train trains here and leaves timing to the study's machine)")


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail (and retry) RUNNING trials whose worker is gone, now rather than after the heartbeat grace.

    Sound with several workers: a trial is failed only when its claimed worker process on this host
    no longer exists, or when no worker claimed it within nas.workers.CLAIM_SECONDS (only while all
    workers ran on this host); a live worker's trial is never touched, and trials claimed on other
    hosts are left to the storage heartbeat.
    Returns the numbers of the trials this call failed.
    """
    failed = []
    alone = single_host(study)  # else an unclaimed trial's start time may be another host's local time
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_orphan(trial, alone) and (done := fail_trial(study, trial, orphan_reason(trial))) is not None:
            failed.append(done)
    for trial in failed:
        RETRY(study, trial)
    return [trial.number for trial in failed]
