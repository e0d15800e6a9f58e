"""Worker roles: training may run anywhere, latency is measured only on the run's pinned device.

--role both (default)  times and trains, on the pinned device (the first such worker pins it).
--role train           never times: a training-only worker on any machine (e.g. a GPU box). It reads
                       each latency from the study, or writes a request there and waits for one.
--role measure         only times: on the pinned device, it serves the requests in the study until
                       the run completes (--trials complete, or --timeout passed and nothing runs).

The queue is the study itself (user attrs, so every Optuna storage carries it):
`latency?:<key>` a request {arch, index, requested_utc, host, pid}; `latency:<key>` the answer
{device, stats} (or {device, error}), key = nas.objective.latency_key(arch hash, settings, index).
Workers that time publish every measurement there, so every worker of the run reads the same
numbers and nas.objective.decided_latency decides the same, wherever it runs.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.arch import Arch
from nas.errors import UserError
from nas.latency import LatencyStats, describe_device, device_line
from nas.search.storage import check_machine
from nas.workers import record_host, study_hosts, utc_now

ROLES = ("both", "train", "measure")
DEVICE_ATTR = "latency_device"  # the pinned device: nas.latency.describe_device of the first timing worker
REQUEST, ANSWER = "latency?:", "latency:"
POLL_SECONDS = 0.5
PROGRESS_SECONDS = 30.0


class LatencyUnavailable(UserError):
    """No measuring worker answered a latency request in time."""


def join_study(study: optuna.Study, role: str, backend: str, threads: int, precision: str,
               journal: bool) -> dict[str, Any]:
    """A worker's checks on joining a study; returns this worker's device description.

    A worker that times must run on the pinned device (the first one pins it); a training-only
    worker may run anywhere. The journal storage has no heartbeat (a trial whose host dies would
    stay RUNNING for ever), so a study on it takes workers from one host only."""
    me = socket.gethostname()
    others = sorted(study_hosts(study) - {me})
    if journal and others:
        raise UserError(f"study {study.study_name!r} has workers on {', '.join(others)} and this one runs on {me}: "
                        "the journal storage has no heartbeat for workers on several hosts; use an RDB storage, "
                        "e.g. --storage postgresql+psycopg://user:pass@host/db")
    device = describe_device(backend, threads, precision)
    if role != "train":
        check_machine(study)
        if study.user_attrs.get(DEVICE_ATTR) is None:
            study.set_user_attr(DEVICE_ATTR, device)
        pinned = study.user_attrs[DEVICE_ATTR]  # read back: of two first workers, the later write pins
        if pinned.get("device_fingerprint") != device["device_fingerprint"]:
            raise UserError(f"study {study.study_name!r} measures latency on {device_line(pinned)}; this worker "
                            f"would time on {device_line(device)}: start it with --role train to train only")
    record_host(study, role)
    return device


class StudyLatency:
    """The latency source of a worker (nas.objective.LatencySource): the study's records first."""

    def __init__(self, study: optuna.Study, role: str, device: dict[str, Any], wait_s: float, quiet: bool) -> None:
        self.study, self.role, self.device, self.wait_s, self.quiet = study, role, device, wait_s, quiet
        self.gave_up: str | None = None  # why a training-only worker stopped waiting

    def __call__(self, arch: Arch, index: int, key: str, here: Callable[[], LatencyStats]) -> LatencyStats:
        if self.role == "train":
            found = self.recorded(key, errors=True)
            return found if found is not None else self.request(arch, index, key)
        found = self.recorded(key)
        if found is not None and not found.loaded:  # a loaded record: measured again here (nas.latency rules)
            return found
        stats = here()
        self.publish(key, {"stats": stats.to_dict()})
        return stats

    def recorded(self, key: str, errors: bool = False) -> LatencyStats | None:
        """The study's measurement under `key`; a measuring worker's error raises when `errors`."""
        answer = self.study.user_attrs.get(ANSWER + key)
        if not isinstance(answer, dict):
            return None
        pinned = (self.study.user_attrs.get(DEVICE_ATTR) or {}).get("device_fingerprint")
        if pinned is not None and answer.get("device") != pinned:
            return None  # not the pinned device's (cannot happen through join_study; a hand-edited study)
        if "error" in answer:
            if errors:
                raise RuntimeError(f"the measuring worker failed: {answer['error']}")
            return None
        return LatencyStats.from_dict(answer["stats"])

    def publish(self, key: str, answer: dict[str, Any]) -> None:
        self.study.set_user_attr(ANSWER + key, {"device": self.device["device_fingerprint"], **answer})

    def request(self, arch: Arch, index: int, key: str) -> LatencyStats:
        """Ask the measuring worker for measurement `index` of `arch`; wait up to wait_s for it."""
        self.study.set_user_attr(REQUEST + key, {"arch": arch.to_dict(), "index": index, "host": socket.gethostname(),
                                                 "pid": os.getpid(), "requested_utc": utc_now().isoformat()})
        started = time.monotonic()
        shown = -PROGRESS_SECONDS
        while (found := self.recorded(key, errors=True)) is None:
            waited = time.monotonic() - started
            if waited > self.wait_s:
                self.gave_up = (f"no measuring worker timed {arch.hash} within {self.wait_s:g} s (--latency-wait): "
                                "start `python -m nas.search ... --role measure` with this run's settings and "
                                "--storage on the pinned device, then run this command again")
                try:
                    self.study.stop()  # inside the trial loop: take no further trial
                except RuntimeError:
                    pass  # outside it (space fitting, baselines): the error ends the command
                raise LatencyUnavailable(self.gave_up)
            if not self.quiet and waited - shown >= PROGRESS_SECONDS:
                shown = waited
                print(f"latency: waiting for a measuring worker to time {arch.hash} (measurement {index}, "
                      f"{waited:.0f}/{self.wait_s:g} s)", file=sys.stderr)
            time.sleep(POLL_SECONDS)
        return found


