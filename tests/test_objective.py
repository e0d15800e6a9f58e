"""The latency rule of a trial (real OpenVINO timing of a tiny model, real cache file)."""

from __future__ import annotations

from pathlib import Path

from nas.latency import LatencyCache, MeasureSettings, lookup, measure
from nas.models import build_model
from nas.objective import NEAR_BUDGET, decided_latency, latency_key
from tests.conftest import tiny_arch

QUICK = MeasureSettings.quick()


def _measurer(tmp_path: Path, settings: MeasureSettings | None = QUICK):
    arch = tiny_arch("catm")
    model = build_model(arch).eval()
    cache = LatencyCache(tmp_path / "latency.sqlite")

    def once(index: int):
        return measure(model, 64, "openvino", 1, cache=cache, key=latency_key(arch.hash, settings, index),
                       settings=settings)

    return arch, cache, once


def test_near_budget_latency_does_not_drift_over_revisits(tmp_path: Path) -> None:
    _, cache, once = _measurer(tmp_path)
    budget = once(1).ms  # exactly on the line: near the budget, so a second measurement takes part
    visits = [decided_latency(once, budget) for _ in range(6)]  # baseline scaling, retries, resumes...
    stats, measured = visits[0]
    assert len(measured) == 2 and stats.ms == min(measured)
    assert all(v[0] == stats and v[1] == measured for v in visits), [v[1] for v in visits]
    assert len(cache.entries()) == 2  # every measurement kept, none added by a revisit
    # A fresh process reading the same cache decides the same.
    _, _, again = _measurer(tmp_path)
    assert decided_latency(again, budget)[0].ms == stats.ms


def test_far_from_budget_is_measured_once(tmp_path: Path) -> None:
    _, cache, once = _measurer(tmp_path)
    first = once(1).ms
    stats, measured = decided_latency(once, first * (1 + 3 * NEAR_BUDGET))
    assert measured == [first] and stats.ms == first and len(cache.entries()) == 1


def test_quick_measurements_never_serve_a_full_run(tmp_path: Path) -> None:
    arch, cache, once = _measurer(tmp_path, QUICK)
    once(1)
    assert latency_key(arch.hash, None) == latency_key(arch.hash, MeasureSettings()) == arch.hash
    assert latency_key(arch.hash, QUICK) != arch.hash and latency_key(arch.hash, QUICK, 2).endswith("#2")
    assert lookup(cache, latency_key(arch.hash, QUICK), 64, "openvino", 1) is not None
    assert lookup(cache, latency_key(arch.hash, None), 64, "openvino", 1) is None  # a full run misses
