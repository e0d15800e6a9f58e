"""The study's side of space fitting (nas.fit): fit once per study, reuse the recorded fit on resume
and in every worker, and enqueue the fit's samples as the first trials."""

from __future__ import annotations

import sys
from typing import Any

import optuna

from nas.fit import SpaceFit, fit_space
from nas.latency import Predictor
from nas.search import claims
from nas.space import SearchSpace

FIT_ATTR = "space_fit"
SAMPLES_ATTR = "space_fit_enqueued"
CLAIM_KEY = "fit-samples"


def fitted_space(study: optuna.Study, objective: Any, budget_ms: float, seed: int, quiet: bool) -> SpaceFit:
    """The study's recorded fit, else a new one (recorded before anything is enqueued)."""
    recorded = study.user_attrs.get(FIT_ATTR)
    if recorded is not None:
        return SpaceFit.from_dict(recorded)
    fit = fit_space(objective.space, objective.splits.num_classes, budget_ms, lambda a: objective.latency(a).ms,
                    seed=seed, progress=None if quiet else lambda line: print(line, file=sys.stderr))
    # Two workers starting together may both fit; the first record wins, so all use one space.
    recorded = study.user_attrs.get(FIT_ATTR)
    if recorded is not None:
        return SpaceFit.from_dict(recorded)
    study.set_user_attr(FIT_ATTR, fit.to_dict())
    return fit


def enqueue_fit_samples(study: optuna.Study, fit: SpaceFit) -> None:
    """The fit's timed samples as the first trials, each exactly once whatever kills or concurrent
    starts happen (the baselines' study-level claim): their latency is cached already."""
    if study.user_attrs.get(SAMPLES_ATTR):
        return
    def enqueue() -> None:
        for index in _missing(study, fit):
            study.enqueue_trial(fit.samples[index], user_attrs={"fit_sample": True, "fit_index": index})

    claims.once(study, CLAIM_KEY, lambda: bool(_missing(study, fit)), enqueue)
    study.set_user_attr(SAMPLES_ATTR, True)


def _missing(study: optuna.Study, fit: SpaceFit) -> list[int]:
    """Indices of the fit's samples no trial of the study (any state) is yet."""
    trials = study.get_trials(deepcopy=False)
    present = {t.user_attrs.get("fit_index") for t in trials if t.user_attrs.get("fit_sample")}
    return [i for i in range(len(fit.samples)) if i not in present]


def apply_fit(space: SearchSpace, fit: SpaceFit | None) -> SearchSpace:
    return space if fit is None else space.scaled(fit.multiplier)


def anchor_to_fit(predictor: Predictor, fit: SpaceFit, space: SearchSpace, num_classes: int) -> Predictor:
    """The predictor rescaled to the fit's timings of its samples in the fitted `space` (measured by
    this search, minutes ago: see Predictor.anchored). Deterministic from the recorded fit, so a
    resumed search or another worker anchors alike."""
    chosen = max((r for r in fit.rounds if r["multiplier"] == fit.multiplier), key=lambda r: len(r["latencies_ms"]))
    timed = [(space.decode(params, num_classes), ms)
             for params, ms in zip(fit.samples, chosen["latencies_ms"], strict=False)]
    return predictor.anchored(timed)
