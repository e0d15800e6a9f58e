"""Best of interleaved rounds: compare models by timing them round-robin, keeping each one's fastest."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

K = TypeVar("K")
T = TypeVar("T")


def _estimate(result: Any) -> float:
    return result.estimate_ms


def best_of_rounds(candidates: Mapping[K, Callable[[], T]], rounds: int, *,
                   ms: Callable[[T], float] = _estimate,
                   each: Callable[[int, K, T], None] | None = None) -> dict[K, T]:
    """Each candidate's fastest of `rounds` measurements, taken round-robin (every candidate once per
    round, in mapping order), so a slow spell of a shared machine hits all candidates alike rather
    than one of them, and the best of each estimates the quiet machine.

    `candidates` maps a name to a call that measures once (e.g. a `measure_ir` partial); `ms(result)`
    orders results (default: `LatencyStats.estimate_ms`); `each(round, name, result)` sees every
    result as it comes (progress lines, keeping all rounds). Round numbers start at 1.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    best: dict[K, T] = {}
    for round_number in range(1, rounds + 1):
        for name, measure_once in candidates.items():
            result = measure_once()
            if each is not None:
                each(round_number, name, result)
            if name not in best or ms(result) < ms(best[name]):
                best[name] = result
    return best
