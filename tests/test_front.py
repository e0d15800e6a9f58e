"""The Pareto front the report exports: feasibility from Optuna's stored constraint, domination, training.

A real in-memory Optuna study with scripted trials (values, constraint, user attributes as the
objective records them); no search runs.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial

from nas.report import is_feasible, is_trained, pareto_front

BUDGET = 5.0
DIST = {"x": optuna.distributions.FloatDistribution(0, 1)}


def add(study: optuna.Study, name: str, accuracy: float, latency_ms: float, trained: bool = True,
        state: TrialState = TrialState.COMPLETE) -> None:
    """A trial as nas.objective leaves it: the constraint is latency - budget (<= 0 is within budget)."""
    done = state == TrialState.COMPLETE
    study.add_trial(create_trial(
        state=state, values=[accuracy, latency_ms] if done else None, params={"x": 0.5}, distributions=DIST,
        user_attrs={"name": name, "trained": trained, "latency_ms": latency_ms},
        constraints={"latency": latency_ms - BUDGET}))


def names(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return [t.user_attrs["name"] for t in trials]


def scripted_study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    add(study, "fast", 0.70, 1.0)
    add(study, "balanced", 0.85, 3.0)
    add(study, "on-budget", 0.90, BUDGET)  # exactly at the budget: constraint 0, feasible
    add(study, "dominated", 0.80, 3.5)  # slower and less accurate than "balanced"
    add(study, "tie-slower", 0.85, 3.2)  # same accuracy as "balanced", slower: dominated
    add(study, "over-budget", 0.99, 6.0)  # would dominate everything, but infeasible
    add(study, "untrained", 0.0, 0.5, trained=False)  # fastest, never trained (accuracy 0 by convention)
    add(study, "failed", 0.0, 0.1, state=TrialState.FAIL)
    return study


def test_front_is_feasible_non_dominated_trained_by_latency() -> None:
    study = scripted_study()
    assert names(pareto_front(study)) == ["fast", "balanced", "on-budget"]


def test_feasibility_is_read_from_the_stored_constraint() -> None:
    study = scripted_study()
    by_name = {t.user_attrs.get("name"): t for t in study.trials}
    assert [n for n, t in by_name.items() if is_feasible(t)] == [
        "fast", "balanced", "on-budget", "dominated", "tie-slower", "untrained"]
    assert not is_trained(by_name["untrained"]) and is_trained(by_name["fast"])
    # Without a stored constraint a trial is not known to be within budget: never feasible.
    study.add_trial(create_trial(values=[0.95, 0.2], params={"x": 0.5}, distributions=DIST,
                                 user_attrs={"name": "no-constraint", "trained": True}))
    assert not is_feasible(study.trials[-1])
    assert "no-constraint" not in names(pareto_front(study))


def test_an_infeasible_trial_does_not_hide_the_feasible_ones_it_dominates() -> None:
    """Optuna's constrained front: an over-budget trial dominating every feasible one takes no place."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    add(study, "over-budget", 0.99, 5.5)
    add(study, "slow", 0.90, 4.0)
    add(study, "slow-dominated", 0.89, 4.5)
    assert names(pareto_front(study)) == ["slow"]


def test_no_feasible_trained_trial_gives_an_empty_front() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    add(study, "over", 0.0, 7.0, trained=False)
    add(study, "untrained", 0.0, 2.0, trained=False)  # within budget but never trained
    assert pareto_front(study) == []
