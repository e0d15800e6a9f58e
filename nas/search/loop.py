"""The trial loop: enqueue the scaled baselines once, then run trials until --trials complete across
all workers, the time is up, or trials keep failing."""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from nas import faults
from nas.arch import Arch
from nas.failures import INTERRUPTED
from nas.latency import add_wait_hook, remove_wait_hook, wait_line
from nas.search import claims
from nas.search._optuna import fail_trial
from nas.search.storage import fail_orphaned_trials
from nas.workers import is_live, worker_claim

MAX_CONSECUTIVE_FAILURES = 5
BASELINES_ATTR = "baselines_enqueued"  # study user attr: all three are in the study (a fast path)
SCALED_ATTR = "baseline_scaled:"  # + family: study user attr {"arch", "ms"}, recorded as soon as measured
with warnings.catch_warnings():  # a Ctrl-C says nothing about the trial: no retry limit (unlike a dead worker's)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY_INTERRUPTED = RetryHeartbeatStaleTrialCallback(max_retry=None)


def enqueue_baselines(study: optuna.Study, objective: Any, budget_ms: float, quiet: bool) -> None:
    """Scale each pure-family baseline to the budget and enqueue it: exactly once per study, whatever
    kills or concurrent starts happen.

    Each family's scaled arch is recorded in the study as soon as it is measured, so a restart reuses
    it (re-scaling could land on another rung of the ladder). A family is enqueued under its claim
    (nas.search.claims, atomic on every storage, taken over when its holder dies) and only if no trial
    of the study, in any state (WAITING included), already is that baseline.
    """
    from nas.baselines import FAMILIES

    if study.user_attrs.get(BASELINES_ATTR):
        return
    steps = itertools.count()  # ladder measurements of this process (the `scale` fault point's number)
    for index, family in enumerate(FAMILIES):
        if not baseline_trial(study, family):
            arch, ms, reused = scaled_baseline(study, objective, family, budget_ms, steps)
            if not quiet:
                print(f"baseline {arch.name}: {ms:.2f} ms{' (recorded)' if reused else ''}", file=sys.stderr)
        enqueue_once(study, objective, family, index)  # also releases a claim left by a killed worker
    study.set_user_attr(BASELINES_ATTR, True)


def baseline_trial(study: optuna.Study, family: str) -> bool:
    """Whether any trial of the study (any state) is `family`'s baseline (a retried one inherits the attr)."""
    return any(t.user_attrs.get("baseline") == family for t in study.get_trials(deepcopy=False))


def scaled_baseline(study: optuna.Study, objective: Any, family: str, budget_ms: float,
                    steps: Iterator[int]) -> tuple[Arch, float, bool]:
    """`family` scaled to the budget: the study's record, else measured now and recorded (arch, ms, reused)."""
    from nas.baselines import scale_to_budget

    name = SCALED_ATTR + family
    if (recorded := study.user_attrs.get(name)) is None:
        def latency_ms(arch: Arch) -> float:
            faults.point("scale", next(steps))
            return float(objective.latency(arch).ms)

        arch, ms = scale_to_budget(family, objective.splits.num_classes, budget_ms, latency_ms)
        if (recorded := study.user_attrs.get(name)) is None:  # else a worker starting beside us was first
            study.set_user_attr(name, {"arch": arch.to_dict(), "ms": ms})
            return arch, ms, False
    return Arch.from_dict(recorded["arch"]), float(recorded["ms"]), True


def enqueue_once(study: optuna.Study, objective: Any, family: str, index: int) -> bool:
    """Enqueue `family`'s recorded baseline unless a trial already is it; True if this call did."""
    def enqueue() -> None:
        arch = Arch.from_dict(study.user_attrs[SCALED_ATTR + family]["arch"])  # the study's one record
        faults.point("claimed", index)
        # A hand design need not lie in the space (the default space has no conv2 stem, no catm first
        # stage, no one-stage ViT). Its trial evaluates the true design (`baseline_arch`), while its
        # parameters are the nearest point of the space: the samplers learn the baseline's measured
        # accuracy and latency at that point, a warm start rather than an exact observation;
        # `baseline_exact` says which it is. With the parameters it is an ordinary member of the
        # population and of the intersection search space.
        params, exact = objective.space.encode(arch)
        study.enqueue_trial(params, user_attrs={"baseline": family, "baseline_arch": arch.to_dict(),
                                                "baseline_exact": exact}, skip_if_exists=False)
        faults.point("enqueued", index)

    return claims.once(study, f"baseline-{family}", lambda: not baseline_trial(study, family), enqueue)


