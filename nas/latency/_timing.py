"""The sampling loop: wait for a quiet CPU, warm up, then several short passes, re-measured when the
passes disagree or other processes loaded the CPU meanwhile.

Runtime-agnostic: a backend supplies `step()`, which runs one inference and returns its time in ms.

Interference: given the cores timing uses (`threads`), `sample` first reads how many cores other
processes use over a short idle window and, above `MeasureSettings.others_limit`, waits (backoff,
at most `max_wait_seconds` per measurement, each wait reported to the hooks of `add_wait_hook`).
Each attempt's own reading decides again: a loaded attempt is discarded and re-measured (bounded);
a measurement without a quiet attempt is kept `loaded` (its fastest attempt), for the caller to
treat with suspicion. A process whose measurements keep ending loaded halves its wait each time
(a machine that never gets quiet costs ~2 x `max_wait_seconds` in all, not that much per model).

Slow spells: a shared host can run everything ~1.5x slower for seconds to tens of seconds with no
other process in sight (nas.latency._pace). With `MeasureSettings.pace_factor`, timing first waits
(at most `max_pace_wait_seconds`) until a probe network reads within that factor of the machine's
quiet pace, and an attempt after which the probe reads slow counts as loaded, like one with other
processes busy: discarded and re-measured, and flagged when no attempt was quiet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from nas.latency._stats import PassSummary, pass_cv, summarize

Step = Callable[[], float]
WaitHook = Callable[[float, float], None]  # (cores other processes use, seconds waited so far)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat time unit
_wait_hooks: list[WaitHook] = []
_loaded_streak = [0]  # consecutive measurements of this process that ended loaded


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
    # Interference: cores other processes may use per timing thread (beyond the cores timing leaves
    # free) before an attempt counts as loaded; 0 turns the watching off (the old behaviour).
    max_others_cpu: float = 0.15
    quiet_window_seconds: float = 0.4  # idle read before timing (/proc/stat ticks are 10 ms)
    max_wait_seconds: float = 60.0  # per measurement, waiting for a quiet CPU
    max_loaded_retries: int = 2  # loaded attempts discarded and re-measured before giving up (flagged)
    # Slow spells of a shared host (nas.latency._pace): probe reading / quiet pace above which the host
    # counts as slow; 0 turns the probe off. On the 2-core AMD EPYC VM the probe read 1.02-1.08x its
    # quiet pace in fast stretches and 1.15-1.6x in slow spells (bench/results/host_phases_*.json),
    # while networks ran 1.3-1.6x slower. A reading is 10 probe inferences (~2.5 ms there).
    pace_factor: float = 1.12
    # Per measurement, waiting for a slow spell to pass: spells last seconds to minutes, and a search
    # should not stall on one (a measurement still slow after it is flagged loaded and, near the
    # budget, measured again); benches that need a clean reference wait longer.
    max_pace_wait_seconds: float = 8.0

    def __post_init__(self) -> None:
        if self.passes < 1 or self.min_samples < 1 or self.max_retries < 0 or self.warmup_iters < 0:
            raise ValueError(f"invalid measure settings: {self}")
        if self.max_seconds_per_pass <= 0 or self.min_seconds_per_pass < 0:
            raise ValueError(f"invalid measure settings: {self}")
        if (self.max_others_cpu < 0 or self.quiet_window_seconds <= 0 or self.max_wait_seconds < 0
                or self.max_loaded_retries < 0 or self.max_pace_wait_seconds < 0
                or not (self.pace_factor == 0 or self.pace_factor >= 1)):
            raise ValueError(f"invalid measure settings: {self}")

    @classmethod
    def quick(cls) -> MeasureSettings:
        """For tests and smoke runs: a fraction of a second per measurement, not watching other processes
        (waiting for a quiet CPU would take longer than the measurement; its figures are rough anyway)."""
        return cls(warmup_iters=2, warmup_seconds=0.02, passes=3, min_samples=5,
                   min_seconds_per_pass=0.0, max_seconds_per_pass=0.05, max_retries=0, max_others_cpu=0.0,
                   pace_factor=0.0)

    def others_limit(self, threads: int) -> float | None:
        """Cores other processes may use while `threads` cores time: the cores timing leaves free, plus
        `max_others_cpu` per timing thread (0.3 on a 2-core machine timing on both). None: not watching."""
        if self.max_others_cpu <= 0:
            return None
        return self.max_others_cpu * threads + max(0, (os.cpu_count() or threads) - threads)


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


def add_wait_hook(hook: WaitHook) -> None:
    """Call `hook(others_cores, waited_s)` each time a measurement waits for a quiet CPU (e.g. to show
    `wait_line(...)` on a progress bar)."""
    if hook not in _wait_hooks:
        _wait_hooks.append(hook)


def remove_wait_hook(hook: WaitHook) -> None:
    if hook in _wait_hooks:
        _wait_hooks.remove(hook)


def wait_line(others: float, waited_s: float) -> str:
    return f"waiting for a quiet CPU: other processes use {others:.1f} cores ({waited_s:.0f} s)"


def probe_others(seconds: float) -> float | None:
    """Cores other processes use over `seconds` of our idling (None where /proc/stat is missing)."""
    start = cpu_clock()
    time.sleep(seconds)
    return others_cores(start, cpu_clock())


def wait_for_quiet(limit: float, budget_s: float, window_s: float) -> tuple[float | None, float]:
    """Probe until other processes use <= `limit` cores or `budget_s` is spent (backoff 0.5 s doubling
    to 8 s between probes). Returns (the last reading, seconds spent incl. the probes)."""
    start = time.perf_counter()
    pause = 0.5
    while True:
        others = probe_others(window_s)
        waited = time.perf_counter() - start
        if others is None or others <= limit or waited >= budget_s:
            return others, waited
        for hook in list(_wait_hooks):
            hook(others, waited)
        time.sleep(min(pause, max(0.0, budget_s - waited)))
        pause = min(2 * pause, 8.0)


@dataclass(frozen=True)
class Sampled:
    summary: PassSummary
    attempts: int  # all timed attempts, the discarded loaded ones included
    others_cpu: float | None  # cores busy with other work while the kept attempt ran
    loaded: bool = False  # no attempt was quiet: the kept one ran with others above the limit or in a slow spell
    waited_s: float = 0.0  # spent waiting for a quiet CPU (and for slow spells to pass)
    pace: float | None = None  # the probe's reading over the quiet pace after the kept attempt (None: off)


def sample(step: Step, settings: MeasureSettings, threads: int | None = None) -> Sampled:
    """Warm up, time `settings.passes` passes; while unsteady, re-measure (bounded).

    Each attempt is a fresh set of passes; the steadiest quiet attempt (lowest CV of pass medians) is
    kept, still flagged unsteady when even that one exceeds the threshold. With `threads` (the cores
    `step` uses) other processes and the host's pace are watched (see the module doc); without, never.
    """
    limit = settings.others_limit(threads) if threads else None
    pace = settings.pace_factor if threads and settings.pace_factor > 0 else None
    budget = settings.max_wait_seconds / 2 ** min(_loaded_streak[0], 6)
    pace_budget = settings.max_pace_wait_seconds / 2 ** min(_loaded_streak[0], 6)
    waited = pace_waited = 0.0

    def wait() -> None:
        nonlocal waited, pace_waited
        if limit is not None and budget > waited:
            waited += wait_for_quiet(limit, budget - waited, settings.quiet_window_seconds)[1]
        if pace is not None:
            from nas.latency._pace import wait_for_pace

            spent = wait_for_pace(threads, pace, max(0.0, pace_budget - pace_waited))[1]
            pace_waited += spent
            waited += spent

    def pace_now() -> float | None:
        if pace is None:
            return None
        from nas.latency._pace import probe

        return probe(threads).ratio()

    wait()
    warm_up(step, settings)
    best: list[list[float]] | None = None
    best_cv = float("inf")
    best_others: float | None = None
    best_pace: float | None = None
    loaded: list[tuple[list[list[float]], float | None, float | None]] = []  # discarded: passes, others, pace
    attempts = quiet = 0
    while quiet <= settings.max_retries and best_cv > settings.unsteady_cv:
        attempts += 1
        before = cpu_clock()
        passes = [run_pass(step, settings) for _ in range(settings.passes)]
        others = others_cores(before, cpu_clock())
        ratio = pace_now()
        if (limit is not None and others is not None and others > limit) or (ratio is not None and ratio > pace):
            loaded.append((passes, others, ratio))
            if len(loaded) > settings.max_loaded_retries:
                break
            wait()
            continue
        quiet += 1
        spread = pass_cv(passes)
        if spread < best_cv:
            best, best_cv, best_others, best_pace = passes, spread, others, ratio
    if limit is not None or pace is not None:
        _loaded_streak[0] = 0 if best is not None else _loaded_streak[0] + 1
    if best is None:  # every attempt loaded: the fastest one (load only slows a model down)
        best, best_others, best_pace = min(loaded, key=lambda attempt: summarize(attempt[0], 0).estimate_ms)
        return Sampled(summarize(best, settings.unsteady_cv), attempts, best_others, True, waited, best_pace)
    return Sampled(summarize(best, settings.unsteady_cv), attempts, best_others, False, waited, best_pace)
