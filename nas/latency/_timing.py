"""The sampling loop: warm up, then several short passes, re-measured when the passes disagree.

Runtime-agnostic: a backend supplies `step()`, which runs one inference and returns its time in ms.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from nas.latency._stats import PassSummary, pass_cv, summarize

Step = Callable[[], float]
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat time unit


@dataclass(frozen=True)
class MeasureSettings:
    """How long and how often to time. Defaults take ~1-3 s for a 2-20 ms model."""

    warmup_iters: int = 3
    warmup_seconds: float = 0.2
    passes: int = 5
    min_samples: int = 25  # per pass ...
    min_seconds_per_pass: float = 0.1  # ... and at least this long, so tiny models are not 5 ms passes
    max_seconds_per_pass: float = 0.6  # cap for slow models (fewer samples, never longer)
    unsteady_cv: float = 0.05  # CV of pass medians above this -> re-measure
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.passes < 1 or self.min_samples < 1 or self.max_retries < 0 or self.warmup_iters < 0:
            raise ValueError(f"invalid measure settings: {self}")
        if self.max_seconds_per_pass <= 0 or self.min_seconds_per_pass < 0:
            raise ValueError(f"invalid measure settings: {self}")

    @classmethod
    def quick(cls) -> MeasureSettings:
        """For tests and smoke runs: a fraction of a second per measurement."""
        return cls(warmup_iters=2, warmup_seconds=0.02, passes=3, min_samples=5,
                   min_seconds_per_pass=0.0, max_seconds_per_pass=0.05, max_retries=0)


def warm_up(step: Step, settings: MeasureSettings) -> None:
    clock = time.perf_counter
    start = clock()
    done = 0
    while done < settings.warmup_iters or clock() - start < settings.warmup_seconds:
        step()
        done += 1


def run_pass(step: Step, settings: MeasureSettings) -> list[float]:
    """Repeat `step` until enough samples (and time), or until the time cap."""
    clock = time.perf_counter
    times: list[float] = []
    start = clock()
    while True:
        times.append(step())
        elapsed = clock() - start
        if elapsed >= settings.max_seconds_per_pass or (
            len(times) >= settings.min_samples and elapsed >= settings.min_seconds_per_pass
        ):
            return times


def cpu_clock() -> tuple[float, float, float] | None:
    """(machine-wide busy CPU seconds incl. hypervisor steal, this process's CPU seconds, wall)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:  # not Linux
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    own = os.times()
    return ((user + nice + system + irq + softirq + steal) / _TICKS, own.user + own.system,
            time.perf_counter())


def others_cores(start: tuple[float, float, float] | None, end: tuple[float, float, float] | None) -> float | None:
    """Mean CPU cores used by everything but this process between two `cpu_clock()` readings.

    Steadiness cannot see a slow period that lasts the whole measurement; this sees one caused by
    other processes here (~0 when quiet, ~1 with one busy neighbour) or by hypervisor steal, not
    one caused by other VMs on SMT siblings or shared caches. 10 ms ticks: read over >= ~0.5 s."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


@dataclass(frozen=True)
class Sampled:
    summary: PassSummary
    attempts: int
    others_cpu: float | None  # cores busy with other work while the kept attempt ran


def sample(step: Step, settings: MeasureSettings) -> Sampled:
    """Warm up, time `settings.passes` passes; while unsteady, re-measure (bounded).

    Each attempt is a fresh set of passes; the steadiest attempt (lowest CV of pass medians) is
    kept, still flagged unsteady when even that one exceeds the threshold.
    """
    warm_up(step, settings)
    best: list[list[float]] | None = None
    best_cv = float("inf")
    best_others: float | None = None
    attempts = 0
    while attempts <= settings.max_retries and best_cv > settings.unsteady_cv:
        attempts += 1
        before = cpu_clock()
        passes = [run_pass(step, settings) for _ in range(settings.passes)]
        others = others_cores(before, cpu_clock())
        spread = pass_cv(passes)
        if spread < best_cv:
            best, best_cv, best_others = passes, spread, others
    assert best is not None
    return Sampled(summarize(best, settings.unsteady_cv), attempts, best_others)
