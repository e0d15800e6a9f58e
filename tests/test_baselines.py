"""Baseline scaling (nas.baselines): each hand design bisects its width ladder for the latency budget.

Latencies are scripted (a cost model of the architecture), so the choice is exact; the ladders
themselves build real models.
"""

from __future__ import annotations

import pytest

from nas.arch import Arch
from nas.baselines import FAMILIES, WIDTH_LADDER, scale_to_budget
from nas.models import build_model

LADDER = sorted(WIDTH_LADDER)  # narrowest first


def cost_ms(arch: Arch) -> float:
    """A scripted latency that grows with width and depth, like MACs do."""
    return sum(stage.depth * stage.width ** 2 for stage in arch.stages) / 1e4


def scale_of(arch: Arch) -> float:
    return float(arch.name.rsplit(" x", 1)[1])


def recording(log: list[float]):
    def latency(arch: Arch) -> float:
        log.append(scale_of(arch))
        return cost_ms(arch)

    return latency


@pytest.mark.parametrize("family", FAMILIES)
def test_ladder_models_grow_with_the_scale(family: str) -> None:
    """Every rung builds, and a wider rung is a bigger model (more parameters, higher scripted cost)."""
    archs = [FAMILIES[family](scale, 10) for scale in LADDER]
    params = [sum(p.numel() for p in build_model(arch).parameters()) for arch in archs]
    assert params == sorted(params) and len(set(params)) == len(params), params
    costs = [cost_ms(arch) for arch in archs]
    assert costs == sorted(costs) and len(set(costs)) == len(costs), costs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("index", range(len(LADDER)))
def test_the_widest_rung_within_budget_is_chosen(family: str, index: int) -> None:
    """A budget between rung `index` and the next: that rung, measured, in at most 3 measurements."""
    costs = [cost_ms(FAMILIES[family](scale, 10)) for scale in LADDER]
    upper = costs[index + 1] if index + 1 < len(costs) else 2 * costs[-1]
    budget = (costs[index] + upper) / 2
    log: list[float] = []
    arch, ms = scale_to_budget(family, 10, budget, recording(log))
    assert scale_of(arch) == LADDER[index] and ms == costs[index] <= budget
    assert len(log) == len(set(log)) <= 3 and LADDER[index] in log  # bisection; each rung timed once


@pytest.mark.parametrize("family", FAMILIES)
def test_no_rung_within_budget_gives_the_narrowest_with_its_latency(family: str) -> None:
    log: list[float] = []
    arch, ms = scale_to_budget(family, 10, 1e-9, recording(log))
    assert scale_of(arch) == LADDER[0] and ms == cost_ms(arch) > 1e-9
    assert log == [LADDER[2], LADDER[0]]  # bisection: the middle, then the narrowest; wider ones never timed


def test_a_noisy_rung_decides_by_its_own_measurement() -> None:
    """Bisection trusts each measurement: a middle rung measured over budget (noise) sends it to the
    narrower half, even though a wider rung measures within budget; no rung is timed twice."""
    measured = dict(zip(LADDER, (1.0, 2.0, 6.0, 3.0, 4.0), strict=True))
    log: list[float] = []
    arch, ms = scale_to_budget("casvit", 10, 5.0, lambda a: log.append(scale_of(a)) or measured[scale_of(a)])
    assert (scale_of(arch), ms) == (LADDER[1], 2.0) and log == [LADDER[2], LADDER[0], LADDER[1]]


def test_num_classes_reaches_the_head() -> None:
    for family in FAMILIES:
        arch, _ = scale_to_budget(family, 7, 1e9, cost_ms)
        assert arch.num_classes == 7 and scale_of(arch) == max(LADDER)
