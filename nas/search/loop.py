"""The trial loop: enqueue the scaled baselines once, then run trials until --trials complete across
all workers, the time is up, or trials keep failing."""

from __future__ import annotations

import sys
import time
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from nas.search.storage import fail_orphaned_trials
from nas.workers import is_live

MAX_CONSECUTIVE_FAILURES = 5


def enqueue_baselines(study: optuna.Study, objective: Any, budget_ms: float, quiet: bool) -> None:
    """Scale each pure-family baseline to the budget and enqueue it (once per study)."""
    from nas.baselines import FAMILIES, scale_to_budget

    if study.user_attrs.get("baselines_enqueued"):
        return
    for family in FAMILIES:
        arch, ms = scale_to_budget(family, objective.splits.num_classes, budget_ms,
                                   lambda a: objective.latency(a).ms)
        if not quiet:
            print(f"baseline {arch.name}: {ms:.2f} ms", file=sys.stderr)
        # A hand design need not lie in the space (the default space has no conv2 stem, no catm first
        # stage, no one-stage ViT). Its trial evaluates the true design (`baseline_arch`), while its
        # parameters are the nearest point of the space: the samplers learn the baseline's measured
        # accuracy and latency at that point, a warm start rather than an exact observation;
        # `baseline_exact` says which it is. With the parameters it is an ordinary member of the
        # population and of the intersection search space.
        params, exact = objective.space.encode(arch)
        study.enqueue_trial(params, user_attrs={"baseline": family, "baseline_arch": arch.to_dict(),
                                                "baseline_exact": exact}, skip_if_exists=False)
    study.set_user_attr("baselines_enqueued", True)


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

    started = time.monotonic()
    try:
        study.optimize(objective, timeout=max(1.0, seconds_left), catch=(Exception,), gc_after_trial=True,
                       callbacks=[MaxTrialsCallback(trials, states=complete), after_trial])
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        bar.close()
    if not quiet:
        print(f"search loop: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failures[0] >= MAX_CONSECUTIVE_FAILURES:
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        reason = failed[-1].user_attrs.get("fail_reason", "unknown") if failed else "unknown"
        return f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; last: {reason}"
    return None


def best_so_far(study: optuna.Study) -> str:
    front = study.best_trials  # Optuna's own front: feasible trials only, by the stored constraint
    if not front:
        return "no feasible trial yet"
    best = max(front, key=lambda t: t.values[0])
    return f"best {100 * best.values[0]:.1f}% @ {best.values[1]:.2f} ms"