def optimize(study: optuna.Study, objective: Any, trials: int, seconds_left: float, quiet: bool) -> str | None:
    """Run trials until `trials` complete (across all workers) or `seconds_left` run out.

    Returns None when done, "interrupted" on Ctrl-C, or why the search gave up.
    """
    from tqdm import tqdm

    complete = (TrialState.COMPLETE,)
    remaining = trials - len(study.get_trials(deepcopy=False, states=complete))
    if remaining <= 0:
        return None
    bar = tqdm(total=trials, initial=trials - remaining, disable=quiet, unit="trial", desc="search",
               file=sys.stderr)
    failures = [0]

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.PRUNED:  # surplus: other workers already cover --trials
            return
        failures[0] = failures[0] + 1 if trial.state == TrialState.FAIL else 0
        if trial.state == TrialState.FAIL:
            print(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', 'unknown')}", file=sys.stderr)
        if failures[0] >= MAX_CONSECUTIVE_FAILURES:
            study.stop()
        if trial.state == TrialState.COMPLETE:
            bar.update(1)
        fail_orphaned_trials(study)
        if sum(t.state == TrialState.COMPLETE or is_live(t) for t in study.get_trials(deepcopy=False)) >= trials:
            study.stop()  # the trials in flight in other workers complete the count
        bar.set_postfix_str(best_so_far(study))

    def waiting(others: float, waited_s: float) -> None:  # timing waits for a quiet CPU: say so on the bar
        bar.set_postfix_str(wait_line(others, waited_s))

    add_wait_hook(waiting)
    started = time.monotonic()
    try:
        study.optimize(objective, timeout=max(1.0, seconds_left), catch=(Exception,), gc_after_trial=True,
                       callbacks=[MaxTrialsCallback(trials, states=complete), after_trial])
    except KeyboardInterrupt:
        retry_interrupted(study)
        return "interrupted"
    finally:
        remove_wait_hook(waiting)
        bar.close()
    if not quiet:
        print(f"search loop: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failures[0] >= MAX_CONSECUTIVE_FAILURES:
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        reason = failed[-1].user_attrs.get("fail_reason", "unknown") if failed else "unknown"
        return f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; last: {reason}"
    return None


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Queue again the trial this process was running when Ctrl-C came, as a resume queues a killed
    worker's: Optuna failed it (fail_reason KeyboardInterrupt), or it is still RUNNING (the interrupt
    came between Optuna's steps). Returns the numbers of the trials queued again."""
    mine = worker_claim(-1)
    retried = {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
    queued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        claim = trial.user_attrs.get("worker") or {}
        if claim.get("trial") != trial.number or trial.number in retried or \
                any(claim.get(k) != mine[k] for k in ("host", "pid", "pid_start")):
            continue  # another worker's trial, or one queued again already
        failed: optuna.trial.FrozenTrial | None = None
        if trial.state == TrialState.RUNNING:
            failed = fail_trial(study, trial, INTERRUPTED)
        elif str(trial.user_attrs.get("fail_reason", "")).startswith(KeyboardInterrupt.__name__):
            failed = trial
        if failed is not None:
            RETRY_INTERRUPTED(study, failed)
            queued.append(trial.number)
    return queued


def best_so_far(study: optuna.Study) -> str:
    front = study.best_trials  # Optuna's own front: feasible trials only, by the stored constraint
    if not front:
        return "no feasible trial yet"
    best = max(front, key=lambda t: t.values[0])
    return f"best {100 * best.values[0]:.1f}% @ {best.values[1]:.2f} ms"
