"""NoRepeatSampler: a relative proposal that repeats an evaluated architecture is replaced by a random one."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.search_space import IntersectionSearchSpace

from nas.search import make_sampler
from nas.search.norepeat import NoRepeatSampler
from nas.space import load_space


class StuckSampler(optuna.samplers.RandomSampler):
    """Scripted relative sampler: after the first trial it always proposes the first trial's point,
    as GPSampler did in 6 of 40 trials of a default run when its acquisition optimum stayed put."""

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        # like GPSampler and TPE: single-valued knobs (fixed in the YAML) are left out
        return {n: d for n, d in IntersectionSearchSpace().calculate(study).items() if not d.single()}

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return {name: done[0].params[name] for name in search_space} if done else {}


def _hashes(sampler: optuna.samplers.BaseSampler, trials: int) -> list[str]:
    space = load_space(None)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    hashes: list[str] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        arch = space.sample(trial, 10)
        hashes.append(arch.hash)
        return float(arch.stages[-1].width), float(arch.stages[-1].depth)

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=trials)
    return hashes


def test_repeated_proposals_are_replaced() -> None:
    space = load_space(None)
    stuck = _hashes(StuckSampler(seed=0), 6)
    assert len(set(stuck)) == 1  # the scripted sampler alone repeats its first point
    wrapped = NoRepeatSampler(StuckSampler(seed=0), key=lambda p: space.decode(p, 10).hash)
    hashes = _hashes(wrapped, 6)
    assert len(set(hashes)) == 6
    assert wrapped.repeats_avoided == 5


def test_search_samplers_are_wrapped_but_random() -> None:
    assert isinstance(make_sampler("gp", 0, arch_key=str), NoRepeatSampler)
    assert isinstance(make_sampler("gp", 0), optuna.samplers.GPSampler)
    assert isinstance(make_sampler("random", 0, arch_key=str), optuna.samplers.RandomSampler)
