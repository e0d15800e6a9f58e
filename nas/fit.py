"""Fit the search space to the device: a width multiplier that centres sampled latencies on the budget.

A YAML space cannot be centred on a budget for every CPU (the same architecture's latency differs
between CPUs), and a space far under (or over) the budget teaches the search nothing about
the budget's edge. So before the search, like the baselines, the space is fitted on the machine that
times it: `SAMPLES` architectures drawn at random from the space are timed, and the stem and stage
widths are multiplied by the factor that brings the median of their latencies to `TARGET` x budget
(then a good share of random draws lies over the budget, 3 of the 8 in the default run on a
2-core Intel Xeon, and the front can reach the budget). Latency grows roughly as a power of the
width multiplier (exponents near 1 there): the next multiplier interpolates, on log-log, between
the nearest measured rounds below and above the target once both exist, else extrapolates along
the last two rounds (a guessed exponent after one); at most `MAX_ROUNDS` rounds.

The samples are the same draws at every multiplier (each knob is drawn as a quantile of its
choices), and those of the chosen multiplier become the search's first trials: their latencies are
then already measured (the sampler's random start-up, at no extra timing cost). Rounds that only
steer the multiplier time the first `PROBE` draws; the chosen multiplier's round is then completed
to all `SAMPLES` (the default run's x1 round costs 4 timings instead of 8).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nas.arch import Arch
from nas.space import SearchSpace

SAMPLES = 8
PROBE = 4  # draws timed by a round that steers the multiplier (the chosen one is completed to SAMPLES)
TARGET = 0.9  # the samples' median latency, as a share of the budget
BAND = (0.75, 1.05)  # a median within this share of the budget is close enough
MAX_ROUNDS = 4
FIRST_EXPONENT = 1.0  # latency ~ multiplier^p before any measurement says otherwise
MULTIPLIER_RANGE = (0.25, 4.0)


@dataclass
class SpaceFit:
    multiplier: float
    budget_ms: float
    median_ms: float  # of the samples at `multiplier`
    rounds: list[dict[str, Any]] = field(default_factory=list)  # each: multiplier, median_ms, latencies_ms
    samples: list[dict[str, Any]] = field(default_factory=list)  # parameter dicts at `multiplier`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpaceFit:
        return cls(**data)

    def line(self) -> str:
        chosen = [r for r in self.rounds if r["multiplier"] == self.multiplier]
        share = sum(ms > self.budget_ms for ms in chosen[-1]["latencies_ms"]) if chosen else 0
        return (f"space fitted to this machine: widths x{self.multiplier:g}, median of {len(self.samples)} random "
                f"architectures {self.median_ms:.2f} ms ({share} over the {self.budget_ms:g} ms budget), "
                f"{len(self.rounds)} round(s)")


class _QuantileTrial:
    """Draws each knob as a fixed quantile of its choices, so the same draw maps onto any scaled space."""

    def __init__(self, quantiles: dict[str, float]) -> None:
        self.quantiles = quantiles

    def _pick(self, name: str, values: list[Any]) -> Any:
        return values[min(len(values) - 1, int(self.quantiles[name] * len(values)))]

    def suggest_categorical(self, name: str, values: list[Any]) -> Any:
        return self._pick(name, list(values))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self._pick(name, list(range(low, high + 1, step)))


def fit_space(space: SearchSpace, num_classes: int, budget_ms: float, latency_ms: Callable[[Arch], float],
              *, seed: int = 0, samples: int = SAMPLES, probe: int = PROBE,
              progress: Callable[[str], None] | None = None) -> SpaceFit:
    """Choose the width multiplier (see the module doc); `latency_ms(arch)` measures one architecture."""
    rng = random.Random(f"fit-{seed}")
    draws = [_QuantileTrial({name: rng.random() for name in space.knobs()}) for _ in range(samples)]
    target = TARGET * budget_ms
    rounds: list[dict[str, Any]] = []

    def time_round(multiplier: float, upto: int, timed: tuple[float, ...] = ()) -> dict[str, Any]:
        """The round at `multiplier` over the first `upto` draws; `timed` holds those already timed there."""
        scaled = space.scaled(multiplier)
        latencies = [*timed, *(latency_ms(scaled.decode(scaled.suggest(draw), num_classes))
                               for draw in draws[len(timed):upto])]
        median = statistics.median(latencies)
        if progress is not None:
            progress(f"fit: widths x{multiplier:g}: median {median:.2f} ms of {len(latencies)} random architectures")
        return {"multiplier": multiplier, "median_ms": median, "latencies_ms": latencies}

    multiplier = 1.0
    for _ in range(MAX_ROUNDS):
        rounds.append(time_round(multiplier, min(probe, len(draws))))
        median = rounds[-1]["median_ms"]
        if BAND[0] * budget_ms <= median <= BAND[1] * budget_ms or len(rounds) == MAX_ROUNDS:
            break
        multiplier = _next_multiplier(rounds, target)
        if any(r["multiplier"] == multiplier for r in rounds):
            break  # the clamp or the rounding allows no other multiplier
    index = min(range(len(rounds)), key=lambda i: abs(math.log(rounds[i]["median_ms"] / target)))
    chosen = rounds[index]
    if len(chosen["latencies_ms"]) < len(draws):  # complete the chosen round: its samples become trials
        chosen = rounds[index] = time_round(chosen["multiplier"], len(draws), tuple(chosen["latencies_ms"]))
    scaled = space.scaled(chosen["multiplier"])
    return SpaceFit(multiplier=chosen["multiplier"], budget_ms=budget_ms, median_ms=chosen["median_ms"],
                    rounds=rounds, samples=[scaled.suggest(draw) for draw in draws])


def _next_multiplier(rounds: list[dict[str, Any]], target: float) -> float:
    """Power law latency = a * m^p, solved for `target`: through the nearest rounds on either side of
    the target when it is bracketed, else through the last two rounds (a guessed p after one)."""
    below = [r for r in rounds if r["median_ms"] < target]
    above = [r for r in rounds if r["median_ms"] >= target]
    if below and above:
        pair = [max(below, key=lambda r: r["median_ms"]), min(above, key=lambda r: r["median_ms"])]
    else:
        pair = rounds[-2:]
    last = pair[-1]
    exponent = FIRST_EXPONENT
    if len(pair) == 2:
        span = math.log(pair[1]["multiplier"] / pair[0]["multiplier"])
        if span and pair[0]["median_ms"] > 0 and pair[1]["median_ms"] > 0:
            exponent = max(0.3, min(3.0, math.log(pair[1]["median_ms"] / pair[0]["median_ms"]) / span))
    m = last["multiplier"] * (target / last["median_ms"]) ** (1 / exponent)
    return round(min(MULTIPLIER_RANGE[1], max(MULTIPLIER_RANGE[0], m)), 2)
