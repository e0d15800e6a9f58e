"""Fitting the space to the device (nas.fit): width scaling, the multiplier search, and a real search
with the fit on (timed samples enqueued as the first trials, recorded once, reused on resume)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import optuna
import pytest

from nas.fit import BAND, TARGET, fit_space
from nas.models import build_model, count_macs
from nas.space import DEFAULT_SPACE, load_space
from nas.space import choices as knob_choices
from tests.conftest import TINY_SEARCH, TINY_SPACE


def test_scaled_space_multiplies_widths_keeps_whole_heads_and_merges_choices() -> None:
    space = load_space(DEFAULT_SPACE)
    assert space.scaled(1.0) is space
    wide = space.scaled(2.0)
    for before, after in zip(space.stages, wide.stages, strict=True):
        assert knob_choices(after.width) == [2 * w for w in knob_choices(before.width)]
        assert after.mixer == before.mixer and after.depth == before.depth
    assert wide.head == space.head  # the head's widths stay as written
    odd = space.scaled(1.37)
    for stage in odd.stages:
        heads = knob_choices(stage.head_dim) if set(knob_choices(stage.mixer)) & {"litemla", "glsra"} else []
        for width in knob_choices(stage.width):
            assert width % 8 == 0 and all(width % h == 0 for h in heads)
    narrow = load_space(TINY_SPACE).scaled(0.3)  # 8 and 16 both round to 8: one choice, not a duplicate
    assert narrow.stages[0].width == 8


def test_fit_brings_the_median_of_sampled_costs_into_the_band() -> None:
    """A deterministic cost (MACs per 1e6, as if milliseconds) and three budgets: below, at and far
    above what the space as written costs. The fit moves the widths the right way, keeps the round
    nearest the target (width rounding makes narrow spaces coarse), lands in the band when widening,
    and returns the samples of the multiplier it chose."""
    space = load_space(DEFAULT_SPACE)
    cost = {}

    def mmacs(arch) -> float:
        if arch.hash not in cost:
            cost[arch.hash] = count_macs(build_model(arch), 64) / 1e6
        return cost[arch.hash]

    as_written = fit_space(space, 10, 1e9, mmacs, samples=6).rounds[0]["median_ms"]
    for budget, widen in ((0.5 * as_written, False), (as_written / TARGET, None), (3.0 * as_written, True)):
        fit = fit_space(space, 10, budget, mmacs, samples=6, probe=3)
        target = TARGET * budget
        # steering rounds time the first 3 draws; the chosen one (nearest the target then) is completed to 6
        chosen = [r for r in fit.rounds if r["multiplier"] == fit.multiplier]
        assert len(chosen) == 1 and len(chosen[0]["latencies_ms"]) == 6 and fit.median_ms == chosen[0]["median_ms"]
        assert all(len(r["latencies_ms"]) == 3 for r in fit.rounds if r is not chosen[0])
        probe_medians = [statistics.median(r["latencies_ms"][:3]) for r in fit.rounds]
        assert statistics.median(chosen[0]["latencies_ms"][:3]) == min(probe_medians,
                                                                       key=lambda m: abs(math.log(m / target)))
        if widen is None:
            assert fit.multiplier == 1.0 and len(fit.rounds) == 1
        else:
            assert (fit.multiplier > 1.0) == widen
            assert abs(math.log(fit.median_ms / target)) < abs(math.log(as_written / target))
        if widen:
            assert BAND[0] * budget <= fit.median_ms <= BAND[1] * budget, fit.rounds
        scaled = space.scaled(fit.multiplier)
        assert statistics.median(mmacs(scaled.decode(p, 10)) for p in fit.samples) == pytest.approx(fit.median_ms)


def test_search_with_fit_times_samples_once_and_reuses_the_fit_on_resume(tmp_path: Path) -> None:
    from nas.errors import run_cli
    from nas.search import main

    args = [a for a in TINY_SEARCH if a != "--no-fit"]
    base = ["--results", str(tmp_path), "--run", "fit", *args, "--budget-ms", "0.5", "--epochs", "1"]
    assert run_cli(main, [*base, "--trials", "8"]) == 0
    run = tmp_path / "fit"
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{run / 'study.db'}")
    fit = study.user_attrs["space_fit"]
    samples = [t for t in study.trials if t.user_attrs.get("fit_sample")]
    assert len(samples) == len(fit["samples"]) == 8
    assert [t.params for t in samples] == fit["samples"]  # the first trials are the fit's own draws
    assert "space fitted to this machine" in (run / "summary.md").read_text()
    fitted = load_space(run / "space_fitted.yaml")
    assert knob_choices(fitted.stages[1].width) == knob_choices(load_space(TINY_SPACE).scaled(fit["multiplier"])
                                                                .stages[1].width)
    # resume with more trials: the recorded fit is reused, nothing is enqueued twice
    assert run_cli(main, [*base, "--trials", "10"]) == 0
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{run / 'study.db'}")
    assert study.user_attrs["space_fit"] == fit
    assert sum(bool(t.user_attrs.get("fit_sample")) for t in study.trials) == 8