def pending_requests(study: optuna.Study) -> list[tuple[str, dict[str, Any]]]:
    """(key, request) of every request without an answer, oldest first."""
    attrs = study.user_attrs
    pending = [(name.removeprefix(REQUEST), value) for name, value in attrs.items()
               if name.startswith(REQUEST) and ANSWER + name.removeprefix(REQUEST) not in attrs]
    return sorted(pending, key=lambda item: str(item[1].get("requested_utc")))


def serve(study: optuna.Study, objective: Any, source: StudyLatency, trials: int, seconds_left: float,
          quiet: bool) -> int:
    """--role measure: answer the study's latency requests until `trials` complete, or until
    `seconds_left` have passed with no trial running. Returns how many requests it answered.

    A request is answered by the decided-latency rule itself (objective.measurements, publishing
    through `source`), so a near-budget candidate's second measurement is taken in the same visit."""
    deadline = time.monotonic() + seconds_left
    served = 0
    if not quiet:
        print(f"measuring worker on {device_line(source.device)}: serving latency requests until {trials} "
              "trials complete", file=sys.stderr)
    while True:
        pending = pending_requests(study)
        for key, request in pending:
            arch = Arch.from_dict(request["arch"])
            try:
                objective.measurements(arch)
            except UserError:
                raise  # this worker's own setup (e.g. a damaged latency cache): one line, exit 2
            except Exception as exc:  # the candidate's fault (export, backend): the requester fails that trial
                source.publish(key, {"error": f"{type(exc).__name__}: {exc}"[:500]})
            if source.study.user_attrs.get(ANSWER + key) is None:
                source.publish(key, {"error": f"measurement {request.get('index')} is not one the decided-latency "
                                              "rule takes here (are the workers' --budget-ms the same?)"})
            served += 1
            if not quiet:
                print(f"latency: measured {arch.hash} for {request.get('host')} (request {served})", file=sys.stderr)
        if pending:
            continue
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= trials:
            break
        if time.monotonic() > deadline:
            optuna.storages.fail_stale_trials(study)  # a training host that died: its trials by the heartbeat
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
        time.sleep(POLL_SECONDS)
    return served
