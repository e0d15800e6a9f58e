"""One Optuna trial: sample (or take a baseline) -> measure latency -> maybe train -> score.

Latency comes first: a candidate over budget ends in seconds, untrained. Multi-objective studies
cannot prune through `trial.report`, so the early stop for weak trials is ours: after epoch k a
trial stops when its accuracy is far below what completed trials had at epoch k.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from nas import faults
from nas.arch import Arch
from nas.data import Splits
from nas.latency import LatencyCache, LatencyStats, MeasureSettings, measure
from nas.models import build_model
from nas.space import SearchSpace
from nas.train import train_proxy

NEAR_BUDGET = 0.15  # within 15% of the budget: measure again before deciding
EARLY_STOP_MIN_PEERS = 4
EARLY_STOP_MARGIN = 0.10  # accuracy points below the peers' lower quartile at the same epoch
CLAIM_SECONDS = 30  # a live worker claims its trial within milliseconds; an unclaimed older one is orphaned


@dataclass
class TrialSettings:
    budget_ms: float
    target_resolution: int
    backend: str
    threads: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    checkpoints: Path
    latency_settings: MeasureSettings | None = None
    trials: int | None = None  # completed trials wanted across all workers: a surplus trial is pruned
    precision: str = "fp32"  # the inference precision candidates are timed at


class Objective:
    def __init__(self, space: SearchSpace, splits: Splits, settings: TrialSettings, cache: LatencyCache) -> None:
        self.space, self.splits, self.settings, self.cache = space, splits, settings, cache

    def arch_for(self, trial: optuna.Trial) -> Arch:
        """The trial's network. Every knob is suggested first, also for a baseline (enqueued with its
        encoding in the space, see `enqueue_baselines`), so every completed trial has the same parameters."""
        sampled = self.space.sample(trial, self.splits.num_classes)
        baseline = trial.user_attrs.get("baseline_arch")
        return Arch.from_dict(baseline) if baseline is not None else sampled

    def latency(self, arch: Arch, model: torch.nn.Module | None = None) -> LatencyStats:
        s = self.settings
        faults.point("latency")
        faults.point("export")
        model = model if model is not None else build_model(arch)
        stats = measure(model, s.target_resolution, s.backend, s.threads, precision=s.precision, cache=self.cache,
                        key=arch.hash, settings=s.latency_settings)
        if abs(stats.ms - s.budget_ms) <= NEAR_BUDGET * s.budget_ms and stats.attempts < 2:
            # Near the line, one noisy pass decides feasibility: take the better of two measurements.
            again = measure(model, s.target_resolution, s.backend, s.threads, precision=s.precision,
                            cache=self.cache, key=arch.hash, settings=s.latency_settings, refresh=True)
            stats = min(stats, again, key=lambda x: x.ms)
            self.cache.put(stats)
        return stats

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        faults.set_trial(trial.number)
        trial.set_user_attr("worker", worker_claim(trial.number))
        if "curve" in trial.user_attrs:  # a retried trial inherits the user attrs of the one that died
            trial.set_user_attr("curve", [])
        self._check_surplus(trial)
        try:
            values = self._evaluate(trial)
        except BaseException as exc:  # Optuna marks the trial failed; keep why (trials.csv fail_reason)
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            faults.set_trial(None)
        faults.point("done", trial.number)
        return values

    def _check_surplus(self, trial: optuna.Trial) -> None:
        """Prune this trial when completed + earlier in-flight trials (any worker) already reach --trials."""
        if self.settings.trials is None:
            return
        ahead = sum(t.state == optuna.trial.TrialState.COMPLETE or (t.number < trial.number and is_live(t))
                    for t in trial.study.get_trials(deepcopy=False))
        if ahead >= self.settings.trials:
            trial.study.stop()
            raise optuna.TrialPruned(f"{self.settings.trials} trials already complete or in flight")

    def _evaluate(self, trial: optuna.Trial) -> tuple[float, float]:
        started = time.perf_counter()
        arch = self.arch_for(trial)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("arch_hash", arch.hash)
        model = build_model(arch)
        trial.set_user_attr("params_m", sum(p.numel() for p in model.parameters()) / 1e6)

        stats = self.latency(arch, model)
        trial.set_user_attr("latency", stats.to_dict())
        trial.set_user_attr("latency_ms", stats.ms)
        # <= 0 is feasible; the samplers and Optuna's Pareto plot read it from the trial.
        trial.set_constraint("latency", stats.ms - self.settings.budget_ms)
        trial.set_user_attr("constraint", stats.ms - self.settings.budget_ms)
        if stats.ms > self.settings.budget_ms:
            trial.set_user_attr("trained", False)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            return 0.0, stats.ms

        peers = _peer_curves(trial)

        def on_epoch(epoch: int, accuracy: float) -> bool:
            trial.set_user_attr("curve", [*trial.user_attrs.get("curve", []), accuracy])
            return not _far_below(accuracy, [c[epoch] for c in peers if len(c) > epoch])

        s = self.settings
        torch.manual_seed(s.seed)
        model = build_model(arch)  # fresh init from the seed, independent of what latency did
        result = train_proxy(model, self.splits, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed,
                             threads=s.threads, on_epoch=on_epoch)
        trial.set_user_attr("trained", True)
        trial.set_user_attr("curve", list(result.curve))
        trial.set_user_attr("stopped_early", result.stopped_early)
        trial.set_user_attr("train_seconds", result.seconds)
        s.checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoint = s.checkpoints / f"{trial.number}-{arch.hash}.pt"
        torch.save(model.state_dict(), checkpoint.with_suffix(".tmp"))
        checkpoint.with_suffix(".tmp").replace(checkpoint)
        trial.set_user_attr("checkpoint", checkpoint.name)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        return result.accuracy, stats.ms


def worker_claim(number: int) -> dict[str, Any]:
    """Who runs a trial: host, pid and process start time (so a reused pid is not taken for the worker)."""
    pid = os.getpid()
    return {"trial": number, "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid)}


def _process_start(pid: int) -> str | None:
    try:  # field 22 of /proc/<pid>/stat, after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_dead(trial: optuna.trial.FrozenTrial) -> bool | None:
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


def is_orphan(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial no live worker is running: its worker died, or it was never claimed."""
    if trial.state != optuna.trial.TrialState.RUNNING:
        return False
    dead = worker_dead(trial)
    if dead is not None:
        return dead
    claim = trial.user_attrs.get("worker") or {}
    if claim.get("trial") == trial.number or trial.datetime_start is None:
        return False  # claimed on another machine: only the storage heartbeat can tell
    return (datetime.now() - trial.datetime_start).total_seconds() > CLAIM_SECONDS


def is_live(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == optuna.trial.TrialState.RUNNING and not is_orphan(trial)


def _peer_curves(trial: optuna.Trial) -> list[list[float]]:
    """Per-epoch accuracy of completed, fully trained trials in the same study."""
    done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t.user_attrs["curve"] for t in done
            if t.user_attrs.get("trained") and not t.user_attrs.get("stopped_early") and t.user_attrs.get("curve")]


def _far_below(accuracy: float, peers: list[float]) -> bool:
    if len(peers) < EARLY_STOP_MIN_PEERS:
        return False
    return accuracy + EARLY_STOP_MARGIN < float(np.quantile(peers, 0.25))


def describe(arch: Arch | dict[str, Any]) -> str:
    """A compact one-line description, e.g. 'dsconv16 > mbconv2x24 catm3x64 litemla2x128 > evit'."""
    arch = arch if isinstance(arch, Arch) else Arch.from_dict(arch)
    stages = " ".join(f"{s.mixer}{s.depth}x{s.width}" for s in arch.stages)
    return f"{arch.stem_kind}{arch.stem_width} > {stages} > {arch.head_kind}"
