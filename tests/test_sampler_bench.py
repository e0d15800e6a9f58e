"""The sampler benchmark's pieces: feasible hypervolume and the replay fit (no timing, no training)."""

from __future__ import annotations

import numpy as np
import optuna

from bench.sampler_bench import Ridge, cv_r2, features, hypervolume
from nas.space import load_space


def test_feasible_hypervolume() -> None:
    # reference (accuracy 0, latency = budget 5): a single point (0.9, 1) dominates 0.9 x 4
    assert hypervolume([(0.9, 1.0)], 5.0) == 0.9 * 4
    # a dominated point adds nothing; an infeasible one (over budget) neither
    assert hypervolume([(0.9, 1.0), (0.8, 2.0), (0.99, 6.0)], 5.0) == 0.9 * 4
    # a staircase: (0.5, 1) then (0.9, 3): 0.5 x 2 + 0.9 x 2
    assert abs(hypervolume([(0.5, 1.0), (0.9, 3.0)], 5.0) - (0.5 * 2 + 0.9 * 2)) < 1e-12
    assert hypervolume([], 5.0) == 0.0


def test_replay_fit_recovers_a_linear_cost() -> None:
    space = load_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    x = []
    for _ in range(80):
        trial = study.ask()
        x.append(features(space.sample(trial, 10), len(space.stages)))
        study.tell(trial, 0.0)
    x = np.array(x)
    y = x @ np.random.default_rng(0).normal(size=x.shape[1])
    assert np.allclose(Ridge(x, y, 1e-6)(x), y, atol=1e-3)
    assert cv_r2(x, y, 1e-3) > 0.9
