"""Which estimate of an architecture's quiet-machine latency repeats best on a shared host?

Times 12 default-space and 8 wide-space architectures in round-robin rounds (each round one short
attempt, as the calibration and bench.predictor_bench time), with a fixed sentinel network after every
three of them, and keeps the raw trace. Then each estimator is computed twice per architecture, from
the first half of the rounds and from the second, and the JSON reports how far the two halves lie
apart (median |second / first - 1|, share over 5% and 10%, max):

- `fastest`: the fastest round (the rule of nas.latency's calibration and of the bench's runs);
- `second_fastest`, `median`: the obvious alternatives;
- `sentinel_median`, `sentinel_fastest`: each round divided by how slow the sentinel ran around it
  (mean of the sentinel readings just before and after, over the sentinel's fastest), i.e. a paired
  design that would cancel the host's phases if they slowed every network alike;
- `sentinel_fast_rounds`: the fastest of the rounds the sentinel marks fast (within 10%).

    python -m bench.reference_bench                  # 10 rounds, ~5 min
Run it alone on the machine. JSON: bench/results/reference_estimators_<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/reference_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.atomic import atomic_write
from nas.cli import Parser
from nas.errors import run_cli
from nas.latency import default_threads, describe_machine
from nas.latency._predictor import ARCH_SETTINGS, sample_archs
from nas.space import DEFAULT_SPACE, load_space

RESULTS = Path(__file__).resolve().parent / "results"
WIDE_SPACE = DEFAULT_SPACE.parent / "wide.yaml"
SEED = 20261206
SENTINEL = "sentinel"
FAST = 1.10  # a sentinel reading within this of its fastest marks a fast moment


def _rounds_with_sentinel(trace: list[dict[str, Any]]) -> dict[Any, list[tuple[float, float]]]:
    """Per architecture, every round as (ms, sentinel slowness around it: mean of the neighbouring
    sentinel readings over the sentinel's fastest)."""
    sentinel = [(i, step["ms"]) for i, step in enumerate(trace) if step["name"] == SENTINEL]
    fastest = min(ms for _, ms in sentinel)
    rounds: dict[Any, list[tuple[float, float]]] = {}
    for i, step in enumerate(trace):
        if step["name"] == SENTINEL:
            continue
        around = [ms for j, ms in sentinel if j < i][-1:] + [ms for j, ms in sentinel if j > i][:1]
        rounds.setdefault(step["name"], []).append((step["ms"], float(np.mean(around)) / fastest))
    return rounds


def _fast_rounds(ms: np.ndarray, slow: np.ndarray) -> float:
    fast = slow <= FAST
    return float(ms[fast].min()) if fast.any() else float(np.median(ms / slow))


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "fastest": lambda ms, slow: float(ms.min()),
    "second_fastest": lambda ms, slow: float(np.sort(ms)[min(1, len(ms) - 1)]),
    "median": lambda ms, slow: float(np.median(ms)),
    "sentinel_median": lambda ms, slow: float(np.median(ms / slow)),
    "sentinel_fastest": lambda ms, slow: float((ms / slow).min()),
    "sentinel_fast_rounds": _fast_rounds,
}


def halves_agreement(trace: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For each estimator: how far its estimate from the first half of an architecture's rounds lies
    from its estimate from the second half."""
    per_arch = _rounds_with_sentinel(trace).values()
    out = {}
    for name, estimate in ESTIMATORS.items():
        diffs = []
        for rounds in per_arch:
            ms, slow = np.array(rounds).T
            half = len(ms) // 2
            diffs.append(estimate(ms[half:], slow[half:]) / estimate(ms[:half], slow[:half]) - 1.0)
        d = np.abs(np.array(diffs))
        out[name] = {"archs": len(d), "median_abs": float(np.median(d)), "over_5": float(np.mean(d > 0.05)),
                     "over_10": float(np.mean(d > 0.10)), "max_abs": float(d.max())}
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.precision_bench import cpu_slug
    from bench.predictor_bench import prepared_timing

    p = Parser(prog="python -m bench.reference_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="rounds over all archs (default 10; halves compared)")
    p.add_argument("--every", type=int, default=3, help="a sentinel timing after every N archs (default 3)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: bench/results/reference_estimators_<cpu>.json)")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.every < 1:
        print("error: --rounds must be >= 2 and --every >= 1", file=sys.stderr)
        return 2
    machine, threads = describe_machine(), default_threads()
    archs = sample_archs(load_space(DEFAULT_SPACE), 12, SEED) + sample_archs(load_space(WIDE_SPACE), 8, SEED + 1)
    sentinel = sample_archs(load_space(DEFAULT_SPACE), 1, SEED + 2)[0]

    steps = [prepared_timing(a, "fp32", threads, 224) for a in archs]
    sentinel_step = prepared_timing(sentinel, "fp32", threads, 224)
    trace: list[dict[str, Any]] = []

    def timed(name: Any, step: Callable[[], Any]) -> None:
        stats = step()
        trace.append({"t": round(time.time(), 3), "name": name, "ms": stats.ms, "loaded": bool(stats.loaded)})

    load_before, started = os.getloadavg(), time.time()
    for round_number in range(args.rounds):
        timed(SENTINEL, sentinel_step)
        for i, step in enumerate(steps):
            timed(i, step)
            if i % args.every == args.every - 1:
                timed(SENTINEL, sentinel_step)
        print(f"round {round_number + 1}/{args.rounds}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    result = {"machine": machine, "settings": {"threads": threads, "resolution": 224, "precision": "fp32",
                                               "rounds": args.rounds, "every": args.every, "seed": SEED,
                                               "passes": ARCH_SETTINGS.passes,
                                               "measure": "nas.latency timing as the calibration times"},
              "seconds": round(time.time() - started, 1), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "archs": [a.hash for a in archs], "sentinel": sentinel.hash,
              "halves": halves_agreement(trace), "trace": trace}
    out = args.out or RESULTS / f"reference_estimators_{cpu_slug(machine)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=1))
    for name, h in result["halves"].items():
        print(f"{name:<22} halves apart: median {100 * h['median_abs']:4.1f}%, over 5% {100 * h['over_5']:3.0f}%, "
              f"over 10% {100 * h['over_10']:3.0f}%, max {100 * h['max_abs']:.1f}%")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
