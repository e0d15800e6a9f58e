"""One Optuna trial: sample (or take a baseline) -> measure latency -> maybe train -> score.

Latency comes first: a candidate over budget ends in seconds, untrained. Feasibility is recorded
once, as Optuna's constraint (`trial.set_constraint`, <= 0 is within budget). Weak trials stop at
a successive-halving rung (nas.fidelity): each records the epochs it got and why it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from nas import faults
from nas.arch import Arch
from nas.atomic import atomic_path
from nas.data import Splits
from nas.export import reusing_conversions
from nas.fidelity import MIN_PEERS, RungDecision, judge, rungs
from nas.latency import LatencyCache, LatencyStats, MeasureSettings, Predictor, lookup, measure
from nas.models import build_model
from nas.space import SearchSpace
from nas.train import train_proxy
from nas.workers import is_live, worker_claim

NEAR_BUDGET = 0.15  # within 15% of the budget: a second, independent measurement takes part
# Where a worker's measurements come from (nas.search.roles): (arch, index, latency_key, measure here) ->
# the index-th measurement; e.g. the study's record, a request to the measuring worker, or `here()`.
LatencySource = Callable[[Arch, int, str, Callable[[], LatencyStats]], LatencyStats]
LOADED_REPEATS = 1  # more measurements when every one of a near/over-budget candidate ran loaded


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
    min_epochs: int = 1  # first successive-halving rung (min_epochs >= epochs: no rungs, every trial trains fully)
    eta: int = 3  # rung spacing and promotion ratio


def _not_trained(trial: optuna.Trial, reason: str) -> None:
    """Record a candidate that stops before training (accuracy 0: the constraint keeps it off the front)."""
    trial.set_user_attr("trained", False)
    trial.set_user_attr("epochs", 0)
    trial.set_user_attr("stop_reason", reason)


class Objective:
    def __init__(self, space: SearchSpace, splits: Splits, settings: TrialSettings, cache: LatencyCache,
                 latency_source: LatencySource | None = None, predictor: Predictor | None = None) -> None:
        self.space, self.splits, self.settings, self.cache = space, splits, settings, cache
        self.latency_source = latency_source  # None: measured here (see LatencySource)
        self.predictor = predictor  # rejects candidates predicted far over budget before building them

    def arch_for(self, trial: optuna.Trial) -> Arch:
        """The trial's network. Every knob is suggested first, also for a baseline (enqueued with its
        encoding in the space, see `enqueue_baselines`), so every completed trial has the same parameters."""
        sampled = self.space.sample(trial, self.splits.num_classes)
        baseline = trial.user_attrs.get("baseline_arch")
        return Arch.from_dict(baseline) if baseline is not None else sampled

    def latency(self, arch: Arch, model: torch.nn.Module | None = None) -> LatencyStats:
        """The decided latency of `arch`: see `decided_latency`."""
        faults.point("latency")
        faults.point("export")
        return self.measurements(arch, model)[0]

    def measurements(self, arch: Arch, model: torch.nn.Module | None = None) -> tuple[LatencyStats, list[float]]:
        s = self.settings
        built = [model]

        def here(index: int) -> LatencyStats:
            key = latency_key(arch.hash, s.latency_settings, index)
            hit = lookup(self.cache, key, s.target_resolution, s.backend, s.threads, s.precision)
            if hit is not None:  # e.g. baseline scaling on a resume: no need to build the model
                return hit
            if built[0] is None:
                built[0] = build_model(arch)
            return measure(built[0], s.target_resolution, s.backend, s.threads, precision=s.precision,
                           cache=self.cache, key=key, settings=s.latency_settings)

        def once(index: int) -> LatencyStats:
            if self.latency_source is None:
                return here(index)
            return self.latency_source(arch, index, latency_key(arch.hash, s.latency_settings, index),
                                       lambda: here(index))

        with reusing_conversions():  # a near-budget second measurement compiles afresh, without re-tracing
            return decided_latency(once, s.budget_ms)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        faults.set_trial(trial.number)
        trial.set_user_attr("worker", worker_claim(trial.number))
        for name in ("curve", "rungs"):  # a retried trial inherits the user attrs of the one that died
            if name in trial.user_attrs:
                trial.set_user_attr(name, [])
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

    def _rejected_by_prediction(self, trial: optuna.Trial, arch: Arch) -> bool:
        """Record and reject a candidate whose predicted latency exceeds the budget by more than the
        predictor's margin (its measured over-prediction): never built, trained or measured. Its
        constraint comes from the prediction, so the samplers learn the region is infeasible.
        Baselines (scaled by measurement) and already measured archs go on to be measured."""
        s, predictor = self.settings, self.predictor
        if predictor is None or trial.user_attrs.get("baseline_arch") is not None:
            return False
        if lookup(self.cache, latency_key(arch.hash, s.latency_settings), s.target_resolution, s.backend, s.threads,
                  s.precision) is not None:
            return False  # a measurement is at hand: it decides
        predicted = predictor.predict(arch).ms
        trial.set_user_attr("predicted_ms", predicted)
        limit = s.budget_ms * (1.0 + predictor.margin)
        if predicted <= limit:
            return False
        trial.set_constraint("latency", predicted - s.budget_ms)
        trial.set_user_attr("rejected_by_prediction", True)
        _not_trained(trial, f"rejected by prediction ({predicted:.3g} ms > {s.budget_ms:g} ms + "
                            f"{100 * predictor.margin:.0f}% margin): not built")
        return True

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
        faults.set_mixers(stage.mixer for stage in arch.stages)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("arch_hash", arch.hash)
        if self._rejected_by_prediction(trial, arch):
            trial.set_user_attr("seconds", time.perf_counter() - started)
            return 0.0, trial.user_attrs["predicted_ms"]
        model = build_model(arch)
        trial.set_user_attr("params_m", sum(p.numel() for p in model.parameters()) / 1e6)

        faults.point("latency")
        faults.point("export")
        stats, measured = self.measurements(arch, model)
        trial.set_user_attr("latency", stats.to_dict())
        trial.set_user_attr("latency_ms", stats.ms)
        trial.set_user_attr("latency_measurements_ms", measured)
        trial.set_user_attr("latency_loaded", stats.loaded)  # decided on loaded figures only
        # The one record of feasibility (<= 0 is within budget): the samplers, study.best_trials, the
        # report, the progress bar and the exit code all read it.
        trial.set_constraint("latency", stats.ms - self.settings.budget_ms)
        if stats.ms > self.settings.budget_ms:
            _not_trained(trial, f"over budget ({stats.ms:.3g} > {self.settings.budget_ms:g} ms): not trained")
            trial.set_user_attr("seconds", time.perf_counter() - started)
            return 0.0, stats.ms

        s = self.settings
        schedule = set(rungs(s.epochs, s.min_epochs, s.eta))
        decisions: list[RungDecision] = []

        def on_epoch(epoch: int, accuracy: float) -> bool:
            trial.set_user_attr("curve", [*trial.user_attrs.get("curve", []), accuracy])
            if epoch + 1 not in schedule:
                return True
            decision = judge(epoch + 1, (accuracy, stats.ms), rung_peers(trial, epoch + 1), s.eta, MIN_PEERS)
            decisions.append(decision)
            trial.set_user_attr("rungs", [d.to_dict() for d in decisions])
            return decision.promoted

        torch.manual_seed(s.seed)
        model = build_model(arch)  # fresh init from the seed, independent of what latency did
        result = train_proxy(model, self.splits, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed,
                             threads=s.threads, on_epoch=on_epoch)
        trial.set_user_attr("trained", True)
        trial.set_user_attr("curve", list(result.curve))
        trial.set_user_attr("epochs", result.epochs_run)
        trial.set_user_attr("stopped_early", result.stopped_early)
        trial.set_user_attr("stop_reason", decisions[-1].reason if result.stopped_early and decisions
                            else f"trained all {result.epochs_run} epochs")
        trial.set_user_attr("train_seconds", result.seconds)
        s.checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoint = s.checkpoints / f"{trial.number}-{arch.hash}.pt"
        with atomic_path(checkpoint) as tmp:
            torch.save(model.state_dict(), tmp)
        trial.set_user_attr("checkpoint", checkpoint.name)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        return result.accuracy, stats.ms


def latency_key(arch_hash: str, settings: MeasureSettings | None, index: int = 1) -> str:
    """The latency cache key of the `index`-th independent measurement of an arch under `settings`.

    Full (default) settings keep the bare arch hash, so existing caches stay valid; other settings
    (--quick-latency) add a digest of themselves, so a short measurement never serves a full run.
    """
    key = arch_hash
    if settings is not None and settings != MeasureSettings():
        key += "@" + hashlib.sha1(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:8]
    return key if index == 1 else f"{key}#{index}"


def decided_latency(measure_once: Any, budget_ms: float) -> tuple[LatencyStats, list[float]]:
    """The latency a trial is judged by, and every measurement (ms) it came from.

    Fixed rule: one measurement; when it lies within NEAR_BUDGET of the budget, exactly one more,
    independent one (its own cache entry), and the faster of the two decides (the quiet-machine
    estimate, as within a measurement). Both are cached, so revisiting the arch (baseline scaling,
    a retry, a resume) reads the same two and decides the same: a near-budget latency never ratchets
    down by being re-measured on each visit. `measure_once(i)` returns the i-th measurement.

    Interference: a measurement flagged `loaded` (other processes kept the CPU busy) can only
    overstate, so it never decides alone: a loaded first one over the budget takes the second one
    however far over it is, and while all are loaded, LOADED_REPEATS more (each waits for a quiet CPU
    first). Quiet measurements decide when there is one; else the fastest loaded one, flag kept
    (trials.csv `latency_loaded`). A loaded cache entry is re-measured on a few later visits
    (nas.latency._measure.LOADED_REMEASURES), then read as it is.
    """
    first = measure_once(1)
    near = abs(first.ms - budget_ms) <= NEAR_BUDGET * budget_ms
    if not near and not (first.loaded and first.ms > budget_ms):
        return first, [first.ms]
    runs = [first, measure_once(2)]
    while all(r.loaded for r in runs) and len(runs) < 2 + LOADED_REPEATS:
        runs.append(measure_once(len(runs) + 1))
    quiet = [r for r in runs if not r.loaded]
    return min(quiet or runs, key=lambda x: x.ms), [r.ms for r in runs]


def rung_peers(trial: optuna.Trial, epoch: int) -> list[tuple[float, float]]:
    """(accuracy after `epoch` epochs, latency) of every other trial that reached that epoch.

    Finished trials and trials still training in any worker count (their curves grow epoch by
    epoch in the storage); failed or orphaned trials do not.
    """
    out = []
    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number or not (other.state == optuna.trial.TrialState.COMPLETE or is_live(other)):
            continue
        curve = other.user_attrs.get("curve") or []
        if len(curve) >= epoch and "latency_ms" in other.user_attrs:
            out.append((float(curve[epoch - 1]), float(other.user_attrs["latency_ms"])))
    return out
